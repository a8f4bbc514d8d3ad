//! The receiving half of a stream: reassembly of out-of-order data, the final size, and the
//! receive window we advertise (shared logic with the session-wide window in [`RecvWindow`]).
//!
//! Data is kept in a deque indexed by `offset - read_offset`. Since the peer may never send
//! beyond the window we advertised, the deque never grows past it, and out-of-order chunks are
//! copied straight to their place; `received` records which ranges actually arrived.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::MuxError;
use super::range_set::RangeSet;
use crate::wire::StreamId;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RecvState {
    /// Receiving (the FIN may have arrived, but not all data was read yet).
    Recv,
    /// FIN received and everything read.
    DataRead,
    /// The peer reset the stream; buffered data was discarded.
    ResetRecvd { code: u64 },
    /// We reset the stream and discard whatever still arrives; done once the final size is
    /// known.
    Stopped,
}

/// Credit returned faster than this many round trips means the window limits the sender.
const GROWTH_RTTS: u32 = 4;

/// A receive window that is re-advertised when half of it was consumed and doubles (up to a
/// maximum) when that happens more often than every [`GROWTH_RTTS`] round trips, so that it
/// converges on a few times the bandwidth-delay product of the path.
#[derive(Debug, Clone)]
pub(super) struct RecvWindow {
    /// The limit the peer was told (or will be told: we never lower it).
    pub(super) max: u64,
    pub(super) window: u64,
    max_window: u64,
    last_update: Option<Instant>,
}

impl RecvWindow {
    pub(super) fn new(window: u64, max_window: u64) -> Self {
        Self {
            max: window,
            window,
            max_window: max_window.max(window),
            last_update: None,
        }
    }

    /// Whether `consumed` bytes used up half of the advertised credit.
    pub(super) fn needs_update(&self, consumed: u64) -> bool {
        self.max.saturating_sub(consumed) <= self.window / 2
    }

    /// The limit to advertise now: raised (and the window perhaps grown) if due, else the current
    /// one (a lost WINDOW frame is re-sent with this value).
    pub(super) fn update(&mut self, consumed: u64, now: Instant, rtt: Duration) -> u64 {
        if self.needs_update(consumed) {
            if let Some(last) = self.last_update {
                // Four round trips, not two: on a lossy path the application consumes in bursts
                // (whenever a retransmission fills a hole), so updates come irregularly even
                // when the window is what limits the sender.
                if now.saturating_duration_since(last) < rtt * GROWTH_RTTS {
                    self.window = self.window.saturating_mul(2).min(self.max_window);
                }
            }
            self.last_update = Some(now);
            self.max = self.max.max(consumed + self.window);
        }
        self.max
    }

    /// Grows the window (never beyond the maximum), for the session window following its streams.
    pub(super) fn grow_to(&mut self, window: u64) {
        self.window = self.window.max(window.min(self.max_window));
    }
}

#[derive(Debug)]
pub(super) struct RecvStream {
    buf: VecDeque<u8>,
    /// Every range that arrived, including what was read.
    received: RangeSet,
    pub(super) read_offset: u64,
    /// Data up to here arrived without gaps.
    contiguous_end: u64,
    /// The highest offset seen (what the session window accounts for).
    pub(super) highest: u64,
    pub(super) final_size: Option<u64>,
    pub(super) window: RecvWindow,
    pub(super) state: RecvState,
}

impl RecvStream {
    pub(super) fn new(window: u64, max_window: u64) -> Self {
        Self {
            buf: VecDeque::new(),
            received: RangeSet::default(),
            read_offset: 0,
            contiguous_end: 0,
            highest: 0,
            final_size: None,
            window: RecvWindow::new(window, max_window),
            state: RecvState::Recv,
        }
    }

    /// Validates a STREAM frame against the window and final size; returns how much it raises
    /// the highest offset seen.
    pub(super) fn check(
        &self,
        id: StreamId,
        offset: u64,
        len: usize,
        fin: bool,
    ) -> Result<u64, MuxError> {
        let end = offset
            .checked_add(len as u64)
            .ok_or(MuxError::FinalSize(id))?;
        self.check_end(id, end, fin)
    }

    /// Same for a stream end `end`, final if `fin` (also used for RESET's final size).
    pub(super) fn check_end(&self, id: StreamId, end: u64, fin: bool) -> Result<u64, MuxError> {
        if let Some(final_size) = self.final_size
            && (end > final_size || (fin && end != final_size))
        {
            return Err(MuxError::FinalSize(id));
        }
        if fin && end < self.highest {
            return Err(MuxError::FinalSize(id));
        }
        if end > self.window.max {
            return Err(MuxError::StreamFlowControl(id));
        }
        Ok(end.saturating_sub(self.highest))
    }

    /// Stores a frame's data; `check` must have accepted it. Returns whether the readable
    /// state changed (new in-order data, or the end became reachable).
    pub(super) fn ingest(&mut self, offset: u64, data: &[u8], fin: bool) -> bool {
        let end = offset + data.len() as u64;
        self.highest = self.highest.max(end);
        let newly_final = fin && self.final_size.is_none();
        if fin {
            self.final_size = Some(end);
        }
        if self.state != RecvState::Recv {
            return false;
        }
        let start = offset.max(self.read_offset);
        if start < end {
            let skip = (start - offset) as usize;
            let pos = (start - self.read_offset) as usize;
            if let Some(src) = data.get(skip..) {
                write_at(&mut self.buf, pos, src);
                self.received.insert(start, end);
            }
        }
        let before = self.contiguous_end;
        if let Some(r) = self.received.containing(self.contiguous_end) {
            self.contiguous_end = r.end;
        }
        self.contiguous_end > before
            || (newly_final && self.final_size == Some(self.contiguous_end))
    }

    /// Whether a `read` would return data or the end of the stream.
    pub(super) fn is_readable(&self) -> bool {
        self.state == RecvState::Recv
            && (self.contiguous_end > self.read_offset || self.final_size == Some(self.read_offset))
    }

    /// Copies in-order data out; returns the length and whether the end was reached.
    pub(super) fn read(&mut self, out: &mut [u8]) -> (usize, bool) {
        let available =
            usize::try_from(self.contiguous_end - self.read_offset).unwrap_or(usize::MAX);
        let n = available.min(out.len()).min(self.buf.len());
        let (a, b) = self.buf.as_slices();
        let from_a = n.min(a.len());
        if let (Some(dst), Some(src)) = (out.get_mut(..from_a), a.get(..from_a)) {
            dst.copy_from_slice(src);
        }
        if let (Some(dst), Some(src)) = (out.get_mut(from_a..n), b.get(..n - from_a)) {
            dst.copy_from_slice(src);
        }
        self.buf.drain(..n);
        self.read_offset += n as u64;
        let fin = self.final_size == Some(self.read_offset);
        if fin {
            self.state = RecvState::DataRead;
            self.free();
        }
        (n, fin)
    }

    /// Drops buffered data and moves to `state`; returns how many bytes below the highest offset
    /// were never read (for session flow control).
    pub(super) fn discard(&mut self, state: RecvState) -> u64 {
        let unread = self.highest - self.read_offset;
        self.read_offset = self.highest;
        self.contiguous_end = self.highest;
        self.state = state;
        self.free();
        unread
    }

    fn free(&mut self) {
        self.buf = VecDeque::new();
        self.received = RangeSet::default();
    }

    /// Whether nothing more can come from the peer and the application was told everything.
    pub(super) fn is_done(&self) -> bool {
        match self.state {
            RecvState::Recv => false,
            RecvState::DataRead | RecvState::ResetRecvd { .. } => true,
            RecvState::Stopped => self.final_size.is_some(),
        }
    }

    /// Whether a stream WINDOW update is worth sending.
    pub(super) fn wants_window(&self) -> bool {
        self.state == RecvState::Recv && self.final_size.is_none()
    }
}

/// Copies `src` into `buf` at `pos`, growing it (zero-filled) as needed.
fn write_at(buf: &mut VecDeque<u8>, pos: usize, src: &[u8]) {
    if pos == buf.len() {
        buf.extend(src);
        return;
    }
    let end = pos + src.len();
    if buf.len() < end {
        buf.resize(end, 0);
    }
    let (a, b) = buf.as_mut_slices();
    let mut src = src;
    let mut pos = pos;
    if pos < a.len() {
        let n = (a.len() - pos).min(src.len());
        if let (Some(dst), Some(s)) = (a.get_mut(pos..pos + n), src.get(..n)) {
            dst.copy_from_slice(s);
        }
        src = src.get(n..).unwrap_or_default();
        pos += n;
    }
    if !src.is_empty() {
        let p = pos - a.len();
        if let Some(dst) = b.get_mut(p..p + src.len()) {
            dst.copy_from_slice(src);
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::wire::Side;

    fn id() -> StreamId {
        StreamId::new(Side::Server, 1)
    }

    /// Chunks of `data` covering all of it, with random overlaps and duplicates, shuffled.
    fn chunks() -> impl Strategy<Value = (Vec<u8>, Vec<(usize, usize)>, Vec<usize>)> {
        (1usize..3000)
            .prop_flat_map(|len| {
                (
                    prop::collection::vec(any::<u8>(), len),
                    prop::collection::vec((0..len, 1usize..400), 1..40),
                    prop::collection::vec(1usize..700, 1..20),
                    any::<u64>(),
                )
            })
            .prop_map(|(data, extra, reads, seed)| {
                let len = data.len();
                // A covering sequence of pieces plus random extra (overlapping) ones.
                let mut pieces = Vec::new();
                let mut at = 0;
                let mut x = seed | 1;
                while at < len {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let n = 1 + (x % 500) as usize;
                    let end = (at + n).min(len);
                    pieces.push((at, end));
                    at = end;
                }
                for (s, n) in extra {
                    pieces.push((s, (s + n).min(len)));
                }
                // Fisher-Yates with the same xorshift, duplicating a few.
                for i in (1..pieces.len()).rev() {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    pieces.swap(i, (x % (i as u64 + 1)) as usize);
                }
                let dup = pieces.iter().take(3).copied().collect::<Vec<_>>();
                pieces.extend(dup);
                (data, pieces, reads)
            })
    }

    proptest! {
        #[test]
        fn stream_reassembly((data, pieces, reads) in chunks()) {
            let len = data.len();
            let mut s = RecvStream::new(len as u64, len as u64);
            let mut out = Vec::new();
            let mut reads = reads.into_iter().cycle();
            let mut done = false;
            for (start, end) in pieces {
                let fin = end == len;
                prop_assert!(s.check(id(), start as u64, end - start, fin).is_ok());
                s.ingest(start as u64, &data[start..end], fin);
                // Read whatever is there, in random sizes.
                while s.is_readable() {
                    let mut buf = vec![0u8; reads.next().unwrap_or(1)];
                    let (n, fin) = s.read(&mut buf);
                    out.extend_from_slice(&buf[..n]);
                    if fin { done = true; break; }
                }
            }
            prop_assert!(done);
            prop_assert_eq!(out, data);
            prop_assert!(s.is_done());
            prop_assert!(!s.is_readable());
        }

        #[test]
        fn data_beyond_the_window_is_rejected(window in 1u64..5000, offset in 0u64..6000, len in 0usize..2000) {
            let s = RecvStream::new(window, window * 4);
            let ok = offset + len as u64 <= window;
            prop_assert_eq!(s.check(id(), offset, len, false).is_ok(), ok);
            if !ok {
                prop_assert_eq!(s.check(id(), offset, len, false), Err(MuxError::StreamFlowControl(id())));
            }
        }

        #[test]
        fn final_size_cannot_change(fin_at in 1u64..1000, other in 0u64..1100) {
            let mut s = RecvStream::new(2000, 2000);
            s.check(id(), 0, fin_at as usize, true).unwrap();
            s.ingest(0, &vec![7; fin_at as usize], true);
            let r = s.check_end(id(), other, true);
            prop_assert_eq!(r.is_ok(), other == fin_at);
            // Data past the final size is an error, with or without FIN.
            prop_assert_eq!(s.check_end(id(), other, false).is_ok(), other <= fin_at);
        }
    }

    #[test]
    fn fin_below_received_data_is_rejected() {
        let mut s = RecvStream::new(100, 100);
        s.ingest(10, &[1; 20], false);
        assert_eq!(s.check(id(), 0, 5, true), Err(MuxError::FinalSize(id())));
        assert_eq!(s.check(id(), 0, 30, true), Ok(0));
    }

    #[test]
    fn window_doubles_when_updates_come_fast() {
        let t0 = Instant::now();
        let rtt = Duration::from_millis(10);
        let mut w = RecvWindow::new(100, 1000);
        assert!(!w.needs_update(10));
        assert_eq!(w.update(10, t0, rtt), 100);
        assert_eq!(w.update(50, t0, rtt), 150);
        // Second update within 2 RTTs: window doubles.
        assert_eq!(w.update(100, t0 + Duration::from_millis(5), rtt), 300);
        assert_eq!(w.window, 200);
        // Slow consumer: no growth.
        assert_eq!(w.update(200, t0 + Duration::from_secs(1), rtt), 400);
        assert_eq!(w.window, 200);
        for i in 0..10 {
            w.update(400 + i * 1000, t0 + Duration::from_secs(1), rtt);
        }
        assert_eq!(w.window, 1000);
    }
}
