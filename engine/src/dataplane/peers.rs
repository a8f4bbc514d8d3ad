//! Sessions with named peers: dialling the peers that have an address (and dialling again, with
//! bounded backoff, when a session ends), recognising accepted peers by the name they give in
//! the handshake, and the connections that wait for a peer's session to come up.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use engine_api::config::Config;
use engine_proto::config::FecConfig;
use engine_proto::wire::SessionId;
use engine_proto::{CloseReason, Endpoint, SessionEvent};

use super::conn::ConnState;
use super::control::ShardMsg;
use super::shard::Shard;

/// First wait before dialling again after a failed handshake; doubles up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub(crate) struct Peers {
    peers: Vec<PeerState>,
    /// Which peer a session (established or being dialled) belongs to.
    by_session: HashMap<SessionId, usize>,
    dialling: bool,
    /// Handshakes a reload made pointless (their peer was removed or changed): the endpoint
    /// cannot cancel a dial, so a session that still comes of one is closed at once.
    abandoned: Vec<SessionId>,
}

#[derive(Debug)]
struct PeerState {
    name: String,
    addr: Option<SocketAddr>,
    /// The established sessions with this peer on this shard, oldest first; new streams go
    /// over the newest. A dialled peer has at most one (ours); a peer that dials us may keep one
    /// per shard of its own, and after it restarts its old session lingers until a stateless
    /// reset or the path timeout ends it.
    sessions: Vec<SessionId>,
    /// The handshake in progress, when dialling.
    dial: Option<SessionId>,
    next_dial: Option<Instant>,
    backoff: Duration,
    /// Connections waiting for a session, with their deadlines kept in the connections.
    waiting: Vec<usize>,
    wait_deadline: Option<Instant>,
    /// A reload removed the peer; its slot stays (peer numbers never change) in case a later
    /// reload adds it again.
    removed: bool,
}

impl PeerState {
    fn new(name: &str, addr: Option<SocketAddr>, removed: bool) -> Self {
        Self {
            name: name.to_owned(),
            addr,
            sessions: Vec::new(),
            dial: None,
            next_dial: None,
            backoff: MIN_BACKOFF,
            waiting: Vec::new(),
            wait_deadline: None,
            removed,
        }
    }
}

impl Peers {
    pub(crate) fn new(config: &Config) -> Self {
        Self {
            peers: config
                .peers
                .iter()
                .map(|p| PeerState::new(&p.name, p.addr, false))
                .collect(),
            by_session: HashMap::new(),
            dialling: true,
            abandoned: Vec::new(),
        }
    }

    pub(crate) fn session(&self, peer: usize) -> Option<SessionId> {
        self.peers.get(peer)?.sessions.last().copied()
    }

    /// The peer a session (established or being dialled) belongs to.
    pub(crate) fn peer_of(&self, session: SessionId) -> Option<usize> {
        self.by_session.get(&session).copied()
    }

    /// This shard's view of every configured peer, for `ctl peers` (sessions are filled in by
    /// the control thread). Peers a reload removed keep their slot but are not shown.
    pub(crate) fn rows(&self, shard: u32) -> Vec<engine_api::control::PeerRow> {
        self.peers
            .iter()
            .filter(|p| !p.removed)
            .map(|p| engine_api::control::PeerRow {
                name: p.name.clone(),
                addr: p.addr.map_or_else(String::new, |a| a.to_string()),
                state: if !p.sessions.is_empty() {
                    "up"
                } else if p.dial.is_some() {
                    "connecting"
                } else {
                    "down"
                }
                .to_owned(),
                shards: if p.sessions.is_empty() {
                    Vec::new()
                } else {
                    vec![shard]
                },
                sessions: Vec::new(),
            })
            .collect()
    }

    pub(crate) fn name(&self, peer: usize) -> &str {
        self.peers.get(peer).map_or("?", |p| p.name.as_str())
    }

    pub(crate) fn wait(&mut self, peer: usize, conn: usize, deadline: Instant) {
        if let Some(p) = self.peers.get_mut(peer) {
            p.waiting.push(conn);
            p.wait_deadline = Some(p.wait_deadline.map_or(deadline, |d| d.min(deadline)));
        }
    }

    pub(crate) fn unwait(&mut self, peer: usize, conn: usize) {
        if let Some(p) = self.peers.get_mut(peer) {
            p.waiting.retain(|&c| c != conn);
        }
    }

    pub(crate) fn stop_dialling(&mut self) {
        self.dialling = false;
        for p in &mut self.peers {
            p.next_dial = None;
        }
    }

    /// The peer's name (or the remote address for a session no peer entry names), for logs.
    pub(crate) fn describe(&self, session: SessionId, endpoint: &Endpoint) -> PeerLabel {
        match self.by_session.get(&session) {
            Some(&p) => PeerLabel::Named(self.name(p).to_owned()),
            None => PeerLabel::Anonymous(endpoint.session(session).map(|s| s.remote())),
        }
    }

    pub(crate) fn deadline(&self) -> Option<Instant> {
        self.peers
            .iter()
            .flat_map(|p| [p.next_dial, p.wait_deadline])
            .flatten()
            .min()
    }
}

/// Who is at the other end of a session, for logs.
#[derive(Debug)]
pub(crate) enum PeerLabel {
    Named(String),
    Anonymous(Option<SocketAddr>),
}

impl fmt::Display for PeerLabel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Named(name) => f.write_str(name),
            Self::Anonymous(Some(addr)) => write!(f, "unnamed peer at {addr}"),
            Self::Anonymous(None) => f.write_str("unnamed peer"),
        }
    }
}

impl Shard {
    pub(crate) fn peers_start(&mut self, now: Instant) {
        for p in 0..self.peers.peers.len() {
            if self.peers.peers[p].addr.is_some() {
                self.dial(now, p);
            }
        }
    }

    fn dial(&mut self, now: Instant, p: usize) {
        let Some(addr) = self.peers.peers[p].addr else {
            return;
        };
        let id = self.endpoint.connect(now, addr);
        tracing::info!(peer = %self.peers.peers[p].name, %addr, "dialling peer");
        self.peers.peers[p].dial = Some(id);
        self.peers.peers[p].next_dial = None;
        self.peers.by_session.insert(id, p);
    }

    pub(crate) fn peers_deadline(&self) -> Option<Instant> {
        self.peers.deadline()
    }

    /// Dials that are due, and connections that waited too long for a session.
    pub(crate) fn peers_timers(&mut self, now: Instant) {
        for p in 0..self.peers.peers.len() {
            if self.peers.peers[p].next_dial.is_some_and(|t| t <= now) && self.peers.dialling {
                self.dial(now, p);
            }
            if self.peers.peers[p].wait_deadline.is_some_and(|t| t <= now) {
                self.expire_waiting(now, p);
            }
        }
    }

    fn expire_waiting(&mut self, now: Instant, p: usize) {
        let waiting = std::mem::take(&mut self.peers.peers[p].waiting);
        let mut next = None;
        for index in waiting {
            let deadline = match self.conns.by_index(index).map(|c| c.state) {
                Some(ConnState::WaitingSession { deadline, .. }) => deadline,
                _ => continue,
            };
            if deadline <= now {
                self.counters.session_waits_expired += 1;
                tracing::warn!(peer = %self.peers.peers[p].name, "no session with the peer came up in time; closing the connection");
                self.abort(index, None);
            } else {
                next = Some(next.map_or(deadline, |n: Instant| n.min(deadline)));
                self.peers.peers[p].waiting.push(index);
            }
        }
        self.peers.peers[p].wait_deadline = next;
    }

    pub(crate) fn on_session_connected(&mut self, now: Instant, session_id: SessionId) {
        if let Some(i) = self.peers.abandoned.iter().position(|&s| s == session_id) {
            self.peers.abandoned.swap_remove(i);
            if let Some(session) = self.endpoint.session_mut(session_id) {
                session.close(now, 0, b"peer changed by a config reload");
            }
            return;
        }
        let Some(session) = self.endpoint.session(session_id) else {
            return;
        };
        let remote = session.remote();
        let peer = match self.peers.by_session.get(&session_id) {
            Some(&p) => {
                let state = &mut self.peers.peers[p];
                state.dial = None;
                state.backoff = MIN_BACKOFF;
                Some(p)
            }
            None => {
                let name = session.peer_name().map(str::to_owned);
                let found = name.as_deref().and_then(|name| {
                    self.peers
                        .peers
                        .iter()
                        .position(|p| p.name == name && p.addr.is_none() && !p.removed)
                });
                match found {
                    Some(p) => {
                        self.peers.by_session.insert(session_id, p);
                        Some(p)
                    }
                    None => {
                        tracing::info!(%remote, name = name.as_deref().unwrap_or("-"), "session accepted from a peer no `peers` entry names");
                        None
                    }
                }
            }
        };
        let Some(p) = peer else { return };
        let state = &mut self.peers.peers[p];
        tracing::info!(peer = %state.name, %remote, "session with peer up");
        if state.addr.is_some() {
            // Our own redial succeeded: any older session of ours with this peer is finished.
            for old in std::mem::take(&mut state.sessions) {
                self.peers.by_session.remove(&old);
                if let Some(session) = self.endpoint.session_mut(old) {
                    session.close(now, 0, b"replaced by a new session");
                }
            }
        }
        self.peers.peers[p].sessions.push(session_id);
        self.directory.set(p, self.index, true);
        if self.peers.peers[p].addr.is_none() {
            // A peer that dials us may have fewer shards than we do: other shards' connections
            // waiting for it can come over here.
            for (i, sibling) in self.siblings.iter().enumerate() {
                if i != self.index {
                    sibling.send(ShardMsg::PeerUp {
                        peer: p,
                        shard: self.index,
                    });
                }
            }
        }
        let waiting = std::mem::take(&mut self.peers.peers[p].waiting);
        self.peers.peers[p].wait_deadline = None;
        for index in waiting {
            self.attach_stream(index, session_id);
        }
    }

    /// Shard `owner` has a session with peer `p`: if this shard has none, its connections
    /// waiting for `p` move there (they have no operation in flight while they wait).
    pub(crate) fn peer_up_elsewhere(&mut self, p: usize, owner: usize) {
        if self.peers.session(p).is_some() || owner >= self.siblings.len() {
            return;
        }
        let Some(state) = self.peers.peers.get_mut(p) else {
            return;
        };
        let waiting = std::mem::take(&mut state.waiting);
        state.wait_deadline = None;
        for index in waiting {
            // Only a connection still waiting has no operation in flight and may leave.
            let waiting = self
                .conns
                .by_index(index)
                .is_some_and(|c| matches!(c.state, ConnState::WaitingSession { .. }));
            if !waiting {
                continue;
            }
            let Some(conn) = self.conns.remove(index) else {
                continue;
            };
            self.counters.connections_handed_over += 1;
            self.siblings[owner].send(ShardMsg::Connection {
                fd: conn.fd,
                map: conn.map,
            });
        }
    }

    pub(crate) fn on_session_closed(
        &mut self,
        now: Instant,
        session_id: SessionId,
        reason: &CloseReason,
    ) {
        self.counters.sessions_closed += 1;
        self.peers.abandoned.retain(|&s| s != session_id);
        self.abort_session_conns(session_id);
        let Some(p) = self.peers.by_session.remove(&session_id) else {
            tracing::info!(?reason, "session closed");
            return;
        };
        let state = &mut self.peers.peers[p];
        let was_up = state.sessions.contains(&session_id);
        state.sessions.retain(|&s| s != session_id);
        if state.sessions.is_empty() {
            self.directory.set(p, self.index, false);
        }
        if state.dial == Some(session_id) {
            state.dial = None;
        }
        tracing::info!(peer = %state.name, ?reason, "session with peer closed");
        self.redial(now, p, was_up);
    }

    /// A handshake that authenticated but was refused because the two ends' FEC settings
    /// differ. No session came of it, so nothing is counted as closed: on the accepting side the
    /// event has no session id at all; on the dialling side the dial ends and is retried with
    /// the usual backoff (the operator may be changing both configs one at a time).
    fn on_fec_mismatch(
        &mut self,
        now: Instant,
        session_id: SessionId,
        ours: FecConfig,
        theirs: FecConfig,
        peer_name: Option<&str>,
    ) {
        let dialled = self.peers.by_session.remove(&session_id);
        self.peers.abandoned.retain(|&s| s != session_id);
        let peer = dialled
            .map(|p| self.peers.name(p).to_owned())
            .or_else(|| peer_name.map(str::to_owned))
            .unwrap_or_else(|| "an unnamed peer".to_owned());
        tracing::warn!(
            "FEC settings differ from peer {peer}: ours {ours}, theirs {theirs}; set the same fec \
             on both nodes"
        );
        if let Some(p) = dialled {
            let state = &mut self.peers.peers[p];
            if state.dial == Some(session_id) {
                state.dial = None;
            }
            self.redial(now, p, false);
        }
    }

    /// Schedules the next dial of peer `p` if it is dialled and has neither a session nor a
    /// handshake in progress: at once after a session that was up (the peer restarted or the
    /// path came back), with doubling backoff after failed handshakes.
    fn redial(&mut self, now: Instant, p: usize, was_up: bool) {
        let dialling = self.peers.dialling;
        let Some(state) = self.peers.peers.get_mut(p) else {
            return;
        };
        if state.addr.is_none() || !dialling || state.dial.is_some() || !state.sessions.is_empty() {
            return;
        }
        let delay = if was_up {
            Duration::ZERO
        } else {
            let delay = state.backoff;
            state.backoff = (state.backoff * 2).min(MAX_BACKOFF);
            delay
        };
        state.next_dial = Some(now + delay);
    }

    pub(crate) fn handle_endpoint_events(&mut self, now: Instant) {
        while let Some(event) = self.endpoint.poll_event() {
            match event.kind {
                SessionEvent::Connected => self.on_session_connected(now, event.session),
                SessionEvent::Stream(stream_event) => {
                    self.on_stream_event(event.session, stream_event)
                }
                SessionEvent::DatagramReceived => self.udp_session_datagrams(now, event.session),
                SessionEvent::Closed(CloseReason::FecMismatch { ours, theirs, peer }) => {
                    self.on_fec_mismatch(now, event.session, ours, theirs, peer.as_deref())
                }
                SessionEvent::Closed(reason) => self.on_session_closed(now, event.session, &reason),
            }
        }
    }
}

impl Shard {
    /// Applies a reload's peer changes: `peers` is the new list in slot order (a slot per
    /// name the engine has ever had, so peer numbers in maps, the directory and connections
    /// keep their meaning) and `live` says which slots the new config names. Removed peers'
    /// sessions are closed; changed ones are closed and dialled again; new ones are dialled.
    pub(crate) fn reconfigure_peers(
        &mut self,
        now: Instant,
        peers: &[engine_api::config::Peer],
        live: &[bool],
        changed: &[String],
    ) {
        for (slot, peer) in peers.iter().enumerate() {
            let live = live.get(slot).copied().unwrap_or(false);
            let Some(state) = self.peers.peers.get_mut(slot) else {
                self.peers.peers.push(PeerState::new(
                    &peer.name,
                    peer.addr.filter(|_| live),
                    !live,
                ));
                if live && peer.addr.is_some() && self.peers.dialling {
                    self.dial(now, slot);
                }
                continue;
            };
            let was_live = !state.removed;
            if was_live == live && (!live || !changed.contains(&peer.name)) {
                continue;
            }
            self.end_peer_sessions(now, slot);
            let state = &mut self.peers.peers[slot];
            state.removed = !live;
            state.addr = peer.addr.filter(|_| live);
            state.backoff = MIN_BACKOFF;
            state.next_dial = None;
            if live {
                tracing::info!(peer = %peer.name, "peer (re)configured");
                if state.addr.is_some() && self.peers.dialling {
                    self.dial(now, slot);
                }
            } else {
                tracing::info!(peer = %peer.name, "peer removed; its sessions are closed");
                // Connections still waiting for it belonged to maps the reload removed too.
                let waiting = std::mem::take(&mut state.waiting);
                state.wait_deadline = None;
                for index in waiting {
                    self.close_removed(index);
                }
            }
        }
    }

    /// Closes peer `p`'s sessions and forgets its handshake in progress; their endings are then
    /// reported like those of sessions no peer entry names.
    fn end_peer_sessions(&mut self, now: Instant, p: usize) {
        let Some(state) = self.peers.peers.get_mut(p) else {
            return;
        };
        if let Some(dial) = state.dial.take() {
            self.peers.by_session.remove(&dial);
            self.peers.abandoned.push(dial);
        }
        let ids: Vec<SessionId> = state.sessions.drain(..).collect();
        for id in ids {
            self.peers.by_session.remove(&id);
            if let Some(session) = self.endpoint.session_mut(id) {
                session.close(now, 0, b"peer changed by a config reload");
            }
        }
        self.directory.set(p, self.index, false);
    }
}
