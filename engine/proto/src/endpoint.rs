//! Many sessions behind one UDP socket: the Noise handshake, session ids, routing of datagrams
//! to sessions, and fair output between them.
//!
//! A handshake is two packets. The dialling side sends [`PacketType::HandshakeInit`] carrying
//! Noise message 1 (its payload, encrypted under the pre-shared key, names the dialler's
//! session id); the accepting side answers with [`PacketType::HandshakeResponse`] carrying
//! message 2 and its own session id. Both then hold the split keys; the dialler's first data
//! packet proves to the acceptor that the handshake completed. Message 1 is re-sent until
//! answered; a repeated message 1 gets the same answer again rather than a second session.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};

use crate::config::SessionConfig;
use crate::crypto::{Initiator, Psk, SessionKeys, respond};
use crate::session::{CloseReason, Session, SessionEvent, SessionParams, Transmit};
use crate::wire::{Header, PacketType, SessionId, Side, Writer};

/// Settings shared by every session of an endpoint.
#[derive(Debug, Clone)]
pub struct EndpointConfig {
    pub psk: Psk,
    pub session: SessionConfig,
    /// Accept handshakes from anyone holding the key (a node with a `listen` address).
    pub accept: bool,
    /// The shard that owns every session id this endpoint hands out.
    pub shard: u8,
    pub max_sessions: usize,
}

impl EndpointConfig {
    pub fn new(psk: Psk) -> Self {
        Self {
            psk,
            session: SessionConfig::default(),
            accept: true,
            shard: 0,
            max_sessions: 4096,
        }
    }
}

/// An event of one session (or of a dial that has no session yet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub session: SessionId,
    pub kind: SessionEvent,
}

/// Endpoint-wide counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct EndpointStats {
    pub datagrams_received: u64,
    pub malformed: u64,
    pub unknown_session: u64,
    pub handshakes_started: u64,
    pub handshakes_accepted: u64,
    pub handshakes_completed: u64,
    /// Handshake messages that did not authenticate (wrong key, tampering, garbage).
    pub handshake_failures: u64,
    pub handshake_retries: u64,
    pub refused_sessions: u64,
}

/// The payload carried inside each Noise message: the sender's session id.
const PARAMS_LEN: usize = 4;

fn encode_params(id: SessionId) -> Vec<u8> {
    id.0.to_be_bytes().to_vec()
}

fn decode_params(payload: &[u8]) -> Option<SessionId> {
    let bytes: [u8; PARAMS_LEN] = payload.get(..PARAMS_LEN)?.try_into().ok()?;
    let id = SessionId(u32::from_be_bytes(bytes));
    (id != SessionId::NONE).then_some(id)
}

/// A handshake packet: the header, then the Noise message.
fn handshake_packet(ty: PacketType, session_id: SessionId, msg: &[u8]) -> Vec<u8> {
    let mut packet = vec![0u8; Header::HANDSHAKE_LEN];
    // A 5-byte header always fits its 5-byte buffer.
    let _ = Header::handshake(ty, session_id).emit(&mut Writer::new(&mut packet));
    packet.extend_from_slice(msg);
    packet
}

/// A handshake we started and that has not been answered yet.
#[derive(Debug)]
struct Dial {
    remote: SocketAddr,
    /// None only if starting the handshake failed; retried at the next attempt.
    initiator: Option<Initiator>,
    packet: Vec<u8>,
    next_retry: Instant,
    retry_interval: Duration,
    deadline: Instant,
}

/// A response we sent, kept briefly so a re-sent message 1 gets the same answer.
#[derive(Debug)]
struct Answered {
    session: SessionId,
    packet: Vec<u8>,
    expires: Instant,
}

#[derive(Debug)]
pub struct Endpoint {
    config: EndpointConfig,
    rng: ChaCha20Rng,
    sessions: BTreeMap<SessionId, Session>,
    dials: BTreeMap<SessionId, Dial>,
    answered: BTreeMap<[u8; 32], Answered>,
    outgoing: VecDeque<(SocketAddr, Vec<u8>)>,
    events: VecDeque<Event>,
    /// Round-robin position for output fairness between sessions.
    cursor: Option<SessionId>,
    stats: EndpointStats,
}

impl Endpoint {
    /// `seed` drives every random choice (ephemeral keys, session ids); the dataplane passes
    /// OS randomness, tests a fixed value.
    pub fn new(config: EndpointConfig, seed: [u8; 32]) -> Self {
        Self {
            config,
            rng: ChaCha20Rng::from_seed(seed),
            sessions: BTreeMap::new(),
            dials: BTreeMap::new(),
            answered: BTreeMap::new(),
            outgoing: VecDeque::new(),
            events: VecDeque::new(),
            cursor: None,
            stats: EndpointStats::default(),
        }
    }

    pub fn config(&self) -> &EndpointConfig {
        &self.config
    }

    pub fn stats(&self) -> EndpointStats {
        self.stats.clone()
    }

    pub fn session(&self, id: SessionId) -> Option<&Session> {
        self.sessions.get(&id)
    }

    pub fn session_mut(&mut self, id: SessionId) -> Option<&mut Session> {
        self.sessions.get_mut(&id)
    }

    pub fn sessions(&self) -> impl Iterator<Item = &Session> {
        self.sessions.values()
    }

    fn allocate_id(&mut self) -> SessionId {
        loop {
            let id = SessionId::new(self.config.shard, self.rng.next_u32());
            if id.local() != 0 && !self.sessions.contains_key(&id) && !self.dials.contains_key(&id)
            {
                return id;
            }
        }
    }

    fn seed(&mut self) -> [u8; 32] {
        let mut seed = [0; 32];
        self.rng.fill_bytes(&mut seed);
        seed
    }

    /// Starts a handshake with `remote`. The returned id names the session in later events:
    /// [`SessionEvent::Connected`] or [`CloseReason::HandshakeTimeout`].
    pub fn connect(&mut self, now: Instant, remote: SocketAddr) -> SessionId {
        let id = self.allocate_id();
        self.stats.handshakes_started += 1;
        let retry_interval = Duration::from_millis(250);
        let mut dial = Dial {
            remote,
            initiator: None,
            packet: Vec::new(),
            next_retry: now + retry_interval,
            retry_interval: retry_interval * 2,
            deadline: now + self.config.session.handshake_timeout,
        };
        self.start_dial(id, &mut dial);
        if dial.initiator.is_some() {
            self.outgoing.push_back((remote, dial.packet.clone()));
        }
        self.dials.insert(id, dial);
        id
    }

    fn start_dial(&mut self, id: SessionId, dial: &mut Dial) {
        let seed = self.seed();
        let mut msg = Vec::with_capacity(128);
        match Initiator::start(&self.config.psk, seed, &encode_params(id), &mut msg) {
            Ok(initiator) => {
                dial.packet = handshake_packet(PacketType::HandshakeInit, SessionId::NONE, &msg);
                dial.initiator = Some(initiator);
            }
            Err(_) => dial.initiator = None,
        }
    }

    /// Handles one received datagram (decrypted in place). Never panics on any input.
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, datagram: &mut [u8]) {
        self.stats.datagrams_received += 1;
        let Ok((header, header_len)) = Header::parse(datagram) else {
            self.stats.malformed += 1;
            return;
        };
        match header.ty {
            PacketType::Data => match self.sessions.get_mut(&header.session_id) {
                Some(session) => session.handle_packet(now, from, &header, datagram),
                None => self.stats.unknown_session += 1,
            },
            PacketType::HandshakeInit => {
                self.handle_init(now, from, &datagram[header_len..]);
            }
            PacketType::HandshakeResponse => {
                self.handle_response(now, from, header.session_id, &datagram[header_len..]);
            }
        }
    }

    fn handle_init(&mut self, now: Instant, from: SocketAddr, msg1: &[u8]) {
        if !self.config.accept {
            self.stats.malformed += 1;
            return;
        }
        // The ephemeral public key opens message 1 and is unique per dial attempt.
        let Some(ephemeral) = msg1.get(..32).and_then(|e| <[u8; 32]>::try_from(e).ok()) else {
            self.stats.handshake_failures += 1;
            return;
        };
        // Keyed by the ephemeral key alone: a message 1 replayed from another address gets the
        // cached answer (useless without the dialler's ephemeral secret), never a new session.
        if let Some(a) = self.answered.get(&ephemeral)
            && self.sessions.contains_key(&a.session)
        {
            self.outgoing.push_back((from, a.packet.clone()));
            return;
        }
        if self.sessions.len() >= self.config.max_sessions {
            self.stats.refused_sessions += 1;
            return;
        }
        let local = self.allocate_id();
        let seed = self.seed();
        let mut msg2 = Vec::with_capacity(128);
        let mut remote_id = None;
        let result = respond(&self.config.psk, seed, msg1, &mut msg2, |payload| {
            remote_id = decode_params(payload);
            encode_params(local)
        });
        let (Ok((_, keys)), Some(remote_id)) = (result, remote_id) else {
            self.stats.handshake_failures += 1;
            return;
        };
        self.add_session(now, Side::Server, local, remote_id, from, keys);
        self.stats.handshakes_accepted += 1;
        let packet = handshake_packet(PacketType::HandshakeResponse, remote_id, &msg2);
        self.outgoing.push_back((from, packet.clone()));
        self.answered.retain(|_, a| a.expires > now);
        self.answered.insert(
            ephemeral,
            Answered {
                session: local,
                packet,
                expires: now + self.config.session.handshake_timeout,
            },
        );
    }

    fn handle_response(&mut self, now: Instant, from: SocketAddr, id: SessionId, msg2: &[u8]) {
        let Some(dial) = self.dials.get_mut(&id) else {
            self.stats.unknown_session += 1;
            return;
        };
        let Some(initiator) = dial.initiator.as_mut() else {
            self.stats.handshake_failures += 1;
            return;
        };
        // A forged or damaged answer leaves the handshake as it was: the real one still works.
        let Ok((payload, keys)) = initiator.finish(msg2) else {
            self.stats.handshake_failures += 1;
            return;
        };
        let Some(remote_id) = decode_params(&payload) else {
            self.stats.handshake_failures += 1;
            self.dials.remove(&id);
            self.events.push_back(Event {
                session: id,
                kind: SessionEvent::Closed(CloseReason::HandshakeFailed),
            });
            return;
        };
        self.dials.remove(&id);
        self.add_session(now, Side::Client, id, remote_id, from, keys);
        self.stats.handshakes_completed += 1;
    }

    fn add_session(
        &mut self,
        now: Instant,
        side: Side,
        local_id: SessionId,
        remote_id: SessionId,
        remote: SocketAddr,
        keys: SessionKeys,
    ) {
        let (tx, rx) = keys.into_keys(now, self.config.session.rekey);
        let params = SessionParams {
            side,
            config: self.config.session.clone(),
            local_id,
            remote_id,
            remote,
            tx,
            rx,
        };
        self.sessions.insert(local_id, Session::new(now, params));
    }

    /// Handles every timer that is due.
    pub fn handle_timeout(&mut self, now: Instant) {
        let due: Vec<SessionId> = self
            .dials
            .iter()
            .filter(|(_, d)| d.next_retry <= now)
            .map(|(&id, _)| id)
            .collect();
        for id in due {
            let Some(mut dial) = self.dials.remove(&id) else {
                continue;
            };
            if now >= dial.deadline {
                self.events.push_back(Event {
                    session: id,
                    kind: SessionEvent::Closed(CloseReason::HandshakeTimeout),
                });
                continue;
            }
            if dial.initiator.is_none() {
                self.start_dial(id, &mut dial);
            }
            self.stats.handshake_retries += 1;
            self.outgoing.push_back((dial.remote, dial.packet.clone()));
            dial.next_retry = now + dial.retry_interval;
            dial.retry_interval = (dial.retry_interval * 2).min(Duration::from_secs(2));
            self.dials.insert(id, dial);
        }
        for session in self.sessions.values_mut() {
            if session.poll_timeout().is_some_and(|t| t <= now) {
                session.handle_timeout(now);
            }
        }
        self.collect_events();
        self.sessions.retain(|_, s| !s.is_closed());
    }

    fn collect_events(&mut self) {
        for (&id, session) in &mut self.sessions {
            while let Some(kind) = session.poll_event() {
                self.events.push_back(Event { session: id, kind });
            }
        }
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        if self.events.is_empty() {
            self.collect_events();
        }
        self.events.pop_front()
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        let dials = self.dials.values().map(|d| d.next_retry);
        let sessions = self.sessions.values().filter_map(Session::poll_timeout);
        dials.chain(sessions).min()
    }

    /// Writes the next datagram(s) to send into `buf`: first handshake messages, then each
    /// session in turn (one GSO batch per session per call, so no session starves another).
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        if let Some((destination, packet)) = self.outgoing.pop_front() {
            let out = buf.get_mut(..packet.len())?;
            out.copy_from_slice(&packet);
            return Some(Transmit {
                destination,
                size: packet.len(),
                segment_size: None,
            });
        }
        // Start after the session served last, wrapping around (no allocation: two ranges).
        let (after, upto) = match self.cursor {
            Some(c) => (
                (std::ops::Bound::Excluded(c), std::ops::Bound::Unbounded),
                (std::ops::Bound::Unbounded, std::ops::Bound::Included(c)),
            ),
            None => (
                (std::ops::Bound::Unbounded, std::ops::Bound::Unbounded),
                (
                    std::ops::Bound::Unbounded,
                    std::ops::Bound::Excluded(SessionId::NONE),
                ),
            ),
        };
        for range in [after, upto] {
            for (&id, session) in self.sessions.range_mut(range) {
                if let Some(t) = session.poll_transmit(now, buf) {
                    self.cursor = Some(id);
                    return Some(t);
                }
            }
        }
        None
    }
}
