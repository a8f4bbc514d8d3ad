//! The epoll backend: readiness with one edge-triggered epoll instance per shard, operations
//! performed with non-blocking syscalls (`recvmmsg`/`sendmmsg` for UDP), outcomes reported as
//! the completions io_uring would have produced.
//!
//! Every operation is tried at once when pushed (UDP sends are batched instead: they go out in
//! one `sendmmsg` when the shard reaps or waits). One that would block stays pending on its
//! descriptor, and epoll says when to try again. Results are queued and handed out by the next
//! [`Epoll::reap`], never passed back to the shard from inside a call.
//!
//! Registration: descriptors are registered edge-triggered for everything at once, so an event
//! means "something changed; retry what is pending". The shard closes descriptors without
//! telling the backend (only once none of their operations is pending, by the I/O contract), and
//! the kernel drops a closed descriptor's registration by itself, so a registration is trusted
//! only while its descriptor keeps an operation pending. A descriptor that was idle is
//! registered again (`EPOLL_CTL_MOD`, or `ADD` if the number now names a new file) the first
//! time one of its operations has to wait; `MOD` also re-reports the current readiness, so
//! nothing that happened while it was idle is missed.

use std::collections::VecDeque;
use std::io;
use std::mem;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr;
use std::time::{Duration, Instant};

use super::{Buffers, Completion, IoOp, Received, Token, UDP_PAYLOAD_LEN};
use crate::dataplane::{sockaddr, udp};

/// Events taken from the kernel per `epoll_wait`.
const EVENTS: usize = 256;
/// Datagrams per `recvmmsg` (each needs a free buffer of the UDP pool).
const RECV_BATCH: usize = 32;
/// Messages per `sendmmsg` (the shard has 64 send slots).
const SEND_BATCH: usize = 64;
/// Room for the sender's address of a received datagram.
const NAME_LEN: usize = mem::size_of::<libc::sockaddr_storage>();
/// Room for control messages of a received datagram, in u64s (64 bytes: one UDP_GRO int, with
/// slack for others; as io_uring's receive header).
const CONTROL_WORDS: usize = 8;
const CONTROL_LEN: usize = CONTROL_WORDS * mem::size_of::<u64>();
/// What every registration asks for (edge-triggered: an event means "retry what is pending").
const INTEREST: u32 = (libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLRDHUP | libc::EPOLLET) as u32;
const READ_EVENTS: u32 =
    (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLERR | libc::EPOLLHUP) as u32;
const WRITE_EVENTS: u32 = (libc::EPOLLOUT | libc::EPOLLERR | libc::EPOLLHUP) as u32;

pub(super) struct Epoll {
    epoll: OwnedFd,
    /// Per-descriptor state, indexed by descriptor number (they are small and dense).
    fds: Vec<FdState>,
    /// Completions not yet reaped.
    ready: Vec<Completion>,
    events: Vec<libc::epoll_event>,
    /// UDP sends queued since the last flush, in submission order.
    sends: VecDeque<QueuedSend>,
    /// The `sendmmsg` vector, rebuilt from `sends` at every flush (capacity kept).
    send_msgs: Vec<libc::mmsghdr>,
    recv: Box<RecvBatch>,
    /// Sender and GRO segment size of each filled UDP buffer, indexed by buffer id (`None`: the
    /// sender's address could not be read).
    received: Vec<Option<(SocketAddr, Option<usize>)>>,
    /// Descriptors with a pending connect (their deadlines are in [`FdState::connect`]).
    connects: Vec<RawFd>,
    /// `epoll_pwait2` (nanosecond timeouts) works here; cleared when the kernel or a seccomp
    /// profile refuses it, and `epoll_wait` (milliseconds, rounded up) serves instead.
    pwait2: bool,
}

/// What is pending on one descriptor (at most one operation of each kind).
#[derive(Default)]
struct FdState {
    /// The registration is known to be in place: made (or refreshed) since the descriptor last
    /// had nothing pending.
    registered: bool,
    /// UDP sends on this descriptor wait for it to become writable.
    send_blocked: bool,
    /// The last TCP receive emptied the socket (it hit EAGAIN, or read less than it asked
    /// for) and no readiness was reported since: the next receive waits for an event instead
    /// of trying a read that would only say EAGAIN.
    read_drained: bool,
    udp_recv: Option<Token>,
    accept: Option<Token>,
    tcp_recv: Option<Token>,
    tcp_send: Option<(Token, *const u8, u32)>,
    connect: Option<PendingConnect>,
    eventfd: Option<(Token, *mut u64)>,
}

impl FdState {
    fn idle(&self) -> bool {
        !self.send_blocked
            && self.udp_recv.is_none()
            && self.accept.is_none()
            && self.tcp_recv.is_none()
            && self.tcp_send.is_none()
            && self.connect.is_none()
            && self.eventfd.is_none()
    }
}

#[derive(Clone, Copy)]
struct PendingConnect {
    token: Token,
    timeout_token: Token,
    deadline: Instant,
}

#[derive(Clone, Copy)]
struct QueuedSend {
    token: Token,
    fd: RawFd,
    msg: *const libc::msghdr,
}

/// The `recvmmsg` vector and what its entries point at, reused by every receive.
struct RecvBatch {
    msgs: [libc::mmsghdr; RECV_BATCH],
    iovs: [libc::iovec; RECV_BATCH],
    names: [libc::sockaddr_storage; RECV_BATCH],
    controls: [[u64; CONTROL_WORDS]; RECV_BATCH],
    bids: [u16; RECV_BATCH],
}

impl std::fmt::Debug for Epoll {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Epoll")
            .field("epoll", &self.epoll)
            .field("ready", &self.ready.len())
            .field("sends", &self.sends.len())
            .field("connects", &self.connects.len())
            .finish_non_exhaustive()
    }
}

fn errno() -> i32 {
    io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

fn completion(token: Token, result: i32) -> Completion {
    Completion {
        token,
        result,
        more: false,
        buffer: None,
    }
}

impl Epoll {
    pub(super) fn new() -> io::Result<Self> {
        // SAFETY: epoll_create1 returns a new descriptor or -1.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor that nothing else owns.
        let epoll = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: all-zero is valid for these plain C structs (null pointers, zero lengths).
        let recv: Box<RecvBatch> = Box::new(unsafe { mem::zeroed() });
        Ok(Self {
            epoll,
            fds: Vec::new(),
            ready: Vec::with_capacity(256),
            events: Vec::with_capacity(EVENTS),
            sends: VecDeque::with_capacity(SEND_BATCH),
            send_msgs: Vec::with_capacity(SEND_BATCH),
            recv,
            received: Vec::new(),
            connects: Vec::new(),
            pwait2: true,
        })
    }

    pub(super) fn push(&mut self, token: Token, op: IoOp, udp: &mut Buffers, tcp: &mut Buffers) {
        if let IoOp::UdpSend { fd, msg } = op {
            self.sends.push_back(QueuedSend { token, fd, msg });
            return;
        }
        if let IoOp::Cancel { fd } = op {
            let cancelled = self.cancel(fd);
            let result = if cancelled > 0 {
                i32::try_from(cancelled).unwrap_or(i32::MAX)
            } else {
                -libc::ENOENT
            };
            self.ready.push(completion(token, result));
            return;
        }
        let fd = op_fd(op);
        let Some(state) = usize::try_from(fd).ok().and_then(|i| self.state(i)) else {
            self.refuse(token, op, -libc::EBADF);
            return;
        };
        // One operation of each kind per descriptor (the shard never submits more); a second
        // one is refused rather than silently replacing the first.
        let busy = match op {
            IoOp::UdpRecv { .. } => state.udp_recv.is_some(),
            IoOp::Accept { .. } => state.accept.is_some(),
            IoOp::TcpRecv { .. } => state.tcp_recv.is_some(),
            IoOp::TcpSend { .. } => state.tcp_send.is_some(),
            IoOp::Connect { .. } => state.connect.is_some(),
            IoOp::ReadEventfd { .. } => state.eventfd.is_some(),
            IoOp::UdpSend { .. } | IoOp::Cancel { .. } => false,
        };
        if busy {
            self.refuse(token, op, -libc::EBUSY);
            return;
        }
        let state = &mut self.fds[fd as usize];
        match op {
            IoOp::UdpRecv { .. } => {
                state.udp_recv = Some(token);
                self.udp_recv(fd, udp);
            }
            IoOp::Accept { .. } => {
                state.accept = Some(token);
                self.accept(fd);
            }
            IoOp::TcpRecv { .. } => {
                state.tcp_recv = Some(token);
                if state.read_drained {
                    // Safe to wait: a registration still in place has reported (or will
                    // report) anything since the drain, and a refreshed one reports the
                    // current readiness.
                    self.register(fd);
                } else {
                    self.tcp_recv(fd, tcp);
                }
            }
            IoOp::TcpSend { buf, len, .. } => {
                state.tcp_send = Some((token, buf, len));
                self.tcp_send(fd);
            }
            IoOp::Connect {
                addr,
                addr_len,
                timeout,
                timeout_token,
                ..
            } => self.connect(fd, token, addr, addr_len, timeout, timeout_token),
            IoOp::ReadEventfd { buf, .. } => {
                // The eventfd is blocking (it is shared with the control thread, so its flags
                // stay as they are): it is read only once epoll reports it readable. Refreshing
                // the registration reports it at once if it already is.
                state.eventfd = Some((token, buf));
                state.registered = false;
                self.register(fd);
            }
            IoOp::UdpSend { .. } | IoOp::Cancel { .. } => {}
        }
        self.settle(fd);
    }

    pub(super) fn reap(
        &mut self,
        out: &mut Vec<Completion>,
        _udp: &mut Buffers,
        _tcp: &mut Buffers,
    ) {
        self.flush_sends();
        if !self.connects.is_empty() {
            self.expire_connects(Instant::now());
        }
        out.append(&mut self.ready);
    }

    pub(super) fn wait(
        &mut self,
        timeout: Option<Duration>,
        udp: &mut Buffers,
        tcp: &mut Buffers,
    ) -> io::Result<()> {
        self.flush_sends();
        let mut timeout = timeout;
        if !self.connects.is_empty() {
            let now = Instant::now();
            self.expire_connects(now);
            let next = self
                .connects
                .iter()
                .filter_map(|&fd| self.fds.get(fd as usize)?.connect)
                .map(|c| c.deadline.saturating_duration_since(now))
                .min();
            timeout = match (timeout, next) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        if !self.ready.is_empty() {
            // Completions are waiting for the shard: only collect what is ready, no sleep.
            timeout = Some(Duration::ZERO);
        }
        let n = match self.epoll_wait(timeout) {
            Ok(n) => n,
            Err(err) if err.raw_os_error() == Some(libc::EINTR) => return Ok(()),
            Err(err) => return Err(err),
        };
        let mut unblocked = false;
        for i in 0..n {
            let event = self.events[i];
            let (fd, flags) = (event.u64 as RawFd, event.events);
            unblocked |= self.on_event(fd, flags, udp, tcp);
        }
        if unblocked {
            self.flush_sends();
        }
        Ok(())
    }

    pub(super) fn received(&self, bid: u16, len: usize) -> Option<Received> {
        let (from, segment_size) = (*self.received.get(usize::from(bid))?)?;
        Some(Received {
            from,
            segment_size,
            payload: 0..len.min(UDP_PAYLOAD_LEN),
        })
    }

    /// Sleeps in the kernel; fills `events` and returns how many there are.
    fn epoll_wait(&mut self, timeout: Option<Duration>) -> io::Result<usize> {
        self.events.clear();
        let events = self.events.as_mut_ptr();
        let epoll = self.epoll.as_raw_fd();
        let rc = loop {
            if self.pwait2 {
                let ts = timeout.map(|t| libc::timespec {
                    tv_sec: t.as_secs().min(i64::MAX as u64) as libc::time_t,
                    tv_nsec: t.subsec_nanos() as libc::c_long,
                });
                let ts_ptr = ts
                    .as_ref()
                    .map_or(ptr::null(), |t| t as *const libc::timespec);
                // SAFETY: `events` has room for EVENTS entries; the timespec outlives the call;
                // no signal mask.
                let rc = unsafe {
                    libc::syscall(
                        libc::SYS_epoll_pwait2,
                        epoll,
                        events,
                        EVENTS as libc::c_int,
                        ts_ptr,
                        ptr::null::<libc::sigset_t>(),
                        0usize,
                    )
                };
                // Kernels before 5.11 lack it; some container seccomp profiles answer EPERM.
                if rc < 0 && matches!(errno(), libc::ENOSYS | libc::EPERM) {
                    self.pwait2 = false;
                    continue;
                }
                break rc as i32;
            }
            let ms = timeout.map_or(-1, |t| {
                // Rounded up: waking early would only spin until the deadline.
                let ms = t.as_nanos().div_ceil(1_000_000);
                i32::try_from(ms).unwrap_or(i32::MAX)
            });
            // SAFETY: `events` has room for EVENTS entries.
            break unsafe { libc::epoll_wait(epoll, events, EVENTS as libc::c_int, ms) };
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = (rc as usize).min(EVENTS);
        // SAFETY: the kernel initialised the first `n` entries.
        unsafe { self.events.set_len(n) };
        Ok(n)
    }

    /// Retries what is pending on `fd` after an event; true if UDP sends it blocked may go on.
    fn on_event(&mut self, fd: RawFd, flags: u32, udp: &mut Buffers, tcp: &mut Buffers) -> bool {
        let Some(state) = self.fds.get_mut(fd as usize) else {
            return false;
        };
        let mut unblocked = false;
        if flags & WRITE_EVENTS != 0 {
            if state.send_blocked {
                state.send_blocked = false;
                unblocked = true;
            }
            if state.connect.is_some() {
                self.connect_ready(fd, flags);
            }
            if self.fds[fd as usize].tcp_send.is_some() {
                self.tcp_send(fd);
            }
        }
        if flags & READ_EVENTS != 0 {
            let state = &mut self.fds[fd as usize];
            state.read_drained = false;
            let (udp_recv, accept, tcp_recv, eventfd) = (
                state.udp_recv.is_some(),
                state.accept.is_some(),
                state.tcp_recv.is_some(),
                state.eventfd.is_some(),
            );
            if udp_recv {
                self.udp_recv(fd, udp);
            }
            if accept {
                self.accept(fd);
            }
            if tcp_recv {
                self.tcp_recv(fd, tcp);
            }
            if eventfd && flags & (libc::EPOLLIN as u32) != 0 {
                self.read_eventfd(fd);
            }
        }
        self.settle(fd);
        unblocked
    }

    /// The state of descriptor `fd`, growing the table as needed.
    fn state(&mut self, fd: usize) -> Option<&mut FdState> {
        // Descriptor numbers are bounded by RLIMIT_NOFILE; refuse absurd ones rather than
        // allocating for them.
        if fd > 1 << 24 {
            return None;
        }
        if fd >= self.fds.len() {
            self.fds.resize_with(fd + 1, FdState::default);
        }
        self.fds.get_mut(fd)
    }

    /// Completes an operation that could not be queued, and its linked timeout if any.
    fn refuse(&mut self, token: Token, op: IoOp, result: i32) {
        self.ready.push(completion(token, result));
        if let IoOp::Connect { timeout_token, .. } = op {
            self.ready.push(completion(timeout_token, -libc::ECANCELED));
        }
    }

    /// Forgets a descriptor's registration once nothing is pending on it: the shard may close
    /// it now and its number may come back as another file.
    fn settle(&mut self, fd: RawFd) {
        if let Some(state) = self.fds.get_mut(fd as usize)
            && state.idle()
        {
            state.registered = false;
        }
    }

    /// Makes sure epoll watches `fd`, for an operation that has to wait. On failure (a closed
    /// descriptor, or a file epoll cannot watch) everything pending on it fails with the error.
    fn register(&mut self, fd: RawFd) {
        let Some(state) = self.fds.get_mut(fd as usize) else {
            return;
        };
        if state.registered {
            return;
        }
        let mut event = libc::epoll_event {
            events: INTEREST,
            u64: fd as u64,
        };
        let epoll = self.epoll.as_raw_fd();
        // SAFETY: plain epoll_ctl calls with a valid event.
        let mut rc = unsafe { libc::epoll_ctl(epoll, libc::EPOLL_CTL_MOD, fd, &mut event) };
        if rc < 0 && errno() == libc::ENOENT {
            // SAFETY: as above.
            rc = unsafe { libc::epoll_ctl(epoll, libc::EPOLL_CTL_ADD, fd, &mut event) };
        }
        if rc == 0 {
            state.registered = true;
        } else {
            let err = errno();
            self.fail_all(fd, -err);
        }
    }

    /// Completes every pending operation on `fd` with `result`; returns how many there were.
    fn fail_all(&mut self, fd: RawFd, result: i32) -> usize {
        let mut count = 0;
        if let Some(state) = self.fds.get_mut(fd as usize) {
            let tokens = [
                state.udp_recv.take(),
                state.accept.take(),
                state.tcp_recv.take(),
                state.tcp_send.take().map(|(token, ..)| token),
                state.eventfd.take().map(|(token, _)| token),
            ];
            for token in tokens.into_iter().flatten() {
                self.ready.push(completion(token, result));
                count += 1;
            }
            if let Some(connect) = state.connect.take() {
                self.ready.push(completion(connect.token, result));
                self.ready
                    .push(completion(connect.timeout_token, -libc::ECANCELED));
                self.connects.retain(|&c| c != fd);
                count += 1;
            }
            state.send_blocked = false;
        }
        let before = self.sends.len();
        let ready = &mut self.ready;
        self.sends.retain(|send| {
            if send.fd == fd {
                ready.push(completion(send.token, result));
                false
            } else {
                true
            }
        });
        count += before - self.sends.len();
        self.settle(fd);
        count
    }

    /// `IoOp::Cancel`: every pending operation on `fd` completes with `-ECANCELED`.
    fn cancel(&mut self, fd: RawFd) -> usize {
        self.fail_all(fd, -libc::ECANCELED)
    }

    /// The multishot UDP receive: datagrams into free pool buffers until the socket is drained
    /// (stays armed) or the pool is empty (ends with `-ENOBUFS`, as a buffer ring would).
    fn udp_recv(&mut self, fd: RawFd, udp: &mut Buffers) {
        let Some(token) = self.fds.get(fd as usize).and_then(|s| s.udp_recv) else {
            return;
        };
        loop {
            let wanted = udp.available().min(RECV_BATCH);
            if wanted == 0 {
                self.fds[fd as usize].udp_recv = None;
                self.ready.push(completion(token, -libc::ENOBUFS));
                return;
            }
            let batch = &mut *self.recv;
            let mut n = 0;
            while n < wanted {
                let Some(bid) = udp.take() else { break };
                batch.bids[n] = bid;
                batch.iovs[n] = libc::iovec {
                    iov_base: udp.buffer_ptr(bid).cast(),
                    iov_len: udp.buffer_size(),
                };
                let hdr = &mut batch.msgs[n].msg_hdr;
                hdr.msg_name = (&mut batch.names[n] as *mut libc::sockaddr_storage).cast();
                hdr.msg_namelen = NAME_LEN as libc::socklen_t;
                hdr.msg_iov = &mut batch.iovs[n];
                hdr.msg_iovlen = 1;
                hdr.msg_control = batch.controls[n].as_mut_ptr().cast();
                hdr.msg_controllen = CONTROL_LEN as _;
                hdr.msg_flags = 0;
                batch.msgs[n].msg_len = 0;
                n += 1;
            }
            // SAFETY: the first `n` entries point at this batch's names and controls and at
            // pool buffers taken above, all valid for the call.
            let rc = unsafe {
                libc::recvmmsg(
                    fd,
                    batch.msgs.as_mut_ptr(),
                    n as libc::c_uint,
                    libc::MSG_DONTWAIT,
                    ptr::null_mut(),
                )
            };
            let err = if rc < 0 { errno() } else { 0 };
            let got = if rc < 0 { 0 } else { (rc as usize).min(n) };
            for i in 0..got {
                let msg = &batch.msgs[i];
                let bid = batch.bids[i];
                if msg.msg_hdr.msg_flags & (libc::MSG_TRUNC | libc::MSG_CTRUNC) != 0 {
                    udp.recycle(bid);
                    continue;
                }
                let name_len = (msg.msg_hdr.msg_namelen as usize).min(NAME_LEN);
                // SAFETY: the kernel filled `name_len` bytes of this plain-data struct.
                let name = unsafe {
                    std::slice::from_raw_parts(
                        (&batch.names[i] as *const libc::sockaddr_storage).cast::<u8>(),
                        name_len,
                    )
                };
                // `msg_controllen` is a size_t with glibc but a socklen_t with musl.
                #[allow(clippy::unnecessary_cast)]
                let control_len = (msg.msg_hdr.msg_controllen as usize).min(CONTROL_LEN);
                // SAFETY: as above, `control_len` bytes of the control buffer.
                let control = unsafe {
                    std::slice::from_raw_parts(batch.controls[i].as_ptr().cast::<u8>(), control_len)
                };
                let meta = sockaddr::read(name).map(|from| (from, udp::gro_segment_size(control)));
                let slot = usize::from(bid);
                if slot >= self.received.len() {
                    self.received.resize(slot + 1, None);
                }
                self.received[slot] = meta;
                self.ready.push(Completion {
                    token,
                    result: i32::try_from(msg.msg_len).unwrap_or(i32::MAX),
                    more: true,
                    buffer: Some(bid),
                });
            }
            for i in (got..n).rev() {
                udp.recycle(batch.bids[i]);
            }
            if rc < 0 {
                match err {
                    libc::EINTR => continue,
                    libc::EAGAIN => {}
                    err => {
                        self.fds[fd as usize].udp_recv = None;
                        self.ready.push(completion(token, -err));
                        return;
                    }
                }
            }
            if got < n {
                // Drained (a short batch means the kernel hit an empty queue): wait for more.
                self.register(fd);
                return;
            }
        }
    }

    /// The multishot accept: every pending connection, until the backlog is empty.
    fn accept(&mut self, fd: RawFd) {
        let Some(token) = self.fds.get(fd as usize).and_then(|s| s.accept) else {
            return;
        };
        loop {
            // SAFETY: accept4 without an address buffer.
            let rc = unsafe {
                libc::accept4(
                    fd,
                    ptr::null_mut(),
                    ptr::null_mut(),
                    libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                )
            };
            if rc >= 0 {
                self.ready.push(Completion {
                    token,
                    result: rc,
                    more: true,
                    buffer: None,
                });
                continue;
            }
            match errno() {
                libc::EINTR => {}
                libc::EAGAIN => {
                    self.register(fd);
                    return;
                }
                err => {
                    // Like a multishot accept on io_uring: an error ends it.
                    self.fds[fd as usize].accept = None;
                    self.ready.push(completion(token, -err));
                    return;
                }
            }
        }
    }

    /// One TCP receive. A buffer is taken only to read data that is there, so idle connections
    /// hold none.
    fn tcp_recv(&mut self, fd: RawFd, tcp: &mut Buffers) {
        let Some(token) = self.fds.get(fd as usize).and_then(|s| s.tcp_recv) else {
            return;
        };
        let Some(bid) = tcp.take() else {
            self.fds[fd as usize].tcp_recv = None;
            self.ready.push(completion(token, -libc::ENOBUFS));
            return;
        };
        loop {
            // SAFETY: the buffer is ours until recycled or handed out with the completion.
            let rc = unsafe {
                libc::recv(
                    fd,
                    tcp.buffer_ptr(bid).cast(),
                    tcp.buffer_size(),
                    libc::MSG_DONTWAIT,
                )
            };
            if rc >= 0 {
                let state = &mut self.fds[fd as usize];
                state.tcp_recv = None;
                state.read_drained = rc > 0 && (rc as usize) < tcp.buffer_size();
                self.ready.push(Completion {
                    token,
                    result: i32::try_from(rc).unwrap_or(i32::MAX),
                    more: false,
                    buffer: Some(bid),
                });
                return;
            }
            match errno() {
                libc::EINTR => {}
                libc::EAGAIN => {
                    tcp.recycle(bid);
                    self.fds[fd as usize].read_drained = true;
                    self.register(fd);
                    return;
                }
                err => {
                    tcp.recycle(bid);
                    self.fds[fd as usize].tcp_recv = None;
                    self.ready.push(completion(token, -err));
                    return;
                }
            }
        }
    }

    /// One TCP send; a partial count completes as it is.
    fn tcp_send(&mut self, fd: RawFd) {
        let Some((token, buf, len)) = self.fds.get(fd as usize).and_then(|s| s.tcp_send) else {
            return;
        };
        loop {
            // SAFETY: the shard keeps `buf[..len]` valid until the completion (I/O contract).
            let rc = unsafe {
                libc::send(
                    fd,
                    buf.cast(),
                    len as usize,
                    libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
                )
            };
            let result = if rc >= 0 {
                i32::try_from(rc).unwrap_or(i32::MAX)
            } else {
                match errno() {
                    libc::EINTR => continue,
                    libc::EAGAIN => {
                        self.register(fd);
                        return;
                    }
                    err => -err,
                }
            };
            self.fds[fd as usize].tcp_send = None;
            self.ready.push(completion(token, result));
            return;
        }
    }

    fn connect(
        &mut self,
        fd: RawFd,
        token: Token,
        addr: *const libc::sockaddr,
        addr_len: libc::socklen_t,
        timeout: Duration,
        timeout_token: Token,
    ) {
        // SAFETY: the shard keeps the address valid until the completion (I/O contract).
        let rc = unsafe { libc::connect(fd, addr, addr_len) };
        let result = if rc == 0 {
            0
        } else {
            match errno() {
                // EINTR: the connection goes on in the background, as for EINPROGRESS.
                libc::EINPROGRESS | libc::EINTR => {
                    self.fds[fd as usize].connect = Some(PendingConnect {
                        token,
                        timeout_token,
                        deadline: Instant::now() + timeout,
                    });
                    self.connects.push(fd);
                    self.register(fd);
                    return;
                }
                err => -err,
            }
        };
        self.ready.push(completion(token, result));
        self.ready.push(completion(timeout_token, -libc::ECANCELED));
    }

    /// A pending connect's descriptor reported progress: SO_ERROR says how it ended.
    fn connect_ready(&mut self, fd: RawFd, flags: u32) {
        let mut error: libc::c_int = 0;
        let mut len = mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: getsockopt into a correctly sized int.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_ERROR,
                (&mut error as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        let result = if rc < 0 {
            -errno()
        } else if error != 0 {
            -error
        } else if flags & (libc::EPOLLOUT as u32) != 0 {
            0
        } else {
            // Not connected yet and no error: keep waiting.
            return;
        };
        self.finish_connect(fd, result, -libc::ECANCELED);
    }

    fn finish_connect(&mut self, fd: RawFd, result: i32, timeout_result: i32) {
        let Some(connect) = self.fds.get_mut(fd as usize).and_then(|s| s.connect.take()) else {
            return;
        };
        if let Some(i) = self.connects.iter().position(|&c| c == fd) {
            self.connects.swap_remove(i);
        }
        self.ready.push(completion(connect.token, result));
        self.ready
            .push(completion(connect.timeout_token, timeout_result));
    }

    /// Connects past their deadline complete with `-ECANCELED`, their timeouts with `-ETIME`.
    fn expire_connects(&mut self, now: Instant) {
        let mut i = 0;
        while i < self.connects.len() {
            let fd = self.connects[i];
            let expired = self
                .fds
                .get(fd as usize)
                .and_then(|s| s.connect)
                .is_none_or(|c| c.deadline <= now);
            if expired {
                // `finish_connect` removes the entry (swap_remove): look at index `i` again.
                if self.fds.get(fd as usize).and_then(|s| s.connect).is_some() {
                    self.finish_connect(fd, -libc::ECANCELED, -libc::ETIME);
                    self.settle(fd);
                } else {
                    self.connects.swap_remove(i);
                }
            } else {
                i += 1;
            }
        }
    }

    /// Reads the eventfd, which epoll has just reported readable.
    fn read_eventfd(&mut self, fd: RawFd) {
        let Some((token, buf)) = self.fds.get(fd as usize).and_then(|s| s.eventfd) else {
            return;
        };
        loop {
            // SAFETY: the shard keeps the u64 valid until the completion (I/O contract).
            let rc = unsafe { libc::read(fd, buf.cast(), 8) };
            let result = if rc >= 0 {
                rc as i32
            } else {
                match errno() {
                    libc::EINTR => continue,
                    // Someone else drained it: wait for the next write (still registered).
                    libc::EAGAIN => return,
                    err => -err,
                }
            };
            self.fds[fd as usize].eventfd = None;
            self.ready.push(completion(token, result));
            return;
        }
    }

    /// Sends the queued UDP messages, as many per `sendmmsg` as go to the same descriptor in a
    /// row. A descriptor whose send buffer is full holds the queue (in order) until it is
    /// writable again.
    fn flush_sends(&mut self) {
        while let Some(&first) = self.sends.front() {
            let fd = first.fd;
            if self
                .fds
                .get(fd as usize)
                .is_some_and(|state| state.send_blocked)
            {
                return;
            }
            self.send_msgs.clear();
            for send in self
                .sends
                .iter()
                .take_while(|send| send.fd == fd)
                .take(SEND_BATCH)
            {
                self.send_msgs.push(libc::mmsghdr {
                    // SAFETY: the shard keeps the header (and what it points at) valid until
                    // the completion (I/O contract).
                    msg_hdr: unsafe { *send.msg },
                    msg_len: 0,
                });
            }
            // SAFETY: `send_msgs` holds copies of valid headers.
            let rc = unsafe {
                libc::sendmmsg(
                    fd,
                    self.send_msgs.as_mut_ptr(),
                    self.send_msgs.len() as libc::c_uint,
                    libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                )
            };
            if rc > 0 {
                let sent = (rc as usize).min(self.send_msgs.len());
                for i in 0..sent {
                    let Some(send) = self.sends.pop_front() else {
                        break;
                    };
                    let bytes = i32::try_from(self.send_msgs[i].msg_len).unwrap_or(i32::MAX);
                    self.ready.push(completion(send.token, bytes));
                }
                continue;
            }
            match if rc == 0 { libc::EAGAIN } else { errno() } {
                libc::EINTR => {}
                libc::EAGAIN => {
                    let Some(state) = usize::try_from(fd).ok().and_then(|i| self.state(i)) else {
                        return;
                    };
                    state.send_blocked = true;
                    self.register(fd);
                    if self.fds[fd as usize].send_blocked {
                        return;
                    }
                    // Registration failed: the queued sends on `fd` have failed; go on.
                }
                err => {
                    // The first message failed (sendmmsg reports an error only when nothing
                    // was sent); the rest are tried again.
                    if let Some(send) = self.sends.pop_front() {
                        self.ready.push(completion(send.token, -err));
                    }
                }
            }
        }
    }
}

/// The descriptor an operation works on.
fn op_fd(op: IoOp) -> RawFd {
    match op {
        IoOp::UdpRecv { fd }
        | IoOp::UdpSend { fd, .. }
        | IoOp::Accept { fd }
        | IoOp::TcpRecv { fd }
        | IoOp::TcpSend { fd, .. }
        | IoOp::Connect { fd, .. }
        | IoOp::Cancel { fd }
        | IoOp::ReadEventfd { fd, .. } => fd,
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::{Shutdown, TcpListener, TcpStream, UdpSocket};

    use socket2::{Domain, Socket, Type};

    use super::*;
    use crate::dataplane::io::{BackendKind, Io, Op};
    use crate::dataplane::tcp;
    use crate::dataplane::udp::SendSlot;

    const GENERATION: u32 = 7;

    fn new_io() -> Io {
        Io::new(BackendKind::Epoll).expect("the epoll backend starts")
    }

    fn token(op: Op, index: usize) -> Token {
        Token::new(op, index, GENERATION)
    }

    fn localhost() -> SocketAddr {
        "127.0.0.1:0".parse().unwrap()
    }

    /// Waits and reaps until `done` holds for the completions so far (bounded, for liveness).
    fn run_until(io: &mut Io, out: &mut Vec<Completion>, done: impl Fn(&[Completion]) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            io.reap(out);
            if done(out) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "gave up waiting; so far: {out:?}"
            );
            io.wait(Some(Duration::from_millis(50))).expect("wait");
        }
    }

    fn count(out: &[Completion], op: Op) -> usize {
        out.iter().filter(|c| c.token.op == op).count()
    }

    fn only(out: &[Completion], op: Op) -> Completion {
        let found: Vec<&Completion> = out.iter().filter(|c| c.token.op == op).collect();
        assert_eq!(found.len(), 1, "one {op:?} completion in {out:?}");
        *found[0]
    }

    /// The datagrams in UDP receive completions (GRO batches split), recycling their buffers.
    fn datagrams(io: &mut Io, out: &[Completion]) -> Vec<(SocketAddr, Vec<u8>)> {
        let mut datagrams = Vec::new();
        for c in out.iter().filter(|c| c.token.op == Op::UdpRecv) {
            assert!(c.more, "the receive stays armed: {c:?}");
            let bid = c.buffer.expect("a receive names its buffer");
            let (received, buffer) = io
                .udp_received(bid, c.result as usize)
                .expect("a well-formed receive");
            let payload = &buffer[received.payload.clone()];
            let segment = received.segment_size.unwrap_or(payload.len()).max(1);
            for datagram in payload.chunks(segment) {
                datagrams.push((received.from, datagram.to_vec()));
            }
            io.udp_bufs.recycle(bid);
        }
        datagrams
    }

    fn sockaddr_of(addr: SocketAddr) -> Box<(libc::sockaddr_storage, libc::socklen_t)> {
        // SAFETY: all-zero is a valid sockaddr_storage.
        let mut storage = Box::new((unsafe { mem::zeroed::<libc::sockaddr_storage>() }, 0));
        storage.1 = sockaddr::write(addr, &mut storage.0);
        storage
    }

    fn connect_op(
        fd: &OwnedFd,
        addr: &(libc::sockaddr_storage, libc::socklen_t),
        timeout: Duration,
    ) -> IoOp {
        IoOp::Connect {
            fd: fd.as_raw_fd(),
            addr: (&addr.0 as *const libc::sockaddr_storage).cast(),
            addr_len: addr.1,
            timeout,
            timeout_token: token(Op::ConnectTimeout, 0),
        }
    }

    /// Accepts one connection through the backend.
    fn accept_one(io: &mut Io, listener: &OwnedFd) -> OwnedFd {
        let mut out = Vec::new();
        let fd = listener.as_raw_fd();
        io.push(token(Op::Accept, 0), IoOp::Accept { fd });
        run_until(io, &mut out, |c| count(c, Op::Accept) > 0);
        let accepted = only(&out, Op::Accept);
        assert!(accepted.more && accepted.result >= 0, "{accepted:?}");
        io.push(token(Op::Cancel, 0), IoOp::Cancel { fd });
        out.clear();
        io.reap(&mut out);
        assert_eq!(only(&out, Op::Accept).result, -libc::ECANCELED);
        // SAFETY: a new descriptor from accept4, owned by nobody else.
        unsafe { OwnedFd::from_raw_fd(accepted.result) }
    }

    #[test]
    fn udp_datagrams_both_ways_with_a_gso_batch() {
        let mut io = new_io();
        let sock = udp::bind(localhost(), true).unwrap();
        let local = tcp::local_addr(&sock).unwrap();
        let peer = UdpSocket::bind(localhost()).unwrap();
        peer.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let peer_addr = peer.local_addr().unwrap();
        for i in 0..5u8 {
            peer.send_to(&[i; 100], local).unwrap();
        }
        let fd = sock.as_raw_fd();
        io.push(token(Op::UdpRecv, 0), IoOp::UdpRecv { fd });
        let mut out = Vec::new();
        run_until(&mut io, &mut out, |c| count(c, Op::UdpRecv) >= 5);
        let got = datagrams(&mut io, &out);
        let expected: Vec<(SocketAddr, Vec<u8>)> =
            (0..5u8).map(|i| (peer_addr, vec![i; 100])).collect();
        assert_eq!(got, expected);
        assert_eq!(
            io.udp_bufs.available(),
            usize::from(super::super::UDP_BUFFERS)
        );

        // Still armed: a later datagram arrives through the same receive.
        peer.send_to(b"later", local).unwrap();
        out.clear();
        run_until(&mut io, &mut out, |c| count(c, Op::UdpRecv) >= 1);
        assert_eq!(datagrams(&mut io, &out), [(peer_addr, b"later".to_vec())]);

        // Sends: a GSO batch of three datagrams and a plain one, in one flush.
        let mut batch = SendSlot::new(64);
        batch.buf[..10].copy_from_slice(b"aaaabbbbcc");
        let msg = batch.prepare(peer_addr, 10, Some(4), true);
        io.push(token(Op::UdpSend, 1), IoOp::UdpSend { fd, msg });
        let mut single = SendSlot::new(64);
        single.buf[..3].copy_from_slice(b"xyz");
        let msg = single.prepare(peer_addr, 3, None, true);
        io.push(token(Op::UdpSend, 2), IoOp::UdpSend { fd, msg });
        out.clear();
        run_until(&mut io, &mut out, |c| count(c, Op::UdpSend) == 2);
        let results: Vec<(u32, i32)> = out.iter().map(|c| (c.token.index, c.result)).collect();
        assert_eq!(results, [(1, 10), (2, 3)]);
        let mut buf = [0u8; 64];
        for expected in [&b"aaaa"[..], b"bbbb", b"cc", b"xyz"] {
            let (n, from) = peer.recv_from(&mut buf).unwrap();
            assert_eq!((&buf[..n], from), (expected, local));
        }
    }

    #[test]
    fn a_gso_batch_to_a_gro_socket_splits_into_its_datagrams() {
        let mut io = new_io();
        let tx = udp::bind(localhost(), true).unwrap();
        let rx = udp::bind(localhost(), true).unwrap();
        let (tx_addr, rx_addr) = (tcp::local_addr(&tx).unwrap(), tcp::local_addr(&rx).unwrap());
        io.push(token(Op::UdpRecv, 0), IoOp::UdpRecv { fd: rx.as_raw_fd() });
        let mut slot = SendSlot::new(4096);
        let payload: Vec<u8> = (0..3500u32).map(|i| (i / 1000) as u8 + 1).collect();
        slot.buf[..3500].copy_from_slice(&payload);
        let msg = slot.prepare(rx_addr, 3500, Some(1000), true);
        io.push(
            token(Op::UdpSend, 0),
            IoOp::UdpSend {
                fd: tx.as_raw_fd(),
                msg,
            },
        );
        let mut out = Vec::new();
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while got.len() < 4 {
            assert!(Instant::now() < deadline, "datagrams so far: {}", got.len());
            out.clear();
            io.wait(Some(Duration::from_millis(50))).unwrap();
            io.reap(&mut out);
            if let Some(send) = out.iter().find(|c| c.token.op == Op::UdpSend) {
                assert_eq!(send.result, 3500);
            }
            let coalesced = out
                .iter()
                .filter(|c| c.token.op == Op::UdpRecv)
                .any(|c| c.result > 1000);
            if coalesced {
                eprintln!("the kernel coalesced the batch (GRO on loopback)");
            }
            got.extend(datagrams(&mut io, &out));
        }
        let expected: Vec<(SocketAddr, Vec<u8>)> = payload
            .chunks(1000)
            .map(|d| (tx_addr, d.to_vec()))
            .collect();
        assert_eq!(got, expected);
    }

    #[test]
    fn receives_end_with_enobufs_when_the_pools_are_empty() {
        let mut io = new_io();
        let sock = udp::bind(localhost(), false).unwrap();
        let local = tcp::local_addr(&sock).unwrap();
        let peer = UdpSocket::bind(localhost()).unwrap();
        peer.send_to(b"one", local).unwrap();
        let taken: Vec<u16> = std::iter::from_fn(|| io.udp_bufs.take()).collect();
        let fd = sock.as_raw_fd();
        io.push(token(Op::UdpRecv, 0), IoOp::UdpRecv { fd });
        let mut out = Vec::new();
        io.reap(&mut out);
        assert_eq!(
            out,
            [Completion {
                token: token(Op::UdpRecv, 0),
                result: -libc::ENOBUFS,
                more: false,
                buffer: None
            }]
        );
        // Re-armed once buffers are back, the datagram is still there.
        for bid in taken {
            io.udp_bufs.recycle(bid);
        }
        io.push(token(Op::UdpRecv, 0), IoOp::UdpRecv { fd });
        out.clear();
        run_until(&mut io, &mut out, |c| !c.is_empty());
        assert_eq!(
            datagrams(&mut io, &out),
            [(peer.local_addr().unwrap(), b"one".to_vec())]
        );

        // TCP: a receive with no free buffer fails at once.
        let listener = tcp::listen(localhost()).unwrap();
        let _client = TcpStream::connect(tcp::local_addr(&listener).unwrap()).unwrap();
        let conn = accept_one(&mut io, &listener);
        let taken: Vec<u16> = std::iter::from_fn(|| io.tcp_bufs.take()).collect();
        let fd = conn.as_raw_fd();
        io.push(token(Op::TcpRecv, 1), IoOp::TcpRecv { fd });
        out.clear();
        io.reap(&mut out);
        assert_eq!(only(&out, Op::TcpRecv).result, -libc::ENOBUFS);
        for bid in taken {
            io.tcp_bufs.recycle(bid);
        }
    }

    #[test]
    fn accept_then_tcp_receive_send_and_end_of_stream() {
        let mut io = new_io();
        let listener = tcp::listen(localhost()).unwrap();
        let addr = tcp::local_addr(&listener).unwrap();
        let lfd = listener.as_raw_fd();
        io.push(token(Op::Accept, 0), IoOp::Accept { fd: lfd });
        let mut out = Vec::new();
        io.wait(Some(Duration::ZERO)).unwrap();
        io.reap(&mut out);
        assert!(out.is_empty(), "nothing to accept yet: {out:?}");
        let mut clients: Vec<TcpStream> =
            (0..2).map(|_| TcpStream::connect(addr).unwrap()).collect();
        run_until(&mut io, &mut out, |c| count(c, Op::Accept) == 2);
        assert!(out.iter().all(|c| c.more && c.result >= 0), "{out:?}");
        // SAFETY: new descriptors from accept4.
        let conns: Vec<OwnedFd> = out
            .iter()
            .map(|c| unsafe { OwnedFd::from_raw_fd(c.result) })
            .collect();
        let (conn, client) = (&conns[0], &mut clients[0]);
        client
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let fd = conn.as_raw_fd();

        // An idle receive holds no buffer.
        io.push(token(Op::TcpRecv, 1), IoOp::TcpRecv { fd });
        out.clear();
        io.wait(Some(Duration::ZERO)).unwrap();
        io.reap(&mut out);
        assert!(out.is_empty(), "{out:?}");
        assert_eq!(
            io.tcp_bufs.available(),
            usize::from(super::super::TCP_BUFFERS)
        );

        client.write_all(b"hello").unwrap();
        run_until(&mut io, &mut out, |c| !c.is_empty());
        let recv = only(&out, Op::TcpRecv);
        assert_eq!((recv.result, recv.more), (5, false));
        let bid = recv.buffer.unwrap();
        assert_eq!(io.tcp_bufs.buffer_mut(bid, 5), b"hello");
        io.tcp_bufs.recycle(bid);

        let data = b"world".to_vec();
        let op = IoOp::TcpSend {
            fd,
            buf: data.as_ptr(),
            len: data.len() as u32,
        };
        io.push(token(Op::TcpSend, 1), op);
        out.clear();
        run_until(&mut io, &mut out, |c| !c.is_empty());
        assert_eq!(only(&out, Op::TcpSend).result, 5);
        let mut buf = [0u8; 5];
        client.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"world");

        io.push(token(Op::TcpRecv, 1), IoOp::TcpRecv { fd });
        client.shutdown(Shutdown::Write).unwrap();
        out.clear();
        run_until(&mut io, &mut out, |c| !c.is_empty());
        let end = only(&out, Op::TcpRecv);
        assert_eq!(end.result, 0);
        if let Some(bid) = end.buffer {
            io.tcp_bufs.recycle(bid);
        }
        assert_eq!(
            io.tcp_bufs.available(),
            usize::from(super::super::TCP_BUFFERS)
        );

        // The accept is still armed until cancelled.
        io.push(token(Op::Cancel, 0), IoOp::Cancel { fd: lfd });
        out.clear();
        io.reap(&mut out);
        assert_eq!(only(&out, Op::Accept).result, -libc::ECANCELED);
        assert_eq!(only(&out, Op::Cancel).result, 1);
    }

    #[test]
    fn connects_succeed_or_are_refused() {
        let mut io = new_io();
        let listener = TcpListener::bind(localhost()).unwrap();
        let open = sockaddr_of(listener.local_addr().unwrap());
        let closed_addr = TcpListener::bind(localhost())
            .unwrap()
            .local_addr()
            .unwrap();
        let closed = sockaddr_of(closed_addr);
        for (addr, expected) in [(&open, 0), (&closed, -libc::ECONNREFUSED)] {
            let fd = tcp::socket_for(closed_addr).unwrap();
            io.push(
                token(Op::Connect, 0),
                connect_op(&fd, addr, Duration::from_secs(10)),
            );
            let mut out = Vec::new();
            run_until(&mut io, &mut out, |c| c.len() == 2);
            assert_eq!(only(&out, Op::Connect).result, expected);
            assert_eq!(only(&out, Op::ConnectTimeout).result, -libc::ECANCELED);
        }
    }

    /// A listener whose accept queue is full drops new SYNs, so a connect to it stays pending.
    fn full_listener() -> (Socket, Vec<TcpStream>) {
        let listener = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        listener.bind(&localhost().into()).unwrap();
        listener.listen(0).unwrap();
        let addr = listener.local_addr().unwrap().as_socket().unwrap();
        // A backlog of 0 still queues one connection; with it there, the queue is full.
        let filler = TcpStream::connect(addr).unwrap();
        (listener, vec![filler])
    }

    #[test]
    fn a_connect_past_its_deadline_times_out() {
        let mut io = new_io();
        let (listener, _fillers) = full_listener();
        let addr = sockaddr_of(listener.local_addr().unwrap().as_socket().unwrap());
        let fd = tcp::socket_for(localhost()).unwrap();
        io.push(
            token(Op::Connect, 0),
            connect_op(&fd, &addr, Duration::from_millis(200)),
        );
        let mut out = Vec::new();
        run_until(&mut io, &mut out, |c| c.len() == 2);
        assert_eq!(only(&out, Op::Connect).result, -libc::ECANCELED);
        assert_eq!(only(&out, Op::ConnectTimeout).result, -libc::ETIME);
    }

    #[test]
    fn cancel_completes_pending_operations() {
        let mut io = new_io();
        let (full, _fillers) = full_listener();
        let addr = sockaddr_of(full.local_addr().unwrap().as_socket().unwrap());
        let fd = tcp::socket_for(localhost()).unwrap();
        io.push(
            token(Op::Connect, 0),
            connect_op(&fd, &addr, Duration::from_secs(10)),
        );
        let mut out = Vec::new();
        io.wait(Some(Duration::ZERO)).unwrap();
        io.reap(&mut out);
        assert!(out.is_empty(), "the connect is pending: {out:?}");
        io.push(token(Op::Cancel, 0), IoOp::Cancel { fd: fd.as_raw_fd() });
        io.reap(&mut out);
        assert_eq!(only(&out, Op::Connect).result, -libc::ECANCELED);
        assert_eq!(only(&out, Op::ConnectTimeout).result, -libc::ECANCELED);
        assert_eq!(only(&out, Op::Cancel).result, 1);

        // A pending receive.
        let listener = tcp::listen(localhost()).unwrap();
        let _client = TcpStream::connect(tcp::local_addr(&listener).unwrap()).unwrap();
        let conn = accept_one(&mut io, &listener);
        let fd = conn.as_raw_fd();
        io.push(token(Op::TcpRecv, 1), IoOp::TcpRecv { fd });
        io.push(token(Op::Cancel, 1), IoOp::Cancel { fd });
        io.push(token(Op::Cancel, 2), IoOp::Cancel { fd });
        out.clear();
        io.reap(&mut out);
        let results: Vec<(Op, u32, i32, bool, Option<u16>)> = out
            .iter()
            .map(|c| (c.token.op, c.token.index, c.result, c.more, c.buffer))
            .collect();
        assert_eq!(
            results,
            [
                (Op::TcpRecv, 1, -libc::ECANCELED, false, None),
                (Op::Cancel, 1, 1, false, None),
                (Op::Cancel, 2, -libc::ENOENT, false, None),
            ]
        );
    }

    #[test]
    fn a_reused_descriptor_number_is_watched_again() {
        let mut io = new_io();
        let listener = tcp::listen(localhost()).unwrap();
        let addr = tcp::local_addr(&listener).unwrap();
        let _first = TcpStream::connect(addr).unwrap();
        let conn = accept_one(&mut io, &listener);
        let fd = conn.as_raw_fd();
        // Registered while a receive waits, then idle again.
        io.push(token(Op::TcpRecv, 1), IoOp::TcpRecv { fd });
        io.push(token(Op::Cancel, 1), IoOp::Cancel { fd });
        let mut out = Vec::new();
        io.reap(&mut out);
        assert_eq!(out.len(), 2);
        // The number now names another connection (dup2 closes the first one's file, which
        // drops its epoll registration).
        let mut second = TcpStream::connect(addr).unwrap();
        let other = accept_one(&mut io, &listener);
        // SAFETY: both descriptors are ours; `fd` stays owned by `conn`.
        assert_eq!(unsafe { libc::dup2(other.as_raw_fd(), fd) }, fd);
        drop(other);
        io.push(token(Op::TcpRecv, 2), IoOp::TcpRecv { fd });
        out.clear();
        io.wait(Some(Duration::ZERO)).unwrap();
        io.reap(&mut out);
        assert!(out.is_empty(), "{out:?}");
        second.write_all(b"again").unwrap();
        run_until(&mut io, &mut out, |c| !c.is_empty());
        let recv = only(&out, Op::TcpRecv);
        assert_eq!(recv.result, 5);
        assert_eq!(io.tcp_bufs.buffer_mut(recv.buffer.unwrap(), 5), b"again");
    }

    #[test]
    fn the_eventfd_is_read_once_written() {
        let mut io = new_io();
        // Blocking, like the shard's: reading it too early would hang this test.
        // SAFETY: eventfd(2) returns a new descriptor or -1.
        let raw = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        assert!(raw >= 0);
        // SAFETY: a fresh descriptor.
        let efd = unsafe { OwnedFd::from_raw_fd(raw) };
        let mut value = Box::new(0u64);
        let op = IoOp::ReadEventfd {
            fd: raw,
            buf: &mut *value,
        };
        io.push(token(Op::Wake, 0), op);
        let mut out = Vec::new();
        io.wait(Some(Duration::from_millis(20))).unwrap();
        io.reap(&mut out);
        assert!(out.is_empty(), "{out:?}");
        let three: u64 = 3;
        // SAFETY: writes 8 bytes from a valid u64.
        let written = unsafe { libc::write(efd.as_raw_fd(), (&three as *const u64).cast(), 8) };
        assert_eq!(written, 8);
        run_until(&mut io, &mut out, |c| !c.is_empty());
        assert_eq!(only(&out, Op::Wake).result, 8);
        assert_eq!(*value, 3);

        // Written while nothing was pending: the next read still sees it.
        // SAFETY: as above.
        unsafe { libc::write(efd.as_raw_fd(), (&three as *const u64).cast(), 8) };
        io.wait(Some(Duration::ZERO)).unwrap();
        let op = IoOp::ReadEventfd {
            fd: raw,
            buf: &mut *value,
        };
        io.push(token(Op::Wake, 0), op);
        out.clear();
        run_until(&mut io, &mut out, |c| !c.is_empty());
        assert_eq!(only(&out, Op::Wake).result, 8);
    }
}
