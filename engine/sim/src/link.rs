//! One direction of a simulated path: its configuration ([`LinkConfig`]), its impairment model
//! and its counters ([`LinkStats`]).
//!
//! A datagram offered to a link goes through these stages, in this order:
//!
//! 1. **MTU check**: datagrams longer than [`LinkConfig::mtu`] are dropped (`oversize`).
//! 2. **Bottleneck**: with [`LinkConfig::rate_bps`] set, datagrams are serialised one after the
//!    other at that rate, each charged its payload plus [`IP_UDP_OVERHEAD`] bytes as a real link
//!    is. Datagrams that find the transmitter busy wait in a drop-tail queue bounded by
//!    [`LinkConfig::queue`]; one that does not fit is dropped (`queue_dropped`).
//! 3. **Loss**: Bernoulli ([`LinkConfig::loss`]) and/or Gilbert-Elliott
//!    ([`LinkConfig::burst_loss`]); a datagram is lost if either model says so. Loss is applied
//!    *after* the bottleneck, so a lost datagram has still used link capacity, as on a lossy last
//!    hop (Wi-Fi, cellular) behind the bottleneck.
//! 4. **Corruption**: one uniformly chosen bit of the payload is flipped.
//! 5. **Duplication**: a second copy is made. The copy does not use link capacity; each copy gets
//!    its own delay draw below.
//! 6. **Propagation**: [`LinkConfig::delay`], plus a uniform draw in `[0, jitter]`, plus
//!    [`LinkConfig::reorder_delay`] with probability [`LinkConfig::reorder`].
//!
//! Without jitter and reordering a link is FIFO. With jitter, datagrams sent closer together than
//! the jitter can overtake each other, as on a multi-path network.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand_chacha::ChaCha8Rng;
use rand_core::RngCore;

/// Bytes of IPv4 + UDP header charged per datagram by the rate limiter.
pub const IP_UDP_OVERHEAD: usize = 28;

/// Default bottleneck buffer: 50 ms of traffic at the link rate.
///
/// That is about one bandwidth-delay product for a 50 ms RTT path: enough for a well-paced
/// sender to keep the link busy, small enough that a sender overrunning the link sees drops soon.
pub const DEFAULT_QUEUE: QueueLimit = QueueLimit::Time(Duration::from_millis(50));

/// Default extra delay of a reordered datagram.
pub const DEFAULT_REORDER_DELAY: Duration = Duration::from_millis(10);

/// Size of the drop-tail queue in front of the rate limiter.
///
/// The queue holds what the transmitter has not finished serialising, including the datagram
/// being sent. A datagram arriving at an idle transmitter is always accepted, whatever the limit.
/// Without a rate limit nothing ever waits, so the limit has no effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueLimit {
    /// At most this many bytes (counting [`IP_UDP_OVERHEAD`] per datagram) waiting.
    Bytes(usize),
    /// At most this much serialisation time (at the link rate) waiting.
    Time(Duration),
    /// Never drop at the queue (an infinitely deep buffer).
    Unlimited,
}

impl Default for QueueLimit {
    fn default() -> Self {
        DEFAULT_QUEUE
    }
}

/// Two-state Gilbert-Elliott burst-loss model, clocked per datagram.
///
/// For each datagram the chain first moves (good -> bad with `p_good_to_bad`, bad -> good with
/// `p_bad_to_good`), then the datagram is lost with the loss probability of the current state.
/// The chain starts in the good state.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GilbertElliott {
    pub p_good_to_bad: f64,
    pub p_bad_to_good: f64,
    pub loss_in_good: f64,
    pub loss_in_bad: f64,
}

impl GilbertElliott {
    /// The simple Gilbert model with the given long-run loss rate and mean number of consecutive
    /// losses: nothing is lost in the good state, everything in the bad one.
    ///
    /// The stationary probability of the bad state is `p_gb / (p_gb + p_bg)` and a bad sojourn
    /// lasts `1 / p_bg` datagrams on average, which gives `p_bg = 1 / burst` and
    /// `p_gb = loss * p_bg / (1 - loss)`.
    ///
    /// # Panics
    /// If `mean_loss` is not in `[0, 1)` or `mean_burst_len < 1`.
    pub fn from_loss_and_burst(mean_loss: f64, mean_burst_len: f64) -> Self {
        assert!(
            (0.0..1.0).contains(&mean_loss),
            "mean loss {mean_loss} not in [0, 1)"
        );
        assert!(
            mean_burst_len >= 1.0,
            "mean burst length {mean_burst_len} < 1"
        );
        let p_bad_to_good = 1.0 / mean_burst_len;
        let p_good_to_bad = (mean_loss * p_bad_to_good / (1.0 - mean_loss)).min(1.0);
        Self {
            p_good_to_bad,
            p_bad_to_good,
            loss_in_good: 0.0,
            loss_in_bad: 1.0,
        }
    }

    /// Long-run fraction of datagrams this model loses.
    pub fn mean_loss(&self) -> f64 {
        let total = self.p_good_to_bad + self.p_bad_to_good;
        if total == 0.0 {
            return self.loss_in_good;
        }
        let bad = self.p_good_to_bad / total;
        bad * self.loss_in_bad + (1.0 - bad) * self.loss_in_good
    }
}

/// Configuration of one direction of a path. Everything is off by default: no rate limit, zero
/// delay, no impairments, no MTU.
///
/// Fields are public; the methods of the same names are a builder:
/// `LinkConfig::default().rate_bps(10_000_000).delay(Duration::from_millis(20)).loss(0.01)`.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct LinkConfig {
    /// Bottleneck rate in bits per second, each datagram charged `len + IP_UDP_OVERHEAD` bytes.
    /// `None` is an infinitely fast link.
    pub rate_bps: Option<u64>,
    /// Drop-tail queue in front of the rate limiter (default [`DEFAULT_QUEUE`]).
    pub queue: QueueLimit,
    /// One-way propagation delay.
    pub delay: Duration,
    /// Extra delay drawn uniformly from `[0, jitter]` per datagram; reorders close datagrams.
    pub jitter: Duration,
    /// Independent (Bernoulli) loss probability.
    pub loss: f64,
    /// Burst loss, applied in addition to `loss`.
    pub burst_loss: Option<GilbertElliott>,
    /// Probability that a datagram is held back by `reorder_delay`, so that later datagrams
    /// overtake it.
    pub reorder: f64,
    /// Extra delay of a reordered datagram (default [`DEFAULT_REORDER_DELAY`]).
    pub reorder_delay: Duration,
    /// Probability that a datagram is delivered twice.
    pub duplicate: f64,
    /// Probability that one bit of a datagram is flipped.
    pub corrupt: f64,
    /// Datagrams with a payload longer than this are dropped (`usize::MAX`: no limit).
    pub mtu: usize,
}

impl Default for LinkConfig {
    fn default() -> Self {
        Self {
            rate_bps: None,
            queue: DEFAULT_QUEUE,
            delay: Duration::ZERO,
            jitter: Duration::ZERO,
            loss: 0.0,
            burst_loss: None,
            reorder: 0.0,
            reorder_delay: DEFAULT_REORDER_DELAY,
            duplicate: 0.0,
            corrupt: 0.0,
            mtu: usize::MAX,
        }
    }
}

fn check_probability(name: &str, p: f64) -> f64 {
    assert!(
        (0.0..=1.0).contains(&p),
        "{name} probability {p} not in [0, 1]"
    );
    p
}

impl LinkConfig {
    /// Same as `LinkConfig::default()`.
    pub fn new() -> Self {
        Self::default()
    }

    /// # Panics
    /// If `bps` is zero.
    pub fn rate_bps(mut self, bps: u64) -> Self {
        assert!(bps > 0, "link rate must be positive");
        self.rate_bps = Some(bps);
        self
    }

    pub fn queue(mut self, queue: QueueLimit) -> Self {
        self.queue = queue;
        self
    }

    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    pub fn jitter(mut self, jitter: Duration) -> Self {
        self.jitter = jitter;
        self
    }

    pub fn loss(mut self, p: f64) -> Self {
        self.loss = check_probability("loss", p);
        self
    }

    pub fn burst_loss(mut self, model: GilbertElliott) -> Self {
        check_probability("p_good_to_bad", model.p_good_to_bad);
        check_probability("p_bad_to_good", model.p_bad_to_good);
        check_probability("loss_in_good", model.loss_in_good);
        check_probability("loss_in_bad", model.loss_in_bad);
        self.burst_loss = Some(model);
        self
    }

    pub fn reorder(mut self, p: f64) -> Self {
        self.reorder = check_probability("reorder", p);
        self
    }

    pub fn reorder_delay(mut self, delay: Duration) -> Self {
        self.reorder_delay = delay;
        self
    }

    pub fn duplicate(mut self, p: f64) -> Self {
        self.duplicate = check_probability("duplicate", p);
        self
    }

    pub fn corrupt(mut self, p: f64) -> Self {
        self.corrupt = check_probability("corrupt", p);
        self
    }

    pub fn mtu(mut self, mtu: usize) -> Self {
        self.mtu = mtu;
        self
    }

    /// The queue limit as serialisation time in nanoseconds, `None` when unbounded.
    fn queue_limit_ns(&self) -> Option<u128> {
        let rate = self.rate_bps?;
        match self.queue {
            QueueLimit::Bytes(bytes) => Some(bytes as u128 * 8 * NANOS_PER_SEC / rate as u128),
            QueueLimit::Time(time) => Some(time.as_nanos()),
            QueueLimit::Unlimited => None,
        }
    }
}

/// A count of datagrams and of their payload bytes (without [`IP_UDP_OVERHEAD`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Counter {
    pub datagrams: u64,
    pub bytes: u64,
}

impl Counter {
    fn add(&mut self, len: usize) {
        self.datagrams += 1;
        self.bytes += len as u64;
    }
}

/// What happened to the datagrams offered to one direction of a path.
///
/// Without duplication, once nothing is in flight:
/// `offered = oversize + queue_dropped + lost + delivered + unroutable`. Each duplicate adds one
/// to `duplicated` and one to the right-hand side.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct LinkStats {
    /// Everything a node sent on this link.
    pub offered: Counter,
    /// Dropped for exceeding the MTU.
    pub oversize: Counter,
    /// Dropped by the full bottleneck queue.
    pub queue_dropped: Counter,
    /// Lost after the bottleneck (Bernoulli or Gilbert-Elliott).
    pub lost: Counter,
    /// Had one bit flipped (and were still delivered, possibly twice).
    pub corrupted: Counter,
    /// Extra copies made.
    pub duplicated: Counter,
    /// Copies held back by `reorder_delay` (not a measurement of actual overtaking).
    pub reordered: Counter,
    /// Handed to the destination node.
    pub delivered: Counter,
    /// Arrived at an address with no node.
    pub unroutable: Counter,
    /// Longest time a datagram waited in the queue before its serialisation started.
    pub max_queue_delay: Duration,
}

const NANOS_PER_SEC: u128 = 1_000_000_000;

/// One direction of a path with its state.
#[derive(Debug)]
pub(crate) struct Link {
    pub(crate) from: SocketAddr,
    pub(crate) to: SocketAddr,
    config: LinkConfig,
    queue_limit_ns: Option<u128>,
    rng: ChaCha8Rng,
    /// When the transmitter finishes serialising everything accepted so far.
    busy_until: Instant,
    /// Remainder of `bits * 1e9 / rate` carried between datagrams, so that rounding to whole
    /// nanoseconds does not make the long-run rate drift.
    serialise_remainder: u128,
    ge_bad: bool,
    pub(crate) stats: LinkStats,
}

/// Where the copies of one offered datagram go.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Fate {
    /// Arrival time of the first copy, `None` if dropped.
    pub(crate) arrival: Option<Instant>,
    /// Arrival time of the duplicate, if one was made.
    pub(crate) duplicate: Option<Instant>,
}

impl Link {
    pub(crate) fn new(
        from: SocketAddr,
        to: SocketAddr,
        config: LinkConfig,
        rng: ChaCha8Rng,
        now: Instant,
    ) -> Self {
        Self {
            from,
            to,
            queue_limit_ns: config.queue_limit_ns(),
            config,
            rng,
            busy_until: now,
            serialise_remainder: 0,
            ge_bad: false,
            stats: LinkStats::default(),
        }
    }

    /// Replaces the configuration, keeping queue state, RNG and counters.
    pub(crate) fn set_config(&mut self, config: LinkConfig) {
        self.queue_limit_ns = config.queue_limit_ns();
        self.config = config;
    }

    /// Runs one datagram through the link model (see the module docs), corrupting `data` in
    /// place if the model says so, and returns when its copies arrive.
    pub(crate) fn offer(&mut self, now: Instant, data: &mut [u8]) -> Fate {
        let len = data.len();
        self.stats.offered.add(len);
        if len > self.config.mtu {
            self.stats.oversize.add(len);
            return Fate::default();
        }

        let departure = match self.config.rate_bps {
            None => now,
            Some(rate) => match self.serialise(now, len, rate) {
                Some(departure) => departure,
                None => {
                    self.stats.queue_dropped.add(len);
                    return Fate::default();
                }
            },
        };

        if self.lose() {
            self.stats.lost.add(len);
            return Fate::default();
        }

        if chance(&mut self.rng, self.config.corrupt) && !data.is_empty() {
            let bit = below(&mut self.rng, len as u64 * 8);
            data[(bit / 8) as usize] ^= 1 << (bit % 8);
            self.stats.corrupted.add(len);
        }

        let duplicate = chance(&mut self.rng, self.config.duplicate);
        let arrival = Some(self.propagate(departure, len));
        let duplicate = duplicate.then(|| {
            self.stats.duplicated.add(len);
            self.propagate(departure, len)
        });
        Fate { arrival, duplicate }
    }

    /// Accepts a datagram into the bottleneck queue and returns when its last bit leaves the
    /// transmitter, or `None` if the queue is full.
    fn serialise(&mut self, now: Instant, len: usize, rate: u64) -> Option<Instant> {
        let bits = ((len + IP_UDP_OVERHEAD) as u128) * 8;
        let numerator = bits * NANOS_PER_SEC + self.serialise_remainder;
        let serialise_ns = numerator / rate as u128;
        let backlog_ns = self.busy_until.saturating_duration_since(now).as_nanos();
        let over_limit = self
            .queue_limit_ns
            .is_some_and(|limit| backlog_ns + serialise_ns > limit);
        if backlog_ns > 0 && over_limit {
            return None;
        }
        self.serialise_remainder = numerator % rate as u128;
        let start = self.busy_until.max(now);
        let wait = start - now;
        if wait > self.stats.max_queue_delay {
            self.stats.max_queue_delay = wait;
        }
        self.busy_until = start + nanos(serialise_ns);
        Some(self.busy_until)
    }

    fn lose(&mut self) -> bool {
        // Draw both models every time so that the Gilbert-Elliott chain advances per datagram
        // regardless of what the Bernoulli draw says.
        let random = chance(&mut self.rng, self.config.loss);
        let burst = match self.config.burst_loss {
            None => false,
            Some(ge) => {
                let flip = if self.ge_bad {
                    ge.p_bad_to_good
                } else {
                    ge.p_good_to_bad
                };
                if chance(&mut self.rng, flip) {
                    self.ge_bad = !self.ge_bad;
                }
                let p = if self.ge_bad {
                    ge.loss_in_bad
                } else {
                    ge.loss_in_good
                };
                chance(&mut self.rng, p)
            }
        };
        random || burst
    }

    fn propagate(&mut self, departure: Instant, len: usize) -> Instant {
        let mut arrival = departure + self.config.delay;
        if !self.config.jitter.is_zero() {
            let jitter = self.config.jitter.as_nanos().min(u64::MAX as u128 - 1) as u64;
            arrival += Duration::from_nanos(below(&mut self.rng, jitter + 1));
        }
        if chance(&mut self.rng, self.config.reorder) {
            self.stats.reordered.add(len);
            arrival += self.config.reorder_delay;
        }
        arrival
    }
}

fn nanos(ns: u128) -> Duration {
    Duration::from_nanos(ns.min(u64::MAX as u128) as u64)
}

/// True with probability `p`; draws nothing when the outcome is certain, so that disabled
/// impairments do not consume randomness.
fn chance(rng: &mut ChaCha8Rng, p: f64) -> bool {
    if p <= 0.0 {
        return false;
    }
    if p >= 1.0 {
        return true;
    }
    unit(rng) < p
}

/// Uniform in `[0, 1)` with 53 bits of precision.
fn unit(rng: &mut ChaCha8Rng) -> f64 {
    (rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// Uniform in `[0, n)` (multiply-shift; the bias is below 2^-64 * n, irrelevant here).
fn below(rng: &mut ChaCha8Rng, n: u64) -> u64 {
    ((rng.next_u64() as u128 * n as u128) >> 64) as u64
}

#[cfg(test)]
mod tests {
    use rand_core::SeedableRng;

    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, 1], port))
    }

    fn link(config: LinkConfig, now: Instant) -> Link {
        Link::new(addr(1), addr(2), config, ChaCha8Rng::seed_from_u64(7), now)
    }

    #[test]
    fn serialisation_charges_header_and_queues_back_to_back() {
        let t0 = Instant::now();
        // 1 Mbit/s: a 97-byte payload is 125 bytes on the wire = 1 ms.
        let mut l = link(LinkConfig::new().rate_bps(1_000_000), t0);
        let mut data = [0u8; 97];
        let a = l.offer(t0, &mut data).arrival.unwrap();
        let b = l.offer(t0, &mut data).arrival.unwrap();
        assert_eq!(a - t0, Duration::from_millis(1));
        assert_eq!(b - t0, Duration::from_millis(2));
        assert_eq!(l.stats.max_queue_delay, Duration::from_millis(1));
    }

    #[test]
    fn remainder_keeps_long_run_rate_exact() {
        let t0 = Instant::now();
        // 3 bit/s makes every datagram a non-integral number of nanoseconds.
        let mut l = link(
            LinkConfig::new().rate_bps(3).queue(QueueLimit::Unlimited),
            t0,
        );
        let mut data = [0u8; 2];
        let mut last = t0;
        for _ in 0..3 {
            last = l.offer(t0, &mut data).arrival.unwrap();
        }
        // 3 * 30 bytes * 8 bits / 3 bit/s = 240 s exactly.
        assert_eq!(last - t0, Duration::from_secs(240));
    }

    #[test]
    fn byte_queue_limit_drops_tail_but_accepts_when_idle() {
        let t0 = Instant::now();
        let mut l = link(
            LinkConfig::new()
                .rate_bps(8_000)
                .queue(QueueLimit::Bytes(250)),
            t0,
        );
        // 72 + 28 = 100 bytes = 100 ms each. Larger than the queue but the link is idle.
        let mut big = [0u8; 572];
        assert!(l.offer(t0, &mut big).arrival.is_some());
        let t1 = t0 + Duration::from_secs(1);
        let mut small = [0u8; 72];
        assert!(l.offer(t1, &mut small).arrival.is_some());
        assert!(l.offer(t1, &mut small).arrival.is_some());
        assert!(l.offer(t1, &mut small).arrival.is_none());
        assert_eq!(l.stats.queue_dropped.datagrams, 1);
    }

    #[test]
    fn mtu_drops_oversize() {
        let t0 = Instant::now();
        let mut l = link(LinkConfig::new().mtu(100), t0);
        assert!(l.offer(t0, &mut [0u8; 100]).arrival.is_some());
        assert!(l.offer(t0, &mut [0u8; 101]).arrival.is_none());
        assert_eq!(
            l.stats.oversize,
            Counter {
                datagrams: 1,
                bytes: 101
            }
        );
    }

    #[test]
    fn corruption_flips_exactly_one_bit() {
        let t0 = Instant::now();
        let mut l = link(LinkConfig::new().corrupt(1.0), t0);
        for _ in 0..100 {
            let mut data = [0u8; 33];
            l.offer(t0, &mut data);
            let ones: u32 = data.iter().map(|b| b.count_ones()).sum();
            assert_eq!(ones, 1);
        }
    }

    #[test]
    fn gilbert_elliott_parameters() {
        let ge = GilbertElliott::from_loss_and_burst(0.05, 4.0);
        assert!((ge.p_bad_to_good - 0.25).abs() < 1e-12);
        assert!((ge.mean_loss() - 0.05).abs() < 1e-12);
    }
}
