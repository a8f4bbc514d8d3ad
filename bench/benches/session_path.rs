//! The whole data path through two in-memory [`engine_proto::Endpoint`]s with real
//! cryptography, after the handshake, for a bulk stream from `a` to `b` (see [`bench::Pair`]).
//!
//! One iteration is one GSO batch of 16 full 1400-byte datagrams (elements = datagrams), so
//! criterion's "thrpt" is datagrams per second and its time is per 16 datagrams.
//!
//! * `send`: `Session::write` of the batch's payload (amortised: the backlog is kept at about
//!   1 MiB) and one `Endpoint::poll_transmit` that builds and seals the 16 datagrams.
//! * `send_and_process_acks`: as `send`, plus `a`'s `Endpoint::handle_datagram` of the ACK
//!   packets `b` sent for those batches (one after each batch, as in `end_to_end`): the whole
//!   work of the sending side.
//! * `receive`: `Endpoint::handle_datagram` of 16 datagrams and `Session::read` of their data.
//!   The replay window rejects duplicates, so each iteration gets fresh datagrams, made by `a`
//!   outside the timed region before each measurement round.
//! * `receive_and_ack`: as `receive`, plus `b`'s `poll_transmit` of the ACK (and WINDOW)
//!   packets it owes after the batch.
//! * `end_to_end`: everything on one core: `a` sends the batch, `b` receives, reads and
//!   acknowledges, `a` processes the acknowledgements.
//!
//! Between measurement rounds (at most [`bench::MAX_ROUND`] batches), untimed, the rest of the
//! exchange happens (for `send`: `b` receives and acknowledges) so every round starts from the
//! same steady state: nothing in flight, windows open, a full send backlog.

use std::time::{Duration, Instant};

use bench::{BATCH, Datagrams, MAX_ROUND, Pair};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

const ROUND: u64 = 16;

/// Runs `iters` batches in rounds of [`ROUND`]; `round(pair, wire, n)` does one round of `n`
/// batches and returns the time of its measured part.
fn rounds(
    pair: &mut Pair,
    wire: &mut Datagrams,
    iters: u64,
    mut round: impl FnMut(&mut Pair, &mut Datagrams, usize) -> Duration,
) -> Duration {
    let mut elapsed = Duration::ZERO;
    let mut left = iters;
    while left > 0 {
        let n = left.min(ROUND);
        wire.clear();
        elapsed += round(pair, wire, n as usize);
        pair.housekeeping();
        left -= n;
    }
    elapsed
}

/// `a` sends `n` batches into `wire`, untimed; each must be a full GSO batch.
fn prepare(pair: &mut Pair, wire: &mut Datagrams, n: usize) {
    for _ in 0..n {
        let k = pair.send_batch(wire);
        assert_eq!(k, BATCH, "the sender must never be throttled");
    }
}

fn bench(c: &mut Criterion) {
    assert!(ROUND as usize <= MAX_ROUND);
    let mut group = c.benchmark_group("session_path");
    group.throughput(Throughput::Elements(BATCH as u64));

    group.bench_function("send", |b| {
        let mut pair = Pair::new();
        let mut wire = Datagrams::with_batches(ROUND as usize);
        b.iter_custom(|iters| {
            rounds(&mut pair, &mut wire, iters, |pair, wire, n| {
                let start = Instant::now();
                let mut sent = 0;
                for _ in 0..n {
                    sent += pair.send_batch(wire);
                }
                let t = start.elapsed();
                assert_eq!(sent, n * BATCH, "the sender must never be throttled");
                for i in 0..n {
                    pair.receive_batch(wire, i);
                }
                pair.read_b();
                pair.reply();
                t
            })
        });
    });

    group.bench_function("send_and_process_acks", |b| {
        let mut pair = Pair::new();
        let mut wire = Datagrams::with_batches(ROUND as usize);
        b.iter_custom(|iters| {
            rounds(&mut pair, &mut wire, iters, |pair, wire, n| {
                let start = Instant::now();
                let mut sent = 0;
                for _ in 0..n {
                    sent += pair.send_batch(wire);
                }
                let mut t = start.elapsed();
                assert_eq!(sent, n * BATCH, "the sender must never be throttled");
                // `b` acknowledges batch by batch, as in `end_to_end`, untimed.
                for i in 0..n {
                    pair.receive_batch(wire, i);
                    pair.read_b();
                    pair.send_replies();
                }
                let start = Instant::now();
                pair.handle_replies();
                t += start.elapsed();
                t
            })
        });
    });

    group.bench_function("receive", |b| {
        let mut pair = Pair::new();
        let mut wire = Datagrams::with_batches(ROUND as usize);
        b.iter_custom(|iters| {
            rounds(&mut pair, &mut wire, iters, |pair, wire, n| {
                prepare(pair, wire, n);
                let start = Instant::now();
                for i in 0..n {
                    pair.receive_batch(wire, i);
                    pair.read_b();
                }
                let t = start.elapsed();
                pair.reply();
                t
            })
        });
    });

    group.bench_function("receive_and_ack", |b| {
        let mut pair = Pair::new();
        let mut wire = Datagrams::with_batches(ROUND as usize);
        b.iter_custom(|iters| {
            rounds(&mut pair, &mut wire, iters, |pair, wire, n| {
                prepare(pair, wire, n);
                let start = Instant::now();
                for i in 0..n {
                    pair.receive_batch(wire, i);
                    pair.read_b();
                    pair.send_replies();
                }
                let t = start.elapsed();
                pair.handle_replies();
                t
            })
        });
    });

    group.bench_function("end_to_end", |b| {
        let mut pair = Pair::new();
        let mut wire = Datagrams::with_batches(ROUND as usize);
        b.iter_custom(|iters| {
            rounds(&mut pair, &mut wire, iters, |pair, wire, n| {
                let start = Instant::now();
                let mut sent = 0;
                for i in 0..n {
                    sent += pair.send_batch(wire);
                    pair.receive_batch(wire, i);
                    pair.read_b();
                    pair.reply();
                }
                let t = start.elapsed();
                assert_eq!(sent, n * BATCH, "the sender must never be throttled");
                t
            })
        });
    });

    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
