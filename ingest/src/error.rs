//! Errors of the ingest crate.

use std::path::Path;

/// Result type of the ingest crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong while reading or writing source data.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Options that cannot be used.
    #[error("invalid options: {0}")]
    InvalidOptions(String),

    /// A file that cannot be imported at all (wrong columns, unreadable header).
    #[error("{file}: {reason}")]
    InvalidInput { file: String, reason: String },

    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },

    /// What was asked for does not exist (a user id, an identity, a link).
    #[error("{0}")]
    NotFound(String),

    /// A catalog operation failed.
    #[error(transparent)]
    Catalog(#[from] shoal_catalog::Error),

    /// Something that must always hold did not.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        Error::Io {
            path: path.display().to_string(),
            source,
        }
    }

    /// True when the caller's input caused the error.
    pub fn is_user_error(&self) -> bool {
        match self {
            Error::InvalidOptions(_) | Error::InvalidInput { .. } | Error::NotFound(_) => true,
            Error::Catalog(e) => e.is_user_error(),
            Error::Io { .. } | Error::Internal(_) => false,
        }
    }
}

impl From<datafusion::error::DataFusionError> for Error {
    fn from(e: datafusion::error::DataFusionError) -> Self {
        Error::Catalog(e.into())
    }
}

impl From<arrow::error::ArrowError> for Error {
    fn from(e: arrow::error::ArrowError) -> Self {
        Error::Catalog(e.into())
    }
}
