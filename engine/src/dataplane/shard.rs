//! One shard: a pinned thread with its own I/O backend (io_uring or epoll), UDP socket,
//! listeners, endpoint (sessions) and forwarded connections. Nothing on its data path is shared
//! with another thread: the control thread and the other shards reach it only through its
//! channels and eventfd (see `control::ShardHandle`), and the peer directory is the one shared
//! (read-mostly) structure.
//!
//! The loop: reap completions (feeding datagrams to the endpoint and socket data to streams) ->
//! run the endpoint's timers -> act on its events -> drain `poll_transmit` into GSO sends ->
//! wait for the next completion or the next deadline.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use engine_api::config::{Config, MapId, Proto};
use engine_proto::wire::{SessionId, StreamId};
use engine_proto::{Endpoint, EndpointConfig};

use super::conn::Conns;
use super::control::{Inbox, ShardHandle, ShardMsg, ShardStats};
use super::handover::{PeerDirectory, Route, route};
use super::io::{BackendKind, Completion, Io, IoOp, Op, Token};
use super::peers::Peers;
use super::stats::{Counters, Telemetry};
use super::udp::{self, SendSlot};
use super::udp_map::UdpMaps;
use super::{steer, tcp};

/// GSO sends in flight at once.
const SEND_SLOTS: usize = 64;
/// How long a shutting-down shard keeps sending (CLOSE frames) before it exits.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(300);

/// What a shard needs to start.
#[derive(Debug)]
pub(crate) struct ShardSetup {
    pub(crate) index: usize,
    pub(crate) core: Option<core_affinity::CoreId>,
    pub(crate) config: Arc<Config>,
    pub(crate) endpoint: EndpointConfig,
    pub(crate) seed: [u8; 32],
    /// The UDP address to bind (the config's `listen`, or an ephemeral port).
    pub(crate) udp_addr: SocketAddr,
    /// Listener addresses, one per `maps` entry (ports resolved by the first shard).
    pub(crate) map_addrs: Vec<SocketAddr>,
    pub(crate) inbox: Inbox,
    pub(crate) wake: Arc<OwnedFd>,
    pub(crate) backend: BackendKind,
    /// UDP GSO on send and GRO on receive.
    pub(crate) gso: bool,
    /// Attach the reuseport steering program to the UDP socket (the first shard of a node with
    /// `listen`; it applies to the whole group).
    pub(crate) steer: bool,
    /// How many shards the engine runs.
    pub(crate) shards: usize,
    /// Every shard's control handle (this one's included), for handing traffic to its owner.
    pub(crate) siblings: Arc<[ShardHandle]>,
    pub(crate) directory: Arc<PeerDirectory>,
}

/// What a shard reports once its sockets are bound.
#[derive(Debug, Clone)]
pub(crate) struct Bound {
    pub(crate) udp: SocketAddr,
    pub(crate) maps: Vec<SocketAddr>,
}

#[derive(Debug)]
pub(crate) struct Listener {
    pub(crate) fd: OwnedFd,
    pub(crate) map: MapId,
    pub(crate) armed: bool,
    /// When to accept again after a resource error.
    pub(crate) retry_at: Option<Instant>,
    /// A reload removed the map: the listener closes once its accept has ended.
    pub(crate) retired: bool,
}

pub(crate) struct Shard {
    /// Never dropped while operations are in flight: [`Shard::run`] leaks the shard on exit.
    pub(crate) io: Io,
    pub(crate) index: usize,
    pub(crate) shards: usize,
    pub(crate) config: Arc<Config>,
    pub(crate) endpoint: Endpoint,
    pub(crate) udp: OwnedFd,
    /// The UDP socket is one of the shards' shared reuseport group (the node has `listen`).
    shared_udp: bool,
    udp_recv_armed: bool,
    // Boxed: the kernel holds pointers into a slot (its message header points at its own
    // fields) until the send completes, so a slot must never move.
    #[allow(clippy::vec_box)]
    slots: Vec<Box<SendSlot>>,
    free_slots: Vec<usize>,
    gso: bool,
    /// Slots of listeners; a listener's slot index is in its operations' tokens, so a slot
    /// emptied by a reload stays in place (and is reused by a later one).
    pub(crate) listeners: Vec<Option<Listener>>,
    pub(crate) conns: Conns,
    /// UDP map listeners and flows.
    pub(crate) udp_maps: UdpMaps,
    pub(crate) streams: HashMap<(SessionId, StreamId), usize>,
    pub(crate) peers: Peers,
    pub(crate) counters: Counters,
    /// Latency histograms and per-map totals, for `ctl stats`.
    pub(crate) telemetry: Telemetry,
    inbox: Inbox,
    pub(crate) siblings: Arc<[ShardHandle]>,
    pub(crate) directory: Arc<PeerDirectory>,
    wake: Arc<OwnedFd>,
    wake_buf: Box<u64>,
    wake_armed: bool,
    /// Connections whose receive found no free buffer; re-armed after this round.
    pub(crate) starved: Vec<usize>,
    shutdown_at: Option<Instant>,
    completions: Vec<Completion>,
}

impl Shard {
    /// Binds the shard's sockets and builds its state. Runs on the shard's own thread.
    pub(crate) fn new(setup: ShardSetup) -> io::Result<(Self, Bound)> {
        let io = Io::new(setup.backend)?;
        let udp = udp::bind(setup.udp_addr, setup.gso)
            .map_err(|err| annotate(err, format!("cannot bind UDP {}", setup.udp_addr)))?;
        let udp_local = tcp::local_addr(&udp)?;
        if setup.steer {
            // Without the program packets still arrive, at the kernel's hash, and are handed
            // over: worth a warning, not a failed start.
            match steer::attach(udp.as_fd(), setup.shards) {
                Ok(()) => tracing::info!(shards = setup.shards, "packets steered to their shard"),
                Err(err) => {
                    tracing::warn!(%err, "cannot attach the reuseport steering program; misrouted packets will be handed over")
                }
            }
        }
        let mut listeners = Vec::new();
        let mut udp_maps = UdpMaps::default();
        let mut maps = Vec::new();
        for (i, addr) in setup.map_addrs.iter().enumerate() {
            let map = &setup.config.maps[i];
            if map.proto == Proto::Udp {
                let fd = udp::bind_map(*addr).map_err(|err| {
                    annotate(err, format!("map {}: cannot bind UDP {addr}", map.id))
                })?;
                maps.push(tcp::local_addr(&fd)?);
                udp_maps.add_listener(fd, map.id);
                continue;
            }
            let fd = tcp::listen(*addr).map_err(|err| {
                annotate(err, format!("map {}: cannot listen on TCP {addr}", map.id))
            })?;
            maps.push(tcp::local_addr(&fd)?);
            listeners.push(Some(Listener {
                fd,
                map: map.id,
                armed: false,
                retry_at: None,
                retired: false,
            }));
        }
        let slot_size = setup.endpoint.session.mtu * setup.endpoint.session.max_segments;
        let slots: Vec<Box<SendSlot>> = (0..SEND_SLOTS).map(|_| SendSlot::new(slot_size)).collect();
        let peers = Peers::new(&setup.config);
        let shard = Self {
            io,
            index: setup.index,
            shards: setup.shards,
            shared_udp: setup.config.listen.is_some(),
            endpoint: Endpoint::new(setup.endpoint, setup.seed),
            config: setup.config,
            udp,
            udp_recv_armed: false,
            free_slots: (0..slots.len()).rev().collect(),
            slots,
            gso: setup.gso,
            listeners,
            conns: Conns::default(),
            udp_maps,
            streams: HashMap::new(),
            peers,
            counters: Counters::default(),
            telemetry: Telemetry::new(Instant::now()),
            inbox: setup.inbox,
            siblings: setup.siblings,
            directory: setup.directory,
            wake: setup.wake,
            wake_buf: Box::new(0),
            wake_armed: false,
            starved: Vec::new(),
            shutdown_at: None,
            completions: Vec::with_capacity(256),
        };
        Ok((
            shard,
            Bound {
                udp: udp_local,
                maps,
            },
        ))
    }

    /// Runs until told to shut down.
    pub(crate) fn run(mut self) -> io::Result<()> {
        let result = self.run_loop();
        // Operations may still be in flight (the multishot receive, the wake read, sends cut
        // off by the grace period), and closing the ring does not stop the kernel from using
        // their buffers at once: leak the shard's memory rather than free it under the kernel.
        // The process exits right after its shards stop.
        std::mem::forget(self);
        result
    }

    fn run_loop(&mut self) -> io::Result<()> {
        let now = Instant::now();
        self.arm_udp_recv();
        self.arm_wake();
        for i in 0..self.listeners.len() {
            self.arm_accept(i);
        }
        self.udp_start();
        self.peers_start(now);
        loop {
            let now = Instant::now();
            self.reap(now);
            self.sample_rtt(now);
            if self.endpoint.poll_timeout().is_some_and(|t| t <= now) {
                self.endpoint.handle_timeout(now);
            }
            self.handle_endpoint_events(now);
            self.peers_timers(now);
            self.udp_timers(now);
            self.rearm_starved();
            self.retry_accepts(now);
            self.flush_transmits(now);
            if let Some(at) = self.shutdown_at {
                let drained = self.free_slots.len() == self.slots.len()
                    && self.endpoint.sessions().next().is_none();
                if drained || now >= at {
                    return Ok(());
                }
            }
            self.wait(now)?;
        }
    }

    /// Submits what is queued and sleeps until a completion arrives or the next deadline.
    fn wait(&mut self, now: Instant) -> io::Result<()> {
        let deadline = [
            self.endpoint.poll_timeout(),
            self.peers_deadline(),
            self.udp_deadline(),
            self.listeners
                .iter()
                .flatten()
                .filter_map(|l| l.retry_at)
                .min(),
            self.shutdown_at,
        ]
        .into_iter()
        .flatten()
        .min()
        // With every send slot busy the endpoint's pacing deadline cannot be acted on before a
        // send completes: wait for that completion instead of spinning.
        .map(|d| {
            if self.free_slots.is_empty() {
                d.max(now + Duration::from_millis(1))
            } else {
                d
            }
        });
        self.io
            .wait(deadline.map(|d| d.saturating_duration_since(now)))
    }

    fn arm_udp_recv(&mut self) {
        let fd = self.udp.as_raw_fd();
        self.io
            .push(Token::new(Op::UdpRecv, 0, 0), IoOp::UdpRecv { fd });
        self.udp_recv_armed = true;
    }

    fn arm_wake(&mut self) {
        let op = IoOp::ReadEventfd {
            fd: self.wake.as_raw_fd(),
            buf: &mut *self.wake_buf,
        };
        self.io.push(Token::new(Op::Wake, 0, 0), op);
        self.wake_armed = true;
    }

    pub(crate) fn arm_accept(&mut self, i: usize) {
        let Some(listener) = self.listener_mut(i) else {
            return;
        };
        listener.armed = true;
        let fd = listener.fd.as_raw_fd();
        self.io
            .push(Token::new(Op::Accept, i, 0), IoOp::Accept { fd });
    }

    /// Listeners that rested after a resource error accept again.
    fn retry_accepts(&mut self, now: Instant) {
        for i in 0..self.listeners.len() {
            let due = self.shutdown_at.is_none()
                && self
                    .listener_mut(i)
                    .is_some_and(|l| l.retry_at.is_some_and(|t| t <= now));
            if due {
                if let Some(l) = self.listener_mut(i) {
                    l.retry_at = None;
                }
                self.arm_accept(i);
            }
        }
    }

    pub(crate) fn listener(&self, i: usize) -> Option<&Listener> {
        self.listeners.get(i)?.as_ref()
    }

    pub(crate) fn listener_mut(&mut self, i: usize) -> Option<&mut Listener> {
        self.listeners.get_mut(i)?.as_mut()
    }

    /// Closes listener `i` and frees its slot; only once no accept is in flight on it.
    pub(crate) fn free_listener(&mut self, i: usize) {
        if let Some(slot) = self.listeners.get_mut(i) {
            *slot = None;
        }
    }

    /// Drains the completion queue and dispatches every completion.
    fn reap(&mut self, now: Instant) {
        let mut completions = std::mem::take(&mut self.completions);
        completions.clear();
        self.io.reap(&mut completions);
        for &c in &completions {
            let token = c.token;
            match token.op {
                Op::UdpRecv => self.on_udp_recv(now, c),
                Op::UdpSend => self.on_udp_send(token.index as usize, c.result),
                Op::Accept => self.on_accept(now, token.index as usize, c),
                Op::TcpRecv => self.on_tcp_recv(c),
                Op::TcpSend => self.on_tcp_send(token, c.result),
                Op::Connect => self.on_connect(token, c.result),
                Op::ConnectTimeout | Op::Cancel => self.on_conn_op_done(token),
                Op::Wake => self.on_wake(now, c.result),
                // The accept's own completion (cancelled) frees the listener.
                Op::CancelAccept => {}
                Op::UdpMapRecv => self.on_udp_map_recv(now, c),
                Op::UdpFlowRecv => self.on_udp_flow_recv(now, c),
                Op::UdpFlowCancel => self.on_udp_flow_cancel(token),
                Op::UdpMapCancel => self.on_udp_map_cancel(token),
            }
        }
        self.completions = completions;
        if self.shutdown_at.is_none() {
            self.udp_rearm();
        }
        if !self.udp_recv_armed {
            self.arm_udp_recv();
        }
        if !self.wake_armed && self.shutdown_at.is_none() {
            self.arm_wake();
        }
    }

    fn on_udp_recv(&mut self, now: Instant, c: Completion) {
        if !c.more {
            // Multishot ended (no buffers, or an error): re-armed after this round.
            self.udp_recv_armed = false;
        }
        let Some(bid) = c.buffer else {
            if c.result < 0 && c.result != -libc::ENOBUFS {
                tracing::debug!(err = %io::Error::from_raw_os_error(-c.result), "UDP receive failed");
            }
            return;
        };
        let len = usize::try_from(c.result).unwrap_or(0);
        match self.io.udp_received(bid, len) {
            Some((received, buffer)) => {
                let payload = &mut buffer[received.payload];
                let segment = received.segment_size.unwrap_or(payload.len()).max(1);
                for datagram in payload.chunks_mut(segment) {
                    self.counters.udp_datagrams_received += 1;
                    self.counters.udp_bytes_received += datagram.len() as u64;
                    let from = received.from;
                    match route(datagram, self.index, self.shards, self.shared_udp) {
                        Route::Local => self.endpoint.handle_datagram(now, from, datagram),
                        Route::Owner(owner) => {
                            if self.siblings[owner].hand_datagram(from, datagram.to_vec()) {
                                self.counters.packets_handed_over += 1;
                            } else {
                                self.counters.handover_dropped += 1;
                            }
                        }
                        Route::Everyone => {
                            for (i, sibling) in self.siblings.iter().enumerate() {
                                if i == self.index {
                                    continue;
                                }
                                if sibling.hand_datagram(from, datagram.to_vec()) {
                                    self.counters.packets_handed_over += 1;
                                } else {
                                    self.counters.handover_dropped += 1;
                                }
                            }
                            self.endpoint.handle_datagram(now, from, datagram);
                        }
                    }
                }
            }
            None => self.counters.udp_receive_errors += 1,
        }
        self.io.udp_bufs.recycle(bid);
    }

    fn on_udp_send(&mut self, index: usize, result: i32) {
        let Some(slot) = self.slots.get(index) else {
            return;
        };
        if result < 0 {
            let errno = -result;
            let batch = slot.segment_size.is_some_and(|s| s < slot.len);
            if batch && self.gso && matches!(errno, libc::EIO | libc::EINVAL) {
                // The kernel or the device refuses UDP GSO: send this batch one datagram at a
                // time, and every later one too.
                self.gso = false;
                tracing::info!("UDP GSO refused by the kernel; sending one datagram per call");
            }
            if batch && !self.gso {
                if let Some(destination) = slot.destination {
                    for segment in slot.segments() {
                        if udp::send_to(&self.udp, segment, destination).is_err() {
                            self.counters.udp_send_errors += 1;
                        }
                    }
                }
            } else {
                self.counters.udp_send_errors += 1;
            }
        }
        self.free_slots.push(index);
    }

    fn on_wake(&mut self, now: Instant, _result: i32) {
        self.wake_armed = false;
        while let Ok((from, mut data)) = self.inbox.datagrams.try_recv() {
            self.counters.packets_taken_over += 1;
            self.endpoint.handle_datagram(now, from, &mut data);
        }
        while let Ok(msg) = self.inbox.control.try_recv() {
            match msg {
                ShardMsg::Stats(reply) => {
                    let _ = reply.send(self.stats());
                }
                ShardMsg::Shutdown => self.begin_shutdown(now),
                ShardMsg::Reconfigure(msg) => self.reconfigure(now, *msg),
                ShardMsg::Connection { fd, map } => {
                    if self.shutdown_at.is_none() {
                        self.start_connection(now, fd, map, true);
                    }
                }
                ShardMsg::PeerUp { peer, shard } => self.peer_up_elsewhere(peer, shard),
            }
        }
    }

    fn begin_shutdown(&mut self, now: Instant) {
        if self.shutdown_at.is_some() {
            return;
        }
        tracing::info!("shutting down: closing sessions");
        self.shutdown_at = Some(now + SHUTDOWN_GRACE);
        // Listeners resting after a resource error stay closed now: their retry time must not
        // keep waking the loop.
        for listener in self.listeners.iter_mut().flatten() {
            listener.retry_at = None;
        }
        let ids: Vec<SessionId> = self.endpoint.sessions().map(|s| s.local_id()).collect();
        for id in ids {
            if let Some(session) = self.endpoint.session_mut(id) {
                session.close(now, 0, b"engine shutting down");
            }
        }
        self.peers.stop_dialling();
    }

    /// Hands the endpoint's datagrams to the kernel, as many GSO batches as there are free slots.
    fn flush_transmits(&mut self, now: Instant) {
        while let Some(&index) = self.free_slots.last() {
            let slot = &mut self.slots[index];
            let Some(transmit) = self.endpoint.poll_transmit(now, &mut slot.buf) else {
                break;
            };
            self.free_slots.pop();
            self.counters.udp_datagrams_sent += transmit.segments() as u64;
            self.counters.udp_bytes_sent += transmit.size as u64;
            let msg = slot.prepare(
                transmit.destination,
                transmit.size,
                transmit.segment_size,
                self.gso,
            );
            if !self.gso && transmit.segments() > 1 {
                // No GSO: one datagram per call, straight from the slot.
                for segment in slot.segments() {
                    if udp::send_to(&self.udp, segment, transmit.destination).is_err() {
                        self.counters.udp_send_errors += 1;
                    }
                }
                self.free_slots.push(index);
                continue;
            }
            let fd = self.udp.as_raw_fd();
            self.io
                .push(Token::new(Op::UdpSend, index, 0), IoOp::UdpSend { fd, msg });
        }
    }

    pub(crate) fn stats(&self) -> ShardStats {
        super::stats::snapshot(self)
    }
}

impl std::fmt::Debug for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shard")
            .field("index", &self.index)
            .finish_non_exhaustive()
    }
}

fn annotate(err: io::Error, context: String) -> io::Error {
    io::Error::new(err.kind(), format!("{context}: {err}"))
}
