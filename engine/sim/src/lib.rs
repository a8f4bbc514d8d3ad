//! Deterministic, seeded, virtual-time network simulator for testing coretun's sans-IO protocol
//! core (in the style of smoltcp's `tests/netsim.rs` and s2n-quic's network model).
//!
//! * [`Node`]: a sans-IO endpoint (datagrams in, datagrams and a timer out).
//! * [`Sim`]: the network. Owns the nodes, jumps virtual time from event to event.
//! * [`LinkConfig`]: per-direction rate limit with drop-tail queue, delay, jitter, Bernoulli and
//!   Gilbert-Elliott loss, reordering, duplication, corruption, MTU. See [`link`] for the order
//!   in which they apply.
//! * [`for_each_seed`]: run a test over many seeds and print how to replay the failing one.
//!
//! ```
//! use std::net::SocketAddr;
//! use std::time::{Duration, Instant};
//!
//! use engine_sim::{LinkConfig, Node, RunOutcome, Sim, Transmit};
//!
//! /// Sends one datagram to `peer`, counts what it receives.
//! struct Ping { peer: SocketAddr, pending: bool, received: usize }
//!
//! impl Node for Ping {
//!     fn handle_datagram(&mut self, _: Instant, _: SocketAddr, _: &mut [u8]) { self.received += 1 }
//!     fn handle_timeout(&mut self, _: Instant) {}
//!     fn poll_transmit(&mut self, _: Instant, buf: &mut Vec<u8>) -> Option<Transmit> {
//!         if !std::mem::take(&mut self.pending) { return None }
//!         buf.extend_from_slice(b"ping");
//!         Some(Transmit { destination: self.peer, size: 4, segment_size: None })
//!     }
//!     fn poll_timeout(&mut self) -> Option<Instant> { None }
//! }
//!
//! let (a, b): (SocketAddr, SocketAddr) = ("10.0.0.1:1".parse().unwrap(), "10.0.0.2:1".parse().unwrap());
//! let mut sim = Sim::new(42);
//! sim.set_link(a, b, LinkConfig::new().delay(Duration::from_millis(25)));
//! sim.add_node(a, Ping { peer: b, pending: true, received: 0 });
//! let nb = sim.add_node(b, Ping { peer: a, pending: false, received: 0 });
//! let outcome = sim.run_for(Duration::from_secs(1), |sim| sim.node(nb).received == 1);
//! assert_eq!(outcome, RunOutcome::Done);
//! assert_eq!(sim.elapsed(), Duration::from_millis(25));
//! ```

pub mod link;
pub mod replay;
mod sim;

pub use link::{
    Counter, DEFAULT_QUEUE, DEFAULT_REORDER_DELAY, GilbertElliott, IP_UDP_OVERHEAD, LinkConfig,
    LinkStats, QueueLimit,
};
pub use replay::{SeedFailure, for_each_seed, replay_command, run_seeds, seeds_from_env};
pub use sim::{Node, NodeId, RunOutcome, Sim, SimStats, Transmit, derive_rng};
