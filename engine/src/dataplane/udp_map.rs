//! UDP maps: a `maps` entry with `proto: udp` listens on a UDP socket (one per shard, in a
//! reuseport group, so the kernel's hash keeps a client on one shard), and each client address
//! becomes a flow. The node with the matching `allow` entry opens one UDP socket per flow,
//! connected to the target, so the target's replies find their way back to the right client.
//!
//! A flow's datagrams cross the tunnel in one of two ways (the map's `mode`):
//!
//! * `datagram`: DATAGRAM frames (unreliable, unordered, FEC-protected), fragmented to fit
//!   and reassembled ([`super::udp_frame`]); a flow is known to both nodes by its flow id.
//! * `reliable`: one stream per flow, opened with the map id like a TCP map's, carrying the
//!   datagrams length-prefixed after a short preamble.
//!
//! Flows close after `udp.idle_timeout` without a datagram either way, when their session
//! ends, or when a reload removes their map or allow entry; at most `udp.max_flows` (split
//! between shards) are open at once. UDP sends to clients and targets are single non-blocking
//! syscalls: a datagram the kernel cannot take at once is dropped and counted, as UDP would.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use engine_api::config::{MapId, Proto, UdpMode};
use engine_proto::mux::StreamEvent;
use engine_proto::wire::{SessionId, StreamId};

use super::forward::reset_code;
use super::io::{Completion, IoOp, Op, Token};
use super::shard::Shard;
use super::udp;
use super::udp_frame::{
    self, FlowId, MAX_FLOW_ID, MAX_RELIABLE_LEN, RELIABLE_PREAMBLE, Reassembled, Reassembly,
};

/// How often idle flows and stale fragments are looked for.
const SCAN_INTERVAL: Duration = Duration::from_millis(250);
/// Framed bytes a `reliable` flow holds while its stream's window is full; datagrams beyond
/// are dropped (counted), as a full UDP socket buffer would.
const RELIABLE_BACKLOG: usize = 1 << 20;
/// Largest read from a `reliable` stream at a time.
const STREAM_READ: usize = 64 * 1024;

/// A `maps` entry's UDP socket on this shard.
#[derive(Debug)]
pub(crate) struct UdpListener {
    pub(crate) fd: OwnedFd,
    pub(crate) map: MapId,
    armed: bool,
    /// A reload removed the map: the socket closes once its receive has ended.
    retired: bool,
}

#[derive(Debug)]
enum Side {
    /// On the `maps` node: datagrams to the client leave through listener `listener`.
    Listen { listener: usize, client: SocketAddr },
    /// On the `allow` node: the flow's own socket, connected to the target.
    Target { fd: OwnedFd },
}

#[derive(Debug)]
struct Flow {
    generation: u32,
    map: MapId,
    mode: UdpMode,
    session: SessionId,
    id: FlowId,
    side: Side,
    stream: Option<StreamId>,
    last_active: Instant,
    next_message: u16,
    reassembly: Reassembly,
    /// `reliable`: stream bytes not yet a whole datagram.
    rx: Vec<u8>,
    /// `reliable`: framed bytes the stream has not taken yet.
    tx: Vec<u8>,
    /// `reliable`, `allow` side: the stream's preamble has been checked.
    preamble_ok: bool,
    closing: bool,
    /// Operations in flight on the flow's socket (its armed receive, a cancel).
    inflight: u32,
    recv_armed: bool,
}

impl Flow {
    fn to_target(&self) -> bool {
        matches!(self.side, Side::Listen { .. })
    }
}

/// A shard's UDP map listeners and flows.
#[derive(Debug, Default)]
pub(crate) struct UdpMaps {
    pub(crate) listeners: Vec<Option<UdpListener>>,
    flows: Vec<Option<Flow>>,
    generations: Vec<u32>,
    free: Vec<usize>,
    by_client: HashMap<(usize, SocketAddr), usize>,
    by_flow: HashMap<(SessionId, bool, FlowId), usize>,
    by_stream: HashMap<(SessionId, StreamId), usize>,
    next_flow: u64,
    /// Flows open (not closing).
    open: usize,
    /// Receives to arm again after this round: listeners (`false`) and flows (`true`).
    rearm: Vec<(bool, usize)>,
    next_scan: Option<Instant>,
}

impl UdpMaps {
    /// Adds a listener in the first free slot; returns its slot.
    pub(crate) fn add_listener(&mut self, fd: OwnedFd, map: MapId) -> usize {
        let listener = UdpListener {
            fd,
            map,
            armed: false,
            retired: false,
        };
        match self.listeners.iter().position(Option::is_none) {
            Some(i) => {
                self.listeners[i] = Some(listener);
                i
            }
            None => {
                self.listeners.push(Some(listener));
                self.listeners.len() - 1
            }
        }
    }

    pub(crate) fn open_flows(&self) -> usize {
        self.open
    }

    pub(crate) fn owns_stream(&self, key: (SessionId, StreamId)) -> bool {
        self.by_stream.contains_key(&key)
    }

    fn flow(&mut self, index: usize) -> Option<&mut Flow> {
        self.flows.get_mut(index)?.as_mut()
    }

    fn flow_gen(&mut self, index: usize, generation: u32) -> Option<&mut Flow> {
        self.flow(index).filter(|f| f.generation == generation)
    }

    fn insert(&mut self, make: impl FnOnce(u32) -> Flow) -> usize {
        let index = match self.free.pop() {
            Some(index) => index,
            None => {
                self.flows.push(None);
                self.generations.push(0);
                self.flows.len() - 1
            }
        };
        self.flows[index] = Some(make(self.generations[index]));
        self.open += 1;
        index
    }

    fn remove(&mut self, index: usize) {
        if let Some(slot) = self.flows.get_mut(index)
            && slot.take().is_some()
        {
            self.generations[index] = self.generations[index].wrapping_add(1);
            self.free.push(index);
        }
    }
}

impl Shard {
    /// Arms the receive of every UDP map listener (at start-up).
    pub(crate) fn udp_start(&mut self) {
        for i in 0..self.udp_maps.listeners.len() {
            self.arm_udp_listener(i);
        }
    }

    pub(crate) fn arm_udp_listener(&mut self, i: usize) {
        let Some(Some(listener)) = self.udp_maps.listeners.get_mut(i) else {
            return;
        };
        if listener.armed || listener.retired {
            return;
        }
        listener.armed = true;
        let fd = listener.fd.as_raw_fd();
        self.io
            .push(Token::new(Op::UdpMapRecv, i, 0), IoOp::UdpRecv { fd });
    }

    fn arm_flow_recv(&mut self, index: usize) {
        let Some(flow) = self.udp_maps.flow(index) else {
            return;
        };
        let Side::Target { fd } = &flow.side else {
            return;
        };
        if flow.closing || flow.recv_armed {
            return;
        }
        let fd = fd.as_raw_fd();
        flow.recv_armed = true;
        flow.inflight += 1;
        let token = Token::new(Op::UdpFlowRecv, index, flow.generation);
        self.io.push(token, IoOp::UdpRecv { fd });
    }

    /// Receives whose multishot ended this round (out of buffers, or an error such as a
    /// target's ICMP port unreachable) are armed again.
    pub(crate) fn udp_rearm(&mut self) {
        for (flow, index) in std::mem::take(&mut self.udp_maps.rearm) {
            if flow {
                self.arm_flow_recv(index);
            } else {
                self.arm_udp_listener(index);
            }
        }
    }

    /// Copies the datagrams of a UDP receive completion out of its pool buffer.
    fn take_received(&mut self, c: &Completion) -> Option<(SocketAddr, Vec<Vec<u8>>)> {
        let bid = c.buffer?;
        let len = usize::try_from(c.result).unwrap_or(0);
        let out = self.io.udp_received(bid, len).map(|(received, buffer)| {
            let payload = &buffer[received.payload];
            let datagrams = match received.segment_size {
                Some(size) if size > 0 => payload.chunks(size).map(<[u8]>::to_vec).collect(),
                _ => vec![payload.to_vec()],
            };
            (received.from, datagrams)
        });
        self.io.udp_bufs.recycle(bid);
        if out.is_none() {
            self.counters.udp_receive_errors += 1;
        }
        out
    }

    pub(crate) fn on_udp_map_recv(&mut self, now: Instant, c: Completion) {
        let i = c.token.index as usize;
        if !c.more {
            let retired = match self.udp_maps.listeners.get_mut(i) {
                Some(Some(l)) => {
                    l.armed = false;
                    l.retired
                }
                _ => false,
            };
            if retired {
                if let Some(slot) = self.udp_maps.listeners.get_mut(i) {
                    *slot = None;
                }
            } else {
                self.udp_maps.rearm.push((false, i));
            }
        }
        let Some((client, datagrams)) = self.take_received(&c) else {
            return;
        };
        let Some(Some(listener)) = self.udp_maps.listeners.get(i) else {
            return;
        };
        if listener.retired {
            return;
        }
        let map = listener.map;
        for datagram in datagrams {
            self.counters.udp_map_datagrams_in += 1;
            self.on_client_datagram(now, i, map, client, &datagram);
        }
    }

    /// A client's datagram on a map listener: to its flow, opened now if it is the first.
    fn on_client_datagram(
        &mut self,
        now: Instant,
        listener: usize,
        map_id: MapId,
        client: SocketAddr,
        datagram: &[u8],
    ) {
        let index = match self.udp_maps.by_client.get(&(listener, client)) {
            Some(&index) => index,
            None => match self.open_client_flow(now, listener, map_id, client) {
                Some(index) => index,
                None => {
                    self.counters.udp_map_datagrams_dropped += 1;
                    return;
                }
            },
        };
        self.send_to_peer(now, index, datagram);
    }

    fn flow_limit(&self) -> usize {
        self.config.udp.max_flows.div_ceil(self.shards.max(1))
    }

    fn open_client_flow(
        &mut self,
        now: Instant,
        listener: usize,
        map_id: MapId,
        client: SocketAddr,
    ) -> Option<usize> {
        let map = self.config.maps.iter().find(|m| m.id == map_id)?;
        let mode = map.mode.unwrap_or_default();
        // Without a session with the peer on this shard there is nothing to carry the
        // datagram: UDP may lose it, and the client's next one tries again.
        let session_id = self.peers.session(map.peer)?;
        if self.udp_maps.open >= self.flow_limit() {
            self.counters.udp_flows_refused += 1;
            return None;
        }
        let stream = match mode {
            UdpMode::Datagram => None,
            UdpMode::Reliable => {
                let session = self.endpoint.session_mut(session_id)?;
                match session.open_stream(map_id.0) {
                    Ok(stream) => Some(stream),
                    Err(err) => {
                        tracing::debug!(map = %map_id, %err, "cannot open a stream for a UDP flow");
                        return None;
                    }
                }
            }
        };
        let id = FlowId(self.udp_maps.next_flow & MAX_FLOW_ID);
        self.udp_maps.next_flow = self.udp_maps.next_flow.wrapping_add(1);
        let index = self.udp_maps.insert(|generation| Flow {
            generation,
            map: map_id,
            mode,
            session: session_id,
            id,
            side: Side::Listen { listener, client },
            stream,
            last_active: now,
            next_message: 0,
            reassembly: Reassembly::default(),
            rx: Vec::new(),
            tx: stream.map_or_else(Vec::new, |_| RELIABLE_PREAMBLE.to_vec()),
            preamble_ok: true,
            closing: false,
            inflight: 0,
            recv_armed: false,
        });
        self.udp_maps.by_client.insert((listener, client), index);
        self.udp_maps.by_flow.insert((session_id, true, id), index);
        if let Some(stream) = stream {
            self.udp_maps.by_stream.insert((session_id, stream), index);
        }
        self.udp_flow_opened(now);
        tracing::debug!(map = %map_id, %client, flow = id.0, %mode, "UDP flow opened");
        Some(index)
    }

    fn udp_flow_opened(&mut self, now: Instant) {
        self.counters.udp_flows_opened += 1;
        if self.udp_maps.next_scan.is_none() {
            self.udp_maps.next_scan = Some(now + SCAN_INTERVAL);
        }
    }

    /// Sends a datagram from the flow's local side (client or target) to the other node.
    fn send_to_peer(&mut self, now: Instant, index: usize, datagram: &[u8]) {
        let Some(flow) = self.udp_maps.flow(index) else {
            return;
        };
        if flow.closing {
            return;
        }
        flow.last_active = now;
        match (flow.mode, flow.stream) {
            (UdpMode::Reliable, Some(_)) => {
                if datagram.len() > MAX_RELIABLE_LEN || flow.tx.len() > RELIABLE_BACKLOG {
                    self.counters.udp_map_datagrams_dropped += 1;
                    return;
                }
                let _ = udp_frame::frame_reliable(&mut flow.tx, datagram);
                self.flush_flow(index);
            }
            (UdpMode::Reliable, None) => self.counters.udp_map_datagrams_dropped += 1,
            (UdpMode::Datagram, _) => {
                let message = flow.next_message;
                flow.next_message = message.wrapping_add(1);
                let (map, id, to_target) = (flow.map, flow.id, flow.to_target());
                let Some(session) = self.endpoint.session_mut(flow.session) else {
                    self.counters.udp_map_datagrams_dropped += 1;
                    return;
                };
                let max = session.max_datagram_len();
                match udp_frame::fragment(map.0, id, to_target, message, datagram, max) {
                    Ok(fragments) => {
                        // The session drops what it cannot queue (counted in its own stats);
                        // the datagram is then lost whole at the other end, as UDP may be.
                        let mut sent = true;
                        for fragment in &fragments {
                            sent &= session.send_datagram(fragment);
                        }
                        if !sent {
                            self.counters.udp_map_datagrams_dropped += 1;
                        }
                    }
                    Err(_) => self.counters.udp_map_datagrams_dropped += 1,
                }
            }
        }
    }

    /// Writes a `reliable` flow's framed bytes into its stream, as far as its window allows.
    fn flush_flow(&mut self, index: usize) {
        let Some(flow) = self.udp_maps.flow(index) else {
            return;
        };
        let Some(stream) = flow.stream else {
            return;
        };
        if flow.tx.is_empty() {
            return;
        }
        let Some(session) = self.endpoint.session_mut(flow.session) else {
            return;
        };
        match session.write(stream, &flow.tx) {
            Ok(accepted) => {
                flow.tx.drain(..accepted);
            }
            Err(_) => self.close_flow(index, None),
        }
    }

    /// DATAGRAM frames a session received: fragments of UDP map datagrams.
    pub(crate) fn udp_session_datagrams(&mut self, now: Instant, session_id: SessionId) {
        let Some(session) = self.endpoint.session_mut(session_id) else {
            return;
        };
        let mut fragments = Vec::new();
        while let Some(fragment) = session.recv_datagram() {
            fragments.push(fragment);
        }
        for fragment in fragments {
            self.on_fragment(now, session_id, &fragment);
        }
    }

    fn on_fragment(&mut self, now: Instant, session_id: SessionId, fragment: &[u8]) {
        let Ok((header, payload)) = udp_frame::decode(fragment) else {
            self.counters.udp_map_datagrams_dropped += 1;
            return;
        };
        // A fragment towards the target belongs to a flow the peer numbered (we are its
        // `allow` side); one back belongs to a flow we numbered.
        let key = (session_id, !header.to_target, header.flow);
        let index = match self.udp_maps.by_flow.get(&key) {
            Some(&index) => index,
            None if header.to_target => {
                match self.open_target_flow(now, session_id, MapId(header.map), header.flow) {
                    Some(index) => index,
                    None => {
                        self.counters.udp_map_datagrams_dropped += 1;
                        return;
                    }
                }
            }
            // A reply for a flow that has closed here.
            None => {
                self.counters.udp_map_datagrams_dropped += 1;
                return;
            }
        };
        let Some(flow) = self.udp_maps.flow(index) else {
            return;
        };
        if flow.map.0 != header.map || flow.closing {
            self.counters.udp_map_datagrams_dropped += 1;
            return;
        }
        flow.last_active = now;
        let complete = flow.reassembly.push(now, &header, payload);
        self.counters.udp_map_datagrams_dropped += flow.reassembly.take_dropped();
        if let Reassembled::Complete(datagram) = complete {
            self.deliver_local(index, &datagram);
        }
    }

    /// Opens the `allow` side of a flow the peer started: its socket to the target. `None` (the
    /// datagram is dropped) when the map id is not a UDP `allow` entry or the flows are at
    /// their limit.
    fn open_target_flow(
        &mut self,
        now: Instant,
        session_id: SessionId,
        map_id: MapId,
        id: FlowId,
    ) -> Option<usize> {
        let target = self.udp_target(session_id, map_id, UdpMode::Datagram)?;
        let fd = self.target_socket(map_id, target)?;
        let index = self.udp_maps.insert(|generation| Flow {
            generation,
            map: map_id,
            mode: UdpMode::Datagram,
            session: session_id,
            id,
            side: Side::Target { fd },
            stream: None,
            last_active: now,
            next_message: 0,
            reassembly: Reassembly::default(),
            rx: Vec::new(),
            tx: Vec::new(),
            preamble_ok: true,
            closing: false,
            inflight: 0,
            recv_armed: false,
        });
        self.udp_maps.by_flow.insert((session_id, false, id), index);
        self.udp_flow_opened(now);
        self.arm_flow_recv(index);
        tracing::debug!(map = %map_id, %target, flow = id.0, "UDP flow to target opened");
        Some(index)
    }

    /// The target of a UDP `allow` entry for a new flow, or `None` (counted) when there is no
    /// such entry, it is a TCP one, or the flows are at their limit.
    fn udp_target(
        &mut self,
        session_id: SessionId,
        map_id: MapId,
        mode: UdpMode,
    ) -> Option<SocketAddr> {
        let allow = self.config.allow.iter().find(|a| a.id == map_id);
        let target = match allow {
            Some(a) if a.proto == Proto::Udp => a.target,
            found => {
                let peer = self.peers.describe(session_id, &self.endpoint);
                let why = if found.is_some() {
                    "the allow entry is tcp"
                } else {
                    "map id not in the allow list"
                };
                self.counters.udp_flows_refused += 1;
                tracing::warn!(map = %map_id, %peer, %mode, "UDP flow refused: {why}");
                return None;
            }
        };
        if self.udp_maps.open >= self.flow_limit() {
            self.counters.udp_flows_refused += 1;
            tracing::debug!(map = %map_id, "UDP flow refused: udp.max_flows reached");
            return None;
        }
        Some(target)
    }

    fn target_socket(&mut self, map_id: MapId, target: SocketAddr) -> Option<OwnedFd> {
        match udp::connect(target) {
            Ok(fd) => Some(fd),
            Err(err) => {
                self.counters.connects_failed += 1;
                tracing::warn!(map = %map_id, %target, %err, "cannot open a UDP socket to the target");
                None
            }
        }
    }

    /// A peer opened a stream for a UDP `allow` entry: a `reliable` flow.
    pub(crate) fn udp_stream_opened(
        &mut self,
        now: Instant,
        session_id: SessionId,
        stream: StreamId,
        map_id: MapId,
    ) {
        let refuse = |shard: &mut Self, code| {
            if let Some(session) = shard.endpoint.session_mut(session_id) {
                let _ = session.reset(stream, code);
            }
        };
        let Some(target) = self.udp_target(session_id, map_id, UdpMode::Reliable) else {
            refuse(self, reset_code::NOT_ALLOWED);
            return;
        };
        let Some(fd) = self.target_socket(map_id, target) else {
            refuse(self, reset_code::CONNECT_FAILED);
            return;
        };
        let id = FlowId(self.udp_maps.next_flow & MAX_FLOW_ID);
        self.udp_maps.next_flow = self.udp_maps.next_flow.wrapping_add(1);
        let index = self.udp_maps.insert(|generation| Flow {
            generation,
            map: map_id,
            mode: UdpMode::Reliable,
            session: session_id,
            id,
            side: Side::Target { fd },
            stream: Some(stream),
            last_active: now,
            next_message: 0,
            reassembly: Reassembly::default(),
            rx: Vec::new(),
            tx: Vec::new(),
            preamble_ok: false,
            closing: false,
            inflight: 0,
            recv_armed: false,
        });
        self.udp_maps.by_stream.insert((session_id, stream), index);
        self.udp_flow_opened(now);
        self.arm_flow_recv(index);
        tracing::debug!(map = %map_id, %target, "reliable UDP flow to target opened");
        self.read_flow_stream(now, index);
    }

    /// Stream events of `reliable` flows.
    pub(crate) fn udp_stream_event(
        &mut self,
        now: Instant,
        session_id: SessionId,
        event: StreamEvent,
    ) {
        let id = event.id();
        let Some(&index) = self.udp_maps.by_stream.get(&(session_id, id)) else {
            return;
        };
        match event {
            StreamEvent::Readable { .. } | StreamEvent::Finished { .. } => {
                self.read_flow_stream(now, index)
            }
            StreamEvent::Writable { .. } => self.flush_flow(index),
            StreamEvent::Reset { .. } => {
                self.udp_maps.by_stream.remove(&(session_id, id));
                if let Some(flow) = self.udp_maps.flow(index) {
                    flow.stream = None;
                }
                self.close_flow(index, None);
            }
            StreamEvent::Closed { .. } => {
                self.udp_maps.by_stream.remove(&(session_id, id));
                if let Some(flow) = self.udp_maps.flow(index) {
                    flow.stream = None;
                }
                self.close_flow(index, None);
            }
            StreamEvent::Opened { .. } => {}
        }
    }

    /// Reads a `reliable` flow's stream and sends every whole datagram on.
    fn read_flow_stream(&mut self, now: Instant, index: usize) {
        let mut buf = vec![0u8; STREAM_READ];
        let Some(flow) = self.udp_maps.flow(index) else {
            return;
        };
        let Some(stream) = flow.stream else {
            return;
        };
        let Some(session) = self.endpoint.session_mut(flow.session) else {
            return;
        };
        let mut fin = false;
        while let Ok(outcome) = session.read(stream, &mut buf) {
            flow.rx.extend_from_slice(&buf[..outcome.len]);
            if outcome.len > 0 {
                flow.last_active = now;
            }
            if outcome.fin {
                fin = true;
                break;
            }
            if outcome.len == 0 {
                break;
            }
        }
        if !flow.preamble_ok {
            let have = flow.rx.len().min(RELIABLE_PREAMBLE.len());
            let matches = flow.rx[..have] == RELIABLE_PREAMBLE[..have];
            if !matches || (fin && have < RELIABLE_PREAMBLE.len()) {
                let map = flow.map;
                self.counters.udp_flows_refused += 1;
                tracing::warn!(map = %map, "stream refused: the allow entry is udp, the peer's map is not");
                self.close_flow(index, Some(reset_code::PROTO_MISMATCH));
                return;
            }
            if have < RELIABLE_PREAMBLE.len() {
                return;
            }
            flow.rx.drain(..RELIABLE_PREAMBLE.len());
            flow.preamble_ok = true;
        }
        let mut datagrams = Vec::new();
        udp_frame::unframe_reliable(&mut flow.rx, |d| datagrams.push(d.to_vec()));
        for datagram in datagrams {
            self.deliver_local(index, &datagram);
        }
        if fin {
            self.close_flow(index, None);
        }
    }

    /// Sends a datagram from the tunnel to the flow's client or target.
    fn deliver_local(&mut self, index: usize, datagram: &[u8]) {
        let Some(flow) = self.udp_maps.flows.get(index).and_then(Option::as_ref) else {
            return;
        };
        let result = match &flow.side {
            Side::Listen { listener, client } => match self.udp_maps.listeners.get(*listener) {
                Some(Some(l)) => udp::send_to(&l.fd, datagram, *client),
                _ => Err(io::Error::from(io::ErrorKind::NotConnected)),
            },
            Side::Target { fd } => udp::send(fd, datagram),
        };
        match result {
            Ok(()) => self.counters.udp_map_datagrams_out += 1,
            Err(_) => self.counters.udp_map_datagrams_dropped += 1,
        }
    }

    pub(crate) fn on_udp_flow_recv(&mut self, now: Instant, c: Completion) {
        let index = c.token.index as usize;
        let live = match self.udp_maps.flow_gen(index, c.token.generation) {
            Some(flow) => {
                if !c.more {
                    flow.recv_armed = false;
                    flow.inflight = flow.inflight.saturating_sub(1);
                }
                !flow.closing
            }
            None => false,
        };
        if !c.more {
            if live {
                self.udp_maps.rearm.push((true, index));
            } else {
                self.maybe_free_flow(index, c.token.generation);
            }
        }
        let Some((_, datagrams)) = self.take_received(&c) else {
            return;
        };
        if !live {
            return;
        }
        for datagram in datagrams {
            self.counters.udp_map_datagrams_in += 1;
            self.send_to_peer(now, index, &datagram);
        }
    }

    pub(crate) fn on_udp_flow_cancel(&mut self, token: Token) {
        let index = token.index as usize;
        if let Some(flow) = self.udp_maps.flow_gen(index, token.generation) {
            flow.inflight = flow.inflight.saturating_sub(1);
        }
        self.maybe_free_flow(index, token.generation);
    }

    /// The end of a removed listener's receive: it may close now.
    pub(crate) fn on_udp_map_cancel(&mut self, _token: Token) {}

    fn maybe_free_flow(&mut self, index: usize, generation: u32) {
        if self
            .udp_maps
            .flow_gen(index, generation)
            .is_some_and(|f| f.closing && f.inflight == 0)
        {
            self.udp_maps.remove(index);
        }
    }

    /// Closes a flow: forgets its keys, resets its stream with `reset` (if any), and frees it
    /// once its socket has no operation in flight.
    fn close_flow(&mut self, index: usize, reset: Option<u64>) {
        let Some(flow) = self.udp_maps.flows.get_mut(index).and_then(Option::as_mut) else {
            return;
        };
        if flow.closing {
            return;
        }
        flow.closing = true;
        let (session, id, to_target, generation) =
            (flow.session, flow.id, flow.to_target(), flow.generation);
        if let Side::Listen { listener, client } = flow.side {
            self.udp_maps.by_client.remove(&(listener, client));
        }
        let stream = flow.stream.take();
        let cancel = match &flow.side {
            Side::Target { fd } if flow.inflight > 0 => {
                flow.inflight += 1;
                Some(fd.as_raw_fd())
            }
            _ => None,
        };
        self.udp_maps.open = self.udp_maps.open.saturating_sub(1);
        if self.udp_maps.by_flow.get(&(session, to_target, id)) == Some(&index) {
            self.udp_maps.by_flow.remove(&(session, to_target, id));
        }
        if let Some(stream) = stream {
            self.udp_maps.by_stream.remove(&(session, stream));
            if let (Some(code), Some(s)) = (reset, self.endpoint.session_mut(session)) {
                let _ = s.reset(stream, code);
            } else if reset.is_none()
                && let Some(s) = self.endpoint.session_mut(session)
            {
                // Our side is done too: end it cleanly so the stream completes.
                let _ = s.finish(stream);
            }
        }
        match cancel {
            Some(fd) => {
                let token = Token::new(Op::UdpFlowCancel, index, generation);
                self.io.push(token, IoOp::Cancel { fd });
            }
            None => self.maybe_free_flow(index, generation),
        }
    }

    /// Closes every flow a session carried (it ended).
    pub(crate) fn udp_session_closed(&mut self, session: SessionId) {
        let indices: Vec<usize> = self
            .udp_maps
            .flows
            .iter()
            .enumerate()
            .filter(|(_, f)| f.as_ref().is_some_and(|f| f.session == session))
            .map(|(i, _)| i)
            .collect();
        for index in indices {
            if let Some(flow) = self.udp_maps.flow(index) {
                flow.stream = None;
            }
            self.close_flow(index, None);
        }
    }

    /// When the next idle scan is due.
    pub(crate) fn udp_deadline(&self) -> Option<Instant> {
        self.udp_maps.next_scan
    }

    /// Closes idle flows and drops stale fragments.
    pub(crate) fn udp_timers(&mut self, now: Instant) {
        if self.udp_maps.next_scan.is_none_or(|t| t > now) {
            return;
        }
        let idle = self.config.udp.idle_timeout;
        let mut expired = Vec::new();
        let mut dropped = 0;
        for (index, flow) in self.udp_maps.flows.iter_mut().enumerate() {
            let Some(flow) = flow else { continue };
            if flow.closing {
                continue;
            }
            flow.reassembly.expire(now);
            dropped += flow.reassembly.take_dropped();
            if now.saturating_duration_since(flow.last_active) >= idle {
                expired.push(index);
            }
        }
        self.counters.udp_map_datagrams_dropped += dropped;
        for index in expired {
            if let Some(flow) = self.udp_maps.flow(index) {
                tracing::debug!(map = %flow.map, flow = flow.id.0, "UDP flow idle; closed");
            }
            self.close_flow(index, Some(reset_code::FLOW_IDLE));
        }
        self.udp_maps.next_scan = (self.udp_maps.open > 0).then(|| now + SCAN_INTERVAL);
    }

    /// A reload removed UDP maps or allow entries: their listeners stop and their flows close.
    pub(crate) fn udp_reconfigure(&mut self, maps_removed: &[MapId], allow_removed: &[MapId]) {
        for i in 0..self.udp_maps.listeners.len() {
            let Some(Some(listener)) = self.udp_maps.listeners.get_mut(i) else {
                continue;
            };
            if listener.retired || !maps_removed.contains(&listener.map) {
                continue;
            }
            listener.retired = true;
            tracing::info!(map = %listener.map, "UDP map removed: socket closed");
            if listener.armed {
                let fd = listener.fd.as_raw_fd();
                self.io
                    .push(Token::new(Op::UdpMapCancel, i, 0), IoOp::Cancel { fd });
            } else if let Some(slot) = self.udp_maps.listeners.get_mut(i) {
                *slot = None;
            }
        }
        let removed: Vec<usize> = self
            .udp_maps
            .flows
            .iter()
            .enumerate()
            .filter_map(|(i, f)| {
                let f = f.as_ref()?;
                let gone = match f.side {
                    Side::Listen { .. } => maps_removed.contains(&f.map),
                    Side::Target { .. } => allow_removed.contains(&f.map),
                };
                gone.then_some(i)
            })
            .collect();
        for index in removed {
            self.close_flow(index, Some(reset_code::MAP_REMOVED));
        }
    }
}
