//! Frame encoding and decoding of a full-size data packet: an ACK frame with four ranges, a
//! stream WINDOW frame and a STREAM frame whose data fills the rest of a 1400-byte datagram's
//! payload (1339 bytes), through the public wire API.

use std::hint::black_box;
use std::ops::Range;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use engine_proto::crypto::TAG_LEN;
use engine_proto::wire::{
    AckFrame, Frame, FrameIter, Header, Side, StreamFrameHeader, StreamId, WindowTarget, Writer,
};

const MTU: usize = 1400;
/// Room for frames in a full-size data packet.
const PAYLOAD: usize = MTU - Header::DATA_LEN - TAG_LEN;

/// Four ACK ranges, highest first, as after a little loss.
fn ack_ranges() -> [Range<u64>; 4] {
    [
        1_000_100..1_000_140,
        1_000_050..1_000_090,
        1_000_010..1_000_040,
        999_000..1_000_000,
    ]
}

/// Encodes the packet's frames into `buf`; returns the bytes written (always `buf.len()`).
fn encode(buf: &mut [u8], data: &[u8], offset: u64) -> usize {
    let id = StreamId::new(Side::Client, 3);
    let mut w = Writer::new(buf);
    AckFrame::encode(&mut w, 250, ack_ranges().into_iter(), 256).expect("ACK fits");
    Frame::Window {
        target: WindowTarget::Stream(id),
        max: offset + (16 << 20),
    }
    .encode(&mut w)
    .expect("WINDOW fits");
    // The last frame runs to the end of the packet and omits its length, as the sender does.
    let max_header = StreamFrameHeader::max_len(id, offset);
    let len = w.remaining().saturating_sub(max_header).min(data.len());
    let header = StreamFrameHeader {
        id,
        offset,
        len,
        fin: false,
        has_len: false,
    };
    header.encode(&mut w).expect("STREAM header fits");
    w.bytes(&data[..len]).expect("STREAM data fits");
    w.len()
}

/// Parses every frame and touches what a receiver would: each ACK range and the stream data.
fn decode(packet: &[u8]) -> u64 {
    let mut acc = 0u64;
    for frame in FrameIter::new(packet) {
        match frame.expect("well-formed frame") {
            Frame::Ack(ack) => {
                for r in ack.ranges() {
                    acc = acc.wrapping_add(r.end - r.start);
                }
            }
            Frame::Window { max, .. } => acc = acc.wrapping_add(max),
            Frame::Stream { offset, data, .. } => {
                acc = acc.wrapping_add(offset + data.len() as u64);
            }
            _ => acc = acc.wrapping_add(1),
        }
    }
    acc
}

fn bench(c: &mut Criterion) {
    let data = vec![0xa5u8; PAYLOAD];
    let offset = 123_456_789;
    let mut packet = vec![0u8; PAYLOAD];
    let n = encode(&mut packet, &data, offset);
    packet.truncate(n);
    // Sanity: three frames, the stream frame carries about 1330 bytes.
    let stream_len = FrameIter::new(&packet)
        .find_map(|f| match f {
            Ok(Frame::Stream { data, .. }) => Some(data.len()),
            _ => None,
        })
        .expect("a STREAM frame");
    assert!((1300..PAYLOAD).contains(&stream_len), "{stream_len}");
    assert_eq!(FrameIter::new(&packet).count(), 3);

    let mut group = c.benchmark_group("frames");
    group.throughput(Throughput::Elements(1));
    group.bench_function("encode_full_packet", |b| {
        let mut buf = vec![0u8; PAYLOAD];
        let mut off = offset;
        b.iter(|| {
            off += 1;
            black_box(encode(&mut buf, black_box(&data), off))
        });
    });
    group.bench_function("decode_full_packet", |b| {
        b.iter(|| black_box(decode(black_box(&packet))));
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
