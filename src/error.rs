//! The two kinds of failure (after watchexec): a [`CriticalError`] stops the run (the token was refused, the
//! outbox cannot be written, the configuration is wrong); everything else is a runtime error of one file or
//! one lookup, which is reported, counted, and the run goes on.

use std::path::PathBuf;

/// A failure that stops the whole run.
#[derive(Debug, thiserror::Error)]
pub enum CriticalError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// 401/403 from the API: every further lookup would fail the same way.
    #[error("SecLytics refused the access token (HTTP {status}): {message}")]
    TokenRefused { status: u16, message: String },
    #[error("outbox {path} is not writable: {source}")]
    Outbox {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Other(String),
}
