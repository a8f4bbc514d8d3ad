//! Rate control: the interface the session drives, dispatching to [`Bbr`] or [`FixedRate`].
//!
//! An enum rather than a trait object: the session calls into the controller for every packet
//! sent and acknowledged, and a `match` on two variants is cheaper and inlinable.
//!
//! Call sequence expected from the session:
//! * [`RateControl::on_packet_sent`] for every packet that counts towards bytes in flight, storing
//!   the returned [`SendSnapshot`] with the packet;
//! * for each ACK frame: [`RateControl::on_packet_acked`] per newly acknowledged packet,
//!   [`RateControl::on_packet_lost`] per packet the ACK made declare lost, then
//!   [`RateControl::on_ack_processed`] once (after the RTT estimator was updated);
//! * [`RateControl::on_packet_lost`] also for time-threshold losses found on a timer;
//! * [`RateControl::on_app_limited`] when the sender ran out of data while the window and the
//!   pacer allowed more;
//! * [`RateControl::on_rto`] when a retransmission timeout fired.

use std::time::{Duration, Instant};

use crate::arq::bbr::{Bbr, BbrConfig};
use crate::arq::delivery::SendSnapshot;
use crate::arq::fixed::FixedRate;
use crate::arq::rtt::RttEstimator;

/// Which controller to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RateControlConfig {
    /// Model-based control that measures the path (default).
    Bbr(BbrConfig),
    /// Pace at a rate the user states (the link's capacity).
    Fixed {
        /// Link capacity, bytes per second.
        bytes_per_sec: u64,
    },
}

impl Default for RateControlConfig {
    fn default() -> Self {
        Self::Bbr(BbrConfig::default())
    }
}

/// A rate controller.
// One controller per session: its size does not matter, an extra indirection on every packet
// would.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum RateControl {
    /// See [`Bbr`].
    Bbr(Bbr),
    /// See [`FixedRate`].
    Fixed(FixedRate),
}

macro_rules! dispatch {
    ($self:expr, $c:ident => $e:expr) => {
        match $self {
            RateControl::Bbr($c) => $e,
            RateControl::Fixed($c) => $e,
        }
    };
}

impl RateControl {
    /// A controller for a connection starting at `now`.
    pub fn new(config: RateControlConfig, now: Instant) -> Self {
        match config {
            RateControlConfig::Bbr(c) => Self::Bbr(Bbr::new(c, now)),
            RateControlConfig::Fixed { bytes_per_sec } => {
                Self::Fixed(FixedRate::new(bytes_per_sec, now))
            }
        }
    }

    /// A packet of `bytes` is sent at `now`; `bytes_in_flight_before` excludes it. Returns the
    /// snapshot to store with the packet.
    #[inline]
    pub fn on_packet_sent(
        &mut self,
        now: Instant,
        bytes: u64,
        bytes_in_flight_before: u64,
    ) -> SendSnapshot {
        dispatch!(self, c => c.on_packet_sent(now, bytes, bytes_in_flight_before))
    }

    /// A packet sent at `sent_time` was newly acknowledged by an ACK frame that the peer says it
    /// held back for `ack_delay` (already capped at the agreed maximum ACK delay).
    #[inline]
    pub fn on_packet_acked(
        &mut self,
        now: Instant,
        snapshot: &SendSnapshot,
        sent_time: Instant,
        bytes: u64,
        ack_delay: Duration,
    ) {
        dispatch!(self, c => c.on_packet_acked(now, snapshot, sent_time, bytes, ack_delay))
    }

    /// A packet sent at `sent_time` was declared lost.
    #[inline]
    pub fn on_packet_lost(
        &mut self,
        now: Instant,
        snapshot: &SendSnapshot,
        sent_time: Instant,
        bytes: u64,
    ) {
        dispatch!(self, c => c.on_packet_lost(now, snapshot, sent_time, bytes))
    }

    /// All packets of one ACK frame were processed; `bytes_in_flight` is after removing them.
    pub fn on_ack_processed(&mut self, now: Instant, rtt: &RttEstimator, bytes_in_flight: u64) {
        dispatch!(self, c => c.on_ack_processed(now, rtt, bytes_in_flight))
    }

    /// The sender had nothing to send while the window allowed more.
    pub fn on_app_limited(&mut self, bytes_in_flight: u64) {
        dispatch!(self, c => c.on_app_limited(bytes_in_flight))
    }

    /// A retransmission timeout fired.
    pub fn on_rto(&mut self, now: Instant) {
        dispatch!(self, c => c.on_rto(now))
    }

    /// Pacing rate in bytes per second (always > 0).
    #[inline]
    pub fn pacing_rate(&self) -> u64 {
        dispatch!(self, c => c.pacing_rate()).max(1)
    }

    /// Bytes allowed in flight.
    #[inline]
    pub fn cwnd(&self) -> u64 {
        dispatch!(self, c => c.cwnd())
    }

    /// Smoothed measured loss ratio (all losses), in `[0, 1]`.
    pub fn loss_rate(&self) -> f64 {
        dispatch!(self, c => c.loss_rate())
    }

    /// Estimated bottleneck bandwidth, bytes per second (for statistics).
    pub fn btl_bw(&self) -> u64 {
        dispatch!(self, c => c.btl_bw())
    }

    /// Name of the controller's state, for statistics.
    pub fn state_name(&self) -> &'static str {
        match self {
            Self::Bbr(b) => b.state_name(),
            Self::Fixed(_) => "fixed",
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::arq::model::{Link, Outcome, run};

    const MTU: u64 = 1400;

    fn bbr() -> RateControlConfig {
        RateControlConfig::Bbr(BbrConfig {
            mtu: MTU,
            ..BbrConfig::default()
        })
    }

    fn mbit(m: u64) -> u64 {
        m * 1_000_000 / 8
    }

    fn link(mbps: u64, rtt_ms: u64, loss: f64) -> Link {
        let rate = mbit(mbps);
        let base_rtt = Duration::from_millis(rtt_ms);
        Link {
            rate,
            base_rtt,
            loss,
            // Drop-tail buffer of one BDP.
            buffer: (rate as u128 * base_rtt.as_nanos() / 1_000_000_000) as u64,
            mtu: MTU,
            seed: 7,
            ack_every: 1,
            max_ack_delay: Duration::ZERO,
        }
    }

    fn report(name: &str, o: &Outcome) {
        // Printed so `cargo test -- --nocapture` shows what the model measured.
        println!(
            "{name}: goodput {:.4} of link*(1-p), btl_bw {:.4} of link, pacing {:.4}, mean queue \
             {:.2} ms, p95 queue {:.2} ms, loss_rate {:.4}, state {}",
            o.goodput_ratio,
            o.bw_ratio,
            o.pacing_ratio,
            o.mean_queue_ms,
            o.p95_queue_ms,
            o.loss_rate,
            o.state
        );
    }

    #[test]
    fn bbr_clean_link_fills_without_queue() {
        let l = link(100, 50, 0.0);
        let o = run(
            bbr(),
            &l,
            Duration::from_secs(12),
            Duration::from_secs(4),
            None,
            None,
        );
        report("clean 100M/50ms", &o);
        assert!(o.goodput_ratio >= 0.97, "{o:?}");
        assert!((o.bw_ratio - 1.0).abs() < 0.03, "{o:?}");
        assert!(o.mean_queue_ms < 8.0, "{o:?}");
        assert_eq!(o.state, "probe_bw");
    }

    #[test]
    fn bbr_random_loss_5pct_keeps_link_full() {
        let l = link(100, 50, 0.05);
        let o = run(
            bbr(),
            &l,
            Duration::from_secs(12),
            Duration::from_secs(4),
            None,
            None,
        );
        report("5% loss 100M/50ms", &o);
        assert!(o.goodput_ratio >= 0.96, "{o:?}");
        assert!((o.bw_ratio - 1.0).abs() < 0.04, "{o:?}");
        assert!((o.loss_rate - 0.05).abs() < 0.01, "{o:?}");
        assert!(o.mean_queue_ms < 10.0, "{o:?}");
    }

    #[test]
    fn bbr_random_loss_10pct_long_rtt() {
        let l = link(50, 100, 0.10);
        let o = run(
            bbr(),
            &l,
            Duration::from_secs(20),
            Duration::from_secs(8),
            None,
            None,
        );
        report("10% loss 50M/100ms", &o);
        assert!(o.goodput_ratio >= 0.93, "{o:?}");
        assert!((o.bw_ratio - 1.0).abs() < 0.05, "{o:?}");
        assert!(o.mean_queue_ms < 20.0, "{o:?}");
    }

    #[test]
    fn bbr_backs_off_when_bottleneck_halves() {
        let l = link(100, 50, 0.05);
        let half = Some((Duration::from_secs(6), mbit(50)));
        let o = run(
            bbr(),
            &l,
            Duration::from_secs(12),
            Duration::from_secs(4),
            half,
            None,
        );
        report("halved 100->50M, 5% loss", &o);
        // Ratios are relative to the final (halved) link rate.
        assert!((o.bw_ratio - 1.0).abs() < 0.06, "{o:?}");
        assert!(o.goodput_ratio >= 0.93, "{o:?}");
        assert!(o.mean_queue_ms < 10.0, "{o:?}");
    }

    #[test]
    fn bbr_small_buffer_random_loss() {
        // A buffer of only 1/8 BDP: probing overflows it, which must not make the estimate run
        // away (queue drops are not compensated) nor collapse.
        let mut l = link(100, 50, 0.02);
        l.buffer /= 8;
        let o = run(
            bbr(),
            &l,
            Duration::from_secs(12),
            Duration::from_secs(4),
            None,
            None,
        );
        report("2% loss, buffer BDP/8", &o);
        assert!(o.goodput_ratio >= 0.90, "{o:?}");
        assert!(o.bw_ratio < 1.1, "{o:?}");
    }

    #[test]
    fn bbr_max_rate_caps() {
        let l = link(100, 50, 0.0);
        let cfg = RateControlConfig::Bbr(BbrConfig {
            max_rate: Some(mbit(40)),
            mtu: MTU,
            ..BbrConfig::default()
        });
        let o = run(
            cfg,
            &l,
            Duration::from_secs(6),
            Duration::from_secs(3),
            None,
            None,
        );
        report("max_rate 40M on 100M", &o);
        assert!(o.pacing_ratio <= 0.4 + 1e-9, "{o:?}");
        assert!(o.goodput_ratio > 0.38, "{o:?}");
    }

    #[test]
    fn fixed_rate_paces_at_stated_rate() {
        let l = link(50, 100, 0.10);
        let cfg = RateControlConfig::Fixed {
            bytes_per_sec: l.rate,
        };
        let o = run(
            cfg,
            &l,
            Duration::from_secs(6),
            Duration::from_secs(3),
            None,
            None,
        );
        report("fixed 50M, 10% loss", &o);
        assert_eq!(o.pacing_ratio, 1.0);
        assert!(o.goodput_ratio >= 0.97, "{o:?}");
        assert!((o.loss_rate - 0.10).abs() < 0.02, "{o:?}");
        assert_eq!(o.state, "fixed");
    }

    #[test]
    fn rto_recovers_quickly() {
        // A spurious timeout at 5 s halves the estimate; 1 s later the link is full again.
        let l = link(100, 50, 0.05);
        let rto = Some(Duration::from_secs(5));
        let o = run(
            bbr(),
            &l,
            Duration::from_secs(8),
            Duration::from_secs(2),
            None,
            rto,
        );
        report("spurious RTO at 5 s", &o);
        assert!(o.goodput_ratio >= 0.95, "{o:?}");
        assert!((o.bw_ratio - 1.0).abs() < 0.05, "{o:?}");
        // Even after many timeouts in a row the rate and window stay positive.
        let mut rc = RateControl::new(bbr(), Instant::now());
        for _ in 0..70 {
            rc.on_rto(Instant::now());
        }
        assert!(rc.pacing_rate() > 0);
        assert!(rc.cwnd() >= 4 * MTU);
    }

    #[test]
    fn bbr_climbs_out_of_a_low_rate_under_delayed_acks() {
        // A short path (0.3 ms) whose receiver acknowledges every 4th packet or after 5 ms, like
        // a session's. The bottleneck starts at 2 Mbit/s (on a real host: a peer starved of CPU),
        // so the estimate settles there; then the bottleneck becomes 400 Mbit/s. At 2 Mbit/s
        // fewer than 4 packets go out per 5 ms, so every ACK is held for the full delay. Taking
        // that delay for path delay capped every delivery-rate sample at a packet or two per
        // 5 ms and made every round look like a standing queue: the sender stayed at ~0.002
        // Gbit/s for seconds after the bottleneck was gone.
        let mut l = link(2, 0, 0.0);
        l.base_rtt = Duration::from_micros(300);
        l.buffer = 1 << 20;
        l.ack_every = 4;
        l.max_ack_delay = Duration::from_millis(5);
        let faster = Some((Duration::from_secs(3), mbit(400)));
        let o = run(
            bbr(),
            &l,
            Duration::from_secs(4),
            Duration::from_millis(500),
            faster,
            None,
        );
        report("2->400M/0.3ms, delayed ACKs", &o);
        assert!(o.goodput_ratio >= 0.9, "{o:?}");
        assert!(o.bw_ratio > 0.9, "{o:?}");
    }

    #[test]
    fn bbr_other_paths() {
        // (Mbit/s, RTT ms, loss, simulated seconds): short and long RTTs, slow and fast links.
        for &(mbps, rtt_ms, loss, secs) in &[
            (10u64, 10u64, 0.05f64, 8u64),
            (100, 2, 0.05, 4),
            (20, 300, 0.05, 24),
            (500, 20, 0.05, 4),
        ] {
            let l = link(mbps, rtt_ms, loss);
            let o = run(
                bbr(),
                &l,
                Duration::from_secs(secs),
                Duration::from_secs(secs / 3),
                None,
                None,
            );
            report(&format!("{mbps}M/{rtt_ms}ms {loss}"), &o);
            assert!(o.goodput_ratio >= 0.95, "{mbps}M/{rtt_ms}ms: {o:?}");
            assert!(o.bw_ratio < 1.08, "{mbps}M/{rtt_ms}ms: {o:?}");
            // Within 15% of the RTT, or 1 ms (the pacer's burst) on very short paths.
            assert!(
                o.mean_queue_ms < (0.15 * rtt_ms as f64).max(1.0),
                "{mbps}M/{rtt_ms}ms: {o:?}"
            );
        }
    }
}
