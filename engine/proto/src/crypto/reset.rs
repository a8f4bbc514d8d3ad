//! Stateless reset tokens: proof that a reset comes from a holder of the pre-shared key.
//!
//! An endpoint that restarted has lost every session, but it still holds the PSK. When a data
//! packet arrives for a session id it does not know, it answers with the id and
//! `token = HMAC-SHA256(reset_key, "coretun reset token" || id)[..16]`, where
//! `reset_key = HKDF-SHA256(salt = "coretun stateless reset v1", ikm = psk,
//! info = "coretun reset key", 32)`. The peer recomputes the token for its session's remote id
//! and compares in constant time. The key is used for nothing else, so a token reveals nothing
//! about the PSK or any session key.
//!
//! The token depends on the session id alone (the restarted side knows nothing else about the
//! session). An on-path observer who saw a reset could replay it against a later session that
//! happens to get the same id from the same peer (a 2^-24 chance per session); an on-path
//! attacker can simply drop packets, so this gives it nothing new.

use std::fmt;

use aws_lc_rs::hkdf::{HKDF_SHA256, Salt};
use aws_lc_rs::{constant_time, hmac};

use crate::crypto::Psk;
use crate::wire::{RESET_TOKEN_LEN, SessionId};

/// HKDF salt: separates the reset key from anything else derived from the PSK.
const RESET_SALT: &[u8] = b"coretun stateless reset v1";
/// HKDF info for the reset key.
const RESET_KEY_LABEL: &[u8] = b"coretun reset key";
/// Prefix of the MAC input.
const TOKEN_LABEL: &[u8] = b"coretun reset token";

/// The key that makes and checks stateless reset tokens. `Debug` masks it.
#[derive(Clone)]
pub struct ResetKey(hmac::Key);

impl ResetKey {
    pub fn new(psk: &Psk) -> Self {
        let mut key = [0u8; 32];
        // 32 bytes of HKDF-SHA256 output is always within HKDF's limit, so this cannot fail.
        Salt::new(HKDF_SHA256, RESET_SALT)
            .extract(psk.as_bytes())
            .expand(&[RESET_KEY_LABEL], HKDF_SHA256)
            .and_then(|okm| okm.fill(&mut key))
            .expect("32-byte HKDF-SHA256 output is always valid");
        Self(hmac::Key::new(hmac::HMAC_SHA256, &key))
    }

    /// The token for a reset of `id`.
    pub fn token(&self, id: SessionId) -> [u8; RESET_TOKEN_LEN] {
        let mut ctx = hmac::Context::with_key(&self.0);
        ctx.update(TOKEN_LABEL);
        ctx.update(&id.0.to_be_bytes());
        let tag = ctx.sign();
        let mut token = [0u8; RESET_TOKEN_LEN];
        token.copy_from_slice(&tag.as_ref()[..RESET_TOKEN_LEN]);
        token
    }

    /// Whether `token` is the token for `id`, compared in constant time.
    pub fn verify(&self, id: SessionId, token: &[u8; RESET_TOKEN_LEN]) -> bool {
        constant_time::verify_slices_are_equal(&self.token(id), token).is_ok()
    }
}

impl fmt::Debug for ResetKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ResetKey(***)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_depend_on_key_and_id_and_verify() {
        let a = ResetKey::new(&Psk::from_bytes([1; 32]));
        let b = ResetKey::new(&Psk::from_bytes([2; 32]));
        let id = SessionId::new(3, 99);
        let t = a.token(id);
        assert!(a.verify(id, &t));
        assert_eq!(t, ResetKey::new(&Psk::from_bytes([1; 32])).token(id));
        assert!(!b.verify(id, &t), "another key");
        assert!(!a.verify(SessionId::new(3, 100), &t), "another id");
        let mut flipped = t;
        flipped[15] ^= 1;
        assert!(!a.verify(id, &flipped));
        assert_eq!(format!("{a:?}"), "ResetKey(***)");
    }

    #[test]
    fn token_matches_the_documented_construction() {
        let psk = [9u8; 32];
        let prk = Salt::new(HKDF_SHA256, b"coretun stateless reset v1").extract(&psk);
        let mut key = [0u8; 32];
        prk.expand(&[b"coretun reset key"], HKDF_SHA256)
            .unwrap()
            .fill(&mut key)
            .unwrap();
        let id = SessionId(0x0a0b_0c0d);
        let mut msg = b"coretun reset token".to_vec();
        msg.extend_from_slice(&[0x0a, 0x0b, 0x0c, 0x0d]);
        let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, &key), &msg);
        assert_eq!(
            ResetKey::new(&Psk::from_bytes(psk)).token(id),
            tag.as_ref()[..16]
        );
        // Not the PSK itself used as the MAC key.
        let naive = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, &psk), &msg);
        assert_ne!(naive.as_ref()[..16], tag.as_ref()[..16]);
    }
}
