//! Runs the real `ctl` binary against a missing socket and against a scripted stand-in for the
//! engine's control socket.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::thread;

use engine_api::control::{self, Request, Response, Stats, Status};

fn ctl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ctl"))
        .args(args)
        .output()
        .expect("the ctl binary runs")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A private directory for sockets, removed when dropped. Kept short: socket paths are limited
/// to 107 bytes.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let path = std::env::temp_dir().join(format!("coretun-ctl-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        Self(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Serves one connection: answers each request line with `answer(request)`, then hangs up.
fn fake_engine(
    socket: &Path,
    requests: usize,
    answer: impl Fn(&Request) -> Response + Send + 'static,
) -> thread::JoinHandle<Vec<Request>> {
    let listener = UnixListener::bind(socket).unwrap();
    thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        let mut reader = BufReader::new(stream);
        let mut seen = Vec::new();
        for _ in 0..requests {
            let mut line = Vec::new();
            reader.read_until(b'\n', &mut line).unwrap();
            let request = Request::parse(&line).expect("ctl sends a well-formed request line");
            reader
                .get_mut()
                .write_all(&answer(&request).to_line())
                .unwrap();
            seen.push(request);
        }
        seen
    })
}

#[test]
fn version_prints_package_version() {
    let out = ctl(&["--version"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        stdout(&out).trim(),
        format!("ctl {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn help_lists_subcommands_and_default_socket() {
    let out = ctl(&["--help"]);
    assert_eq!(out.status.code(), Some(0));
    let text = stdout(&out);
    for word in [
        "status",
        "stats",
        "reload",
        "--socket",
        control::DEFAULT_SOCKET_PATH,
    ] {
        assert!(text.contains(word), "help lacks {word}:\n{text}");
    }
    let out = ctl(&["stats", "--help"]);
    let text = stdout(&out);
    for word in ["--json", "--watch", "--interval"] {
        assert!(text.contains(word), "stats help lacks {word}:\n{text}");
    }
}

#[test]
fn missing_engine_is_reported_for_every_command() {
    let dir = TempDir::new("absent");
    let socket = dir.path().join("engine.sock");
    for command in [
        &["status"][..],
        &["stats", "--json"],
        &["stats", "--watch"],
        &["metrics"],
        &["peers"],
        &["maps", "--json"],
        &["reload"],
    ] {
        let mut args = vec!["-s", socket.to_str().unwrap()];
        args.extend_from_slice(command);
        let out = ctl(&args);
        assert_eq!(out.status.code(), Some(1), "{command:?}");
        assert_eq!(stdout(&out), "");
        assert_eq!(
            stderr(&out),
            format!(
                "ctl: cannot reach the engine at {}: No such file or directory (is it running?)\n",
                socket.display()
            )
        );
    }
}

#[test]
fn status_from_an_engine() {
    let dir = TempDir::new("status");
    let socket = dir.path().join("engine.sock");
    let server = fake_engine(&socket, 1, |_| {
        Response::Status(Status {
            engine_version: "9.9.9".into(),
            config: "/etc/coretun/config.yaml".into(),
            uptime_secs: 3_725,
            shards: 2,
            backend: "epoll".into(),
            sessions: 5,
            streams: 17,
        })
    });
    let out = ctl(&["status", "--socket", socket.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.starts_with("engine 9.9.9 is running\n"), "{text}");
    assert!(text.contains("1h02m05s"), "{text}");
    assert!(text.contains("streams   17"), "{text}");
    assert!(text.contains("shards    2 (epoll)"), "{text}");
    let requests = server.join().unwrap();
    assert_eq!(requests, [Request::new(control::Command::Status)]);
}

#[test]
fn stats_json_from_an_engine() {
    let dir = TempDir::new("stats");
    let socket = dir.path().join("engine.sock");
    let stats = Stats {
        packets_sent: 10,
        bytes_received: 20_000,
        ..Stats::default()
    };
    let answer = stats.clone();
    let server = fake_engine(&socket, 1, move |_| Response::Stats(answer.clone()));
    let out = ctl(&["-s", socket.to_str().unwrap(), "stats", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let printed: Stats = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(printed, stats);
    assert_eq!(
        server.join().unwrap(),
        [Request::new(control::Command::Stats)]
    );
}

#[test]
fn refused_reload_exits_1_with_the_reason() {
    let dir = TempDir::new("reload");
    let socket = dir.path().join("engine.sock");
    let server = fake_engine(&socket, 1, |_| Response::Error {
        message: "config.yaml:3:7: unknown field `lisen`".into(),
    });
    let out = ctl(&["-s", socket.to_str().unwrap(), "reload"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out),
        "ctl: the engine refused `reload`: config.yaml:3:7: unknown field `lisen`\n"
    );
    assert_eq!(
        server.join().unwrap(),
        [Request::new(control::Command::Reload)]
    );
}

#[test]
fn reload_prints_what_changed() {
    let dir = TempDir::new("reloaded");
    let socket = dir.path().join("engine.sock");
    let server = fake_engine(&socket, 1, |_| {
        Response::Reloaded {
        maps: 2,
        changes: vec![
            "map 11 added (tcp 127.0.0.1:9000 -> peer edge)".into(),
            "map 12 removed (tcp 127.0.0.1:9001 -> peer edge); its listener and connections are closed".into(),
        ],
        restart_needed: vec!["listen: 0.0.0.0:4000 -> 0.0.0.0:4001 needs a restart (not applied)".into()],
    }
    });
    let out = ctl(&["-s", socket.to_str().unwrap(), "reload"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "reloaded: 2 maps in effect
  map 11 added (tcp 127.0.0.1:9000 -> peer edge)
  map 12 removed (tcp 127.0.0.1:9001 -> peer edge); its listener and connections are closed
  listen: 0.0.0.0:4000 -> 0.0.0.0:4001 needs a restart (not applied)
"
    );
    server.join().unwrap();

    let server = fake_engine(&socket_again(&dir), 1, |_| Response::Reloaded {
        maps: 2,
        changes: Vec::new(),
        restart_needed: Vec::new(),
    });
    let out = ctl(&["-s", socket_again(&dir).to_str().unwrap(), "reload"]);
    assert_eq!(stdout(&out), "reloaded: no changes; 2 maps in effect\n");
    server.join().unwrap();
}

fn socket_again(dir: &TempDir) -> PathBuf {
    dir.path().join("engine2.sock")
}

#[test]
fn watch_ends_with_an_error_when_the_engine_goes_away() {
    let dir = TempDir::new("watch");
    let socket = dir.path().join("engine.sock");
    // Two samples, then the stand-in hangs up: ctl must notice and fail rather than spin.
    let server = fake_engine(&socket, 2, |_| Response::Stats(Stats::default()));
    let out = ctl(&["-s", socket.to_str().unwrap(), "stats", "--watch", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stdout(&out).lines().count(), 2, "{}", stdout(&out));
    assert!(
        stderr(&out).contains("closed the connection without answering"),
        "{}",
        stderr(&out)
    );
    assert_eq!(server.join().unwrap().len(), 2);
}

/// The engine's socket is mode 0600 and owned by the engine's user: anyone else is told that
/// they lack permission and what to do, not that the engine is down. As root, ctl runs as
/// `nobody`; as another user, the socket is made inaccessible to that user instead.
#[test]
fn permission_denied_is_explained() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use std::os::unix::process::CommandExt;

    let dir = TempDir::new("perm");
    let socket = dir.path().join("engine.sock");
    let _listener = UnixListener::bind(&socket).unwrap();
    let me = std::fs::metadata(&socket).unwrap().uid();
    let mut command = Command::new(env!("CARGO_BIN_EXE_ctl"));
    command.args(["-s", socket.to_str().unwrap(), "status"]);
    if me == 0 {
        std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600)).unwrap();
        // The socket's directory must let `nobody` through to the socket itself.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        command.uid(65534).gid(65534);
    } else {
        std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o000)).unwrap();
    }
    let out = command.output().expect("ctl runs");
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(stdout(&out), "");
    assert_eq!(
        stderr(&out),
        format!(
            "ctl: cannot reach the engine at {}: Permission denied (the control socket is open \
             only to the engine's user: run ctl as that user or as root)\n",
            socket.display()
        )
    );
}

#[test]
fn metrics_peers_and_maps_from_an_engine() {
    let dir = TempDir::new("metrics");
    let socket = dir.path().join("engine.sock");
    let map = control::MapRow {
        id: 100,
        kind: "listen".into(),
        peer: "server".into(),
        addr: "127.0.0.1:9000".into(),
        connections: 2,
        bytes_in: 4096,
        ..control::MapRow::default()
    };
    let stats = Stats {
        uptime_secs: 7,
        per_shard: vec![Stats {
            bytes_sent: 1234,
            map_rows: vec![map.clone()],
            ..Stats::default()
        }],
        ..Stats::default()
    };
    let server = fake_engine(&socket, 1, move |_| Response::Stats(stats.clone()));
    let out = ctl(&["-s", socket.to_str().unwrap(), "metrics"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("# TYPE coretun_bytes_sent_total counter\n"),
        "{text}"
    );
    assert!(
        text.contains("coretun_bytes_sent_total{shard=\"0\"} 1234\n"),
        "{text}"
    );
    assert!(
        text.contains("coretun_map_bytes_in_total{shard=\"0\",map=\"100\",kind=\"listen\"} 4096\n"),
        "{text}"
    );
    assert_eq!(
        server.join().unwrap(),
        [Request::new(control::Command::Stats)]
    );

    let _ = std::fs::remove_file(&socket);
    let server = fake_engine(&socket, 1, move |_| Response::Maps {
        maps: vec![map.clone()],
    });
    let out = ctl(&["-s", socket.to_str().unwrap(), "maps"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.starts_with("MAP"), "{text}");
    assert!(text.contains("127.0.0.1:9000"), "{text}");
    assert_eq!(
        server.join().unwrap(),
        [Request::new(control::Command::Maps)]
    );

    let _ = std::fs::remove_file(&socket);
    let server = fake_engine(&socket, 1, move |_| Response::Peers {
        peers: vec![control::PeerRow {
            name: "server".into(),
            addr: "10.0.0.1:4433".into(),
            state: "connecting".into(),
            ..control::PeerRow::default()
        }],
    });
    let out = ctl(&["-s", socket.to_str().unwrap(), "peers", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let peers: Vec<control::PeerRow> = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(peers[0].state, "connecting");
    assert_eq!(
        server.join().unwrap(),
        [Request::new(control::Command::Peers)]
    );
}

#[test]
fn usage_errors_exit_2() {
    for args in [&[][..], &["restart"], &["status", "--json"]] {
        let out = ctl(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
    }
}
