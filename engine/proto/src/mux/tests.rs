//! End-to-end tests of [`Streams`]: two instances exchanging packets through a lossy,
//! reordering in-memory loop, plus targeted protocol and fairness checks.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::{RngCore, SeedableRng};

use super::*;
use crate::wire::{Frame, FrameIter, Side, StreamId, WindowTarget, Writer};

const PACKET: usize = 1200;
/// Packets written in a round arrive in the same round, but replies can only leave in the next
/// one, so a request-response cycle takes two rounds: a round is half an RTT.
const RTT: Duration = Duration::from_millis(20);

fn small_config() -> MuxConfig {
    MuxConfig {
        stream_receive_window: INITIAL_STREAM_WINDOW,
        session_receive_window: INITIAL_SESSION_WINDOW,
        max_stream_receive_window: 4 * INITIAL_STREAM_WINDOW,
        max_session_receive_window: 4 * INITIAL_SESSION_WINDOW,
        send_buffer: 100_000,
        max_incoming_streams: 64,
    }
}

#[derive(Debug, Default)]
struct AppStream {
    to_send: Vec<u8>,
    written: usize,
    finished: bool,
    blocked: bool,
    received: Vec<u8>,
    fin: bool,
    reset: Option<u64>,
    closed: bool,
    /// Reset this stream locally once this many bytes were written.
    reset_after: Option<usize>,
    /// Neither write nor finish yet.
    hold: bool,
}

#[derive(Debug)]
struct Peer {
    s: Streams,
    apps: BTreeMap<StreamId, AppStream>,
    /// What the acceptor sends back on a stream opened with a given map id.
    responses: BTreeMap<u32, Vec<u8>>,
    opened: Vec<(StreamId, u32)>,
    windows_received: usize,
    /// Per stream, the last WINDOW limit received; and the largest raise seen.
    stream_limits: BTreeMap<StreamId, u64>,
    largest_raise: u64,
    closed: BTreeSet<StreamId>,
}

impl Peer {
    fn new(side: Side, config: MuxConfig) -> Self {
        Self {
            s: Streams::new(side, config),
            apps: BTreeMap::new(),
            responses: BTreeMap::new(),
            opened: Vec::new(),
            windows_received: 0,
            stream_limits: BTreeMap::new(),
            largest_raise: 0,
            closed: BTreeSet::new(),
        }
    }

    fn open(&mut self, map_id: u32, data: Vec<u8>) -> StreamId {
        let id = self.s.open(map_id).unwrap();
        self.apps.insert(
            id,
            AppStream {
                to_send: data,
                ..Default::default()
            },
        );
        id
    }

    /// Writes as much as the streams accept; finishes those fully written.
    fn pump_writes(&mut self) {
        for (&id, app) in &mut self.apps {
            if app.hold || app.finished || app.blocked || app.reset.is_some() || app.closed {
                continue;
            }
            let end = app
                .reset_after
                .unwrap_or(app.to_send.len())
                .min(app.to_send.len());
            while app.written < end {
                let n = self.s.write(id, &app.to_send[app.written..end]).unwrap();
                app.written += n;
                if n == 0 {
                    app.blocked = true;
                    break;
                }
            }
            if app.reset_after.is_some() && app.written == end {
                self.s.reset(id, 42).unwrap();
                app.finished = true;
            } else if app.written == app.to_send.len() {
                self.s.finish(id).unwrap();
                app.finished = true;
            }
        }
    }

    fn read_stream(&mut self, id: StreamId) {
        let app = self.apps.entry(id).or_default();
        let mut buf = [0u8; 3000];
        loop {
            match self.s.read(id, &mut buf) {
                Ok(out) => {
                    assert!(!app.fin, "data after fin on {id:?}");
                    app.received.extend_from_slice(&buf[..out.len]);
                    if out.fin {
                        app.fin = true;
                        return;
                    }
                }
                Err(StreamError::WouldBlock) => return,
                Err(e) => panic!("read {id:?}: {e}"),
            }
        }
    }

    fn handle_events(&mut self) {
        while let Some(ev) = self.s.poll_event() {
            match ev {
                StreamEvent::Opened { id, map_id } => {
                    assert!(!self.apps.contains_key(&id), "opened twice: {id:?}");
                    self.opened.push((id, map_id));
                    let data = self.responses.get(&map_id).cloned().unwrap_or_default();
                    self.apps.insert(
                        id,
                        AppStream {
                            to_send: data,
                            ..Default::default()
                        },
                    );
                }
                StreamEvent::Readable { id } => {
                    assert!(self.apps.contains_key(&id), "readable before opened");
                    self.read_stream(id);
                }
                StreamEvent::Writable { id } => {
                    if let Some(app) = self.apps.get_mut(&id) {
                        app.blocked = false;
                    }
                }
                StreamEvent::Finished { id } => {
                    assert!(self.apps[&id].fin, "Finished before the end was read");
                }
                StreamEvent::Reset { id, error_code } => {
                    self.apps.get_mut(&id).unwrap().reset = Some(error_code);
                }
                StreamEvent::Closed { id } => {
                    assert!(self.closed.insert(id), "closed twice");
                    self.apps.get_mut(&id).unwrap().closed = true;
                }
            }
        }
    }
}

#[derive(Debug)]
struct Packet {
    from_client: bool,
    bytes: Vec<u8>,
    frames: Vec<SentFrame>,
}

/// Two peers and the network between them. Each round, each side sends up to `burst` packets;
/// packets are shuffled, then each is lost, delivered, or delivered but (spuriously) declared
/// lost. Acknowledgements and loss declarations take effect a round later, like an RTT.
struct Net {
    client: Peer,
    server: Peer,
    rng: ChaCha8Rng,
    now: Instant,
    loss: u32,
    spurious: u32,
    burst: usize,
    /// Drops every packet for which this returns true (on top of random loss).
    drop_if: Box<dyn Fn(&Packet) -> bool>,
    /// (from_client, frames, acked) to report next round.
    pending: Vec<(bool, Vec<SentFrame>, bool)>,
    rounds: usize,
}

impl Net {
    fn new(seed: u64, client: MuxConfig, server: MuxConfig) -> Self {
        Self {
            client: Peer::new(Side::Client, client),
            server: Peer::new(Side::Server, server),
            rng: ChaCha8Rng::seed_from_u64(seed),
            now: Instant::now(),
            loss: 0,
            spurious: 0,
            burst: 16,
            drop_if: Box::new(|_| false),
            pending: Vec::new(),
            rounds: 0,
        }
    }

    fn percent(&mut self, p: u32) -> bool {
        (self.rng.next_u32() % 100) < p
    }

    fn round(&mut self) {
        self.rounds += 1;
        self.now += RTT / 2;
        // Last round's verdicts arrive.
        for (from_client, frames, acked) in std::mem::take(&mut self.pending) {
            let sender = if from_client {
                &mut self.client
            } else {
                &mut self.server
            };
            for f in &frames {
                if acked {
                    sender.s.on_frame_acked(f);
                } else {
                    sender.s.on_frame_lost(f);
                }
            }
        }
        for p in [&mut self.client, &mut self.server] {
            p.handle_events();
            p.pump_writes();
        }
        let mut packets = Vec::new();
        for from_client in [true, false] {
            let p = if from_client {
                &mut self.client
            } else {
                &mut self.server
            };
            for _ in 0..self.burst {
                if !p.s.wants_to_send() {
                    break;
                }
                let mut bytes = vec![0u8; PACKET];
                let mut frames = Vec::new();
                let mut w = Writer::new(&mut bytes);
                p.s.write_frames(self.now, RTT, &mut w, &mut frames);
                let len = w.len();
                if len == 0 {
                    break;
                }
                bytes.truncate(len);
                packets.push(Packet {
                    from_client,
                    bytes,
                    frames,
                });
            }
        }
        // Reorder.
        for i in (1..packets.len()).rev() {
            let j = (self.rng.next_u64() % (i as u64 + 1)) as usize;
            packets.swap(i, j);
        }
        for packet in packets {
            let (loss, spurious) = (self.loss, self.spurious);
            if (self.drop_if)(&packet) || self.percent(loss) {
                self.pending
                    .push((packet.from_client, packet.frames, false));
                continue;
            }
            let receiver = if packet.from_client {
                &mut self.server
            } else {
                &mut self.client
            };
            for frame in FrameIter::new(&packet.bytes) {
                let frame = frame.expect("we wrote a malformed frame");
                if let Frame::Window { target, max } = frame {
                    receiver.windows_received += 1;
                    if let WindowTarget::Stream(id) = target {
                        let last = receiver.stream_limits.entry(id).or_insert(0);
                        receiver.largest_raise =
                            receiver.largest_raise.max(max.saturating_sub(*last));
                        *last = (*last).max(max);
                    }
                }
                receiver
                    .s
                    .handle_frame(&frame)
                    .unwrap_or_else(|e| panic!("{e} handling {frame:?}"));
            }
            let acked = !self.percent(spurious);
            if !acked {
                // Declared lost although it arrived; the ack comes later still.
                let frames = packet.frames.clone();
                self.pending.push((packet.from_client, frames, false));
            }
            self.pending.push((packet.from_client, packet.frames, true));
        }
        for p in [&mut self.client, &mut self.server] {
            p.handle_events();
        }
    }

    fn quiet(&self) -> bool {
        self.pending.is_empty() && !self.client.s.wants_to_send() && !self.server.s.wants_to_send()
    }

    fn run_until_quiet(&mut self, max_rounds: usize) {
        for _ in 0..max_rounds {
            self.round();
            if self.quiet() && self.client.s.open_count() == 0 && self.server.s.open_count() == 0 {
                // One more round so final events are handled.
                self.round();
                return;
            }
        }
        panic!(
            "not done after {max_rounds} rounds: client {} streams, server {} streams",
            self.client.s.open_count(),
            self.server.s.open_count()
        );
    }
}

fn random_bytes(rng: &mut ChaCha8Rng, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    rng.fill_bytes(&mut v);
    v
}

/// Opens `n` streams from each side with random request and response sizes.
fn exchange(net: &mut Net, n: u32, max_len: usize) -> Vec<(bool, StreamId, Vec<u8>, Vec<u8>)> {
    let mut expected = Vec::new();
    for map_id in 0..n {
        for from_client in [true, false] {
            let req_len = (net.rng.next_u32() as usize) % max_len;
            let resp_len = (net.rng.next_u32() as usize) % max_len;
            let req = random_bytes(&mut net.rng, req_len);
            let resp = random_bytes(&mut net.rng, resp_len);
            let (opener, acceptor) = if from_client {
                (&mut net.client, &mut net.server)
            } else {
                (&mut net.server, &mut net.client)
            };
            acceptor.responses.insert(map_id, resp.clone());
            let id = opener.open(map_id, req.clone());
            expected.push((from_client, id, req, resp));
        }
    }
    expected
}

fn check_exchange(net: &Net, expected: &[(bool, StreamId, Vec<u8>, Vec<u8>)]) {
    for (from_client, id, req, resp) in expected {
        let (opener, acceptor) = if *from_client {
            (&net.client, &net.server)
        } else {
            (&net.server, &net.client)
        };
        let o = &opener.apps[id];
        let a = &acceptor.apps[id];
        assert!(o.fin && a.fin, "{id:?} not finished both ways");
        assert!(o.received == *resp, "{id:?}: response differs");
        assert!(a.received == *req, "{id:?}: request differs");
        assert!(o.closed && a.closed, "{id:?} not closed");
    }
}

#[test]
fn bidirectional_streams_survive_loss_reordering_and_spurious_loss() {
    for seed in 0..6 {
        let mut net = Net::new(seed, small_config(), small_config());
        net.loss = 10;
        net.spurious = 5;
        let expected = exchange(&mut net, 5, 300_000);
        net.run_until_quiet(5000);
        check_exchange(&net, &expected);
        assert!(net.client.windows_received > 0 && net.server.windows_received > 0);
        assert_eq!(net.server.opened.len(), 5);
        assert_eq!(net.client.opened.len(), 5);
    }
}

#[test]
fn default_config_advertises_and_autotunes_windows() {
    let mut net = Net::new(7, MuxConfig::default(), MuxConfig::default());
    net.loss = 2;
    // Up to 5 MB per round trip each way: more than the initial windows allow.
    net.burst = 4096;
    let expected = exchange(&mut net, 2, 8_000_000);
    net.run_until_quiet(5000);
    check_exchange(&net, &expected);
    // Limits were raised by more than the initial window at once: windows grew.
    let initial = MuxConfig::default().stream_receive_window;
    assert!(
        net.client.largest_raise > initial && net.server.largest_raise > initial,
        "{} {} rounds {}",
        net.client.largest_raise,
        net.server.largest_raise,
        net.rounds
    );
}

#[test]
fn empty_streams_open_and_close() {
    let mut net = Net::new(1, small_config(), small_config());
    let id = net.client.open(9, Vec::new());
    net.run_until_quiet(100);
    assert_eq!(net.server.opened, vec![(id, 9)]);
    assert!(net.server.apps[&id].fin && net.client.apps[&id].fin);
    assert!(net.server.closed.contains(&id) && net.client.closed.contains(&id));
}

#[test]
fn reset_in_the_middle_aborts_both_ways_and_keeps_credit() {
    for seed in 0..4 {
        let mut net = Net::new(seed, small_config(), small_config());
        net.loss = 10;
        net.server.responses.insert(1, vec![5; 500_000]);
        let id = net.client.open(1, vec![3; 1_000_000]);
        net.client.apps.get_mut(&id).unwrap().reset_after = Some(150_000);
        for _ in 0..200 {
            net.round();
        }
        let c = &net.client.apps[&id];
        let s = &net.server.apps[&id];
        assert!(c.closed && s.closed, "reset stream not closed");
        assert_eq!(s.reset, Some(42));
        assert!(s.received.len() <= 150_000 && s.received.iter().all(|&b| b == 3));
        assert!(!s.fin && !c.fin);
        // The session window still works for new streams in both directions.
        let expected = exchange(&mut net, 3, 400_000);
        net.run_until_quiet(5000);
        check_exchange(&net, &expected);
    }
}

#[test]
fn refused_streams_are_reset_and_credit_is_not_leaked() {
    let mut server_config = small_config();
    server_config.max_incoming_streams = 2;
    let mut net = Net::new(3, small_config(), server_config);
    net.loss = 5;
    for map_id in 0..6 {
        net.server
            .responses
            .insert(map_id, vec![map_id as u8; 1000]);
    }
    let ids: Vec<_> = (0..6)
        .map(|m| net.client.open(m, vec![m as u8; 100_000]))
        .collect();
    net.run_until_quiet(2000);
    let refused: Vec<_> = ids
        .iter()
        .filter(|id| net.client.apps[id].reset == Some(REFUSED))
        .collect();
    assert!(!refused.is_empty());
    for id in &ids {
        let c = &net.client.apps[id];
        assert!(c.closed);
        if c.reset.is_none() {
            assert_eq!(net.server.apps[id].received.len(), 100_000);
            assert_eq!(c.received.len(), 1000);
        } else {
            assert!(!net.server.apps.contains_key(id));
        }
    }
    // Far more than the session window still flows afterwards.
    for map_id in 10..14 {
        net.server.responses.insert(map_id, Vec::new());
    }
    let late: Vec<_> = (10..12)
        .map(|m| net.client.open(m, vec![1; 600_000]))
        .collect();
    net.run_until_quiet(5000);
    for id in late {
        assert_eq!(net.server.apps[&id].received.len(), 600_000);
    }
}

#[test]
fn a_lossy_stream_does_not_block_another() {
    let mut net = Net::new(11, small_config(), small_config());
    let a_data = random_bytes(&mut ChaCha8Rng::seed_from_u64(1), 200_000);
    let b_data = random_bytes(&mut ChaCha8Rng::seed_from_u64(2), 500_000);
    let a = net.client.open(1, Vec::new());
    let b = net.client.open(2, Vec::new());
    // Let the OPENs through first, so that they do not share A's doomed packets.
    for id in [a, b] {
        net.client.apps.get_mut(&id).unwrap().hold = true;
    }
    net.round();
    for (id, data) in [(a, a_data), (b, b_data.clone())] {
        let app = net.client.apps.get_mut(&id).unwrap();
        app.to_send = data;
        app.hold = false;
    }
    // Every packet carrying the start of stream A is lost.
    net.drop_if = Box::new(move |p: &Packet| {
        p.from_client
            && p.frames.iter().any(
                |f| matches!(*f, SentFrame::Stream { id, offset: 0, len, .. } if id == a && len > 0),
            )
    });
    for _ in 0..300 {
        net.round();
    }
    assert_eq!(net.server.apps[&b].received, b_data);
    assert!(net.server.apps[&b].fin);
    // A's later data arrived but is not readable.
    assert!(net.server.apps[&a].received.is_empty());
    assert_eq!(net.server.s.open_count(), 1);
    net.drop_if = Box::new(|_| false);
    net.run_until_quiet(1000);
    assert_eq!(net.server.apps[&a].received.len(), 200_000);
}

/// Gives a lone `Streams` unlimited credit from its (imaginary) peer.
fn unlimited(s: &mut Streams, ids: &[StreamId]) {
    s.handle_frame(&Frame::Window {
        target: WindowTarget::Session,
        max: 1 << 50,
    })
    .unwrap();
    for &id in ids {
        s.handle_frame(&Frame::Window {
            target: WindowTarget::Stream(id),
            max: 1 << 50,
        })
        .unwrap();
    }
}

fn frames_per_stream(s: &mut Streams, packets: usize) -> BTreeMap<StreamId, (usize, u64)> {
    let t0 = Instant::now();
    let mut counts = BTreeMap::new();
    let mut buf = [0u8; PACKET];
    let mut sent = Vec::new();
    for _ in 0..packets {
        sent.clear();
        let mut w = Writer::new(&mut buf);
        s.write_frames(t0, RTT, &mut w, &mut sent);
        for f in &sent {
            if let SentFrame::Stream { id, len, .. } = *f {
                let e = counts.entry(id).or_insert((0, 0));
                e.0 += 1;
                e.1 += u64::from(len);
            }
        }
    }
    counts
}

#[test]
fn busy_streams_share_fairly() {
    let mut s = Streams::new(Side::Client, MuxConfig::default());
    let a = s.open(0).unwrap();
    let b = s.open(1).unwrap();
    unlimited(&mut s, &[a, b]);
    assert_eq!(s.write(a, &vec![1; 3_000_000]).unwrap(), 3_000_000);
    assert_eq!(s.write(b, &vec![2; 3_000_000]).unwrap(), 3_000_000);
    let counts = frames_per_stream(&mut s, 1001);
    let (fa, ba) = counts[&a];
    let (fb, bb) = counts[&b];
    assert!(fa.abs_diff(fb) * 10 <= fa.max(fb), "{fa} vs {fb} frames");
    assert!(ba.abs_diff(bb) * 10 <= ba.max(bb), "{ba} vs {bb} bytes");
    // A small stream opened later is served right away.
    let c = s.open(2).unwrap();
    unlimited(&mut s, &[c]);
    s.write(c, &[3; 100]).unwrap();
    let counts = frames_per_stream(&mut s, 3);
    assert_eq!(counts.get(&c).map(|c| c.1), Some(100));
}

#[test]
fn packets_are_filled_completely() {
    let mut s = Streams::new(Side::Client, MuxConfig::default());
    let a = s.open(0).unwrap();
    unlimited(&mut s, &[a]);
    s.write(a, &[7; 100_000]).unwrap();
    let t0 = Instant::now();
    let mut buf = [0u8; PACKET];
    for _ in 0..20 {
        let mut sent = Vec::new();
        let mut w = Writer::new(&mut buf);
        s.write_frames(t0, RTT, &mut w, &mut sent);
        assert_eq!(w.remaining(), 0);
        let frames: Vec<_> = FrameIter::new(&buf).collect::<Result<_, _>>().unwrap();
        assert_eq!(frames.len(), sent.len());
    }
}

#[test]
fn flow_control_is_never_exceeded_by_the_sender() {
    // Without any WINDOW from the peer, a sender stops at the protocol's initial windows.
    let mut s = Streams::new(Side::Client, MuxConfig::default());
    let ids: Vec<_> = (0..8).map(|m| s.open(m).unwrap()).collect();
    for &id in &ids {
        s.write(id, &[0; 100_000]).unwrap();
    }
    let counts = frames_per_stream(&mut s, 1000);
    let total: u64 = counts.values().map(|c| c.1).sum();
    assert_eq!(total, INITIAL_SESSION_WINDOW);
    assert!(counts.values().all(|c| c.1 <= INITIAL_STREAM_WINDOW));
    assert!(!s.wants_to_send());
}

#[test]
fn protocol_violations_are_errors() {
    let mut s = Streams::new(Side::Server, small_config());
    let peer = StreamId::new(Side::Client, 0);
    let ours = StreamId::new(Side::Server, 0);
    // Frames for a stream of ours that was never opened.
    let e = s
        .handle_frame(&Frame::Window {
            target: WindowTarget::Stream(ours),
            max: 10,
        })
        .unwrap_err();
    assert_eq!(e, MuxError::StreamState(ours));
    assert_eq!(e.code(), MuxError::STREAM_STATE);
    // OPEN for one of our ids.
    s.open(0).unwrap();
    assert!(
        s.handle_frame(&Frame::Open {
            id: ours,
            map_id: 1
        })
        .is_err()
    );
    // Beyond the stream window.
    let big = vec![0u8; 1000];
    let e = s
        .handle_frame(&Frame::Stream {
            id: peer,
            offset: INITIAL_STREAM_WINDOW - 999,
            fin: false,
            data: &big,
        })
        .unwrap_err();
    assert_eq!(e, MuxError::StreamFlowControl(peer));
    assert_eq!(e.code(), MuxError::FLOW_CONTROL);
    // Final size changes.
    s.handle_frame(&Frame::Stream {
        id: peer,
        offset: 0,
        fin: true,
        data: &big,
    })
    .unwrap();
    let e = s
        .handle_frame(&Frame::Reset {
            id: peer,
            error_code: 1,
            final_size: 1001,
        })
        .unwrap_err();
    assert_eq!(e.code(), MuxError::FINAL_SIZE);
    // Beyond the session window, spread over streams that each respect theirs.
    let mut s = Streams::new(Side::Server, small_config());
    let chunk = vec![0u8; 60_000];
    let mut result = Ok(());
    for i in 0..10 {
        result = s.handle_frame(&Frame::Stream {
            id: StreamId::new(Side::Client, i),
            offset: 0,
            fin: false,
            data: &chunk,
        });
        if result.is_err() {
            break;
        }
    }
    assert_eq!(result, Err(MuxError::SessionFlowControl));
}

#[test]
fn opened_comes_before_readable_even_if_open_arrives_late() {
    let mut s = Streams::new(Side::Server, small_config());
    let id = StreamId::new(Side::Client, 0);
    s.handle_frame(&Frame::Stream {
        id,
        offset: 0,
        fin: true,
        data: b"hi",
    })
    .unwrap();
    assert_eq!(s.poll_event(), None);
    assert_eq!(s.read(id, &mut [0; 4]), Err(StreamError::UnknownStream));
    s.handle_frame(&Frame::Open { id, map_id: 5 }).unwrap();
    assert_eq!(s.poll_event(), Some(StreamEvent::Opened { id, map_id: 5 }));
    assert_eq!(s.poll_event(), Some(StreamEvent::Readable { id }));
    let mut buf = [0; 4];
    assert_eq!(
        s.read(id, &mut buf).unwrap(),
        ReadOutcome { len: 2, fin: true }
    );
    assert_eq!(&buf[..2], b"hi");
    assert_eq!(s.poll_event(), Some(StreamEvent::Finished { id }));
    assert_eq!(s.map_id(id), Some(5));
}

#[test]
fn closed_peer_streams_are_remembered_compactly() {
    let mut s = Streams::new(Side::Server, small_config());
    let t0 = Instant::now();
    let mut buf = [0u8; PACKET];
    for i in 0..20_000u64 {
        // Streams arrive slightly out of order.
        let index = i ^ 1;
        let id = StreamId::new(Side::Client, index);
        s.handle_frame(&Frame::Open { id, map_id: 0 }).unwrap();
        s.handle_frame(&Frame::Stream {
            id,
            offset: 0,
            fin: true,
            data: b"x",
        })
        .unwrap();
        s.read(id, &mut [0; 4]).unwrap();
        s.finish(id).unwrap();
        let mut sent = Vec::new();
        let mut w = Writer::new(&mut buf);
        s.write_frames(t0, RTT, &mut w, &mut sent);
        for f in &sent {
            s.on_frame_acked(f);
        }
        assert!(s.map_id(id).is_none(), "stream {index} not dropped");
        assert!(s.peer_record_len() <= 2);
    }
    assert_eq!(s.open_count(), 0);
    // A late retransmission for a dropped stream is ignored: no new stream, no event.
    while s.poll_event().is_some() {}
    let old = StreamId::new(Side::Client, 7);
    s.handle_frame(&Frame::Stream {
        id: old,
        offset: 0,
        fin: true,
        data: b"x",
    })
    .unwrap();
    s.handle_frame(&Frame::Open { id: old, map_id: 0 }).unwrap();
    assert_eq!(s.open_count(), 0);
    assert_eq!(s.poll_event(), None);
    assert_eq!(s.read(old, &mut [0; 4]), Err(StreamError::Closed));
}

#[test]
fn lost_window_is_resent_with_the_current_value() {
    let mut s = Streams::new(Side::Server, small_config());
    let id = StreamId::new(Side::Client, 0);
    s.handle_frame(&Frame::Open { id, map_id: 0 }).unwrap();
    let data = vec![0u8; 40_000];
    s.handle_frame(&Frame::Stream {
        id,
        offset: 0,
        fin: false,
        data: &data,
    })
    .unwrap();
    let mut buf = vec![0u8; 40_000];
    s.read(id, &mut buf).unwrap();
    let t0 = Instant::now();
    let windows = |s: &mut Streams| {
        let mut pkt = [0u8; PACKET];
        let mut sent = Vec::new();
        let mut w = Writer::new(&mut pkt);
        s.write_frames(t0, RTT, &mut w, &mut sent);
        let len = w.len();
        let frames: Vec<_> = FrameIter::new(&pkt[..len])
            .filter_map(|f| match f.unwrap() {
                Frame::Window {
                    target: WindowTarget::Stream(_),
                    max,
                } => Some(max),
                _ => None,
            })
            .collect();
        (frames, sent)
    };
    let (maxes, sent) = windows(&mut s);
    assert_eq!(maxes, vec![40_000 + INITIAL_STREAM_WINDOW]);
    // More is read before the loss is noticed: the re-sent WINDOW carries the newer limit.
    s.handle_frame(&Frame::Stream {
        id,
        offset: 40_000,
        fin: false,
        data: &data,
    })
    .unwrap();
    s.read(id, &mut buf).unwrap();
    for f in &sent {
        s.on_frame_lost(f);
    }
    let (maxes, _) = windows(&mut s);
    assert_eq!(maxes.len(), 1);
    assert!(maxes[0] >= 80_000 + INITIAL_STREAM_WINDOW, "{maxes:?}");
}

#[test]
fn write_blocks_and_writable_follows() {
    let mut config = small_config();
    config.send_buffer = 10_000;
    let mut s = Streams::new(Side::Client, config);
    let id = s.open(0).unwrap();
    assert_eq!(s.write(id, &[1; 15_000]).unwrap(), 10_000);
    assert_eq!(s.write(id, &[1; 10]).unwrap(), 0);
    let t0 = Instant::now();
    let mut pkt = [0u8; PACKET];
    let mut all = Vec::new();
    while s.wants_to_send() {
        let mut w = Writer::new(&mut pkt);
        s.write_frames(t0, RTT, &mut w, &mut all);
    }
    assert_eq!(s.poll_event(), None);
    for f in &all {
        s.on_frame_acked(f);
    }
    assert_eq!(s.poll_event(), Some(StreamEvent::Writable { id }));
    assert_eq!(s.write(id, &[1; 15_000]).unwrap(), 10_000);
    s.finish(id).unwrap();
    assert_eq!(s.write(id, &[1]), Err(StreamError::Finished));
    assert_eq!(s.reset(id, REFUSED), Err(StreamError::InvalidErrorCode));
}

#[derive(Debug, Clone)]
enum Op {
    Frame(u8, u64, u64, u64, bool, usize),
    Open(u32),
    Write(u8, usize),
    Finish(u8),
    Reset(u8),
    Read(u8),
    Send(bool),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (
            0u8..5,
            0u64..12,
            0u64..100_000,
            any::<u64>(),
            any::<bool>(),
            0usize..3000
        )
            .prop_map(|(k, i, o, x, f, l)| Op::Frame(k, i, o, x, f, l)),
        any::<u32>().prop_map(Op::Open),
        (0u8..12, 0usize..200_000).prop_map(|(i, n)| Op::Write(i, n)),
        (0u8..12).prop_map(Op::Finish),
        (0u8..12).prop_map(Op::Reset),
        (0u8..12).prop_map(Op::Read),
        any::<bool>().prop_map(Op::Send),
    ]
}

proptest! {
    /// Whatever frames a peer sends and whatever the application does, nothing panics (errors
    /// are fine), and after an error nothing is fed further, as the session would close.
    #[test]
    fn arbitrary_frames_and_calls_never_panic(ops in prop::collection::vec(op(), 1..200)) {
        let t0 = Instant::now();
        let mut s = Streams::new(Side::Server, small_config());
        let data = vec![9u8; 200_000];
        let mut in_flight: Vec<SentFrame> = Vec::new();
        let id_of = |i: u64| StreamId(i);
        for op in ops {
            match op {
                Op::Frame(kind, i, offset, x, fin, len) => {
                    let id = id_of(i);
                    let frame = match kind {
                        0 => Frame::Stream { id, offset, fin, data: &data[..len] },
                        1 => Frame::Open { id, map_id: x as u32 },
                        2 => Frame::Reset { id, error_code: x % 4, final_size: offset },
                        3 => Frame::Window { target: WindowTarget::Stream(id), max: offset },
                        _ => Frame::Window { target: WindowTarget::Session, max: offset * 8 },
                    };
                    if s.handle_frame(&frame).is_err() {
                        return Ok(());
                    }
                }
                Op::Open(m) => { let _ = s.open(m); }
                Op::Write(i, n) => { let _ = s.write(id_of(u64::from(i)), &data[..n]); }
                Op::Finish(i) => { let _ = s.finish(id_of(u64::from(i))); }
                Op::Reset(i) => { let _ = s.reset(id_of(u64::from(i)), 3); }
                Op::Read(i) => { let _ = s.read(id_of(u64::from(i)), &mut [0u8; 5000]); }
                Op::Send(ack) => {
                    let mut buf = [0u8; PACKET];
                    let mut w = Writer::new(&mut buf);
                    let mut sent = Vec::new();
                    s.write_frames(t0, RTT, &mut w, &mut sent);
                    let len = w.len();
                    prop_assert_eq!(FrameIter::new(&buf[..len]).count(), sent.len());
                    for f in in_flight.drain(..) {
                        if ack { s.on_frame_acked(&f) } else { s.on_frame_lost(&f) }
                    }
                    in_flight = sent;
                }
            }
            while s.poll_event().is_some() {}
        }
    }

    /// Random loss, reordering, stream counts and resets: every stream that is not reset
    /// delivers its data exactly and everything is cleaned up.
    #[test]
    fn random_sessions_deliver_everything(
        seed in any::<u64>(),
        loss in 0u32..30,
        spurious in 0u32..10,
        n in 1u32..6,
        reset_first in any::<bool>(),
    ) {
        let mut net = Net::new(seed, small_config(), small_config());
        net.loss = loss;
        net.spurious = spurious;
        let expected = exchange(&mut net, n, 150_000);
        let reset_id = expected[0].1;
        if reset_first {
            net.client.apps.get_mut(&reset_id).unwrap().reset_after = Some(expected[0].2.len() / 2);
        }
        net.run_until_quiet(20_000);
        let rest: Vec<_> = expected.iter().filter(|e| !reset_first || e.1 != reset_id).cloned().collect();
        check_exchange(&net, &rest);
        if reset_first {
            prop_assert!(net.client.apps[&reset_id].closed);
        }
    }
}
