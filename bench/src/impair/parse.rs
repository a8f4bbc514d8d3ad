//! Parsers for the command-line spellings of impairments: `5%` or `0.05`, `20ms`, `100mbit`.

use std::time::Duration;

use engine_api::config::{parse_bits_per_sec, parse_duration};

use super::BurstLoss;

/// A probability given as a fraction (`0.05`) or a percentage (`5%`), within 0..=1.
pub fn probability(s: &str) -> Result<f64, String> {
    let s = s.trim();
    let p = match s.strip_suffix('%') {
        Some(pct) => number(pct)? / 100.0,
        None => number(s)?,
    };
    if !(0.0..=1.0).contains(&p) {
        return Err(format!("probability {s:?} is outside 0..=1 (0%..=100%)"));
    }
    Ok(p)
}

/// A duration with a unit: `ns`, `us`, `ms`, `s` (`20ms`, `1.5s`); a bare `0` is zero. Read by
/// the config's own parser, so a duration means the same on a command line and in a config.
pub fn duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    parse_duration(s).ok_or_else(|| {
        format!("duration {s:?} is not a positive number with a unit (ns, us, ms, s)")
    })
}

/// A rate in bits per second: `100mbit`, `1gbit`, `500kbit`, `64bit` or a bare number of bits
/// (decimal multiples, as in `tc`), read by the config's own parser.
pub fn rate(s: &str) -> Result<u64, String> {
    parse_bits_per_sec(s).ok_or_else(|| {
        format!("rate {s:?} is not a positive number of bits/s (optionally kbit, mbit, gbit)")
    })
}

/// Gilbert-Elliott burst loss as `LOSS:BURST`: the long-run loss (a probability below 1) and the
/// mean number of packets lost in a row (at least 1), e.g. `3%:3`.
pub fn burst_loss(s: &str) -> Result<BurstLoss, String> {
    let (loss, burst) = s
        .split_once(':')
        .ok_or_else(|| format!("burst loss {s:?} is not LOSS:BURST (e.g. 3%:3)"))?;
    let mean_loss = probability(loss)?;
    let mean_burst = number(burst)?;
    if mean_loss >= 1.0 || mean_burst < 1.0 {
        return Err(format!(
            "burst loss {s:?}: the loss must be below 100% and the burst at least 1"
        ));
    }
    Ok(BurstLoss {
        mean_loss,
        mean_burst,
    })
}

fn number(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number"))?;
    if !v.is_finite() || v < 0.0 {
        return Err(format!("{s:?} must be a finite non-negative number"));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_losses() {
        assert_eq!(
            burst_loss("3%:3"),
            Ok(BurstLoss {
                mean_loss: 0.03,
                mean_burst: 3.0
            })
        );
        for bad in ["3%", "3%:0.5", "100%:2", "x:2", "3%:y"] {
            assert!(burst_loss(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn probabilities() {
        assert_eq!(probability("5%"), Ok(0.05));
        assert_eq!(probability("0.05"), Ok(0.05));
        assert_eq!(probability("0"), Ok(0.0));
        assert_eq!(probability("100%"), Ok(1.0));
        assert!(probability("101%").is_err());
        assert!(probability("1.5").is_err());
        assert!(probability("-1%").is_err());
        assert!(probability("x").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(duration("20ms"), Ok(Duration::from_millis(20)));
        assert_eq!(duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(duration("250us"), Ok(Duration::from_micros(250)));
        assert_eq!(duration("0"), Ok(Duration::ZERO));
        assert!(duration("20").is_err());
        assert!(duration("20m").is_err());
        assert!(duration("-5ms").is_err());
    }

    #[test]
    fn rates() {
        assert_eq!(rate("100mbit"), Ok(100_000_000));
        assert_eq!(rate("1Gbit"), Ok(1_000_000_000));
        assert_eq!(rate("2.5kbit"), Ok(2_500));
        assert_eq!(rate("64000"), Ok(64_000));
        assert!(rate("0").is_err());
        assert!(rate("fast").is_err());
    }
}
