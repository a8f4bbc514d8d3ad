//! The `lossbench` command end to end, small: one lossy profile, plain TCP, kcptun and the
//! engine, short runs. Checks that every tunnel carried data and was measured, that the results
//! folder is complete, and that an interrupted run leaves no namespace or process behind.
//! Needs root, iperf3, kcptun and the engine binary (built by `cargo test --workspace`).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use bench::lossbench::model::Report;

fn lossbench() -> &'static str {
    env!("CARGO_BIN_EXE_lossbench")
}

/// The engine binary beside this package's binaries (same target directory and profile).
fn engine() -> PathBuf {
    let engine = Path::new(lossbench()).with_file_name("engine");
    assert!(
        engine.is_file(),
        "{} is missing: build it first (cargo build -p engine, or run cargo test --workspace)",
        engine.display()
    );
    engine
}

fn out_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("lossbench-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn namespaces_of(pid: u32) -> Vec<String> {
    let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(&format!("lkem{pid}x")))
        .map(str::to_owned)
        .collect()
}

/// The prefix of the scratch folders (engine configs) of lossbench process `pid`.
fn scratch_of(pid: u32) -> String {
    format!("lossbench-{pid}-")
}

/// Processes whose command line mentions `needle`.
fn processes_mentioning(needle: &str) -> usize {
    let out = Command::new("pgrep").args(["-f", needle]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).lines().count()
}

#[test]
fn a_small_comparison_measures_every_tunnel_and_writes_the_results() {
    let out = out_dir("small");
    let run = Command::new(lossbench())
        .args([
            "--profiles",
            "rtt50-5pct",
            "--tunnels",
            "tcp,tcp-bbr,kcptun,coretun",
            "--bulk-runs",
            "2",
            "--bulk-seconds",
            "2",
            "--warmup-seconds",
            "1",
            "--rr-count",
            "40",
            "--engine",
        ])
        .arg(engine())
        .arg("--out")
        .arg(&out)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = run.id();
    let run = run.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "lossbench failed:\n{stderr}");
    let report: Report =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    assert_eq!(report.cells.len(), 4, "{report:#?}");
    for cell in &report.cells {
        assert!(cell.errors.is_empty(), "{}: {:?}", cell.tunnel, cell.errors);
        assert_eq!(cell.goodput_runs_bps.len(), 2, "{cell:?}");
        assert!(cell.goodput_bps.is_some_and(|g| g > 0.0), "{cell:?}");
        assert!(cell.rr_p99_us.is_some_and(|p| p > 0.0), "{cell:?}");
        // Every tunnel crosses the 50 ms link: no round trip can be faster.
        assert!(cell.rr_p50_us.is_some_and(|p| p >= 50_000.0), "{cell:?}");
        assert!(cell.wire_per_delivered.is_some_and(|w| w > 1.0), "{cell:?}");
        let is_tcp = cell.tunnel.starts_with("tcp");
        assert_eq!(cell.cpu_s_per_gb.is_some(), !is_tcp, "{cell:?}");
    }
    let md = std::fs::read_to_string(out.join("results.md")).unwrap();
    for tunnel in ["tcp", "tcp-bbr", "kcptun", "coretun"] {
        assert!(md.contains(&format!("| {tunnel} | ")), "{md}");
    }
    for plot in [
        "goodput_vs_loss.svg",
        "p99_vs_loss.svg",
        "goodput_share.svg",
    ] {
        let svg = std::fs::read_to_string(out.join(plot)).unwrap();
        assert!(svg.contains("<svg") && svg.contains("coretun"), "{plot}");
    }
    // Progress was shown, and the run cleaned up after itself.
    assert!(stderr.contains("done: 4 cells"), "{stderr}");
    assert_eq!(
        processes_mentioning(&scratch_of(pid)),
        0,
        "tunnel processes left"
    );
    assert!(namespaces_of(pid).is_empty(), "{:?}", namespaces_of(pid));
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn an_interrupted_run_removes_its_namespaces_and_processes() {
    let out = out_dir("interrupted");
    let mut child = Command::new(lossbench())
        .args([
            "--profiles",
            "rtt50",
            "--tunnels",
            "coretun",
            "--bulk-seconds",
            "30",
            "--engine",
        ])
        .arg(engine())
        .arg("--out")
        .arg(&out)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    // Wait until the engines run inside the link's namespaces.
    let deadline = Instant::now() + Duration::from_secs(20);
    while processes_mentioning(&scratch_of(pid)) < 2 {
        assert!(Instant::now() < deadline, "the engines never started");
        thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(namespaces_of(pid).len(), 2);
    let kill = Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "exit status after SIGINT");
    assert!(namespaces_of(pid).is_empty(), "{:?}", namespaces_of(pid));
    assert_eq!(
        processes_mentioning(&scratch_of(pid)),
        0,
        "engines left running"
    );
    assert!(
        !out.join("results.json").exists(),
        "no results from a cut run"
    );
}
