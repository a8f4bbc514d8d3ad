//! The relay's control messages and their wire format.
//!
//! # Roles and streams
//!
//! Every node talks to the relay over an ordinary engine session (authenticated with the
//! relay's pre-shared key) and uses that session's multiplexed streams. What a stream is for is
//! decided by the first message on it; streams are only ever opened by the nodes, never by the
//! relay, and the relay opens no service port.
//!
//! ```text
//! service node                          relay                              visitor
//!  |-- open stream C: Register{name,token} ->|                                 |
//!  |<------------------ Registered ----------|  (C stays open: the service's   |
//!  |                                         |   control stream)               |
//!  |                                         |<- open stream V: Visit{token} --|
//!  |<---------------- Splice{visit_id=N} ----|  (on C)                         |
//!  |-- open stream S: SpliceAccept{N} ------>|                                 |
//!  |                                         |-- VisitAccepted (on V) -------->|
//!  |<============ bytes of S and V copied both ways, unread ==================>|
//!  |   end-to-end Channel (Noise, keyed by the service key): visitor initiates |
//! ```
//!
//! * **Register** (service node, first message on a new stream C): "file this service under
//!   `name` and `token`" ([`LookupToken`], derived from the service key; the relay never sees the
//!   key). The relay answers [`Message::Registered`] and keeps C as the service's control stream,
//!   or [`Message::RegisterRefused`] and closes C: `NameTaken` if another node holds the name or
//!   the token (unless the relay is configured to let a new registration take over), `Limit` if
//!   the relay's registration limits are reached, `NotRelay` if this node is not a relay. One
//!   control stream per service; closing C, or sending [`Message::Unregister`] on it, withdraws
//!   the registration, and so does the end of the session.
//! * **Visit** (visitor, first message on a new stream V, opened when a local client connects
//!   to the port the visitor's config names for the service): the relay looks the token up. On a
//!   miss it answers [`Message::VisitRefused`] and closes V. A miss looks the same whether no
//!   service exists or the key is wrong: the token is all the relay knows, so there is no
//!   "exists but wrong key" case to leak. On a hit it allocates a [`VisitId`] and sends
//!   [`Message::Splice`] on the service's control stream C.
//! * **SpliceAccept** (service node, first message on a new stream S opened in answer to
//!   `Splice`): the relay pairs S with the waiting V, sends [`Message::VisitAccepted`] on V, and
//!   from then on copies bytes S <-> V in both directions (with flow control on both streams),
//!   closing one when the other closes. An unknown or stale visit id closes S. If the service
//!   node does not answer in time, the relay sends `VisitRefused` on V, exactly as for a miss.
//! * After `VisitAccepted` (visitor) and after sending `SpliceAccept` (service node) the stream
//!   carries a [`Channel`](super::channel::Channel): the visitor is the initiator, the service
//!   node the responder, keyed by the end-to-end PSK derived from the service key. The visitor may
//!   send its handshake right behind `Visit` (the relay keeps bytes after the first message and
//!   forwards them once paired, within its buffer limit).
//!
//! # Relay restart
//!
//! Registrations are soft state tied to a session. When the relay restarts, its sessions are gone
//! (the nodes learn so by a stateless reset or a timeout) and the nodes establish new sessions. A
//! service node sends `Register` for each of its services on every new session to the relay, so
//! the registrations come back without any persistent state on the relay. Visits in flight
//! during the restart fail and their local client connections are closed.
//!
//! # Wire format
//!
//! Each message is `[u16 length][u8 version][u8 type][body]`, big-endian, where `length` counts
//! the bytes after itself and is at most [`MAX_MSG_LEN`]. Names are `[u8 len][bytes]`, tokens 32
//! raw bytes, visit ids `u64`. A message with another version, an unknown type, a wrong body
//! length or a length beyond the limit is an error; decoding never panics.

use std::fmt;

use crate::relay::token::{LookupToken, TOKEN_LEN};

/// The version byte every message carries.
pub const VERSION: u8 = 1;
/// Longest service name, in bytes.
pub const MAX_NAME_LEN: usize = 64;
/// Largest value of a message's length field (version, type and body).
pub const MAX_MSG_LEN: usize = 128;
/// Size of the length prefix.
const LEN_PREFIX: usize = 2;

const T_REGISTER: u8 = 1;
const T_REGISTERED: u8 = 2;
const T_REGISTER_REFUSED: u8 = 3;
const T_UNREGISTER: u8 = 4;
const T_VISIT: u8 = 5;
const T_VISIT_ACCEPTED: u8 = 6;
const T_VISIT_REFUSED: u8 = 7;
const T_SPLICE: u8 = 8;
const T_SPLICE_ACCEPT: u8 = 9;

/// The relay's number for one visit, unique among the visits it has pending.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VisitId(pub u64);

/// A service's name: 1 to [`MAX_NAME_LEN`] bytes of `A-Z a-z 0-9 . _ -`.
///
/// The restricted alphabet keeps names safe to print in logs and metrics.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceName(String);

impl ServiceName {
    /// Checks and wraps a name.
    pub fn new(name: &str) -> Result<Self, MsgError> {
        Self::from_wire(name.as_bytes())
    }

    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    fn from_wire(bytes: &[u8]) -> Result<Self, MsgError> {
        let valid = !bytes.is_empty()
            && bytes.len() <= MAX_NAME_LEN
            && bytes
                .iter()
                .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if !valid {
            return Err(MsgError::BadName);
        }
        // All bytes are ASCII, so this is valid UTF-8.
        Ok(Self(bytes.iter().map(|&b| char::from(b)).collect()))
    }
}

impl fmt::Display for ServiceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why the relay refused a registration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefuseReason {
    /// Another node holds this name (or this token).
    NameTaken,
    /// The relay's limit on registrations (per node or in total) is reached.
    Limit,
    /// The peer is not configured as a relay.
    NotRelay,
}

impl RefuseReason {
    fn code(self) -> u8 {
        match self {
            Self::NameTaken => 1,
            Self::Limit => 2,
            Self::NotRelay => 3,
        }
    }

    fn from_code(code: u8) -> Result<Self, MsgError> {
        match code {
            1 => Ok(Self::NameTaken),
            2 => Ok(Self::Limit),
            3 => Ok(Self::NotRelay),
            other => Err(MsgError::UnknownReason(other)),
        }
    }
}

/// One control message. See the module documentation for who sends which, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Service node -> relay, first message on a new stream: register a service.
    Register {
        /// The name the service is registered under (unique on the relay).
        name: ServiceName,
        /// The token visitors will present.
        token: LookupToken,
    },
    /// Relay -> service node: the registration is in place.
    Registered,
    /// Relay -> service node: the registration was refused; the relay closes the stream.
    RegisterRefused {
        /// Why.
        reason: RefuseReason,
    },
    /// Service node -> relay, on the control stream: withdraw the registration.
    Unregister {
        /// The name registered on this control stream.
        name: ServiceName,
    },
    /// Visitor -> relay, first message on a new stream: connect me to the service with this token.
    Visit {
        /// The token derived from the service key.
        token: LookupToken,
    },
    /// Relay -> visitor: paired; what follows on the stream comes from the service node.
    VisitAccepted,
    /// Relay -> visitor: no such service reachable with this token (the same answer for unknown
    /// and wrong keys); the relay closes the stream.
    VisitRefused,
    /// Relay -> service node, on the control stream: open a stream back for this visit.
    Splice {
        /// Which visit.
        visit_id: VisitId,
    },
    /// Service node -> relay, first message on a new stream: this stream is for that visit.
    SpliceAccept {
        /// The id from the `Splice` being answered.
        visit_id: VisitId,
    },
}

impl Message {
    /// Appends the encoded message to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&[0, 0, VERSION]);
        match self {
            Self::Register { name, token } => {
                out.push(T_REGISTER);
                push_name(out, name);
                out.extend_from_slice(token.as_bytes());
            }
            Self::Registered => out.push(T_REGISTERED),
            Self::RegisterRefused { reason } => {
                out.push(T_REGISTER_REFUSED);
                out.push(reason.code());
            }
            Self::Unregister { name } => {
                out.push(T_UNREGISTER);
                push_name(out, name);
            }
            Self::Visit { token } => {
                out.push(T_VISIT);
                out.extend_from_slice(token.as_bytes());
            }
            Self::VisitAccepted => out.push(T_VISIT_ACCEPTED),
            Self::VisitRefused => out.push(T_VISIT_REFUSED),
            Self::Splice { visit_id } => {
                out.push(T_SPLICE);
                out.extend_from_slice(&visit_id.0.to_be_bytes());
            }
            Self::SpliceAccept { visit_id } => {
                out.push(T_SPLICE_ACCEPT);
                out.extend_from_slice(&visit_id.0.to_be_bytes());
            }
        }
        // The largest message (Register with a MAX_NAME_LEN name) is far below MAX_MSG_LEN, and
        // `ServiceName` cannot be longer, so the length always fits.
        let len = out.len() - start - LEN_PREFIX;
        debug_assert!(len <= MAX_MSG_LEN);
        let len = u16::try_from(len).unwrap_or(u16::MAX);
        out[start..start + LEN_PREFIX].copy_from_slice(&len.to_be_bytes());
    }

    /// The message encoded into a new buffer.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode(&mut out);
        out
    }

    /// Decodes the message at the start of `buf`.
    ///
    /// Returns `Ok(None)` if `buf` holds only part of a message (read more and call again),
    /// `Ok(Some((message, consumed)))` otherwise; bytes after `consumed` belong to whatever
    /// follows on the stream. A length prefix beyond [`MAX_MSG_LEN`] fails at once, so a caller
    /// never buffers more than `2 + MAX_MSG_LEN` bytes waiting for a message.
    pub fn decode(buf: &[u8]) -> Result<Option<(Self, usize)>, MsgError> {
        let Some((len_bytes, rest)) = buf.split_first_chunk::<LEN_PREFIX>() else {
            return Ok(None);
        };
        let len = usize::from(u16::from_be_bytes(*len_bytes));
        if len > MAX_MSG_LEN {
            return Err(MsgError::TooLong(len));
        }
        let Some(frame) = rest.get(..len) else {
            return Ok(None);
        };
        let (version, frame) = frame.split_first().ok_or(MsgError::Malformed)?;
        if *version != VERSION {
            return Err(MsgError::UnsupportedVersion(*version));
        }
        let (ty, body) = frame.split_first().ok_or(MsgError::Malformed)?;
        let mut r = Reader(body);
        let msg = match *ty {
            T_REGISTER => Self::Register {
                name: r.name()?,
                token: r.token()?,
            },
            T_REGISTERED => Self::Registered,
            T_REGISTER_REFUSED => Self::RegisterRefused {
                reason: RefuseReason::from_code(r.u8()?)?,
            },
            T_UNREGISTER => Self::Unregister { name: r.name()? },
            T_VISIT => Self::Visit { token: r.token()? },
            T_VISIT_ACCEPTED => Self::VisitAccepted,
            T_VISIT_REFUSED => Self::VisitRefused,
            T_SPLICE => Self::Splice {
                visit_id: VisitId(r.u64()?),
            },
            T_SPLICE_ACCEPT => Self::SpliceAccept {
                visit_id: VisitId(r.u64()?),
            },
            other => return Err(MsgError::UnknownType(other)),
        };
        if !r.0.is_empty() {
            return Err(MsgError::Malformed);
        }
        Ok(Some((msg, LEN_PREFIX + len)))
    }
}

fn push_name(out: &mut Vec<u8>, name: &ServiceName) {
    // `ServiceName` guarantees 1..=MAX_NAME_LEN bytes, which fits a u8.
    let bytes = name.as_str().as_bytes();
    out.push(u8::try_from(bytes.len()).unwrap_or(u8::MAX));
    out.extend_from_slice(bytes);
}

/// A cursor over a message body; every read is bounds-checked.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], MsgError> {
        if self.0.len() < n {
            return Err(MsgError::Malformed);
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, MsgError> {
        let (first, rest) = self.0.split_first().ok_or(MsgError::Malformed)?;
        self.0 = rest;
        Ok(*first)
    }

    fn u64(&mut self) -> Result<u64, MsgError> {
        let bytes = self.take(8)?;
        let mut b = [0u8; 8];
        b.copy_from_slice(bytes);
        Ok(u64::from_be_bytes(b))
    }

    fn name(&mut self) -> Result<ServiceName, MsgError> {
        let len = usize::from(self.u8()?);
        ServiceName::from_wire(self.take(len)?)
    }

    fn token(&mut self) -> Result<LookupToken, MsgError> {
        let bytes = self.take(TOKEN_LEN)?;
        let mut t = [0u8; TOKEN_LEN];
        t.copy_from_slice(bytes);
        Ok(LookupToken::from_bytes(t))
    }
}

/// Errors decoding a control message (or checking a service name).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MsgError {
    /// The length prefix exceeds [`MAX_MSG_LEN`].
    #[error("relay message too long ({0} bytes, max {MAX_MSG_LEN})")]
    TooLong(usize),
    /// The message speaks another version of the relay protocol.
    #[error("unsupported relay protocol version {0}")]
    UnsupportedVersion(u8),
    /// The type byte names no message.
    #[error("unknown relay message type {0}")]
    UnknownType(u8),
    /// A refusal carries a reason code we do not know.
    #[error("unknown registration refusal reason {0}")]
    UnknownReason(u8),
    /// The body is shorter or longer than its type requires.
    #[error("malformed relay message")]
    Malformed,
    /// A service name is empty, too long, or has characters outside `A-Z a-z 0-9 . _ -`.
    #[error("invalid service name (1 to {MAX_NAME_LEN} bytes of A-Z a-z 0-9 . _ -)")]
    BadName,
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn token(b: u8) -> LookupToken {
        LookupToken::from_bytes([b; TOKEN_LEN])
    }

    fn all_messages() -> Vec<Message> {
        let name = ServiceName::new("web-1.example_svc").unwrap();
        vec![
            Message::Register {
                name: name.clone(),
                token: token(1),
            },
            Message::Register {
                name: ServiceName::new(&"x".repeat(MAX_NAME_LEN)).unwrap(),
                token: token(0xff),
            },
            Message::Registered,
            Message::RegisterRefused {
                reason: RefuseReason::NameTaken,
            },
            Message::RegisterRefused {
                reason: RefuseReason::Limit,
            },
            Message::RegisterRefused {
                reason: RefuseReason::NotRelay,
            },
            Message::Unregister { name },
            Message::Visit { token: token(7) },
            Message::VisitAccepted,
            Message::VisitRefused,
            Message::Splice {
                visit_id: VisitId(0),
            },
            Message::SpliceAccept {
                visit_id: VisitId(u64::MAX),
            },
        ]
    }

    #[test]
    fn round_trips_and_reports_consumed_bytes() {
        for msg in all_messages() {
            let mut buf = msg.to_vec();
            assert!(buf.len() <= LEN_PREFIX + MAX_MSG_LEN);
            let len = buf.len();
            buf.extend_from_slice(b"trailing stream bytes");
            assert_eq!(Message::decode(&buf).unwrap(), Some((msg.clone(), len)));
            // Every strict prefix is incomplete, never an error.
            for cut in 0..len {
                assert_eq!(Message::decode(&buf[..cut]).unwrap(), None, "{msg:?} {cut}");
            }
        }
    }

    #[test]
    fn known_encoding() {
        let msg = Message::Splice {
            visit_id: VisitId(0x0102_0304_0506_0708),
        };
        assert_eq!(
            msg.to_vec(),
            [0, 10, VERSION, T_SPLICE, 1, 2, 3, 4, 5, 6, 7, 8]
        );
        let msg = Message::Register {
            name: ServiceName::new("ab").unwrap(),
            token: token(9),
        };
        let mut expected = vec![0, 37, VERSION, T_REGISTER, 2, b'a', b'b'];
        expected.extend_from_slice(&[9; 32]);
        assert_eq!(msg.to_vec(), expected);
    }

    #[test]
    fn rejects_bad_frames() {
        assert_eq!(
            Message::decode(&[0, 129]).unwrap_err(),
            MsgError::TooLong(129)
        );
        assert_eq!(
            Message::decode(&[0xff, 0xff]).unwrap_err(),
            MsgError::TooLong(65535)
        );
        assert_eq!(Message::decode(&[0, 0]).unwrap_err(), MsgError::Malformed);
        assert_eq!(
            Message::decode(&[0, 1, VERSION]).unwrap_err(),
            MsgError::Malformed
        );
        assert_eq!(
            Message::decode(&[0, 2, 2, T_REGISTERED]).unwrap_err(),
            MsgError::UnsupportedVersion(2)
        );
        assert_eq!(
            Message::decode(&[0, 2, VERSION, 0]).unwrap_err(),
            MsgError::UnknownType(0)
        );
        assert_eq!(
            Message::decode(&[0, 2, VERSION, 200]).unwrap_err(),
            MsgError::UnknownType(200)
        );
        assert_eq!(
            Message::decode(&[0, 3, VERSION, T_REGISTER_REFUSED, 9]).unwrap_err(),
            MsgError::UnknownReason(9)
        );
        // Trailing garbage inside the frame.
        assert_eq!(
            Message::decode(&[0, 3, VERSION, T_VISIT_REFUSED, 0]).unwrap_err(),
            MsgError::Malformed
        );
        // Token one byte short.
        let mut short = vec![0, 33, VERSION, T_VISIT];
        short.extend_from_slice(&[0; 31]);
        assert_eq!(Message::decode(&short).unwrap_err(), MsgError::Malformed);
        // Name length pointing past the body.
        assert_eq!(
            Message::decode(&[0, 4, VERSION, T_UNREGISTER, 5, b'a']).unwrap_err(),
            MsgError::Malformed
        );
        // Invalid names on the wire.
        assert_eq!(
            Message::decode(&[0, 3, VERSION, T_UNREGISTER, 0]).unwrap_err(),
            MsgError::BadName
        );
        assert_eq!(
            Message::decode(&[0, 5, VERSION, T_UNREGISTER, 2, b'a', b' ']).unwrap_err(),
            MsgError::BadName
        );
    }

    #[test]
    fn service_names() {
        assert!(ServiceName::new("a").is_ok());
        assert!(ServiceName::new("Web_01.x-y").is_ok());
        assert_eq!(ServiceName::new("").unwrap_err(), MsgError::BadName);
        assert_eq!(
            ServiceName::new(&"a".repeat(MAX_NAME_LEN + 1)).unwrap_err(),
            MsgError::BadName
        );
        for bad in ["a b", "a/b", "a\nb", "é", "a:b", "a\0"] {
            assert_eq!(
                ServiceName::new(bad).unwrap_err(),
                MsgError::BadName,
                "{bad:?}"
            );
        }
        assert_eq!(ServiceName::new("svc").unwrap().to_string(), "svc");
    }

    fn arb_message() -> impl Strategy<Value = Message> {
        let name = "[A-Za-z0-9._-]{1,64}".prop_map(|s| ServiceName::new(&s).unwrap());
        let token = any::<[u8; 32]>().prop_map(LookupToken::from_bytes);
        let reason = prop_oneof![
            Just(RefuseReason::NameTaken),
            Just(RefuseReason::Limit),
            Just(RefuseReason::NotRelay),
        ];
        prop_oneof![
            (name.clone(), token.clone())
                .prop_map(|(name, token)| Message::Register { name, token }),
            Just(Message::Registered),
            reason.prop_map(|reason| Message::RegisterRefused { reason }),
            name.prop_map(|name| Message::Unregister { name }),
            token.prop_map(|token| Message::Visit { token }),
            Just(Message::VisitAccepted),
            Just(Message::VisitRefused),
            any::<u64>().prop_map(|v| Message::Splice {
                visit_id: VisitId(v)
            }),
            any::<u64>().prop_map(|v| Message::SpliceAccept {
                visit_id: VisitId(v)
            }),
        ]
    }

    proptest! {
        #[test]
        fn arbitrary_messages_round_trip(msgs in prop::collection::vec(arb_message(), 1..8)) {
            let mut buf = Vec::new();
            for m in &msgs {
                m.encode(&mut buf);
            }
            let mut rest = &buf[..];
            for m in &msgs {
                let (got, used) = Message::decode(rest).unwrap().unwrap();
                prop_assert_eq!(&got, m);
                rest = &rest[used..];
            }
            prop_assert!(rest.is_empty());
        }

        #[test]
        fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
            if let Ok(Some((msg, used))) = Message::decode(&bytes) {
                prop_assert!(used <= bytes.len());
                // Whatever decodes re-encodes to exactly the bytes it came from.
                prop_assert_eq!(msg.to_vec(), &bytes[..used]);
            }
        }

        #[test]
        fn framed_random_bodies_never_panic(
            version in prop_oneof![Just(VERSION), any::<u8>()],
            ty in 0u8..12,
            body in prop::collection::vec(any::<u8>(), 0..120),
        ) {
            let mut bytes = vec![0, 0, version, ty];
            bytes.extend_from_slice(&body);
            let len = u16::try_from(bytes.len() - 2).unwrap();
            bytes[..2].copy_from_slice(&len.to_be_bytes());
            if let Ok(Some((msg, used))) = Message::decode(&bytes) {
                prop_assert_eq!(used, bytes.len());
                prop_assert_eq!(msg.to_vec(), bytes);
            }
        }
    }
}
