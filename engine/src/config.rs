//! Loading the config file.
//!
//! `engine_api::config` parses and checks the file (so that `ctl` and the fuzzer parse it the
//! same way); the engine adds the one check only it can make, because only it links
//! `tracing-subscriber`: `log.level` must be a filter `EnvFilter` accepts.

use std::io;
use std::net::SocketAddr;
use std::path::Path;

use engine_api::config::{Config, ConfigError, Environment, SystemEnvironment};
use engine_proto::crypto::{Psk, PskError};
use tracing_subscriber::EnvFilter;

/// Reads and checks the config at `path`; the error names the file, line, column and field.
pub(crate) fn load(path: &Path) -> Result<Config, ConfigError> {
    Config::load_with(path, &EngineEnvironment)
}

/// [`SystemEnvironment`], with `log.level` checked by `EnvFilter` itself.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct EngineEnvironment;

impl Environment for EngineEnvironment {
    fn resolve(&self, host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
        SystemEnvironment.resolve(host, port)
    }

    fn read_key_file(&self, path: &Path) -> io::Result<String> {
        SystemEnvironment.read_key_file(path)
    }

    fn passphrase_key(&self, passphrase: &str) -> Result<Psk, PskError> {
        SystemEnvironment.passphrase_key(passphrase)
    }

    fn check_log_filter(&self, directives: &str) -> Result<(), String> {
        EnvFilter::try_new(directives)
            .map(drop)
            .map_err(|err| err.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_path(name: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!(
            "coretun-engine-config-{}-{name}",
            std::process::id()
        ))
    }

    #[test]
    fn missing_file_error_names_the_file() {
        let path = temp_path("missing.yaml");
        let message = load(&path).unwrap_err().to_string();
        assert!(message.contains(&path.display().to_string()), "{message}");
        assert!(message.contains("No such file or directory"), "{message}");
    }

    #[test]
    fn loads_the_shipped_config() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config.yaml");
        let config = load(&path).unwrap_or_else(|err| panic!("{err}"));
        assert_eq!(config.listen, Some("0.0.0.0:4000".parse().unwrap()));
    }

    #[test]
    fn log_level_is_checked_by_env_filter() {
        let env = EngineEnvironment;
        assert_eq!(env.check_log_filter("engine=debug,warn"), Ok(()));
        let path = temp_path("bad-level.yaml");
        std::fs::write(
            &path,
            "key: vk7QWrLp2iOdreXkJU6RQUp5dGQH2cB+VkGqVdVRKhA=\nlog:\n  level: \"x=[\"\n",
        )
        .unwrap();
        let message = load(&path).unwrap_err().to_string();
        std::fs::remove_file(&path).unwrap();
        assert!(
            message.contains(":3:10: log.level: invalid log filter"),
            "{message}"
        );
    }
}
