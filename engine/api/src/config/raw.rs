//! The config file as YAML spells it: serde structs with `deny_unknown_fields`, every value still
//! text (or a plain integer) and carrying its position, so that [`super::convert`] can check it
//! and point at the offending line.
//!
//! Values that need parsing (addresses, durations, rates, names) are kept as strings here: a
//! YAML scalar such as `100` or `1.5` deserializes into a `String` as written, so `rate: 100` and
//! `rate: 100mbit` reach the same parser. Lists and sections are `Option` so that an empty
//! `maps:` (YAML null) means the same as leaving it out.

use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::Spanned;

use super::error::Position;

/// A value with the position of its YAML node.
pub(super) type S<T> = Spanned<T>;

/// The position of a spanned value, or `None` if the parser could not tell.
pub(super) fn position<T>(value: &S<T>) -> Option<Position> {
    let location = value.referenced;
    (location.line() > 0).then(|| Position {
        line: location.line(),
        column: location.column(),
    })
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub name: Option<S<String>>,
    pub listen: Option<S<String>>,
    pub key: Option<S<String>>,
    pub key_file: Option<S<String>>,
    pub passphrase: Option<S<String>>,
    pub profile: Option<S<String>>,
    pub rate: Option<S<String>>,
    pub congestion: Option<S<String>>,
    pub mtu: Option<S<u64>>,
    pub rtt: Option<RawRtt>,
    pub fec: Option<S<RawFec>>,
    pub shards: Option<S<String>>,
    pub cpus: Option<S<RawCpus>>,
    pub io: Option<RawIo>,
    pub peers: Option<Vec<RawPeer>>,
    pub maps: Option<Vec<RawMap>>,
    pub allow: Option<Vec<RawAllow>>,
    pub udp: Option<RawUdp>,
    pub control: Option<RawControl>,
    pub log: Option<RawLog>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRtt {
    pub min: Option<S<String>>,
    pub max: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPeer {
    pub name: S<String>,
    pub addr: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMap {
    pub id: S<u32>,
    pub listen: S<String>,
    pub peer: S<String>,
    pub proto: Option<S<String>>,
    pub mode: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAllow {
    pub id: S<u32>,
    pub target: S<String>,
    pub proto: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUdp {
    pub idle_timeout: Option<S<String>>,
    pub max_flows: Option<S<u64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawControl {
    pub socket: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLog {
    pub level: Option<S<String>>,
}

/// `cpus:` as written: a YAML list of CPU numbers (each with its position), or a Linux cpulist
/// string such as `0-3,6` (a lone number reads as a one-CPU cpulist). Hand-written rather than
/// `#[serde(untagged)]` so that each list element keeps its position and a wrong element is
/// reported as such.
#[derive(Debug)]
pub(super) enum RawCpus {
    List(Vec<S<u64>>),
    Text(String),
}

impl<'de> Deserialize<'de> for RawCpus {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(RawCpusVisitor)
    }
}

struct RawCpusVisitor;

impl<'de> Visitor<'de> for RawCpusVisitor {
    type Value = RawCpus;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a list of CPU numbers or a cpulist such as \"0-3,6\"")
    }

    fn visit_u64<E: de::Error>(self, value: u64) -> Result<RawCpus, E> {
        Ok(RawCpus::Text(value.to_string()))
    }

    fn visit_i64<E: de::Error>(self, value: i64) -> Result<RawCpus, E> {
        Ok(RawCpus::Text(value.to_string()))
    }

    // Other scalars become text that the cpulist parser rejects at the value's position.
    fn visit_bool<E: de::Error>(self, value: bool) -> Result<RawCpus, E> {
        Ok(RawCpus::Text(value.to_string()))
    }

    fn visit_f64<E: de::Error>(self, value: f64) -> Result<RawCpus, E> {
        Ok(RawCpus::Text(value.to_string()))
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<RawCpus, E> {
        Ok(RawCpus::Text(value.to_owned()))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<RawCpus, A::Error> {
        let mut cpus = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
        while let Some(cpu) = seq.next_element()? {
            cpus.push(cpu);
        }
        Ok(RawCpus::List(cpus))
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawIo {
    pub backend: Option<S<String>>,
    pub gso: Option<S<bool>>,
    pub steering: Option<S<bool>>,
}

/// `fec:` as written: a mode name alone (`fec: adaptive`), or a mapping with the mode and its
/// numbers. Hand-written for the same reason as [`RawCpus`]: the mapping's fields keep their
/// positions, and a scalar of any type becomes text that the converter checks.
#[derive(Debug)]
pub(super) enum RawFec {
    Mode(String),
    Table(Box<RawFecTable>),
    /// A list: reported by the converter at the value's position.
    List,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFecTable {
    pub mode: S<String>,
    pub data: Option<S<u64>>,
    pub parity: Option<S<u64>>,
    pub interleave: Option<S<u64>>,
}

impl<'de> Deserialize<'de> for RawFec {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(RawFecVisitor)
    }
}

struct RawFecVisitor;

impl<'de> Visitor<'de> for RawFecVisitor {
    type Value = RawFec;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("off, adaptive, or a mapping with mode, data, parity, interleave")
    }

    // YAML 1.1 reads a bare `off` as false; it means the mode all the same.
    fn visit_bool<E: de::Error>(self, value: bool) -> Result<RawFec, E> {
        Ok(RawFec::Mode(if value { "on" } else { "off" }.to_owned()))
    }

    fn visit_u64<E: de::Error>(self, value: u64) -> Result<RawFec, E> {
        Ok(RawFec::Mode(value.to_string()))
    }

    fn visit_i64<E: de::Error>(self, value: i64) -> Result<RawFec, E> {
        Ok(RawFec::Mode(value.to_string()))
    }

    fn visit_f64<E: de::Error>(self, value: f64) -> Result<RawFec, E> {
        Ok(RawFec::Mode(value.to_string()))
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<RawFec, E> {
        Ok(RawFec::Mode(value.to_owned()))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<RawFec, A::Error> {
        while seq.next_element::<de::IgnoredAny>()?.is_some() {}
        Ok(RawFec::List)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawFec, A::Error> {
        RawFecTable::deserialize(de::value::MapAccessDeserializer::new(map))
            .map(|table| RawFec::Table(Box::new(table)))
    }
}
