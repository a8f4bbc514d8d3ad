//! `impair`: the UDP impairment relay ([`bench::impair`]) as a command.
//!
//! Prints `impair listening on <addr>` as its first stdout line, then the statistics of each
//! direction to stderr every 5 s and once more on SIGINT/SIGTERM.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use bench::impair::cli::{Both, Settings};
use bench::impair::{Impairment, Relay, RelayConfig, parse};
use clap::Parser;

const REPORT_INTERVAL: Duration = Duration::from_secs(5);

/// Set by the signal handler; the main loop polls it.
static STOP: AtomicBool = AtomicBool::new(false);

/// A UDP relay that drops, delays, reorders, duplicates and rate-limits datagrams.
///
/// The impairment options apply to both directions; `--up-*` (client -> upstream) and
/// `--down-*` (upstream -> client) override them for one direction.
#[derive(Debug, Parser)]
#[command(name = "impair")]
struct Args {
    /// Where clients send (port 0 picks a free port).
    #[arg(long)]
    listen: SocketAddr,
    /// Where datagrams are forwarded to.
    #[arg(long)]
    upstream: SocketAddr,
    #[command(flatten)]
    both: Both,
    #[command(flatten)]
    up: Up,
    #[command(flatten)]
    down: Down,
    /// Seed of the random decisions.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

/// Declares a per-direction override group with prefixed option names.
macro_rules! overrides {
    ($name:ident, $dir:literal, $loss:literal, $delay:literal, $jitter:literal, $reorder:literal,
     $duplicate:literal, $rate:literal, $queue:literal) => {
        #[derive(Debug, clap::Args)]
        struct $name {
            #[arg(id = $loss, long = $loss, value_parser = parse::probability, help = concat!("--loss for ", $dir))]
            loss: Option<f64>,
            #[arg(id = $delay, long = $delay, value_parser = parse::duration, help = concat!("--delay for ", $dir))]
            delay: Option<Duration>,
            #[arg(id = $jitter, long = $jitter, value_parser = parse::duration, help = concat!("--jitter for ", $dir))]
            jitter: Option<Duration>,
            #[arg(id = $reorder, long = $reorder, value_parser = parse::probability, help = concat!("--reorder for ", $dir))]
            reorder: Option<f64>,
            #[arg(id = $duplicate, long = $duplicate, value_parser = parse::probability, help = concat!("--duplicate for ", $dir))]
            duplicate: Option<f64>,
            #[arg(id = $rate, long = $rate, value_parser = parse::rate, help = concat!("--rate for ", $dir))]
            rate: Option<u64>,
            #[arg(id = $queue, long = $queue, value_parser = parse::duration, help = concat!("--queue for ", $dir))]
            queue: Option<Duration>,
        }

        impl $name {
            fn settings(&self) -> Settings {
                Settings {
                    loss: self.loss,
                    delay: self.delay,
                    jitter: self.jitter,
                    reorder: self.reorder,
                    duplicate: self.duplicate,
                    rate: self.rate,
                    queue: self.queue,
                    // Burst loss is set for both directions only.
                    burst_loss: None,
                }
            }
        }
    };
}

overrides!(
    Up,
    "client -> upstream",
    "up-loss",
    "up-delay",
    "up-jitter",
    "up-reorder",
    "up-duplicate",
    "up-rate",
    "up-queue"
);
overrides!(
    Down,
    "upstream -> client",
    "down-loss",
    "down-delay",
    "down-jitter",
    "down-reorder",
    "down-duplicate",
    "down-rate",
    "down-queue"
);

extern "C" fn on_signal(_: libc::c_int) {
    // Only an atomic store: async-signal-safe.
    STOP.store(true, Ordering::Relaxed);
}

fn main() {
    let args = Args::parse();
    let both = args.both.settings().apply(Impairment::default());
    let config = RelayConfig {
        listen: args.listen,
        upstream: args.upstream,
        to_upstream: args.up.settings().apply(both.clone()),
        to_client: args.down.settings().apply(both),
        seed: args.seed,
    };
    for signal in [libc::SIGINT, libc::SIGTERM] {
        let handler: extern "C" fn(libc::c_int) = on_signal;
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { libc::signal(signal, handler as libc::sighandler_t) };
    }
    let relay = match Relay::start(config.clone()) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("impair: cannot listen on {}: {e}", config.listen);
            std::process::exit(1);
        }
    };
    println!("impair listening on {}", relay.local_addr());
    let _ = std::io::stdout().flush();
    eprintln!(
        "impair: -> {} up {:?} down {:?} seed {}",
        config.upstream, config.to_upstream, config.to_client, config.seed
    );
    let mut next_report = Instant::now() + REPORT_INTERVAL;
    while !STOP.load(Ordering::Relaxed) {
        thread::sleep(Duration::from_millis(100));
        if Instant::now() >= next_report {
            report(&relay);
            next_report += REPORT_INTERVAL;
        }
    }
    report(&relay);
    drop(relay);
}

fn report(relay: &Relay) {
    eprintln!("impair: up   {}", relay.stats_to_upstream());
    eprintln!("impair: down {}", relay.stats_to_client());
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn command_line_is_consistent() {
        Args::command().debug_assert();
    }

    #[test]
    fn direction_overrides_win() {
        let args = Args::try_parse_from([
            "impair",
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            "127.0.0.1:4000",
            "--loss",
            "5%",
            "--delay",
            "20ms",
            "--down-loss",
            "0",
            "--up-rate",
            "100mbit",
        ])
        .unwrap();
        let both = args.both.settings().apply(Impairment::default());
        let up = args.up.settings().apply(both.clone());
        let down = args.down.settings().apply(both);
        assert_eq!((up.loss, up.delay), (0.05, Duration::from_millis(20)));
        assert_eq!(up.rate_bits_per_sec, Some(100_000_000));
        assert_eq!((down.loss, down.delay), (0.0, Duration::from_millis(20)));
        assert_eq!(down.rate_bits_per_sec, None);
    }
}
