//! Frames: the units a data packet's payload is made of.
//!
//! | type        | fields                                                   |
//! |-------------|----------------------------------------------------------|
//! | 0x00        | PADDING (a run of zero bytes)                            |
//! | 0x01        | PING                                                     |
//! | 0x02        | ACK: largest, ack delay (us), range count, first range, (gap, length)* |
//! | 0x03        | WINDOW for the session: maximum data                    |
//! | 0x04        | WINDOW for a stream: stream id, maximum stream data     |
//! | 0x05        | OPEN: stream id, map id                                  |
//! | 0x06        | RESET: stream id, error code, final size                 |
//! | 0x07        | CLOSE: error code, reason length, reason                 |
//! | 0x08 / 0x09 | DATAGRAM with / without (to the end of the packet) a length |
//! | 0x0a        | LOSS_REPORT: raw loss (parts per million), mean loss burst (x100) |
//! | 0x10-0x13   | STREAM: bit 0 FIN, bit 1 length present; stream id, offset, [length], data |
//!
//! All integers are varints. ACK ranges follow RFC 9000 §19.3: descending, each range given as a
//! count of packet numbers below its top, separated by gaps.

use std::ops::Range;

use super::{Reader, StreamId, WireError, Writer, varint_len};

const PADDING: u64 = 0x00;
const PING: u64 = 0x01;
const ACK: u64 = 0x02;
const WINDOW_SESSION: u64 = 0x03;
const WINDOW_STREAM: u64 = 0x04;
const OPEN: u64 = 0x05;
const RESET: u64 = 0x06;
const CLOSE: u64 = 0x07;
const DATAGRAM_LEN: u64 = 0x08;
const DATAGRAM: u64 = 0x09;
const LOSS_REPORT: u64 = 0x0a;
const STREAM_BASE: u64 = 0x10;
const STREAM_FIN: u64 = 0x01;
const STREAM_LEN: u64 = 0x02;

/// Whose flow-control limit a WINDOW frame raises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowTarget {
    Session,
    Stream(StreamId),
}

/// One parsed frame, borrowing its data from the packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame<'a> {
    Padding,
    Ping,
    Ack(AckFrame<'a>),
    Window {
        target: WindowTarget,
        max: u64,
    },
    Open {
        id: StreamId,
        map_id: u32,
    },
    Reset {
        id: StreamId,
        error_code: u64,
        final_size: u64,
    },
    Close {
        error_code: u64,
        reason: &'a [u8],
    },
    Datagram {
        data: &'a [u8],
    },
    /// The packet loss the sender of this frame sees from its peer before FEC recovery (which
    /// the peer cannot see: recovered packets are acknowledged). Drives adaptive FEC. Not
    /// ack-eliciting and never retransmitted: a newer report follows.
    LossReport {
        /// Lost packets per million, at most 1 000 000.
        loss_ppm: u32,
        /// Mean number of consecutive packets lost together, times 100 (at least 100).
        burst_x100: u32,
    },
    Stream {
        id: StreamId,
        offset: u64,
        fin: bool,
        data: &'a [u8],
    },
}

impl Frame<'_> {
    /// Whether receiving this frame obliges the receiver to acknowledge the packet.
    pub fn is_ack_eliciting(&self) -> bool {
        !matches!(
            self,
            Frame::Padding | Frame::Ack(_) | Frame::LossReport { .. }
        )
    }

    /// Encodes every frame except ACK (use [`AckFrame::encode`]). A frame that does not fit, or
    /// has a field beyond the varint range, is an error and leaves the writer as it was.
    pub fn encode(&self, w: &mut Writer<'_>) -> Result<(), WireError> {
        w.atomic(|w| self.encode_unchecked(w))
    }

    fn encode_unchecked(&self, w: &mut Writer<'_>) -> Result<(), WireError> {
        match *self {
            Frame::Padding => w.varint(PADDING),
            Frame::Ping => w.varint(PING),
            Frame::Ack(_) => Err(WireError::Malformed),
            Frame::Window { target, max } => match target {
                WindowTarget::Session => {
                    w.varint(WINDOW_SESSION)?;
                    w.varint(max)
                }
                WindowTarget::Stream(id) => {
                    w.varint(WINDOW_STREAM)?;
                    w.varint(id.0)?;
                    w.varint(max)
                }
            },
            Frame::Open { id, map_id } => {
                w.varint(OPEN)?;
                w.varint(id.0)?;
                w.varint(u64::from(map_id))
            }
            Frame::Reset {
                id,
                error_code,
                final_size,
            } => {
                w.varint(RESET)?;
                w.varint(id.0)?;
                w.varint(error_code)?;
                w.varint(final_size)
            }
            Frame::Close { error_code, reason } => {
                w.varint(CLOSE)?;
                w.varint(error_code)?;
                w.varint(reason.len() as u64)?;
                w.bytes(reason)
            }
            Frame::Datagram { data } => {
                w.varint(DATAGRAM_LEN)?;
                w.varint(data.len() as u64)?;
                w.bytes(data)
            }
            Frame::LossReport {
                loss_ppm,
                burst_x100,
            } => {
                w.varint(LOSS_REPORT)?;
                w.varint(u64::from(loss_ppm))?;
                w.varint(u64::from(burst_x100))
            }
            Frame::Stream {
                id,
                offset,
                fin,
                data,
            } => {
                StreamFrameHeader::with_len(id, offset, fin, data.len()).encode(w)?;
                w.bytes(data)
            }
        }
    }

    /// Encoded size of a frame accepted by [`Frame::encode`].
    pub fn encoded_len(&self) -> usize {
        let v = |x: u64| varint_len(x);
        match *self {
            Frame::Padding | Frame::Ping => 1,
            Frame::Ack(ref a) => a.raw_len,
            Frame::Window { target, max } => match target {
                WindowTarget::Session => 1 + v(max),
                WindowTarget::Stream(id) => 1 + v(id.0) + v(max),
            },
            Frame::Open { id, map_id } => 1 + v(id.0) + v(u64::from(map_id)),
            Frame::Reset {
                id,
                error_code,
                final_size,
            } => 1 + v(id.0) + v(error_code) + v(final_size),
            Frame::Close { error_code, reason } => {
                1 + v(error_code) + v(reason.len() as u64) + reason.len()
            }
            Frame::Datagram { data } => 1 + v(data.len() as u64) + data.len(),
            Frame::LossReport {
                loss_ppm,
                burst_x100,
            } => 1 + v(u64::from(loss_ppm)) + v(u64::from(burst_x100)),
            Frame::Stream {
                id,
                offset,
                fin,
                data,
            } => {
                StreamFrameHeader::with_len(id, offset, fin, data.len()).encoded_len() + data.len()
            }
        }
    }
}

/// The header of a STREAM frame; the data follows it directly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamFrameHeader {
    pub id: StreamId,
    pub offset: u64,
    pub len: usize,
    pub fin: bool,
    /// Without a length the data runs to the end of the packet (saves bytes on the last frame).
    pub has_len: bool,
}

impl StreamFrameHeader {
    /// The header of a frame that states its length (so another frame may follow it).
    pub fn with_len(id: StreamId, offset: u64, fin: bool, len: usize) -> Self {
        Self {
            id,
            offset,
            len,
            fin,
            has_len: true,
        }
    }

    pub fn encoded_len(&self) -> usize {
        1 + varint_len(self.id.0)
            + varint_len(self.offset)
            + if self.has_len {
                varint_len(self.len as u64)
            } else {
                0
            }
    }

    /// The largest header any STREAM frame for `id` at `offset` can need.
    pub fn max_len(id: StreamId, offset: u64) -> usize {
        1 + varint_len(id.0) + varint_len(offset) + 8
    }

    /// Writes the header, or nothing if it fails.
    pub fn encode(&self, w: &mut Writer<'_>) -> Result<(), WireError> {
        w.atomic(|w| self.encode_unchecked(w))
    }

    fn encode_unchecked(&self, w: &mut Writer<'_>) -> Result<(), WireError> {
        let mut ty = STREAM_BASE;
        if self.fin {
            ty |= STREAM_FIN;
        }
        if self.has_len {
            ty |= STREAM_LEN;
        }
        w.varint(ty)?;
        w.varint(self.id.0)?;
        w.varint(self.offset)?;
        if self.has_len {
            w.varint(self.len as u64)?;
        }
        Ok(())
    }
}

/// An ACK frame; its ranges were fully validated when it was parsed.
#[derive(Clone, PartialEq, Eq)]
pub struct AckFrame<'a> {
    pub largest: u64,
    /// How long the receiver held the acknowledgement back, in microseconds.
    pub ack_delay_us: u64,
    range_count: u64,
    first_range: u64,
    /// The encoded (gap, length) pairs after the first range.
    rest: &'a [u8],
    raw_len: usize,
}

impl std::fmt::Debug for AckFrame<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AckFrame")
            .field("ack_delay_us", &self.ack_delay_us)
            .field("ranges", &self.ranges().collect::<Vec<_>>())
            .finish()
    }
}

impl<'a> AckFrame<'a> {
    /// The acknowledged packet numbers as half-open ranges, highest first.
    pub fn ranges(&self) -> AckRanges<'a> {
        AckRanges {
            reader: Reader::new(self.rest),
            next: Some(self.largest - self.first_range..self.largest + 1),
            remaining: self.range_count,
        }
    }

    /// Encodes an ACK for `ranges` (half-open, non-empty, descending and disjoint), writing at
    /// most `max_ranges` of them and as many as fit in the writer. Returns how many were
    /// written; 0 means nothing was written.
    pub fn encode<I>(
        w: &mut Writer<'_>,
        ack_delay_us: u64,
        ranges: I,
        max_ranges: usize,
    ) -> Result<usize, WireError>
    where
        I: Iterator<Item = Range<u64>> + Clone,
    {
        // Choose how many ranges fit before writing anything, since the count comes first.
        let mut iter = ranges.clone();
        let Some(first) = iter.next() else {
            return Ok(0);
        };
        if first.is_empty() {
            return Err(WireError::Malformed);
        }
        let largest = first.end - 1;
        let first_range = first.end - 1 - first.start;
        let mut len = 1 + varint_len(largest) + varint_len(ack_delay_us) + varint_len(first_range);
        let mut count = 0usize;
        let mut prev_start = first.start;
        let budget = w.remaining().saturating_sub(8);
        for r in iter {
            if count + 1 >= max_ranges {
                break;
            }
            if r.is_empty() || r.end >= prev_start {
                return Err(WireError::Malformed);
            }
            let gap = prev_start - r.end - 1;
            let extra = varint_len(gap) + varint_len(r.end - 1 - r.start);
            if len + extra + varint_len(count as u64 + 1) > budget {
                break;
            }
            len += extra;
            count += 1;
            prev_start = r.start;
        }
        if len + varint_len(count as u64) > w.remaining() {
            return Err(WireError::BufferTooSmall);
        }
        w.varint(ACK)?;
        w.varint(largest)?;
        w.varint(ack_delay_us)?;
        w.varint(count as u64)?;
        w.varint(first_range)?;
        let mut prev_start = first.start;
        for r in ranges.skip(1).take(count) {
            w.varint(prev_start - r.end - 1)?;
            w.varint(r.end - 1 - r.start)?;
            prev_start = r.start;
        }
        Ok(count + 1)
    }

    fn parse(r: &mut Reader<'a>, start_len: usize) -> Result<Self, WireError> {
        let largest = r.varint()?;
        let ack_delay_us = r.varint()?;
        let range_count = r.varint()?;
        let first_range = r.varint()?;
        if first_range > largest {
            return Err(WireError::Malformed);
        }
        // Validate every range now so iteration later cannot fail.
        let before = r.clone();
        let mut smallest = largest - first_range;
        for _ in 0..range_count {
            let gap = r.varint()?;
            let len = r.varint()?;
            smallest = smallest
                .checked_sub(gap)
                .and_then(|s| s.checked_sub(2))
                .and_then(|s| s.checked_sub(len))
                .ok_or(WireError::Malformed)?;
        }
        let consumed = before.remaining() - r.remaining();
        let mut rest_reader = before;
        let rest = rest_reader.bytes(consumed)?;
        Ok(Self {
            largest,
            ack_delay_us,
            range_count,
            first_range,
            rest,
            raw_len: start_len - r.remaining(),
        })
    }
}

/// Iterator over an ACK frame's ranges, highest first.
#[derive(Debug, Clone)]
pub struct AckRanges<'a> {
    reader: Reader<'a>,
    next: Option<Range<u64>>,
    remaining: u64,
}

impl Iterator for AckRanges<'_> {
    type Item = Range<u64>;

    fn next(&mut self) -> Option<Range<u64>> {
        let current = self.next.take()?;
        if self.remaining > 0 {
            self.remaining -= 1;
            // Validated at parse time; a failure here would only end the iteration early.
            if let (Ok(gap), Ok(len)) = (self.reader.varint(), self.reader.varint()) {
                let end = current.start - gap - 1;
                self.next = Some(end - 1 - len..end);
            }
        }
        Some(current)
    }
}

/// Iterates over the frames of a decrypted payload. After the first error it yields nothing.
#[derive(Debug, Clone)]
pub struct FrameIter<'a> {
    reader: Reader<'a>,
    failed: bool,
}

impl<'a> FrameIter<'a> {
    pub fn new(payload: &'a [u8]) -> Self {
        Self {
            reader: Reader::new(payload),
            failed: false,
        }
    }

    fn parse_one(&mut self) -> Result<Frame<'a>, WireError> {
        let r = &mut self.reader;
        let start_len = r.remaining();
        let ty = r.varint()?;
        let stream_id = |r: &mut Reader<'a>| r.varint().map(StreamId);
        Ok(match ty {
            PADDING => {
                let rest = r.clone().rest();
                let zeros = rest.iter().take_while(|&&b| b == 0).count();
                r.bytes(zeros)?;
                Frame::Padding
            }
            PING => Frame::Ping,
            ACK => Frame::Ack(AckFrame::parse(r, start_len)?),
            WINDOW_SESSION => Frame::Window {
                target: WindowTarget::Session,
                max: r.varint()?,
            },
            WINDOW_STREAM => Frame::Window {
                target: WindowTarget::Stream(stream_id(r)?),
                max: r.varint()?,
            },
            OPEN => Frame::Open {
                id: stream_id(r)?,
                map_id: u32::try_from(r.varint()?).map_err(|_| WireError::Malformed)?,
            },
            RESET => Frame::Reset {
                id: stream_id(r)?,
                error_code: r.varint()?,
                final_size: r.varint()?,
            },
            CLOSE => {
                let error_code = r.varint()?;
                let len = usize::try_from(r.varint()?).map_err(|_| WireError::Malformed)?;
                Frame::Close {
                    error_code,
                    reason: r.bytes(len)?,
                }
            }
            DATAGRAM_LEN => {
                let len = usize::try_from(r.varint()?).map_err(|_| WireError::Malformed)?;
                Frame::Datagram {
                    data: r.bytes(len)?,
                }
            }
            DATAGRAM => Frame::Datagram { data: r.rest() },
            LOSS_REPORT => {
                let loss_ppm = u32::try_from(r.varint()?).map_err(|_| WireError::Malformed)?;
                let burst_x100 = u32::try_from(r.varint()?).map_err(|_| WireError::Malformed)?;
                if loss_ppm > 1_000_000 || burst_x100 < 100 {
                    return Err(WireError::Malformed);
                }
                Frame::LossReport {
                    loss_ppm,
                    burst_x100,
                }
            }
            t if t & !(STREAM_FIN | STREAM_LEN) == STREAM_BASE => {
                let id = stream_id(r)?;
                let offset = r.varint()?;
                let data = if t & STREAM_LEN != 0 {
                    let len = usize::try_from(r.varint()?).map_err(|_| WireError::Malformed)?;
                    r.bytes(len)?
                } else {
                    r.rest()
                };
                // The end of the stream must stay representable.
                if offset
                    .checked_add(data.len() as u64)
                    .is_none_or(|end| end > super::codec::VARINT_MAX)
                {
                    return Err(WireError::Malformed);
                }
                Frame::Stream {
                    id,
                    offset,
                    fin: t & STREAM_FIN != 0,
                    data,
                }
            }
            other => return Err(WireError::FrameType(other)),
        })
    }
}

impl<'a> Iterator for FrameIter<'a> {
    type Item = Result<Frame<'a>, WireError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.reader.is_empty() {
            return None;
        }
        let frame = self.parse_one();
        self.failed = frame.is_err();
        Some(frame)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::wire::Side;

    fn round_trip(frame: Frame<'_>) {
        let mut buf = vec![0u8; 2048];
        let mut w = Writer::new(&mut buf);
        frame.encode(&mut w).unwrap();
        assert_eq!(w.len(), frame.encoded_len(), "{frame:?}");
        let n = w.len();
        let parsed: Vec<_> = FrameIter::new(&buf[..n]).collect::<Result<_, _>>().unwrap();
        assert_eq!(parsed, vec![frame]);
    }

    #[test]
    fn every_frame_round_trips() {
        let id = StreamId::new(Side::Server, 9);
        round_trip(Frame::Ping);
        round_trip(Frame::Window {
            target: WindowTarget::Session,
            max: 1 << 40,
        });
        round_trip(Frame::Window {
            target: WindowTarget::Stream(id),
            max: 12345,
        });
        round_trip(Frame::Open {
            id,
            map_id: u32::MAX,
        });
        round_trip(Frame::Reset {
            id,
            error_code: 7,
            final_size: 99,
        });
        round_trip(Frame::Close {
            error_code: 0,
            reason: b"bye",
        });
        round_trip(Frame::Datagram { data: b"dgram" });
        round_trip(Frame::LossReport {
            loss_ppm: 50_000,
            burst_x100: 312,
        });
        assert_eq!(
            FrameIter::new(&[0x0a, 0x80, 0x0f, 0x42, 0x41, 0x40, 100])
                .next()
                .unwrap(),
            Err(WireError::Malformed),
            "more than a million per million"
        );
        assert_eq!(
            FrameIter::new(&[0x0a, 0, 0x40, 99]).next().unwrap(),
            Err(WireError::Malformed),
            "a burst shorter than one packet"
        );
        round_trip(Frame::Stream {
            id,
            offset: 1 << 33,
            fin: true,
            data: b"hello",
        });
        round_trip(Frame::Stream {
            id,
            offset: 0,
            fin: false,
            data: b"",
        });
    }

    #[test]
    fn stream_without_length_runs_to_the_end() {
        let id = StreamId(4);
        let mut buf = [0u8; 64];
        let mut w = Writer::new(&mut buf);
        let h = StreamFrameHeader {
            id,
            offset: 10,
            len: 3,
            fin: false,
            has_len: false,
        };
        h.encode(&mut w).unwrap();
        assert_eq!(w.len(), h.encoded_len());
        w.bytes(b"abc").unwrap();
        let n = w.len();
        let f = FrameIter::new(&buf[..n]).next().unwrap().unwrap();
        assert_eq!(
            f,
            Frame::Stream {
                id,
                offset: 10,
                fin: false,
                data: b"abc"
            }
        );
    }

    #[test]
    fn a_frame_that_cannot_be_encoded_writes_nothing() {
        let mut buf = [0u8; 64];
        let mut w = Writer::new(&mut buf);
        let bad = Frame::Close {
            error_code: u64::MAX,
            reason: b"x",
        };
        assert_eq!(bad.encode(&mut w), Err(WireError::Malformed));
        assert_eq!(w.len(), 0);
        let mut small = [0u8; 3];
        let mut w = Writer::new(&mut small);
        let big = Frame::Datagram { data: b"too long" };
        assert_eq!(big.encode(&mut w), Err(WireError::BufferTooSmall));
        assert_eq!(w.len(), 0);
    }

    #[test]
    fn padding_is_one_frame() {
        let frames: Vec<_> = FrameIter::new(&[0, 0, 0, 1])
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(frames, vec![Frame::Padding, Frame::Ping]);
    }

    #[test]
    fn ack_with_impossible_ranges_is_rejected() {
        // largest 5, first range 6 -> below zero.
        let bad = [0x02, 5, 0, 0, 6];
        assert_eq!(FrameIter::new(&bad).next(), Some(Err(WireError::Malformed)));
        // largest 5, first range 2 (3..6), then gap 1 len 0 -> range 0..1, fine; gap 0 again underflows.
        let ok = [0x02, 5, 0, 1, 2, 1, 0];
        let Some(Ok(Frame::Ack(a))) = FrameIter::new(&ok).next() else {
            panic!()
        };
        assert_eq!(a.ranges().collect::<Vec<_>>(), vec![3..6, 0..1]);
        let bad = [0x02, 5, 0, 2, 2, 1, 0, 0, 0];
        assert_eq!(FrameIter::new(&bad).next(), Some(Err(WireError::Malformed)));
    }

    #[test]
    fn ack_encoding_respects_space_and_max_ranges() {
        let ranges: Vec<Range<u64>> = (0..100u64).rev().map(|i| i * 10..i * 10 + 3).collect();
        let mut buf = [0u8; 40];
        let mut w = Writer::new(&mut buf);
        let n = AckFrame::encode(&mut w, 25, ranges.iter().cloned(), 64).unwrap();
        assert!(n > 1 && n < 100);
        let len = w.len();
        let Some(Ok(Frame::Ack(a))) = FrameIter::new(&buf[..len]).next() else {
            panic!()
        };
        assert_eq!(a.ranges().collect::<Vec<_>>(), ranges[..n].to_vec());
        assert_eq!(a.ack_delay_us, 25);
        let mut buf = [0u8; 400];
        let mut w = Writer::new(&mut buf);
        assert_eq!(
            AckFrame::encode(&mut w, 0, ranges.iter().cloned(), 5).unwrap(),
            5
        );
    }

    fn descending_ranges() -> impl Strategy<Value = Vec<Range<u64>>> {
        prop::collection::vec((1u64..50, 1u64..50), 1..40).prop_map(|pairs| {
            let mut out = Vec::new();
            let mut top = 1u64 << 40;
            for (gap, len) in pairs {
                let end = top - gap;
                out.push(end - len..end);
                top = end - len;
            }
            out
        })
    }

    proptest! {
        #[test]
        fn ack_ranges_round_trip(ranges in descending_ranges(), delay in 0u64..1_000_000) {
            let mut buf = vec![0u8; 1500];
            let mut w = Writer::new(&mut buf);
            let n = AckFrame::encode(&mut w, delay, ranges.iter().cloned(), usize::MAX).unwrap();
            prop_assert_eq!(n, ranges.len());
            let len = w.len();
            let frames: Vec<_> = FrameIter::new(&buf[..len]).collect::<Result<_, _>>().unwrap();
            let [Frame::Ack(a)] = frames.as_slice() else { panic!("{frames:?}") };
            prop_assert_eq!(a.ranges().collect::<Vec<_>>(), ranges);
            prop_assert_eq!(Frame::Ack(a.clone()).encoded_len(), len);
        }

        #[test]
        fn any_bytes_parse_without_panicking(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            for f in FrameIter::new(&bytes) {
                if let Ok(Frame::Ack(a)) = f {
                    for r in a.ranges() {
                        prop_assert!(r.start < r.end);
                    }
                }
            }
        }
    }
}
