//! One forwarded TCP connection and the tunnel stream it is joined to.
//!
//! A connection is either accepted on a `maps` listener (its stream is opened by this node once
//! the peer's session is up) or made to an `allow` target (for a stream the peer opened). From
//! then on both kinds behave the same: bytes read from the socket are written into the stream,
//! bytes read from the stream are sent on the socket, and each direction ends on its own
//! (half-close), so the pair closes only when both directions are done or either side fails.

use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::time::Instant;

use engine_api::config::MapId;
use engine_proto::wire::{SessionId, StreamId};

use super::stats::MapKind;

/// Largest chunk read from a stream into a connection's send buffer at a time.
pub(crate) const TX_BUFFER: usize = 256 * 1024;

#[derive(Debug)]
pub(crate) struct Conn {
    pub(crate) generation: u32,
    pub(crate) fd: OwnedFd,
    pub(crate) map: MapId,
    /// Accepted on a map, or made to an allow target.
    pub(crate) kind: MapKind,
    /// When the connection was accepted, or the peer's stream opened (for latency stats).
    pub(crate) since: Instant,
    /// Bytes read from the socket into the stream, and written from the stream to the socket.
    pub(crate) bytes_in: u64,
    pub(crate) bytes_out: u64,
    /// The TCP peer (client of a map, or the target), for logs.
    pub(crate) remote: Option<SocketAddr>,
    pub(crate) state: ConnState,
    /// The stream this connection is joined to, once there is one.
    pub(crate) stream: Option<(SessionId, StreamId)>,
    /// Operations submitted for this connection and not yet completed. Its memory (send buffer,
    /// connect address) must outlive them, so a closing connection is freed only at zero.
    pub(crate) inflight: u32,
    pub(crate) recv_armed: bool,
    /// The socket reached end-of-stream and the stream was finished.
    pub(crate) rx_done: bool,
    /// Bytes read from the socket that the stream has not accepted yet (its send window was
    /// full); no receive is armed until they are written.
    pub(crate) pending: Vec<u8>,
    /// Bytes read from the stream, `tx[tx_sent..]` not yet sent on the socket.
    pub(crate) tx: Vec<u8>,
    pub(crate) tx_sent: usize,
    pub(crate) send_inflight: bool,
    /// The stream's end was read: shut the socket's write side once `tx` is sent.
    pub(crate) tx_fin: bool,
    /// The socket's write side is shut down.
    pub(crate) tx_done: bool,
    /// The connect's target address, which must stay put while the connect is in flight.
    pub(crate) connect_addr: Option<Box<(libc::sockaddr_storage, libc::socklen_t)>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ConnState {
    /// Accepted on a map whose peer has no session yet; closed if none comes up by `deadline`.
    WaitingSession {
        peer: usize,
        deadline: Instant,
    },
    /// Connecting to an allow target.
    Connecting,
    Open,
    /// Being torn down; freed once no operation is in flight.
    Closing,
}

impl Conn {
    pub(crate) fn new(
        generation: u32,
        fd: OwnedFd,
        map: MapId,
        remote: Option<SocketAddr>,
        state: ConnState,
        since: Instant,
    ) -> Self {
        // Only connections made to allow targets start out connecting.
        let kind = if state == ConnState::Connecting {
            MapKind::Allow
        } else {
            MapKind::Listen
        };
        Self {
            generation,
            fd,
            map,
            kind,
            since,
            bytes_in: 0,
            bytes_out: 0,
            remote,
            state,
            stream: None,
            inflight: 0,
            recv_armed: false,
            rx_done: false,
            pending: Vec::new(),
            tx: Vec::new(),
            tx_sent: 0,
            send_inflight: false,
            tx_fin: false,
            tx_done: false,
            connect_addr: None,
        }
    }

    /// Both directions ended cleanly.
    pub(crate) fn is_done(&self) -> bool {
        self.rx_done && self.tx_done
    }
}

/// A slab of connections with generation counters, so completions for a freed slot are
/// recognised as stale.
#[derive(Debug, Default)]
pub(crate) struct Conns {
    slots: Vec<Option<Conn>>,
    generations: Vec<u32>,
    free: Vec<usize>,
}

impl Conns {
    /// Stores the connection `make` builds for the slot's current generation; returns the slot
    /// and that generation (both go into the tokens of the connection's operations).
    pub(crate) fn insert(&mut self, make: impl FnOnce(u32) -> Conn) -> (usize, u32) {
        let index = match self.free.pop() {
            Some(index) => index,
            None => {
                self.slots.push(None);
                self.generations.push(0);
                self.slots.len() - 1
            }
        };
        let generation = self.generations[index];
        self.slots[index] = Some(make(generation));
        (index, generation)
    }

    pub(crate) fn get_mut(&mut self, index: usize, generation: u32) -> Option<&mut Conn> {
        self.slots
            .get_mut(index)?
            .as_mut()
            .filter(|conn| conn.generation == generation)
    }

    /// The live connections with their slots.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (usize, &Conn)> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(index, conn)| Some((index, conn.as_ref()?)))
    }

    pub(crate) fn by_index(&mut self, index: usize) -> Option<&mut Conn> {
        self.slots.get_mut(index)?.as_mut()
    }

    /// Frees a slot (closing the socket); later completions for it are stale.
    pub(crate) fn remove(&mut self, index: usize) -> Option<Conn> {
        let conn = self.slots.get_mut(index)?.take()?;
        self.generations[index] = self.generations[index].wrapping_add(1);
        self.free.push(index);
        Some(conn)
    }
}
