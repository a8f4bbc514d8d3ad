//! The loss-emulation comparison: plain TCP, kcptun and the engine across the same emulated
//! links ([`crate::linkem`]), measured for bulk goodput, request/response latency, bytes on the
//! wire and CPU, and reported as a markdown table and plots. `scripts/lossbench.sh` starts it.

pub mod model;
pub mod report;
