//! Real `engine` processes: their config files, their lifetime and their logs.
//!
//! An [`Engine`] owns its child process: dropping it kills and reaps the process, and if the
//! test is failing at that moment it prints the engine's captured log, so every failure shows
//! what both ends of the tunnel said.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use engine_api::control::{Command as ControlCommand, Request, Response, Stats, Status};

use super::TestDir;
use super::data::seeded_bytes;

/// The line an engine logs once all its sockets are bound.
pub const READY_MARKER: &str = "engine ready";
/// How long an engine may take to start.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long an engine may take to exit after SIGTERM or SIGINT.
pub const EXIT_TIMEOUT: Duration = Duration::from_secs(10);

/// The pre-shared key every node of a test uses: 32 bytes, base64.
pub fn test_key() -> String {
    BASE64.encode(seeded_bytes(u64::from(std::process::id()), 32))
}

/// One node's config, rendered to the YAML the engine reads.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub name: Option<String>,
    pub listen: Option<SocketAddr>,
    pub key: String,
    /// `(name, addr)`: dialled when `addr` is set, accepted otherwise.
    pub peers: Vec<(String, Option<SocketAddr>)>,
    /// `(id, listen, peer)`.
    pub maps: Vec<(u32, SocketAddr, String)>,
    /// `(id, target)`.
    pub allow: Vec<(u32, SocketAddr)>,
    /// UDP `maps` entries: id, listen address, peer, mode.
    pub udp_maps: Vec<(u32, SocketAddr, String, String)>,
    /// UDP `allow` entries.
    pub udp_allow: Vec<(u32, SocketAddr)>,
    pub control: PathBuf,
    pub log_level: String,
    /// Dataplane shards (`CORETUN_TEST_SHARDS`, default 1).
    pub shards: usize,
    /// `io.backend` (`CORETUN_TEST_BACKEND`; unset: the engine's default, `auto`).
    pub backend: Option<String>,
    /// `io.steering`.
    pub steering: bool,
    /// Further top-level YAML lines, written as they are.
    pub extra: Vec<String>,
}

impl NodeConfig {
    /// A node called `name` with nothing configured; its control socket lives in `dir`.
    /// `CORETUN_TEST_LOG` overrides the log level (default `info`), `CORETUN_TEST_SHARDS` the
    /// shard count (default 1), `CORETUN_TEST_BACKEND` the I/O backend (`io_uring`, `epoll`;
    /// default: the engine's automatic choice), so the whole suite can run on either backend.
    pub fn new(dir: &TestDir, name: &str) -> Self {
        Self {
            name: Some(name.to_owned()),
            listen: None,
            key: test_key(),
            peers: Vec::new(),
            maps: Vec::new(),
            allow: Vec::new(),
            udp_maps: Vec::new(),
            udp_allow: Vec::new(),
            control: dir.path().join(format!("{name}.sock")),
            log_level: std::env::var("CORETUN_TEST_LOG").unwrap_or_else(|_| "info".to_owned()),
            shards: std::env::var("CORETUN_TEST_SHARDS")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(1),
            backend: std::env::var("CORETUN_TEST_BACKEND")
                .ok()
                .filter(|b| !b.is_empty()),
            steering: true,
            extra: Vec::new(),
        }
    }

    pub fn shards(mut self, shards: usize) -> Self {
        self.shards = shards;
        self
    }

    pub fn steering(mut self, steering: bool) -> Self {
        self.steering = steering;
        self
    }

    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.listen = Some(addr);
        self
    }

    pub fn peer(mut self, name: &str, addr: Option<SocketAddr>) -> Self {
        self.peers.push((name.to_owned(), addr));
        self
    }

    pub fn map(mut self, id: u32, listen: SocketAddr, peer: &str) -> Self {
        self.maps.push((id, listen, peer.to_owned()));
        self
    }

    pub fn allow(mut self, id: u32, target: SocketAddr) -> Self {
        self.allow.push((id, target));
        self
    }

    /// A `proto: udp` map with `mode` (`datagram` or `reliable`).
    pub fn udp_map(mut self, id: u32, listen: SocketAddr, peer: &str, mode: &str) -> Self {
        self.udp_maps
            .push((id, listen, peer.to_owned(), mode.to_owned()));
        self
    }

    pub fn udp_allow(mut self, id: u32, target: SocketAddr) -> Self {
        self.udp_allow.push((id, target));
        self
    }

    /// The listen address of map `id`.
    pub fn map_addr(&self, id: u32) -> SocketAddr {
        self.maps
            .iter()
            .find(|(map, _, _)| *map == id)
            .map(|(_, listen, _)| *listen)
            .unwrap_or_else(|| panic!("no map {id} in this config"))
    }

    pub fn to_yaml(&self) -> String {
        let mut y = String::new();
        // Writing to a String cannot fail.
        let mut line = |text: String| {
            let _ = writeln!(y, "{text}");
        };
        if let Some(name) = &self.name {
            line(format!("name: {name}"));
        }
        if let Some(listen) = self.listen {
            line(format!("listen: {listen}"));
        }
        line(format!("key: \"{}\"", self.key));
        line("profile: fast2".to_owned());
        line(format!("shards: {}", self.shards));
        line("io:".to_owned());
        if let Some(backend) = &self.backend {
            line(format!("  backend: {backend}"));
        }
        line(format!("  steering: {}", self.steering));
        for extra in &self.extra {
            line(extra.clone());
        }
        line(list_header("peers", self.peers.is_empty()));
        for (name, addr) in &self.peers {
            line(format!("  - name: {name}"));
            if let Some(addr) = addr {
                line(format!("    addr: {addr}"));
            }
        }
        line(list_header(
            "maps",
            self.maps.is_empty() && self.udp_maps.is_empty(),
        ));
        for (id, listen, peer) in &self.maps {
            line(format!("  - id: {id}"));
            line(format!("    listen: {listen}"));
            line(format!("    peer: {peer}"));
        }
        for (id, listen, peer, mode) in &self.udp_maps {
            line(format!("  - id: {id}"));
            line(format!("    listen: {listen}"));
            line(format!("    peer: {peer}"));
            line("    proto: udp".to_owned());
            line(format!("    mode: {mode}"));
        }
        line(list_header(
            "allow",
            self.allow.is_empty() && self.udp_allow.is_empty(),
        ));
        for (id, target) in &self.allow {
            line(format!("  - id: {id}"));
            line(format!("    target: {target}"));
        }
        for (id, target) in &self.udp_allow {
            line(format!("  - id: {id}"));
            line(format!("    target: {target}"));
            line("    proto: udp".to_owned());
        }
        line("control:".to_owned());
        line(format!("  socket: {}", self.control.display()));
        line("log:".to_owned());
        line(format!("  level: {}", self.log_level));
        y
    }
}

fn list_header(key: &str, empty: bool) -> String {
    if empty {
        format!("{key}: []")
    } else {
        format!("{key}:")
    }
}

/// Everything the engine wrote to stdout and stderr, shared with the reader threads.
#[derive(Default)]
struct LogBuffer {
    text: Mutex<Vec<u8>>,
    grew: Condvar,
}

impl LogBuffer {
    fn append(&self, bytes: &[u8]) {
        let mut text = self.text.lock().unwrap_or_else(PoisonError::into_inner);
        text.extend_from_slice(bytes);
        self.grew.notify_all();
    }

    fn snapshot(&self) -> String {
        let text = self.text.lock().unwrap_or_else(PoisonError::into_inner);
        String::from_utf8_lossy(&text).into_owned()
    }

    /// Waits up to `timeout` for the log to grow.
    fn wait_growth(&self, seen: usize, timeout: Duration) {
        let text = self.text.lock().unwrap_or_else(PoisonError::into_inner);
        if text.len() == seen {
            let _ = self.grew.wait_timeout(text, timeout);
        }
    }

    fn len(&self) -> usize {
        self.text
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

/// A running `engine -c <config>` process.
pub struct Engine {
    label: String,
    config: NodeConfig,
    child: Child,
    exit: Option<ExitStatus>,
    log: Arc<LogBuffer>,
    readers: Vec<JoinHandle<()>>,
}

impl Engine {
    /// Writes `config` to `<dir>/<label>.yaml` and starts an engine on it (not waiting for it).
    pub fn spawn(dir: &TestDir, label: &str, config: &NodeConfig) -> Self {
        Self::spawn_program(Path::new(env!("CARGO_BIN_EXE_engine")), dir, label, config)
    }

    /// [`spawn`](Self::spawn) with another program standing in for the engine (`program -c
    /// <config>`), to check the harness itself.
    pub fn spawn_program(program: &Path, dir: &TestDir, label: &str, config: &NodeConfig) -> Self {
        Self::spawn_command(Command::new(program), dir, label, config)
    }

    /// [`spawn`](Self::spawn) with a prepared command (for example one that restricts the
    /// process before it executes the engine).
    pub fn spawn_command(
        mut command: Command,
        dir: &TestDir,
        label: &str,
        config: &NodeConfig,
    ) -> Self {
        let path = dir.path().join(format!("{label}.yaml"));
        std::fs::write(&path, config.to_yaml())
            .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        let program = command.get_program().to_owned();
        let mut child = command
            .arg("-c")
            .arg(&path)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "starting engine `{label}` ({}): {e}",
                    Path::new(&program).display()
                )
            });
        let log = Arc::new(LogBuffer::default());
        let mut readers = Vec::new();
        let pipes: [Option<Box<dyn Read + Send>>; 2] = [
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        ];
        for mut pipe in pipes.into_iter().flatten() {
            let log = Arc::clone(&log);
            readers.push(thread::spawn(move || {
                let mut buf = [0; 8192];
                // Ends at EOF, when the process and its children have exited.
                while let Ok(n @ 1..) = pipe.read(&mut buf) {
                    log.append(&buf[..n]);
                }
            }));
        }
        Self {
            label: label.to_owned(),
            config: config.clone(),
            child,
            exit: None,
            log,
            readers,
        }
    }

    /// [`spawn`](Self::spawn), then [`wait_ready`](Self::wait_ready).
    pub fn start(dir: &TestDir, label: &str, config: &NodeConfig) -> Self {
        let mut engine = Self::spawn(dir, label, config);
        engine.wait_ready(READY_TIMEOUT);
        engine
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    pub fn config(&self) -> &NodeConfig {
        &self.config
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The log so far.
    pub fn log(&self) -> String {
        self.log.snapshot()
    }

    /// Waits until the engine logs [`READY_MARKER`]; panics (the log is printed by `Drop`) if
    /// it exits first or `timeout` passes.
    pub fn wait_ready(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let seen = self.log.len();
            if self.log().contains(READY_MARKER) {
                return;
            }
            if let Some(status) = self.try_exit() {
                self.drain_readers();
                if self.log().contains(READY_MARKER) {
                    panic!(
                        "engine `{}` exited ({status}) right after logging `{READY_MARKER}`",
                        self.label
                    );
                }
                panic!(
                    "engine `{}` exited ({status}) before logging `{READY_MARKER}`",
                    self.label
                );
            }
            if Instant::now() >= deadline {
                panic!(
                    "engine `{}` did not log `{READY_MARKER}` within {timeout:?}",
                    self.label
                );
            }
            self.log.wait_growth(seen, Duration::from_millis(50));
        }
    }

    /// Waits up to `timeout` for a log line satisfying `matches`; returns the first such line.
    pub fn wait_log_line(
        &self,
        timeout: Duration,
        matches: impl Fn(&str) -> bool,
    ) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let seen = self.log.len();
            if let Some(line) = self.log().lines().find(|line| matches(line)) {
                return Some(line.to_owned());
            }
            if Instant::now() >= deadline {
                return None;
            }
            self.log.wait_growth(seen, Duration::from_millis(50));
        }
    }

    /// The exit status if the process has exited.
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            self.exit = self.child.try_wait().ok().flatten();
        }
        self.exit
    }

    /// Waits up to `timeout` for the process to exit on its own; its exit code (`None` if it
    /// was killed by a signal or is still running).
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        while self.try_exit().is_none() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(20));
        }
        self.drain_readers();
        self.try_exit().and_then(|status| status.code())
    }

    /// SIGKILL, then reap.
    pub fn kill(&mut self) {
        if self.try_exit().is_none() {
            let _ = self.child.kill();
            self.exit = self.child.wait().ok();
        }
        self.drain_readers();
    }

    /// Sends `signal` (`"TERM"`, `"INT"`) and waits up to [`EXIT_TIMEOUT`] for the process to
    /// exit; panics if it does not.
    pub fn signal_and_wait(&mut self, signal: &str) -> ExitStatus {
        if let Some(status) = self.try_exit() {
            panic!(
                "engine `{}` had already exited ({status}) before SIG{signal}",
                self.label
            );
        }
        let sent = Command::new("kill")
            .args(["-s", signal, &self.pid().to_string()])
            .status()
            .unwrap_or_else(|e| panic!("running `kill -s {signal}`: {e}"));
        assert!(
            sent.success(),
            "`kill -s {signal} {}` failed: {sent}",
            self.pid()
        );
        let deadline = Instant::now() + EXIT_TIMEOUT;
        loop {
            if let Some(status) = self.try_exit() {
                self.drain_readers();
                return status;
            }
            if Instant::now() >= deadline {
                panic!(
                    "engine `{}` did not exit within {EXIT_TIMEOUT:?} of SIG{signal}",
                    self.label
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Graceful stop: SIGTERM must make the engine exit with status 0.
    pub fn stop(&mut self) {
        let status = self.signal_and_wait("TERM");
        assert_eq!(
            status.code(),
            Some(0),
            "engine `{}` exited with {status} after SIGTERM",
            self.label
        );
    }

    /// The engine's traffic counters, over its control socket.
    pub fn stats(&self) -> Stats {
        stats(&self.config.control)
            .unwrap_or_else(|e| panic!("stats of engine `{}`: {e}", self.label))
    }

    /// Polls [`stats`](Self::stats) until `pred` holds; panics after `timeout` with the last
    /// counters.
    pub fn wait_stats(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Stats) -> bool,
    ) -> Stats {
        let deadline = Instant::now() + timeout;
        loop {
            let stats = self.stats();
            if pred(&stats) {
                return stats;
            }
            if Instant::now() >= deadline {
                panic!(
                    "engine `{}`: {what} did not hold within {timeout:?}; last stats: {stats:#?}",
                    self.label
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    fn join_readers(&mut self) {
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
    }

    /// After the process has exited: gives the reader threads a moment to take in the last of
    /// its output, without hanging on a grandchild that still holds the pipes.
    fn drain_readers(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(2);
        while self.readers.iter().any(|r| !r.is_finished()) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(10));
        }
        if self.readers.iter().all(JoinHandle::is_finished) {
            self.join_readers();
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        if self.try_exit().is_none() {
            let _ = self.child.kill();
            self.exit = self.child.wait().ok();
        }
        if thread::panicking() {
            self.drain_readers();
            let exit = self
                .exit
                .map_or_else(|| "unknown".to_owned(), |status| status.to_string());
            eprintln!(
                "----- engine `{}` (exit: {exit}) config -----\n{}----- engine `{}` log -----\n{}----- end of `{}` log -----",
                self.label,
                self.config.to_yaml(),
                self.label,
                self.log(),
                self.label,
            );
        }
    }
}

/// Asks the engine behind the control socket `socket` for its counters.
pub fn stats(socket: &Path) -> Result<Stats, String> {
    match request(socket, ControlCommand::Stats)? {
        Response::Stats(stats) => Ok(stats),
        other => Err(format!("expected stats, got {other:?}")),
    }
}

/// Asks the engine behind the control socket `socket` for its status.
pub fn status(socket: &Path) -> Result<Status, String> {
    match request(socket, ControlCommand::Status)? {
        Response::Status(status) => Ok(status),
        other => Err(format!("expected a status, got {other:?}")),
    }
}

fn request(socket: &Path, command: ControlCommand) -> Result<Response, String> {
    let timeout = Some(Duration::from_secs(5));
    let mut stream = UnixStream::connect(socket)
        .map_err(|e| format!("connect to control socket {}: {e}", socket.display()))?;
    stream
        .set_read_timeout(timeout)
        .and_then(|()| stream.set_write_timeout(timeout))
        .map_err(|e| format!("control socket timeouts: {e}"))?;
    stream
        .write_all(&Request::new(command).to_line())
        .map_err(|e| format!("writing the {command} request: {e}"))?;
    let mut line = Vec::new();
    BufReader::new(stream)
        .read_until(b'\n', &mut line)
        .map_err(|e| format!("reading the {command} response: {e}"))?;
    Response::parse(&line).map_err(|e| {
        format!(
            "unparsable response {:?}: {e}",
            String::from_utf8_lossy(&line)
        )
    })
}
