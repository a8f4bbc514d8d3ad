//! Round-trip time estimation (RFC 6298 / RFC 9002) and the retransmission timeout.
//!
//! The smoothed RTT and its variance follow RFC 9002 §5. The retransmission timeout follows
//! Liteflow's settings ([`RttClamp`]): the RTT used for timeouts is clamped into
//! `[min_rtt, max_rtt]`, multiplied by `timeout_rtt_ratio` (1.5 rather than TCP's effective
//! ~2-4x, because a lost retransmission costs a tunnel more than a spurious one) and padded with
//! `4 * rttvar`. Consecutive timeouts back off by 1.5x each (TCP doubles): with random loss on
//! the path a retransmission is itself lost with the same probability, and doubling would stall
//! the tunnel for seconds after a couple of unlucky losses.

use std::time::Duration;

/// Timer granularity assumed for the PTO (RFC 9002 `kGranularity`).
pub const GRANULARITY: Duration = Duration::from_millis(1);

/// Backoff factor per consecutive retransmission timeout.
pub const RTO_BACKOFF: f64 = 1.5;

/// Bounds applied to the RTT when it is used for timeouts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RttClamp {
    /// Lower bound of the RTT used for timeouts; the timeout is never below it either.
    pub min_rtt: Duration,
    /// Upper bound of the RTT used for timeouts.
    pub max_rtt: Duration,
    /// Retransmission timeout = clamped RTT x this ratio + 4 x rttvar.
    pub timeout_rtt_ratio: f32,
    /// Upper bound of the timeout, backoff included.
    pub max_rto: Duration,
}

impl Default for RttClamp {
    fn default() -> Self {
        Self {
            min_rtt: Duration::from_millis(1),
            max_rtt: Duration::from_secs(2),
            timeout_rtt_ratio: 1.5,
            max_rto: Duration::from_secs(3),
        }
    }
}

/// RTT estimator: latest, smoothed, variance and minimum RTT.
#[derive(Debug, Clone)]
pub struct RttEstimator {
    latest: Duration,
    smoothed: Duration,
    var: Duration,
    min: Duration,
    has_sample: bool,
    clamp: RttClamp,
}

impl RttEstimator {
    /// An estimator that assumes `initial` until the first sample arrives.
    pub fn new(initial: Duration, clamp: RttClamp) -> Self {
        Self {
            latest: initial,
            smoothed: initial,
            var: initial / 2,
            min: initial,
            has_sample: false,
            clamp,
        }
    }

    /// Feeds one RTT sample (`sample` = ack receipt time - send time of the largest newly
    /// acknowledged packet) together with the peer's reported ACK delay.
    pub fn update(&mut self, ack_delay: Duration, sample: Duration) {
        self.latest = sample;
        if !self.has_sample {
            self.has_sample = true;
            self.min = sample;
            self.smoothed = sample;
            self.var = sample / 2;
            return;
        }
        self.min = self.min.min(sample);
        // Subtract the peer's ACK delay only when that does not take the sample below the
        // minimum RTT: a lying or confused peer must not be able to shrink our timers.
        let adjusted = match sample.checked_sub(ack_delay) {
            Some(a) if a >= self.min => a,
            _ => sample,
        };
        let deviation = self.smoothed.abs_diff(adjusted);
        self.var = (self.var * 3 + deviation) / 4;
        self.smoothed = (self.smoothed * 7 + adjusted) / 8;
    }

    /// Whether at least one sample was taken (otherwise the values are the initial guess).
    pub fn has_sample(&self) -> bool {
        self.has_sample
    }

    /// Smoothed RTT.
    pub fn smoothed(&self) -> Duration {
        self.smoothed
    }

    /// Most recent sample.
    pub fn latest(&self) -> Duration {
        self.latest
    }

    /// Smallest sample seen.
    pub fn min(&self) -> Duration {
        self.min
    }

    /// RTT variation (`rttvar`).
    pub fn var(&self) -> Duration {
        self.var
    }

    /// The clamp settings.
    pub fn clamp(&self) -> &RttClamp {
        &self.clamp
    }

    /// Base of the probe timeout: `smoothed + max(4 * var, granularity)` (RFC 9002, without the
    /// peer's max ACK delay, which the session adds).
    pub fn pto_base(&self) -> Duration {
        self.smoothed + (self.var * 4).max(GRANULARITY)
    }

    /// Retransmission timeout after `backoff_count` consecutive timeouts:
    /// `max(min_rtt, clamp(smoothed) * ratio + 4 * var) * 1.5^backoff_count`, at most `max_rto`.
    pub fn rto(&self, backoff_count: u32) -> Duration {
        let c = &self.clamp;
        let rtt = self.smoothed.max(c.min_rtt).min(c.max_rtt.max(c.min_rtt));
        let ratio = f64::from(c.timeout_rtt_ratio);
        // A nonsensical ratio (NaN, negative) must not panic Duration arithmetic; fall back to 1.
        let ratio = if ratio.is_finite() && ratio > 0.0 {
            ratio
        } else {
            1.0
        };
        let base = rtt.as_secs_f64() * ratio + (self.var * 4).as_secs_f64();
        let base = base.max(c.min_rtt.as_secs_f64());
        let secs = base * RTO_BACKOFF.powi(backoff_count.min(128) as i32);
        if !secs.is_finite() || secs >= c.max_rto.as_secs_f64() {
            return c.max_rto;
        }
        Duration::from_secs_f64(secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn first_sample_initialises() {
        let mut r = RttEstimator::new(ms(333), RttClamp::default());
        assert!(!r.has_sample());
        r.update(ms(0), ms(100));
        assert_eq!(
            (r.smoothed(), r.var(), r.min(), r.latest()),
            (ms(100), ms(50), ms(100), ms(100))
        );
        assert_eq!(r.pto_base(), ms(300));
    }

    #[test]
    fn smoothing_and_ack_delay() {
        let mut r = RttEstimator::new(ms(333), RttClamp::default());
        r.update(ms(0), ms(100));
        // 120 ms with 20 ms ack delay counts as 100 ms: no change to smoothed.
        r.update(ms(20), ms(120));
        assert_eq!(r.smoothed(), ms(100));
        assert_eq!(r.var(), Duration::from_micros(37_500));
        // Ack delay that would go below min RTT is ignored.
        r.update(ms(50), ms(120));
        assert_eq!(r.smoothed(), Duration::from_micros(102_500));
        assert_eq!(r.latest(), ms(120));
        r.update(ms(0), ms(80));
        assert_eq!(r.min(), ms(80));
    }

    #[test]
    fn converges_to_constant_rtt() {
        let mut r = RttEstimator::new(ms(500), RttClamp::default());
        for _ in 0..200 {
            r.update(ms(0), ms(50));
        }
        assert_eq!(r.smoothed(), ms(50));
        assert!(r.var() < Duration::from_micros(10));
        assert_eq!(r.pto_base(), ms(51));
        // rto = 50 * 1.5 + ~0, then 1.5x per backoff.
        let rto0 = r.rto(0);
        assert!(rto0 >= ms(75) && rto0 < ms(76), "{rto0:?}");
        let rto2 = r.rto(2);
        assert!(
            rto2 >= Duration::from_micros(168_750) && rto2 < ms(171),
            "{rto2:?}"
        );
        assert_eq!(r.rto(40), ms(3000));
        assert_eq!(r.rto(u32::MAX), ms(3000));
    }

    #[test]
    fn clamps_apply() {
        let clamp = RttClamp {
            min_rtt: ms(20),
            max_rtt: ms(200),
            timeout_rtt_ratio: 2.0,
            max_rto: ms(1000),
        };
        let mut r = RttEstimator::new(ms(100), clamp);
        for _ in 0..100 {
            r.update(ms(0), ms(1));
        }
        // clamped rtt 20 ms * 2 = 40 ms.
        let rto = r.rto(0);
        assert!(rto >= ms(40) && rto < ms(41), "{rto:?}");
        let mut r = RttEstimator::new(ms(100), clamp);
        for _ in 0..100 {
            r.update(ms(0), ms(900));
        }
        let rto = r.rto(0);
        assert!(rto >= ms(400) && rto < ms(401), "{rto:?}");
        assert_eq!(r.rto(3), ms(1000));
    }

    #[test]
    fn bad_ratio_does_not_panic() {
        let clamp = RttClamp {
            timeout_rtt_ratio: f32::NAN,
            ..RttClamp::default()
        };
        let mut r = RttEstimator::new(ms(100), clamp);
        r.update(ms(0), ms(10));
        assert!(r.rto(0) >= ms(10));
        let clamp = RttClamp {
            timeout_rtt_ratio: -3.0,
            min_rtt: ms(5),
            ..RttClamp::default()
        };
        let r = RttEstimator::new(ms(100), clamp);
        assert!(r.rto(0) >= ms(5));
    }
}
