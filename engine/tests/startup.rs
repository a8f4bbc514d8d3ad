//! Start-up checks through the real binary: a CPU list naming an offline CPU stops the engine
//! with a message naming it; more shards than CPUs runs, with a warning.

mod common;

use std::time::Duration;

use common::TestDir;
use common::net::free_udp_addr;
use common::node::{Engine, NodeConfig};

/// The online CPUs, from the same file the engine reads.
fn online_cpus() -> Vec<usize> {
    let text = std::fs::read_to_string("/sys/devices/system/cpu/online").expect("online CPUs");
    text.trim()
        .split(',')
        .flat_map(|part| match part.split_once('-') {
            Some((a, b)) => {
                (a.parse::<usize>().expect("cpu")..=b.parse::<usize>().expect("cpu")).collect()
            }
            None => vec![part.parse::<usize>().expect("cpu")],
        })
        .collect()
}

#[test]
fn a_cpu_list_naming_an_offline_cpu_stops_the_engine() {
    let offline = online_cpus().iter().max().copied().unwrap_or(0) + 1;
    let dir = TestDir::new("startup-cpus");
    let mut config = NodeConfig::new(&dir, "node").listen(free_udp_addr());
    config.extra.push(format!("cpus: [{offline}]"));
    let mut engine = Engine::spawn(&dir, "node", &config);
    let code = engine.wait_exit(Duration::from_secs(20));
    let log = engine.log();
    assert_eq!(code, Some(1), "{log}");
    assert!(
        log.contains(&format!("cpus: CPU {offline} is not online")),
        "the message names the CPU:\n{log}"
    );
}

#[test]
fn more_shards_than_cpus_runs_with_a_warning() {
    let shards = online_cpus().len() * 2;
    let dir = TestDir::new("startup-shards");
    let config = NodeConfig::new(&dir, "node")
        .shards(shards)
        .listen(free_udp_addr());
    let mut engine = Engine::start(&dir, "node", &config);
    let log = engine.log();
    assert!(
        log.contains(&format!("shards: {shards} but only")),
        "a warning says the shards share CPUs:\n{log}"
    );
    assert_eq!(engine.stats().per_shard.len(), shards);
    engine.stop();
}
