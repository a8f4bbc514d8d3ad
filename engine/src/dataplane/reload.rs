//! Reloading the config file while the engine runs (`ctl reload`, SIGHUP).
//!
//! The control thread re-reads the file the engine started with, checks it exactly as at
//! start-up (a rejected file changes nothing, and the error names the file, line and field),
//! compares it with what runs ([`Config::diff`]) and sends every shard the result
//! ([`ShardMsg::Reconfigure`]), the first shard alone first so that a map on port 0 gets one port
//! that the others then bind too (as at start-up). What applies:
//!
//! * maps: listeners of added maps open on every shard, those of removed maps close, and their
//!   connections are closed cleanly (a FIN to the local client, the stream reset toward the
//!   peer); connections on other maps are untouched;
//! * allow entries: new streams are checked against the new list; connections made for a
//!   removed entry are closed like those of a removed map;
//! * peers: new ones are dialled, removed ones' sessions closed, changed ones re-established;
//! * profile, rate, congestion, RTT clamp, FEC: sessions set up from now on (live ones keep the
//!   settings they negotiated);
//! * `log.level`, unless `--log-level` or `RUST_LOG` chose the level.
//!
//! Everything read once at start-up (listen address, shards, CPUs, I/O, control socket, key,
//! name, MTU) is reported as needing a restart and keeps its running value.
//!
//! Peers are numbered by slot, not by their place in the file: a name keeps its slot for the
//! engine's lifetime (a removed peer's slot stays empty until a reload adds the name again), so
//! the numbers that maps, the peer directory and waiting connections hold never change meaning.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use engine_api::config::{Config, ConfigChange, MapId, Peer, Proto};
use engine_proto::SessionConfig;

use super::control::{ShardHandle, ShardMsg};
use super::handover::PeerDirectory;
use super::shard::{Listener, Shard};
use super::stats::MapKind;
use super::tcp;

/// How long the control thread waits for one shard to apply a reload.
const SHARD_TIMEOUT: Duration = Duration::from_secs(5);

/// Sets the log filter; `Err` with the reason when the directives are refused.
pub(crate) type LogReload = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// Re-reads and applies the config file; one reload at a time.
pub(crate) struct Reloader {
    path: PathBuf,
    /// `None` when `--log-level` or `RUST_LOG` set the filter: `log.level` then does nothing.
    log: Option<LogReload>,
    directory: Arc<PeerDirectory>,
    state: Mutex<State>,
}

impl std::fmt::Debug for Reloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloader")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

struct State {
    /// What runs: the last file accepted, with the start-up fields of the first. The next
    /// reload is compared with it.
    config: Config,
    /// Peer names by slot.
    slots: Vec<String>,
}

/// What every shard applies.
#[derive(Debug)]
pub(crate) struct ReloadPlan {
    /// The config as shards see it: `peers` by slot (removed peers keep theirs, without an
    /// address) and every map's `peer` a slot.
    pub(crate) config: Arc<Config>,
    /// Which slots the new config names.
    pub(crate) live_peers: Vec<bool>,
    pub(crate) change: ConfigChange,
    /// For sessions set up from now on.
    pub(crate) session: SessionConfig,
}

/// [`ShardMsg::Reconfigure`]: the plan, where to listen for the added maps, and where to answer.
#[derive(Debug)]
pub(crate) struct Reconfigure {
    pub(crate) plan: Arc<ReloadPlan>,
    /// Listen addresses of the added maps (ports that were 0 as the first shard bound them).
    pub(crate) listen: Vec<(MapId, SocketAddr)>,
    /// One entry per added map: the bound address, or why it could not be bound.
    pub(crate) reply: Sender<Vec<Result<(MapId, SocketAddr), String>>>,
}

/// The outcome of a reload that was accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Reloaded {
    /// Maps in effect afterwards.
    pub(crate) maps: u32,
    /// What changed and was applied, one line each.
    pub(crate) changes: Vec<String>,
    /// What changed but needs a restart.
    pub(crate) restart_needed: Vec<String>,
}

impl Reloader {
    /// `config` is what the engine started with from `path`.
    pub(crate) fn new(
        path: PathBuf,
        config: &Config,
        log: Option<LogReload>,
        directory: Arc<PeerDirectory>,
    ) -> Self {
        Self {
            path,
            log,
            directory,
            state: Mutex::new(State {
                config: config.clone(),
                slots: config.peers.iter().map(|p| p.name.clone()).collect(),
            }),
        }
    }

    /// Re-reads the file and applies it. `Err`: the file was rejected (the message is the one
    /// start-up would print) and nothing changed.
    pub(crate) fn reload(&self, shards: &[ShardHandle]) -> Result<Reloaded, String> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let new = crate::config::load(&self.path).map_err(|err| err.to_string())?;
        let mut change = Config::diff(&state.config, &new);
        let effective = new.with_startup_fields_of(&state.config);
        let maps = effective.maps.len() as u32;
        let applies = !change.applied.is_empty();
        if applies {
            check_listen(&state.config, &effective, &change)?;
        }
        if let Some(level) = &change.log_level {
            let note = match &self.log {
                Some(set) => set(level).err().map(|err| format!(" (not applied: {err})")),
                None => Some(" (not applied: --log-level or RUST_LOG sets the level)".to_owned()),
            };
            if let Some(note) = note
                && let Some(line) = change
                    .applied
                    .iter_mut()
                    .find(|l| l.starts_with("log.level:"))
            {
                line.push_str(&note);
            }
        }
        let mut changes = change.applied.clone();
        let restart_needed = change.restart_needed.clone();
        if applies {
            let (plan, slots) = plan(&effective, &state.slots, change);
            self.directory.grow(slots.len());
            changes.extend(apply(shards, &Arc::new(plan)));
            state.slots = slots;
        }
        state.config = effective;
        Ok(Reloaded {
            maps,
            changes,
            restart_needed,
        })
    }
}

/// Added maps must be able to listen: an address another program holds rejects the reload
/// before anything changes. Addresses our own listeners hold are not tried (they share them by
/// SO_REUSEPORT, and a trial listener there could take a client's connection with it).
fn check_listen(running: &Config, config: &Config, change: &ConfigChange) -> Result<(), String> {
    for map in config
        .maps
        .iter()
        .filter(|m| change.maps_added.contains(&m.id))
    {
        let ours = running
            .maps
            .iter()
            .any(|m| m.listen == map.listen && m.proto == map.proto);
        if map.listen.port() != 0 && !ours {
            match map.proto {
                Proto::Tcp => tcp::listen(map.listen).map(drop).map_err(|err| {
                    format!("map {}: cannot listen on TCP {}: {err}", map.id, map.listen)
                })?,
                Proto::Udp => super::udp::bind_map(map.listen).map(drop).map_err(|err| {
                    format!("map {}: cannot bind UDP {}: {err}", map.id, map.listen)
                })?,
            }
        }
    }
    Ok(())
}

/// The shards' view of `config`: peers by slot (new names get new slots), maps naming slots.
fn plan(config: &Config, slots: &[String], change: ConfigChange) -> (ReloadPlan, Vec<String>) {
    let mut slots = slots.to_vec();
    for peer in &config.peers {
        if !slots.contains(&peer.name) {
            slots.push(peer.name.clone());
        }
    }
    let slot_of = |name: &str| slots.iter().position(|s| s == name);
    let mut shard_config = config.clone();
    shard_config.peers = slots
        .iter()
        .map(|name| match config.peer(name) {
            Some((_, peer)) => peer.clone(),
            None => Peer {
                name: name.clone(),
                addr: None,
            },
        })
        .collect();
    let live_peers = slots.iter().map(|n| config.peer(n).is_some()).collect();
    for map in &mut shard_config.maps {
        let name = config.peers.get(map.peer).map(|p| p.name.as_str());
        // Every map names a peer of the same config (the parser checks it).
        map.peer = name.and_then(slot_of).unwrap_or(usize::MAX);
    }
    let plan = ReloadPlan {
        session: super::endpoint_config(config).session,
        config: Arc::new(shard_config),
        live_peers,
        change,
    };
    (plan, slots)
}

/// Sends the plan to every shard (the first alone first) and waits for each; returns lines for
/// what went wrong.
fn apply(shards: &[ShardHandle], plan: &Arc<ReloadPlan>) -> Vec<String> {
    let mut problems = Vec::new();
    let mut listen: Vec<(MapId, SocketAddr)> = plan
        .config
        .maps
        .iter()
        .filter(|m| plan.change.maps_added.contains(&m.id))
        .map(|m| (m.id, m.listen))
        .collect();
    for (index, shard) in shards.iter().enumerate() {
        let (reply, answer) = crossbeam_channel::bounded(1);
        shard.send(ShardMsg::Reconfigure(Box::new(Reconfigure {
            plan: plan.clone(),
            listen: listen.clone(),
            reply,
        })));
        match answer.recv_timeout(SHARD_TIMEOUT) {
            Ok(bound) => {
                for result in bound {
                    match result {
                        Ok((id, addr)) => {
                            if let Some(entry) = listen.iter_mut().find(|(m, _)| *m == id) {
                                entry.1 = addr;
                            }
                        }
                        Err(err) => {
                            tracing::error!("reload: shard {index}: {err}");
                            problems.push(format!("shard {index}: {err}"));
                        }
                    }
                }
            }
            Err(_) => {
                let line = format!(
                    "shard {index} did not confirm the reload within {} s",
                    SHARD_TIMEOUT.as_secs()
                );
                tracing::warn!("{line}");
                problems.push(line);
            }
        }
    }
    problems
}

impl Shard {
    /// Applies a reload on this shard (see the module documentation), then answers.
    pub(crate) fn reconfigure(&mut self, now: Instant, msg: Reconfigure) {
        let plan = &msg.plan;
        let change = &plan.change;
        // Removed maps first: their connections end with a FIN before any peer session they
        // ran over is closed below.
        for i in 0..self.listeners.len() {
            let retire = self
                .listener(i)
                .is_some_and(|l| !l.retired && change.maps_removed.contains(&l.map));
            if retire {
                self.retire_listener(i);
            }
        }
        let removed: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, c)| {
                if c.kind == MapKind::Listen {
                    change.maps_removed.contains(&c.map)
                } else {
                    change.allow_removed.contains(&c.map)
                }
            })
            .map(|(index, _)| index)
            .collect();
        if !removed.is_empty() {
            tracing::info!(
                connections = removed.len(),
                "closing connections of removed maps and allow entries"
            );
        }
        for index in removed {
            self.close_removed(index);
        }
        self.udp_reconfigure(&change.maps_removed, &change.allow_removed);
        self.config = plan.config.clone();
        self.reconfigure_peers(
            now,
            &plan.config.peers,
            &plan.live_peers,
            &change.peers_changed,
        );
        if change.transport {
            self.endpoint.set_session_config(plan.session.clone());
        }
        let mut bound = Vec::new();
        for &(id, addr) in &msg.listen {
            bound.push(self.add_listener(id, addr));
        }
        let _ = msg.reply.send(bound);
    }

    /// Stops listener `i` accepting; it closes once its accept has ended.
    fn retire_listener(&mut self, i: usize) {
        let Some(listener) = self.listener_mut(i) else {
            return;
        };
        listener.retired = true;
        listener.retry_at = None;
        tracing::info!(map = %listener.map, "map removed: listener closed");
        let fd = std::os::fd::AsRawFd::as_raw_fd(&listener.fd);
        // Stops listening now, before the reload is confirmed (the descriptor itself closes
        // only once the accept in flight has ended): connections in its backlog are reset and
        // new ones refused, and it leaves the shards' reuseport group.
        // SAFETY: shutdown(2) on a socket the listener owns.
        unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
        if listener.armed {
            self.io.push(
                super::io::Token::new(super::io::Op::CancelAccept, i, 0),
                super::io::IoOp::Cancel { fd },
            );
        } else {
            self.free_listener(i);
        }
    }

    fn add_listener(&mut self, id: MapId, addr: SocketAddr) -> Result<(MapId, SocketAddr), String> {
        let udp = self
            .config
            .maps
            .iter()
            .any(|m| m.id == id && m.proto == Proto::Udp);
        if udp {
            let fd = super::udp::bind_map(addr)
                .map_err(|err| format!("map {id}: cannot bind UDP {addr}: {err}"))?;
            let local = tcp::local_addr(&fd).map_err(|err| format!("map {id}: {err}"))?;
            let i = self.udp_maps.add_listener(fd, id);
            if self.index == 0 {
                tracing::info!(map = %id, addr = %local, "map added: listening for UDP datagrams");
            }
            self.arm_udp_listener(i);
            return Ok((id, local));
        }
        let fd = tcp::listen(addr)
            .map_err(|err| format!("map {id}: cannot listen on TCP {addr}: {err}"))?;
        let local = tcp::local_addr(&fd).map_err(|err| format!("map {id}: {err}"))?;
        let listener = Listener {
            fd,
            map: id,
            armed: false,
            retry_at: None,
            retired: false,
        };
        let i = match self.listeners.iter().position(Option::is_none) {
            Some(i) => {
                self.listeners[i] = Some(listener);
                i
            }
            None => {
                self.listeners.push(Some(listener));
                self.listeners.len() - 1
            }
        };
        if self.index == 0 {
            tracing::info!(map = %id, addr = %local, "map added: listening for TCP connections");
        }
        self.arm_accept(i);
        Ok((id, local))
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    const KEY: &str = "vk7QWrLp2iOdreXkJU6RQUp5dGQH2cB+VkGqVdVRKhA=";

    fn parse(peers: &str, maps: &str) -> Config {
        let maps = if maps.is_empty() {
            " []\n".to_owned()
        } else {
            format!("\n{maps}")
        };
        let text = format!("key: {KEY}\nlisten: 127.0.0.1:0\npeers:\n{peers}maps:{maps}");
        Config::parse(Path::new("c.yaml"), &text).unwrap_or_else(|e| panic!("{e}\n{text}"))
    }

    #[test]
    fn peers_keep_their_slots() {
        let old = parse(
            "  - {name: a}\n  - {name: b}\n",
            "  - {id: 1, listen: 127.0.0.1:1, peer: b}\n",
        );
        let slots: Vec<String> = old.peers.iter().map(|p| p.name.clone()).collect();
        let new = parse(
            "  - {name: c, addr: 127.0.0.1:9}\n  - {name: b}\n",
            "  - {id: 1, listen: 127.0.0.1:1, peer: b}\n  - {id: 2, listen: 127.0.0.1:2, peer: c}\n",
        );
        let change = Config::diff(&old, &new);
        let (plan, slots) = plan(&new, &slots, change);
        assert_eq!(slots, ["a", "b", "c"]);
        assert_eq!(plan.live_peers, [false, true, true]);
        let peers = &plan.config.peers;
        assert_eq!((peers[0].name.as_str(), peers[0].addr), ("a", None));
        assert_eq!(peers[2].addr, Some("127.0.0.1:9".parse().unwrap()));
        let map_peers: Vec<usize> = plan.config.maps.iter().map(|m| m.peer).collect();
        assert_eq!(map_peers, [1, 2]);

        // `a` comes back in its old slot.
        let again = parse("  - {name: a}\n", "");
        let (plan, slots) = plan_again(&new, &again, &slots);
        assert_eq!(slots, ["a", "b", "c"]);
        assert_eq!(plan.live_peers, [true, false, false]);
    }

    fn plan_again(old: &Config, new: &Config, slots: &[String]) -> (ReloadPlan, Vec<String>) {
        plan(new, slots, Config::diff(old, new))
    }
}
