//! Node names in the handshake, stateless resets and dead-path detection, between two endpoints
//! on the in-memory network.

mod common;

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use common::{A, B, Net, addr, config};
use engine_proto::crypto::{Initiator, Psk, ResetKey, TAG_LEN, respond};
use engine_proto::wire::{Header, PacketType, SessionId, StatelessReset, Writer};
use engine_proto::{CloseReason, Endpoint, EndpointConfig, SessionEvent};

const PSK: [u8; 32] = [1; 32];

fn named(accept: bool, name: Option<&str>) -> EndpointConfig {
    let mut c = config(PSK, accept);
    c.name = name.map(str::to_owned);
    c
}

fn connect(a: EndpointConfig, b: EndpointConfig) -> Net {
    let mut net = Net::new(a, b);
    net.a.connect(net.now, addr(B));
    assert!(net.run(Duration::from_secs(2), |n| n.connected()));
    net
}

fn only_session(ep: &Endpoint) -> &engine_proto::Session {
    let mut sessions = ep.sessions();
    let s = sessions.next().expect("a session");
    assert!(sessions.next().is_none(), "exactly one session");
    s
}

fn closed(events: &[engine_proto::Event]) -> Vec<(SessionId, CloseReason)> {
    events
        .iter()
        .filter_map(|e| match &e.kind {
            SessionEvent::Closed(r) => Some((e.session, r.clone())),
            _ => None,
        })
        .collect()
}

/// A handshake packet of type `ty` addressed to `id` carrying `msg`.
fn handshake_packet(ty: PacketType, id: SessionId, msg: &[u8]) -> Vec<u8> {
    let mut packet = vec![0u8; Header::HANDSHAKE_LEN];
    Header::handshake(ty, id)
        .emit(&mut Writer::new(&mut packet))
        .unwrap();
    packet.extend_from_slice(msg);
    packet
}

/// A data packet of `len` bytes addressed to `id` (it never authenticates).
fn data_packet(id: SessionId, len: usize) -> Vec<u8> {
    let mut packet = vec![0x5a; len.max(Header::DATA_LEN)];
    Header::data(id, false, 1)
        .emit(&mut Writer::new(&mut packet))
        .unwrap();
    packet.truncate(len);
    packet
}

fn reset_packet(id: SessionId, token: [u8; 16]) -> Vec<u8> {
    let mut packet = vec![0u8; StatelessReset::LEN];
    StatelessReset {
        session_id: id,
        token,
    }
    .emit(&mut Writer::new(&mut packet))
    .unwrap();
    packet
}

/// Everything `ep` wants to send right now.
fn drain(ep: &mut Endpoint, now: std::time::Instant) -> Vec<Vec<u8>> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut out = Vec::new();
    while let Some(t) = ep.poll_transmit(now, &mut buf) {
        let seg = t.segment_size.unwrap_or(t.size);
        out.extend(buf[..t.size].chunks(seg).map(<[u8]>::to_vec));
    }
    out
}

// ---- node names ----

#[test]
fn names_are_exchanged_both_ways() {
    let mut net = connect(named(false, Some("alpha")), named(true, Some("beta")));
    assert_eq!(only_session(&net.a).peer_name(), Some("beta"));
    assert_eq!(only_session(&net.b).peer_name(), Some("alpha"));
    // Still a working session.
    let id = only_session(&net.a).local_id();
    let s = net.a.session_mut(id).unwrap();
    let stream = s.open_stream(1).unwrap();
    s.write(stream, b"hi").unwrap();
    assert!(net.run(Duration::from_secs(1), |n| {
        only_session(&n.b).stats().stream_bytes_received == 2
    }));
}

#[test]
fn absent_names_are_none_and_one_sided_names_arrive() {
    let net = connect(named(false, None), named(true, None));
    assert_eq!(only_session(&net.a).peer_name(), None);
    assert_eq!(only_session(&net.b).peer_name(), None);
    let net = connect(named(false, Some("dialler")), named(true, None));
    assert_eq!(only_session(&net.a).peer_name(), None);
    assert_eq!(only_session(&net.b).peer_name(), Some("dialler"));
    let net = connect(named(false, None), named(true, Some("")));
    assert_eq!(only_session(&net.a).peer_name(), Some(""));
}

#[test]
fn an_over_long_configured_name_is_cut_at_a_character_boundary() {
    // 40 two-byte characters: 80 bytes, cut to 32 characters (64 bytes).
    let long = "é".repeat(40);
    let net = connect(named(false, Some(&long)), named(true, None));
    assert_eq!(
        net.a.config().name.as_deref(),
        Some("é".repeat(32).as_str())
    );
    assert_eq!(
        only_session(&net.b).peer_name(),
        Some("é".repeat(32).as_str())
    );
}

#[test]
fn an_invalid_name_from_the_dialler_fails_the_handshake() {
    let mut net = Net::new(config(PSK, false), config(PSK, true));
    let psk = Psk::from_bytes(PSK);
    // Invalid UTF-8, then an over-long name.
    let mut long = vec![0, 0, 0, 9, 1, 0x40, 65];
    long.extend_from_slice(&[b'x'; 65]);
    for (i, payload) in [vec![0, 0, 0, 9, 1, 2, 0xc3, 0x28], long]
        .into_iter()
        .enumerate()
    {
        let mut msg1 = Vec::new();
        Initiator::start(&psk, [10 + i as u8; 32], &payload, &mut msg1).unwrap();
        let mut packet = handshake_packet(PacketType::HandshakeInit, SessionId::NONE, &msg1);
        net.inject(true, addr(A), &mut packet);
        assert_eq!(net.b.stats().handshake_failures, i as u64 + 1);
        assert_eq!(net.b.sessions().count(), 0);
        assert!(drain(&mut net.b, net.now).is_empty(), "no answer");
    }
}

#[test]
fn an_invalid_name_from_the_acceptor_fails_the_dial() {
    let mut net = Net::new(config(PSK, false), config(PSK, true));
    let id = net.a.connect(net.now, addr(B));
    let out = drain(&mut net.a, net.now);
    let msg1 = &out[0][Header::HANDSHAKE_LEN..];
    let mut msg2 = Vec::new();
    respond(&Psk::from_bytes(PSK), [7; 32], msg1, &mut msg2, |_| {
        vec![0, 0, 0, 5, 1, 1, 0xff]
    })
    .unwrap();
    let mut packet = handshake_packet(PacketType::HandshakeResponse, id, &msg2);
    net.inject(false, addr(B), &mut packet);
    assert_eq!(net.a.sessions().count(), 0);
    assert_eq!(net.a.stats().handshake_failures, 1);
    let events: Vec<_> = std::iter::from_fn(|| net.a.poll_event()).collect();
    assert_eq!(closed(&events), [(id, CloseReason::HandshakeFailed)]);
}

// ---- stateless resets ----

#[test]
fn a_restarted_acceptor_resets_the_session_and_a_new_dial_succeeds() {
    let mut net = connect(config(PSK, false), config(PSK, true));
    let old = only_session(&net.a).local_id();
    // B restarts: same key, new seed, no sessions.
    net.b = Endpoint::new(config(PSK, true), [9; 32]);
    let s = net.a.session_mut(old).unwrap();
    let stream = s.open_stream(1).unwrap();
    s.write(stream, b"anyone there?").unwrap();
    let sent_at = net.now;
    assert!(net.run(Duration::from_secs(2), |n| !closed(&n.events_a).is_empty()));
    assert_eq!(closed(&net.events_a), [(old, CloseReason::PeerReset)]);
    // One round trip (25 ms each way), not a timeout.
    assert!(net.now - sent_at <= Duration::from_millis(60));
    assert_eq!(net.a.sessions().count(), 0, "the reset session is gone");
    assert_eq!(net.b.stats().resets_sent, 1);
    assert_eq!(net.a.stats().resets_received, 1);
    assert_eq!(net.a.stats().resets_invalid, 0);
    assert!(closed(&net.events_b).is_empty());
    // Dial again.
    net.events_a.clear();
    net.events_b.clear();
    let new = net.a.connect(net.now, addr(B));
    assert!(net.run(Duration::from_secs(2), |n| n.connected()));
    assert!(net.a.session(new).is_some_and(|s| s.is_confirmed()));
    assert_eq!(net.b.sessions().count(), 1);
}

#[test]
fn a_reset_closes_only_the_session_it_names() {
    let mut net = Net::new(config(PSK, false), config(PSK, true));
    let first = net.a.connect(net.now, addr(B));
    let second = net.a.connect(net.now, addr(B));
    assert!(net.run(Duration::from_secs(2), |n| {
        n.a.sessions().count() == 2 && n.b.sessions().all(|s| s.is_confirmed())
    }));
    let remote = net.a.session(second).unwrap().remote_id();
    let token = ResetKey::new(&Psk::from_bytes(PSK)).token(remote);
    let mut reset = reset_packet(remote, token);
    net.inject(false, addr(B), &mut reset);
    net.run(Duration::from_millis(1), |_| false);
    assert_eq!(closed(&net.events_a), [(second, CloseReason::PeerReset)]);
    assert!(net.a.session(second).is_none());
    assert!(net.a.session(first).is_some());
    assert_eq!(net.a.stats().resets_received, 1);
    // Replaying it changes nothing more: no session has that remote id now.
    let mut again = reset_packet(remote, token);
    net.inject(false, addr(B), &mut again);
    assert_eq!(net.a.stats().resets_invalid, 1);
    assert!(net.a.session(first).is_some());
}

#[test]
fn forged_resets_change_nothing_and_are_counted() {
    let mut net = connect(config(PSK, false), config(PSK, true));
    let session = only_session(&net.a);
    let (local, remote) = (session.local_id(), session.remote_id());
    let before = session.stats();
    let key = ResetKey::new(&Psk::from_bytes(PSK));
    let mut wrong_token = key.token(remote);
    wrong_token[0] ^= 1;
    let other_psk = ResetKey::new(&Psk::from_bytes([2; 32])).token(remote);
    let unknown = SessionId::new(0, remote.local() ^ 1);
    let cases: [(Vec<u8>, &str); 5] = [
        (reset_packet(remote, wrong_token), B),
        (reset_packet(remote, other_psk), B),
        // The right token from the wrong address.
        (reset_packet(remote, key.token(remote)), "127.0.0.1:3000"),
        (reset_packet(unknown, key.token(unknown)), B),
        // Cut short: not a reset at all.
        (reset_packet(remote, key.token(remote))[..20].to_vec(), B),
    ];
    for (mut packet, from) in cases {
        net.inject(false, addr(from), &mut packet);
    }
    let stats = net.a.stats();
    assert_eq!(stats.resets_invalid, 4);
    assert_eq!(stats.malformed, 1);
    assert_eq!(stats.resets_received, 0);
    assert_eq!(net.a.session(local).unwrap().stats(), before);
    assert_eq!(net.b.stats().resets_sent, 0);
    net.run(Duration::from_secs(1), |_| false);
    assert!(closed(&net.events_a).is_empty());
    assert!(net.a.session(local).is_some());
}

#[test]
fn resets_answer_only_long_enough_data_packets() {
    let mut ep = Endpoint::new(config(PSK, true), [3; 32]);
    let now = std::time::Instant::now();
    let from = addr(A);
    let id = SessionId::new(0, 77);
    let key = ResetKey::new(&Psk::from_bytes(PSK));
    // A reset, handshake packets and a too-short data packet: no answer.
    let mut inputs = vec![
        reset_packet(id, key.token(id)),
        handshake_packet(PacketType::HandshakeResponse, id, &[0; 64]),
        handshake_packet(PacketType::HandshakeInit, SessionId::NONE, &[0; 64]),
        data_packet(id, StatelessReset::MIN_TRIGGER_LEN - 1),
        data_packet(SessionId::NONE, 100),
    ];
    for packet in &mut inputs {
        ep.handle_datagram(now, from, packet);
    }
    assert!(drain(&mut ep, now).is_empty());
    assert_eq!(ep.stats().resets_sent, 0);
    // The shortest data packet a session could send is answered, with something shorter.
    let mut trigger = data_packet(id, StatelessReset::MIN_TRIGGER_LEN);
    assert_eq!(trigger.len(), Header::DATA_LEN + 1 + TAG_LEN);
    ep.handle_datagram(now, from, &mut trigger);
    let out = drain(&mut ep, now);
    assert_eq!(out.len(), 1);
    assert!(out[0].len() < trigger.len());
    let reset = StatelessReset::parse(&out[0]).unwrap();
    assert_eq!(reset.session_id, id);
    assert!(key.verify(id, &reset.token));
    assert_eq!(ep.stats().resets_sent, 1);
}

#[test]
fn resets_are_rate_limited() {
    let mut cfg = config(PSK, true);
    cfg.resets_per_sec = 5;
    let mut ep = Endpoint::new(cfg, [3; 32]);
    let t0 = std::time::Instant::now();
    let mut sent = 0;
    for i in 0..20u32 {
        let mut p = data_packet(SessionId::new(0, 100 + i), 200);
        ep.handle_datagram(
            t0 + Duration::from_millis(u64::from(i) * 10),
            addr(A),
            &mut p,
        );
        let out = drain(&mut ep, t0);
        assert!(out.len() <= 1, "at most one reset per packet");
        sent += out.len();
    }
    assert_eq!(sent, 5);
    assert_eq!(ep.stats().resets_sent, 5);
    assert_eq!(ep.stats().resets_rate_limited, 15);
    // A second later the budget is back.
    let later = t0 + Duration::from_millis(1200);
    for i in 0..10u32 {
        let mut p = data_packet(SessionId::new(0, 500 + i), 200);
        ep.handle_datagram(later, addr(A), &mut p);
    }
    assert_eq!(drain(&mut ep, later).len(), 5);
    // Disabled entirely.
    let mut cfg = config(PSK, true);
    cfg.resets_per_sec = 0;
    let mut quiet = Endpoint::new(cfg, [3; 32]);
    let mut p = data_packet(SessionId::new(0, 1), 200);
    quiet.handle_datagram(t0, addr(A), &mut p);
    assert!(drain(&mut quiet, t0).is_empty());
}

#[test]
fn a_burst_for_one_forgotten_session_gets_one_reset() {
    let mut ep = Endpoint::new(config(PSK, true), [3; 32]);
    let t0 = std::time::Instant::now();
    let id = SessionId::new(0, 42);
    let count = |ep: &mut Endpoint, at, from: &str| {
        for _ in 0..10 {
            let mut p = data_packet(id, 1200);
            ep.handle_datagram(at, addr(from), &mut p);
        }
        drain(ep, at).len()
    };
    assert_eq!(count(&mut ep, t0, A), 1);
    // The same id from another address is another peer.
    assert_eq!(count(&mut ep, t0, "127.0.0.1:3000"), 1);
    assert_eq!(count(&mut ep, t0 + Duration::from_millis(100), A), 0);
    // Later the peer may still be sending (the reset was lost): it gets another.
    assert_eq!(count(&mut ep, t0 + Duration::from_millis(300), A), 1);
    assert_eq!(ep.stats().resets_sent, 3);
    assert_eq!(ep.stats().resets_rate_limited, 37);
}

// ---- dead paths ----

#[test]
fn an_unanswered_path_is_declared_dead_after_the_path_timeout() {
    let mut net = connect(config(PSK, false), config(PSK, true));
    let id = only_session(&net.a).local_id();
    // Remembers when the last datagram A will ever receive arrives; then the network goes dark.
    let dark = Rc::new(Cell::new(false));
    let last_arrival = Rc::new(Cell::new(net.now));
    let (d, l) = (dark.clone(), last_arrival.clone());
    net.filter = Box::new(move |dg| {
        if d.get() {
            return false;
        }
        if dg.to == addr(A) {
            l.set(l.get().max(dg.at));
        }
        true
    });
    net.run(Duration::from_millis(500), |_| false);
    dark.set(true);
    // A has something to say.
    let s = net.a.session_mut(id).unwrap();
    let stream = s.open_stream(1).unwrap();
    s.write(stream, &[7; 5000]).unwrap();
    let start = net.now;
    assert!(net.run(Duration::from_secs(30), |n| !closed(&n.events_a).is_empty()));
    assert_eq!(closed(&net.events_a), [(id, CloseReason::PathDead)]);
    let path_timeout = net.a.config().session.path_timeout;
    // Not before the timeout ran out since the last sign of life, and right when it did (A had
    // data outstanding all along).
    let since = last_arrival.get().max(start);
    assert!(
        net.now >= since + path_timeout,
        "closed {:?} after the last arrival",
        net.now - since
    );
    assert!(
        net.now <= since + path_timeout + Duration::from_millis(10),
        "closed {:?} after the last arrival",
        net.now - since
    );
    assert_eq!(net.a.sessions().count(), 0);
    // The idle acceptor learns too, once its keepalive goes unanswered.
    assert!(net.run(Duration::from_secs(30), |n| !closed(&n.events_b).is_empty()));
    assert!(matches!(
        closed(&net.events_b)[..],
        [(_, CloseReason::PathDead)]
    ));
}

#[test]
fn an_idle_healthy_session_never_declares_its_path_dead() {
    let mut net = connect(config(PSK, false), config(PSK, true));
    net.delay = Duration::from_millis(400);
    net.run(Duration::from_secs(120), |_| false);
    assert!(closed(&net.events_a).is_empty());
    assert!(closed(&net.events_b).is_empty());
    assert!(
        only_session(&net.a).stats().packets_sent >= 15,
        "keepalives flowed"
    );
}

#[test]
fn a_very_long_round_trip_gets_three_probe_timeouts_before_the_path_is_dead() {
    let mut net = Net::new(config(PSK, false), config(PSK, true));
    net.delay = Duration::from_millis(1500);
    net.a.connect(net.now, addr(B));
    assert!(net.run(Duration::from_secs(30), |n| n.connected()));
    // Learn the 3 s round trip from a few keepalives.
    net.run(Duration::from_secs(30), |_| false);
    let id = only_session(&net.a).local_id();
    let st = only_session(&net.a).stats();
    assert!(st.rtt_smoothed >= Duration::from_secs(3), "{st:?}");
    let dark = Rc::new(Cell::new(false));
    let last_arrival = Rc::new(Cell::new(net.now));
    let (d, l) = (dark.clone(), last_arrival.clone());
    net.filter = Box::new(move |dg| {
        if d.get() {
            return false;
        }
        if dg.to == addr(A) {
            l.set(l.get().max(dg.at));
        }
        true
    });
    net.run(Duration::from_secs(1), |_| false);
    dark.set(true);
    let s = net.a.session_mut(id).unwrap();
    let stream = s.open_stream(1).unwrap();
    s.write(stream, b"still there?").unwrap();
    assert!(net.run(Duration::from_secs(60), |n| !closed(&n.events_a).is_empty()));
    assert_eq!(closed(&net.events_a), [(id, CloseReason::PathDead)]);
    // Three probe timeouts (each over the 3 s RTT) are more than the 8 s path timeout.
    let silent = net.now - last_arrival.get();
    assert!(silent >= Duration::from_secs(9), "dead after {silent:?}");
}

/// A round trip longer than the initial timeout is still measured: every early packet is
/// declared lost before its ACK returns, so the sample must come from those late ACKs.
#[test]
fn a_round_trip_longer_than_the_initial_timeout_is_measured() {
    let mut net = Net::new(config(PSK, false), config(PSK, true));
    net.delay = Duration::from_millis(500);
    net.a.connect(net.now, addr(B));
    assert!(net.run(Duration::from_secs(10), |n| n.connected()));
    net.run(Duration::from_secs(30), |_| false);
    for ep in [&net.a, &net.b] {
        let rtt = only_session(ep).stats().rtt_smoothed;
        assert!(
            rtt >= Duration::from_millis(900) && rtt <= Duration::from_millis(1100),
            "{rtt:?}"
        );
    }
}
