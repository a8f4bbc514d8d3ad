//! What we received and when we owe the peer an acknowledgement.

use std::time::{Duration, Instant};

use crate::arq::RangeSet;

/// The most ranges one ACK frame reports (it also stops where the packet is full). On a lossy
/// path every packet lost in the last round trip is a gap; too few ranges and the sender would
/// take packets that arrived for lost and send them again.
pub(crate) const MAX_ACK_RANGES: usize = 256;

#[derive(Debug, Default)]
pub(crate) struct AckState {
    received: RangeSet,
    largest: Option<u64>,
    largest_time: Option<Instant>,
    /// Ack-eliciting packets received since our last ACK.
    unacked_eliciting: u32,
    /// When the ACK we owe must go out at the latest.
    deadline: Option<Instant>,
    /// Something arrived out of order: acknowledge at once so the sender learns of the gap.
    immediate: bool,
}

impl AckState {
    pub fn largest(&self) -> Option<u64> {
        self.largest
    }

    /// Records an authenticated packet.
    pub fn on_packet(
        &mut self,
        now: Instant,
        pn: u64,
        ack_eliciting: bool,
        ack_every: u32,
        max_delay: Duration,
    ) {
        let in_order = self.largest.is_none_or(|l| pn == l + 1);
        self.received.insert(pn..pn + 1);
        if self.largest.is_none_or(|l| pn > l) {
            self.largest = Some(pn);
            self.largest_time = Some(now);
        }
        // Keep the set small: anything this far below the largest is ancient history.
        if let Some(l) = self.largest
            && self.received.len() > 4 * MAX_ACK_RANGES
            && let Some(min) = self.received.min()
        {
            let cut = l.saturating_sub(1 << 16).max(min);
            if cut > min {
                self.received.remove(min..cut);
            }
        }
        if !ack_eliciting {
            return;
        }
        self.unacked_eliciting += 1;
        if !in_order {
            self.immediate = true;
        }
        if self.unacked_eliciting >= ack_every {
            self.immediate = true;
        }
        if self.deadline.is_none() {
            self.deadline = Some(now + max_delay);
        }
    }

    /// Whether an ACK should be sent now (on its own if need be).
    pub fn is_due(&self, now: Instant) -> bool {
        self.immediate || self.deadline.is_some_and(|d| d <= now)
    }

    /// Whether there is anything to acknowledge at all (ACKs ride along on data packets).
    pub fn has_pending(&self) -> bool {
        self.unacked_eliciting > 0 || self.immediate
    }

    pub fn deadline(&self) -> Option<Instant> {
        if self.immediate { None } else { self.deadline }
    }

    /// The ranges to report, highest first, and the delay since the largest arrived.
    pub fn ranges(&self) -> impl Iterator<Item = std::ops::Range<u64>> + Clone + '_ {
        self.received.iter_rev()
    }

    pub fn ack_delay(&self, now: Instant) -> Duration {
        self.largest_time
            .map_or(Duration::ZERO, |t| now.saturating_duration_since(t))
    }

    pub fn on_ack_sent(&mut self) {
        self.unacked_eliciting = 0;
        self.deadline = None;
        self.immediate = false;
    }

    /// The peer has seen our ACK covering everything up to `largest`: stop reporting below it.
    pub fn on_ack_acked(&mut self, largest: u64) {
        if let Some(min) = self.received.min() {
            // Keep the range that contains `largest` so the next ACK's first range stays exact.
            if largest > min {
                self.received.remove(min..largest);
            }
        }
    }
}
