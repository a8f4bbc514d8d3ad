//! Harness shared by the engine's integration tests: real `engine` processes and their configs
//! ([`node`]), loopback TCP servers and clients that check every byte ([`net`]), and the seeded
//! payloads they send ([`data`]).
//!
//! Each test binary uses only part of the harness, hence the `dead_code` allowance.

#![allow(dead_code)]

pub mod data;
pub mod net;
pub mod node;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use node::{Engine, NodeConfig};

/// How long a fresh tunnel may take to carry its first connection (handshake included).
pub const SESSION_TIMEOUT: Duration = Duration::from_secs(20);
/// Bound on one bulk transfer (tens of MiB over loopback).
pub const BULK_TIMEOUT: Duration = Duration::from_secs(60);
/// Bound on a small exchange over an established tunnel.
pub const SMALL_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a waiting test starts another connection attempt.
pub const RETRY_INTERVAL: Duration = Duration::from_millis(250);

/// A scratch directory for one test's config files and control sockets, removed on drop
/// (kept, and its path printed, when the test fails).
pub struct TestDir {
    path: PathBuf,
}

impl TestDir {
    pub fn new(test: &str) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        // Short: control socket paths must fit in `sun_path` (108 bytes).
        let path = std::env::temp_dir().join(format!("ct-{}-{n}-{test}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path)
            .unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
        Self { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("test files kept in {}", self.path.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// How a [`Tunnel`] is laid out: the server's `allow` entries, the client's maps (all to the
/// server), and where the client dials (the server itself, or a relay in front of it).
#[derive(Debug, Clone)]
pub struct TunnelSpec {
    pub allow: Vec<(u32, SocketAddr)>,
    pub maps: Vec<u32>,
    /// The server's UDP listen address.
    pub server_udp: SocketAddr,
    /// The address the client dials for the server.
    pub client_dials: SocketAddr,
    /// Shards of both engines (`None`: [`NodeConfig`]'s default).
    pub shards: Option<usize>,
    /// Further top-level YAML lines for the server's and the client's config.
    pub server_extra: Vec<String>,
    pub client_extra: Vec<String>,
}

impl TunnelSpec {
    /// Server on a free UDP port, dialled directly.
    pub fn new(allow: &[(u32, SocketAddr)], maps: &[u32]) -> Self {
        let server_udp = net::free_udp_addr();
        Self {
            allow: allow.to_vec(),
            maps: maps.to_vec(),
            server_udp,
            client_dials: server_udp,
            shards: None,
            server_extra: Vec::new(),
            client_extra: Vec::new(),
        }
    }

    /// Adds a top-level YAML line (for example `fec: off`) to the server's and the client's
    /// config.
    pub fn extra(mut self, server: &str, client: &str) -> Self {
        self.server_extra.push(server.to_owned());
        self.client_extra.push(client.to_owned());
        self
    }

    pub fn shards(mut self, shards: usize) -> Self {
        self.shards = Some(shards);
        self
    }
}

/// A forward tunnel: engine `client` (maps, dials) and engine `server` (listens, allows).
///
/// Fields drop in order: engines first, then the directory holding their files.
pub struct Tunnel {
    pub client: Engine,
    pub server: Engine,
    pub dir: TestDir,
}

impl Tunnel {
    /// Starts the server, then the client, and waits until both are ready (not until their
    /// session is up: see [`wait_echo`](Self::wait_echo)).
    pub fn start(test: &str, spec: &TunnelSpec) -> Self {
        let dir = TestDir::new(test);
        let mut server_config = NodeConfig::new(&dir, "server")
            .listen(spec.server_udp)
            .peer("client", None);
        for &(id, target) in &spec.allow {
            server_config = server_config.allow(id, target);
        }
        let mut client_config =
            NodeConfig::new(&dir, "client").peer("server", Some(spec.client_dials));
        for &id in &spec.maps {
            client_config = client_config.map(id, net::free_tcp_addr(), "server");
        }
        if let Some(shards) = spec.shards {
            server_config = server_config.shards(shards);
            client_config = client_config.shards(shards);
        }
        server_config
            .extra
            .extend(spec.server_extra.iter().cloned());
        client_config
            .extra
            .extend(spec.client_extra.iter().cloned());
        let server = Engine::start(&dir, "server", &server_config);
        let client = Engine::start(&dir, "client", &client_config);
        Self {
            client,
            server,
            dir,
        }
    }

    /// Where the client listens for map `id`.
    pub fn map_addr(&self, id: u32) -> SocketAddr {
        self.client.config().map_addr(id)
    }

    /// Waits until an echo round trip through map `id` (whose target must be an echo server)
    /// succeeds: the session is up. Returns how long it took.
    pub fn wait_echo(&self, id: u32, timeout: Duration) -> Duration {
        wait_echo(
            self.map_addr(id),
            &format!("echo through map {id}"),
            timeout,
        )
    }

    /// Kills the server with SIGKILL and starts a new one on the same config (same UDP port,
    /// same control socket path), waiting until it is ready.
    pub fn crash_and_restart_server(&mut self, label: &str) {
        self.server.kill();
        let config = self.server.config().clone();
        let old = std::mem::replace(&mut self.server, Engine::start(&self.dir, label, &config));
        // Kept until here so a failed restart still prints the old server's log.
        drop(old);
    }
}

/// Starts echo round trips (1 KiB each) to `addr` until one succeeds; panics after `timeout`.
pub fn wait_echo(addr: SocketAddr, what: &str, timeout: Duration) -> Duration {
    let attempts = AtomicU64::new(0);
    net::first_success(what, timeout, RETRY_INTERVAL, move |deadline| {
        let seed = 0xEC40 + attempts.fetch_add(1, Ordering::SeqCst);
        let left = deadline.saturating_duration_since(Instant::now());
        net::echo_check(addr, seed, 1024, left)
    })
    .unwrap_or_else(|e| panic!("{e}"))
}
