//! From text to [`Config`]: YAML into [`RawConfig`], then every value parsed, range-checked,
//! cross-checked (duplicates, map peers) and resolved, each failure pointing at its line.
//!
//! The few things that reach outside the text (host name lookups, reading `key_file`, stretching
//! a passphrase, checking the log filter) go through an [`Environment`], so that tests and the
//! fuzzer can parse without DNS, files or a 19 MiB Argon2 run per input.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::time::Duration;

use engine_proto::config::{FecConfig, FecMode, Profile};
use engine_proto::crypto::{Psk, PskError};
use serde::Deserialize;
use serde_path_to_error::{Segment, Track};
use serde_saphyr::{MessageFormatter, UserMessageFormatter};

use super::error::{ConfigError, Position};
use super::raw::{
    self, RawAllow, RawConfig, RawCpus, RawFec, RawFecTable, RawIo, RawMap, RawPeer, RawUdp, S,
};
use super::{
    Allow, Backend, Config, Control, DEFAULT_CONTROL_SOCKET, Io, Log, MAX_UDP_FLOWS, Map, MapId,
    Peer, Proto, Rate, Shards, Transport, Udp, UdpMode,
};

/// Default for `mtu`.
pub const DEFAULT_MTU: usize = 1400;
/// Accepted range of `mtu`: IPv4's minimum reassembly size up to just under the UDP maximum.
pub const MTU_RANGE: std::ops::RangeInclusive<usize> = 576..=65_000;
/// Accepted range of `shards` when it is a number. The shard is the top byte of a session id
/// (a `u8`), and the reuseport steering program needs shard indices below 255.
pub const MAX_SHARDS: usize = 255;
/// Highest CPU number `cpus` (and [`parse_cpulist`]) accepts.
pub const MAX_CPU: usize = 4095;
/// The FEC names `fec` (or `fec.mode`) accepts.
const FEC_MODES: &str = "off, adaptive or fixed";

/// `fec` when the config leaves it out: adaptive parity for the profiles meant for lossy links
/// (`fast2`, `fast3`), none for the others.
pub fn default_fec(profile: Profile) -> FecConfig {
    match profile {
        Profile::Normal | Profile::Fast => FecConfig::OFF,
        Profile::Fast2 | Profile::Fast3 => FecConfig::ADAPTIVE,
    }
}

/// Default for `log.level`.
pub const DEFAULT_LOG_LEVEL: &str = "info";
/// Longest peer or node name.
pub const MAX_NAME_LEN: usize = 64;

/// What parsing a config needs from outside its text.
///
/// [`SystemEnvironment`] is the real one; tests and the fuzz target supply their own so that
/// parsing never touches the network or the file system.
pub trait Environment {
    /// Looks up `host` (a name, never an IP literal: those are parsed without asking) and
    /// returns its addresses with `port`.
    fn resolve(&self, host: &str, port: u16) -> io::Result<Vec<SocketAddr>>;

    /// Reads a `key_file` (already made absolute or relative to the working directory).
    fn read_key_file(&self, path: &Path) -> io::Result<String>;

    /// Derives the key from a `passphrase`.
    fn passphrase_key(&self, passphrase: &str) -> Result<Psk, PskError>;

    /// Checks a `log.level` filter. The default is a syntax check (see [`check_log_filter`]);
    /// the engine, which links `tracing-subscriber`, overrides it with the real parser.
    fn check_log_filter(&self, directives: &str) -> Result<(), String> {
        check_log_filter(directives)
    }
}

/// The real environment: the system resolver, the file system, Argon2id.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemEnvironment;

impl Environment for SystemEnvironment {
    fn resolve(&self, host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
        Ok((host, port).to_socket_addrs()?.collect())
    }

    fn read_key_file(&self, path: &Path) -> io::Result<String> {
        std::fs::read_to_string(path)
    }

    fn passphrase_key(&self, passphrase: &str) -> Result<Psk, PskError> {
        Psk::from_passphrase(passphrase)
    }
}

/// Parses `text` (the contents of `path`) into a [`Config`].
pub(super) fn parse(path: &Path, text: &str, env: &dyn Environment) -> Result<Config, ConfigError> {
    let raw = deserialize(path, text)?;
    Converter { path, env }.config(raw)
}

/// YAML into [`RawConfig`]. An empty document (nothing, or only comments) is an empty config,
/// which then fails for its missing key.
fn deserialize(path: &Path, text: &str) -> Result<RawConfig, ConfigError> {
    // Snippets are rendered text for humans; the error carries line and column instead.
    let options = serde_saphyr::options! { with_snippet: false };
    let mut segments = Vec::new();
    let result = serde_saphyr::with_deserializer_from_str_with_options(text, options, |de| {
        let mut track = Track::new();
        let result = Option::<RawConfig>::deserialize(serde_path_to_error::Deserializer::new(
            de, &mut track,
        ));
        if result.is_err() {
            segments = track.path().iter().cloned().collect();
        }
        result
    });
    match result {
        Ok(raw) => Ok(raw.unwrap_or_default()),
        Err(err) => Err(yaml_error(path, segments, &err)),
    }
}

fn yaml_error(path: &Path, mut segments: Vec<Segment>, err: &serde_saphyr::Error) -> ConfigError {
    let position = err
        .location()
        .filter(|location| location.line() > 0)
        .map(|location| Position {
            line: location.line(),
            column: location.column(),
        });
    let mut inner = err.without_snippet();
    if let serde_saphyr::Error::AliasError { error, .. } = inner {
        inner = error.without_snippet();
    }
    let message = match inner {
        serde_saphyr::Error::SerdeUnknownField {
            field, expected, ..
        } => {
            // The path ends in the unknown key itself; the message names it.
            segments.pop();
            format!(
                "unknown field {:?}, expected one of: {}",
                field,
                expected.join(", ")
            )
        }
        serde_saphyr::Error::SerdeMissingField { field, .. } => {
            format!("missing field {field:?}")
        }
        serde_saphyr::Error::InvalidScalar { ty, .. } => match *ty {
            "u32" => "expected a whole number from 0 to 4294967295".to_owned(),
            "u64" => "expected a whole number from 0 to 18446744073709551615".to_owned(),
            "boolean" => "expected true or false".to_owned(),
            ty => format!("invalid {ty}"),
        },
        serde_saphyr::Error::Unexpected { expected, .. } => format!(
            "expected {}",
            match *expected {
                "sequence start" => "a list",
                "mapping start" => "a mapping (key: value lines)",
                other => other,
            }
        ),
        other => sanitize(&UserMessageFormatter.format_message(other)),
    };
    ConfigError::invalid(path, position, field_path(&segments), message)
}

/// `maps[1].peer` from a serde path, leaving out what serde-saphyr's `Spanned` adds (its
/// `value` field) and the segments serde-path-to-error could not name.
fn field_path(segments: &[Segment]) -> String {
    let mut out = String::new();
    for segment in segments {
        match segment {
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            Segment::Map { key } if key == "value" => {}
            Segment::Map { key } | Segment::Enum { variant: key } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(&sanitize(key));
            }
            Segment::Unknown => {}
        }
    }
    out
}

/// Control characters from the input are shown escaped, never written to a terminal raw.
fn sanitize(text: &str) -> String {
    text.chars()
        .flat_map(|c| {
            let escaped: Vec<char> = if c.is_control() {
                c.escape_default().collect()
            } else {
                vec![c]
            };
            escaped
        })
        .collect()
}

/// Converts the raw structs, holding what every error needs.
struct Converter<'a> {
    path: &'a Path,
    env: &'a dyn Environment,
}

type Result<T, E = ConfigError> = std::result::Result<T, E>;

impl Converter<'_> {
    fn error(
        &self,
        position: Option<Position>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> ConfigError {
        ConfigError::invalid(self.path, position, field, message)
    }

    /// An error about a spanned value.
    fn at<T>(
        &self,
        value: &S<T>,
        field: impl Into<String>,
        message: impl fmt::Display,
    ) -> ConfigError {
        self.error(raw::position(value), field, message.to_string())
    }

    fn config(&self, raw: RawConfig) -> Result<Config> {
        let name = raw
            .name
            .as_ref()
            .map(|name| self.name(name, "name"))
            .transpose()?;
        let listen = raw
            .listen
            .as_ref()
            .map(|listen| self.host_addr(listen, "listen"))
            .transpose()?;
        let transport = self.transport(&raw)?;
        let shards = raw
            .shards
            .as_ref()
            .map(|shards| self.shards(shards))
            .transpose()?
            .unwrap_or(Shards::Auto);
        let cpus = raw.cpus.as_ref().map(|cpus| self.cpus(cpus)).transpose()?;
        let io = raw
            .io
            .as_ref()
            .map(|io| self.io(io))
            .transpose()?
            .unwrap_or_default();
        let peers = self.peers(raw.peers.as_deref().unwrap_or_default())?;
        let maps = self.maps(
            raw.maps.as_deref().unwrap_or_default(),
            &peers,
            listen.is_some(),
        )?;
        let allow = self.allow(raw.allow.as_deref().unwrap_or_default())?;
        let udp = raw
            .udp
            .as_ref()
            .map(|udp| self.udp(udp))
            .transpose()?
            .unwrap_or_default();
        let control = Control {
            socket: match raw.control.as_ref().and_then(|c| c.socket.as_ref()) {
                Some(socket) if socket.value.trim().is_empty() => {
                    return Err(self.at(socket, "control.socket", "empty path"));
                }
                Some(socket) => PathBuf::from(&socket.value),
                None => PathBuf::from(DEFAULT_CONTROL_SOCKET),
            },
        };
        let log = Log {
            level: match raw.log.as_ref().and_then(|l| l.level.as_ref()) {
                Some(level) => {
                    self.env.check_log_filter(&level.value).map_err(|err| {
                        self.at(
                            level,
                            "log.level",
                            format!("invalid log filter {:?}: {}", level.value, err),
                        )
                    })?;
                    level.value.clone()
                }
                None => DEFAULT_LOG_LEVEL.to_owned(),
            },
        };
        // Last: the only step that may be slow (Argon2id) or touch the file system.
        let key = self.key(&raw)?;
        Ok(Config {
            name,
            listen,
            key,
            transport,
            shards,
            cpus,
            io,
            peers,
            maps,
            allow,
            udp,
            control,
            log,
        })
    }

    /// Exactly one of `key`, `key_file`, `passphrase`.
    fn key(&self, raw: &RawConfig) -> Result<Psk> {
        let sources: Vec<(&str, &S<String>)> = [
            ("key", raw.key.as_ref()),
            ("key_file", raw.key_file.as_ref()),
            ("passphrase", raw.passphrase.as_ref()),
        ]
        .into_iter()
        .filter_map(|(field, value)| value.map(|value| (field, value)))
        .collect();
        let (field, value) = match sources.as_slice() {
            [] => {
                return Err(self.error(
                    Some(Position { line: 1, column: 1 }),
                    "key",
                    "missing key: set one of key, key_file or passphrase (make a key with \
                     `engine genkey`)",
                ));
            }
            [one] => *one,
            [(first, _), (second, value), ..] => {
                return Err(self.at(
                    value,
                    *second,
                    format!(
                        "{second} conflicts with {first}: set only one of key, key_file, passphrase"
                    ),
                ));
            }
        };
        match field {
            "key" => Psk::from_base64(&value.value).map_err(|err| {
                self.at(
                    value,
                    field,
                    format!("{err} (make one with `engine genkey`)"),
                )
            }),
            "key_file" => {
                if value.value.trim().is_empty() {
                    return Err(self.at(value, field, "empty path"));
                }
                let file = self.relative_to_config(Path::new(&value.value));
                let text = self.env.read_key_file(&file).map_err(|err| {
                    self.at(
                        value,
                        field,
                        format!("cannot read key file {}: {err}", file.display()),
                    )
                })?;
                Psk::from_base64(&text).map_err(|err| {
                    self.at(value, field, format!("key file {}: {err}", file.display()))
                })
            }
            _ => self
                .env
                .passphrase_key(&value.value)
                .map_err(|err| self.at(value, field, err)),
        }
    }

    /// Relative paths in a config are relative to the config file's directory, so a config
    /// works the same whatever directory the engine is started from.
    fn relative_to_config(&self, path: &Path) -> PathBuf {
        if path.is_absolute() {
            return path.to_owned();
        }
        match self.path.parent() {
            Some(dir) => dir.join(path),
            None => path.to_owned(),
        }
    }

    fn transport(&self, raw: &RawConfig) -> Result<Transport> {
        let profile = match &raw.profile {
            Some(value) => Profile::from_name(value.value.trim()).ok_or_else(|| {
                self.at(
                    value,
                    "profile",
                    format!(
                        "unknown profile {:?}, expected one of: {}",
                        value.value,
                        Profile::ALL.map(Profile::name).join(", ")
                    ),
                )
            })?,
            None => Profile::default(),
        };
        let rate = raw
            .rate
            .as_ref()
            .map(|rate| {
                parse_rate(&rate.value).ok_or_else(|| {
                    self.at(
                        rate,
                        "rate",
                        format!(
                            "invalid rate {:?}: expected bits per second, e.g. 100mbit, \
                             2.5gbit, 800kbit or 50000000",
                            rate.value
                        ),
                    )
                })
            })
            .transpose()?;
        let rate = match &raw.congestion {
            None => Rate::Auto {
                max_bytes_per_sec: rate,
            },
            Some(congestion) => match congestion.value.trim() {
                "bbr" => Rate::Auto {
                    max_bytes_per_sec: rate,
                },
                "fixed" => Rate::Fixed {
                    bytes_per_sec: rate.ok_or_else(|| {
                        self.at(
                            congestion,
                            "congestion",
                            "`congestion: fixed` paces at exactly `rate`, but no rate is set",
                        )
                    })?,
                },
                other => {
                    return Err(self.at(
                        congestion,
                        "congestion",
                        format!("unknown congestion control {other:?}, expected bbr or fixed"),
                    ));
                }
            },
        };
        let mtu = match &raw.mtu {
            Some(mtu) => usize::try_from(mtu.value)
                .ok()
                .filter(|value| MTU_RANGE.contains(value))
                .ok_or_else(|| {
                    self.at(
                        mtu,
                        "mtu",
                        format!(
                            "mtu {} out of range {}..={}",
                            mtu.value,
                            MTU_RANGE.start(),
                            MTU_RANGE.end()
                        ),
                    )
                })?,
            None => DEFAULT_MTU,
        };
        let rtt = raw.rtt.as_ref();
        let min_rtt = rtt
            .and_then(|rtt| rtt.min.as_ref())
            .map(|min| self.duration(min, "rtt.min"))
            .transpose()?;
        let max_rtt = rtt
            .and_then(|rtt| rtt.max.as_ref())
            .map(|max| self.duration(max, "rtt.max"))
            .transpose()?;
        if let (Some(min), Some(max), Some(max_value)) =
            (min_rtt, max_rtt, rtt.and_then(|rtt| rtt.max.as_ref()))
            && min > max
        {
            return Err(self.at(
                max_value,
                "rtt.max",
                format!(
                    "rtt.max ({}) is below rtt.min ({})",
                    DurationText(max),
                    DurationText(min)
                ),
            ));
        }
        let fec = match &raw.fec {
            Some(fec) => self.fec(fec)?,
            None => default_fec(profile),
        };
        Ok(Transport {
            profile,
            rate,
            mtu,
            min_rtt,
            max_rtt,
            fec,
        })
    }

    /// `fec:` as a mode name or a mapping; the numbers are range-checked by
    /// [`FecConfig::validate`], so the config and the protocol agree on the limits.
    fn fec(&self, value: &S<RawFec>) -> Result<FecConfig> {
        let table = match &value.value {
            RawFec::Mode(mode) => {
                return match mode.trim() {
                    "off" => Ok(FecConfig::OFF),
                    "adaptive" => Ok(FecConfig::ADAPTIVE),
                    "fixed" => Err(self.at(
                        value,
                        "fec",
                        "a fixed mode needs its parity count: write it as a mapping, e.g. \
                         `fec: {mode: fixed, data: 10, parity: 3}`",
                    )),
                    other => Err(self.at(
                        value,
                        "fec",
                        format!("unknown FEC mode {other:?}, expected {FEC_MODES}"),
                    )),
                };
            }
            RawFec::Table(table) => table,
            RawFec::List => {
                return Err(self.at(
                    value,
                    "fec",
                    format!(
                        "expected a mode ({FEC_MODES}) or a mapping with mode, data, parity, \
                         interleave, not a list"
                    ),
                ));
            }
        };
        let RawFecTable {
            mode,
            data,
            parity,
            interleave,
        } = &**table;
        // Numbers beyond a byte fail the range check like any other out-of-range value.
        let number = |value: &Option<S<u64>>, default: u8| {
            value
                .as_ref()
                .map_or(default, |v| u8::try_from(v.value).unwrap_or(u8::MAX))
        };
        let data_count = number(data, FecConfig::DEFAULT_ADAPTIVE_DATA);
        let fec_mode = match mode.value.trim() {
            "off" => {
                for (field, value) in [
                    ("data", data),
                    ("parity", parity),
                    ("interleave", interleave),
                ] {
                    if let Some(value) = value {
                        return Err(self.at(
                            value,
                            format!("fec.{field}"),
                            "FEC is off: remove this field, or choose mode adaptive or fixed",
                        ));
                    }
                }
                return Ok(FecConfig::OFF);
            }
            "adaptive" => {
                if let Some(parity) = parity {
                    return Err(self.at(
                        parity,
                        "fec.parity",
                        "only a fixed mode has a parity count (adaptive chooses its own)",
                    ));
                }
                FecMode::Adaptive { data: data_count }
            }
            "fixed" => {
                let Some(parity_value) = parity else {
                    return Err(self.at(
                        mode,
                        "fec.parity",
                        format!(
                            "a fixed mode needs its parity count: add `parity:` (1..={})",
                            FecConfig::MAX_PARITY
                        ),
                    ));
                };
                FecMode::Fixed {
                    data: data_count,
                    parity: u8::try_from(parity_value.value).unwrap_or(u8::MAX),
                }
            }
            other => {
                return Err(self.at(
                    mode,
                    "fec.mode",
                    format!("unknown FEC mode {other:?}, expected {FEC_MODES}"),
                ));
            }
        };
        let config = FecConfig {
            mode: fec_mode,
            interleave: number(interleave, 1),
        };
        config.validate().map_err(|message| {
            // The message starts with the field it is about ("parity must be 1..=32").
            let (field, rest) = message.split_once(' ').unwrap_or(("", message.as_str()));
            let spanned = match field {
                "data" => data.as_ref(),
                "parity" => parity.as_ref(),
                "interleave" => interleave.as_ref(),
                _ => None,
            };
            match spanned {
                Some(spanned) => self.at(spanned, format!("fec.{field}"), rest),
                None => self.at(mode, "fec", message.clone()),
            }
        })?;
        Ok(config)
    }

    fn duration(&self, value: &S<String>, field: &str) -> Result<Duration> {
        parse_duration(&value.value).ok_or_else(|| {
            self.at(
                value,
                field,
                format!(
                    "invalid duration {:?}: expected a positive number with a unit (us, ms, s), \
                     e.g. 10ms or 1.5s",
                    value.value
                ),
            )
        })
    }

    fn shards(&self, value: &S<String>) -> Result<Shards> {
        let text = value.value.trim();
        if text == "auto" {
            return Ok(Shards::Auto);
        }
        text.parse::<usize>()
            .ok()
            .filter(|count| *count <= MAX_SHARDS)
            .and_then(NonZeroUsize::new)
            .map(Shards::Count)
            .ok_or_else(|| {
                self.at(
                    value,
                    "shards",
                    format!(
                        "invalid shards {:?}: expected auto or a number from 1 to {MAX_SHARDS}",
                        value.value
                    ),
                )
            })
    }

    /// `cpus:` as a list of numbers or a cpulist string, sorted and deduplicated.
    fn cpus(&self, value: &S<RawCpus>) -> Result<Vec<usize>> {
        let cpus = match &value.value {
            RawCpus::Text(text) => parse_cpulist(text)
                .map_err(|err| self.at(value, "cpus", format!("invalid cpus {text:?}: {err}")))?,
            RawCpus::List(list) => {
                let mut cpus = Vec::with_capacity(list.len());
                for cpu in list {
                    let number = usize::try_from(cpu.value)
                        .ok()
                        .filter(|&number| number <= MAX_CPU)
                        .ok_or_else(|| {
                            self.at(
                                cpu,
                                "cpus",
                                format!("CPU {} is above the highest, {MAX_CPU}", cpu.value),
                            )
                        })?;
                    cpus.push(number);
                }
                cpus.sort_unstable();
                cpus.dedup();
                cpus
            }
        };
        if cpus.is_empty() {
            return Err(self.at(
                value,
                "cpus",
                "empty CPU list: leave cpus out to use every online CPU",
            ));
        }
        Ok(cpus)
    }

    fn io(&self, raw: &RawIo) -> Result<Io> {
        let defaults = Io::default();
        let backend = match &raw.backend {
            Some(value) => Backend::from_name(value.value.trim()).ok_or_else(|| {
                self.at(
                    value,
                    "io.backend",
                    format!(
                        "unknown backend {:?}, expected one of: {}",
                        value.value,
                        Backend::ALL.map(Backend::name).join(", ")
                    ),
                )
            })?,
            None => defaults.backend,
        };
        Ok(Io {
            backend,
            gso: raw.gso.as_ref().map_or(defaults.gso, |gso| gso.value),
            steering: raw
                .steering
                .as_ref()
                .map_or(defaults.steering, |steering| steering.value),
        })
    }

    /// A node or peer name: what a node says in its handshake, so kept to a safe alphabet.
    fn name(&self, value: &S<String>, field: &str) -> Result<String> {
        let name = value.value.as_str();
        let valid = !name.is_empty()
            && name.len() <= MAX_NAME_LEN
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if valid {
            Ok(name.to_owned())
        } else {
            Err(self.at(
                value,
                field,
                format!(
                    "invalid name {name:?}: expected 1 to {MAX_NAME_LEN} characters from \
                     A-Z a-z 0-9 . _ -"
                ),
            ))
        }
    }

    /// `IP:port` only: a local address to bind.
    fn ip_addr(&self, value: &S<String>, field: &str) -> Result<SocketAddr> {
        value.value.trim().parse().map_err(|_| {
            self.at(
                value,
                field,
                format!(
                    "invalid address {:?}: expected IP:port, e.g. 127.0.0.1:8080 or [::1]:8080",
                    value.value
                ),
            )
        })
    }

    /// `IP:port` or `host:port`, the host looked up now (the first IPv4 address wins, else the
    /// first address), so that a name that does not resolve stops the engine at start-up
    /// instead of failing each connection later.
    fn host_addr(&self, value: &S<String>, field: &str) -> Result<SocketAddr> {
        let text = value.value.trim();
        if let Ok(addr) = text.parse::<SocketAddr>() {
            return Ok(addr);
        }
        let invalid = || {
            self.at(
                value,
                field,
                format!(
                    "invalid address {:?}: expected IP:port or host:port, e.g. 203.0.113.7:4000 \
                     or example.com:4000",
                    value.value
                ),
            )
        };
        let (host, port) = text.rsplit_once(':').ok_or_else(invalid)?;
        let port: u16 = port.parse().map_err(|_| invalid())?;
        let host_ok = !host.is_empty()
            && host.len() <= 253
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
        if !host_ok {
            return Err(invalid());
        }
        let addrs = self
            .env
            .resolve(host, port)
            .map_err(|err| self.at(value, field, format!("cannot resolve {host:?}: {err}")))?;
        addrs
            .iter()
            .find(|addr| addr.is_ipv4())
            .or_else(|| addrs.first())
            .copied()
            .ok_or_else(|| self.at(value, field, format!("{host:?} has no addresses")))
    }

    fn proto(&self, value: Option<&S<String>>, field: &str) -> Result<Proto> {
        let Some(value) = value else {
            return Ok(Proto::Tcp);
        };
        match value.value.trim() {
            "tcp" => Ok(Proto::Tcp),
            "udp" => Ok(Proto::Udp),
            other => Err(self.at(
                value,
                field,
                format!("unknown proto {other:?}, expected tcp or udp"),
            )),
        }
    }

    /// A map's `mode`: only for UDP maps, `datagram` unless given.
    fn mode(
        &self,
        value: Option<&S<String>>,
        proto: Proto,
        field: &str,
    ) -> Result<Option<UdpMode>> {
        match (proto, value) {
            (Proto::Tcp, None) => Ok(None),
            (Proto::Tcp, Some(value)) => Err(self.at(
                value,
                field,
                "mode applies to udp maps only (add proto: udp, or remove mode)",
            )),
            (Proto::Udp, None) => Ok(Some(UdpMode::Datagram)),
            (Proto::Udp, Some(value)) => match value.value.trim() {
                "datagram" => Ok(Some(UdpMode::Datagram)),
                "reliable" => Ok(Some(UdpMode::Reliable)),
                other => Err(self.at(
                    value,
                    field,
                    format!("unknown mode {other:?}, expected datagram or reliable"),
                )),
            },
        }
    }

    fn udp(&self, raw: &RawUdp) -> Result<Udp> {
        let defaults = Udp::default();
        let idle_timeout = raw
            .idle_timeout
            .as_ref()
            .map(|t| self.duration(t, "udp.idle_timeout"))
            .transpose()?
            .unwrap_or(defaults.idle_timeout);
        let max_flows = match &raw.max_flows {
            None => defaults.max_flows,
            Some(value) => usize::try_from(value.value)
                .ok()
                .filter(|n| (1..=MAX_UDP_FLOWS).contains(n))
                .ok_or_else(|| {
                    self.at(
                        value,
                        "udp.max_flows",
                        format!(
                            "invalid max_flows {}: expected 1 to {MAX_UDP_FLOWS}",
                            value.value
                        ),
                    )
                })?,
        };
        Ok(Udp {
            idle_timeout,
            max_flows,
        })
    }

    fn peers(&self, raw: &[RawPeer]) -> Result<Vec<Peer>> {
        let mut seen: HashMap<&str, u64> = HashMap::new();
        let mut peers = Vec::with_capacity(raw.len());
        for (i, peer) in raw.iter().enumerate() {
            let field = format!("peers[{i}].name");
            let name = self.name(&peer.name, &field)?;
            if let Some(line) = seen.get(peer.name.value.as_str()) {
                return Err(self.at(
                    &peer.name,
                    field,
                    format!("duplicate peer name {name:?} (first at line {line})"),
                ));
            }
            seen.insert(&peer.name.value, peer.name.referenced.line());
            let addr = peer
                .addr
                .as_ref()
                .map(|addr| self.host_addr(addr, &format!("peers[{i}].addr")))
                .transpose()?;
            peers.push(Peer { name, addr });
        }
        Ok(peers)
    }

    fn maps(&self, raw: &[RawMap], peers: &[Peer], listening: bool) -> Result<Vec<Map>> {
        let mut ids: HashMap<u32, u64> = HashMap::new();
        let mut listens: HashMap<SocketAddr, u64> = HashMap::new();
        let mut maps = Vec::with_capacity(raw.len());
        for (i, map) in raw.iter().enumerate() {
            if let Some(line) = ids.insert(map.id.value, map.id.referenced.line()) {
                return Err(self.at(
                    &map.id,
                    format!("maps[{i}].id"),
                    format!("duplicate map id {} (first at line {line})", map.id.value),
                ));
            }
            let listen = self.ip_addr(&map.listen, &format!("maps[{i}].listen"))?;
            // Port 0 asks the kernel for a free port, so several such entries never collide.
            if listen.port() != 0
                && let Some(line) = listens.insert(listen, map.listen.referenced.line())
            {
                return Err(self.at(
                    &map.listen,
                    format!("maps[{i}].listen"),
                    format!("duplicate listen address {listen} (first at line {line})"),
                ));
            }
            let peer_field = format!("maps[{i}].peer");
            let Some(peer) = peers.iter().position(|p| p.name == map.peer.value) else {
                let known = if peers.is_empty() {
                    "no peers are configured".to_owned()
                } else {
                    let names: Vec<&str> = peers.iter().map(|p| p.name.as_str()).collect();
                    format!("peers are: {}", names.join(", "))
                };
                return Err(self.at(
                    &map.peer,
                    peer_field,
                    format!("unknown peer {:?} ({known})", map.peer.value),
                ));
            };
            if peers.get(peer).is_some_and(|p| p.addr.is_none()) && !listening {
                return Err(self.at(
                    &map.peer,
                    peer_field,
                    format!(
                        "peer {:?} has no addr and this node has no listen, so no session with \
                         it can exist: give the peer an addr (to dial it) or set listen (to \
                         accept it)",
                        map.peer.value
                    ),
                ));
            }
            let proto = self.proto(map.proto.as_ref(), &format!("maps[{i}].proto"))?;
            let mode = self.mode(map.mode.as_ref(), proto, &format!("maps[{i}].mode"))?;
            maps.push(Map {
                id: MapId(map.id.value),
                listen,
                peer,
                proto,
                mode,
            });
        }
        Ok(maps)
    }

    fn allow(&self, raw: &[RawAllow]) -> Result<Vec<Allow>> {
        let mut ids: HashMap<u32, u64> = HashMap::new();
        let mut allow = Vec::with_capacity(raw.len());
        for (i, entry) in raw.iter().enumerate() {
            if let Some(line) = ids.insert(entry.id.value, entry.id.referenced.line()) {
                return Err(self.at(
                    &entry.id,
                    format!("allow[{i}].id"),
                    format!(
                        "duplicate allow id {} (first at line {line})",
                        entry.id.value
                    ),
                ));
            }
            let target = self.host_addr(&entry.target, &format!("allow[{i}].target"))?;
            let proto = self.proto(entry.proto.as_ref(), &format!("allow[{i}].proto"))?;
            allow.push(Allow {
                id: MapId(entry.id.value),
                target,
                proto,
            });
        }
        Ok(allow)
    }
}

/// A Linux cpulist (`0-3,6`, as in `/sys/devices/system/cpu/online` or `taskset -c`): CPU
/// numbers and inclusive ranges separated by commas, returned sorted without duplicates. Empty
/// lists, reversed ranges (`3-1`) and CPUs above [`MAX_CPU`] are errors.
pub fn parse_cpulist(text: &str) -> Result<Vec<usize>, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("empty CPU list".to_owned());
    }
    let number = |part: &str| -> Result<usize, String> {
        let part = part.trim();
        if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!("{part:?} is not a CPU number"));
        }
        match part.parse::<usize>() {
            Ok(cpu) if cpu <= MAX_CPU => Ok(cpu),
            _ => Err(format!("CPU {part} is above the highest, {MAX_CPU}")),
        }
    };
    let mut cpus = Vec::new();
    for entry in text.split(',') {
        match entry.split_once('-') {
            Some((first, last)) => {
                let (first, last) = (number(first)?, number(last)?);
                if first > last {
                    return Err(format!("range {first}-{last} ends below its start"));
                }
                cpus.extend(first..=last);
            }
            None => cpus.push(number(entry)?),
        }
    }
    cpus.sort_unstable();
    cpus.dedup();
    Ok(cpus)
}

/// CPU numbers as a cpulist, runs collapsed into ranges: `[0, 1, 2, 5]` is `0-2,5`. The
/// inverse of [`parse_cpulist`] for sorted lists.
pub fn format_cpulist(cpus: &[usize]) -> String {
    let mut out = String::new();
    let mut rest = cpus;
    while let Some((&first, tail)) = rest.split_first() {
        let mut last = first;
        let mut run = 0;
        while tail
            .get(run)
            .is_some_and(|&next| Some(next) == last.checked_add(1))
        {
            last += 1;
            run += 1;
        }
        rest = tail.get(run..).unwrap_or_default();
        if !out.is_empty() {
            out.push(',');
        }
        if first == last {
            out.push_str(&first.to_string());
        } else {
            out.push_str(&format!("{first}-{last}"));
        }
    }
    out
}

/// A decimal number (`12`, `12.5`) times `scale`, truncated; `None` on anything else or on
/// overflow.
fn scaled_decimal(text: &str, scale: u128) -> Option<u128> {
    let (int, frac) = match text.split_once('.') {
        Some((int, frac)) => (int, frac),
        None => (text, ""),
    };
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if int.is_empty() || int.len() > 20 || frac.len() > 18 || !digits(int) || !digits(frac) {
        return None;
    }
    if text.contains('.') && frac.is_empty() {
        return None;
    }
    let int: u128 = int.parse().ok()?;
    let mut value = int.checked_mul(scale)?;
    if !frac.is_empty() {
        let numerator: u128 = frac.parse().ok()?;
        let denominator = 10u128.checked_pow(u32::try_from(frac.len()).ok()?)?;
        value = value.checked_add(numerator.checked_mul(scale)? / denominator)?;
    }
    Some(value)
}

/// Splits `12.5mbit` into `("12.5", "mbit")`.
fn split_unit(text: &str) -> (&str, &str) {
    let end = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    text.split_at(end)
}

/// A `rate:` in bits per second (plain, or with a decimal `kbit`/`mbit`/`gbit` suffix as in
/// tc), returned in bytes per second. Zero and anything below one byte per second is rejected.
pub(super) fn parse_rate(text: &str) -> Option<u64> {
    parse_bits_per_sec(text)
        .map(|bits| bits / 8)
        .filter(|&bytes| bytes > 0)
}

/// A rate in bits per second, spelled as tc does: a plain number of bits, or a decimal with a
/// `bit`, `kbit`, `mbit` or `gbit` suffix (`100mbit`, `12.5mbit`); `None` for zero or anything
/// else. Shared with the tools in `bench/` so every rate on a command line or in a config reads
/// the same way.
pub fn parse_bits_per_sec(text: &str) -> Option<u64> {
    let (number, unit) = split_unit(text.trim());
    let scale: u128 = match unit.to_ascii_lowercase().as_str() {
        "" | "bit" => 1,
        "kbit" => 1_000,
        "mbit" => 1_000_000,
        "gbit" => 1_000_000_000,
        _ => return None,
    };
    let bits = scaled_decimal(number, scale)?;
    u64::try_from(bits).ok().filter(|&bits| bits > 0)
}

/// A positive duration with a unit: `500us`, `10ms`, `1.5s` (also `ns`).
pub fn parse_duration(text: &str) -> Option<Duration> {
    let (number, unit) = split_unit(text.trim());
    let scale: u128 = match unit {
        "ns" => 1,
        "us" | "µs" => 1_000,
        "ms" => 1_000_000,
        "s" => 1_000_000_000,
        _ => return None,
    };
    let nanos = u64::try_from(scaled_decimal(number, scale)?).ok()?;
    (nanos > 0).then(|| Duration::from_nanos(nanos))
}

/// A duration the way [`parse_duration`] reads it, in the largest unit that is exact.
pub(super) struct DurationText(pub Duration);

impl fmt::Display for DurationText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let nanos = self.0.as_nanos();
        for (unit, scale) in [("s", 1_000_000_000), ("ms", 1_000_000), ("us", 1_000)] {
            if nanos.is_multiple_of(scale) {
                return write!(f, "{}{unit}", nanos / scale);
            }
        }
        write!(f, "{nanos}ns")
    }
}

/// A syntax check of a `tracing` `EnvFilter` directive string, for crates that do not link
/// `tracing-subscriber`: comma-separated directives, each a level (`info`), a target
/// (`engine::dataplane`), or `target[span{field=value}]=level`, brackets balanced. It accepts a
/// superset of what `EnvFilter` does; the engine checks the filter with `EnvFilter` itself.
pub fn check_log_filter(directives: &str) -> Result<(), String> {
    if directives.trim().is_empty() {
        return Err("empty filter".to_owned());
    }
    if directives
        .chars()
        .any(|c| c.is_whitespace() || c.is_control())
    {
        return Err("a filter contains no spaces".to_owned());
    }
    for directive in split_top_level(directives, ',')? {
        if directive.is_empty() {
            continue;
        }
        let parts = split_top_level(directive, '=')?;
        match parts.as_slice() {
            [_target_or_level] => {}
            [target, level] => {
                if target.is_empty() {
                    return Err(format!("directive {directive:?} has no target before `=`"));
                }
                if !is_level(level) {
                    return Err(format!(
                        "unknown level {level:?}, expected trace, debug, info, warn, error or off"
                    ));
                }
            }
            _ => return Err(format!("directive {directive:?} has more than one `=`")),
        }
    }
    Ok(())
}

fn is_level(level: &str) -> bool {
    ["trace", "debug", "info", "warn", "error", "off"]
        .iter()
        .any(|name| level.eq_ignore_ascii_case(name))
        || matches!(level, "0" | "1" | "2" | "3" | "4" | "5")
}

/// Splits at `separator` outside `[...]` and `{...}`; errors on unbalanced brackets.
fn split_top_level(text: &str, separator: char) -> Result<Vec<&str>, String> {
    let mut parts = Vec::new();
    let mut stack = Vec::new();
    let mut start = 0;
    for (i, c) in text.char_indices() {
        match c {
            '[' | '{' => stack.push(c),
            ']' | '}' => {
                let open = if c == ']' { '[' } else { '{' };
                if stack.pop() != Some(open) {
                    return Err(format!("unbalanced {c:?}"));
                }
            }
            c if c == separator && stack.is_empty() => {
                parts.push(text.get(start..i).unwrap_or_default());
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    if let Some(open) = stack.last() {
        return Err(format!("unclosed {open:?}"));
    }
    parts.push(text.get(start..).unwrap_or_default());
    Ok(parts)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    use proptest::prelude::*;

    use super::*;

    const KEY: &str = "vk7QWrLp2iOdreXkJU6RQUp5dGQH2cB+VkGqVdVRKhA=";
    const OTHER_KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

    /// No DNS, no files, no Argon2: `*.test` names resolve to loopback, `key_file`s come from a
    /// map, a passphrase becomes its own bytes.
    #[derive(Debug, Default)]
    struct FakeEnv {
        files: HashMap<PathBuf, String>,
    }

    impl Environment for FakeEnv {
        fn resolve(&self, host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
            match host {
                "dual.test" => Ok(vec![
                    SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), port),
                    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port),
                ]),
                "v6.test" => Ok(vec![SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), port)]),
                "empty.test" => Ok(Vec::new()),
                _ => Err(io::Error::new(io::ErrorKind::NotFound, "name not known")),
            }
        }

        fn read_key_file(&self, path: &Path) -> io::Result<String> {
            self.files
                .get(path)
                .cloned()
                .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "No such file"))
        }

        fn passphrase_key(&self, passphrase: &str) -> Result<Psk, PskError> {
            if passphrase.is_empty() {
                return Err(PskError::EmptyPassphrase);
            }
            let mut bytes = [0u8; 32];
            for (slot, byte) in bytes.iter_mut().zip(passphrase.bytes()) {
                *slot = byte;
            }
            Ok(Psk::from_bytes(bytes))
        }
    }

    fn parse_in(env: &FakeEnv, text: &str) -> Result<Config, ConfigError> {
        parse(Path::new("dir/config.yaml"), text, env)
    }

    fn ok(text: &str) -> Config {
        parse_in(&FakeEnv::default(), text).unwrap_or_else(|err| panic!("{err}\n{text}"))
    }

    /// The error for `text`, checked to name the file, the position and the field.
    fn fails(text: &str, line: u64, column: u64, field: &str, message: &str) -> ConfigError {
        let err = match parse_in(&FakeEnv::default(), text) {
            Ok(_) => panic!("accepted:\n{text}"),
            Err(err) => err,
        };
        let shown = err.to_string();
        assert_eq!(err.path(), Path::new("dir/config.yaml"), "{shown}");
        assert_eq!(err.position(), Some(Position { line, column }), "{shown}");
        assert_eq!(err.field().unwrap_or(""), field, "{shown}");
        assert!(shown.contains(message), "{shown:?} lacks {message:?}");
        let prefix = if field.is_empty() {
            format!("dir/config.yaml:{line}:{column}: ")
        } else {
            format!("dir/config.yaml:{line}:{column}: {field}: ")
        };
        assert!(
            shown.starts_with(&prefix),
            "{shown:?} does not start {prefix:?}"
        );
        err
    }

    fn with_key(rest: &str) -> String {
        format!("key: \"{KEY}\"\n{rest}")
    }

    #[test]
    fn defaults_apply_to_a_key_only_config() {
        let config = ok(&format!("key: {KEY}\n"));
        assert_eq!(
            config.key.as_bytes(),
            Psk::from_base64(KEY).unwrap().as_bytes()
        );
        assert_eq!(config.name, None);
        assert_eq!(config.listen, None);
        assert_eq!(
            config.transport,
            Transport {
                profile: Profile::Fast2,
                rate: Rate::Auto {
                    max_bytes_per_sec: None
                },
                mtu: 1400,
                min_rtt: None,
                max_rtt: None,
                fec: FecConfig::ADAPTIVE,
            }
        );
        assert_eq!(config.shards, Shards::Auto);
        assert_eq!(config.cpus, None);
        assert_eq!(
            config.io,
            Io {
                backend: Backend::Auto,
                gso: true,
                steering: true
            }
        );
        assert!(config.peers.is_empty() && config.maps.is_empty() && config.allow.is_empty());
        assert_eq!(
            config.control.socket,
            Path::new(crate::control::DEFAULT_SOCKET_PATH)
        );
        assert_eq!(config.log.level, "info");
    }

    #[test]
    fn empty_lists_and_sections_mean_defaults() {
        let config = ok(&with_key(
            "peers:\nmaps:\nallow: []\nrtt:\ncontrol:\nlog:\nname: ~\n",
        ));
        assert!(config.peers.is_empty() && config.maps.is_empty() && config.allow.is_empty());
        assert_eq!(config.log.level, "info");
        assert_eq!(config.name, None);
    }

    #[test]
    fn full_config_is_typed() {
        let config = ok(&with_key(
            "name: office
listen: dual.test:4000
profile: fast3
rate: 100mbit
mtu: 1200
rtt:
  min: 10ms
  max: 2s
shards: 4
cpus: [6, 2, 3]
io:
  backend: epoll
  gso: false
  steering: false
peers:
  - name: server
    addr: 127.0.0.1:4000
  - name: laptop
maps:
  - id: 100
    listen: 127.0.0.1:8080
    peer: server
  - id: 101
    listen: \"[::1]:0\"
    peer: laptop
    proto: tcp
allow:
  - id: 100
    target: v6.test:22
control:
  socket: /tmp/x.sock
log:
  level: engine=debug,warn
",
        ));
        assert_eq!(config.name.as_deref(), Some("office"));
        assert_eq!(config.listen, Some("127.0.0.1:4000".parse().unwrap()));
        assert_eq!(config.transport.profile, Profile::Fast3);
        assert_eq!(
            config.transport.rate,
            Rate::Auto {
                max_bytes_per_sec: Some(12_500_000)
            }
        );
        assert_eq!(config.transport.mtu, 1200);
        assert_eq!(config.transport.min_rtt, Some(Duration::from_millis(10)));
        assert_eq!(config.transport.max_rtt, Some(Duration::from_secs(2)));
        assert_eq!(config.shards, Shards::Count(NonZeroUsize::new(4).unwrap()));
        assert_eq!(config.cpus, Some(vec![2, 3, 6]));
        assert_eq!(
            config.io,
            Io {
                backend: Backend::Epoll,
                gso: false,
                steering: false
            }
        );
        assert_eq!(
            config.peers,
            vec![
                Peer {
                    name: "server".into(),
                    addr: Some("127.0.0.1:4000".parse().unwrap())
                },
                Peer {
                    name: "laptop".into(),
                    addr: None
                }
            ]
        );
        assert_eq!(
            config.maps,
            vec![
                Map {
                    id: MapId(100),
                    listen: "127.0.0.1:8080".parse().unwrap(),
                    peer: 0,
                    proto: Proto::Tcp,
                    mode: None
                },
                Map {
                    id: MapId(101),
                    listen: "[::1]:0".parse().unwrap(),
                    peer: 1,
                    proto: Proto::Tcp,
                    mode: None
                }
            ]
        );
        assert_eq!(
            config.allow,
            vec![Allow {
                id: MapId(100),
                target: "[::1]:22".parse().unwrap(),
                proto: Proto::Tcp
            }]
        );
        assert_eq!(config.control.socket, Path::new("/tmp/x.sock"));
        assert_eq!(config.log.level, "engine=debug,warn");
        assert_eq!(config.peer("laptop").map(|(i, _)| i), Some(1));
    }

    #[test]
    fn fixed_congestion_paces_at_the_rate() {
        let config = ok(&with_key("congestion: fixed\nrate: 41943040\n"));
        assert_eq!(
            config.transport.rate,
            Rate::Fixed {
                bytes_per_sec: 5_242_880
            }
        );
        let config = ok(&with_key("congestion: bbr\n"));
        assert_eq!(
            config.transport.rate,
            Rate::Auto {
                max_bytes_per_sec: None
            }
        );
    }

    #[test]
    fn unknown_field() {
        let err = fails(
            &with_key("lisen: 0.0.0.0:4000\n"),
            2,
            1,
            "",
            "unknown field \"lisen\"",
        );
        assert!(
            err.to_string()
                .contains("expected one of: name, listen, key"),
            "{err}"
        );
        fails(
            &with_key("maps:\n  - id: 1\n    listen: 127.0.0.1:1\n    pear: x\n"),
            5,
            5,
            "maps[0]",
            "unknown field \"pear\"",
        );
        fails(
            &with_key("rtt:\n  mni: 1ms\n"),
            3,
            3,
            "rtt",
            "unknown field \"mni\"",
        );
    }

    #[test]
    fn bad_address() {
        fails(
            &with_key("listen: 0.0.0.0\n"),
            2,
            9,
            "listen",
            "invalid address \"0.0.0.0\": expected IP:port or host:port",
        );
        fails(
            &with_key("listen: 0.0.0.0:70000\n"),
            2,
            9,
            "listen",
            "invalid address",
        );
        fails(
            &with_key("peers:\n  - name: a\n    addr: \"::1:4000\"\n"),
            4,
            11,
            "peers[0].addr",
            "invalid address",
        );
        fails(
            &with_key(
                "listen: 127.0.0.1:4000\npeers: [{name: a}]\nmaps:\n  - id: 1\n    listen: \
                 localhost:80\n    peer: a\n",
            ),
            6,
            13,
            "maps[0].listen",
            "invalid address \"localhost:80\": expected IP:port",
        );
        fails(
            &with_key("allow:\n  - id: 1\n    target: nowhere.test:22\n"),
            4,
            13,
            "allow[0].target",
            "cannot resolve \"nowhere.test\": name not known",
        );
        fails(
            &with_key("allow:\n  - id: 1\n    target: empty.test:22\n"),
            4,
            13,
            "allow[0].target",
            "has no addresses",
        );
        fails(
            &with_key("allow:\n  - id: 1\n    target: \"bad host:22\"\n"),
            4,
            13,
            "allow[0].target",
            "invalid address",
        );
    }

    #[test]
    fn duplicate_map_id() {
        fails(
            &with_key(
                "peers: [{name: s, addr: 127.0.0.1:4000}]
maps:
  - id: 100
    listen: 127.0.0.1:1
    peer: s
  - id: 100
    listen: 127.0.0.1:2
    peer: s
",
            ),
            7,
            9,
            "maps[1].id",
            "duplicate map id 100 (first at line 4)",
        );
    }

    #[test]
    fn duplicate_map_listen_address() {
        let peers = "peers: [{name: s, addr: 127.0.0.1:4000}]\n";
        fails(
            &with_key(&format!(
                "{peers}maps:\n  - {{id: 1, listen: 127.0.0.1:1, peer: s}}\n  - {{id: 2, \
                 listen: 127.0.0.1:1, peer: s}}\n"
            )),
            5,
            21,
            "maps[1].listen",
            "duplicate listen address 127.0.0.1:1 (first at line 4)",
        );
        // Port 0 never collides.
        let config = ok(&with_key(&format!(
            "{peers}maps:\n  - {{id: 1, listen: 127.0.0.1:0, peer: s}}\n  - {{id: 2, listen: \
             127.0.0.1:0, peer: s}}\n"
        )));
        assert_eq!(config.maps.len(), 2);
    }

    #[test]
    fn duplicate_allow_id() {
        fails(
            &with_key(
                "allow:\n  - {id: 7, target: 127.0.0.1:1}\n  - {id: 7, target: 127.0.0.1:2}\n",
            ),
            4,
            10,
            "allow[1].id",
            "duplicate allow id 7 (first at line 3)",
        );
    }

    #[test]
    fn map_to_unknown_peer() {
        fails(
            &with_key(
                "peers:
  - name: server
    addr: 127.0.0.1:4000
  - name: office
    addr: 127.0.0.1:4001
maps:
  - id: 1
    listen: 127.0.0.1:1
    peer: sever
",
            ),
            10,
            11,
            "maps[0].peer",
            "unknown peer \"sever\" (peers are: server, office)",
        );
        fails(
            &with_key("maps:\n  - id: 1\n    listen: 127.0.0.1:1\n    peer: x\n"),
            5,
            11,
            "maps[0].peer",
            "unknown peer \"x\" (no peers are configured)",
        );
    }

    #[test]
    fn map_to_an_accepted_peer_needs_listen() {
        let text = "peers: [{name: laptop}]\nmaps:\n  - {id: 1, listen: 127.0.0.1:1, peer: \
                    laptop}\n";
        fails(
            &with_key(text),
            4,
            40,
            "maps[0].peer",
            "peer \"laptop\" has no addr and this node has no listen",
        );
        let config = ok(&with_key(&format!("listen: 127.0.0.1:4000\n{text}")));
        assert_eq!(config.maps[0].peer, 0);
    }

    #[test]
    fn missing_key() {
        for text in [
            "",
            "\n",
            "# only a comment\n",
            "---\n",
            "listen: 0.0.0.0:4000\n",
        ] {
            fails(text, 1, 1, "key", "missing key");
        }
    }

    #[test]
    fn key_sources_are_exclusive() {
        fails(
            &format!("key: {KEY}\nkey_file: k.txt\n"),
            2,
            11,
            "key_file",
            "key_file conflicts with key",
        );
        fails(
            &format!("passphrase: hunter2\nkey: {KEY}\n"),
            1,
            13,
            "passphrase",
            "passphrase conflicts with key",
        );
    }

    #[test]
    fn bad_key() {
        fails("key: notbase64!\n", 1, 6, "key", "not valid base64");
        fails("key: AAAA\n", 1, 6, "key", "exactly 32 bytes, got 3");
        fails(
            "passphrase: \"\"\n",
            1,
            13,
            "passphrase",
            "must not be empty",
        );
    }

    #[test]
    fn key_file_is_relative_to_the_config_file() {
        let mut env = FakeEnv::default();
        env.files
            .insert(PathBuf::from("dir/secret.key"), format!("{OTHER_KEY}\n"));
        env.files
            .insert(PathBuf::from("/abs/bad.key"), "short\n".into());
        let config = parse_in(&env, "key_file: secret.key\n").unwrap();
        assert_eq!(
            config.key.as_bytes(),
            Psk::from_base64(OTHER_KEY).unwrap().as_bytes()
        );
        let err = parse_in(&env, "key_file: /abs/bad.key\n").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("dir/config.yaml:1:11: key_file: key file /abs/bad.key: "),
            "{err}"
        );
    }

    #[test]
    fn unreadable_key_file() {
        fails(
            "key_file: missing.key\n",
            1,
            11,
            "key_file",
            "cannot read key file dir/missing.key: No such file",
        );
        fails("key_file: \"\"\n", 1, 11, "key_file", "empty path");
    }

    #[test]
    fn key_file_on_disk_and_real_passphrase() {
        let dir = std::env::temp_dir().join(format!("coretun-api-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("k"), format!("  {OTHER_KEY}\n")).unwrap();
        let path = dir.join("c.yaml");
        std::fs::write(&path, "key_file: k\n").unwrap();
        let config = Config::load(&path).unwrap();
        assert_eq!(
            config.key.as_bytes(),
            Psk::from_base64(OTHER_KEY).unwrap().as_bytes()
        );
        std::fs::remove_dir_all(&dir).unwrap();

        let config = Config::parse(Path::new("c.yaml"), "passphrase: correct horse\n").unwrap();
        assert_eq!(
            config.key.as_bytes(),
            Psk::from_passphrase("correct horse").unwrap().as_bytes()
        );
    }

    #[test]
    fn bad_duration() {
        for (value, column) in [("10", 8), ("fast", 8), ("-1ms", 8), ("0ms", 8), ("1.ms", 8)] {
            fails(
                &with_key(&format!("rtt:\n  min: {value}\n")),
                3,
                column,
                "rtt.min",
                &format!("invalid duration {value:?}"),
            );
        }
        fails(
            &with_key("rtt:\n  min: 2s\n  max: 100ms\n"),
            4,
            8,
            "rtt.max",
            "rtt.max (100ms) is below rtt.min (2s)",
        );
    }

    #[test]
    fn bad_rate() {
        for value in [
            "0",
            "fast",
            "10mbps",
            "1e9",
            "-5mbit",
            "7",
            "99999999999999999999gbit",
        ] {
            fails(
                &with_key(&format!("rate: {value}\n")),
                2,
                7,
                "rate",
                &format!("invalid rate {value:?}"),
            );
        }
        fails(
            &with_key("congestion: fixed\n"),
            2,
            13,
            "congestion",
            "no rate is set",
        );
        fails(
            &with_key("congestion: cubic\n"),
            2,
            13,
            "congestion",
            "unknown congestion control \"cubic\", expected bbr or fixed",
        );
    }

    #[test]
    fn fec_forms() {
        let fixed = |data, parity, interleave| FecConfig {
            mode: FecMode::Fixed { data, parity },
            interleave,
        };
        let adaptive = |data, interleave| FecConfig {
            mode: FecMode::Adaptive { data },
            interleave,
        };
        for (text, fec) in [
            (
                "fec: off
",
                FecConfig::OFF,
            ),
            ("fec: \"off\"\n", FecConfig::OFF),
            ("fec: adaptive\n", FecConfig::ADAPTIVE),
            ("fec: {mode: off}\n", FecConfig::OFF),
            ("fec:\n  mode: adaptive\n", adaptive(10, 1)),
            (
                "fec: {mode: adaptive, data: 20, interleave: 4}\n",
                adaptive(20, 4),
            ),
            ("fec: {mode: fixed, parity: 3}\n", fixed(10, 3, 1)),
            (
                "fec:\n  mode: fixed\n  data: 8\n  parity: 3\n  interleave: 2\n",
                fixed(8, 3, 2),
            ),
            (
                "fec: {mode: fixed, data: 64, parity: 32, interleave: 8}\n",
                fixed(64, 32, 8),
            ),
            ("fec: {mode: fixed, data: 1, parity: 1}\n", fixed(1, 1, 1)),
        ] {
            assert_eq!(ok(&with_key(text)).transport.fec, fec, "{text:?}");
        }
        // Null means unset: the profile's default.
        assert_eq!(ok(&with_key("fec:\n")).transport.fec, FecConfig::ADAPTIVE);
    }

    #[test]
    fn fec_defaults_follow_the_profile() {
        for (profile, fec) in [
            ("normal", FecConfig::OFF),
            ("fast", FecConfig::OFF),
            ("fast2", FecConfig::ADAPTIVE),
            ("fast3", FecConfig::ADAPTIVE),
        ] {
            let config = ok(&with_key(&format!("profile: {profile}\n")));
            assert_eq!(config.transport.fec, fec, "{profile}");
            assert_eq!(default_fec(config.transport.profile), fec);
        }
        // A setting wins over the profile's default, either way.
        let config = ok(&with_key("profile: normal\nfec: adaptive\n"));
        assert_eq!(config.transport.fec, FecConfig::ADAPTIVE);
        let config = ok(&with_key("profile: fast3\nfec: off\n"));
        assert_eq!(config.transport.fec, FecConfig::OFF);
    }

    #[test]
    fn bad_fec() {
        fails(
            &with_key("fec: on\n"),
            2,
            6,
            "fec",
            "unknown FEC mode \"on\", expected off, adaptive or fixed",
        );
        fails(&with_key("fec: 3\n"), 2, 6, "fec", "unknown FEC mode \"3\"");
        fails(
            &with_key("fec: fixed\n"),
            2,
            6,
            "fec",
            "needs its parity count",
        );
        fails(
            &with_key("fec:\n  mode: turbo\n"),
            3,
            9,
            "fec.mode",
            "unknown FEC mode \"turbo\", expected off, adaptive or fixed",
        );
        fails(
            &with_key("fec:\n  mode: fixed\n  data: 8\n"),
            3,
            9,
            "fec.parity",
            "a fixed mode needs its parity count: add `parity:` (1..=32)",
        );
        fails(
            &with_key("fec:\n  mode: adaptive\n  parity: 3\n"),
            4,
            11,
            "fec.parity",
            "only a fixed mode has a parity count",
        );
        fails(
            &with_key("fec: {mode: off, data: 4}\n"),
            2,
            24,
            "fec.data",
            "FEC is off",
        );
        for (text, column, field, message) in [
            (
                "fec: {mode: fixed, parity: 33}\n",
                28,
                "fec.parity",
                "must be 1..=32",
            ),
            (
                "fec: {mode: fixed, parity: 0}\n",
                28,
                "fec.parity",
                "must be 1..=32",
            ),
            (
                "fec: {mode: fixed, parity: 300}\n",
                28,
                "fec.parity",
                "must be 1..=32",
            ),
            (
                "fec: {mode: fixed, data: 65, parity: 1}\n",
                26,
                "fec.data",
                "must be 1..=64",
            ),
            (
                "fec: {mode: adaptive, data: 0}\n",
                29,
                "fec.data",
                "must be 1..=64",
            ),
            (
                "fec: {mode: adaptive, data: 99999999999}\n",
                29,
                "fec.data",
                "must be 1..=64",
            ),
            (
                "fec: {mode: adaptive, interleave: 9}\n",
                35,
                "fec.interleave",
                "must be 1..=8",
            ),
            (
                "fec: {mode: adaptive, interleave: 0}\n",
                35,
                "fec.interleave",
                "must be 1..=8",
            ),
        ] {
            fails(&with_key(text), 2, column, field, message);
        }
        fails(
            &with_key("fec:\n  mode: fixed\n  parity: 2\n  groups: 4\n"),
            5,
            3,
            "fec",
            "unknown field \"groups\", expected one of: mode, data, parity, interleave",
        );
        fails(
            &with_key("fec: {data: 4}\n"),
            2,
            7,
            "fec",
            "missing field \"mode\"",
        );
        fails(
            &with_key("fec: {mode: fixed, parity: x}\n"),
            2,
            28,
            "fec.parity",
            "expected a whole number",
        );
        fails(&with_key("fec: [off]\n"), 2, 6, "fec", "not a list");
    }

    #[test]
    fn bad_profile() {
        fails(
            &with_key("profile: turbo\n"),
            2,
            10,
            "profile",
            "unknown profile \"turbo\", expected one of: normal, fast, fast2, fast3",
        );
    }

    #[test]
    fn bad_mtu_and_shards() {
        fails(
            &with_key("mtu: 575\n"),
            2,
            6,
            "mtu",
            "mtu 575 out of range 576..=65000",
        );
        fails(&with_key("mtu: 65001\n"), 2, 6, "mtu", "out of range");
        assert_eq!(ok(&with_key("mtu: 576\n")).transport.mtu, 576);
        assert_eq!(ok(&with_key("mtu: 65000\n")).transport.mtu, 65000);
        for value in ["0", "256", "1024", "many", "-1"] {
            fails(
                &with_key(&format!("shards: {value}\n")),
                2,
                9,
                "shards",
                "invalid shards",
            );
        }
        assert_eq!(
            ok(&with_key("shards: 255\n")).shards,
            Shards::Count(NonZeroUsize::new(255).unwrap())
        );
    }

    #[test]
    fn cpus_as_list_or_cpulist() {
        for (text, cpus) in [
            ("cpus: [0, 2, 3]\n", vec![0, 2, 3]),
            ("cpus: [3, 0, 3, 2]\n", vec![0, 2, 3]),
            ("cpus:\n  - 4095\n", vec![4095]),
            ("cpus: \"0-3,6\"\n", vec![0, 1, 2, 3, 6]),
            ("cpus: 0-3,6\n", vec![0, 1, 2, 3, 6]),
            ("cpus: 5\n", vec![5]),
            ("cpus: \"7\"\n", vec![7]),
            ("cpus: \" 1-2, 2-3 \"\n", vec![1, 2, 3]),
        ] {
            assert_eq!(ok(&with_key(text)).cpus, Some(cpus), "{text:?}");
        }
        // Null means unset, like the other sections.
        assert_eq!(ok(&with_key("cpus:\n")).cpus, None);
        assert_eq!(ok(&with_key("cpus: ~\n")).cpus, None);
    }

    #[test]
    fn bad_cpus() {
        fails(&with_key("cpus: []\n"), 2, 7, "cpus", "empty CPU list");
        fails(&with_key("cpus: \"\"\n"), 2, 7, "cpus", "empty CPU list");
        fails(
            &with_key("cpus: 3-1\n"),
            2,
            7,
            "cpus",
            "invalid cpus \"3-1\": range 3-1 ends below its start",
        );
        fails(
            &with_key("cpus: [0, 4096]\n"),
            2,
            11,
            "cpus",
            "CPU 4096 is above the highest, 4095",
        );
        fails(
            &with_key("cpus: 0-4096\n"),
            2,
            7,
            "cpus",
            "invalid cpus \"0-4096\": CPU 4096 is above the highest, 4095",
        );
        for value in ["-1", "a", "1,,2", "1-", "1-2-3", "0x3", "+1"] {
            fails(
                &with_key(&format!("cpus: \"{value}\"\n")),
                2,
                7,
                "cpus",
                &format!("invalid cpus {value:?}: "),
            );
        }
        fails(&with_key("cpus: -1\n"), 2, 7, "cpus", "invalid cpus \"-1\"");
        fails(
            &with_key("cpus: [1, x]\n"),
            2,
            11,
            "cpus[1]",
            "expected a whole number",
        );
        fails(&with_key("cpus: {a: 1}\n"), 2, 7, "cpus", "expected");
        fails(
            &with_key("cpus: true\n"),
            2,
            7,
            "cpus",
            "\"true\" is not a CPU number",
        );
        fails(
            &with_key("cpus: 1.5\n"),
            2,
            7,
            "cpus",
            "\"1.5\" is not a CPU number",
        );
    }

    #[test]
    fn io_section() {
        for (text, backend) in [
            ("io: {backend: auto}\n", Backend::Auto),
            ("io: {backend: io_uring}\n", Backend::IoUring),
            ("io: {backend: epoll}\n", Backend::Epoll),
            ("io:\n", Backend::Auto),
        ] {
            assert_eq!(ok(&with_key(text)).io.backend, backend, "{text:?}");
        }
        let io = ok(&with_key("io:\n  gso: false\n")).io;
        assert_eq!((io.gso, io.steering), (false, true));
        let io = ok(&with_key("io:\n  steering: false\n  gso: true\n")).io;
        assert_eq!((io.gso, io.steering), (true, false));
        fails(
            &with_key("io:\n  backend: uring\n"),
            3,
            12,
            "io.backend",
            "unknown backend \"uring\", expected one of: auto, io_uring, epoll",
        );
        fails(
            &with_key("io:\n  gso: maybe\n"),
            3,
            8,
            "io.gso",
            "expected true or false",
        );
        fails(
            &with_key("io:\n  steer: false\n"),
            3,
            3,
            "io",
            "unknown field \"steer\", expected one of: backend, gso, steering",
        );
        fails(&with_key("io: epoll\n"), 2, 5, "io", "expected");
    }

    #[test]
    fn cpulists() {
        assert_eq!(parse_cpulist("0-3,6\n"), Ok(vec![0, 1, 2, 3, 6]));
        assert_eq!(parse_cpulist("0"), Ok(vec![0]));
        assert_eq!(parse_cpulist("4,2,2-3"), Ok(vec![2, 3, 4]));
        assert_eq!(parse_cpulist("0-4095").map(|c| c.len()), Ok(4096));
        for bad in [
            "",
            "\n",
            ",",
            "1,",
            "3-1",
            "a",
            "1-x",
            "4096",
            "99999999999999999999999",
        ] {
            assert!(parse_cpulist(bad).is_err(), "{bad:?}");
        }
        assert_eq!(format_cpulist(&[]), "");
        assert_eq!(format_cpulist(&[0]), "0");
        assert_eq!(format_cpulist(&[0, 1]), "0-1");
        assert_eq!(format_cpulist(&[0, 1, 2, 5, 7, 8, 10]), "0-2,5,7-8,10");
    }

    #[test]
    fn duplicate_peer_name() {
        fails(
            &with_key("peers:\n  - name: a\n  - name: b\n  - name: a\n"),
            5,
            11,
            "peers[2].name",
            "duplicate peer name \"a\" (first at line 3)",
        );
    }

    #[test]
    fn bad_names() {
        for name in ["\"\"", "\"a b\"", "é", &"x".repeat(65)] {
            fails(
                &with_key(&format!("peers:\n  - name: {name}\n")),
                3,
                11,
                "peers[0].name",
                "invalid name",
            );
        }
        fails(
            &with_key("name: \"a/b\"\n"),
            2,
            7,
            "name",
            "invalid name \"a/b\"",
        );
        fails(
            &with_key("peers:\n  - addr: 127.0.0.1:1\n"),
            3,
            5,
            "peers[0]",
            "missing field \"name\"",
        );
    }

    #[test]
    fn proto() {
        let base = "peers: [{name: s, addr: 127.0.0.1:4000}]\nmaps:\n  - id: 1\n    listen: \
                    127.0.0.1:1\n    peer: s\n";
        let config = ok(&with_key(&format!("{base}    proto: udp\n")));
        assert_eq!(config.maps[0].proto, Proto::Udp);
        assert_eq!(config.maps[0].mode, Some(UdpMode::Datagram));
        let config = ok(&with_key(&format!(
            "{base}    proto: udp\n    mode: reliable\n"
        )));
        assert_eq!(config.maps[0].mode, Some(UdpMode::Reliable));
        assert_eq!(ok(&with_key(base)).maps[0].mode, None);
        let config = ok(&with_key(
            "allow:\n  - {id: 1, target: 127.0.0.1:1, proto: udp}\n",
        ));
        assert_eq!(config.allow[0].proto, Proto::Udp);
        fails(
            &with_key("allow:\n  - {id: 1, target: 127.0.0.1:1, proto: sctp}\n"),
            3,
            41,
            "allow[0].proto",
            "unknown proto \"sctp\", expected tcp or udp",
        );
        fails(
            &with_key(&format!("{base}    mode: reliable\n")),
            7,
            11,
            "maps[0].mode",
            "mode applies to udp maps only",
        );
        fails(
            &with_key(&format!("{base}    proto: udp\n    mode: lossy\n")),
            8,
            11,
            "maps[0].mode",
            "unknown mode \"lossy\", expected datagram or reliable",
        );
    }

    #[test]
    fn udp_limits() {
        let config = ok(&with_key(""));
        assert_eq!(config.udp, Udp::default());
        assert_eq!(config.udp.idle_timeout, Duration::from_secs(60));
        assert_eq!(config.udp.max_flows, 1024);
        let config = ok(&with_key("udp: {idle_timeout: 1.5s, max_flows: 7}\n"));
        assert_eq!(config.udp.idle_timeout, Duration::from_millis(1500));
        assert_eq!(config.udp.max_flows, 7);
        let config = ok(&with_key("udp:\n  max_flows: 3\n"));
        assert_eq!(config.udp.idle_timeout, Duration::from_secs(60));
        fails(
            &with_key("udp:\n  idle_timeout: soon\n"),
            3,
            17,
            "udp.idle_timeout",
            "invalid duration \"soon\"",
        );
        fails(
            &with_key("udp:\n  max_flows: 0\n"),
            3,
            14,
            "udp.max_flows",
            "invalid max_flows 0: expected 1 to 1048576",
        );
        fails(
            &with_key("udp:\n  flows: 3\n"),
            3,
            3,
            "udp",
            "unknown field",
        );
    }

    #[test]
    fn yaml_syntax_error() {
        let err = parse_in(&FakeEnv::default(), &with_key("maps: [\n")).unwrap_err();
        assert!(err.position().is_some_and(|p| p.line >= 2), "{err}");
        assert!(err.to_string().starts_with("dir/config.yaml:"), "{err}");
        fails(&with_key("listen: a\n  b: c\n"), 3, 4, "", "");
        let err = fails(&with_key("mtu: 1\nmtu: 2\n"), 3, 1, "", "duplicate");
        assert!(err.to_string().contains("mtu"), "{err}");
        fails("key: a\n---\nkey: b\n", 3, 1, "", "multiple");
    }

    #[test]
    fn wrong_type() {
        fails(&with_key("peers: 5\n"), 2, 8, "peers", "expected");
        fails(
            &with_key("mtu: big\n"),
            2,
            6,
            "mtu",
            "expected a whole number",
        );
        fails(
            &with_key("maps:\n  - id: -1\n"),
            3,
            9,
            "maps[0].id",
            "expected a whole number from 0 to 4294967295",
        );
        fails(&with_key("name: [a]\n"), 2, 7, "name", "expected");
        fails(&with_key("control: yes\n"), 2, 10, "control", "expected");
        fails("- key\n", 1, 1, "", "expected");
    }

    #[test]
    fn bad_control_and_log() {
        fails(
            &with_key("control:\n  socket: \"\"\n"),
            3,
            11,
            "control.socket",
            "empty path",
        );
        fails(
            &with_key("log:\n  level: \"info,,=[\"\n"),
            3,
            10,
            "log.level",
            "invalid log filter",
        );
    }

    #[test]
    fn rates() {
        assert_eq!(parse_rate("100mbit"), Some(12_500_000));
        assert_eq!(parse_rate("12.5mbit"), Some(1_562_500));
        assert_eq!(parse_rate("1Gbit"), Some(125_000_000));
        assert_eq!(parse_rate("800kbit"), Some(100_000));
        assert_eq!(parse_rate("8"), Some(1));
        assert_eq!(parse_rate("8bit"), Some(1));
        assert_eq!(parse_rate(" 41943040 "), Some(5_242_880));
        for bad in [
            "", "mbit", "1.", ".5mbit", "1..2mbit", "1 mbit", "7", "0.5kbit0", "1tbit",
        ] {
            assert_eq!(parse_rate(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10ms"), Some(Duration::from_millis(10)));
        assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("500us"), Some(Duration::from_micros(500)));
        assert_eq!(parse_duration("500µs"), Some(Duration::from_micros(500)));
        assert_eq!(parse_duration("7ns"), Some(Duration::from_nanos(7)));
        for bad in ["", "10", "ms", "0s", "1m", "1h", "99999999999999999999s"] {
            assert_eq!(parse_duration(bad), None, "{bad:?}");
        }
        for text in ["2s", "10ms", "1500ms", "500us", "7ns"] {
            let duration = parse_duration(text).unwrap();
            assert_eq!(DurationText(duration).to_string(), text);
        }
    }

    #[test]
    fn log_filters() {
        for good in [
            "info",
            "INFO",
            "engine=debug,warn",
            "engine::dataplane=trace",
            "engine[conn{peer=a}]=debug",
            "3",
            "info,",
        ] {
            assert_eq!(check_log_filter(good), Ok(()), "{good:?}");
        }
        for bad in [
            "", " ", "info,,=[", "a=loud", "=info", "a=b=c", "a]", "x{", "a b",
        ] {
            assert!(check_log_filter(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn errors_escape_control_characters() {
        let err = parse_in(&FakeEnv::default(), &with_key("\"a\\u0007b\": 1\n")).unwrap_err();
        let shown = err.to_string();
        assert!(!shown.chars().any(|c| c.is_control()), "{shown:?}");
    }

    proptest! {
        #[test]
        fn arbitrary_text_never_panics(text in "\\PC{0,200}") {
            let _ = parse_in(&FakeEnv::default(), &text);
        }

        #[test]
        fn cpulist_round_trips(cpus in proptest::collection::btree_set(0..=MAX_CPU, 1..40)) {
            let cpus: Vec<usize> = cpus.into_iter().collect();
            prop_assert_eq!(parse_cpulist(&format_cpulist(&cpus)), Ok(cpus));
        }

        #[test]
        fn yamlish_text_never_panics(
            lines in proptest::collection::vec(
                "(key|listen|peers|maps|allow|rtt|  - id|    peer|    listen|name|rate|mtu|shards|\
                 congestion|  min|log|  level|cpus|io|  backend|  gso|  steering|  mode|  data|\
                 fec|  parity|  interleave)?: ?(\\[|\\]|\\{|\\}|-|:| |[a-z0-9.:]|\"|'|&a|\\*a|#){0,12}",
                0..12,
            )
        ) {
            let text = lines.join("\n");
            if let Err(err) = parse_in(&FakeEnv::default(), &text) {
                prop_assert!(err.to_string().starts_with("dir/config.yaml:"));
            }
        }
    }
}
