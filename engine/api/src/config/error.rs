//! TEMPORARY stand-in until the config parser lands (replaced by the config branch).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(String);
impl ConfigError {
    pub fn io(path: &std::path::Path, err: std::io::Error) -> Self {
        Self(format!("{}: {err}", path.display()))
    }
    pub(crate) fn new(s: String) -> Self {
        Self(s)
    }
}
