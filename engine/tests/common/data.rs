//! Test payloads: seeded pseudo-random byte streams and their SHA-256 fingerprints.
//!
//! Payloads are generated in chunks and never held whole, so a 64 MiB transfer costs 64 KiB of
//! memory; the same seed always gives the same bytes, so the receiving side can check a transfer
//! by fingerprint alone.

use std::fmt;

use aws_lc_rs::digest;
use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::{RngCore, SeedableRng};

/// Size of the buffers payloads are generated, written and read in.
pub const CHUNK: usize = 64 * 1024;

/// Length and SHA-256 of a byte stream: what both ends of a transfer compare.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint {
    pub len: u64,
    pub sha256: [u8; 32],
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} bytes, sha256 ", self.len)?;
        for byte in self.sha256 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

/// Fingerprints a stream of bytes as it passes.
pub struct Hasher {
    context: digest::Context,
    len: u64,
}

impl Hasher {
    pub fn new() -> Self {
        Self {
            context: digest::Context::new(&digest::SHA256),
            len: 0,
        }
    }

    pub fn update(&mut self, bytes: &[u8]) {
        self.context.update(bytes);
        self.len += bytes.len() as u64;
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn finish(self) -> Fingerprint {
        let mut sha256 = [0; 32];
        sha256.copy_from_slice(self.context.finish().as_ref());
        Fingerprint {
            len: self.len,
            sha256,
        }
    }
}

/// `len` pseudo-random bytes determined by `seed`, produced chunk by chunk.
pub struct Seeded {
    rng: ChaCha8Rng,
    remaining: u64,
}

impl Seeded {
    pub fn new(seed: u64, len: u64) -> Self {
        Self {
            rng: ChaCha8Rng::seed_from_u64(seed),
            remaining: len,
        }
    }

    /// Fills the front of `buf` with the next bytes and returns how many; 0 at the end.
    pub fn fill(&mut self, buf: &mut [u8]) -> usize {
        let n = buf
            .len()
            .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        self.rng.fill_bytes(&mut buf[..n]);
        self.remaining -= n as u64;
        n
    }
}

/// The whole seeded payload in memory (for small payloads).
pub fn seeded_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut bytes = vec![0; len];
    let filled = Seeded::new(seed, len as u64).fill(&mut bytes);
    assert_eq!(filled, len);
    bytes
}

/// The fingerprint of the seeded payload, without sending it anywhere.
pub fn seeded_fingerprint(seed: u64, len: u64) -> Fingerprint {
    let mut source = Seeded::new(seed, len);
    let mut hasher = Hasher::new();
    let mut buf = vec![0; CHUNK];
    loop {
        let n = source.fill(&mut buf);
        if n == 0 {
            return hasher.finish();
        }
        hasher.update(&buf[..n]);
    }
}

pub fn fingerprint(bytes: &[u8]) -> Fingerprint {
    let mut hasher = Hasher::new();
    hasher.update(bytes);
    hasher.finish()
}
