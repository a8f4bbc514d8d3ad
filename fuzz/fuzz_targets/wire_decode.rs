//! The wire parsers: any bytes must parse as a packet header and a sequence of frames, as a
//! stateless reset, or as handshake parameters, or be rejected, without a panic; whatever
//! parses must encode back to something that parses to the same value, and ACK ranges must
//! come out non-empty, descending and disjoint.

#![no_main]

use std::ops::Range;

use engine_proto::wire::{
    AckFrame, Frame, FrameIter, HandshakeParams, Header, MAX_NODE_NAME_LEN, PacketType,
    ParityHeader, StatelessReset, StreamFrameHeader, Writer, decode_packet_number,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let payload = match Header::parse(data) {
        Ok((header, len)) => {
            assert_eq!(len, header.len());
            // Every bit of the header means something, so it re-encodes byte for byte.
            let mut buf = [0u8; Header::DATA_LEN];
            let mut w = Writer::new(&mut buf);
            header.emit(&mut w).expect("a header fits 9 bytes");
            assert_eq!(w.written(), &data[..len]);
            &data[len..]
        }
        // Not a packet: still a good frame parser input.
        Err(_) => data,
    };

    check_reset(data);
    check_parity(data);
    check_params(data);

    let mut frames = FrameIter::new(payload);
    for frame in frames.by_ref() {
        match frame {
            Ok(Frame::Ack(ack)) => check_ack(&ack),
            Ok(frame) => check_round_trip(&frame),
            Err(_) => break,
        }
    }
    assert!(frames.next().is_none(), "FrameIter goes on after an error");

    if let Some((largest, truncated)) = pn_input(data) {
        let pn = decode_packet_number(largest, truncated);
        assert_eq!(
            pn as u32, truncated,
            "decoded packet number keeps the sent bits"
        );
    }
});

fn check_reset(data: &[u8]) {
    let Ok(reset) = StatelessReset::parse(data) else {
        return;
    };
    let Ok((header, _)) = Header::parse(data) else {
        panic!("a reset without a header");
    };
    assert_eq!(header.ty, PacketType::StatelessReset);
    let mut buf = [0u8; StatelessReset::LEN];
    reset
        .emit(&mut Writer::new(&mut buf))
        .expect("a reset fits its length");
    assert_eq!(StatelessReset::parse(&buf), Ok(reset));
    // Everything but the key-phase bit (ignored in resets) and trailing bytes re-encodes.
    assert_eq!(buf[0], data[0] & !0x10);
    assert_eq!(buf[1..], data[1..StatelessReset::LEN]);
}

fn check_parity(data: &[u8]) {
    let Ok((header, shard)) = ParityHeader::parse(data) else {
        return;
    };
    assert!(header.index < header.parity && header.stride >= 1 && header.data >= 1);
    let mut buf = [0u8; ParityHeader::LEN];
    header
        .emit(&mut Writer::new(&mut buf))
        .expect("a parsed parity header encodes");
    assert_eq!(buf[..], data[..ParityHeader::LEN]);
    assert_eq!(shard, &data[ParityHeader::LEN..]);
}

fn check_params(data: &[u8]) {
    let Ok(params) = HandshakeParams::decode(data) else {
        return;
    };
    assert!(params.name.is_none_or(|n| n.len() <= MAX_NODE_NAME_LEN));
    let mut out = Vec::new();
    params.encode(&mut out).expect("decoded parameters encode");
    assert_eq!(out.len(), params.encoded_len());
    assert_eq!(HandshakeParams::decode(&out), Ok(params));
    // Re-encoding drops unknown parameters but keeps the session id.
    assert_eq!(out[..4], data[..4]);
}

fn check_ack(ack: &AckFrame<'_>) {
    let ranges: Vec<Range<u64>> = ack.ranges().collect();
    let first = ranges.first().expect("an ACK acknowledges something");
    assert_eq!(first.end, ack.largest + 1);
    for r in &ranges {
        assert!(r.start < r.end, "empty ACK range {r:?}");
    }
    for pair in ranges.windows(2) {
        assert!(
            pair[1].end < pair[0].start,
            "ACK ranges {pair:?} not descending"
        );
    }
    // Re-encode every range and parse them back.
    let mut buf = vec![0u8; 64 + 16 * ranges.len()];
    let mut w = Writer::new(&mut buf);
    let n = AckFrame::encode(&mut w, ack.ack_delay_us, ranges.iter().cloned(), usize::MAX)
        .expect("parsed ACK ranges encode");
    assert_eq!(n, ranges.len(), "room for every range");
    let len = w.len();
    let mut iter = FrameIter::new(&buf[..len]);
    let Some(Ok(Frame::Ack(again))) = iter.next() else {
        panic!("re-encoded ACK does not parse");
    };
    assert!(iter.next().is_none());
    assert_eq!(again.ack_delay_us, ack.ack_delay_us);
    assert_eq!(again.largest, ack.largest);
    assert_eq!(again.ranges().collect::<Vec<_>>(), ranges);
    assert_eq!(Frame::Ack(again).encoded_len(), len);
}

fn check_round_trip(frame: &Frame<'_>) {
    let mut buf = vec![0u8; frame.encoded_len()];
    let mut w = Writer::new(&mut buf);
    frame.encode(&mut w).expect("a parsed frame encodes");
    assert_eq!(w.len(), frame.encoded_len(), "{frame:?}");
    assert_eq!(parse_one(&buf), *frame);

    // A STREAM frame may also leave its length out and run to the end of the packet.
    if let Frame::Stream {
        id,
        offset,
        fin,
        data,
    } = *frame
    {
        let header = StreamFrameHeader {
            id,
            offset,
            len: data.len(),
            fin,
            has_len: false,
        };
        let mut buf = vec![0u8; header.encoded_len() + data.len()];
        let mut w = Writer::new(&mut buf);
        header.encode(&mut w).expect("room for the header");
        w.bytes(data).expect("room for the data");
        assert!(header.encoded_len() <= StreamFrameHeader::max_len(id, offset));
        assert_eq!(parse_one(&buf), *frame);
    }
}

/// The only frame in `buf`.
fn parse_one(buf: &[u8]) -> Frame<'_> {
    let mut iter = FrameIter::new(buf);
    let frame = match iter.next() {
        Some(Ok(f)) => f,
        other => panic!("re-encoded frame does not parse: {other:?}"),
    };
    assert!(iter.next().is_none(), "re-encoded frame has trailing bytes");
    frame
}

/// A (largest received, truncated) packet number pair from the input's first 12 bytes.
fn pn_input(data: &[u8]) -> Option<(Option<u64>, u32)> {
    let largest = u64::from_le_bytes(data.get(..8)?.try_into().ok()?);
    let truncated = u32::from_le_bytes(data.get(8..12)?.try_into().ok()?);
    // Packet numbers are varints on the wire (below 2^62); the top bit stands for "none yet".
    let largest = (largest >> 63 == 0).then_some(largest & ((1 << 62) - 1));
    Some((largest, truncated))
}
