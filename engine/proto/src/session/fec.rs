//! Forward error correction inside a session: groups of sealed packets, their parity packets,
//! recovery on the receiving side, and the adaptive choice of how much parity to send.
//!
//! **What is protected.** The sealed datagrams of the session, exactly as sent. A packet
//! recovered from parity is therefore handed to the normal receive path: it must authenticate,
//! pass the replay window, and is acknowledged like any other packet, so the sender never
//! retransmits it. Parity itself is not sealed (see [`ParityHeader`]): a forged shard can only
//! produce a packet that fails the AEAD, or spoil one group's recovery (one attempt per group).
//! What a forger can make the receiver keep or compute is bounded: parity of the agreed shape
//! only, for groups near the window, [`MAX_SHARD_LEN`] per shard, [`PARITY_BUDGET`] in all.
//!
//! **Groups.** Every packet of the session belongs to one: packet number `n` goes to lane
//! `n mod interleave`, and each lane collects consecutive packets of its own into a group until
//! it holds `data` of them or the group is [`flush_delay`] old; then it closes and its parity
//! packets (all of one length, sent as one batch) follow. A group whose members are all
//! ACK-only gets no parity, nor does a lane that saw nothing (no parity across idle gaps). The
//! receiver keeps a copy of each recent sealed packet so that the parity packets, which name
//! their group by its first packet number, stride and size, can rebuild what is missing.
//!
//! **Adaptive parity** ([`FecMode::Adaptive`]). The receiver measures its raw loss (before
//! recovery; recovered packets are acknowledged, so the sender cannot see it) and the mean
//! length of loss bursts, and reports both in LOSS_REPORT frames. The sender then picks, per
//! group, the fewest parity packets that bring the chance of losing the group below
//! [`RESIDUAL_TARGET`], modelling bursts as runs in which each further packet is lost with
//! probability `1 - 1/burst`. Groups closed while the sender still had data waiting get none:
//! such a flow is limited by the path, every parity byte displaces a data byte, and a
//! retransmission (which costs only what was lost) is cheaper. Interactive traffic, which
//! leaves the sender idle between small groups, gets the most: its groups are small and a
//! retransmission would cost it a whole round trip.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use crate::config::{FecConfig, FecMode};
use crate::fec::{Codec, ErasureCode, pack, shard_len_for, unpack};
use crate::wire::{Frame, Header, PacketType, ParityHeader, SessionId, Writer};

/// Adaptive parity aims to lose at most this share of groups (before retransmission).
pub(crate) const RESIDUAL_TARGET: f64 = 1e-3;

/// Below this reported loss, adaptive mode sends no parity at all.
const MIN_LOSS: f64 = 1e-3;

/// The loss adaptive mode assumes until the receiver's first report (about half a second in):
/// interactive traffic is protected from its first packet (one parity packet per small group),
/// bulk traffic sends none either way.
const PRIOR_LOSS: f64 = 0.01;

/// The receiver reports its loss once it has seen this many packets since the last report...
const REPORT_PACKETS: u64 = 200;
/// ... or this much time passed (with at least [`REPORT_MIN_PACKETS`] seen).
const REPORT_INTERVAL: Duration = Duration::from_millis(500);
const REPORT_MIN_PACKETS: u64 = 20;

/// At most this many groups the receiver has parity for but could not complete yet.
const MAX_PENDING_GROUPS: usize = 256;

/// Parity packets are not authenticated, so what a session keeps of them is bounded: shards no
/// longer than this (a jumbo-frame MTU and then some)...
const MAX_SHARD_LEN: usize = 16 * 1024;
/// ... and at most this many shard bytes held per session; the oldest groups go first.
const PARITY_BUDGET: usize = 1 << 20;

/// How long a group stays open at most: long enough to gather a few packets of a busy flow,
/// short against the round trip, so recovery comes long before a retransmission could.
pub(crate) fn flush_delay(srtt: Duration) -> Duration {
    (srtt / 8).clamp(Duration::from_millis(1), Duration::from_millis(5))
}

/// Erasure codes by group shape, built on first use.
#[derive(Debug, Default)]
struct Codecs {
    by_shape: BTreeMap<(u8, u8), Codec>,
}

impl Codecs {
    fn get(&mut self, data: u8, parity: u8) -> Option<&mut Codec> {
        if let std::collections::btree_map::Entry::Vacant(e) = self.by_shape.entry((data, parity)) {
            e.insert(Codec::new(usize::from(data), usize::from(parity)).ok()?);
        }
        self.by_shape.get_mut(&(data, parity))
    }
}

/// What closing a group means for loss detection of its members: packets `first_pn`,
/// `first_pn + stride`, ... (`count` of them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ClosedGroup {
    pub first_pn: u64,
    pub stride: u64,
    pub count: usize,
    /// Whether parity was sent for it.
    pub protected: bool,
}

impl ClosedGroup {
    pub fn members(&self) -> impl Iterator<Item = u64> + use<> {
        let (first, stride) = (self.first_pn, self.stride);
        (0..self.count as u64).map(move |j| first + j * stride)
    }
}

/// One lane's open group on the sending side.
#[derive(Debug, Default)]
struct OpenGroup {
    first_pn: u64,
    /// Sealed copies of the members, in packet-number order (`first_pn`, `first_pn + stride`,
    /// ...). The vector is kept across groups; the copies' buffers go back to the pool.
    members: Vec<Vec<u8>>,
    /// Whether any member is ack-eliciting (otherwise nothing needs recovering).
    eliciting: bool,
    deadline: Option<Instant>,
}

/// Parity packets ready to send, all of one length.
#[derive(Debug)]
pub(crate) struct ParityBatch {
    pub packets: Vec<Vec<u8>>,
}

#[derive(Debug)]
pub(crate) struct FecSender {
    config: FecConfig,
    lanes: Vec<OpenGroup>,
    codecs: Codecs,
    ready: VecDeque<ParityBatch>,
    spare: Vec<Vec<u8>>,
    peer_loss: f64,
    peer_burst: f64,
    pub groups_sent: u64,
    pub parity_sent: u64,
    pub last_ratio: f64,
}

impl FecSender {
    pub fn new(config: FecConfig) -> Self {
        Self {
            config,
            lanes: (0..config.interleave.max(1))
                .map(|_| OpenGroup::default())
                .collect(),
            codecs: Codecs::default(),
            ready: VecDeque::new(),
            spare: Vec::new(),
            peer_loss: PRIOR_LOSS,
            peer_burst: 1.0,
            groups_sent: 0,
            parity_sent: 0,
            last_ratio: 0.0,
        }
    }

    pub fn peer_loss(&self) -> f64 {
        self.peer_loss
    }

    pub fn on_loss_report(&mut self, loss_ppm: u32, burst_x100: u32) {
        self.peer_loss = f64::from(loss_ppm) / 1e6;
        self.peer_burst = f64::from(burst_x100) / 100.0;
    }

    fn max_data(&self) -> u8 {
        match self.config.mode {
            FecMode::Off => 1,
            FecMode::Fixed { data, .. } | FecMode::Adaptive { data } => data,
        }
    }

    /// Records packet `pn` (sealed, as sent). Returns the group it completed, if any; the
    /// group's parity is then waiting in [`FecSender::poll_parity`]. `backlog`: whether the
    /// sender has more data waiting right now.
    #[allow(clippy::too_many_arguments)]
    pub fn on_sent(
        &mut self,
        now: Instant,
        pn: u64,
        packet: &[u8],
        eliciting: bool,
        flush: Duration,
        backlog: bool,
        session: SessionId,
    ) -> Option<ClosedGroup> {
        let lane_count = self.lanes.len() as u64;
        let lane = (pn % lane_count) as usize;
        let max_data = usize::from(self.max_data());
        let mut buf = self.spare.pop().unwrap_or_default();
        buf.clear();
        buf.extend_from_slice(packet);
        let group = self.lanes.get_mut(lane)?;
        if group.members.is_empty() {
            group.first_pn = pn;
            group.deadline = Some(now + flush);
        }
        group.members.push(buf);
        group.eliciting |= eliciting;
        if group.members.len() >= max_data {
            return Some(self.close(lane, backlog, session));
        }
        None
    }

    /// The earliest time an open group must close.
    pub fn deadline(&self) -> Option<Instant> {
        self.lanes.iter().filter_map(|g| g.deadline).min()
    }

    /// The lanes whose group is due at `now`.
    pub fn due(&self, now: Instant) -> impl Iterator<Item = usize> + '_ {
        self.lanes
            .iter()
            .enumerate()
            .filter(move |(_, g)| g.deadline.is_some_and(|d| d <= now))
            .map(|(i, _)| i)
    }

    /// Closes lane `lane`'s group (if open): picks the parity count and queues the parity.
    pub fn close(&mut self, lane: usize, backlog: bool, session: SessionId) -> ClosedGroup {
        let stride = self.lanes.len() as u64;
        let Some(group) = self.lanes.get_mut(lane) else {
            return ClosedGroup {
                first_pn: 0,
                stride,
                count: 0,
                protected: false,
            };
        };
        let mut members = std::mem::take(&mut group.members);
        let eliciting = std::mem::replace(&mut group.eliciting, false);
        let first_pn = group.first_pn;
        group.deadline = None;
        let data = members.len();
        let parity = if eliciting && data > 0 {
            self.parity_for(data, backlog)
        } else {
            0
        };
        let mut protected = false;
        if parity > 0 && data <= usize::from(FecConfig::MAX_DATA) {
            let header = ParityHeader {
                session_id: session,
                first_pn: first_pn as u32,
                stride: self.lanes.len() as u8,
                data: data as u8,
                parity,
                index: 0,
            };
            if let Some(batch) = self.encode(&header, &members) {
                self.groups_sent += 1;
                self.parity_sent += u64::from(parity);
                self.ready.push_back(batch);
                protected = true;
            }
        }
        // ACK-only groups need no protection and decide nothing: the ratio is that of the last
        // group that carried something to protect.
        if data > 0 && eliciting {
            self.last_ratio = if protected {
                f64::from(parity) / data as f64
            } else {
                0.0
            };
        }
        // `append` leaves `members` empty with its capacity, for the lane's next group.
        self.spare.append(&mut members);
        if let Some(group) = self.lanes.get_mut(lane) {
            group.members = members;
        }
        ClosedGroup {
            first_pn,
            stride,
            count: data,
            protected,
        }
    }

    /// Parity packets for a group of `data` members.
    fn parity_for(&self, data: usize, backlog: bool) -> u8 {
        match self.config.mode {
            FecMode::Off => 0,
            FecMode::Fixed { parity, .. } => parity,
            FecMode::Adaptive { .. } if backlog => 0,
            FecMode::Adaptive { .. } => {
                // Interleaving is configured for links that lose packets in bursts; bursts look
                // shorter from the receiver (parity packets between data packets hide part of
                // them), so the interleaving depth is the least burst assumed.
                let burst = self.peer_burst.max(f64::from(self.config.interleave));
                adaptive_parity(data, self.peer_loss, burst)
            }
        }
    }

    fn encode(&mut self, header: &ParityHeader, members: &[Vec<u8>]) -> Option<ParityBatch> {
        let longest = members.iter().map(Vec::len).max()?;
        let shard_len = shard_len_for(longest).ok()?;
        let mut data_shards: Vec<Vec<u8>> = Vec::with_capacity(members.len());
        for m in members {
            let mut shard = vec![0u8; shard_len];
            pack(m, &mut shard).ok()?;
            data_shards.push(shard);
        }
        let mut parity = vec![vec![0u8; shard_len]; usize::from(header.parity)];
        self.codecs
            .get(header.data, header.parity)?
            .encode(&data_shards, &mut parity)
            .ok()?;
        let mut packets = Vec::with_capacity(parity.len());
        for (index, shard) in parity.iter().enumerate() {
            let mut packet = vec![0u8; ParityHeader::LEN + shard_len];
            let h = ParityHeader {
                index: index as u8,
                ..*header
            };
            h.emit(&mut Writer::new(&mut packet)).ok()?;
            packet.get_mut(ParityHeader::LEN..)?.copy_from_slice(shard);
            packets.push(packet);
        }
        Some(ParityBatch { packets })
    }

    /// The next batch of parity packets to send.
    pub fn poll_parity(&mut self) -> Option<ParityBatch> {
        self.ready.pop_front()
    }

    /// Bytes a data packet of `size` bytes stands for in rate control: in fixed mode its share
    /// of its group's parity too. Rate control only hears of data packets; if parity took a
    /// share of the pacing rate unseen, every delivery-rate sample would come out low by that
    /// share and the estimate would spiral down (a fixed 10+3 run fell to a quarter of the
    /// link). Adaptive parity needs no charge: it is only sent when the sender is idle.
    pub fn charged_size(&self, size: u64) -> u64 {
        match self.config.mode {
            FecMode::Fixed { data, parity } => {
                size + size * u64::from(parity) / u64::from(data.max(1))
            }
            FecMode::Off | FecMode::Adaptive { .. } => size,
        }
    }

    /// Puts back the part of a batch that did not fit one send.
    pub fn requeue(&mut self, batch: ParityBatch) {
        self.ready.push_front(batch);
    }

    pub fn has_parity(&self) -> bool {
        !self.ready.is_empty()
    }
}

/// The fewest parity packets for a group of `data` packets that keep the chance of losing it
/// below [`RESIDUAL_TARGET`] at raw loss `loss` with bursts of mean length `burst`.
///
/// A group is lost when one of its packets is lost (`data * loss`, union bound) and so is every
/// parity packet after it; within a burst each further packet is lost with probability
/// `q = max(loss, 1 - 1/burst)`. Small groups get the most parity per packet: their parity is
/// cheap in bytes, and what it saves (a round trip) is the whole latency of interactive
/// traffic. Capped at [`FecConfig::MAX_PARITY`], and at the group size from four packets up.
pub(crate) fn adaptive_parity(data: usize, loss: f64, burst: f64) -> u8 {
    if loss < MIN_LOSS || data == 0 {
        return 0;
    }
    let loss = loss.min(0.5);
    let q = loss.max(1.0 - 1.0 / burst.max(1.0)).min(0.95);
    let cap = if data >= 4 {
        data.min(usize::from(FecConfig::MAX_PARITY))
    } else {
        usize::from(FecConfig::MAX_PARITY)
    };
    let mut residual = data as f64 * loss;
    for m in 1..=cap {
        residual *= q;
        if residual <= RESIDUAL_TARGET {
            return m as u8;
        }
    }
    cap as u8
}

/// A group the receiver has parity for.
#[derive(Debug)]
struct PendingGroup {
    stride: u8,
    data: u8,
    parity: u8,
    shard_len: usize,
    /// Parity shards by index.
    shards: Vec<Option<Vec<u8>>>,
    /// Recovered, or found complete: later shards are ignored.
    done: bool,
}

impl PendingGroup {
    fn stored_bytes(&self) -> usize {
        self.shards.iter().flatten().map(Vec::len).sum()
    }

    fn members(&self, first_pn: u64) -> impl Iterator<Item = u64> + '_ {
        (0..u64::from(self.data)).map(move |j| first_pn + j * u64::from(self.stride))
    }

    fn last_pn(&self, first_pn: u64) -> u64 {
        first_pn + (u64::from(self.data) - 1) * u64::from(self.stride)
    }
}

/// Raw loss seen by the receiver, before recovery.
#[derive(Debug, Default)]
struct LossMeter {
    top: Option<u64>,
    /// Packet numbers passed since the last report, and how many of them arrived directly.
    expected: u64,
    arrived: u64,
    /// Gaps seen (bursts) and packets missing in them, since the last report.
    bursts: u64,
    missing: u64,
    since: Option<Instant>,
    samples: u64,
    loss: f64,
    burst: f64,
    report_due: bool,
}

impl LossMeter {
    fn on_arrival(&mut self, now: Instant, pn: u64) {
        self.since.get_or_insert(now);
        match self.top {
            Some(top) if pn <= top => {
                // Late (reordered): it was counted missing in its gap.
                self.arrived += 1;
            }
            top => {
                let gap = top.map_or(0, |t| pn - t - 1);
                if gap > 0 {
                    self.bursts += 1;
                    self.missing += gap;
                }
                self.expected += gap + 1;
                self.arrived += 1;
                self.top = Some(pn);
            }
        }
        let waited = self.since.is_some_and(|s| now >= s + REPORT_INTERVAL);
        if self.expected >= REPORT_PACKETS || (waited && self.expected >= REPORT_MIN_PACKETS) {
            let sample = 1.0 - (self.arrived.min(self.expected) as f64 / self.expected as f64);
            // A quarter weight per sample: one lucky or unlucky second moves it, a few settle it.
            let burst = if self.bursts > 0 {
                self.missing as f64 / self.bursts as f64
            } else {
                1.0
            };
            if self.samples == 0 {
                self.loss = sample;
                self.burst = burst;
            } else {
                self.loss = 0.75 * self.loss + 0.25 * sample;
                self.burst = 0.75 * self.burst + 0.25 * burst;
            }
            self.samples += 1;
            self.report_due = true;
            self.expected = 0;
            self.arrived = 0;
            self.bursts = 0;
            self.missing = 0;
            self.since = Some(now);
        }
    }
}

#[derive(Debug)]
pub(crate) struct FecReceiver {
    /// The negotiated settings (the same on both ends): parity of any other shape is refused.
    config: FecConfig,
    /// Sealed copies of recent packets, by packet number from `base`.
    window: VecDeque<Option<Vec<u8>>>,
    base: u64,
    span: u64,
    pending: BTreeMap<u64, PendingGroup>,
    /// Shard bytes held in `pending`.
    stored: usize,
    codecs: Codecs,
    spare: Vec<Vec<u8>>,
    meter: LossMeter,
    pub groups_unrecoverable: u64,
}

/// A packet rebuilt from parity, to be handled like a received one.
pub(crate) type Recovered = Vec<Vec<u8>>;

impl FecReceiver {
    pub fn new(config: FecConfig) -> Self {
        let data = u64::from(FecConfig::MAX_DATA.min(match config.mode {
            FecMode::Off => 1,
            FecMode::Fixed { data, .. } | FecMode::Adaptive { data } => data,
        }));
        Self {
            config,
            window: VecDeque::new(),
            base: 0,
            // Room for the widest group plus the packets sent after it before its parity
            // arrives (other lanes, reordering).
            span: (2 * data * u64::from(config.interleave.max(1))).max(64),
            pending: BTreeMap::new(),
            stored: 0,
            codecs: Codecs::default(),
            spare: Vec::new(),
            meter: LossMeter {
                burst: 1.0,
                ..LossMeter::default()
            },
            groups_unrecoverable: 0,
        }
    }

    /// A buffer holding a copy of `packet`, taken before it is decrypted in place.
    /// A copy of `packet`, taken before it is decrypted in place; None for a datagram too long
    /// to be a member of any group (it is not authenticated yet, and a buffer that size would
    /// stay in the pool).
    pub fn copy(&mut self, packet: &[u8]) -> Option<Vec<u8>> {
        if packet.len() + crate::fec::LEN_PREFIX > MAX_SHARD_LEN {
            return None;
        }
        let mut buf = self.spare.pop().unwrap_or_default();
        buf.clear();
        buf.extend_from_slice(packet);
        Some(buf)
    }

    /// The copy did not authenticate: recycle it.
    pub fn discard(&mut self, buf: Vec<u8>) {
        self.spare.push(buf);
    }

    /// Packet `pn` authenticated (`copy` is its sealed form). `recovered`: it was rebuilt from
    /// parity (so it does not count as arrived for the loss report). Returns the packets of
    /// groups this completes.
    pub fn on_packet(
        &mut self,
        now: Instant,
        pn: u64,
        copy: Vec<u8>,
        recovered: bool,
        out: &mut Recovered,
    ) {
        if !recovered {
            self.meter.on_arrival(now, pn);
        }
        if pn < self.base {
            self.spare.push(copy);
            return;
        }
        self.advance(pn);
        let Some(slot) = usize::try_from(pn - self.base)
            .ok()
            .and_then(|i| self.window.get_mut(i))
        else {
            self.spare.push(copy);
            return;
        };
        if let Some(old) = slot.replace(copy) {
            self.spare.push(old);
        }
        // The group this packet belongs to, if its parity came first.
        let first = self
            .pending
            .range(..=pn)
            .rev()
            .take(MAX_PENDING_GROUPS)
            .find(|(first, g)| {
                !g.done
                    && (pn - **first).is_multiple_of(u64::from(g.stride))
                    && pn <= g.last_pn(**first)
            })
            .map(|(first, _)| *first);
        if let Some(first) = first {
            self.try_recover(first, out);
        }
    }

    /// Moves the window so that it ends at `pn`, dropping (and judging) what falls out.
    fn advance(&mut self, pn: u64) {
        let end = self.base + self.window.len() as u64;
        if pn >= end + self.span {
            // A jump past the whole window (an authenticated peer may skip numbers): start over
            // rather than walk every number in between.
            for buf in self.window.drain(..).flatten() {
                self.spare.push(buf);
            }
            self.base = pn + 1 - self.span;
        }
        let end = self.base + self.window.len() as u64;
        if pn >= end {
            for _ in end..=pn {
                self.window.push_back(None);
            }
        }
        while self.window.len() as u64 > self.span {
            if let Some(Some(buf)) = self.window.pop_front() {
                self.spare.push(buf);
            }
            self.base += 1;
        }
        // Groups whose first packet left the window can no longer be rebuilt.
        while let Some((&first, group)) = self.pending.first_key_value() {
            if first >= self.base {
                break;
            }
            if !group.done {
                self.groups_unrecoverable += 1;
            }
            self.pop_oldest();
        }
    }

    fn pop_oldest(&mut self) {
        if let Some((_, group)) = self.pending.pop_first() {
            self.stored -= group.stored_bytes();
        }
    }

    /// Handles a parity packet. `largest` is the largest packet number received, for decoding
    /// the truncated first packet number.
    pub fn on_parity(
        &mut self,
        header: &ParityHeader,
        shard: &[u8],
        largest: Option<u64>,
        out: &mut Recovered,
    ) {
        let first = crate::wire::decode_packet_number(largest, header.first_pn);
        // Only groups that can touch the window, of the shape both ends agreed: anything else
        // is stale or made up (parity is not authenticated, so this bounds what a forger can
        // make us keep or compute).
        let end = self.base + self.window.len() as u64;
        if first < self.base
            || first > end + self.span
            || shard.len() > MAX_SHARD_LEN
            || !self.shape_allowed(header)
        {
            return;
        }
        let group = self.pending.entry(first).or_insert_with(|| PendingGroup {
            stride: header.stride,
            data: header.data,
            parity: header.parity,
            shard_len: shard.len(),
            shards: vec![None; usize::from(header.parity)],
            done: false,
        });
        // Another shape under the same first packet (a forgery, or garbage): not ours to mix.
        if group.done
            || group.stride != header.stride
            || group.data != header.data
            || group.parity != header.parity
            || group.shard_len != shard.len()
        {
            return;
        }
        if let Some(slot) = group.shards.get_mut(usize::from(header.index))
            && slot.is_none()
        {
            *slot = Some(shard.to_vec());
            self.stored += shard.len();
        }
        while self.pending.len() > MAX_PENDING_GROUPS || self.stored > PARITY_BUDGET {
            self.pop_oldest();
        }
        self.try_recover(first, out);
    }

    /// Rebuilds the missing members of group `first` if enough shards are here.
    fn try_recover(&mut self, first: u64, out: &mut Recovered) {
        let Some(group) = self.pending.get(&first) else {
            return;
        };
        let data = usize::from(group.data);
        let parity_have = group.shards.iter().filter(|s| s.is_some()).count();
        let mut missing = 0;
        for pn in group.members(first) {
            match self.slot(pn) {
                Some(Some(_)) => {}
                Some(None) => missing += 1,
                // Beyond the window's end (not received yet): wait.
                None if pn >= self.base => missing += 1,
                // Fell out of the window: cannot take part any more.
                None => return,
            }
        }
        if missing == 0 {
            self.finish(first);
            return;
        }
        if data - missing + parity_have < data {
            return;
        }
        let Some(group) = self.pending.get(&first) else {
            return;
        };
        let (shape, shard_len) = ((group.data, group.parity), group.shard_len);
        let total = data + usize::from(group.parity);
        let mut shards: Vec<Vec<u8>> = vec![vec![0u8; shard_len]; total];
        let mut present = vec![false; total];
        for (i, shard) in group.shards.iter().enumerate() {
            if let (Some(s), Some(dst), Some(f)) =
                (shard, shards.get_mut(data + i), present.get_mut(data + i))
            {
                dst.copy_from_slice(s);
                *f = true;
            }
        }
        let members: Vec<u64> = group.members(first).collect();
        let mut lost = Vec::new();
        for (j, &pn) in members.iter().enumerate() {
            let (Some(dst), Some(f)) = (shards.get_mut(j), present.get_mut(j)) else {
                continue;
            };
            match self.slot(pn) {
                Some(Some(packet)) => {
                    if pack(packet, dst).is_err() {
                        // Longer than the shard: the parity cannot be for this group.
                        return;
                    }
                    *f = true;
                }
                _ => lost.push(j),
            }
        }
        // One attempt per group, whatever comes of it: later shards are ignored.
        self.finish(first);
        let Some(codec) = self.codecs.get(shape.0, shape.1) else {
            return;
        };
        if codec.reconstruct(&mut shards, &present).is_err() {
            return;
        }
        for j in lost {
            if let Some(packet) = shards.get(j).and_then(|s| unpack(s).ok()) {
                let pn = members.get(j).copied().unwrap_or(0);
                // Only a plausible data packet of this packet number goes on to be opened.
                if let Ok((h, _)) = Header::parse(packet)
                    && h.ty == PacketType::Data
                    && h.truncated_pn == pn as u32
                {
                    out.push(packet.to_vec());
                }
            }
        }
    }

    fn shape_allowed(&self, h: &ParityHeader) -> bool {
        let (max_data, max_parity) = match self.config.mode {
            FecMode::Off => return false,
            FecMode::Fixed { data, parity } => (data, parity),
            FecMode::Adaptive { data } => (data, FecConfig::MAX_PARITY),
        };
        h.stride == self.config.interleave && h.data <= max_data && h.parity <= max_parity
    }

    /// Marks group `first` done and lets its shards go (the group stays, so late shards of it
    /// are recognised and ignored).
    fn finish(&mut self, first: u64) {
        if let Some(group) = self.pending.get_mut(&first) {
            self.stored -= group.stored_bytes();
            group.done = true;
            for s in &mut group.shards {
                *s = None;
            }
        }
    }

    fn slot(&self, pn: u64) -> Option<&Option<Vec<u8>>> {
        let i = usize::try_from(pn.checked_sub(self.base)?).ok()?;
        self.window.get(i)
    }

    /// A LOSS_REPORT frame, if one is due.
    pub fn report(&self) -> Option<Frame<'static>> {
        if !self.meter.report_due {
            return None;
        }
        Some(Frame::LossReport {
            loss_ppm: (self.meter.loss.clamp(0.0, 1.0) * 1e6) as u32,
            burst_x100: (self.meter.burst.max(1.0) * 100.0).min(f64::from(u32::MAX)) as u32,
        })
    }

    pub fn on_report_sent(&mut self) {
        self.meter.report_due = false;
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const SID: SessionId = SessionId(0x0100_0042);

    /// A stand-in for a sealed data packet: a real data header, then `len` filler bytes.
    fn packet(pn: u64, len: usize) -> Vec<u8> {
        let mut p = vec![0u8; Header::DATA_LEN + len];
        Header::data(SID, false, pn)
            .emit(&mut Writer::new(&mut p))
            .unwrap();
        for (i, b) in p[Header::DATA_LEN..].iter_mut().enumerate() {
            *b = (pn as usize * 31 + i * 7) as u8;
        }
        p
    }

    fn fixed(data: u8, parity: u8, interleave: u8) -> FecConfig {
        FecConfig {
            mode: FecMode::Fixed { data, parity },
            interleave,
        }
    }

    /// Sends packets `0..n` through a sender; returns them and every parity packet made.
    fn send(config: FecConfig, lens: &[usize]) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
        let t0 = Instant::now();
        let mut tx = FecSender::new(config);
        let flush = Duration::from_millis(5);
        let packets: Vec<Vec<u8>> = lens
            .iter()
            .enumerate()
            .map(|(pn, &len)| packet(pn as u64, len))
            .collect();
        let mut parity = Vec::new();
        for (pn, p) in packets.iter().enumerate() {
            tx.on_sent(t0, pn as u64, p, true, flush, false, SID);
            while let Some(b) = tx.poll_parity() {
                parity.extend(b.packets);
            }
        }
        // Close what is still open, as the flush timer would.
        let due: Vec<usize> = tx.due(t0 + flush).collect();
        for lane in due {
            tx.close(lane, false, SID);
        }
        while let Some(b) = tx.poll_parity() {
            parity.extend(b.packets);
        }
        (packets, parity)
    }

    fn receive(
        config: FecConfig,
        packets: &[Vec<u8>],
        parity: &[Vec<u8>],
        keep_packet: impl Fn(usize) -> bool,
        keep_parity: impl Fn(usize) -> bool,
    ) -> (FecReceiver, Vec<Vec<u8>>) {
        let t0 = Instant::now();
        let mut rx = FecReceiver::new(config);
        let mut out = Vec::new();
        let mut largest = None;
        for (pn, p) in packets.iter().enumerate() {
            if keep_packet(pn) {
                let copy = rx.copy(p).unwrap();
                rx.on_packet(t0, pn as u64, copy, false, &mut out);
                largest = Some(pn as u64);
            }
        }
        for (i, p) in parity.iter().enumerate() {
            if keep_parity(i) {
                let (h, shard) = ParityHeader::parse(p).unwrap();
                rx.on_parity(&h, shard, largest, &mut out);
            }
        }
        (rx, out)
    }

    #[test]
    fn adaptive_parity_follows_loss_bursts_and_group_size() {
        assert_eq!(adaptive_parity(1, 0.0, 1.0), 0, "no loss, no parity");
        assert_eq!(adaptive_parity(10, 0.0005, 1.0), 0);
        assert_eq!(adaptive_parity(1, 0.05, 1.0), 2, "5% x 5% x 5% < 1e-3");
        assert_eq!(adaptive_parity(10, 0.05, 1.0), 3);
        // Bursts: each further packet is lost with probability 1 - 1/burst.
        assert!(adaptive_parity(1, 0.03, 3.0) > adaptive_parity(1, 0.03, 1.0));
        // Small groups get more parity per packet than large ones.
        let ratio = |k: usize| f64::from(adaptive_parity(k, 0.05, 1.0)) / k as f64;
        assert!(ratio(1) > ratio(4) && ratio(4) > ratio(20));
        // Caps: the group size from four packets up, MAX_PARITY below.
        assert_eq!(adaptive_parity(4, 0.5, 50.0), 4);
        assert_eq!(adaptive_parity(1, 0.5, 50.0), FecConfig::MAX_PARITY);
    }

    #[test]
    fn adaptive_mode_sends_no_parity_while_the_sender_has_a_backlog() {
        let t0 = Instant::now();
        let mut tx = FecSender::new(FecConfig::ADAPTIVE);
        tx.on_loss_report(50_000, 100);
        let flush = Duration::from_millis(5);
        for pn in 0..10 {
            let closed = tx.on_sent(t0, pn, &packet(pn, 100), true, flush, true, SID);
            assert_eq!(closed.is_some(), pn == 9);
        }
        assert!(!tx.has_parity());
        assert_eq!(tx.last_ratio, 0.0);
        // The same traffic from an idle sender is protected.
        for pn in 10..20 {
            tx.on_sent(t0, pn, &packet(pn, 100), true, flush, false, SID);
        }
        let batch = tx.poll_parity().unwrap();
        assert_eq!(batch.packets.len(), 3);
        assert_eq!(tx.groups_sent, 1);
    }

    #[test]
    fn an_interleaved_group_names_its_lane_members() {
        let t0 = Instant::now();
        let mut tx = FecSender::new(fixed(3, 1, 4));
        let flush = Duration::from_millis(5);
        let closed: Vec<ClosedGroup> = (0..12)
            .filter_map(|pn| tx.on_sent(t0, pn, &packet(pn, 10), true, flush, false, SID))
            .collect();
        let members: Vec<Vec<u64>> = closed.iter().map(|c| c.members().collect()).collect();
        assert_eq!(
            members,
            [vec![0, 4, 8], vec![1, 5, 9], vec![2, 6, 10], vec![3, 7, 11]]
        );
        assert!(closed.iter().all(|c| c.protected));
    }

    #[test]
    fn ack_only_groups_and_idle_lanes_get_no_parity() {
        let t0 = Instant::now();
        let mut tx = FecSender::new(fixed(2, 1, 1));
        let flush = Duration::from_millis(5);
        tx.on_sent(t0, 0, &packet(0, 10), false, flush, false, SID);
        let closed = tx.on_sent(t0, 1, &packet(1, 10), false, flush, false, SID);
        assert_eq!(
            closed,
            Some(ClosedGroup {
                first_pn: 0,
                stride: 1,
                count: 2,
                protected: false
            })
        );
        assert_eq!(closed.unwrap().members().collect::<Vec<_>>(), [0, 1]);
        assert!(!tx.has_parity());
        assert_eq!(tx.deadline(), None, "nothing open, no timer");
        tx.on_sent(t0, 2, &packet(2, 10), true, flush, false, SID);
        assert_eq!(tx.deadline(), Some(t0 + flush));
    }

    #[test]
    fn lost_packets_of_variable_length_are_rebuilt_exactly() {
        let config = fixed(4, 2, 1);
        let (packets, parity) = send(config, &[100, 7, 1300, 0, 50, 60, 70, 80]);
        assert_eq!(parity.len(), 4, "two groups of four, two parity each");
        // Group one loses two packets (all its parity arrives), group two one (one shard).
        let lost = [1usize, 2, 6];
        let (rx, out) = receive(
            config,
            &packets,
            &parity,
            |pn| !lost.contains(&pn),
            |i| i != 3,
        );
        let mut want: Vec<Vec<u8>> = lost.iter().map(|&pn| packets[pn].clone()).collect();
        let mut got = out.clone();
        want.sort();
        got.sort();
        assert_eq!(got, want);
        assert_eq!(rx.groups_unrecoverable, 0);
    }

    #[test]
    fn interleaved_groups_survive_a_burst() {
        let config = fixed(4, 1, 4);
        let (packets, parity) = send(config, &[200; 16]);
        assert_eq!(parity.len(), 4, "four lanes, one group each");
        // Four consecutive losses: one per lane, which one parity packet each can repair.
        let (_, out) = receive(
            config,
            &packets,
            &parity,
            |pn| !(5..9).contains(&pn),
            |_| true,
        );
        assert_eq!(out.len(), 4);
        for p in &out {
            let (h, _) = Header::parse(p).unwrap();
            assert_eq!(p, &packets[h.truncated_pn as usize]);
        }
    }

    #[test]
    fn duplicate_late_and_forged_shards_change_nothing() {
        let config = fixed(4, 2, 1);
        let (packets, parity) = send(config, &[100; 4]);
        let t0 = Instant::now();
        let mut rx = FecReceiver::new(config);
        let mut out = Vec::new();
        for pn in [0u64, 2, 3] {
            let copy = rx.copy(&packets[pn as usize]).unwrap();
            rx.on_packet(t0, pn, copy, false, &mut out);
        }
        // A forged shard of the same group but another shape: ignored, the real one still works.
        let mut forged = parity[0].clone();
        forged[10] = 3;
        let (h, shard) = ParityHeader::parse(&forged).unwrap();
        rx.on_parity(&h, shard, Some(3), &mut out);
        // Garbage in a shard of the right shape: the rebuilt packet is not a data packet of
        // that number, so nothing comes out (a real one would fail the AEAD anyway).
        let mut garbage = parity[1].clone();
        for b in &mut garbage[ParityHeader::LEN..] {
            *b ^= 0x5a;
        }
        let (h, shard) = ParityHeader::parse(&garbage).unwrap();
        rx.on_parity(&h, shard, Some(3), &mut out);
        assert!(out.is_empty());
        // The group was spent on the garbage (an attacker on the path could as well have dropped
        // the packets; retransmission repairs it); later real shards are harmless.
        for p in &parity {
            let (h, shard) = ParityHeader::parse(p).unwrap();
            rx.on_parity(&h, shard, Some(3), &mut out);
            rx.on_parity(&h, shard, Some(3), &mut out);
        }
        assert!(out.is_empty());
        // A complete group: its parity is ignored, nothing is "recovered".
        let (rx2, out2) = receive(config, &packets, &parity, |_| true, |_| true);
        assert!(out2.is_empty());
        assert_eq!(rx2.groups_unrecoverable, 0);
    }

    #[test]
    fn forged_parity_cannot_make_a_session_hold_much() {
        let config = fixed(64, 32, 8);
        let t0 = Instant::now();
        let mut rx = FecReceiver::new(config);
        let mut out = Vec::new();
        let copy = rx.copy(&packet(0, 10)).unwrap();
        rx.on_packet(t0, 0, copy, false, &mut out);
        let shard = vec![0u8; MAX_SHARD_LEN];
        for first in 0..2000u32 {
            for index in 0..32 {
                let h = ParityHeader {
                    session_id: SID,
                    first_pn: first,
                    stride: 8,
                    data: 64,
                    parity: 32,
                    index,
                };
                rx.on_parity(&h, &shard, Some(0), &mut out);
            }
        }
        assert!(rx.stored <= PARITY_BUDGET, "{}", rx.stored);
        assert!(rx.pending.len() <= MAX_PENDING_GROUPS);
        let held: usize = rx.pending.values().map(PendingGroup::stored_bytes).sum();
        assert_eq!(held, rx.stored);
        // Too long a shard, or a group far from the window, is not kept at all.
        let h = ParityHeader {
            session_id: SID,
            first_pn: 1,
            stride: 1,
            data: 1,
            parity: 1,
            index: 0,
        };
        let before = rx.stored;
        rx.on_parity(&h, &vec![0u8; MAX_SHARD_LEN + 1], Some(0), &mut out);
        rx.on_parity(
            &ParityHeader {
                first_pn: 1 << 30,
                ..h
            },
            &[0, 0],
            Some(0),
            &mut out,
        );
        assert_eq!(rx.stored, before);
        assert!(out.is_empty());
    }

    #[test]
    fn groups_that_leave_the_window_unrepaired_are_counted() {
        let config = fixed(4, 1, 1);
        let (packets, parity) = send(config, &[100; 4]);
        let t0 = Instant::now();
        let mut rx = FecReceiver::new(config);
        let mut out = Vec::new();
        for pn in [0u64, 3] {
            let copy = rx.copy(&packets[pn as usize]).unwrap();
            rx.on_packet(t0, pn, copy, false, &mut out);
        }
        let (h, shard) = ParityHeader::parse(&parity[0]).unwrap();
        rx.on_parity(&h, shard, Some(3), &mut out);
        assert!(out.is_empty(), "two lost, one parity");
        // Much later traffic pushes the group out of the window.
        let copy = rx.copy(&packet(1000, 10)).unwrap();
        rx.on_packet(t0, 1000, copy, false, &mut out);
        assert_eq!(rx.groups_unrecoverable, 1);
    }

    #[test]
    fn the_receiver_reports_raw_loss_and_bursts() {
        let t0 = Instant::now();
        let mut rx = FecReceiver::new(FecConfig::ADAPTIVE);
        let mut out = Vec::new();
        assert!(rx.report().is_none());
        // 400 packet numbers, every tenth lost in a pair: 20% loss in bursts of two.
        let mut pn = 0u64;
        while pn < 400 {
            if pn % 10 == 8 {
                pn += 2;
                continue;
            }
            let copy = rx.copy(&packet(pn, 10)).unwrap();
            rx.on_packet(t0, pn, copy, false, &mut out);
            pn += 1;
        }
        let Some(Frame::LossReport {
            loss_ppm,
            burst_x100,
        }) = rx.report()
        else {
            panic!("a report is due");
        };
        assert!((190_000..=210_000).contains(&loss_ppm), "{loss_ppm}");
        assert_eq!(burst_x100, 200);
        rx.on_report_sent();
        assert!(rx.report().is_none());
    }

    proptest! {
        #[test]
        fn any_pattern_within_the_parity_is_rebuilt(
            data in 1u8..=12,
            parity in 1u8..=4,
            lens in proptest::collection::vec(0usize..1400, 12),
            lost_seed in any::<u64>(),
        ) {
            let config = fixed(data, parity, 1);
            let n = usize::from(data);
            let (packets, parity_packets) = send(config, &lens[..n]);
            prop_assert_eq!(parity_packets.len(), usize::from(parity));
            // Drop exactly `parity` of the n + parity shards, chosen by the seed.
            let total = n + usize::from(parity);
            let mut order: Vec<usize> = (0..total).collect();
            let mut x = lost_seed | 1;
            for i in (1..total).rev() {
                x ^= x << 13; x ^= x >> 7; x ^= x << 17;
                order.swap(i, (x % (i as u64 + 1)) as usize);
            }
            let dropped: Vec<usize> = order[..usize::from(parity)].to_vec();
            let (_, out) = receive(
                config,
                &packets,
                &parity_packets,
                |pn| !dropped.contains(&pn),
                |i| !dropped.contains(&(n + i)),
            );
            let mut want: Vec<Vec<u8>> =
                dropped.iter().filter(|&&i| i < n).map(|&i| packets[i].clone()).collect();
            let mut got = out;
            want.sort();
            got.sort();
            prop_assert_eq!(got, want);
        }
    }
}
