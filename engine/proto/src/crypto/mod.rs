//! Cryptography: the pre-shared key, the Noise handshake, per-packet AEAD, the replay window and
//! the key-update schedule.
//!
//! The pieces fit together as follows:
//!
//! * [`Psk`] is the shared secret both ends are configured with (base64 or an Argon2id-stretched
//!   passphrase).
//! * [`handshake`] runs `Noise_NNpsk0_25519_AESGCM_SHA256`: the PSK authenticates both sides, fresh
//!   ephemerals give forward secrecy. It yields [`SessionKeys`], one secret per direction.
//! * [`TxKeys`] / [`RxKeys`] turn those secrets into AES-256-GCM [`PacketKey`]s and rotate them
//!   (QUIC-style key updates signalled by a key-phase bit) without a round trip.
//! * [`ResetKey`] makes and checks stateless reset tokens (a MAC under a key derived from the
//!   PSK), so only PSK holders can tell a peer that its session is gone.
//! * [`ReplayWindow`] rejects duplicated and too-old packet numbers. The session calls
//!   [`ReplayWindow::check`] before decrypting and [`ReplayWindow::accept`] only after the AEAD
//!   has authenticated the packet, so forged packets cannot move any state.
//!
//! Nothing here reads a clock or a global RNG: time is passed in and randomness comes from seeds.

pub mod aead;
pub mod handshake;
pub mod keys;
pub mod psk;
pub mod replay;
pub mod reset;

pub use self::aead::{PacketKey, TAG_LEN};
pub use self::handshake::{
    HANDSHAKE_OVERHEAD, Initiator, MAX_HANDSHAKE_MSG, MAX_HANDSHAKE_PAYLOAD, SessionKeys, respond,
};
pub use self::keys::{RekeyLimits, RxKeys, TxKeys};
pub use self::psk::Psk;
pub use self::replay::{REPLAY_WINDOW, ReplayWindow};
pub use self::reset::ResetKey;

/// Errors from per-packet cryptography.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CryptoError {
    /// The packet did not authenticate under the selected key: forged, corrupted, truncated below
    /// the tag length, or sealed under a key we no longer (or do not yet) hold.
    #[error("packet authentication failed")]
    Authentication,
}

/// Errors from the Noise handshake.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HandshakeError {
    /// The message did not authenticate: the peer uses a different pre-shared key, or the message
    /// was tampered with.
    #[error("handshake authentication failed (wrong pre-shared key or tampered message)")]
    Authentication,
    /// The message is too short or otherwise not shaped like a handshake message.
    #[error("malformed handshake message")]
    Malformed,
    /// A message would exceed the Noise limit of [`MAX_HANDSHAKE_MSG`] bytes.
    #[error("handshake message too large ({len} bytes, max {max})")]
    TooLarge {
        /// Size of the offending message (or payload).
        len: usize,
        /// The limit that was exceeded.
        max: usize,
    },
    /// [`Initiator::finish`] was called again after it had succeeded.
    #[error("handshake already finished")]
    AlreadyFinished,
    /// An unexpected failure inside the Noise implementation (a bug, not a peer's doing).
    #[error("internal handshake error: {0}")]
    Internal(String),
}

/// Errors when loading or deriving a [`Psk`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PskError {
    /// The string is not valid standard base64.
    #[error("pre-shared key is not valid base64: {0}")]
    Base64(#[from] base64::DecodeError),
    /// The key decoded to the wrong number of bytes.
    #[error("pre-shared key must decode to exactly 32 bytes, got {0}")]
    Length(usize),
    /// Empty passphrases are rejected: they would give every such deployment the same key.
    #[error("passphrase must not be empty")]
    EmptyPassphrase,
    /// Argon2id failed (e.g. could not allocate its memory).
    #[error("passphrase stretching failed: {0}")]
    Kdf(String),
}
