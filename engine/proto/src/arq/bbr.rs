//! BBRv1-style model-based rate control, made robust to random loss.
//!
//! The model is BBRv1's: the bottleneck bandwidth is the windowed maximum (10 round trips) of
//! delivery-rate samples, the propagation delay is the windowed minimum (10 s) of RTT samples,
//! and the sender paces at `gain x bandwidth` with a window of `cwnd_gain x BDP`. States:
//! Startup (gain 2.77 until three rounds bring less than 25% more bandwidth), Drain (the inverse
//! gain until the queue Startup built is gone) and ProbeBW (gain cycle 1.25, 0.75, 1 x 6).
//!
//! # Random loss
//!
//! On a path that drops a fraction `p` of packets at random, the acknowledged bytes are only
//! `(1 - p)` of what crossed the bottleneck, so plain BBR settles at `(1 - p)` of the link (and
//! lower still once the gain cycle cannot make up for it). Two ways to compensate were considered:
//!
//! * counting lost bytes as delivered in the rate sampler: exact for random loss, but a packet
//!   dropped by a full drop-tail queue never crossed the bottleneck. During Startup or a 1.25
//!   probe the sample would then measure the *send* rate, and the estimate would ratchet up by
//!   the probe gain every cycle: a runaway.
//! * dividing the delivery rate by `(1 - p)`: has the same flaw if `p` includes queue drops, but
//!   is only as wrong as `p` is.
//!
//! We use the second, with `p` estimated over packets sent while the path showed no queue (see
//! [`super::loss`]): queue drops happen only when the queue is full, so they are excluded, while
//! random drops are independent of the queue and measured without bias. `p` is capped at 0.3 so
//! that a pathological path cannot make us send more than 1/0.7 of what is delivered. The
//! compensated estimate is the rate at which packets *enter* the lossy link, which is exactly the
//! pacing rate that keeps it full. Losses otherwise do not reduce the rate at all (no Reno/Cubic
//! style backoff): a drop-tail bottleneck is protected by the delay guard below.
//!
//! # Delay guard
//!
//! A windowed-max bandwidth filter fed with noisy (lossy) samples drifts a little above the true
//! rate, and a drop in the bottleneck rate takes 10 rounds to leave the max filter; both build a
//! standing queue. If even the *smallest* RTT of a whole round is more than
//! `max(min_rtt / 10, 1 ms)` above the minimum RTT, the queue did not drain once during that
//! round: the bottleneck was busy the whole time, so the bytes delivered during the round divided
//! by its duration (compensated for random loss) measure the bottleneck rate. The bandwidth
//! filter is reset to that value if it is lower (but by at most 20% per action, since jitter
//! can fake such a round), and the sender paces at 0.75x until the bytes in
//! flight fall to one BDP (the queue is gone). In Startup, such a round ends Startup early if the
//! bandwidth has already stopped growing once. ProbeRTT is not implemented: the guard keeps the
//! queue drained, so RTT samples close to the propagation delay keep arriving, and the min-RTT
//! filter still forgets values older than 10 s (so a route change is picked up).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::arq::delivery::{DeliveryRateSampler, RateSample, SendSnapshot};
use crate::arq::filter::{Extreme, WindowedFilter};
use crate::arq::loss::LossEstimator;
use crate::arq::rtt::RttEstimator;

/// Startup pacing and window gain (BBRv2's 4 ln 2: lets the delivery rate double per round).
const STARTUP_GAIN: f64 = 2.77;
/// ProbeBW gain cycle.
const PROBE_GAINS: [f64; 8] = [1.25, 0.75, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0];
/// ProbeBW window gain.
const CWND_GAIN: f64 = 2.0;
/// Bandwidth filter window, in round trips.
const BW_WINDOW_ROUNDS: u64 = 10;
/// Min-RTT filter window.
const MIN_RTT_WINDOW: Duration = Duration::from_secs(10);
/// Pace slightly below the estimate so that estimation noise does not build a queue.
const PACING_MARGIN: f64 = 0.99;
/// Upper bound of the random-loss ratio used for compensation.
const MAX_LOSS_COMPENSATION: f64 = 0.3;
/// Startup ends after this many rounds with less than 25% bandwidth growth.
const FULL_BW_ROUNDS: u32 = 3;
/// The delay guard lowers the bandwidth estimate to no less than this share of it per action.
const GUARD_MAX_CUT: f64 = 0.8;
/// How many recently acknowledged packets are remembered to classify losses.
const RECENT_ACKED: usize = 64;
/// RTT assumed for the initial pacing rate, before any RTT sample.
const INITIAL_RTT: Duration = Duration::from_millis(10);
/// Rounds over which the largest ACK aggregation is remembered (Linux BBR: 10).
const EXTRA_ACKED_WINDOW_ROUNDS: u64 = 10;
/// An aggregation epoch restarts after this many bytes, so one long epoch cannot grow the
/// allowance without bound.
const EXTRA_ACKED_EPOCH_MAX: u64 = 1 << 20;
/// The aggregation allowance never exceeds what the bandwidth delivers in this long.
const EXTRA_ACKED_MAX_TIME: Duration = Duration::from_millis(100);

/// Configuration of [`Bbr`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BbrConfig {
    /// Window before any measurement.
    pub initial_cwnd_bytes: u64,
    /// The window never goes below this.
    pub min_cwnd_bytes: u64,
    /// Hard cap of the pacing rate in bytes/s (a server may cap what a peer makes it send).
    pub max_rate: Option<u64>,
    /// Largest packet size; used for the window's packet allowance.
    pub mtu: u64,
}

impl Default for BbrConfig {
    fn default() -> Self {
        Self {
            initial_cwnd_bytes: 32 * 1400,
            min_cwnd_bytes: 4 * 1400,
            max_rate: None,
            mtu: 1400,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Startup,
    Drain,
    ProbeBw,
}

/// Statistics of the round trip that just ended.
#[derive(Debug, Clone, Copy)]
struct RoundEnd {
    min_rtt: Option<Duration>,
    delivered: u64,
    duration: Duration,
}

/// BBR rate controller; see the module documentation.
#[derive(Debug, Clone)]
pub struct Bbr {
    config: BbrConfig,
    epoch: Instant,
    sampler: DeliveryRateSampler,
    loss: LossEstimator,
    state: State,

    /// Windowed max of loss-compensated delivery rates (bytes/s), keyed by round count.
    bw: WindowedFilter,
    /// Windowed min of RTT samples (ns), keyed by ns since `epoch`.
    min_rtt_filter: WindowedFilter,
    min_rtt: Option<Duration>,

    round: u64,
    next_round_delivered: u64,
    round_start_delivered: u64,
    round_start_time: Instant,
    round_min_rtt: Option<Duration>,
    round_end: Option<RoundEnd>,

    full_bw: u64,
    full_bw_count: u32,
    filled_pipe: bool,

    cycle_index: usize,
    cycle_stamp: Instant,
    lost_in_cycle: bool,
    /// Draining a standing queue found by the delay guard.
    guard_drain: bool,
    /// No new guard action before this round (the queue needs time to drain).
    guard_holdoff_round: u64,

    pacing_gain: f64,
    cwnd_gain: f64,
    pacing_rate: u64,
    cwnd: u64,

    /// Bytes acknowledged by the ACK being processed.
    ack_acked: u64,
    /// ACK aggregation (Linux BBR's `extra_acked`): ACKs arrive in bursts (a receiver that
    /// acknowledges every few packets or after a delay, a peer that processes packets in
    /// batches), so over short spans more is acknowledged than the bandwidth explains. The
    /// window must cover that excess or the sender stalls between bursts; on loopback, where
    /// batching dominates the round trip, a window of 2 x BDP alone held a stream to ~1.6
    /// Gbit/s with the window full.
    extra_acked: WindowedFilter,
    ack_epoch_start: Instant,
    ack_epoch_acked: u64,
    /// Send time and "saw no queue" of recently acknowledged packets, in ACK order.
    recent: VecDeque<(Instant, bool)>,
    last_sample: Option<RateSample>,
}

impl Bbr {
    /// A controller starting at `now`.
    pub fn new(config: BbrConfig, now: Instant) -> Self {
        let mut config = config;
        config.mtu = config.mtu.max(1);
        config.min_cwnd_bytes = config.min_cwnd_bytes.max(config.mtu);
        config.initial_cwnd_bytes = config.initial_cwnd_bytes.max(config.min_cwnd_bytes);
        let mut bbr = Self {
            config,
            epoch: now,
            sampler: DeliveryRateSampler::new(now),
            loss: LossEstimator::new(config.mtu),
            state: State::Startup,
            bw: WindowedFilter::new(Extreme::Max, BW_WINDOW_ROUNDS),
            min_rtt_filter: WindowedFilter::new(
                Extreme::Min,
                u64::try_from(MIN_RTT_WINDOW.as_nanos()).unwrap_or(u64::MAX),
            ),
            min_rtt: None,
            round: 0,
            next_round_delivered: 0,
            round_start_delivered: 0,
            round_start_time: now,
            round_min_rtt: None,
            round_end: None,
            full_bw: 0,
            full_bw_count: 0,
            filled_pipe: false,
            cycle_index: 2,
            cycle_stamp: now,
            lost_in_cycle: false,
            guard_drain: false,
            guard_holdoff_round: 0,
            pacing_gain: STARTUP_GAIN,
            cwnd_gain: STARTUP_GAIN,
            pacing_rate: 0,
            cwnd: config.initial_cwnd_bytes,
            ack_acked: 0,
            extra_acked: WindowedFilter::new(Extreme::Max, EXTRA_ACKED_WINDOW_ROUNDS),
            ack_epoch_start: now,
            ack_epoch_acked: 0,
            recent: VecDeque::with_capacity(RECENT_ACKED),
            last_sample: None,
        };
        bbr.pacing_rate = bbr.initial_pacing_rate(INITIAL_RTT);
        bbr
    }

    /// Snapshot to store with a packet of `bytes` sent at `now`.
    pub fn on_packet_sent(
        &mut self,
        now: Instant,
        _bytes: u64,
        bytes_in_flight_before: u64,
    ) -> SendSnapshot {
        self.sampler.on_sent(now, bytes_in_flight_before)
    }

    /// A packet was newly acknowledged.
    pub fn on_packet_acked(
        &mut self,
        now: Instant,
        snapshot: &SendSnapshot,
        sent_time: Instant,
        bytes: u64,
        ack_delay: Duration,
    ) {
        self.sampler
            .on_acked(now, snapshot, sent_time, bytes, ack_delay);
        self.ack_acked = self.ack_acked.saturating_add(bytes);

        // Packet-timed round trips: a round ends when a packet sent after the previous round's
        // end is acknowledged.
        if snapshot.delivered >= self.next_round_delivered {
            self.next_round_delivered = self.sampler.delivered();
            self.round += 1;
            self.round_end = Some(RoundEnd {
                min_rtt: self.round_min_rtt,
                delivered: self
                    .sampler
                    .delivered()
                    .saturating_sub(self.round_start_delivered),
                duration: now.saturating_duration_since(self.round_start_time),
            });
            self.round_start_delivered = self.sampler.delivered();
            self.round_start_time = now;
            self.round_min_rtt = None;
        }

        // RTT of this very packet. The minimum is taken over raw samples (as in RFC 9002: a
        // peer overstating its ACK delay cannot lower it), but queue estimates leave out the
        // time the peer held the ACK back (never going below the minimum for it). Otherwise, at
        // a rate too low to fill the receiver's ACK threshold within its ACK delay, every ACK
        // comes a full delay late, every round looks like a standing queue (5 ms on a 0.3 ms
        // path), and the delay guard keeps cutting the estimate down to what such rounds
        // deliver: the sender cannot climb out of a low rate. The session caps the delay at
        // the agreed maximum, so a lying peer hides at most that much queue.
        let raw = now.saturating_duration_since(sent_time);
        let t = self.nanos_since_epoch(now);
        let v = u64::try_from(raw.as_nanos()).unwrap_or(u64::MAX);
        let min_rtt = Duration::from_nanos(self.min_rtt_filter.update(t, v));
        self.min_rtt = Some(min_rtt);
        let rtt = raw.saturating_sub(ack_delay).max(min_rtt.min(raw));
        self.round_min_rtt = Some(self.round_min_rtt.map_or(rtt, |m| m.min(rtt)));

        let queue_free = rtt.saturating_sub(min_rtt) <= classify_threshold(min_rtt);
        self.loss.on_acked(bytes, queue_free);
        if self.recent.len() == RECENT_ACKED {
            self.recent.pop_front();
        }
        self.recent.push_back((sent_time, queue_free));
    }

    /// A packet was declared lost.
    pub fn on_packet_lost(
        &mut self,
        _now: Instant,
        _snapshot: &SendSnapshot,
        sent_time: Instant,
        bytes: u64,
    ) {
        self.sampler.on_lost(bytes);
        self.lost_in_cycle = true;
        // The queue the packet met is the one its predecessor saw. No predecessor remembered:
        // assume a queue, so that an unknown loss never inflates the compensation.
        let queue_free = self
            .recent
            .iter()
            .rev()
            .find(|(t, _)| *t < sent_time)
            .is_some_and(|&(_, free)| free);
        self.loss.on_lost(bytes, queue_free);
    }

    /// All packets of one ACK were processed: update the model and the state machine.
    pub fn on_ack_processed(&mut self, now: Instant, rtt: &RttEstimator, bytes_in_flight: u64) {
        let sample = self.sampler.finish_ack(self.min_rtt);
        let acked = std::mem::take(&mut self.ack_acked);
        let round_end = self.round_end.take();
        if round_end.is_some() {
            self.loss.on_round();
        }

        if let Some(s) = sample {
            let comp = self.compensate(s.delivery_rate);
            let current = self.bw.get().unwrap_or(0);
            // App-limited samples only raise the estimate: they say the path can do at least
            // that much, never that it cannot do more.
            if !s.is_app_limited || comp >= current {
                self.bw.update(self.round, comp);
            }
            self.last_sample = Some(s);
        }

        if let Some(end) = round_end {
            // A round without a valid rate sample says nothing about the pipe, like an
            // app-limited one (Linux does not even end the round then). Counted as evidence,
            // the keepalive rounds of an idle session "found" the pipe full at a few hundred
            // bytes per second and ended Startup there.
            let no_evidence = sample.is_none_or(|s| s.is_app_limited);
            self.on_round_end(now, &end, no_evidence);
        }
        self.update_state(now, bytes_in_flight);
        self.update_pacing_rate(rtt);
        self.update_ack_aggregation(now, acked);
        self.update_cwnd(acked);
    }

    /// Measures how far acknowledgements run ahead of the bandwidth estimate (Linux BBR's
    /// `bbr_update_ack_aggregation`).
    fn update_ack_aggregation(&mut self, now: Instant, acked: u64) {
        let bw = self.bandwidth();
        if bw == 0 || acked == 0 {
            return;
        }
        let elapsed = now.saturating_duration_since(self.ack_epoch_start);
        let mut expected = (u128::from(bw) * elapsed.as_nanos() / 1_000_000_000) as u64;
        if self.ack_epoch_acked <= expected || self.ack_epoch_acked + acked >= EXTRA_ACKED_EPOCH_MAX
        {
            // ACKs caught up with (or fell behind) the bandwidth: a new epoch starts here.
            self.ack_epoch_acked = 0;
            self.ack_epoch_start = now;
            expected = 0;
        }
        self.ack_epoch_acked += acked;
        let extra = self.ack_epoch_acked.saturating_sub(expected).min(self.cwnd);
        self.extra_acked.update(self.round, extra);
    }

    /// The aggregation allowance added to the window, bounded by 100 ms of bandwidth.
    fn extra_acked(&self, bw: u64) -> u64 {
        let cap = (u128::from(bw) * EXTRA_ACKED_MAX_TIME.as_nanos() / 1_000_000_000) as u64;
        self.extra_acked.get().unwrap_or(0).min(cap)
    }

    /// The sender had nothing to send although the window allowed more.
    pub fn on_app_limited(&mut self, bytes_in_flight: u64) {
        self.sampler.on_app_limited(bytes_in_flight);
    }

    /// A retransmission timeout fired: halve the bandwidth estimate and the window, and go back
    /// to Startup, which regains a correct estimate within a few round trips if the timeout was
    /// an accident.
    pub fn on_rto(&mut self, _now: Instant) {
        if let Some(b) = self.bw.get() {
            // Halved per timeout, but never below the minimum window per second: a run of
            // timeouts (a delay spike far above the RTT) must not leave a pacing rate of bytes
            // per second and the next send hours away once the path is back.
            let floor = self.config.min_cwnd_bytes.max(1);
            self.bw.reset(self.round, (b / 2).max(floor));
        }
        self.state = State::Startup;
        self.filled_pipe = false;
        self.full_bw = 0;
        self.full_bw_count = 0;
        self.guard_drain = false;
        self.pacing_gain = STARTUP_GAIN;
        self.cwnd_gain = STARTUP_GAIN;
        self.cwnd = (self.cwnd / 2).max(self.config.min_cwnd_bytes);
        self.pacing_rate = match self.bw.get() {
            Some(b) => self.gain_rate(STARTUP_GAIN, b),
            None => self.initial_pacing_rate(INITIAL_RTT),
        };
    }

    /// Current pacing rate, bytes/s (always > 0).
    pub fn pacing_rate(&self) -> u64 {
        self.pacing_rate.max(1)
    }

    /// Current window, bytes.
    pub fn cwnd(&self) -> u64 {
        self.cwnd
    }

    /// Smoothed ratio of all losses.
    pub fn loss_rate(&self) -> f64 {
        self.loss.total()
    }

    /// Smoothed ratio of losses seen while the path had no queue (used for compensation).
    pub fn random_loss_rate(&self) -> f64 {
        self.loss.random()
    }

    /// Estimated bottleneck bandwidth (loss-compensated, capped at `max_rate`), bytes/s.
    pub fn btl_bw(&self) -> u64 {
        self.bandwidth()
    }

    /// Windowed minimum RTT, if measured.
    pub fn min_rtt(&self) -> Option<Duration> {
        self.min_rtt
    }

    /// Most recent delivery-rate sample (not compensated), if any.
    pub fn last_sample(&self) -> Option<&RateSample> {
        self.last_sample.as_ref()
    }

    /// Name of the state, for statistics.
    pub fn state_name(&self) -> &'static str {
        match self.state {
            State::Startup => "startup",
            State::Drain => "drain",
            State::ProbeBw => "probe_bw",
        }
    }

    fn nanos_since_epoch(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX)
    }

    fn loss_compensation(&self) -> f64 {
        self.loss.random().clamp(0.0, MAX_LOSS_COMPENSATION)
    }

    fn compensate(&self, rate: u64) -> u64 {
        (rate as f64 / (1.0 - self.loss_compensation())) as u64
    }

    /// Bandwidth estimate used for pacing and the window.
    fn bandwidth(&self) -> u64 {
        let bw = self.bw.get().unwrap_or(0);
        match self.config.max_rate {
            Some(m) => bw.min(m),
            None => bw,
        }
    }

    fn bdp(&self, bw: u64) -> Option<u64> {
        let min_rtt = self.min_rtt?;
        Some((u128::from(bw) * min_rtt.as_nanos() / 1_000_000_000).min(u128::from(u64::MAX)) as u64)
    }

    fn gain_rate(&self, gain: f64, bw: u64) -> u64 {
        let rate = (gain * PACING_MARGIN * bw as f64) as u64;
        self.cap_rate(rate.max(self.min_packet_rate()))
    }

    /// One full-size packet per minimum RTT: the least a session paces at. It matters after a
    /// quiet spell, when an idle session's estimate comes from app-limited samples (keepalive
    /// pings): two such sessions were measured pacing at 37 bytes/s on loopback, so the next
    /// connection on them crawled (seen by the reload test with two shards). A packet per
    /// round trip is far below any path's capacity, so the floor never outpaces a real one.
    fn min_packet_rate(&self) -> u64 {
        match self.min_rtt {
            Some(rtt) if !rtt.is_zero() => {
                let rate = u128::from(self.config.mtu) * 1_000_000_000 / rtt.as_nanos();
                u64::try_from(rate).unwrap_or(u64::MAX)
            }
            _ => 0,
        }
    }

    fn cap_rate(&self, rate: u64) -> u64 {
        let rate = rate.max(1);
        match self.config.max_rate {
            Some(m) => rate.min(m.max(1)),
            None => rate,
        }
    }

    fn initial_pacing_rate(&self, rtt: Duration) -> u64 {
        let rtt = rtt.max(Duration::from_micros(100));
        let rate = STARTUP_GAIN * self.cwnd as f64 / rtt.as_secs_f64();
        self.cap_rate(rate as u64)
    }

    fn on_round_end(&mut self, now: Instant, end: &RoundEnd, app_limited: bool) {
        let standing_queue = match (end.min_rtt, self.min_rtt) {
            (Some(r), Some(m)) => r.saturating_sub(m) > standing_threshold(m),
            _ => false,
        };

        if !self.filled_pipe && !app_limited {
            let bw = self.bw.get().unwrap_or(0);
            if bw as f64 >= self.full_bw as f64 * 1.25 {
                self.full_bw = bw;
                self.full_bw_count = 0;
            } else {
                self.full_bw_count += 1;
            }
            if self.full_bw_count >= FULL_BW_ROUNDS || (standing_queue && self.full_bw_count >= 1) {
                self.filled_pipe = true;
            }
        }

        if self.state == State::ProbeBw && standing_queue && self.round >= self.guard_holdoff_round
        {
            // The bottleneck was busy for the whole round: what it delivered is its rate.
            if !end.duration.is_zero() {
                let rate =
                    u128::from(end.delivered) * 1_000_000_000 / end.duration.as_nanos().max(1);
                let measured = self.compensate(u64::try_from(rate).unwrap_or(u64::MAX));
                if let Some(current) = self.bw.get().filter(|&c| measured > 0 && measured < c) {
                    // At most a bounded cut per action: a round can look queued without a
                    // queue (delay jitter on the path, or this node starved of CPU so that
                    // ACKs are read late), and what it "delivered" then says little. Uncapped,
                    // such rounds cut the estimate again and again, each from the last, and a
                    // 100 Mbit/s session was seen pacing at 1 Mbit/s for seconds. A real drop
                    // of the bottleneck rate still gets there within a few actions, and the
                    // max filter forgets the old rate after 10 rounds anyway.
                    let floor = (current as f64 * GUARD_MAX_CUT) as u64;
                    self.bw.reset(self.round, measured.max(floor));
                }
            }
            self.cycle_index = 1;
            self.cycle_stamp = now;
            self.pacing_gain = PROBE_GAINS[1];
            self.guard_drain = true;
            self.guard_holdoff_round = self.round + 2;
        }
    }

    fn update_state(&mut self, now: Instant, bytes_in_flight: u64) {
        match self.state {
            State::Startup => {
                if self.filled_pipe {
                    self.state = State::Drain;
                    self.pacing_gain = 1.0 / STARTUP_GAIN;
                    self.cwnd_gain = STARTUP_GAIN;
                }
            }
            State::Drain => {}
            State::ProbeBw => self.advance_cycle(now, bytes_in_flight),
        }
        if self.state == State::Drain {
            let bdp = self.bdp(self.bandwidth()).unwrap_or(0);
            if bytes_in_flight <= bdp {
                self.enter_probe_bw(now);
            }
        }
    }

    fn enter_probe_bw(&mut self, now: Instant) {
        self.state = State::ProbeBw;
        self.cwnd_gain = CWND_GAIN;
        // Start cruising: Startup just probed and Drain just drained.
        self.cycle_index = 2;
        self.cycle_stamp = now;
        self.pacing_gain = PROBE_GAINS[self.cycle_index];
        self.lost_in_cycle = false;
    }

    fn advance_cycle(&mut self, now: Instant, bytes_in_flight: u64) {
        let Some(min_rtt) = self.min_rtt else { return };
        let elapsed = now.saturating_duration_since(self.cycle_stamp);
        let full_length = elapsed > min_rtt;
        let gain = PROBE_GAINS[self.cycle_index];
        let bdp = self.bdp(self.bandwidth()).unwrap_or(0);
        let next = if self.guard_drain {
            bytes_in_flight <= bdp || elapsed > min_rtt * 8
        } else if gain > 1.0 {
            // Probe until the extra data is really in flight (or losses say the path is full);
            // never longer than a few round trips in case the sender runs out of data.
            (full_length && (self.lost_in_cycle || bytes_in_flight as f64 >= gain * bdp as f64))
                || elapsed > min_rtt * 4
        } else if gain < 1.0 {
            full_length || bytes_in_flight <= bdp
        } else {
            full_length
        };
        if next {
            self.guard_drain = false;
            self.cycle_index = (self.cycle_index + 1) % PROBE_GAINS.len();
            self.cycle_stamp = now;
            self.lost_in_cycle = false;
            self.pacing_gain = PROBE_GAINS[self.cycle_index];
        }
    }

    fn update_pacing_rate(&mut self, rtt: &RttEstimator) {
        let bw = self.bandwidth();
        if bw == 0 {
            if rtt.has_sample() {
                let rate = self.initial_pacing_rate(rtt.smoothed());
                if rate > self.pacing_rate {
                    self.pacing_rate = rate;
                }
            }
            return;
        }
        let rate = self.gain_rate(self.pacing_gain, bw);
        // In Startup the estimate lags the real rate; never slow down before the pipe is full.
        if self.filled_pipe || rate > self.pacing_rate {
            self.pacing_rate = rate;
        }
    }

    fn update_cwnd(&mut self, acked: u64) {
        let bw = self.bandwidth();
        let min_cwnd = self.config.min_cwnd_bytes;
        let Some(bdp) = self.bdp(bw).filter(|_| bw > 0) else {
            self.cwnd = self.cwnd.max(min_cwnd);
            return;
        };
        // Lost packets stay in flight until detected; leave room for them on lossy paths.
        let gain = self.cwnd_gain * (1.0 + 2.0 * self.loss_compensation());
        let target = (gain * bdp as f64) as u64 + self.extra_acked(bw) + 3 * self.config.mtu;
        if self.filled_pipe {
            self.cwnd = self.cwnd.saturating_add(acked).min(target);
        } else if self.cwnd < target || self.sampler.delivered() < self.config.initial_cwnd_bytes {
            self.cwnd = self.cwnd.saturating_add(acked);
        }
        self.cwnd = self.cwnd.max(min_cwnd);
    }
}

/// Queue delay above which a packet counts as sent into a queue (half the standing-queue
/// threshold, so that the short queue of a 1.25 probe is excluded too).
fn classify_threshold(min_rtt: Duration) -> Duration {
    (min_rtt / 20).max(Duration::from_micros(500))
}

/// Queue delay that, persisting over a whole round, means a standing queue.
fn standing_threshold(min_rtt: Duration) -> Duration {
    (min_rtt / 10).max(Duration::from_millis(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 10 MB/s: 10 kB per millisecond.
    const BW: u64 = 10_000_000;

    fn bbr_at(now: Instant) -> Bbr {
        let mut bbr = Bbr::new(BbrConfig::default(), now);
        bbr.bw.update(0, BW);
        bbr.cwnd = 4 << 20;
        bbr
    }

    #[test]
    fn timeouts_never_starve_the_pacing_rate() {
        let t0 = Instant::now();
        let mut bbr = bbr_at(t0);
        for _ in 0..64 {
            bbr.on_rto(t0);
        }
        let floor = BbrConfig::default().min_cwnd_bytes;
        assert!(
            bbr.bw.get().is_some_and(|b| b >= floor),
            "{:?}",
            bbr.bw.get()
        );
        assert!(bbr.pacing_rate() >= floor, "{}", bbr.pacing_rate());
    }

    #[test]
    fn a_round_that_only_looks_queued_cuts_the_estimate_by_a_bounded_share() {
        // Delay jitter (or a CPU-starved node reading its ACKs late) makes a round look queued
        // while it delivered next to nothing: the guard may lower the estimate, but by at most
        // GUARD_MAX_CUT per action, so a run of such rounds cannot collapse it.
        let t0 = Instant::now();
        let mut bbr = bbr_at(t0);
        bbr.state = State::ProbeBw;
        bbr.filled_pipe = true;
        bbr.min_rtt = Some(Duration::from_millis(50));
        let queued = RoundEnd {
            min_rtt: Some(Duration::from_millis(70)),
            delivered: 1_000,
            duration: Duration::from_millis(70),
        };
        bbr.on_round_end(t0, &queued, false);
        assert_eq!(bbr.bw.get(), Some((BW as f64 * GUARD_MAX_CUT) as u64));
        assert!(bbr.guard_drain);
        // A round that really measured the bottleneck lower (but within the bound) sets it.
        bbr.round = bbr.guard_holdoff_round;
        let bottleneck = RoundEnd {
            min_rtt: Some(Duration::from_millis(70)),
            delivered: 630_000,
            duration: Duration::from_millis(90),
        };
        bbr.on_round_end(t0, &bottleneck, false);
        assert_eq!(bbr.bw.get(), Some(7_000_000));
    }

    #[test]
    fn an_idle_sessions_tiny_estimate_still_paces_a_packet_per_round_trip() {
        let t0 = Instant::now();
        let mut bbr = Bbr::new(BbrConfig::default(), t0);
        // What app-limited keepalive samples left behind: a few dozen bytes per second.
        bbr.bw.update(0, 37);
        bbr.min_rtt = Some(Duration::from_micros(300));
        bbr.filled_pipe = true;
        let mut rtt = RttEstimator::new(Duration::from_millis(100), Default::default());
        rtt.update(Duration::ZERO, Duration::from_micros(300));
        bbr.update_pacing_rate(&rtt);
        let floor = BbrConfig::default().mtu * 1_000_000 / 300;
        assert!(
            bbr.pacing_rate() >= floor,
            "{} < {floor}",
            bbr.pacing_rate()
        );
    }

    #[test]
    fn acks_at_the_bandwidth_need_no_allowance() {
        let t0 = Instant::now();
        let mut bbr = bbr_at(t0);
        for ms in 1..=50 {
            bbr.update_ack_aggregation(t0 + Duration::from_millis(ms), BW / 1000);
        }
        assert!(bbr.extra_acked(BW) <= BW / 1000, "{}", bbr.extra_acked(BW));
    }

    #[test]
    fn bursts_of_acks_widen_the_window_by_the_burst() {
        let t0 = Instant::now();
        let mut bbr = bbr_at(t0);
        // Every 10 ms, 100 kB (10 ms worth) is acknowledged at once after a silence.
        for burst in 1..=5 {
            bbr.update_ack_aggregation(t0 + Duration::from_millis(10 * burst), 100_000);
        }
        let extra = bbr.extra_acked(BW);
        assert!((90_000..=100_000).contains(&extra), "{extra}");
        // The allowance is bounded by 100 ms of bandwidth whatever the bursts.
        bbr.update_ack_aggregation(t0 + Duration::from_millis(60), 2_000_000);
        assert_eq!(bbr.extra_acked(BW), BW / 10);
    }
}
