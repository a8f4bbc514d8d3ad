//! The comparison's main loop: for each profile an emulated link ([`Link`]), for each tunnel on
//! it a bulk transfer and a request/response probe, each bounded in time; a failure is written
//! into its cell and the run goes on. The link and every process are torn down by their
//! handles, also when the run is interrupted.

use std::fs;
use std::io;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use super::measure;
use super::model::{Cell, Profile, Report, median};
use super::process::{Proc, STOP};
use super::progress::Progress;
use super::tunnel::{Kind, Tools, Tunnel};
use crate::impair::RelayStats;
use crate::linkem::{Link, LinkConfig};

/// Planned set-up and tear-down time of a tunnel, for the progress estimate.
const START_PLAN: Duration = Duration::from_secs(1);

#[derive(Debug, Clone)]
pub struct Options {
    pub profiles: Vec<Profile>,
    pub tunnels: Vec<Tunnel>,
    /// Bulk runs per cell (the median goodput is quoted), each iperf3 `-t` (measured) after
    /// `-O` (warm-up, not measured).
    pub bulk_runs: u64,
    pub bulk_seconds: u64,
    pub warmup_seconds: u64,
    pub rr_count: u64,
    pub rr_interval: Duration,
    pub quick: bool,
    /// Seed of the link's random decisions (the same for every profile and tunnel).
    pub seed: u64,
    /// The command line, for the report.
    pub command: String,
}

impl Options {
    fn step_plans(&self) -> [Duration; 3] {
        [
            START_PLAN,
            Duration::from_secs((self.bulk_seconds + self.warmup_seconds + 1) * self.bulk_runs),
            self.rr_interval * u32::try_from(self.rr_count).unwrap_or(u32::MAX)
                + Duration::from_secs(1),
        ]
    }
}

/// Runs every (profile, tunnel) cell; Err only for what stops the whole run (no link can be
/// made, or an interrupt).
pub fn run(tools: &Tools, opts: &Options) -> io::Result<Report> {
    let started = Instant::now();
    let plans = opts.step_plans();
    let cells = opts.profiles.len() * opts.tunnels.len();
    let mut progress = Progress::new(plans.iter().copied().cycle().take(3 * cells).collect());
    let mut report = Report {
        command: opts.command.clone(),
        date: utc_now(),
        machine: machine(),
        quick: opts.quick,
        bulk_runs: opts.bulk_runs,
        bulk_seconds: opts.bulk_seconds,
        warmup_seconds: opts.warmup_seconds,
        rr_count: opts.rr_count,
        profiles: opts.profiles.clone(),
        ..Report::default()
    };
    for profile in &opts.profiles {
        let imp = profile.impairment();
        let link = Link::start(LinkConfig {
            a_to_b: imp.clone(),
            b_to_a: imp,
            seed: opts.seed,
            mtu: profile.mtu,
        })?;
        if report.default_cc.is_empty() {
            report.default_cc = default_congestion(&link);
        }
        for tunnel in &opts.tunnels {
            // TCP with the congestion control the kernel picks anyway is the default's
            // measurement again: reuse it rather than spend the time twice.
            let same_as_default = match tunnel.congestion() {
                Some(cc) if cc == report.default_cc => report.cells.iter().find(|c| {
                    c.profile == profile.name
                        && opts
                            .tunnels
                            .iter()
                            .any(|t| t.name == c.tunnel && t.kind == Kind::Tcp(None))
                }),
                _ => None,
            };
            if let Some(default) = same_as_default {
                let cell = Cell {
                    tunnel: tunnel.name.clone(),
                    ..default.clone()
                };
                for _ in 0..3 {
                    progress.finish_step();
                }
                report.cells.push(cell);
                continue;
            }
            let cell = run_cell(tools, opts, &link, profile, tunnel, &mut progress);
            if STOP.load(Relaxed) {
                return Err(io::Error::other("interrupted"));
            }
            report.cells.push(cell);
        }
    }
    let has_default = opts.tunnels.iter().any(|t| t.kind == Kind::Tcp(None));
    report.tunnels = opts
        .tunnels
        .iter()
        .map(|t| {
            let mut info = t.describe(&report.default_cc);
            if has_default && t.congestion() == Some(report.default_cc.as_str()) {
                info.description += " (the kernel's default: the figures of the tcp row, \
                                     measured once)";
            }
            info
        })
        .collect();
    report.elapsed_seconds = started.elapsed().as_secs_f64();
    progress.finish(&format!(
        "done: {} cells in {:.0} s",
        report.cells.len(),
        report.elapsed_seconds
    ));
    Ok(report)
}

fn run_cell(
    tools: &Tools,
    opts: &Options,
    link: &Link,
    profile: &Profile,
    tunnel: &Tunnel,
    progress: &mut Progress,
) -> Cell {
    let mut cell = Cell {
        profile: profile.name.clone(),
        tunnel: tunnel.name.clone(),
        ..Cell::default()
    };
    let label = |step: &str| format!("{} {} {step}", profile.name, tunnel.name);
    let before = both(link);
    progress.begin(&label("start"));
    let scratch = scratch_dir(&profile.name, &tunnel.name);
    let started = fs::create_dir_all(&scratch).and_then(|()| {
        tunnel.start(
            tools,
            profile,
            [link.namespace_a(), link.namespace_b()],
            &scratch,
        )
    });
    progress.finish_step();
    let mut running = match started {
        Ok(running) => running,
        Err(e) => {
            cell.errors.push(format!("start: {e}"));
            progress.finish_step();
            progress.finish_step();
            let _ = fs::remove_dir_all(&scratch);
            return cell;
        }
    };
    let cc = tunnel.congestion();

    progress.begin(&label("bulk"));
    let (mut wire, mut delivered, mut cpu) = (0u64, 0u64, Some(0.0));
    for run in 0..opts.bulk_runs {
        if STOP.load(Relaxed) {
            break;
        }
        match measure::bulk(
            tools,
            link,
            &running,
            cc,
            opts.bulk_seconds,
            opts.warmup_seconds,
        ) {
            Ok(b) => {
                cell.goodput_runs_bps.push(b.goodput_bps);
                wire += b.wire;
                delivered += b.delivered;
                cpu = cpu.zip(b.cpu_seconds).map(|(sum, s)| sum + s);
            }
            Err(e) => cell.errors.push(format!("bulk run {}: {e}", run + 1)),
        }
    }
    cell.goodput_bps = median(&cell.goodput_runs_bps);
    if delivered > 0 {
        cell.wire_per_delivered = Some(wire as f64 / delivered as f64);
        cell.cpu_s_per_gb = cpu.map(|s| s / (delivered as f64 / 1e9));
    }
    progress.finish_step();

    if !STOP.load(Relaxed) {
        progress.begin(&label("request/response"));
        match measure::round_trips(tools, link, &running, cc, opts.rr_count, opts.rr_interval) {
            Ok(r) => {
                cell.rr_p50_us = Some(r.p50_us);
                cell.rr_p99_us = Some(r.p99_us);
                cell.rr_unanswered = Some(r.unanswered);
            }
            Err(e) => cell.errors.push(format!("request/response: {e}")),
        }
    }
    progress.finish_step();
    if let Some(e) = running.exited() {
        cell.errors.push(e);
    }
    drop(running);
    let _ = fs::remove_dir_all(&scratch);
    let during = both(link).minus(&before);
    if during.forwarded > 0 {
        cell.late_share = during.late_releases as f64 / during.forwarded as f64;
    }
    cell
}

/// Both directions' counters added.
fn both(link: &Link) -> RelayStats {
    link.stats_a_to_b() + link.stats_b_to_a()
}

trait Minus {
    fn minus(&self, earlier: &Self) -> Self;
}

impl Minus for RelayStats {
    fn minus(&self, e: &Self) -> Self {
        RelayStats {
            received: self.received - e.received,
            bytes_received: self.bytes_received - e.bytes_received,
            forwarded: self.forwarded - e.forwarded,
            dropped_loss: self.dropped_loss - e.dropped_loss,
            dropped_queue: self.dropped_queue - e.dropped_queue,
            duplicated: self.duplicated - e.duplicated,
            reordered: self.reordered - e.reordered,
            late_releases: self.late_releases - e.late_releases,
        }
    }
}

fn scratch_dir(profile: &str, tunnel: &str) -> PathBuf {
    std::env::temp_dir().join(format!(
        "lossbench-{}-{profile}-{tunnel}",
        std::process::id()
    ))
}

/// The TCP congestion control a new socket in the link's namespaces gets.
fn default_congestion(link: &Link) -> String {
    let cat = PathBuf::from("cat");
    let args = ["/proc/sys/net/ipv4/tcp_congestion_control".to_owned()];
    Proc::spawn("cat", link.namespace_a(), &cat, &args)
        .and_then(|p| p.wait(Duration::from_secs(5)))
        .map(|out| out.stdout.trim().to_owned())
        .unwrap_or_else(|e| format!("unknown ({e})"))
}

fn utc_now() -> String {
    Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

/// CPU model, online CPUs and kernel release.
fn machine() -> String {
    let model = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|k| k.trim().to_owned())
        .unwrap_or_default();
    format!("{model}, {cpus} CPUs, Linux {kernel}")
}
