//! Reloading a running engine's config (`ctl reload`, SIGHUP): maps added and removed while a
//! bulk transfer runs on another map, a broken file rejected with its line and field while
//! traffic goes on, and a change that needs a restart reported as such.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

use common::data::{seeded_bytes, seeded_fingerprint};
use common::net::{echo_check, echo_server, exchange, free_tcp_addr, free_udp_addr, sink_server};
use common::node::{Engine, NodeConfig};
use common::{BULK_TIMEOUT, SESSION_TIMEOUT, SMALL_TIMEOUT, Tunnel, TunnelSpec, wait_echo};

const A: u32 = 10;
const B: u32 = 11;
const C: u32 = 12;

/// The `ctl` binary of this workspace, built (once per test process) next to the engine's.
/// Each test calls it before starting engines, so the build never competes with their traffic.
fn ctl_binary() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let engine = Path::new(env!("CARGO_BIN_EXE_engine"));
            let mut build = Command::new(env!("CARGO"));
            build
                .args(["build", "--quiet", "-p", "ctl", "--bin", "ctl"])
                .current_dir(env!("CARGO_MANIFEST_DIR"));
            // What `cargo test` sets for this test binary must not reach the build: some build
            // scripts rerun when, say, `CARGO_MANIFEST_DIR` differs, and the next `cargo test`
            // would then rebuild them back.
            for (name, _) in std::env::vars_os() {
                let name = name.to_string_lossy();
                let ours = [
                    "CARGO_PKG_",
                    "CARGO_MANIFEST_",
                    "CARGO_CRATE_",
                    "CARGO_BIN_",
                ]
                .iter()
                .any(|prefix| name.starts_with(prefix))
                    || ["CARGO_PRIMARY_PACKAGE", "CARGO_TARGET_TMPDIR", "OUT_DIR"]
                        .contains(&name.as_ref());
                if ours {
                    build.env_remove(name.as_ref());
                }
            }
            if engine
                .parent()
                .and_then(Path::file_name)
                .is_some_and(|dir| dir == "release")
            {
                build.arg("--release");
            }
            let status = build
                .status()
                .unwrap_or_else(|e| panic!("running cargo build -p ctl: {e}"));
            assert!(status.success(), "cargo build -p ctl failed: {status}");
            engine.with_file_name("ctl")
        })
        .clone()
}

/// Runs `ctl -s <socket> <args>`.
fn ctl(socket: &Path, args: &[&str]) -> Output {
    Command::new(ctl_binary())
        .arg("-s")
        .arg(socket)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running ctl: {e}"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `ctl reload` of `engine`, which must succeed; its stdout.
fn reload_ok(engine: &Engine) -> String {
    let out = ctl(&engine.config().control, &["reload"]);
    assert!(
        out.status.success(),
        "ctl reload of `{}` failed ({}): {}{}",
        engine.label(),
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// Rewrites the config file `engine` was started from.
fn rewrite(dir: &Path, engine: &Engine, config: &NodeConfig) -> PathBuf {
    let path = dir.join(format!("{}.yaml", engine.label()));
    std::fs::write(&path, config.to_yaml())
        .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    path
}

/// Opens a connection through a map and checks one small round trip; the connection stays open.
fn open_echo(addr: SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    stream
        .set_read_timeout(Some(SMALL_TIMEOUT))
        .expect("read timeout");
    let payload = seeded_bytes(0xC0C0, 1024);
    stream
        .write_all(&payload)
        .expect("write to the C connection");
    let mut back = vec![0; payload.len()];
    stream
        .read_exact(&mut back)
        .expect("echo through the C connection");
    assert_eq!(back, payload);
    stream
}

#[test]
fn reload_adds_and_removes_maps_during_a_transfer() {
    const LEN: u64 = 64 << 20;
    const UP_SEED: u64 = 0x5E10_0001;
    const DOWN_SEED: u64 = 0x5E10_0002;
    ctl_binary();
    let (sink, reports) = sink_server(DOWN_SEED, LEN);
    let echo = echo_server();
    // Capped so that the transfer takes at least 10 s each way (64 MiB at 50 Mbit/s) and is
    // certainly still running when the maps change.
    let mut tunnel = Tunnel::start(
        "reload-maps",
        &TunnelSpec::new(&[(A, sink.addr()), (C, echo.addr())], &[A, C])
            .extra("rate: 50mbit", "rate: 50mbit"),
    );
    tunnel.wait_echo(C, SESSION_TIMEOUT);
    let dir = tunnel.dir.path().to_owned();

    // An idle connection on C, and a 64 MiB exchange on A.
    let mut on_c = open_echo(tunnel.map_addr(C));
    let a_addr = tunnel.map_addr(A);
    let transfer = thread::spawn(move || {
        let start = Instant::now();
        let stream = TcpStream::connect(a_addr).expect("connect to map A");
        exchange(stream, UP_SEED, LEN, start + BULK_TIMEOUT)
    });
    tunnel
        .client
        .wait_stats("the transfer on A under way", BULK_TIMEOUT, |s| {
            s.bytes_sent > 4 << 20
        });

    // The server allows B; the client adds map B and drops map C.
    let mut server_config = tunnel.server.config().clone();
    server_config = server_config.allow(B, echo.addr());
    rewrite(&dir, &tunnel.server, &server_config);
    let out = reload_ok(&tunnel.server);
    assert!(out.contains("allow 11 added"), "{out}");

    let mut client_config = tunnel.client.config().clone();
    client_config.maps.retain(|(id, _, _)| *id != C);
    let b_addr = free_tcp_addr();
    client_config = client_config.map(B, b_addr, "server");
    let client_path = rewrite(&dir, &tunnel.client, &client_config);
    let out = reload_ok(&tunnel.client);
    assert!(
        out.contains(&format!("map 11 added (tcp {b_addr} -> peer server)")),
        "{out}"
    );
    assert!(out.contains("map 12 removed"), "{out}");
    assert!(out.contains("2 maps in effect"), "{out}");
    assert!(!out.contains("map 10"), "A is unchanged: {out}");
    assert!(
        !transfer.is_finished(),
        "the transfer on A ended before the reload"
    );

    // B works at once (the session is already up).
    echo_check(b_addr, 0xB0B0, 64 << 10, SMALL_TIMEOUT)
        .unwrap_or_else(|e| panic!("echo through the new map B: {e}"));
    // C's listener is gone, and its connection was closed with a FIN.
    let c_addr = tunnel.map_addr(C);
    match TcpStream::connect(c_addr) {
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => {}
        other => panic!("connecting to the removed map C ({c_addr}): {other:?}"),
    }
    let mut buf = [0; 16];
    match on_c.read(&mut buf) {
        Ok(0) => {}
        other => panic!("the open connection on the removed map C: expected EOF, got {other:?}"),
    }

    // A completes intact.
    let result = transfer
        .join()
        .expect("transfer thread")
        .unwrap_or_else(|e| panic!("64 MiB exchange on A across the reload: {e}"));
    assert_eq!(result.sent, seeded_fingerprint(UP_SEED, LEN));
    assert_eq!(result.received, seeded_fingerprint(DOWN_SEED, LEN));
    let at_sink = reports
        .recv_timeout(Duration::from_secs(10))
        .expect("the sink reports the connection")
        .unwrap_or_else(|e| panic!("sink side of A: {e}"));
    assert_eq!(at_sink, result.sent);

    // A broken file is rejected with its line and field; nothing changes.
    let good = client_config.to_yaml();
    let broken = good.replace(&format!("listen: {b_addr}"), "listen: 127.0.0.1:notaport");
    assert_ne!(broken, good);
    std::fs::write(&client_path, &broken).expect("write the broken config");
    let line = broken
        .lines()
        .position(|l| l.contains("notaport"))
        .expect("the broken line")
        + 1;
    let out = ctl(&tunnel.client.config().control, &["reload"]);
    assert!(
        !out.status.success(),
        "ctl reload of a broken file succeeded"
    );
    let stderr = text(&out.stderr);
    let location = format!("{}:{line}:", client_path.display());
    assert!(stderr.contains(&location), "{location:?} not in {stderr}");
    assert!(stderr.contains("maps[1].listen"), "{stderr}");
    echo_check(b_addr, 0xB0B1, 64 << 10, SMALL_TIMEOUT)
        .unwrap_or_else(|e| panic!("echo through B after a rejected reload: {e}"));
    assert!(TcpStream::connect(c_addr).is_err(), "C stays removed");

    // The good file again: nothing changed since the last accepted one.
    std::fs::write(&client_path, &good).expect("write the config back");
    let out = reload_ok(&tunnel.client);
    assert!(out.contains("no changes"), "{out}");
    tunnel.client.stop();
    tunnel.server.stop();
}

#[test]
fn sighup_reloads_and_reports_what_needs_a_restart() {
    ctl_binary();
    let echo = echo_server();
    let dir = common::TestDir::new("reload-hup");
    let server_udp = free_udp_addr();
    let server_config = NodeConfig::new(&dir, "server")
        .listen(server_udp)
        .peer("client", None)
        .allow(A, echo.addr());
    let client_config = NodeConfig::new(&dir, "client")
        .peer("server", Some(server_udp))
        .map(A, free_tcp_addr(), "server")
        .map(B, free_tcp_addr(), "server");
    let mut server = Engine::start(&dir, "server", &server_config);
    let mut client = Engine::start(&dir, "client", &client_config);
    wait_echo(client_config.map_addr(A), "echo through A", SESSION_TIMEOUT);
    // B is not allowed yet: the server refuses its streams.
    assert!(echo_check(client_config.map_addr(B), 1, 1024, SMALL_TIMEOUT).is_err());

    // The server now allows B, and would listen elsewhere: SIGHUP.
    let moved = free_udp_addr();
    let mut changed = server_config.clone().allow(B, echo.addr());
    changed.listen = Some(moved);
    rewrite(dir.path(), &server, &changed);
    let sent = Command::new("kill")
        .args(["-s", "HUP", &server.pid().to_string()])
        .status()
        .expect("kill -s HUP");
    assert!(sent.success());
    let restart = format!("listen: {server_udp} -> {moved} needs a restart (not applied)");
    server
        .wait_log_line(SMALL_TIMEOUT, |l| l.contains(&restart))
        .unwrap_or_else(|| panic!("{restart:?} not logged after SIGHUP"));
    server
        .wait_log_line(SMALL_TIMEOUT, |l| l.contains("reload: allow 11 added"))
        .expect("the allow change logged");
    echo_check(client_config.map_addr(B), 2, 1024, SMALL_TIMEOUT)
        .unwrap_or_else(|e| panic!("echo through B once the server allows it: {e}"));
    // Still on the old UDP address: the session stays, and so does the notice.
    echo_check(client_config.map_addr(A), 3, 1024, SMALL_TIMEOUT)
        .unwrap_or_else(|e| panic!("echo through A after SIGHUP: {e}"));
    let out = reload_ok(&server);
    assert!(out.contains(&restart), "{out}");
    assert!(!out.contains("allow 11"), "already applied: {out}");

    // A broken file on SIGHUP is logged as an error and the engine keeps running.
    std::fs::write(dir.path().join("server.yaml"), "key: [\n").expect("write");
    let sent = Command::new("kill")
        .args(["-s", "HUP", &server.pid().to_string()])
        .status()
        .expect("kill -s HUP");
    assert!(sent.success());
    server
        .wait_log_line(SMALL_TIMEOUT, |l| {
            l.contains("ERROR") && l.contains("config rejected") && l.contains("server.yaml:")
        })
        .expect("the rejected file logged as an error");
    echo_check(client_config.map_addr(B), 4, 1024, SMALL_TIMEOUT)
        .unwrap_or_else(|e| panic!("echo through B after a rejected SIGHUP: {e}"));
    client.stop();
    server.stop();
}
