//! Per-packet authenticated encryption: AES-256-GCM with the packet number as nonce.
//!
//! The nonce is 4 zero bytes followed by the 64-bit big-endian packet number. Keys are per
//! direction and per key phase, and packet numbers are never reused within a direction, so a
//! (key, nonce) pair never repeats. The cleartext packet header is the associated data.
//!
//! Both operations work in place and allocate nothing: they are the hot path (millions of packets
//! per second per core).
//!
//! Fuzzing builds (`--cfg fuzzing` together with the `fuzzing-null-cipher` feature) replace
//! AES-GCM with a null cipher that leaves the payload as is and uses a cheap keyed checksum as the
//! tag, so a fuzzer can reach the frame parser. Normal builds never contain it.

// `cfg(fuzzing)` is set by cargo-fuzz and unknown to rustc's cfg checker. The workspace lints
// (root Cargo.toml) are the right place to declare it (`check-cfg = ['cfg(fuzzing)']`); until
// then, allow it here only.

use std::fmt;

#[cfg(not(all(fuzzing, feature = "fuzzing-null-cipher")))]
use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};

use crate::crypto::CryptoError;

/// Length of the authentication tag appended to every packet.
pub const TAG_LEN: usize = 16;

/// Length of a packet key in bytes.
pub const KEY_LEN: usize = 32;

/// Length of the AEAD nonce.
const NONCE_LEN: usize = 12;

/// One direction's AES-256-GCM key for one key phase. `Debug` never prints key material.
pub struct PacketKey {
    #[cfg(not(all(fuzzing, feature = "fuzzing-null-cipher")))]
    key: LessSafeKey,
    #[cfg(all(fuzzing, feature = "fuzzing-null-cipher"))]
    key: [u8; KEY_LEN],
}

impl PacketKey {
    /// Creates a key from 32 bytes of secret key material.
    #[cfg(not(all(fuzzing, feature = "fuzzing-null-cipher")))]
    pub fn new(key: &[u8; KEY_LEN]) -> Self {
        // The only failure mode of `UnboundKey::new` is a key of the wrong length, which the type
        // rules out.
        let unbound = UnboundKey::new(&AES_256_GCM, key).expect("AES-256-GCM takes 32-byte keys");
        Self {
            key: LessSafeKey::new(unbound),
        }
    }

    /// Encrypts `payload` in place and returns the tag, which the caller appends to the packet.
    ///
    /// `header` is authenticated but not encrypted. `pn` must never be reused with this key.
    ///
    /// # Panics
    ///
    /// Only if `payload` exceeds the AES-GCM limit of about 64 GiB; packets are bounded by the
    /// MTU, far below that.
    #[cfg(not(all(fuzzing, feature = "fuzzing-null-cipher")))]
    pub fn seal_in_place(&self, pn: u64, header: &[u8], payload: &mut [u8]) -> [u8; TAG_LEN] {
        let tag = self
            .key
            .seal_in_place_separate_tag(nonce(pn), Aad::from(header), payload)
            .expect("payload within the AES-GCM length limit");
        let mut out = [0u8; TAG_LEN];
        // AES_256_GCM tags are always TAG_LEN bytes.
        out.copy_from_slice(tag.as_ref());
        out
    }

    /// Authenticates and decrypts `payload_and_tag` (ciphertext followed by the [`TAG_LEN`]-byte
    /// tag) in place, returning the plaintext part of the buffer.
    ///
    /// On failure the buffer contents are unspecified (the caller drops the packet).
    #[cfg(not(all(fuzzing, feature = "fuzzing-null-cipher")))]
    pub fn open_in_place<'a>(
        &self,
        pn: u64,
        header: &[u8],
        payload_and_tag: &'a mut [u8],
    ) -> Result<&'a mut [u8], CryptoError> {
        self.key
            .open_in_place(nonce(pn), Aad::from(header), payload_and_tag)
            .map_err(|_| CryptoError::Authentication)
    }
}

/// The nonce for packet `pn`: 4 zero bytes, then `pn` big-endian.
#[cfg(not(all(fuzzing, feature = "fuzzing-null-cipher")))]
fn nonce(pn: u64) -> Nonce {
    Nonce::assume_unique_for_key(nonce_bytes(pn))
}

fn nonce_bytes(pn: u64) -> [u8; NONCE_LEN] {
    let mut n = [0u8; NONCE_LEN];
    n[NONCE_LEN - 8..].copy_from_slice(&pn.to_be_bytes());
    n
}

/// The fuzzing-only null cipher. Not cryptography: the tag is a keyed XOR-fold that a fuzzer's
/// harness can compute, while a mutated packet still fails to authenticate most of the time.
#[cfg(all(fuzzing, feature = "fuzzing-null-cipher"))]
impl PacketKey {
    /// Creates a null-cipher key (fuzzing builds only).
    pub fn new(key: &[u8; KEY_LEN]) -> Self {
        Self { key: *key }
    }

    /// Leaves `payload` unchanged and returns the checksum tag (fuzzing builds only).
    pub fn seal_in_place(&self, pn: u64, header: &[u8], payload: &mut [u8]) -> [u8; TAG_LEN] {
        self.checksum(pn, header, payload)
    }

    /// Checks the checksum tag and returns the payload unchanged (fuzzing builds only).
    pub fn open_in_place<'a>(
        &self,
        pn: u64,
        header: &[u8],
        payload_and_tag: &'a mut [u8],
    ) -> Result<&'a mut [u8], CryptoError> {
        let split = payload_and_tag
            .len()
            .checked_sub(TAG_LEN)
            .ok_or(CryptoError::Authentication)?;
        let (payload, tag) = payload_and_tag.split_at_mut(split);
        if self.checksum(pn, header, payload)[..] != tag[..] {
            return Err(CryptoError::Authentication);
        }
        Ok(payload)
    }

    fn checksum(&self, pn: u64, header: &[u8], payload: &[u8]) -> [u8; TAG_LEN] {
        // Lengths are folded in so moving bytes between header and payload changes the tag.
        let lens = ((header.len() as u64) << 32) ^ payload.len() as u64;
        let input = self
            .key
            .iter()
            .copied()
            .chain(nonce_bytes(pn))
            .chain(lens.to_be_bytes())
            .chain(header.iter().copied())
            .chain(payload.iter().copied());
        let mut acc = [0u8; TAG_LEN];
        for (i, b) in input.enumerate() {
            let slot = i % TAG_LEN;
            acc[slot] = acc[slot].rotate_left(3) ^ b;
        }
        acc
    }
}

impl fmt::Debug for PacketKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PacketKey(***)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &[u8] = b"\x40header";

    fn sealed(key: &PacketKey, pn: u64, plain: &[u8]) -> Vec<u8> {
        let mut buf = plain.to_vec();
        let tag = key.seal_in_place(pn, HEADER, &mut buf);
        buf.extend_from_slice(&tag);
        buf
    }

    #[test]
    fn nonce_layout() {
        assert_eq!(
            nonce_bytes(0x0102_0304_0506_0708),
            [0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8]
        );
    }

    #[test]
    fn round_trip() {
        let key = PacketKey::new(&[3; 32]);
        let plain = vec![0x5a; 1350];
        let mut buf = sealed(&key, 42, &plain);
        assert_eq!(buf.len(), plain.len() + TAG_LEN);
        #[cfg(not(all(fuzzing, feature = "fuzzing-null-cipher")))]
        assert_ne!(&buf[..plain.len()], &plain[..], "payload must be encrypted");
        let out = key.open_in_place(42, HEADER, &mut buf).unwrap();
        assert_eq!(out, &plain[..]);
    }

    #[test]
    fn empty_payload() {
        let key = PacketKey::new(&[3; 32]);
        let mut buf = sealed(&key, 0, &[]);
        assert_eq!(buf.len(), TAG_LEN);
        assert_eq!(
            key.open_in_place(0, HEADER, &mut buf).unwrap(),
            &[] as &[u8]
        );
    }

    #[test]
    #[cfg(not(all(fuzzing, feature = "fuzzing-null-cipher")))]
    fn known_answer() {
        // AES-256-GCM, key = 0^32, nonce = 0^12, no AAD, empty plaintext (NIST GCM test case 13).
        let key = PacketKey::new(&[0; 32]);
        let tag = key.seal_in_place(0, &[], &mut []);
        assert_eq!(
            tag,
            [
                0x53, 0x0f, 0x8a, 0xfb, 0xc7, 0x45, 0x36, 0xb9, 0xa9, 0x63, 0xb4, 0xf1, 0xc4, 0xcb,
                0x73, 0x8b
            ]
        );
    }

    #[test]
    fn rejects_any_modification() {
        let key = PacketKey::new(&[9; 32]);
        let good = sealed(&key, 7, b"hello, tunnel");
        for i in 0..good.len() {
            for bit in 0..8 {
                let mut bad = good.clone();
                bad[i] ^= 1 << bit;
                assert_eq!(
                    key.open_in_place(7, HEADER, &mut bad),
                    Err(CryptoError::Authentication)
                );
            }
        }
        // Wrong packet number, wrong header, wrong key, truncated.
        assert!(key.open_in_place(8, HEADER, &mut good.clone()).is_err());
        assert!(
            key.open_in_place(7, b"\x41header", &mut good.clone())
                .is_err()
        );
        assert!(
            PacketKey::new(&[8; 32])
                .open_in_place(7, HEADER, &mut good.clone())
                .is_err()
        );
        for len in 0..good.len() {
            assert!(
                key.open_in_place(7, HEADER, &mut good[..len].to_vec())
                    .is_err()
            );
        }
    }

    #[test]
    fn debug_masks_key() {
        assert_eq!(format!("{:?}", PacketKey::new(&[1; 32])), "PacketKey(***)");
    }
}
