//! The engine's configuration: the typed form every other part of the engine uses.
//!
//! A config file is parsed in two steps ("parse, don't validate"): YAML into raw serde structs
//! with `deny_unknown_fields` ([`raw`]), then converted into [`Config`], whose fields are fully
//! typed (socket addresses, durations, keys, ids checked for duplicates, map peers resolved), so
//! nothing downstream re-checks. Every error names the file, the line and the field
//! ([`ConfigError`]).

mod convert;
mod diff;
mod error;
mod raw;

use std::fmt::{self, Write as _};
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::time::Duration;

use engine_proto::config::{FecConfig, FecMode, Profile};
use engine_proto::crypto::Psk;

pub use convert::{
    DEFAULT_LOG_LEVEL, DEFAULT_MTU, Environment, MAX_CPU, MAX_NAME_LEN, MAX_SHARDS, MTU_RANGE,
    SystemEnvironment, check_log_filter, default_fec,
};
pub use convert::{format_cpulist, parse_bits_per_sec, parse_cpulist, parse_duration};
pub use diff::ConfigChange;
pub use error::{ConfigError, Position};

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
    /// The CPUs shards run on (`cpus:`), sorted and without duplicates. With `shards: auto` one
    /// shard runs per listed CPU; with a shard count, shard `i` is pinned to
    /// `cpus[i % cpus.len()]`. `None`: every online CPU.
    pub cpus: Option<Vec<usize>>,
    pub io: Io,
    pub peers: Vec<Peer>,
    pub maps: Vec<Map>,
    pub allow: Vec<Allow>,
    /// Limits of UDP maps' flows (`udp:`), on both the maps and the allow side.
    pub udp: Udp,
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
    /// Forward error correction (`fec:`); both ends of a session must agree. Absent from the
    /// file: [`default_fec`] of the profile.
    pub fec: FecConfig,
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

/// How the dataplane does its socket I/O (`io:`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Io {
    pub backend: Backend,
    /// UDP GSO on send and GRO on receive. `false` sends one datagram per syscall slot and
    /// leaves GRO off: for benchmarks, and for NICs or drivers that mishandle segmentation.
    pub gso: bool,
    /// Attach the reuseport BPF program that steers each packet to the shard owning its
    /// session. `false` leaves the kernel's 4-tuple hash (misrouted packets are then handed
    /// over between shards), for diagnosis.
    pub steering: bool,
}

impl Default for Io {
    fn default() -> Self {
        Self {
            backend: Backend::Auto,
            gso: true,
            steering: true,
        }
    }
}

/// The dataplane's I/O backend (`io.backend`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Backend {
    /// io_uring when the kernel and limits allow it, else epoll.
    #[default]
    Auto,
    IoUring,
    /// epoll with `recvmmsg`/`sendmmsg`.
    Epoll,
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
    /// How a UDP map carries its datagrams (`mode:`); `None` for TCP maps.
    pub mode: Option<UdpMode>,
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
    /// Each client address of a `maps` entry is a flow; the `allow` side sends each flow's
    /// datagrams to the target from a socket of its own.
    Udp,
}

/// How a UDP map's datagrams cross the tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UdpMode {
    /// Unreliable, unordered DATAGRAM frames (FEC-protected when FEC is on), never held back
    /// behind lost data; datagrams larger than a packet are fragmented and reassembled.
    #[default]
    Datagram,
    /// One stream per flow: ordered and lossless, like Liteflow's UDP forwarding.
    Reliable,
}

/// Limits of UDP flows (`udp:`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Udp {
    /// A flow with no datagram either way for this long is closed.
    pub idle_timeout: Duration,
    /// Most flows open at once on this node (split evenly between its shards); datagrams that
    /// would start another are dropped and counted.
    pub max_flows: usize,
}

impl Default for Udp {
    fn default() -> Self {
        Self {
            idle_timeout: DEFAULT_UDP_IDLE_TIMEOUT,
            max_flows: DEFAULT_UDP_MAX_FLOWS,
        }
    }
}

/// `udp.idle_timeout` unless the config says otherwise.
pub const DEFAULT_UDP_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// `udp.max_flows` unless the config says otherwise.
pub const DEFAULT_UDP_MAX_FLOWS: usize = 1024;
/// The highest `udp.max_flows` accepted.
pub const MAX_UDP_FLOWS: usize = 1 << 20;

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
    /// Parses and checks a config file's text. `path` names the file in error messages, and a
    /// relative `key_file` is read from `path`'s directory.
    ///
    /// Host names are looked up, a `key_file` is read and a passphrase is stretched, through
    /// [`SystemEnvironment`].
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        Self::parse_with(path, text, &SystemEnvironment)
    }

    /// [`Config::parse`] with lookups, key files and passphrases going through `env` (tests, the
    /// fuzzer, or an engine that checks the log filter with `tracing-subscriber`).
    pub fn parse_with(path: &Path, text: &str, env: &dyn Environment) -> Result<Self, ConfigError> {
        convert::parse(path, text, env)
    }

    /// Reads and parses a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::load_with(path, &SystemEnvironment)
    }

    /// [`Config::load`] through `env` (see [`Config::parse_with`]).
    pub fn load_with(path: &Path, env: &dyn Environment) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|err| ConfigError::io(path, err))?;
        Self::parse_with(path, &text, env)
    }

    /// The peer with this name.
    pub fn peer(&self, name: &str) -> Option<(usize, &Peer)> {
        self.peers.iter().enumerate().find(|(_, p)| p.name == name)
    }

    /// The effective config as YAML: every field with its default applied, addresses resolved,
    /// the key shown as `***`. Apart from the key it parses back into the same config.
    pub fn to_masked_yaml(&self) -> String {
        let mut out = String::new();
        self.write_masked_yaml(&mut out)
            .unwrap_or_else(|_| unreachable!("writing to a String cannot fail"));
        out
    }

    fn write_masked_yaml(&self, out: &mut String) -> fmt::Result {
        writeln!(
            out,
            "name: {}",
            self.name.as_deref().map_or("~".into(), quote)
        )?;
        match self.listen {
            Some(listen) => writeln!(out, "listen: {}", addr(listen))?,
            None => writeln!(out, "listen: ~  # dials out only")?,
        }
        writeln!(out, "key: \"***\"")?;
        let transport = &self.transport;
        writeln!(out, "profile: {}", transport.profile.name())?;
        match transport.rate {
            Rate::Auto {
                max_bytes_per_sec: None,
            } => {
                writeln!(out, "congestion: bbr")?;
                writeln!(out, "rate: ~  # no cap")?;
            }
            Rate::Auto {
                max_bytes_per_sec: Some(bytes),
            } => {
                writeln!(out, "congestion: bbr")?;
                writeln!(
                    out,
                    "rate: {}  # bit/s cap ({bytes} bytes/s)",
                    bytes.saturating_mul(8)
                )?;
            }
            Rate::Fixed { bytes_per_sec } => {
                writeln!(out, "congestion: fixed")?;
                let bits = bytes_per_sec.saturating_mul(8);
                writeln!(out, "rate: {bits}  # bit/s ({bytes_per_sec} bytes/s)")?;
            }
        }
        writeln!(out, "mtu: {}", transport.mtu)?;
        writeln!(out, "rtt:")?;
        for (name, value) in [("min", transport.min_rtt), ("max", transport.max_rtt)] {
            match value {
                Some(value) => writeln!(out, "  {name}: {}", convert::DurationText(value))?,
                None => writeln!(out, "  {name}: ~  # the profile's")?,
            }
        }
        write_fec(out, transport.fec)?;
        match self.shards {
            Shards::Auto => writeln!(out, "shards: auto")?,
            Shards::Count(count) => writeln!(out, "shards: {count}")?,
        }
        match &self.cpus {
            Some(cpus) => writeln!(out, "cpus: {}", quote(&format_cpulist(cpus)))?,
            None => writeln!(out, "cpus: ~  # every online CPU")?,
        }
        writeln!(out, "io:")?;
        writeln!(out, "  backend: {}", self.io.backend)?;
        writeln!(out, "  gso: {}", self.io.gso)?;
        writeln!(out, "  steering: {}", self.io.steering)?;
        if self.peers.is_empty() {
            writeln!(out, "peers: []")?;
        } else {
            writeln!(out, "peers:")?;
        }
        for peer in &self.peers {
            writeln!(out, "  - name: {}", quote(&peer.name))?;
            match peer.addr {
                Some(peer_addr) => writeln!(out, "    addr: {}", addr(peer_addr))?,
                None => writeln!(out, "    addr: ~  # accepted, not dialled")?,
            }
        }
        if self.maps.is_empty() {
            writeln!(out, "maps: []")?;
        } else {
            writeln!(out, "maps:")?;
        }
        for map in &self.maps {
            writeln!(out, "  - id: {}", map.id)?;
            writeln!(out, "    listen: {}", addr(map.listen))?;
            let peer = self.peers.get(map.peer).map_or("?", |p| p.name.as_str());
            writeln!(out, "    peer: {}", quote(peer))?;
            writeln!(out, "    proto: {}", map.proto)?;
            if let Some(mode) = map.mode {
                writeln!(out, "    mode: {mode}")?;
            }
        }
        if self.allow.is_empty() {
            writeln!(out, "allow: []")?;
        } else {
            writeln!(out, "allow:")?;
        }
        for allow in &self.allow {
            writeln!(out, "  - id: {}", allow.id)?;
            writeln!(out, "    target: {}", addr(allow.target))?;
            writeln!(out, "    proto: {}", allow.proto)?;
        }
        writeln!(out, "udp:")?;
        writeln!(
            out,
            "  idle_timeout: {}",
            convert::DurationText(self.udp.idle_timeout)
        )?;
        writeln!(out, "  max_flows: {}", self.udp.max_flows)?;
        writeln!(out, "control:")?;
        writeln!(
            out,
            "  socket: {}",
            quote(&self.control.socket.to_string_lossy())
        )?;
        writeln!(out, "log:")?;
        writeln!(out, "  level: {}", quote(&self.log.level))
    }
}

/// `fec:` in the form it is read back: the mode alone when off, else every number spelled out.
fn write_fec(out: &mut String, fec: FecConfig) -> fmt::Result {
    let (mode, data, parity) = match fec.mode {
        FecMode::Off => return writeln!(out, "fec: off"),
        FecMode::Adaptive { data } => ("adaptive", data, None),
        FecMode::Fixed { data, parity } => ("fixed", data, Some(parity)),
    };
    writeln!(out, "fec:")?;
    writeln!(out, "  mode: {mode}")?;
    writeln!(out, "  data: {data}")?;
    if let Some(parity) = parity {
        writeln!(out, "  parity: {parity}")?;
    }
    writeln!(out, "  interleave: {}", fec.interleave)
}

/// An address as YAML: IPv6 ones are quoted, as a plain `[` would start a list.
fn addr(addr: SocketAddr) -> String {
    match addr {
        SocketAddr::V4(_) => addr.to_string(),
        SocketAddr::V6(_) => quote(&addr.to_string()),
    }
}

/// A YAML double-quoted scalar (JSON string syntax is a subset of it), so that any text,
/// including `#`, `: ` or control characters, reads back as the same string.
fn quote(text: &str) -> String {
    serde_json::to_string(text).unwrap_or_else(|_| "\"\"".to_owned())
}

impl Proto {
    /// The name the config file uses.
    pub fn name(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

impl UdpMode {
    /// The name the config file uses.
    pub fn name(self) -> &'static str {
        match self {
            UdpMode::Datagram => "datagram",
            UdpMode::Reliable => "reliable",
        }
    }
}

impl fmt::Display for UdpMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Backend {
    pub const ALL: [Backend; 3] = [Backend::Auto, Backend::IoUring, Backend::Epoll];

    /// The name the config file uses.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Auto => "auto",
            Backend::IoUring => "io_uring",
            Backend::Epoll => "epoll",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|backend| backend.name() == name)
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "vk7QWrLp2iOdreXkJU6RQUp5dGQH2cB+VkGqVdVRKhA=";

    fn parse(text: &str) -> Config {
        Config::parse(Path::new("c.yaml"), text).unwrap_or_else(|err| panic!("{err}\n{text}"))
    }

    /// Everything but the key, which has no `PartialEq` on purpose.
    fn assert_same(a: &Config, b: &Config) {
        assert_eq!(a.name, b.name);
        assert_eq!(a.listen, b.listen);
        assert_eq!(a.key.as_bytes(), b.key.as_bytes());
        assert_eq!(a.transport, b.transport);
        assert_eq!(a.shards, b.shards);
        assert_eq!(a.cpus, b.cpus);
        assert_eq!(a.io, b.io);
        assert_eq!(a.peers, b.peers);
        assert_eq!(a.maps, b.maps);
        assert_eq!(a.allow, b.allow);
        assert_eq!(a.control, b.control);
        assert_eq!(a.log, b.log);
    }

    #[test]
    fn masked_yaml_hides_the_key_and_reads_back() {
        for text in [
            format!("key: {KEY}\n"),
            format!(
                "key: {KEY}
name: office
listen: \"[::1]:4000\"
congestion: fixed
rate: 12.5mbit
mtu: 9000
rtt: {{min: 1500us, max: 2s}}
shards: 3
cpus: \"0-2,5,7-8\"
io: {{backend: io_uring, gso: false, steering: false}}
peers:
  - name: server
    addr: 127.0.0.1:4000
  - name: laptop
maps:
  - {{id: 100, listen: \"[::1]:2222\", peer: server}}
  - {{id: 4294967295, listen: 127.0.0.1:0, peer: laptop}}
  - {{id: 7, listen: 127.0.0.1:53, peer: server, proto: udp}}
  - {{id: 8, listen: 127.0.0.1:54, peer: server, proto: udp, mode: reliable}}
allow:
  - {{id: 100, target: 127.0.0.1:22}}
  - {{id: 9, target: 127.0.0.1:53, proto: udp}}
udp: {{idle_timeout: 90s, max_flows: 10}}
control:
  socket: \"/tmp/odd # path: x\"
log:
  level: engine=debug,warn
"
            ),
            format!("key: {KEY}\nrate: 8kbit\n"),
            format!("key: {KEY}\nprofile: normal\n"),
            format!("key: {KEY}\nprofile: normal\nfec: adaptive\n"),
            format!("key: {KEY}\nfec: off\n"),
            format!("key: {KEY}\nfec: {{mode: fixed, data: 8, parity: 3, interleave: 2}}\n"),
            format!("key: {KEY}\nfec: {{mode: adaptive, data: 30, interleave: 8}}\n"),
            format!("key: {KEY}\ncpus: [3]\nio: {{backend: epoll}}\n"),
            format!("key: {KEY}\ncpus: [9, 1, 2, 1]\nio:\n  gso: false\n"),
        ] {
            let config = parse(&text);
            let yaml = config.to_masked_yaml();
            assert!(yaml.contains("key: \"***\"\n"), "{yaml}");
            assert!(!yaml.contains(KEY), "{yaml}");
            let again = parse(&yaml.replace("\"***\"", KEY));
            assert_same(&config, &again);
        }
    }

    #[test]
    fn masked_yaml_shows_defaults() {
        let yaml = parse(&format!("key: {KEY}\n")).to_masked_yaml();
        for line in [
            "name: ~\n",
            "listen: ~",
            "profile: fast2\n",
            "congestion: bbr\n",
            "rate: ~",
            "mtu: 1400\n",
            "fec:\n  mode: adaptive\n  data: 10\n  interleave: 1\n",
            "shards: auto\n",
            "cpus: ~",
            "io:\n  backend: auto\n  gso: true\n  steering: true\n",
            "peers: []\n",
            "maps: []\n",
            "allow: []\n",
            "  socket: \"/run/coretun/engine.sock\"\n",
            "  level: \"info\"\n",
        ] {
            assert!(yaml.contains(line), "{line:?} missing from\n{yaml}");
        }
    }

    #[test]
    fn masked_yaml_shows_fec() {
        for (text, shown) in [
            ("profile: normal\n", "fec: off\n"),
            (
                "fec: {mode: fixed, data: 8, parity: 3}\n",
                "fec:\n  mode: fixed\n  data: 8\n  parity: 3\n  interleave: 1\n",
            ),
        ] {
            let yaml = parse(&format!("key: {KEY}\n{text}")).to_masked_yaml();
            assert!(yaml.contains(shown), "{shown:?} missing from\n{yaml}");
        }
    }

    #[test]
    fn proto_names() {
        assert_eq!(Proto::Tcp.to_string(), "tcp");
        assert_eq!(MapId(7).to_string(), "7");
    }

    #[test]
    fn backend_names() {
        for backend in Backend::ALL {
            assert_eq!(Backend::from_name(backend.name()), Some(backend));
            assert_eq!(backend.to_string(), backend.name());
        }
        assert_eq!(Backend::from_name("uring"), None);
        assert_eq!(Backend::default(), Backend::Auto);
    }
}
