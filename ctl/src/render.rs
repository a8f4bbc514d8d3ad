//! Human-readable output for `ctl status`, `ctl stats`, `ctl peers` and `ctl maps`.

use std::io::{self, Write};

use engine_api::control::{MapRow, PeerRow, SessionRow, Stats, Status};

pub(crate) fn status(out: &mut impl Write, status: &Status) -> io::Result<()> {
    writeln!(out, "engine {} is running", status.engine_version)?;
    writeln!(out, "  config    {}", status.config)?;
    writeln!(out, "  uptime    {}", duration(status.uptime_secs))?;
    writeln!(out, "  shards    {} ({})", status.shards, status.backend)?;
    writeln!(out, "  sessions  {}", status.sessions)?;
    writeln!(out, "  streams   {}", status.streams)
}

/// What a rate is computed against: the previous sample and the time since it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Since<'a> {
    pub(crate) stats: &'a Stats,
    pub(crate) secs: f64,
}

/// The full report: engine line, sessions, maps, latencies, then the counters per shard. With
/// `since` (`--watch`), byte columns of sessions and maps show rates over the interval;
/// without, goodput is the average over each session's life.
pub(crate) fn stats(
    out: &mut impl Write,
    stats: &Stats,
    since: Option<Since<'_>>,
) -> io::Result<()> {
    writeln!(
        out,
        "up {}, {} shard{}, {} session{}, {} stream{}",
        duration(stats.uptime_secs),
        stats.per_shard.len(),
        plural(stats.per_shard.len() as u64),
        stats.sessions,
        plural(stats.sessions),
        stats.streams,
        plural(stats.streams),
    )?;
    writeln!(out)?;
    sessions(out, &stats.session_rows, since)?;
    writeln!(out)?;
    maps(out, &stats.map_rows, since)?;
    writeln!(out)?;
    latencies(out, stats)?;
    writeln!(out)?;
    counters(out, stats)
}

fn plural(n: u64) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// Rate of a counter: over the interval when there is a previous value, else `None`.
fn rate(new: u64, old: Option<u64>, secs: f64) -> Option<f64> {
    let old = old?;
    (secs > 0.0).then(|| new.saturating_sub(old) as f64 / secs)
}

fn per_sec(rate: Option<f64>) -> String {
    rate.map_or_else(|| "-".to_owned(), |r| format!("{}/s", bytes(r as u64)))
}

/// One row per session.
pub(crate) fn sessions(
    out: &mut impl Write,
    rows: &[SessionRow],
    since: Option<Since<'_>>,
) -> io::Result<()> {
    let mut table = Table::new(&[
        "PEER",
        "SHARD",
        "STATE",
        "UP",
        "RTT",
        "MIN RTT",
        "SENT",
        "RECEIVED",
        "GOODPUT OUT",
        "GOODPUT IN",
        "RETX",
        "LOST",
        "LOSS",
        "FEC REC",
        "STREAMS",
        "PACING",
    ]);
    for row in rows {
        let old = since.and_then(|s| s.stats.session_rows.iter().find(|o| o.id == row.id));
        let (goodput_out, goodput_in, sent, received) = match (since, old) {
            (Some(since), Some(old)) => (
                rate(
                    row.stream_bytes_sent,
                    Some(old.stream_bytes_sent),
                    since.secs,
                ),
                rate(
                    row.stream_bytes_received,
                    Some(old.stream_bytes_received),
                    since.secs,
                ),
                per_sec(rate(row.bytes_sent, Some(old.bytes_sent), since.secs)),
                per_sec(rate(
                    row.bytes_received,
                    Some(old.bytes_received),
                    since.secs,
                )),
            ),
            (Some(_), None) => (None, None, "-".to_owned(), "-".to_owned()),
            // Averages over the session's life.
            (None, _) => {
                let secs = row.uptime_secs.max(1) as f64;
                (
                    Some(row.stream_bytes_sent as f64 / secs),
                    Some(row.stream_bytes_received as f64 / secs),
                    bytes(row.bytes_sent),
                    bytes(row.bytes_received),
                )
            }
        };
        let peer = if row.peer.is_empty() {
            row.remote.as_str()
        } else {
            row.peer.as_str()
        };
        table.row(vec![
            peer.to_owned(),
            row.shard.to_string(),
            row.state.clone(),
            duration(row.uptime_secs),
            micros(row.rtt_us),
            micros(row.rtt_min_us),
            sent,
            received,
            per_sec(goodput_out),
            per_sec(goodput_in),
            bytes(row.bytes_retransmitted),
            row.packets_lost.to_string(),
            percent(row.loss_rate),
            row.fec_packets_recovered.to_string(),
            row.streams.to_string(),
            format!("{}/s", bytes(row.pacing_rate)),
        ]);
    }
    if rows.is_empty() {
        writeln!(out, "no sessions")
    } else {
        table.write(out)
    }
}

/// One row per map and allow entry.
pub(crate) fn maps(
    out: &mut impl Write,
    rows: &[MapRow],
    since: Option<Since<'_>>,
) -> io::Result<()> {
    let mut table = Table::new(&[
        "MAP",
        "KIND",
        "PEER",
        "ADDRESS",
        "CONNECTIONS",
        "OPEN",
        "IN",
        "OUT",
    ]);
    for row in rows {
        let old = since.and_then(|s| {
            s.stats
                .map_rows
                .iter()
                .find(|o| o.id == row.id && o.kind == row.kind)
                .map(|o| (o, s.secs))
        });
        let (bytes_in, bytes_out) = match old {
            Some((old, secs)) => (
                per_sec(rate(row.bytes_in, Some(old.bytes_in), secs)),
                per_sec(rate(row.bytes_out, Some(old.bytes_out), secs)),
            ),
            None if since.is_some() => ("-".to_owned(), "-".to_owned()),
            None => (bytes(row.bytes_in), bytes(row.bytes_out)),
        };
        table.row(vec![
            row.id.to_string(),
            row.kind.clone(),
            if row.peer.is_empty() {
                "-".to_owned()
            } else {
                row.peer.clone()
            },
            row.addr.clone(),
            row.connections.to_string(),
            row.connections_open.to_string(),
            bytes_in,
            bytes_out,
        ]);
    }
    if rows.is_empty() {
        writeln!(out, "no maps")
    } else {
        table.write(out)
    }
}

fn latencies(out: &mut impl Write, stats: &Stats) -> io::Result<()> {
    let mut table = Table::new(&["LATENCY", "SAMPLES", "P50", "P90", "P99", "P99.9", "MAX"]);
    for (name, l) in [
        ("rtt", &stats.rtt),
        ("stream open", &stats.stream_open),
        ("target connect", &stats.target_connect),
    ] {
        let value = |us: u64| {
            if l.count == 0 {
                "-".to_owned()
            } else {
                micros(us)
            }
        };
        table.row(vec![
            name.to_owned(),
            l.count.to_string(),
            value(l.p50_us),
            value(l.p90_us),
            value(l.p99_us),
            value(l.p999_us),
            value(l.max_us),
        ]);
    }
    table.write(out)
}

/// The configured peers.
pub(crate) fn peers(out: &mut impl Write, peers: &[PeerRow]) -> io::Result<()> {
    let mut table = Table::new(&["PEER", "ADDRESS", "STATE", "SESSIONS", "SHARDS", "RTT"]);
    for peer in peers {
        let mut shards = peer.shards.clone();
        shards.sort_unstable();
        let rtt = peer
            .sessions
            .iter()
            .filter(|s| s.state == "established")
            .map(|s| s.rtt_us)
            .min();
        table.row(vec![
            peer.name.clone(),
            if peer.addr.is_empty() {
                "(dials us)".to_owned()
            } else {
                peer.addr.clone()
            },
            peer.state.clone(),
            peer.sessions.len().to_string(),
            if shards.is_empty() {
                "-".to_owned()
            } else {
                shards
                    .iter()
                    .map(u32::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            },
            rtt.map_or_else(|| "-".to_owned(), micros),
        ]);
    }
    if peers.is_empty() {
        writeln!(out, "no peers configured")
    } else {
        table.write(out)
    }
}

/// The counters as a table: one column for the engine's total and, with more than one shard,
/// one column per shard.
pub(crate) fn counters(out: &mut impl Write, stats: &Stats) -> io::Result<()> {
    let shards = if stats.per_shard.len() > 1 {
        stats.per_shard.as_slice()
    } else {
        &[]
    };
    let columns: Vec<Vec<(&str, String)>> = std::iter::once(stats)
        .chain(shards)
        .map(stat_rows)
        .collect();
    write!(out, "{:<26}{:>12}", "COUNTERS", "total")?;
    for i in 0..shards.len() {
        write!(out, "{:>12}", format!("shard {i}"))?;
    }
    writeln!(out)?;
    for (row, (name, _)) in columns[0].iter().enumerate() {
        write!(out, "{name:<26}")?;
        for column in &columns {
            write!(out, "{:>12}", column[row].1)?;
        }
        writeln!(out)?;
    }
    Ok(())
}

fn stat_rows(stats: &Stats) -> Vec<(&'static str, String)> {
    vec![
        ("uptime", duration(stats.uptime_secs)),
        ("sessions", stats.sessions.to_string()),
        ("streams", stats.streams.to_string()),
        ("packets sent", stats.packets_sent.to_string()),
        ("packets received", stats.packets_received.to_string()),
        ("bytes sent", bytes(stats.bytes_sent)),
        ("bytes received", bytes(stats.bytes_received)),
        ("packets lost", stats.packets_lost.to_string()),
        (
            "frames retransmitted",
            stats.frames_retransmitted.to_string(),
        ),
        ("packets rejected", stats.packets_rejected.to_string()),
        ("bytes retransmitted", bytes(stats.bytes_retransmitted)),
        ("send errors", stats.send_errors.to_string()),
        (
            "connections accepted",
            stats.connections_accepted.to_string(),
        ),
        ("streams connected", stats.streams_connected.to_string()),
        ("streams refused", stats.streams_refused.to_string()),
        ("connects failed", stats.connects_failed.to_string()),
        ("udp flows open", stats.udp_flows.to_string()),
        ("udp flows opened", stats.udp_flows_opened.to_string()),
        ("udp flows refused", stats.udp_flows_refused.to_string()),
        ("udp datagrams in", stats.udp_datagrams_in.to_string()),
        ("udp datagrams out", stats.udp_datagrams_out.to_string()),
        (
            "udp datagrams dropped",
            stats.udp_datagrams_dropped.to_string(),
        ),
        ("sessions closed", stats.sessions_closed.to_string()),
        ("packets handed over", stats.packets_handed_over.to_string()),
        ("packets taken over", stats.packets_taken_over.to_string()),
        ("handover dropped", stats.handover_dropped.to_string()),
        (
            "connections handed over",
            stats.connections_handed_over.to_string(),
        ),
        ("FEC groups sent", stats.fec_groups_sent.to_string()),
        ("FEC parity sent", stats.fec_parity_sent.to_string()),
        ("FEC parity received", stats.fec_parity_received.to_string()),
        (
            "FEC packets recovered",
            stats.fec_packets_recovered.to_string(),
        ),
        (
            "FEC groups unrecoverable",
            stats.fec_groups_unrecoverable.to_string(),
        ),
        ("FEC ratio (max)", format!("{:.2}", stats.fec_ratio)),
        ("FEC peer loss (max)", percent(stats.fec_peer_loss)),
        ("FEC mismatches", stats.fec_mismatches.to_string()),
    ]
}

/// A table with left-aligned text columns sized to their widest cell.
struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    fn new(header: &[&str]) -> Self {
        Self {
            rows: vec![header.iter().map(|h| (*h).to_owned()).collect()],
        }
    }

    fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    fn write(&self, out: &mut impl Write) -> io::Result<()> {
        let columns = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let widths: Vec<usize> = (0..columns)
            .map(|c| {
                self.rows
                    .iter()
                    .filter_map(|r| r.get(c))
                    .map(|cell| cell.chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        for row in &self.rows {
            let mut line = String::new();
            for (cell, width) in row.iter().zip(&widths) {
                line.push_str(&format!("{cell:<width$}  "));
            }
            writeln!(out, "{}", line.trim_end())?;
        }
        Ok(())
    }
}

/// Microseconds as a readable duration.
fn micros(us: u64) -> String {
    match us {
        0..1_000 => format!("{us}us"),
        1_000..1_000_000 => format!("{:.1}ms", us as f64 / 1e3),
        _ => format!("{:.2}s", us as f64 / 1e6),
    }
}

/// One line per `--watch` sample: rates over the last interval, then gauges. The first sample
/// has no previous one to diff against, so its rate columns are left empty.
pub(crate) fn stats_row(
    out: &mut impl Write,
    previous: Option<&Stats>,
    now: &Stats,
    interval_secs: u64,
) -> io::Result<()> {
    let Some(previous) = previous else {
        writeln!(
            out,
            "{:>10} {:>10} {:>10} {:>12} {:>12} {:>8} {:>8} {:>8} {:>8}",
            "uptime",
            "pkt/s out",
            "pkt/s in",
            "out/s",
            "in/s",
            "lost/s",
            "retx/s",
            "sessions",
            "streams"
        )?;
        return writeln!(
            out,
            "{:>10} {:>10} {:>10} {:>12} {:>12} {:>8} {:>8} {:>8} {:>8}",
            duration(now.uptime_secs),
            "-",
            "-",
            "-",
            "-",
            "-",
            "-",
            now.sessions,
            now.streams
        );
    };
    // Counters restart from zero if the engine restarted between samples; saturate rather
    // than print nonsense.
    let rate = |new: u64, old: u64| new.saturating_sub(old) / interval_secs.max(1);
    writeln!(
        out,
        "{:>10} {:>10} {:>10} {:>12} {:>12} {:>8} {:>8} {:>8} {:>8}",
        duration(now.uptime_secs),
        rate(now.packets_sent, previous.packets_sent),
        rate(now.packets_received, previous.packets_received),
        bytes(rate(now.bytes_sent, previous.bytes_sent)),
        bytes(rate(now.bytes_received, previous.bytes_received)),
        rate(now.packets_lost, previous.packets_lost),
        rate(now.frames_retransmitted, previous.frames_retransmitted),
        now.sessions,
        now.streams
    )
}

fn duration(secs: u64) -> String {
    let (days, hours, minutes, secs) =
        (secs / 86_400, secs / 3_600 % 24, secs / 60 % 60, secs % 60);
    match (days, hours, minutes) {
        (0, 0, 0) => format!("{secs}s"),
        (0, 0, _) => format!("{minutes}m{secs:02}s"),
        (0, _, _) => format!("{hours}h{minutes:02}m{secs:02}s"),
        _ => format!("{days}d{hours:02}h{minutes:02}m"),
    }
}

/// A fraction as a percentage; anything that is not a fraction (NaN, negative) shows as 0.
fn percent(fraction: f64) -> String {
    let fraction = if fraction.is_finite() && fraction > 0.0 {
        fraction
    } else {
        0.0
    };
    format!("{:.1}%", fraction * 100.0)
}

fn bytes(n: u64) -> String {
    const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    match (unit, UNITS.get(unit)) {
        (0, _) => format!("{n} B"),
        (_, Some(name)) => format!("{value:.1} {name}"),
        (_, None) => format!("{n} B"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(duration(0), "0s");
        assert_eq!(duration(61), "1m01s");
        assert_eq!(duration(3_600 + 2 * 60 + 3), "1h02m03s");
        assert_eq!(duration(2 * 86_400 + 5 * 3_600 + 7 * 60 + 9), "2d05h07m");
    }

    #[test]
    fn percents() {
        assert_eq!(percent(0.0), "0.0%");
        assert_eq!(percent(0.1), "10.0%");
        assert_eq!(percent(1.0), "100.0%");
        assert_eq!(percent(f64::NAN), "0.0%");
        assert_eq!(percent(-1.0), "0.0%");
    }

    #[test]
    fn byte_units() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(5 * 1024 * 1024 * 1024), "5.0 GiB");
        assert_eq!(bytes(u64::MAX), "16.0 EiB");
    }

    /// The values of the table line that starts with `name` (the header line for "").
    fn row<'a>(text: &'a str, name: &str) -> Vec<&'a str> {
        let line = if name.is_empty() {
            text.lines().find(|l| l.starts_with("COUNTERS")).unwrap()
        } else {
            text.lines()
                .find(|l| l.starts_with(&format!("{name}  ")))
                .unwrap()
        };
        line[name.len()..].split_whitespace().collect()
    }

    #[test]
    fn stats_table_and_rows() {
        let old = Stats {
            packets_sent: 100,
            bytes_sent: 1000,
            ..Stats::default()
        };
        let new = Stats {
            uptime_secs: 4,
            packets_sent: 300,
            bytes_sent: 3048,
            sessions: 2,
            fec_parity_sent: 12,
            fec_packets_recovered: 5,
            fec_ratio: 0.3,
            fec_peer_loss: 0.065,
            fec_mismatches: 1,
            ..Stats::default()
        };
        let mut out = Vec::new();
        counters(&mut out, &new).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(row(&text, "packets sent"), ["300"], "{text}");
        assert_eq!(row(&text, "FEC parity sent"), ["12"], "{text}");
        assert_eq!(row(&text, "FEC packets recovered"), ["5"], "{text}");
        assert_eq!(row(&text, "FEC ratio (max)"), ["0.30"], "{text}");
        assert_eq!(row(&text, "FEC peer loss (max)"), ["6.5%"], "{text}");
        assert_eq!(row(&text, "FEC mismatches"), ["1"], "{text}");
        assert_eq!(row(&text, "bytes sent"), ["3.0", "KiB"], "{text}");
        assert!(
            !text.contains("shard"),
            "one shard: no per-shard columns\n{text}"
        );

        let per_shard = Stats {
            per_shard: vec![old.clone(), new.clone()],
            packets_sent: 400,
            ..new.clone()
        };
        let mut out = Vec::new();
        stats(&mut out, &per_shard, None).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            row(&text, "COUNTERS"),
            ["total", "shard", "0", "shard", "1"],
            "{text}"
        );
        assert_eq!(row(&text, "packets sent"), ["400", "100", "300"], "{text}");

        let mut out = Vec::new();
        stats_row(&mut out, None, &old, 2).unwrap();
        stats_row(&mut out, Some(&old), &new, 2).unwrap();
        let text = String::from_utf8(out).unwrap();
        let last = text.lines().last().unwrap();
        let columns: Vec<&str> = last.split_whitespace().collect();
        assert_eq!(
            columns,
            ["4s", "100", "0", "1.0", "KiB", "0", "B", "0", "0", "2", "0"]
        );
    }

    fn session(id: &str, sent: u64, received: u64) -> SessionRow {
        SessionRow {
            id: id.into(),
            shard: 1,
            peer: "server".into(),
            remote: "127.0.0.1:4000".into(),
            state: "established".into(),
            uptime_secs: 10,
            rtt_us: 1_500,
            rtt_min_us: 900,
            stream_bytes_sent: sent,
            stream_bytes_received: received,
            bytes_sent: sent,
            bytes_retransmitted: 2048,
            packets_lost: 3,
            loss_rate: 0.02,
            pacing_rate: 1 << 20,
            streams: 2,
            ..SessionRow::default()
        }
    }

    /// The cells of the line of a table that starts with `first`.
    fn cells<'a>(text: &'a str, first: &str) -> Vec<&'a str> {
        text.lines()
            .find(|l| l.starts_with(first))
            .unwrap_or_else(|| panic!("no line {first} in\n{text}"))
            .split("  ")
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .collect()
    }

    #[test]
    fn session_table_shows_averages_then_rates() {
        let old = Stats {
            session_rows: vec![session("01", 10 << 20, 1 << 20)],
            ..Stats::default()
        };
        let mut out = Vec::new();
        sessions(&mut out, &old.session_rows, None).unwrap();
        let text = String::from_utf8(out).unwrap();
        let header = cells(&text, "PEER");
        let row = cells(&text, "server");
        assert_eq!(header.len(), row.len(), "{text}");
        let column = |name: &str| row[header.iter().position(|h| *h == name).unwrap()];
        assert_eq!(column("RTT"), "1.5ms");
        assert_eq!(column("MIN RTT"), "900us");
        // 10 MiB over a 10 s life.
        assert_eq!(column("GOODPUT OUT"), "1.0 MiB/s");
        assert_eq!(column("RETX"), "2.0 KiB");
        assert_eq!(column("LOSS"), "2.0%");
        assert_eq!(column("PACING"), "1.0 MiB/s");

        let new = Stats {
            session_rows: vec![session("01", 14 << 20, 1 << 20), session("02", 0, 0)],
            ..Stats::default()
        };
        let since = Since {
            stats: &old,
            secs: 2.0,
        };
        let mut out = Vec::new();
        sessions(&mut out, &new.session_rows, Some(since)).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<Vec<&str>> = text
            .lines()
            .skip(1)
            .map(|l| {
                l.split("  ")
                    .map(str::trim)
                    .filter(|c| !c.is_empty())
                    .collect()
            })
            .collect();
        let at = header.iter().position(|h| *h == "GOODPUT OUT").unwrap();
        assert_eq!(lines[0][at], "2.0 MiB/s", "{text}");
        assert_eq!(lines[0][at + 1], "0 B/s", "{text}");
        // A session new since the last sample has no rate yet.
        assert_eq!(lines[1][at], "-", "{text}");
    }

    #[test]
    fn map_and_peer_tables() {
        let map = MapRow {
            id: 100,
            kind: "listen".into(),
            peer: "server".into(),
            addr: "127.0.0.1:8080".into(),
            connections: 4,
            connections_open: 1,
            bytes_in: 3 << 20,
            bytes_out: 512,
        };
        let mut out = Vec::new();
        maps(&mut out, std::slice::from_ref(&map), None).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            cells(&text, "100"),
            [
                "100",
                "listen",
                "server",
                "127.0.0.1:8080",
                "4",
                "1",
                "3.0 MiB",
                "512 B"
            ]
        );

        let peer = PeerRow {
            name: "server".into(),
            addr: String::new(),
            state: "up".into(),
            shards: vec![1, 0],
            sessions: vec![session("01", 0, 0)],
        };
        let mut out = Vec::new();
        peers(&mut out, &[peer]).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            cells(&text, "server"),
            ["server", "(dials us)", "up", "1", "0,1", "1.5ms"]
        );
        let mut out = Vec::new();
        peers(&mut out, &[]).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "no peers configured\n");
    }

    #[test]
    fn micro_units() {
        assert_eq!(micros(999), "999us");
        assert_eq!(micros(1_500), "1.5ms");
        assert_eq!(micros(2_500_000), "2.50s");
    }
}
