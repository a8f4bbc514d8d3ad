//! A UDP impairment relay: forwards datagrams between clients and one upstream address, dropping,
//! delaying, reordering, duplicating and rate-limiting them on the way, like `tc netem` without
//! root or network namespaces.
//!
//! Threads (all stopped and joined when the [`Relay`] is dropped):
//! * the client side: receives on the listen socket, opens one upstream-side socket per client
//!   address (so replies find their way back) and expires idle ones;
//! * one reader per client flow: receives the upstream's replies on that flow's socket;
//! * one scheduler per direction: a binary heap ordered by release time; it sleeps until the
//!   earliest release is due (or a new earliest arrives) and sends what is due.
//!
//! Receivers decide a datagram's fate at once (see [`decide`]), so the bottleneck queue is
//! modelled in time, not held as packets; only datagrams that will be sent wait in the heap.
//! Blocking sockets with a short read timeout keep it std-only; the timeout bounds how long
//! [`Drop`] waits for the readers.

pub mod cli;
mod decide;
pub mod parse;
pub(crate) mod schedule;

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};
use std::{fmt, ops};

use schedule::Direction;

/// A client flow with no datagram either way for this long is forgotten (its upstream-side
/// socket closed); the client's next datagram opens a new one.
pub const FLOW_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Read timeout of every socket: how often blocked readers look at the stop flag.
const POLL: Duration = Duration::from_millis(20);
/// How often the client side looks for idle flows.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);
/// Requested socket buffer size (the kernel caps it at `net.core.{r,w}mem_max`): bursts of a
/// fast sender must not overflow the relay's receive queue while its threads are descheduled.
const SOCKET_BUFFER: usize = 4 << 20;
/// Receive buffer size: the largest UDP payload fits.
const MAX_DATAGRAM: usize = 65536;

/// The impairment of one direction. The default impairs nothing.
#[derive(Debug, Clone)]
pub struct Impairment {
    /// Probability (0.0..=1.0) that a datagram is dropped.
    pub loss: f64,
    /// Gilbert-Elliott burst loss on top of `loss`: see [`BurstLoss`].
    pub burst_loss: Option<BurstLoss>,
    pub delay: Duration,
    /// Each datagram gets `delay` + uniform(0..=`jitter`), so jitter also reorders.
    pub jitter: Duration,
    /// Extra probability that a datagram is held back an additional `delay` (or 10 ms if
    /// `delay` is zero).
    pub reorder: f64,
    /// Probability that a datagram is sent twice.
    pub duplicate: f64,
    /// Optional bottleneck rate with a drop-tail queue (`Some(0)` means no bottleneck). The
    /// bottleneck comes before the delay, as on a path whose narrow link is near the sender.
    pub rate_bits_per_sec: Option<u64>,
    /// Size of the bottleneck's drop-tail queue in time at its rate: a datagram that would
    /// wait longer than this before its transmission starts is dropped.
    pub queue: Duration,
}

/// The simple Gilbert model: a good state that loses nothing and a bad one that loses every
/// datagram, clocked per datagram. From the long-run loss rate and the mean number of datagrams
/// lost in a row: bad -> good with `1 / mean_burst`, good -> bad with
/// `mean_loss / (mean_burst * (1 - mean_loss))`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BurstLoss {
    pub mean_loss: f64,
    pub mean_burst: f64,
}

impl BurstLoss {
    /// (good -> bad, bad -> good) transition probabilities.
    pub fn transitions(&self) -> (f64, f64) {
        let burst = self.mean_burst.max(1.0);
        let loss = self.mean_loss.clamp(0.0, 0.999);
        let bad_to_good = 1.0 / burst;
        ((loss * bad_to_good / (1.0 - loss)).min(1.0), bad_to_good)
    }
}

impl Default for Impairment {
    fn default() -> Self {
        Self {
            loss: 0.0,
            burst_loss: None,
            delay: Duration::ZERO,
            jitter: Duration::ZERO,
            reorder: 0.0,
            duplicate: 0.0,
            rate_bits_per_sec: None,
            queue: Duration::from_millis(50),
        }
    }
}

#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Where clients send (port 0 picks a free port; see [`Relay::local_addr`]).
    pub listen: SocketAddr,
    /// Where the relay forwards to.
    pub upstream: SocketAddr,
    /// Client -> upstream direction.
    pub to_upstream: Impairment,
    /// Upstream -> client direction.
    pub to_client: Impairment,
    /// Seeds both directions' random streams (each derives its own).
    pub seed: u64,
}

/// Datagram counts. Blackholed datagrams count in `dropped_loss`; `forwarded` counts sent
/// datagrams, duplicates included.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RelayStats {
    pub received: u64,
    /// Bytes of the received datagrams (what the sender put on the wire).
    pub bytes_received: u64,
    pub forwarded: u64,
    pub dropped_loss: u64,
    pub dropped_queue: u64,
    pub duplicated: u64,
    pub reordered: u64,
    /// Releases more than 1 ms after their due time (the relay could not keep up).
    pub late_releases: u64,
}

impl ops::Add for RelayStats {
    type Output = Self;

    fn add(self, o: Self) -> Self {
        Self {
            received: self.received + o.received,
            bytes_received: self.bytes_received + o.bytes_received,
            forwarded: self.forwarded + o.forwarded,
            dropped_loss: self.dropped_loss + o.dropped_loss,
            dropped_queue: self.dropped_queue + o.dropped_queue,
            duplicated: self.duplicated + o.duplicated,
            reordered: self.reordered + o.reordered,
            late_releases: self.late_releases + o.late_releases,
        }
    }
}

impl fmt::Display for RelayStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "received {} ({} bytes) forwarded {} dropped_loss {} dropped_queue {} duplicated {} reordered {} late_releases {}",
            self.received,
            self.bytes_received,
            self.forwarded,
            self.dropped_loss,
            self.dropped_queue,
            self.duplicated,
            self.reordered,
            self.late_releases
        )
    }
}

/// A running relay; dropping it stops and joins its threads.
pub struct Relay {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    threads: Vec<JoinHandle<()>>,
}

impl fmt::Debug for Relay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Relay")
            .field("local_addr", &self.local_addr)
            .field("upstream", &self.shared.upstream)
            .field("stats", &self.stats())
            .finish()
    }
}

impl Relay {
    /// Binds the listen socket and starts the relay's threads; returns at once.
    pub fn start(config: RelayConfig) -> io::Result<Relay> {
        let listen = UdpSocket::bind(config.listen)?;
        listen.set_read_timeout(Some(POLL))?;
        grow_buffers(&listen);
        let local_addr = listen.local_addr()?;
        let shared = Arc::new(Shared {
            listen,
            upstream: config.upstream,
            to_upstream: Direction::new(config.to_upstream, config.seed),
            // Another stream for the other direction, so equal settings do not drop in step.
            to_client: Direction::new(config.to_client, config.seed ^ 0x9e37_79b9_7f4a_7c15),
            stop: AtomicBool::new(false),
            blackhole: AtomicBool::new(false),
            epoch: Instant::now(),
        });
        // Built before spawning, so an early return below stops what was already started.
        let mut relay = Relay {
            shared,
            local_addr,
            threads: Vec::with_capacity(3),
        };
        for (name, side) in [
            ("impair-up", Side::ToUpstream),
            ("impair-down", Side::ToClient),
        ] {
            let shared = Arc::clone(&relay.shared);
            relay
                .threads
                .push(thread::Builder::new().name(name.into()).spawn(move || {
                    let dir = shared.direction(side);
                    dir.run_scheduler(
                        || shared.stopping(),
                        |dest, data| shared.release(dir, dest, data),
                    );
                })?);
        }
        let shared = Arc::clone(&relay.shared);
        relay.threads.push(
            thread::Builder::new()
                .name("impair-clients".into())
                .spawn(move || run_client_side(&shared))?,
        );
        Ok(relay)
    }

    /// The address clients send to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Counts of both directions together.
    pub fn stats(&self) -> RelayStats {
        self.stats_to_upstream() + self.stats_to_client()
    }

    /// Counts of the client -> upstream direction.
    pub fn stats_to_upstream(&self) -> RelayStats {
        self.shared.to_upstream.counters.snapshot()
    }

    /// Counts of the upstream -> client direction.
    pub fn stats_to_client(&self) -> RelayStats {
        self.shared.to_client.counters.snapshot()
    }

    /// While on, every datagram is dropped both ways, including those already waiting for
    /// their release (a dead path).
    pub fn set_blackhole(&self, on: bool) {
        self.shared.blackhole.store(on, Relaxed);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.shared.stop.store(true, Relaxed);
        for dir in [&self.shared.to_upstream, &self.shared.to_client] {
            dir.wake_for_stop();
        }
        for t in self.threads.drain(..) {
            // A panicked thread has nothing left to stop.
            let _ = t.join();
        }
    }
}

/// State shared by the relay's threads.
struct Shared {
    listen: UdpSocket,
    upstream: SocketAddr,
    to_upstream: Direction<Dest>,
    to_client: Direction<Dest>,
    stop: AtomicBool,
    blackhole: AtomicBool,
    /// Origin of the flows' last-seen timestamps.
    epoch: Instant,
}

impl Shared {
    fn direction(&self, side: Side) -> &Direction<Dest> {
        match side {
            Side::ToUpstream => &self.to_upstream,
            Side::ToClient => &self.to_client,
        }
    }

    fn millis(&self, t: Instant) -> u64 {
        u64::try_from(t.duration_since(self.epoch).as_millis()).unwrap_or(u64::MAX)
    }

    fn stopping(&self) -> bool {
        self.stop.load(Relaxed)
    }

    /// Sends one due datagram; whether it went out.
    fn release(&self, dir: &Direction<Dest>, dest: &Dest, data: &[u8]) -> bool {
        if self.blackhole.load(Relaxed) {
            dir.counters.dropped_loss.fetch_add(1, Relaxed);
            return false;
        }
        let sent = match dest {
            Dest::Upstream(socket) => socket.send(data),
            Dest::Client(addr) => self.listen.send_to(data, addr),
        };
        // A failed send (e.g. the upstream's port is closed) is a datagram lost on the path.
        sent.is_ok()
    }
}

#[derive(Debug, Clone, Copy)]
enum Side {
    ToUpstream,
    ToClient,
}

/// Where a scheduled datagram goes.
#[derive(Clone)]
enum Dest {
    /// Through a client flow's connected upstream-side socket.
    Upstream(Arc<UdpSocket>),
    /// From the listen socket to this client.
    Client(SocketAddr),
}

/// The client side: receives from clients, routes each through its flow, expires idle flows.
fn run_client_side(shared: &Arc<Shared>) {
    let mut flows = Flows::default();
    let mut buf = vec![0; MAX_DATAGRAM];
    let mut next_sweep = Instant::now() + SWEEP_INTERVAL;
    while !shared.stopping() {
        match shared.listen.recv_from(&mut buf) {
            Ok((n, client)) => {
                // A flow that cannot be opened (out of sockets or threads) loses the datagram.
                if let Some(socket) = flows.socket_for(shared, client) {
                    let data = buf.get(..n).unwrap_or_default();
                    shared.to_upstream.submit(
                        shared.blackhole.load(Relaxed),
                        data,
                        Dest::Upstream(socket),
                    );
                }
            }
            Err(e) if is_timeout(&e) => {}
            // Errors queued on the socket by ICMP; nothing to do but go on.
            Err(_) => {}
        }
        let now = Instant::now();
        if now >= next_sweep {
            let idle = u64::try_from(FLOW_IDLE_TIMEOUT.as_millis()).unwrap_or(u64::MAX);
            flows.expire(shared.millis(now), idle);
            next_sweep = now + SWEEP_INTERVAL;
        }
    }
    flows.close_all();
}

/// The client flows, owned by the client-side thread (the only one that opens or expires them).
#[derive(Default)]
struct Flows {
    open: HashMap<SocketAddr, Flow>,
    /// Readers of expired flows, joined once they have seen their flag.
    closing: Vec<JoinHandle<()>>,
}

struct Flow {
    socket: Arc<UdpSocket>,
    /// Milliseconds since [`Shared::epoch`] of the last datagram either way.
    last_seen: Arc<AtomicU64>,
    closed: Arc<AtomicBool>,
    reader: JoinHandle<()>,
}

impl Flows {
    /// The upstream-side socket of `client`'s flow, opened on its first datagram.
    fn socket_for(&mut self, shared: &Arc<Shared>, client: SocketAddr) -> Option<Arc<UdpSocket>> {
        let now = shared.millis(Instant::now());
        if let Some(flow) = self.open.get(&client) {
            flow.last_seen.store(now, Relaxed);
            return Some(Arc::clone(&flow.socket));
        }
        let flow = open_flow(shared, client, now).ok()?;
        let socket = Arc::clone(&flow.socket);
        self.open.insert(client, flow);
        Some(socket)
    }

    /// Closes the flows idle for more than `idle_ms` at `now_ms`.
    fn expire(&mut self, now_ms: u64, idle_ms: u64) {
        let idle: Vec<SocketAddr> = self
            .open
            .iter()
            .filter(|(_, f)| now_ms.saturating_sub(f.last_seen.load(Relaxed)) > idle_ms)
            .map(|(client, _)| *client)
            .collect();
        for client in idle {
            if let Some(flow) = self.open.remove(&client) {
                flow.closed.store(true, Relaxed);
                self.closing.push(flow.reader);
            }
        }
        // Readers notice their flag within a read timeout; join those that have.
        let (done, pending): (Vec<_>, Vec<_>) =
            self.closing.drain(..).partition(JoinHandle::is_finished);
        for t in done {
            let _ = t.join();
        }
        self.closing = pending;
    }

    fn close_all(&mut self) {
        for (_, flow) in self.open.drain() {
            flow.closed.store(true, Relaxed);
            self.closing.push(flow.reader);
        }
        for t in self.closing.drain(..) {
            let _ = t.join();
        }
    }
}

/// Opens `client`'s upstream-side socket and starts its reader.
fn open_flow(shared: &Arc<Shared>, client: SocketAddr, now_ms: u64) -> io::Result<Flow> {
    let socket = UdpSocket::bind(upstream_bind_addr(shared.upstream))?;
    socket.connect(shared.upstream)?;
    socket.set_read_timeout(Some(POLL))?;
    grow_buffers(&socket);
    let socket = Arc::new(socket);
    let last_seen = Arc::new(AtomicU64::new(now_ms));
    let closed = Arc::new(AtomicBool::new(false));
    let reader = {
        let (shared, socket, last_seen, closed) = (
            Arc::clone(shared),
            Arc::clone(&socket),
            Arc::clone(&last_seen),
            Arc::clone(&closed),
        );
        thread::Builder::new()
            .name("impair-flow".into())
            .spawn(move || run_flow_reader(&shared, &socket, client, &last_seen, &closed))?
    };
    Ok(Flow {
        socket,
        last_seen,
        closed,
        reader,
    })
}

/// A flow's reader: the upstream's replies go back to `client`.
fn run_flow_reader(
    shared: &Shared,
    socket: &UdpSocket,
    client: SocketAddr,
    last_seen: &AtomicU64,
    closed: &AtomicBool,
) {
    let mut buf = vec![0; MAX_DATAGRAM];
    while !shared.stopping() && !closed.load(Relaxed) {
        match socket.recv(&mut buf) {
            Ok(n) => {
                last_seen.store(shared.millis(Instant::now()), Relaxed);
                let data = buf.get(..n).unwrap_or_default();
                shared
                    .to_client
                    .submit(shared.blackhole.load(Relaxed), data, Dest::Client(client));
            }
            Err(e) if is_timeout(&e) => {}
            // The upstream's port was closed when we sent (ICMP port unreachable); it may be
            // listening again by the next datagram.
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {}
            // Anything else: avoid spinning on a persistent error.
            Err(_) => thread::sleep(POLL),
        }
    }
}

/// Upstream-side sockets bind to the upstream's loopback address when it is one (nothing
/// outside the machine can reach them), else to the unspecified address of its family.
fn upstream_bind_addr(upstream: SocketAddr) -> SocketAddr {
    let ip = match upstream.ip() {
        ip if ip.is_loopback() => ip,
        IpAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
        IpAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
    };
    SocketAddr::new(ip, 0)
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}

/// Best effort: the defaults (about 200 KiB) overflow under bursts of a fast sender.
fn grow_buffers(socket: &UdpSocket) {
    let size = libc::c_int::try_from(SOCKET_BUFFER).unwrap_or(libc::c_int::MAX);
    for option in [libc::SO_RCVBUF, libc::SO_SNDBUF] {
        // SAFETY: the descriptor is a socket owned by `socket`, open for the whole call; the
        // option value is a live c_int whose size is passed along with it.
        let _ = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                option,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
    }
}

/// Locks, ignoring poisoning: the protected state stays consistent even if a holder panicked
/// (every update is a single push or pop).
#[cfg(test)]
mod tests {
    use super::*;

    /// Liveness bound for anything the tests wait for.
    const PATIENCE: Duration = Duration::from_secs(10);

    fn loopback() -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, 0))
    }

    fn socket() -> UdpSocket {
        let s = UdpSocket::bind(loopback()).unwrap();
        s.set_read_timeout(Some(PATIENCE)).unwrap();
        s
    }

    fn relay(upstream: &UdpSocket, to_upstream: Impairment, to_client: Impairment) -> Relay {
        Relay::start(RelayConfig {
            listen: loopback(),
            upstream: upstream.local_addr().unwrap(),
            to_upstream,
            to_client,
            seed: 1,
        })
        .unwrap()
    }

    fn recv(s: &UdpSocket) -> (Vec<u8>, SocketAddr) {
        let mut buf = vec![0; MAX_DATAGRAM];
        let (n, from) = s
            .recv_from(&mut buf)
            .expect("a datagram within the patience");
        buf.truncate(n);
        (buf, from)
    }

    /// Waits until `done(stats)` holds (the relay counts asynchronously).
    fn settle(relay: &Relay, done: impl Fn(&RelayStats) -> bool) -> RelayStats {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let s = relay.stats();
            if done(&s) || Instant::now() > deadline {
                return s;
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn forwards_both_ways_unimpaired_with_large_datagrams() {
        let upstream = socket();
        let relay = relay(&upstream, Impairment::default(), Impairment::default());
        let client = socket();
        let big = vec![0xab; 65_000];
        client.send_to(&big, relay.local_addr()).unwrap();
        let (data, relay_side) = recv(&upstream);
        assert_eq!(data, big);
        upstream.send_to(b"reply", relay_side).unwrap();
        let (data, from) = recv(&client);
        assert_eq!((data.as_slice(), from), (&b"reply"[..], relay.local_addr()));
        let s = settle(&relay, |s| s.forwarded == 2);
        // (Late releases depend on the machine's load, not on the relay's logic.)
        assert_eq!(
            RelayStats {
                late_releases: 0,
                ..s
            },
            RelayStats {
                received: 2,
                bytes_received: 65_000 + 5,
                forwarded: 2,
                ..RelayStats::default()
            }
        );
    }

    #[test]
    fn a_datagram_takes_at_least_the_delay() {
        let upstream = socket();
        let delay = Duration::from_millis(60);
        let imp = Impairment {
            delay,
            ..Impairment::default()
        };
        let relay = relay(&upstream, imp.clone(), imp);
        let client = socket();
        let t0 = Instant::now();
        client.send_to(b"ping", relay.local_addr()).unwrap();
        let (_, relay_side) = recv(&upstream);
        assert!(t0.elapsed() >= delay, "one way took {:?}", t0.elapsed());
        upstream.send_to(b"pong", relay_side).unwrap();
        recv(&client);
        assert!(
            t0.elapsed() >= 2 * delay,
            "round trip took {:?}",
            t0.elapsed()
        );
    }

    #[test]
    fn duplicates_arrive_twice() {
        let upstream = socket();
        let relay = relay(
            &upstream,
            Impairment {
                duplicate: 1.0,
                ..Impairment::default()
            },
            Impairment::default(),
        );
        let client = socket();
        for i in 0..10u8 {
            client.send_to(&[i], relay.local_addr()).unwrap();
        }
        let mut got: Vec<u8> = (0..20).map(|_| recv(&upstream).0[0]).collect();
        got.sort_unstable();
        let want: Vec<u8> = (0..10).flat_map(|i| [i, i]).collect();
        assert_eq!(got, want);
        let s = settle(&relay, |s| s.forwarded == 20);
        assert_eq!((s.received, s.forwarded, s.duplicated), (10, 20, 10));
    }

    #[test]
    fn losses_are_counted_and_not_forwarded() {
        let upstream = socket();
        let relay = relay(
            &upstream,
            Impairment {
                loss: 0.5,
                ..Impairment::default()
            },
            Impairment::default(),
        );
        let client = socket();
        for i in 0..200u8 {
            client.send_to(&[i], relay.local_addr()).unwrap();
        }
        let s = settle(&relay, |s| {
            s.received == 200 && s.forwarded + s.dropped_loss == 200
        });
        assert_eq!(s.forwarded + s.dropped_loss, 200, "{s}");
        assert!((50..=150).contains(&s.dropped_loss), "{s}");
        for _ in 0..s.forwarded {
            recv(&upstream);
        }
    }

    #[test]
    fn the_bottleneck_drops_a_burst_beyond_its_queue() {
        let upstream = socket();
        // 1400 bytes take 224 ms at 50 kbit/s; the queue holds 10 ms, so a burst gets one or
        // two datagrams through and loses the rest (unless sending 50 datagrams takes seconds).
        let relay = relay(
            &upstream,
            Impairment {
                rate_bits_per_sec: Some(50_000),
                queue: Duration::from_millis(10),
                ..Impairment::default()
            },
            Impairment::default(),
        );
        let client = socket();
        for _ in 0..50 {
            client.send_to(&[0; 1400], relay.local_addr()).unwrap();
        }
        let s = settle(&relay, |s| {
            s.received == 50 && s.forwarded + s.dropped_queue == 50
        });
        assert_eq!(s.forwarded + s.dropped_queue, 50, "{s}");
        assert!(s.dropped_queue >= 40, "{s}");
        assert!(s.forwarded >= 1, "{s}");
    }

    #[test]
    fn blackhole_drops_everything_until_lifted() {
        let upstream = socket();
        let relay = relay(&upstream, Impairment::default(), Impairment::default());
        let client = socket();
        // Establish the flow, so the reply direction can be tested too.
        client.send_to(b"hello", relay.local_addr()).unwrap();
        let (_, relay_side) = recv(&upstream);
        relay.set_blackhole(true);
        for _ in 0..5 {
            client.send_to(b"lost", relay.local_addr()).unwrap();
            upstream.send_to(b"lost", relay_side).unwrap();
        }
        let s = settle(&relay, |s| s.dropped_loss == 10);
        assert_eq!((s.received, s.forwarded, s.dropped_loss), (11, 1, 10));
        relay.set_blackhole(false);
        client.send_to(b"again", relay.local_addr()).unwrap();
        upstream.send_to(b"back", relay_side).unwrap();
        // Nothing blackholed arrives: the next datagrams are the ones sent after lifting it.
        assert_eq!(recv(&upstream).0, b"again");
        assert_eq!(recv(&client).0, b"back");
    }

    #[test]
    fn replies_go_to_the_right_client() {
        let upstream = socket();
        let relay = relay(&upstream, Impairment::default(), Impairment::default());
        let (a, b) = (socket(), socket());
        a.send_to(b"from a", relay.local_addr()).unwrap();
        let (data, side_a) = recv(&upstream);
        assert_eq!(data, b"from a");
        b.send_to(b"from b", relay.local_addr()).unwrap();
        let (data, side_b) = recv(&upstream);
        assert_eq!(data, b"from b");
        assert_ne!(
            side_a, side_b,
            "each client has its own upstream-side socket"
        );
        assert_eq!(side_a.ip(), upstream.local_addr().unwrap().ip());
        // A client's later datagrams use its flow's socket again.
        a.send_to(b"a again", relay.local_addr()).unwrap();
        assert_eq!(recv(&upstream), (b"a again".to_vec(), side_a));
        upstream.send_to(b"to b", side_b).unwrap();
        upstream.send_to(b"to a", side_a).unwrap();
        assert_eq!(recv(&a).0, b"to a");
        assert_eq!(recv(&b).0, b"to b");
    }

    #[test]
    fn idle_flows_expire() {
        let upstream = socket();
        let relay = relay(&upstream, Impairment::default(), Impairment::default());
        let mut flows = Flows::default();
        let client = SocketAddr::from((Ipv4Addr::LOCALHOST, 9));
        let first = flows.socket_for(&relay.shared, client).unwrap();
        let again = flows.socket_for(&relay.shared, client).unwrap();
        assert!(Arc::ptr_eq(&first, &again));
        let seen = flows.open[&client].last_seen.load(Relaxed);
        flows.expire(seen + 1000, 1000);
        assert_eq!(flows.open.len(), 1, "idle for exactly the timeout: kept");
        flows.expire(seen + 1001, 1000);
        assert!(flows.open.is_empty());
        let fresh = flows.socket_for(&relay.shared, client).unwrap();
        assert_ne!(fresh.local_addr().unwrap(), first.local_addr().unwrap());
        flows.close_all();
        assert!(flows.closing.is_empty());
    }

    #[test]
    fn drop_stops_every_thread_and_frees_the_port() {
        let upstream = socket();
        let relay = relay(&upstream, Impairment::default(), Impairment::default());
        let (a, b) = (socket(), socket());
        // Two flows, so two flow readers run besides the three fixed threads.
        for c in [&a, &b] {
            c.send_to(b"x", relay.local_addr()).unwrap();
            recv(&upstream);
        }
        let shared = Arc::downgrade(&relay.shared);
        let addr = relay.local_addr();
        drop(relay);
        // Every thread holds the shared state; none is left.
        assert_eq!(shared.strong_count(), 0);
        UdpSocket::bind(addr).expect("the listen port is free again");
    }
}
