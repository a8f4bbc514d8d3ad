//! Packets in flight: what each carried, which are acknowledged, which are lost.
//!
//! Packet numbers are dense and increasing, so packets live in a deque indexed by
//! `pn - base`; the frames they carried live in a second deque in the same order, so neither
//! needs an allocation per packet. Packets above the largest acknowledged number are
//! "outstanding"; those below it that are still unacknowledged are "holes", kept in a small
//! ordered set: they are the only candidates for loss, and the only packets an ACK can newly
//! cover below its largest, so an ACK costs O(newly acknowledged + holes), never O(window).

use std::collections::{BTreeSet, VecDeque};
use std::ops::Range;
use std::time::Instant;

use crate::arq::SendSnapshot;
use crate::mux::SentFrame;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fate {
    InFlight,
    Acked,
    Lost,
    /// An ACK-only packet: nobody acknowledges those on purpose, so it is never waited for,
    /// never lost, and dropped with its neighbours; an acknowledgement that happens to cover it
    /// still tells us the peer saw our ACK.
    AckOnly,
}

#[derive(Debug, Clone)]
pub(crate) struct SentPacket {
    pub time: Instant,
    pub size: u32,
    /// The rate controller's record of an ack-eliciting packet, which counts in bytes in
    /// flight; None for an ACK-only packet, which the controller never sees.
    pub snapshot: Option<SendSnapshot>,
    /// The largest packet number our ACK frame in this packet covered, if it had one.
    pub largest_ack_sent: Option<u64>,
    frames_start: u64,
    frames_len: u16,
    pub fate: Fate,
    /// Loss detection counts from here: the packet itself, or for a member of a FEC group the
    /// last packet sent before the group's parity (and the time the group closed), since a
    /// packet the peer can recover from parity is not lost before that parity had its chance.
    loss_ref_pn: u64,
    loss_ref_time: Instant,
}

impl SentPacket {
    /// Ack-eliciting, and so counted in bytes in flight (everything except ACK-only packets).
    pub fn in_flight(&self) -> bool {
        self.snapshot.is_some()
    }
}

#[derive(Debug, Default)]
pub(crate) struct SentPackets {
    base: u64,
    packets: VecDeque<SentPacket>,
    frames_base: u64,
    frames: VecDeque<SentFrame>,
    holes: BTreeSet<u64>,
    /// Packets declared lost and still kept: a late acknowledgement reveals a spurious loss.
    lost: BTreeSet<u64>,
    largest_acked: Option<u64>,
    pub bytes_in_flight: u64,
    /// Packets in flight (all of them elicit an acknowledgement).
    pub ack_eliciting_in_flight: u64,
}

impl SentPackets {
    pub fn largest_acked(&self) -> Option<u64> {
        self.largest_acked
    }

    /// Records packet `pn`, which must be the next number (numbers are never reused or skipped).
    pub fn push(&mut self, pn: u64, mut packet: SentPacket, frames: &[SentFrame]) {
        if self.packets.is_empty() {
            self.base = pn;
        }
        debug_assert_eq!(pn, self.base + self.packets.len() as u64);
        if !packet.in_flight() {
            packet.fate = Fate::AckOnly;
        }
        packet.loss_ref_pn = pn;
        packet.frames_start = self.frames_base + self.frames.len() as u64;
        packet.frames_len = frames.len() as u16;
        self.frames.extend(frames.iter().copied());
        if packet.in_flight() {
            self.bytes_in_flight += u64::from(packet.size);
            self.ack_eliciting_in_flight += 1;
        }
        self.packets.push_back(packet);
    }

    pub fn new_packet(
        time: Instant,
        size: u32,
        snapshot: Option<SendSnapshot>,
        largest_ack_sent: Option<u64>,
    ) -> SentPacket {
        SentPacket {
            time,
            size,
            snapshot,
            largest_ack_sent,
            frames_start: 0,
            frames_len: 0,
            fate: Fate::InFlight,
            loss_ref_pn: 0,
            loss_ref_time: time,
        }
    }

    pub fn get(&self, pn: u64) -> Option<&SentPacket> {
        let idx = pn.checked_sub(self.base)?;
        self.packets.get(usize::try_from(idx).ok()?)
    }

    pub fn frames(&self, packet: &SentPacket) -> impl Iterator<Item = &SentFrame> {
        let start = (packet.frames_start - self.frames_base) as usize;
        self.frames
            .range(start..start + usize::from(packet.frames_len))
    }

    /// Below this, an ACK range can acknowledge nothing new: everything there is resolved
    /// except holes and lost packets, and the lowest of those is at least this.
    pub fn ack_floor(&self) -> u64 {
        let above = self.largest_acked.map_or(self.base, |l| l + 1);
        let hole = self.holes.first().copied().unwrap_or(u64::MAX);
        let lost = self.lost.first().copied().unwrap_or(u64::MAX);
        above.min(hole).min(lost)
    }

    /// Appends to `out` the packet numbers an ACK range newly acknowledges. `end` is clamped to
    /// what was sent, so a peer acknowledging packets never sent cannot make us loop.
    pub fn newly_acked(&self, range: Range<u64>, next_pn: u64, out: &mut Vec<u64>) {
        let end = range.end.min(next_pn);
        if range.start >= end {
            return;
        }
        out.extend(self.holes.range(range.start..end));
        out.extend(self.lost.range(range.start..end));
        let above = self
            .largest_acked
            .map_or(self.base, |l| l + 1)
            .max(range.start);
        out.extend(above..end.max(above));
    }

    /// Marks `pn` acknowledged. Returns the packet if it was still in flight or lost (a late
    /// acknowledgement of a packet we already gave up on).
    pub fn on_acked(&mut self, pn: u64) -> Option<SentPacket> {
        let prev_largest = self.largest_acked;
        if prev_largest.is_none_or(|l| pn > l) {
            // Everything between the old largest and this one that is still in flight is now a hole.
            let from = prev_largest.map_or(self.base, |l| l + 1);
            for hole in from..pn {
                if self.get(hole).is_some_and(|p| p.fate == Fate::InFlight) {
                    self.holes.insert(hole);
                }
            }
            self.largest_acked = Some(pn);
        } else {
            self.holes.remove(&pn);
            self.lost.remove(&pn);
        }
        let idx = usize::try_from(pn.checked_sub(self.base)?).ok()?;
        let packet = self.packets.get_mut(idx)?;
        let before = packet.fate;
        if before == Fate::Acked {
            return None;
        }
        packet.fate = Fate::Acked;
        // The caller learns what the packet was before: in flight, or given up for lost.
        let mut copy = packet.clone();
        copy.fate = before;
        if before == Fate::InFlight {
            self.leave_flight(&copy);
        }
        Some(copy)
    }

    /// Holds `pn` back from loss detection until `until` (the latest its FEC group can close).
    pub fn hold_for_group(&mut self, pn: u64, until: Instant) {
        if let Some(p) = self.get_mut(pn) {
            p.loss_ref_pn = u64::MAX / 2;
            p.loss_ref_time = until;
        }
    }

    /// `pn`'s group closed: it is lost once `threshold` packets after `ref_pn` are acknowledged,
    /// or once it is `loss_delay` older than `ref_time`.
    pub fn release_from_group(&mut self, pn: u64, ref_pn: u64, ref_time: Instant) {
        if let Some(p) = self.get_mut(pn) {
            p.loss_ref_pn = ref_pn;
            p.loss_ref_time = ref_time;
        }
    }

    /// `pn`'s group closed without parity: it is judged by its own number and time again.
    pub fn restore_loss_ref(&mut self, pn: u64) {
        if let Some(p) = self.get_mut(pn) {
            p.loss_ref_pn = pn;
            p.loss_ref_time = p.time;
        }
    }

    fn get_mut(&mut self, pn: u64) -> Option<&mut SentPacket> {
        let idx = pn.checked_sub(self.base)?;
        self.packets.get_mut(usize::try_from(idx).ok()?)
    }

    /// Holes that are lost by the packet or time threshold, ascending. Returns also the instant
    /// at which the oldest remaining hole will be lost by time, if any.
    pub fn detect_lost(
        &mut self,
        packet_threshold: u64,
        now: Instant,
        loss_delay: std::time::Duration,
    ) -> (Vec<u64>, Option<Instant>) {
        // Early in a run `now - loss_delay` may not exist; then nothing is old enough.
        let lost_before = now.checked_sub(loss_delay);
        let Some(largest) = self.largest_acked else {
            return (Vec::new(), None);
        };
        let mut lost = Vec::new();
        let mut next_loss_time: Option<Instant> = None;
        for &pn in &self.holes {
            let Some(p) = self.get(pn) else { continue };
            let by_count = |ref_pn: u64| ref_pn.saturating_add(packet_threshold) <= largest;
            let by_time = |t: Instant| lost_before.is_some_and(|b| t <= b);
            if by_count(p.loss_ref_pn) || by_time(p.loss_ref_time) {
                lost.push(pn);
                continue;
            }
            let at = p.loss_ref_time + loss_delay;
            next_loss_time = Some(next_loss_time.map_or(at, |n| n.min(at)));
            if !by_count(pn) && !by_time(p.time) {
                // Holes are in send order: later ones are younger and closer to `largest`,
                // and a group can only move a packet's reference later, never earlier.
                break;
            }
        }
        (lost, next_loss_time)
    }

    /// Marks `pn` lost and returns it (with its frames still readable until the next `compact`).
    pub fn on_lost(&mut self, pn: u64) -> Option<SentPacket> {
        self.holes.remove(&pn);
        self.lost.insert(pn);
        let idx = usize::try_from(pn.checked_sub(self.base)?).ok()?;
        let packet = self.packets.get_mut(idx)?;
        if packet.fate != Fate::InFlight {
            return None;
        }
        packet.fate = Fate::Lost;
        let copy = packet.clone();
        self.leave_flight(&copy);
        Some(copy)
    }

    /// In-flight packets sent at or before `cutoff`, oldest first (for the retransmission timeout).
    pub fn in_flight_before(&self, cutoff: Instant) -> Vec<u64> {
        self.packets
            .iter()
            .enumerate()
            .take_while(|(_, p)| p.time <= cutoff)
            .filter(|(_, p)| p.fate == Fate::InFlight && p.in_flight())
            .map(|(i, _)| self.base + i as u64)
            .collect()
    }

    /// Drops resolved packets (and their frames) from the front. Packets lost long ago are kept
    /// for a while so a late acknowledgement can still save a retransmission.
    pub fn compact(&mut self, keep_lost_after: Instant) {
        while let Some(front) = self.packets.front() {
            let done = match front.fate {
                Fate::Acked | Fate::AckOnly => true,
                Fate::Lost => front.time < keep_lost_after,
                Fate::InFlight => false,
            };
            if !done {
                break;
            }
            let n = usize::from(front.frames_len);
            self.frames.drain(..n);
            self.lost.remove(&self.base);
            self.frames_base += n as u64;
            self.packets.pop_front();
            self.base += 1;
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.packets.len()
    }

    fn leave_flight(&mut self, packet: &SentPacket) {
        if packet.in_flight() {
            self.bytes_in_flight -= u64::from(packet.size);
            self.ack_eliciting_in_flight -= 1;
        }
    }
}
