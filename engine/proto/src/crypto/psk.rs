//! The pre-shared key: parsing, generation and passphrase stretching.
//!
//! The PSK is the only long-term secret: it authenticates both ends of the Noise handshake. It is
//! configured either as 32 random bytes in standard base64 (preferred, see [`Psk::generate`]) or
//! as a passphrase stretched with Argon2id.

use std::fmt;

use argon2::{Algorithm, Argon2, Params, Version};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use rand_core::{CryptoRng, RngCore};

use crate::crypto::PskError;

/// Length of a pre-shared key in bytes.
pub const PSK_LEN: usize = 32;

/// Domain-separation salt for [`Psk::from_passphrase`].
///
/// It is a constant because both ends must derive the same key from the same passphrase without
/// exchanging anything first. A fixed salt means precomputation against *this protocol* is
/// possible, which is why random base64 keys are preferred; the memory-hard KDF only slows
/// guessing down. Changing it changes every passphrase-derived key (treat as a protocol version).
pub const PASSPHRASE_SALT: &[u8] = b"coretun-psk-v1 salt";

/// Argon2id memory cost in KiB (OWASP recommendation: 19 MiB).
pub const PASSPHRASE_M_COST: u32 = 19_456;
/// Argon2id iterations (OWASP recommendation).
pub const PASSPHRASE_T_COST: u32 = 2;
/// Argon2id parallelism (OWASP recommendation).
pub const PASSPHRASE_P_COST: u32 = 1;

/// A 32-byte pre-shared key. `Debug` never prints the key.
// No `PartialEq`: comparing secrets with `==` is not constant-time, so it is not offered.
#[derive(Clone)]
pub struct Psk([u8; PSK_LEN]);

impl Psk {
    /// Wraps raw key bytes.
    pub fn from_bytes(bytes: [u8; PSK_LEN]) -> Self {
        Self(bytes)
    }

    /// Parses a key from standard (padded) base64. Surrounding whitespace, such as the newline at
    /// the end of a key file, is ignored.
    pub fn from_base64(s: &str) -> Result<Self, PskError> {
        let decoded = BASE64.decode(s.trim())?;
        let bytes: [u8; PSK_LEN] = decoded
            .as_slice()
            .try_into()
            .map_err(|_| PskError::Length(decoded.len()))?;
        Ok(Self(bytes))
    }

    /// Derives a key from a passphrase with Argon2id (m = 19456 KiB, t = 2, p = 1) and the fixed
    /// salt [`PASSPHRASE_SALT`]. Deterministic: both ends derive the same key. Takes tens of
    /// milliseconds and ~19 MiB of memory by design, so call it once at configuration time.
    pub fn from_passphrase(passphrase: &str) -> Result<Self, PskError> {
        if passphrase.is_empty() {
            return Err(PskError::EmptyPassphrase);
        }
        let params = Params::new(
            PASSPHRASE_M_COST,
            PASSPHRASE_T_COST,
            PASSPHRASE_P_COST,
            Some(PSK_LEN),
        )
        .map_err(|e| PskError::Kdf(e.to_string()))?;
        let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
        let mut out = [0u8; PSK_LEN];
        argon
            .hash_password_into(passphrase.as_bytes(), PASSPHRASE_SALT, &mut out)
            .map_err(|e| PskError::Kdf(e.to_string()))?;
        Ok(Self(out))
    }

    /// Generates a fresh random key.
    pub fn generate(rng: &mut (impl RngCore + CryptoRng)) -> Self {
        let mut bytes = [0u8; PSK_LEN];
        rng.fill_bytes(&mut bytes);
        Self(bytes)
    }

    /// Encodes the key as standard (padded) base64, the format [`Psk::from_base64`] reads.
    pub fn to_base64(&self) -> String {
        BASE64.encode(self.0)
    }

    /// The raw key bytes.
    pub fn as_bytes(&self) -> &[u8; PSK_LEN] {
        &self.0
    }
}

impl fmt::Debug for Psk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Psk(***)")
    }
}

#[cfg(test)]
mod tests {
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    use super::*;

    #[test]
    fn debug_masks_key() {
        let psk = Psk::from_bytes([0xab; 32]);
        let s = format!("{psk:?}");
        assert_eq!(s, "Psk(***)");
        assert!(!s.contains("ab") && !s.contains("171"));
    }

    #[test]
    fn base64_round_trip() {
        let mut rng = ChaCha20Rng::from_seed([7; 32]);
        let psk = Psk::generate(&mut rng);
        let encoded = psk.to_base64();
        assert_eq!(encoded.len(), 44);
        assert_eq!(
            Psk::from_base64(&encoded).unwrap().as_bytes(),
            psk.as_bytes()
        );
        assert_eq!(
            Psk::from_base64(&format!("  {encoded}\n"))
                .unwrap()
                .as_bytes(),
            psk.as_bytes()
        );
        // Different RNG state, different key.
        assert_ne!(Psk::generate(&mut rng).as_bytes(), psk.as_bytes());
    }

    #[test]
    fn base64_known_value() {
        let psk = Psk::from_bytes([0; 32]);
        assert_eq!(
            psk.to_base64(),
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="
        );
    }

    #[test]
    fn base64_rejects_wrong_length() {
        assert_eq!(
            Psk::from_base64(&BASE64.encode([1u8; 31])).unwrap_err(),
            PskError::Length(31)
        );
        assert_eq!(
            Psk::from_base64(&BASE64.encode([1u8; 33])).unwrap_err(),
            PskError::Length(33)
        );
        assert_eq!(Psk::from_base64("").unwrap_err(), PskError::Length(0));
    }

    #[test]
    fn base64_rejects_garbage() {
        assert!(matches!(
            Psk::from_base64("not base64 at all!"),
            Err(PskError::Base64(_))
        ));
        // URL-safe alphabet is not the standard one.
        assert!(matches!(
            Psk::from_base64("____________________________________________"),
            Err(PskError::Base64(_))
        ));
        let err = Psk::from_base64("@@@@").unwrap_err().to_string();
        assert!(err.contains("base64"), "{err}");
    }

    #[test]
    fn passphrase_is_deterministic_and_distinct() {
        let a = Psk::from_passphrase("correct horse battery staple").unwrap();
        let b = Psk::from_passphrase("correct horse battery staple").unwrap();
        let c = Psk::from_passphrase("correct horse battery stapl").unwrap();
        assert_eq!(a.as_bytes(), b.as_bytes());
        assert_ne!(a.as_bytes(), c.as_bytes());
        assert_ne!(a.as_bytes(), &[0u8; 32]);
    }

    #[test]
    fn passphrase_matches_reference_argon2id() {
        // Pins the parameters and salt: a silent change would break interop with older peers.
        let params = Params::new(19_456, 2, 1, Some(32)).unwrap();
        let mut expected = [0u8; 32];
        Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
            .hash_password_into(b"hunter2", b"coretun-psk-v1 salt", &mut expected)
            .unwrap();
        assert_eq!(
            Psk::from_passphrase("hunter2").unwrap().as_bytes(),
            &expected
        );
    }

    #[test]
    fn empty_passphrase_rejected() {
        assert_eq!(
            Psk::from_passphrase("").unwrap_err(),
            PskError::EmptyPassphrase
        );
    }
}
