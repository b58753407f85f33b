//! Ingest: how behaviour events and orders reach the warehouse.
//!
//! Sources (Segment-compatible tracking messages, Youzan and Tmall order exports) are
//! parsed, cleaned against the catalog's field standards, deduplicated and written to Delta
//! tables; rows that cannot be cleaned go to the `quarantine` table with a reason. This crate
//! also writes the deterministic sample world those sources look like (`sample`), merges
//! identities into one dense user id per person (`identity`) and builds the wide tables
//! (`build`).

#![forbid(unsafe_code)]

pub mod build;
pub mod clean;
mod columns;
mod cores;
mod error;
pub mod identity;
mod known_ids;
mod land;
pub mod orders;
mod report;
pub mod sample;
mod scan;
pub mod segment;
mod tabular;

pub use error::{Error, Result};
pub use known_ids::read_message_ids;
pub use land::{
    CHUNK_BYTES, CHUNK_ROWS, COMPACT_AFTER_FILES, Request, SourceKind, TableHandles, decode,
    describe, ingest_files, ingest_segment_requests, replay,
};
pub use report::{BatchReport, Counts, FileReport};
