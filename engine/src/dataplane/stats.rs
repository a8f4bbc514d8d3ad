//! A shard's counters, and the snapshot of them (plus its sessions' counters) that the control
//! thread sums over shards.

use engine_api::control::Stats;

use super::shard::Shard;

/// Counters only the shard's own thread writes.
#[derive(Debug, Default, Clone)]
pub(crate) struct Counters {
    pub(crate) udp_datagrams_sent: u64,
    pub(crate) udp_bytes_sent: u64,
    pub(crate) udp_datagrams_received: u64,
    pub(crate) udp_bytes_received: u64,
    pub(crate) udp_send_errors: u64,
    pub(crate) udp_receive_errors: u64,
    pub(crate) connections_accepted: u64,
    pub(crate) streams_connected: u64,
    pub(crate) streams_refused: u64,
    pub(crate) connects_failed: u64,
    pub(crate) session_waits_expired: u64,
    pub(crate) sessions_closed: u64,
    pub(crate) datagrams_dropped: u64,
    pub(crate) packets_handed_over: u64,
    pub(crate) packets_taken_over: u64,
    pub(crate) handover_dropped: u64,
    pub(crate) connections_handed_over: u64,
}

/// One shard's contribution to [`Stats`].
pub(crate) fn snapshot(shard: &Shard) -> Stats {
    let c = &shard.counters;
    let endpoint = shard.endpoint.stats();
    let mut stats = Stats {
        packets_sent: c.udp_datagrams_sent,
        packets_received: c.udp_datagrams_received,
        bytes_sent: c.udp_bytes_sent,
        bytes_received: c.udp_bytes_received,
        packets_rejected: endpoint.malformed + endpoint.unknown_session + c.udp_receive_errors,
        connections_accepted: c.connections_accepted,
        streams_connected: c.streams_connected,
        streams_refused: c.streams_refused,
        connects_failed: c.connects_failed,
        session_waits_expired: c.session_waits_expired,
        sessions_closed: c.sessions_closed,
        send_errors: c.udp_send_errors,
        datagrams_dropped: c.datagrams_dropped,
        packets_handed_over: c.packets_handed_over,
        packets_taken_over: c.packets_taken_over,
        handover_dropped: c.handover_dropped,
        connections_handed_over: c.connections_handed_over,
        fec_mismatches: endpoint.fec_mismatches,
        ..Stats::default()
    };
    for session in shard.endpoint.sessions() {
        let s = session.stats();
        stats.sessions += u64::from(session.is_confirmed());
        stats.streams += s.streams_open;
        stats.packets_lost += s.packets_lost;
        stats.bytes_retransmitted += s.stream_bytes_retransmitted;
        stats.packets_rejected += s.dropped_auth + s.dropped_replayed + s.dropped_malformed;
        stats.fec_groups_sent += s.fec_groups_sent;
        stats.fec_parity_sent += s.fec_parity_sent;
        stats.fec_parity_received += s.fec_parity_received;
        stats.fec_packets_recovered += s.fec_packets_recovered;
        stats.fec_groups_unrecoverable += s.fec_groups_unrecoverable;
        stats.fec_ratio = stats.fec_ratio.max(s.fec_ratio);
        stats.fec_peer_loss = stats.fec_peer_loss.max(s.fec_peer_loss);
    }
    stats
}

/// Adds one shard's snapshot into a running total.
pub(crate) fn add(total: &mut Stats, shard: &Stats) {
    total.packets_sent += shard.packets_sent;
    total.packets_received += shard.packets_received;
    total.bytes_sent += shard.bytes_sent;
    total.bytes_received += shard.bytes_received;
    total.packets_lost += shard.packets_lost;
    total.frames_retransmitted += shard.frames_retransmitted;
    total.bytes_retransmitted += shard.bytes_retransmitted;
    total.fec_groups_sent += shard.fec_groups_sent;
    total.fec_parity_sent += shard.fec_parity_sent;
    total.fec_parity_received += shard.fec_parity_received;
    total.fec_packets_recovered += shard.fec_packets_recovered;
    total.fec_groups_unrecoverable += shard.fec_groups_unrecoverable;
    // Gauges: the worst session anywhere, not a sum.
    total.fec_ratio = total.fec_ratio.max(shard.fec_ratio);
    total.fec_peer_loss = total.fec_peer_loss.max(shard.fec_peer_loss);
    total.fec_mismatches += shard.fec_mismatches;
    total.packets_rejected += shard.packets_rejected;
    total.sessions += shard.sessions;
    total.streams += shard.streams;
    total.connections_accepted += shard.connections_accepted;
    total.streams_connected += shard.streams_connected;
    total.streams_refused += shard.streams_refused;
    total.connects_failed += shard.connects_failed;
    total.session_waits_expired += shard.session_waits_expired;
    total.sessions_closed += shard.sessions_closed;
    total.send_errors += shard.send_errors;
    total.datagrams_dropped += shard.datagrams_dropped;
    total.packets_handed_over += shard.packets_handed_over;
    total.packets_taken_over += shard.packets_taken_over;
    total.handover_dropped += shard.handover_dropped;
    total.connections_handed_over += shard.connections_handed_over;
}
