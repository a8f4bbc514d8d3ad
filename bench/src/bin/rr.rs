//! `rr`: request/response latency over TCP ([`bench::rr`]). `rr serve --listen ADDR` echoes;
//! `rr client --connect ADDR` sends `--count` requests of `--size` bytes every `--interval`
//! and prints one JSON line: answered, unanswered, p50/p90/p99/max in microseconds.

use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use bench::impair::parse;
use bench::rr::{run_client, serve};
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "rr")]
struct Args {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Echo every connection.
    Serve {
        #[arg(long)]
        listen: SocketAddr,
        /// TCP congestion control of the connections (`cubic`, `bbr`); default: the kernel's.
        #[arg(long)]
        congestion: Option<String>,
    },
    /// Time request/response round trips.
    Client {
        #[arg(long)]
        connect: SocketAddr,
        #[arg(long, default_value_t = 1000)]
        count: usize,
        #[arg(long, default_value_t = 64)]
        size: usize,
        #[arg(long, default_value = "10ms", value_parser = parse::duration)]
        interval: Duration,
        /// How long to wait for answers after the last request.
        #[arg(long, default_value = "5s", value_parser = parse::duration)]
        grace: Duration,
        /// TCP congestion control of the connection; default: the kernel's.
        #[arg(long)]
        congestion: Option<String>,
    },
}

fn main() {
    let args = Args::parse();
    let result = match args.command {
        Cmd::Serve { listen, congestion } => {
            TcpListener::bind(listen).and_then(|l| serve(l, congestion.as_deref()))
        }
        Cmd::Client {
            connect,
            count,
            size,
            interval,
            grace,
            congestion,
        } => run_client(
            connect,
            count,
            size.max(1),
            interval,
            grace,
            congestion.as_deref(),
        )
        .map(|l| {
            let us = |q: f64| l.quantile(q).map_or(-1, |d| d.as_micros() as i64);
            println!(
                "{{\"answered\":{},\"unanswered\":{},\"p50_us\":{},\"p90_us\":{},\"p99_us\":{},\"max_us\":{}}}",
                l.samples.len(),
                l.unanswered,
                us(0.5),
                us(0.9),
                us(0.99),
                us(1.0)
            );
        }),
    };
    if let Err(e) = result {
        eprintln!("rr: {e}");
        std::process::exit(1);
    }
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
