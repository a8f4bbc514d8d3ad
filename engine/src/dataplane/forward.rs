//! Forwarding between TCP connections and tunnel streams: accepting on `maps` listeners,
//! connecting to `allow` targets, moving bytes both ways with backpressure, half-close, and
//! tearing connections down.
//!
//! Backpressure: a connection's socket is read only while its stream accepts data (a receive is
//! armed only when nothing is pending), and a stream is read only while the socket accepts
//! data (one send in flight per connection), so a slow peer or a slow target slows the other
//! end instead of growing buffers.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use engine_api::config::MapId;
use engine_proto::mux::StreamEvent;
use engine_proto::wire::{SessionId, StreamId};

use super::conn::{Conn, ConnState, TX_BUFFER};
use super::control::ShardMsg;
use super::io::{Completion, IoOp, Op, Token};
use super::shard::Shard;
use super::{sockaddr, tcp};

/// Stream reset codes this engine sends, so the other side's logs can say why.
pub(crate) mod reset_code {
    /// The map id is not in the receiving node's `allow` list.
    pub(crate) const NOT_ALLOWED: u64 = 1;
    /// The `allow` target refused the connection, was unreachable or timed out.
    pub(crate) const CONNECT_FAILED: u64 = 2;
    /// The local TCP connection failed (reset by its peer, or a socket error).
    pub(crate) const CONNECTION_RESET: u64 = 3;
    /// A reload removed (or changed) the map or allow entry the stream belonged to.
    pub(crate) const MAP_REMOVED: u64 = 4;
    /// A UDP map's flow saw no datagram for `udp.idle_timeout`.
    pub(crate) const FLOW_IDLE: u64 = 5;
    /// The two nodes disagree on the map's proto (a TCP map's stream reached a UDP allow
    /// entry).
    pub(crate) const PROTO_MISMATCH: u64 = 6;
}

/// How long a connect to an `allow` target may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a listener rests after running out of descriptors or memory.
pub(crate) const ACCEPT_RETRY: Duration = Duration::from_millis(100);
/// How long a connection accepted on a map waits for its peer's session to come up.
pub(crate) const SESSION_WAIT: Duration = Duration::from_secs(10);

impl Shard {
    pub(crate) fn on_accept(&mut self, now: Instant, listener: usize, c: Completion) {
        let result = c.result;
        if self.listener(listener).is_some_and(|l| l.retired) {
            // A reload removed the listener's map: what it still accepted is closed, and the
            // listener itself once its accept has ended.
            if result >= 0 {
                // SAFETY: a successful accept returns a new descriptor that nothing else owns.
                drop(unsafe { OwnedFd::from_raw_fd(result) });
            }
            if !c.more {
                self.free_listener(listener);
            }
            return;
        }
        if !c.more {
            if let Some(l) = self.listener_mut(listener) {
                l.armed = false;
            }
            match -result {
                libc::ECANCELED => {}
                // Out of descriptors or memory: the pending connection stays in the backlog, so
                // accepting again at once would fail at once. Try again a little later.
                libc::EMFILE | libc::ENFILE | libc::ENOMEM | libc::ENOBUFS => {
                    if let Some(l) = self.listener_mut(listener) {
                        l.retry_at = Some(now + ACCEPT_RETRY);
                    }
                }
                _ => self.arm_accept(listener),
            }
        }
        if result < 0 {
            tracing::warn!(err = %io::Error::from_raw_os_error(-result), "accept failed");
            return;
        }
        // SAFETY: a successful accept returns a new descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(result) };
        let Some(map) = self.listener(listener).map(|l| l.map) else {
            return;
        };
        self.counters.connections_accepted += 1;
        self.start_connection(now, fd, map, false);
    }

    /// Forwards a connection accepted on map `map_id` (here, or by another shard that
    /// `handed` it over): over this shard's session with the map's peer, or over another
    /// shard's when only that one has a session (a peer that dials us may run fewer shards than
    /// we do), or once a session comes up.
    pub(crate) fn start_connection(
        &mut self,
        now: Instant,
        fd: OwnedFd,
        map_id: MapId,
        handed: bool,
    ) {
        // A map a reload removed meanwhile: the connection closes with `fd`.
        let Some(map) = self.config.maps.iter().find(|m| m.id == map_id) else {
            return;
        };
        let peer = map.peer;
        if self.peers.session(peer).is_none()
            && !handed
            && let Some(owner) = self.directory.other_with_session(peer, self.index)
        {
            self.counters.connections_handed_over += 1;
            self.siblings[owner].send(ShardMsg::Connection { fd, map: map_id });
            return;
        }
        tcp::set_nodelay(&fd);
        let remote = tcp::peer_addr(&fd);
        let state = ConnState::WaitingSession {
            peer,
            deadline: now + SESSION_WAIT,
        };
        let (index, _) = self
            .conns
            .insert(|generation| Conn::new(generation, fd, map_id, remote, state, now));
        match self.peers.session(peer) {
            Some(session) => self.attach_stream(index, session),
            None => {
                tracing::debug!(map = %map_id, peer = %self.peers.name(peer), client = ?remote, "connection waits for the peer's session");
                self.peers.wait(peer, index, now + SESSION_WAIT);
            }
        }
    }

    /// Opens the stream for a connection accepted on a map, now that the session is up.
    pub(crate) fn attach_stream(&mut self, index: usize, session_id: SessionId) {
        let Some(conn) = self.conns.by_index(index) else {
            return;
        };
        let map = conn.map;
        let opened = self
            .endpoint
            .session_mut(session_id)
            .map(|session| session.open_stream(map.0));
        match opened {
            Some(Ok(stream)) => {
                self.telemetry
                    .stream_opened(map, conn.since, Instant::now());
                conn.stream = Some((session_id, stream));
                conn.state = ConnState::Open;
                self.streams.insert((session_id, stream), index);
                tracing::debug!(map = %map, client = ?conn.remote, stream = stream.0, "connection forwarded");
                self.arm_recv(index);
            }
            Some(Err(err)) => {
                tracing::warn!(map = %map, %err, "cannot open a stream; closing the connection");
                self.abort(index, None);
            }
            None => {
                // The session ended in this very round (its Closed event is still queued): wait
                // for the redial like any connection that arrives between sessions.
                if let ConnState::WaitingSession { peer, deadline } = conn.state {
                    self.peers.wait(peer, index, deadline);
                } else {
                    self.abort(index, None);
                }
            }
        }
    }

    /// A peer opened a stream: connect it to its `allow` target, or refuse it.
    pub(crate) fn on_stream_opened(
        &mut self,
        session_id: SessionId,
        stream: StreamId,
        map_id: u32,
    ) {
        if self
            .config
            .allow
            .iter()
            .any(|a| a.id.0 == map_id && a.proto == engine_api::config::Proto::Udp)
        {
            self.udp_stream_opened(Instant::now(), session_id, stream, MapId(map_id));
            return;
        }
        let peer = self.peers.describe(session_id, &self.endpoint);
        let Some(allow) = self.config.allow.iter().find(|a| a.id.0 == map_id) else {
            self.counters.streams_refused += 1;
            tracing::warn!(map = map_id, %peer, "stream refused: map id not in the allow list");
            if let Some(session) = self.endpoint.session_mut(session_id) {
                let _ = session.reset(stream, reset_code::NOT_ALLOWED);
            }
            return;
        };
        let target = allow.target;
        let fd = match tcp::socket_for(target) {
            Ok(fd) => fd,
            Err(err) => {
                self.counters.connects_failed += 1;
                tracing::warn!(map = map_id, %target, %err, "cannot create a socket for the target");
                if let Some(session) = self.endpoint.session_mut(session_id) {
                    let _ = session.reset(stream, reset_code::CONNECT_FAILED);
                }
                return;
            }
        };
        // SAFETY: all-zero is a valid sockaddr_storage.
        let mut addr = Box::new((unsafe { std::mem::zeroed::<libc::sockaddr_storage>() }, 0));
        addr.1 = sockaddr::write(target, &mut addr.0);
        let connect_to = (&addr.0 as *const libc::sockaddr_storage).cast();
        let addr_len = addr.1;
        let raw_fd = fd.as_raw_fd();
        let (index, generation) = self.conns.insert(|generation| {
            let mut conn = Conn::new(
                generation,
                fd,
                MapId(map_id),
                Some(target),
                ConnState::Connecting,
                Instant::now(),
            );
            conn.stream = Some((session_id, stream));
            // The box moves into the connection; the kernel's pointer to its contents stays
            // valid until the connection is freed, after both completions.
            conn.connect_addr = Some(addr);
            conn.inflight = 2;
            conn
        });
        let connect = IoOp::Connect {
            fd: raw_fd,
            addr: connect_to,
            addr_len,
            timeout: CONNECT_TIMEOUT,
            timeout_token: Token::new(Op::ConnectTimeout, index, generation),
        };
        self.streams.insert((session_id, stream), index);
        tracing::debug!(map = map_id, %peer, %target, "connecting to target");
        self.io
            .push(Token::new(Op::Connect, index, generation), connect);
    }

    pub(crate) fn on_connect(&mut self, token: Token, result: i32) {
        let index = token.index as usize;
        let Some(conn) = self.conns.get_mut(index, token.generation) else {
            return;
        };
        conn.inflight = conn.inflight.saturating_sub(1);
        if conn.state != ConnState::Connecting {
            self.maybe_free(index);
            return;
        }
        if result < 0 {
            let err = match -result {
                libc::ECANCELED => io::Error::new(io::ErrorKind::TimedOut, "timed out"),
                errno => io::Error::from_raw_os_error(errno),
            };
            self.counters.connects_failed += 1;
            tracing::warn!(map = %conn.map, target = ?conn.remote, %err, "connect to target failed; resetting the stream");
            self.abort(index, Some(reset_code::CONNECT_FAILED));
            return;
        }
        conn.state = ConnState::Open;
        self.counters.streams_connected += 1;
        self.telemetry
            .target_connected(conn.map, conn.since, Instant::now());
        self.arm_recv(index);
        self.pump_tx(index);
    }

    /// Completions that only release a connection's reference: link timeouts and cancels.
    pub(crate) fn on_conn_op_done(&mut self, token: Token) {
        let index = token.index as usize;
        if let Some(conn) = self.conns.get_mut(index, token.generation) {
            conn.inflight = conn.inflight.saturating_sub(1);
            self.maybe_free(index);
        }
    }

    /// Arms a receive on the connection's socket if it may read now.
    pub(crate) fn arm_recv(&mut self, index: usize) {
        let Some(conn) = self.conns.by_index(index) else {
            return;
        };
        if conn.state != ConnState::Open
            || conn.recv_armed
            || conn.rx_done
            || !conn.pending.is_empty()
        {
            return;
        }
        conn.recv_armed = true;
        conn.inflight += 1;
        let token = Token::new(Op::TcpRecv, index, conn.generation);
        let fd = conn.fd.as_raw_fd();
        self.io.push(token, IoOp::TcpRecv { fd });
    }

    pub(crate) fn on_tcp_recv(&mut self, c: Completion) {
        let (token, result, bid) = (c.token, c.result, c.buffer);
        let index = token.index as usize;
        let Some(conn) = self.conns.get_mut(index, token.generation) else {
            if let Some(bid) = bid {
                self.io.tcp_bufs.recycle(bid);
            }
            return;
        };
        conn.inflight = conn.inflight.saturating_sub(1);
        conn.recv_armed = false;
        let stream = conn.stream.filter(|_| conn.state == ConnState::Open);
        match (result, bid, stream) {
            (n, Some(bid), Some((session_id, stream))) if n > 0 => {
                let data = self.io.tcp_bufs.buffer_mut(bid, n as usize);
                let written = match self.endpoint.session_mut(session_id) {
                    Some(session) => session.write(stream, data),
                    None => Err(engine_proto::mux::StreamError::UnknownStream),
                };
                match written {
                    Ok(accepted) => {
                        conn.bytes_in += data.len() as u64;
                        if accepted < data.len() {
                            conn.pending.extend_from_slice(&data[accepted..]);
                        }
                        self.io.tcp_bufs.recycle(bid);
                        self.arm_recv(index);
                    }
                    Err(_) => {
                        self.io.tcp_bufs.recycle(bid);
                        self.abort(index, None);
                    }
                }
            }
            (0, bid, Some((session_id, stream))) => {
                // Some kernels hand a buffer even to a zero-byte (end-of-stream) receive.
                if let Some(bid) = bid {
                    self.io.tcp_bufs.recycle(bid);
                }
                conn.rx_done = true;
                if let Some(session) = self.endpoint.session_mut(session_id) {
                    let _ = session.finish(stream);
                }
                self.maybe_finish(index);
            }
            (n, bid, _) => {
                if let Some(bid) = bid {
                    self.io.tcp_bufs.recycle(bid);
                }
                match -n {
                    libc::ENOBUFS if conn.state == ConnState::Open => self.starved.push(index),
                    _ if n < 0 && conn.state == ConnState::Open => {
                        tracing::debug!(map = %conn.map, err = %io::Error::from_raw_os_error(-n), "connection failed");
                        self.abort(index, Some(reset_code::CONNECTION_RESET));
                    }
                    _ => self.maybe_free(index),
                }
            }
        }
    }

    /// Connections whose receive found the buffer ring empty try again.
    pub(crate) fn rearm_starved(&mut self) {
        while let Some(index) = self.starved.pop() {
            self.arm_recv(index);
        }
    }

    /// The stream can take more: write what the socket already delivered, then read again.
    pub(crate) fn flush_pending(&mut self, index: usize) {
        let Some(conn) = self.conns.by_index(index) else {
            return;
        };
        let Some((session_id, stream)) = conn.stream else {
            return;
        };
        if conn.pending.is_empty() {
            return;
        }
        let Some(session) = self.endpoint.session_mut(session_id) else {
            return;
        };
        match session.write(stream, &conn.pending) {
            Ok(accepted) => {
                conn.pending.drain(..accepted);
                self.arm_recv(index);
            }
            Err(_) => self.abort(index, None),
        }
    }

    /// Moves stream data to the socket: refills the send buffer from the stream when it is
    /// empty, and sends it; shuts the socket's write side after the stream's end.
    pub(crate) fn pump_tx(&mut self, index: usize) {
        let Some(conn) = self.conns.by_index(index) else {
            return;
        };
        if conn.state != ConnState::Open || conn.send_inflight || conn.tx_done {
            return;
        }
        if conn.tx_sent >= conn.tx.len() && !conn.tx_fin {
            conn.tx.clear();
            conn.tx_sent = 0;
            if let Some((session_id, stream)) = conn.stream
                && let Some(session) = self.endpoint.session_mut(session_id)
            {
                conn.tx.resize(TX_BUFFER, 0);
                let mut filled = 0;
                while filled < conn.tx.len() {
                    match session.read(stream, &mut conn.tx[filled..]) {
                        Ok(outcome) => {
                            filled += outcome.len;
                            if outcome.fin {
                                conn.tx_fin = true;
                                break;
                            }
                            if outcome.len == 0 {
                                break;
                            }
                        }
                        Err(_) => break,
                    }
                }
                conn.tx.truncate(filled);
            }
        }
        if conn.tx_sent < conn.tx.len() {
            let remaining = &conn.tx[conn.tx_sent..];
            let op = IoOp::TcpSend {
                fd: conn.fd.as_raw_fd(),
                buf: remaining.as_ptr(),
                len: remaining.len() as u32,
            };
            let token = Token::new(Op::TcpSend, index, conn.generation);
            conn.send_inflight = true;
            conn.inflight += 1;
            self.io.push(token, op);
            return;
        }
        // Nothing buffered: give the memory back while idle.
        conn.tx = Vec::new();
        conn.tx_sent = 0;
        if conn.tx_fin {
            conn.tx_done = true;
            if let Err(err) = tcp::shutdown_write(&conn.fd) {
                tracing::debug!(%err, "shutdown failed");
            }
            self.maybe_finish(index);
        }
    }

    pub(crate) fn on_tcp_send(&mut self, token: Token, result: i32) {
        let index = token.index as usize;
        let Some(conn) = self.conns.get_mut(index, token.generation) else {
            return;
        };
        conn.inflight = conn.inflight.saturating_sub(1);
        conn.send_inflight = false;
        if conn.state != ConnState::Open {
            self.maybe_free(index);
            return;
        }
        if result < 0 {
            tracing::debug!(map = %conn.map, err = %io::Error::from_raw_os_error(-result), "send failed");
            self.abort(index, Some(reset_code::CONNECTION_RESET));
            return;
        }
        conn.tx_sent += result as usize;
        conn.bytes_out += result as u64;
        self.pump_tx(index);
    }

    pub(crate) fn on_stream_event(&mut self, session_id: SessionId, event: StreamEvent) {
        let id = event.id();
        if self.udp_maps.owns_stream((session_id, id)) {
            self.udp_stream_event(Instant::now(), session_id, event);
            return;
        }
        match event {
            StreamEvent::Opened { id, map_id } => self.on_stream_opened(session_id, id, map_id),
            StreamEvent::Readable { id } | StreamEvent::Finished { id } => {
                if let Some(&index) = self.streams.get(&(session_id, id)) {
                    self.pump_tx(index);
                }
            }
            StreamEvent::Writable { id } => {
                if let Some(&index) = self.streams.get(&(session_id, id)) {
                    self.flush_pending(index);
                }
            }
            StreamEvent::Reset { id, error_code } => {
                if let Some(index) = self.streams.remove(&(session_id, id)) {
                    if let Some(conn) = self.conns.by_index(index) {
                        tracing::debug!(map = %conn.map, code = error_code, "stream reset by the peer; closing the connection");
                        conn.stream = None;
                    }
                    self.abort(index, None);
                }
            }
            StreamEvent::Closed { id } => {
                if let Some(index) = self.streams.remove(&(session_id, id))
                    && let Some(conn) = self.conns.by_index(index)
                {
                    conn.stream = None;
                }
            }
        }
    }

    /// Closes every connection carried by a session that ended.
    pub(crate) fn abort_session_conns(&mut self, session_id: SessionId) {
        self.udp_session_closed(session_id);
        let indices: Vec<usize> = self
            .streams
            .iter()
            .filter(|((s, _), _)| *s == session_id)
            .map(|(_, &i)| i)
            .collect();
        for index in indices {
            if let Some(conn) = self.conns.by_index(index) {
                conn.stream = None;
            }
            self.abort(index, None);
        }
    }

    /// Both directions ended cleanly: close the socket once nothing is in flight.
    fn maybe_finish(&mut self, index: usize) {
        let Some(conn) = self.conns.by_index(index) else {
            return;
        };
        if conn.state == ConnState::Open && conn.is_done() {
            conn.state = ConnState::Closing;
            if let Some(key) = conn.stream.take() {
                // The stream itself completes on its own (our FIN is queued in the session).
                self.streams.remove(&key);
            }
            self.maybe_free(index);
        }
    }

    /// Tears a connection down at once: the TCP peer sees a reset, and the stream (if any) is
    /// reset with `reset` as the code (`None`: the stream is already gone or was reset by the
    /// peer).
    pub(crate) fn abort(&mut self, index: usize, reset: Option<u64>) {
        self.tear_down(index, reset, true);
    }

    /// Closes a connection whose map or allow entry a reload removed: the TCP peer reads
    /// end-of-stream (a FIN, not a reset), and the stream is reset with
    /// [`reset_code::MAP_REMOVED`] so the other node closes its side too.
    pub(crate) fn close_removed(&mut self, index: usize) {
        self.tear_down(index, Some(reset_code::MAP_REMOVED), false);
    }

    /// [`abort`](Self::abort), with a FIN instead of a reset to the TCP peer unless `rst`.
    fn tear_down(&mut self, index: usize, reset: Option<u64>, rst: bool) {
        let Some(conn) = self.conns.by_index(index) else {
            return;
        };
        if conn.state == ConnState::Closing {
            return;
        }
        if let ConnState::WaitingSession { peer, .. } = conn.state {
            self.peers.unwait(peer, index);
        }
        let conn = self.conns.by_index(index).expect("checked above");
        if let Some((session_id, stream)) = conn.stream.take() {
            self.streams.remove(&(session_id, stream));
            if let (Some(code), Some(session)) = (reset, self.endpoint.session_mut(session_id)) {
                let _ = session.reset(stream, code);
            }
        }
        if rst {
            tcp::set_abort_on_close(&conn.fd);
        } else {
            // Not connected yet (a connect in flight): nothing to end, the close does it.
            let _ = tcp::shutdown_write(&conn.fd);
        }
        conn.state = ConnState::Closing;
        if conn.inflight > 0 {
            conn.inflight += 1;
            let token = Token::new(Op::Cancel, index, conn.generation);
            let fd = conn.fd.as_raw_fd();
            self.io.push(token, IoOp::Cancel { fd });
        }
        self.maybe_free(index);
    }

    /// Frees a closing connection once the kernel holds no reference to its memory.
    fn maybe_free(&mut self, index: usize) {
        if let Some(conn) = self.conns.by_index(index)
            && conn.state == ConnState::Closing
            && conn.inflight == 0
            && let Some(conn) = self.conns.remove(index)
        {
            self.telemetry.connection_freed(&conn);
        }
    }
}
