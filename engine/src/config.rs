//! Reading the config file.
//!
//! For now this owns only getting the text off disk with an error that names the file. The
//! typed schema (listen address, key, peers, maps) lives in `engine-api` from the dataplane issue
//! on, and is parsed from [`ConfigFile::text`] here.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::Context;

/// A config file's path and contents, as read from disk.
#[derive(Debug)]
pub(crate) struct ConfigFile {
    /// The path as the user gave it, for messages ("reload", errors with line and column).
    pub(crate) path: PathBuf,
    /// The file's contents.
    pub(crate) text: String,
}

impl ConfigFile {
    /// Reads `path`, failing with a message that names the file and the reason.
    pub(crate) fn read(path: &Path) -> anyhow::Result<Self> {
        let text = fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        Ok(Self {
            path: path.to_owned(),
            text,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_file_error_names_the_file() {
        let path = std::env::temp_dir().join(format!(
            "coretun-missing-config-{}.yaml",
            std::process::id()
        ));
        let err = ConfigFile::read(&path).unwrap_err();
        let message = format!("{err:#}");
        assert!(message.contains(&path.display().to_string()), "{message}");
        assert!(message.contains("No such file or directory"), "{message}");
    }

    #[test]
    fn reads_an_existing_file() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
        let config = ConfigFile::read(&path).unwrap();
        assert_eq!(config.path, path);
        assert!(config.text.contains("name = \"engine\""));
    }
}
