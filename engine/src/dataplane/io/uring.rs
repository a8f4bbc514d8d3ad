//! The io_uring backend: one ring per shard, multishot UDP receives and accepts, receives that
//! pick their buffer from provided-buffer rings, connects with a linked timeout.

use std::io;
use std::mem;
use std::time::Duration;

use io_uring::types::{CancelBuilder, Fd, RecvMsgOut, SubmitArgs, Timespec};
use io_uring::{IoUring, cqueue, opcode, squeue};

use super::{Buffers, Completion, IoOp, Received, Token};
use crate::dataplane::{sockaddr, udp};

/// Submission queue size. Completions are reaped every loop iteration, and the completion
/// queue is four times this, so bursts of multishot completions do not overflow it.
const RING_ENTRIES: u32 = 1024;
/// Buffer group of the UDP receive ring.
pub(super) const UDP_GROUP: u16 = 0;
/// Buffer group of the TCP receive ring.
pub(super) const TCP_GROUP: u16 = 1;

/// Room reserved in each receive buffer for the sender's address.
const NAME_LEN: usize = mem::size_of::<libc::sockaddr_storage>();
/// Room reserved for control messages (one UDP_GRO int, with slack for others).
const CONTROL_LEN: usize = 64;
/// `struct io_uring_recvmsg_out`: four u32 fields at the start of every multishot receive.
const RECVMSG_OUT_LEN: usize = 16;
/// Bytes at the start of every multishot receive buffer before the payload.
pub(super) const RECV_HEADER_LEN: usize = RECVMSG_OUT_LEN + NAME_LEN + CONTROL_LEN;

pub(super) struct Uring {
    ring: IoUring,
    /// The message header a multishot RecvMsg reads its layout from; it must stay at a fixed
    /// address while the operation is armed, hence the box.
    recv_header: Box<libc::msghdr>,
    /// Connect timeouts: the kernel reads the timespec when the linked timeout is prepared,
    /// and every connect uses the same duration, so one boxed copy per value in use serves.
    timeouts: Vec<(Duration, Box<Timespec>)>,
    /// Completions taken off the queue while making room to submit (see `make_room`); handed
    /// out first by the next `reap`.
    stashed: Vec<Completion>,
}

impl std::fmt::Debug for Uring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Uring").finish_non_exhaustive()
    }
}

impl Uring {
    /// Builds a ring tuned for one thread that both submits and reaps (no kernel-side polling
    /// thread: the shard is already pinned to its own core).
    pub(super) fn new() -> io::Result<Self> {
        let mut builder = IoUring::builder();
        builder
            .setup_single_issuer()
            .setup_coop_taskrun()
            .setup_cqsize(RING_ENTRIES * 4);
        let ring = match builder.build(RING_ENTRIES) {
            Ok(ring) => ring,
            // Kernels before 6.0 lack SINGLE_ISSUER; fall back to a plain ring.
            Err(err) if err.raw_os_error() == Some(libc::EINVAL) => IoUring::builder()
                .setup_cqsize(RING_ENTRIES * 4)
                .build(RING_ENTRIES)?,
            Err(err) => return Err(err),
        };
        // SAFETY: all-zero is a valid msghdr (null pointers, zero lengths).
        let mut recv_header: Box<libc::msghdr> = Box::new(unsafe { mem::zeroed() });
        recv_header.msg_namelen = NAME_LEN as libc::socklen_t;
        recv_header.msg_controllen = CONTROL_LEN;
        Ok(Self {
            ring,
            recv_header,
            timeouts: Vec::new(),
            stashed: Vec::new(),
        })
    }

    /// A provided-buffer ring of this ring.
    pub(super) fn buf_ring(&self, group: u16, count: u16, size: usize) -> io::Result<Buffers> {
        Buffers::ring(&self.ring, group, count, size).map_err(|err| {
            io::Error::new(
                err.kind(),
                format!(
                    "cannot register an io_uring buffer ring of {} KiB (RLIMIT_MEMLOCK?): {err}",
                    usize::from(count) * size / 1024
                ),
            )
        })
    }

    pub(super) fn push(&mut self, token: Token, op: IoOp) {
        let user_data = token.to_user_data();
        let entry = match op {
            IoOp::UdpRecv { fd } => {
                opcode::RecvMsgMulti::new(Fd(fd), &*self.recv_header, UDP_GROUP).build()
            }
            IoOp::UdpSend { fd, msg } => opcode::SendMsg::new(Fd(fd), msg).build(),
            IoOp::Accept { fd } => opcode::AcceptMulti::new(Fd(fd))
                .flags(libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK)
                .build(),
            IoOp::TcpRecv { fd } => {
                // The TCP ring holds TCP_BUFFER_SIZE buffers (see `Io::new`).
                opcode::Recv::new(Fd(fd), std::ptr::null_mut(), super::TCP_BUFFER_SIZE as u32)
                    .buf_group(TCP_GROUP)
                    .build()
                    .flags(squeue::Flags::BUFFER_SELECT)
            }
            IoOp::TcpSend { fd, buf, len } => opcode::Send::new(Fd(fd), buf, len)
                .flags(libc::MSG_NOSIGNAL)
                .build(),
            IoOp::Connect {
                fd,
                addr,
                addr_len,
                timeout,
                timeout_token,
            } => {
                let ts = self.timespec(timeout);
                let connect = opcode::Connect::new(Fd(fd), addr, addr_len)
                    .build()
                    .flags(squeue::Flags::IO_LINK)
                    .user_data(user_data);
                let link = opcode::LinkTimeout::new(ts)
                    .build()
                    .user_data(timeout_token.to_user_data());
                // Linked entries must reach the kernel in the same submission.
                self.make_room(2);
                self.push_entry(connect);
                self.push_entry(link);
                return;
            }
            IoOp::Cancel { fd } => {
                opcode::AsyncCancel2::new(CancelBuilder::fd(Fd(fd)).all()).build()
            }
            IoOp::ReadEventfd { fd, buf } => opcode::Read::new(Fd(fd), buf.cast(), 8).build(),
        };
        self.push_entry(entry.user_data(user_data));
    }

    fn timespec(&mut self, timeout: Duration) -> *const Timespec {
        if let Some((_, ts)) = self.timeouts.iter().find(|(d, _)| *d == timeout) {
            return &**ts;
        }
        let ts = Box::new(
            Timespec::new()
                .sec(timeout.as_secs())
                .nsec(timeout.subsec_nanos()),
        );
        let ptr: *const Timespec = &*ts;
        self.timeouts.push((timeout, ts));
        ptr
    }

    fn room(&mut self) -> usize {
        let sq = self.ring.submission();
        sq.capacity() - sq.len()
    }

    /// Queues a submission, flushing the queue to the kernel first if it is full.
    fn push_entry(&mut self, entry: squeue::Entry) {
        self.make_room(1);
        // SAFETY: every entry's memory is owned by the shard (boxed, or in buffer rings) or by
        // this backend and outlives the operation (see the module contract in `io`).
        // `make_room` returned with at least one free slot.
        if unsafe { self.ring.submission().push(&entry) }.is_err() {
            tracing::error!("io_uring submission queue full after making room");
        }
    }

    /// Submits until the submission queue has `n` free slots. The kernel refuses to take more
    /// (EBUSY) while completions are piling up, so those are moved aside for the next `reap`
    /// rather than waiting for the shard's loop, which is not running while it submits.
    fn make_room(&mut self, n: usize) {
        while self.room() < n {
            match self.ring.submit() {
                Ok(_) => {}
                Err(err) if err.raw_os_error() == Some(libc::EBUSY) => self.stash_completions(),
                Err(err) => {
                    tracing::warn!(%err, "io_uring submit failed; retrying");
                    self.stash_completions();
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
    }

    fn stash_completions(&mut self) {
        let mut stashed = std::mem::take(&mut self.stashed);
        self.take_completions(&mut stashed);
        self.stashed = stashed;
    }

    pub(super) fn reap(&mut self, out: &mut Vec<Completion>) {
        out.append(&mut self.stashed);
        self.take_completions(out);
    }

    fn take_completions(&mut self, out: &mut Vec<Completion>) {
        out.extend(self.ring.completion().filter_map(|c| {
            Some(Completion {
                token: Token::from_user_data(c.user_data())?,
                result: c.result(),
                more: cqueue::more(c.flags()),
                buffer: cqueue::buffer_select(c.flags()),
            })
        }));
    }

    pub(super) fn wait(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        let timeout = if self.stashed.is_empty() {
            timeout
        } else {
            Some(Duration::ZERO)
        };
        let result = match timeout {
            Some(wait) if wait.is_zero() => self.ring.submit(),
            Some(wait) => {
                let ts = Timespec::new()
                    .sec(wait.as_secs())
                    .nsec(wait.subsec_nanos());
                let args = SubmitArgs::new().timespec(&ts);
                self.ring.submitter().submit_with_args(1, &args)
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

    /// Splits a completed multishot receive buffer into the sender, the GRO segment size and
    /// the payload's range inside `buffer`. `None` for a malformed or truncated receive.
    pub(super) fn parse_received(&self, buffer: &[u8]) -> Option<Received> {
        let out = RecvMsgOut::parse(buffer, &self.recv_header).ok()?;
        if out.is_payload_truncated() || out.is_name_data_truncated() {
            return None;
        }
        let from = sockaddr::read(out.name_data())?;
        let segment_size = udp::gro_segment_size(out.control_data());
        let payload = out.payload_data();
        let start = payload.as_ptr() as usize - buffer.as_ptr() as usize;
        Some(Received {
            from,
            segment_size,
            payload: start..start + payload.len(),
        })
    }
}
