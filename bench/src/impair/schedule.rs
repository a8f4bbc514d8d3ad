//! One direction of an impairment relay: its decisions ([`Impairer`]), the heap of datagrams
//! waiting for their release, its counters, and the scheduler loop that releases what is due.
//! Generic over where a datagram goes (`D`), so the UDP relay ([`super::Relay`]) and the TUN
//! link emulator ([`crate::linkem`]) share it.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use super::decide::{Impairer, Verdict};
use super::{Impairment, RelayStats};

/// A release this much after its due time counts in [`RelayStats::late_releases`].
const LATE: Duration = Duration::from_millis(1);
/// Longest a scheduler sleeps with nothing queued before it looks at its stop flag again.
const IDLE_WAIT: Duration = Duration::from_millis(20);

pub(crate) struct Direction<D> {
    queue: Mutex<Queue<D>>,
    /// Signalled when a datagram becomes the earliest release, and on stop.
    wake: Condvar,
    pub(crate) counters: Counters,
}

struct Queue<D> {
    impairer: Impairer,
    heap: BinaryHeap<Scheduled<D>>,
    /// Tie-break for equal release times: first in, first out.
    next_seq: u64,
}

impl<D: Clone> Direction<D> {
    pub(crate) fn new(impairment: Impairment, seed: u64) -> Self {
        Self {
            queue: Mutex::new(Queue {
                impairer: Impairer::new(impairment, seed),
                heap: BinaryHeap::new(),
                next_seq: 0,
            }),
            wake: Condvar::new(),
            counters: Counters::default(),
        }
    }

    /// Decides the fate of a received datagram and schedules its release.
    pub(crate) fn submit(&self, blackhole: bool, data: &[u8], dest: D) {
        self.counters.received.fetch_add(1, Relaxed);
        self.counters
            .bytes_received
            .fetch_add(data.len() as u64, Relaxed);
        if blackhole {
            self.counters.dropped_loss.fetch_add(1, Relaxed);
            return;
        }
        let mut q = lock(&self.queue);
        // Read under the lock: arrivals reach the impairer in time order even from several
        // reader threads.
        let now = Instant::now();
        match q.impairer.decide(now, data.len()) {
            Verdict::DropLoss => {
                self.counters.dropped_loss.fetch_add(1, Relaxed);
            }
            Verdict::DropQueue => {
                self.counters.dropped_queue.fetch_add(1, Relaxed);
            }
            Verdict::Forward {
                release,
                copies,
                reordered,
            } => {
                if reordered {
                    self.counters.reordered.fetch_add(1, Relaxed);
                }
                if copies > 1 {
                    self.counters.duplicated.fetch_add(1, Relaxed);
                }
                let earliest = q.heap.peek().is_none_or(|top| release < top.release);
                for _ in 0..copies {
                    let seq = q.next_seq;
                    q.next_seq += 1;
                    q.heap.push(Scheduled {
                        release,
                        seq,
                        data: data.to_vec(),
                        dest: dest.clone(),
                    });
                }
                drop(q);
                // The scheduler sleeps until the earliest release; only a new earliest one
                // needs to wake it.
                if earliest {
                    self.wake.notify_one();
                }
            }
        }
    }

    /// Wakes the scheduler so it sees its stop flag.
    pub(crate) fn wake_for_stop(&self) {
        // Taking the lock orders the flag before the scheduler's next check, so the
        // notification cannot fall between its check and its wait.
        drop(lock(&self.queue));
        self.wake.notify_all();
    }

    /// Sleeps until the earliest release is due and releases everything due, until `stopping`
    /// says so. `release` sends one datagram and says whether it went out (a failed send is a
    /// datagram lost on the path); it runs without the lock, so receivers are never held up.
    pub(crate) fn run_scheduler(
        &self,
        stopping: impl Fn() -> bool,
        mut release: impl FnMut(&D, &[u8]) -> bool,
    ) {
        let mut due = Vec::new();
        loop {
            {
                let mut q = lock(&self.queue);
                loop {
                    if stopping() {
                        return;
                    }
                    let now = Instant::now();
                    match q.heap.peek().map(|s| s.release) {
                        Some(t) if t <= now => {
                            while q.heap.peek().is_some_and(|s| s.release <= now) {
                                due.extend(q.heap.pop());
                            }
                            break;
                        }
                        Some(t) => q = wait(&self.wake, q, t - now),
                        None => q = wait(&self.wake, q, IDLE_WAIT),
                    }
                }
            }
            for s in due.drain(..) {
                if Instant::now().saturating_duration_since(s.release) > LATE {
                    self.counters.late_releases.fetch_add(1, Relaxed);
                }
                if release(&s.dest, &s.data) {
                    self.counters.forwarded.fetch_add(1, Relaxed);
                }
            }
        }
    }
}

#[derive(Default)]
pub(crate) struct Counters {
    received: AtomicU64,
    bytes_received: AtomicU64,
    forwarded: AtomicU64,
    pub(crate) dropped_loss: AtomicU64,
    dropped_queue: AtomicU64,
    duplicated: AtomicU64,
    reordered: AtomicU64,
    late_releases: AtomicU64,
}

impl Counters {
    pub(crate) fn snapshot(&self) -> RelayStats {
        RelayStats {
            received: self.received.load(Relaxed),
            bytes_received: self.bytes_received.load(Relaxed),
            forwarded: self.forwarded.load(Relaxed),
            dropped_loss: self.dropped_loss.load(Relaxed),
            dropped_queue: self.dropped_queue.load(Relaxed),
            duplicated: self.duplicated.load(Relaxed),
            reordered: self.reordered.load(Relaxed),
            late_releases: self.late_releases.load(Relaxed),
        }
    }
}

/// A datagram waiting for its release; ordered so that [`BinaryHeap`] pops the earliest.
struct Scheduled<D> {
    release: Instant,
    seq: u64,
    data: Vec<u8>,
    dest: D,
}

impl<D> Ord for Scheduled<D> {
    fn cmp(&self, other: &Self) -> Ordering {
        // Reversed: BinaryHeap is a max-heap.
        other
            .release
            .cmp(&self.release)
            .then(other.seq.cmp(&self.seq))
    }
}

impl<D> PartialOrd for Scheduled<D> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl<D> PartialEq for Scheduled<D> {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl<D> Eq for Scheduled<D> {}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn wait<'a, T>(cv: &Condvar, guard: MutexGuard<'a, T>, timeout: Duration) -> MutexGuard<'a, T> {
    match cv.wait_timeout(guard, timeout) {
        Ok((g, _)) => g,
        Err(poisoned) => poisoned.into_inner().0,
    }
}
