//! The control plane: messages to shards (channels plus an eventfd that wakes the shard's I/O
//! loop), used by the control thread and by shards handing traffic to each other, and the Unix
//! socket `ctl` talks to.
//!
//! Shards are never blocked by the control thread: it sends a message, writes the eventfd, and
//! waits (bounded) for the answer; the shard answers between two rounds of its loop.

use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use crossbeam_channel::{Receiver, Sender};
use engine_api::config::MapId;
use engine_api::control::{Command, MAX_LINE_LEN, PeerRow, Request, Response, Stats, Status};

use super::reload::{Reconfigure, Reloader};
use super::stats;

/// How long the control thread waits for a shard's answer.
const SHARD_REPLY_TIMEOUT: Duration = Duration::from_secs(2);

/// A message to a shard, from the control thread or from another shard.
#[derive(Debug)]
pub(crate) enum ShardMsg {
    Stats(Sender<ShardStats>),
    Shutdown,
    /// A connection another shard accepted on map `map` while only this shard had a session
    /// with the map's peer.
    Connection {
        fd: OwnedFd,
        map: MapId,
    },
    /// Shard `shard` now has a session with peer `peer` (an index into the config's `peers`):
    /// connections waiting here for that peer may move there.
    PeerUp {
        peer: usize,
        shard: usize,
    },
    /// Apply a reloaded config (`ctl reload`, SIGHUP), then answer.
    Reconfigure(Box<Reconfigure>),
}

pub(crate) use super::stats::ShardStats;

/// Datagrams waiting to be handed to one shard, at most. The network decides how many
/// datagrams reach the wrong shard (spoofed resets are fanned out to every shard), so the queue
/// is bounded: beyond it they are dropped and counted, and the ARQ resends what mattered.
const HANDOVER_QUEUE: usize = 1024;

/// A datagram another shard received for a session this shard owns: sender and bytes.
pub(crate) type HandedDatagram = (SocketAddr, Vec<u8>);

/// The handle on one shard, held by the control thread and by every shard.
#[derive(Debug, Clone)]
pub(crate) struct ShardHandle {
    tx: Sender<ShardMsg>,
    datagrams: Sender<HandedDatagram>,
    wake: Arc<OwnedFd>,
}

/// A shard's ends of its [`ShardHandle`].
#[derive(Debug)]
pub(crate) struct Inbox {
    pub(crate) control: Receiver<ShardMsg>,
    pub(crate) datagrams: Receiver<HandedDatagram>,
}

impl ShardHandle {
    /// A handle and the shard's ends: its inbox and its eventfd.
    pub(crate) fn new() -> io::Result<(Self, Inbox, Arc<OwnedFd>)> {
        // Blocking: a ring read of a non-blocking eventfd may complete with EAGAIN on some
        // kernels instead of waiting. Writes never block (the counter cannot overflow here).
        // SAFETY: eventfd(2) returns a new descriptor or -1.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor owned by nobody else.
        let wake = Arc::new(unsafe { OwnedFd::from_raw_fd(fd) });
        // Control messages are few (requests from `ctl`, connections and session news from
        // other shards, each bounded by local events), so their channel is unbounded.
        let (tx, control) = crossbeam_channel::unbounded();
        let (datagrams_tx, datagrams) = crossbeam_channel::bounded(HANDOVER_QUEUE);
        Ok((
            Self {
                tx,
                datagrams: datagrams_tx,
                wake: wake.clone(),
            },
            Inbox { control, datagrams },
            wake,
        ))
    }

    pub(crate) fn send(&self, msg: ShardMsg) {
        if self.tx.send(msg).is_ok() {
            self.wake();
        }
    }

    /// Queues a datagram for this shard; `false` (dropped) when its queue is full.
    pub(crate) fn hand_datagram(&self, from: SocketAddr, data: Vec<u8>) -> bool {
        let queued = self.datagrams.try_send((from, data)).is_ok();
        if queued {
            self.wake();
        }
        queued
    }

    fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a valid u64 to our eventfd.
        unsafe { libc::write(self.wake.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }

    /// Asks the shard for its stats; the answer arrives on the returned channel.
    fn request_stats(&self) -> Receiver<ShardStats> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.send(ShardMsg::Stats(tx));
        rx
    }
}

/// What the control thread serves.
#[derive(Debug)]
pub(crate) struct ControlContext {
    pub(crate) config_path: PathBuf,
    pub(crate) started: Instant,
    pub(crate) shards: Vec<ShardHandle>,
    /// The I/O backend's name, for `ctl status`.
    pub(crate) backend: &'static str,
    /// Re-reads the config file for `ctl reload` and SIGHUP.
    pub(crate) reloader: Reloader,
}

/// Binds the control socket: creates its directory, replaces a stale socket left by a crashed
/// engine, and refuses to steal the socket of a live one. Mode 0600.
pub(crate) fn bind(path: &Path) -> anyhow::Result<UnixListener> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).with_context(|| {
            format!(
                "cannot create the control socket's directory {}",
                dir.display()
            )
        })?;
    }
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            bail!(
                "control socket {} is in use: another engine is running with it (stop it, or set control.socket)",
                path.display()
            );
        }
        fs::remove_file(path).with_context(|| {
            format!("cannot remove the stale control socket {}", path.display())
        })?;
    }
    let listener = UnixListener::bind(path)
        .with_context(|| format!("cannot bind the control socket {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot restrict the control socket {}", path.display()))?;
    Ok(listener)
}

/// Serves control connections until the process exits; each connection gets its own thread
/// (they are few, and `ctl stats --watch` keeps one open).
pub(crate) fn serve(listener: UnixListener, context: Arc<ControlContext>) {
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let context = context.clone();
        let _ = thread::Builder::new()
            .name("control-conn".into())
            .spawn(move || {
                if let Err(err) = serve_connection(stream, &context) {
                    tracing::debug!(%err, "control connection ended");
                }
            });
    }
}

fn serve_connection(stream: UnixStream, context: &ControlContext) -> io::Result<()> {
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream).take(MAX_LINE_LEN as u64 + 1);
    let mut line = Vec::new();
    loop {
        line.clear();
        reader.set_limit(MAX_LINE_LEN as u64 + 1);
        if reader.read_until(b'\n', &mut line)? == 0 {
            return Ok(());
        }
        let response = match Request::parse(&line) {
            Ok(request) => answer(request.command, context),
            Err(err) => Response::Error {
                message: err.to_string(),
            },
        };
        writer.write_all(&response.to_line())?;
    }
}

fn answer(command: Command, context: &ControlContext) -> Response {
    match command {
        Command::Status => {
            let stats = collect(context);
            Response::Status(Status {
                engine_version: env!("CARGO_PKG_VERSION").to_owned(),
                config: context.config_path.display().to_string(),
                uptime_secs: context.started.elapsed().as_secs(),
                shards: context.shards.len() as u32,
                backend: context.backend.to_owned(),
                sessions: stats.sessions,
                streams: stats.streams,
            })
        }
        Command::Stats => Response::Stats(collect(context)),
        Command::Peers => Response::Peers {
            peers: collect_all(context).1,
        },
        Command::Maps => Response::Maps {
            maps: collect(context).map_rows,
        },
        Command::Reload => match context.reloader.reload(&context.shards) {
            Ok(reloaded) => Response::Reloaded {
                maps: reloaded.maps,
                changes: reloaded.changes,
                restart_needed: reloaded.restart_needed,
            },
            Err(message) => Response::Error { message },
        },
    }
}

fn collect(context: &ControlContext) -> Stats {
    collect_all(context).0
}

/// Asks every shard and merges the answers; a shard that does not answer within
/// [`SHARD_REPLY_TIMEOUT`] shows as zeros rather than hiding the others.
fn collect_all(context: &ControlContext) -> (Stats, Vec<PeerRow>) {
    // All shards are asked at once and answer in parallel; one deadline bounds the whole wait.
    let pending: Vec<_> = context
        .shards
        .iter()
        .map(ShardHandle::request_stats)
        .collect();
    let deadline = Instant::now() + SHARD_REPLY_TIMEOUT;
    let answers = pending
        .into_iter()
        .map(|rx| {
            rx.recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .ok()
        })
        .collect();
    stats::merge(context.started.elapsed().as_secs(), answers)
}
