//! What changed between two configs, for `ctl reload` and SIGHUP: which parts a running engine
//! can apply (maps, allow entries, peers, the log level), which apply to new sessions only (the
//! transport settings a live session negotiated or sized itself with), and which need a restart
//! (sockets, threads and keys made once at start-up).
//!
//! Maps and allow entries are matched by id, peers by name. A map or allow entry whose id stays
//! but whose contents change counts as removed and added: its connections are closed and its
//! listener is opened again.

use std::fmt::{self, Write as _};
use std::net::SocketAddr;

use super::{Allow, Config, Map, MapId, Rate, Shards, format_cpulist};

/// The difference between a running config and a new one ([`Config::diff`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConfigChange {
    /// Maps to start listening for: new ids, and ids whose entry changed.
    pub maps_added: Vec<MapId>,
    /// Maps to stop listening for, closing their connections: ids gone, and ids whose entry
    /// changed.
    pub maps_removed: Vec<MapId>,
    /// Allow entries new or changed.
    pub allow_added: Vec<MapId>,
    /// Allow entries gone or changed: the connections made for them are closed.
    pub allow_removed: Vec<MapId>,
    /// Peers (by name) to add.
    pub peers_added: Vec<String>,
    /// Peers (by name) to remove, closing their sessions.
    pub peers_removed: Vec<String>,
    /// Peers whose address changed (or that became dialled or accepted): their sessions are
    /// closed and dialled again where they have an address.
    pub peers_changed: Vec<String>,
    /// The transport settings of new sessions (profile, rate, congestion, RTT clamp, FEC)
    /// changed; live sessions keep the ones they started with.
    pub transport: bool,
    /// The new `log.level`, when it changed.
    pub log_level: Option<String>,
    /// One line per change that is applied, for a human.
    pub applied: Vec<String>,
    /// One line per change that needs a restart and is not applied.
    pub restart_needed: Vec<String>,
}

impl ConfigChange {
    /// Nothing differs.
    pub fn is_empty(&self) -> bool {
        self.applied.is_empty() && self.restart_needed.is_empty()
    }
}

impl Config {
    /// What changes when `old`, the running config, is replaced by `new`.
    pub fn diff(old: &Config, new: &Config) -> ConfigChange {
        let mut change = ConfigChange::default();
        diff_restart_only(old, new, &mut change);
        diff_transport(old, new, &mut change);
        diff_peers(old, new, &mut change);
        diff_maps(old, new, &mut change);
        diff_allow(old, new, &mut change);
        if old.udp != new.udp {
            change.applied.push(format!(
                "udp: idle_timeout {} -> {}, max_flows {} -> {} (for flows from now on)",
                super::convert::DurationText(old.udp.idle_timeout),
                super::convert::DurationText(new.udp.idle_timeout),
                old.udp.max_flows,
                new.udp.max_flows
            ));
        }
        if old.log.level != new.log.level {
            change
                .applied
                .push(format!("log.level: {} -> {}", old.log.level, new.log.level));
            change.log_level = Some(new.log.level.clone());
        }
        change
    }

    /// A copy of `self` (a new config) whose fields that only apply at start-up are those of
    /// `running`: what the engine runs after a reload, and what the next reload is compared
    /// with, so a change that needs a restart is reported until the engine restarts.
    pub fn with_startup_fields_of(&self, running: &Config) -> Config {
        Config {
            name: running.name.clone(),
            listen: running.listen,
            key: running.key.clone(),
            shards: running.shards,
            cpus: running.cpus.clone(),
            io: running.io,
            control: running.control.clone(),
            transport: super::Transport {
                mtu: running.transport.mtu,
                ..self.transport.clone()
            },
            ..self.clone()
        }
    }
}

/// Fields read once at start-up: the UDP socket, threads, the key, the name sent in handshakes,
/// the send buffers sized by the MTU and the control socket.
fn diff_restart_only(old: &Config, new: &Config, change: &mut ConfigChange) {
    let restart = &mut change.restart_needed;
    let mut push = |field: &str, from: String, to: String| {
        restart.push(format!(
            "{field}: {from} -> {to} needs a restart (not applied)"
        ));
    };
    if old.name != new.name {
        push(
            "name",
            or_none(old.name.as_deref()),
            or_none(new.name.as_deref()),
        );
    }
    if old.listen != new.listen {
        push("listen", addr_or_none(old.listen), addr_or_none(new.listen));
    }
    if old.transport.mtu != new.transport.mtu {
        let (from, to) = (old.transport.mtu, new.transport.mtu);
        push("mtu", from.to_string(), to.to_string());
    }
    if old.shards != new.shards {
        push("shards", shards(old.shards), shards(new.shards));
    }
    if old.cpus != new.cpus {
        push("cpus", cpus(old.cpus.as_deref()), cpus(new.cpus.as_deref()));
    }
    let (a, b) = (old.io, new.io);
    if a.backend != b.backend {
        push("io.backend", a.backend.to_string(), b.backend.to_string());
    }
    if a.gso != b.gso {
        push("io.gso", a.gso.to_string(), b.gso.to_string());
    }
    if a.steering != b.steering {
        push(
            "io.steering",
            a.steering.to_string(),
            b.steering.to_string(),
        );
    }
    if old.control != new.control {
        let (from, to) = (&old.control.socket, &new.control.socket);
        push(
            "control.socket",
            from.display().to_string(),
            to.display().to_string(),
        );
    }
    // The key itself is never shown.
    if old.key.as_bytes() != new.key.as_bytes() {
        restart.push("key: changed; needs a restart (not applied)".to_owned());
    }
}

/// Settings a session takes when it starts: new sessions get the new ones.
fn diff_transport(old: &Config, new: &Config, change: &mut ConfigChange) {
    const SUFFIX: &str = "(new sessions only; live sessions keep theirs)";
    let (a, b) = (&old.transport, &new.transport);
    let mut lines = Vec::new();
    if a.profile != b.profile {
        lines.push(format!(
            "profile: {} -> {}",
            a.profile.name(),
            b.profile.name()
        ));
    }
    if a.rate != b.rate {
        lines.push(format!("rate: {} -> {}", rate(a.rate), rate(b.rate)));
    }
    if a.min_rtt != b.min_rtt {
        lines.push(format!(
            "rtt.min: {:?} -> {:?}",
            DurationOrProfile(a.min_rtt),
            DurationOrProfile(b.min_rtt)
        ));
    }
    if a.max_rtt != b.max_rtt {
        lines.push(format!(
            "rtt.max: {:?} -> {:?}",
            DurationOrProfile(a.max_rtt),
            DurationOrProfile(b.max_rtt)
        ));
    }
    if a.fec != b.fec {
        lines.push(format!("fec: {} -> {}", a.fec, b.fec));
    }
    change.transport = !lines.is_empty();
    change
        .applied
        .extend(lines.into_iter().map(|line| format!("{line} {SUFFIX}")));
}

fn diff_peers(old: &Config, new: &Config, change: &mut ConfigChange) {
    for peer in &old.peers {
        if new.peer(&peer.name).is_none() {
            change.peers_removed.push(peer.name.clone());
            change.applied.push(format!(
                "peer {} removed; its sessions are closed",
                peer.name
            ));
        }
    }
    for peer in &new.peers {
        match old.peer(&peer.name) {
            None => {
                change.peers_added.push(peer.name.clone());
                change
                    .applied
                    .push(format!("peer {} added ({})", peer.name, reach(peer.addr)));
            }
            Some((_, before)) if before.addr != peer.addr => {
                change.peers_changed.push(peer.name.clone());
                change.applied.push(format!(
                    "peer {} changed: {} -> {}; its sessions are closed and set up again",
                    peer.name,
                    reach(before.addr),
                    reach(peer.addr)
                ));
            }
            Some(_) => {}
        }
    }
}

fn diff_maps(old: &Config, new: &Config, change: &mut ConfigChange) {
    let describe = |config: &Config, map: &Map| {
        let peer = config.peers.get(map.peer).map_or("?", |p| p.name.as_str());
        let proto = match map.mode {
            Some(mode) => format!("{} ({mode})", map.proto),
            None => map.proto.to_string(),
        };
        format!("{proto} {} -> peer {peer}", map.listen)
    };
    for map in &old.maps {
        let before = describe(old, map);
        match new.maps.iter().find(|m| m.id == map.id) {
            None => {
                change.maps_removed.push(map.id);
                change.applied.push(format!(
                    "map {} removed ({before}); its listener and connections are closed",
                    map.id
                ));
            }
            Some(now) => {
                let after = describe(new, now);
                if before != after {
                    change.maps_removed.push(map.id);
                    change.maps_added.push(map.id);
                    change.applied.push(format!(
                        "map {} changed ({before} becomes {after}); its connections are closed",
                        map.id
                    ));
                }
            }
        }
    }
    for map in &new.maps {
        if !old.maps.iter().any(|m| m.id == map.id) {
            change.maps_added.push(map.id);
            change
                .applied
                .push(format!("map {} added ({})", map.id, describe(new, map)));
        }
    }
}

fn diff_allow(old: &Config, new: &Config, change: &mut ConfigChange) {
    let describe = |allow: &Allow| format!("{} -> {}", allow.proto, allow.target);
    for allow in &old.allow {
        match new.allow.iter().find(|a| a.id == allow.id) {
            None => {
                change.allow_removed.push(allow.id);
                change.applied.push(format!(
                    "allow {} removed ({}); its connections are closed",
                    allow.id,
                    describe(allow)
                ));
            }
            Some(now) if now != allow => {
                change.allow_removed.push(allow.id);
                change.allow_added.push(allow.id);
                change.applied.push(format!(
                    "allow {} changed ({} becomes {}); its connections are closed",
                    allow.id,
                    describe(allow),
                    describe(now)
                ));
            }
            Some(_) => {}
        }
    }
    for allow in &new.allow {
        if !old.allow.iter().any(|a| a.id == allow.id) {
            change.allow_added.push(allow.id);
            change
                .applied
                .push(format!("allow {} added ({})", allow.id, describe(allow)));
        }
    }
}

fn or_none(text: Option<&str>) -> String {
    text.unwrap_or("~").to_owned()
}

fn addr_or_none(addr: Option<SocketAddr>) -> String {
    addr.map_or_else(|| "~".to_owned(), |a| a.to_string())
}

fn reach(addr: Option<SocketAddr>) -> String {
    match addr {
        Some(addr) => format!("dialled at {addr}"),
        None => "accepted, not dialled".to_owned(),
    }
}

fn shards(shards: Shards) -> String {
    match shards {
        Shards::Auto => "auto".to_owned(),
        Shards::Count(count) => count.to_string(),
    }
}

fn cpus(cpus: Option<&[usize]>) -> String {
    cpus.map_or_else(|| "~".to_owned(), format_cpulist)
}

fn rate(rate: Rate) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = match rate {
        Rate::Auto {
            max_bytes_per_sec: None,
        } => write!(out, "bbr, no cap"),
        Rate::Auto {
            max_bytes_per_sec: Some(bytes),
        } => write!(out, "bbr, at most {bytes} bytes/s"),
        Rate::Fixed { bytes_per_sec } => write!(out, "fixed {bytes_per_sec} bytes/s"),
    };
    out
}

/// An RTT clamp for a human: the duration, or the profile's default.
struct DurationOrProfile(Option<std::time::Duration>);

impl fmt::Debug for DurationOrProfile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(d) => write!(f, "{d:?}"),
            None => f.write_str("the profile's"),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    const KEY: &str = "vk7QWrLp2iOdreXkJU6RQUp5dGQH2cB+VkGqVdVRKhA=";
    const OTHER_KEY: &str = "AAAAWrLp2iOdreXkJU6RQUp5dGQH2cB+VkGqVdVRKhA=";

    fn parse(text: &str) -> Config {
        Config::parse(Path::new("c.yaml"), text).unwrap_or_else(|err| panic!("{err}\n{text}"))
    }

    fn base(extra: &str) -> Config {
        parse(&format!("{}{extra}", base_text()))
    }

    #[test]
    fn same_config_changes_nothing() {
        let change = Config::diff(&base(""), &base(""));
        assert!(change.is_empty(), "{change:?}");
        assert_eq!(change, ConfigChange::default());
    }

    #[test]
    fn maps_added_removed_and_changed() {
        let old = base("");
        let new = parse(&format!(
            "key: {KEY}
listen: 0.0.0.0:4000
peers:
  - {{name: laptop}}
  - {{name: edge, addr: 127.0.0.1:5000}}
maps:
  - {{id: 2, listen: 127.0.0.1:9012, peer: laptop}}
  - {{id: 3, listen: 127.0.0.1:9000, peer: edge}}
allow:
  - {{id: 7, target: 127.0.0.1:22}}
"
        ));
        let change = Config::diff(&old, &new);
        assert_eq!(change.maps_added, [MapId(2), MapId(3)]);
        assert_eq!(change.maps_removed, [MapId(1), MapId(2)]);
        // Reordered peers are the same peers.
        assert!(change.peers_added.is_empty() && change.peers_changed.is_empty());
        assert!(change.restart_needed.is_empty(), "{change:?}");
        assert_eq!(
            change.applied,
            [
                "map 1 removed (tcp 127.0.0.1:9001 -> peer edge); its listener and connections are closed",
                "map 2 changed (tcp 127.0.0.1:9002 -> peer laptop becomes tcp 127.0.0.1:9012 -> peer laptop); its connections are closed",
                "map 3 added (tcp 127.0.0.1:9000 -> peer edge)",
            ]
        );
    }

    #[test]
    fn a_map_moved_to_another_peer_is_changed() {
        let old = base("");
        let text = base_text().replace(
            "{id: 1, listen: 127.0.0.1:9001, peer: edge}",
            "{id: 1, listen: 127.0.0.1:9001, peer: laptop}",
        );
        let change = Config::diff(&old, &parse(&text));
        assert_eq!(change.maps_added, [MapId(1)]);
        assert_eq!(change.maps_removed, [MapId(1)]);
    }

    fn base_text() -> String {
        format!(
            "key: {KEY}
listen: 0.0.0.0:4000
peers:
  - {{name: edge, addr: 127.0.0.1:5000}}
  - {{name: laptop}}
maps:
  - {{id: 1, listen: 127.0.0.1:9001, peer: edge}}
  - {{id: 2, listen: 127.0.0.1:9002, peer: laptop}}
allow:
  - {{id: 7, target: 127.0.0.1:22}}
"
        )
    }

    #[test]
    fn allow_entries_and_peers() {
        let old = base("");
        let text = base_text()
            .replace("  - {name: laptop}\n", "  - {name: office}\n")
            .replace("peer: laptop", "peer: office")
            .replace("127.0.0.1:5000", "127.0.0.1:5001")
            .replace(
                "  - {id: 7, target: 127.0.0.1:22}\n",
                "  - {id: 7, target: 127.0.0.1:23}\n  - {id: 8, target: 127.0.0.1:80}\n",
            );
        let change = Config::diff(&old, &parse(&text));
        assert_eq!(change.peers_removed, ["laptop"]);
        assert_eq!(change.peers_added, ["office"]);
        assert_eq!(change.peers_changed, ["edge"]);
        assert_eq!(change.allow_removed, [MapId(7)]);
        assert_eq!(change.allow_added, [MapId(7), MapId(8)]);
        // Map 2 now names another peer.
        assert_eq!(change.maps_removed, [MapId(2)]);
        for line in [
            "peer laptop removed; its sessions are closed",
            "peer office added (accepted, not dialled)",
            "peer edge changed: dialled at 127.0.0.1:5000 -> dialled at 127.0.0.1:5001; its sessions are closed and set up again",
            "allow 7 changed (tcp -> 127.0.0.1:22 becomes tcp -> 127.0.0.1:23); its connections are closed",
            "allow 8 added (tcp -> 127.0.0.1:80)",
        ] {
            assert!(
                change.applied.iter().any(|l| l == line),
                "{line:?} not in {:#?}",
                change.applied
            );
        }
    }

    #[test]
    fn transport_applies_to_new_sessions() {
        let old = base("");
        let new = base("profile: normal\nrate: 8mbit\nrtt: {min: 2ms}\n");
        let change = Config::diff(&old, &new);
        assert!(change.transport);
        assert!(change.restart_needed.is_empty());
        assert!(change.maps_added.is_empty() && change.maps_removed.is_empty());
        let lines = change.applied.join("\n");
        for part in [
            "profile: fast2 -> normal (new sessions only",
            "rate: bbr, no cap -> bbr, at most 1000000 bytes/s (new sessions only",
            "rtt.min: the profile's -> 2ms",
            // `normal` has no FEC by default.
            "fec: adaptive (groups of up to 10) -> off",
        ] {
            assert!(lines.contains(part), "{part:?} not in\n{lines}");
        }
    }

    #[test]
    fn log_level_applies() {
        let change = Config::diff(&base(""), &base("log: {level: debug}\n"));
        assert_eq!(change.log_level.as_deref(), Some("debug"));
        assert_eq!(change.applied, ["log.level: info -> debug"]);
    }

    #[test]
    fn startup_fields_need_a_restart() {
        let old = base("");
        let text = base_text()
            .replace("0.0.0.0:4000", "0.0.0.0:4001")
            .replace(KEY, OTHER_KEY)
            + "shards: 3\nmtu: 1300\nio: {backend: epoll, gso: false}\ncpus: [0]\ncontrol: {socket: /tmp/x.sock}\nname: n\n";
        let new = parse(&text);
        let change = Config::diff(&old, &new);
        assert!(change.applied.is_empty(), "{change:?}");
        let lines = change.restart_needed.join("\n");
        for part in [
            "listen: 0.0.0.0:4000 -> 0.0.0.0:4001 needs a restart (not applied)",
            "key: changed; needs a restart (not applied)",
            "shards: auto -> 3 needs a restart",
            "mtu: 1400 -> 1300 needs a restart",
            "io.backend: auto -> epoll needs a restart",
            "io.gso: true -> false needs a restart",
            "cpus: ~ -> 0 needs a restart",
            "control.socket: /run/coretun/engine.sock -> /tmp/x.sock needs a restart",
            "name: ~ -> n needs a restart",
        ] {
            assert!(lines.contains(part), "{part:?} not in\n{lines}");
        }
        assert!(!lines.contains(KEY) && !lines.contains(OTHER_KEY));

        // What runs after the reload keeps the start-up fields, so the next reload of the same
        // file reports them again, and nothing else.
        let running = new.with_startup_fields_of(&old);
        assert_eq!(running.listen, old.listen);
        assert_eq!(running.transport.mtu, 1400);
        assert_eq!(running.io, old.io);
        let again = Config::diff(&running, &new);
        assert!(again.applied.is_empty());
        assert_eq!(again.restart_needed, change.restart_needed);
    }
}
