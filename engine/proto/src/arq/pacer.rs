//! Token-bucket pacer: spreads sends evenly at the rate the rate controller asks for.
//!
//! Tokens are kept in exact integer units of "bytes x 10^9" (byte-nanoseconds per second), so
//! refilling for `dt` nanoseconds at `rate` bytes/s adds exactly `dt * rate` units: there is no
//! rounding at all and hence no drift, however small the steps (100 Mbit/s with 1400-byte packets
//! is one packet per 112 us; a per-step rounding of 1 byte would already be 1% error).
//!
//! The bucket may go negative: the session can send a packet larger than the remaining tokens
//! (for example because a packet is bigger than the bucket), and the debt is then paid back before
//! the next send, so the long-run rate still holds.

use std::time::{Duration, Instant};

const NANOS_PER_SEC: i128 = 1_000_000_000;
/// Longest delay ever returned.
const MAX_WAIT: Duration = Duration::from_secs(3600);

/// Token-bucket pacer.
#[derive(Debug, Clone)]
pub struct Pacer {
    /// Tokens in units of bytes * 10^9; may be negative (debt).
    tokens: i128,
    /// Bucket capacity in bytes.
    burst: u64,
    /// Time up to which tokens have been credited.
    last: Option<Instant>,
    /// Rate used for the last refill (bytes/s).
    rate: u64,
}

impl Pacer {
    /// A pacer with a full bucket of `burst_bytes`.
    pub fn new(burst_bytes: u64) -> Self {
        let burst = burst_bytes.max(1);
        Self {
            tokens: i128::from(burst) * NANOS_PER_SEC,
            burst,
            last: None,
            rate: 0,
        }
    }

    /// Bucket size for `rate` bytes/s and packets of `mtu` bytes: one millisecond worth of data
    /// (enough for a GSO batch of ~10 full packets at 100 Mbit/s, no big line-rate spike at
    /// 10 Gbit/s beyond what one 1 ms timer tick needs anyway), at least two packets.
    pub fn burst_for(rate_bytes_per_sec: u64, mtu: u64) -> u64 {
        (rate_bytes_per_sec / 1000)
            .max(mtu.saturating_mul(2))
            .max(1)
    }

    /// Bucket capacity in bytes.
    pub fn burst(&self) -> u64 {
        self.burst
    }

    /// Changes the bucket capacity (e.g. to [`Pacer::burst_for`] after a rate change); tokens
    /// above the new capacity are dropped.
    pub fn set_burst(&mut self, burst_bytes: u64) {
        self.burst = burst_bytes.max(1);
        self.tokens = self.tokens.min(self.cap());
    }

    /// `None` if `bytes` may be sent at `now` at `rate_bytes_per_sec`; otherwise the instant at
    /// which enough tokens will have accumulated. A request above the bucket size is allowed
    /// once the bucket is full (it then goes into debt).
    pub fn delay_until(
        &mut self,
        now: Instant,
        rate_bytes_per_sec: u64,
        bytes: u64,
    ) -> Option<Instant> {
        let rate = rate_bytes_per_sec.max(1);
        self.refill(now, rate);
        let need = i128::from(bytes.min(self.burst)) * NANOS_PER_SEC;
        if self.tokens >= need {
            return None;
        }
        let deficit = need - self.tokens;
        let rate = i128::from(rate);
        // Round up so that the tokens are really there at the returned instant.
        let wait_ns = (deficit + rate - 1) / rate;
        // Capped so that absurd rates cannot push the instant out of range; the caller asks
        // again when the timer fires anyway.
        let wait = Duration::from_nanos(u64::try_from(wait_ns).unwrap_or(u64::MAX)).min(MAX_WAIT);
        Some(now.checked_add(wait).unwrap_or(now))
    }

    /// Accounts for `bytes` sent at `now`.
    pub fn on_sent(&mut self, now: Instant, bytes: u64) {
        // Credit the elapsed time at the last known rate before debiting.
        if self.rate != 0 {
            self.refill(now, self.rate);
        } else {
            self.last = Some(self.last.map_or(now, |l| l.max(now)));
        }
        self.tokens -= i128::from(bytes) * NANOS_PER_SEC;
        // Bound the debt so a pathological caller cannot overflow or stall forever.
        let floor = -self.cap() * 64;
        self.tokens = self.tokens.max(floor);
    }

    fn cap(&self) -> i128 {
        i128::from(self.burst) * NANOS_PER_SEC
    }

    fn refill(&mut self, now: Instant, rate: u64) {
        if let Some(last) = self.last {
            // Time never runs backwards for the pacer: an older `now` credits nothing.
            if now > last {
                let dt = i128::try_from((now - last).as_nanos()).unwrap_or(i128::MAX / 4);
                // dt * rate cannot overflow for dt below ~10^19 ns; saturate anyway.
                let add = dt.saturating_mul(i128::from(rate));
                self.tokens = self.tokens.saturating_add(add).min(self.cap());
                self.last = Some(now);
            }
        } else {
            self.last = Some(now);
        }
        self.rate = rate;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sends `pkt`-byte packets as fast as the pacer allows for one simulated second and returns
    /// the bytes let through after the initial burst.
    fn run(rate: u64, pkt: u64) -> u64 {
        let t0 = Instant::now();
        let mut p = Pacer::new(Pacer::burst_for(rate, pkt));
        let mut now = t0;
        // Drain the initial bucket first so only the steady rate is measured.
        while p.delay_until(now, rate, pkt).is_none() {
            p.on_sent(now, pkt);
        }
        let end = t0 + Duration::from_secs(1);
        let mut sent = 0;
        loop {
            match p.delay_until(now, rate, pkt) {
                None => {
                    p.on_sent(now, pkt);
                    sent += pkt;
                }
                Some(t) => {
                    assert!(t > now);
                    if t > end {
                        break;
                    }
                    now = t;
                }
            }
        }
        sent
    }

    #[test]
    fn rate_is_precise() {
        for &(rate, pkt) in &[
            (12_500_000u64, 1400u64), // 100 Mbit/s
            (125_000, 1200),          // 1 Mbit/s
            (1_250_000_000, 1400),    // 10 Gbit/s
            (6_250_000, 1371),        // odd packet size
            (333_333, 1),             // tiny packets, many steps
        ] {
            let sent = run(rate, pkt) as f64;
            let err = (sent - rate as f64).abs() / rate as f64;
            assert!(err < 0.01, "rate {rate} pkt {pkt}: sent {sent} err {err}");
        }
    }

    #[test]
    fn spacing_at_100mbit() {
        let t0 = Instant::now();
        let rate = 12_500_000;
        let mut p = Pacer::new(1400);
        assert_eq!(p.delay_until(t0, rate, 1400), None);
        p.on_sent(t0, 1400);
        let t1 = p.delay_until(t0, rate, 1400).expect("must wait");
        assert_eq!(t1 - t0, Duration::from_micros(112));
        assert_eq!(p.delay_until(t1, rate, 1400), None);
    }

    #[test]
    fn burst_is_capped_and_oversize_allowed() {
        let t0 = Instant::now();
        let rate = 1_000_000;
        let mut p = Pacer::new(3000);
        // After a long idle period only `burst` bytes may go at once.
        let later = t0 + Duration::from_secs(10);
        assert!(p.delay_until(later, rate, 1000).is_none());
        p.on_sent(later, 1000);
        p.on_sent(later, 1000);
        p.on_sent(later, 1000);
        assert!(p.delay_until(later, rate, 1000).is_some());
        // A packet larger than the bucket goes once the bucket is full, and leaves debt.
        let full = later + Duration::from_millis(3);
        assert!(p.delay_until(full, rate, 5000).is_none());
        p.on_sent(full, 5000);
        let next = p.delay_until(full, rate, 1000).expect("in debt");
        assert_eq!(next - full, Duration::from_millis(3));
        assert_eq!(Pacer::burst_for(12_500_000, 1400), 12_500);
        assert_eq!(Pacer::burst_for(100_000, 1400), 2800);
    }

    #[test]
    fn time_going_backwards_is_harmless() {
        let t0 = Instant::now() + Duration::from_secs(1);
        let mut p = Pacer::new(1000);
        p.on_sent(t0, 1000);
        let earlier = t0 - Duration::from_millis(500);
        let t = p.delay_until(earlier, 1000, 1000).expect("must wait");
        assert!(t >= earlier);
        assert!(
            p.delay_until(t0 + Duration::from_secs(1), 1000, 1000)
                .is_none()
        );
    }
}
