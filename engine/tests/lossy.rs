//! A tunnel over a bad path: the client reaches the server through a UDP relay that drops 5 % of
//! the datagrams each way, delays them 20 ms with jitter and reorders some. Transfers must
//! still arrive intact.

mod common;
#[path = "common/impair.rs"]
mod impair;

use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::data::seeded_fingerprint;
use common::net::{echo_server, exchange, sink_server};
use common::{SESSION_TIMEOUT, Tunnel, TunnelSpec};
use impair::{LossyRelay, Path};

const MAP: u32 = 100;
const PROBE: u32 = 101;
/// Generous: the dev-profile engine over a lossy 40 ms RTT path.
const LOSSY_BULK_TIMEOUT: Duration = Duration::from_secs(90);

#[test]
fn sixteen_mib_arrive_intact_over_a_lossy_path() {
    const UP: u64 = 16 << 20;
    const DOWN: u64 = 1 << 20;
    const UP_SEED: u64 = 0x1055_0001;
    const DOWN_SEED: u64 = 0x1055_0002;
    let (sink, reports) = sink_server(DOWN_SEED, DOWN);
    let echo = echo_server();
    let mut spec = TunnelSpec::new(&[(MAP, sink.addr()), (PROBE, echo.addr())], &[MAP, PROBE]);
    let relay = LossyRelay::start(
        spec.server_udp,
        Path {
            loss: 0.05,
            delay: Duration::from_millis(20),
            jitter: Duration::from_millis(5),
            reorder: 0.01,
        },
        1,
    );
    spec.client_dials = relay.addr();
    let tunnel = Tunnel::start("lossy", &spec);
    // The handshake itself may lose datagrams, so this can take a few retries.
    tunnel.wait_echo(PROBE, SESSION_TIMEOUT);

    let start = Instant::now();
    let stream = TcpStream::connect(tunnel.map_addr(MAP)).expect("connect to the map");
    let result = exchange(stream, UP_SEED, UP, start + LOSSY_BULK_TIMEOUT).unwrap_or_else(|e| {
        panic!(
            "16 MiB over the lossy path: {e}; relay: {:?}",
            relay.stats()
        )
    });
    eprintln!(
        "16 MiB up + 1 MiB down over the lossy path in {:?}; relay: {:?}",
        start.elapsed(),
        relay.stats()
    );

    assert_eq!(
        result.received,
        seeded_fingerprint(DOWN_SEED, DOWN),
        "download over the lossy path"
    );
    let at_sink = reports
        .recv_timeout(Duration::from_secs(10))
        .expect("the sink reports the connection")
        .unwrap_or_else(|e| panic!("sink side of the connection: {e}"));
    assert_eq!(at_sink, result.sent, "upload over the lossy path");
    assert_eq!(at_sink, seeded_fingerprint(UP_SEED, UP));

    assert!(
        relay.dropped() > 0,
        "the relay must have dropped datagrams for this test to mean anything: {:?}",
        relay.stats()
    );
    let stats = tunnel.client.stats();
    assert!(
        stats.bytes_retransmitted + stats.fec_packets_recovered > 0,
        "the client repaired losses: {stats:#?}"
    );
}
