//! A reverse map: the inside node (no listen address, behind NAT in real life) dials the public
//! node; the public node's map carries connections back over that session to the inside node's
//! `allow` target.

mod common;

use std::thread;

use common::net::{echo_check, echo_server, free_tcp_addr, free_udp_addr};
use common::node::{Engine, NodeConfig};
use common::{BULK_TIMEOUT, SESSION_TIMEOUT, TestDir, wait_echo};

const MAP: u32 = 7;

#[test]
fn public_map_reaches_inside_target_over_the_inside_nodes_session() {
    let echo = echo_server();
    let dir = TestDir::new("reverse");
    let public_udp = free_udp_addr();
    let public_config = NodeConfig::new(&dir, "public")
        .listen(public_udp)
        .peer("inside", None)
        .map(MAP, free_tcp_addr(), "inside");
    let inside_config = NodeConfig::new(&dir, "inside")
        .peer("public", Some(public_udp))
        .allow(MAP, echo.addr());
    let mut public = Engine::start(&dir, "public", &public_config);
    let mut inside = Engine::start(&dir, "inside", &inside_config);
    let addr = public_config.map_addr(MAP);

    // The public node can only carry the connection once the inside node has dialled it.
    let took = wait_echo(addr, "echo through the reverse map", SESSION_TIMEOUT);
    eprintln!("reverse map carried data {took:?} after both engines were ready");

    // Then real traffic, a few connections at once.
    let workers: Vec<_> = (0..4u64)
        .map(|i| thread::spawn(move || echo_check(addr, 0x7E00 + i, (1 << 20) + i, BULK_TIMEOUT)))
        .collect();
    for (i, worker) in workers.into_iter().enumerate() {
        worker
            .join()
            .expect("connection thread")
            .unwrap_or_else(|e| panic!("reverse connection {i}: {e}"));
    }

    let stats = public.stats();
    assert!(stats.connections_accepted >= 5, "public: {stats:#?}");
    assert!(stats.sessions >= 1, "public: {stats:#?}");
    let stats = inside.stats();
    assert!(stats.streams_connected >= 5, "inside: {stats:#?}");
    assert_eq!(stats.streams_refused, 0, "inside: {stats:#?}");

    inside.stop();
    public.stop();
}
