//! Acceptance: 4 streams of 8 MiB each way at once over a hostile link arrive exactly, in
//! order, for 100 seeds. Replay one seed with `SIM_SEED=n`.

mod harness;

use std::time::Duration;

use engine_proto::SessionConfig;
use engine_sim::{LinkConfig, seeds_from_env};
use harness::Pair;

const STREAMS: u32 = 4;
const LEN: u64 = 8 << 20;

fn hostile_link() -> LinkConfig {
    LinkConfig::new()
        .rate_bps(100_000_000)
        .delay(Duration::from_millis(25))
        .loss(0.05)
        .reorder(0.01)
        .duplicate(0.01)
        .corrupt(0.001)
}

fn transfer_both_ways(seed: u64) {
    let mut pair = Pair::new(
        seed,
        SessionConfig::default(),
        hostile_link(),
        hostile_link(),
    );
    let (c, s) = (pair.client, pair.server);
    for i in 0..STREAMS {
        pair.sim.node_mut(c).plan.push((i, LEN));
        pair.sim.node_mut(s).plan.push((100 + i, LEN));
    }
    let outcome = pair.run(Duration::from_secs(120), |client, server| {
        client.all_received(STREAMS as usize, LEN) && server.all_received(STREAMS as usize, LEN)
    });
    let (client, server) = (pair.sim.node(c), pair.sim.node(s));
    assert!(
        client.errors.is_empty(),
        "seed {seed}: client errors {:?}",
        client.errors
    );
    assert!(
        server.errors.is_empty(),
        "seed {seed}: server errors {:?}",
        server.errors
    );
    assert_eq!(
        outcome,
        engine_sim::RunOutcome::Done,
        "seed {seed}: not done after {:?}: client got {:?}, server got {:?}",
        pair.sim.elapsed(),
        client
            .incoming
            .values()
            .map(|s| s.received)
            .collect::<Vec<_>>(),
        server
            .incoming
            .values()
            .map(|s| s.received)
            .collect::<Vec<_>>()
    );
    // Every map id arrived once, each with its own data (checked byte by byte while reading).
    let maps: Vec<u32> = server.incoming.values().map(|s| s.map_id).collect();
    assert_eq!(maps, (0..STREAMS).collect::<Vec<_>>());
    let maps: Vec<u32> = client.incoming.values().map(|s| s.map_id).collect();
    assert_eq!(maps, (100..100 + STREAMS).collect::<Vec<_>>());
}

// 100 seeds, split so the test runner spreads them over the cores.
macro_rules! seed_block {
    ($name:ident, $range:expr) => {
        #[test]
        fn $name() {
            engine_sim::for_each_seed!(
                stringify!($name),
                seeds_from_env($range),
                transfer_both_ways
            );
        }
    };
}

seed_block!(exact_delivery_seeds_00_24, 0..25);
seed_block!(exact_delivery_seeds_25_49, 25..50);
seed_block!(exact_delivery_seeds_50_74, 50..75);
seed_block!(exact_delivery_seeds_75_99, 75..100);

/// The check the delivery test relies on is not vacuous.
#[test]
fn harness_detects_wrong_bytes() {
    let mut data = vec![0u8; 5000];
    harness::fill_for_test(3, 1000, &mut data);
    assert!(harness::verify(3, 1000, &data));
    assert!(!harness::verify(4, 1000, &data), "another stream's data");
    assert!(!harness::verify(3, 1001, &data), "shifted by one byte");
    assert!(
        !harness::verify(3, 1000 + 1350, &data),
        "shifted by a packet"
    );
    data[4321] ^= 1;
    assert!(!harness::verify(3, 1000, &data), "one bit flipped");
}
