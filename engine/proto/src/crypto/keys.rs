//! Per-direction key schedule with QUIC-style key updates.
//!
//! Each direction starts from a 32-byte secret produced by the handshake. Generation `n + 1`'s
//! secret is `HKDF-Expand(secret_n, "coretun key update", 32)` (HKDF-SHA256), so either side can
//! compute the next key without a round trip. The AES-256-GCM packet key of a generation is
//! `HKDF-Expand(secret_n, "coretun packet key", 32)`: the secret itself is only ever used as an
//! HKDF key, never directly as a cipher key.
//!
//! Every packet header carries the key-phase bit (the generation's parity). The sender moves to
//! the next generation when the current key is worn out (packet count or age, see
//! [`RekeyLimits`]) but only once the peer has acknowledged a packet sent under the current key.
//! The receiver has therefore always installed the sender's current generation before it sees
//! the next one, so one bit is enough: a flipped bit means "the next generation" for new packet
//! numbers and "the previous generation" for packets reordered from before the update.

use std::fmt;
use std::time::{Duration, Instant};

use aws_lc_rs::hkdf::{HKDF_SHA256, Prk};

use crate::crypto::CryptoError;
use crate::crypto::aead::{KEY_LEN, PacketKey, TAG_LEN};

/// HKDF info for deriving the next generation's secret.
const KEY_UPDATE_LABEL: &[u8] = b"coretun key update";
/// HKDF info for deriving a generation's AEAD key from its secret.
const PACKET_KEY_LABEL: &[u8] = b"coretun packet key";

/// When the sender rotates its key.
///
/// These are hygiene limits (they bound how much traffic any single key protects), not safety
/// limits: AES-256-GCM with 96-bit nonces is good for far more than 2^24 packets per key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RekeyLimits {
    /// Rotate after sealing this many packets under one key.
    pub max_packets: u64,
    /// Rotate once a key has been in use this long.
    pub max_age: Duration,
}

impl Default for RekeyLimits {
    fn default() -> Self {
        Self {
            max_packets: 1 << 24,
            max_age: Duration::from_secs(10 * 60),
        }
    }
}

/// Sending keys for one direction.
///
/// Per packet, call [`maybe_update`](Self::maybe_update) first, then write
/// [`key_phase`](Self::key_phase) into the header, then [`seal`](Self::seal): the bit in the
/// header then always names the key that sealed the packet.
pub struct TxKeys {
    key: PacketKey,
    secret: [u8; KEY_LEN],
    phase: bool,
    generation: u64,
    limits: RekeyLimits,
    installed_at: Instant,
    /// Packets sealed under the current key.
    sealed: u64,
    /// Packet number of the first packet sealed under the current key.
    first_pn: Option<u64>,
}

impl TxKeys {
    /// Starts at generation 0 (key phase `false`) with `secret` from the handshake.
    pub fn new(secret: [u8; KEY_LEN], now: Instant, limits: RekeyLimits) -> Self {
        Self {
            key: packet_key(&secret),
            secret,
            phase: false,
            generation: 0,
            limits,
            installed_at: now,
            sealed: 0,
            first_pn: None,
        }
    }

    /// The key-phase bit to write into the header of the next packet.
    pub fn key_phase(&self) -> bool {
        self.phase
    }

    /// How many key updates have happened.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Encrypts `payload` in place under the current key and returns the tag.
    ///
    /// `header` must already contain [`key_phase`](Self::key_phase). Packet numbers must
    /// increase strictly across calls (never reuse one: it is the nonce).
    pub fn seal(&mut self, pn: u64, header: &[u8], payload: &mut [u8]) -> [u8; TAG_LEN] {
        self.first_pn.get_or_insert(pn);
        self.sealed += 1;
        self.key.seal_in_place(pn, header, payload)
    }

    /// Moves to the next key if the current one is worn out and the peer has acknowledged a
    /// packet sealed under it. Returns whether the key (and the key-phase bit) changed.
    ///
    /// `largest_acked_pn` is the largest packet number the peer has acknowledged. Until it
    /// covers a packet of the current phase the peer may not have installed the current key
    /// yet, and moving on would put us two phases ahead of it; the current key is then used
    /// beyond the limits, which are far below AES-GCM's real limits.
    pub fn maybe_update(&mut self, now: Instant, largest_acked_pn: Option<u64>) -> bool {
        let Some(first_pn) = self.first_pn else {
            return false;
        };
        let worn_out = self.sealed >= self.limits.max_packets
            || now.saturating_duration_since(self.installed_at) >= self.limits.max_age;
        let peer_has_current = largest_acked_pn.is_some_and(|acked| acked >= first_pn);
        if !(worn_out && peer_has_current) {
            return false;
        }
        self.secret = next_secret(&self.secret);
        self.key = packet_key(&self.secret);
        self.phase = !self.phase;
        self.generation += 1;
        self.installed_at = now;
        self.sealed = 0;
        self.first_pn = None;
        true
    }
}

impl fmt::Debug for TxKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TxKeys")
            .field("phase", &self.phase)
            .field("generation", &self.generation)
            .field("sealed", &self.sealed)
            .field("first_pn", &self.first_pn)
            .finish_non_exhaustive()
    }
}

/// Receiving keys for one direction: the previous, current and next generation.
pub struct RxKeys {
    /// Key of the previous generation, for packets reordered across the last update.
    prev: Option<PacketKey>,
    cur: PacketKey,
    next: PacketKey,
    /// Secret of the next generation, from which the one after it is derived.
    next_secret: [u8; KEY_LEN],
    phase: bool,
    generation: u64,
    /// Packet number of the packet that moved us to the current generation (0 for the first).
    /// The peer's packet numbers increase, so anything below it with the other phase bit is from
    /// the previous generation, anything above it from the next.
    phase_start_pn: u64,
}

impl RxKeys {
    /// Starts at generation 0 (key phase `false`) with `secret` from the handshake.
    pub fn new(secret: [u8; KEY_LEN]) -> Self {
        let next_secret = next_secret(&secret);
        Self {
            prev: None,
            cur: packet_key(&secret),
            next: packet_key(&next_secret),
            next_secret,
            phase: false,
            generation: 0,
            phase_start_pn: 0,
        }
    }

    /// The key-phase bit of the current generation.
    pub fn key_phase(&self) -> bool {
        self.phase
    }

    /// How many key updates have been received.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Authenticates and decrypts a packet in place, returning the plaintext.
    ///
    /// `key_phase` is the bit from the (authenticated) `header`. The key is chosen from the bit
    /// and `pn` alone, and exactly one key is tried. A packet that authenticates under the next
    /// key completes the peer's key update; a packet that fails changes no state.
    pub fn open<'a>(
        &mut self,
        pn: u64,
        key_phase: bool,
        header: &[u8],
        payload_and_tag: &'a mut [u8],
    ) -> Result<&'a mut [u8], CryptoError> {
        if key_phase == self.phase {
            return self.cur.open_in_place(pn, header, payload_and_tag);
        }
        if pn < self.phase_start_pn {
            return match &self.prev {
                Some(prev) => prev.open_in_place(pn, header, payload_and_tag),
                None => Err(CryptoError::Authentication),
            };
        }
        let plain = self.next.open_in_place(pn, header, payload_and_tag)?;
        // Authenticated under the next key: the peer has updated. Rotate.
        let after_next_secret = next_secret(&self.next_secret);
        let after_next = packet_key(&after_next_secret);
        let cur = std::mem::replace(&mut self.next, after_next);
        self.prev = Some(std::mem::replace(&mut self.cur, cur));
        self.next_secret = after_next_secret;
        self.phase = !self.phase;
        self.generation += 1;
        self.phase_start_pn = pn;
        Ok(plain)
    }
}

impl fmt::Debug for RxKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RxKeys")
            .field("phase", &self.phase)
            .field("generation", &self.generation)
            .field("phase_start_pn", &self.phase_start_pn)
            .finish_non_exhaustive()
    }
}

fn next_secret(secret: &[u8; KEY_LEN]) -> [u8; KEY_LEN] {
    expand(secret, KEY_UPDATE_LABEL)
}

fn packet_key(secret: &[u8; KEY_LEN]) -> PacketKey {
    PacketKey::new(&expand(secret, PACKET_KEY_LABEL))
}

/// HKDF-Expand(secret, label, 32) with SHA-256.
fn expand(secret: &[u8; KEY_LEN], label: &[u8]) -> [u8; KEY_LEN] {
    let mut out = [0u8; KEY_LEN];
    // HKDF_SHA256 as the output "key type" means 32 bytes, well within HKDF's 255 * 32 limit, so
    // neither step can fail.
    Prk::new_less_safe(HKDF_SHA256, secret)
        .expand(&[label], HKDF_SHA256)
        .and_then(|okm| okm.fill(&mut out))
        .expect("32-byte HKDF-SHA256 output is always valid");
    out
}

#[cfg(test)]
mod tests {
    use rand_chacha::ChaCha20Rng;
    use rand_core::{RngCore, SeedableRng};

    use super::*;

    const SECRET: [u8; 32] = [0x11; 32];

    /// A packet as the tests put it on the wire: header byte = key phase, then ciphertext + tag.
    #[derive(Clone)]
    struct Packet {
        pn: u64,
        header: [u8; 1],
        body: Vec<u8>,
    }

    fn send(tx: &mut TxKeys, pn: u64) -> Packet {
        let header = [u8::from(tx.key_phase())];
        let mut body = pn.to_le_bytes().to_vec();
        let tag = tx.seal(pn, &header, &mut body);
        body.extend_from_slice(&tag);
        Packet { pn, header, body }
    }

    fn receive(rx: &mut RxKeys, p: &Packet) -> Result<Vec<u8>, CryptoError> {
        let mut body = p.body.clone();
        rx.open(p.pn, p.header[0] & 1 == 1, &p.header, &mut body)
            .map(|plain| plain.to_vec())
    }

    #[test]
    fn hkdf_expand_matches_rfc5869_structure() {
        // HKDF-Expand for L = 32 is a single HMAC block: T(1) = HMAC(PRK, info || 0x01).
        let hmac_key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &SECRET);
        let mut msg = KEY_UPDATE_LABEL.to_vec();
        msg.push(1);
        let expected = aws_lc_rs::hmac::sign(&hmac_key, &msg);
        assert_eq!(&next_secret(&SECRET)[..], expected.as_ref());
        assert_ne!(next_secret(&SECRET), expand(&SECRET, PACKET_KEY_LABEL));
    }

    #[test]
    fn round_trip_without_updates() {
        let t0 = Instant::now();
        let mut tx = TxKeys::new(SECRET, t0, RekeyLimits::default());
        let mut rx = RxKeys::new(SECRET);
        for pn in 0..100u64 {
            assert!(!tx.maybe_update(t0, pn.checked_sub(1)));
            let p = send(&mut tx, pn);
            assert_eq!(receive(&mut rx, &p).unwrap(), pn.to_le_bytes());
        }
        assert_eq!((tx.generation(), rx.generation()), (0, 0));
    }

    #[test]
    fn different_secrets_do_not_interoperate() {
        let t0 = Instant::now();
        let mut tx = TxKeys::new(SECRET, t0, RekeyLimits::default());
        let mut rx = RxKeys::new([0x12; 32]);
        let p = send(&mut tx, 0);
        assert_eq!(receive(&mut rx, &p), Err(CryptoError::Authentication));
    }

    #[test]
    fn update_waits_for_packet_limit_and_ack() {
        let t0 = Instant::now();
        let limits = RekeyLimits {
            max_packets: 3,
            max_age: Duration::from_secs(3600),
        };
        let mut tx = TxKeys::new(SECRET, t0, limits);
        // Nothing sent yet: nothing to update.
        assert!(!tx.maybe_update(t0, None));
        for pn in 10..13 {
            send(&mut tx, pn);
        }
        // Worn out, but nothing acknowledged, or only packets from before this key.
        assert!(!tx.maybe_update(t0, None));
        assert!(!tx.maybe_update(t0, Some(9)));
        assert!(!tx.key_phase());
        assert!(tx.maybe_update(t0, Some(10)));
        assert!(tx.key_phase());
        assert_eq!(tx.generation(), 1);
        // The new key has sealed nothing yet, and the old ack does not cover it.
        assert!(!tx.maybe_update(t0, Some(12)));
        for pn in 13..15 {
            send(&mut tx, pn);
        }
        // Acked but only 2 of 3 packets sealed.
        assert!(!tx.maybe_update(t0, Some(13)));
        send(&mut tx, 15);
        assert!(tx.maybe_update(t0, Some(13)));
        assert!(!tx.key_phase());
        assert_eq!(tx.generation(), 2);
    }

    #[test]
    fn update_by_age() {
        let t0 = Instant::now();
        let limits = RekeyLimits {
            max_packets: u64::MAX,
            max_age: Duration::from_secs(60),
        };
        let mut tx = TxKeys::new(SECRET, t0, limits);
        send(&mut tx, 0);
        assert!(!tx.maybe_update(t0 + Duration::from_secs(59), Some(0)));
        assert!(!tx.maybe_update(t0 + Duration::from_secs(61), None));
        assert!(tx.maybe_update(t0 + Duration::from_secs(61), Some(0)));
        send(&mut tx, 1);
        // The age restarts with the new key.
        assert!(!tx.maybe_update(t0 + Duration::from_secs(120), Some(1)));
        assert!(tx.maybe_update(t0 + Duration::from_secs(121), Some(1)));
    }

    /// Sender and receiver over a network that reorders packets within each batch and drops
    /// some; the receiver acknowledges what it opened. Keys update as often as the rules allow.
    fn run_reordering(seed: u64, batch: usize, drop_one_in: u32) {
        let t0 = Instant::now();
        let limits = RekeyLimits {
            max_packets: 2,
            max_age: Duration::from_secs(3600),
        };
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let mut tx = TxKeys::new(SECRET, t0, limits);
        let mut rx = RxKeys::new(SECRET);
        let mut largest_acked = None;
        let mut in_flight = Vec::new();
        let mut delivered = 0u64;
        for pn in 0..5_000u64 {
            tx.maybe_update(t0, largest_acked);
            in_flight.push(send(&mut tx, pn));
            if in_flight.len() == batch {
                // Fisher-Yates shuffle: arbitrary reordering within the batch.
                for i in (1..in_flight.len()).rev() {
                    let j = (rng.next_u32() as usize) % (i + 1);
                    in_flight.swap(i, j);
                }
                for p in in_flight.drain(..) {
                    if rng.next_u32() % drop_one_in == 0 {
                        continue;
                    }
                    let plain = receive(&mut rx, &p).unwrap_or_else(|e| {
                        panic!("pn {} phase {} failed: {e}", p.pn, p.header[0])
                    });
                    assert_eq!(plain, p.pn.to_le_bytes());
                    delivered += 1;
                    largest_acked = largest_acked.max(Some(p.pn));
                }
            }
        }
        let expected = 5_000 - 5_000 / u64::from(drop_one_in);
        assert!(delivered > expected * 9 / 10, "{delivered}");
        // Updates happen about once per batch (the ack rule allows no more).
        assert!(
            tx.generation() > 5_000 / (batch as u64 * 2),
            "{}",
            tx.generation()
        );
        // The receiver may lag by the update in the last, undelivered batch.
        assert!(tx.generation() - rx.generation() <= 1);
    }

    #[test]
    fn many_updates_with_reordering() {
        for seed in 0..8 {
            run_reordering(seed, 8, u32::MAX);
            run_reordering(seed, 3, u32::MAX);
            run_reordering(seed, 32, 5);
        }
    }

    #[test]
    fn reordered_packet_from_previous_phase_opens() {
        let t0 = Instant::now();
        let limits = RekeyLimits {
            max_packets: 1,
            max_age: Duration::from_secs(3600),
        };
        let mut tx = TxKeys::new(SECRET, t0, limits);
        let mut rx = RxKeys::new(SECRET);
        let old_a = send(&mut tx, 0);
        let old_b = send(&mut tx, 1);
        assert!(tx.maybe_update(t0, Some(0)));
        let new_a = send(&mut tx, 2);
        let new_b = send(&mut tx, 3);
        // The new phase arrives first.
        receive(&mut rx, &new_b).unwrap();
        assert_eq!(rx.generation(), 1);
        assert!(rx.key_phase());
        receive(&mut rx, &new_a).unwrap();
        receive(&mut rx, &old_b).unwrap();
        receive(&mut rx, &old_a).unwrap();
        assert_eq!(rx.generation(), 1);
    }

    #[test]
    fn forged_phase_flip_neither_opens_nor_rotates() {
        let t0 = Instant::now();
        let mut tx = TxKeys::new(SECRET, t0, RekeyLimits::default());
        let mut rx = RxKeys::new(SECRET);
        let genuine = send(&mut tx, 5);

        // Same packet with the phase bit flipped, both in the header and as passed to `open`.
        let mut forged = genuine.clone();
        forged.header[0] ^= 1;
        assert_eq!(receive(&mut rx, &forged), Err(CryptoError::Authentication));
        // Phase bit passed to `open` disagreeing with the authenticated header.
        let mut body = genuine.body.clone();
        assert!(rx.open(5, true, &genuine.header, &mut body).is_err());
        // Random garbage claiming the next phase.
        let garbage = Packet {
            pn: 6,
            header: [1],
            body: vec![0xee; 40],
        };
        assert!(receive(&mut rx, &garbage).is_err());
        assert_eq!(rx.generation(), 0);
        assert!(!rx.key_phase());

        // Nothing changed: the genuine packet still opens with the current key, and a genuine
        // update is still recognised with the untouched next key.
        receive(&mut rx, &genuine).unwrap();
        let limits = RekeyLimits {
            max_packets: 1,
            max_age: Duration::from_secs(3600),
        };
        let mut tx = TxKeys::new(SECRET, t0, limits);
        send(&mut tx, 7);
        assert!(tx.maybe_update(t0, Some(7)));
        let next = send(&mut tx, 8);
        receive(&mut rx, &next).unwrap();
        assert_eq!(rx.generation(), 1);

        // After rotating, a forged old-phase packet (pn below the phase start) uses the
        // previous key, fails, and changes nothing either.
        let mut forged_old = genuine.clone();
        forged_old.body[0] ^= 1;
        assert!(receive(&mut rx, &forged_old).is_err());
        assert_eq!(rx.generation(), 1);
        receive(&mut rx, &genuine).unwrap();
    }

    #[test]
    fn two_phases_ahead_is_rejected() {
        // A sender that ignores the ack rule cannot make the receiver skip a generation.
        let t0 = Instant::now();
        let limits = RekeyLimits {
            max_packets: 1,
            max_age: Duration::from_secs(3600),
        };
        let mut tx = TxKeys::new(SECRET, t0, limits);
        let mut rx = RxKeys::new(SECRET);
        send(&mut tx, 0);
        assert!(tx.maybe_update(t0, Some(0)));
        send(&mut tx, 1);
        assert!(tx.maybe_update(t0, Some(1)));
        let p = send(&mut tx, 2);
        assert_eq!(tx.generation(), 2);
        // Phase bit equals generation 0's, so the current key is tried and fails.
        assert!(receive(&mut rx, &p).is_err());
        assert_eq!(rx.generation(), 0);
    }

    #[test]
    fn garbage_claiming_next_phase_at_generation_zero() {
        // At generation 0 there is no previous key; the other phase bit always means "next".
        let mut rx = RxKeys::new(SECRET);
        for pn in [0, 1, u64::MAX] {
            for len in [0, 15, 16, 32] {
                let mut body = vec![0u8; len];
                assert_eq!(
                    rx.open(pn, true, &[1], &mut body),
                    Err(CryptoError::Authentication)
                );
            }
        }
        assert_eq!(rx.generation(), 0);
    }

    #[test]
    fn debug_masks_keys() {
        let t0 = Instant::now();
        let tx = TxKeys::new(SECRET, t0, RekeyLimits::default());
        let rx = RxKeys::new(SECRET);
        let s = format!("{tx:?} {rx:?}");
        assert!(!s.contains("17"), "{s}");
        assert!(s.contains("generation"));
    }
}
