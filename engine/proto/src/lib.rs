//! coretun's sans-IO protocol core.
//!
//! Nothing in this crate performs I/O, spawns threads, reads a clock or touches a global RNG:
//! time is passed in as an [`std::time::Instant`], randomness comes from a seed, and every effect
//! on the outside world is polled (`poll_transmit`, `poll_timeout`, `poll_event`). That is what
//! lets the same code run in the io_uring dataplane, in the deterministic simulator and under a
//! fuzzer.
//!
//! Layers, bottom-up: [`wire`] (packet and frame formats) -> [`crypto`] (Noise handshake, AEAD,
//! replay window, key updates) -> [`arq`] (ACK ranges, RTT, pacing, rate control) -> [`mux`]
//! (streams and flow control) -> [`session`] -> [`endpoint`].

pub mod arq;
pub mod config;
pub mod crypto;
pub mod endpoint;
pub mod fec;
pub mod mux;
pub mod relay;
pub mod session;
pub mod wire;

pub use config::{FecConfig, FecMode, Profile, SessionConfig};
pub use endpoint::{Endpoint, EndpointConfig, EndpointStats, Event};
pub use session::{CloseReason, Session, SessionEvent, SessionStats, Transmit};
