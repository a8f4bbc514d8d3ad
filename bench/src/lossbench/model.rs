//! What the loss-emulation comparison measures and reports: the named link profiles, the
//! tunnels, and one [`Cell`] of figures per (profile, tunnel). Plain data, serialisable, so the
//! runner fills it and the report ([`super::report`]) renders it without knowing how it was
//! measured.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::impair::{BurstLoss, Impairment};

/// IPv4 (20) + TCP with timestamps (32): the headers of a full-size TCP segment.
pub const TCP_IPV4_HEADERS: u32 = 52;

/// A named emulated link; both directions get the same impairment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Profile {
    /// Short name used on the command line and in file names (`rtt50-5pct`).
    pub name: String,
    /// Round-trip time added by the link (half each way).
    pub rtt_ms: u64,
    /// Bottleneck rate each way, bits per second of IP packets.
    pub rate_bps: u64,
    /// Random loss each way (0.05 = 5%).
    pub loss: f64,
    /// Gilbert-Elliott burst loss each way: mean burst length, with `loss` as its long-run
    /// rate; None for independent losses.
    pub burst: Option<f64>,
    /// The bottleneck's drop-tail queue, in time at the rate.
    pub queue_ms: u64,
    /// The devices' MTU.
    pub mtu: u32,
}

impl Profile {
    /// The profile's ceiling C: rate x (1 - loss) x the payload share of a full-size TCP/IPv4
    /// packet on this link, in bits per second of delivered payload. Losses happen after the
    /// bottleneck (see `impair::decide`), so a lost packet has used its share of the rate.
    pub fn ceiling_bps(&self) -> f64 {
        let share =
            f64::from(self.mtu.saturating_sub(TCP_IPV4_HEADERS)) / f64::from(self.mtu.max(1));
        self.rate_bps as f64 * (1.0 - self.loss) * share
    }

    /// The impairment of each direction.
    pub fn impairment(&self) -> Impairment {
        let mut imp = Impairment {
            delay: Duration::from_millis(self.rtt_ms) / 2,
            rate_bits_per_sec: Some(self.rate_bps),
            queue: Duration::from_millis(self.queue_ms),
            ..Impairment::default()
        };
        match self.burst {
            Some(mean_burst) => {
                imp.burst_loss = Some(BurstLoss {
                    mean_loss: self.loss,
                    mean_burst,
                })
            }
            None => imp.loss = self.loss,
        }
        imp
    }

    /// One line for tables: `50 ms RTT, 100 Mbit/s, 5% loss`.
    pub fn describe(&self) -> String {
        let rate = if self.rate_bps.is_multiple_of(1_000_000) {
            format!("{} Mbit/s", self.rate_bps / 1_000_000)
        } else {
            format!("{:.1} Mbit/s", self.rate_bps as f64 / 1e6)
        };
        let loss = match (self.loss, self.burst) {
            (0.0, _) => "no loss".to_owned(),
            (l, None) => format!("{}% loss", l * 100.0),
            (l, Some(b)) => format!("{}% loss in bursts of {b}", l * 100.0),
        };
        if self.rtt_ms == 0 {
            format!("{rate}, {loss}")
        } else {
            format!("{} ms RTT, {rate}, {loss}", self.rtt_ms)
        }
    }
}

/// The profiles the issue names, in report order.
pub fn standard_profiles() -> Vec<Profile> {
    let p = |name: &str, rtt_ms, mbit: u64, loss, burst| Profile {
        name: name.to_owned(),
        rtt_ms,
        rate_bps: mbit * 1_000_000,
        loss,
        burst,
        // A drop-tail queue of about one path round trip (at least 20 ms), the classic sizing.
        queue_ms: rtt_ms.max(20),
        mtu: 1500,
    };
    vec![
        p("clean", 0, 200, 0.0, None),
        p("rtt50", 50, 100, 0.0, None),
        p("rtt50-1pct", 50, 100, 0.01, None),
        p("rtt50-5pct", 50, 100, 0.05, None),
        p("rtt100-10pct", 100, 50, 0.10, None),
        p("rtt50-burst3pct", 50, 100, 0.03, Some(3.0)),
    ]
}

/// The figures of one tunnel on one profile. A figure is None when its measurement failed or
/// does not apply (CPU of plain TCP, which has no tunnel process); `errors` says why.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Cell {
    pub profile: String,
    pub tunnel: String,
    /// Bulk goodput (iperf3, one TCP stream, after the warm-up), bits per second: the median
    /// of [`Cell::goodput_runs_bps`].
    pub goodput_bps: Option<f64>,
    /// Each bulk run's goodput, in the order run.
    #[serde(default)]
    pub goodput_runs_bps: Vec<f64>,
    /// 64-byte request/response round trips: median and 99th percentile, microseconds.
    pub rr_p50_us: Option<f64>,
    pub rr_p99_us: Option<f64>,
    /// Requests without an answer by the end of the run.
    pub rr_unanswered: Option<u64>,
    /// IP bytes offered to the link (both directions) per payload byte delivered, over all
    /// bulk runs (warm-ups included).
    pub wire_per_delivered: Option<f64>,
    /// CPU seconds (user + system) of the tunnel's processes on both nodes per GB delivered.
    pub cpu_s_per_gb: Option<f64>,
    /// Share of the emulator's releases more than 1 ms late during this cell (a starved
    /// emulator shows here).
    pub late_share: f64,
    /// What went wrong, if anything (timeouts, a tunnel that did not come up).
    pub errors: Vec<String>,
}

/// A whole run: what was measured, where and when.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// The command line that produced it.
    pub command: String,
    /// UTC date and time of the start (`2026-11-22 13:40 UTC`).
    pub date: String,
    /// CPU model, core count, kernel.
    pub machine: String,
    /// The kernel's default TCP congestion control.
    pub default_cc: String,
    pub quick: bool,
    /// Bulk runs per cell (the median is quoted); each lasts `bulk_seconds` after a warm-up of
    /// `warmup_seconds`.
    #[serde(default)]
    pub bulk_runs: u64,
    pub bulk_seconds: u64,
    pub warmup_seconds: u64,
    /// Request/response round trips per cell.
    pub rr_count: u64,
    pub profiles: Vec<Profile>,
    /// Tunnel names in column order, and a line describing each.
    pub tunnels: Vec<TunnelInfo>,
    pub cells: Vec<Cell>,
    /// Wall time of the whole run, seconds.
    pub elapsed_seconds: f64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TunnelInfo {
    pub name: String,
    pub description: String,
}

/// The median of `values` (the mean of the middle two for an even count); None when empty.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    })
}

impl Report {
    pub fn cell(&self, profile: &str, tunnel: &str) -> Option<&Cell> {
        self.cells
            .iter()
            .find(|c| c.profile == profile && c.tunnel == tunnel)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ceiling_counts_loss_and_headers() {
        let p = standard_profiles()
            .into_iter()
            .find(|p| p.name == "rtt50-5pct")
            .unwrap();
        // 100 Mbit/s x 0.95 x 1448/1500.
        assert!(
            (p.ceiling_bps() - 91.706_666e6).abs() < 1e3,
            "{}",
            p.ceiling_bps()
        );
        assert_eq!(p.describe(), "50 ms RTT, 100 Mbit/s, 5% loss");
        let imp = p.impairment();
        assert_eq!(imp.delay, Duration::from_millis(25));
        assert_eq!(imp.loss, 0.05);
    }

    #[test]
    fn medians_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[f64::NAN, 5.0]), Some(5.0));
        assert_eq!(median(&[]), None);
    }

    #[test]
    fn burst_profiles_use_the_gilbert_elliott_chain() {
        let p = standard_profiles()
            .into_iter()
            .find(|p| p.burst.is_some())
            .unwrap();
        let imp = p.impairment();
        assert_eq!(imp.loss, 0.0);
        assert_eq!(
            imp.burst_loss,
            Some(BurstLoss {
                mean_loss: 0.03,
                mean_burst: 3.0
            })
        );
        assert_eq!(
            p.describe(),
            "50 ms RTT, 100 Mbit/s, 3% loss in bursts of 3"
        );
    }
}
