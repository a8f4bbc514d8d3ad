//! Fixed-rate control: the user states the link's bandwidth (Liteflow's `send_bytes_per_sec`).
//!
//! The pacing rate is the stated rate exactly, with no loss compensation: the stated rate is the
//! capacity of the link, and packets that are lost on it consumed that capacity too. Sending
//! `rate / (1 - p)` would overload the link by the factor `1 / (1 - p)` and turn random loss into
//! additional congestion loss. The window is `2.5 x rate x max(srtt, min_rtt clamp)` so the
//! sender is never window-limited; it only bounds the damage if the peer stops acknowledging.
//! Delivery rate and loss are still measured, for statistics.

use std::time::{Duration, Instant};

use crate::arq::delivery::{DeliveryRateSampler, SendSnapshot};
use crate::arq::filter::{Extreme, WindowedFilter};
use crate::arq::loss::LossEstimator;
use crate::arq::rtt::RttEstimator;

/// Window multiple of `rate x rtt`.
const CWND_RTT_MULTIPLE: f64 = 2.5;
/// Smallest window: a few full-size packets.
const MIN_CWND: u64 = 16 * 1500;
/// RTT assumed before the first sample.
const INITIAL_RTT: Duration = Duration::from_millis(100);
/// Packet size assumed for the loss estimator's minimum round size.
const NOMINAL_MTU: u64 = 1400;

/// Fixed-rate controller; see the module documentation.
#[derive(Debug, Clone)]
pub struct FixedRate {
    rate: u64,
    cwnd: u64,
    sampler: DeliveryRateSampler,
    loss: LossEstimator,
    /// Windowed max of delivery rates over 10 rounds, for statistics only.
    delivery: WindowedFilter,
    round: u64,
    next_round_delivered: u64,
    round_ended: bool,
}

impl FixedRate {
    /// A controller that paces at `bytes_per_sec` (at least 1).
    pub fn new(bytes_per_sec: u64, now: Instant) -> Self {
        let rate = bytes_per_sec.max(1);
        Self {
            rate,
            cwnd: window(rate, INITIAL_RTT),
            sampler: DeliveryRateSampler::new(now),
            loss: LossEstimator::new(NOMINAL_MTU),
            delivery: WindowedFilter::new(Extreme::Max, 10),
            round: 0,
            next_round_delivered: 0,
            round_ended: false,
        }
    }

    /// Snapshot to store with a sent packet.
    pub fn on_packet_sent(
        &mut self,
        now: Instant,
        _bytes: u64,
        bytes_in_flight_before: u64,
    ) -> SendSnapshot {
        self.sampler.on_sent(now, bytes_in_flight_before)
    }

    /// A packet was newly acknowledged.
    pub fn on_packet_acked(
        &mut self,
        now: Instant,
        snapshot: &SendSnapshot,
        sent_time: Instant,
        bytes: u64,
        ack_delay: Duration,
    ) {
        self.sampler
            .on_acked(now, snapshot, sent_time, bytes, ack_delay);
        // The rate does not depend on loss, so every loss counts as "random" here.
        self.loss.on_acked(bytes, true);
        if snapshot.delivered >= self.next_round_delivered {
            self.next_round_delivered = self.sampler.delivered();
            self.round += 1;
            self.round_ended = true;
        }
    }

    /// A packet was declared lost.
    pub fn on_packet_lost(
        &mut self,
        _now: Instant,
        _snapshot: &SendSnapshot,
        _sent_time: Instant,
        bytes: u64,
    ) {
        self.sampler.on_lost(bytes);
        self.loss.on_lost(bytes, true);
    }

    /// All packets of one ACK were processed.
    pub fn on_ack_processed(&mut self, _now: Instant, rtt: &RttEstimator, _bytes_in_flight: u64) {
        let min_rtt = rtt.has_sample().then(|| rtt.min());
        if let Some(s) = self.sampler.finish_ack(min_rtt) {
            self.delivery.update(self.round, s.delivery_rate);
        }
        if std::mem::take(&mut self.round_ended) {
            self.loss.on_round();
        }
        let rtt = rtt.smoothed().max(rtt.clamp().min_rtt);
        self.cwnd = window(self.rate, rtt);
    }

    /// Nothing to do: the rate does not depend on samples.
    pub fn on_app_limited(&mut self, bytes_in_flight: u64) {
        self.sampler.on_app_limited(bytes_in_flight);
    }

    /// Nothing to do: the stated rate is the link's capacity whatever happened.
    pub fn on_rto(&mut self, _now: Instant) {}

    /// The stated rate.
    pub fn pacing_rate(&self) -> u64 {
        self.rate
    }

    /// Window, bytes.
    pub fn cwnd(&self) -> u64 {
        self.cwnd
    }

    /// Smoothed loss ratio.
    pub fn loss_rate(&self) -> f64 {
        self.loss.total()
    }

    /// For a fixed rate the "bottleneck" is the stated rate.
    pub fn btl_bw(&self) -> u64 {
        self.rate
    }

    /// Windowed max of measured delivery rates (bytes/s), for statistics.
    pub fn delivery_rate(&self) -> u64 {
        self.delivery.get().unwrap_or(0)
    }
}

fn window(rate: u64, rtt: Duration) -> u64 {
    ((rate as f64 * rtt.as_secs_f64() * CWND_RTT_MULTIPLE) as u64).max(MIN_CWND)
}
