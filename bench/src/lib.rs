//! Fixtures shared by the criterion benches: two connected [`Endpoint`]s in memory with real
//! cryptography, tuned so that nothing but CPU limits a bulk transfer.
//!
//! The benches measure the protocol core's per-packet cost, not the rate controller, so the
//! sessions run a [`RateControlConfig::Fixed`] rate far above any CPU's reach (pacing and the
//! window never hold a packet back) and receive windows larger than anything in flight during a
//! measurement round. Time is virtual: the pair's clock advances by [`BATCH_INTERVAL`] per GSO
//! batch, i.e. the nominal 1 M packets/s the benches aim for, so timers and RTT samples behave
//! as on a fast link.
//!
//! Datagrams are kept in a [`Datagrams`] arena that `poll_transmit` writes into directly: a
//! dataplane hands its send ring to `poll_transmit` the same way, so no copy is added to the
//! measured path.

pub mod impair;
pub mod linkem;
pub mod lossbench;
pub mod rr;

use std::net::SocketAddr;
use std::ops::Range;
use std::time::{Duration, Instant};

use engine_proto::arq::RateControlConfig;
use engine_proto::crypto::Psk;
use engine_proto::mux::{MuxConfig, StreamError, StreamEvent};
use engine_proto::wire::{SessionId, StreamId};
use engine_proto::{Endpoint, EndpointConfig, Event, SessionConfig, SessionEvent};

/// UDP payload size of every data packet the benches send.
pub const MTU: usize = 1400;
/// Datagrams per `poll_transmit` call (one GSO send), the session default.
pub const BATCH: usize = 16;
/// Virtual time per GSO batch: 16 packets at 1 M packets/s.
pub const BATCH_INTERVAL: Duration = Duration::from_micros(16);
/// A pacing rate (bytes/s) no CPU reaches: 8 Tbit/s.
pub const UNLIMITED_RATE: u64 = 1_000_000_000_000;
/// Stream bytes the sender keeps queued beyond what it has sent, so every packet is full.
const BACKLOG: u64 = 1 << 20;
/// Room for `b`'s replies between two calls of [`Pair::handle_replies`] (in GSO batches).
const REPLY_BATCHES: usize = 40;
/// Batches a measurement round may hold at most; rounds are separated by
/// [`Pair::housekeeping`], which must run before the backlog ([`BACKLOG`], about 47 batches) is
/// used up.
pub const MAX_ROUND: usize = 32;

const ADDR_A: &str = "127.0.0.1:1000";
const ADDR_B: &str = "127.0.0.1:2000";

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("valid socket address")
}

/// A session configuration that lets CPU be the only limit (see the module docs).
pub fn unthrottled_config() -> SessionConfig {
    let mut c = SessionConfig {
        mtu: MTU,
        rate: RateControlConfig::Fixed {
            bytes_per_sec: UNLIMITED_RATE,
        },
        max_segments: BATCH,
        ..SessionConfig::default()
    };
    c.mux = MuxConfig {
        stream_receive_window: 256 << 20,
        session_receive_window: 1 << 30,
        max_stream_receive_window: 1 << 30,
        max_session_receive_window: 4 << 30,
        send_buffer: 64 << 20,
        ..MuxConfig::default()
    };
    c
}

/// Datagrams produced by `poll_transmit`, stored back to back in one arena.
#[derive(Debug)]
pub struct Datagrams {
    arena: Vec<u8>,
    used: usize,
    segments: Vec<Range<usize>>,
    /// Index of the first segment of each `poll_transmit`.
    batches: Vec<usize>,
}

impl Datagrams {
    /// Room for `batches` GSO batches of full-size datagrams.
    pub fn with_batches(batches: usize) -> Self {
        Self {
            arena: vec![0; batches.max(1) * BATCH * MTU],
            used: 0,
            segments: Vec::with_capacity(batches.max(1) * BATCH),
            batches: Vec::with_capacity(batches.max(1)),
        }
    }

    pub fn clear(&mut self) {
        self.used = 0;
        self.segments.clear();
        self.batches.clear();
    }

    /// Number of `poll_transmit` calls stored.
    pub fn batches(&self) -> usize {
        self.batches.len()
    }

    pub fn len(&self) -> usize {
        self.segments.len()
    }

    pub fn is_empty(&self) -> bool {
        self.segments.is_empty()
    }

    /// Sizes of the stored datagrams, in order.
    pub fn sizes(&self) -> impl Iterator<Item = usize> + '_ {
        self.segments.iter().map(|r| r.len())
    }

    /// Lets `ep` write one `poll_transmit` into the free part of the arena. Returns the number of
    /// datagrams it produced (0: nothing to send, or the arena is full).
    fn transmit_from(&mut self, ep: &mut Endpoint, now: Instant) -> usize {
        let free = &mut self.arena[self.used..];
        if free.len() < BATCH * MTU {
            return 0;
        }
        let Some(t) = ep.poll_transmit(now, free) else {
            return 0;
        };
        self.batches.push(self.segments.len());
        let seg = t.segment_size.unwrap_or(t.size);
        let mut start = self.used;
        let end = self.used + t.size;
        while start < end {
            let stop = (start + seg).min(end);
            self.segments.push(start..stop);
            start = stop;
        }
        self.used = end;
        t.segments()
    }

    /// Hands every stored datagram to `ep` (decrypting them in place).
    fn deliver_to(&mut self, ep: &mut Endpoint, now: Instant, from: SocketAddr) {
        for r in &self.segments {
            ep.handle_datagram(now, from, &mut self.arena[r.clone()]);
        }
    }

    /// Hands the datagrams of the `i`-th `poll_transmit` to `ep`.
    fn deliver_batch_to(&mut self, i: usize, ep: &mut Endpoint, now: Instant, from: SocketAddr) {
        let start = self.batches.get(i).copied().unwrap_or(self.segments.len());
        let end = self
            .batches
            .get(i + 1)
            .copied()
            .unwrap_or(self.segments.len());
        for r in &self.segments[start..end] {
            ep.handle_datagram(now, from, &mut self.arena[r.clone()]);
        }
    }
}

/// Two connected endpoints, `a` sending one bulk stream to `b`.
#[derive(Debug)]
pub struct Pair {
    pub now: Instant,
    pub a: Endpoint,
    pub b: Endpoint,
    /// The session's id at `a` and at `b`.
    pub a_id: SessionId,
    pub b_id: SessionId,
    pub stream: StreamId,
    /// What the application hands to `write`: the stream payload of one GSO batch.
    chunk: Vec<u8>,
    read_buf: Vec<u8>,
    written: u64,
    /// Stream bytes `a` had sent when last checked (outside any measurement).
    sent_seen: u64,
    /// Stream bytes `b` has read.
    pub received: u64,
    /// ACKs and WINDOW updates from `b` to `a`.
    replies: Datagrams,
}

impl Pair {
    /// Runs the handshake, opens the stream and lets the first window updates arrive, so the
    /// sender is in the steady state of a bulk transfer.
    pub fn new() -> Self {
        let psk = Psk::from_bytes([0x42; 32]);
        let mut config_a = EndpointConfig::new(psk.clone());
        config_a.session = unthrottled_config();
        config_a.accept = false;
        let mut config_b = EndpointConfig::new(psk);
        config_b.session = unthrottled_config();
        let now = Instant::now();
        let mut a = Endpoint::new(config_a, [1; 32]);
        let b = Endpoint::new(config_b, [2; 32]);
        let a_id = a.connect(now, addr(ADDR_B));
        let mut pair = Self {
            now,
            a,
            b,
            a_id,
            b_id: SessionId::NONE,
            stream: StreamId(0),
            chunk: vec![0x5a; BATCH * MTU],
            read_buf: vec![0; 256 * 1024],
            written: 0,
            sent_seen: 0,
            received: 0,
            replies: Datagrams::with_batches(REPLY_BATCHES),
        };
        let mut wire = Datagrams::with_batches(8);
        for _ in 0..10 {
            pair.exchange(&mut wire);
            if pair.b_id != SessionId::NONE {
                break;
            }
        }
        assert_ne!(pair.b_id, SessionId::NONE, "handshake did not complete");
        let session = pair.a.session_mut(a_id).expect("dialled session exists");
        pair.stream = session.open_stream(7).expect("a stream can be opened");
        // A few round trips: OPEN and data reach `b`, WINDOW frames reach `a`, ACKs flow.
        for _ in 0..4 {
            pair.top_up();
            pair.exchange(&mut wire);
        }
        pair
    }

    /// One round trip without time measurement: `a` sends everything it may, `b` receives and
    /// answers, `a` handles the answers.
    fn exchange(&mut self, wire: &mut Datagrams) {
        // The dial's first message goes out on the endpoint's timer.
        self.a.handle_timeout(self.now);
        self.b.handle_timeout(self.now);
        wire.clear();
        while wire.transmit_from(&mut self.a, self.now) > 0 {}
        wire.deliver_to(&mut self.b, self.now, addr(ADDR_A));
        self.drain_b_events();
        self.read_b();
        self.reply();
    }

    fn drain_b_events(&mut self) {
        while let Some(Event { session, kind }) = self.b.poll_event() {
            if kind == SessionEvent::Connected {
                self.b_id = session;
            }
        }
    }

    /// Queues the stream payload of one GSO batch at `a` if its backlog runs low. Part of the
    /// send path: a dataplane writes what it read from the application socket.
    #[inline]
    pub fn top_up(&mut self) {
        if self.written - self.sent_seen >= BACKLOG {
            return;
        }
        let session = self.a.session_mut(self.a_id).expect("session a");
        let n = session
            .write(self.stream, &self.chunk)
            .expect("stream open");
        self.written += n as u64;
    }

    /// `a` produces one GSO batch into `out`; returns the number of datagrams.
    #[inline]
    pub fn send_batch(&mut self, out: &mut Datagrams) -> usize {
        self.top_up();
        let n = out.transmit_from(&mut self.a, self.now);
        self.now += BATCH_INTERVAL;
        n
    }

    /// `b` handles `datagrams` (from `a`).
    #[inline]
    pub fn receive(&mut self, datagrams: &mut Datagrams) {
        datagrams.deliver_to(&mut self.b, self.now, addr(ADDR_A));
    }

    /// `b`'s application reads everything that is in order.
    #[inline]
    pub fn read_b(&mut self) {
        if self.b_id == SessionId::NONE {
            return;
        }
        let session = self.b.session_mut(self.b_id).expect("session b");
        loop {
            match session.read(self.stream, &mut self.read_buf) {
                Ok(o) if o.len > 0 => self.received += o.len as u64,
                Ok(_) | Err(StreamError::WouldBlock) | Err(StreamError::UnknownStream) => break,
                Err(e) => panic!("read failed: {e}"),
            }
        }
    }

    /// `b` handles the `i`-th batch stored in `datagrams` (sent by `a`).
    #[inline]
    pub fn receive_batch(&mut self, datagrams: &mut Datagrams, i: usize) {
        datagrams.deliver_batch_to(i, &mut self.b, self.now, addr(ADDR_A));
    }

    /// `b` sends what it owes (ACKs, WINDOW updates) into its reply buffer. Returns the number
    /// of datagrams.
    #[inline]
    pub fn send_replies(&mut self) -> usize {
        let mut n = 0;
        loop {
            let k = self.replies.transmit_from(&mut self.b, self.now);
            if k == 0 {
                return n;
            }
            n += k;
        }
    }

    /// `a` handles (and forgets) everything `b` sent since the last call.
    #[inline]
    pub fn handle_replies(&mut self) {
        self.replies.deliver_to(&mut self.a, self.now, addr(ADDR_B));
        self.replies.clear();
    }

    /// [`Pair::send_replies`] then [`Pair::handle_replies`]; returns the datagrams `b` sent.
    pub fn reply(&mut self) -> usize {
        let n = self.send_replies();
        self.handle_replies();
        n
    }

    /// Bookkeeping outside any measurement: drains events (which would otherwise pile up, as no
    /// application consumes them) and refreshes the sender's backlog estimate.
    pub fn housekeeping(&mut self) {
        while self.a.poll_event().is_some() {}
        while let Some(e) = self.b.poll_event() {
            if let SessionEvent::Stream(StreamEvent::Closed { .. }) = e.kind {
                panic!("bulk stream closed unexpectedly");
            }
        }
        if let Some(s) = self.a.session(self.a_id) {
            self.sent_seen = s.stats().stream_bytes_sent;
        }
    }
}

impl Default for Pair {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steady_state_batches_are_full_and_delivered() {
        let mut pair = Pair::new();
        let mut wire = Datagrams::with_batches(4);
        for _ in 0..50 {
            wire.clear();
            for _ in 0..4 {
                assert_eq!(pair.send_batch(&mut wire), BATCH);
            }
            assert!(wire.sizes().all(|s| s == MTU), "every datagram is full");
            let before = pair.received;
            pair.receive(&mut wire);
            pair.read_b();
            assert!(pair.received > before, "b reads the data");
            assert!(pair.reply() > 0, "b acknowledges");
            pair.housekeeping();
        }
        let a = pair.a.session(pair.a_id).unwrap().stats();
        let b = pair.b.session(pair.b_id).unwrap().stats();
        assert_eq!(a.packets_lost, 0);
        assert_eq!(b.dropped_replayed + b.dropped_auth + b.dropped_malformed, 0);
        assert_eq!(pair.received, b.stream_bytes_received);
        assert_eq!(a.bytes_in_flight, 0, "everything sent was acknowledged");
    }
}
