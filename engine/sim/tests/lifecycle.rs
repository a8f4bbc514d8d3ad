//! Session lifecycle over the simulated network: key updates under load, keepalive, the peer
//! going away, orderly close, the fixed-rate controller and every profile.

mod harness;

use std::time::Duration;

use engine_proto::arq::RateControlConfig;
use engine_proto::crypto::RekeyLimits;
use engine_proto::{CloseReason, Profile, SessionConfig, SessionEvent};
use engine_sim::{LinkConfig, RunOutcome};
use harness::{CLIENT, Pair, SERVER, addr};

fn lossy() -> LinkConfig {
    LinkConfig::new()
        .rate_bps(50_000_000)
        .delay(Duration::from_millis(20))
        .loss(0.03)
        .reorder(0.02)
}

#[test]
fn keys_update_many_times_without_interrupting_streams() {
    let config = SessionConfig {
        rekey: RekeyLimits {
            max_packets: 500,
            max_age: Duration::from_secs(3600),
        },
        ..SessionConfig::default()
    };
    let mut pair = Pair::new(7, config, lossy(), lossy());
    let (c, s) = (pair.client, pair.server);
    pair.sim.node_mut(c).plan.push((1, 6 << 20));
    pair.sim.node_mut(s).plan.push((2, 6 << 20));
    let outcome = pair.run(Duration::from_secs(60), |c, s| {
        c.all_received(1, 6 << 20) && s.all_received(1, 6 << 20)
    });
    assert_eq!(outcome, RunOutcome::Done);
    for id in [c, s] {
        let node = pair.sim.node(id);
        assert!(node.errors.is_empty(), "{:?}", node.errors);
        let stats = node.endpoint.sessions().next().unwrap().stats();
        assert!(
            stats.key_updates >= 8,
            "only {} key updates",
            stats.key_updates
        );
        assert_eq!(
            stats.dropped_auth, 0,
            "a key update made packets undecryptable"
        );
    }
}

#[test]
fn keepalive_holds_an_idle_session_and_silence_is_reported_as_the_peer_gone() {
    let config = SessionConfig {
        keepalive: Duration::from_secs(1),
        idle_timeout: Duration::from_secs(4),
        ..SessionConfig::default()
    };
    let link = LinkConfig::new().delay(Duration::from_millis(10));
    let mut pair = Pair::new(3, config, link.clone(), link);
    let (c, s) = (pair.client, pair.server);
    pair.run(Duration::from_secs(30), |_, _| false);
    for id in [c, s] {
        let node = pair.sim.node(id);
        assert!(node.connected_at.is_some());
        assert!(
            node.closed.is_empty(),
            "closed while idle: {:?}",
            node.closed
        );
        assert!(
            node.endpoint
                .sessions()
                .next()
                .unwrap()
                .stats()
                .packets_sent
                >= 25,
            "keepalives were sent"
        );
    }
    // The network goes dark: both sides notice within the idle timeout.
    let dark = LinkConfig::new().loss(1.0);
    pair.sim.set_link(addr(CLIENT), addr(SERVER), dark.clone());
    pair.sim.set_link(addr(SERVER), addr(CLIENT), dark);
    let start = pair.sim.elapsed();
    pair.run(Duration::from_secs(10), |c, s| {
        !c.closed.is_empty() && !s.closed.is_empty()
    });
    assert!(pair.sim.elapsed() - start <= Duration::from_secs(4) + Duration::from_millis(50));
    for id in [c, s] {
        let node = pair.sim.node(id);
        assert_eq!(
            node.closed,
            vec![SessionEvent::Closed(CloseReason::IdleTimeout)]
        );
        assert_eq!(
            node.endpoint.sessions().count(),
            0,
            "the dead session was dropped"
        );
    }
}

#[test]
fn close_is_orderly_and_reaches_the_peer() {
    let link = LinkConfig::new().delay(Duration::from_millis(10)).loss(0.1);
    let mut pair = Pair::new(5, SessionConfig::default(), link.clone(), link);
    let (c, s) = (pair.client, pair.server);
    pair.run(Duration::from_secs(5), |c, s| {
        c.connected_at.is_some() && s.connected_at.is_some()
    });
    let now = pair.sim.now();
    let client = pair.sim.node_mut(c);
    let id = client.session.unwrap();
    client
        .endpoint
        .session_mut(id)
        .unwrap()
        .close(now, 42, b"bye");
    pair.run(Duration::from_secs(5), |_, s| !s.closed.is_empty());
    let server = pair.sim.node(s);
    assert_eq!(
        server.closed,
        vec![SessionEvent::Closed(CloseReason::Peer {
            code: 42,
            reason: b"bye".to_vec()
        })]
    );
    pair.run(Duration::from_secs(5), |_, _| false);
    assert_eq!(pair.sim.node(c).endpoint.sessions().count(), 0);
    assert_eq!(pair.sim.node(s).endpoint.sessions().count(), 0);
}

#[test]
fn fixed_rate_paces_at_the_stated_rate() {
    let mut config = SessionConfig::default();
    let stated = 40_000_000 / 8; // 40 Mbit/s of datagrams on a 100 Mbit/s link
    config.rate = RateControlConfig::Fixed {
        bytes_per_sec: stated,
    };
    let link = LinkConfig::new()
        .rate_bps(100_000_000)
        .delay(Duration::from_millis(25))
        .loss(0.02);
    let mut pair = Pair::new(9, config.clone(), link.clone(), link);
    let (c, s) = (pair.client, pair.server);
    pair.sim.node_mut(c).plan.push((0, u64::MAX / 4));
    pair.run(Duration::from_secs(10), |_, _| false);
    let sent = pair
        .sim
        .node(c)
        .endpoint
        .sessions()
        .next()
        .unwrap()
        .stats()
        .bytes_sent as f64;
    let rate = sent / 10.0;
    // The sender never exceeds the stated rate and, with nothing else limiting it, uses it.
    assert!(
        rate <= stated as f64 * 1.01,
        "sent {rate:.0} B/s > {stated}"
    );
    assert!(
        rate >= stated as f64 * 0.95,
        "sent only {rate:.0} B/s of {stated}"
    );
    let received: u64 = pair.sim.node(s).incoming.values().map(|s| s.received).sum();
    let ceiling = stated as f64 * 0.98 * (config.max_payload() - 6) as f64 / config.mtu as f64;
    assert!(
        received as f64 / 10.0 >= 0.9 * ceiling,
        "goodput {} of {ceiling:.0}",
        received as f64 / 10.0
    );
}

#[test]
fn every_profile_delivers_exactly_over_a_lossy_link() {
    for profile in Profile::ALL {
        let mut pair = Pair::new(11, SessionConfig::for_profile(profile), lossy(), lossy());
        let (c, s) = (pair.client, pair.server);
        for i in 0..3 {
            pair.sim.node_mut(c).plan.push((i, 1 << 20));
        }
        let outcome = pair.run(Duration::from_secs(60), |_, s| s.all_received(3, 1 << 20));
        assert_eq!(outcome, RunOutcome::Done, "{profile:?}");
        assert!(
            pair.sim.node(s).errors.is_empty(),
            "{profile:?}: {:?}",
            pair.sim.node(s).errors
        );
    }
}
