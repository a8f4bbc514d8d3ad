//! How forwarded connections behave at their edges: half-close, a target that refuses, a map id
//! the far side does not allow, and shutdown on signals.

mod common;

use std::io::{ErrorKind, Write};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

use common::data::{fingerprint, seeded_bytes};
use common::net::{closed_tcp_addr, echo_server, recv_bytes, reply_server, wait_closed};
use common::{SESSION_TIMEOUT, SMALL_TIMEOUT, Tunnel, TunnelSpec};

/// Every test also maps this id to an echo server, to know when the session is up.
const PROBE: u32 = 101;

#[test]
fn half_close_still_delivers_the_reply() {
    const MAP: u32 = 100;
    let request = seeded_bytes(0x4A1F, 100 << 10);
    let response = seeded_bytes(0x4A20, 256 << 10);
    let (server, requests) = reply_server(response.clone());
    let echo = echo_server();
    let tunnel = Tunnel::start(
        "half-close",
        &TunnelSpec::new(&[(MAP, server.addr()), (PROBE, echo.addr())], &[MAP, PROBE]),
    );
    tunnel.wait_echo(PROBE, SESSION_TIMEOUT);

    let deadline = Instant::now() + SMALL_TIMEOUT;
    let mut stream = TcpStream::connect(tunnel.map_addr(MAP)).expect("connect to the map");
    stream.write_all(&request).expect("write the request");
    // Our write side closes; the reply must still come back on the read side.
    stream.shutdown(Shutdown::Write).expect("shutdown(write)");
    let got = recv_bytes(&mut stream, 1 << 20, deadline)
        .unwrap_or_else(|e| panic!("reading the reply after our half-close: {e}"));
    assert_eq!(
        fingerprint(&got),
        fingerprint(&response),
        "the reply read after half-close"
    );
    let seen = requests
        .recv_timeout(SMALL_TIMEOUT)
        .expect("the reply server reports the connection")
        .unwrap_or_else(|e| panic!("reply server: {e}"));
    assert_eq!(
        fingerprint(&seen),
        fingerprint(&request),
        "the request as the target saw it (it must see EOF to answer at all)"
    );
}

#[test]
fn refused_target_closes_the_client_connection_within_a_second() {
    const MAP: u32 = 100;
    let echo = echo_server();
    let tunnel = Tunnel::start(
        "refused",
        &TunnelSpec::new(
            &[(MAP, closed_tcp_addr()), (PROBE, echo.addr())],
            &[MAP, PROBE],
        ),
    );
    tunnel.wait_echo(PROBE, SESSION_TIMEOUT);

    let start = Instant::now();
    let mut stream = TcpStream::connect(tunnel.map_addr(MAP)).expect("connect to the map");
    // Data makes the stream's open unavoidable whatever the engine's design. On a busy machine
    // the engine (which opens the stream on accept) may reset the connection before this write:
    // closed, too.
    let closed_after = match stream.write_all(b"hello") {
        Err(e) if matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::BrokenPipe) => {
            start.elapsed()
        }
        Err(e) => panic!("write to the map: {e}"),
        Ok(()) => wait_closed(&mut stream, SMALL_TIMEOUT)
            .map(|_| start.elapsed())
            .unwrap_or_else(|e| panic!("connection to a map whose target refuses: {e}")),
    };
    eprintln!("closed {closed_after:?} after connecting");
    assert!(
        closed_after < Duration::from_secs(1),
        "the client connection must close within 1 s when the target refuses; took {closed_after:?}"
    );

    let stats = tunnel
        .server
        .wait_stats("connects_failed >= 1", SMALL_TIMEOUT, |s| {
            s.connects_failed >= 1
        });
    assert_eq!(stats.streams_refused, 0, "server: {stats:#?}");
}

#[test]
fn map_id_missing_from_allow_is_refused_and_logged() {
    // Distinctive, so that finding it in a log line means something.
    const UNLISTED: u32 = 977;
    let echo = echo_server();
    let tunnel = Tunnel::start(
        "unlisted",
        &TunnelSpec::new(&[(PROBE, echo.addr())], &[UNLISTED, PROBE]),
    );
    tunnel.wait_echo(PROBE, SESSION_TIMEOUT);
    let accepted_before = echo.accepted();

    let mut stream = TcpStream::connect(tunnel.map_addr(UNLISTED)).expect("connect to the map");
    stream.write_all(b"hello").expect("write to the map");
    wait_closed(&mut stream, SMALL_TIMEOUT)
        .unwrap_or_else(|e| panic!("connection on a map the server does not allow: {e}"));

    let stats = tunnel
        .server
        .wait_stats("streams_refused >= 1", SMALL_TIMEOUT, |s| {
            s.streams_refused >= 1
        });
    assert_eq!(stats.streams_refused, 1, "server: {stats:#?}");
    assert_eq!(stats.connects_failed, 0, "server: {stats:#?}");
    assert_eq!(
        echo.accepted(),
        accepted_before,
        "a refused stream must not reach any target"
    );
    let id = UNLISTED.to_string();
    let line = tunnel.server.wait_log_line(SMALL_TIMEOUT, |line| {
        line.to_ascii_lowercase().contains("refused")
            && line
                .split(|c: char| !c.is_ascii_digit())
                .any(|token| token == id)
    });
    assert!(
        line.is_some(),
        "the server logs a line with `refused` and the map id {UNLISTED}"
    );
}

#[test]
fn sigint_and_sigterm_exit_zero() {
    let echo = echo_server();
    let mut tunnel = Tunnel::start(
        "signals",
        &TunnelSpec::new(&[(PROBE, echo.addr())], &[PROBE]),
    );
    // With a live session, which shutdown has to end.
    tunnel.wait_echo(PROBE, SESSION_TIMEOUT);

    let status = tunnel.client.signal_and_wait("INT");
    assert_eq!(status.code(), Some(0), "client after SIGINT: {status}");
    let status = tunnel.server.signal_and_wait("TERM");
    assert_eq!(status.code(), Some(0), "server after SIGTERM: {status}");
}
