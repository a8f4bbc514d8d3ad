//! The tunnel format of UDP maps' datagrams, without any I/O: the fragment header of `datagram`
//! mode, splitting a datagram into fragments that each fit one DATAGRAM frame, their bounded
//! reassembly, and the length-prefixed framing of `reliable` mode's streams.
//!
//! A fragment is `[map id varint][flow varint][message u16][index u8][count u8][payload]`.
//! The flow id is chosen by the node with the `maps` entry, one per client address, and is
//! unique per session; the flow varint is `id * 2 + 1` towards the target (from the `maps`
//! node) and `id * 2` back, so both nodes can run maps over one session without their flow
//! ids meeting. The message number is counted per flow and direction, so the fragments
//! of one datagram are told apart from another's. Everything here takes untrusted input: a
//! malformed fragment is an error, never a panic, and reassembly holds a bounded number of
//! incomplete datagrams for a bounded time.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use engine_proto::wire::{Reader, Writer, varint_len};

/// Most fragments one datagram may be split into (the count is one byte).
pub(crate) const MAX_FRAGMENTS: usize = 255;
/// Most incomplete datagrams held per flow; starting another drops the oldest.
pub(crate) const MAX_PARTIAL: usize = 8;
/// How long the fragments of an incomplete datagram are kept.
pub(crate) const REASSEMBLY_TIMEOUT: Duration = Duration::from_secs(3);
/// The largest datagram `reliable` mode frames (its length prefix is a u16), which is also more
/// than any UDP payload.
pub(crate) const MAX_RELIABLE_LEN: usize = u16::MAX as usize;
/// The bytes a `reliable` stream starts with, so the `allow` side can refuse a stream that a
/// TCP map (with the same id on the other node) opened.
pub(crate) const RELIABLE_PREAMBLE: &[u8; 8] = b"ctudp\0\0\x01";

/// The largest flow id (the varint also carries the direction).
pub(crate) const MAX_FLOW_ID: u64 = (1 << 61) - 1;

/// A UDP flow, as numbered by the node with the `maps` entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct FlowId(pub(crate) u64);

/// What a fragment's header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FragmentHeader {
    pub(crate) map: u32,
    pub(crate) flow: FlowId,
    /// Sent by the `maps` node (towards the target), rather than back.
    pub(crate) to_target: bool,
    pub(crate) message: u16,
    pub(crate) index: u8,
    pub(crate) count: u8,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum FrameError {
    #[error("malformed fragment header")]
    Malformed,
    #[error("fragment index out of range")]
    BadIndex,
    #[error("datagram too large for {MAX_FRAGMENTS} fragments")]
    TooLarge,
    #[error("fragment limit too small for the header")]
    NoRoom,
}

impl FragmentHeader {
    fn flow_varint(&self) -> u64 {
        (self.flow.0 & MAX_FLOW_ID) << 1 | u64::from(self.to_target)
    }

    fn encoded_len(&self) -> usize {
        varint_len(u64::from(self.map)) + varint_len(self.flow_varint()) + 4
    }

    fn write(&self, w: &mut Writer<'_>) -> Result<(), FrameError> {
        let malformed = |_| FrameError::Malformed;
        w.varint(u64::from(self.map)).map_err(malformed)?;
        w.varint(self.flow_varint()).map_err(malformed)?;
        w.bytes(&self.message.to_be_bytes()).map_err(malformed)?;
        w.u8(self.index).map_err(malformed)?;
        w.u8(self.count).map_err(malformed)
    }
}

/// Splits `payload` into fragments of at most `max_len` bytes each (header included): the
/// DATAGRAM frames to send, in order.
pub(crate) fn fragment(
    map: u32,
    flow: FlowId,
    to_target: bool,
    message: u16,
    payload: &[u8],
    max_len: usize,
) -> Result<Vec<Vec<u8>>, FrameError> {
    let mut header = FragmentHeader {
        map,
        flow,
        to_target,
        message,
        index: 0,
        count: 1,
    };
    let room = max_len
        .checked_sub(header.encoded_len())
        .filter(|&r| r > 0)
        .ok_or(FrameError::NoRoom)?;
    let count = payload.len().div_ceil(room).max(1);
    header.count = u8::try_from(count)
        .ok()
        .filter(|&c| usize::from(c) <= MAX_FRAGMENTS)
        .ok_or(FrameError::TooLarge)?;
    // Equal-sized pieces rather than full ones and a runt: the same number of frames, and no
    // fragment much smaller than the others.
    let piece = payload.len().div_ceil(count).max(1);
    let mut out = Vec::with_capacity(count);
    let mut chunks = payload.chunks(piece);
    for index in 0..count {
        let chunk = chunks.next().unwrap_or_default();
        header.index = index as u8;
        let mut buf = vec![0u8; header.encoded_len() + chunk.len()];
        let mut w = Writer::new(&mut buf);
        header.write(&mut w)?;
        w.bytes(chunk).map_err(|_| FrameError::Malformed)?;
        out.push(buf);
    }
    Ok(out)
}

/// Reads a fragment: its header and payload.
pub(crate) fn decode(fragment: &[u8]) -> Result<(FragmentHeader, &[u8]), FrameError> {
    let mut r = Reader::new(fragment);
    let malformed = |_| FrameError::Malformed;
    let map = u32::try_from(r.varint().map_err(malformed)?).map_err(|_| FrameError::Malformed)?;
    let flow = r.varint().map_err(malformed)?;
    let message = u16::from_be_bytes(r.array::<2>().map_err(malformed)?);
    let index = r.u8().map_err(malformed)?;
    let count = r.u8().map_err(malformed)?;
    if count == 0 || index >= count {
        return Err(FrameError::BadIndex);
    }
    let header = FragmentHeader {
        map,
        flow: FlowId(flow >> 1),
        to_target: flow & 1 == 1,
        message,
        index,
        count,
    };
    Ok((header, r.rest()))
}

/// What one fragment did to its flow's reassembly.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Reassembled {
    /// The datagram is whole.
    Complete(Vec<u8>),
    /// More fragments are needed.
    Pending,
    /// The fragment contradicts the others of its message (another count) or repeats one: it
    /// is ignored.
    Ignored,
}

/// One datagram being put together.
#[derive(Debug)]
struct Partial {
    message: u16,
    started: Instant,
    pieces: Vec<Option<Vec<u8>>>,
    missing: usize,
}

/// The incomplete datagrams of one flow and direction.
#[derive(Debug, Default)]
pub(crate) struct Reassembly {
    partial: VecDeque<Partial>,
    /// Incomplete datagrams given up on (evicted or expired) since the last look.
    dropped: u64,
}

impl Reassembly {
    /// Adds a fragment (already decoded); a single-fragment datagram is complete at once.
    pub(crate) fn push(
        &mut self,
        now: Instant,
        header: &FragmentHeader,
        payload: &[u8],
    ) -> Reassembled {
        if header.count == 1 {
            return Reassembled::Complete(payload.to_vec());
        }
        let count = usize::from(header.count);
        let index = usize::from(header.index);
        let position = self
            .partial
            .iter()
            .position(|p| p.message == header.message);
        let position = match position {
            Some(i) => i,
            None => {
                if self.partial.len() >= MAX_PARTIAL {
                    self.partial.pop_front();
                    self.dropped += 1;
                }
                self.partial.push_back(Partial {
                    message: header.message,
                    started: now,
                    pieces: vec![None; count],
                    missing: count,
                });
                self.partial.len() - 1
            }
        };
        let Some(partial) = self.partial.get_mut(position) else {
            return Reassembled::Ignored;
        };
        if partial.pieces.len() != count {
            return Reassembled::Ignored;
        }
        match partial.pieces.get_mut(index) {
            Some(slot @ None) => *slot = Some(payload.to_vec()),
            _ => return Reassembled::Ignored,
        }
        partial.missing -= 1;
        if partial.missing > 0 {
            return Reassembled::Pending;
        }
        let Some(done) = self.partial.remove(position) else {
            return Reassembled::Ignored;
        };
        Reassembled::Complete(done.pieces.into_iter().flatten().flatten().collect())
    }

    /// Drops incomplete datagrams older than [`REASSEMBLY_TIMEOUT`].
    pub(crate) fn expire(&mut self, now: Instant) {
        while self
            .partial
            .front()
            .is_some_and(|p| now.saturating_duration_since(p.started) >= REASSEMBLY_TIMEOUT)
        {
            self.partial.pop_front();
            self.dropped += 1;
        }
    }

    /// Incomplete datagrams given up on since the last call.
    pub(crate) fn take_dropped(&mut self) -> u64 {
        std::mem::take(&mut self.dropped)
    }

    /// Datagrams still incomplete.
    #[cfg(test)]
    pub(crate) fn pending(&self) -> usize {
        self.partial.len()
    }
}

/// Appends `datagram` to a `reliable` stream's bytes as `[u16 length][bytes]`.
pub(crate) fn frame_reliable(out: &mut Vec<u8>, datagram: &[u8]) -> Result<(), FrameError> {
    let len = u16::try_from(datagram.len()).map_err(|_| FrameError::TooLarge)?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(datagram);
    Ok(())
}

/// Takes every whole datagram off the front of a `reliable` stream's bytes, leaving a partial
/// one in `buf`.
pub(crate) fn unframe_reliable(buf: &mut Vec<u8>, mut each: impl FnMut(&[u8])) {
    let mut at = 0;
    while let Some(head) = buf.get(at..at + 2) {
        let len = usize::from(u16::from_be_bytes([head[0], head[1]]));
        let Some(datagram) = buf.get(at + 2..at + 2 + len) else {
            break;
        };
        each(datagram);
        at += 2 + len;
    }
    buf.drain(..at);
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn reassemble(fragments: &[Vec<u8>], now: Instant) -> Option<Vec<u8>> {
        let mut r = Reassembly::default();
        let mut out = None;
        for f in fragments {
            let (header, payload) = decode(f).unwrap();
            if let Reassembled::Complete(d) = r.push(now, &header, payload) {
                out = Some(d);
            }
        }
        out
    }

    #[test]
    fn a_small_datagram_is_one_fragment() {
        let frags = fragment(7, FlowId(300), true, 9, b"hello", 1200).unwrap();
        assert_eq!(frags.len(), 1);
        let (header, payload) = decode(&frags[0]).unwrap();
        assert_eq!(
            header,
            FragmentHeader {
                map: 7,
                flow: FlowId(300),
                to_target: true,
                message: 9,
                index: 0,
                count: 1
            }
        );
        assert_eq!(payload, b"hello");
        // An empty datagram is a datagram too.
        let frags = fragment(7, FlowId(1), false, 0, b"", 100).unwrap();
        assert_eq!(frags.len(), 1);
        assert_eq!(reassemble(&frags, Instant::now()), Some(Vec::new()));
    }

    #[test]
    fn a_large_datagram_is_split_and_rebuilt_in_any_order() {
        let data: Vec<u8> = (0..4000u32).map(|i| (i * 7) as u8).collect();
        let mut frags = fragment(1, FlowId(2), false, 3, &data, 1300).unwrap();
        assert_eq!(frags.len(), 4);
        assert!(frags.iter().all(|f| f.len() <= 1300));
        frags.reverse();
        assert_eq!(reassemble(&frags, Instant::now()), Some(data));
    }

    #[test]
    fn limits_are_errors() {
        assert_eq!(
            fragment(1, FlowId(1), true, 0, &[0; 100], 6),
            Err(FrameError::NoRoom)
        );
        assert_eq!(
            fragment(1, FlowId(1), true, 0, &[0; 256 * 10], 16),
            Err(FrameError::TooLarge)
        );
        assert_eq!(decode(&[]), Err(FrameError::Malformed));
        assert_eq!(decode(&[1, 1, 0, 0, 0, 0]), Err(FrameError::BadIndex));
        assert_eq!(decode(&[1, 1, 0, 0, 2, 2]), Err(FrameError::BadIndex));
        // A map id above u32.
        assert_eq!(
            decode(&[0xc0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 1]),
            Err(FrameError::Malformed)
        );
    }

    #[test]
    fn incomplete_datagrams_are_bounded_and_expire() {
        let t0 = Instant::now();
        let mut r = Reassembly::default();
        for message in 0..(MAX_PARTIAL as u16 + 3) {
            let frags = fragment(1, FlowId(1), true, message, &[message as u8; 100], 60).unwrap();
            let (header, payload) = decode(&frags[0]).unwrap();
            assert_eq!(r.push(t0, &header, payload), Reassembled::Pending);
        }
        assert_eq!(r.pending(), MAX_PARTIAL);
        assert_eq!(r.take_dropped(), 3);
        // The newest is still being assembled; the evicted oldest is started afresh.
        let frags = fragment(1, FlowId(1), true, 10, &[10; 100], 60).unwrap();
        let (header, payload) = decode(&frags[1]).unwrap();
        assert_eq!(
            r.push(t0, &header, payload),
            Reassembled::Complete(vec![10; 100])
        );
        r.expire(t0 + REASSEMBLY_TIMEOUT);
        assert_eq!(r.pending(), 0);
        assert_eq!(r.take_dropped(), MAX_PARTIAL as u64 - 1);
    }

    #[test]
    fn duplicates_and_contradictions_are_ignored() {
        let t0 = Instant::now();
        let mut r = Reassembly::default();
        let frags = fragment(1, FlowId(1), true, 5, &[1; 100], 60).unwrap();
        let (h0, p0) = decode(&frags[0]).unwrap();
        assert_eq!(r.push(t0, &h0, p0), Reassembled::Pending);
        assert_eq!(r.push(t0, &h0, p0), Reassembled::Ignored);
        let other = FragmentHeader { count: 5, ..h0 };
        assert_eq!(r.push(t0, &other, p0), Reassembled::Ignored);
        let (h1, p1) = decode(&frags[1]).unwrap();
        assert_eq!(r.push(t0, &h1, p1), Reassembled::Complete(vec![1; 100]));
    }

    #[test]
    fn reliable_framing_keeps_boundaries() {
        let mut stream = Vec::new();
        for d in [&b"a"[..], b"", &[9; 300]] {
            frame_reliable(&mut stream, d).unwrap();
        }
        assert_eq!(
            frame_reliable(&mut stream, &vec![0; MAX_RELIABLE_LEN + 1]),
            Err(FrameError::TooLarge)
        );
        // Delivered a byte at a time, the datagrams come out whole.
        let mut buf = Vec::new();
        let mut got = Vec::new();
        for &b in &stream {
            buf.push(b);
            unframe_reliable(&mut buf, |d| got.push(d.to_vec()));
        }
        assert_eq!(got, vec![b"a".to_vec(), Vec::new(), vec![9; 300]]);
        assert!(buf.is_empty());
    }

    proptest! {
        #[test]
        fn fragments_round_trip(
            map: u32,
            flow in 0u64..=MAX_FLOW_ID,
            to_target: bool,
            message: u16,
            data in proptest::collection::vec(any::<u8>(), 0..5000),
            max_len in 40usize..1500,
            seed: u64,
        ) {
            let mut frags =
                fragment(map, FlowId(flow), to_target, message, &data, max_len).unwrap();
            prop_assert!(frags.iter().all(|f| f.len() <= max_len));
            // A deterministic shuffle.
            let n = frags.len();
            for i in 0..n {
                frags.swap(i, (seed.wrapping_mul(i as u64 + 1) % n as u64) as usize);
            }
            for f in &frags {
                let (h, _) = decode(f).unwrap();
                prop_assert_eq!(
                    (h.map, h.flow, h.to_target, h.message),
                    (map, FlowId(flow), to_target, message)
                );
            }
            prop_assert_eq!(reassemble(&frags, Instant::now()), Some(data));
        }

        #[test]
        fn garbage_never_panics(
            fragments in proptest::collection::vec(
                proptest::collection::vec(any::<u8>(), 0..64), 0..64),
        ) {
            let t0 = Instant::now();
            let mut r = Reassembly::default();
            for f in &fragments {
                if let Ok((h, p)) = decode(f) {
                    let _ = r.push(t0, &h, p);
                }
                prop_assert!(r.pending() <= MAX_PARTIAL);
            }
            let mut stream: Vec<u8> = fragments.concat();
            unframe_reliable(&mut stream, |d| assert!(d.len() <= MAX_RELIABLE_LEN));
            prop_assert!(stream.len() < 2 + MAX_RELIABLE_LEN);
        }
    }
}
