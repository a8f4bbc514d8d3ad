//! [`Streams`]: the set of streams of one session, their scheduling and the session-wide flow
//! control.
//!
//! Work is found through queues rather than scans: `control` (OPEN, RESET, WINDOW frames owed),
//! `retransmit` (streams with lost data or a lone FIN to resend) and `send` (streams with new
//! data the peer's stream window allows). Each stream is in each queue at most once (guarded by
//! a flag); entries of streams dropped meanwhile are skipped when popped.
//!
//! Peer-initiated stream ids that were ever seen are recorded compactly as "every index below
//! `peer_next` except the `peer_unseen` ones": live streams are in the map, the rest are closed,
//! so late retransmissions for them are ignored and memory stays bounded however many streams a
//! session carries.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::time::{Duration, Instant};

use super::range_set::RangeSet;
use super::recv::{RecvState, RecvStream, RecvWindow};
use super::send::{SendState, SendStream};
use super::{
    INITIAL_SESSION_WINDOW, INITIAL_STREAM_WINDOW, MuxConfig, MuxError, REFUSED, ReadOutcome,
    SentFrame, StreamError, StreamEvent, VARINT_MAX,
};
use crate::wire::{Frame, Side, StreamId, WindowTarget, Writer};

/// Unused peer stream numbers we keep track of. An honest peer opens streams in order, so gaps
/// come only from reordering and stay few.
const MAX_PEER_GAPS: usize = 4096;
/// Refusals waiting to be sent; beyond this (a flood) they are dropped.
const MAX_PENDING_REFUSALS: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Control {
    Open(StreamId),
    Reset(StreamId),
    Window(WindowTarget),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OpenState {
    /// The peer opened the stream: we send no OPEN.
    Peer,
    Queued,
    Sent,
    Acked,
}

#[derive(Debug)]
struct Stream {
    map_id: Option<u32>,
    /// The application knows the stream (it opened it, or `Opened` was emitted).
    reported: bool,
    open: OpenState,
    send: SendStream,
    recv: RecvStream,
    /// The peer reset the stream with this code.
    peer_reset: Option<u64>,
    read_notified: bool,
    in_send_queue: bool,
    in_retransmit_queue: bool,
    window_queued: bool,
}

impl Stream {
    fn is_done(&self) -> bool {
        let opened = !matches!(self.open, OpenState::Queued | OpenState::Sent);
        self.recv.is_done()
            && (self.send.state == SendState::ResetAcked || (self.send.is_done() && opened))
    }
}

/// Hashes stream ids (already well spread in their low bits, but chosen by the peer) with a
/// fixed folded multiply: deterministic, unlike `RandomState`, which matters for simulation.
#[derive(Debug, Default, Clone, Copy)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u64(&mut self, n: u64) {
        let p = u128::from(n ^ self.0 ^ 0x243f_6a88_85a3_08d3) * 0x9e37_79b9_7f4a_7c15;
        self.0 = (p as u64) ^ ((p >> 64) as u64);
    }
}

type StreamMap = HashMap<StreamId, Stream, BuildHasherDefault<IdHasher>>;

/// All streams of one session. See the [module docs](super).
pub struct Streams {
    side: Side,
    config: MuxConfig,
    /// Our initial per-stream receive window (config, at least the protocol's initial one).
    stream_window: u64,
    streams: StreamMap,
    next_local: u64,
    local_live: u64,
    peer_live: u64,
    peer_next: u64,
    peer_unseen: RangeSet,
    control: VecDeque<Control>,
    refused: VecDeque<StreamId>,
    retransmit: VecDeque<StreamId>,
    send: VecDeque<StreamId>,
    events: VecDeque<StreamEvent>,
    /// New bytes sent, summed over streams (what the peer's session window counts).
    session_sent: u64,
    session_max_data: u64,
    /// Highest offsets received, summed over streams.
    session_received: u64,
    /// Bytes read by the application or discarded.
    session_consumed: u64,
    session_window: RecvWindow,
    session_window_queued: bool,
}

impl std::fmt::Debug for Streams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Not the buffers: they can hold megabytes.
        f.debug_struct("Streams")
            .field("side", &self.side)
            .field("streams", &self.streams.len())
            .field("session_sent", &self.session_sent)
            .field("session_max_data", &self.session_max_data)
            .field("session_received", &self.session_received)
            .field("session_consumed", &self.session_consumed)
            .field("session_window", &self.session_window.max)
            .finish_non_exhaustive()
    }
}

impl Streams {
    pub fn new(side: Side, config: MuxConfig) -> Self {
        let stream_window = config.stream_receive_window.max(INITIAL_STREAM_WINDOW);
        let session_window = config.session_receive_window.max(INITIAL_SESSION_WINDOW);
        let mut this = Self {
            side,
            stream_window,
            streams: StreamMap::default(),
            next_local: 0,
            local_live: 0,
            peer_live: 0,
            peer_next: 0,
            peer_unseen: RangeSet::default(),
            control: VecDeque::new(),
            refused: VecDeque::new(),
            retransmit: VecDeque::new(),
            send: VecDeque::new(),
            events: VecDeque::new(),
            session_sent: 0,
            session_max_data: INITIAL_SESSION_WINDOW,
            session_received: 0,
            session_consumed: 0,
            session_window: RecvWindow::new(session_window, config.max_session_receive_window),
            session_window_queued: false,
            config,
        };
        if session_window > INITIAL_SESSION_WINDOW {
            this.session_window_queued = true;
            this.control
                .push_back(Control::Window(WindowTarget::Session));
        }
        this
    }

    // ---- application side ----

    /// Opens a stream; its OPEN frame carries `map_id`.
    pub fn open(&mut self, map_id: u32) -> Result<StreamId, StreamError> {
        if self.local_live >= self.config.max_incoming_streams || self.next_local >= VARINT_MAX >> 1
        {
            return Err(StreamError::TooManyStreams);
        }
        let id = StreamId::new(self.side, self.next_local);
        self.next_local += 1;
        self.local_live += 1;
        let mut stream = self.new_stream(OpenState::Queued);
        stream.map_id = Some(map_id);
        stream.reported = true;
        self.control.push_back(Control::Open(id));
        self.insert_stream(id, stream);
        Ok(id)
    }

    /// Queues data; returns how much was accepted (0: the send buffer is full, a `Writable`
    /// event follows when space frees).
    pub fn write(&mut self, id: StreamId, data: &[u8]) -> Result<usize, StreamError> {
        let Some(s) = self.streams.get_mut(&id).filter(|s| s.reported) else {
            return Err(self.missing(id));
        };
        writable(s)?;
        let n = s.send.write(data, self.config.send_buffer);
        if s.send.sendable_new() > 0 && !s.in_send_queue {
            s.in_send_queue = true;
            self.send.push_back(id);
        }
        Ok(n)
    }

    /// Ends the stream after the data written so far (a FIN).
    pub fn finish(&mut self, id: StreamId) -> Result<(), StreamError> {
        let Some(s) = self.streams.get_mut(&id).filter(|s| s.reported) else {
            return Err(self.missing(id));
        };
        writable(s)?;
        s.send.finish();
        // With all data already sent the FIN goes out alone; otherwise on the last data frame.
        if s.send.needs_retransmit() && !s.in_retransmit_queue {
            s.in_retransmit_queue = true;
            self.retransmit.push_back(id);
        }
        Ok(())
    }

    /// Abandons the stream both ways: unsent and unacknowledged data is dropped, a RESET tells
    /// the peer, and whatever the peer still sends is discarded.
    pub fn reset(&mut self, id: StreamId, error_code: u64) -> Result<(), StreamError> {
        if error_code >= REFUSED {
            return Err(StreamError::InvalidErrorCode);
        }
        let Some(s) = self.streams.get_mut(&id).filter(|s| s.reported) else {
            return Err(self.missing(id));
        };
        if s.send.is_reset() || s.peer_reset.is_some() {
            return Ok(());
        }
        s.send.reset(error_code);
        self.control.push_back(Control::Reset(id));
        let mut unread = 0;
        let mut stopped = false;
        if s.recv.state == RecvState::Recv {
            unread = s.recv.discard(RecvState::Stopped);
            stopped = true;
        }
        if stopped {
            self.consume(unread);
        }
        Ok(())
    }

    /// Reads in-order data. `fin` in the outcome means the end of the stream was reached.
    pub fn read(&mut self, id: StreamId, buf: &mut [u8]) -> Result<ReadOutcome, StreamError> {
        let Some(s) = self.streams.get_mut(&id).filter(|s| s.reported) else {
            return Err(self.missing(id));
        };
        match s.recv.state {
            RecvState::Recv => {}
            RecvState::DataRead => return Ok(ReadOutcome { len: 0, fin: true }),
            RecvState::ResetRecvd { code } => return Err(StreamError::Reset { code }),
            RecvState::Stopped => return Err(StreamError::Closed),
        }
        s.read_notified = false;
        if !s.recv.is_readable() {
            return Err(StreamError::WouldBlock);
        }
        let (len, fin) = s.recv.read(buf);
        if !s.window_queued
            && s.recv.wants_window()
            && s.recv.window.needs_update(s.recv.read_offset)
        {
            s.window_queued = true;
            self.control
                .push_back(Control::Window(WindowTarget::Stream(id)));
        }
        self.consume(len as u64);
        if fin {
            self.events.push_back(StreamEvent::Finished { id });
            self.maybe_close(id);
        }
        Ok(ReadOutcome { len, fin })
    }

    pub fn poll_event(&mut self) -> Option<StreamEvent> {
        self.events.pop_front()
    }

    /// The map id the stream was opened with (`None` for unknown streams and peer streams whose
    /// OPEN has not arrived).
    pub fn map_id(&self, id: StreamId) -> Option<u32> {
        self.streams
            .get(&id)
            .filter(|s| s.reported)
            .and_then(|s| s.map_id)
    }

    /// Streams with state (either direction not done yet).
    pub fn open_count(&self) -> usize {
        self.streams.len()
    }

    // ---- session side ----

    /// Handles a STREAM, OPEN, RESET or WINDOW frame of an authenticated packet (other frames
    /// are ignored). An error is a protocol violation: close the session with its code.
    pub fn handle_frame(&mut self, frame: &Frame<'_>) -> Result<(), MuxError> {
        match *frame {
            Frame::Stream {
                id,
                offset,
                fin,
                data,
            } => self.on_stream(id, offset, fin, data),
            Frame::Open { id, map_id } => self.on_open(id, map_id),
            Frame::Reset {
                id,
                error_code,
                final_size,
            } => self.on_reset(id, error_code, final_size),
            Frame::Window {
                target: WindowTarget::Session,
                max,
            } => {
                self.session_max_data = self.session_max_data.max(max);
                Ok(())
            }
            Frame::Window {
                target: WindowTarget::Stream(id),
                max,
            } => self.on_window(id, max),
            _ => Ok(()),
        }
    }

    /// Whether `write_frames` would write something (it may rarely write nothing when this is
    /// true, e.g. for work of a stream that was dropped meanwhile).
    pub fn wants_to_send(&self) -> bool {
        !self.control.is_empty()
            || !self.refused.is_empty()
            || !self.retransmit.is_empty()
            || (!self.send.is_empty() && self.session_max_data > self.session_sent)
    }

    /// Appends as many frames as fit: control frames, then lost data, then new data, each stream
    /// getting one frame per turn. The last frame fills the writer exactly when data allows (it
    /// then omits its length, so nothing can follow it). `now` and `rtt` drive window
    /// auto-tuning. Any single frame fits in 32 bytes; with less room it may write nothing (and
    /// stops at the first control frame that does not fit), so give it a whole packet's room.
    pub fn write_frames(
        &mut self,
        now: Instant,
        rtt: Duration,
        w: &mut Writer<'_>,
        sent: &mut Vec<SentFrame>,
    ) {
        if !self.write_control(now, rtt, w, sent) {
            return;
        }
        self.write_retransmissions(w, sent);
        self.write_new_data(w, sent);
    }

    pub fn on_frame_acked(&mut self, frame: &SentFrame) {
        match *frame {
            SentFrame::Stream {
                id,
                offset,
                len,
                fin,
            } => {
                let Some(s) = self.streams.get_mut(&id) else {
                    return;
                };
                if s.send.on_ack(offset, len, fin)
                    && s.send.blocked
                    && s.send.state == SendState::Ready
                {
                    let free = self.config.send_buffer.saturating_sub(s.send.buffered());
                    if free >= (self.config.send_buffer / 4).max(1) {
                        s.send.blocked = false;
                        self.events.push_back(StreamEvent::Writable { id });
                    }
                }
                self.maybe_close(id);
            }
            SentFrame::Open { id } => {
                if let Some(s) = self.streams.get_mut(&id) {
                    s.open = OpenState::Acked;
                    self.maybe_close(id);
                }
            }
            SentFrame::Reset { id } => {
                if let Some(s) = self.streams.get_mut(&id)
                    && matches!(
                        s.send.state,
                        SendState::ResetPending { .. } | SendState::ResetSent { .. }
                    )
                {
                    s.send.state = SendState::ResetAcked;
                    self.maybe_close(id);
                }
            }
            SentFrame::Window { .. } => {}
        }
    }

    /// Re-queues what a lost frame carried, if still needed. WINDOW frames are re-sent with the
    /// current limit.
    pub fn on_frame_lost(&mut self, frame: &SentFrame) {
        match *frame {
            SentFrame::Stream {
                id,
                offset,
                len,
                fin,
            } => {
                let Some(s) = self.streams.get_mut(&id) else {
                    return;
                };
                s.send.on_lost(offset, len, fin);
                if s.send.needs_retransmit() && !s.in_retransmit_queue {
                    s.in_retransmit_queue = true;
                    self.retransmit.push_back(id);
                }
            }
            SentFrame::Open { id } => {
                if let Some(s) = self.streams.get_mut(&id)
                    && s.open == OpenState::Sent
                    && !s.send.is_reset()
                {
                    s.open = OpenState::Queued;
                    self.control.push_back(Control::Open(id));
                }
            }
            SentFrame::Reset { id } => match self.streams.get_mut(&id) {
                Some(s) => {
                    if let SendState::ResetSent { code, final_size } = s.send.state {
                        s.send.state = SendState::ResetPending { code, final_size };
                        self.control.push_back(Control::Reset(id));
                    }
                }
                None => {
                    // A refusal (no state was kept for the stream).
                    if id.initiator() != self.side && self.refused.len() < MAX_PENDING_REFUSALS {
                        self.refused.push_back(id);
                    }
                }
            },
            SentFrame::Window {
                target: WindowTarget::Session,
            } => {
                if !self.session_window_queued {
                    self.session_window_queued = true;
                    self.control
                        .push_back(Control::Window(WindowTarget::Session));
                }
            }
            SentFrame::Window {
                target: WindowTarget::Stream(id),
            } => {
                if let Some(s) = self.streams.get_mut(&id)
                    && s.recv.wants_window()
                    && !s.window_queued
                {
                    s.window_queued = true;
                    self.control
                        .push_back(Control::Window(WindowTarget::Stream(id)));
                }
            }
        }
    }

    /// Ranges of unseen peer stream numbers (bounded memory check).
    #[cfg(test)]
    pub(super) fn peer_record_len(&self) -> usize {
        self.peer_unseen.len()
    }

    // ---- internals ----

    fn new_stream(&self, open: OpenState) -> Stream {
        Stream {
            map_id: None,
            reported: false,
            open,
            send: SendStream::new(INITIAL_STREAM_WINDOW),
            recv: RecvStream::new(self.stream_window, self.config.max_stream_receive_window),
            peer_reset: None,
            read_notified: false,
            in_send_queue: false,
            in_retransmit_queue: false,
            window_queued: false,
        }
    }

    fn insert_stream(&mut self, id: StreamId, mut stream: Stream) {
        if self.stream_window > INITIAL_STREAM_WINDOW {
            // Tell the peer about our larger window right away.
            stream.window_queued = true;
            self.control
                .push_back(Control::Window(WindowTarget::Stream(id)));
        }
        self.streams.insert(id, stream);
    }

    /// The error for an application call on a stream without (visible) state.
    fn missing(&self, id: StreamId) -> StreamError {
        let existed = if id.initiator() == self.side {
            id.index() < self.next_local
        } else {
            self.peer_dropped(id)
        };
        if existed {
            StreamError::Closed
        } else {
            StreamError::UnknownStream
        }
    }

    /// Whether a peer stream existed and was dropped.
    fn peer_dropped(&self, id: StreamId) -> bool {
        id.index() < self.peer_next
            && !self.peer_unseen.contains(id.index())
            && !self.streams.contains_key(&id)
    }

    /// Makes sure a frame's stream exists, creating peer streams on their first frame. `false`:
    /// ignore the frame (stream closed, or refused).
    fn get_or_create(&mut self, id: StreamId) -> Result<bool, MuxError> {
        if self.streams.contains_key(&id) {
            return Ok(true);
        }
        if id.initiator() == self.side {
            return if id.index() < self.next_local {
                Ok(false)
            } else {
                Err(MuxError::StreamState(id))
            };
        }
        let index = id.index();
        if index >= self.peer_next {
            self.peer_unseen.insert(self.peer_next, index);
            self.peer_next = index + 1;
        } else if self.peer_unseen.contains(index) {
            self.peer_unseen.remove(index, index + 1);
        } else {
            return Ok(false);
        }
        if self.peer_unseen.len() > MAX_PEER_GAPS {
            return Err(MuxError::StreamLimit);
        }
        if self.peer_live >= self.config.max_incoming_streams {
            if self.refused.len() < MAX_PENDING_REFUSALS {
                self.refused.push_back(id);
            }
            return Ok(false);
        }
        self.peer_live += 1;
        let stream = self.new_stream(OpenState::Peer);
        self.insert_stream(id, stream);
        Ok(true)
    }

    fn on_stream(
        &mut self,
        id: StreamId,
        offset: u64,
        fin: bool,
        data: &[u8],
    ) -> Result<(), MuxError> {
        if !self.get_or_create(id)? {
            return Ok(());
        }
        let Some(s) = self.streams.get_mut(&id) else {
            return Ok(());
        };
        let delta = s.recv.check(id, offset, data.len(), fin)?;
        if self.session_received + delta > self.session_window.max {
            return Err(MuxError::SessionFlowControl);
        }
        self.session_received += delta;
        let changed = s.recv.ingest(offset, data, fin);
        if changed && s.reported && !s.read_notified {
            s.read_notified = true;
            self.events.push_back(StreamEvent::Readable { id });
        }
        if s.recv.state == RecvState::Stopped {
            // Discarded on arrival.
            self.consume(delta);
            self.maybe_close(id);
        }
        Ok(())
    }

    fn on_open(&mut self, id: StreamId, map_id: u32) -> Result<(), MuxError> {
        if id.initiator() == self.side {
            return Err(MuxError::StreamState(id));
        }
        if !self.get_or_create(id)? {
            return Ok(());
        }
        let Some(s) = self.streams.get_mut(&id) else {
            return Ok(());
        };
        match s.map_id {
            Some(m) if m != map_id => return Err(MuxError::StreamState(id)),
            Some(_) => return Ok(()),
            None => s.map_id = Some(map_id),
        }
        // A stream reset before the application heard of it stays silent.
        if s.reported || s.peer_reset.is_some() || s.send.is_reset() {
            return Ok(());
        }
        s.reported = true;
        self.events.push_back(StreamEvent::Opened { id, map_id });
        if s.recv.is_readable() {
            s.read_notified = true;
            self.events.push_back(StreamEvent::Readable { id });
        }
        Ok(())
    }

    fn on_window(&mut self, id: StreamId, max: u64) -> Result<(), MuxError> {
        if !self.get_or_create(id)? {
            return Ok(());
        }
        let Some(s) = self.streams.get_mut(&id) else {
            return Ok(());
        };
        s.send.max_data = s.send.max_data.max(max);
        if s.send.sendable_new() > 0 && !s.in_send_queue {
            s.in_send_queue = true;
            self.send.push_back(id);
        }
        Ok(())
    }

    fn on_reset(&mut self, id: StreamId, code: u64, final_size: u64) -> Result<(), MuxError> {
        if !self.get_or_create(id)? {
            return Ok(());
        }
        let Some(s) = self.streams.get_mut(&id) else {
            return Ok(());
        };
        // The peer refused one of our streams and kept nothing: it accounted none of the data
        // we sent on it, so neither do we.
        let refusal = id.initiator() == self.side
            && code == REFUSED
            && final_size == 0
            && s.peer_reset.is_none()
            && s.recv.highest == 0
            && s.recv.final_size.is_none();
        if refusal {
            let locally_reset = s.send.is_reset();
            self.session_sent -= s.send.sent().min(self.session_sent);
            self.streams.remove(&id);
            self.local_live -= 1;
            if !locally_reset {
                self.events.push_back(StreamEvent::Reset {
                    id,
                    error_code: REFUSED,
                });
            }
            self.events.push_back(StreamEvent::Closed { id });
            return Ok(());
        }
        let delta = s.recv.check_end(id, final_size, true)?;
        if self.session_received + delta > self.session_window.max {
            return Err(MuxError::SessionFlowControl);
        }
        self.session_received += delta;
        let mut consumed = 0;
        match s.recv.state {
            RecvState::Recv => {
                s.recv.ingest(final_size, &[], true);
                consumed = s.recv.discard(RecvState::ResetRecvd { code });
                s.peer_reset = Some(code);
            }
            RecvState::DataRead => s.peer_reset = Some(code),
            RecvState::Stopped => {
                s.recv.ingest(final_size, &[], true);
                consumed = delta;
            }
            RecvState::ResetRecvd { .. } => {}
        }
        if s.peer_reset == Some(code) && s.reported && !s.send.is_reset() {
            self.events.push_back(StreamEvent::Reset {
                id,
                error_code: code,
            });
        }
        // Answer with our own final size so the peer can finish its accounting too.
        if !s.send.is_done() && !s.send.is_reset() {
            s.send.reset(code);
            self.control.push_back(Control::Reset(id));
        }
        self.consume(consumed);
        self.maybe_close(id);
        Ok(())
    }

    /// Counts bytes read or discarded, queueing a session WINDOW when half the credit is used.
    fn consume(&mut self, n: u64) {
        self.session_consumed += n;
        if !self.session_window_queued && self.session_window.needs_update(self.session_consumed) {
            self.session_window_queued = true;
            self.control
                .push_back(Control::Window(WindowTarget::Session));
        }
    }

    /// Drops the stream if both directions are done.
    fn maybe_close(&mut self, id: StreamId) {
        let Some(s) = self.streams.get(&id) else {
            return;
        };
        if !s.is_done() {
            return;
        }
        let reported = s.reported;
        self.streams.remove(&id);
        if id.initiator() == self.side {
            self.local_live -= 1;
        } else {
            self.peer_live -= 1;
        }
        if reported {
            self.events.push_back(StreamEvent::Closed { id });
        }
    }

    /// Writes queued control frames; returns false if the writer filled up.
    fn write_control(
        &mut self,
        now: Instant,
        rtt: Duration,
        w: &mut Writer<'_>,
        sent: &mut Vec<SentFrame>,
    ) -> bool {
        while let Some(&id) = self.refused.front() {
            let frame = Frame::Reset {
                id,
                error_code: REFUSED,
                final_size: 0,
            };
            if frame.encoded_len() > w.remaining() || frame.encode(w).is_err() {
                return false;
            }
            self.refused.pop_front();
            sent.push(SentFrame::Reset { id });
        }
        while let Some(&c) = self.control.front() {
            let (frame, record) = match c {
                Control::Open(id) => match self.streams.get(&id) {
                    Some(s) if s.open == OpenState::Queued => (
                        Frame::Open {
                            id,
                            map_id: s.map_id.unwrap_or(0),
                        },
                        SentFrame::Open { id },
                    ),
                    _ => {
                        self.control.pop_front();
                        continue;
                    }
                },
                Control::Reset(id) => match self.streams.get(&id).map(|s| s.send.state) {
                    Some(SendState::ResetPending { code, final_size }) => (
                        Frame::Reset {
                            id,
                            error_code: code,
                            final_size,
                        },
                        SentFrame::Reset { id },
                    ),
                    _ => {
                        self.control.pop_front();
                        continue;
                    }
                },
                Control::Window(target @ WindowTarget::Session) => {
                    let max = self.session_window.update(self.session_consumed, now, rtt);
                    (Frame::Window { target, max }, SentFrame::Window { target })
                }
                Control::Window(target @ WindowTarget::Stream(id)) => {
                    match self.streams.get_mut(&id) {
                        Some(s) if s.recv.wants_window() => {
                            let max = s.recv.window.update(s.recv.read_offset, now, rtt);
                            // A session window smaller than its streams' would throttle them.
                            self.session_window
                                .grow_to(s.recv.window.window.saturating_mul(3) / 2);
                            (Frame::Window { target, max }, SentFrame::Window { target })
                        }
                        other => {
                            if let Some(s) = other {
                                s.window_queued = false;
                            }
                            self.control.pop_front();
                            continue;
                        }
                    }
                }
            };
            if frame.encoded_len() > w.remaining() || frame.encode(w).is_err() {
                return false;
            }
            self.control.pop_front();
            sent.push(record);
            match c {
                Control::Open(id) => {
                    if let Some(s) = self.streams.get_mut(&id) {
                        s.open = OpenState::Sent;
                    }
                }
                Control::Reset(id) => {
                    if let Some(s) = self.streams.get_mut(&id)
                        && let SendState::ResetPending { code, final_size } = s.send.state
                    {
                        s.send.state = SendState::ResetSent { code, final_size };
                    }
                }
                Control::Window(WindowTarget::Session) => self.session_window_queued = false,
                Control::Window(WindowTarget::Stream(id)) => {
                    if let Some(s) = self.streams.get_mut(&id) {
                        s.window_queued = false;
                    }
                }
            }
        }
        true
    }

    fn write_retransmissions(&mut self, w: &mut Writer<'_>, sent: &mut Vec<SentFrame>) {
        while let Some(id) = self.retransmit.pop_front() {
            let Some(s) = self.streams.get_mut(&id) else {
                continue;
            };
            if !s.send.needs_retransmit() {
                s.in_retransmit_queue = false;
                continue;
            }
            let Some(frame) = s.send.write_retransmit(id, w) else {
                // No room left.
                self.retransmit.push_front(id);
                return;
            };
            sent.push(frame);
            if s.send.needs_retransmit() {
                self.retransmit.push_back(id);
            } else {
                s.in_retransmit_queue = false;
            }
        }
    }

    fn write_new_data(&mut self, w: &mut Writer<'_>, sent: &mut Vec<SentFrame>) {
        while self.session_max_data > self.session_sent {
            let Some(id) = self.send.pop_front() else {
                return;
            };
            let Some(s) = self.streams.get_mut(&id) else {
                continue;
            };
            let credit = self.session_max_data - self.session_sent;
            match s.send.write_new(id, w, credit) {
                Some((frame, n)) => {
                    self.session_sent += n;
                    sent.push(frame);
                    if s.send.sendable_new() > 0 {
                        self.send.push_back(id);
                    } else {
                        s.in_send_queue = false;
                    }
                }
                None if s.send.sendable_new() > 0 => {
                    // No room left.
                    self.send.push_front(id);
                    return;
                }
                None => s.in_send_queue = false,
            }
        }
    }
}

/// Whether the application may still write to (or finish) the stream.
fn writable(s: &Stream) -> Result<(), StreamError> {
    if let Some(code) = s.peer_reset {
        return Err(StreamError::Reset { code });
    }
    match s.send.state {
        SendState::Ready => Ok(()),
        SendState::Finished => Err(StreamError::Finished),
        _ => Err(StreamError::Closed),
    }
}
