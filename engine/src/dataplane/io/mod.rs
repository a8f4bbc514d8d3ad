//! The shard's I/O backends behind one completion-style interface.
//!
//! A shard submits operations ([`IoOp`]) tagged with a [`Token`] and later reaps
//! [`Completion`]s carrying the same token, whichever backend runs underneath:
//!
//! * [`uring`]: io_uring (multishot receives on provided-buffer rings, GSO sends, linked
//!   connect timeouts). The default wherever the kernel allows it.
//! * [`epoll`]: readiness with epoll plus `recvmmsg`/`sendmmsg`, for hosts where io_uring is
//!   missing or forbidden (`kernel.io_uring_disabled`, container seccomp profiles). It performs
//!   each operation with plain syscalls once the descriptor is ready and reports the outcome as
//!   a completion with the result io_uring would have given, so the shard's logic is the same
//!   for both.
//!
//! Contract for every pointer inside an [`IoOp`]: the memory it points at is owned by the shard
//! and stays valid (and, for buffers the kernel writes, untouched) until the operation's
//! completion has been reaped; with io_uring the kernel may use it until then.

mod buffers;
mod epoll;
mod token;
mod uring;

use std::io;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::time::Duration;

pub(crate) use self::buffers::Buffers;
pub(crate) use self::token::{Op, Token};

/// Buffers of the UDP receive pool: enough for a burst of GRO super-datagrams.
const UDP_BUFFERS: u16 = 64;
/// Buffers of the TCP receive pool, shared by every connection of the shard: only connections
/// with data actually arriving hold one.
const TCP_BUFFERS: u16 = 16;
pub(crate) const TCP_BUFFER_SIZE: usize = 256 * 1024;
/// Largest UDP payload one receive can carry: a GRO super-datagram is at most 64 KiB.
pub(crate) const UDP_PAYLOAD_LEN: usize = 65_536;

/// Which backend a shard runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BackendKind {
    IoUring,
    Epoll,
}

impl BackendKind {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::IoUring => "io_uring",
            Self::Epoll => "epoll",
        }
    }
}

/// One operation for the backend to perform.
#[derive(Debug, Clone, Copy)]
pub(crate) enum IoOp {
    /// Receive datagrams on a UDP socket until cancelled or out of buffers (multishot: one
    /// completion per receive, `more` set while it stays armed; buffers from the UDP pool).
    UdpRecv { fd: RawFd },
    /// Send one message (possibly a GSO batch with a UDP_SEGMENT control message).
    UdpSend { fd: RawFd, msg: *const libc::msghdr },
    /// Accept connections on a listener until cancelled (multishot; the result is the new,
    /// non-blocking, close-on-exec descriptor).
    Accept { fd: RawFd },
    /// One receive on a TCP socket into a buffer of the TCP pool (the completion names it).
    TcpRecv { fd: RawFd },
    /// One send on a TCP socket (MSG_NOSIGNAL); the result may be a partial count.
    TcpSend { fd: RawFd, buf: *const u8, len: u32 },
    /// Connect a non-blocking TCP socket. If it has not completed after `timeout`, it completes
    /// with `-ECANCELED` and `timeout_token` with `-ETIME`; otherwise `timeout_token` completes
    /// with `-ECANCELED`. Either way both tokens complete exactly once.
    Connect {
        fd: RawFd,
        addr: *const libc::sockaddr,
        addr_len: libc::socklen_t,
        timeout: Duration,
        timeout_token: Token,
    },
    /// Cancel every pending operation on `fd`: each completes with `-ECANCELED` (or its result,
    /// if it finished first), and this operation completes too.
    Cancel { fd: RawFd },
    /// Read 8 bytes from an eventfd.
    ReadEventfd { fd: RawFd, buf: *mut u64 },
}

/// One finished operation (or one shot of a multishot one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Completion {
    pub(crate) token: Token,
    /// Bytes or a descriptor on success, `-errno` on failure (io_uring's convention).
    pub(crate) result: i32,
    /// A multishot operation stays armed and will complete again.
    pub(crate) more: bool,
    /// The pool buffer holding the data, for receives.
    pub(crate) buffer: Option<u16>,
}

/// One received UDP payload: possibly several datagrams of `segment_size` bytes each (the last
/// may be shorter) coalesced by GRO.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Received {
    pub(crate) from: SocketAddr,
    pub(crate) segment_size: Option<usize>,
    pub(crate) payload: std::ops::Range<usize>,
}

/// A shard's I/O: the backend and the receive buffer pools it fills.
#[derive(Debug)]
pub(crate) struct Io {
    backend: Backend,
    pub(crate) udp_bufs: Buffers,
    pub(crate) tcp_bufs: Buffers,
}

#[derive(Debug)]
enum Backend {
    Uring(Box<uring::Uring>),
    Epoll(epoll::Epoll),
}

impl Io {
    /// Sets up a backend of `kind`. io_uring fails here (with the kernel's error) when it is
    /// missing, disabled or forbidden, or when its buffer rings cannot be registered.
    pub(crate) fn new(kind: BackendKind) -> io::Result<Self> {
        let udp_size = uring::RECV_HEADER_LEN + UDP_PAYLOAD_LEN;
        Ok(match kind {
            BackendKind::IoUring => {
                let uring = uring::Uring::new()?;
                let udp_bufs = uring.buf_ring(uring::UDP_GROUP, UDP_BUFFERS, udp_size)?;
                let tcp_bufs = uring.buf_ring(uring::TCP_GROUP, TCP_BUFFERS, TCP_BUFFER_SIZE)?;
                Self {
                    backend: Backend::Uring(Box::new(uring)),
                    udp_bufs,
                    tcp_bufs,
                }
            }
            BackendKind::Epoll => Self {
                backend: Backend::Epoll(epoll::Epoll::new()?),
                udp_bufs: Buffers::pool(UDP_BUFFERS, UDP_PAYLOAD_LEN),
                tcp_bufs: Buffers::pool(TCP_BUFFERS, TCP_BUFFER_SIZE),
            },
        })
    }

    /// Bytes a shard's io_uring charges to RLIMIT_MEMLOCK on kernels that account it: the
    /// descriptor rings of its two buffer pools, whole pages each (the buffers themselves are
    /// not pinned; see `checks::memlock_check`).
    pub(crate) fn uring_pinned_bytes() -> u64 {
        let descriptor = 16u64;
        // SAFETY: sysconf has no preconditions.
        let page = u64::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) })
            .ok()
            .filter(|&p| p > 0)
            .unwrap_or(4096);
        [UDP_BUFFERS, TCP_BUFFERS]
            .iter()
            .map(|&n| (u64::from(n) * descriptor).next_multiple_of(page))
            .sum()
    }

    /// Queues an operation (see the module's contract for its pointers).
    pub(crate) fn push(&mut self, token: Token, op: IoOp) {
        match &mut self.backend {
            Backend::Uring(uring) => uring.push(token, op),
            Backend::Epoll(epoll) => epoll.push(token, op, &mut self.udp_bufs, &mut self.tcp_bufs),
        }
    }

    /// Appends every completion that is ready to `out`.
    pub(crate) fn reap(&mut self, out: &mut Vec<Completion>) {
        match &mut self.backend {
            Backend::Uring(uring) => uring.reap(out),
            Backend::Epoll(epoll) => epoll.reap(out, &mut self.udp_bufs, &mut self.tcp_bufs),
        }
    }

    /// Hands queued operations to the kernel and sleeps until a completion is ready or
    /// `timeout` passes (`None`: no limit; zero: do not sleep).
    pub(crate) fn wait(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        match &mut self.backend {
            Backend::Uring(uring) => uring.wait(timeout),
            Backend::Epoll(epoll) => epoll.wait(timeout, &mut self.udp_bufs, &mut self.tcp_bufs),
        }
    }

    /// The sender, GRO segment size and payload of UDP receive buffer `bid` filled with `len`
    /// bytes (as its completion said). `None` for a malformed or truncated receive.
    pub(crate) fn udp_received(&mut self, bid: u16, len: usize) -> Option<(Received, &mut [u8])> {
        let buffer = self.udp_bufs.buffer_mut(bid, len);
        let received = match &self.backend {
            Backend::Uring(uring) => uring.parse_received(buffer)?,
            Backend::Epoll(epoll) => epoll.received(bid, len)?,
        };
        Some((received, buffer))
    }
}
