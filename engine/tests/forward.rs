//! Forward maps through a real tunnel: a client engine carries connections accepted on its map
//! listener to a server engine, which connects them to its `allow` target. Every byte is checked
//! by SHA-256 in both directions.

mod common;

use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

use common::data::seeded_fingerprint;
use common::net::{echo_check, echo_server, exchange, sink_server};
use common::{BULK_TIMEOUT, SESSION_TIMEOUT, Tunnel, TunnelSpec};

const MAP: u32 = 100;

#[test]
fn bulk_64_mib_each_way_in_one_connection() {
    const LEN: u64 = 64 << 20;
    const UP_SEED: u64 = 0x0B0C_0001;
    const DOWN_SEED: u64 = 0x0B0C_0002;
    // The sink reads the upload to EOF while sending its own 64 MiB, so both directions are
    // busy at once.
    let (sink, reports) = sink_server(DOWN_SEED, LEN);
    let echo = echo_server();
    let mut tunnel = Tunnel::start(
        "fwd-bulk",
        &TunnelSpec::new(
            &[(MAP, sink.addr()), (MAP + 1, echo.addr())],
            &[MAP, MAP + 1],
        ),
    );
    tunnel.wait_echo(MAP + 1, SESSION_TIMEOUT);

    let start = Instant::now();
    let stream = TcpStream::connect(tunnel.map_addr(MAP)).expect("connect to the map listener");
    let result = exchange(stream, UP_SEED, LEN, start + BULK_TIMEOUT)
        .unwrap_or_else(|e| panic!("64 MiB exchange through the tunnel: {e}"));
    let elapsed = start.elapsed();
    eprintln!("64 MiB each way in {elapsed:?}");

    assert_eq!(result.sent, seeded_fingerprint(UP_SEED, LEN));
    assert_eq!(
        result.received,
        seeded_fingerprint(DOWN_SEED, LEN),
        "download through the tunnel differs from what the sink sent"
    );
    let at_sink = reports
        .recv_timeout(Duration::from_secs(10))
        .expect("the sink reports the connection")
        .unwrap_or_else(|e| panic!("sink side of the connection: {e}"));
    assert_eq!(
        at_sink, result.sent,
        "upload received by the sink differs from what the client sent"
    );

    let stats = tunnel.client.stats();
    assert!(
        stats.connections_accepted >= 2,
        "client connections_accepted: {stats:#?}"
    );
    assert!(stats.sessions >= 1, "client sessions: {stats:#?}");
    let stats = tunnel.server.stats();
    assert!(
        stats.streams_connected >= 2,
        "server streams_connected: {stats:#?}"
    );
    assert_eq!(
        stats.connects_failed, 0,
        "server connects_failed: {stats:#?}"
    );
    assert_eq!(
        stats.streams_refused, 0,
        "server streams_refused: {stats:#?}"
    );

    // Shutdown is part of the contract: SIGTERM exits 0.
    tunnel.client.stop();
    tunnel.server.stop();
}

#[test]
fn concurrent_connections_of_mixed_sizes() {
    const CONNECTIONS: usize = 32;
    const SIZES: [u64; 6] = [0, 1, 1 << 10, 100 << 10, 1 << 20, 4 << 20];
    let echo = echo_server();
    let tunnel = Tunnel::start("fwd-mixed", &TunnelSpec::new(&[(MAP, echo.addr())], &[MAP]));
    tunnel.wait_echo(MAP, SESSION_TIMEOUT);
    let accepted_before = echo.accepted();

    let addr = tunnel.map_addr(MAP);
    let workers: Vec<_> = (0..CONNECTIONS)
        .map(|i| {
            let len = SIZES[i % SIZES.len()];
            let seed = 0x3200 + i as u64;
            thread::spawn(move || {
                echo_check(addr, seed, len, BULK_TIMEOUT)
                    .map_err(|e| format!("connection {i} ({len} bytes): {e}"))
            })
        })
        .collect();
    let failures: Vec<String> = workers
        .into_iter()
        .filter_map(|worker| match worker.join() {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e),
            Err(_) => Some("a connection thread panicked".to_owned()),
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {CONNECTIONS} connections failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    // At least: attempts of `wait_echo` still in flight may land after `accepted_before`.
    assert!(
        echo.accepted() - accepted_before >= CONNECTIONS as u64,
        "every tunnelled connection reaches the target ({} of {CONNECTIONS} did)",
        echo.accepted() - accepted_before
    );
    let stats = tunnel.server.stats();
    assert!(
        stats.streams_connected > CONNECTIONS as u64,
        "server streams_connected: {stats:#?}"
    );
}
