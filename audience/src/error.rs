//! Errors of the audience crate.

/// Result type of the audience crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong with a pack.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A request that cannot be served as asked; `field` names what is wrong.
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },

    /// No pack (or version) of that name.
    #[error("{0}")]
    NotFound(String),

    /// The caller's role or ownership does not allow it.
    #[error("{0}")]
    Forbidden(String),

    /// The request clashes with the pack's state (name taken, refresh running).
    #[error("{0}")]
    Conflict(String),

    /// From checking or running a query.
    #[error(transparent)]
    Query(#[from] shoal_query::Error),

    /// From the catalog.
    #[error(transparent)]
    Catalog(#[from] shoal_catalog::Error),

    /// Something that must always hold did not.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    pub fn invalid(field: &str, message: impl Into<String>) -> Self {
        Error::Invalid {
            field: field.to_string(),
            message: message.into(),
        }
    }

    /// True when the caller's input caused the error (a 4xx, not a 5xx).
    pub fn is_user_error(&self) -> bool {
        match self {
            Error::Invalid { .. }
            | Error::NotFound(_)
            | Error::Conflict(_)
            | Error::Forbidden(_) => true,
            Error::Query(e) => e.is_user_error(),
            Error::Catalog(e) => e.is_user_error(),
            Error::Internal(_) => false,
        }
    }
}

impl From<datafusion::error::DataFusionError> for Error {
    fn from(e: datafusion::error::DataFusionError) -> Self {
        Error::Query(shoal_query::Error::DataFusion(e))
    }
}

impl From<arrow::error::ArrowError> for Error {
    fn from(e: arrow::error::ArrowError) -> Self {
        Error::Internal(e.to_string())
    }
}
