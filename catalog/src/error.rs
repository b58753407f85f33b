//! Errors of the catalog crate.

use std::fmt;

/// Result type of the catalog crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong in the catalog, and where.
///
/// The variants separate the caller's mistakes (`Invalid*`, `Unknown*`) from
/// failures of the storage underneath and from broken invariants, so the HTTP
/// layer can map them to 4xx and 5xx without looking at messages.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A warehouse URL that cannot be used.
    #[error("invalid warehouse location '{location}': {reason}")]
    InvalidWarehouse { location: String, reason: String },

    /// A table name that is not a plain identifier.
    #[error("invalid table name '{name}': use lowercase letters, digits and '_'")]
    InvalidTableName { name: String },

    /// A table that the catalog does not define or that has not been created.
    #[error("unknown table '{name}'")]
    UnknownTable { name: String },

    /// A field that the catalog does not define.
    #[error("unknown field '{table}.{field}'")]
    UnknownField { table: String, field: String },

    /// A catalog definition that does not hold together.
    #[error("invalid catalog definition at {path}: {reason}")]
    InvalidDefinition { path: String, reason: String },

    /// Data handed to a write does not fit the table.
    #[error("invalid data for table '{table}': {reason}")]
    InvalidData { table: String, reason: String },

    /// A version or timestamp that the table does not have.
    #[error("table '{table}' has no snapshot {at}")]
    NoSuchSnapshot { table: String, at: SnapshotRef },

    /// The Delta log or its files could not be read or written.
    #[error("delta table '{table}': {source}")]
    Delta {
        table: String,
        #[source]
        source: Box<deltalake::DeltaTableError>,
    },

    /// Reading a table through DataFusion failed.
    #[error(transparent)]
    DataFusion(#[from] datafusion::error::DataFusionError),

    /// An Arrow kernel failed.
    #[error(transparent)]
    Arrow(#[from] arrow::error::ArrowError),

    /// The object store failed.
    #[error(transparent)]
    ObjectStore(#[from] object_store::Error),

    /// A path inside the object store is not valid.
    #[error(transparent)]
    ObjectPath(#[from] object_store::path::Error),

    /// A local file could not be read.
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },

    /// Something that must always hold did not.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// True when the caller's input caused the error (a 4xx in HTTP terms).
    pub fn is_user_error(&self) -> bool {
        matches!(
            self,
            Error::InvalidWarehouse { .. }
                | Error::InvalidTableName { .. }
                | Error::UnknownTable { .. }
                | Error::UnknownField { .. }
                | Error::InvalidDefinition { .. }
                | Error::InvalidData { .. }
                | Error::NoSuchSnapshot { .. }
        )
    }

    pub(crate) fn delta(table: &str, source: deltalake::DeltaTableError) -> Self {
        Error::Delta {
            table: table.to_string(),
            source: Box::new(source),
        }
    }
}

/// A point in a table's history: a version or a commit time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotRef {
    /// The newest committed version.
    Latest,
    /// A Delta version number.
    Version(u64),
    /// The newest version committed at or before this time.
    Timestamp(chrono::DateTime<chrono::Utc>),
}

impl fmt::Display for SnapshotRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SnapshotRef::Latest => write!(f, "latest"),
            SnapshotRef::Version(v) => write!(f, "version {v}"),
            SnapshotRef::Timestamp(t) => write!(f, "at {}", t.to_rfc3339()),
        }
    }
}
