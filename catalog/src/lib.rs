//! The catalog: where the warehouse is, which tables it holds and what their fields mean.
//!
//! Everything Shoal stores lives in one warehouse, an object_store location (`file://` by
//! default, `s3://` when shared) whose tables are Delta Lake tables. This crate opens the
//! warehouse, creates and writes tables (append, overwrite, MERGE — each write one atomic
//! commit), reads any snapshot back (time travel), and keeps the catalog definition: field
//! standards, derived conditions, roles and data-quality monitors. Every other crate reads
//! and writes tables through it; it depends on no other Shoal crate.

#![forbid(unsafe_code)]

mod column_cache;
mod definition;
mod deletion_vectors;
mod error;
mod identity;
mod local_read;
mod merge_log;
mod monitor;
mod role;
mod snapshot_scan;
mod standard;
mod table;
mod warehouse;

pub use column_cache::{ColumnCache, ColumnCacheStats};
pub use definition::{
    CATALOG_TABLE, Catalog, CatalogDefinition, CatalogRevision, DEFAULT_DEFINITION, parse_duration,
    zone_offset,
};
pub use deletion_vectors::DeletionRef;
pub use error::{Error, Result, SnapshotRef};
pub use identity::{IdentityRules, IdentityType};
pub use merge_log::MergeLog;
pub use monitor::{MonitorKind, MonitorResult, Status, check_all, check_table};
pub use role::{LevelGrant, Role, RolePolicy, Roles, Visibility};
pub use standard::{
    DECIMAL_PRECISION, DECIMAL_SCALE, DerivedCondition, DerivedConditions, FieldStandard,
    MonitorConfig, PAID_STATUSES, Sensitivity, TableDefinition, Thresholds, ValueType,
};
pub use table::{
    ColumnLayout, Commit, CommitNote, DataFile, DerivedFile, FILE_ROWS, FileRows, MergeOutcome,
    ROW_GROUP_ROWS, RowTest, Table, TableSummary, conform, stored_text_config, table_summaries,
    write_session,
};
pub use warehouse::{DEFAULT_WAREHOUSE, Warehouse, validate_table_name};
