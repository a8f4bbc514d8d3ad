//! A server engine that crashes and comes back on the same address: the client engine, left
//! alone, must carry new connections over a new session within seconds.

mod common;

use std::time::Duration;

use common::net::{echo_check, echo_server, first_success};
use common::{RETRY_INTERVAL, SESSION_TIMEOUT, SMALL_TIMEOUT, Tunnel, TunnelSpec};

const MAP: u32 = 100;
/// How soon after the new server is ready a new connection must get through.
const RECOVERY: Duration = Duration::from_secs(5);

#[test]
fn client_reconnects_after_server_is_killed_and_restarted() {
    let echo = echo_server();
    let mut tunnel = Tunnel::start("restart", &TunnelSpec::new(&[(MAP, echo.addr())], &[MAP]));
    tunnel.wait_echo(MAP, SESSION_TIMEOUT);
    let addr = tunnel.map_addr(MAP);
    echo_check(addr, 0x5E01, 1 << 20, SMALL_TIMEOUT)
        .unwrap_or_else(|e| panic!("transfer before the crash: {e}"));

    // kill -9: no goodbye reaches the client, which still believes in the old session.
    tunnel.crash_and_restart_server("server-restarted");

    let attempts = std::sync::atomic::AtomicU64::new(0);
    let took = first_success(
        "echo through the client after the server restarted",
        RECOVERY,
        RETRY_INTERVAL,
        move |deadline| {
            let n = attempts.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            echo_check(addr, 0x5E10 + n, 64 << 10, left)
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));
    eprintln!("new connections got through {took:?} after the restarted server was ready");

    let stats = tunnel.server.stats();
    assert!(stats.sessions >= 1, "restarted server: {stats:#?}");
    assert!(stats.streams_connected >= 1, "restarted server: {stats:#?}");
}
