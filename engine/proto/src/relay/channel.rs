//! The end-to-end secure channel between a visitor and a service node, over the byte stream the
//! relay splices together.
//!
//! The relay copies bytes between the two streams; this channel makes sure it can neither read
//! nor alter them. It is keyed by the end-to-end PSK derived from the service key
//! ([`ServiceKey::e2e_psk`](super::token::ServiceKey::e2e_psk)), which the relay never sees.
//!
//! # Handshake
//!
//! The engine's own handshake ([`crate::crypto::handshake`], `Noise_NNpsk0_25519_AESGCM_SHA256`)
//! with the end-to-end PSK: the visitor is the initiator, the service node the responder. Each
//! handshake message is framed `[u16 len][msg]`. Message 1 carries the payload
//! [`INITIATOR_PAYLOAD`], which the responder checks, so that this channel's handshake cannot be
//! confused with an engine session handshake even if the same key bytes were ever used for both.
//! Without the right PSK, message 1 fails to authenticate at the responder
//! ([`ChannelError::Authentication`]). Fresh ephemeral keys on both sides give forward secrecy.
//!
//! # Records
//!
//! After the handshake each side sends records `[u16 len][ciphertext || tag]`: AES-256-GCM under
//! a key derived from the handshake's per-direction secret, the nonce a per-direction record
//! counter (so records cannot be dropped, reordered or replayed without the next one failing),
//! the 2-byte length prefix as associated data. The plaintext is one type byte (data or close)
//! and at most [`MAX_RECORD_PLAINTEXT`] bytes, far below Noise's 65535-byte limit. A `close`
//! record marks the clean end of the stream: a stream that ends without one was truncated
//! (perhaps by the relay), which [`Channel::is_peer_closed`] lets the caller tell apart.
//!
//! # Buffers
//!
//! Everything is bounded. [`Channel::feed`] takes at most as many bytes as fit next to the
//! plaintext not yet [`read`](Channel::read) ([`MAX_INBOUND_BUFFER`] in all), and
//! [`Channel::write`] at most as many as fit next to output not yet
//! [`taken`](Channel::take_output) ([`MAX_OUTBOUND_BUFFER`]); both return how much they took,
//! and the caller offers the rest again after draining. Data written before the handshake has
//! finished is buffered (within the same bound) and sent once it has.
//!
//! Any error is final: the channel refuses all further work and the caller closes the stream.

use std::fmt;

use aws_lc_rs::hkdf::{HKDF_SHA256, Prk};
use rand_core::{CryptoRng, RngCore};

use crate::crypto::aead::{KEY_LEN, PacketKey, TAG_LEN};
use crate::crypto::handshake::{Initiator, respond};
use crate::crypto::{HandshakeError, Psk, SessionKeys};

/// Most plaintext bytes in one record.
pub const MAX_RECORD_PLAINTEXT: usize = 16 * 1024;
/// Most bytes of stream input and undelivered plaintext a channel holds.
pub const MAX_INBOUND_BUFFER: usize = 256 * 1024;
/// Most bytes of pending output (records and plaintext waiting for the handshake) a channel
/// holds, give or take one record's framing.
pub const MAX_OUTBOUND_BUFFER: usize = 256 * 1024;
/// The payload of handshake message 1; binds the handshake to this protocol and version.
pub const INITIATOR_PAYLOAD: &[u8] = b"coretun relay e2e v1";

/// Largest handshake frame we accept. Ours are under 100 bytes; the slack leaves room for a
/// future version to say "unsupported" instead of failing to parse.
const MAX_HANDSHAKE_FRAME: usize = 1024;
/// Size of a frame's length prefix.
const LEN_PREFIX: usize = 2;
/// Size of the record type byte inside the ciphertext.
const TYPE_LEN: usize = 1;
/// Largest record ciphertext (type byte, data, tag).
const MAX_RECORD_CIPHERTEXT: usize = TYPE_LEN + MAX_RECORD_PLAINTEXT + TAG_LEN;
/// HKDF label turning a handshake secret into a record key.
const RECORD_KEY_LABEL: &[u8] = b"coretun relay e2e record key";

const RECORD_DATA: u8 = 0;
const RECORD_CLOSE: u8 = 1;

/// Errors of the end-to-end channel. All of them are final.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ChannelError {
    /// The handshake did not authenticate: the two ends use different service keys, or the
    /// stream was tampered with.
    #[error(
        "end-to-end handshake failed: wrong service key on one side, or the stream was tampered with"
    )]
    Authentication,
    /// A record did not authenticate: the stream was tampered with, truncated in a record or
    /// had records dropped or reordered.
    #[error("end-to-end record failed authentication (stream tampered with)")]
    Decrypt,
    /// The peer sent something not shaped like this protocol.
    #[error("malformed end-to-end channel data: {0}")]
    Malformed(&'static str),
    /// Data was written after [`Channel::close`].
    #[error("channel already closed for writing")]
    Closed,
    /// An unexpected failure in the handshake implementation (a bug, not a peer's doing).
    #[error("internal handshake error: {0}")]
    Internal(String),
    /// 2^64 records in one direction; never happens in practice, but the nonce must not wrap.
    #[error("record counter exhausted")]
    CounterExhausted,
}

impl From<HandshakeError> for ChannelError {
    fn from(e: HandshakeError) -> Self {
        match e {
            HandshakeError::Authentication => Self::Authentication,
            HandshakeError::Malformed | HandshakeError::TooLarge { .. } => {
                Self::Malformed("handshake message")
            }
            other => Self::Internal(other.to_string()),
        }
    }
}

/// One direction's record key and counter.
struct RecordKey {
    key: PacketKey,
    seq: u64,
}

impl RecordKey {
    fn new(secret: &[u8; KEY_LEN]) -> Self {
        let mut key = [0u8; KEY_LEN];
        // 32 bytes of HKDF-SHA256 output is always within HKDF's limit, so this cannot fail.
        Prk::new_less_safe(HKDF_SHA256, secret)
            .expand(&[RECORD_KEY_LABEL], HKDF_SHA256)
            .and_then(|okm| okm.fill(&mut key))
            .expect("32-byte HKDF-SHA256 output is always valid");
        Self {
            key: PacketKey::new(&key),
            seq: 0,
        }
    }

    fn next_seq(&mut self) -> Result<u64, ChannelError> {
        let seq = self.seq;
        self.seq = seq.checked_add(1).ok_or(ChannelError::CounterExhausted)?;
        Ok(seq)
    }
}

enum State {
    /// Visitor: message 1 sent, waiting for message 2.
    Initiating(Box<Initiator>),
    /// Service node: waiting for message 1.
    Responding {
        psk: Psk,
        seed: [u8; 32],
    },
    Established {
        tx: RecordKey,
        rx: RecordKey,
    },
    Failed(ChannelError),
}

/// The sans-IO end-to-end channel. See the module documentation.
pub struct Channel {
    state: State,
    /// Stream bytes received but not yet processed (at most one incomplete frame after
    /// [`Channel::feed`] returns).
    input: Vec<u8>,
    /// Decrypted data not yet read.
    plaintext: Vec<u8>,
    /// Bytes to put on the stream.
    output: Vec<u8>,
    /// Data written before the handshake finished.
    early: Vec<u8>,
    /// [`Channel::close`] was called.
    closing: bool,
    /// The close record is in `output`.
    close_sent: bool,
    /// The peer's close record arrived.
    peer_closed: bool,
}

impl Channel {
    /// The visitor's side. Handshake message 1 is ready in [`Channel::take_output`] at once.
    pub fn initiator(
        psk: &Psk,
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Result<Self, ChannelError> {
        let mut seed = [0u8; 32];
        rng.fill_bytes(&mut seed);
        let mut msg1 = Vec::new();
        let init = Initiator::start(psk, seed, INITIATOR_PAYLOAD, &mut msg1)?;
        let mut channel = Self::new(State::Initiating(Box::new(init)));
        push_frame(&mut channel.output, &msg1)?;
        Ok(channel)
    }

    /// The service node's side; it answers the visitor's handshake when that arrives.
    pub fn responder(psk: &Psk, rng: &mut (impl RngCore + CryptoRng)) -> Self {
        let mut seed = [0u8; 32];
        rng.fill_bytes(&mut seed);
        Self::new(State::Responding {
            psk: psk.clone(),
            seed,
        })
    }

    fn new(state: State) -> Self {
        Self {
            state,
            input: Vec::new(),
            plaintext: Vec::new(),
            output: Vec::new(),
            early: Vec::new(),
            closing: false,
            close_sent: false,
            peer_closed: false,
        }
    }

    /// Processes bytes read from the stream; returns how many it took.
    ///
    /// Takes fewer than `bytes.len()` (possibly none) only when the inbound buffer is full:
    /// [`read`](Self::read) the plaintext, then offer the rest again. Handshake replies are
    /// queued for [`take_output`](Self::take_output).
    pub fn feed(&mut self, bytes: &[u8]) -> Result<usize, ChannelError> {
        self.check()?;
        let room = MAX_INBOUND_BUFFER.saturating_sub(self.input.len() + self.plaintext.len());
        let take = bytes.len().min(room);
        self.input
            .extend_from_slice(bytes.get(..take).unwrap_or_default());
        match self.process() {
            Ok(()) => Ok(take),
            Err(e) => {
                self.fail(e.clone());
                Err(e)
            }
        }
    }

    /// Moves the plaintext received so far to the end of `out`; returns how many bytes.
    pub fn read(&mut self, out: &mut Vec<u8>) -> usize {
        let n = self.plaintext.len();
        out.append(&mut self.plaintext);
        n
    }

    /// Queues `plaintext` to be sent; returns how many bytes it took.
    ///
    /// Before the handshake has finished the data is buffered and sent once it has. Takes fewer
    /// than `plaintext.len()` only when the outbound buffer is full:
    /// [`take_output`](Self::take_output), then offer the rest again.
    pub fn write(&mut self, plaintext: &[u8]) -> Result<usize, ChannelError> {
        self.check()?;
        if self.closing {
            return Err(ChannelError::Closed);
        }
        let room = MAX_OUTBOUND_BUFFER.saturating_sub(self.output.len() + self.early.len());
        let take = plaintext.len().min(room);
        let data = plaintext.get(..take).unwrap_or_default();
        let result = match &mut self.state {
            State::Established { tx, .. } => seal_records(tx, RECORD_DATA, data, &mut self.output),
            _ => {
                self.early.extend_from_slice(data);
                Ok(())
            }
        };
        match result {
            Ok(()) => Ok(take),
            Err(e) => {
                self.fail(e.clone());
                Err(e)
            }
        }
    }

    /// Ends the sending direction with a close record (after any data written before), so the
    /// peer can tell a clean end from a truncated stream. Further writes fail.
    pub fn close(&mut self) -> Result<(), ChannelError> {
        self.check()?;
        self.closing = true;
        let result = self.flush_early();
        if let Err(e) = &result {
            self.fail(e.clone());
        }
        result
    }

    /// The bytes to put on the stream, in order.
    pub fn take_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.output)
    }

    /// Whether the handshake has finished (and has not failed since).
    pub fn is_established(&self) -> bool {
        matches!(self.state, State::Established { .. })
    }

    /// Whether the peer ended its direction cleanly with [`close`](Self::close). A stream that
    /// ends while this is false was cut short.
    pub fn is_peer_closed(&self) -> bool {
        self.peer_closed
    }

    /// Whether the close record has been queued for sending.
    pub fn is_closed(&self) -> bool {
        self.close_sent
    }

    /// The error that failed the channel, if any.
    pub fn error(&self) -> Option<&ChannelError> {
        match &self.state {
            State::Failed(e) => Some(e),
            _ => None,
        }
    }

    fn check(&self) -> Result<(), ChannelError> {
        match &self.state {
            State::Failed(e) => Err(e.clone()),
            _ => Ok(()),
        }
    }

    fn fail(&mut self, e: ChannelError) {
        self.state = State::Failed(e);
        // Nothing half-processed may leak out after a failure.
        self.input = Vec::new();
        self.early = Vec::new();
    }

    /// Handles every complete frame in `input`.
    fn process(&mut self) -> Result<(), ChannelError> {
        let mut pos = 0;
        let result = loop {
            let Some(frame) = next_frame(&self.input, &mut pos, self.max_frame())? else {
                break Ok(());
            };
            if let Err(e) = self.handle_frame(frame) {
                break Err(e);
            }
        };
        self.input.drain(..pos);
        result
    }

    fn max_frame(&self) -> usize {
        match self.state {
            State::Established { .. } => MAX_RECORD_CIPHERTEXT,
            _ => MAX_HANDSHAKE_FRAME,
        }
    }

    fn handle_frame(&mut self, frame: Frame) -> Result<(), ChannelError> {
        let body = self
            .input
            .get(frame.start..frame.end)
            .ok_or(ChannelError::Malformed("frame bounds"))?;
        match &mut self.state {
            State::Initiating(init) => {
                let (payload, keys) = init.finish(body)?;
                if !payload.is_empty() {
                    return Err(ChannelError::Malformed("handshake payload"));
                }
                self.establish(&keys)
            }
            State::Responding { psk, seed } => {
                let mut msg2 = Vec::new();
                let (payload, keys) = respond(psk, *seed, body, &mut msg2, |_| Vec::new())?;
                if payload != INITIATOR_PAYLOAD {
                    return Err(ChannelError::Malformed("handshake payload"));
                }
                push_frame(&mut self.output, &msg2)?;
                self.establish(&keys)
            }
            State::Established { rx, .. } => {
                if self.peer_closed {
                    return Err(ChannelError::Malformed("record after close"));
                }
                let header = frame.header;
                let mut buf = body.to_vec();
                let seq = rx.next_seq()?;
                let plain = rx
                    .key
                    .open_in_place(seq, &header, &mut buf)
                    .map_err(|_| ChannelError::Decrypt)?;
                let (&ty, data) = plain
                    .split_first()
                    .ok_or(ChannelError::Malformed("empty record"))?;
                match ty {
                    RECORD_DATA => self.plaintext.extend_from_slice(data),
                    RECORD_CLOSE if data.is_empty() => self.peer_closed = true,
                    _ => return Err(ChannelError::Malformed("record type")),
                }
                Ok(())
            }
            State::Failed(e) => Err(e.clone()),
        }
    }

    fn establish(&mut self, keys: &SessionKeys) -> Result<(), ChannelError> {
        // `SessionKeys` is already oriented: tx for what this side sends.
        self.state = State::Established {
            tx: RecordKey::new(&keys.tx_secret),
            rx: RecordKey::new(&keys.rx_secret),
        };
        self.flush_early()
    }

    /// Seals early data and a requested close once the channel is established.
    fn flush_early(&mut self) -> Result<(), ChannelError> {
        let State::Established { tx, .. } = &mut self.state else {
            return Ok(());
        };
        let early = std::mem::take(&mut self.early);
        seal_records(tx, RECORD_DATA, &early, &mut self.output)?;
        if self.closing && !self.close_sent {
            seal_record(tx, RECORD_CLOSE, &[], &mut self.output)?;
            self.close_sent = true;
        }
        Ok(())
    }
}

impl fmt::Debug for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Initiating(_) => "initiating",
            State::Responding { .. } => "responding",
            State::Established { .. } => "established",
            State::Failed(_) => "failed",
        };
        f.debug_struct("Channel")
            .field("state", &state)
            .field("input", &self.input.len())
            .field("plaintext", &self.plaintext.len())
            .field("output", &self.output.len())
            .field("early", &self.early.len())
            .field("close_sent", &self.close_sent)
            .field("peer_closed", &self.peer_closed)
            .finish()
    }
}

/// Where one complete frame's body lies in the input, and its length prefix.
#[derive(Clone, Copy)]
struct Frame {
    header: [u8; LEN_PREFIX],
    start: usize,
    end: usize,
}

/// The next complete frame at `*pos`, advancing `*pos` past it; `None` if incomplete.
fn next_frame(input: &[u8], pos: &mut usize, max: usize) -> Result<Option<Frame>, ChannelError> {
    let rest = input.get(*pos..).unwrap_or_default();
    let Some((header, body)) = rest.split_first_chunk::<LEN_PREFIX>() else {
        return Ok(None);
    };
    let len = usize::from(u16::from_be_bytes(*header));
    if len > max {
        return Err(ChannelError::Malformed("frame too long"));
    }
    if body.len() < len {
        return Ok(None);
    }
    let start = *pos + LEN_PREFIX;
    *pos = start + len;
    Ok(Some(Frame {
        header: *header,
        start,
        end: start + len,
    }))
}

/// Appends `[u16 len][msg]`.
fn push_frame(out: &mut Vec<u8>, msg: &[u8]) -> Result<(), ChannelError> {
    let len = u16::try_from(msg.len()).map_err(|_| ChannelError::Malformed("frame too long"))?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(msg);
    Ok(())
}

/// Seals `data` as as many records as needed (none for empty data).
fn seal_records(
    tx: &mut RecordKey,
    ty: u8,
    data: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), ChannelError> {
    for chunk in data.chunks(MAX_RECORD_PLAINTEXT) {
        seal_record(tx, ty, chunk, out)?;
    }
    Ok(())
}

/// Appends one record `[u16 len][E(type || data) || tag]`.
fn seal_record(
    tx: &mut RecordKey,
    ty: u8,
    data: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), ChannelError> {
    let len = TYPE_LEN + data.len() + TAG_LEN;
    // Callers pass at most MAX_RECORD_PLAINTEXT bytes, so this always fits a u16.
    let header = u16::try_from(len)
        .map_err(|_| ChannelError::Malformed("record too long"))?
        .to_be_bytes();
    let seq = tx.next_seq()?;
    out.extend_from_slice(&header);
    let start = out.len();
    out.push(ty);
    out.extend_from_slice(data);
    let tag = tx
        .key
        .seal_in_place(seq, &header, out.get_mut(start..).unwrap_or_default());
    out.extend_from_slice(&tag);
    Ok(())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    use super::*;
    use crate::relay::token::ServiceKey;

    fn psk(b: u8) -> Psk {
        ServiceKey::from_bytes([b; 32]).e2e_psk()
    }

    fn pair(seed: u64) -> (Channel, Channel) {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let v = Channel::initiator(&psk(1), &mut rng).unwrap();
        let s = Channel::responder(&psk(1), &mut rng);
        (v, s)
    }

    /// Moves everything `from` has to send into `to`, in one piece; returns the bytes moved.
    fn pump(from: &mut Channel, to: &mut Channel) -> Result<Vec<u8>, ChannelError> {
        let bytes = from.take_output();
        let took = to.feed(&bytes)?;
        assert_eq!(took, bytes.len());
        Ok(bytes)
    }

    fn read_all(c: &mut Channel) -> Vec<u8> {
        let mut out = Vec::new();
        c.read(&mut out);
        out
    }

    #[test]
    fn handshake_and_data_both_ways() {
        let (mut v, mut s) = pair(1);
        assert!(!v.is_established() && !s.is_established());
        // Written before the handshake: buffered, sent once established.
        assert_eq!(v.write(b"early from visitor").unwrap(), 18);
        assert_eq!(s.write(b"early from service").unwrap(), 18);
        assert!(
            s.take_output().is_empty(),
            "responder has nothing to send yet"
        );
        pump(&mut v, &mut s).unwrap();
        assert!(s.is_established());
        pump(&mut s, &mut v).unwrap();
        assert!(v.is_established());
        assert_eq!(read_all(&mut v), b"early from service");
        pump(&mut v, &mut s).unwrap();
        assert_eq!(read_all(&mut s), b"early from visitor");

        let big: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
        assert_eq!(v.write(&big).unwrap(), big.len());
        let wire = pump(&mut v, &mut s).unwrap();
        assert_eq!(read_all(&mut s), big);
        // 7 records of at most 16 KiB, each with 2 + 1 + 16 bytes of overhead.
        assert_eq!(wire.len(), big.len() + 7 * 19);
        s.write(b"reply").unwrap();
        pump(&mut s, &mut v).unwrap();
        assert_eq!(read_all(&mut v), b"reply");
        assert_eq!(v.write(&[]).unwrap(), 0);
        assert!(v.take_output().is_empty());
    }

    #[test]
    fn close_is_signalled_and_ends_writing() {
        let (mut v, mut s) = pair(2);
        v.write(b"last words").unwrap();
        v.close().unwrap();
        assert!(!v.is_closed(), "close waits for the handshake");
        assert_eq!(v.write(b"more").unwrap_err(), ChannelError::Closed);
        pump(&mut v, &mut s).unwrap();
        pump(&mut s, &mut v).unwrap();
        assert!(v.is_closed());
        pump(&mut v, &mut s).unwrap();
        assert_eq!(read_all(&mut s), b"last words");
        assert!(s.is_peer_closed());
        assert!(!v.is_peer_closed());
        // The other direction still works.
        s.write(b"bye").unwrap();
        s.close().unwrap();
        pump(&mut s, &mut v).unwrap();
        assert_eq!(read_all(&mut v), b"bye");
        assert!(v.is_peer_closed());
    }

    #[test]
    fn record_after_close_is_rejected() {
        let (mut v, mut s) = pair(3);
        pump(&mut v, &mut s).unwrap();
        pump(&mut s, &mut v).unwrap();
        v.close().unwrap();
        let close = v.take_output();
        // Forge "close then data" by sealing a data record with the next counter value.
        let State::Established { tx, .. } = &mut v.state else {
            panic!("established")
        };
        let mut after = Vec::new();
        seal_record(tx, RECORD_DATA, b"x", &mut after).unwrap();
        s.feed(&close).unwrap();
        assert!(s.is_peer_closed());
        assert_eq!(
            s.feed(&after).unwrap_err(),
            ChannelError::Malformed("record after close")
        );
    }

    #[test]
    fn wrong_psk_fails_on_responder() {
        let mut rng = ChaCha20Rng::seed_from_u64(4);
        let mut v = Channel::initiator(&psk(1), &mut rng).unwrap();
        let mut s = Channel::responder(&psk(2), &mut rng);
        let err = pump(&mut v, &mut s).unwrap_err();
        assert_eq!(err, ChannelError::Authentication);
        assert!(err.to_string().contains("wrong service key"), "{err}");
        assert!(s.take_output().is_empty(), "no reply to a failed handshake");
        assert!(!s.is_established());
        assert_eq!(s.error(), Some(&ChannelError::Authentication));
        // Final: further input and writes fail the same way.
        assert_eq!(s.feed(b"x").unwrap_err(), ChannelError::Authentication);
        assert_eq!(s.write(b"x").unwrap_err(), ChannelError::Authentication);
    }

    #[test]
    fn replayed_message2_from_another_handshake_fails_on_initiator() {
        let (mut v1, mut s1) = pair(5);
        pump(&mut v1, &mut s1).unwrap();
        let (mut v2, _) = pair(6);
        v2.take_output();
        assert_eq!(
            v2.feed(&s1.take_output()).unwrap_err(),
            ChannelError::Authentication
        );
    }

    #[test]
    fn wrong_initiator_payload_is_rejected() {
        let mut msg1 = Vec::new();
        Initiator::start(&psk(1), [9; 32], b"coretun handshake", &mut msg1).unwrap();
        let mut framed = Vec::new();
        push_frame(&mut framed, &msg1).unwrap();
        let mut s = Channel::responder(&psk(1), &mut ChaCha20Rng::seed_from_u64(7));
        assert_eq!(
            s.feed(&framed).unwrap_err(),
            ChannelError::Malformed("handshake payload")
        );
        assert!(s.take_output().is_empty());
    }

    /// Flips every bit of every byte of each part of a conversation (message 1, message 2, a
    /// record each way) and feeds it to the side that would receive it. Each flip must fail,
    /// except that a flip in a length prefix may instead leave the frame incomplete; then the
    /// receiver waits and delivers nothing (the stream then ends without a close record, which
    /// the caller sees as truncation).
    #[test]
    fn any_flipped_bit_fails() {
        // `pair(8)` is deterministic, so every fresh pair reproduces the same conversation.
        let (mut v, mut s) = pair(8);
        let msg1 = v.take_output();
        s.feed(&msg1).unwrap();
        let msg2 = s.take_output();
        v.feed(&msg2).unwrap();
        v.write(b"visitor data").unwrap();
        let rec_v = v.take_output();
        s.write(b"service data").unwrap();
        let rec_s = s.take_output();

        // The receiving side of each part, in the state just before it arrives.
        let receiver = |part: usize| {
            let (mut v, mut s) = pair(8);
            v.take_output();
            match part {
                0 => s,
                1 => v,
                2 => {
                    s.feed(&msg1).unwrap();
                    s
                }
                _ => {
                    v.feed(&msg2).unwrap();
                    v
                }
            }
        };
        for (part, stream) in [&msg1, &msg2, &rec_v, &rec_s].into_iter().enumerate() {
            // The unmodified part is accepted.
            let mut ok = receiver(part);
            ok.feed(stream).unwrap();
            for i in 0..stream.len() {
                for bit in 0..8 {
                    let mut bad = stream.clone();
                    bad[i] ^= 1 << bit;
                    let mut r = receiver(part);
                    let was_established = r.is_established();
                    match r.feed(&bad) {
                        Err(_) => {}
                        Ok(_) => {
                            assert!(i < LEN_PREFIX, "part {part} byte {i} bit {bit} accepted");
                            assert_eq!(r.is_established(), was_established);
                        }
                    }
                    assert!(
                        read_all(&mut r).is_empty(),
                        "part {part} byte {i} bit {bit}"
                    );
                }
            }
        }
    }

    #[test]
    fn dropped_reordered_or_replayed_records_fail() {
        let (mut v, mut s) = pair(9);
        pump(&mut v, &mut s).unwrap();
        pump(&mut s, &mut v).unwrap();
        v.write(b"one").unwrap();
        let r1 = v.take_output();
        v.write(b"two").unwrap();
        let r2 = v.take_output();

        let mut dropped = pair_established(9);
        assert_eq!(dropped.feed(&r2).unwrap_err(), ChannelError::Decrypt);
        let mut replayed = pair_established(9);
        replayed.feed(&r1).unwrap();
        assert_eq!(replayed.feed(&r1).unwrap_err(), ChannelError::Decrypt);
        s.feed(&r1).unwrap();
        s.feed(&r2).unwrap();
        assert_eq!(read_all(&mut s), b"onetwo");
    }

    /// The service side of `pair(seed)` after the handshake (deterministic, so it matches).
    fn pair_established(seed: u64) -> Channel {
        let (mut v, mut s) = pair(seed);
        pump(&mut v, &mut s).unwrap();
        s.take_output();
        s
    }

    #[test]
    fn oversized_frames_fail_without_buffering() {
        let mut s = Channel::responder(&psk(1), &mut ChaCha20Rng::seed_from_u64(10));
        let len = u16::try_from(MAX_HANDSHAKE_FRAME + 1).unwrap();
        assert_eq!(
            s.feed(&len.to_be_bytes()).unwrap_err(),
            ChannelError::Malformed("frame too long")
        );
        let mut s = pair_established(11);
        assert_eq!(
            s.feed(&[0xff, 0xff]).unwrap_err(),
            ChannelError::Malformed("frame too long")
        );
        // A record too short to hold a tag fails authentication, not a panic.
        let mut s = pair_established(12);
        assert_eq!(s.feed(&[0, 3, 1, 2, 3]).unwrap_err(), ChannelError::Decrypt);
        let mut s = pair_established(13);
        assert_eq!(s.feed(&[0, 0]).unwrap_err(), ChannelError::Decrypt);
    }

    #[test]
    fn buffers_are_bounded_and_resume_after_draining() {
        let (mut v, mut s) = pair(14);
        pump(&mut v, &mut s).unwrap();
        pump(&mut s, &mut v).unwrap();

        // Outbound: write stops at the bound until output is taken.
        let data: Vec<u8> = (0..3 * MAX_OUTBOUND_BUFFER)
            .map(|i| (i % 251) as u8)
            .collect();
        let mut written = 0;
        let mut wire = Vec::new();
        while written < data.len() {
            let n = v.write(&data[written..]).unwrap();
            assert!(n > 0);
            assert!(n <= MAX_OUTBOUND_BUFFER);
            written += n;
            let out = v.take_output();
            let overhead = MAX_OUTBOUND_BUFFER.div_ceil(MAX_RECORD_PLAINTEXT)
                * (LEN_PREFIX + TYPE_LEN + TAG_LEN);
            assert!(out.len() <= MAX_OUTBOUND_BUFFER + overhead);
            wire.extend_from_slice(&out);
        }
        assert_eq!(v.write(&data).unwrap(), MAX_OUTBOUND_BUFFER);
        assert_eq!(v.write(b"x").unwrap(), 0, "full until drained");
        v.take_output();

        // Inbound: feed stops at the bound until plaintext is read.
        let mut fed = 0;
        let mut got = Vec::new();
        let mut stalls = 0;
        while fed < wire.len() {
            let n = s.feed(&wire[fed..]).unwrap();
            fed += n;
            assert!(s.input.len() + s.plaintext.len() <= MAX_INBOUND_BUFFER);
            if n < wire.len() - (fed - n) {
                stalls += 1;
                s.read(&mut got);
            }
        }
        s.read(&mut got);
        assert!(stalls > 0);
        assert_eq!(got, data);
    }

    #[test]
    fn relay_in_the_middle_sees_no_plaintext() {
        // The relay copies bytes both ways and records them.
        let (mut v, mut s) = pair(15);
        let mut seen = Vec::new();
        let secret = b"GET /secret-document HTTP/1.1";
        v.write(secret).unwrap();
        s.write(b"200 OK: the secret-document body").unwrap();
        for _ in 0..3 {
            let a = v.take_output();
            seen.extend_from_slice(&a);
            s.feed(&a).unwrap();
            let b = s.take_output();
            seen.extend_from_slice(&b);
            v.feed(&b).unwrap();
        }
        assert_eq!(read_all(&mut s), secret);
        assert_eq!(read_all(&mut v), b"200 OK: the secret-document body");
        assert!(!seen.is_empty());
        for needle in [&b"secret"[..], b"200 OK", INITIATOR_PAYLOAD, b"coretun"] {
            assert!(
                !seen.windows(needle.len()).any(|w| w == needle),
                "{:?} visible on the wire",
                String::from_utf8_lossy(needle)
            );
        }
        // Neither the service key's derived PSK nor the lookup token appear either.
        let sk = ServiceKey::from_bytes([1; 32]);
        for needle in [&sk.e2e_psk().as_bytes()[..], sk.lookup_token().as_bytes()] {
            assert!(!seen.windows(32).any(|w| w == needle));
        }
    }

    #[test]
    fn debug_shows_no_key_material() {
        let (v, _) = pair(16);
        let s = format!("{v:?}");
        assert!(s.contains("initiating"), "{s}");
    }

    /// Splits `data` into chunks whose sizes come from `cuts` (cycled).
    fn chunks<'a>(data: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
        let mut out = Vec::new();
        let mut rest = data;
        let mut i = 0;
        while !rest.is_empty() {
            let n = cuts[i % cuts.len()].clamp(1, rest.len());
            out.push(&rest[..n]);
            rest = &rest[n..];
            i += 1;
        }
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn random_chunking_delivers_everything(
            seed in any::<u64>(),
            v_msgs in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40_000), 0..5),
            s_msgs in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40_000), 0..5),
            cuts in prop::collection::vec(1usize..5000, 1..16),
        ) {
            let (mut v, mut s) = pair(seed);
            let v_all: Vec<u8> = v_msgs.concat();
            let s_all: Vec<u8> = s_msgs.concat();
            for m in &v_msgs { prop_assert_eq!(v.write(m).unwrap(), m.len()); }
            for m in &s_msgs { prop_assert_eq!(s.write(m).unwrap(), m.len()); }
            v.close().unwrap();
            s.close().unwrap();
            let (mut got_s, mut got_v) = (Vec::new(), Vec::new());
            // Alternate directions, each stream delivered in random pieces, until both sides
            // have seen the other's close.
            for _ in 0..10 {
                let a = v.take_output();
                for piece in chunks(&a, &cuts) {
                    prop_assert_eq!(s.feed(piece).unwrap(), piece.len());
                    s.read(&mut got_s);
                }
                let b = s.take_output();
                for piece in chunks(&b, &cuts) {
                    prop_assert_eq!(v.feed(piece).unwrap(), piece.len());
                    v.read(&mut got_v);
                }
                if v.is_peer_closed() && s.is_peer_closed() { break; }
            }
            prop_assert!(v.is_peer_closed() && s.is_peer_closed());
            prop_assert_eq!(got_s, v_all);
            prop_assert_eq!(got_v, s_all);
        }

        #[test]
        fn random_bytes_never_panic(
            seed in any::<u64>(),
            established in any::<bool>(),
            bytes in prop::collection::vec(any::<u8>(), 0..2000),
        ) {
            let mut s = if established {
                pair_established(seed)
            } else {
                Channel::responder(&psk(1), &mut ChaCha20Rng::seed_from_u64(seed))
            };
            let _ = s.feed(&bytes);
            prop_assert!(read_all(&mut s).is_empty());
            let mut v = Channel::initiator(&psk(1), &mut ChaCha20Rng::seed_from_u64(seed)).unwrap();
            let _ = v.feed(&bytes);
            prop_assert!(!v.is_established());
        }
    }
}
