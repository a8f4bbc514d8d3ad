//! Smoothed loss-ratio estimation, split into "all losses" and "random (non-queue) losses".
//!
//! Bytes acknowledged and bytes declared lost are accumulated per round trip and folded into an
//! exponentially weighted average once a round holds enough bytes to be meaningful. Two averages
//! are kept:
//!
//! * `total`: every loss, for statistics (and later FEC sizing);
//! * `random`: only packets sent while the path showed no queue (for an acknowledged packet: its
//!   own RTT was close to the minimum RTT; for a lost one: the RTT of the last acknowledged packet
//!   sent before it was). A drop-tail queue only drops when it is full, so a packet lost while
//!   there was no queue cannot be a congestion drop; counting acknowledged bytes under the same
//!   condition keeps the ratio unbiased for random loss, which does not depend on the queue.
//!   The classification must use the queue at *send* time, not at detection time: after a burst
//!   of queue drops the sender pauses, the queue drains, and the packets whose ACKs reveal the
//!   burst see an empty queue. The rate controller compensates its
//!   bandwidth estimate with this ratio only, so its own congestion drops can never feed back into
//!   a higher rate.

/// Per-round folding weight once warmed up (about eight rounds of memory).
const EWMA_GAIN: f64 = 1.0 / 8.0;

#[derive(Debug, Clone, Default)]
struct Ratio {
    acked: u64,
    lost: u64,
    value: f64,
    folds: u32,
}

impl Ratio {
    fn add(&mut self, acked: u64, lost: u64) {
        self.acked = self.acked.saturating_add(acked);
        self.lost = self.lost.saturating_add(lost);
    }

    fn fold(&mut self, min_bytes: u64) {
        let total = self.acked.saturating_add(self.lost);
        if total < min_bytes || total == 0 {
            return;
        }
        let sample = self.lost as f64 / total as f64;
        // Plain mean over the first rounds so the estimate is usable quickly, EWMA afterwards.
        self.folds = self.folds.saturating_add(1);
        let gain = (1.0 / f64::from(self.folds)).max(EWMA_GAIN);
        self.value += gain * (sample - self.value);
        self.acked = 0;
        self.lost = 0;
    }
}

/// Loss-ratio estimator.
#[derive(Debug, Clone)]
pub(crate) struct LossEstimator {
    total: Ratio,
    random: Ratio,
    /// A round is folded only once it holds at least this many bytes (else it is merged into the
    /// next one), so a handful of packets cannot swing the estimate.
    min_bytes: u64,
}

impl LossEstimator {
    pub(crate) fn new(mtu: u64) -> Self {
        Self {
            total: Ratio::default(),
            random: Ratio::default(),
            min_bytes: mtu.saturating_mul(32).max(1),
        }
    }

    /// Accounts for acknowledged bytes; `queue_free` tells whether the packet saw no queue.
    pub(crate) fn on_acked(&mut self, bytes: u64, queue_free: bool) {
        self.total.add(bytes, 0);
        if queue_free {
            self.random.add(bytes, 0);
        }
    }

    /// Accounts for lost bytes; `queue_free` tells whether the path had no queue when the packet
    /// was sent.
    pub(crate) fn on_lost(&mut self, bytes: u64, queue_free: bool) {
        self.total.add(0, bytes);
        if queue_free {
            self.random.add(0, bytes);
        }
    }

    /// End of a round trip.
    pub(crate) fn on_round(&mut self) {
        self.total.fold(self.min_bytes);
        self.random.fold(self.min_bytes);
    }

    /// Smoothed ratio of all losses.
    pub(crate) fn total(&self) -> f64 {
        self.total.value
    }

    /// Smoothed ratio of losses seen while the path had no queue.
    pub(crate) fn random(&self) -> f64 {
        self.random.value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn separates_queue_losses() {
        let mut l = LossEstimator::new(1000);
        for round in 0..100 {
            // 95 of 100 packets acked while queue-free, and in odd rounds a burst of 30 drops
            // while a queue stood.
            l.on_acked(95_000, true);
            l.on_lost(5_000, true);
            if round % 2 == 1 {
                l.on_acked(10_000, false);
                l.on_lost(30_000, false);
            }
            l.on_round();
        }
        assert!((l.random() - 0.05).abs() < 1e-9, "{}", l.random());
        assert!(l.total() > 0.15, "{}", l.total());
    }

    #[test]
    fn small_rounds_are_merged() {
        let mut l = LossEstimator::new(1000);
        l.on_acked(3000, true);
        l.on_lost(1000, true);
        l.on_round();
        assert_eq!(l.random(), 0.0);
        l.on_acked(28_000, true);
        l.on_round();
        assert!((l.random() - 1.0 / 32.0).abs() < 1e-9);
    }
}
