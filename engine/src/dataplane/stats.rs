//! A shard's counters and latency histograms, the snapshot of them (plus its sessions', maps'
//! and peers' rows) it sends the control thread, and the control thread's merge over shards.
//!
//! Cost on the data path: plain counter increments on state the shard already holds (a
//! connection's byte counts, the shard's datagram counts). Everything else is computed when
//! `ctl` asks: session rows from the sessions' own counters, map rows from the live connections
//! plus the totals of closed ones, percentiles from the histograms.
//!
//! Latencies are HDR histograms in microseconds, one set per shard, cumulative since the engine
//! started; the control thread adds the shards' copies together. RTT is not recorded per
//! acknowledgement (that would be per-packet work inside the protocol core): instead the shard
//! records each session's latest RTT sample once every [`RTT_SAMPLE_INTERVAL`], checked once
//! per loop round. The distribution is thus time-weighted (a session that lasted an hour
//! weighs more than one that lasted a second), which is what "how long do round trips take on
//! this node" means for a tunnel.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use engine_api::config::MapId;
use engine_api::control::{Latency, MapRow, PeerRow, SessionRow, Stats};
use engine_proto::wire::Side;
use hdrhistogram::Histogram;

use super::conn::{Conn, ConnState};
use super::shard::Shard;

/// How often each session's latest RTT sample goes into the RTT histogram.
pub(crate) const RTT_SAMPLE_INTERVAL: Duration = Duration::from_millis(100);

/// The largest latency a histogram tells apart (larger samples count as this): a minute.
const LATENCY_MAX_US: u64 = 60_000_000;

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
    pub(crate) packets_handed_over: u64,
    pub(crate) packets_taken_over: u64,
    pub(crate) handover_dropped: u64,
    pub(crate) connections_handed_over: u64,
    pub(crate) udp_flows_opened: u64,
    pub(crate) udp_flows_refused: u64,
    pub(crate) udp_map_datagrams_in: u64,
    pub(crate) udp_map_datagrams_out: u64,
    pub(crate) udp_map_datagrams_dropped: u64,
}

/// Which side of forwarding a connection is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum MapKind {
    /// Accepted on a `maps` listener.
    Listen,
    /// Made to an `allow` target for a peer's stream.
    Allow,
}

impl MapKind {
    fn name(self) -> &'static str {
        match self {
            Self::Listen => "listen",
            Self::Allow => "allow",
        }
    }
}

/// Per-map counters of connections that are closed (live ones are counted from the
/// connections themselves when asked).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct MapTotals {
    connections: u64,
    bytes_in: u64,
    bytes_out: u64,
}

/// A shard's latency histograms and its per-map totals.
#[derive(Debug)]
pub(crate) struct Telemetry {
    rtt: Histogram<u64>,
    stream_open: Histogram<u64>,
    target_connect: Histogram<u64>,
    next_rtt_sample: Instant,
    maps: HashMap<(MapKind, MapId), MapTotals>,
}

impl Telemetry {
    pub(crate) fn new(now: Instant) -> Self {
        Self {
            rtt: histogram(),
            stream_open: histogram(),
            target_connect: histogram(),
            next_rtt_sample: now + RTT_SAMPLE_INTERVAL,
            maps: HashMap::new(),
        }
    }

    /// A connection accepted at `since` now has its stream open.
    pub(crate) fn stream_opened(&mut self, map: MapId, since: Instant, now: Instant) {
        record(&mut self.stream_open, now.saturating_duration_since(since));
        self.maps
            .entry((MapKind::Listen, map))
            .or_default()
            .connections += 1;
    }

    /// A peer's stream, opened at `since`, is now connected to its target.
    pub(crate) fn target_connected(&mut self, map: MapId, since: Instant, now: Instant) {
        record(
            &mut self.target_connect,
            now.saturating_duration_since(since),
        );
        self.maps
            .entry((MapKind::Allow, map))
            .or_default()
            .connections += 1;
    }

    /// A connection is being freed: its byte counts move to its map's totals.
    pub(crate) fn connection_freed(&mut self, conn: &Conn) {
        if conn.bytes_in == 0 && conn.bytes_out == 0 {
            return;
        }
        let totals = self.maps.entry((conn.kind, conn.map)).or_default();
        totals.bytes_in += conn.bytes_in;
        totals.bytes_out += conn.bytes_out;
    }
}

fn histogram() -> Histogram<u64> {
    // Two significant digits (1 % resolution) up to a minute: a few KiB per histogram.
    // Constant bounds, which the tests exercise: this cannot fail at run time.
    Histogram::new_with_bounds(1, LATENCY_MAX_US, 2).expect("valid histogram bounds")
}

fn record(histogram: &mut Histogram<u64>, latency: Duration) {
    let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
    histogram.saturating_record(us.clamp(1, LATENCY_MAX_US));
}

/// The percentiles of a histogram.
fn latency(h: &Histogram<u64>) -> Latency {
    if h.is_empty() {
        return Latency::default();
    }
    Latency {
        count: h.len(),
        sum_us: (h.mean() * h.len() as f64) as u64,
        min_us: h.min(),
        p50_us: h.value_at_quantile(0.5),
        p90_us: h.value_at_quantile(0.9),
        p99_us: h.value_at_quantile(0.99),
        p999_us: h.value_at_quantile(0.999),
        max_us: h.max(),
    }
}

/// A shard's answer to a stats request: its counters and rows, its histograms (added together
/// by the control thread), and its view of the configured peers.
#[derive(Debug)]
pub(crate) struct ShardStats {
    pub(crate) stats: Stats,
    rtt: Histogram<u64>,
    stream_open: Histogram<u64>,
    target_connect: Histogram<u64>,
    peers: Vec<PeerRow>,
}

impl Shard {
    /// Records every session's latest RTT sample, at most once per [`RTT_SAMPLE_INTERVAL`].
    /// Called once per loop round: a comparison unless the interval has passed.
    pub(crate) fn sample_rtt(&mut self, now: Instant) {
        if now < self.telemetry.next_rtt_sample {
            return;
        }
        self.telemetry.next_rtt_sample = now + RTT_SAMPLE_INTERVAL;
        for session in self.endpoint.sessions() {
            if session.is_established() && session.is_confirmed() {
                record(&mut self.telemetry.rtt, session.stats().rtt_latest);
            }
        }
    }
}

/// One shard's snapshot.
pub(crate) fn snapshot(shard: &Shard) -> ShardStats {
    let now = Instant::now();
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
        udp_flows: shard.udp_maps.open_flows() as u64,
        udp_flows_opened: c.udp_flows_opened,
        udp_flows_refused: c.udp_flows_refused,
        udp_datagrams_in: c.udp_map_datagrams_in,
        udp_datagrams_out: c.udp_map_datagrams_out,
        udp_datagrams_dropped: c.udp_map_datagrams_dropped,
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
        stats.frames_retransmitted += s.stream_frames_retransmitted;
        stats.bytes_retransmitted += s.stream_bytes_retransmitted;
        stats.packets_rejected += s.dropped_auth + s.dropped_replayed + s.dropped_malformed;
        stats.fec_groups_sent += s.fec_groups_sent;
        stats.fec_parity_sent += s.fec_parity_sent;
        stats.fec_parity_received += s.fec_parity_received;
        stats.fec_packets_recovered += s.fec_packets_recovered;
        stats.fec_groups_unrecoverable += s.fec_groups_unrecoverable;
        stats.fec_ratio = stats.fec_ratio.max(s.fec_ratio);
        stats.fec_peer_loss = stats.fec_peer_loss.max(s.fec_peer_loss);

        let peer = shard.peers.peer_of(session.local_id());
        let state = if !session.is_established() {
            "closing"
        } else if session.is_confirmed() {
            "established"
        } else {
            "confirming"
        };
        stats.session_rows.push(SessionRow {
            id: format!("{:08x}", session.local_id().0),
            shard: shard.index as u32,
            peer: peer.map_or_else(String::new, |p| shard.peers.name(p).to_owned()),
            remote: session.remote().to_string(),
            side: match session.side() {
                Side::Client => "dialled",
                Side::Server => "accepted",
            }
            .to_owned(),
            state: state.to_owned(),
            uptime_secs: now.saturating_duration_since(session.created()).as_secs(),
            rtt_us: micros(s.rtt_smoothed),
            rtt_min_us: micros(s.rtt_min),
            rtt_latest_us: micros(s.rtt_latest),
            packets_sent: s.packets_sent,
            packets_received: s.packets_received,
            bytes_sent: s.bytes_sent,
            bytes_received: s.bytes_received,
            stream_bytes_sent: s
                .stream_bytes_sent
                .saturating_sub(s.stream_bytes_retransmitted),
            stream_bytes_received: s.stream_bytes_received,
            bytes_retransmitted: s.stream_bytes_retransmitted,
            packets_lost: s.packets_lost,
            loss_rate: s.loss_rate,
            fec_packets_recovered: s.fec_packets_recovered,
            streams: s.streams_open,
            pacing_rate: s.pacing_rate,
            cwnd: s.cwnd,
            bytes_in_flight: s.bytes_in_flight,
        });
    }
    stats.map_rows = map_rows(shard);
    let t = &shard.telemetry;
    stats.rtt = latency(&t.rtt);
    stats.stream_open = latency(&t.stream_open);
    stats.target_connect = latency(&t.target_connect);
    ShardStats {
        stats,
        rtt: t.rtt.clone(),
        stream_open: t.stream_open.clone(),
        target_connect: t.target_connect.clone(),
        peers: shard.peers.rows(shard.index as u32),
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// The shard's map rows: every configured map and allow entry (in config order), then any
/// entry no longer configured that still has counts; live connections added to the totals.
fn map_rows(shard: &Shard) -> Vec<MapRow> {
    let mut rows: Vec<MapRow> = Vec::new();
    let mut index: HashMap<(MapKind, MapId), usize> = HashMap::new();
    let mut row = |rows: &mut Vec<MapRow>, kind: MapKind, id: MapId| -> usize {
        *index.entry((kind, id)).or_insert_with(|| {
            rows.push(MapRow {
                id: id.0,
                kind: kind.name().to_owned(),
                ..MapRow::default()
            });
            rows.len() - 1
        })
    };
    for map in &shard.config.maps {
        let r = row(&mut rows, MapKind::Listen, map.id);
        rows[r].peer = shard.peers.name(map.peer).to_owned();
        rows[r].addr = shard
            .listeners
            .iter()
            .flatten()
            .find(|l| l.map == map.id && !l.retired)
            .and_then(|l| super::tcp::local_addr(&l.fd).ok())
            .unwrap_or(map.listen)
            .to_string();
    }
    for allow in &shard.config.allow {
        let r = row(&mut rows, MapKind::Allow, allow.id);
        rows[r].addr = allow.target.to_string();
    }
    let mut totals: Vec<_> = shard.telemetry.maps.iter().collect();
    totals.sort_by_key(|((kind, id), _)| (kind.name(), id.0));
    for (&(kind, id), t) in totals {
        let r = row(&mut rows, kind, id);
        rows[r].connections += t.connections;
        rows[r].bytes_in += t.bytes_in;
        rows[r].bytes_out += t.bytes_out;
    }
    for (_, conn) in shard.conns.iter() {
        let r = row(&mut rows, conn.kind, conn.map);
        rows[r].connections_open += u64::from(conn.state == ConnState::Open);
        rows[r].bytes_in += conn.bytes_in;
        rows[r].bytes_out += conn.bytes_out;
    }
    rows
}

/// The engine's statistics from its shards' answers (`None`: the shard did not answer in
/// time, and shows as zeros rather than hiding the others), and its peers.
pub(crate) fn merge(uptime_secs: u64, shards: Vec<Option<ShardStats>>) -> (Stats, Vec<PeerRow>) {
    let mut total = Stats {
        uptime_secs,
        ..Stats::default()
    };
    let (mut rtt, mut stream_open, mut target_connect) = (histogram(), histogram(), histogram());
    let mut peers: Vec<PeerRow> = Vec::new();
    for shard in shards {
        let Some(mut shard) = shard else {
            total.per_shard.push(Stats {
                uptime_secs,
                ..Stats::default()
            });
            continue;
        };
        add(&mut total, &shard.stats);
        // Same bounds everywhere: adding cannot fail.
        let _ = rtt.add(&shard.rtt);
        let _ = stream_open.add(&shard.stream_open);
        let _ = target_connect.add(&shard.target_connect);
        // The total lists every shard's sessions (each names its shard) and sums the maps.
        total.session_rows.append(&mut shard.stats.session_rows);
        for map in &shard.stats.map_rows {
            match total
                .map_rows
                .iter_mut()
                .find(|m| m.id == map.id && m.kind == map.kind)
            {
                Some(m) => {
                    m.connections += map.connections;
                    m.connections_open += map.connections_open;
                    m.bytes_in += map.bytes_in;
                    m.bytes_out += map.bytes_out;
                }
                None => total.map_rows.push(map.clone()),
            }
        }
        for peer in shard.peers.drain(..) {
            match peers.iter_mut().find(|p| p.name == peer.name) {
                Some(p) => {
                    p.shards.extend(peer.shards);
                    p.state = merge_state(&p.state, &peer.state).to_owned();
                }
                None => peers.push(peer),
            }
        }
        shard.stats.uptime_secs = uptime_secs;
        total.per_shard.push(shard.stats);
    }
    total.rtt = latency(&rtt);
    total.stream_open = latency(&stream_open);
    total.target_connect = latency(&target_connect);
    for peer in &mut peers {
        peer.sessions = total
            .session_rows
            .iter()
            .filter(|s| s.peer == peer.name)
            .cloned()
            .collect();
    }
    (total, peers)
}

/// A peer is up when any shard has a session with it, connecting when any shard dials it.
fn merge_state<'a>(a: &'a str, b: &'a str) -> &'a str {
    let rank = |s: &str| match s {
        "up" => 2,
        "connecting" => 1,
        _ => 0,
    };
    if rank(b) > rank(a) { b } else { a }
}

/// Adds one shard's counters into a running total.
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
    total.udp_flows += shard.udp_flows;
    total.udp_flows_opened += shard.udp_flows_opened;
    total.udp_flows_refused += shard.udp_flows_refused;
    total.udp_datagrams_in += shard.udp_datagrams_in;
    total.udp_datagrams_out += shard.udp_datagrams_out;
    total.udp_datagrams_dropped += shard.udp_datagrams_dropped;
    total.packets_handed_over += shard.packets_handed_over;
    total.packets_taken_over += shard.packets_taken_over;
    total.handover_dropped += shard.handover_dropped;
    total.connections_handed_over += shard.connections_handed_over;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shard_stats(index: u32, rtts_ms: &[u64], peer_state: &str) -> ShardStats {
        let mut rtt = histogram();
        for &ms in rtts_ms {
            record(&mut rtt, Duration::from_millis(ms));
        }
        ShardStats {
            stats: Stats {
                packets_sent: 10,
                session_rows: vec![SessionRow {
                    shard: index,
                    peer: "b".into(),
                    ..SessionRow::default()
                }],
                map_rows: vec![MapRow {
                    id: 7,
                    kind: "listen".into(),
                    connections: 2,
                    bytes_in: 100,
                    ..MapRow::default()
                }],
                rtt: latency(&rtt),
                ..Stats::default()
            },
            rtt,
            stream_open: histogram(),
            target_connect: histogram(),
            peers: vec![PeerRow {
                name: "b".into(),
                state: peer_state.into(),
                shards: if peer_state == "up" {
                    vec![index]
                } else {
                    vec![]
                },
                ..PeerRow::default()
            }],
        }
    }

    #[test]
    fn merge_sums_shards_and_their_histograms() {
        let (total, peers) = merge(
            9,
            vec![
                Some(shard_stats(0, &[10, 10, 10], "connecting")),
                None,
                Some(shard_stats(2, &[30], "up")),
            ],
        );
        assert_eq!(total.uptime_secs, 9);
        assert_eq!(total.packets_sent, 20);
        assert_eq!(total.per_shard.len(), 3);
        assert_eq!(
            total.per_shard[1],
            Stats {
                uptime_secs: 9,
                ..Stats::default()
            }
        );
        assert_eq!(total.per_shard[2].uptime_secs, 9);
        assert_eq!(
            total.per_shard[2].map_rows.len(),
            1,
            "shards keep their maps"
        );
        assert!(
            total.per_shard[2].session_rows.is_empty(),
            "moved to the total"
        );
        assert_eq!(total.session_rows.len(), 2);
        assert_eq!(total.map_rows.len(), 1);
        assert_eq!(
            (total.map_rows[0].connections, total.map_rows[0].bytes_in),
            (4, 200)
        );
        assert_eq!(total.rtt.count, 4);
        // Two significant digits: values within 1 %.
        assert!(total.rtt.p50_us.abs_diff(10_000) <= 100, "{:?}", total.rtt);
        assert!(total.rtt.max_us.abs_diff(30_000) <= 300, "{:?}", total.rtt);
        assert_eq!(peers.len(), 1);
        assert_eq!(peers[0].state, "up");
        assert_eq!(peers[0].shards, [2]);
        assert_eq!(peers[0].sessions.len(), 2);
    }

    #[test]
    fn latency_of_nothing_is_zero_and_outliers_are_clamped() {
        let mut h = histogram();
        assert_eq!(latency(&h), Latency::default());
        record(&mut h, Duration::from_secs(3600));
        record(&mut h, Duration::ZERO);
        let l = latency(&h);
        assert_eq!(l.count, 2);
        assert_eq!(l.min_us, 1);
        assert!(l.max_us >= LATENCY_MAX_US && l.max_us <= LATENCY_MAX_US + LATENCY_MAX_US / 100);
    }
}
