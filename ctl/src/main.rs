//! The `ctl` binary: asks a running engine for its status and counters, or to reload its config,
//! over the engine's Unix control socket.
//!
//! Exit codes: 0 success, 1 the engine could not be reached or refused the request, 2 usage error
//! (reported by clap).

mod client;
mod render;

use std::io::{self, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use engine_api::control::{Command, DEFAULT_SOCKET_PATH, Response, Stats};

use crate::client::Client;

/// coretun control client: query and steer a running engine.
#[derive(Debug, Parser)]
#[command(name = "ctl", version, about)]
struct Cli {
    /// The engine's control socket.
    #[arg(short, long, global = true, value_name = "PATH", default_value = DEFAULT_SOCKET_PATH)]
    socket: PathBuf,

    #[command(subcommand)]
    command: CtlCommand,
}

#[derive(Debug, Subcommand)]
enum CtlCommand {
    /// Show whether the engine is up and what it runs.
    Status,
    /// Show sessions, maps, latencies and traffic counters.
    Stats {
        /// Print JSON (one object per line with --watch) instead of tables.
        #[arg(long)]
        json: bool,
        /// Keep sampling every --interval seconds until interrupted: on a terminal the tables
        /// refresh in place with rates per second, otherwise one line of rates per sample.
        #[arg(long)]
        watch: bool,
        /// Seconds between samples with --watch.
        #[arg(long, value_name = "SECONDS", default_value_t = 1,
              value_parser = clap::value_parser!(u64).range(1..), requires = "watch")]
        interval: u64,
    },
    /// Print the counters in the Prometheus text format (for node_exporter's textfile
    /// collector, or a scrape through socat).
    Metrics,
    /// Show the configured peers and the sessions with them.
    Peers {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show the maps and allow entries with their connection counters.
    Maps {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Make the engine re-read its config file and apply what changed; prints the changes.
    Reload,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("ctl: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: &Cli) -> anyhow::Result<()> {
    let mut client = Client::connect(&cli.socket)?;
    let mut stdout = io::stdout().lock();
    match cli.command {
        CtlCommand::Status => match client.request(Command::Status)? {
            Response::Status(status) => render::status(&mut stdout, &status)?,
            other => return unexpected(Command::Status, other),
        },
        CtlCommand::Reload => match client.request(Command::Reload)? {
            Response::Reloaded {
                maps,
                changes,
                restart_needed,
            } => {
                if changes.is_empty() && restart_needed.is_empty() {
                    writeln!(stdout, "reloaded: no changes; {maps} maps in effect")?;
                } else {
                    writeln!(stdout, "reloaded: {maps} maps in effect")?;
                }
                for line in &changes {
                    writeln!(stdout, "  {line}")?;
                }
                for line in &restart_needed {
                    writeln!(stdout, "  {line}")?;
                }
            }
            other => return unexpected(Command::Reload, other),
        },
        CtlCommand::Stats {
            json,
            watch,
            interval,
        } => {
            let in_place = watch && !json && io::stdout().is_terminal();
            let mut previous: Option<(Stats, Instant)> = None;
            loop {
                let stats = stats(&mut client)?;
                let taken = Instant::now();
                let since = previous.as_ref().map(|(stats, at)| render::Since {
                    stats,
                    secs: taken.duration_since(*at).as_secs_f64(),
                });
                match (json, watch) {
                    (true, _) => {
                        serde_json::to_writer(&mut stdout, &stats)?;
                        writeln!(stdout)?;
                    }
                    (false, false) => render::stats(&mut stdout, &stats, None)?,
                    (false, true) if in_place => {
                        // Home the cursor and clear the screen, then draw the tables afresh.
                        write!(stdout, "\x1b[H\x1b[2J")?;
                        render::stats(&mut stdout, &stats, since)?;
                    }
                    (false, true) => render::stats_row(
                        &mut stdout,
                        previous.as_ref().map(|(stats, _)| stats),
                        &stats,
                        interval,
                    )?,
                }
                if !watch {
                    break;
                }
                stdout.flush().context("cannot write to stdout")?;
                previous = Some((stats, taken));
                thread::sleep(Duration::from_secs(interval));
            }
        }
        CtlCommand::Metrics => {
            let stats = stats(&mut client)?;
            stdout.write_all(engine_api::metrics::render(&stats).as_bytes())?;
        }
        CtlCommand::Peers { json } => match client.request(Command::Peers)? {
            Response::Peers { peers } if json => {
                serde_json::to_writer(&mut stdout, &peers)?;
                writeln!(stdout)?;
            }
            Response::Peers { peers } => render::peers(&mut stdout, &peers)?,
            other => return unexpected(Command::Peers, other),
        },
        CtlCommand::Maps { json } => match client.request(Command::Maps)? {
            Response::Maps { maps } if json => {
                serde_json::to_writer(&mut stdout, &maps)?;
                writeln!(stdout)?;
            }
            Response::Maps { maps } => render::maps(&mut stdout, &maps, None)?,
            other => return unexpected(Command::Maps, other),
        },
    }
    stdout.flush().context("cannot write to stdout")?;
    Ok(())
}

fn stats(client: &mut Client) -> anyhow::Result<Stats> {
    match client.request(Command::Stats)? {
        Response::Stats(stats) => Ok(stats),
        other => unexpected(Command::Stats, other).map(|()| Stats::default()),
    }
}

/// The engine answered, but not with what was asked for: an error it reports, or a bug.
fn unexpected(command: Command, response: Response) -> anyhow::Result<()> {
    match response {
        Response::Error { message } => bail!("the engine refused `{command}`: {message}"),
        other => bail!("the engine answered `{command}` with an unexpected {other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn socket_defaults_and_overrides() {
        let cli = Cli::try_parse_from(["ctl", "status"]).unwrap();
        assert_eq!(cli.socket, PathBuf::from(DEFAULT_SOCKET_PATH));
        let cli = Cli::try_parse_from(["ctl", "stats", "--json", "-s", "/tmp/e.sock"]).unwrap();
        assert_eq!(cli.socket, PathBuf::from("/tmp/e.sock"));
        assert!(matches!(
            cli.command,
            CtlCommand::Stats {
                json: true,
                watch: false,
                interval: 1
            }
        ));
    }

    #[test]
    fn rejects_bad_usage() {
        for args in [
            &["ctl"][..],
            &["ctl", "stats", "--interval", "2"],
            &["ctl", "stats", "--watch", "--interval", "0"],
            &["ctl", "status", "--json"],
            &["ctl", "restart"],
        ] {
            assert!(Cli::try_parse_from(args).is_err(), "{args:?}");
        }
    }
}
