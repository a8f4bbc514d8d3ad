//! The `ctl` binary: asks a running engine for its status and counters, or to reload its config,
//! over the engine's Unix control socket.
//!
//! Exit codes: 0 success, 1 the engine could not be reached or refused the request, 2 usage error
//! (reported by clap).

mod client;
mod render;

use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::thread;
use std::time::Duration;

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
    /// Show traffic counters.
    Stats {
        /// Print JSON (one object per line with --watch) instead of a table.
        #[arg(long)]
        json: bool,
        /// Keep printing a sample every --interval seconds until interrupted.
        #[arg(long)]
        watch: bool,
        /// Seconds between samples with --watch.
        #[arg(long, value_name = "SECONDS", default_value_t = 1,
              value_parser = clap::value_parser!(u64).range(1..), requires = "watch")]
        interval: u64,
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
            let mut previous: Option<Stats> = None;
            loop {
                let stats = match client.request(Command::Stats)? {
                    Response::Stats(stats) => stats,
                    other => return unexpected(Command::Stats, other),
                };
                match (json, watch) {
                    (true, _) => {
                        serde_json::to_writer(&mut stdout, &stats)?;
                        writeln!(stdout)?;
                    }
                    (false, false) => render::stats(&mut stdout, &stats)?,
                    (false, true) => {
                        render::stats_row(&mut stdout, previous.as_ref(), &stats, interval)?
                    }
                }
                if !watch {
                    break;
                }
                stdout.flush().context("cannot write to stdout")?;
                previous = Some(stats);
                thread::sleep(Duration::from_secs(interval));
            }
        }
    }
    stdout.flush().context("cannot write to stdout")?;
    Ok(())
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
