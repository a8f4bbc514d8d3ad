//! Thread-per-core: connections spread over the shards of both engines, packets steered to the
//! shard that owns their session, and what reaches the wrong shard handed over, never lost.

mod common;

use std::net::SocketAddr;
use std::thread;

use common::net::{echo_check, echo_server, free_tcp_addr, free_udp_addr};
use common::node::{Engine, NodeConfig};
use common::{BULK_TIMEOUT, SESSION_TIMEOUT, TestDir, Tunnel, TunnelSpec, wait_echo};
use engine_api::control::Stats;

const MAP: u32 = 40;

/// Runs `count` concurrent echo connections of about 256 KiB each through `addr`, verifying
/// every byte (SHA-256 both ways); panics listing the failures.
fn concurrent_echoes(addr: SocketAddr, count: u64, seed: u64) {
    let workers: Vec<_> = (0..count)
        .map(|i| {
            thread::spawn(move || {
                echo_check(addr, seed + i, (256 << 10) + i * 977, BULK_TIMEOUT)
                    .map_err(|e| format!("connection {i}: {e}"))
            })
        })
        .collect();
    let failures: Vec<String> = workers
        .into_iter()
        .filter_map(|w| {
            w.join()
                .unwrap_or_else(|_| Err("thread panicked".into()))
                .err()
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {count} connections failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// A public node with two shards whose map reaches, over the session the inside node dials,
/// the inside node's `target`; the inside node runs one shard, so one session.
fn reverse_pair(dir: &TestDir, target: SocketAddr) -> (NodeConfig, NodeConfig) {
    let public_udp = free_udp_addr();
    let public = NodeConfig::new(dir, "public")
        .shards(2)
        .listen(public_udp)
        .peer("inside", None)
        .map(MAP, free_tcp_addr(), "inside");
    let inside = NodeConfig::new(dir, "inside")
        .shards(1)
        .peer("public", Some(public_udp))
        .allow(MAP, target);
    (public, inside)
}

fn per_shard<T>(stats: &Stats, field: impl Fn(&Stats) -> T) -> Vec<T> {
    stats.per_shard.iter().map(field).collect()
}

#[test]
fn sixty_four_connections_spread_over_two_shards_on_both_ends() {
    let echo = echo_server();
    let tunnel = Tunnel::start(
        "shards-spread",
        &TunnelSpec::new(&[(MAP, echo.addr())], &[MAP]).shards(2),
    );
    tunnel.wait_echo(MAP, SESSION_TIMEOUT);
    concurrent_echoes(tunnel.map_addr(MAP), 64, 0x5A00);

    let client = tunnel.client.stats();
    let server = tunnel.server.stats();
    eprintln!(
        "client accepted per shard {:?}, server connected per shard {:?}",
        per_shard(&client, |s| s.connections_accepted),
        per_shard(&server, |s| s.streams_connected)
    );
    assert_eq!(client.per_shard.len(), 2, "client: {client:#?}");
    assert_eq!(server.per_shard.len(), 2, "server: {server:#?}");
    // The kernel spreads the 64 accepted connections over the client's two listeners (all on
    // one shard has probability 2^-63); each client shard has its own session, and consecutive
    // steering hints put those on different server shards.
    for (i, shard) in client.per_shard.iter().enumerate() {
        assert!(
            shard.connections_accepted > 0,
            "client shard {i}: {client:#?}"
        );
        assert_eq!(shard.sessions, 1, "client shard {i} session: {client:#?}");
    }
    for (i, shard) in server.per_shard.iter().enumerate() {
        assert!(shard.streams_connected > 0, "server shard {i}: {server:#?}");
        assert!(shard.packets_received > 0, "server shard {i}: {server:#?}");
    }
    // The steering program delivered every packet to its owner. (The client only dials: each
    // of its shards has its own port, so nothing can reach the wrong one there.)
    assert_eq!(server.packets_handed_over, 0, "server: {server:#?}");
    assert_eq!(server.connects_failed, 0, "server: {server:#?}");
}

/// A node that both listens and dials shares one UDP port among its shards, so the replies to
/// both of its shards' sessions come from the same address. Without the steering program the
/// kernel hashes them all to one shard: half of them reach the wrong shard and must be handed
/// over, counted, with every byte still delivered.
#[test]
fn misrouted_packets_are_handed_over_and_counted() {
    let echo = echo_server();
    let dir = TestDir::new("shards-misrouted");
    let server_udp = free_udp_addr();
    let server_config = NodeConfig::new(&dir, "server")
        .shards(2)
        .listen(server_udp)
        .peer("client", None)
        .allow(MAP, echo.addr());
    let client_config = NodeConfig::new(&dir, "client")
        .shards(2)
        .steering(false)
        .listen(free_udp_addr())
        .peer("server", Some(server_udp))
        .map(MAP, free_tcp_addr(), "server");
    let server = Engine::start(&dir, "server", &server_config);
    let client = Engine::start(&dir, "client", &client_config);
    let addr = client_config.map_addr(MAP);
    wait_echo(addr, "echo through the tunnel", SESSION_TIMEOUT);
    concurrent_echoes(addr, 16, 0x5B00);

    // Shards answer `ctl stats` one after another while keepalives may still cross over, so
    // wait for a snapshot in which both sides of the handover agree.
    let stats = client.wait_stats("handed-over packets all taken over", SESSION_TIMEOUT, |s| {
        s.packets_handed_over == s.packets_taken_over
    });
    eprintln!(
        "client handed over per shard {:?}, taken over {:?}",
        per_shard(&stats, |s| s.packets_handed_over),
        per_shard(&stats, |s| s.packets_taken_over)
    );
    assert!(stats.packets_handed_over > 0, "client: {stats:#?}");
    assert_eq!(stats.handover_dropped, 0, "client: {stats:#?}");
    for (i, shard) in stats.per_shard.iter().enumerate() {
        assert_eq!(shard.sessions, 1, "client shard {i}: {stats:#?}");
    }
    let server_stats = server.stats();
    assert_eq!(server_stats.connects_failed, 0, "server: {server_stats:#?}");
}

/// The public node runs more shards than the inside node has sessions: a connection accepted
/// on a shard without a session to the inside node is handed to a shard that has one.
#[test]
fn connections_move_to_the_shard_with_the_peers_session() {
    let echo = echo_server();
    let dir = TestDir::new("shards-reverse");
    let (public_config, inside_config) = reverse_pair(&dir, echo.addr());
    let public = Engine::start(&dir, "public", &public_config);
    let _inside = Engine::start(&dir, "inside", &inside_config);
    let addr = public_config.map_addr(MAP);
    wait_echo(addr, "echo through the reverse map", SESSION_TIMEOUT);
    concurrent_echoes(addr, 32, 0x5C00);

    let stats = public.stats();
    eprintln!(
        "public accepted per shard {:?}, handed over {:?}",
        per_shard(&stats, |s| s.connections_accepted),
        per_shard(&stats, |s| s.connections_handed_over)
    );
    assert_eq!(
        per_shard(&stats, |s| s.sessions).iter().sum::<u64>(),
        1,
        "one session from the one-shard inside node: {stats:#?}"
    );
    // 33+ connections spread by the kernel over two listeners: some reach the shard without
    // the session (all on one shard has probability 2^-32).
    assert!(stats.connections_handed_over > 0, "public: {stats:#?}");
    assert_eq!(stats.session_waits_expired, 0, "public: {stats:#?}");
}

/// Connections that arrive before the peer dials in wait on whichever shard accepted them; when
/// the peer's one session comes up on another shard, they move there instead of timing out.
#[test]
fn waiting_connections_move_when_the_session_comes_up_elsewhere() {
    let echo = echo_server();
    let dir = TestDir::new("shards-waiting");
    let (public_config, inside_config) = reverse_pair(&dir, echo.addr());
    let public = Engine::start(&dir, "public", &public_config);
    let addr = public_config.map_addr(MAP);
    let workers: Vec<_> = (0..16u64)
        .map(|i| thread::spawn(move || echo_check(addr, 0x5D00 + i, 64 << 10, BULK_TIMEOUT)))
        .collect();
    public.wait_stats("16 connections accepted", SESSION_TIMEOUT, |s| {
        s.connections_accepted >= 16
    });
    let _inside = Engine::start(&dir, "inside", &inside_config);
    for (i, worker) in workers.into_iter().enumerate() {
        worker
            .join()
            .expect("connection thread")
            .unwrap_or_else(|e| panic!("waiting connection {i}: {e}"));
    }
    let stats = public.stats();
    eprintln!(
        "public accepted per shard {:?}, handed over {:?}",
        per_shard(&stats, |s| s.connections_accepted),
        per_shard(&stats, |s| s.connections_handed_over)
    );
    // 16 connections over two listeners: both shards have some (all on one: 2^-15).
    assert!(stats.connections_handed_over > 0, "public: {stats:#?}");
    assert_eq!(stats.session_waits_expired, 0, "public: {stats:#?}");
}
