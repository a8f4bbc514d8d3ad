//! Streams: many reliable, ordered byte streams per session, with per-stream and session-wide
//! flow control, fair scheduling and no head-of-line blocking across streams.
//!
//! This module owns everything between the application's `read`/`write` calls and the frames
//! of a packet: send buffers, reassembly, WINDOW credit, OPEN/RESET handling and stream
//! lifetime. It knows nothing about packets: the session fills packets through
//! [`Streams::write_frames`], feeds received frames to [`Streams::handle_frame`] and reports
//! each sent frame acknowledged or lost.
//!
//! Both ends start out assuming the other's receive windows are [`INITIAL_STREAM_WINDOW`] and
//! [`INITIAL_SESSION_WINDOW`] (protocol constants, so no parameter exchange is needed); larger
//! configured windows are advertised with WINDOW frames as soon as a stream (or the session)
//! exists.
//!
//! A RESET aborts both directions of a stream. The end receiving one answers with its own RESET
//! (unless its sending side already completed), so that both ends learn the final size of
//! both directions, which keeps the session-wide flow-control accounting in agreement.

mod range_set;
mod recv;
mod send;
mod streams;

pub use streams::Streams;

use crate::wire::{StreamId, VARINT_MAX, WindowTarget};

/// The stream receive window each end may assume of the other before any WINDOW frame.
pub const INITIAL_STREAM_WINDOW: u64 = 64 * 1024;
/// The session receive window each end may assume of the other before any WINDOW frame.
pub const INITIAL_SESSION_WINDOW: u64 = 256 * 1024;

/// Error code of the RESET sent for a peer stream refused because too many are open. Reserved:
/// applications cannot reset with it.
pub const REFUSED: u64 = VARINT_MAX;

/// Tuning of a session's streams.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MuxConfig {
    /// Initial per-stream receive window in bytes (at least [`INITIAL_STREAM_WINDOW`]; smaller
    /// values are raised to it because the peer may already rely on that much).
    pub stream_receive_window: u64,
    /// Initial session-wide receive window (at least [`INITIAL_SESSION_WINDOW`]).
    pub session_receive_window: u64,
    /// Auto-tuning may grow a stream's window up to this.
    pub max_stream_receive_window: u64,
    /// Auto-tuning may grow the session window up to this.
    pub max_session_receive_window: u64,
    /// Bytes per stream the application may queue beyond what the peer acknowledged.
    pub send_buffer: u64,
    /// Peer-initiated streams open at once; more are refused with RESET([`REFUSED`]). Also caps
    /// the streams this end opens at once ([`StreamError::TooManyStreams`]).
    pub max_incoming_streams: u64,
}

impl Default for MuxConfig {
    fn default() -> Self {
        Self {
            // A lossy path holds data behind a hole for a round trip or more, so a stream needs
            // about 2.5 bandwidth-delay products of window: 2 MiB covers 100 Mbit/s at 50 ms
            // from the start; auto-tuning grows it from there.
            stream_receive_window: 2 << 20,
            session_receive_window: 8 << 20,
            max_stream_receive_window: 16 << 20,
            max_session_receive_window: 64 << 20,
            send_buffer: 4 << 20,
            max_incoming_streams: 1024,
        }
    }
}

/// A frame [`Streams::write_frames`] put in a packet, to be reported acknowledged or lost.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SentFrame {
    Stream {
        id: StreamId,
        offset: u64,
        len: u32,
        fin: bool,
    },
    Open {
        id: StreamId,
    },
    Reset {
        id: StreamId,
    },
    Window {
        target: WindowTarget,
    },
}

/// Something the application should know about a stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamEvent {
    /// The peer opened a stream (its OPEN frame arrived).
    Opened { id: StreamId, map_id: u32 },
    /// Data (or the end of the stream) can be read. Not repeated until `read` is called again.
    Readable { id: StreamId },
    /// A `write` that accepted less than offered can now accept more.
    Writable { id: StreamId },
    /// The peer's FIN arrived and all data was read.
    Finished { id: StreamId },
    /// The peer reset the stream: reads and writes fail from now on.
    Reset { id: StreamId, error_code: u64 },
    /// Both directions are done and the stream's state is gone.
    Closed { id: StreamId },
}

impl StreamEvent {
    /// The stream the event is about.
    pub fn id(&self) -> StreamId {
        match *self {
            StreamEvent::Opened { id, .. }
            | StreamEvent::Readable { id }
            | StreamEvent::Writable { id }
            | StreamEvent::Finished { id }
            | StreamEvent::Reset { id, .. }
            | StreamEvent::Closed { id } => id,
        }
    }
}

/// What [`Streams::read`] returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadOutcome {
    pub len: usize,
    /// The end of the stream was reached: no more data, ever.
    pub fin: bool,
}

/// Why an application call on a stream failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StreamError {
    #[error("unknown stream")]
    UnknownStream,
    /// The stream no longer exists, or this direction was reset locally.
    #[error("stream closed")]
    Closed,
    /// `write` or `finish` after `finish`.
    #[error("stream already finished")]
    Finished,
    #[error("stream reset by the peer (code {code})")]
    Reset { code: u64 },
    /// `read` with no data available.
    #[error("no data available")]
    WouldBlock,
    #[error("too many open streams")]
    TooManyStreams,
    /// Error codes must be below [`REFUSED`].
    #[error("invalid error code")]
    InvalidErrorCode,
}

/// A protocol violation by the peer; the session closes with [`MuxError::code`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MuxError {
    #[error("peer exceeded the receive window of stream {0}")]
    StreamFlowControl(StreamId),
    #[error("peer exceeded the session receive window")]
    SessionFlowControl,
    #[error("final size of stream {0} changed or exceeded")]
    FinalSize(StreamId),
    /// A frame for a stream of ours that was never opened, or an OPEN for one of ours.
    #[error("invalid frame for stream {0}")]
    StreamState(StreamId),
    /// The peer left too many stream numbers unused.
    #[error("too many stream ids skipped")]
    StreamLimit,
}

impl MuxError {
    pub const FLOW_CONTROL: u64 = 0x11;
    pub const FINAL_SIZE: u64 = 0x12;
    pub const STREAM_STATE: u64 = 0x13;
    pub const STREAM_LIMIT: u64 = 0x14;

    /// The stable code to close the session with.
    pub fn code(&self) -> u64 {
        match self {
            Self::StreamFlowControl(_) | Self::SessionFlowControl => Self::FLOW_CONTROL,
            Self::FinalSize(_) => Self::FINAL_SIZE,
            Self::StreamState(_) => Self::STREAM_STATE,
            Self::StreamLimit => Self::STREAM_LIMIT,
        }
    }
}

#[cfg(test)]
mod tests;
