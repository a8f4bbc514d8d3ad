//! The engine's counters in the Prometheus text exposition format (version 0.0.4), as `ctl
//! metrics` prints them for node_exporter's textfile collector or a scrape through socat.
//!
//! The metric names and labels are a stable interface (listed in the README): every name starts
//! with `coretun_`, counters end in `_total`, durations are in seconds. Engine-wide counters
//! carry a `shard` label (sum over it for the node); session metrics add `peer`, `remote` and
//! `session`; map metrics add `map` and `kind`. Latency distributions are summaries over the
//! whole engine (quantiles do not add up over shards).
//!
//! Session counters live as long as their session: when it ends, its series disappear and a
//! new session starts from zero, which Prometheus' `rate()` treats as a counter reset.

use std::fmt::Write;

use crate::control::{Latency, MapRow, SessionRow, Stats};

/// A metric's type, as `# TYPE` names it.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Self::Counter => "counter",
            Self::Gauge => "gauge",
        }
    }
}

type Family<T> = (&'static str, Kind, &'static str, fn(&T) -> f64);

/// Per-shard metrics: name, type, help, value.
const SHARD_FAMILIES: &[Family<Stats>] = &[
    (
        "coretun_packets_sent_total",
        Kind::Counter,
        "UDP datagrams sent to peers.",
        |s| s.packets_sent as f64,
    ),
    (
        "coretun_packets_received_total",
        Kind::Counter,
        "UDP datagrams received from peers.",
        |s| s.packets_received as f64,
    ),
    (
        "coretun_bytes_sent_total",
        Kind::Counter,
        "Bytes of UDP payload sent to peers.",
        |s| s.bytes_sent as f64,
    ),
    (
        "coretun_bytes_received_total",
        Kind::Counter,
        "Bytes of UDP payload received from peers.",
        |s| s.bytes_received as f64,
    ),
    (
        "coretun_packets_lost_total",
        Kind::Counter,
        "Packets declared lost by the ARQ (live sessions).",
        |s| s.packets_lost as f64,
    ),
    (
        "coretun_frames_retransmitted_total",
        Kind::Counter,
        "Stream frames sent again after a loss (live sessions).",
        |s| s.frames_retransmitted as f64,
    ),
    (
        "coretun_bytes_retransmitted_total",
        Kind::Counter,
        "Stream bytes sent again after a loss (live sessions).",
        |s| s.bytes_retransmitted as f64,
    ),
    (
        "coretun_packets_rejected_total",
        Kind::Counter,
        "Datagrams dropped: failed authentication, replayed or malformed.",
        |s| s.packets_rejected as f64,
    ),
    (
        "coretun_send_errors_total",
        Kind::Counter,
        "UDP datagrams the kernel refused to send.",
        |s| s.send_errors as f64,
    ),
    (
        "coretun_fec_groups_sent_total",
        Kind::Counter,
        "FEC groups closed and protected with parity (live sessions).",
        |s| s.fec_groups_sent as f64,
    ),
    (
        "coretun_fec_parity_sent_total",
        Kind::Counter,
        "FEC parity packets sent (live sessions).",
        |s| s.fec_parity_sent as f64,
    ),
    (
        "coretun_fec_parity_received_total",
        Kind::Counter,
        "FEC parity packets received (live sessions).",
        |s| s.fec_parity_received as f64,
    ),
    (
        "coretun_fec_packets_recovered_total",
        Kind::Counter,
        "Lost packets rebuilt from FEC parity (live sessions).",
        |s| s.fec_packets_recovered as f64,
    ),
    (
        "coretun_fec_groups_unrecoverable_total",
        Kind::Counter,
        "FEC groups that lost more than their parity could rebuild (live sessions).",
        |s| s.fec_groups_unrecoverable as f64,
    ),
    (
        "coretun_fec_mismatches_total",
        Kind::Counter,
        "Handshakes refused because the peer's fec settings differ.",
        |s| s.fec_mismatches as f64,
    ),
    (
        "coretun_fec_ratio",
        Kind::Gauge,
        "Parity per data packet of the last FEC group sent (largest over sessions).",
        |s| s.fec_ratio,
    ),
    (
        "coretun_fec_peer_loss",
        Kind::Gauge,
        "Loss before FEC the peer reports (0 to 1, largest over sessions).",
        |s| s.fec_peer_loss,
    ),
    (
        "coretun_sessions",
        Kind::Gauge,
        "Established sessions with peers.",
        |s| s.sessions as f64,
    ),
    (
        "coretun_streams",
        Kind::Gauge,
        "Open multiplexed streams.",
        |s| s.streams as f64,
    ),
    (
        "coretun_connections_accepted_total",
        Kind::Counter,
        "Connections accepted on map listeners.",
        |s| s.connections_accepted as f64,
    ),
    (
        "coretun_streams_connected_total",
        Kind::Counter,
        "Streams from peers connected to an allow target.",
        |s| s.streams_connected as f64,
    ),
    (
        "coretun_streams_refused_total",
        Kind::Counter,
        "Streams from peers for a map id not allowed here.",
        |s| s.streams_refused as f64,
    ),
    (
        "coretun_connects_failed_total",
        Kind::Counter,
        "Connections to allow targets that failed.",
        |s| s.connects_failed as f64,
    ),
    (
        "coretun_session_waits_expired_total",
        Kind::Counter,
        "Connections closed because no session to their peer came up in time.",
        |s| s.session_waits_expired as f64,
    ),
    (
        "coretun_sessions_closed_total",
        Kind::Counter,
        "Sessions with peers that ended.",
        |s| s.sessions_closed as f64,
    ),
    (
        "coretun_udp_flows",
        Kind::Gauge,
        "UDP map flows open.",
        |s| s.udp_flows as f64,
    ),
    (
        "coretun_udp_flows_opened_total",
        Kind::Counter,
        "UDP map flows opened.",
        |s| s.udp_flows_opened as f64,
    ),
    (
        "coretun_udp_flows_refused_total",
        Kind::Counter,
        "UDP map flows refused (flow limit, map id not allowed, proto mismatch).",
        |s| s.udp_flows_refused as f64,
    ),
    (
        "coretun_udp_datagrams_in_total",
        Kind::Counter,
        "Datagrams received from UDP map clients and targets.",
        |s| s.udp_datagrams_in as f64,
    ),
    (
        "coretun_udp_datagrams_out_total",
        Kind::Counter,
        "Datagrams sent to UDP map clients and targets.",
        |s| s.udp_datagrams_out as f64,
    ),
    (
        "coretun_udp_datagrams_dropped_total",
        Kind::Counter,
        "UDP map datagrams dropped.",
        |s| s.udp_datagrams_dropped as f64,
    ),
    (
        "coretun_packets_handed_over_total",
        Kind::Counter,
        "Datagrams handed to the shard owning their session.",
        |s| s.packets_handed_over as f64,
    ),
    (
        "coretun_packets_taken_over_total",
        Kind::Counter,
        "Datagrams taken from other shards.",
        |s| s.packets_taken_over as f64,
    ),
    (
        "coretun_handover_dropped_total",
        Kind::Counter,
        "Misrouted datagrams dropped: the owner's queue was full.",
        |s| s.handover_dropped as f64,
    ),
    (
        "coretun_connections_handed_over_total",
        Kind::Counter,
        "Accepted connections passed to the shard with the peer's session.",
        |s| s.connections_handed_over as f64,
    ),
];

/// Per-session metrics.
const SESSION_FAMILIES: &[Family<SessionRow>] = &[
    (
        "coretun_session_uptime_seconds",
        Kind::Gauge,
        "Seconds since the session's handshake.",
        |s| s.uptime_secs as f64,
    ),
    (
        "coretun_session_rtt_seconds",
        Kind::Gauge,
        "Smoothed round-trip time.",
        |s| s.rtt_us as f64 / 1e6,
    ),
    (
        "coretun_session_rtt_min_seconds",
        Kind::Gauge,
        "Smallest round-trip time seen.",
        |s| s.rtt_min_us as f64 / 1e6,
    ),
    (
        "coretun_session_packets_sent_total",
        Kind::Counter,
        "Packets sent to the peer.",
        |s| s.packets_sent as f64,
    ),
    (
        "coretun_session_packets_received_total",
        Kind::Counter,
        "Packets received from the peer.",
        |s| s.packets_received as f64,
    ),
    (
        "coretun_session_bytes_sent_total",
        Kind::Counter,
        "Bytes sent to the peer.",
        |s| s.bytes_sent as f64,
    ),
    (
        "coretun_session_bytes_received_total",
        Kind::Counter,
        "Bytes received from the peer.",
        |s| s.bytes_received as f64,
    ),
    (
        "coretun_session_stream_bytes_sent_total",
        Kind::Counter,
        "Stream payload sent, first transmissions (goodput out).",
        |s| s.stream_bytes_sent as f64,
    ),
    (
        "coretun_session_stream_bytes_received_total",
        Kind::Counter,
        "Stream payload received in order (goodput in).",
        |s| s.stream_bytes_received as f64,
    ),
    (
        "coretun_session_bytes_retransmitted_total",
        Kind::Counter,
        "Stream payload sent again after a loss.",
        |s| s.bytes_retransmitted as f64,
    ),
    (
        "coretun_session_packets_lost_total",
        Kind::Counter,
        "Packets declared lost.",
        |s| s.packets_lost as f64,
    ),
    (
        "coretun_session_loss_rate",
        Kind::Gauge,
        "Recent loss rate (0 to 1).",
        |s| s.loss_rate,
    ),
    (
        "coretun_session_fec_packets_recovered_total",
        Kind::Counter,
        "Lost packets rebuilt from FEC parity.",
        |s| s.fec_packets_recovered as f64,
    ),
    (
        "coretun_session_streams",
        Kind::Gauge,
        "Streams open on the session.",
        |s| s.streams as f64,
    ),
    (
        "coretun_session_pacing_rate_bytes",
        Kind::Gauge,
        "Pacing rate, bytes per second.",
        |s| s.pacing_rate as f64,
    ),
    (
        "coretun_session_cwnd_bytes",
        Kind::Gauge,
        "Congestion window.",
        |s| s.cwnd as f64,
    ),
    (
        "coretun_session_bytes_in_flight",
        Kind::Gauge,
        "Bytes sent and not yet acknowledged or lost.",
        |s| s.bytes_in_flight as f64,
    ),
];

/// Per-map metrics (per shard).
const MAP_FAMILIES: &[Family<MapRow>] = &[
    (
        "coretun_map_connections_total",
        Kind::Counter,
        "Connections forwarded (streams opened, or targets connected).",
        |m| m.connections as f64,
    ),
    (
        "coretun_map_connections_open",
        Kind::Gauge,
        "Forwarded connections open now.",
        |m| m.connections_open as f64,
    ),
    (
        "coretun_map_bytes_in_total",
        Kind::Counter,
        "Bytes read from local TCP connections into the tunnel.",
        |m| m.bytes_in as f64,
    ),
    (
        "coretun_map_bytes_out_total",
        Kind::Counter,
        "Bytes written from the tunnel to local TCP connections.",
        |m| m.bytes_out as f64,
    ),
];

/// The latency summaries over the whole engine: name, help, distribution.
fn latencies(stats: &Stats) -> [(&'static str, &'static str, &Latency); 3] {
    [
        (
            "coretun_rtt_seconds",
            "Round-trip time samples (one per session every 100 ms).",
            &stats.rtt,
        ),
        (
            "coretun_stream_open_seconds",
            "From accepting a client connection to its stream being open.",
            &stats.stream_open,
        ),
        (
            "coretun_target_connect_seconds",
            "From a peer opening a stream to its allow target being connected.",
            &stats.target_connect,
        ),
    ]
}

/// `stats` (an engine total with its `per_shard` entries) in the text exposition format.
pub fn render(stats: &Stats) -> String {
    let mut out = String::new();
    family(
        &mut out,
        "coretun_uptime_seconds",
        Kind::Gauge,
        "Seconds since the engine started.",
    );
    sample(
        &mut out,
        "coretun_uptime_seconds",
        &[],
        stats.uptime_secs as f64,
    );
    family(
        &mut out,
        "coretun_shards",
        Kind::Gauge,
        "Dataplane shards (threads) the engine runs.",
    );
    sample(
        &mut out,
        "coretun_shards",
        &[],
        stats.per_shard.len() as f64,
    );

    // An engine always sends its shards; a total alone is shown unlabelled.
    let shards: Vec<(String, &Stats)> = if stats.per_shard.is_empty() {
        vec![(String::new(), stats)]
    } else {
        stats
            .per_shard
            .iter()
            .enumerate()
            .map(|(i, s)| (i.to_string(), s))
            .collect()
    };
    for &(name, kind, help, value) in SHARD_FAMILIES {
        family(&mut out, name, kind, help);
        for (shard, s) in &shards {
            let labels: &[(&str, &str)] = if shard.is_empty() {
                &[]
            } else {
                &[("shard", shard)]
            };
            sample(&mut out, name, labels, value(s));
        }
    }

    for &(name, kind, help, value) in SESSION_FAMILIES {
        family(&mut out, name, kind, help);
        for row in &stats.session_rows {
            let shard = row.shard.to_string();
            let labels = [
                ("shard", shard.as_str()),
                ("peer", row.peer.as_str()),
                ("remote", row.remote.as_str()),
                ("session", row.id.as_str()),
            ];
            sample(&mut out, name, &labels, value(row));
        }
    }

    for &(name, kind, help, value) in MAP_FAMILIES {
        family(&mut out, name, kind, help);
        for (shard, s) in &shards {
            for row in &s.map_rows {
                let id = row.id.to_string();
                let mut labels = vec![("map", id.as_str()), ("kind", row.kind.as_str())];
                if !shard.is_empty() {
                    labels.insert(0, ("shard", shard));
                }
                sample(&mut out, name, &labels, value(row));
            }
        }
    }

    for (name, help, latency) in latencies(stats) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} summary");
        for (quantile, us) in [
            ("0.5", latency.p50_us),
            ("0.9", latency.p90_us),
            ("0.99", latency.p99_us),
            ("0.999", latency.p999_us),
        ] {
            sample(&mut out, name, &[("quantile", quantile)], us as f64 / 1e6);
        }
        sample(
            &mut out,
            &format!("{name}_sum"),
            &[],
            latency.sum_us as f64 / 1e6,
        );
        sample(
            &mut out,
            &format!("{name}_count"),
            &[],
            latency.count as f64,
        );
    }
    out
}

fn family(out: &mut String, name: &str, kind: Kind, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {}", kind.name());
}

fn sample(out: &mut String, name: &str, labels: &[(&str, &str)], value: f64) {
    out.push_str(name);
    if !labels.is_empty() {
        out.push('{');
        for (i, (key, value)) in labels.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(out, "{key}=\"{}\"", escape(value));
        }
        out.push('}');
    }
    let _ = writeln!(out, " {}", number(value));
}

/// A label value with `\`, `"` and newlines escaped, as the format requires.
fn escape(value: &str) -> String {
    let mut escaped = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => escaped.push_str("\\\\"),
            '"' => escaped.push_str("\\\""),
            '\n' => escaped.push_str("\\n"),
            c => escaped.push(c),
        }
    }
    escaped
}

/// A sample value: integers without a fraction, the special values as the format spells them.
fn number(value: f64) -> String {
    if value.is_nan() {
        "NaN".to_owned()
    } else if value.is_infinite() {
        if value > 0.0 { "+Inf" } else { "-Inf" }.to_owned()
    } else if value.fract() == 0.0 && value.abs() < 1e15 {
        format!("{}", value as i64)
    } else {
        format!("{value}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_stats() -> Stats {
        let shard = |packets: u64| Stats {
            packets_sent: packets,
            bytes_sent: packets * 1000,
            fec_ratio: 0.25,
            map_rows: vec![MapRow {
                id: 100,
                kind: "listen".into(),
                peer: "server".into(),
                addr: "127.0.0.1:8080".into(),
                connections: 3,
                connections_open: 1,
                bytes_in: 4096,
                bytes_out: 512,
            }],
            ..Stats::default()
        };
        Stats {
            uptime_secs: 42,
            packets_sent: 30,
            session_rows: vec![SessionRow {
                id: "0a1b".into(),
                shard: 1,
                peer: "odd \"name\"\\\n".into(),
                remote: "[::1]:4000".into(),
                rtt_us: 1500,
                loss_rate: 0.125,
                ..SessionRow::default()
            }],
            rtt: Latency {
                count: 10,
                sum_us: 15_000,
                p50_us: 1_400,
                p999_us: 2_000,
                ..Latency::default()
            },
            per_shard: vec![shard(10), shard(20)],
            ..Stats::default()
        }
    }

    #[test]
    fn renders_families_and_labels() {
        let text = render(&sample_stats());
        assert!(
            text.contains("# TYPE coretun_packets_sent_total counter\n"),
            "{text}"
        );
        assert!(
            text.contains("coretun_packets_sent_total{shard=\"0\"} 10\n"),
            "{text}"
        );
        assert!(
            text.contains("coretun_packets_sent_total{shard=\"1\"} 20\n"),
            "{text}"
        );
        assert!(
            text.contains("coretun_fec_ratio{shard=\"1\"} 0.25\n"),
            "{text}"
        );
        assert!(text.contains("coretun_shards 2\n"), "{text}");
        assert!(
            text.contains("coretun_session_rtt_seconds{shard=\"1\",peer=\"odd \\\"name\\\"\\\\\\n\",remote=\"[::1]:4000\",session=\"0a1b\"} 0.0015\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "coretun_map_bytes_in_total{shard=\"0\",map=\"100\",kind=\"listen\"} 4096\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("coretun_rtt_seconds{quantile=\"0.5\"} 0.0014\n"),
            "{text}"
        );
        assert!(text.contains("coretun_rtt_seconds_sum 0.015\n"), "{text}");
        assert!(text.contains("coretun_rtt_seconds_count 10\n"), "{text}");
        // Every family is declared once, and its samples follow its declaration.
        let mut declared = std::collections::HashSet::new();
        for line in text.lines().filter(|l| l.starts_with("# TYPE ")) {
            assert!(declared.insert(line.to_owned()), "{line} declared twice");
        }
    }

    #[test]
    fn parses_as_prometheus_text() {
        let text = render(&sample_stats());
        let lines = text.lines().map(|l| Ok(l.to_owned()));
        let scrape = prometheus_parse::Scrape::parse(lines).expect("valid exposition format");
        let sent: f64 = scrape
            .samples
            .iter()
            .filter(|s| s.metric == "coretun_packets_sent_total")
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v) => v,
                ref other => panic!("{other:?}"),
            })
            .sum();
        assert_eq!(sent, 30.0);
        let session = scrape
            .samples
            .iter()
            .find(|s| s.metric == "coretun_session_loss_rate")
            .expect("a session sample");
        // The parser keeps label values as escaped on the wire; the escapes survived whole.
        assert_eq!(session.labels.get("peer"), Some("odd \\\"name\\\"\\\\\\n"));
        assert!(
            scrape
                .samples
                .iter()
                .any(|s| s.metric == "coretun_rtt_seconds"
                    && matches!(&s.value, prometheus_parse::Value::Summary(q) if q.len() == 4))
        );
    }

    #[test]
    fn special_values() {
        assert_eq!(number(f64::NAN), "NaN");
        assert_eq!(number(f64::INFINITY), "+Inf");
        assert_eq!(number(3.0), "3");
        assert_eq!(number(0.5), "0.5");
        assert_eq!(number(u64::MAX as f64), format!("{}", u64::MAX as f64));
    }
}
