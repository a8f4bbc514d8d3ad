//! Types shared by the coretun `engine` and `ctl`, with no runtime of their own.
//!
//! * [`config`]: the engine's YAML config, parsed and checked into typed form (here so that
//!   `engine`, `ctl` and the config fuzz target parse a config the same way).
//! * [`control`]: the control protocol spoken over the engine's Unix socket (newline-delimited
//!   JSON requests and responses).
//! * [`metrics`]: the counters in the Prometheus text exposition format (`ctl metrics`).

pub mod config;
pub mod control;
pub mod metrics;
