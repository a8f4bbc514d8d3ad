//! The wire format: packet headers, frames, handshake parameters, stateless resets and the
//! identifiers they carry.
//!
//! A datagram is one packet: a cleartext [`Header`] (which is the AEAD's associated data)
//! followed by a sealed payload. The payload of a data packet is a sequence of [`Frame`]s; the
//! payload of a handshake message carries [`HandshakeParams`]; a [`StatelessReset`] is a header
//! and a token.
//! Parsing is total: any byte string yields a value or a [`WireError`], never a panic.

mod codec;
mod frame;
mod header;
mod params;

pub use codec::{Reader, VARINT_MAX, Writer, varint_len};
pub use frame::{AckFrame, AckRanges, Frame, FrameIter, StreamFrameHeader, WindowTarget};
pub use header::{
    Header, PacketType, ParityHeader, RESET_TOKEN_LEN, StatelessReset, decode_packet_number,
};
pub use params::{HandshakeParams, MAX_NODE_NAME_LEN};

/// The protocol version this build speaks. Bumped on any incompatible wire change.
pub const VERSION: u8 = 1;

/// Why a packet or frame failed to parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    #[error("packet truncated")]
    Truncated,
    #[error("unsupported protocol version {0}")]
    Version(u8),
    #[error("unknown packet type {0:#x}")]
    PacketType(u8),
    #[error("unknown frame type {0:#x}")]
    FrameType(u64),
    #[error("malformed frame")]
    Malformed,
    #[error("buffer too small to encode")]
    BufferTooSmall,
}

/// Identifies a session at the endpoint that *receives* a packet.
///
/// Each end picks its own id for a session; packets carry the receiver's id. The top
/// [`SessionId::SHARD_BITS`] bits name the shard (core) that owns the session, so the dataplane
/// can steer a packet to its core by reading one byte at a fixed offset.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(pub u32);

impl SessionId {
    /// Bits reserved for the owning shard (up to 256 shards).
    pub const SHARD_BITS: u32 = 8;
    const LOCAL_MASK: u32 = (1 << (32 - Self::SHARD_BITS)) - 1;
    /// Carried by handshake-initiation packets, which are not yet addressed to a session.
    pub const NONE: Self = Self(0);

    pub fn new(shard: u8, local: u32) -> Self {
        Self((u32::from(shard) << (32 - Self::SHARD_BITS)) | (local & Self::LOCAL_MASK))
    }

    pub fn shard(self) -> u8 {
        (self.0 >> (32 - Self::SHARD_BITS)) as u8
    }

    pub fn local(self) -> u32 {
        self.0 & Self::LOCAL_MASK
    }
}

impl std::fmt::Debug for SessionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SessionId({}:{:#08x})", self.shard(), self.local())
    }
}

impl std::fmt::Display for SessionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:08x}", self.0)
    }
}

/// Which end of a session this is: the one that dialled (`Client`) or the one that accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    Client,
    Server,
}

/// A stream within a session. The lowest bit says which side opened it, so both ends can open
/// streams concurrently without coordination (sessions are symmetric).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamId(pub u64);

impl StreamId {
    /// The `index`-th stream opened by `initiator`.
    pub fn new(initiator: Side, index: u64) -> Self {
        let bit = match initiator {
            Side::Client => 0,
            Side::Server => 1,
        };
        Self((index << 1) | bit)
    }

    pub fn initiator(self) -> Side {
        if self.0 & 1 == 0 {
            Side::Client
        } else {
            Side::Server
        }
    }

    pub fn index(self) -> u64 {
        self.0 >> 1
    }
}

impl std::fmt::Debug for StreamId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StreamId({})", self.0)
    }
}

impl std::fmt::Display for StreamId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_id_keeps_shard_and_local_apart() {
        let id = SessionId::new(0xab, 0x0123_4567);
        assert_eq!(id.shard(), 0xab);
        assert_eq!(id.local(), 0x23_4567);
        assert_eq!(SessionId(id.0), id);
    }

    #[test]
    fn stream_ids_of_each_side_never_collide() {
        for i in 0..100 {
            let c = StreamId::new(Side::Client, i);
            let s = StreamId::new(Side::Server, i);
            assert_ne!(c, s);
            assert_eq!(c.initiator(), Side::Client);
            assert_eq!(s.initiator(), Side::Server);
            assert_eq!(c.index(), i);
            assert_eq!(s.index(), i);
        }
    }
}
