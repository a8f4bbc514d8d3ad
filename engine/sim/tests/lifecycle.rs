//! Session lifecycle over the simulated network: key updates under load, keepalive, the peer
//! going away, orderly close, the fixed-rate controller and every profile, a restarted peer
//! (stateless reset) and dead paths.

mod harness;

use std::time::Duration;

use engine_proto::arq::RateControlConfig;
use engine_proto::crypto::RekeyLimits;
use engine_proto::{CloseReason, EndpointConfig, Profile, SessionConfig, SessionEvent};
use engine_sim::{LinkConfig, RunOutcome};
use harness::{CLIENT, Pair, Peer, SERVER, addr};

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

#[test]
fn a_restarted_server_resets_the_client_within_a_round_trip_and_a_redial_succeeds() {
    let link = LinkConfig::new().delay(Duration::from_millis(30));
    let rtt = Duration::from_millis(60);
    let config = SessionConfig::default();
    let mut pair = Pair::new(13, config.clone(), link.clone(), link);
    let (c, s) = (pair.client, pair.server);
    pair.sim.node_mut(c).plan.push((1, 1 << 20));
    pair.run(Duration::from_secs(10), |_, s| s.all_received(1, 1 << 20));
    let old = pair.sim.node(c).session.expect("connected");
    // The server process is replaced: same key, new seed, no sessions.
    let mut server_config = EndpointConfig::new(harness::psk());
    server_config.session = config;
    *pair.sim.node_mut(s) = Peer::new(server_config, 1234);
    // The client has something to send; its first packet is answered with a reset.
    pair.sim.node_mut(c).plan.push((2, 1 << 20));
    let restarted = pair.sim.now();
    let outcome = pair.run(Duration::from_secs(10), |c, _| !c.closed.is_empty());
    assert_eq!(outcome, RunOutcome::Done);
    let client = pair.sim.node(c);
    assert_eq!(
        client.closed,
        vec![SessionEvent::Closed(CloseReason::PeerReset)]
    );
    assert!(
        pair.sim.now() - restarted <= rtt + Duration::from_millis(10),
        "reset after {:?}",
        pair.sim.now() - restarted
    );
    assert_eq!(client.endpoint.sessions().count(), 0);
    assert_eq!(client.endpoint.stats().resets_received, 1);
    // The rest of the client's burst in flight got no more resets.
    assert_eq!(pair.sim.node(s).endpoint.stats().resets_sent, 1);
    // Dial again: the new session carries data to the new server.
    let now = pair.sim.now();
    let client = pair.sim.node_mut(c);
    client.dial = Some((addr(SERVER), now));
    // Streams of the old session are gone with it.
    client.outgoing.clear();
    client.incoming.clear();
    client.plan.push((3, 1 << 20));
    let outcome = pair.run(Duration::from_secs(10), |c, s| {
        c.session.is_some_and(|id| id != old) && s.all_received(1, 1 << 20)
    });
    assert_eq!(outcome, RunOutcome::Done);
    assert!(pair.sim.node(s).errors.is_empty());
}

#[test]
fn a_path_that_goes_dark_is_declared_dead_long_before_the_idle_timeout() {
    let link = LinkConfig::new()
        .rate_bps(20_000_000)
        .delay(Duration::from_millis(50));
    let config = SessionConfig::default();
    let path_timeout = config.path_timeout;
    let mut pair = Pair::new(17, config, link.clone(), link);
    let (c, s) = (pair.client, pair.server);
    pair.sim.node_mut(c).plan.push((1, u64::MAX / 4));
    pair.run(Duration::from_secs(3), |_, _| false);
    assert!(pair.sim.node(s).incoming.values().any(|i| i.received > 0));
    let dark = LinkConfig::new().loss(1.0);
    pair.sim.set_path(addr(CLIENT), addr(SERVER), dark);
    let start = pair.sim.now();
    let outcome = pair.run(Duration::from_secs(30), |c, s| {
        !c.closed.is_empty() && !s.closed.is_empty()
    });
    assert_eq!(outcome, RunOutcome::Done);
    let took = pair.sim.now() - start;
    for id in [c, s] {
        assert_eq!(
            pair.sim.node(id).closed,
            vec![SessionEvent::Closed(CloseReason::PathDead)]
        );
        assert_eq!(pair.sim.node(id).endpoint.sessions().count(), 0);
    }
    // The sender notices path_timeout after the last ACK; the idle receiver only once its
    // keepalive went unanswered that long.
    let keepalive = SessionConfig::default().keepalive;
    assert!(
        took <= keepalive + path_timeout + Duration::from_millis(200),
        "{took:?}"
    );
}

/// Data keeps flowing over a lossy, long link for minutes: no false alarm.
#[test]
fn a_lossy_long_path_that_still_delivers_is_never_declared_dead() {
    for (loss, rtt_ms, secs) in [(0.05, 100, 120), (0.2, 300, 120)] {
        let link = LinkConfig::new()
            .rate_bps(10_000_000)
            .delay(Duration::from_millis(rtt_ms / 2))
            .loss(loss);
        let mut pair = Pair::new(19, SessionConfig::default(), link.clone(), link);
        let (c, s) = (pair.client, pair.server);
        pair.sim.node_mut(c).plan.push((1, u64::MAX / 4));
        pair.run(Duration::from_secs(secs), |c, s| {
            !c.closed.is_empty() || !s.closed.is_empty()
        });
        for id in [c, s] {
            assert!(
                pair.sim.node(id).closed.is_empty(),
                "loss {loss}, RTT {rtt_ms} ms: {:?}",
                pair.sim.node(id).closed
            );
        }
        let received: u64 = pair.sim.node(s).incoming.values().map(|i| i.received).sum();
        assert!(received > 1 << 20, "loss {loss}: only {received} bytes");
    }
}

/// An idle session over a lossy, long link keeps itself alive with keepalives alone.
#[test]
fn an_idle_lossy_long_path_is_never_declared_dead() {
    let link = LinkConfig::new()
        .delay(Duration::from_millis(150))
        .loss(0.2);
    let mut pair = Pair::new(23, SessionConfig::default(), link.clone(), link);
    let (c, s) = (pair.client, pair.server);
    pair.run(Duration::from_secs(600), |c, s| {
        !c.closed.is_empty() || !s.closed.is_empty()
    });
    for id in [c, s] {
        assert!(pair.sim.node(id).connected_at.is_some());
        assert!(
            pair.sim.node(id).closed.is_empty(),
            "{:?}",
            pair.sim.node(id).closed
        );
    }
}

#[test]
fn an_idle_session_keeps_its_bandwidth_estimate() {
    // Keepalives are the only traffic of an idle session. Their delivery samples are
    // app-limited and must neither end Startup nor become the bandwidth estimate: first for a
    // session idle from its start, then for one that carried a transfer (100 Mbit/s, 50 ms RTT).
    let link = LinkConfig::new()
        .rate_bps(100_000_000)
        .delay(Duration::from_millis(25));
    let mut pair = Pair::new(5, SessionConfig::default(), link.clone(), link);
    let (c, s) = (pair.client, pair.server);
    let pacing = |pair: &Pair| {
        let node = pair.sim.node(c);
        node.endpoint.sessions().next().unwrap().stats().pacing_rate
    };
    pair.run(Duration::from_secs(60), |_, _| false);
    // The initial rate: 32 packets per 50 ms at Startup's gain, about 2.6 MB/s.
    let fresh = pacing(&pair);
    assert!(
        fresh >= 1_000_000,
        "paced {fresh} bytes/s after a minute idle from the start"
    );
    pair.sim.node_mut(c).plan.push((1, 8 << 20));
    let outcome = pair.run(Duration::from_secs(30), |_, s| s.all_received(1, 8 << 20));
    assert_eq!(outcome, RunOutcome::Done);
    let after_transfer = pacing(&pair);
    assert!(
        after_transfer > 5_000_000,
        "{after_transfer} bytes/s after the transfer"
    );
    pair.run(Duration::from_secs(60), |_, _| false);
    let after_idle = pacing(&pair);
    assert!(
        pair.sim.node(s).closed.is_empty(),
        "the idle session stays up"
    );
    assert!(
        after_idle >= after_transfer / 2,
        "paced {after_idle} bytes/s after a minute idle, {after_transfer} before"
    );
}
