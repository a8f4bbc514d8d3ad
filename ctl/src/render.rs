//! Human-readable output for `ctl status` and `ctl stats`.

use std::io::{self, Write};

use engine_api::control::{Stats, Status};

pub(crate) fn status(out: &mut impl Write, status: &Status) -> io::Result<()> {
    writeln!(out, "engine {} is running", status.engine_version)?;
    writeln!(out, "  config    {}", status.config)?;
    writeln!(out, "  uptime    {}", duration(status.uptime_secs))?;
    writeln!(out, "  shards    {} ({})", status.shards, status.backend)?;
    writeln!(out, "  sessions  {}", status.sessions)?;
    writeln!(out, "  streams   {}", status.streams)
}

/// The counters as a table: one column for the engine's total and, with more than one shard,
/// one column per shard.
pub(crate) fn stats(out: &mut impl Write, stats: &Stats) -> io::Result<()> {
    let shards = if stats.per_shard.len() > 1 {
        stats.per_shard.as_slice()
    } else {
        &[]
    };
    let columns: Vec<Vec<(&str, String)>> = std::iter::once(stats)
        .chain(shards)
        .map(stat_rows)
        .collect();
    if !shards.is_empty() {
        write!(out, "{:<26}{:>12}", "", "total")?;
        for i in 0..shards.len() {
            write!(out, "{:>12}", format!("shard {i}"))?;
        }
        writeln!(out)?;
    }
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
            text.lines().next().unwrap()
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
        stats(&mut out, &new).unwrap();
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
        stats(&mut out, &per_shard).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            row(&text, ""),
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
}
