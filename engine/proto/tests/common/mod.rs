//! A two-endpoint, in-memory network with a fixed one-way delay, driven in virtual time, with
//! a hook that sees (and may drop or capture) every datagram.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use engine_proto::crypto::Psk;
use engine_proto::{Endpoint, EndpointConfig, Event};

pub const A: &str = "127.0.0.1:1000";
pub const B: &str = "127.0.0.1:2000";

pub fn addr(s: &str) -> SocketAddr {
    s.parse().expect("valid address")
}

pub struct Datagram {
    pub at: Instant,
    pub from: SocketAddr,
    pub to: SocketAddr,
    pub data: Vec<u8>,
}

pub struct Net {
    pub now: Instant,
    pub a: Endpoint,
    pub b: Endpoint,
    pub delay: Duration,
    pub in_flight: Vec<Datagram>,
    pub events_a: Vec<Event>,
    pub events_b: Vec<Event>,
    /// Sees each datagram as it is sent; returning false drops it.
    pub filter: Box<dyn FnMut(&Datagram) -> bool>,
    buf: Vec<u8>,
}

pub fn config(psk: [u8; 32], accept: bool) -> EndpointConfig {
    let mut c = EndpointConfig::new(Psk::from_bytes(psk));
    c.accept = accept;
    c
}

impl Net {
    /// `a` dials, `b` accepts.
    pub fn new(a: EndpointConfig, b: EndpointConfig) -> Self {
        Self {
            now: Instant::now(),
            a: Endpoint::new(a, [1; 32]),
            b: Endpoint::new(b, [2; 32]),
            delay: Duration::from_millis(25),
            in_flight: Vec::new(),
            events_a: Vec::new(),
            events_b: Vec::new(),
            filter: Box::new(|_| true),
            buf: vec![0; 64 * 1024],
        }
    }

    fn drain_output(&mut self) {
        for from_a in [true, false] {
            loop {
                let (ep, from) = if from_a {
                    (&mut self.a, addr(A))
                } else {
                    (&mut self.b, addr(B))
                };
                let Some(t) = ep.poll_transmit(self.now, &mut self.buf) else {
                    break;
                };
                let seg = t.segment_size.unwrap_or(t.size);
                for chunk in self.buf[..t.size].chunks(seg) {
                    let d = Datagram {
                        at: self.now + self.delay,
                        from,
                        to: t.destination,
                        data: chunk.to_vec(),
                    };
                    if (self.filter)(&d) {
                        self.in_flight.push(d);
                    }
                }
            }
        }
        while let Some(e) = self.a.poll_event() {
            self.events_a.push(e);
        }
        while let Some(e) = self.b.poll_event() {
            self.events_b.push(e);
        }
    }

    /// Delivers a datagram now, bypassing the delay (for injecting forged packets).
    pub fn inject(&mut self, to_b: bool, from: SocketAddr, data: &mut [u8]) {
        let ep = if to_b { &mut self.b } else { &mut self.a };
        ep.handle_datagram(self.now, from, data);
    }

    /// Advances to the next event (a delivery or a timer) and handles it. False when idle.
    pub fn step(&mut self) -> bool {
        self.drain_output();
        let next_delivery = self.in_flight.iter().map(|d| d.at).min();
        let next_timer = [self.a.poll_timeout(), self.b.poll_timeout()]
            .into_iter()
            .flatten()
            .min();
        let Some(next) = [next_delivery, next_timer].into_iter().flatten().min() else {
            return false;
        };
        self.now = self.now.max(next);
        let (due, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut self.in_flight)
            .into_iter()
            .partition(|d| d.at <= self.now);
        self.in_flight = rest;
        for mut d in due {
            let ep = if d.to == addr(B) {
                &mut self.b
            } else {
                &mut self.a
            };
            ep.handle_datagram(self.now, d.from, &mut d.data);
        }
        self.a.handle_timeout(self.now);
        self.b.handle_timeout(self.now);
        self.drain_output();
        true
    }

    /// Runs for `d` of virtual time or until `done`.
    pub fn run(&mut self, d: Duration, mut done: impl FnMut(&mut Self) -> bool) -> bool {
        let end = self.now + d;
        while self.now < end {
            if done(self) {
                return true;
            }
            if !self.step() {
                return done(self);
            }
        }
        done(self)
    }

    pub fn connected(&mut self) -> bool {
        use engine_proto::SessionEvent::Connected;
        self.events_a.iter().any(|e| e.kind == Connected)
            && self.events_b.iter().any(|e| e.kind == Connected)
    }
}
