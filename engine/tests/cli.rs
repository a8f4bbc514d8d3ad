//! Runs the real `engine` binary and checks its command line contract: output, messages and
//! exit codes.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;

fn engine(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_engine"))
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("the engine binary runs")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn shipped_config() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../config.yaml")
}

fn missing_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("coretun-engine-cli-{}-{name}", std::process::id()))
}

#[test]
fn version_prints_package_version() {
    let out = engine(&["--version"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        stdout(&out).trim(),
        format!("engine {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn help_lists_subcommands_and_options() {
    let out = engine(&["--help"]);
    assert_eq!(out.status.code(), Some(0));
    let text = stdout(&out);
    for word in ["check", "genkey", "--config", "--log-level"] {
        assert!(text.contains(word), "help lacks {word}:\n{text}");
    }
}

#[test]
fn genkey_prints_fresh_32_byte_keys() {
    let keys: Vec<String> = (0..2)
        .map(|_| {
            let out = engine(&["genkey"]);
            assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
            assert_eq!(stderr(&out), "");
            let text = stdout(&out);
            assert_eq!(text.lines().count(), 1, "{text:?}");
            let key = text.trim_end().to_owned();
            let bytes = BASE64.decode(&key).expect("genkey prints standard base64");
            assert_eq!(bytes.len(), 32);
            key
        })
        .collect();
    assert_ne!(keys[0], keys[1]);
}

#[test]
fn check_missing_file_names_it() {
    let path = missing_path("check.yaml");
    let out = engine(&["check", "-c", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let message = stderr(&out);
    assert!(
        message.starts_with(&format!(
            "engine: cannot read config file {}: ",
            path.display()
        )),
        "{message}"
    );
    assert!(message.contains("No such file or directory"), "{message}");
}

#[test]
fn run_missing_file_names_it() {
    let path = missing_path("run.yaml");
    let out = engine(&["-c", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains(&path.display().to_string()),
        "{}",
        stderr(&out)
    );
}

#[test]
fn usage_errors_exit_2() {
    for args in [
        &[][..],
        &["check"],
        &["frobnicate"],
        &["--log-level", "nonsense=[", "genkey"],
    ] {
        let out = engine(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(!stderr(&out).is_empty());
    }
}

/// The README's quick start runs the shipped config as is. A test must not take the fixed port
/// 4000 or the system's socket path, so only those two values are swapped for a free port and a
/// temporary path; everything else (key, allow list, profile, shards) is the shipped text.
#[test]
fn shipped_config_runs_until_sigterm() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    use std::sync::mpsc;
    use std::time::Duration;

    let shipped = std::fs::read_to_string(shipped_config()).unwrap();
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = missing_path("shipped");
    std::fs::create_dir_all(&dir).unwrap();
    let socket = dir.join("engine.sock");
    let text = shipped
        .replacen(
            "listen: 0.0.0.0:4000",
            &format!("listen: 127.0.0.1:{port}"),
            1,
        )
        .replacen(
            "socket: /run/coretun/engine.sock",
            &format!("socket: {}", socket.display()),
            1,
        );
    assert_ne!(
        text, shipped,
        "the shipped config changed shape; update this test"
    );
    let path = dir.join("config.yaml");
    std::fs::write(&path, text).unwrap();

    let mut child = Command::new(env!("CARGO_BIN_EXE_engine"))
        .args(["-c", path.to_str().unwrap()])
        .env_remove("RUST_LOG")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut log = Vec::new();
    let ready = loop {
        match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(line) => {
                let ready = line.contains("engine ready");
                log.push(line);
                if ready {
                    break true;
                }
            }
            Err(_) => break false,
        }
    };
    if !ready {
        let _ = child.kill();
    }
    assert!(ready, "no `engine ready` line:\n{}", log.join("\n"));
    assert!(socket.exists(), "the control socket was not created");
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let status = child.wait().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(status.code(), Some(0), "log:\n{}", log.join("\n"));
}
