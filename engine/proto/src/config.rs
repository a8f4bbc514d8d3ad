//! Session settings and the kcptun-named profiles that preset them.

use std::time::Duration;

use crate::arq::{BbrConfig, RateControlConfig, RttClamp};
use crate::crypto::RekeyLimits;
use crate::mux::MuxConfig;

/// kcptun's mode names, trading bandwidth for latency: the faster the profile, the sooner a
/// missing packet is retransmitted and the sooner acknowledgements go out, at the cost of more
/// spurious retransmissions and more ACK packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Profile {
    Normal,
    Fast,
    #[default]
    Fast2,
    Fast3,
}

impl Profile {
    pub const ALL: [Profile; 4] = [
        Profile::Normal,
        Profile::Fast,
        Profile::Fast2,
        Profile::Fast3,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Profile::Normal => "normal",
            Profile::Fast => "fast",
            Profile::Fast2 => "fast2",
            Profile::Fast3 => "fast3",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.name() == name)
    }
}

/// Everything that shapes one session's behaviour. Built from a [`Profile`] and then adjusted
/// field by field ("manual settings").
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Largest datagram this end sends (UDP payload bytes).
    pub mtu: usize,
    pub rate: RateControlConfig,
    pub rtt: RttClamp,
    pub mux: MuxConfig,
    /// Longest the receiver holds back an acknowledgement.
    pub max_ack_delay: Duration,
    /// Acknowledge at once after this many ack-eliciting packets.
    pub ack_every: u32,
    /// A packet is lost once this many later packets were acknowledged.
    pub packet_threshold: u64,
    /// ... or once it is older than this multiple of the RTT while a later packet was acknowledged.
    pub time_threshold: f32,
    /// Send a PING when nothing was sent for this long (keeps NAT bindings and liveness).
    pub keepalive: Duration,
    /// The session is gone when nothing authenticated arrived for this long.
    pub idle_timeout: Duration,
    /// The path is dead when ack-eliciting packets went unanswered this long: nothing
    /// authenticated arrived since the first of them was sent (and for at least three
    /// probe timeouts, so a very long RTT is never mistaken for a dead path). The session then
    /// closes with [`crate::CloseReason::PathDead`], so the dialling side can re-handshake long
    /// before [`SessionConfig::idle_timeout`]. Should stay well below the idle timeout.
    pub path_timeout: Duration,
    /// How long a dialled handshake keeps retrying before it is reported as failed.
    pub handshake_timeout: Duration,
    pub rekey: RekeyLimits,
    /// At most this many datagrams handed out by one `poll_transmit` (one GSO send).
    pub max_segments: usize,
    /// Forward error correction. Both ends must use the same settings (checked in the handshake).
    pub fec: FecConfig,
}

/// How a session adds Reed-Solomon parity to what it sends (see [`crate::session`], "FEC").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FecMode {
    /// No parity; nothing is kept for recovery.
    Off,
    /// Every group of `data` packets gets `parity` parity packets, whatever the traffic.
    Fixed { data: u8, parity: u8 },
    /// Groups of at most `data` packets; the parity count follows the loss the receiver reports
    /// and the traffic: none while the sender has a backlog (bulk transfer, where retransmission
    /// is cheaper), more for small groups of interactive traffic.
    Adaptive { data: u8 },
}

/// FEC settings of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FecConfig {
    pub mode: FecMode,
    /// Interleaving depth: packet number n belongs to group lane n mod `interleave`, so a burst
    /// of up to `interleave` consecutive losses costs each group one packet. 1 = no interleaving.
    pub interleave: u8,
}

impl FecConfig {
    /// Most data packets in one group.
    pub const MAX_DATA: u8 = 64;
    /// Most parity packets of one group.
    pub const MAX_PARITY: u8 = 32;
    /// Deepest interleaving.
    pub const MAX_INTERLEAVE: u8 = 8;
    /// Group size of `adaptive` unless configured.
    pub const DEFAULT_ADAPTIVE_DATA: u8 = 10;

    pub const OFF: FecConfig = FecConfig {
        mode: FecMode::Off,
        interleave: 1,
    };

    pub const ADAPTIVE: FecConfig = FecConfig {
        mode: FecMode::Adaptive {
            data: Self::DEFAULT_ADAPTIVE_DATA,
        },
        interleave: 1,
    };

    pub fn is_on(&self) -> bool {
        self.mode != FecMode::Off
    }

    /// Whether the settings are within the limits above (data >= 1, interleave >= 1).
    pub fn validate(&self) -> Result<(), String> {
        let data = match self.mode {
            FecMode::Off => return Ok(()),
            FecMode::Fixed { data, parity } => {
                if parity == 0 || parity > Self::MAX_PARITY {
                    return Err(format!("parity must be 1..={}", Self::MAX_PARITY));
                }
                data
            }
            FecMode::Adaptive { data } => data,
        };
        if data == 0 || data > Self::MAX_DATA {
            return Err(format!("data must be 1..={}", Self::MAX_DATA));
        }
        if self.interleave == 0 || self.interleave > Self::MAX_INTERLEAVE {
            return Err(format!("interleave must be 1..={}", Self::MAX_INTERLEAVE));
        }
        Ok(())
    }
}

impl std::fmt::Display for FecConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.mode {
            FecMode::Off => return f.write_str("off"),
            FecMode::Fixed { data, parity } => write!(f, "fixed {data}+{parity}")?,
            FecMode::Adaptive { data } => write!(f, "adaptive (groups of up to {data})")?,
        }
        if self.interleave > 1 {
            write!(f, ", interleave {}", self.interleave)?;
        }
        Ok(())
    }
}

impl SessionConfig {
    pub fn for_profile(profile: Profile) -> Self {
        let mut c = Self::default();
        let (ack_delay, ratio, min_rtt, threshold) = match profile {
            Profile::Normal => (25, 2.0, 100, 3),
            Profile::Fast => (10, 1.5, 50, 3),
            Profile::Fast2 => (5, 1.25, 30, 3),
            Profile::Fast3 => (2, 1.1, 10, 2),
        };
        c.max_ack_delay = Duration::from_millis(ack_delay);
        c.rtt.timeout_rtt_ratio = ratio;
        c.rtt.min_rtt = Duration::from_millis(min_rtt);
        c.packet_threshold = threshold;
        c
    }

    /// Stream payload bytes a full-size packet can carry at most (used by benches and tests to
    /// compute the link's ceiling).
    pub fn max_payload(&self) -> usize {
        self.packet_limit() - crate::wire::Header::DATA_LEN - crate::crypto::TAG_LEN
    }

    /// Largest data packet: the MTU, less room for the parity header when FEC is on (a parity
    /// packet carries a shard as long as the longest packet of its group, plus its header).
    pub fn packet_limit(&self) -> usize {
        if self.fec.is_on() {
            self.mtu - crate::wire::ParityHeader::OVERHEAD
        } else {
            self.mtu
        }
    }
}

impl Default for SessionConfig {
    fn default() -> Self {
        let mtu = 1400;
        Self {
            mtu,
            rate: RateControlConfig::Bbr(BbrConfig {
                mtu: mtu as u64,
                ..BbrConfig::default()
            }),
            rtt: RttClamp::default(),
            mux: MuxConfig::default(),
            max_ack_delay: Duration::from_millis(5),
            ack_every: 4,
            packet_threshold: 3,
            time_threshold: 1.125,
            // 5 s (was 10 s): an idle session learns that its path died within keepalive +
            // path_timeout = 13 s instead of 18 s, since only an unanswered PING reveals it.
            // It costs one ~30-byte PING and its ACK per 5 s per session, and stays far inside
            // the 30 s after which the most aggressive NATs drop a silent UDP mapping.
            keepalive: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(60),
            // 8 s: with the RTO capped at 3 s a stalled sender probes at least twice more (two
            // packets each time) after the unanswered packet before giving up, so a false alarm
            // on a link that still delivers needs the packet and every probe, or all their
            // ACKs, to be lost, and the clock restarts at every arrival while data flows. (The
            // sim tests hold sessions at 5 % loss / 100 ms RTT and 20 % loss / 300 ms RTT for
            // minutes, busy and idle.) A real outage is reported in 8 s, a fraction of the
            // 60 s idle timeout the dataplane would otherwise wait before dialling again.
            path_timeout: Duration::from_secs(8),
            handshake_timeout: Duration::from_secs(10),
            rekey: RekeyLimits::default(),
            max_segments: 16,
            fec: FecConfig::OFF,
        }
    }
}
