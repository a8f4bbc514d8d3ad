//! The control protocol between `ctl` and a running engine.
//!
//! Transport: a Unix stream socket (by default [`DEFAULT_SOCKET_PATH`]). Framing: one JSON value
//! per line (newline-delimited JSON), UTF-8, no embedded newlines; serde_json never emits a raw
//! newline inside a value, so a line is always exactly one message. The client writes a
//! [`Request`] line and reads one [`Response`] line; it may send further requests on the same
//! connection (`ctl stats --watch` does).
//!
//! Every request carries the protocol [`version`](Request::version) so that an engine can refuse
//! a client it does not understand with a [`Response::Error`] instead of guessing.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The control protocol version this crate speaks.
pub const PROTOCOL_VERSION: u32 = 1;

/// Where the engine listens for control connections unless the config says otherwise.
pub const DEFAULT_SOCKET_PATH: &str = "/run/coretun/engine.sock";

/// Longest request or response line a peer has to accept, newline included. Bounds the memory a
/// misbehaving client can make the engine buffer.
pub const MAX_LINE_LEN: usize = 1 << 20;

/// One request from `ctl` to the engine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    /// The [`PROTOCOL_VERSION`] the client speaks.
    pub version: u32,
    /// What the client asks for.
    pub command: Command,
}

impl Request {
    /// A request for `command` at this crate's [`PROTOCOL_VERSION`].
    pub fn new(command: Command) -> Self {
        Self {
            version: PROTOCOL_VERSION,
            command,
        }
    }

    /// Parses one request line (with or without its trailing newline).
    ///
    /// Rejects anything but a single well-formed request, including a request for another
    /// protocol version, so the engine can answer with the reason.
    pub fn parse(line: &[u8]) -> Result<Self, ParseError> {
        let request: Self = parse_line(line).map_err(|err| unknown_command(line, err))?;
        if request.version != PROTOCOL_VERSION {
            return Err(ParseError::Version {
                got: request.version,
                supported: PROTOCOL_VERSION,
            });
        }
        Ok(request)
    }

    /// The request as one line of JSON, newline included.
    pub fn to_line(&self) -> Vec<u8> {
        to_line(self)
    }
}

/// The operations the engine serves.
///
/// Exhaustive on purpose: engine and ctl ship together, and the engine's dispatch should fail to
/// compile when a command is added. Old clients are told apart by [`Request::version`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Command {
    /// Is the engine up, and what is it running.
    Status,
    /// Traffic counters.
    Stats,
    /// Re-read the config file and apply what can change without a restart.
    Reload,
    /// The configured peers and their sessions.
    Peers,
    /// The maps (listeners) and allow entries, with their connection counters.
    Maps,
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Status => "status",
            Self::Stats => "stats",
            Self::Reload => "reload",
            Self::Peers => "peers",
            Self::Maps => "maps",
        })
    }
}

/// The engine's answer to one [`Request`].
///
/// Unknown fields are ignored (unlike in [`Request`]), so an engine may add fields to an answer
/// without breaking older clients.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
#[non_exhaustive]
// One response is built per request and written out at once: boxing `Stats` would save no
// memory that matters and would make every match on a response clumsier.
#[allow(clippy::large_enum_variant)]
pub enum Response {
    /// Answer to [`Command::Status`].
    Status(Status),
    /// Answer to [`Command::Stats`].
    Stats(Stats),
    /// Answer to [`Command::Reload`]: the new config is in effect, apart from what needs a
    /// restart.
    Reloaded {
        /// How many listen maps the engine serves after the reload.
        maps: u32,
        /// What changed and was applied, one line each for a human (empty: nothing changed).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        changes: Vec<String>,
        /// What changed but needs a restart and was not applied, one line each.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        restart_needed: Vec<String>,
    },
    /// Answer to [`Command::Peers`].
    Peers {
        /// One entry per configured peer, in config order.
        peers: Vec<PeerRow>,
    },
    /// Answer to [`Command::Maps`].
    Maps {
        /// One entry per map and allow entry, summed over shards.
        maps: Vec<MapRow>,
    },
    /// The request was not served.
    Error {
        /// Why, for a human.
        message: String,
    },
}

impl Response {
    /// Parses one response line (with or without its trailing newline).
    pub fn parse(line: &[u8]) -> Result<Self, ParseError> {
        parse_line(line)
    }

    /// The response as one line of JSON, newline included.
    pub fn to_line(&self) -> Vec<u8> {
        to_line(self)
    }
}

/// What the engine is running.
///
/// Fields added in later versions default when absent, so an older `ctl` keeps working against a
/// newer engine and the other way round.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Status {
    /// The engine's package version.
    pub engine_version: String,
    /// Path of the config file the engine runs.
    pub config: String,
    /// Seconds since the engine started.
    pub uptime_secs: u64,
    /// Dataplane threads (one per core).
    pub shards: u32,
    /// The I/O backend the shards run: `io_uring` or `epoll`.
    pub backend: String,
    /// Established sessions with peers.
    pub sessions: u64,
    /// Open multiplexed streams across all sessions.
    pub streams: u64,
}

/// Traffic counters, summed over all shards since the engine started.
///
/// Counters taken from sessions (`packets_lost`, the `fec_*` counts) cover the sessions alive
/// when asked. The two FEC ratios are gauges, not sums: the largest over live sessions.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Stats {
    /// Seconds since the engine started, so a client can compute rates.
    pub uptime_secs: u64,
    /// UDP datagrams sent to peers.
    pub packets_sent: u64,
    /// UDP datagrams received from peers.
    pub packets_received: u64,
    /// Bytes of UDP payload sent to peers.
    pub bytes_sent: u64,
    /// Bytes of UDP payload received from peers.
    pub bytes_received: u64,
    /// Packets declared lost by the ARQ.
    pub packets_lost: u64,
    /// Frames sent again after a loss.
    pub frames_retransmitted: u64,
    /// Stream bytes sent again after a loss.
    pub bytes_retransmitted: u64,
    /// FEC groups closed and protected with parity.
    pub fec_groups_sent: u64,
    /// Parity packets sent.
    pub fec_parity_sent: u64,
    /// Parity packets received.
    pub fec_parity_received: u64,
    /// Lost data packets rebuilt from parity instead of waiting for a retransmission.
    pub fec_packets_recovered: u64,
    /// Received groups that lost more packets than their parity could rebuild.
    pub fec_groups_unrecoverable: u64,
    /// Parity packets per data packet in the last group sent (largest over live sessions).
    pub fec_ratio: f64,
    /// Loss (0 to 1) the peer reports seeing before FEC repair (largest over live sessions).
    pub fec_peer_loss: f64,
    /// Handshakes refused because the peer's `fec` settings differ from ours.
    pub fec_mismatches: u64,
    /// Datagrams dropped because they failed authentication or replayed an old packet number.
    pub packets_rejected: u64,
    /// Established sessions with peers.
    pub sessions: u64,
    /// Open multiplexed streams across all sessions.
    pub streams: u64,
    /// Forwarded connections accepted on `maps` listeners.
    pub connections_accepted: u64,
    /// Streams opened by peers and connected to an `allow` target.
    pub streams_connected: u64,
    /// Streams opened by peers for a map id this node's `allow` list does not name.
    pub streams_refused: u64,
    /// Connections to `allow` targets that failed (refused, unreachable, timed out).
    pub connects_failed: u64,
    /// Local connections closed because no session to their peer came up in time.
    pub session_waits_expired: u64,
    /// Peer sessions that ended, for any reason (the dialling side then re-handshakes).
    pub sessions_closed: u64,
    /// UDP datagrams the kernel refused to send (the ARQ resends their contents).
    pub send_errors: u64,
    /// UDP map flows open now (a gauge).
    pub udp_flows: u64,
    /// UDP map flows opened (on the `maps` side for new clients, on the `allow` side for the
    /// peer's new flows).
    pub udp_flows_opened: u64,
    /// UDP map flows refused: `udp.max_flows` reached, a map id not in `allow`, or the two
    /// nodes disagree on the map's proto.
    pub udp_flows_refused: u64,
    /// Datagrams received from UDP map clients and targets.
    pub udp_datagrams_in: u64,
    /// Datagrams sent to UDP map clients and targets.
    pub udp_datagrams_out: u64,
    /// UDP map datagrams dropped: no session or flow for them, malformed fragments, incomplete
    /// datagrams given up on, full queues, sends the kernel refused.
    pub udp_datagrams_dropped: u64,
    /// Datagrams that reached a shard other than the one owning their session (no steering
    /// program, a shard not yet started, a changed shard count) and were handed to the owner.
    pub packets_handed_over: u64,
    /// Datagrams this shard received from other shards (the other side of
    /// `packets_handed_over`).
    pub packets_taken_over: u64,
    /// Misrouted datagrams dropped because their owner's handover queue was full.
    pub handover_dropped: u64,
    /// Accepted connections passed to another shard because only that shard had a session
    /// with the map's peer.
    pub connections_handed_over: u64,
    /// One row per session (handshakes still in progress are left out). Only in the engine
    /// total, which lists every shard's sessions, each naming its shard.
    pub session_rows: Vec<SessionRow>,
    /// One row per map and allow entry. In the engine total: summed over shards.
    pub map_rows: Vec<MapRow>,
    /// Round-trip time samples (one per session every 100 ms, the latest acknowledgement's).
    pub rtt: Latency,
    /// From accepting a client connection on a map to its stream being open on the session
    /// (waiting for the peer's session included).
    pub stream_open: Latency,
    /// From a peer opening a stream to the connection to its `allow` target being established:
    /// the far end's part of opening a stream.
    pub target_connect: Latency,
    /// The same counters for each shard, in shard order (empty inside a per-shard entry).
    pub per_shard: Vec<Stats>,
}

/// One session with a peer, as one shard sees it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SessionRow {
    /// The session's local id (hex), unique within the engine.
    pub id: String,
    /// The shard that owns the session.
    pub shard: u32,
    /// The peer's name from the config (empty when no `peers` entry names it).
    pub peer: String,
    /// The peer's UDP address.
    pub remote: String,
    /// `dialled` (we dialled the peer) or `accepted`.
    pub side: String,
    /// `established`, `confirming` (accepted, waiting for the dialler's proof) or `closing`.
    pub state: String,
    /// Seconds since the handshake completed.
    pub uptime_secs: u64,
    /// Smoothed round-trip time, microseconds.
    pub rtt_us: u64,
    /// Smallest round-trip time seen, microseconds.
    pub rtt_min_us: u64,
    /// Latest round-trip time sample, microseconds.
    pub rtt_latest_us: u64,
    /// Packets sent to the peer.
    pub packets_sent: u64,
    /// Packets received from the peer.
    pub packets_received: u64,
    /// Bytes sent to the peer (UDP payload).
    pub bytes_sent: u64,
    /// Bytes received from the peer (UDP payload).
    pub bytes_received: u64,
    /// Stream payload sent, first transmissions only (goodput out = its rate).
    pub stream_bytes_sent: u64,
    /// Stream payload received in order (goodput in = its rate).
    pub stream_bytes_received: u64,
    /// Stream payload sent again after a loss.
    pub bytes_retransmitted: u64,
    /// Packets declared lost.
    pub packets_lost: u64,
    /// Recent loss rate the rate control sees (0 to 1).
    pub loss_rate: f64,
    /// Lost packets rebuilt from FEC parity.
    pub fec_packets_recovered: u64,
    /// Streams open on the session.
    pub streams: u64,
    /// Pacing rate, bytes per second.
    pub pacing_rate: u64,
    /// Congestion window, bytes.
    pub cwnd: u64,
    /// Bytes sent and not yet acknowledged or declared lost.
    pub bytes_in_flight: u64,
}

/// One map (`kind` `listen`: connections accepted here, forwarded to `peer`) or allow entry
/// (`kind` `allow`: streams from peers connected to the target `addr`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct MapRow {
    /// The map id.
    pub id: u32,
    /// `listen` or `allow`.
    pub kind: String,
    /// The peer a `listen` map forwards to (empty for `allow`).
    pub peer: String,
    /// The listen address (`listen`) or the target (`allow`).
    pub addr: String,
    /// Connections forwarded: streams opened (`listen`) or targets connected (`allow`).
    pub connections: u64,
    /// Forwarded connections open now.
    pub connections_open: u64,
    /// Bytes read from the local TCP connections into the tunnel.
    pub bytes_in: u64,
    /// Bytes written from the tunnel to the local TCP connections.
    pub bytes_out: u64,
}

/// A configured peer and the engine's sessions with it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PeerRow {
    /// The peer's name.
    pub name: String,
    /// The address the engine dials (empty: the peer dials us).
    pub addr: String,
    /// `up` (at least one established session), `connecting` (a dial in progress) or `down`.
    pub state: String,
    /// The shards with an established session with the peer.
    pub shards: Vec<u32>,
    /// The sessions with the peer.
    pub sessions: Vec<SessionRow>,
}

/// A latency distribution (from an HDR histogram), microseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Latency {
    /// Samples recorded.
    pub count: u64,
    /// Sum of the samples (for a Prometheus summary's `_sum`), microseconds.
    pub sum_us: u64,
    pub min_us: u64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

/// Why a control line could not be parsed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ParseError {
    /// Longer than [`MAX_LINE_LEN`].
    #[error("control message of {len} bytes exceeds the limit of {MAX_LINE_LEN} bytes")]
    TooLong {
        /// Length of the offending line.
        len: usize,
    },
    /// Not a JSON encoding of the expected message.
    #[error("malformed control message: {0}")]
    Json(#[from] serde_json::Error),
    /// A well-formed request for a command this side does not know.
    #[error("unknown command `{name}` (this engine serves: {known})")]
    UnknownCommand {
        /// The command as the client sent it.
        name: String,
        /// The commands this side serves, comma-separated.
        known: String,
    },
    /// A request for a protocol version this side does not speak.
    #[error("control protocol version {got} is not supported (this side speaks {supported})")]
    Version {
        /// The version in the request.
        got: u32,
        /// [`PROTOCOL_VERSION`].
        supported: u32,
    },
}

/// Every command, for error messages.
const COMMANDS: [Command; 5] = [
    Command::Status,
    Command::Stats,
    Command::Reload,
    Command::Peers,
    Command::Maps,
];

/// Turns the JSON error for an otherwise well-formed request with an unknown command into
/// [`ParseError::UnknownCommand`], which says what this side serves instead.
fn unknown_command(line: &[u8], err: ParseError) -> ParseError {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Loose {
        version: u32,
        command: String,
    }
    if !matches!(&err, ParseError::Json(json) if json.is_data()) {
        return err;
    }
    match parse_line::<Loose>(line) {
        // A client of another version may well know commands this side does not: the version
        // is the real reason.
        Ok(loose) if loose.version != PROTOCOL_VERSION => ParseError::Version {
            got: loose.version,
            supported: PROTOCOL_VERSION,
        },
        Ok(loose) if !COMMANDS.iter().any(|c| c.to_string() == loose.command) => {
            ParseError::UnknownCommand {
                name: loose.command,
                known: COMMANDS.map(|c| c.to_string()).join(", "),
            }
        }
        _ => err,
    }
}

fn parse_line<T: for<'de> Deserialize<'de>>(line: &[u8]) -> Result<T, ParseError> {
    if line.len() > MAX_LINE_LEN {
        return Err(ParseError::TooLong { len: line.len() });
    }
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    Ok(serde_json::from_slice(line)?)
}

fn to_line<T: Serialize>(message: &T) -> Vec<u8> {
    // Serialising these types cannot fail: they hold only strings, integers and unit variants,
    // and every map key is a string. Falling back to an error line keeps this path panic-free
    // all the same.
    let mut line = serde_json::to_vec(message).unwrap_or_else(|err| {
        serde_json::to_vec(&Response::Error {
            message: err.to_string(),
        })
        .unwrap_or_default()
    });
    line.push(b'\n');
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_round_trip() {
        for command in COMMANDS {
            let request = Request::new(command);
            let line = request.to_line();
            assert_eq!(line.last(), Some(&b'\n'));
            assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1);
            assert_eq!(Request::parse(&line).unwrap(), request);
        }
    }

    #[test]
    fn request_wire_format_is_stable() {
        let line = Request::new(Command::Stats).to_line();
        assert_eq!(line, b"{\"version\":1,\"command\":\"stats\"}\n");
        let parsed = Request::parse(b"{\"command\":\"reload\",\"version\":1}\r\n").unwrap();
        assert_eq!(parsed.command, Command::Reload);
    }

    #[test]
    fn response_round_trip() {
        let responses = [
            Response::Status(Status {
                engine_version: "0.1.0".into(),
                config: "/etc/coretun/config.yaml".into(),
                uptime_secs: 12,
                shards: 2,
                backend: "io_uring".into(),
                sessions: 3,
                streams: 40,
            }),
            Response::Stats(Stats {
                uptime_secs: 5,
                packets_sent: 1,
                packets_received: 2,
                bytes_sent: 3,
                bytes_received: 4,
                packets_lost: 5,
                frames_retransmitted: 6,
                fec_packets_recovered: 7,
                fec_ratio: 0.3,
                fec_peer_loss: 0.125,
                fec_mismatches: 2,
                packets_rejected: 8,
                sessions: 9,
                streams: 10,
                packets_handed_over: 11,
                per_shard: vec![Stats {
                    packets_sent: 1,
                    ..Stats::default()
                }],
                ..Stats::default()
            }),
            Response::Reloaded {
                maps: 4,
                changes: Vec::new(),
                restart_needed: Vec::new(),
            },
            Response::Reloaded {
                maps: 1,
                changes: vec!["map 3 added (tcp 127.0.0.1:9000 -> peer edge)".into()],
                restart_needed: vec!["shards: 2 -> 3 needs a restart (not applied)".into()],
            },
            Response::Error {
                message: "line one\nline two \"quoted\"".into(),
            },
        ];
        for response in responses {
            let line = response.to_line();
            // The framing relies on this: a message never contains a raw newline.
            assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1);
            assert_eq!(Response::parse(&line).unwrap(), response);
        }
    }

    proptest::proptest! {
        /// The FEC gauges are floats: any finite value must read back exactly, or a stats
        /// response would not survive its own round trip.
        #[test]
        fn float_gauges_round_trip(bits: u64, other: u64) {
            let [ratio, loss] = [bits, other].map(f64::from_bits);
            proptest::prop_assume!(ratio.is_finite() && loss.is_finite());
            let response = Response::Stats(Stats {
                fec_ratio: ratio,
                fec_peer_loss: loss,
                ..Stats::default()
            });
            proptest::prop_assert_eq!(Response::parse(&response.to_line()).ok(), Some(response));
        }
    }

    #[test]
    fn response_wire_format_is_tagged() {
        let line = Response::Reloaded {
            maps: 2,
            changes: Vec::new(),
            restart_needed: Vec::new(),
        }
        .to_line();
        assert_eq!(line, b"{\"result\":\"reloaded\",\"maps\":2}\n");
        // An answer from an engine that lists no changes reads back with empty lists.
        assert_eq!(
            Response::parse(b"{\"result\":\"reloaded\",\"maps\":2}").unwrap(),
            Response::Reloaded {
                maps: 2,
                changes: Vec::new(),
                restart_needed: Vec::new(),
            }
        );
    }

    #[test]
    fn missing_counters_default_to_zero() {
        let parsed = Response::parse(b"{\"result\":\"stats\",\"packets_sent\":7}").unwrap();
        let expected = Stats {
            packets_sent: 7,
            ..Stats::default()
        };
        assert_eq!(parsed, Response::Stats(expected));
    }

    #[test]
    fn rejects_other_versions() {
        let err = Request::parse(b"{\"version\":2,\"command\":\"status\"}").unwrap_err();
        assert!(matches!(
            err,
            ParseError::Version {
                got: 2,
                supported: PROTOCOL_VERSION
            }
        ));
    }

    #[test]
    fn rejects_malformed_requests() {
        let bad: [&[u8]; 7] = [
            b"",
            b"{",
            b"{\"version\":1}",
            b"{\"version\":1,\"command\":7}",
            b"{\"version\":1,\"command\":\"status\",\"extra\":true}",
            b"{\"version\":-1,\"command\":\"status\"}",
            b"{\"version\":1,\"command\":\"status\"}\n{\"version\":1,\"command\":\"status\"}",
        ];
        for line in bad {
            let err = Request::parse(line).unwrap_err();
            assert!(matches!(err, ParseError::Json(_)), "{line:?}: {err}");
        }
    }

    #[test]
    fn unknown_commands_are_named() {
        let err = Request::parse(b"{\"version\":1,\"command\":\"launch\"}\n").unwrap_err();
        assert!(
            matches!(&err, ParseError::UnknownCommand { name, .. } if name == "launch"),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            "unknown command `launch` (this engine serves: status, stats, reload, peers, maps)"
        );
        let err = Request::parse(b"{\"version\":2,\"command\":\"launch\"}").unwrap_err();
        assert!(matches!(err, ParseError::Version { got: 2, .. }), "{err:?}");
        // A known command with a stray field stays a plain JSON error.
        let err = Request::parse(b"{\"version\":1,\"command\":\"stats\",\"x\":1}").unwrap_err();
        assert!(matches!(err, ParseError::Json(_)), "{err:?}");
    }

    #[test]
    fn rejects_overlong_lines() {
        let line = vec![b' '; MAX_LINE_LEN + 1];
        assert!(matches!(
            Request::parse(&line),
            Err(ParseError::TooLong { len }) if len == MAX_LINE_LEN + 1
        ));
    }
}
