//! `lossbench`: the loss-emulation comparison ([`bench::lossbench`]). Runs plain TCP, kcptun and
//! the engine across the same emulated links and writes a markdown table, JSON and plots into
//! `--out`. Needs root (network namespaces), iperf3 and kcptun; `scripts/lossbench.sh` builds
//! what it needs and starts it.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Duration;

use bench::linkem;
use bench::lossbench::model::standard_profiles;
use bench::lossbench::process::STOP;
use bench::lossbench::run::{Options, run};
use bench::lossbench::tunnel::{ENGINE_TUNED, Tools, standard_tunnels};
use clap::Parser;

/// Profiles and tunnels of `--quick`.
const QUICK_PROFILES: [&str; 4] = ["clean", "rtt50-5pct", "rtt100-10pct", "rtt50-burst3pct"];
const QUICK_TUNNELS: [&str; 4] = ["tcp", "kcptun", "coretun", "coretun-tuned"];

/// Plain TCP, kcptun and coretun across the same emulated links: goodput, request/response
/// latency, bytes on the wire and CPU. Needs root, iperf3 and kcptun.
#[derive(Debug, Parser)]
#[command(name = "lossbench")]
struct Args {
    /// Fewer profiles and tunnels, shorter runs (about 2 minutes instead of 13).
    #[arg(long)]
    quick: bool,
    /// Results folder (results.md, results.json, plots).
    #[arg(long, default_value = "bench/results/latest")]
    out: PathBuf,
    /// Comma-separated profile names (default: all, or the quick set).
    #[arg(long, value_delimiter = ',')]
    profiles: Vec<String>,
    /// Comma-separated tunnel names (default: all, or the quick set).
    #[arg(long, value_delimiter = ',')]
    tunnels: Vec<String>,
    /// Bulk transfers per cell; the median goodput is quoted (default 3; 1 with --quick).
    #[arg(long)]
    bulk_runs: Option<u64>,
    /// Measured seconds of each bulk transfer (default 4; 3 with --quick).
    #[arg(long)]
    bulk_seconds: Option<u64>,
    /// Warm-up seconds before the measurement (default 2; 1 with --quick).
    #[arg(long)]
    warmup_seconds: Option<u64>,
    /// Request/response round trips per cell, one every 10 ms (default 400; 150 with --quick).
    #[arg(long)]
    rr_count: Option<u64>,
    /// Seed of the link's random decisions.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// The engine binary (default: `engine` beside this program).
    #[arg(long)]
    engine: Option<PathBuf>,
    /// Config lines the coretun-tuned variant adds to both engines' configs (YAML, e.g.
    /// `"mtu: 1472"`); default: the tuned settings described in the report.
    #[arg(long)]
    tuned: Option<String>,
    /// The rr binary (default: `rr` beside this program).
    #[arg(long)]
    rr: Option<PathBuf>,
}

extern "C" fn on_signal(_: libc::c_int) {
    // Only an atomic store: async-signal-safe.
    STOP.store(true, Ordering::Relaxed);
}

fn main() {
    let args = Args::parse();
    if let Err(e) = main_with(args) {
        eprintln!("lossbench: {e}");
        std::process::exit(if STOP.load(Ordering::Relaxed) { 130 } else { 1 });
    }
}

fn main_with(args: Args) -> Result<(), String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("needs root (it makes network namespaces and TUN devices)".into());
    }
    let tools = find_tools(&args)?;
    let opts = options(&args)?;
    for signal in [libc::SIGINT, libc::SIGTERM] {
        let handler: extern "C" fn(libc::c_int) = on_signal;
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { libc::signal(signal, handler as libc::sighandler_t) };
    }
    match linkem::remove_stale_namespaces() {
        Ok(0) => {}
        Ok(n) => eprintln!("lossbench: removed {n} namespaces left by an earlier run"),
        Err(e) => eprintln!("lossbench: cannot list namespaces: {e}"),
    }
    let report = run(&tools, &opts).map_err(|e| e.to_string())?;
    bench::lossbench::report::write(&args.out, &report)
        .map_err(|e| format!("cannot write {}: {e}", args.out.display()))?;
    println!("{}", bench::lossbench::report::markdown(&report));
    eprintln!("lossbench: results in {}", args.out.display());
    Ok(())
}

fn options(args: &Args) -> Result<Options, String> {
    let pick =
        |given: &[String], quick: &[&str], all: Vec<String>| -> Result<Vec<String>, String> {
            let wanted: Vec<String> = if !given.is_empty() {
                given.to_vec()
            } else if args.quick {
                quick.iter().map(|s| s.to_string()).collect()
            } else {
                all.clone()
            };
            match wanted.iter().find(|w| !all.contains(w)) {
                Some(bad) => Err(format!("unknown name `{bad}` (known: {})", all.join(", "))),
                None => Ok(wanted),
            }
        };
    let all_profiles = standard_profiles();
    let all_tunnels = standard_tunnels(
        args.tuned
            .as_deref()
            .unwrap_or(ENGINE_TUNED)
            .replace("\\n", "\n")
            .as_str(),
    );
    let profile_names = pick(
        &args.profiles,
        &QUICK_PROFILES,
        all_profiles.iter().map(|p| p.name.clone()).collect(),
    )?;
    let tunnel_names = pick(
        &args.tunnels,
        &QUICK_TUNNELS,
        all_tunnels.iter().map(|t| t.name.clone()).collect(),
    )?;
    Ok(Options {
        profiles: all_profiles
            .into_iter()
            .filter(|p| profile_names.contains(&p.name))
            .collect(),
        tunnels: all_tunnels
            .into_iter()
            .filter(|t| tunnel_names.contains(&t.name))
            .collect(),
        bulk_runs: args
            .bulk_runs
            .unwrap_or(if args.quick { 1 } else { 3 })
            .max(1),
        bulk_seconds: args.bulk_seconds.unwrap_or(if args.quick { 3 } else { 4 }),
        warmup_seconds: args
            .warmup_seconds
            .unwrap_or(if args.quick { 1 } else { 2 }),
        rr_count: args.rr_count.unwrap_or(if args.quick { 150 } else { 400 }),
        rr_interval: Duration::from_millis(10),
        quick: args.quick,
        seed: args.seed,
        command: std::env::args().collect::<Vec<_>>().join(" "),
    })
}

/// The programs, with a message naming what is missing and how to get it.
fn find_tools(args: &Args) -> Result<Tools, String> {
    let beside = |name: &str| -> Option<PathBuf> {
        let exe = std::env::current_exe().ok()?;
        Some(exe.parent()?.join(name))
    };
    let exists = |p: Option<PathBuf>, what: &str, hint: &str| -> Result<PathBuf, String> {
        match p {
            Some(p) if p.is_file() => Ok(p),
            Some(p) => Err(format!("{what} not found at {} ({hint})", p.display())),
            None => Err(format!("{what} not found ({hint})")),
        }
    };
    let build = "cargo build --release -p engine -p bench";
    let apt = "apt-get install -y iperf3 kcptun";
    Ok(Tools {
        engine: exists(
            args.engine.clone().or_else(|| beside("engine")),
            "engine",
            build,
        )?,
        rr: exists(args.rr.clone().or_else(|| beside("rr")), "rr", build)?,
        iperf3: exists(in_path("iperf3"), "iperf3", apt)?,
        kcptun_client: exists(in_path("kcptun-client"), "kcptun-client", apt)?,
        kcptun_server: exists(in_path("kcptun-server"), "kcptun-server", apt)?,
    })
}

fn in_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|p| Path::is_file(p))
    })
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn command_line_is_consistent() {
        Args::command().debug_assert();
    }

    #[test]
    fn quick_picks_its_sets_and_unknown_names_are_refused() {
        let quick = options(&Args::parse_from(["lossbench", "--quick"])).unwrap();
        assert_eq!(quick.profiles.len(), QUICK_PROFILES.len());
        assert_eq!(quick.tunnels.len(), QUICK_TUNNELS.len());
        assert_eq!((quick.bulk_seconds, quick.rr_count), (3, 150));
        let full = options(&Args::parse_from(["lossbench"])).unwrap();
        assert_eq!(full.profiles.len(), standard_profiles().len());
        let err = options(&Args::parse_from(["lossbench", "--tunnels", "tcp,quic"])).unwrap_err();
        assert!(err.contains("`quic`") && err.contains("kcptun"), "{err}");
    }
}
