//! Drives two real protocol endpoints over the simulated network: a node wraps an
//! [`Endpoint`] plus a small application that writes and verifies streams.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use engine_proto::crypto::Psk;
use engine_proto::mux::StreamEvent;
use engine_proto::wire::StreamId;
use engine_proto::{Endpoint, EndpointConfig, SessionConfig, SessionEvent};
use engine_sim::{LinkConfig, Node, NodeId, RunOutcome, Sim, Transmit};

pub const CLIENT: &str = "10.0.0.1:4000";
pub const SERVER: &str = "10.0.0.2:5000";

pub fn addr(s: &str) -> SocketAddr {
    s.parse().expect("valid test address")
}

/// Test data: byte `i` of stream `s` is a function of (s, i) that never repeats with the
/// packet size, so lost, duplicated or misordered bytes are caught.
pub fn expected_byte(stream_key: u64, offset: u64) -> u8 {
    const BLOCK: u64 = 65_521; // prime: no packet size divides it
    let x = (offset % BLOCK).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ stream_key.wrapping_mul(0xc2b2_ae3d_27d4_eb4f);
    ((x >> 29) as u8) ^ ((offset / BLOCK) as u8)
}

fn fill(stream_key: u64, offset: u64, out: &mut [u8]) {
    for (i, b) in out.iter_mut().enumerate() {
        *b = expected_byte(stream_key, offset + i as u64);
    }
}

/// One stream this node sends.
#[derive(Debug)]
pub struct Outgoing {
    pub map_id: u32,
    pub len: u64,
    pub written: u64,
    pub finished: bool,
    /// Data becomes available to write only at this time (for latency tests).
    pub start_at: Option<Instant>,
}

/// One stream this node receives.
#[derive(Debug, Default)]
pub struct Incoming {
    pub map_id: u32,
    pub received: u64,
    pub fin: bool,
    pub finished_at: Option<Instant>,
    /// (offset, time) at which each byte range became readable, when tracking latency.
    pub arrivals: Vec<(u64, Instant)>,
}

pub struct Peer {
    pub endpoint: Endpoint,
    pub session: Option<engine_proto::wire::SessionId>,
    /// Dial this address at this (virtual) time.
    pub dial: Option<(SocketAddr, Instant)>,
    pub plan: Vec<(u32, u64)>,
    pub outgoing: BTreeMap<StreamId, Outgoing>,
    pub incoming: BTreeMap<StreamId, Incoming>,
    pub connected_at: Option<Instant>,
    pub closed: Vec<SessionEvent>,
    pub track_arrivals: bool,
    pub read_buf: Vec<u8>,
    pub write_buf: Vec<u8>,
    pub tx_buf: Vec<u8>,
    pub errors: Vec<String>,
}

impl Peer {
    pub fn new(config: EndpointConfig, seed: u64) -> Self {
        let mut s = [0u8; 32];
        s[..8].copy_from_slice(&seed.to_le_bytes());
        Self {
            endpoint: Endpoint::new(config, s),
            session: None,
            dial: None,
            plan: Vec::new(),
            outgoing: BTreeMap::new(),
            incoming: BTreeMap::new(),
            connected_at: None,
            closed: Vec::new(),
            track_arrivals: false,
            read_buf: vec![0; 64 * 1024],
            write_buf: vec![0; 64 * 1024],
            tx_buf: vec![0; 64 * 1024],
            errors: Vec::new(),
        }
    }

    /// Stream keys are unique per (direction, map id): the sender's map id names the data.
    fn key(map_id: u32) -> u64 {
        u64::from(map_id) + 1
    }

    pub fn all_received(&self, streams: usize, len: u64) -> bool {
        self.incoming.len() == streams && self.incoming.values().all(|s| s.fin && s.received == len)
    }

    fn pump_app(&mut self, now: Instant) {
        while let Some(ev) = self.endpoint.poll_event() {
            match ev.kind {
                SessionEvent::Connected => {
                    self.session = Some(ev.session);
                    self.connected_at.get_or_insert(now);
                }
                SessionEvent::Stream(StreamEvent::Opened { id, map_id }) => {
                    self.incoming.entry(id).or_default().map_id = map_id;
                }
                SessionEvent::Closed(_) => self.closed.push(ev.kind),
                _ => {}
            }
        }
        let Some(sid) = self.session else { return };
        let Some(session) = self.endpoint.session_mut(sid) else { return };
        for (map_id, len) in std::mem::take(&mut self.plan) {
            match session.open_stream(map_id) {
                Ok(id) => {
                    self.outgoing.insert(id, Outgoing { map_id, len, written: 0, finished: false, start_at: None });
                }
                Err(e) => self.errors.push(format!("open: {e:?}")),
            }
        }
        for (&id, out) in self.outgoing.iter_mut() {
            if out.start_at.is_some_and(|t| t > now) {
                continue;
            }
            while out.written < out.len {
                let n = (out.len - out.written).min(self.write_buf.len() as u64) as usize;
                fill(Self::key(out.map_id), out.written, &mut self.write_buf[..n]);
                match session.write(id, &self.write_buf[..n]) {
                    Ok(0) => break,
                    Ok(k) => out.written += k as u64,
                    Err(e) => {
                        self.errors.push(format!("write {id:?}: {e:?}"));
                        break;
                    }
                }
            }
            if out.written == out.len && !out.finished {
                match session.finish(id) {
                    Ok(()) => out.finished = true,
                    Err(e) => self.errors.push(format!("finish {id:?}: {e:?}")),
                }
            }
        }
        for (&id, inc) in self.incoming.iter_mut() {
            if inc.fin {
                continue;
            }
            loop {
                match session.read(id, &mut self.read_buf) {
                    Ok(r) => {
                        let key = Self::key(inc.map_id);
                        for (i, &b) in self.read_buf[..r.len].iter().enumerate() {
                            let off = inc.received + i as u64;
                            if b != expected_byte(key, off) {
                                self.errors.push(format!("stream {id:?} byte {off} corrupt"));
                                break;
                            }
                        }
                        if self.track_arrivals && r.len > 0 {
                            inc.arrivals.push((inc.received, now));
                        }
                        inc.received += r.len as u64;
                        if r.fin {
                            inc.fin = true;
                            inc.finished_at = Some(now);
                            break;
                        }
                        if r.len == 0 {
                            break;
                        }
                    }
                    Err(_) => break,
                }
            }
        }
    }
}

impl Node for Peer {
    fn handle_datagram(&mut self, now: Instant, from: SocketAddr, data: &mut [u8]) {
        self.endpoint.handle_datagram(now, from, data);
    }

    fn handle_timeout(&mut self, now: Instant) {
        if let Some((remote, at)) = self.dial {
            if now >= at {
                self.dial = None;
                self.endpoint.connect(now, remote);
            }
        }
        self.endpoint.handle_timeout(now);
    }

    fn poll_transmit(&mut self, now: Instant, buf: &mut Vec<u8>) -> Option<Transmit> {
        let t = self.endpoint.poll_transmit(now, &mut self.tx_buf)?;
        buf.extend_from_slice(&self.tx_buf[..t.size]);
        Some(Transmit { destination: t.destination, size: t.size, segment_size: t.segment_size })
    }

    fn poll_timeout(&mut self) -> Option<Instant> {
        let t = self.endpoint.poll_timeout();
        match (self.dial, t) {
            (Some((_, at)), Some(t)) => Some(at.min(t)),
            (Some((_, at)), None) => Some(at),
            (None, t) => t,
        }
    }

    fn on_step(&mut self, now: Instant) {
        self.pump_app(now);
    }
}

pub fn psk() -> Psk {
    Psk::from_bytes([7; 32])
}

/// A client and a server joined by `link` in both directions; the client dials at time zero.
pub struct Pair {
    pub sim: Sim<Peer>,
    pub client: NodeId,
    pub server: NodeId,
}

impl Pair {
    pub fn new(seed: u64, config: SessionConfig, forward: LinkConfig, backward: LinkConfig) -> Self {
        let mut sim = Sim::new(seed);
        let mut cfg = EndpointConfig::new(psk());
        cfg.session = config;
        let mut client_cfg = cfg.clone();
        client_cfg.accept = false;
        let mut client = Peer::new(client_cfg, seed.wrapping_mul(2) + 1);
        let server = Peer::new(cfg, seed.wrapping_mul(2) + 2);
        // Dial at the first step: the endpoint is told the virtual time there.
        client.dial = Some((addr(SERVER), sim.epoch()));
        sim.set_link(addr(CLIENT), addr(SERVER), forward);
        sim.set_link(addr(SERVER), addr(CLIENT), backward);
        let client = sim.add_node(addr(CLIENT), client);
        let server = sim.add_node(addr(SERVER), server);
        Self { sim, client, server }
    }

    pub fn run(&mut self, limit: Duration, mut done: impl FnMut(&Peer, &Peer) -> bool) -> RunOutcome {
        let (c, s) = (self.client, self.server);
        self.sim.run_for(limit, |sim| done(sim.node(c), sim.node(s)))
    }
}
