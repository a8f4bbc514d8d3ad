//! The one place the tests touch `bench::impair`, the in-process UDP impairment relay, so a
//! change of its API changes only this file. Not part of `common` itself: only the tests that
//! use a relay include it (`#[path = "common/impair.rs"] mod impair;`).

use std::net::SocketAddr;
use std::time::Duration;

use bench::impair::{Impairment, Relay, RelayConfig, RelayStats};

/// The same impairment both ways.
#[derive(Debug, Clone, Copy)]
pub struct Path {
    pub loss: f64,
    pub delay: Duration,
    pub jitter: Duration,
    pub reorder: f64,
}

/// A running relay (stopped on drop).
pub struct LossyRelay {
    relay: Relay,
}

impl LossyRelay {
    /// A relay on a free loopback port forwarding to `upstream`, impairing both directions.
    pub fn start(upstream: SocketAddr, path: Path, seed: u64) -> Self {
        let impairment = Impairment {
            loss: path.loss,
            delay: path.delay,
            jitter: path.jitter,
            reorder: path.reorder,
            ..Impairment::default()
        };
        let relay = Relay::start(RelayConfig {
            listen: "127.0.0.1:0".parse().expect("a socket address"),
            upstream,
            to_upstream: impairment.clone(),
            to_client: impairment,
            seed,
        })
        .unwrap_or_else(|e| panic!("starting the impairment relay: {e}"));
        Self { relay }
    }

    /// Where clients send.
    pub fn addr(&self) -> SocketAddr {
        self.relay.local_addr()
    }

    /// Datagrams dropped on purpose (random loss), both directions.
    pub fn dropped(&self) -> u64 {
        self.relay.stats().dropped_loss
    }

    /// All counters, for failure messages.
    pub fn stats(&self) -> RelayStats {
        self.relay.stats()
    }
}
