//! The dataplane: shard threads (one I/O loop each, on io_uring or epoll), the control thread,
//! and the process's lifecycle (start-up checks, readiness, signals, shutdown).

mod checks;
mod conn;
mod control;
mod forward;
mod handover;
mod io;
mod peers;
mod reload;
mod shard;
mod sockaddr;
mod stats;
mod steer;
mod tcp;
mod udp;
mod udp_frame;
mod udp_map;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use engine_api::config::{Backend, Config, Rate};
use engine_proto::arq::{BbrConfig, RateControlConfig};
use engine_proto::{EndpointConfig, SessionConfig};

use self::control::{ControlContext, ShardHandle, ShardMsg};
use self::handover::PeerDirectory;
use self::io::{BackendKind, Io};
use self::shard::{Bound, Shard, ShardSetup};

pub(crate) use self::reload::LogReload;

/// Runs the engine until SIGTERM or SIGINT; SIGHUP reloads the config. `log` sets the log
/// filter when `log.level` changes (`None`: the command line or `RUST_LOG` chose it).
pub(crate) fn run(
    config_path: &Path,
    config: Config,
    log: Option<LogReload>,
) -> anyhow::Result<()> {
    let config = Arc::new(config);
    let signals = Signals::block()?;
    let plan = Plan::new(&config)?;
    let shard_count = plan.cpus.len();
    let listener = control::bind(&config.control.socket)?;
    let endpoint = endpoint_config(&config);
    // Consecutive steering hints from a random base: a peer with N shards spreads our sessions
    // over N of its shards, and different nodes start at different places.
    let hint_base = u32::from_le_bytes(random_seed()?[..4].try_into().unwrap_or_default());

    // Every shard's control handle exists before any shard starts, so a shard can hand traffic
    // to one that is still binding its sockets (the message waits in its channel).
    let mut handles = Vec::with_capacity(shard_count);
    let mut ends = Vec::with_capacity(shard_count);
    for _ in 0..shard_count {
        let (handle, inbox, wake) = ShardHandle::new().context("cannot create an eventfd")?;
        handles.push(handle);
        ends.push((inbox, wake));
    }
    let siblings: Arc<[ShardHandle]> = handles.clone().into();
    let directory = Arc::new(PeerDirectory::new(config.peers.len(), shard_count));

    let mut threads: Vec<JoinHandle<anyhow::Result<()>>> = Vec::new();
    // With `listen`, every shard binds the same address (port resolved by the first one) into
    // one reuseport group; a node that only dials gives each shard its own ephemeral port.
    let mut udp_addr = config.listen.unwrap_or_else(|| unspecified_for(&config));
    let mut map_addrs: Vec<SocketAddr> = config.maps.iter().map(|m| m.listen).collect();
    for (index, (inbox, wake)) in ends.into_iter().enumerate() {
        let setup = ShardSetup {
            index,
            core: plan.cpus[index].map(|id| core_affinity::CoreId { id }),
            config: config.clone(),
            endpoint: EndpointConfig {
                shard: index as u8,
                steering_hint: hint_base.wrapping_add(index as u32),
                ..endpoint.clone()
            },
            seed: random_seed()?,
            udp_addr,
            map_addrs: map_addrs.clone(),
            inbox,
            wake,
            backend: plan.backend,
            gso: plan.gso,
            steer: plan.steering && index == 0 && config.listen.is_some() && shard_count > 1,
            shards: shard_count,
            siblings: siblings.clone(),
            directory: directory.clone(),
        };
        let (bound_tx, bound_rx) = crossbeam_channel::bounded(1);
        let thread = thread::Builder::new()
            .name(format!("shard-{index}"))
            .spawn(move || shard_main(setup, bound_tx))
            .context("cannot start a shard thread")?;
        let bound: Bound = match bound_rx.recv() {
            Ok(Ok(bound)) => bound,
            Ok(Err(err)) => return Err(err),
            Err(_) => {
                return Err(thread.join().map_or_else(
                    |_| anyhow!("shard {index} panicked"),
                    |r| r.err().unwrap_or_else(|| anyhow!("shard {index} exited")),
                ));
            }
        };
        if config.listen.is_some() {
            udp_addr = bound.udp;
        }
        map_addrs = bound.maps.clone();
        threads.push(thread);
        if index == 0 {
            log_bound(&config, &bound);
        }
    }

    let context = Arc::new(ControlContext {
        config_path: config_path.to_owned(),
        started: Instant::now(),
        shards: handles.clone(),
        backend: plan.backend.name(),
        reloader: reload::Reloader::new(config_path.to_owned(), &config, log, directory),
    });
    let served = context.clone();
    thread::Builder::new()
        .name("control".into())
        .spawn(move || control::serve(listener, served))
        .context("cannot start the control thread")?;
    tracing::info!(
        shards = shard_count,
        backend = plan.backend.name(),
        control = %config.control.socket.display(),
        "engine ready"
    );

    // Wait for a signal, or for a shard to fail.
    let failure = loop {
        if let Some(signal) = signals.wait(Duration::from_millis(200)) {
            match signal {
                libc::SIGHUP => sighup(&context),
                _ => {
                    tracing::info!(signal, "stopping");
                    break None;
                }
            }
        }
        if let Some(i) = threads.iter().position(|t| t.is_finished()) {
            let result = threads.remove(i).join();
            break Some(match result {
                Ok(Ok(())) => anyhow!("a shard stopped unexpectedly"),
                Ok(Err(err)) => err,
                Err(_) => anyhow!("a shard panicked"),
            });
        }
    };
    for handle in &handles {
        handle.send(ShardMsg::Shutdown);
    }
    for thread in threads {
        let _ = thread.join();
    }
    let _ = std::fs::remove_file(&config.control.socket);
    match failure {
        None => Ok(()),
        Some(err) => Err(err),
    }
}

/// SIGHUP: `ctl reload`, with the outcome in the log.
fn sighup(context: &ControlContext) {
    match context.reloader.reload(&context.shards) {
        Ok(reloaded) => {
            if reloaded.changes.is_empty() && reloaded.restart_needed.is_empty() {
                tracing::info!("SIGHUP: config reloaded, nothing changed");
            } else {
                tracing::info!("SIGHUP: config reloaded");
            }
            for line in &reloaded.changes {
                tracing::info!("reload: {line}");
            }
            for line in &reloaded.restart_needed {
                tracing::warn!("reload: {line}");
            }
        }
        Err(err) => tracing::error!("SIGHUP: config rejected, the running config stays: {err}"),
    }
}

/// How the dataplane runs on this host: shards and their CPUs, the I/O backend, GSO and
/// steering, decided once before any shard starts.
#[derive(Debug)]
struct Plan {
    /// One entry per shard: the CPU to pin it to, if any.
    cpus: Vec<Option<usize>>,
    backend: BackendKind,
    gso: bool,
    steering: bool,
}

impl Plan {
    /// Applies the start-up checks; an error stops the engine with a message saying what to
    /// change.
    fn new(config: &Config) -> anyhow::Result<Self> {
        let online = checks::online_cpus().unwrap_or_else(|err| {
            tracing::warn!(%err, "cannot read the online CPUs; shards are not pinned");
            Vec::new()
        });
        let shards = checks::plan_shards(config.shards, config.cpus.as_deref(), &online)
            .map_err(|msg| anyhow!("{msg}"))?;
        for warning in &shards.warnings {
            tracing::warn!("{warning}");
        }
        let backend = choose_backend(config.io.backend, shards.cpus.len())?;
        Ok(Self {
            cpus: shards.cpus,
            backend,
            gso: config.io.gso,
            steering: config.io.steering,
        })
    }
}

/// The I/O backend: io_uring where the kernel (and RLIMIT_MEMLOCK) allow it, else epoll, with
/// a log line saying which and why; a forced io_uring that cannot run is an error.
fn choose_backend(wanted: Backend, shards: usize) -> anyhow::Result<BackendKind> {
    let usable = || -> Result<(), String> {
        checks::uring_kernel_check()?;
        checks::memlock_check(Io::uring_pinned_bytes(), shards)?;
        // A ring with its buffer rings, dropped at once: the only reliable test of whether
        // io_uring works here (seccomp, `kernel.io_uring_disabled`, old kernels).
        Io::new(BackendKind::IoUring)
            .map(drop)
            .map_err(|err| format!("io_uring cannot be set up: {err}"))
    };
    match wanted {
        Backend::Epoll => {
            tracing::info!("I/O backend: epoll (io.backend: epoll)");
            Ok(BackendKind::Epoll)
        }
        Backend::IoUring => {
            usable().map_err(|msg| anyhow!("io.backend is io_uring, but {msg}"))?;
            tracing::info!("I/O backend: io_uring (io.backend: io_uring)");
            Ok(BackendKind::IoUring)
        }
        Backend::Auto => match usable() {
            Ok(()) => {
                tracing::info!("I/O backend: io_uring");
                Ok(BackendKind::IoUring)
            }
            Err(msg) => {
                tracing::warn!("io_uring is not available ({msg}); using the epoll backend");
                Ok(BackendKind::Epoll)
            }
        },
    }
}

fn shard_main(
    setup: ShardSetup,
    bound_tx: crossbeam_channel::Sender<anyhow::Result<Bound>>,
) -> anyhow::Result<()> {
    let index = setup.index;
    // Every log line of this thread names its shard.
    let _span = tracing::info_span!("shard", id = index).entered();
    if let Some(core) = setup.core
        && !core_affinity::set_for_current(core)
    {
        tracing::warn!(core = core.id, "cannot pin the shard to its core");
    }
    match Shard::new(setup) {
        Ok((shard, bound)) => {
            let _ = bound_tx.send(Ok(bound));
            shard.run().with_context(|| format!("shard {index} failed"))
        }
        Err(err) => {
            let _ = bound_tx.send(Err(
                anyhow::Error::new(err).context(format!("shard {index} cannot start"))
            ));
            Ok(())
        }
    }
}

fn log_bound(config: &Config, bound: &Bound) {
    if config.listen.is_some() {
        tracing::info!(addr = %bound.udp, "accepting sessions on UDP");
    }
    for (map, addr) in config.maps.iter().zip(&bound.maps) {
        let peer = config.peers.get(map.peer).map_or("?", |p| p.name.as_str());
        match map.proto {
            engine_api::config::Proto::Tcp => {
                tracing::info!(map = %map.id, %addr, peer, "listening for TCP connections");
            }
            engine_api::config::Proto::Udp => {
                let mode = map.mode.unwrap_or_default();
                tracing::info!(map = %map.id, %addr, peer, %mode, "listening for UDP datagrams");
            }
        }
    }
    for allow in &config.allow {
        tracing::info!(map = %allow.id, target = %allow.target, proto = %allow.proto, "allowing flows to target");
    }
}

/// A node that only dials out binds an ephemeral port on the family of its first peer.
fn unspecified_for(config: &Config) -> SocketAddr {
    let v6 = config
        .peers
        .iter()
        .filter_map(|p| p.addr)
        .next()
        .is_some_and(|a| a.is_ipv6());
    let ip = if v6 {
        IpAddr::V6(Ipv6Addr::UNSPECIFIED)
    } else {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    };
    SocketAddr::new(ip, 0)
}

/// The protocol core's settings from the config.
fn endpoint_config(config: &Config) -> EndpointConfig {
    let t = &config.transport;
    let mut session = SessionConfig::for_profile(t.profile);
    session.mtu = t.mtu;
    session.rate = match t.rate {
        Rate::Auto { max_bytes_per_sec } => RateControlConfig::Bbr(BbrConfig {
            mtu: t.mtu as u64,
            initial_cwnd_bytes: 32 * t.mtu as u64,
            min_cwnd_bytes: 4 * t.mtu as u64,
            max_rate: max_bytes_per_sec,
        }),
        Rate::Fixed { bytes_per_sec } => RateControlConfig::Fixed { bytes_per_sec },
    };
    if let Some(min) = t.min_rtt {
        session.rtt.min_rtt = min;
    }
    if let Some(max) = t.max_rtt {
        session.rtt.max_rtt = max;
    }
    session.fec = t.fec;
    if !config.io.gso {
        // One datagram per send: what the dataplane does without UDP GSO.
        session.max_segments = 1;
    }
    EndpointConfig {
        session,
        accept: config.listen.is_some(),
        name: config.name.clone(),
        ..EndpointConfig::new(config.key.clone())
    }
}

fn random_seed() -> anyhow::Result<[u8; 32]> {
    let mut seed = [0u8; 32];
    SystemRandom::new()
        .fill(&mut seed)
        .map_err(|_| anyhow!("the operating system's random number generator failed"))?;
    Ok(seed)
}

/// SIGTERM, SIGINT and SIGHUP, blocked in every thread and taken synchronously by the main
/// thread, so no handler runs at an arbitrary point of a shard's loop.
struct Signals {
    set: libc::sigset_t,
}

impl Signals {
    /// Blocks the signals; call before starting any thread (threads inherit the mask).
    fn block() -> anyhow::Result<Self> {
        // SAFETY: sigset manipulation on a local set, then pthread_sigmask on this thread.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            for signal in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
                libc::sigaddset(&mut set, signal);
            }
            let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
            if rc != 0 {
                return Err(anyhow!(
                    "cannot block signals: {}",
                    std::io::Error::from_raw_os_error(rc)
                ));
            }
            Ok(Self { set })
        }
    }

    /// The next pending signal, waiting at most `timeout`.
    fn wait(&self, timeout: Duration) -> Option<i32> {
        let ts = libc::timespec {
            tv_sec: timeout.as_secs() as libc::time_t,
            tv_nsec: timeout.subsec_nanos() as libc::c_long,
        };
        // SAFETY: valid set and timespec; a null siginfo pointer is allowed.
        let signal = unsafe { libc::sigtimedwait(&self.set, std::ptr::null_mut(), &ts) };
        (signal > 0).then_some(signal)
    }
}
