//! [`ConfigError`]: why a config file was rejected, and where.
//!
//! Every error names the file; errors about the contents also name the line and column (when the
//! YAML parser or a span knows them) and the field path, compiler style:
//! `config.yaml:12:9: maps[1].peer: unknown peer "sever" (peers are: server, office)`, so that an
//! editor can jump to it and a person can see which setting is wrong without counting lines.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// A position in a config file: 1-based line and column (in characters).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position {
    pub line: u64,
    pub column: u64,
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

/// A config file that cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file itself could not be read.
    // The reason is part of the message rather than a `source`, so that printing the error chain
    // (`{:#}` in anyhow) does not say it twice.
    #[error("cannot read config file {}: {error}", path.display())]
    Io { path: PathBuf, error: io::Error },
    /// The file was read but its contents are rejected: not YAML, not the schema, or a value that
    /// is out of range, duplicated, unresolvable, ...
    #[error("{}", Located { path, position: *position, field, message })]
    Invalid {
        path: PathBuf,
        /// Where in the file, when known.
        position: Option<Position>,
        /// The field path, e.g. `maps[1].peer`; empty for the document as a whole.
        field: String,
        /// What is wrong, without the location.
        message: String,
    },
}

impl ConfigError {
    /// The config file at `path` could not be read.
    pub fn io(path: &Path, error: io::Error) -> Self {
        Self::Io {
            path: path.to_owned(),
            error,
        }
    }

    pub(super) fn invalid(
        path: &Path,
        position: Option<Position>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self::Invalid {
            path: path.to_owned(),
            position,
            field: field.into(),
            message: message.into(),
        }
    }

    /// The config file the error is about.
    pub fn path(&self) -> &Path {
        match self {
            Self::Io { path, .. } | Self::Invalid { path, .. } => path,
        }
    }

    /// Where in the file the error is, when known.
    pub fn position(&self) -> Option<Position> {
        match self {
            Self::Io { .. } => None,
            Self::Invalid { position, .. } => *position,
        }
    }

    /// The field path (`maps[1].peer`), when the error is about a field.
    pub fn field(&self) -> Option<&str> {
        match self {
            Self::Invalid { field, .. } if !field.is_empty() => Some(field),
            _ => None,
        }
    }
}

/// `file:line:col: field: message`, leaving out the parts that are not known.
struct Located<'a> {
    path: &'a Path,
    position: Option<Position>,
    field: &'a str,
    message: &'a str,
}

impl fmt::Display for Located<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:", self.path.display())?;
        if let Some(position) = self.position {
            write!(f, "{position}:")?;
        }
        if !self.field.is_empty() {
            write!(f, " {}:", self.field)?;
        }
        write!(f, " {}", self.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_file_line_column_and_field() {
        let path = Path::new("config.yaml");
        let err = ConfigError::invalid(
            path,
            Some(Position {
                line: 12,
                column: 9,
            }),
            "maps[1].peer",
            "unknown peer \"sever\"",
        );
        assert_eq!(
            err.to_string(),
            "config.yaml:12:9: maps[1].peer: unknown peer \"sever\""
        );
        assert_eq!(err.field(), Some("maps[1].peer"));

        let err = ConfigError::invalid(path, None, "", "missing key");
        assert_eq!(err.to_string(), "config.yaml: missing key");
        assert_eq!(err.field(), None);
    }

    #[test]
    fn io_error_names_the_file_and_reason() {
        let err = ConfigError::io(
            Path::new("/nope/c.yaml"),
            io::Error::new(io::ErrorKind::NotFound, "No such file or directory"),
        );
        assert_eq!(
            err.to_string(),
            "cannot read config file /nope/c.yaml: No such file or directory"
        );
        assert!(std::error::Error::source(&err).is_none());
    }
}
