//! Per-packet AEAD: `PacketKey::seal_in_place` and `open_in_place` of a 1350-byte payload with a
//! 9-byte data-packet header as associated data.
//!
//! Reported twice: per packet (`aead/packets`, elements = packets) and per byte (`aead/bytes`),
//! so both the packet rate and the bandwidth are printed.

use std::hint::black_box;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use engine_proto::crypto::{PacketKey, TAG_LEN};
use engine_proto::wire::{Header, SessionId, Writer};

const PAYLOAD: usize = 1350;

fn header(pn: u64) -> [u8; Header::DATA_LEN] {
    let mut h = [0u8; Header::DATA_LEN];
    Header::data(SessionId::new(1, 0x1234), false, pn)
        .emit(&mut Writer::new(&mut h))
        .expect("a data header fits");
    h
}

/// A sealed packet body (ciphertext then tag) for `pn`.
fn sealed(key: &PacketKey, pn: u64) -> Vec<u8> {
    let mut body = vec![0x5a; PAYLOAD + TAG_LEN];
    let tag = key.seal_in_place(pn, &header(pn), &mut body[..PAYLOAD]);
    body[PAYLOAD..].copy_from_slice(&tag);
    body
}

fn bench(c: &mut Criterion) {
    let key = PacketKey::new(&[7; 32]);
    let head = header(1);
    let packet = sealed(&key, 1);
    for (group_name, throughput) in [
        ("aead/packets", Throughput::Elements(1)),
        ("aead/bytes", Throughput::Bytes(PAYLOAD as u64)),
    ] {
        let mut group = c.benchmark_group(group_name);
        group.throughput(throughput);
        group.bench_function("seal_1350", |b| {
            let mut body = vec![0x5a; PAYLOAD];
            let mut pn = 0u64;
            b.iter(|| {
                pn += 1;
                black_box(key.seal_in_place(pn, black_box(&head), &mut body))
            });
        });
        // Opening destroys the ciphertext, so every iteration gets its own copy; the copy is
        // made outside the timed region.
        group.bench_function("open_1350", |b| {
            b.iter_batched_ref(
                || packet.clone(),
                |body| {
                    let plain = key
                        .open_in_place(1, black_box(&head), body)
                        .expect("authentic packet");
                    black_box(plain.len())
                },
                BatchSize::SmallInput,
            );
        });
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
