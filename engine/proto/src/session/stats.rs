//! Per-session counters that `ctl stats` reads.

use std::time::Duration;

/// A snapshot of one session's counters and estimates.
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct SessionStats {
    pub packets_sent: u64,
    pub packets_received: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// Stream payload bytes put in packets (first transmissions and retransmissions).
    pub stream_bytes_sent: u64,
    pub stream_bytes_received: u64,
    pub stream_bytes_retransmitted: u64,
    /// Stream frames carried by packets declared lost (each is sent again).
    pub stream_frames_retransmitted: u64,
    pub packets_lost: u64,
    /// Packets declared lost that were acknowledged later.
    pub spurious_losses: u64,
    pub timeouts: u64,
    pub dropped_auth: u64,
    pub dropped_replayed: u64,
    pub dropped_malformed: u64,
    pub datagrams_sent: u64,
    pub datagrams_dropped: u64,
    pub key_updates: u64,
    pub key_generation: u64,
    pub migrations: u64,
    pub rtt_smoothed: Duration,
    pub rtt_min: Duration,
    /// The most recent RTT sample (from the last acknowledgement that gave one).
    pub rtt_latest: Duration,
    pub pacing_rate: u64,
    pub cwnd: u64,
    pub bytes_in_flight: u64,
    pub loss_rate: f64,
    pub streams_open: u64,
    /// FEC groups closed with parity sent for them.
    pub fec_groups_sent: u64,
    /// Parity packets sent.
    pub fec_parity_sent: u64,
    /// Parity packets received (duplicates and late ones included).
    pub fec_parity_received: u64,
    /// Data packets rebuilt from parity (each then authenticated and handled like any packet).
    pub fec_packets_recovered: u64,
    /// Groups that lost more packets than they had parity for (retransmission repairs them).
    pub fec_groups_unrecoverable: u64,
    /// Parity packets per data packet of the last group closed (the adaptive ratio).
    pub fec_ratio: f64,
    /// The raw packet loss (before FEC) the peer reports seeing from us.
    pub fec_peer_loss: f64,
}
