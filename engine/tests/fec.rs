//! Forward error correction between two real engines: through a UDP relay that drops 10 % of the
//! datagrams each way, parity must rebuild lost packets (counted in `ctl stats`) for bulk
//! transfers with fixed parity and for request/response traffic with adaptive parity, and every
//! byte must still arrive intact. Two nodes whose `fec` settings differ must refuse each other,
//! say why in their logs, and forward nothing.

mod common;
#[path = "common/impair.rs"]
mod impair;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

use common::data::{seeded_bytes, seeded_fingerprint};
use common::net::{echo_server, exchange, sink_server, wait_closed};
use common::{SESSION_TIMEOUT, SMALL_TIMEOUT, Tunnel, TunnelSpec};
use engine_api::control::Stats;
use impair::{LossyRelay, Path};

const MAP: u32 = 100;
const PROBE: u32 = 101;
/// Generous: debug-build engines over a path that loses one datagram in ten.
const LOSSY_TIMEOUT: Duration = Duration::from_secs(120);

/// 10 % loss each way, a little delay, no reordering.
fn lossy_path() -> Path {
    Path {
        loss: 0.10,
        delay: Duration::from_millis(5),
        jitter: Duration::ZERO,
        reorder: 0.0,
    }
}

/// A tunnel whose client reaches the server through a [`LossyRelay`], both ends given `fec`.
fn lossy_tunnel(test: &str, fec: &str, spec: TunnelSpec, seed: u64) -> (Tunnel, LossyRelay) {
    let mut spec = spec.extra(fec, fec);
    let relay = LossyRelay::start(spec.server_udp, lossy_path(), seed);
    spec.client_dials = relay.addr();
    let tunnel = Tunnel::start(test, &spec);
    (tunnel, relay)
}

fn fec_counters(stats: &Stats) -> String {
    format!(
        "groups sent {}, parity sent {}, parity received {}, recovered {}, unrecoverable {}, \
         ratio {:.2}, peer loss {:.3}",
        stats.fec_groups_sent,
        stats.fec_parity_sent,
        stats.fec_parity_received,
        stats.fec_packets_recovered,
        stats.fec_groups_unrecoverable,
        stats.fec_ratio,
        stats.fec_peer_loss
    )
}

#[test]
fn fixed_parity_recovers_bulk_losses_both_ways() {
    const LEN: u64 = 4 << 20;
    const UP_SEED: u64 = 0xFEC0_0001;
    const DOWN_SEED: u64 = 0xFEC0_0002;
    let (sink, reports) = sink_server(DOWN_SEED, LEN);
    let echo = echo_server();
    let (tunnel, relay) = lossy_tunnel(
        "fec-fixed",
        "fec: {mode: fixed, data: 8, parity: 3}",
        TunnelSpec::new(&[(MAP, sink.addr()), (PROBE, echo.addr())], &[MAP, PROBE]),
        0xFEC1,
    );
    // The handshake itself may lose datagrams, so this can take a few retries.
    tunnel.wait_echo(PROBE, SESSION_TIMEOUT);

    let start = Instant::now();
    let stream = TcpStream::connect(tunnel.map_addr(MAP)).expect("connect to the map");
    let result = exchange(stream, UP_SEED, LEN, start + LOSSY_TIMEOUT).unwrap_or_else(|e| {
        panic!(
            "4 MiB each way over the lossy path: {e}; relay: {:?}",
            relay.stats()
        )
    });
    assert_eq!(
        result.received,
        seeded_fingerprint(DOWN_SEED, LEN),
        "download over the lossy path"
    );
    let at_sink = reports
        .recv_timeout(Duration::from_secs(10))
        .expect("the sink reports the connection")
        .unwrap_or_else(|e| panic!("sink side of the connection: {e}"));
    assert_eq!(at_sink, result.sent, "upload over the lossy path");
    assert_eq!(at_sink, seeded_fingerprint(UP_SEED, LEN));

    assert!(relay.dropped() > 0, "relay: {:?}", relay.stats());
    let client = tunnel.client.stats();
    let server = tunnel.server.stats();
    eprintln!(
        "4 MiB each way in {:?}; relay: {:?}\nclient: {}\nserver: {}",
        start.elapsed(),
        relay.stats(),
        fec_counters(&client),
        fec_counters(&server)
    );
    for (side, stats) in [("client", &client), ("server", &server)] {
        // Each side both sends and receives 4 MiB, so each sends parity and each rebuilds
        // packets the relay dropped on the way to it.
        assert!(stats.fec_groups_sent > 0, "{side}: {stats:#?}");
        assert!(stats.fec_parity_sent > 0, "{side}: {stats:#?}");
        assert!(stats.fec_parity_received > 0, "{side}: {stats:#?}");
        assert!(stats.fec_packets_recovered > 0, "{side}: {stats:#?}");
        assert!(stats.fec_ratio > 0.0, "{side}: {stats:#?}");
        assert_eq!(stats.fec_mismatches, 0, "{side}: {stats:#?}");
    }
}

#[test]
fn adaptive_parity_recovers_interactive_losses() {
    const REQUESTS: u64 = 300;
    const LEN: usize = 64;
    const INTERVAL: Duration = Duration::from_millis(10);
    let echo = echo_server();
    let (tunnel, relay) = lossy_tunnel(
        "fec-adaptive",
        "fec: adaptive",
        TunnelSpec::new(&[(MAP, echo.addr())], &[MAP]),
        0xFEC2,
    );
    tunnel.wait_echo(MAP, SESSION_TIMEOUT);

    // One connection, one 64-byte request every 10 ms, each answered (echoed) before the next.
    let mut stream = TcpStream::connect(tunnel.map_addr(MAP)).expect("connect to the map");
    stream.set_nodelay(true).expect("TCP_NODELAY");
    stream
        .set_read_timeout(Some(SMALL_TIMEOUT))
        .expect("read timeout");
    let start = Instant::now();
    let mut next = start;
    for i in 0..REQUESTS {
        let request = seeded_bytes(0xFEC2_0000 + i, LEN);
        stream
            .write_all(&request)
            .unwrap_or_else(|e| panic!("request {i}: {e}"));
        let mut reply = [0u8; LEN];
        stream.read_exact(&mut reply).unwrap_or_else(|e| {
            panic!("reply {i}: {e}; relay: {:?}", relay.stats());
        });
        assert_eq!(reply[..], request[..], "reply {i} differs from its request");
        next += INTERVAL;
        thread::sleep(next.saturating_duration_since(Instant::now()));
    }

    assert!(relay.dropped() > 0, "relay: {:?}", relay.stats());
    let client = tunnel.client.stats();
    let server = tunnel.server.stats();
    eprintln!(
        "{REQUESTS} requests in {:?}; relay: {:?}\nclient: {}\nserver: {}",
        start.elapsed(),
        relay.stats(),
        fec_counters(&client),
        fec_counters(&server)
    );
    assert!(
        client.fec_parity_sent + server.fec_parity_sent > 0,
        "adaptive parity went out for interactive traffic\nclient: {client:#?}\nserver: \
         {server:#?}"
    );
    assert!(
        client.fec_packets_recovered + server.fec_packets_recovered > 0,
        "parity rebuilt lost packets\nclient: {client:#?}\nserver: {server:#?}"
    );
}

#[test]
fn differing_fec_settings_are_refused_and_logged_on_both_ends() {
    let echo = echo_server();
    let spec = TunnelSpec::new(&[(MAP, echo.addr())], &[MAP]).extra("fec: off", "fec: adaptive");
    let tunnel = Tunnel::start("fec-mismatch", &spec);

    let line = tunnel
        .client
        .wait_log_line(SESSION_TIMEOUT, |line| line.contains("FEC settings differ"))
        .expect("the dialler logs the FEC mismatch");
    assert!(line.contains("WARN"), "{line}");
    assert!(
        line.contains(
            "FEC settings differ from peer server: ours adaptive (groups of up to 10), theirs \
             off; set the same fec on both nodes"
        ),
        "{line}"
    );
    let line = tunnel
        .server
        .wait_log_line(SESSION_TIMEOUT, |line| line.contains("FEC settings differ"))
        .expect("the accepting node logs the FEC mismatch");
    assert!(
        line.contains("from peer client: ours off, theirs adaptive (groups of up to 10)"),
        "{line}"
    );

    // A connection to the map waits for a session that never comes, then is closed.
    let mut stream = TcpStream::connect(tunnel.map_addr(MAP)).expect("connect to the map");
    let _ = stream.write_all(b"hello");
    wait_closed(&mut stream, SESSION_TIMEOUT + SMALL_TIMEOUT)
        .unwrap_or_else(|e| panic!("the map's connection without a session: {e}"));
    assert_eq!(echo.accepted(), 0, "nothing reached the allow target");

    let client = tunnel.client.stats();
    let server = tunnel.server.stats();
    for (side, stats) in [("client", &client), ("server", &server)] {
        assert!(stats.fec_mismatches > 0, "{side}: {stats:#?}");
        assert_eq!(stats.sessions, 0, "{side}: {stats:#?}");
        // A refused handshake was never a session.
        assert_eq!(stats.sessions_closed, 0, "{side}: {stats:#?}");
    }
    assert!(client.session_waits_expired >= 1, "{client:#?}");
    // The dialler retries with doubling backoff (0.5 s, 1 s, 2 s, ... up to 10 s) instead of
    // spinning: in the ten-odd seconds above each shard dials a handful of times.
    let shards = tunnel.client.config().shards as u64;
    assert!(
        client.fec_mismatches <= 10 * shards,
        "the dialler retries with backoff: {client:#?}"
    );
}
