//! Service keys and what is derived from them: the lookup token the relay sees and the
//! end-to-end pre-shared key it never sees.
//!
//! A service key is a 32-byte secret shared by a service node and the visitors allowed to reach
//! that service. Two independent values are derived from it with HKDF-SHA256 (the hash the rest
//! of [`crate::crypto`] uses):
//!
//! ```text
//! prk       = HKDF-Extract(salt = "coretun relay service key v1", ikm = service key)
//! lookup    = HKDF-Expand(prk, "coretun relay lookup v1", 32)
//! e2e psk   = HKDF-Expand(prk, "coretun relay e2e psk v1", 32)
//! ```
//!
//! The service node registers the lookup token with the relay and a visitor presents it, so the
//! relay can pair them. HKDF is one-way: the token tells the relay nothing about the service key
//! or the end-to-end PSK, so the relay (or anyone who learns the token from it) can route visits
//! but cannot read or forge the spliced stream, which is protected with the end-to-end PSK
//! (see [`super::channel`]).
//!
//! Parsing a service key from configuration (base64, passphrase) belongs to the config layer;
//! it hands the raw bytes to [`ServiceKey::from_bytes`].

use std::fmt;

use aws_lc_rs::constant_time;
use aws_lc_rs::hkdf::{HKDF_SHA256, Salt};

use crate::crypto::Psk;

/// Length of a service key.
pub const SERVICE_KEY_LEN: usize = 32;
/// Length of a lookup token.
pub const TOKEN_LEN: usize = 32;

/// HKDF salt: separates everything derived here from other uses of the same bytes.
const SALT: &[u8] = b"coretun relay service key v1";
/// HKDF info for the lookup token.
const LOOKUP_LABEL: &[u8] = b"coretun relay lookup v1";
/// HKDF info for the end-to-end pre-shared key.
const E2E_PSK_LABEL: &[u8] = b"coretun relay e2e psk v1";

/// A service's secret key. `Debug` masks it.
#[derive(Clone)]
pub struct ServiceKey([u8; SERVICE_KEY_LEN]);

impl ServiceKey {
    /// Wraps 32 bytes of key material.
    pub fn from_bytes(bytes: [u8; SERVICE_KEY_LEN]) -> Self {
        Self(bytes)
    }

    /// The token the service node registers under and visitors present to the relay.
    pub fn lookup_token(&self) -> LookupToken {
        LookupToken(self.derive(LOOKUP_LABEL))
    }

    /// The pre-shared key of the end-to-end [`Channel`](super::channel::Channel) between a
    /// visitor and the service node.
    pub fn e2e_psk(&self) -> Psk {
        Psk::from_bytes(self.derive(E2E_PSK_LABEL))
    }

    fn derive(&self, label: &[u8]) -> [u8; 32] {
        let mut out = [0u8; 32];
        // 32 bytes of HKDF-SHA256 output is always within HKDF's limit, so this cannot fail.
        Salt::new(HKDF_SHA256, SALT)
            .extract(&self.0)
            .expand(&[label], HKDF_SHA256)
            .and_then(|okm| okm.fill(&mut out))
            .expect("32-byte HKDF-SHA256 output is always valid");
        out
    }
}

impl fmt::Debug for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ServiceKey(***)")
    }
}

/// The token a relay files a service under.
///
/// Not secret from the relay, but whoever holds it can knock on the service's door (the
/// end-to-end handshake still keeps them out), so `Debug` prints only a short prefix for logs.
/// `PartialEq` compares in constant time; [`Hash`] lets the relay index registrations by token
/// (a keyed, randomised hasher such as std's keeps lookups from leaking timing that matters).
#[derive(Clone, Copy, Eq)]
pub struct LookupToken([u8; TOKEN_LEN]);

impl LookupToken {
    /// Wraps a token received from the wire.
    pub fn from_bytes(bytes: [u8; TOKEN_LEN]) -> Self {
        Self(bytes)
    }

    /// The raw token bytes.
    pub fn as_bytes(&self) -> &[u8; TOKEN_LEN] {
        &self.0
    }

    /// Whether two tokens are equal, in time independent of where they differ.
    pub fn ct_eq(&self, other: &LookupToken) -> bool {
        ct_eq(&self.0, &other.0)
    }
}

impl PartialEq for LookupToken {
    fn eq(&self, other: &Self) -> bool {
        self.ct_eq(other)
    }
}

impl std::hash::Hash for LookupToken {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.hash(state);
    }
}

impl fmt::Debug for LookupToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "LookupToken({:02x}{:02x}{:02x}{:02x}..)",
            self.0[0], self.0[1], self.0[2], self.0[3]
        )
    }
}

/// Constant-time equality of two byte strings (different lengths compare unequal).
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    constant_time::verify_slices_are_equal(a, b).is_ok()
}

#[cfg(test)]
mod tests {
    use aws_lc_rs::hkdf::Prk;
    use proptest::prelude::*;

    use super::*;

    /// HKDF written out step by step, to pin the construction the module doc describes.
    fn reference_derive(key: &[u8; 32], label: &[u8]) -> [u8; 32] {
        let prk: Prk = Salt::new(HKDF_SHA256, b"coretun relay service key v1").extract(key);
        let mut out = [0u8; 32];
        prk.expand(&[label], HKDF_SHA256)
            .unwrap()
            .fill(&mut out)
            .unwrap();
        out
    }

    #[test]
    fn deterministic() {
        let a = ServiceKey::from_bytes([7; 32]);
        let b = ServiceKey::from_bytes([7; 32]);
        assert_eq!(a.lookup_token(), b.lookup_token());
        assert_eq!(a.e2e_psk().as_bytes(), b.e2e_psk().as_bytes());
    }

    #[test]
    fn matches_the_documented_construction() {
        let key = [0x5a; 32];
        let sk = ServiceKey::from_bytes(key);
        assert_eq!(
            sk.lookup_token().as_bytes(),
            &reference_derive(&key, b"coretun relay lookup v1")
        );
        assert_eq!(
            sk.e2e_psk().as_bytes(),
            &reference_derive(&key, b"coretun relay e2e psk v1")
        );
    }

    #[test]
    fn outputs_are_separated_from_each_other_and_the_key() {
        let key = [0x33; 32];
        let sk = ServiceKey::from_bytes(key);
        let token = *sk.lookup_token().as_bytes();
        let psk = *sk.e2e_psk().as_bytes();
        assert_ne!(token, psk);
        assert_ne!(token, key);
        assert_ne!(psk, key);
    }

    #[test]
    fn debug_masks_secrets() {
        let sk = ServiceKey::from_bytes([0xab; 32]);
        assert_eq!(format!("{sk:?}"), "ServiceKey(***)");
        let t = LookupToken::from_bytes([0xcd; 32]);
        assert_eq!(format!("{t:?}"), "LookupToken(cdcdcdcd..)");
    }

    #[test]
    fn ct_eq_compares_contents_and_length() {
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"ab"));
        assert!(ct_eq(b"", b""));
        let t = LookupToken::from_bytes([1; 32]);
        let mut other = [1; 32];
        other[31] = 2;
        assert!(t.ct_eq(&t));
        assert!(!t.ct_eq(&LookupToken::from_bytes(other)));
        assert_ne!(t, LookupToken::from_bytes(other));
    }

    proptest! {
        #[test]
        fn different_keys_give_different_tokens_and_psks(
            a in any::<[u8; 32]>(),
            b in any::<[u8; 32]>(),
        ) {
            prop_assume!(a != b);
            let (a, b) = (ServiceKey::from_bytes(a), ServiceKey::from_bytes(b));
            prop_assert_ne!(a.lookup_token(), b.lookup_token());
            let (pa, pb) = (*a.e2e_psk().as_bytes(), *b.e2e_psk().as_bytes());
            prop_assert_ne!(pa, pb);
            prop_assert_ne!(*a.lookup_token().as_bytes(), pa);
        }
    }
}
