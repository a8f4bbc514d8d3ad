//! A link emulator for all IP traffic: two network namespaces, a TUN device in each, and a relay
//! between the two devices that impairs every packet with the same [`Impairment`] model as the
//! UDP relay (delay, jitter, random and Gilbert-Elliott loss, reordering, duplication, a rate
//! limit with a drop-tail queue sized in time). Plain TCP, kcptun and the engine then cross
//! exactly the same link, which `tc netem` would give us if this kernel had it.
//!
//! Namespace `A` has address [`ADDR_A`], namespace `B` [`ADDR_B`], point to point; each
//! direction has its own impairment and counters. Threads: a reader per device (it decides each
//! packet's fate at once) and a scheduler per direction (it writes due packets into the other
//! device). Needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN for `setns`) and the `ip` tool.
//! Dropping the [`Link`] stops the threads and deletes both namespaces (and so the devices).

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::thread::{self, JoinHandle};

use crate::impair::schedule::Direction;
use crate::impair::{Impairment, RelayStats};

/// Namespace A's address.
pub const ADDR_A: Ipv4Addr = Ipv4Addr::new(10, 201, 0, 1);
/// Namespace B's address.
pub const ADDR_B: Ipv4Addr = Ipv4Addr::new(10, 201, 0, 2);
/// How often a blocked reader looks at the stop flag, in milliseconds.
const POLL_MS: i32 = 20;
/// Largest packet a device hands us.
const MAX_PACKET: usize = 65536;

#[derive(Debug, Clone)]
pub struct LinkConfig {
    /// A → B.
    pub a_to_b: Impairment,
    /// B → A.
    pub b_to_a: Impairment,
    pub seed: u64,
    /// The devices' MTU.
    pub mtu: u32,
}

impl Default for LinkConfig {
    fn default() -> Self {
        Self {
            a_to_b: Impairment::default(),
            b_to_a: Impairment::default(),
            seed: 1,
            mtu: 1500,
        }
    }
}

/// A TUN device's file.
struct Tun(OwnedFd);

impl Tun {
    /// Creates TUN device `name` (no packet-information header) in the current namespace.
    fn create(name: &str) -> io::Result<Tun> {
        let path = CString::new("/dev/net/tun").map_err(io::Error::other)?;
        // SAFETY: open(2) with a valid C string; returns a new descriptor or -1.
        let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: ifreq is plain old data; zero is a valid value.
        let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
        if name.len() >= ifr.ifr_name.len() {
            return Err(io::Error::other(format!("device name {name:?} too long")));
        }
        for (dst, src) in ifr.ifr_name.iter_mut().zip(name.bytes()) {
            *dst = src as libc::c_char;
        }
        ifr.ifr_ifru.ifru_flags = (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short;
        // SAFETY: TUNSETIFF takes a pointer to an ifreq, which lives across the call.
        if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &mut ifr) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Tun(fd))
    }

    /// Reads one packet, waiting at most [`POLL_MS`]; Ok(0) when nothing came.
    fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        let mut pfd = libc::pollfd {
            fd: self.0.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let ready = unsafe { libc::poll(&mut pfd, 1, POLL_MS) };
        if ready <= 0 {
            return Ok(0);
        }
        // SAFETY: buf is valid for writes of its length.
        let n = unsafe { libc::read(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    fn write(&self, packet: &[u8]) -> bool {
        // SAFETY: packet is valid for reads of its length.
        let n = unsafe { libc::write(self.0.as_raw_fd(), packet.as_ptr().cast(), packet.len()) };
        n == packet.len() as isize
    }
}

/// Runs `ip` with `args`; an error names the command and what it printed.
fn ip(args: &[&str]) -> io::Result<()> {
    let out = Command::new("ip").args(args).output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// Unique per process and link: namespaces and devices of concurrent links never clash.
fn unique_id() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!("{}x{}", std::process::id(), NEXT.fetch_add(1, Relaxed))
}

struct Shared {
    devices: [Tun; 2],
    /// [A → B, B → A].
    directions: [Direction<usize>; 2],
    stop: AtomicBool,
}

/// A running emulated link; dropping it tears everything down.
pub struct Link {
    namespaces: [String; 2],
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("namespaces", &self.namespaces)
            .field("a_to_b", &self.stats_a_to_b())
            .field("b_to_a", &self.stats_b_to_a())
            .finish()
    }
}

impl Link {
    /// Creates the namespaces and devices and starts the relay; returns at once.
    pub fn start(config: LinkConfig) -> io::Result<Link> {
        let id = unique_id();
        let namespaces = [format!("lkem{id}a"), format!("lkem{id}b")];
        let names = [format!("lk{id}a"), format!("lk{id}b")];
        for ns in &namespaces {
            ip(&["netns", "add", ns])?;
        }
        // From here on, dropping `cleanup` deletes the namespaces if setting up fails.
        let cleanup = NamespaceGuard(namespaces.clone());
        let devices = [Tun::create(&names[0])?, Tun::create(&names[1])?];
        let mtu = config.mtu.to_string();
        for (i, (ns, dev)) in namespaces.iter().zip(&names).enumerate() {
            let (me, peer) = if i == 0 {
                (ADDR_A, ADDR_B)
            } else {
                (ADDR_B, ADDR_A)
            };
            ip(&["link", "set", dev, "netns", ns])?;
            // No IPv6 link-local address, so the link carries only what the test sends (no
            // router solicitations or MLD reports in the counters).
            ip(&["-n", ns, "link", "set", dev, "addrgenmode", "none"])?;
            ip(&[
                "-n",
                ns,
                "addr",
                "add",
                &format!("{me}/32"),
                "peer",
                &format!("{peer}/32"),
                "dev",
                dev,
            ])?;
            ip(&["-n", ns, "link", "set", dev, "mtu", &mtu, "up"])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        let shared = Arc::new(Shared {
            devices,
            directions: [
                Direction::new(config.a_to_b, config.seed),
                // Another stream for the other direction, so equal settings do not drop in step.
                Direction::new(config.b_to_a, config.seed ^ 0x9e37_79b9_7f4a_7c15),
            ],
            stop: AtomicBool::new(false),
        });
        std::mem::forget(cleanup);
        let mut link = Link {
            namespaces,
            shared,
            threads: Vec::with_capacity(4),
        };
        for side in 0..2 {
            let shared = Arc::clone(&link.shared);
            link.threads.push(
                thread::Builder::new()
                    .name(format!("linkem-read-{side}"))
                    .spawn(move || read_loop(&shared, side))?,
            );
            let shared = Arc::clone(&link.shared);
            link.threads.push(
                thread::Builder::new()
                    .name(format!("linkem-send-{side}"))
                    .spawn(move || {
                        let dir = &shared.directions[side];
                        dir.run_scheduler(
                            || shared.stop.load(Relaxed),
                            |&to, packet| shared.devices[to].write(packet),
                        );
                    })?,
            );
        }
        Ok(link)
    }

    /// Namespace A's name (for `ip netns exec`).
    pub fn namespace_a(&self) -> &str {
        &self.namespaces[0]
    }

    /// Namespace B's name.
    pub fn namespace_b(&self) -> &str {
        &self.namespaces[1]
    }

    pub fn stats_a_to_b(&self) -> RelayStats {
        self.shared.directions[0].counters.snapshot()
    }

    pub fn stats_b_to_a(&self) -> RelayStats {
        self.shared.directions[1].counters.snapshot()
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.shared.stop.store(true, Relaxed);
        for dir in &self.shared.directions {
            dir.wake_for_stop();
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        drop(NamespaceGuard(self.namespaces.clone()));
    }
}

/// Deletes the namespaces (and the devices in them) when dropped.
struct NamespaceGuard([String; 2]);

impl Drop for NamespaceGuard {
    fn drop(&mut self) {
        for ns in &self.0 {
            // Nothing to do about a failure here but leave the namespace behind.
            let _ = ip(&["netns", "del", ns]);
        }
    }
}

/// Reads packets from device `side` and submits them to its direction, bound for the other.
fn read_loop(shared: &Shared, side: usize) {
    let mut buf = vec![0u8; MAX_PACKET];
    let device = &shared.devices[side];
    let dir = &shared.directions[side];
    while !shared.stop.load(Relaxed) {
        match device.read(&mut buf) {
            Ok(0) => {}
            Ok(n) => dir.submit(false, &buf[..n], 1 - side),
            // A device error (it is being torn down): nothing to relay any more.
            Err(_) => return,
        }
    }
}

/// Deletes the namespaces of links whose process is gone (killed before it could clean up);
/// returns how many. A namespace is named `lkem<pid>x<n>a|b` after the process that made it.
pub fn remove_stale_namespaces() -> io::Result<usize> {
    let out = Command::new("ip").args(["netns", "list"]).output()?;
    let mut removed = 0;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(pid) = owner_pid(name) else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists()
            && ip(&["netns", "del", name]).is_ok()
        {
            removed += 1;
        }
    }
    Ok(removed)
}

/// The pid in a link namespace's name (`lkem1234x0a` -> 1234).
fn owner_pid(namespace: &str) -> Option<u32> {
    let rest = namespace.strip_prefix("lkem")?;
    let (pid, tail) = rest.split_once('x')?;
    let side_ok = tail.ends_with('a') || tail.ends_with('b');
    if side_ok { pid.parse().ok() } else { None }
}

/// Runs `f` on a thread inside network namespace `ns` (sockets it opens stay there) and
/// returns its result.
pub fn in_namespace<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> io::Result<T> {
    let file = File::open(format!("/var/run/netns/{ns}"))?;
    thread::spawn(move || {
        // SAFETY: setns on a namespace file we hold open; affects only this thread.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(f())
    })
    .join()
    .map_err(|_| io::Error::other("the namespace thread panicked"))?
}

#[cfg(test)]
mod tests {
    use std::net::{SocketAddr, UdpSocket};
    use std::time::{Duration, Instant};

    use super::*;
    use crate::impair::BurstLoss;

    /// Binds a UDP socket on `addr:port` inside `ns` (the socket stays in the namespace).
    fn socket_in(ns: &str, addr: Ipv4Addr, port: u16) -> UdpSocket {
        in_namespace(ns, move || {
            UdpSocket::bind(SocketAddr::from((addr, port))).expect("bind in the namespace")
        })
        .expect("enter the namespace")
    }

    /// Sends `n` datagrams of `len` bytes A → B, `gap` apart; returns how many arrived.
    fn blast(link: &Link, n: usize, len: usize, gap: Duration) -> usize {
        let rx = socket_in(link.namespace_b(), ADDR_B, 7000);
        rx.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let tx = socket_in(link.namespace_a(), ADDR_A, 0);
        let payload = vec![0x5a; len];
        let reader = thread::spawn(move || {
            let mut got = 0;
            let mut buf = vec![0u8; 65536];
            while rx.recv(&mut buf).is_ok() {
                got += 1;
            }
            got
        });
        let start = Instant::now();
        for i in 0..n {
            let _ = tx.send_to(&payload, (ADDR_B, 7000));
            let due = start + gap * (i as u32 + 1);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                thread::sleep(wait);
            }
        }
        reader.join().unwrap()
    }

    #[test]
    fn an_unimpaired_link_carries_both_ways_and_cleans_up() {
        let link = Link::start(LinkConfig::default()).unwrap();
        let (a, b) = (link.namespace_a().to_owned(), link.namespace_b().to_owned());
        let server = socket_in(&b, ADDR_B, 7001);
        let client = socket_in(&a, ADDR_A, 0);
        client.send_to(b"ping", (ADDR_B, 7001)).unwrap();
        let mut buf = [0u8; 16];
        server
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let (n, from) = server.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"ping");
        server.send_to(b"pong", from).unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let n = client.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"pong");
        // The scheduler counts a packet just after writing it: give the count a moment.
        let deadline = Instant::now() + Duration::from_secs(2);
        while link.stats_b_to_a().forwarded < 1 && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(link.stats_a_to_b().forwarded, 1);
        assert_eq!(link.stats_b_to_a().forwarded, 1);
        drop(link);
        let listed = Command::new("ip").args(["netns", "list"]).output().unwrap();
        let listed = String::from_utf8_lossy(&listed.stdout);
        assert!(!listed.contains(&a) && !listed.contains(&b), "{listed}");
    }

    #[test]
    fn stale_namespaces_are_recognised_by_their_owner() {
        assert_eq!(owner_pid("lkem1234x0a"), Some(1234));
        assert_eq!(owner_pid("lkem1234x17b"), Some(1234));
        assert_eq!(owner_pid("lkemx0a"), None);
        assert_eq!(owner_pid("other"), None);
        // A namespace of a pid that cannot exist (above pid_max) is removed; ours is kept.
        let stale = "lkem4194305x0a";
        ip(&["netns", "add", stale]).unwrap();
        let link = Link::start(LinkConfig::default()).unwrap();
        assert!(remove_stale_namespaces().unwrap() >= 1);
        let listed = Command::new("ip").args(["netns", "list"]).output().unwrap();
        let listed = String::from_utf8_lossy(&listed.stdout);
        assert!(!listed.contains(stale), "{listed}");
        assert!(listed.contains(link.namespace_a()), "{listed}");
    }

    #[test]
    fn delay_is_added_each_way() {
        let delay = Duration::from_millis(20);
        let link = Link::start(LinkConfig {
            a_to_b: Impairment {
                delay,
                ..Impairment::default()
            },
            b_to_a: Impairment {
                delay,
                ..Impairment::default()
            },
            ..LinkConfig::default()
        })
        .unwrap();
        let server = socket_in(link.namespace_b(), ADDR_B, 7002);
        let client = socket_in(link.namespace_a(), ADDR_A, 0);
        server
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let mut rtts = Vec::new();
        let mut buf = [0u8; 64];
        for _ in 0..20 {
            let start = Instant::now();
            client.send_to(b"x", (ADDR_B, 7002)).unwrap();
            let (_, from) = server.recv_from(&mut buf).unwrap();
            server.send_to(b"y", from).unwrap();
            client.recv(&mut buf).unwrap();
            rtts.push(start.elapsed());
        }
        rtts.sort();
        let median = rtts[rtts.len() / 2];
        assert!(
            median >= 2 * delay && median < 2 * delay + Duration::from_millis(10),
            "median RTT {median:?} for 2 x {delay:?}"
        );
    }

    #[test]
    fn random_and_burst_loss_are_near_what_was_asked() {
        for (label, impairment, lo, hi) in [
            (
                "10% random",
                Impairment {
                    loss: 0.10,
                    ..Impairment::default()
                },
                0.085,
                0.115,
            ),
            (
                "3% in bursts of 3",
                Impairment {
                    burst_loss: Some(BurstLoss {
                        mean_loss: 0.03,
                        mean_burst: 3.0,
                    }),
                    ..Impairment::default()
                },
                0.015,
                0.045,
            ),
        ] {
            let link = Link::start(LinkConfig {
                a_to_b: impairment,
                ..LinkConfig::default()
            })
            .unwrap();
            let n = 6000;
            let got = blast(&link, n, 200, Duration::from_micros(100));
            let loss = 1.0 - got as f64 / n as f64;
            let s = link.stats_a_to_b();
            assert!(
                (lo..=hi).contains(&loss),
                "{label}: measured {loss:.4}, {s}"
            );
        }
    }

    #[test]
    fn the_rate_limit_holds() {
        // 20 Mbit/s, offered at about 40: what arrives over the run is the link's rate.
        let rate = 20_000_000u64;
        let link = Link::start(LinkConfig {
            a_to_b: Impairment {
                rate_bits_per_sec: Some(rate),
                queue: Duration::from_millis(20),
                ..Impairment::default()
            },
            ..LinkConfig::default()
        })
        .unwrap();
        let len = 1200;
        let n = 8000;
        // 1228 bytes on the wire (IP + UDP headers) every 250 us = 39 Mbit/s for 2 s.
        let start = Instant::now();
        let got = blast(&link, n, len, Duration::from_micros(250));
        let elapsed = start.elapsed().saturating_sub(Duration::from_millis(300));
        let bits = got as f64 * (len + 28) as f64 * 8.0;
        let measured = bits / elapsed.as_secs_f64();
        assert!(
            (0.85 * rate as f64..=1.05 * rate as f64).contains(&measured),
            "measured {:.1} Mbit/s for {} Mbit/s; {}",
            measured / 1e6,
            rate / 1_000_000,
            link.stats_a_to_b()
        );
    }
}
