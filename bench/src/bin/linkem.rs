//! `linkem`: the link emulator ([`bench::linkem`]) as a command. Creates two network namespaces
//! joined by an impaired link, prints their names and addresses, and keeps the link up until
//! SIGINT/SIGTERM; then prints each direction's counters (including late releases, which show
//! that the emulator could not keep up) and removes the namespaces.
//!
//! ```text
//! linkem --delay 25ms --loss 5% --rate 100mbit &
//! ip netns exec <namespace-b> iperf3 -s -D
//! ip netns exec <namespace-a> iperf3 -c 10.201.0.2
//! ```

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

use bench::impair::Impairment;
use bench::impair::cli::Both;
use bench::linkem::{ADDR_A, ADDR_B, Link, LinkConfig};
use clap::Parser;

/// Set by the signal handler; the main loop polls it.
static STOP: AtomicBool = AtomicBool::new(false);

/// Two network namespaces joined by an emulated link; the impairment applies to both
/// directions. Needs root.
#[derive(Debug, Parser)]
#[command(name = "linkem")]
struct Args {
    #[command(flatten)]
    both: Both,
    /// MTU of the two devices.
    #[arg(long, default_value_t = 1500)]
    mtu: u32,
    /// Seed of the random decisions.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

extern "C" fn on_signal(_: libc::c_int) {
    // Only an atomic store: async-signal-safe.
    STOP.store(true, Ordering::Relaxed);
}

fn main() {
    let args = Args::parse();
    let impairment = args.both.settings().apply(Impairment::default());
    for signal in [libc::SIGINT, libc::SIGTERM] {
        let handler: extern "C" fn(libc::c_int) = on_signal;
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { libc::signal(signal, handler as libc::sighandler_t) };
    }
    let link = match Link::start(LinkConfig {
        a_to_b: impairment.clone(),
        b_to_a: impairment,
        seed: args.seed,
        mtu: args.mtu,
    }) {
        Ok(link) => link,
        Err(e) => {
            eprintln!("linkem: cannot set up the link (root and the ip tool are needed): {e}");
            std::process::exit(1);
        }
    };
    println!("namespace-a {} {ADDR_A}", link.namespace_a());
    println!("namespace-b {} {ADDR_B}", link.namespace_b());
    let _ = std::io::stdout().flush();
    while !STOP.load(Ordering::Relaxed) {
        thread::sleep(Duration::from_millis(100));
    }
    eprintln!("linkem: a -> b {}", link.stats_a_to_b());
    eprintln!("linkem: b -> a {}", link.stats_b_to_a());
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn command_line_is_consistent() {
        Args::command().debug_assert();
    }
}
