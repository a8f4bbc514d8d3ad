//! Property: whatever the configuration, every offered datagram is accounted for exactly once,
//! and a run is a pure function of its seed.

mod common;

use std::time::Duration;

use engine_sim::{GilbertElliott, LinkConfig, QueueLimit};
use proptest::prelude::*;

use common::{MIN_SIZE, addr, one_way};

fn config() -> impl Strategy<Value = LinkConfig> {
    (
        (
            prop::option::of(10_000u64..100_000_000),
            prop_oneof![
                (0usize..100_000).prop_map(QueueLimit::Bytes),
                (0u64..200).prop_map(|ms| QueueLimit::Time(Duration::from_millis(ms))),
                Just(QueueLimit::Unlimited),
            ],
            0u64..100,
            0u64..20,
        ),
        (
            0.0..0.5f64,
            prop::option::of((0.0..0.5f64, 1.0..10.0f64)),
            0.0..0.5f64,
            0.0..0.5f64,
            0.0..0.5f64,
            MIN_SIZE..1500,
        ),
    )
        .prop_map(
            |((rate, queue, delay, jitter), (loss, burst, reorder, duplicate, corrupt, mtu))| {
                let mut config = LinkConfig::new()
                    .queue(queue)
                    .delay(Duration::from_millis(delay))
                    .jitter(Duration::from_millis(jitter))
                    .loss(loss)
                    .reorder(reorder)
                    .duplicate(duplicate)
                    .corrupt(corrupt)
                    .mtu(mtu);
                if let Some(rate) = rate {
                    config = config.rate_bps(rate);
                }
                if let Some((mean, len)) = burst {
                    config = config.burst_loss(GilbertElliott::from_loss_and_burst(mean, len));
                }
                config
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn every_datagram_is_accounted_for(
        seed in any::<u64>(),
        config in config(),
        interval_us in 0u64..5000,
        size in MIN_SIZE..1500,
    ) {
        let interval = Duration::from_micros(interval_us);
        let (sim, _, rx) = one_way(seed, config.clone(), 2000, interval, size);
        let s = sim.link_stats(addr(1), addr(2));
        prop_assert_eq!(s.offered.datagrams, 2000);
        prop_assert_eq!(
            s.offered.datagrams + s.duplicated.datagrams,
            s.oversize.datagrams + s.queue_dropped.datagrams + s.lost.datagrams
                + s.delivered.datagrams + s.unroutable.datagrams
        );
        prop_assert_eq!(
            s.offered.bytes + s.duplicated.bytes,
            s.oversize.bytes + s.queue_dropped.bytes + s.lost.bytes + s.delivered.bytes
        );
        prop_assert_eq!(sim.node(rx).arrivals.len() as u64, s.delivered.datagrams);
        prop_assert_eq!(sim.in_flight(), 0);

        let (again, _, rx2) = one_way(seed, config, 2000, interval, size);
        prop_assert_eq!(again.link_stats(addr(1), addr(2)), s);
        let times = |sim: &engine_sim::Sim<common::Peer>, id| -> Vec<Duration> {
            sim.node(id).arrivals.iter().map(|a| a.at - sim.epoch()).collect()
        };
        prop_assert_eq!(times(&sim, rx), times(&again, rx2));
    }
}
