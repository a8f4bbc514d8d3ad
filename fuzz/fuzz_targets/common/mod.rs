//! The in-memory network shared by `endpoint_datagrams` and `stream_ops`: two endpoints with
//! fixed seeds and key that complete a real handshake, then exchange datagrams through queues
//! the fuzzer controls (deliver, drop, duplicate, reorder), in virtual time.
//!
//! Every datagram an endpoint sends is checked on the way out: it has a parseable header, fits
//! the MTU, and (while the sender holds only the session under test) opens under that session's
//! keys and parses as frames. The harness knows the keys because it replays the acceptor's
//! seeded RNG and recomputes its side of the handshake; with the fuzzing null cipher that also
//! lets it seal packets of its own ([`Forger`]).
//!
//! Lives in a directory so that `scripts/fuzz-smoke.sh` (which counts `fuzz_targets/*.rs`) does
//! not take it for a target.

#![allow(dead_code)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use engine_proto::crypto::{Psk, RekeyLimits, RxKeys, SessionKeys, TAG_LEN, TxKeys, respond};
use engine_proto::wire::{
    FrameIter, HandshakeParams, Header, PacketType, SessionId, Writer, decode_packet_number,
};
use engine_proto::{Endpoint, EndpointConfig, Event, FecConfig, SessionEvent};
use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};

pub const PSK: [u8; 32] = [0x42; 32];
/// Endpoint seeds: index 0 is the dialler (A), 1 the acceptor (B).
pub const SEEDS: [[u8; 32]; 2] = [[1; 32], [2; 32]];
pub const MAX_SESSIONS: usize = 4;
/// Upper bound on datagrams one endpoint may emit at a single instant; more means it would
/// keep a dataplane busy forever without the clock moving.
const MAX_BURST: usize = 20_000;
/// How many recent genuine datagrams are kept for mutation.
const CAPTURE_KEEP: usize = 32;

/// Address of endpoint `i` (0 = A, 1 = B); 2 is a third party nobody listens at.
pub fn addr(i: usize) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 1000 * (i as u16 + 1)))
}

fn index_of(a: SocketAddr) -> Option<usize> {
    (0..2).find(|&i| addr(i) == a)
}

/// A datagram on its way to an endpoint.
#[derive(Debug, Clone)]
pub struct Datagram {
    pub from: SocketAddr,
    pub data: Vec<u8>,
}

/// A genuine datagram seen on the wire, with the endpoint it was sent by.
#[derive(Debug, Clone)]
pub struct Captured {
    pub sender: usize,
    pub data: Vec<u8>,
}

/// Fuzzer-chosen manipulation of the network queues.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum NetOp {
    /// Deliver the next `n` datagrams queued for endpoint `to`.
    Deliver { to: bool, n: u8 },
    /// Lose a queued datagram.
    Drop { to: bool, index: u8 },
    /// Deliver a queued datagram twice (the copy goes to the back).
    Duplicate { to: bool, index: u8 },
    /// Move a queued datagram to the front.
    Reorder { to: bool, index: u8 },
    /// Deliver everything queued, repeatedly, without moving the clock.
    Flush,
    /// Move the clock forward.
    Advance { ms: u16 },
    /// Run the network: deliver what is queued, else jump to the next timer; `steps` times.
    Run { steps: u8 },
}

pub struct Net {
    pub now: Instant,
    pub endpoints: [Endpoint; 2],
    /// Each endpoint's id for the session under test.
    pub ids: [SessionId; 2],
    /// Datagrams queued for each endpoint.
    pub queues: [VecDeque<Datagram>; 2],
    /// Events polled from each endpoint, for the target to consume.
    pub events: [Vec<Event>; 2],
    /// The two handshake messages, then recent genuine datagrams (only when capturing).
    handshake_messages: Vec<Captured>,
    captured: VecDeque<Captured>,
    capture: bool,
    /// Per sending endpoint, the receive keys of the session under test.
    pub observers: [Observer; 2],
    /// The handshake secrets, per sending endpoint.
    pub secrets: [[u8; 32]; 2],
    delivered: [u64; 2],
    buf: Vec<u8>,
}

/// Decrypts what one endpoint sends on the session under test, to check it is well formed.
pub struct Observer {
    keys: RxKeys,
    largest: Option<u64>,
    /// Cleared once a data packet could not be attributed to the session under test; the key
    /// phase could then be out of step, so checking stops.
    in_sync: bool,
}

impl Observer {
    fn new(secret: [u8; 32]) -> Self {
        Self {
            keys: RxKeys::new(secret),
            largest: None,
            in_sync: true,
        }
    }

    /// The packet number the sender will (at least) use next, as far as we have seen.
    pub fn next_pn(&self) -> u64 {
        self.largest.map_or(0, |l| l + 1)
    }
}

impl Net {
    /// Builds both endpoints and runs the handshake to completion. `configure` adjusts both
    /// endpoints' settings.
    pub fn new(capture: bool, configure: impl Fn(&mut EndpointConfig)) -> Self {
        let now = Instant::now();
        let endpoints = [0, 1].map(|i| {
            let mut c = EndpointConfig::new(Psk::from_bytes(PSK));
            c.max_sessions = MAX_SESSIONS;
            configure(&mut c);
            Endpoint::new(c, SEEDS[i])
        });
        let mut net = Self {
            now,
            endpoints,
            ids: [SessionId::NONE; 2],
            queues: [VecDeque::new(), VecDeque::new()],
            events: [Vec::new(), Vec::new()],
            handshake_messages: Vec::new(),
            captured: VecDeque::new(),
            capture,
            observers: [Observer::new([0; 32]), Observer::new([0; 32])],
            secrets: [[0; 32]; 2],
            delivered: [0; 2],
            buf: vec![0; 64 * 1024],
        };
        net.handshake();
        net
    }

    fn handshake(&mut self) {
        let a_id = self.endpoints[0].connect(self.now, addr(1));
        // The dial's first message 1 goes out on its (immediate) retry timer.
        self.endpoints[0].handle_timeout(self.now);
        let msg1 = self.transmit_raw(0);
        self.endpoints[1].handle_datagram(self.now, addr(0), &mut msg1.clone());
        let msg2 = self.transmit_raw(1);
        let fec = self.endpoints[1].config().session.fec;
        let (b_id, keys) = acceptor_keys(&msg1, &msg2, fec);
        self.ids = [a_id, b_id];
        // The acceptor's tx secret protects B -> A, its rx secret A -> B.
        self.secrets = [keys.rx_secret, keys.tx_secret];
        self.observers = self.secrets.map(Observer::new);
        self.endpoints[0].handle_datagram(self.now, addr(1), &mut msg2.clone());
        self.delivered = [1, 1];
        if self.capture {
            self.handshake_messages = vec![
                Captured {
                    sender: 0,
                    data: msg1,
                },
                Captured {
                    sender: 1,
                    data: msg2,
                },
            ];
        }
        // The dialler's first packet confirms the session to the acceptor.
        self.flush();
        for i in 0..2 {
            let confirmed = self.endpoints[i]
                .session(self.ids[i])
                .is_some_and(|s| s.is_confirmed());
            assert!(confirmed, "handshake did not complete at endpoint {i}");
            assert!(
                self.events[i]
                    .iter()
                    .any(|e| e.session == self.ids[i] && e.kind == SessionEvent::Connected),
                "no Connected event at endpoint {i}"
            );
        }
        self.events = [Vec::new(), Vec::new()];
    }

    /// The single handshake datagram endpoint `i` has to send.
    fn transmit_raw(&mut self, i: usize) -> Vec<u8> {
        let t = self.endpoints[i]
            .poll_transmit(self.now, &mut self.buf)
            .expect("a handshake message to send");
        self.buf[..t.size].to_vec()
    }

    /// A genuine datagram seen so far (the handshake messages and the latest others), picked
    /// by `index` modulo their number.
    pub fn captured(&self, index: u8) -> Option<Captured> {
        let n = self.handshake_messages.len() + self.captured.len();
        let i = usize::from(index).checked_rem(n)?;
        let c = match i.checked_sub(self.handshake_messages.len()) {
            None => &self.handshake_messages[i],
            Some(j) => &self.captured[j],
        };
        Some(c.clone())
    }

    pub fn session_mut(&mut self, i: usize) -> Option<&mut engine_proto::Session> {
        self.endpoints[i].session_mut(self.ids[i])
    }

    /// Hands a datagram to endpoint `to` now.
    pub fn deliver(&mut self, to: usize, from: SocketAddr, data: &mut [u8]) {
        self.endpoints[to].handle_datagram(self.now, from, data);
        self.delivered[to] += 1;
    }

    /// Collects everything both endpoints want to send now (checking each datagram), and their
    /// events.
    pub fn drain(&mut self) {
        for i in 0..2 {
            let mut sent = 0;
            while let Some(t) = self.endpoints[i].poll_transmit(self.now, &mut self.buf) {
                assert!(t.size <= self.buf.len());
                let seg = t.segment_size.unwrap_or(t.size);
                assert!(seg > 0, "empty datagram");
                let mtu = self.endpoints[i].config().session.mtu;
                let sessions = self.endpoints[i].sessions().count();
                let data = self.buf[..t.size].to_vec();
                for chunk in data.chunks(seg) {
                    sent += 1;
                    assert!(chunk.len() <= mtu, "datagram of {} > MTU", chunk.len());
                    self.check_outgoing(i, sessions, chunk);
                    if self.capture {
                        if self.captured.len() == CAPTURE_KEEP {
                            self.captured.pop_front();
                        }
                        self.captured.push_back(Captured {
                            sender: i,
                            data: chunk.to_vec(),
                        });
                    }
                    if let Some(to) = index_of(t.destination) {
                        self.queues[to].push_back(Datagram {
                            from: addr(i),
                            data: chunk.to_vec(),
                        });
                    }
                }
                assert!(
                    sent <= MAX_BURST,
                    "endpoint {i} keeps transmitting at a fixed time"
                );
            }
            while let Some(e) = self.endpoints[i].poll_event() {
                self.events[i].push(e);
            }
        }
    }

    /// What endpoint `i` sends must be well formed; data packets of the session under test
    /// must authenticate under its keys and hold only valid frames.
    fn check_outgoing(&mut self, i: usize, sessions: usize, packet: &[u8]) {
        let (header, header_len) = Header::parse(packet).expect("sent datagram has a valid header");
        if header.ty != PacketType::Data {
            return;
        }
        assert!(
            packet.len() >= header_len + TAG_LEN,
            "data packet too short"
        );
        let peer = 1 - i;
        let obs = &mut self.observers[i];
        if !obs.in_sync {
            return;
        }
        let under_test = self.endpoints[i].session(self.ids[i]).is_some() && sessions == 1;
        if header.session_id != self.ids[peer] || !under_test {
            // Could be another session's (a second handshake the fuzzer caused).
            obs.in_sync = false;
            return;
        }
        let pn = decode_packet_number(obs.largest, header.truncated_pn);
        let mut body = packet[header_len..].to_vec();
        let plain = obs
            .keys
            .open(pn, header.key_phase, &packet[..header_len], &mut body)
            .expect("a sent packet opens under the session's keys");
        for frame in FrameIter::new(plain) {
            if let Err(e) = frame {
                panic!(
                    "endpoint {i} sent packet {pn} with an invalid frame ({e}); plaintext {:02x?}",
                    plain
                );
            }
        }
        obs.largest = Some(obs.largest.map_or(pn, |l| l.max(pn)));
    }

    /// Delivers up to `n` datagrams queued for `to`.
    pub fn deliver_queued(&mut self, to: usize, n: usize) {
        for _ in 0..n {
            let Some(mut d) = self.queues[to].pop_front() else {
                break;
            };
            self.deliver(to, d.from, &mut d.data);
        }
    }

    /// Delivers queued datagrams until both endpoints are quiet at the current time.
    pub fn flush(&mut self) {
        for _ in 0..64 {
            self.drain();
            if self.queues.iter().all(VecDeque::is_empty) {
                return;
            }
            for to in 0..2 {
                let n = self.queues[to].len();
                self.deliver_queued(to, n);
            }
        }
        self.drain();
    }

    /// Moves the clock to `to` (if later) and lets both endpoints handle their timers.
    pub fn advance_to(&mut self, to: Instant) {
        self.now = self.now.max(to);
        for ep in &mut self.endpoints {
            ep.handle_timeout(self.now);
        }
        self.drain();
    }

    /// One step of a network without delay: deliver what is queued, else fire the next timer.
    pub fn step(&mut self) {
        self.drain();
        if self.queues.iter().any(|q| !q.is_empty()) {
            for to in 0..2 {
                let n = self.queues[to].len();
                self.deliver_queued(to, n);
            }
            self.drain();
            return;
        }
        let next = self
            .endpoints
            .iter()
            .filter_map(Endpoint::poll_timeout)
            .min();
        if let Some(t) = next {
            self.advance_to(t);
        }
    }

    pub fn apply(&mut self, op: NetOp) {
        let pick = |q: &VecDeque<Datagram>, index: u8| {
            (!q.is_empty()).then(|| usize::from(index) % q.len())
        };
        match op {
            NetOp::Deliver { to, n } => self.deliver_queued(usize::from(to), usize::from(n)),
            NetOp::Drop { to, index } => {
                let q = &mut self.queues[usize::from(to)];
                if let Some(i) = pick(q, index) {
                    q.remove(i);
                }
            }
            NetOp::Duplicate { to, index } => {
                let q = &mut self.queues[usize::from(to)];
                if let Some(i) = pick(q, index) {
                    let d = q[i].clone();
                    q.push_back(d);
                }
            }
            NetOp::Reorder { to, index } => {
                let q = &mut self.queues[usize::from(to)];
                if let Some(d) = pick(q, index).and_then(|i| q.remove(i)) {
                    q.push_front(d);
                }
            }
            NetOp::Flush => self.flush(),
            NetOp::Advance { ms } => {
                self.advance_to(self.now + Duration::from_millis(u64::from(ms)));
            }
            NetOp::Run { steps } => {
                for _ in 0..steps {
                    self.step();
                }
            }
        }
        self.drain();
    }

    /// Cheap invariants that hold whatever arrived.
    pub fn check(&self) {
        for (i, ep) in self.endpoints.iter().enumerate() {
            assert!(
                ep.sessions().count() <= MAX_SESSIONS,
                "session limit exceeded"
            );
            let stats = ep.stats();
            assert_eq!(stats.datagrams_received, self.delivered[i]);
            for s in ep.sessions() {
                assert_ne!(s.local_id().local(), 0, "session with a null id");
                assert!(!s.is_closed(), "closed session kept");
            }
        }
    }
}

/// The acceptor's session id and keys for the handshake messages `msg1` and `msg2`.
///
/// Fixed seeds make every run's handshake the same, and X25519 under coverage instrumentation
/// is most of a run's cost, so the answer is computed once and reused while the messages match.
fn acceptor_keys(msg1: &[u8], msg2: &[u8], fec: FecConfig) -> (SessionId, SessionKeys) {
    type Cached = (Vec<u8>, Vec<u8>, SessionId, SessionKeys);
    static CACHE: OnceLock<Cached> = OnceLock::new();
    let (m1, m2, id, keys) = CACHE.get_or_init(|| {
        let (id, keys) = compute_acceptor_keys(msg1, msg2, fec);
        (msg1.to_vec(), msg2.to_vec(), id, keys)
    });
    if m1 == msg1 && m2 == msg2 {
        (*id, keys.clone())
    } else {
        compute_acceptor_keys(msg1, msg2, fec)
    }
}

/// Recomputes the acceptor's side of the handshake: its session id and keys. The acceptor's
/// endpoint RNG draws a session id, then a handshake seed; the Noise split keys depend only on
/// the key, the ephemerals and their DH, so answering `msg1` with the same seed yields them.
fn compute_acceptor_keys(msg1: &[u8], msg2: &[u8], fec: FecConfig) -> (SessionId, SessionKeys) {
    let mut rng = ChaCha20Rng::from_seed(SEEDS[1]);
    let local = loop {
        let id = SessionId::new(0, rng.next_u32());
        if id.local() != 0 {
            break id;
        }
    };
    let mut seed = [0; 32];
    rng.fill_bytes(&mut seed);
    let mut out = Vec::new();
    let (_, keys) = respond(
        &Psk::from_bytes(PSK),
        seed,
        &msg1[Header::HANDSHAKE_LEN..],
        &mut out,
        |_| {
            // What the acceptor's endpoint sends: its session id and its FEC setting.
            let mut params = Vec::new();
            HandshakeParams {
                session_id: local,
                name: None,
                fec: Some(fec),
            }
            .encode(&mut params)
            .expect("the harness's parameters encode");
            params
        },
    )
    .expect("the harness's own handshake message 1 authenticates");
    assert_eq!(
        &out[..],
        &msg2[Header::HANDSHAKE_LEN..],
        "the harness no longer reproduces the acceptor's handshake (did Endpoint change how it \
         draws session ids and seeds?)"
    );
    (local, keys)
}

/// Seals packets for the session under test, as either endpoint would, with the null cipher.
pub struct Forger {
    /// Per sending endpoint: key generation 0 and 1.
    keys: [[TxKeys; 2]; 2],
}

impl Forger {
    pub fn new(net: &Net) -> Self {
        let make = |secret: [u8; 32]| {
            let gen0 = TxKeys::new(secret, net.now, RekeyLimits::default());
            // One packet and a matching ACK wear a one-packet key out: that moves to generation 1.
            let limits = RekeyLimits {
                max_packets: 1,
                max_age: Duration::from_secs(3600),
            };
            let mut gen1 = TxKeys::new(secret, net.now, limits);
            gen1.seal(0, &[], &mut []);
            assert!(gen1.maybe_update(net.now, Some(0)));
            [gen0, gen1]
        };
        Self {
            keys: net.secrets.map(make),
        }
    }

    /// A data packet from endpoint `sender` to its peer's session, carrying `payload` (frames)
    /// under packet number `pn` and key generation `generation` (0 or 1).
    pub fn seal(
        &mut self,
        net: &Net,
        sender: usize,
        generation: bool,
        pn: u64,
        payload: &[u8],
    ) -> Vec<u8> {
        let keys = &mut self.keys[sender][usize::from(generation)];
        let header = Header::data(net.ids[1 - sender], keys.key_phase(), pn);
        let mut packet = vec![0u8; Header::DATA_LEN + payload.len() + TAG_LEN];
        let mut w = Writer::new(&mut packet);
        header.emit(&mut w).expect("room for the header");
        let (head, body) = packet.split_at_mut(Header::DATA_LEN);
        body[..payload.len()].copy_from_slice(payload);
        let tag = keys.seal(pn, head, &mut body[..payload.len()]);
        body[payload.len()..].copy_from_slice(&tag);
        packet
    }
}
