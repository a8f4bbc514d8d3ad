//! Traffic that reached the wrong shard: deciding which shard owns a datagram, handing
//! datagrams and accepted connections to their owner, and the directory of which shards hold a
//! session with which peer.
//!
//! Packets normally land on their owner already (the reuseport steering program reads the shard
//! from the session id; a node that only dials gives every shard its own UDP port). What still
//! arrives elsewhere (no steering program, a shard not yet bound, a session of another shard
//! count) crosses over to the owner's bounded handover queue: a copy and an eventfd write per
//! packet, never on the normal path. Rare for a node that only dials (each shard has its own
//! port) and for steered packets; not rare when a node with `listen` also dials peers that listen
//! too: the replies to all its shards' sessions then come from one address to one port, UDP GRO
//! may coalesce replies for several sessions into one receive, and the steering program sees
//! only the first (`packets_handed_over` shows it).

use std::sync::RwLock;
use std::sync::atomic::{AtomicBool, Ordering};

use engine_proto::wire::{Header, PacketType, StatelessReset};

/// Where a received datagram is processed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Route {
    /// By the shard that received it.
    Local,
    /// By shard `n`, which owns the session it is addressed to.
    Owner(usize),
    /// By every shard: a stateless reset names the *peer's* session id, so it says nothing
    /// about which of our shards owns the session it ends; each shard checks its own.
    Everyone,
}

/// Which shard processes `datagram`, received by shard `me` of `shards`. `shared_socket`: the
/// shards share one reuseport UDP socket (a node with `listen`); otherwise each shard has its
/// own port and only its own sessions' packets reach it.
pub(crate) fn route(datagram: &[u8], me: usize, shards: usize, shared_socket: bool) -> Route {
    if shards < 2 {
        return Route::Local;
    }
    let Some(&first) = datagram.first() else {
        return Route::Local;
    };
    let ty = first & 0x0f;
    if ty == PacketType::StatelessReset as u8 {
        // Only a datagram of exactly a reset's size is copied to every shard: anything else
        // with this type is garbage for the local endpoint to count.
        return if shared_socket && datagram.len() == StatelessReset::LEN {
            Route::Everyone
        } else {
            Route::Local
        };
    }
    // Handshake inits may be accepted by any shard; anything malformed is the local
    // endpoint's to count. Parity belongs to the session's FEC groups, so it goes where the
    // session's data goes.
    let steered = [
        PacketType::Data,
        PacketType::Parity,
        PacketType::HandshakeResponse,
    ];
    if !steered.iter().any(|&steered| ty == steered as u8) {
        return Route::Local;
    }
    match datagram.get(Header::SESSION_ID_OFFSET) {
        Some(&owner) if usize::from(owner) != me && usize::from(owner) < shards => {
            Route::Owner(usize::from(owner))
        }
        // Our own, or owned by a shard that does not exist (a session from before a restart
        // with more shards): the local endpoint answers it (with a stateless reset).
        _ => Route::Local,
    }
}

/// Which shards hold an established session with which peer. Written by a shard when its
/// sessions with a peer come and go, read when a connection accepted on a map finds no session
/// with the map's peer on its own shard (a peer that dials us may have fewer shards than we do).
/// Peers are numbered by their stable slot (see `reload`); a reload that adds peers grows it.
#[derive(Debug)]
pub(crate) struct PeerDirectory {
    shards: usize,
    up: RwLock<Vec<AtomicBool>>,
}

impl PeerDirectory {
    pub(crate) fn new(peers: usize, shards: usize) -> Self {
        Self {
            shards,
            up: RwLock::new(
                (0..peers * shards)
                    .map(|_| AtomicBool::new(false))
                    .collect(),
            ),
        }
    }

    /// Makes room for `peers` peers (a reload added some); existing entries stay.
    pub(crate) fn grow(&self, peers: usize) {
        let mut up = self.up.write().unwrap_or_else(|e| e.into_inner());
        let len = peers * self.shards;
        if up.len() < len {
            up.resize_with(len, || AtomicBool::new(false));
        }
    }

    pub(crate) fn set(&self, peer: usize, shard: usize, up: bool) {
        let flags = self.up.read().unwrap_or_else(|e| e.into_inner());
        if shard < self.shards
            && let Some(flag) = flags.get(peer * self.shards + shard)
        {
            flag.store(up, Ordering::Relaxed);
        }
    }

    /// A shard other than `me` with a session to `peer`, searching from the one after `me` so
    /// that different shards hand over to different owners.
    pub(crate) fn other_with_session(&self, peer: usize, me: usize) -> Option<usize> {
        let flags = self.up.read().unwrap_or_else(|e| e.into_inner());
        (1..self.shards)
            .map(|step| (me + step) % self.shards)
            .find(|&shard| {
                flags
                    .get(peer * self.shards + shard)
                    .is_some_and(|flag| flag.load(Ordering::Relaxed))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(ty: PacketType, shard: u8) -> Vec<u8> {
        let len = if ty == PacketType::StatelessReset {
            StatelessReset::LEN
        } else {
            32
        };
        let mut p = vec![0u8; len];
        p[0] = (1 << 5) | ty as u8;
        p[1] = shard;
        p
    }

    #[test]
    fn data_goes_to_the_shard_in_the_session_id() {
        let data = packet(PacketType::Data, 2);
        assert_eq!(route(&data, 0, 4, true), Route::Owner(2));
        assert_eq!(route(&data, 2, 4, true), Route::Local);
        assert_eq!(route(&data, 0, 4, false), Route::Owner(2));
        assert_eq!(route(&data, 0, 1, true), Route::Local);
        // A shard that does not exist (the peer's session predates a restart with fewer
        // shards): answered locally.
        assert_eq!(
            route(&packet(PacketType::Data, 9), 0, 4, true),
            Route::Local
        );
        let response = packet(PacketType::HandshakeResponse, 1);
        assert_eq!(route(&response, 0, 2, true), Route::Owner(1));
    }

    #[test]
    fn parity_goes_where_the_sessions_data_goes() {
        let parity = packet(PacketType::Parity, 2);
        assert_eq!(parity[0], 0x25);
        assert_eq!(route(&parity, 0, 4, true), Route::Owner(2));
        assert_eq!(route(&parity, 2, 4, true), Route::Local);
        assert_eq!(route(&parity, 0, 4, false), Route::Owner(2));
        assert_eq!(route(&parity, 0, 1, true), Route::Local);
        assert_eq!(
            route(&packet(PacketType::Parity, 9), 0, 4, true),
            Route::Local
        );
        // Too short to name its session: the local endpoint counts it.
        assert_eq!(route(&[0x25], 0, 4, true), Route::Local);
    }

    #[test]
    fn inits_stay_and_resets_go_everywhere_on_a_shared_socket() {
        assert_eq!(
            route(&packet(PacketType::HandshakeInit, 3), 0, 4, true),
            Route::Local
        );
        let reset = packet(PacketType::StatelessReset, 3);
        assert_eq!(route(&reset, 0, 4, true), Route::Everyone);
        assert_eq!(route(&reset, 0, 4, false), Route::Local);
        let mut long_reset = reset.clone();
        long_reset.push(0);
        assert_eq!(route(&long_reset, 0, 4, true), Route::Local);
        assert_eq!(route(&[], 0, 4, true), Route::Local);
        assert_eq!(route(&[0x23], 0, 4, true), Route::Local);
    }

    #[test]
    fn directory_finds_another_shard_with_a_session() {
        let directory = PeerDirectory::new(2, 3);
        assert_eq!(directory.other_with_session(1, 0), None);
        directory.set(1, 0, true);
        assert_eq!(directory.other_with_session(1, 0), None, "only ourselves");
        assert_eq!(directory.other_with_session(1, 2), Some(0));
        directory.set(1, 2, true);
        assert_eq!(directory.other_with_session(1, 0), Some(2));
        assert_eq!(directory.other_with_session(1, 1), Some(2));
        assert_eq!(directory.other_with_session(0, 1), None);
        directory.set(1, 2, false);
        directory.set(7, 9, true);
        assert_eq!(directory.other_with_session(1, 1), Some(0));
        // A peer added by a reload.
        directory.set(2, 1, true);
        assert_eq!(directory.other_with_session(2, 0), None);
        directory.grow(3);
        directory.set(2, 1, true);
        assert_eq!(directory.other_with_session(2, 0), Some(1));
        assert_eq!(directory.other_with_session(1, 1), Some(0), "kept");
    }
}
