//! The batch report: every row received is landed, quarantined or a duplicate.

use std::collections::BTreeMap;

use serde::Serialize;

/// Counts for one file or one whole batch.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Counts {
    /// Records read (lines of JSON, CSV records after the header; blank lines are not records).
    pub received: u64,
    /// Records written to their table (new rows and changed orders).
    pub landed: u64,
    /// Of `landed`, rows that replaced an earlier version (orders whose status or refund moved).
    pub updated: u64,
    /// Records written to `quarantine`.
    pub quarantined: u64,
    /// Records already in the warehouse or earlier in the same batch.
    pub duplicates: u64,
    /// Quarantined records by reason code.
    pub reasons: BTreeMap<String, u64>,
}

impl Counts {
    /// True when `received = landed + quarantined + duplicates`.
    pub fn balances(&self) -> bool {
        self.received == self.landed + self.quarantined + self.duplicates
    }

    pub(crate) fn add(&mut self, other: &Counts) {
        self.received += other.received;
        self.landed += other.landed;
        self.updated += other.updated;
        self.quarantined += other.quarantined;
        self.duplicates += other.duplicates;
        for (reason, n) in &other.reasons {
            *self.reasons.entry(reason.clone()).or_insert(0) += n;
        }
    }
}

/// One file's share of a batch.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct FileReport {
    /// The file as given.
    pub file: String,
    /// Its counts.
    #[serde(flatten)]
    pub counts: Counts,
}

/// What one `shoal ingest` did; stored in the `batches` table.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct BatchReport {
    /// Batch id, also on every quarantine row and commit of the batch.
    pub batch_id: String,
    /// Source kind.
    pub source: String,
    /// Totals.
    #[serde(flatten)]
    pub counts: Counts,
    /// Per file.
    pub files: Vec<FileReport>,
    /// Table versions the batch committed, by table.
    pub versions: BTreeMap<String, u64>,
}
