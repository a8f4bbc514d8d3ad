//! The relay: services reachable through a public node without opening ports on it.
//!
//! * [`token`] derives, from a service's key, the lookup token the relay files the service under
//!   and the end-to-end PSK it never sees.
//! * [`msg`] holds the control messages and describes the whole flow: who opens which stream,
//!   how the relay pairs a visitor's stream with the service node's, and how registrations
//!   survive a relay restart.
//! * [`channel`] protects the spliced stream end to end, so the relay forwards bytes it can
//!   neither read nor alter.
//!
//! All of it is sans-IO, like the rest of this crate.

pub mod channel;
pub mod msg;
pub mod token;

pub use self::channel::{Channel, ChannelError};
pub use self::msg::{Message, MsgError, RefuseReason, ServiceName, VisitId};
pub use self::token::{LookupToken, ServiceKey};
