//! The engine's configuration: the typed form every other part of the engine uses.
//!
//! A config file is parsed in two steps ("parse, don't validate"): YAML into raw serde structs
//! with `deny_unknown_fields` ([`raw`]), then converted into [`Config`], whose fields are fully
//! typed (socket addresses, durations, keys, ids checked for duplicates, map peers resolved), so
//! nothing downstream re-checks. Every error names the file, the line and the field
//! ([`ConfigError`]).

mod convert;
mod error;
mod raw;

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::time::Duration;

use engine_proto::config::Profile;
use engine_proto::crypto::Psk;

pub use error::ConfigError;

/// Where the engine listens for control connections unless the config says otherwise.
pub const DEFAULT_CONTROL_SOCKET: &str = crate::control::DEFAULT_SOCKET_PATH;

/// One node's whole configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// This node's name, told to peers in the handshake so that a node that accepts sessions can
    /// tell which of its `peers` dialled it. `None`: anonymous (can still use the peer's `allow`
    /// entries, but the peer's `maps` cannot name it).
    pub name: Option<String>,
    /// UDP address on which this node accepts sessions. `None`: the node only dials out.
    pub listen: Option<SocketAddr>,
    /// The pre-shared key every peer must hold.
    pub key: Psk,
    pub transport: Transport,
    pub shards: Shards,
    pub peers: Vec<Peer>,
    pub maps: Vec<Map>,
    pub allow: Vec<Allow>,
    pub control: Control,
    pub log: Log,
}

/// How sessions behave on the wire.
#[derive(Debug, Clone, PartialEq)]
pub struct Transport {
    pub profile: Profile,
    pub rate: Rate,
    /// Largest UDP payload this node sends.
    pub mtu: usize,
    /// Clamp of the RTT used for timeouts (`rtt.min` / `rtt.max`); `None` keeps the profile's.
    pub min_rtt: Option<Duration>,
    pub max_rtt: Option<Duration>,
}

/// Rate control: model-based with an optional cap, or a fixed rate (Liteflow's
/// `send_bytes_per_sec`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rate {
    /// BBR-like control; never paces above `max_bytes_per_sec` when set (`rate:` alone).
    Auto { max_bytes_per_sec: Option<u64> },
    /// Pace at exactly this rate (`congestion: fixed` with `rate:`).
    Fixed { bytes_per_sec: u64 },
}

/// How many dataplane threads run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shards {
    /// One per online core.
    Auto,
    Count(NonZeroUsize),
}

/// A named peer: dialled when it has an address, otherwise accepted (matched by the name it
/// gives in the handshake).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub name: String,
    /// Dial this address (resolved when the config is loaded).
    pub addr: Option<SocketAddr>,
}

/// A map id: the number that joins a `maps` entry on one node to an `allow` entry on the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MapId(pub u32);

impl std::fmt::Display for MapId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// Liteflow's `listen_list` entry: accept TCP connections on `listen` and carry each as a
/// stream, tagged `id`, over the session with `peer`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Map {
    pub id: MapId,
    pub listen: SocketAddr,
    /// Index into [`Config::peers`].
    pub peer: usize,
    pub proto: Proto,
}

/// Liteflow's `allow_list` entry: a stream tagged `id` from any peer is connected to `target`.
/// Nothing else is ever connected to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allow {
    pub id: MapId,
    /// Resolved when the config is loaded.
    pub target: SocketAddr,
    pub proto: Proto,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Tcp,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Control {
    pub socket: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Log {
    /// A `tracing_subscriber::EnvFilter` directive string, e.g. `info` or `engine=debug,warn`.
    pub level: String,
}

impl Config {
    /// Parses and checks a config file's text. `path` is only used in error messages.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        convert::parse(path, text)
    }

    /// Reads and parses a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|err| ConfigError::io(path, err))?;
        Self::parse(path, &text)
    }

    /// The peer with this name.
    pub fn peer(&self, name: &str) -> Option<(usize, &Peer)> {
        self.peers.iter().enumerate().find(|(_, p)| p.name == name)
    }
}
