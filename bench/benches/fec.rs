//! FEC codecs: encode and decode of one group of 1350-byte shards, decode recovering the
//! maximum number of lost data shards (as many as there are parity shards).
//!
//! Codecs: `gf256` (ours, `engine_proto::fec::Gf256Rs`: Cauchy RS over GF(2^8) on
//! `reed-solomon-erasure`'s SIMD kernels), `rse` (`reed-solomon-erasure`'s own `ReedSolomon`,
//! `simd-accel`), `leopard` (`engine_proto::fec::LeopardRs` over `reed-solomon-simd`).
//! `rse/decode_warm` repeats one erasure pattern, so its decode-matrix cache always hits;
//! `rse/decode_cold` uses a fresh codec per recovery (the matrix inversion of a cache miss).
//!
//! Shapes: (10,3) and (20,2) are the acceptance shapes; (32,8), (64,16) and (128,32) place
//! the threshold between the GF(2^8) codec and Leopard (`Codec::GF256_MAX_SHARDS`).
//! Throughput is the group's data bytes.

use std::hint::black_box;
use std::time::Duration;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use engine_proto::fec::{ErasureCode, Gf256Rs, LeopardRs};
use reed_solomon_erasure::galois_8::ReedSolomon;

const SHARD: usize = 1350;

struct Group {
    data: Vec<Vec<u8>>,
    parity: Vec<Vec<u8>>,
    /// All shards, lost data shards overwritten with garbage.
    shards: Vec<Vec<u8>>,
    present: Vec<bool>,
}

impl Group {
    /// The same data and losses with another code's parity.
    fn with_parity(&self, parity: Vec<Vec<u8>>) -> Self {
        let d = self.data.len();
        Self {
            shards: self.shards[..d].iter().chain(&parity).cloned().collect(),
            data: self.data.clone(),
            parity,
            present: self.present.clone(),
        }
    }

    /// A group with the first `parity` data shards lost (the worst case: every parity shard is
    /// needed). Lost shards are spread over the group by taking every other one.
    fn new(d: usize, p: usize) -> Self {
        let data: Vec<Vec<u8>> = (0..d)
            .map(|i| (0..SHARD).map(|b| (i * 31 + b * 7 + 1) as u8).collect())
            .collect();
        let mut parity = vec![vec![0u8; SHARD]; p];
        Gf256Rs::new(d, p)
            .unwrap()
            .encode(&data, &mut parity)
            .unwrap();
        let mut present = vec![true; d + p];
        let mut lost = 0;
        let mut i = 0;
        while lost < p {
            present[i % d] = false;
            lost += 1;
            i += if d >= 2 * p { 2 } else { 1 };
        }
        let mut shards: Vec<Vec<u8>> = data.iter().chain(&parity).cloned().collect();
        for (s, here) in shards.iter_mut().zip(&present) {
            if !here {
                s.fill(0xa5);
            }
        }
        Self {
            data,
            parity,
            shards,
            present,
        }
    }
}

/// Checks `code` once (untimed, so a bench filter cannot skip it): its parity is `g.parity`
/// and its recovery restores the data. Then benches its encode and decode.
fn bench_code<C: ErasureCode>(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    code: &mut C,
    g: &Group,
) {
    let mut parity = vec![vec![0u8; SHARD]; g.parity.len()];
    code.encode(&g.data, &mut parity).unwrap();
    assert_eq!(parity, g.parity, "{name} parity");
    let mut shards = g.shards.clone();
    code.reconstruct(&mut shards, &g.present).unwrap();
    assert_eq!(
        &shards[..g.data.len()],
        &g.data[..],
        "{name} recovered data"
    );

    group.bench_function(format!("{name}/encode"), |b| {
        b.iter(|| code.encode(black_box(&g.data), &mut parity).unwrap())
    });
    let mut shards = g.shards.clone();
    group.bench_function(format!("{name}/decode"), |b| {
        b.iter(|| {
            code.reconstruct(black_box(&mut shards), &g.present)
                .unwrap()
        })
    });
}

fn bench(c: &mut Criterion) {
    for (d, p) in [(10, 3), (20, 2), (32, 8), (64, 16), (128, 32)] {
        let g = Group::new(d, p);
        let mut group = c.benchmark_group(format!("fec/{d}_{p}"));
        group.throughput(Throughput::Bytes((d * SHARD) as u64));
        if d > 20 {
            group.warm_up_time(Duration::from_millis(500));
            group.measurement_time(Duration::from_secs(2));
        }

        bench_code(&mut group, "gf256", &mut Gf256Rs::new(d, p).unwrap(), &g);

        // Leopard's and rse's parity are different codes: each is checked by its own recovery.
        let mut leopard = LeopardRs::new(d, p).unwrap();
        let mut parity = g.parity.clone();
        leopard.encode(&g.data, &mut parity).unwrap();
        bench_code(&mut group, "leopard", &mut leopard, &g.with_parity(parity));

        let rse = ReedSolomon::new(d, p).unwrap();
        let mut parity = g.parity.clone();
        rse.encode_sep(&g.data, &mut parity).unwrap();
        let rg = g.with_parity(parity.clone());
        let lost: Vec<(Vec<u8>, bool)> = rg
            .shards
            .iter()
            .cloned()
            .zip(rg.present.iter().copied())
            .collect();
        let mut shards = lost.clone();
        rse.reconstruct_data(&mut shards).unwrap();
        for (s, d) in shards.iter().zip(&rg.data) {
            assert_eq!(&s.0, d, "rse recovered data");
        }

        group.bench_function("rse/encode", |b| {
            b.iter(|| rse.encode_sep(black_box(&g.data), &mut parity).unwrap())
        });
        // `reconstruct_data` leaves the present flags as they are: every iteration recovers.
        let mut shards = lost.clone();
        group.bench_function("rse/decode_warm", |b| {
            b.iter(|| rse.reconstruct_data(black_box(&mut shards)).unwrap())
        });
        group.bench_function("rse/decode_cold", |b| {
            b.iter_batched_ref(
                || ReedSolomon::new(d, p).unwrap(),
                |rse| rse.reconstruct_data(black_box(&mut shards)).unwrap(),
                BatchSize::SmallInput,
            )
        });
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
