//! One shard: a pinned thread with its own io_uring, UDP socket, listeners, endpoint (sessions)
//! and forwarded connections. Nothing here is shared with another thread; the control thread
//! talks to it only through a channel and an eventfd.
//!
//! The loop: reap completions (feeding datagrams to the endpoint and socket data to streams) ->
//! run the endpoint's timers -> act on its events -> drain `poll_transmit` into GSO sends ->
//! wait for the next completion or the next deadline.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use engine_api::config::Config;
use engine_proto::wire::{SessionId, StreamId};
use engine_proto::{Endpoint, EndpointConfig};
use io_uring::types::{Fd, SubmitArgs, Timespec};
use io_uring::{IoUring, cqueue, opcode, squeue};

use super::conn::Conns;
use super::control::{ShardMsg, ShardStats};
use super::peers::Peers;
use super::ring::{self, BufRing, Op, Token};
use super::udp::{self, RecvHeader, SendSlot};
use super::{stats::Counters, tcp};

/// Buffer group of the UDP receive ring.
const UDP_GROUP: u16 = 0;
/// Buffer group of the TCP receive ring.
const TCP_GROUP: u16 = 1;
const UDP_BUFFERS: u16 = 64;
const TCP_BUFFERS: u16 = 16;
const TCP_BUFFER_SIZE: usize = 256 * 1024;
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
    pub(crate) control: Receiver<ShardMsg>,
    pub(crate) wake: Arc<OwnedFd>,
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
    /// Index into the config's `maps`.
    pub(crate) map: usize,
    pub(crate) armed: bool,
    /// When to accept again after a resource error.
    pub(crate) retry_at: Option<Instant>,
}

pub(crate) struct Shard {
    /// Never dropped while operations are in flight: [`Shard::run`] leaks the shard on exit.
    pub(crate) ring: IoUring,
    pub(crate) index: usize,
    pub(crate) config: Arc<Config>,
    pub(crate) endpoint: Endpoint,
    pub(crate) udp: OwnedFd,
    udp_bufs: BufRing,
    pub(crate) tcp_bufs: BufRing,
    recv_header: RecvHeader,
    udp_recv_armed: bool,
    // Boxed: the kernel holds pointers into a slot (its message header points at its own
    // fields) until the send completes, so a slot must never move.
    #[allow(clippy::vec_box)]
    slots: Vec<Box<SendSlot>>,
    free_slots: Vec<usize>,
    gso: bool,
    pub(crate) listeners: Vec<Listener>,
    pub(crate) conns: Conns,
    pub(crate) streams: HashMap<(SessionId, StreamId), usize>,
    pub(crate) peers: Peers,
    pub(crate) counters: Counters,
    control: Receiver<ShardMsg>,
    wake: Arc<OwnedFd>,
    wake_buf: Box<u64>,
    wake_armed: bool,
    /// Connections whose receive found no free buffer; re-armed after this round.
    pub(crate) starved: Vec<usize>,
    shutdown_at: Option<Instant>,
    completions: Vec<(u64, i32, u32)>,
}

impl Shard {
    /// Binds the shard's sockets and builds its state. Runs on the shard's own thread.
    pub(crate) fn new(setup: ShardSetup) -> io::Result<(Self, Bound)> {
        let ring = ring::build()?;
        let udp = udp::bind(setup.udp_addr)
            .map_err(|err| annotate(err, format!("cannot bind UDP {}", setup.udp_addr)))?;
        let udp_local = tcp::local_addr(&udp)?;
        let mut listeners = Vec::new();
        let mut maps = Vec::new();
        for (i, addr) in setup.map_addrs.iter().enumerate() {
            let fd = tcp::listen(*addr).map_err(|err| {
                annotate(
                    err,
                    format!(
                        "map {}: cannot listen on TCP {addr}",
                        setup.config.maps[i].id
                    ),
                )
            })?;
            maps.push(tcp::local_addr(&fd)?);
            listeners.push(Listener {
                fd,
                map: i,
                armed: false,
                retry_at: None,
            });
        }
        let udp_bufs = BufRing::new(
            &ring,
            UDP_GROUP,
            UDP_BUFFERS,
            udp::RECV_HEADER_LEN + udp::RECV_PAYLOAD_LEN,
        )
        .map_err(|err| {
            annotate(
                err,
                "cannot register the UDP buffer ring (RLIMIT_MEMLOCK?)".into(),
            )
        })?;
        let tcp_bufs =
            BufRing::new(&ring, TCP_GROUP, TCP_BUFFERS, TCP_BUFFER_SIZE).map_err(|err| {
                annotate(
                    err,
                    "cannot register the TCP buffer ring (RLIMIT_MEMLOCK?)".into(),
                )
            })?;
        let slot_size = setup.endpoint.session.mtu * setup.endpoint.session.max_segments;
        let slots: Vec<Box<SendSlot>> = (0..SEND_SLOTS).map(|_| SendSlot::new(slot_size)).collect();
        let peers = Peers::new(&setup.config);
        let shard = Self {
            ring,
            index: setup.index,
            endpoint: Endpoint::new(setup.endpoint, setup.seed),
            config: setup.config,
            udp,
            udp_bufs,
            tcp_bufs,
            recv_header: RecvHeader::new(),
            udp_recv_armed: false,
            free_slots: (0..slots.len()).rev().collect(),
            slots,
            gso: true,
            listeners,
            conns: Conns::default(),
            streams: HashMap::new(),
            peers,
            counters: Counters::default(),
            control: setup.control,
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
        self.peers_start(now);
        loop {
            let now = Instant::now();
            self.reap(now);
            if self.endpoint.poll_timeout().is_some_and(|t| t <= now) {
                self.endpoint.handle_timeout(now);
            }
            self.handle_endpoint_events(now);
            self.peers_timers(now);
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
            self.listeners.iter().filter_map(|l| l.retry_at).min(),
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
        let result = match deadline {
            Some(deadline) => {
                let wait = deadline.saturating_duration_since(now);
                if wait.is_zero() {
                    self.ring.submit()
                } else {
                    let ts = Timespec::new()
                        .sec(wait.as_secs())
                        .nsec(wait.subsec_nanos());
                    let args = SubmitArgs::new().timespec(&ts);
                    self.ring.submitter().submit_with_args(1, &args)
                }
            }
            None => self.ring.submit_and_wait(1),
        };
        match result {
            Ok(_) => Ok(()),
            Err(err)
                if matches!(
                    err.raw_os_error(),
                    Some(libc::ETIME | libc::EINTR | libc::EBUSY)
                ) =>
            {
                Ok(())
            }
            Err(err) => Err(err),
        }
    }

    /// Queues a submission, flushing the queue to the kernel first if it is full.
    pub(crate) fn push(&mut self, entry: squeue::Entry) {
        loop {
            // SAFETY: every entry's buffers are owned by the shard (boxed or in buffer rings)
            // and outlive the operation: they are freed only after its completion.
            if unsafe { self.ring.submission().push(&entry) }.is_ok() {
                return;
            }
            if let Err(err) = self.ring.submit() {
                tracing::warn!(shard = self.index, %err, "io_uring submit failed");
            }
        }
    }

    /// Queues two linked submissions (an operation and its timeout) so they reach the kernel
    /// together.
    pub(crate) fn push_linked(&mut self, first: squeue::Entry, second: squeue::Entry) {
        {
            let sq = self.ring.submission();
            let room = sq.capacity() - sq.len();
            drop(sq);
            if room < 2 {
                let _ = self.ring.submit();
            }
        }
        self.push(first);
        self.push(second);
    }

    fn arm_udp_recv(&mut self) {
        let entry = opcode::RecvMsgMulti::new(
            Fd(self.udp.as_raw_fd()),
            self.recv_header.as_ptr(),
            UDP_GROUP,
        )
        .build()
        .user_data(Token::new(Op::UdpRecv, 0, 0).to_user_data());
        self.push(entry);
        self.udp_recv_armed = true;
    }

    fn arm_wake(&mut self) {
        let entry = opcode::Read::new(
            Fd(self.wake.as_raw_fd()),
            (&mut *self.wake_buf as *mut u64).cast(),
            8,
        )
        .build()
        .user_data(Token::new(Op::Wake, 0, 0).to_user_data());
        self.push(entry);
        self.wake_armed = true;
    }

    pub(crate) fn arm_accept(&mut self, i: usize) {
        let Some(listener) = self.listeners.get_mut(i) else {
            return;
        };
        listener.armed = true;
        let entry = opcode::AcceptMulti::new(Fd(listener.fd.as_raw_fd()))
            .flags(libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK)
            .build()
            .user_data(Token::new(Op::Accept, i, 0).to_user_data());
        self.push(entry);
    }

    /// Listeners that rested after a resource error accept again.
    fn retry_accepts(&mut self, now: Instant) {
        for i in 0..self.listeners.len() {
            if self.listeners[i].retry_at.is_some_and(|t| t <= now) && self.shutdown_at.is_none() {
                self.listeners[i].retry_at = None;
                self.arm_accept(i);
            }
        }
    }

    /// Drains the completion queue and dispatches every completion.
    fn reap(&mut self, now: Instant) {
        let mut completions = std::mem::take(&mut self.completions);
        completions.clear();
        completions.extend(
            self.ring
                .completion()
                .map(|c| (c.user_data(), c.result(), c.flags())),
        );
        for &(data, result, flags) in &completions {
            let Some(token) = Token::from_user_data(data) else {
                continue;
            };
            match token.op {
                Op::UdpRecv => self.on_udp_recv(now, result, flags),
                Op::UdpSend => self.on_udp_send(token.index as usize, result),
                Op::Accept => self.on_accept(now, token.index as usize, result, flags),
                Op::TcpRecv => self.on_tcp_recv(token, result, flags),
                Op::TcpSend => self.on_tcp_send(token, result),
                Op::Connect => self.on_connect(token, result),
                Op::ConnectTimeout | Op::Cancel => self.on_conn_op_done(token),
                Op::Wake => self.on_wake(now, result),
            }
        }
        self.completions = completions;
        if !self.udp_recv_armed {
            self.arm_udp_recv();
        }
        if !self.wake_armed && self.shutdown_at.is_none() {
            self.arm_wake();
        }
    }

    fn on_udp_recv(&mut self, now: Instant, result: i32, flags: u32) {
        if !cqueue::more(flags) {
            // Multishot ended (no buffers, or an error): re-armed after this round.
            self.udp_recv_armed = false;
        }
        let Some(bid) = cqueue::buffer_select(flags) else {
            if result < 0 && result != -libc::ENOBUFS {
                tracing::debug!(shard = self.index, err = %io::Error::from_raw_os_error(-result), "UDP receive failed");
            }
            return;
        };
        let len = usize::try_from(result).unwrap_or(0);
        let buffer = self.udp_bufs.buffer_mut(bid, len);
        match self.recv_header.parse(buffer) {
            Some(received) => {
                let payload = &mut buffer[received.payload];
                let segment = received.segment_size.unwrap_or(payload.len()).max(1);
                for datagram in payload.chunks_mut(segment) {
                    self.counters.udp_datagrams_received += 1;
                    self.counters.udp_bytes_received += datagram.len() as u64;
                    self.endpoint.handle_datagram(now, received.from, datagram);
                }
            }
            None => self.counters.udp_receive_errors += 1,
        }
        self.udp_bufs.recycle(bid);
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
                tracing::info!(
                    shard = self.index,
                    "UDP GSO refused by the kernel; sending one datagram per call"
                );
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
        while let Ok(msg) = self.control.try_recv() {
            match msg {
                ShardMsg::Stats(reply) => {
                    let _ = reply.send(self.stats());
                }
                ShardMsg::Shutdown => self.begin_shutdown(now),
            }
        }
    }

    fn begin_shutdown(&mut self, now: Instant) {
        if self.shutdown_at.is_some() {
            return;
        }
        tracing::info!(shard = self.index, "shutting down: closing sessions");
        self.shutdown_at = Some(now + SHUTDOWN_GRACE);
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
            let entry = opcode::SendMsg::new(Fd(self.udp.as_raw_fd()), msg)
                .build()
                .user_data(Token::new(Op::UdpSend, index, 0).to_user_data());
            self.push(entry);
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
