//! Receive buffer pools: a fixed set of equal buffers, handed out by index.
//!
//! With io_uring the pool is a provided-buffer ring ([`Buffers::ring`]): the kernel picks a
//! buffer only when data actually arrives, so a thousand idle TCP connections with a receive
//! armed hold no buffer at all, and multishot UDP receives need them by design. The epoll
//! backend allocates the same layout with a plain free list ([`Buffers::pool`]) and picks
//! buffers itself ([`Buffers::take`]).

use std::io;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::IoUring;
use io_uring::types::BufRingEntry;

/// `count` buffers of `size` bytes.
#[derive(Debug)]
pub(crate) struct Buffers {
    count: u16,
    size: usize,
    /// The buffers themselves, `count * size` bytes. Allocated zeroed, so pages become resident
    /// only once something writes into them.
    memory: Box<[u8]>,
    owner: Owner,
}

/// Who hands out free buffers.
#[derive(Debug)]
enum Owner {
    /// The kernel, from a registered provided-buffer ring.
    Ring(RingState),
    /// The epoll backend, from this free list.
    Pool(Vec<u16>),
}

#[derive(Debug)]
struct RingState {
    /// The ring of buffer descriptors shared with the kernel (page-aligned mmap).
    entries: NonNull<BufRingEntry>,
    entries_len: usize,
    /// Our copy of the tail: descriptors handed to the kernel so far.
    tail: u16,
}

impl Buffers {
    /// Allocates buffers and registers them with `ring` as provided-buffer group `group`;
    /// `count` must be a power of two.
    pub(crate) fn ring(ring: &IoUring, group: u16, count: u16, size: usize) -> io::Result<Self> {
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
            count,
            size,
            memory: vec![0; usize::from(count) * size].into_boxed_slice(),
            owner: Owner::Ring(RingState {
                entries,
                entries_len,
                tail: 0,
            }),
        };
        // SAFETY: the mapping lives as long as `this`; a shard never drops its buffer rings
        // while its ring can still use them (it leaks them on exit).
        unsafe {
            ring.submitter().register_buf_ring_with_flags(
                entries.as_ptr() as u64,
                count,
                group,
                0,
            )?;
        }
        for bid in 0..count {
            this.recycle(bid);
        }
        Ok(this)
    }

    /// Allocates buffers handed out by [`Buffers::take`].
    pub(crate) fn pool(count: u16, size: usize) -> Self {
        Self {
            count,
            size,
            memory: vec![0; usize::from(count) * size].into_boxed_slice(),
            owner: Owner::Pool((0..count).rev().collect()),
        }
    }

    pub(crate) fn buffer_size(&self) -> usize {
        self.size
    }

    /// A free buffer of a pool, now owned by the caller until [`Buffers::recycle`].
    pub(crate) fn take(&mut self) -> Option<u16> {
        match &mut self.owner {
            Owner::Pool(free) => free.pop(),
            Owner::Ring(_) => None,
        }
    }

    /// Free buffers of a pool.
    pub(crate) fn available(&self) -> usize {
        match &self.owner {
            Owner::Pool(free) => free.len(),
            Owner::Ring(_) => 0,
        }
    }

    /// Buffer `bid`, as filled (`len` bytes, as the completion reported).
    pub(crate) fn buffer_mut(&mut self, bid: u16, len: usize) -> &mut [u8] {
        let start = usize::from(bid.min(self.count.saturating_sub(1))) * self.size;
        let len = len.min(self.size);
        &mut self.memory[start..start + len]
    }

    /// Raw pointer to the start of buffer `bid` (for the kernel to write into).
    pub(crate) fn buffer_ptr(&mut self, bid: u16) -> *mut u8 {
        self.buffer_mut(bid, 0).as_mut_ptr()
    }

    /// Gives buffer `bid` back (to the kernel, for a ring).
    pub(crate) fn recycle(&mut self, bid: u16) {
        if bid >= self.count {
            return;
        }
        let addr = self.memory[usize::from(bid) * self.size..].as_mut_ptr() as u64;
        match &mut self.owner {
            Owner::Pool(free) => {
                debug_assert!(!free.contains(&bid), "buffer {bid} recycled twice");
                free.push(bid);
            }
            Owner::Ring(ring) => {
                let slot = usize::from(ring.tail & (self.count - 1));
                // SAFETY: `slot` < count, inside the mapping; the kernel only reads
                // descriptors between its head and the published tail, and this one is past
                // the tail until the store below.
                unsafe {
                    let entry = &mut *ring.entries.as_ptr().add(slot);
                    entry.set_addr(addr);
                    entry.set_len(self.size as u32);
                    entry.set_bid(bid);
                }
                ring.tail = ring.tail.wrapping_add(1);
                // SAFETY: the tail field overlays the first descriptor's reserved field; the
                // kernel reads it with acquire semantics, so a release store publishes the
                // descriptors.
                unsafe {
                    let tail = BufRingEntry::tail(ring.entries.as_ptr()).cast_mut();
                    AtomicU16::from_ptr(tail).store(ring.tail, Ordering::Release);
                }
            }
        }
    }
}

impl Drop for Buffers {
    fn drop(&mut self) {
        if let Owner::Ring(ring) = &self.owner {
            // SAFETY: our own mapping, dropped only when no ring uses it (a shard leaks its
            // buffer rings on exit).
            unsafe {
                libc::munmap(ring.entries.as_ptr().cast(), ring.entries_len);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pool_hands_out_each_buffer_once() {
        let mut pool = Buffers::pool(4, 16);
        let taken: Vec<u16> = std::iter::from_fn(|| pool.take()).collect();
        assert_eq!(taken.len(), 4);
        assert_eq!(pool.available(), 0);
        pool.buffer_mut(taken[1], 16).fill(7);
        assert_eq!(pool.buffer_mut(taken[1], 3), [7, 7, 7]);
        assert_eq!(pool.buffer_mut(taken[1], 100).len(), 16);
        pool.recycle(taken[1]);
        pool.recycle(99);
        assert_eq!(pool.take(), Some(taken[1]));
        assert_eq!(pool.take(), None);
    }
}
