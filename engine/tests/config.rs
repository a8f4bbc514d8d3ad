//! Runs the real `engine check` on good and bad config files: the shipped config and the
//! examples pass (key masked), and each class of mistake exits 1 with an error naming the file,
//! the line and the field.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const KEY: &str = "vk7QWrLp2iOdreXkJU6RQUp5dGQH2cB+VkGqVdVRKhA=";

fn check(config: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_engine"))
        .args(["check", "-c"])
        .arg(config)
        .env_remove("RUST_LOG")
        .output()
        .expect("the engine binary runs")
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A directory of its own for each test, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "coretun-engine-config-test-{}-{name}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        Self(dir)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).expect("write config");
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `engine check` on `text` fails with `file:line:col: field: ...message...` on stderr.
fn assert_rejected(dir: &TempDir, name: &str, text: &str, location: &str, message: &str) {
    let path = dir.write(name, text);
    let out = check(&path);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{name}: {stderr}");
    assert!(
        out.stdout.is_empty(),
        "{name}: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let expected = format!("{}:{location}", path.display());
    assert!(
        stderr.contains(&expected),
        "{name}: {stderr:?} lacks {expected:?}"
    );
    assert!(
        stderr.contains(message),
        "{name}: {stderr:?} lacks {message:?}"
    );
    assert_eq!(stderr.lines().count(), 1, "{name}: {stderr}");
}

#[test]
fn bad_configs_name_file_line_and_field() {
    let dir = TempDir::new("bad");
    assert_rejected(
        &dir,
        "unknown-field.yaml",
        &format!("key: {KEY}\nlisen: 0.0.0.0:4000\n"),
        "2:1: ",
        "unknown field \"lisen\"",
    );
    assert_rejected(
        &dir,
        "bad-address.yaml",
        &format!("key: {KEY}\nallow:\n  - id: 1\n    target: 127.0.0.1:99999\n"),
        "4:13: allow[0].target: ",
        "invalid address \"127.0.0.1:99999\"",
    );
    assert_rejected(
        &dir,
        "duplicate-map-id.yaml",
        &format!(
            "key: {KEY}
peers:
  - name: server
    addr: 127.0.0.1:4000
maps:
  - id: 100
    listen: 127.0.0.1:2222
    peer: server
  - id: 100
    listen: 127.0.0.1:2223
    peer: server
"
        ),
        "9:9: maps[1].id: ",
        "duplicate map id 100",
    );
    assert_rejected(
        &dir,
        "unknown-peer.yaml",
        &format!(
            "key: {KEY}
peers:
  - name: server
    addr: 127.0.0.1:4000
maps:
  - id: 100
    listen: 127.0.0.1:2222
    peer: sever
"
        ),
        "8:11: maps[0].peer: ",
        "unknown peer \"sever\" (peers are: server)",
    );
    assert_rejected(
        &dir,
        "missing-key.yaml",
        "listen: 0.0.0.0:4000\n",
        "1:1: key: ",
        "missing key",
    );
    assert_rejected(&dir, "empty.yaml", "", "1:1: key: ", "missing key");
}

#[test]
fn unreadable_key_file_names_it() {
    let dir = TempDir::new("key-file");
    let path = dir.write("c.yaml", "key_file: nope.key\n");
    let out = check(&path);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "{}:1:11: key_file: cannot read key file {}",
            path.display(),
            dir.0.join("nope.key").display()
        )),
        "{stderr}"
    );

    // And the same file, once written, is read relative to the config.
    dir.write("nope.key", &format!("{KEY}\n"));
    let out = check(&path);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn shipped_config_passes_and_masks_the_key() {
    let out = check(&repo().join("config.yaml"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("config.yaml"), "{stdout}");
    assert!(stdout.contains("key: \"***\"\n"), "{stdout}");
    assert!(!stdout.contains(KEY), "the key leaked:\n{stdout}");
    for line in [
        "listen: 0.0.0.0:4000\n",
        "profile: fast2\n",
        "shards: auto\n",
        "  - id: 100\n    target: 127.0.0.1:22\n    proto: tcp\n",
        "  socket: \"/run/coretun/engine.sock\"\n",
        "  level: \"info\"\n",
    ] {
        assert!(stdout.contains(line), "{line:?} missing from\n{stdout}");
    }
}

#[test]
fn every_example_passes() {
    let dir = repo().join("docs/examples");
    let mut checked = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("docs/examples exists") {
        let path = entry.expect("read docs/examples").path();
        if path.extension().is_some_and(|ext| ext == "yaml") {
            let out = check(&path);
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert_eq!(
                out.status.code(),
                Some(0),
                "{}: {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(!stdout.contains(KEY), "{}: the key leaked", path.display());
            checked.push(
                path.file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned(),
            );
        }
    }
    checked.sort();
    assert_eq!(
        checked,
        [
            "client.yaml",
            "forward-client.yaml",
            "forward-server.yaml",
            "reverse-inside.yaml",
            "reverse-public.yaml"
        ]
    );
}

#[test]
fn effective_config_of_a_client_resolves_its_peer() {
    let out = check(&repo().join("docs/examples/client.yaml"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0));
    for line in [
        "listen: ~",
        "  - name: \"server\"\n    addr: 127.0.0.1:4000\n",
        "  - id: 100\n    listen: 127.0.0.1:2222\n    peer: \"server\"\n",
        "  socket: \"/run/coretun/client.sock\"\n",
    ] {
        assert!(stdout.contains(line), "{line:?} missing from\n{stdout}");
    }
}
