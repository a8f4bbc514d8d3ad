//! ARQ building blocks: ACK range sets, RTT estimation, pacing and rate control.
//!
//! These pieces are sans-IO and independent of each other; the session owns the map of sent
//! packets, parses ACK frames, runs loss detection and calls into them:
//!
//! * [`RangeSet`]: sorted, coalesced ranges of `u64` (received packet numbers for ACK frames,
//!   acknowledged stream bytes, retransmission queues);
//! * [`RttEstimator`]: smoothed RTT / variance / minimum and the retransmission timeout with
//!   Liteflow-style clamps ([`RttClamp`]) and gentle 1.5x backoff;
//! * [`Pacer`]: token bucket with exact nanosecond accounting; every send is paced;
//! * [`RateControl`]: the rate controller the session drives, [`Bbr`] (default; BBRv1 model with
//!   random-loss compensation and a standing-queue guard) or [`FixedRate`] (user-stated link
//!   rate), fed by the delivery-rate sampler whose [`SendSnapshot`] is stored with every packet.

mod bbr;
mod delivery;
mod filter;
mod fixed;
mod loss;
#[cfg(test)]
mod model;
mod pacer;
mod ranges;
mod rate;
mod rtt;

pub use bbr::{Bbr, BbrConfig};
pub use delivery::{DeliveryRateSampler, RateSample, SendSnapshot};
pub use fixed::FixedRate;
pub use pacer::Pacer;
pub use ranges::{Iter as RangeSetIter, RangeSet};
pub use rate::{RateControl, RateControlConfig};
pub use rtt::{GRANULARITY, RTO_BACKOFF, RttClamp, RttEstimator};
