//! Errors of the query crate.

/// Result type of the query crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong while checking or running a query.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A condition tree that cannot be evaluated; `path` points into the tree
    /// (`all[2].where[0].value`).
    #[error("{path}: {message}")]
    Condition { path: String, message: String },

    /// SQL that is refused (not read-only) or does not plan (unknown table, bad syntax).
    #[error("{0}")]
    Sql(String),

    /// A request that cannot be served as asked (unknown audience, bad format name).
    #[error("{0}")]
    Invalid(String),

    /// The query ran longer than the session allows.
    #[error("query cancelled after {seconds} s (the limit per query)")]
    Timeout { seconds: u64 },

    /// The query needed more memory than the session allows.
    #[error("query needs more memory than the {limit_mib} MiB allowed per query")]
    Memory { limit_mib: usize },

    /// A catalog operation failed.
    #[error(transparent)]
    Catalog(#[from] shoal_catalog::Error),

    /// DataFusion failed while running a checked query.
    #[error(transparent)]
    DataFusion(#[from] datafusion::error::DataFusionError),

    /// Something that must always hold did not.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    pub(crate) fn condition(path: &str, message: impl Into<String>) -> Self {
        Error::Condition {
            path: if path.is_empty() {
                "conditions".to_string()
            } else {
                path.to_string()
            },
            message: message.into(),
        }
    }

    /// True when the caller's input caused the error (a 4xx, not a 5xx).
    pub fn is_user_error(&self) -> bool {
        match self {
            Error::Condition { .. }
            | Error::Sql(_)
            | Error::Invalid(_)
            | Error::Timeout { .. }
            | Error::Memory { .. } => true,
            Error::Catalog(e) => e.is_user_error(),
            Error::DataFusion(_) | Error::Internal(_) => false,
        }
    }

    /// The path into the condition tree, for errors about one.
    pub fn path(&self) -> Option<&str> {
        match self {
            Error::Condition { path, .. } => Some(path),
            _ => None,
        }
    }
}

impl From<arrow::error::ArrowError> for Error {
    fn from(e: arrow::error::ArrowError) -> Self {
        Error::DataFusion(e.into())
    }
}
