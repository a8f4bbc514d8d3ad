//! Regression tests for bugs a review found: each drives two endpoints through a small
//! virtual-time network with a per-packet filter (drop or delay).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::*;
use crate::crypto::Psk;
use crate::endpoint::{Endpoint, EndpointConfig, Event};

struct Flight {
    at: Instant,
    to_server: bool,
    data: Vec<u8>,
}

struct Net {
    client: Endpoint,
    server: Endpoint,
    now: Instant,
    flights: Vec<Flight>,
    cid: SessionId,
    client_events: Vec<Event>,
    server_events: Vec<Event>,
    /// (to_server, index among packets sent that direction) -> extra delay, or None to drop.
    filter: Box<dyn FnMut(bool, usize) -> Option<Duration>>,
    sent: [usize; 2],
}

const C: &str = "127.0.0.1:1";
const S: &str = "127.0.0.1:2";

impl Net {
    fn new(cfg: EndpointConfig) -> Self {
        let mut client_cfg = cfg.clone();
        client_cfg.accept = false;
        let mut client = Endpoint::new(client_cfg, [1; 32]);
        let server = Endpoint::new(cfg, [2; 32]);
        let now = Instant::now();
        let cid = client.connect(now, S.parse().unwrap());
        Self {
            client,
            server,
            now,
            flights: Vec::new(),
            cid,
            client_events: Vec::new(),
            server_events: Vec::new(),
            filter: Box::new(|_, _| Some(Duration::ZERO)),
            sent: [0, 0],
        }
    }

    /// One step: output, events, advance to the next event (never beyond `limit`), input, timers.
    fn step(&mut self, limit: Instant) {
        let one_way = Duration::from_millis(10);
        let mut buf = vec![0u8; 64 * 1024];
        for to_server in [true, false] {
            loop {
                let ep = if to_server {
                    &mut self.client
                } else {
                    &mut self.server
                };
                let Some(t) = ep.poll_transmit(self.now, &mut buf) else {
                    break;
                };
                let seg = t.segment_size.unwrap_or(t.size);
                for chunk in buf[..t.size].chunks(seg) {
                    let i = self.sent[usize::from(to_server)];
                    self.sent[usize::from(to_server)] += 1;
                    if let Some(extra) = (self.filter)(to_server, i) {
                        self.flights.push(Flight {
                            at: self.now + one_way + extra,
                            to_server,
                            data: chunk.to_vec(),
                        });
                    }
                }
            }
        }
        while let Some(e) = self.client.poll_event() {
            self.client_events.push(e);
        }
        while let Some(e) = self.server.poll_event() {
            self.server_events.push(e);
        }
        let next = self
            .flights
            .iter()
            .map(|f| f.at)
            .chain(self.client.poll_timeout())
            .chain(self.server.poll_timeout())
            .min()
            .unwrap_or(limit)
            .min(limit);
        self.now = self.now.max(next);
        let now = self.now;
        let (due, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut self.flights)
            .into_iter()
            .partition(|f| f.at <= now);
        self.flights = rest;
        for mut f in due {
            if f.to_server {
                self.server
                    .handle_datagram(now, C.parse().unwrap(), &mut f.data);
            } else {
                self.client
                    .handle_datagram(now, S.parse().unwrap(), &mut f.data);
            }
        }
        self.client.handle_timeout(now);
        self.server.handle_timeout(now);
    }

    fn run_until(&mut self, t: Instant) {
        let mut n = 0;
        while self.now < t {
            self.step(t);
            n += 1;
            assert!(n < 5_000_000, "too many steps");
        }
    }
}

/// 1 ms of reordering (far below the time threshold of 1.125 RTT) is not a loss.
#[test]
fn slight_reordering_is_not_declared_lost() {
    let mut net = Net::new(EndpointConfig::new(Psk::from_bytes([3; 32])));
    net.run_until(net.now + Duration::from_millis(100));
    let s = net.client.session_mut(net.cid).expect("connected");
    let id = s.open_stream(1).unwrap();
    s.write(id, &[7u8; 3000]).unwrap();
    let base = net.sent[1];
    // Delay exactly one client->server data packet by 1 ms (well below 1.125 * RTT = 22 ms).
    net.filter = Box::new(move |to_server, i| {
        Some(if to_server && i == base {
            Duration::from_millis(1)
        } else {
            Duration::ZERO
        })
    });
    net.run_until(net.now + Duration::from_secs(1));
    let st = net.client.session(net.cid).unwrap().stats();
    println!(
        "lost {} spurious {} retx {}",
        st.packets_lost, st.spurious_losses, st.stream_bytes_retransmitted
    );
    assert_eq!(
        st.packets_lost, 0,
        "1 ms of reordering declared a loss: {st:?}"
    );
}

/// A peer that only sends ack-eliciting DATAGRAMs must not make the receiver keep its ACK-only
/// packets (nothing ever acknowledges them on purpose).
#[test]
fn ack_only_packets_are_not_kept() {
    let mut net = Net::new(EndpointConfig::new(Psk::from_bytes([3; 32])));
    net.run_until(net.now + Duration::from_millis(100));
    let sid = net.server.sessions().next().unwrap().local_id();
    let start = net.now;
    let mut last = 0;
    for sec in 1..=30 {
        // 200 datagrams per second from the client.
        for k in 0..200 {
            net.run_until(start + Duration::from_secs(sec - 1) + Duration::from_millis(5 * k));
            net.client
                .session_mut(net.cid)
                .unwrap()
                .send_datagram(b"ping");
            while net
                .server
                .session_mut(sid)
                .unwrap()
                .recv_datagram()
                .is_some()
            {}
        }
        last = net.server.session(sid).unwrap().tracked_sent();
    }
    let st = net.server.session(sid).unwrap().stats();
    println!(
        "server tracks {last} sent packets after 30 s; packets_sent {}",
        st.packets_sent
    );
    assert!(last < 1000, "server keeps {last} ACK-only packets");
}

/// A lost ACK-only packet is not a lost packet (for the stats or the rate controller).
#[test]
fn lost_ack_only_packets_are_not_losses() {
    let mut net = Net::new(EndpointConfig::new(Psk::from_bytes([3; 32])));
    net.run_until(net.now + Duration::from_millis(100));
    let sid = net.server.sessions().next().unwrap().local_id();
    let s = net.client.session_mut(net.cid).unwrap();
    let id = s.open_stream(1).unwrap();
    s.write(id, &[7u8; 200_000]).unwrap();
    let base = net.sent[0];
    // Drop two early server->client packets (they carry only ACKs here).
    net.filter = Box::new(move |to_server, i| {
        if !to_server && (i == base + 1 || i == base + 2) {
            None
        } else {
            Some(Duration::ZERO)
        }
    });
    net.run_until(net.now + Duration::from_secs(1));
    // Now the server sends something the client acknowledges; that ACK reveals the gaps.
    let s = net.server.session_mut(sid).unwrap();
    let id = s.open_stream(2).unwrap();
    s.write(id, b"reply").unwrap();
    net.run_until(net.now + Duration::from_secs(1));
    let st = net.server.session(sid).unwrap().stats();
    println!(
        "server: lost {} sent {} loss_rate {}",
        st.packets_lost, st.packets_sent, st.loss_rate
    );
    assert_eq!(st.packets_lost, 0, "ACK-only losses counted: {st:?}");
}

/// Closing from both ends at once reports Closed once on each side.
#[test]
fn simultaneous_close_reports_closed_once() {
    let mut net = Net::new(EndpointConfig::new(Psk::from_bytes([3; 32])));
    net.run_until(net.now + Duration::from_millis(100));
    let sid = net.server.sessions().next().unwrap().local_id();
    let now = net.now;
    net.client
        .session_mut(net.cid)
        .unwrap()
        .close(now, 0, b"bye");
    net.server.session_mut(sid).unwrap().close(now, 0, b"bye");
    net.run_until(net.now + Duration::from_secs(2));
    let closed = |ev: &[Event]| {
        ev.iter()
            .filter(|e| matches!(e.kind, SessionEvent::Closed(_)))
            .map(|e| e.kind.clone())
            .collect::<Vec<_>>()
    };
    println!(
        "client {:?}\nserver {:?}",
        closed(&net.client_events),
        closed(&net.server_events)
    );
    assert_eq!(closed(&net.client_events).len(), 1);
    assert_eq!(closed(&net.server_events).len(), 1);
}

/// One captured HandshakeInit replayed from many source ports creates at most one half-open
/// session, which expires quietly; each replay gets one cached answer, so nothing is amplified.
#[test]
fn a_replayed_handshake_creates_no_sessions_and_no_amplification() {
    let cfg = EndpointConfig::new(Psk::from_bytes([3; 32]));
    let mut client_cfg = cfg.clone();
    client_cfg.accept = false;
    let mut client = Endpoint::new(client_cfg, [1; 32]);
    let mut server = Endpoint::new(cfg, [2; 32]);
    let t0 = Instant::now();
    client.connect(t0, S.parse().unwrap());
    let mut buf = vec![0u8; 2048];
    let t = client.poll_transmit(t0, &mut buf).unwrap();
    let msg1 = buf[..t.size].to_vec();
    for port in 1000..1100u16 {
        let from: SocketAddr = format!("10.0.0.1:{port}").parse().unwrap();
        server.handle_datagram(t0, from, &mut msg1.clone());
    }
    let mut sent = 0;
    let mut now = t0;
    let mut max_sessions = 0;
    while now < t0 + Duration::from_secs(120) {
        server.handle_timeout(now);
        while server.poll_transmit(now, &mut buf).is_some() {
            sent += 1;
        }
        while server.poll_event().is_some() {}
        max_sessions = max_sessions.max(server.sessions().count());
        now = server
            .poll_timeout()
            .unwrap_or(t0 + Duration::from_secs(120))
            .max(now + Duration::from_millis(1));
    }
    println!("sessions {max_sessions}, packets sent to spoofed sources {sent}");
    assert!(
        max_sessions <= 1,
        "{max_sessions} half-open sessions from one replayed init"
    );
    assert!(sent <= 100, "{sent} packets sent for 100 replays");
    assert_eq!(
        server.sessions().count(),
        0,
        "the half-open session expired"
    );
}
