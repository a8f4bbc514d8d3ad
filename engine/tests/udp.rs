//! UDP maps between two real engines on loopback: an echo service through a `datagram` map
//! answers many clients, each at its own socket; a datagram larger than the tunnel's MTU
//! crosses it whole; and through a relay that drops 5 % of the datagrams each way, a
//! `reliable` map delivers every datagram in order while a `datagram` map with FEC delivers
//! nearly all of them, each with its boundaries intact.

mod common;
#[path = "common/impair.rs"]
mod impair;

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use common::data::seeded_bytes;
use common::net::free_udp_addr;
use common::node::{Engine, NodeConfig};
use common::{SESSION_TIMEOUT, SMALL_TIMEOUT, TestDir};
use impair::{LossyRelay, Path};

const MAP: u32 = 7;
/// Generous: debug-build engines over a path that loses one datagram in twenty.
const LOSSY_TIMEOUT: Duration = Duration::from_secs(120);

/// A UDP server on loopback, stopped on drop: it echoes every datagram to its sender, or (for
/// a sink) only records it.
struct UdpServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    received: Arc<Mutex<Vec<Vec<u8>>>>,
    count: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl UdpServer {
    fn start(echo: bool) -> Self {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind the UDP server");
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .expect("set a read timeout");
        let addr = socket.local_addr().expect("the server's address");
        let stop = Arc::new(AtomicBool::new(false));
        let received = Arc::new(Mutex::new(Vec::new()));
        let count = Arc::new(AtomicU64::new(0));
        let thread = {
            let (stop, received, count) = (stop.clone(), received.clone(), count.clone());
            thread::spawn(move || {
                let mut buf = vec![0u8; 65_536];
                while !stop.load(Ordering::SeqCst) {
                    let Ok((n, from)) = socket.recv_from(&mut buf) else {
                        continue;
                    };
                    if echo {
                        let _ = socket.send_to(&buf[..n], from);
                    } else {
                        received.lock().unwrap().push(buf[..n].to_vec());
                    }
                    count.fetch_add(1, Ordering::SeqCst);
                }
            })
        };
        Self {
            addr,
            stop,
            received,
            count,
            thread: Some(thread),
        }
    }

    fn count(&self) -> u64 {
        self.count.load(Ordering::SeqCst)
    }

    fn received(&self) -> Vec<Vec<u8>> {
        self.received.lock().unwrap().clone()
    }
}

impl Drop for UdpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Two engines: `client` has a UDP map to `target` through `server`, which allows it. The
/// client dials `dials` (the server, or a relay in front of it) when given.
struct UdpTunnel {
    client: Engine,
    server: Engine,
    map: SocketAddr,
    /// The client's shards: a dialling node has one session per shard, and a client socket's
    /// datagrams reach whichever shard the kernel's hash picks.
    shards: usize,
    _dir: TestDir,
}

/// `server_udp` is the server's session address; the client dials `dials` (the server itself,
/// or a relay in front of it).
fn udp_tunnel(
    test: &str,
    mode: &str,
    target: SocketAddr,
    extra: &[&str],
    (server_udp, dials): (SocketAddr, SocketAddr),
) -> UdpTunnel {
    let dir = TestDir::new(test);
    let map = free_udp_addr();
    let mut server_config = NodeConfig::new(&dir, "server")
        .listen(server_udp)
        .peer("client", None)
        .udp_allow(MAP, target);
    let mut client_config = NodeConfig::new(&dir, "client")
        .peer("server", Some(dials))
        .udp_map(MAP, map, "server", mode);
    for line in extra {
        server_config.extra.push((*line).to_owned());
        client_config.extra.push((*line).to_owned());
    }
    let server = Engine::start(&dir, "server", &server_config);
    let client = Engine::start(&dir, "client", &client_config);
    // A client socket's datagrams reach whichever client shard the kernel's hash picks, and a
    // shard without its session yet drops them (counted): wait for every shard's session.
    let shards = client_config.shards as u64;
    client.wait_stats("a session on every shard", SESSION_TIMEOUT, |s| {
        s.sessions >= shards
    });
    UdpTunnel {
        client,
        server,
        map,
        shards: client_config.shards,
        _dir: dir,
    }
}

fn direct() -> (SocketAddr, SocketAddr) {
    let addr = free_udp_addr();
    (addr, addr)
}

/// A client socket talking to the map.
fn client_socket(map: SocketAddr, timeout: Duration) -> UdpSocket {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind a client socket");
    socket.connect(map).expect("connect the client socket");
    socket
        .set_read_timeout(Some(timeout))
        .expect("set a read timeout");
    socket
}

/// Sends probes through an echo map until one comes back: the session is up.
fn wait_udp_echo(map: SocketAddr) {
    let socket = client_socket(map, Duration::from_millis(200));
    let deadline = Instant::now() + SESSION_TIMEOUT;
    let mut buf = [0u8; 64];
    while Instant::now() < deadline {
        socket.send(b"probe").expect("send a probe");
        if let Ok(n) = socket.recv(&mut buf)
            && &buf[..n] == b"probe"
        {
            return;
        }
    }
    panic!("no echo through the UDP map {map} within {SESSION_TIMEOUT:?}");
}

/// A request: the client's number, the request's number, then filler of a length that varies.
fn request(client: u8, seq: u32) -> Vec<u8> {
    let mut data = vec![client];
    data.extend_from_slice(&seq.to_be_bytes());
    let filler = (seq as usize * 37 + usize::from(client) * 11) % 900;
    data.extend(seeded_bytes(
        u64::from(seq) << 8 | u64::from(client),
        filler,
    ));
    data
}

#[test]
fn a_datagram_map_echoes_for_four_clients() {
    const PER_CLIENT: u32 = 2_500;
    let echo = UdpServer::start(true);
    let tunnel = udp_tunnel("udp-echo", "datagram", echo.addr, &[], direct());
    wait_udp_echo(tunnel.map);

    let clients: Vec<JoinHandle<Result<(), String>>> = (0..4u8)
        .map(|client| {
            let map = tunnel.map;
            thread::spawn(move || {
                let socket = client_socket(map, SMALL_TIMEOUT);
                let mut buf = vec![0u8; 2048];
                for seq in 0..PER_CLIENT {
                    let req = request(client, seq);
                    socket.send(&req).map_err(|e| format!("send: {e}"))?;
                    let n = socket
                        .recv(&mut buf)
                        .map_err(|e| format!("client {client}, request {seq}: {e}"))?;
                    if buf[..n] != req[..] {
                        return Err(format!(
                            "client {client}, request {seq}: a reply of {n} bytes that is not \
                             this client's request (client byte {})",
                            buf.first().copied().unwrap_or(0)
                        ));
                    }
                }
                Ok(())
            })
        })
        .collect();
    for (i, client) in clients.into_iter().enumerate() {
        client
            .join()
            .expect("client thread")
            .unwrap_or_else(|e| panic!("client {i}: {e}"));
    }
    let stats = tunnel.client.stats();
    // The probe socket and the four clients.
    assert_eq!(stats.udp_flows_opened, 5, "{stats:#?}");
    assert!(
        stats.udp_datagrams_in >= 4 * u64::from(PER_CLIENT),
        "{stats:#?}"
    );
    let server = tunnel.server.stats();
    assert_eq!(server.udp_flows_opened, 5, "{server:#?}");
    assert!(echo.count() >= 4 * u64::from(PER_CLIENT));
}

#[test]
fn a_datagram_larger_than_the_mtu_arrives_whole() {
    let echo = UdpServer::start(true);
    let tunnel = udp_tunnel("udp-mtu", "datagram", echo.addr, &["mtu: 1350"], direct());
    wait_udp_echo(tunnel.map);
    let socket = client_socket(tunnel.map, SMALL_TIMEOUT);
    let big = seeded_bytes(0x4000, 4000);
    socket.send(&big).expect("send 4000 bytes");
    let mut buf = vec![0u8; 8192];
    let n = socket.recv(&mut buf).expect("the echo of 4000 bytes");
    assert_eq!(n, big.len());
    assert_eq!(&buf[..n], &big[..]);
    let stats = tunnel.server.stats();
    assert_eq!(stats.udp_datagrams_dropped, 0, "{stats:#?}");
}

/// 5 % loss each way, a little delay, no reordering.
fn lossy_path() -> Path {
    Path {
        loss: 0.05,
        delay: Duration::from_millis(5),
        jitter: Duration::ZERO,
        reorder: 0.0,
    }
}

/// Numbered datagrams of varied sizes.
fn numbered(seq: u32) -> Vec<u8> {
    let mut data = seq.to_be_bytes().to_vec();
    let filler = (seq as usize * 131) % 1200;
    data.extend(seeded_bytes(u64::from(seq), filler));
    data
}

/// Sends `count` numbered datagrams to the map, keeping at most `window` ahead of what the sink
/// has received (waiting at most `patience` for it, as a lost datagram never arrives).
fn send_numbered(map: SocketAddr, sink: &UdpServer, count: u32, window: u64, patience: Duration) {
    let socket = client_socket(map, SMALL_TIMEOUT);
    for seq in 0..count {
        let waited = Instant::now();
        while u64::from(seq) > sink.count() + window && waited.elapsed() < patience {
            thread::sleep(Duration::from_millis(1));
        }
        socket
            .send(&numbered(seq))
            .expect("send a numbered datagram");
    }
}

fn lossy_udp_tunnel(
    test: &str,
    mode: &str,
    target: SocketAddr,
    extra: &[&str],
) -> (UdpTunnel, LossyRelay) {
    let server_udp = free_udp_addr();
    let relay = LossyRelay::start(server_udp, lossy_path(), 0x0DD5);
    let tunnel = udp_tunnel(test, mode, target, extra, (server_udp, relay.addr()));
    (tunnel, relay)
}

#[test]
fn a_reliable_map_delivers_every_datagram_in_order_over_a_lossy_path() {
    const COUNT: u32 = 10_000;
    let sink = UdpServer::start(false);
    let (tunnel, relay) = lossy_udp_tunnel("udp-reliable", "reliable", sink.addr, &[]);
    // The session comes up first: the first datagram opens the flow's stream.
    tunnel.client.wait_stats(
        "a session with the server on every shard",
        SESSION_TIMEOUT,
        |s| s.sessions >= tunnel.shards as u64,
    );
    send_numbered(tunnel.map, &sink, COUNT, 64, LOSSY_TIMEOUT);
    let deadline = Instant::now() + LOSSY_TIMEOUT;
    while sink.count() < u64::from(COUNT) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
    let got = sink.received();
    assert_eq!(
        got.len(),
        COUNT as usize,
        "datagrams delivered; relay: {:?}; client: {:#?}",
        relay.stats(),
        tunnel.client.stats()
    );
    for (seq, datagram) in got.iter().enumerate() {
        assert_eq!(datagram, &numbered(seq as u32), "datagram {seq}");
    }
    assert!(relay.dropped() > 0, "{:?}", relay.stats());
}

#[test]
fn a_datagram_map_with_fec_delivers_nearly_everything_over_a_lossy_path() {
    const COUNT: u32 = 10_000;
    let sink = UdpServer::start(false);
    let (tunnel, relay) = lossy_udp_tunnel(
        "udp-fec",
        "datagram",
        sink.addr,
        &["fec: {mode: fixed, data: 8, parity: 3}"],
    );
    tunnel.client.wait_stats(
        "a session with the server on every shard",
        SESSION_TIMEOUT,
        |s| s.sessions >= tunnel.shards as u64,
    );
    // Lost datagrams are never made up: a short patience keeps the window moving.
    send_numbered(tunnel.map, &sink, COUNT, 64, Duration::from_millis(20));
    // Let the stragglers arrive.
    let deadline = Instant::now() + SMALL_TIMEOUT;
    let mut last = (sink.count(), Instant::now());
    while Instant::now() < deadline && last.1.elapsed() < Duration::from_secs(1) {
        thread::sleep(Duration::from_millis(50));
        if sink.count() != last.0 {
            last = (sink.count(), Instant::now());
        }
    }
    let got = sink.received();
    for datagram in &got {
        let seq = u32::from_be_bytes(datagram[..4].try_into().expect("a sequence number"));
        assert!(seq < COUNT);
        assert_eq!(datagram, &numbered(seq), "datagram {seq} arrived altered");
    }
    let mut seqs: Vec<u32> = got
        .iter()
        .map(|d| u32::from_be_bytes(d[..4].try_into().unwrap()))
        .collect();
    seqs.sort_unstable();
    seqs.dedup();
    let stats = tunnel.server.stats();
    assert!(
        seqs.len() * 100 >= COUNT as usize * 99,
        "only {} of {COUNT} datagrams arrived; relay: {:?}; server: {stats:#?}",
        seqs.len(),
        relay.stats()
    );
    assert!(relay.dropped() > 0, "{:?}", relay.stats());
    assert!(stats.fec_packets_recovered > 0, "{stats:#?}");
}

#[test]
fn a_tcp_map_cannot_reach_a_udp_allow_entry() {
    use std::io::{Read, Write};
    use std::net::TcpStream;

    let echo = UdpServer::start(true);
    let dir = TestDir::new("udp-mismatch");
    let server_udp = free_udp_addr();
    let server_config = NodeConfig::new(&dir, "server")
        .listen(server_udp)
        .peer("client", None)
        .udp_allow(MAP, echo.addr);
    let client_config = NodeConfig::new(&dir, "client")
        .peer("server", Some(server_udp))
        .map(MAP, common::net::free_tcp_addr(), "server");
    let server = Engine::start(&dir, "server", &server_config);
    let client = Engine::start(&dir, "client", &client_config);
    client.wait_stats("a session with the server", SESSION_TIMEOUT, |s| {
        s.sessions > 0
    });
    let mut stream =
        TcpStream::connect(client_config.map_addr(MAP)).expect("connect to the TCP map");
    stream
        .set_read_timeout(Some(SMALL_TIMEOUT))
        .expect("set a read timeout");
    stream.write_all(b"GET / HTTP/1.0\r\n\r\n").expect("write");
    let mut buf = [0u8; 64];
    // The stream is refused: the connection ends without a byte from the target.
    match stream.read(&mut buf) {
        Ok(0) | Err(_) => {}
        Ok(n) => panic!("{n} bytes came back through a refused stream"),
    }
    let stats = server.wait_stats("the refusal counted", SMALL_TIMEOUT, |s| {
        s.udp_flows_refused >= 1
    });
    assert_eq!(stats.udp_datagrams_out, 0, "{stats:#?}");
    assert_eq!(echo.count(), 0);
}
