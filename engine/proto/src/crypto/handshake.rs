//! The Noise handshake: `Noise_NNpsk0_25519_AESGCM_SHA256`.
//!
//! Two messages, one round trip:
//!
//! ```text
//! -> psk, e, payload      (message 1: initiator ephemeral + encrypted payload)
//! <- e, ee, payload       (message 2: responder ephemeral + encrypted payload)
//! ```
//!
//! The pre-shared key is mixed in before anything else (`psk0`), so both payloads are encrypted
//! and a peer without the PSK cannot produce a message that authenticates: the PSK provides
//! mutual authentication, the ephemeral-ephemeral DH forward secrecy. The result is one 32-byte
//! secret per direction ([`SessionKeys`]) for [`TxKeys`]/[`RxKeys`].
//!
//! Message 1 can be replayed by an attacker (the responder cannot tell a replay from a retry);
//! the replayed handshake cannot complete without the initiator's ephemeral key, but callers
//! should carry something like a timestamp in the initiator payload if they need to reject
//! replays before doing work.
//!
//! The core has no global RNG, so ephemeral keys come from a ChaCha20 stream seeded by the
//! caller: the same seed yields the same ephemeral key, so a seed must never be reused.

use std::cell::Cell;
use std::fmt;
use std::time::Instant;

use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};
use snow::HandshakeState;
use snow::params::{CipherChoice, DHChoice, HashChoice, NoiseParams};
use snow::resolvers::{CryptoResolver, DefaultResolver};
use snow::types::{Cipher, Dh, Hash, Random};

use crate::crypto::aead::{KEY_LEN, TAG_LEN};
use crate::crypto::keys::{RekeyLimits, RxKeys, TxKeys};
use crate::crypto::{HandshakeError, Psk};

/// The Noise protocol name; part of the handshake transcript.
const NOISE_PARAMS: &str = "Noise_NNpsk0_25519_AESGCM_SHA256";
/// Prologue mixed into the transcript: peers speaking another protocol or version fail to
/// authenticate instead of deriving keys for different meanings.
const PROLOGUE: &[u8] = b"coretun handshake v1";
/// Length of an X25519 public key.
const DH_LEN: usize = 32;

/// Largest handshake message Noise allows.
pub const MAX_HANDSHAKE_MSG: usize = 65_535;
/// Bytes a handshake message adds to its payload: an ephemeral public key and a tag.
pub const HANDSHAKE_OVERHEAD: usize = DH_LEN + TAG_LEN;
/// Largest payload either handshake message can carry.
pub const MAX_HANDSHAKE_PAYLOAD: usize = MAX_HANDSHAKE_MSG - HANDSHAKE_OVERHEAD;

/// The initiator's side of a handshake between sending message 1 and receiving message 2.
pub struct Initiator {
    state: HandshakeState,
    finished: bool,
}

impl Initiator {
    /// Starts a handshake: appends message 1, carrying the (encrypted) `payload`, to `out`.
    ///
    /// `seed` must be fresh randomness: it determines the ephemeral key.
    pub fn start(
        psk: &Psk,
        seed: [u8; 32],
        payload: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<Self, HandshakeError> {
        let mut state = builder(psk, seed)?.build_initiator().map_err(noise_error)?;
        write_message(&mut state, payload, out)?;
        Ok(Self {
            state,
            finished: false,
        })
    }

    /// Reads message 2, returning the responder's payload and the session keys.
    ///
    /// A message that fails to authenticate leaves the handshake as it was, so a forged
    /// message 2 cannot abort it: the genuine one can still be processed afterwards.
    pub fn finish(&mut self, msg2: &[u8]) -> Result<(Vec<u8>, SessionKeys), HandshakeError> {
        if self.finished {
            return Err(HandshakeError::AlreadyFinished);
        }
        let payload = read_message(&mut self.state, msg2)?;
        if !self.state.is_handshake_finished() {
            return Err(HandshakeError::Internal(
                "handshake not finished after message 2".into(),
            ));
        }
        self.finished = true;
        // The initiator sends with the first split key, the responder with the second.
        let (tx_secret, rx_secret) = self.state.dangerously_get_raw_split();
        Ok((
            payload,
            SessionKeys {
                tx_secret,
                rx_secret,
            },
        ))
    }
}

impl fmt::Debug for Initiator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Initiator")
            .field("finished", &self.finished)
            .finish_non_exhaustive()
    }
}

/// The responder's side of a handshake, in one step: reads message 1, builds the reply payload
/// with `make_payload(initiator_payload)`, appends message 2 to `out`, and returns the
/// initiator's payload and the session keys.
///
/// Fails with [`HandshakeError::Authentication`] if the initiator uses a different PSK or the
/// message was tampered with; `make_payload` is only called for authenticated messages.
/// `seed` must be fresh randomness: it determines the ephemeral key.
pub fn respond(
    psk: &Psk,
    seed: [u8; 32],
    msg1: &[u8],
    out: &mut Vec<u8>,
    make_payload: impl FnOnce(&[u8]) -> Vec<u8>,
) -> Result<(Vec<u8>, SessionKeys), HandshakeError> {
    let mut state = builder(psk, seed)?.build_responder().map_err(noise_error)?;
    let initiator_payload = read_message(&mut state, msg1)?;
    let payload = make_payload(&initiator_payload);
    write_message(&mut state, &payload, out)?;
    if !state.is_handshake_finished() {
        return Err(HandshakeError::Internal(
            "handshake not finished after message 2".into(),
        ));
    }
    let (rx_secret, tx_secret) = state.dangerously_get_raw_split();
    Ok((
        initiator_payload,
        SessionKeys {
            tx_secret,
            rx_secret,
        },
    ))
}

/// The per-direction secrets a completed handshake yields. `Debug` masks them.
#[derive(Clone)]
pub struct SessionKeys {
    /// Secret for what this side sends.
    pub tx_secret: [u8; KEY_LEN],
    /// Secret for what this side receives.
    pub rx_secret: [u8; KEY_LEN],
}

impl SessionKeys {
    /// Sets up the key schedules for both directions.
    pub fn into_keys(self, now: Instant, limits: RekeyLimits) -> (TxKeys, RxKeys) {
        (
            TxKeys::new(self.tx_secret, now, limits),
            RxKeys::new(self.rx_secret),
        )
    }
}

impl fmt::Debug for SessionKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SessionKeys(***)")
    }
}

fn builder(psk: &Psk, seed: [u8; 32]) -> Result<snow::Builder<'_>, HandshakeError> {
    let params: NoiseParams = NOISE_PARAMS.parse().map_err(noise_error)?;
    snow::Builder::with_resolver(params, Box::new(SeededResolver::new(seed)))
        .prologue(PROLOGUE)
        .and_then(|b| b.psk(0, psk.as_bytes()))
        .map_err(noise_error)
}

/// Appends one handshake message carrying `payload` to `out`.
fn write_message(
    state: &mut HandshakeState,
    payload: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), HandshakeError> {
    if payload.len() > MAX_HANDSHAKE_PAYLOAD {
        return Err(HandshakeError::TooLarge {
            len: payload.len(),
            max: MAX_HANDSHAKE_PAYLOAD,
        });
    }
    let start = out.len();
    // Both NNpsk0 messages are exactly an ephemeral key plus the encrypted payload.
    out.resize(start + HANDSHAKE_OVERHEAD + payload.len(), 0);
    match state.write_message(payload, &mut out[start..]) {
        Ok(len) => {
            out.truncate(start + len);
            Ok(())
        }
        Err(e) => {
            out.truncate(start);
            Err(noise_error(e))
        }
    }
}

/// Reads one handshake message, returning its payload.
fn read_message(state: &mut HandshakeState, msg: &[u8]) -> Result<Vec<u8>, HandshakeError> {
    if msg.len() > MAX_HANDSHAKE_MSG {
        return Err(HandshakeError::TooLarge {
            len: msg.len(),
            max: MAX_HANDSHAKE_MSG,
        });
    }
    let Some(payload_len) = msg.len().checked_sub(HANDSHAKE_OVERHEAD) else {
        return Err(HandshakeError::Malformed);
    };
    let mut payload = vec![0; payload_len];
    let len = state.read_message(msg, &mut payload).map_err(noise_error)?;
    payload.truncate(len);
    Ok(payload)
}

fn noise_error(e: snow::Error) -> HandshakeError {
    match e {
        snow::Error::Decrypt => HandshakeError::Authentication,
        snow::Error::Input | snow::Error::Dh => HandshakeError::Malformed,
        other => HandshakeError::Internal(other.to_string()),
    }
}

/// Snow's default primitives, but randomness from a caller-provided seed instead of the OS.
struct SeededResolver {
    seed: [u8; 32],
    /// Each RNG snow asks for gets its own ChaCha20 stream, so two never share output.
    next_stream: Cell<u64>,
}

impl SeededResolver {
    fn new(seed: [u8; 32]) -> Self {
        Self {
            seed,
            next_stream: Cell::new(0),
        }
    }
}

impl CryptoResolver for SeededResolver {
    fn resolve_rng(&self) -> Option<Box<dyn Random>> {
        let mut rng = ChaCha20Rng::from_seed(self.seed);
        let stream = self.next_stream.get();
        self.next_stream.set(stream.wrapping_add(1));
        rng.set_stream(stream);
        Some(Box::new(SeededRng(rng)))
    }

    fn resolve_dh(&self, choice: &DHChoice) -> Option<Box<dyn Dh>> {
        DefaultResolver.resolve_dh(choice)
    }

    fn resolve_hash(&self, choice: &HashChoice) -> Option<Box<dyn Hash>> {
        DefaultResolver.resolve_hash(choice)
    }

    fn resolve_cipher(&self, choice: &CipherChoice) -> Option<Box<dyn Cipher>> {
        DefaultResolver.resolve_cipher(choice)
    }
}

struct SeededRng(ChaCha20Rng);

impl Random for SeededRng {
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), snow::Error> {
        self.0.fill_bytes(dest);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::CryptoError;

    const SEED_I: [u8; 32] = [1; 32];
    const SEED_R: [u8; 32] = [2; 32];

    fn psk() -> Psk {
        Psk::from_bytes([0x42; 32])
    }

    /// A full handshake; returns (msg1, msg2, initiator keys, responder keys).
    fn handshake(psk_i: &Psk, psk_r: &Psk) -> (Vec<u8>, Vec<u8>, SessionKeys, SessionKeys) {
        let mut msg1 = Vec::new();
        let mut init = Initiator::start(psk_i, SEED_I, b"hello from initiator", &mut msg1).unwrap();
        let mut msg2 = Vec::new();
        let (got, resp_keys) = respond(psk_r, SEED_R, &msg1, &mut msg2, |p| {
            assert_eq!(p, b"hello from initiator");
            b"hello back".to_vec()
        })
        .unwrap();
        assert_eq!(got, b"hello from initiator");
        let (got, init_keys) = init.finish(&msg2).unwrap();
        assert_eq!(got, b"hello back");
        (msg1, msg2, init_keys, resp_keys)
    }

    fn seal_open(
        tx: &mut TxKeys,
        rx: &mut RxKeys,
        pn: u64,
        msg: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        let header = [u8::from(tx.key_phase())];
        let mut buf = msg.to_vec();
        let tag = tx.seal(pn, &header, &mut buf);
        buf.extend_from_slice(&tag);
        rx.open(pn, header[0] == 1, &header, &mut buf)
            .map(|p| p.to_vec())
    }

    #[test]
    fn round_trip_gives_matching_keys() {
        let (msg1, msg2, init_keys, resp_keys) = handshake(&psk(), &psk());
        assert_eq!(msg1.len(), HANDSHAKE_OVERHEAD + 20);
        assert_eq!(msg2.len(), HANDSHAKE_OVERHEAD + 10);
        assert_eq!(init_keys.tx_secret, resp_keys.rx_secret);
        assert_eq!(init_keys.rx_secret, resp_keys.tx_secret);
        assert_ne!(init_keys.tx_secret, init_keys.rx_secret);
        // Payloads are encrypted on the wire.
        assert!(!msg1.windows(5).any(|w| w == b"hello"));
        assert!(!msg2.windows(5).any(|w| w == b"hello"));

        let t0 = Instant::now();
        let (mut i_tx, mut i_rx) = init_keys.into_keys(t0, RekeyLimits::default());
        let (mut r_tx, mut r_rx) = resp_keys.into_keys(t0, RekeyLimits::default());
        for pn in 0..10 {
            assert_eq!(
                seal_open(&mut i_tx, &mut r_rx, pn, b"ping").unwrap(),
                b"ping"
            );
            assert_eq!(
                seal_open(&mut r_tx, &mut i_rx, pn, b"pong").unwrap(),
                b"pong"
            );
        }
        // Directions are not interchangeable.
        let (mut i_tx, _) = handshake(&psk(), &psk())
            .2
            .into_keys(t0, RekeyLimits::default());
        let (_, mut i_rx2) = handshake(&psk(), &psk())
            .2
            .into_keys(t0, RekeyLimits::default());
        assert!(seal_open(&mut i_tx, &mut i_rx2, 0, b"x").is_err());
    }

    #[test]
    fn empty_payloads() {
        let mut msg1 = Vec::new();
        let mut init = Initiator::start(&psk(), SEED_I, &[], &mut msg1).unwrap();
        assert_eq!(msg1.len(), HANDSHAKE_OVERHEAD);
        let mut msg2 = Vec::new();
        let (p, r) = respond(&psk(), SEED_R, &msg1, &mut msg2, |_| Vec::new()).unwrap();
        assert!(p.is_empty());
        let (p, i) = init.finish(&msg2).unwrap();
        assert!(p.is_empty());
        assert_eq!(i.tx_secret, r.rx_secret);
    }

    #[test]
    fn messages_are_appended() {
        let mut msg1 = b"HDR".to_vec();
        let mut init = Initiator::start(&psk(), SEED_I, b"x", &mut msg1).unwrap();
        assert_eq!(&msg1[..3], b"HDR");
        let mut msg2 = b"HEADER".to_vec();
        respond(&psk(), SEED_R, &msg1[3..], &mut msg2, |_| b"y".to_vec()).unwrap();
        assert_eq!(&msg2[..6], b"HEADER");
        assert_eq!(init.finish(&msg2[6..]).unwrap().0, b"y");
    }

    #[test]
    fn wrong_psk_fails_on_responder() {
        let mut msg1 = Vec::new();
        Initiator::start(&psk(), SEED_I, b"hi", &mut msg1).unwrap();
        let mut msg2 = Vec::new();
        let mut called = false;
        let err = respond(
            &Psk::from_bytes([0x43; 32]),
            SEED_R,
            &msg1,
            &mut msg2,
            |_| {
                called = true;
                Vec::new()
            },
        )
        .unwrap_err();
        assert_eq!(err, HandshakeError::Authentication);
        assert!(
            !called,
            "payload callback must not see unauthenticated data"
        );
        assert!(msg2.is_empty());
    }

    #[test]
    fn wrong_psk_fails_on_initiator() {
        // A responder with another PSK cannot even read message 1, but if it answered anyway
        // (here: with a message 2 from a handshake under its own PSK) the initiator rejects it.
        let other = Psk::from_bytes([0x43; 32]);
        let (_, msg2_other, _, _) = handshake(&other, &other);
        let mut msg1 = Vec::new();
        let mut init = Initiator::start(&psk(), SEED_I, b"hi", &mut msg1).unwrap();
        assert_eq!(
            init.finish(&msg2_other).unwrap_err(),
            HandshakeError::Authentication
        );
    }

    #[test]
    fn any_bit_flip_in_msg1_fails() {
        let (msg1, ..) = handshake(&psk(), &psk());
        for i in 0..msg1.len() {
            for bit in 0..8 {
                let mut bad = msg1.clone();
                bad[i] ^= 1 << bit;
                let mut out = Vec::new();
                let err = respond(&psk(), SEED_R, &bad, &mut out, |_| Vec::new()).unwrap_err();
                assert!(
                    matches!(
                        err,
                        HandshakeError::Authentication | HandshakeError::Malformed
                    ),
                    "byte {i} bit {bit}: {err:?}"
                );
            }
        }
    }

    #[test]
    fn any_bit_flip_in_msg2_fails_and_genuine_still_completes() {
        let mut msg1 = Vec::new();
        let mut init = Initiator::start(&psk(), SEED_I, b"hello", &mut msg1).unwrap();
        let mut msg2 = Vec::new();
        let (_, resp_keys) = respond(&psk(), SEED_R, &msg1, &mut msg2, |_| b"ok".to_vec()).unwrap();
        for i in 0..msg2.len() {
            for bit in 0..8 {
                let mut bad = msg2.clone();
                bad[i] ^= 1 << bit;
                let err = init.finish(&bad).unwrap_err();
                assert!(
                    matches!(
                        err,
                        HandshakeError::Authentication | HandshakeError::Malformed
                    ),
                    "byte {i} bit {bit}: {err:?}"
                );
            }
        }
        // Forged messages did not disturb the handshake state.
        let (payload, init_keys) = init.finish(&msg2).unwrap();
        assert_eq!(payload, b"ok");
        assert_eq!(init_keys.tx_secret, resp_keys.rx_secret);
        assert_eq!(
            init.finish(&msg2).unwrap_err(),
            HandshakeError::AlreadyFinished
        );
    }

    #[test]
    fn truncated_messages_fail() {
        let (msg1, msg2, ..) = handshake(&psk(), &psk());
        for len in 0..msg1.len() {
            let mut out = Vec::new();
            assert!(respond(&psk(), SEED_R, &msg1[..len], &mut out, |_| Vec::new()).is_err());
        }
        let mut m1 = Vec::new();
        let mut init = Initiator::start(&psk(), SEED_I, b"hello from initiator", &mut m1).unwrap();
        assert_eq!(m1, msg1);
        for len in 0..msg2.len() {
            assert!(init.finish(&msg2[..len]).is_err());
        }
        // Trailing garbage is not ignored either.
        let mut long = msg2.clone();
        long.push(0);
        assert!(init.finish(&long).is_err());
        init.finish(&msg2).unwrap();
    }

    #[test]
    fn deterministic_in_seeds() {
        let (a1, a2, ak, _) = handshake(&psk(), &psk());
        let (b1, b2, bk, _) = handshake(&psk(), &psk());
        assert_eq!(a1, b1);
        assert_eq!(a2, b2);
        assert_eq!(ak.tx_secret, bk.tx_secret);

        let mut c1 = Vec::new();
        Initiator::start(&psk(), [9; 32], b"hello from initiator", &mut c1).unwrap();
        assert_ne!(a1, c1);
        let mut c2 = Vec::new();
        respond(&psk(), [9; 32], &a1, &mut c2, |_| b"hello back".to_vec()).unwrap();
        assert_ne!(a2, c2);
    }

    #[test]
    fn size_limits() {
        let mut out = Vec::new();
        let huge = vec![0u8; MAX_HANDSHAKE_PAYLOAD + 1];
        assert_eq!(
            Initiator::start(&psk(), SEED_I, &huge, &mut out).unwrap_err(),
            HandshakeError::TooLarge {
                len: MAX_HANDSHAKE_PAYLOAD + 1,
                max: MAX_HANDSHAKE_PAYLOAD
            }
        );
        assert!(out.is_empty());

        // The largest payload works end to end.
        let max = vec![7u8; MAX_HANDSHAKE_PAYLOAD];
        let mut msg1 = Vec::new();
        let mut init = Initiator::start(&psk(), SEED_I, &max, &mut msg1).unwrap();
        assert_eq!(msg1.len(), MAX_HANDSHAKE_MSG);
        let mut msg2 = Vec::new();
        let err = respond(&psk(), SEED_R, &msg1, &mut msg2, |_| huge.clone()).unwrap_err();
        assert!(matches!(err, HandshakeError::TooLarge { .. }), "{err:?}");
        assert!(msg2.is_empty(), "nothing written for an oversized reply");
        let (p, _) = respond(&psk(), SEED_R, &msg1, &mut msg2, |_| max.clone()).unwrap();
        assert_eq!(p, max);
        assert_eq!(init.finish(&msg2).unwrap().0, max);

        // Absurd inputs are rejected without trying.
        let absurd = vec![0u8; MAX_HANDSHAKE_MSG + 1];
        assert!(matches!(
            respond(&psk(), SEED_R, &absurd, &mut Vec::new(), |_| Vec::new()),
            Err(HandshakeError::TooLarge { .. })
        ));
    }

    #[test]
    fn debug_masks_secrets() {
        let (_, _, keys, _) = handshake(&psk(), &psk());
        assert_eq!(format!("{keys:?}"), "SessionKeys(***)");
    }
}
