//! The command line, as clap derive types.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

/// coretun engine: a reliable, encrypted UDP tunnel (port forwarding, relay, FEC).
#[derive(Debug, Parser)]
#[command(
    name = "engine",
    version,
    about,
    args_conflicts_with_subcommands = true
)]
pub(crate) struct Cli {
    /// Run the engine with this config file.
    #[arg(short, long, value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,

    /// Log filter such as `info`, `debug` or `engine=trace,warn`; overrides RUST_LOG
    /// [default: RUST_LOG, else info].
    #[arg(long, global = true, value_name = "FILTER", value_parser = parse_log_filter)]
    pub(crate) log_level: Option<String>,

    #[command(subcommand)]
    pub(crate) command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Check a config file and exit without running.
    Check {
        /// The config file to check.
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Print a new random pre-shared key (32 bytes, base64) for the `key:` setting.
    Genkey,
}

/// Validates a filter here, so that a typo is a usage error (exit 2) rather than a silent
/// fallback.
fn parse_log_filter(directives: &str) -> Result<String, String> {
    EnvFilter::try_new(directives)
        .map(|_| directives.to_owned())
        .map_err(|err| err.to_string())
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
    fn parses_run_check_and_genkey() {
        let cli = Cli::try_parse_from(["engine", "-c", "a.yaml", "--log-level", "debug"]).unwrap();
        assert_eq!(cli.config, Some(PathBuf::from("a.yaml")));
        assert_eq!(cli.log_level.as_deref(), Some("debug"));
        assert!(cli.command.is_none());

        let cli = Cli::try_parse_from(["engine", "check", "--config", "b.yaml"]).unwrap();
        assert!(
            matches!(cli.command, Some(Command::Check { config }) if config.as_os_str() == "b.yaml")
        );

        let cli = Cli::try_parse_from(["engine", "genkey", "--log-level", "warn"]).unwrap();
        assert!(matches!(cli.command, Some(Command::Genkey)));
    }

    #[test]
    fn rejects_bad_usage() {
        for args in [
            &["engine", "check"][..],
            &["engine", "-c", "a.yaml", "genkey"],
            &["engine", "--log-level", "info,,=[", "-c", "a.yaml"],
            &["engine", "frobnicate"],
        ] {
            assert!(Cli::try_parse_from(args).is_err(), "{args:?}");
        }
    }
}
