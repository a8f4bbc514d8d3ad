//! The control socket as `ctl` sees it, against real engines: stats that agree with the bytes a
//! test pushed through the tunnel, counters that move under loss, Prometheus output a parser
//! accepts, the `peers` and `maps` commands, and requests the engine must refuse.

mod common;
#[path = "common/impair.rs"]
mod impair;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use common::data::seeded_fingerprint;
use common::net::{echo_server, exchange, free_udp_addr, sink_server};
use common::node::{Engine, NodeConfig};
use common::{BULK_TIMEOUT, SESSION_TIMEOUT, TestDir, Tunnel, TunnelSpec};
use engine_api::control::{Command, MapRow, PeerRow, Request, Response, SessionRow, Stats};
use impair::{LossyRelay, Path as ImpairedPath};

const MAP: u32 = 100;
const PROBE: u32 = 101;

/// Sends one raw line and reads one response line.
fn raw(socket: &Path, line: &[u8]) -> Response {
    let stream = UnixStream::connect(socket).expect("connect to the control socket");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut reader = BufReader::new(stream);
    reader.get_mut().write_all(line).unwrap();
    let mut answer = Vec::new();
    reader.read_until(b'\n', &mut answer).unwrap();
    Response::parse(&answer).unwrap_or_else(|e| panic!("{e}: {answer:?}"))
}

fn request(socket: &Path, command: Command) -> Response {
    raw(socket, &Request::new(command).to_line())
}

fn map_row<'a>(rows: &'a [MapRow], kind: &str, id: u32) -> &'a MapRow {
    rows.iter()
        .find(|m| m.kind == kind && m.id == id)
        .unwrap_or_else(|| panic!("no {kind} row for map {id} in {rows:#?}"))
}

/// Within 1 % of `expected` (and never below it: every byte sent was counted).
fn close_to(counted: u64, expected: u64) -> bool {
    counted >= expected && counted - expected <= expected / 100
}

#[test]
fn stats_agree_with_what_was_sent() {
    const UP: u64 = 8 << 20;
    const DOWN: u64 = 4 << 20;
    const UP_SEED: u64 = 0xC7_0001;
    const DOWN_SEED: u64 = 0xC7_0002;
    let (sink, reports) = sink_server(DOWN_SEED, DOWN);
    let echo = echo_server();
    let spec = TunnelSpec::new(&[(MAP, sink.addr()), (PROBE, echo.addr())], &[MAP, PROBE]);
    let tunnel = Tunnel::start("ctlstats", &spec);
    tunnel.wait_echo(PROBE, SESSION_TIMEOUT);

    let stream = TcpStream::connect(tunnel.map_addr(MAP)).expect("connect to the map");
    let result = exchange(stream, UP_SEED, UP, Instant::now() + BULK_TIMEOUT)
        .unwrap_or_else(|e| panic!("bulk exchange: {e}"));
    assert_eq!(result.received, seeded_fingerprint(DOWN_SEED, DOWN));
    let at_sink = reports
        .recv_timeout(Duration::from_secs(10))
        .expect("the sink reports the connection")
        .expect("the sink received the upload");
    assert_eq!(at_sink, seeded_fingerprint(UP_SEED, UP));

    // Both connections are closed once the far end has seen everything; their counts are then
    // in the maps' totals.
    let client = tunnel
        .client
        .wait_stats("the bulk map's counts", SMALL, |s| {
            s.map_rows
                .iter()
                .any(|m| m.id == MAP && m.bytes_out == DOWN && m.connections_open == 0)
        });
    let server = tunnel
        .server
        .wait_stats("the allow entry's counts", SMALL, |s| {
            s.map_rows
                .iter()
                .any(|m| m.id == MAP && m.bytes_out == UP && m.connections_open == 0)
        });

    let listen = map_row(&client.map_rows, "listen", MAP);
    assert_eq!(
        (listen.bytes_in, listen.bytes_out),
        (UP, DOWN),
        "{listen:?}"
    );
    assert_eq!(listen.connections, 1, "{listen:?}");
    assert_eq!(listen.peer, "server");
    assert_eq!(listen.addr, tunnel.map_addr(MAP).to_string());
    let allow = map_row(&server.map_rows, "allow", MAP);
    assert_eq!((allow.bytes_in, allow.bytes_out), (DOWN, UP), "{allow:?}");
    assert_eq!(allow.connections, 1, "{allow:?}");
    assert_eq!(allow.addr, sink.addr().to_string());

    // The session rows: goodput counters within 1 % of what was sent (the probe's echo
    // round trips add a few KiB), UDP bytes at least that. A dialling node has one session per
    // shard (CORETUN_TEST_SHARDS), so the rows are summed; the bulk connection used one.
    assert!(!client.session_rows.is_empty());
    for session in &client.session_rows {
        assert_eq!(
            (
                session.peer.as_str(),
                session.side.as_str(),
                session.state.as_str()
            ),
            ("server", "dialled", "established"),
            "{session:?}"
        );
        assert!(
            session.rtt_us > 0 && session.rtt_min_us <= session.rtt_us,
            "{session:#?}"
        );
        assert!(session.pacing_rate > 0, "{session:#?}");
    }
    let sum = |rows: &[SessionRow], f: fn(&SessionRow) -> u64| rows.iter().map(f).sum::<u64>();
    let rows = &client.session_rows;
    assert!(
        close_to(sum(rows, |s| s.stream_bytes_sent), UP),
        "{rows:#?}"
    );
    assert!(
        close_to(sum(rows, |s| s.stream_bytes_received), DOWN),
        "{rows:#?}"
    );
    assert!(
        sum(rows, |s| s.bytes_sent) > UP && sum(rows, |s| s.bytes_received) > DOWN,
        "{rows:#?}"
    );
    assert!(
        close_to(client.bytes_sent, sum(rows, |s| s.bytes_sent)),
        "{client:#?}"
    );
    let accepted = &server.session_rows;
    assert!(
        accepted
            .iter()
            .all(|s| (s.peer.as_str(), s.side.as_str()) == ("client", "accepted")),
        "{accepted:#?}"
    );
    assert!(
        close_to(sum(accepted, |s| s.stream_bytes_received), UP),
        "{accepted:#?}"
    );

    // Latencies: the probe's and the bulk connection's stream opens, the server's connects.
    assert!(client.stream_open.count >= 2, "{:?}", client.stream_open);
    assert!(
        server.target_connect.count >= 2,
        "{:?}",
        server.target_connect
    );
    assert!(
        server.target_connect.p50_us > 0,
        "{:?}",
        server.target_connect
    );
    let latency = &client.stream_open;
    assert!(latency.p50_us <= latency.p99_us && latency.p99_us <= latency.max_us);

    // `ctl peers` and `ctl maps`.
    match request(&tunnel.client.config().control, Command::Peers) {
        Response::Peers { peers } => {
            let [
                PeerRow {
                    name,
                    state,
                    sessions,
                    shards,
                    ..
                },
            ] = peers.as_slice()
            else {
                panic!("{peers:#?}");
            };
            assert_eq!((name.as_str(), state.as_str()), ("server", "up"));
            // One session per shard of the dialling node (CORETUN_TEST_SHARDS).
            assert!(!sessions.is_empty(), "{peers:#?}");
            assert_eq!(sessions.len(), shards.len(), "{peers:#?}");
        }
        other => panic!("{other:?}"),
    }
    match request(&tunnel.client.config().control, Command::Maps) {
        Response::Maps { maps } => {
            assert_eq!(map_row(&maps, "listen", MAP).bytes_in, UP);
            assert_eq!(maps.len(), 2, "{maps:#?}");
        }
        other => panic!("{other:?}"),
    }

    // `ctl metrics` is the same stats in the text format: a parser accepts it, and the map's
    // bytes read back.
    let text = engine_api::metrics::render(&client);
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
        .unwrap_or_else(|e| panic!("{e}\n{text}"));
    let map_in: f64 = scrape
        .samples
        .iter()
        .filter(|s| {
            s.metric == "coretun_map_bytes_in_total"
                && s.labels.get("map") == Some("100")
                && s.labels.get("kind") == Some("listen")
        })
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v) => v,
            ref other => panic!("{other:?}"),
        })
        .sum();
    assert_eq!(map_in, UP as f64, "{text}");
    assert!(
        scrape
            .samples
            .iter()
            .any(|s| s.metric == "coretun_session_rtt_seconds"
                && s.labels.get("peer") == Some("server")),
        "{text}"
    );
}

const SMALL: Duration = common::SMALL_TIMEOUT;

#[test]
fn loss_moves_the_retransmit_counters() {
    const UP: u64 = 4 << 20;
    const SEED: u64 = 0xC7_0003;
    let (sink, reports) = sink_server(0, 0);
    let echo = echo_server();
    // FEC off: every loss is repaired by retransmission.
    let mut spec = TunnelSpec::new(&[(MAP, sink.addr()), (PROBE, echo.addr())], &[MAP, PROBE])
        .extra("fec: off", "fec: off");
    let relay = LossyRelay::start(
        spec.server_udp,
        ImpairedPath {
            loss: 0.05,
            delay: Duration::from_millis(2),
            jitter: Duration::ZERO,
            reorder: 0.0,
        },
        7,
    );
    spec.client_dials = relay.addr();
    let tunnel = Tunnel::start("ctlloss", &spec);
    tunnel.wait_echo(PROBE, SESSION_TIMEOUT);
    let before = tunnel.client.stats();

    let stream = TcpStream::connect(tunnel.map_addr(MAP)).expect("connect to the map");
    exchange(stream, SEED, UP, Instant::now() + BULK_TIMEOUT)
        .unwrap_or_else(|e| panic!("bulk exchange: {e}; relay: {:?}", relay.stats()));
    let at_sink = reports
        .recv_timeout(Duration::from_secs(30))
        .expect("the sink reports the connection")
        .expect("the sink received the upload");
    assert_eq!(at_sink, seeded_fingerprint(SEED, UP));
    assert!(relay.dropped() > 0, "{:?}", relay.stats());

    let after = tunnel
        .client
        .wait_stats("the bulk map's counts", SMALL, |s| {
            s.map_rows.iter().any(|m| m.id == MAP && m.bytes_in == UP)
        });
    assert!(after.packets_lost > before.packets_lost, "{after:#?}");
    assert!(
        after.frames_retransmitted > before.frames_retransmitted,
        "{after:#?}"
    );
    assert!(
        after.bytes_retransmitted > before.bytes_retransmitted,
        "{after:#?}"
    );
    // Summed over the dialling node's sessions (one per shard; the bulk connection used one).
    let rows = &after.session_rows;
    let sum = |f: fn(&SessionRow) -> u64| rows.iter().map(f).sum::<u64>();
    assert!(
        sum(|s| s.packets_lost) > 0 && sum(|s| s.bytes_retransmitted) > 0,
        "{rows:#?}"
    );
    // Retransmissions are not goodput: first transmissions still add up to what was sent.
    assert!(close_to(sum(|s| s.stream_bytes_sent), UP), "{rows:#?}");
}

#[test]
fn refuses_what_it_does_not_understand_and_keeps_serving() {
    let dir = TestDir::new("ctlrefuse");
    let config = NodeConfig::new(&dir, "solo").listen(free_udp_addr());
    let engine = Engine::start(&dir, "solo", &config);
    let socket = &engine.config().control;

    let mode = std::fs::metadata(socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "control socket mode {mode:o}");

    let stream = UnixStream::connect(socket).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut reader = BufReader::new(stream);
    let mut ask = |line: &[u8]| {
        reader.get_mut().write_all(line).unwrap();
        let mut answer = Vec::new();
        reader.read_until(b'\n', &mut answer).unwrap();
        Response::parse(&answer).unwrap()
    };
    let error = |response: Response| match response {
        Response::Error { message } => message,
        other => panic!("expected an error, got {other:?}"),
    };
    assert_eq!(
        error(ask(b"{\"version\":1,\"command\":\"launch\"}\n")),
        "unknown command `launch` (this engine serves: status, stats, reload, peers, maps)"
    );
    let message = error(ask(b"{\"version\":2,\"command\":\"status\"}\n"));
    assert!(message.contains("version 2 is not supported"), "{message}");
    let message = error(ask(b"status\n"));
    assert!(
        message.starts_with("malformed control message"),
        "{message}"
    );
    // The same connection still serves well-formed requests.
    match ask(&Request::new(Command::Status).to_line()) {
        Response::Status(status) => assert_eq!(status.engine_version, env!("CARGO_PKG_VERSION")),
        other => panic!("{other:?}"),
    }
    match ask(&Request::new(Command::Peers).to_line()) {
        Response::Peers { peers } => assert!(peers.is_empty(), "{peers:?}"),
        other => panic!("{other:?}"),
    }
    let stats: Stats = match request(socket, Command::Stats) {
        Response::Stats(stats) => stats,
        other => panic!("{other:?}"),
    };
    assert!(stats.session_rows.is_empty() && stats.map_rows.is_empty());
    assert_eq!(stats.per_shard.len() as u32, {
        match request(socket, Command::Status) {
            Response::Status(status) => status.shards,
            other => panic!("{other:?}"),
        }
    });
}
