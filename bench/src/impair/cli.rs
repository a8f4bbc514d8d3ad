//! The impairment options shared by the `impair` and `linkem` commands: `--loss 5%`,
//! `--delay 20ms`, `--rate 100mbit`, ... (see [`super::parse`] for the spellings).

use std::time::Duration;

use super::{BurstLoss, Impairment, parse};

/// Impairment options for both directions.
#[derive(Debug, clap::Args)]
pub struct Both {
    /// Loss probability (`5%` or `0.05`).
    #[arg(long, value_parser = parse::probability)]
    pub loss: Option<f64>,
    /// One-way delay (`20ms`).
    #[arg(long, value_parser = parse::duration)]
    pub delay: Option<Duration>,
    /// Uniform extra delay 0..=jitter (`5ms`).
    #[arg(long, value_parser = parse::duration)]
    pub jitter: Option<Duration>,
    /// Probability of holding a datagram back an extra delay (`1%`).
    #[arg(long, value_parser = parse::probability)]
    pub reorder: Option<f64>,
    /// Duplication probability (`0.5%`).
    #[arg(long, value_parser = parse::probability)]
    pub duplicate: Option<f64>,
    /// Bottleneck rate (`100mbit`).
    #[arg(long, value_parser = parse::rate)]
    pub rate: Option<u64>,
    /// Bottleneck drop-tail queue in time at the rate (`50ms`).
    #[arg(long, value_parser = parse::duration)]
    pub queue: Option<Duration>,
    /// Gilbert-Elliott burst loss: long-run loss and mean burst length (`3%:3`).
    #[arg(long, value_parser = parse::burst_loss)]
    pub burst_loss: Option<BurstLoss>,
}

/// Impairment settings, each possibly unset.
#[derive(Debug, Clone, Copy, Default)]
pub struct Settings {
    pub loss: Option<f64>,
    pub delay: Option<Duration>,
    pub jitter: Option<Duration>,
    pub reorder: Option<f64>,
    pub duplicate: Option<f64>,
    pub rate: Option<u64>,
    pub queue: Option<Duration>,
    pub burst_loss: Option<BurstLoss>,
}

impl Settings {
    pub fn apply(&self, mut imp: Impairment) -> Impairment {
        imp.loss = self.loss.unwrap_or(imp.loss);
        imp.delay = self.delay.unwrap_or(imp.delay);
        imp.jitter = self.jitter.unwrap_or(imp.jitter);
        imp.reorder = self.reorder.unwrap_or(imp.reorder);
        imp.duplicate = self.duplicate.unwrap_or(imp.duplicate);
        imp.rate_bits_per_sec = self.rate.or(imp.rate_bits_per_sec);
        imp.queue = self.queue.unwrap_or(imp.queue);
        imp.burst_loss = self.burst_loss.or(imp.burst_loss);
        imp
    }
}

impl Both {
    pub fn settings(&self) -> Settings {
        Settings {
            loss: self.loss,
            delay: self.delay,
            jitter: self.jitter,
            reorder: self.reorder,
            duplicate: self.duplicate,
            rate: self.rate,
            queue: self.queue,
            burst_loss: self.burst_loss,
        }
    }
}
