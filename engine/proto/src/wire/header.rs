//! The cleartext packet header.
//!
//! ```text
//! byte 0:   version (3 bits) | key phase (1 bit) | packet type (4 bits)
//! 1..5:     receiver's session id (u32, big endian; its top byte is the owning shard);
//!           in a handshake init, which has no receiver id yet, the dialler's steering hint
//! 5..9:     data packets only: the low 32 bits of the packet number (big endian)
//! ```
//!
//! Packet types (the low nibble of byte 0): 1 handshake init, 2 handshake response, 3 data,
//! 4 stateless reset, 5 FEC parity ([`ParityHeader`]); 0 and 6..=15 are unassigned and rejected.
//!
//! The whole header is the AEAD's associated data, so none of it can be altered in flight. The
//! packet number is truncated on the wire and rebuilt from the largest one received
//! ([`decode_packet_number`]); the full 64-bit number is the AEAD nonce.
//!
//! A stateless reset ([`StatelessReset`]) is not sealed: it is the 5-byte header (type 4, key
//! phase 0, the session id the triggering data packet was addressed to) followed by a 16-byte
//! token, 21 bytes in all. Receivers ignore anything after the token.

use super::{Reader, SessionId, VERSION, WireError, Writer};

/// What a packet carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PacketType {
    /// Noise message 1, from the dialling side. It has no receiver id yet: the session-id field
    /// carries the dialler's steering hint instead (see `EndpointConfig::steering_hint`).
    HandshakeInit = 1,
    /// Noise message 2, addressed to the initiator's session id.
    HandshakeResponse = 2,
    /// An AEAD-sealed sequence of frames.
    Data = 3,
    /// "I do not know this session": the answer to a data packet for an unknown session id,
    /// authenticated by a token only holders of the pre-shared key can compute.
    StatelessReset = 4,
    /// A Reed-Solomon parity shard over a group of the sender's sealed data packets (see
    /// [`ParityHeader`]). Not sealed itself: what it recovers is a sealed data packet, which must
    /// still authenticate.
    Parity = 5,
}

impl PacketType {
    fn from_u8(v: u8) -> Result<Self, WireError> {
        Ok(match v {
            1 => Self::HandshakeInit,
            2 => Self::HandshakeResponse,
            3 => Self::Data,
            4 => Self::StatelessReset,
            5 => Self::Parity,
            other => return Err(WireError::PacketType(other)),
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub ty: PacketType,
    pub key_phase: bool,
    pub session_id: SessionId,
    /// The low 32 bits of the packet number; present exactly for [`PacketType::Data`].
    pub truncated_pn: u32,
}

impl Header {
    /// Length of a handshake packet's header.
    pub const HANDSHAKE_LEN: usize = 5;
    /// Length of a data packet's header.
    pub const DATA_LEN: usize = 9;
    /// Offset of the session id within any packet (the dataplane's steering program reads it).
    pub const SESSION_ID_OFFSET: usize = 1;

    pub fn data(session_id: SessionId, key_phase: bool, pn: u64) -> Self {
        Self {
            ty: PacketType::Data,
            key_phase,
            session_id,
            truncated_pn: pn as u32,
        }
    }

    pub fn handshake(ty: PacketType, session_id: SessionId) -> Self {
        Self {
            ty,
            key_phase: false,
            session_id,
            truncated_pn: 0,
        }
    }

    /// Parses the header at the start of `packet`, returning it and its length.
    pub fn parse(packet: &[u8]) -> Result<(Self, usize), WireError> {
        let mut r = Reader::new(packet);
        let first = r.u8()?;
        let version = first >> 5;
        if version != VERSION {
            return Err(WireError::Version(version));
        }
        let ty = PacketType::from_u8(first & 0x0f)?;
        let key_phase = first & 0x10 != 0;
        let session_id = SessionId(r.u32()?);
        let (truncated_pn, len) = match ty {
            PacketType::Data => (r.u32()?, Self::DATA_LEN),
            _ => (0, Self::HANDSHAKE_LEN),
        };
        Ok((
            Self {
                ty,
                key_phase,
                session_id,
                truncated_pn,
            },
            len,
        ))
    }

    pub fn len(&self) -> usize {
        match self.ty {
            PacketType::Data => Self::DATA_LEN,
            _ => Self::HANDSHAKE_LEN,
        }
    }

    pub fn is_empty(&self) -> bool {
        false
    }

    pub fn emit(&self, w: &mut Writer<'_>) -> Result<(), WireError> {
        let phase = if self.key_phase { 0x10 } else { 0 };
        w.u8((VERSION << 5) | phase | self.ty as u8)?;
        w.u32(self.session_id.0)?;
        if self.ty == PacketType::Data {
            w.u32(self.truncated_pn)?;
        }
        Ok(())
    }
}

/// The header of a parity packet (type 5); the shard follows it to the end of the datagram.
///
/// ```text
/// byte 0:   version (3 bits) | 0 | type 5
/// 1..5:     receiver's session id
/// 5..9:     the low 32 bits of the group's first packet number
/// 9:        interleaving stride d (1..=8): the group is packets first, first + d, first + 2d, ...
/// 10:       data packets in the group, k (1..=64)
/// 11:       parity packets of the group, m (1..=32)
/// 12:       this shard's index among the parity shards (0..m)
/// 13..:     the shard: the group's longest packet plus a 2-byte length prefix, rounded up to
///           an even length
/// ```
///
/// The header is not authenticated. A forged or damaged parity shard can only make recovery
/// produce a packet that fails the AEAD, which is dropped and counted like any forgery, or
/// spoil the recovery of its group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParityHeader {
    pub session_id: SessionId,
    pub first_pn: u32,
    pub stride: u8,
    pub data: u8,
    pub parity: u8,
    pub index: u8,
}

impl ParityHeader {
    pub const LEN: usize = 13;
    /// How much longer a parity packet can be than the longest packet of its group: the header,
    /// the length prefix, and one byte when the shard length is rounded up to even.
    pub const OVERHEAD: usize = Self::LEN + crate::fec::LEN_PREFIX + 1;

    /// Parses a parity packet into its header and shard. Rejects out-of-range fields, so a
    /// receiver never sizes anything from garbage.
    pub fn parse(packet: &[u8]) -> Result<(Self, &[u8]), WireError> {
        let (header, _) = Header::parse(packet)?;
        if header.ty != PacketType::Parity {
            return Err(WireError::PacketType(header.ty as u8));
        }
        if header.key_phase {
            // Unused bit: must be zero, so every header has exactly one encoding.
            return Err(WireError::Malformed);
        }
        let mut r = Reader::new(
            packet
                .get(Header::HANDSHAKE_LEN..)
                .ok_or(WireError::Truncated)?,
        );
        let h = Self {
            session_id: header.session_id,
            first_pn: r.u32()?,
            stride: r.u8()?,
            data: r.u8()?,
            parity: r.u8()?,
            index: r.u8()?,
        };
        let shard = packet.get(Self::LEN..).ok_or(WireError::Truncated)?;
        if h.stride == 0
            || h.stride > crate::config::FecConfig::MAX_INTERLEAVE
            || h.data == 0
            || h.data > crate::config::FecConfig::MAX_DATA
            || h.parity == 0
            || h.parity > crate::config::FecConfig::MAX_PARITY
            || h.index >= h.parity
            || shard.len() < crate::fec::LEN_PREFIX
        {
            return Err(WireError::Malformed);
        }
        Ok((h, shard))
    }

    pub fn emit(&self, w: &mut Writer<'_>) -> Result<(), WireError> {
        w.atomic(|w| {
            Header::handshake(PacketType::Parity, self.session_id).emit(w)?;
            w.u32(self.first_pn)?;
            w.u8(self.stride)?;
            w.u8(self.data)?;
            w.u8(self.parity)?;
            w.u8(self.index)
        })
    }
}

/// Length of a stateless reset's token.
pub const RESET_TOKEN_LEN: usize = 16;

/// A stateless reset packet: the session id the peer used (which we do not know) and the token
/// that proves the sender holds the pre-shared key (see [`crate::crypto::ResetKey`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatelessReset {
    pub session_id: SessionId,
    pub token: [u8; RESET_TOKEN_LEN],
}

impl StatelessReset {
    /// Length of a reset packet on the wire.
    pub const LEN: usize = Header::HANDSHAKE_LEN + RESET_TOKEN_LEN;
    /// Shortest data packet that may be answered with a reset. A genuine data packet is at
    /// least a header, one frame byte and the AEAD tag (26 bytes); the reset (21 bytes) is
    /// strictly shorter than anything it answers, so resets cannot amplify traffic, and two
    /// endpoints can never bounce resets back and forth (a reset is not a data packet).
    pub const MIN_TRIGGER_LEN: usize = Header::DATA_LEN + 1 + crate::crypto::TAG_LEN;

    /// Parses a reset packet (header included). Bytes after the token are ignored.
    pub fn parse(packet: &[u8]) -> Result<Self, WireError> {
        let (header, len) = Header::parse(packet)?;
        if header.ty != PacketType::StatelessReset {
            return Err(WireError::PacketType(header.ty as u8));
        }
        let mut r = Reader::new(packet.get(len..).ok_or(WireError::Truncated)?);
        Ok(Self {
            session_id: header.session_id,
            token: r.array()?,
        })
    }

    pub fn emit(&self, w: &mut Writer<'_>) -> Result<(), WireError> {
        w.atomic(|w| {
            Header::handshake(PacketType::StatelessReset, self.session_id).emit(w)?;
            w.bytes(&self.token)
        })
    }
}

/// Rebuilds a full packet number from its low 32 bits and the largest one received so far
/// (RFC 9000, appendix A.3, with a 32-bit window): the candidate closest to `largest + 1`.
pub fn decode_packet_number(largest: Option<u64>, truncated: u32) -> u64 {
    const WIN: u64 = 1 << 32;
    const HWIN: u64 = WIN / 2;
    let expected = largest.map_or(0, |l| l.saturating_add(1));
    let candidate = (expected & !(WIN - 1)) | u64::from(truncated);
    if candidate.saturating_add(HWIN) <= expected && candidate < u64::MAX - WIN {
        candidate + WIN
    } else if candidate > expected.saturating_add(HWIN) && candidate >= WIN {
        candidate - WIN
    } else {
        candidate
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn data_header_round_trips() {
        let h = Header::data(SessionId::new(3, 77), true, 0x1_2345_6789);
        let mut buf = [0u8; 16];
        let mut w = Writer::new(&mut buf);
        h.emit(&mut w).unwrap();
        assert_eq!(w.len(), Header::DATA_LEN);
        let (parsed, len) = Header::parse(&buf).unwrap();
        assert_eq!(parsed, h);
        assert_eq!(len, Header::DATA_LEN);
        assert_eq!(
            buf[Header::SESSION_ID_OFFSET],
            3,
            "the shard is the first id byte"
        );
    }

    #[test]
    fn rejects_other_versions_and_types() {
        assert!(matches!(
            Header::parse(&[0x23, 0, 0, 0, 0]),
            Err(WireError::Truncated)
        ));
        assert!(matches!(
            Header::parse(&[0x43, 0, 0, 0, 0, 0, 0, 0, 0]),
            Err(WireError::Version(2))
        ));
        assert!(matches!(
            Header::parse(&[0x26, 0, 0, 0, 0]),
            Err(WireError::PacketType(6))
        ));
        assert!(matches!(
            Header::parse(&[0x2f, 0, 0, 0, 0]),
            Err(WireError::PacketType(0xf))
        ));
        assert!(matches!(
            Header::parse(&[0x23, 0, 0]),
            Err(WireError::Truncated)
        ));
        assert!(matches!(Header::parse(&[]), Err(WireError::Truncated)));
    }

    #[test]
    fn stateless_reset_round_trips_and_is_shorter_than_any_trigger() {
        let reset = StatelessReset {
            session_id: SessionId::new(1, 0x42),
            token: [0xab; RESET_TOKEN_LEN],
        };
        let mut buf = [0u8; 32];
        let mut w = Writer::new(&mut buf);
        reset.emit(&mut w).unwrap();
        assert_eq!(w.len(), StatelessReset::LEN);
        assert_eq!(buf[0] & 0x0f, 4);
        assert_eq!(
            StatelessReset::parse(&buf[..StatelessReset::LEN]),
            Ok(reset)
        );
        assert_eq!(
            StatelessReset::parse(&buf),
            Ok(reset),
            "trailing bytes ignored"
        );
        assert_eq!(
            StatelessReset::parse(&buf[..StatelessReset::LEN - 1]),
            Err(WireError::Truncated)
        );
        let (header, len) = Header::parse(&buf).unwrap();
        assert_eq!(header.ty, PacketType::StatelessReset);
        assert_eq!(len, Header::HANDSHAKE_LEN);
        const { assert!(StatelessReset::LEN < StatelessReset::MIN_TRIGGER_LEN) };
        // A data header is no reset.
        let mut data = [0u8; 32];
        Header::data(SessionId::new(1, 2), false, 7)
            .emit(&mut Writer::new(&mut data))
            .unwrap();
        assert_eq!(StatelessReset::parse(&data), Err(WireError::PacketType(3)));
        // Too small a buffer writes nothing.
        let mut small = [0u8; 10];
        let mut w = Writer::new(&mut small);
        assert_eq!(reset.emit(&mut w), Err(WireError::BufferTooSmall));
        assert!(w.is_empty());
    }

    #[test]
    fn parity_header_round_trips_and_rejects_bad_shapes() {
        let h = ParityHeader {
            session_id: SessionId::new(2, 9),
            first_pn: 0xdead_beef,
            stride: 3,
            data: 10,
            parity: 3,
            index: 2,
        };
        let mut buf = [0u8; 32];
        let mut w = Writer::new(&mut buf);
        h.emit(&mut w).unwrap();
        assert_eq!(w.len(), ParityHeader::LEN);
        assert_eq!(buf[0] & 0x0f, 5);
        assert_eq!(buf[Header::SESSION_ID_OFFSET], 2, "steered like data");
        let (parsed, shard) = ParityHeader::parse(&buf[..ParityHeader::LEN + 4]).unwrap();
        assert_eq!(parsed, h);
        assert_eq!(shard.len(), 4);
        assert_eq!(
            ParityHeader::parse(&buf[..ParityHeader::LEN + 1]),
            Err(WireError::Malformed),
            "a shard shorter than its length prefix"
        );
        assert_eq!(
            ParityHeader::parse(&buf[..ParityHeader::LEN - 1]),
            Err(WireError::Truncated)
        );
        for (at, bad) in [
            (9, 0),
            (9, 9),
            (10, 0),
            (10, 65),
            (11, 0),
            (11, 33),
            (12, 3),
        ] {
            let mut b = buf;
            b[at] = bad;
            assert_eq!(
                ParityHeader::parse(&b[..ParityHeader::LEN + 4]),
                Err(WireError::Malformed),
                "byte {at} = {bad}"
            );
        }
    }

    #[test]
    fn packet_numbers_decode_across_wraps() {
        assert_eq!(decode_packet_number(None, 0), 0);
        assert_eq!(decode_packet_number(Some(0xffff_fffe), 0), 0x1_0000_0000);
        assert_eq!(
            decode_packet_number(Some(0x1_0000_0001), 0xffff_ffff),
            0xffff_ffff
        );
        assert_eq!(decode_packet_number(Some(10), 5), 5);
    }

    proptest! {
        #[test]
        fn nearby_packet_numbers_decode_exactly(largest in 0u64..(1 << 48), delta in -(1i64 << 30)..(1i64 << 30)) {
            let pn = largest as i64 + delta;
            prop_assume!(pn >= 0);
            let pn = pn as u64;
            prop_assert_eq!(decode_packet_number(Some(largest), pn as u32), pn);
        }
    }
}
