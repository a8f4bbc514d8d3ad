//! The sending half of a stream: the send buffer, what is acknowledged, what must be
//! retransmitted, and how much the peer lets us send.
//!
//! Offsets below `acked_prefix` are acknowledged and freed; the buffer holds
//! `acked_prefix..write_offset`. Acknowledgements may arrive out of order, so `acked` records every
//! acknowledged range (including the prefix, as one range starting at 0) and the prefix moves
//! when the first range grows.

use std::collections::VecDeque;

use super::SentFrame;
use super::range_set::RangeSet;
use crate::wire::{StreamFrameHeader, StreamId, Writer, varint_len};

/// A STREAM frame's data length is recorded as a `u32`; no packet comes close.
const MAX_FRAME_DATA: u64 = 1 << 30;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SendState {
    /// The application may write.
    Ready,
    /// `finish` was called; the final size is `write_offset`.
    Finished,
    /// Abandoned; a RESET must be sent.
    ResetPending { code: u64, final_size: u64 },
    /// The RESET is in flight.
    ResetSent { code: u64, final_size: u64 },
    /// The peer has the RESET: nothing more to do.
    ResetAcked,
}

#[derive(Debug)]
pub(super) struct SendStream {
    buf: VecDeque<u8>,
    acked_prefix: u64,
    write_offset: u64,
    /// Everything below has been sent at least once.
    next_unsent: u64,
    acked: RangeSet,
    retransmit: RangeSet,
    /// The peer's limit for this stream.
    pub(super) max_data: u64,
    /// A frame carrying FIN must be (re)sent.
    fin_pending: bool,
    fin_acked: bool,
    pub(super) state: SendState,
    /// `write` accepted less than offered; a `Writable` event is owed.
    pub(super) blocked: bool,
}

impl SendStream {
    pub(super) fn new(max_data: u64) -> Self {
        Self {
            buf: VecDeque::new(),
            acked_prefix: 0,
            write_offset: 0,
            next_unsent: 0,
            acked: RangeSet::default(),
            retransmit: RangeSet::default(),
            max_data,
            fin_pending: false,
            fin_acked: false,
            state: SendState::Ready,
            blocked: false,
        }
    }

    /// Bytes queued and not yet acknowledged.
    pub(super) fn buffered(&self) -> u64 {
        self.write_offset - self.acked_prefix
    }

    /// Appends up to `limit - buffered` bytes; returns how many were taken.
    pub(super) fn write(&mut self, data: &[u8], limit: u64) -> usize {
        let room = limit
            .saturating_sub(self.buffered())
            .min(super::VARINT_MAX - self.write_offset);
        let n = usize::try_from(room).unwrap_or(usize::MAX).min(data.len());
        if n < data.len() {
            self.blocked = true;
        }
        if let Some(chunk) = data.get(..n) {
            self.buf.extend(chunk);
            self.write_offset += n as u64;
        }
        n
    }

    pub(super) fn finish(&mut self) {
        self.state = SendState::Finished;
        self.fin_pending = true;
    }

    /// Abandons all data; returns the final size to put in the RESET.
    pub(super) fn reset(&mut self, code: u64) -> u64 {
        let final_size = self.next_unsent;
        self.state = SendState::ResetPending { code, final_size };
        self.buf = VecDeque::new();
        self.retransmit.clear();
        self.acked.clear();
        self.fin_pending = false;
        self.blocked = false;
        final_size
    }

    pub(super) fn is_reset(&self) -> bool {
        matches!(
            self.state,
            SendState::ResetPending { .. } | SendState::ResetSent { .. } | SendState::ResetAcked
        )
    }

    /// Bytes sent at least once (what the peer's session window accounts for this stream).
    pub(super) fn sent(&self) -> u64 {
        self.next_unsent
    }

    /// All data and the FIN are acknowledged, or the RESET is.
    pub(super) fn is_done(&self) -> bool {
        match self.state {
            SendState::Finished => self.fin_acked && self.acked_prefix == self.write_offset,
            SendState::ResetAcked => true,
            _ => false,
        }
    }

    /// New bytes that the stream's flow-control limit allows now.
    pub(super) fn sendable_new(&self) -> u64 {
        if self.is_reset() {
            return 0;
        }
        self.write_offset
            .min(self.max_data)
            .saturating_sub(self.next_unsent)
    }

    fn fin_only_pending(&self) -> bool {
        self.fin_pending && self.next_unsent == self.write_offset
    }

    /// Lost data to resend, or a FIN that has to go out on its own.
    pub(super) fn needs_retransmit(&self) -> bool {
        !self.is_reset() && (!self.retransmit.is_empty() || self.fin_only_pending())
    }

    /// Records an acknowledged frame; returns whether buffer space was freed.
    pub(super) fn on_ack(&mut self, offset: u64, len: u32, fin: bool) -> bool {
        if self.is_reset() {
            return false;
        }
        let end = offset + u64::from(len);
        self.acked.insert(offset, end);
        self.retransmit.remove(offset, end);
        if fin {
            self.fin_acked = true;
            self.fin_pending = false;
        }
        let prefix = self
            .acked
            .first()
            .filter(|r| r.start == 0)
            .map_or(0, |r| r.end)
            .min(self.write_offset);
        if prefix > self.acked_prefix {
            let n = usize::try_from(prefix - self.acked_prefix).unwrap_or(usize::MAX);
            self.buf.drain(..n.min(self.buf.len()));
            self.acked_prefix = prefix;
            return true;
        }
        false
    }

    /// Queues a lost frame's data (minus anything acknowledged since) for retransmission.
    pub(super) fn on_lost(&mut self, offset: u64, len: u32, fin: bool) {
        if self.is_reset() {
            return;
        }
        let start = offset.max(self.acked_prefix);
        let end = (offset + u64::from(len)).min(self.write_offset);
        if start < end {
            self.retransmit.insert_missing(start, end, &self.acked);
        }
        if fin && !self.fin_acked {
            self.fin_pending = true;
        }
    }

    /// Writes one frame of lost data (or a lone FIN) if any fits.
    pub(super) fn write_retransmit(
        &mut self,
        id: StreamId,
        w: &mut Writer<'_>,
    ) -> Option<SentFrame> {
        if self.is_reset() {
            return None;
        }
        while let Some(r) = self.retransmit.first() {
            let start = r.start.max(self.acked_prefix);
            if start >= r.end {
                // Acknowledged meanwhile (acks remove ranges, so this is only defensive).
                self.retransmit.remove(r.start, r.end);
                continue;
            }
            let frame = self.write_data(id, w, start, r.end - start)?;
            if let SentFrame::Stream { offset, len, .. } = frame {
                self.retransmit.remove(r.start, offset + u64::from(len));
            }
            return Some(frame);
        }
        if self.fin_only_pending() {
            return self.write_data(id, w, self.write_offset, 0);
        }
        None
    }

    /// Writes one frame of new data, at most `credit` bytes (the session's flow-control credit).
    /// Returns the frame and how many new bytes it carried.
    pub(super) fn write_new(
        &mut self,
        id: StreamId,
        w: &mut Writer<'_>,
        credit: u64,
    ) -> Option<(SentFrame, u64)> {
        let want = self.sendable_new().min(credit);
        if want == 0 {
            return None;
        }
        let frame = self.write_data(id, w, self.next_unsent, want)?;
        let SentFrame::Stream { len, .. } = frame else {
            return None;
        };
        self.next_unsent += u64::from(len);
        Some((frame, u64::from(len)))
    }

    /// Writes a STREAM frame for (a prefix of) `offset..offset + want` from the buffer.
    fn write_data(
        &mut self,
        id: StreamId,
        w: &mut Writer<'_>,
        offset: u64,
        want: u64,
    ) -> Option<SentFrame> {
        let (len, has_len) = fit(w.remaining(), id, offset, want.min(MAX_FRAME_DATA))?;
        let end = offset + len as u64;
        let fin = self.state == SendState::Finished && end == self.write_offset;
        let pos = usize::try_from(offset.checked_sub(self.acked_prefix)?).ok()?;
        let (a, b) = deque_range(&self.buf, pos, pos.checked_add(len)?)?;
        let header = StreamFrameHeader {
            id,
            offset,
            len,
            fin,
            has_len,
        };
        header.encode(w).ok()?;
        w.bytes(a).ok()?;
        w.bytes(b).ok()?;
        if fin {
            self.fin_pending = false;
        }
        Some(SentFrame::Stream {
            id,
            offset,
            len: u32::try_from(len).ok()?,
            fin,
        })
    }
}

/// How much of `want` bytes fits in `remaining` bytes as a STREAM frame, and whether the frame
/// carries a length. A frame that fills the writer exactly omits its length.
pub(super) fn fit(remaining: usize, id: StreamId, offset: u64, want: u64) -> Option<(usize, bool)> {
    let header = 1 + varint_len(id.0) + varint_len(offset);
    let room = remaining.checked_sub(header)?;
    if want >= room as u64 {
        // Also covers a zero-length FIN frame that exactly fills the writer.
        return (room > 0 || want == 0).then_some((room, false));
    }
    let want = want as usize;
    if want + varint_len(want as u64) <= room {
        return Some((want, true));
    }
    // Too long to carry a length but too short to fill the writer: shorten it.
    let len = room - varint_len(room as u64);
    (len > 0).then_some((len, true))
}

/// The bytes `a..b` of a deque as (at most) two slices, or `None` if out of range.
fn deque_range(buf: &VecDeque<u8>, a: usize, b: usize) -> Option<(&[u8], &[u8])> {
    let (x, y) = buf.as_slices();
    if b <= x.len() {
        Some((x.get(a..b)?, &[]))
    } else if a >= x.len() {
        Some((y.get(a - x.len()..b - x.len())?, &[]))
    } else {
        Some((x.get(a..)?, y.get(..b - x.len())?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{Frame, FrameIter, Side};

    fn id() -> StreamId {
        StreamId::new(Side::Client, 3)
    }

    #[test]
    fn fit_fills_or_carries_a_length() {
        let id = id();
        // header = 1 + 1 + 1 = 3
        assert_eq!(fit(3, id, 0, 5), None);
        assert_eq!(fit(3, id, 0, 0), Some((0, false)));
        assert_eq!(fit(10, id, 0, 100), Some((7, false)));
        assert_eq!(fit(10, id, 0, 7), Some((7, false)));
        assert_eq!(fit(10, id, 0, 5), Some((5, true)));
        // 6 + 1 length byte = 7 > room 7? no: 6 + 1 = 7 fits.
        assert_eq!(fit(10, id, 0, 6), Some((6, true)));
        assert_eq!(fit(10, id, 0, 0), Some((0, true)));
        // room 100: want 99 needs a 2-byte length -> 101 > 100, shorten to 98.
        assert_eq!(fit(103, id, 0, 99), Some((98, true)));
    }

    #[test]
    fn frames_carry_the_right_bytes_and_fin() {
        let mut s = SendStream::new(1000);
        let data: Vec<u8> = (0..=255u8).cycle().take(300).collect();
        assert_eq!(s.write(&data, 1000), 300);
        s.finish();
        let mut buf = [0u8; 200];
        let mut w = Writer::new(&mut buf);
        let (f1, n1) = s.write_new(id(), &mut w, u64::MAX).unwrap();
        assert_eq!(w.remaining(), 0);
        let len = w.len();
        let Some(Ok(Frame::Stream {
            offset,
            fin,
            data: d,
            ..
        })) = FrameIter::new(&buf[..len]).next()
        else {
            panic!()
        };
        assert_eq!((offset, fin), (0, false));
        assert_eq!(d, &data[..n1 as usize]);
        let mut buf2 = [0u8; 400];
        let mut w = Writer::new(&mut buf2);
        let (f2, _) = s.write_new(id(), &mut w, u64::MAX).unwrap();
        assert!(matches!(f2, SentFrame::Stream { fin: true, .. }));
        assert!(!s.needs_retransmit());
        // Lose the first frame, ack the second: only the first range comes back.
        let SentFrame::Stream {
            offset, len, fin, ..
        } = f1
        else {
            panic!()
        };
        s.on_lost(offset, len, fin);
        let SentFrame::Stream {
            offset, len, fin, ..
        } = f2
        else {
            panic!()
        };
        assert!(!s.on_ack(offset, len, fin));
        assert!(s.needs_retransmit());
        let mut buf3 = [0u8; 400];
        let mut w = Writer::new(&mut buf3);
        let f3 = s.write_retransmit(id(), &mut w).unwrap();
        assert_eq!(f3, f1);
        assert!(!s.needs_retransmit());
        let SentFrame::Stream {
            offset, len, fin, ..
        } = f3
        else {
            panic!()
        };
        assert!(s.on_ack(offset, len, fin));
        assert!(s.is_done());
        assert_eq!(s.buffered(), 0);
    }

    #[test]
    fn lost_fin_is_resent_alone() {
        let mut s = SendStream::new(1000);
        s.write(b"abc", 100);
        let mut buf = [0u8; 100];
        let mut w = Writer::new(&mut buf);
        let (f, _) = s.write_new(id(), &mut w, 100).unwrap();
        let SentFrame::Stream {
            offset, len, fin, ..
        } = f
        else {
            panic!()
        };
        assert!(!fin);
        s.on_ack(offset, len, fin);
        s.finish();
        assert!(s.needs_retransmit());
        let mut w = Writer::new(&mut buf);
        let f = s.write_retransmit(id(), &mut w).unwrap();
        assert_eq!(
            f,
            SentFrame::Stream {
                id: id(),
                offset: 3,
                len: 0,
                fin: true
            }
        );
        s.on_lost(3, 0, true);
        assert!(s.needs_retransmit());
        let mut w = Writer::new(&mut buf);
        assert_eq!(s.write_retransmit(id(), &mut w), Some(f));
        s.on_ack(3, 0, true);
        assert!(s.is_done());
    }

    #[test]
    fn write_respects_the_buffer_limit_and_flow_control() {
        let mut s = SendStream::new(10);
        assert_eq!(s.write(&[1; 30], 20), 20);
        assert!(s.blocked);
        assert_eq!(s.sendable_new(), 10);
        let mut buf = [0u8; 100];
        let mut w = Writer::new(&mut buf);
        let (_, n) = s.write_new(id(), &mut w, 4).unwrap();
        assert_eq!(n, 4);
        assert_eq!(s.sendable_new(), 6);
        s.max_data = 100;
        assert_eq!(s.sendable_new(), 16);
    }
}
