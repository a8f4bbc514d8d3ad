//! The `engine` binary: command line, logging and exit codes around the coretun dataplane.
//!
//! `main` only parses the command line, sets up logging and maps the outcome of a subcommand to
//! an exit code; each subcommand lives in its own module so the dataplane (the next issue) slots
//! in behind [`run`] without touching the rest.
//!
//! Exit codes: 0 success (including a run stopped by SIGTERM or SIGINT), 1 runtime error
//! (invalid config, a socket that cannot be bound, failed key generation, ...), 2 usage error
//! (reported by clap).

mod cli;
mod config;
mod dataplane;
mod keys;

use std::io::{self, IsTerminal, Write};
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use clap::{CommandFactory, Parser};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, fmt, reload};

use crate::cli::{Cli, Command};

/// A runtime error: the command line was fine, the work failed.
const EXIT_FAILURE: u8 = 1;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match &cli.command {
        Some(Command::Check { config }) => {
            let _ = init_tracing(cli.log_level.as_deref(), None);
            check(config)
        }
        Some(Command::Genkey) => {
            let _ = init_tracing(cli.log_level.as_deref(), None);
            genkey()
        }
        None => match &cli.config {
            Some(config) => run(config, cli.log_level.as_deref()),
            None => Cli::command()
                .error(
                    clap::error::ErrorKind::MissingRequiredArgument,
                    "a config file is required to run the engine: engine -c <FILE>",
                )
                .exit(),
        },
    };
    match outcome {
        Ok(code) => code,
        Err(err) => {
            // `{:#}` prints the whole context chain on one line, e.g.
            // "cannot read config file `x.yaml`: No such file or directory (os error 2)".
            eprintln!("engine: {err:#}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

/// Logs go to stderr so that stdout stays clean for output meant for scripts (`genkey`).
///
/// `--log-level` wins over `RUST_LOG`, which wins over the config's `log.level`; without any the
/// engine logs at `info`. Returns what sets the filter again when a reload changes `log.level`,
/// if `log.level` is what chose it.
fn init_tracing(
    log_level: Option<&str>,
    config_level: Option<&str>,
) -> Option<dataplane::LogReload> {
    const DEFAULT_FILTER: &str = "info";
    let from_config = log_level.is_none() && std::env::var_os(EnvFilter::DEFAULT_ENV).is_none();
    let filter = match log_level {
        // Already validated by the argument parser.
        Some(directives) => EnvFilter::try_new(directives),
        None if std::env::var_os(EnvFilter::DEFAULT_ENV).is_some() => {
            EnvFilter::try_from_default_env().or_else(|err| {
                eprintln!("engine: ignoring invalid RUST_LOG ({err}); logging at {DEFAULT_FILTER}");
                EnvFilter::try_new(DEFAULT_FILTER)
            })
        }
        None => match config_level {
            Some(level) => EnvFilter::try_new(level).or_else(|err| {
                eprintln!(
                    "engine: ignoring invalid log.level ({err}); logging at {DEFAULT_FILTER}"
                );
                EnvFilter::try_new(DEFAULT_FILTER)
            }),
            None => EnvFilter::try_new(DEFAULT_FILTER),
        },
    }
    .unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let (filter, handle) = reload::Layer::new(filter);
    tracing_subscriber::registry()
        .with(filter)
        .with(
            fmt::layer()
                .with_writer(io::stderr)
                .with_ansi(io::stderr().is_terminal()),
        )
        .init();
    from_config.then(|| {
        Box::new(move |level: &str| {
            let filter = EnvFilter::try_new(level).map_err(|err| err.to_string())?;
            handle.reload(filter).map_err(|err| err.to_string())
        }) as dataplane::LogReload
    })
}

/// `engine -c <FILE>`: run the dataplane on a config until SIGTERM or SIGINT.
fn run(config_path: &Path, log_level: Option<&str>) -> anyhow::Result<ExitCode> {
    // The config is read before logging starts, because it names the log level; its errors go
    // to stderr like every other error.
    let config = config::load(config_path)?;
    let log = init_tracing(log_level, Some(&config.log.level));
    dataplane::run(config_path, config, log)?;
    Ok(ExitCode::SUCCESS)
}

/// `engine check -c <FILE>`: report whether a config would be accepted, without running.
///
/// On success prints the effective config (defaults applied, addresses resolved, key masked) to
/// stdout; otherwise the error, as `file:line:col: field: message`, goes to stderr (exit 1).
fn check(config_path: &Path) -> anyhow::Result<ExitCode> {
    let config = config::load(config_path)?;
    let mut stdout = io::stdout().lock();
    write!(
        stdout,
        "# {}: OK. Effective config (defaults applied, addresses resolved, key masked):\n{}",
        config_path.display(),
        config.to_masked_yaml()
    )
    .and_then(|()| stdout.flush())
    .context("cannot write to stdout")?;
    Ok(ExitCode::SUCCESS)
}

/// `engine genkey`: print a fresh pre-shared key for the `key:` setting.
fn genkey() -> anyhow::Result<ExitCode> {
    let key = keys::generate()?;
    let mut stdout = io::stdout().lock();
    writeln!(stdout, "{key}")
        .and_then(|()| stdout.flush())
        .context("cannot write the key to stdout")?;
    Ok(ExitCode::SUCCESS)
}
