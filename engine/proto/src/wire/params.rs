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
//! * 2, FEC settings, 4 bytes: mode (0 off, 1 fixed, 2 adaptive), data, parity (0 unless
//!   fixed), interleave (with mode 0 the other three are ignored). Sent by every version that
//!   knows FEC, off included, so its absence marks a peer from before FEC. Values outside
//!   [`FecConfig::validate`] make the payload invalid.
//!
//! Unknown types are skipped, so later versions can add parameters (FEC negotiation, say)
//! without breaking older peers; the first release read only the session id and ignored the
//! rest, so it interoperates as well. A known parameter that is invalid, appears twice, or a
//! parameter cut short makes the whole payload invalid: the handshake then fails.

use super::{Reader, SessionId, WireError, Writer, varint_len};
use crate::config::{FecConfig, FecMode};

/// Longest node name a handshake may carry, in bytes.
pub const MAX_NODE_NAME_LEN: usize = 64;

/// Parameter type of the node name.
const PARAM_NAME: u64 = 1;
/// Parameter type of the FEC settings.
const PARAM_FEC: u64 = 2;
/// Encoded length of the FEC parameter (type, length, four bytes).
const FEC_PARAM_LEN: usize = 1 + 1 + 4;

fn encode_fec(fec: &FecConfig) -> [u8; 4] {
    match fec.mode {
        FecMode::Off => [0, 0, 0, 1],
        FecMode::Fixed { data, parity } => [1, data, parity, fec.interleave],
        FecMode::Adaptive { data } => [2, data, 0, fec.interleave],
    }
}

fn decode_fec(v: &[u8]) -> Result<FecConfig, WireError> {
    let &[mode, data, parity, interleave] = v else {
        return Err(WireError::Malformed);
    };
    let mode = match (mode, parity) {
        (0, _) => return Ok(FecConfig::OFF),
        (1, _) => FecMode::Fixed { data, parity },
        (2, 0) => FecMode::Adaptive { data },
        _ => return Err(WireError::Malformed),
    };
    let fec = FecConfig { mode, interleave };
    fec.validate().map_err(|_| WireError::Malformed)?;
    Ok(fec)
}

/// What one side tells the other about itself during the handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HandshakeParams<'a> {
    /// The id the sender picked for the session; packets to it carry this id.
    pub session_id: SessionId,
    /// The sender's node name, if it has one.
    pub name: Option<&'a str>,
    /// The sender's FEC settings; None from a peer that predates FEC (which has it off).
    pub fec: Option<FecConfig>,
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
        if self.fec.is_some_and(|f| f.validate().is_err()) {
            return Err(WireError::Malformed);
        }
        let mut buf = [0u8; 4 + 2 + 1 + MAX_NODE_NAME_LEN + FEC_PARAM_LEN];
        let mut w = Writer::new(&mut buf);
        w.u32(self.session_id.0)?;
        if let Some(name) = self.name {
            w.varint(PARAM_NAME)?;
            w.varint(name.len() as u64)?;
            w.bytes(name.as_bytes())?;
        }
        if let Some(fec) = &self.fec {
            w.varint(PARAM_FEC)?;
            w.varint(4)?;
            w.bytes(&encode_fec(fec))?;
        }
        out.extend_from_slice(w.written());
        Ok(())
    }

    /// Encoded length.
    pub fn encoded_len(&self) -> usize {
        4 + self.name.map_or(0, |n| {
            varint_len(PARAM_NAME) + varint_len(n.len() as u64) + n.len()
        }) + if self.fec.is_some() { FEC_PARAM_LEN } else { 0 }
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
        let mut fec = None;
        while !r.is_empty() {
            let ty = r.varint()?;
            let len = usize::try_from(r.varint()?).map_err(|_| WireError::Truncated)?;
            let value = r.bytes(len)?;
            if ty == PARAM_NAME {
                if name.is_some() || value.len() > MAX_NODE_NAME_LEN {
                    return Err(WireError::Malformed);
                }
                name = Some(std::str::from_utf8(value).map_err(|_| WireError::Malformed)?);
            } else if ty == PARAM_FEC {
                if fec.is_some() {
                    return Err(WireError::Malformed);
                }
                fec = Some(decode_fec(value)?);
            }
        }
        Ok(Self {
            session_id,
            name,
            fec,
        })
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
            fec: None,
        };
        assert_eq!(encode(&p), [1, 2, 3, 4]);
        assert_eq!(HandshakeParams::decode(&[1, 2, 3, 4]), Ok(p));
    }

    #[test]
    fn names_round_trip_and_unknown_parameters_are_skipped() {
        let p = HandshakeParams {
            session_id: SessionId(7),
            name: Some("edge-1.fra"),
            fec: None,
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
            fec: None,
        };
        assert_eq!(HandshakeParams::decode(&encode(&empty)), Ok(empty));
    }

    #[test]
    fn invalid_names_and_truncation_are_rejected() {
        let max = "é".repeat(MAX_NODE_NAME_LEN / 2);
        let ok = HandshakeParams {
            session_id: SessionId(7),
            name: Some(&max),
            fec: None,
        };
        assert_eq!(HandshakeParams::decode(&encode(&ok)), Ok(ok));
        let long = "x".repeat(MAX_NODE_NAME_LEN + 1);
        let too_long = HandshakeParams {
            session_id: SessionId(7),
            name: Some(&long),
            fec: None,
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
            fec: None,
        };
        assert_eq!(null.encode(&mut out), Err(WireError::Malformed));
    }

    #[test]
    fn fec_settings_round_trip_and_bad_ones_are_rejected() {
        for fec in [
            FecConfig::OFF,
            FecConfig::ADAPTIVE,
            FecConfig {
                mode: FecMode::Fixed {
                    data: 10,
                    parity: 3,
                },
                interleave: 4,
            },
            FecConfig {
                mode: FecMode::Adaptive { data: 64 },
                interleave: 8,
            },
        ] {
            let p = HandshakeParams {
                session_id: SessionId(7),
                name: Some("a"),
                fec: Some(fec),
            };
            assert_eq!(HandshakeParams::decode(&encode(&p)), Ok(p));
        }
        // A peer from before FEC sends nothing; off is sent, and normalised.
        assert_eq!(HandshakeParams::decode(&[0, 0, 0, 7]).unwrap().fec, None);
        assert_eq!(
            HandshakeParams::decode(&[0, 0, 0, 7, 2, 4, 0, 9, 9, 5])
                .unwrap()
                .fec,
            Some(FecConfig::OFF)
        );
        for bad in [
            [1, 10, 0, 1], // fixed without parity
            [1, 0, 3, 1],  // no data
            [2, 65, 0, 1], // too large a group
            [2, 10, 0, 0], // no interleave
            [2, 10, 0, 9], // too deep
            [2, 10, 1, 1], // adaptive with a parity count
            [3, 10, 0, 1], // unknown mode
        ] {
            let mut bytes = vec![0, 0, 0, 7, 2, 4];
            bytes.extend_from_slice(&bad);
            assert_eq!(
                HandshakeParams::decode(&bytes),
                Err(WireError::Malformed),
                "{bad:?}"
            );
        }
        assert_eq!(
            HandshakeParams::decode(&[0, 0, 0, 7, 2, 3, 2, 10, 0]),
            Err(WireError::Malformed),
            "short value"
        );
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
            let p = HandshakeParams { session_id: SessionId(id), name: Some(&name), fec: None };
            let bytes = encode(&p);
            prop_assert_eq!(HandshakeParams::decode(&bytes), Ok(p));
        }
    }
}
