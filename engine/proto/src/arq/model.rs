//! Test-only packet-level model of one flow over a drop-tail bottleneck with random loss.
//!
//! The sender always has data, paces with [`Pacer`], obeys the controller's window and detects
//! losses with a packet threshold of 3 (there is no reordering, so that is exact) or a
//! retransmission timeout. The bottleneck is a FIFO drop-tail queue in front of a link of `rate`
//! bytes/s; after the link a seeded Bernoulli process drops packets at random; ACKs come back
//! after the base RTT and are never lost. The receiver acknowledges every `ack_every` packets or
//! `max_ack_delay` after the first unacknowledged one, whichever comes first, and reports how
//! long it held the ACK (as a session's receiver does).

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

use crate::arq::delivery::SendSnapshot;
use crate::arq::pacer::Pacer;
use crate::arq::rate::{RateControl, RateControlConfig};
use crate::arq::rtt::{RttClamp, RttEstimator};

const NS: u64 = 1_000_000_000;

#[derive(Debug, Clone)]
pub(crate) struct Link {
    /// Bottleneck rate, bytes/s.
    pub rate: u64,
    pub base_rtt: Duration,
    /// Random loss probability after the bottleneck.
    pub loss: f64,
    /// Drop-tail buffer, bytes.
    pub buffer: u64,
    pub mtu: u64,
    pub seed: u64,
    /// Packets per ACK (1: every packet is acknowledged at once).
    pub ack_every: u64,
    pub max_ack_delay: Duration,
}

/// What the model measured over the final measurement window.
#[derive(Debug, Clone)]
pub(crate) struct Outcome {
    /// Received bytes / (final link rate x (1 - loss) x window).
    pub goodput_ratio: f64,
    /// Mean btl_bw / final link rate.
    pub bw_ratio: f64,
    /// Mean pacing rate / final link rate.
    pub pacing_ratio: f64,
    pub mean_queue_ms: f64,
    pub p95_queue_ms: f64,
    pub loss_rate: f64,
    pub state: &'static str,
}

struct Sent {
    bytes: u64,
    sent_ns: u64,
    snapshot: SendSnapshot,
}

/// Runs `config` over `link` for `duration`, measuring the last `measure`; optionally the
/// bottleneck rate changes to `change.1` at `change.0`, and the controller is told of a
/// retransmission timeout at `spurious_rto`.
pub(crate) fn run(
    config: RateControlConfig,
    link: &Link,
    duration: Duration,
    measure: Duration,
    change: Option<(Duration, u64)>,
    spurious_rto: Option<Duration>,
) -> Outcome {
    let t0 = Instant::now();
    let at = |ns: u64| t0 + Duration::from_nanos(ns);
    let end_ns = duration.as_nanos() as u64;
    let measure_from = end_ns - measure.as_nanos() as u64;
    let base_ns = link.base_rtt.as_nanos() as u64;
    let (change_ns, new_rate) =
        change.map_or((u64::MAX, link.rate), |(t, r)| (t.as_nanos() as u64, r));
    let rate_at = |ns: u64| if ns >= change_ns { new_rate } else { link.rate };
    let mtu = link.mtu;

    let mut rng = ChaCha8Rng::seed_from_u64(link.seed);
    let mut rc = RateControl::new(config, t0);
    let mut rtt = RttEstimator::new(Duration::from_millis(333), RttClamp::default());
    let mut pacer = Pacer::new(Pacer::burst_for(rc.pacing_rate(), mtu));

    let mut now = 0u64;
    let mut next_pn = 0u64;
    let mut in_flight: BTreeMap<u64, Sent> = BTreeMap::new();
    let mut bytes_in_flight = 0u64;
    // ACKs on their way back: (arrival at the sender, packet numbers, ACK delay in ns).
    let mut acks: VecDeque<(u64, Vec<u64>, u64)> = VecDeque::new();
    // Arrived at the receiver and not yet acknowledged: (arrival, packet number).
    let mut unacked: Vec<(u64, u64)> = Vec::new();
    let half_rtt = base_ns / 2;
    let max_ack_delay = link.max_ack_delay.as_nanos() as u64;
    // The receiver sends an ACK at `at` for everything it holds.
    let flush = |unacked: &mut Vec<(u64, u64)>, acks: &mut VecDeque<_>, at: u64| {
        if let Some(&(last, _)) = unacked.last() {
            let pns = unacked.drain(..).map(|(_, pn)| pn).collect::<Vec<u64>>();
            acks.push_back((at + half_rtt, pns, at - last));
        }
    };
    let mut link_free = 0u64;
    let mut last_progress = 0u64;
    let mut backoff = 0u32;
    let mut spurious_rto_ns = spurious_rto.map(|d| d.as_nanos() as u64);

    let mut received = 0u64;
    let mut queue_samples: Vec<u64> = Vec::new();
    let mut bw_sum = 0f64;
    let mut pacing_sum = 0f64;
    let mut rate_samples = 0u64;
    let mut next_stat = measure_from;
    let stat_step = 10_000_000; // 10 ms

    while now < end_ns {
        // The receiver's delayed-ACK timer.
        if let Some(&(first, _)) = unacked.first()
            && first + max_ack_delay <= now
        {
            flush(&mut unacked, &mut acks, first + max_ack_delay);
        }
        // ACKs due now.
        while acks.front().is_some_and(|&(t, _, _)| t <= now) {
            let Some((_, pns, delay_ns)) = acks.pop_front() else {
                break;
            };
            let delay = Duration::from_nanos(delay_ns);
            let mut largest = None;
            for pn in pns {
                let Some(p) = in_flight.remove(&pn) else {
                    continue;
                };
                largest = Some((pn, p.sent_ns));
                bytes_in_flight -= p.bytes;
                rc.on_packet_acked(at(now), &p.snapshot, at(p.sent_ns), p.bytes, delay);
            }
            let Some((pn, sent_ns)) = largest else {
                continue;
            };
            rtt.update(delay, Duration::from_nanos(now - sent_ns));
            // Packet threshold 3.
            let lost: Vec<u64> = in_flight
                .range(..pn.saturating_sub(2))
                .map(|(&k, _)| k)
                .collect();
            for k in lost {
                if let Some(l) = in_flight.remove(&k) {
                    bytes_in_flight -= l.bytes;
                    rc.on_packet_lost(at(now), &l.snapshot, at(l.sent_ns), l.bytes);
                }
            }
            rc.on_ack_processed(at(now), &rtt, bytes_in_flight);
            last_progress = now;
            backoff = 0;
        }

        // Retransmission timeout: everything in flight is lost.
        let rto_at = last_progress + rtt.rto(backoff).as_nanos() as u64;
        if bytes_in_flight > 0 && now >= rto_at {
            for (_, l) in std::mem::take(&mut in_flight) {
                rc.on_packet_lost(at(now), &l.snapshot, at(l.sent_ns), l.bytes);
            }
            bytes_in_flight = 0;
            rc.on_rto(at(now));
            backoff += 1;
            last_progress = now;
        }

        // A timeout that the model's own timer did not see (e.g. a stalled peer).
        if spurious_rto_ns.is_some_and(|t| now >= t) {
            spurious_rto_ns = None;
            rc.on_rto(at(now));
        }

        // Send while window and pacer allow.
        let mut next_send = u64::MAX;
        while bytes_in_flight + mtu <= rc.cwnd() {
            let rate = rc.pacing_rate();
            pacer.set_burst(Pacer::burst_for(rate, mtu));
            if let Some(t) = pacer.delay_until(at(now), rate, mtu) {
                next_send = (t - t0).as_nanos() as u64;
                break;
            }
            let snapshot = rc.on_packet_sent(at(now), mtu, bytes_in_flight);
            pacer.on_sent(at(now), mtu);
            let pn = next_pn;
            next_pn += 1;
            in_flight.insert(
                pn,
                Sent {
                    bytes: mtu,
                    sent_ns: now,
                    snapshot,
                },
            );
            bytes_in_flight += mtu;
            if bytes_in_flight == mtu {
                last_progress = now;
            }

            // Bottleneck: drop-tail, then the link, then random loss.
            let queued_ns = link_free.saturating_sub(now);
            let r = rate_at(now);
            let queued_bytes = (queued_ns as u128 * r as u128 / NS as u128) as u64;
            if queued_bytes + mtu > link.buffer {
                continue;
            }
            let start = link_free.max(now);
            let service = (mtu * NS).div_ceil(rate_at(start));
            link_free = start + service;
            if now >= measure_from {
                queue_samples.push(start - now);
            }
            let u = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
            if u < link.loss {
                continue;
            }
            let arrival = link_free + half_rtt;
            if arrival >= measure_from && arrival < end_ns {
                received += mtu;
            }
            if let Some(&(first, _)) = unacked.first()
                && first + max_ack_delay <= arrival
            {
                flush(&mut unacked, &mut acks, first + max_ack_delay);
            }
            unacked.push((arrival, pn));
            if unacked.len() as u64 >= link.ack_every.max(1) {
                flush(&mut unacked, &mut acks, arrival);
            }
        }

        // Statistics every 10 ms of the measurement window.
        while now >= next_stat {
            bw_sum += rc.btl_bw() as f64;
            pacing_sum += rc.pacing_rate() as f64;
            rate_samples += 1;
            next_stat += stat_step;
        }

        let next_ack = acks.front().map_or(u64::MAX, |&(t, _, _)| t);
        let ack_timer = unacked
            .first()
            .map_or(u64::MAX, |&(first, _)| first + max_ack_delay);
        let rto = if bytes_in_flight > 0 {
            last_progress + rtt.rto(backoff).as_nanos() as u64
        } else {
            u64::MAX
        };
        now = next_ack
            .min(ack_timer)
            .min(next_send)
            .min(rto)
            .min(next_stat)
            .min(spurious_rto_ns.unwrap_or(u64::MAX))
            .min(end_ns)
            .max(now + 1);
    }

    queue_samples.sort_unstable();
    let n = queue_samples.len().max(1);
    let mean_q = queue_samples.iter().sum::<u64>() as f64 / n as f64;
    let p95_q = queue_samples.get(n * 95 / 100).copied().unwrap_or(0) as f64;
    let final_rate = rate_at(end_ns) as f64;
    let window_s = measure.as_secs_f64();
    let samples = rate_samples.max(1) as f64;
    Outcome {
        goodput_ratio: received as f64 / (final_rate * (1.0 - link.loss) * window_s),
        bw_ratio: bw_sum / samples / final_rate,
        pacing_ratio: pacing_sum / samples / final_rate,
        mean_queue_ms: mean_q / 1e6,
        p95_queue_ms: p95_q / 1e6,
        loss_rate: rc.loss_rate(),
        state: rc.state_name(),
    }
}
