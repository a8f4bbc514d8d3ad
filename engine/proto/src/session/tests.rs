//! Session behaviour that needs a look inside: which frames a packet carried.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::*;
use crate::crypto::Psk;
use crate::endpoint::{Endpoint, EndpointConfig};

struct Flight {
    at: Instant,
    to_server: bool,
    data: Vec<u8>,
}

/// Acceptance 4: while every packet carrying the start of stream A is dropped (so A can never
/// deliver a byte), stream B's data is readable as soon as its packet arrives.
#[test]
fn a_stalled_stream_never_delays_another() {
    let client_addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
    let server_addr: SocketAddr = "127.0.0.1:2".parse().unwrap();
    let mut config = EndpointConfig::new(Psk::from_bytes([3; 32]));
    config.session.max_segments = 1; // one packet per transmit, so each can be inspected
    let mut client_cfg = config.clone();
    client_cfg.accept = false;
    let mut client = Endpoint::new(client_cfg, [1; 32]);
    let mut server = Endpoint::new(config, [2; 32]);
    let one_way = Duration::from_millis(25);
    let mut now = Instant::now();
    let start = now;
    let cid = client.connect(now, server_addr);
    let mut flights: Vec<Flight> = Vec::new();
    let mut buf = vec![0u8; 2048];
    let (mut a, mut b) = (None, None);
    let mut b_written_at = None;
    let mut b_sent_at: Option<Instant> = None;
    let mut b_readable_at = None;
    let mut dropped_a = 0;
    let mut a_bytes_read = 0;
    while now < start + Duration::from_secs(5) && b_readable_at.is_none() {
        // Application: once connected, stream A gets 256 KiB; 1 s later B gets a small message.
        if let Some(s) = client.session_mut(cid) {
            if a.is_none() {
                let id = s.open_stream(1).unwrap();
                let data = vec![0xaa; 256 * 1024];
                let mut off = 0;
                while off < data.len() {
                    let n = s.write(id, &data[off..]).unwrap();
                    if n == 0 {
                        break;
                    }
                    off += n;
                }
                a = Some(id);
            }
            if b.is_none() && now >= start + Duration::from_secs(1) {
                let id = s.open_stream(2).unwrap();
                assert_eq!(s.write(id, b"urgent").unwrap(), 6);
                b = Some(id);
                b_written_at = Some(now);
            }
        }
        // Output: the client's packets carrying A's first bytes never arrive.
        while let Some(t) = client.poll_transmit(now, &mut buf) {
            let session = client.session(cid);
            let frames = session.map(|s| s.last_packet_frames()).unwrap_or_default();
            let carries_a_start = frames
                .iter()
                .any(|f| matches!(f, SentFrame::Stream { id, offset: 0, .. } if Some(*id) == a));
            let carries_b = frames
                .iter()
                .any(|f| matches!(f, SentFrame::Stream { id, .. } if Some(*id) == b));
            if carries_b && b_sent_at.is_none() {
                b_sent_at = Some(now);
            }
            if carries_a_start {
                dropped_a += 1;
                continue;
            }
            flights.push(Flight {
                at: now + one_way,
                to_server: true,
                data: buf[..t.size].to_vec(),
            });
        }
        while let Some(t) = server.poll_transmit(now, &mut buf) {
            flights.push(Flight {
                at: now + one_way,
                to_server: false,
                data: buf[..t.size].to_vec(),
            });
        }
        while client.poll_event().is_some() {}
        while let Some(ev) = server.poll_event() {
            if let SessionEvent::Stream(StreamEvent::Readable { id }) = ev.kind {
                let s = server.session_mut(ev.session).unwrap();
                let mut out = [0u8; 4096];
                let r = s.read(id, &mut out).unwrap();
                if s.map_id(id) == Some(2) && r.len > 0 {
                    assert_eq!(&out[..r.len], b"urgent");
                    b_readable_at = Some(now);
                } else {
                    a_bytes_read += r.len;
                }
            }
        }
        // Advance virtual time to the next delivery or timer.
        let next = flights
            .iter()
            .map(|f| f.at)
            .chain(client.poll_timeout())
            .chain(server.poll_timeout())
            .min()
            .unwrap();
        let next = if b.is_none() {
            next.min(start + Duration::from_secs(1))
        } else {
            next
        };
        now = now.max(next);
        let (due, rest): (Vec<_>, Vec<_>) = flights.into_iter().partition(|f| f.at <= now);
        flights = rest;
        for mut f in due {
            if f.to_server {
                server.handle_datagram(now, client_addr, &mut f.data);
            } else {
                client.handle_datagram(now, server_addr, &mut f.data);
            }
        }
        client.handle_timeout(now);
        server.handle_timeout(now);
    }
    let written = b_written_at.expect("B was written");
    let sent = b_sent_at.expect("B was sent");
    let readable = b_readable_at.expect("B became readable");
    assert!(
        dropped_a >= 2,
        "A's first packet was dropped repeatedly ({dropped_a})"
    );
    assert_eq!(a_bytes_read, 0, "A must still be stalled");
    // B left within the pacing interval of a packet or two, and was readable on arrival.
    assert!(
        sent - written <= Duration::from_millis(2),
        "B waited {:?} to be sent",
        sent - written
    );
    assert_eq!(readable - sent, one_way, "B was not readable on arrival");
}

/// `poll_transmit` hands out GSO batches: equal-size datagrams, only the last may be shorter,
/// each a complete packet the peer accepts.
#[test]
fn gso_batches_hold_equal_segments_that_each_decrypt() {
    let (mut client, mut server, cid, client_addr) = connected_pair();
    let now = Instant::now();
    let mut buf = vec![0u8; 64 * 1024];
    let s = client.session_mut(cid).expect("connected");
    let id = s.open_stream(1).unwrap();
    assert_eq!(s.write(id, &[7u8; 100_000]).unwrap(), 100_000);
    let t = client.poll_transmit(now, &mut buf).expect("data to send");
    let seg = t.segment_size.expect("a batch of several datagrams");
    assert!(t.segments() > 1 && t.segments() <= client.config().session.max_segments);
    let before = server.sessions().next().unwrap().stats().packets_received;
    let chunks: Vec<Vec<u8>> = buf[..t.size].chunks(seg).map(<[u8]>::to_vec).collect();
    for (i, mut c) in chunks.clone().into_iter().enumerate() {
        if i + 1 < chunks.len() {
            assert_eq!(c.len(), seg);
        }
        server.handle_datagram(now, client_addr, &mut c);
    }
    let after = server.sessions().next().unwrap().stats();
    assert_eq!(after.packets_received - before, chunks.len() as u64);
    assert_eq!(after.dropped_auth + after.dropped_malformed, 0);
}

/// A paced sender wakes once per batch of packets, not once per packet: at 100 Mbit/s the
/// pacer's bucket (1 ms of data) is about nine full packets, and a wake-up per packet cost about
/// 30 us of CPU each in a real engine.
#[test]
fn a_paced_bulk_sender_wakes_once_per_batch() {
    let (mut client, mut server, cid, client_addr) = connected_pair_at(12_500_000);
    let server_addr: SocketAddr = "127.0.0.1:2".parse().unwrap();
    let t0 = Instant::now();
    let mut buf = vec![0u8; 64 * 1024];
    let s = client.session_mut(cid).expect("connected");
    let id = s.open_stream(1).unwrap();
    assert_eq!(s.write(id, &[7u8; 1 << 20]).unwrap(), 1 << 20);
    let (mut now, mut wakeups, mut packets) = (t0, 0u32, 0usize);
    // 50 ms of a zero-delay path: everything sent is delivered and answered at once.
    while now < t0 + Duration::from_millis(50) {
        while let Some(t) = client.poll_transmit(now, &mut buf) {
            let seg = t.segment_size.unwrap_or(t.size);
            for c in buf[..t.size].to_vec().chunks_mut(seg) {
                packets += 1;
                server.handle_datagram(now, client_addr, c);
            }
        }
        while let Some(t) = server.poll_transmit(now, &mut buf) {
            let seg = t.segment_size.unwrap_or(t.size);
            for c in buf[..t.size].to_vec().chunks_mut(seg) {
                client.handle_datagram(now, server_addr, c);
            }
        }
        let next = [client.poll_timeout(), server.poll_timeout()]
            .into_iter()
            .flatten()
            .min()
            .expect("a paced sender has a timer");
        now = next.max(now + Duration::from_micros(1));
        wakeups += 1;
    }
    // 50 ms at 100 Mbit/s is about 450 packets of 1400 bytes.
    assert!(packets > 300, "{packets} packets sent");
    assert!(
        packets as f64 / f64::from(wakeups) >= 4.0,
        "{packets} packets in {wakeups} wake-ups"
    );
}

/// A dialler and an acceptor whose handshake completed in memory (no rate limit to speak of),
/// with the dialler's session id and address.
fn connected_pair() -> (Endpoint, Endpoint, crate::wire::SessionId, SocketAddr) {
    connected_pair_at(1 << 30)
}

/// [`connected_pair`] with both sides pacing at a fixed `bytes_per_sec`.
fn connected_pair_at(
    bytes_per_sec: u64,
) -> (Endpoint, Endpoint, crate::wire::SessionId, SocketAddr) {
    let server_addr: SocketAddr = "127.0.0.1:2".parse().unwrap();
    let client_addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
    let mut config = EndpointConfig::new(Psk::from_bytes([5; 32]));
    config.session.rate = crate::arq::RateControlConfig::Fixed { bytes_per_sec };
    let mut client_cfg = config.clone();
    client_cfg.accept = false;
    let mut client = Endpoint::new(client_cfg, [1; 32]);
    let mut server = Endpoint::new(config, [2; 32]);
    let now = Instant::now();
    let cid = client.connect(now, server_addr);
    exchange(&mut client, &mut server, client_addr, server_addr, now);
    assert!(
        client.session(cid).is_some() && server.sessions().next().is_some_and(|s| s.is_confirmed())
    );
    (client, server, cid, client_addr)
}

/// Delivers everything both sides want to send, back and forth, until both are quiet.
fn exchange(
    client: &mut Endpoint,
    server: &mut Endpoint,
    client_addr: SocketAddr,
    server_addr: SocketAddr,
    now: Instant,
) {
    let mut buf = vec![0u8; 64 * 1024];
    for _ in 0..4 {
        while let Some(t) = client.poll_transmit(now, &mut buf) {
            let seg = t.segment_size.unwrap_or(t.size);
            for c in buf[..t.size].to_vec().chunks_mut(seg) {
                server.handle_datagram(now, client_addr, c);
            }
        }
        while let Some(t) = server.poll_transmit(now, &mut buf) {
            let seg = t.segment_size.unwrap_or(t.size);
            for c in buf[..t.size].to_vec().chunks_mut(seg) {
                client.handle_datagram(now, server_addr, c);
            }
        }
    }
}

/// DATAGRAM frames carry unreliable payloads whole; one that can never fit a packet is refused.
#[test]
fn datagrams_arrive_whole_and_oversized_ones_are_refused() {
    let (mut client, mut server, cid, client_addr) = connected_pair();
    let now = Instant::now();
    let s = client.session_mut(cid).unwrap();
    let max = s.config().max_payload() - 3; // DATAGRAM frame: type and a 2-byte length
    assert_eq!(s.max_datagram_len(), max);
    assert!(s.send_datagram(b"one"));
    assert!(s.send_datagram(&vec![9u8; max]));
    assert!(!s.send_datagram(&vec![9u8; max + 1]));
    assert_eq!(s.stats().datagrams_dropped, 1);
    exchange(
        &mut client,
        &mut server,
        client_addr,
        "127.0.0.1:2".parse().unwrap(),
        now,
    );
    let sid = server.sessions().next().unwrap().local_id();
    let got: Vec<Vec<u8>> =
        std::iter::from_fn(|| server.session_mut(sid).unwrap().recv_datagram()).collect();
    assert_eq!(got, vec![b"one".to_vec(), vec![9u8; max]]);
}

fn fec_endpoints(
    client_fec: crate::FecConfig,
    server_fec: crate::FecConfig,
) -> (Endpoint, Endpoint) {
    let mut config = EndpointConfig::new(Psk::from_bytes([5; 32]));
    config.session.rate = crate::arq::RateControlConfig::Fixed {
        bytes_per_sec: 1 << 30,
    };
    let mut client_cfg = config.clone();
    client_cfg.accept = false;
    client_cfg.session.fec = client_fec;
    config.session.fec = server_fec;
    (
        Endpoint::new(client_cfg, [1; 32]),
        Endpoint::new(config, [2; 32]),
    )
}

/// Different FEC settings: no session on either side, and both learn why.
#[test]
fn mismatched_fec_settings_refuse_the_session_on_both_sides() {
    let (mut client, mut server) = fec_endpoints(crate::FecConfig::OFF, crate::FecConfig::ADAPTIVE);
    let server_addr: SocketAddr = "127.0.0.1:2".parse().unwrap();
    let client_addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
    let now = Instant::now();
    let cid = client.connect(now, server_addr);
    exchange(&mut client, &mut server, client_addr, server_addr, now);
    assert!(client.session(cid).is_none() && server.sessions().next().is_none());
    let mismatch = |ours, theirs| {
        SessionEvent::Closed(CloseReason::FecMismatch {
            ours,
            theirs,
            peer: None,
        })
    };
    let client_events: Vec<_> = std::iter::from_fn(|| client.poll_event()).collect();
    assert_eq!(
        client_events,
        vec![crate::Event {
            session: cid,
            kind: mismatch(crate::FecConfig::OFF, crate::FecConfig::ADAPTIVE),
        }]
    );
    let server_event = server.poll_event().unwrap();
    assert_eq!(server_event.session, SessionId::NONE);
    assert_eq!(
        server_event.kind,
        mismatch(crate::FecConfig::ADAPTIVE, crate::FecConfig::OFF)
    );
    assert_eq!(client.stats().fec_mismatches, 1);
    assert_eq!(server.stats().fec_mismatches, 1);
}

/// A data packet lost in transit and rebuilt from parity is acknowledged like any other: the
/// sender neither declares it lost nor sends its data again. Parity packets fit the MTU.
#[test]
fn a_packet_rebuilt_from_parity_is_acknowledged_not_retransmitted() {
    let fec = crate::FecConfig {
        mode: crate::FecMode::Fixed { data: 4, parity: 2 },
        interleave: 1,
    };
    let (mut client, mut server) = fec_endpoints(fec, fec);
    let server_addr: SocketAddr = "127.0.0.1:2".parse().unwrap();
    let client_addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
    let mut now = Instant::now();
    let cid = client.connect(now, server_addr);
    exchange(&mut client, &mut server, client_addr, server_addr, now);
    let mtu = client.session(cid).unwrap().config().mtu;
    let s = client.session_mut(cid).unwrap();
    let id = s.open_stream(7).unwrap();
    let data: Vec<u8> = (0..20_000u32).map(|i| (i * 13) as u8).collect();
    assert_eq!(s.write(id, &data).unwrap(), data.len());
    s.finish(id).unwrap();
    // Deliver the client's flight, dropping its third data packet.
    let mut buf = vec![0u8; 64 * 1024];
    let (mut data_packets, mut parity_packets) = (0, 0);
    while let Some(t) = client.poll_transmit(now, &mut buf) {
        let seg = t.segment_size.unwrap_or(t.size);
        for c in buf[..t.size].to_vec().chunks_mut(seg) {
            assert!(c.len() <= mtu, "{} > {mtu}", c.len());
            if c[0] & 0x0f == crate::wire::PacketType::Parity as u8 {
                parity_packets += 1;
            } else {
                data_packets += 1;
                if data_packets == 3 {
                    continue;
                }
            }
            server.handle_datagram(now, client_addr, c);
        }
    }
    assert!(
        data_packets >= 8 && parity_packets >= 2,
        "{data_packets} data, {parity_packets} parity"
    );
    let sid = server.sessions().next().unwrap().local_id();
    assert_eq!(
        server.session(sid).unwrap().stats().fec_packets_recovered,
        1
    );
    // The acknowledgements go back at once; then time passes well beyond any loss timer.
    exchange(&mut client, &mut server, client_addr, server_addr, now);
    for _ in 0..20 {
        now += Duration::from_millis(50);
        client.handle_timeout(now);
        server.handle_timeout(now);
        exchange(&mut client, &mut server, client_addr, server_addr, now);
    }
    let mut got = Vec::new();
    let mut read = vec![0u8; 64 * 1024];
    let server_session = server.session_mut(sid).unwrap();
    while let Ok(r) = server_session.read(id, &mut read) {
        got.extend_from_slice(&read[..r.len]);
        if r.fin || r.len == 0 {
            break;
        }
    }
    assert_eq!(got, data);
    let c = client.session(cid).unwrap().stats();
    assert_eq!(
        (c.packets_lost, c.stream_bytes_retransmitted),
        (0, 0),
        "{c:?}"
    );
}

/// A dialler from before FEC (its parameters are the bare session id) cannot understand a
/// refusal: a node with FEC on does not answer it at all (so it times out and backs off instead
/// of taking the answer for a session), and says why.
#[test]
fn a_dialler_from_before_fec_gets_no_answer_from_a_node_with_fec_on() {
    let (_, mut server) = fec_endpoints(crate::FecConfig::OFF, crate::FecConfig::ADAPTIVE);
    let now = Instant::now();
    let mut msg1 = Vec::new();
    let _initiator = crate::crypto::Initiator::start(
        &Psk::from_bytes([5; 32]),
        [9; 32],
        &[0, 0, 0, 7],
        &mut msg1,
    )
    .unwrap();
    let mut packet = vec![0u8; crate::wire::Header::HANDSHAKE_LEN];
    crate::wire::Header::handshake(crate::wire::PacketType::HandshakeInit, SessionId(0))
        .emit(&mut crate::wire::Writer::new(&mut packet))
        .unwrap();
    packet.extend_from_slice(&msg1);
    server.handle_datagram(now, "127.0.0.1:1".parse().unwrap(), &mut packet);
    let mut buf = vec![0u8; 2048];
    assert!(server.poll_transmit(now, &mut buf).is_none());
    assert!(server.sessions().next().is_none());
    assert_eq!(server.stats().fec_mismatches, 1);
    assert!(matches!(
        server.poll_event().map(|e| e.kind),
        Some(SessionEvent::Closed(CloseReason::FecMismatch { .. }))
    ));
}

/// `max_datagram_len` is exactly the largest payload `send_datagram` takes, with FEC on (whose
/// parity header shrinks packets) and off, and such a datagram arrives whole.
#[test]
fn max_datagram_len_is_the_largest_accepted_payload() {
    for fec in [crate::FecConfig::OFF, crate::FecConfig::ADAPTIVE] {
        let (mut client, mut server) = fec_endpoints(fec, fec);
        let server_addr: SocketAddr = "127.0.0.1:2".parse().unwrap();
        let client_addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let now = Instant::now();
        let cid = client.connect(now, server_addr);
        exchange(&mut client, &mut server, client_addr, server_addr, now);
        let s = client.session_mut(cid).unwrap();
        let max = s.max_datagram_len();
        assert!(max > 1000 && max < s.config().mtu, "{max}");
        assert!(!s.send_datagram(&vec![1u8; max + 1]));
        assert!(s.send_datagram(&vec![2u8; max]));
        exchange(&mut client, &mut server, client_addr, server_addr, now);
        let sid = server.sessions().next().unwrap().local_id();
        let got = server.session_mut(sid).unwrap().recv_datagram();
        assert_eq!(got, Some(vec![2u8; max]));
    }
}
