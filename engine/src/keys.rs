//! Pre-shared keys: generation for `engine genkey`.
//!
//! The protocol core is sans-IO and never reads OS randomness itself, so the binary provides it.

use anyhow::anyhow;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;

/// Length of a pre-shared key: 256 bits, the Noise PSK size.
pub(crate) const KEY_LEN: usize = 32;

/// A new key from the operating system's CSPRNG, as standard padded base64 (44 characters).
pub(crate) fn generate() -> anyhow::Result<String> {
    let mut key = [0u8; KEY_LEN];
    SystemRandom::new()
        .fill(&mut key)
        .map_err(|_| anyhow!("the operating system's random number generator failed"))?;
    Ok(BASE64.encode(key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_32_random_bytes() {
        let a = generate().unwrap();
        let b = generate().unwrap();
        assert_eq!(a.len(), 44);
        assert_eq!(BASE64.decode(&a).unwrap().len(), KEY_LEN);
        assert_ne!(a, b);
    }
}
