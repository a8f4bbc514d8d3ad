//! Acceptance: goodput of one bulk stream against the link's ceiling, in virtual time.
//!
//! C = link rate x (1 - loss) x (stream payload of a full-size packet / (its size + 28)).
//! The simulated link charges every datagram its size plus 28 bytes of IP/UDP header.

mod harness;

use std::time::Duration;

use engine_proto::SessionConfig;
use engine_sim::{IP_UDP_OVERHEAD, LinkConfig};
use harness::Pair;

/// Virtual seconds of bulk transfer measured, handshake and start-up included.
const SECONDS: u64 = 30;

struct Measured {
    ceiling_bps: f64,
    goodput_bps: f64,
}

fn bulk(rate_bps: u64, rtt: Duration, loss: f64) -> Measured {
    let config = SessionConfig::default();
    // A full-size packet's STREAM frame: type, stream id and a 4-byte offset varint, no length.
    let payload = config.max_payload() - 1 - 1 - 4;
    let wire = config.mtu + IP_UDP_OVERHEAD;
    let ceiling_bps = rate_bps as f64 * (1.0 - loss) * payload as f64 / wire as f64;
    let link = LinkConfig::new()
        .rate_bps(rate_bps)
        .delay(rtt / 2)
        .loss(loss);
    // The ACK path is the same link (loss included).
    let mut pair = Pair::new(1, config, link.clone(), link);
    let c = pair.client;
    pair.sim.node_mut(c).plan.push((0, u64::MAX / 4));
    let s = pair.server;
    pair.run(Duration::from_secs(SECONDS), |_, _| false);
    let server = pair.sim.node(s);
    assert!(server.errors.is_empty(), "{:?}", server.errors);
    let received: u64 = server.incoming.values().map(|s| s.received).sum();
    let goodput_bps = received as f64 * 8.0 / SECONDS as f64;
    let m = Measured {
        ceiling_bps,
        goodput_bps,
    };
    let fwd = pair.sim.link_stats(
        harness::addr(harness::CLIENT),
        harness::addr(harness::SERVER),
    );
    println!("  link: {fwd:?}");
    let session = pair
        .sim
        .node(c)
        .endpoint
        .sessions()
        .next()
        .map(|s| s.stats());
    println!(
        "{} Mbit/s, RTT {:?}, loss {:.0}%: C = {:.2} Mbit/s, goodput = {:.2} Mbit/s, ratio = {:.4}\n  sender: {:?}",
        rate_bps / 1_000_000,
        rtt,
        loss * 100.0,
        m.ceiling_bps / 1e6,
        m.goodput_bps / 1e6,
        m.goodput_bps / m.ceiling_bps,
        session
    );
    m
}

#[test]
fn clean_100mbit_50ms_reaches_097_of_ceiling() {
    let m = bulk(100_000_000, Duration::from_millis(50), 0.0);
    assert!(
        m.goodput_bps >= 0.97 * m.ceiling_bps,
        "goodput {:.0} < 0.97 x {:.0}",
        m.goodput_bps,
        m.ceiling_bps
    );
}

#[test]
fn lossy_100mbit_50ms_5pct_reaches_095_of_ceiling() {
    let m = bulk(100_000_000, Duration::from_millis(50), 0.05);
    assert!(
        m.goodput_bps >= 0.95 * m.ceiling_bps,
        "goodput {:.0} < 0.95 x {:.0}",
        m.goodput_bps,
        m.ceiling_bps
    );
}

#[test]
fn lossy_50mbit_100ms_10pct_reaches_092_of_ceiling() {
    let m = bulk(50_000_000, Duration::from_millis(100), 0.10);
    assert!(
        m.goodput_bps >= 0.92 * m.ceiling_bps,
        "goodput {:.0} < 0.92 x {:.0}",
        m.goodput_bps,
        m.ceiling_bps
    );
}
