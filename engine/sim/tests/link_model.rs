//! Statistical and exact checks of the link model, driven end to end through `Sim`.

mod common;

use std::time::{Duration, Instant};

use engine_sim::{
    GilbertElliott, IP_UDP_OVERHEAD, LinkConfig, QueueLimit, RunOutcome, Sim, for_each_seed,
};

use common::{Peer, addr, one_way};

const MS: Duration = Duration::from_millis(1);

/// Relative difference.
fn rel(measured: f64, expected: f64) -> f64 {
    (measured - expected).abs() / expected
}

#[test]
fn rate_limiter_delivers_configured_rate_counting_headers() {
    let rate = 10_000_000;
    let size = 1200;
    // Offer ~2x the rate for 20 s so the bottleneck never idles.
    let (sim, tx, rx) = one_way(
        1,
        LinkConfig::new().rate_bps(rate),
        40_000,
        Duration::from_micros(500),
        size,
    );
    let arrivals = &sim.node(rx).arrivals;
    let first = arrivals.first().unwrap().at;
    let last = arrivals.last().unwrap().at;
    let wire_bits = ((arrivals.len() - 1) * (size + IP_UDP_OVERHEAD) * 8) as f64;
    let measured = wire_bits / (last - first).as_secs_f64();
    assert!(
        rel(measured, rate as f64) < 0.01,
        "measured {measured} bit/s, configured {rate}"
    );
    // Without the header charge the payload rate would equal the link rate; it must not.
    let payload_rate = ((arrivals.len() - 1) * size * 8) as f64 / (last - first).as_secs_f64();
    assert!(rel(payload_rate, rate as f64) > 0.02);
    let stats = sim.link_stats(addr(1), addr(2));
    assert_eq!(stats.offered.datagrams, 40_000);
    assert!(stats.queue_dropped.datagrams > 0);
    assert_eq!(sim.node(tx).send_times.len(), 40_000);
}

#[test]
fn queue_overflow_drops_only_above_rate() {
    let rate = 8_000_000;
    let size = 972; // 1000 bytes on the wire: 1 ms per datagram at 8 Mbit/s.
    let queue = Duration::from_millis(30);
    let config = LinkConfig::new()
        .rate_bps(rate)
        .queue(QueueLimit::Time(queue));

    // 2x the link rate: half is dropped once the queue is full, and nothing waits longer than
    // the queue allows.
    let (sim, tx, rx) = one_way(1, config.clone(), 10_000, Duration::from_micros(500), size);
    let stats = sim.link_stats(addr(1), addr(2));
    let drop_rate = stats.queue_dropped.datagrams as f64 / stats.offered.datagrams as f64;
    assert!(rel(drop_rate, 0.5) < 0.02, "drop rate {drop_rate}");
    assert!(
        stats.max_queue_delay <= queue,
        "{:?}",
        stats.max_queue_delay
    );
    assert!(
        stats.max_queue_delay >= queue - 2 * MS,
        "{:?}",
        stats.max_queue_delay
    );
    let sends = &sim.node(tx).send_times;
    for a in &sim.node(rx).arrivals {
        let sojourn = a.at - sends[a.seq.unwrap() as usize];
        assert!(sojourn <= queue + MS, "{sojourn:?}");
    }
    assert_eq!(
        stats.offered.datagrams,
        stats.queue_dropped.datagrams + stats.delivered.datagrams
    );

    // 0.9x the link rate: no drops.
    let (sim, _, _) = one_way(1, config, 10_000, Duration::from_micros(1111), size);
    let stats = sim.link_stats(addr(1), addr(2));
    assert_eq!(stats.queue_dropped.datagrams, 0);
    assert_eq!(stats.delivered.datagrams, 10_000);

    // A byte limit of 10 datagrams behaves like 10 ms.
    let (sim, _, _) = one_way(
        1,
        LinkConfig::new()
            .rate_bps(rate)
            .queue(QueueLimit::Bytes(10_000)),
        1000,
        Duration::ZERO,
        size,
    );
    let stats = sim.link_stats(addr(1), addr(2));
    assert_eq!(stats.delivered.datagrams, 10);
    assert_eq!(stats.max_queue_delay, 9 * MS);
}

#[test]
fn bernoulli_loss_within_statistical_bounds() {
    for_each_seed!("bernoulli_loss_within_statistical_bounds", 0..4, |seed| {
        let n = 200_000;
        let p = 0.05;
        let (sim, _, rx) = one_way(seed, LinkConfig::new().loss(p), n, MS, 64);
        let stats = sim.link_stats(addr(1), addr(2));
        let measured = stats.lost.datagrams as f64 / n as f64;
        let sigma = (p * (1.0 - p) / n as f64).sqrt();
        assert!(
            (measured - p).abs() < 5.0 * sigma,
            "seed {seed}: loss {measured}, expected {p} ± {}",
            5.0 * sigma
        );
        assert_eq!(sim.node(rx).arrivals.len() as u64 + stats.lost.datagrams, n);
    });
}

#[test]
fn gilbert_elliott_mean_loss_and_burst_length() {
    for_each_seed!("gilbert_elliott_mean_loss_and_burst_length", 0..3, |seed| {
        let n = 500_000;
        let (loss, burst) = (0.03, 5.0);
        let config = LinkConfig::new().burst_loss(GilbertElliott::from_loss_and_burst(loss, burst));
        let (sim, _, rx) = one_way(seed, config, n, MS, 64);
        // The link is FIFO, so gaps in the received sequence are exactly the loss bursts.
        let seqs = sim.node(rx).seqs();
        let mut bursts = Vec::new();
        let mut expected = 0;
        for seq in seqs.iter().copied().chain([n]) {
            if seq > expected {
                bursts.push(seq - expected);
            }
            expected = seq + 1;
        }
        let lost: u64 = bursts.iter().sum();
        assert_eq!(lost, sim.link_stats(addr(1), addr(2)).lost.datagrams);
        let measured_loss = lost as f64 / n as f64;
        let measured_burst = lost as f64 / bursts.len() as f64;
        assert!(
            rel(measured_loss, loss) < 0.1,
            "seed {seed}: loss {measured_loss}"
        );
        assert!(
            rel(measured_burst, burst) < 0.08,
            "seed {seed}: burst {measured_burst}"
        );
    });
}

#[test]
fn duplication_and_corruption_counts() {
    let n = 100_000;
    let config = LinkConfig::new().duplicate(0.02).corrupt(0.01);
    let (sim, _, rx) = one_way(3, config, n, MS, 100);
    let stats = sim.link_stats(addr(1), addr(2));
    let arrivals = &sim.node(rx).arrivals;
    assert!(rel(stats.duplicated.datagrams as f64, 0.02 * n as f64) < 0.1);
    assert!(rel(stats.corrupted.datagrams as f64, 0.01 * n as f64) < 0.15);
    assert_eq!(arrivals.len() as u64, n + stats.duplicated.datagrams);
    assert_eq!(stats.delivered.datagrams, arrivals.len() as u64);
    // A corrupted datagram may also have been duplicated (corruption comes first).
    let bad = arrivals.iter().filter(|a| a.seq.is_none()).count() as u64;
    assert!(bad >= stats.corrupted.datagrams && bad <= 2 * stats.corrupted.datagrams);
    let mut seqs = sim.node(rx).seqs();
    seqs.sort_unstable();
    seqs.dedup();
    assert_eq!(seqs.len() as u64, n - stats.corrupted.datagrams);
}

#[test]
fn reordered_datagrams_arrive_after_later_ones() {
    let n = 100_000;
    let config = LinkConfig::new().delay(20 * MS).reorder(0.05);
    let (sim, _, rx) = one_way(4, config, n, MS, 64);
    let stats = sim.link_stats(addr(1), addr(2));
    assert!(rel(stats.reordered.datagrams as f64, 0.05 * n as f64) < 0.1);
    // Sent 1 ms apart and held back 10 ms: a reordered datagram is overtaken unless all of the
    // next ten were reordered too, or it is among the last ten.
    let mut max = 0;
    let mut late = 0u64;
    for seq in sim.node(rx).seqs() {
        if seq < max {
            late += 1;
        }
        max = max.max(seq);
    }
    assert!(late <= stats.reordered.datagrams);
    assert!(late + 10 >= stats.reordered.datagrams, "{late} late");
}

#[test]
fn delay_is_exact_without_jitter() {
    let delay = Duration::from_micros(37_123);
    let (sim, tx, rx) = one_way(5, LinkConfig::new().delay(delay), 1000, 3 * MS, 200);
    let sends = &sim.node(tx).send_times;
    let arrivals = &sim.node(rx).arrivals;
    assert_eq!(arrivals.len(), 1000);
    for a in arrivals {
        assert_eq!(a.at - sends[a.seq.unwrap() as usize], delay);
    }

    // With a rate limit and an idle link, the serialisation time adds on: 1 Mbit/s, 97 + 28 bytes
    // = 1 ms.
    let config = LinkConfig::new().delay(delay).rate_bps(1_000_000);
    let (sim, tx, rx) = one_way(5, config, 100, 3 * MS, 97);
    let sends = &sim.node(tx).send_times;
    for a in &sim.node(rx).arrivals {
        assert_eq!(a.at - sends[a.seq.unwrap() as usize], delay + MS);
    }
}

#[test]
fn jitter_bounds_delay_and_reorders() {
    let delay = 10 * MS;
    let jitter = 5 * MS;
    let config = LinkConfig::new().delay(delay).jitter(jitter);
    let (sim, tx, rx) = one_way(6, config, 20_000, MS, 64);
    let sends = &sim.node(tx).send_times;
    let mut min = Duration::MAX;
    let mut max = Duration::ZERO;
    let mut overtaken = 0;
    let mut highest = 0;
    for a in &sim.node(rx).arrivals {
        let seq = a.seq.unwrap();
        let one_way = a.at - sends[seq as usize];
        min = min.min(one_way);
        max = max.max(one_way);
        if seq < highest {
            overtaken += 1;
        }
        highest = highest.max(seq);
    }
    assert!(min >= delay && max <= delay + jitter, "{min:?}..{max:?}");
    assert!(
        min < delay + MS / 2 && max > delay + jitter - MS / 2,
        "{min:?}..{max:?}"
    );
    assert!(overtaken > 100, "{overtaken}");
}

#[test]
fn mtu_drops_and_counts_oversize() {
    let (sim, _, rx) = one_way(7, LinkConfig::new().mtu(1200), 10, MS, 1201);
    assert!(sim.node(rx).arrivals.is_empty());
    let stats = sim.link_stats(addr(1), addr(2));
    assert_eq!(stats.oversize.datagrams, 10);
    assert_eq!(stats.oversize.bytes, 12_010);
}

#[test]
fn gso_batches_are_split_into_datagrams() {
    let mut sim = Sim::new(8);
    sim.set_link(addr(1), addr(2), LinkConfig::new().mtu(1000));
    let start = sim.now();
    let mut sender = Peer::sender(start, addr(2), 30, MS, 1000);
    sender.gso = 10;
    sim.add_node(addr(1), sender);
    let rx = sim.add_node(addr(2), Peer::sink());
    assert_eq!(
        sim.run_until(start + Duration::from_secs(1), |_| false),
        RunOutcome::Idle
    );
    let lens: Vec<usize> = sim.node(rx).arrivals.iter().map(|a| a.len).collect();
    assert_eq!(lens.len(), 30);
    for batch in lens.chunks(10) {
        assert_eq!(batch[..9], [1000; 9]);
        assert_eq!(batch[9], 500);
    }
    assert_eq!(sim.node(rx).seqs(), (0..30).collect::<Vec<_>>());
}

#[test]
fn same_seed_same_run_different_seed_different_run() {
    let config = LinkConfig::new()
        .rate_bps(5_000_000)
        .delay(15 * MS)
        .jitter(3 * MS)
        .loss(0.02)
        .burst_loss(GilbertElliott::from_loss_and_burst(0.01, 3.0))
        .reorder(0.01)
        .duplicate(0.01)
        .corrupt(0.01);
    let run = |seed| {
        let (sim, _, rx) = one_way(
            seed,
            config.clone(),
            20_000,
            Duration::from_micros(1500),
            1000,
        );
        let start = sim.epoch();
        let log: Vec<_> = sim
            .node(rx)
            .arrivals
            .iter()
            .map(|a| (a.seq, a.at - start, a.len))
            .collect();
        (sim.link_stats(addr(1), addr(2)), sim.stats(), log)
    };
    let a = run(11);
    let b = run(11);
    let c = run(12);
    assert_eq!(a, b);
    assert_ne!(a.0, c.0);
    assert_ne!(a.2, c.2);
}

#[test]
fn other_links_do_not_perturb_a_links_randomness() {
    let config = LinkConfig::new().loss(0.1).jitter(2 * MS);
    let run = |extra: bool| {
        let mut sim = Sim::new(99);
        let start = sim.now();
        if extra {
            // An unrelated lossy flow, added first so it also shifts node ids.
            sim.set_link(addr(3), addr(4), config.clone());
            sim.add_node(addr(3), Peer::sender(start, addr(4), 5000, MS / 3, 64));
            sim.add_node(addr(4), Peer::sink());
        }
        sim.set_link(addr(1), addr(2), config.clone());
        sim.add_node(addr(1), Peer::sender(start, addr(2), 5000, MS, 64));
        let rx = sim.add_node(addr(2), Peer::sink());
        sim.run_until(start + Duration::from_secs(100), |_| false);
        let arrivals: Vec<_> = sim
            .node(rx)
            .arrivals
            .iter()
            .map(|a| (a.seq, a.at - start))
            .collect();
        arrivals
    };
    assert_eq!(run(false), run(true));
}

#[test]
fn echo_round_trip_uses_each_directions_link() {
    let mut sim = Sim::new(9);
    sim.set_link(addr(1), addr(2), LinkConfig::new().delay(30 * MS));
    sim.set_link(addr(2), addr(1), LinkConfig::new().delay(12 * MS));
    let start = sim.now();
    let tx = sim.add_node(addr(1), Peer::sender(start, addr(2), 1, MS, 64));
    let rx = sim.add_node(addr(2), Peer::echo());
    let outcome = sim.run_until(start + Duration::from_secs(1), |sim| {
        !sim.node(tx).arrivals.is_empty()
    });
    assert_eq!(outcome, RunOutcome::Done);
    assert_eq!(sim.elapsed(), 42 * MS);
    assert_eq!(sim.node(tx).arrivals[0].from, addr(2));
    assert_eq!(sim.node(rx).arrivals[0].from, addr(1));
    assert_eq!(sim.link_stats(addr(2), addr(1)).delivered.datagrams, 1);
}

#[test]
fn run_until_outcomes_and_time_jumps() {
    let mut sim = Sim::new(10);
    sim.set_link(
        addr(1),
        addr(2),
        LinkConfig::new().delay(Duration::from_secs(3600)),
    );
    let start = sim.now();
    sim.add_node(
        addr(1),
        Peer::sender(start, addr(2), 2, Duration::from_secs(60), 64),
    );
    let rx = sim.add_node(addr(2), Peer::sink());

    // The second send is at 60 s, before the deadline.
    let outcome = sim.run_until(start + Duration::from_secs(100), |_| false);
    assert_eq!(outcome, RunOutcome::Deadline);
    assert_eq!(sim.elapsed(), Duration::from_secs(100));
    assert_eq!(sim.in_flight(), 2);

    let outcome = sim.run_until(start + Duration::from_secs(10_000), |_| false);
    assert_eq!(outcome, RunOutcome::Idle);
    assert_eq!(sim.elapsed(), Duration::from_secs(3660));
    assert_eq!(sim.node(rx).arrivals.len(), 2);
    assert!(!sim.step());
    // Two timer steps (sends at 0 s is polled on creation; 60 s) and two deliveries.
    assert_eq!(sim.stats().deliveries, 2);
    assert!(sim.node(rx).steps >= 3);
}

#[test]
fn node_mut_changes_are_picked_up() {
    let mut sim = Sim::new(11);
    let a = sim.add_node(addr(1), Peer::sink());
    let b = sim.add_node(addr(2), Peer::sink());
    assert!(!sim.step());
    // Turn the idle sink into a sender between steps.
    let now = sim.now();
    *sim.node_mut(a) = Peer::sender(now, addr(2), 3, MS, 64);
    let outcome = sim.run_for(Duration::from_secs(1), |_| false);
    assert_eq!(outcome, RunOutcome::Idle);
    assert_eq!(sim.node(b).seqs(), [0, 1, 2]);
}

#[test]
fn unroutable_datagrams_are_counted() {
    let mut sim = Sim::new(12);
    let start = sim.now();
    sim.add_node(addr(1), Peer::sender(start, addr(9), 5, MS, 64));
    sim.run_for(Duration::from_secs(1), |_| false);
    let stats = sim.link_stats(addr(1), addr(9));
    assert_eq!(stats.unroutable.datagrams, 5);
    assert_eq!(stats.delivered.datagrams, 0);
}

#[test]
fn boxed_dyn_nodes_work() {
    let mut sim: Sim<Box<dyn engine_sim::Node>> = Sim::new(13);
    let start = sim.now();
    sim.add_node(addr(1), Box::new(Peer::sender(start, addr(2), 100, MS, 64)));
    sim.add_node(addr(2), Box::new(Peer::sink()));
    assert_eq!(
        sim.run_for(Duration::from_secs(1), |_| false),
        RunOutcome::Idle
    );
    assert_eq!(sim.link_stats(addr(1), addr(2)).delivered.datagrams, 100);
}

#[test]
fn a_million_datagrams_run_fast() {
    let n = 1_000_000;
    let config = LinkConfig::new()
        .rate_bps(100_000_000)
        .delay(10 * MS)
        .jitter(MS)
        .loss(0.01);
    let wall = Instant::now();
    let (sim, _, rx) = one_way(14, config, n, Duration::from_micros(100), 1200);
    let elapsed = wall.elapsed();
    eprintln!(
        "1M datagrams: {:?} wall for {:?} virtual ({} steps)",
        elapsed,
        sim.elapsed(),
        sim.stats().steps
    );
    let stats = sim.link_stats(addr(1), addr(2));
    assert_eq!(stats.offered.datagrams, n);
    assert_eq!(
        sim.node(rx).arrivals.len() as u64,
        n - stats.lost.datagrams - stats.queue_dropped.datagrams
    );
}
