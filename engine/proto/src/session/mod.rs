//! One authenticated session with a peer: packet protection, reliability, rate control and
//! the streams it carries.
//!
//! A session is created by the [`crate::endpoint::Endpoint`] once the Noise handshake produced
//! its keys. From then on it is driven like every sans-IO object here: `handle_packet` and
//! `handle_timeout` feed it, `poll_transmit`, `poll_timeout` and `poll_event` drain it.

mod ack;
mod fec;
#[cfg(test)]
mod regression_tests;
mod sent;
mod stats;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::arq::{Pacer, RateControl, RttEstimator};
use crate::config::SessionConfig;
use crate::crypto::{ReplayWindow, RxKeys, TAG_LEN, TxKeys};
use crate::mux::{ReadOutcome, SentFrame, StreamError, StreamEvent, Streams};
use crate::wire::{
    AckFrame, Frame, FrameIter, Header, ParityHeader, SessionId, Side, StreamId, Writer,
    decode_packet_number,
};

use ack::{AckState, MAX_ACK_RANGES};
use fec::{ClosedGroup, FecReceiver, FecSender};
use sent::SentPackets;
pub use stats::SessionStats;

/// Close codes carried by CLOSE frames.
pub mod close_code {
    /// The application closed the session.
    pub const NORMAL: u64 = 0;
    /// The peer broke the protocol (the mux error's code is in the reason).
    pub const PROTOCOL: u64 = 1;
}

/// Datagrams to hand to the network. Several same-size datagrams in one buffer form a GSO batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transmit {
    pub destination: SocketAddr,
    /// Bytes written into the caller's buffer.
    pub size: usize,
    /// Set when `size` holds several datagrams: each is this long except perhaps the last.
    pub segment_size: Option<usize>,
}

impl Transmit {
    pub fn segments(&self) -> usize {
        self.segment_size.map_or(1, |s| self.size.div_ceil(s))
    }
}

/// Why a session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// We closed it.
    Local { code: u64 },
    /// The peer sent CLOSE.
    Peer { code: u64, reason: Vec<u8> },
    /// Nothing authenticated arrived within the idle timeout: the peer is gone.
    IdleTimeout,
    /// A dial got no valid answer within the handshake timeout.
    HandshakeTimeout,
    /// The peer's handshake answer authenticated but carried unusable parameters.
    HandshakeFailed,
    /// The peer violated the protocol.
    Protocol { code: u64 },
    /// The peer answered with a valid stateless reset: it no longer knows the session (it
    /// restarted, or dropped the session). Nothing is sent; dial again.
    PeerReset,
    /// The handshake authenticated, but the two ends' FEC settings differ, so no session was
    /// made (on the accepting side the event's session id is [`SessionId::NONE`]). `peer` is the
    /// peer's node name, if it sent one.
    FecMismatch {
        ours: crate::config::FecConfig,
        theirs: crate::config::FecConfig,
        peer: Option<String>,
    },
    /// Ack-eliciting packets went unanswered for [`SessionConfig::path_timeout`]: the path (or
    /// the peer) is gone. Nothing is sent; dial again.
    PathDead,
}

/// Something the application should know about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionEvent {
    /// The handshake completed and the peer proved it holds the keys.
    Connected,
    Stream(StreamEvent),
    /// A DATAGRAM frame arrived (read it with [`Session::recv_datagram`]).
    DatagramReceived,
    /// The session is over; no more events follow.
    Closed(CloseReason),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Established,
    /// We are closing: send CLOSE once, then wait so late packets are absorbed.
    Closing {
        until: Instant,
        close_sent: bool,
    },
    /// The peer closed: send nothing more.
    Draining {
        until: Instant,
    },
    Closed,
}

#[derive(Debug)]
pub struct Session {
    side: Side,
    config: SessionConfig,
    local_id: SessionId,
    remote_id: SessionId,
    remote: SocketAddr,
    state: State,
    close_frame: Option<(u64, Vec<u8>)>,
    tx: TxKeys,
    rx: RxKeys,
    replay: ReplayWindow,
    next_pn: u64,
    sent: SentPackets,
    acks: AckState,
    rtt: RttEstimator,
    cc: RateControl,
    pacer: Pacer,
    pto_count: u32,
    loss_time: Option<Instant>,
    last_eliciting_sent: Option<Instant>,
    probes: u8,
    ping_pending: bool,
    pacing_wakeup: Option<Instant>,
    streams: Streams,
    datagrams_out: VecDeque<Vec<u8>>,
    datagrams_in: VecDeque<Vec<u8>>,
    events: VecDeque<SessionEvent>,
    confirmed: bool,
    created: Instant,
    last_received: Instant,
    last_sent: Instant,
    /// Since when ack-eliciting packets have gone unanswered: the later of the last
    /// authenticated arrival and the first ack-eliciting packet sent after it. The path-dead
    /// timer runs from there.
    unanswered_since: Option<Instant>,
    peer_name: Option<String>,
    stats: SessionStats,
    scratch_frames: Vec<SentFrame>,
    scratch_pns: Vec<u64>,
    /// FEC, when negotiated: the groups we send and the parity we receive.
    fec_tx: Option<FecSender>,
    fec_rx: Option<FecReceiver>,
    /// Packets rebuilt from parity, waiting to be handled.
    fec_recovered: Vec<Vec<u8>>,
}

/// What the endpoint hands a new session.
#[derive(Debug)]
pub(crate) struct SessionParams {
    pub side: Side,
    pub config: SessionConfig,
    pub local_id: SessionId,
    pub remote_id: SessionId,
    pub remote: SocketAddr,
    pub tx: TxKeys,
    pub rx: RxKeys,
    pub peer_name: Option<String>,
}

impl Session {
    pub(crate) fn new(now: Instant, p: SessionParams) -> Self {
        let cc = RateControl::new(p.config.rate, now);
        let pacer = Pacer::new(Pacer::burst_for(cc.pacing_rate(), p.config.mtu as u64));
        let rtt = RttEstimator::new(Duration::from_millis(100), p.config.rtt);
        let mut s = Self {
            side: p.side,
            local_id: p.local_id,
            remote_id: p.remote_id,
            remote: p.remote,
            state: State::Established,
            close_frame: None,
            tx: p.tx,
            rx: p.rx,
            replay: ReplayWindow::default(),
            next_pn: 0,
            sent: SentPackets::default(),
            acks: AckState::default(),
            rtt,
            cc,
            pacer,
            pto_count: 0,
            loss_time: None,
            last_eliciting_sent: None,
            probes: 0,
            // The dialling side confirms the handshake to the acceptor straight away.
            ping_pending: p.side == Side::Client,
            pacing_wakeup: None,
            streams: Streams::new(p.side, p.config.mux.clone()),
            datagrams_out: VecDeque::new(),
            datagrams_in: VecDeque::new(),
            events: VecDeque::new(),
            confirmed: p.side == Side::Client,
            created: now,
            last_received: now,
            last_sent: now,
            unanswered_since: None,
            peer_name: p.peer_name,
            stats: SessionStats::default(),
            scratch_frames: Vec::new(),
            scratch_pns: Vec::new(),
            fec_tx: p.config.fec.is_on().then(|| FecSender::new(p.config.fec)),
            fec_rx: p.config.fec.is_on().then(|| FecReceiver::new(p.config.fec)),
            fec_recovered: Vec::new(),
            config: p.config,
        };
        if s.confirmed {
            s.events.push_back(SessionEvent::Connected);
        }
        s
    }

    pub fn side(&self) -> Side {
        self.side
    }

    pub fn local_id(&self) -> SessionId {
        self.local_id
    }

    pub fn remote_id(&self) -> SessionId {
        self.remote_id
    }

    pub fn remote(&self) -> SocketAddr {
        self.remote
    }

    pub fn config(&self) -> &SessionConfig {
        &self.config
    }

    /// The node name the peer sent in the handshake, if any (valid UTF-8, at most
    /// [`crate::wire::MAX_NODE_NAME_LEN`] bytes; the handshake fails otherwise).
    pub fn peer_name(&self) -> Option<&str> {
        self.peer_name.as_deref()
    }

    pub fn stats(&self) -> SessionStats {
        let mut s = self.stats.clone();
        s.rtt_smoothed = self.rtt.smoothed();
        s.rtt_min = self.rtt.min();
        s.rtt_latest = self.rtt.latest();
        s.pacing_rate = self.cc.pacing_rate();
        s.cwnd = self.cc.cwnd();
        s.bytes_in_flight = self.sent.bytes_in_flight;
        s.loss_rate = self.cc.loss_rate();
        s.streams_open = self.streams.open_count() as u64;
        s.key_generation = self.tx.generation();
        if let Some(tx) = &self.fec_tx {
            s.fec_groups_sent = tx.groups_sent;
            s.fec_parity_sent = tx.parity_sent;
            s.fec_ratio = tx.last_ratio;
            s.fec_peer_loss = tx.peer_loss();
        }
        if let Some(rx) = &self.fec_rx {
            s.fec_groups_unrecoverable = rx.groups_unrecoverable;
        }
        s
    }

    /// When the session was created (the handshake completed on this side).
    pub fn created(&self) -> Instant {
        self.created
    }

    /// Whether the session is up: neither closing, draining nor closed.
    pub fn is_established(&self) -> bool {
        self.state == State::Established
    }

    /// Whether the session is over and can be dropped.
    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    /// Whether the acceptor has seen proof that the dialler completed the handshake.
    pub fn is_confirmed(&self) -> bool {
        self.confirmed
    }

    // ---- streams and datagrams ----

    pub fn open_stream(&mut self, map_id: u32) -> Result<StreamId, StreamError> {
        self.streams.open(map_id)
    }

    pub fn write(&mut self, id: StreamId, data: &[u8]) -> Result<usize, StreamError> {
        self.streams.write(id, data)
    }

    pub fn read(&mut self, id: StreamId, buf: &mut [u8]) -> Result<ReadOutcome, StreamError> {
        self.streams.read(id, buf)
    }

    pub fn finish(&mut self, id: StreamId) -> Result<(), StreamError> {
        self.streams.finish(id)
    }

    pub fn reset(&mut self, id: StreamId, error_code: u64) -> Result<(), StreamError> {
        self.streams.reset(id, error_code)
    }

    pub fn map_id(&self, id: StreamId) -> Option<u32> {
        self.streams.map_id(id)
    }

    /// The largest payload [`Session::send_datagram`] accepts: what one DATAGRAM frame can
    /// carry in a packet of this session's size (less the FEC parity header when FEC is on).
    pub fn max_datagram_len(&self) -> usize {
        let room = self.config.max_payload();
        // The frame is a type byte, a varint length and the data: the shortest length prefix
        // that can still say the length gives the largest payload.
        [1, 2, 4, 8]
            .into_iter()
            .find_map(|prefix| {
                let len = room.checked_sub(1 + prefix)?;
                (crate::wire::varint_len(len as u64) <= prefix).then_some(len)
            })
            .unwrap_or(0)
    }

    /// Queues an unreliable datagram. It is dropped (and counted) if it can never fit a packet.
    pub fn send_datagram(&mut self, data: &[u8]) -> bool {
        if (Frame::Datagram { data }).encoded_len() > self.config.max_payload() {
            self.stats.datagrams_dropped += 1;
            return false;
        }
        // Unreliable traffic must not pile up behind a slow link.
        if self.datagrams_out.len() >= 1024 {
            self.datagrams_out.pop_front();
            self.stats.datagrams_dropped += 1;
        }
        self.datagrams_out.push_back(data.to_vec());
        true
    }

    pub fn recv_datagram(&mut self) -> Option<Vec<u8>> {
        self.datagrams_in.pop_front()
    }

    /// Closes the session: the peer is told with a CLOSE frame, streams are abandoned. Codes
    /// above [`crate::wire::VARINT_MAX`] (2^62 - 1) are sent as that maximum.
    pub fn close(&mut self, now: Instant, code: u64, reason: &[u8]) {
        if self.state != State::Established {
            return;
        }
        let code = code.min(crate::wire::VARINT_MAX);
        self.close_frame = Some((code, reason.to_vec()));
        self.state = State::Closing {
            until: now + 3 * self.rtt.pto_base(),
            close_sent: false,
        };
        self.events
            .push_back(SessionEvent::Closed(CloseReason::Local { code }));
    }

    pub fn poll_event(&mut self) -> Option<SessionEvent> {
        if let Some(e) = self.events.pop_front() {
            return Some(e);
        }
        if !matches!(self.state, State::Established) {
            return None;
        }
        self.streams.poll_event().map(SessionEvent::Stream)
    }

    // ---- input ----

    /// Handles a data packet addressed to this session. `packet` is the whole datagram; it is
    /// decrypted in place. Forged, replayed or damaged packets are dropped, counted, and change
    /// nothing else.
    pub(crate) fn handle_packet(
        &mut self,
        now: Instant,
        from: SocketAddr,
        header: &Header,
        packet: &mut [u8],
    ) {
        self.handle_packet_once(now, from, header, packet, false);
        self.handle_recovered(now);
    }

    /// Handles the packets FEC rebuilt: exactly like received ones, except that they cannot
    /// move the session to another address (the parity that rebuilt them is not authenticated).
    fn handle_recovered(&mut self, now: Instant) {
        while let Some(mut packet) = self.fec_recovered.pop() {
            if let Ok((header, _)) = Header::parse(&packet) {
                let remote = self.remote;
                self.handle_packet_once(now, remote, &header, &mut packet, true);
            }
        }
    }

    /// Handles a parity packet (type 5) addressed to this session. Malformed ones are dropped
    /// and counted; duplicate and late shards change nothing.
    pub(crate) fn handle_parity(&mut self, now: Instant, from: SocketAddr, packet: &[u8]) {
        // Parity is not authenticated: only from where the peer's packets come, and only once
        // the peer proved it holds the keys.
        if self.state != State::Established || !self.confirmed || from != self.remote {
            return;
        }
        let Some(rx) = self.fec_rx.as_mut() else {
            // We never agreed to FEC: the peer is confused or it is garbage.
            self.stats.dropped_malformed += 1;
            return;
        };
        let Ok((header, shard)) = ParityHeader::parse(packet) else {
            self.stats.dropped_malformed += 1;
            return;
        };
        self.stats.fec_parity_received += 1;
        self.stats.bytes_received += packet.len() as u64;
        let mut out = std::mem::take(&mut self.fec_recovered);
        rx.on_parity(&header, shard, self.acks.largest(), &mut out);
        self.fec_recovered = out;
        self.handle_recovered(now);
    }

    fn handle_packet_once(
        &mut self,
        now: Instant,
        from: SocketAddr,
        header: &Header,
        packet: &mut [u8],
        recovered: bool,
    ) {
        if matches!(self.state, State::Closed) {
            return;
        }
        let header_len = header.len();
        if packet.len() < header_len + TAG_LEN {
            self.stats.dropped_malformed += 1;
            return;
        }
        let pn = decode_packet_number(self.acks.largest(), header.truncated_pn);
        if !self.replay.check(pn) {
            self.stats.dropped_replayed += 1;
            return;
        }
        // FEC works on sealed packets: keep this one as it came, before it is opened in place.
        let copy = self.fec_rx.as_mut().and_then(|rx| rx.copy(packet));
        let (head, body) = packet.split_at_mut(header_len);
        let Ok(plain) = self.rx.open(pn, header.key_phase, head, body) else {
            if let (Some(rx), Some(copy)) = (self.fec_rx.as_mut(), copy) {
                rx.discard(copy);
            }
            self.stats.dropped_auth += 1;
            return;
        };
        self.replay.accept(pn);
        if let (Some(rx), Some(copy)) = (self.fec_rx.as_mut(), copy) {
            let mut out = std::mem::take(&mut self.fec_recovered);
            rx.on_packet(now, pn, copy, recovered, &mut out);
            self.fec_recovered = out;
        }
        if recovered {
            self.stats.fec_packets_recovered += 1;
        }
        let plain: &[u8] = plain;
        // Validate every frame before acting on any, so a malformed packet changes nothing.
        let mut ack_eliciting = false;
        for frame in FrameIter::new(plain) {
            match frame {
                Ok(f) => ack_eliciting |= f.is_ack_eliciting(),
                Err(_) => {
                    self.stats.dropped_malformed += 1;
                    return;
                }
            }
        }
        if !recovered {
            // A rebuilt packet never arrived: it is counted in `fec_packets_recovered` only.
            self.stats.packets_received += 1;
            self.stats.bytes_received += packet_len(header_len, plain.len());
        }
        self.last_received = now;
        if from != self.remote && self.acks.largest().is_none_or(|l| pn > l) {
            // The peer's NAT rebound (or it moved); it proved itself by authenticating, and
            // only the newest packet counts, so a delayed or re-sent old one cannot redirect us.
            self.remote = from;
            self.stats.migrations += 1;
        }
        if !self.confirmed {
            self.confirmed = true;
            self.events.push_back(SessionEvent::Connected);
        }
        if self.state != State::Established {
            // Closing: only the peer's CLOSE matters now (it ends the wait early, silently:
            // the application already had its Closed event).
            let peer_closed = FrameIter::new(plain)
                .flatten()
                .any(|f| matches!(f, Frame::Close { .. }));
            if peer_closed && matches!(self.state, State::Closing { .. }) {
                self.state = State::Draining {
                    until: now + 3 * self.rtt.pto_base(),
                };
            }
            return;
        }
        self.acks.on_packet(
            now,
            pn,
            ack_eliciting,
            self.config.ack_every,
            self.config.max_ack_delay,
        );
        for frame in FrameIter::new(plain).flatten() {
            self.handle_frame(now, frame);
            if self.state != State::Established {
                break;
            }
        }
        // A sign of life: the path-dead clock restarts now if something is still waiting for
        // an answer, else with the next ack-eliciting packet.
        self.unanswered_since = (self.sent.ack_eliciting_in_flight > 0).then_some(now);
    }

    fn handle_frame(&mut self, now: Instant, frame: Frame<'_>) {
        match frame {
            Frame::Padding | Frame::Ping => {}
            Frame::Ack(ack) => self.handle_ack(now, &ack),
            Frame::LossReport {
                loss_ppm,
                burst_x100,
            } => {
                if let Some(tx) = self.fec_tx.as_mut() {
                    tx.on_loss_report(loss_ppm, burst_x100);
                }
            }
            Frame::Close { error_code, reason } => {
                self.state = State::Draining {
                    until: now + 3 * self.rtt.pto_base(),
                };
                self.events
                    .push_back(SessionEvent::Closed(CloseReason::Peer {
                        code: error_code,
                        reason: reason.to_vec(),
                    }));
            }
            Frame::Datagram { data } => {
                if self.datagrams_in.len() >= 1024 {
                    self.stats.datagrams_dropped += 1;
                } else {
                    self.datagrams_in.push_back(data.to_vec());
                    self.events.push_back(SessionEvent::DatagramReceived);
                }
            }
            f @ (Frame::Stream { .. }
            | Frame::Open { .. }
            | Frame::Reset { .. }
            | Frame::Window { .. }) => {
                if let Frame::Stream { data, .. } = f {
                    self.stats.stream_bytes_received += data.len() as u64;
                }
                if let Err(e) = self.streams.handle_frame(&f) {
                    let code = e.code();
                    self.close_frame = Some((close_code::PROTOCOL, code.to_string().into_bytes()));
                    self.state = State::Closing {
                        until: now + 3 * self.rtt.pto_base(),
                        close_sent: false,
                    };
                    self.events
                        .push_back(SessionEvent::Closed(CloseReason::Protocol { code }));
                }
            }
        }
    }

    fn handle_ack(&mut self, now: Instant, ack: &AckFrame<'_>) {
        if ack.largest >= self.next_pn {
            // Acknowledging what we never sent: a confused or lying peer. Ignore the frame.
            self.stats.dropped_malformed += 1;
            return;
        }
        let mut newly = std::mem::take(&mut self.scratch_pns);
        newly.clear();
        let floor = self.sent.ack_floor();
        for range in ack.ranges() {
            // Ranges come highest first; the rest repeat what earlier ACKs already said.
            if range.end <= floor {
                break;
            }
            self.sent.newly_acked(range, self.next_pn, &mut newly);
        }
        if newly.is_empty() {
            self.scratch_pns = newly;
            return;
        }
        let mut rtt_sample = None;
        let mut largest_ack_acked = None;
        // How long the peer held this ACK back (it acknowledges every few packets, or after at
        // most `max_ack_delay`). A larger claim is not believed.
        let ack_delay = Duration::from_micros(ack.ack_delay_us).min(self.config.max_ack_delay);
        for &pn in &newly {
            let Some(p) = self.sent.on_acked(pn) else {
                continue;
            };
            if p.fate == sent::Fate::Lost {
                // It arrived after all: the loss was spurious. Its frames were re-queued; the
                // acknowledgement below cancels what was not re-sent yet.
                self.stats.spurious_losses += 1;
                // Packet numbers are never reused, so the sample is exact. Without it a path
                // whose RTT exceeds the initial timeout would never be measured: every packet
                // would be declared lost before its ACK came back.
                if pn == ack.largest {
                    rtt_sample = Some(now.saturating_duration_since(p.time));
                }
                for f in self.sent.frames(&p) {
                    self.streams.on_frame_acked(f);
                }
                continue;
            }
            if pn == ack.largest {
                rtt_sample = Some(now.saturating_duration_since(p.time));
            }
            if let Some(snapshot) = &p.snapshot {
                self.cc
                    .on_packet_acked(now, snapshot, p.time, u64::from(p.size), ack_delay);
            }
            if let Some(l) = p.largest_ack_sent {
                largest_ack_acked = Some(largest_ack_acked.map_or(l, |m: u64| m.max(l)));
            }
            for f in self.sent.frames(&p) {
                self.streams.on_frame_acked(f);
            }
        }
        self.scratch_pns = newly;
        if let Some(l) = largest_ack_acked {
            self.acks.on_ack_acked(l);
        }
        if let Some(sample) = rtt_sample {
            self.rtt.update(ack_delay, sample);
        }
        self.pto_count = 0;
        self.detect_lost(now);
        self.cc
            .on_ack_processed(now, &self.rtt, self.sent.bytes_in_flight);
        // The burst follows the rate, so GSO batches grow with it.
        self.pacer.set_burst(Pacer::burst_for(
            self.cc.pacing_rate(),
            self.config.mtu as u64,
        ));
        self.compact(now);
    }

    fn loss_delay(&self) -> Duration {
        let rtt = self.rtt.smoothed().max(self.rtt.latest());
        rtt.mul_f32(self.config.time_threshold)
            .max(Duration::from_millis(1))
    }

    fn detect_lost(&mut self, now: Instant) {
        let delay = self.loss_delay();
        let (lost, next) = self
            .sent
            .detect_lost(self.config.packet_threshold, now, delay);
        self.loss_time = next;
        for pn in lost {
            self.declare_lost(now, pn);
        }
    }

    fn declare_lost(&mut self, now: Instant, pn: u64) {
        let Some(p) = self.sent.on_lost(pn) else {
            return;
        };
        self.stats.packets_lost += 1;
        if let Some(snapshot) = &p.snapshot {
            self.cc
                .on_packet_lost(now, snapshot, p.time, u64::from(p.size));
        }
        for f in self.sent.frames(&p) {
            if let SentFrame::Stream { len, .. } = f {
                self.stats.stream_bytes_retransmitted += u64::from(*len);
                self.stats.stream_frames_retransmitted += 1;
            }
            self.streams.on_frame_lost(f);
        }
    }

    fn compact(&mut self, now: Instant) {
        let keep = now.checked_sub(4 * self.rtt.pto_base()).unwrap_or(now);
        self.sent.compact(keep);
    }

    fn pto_deadline(&self) -> Option<Instant> {
        if self.sent.ack_eliciting_in_flight == 0 {
            return None;
        }
        Some(self.last_eliciting_sent? + self.rtt.rto(self.pto_count))
    }

    fn idle_deadline(&self) -> Instant {
        self.last_received + self.config.idle_timeout
    }

    /// When the path counts as dead, if ack-eliciting packets are waiting for an answer. Never
    /// sooner than three probe timeouts, so a long (or inflated) RTT is not taken for an outage.
    fn path_deadline(&self) -> Option<Instant> {
        let since = self.unanswered_since?;
        Some(since + self.config.path_timeout.max(3 * self.rtt.pto_base()))
    }

    /// The peer sent a valid stateless reset: it has forgotten the session, so there is no one
    /// to tell. Ends the session at once, sending nothing.
    pub(crate) fn on_peer_reset(&mut self) {
        let announce = self.state == State::Established;
        self.state = State::Closed;
        if announce {
            self.events
                .push_back(SessionEvent::Closed(CloseReason::PeerReset));
        }
    }

    /// Handles every timer that is due.
    pub fn handle_timeout(&mut self, now: Instant) {
        match self.state {
            State::Closing { until, .. } | State::Draining { until } if now >= until => {
                self.state = State::Closed;
                return;
            }
            State::Closed => return,
            _ => {}
        }
        if !self.confirmed && now >= self.created + self.config.handshake_timeout {
            // A half-open session (the dialler never proved it finished the handshake, e.g.
            // a replayed message 1): drop it quietly; the application never saw it.
            self.state = State::Closed;
            return;
        }
        if now >= self.idle_deadline() {
            self.state = State::Closed;
            self.events
                .push_back(SessionEvent::Closed(CloseReason::IdleTimeout));
            return;
        }
        if self.state != State::Established {
            return;
        }
        if self.path_deadline().is_some_and(|t| now >= t) {
            // Closed without a CLOSE frame: nothing gets through anyway, and the peer (if it
            // still hears us) learns from a stateless reset once our session is gone.
            self.state = State::Closed;
            self.events
                .push_back(SessionEvent::Closed(CloseReason::PathDead));
            return;
        }
        if self.loss_time.is_some_and(|t| t <= now) {
            self.detect_lost(now);
        }
        if self.pto_deadline().is_some_and(|t| t <= now) {
            self.on_pto(now);
        }
        if now >= self.last_sent + self.config.keepalive {
            self.ping_pending = true;
        }
        self.close_due_groups(now);
        self.compact(now);
    }

    /// Closes the FEC groups that have waited long enough for more packets.
    fn close_due_groups(&mut self, now: Instant) {
        let Some(tx) = self.fec_tx.as_mut() else {
            return;
        };
        let due: Vec<usize> = tx.due(now).collect();
        let backlog = self.wants_to_send_eliciting();
        for lane in due {
            let Some(tx) = self.fec_tx.as_mut() else {
                return;
            };
            let closed = tx.close(lane, backlog, self.remote_id);
            self.on_group_closed(now, &closed);
        }
    }

    /// A FEC group closed: with parity on its way, its members are judged lost only from the
    /// packets sent after the parity (else the sender would retransmit what the receiver is
    /// about to rebuild); without, by their own numbers again.
    fn on_group_closed(&mut self, now: Instant, closed: &ClosedGroup) {
        let last_sent = self.next_pn.saturating_sub(1);
        for pn in closed.members() {
            if closed.protected {
                self.sent.release_from_group(pn, last_sent, now);
            } else {
                self.sent.restore_loss_ref(pn);
            }
        }
    }

    /// The retransmission timeout fired: everything in flight for longer than the timeout is
    /// lost, and a probe goes out even if the window is full.
    fn on_pto(&mut self, now: Instant) {
        self.stats.timeouts += 1;
        let rto = self.rtt.rto(self.pto_count);
        self.pto_count = self.pto_count.saturating_add(1);
        self.cc.on_rto(now);
        let cutoff = now.checked_sub(rto).unwrap_or(now);
        for pn in self.sent.in_flight_before(cutoff) {
            self.declare_lost(now, pn);
        }
        self.probes = 2;
        if !self.streams.wants_to_send() {
            self.ping_pending = true;
        }
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut t = match self.state {
            State::Closed => return None,
            State::Closing { until, close_sent } => {
                return Some(if close_sent { until } else { self.last_sent });
            }
            State::Draining { until } => return Some(until),
            State::Established if !self.confirmed => {
                return Some(self.created + self.config.handshake_timeout);
            }
            State::Established => self.idle_deadline(),
        };
        let mut min = |x: Option<Instant>| {
            if let Some(x) = x {
                t = t.min(x);
            }
        };
        min(self.acks.deadline());
        min(self.loss_time);
        min(self.pto_deadline());
        min(self.path_deadline());
        min(self.fec_tx.as_ref().and_then(FecSender::deadline));
        if !self.ping_pending {
            min(Some(self.last_sent + self.config.keepalive));
        }
        if self.wants_to_send_eliciting() {
            // Only set while the window is open: a full window waits for ACKs, not the clock.
            min(self.pacing_wakeup);
        }
        Some(t)
    }

    fn wants_to_send_eliciting(&self) -> bool {
        self.ping_pending
            || !self.datagrams_out.is_empty()
            || self.probes > 0
            || self.streams.wants_to_send()
    }

    // ---- output ----

    /// Writes up to `config.max_segments` datagrams into `buf` (a GSO batch), or returns None
    /// when nothing may be sent now (see [`Session::poll_timeout`]).
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        if let Some(t) = self.poll_parity(now, buf) {
            return Some(t);
        }
        let mtu = self.config.packet_limit();
        let mut size = 0;
        let mut segment_size = None;
        let mut segments = 0;
        while segments < self.config.max_segments {
            let cap = segment_size.unwrap_or(mtu);
            let Some(out) = buf.get_mut(size..size + cap) else {
                break;
            };
            let Some(n) = self.write_packet(now, out) else {
                break;
            };
            segments += 1;
            size += n;
            if self.fec_tx.as_ref().is_some_and(FecSender::has_parity) {
                // A group just closed: its parity goes before anything sent after it. (This
                // packet may be shorter than the batch's segments: GSO allows that of the last.)
                if segment_size.is_none() {
                    segment_size = Some(n);
                }
                break;
            }
            match segment_size {
                // Only full-size packets are worth batching; a short one goes out alone.
                None if n < mtu => break,
                None => segment_size = Some(n),
                Some(s) if n < s => break,
                Some(_) => {}
            }
        }
        if segments == 0 {
            return None;
        }
        Some(Transmit {
            destination: self.remote,
            size,
            segment_size: (segments > 1).then_some(segment_size.unwrap_or(size)),
        })
    }

    /// Writes the parity packets that are ready (one GSO batch: a group's shards are all of one
    /// length). Neither the congestion window nor the pacer holds them back: they are only
    /// worth sending right behind their group. Their bytes were charged to rate control with
    /// the data packets they protect ([`FecSender::charged_size`]).
    fn poll_parity(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        if self.state != State::Established {
            return None;
        }
        let tx = self.fec_tx.as_mut()?;
        let mut batch = tx.poll_parity()?;
        let len = batch.packets.first()?.len();
        let mut size = 0;
        let mut sent = 0;
        for packet in &batch.packets {
            if sent == self.config.max_segments.max(1) {
                break;
            }
            let Some(out) = buf.get_mut(size..size + packet.len()) else {
                break;
            };
            out.copy_from_slice(packet);
            size += packet.len();
            sent += 1;
        }
        if sent < batch.packets.len() {
            batch.packets.drain(..sent);
            tx.requeue(batch);
        }
        if sent == 0 {
            return None;
        }
        self.stats.bytes_sent += size as u64;
        self.last_sent = now;
        Some(Transmit {
            destination: self.remote,
            size,
            segment_size: (sent > 1).then_some(len),
        })
    }

    /// Builds one packet into `out`, or decides that nothing should be sent now.
    fn write_packet(&mut self, now: Instant, out: &mut [u8]) -> Option<usize> {
        // An unconfirmed session may be a replayed handshake: it sends nothing, so it cannot
        // be used to reflect traffic at a spoofed address.
        if !self.confirmed {
            return None;
        }
        let send_close = match self.state {
            State::Established => false,
            State::Closing {
                close_sent: false, ..
            } => true,
            _ => return None,
        };
        let ack_due = self.acks.is_due(now);
        let mut eliciting = send_close;
        if !send_close && self.wants_to_send_eliciting() {
            let probe = self.probes > 0;
            let window_open = self.sent.bytes_in_flight + self.config.mtu as u64 <= self.cc.cwnd();
            if !probe && !window_open {
                self.pacing_wakeup = None;
            }
            if probe || window_open {
                let rate = self.cc.pacing_rate();
                match self.pacer.delay_until(now, rate, self.config.mtu as u64) {
                    Some(_) if !probe => {
                        // Wake when a batch is due, not each packet: one wake-up per packet
                        // cost ~30 us of CPU per packet per node at 100 Mbit/s (timer, ring
                        // enter, a one-segment send), 10x the cost per byte of a fast link.
                        // The bucket holds 1 ms of data (at least two packets), so this adds
                        // at most that much delay to a paced packet.
                        let batch = (self.config.mtu * self.config.max_segments.max(1)) as u64;
                        let quantum = self.pacer.burst().min(batch);
                        self.pacing_wakeup = self.pacer.delay_until(now, rate, quantum);
                    }
                    _ => {
                        self.pacing_wakeup = None;
                        eliciting = true;
                    }
                }
            }
        }
        if !eliciting && !ack_due {
            return None;
        }

        if self.tx.maybe_update(now, self.sent.largest_acked()) {
            self.stats.key_updates += 1;
        }
        let pn = self.next_pn;
        let header = Header::data(self.remote_id, self.tx.key_phase(), pn);
        let body_end = out.len().checked_sub(TAG_LEN)?;
        let (head_and_body, _) = out.split_at_mut(body_end);
        let mut w = Writer::new(head_and_body);
        header.emit(&mut w).ok()?;
        let header_len = w.len();

        let mut largest_ack_sent = None;
        if self.acks.has_pending() || ack_due {
            let delay = self.acks.ack_delay(now).as_micros() as u64;
            if let Ok(n) = AckFrame::encode(&mut w, delay, self.acks.ranges(), MAX_ACK_RANGES)
                && n > 0
            {
                largest_ack_sent = self.acks.largest();
                self.acks.on_ack_sent();
            }
        }
        if let Some(rx) = self.fec_rx.as_mut()
            && let Some(report) = rx.report()
            && report.encode(&mut w).is_ok()
        {
            rx.on_report_sent();
        }
        let mut frames = std::mem::take(&mut self.scratch_frames);
        frames.clear();
        if send_close {
            if let Some((code, reason)) = &self.close_frame {
                let reason = &reason[..reason.len().min(w.remaining().saturating_sub(16))];
                let _ = Frame::Close {
                    error_code: *code,
                    reason,
                }
                .encode(&mut w);
            }
        } else if eliciting {
            let before_eliciting = w.len();
            if self.ping_pending || (self.probes > 0 && !self.streams.wants_to_send()) {
                let _ = Frame::Ping.encode(&mut w);
                self.ping_pending = false;
            }
            // Datagrams and streams take turns going first, so neither starves the other.
            let datagrams_first = pn.is_multiple_of(2);
            if datagrams_first {
                self.write_datagrams(&mut w);
            }
            self.streams
                .write_frames(now, self.rtt.smoothed(), &mut w, &mut frames);
            if !datagrams_first {
                self.write_datagrams(&mut w);
            }
            if w.len() == before_eliciting {
                // The streams had nothing after all; make the packet worth its number.
                let _ = Frame::Ping.encode(&mut w);
            }
            self.probes = self.probes.saturating_sub(1);
        }
        if send_close && let State::Closing { until, .. } = self.state {
            self.state = State::Closing {
                until,
                close_sent: true,
            };
        }
        let body_len = w.len() - header_len;
        let (head, body) = out.split_at_mut(header_len);
        let tag = self.tx.seal(pn, head, &mut body[..body_len]);
        body[body_len..body_len + TAG_LEN].copy_from_slice(&tag);
        let size = header_len + body_len + TAG_LEN;

        self.next_pn += 1;
        self.stats.packets_sent += 1;
        self.stats.bytes_sent += size as u64;
        for f in &frames {
            if let SentFrame::Stream { len, .. } = f {
                self.stats.stream_bytes_sent += u64::from(*len);
            }
        }
        self.last_sent = now;
        // What rate control counts: with fixed FEC, the packet's share of its parity as well.
        let charged = self
            .fec_tx
            .as_ref()
            .map_or(size as u64, |tx| tx.charged_size(size as u64));
        // ACK-only packets are invisible to the rate controller (they are not in flight).
        let snapshot = eliciting.then(|| {
            self.pacer.on_sent(now, charged);
            self.last_eliciting_sent = Some(now);
            // A CLOSE is ack-eliciting too, but the session is over then: only Established
            // sessions look at this.
            self.unanswered_since.get_or_insert(now);
            self.cc
                .on_packet_sent(now, charged, self.sent.bytes_in_flight)
        });
        let packet = SentPackets::new_packet(now, charged as u32, snapshot, largest_ack_sent);
        self.sent.push(pn, packet, &frames);
        if self.fec_tx.is_some() && !send_close {
            let flush = fec::flush_delay(self.rtt.smoothed());
            if eliciting {
                self.sent.hold_for_group(pn, now + flush);
            }
            let backlog = self.wants_to_send_eliciting();
            let remote_id = self.remote_id;
            let closed = self.fec_tx.as_mut().and_then(|tx| {
                tx.on_sent(now, pn, &out[..size], eliciting, flush, backlog, remote_id)
            });
            if let Some(closed) = closed {
                self.on_group_closed(now, &closed);
            }
        }
        if eliciting && !self.wants_to_send_eliciting() {
            self.cc.on_app_limited(self.sent.bytes_in_flight);
        }
        self.scratch_frames = frames;
        Some(size)
    }
}

#[cfg(test)]
impl Session {
    /// How many sent packets are still remembered.
    pub(crate) fn tracked_sent(&self) -> usize {
        self.sent.len()
    }

    /// The frames of the packet sent last (for tests that drop packets by content).
    pub(crate) fn last_packet_frames(&self) -> Vec<SentFrame> {
        let Some(pn) = self.next_pn.checked_sub(1) else {
            return Vec::new();
        };
        match self.sent.get(pn) {
            Some(p) => self.sent.frames(p).copied().collect(),
            None => Vec::new(),
        }
    }
}

impl Session {
    /// Appends as many queued datagrams as fit.
    fn write_datagrams(&mut self, w: &mut Writer<'_>) {
        while let Some(d) = self.datagrams_out.front() {
            let f = Frame::Datagram { data: d };
            if f.encoded_len() > w.remaining() {
                break;
            }
            let _ = f.encode(w);
            self.datagrams_out.pop_front();
            self.stats.datagrams_sent += 1;
        }
    }
}

/// Bytes a packet occupied on the wire (before the IP/UDP headers).
fn packet_len(header_len: usize, plain_len: usize) -> u64 {
    (header_len + plain_len + TAG_LEN) as u64
}
