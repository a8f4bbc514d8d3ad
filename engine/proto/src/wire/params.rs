//! The parameters each side sends inside its (encrypted, authenticated) Noise message.
//!
//! ```text
//! 0..4:   the sender's session id (u32, big endian; never 0)
//! then zero or more parameters, each:
//!         type (varint) | length (varint) | value (length bytes)
//! ```
//!
//! Parameter types:
//!
//! * 1, node name: UTF-8, at most [`MAX_NODE_NAME_LEN`] bytes.
//!
//! Unknown types are skipped, so later versions can add parameters (FEC negotiation, say)
//! without breaking older peers; the first release read only the session id and ignored the
//! rest, so it interoperates as well. A known parameter that is invalid, appears twice, or a
//! parameter cut short makes the whole payload invalid: the handshake then fails.

use super::{Reader, SessionId, WireError, Writer, varint_len};

/// Longest node name a handshake may carry, in bytes.
pub const MAX_NODE_NAME_LEN: usize = 64;

/// Parameter type of the node name.
const PARAM_NAME: u64 = 1;

/// What one side tells the other about itself during the handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HandshakeParams<'a> {
    /// The id the sender picked for the session; packets to it carry this id.
    pub session_id: SessionId,
    /// The sender's node name, if it has one.
    pub name: Option<&'a str>,
}

impl<'a> HandshakeParams<'a> {
    /// Appends the encoded parameters to `out`. Fails (writing nothing) on a null session id or
    /// a name over [`MAX_NODE_NAME_LEN`] bytes: the peer would reject either.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), WireError> {
        if self.session_id == SessionId::NONE {
            return Err(WireError::Malformed);
        }
        if self.name.is_some_and(|n| n.len() > MAX_NODE_NAME_LEN) {
            return Err(WireError::Malformed);
        }
        let mut buf = [0u8; 4 + 2 + 1 + MAX_NODE_NAME_LEN];
        let mut w = Writer::new(&mut buf);
        w.u32(self.session_id.0)?;
        if let Some(name) = self.name {
            w.varint(PARAM_NAME)?;
            w.varint(name.len() as u64)?;
            w.bytes(name.as_bytes())?;
        }
        out.extend_from_slice(w.written());
        Ok(())
    }

    /// Encoded length.
    pub fn encoded_len(&self) -> usize {
        4 + self.name.map_or(0, |n| {
            varint_len(PARAM_NAME) + varint_len(n.len() as u64) + n.len()
        })
    }

    /// Parses a peer's parameters. Never panics; see the module documentation for what is
    /// rejected.
    pub fn decode(payload: &'a [u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(payload);
        let session_id = SessionId(r.u32()?);
        if session_id == SessionId::NONE {
            return Err(WireError::Malformed);
        }
        let mut name = None;
        while !r.is_empty() {
            let ty = r.varint()?;
            let len = usize::try_from(r.varint()?).map_err(|_| WireError::Truncated)?;
            let value = r.bytes(len)?;
            if ty == PARAM_NAME {
                if name.is_some() || value.len() > MAX_NODE_NAME_LEN {
                    return Err(WireError::Malformed);
                }
                name = Some(std::str::from_utf8(value).map_err(|_| WireError::Malformed)?);
            }
        }
        Ok(Self { session_id, name })
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn encode(p: &HandshakeParams<'_>) -> Vec<u8> {
        let mut out = Vec::new();
        p.encode(&mut out).unwrap();
        assert_eq!(out.len(), p.encoded_len());
        out
    }

    #[test]
    fn without_a_name_the_payload_is_the_bare_session_id() {
        // Byte-for-byte what the first release sent, so both directions interoperate.
        let p = HandshakeParams {
            session_id: SessionId(0x0102_0304),
            name: None,
        };
        assert_eq!(encode(&p), [1, 2, 3, 4]);
        assert_eq!(HandshakeParams::decode(&[1, 2, 3, 4]), Ok(p));
    }

    #[test]
    fn names_round_trip_and_unknown_parameters_are_skipped() {
        let p = HandshakeParams {
            session_id: SessionId(7),
            name: Some("edge-1.fra"),
        };
        let mut bytes = encode(&p);
        assert_eq!(HandshakeParams::decode(&bytes), Ok(p));
        // A later version's parameter (type 0x1234, 3 bytes) before and after the name.
        let unknown = [0x52, 0x34, 3, 9, 9, 9];
        bytes.extend_from_slice(&unknown);
        assert_eq!(HandshakeParams::decode(&bytes), Ok(p));
        let mut front = vec![0, 0, 0, 7];
        front.extend_from_slice(&unknown);
        front.extend_from_slice(&bytes[4..]);
        assert_eq!(HandshakeParams::decode(&front), Ok(p));
        // An empty name is a name.
        let empty = HandshakeParams {
            session_id: SessionId(7),
            name: Some(""),
        };
        assert_eq!(HandshakeParams::decode(&encode(&empty)), Ok(empty));
    }

    #[test]
    fn invalid_names_and_truncation_are_rejected() {
        let max = "é".repeat(MAX_NODE_NAME_LEN / 2);
        let ok = HandshakeParams {
            session_id: SessionId(7),
            name: Some(&max),
        };
        assert_eq!(HandshakeParams::decode(&encode(&ok)), Ok(ok));
        let long = "x".repeat(MAX_NODE_NAME_LEN + 1);
        let too_long = HandshakeParams {
            session_id: SessionId(7),
            name: Some(&long),
        };
        let mut out = Vec::new();
        assert_eq!(too_long.encode(&mut out), Err(WireError::Malformed));
        assert!(out.is_empty());
        let mut long_on_wire = vec![0, 0, 0, 7, 1, 0x40, 65];
        long_on_wire.extend_from_slice(long.as_bytes());
        assert_eq!(
            HandshakeParams::decode(&long_on_wire),
            Err(WireError::Malformed)
        );
        assert_eq!(
            HandshakeParams::decode(&[0, 0, 0, 7, 1, 2, 0xc3, 0x28]),
            Err(WireError::Malformed),
            "invalid UTF-8"
        );
        assert_eq!(
            HandshakeParams::decode(&[0, 0, 0, 7, 1, 1, b'a', 1, 1, b'b']),
            Err(WireError::Malformed),
            "two names"
        );
        assert_eq!(
            HandshakeParams::decode(&[0, 0, 0, 7, 1, 5, b'a']),
            Err(WireError::Truncated)
        );
        assert_eq!(
            HandshakeParams::decode(&[0, 0, 0, 7, 9]),
            Err(WireError::Truncated)
        );
        assert_eq!(
            HandshakeParams::decode(&[0, 0, 0, 0]),
            Err(WireError::Malformed),
            "null session id"
        );
        assert_eq!(
            HandshakeParams::decode(&[0, 0, 7]),
            Err(WireError::Truncated)
        );
        let null = HandshakeParams {
            session_id: SessionId::NONE,
            name: None,
        };
        assert_eq!(null.encode(&mut out), Err(WireError::Malformed));
    }

    proptest! {
        #[test]
        fn decoding_never_panics_and_round_trips(bytes in proptest::collection::vec(any::<u8>(), 0..96)) {
            if let Ok(p) = HandshakeParams::decode(&bytes) {
                let again = encode(&p);
                prop_assert_eq!(HandshakeParams::decode(&again), Ok(p));
            }
        }

        #[test]
        fn any_valid_name_round_trips(id in 1u32.., name in "\\PC{0,16}") {
            prop_assume!(name.len() <= MAX_NODE_NAME_LEN);
            let p = HandshakeParams { session_id: SessionId(id), name: Some(&name) };
            let bytes = encode(&p);
            prop_assert_eq!(HandshakeParams::decode(&bytes), Ok(p));
        }
    }
}
