//! Many sessions behind one UDP socket: the Noise handshake, session ids, routing of datagrams
//! to sessions, and fair output between them.
//!
//! A handshake is two packets. The dialling side sends [`PacketType::HandshakeInit`] carrying
//! Noise message 1 (its payload, encrypted under the pre-shared key, names the dialler's
//! session id); the accepting side answers with [`PacketType::HandshakeResponse`] carrying
//! message 2 and its own session id. Both then hold the split keys; the dialler's first data
//! packet proves to the acceptor that the handshake completed. Message 1 is re-sent until
//! answered; a repeated message 1 gets the same answer again rather than a second session.
//! Both payloads are [`HandshakeParams`]: the sender's session id and, optionally, its node name.
//!
//! A data packet for a session id the endpoint does not know (it restarted, or dropped the
//! session) is answered with a [`StatelessReset`] so the peer learns at once instead of after
//! its idle timeout. The reset carries the unknown id and a token only holders of the PSK can
//! compute ([`ResetKey`]); the peer closes the session whose remote id and address match with
//! [`CloseReason::PeerReset`], sending nothing. Resets are rate limited, always shorter than
//! the packet they answer, never sent for packets shorter than
//! [`StatelessReset::MIN_TRIGGER_LEN`], and never sent in answer to a reset or a handshake
//! packet, so they can neither amplify traffic nor loop.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};

use crate::config::{FecConfig, SessionConfig};
use crate::crypto::{Initiator, Psk, ResetKey, SessionKeys, respond};
use crate::session::{CloseReason, Session, SessionEvent, SessionParams, Transmit};
use crate::wire::{
    HandshakeParams, Header, MAX_NODE_NAME_LEN, PacketType, SessionId, Side, StatelessReset, Writer,
};

/// Settings shared by every session of an endpoint.
#[derive(Debug, Clone)]
pub struct EndpointConfig {
    pub psk: Psk,
    pub session: SessionConfig,
    /// Accept handshakes from anyone holding the key (a node with a `listen` address).
    pub accept: bool,
    /// The shard that owns every session id this endpoint hands out.
    pub shard: u8,
    /// Written into the session-id field of our handshake inits (which have no receiver id
    /// yet), so the peer's packet steering can spread the sessions of one node over its shards:
    /// the dataplane gives its shards consecutive hints from a random base. Receivers ignore it.
    pub steering_hint: u32,
    pub max_sessions: usize,
    /// This node's name, sent to the peer in both handshake messages (see
    /// [`Session::peer_name`]). At most [`MAX_NODE_NAME_LEN`] bytes of UTF-8: a longer name is
    /// cut at the last character boundary that fits when the endpoint is created.
    pub name: Option<String>,
    /// At most this many stateless resets are sent per second (0: never send any). They only
    /// go to peers that still send on a forgotten session, which normally stop at the first.
    pub resets_per_sec: u32,
}

impl EndpointConfig {
    pub fn new(psk: Psk) -> Self {
        Self {
            psk,
            session: SessionConfig::default(),
            accept: true,
            shard: 0,
            steering_hint: 0,
            max_sessions: 4096,
            name: None,
            resets_per_sec: 32,
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
    /// Stateless resets sent in answer to data packets for unknown sessions.
    pub resets_sent: u64,
    /// Resets not sent because of [`EndpointConfig::resets_per_sec`], or because the same
    /// address was sent a reset for the same id moments ago (a burst in flight).
    pub resets_rate_limited: u64,
    /// Valid resets received: each closed a session with [`CloseReason::PeerReset`].
    pub resets_received: u64,
    /// Resets that matched no session (unknown id, wrong sender address) or had a wrong token.
    pub resets_invalid: u64,
    /// Handshakes refused because the two ends' FEC settings differ.
    pub fec_mismatches: u64,
}

/// A peer that just got a reset for an id gets no second one for it this soon: the rest of a
/// burst it sent before the reset arrived would otherwise use up the rate limit.
const RESET_REPEAT_INTERVAL: Duration = Duration::from_millis(250);
/// How many recent resets are remembered for that.
const RECENT_RESETS: usize = 64;

/// The payload carried inside our Noise messages.
fn encode_params(id: SessionId, name: Option<&str>, fec: FecConfig) -> Vec<u8> {
    let params = HandshakeParams {
        session_id: id,
        name,
        fec: Some(fec),
    };
    let mut out = Vec::with_capacity(params.encoded_len());
    // Cannot fail: ids are never NONE, the name was cut to size in `Endpoint::new` and the FEC
    // settings were checked there.
    let _ = params.encode(&mut out);
    out
}

/// What the peer told us about itself in the handshake.
struct PeerParams {
    id: SessionId,
    name: Option<String>,
    fec: FecConfig,
    /// It sent no FEC parameter: a version from before FEC, which cannot understand a refusal.
    predates_fec: bool,
}

/// The peer's parameters, or None if they are unusable.
fn decode_params(payload: &[u8]) -> Option<PeerParams> {
    let p = HandshakeParams::decode(payload).ok()?;
    Some(PeerParams {
        id: p.session_id,
        name: p.name.map(str::to_owned),
        fec: p.fec.unwrap_or(FecConfig::OFF),
        predates_fec: p.fec.is_none(),
    })
}

/// `name` cut to at most [`MAX_NODE_NAME_LEN`] bytes at a character boundary.
fn truncate_name(mut name: String) -> String {
    if name.len() > MAX_NODE_NAME_LEN {
        let mut end = MAX_NODE_NAME_LEN;
        while !name.is_char_boundary(end) {
            end -= 1;
        }
        name.truncate(end);
    }
    name
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
    /// (remote id, local id) of every session: finds the session a reset names.
    by_remote: BTreeSet<(SessionId, SessionId)>,
    reset_key: ResetKey,
    /// Start of the current one-second reset window and the resets sent in it.
    reset_window: Option<(Instant, u32)>,
    /// Recently sent resets: (to, id, when).
    recent_resets: VecDeque<(SocketAddr, SessionId, Instant)>,
    outgoing: VecDeque<(SocketAddr, Vec<u8>)>,
    events: VecDeque<Event>,
    /// Round-robin position for output fairness between sessions.
    cursor: Option<SessionId>,
    stats: EndpointStats,
}

impl Endpoint {
    /// `seed` drives every random choice (ephemeral keys, session ids); the dataplane passes
    /// OS randomness, tests a fixed value.
    pub fn new(mut config: EndpointConfig, seed: [u8; 32]) -> Self {
        config.name = config.name.map(truncate_name);
        if config.session.fec.validate().is_err() {
            // The config layer rejects these with a message; a library caller gets no FEC
            // rather than a session that cannot be negotiated.
            config.session.fec = FecConfig::OFF;
        }
        Self {
            reset_key: ResetKey::new(&config.psk),
            config,
            rng: ChaCha20Rng::from_seed(seed),
            sessions: BTreeMap::new(),
            dials: BTreeMap::new(),
            answered: BTreeMap::new(),
            by_remote: BTreeSet::new(),
            reset_window: None,
            recent_resets: VecDeque::new(),
            outgoing: VecDeque::new(),
            events: VecDeque::new(),
            cursor: None,
            stats: EndpointStats::default(),
        }
    }

    pub fn config(&self) -> &EndpointConfig {
        &self.config
    }

    /// The settings of sessions set up from now on (a reloaded config). Live sessions keep the
    /// ones they started with: their peer agreed to them (FEC) or they sized state by them.
    pub fn set_session_config(&mut self, mut session: SessionConfig) {
        if session.fec.validate().is_err() {
            session.fec = FecConfig::OFF;
        }
        self.config.session = session;
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
        let params = encode_params(id, self.config.name.as_deref(), self.config.session.fec);
        match Initiator::start(&self.config.psk, seed, &params, &mut msg) {
            Ok(initiator) => {
                let hint = SessionId(self.config.steering_hint);
                dial.packet = handshake_packet(PacketType::HandshakeInit, hint, &msg);
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
                None => {
                    self.stats.unknown_session += 1;
                    self.send_reset(now, from, header.session_id, datagram.len());
                }
            },
            PacketType::Parity => match self.sessions.get_mut(&header.session_id) {
                Some(session) => session.handle_parity(now, from, datagram),
                // No reset: parity is only ever sent alongside data packets, which get one.
                None => self.stats.unknown_session += 1,
            },
            PacketType::StatelessReset => self.handle_reset(from, datagram),
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
        let mut remote = None;
        let params = encode_params(local, self.config.name.as_deref(), self.config.session.fec);
        let result = respond(&self.config.psk, seed, msg1, &mut msg2, |payload| {
            remote = decode_params(payload);
            params
        });
        let (Ok((_, keys)), Some(peer)) = (result, remote) else {
            self.stats.handshake_failures += 1;
            return;
        };
        if peer.fec != self.config.session.fec {
            // Answered all the same (without a session): our settings in message 2 let the
            // dialler report the mismatch instead of retrying until its handshake times out.
            // Not a peer from before FEC: it would ignore our settings, take the answer for a
            // session, and redial at once on the reset its first packet earns; unanswered, it
            // times out and backs off.
            self.stats.fec_mismatches += 1;
            self.events.push_back(Event {
                session: SessionId::NONE,
                kind: SessionEvent::Closed(CloseReason::FecMismatch {
                    ours: self.config.session.fec,
                    theirs: peer.fec,
                    peer: peer.name,
                }),
            });
            if !peer.predates_fec {
                let packet = handshake_packet(PacketType::HandshakeResponse, peer.id, &msg2);
                self.outgoing.push_back((from, packet));
            }
            return;
        }
        let remote_id = peer.id;
        self.add_session(now, Side::Server, local, remote_id, from, keys, peer.name);
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
        let Some(peer) = decode_params(&payload) else {
            self.stats.handshake_failures += 1;
            self.dials.remove(&id);
            self.events.push_back(Event {
                session: id,
                kind: SessionEvent::Closed(CloseReason::HandshakeFailed),
            });
            return;
        };
        self.dials.remove(&id);
        if peer.fec != self.config.session.fec {
            self.stats.fec_mismatches += 1;
            self.events.push_back(Event {
                session: id,
                kind: SessionEvent::Closed(CloseReason::FecMismatch {
                    ours: self.config.session.fec,
                    theirs: peer.fec,
                    peer: peer.name,
                }),
            });
            return;
        }
        self.add_session(now, Side::Client, id, peer.id, from, keys, peer.name);
        self.stats.handshakes_completed += 1;
    }

    #[allow(clippy::too_many_arguments)]
    fn add_session(
        &mut self,
        now: Instant,
        side: Side,
        local_id: SessionId,
        remote_id: SessionId,
        remote: SocketAddr,
        keys: SessionKeys,
        peer_name: Option<String>,
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
            peer_name,
        };
        self.sessions.insert(local_id, Session::new(now, params));
        self.by_remote.insert((remote_id, local_id));
    }

    /// Answers a data packet for `unknown` (a session we do not have) with a stateless reset,
    /// if the packet is long enough and the rate limit allows.
    fn send_reset(&mut self, now: Instant, to: SocketAddr, unknown: SessionId, trigger_len: usize) {
        // Shorter packets get no answer: the reset must be smaller than what it answers, and
        // nothing a genuine session sends is that short.
        if trigger_len < StatelessReset::MIN_TRIGGER_LEN || unknown == SessionId::NONE {
            return;
        }
        let repeat = self
            .recent_resets
            .iter()
            .any(|&(a, id, at)| a == to && id == unknown && now < at + RESET_REPEAT_INTERVAL);
        if repeat {
            self.stats.resets_rate_limited += 1;
            return;
        }
        let window_open = self
            .reset_window
            .is_some_and(|(start, _)| now < start + Duration::from_secs(1));
        if !window_open {
            self.reset_window = Some((now, 0));
        }
        let Some((_, sent)) = self.reset_window.as_mut() else {
            return;
        };
        if *sent >= self.config.resets_per_sec {
            self.stats.resets_rate_limited += 1;
            return;
        }
        *sent += 1;
        if self.recent_resets.len() == RECENT_RESETS {
            self.recent_resets.pop_front();
        }
        self.recent_resets.push_back((to, unknown, now));
        let reset = StatelessReset {
            session_id: unknown,
            token: self.reset_key.token(unknown),
        };
        let mut packet = vec![0u8; StatelessReset::LEN];
        // A reset always fits its own length.
        let _ = reset.emit(&mut Writer::new(&mut packet));
        self.outgoing.push_back((to, packet));
        self.stats.resets_sent += 1;
    }

    /// A peer says it does not know one of our sessions. Only a session whose remote id and
    /// address match, and only with a valid token, is closed; anything else changes nothing.
    fn handle_reset(&mut self, from: SocketAddr, packet: &[u8]) {
        let Ok(reset) = StatelessReset::parse(packet) else {
            self.stats.malformed += 1;
            return;
        };
        let id = reset.session_id;
        let target = self
            .by_remote
            .range((id, SessionId(0))..=(id, SessionId(u32::MAX)))
            .map(|&(_, local)| local)
            .find(|local| {
                self.sessions
                    .get(local)
                    .is_some_and(|s| s.remote() == from && !s.is_closed())
            });
        let Some(local) = target else {
            self.stats.resets_invalid += 1;
            return;
        };
        // Checked only once a session matched, so garbage costs a lookup, not a MAC.
        if !self.reset_key.verify(id, &reset.token) {
            self.stats.resets_invalid += 1;
            return;
        }
        self.stats.resets_received += 1;
        let Some(mut session) = self.sessions.remove(&local) else {
            return;
        };
        self.by_remote.remove(&(id, local));
        session.on_peer_reset();
        while let Some(kind) = session.poll_event() {
            self.events.push_back(Event {
                session: local,
                kind,
            });
        }
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
        let by_remote = &mut self.by_remote;
        self.sessions.retain(|&local, s| {
            let keep = !s.is_closed();
            if !keep {
                by_remote.remove(&(s.remote_id(), local));
            }
            keep
        });
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
