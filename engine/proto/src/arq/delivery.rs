//! Delivery-rate sampling (draft-cheng-iccrg-delivery-rate-estimation).
//!
//! Every sent packet carries a [`SendSnapshot`] of the connection's delivery counters at send
//! time; when it is acknowledged, the bytes delivered between that snapshot and now, divided by
//! the longer of the send and the ACK interval, give one delivery-rate sample. Taking the longer
//! interval filters out ACK compression; samples with an interval below the minimum RTT are
//! discarded because they cannot span a full flight and would overestimate.
//!
//! The sampler also counts lost bytes (`lost` in the snapshot), so a rate controller can see how
//! many bytes were lost over the same interval as a sample.

use std::time::{Duration, Instant};

/// Delivery counters at the time a packet was sent; the session stores one per sent packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SendSnapshot {
    /// Bytes delivered (acknowledged) when the packet was sent.
    pub delivered: u64,
    /// When the `delivered` counter last changed before the send.
    pub delivered_time: Instant,
    /// Send time of the first packet of the flight the packet belongs to.
    pub first_sent_time: Instant,
    /// Whether the sender was application-limited when the packet was sent.
    pub is_app_limited: bool,
    /// Bytes declared lost when the packet was sent.
    pub lost: u64,
}

/// One delivery-rate sample, produced per ACK.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateSample {
    /// Bytes per second delivered over `interval`.
    pub delivery_rate: u64,
    /// Bytes delivered over the interval.
    pub delivered: u64,
    /// Bytes declared lost over the interval.
    pub lost: u64,
    /// The sampling interval.
    pub interval: Duration,
    /// Whether the sample was taken while the sender was application-limited (it then only
    /// gives a lower bound of the path's bandwidth).
    pub is_app_limited: bool,
    /// `delivered` counter of the connection when the newest acknowledged packet was sent.
    pub prior_delivered: u64,
}

#[derive(Debug, Clone, Copy)]
struct Pending {
    prior_delivered: u64,
    prior_lost: u64,
    send_elapsed: Duration,
    ack_elapsed: Duration,
    is_app_limited: bool,
    newest_sent: Instant,
}

/// Connection-wide delivery counters and per-ACK sample assembly.
#[derive(Debug, Clone)]
pub struct DeliveryRateSampler {
    delivered: u64,
    delivered_time: Instant,
    first_sent_time: Instant,
    lost: u64,
    /// `delivered` value at which the current app-limited phase ends; 0 when not app-limited.
    app_limited_until: u64,
    pending: Option<Pending>,
}

impl DeliveryRateSampler {
    /// A sampler for a connection starting at `now`.
    pub fn new(now: Instant) -> Self {
        Self {
            delivered: 0,
            delivered_time: now,
            first_sent_time: now,
            lost: 0,
            app_limited_until: 0,
            pending: None,
        }
    }

    /// Total bytes acknowledged.
    pub fn delivered(&self) -> u64 {
        self.delivered
    }

    /// Total bytes declared lost.
    pub fn lost(&self) -> u64 {
        self.lost
    }

    /// Whether the sender is currently marked application-limited.
    pub fn is_app_limited(&self) -> bool {
        self.app_limited_until != 0
    }

    /// Takes the snapshot for a packet sent at `now`.
    pub fn on_sent(&mut self, now: Instant, bytes_in_flight_before: u64) -> SendSnapshot {
        if bytes_in_flight_before == 0 {
            // Start of a new flight: the idle period before it must not count as send time.
            self.first_sent_time = now;
            self.delivered_time = now;
        }
        SendSnapshot {
            delivered: self.delivered,
            delivered_time: self.delivered_time,
            first_sent_time: self.first_sent_time,
            is_app_limited: self.app_limited_until != 0,
            lost: self.lost,
        }
    }

    /// Records the acknowledgement of a packet of `bytes` sent at `sent_time`, by an ACK the
    /// peer held back for `ack_delay`.
    pub fn on_acked(
        &mut self,
        now: Instant,
        snapshot: &SendSnapshot,
        sent_time: Instant,
        bytes: u64,
        ack_delay: Duration,
    ) {
        // The ACK interval runs from when the data would have been acknowledged without the
        // receiver's deliberate delay. Otherwise, when fewer packets than the receiver's ACK
        // threshold are sent per ACK delay, every interval contains the whole delay, each sample
        // is capped at a packet or two per delay whatever the path, and the estimate can never
        // rise above that (on a 0.3 ms path with a 5 ms ACK delay: ~0.002 Gbit/s for seconds).
        let acked_at = now
            .checked_sub(ack_delay)
            .unwrap_or(now)
            .max(sent_time)
            .max(self.delivered_time);
        self.delivered = self.delivered.saturating_add(bytes);
        self.delivered_time = acked_at;
        // The sample is based on the most recently sent packet acknowledged by this ACK.
        let newest = self.pending.is_none_or(|p| sent_time >= p.newest_sent);
        if newest {
            self.pending = Some(Pending {
                prior_delivered: snapshot.delivered,
                prior_lost: snapshot.lost,
                send_elapsed: sent_time.saturating_duration_since(snapshot.first_sent_time),
                ack_elapsed: acked_at.saturating_duration_since(snapshot.delivered_time),
                is_app_limited: snapshot.is_app_limited,
                newest_sent: sent_time,
            });
            self.first_sent_time = sent_time;
        }
    }

    /// Records `bytes` declared lost.
    pub fn on_lost(&mut self, bytes: u64) {
        self.lost = self.lost.saturating_add(bytes);
    }

    /// Marks the sender application-limited until everything now in flight is delivered.
    pub fn on_app_limited(&mut self, bytes_in_flight: u64) {
        self.app_limited_until = self.delivered.saturating_add(bytes_in_flight).max(1);
    }

    /// Finishes the sample of one ACK. `min_rtt` is the current minimum RTT estimate (samples
    /// over a shorter interval are discarded); `None` when the ACK yields no valid sample.
    pub fn finish_ack(&mut self, min_rtt: Option<Duration>) -> Option<RateSample> {
        if self.app_limited_until != 0 && self.delivered > self.app_limited_until {
            self.app_limited_until = 0;
        }
        let p = self.pending.take()?;
        let interval = p.send_elapsed.max(p.ack_elapsed);
        if interval.is_zero() || min_rtt.is_some_and(|m| interval < m) {
            return None;
        }
        let delivered = self.delivered.saturating_sub(p.prior_delivered);
        let lost = self.lost.saturating_sub(p.prior_lost);
        let rate = u128::from(delivered) * 1_000_000_000 / interval.as_nanos().max(1);
        Some(RateSample {
            delivery_rate: u64::try_from(rate).unwrap_or(u64::MAX),
            delivered,
            lost,
            interval,
            is_app_limited: p.is_app_limited,
            prior_delivered: p.prior_delivered,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steady_flow_measures_rate() {
        // 1000-byte packets every 1 ms, RTT 20 ms: 1 MB/s.
        let t0 = Instant::now();
        let mut s = DeliveryRateSampler::new(t0);
        let ms = Duration::from_millis(1);
        let mut sent = Vec::new();
        let mut inflight = 0;
        let mut last = None;
        for i in 0..200u32 {
            let now = t0 + ms * i;
            // Acks for packets sent 20 ms ago.
            if i >= 20 {
                let (snap, st) = sent[(i - 20) as usize];
                s.on_acked(now, &snap, st, 1000, Duration::ZERO);
                inflight -= 1000;
                last = s.finish_ack(Some(ms * 20));
            }
            sent.push((s.on_sent(now, inflight), now));
            inflight += 1000;
        }
        let r = last.expect("sample");
        assert!(!r.is_app_limited);
        let err = (r.delivery_rate as f64 - 1e6).abs() / 1e6;
        assert!(err < 0.06, "{r:?}");
    }

    #[test]
    fn short_interval_and_app_limited() {
        let t0 = Instant::now();
        let mut s = DeliveryRateSampler::new(t0);
        s.on_app_limited(0);
        assert!(s.is_app_limited());
        let snap = s.on_sent(t0, 0);
        assert!(snap.is_app_limited);
        let t1 = t0 + Duration::from_millis(10);
        s.on_acked(t1, &snap, t0, 1200, Duration::ZERO);
        // Interval 10 ms below a 20 ms min RTT: discarded.
        assert_eq!(s.finish_ack(Some(Duration::from_millis(20))), None);
        assert!(!s.is_app_limited());
        let snap = s.on_sent(t1, 0);
        s.on_lost(500);
        let t2 = t1 + Duration::from_millis(40);
        s.on_acked(t2, &snap, t1, 1200, Duration::ZERO);
        let r = s
            .finish_ack(Some(Duration::from_millis(20)))
            .expect("sample");
        assert_eq!((r.delivered, r.lost, r.delivery_rate), (1200, 500, 30_000));
        assert!(!r.is_app_limited);
        // No ack since: no sample.
        assert_eq!(s.finish_ack(None), None);
    }
}
