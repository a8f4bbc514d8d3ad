//! The two measurements of a cell, through whatever tunnel is running: a bulk transfer with
//! iperf3 (one TCP stream A → B) and 64-byte request/response round trips with `rr`. Each
//! starts its server on node B, its client on node A, and is bounded in time.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;

use super::process::Proc;
use super::tunnel::{BULK_PORT, RR_PORT, Running, Tools};
use crate::linkem::Link;

/// Slack on top of a client's planned run time before it is killed.
const SLACK: Duration = Duration::from_secs(30);
/// How long a server may take to start listening.
const LISTEN_LIMIT: Duration = Duration::from_secs(10);

/// What the bulk transfer measured.
#[derive(Debug, Clone, PartialEq)]
pub struct Bulk {
    /// Receiver goodput after the warm-up, bits per second.
    pub goodput_bps: f64,
    /// Payload bytes delivered over the whole run, warm-up included.
    pub delivered: u64,
    /// IP bytes offered to the link, both directions, over the whole run.
    pub wire: u64,
    /// CPU seconds of the tunnel's processes over the whole run (None: plain TCP).
    pub cpu_seconds: Option<f64>,
}

/// Runs `iperf3 -t seconds -O warmup` from node A through `tunnel`.
pub fn bulk(
    tools: &Tools,
    link: &Link,
    tunnel: &Running,
    congestion: Option<&str>,
    seconds: u64,
    warmup: u64,
) -> io::Result<Bulk> {
    let (ns_a, ns_b) = (link.namespace_a(), link.namespace_b());
    let server_args = ["-s", "-1", "-J", "-p", &BULK_PORT.to_string()].map(str::to_owned);
    let mut server = Proc::spawn("iperf3 server", ns_b, &tools.iperf3, &server_args)?;
    server.wait_listening(BULK_PORT, LISTEN_LIMIT)?;
    let entry = tunnel.entries[0];
    let mut client_args: Vec<String> = [
        "-c",
        &entry.ip().to_string(),
        "-p",
        &entry.port().to_string(),
        "-t",
        &seconds.to_string(),
        "-O",
        &warmup.to_string(),
        "-J",
    ]
    .map(str::to_owned)
    .into();
    if let Some(cc) = congestion {
        client_args.extend(["-C".to_owned(), cc.to_owned()]);
    }
    let wire_before = wire_bytes(link);
    let cpu_before = tunnel.cpu_seconds();
    let client = Proc::spawn("iperf3 client", ns_a, &tools.iperf3, &client_args)?;
    let client_out = client.wait(Duration::from_secs(seconds + warmup) + SLACK)?;
    let wire = wire_bytes(link) - wire_before;
    let cpu_seconds = cpu_before
        .zip(tunnel.cpu_seconds())
        .map(|(before, after)| after - before);
    let goodput_bps = client_goodput(&client_out.stdout)?;
    let server_out = server.wait(LISTEN_LIMIT)?;
    let delivered = server_delivered(&server_out.stdout)?;
    Ok(Bulk {
        goodput_bps,
        delivered,
        wire,
        cpu_seconds,
    })
}

fn wire_bytes(link: &Link) -> u64 {
    link.stats_a_to_b().bytes_received + link.stats_b_to_a().bytes_received
}

fn json(text: &str, what: &str) -> io::Result<Value> {
    let value: Value = serde_json::from_str(text).map_err(|e| {
        let head: String = text.chars().take(200).collect();
        io::Error::other(format!("{what}: not JSON ({e}): {head}"))
    })?;
    if let Some(err) = value.get("error").and_then(Value::as_str) {
        return Err(io::Error::other(format!("{what}: {err}")));
    }
    Ok(value)
}

/// The receiver's goodput after the warm-up from iperf3's client report.
fn client_goodput(text: &str) -> io::Result<f64> {
    json(text, "iperf3 client")?
        .pointer("/end/sum_received/bits_per_second")
        .and_then(Value::as_f64)
        .ok_or_else(|| io::Error::other("iperf3 client: no end.sum_received.bits_per_second"))
}

/// Every byte the iperf3 server received, warm-up intervals included.
fn server_delivered(text: &str) -> io::Result<u64> {
    let value = json(text, "iperf3 server")?;
    let intervals = value
        .get("intervals")
        .and_then(Value::as_array)
        .ok_or_else(|| io::Error::other("iperf3 server: no intervals"))?;
    Ok(intervals
        .iter()
        .filter_map(|i| i.pointer("/sum/bytes").and_then(Value::as_u64))
        .sum())
}

/// What the request/response probe measured.
#[derive(Debug, Clone, PartialEq)]
pub struct RoundTrips {
    pub p50_us: f64,
    pub p99_us: f64,
    pub unanswered: u64,
}

/// Runs `count` 64-byte round trips, one every `interval`, from node A through `tunnel`.
pub fn round_trips(
    tools: &Tools,
    link: &Link,
    tunnel: &Running,
    congestion: Option<&str>,
    count: u64,
    interval: Duration,
) -> io::Result<RoundTrips> {
    let mut server_args = vec![
        "serve".to_owned(),
        "--listen".to_owned(),
        SocketAddr::from(([0, 0, 0, 0], RR_PORT)).to_string(),
    ];
    let mut client_args = vec![
        "client".to_owned(),
        "--connect".to_owned(),
        tunnel.entries[1].to_string(),
        "--count".to_owned(),
        count.to_string(),
        "--size".to_owned(),
        "64".to_owned(),
        "--interval".to_owned(),
        format!("{}us", interval.as_micros()),
        "--grace".to_owned(),
        "5s".to_owned(),
    ];
    if let Some(cc) = congestion {
        for args in [&mut server_args, &mut client_args] {
            args.extend(["--congestion".to_owned(), cc.to_owned()]);
        }
    }
    let mut server = Proc::spawn("rr server", link.namespace_b(), &tools.rr, &server_args)?;
    server.wait_listening(RR_PORT, LISTEN_LIMIT)?;
    let client = Proc::spawn("rr client", link.namespace_a(), &tools.rr, &client_args)?;
    let planned = interval * u32::try_from(count).unwrap_or(u32::MAX);
    let out = client.wait(planned + SLACK)?;
    if !out.success {
        return Err(io::Error::other(format!(
            "rr client: {}",
            out.stderr.trim()
        )));
    }
    parse_rr(&out.stdout)
}

fn parse_rr(text: &str) -> io::Result<RoundTrips> {
    let value = json(text.trim(), "rr client")?;
    let field = |name: &str| value.get(name).and_then(Value::as_f64);
    let answered = field("answered").unwrap_or(0.0);
    match (field("p50_us"), field("p99_us"), field("unanswered")) {
        (Some(p50), Some(p99), Some(unanswered)) if answered > 0.0 => Ok(RoundTrips {
            p50_us: p50,
            p99_us: p99,
            unanswered: unanswered as u64,
        }),
        _ => Err(io::Error::other(format!(
            "rr client: no round trip answered: {}",
            text.trim()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iperf3_reports_are_read() {
        let client = r#"{"start":{},"intervals":[],"end":{"sum_sent":{"bytes":10},
            "sum_received":{"bytes":9,"bits_per_second":93500000.5}}}"#;
        assert_eq!(client_goodput(client).unwrap(), 93_500_000.5);
        let server = r#"{"intervals":[{"sum":{"bytes":100,"omitted":true}},
            {"sum":{"bytes":250,"omitted":false}},{"sum":{"bytes":7}}],"end":{}}"#;
        assert_eq!(server_delivered(server).unwrap(), 357);
        let failed = r#"{"start":{},"intervals":[],"end":{},
            "error":"unable to connect to server: Connection refused"}"#;
        let err = client_goodput(failed).unwrap_err().to_string();
        assert!(err.contains("Connection refused"), "{err}");
        assert!(client_goodput("iperf3: error").is_err());
    }

    #[test]
    fn rr_lines_are_read() {
        let line = r#"{"answered":500,"unanswered":0,"p50_us":51234,"p90_us":52000,"p99_us":60123,"max_us":70000}"#;
        assert_eq!(
            parse_rr(line).unwrap(),
            RoundTrips {
                p50_us: 51234.0,
                p99_us: 60123.0,
                unanswered: 0
            }
        );
        let none =
            r#"{"answered":0,"unanswered":5,"p50_us":-1,"p90_us":-1,"p99_us":-1,"max_us":-1}"#;
        assert!(parse_rr(none).is_err());
    }
}
