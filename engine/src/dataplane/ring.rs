//! The shard's io_uring: ring set-up, operation tokens, and provided-buffer rings.
//!
//! Every submitted operation carries a [`Token`] in its `user_data`, saying what completed (the
//! kind of operation and the index of the object it belongs to), so the shard can dispatch a
//! completion without any lookup table of in-flight operations.
//!
//! Provided buffers ([`BufRing`]) let the kernel pick a buffer only when data actually arrives:
//! a thousand idle TCP connections with a receive armed hold no buffer at all, and multishot
//! UDP receives need them by design.

use std::io;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::IoUring;
use io_uring::types::BufRingEntry;

/// Submission queue size. Completions are reaped every loop iteration, and the completion
/// queue is four times this, so bursts of multishot completions do not overflow it.
const RING_ENTRIES: u32 = 1024;

/// Builds a ring tuned for one thread that both submits and reaps (no kernel-side polling
/// thread: the shard is already pinned to its own core).
pub(crate) fn build() -> io::Result<IoUring> {
    let mut builder = IoUring::builder();
    builder
        .setup_single_issuer()
        .setup_coop_taskrun()
        .setup_cqsize(RING_ENTRIES * 4);
    match builder.build(RING_ENTRIES) {
        Ok(ring) => Ok(ring),
        // Kernels before 6.0 lack SINGLE_ISSUER; fall back to a plain ring.
        Err(err) if err.raw_os_error() == Some(libc::EINVAL) => IoUring::builder()
            .setup_cqsize(RING_ENTRIES * 4)
            .build(RING_ENTRIES),
        Err(err) => Err(err),
    }
}

/// What a completion belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Op {
    /// The multishot UDP receive.
    UdpRecv = 1,
    /// A UDP send from send slot `index`.
    UdpSend,
    /// The multishot accept on listener `index`.
    Accept,
    /// A TCP receive for connection `index`.
    TcpRecv,
    /// A TCP send for connection `index`.
    TcpSend,
    /// An outbound connect for connection `index`.
    Connect,
    /// The timeout linked to that connect.
    ConnectTimeout,
    /// A cancellation of connection `index`'s operations.
    Cancel,
    /// The read of the control eventfd.
    Wake,
}

impl Op {
    fn from_u8(value: u8) -> Option<Self> {
        Some(match value {
            1 => Self::UdpRecv,
            2 => Self::UdpSend,
            3 => Self::Accept,
            4 => Self::TcpRecv,
            5 => Self::TcpSend,
            6 => Self::Connect,
            7 => Self::ConnectTimeout,
            8 => Self::Cancel,
            9 => Self::Wake,
            _ => return None,
        })
    }
}

/// `user_data` of an operation: the operation, an object index and that object's generation
/// (so a completion for a slot that was freed and reused is recognised as stale).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Token {
    pub(crate) op: Op,
    pub(crate) index: u32,
    pub(crate) generation: u32,
}

impl Token {
    pub(crate) fn new(op: Op, index: usize, generation: u32) -> Self {
        debug_assert!(index < 1 << 24, "object indices fit in 24 bits");
        Self {
            op,
            index: index as u32 & 0x00ff_ffff,
            generation,
        }
    }

    pub(crate) fn to_user_data(self) -> u64 {
        (self.op as u64) << 56 | u64::from(self.index) << 32 | u64::from(self.generation)
    }

    pub(crate) fn from_user_data(data: u64) -> Option<Self> {
        Some(Self {
            op: Op::from_u8((data >> 56) as u8)?,
            index: ((data >> 32) & 0x00ff_ffff) as u32,
            generation: data as u32,
        })
    }
}

/// A provided-buffer ring: `count` buffers of `size` bytes the kernel picks from for operations
/// submitted with `BUFFER_SELECT` and this group id.
#[derive(Debug)]
pub(crate) struct BufRing {
    /// The ring of buffer descriptors shared with the kernel (page-aligned mmap).
    entries: NonNull<BufRingEntry>,
    entries_len: usize,
    count: u16,
    /// Our copy of the tail: descriptors handed to the kernel so far.
    tail: u16,
    group: u16,
    size: usize,
    /// The buffers themselves, `count * size` bytes. Allocated zeroed, so pages become resident
    /// only once the kernel writes into them.
    memory: Box<[u8]>,
}

impl BufRing {
    /// Allocates and registers a ring; `count` must be a power of two.
    pub(crate) fn new(ring: &IoUring, group: u16, count: u16, size: usize) -> io::Result<Self> {
        assert!(
            count.is_power_of_two(),
            "buffer ring sizes are powers of two"
        );
        let entries_len = usize::from(count) * size_of::<BufRingEntry>();
        // SAFETY: an anonymous private mapping; checked for failure below.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                entries_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let entries = NonNull::new(addr.cast::<BufRingEntry>()).ok_or_else(|| {
            io::Error::new(io::ErrorKind::OutOfMemory, "mmap returned a null mapping")
        })?;
        let mut this = Self {
            entries,
            entries_len,
            count,
            tail: 0,
            group,
            size,
            memory: vec![0; usize::from(count) * size].into_boxed_slice(),
        };
        // SAFETY: the mapping lives as long as `this`; a shard never drops its buffer rings
        // while its ring can still use them (it leaks them on exit).
        unsafe {
            ring.submitter().register_buf_ring_with_flags(
                this.entries.as_ptr() as u64,
                count,
                group,
                0,
            )?;
        }
        for bid in 0..count {
            this.push(bid);
        }
        this.publish();
        Ok(this)
    }

    pub(crate) fn group(&self) -> u16 {
        self.group
    }

    pub(crate) fn buffer_size(&self) -> usize {
        self.size
    }

    /// Buffer `bid`, as filled by the kernel (`len` bytes, as the completion reported).
    pub(crate) fn buffer_mut(&mut self, bid: u16, len: usize) -> &mut [u8] {
        let start = usize::from(bid) * self.size;
        let len = len.min(self.size);
        &mut self.memory[start..start + len]
    }

    /// Gives buffer `bid` back to the kernel.
    pub(crate) fn recycle(&mut self, bid: u16) {
        if bid < self.count {
            self.push(bid);
            self.publish();
        }
    }

    fn push(&mut self, bid: u16) {
        let slot = usize::from(self.tail & (self.count - 1));
        let addr = self.memory[usize::from(bid) * self.size..].as_mut_ptr() as u64;
        // SAFETY: `slot` < count, inside the mapping; the kernel only reads descriptors between
        // its head and the published tail, and this one is past the tail until `publish`.
        unsafe {
            let entry = &mut *self.entries.as_ptr().add(slot);
            entry.set_addr(addr);
            entry.set_len(self.size as u32);
            entry.set_bid(bid);
        }
        self.tail = self.tail.wrapping_add(1);
    }

    fn publish(&self) {
        // SAFETY: the tail field overlays the first descriptor's reserved field; the kernel
        // reads it with acquire semantics, so a release store publishes the descriptors.
        unsafe {
            let tail = BufRingEntry::tail(self.entries.as_ptr()).cast_mut();
            AtomicU16::from_ptr(tail).store(self.tail, Ordering::Release);
        }
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: our own mapping, dropped only when no ring uses it (a shard leaks its buffer
        // rings on exit).
        unsafe {
            libc::munmap(self.entries.as_ptr().cast(), self.entries_len);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip() {
        for op in [Op::UdpRecv, Op::TcpSend, Op::Wake, Op::Cancel] {
            let token = Token::new(op, 0x12_3456, 0xdead_beef);
            assert_eq!(Token::from_user_data(token.to_user_data()), Some(token));
        }
        assert_eq!(Token::from_user_data(0), None);
    }
}
