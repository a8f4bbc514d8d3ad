//! Acceptance: a wrong key yields no session and a counted failure; replayed, truncated or
//! bit-flipped packets are dropped and counted without changing any state; garbage never panics.

mod common;

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use common::{A, B, Net, addr, config};
use engine_proto::wire::{Header, PacketType};
use engine_proto::{CloseReason, SessionEvent, SessionStats};
use proptest::prelude::*;

fn established() -> Net {
    let mut net = Net::new(config([1; 32], false), config([1; 32], true));
    net.a.connect(net.now, addr(B));
    assert!(net.run(Duration::from_secs(2), |n| n.connected()));
    net
}

/// Session stats with the drop counters zeroed, to compare "everything else".
fn state_of(net: &Net) -> (SessionStats, engine_proto::EndpointStats) {
    let s = net.b.sessions().next().expect("a session").stats();
    let mut s2 = s.clone();
    s2.dropped_auth = 0;
    s2.dropped_replayed = 0;
    s2.dropped_malformed = 0;
    let mut e = net.b.stats();
    e.datagrams_received = 0;
    e.unknown_session = 0;
    e.malformed = 0;
    e.handshake_failures = 0;
    // A damaged session id names an unknown session, which is answered with a stateless reset.
    e.resets_sent = 0;
    e.resets_rate_limited = 0;
    (s2, e)
}

#[test]
fn wrong_key_yields_no_session_and_a_counted_failure() {
    let mut net = Net::new(config([1; 32], false), config([2; 32], true));
    let id = net.a.connect(net.now, addr(B));
    net.run(Duration::from_secs(15), |n| !n.events_a.is_empty());
    assert_eq!(net.b.sessions().count(), 0);
    assert!(net.b.stats().handshake_failures >= 1, "{:?}", net.b.stats());
    assert_eq!(net.a.sessions().count(), 0);
    assert_eq!(net.events_a[0].session, id);
    assert_eq!(
        net.events_a[0].kind,
        SessionEvent::Closed(CloseReason::HandshakeTimeout)
    );
}

/// Captures the next data packet the dialler sends, without delivering it.
fn capture_next_data_packet(net: &mut Net) -> Vec<u8> {
    let captured: Rc<RefCell<Option<Vec<u8>>>> = Rc::default();
    let c = captured.clone();
    net.filter = Box::new(move |d| {
        let is_data = d.to == addr(B)
            && matches!(Header::parse(&d.data), Ok((h, _)) if h.ty == PacketType::Data);
        if is_data && c.borrow().is_none() {
            *c.borrow_mut() = Some(d.data.clone());
            return false;
        }
        true
    });
    let session = net.a.sessions().next().unwrap().local_id();
    let s = net.a.session_mut(session).unwrap();
    let stream = s.open_stream(9).unwrap();
    s.write(stream, b"hello").unwrap();
    net.run(Duration::from_secs(1), |_| captured.borrow().is_some());
    net.filter = Box::new(|_| true);
    captured
        .borrow_mut()
        .take()
        .expect("a data packet was sent")
}

#[test]
fn replayed_packet_is_dropped_and_counted_without_changing_state() {
    let mut net = established();
    let packet = capture_next_data_packet(&mut net);
    let mut first = packet.clone();
    net.inject(true, addr(A), &mut first);
    let before = state_of(&net);
    let drops = net.b.sessions().next().unwrap().stats().dropped_replayed;
    let mut again = packet.clone();
    net.inject(true, addr(A), &mut again);
    assert_eq!(
        net.b.sessions().next().unwrap().stats().dropped_replayed,
        drops + 1
    );
    assert_eq!(state_of(&net), before);
}

#[test]
fn truncated_and_bit_flipped_packets_are_dropped_without_changing_state() {
    let mut net = established();
    let packet = capture_next_data_packet(&mut net);
    let before = state_of(&net);
    let drops = |n: &Net| {
        let s = n.b.sessions().next().unwrap().stats();
        let e = n.b.stats();
        s.dropped_auth
            + s.dropped_malformed
            + s.dropped_replayed
            + e.unknown_session
            + e.malformed
            + e.handshake_failures
    };
    let mut expected = drops(&net);
    for len in 0..packet.len() {
        let mut t = packet[..len].to_vec();
        net.inject(true, addr(A), &mut t);
        expected += 1;
        assert_eq!(drops(&net), expected, "truncated to {len}");
        assert_eq!(state_of(&net), before, "truncated to {len}");
    }
    for bit in 0..packet.len() * 8 {
        let mut f = packet.clone();
        f[bit / 8] ^= 1 << (bit % 8);
        net.inject(true, addr(A), &mut f);
        expected += 1;
        assert_eq!(drops(&net), expected, "bit {bit} flipped");
        assert_eq!(state_of(&net), before, "bit {bit} flipped");
    }
    // None of that burnt the packet number: the genuine packet is still accepted.
    let mut genuine = packet.clone();
    net.inject(true, addr(A), &mut genuine);
    assert_ne!(state_of(&net), before);
    assert_eq!(
        net.b.sessions().next().unwrap().stats().packets_received,
        before.0.packets_received + 1
    );
}

proptest! {
    #[test]
    fn random_garbage_never_panics(datagrams in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..1500), 1..20)) {
        let mut net = established();
        let sid = net.b.sessions().next().unwrap().local_id().0.to_be_bytes();
        for (i, mut d) in datagrams.into_iter().enumerate() {
            // Half of them aimed at the live session so they reach the decryption path.
            if i % 2 == 0 && d.len() >= 9 {
                d[0] = (1 << 5) | 3;
                d[1..5].copy_from_slice(&sid);
            }
            net.inject(true, addr(A), &mut d);
        }
        prop_assert_eq!(net.b.sessions().count(), 1);
    }
}
