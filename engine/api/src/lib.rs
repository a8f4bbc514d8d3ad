//! Types shared by the coretun `engine` and `ctl`, with no runtime of their own.
//!
//! * [`control`]: the control protocol spoken over the engine's Unix socket (newline-delimited
//!   JSON requests and responses).
//!
//! The config schema joins this crate in the dataplane issue, so that `engine` and `ctl` (and the
//! config fuzz target) parse a config the same way.

pub mod config;
pub mod control;
