//! Which message ids may already be in `events`, answered from memory.
//!
//! Dedup asks, for every batch, which of its message ids `events` already holds. Joining the
//! batch with every `event_id` of the table costs a read of the whole column each time, which
//! a tracking request of twenty messages cannot afford once the table is large. Instead, each
//! process keeps, per `events` table, a 64-bit fingerprint of every id in it: read once from
//! the data files, then only from the files added since. An id whose fingerprint is absent is
//! certainly new; one whose fingerprint is present (a retry, or in about one case in 10^10 a
//! collision) is confirmed against the table itself, so no message is ever dropped on a
//! fingerprint's word.
//!
//! The fingerprints are a cache of the table, never the truth: a file that goes away (a
//! compaction, a delete) leaves its fingerprints behind, which only sends more ids to be
//! confirmed.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, LazyLock, Mutex};

use arrow::array::{Array, RecordBatch};
use arrow::datatypes::DataType;
use shoal_catalog::{Catalog, DataFile, Table};

use crate::error::{Error, Result};

/// The fingerprint of a message id: the low half of the 128-bit one batches dedup with.
pub(crate) fn fingerprint(id: &str) -> u64 {
    twox_hash::XxHash3_128::oneshot(id.as_bytes()) as u64
}

/// Builds hashers for sets of fingerprints: they are hashes already, so their low 64 bits
/// are used as they are instead of being hashed again.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Prehashed;

/// See [`Prehashed`].
#[derive(Debug, Default)]
pub(crate) struct PrehashedHasher(u64);

impl std::hash::Hasher for PrehashedHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only reached for keys that are not fingerprints; mix them in (FNV-1a).
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn write_u64(&mut self, value: u64) {
        self.0 = value;
    }

    fn write_u128(&mut self, value: u128) {
        self.0 = value as u64;
    }
}

impl std::hash::BuildHasher for Prehashed {
    type Hasher = PrehashedHasher;

    fn build_hasher(&self) -> PrehashedHasher {
        PrehashedHasher::default()
    }
}

/// A set of fingerprints.
pub(crate) type Fingerprints<T> = HashSet<T, Prehashed>;

/// Fingerprints of the ids in one `events` table, as of one version.
pub(crate) struct KnownIds {
    /// The table, at the version the fingerprints cover.
    table: Table,
    /// The version the fingerprints cover.
    covered: Option<u64>,
    /// The data files read.
    files: HashSet<DataFile>,
    /// Fingerprints from the first read, sorted.
    sorted: Vec<u64>,
    /// Fingerprints read since.
    recent: Fingerprints<u64>,
}

/// The fingerprints of one table, read when first asked for.
type Slot = Arc<tokio::sync::Mutex<Option<KnownIds>>>;

/// Per table location, for the life of the process.
static KNOWN: LazyLock<Mutex<HashMap<String, Slot>>> = LazyLock::new(|| Mutex::new(HashMap::new()));

/// The fingerprints of `catalog`'s `events`, brought up to the table's newest version; the
/// guard holds them for the caller alone.
pub(crate) async fn known_ids(
    catalog: &Catalog,
) -> Result<tokio::sync::OwnedMutexGuard<Option<KnownIds>>> {
    let location = catalog.warehouse().table_url("events")?.to_string();
    let slot = {
        let mut known = KNOWN
            .lock()
            .map_err(|_| Error::Internal("the message id cache was poisoned".into()))?;
        known.entry(location).or_default().clone()
    };
    let mut guard = slot.lock_owned().await;
    match guard.as_mut() {
        Some(known) => known.table.refresh().await?,
        None => {
            *guard = Some(KnownIds {
                table: catalog.table("events").await?,
                covered: None,
                files: HashSet::new(),
                sorted: Vec::new(),
                recent: Fingerprints::default(),
            });
        }
    }
    if let Some(known) = guard.as_mut() {
        known.catch_up().await?;
    }
    Ok(guard)
}

/// Reads the fingerprints of `catalog`'s `events` ahead of their first use.
pub async fn read_message_ids(catalog: &Catalog) -> Result<()> {
    known_ids(catalog).await.map(drop)
}

impl KnownIds {
    /// Whether `id` may be in the table: false means certainly not.
    pub(crate) fn may_hold(&self, id: &str) -> bool {
        let f = fingerprint(id);
        self.recent.contains(&f) || self.sorted.binary_search(&f).is_ok()
    }

    /// The table at the version the fingerprints cover.
    pub(crate) fn table(&self) -> &Table {
        &self.table
    }

    /// Reads the ids of the files the table has and the fingerprints do not yet.
    async fn catch_up(&mut self) -> Result<()> {
        if self.covered == Some(self.table.version()) {
            return Ok(());
        }
        let files = self.table.data_files()?;
        let new: Vec<DataFile> = files
            .iter()
            .filter(|f| !self.files.contains(*f))
            .cloned()
            .collect();
        let mut read = Vec::new();
        self.table
            .read_files(&new, Some(&["event_id"]), |_, batch| {
                fingerprints(&batch, &mut read).map_err(shoal_catalog::Error::Internal)
            })
            .await?;
        if self.sorted.is_empty() && self.recent.is_empty() {
            read.sort_unstable();
            read.dedup();
            self.sorted = read;
        } else {
            self.recent.extend(read);
            // Kept small next to the sorted part, which costs 8 bytes an id.
            if self.recent.len() > self.sorted.len() / 8 + 65_536 {
                self.sorted.extend(self.recent.drain());
                self.sorted.sort_unstable();
                self.sorted.dedup();
            }
        }
        self.files = files.into_iter().collect();
        self.covered = Some(self.table.version());
        Ok(())
    }
}

/// Appends the fingerprint of every `event_id` in `batch` to `out`.
fn fingerprints(batch: &RecordBatch, out: &mut Vec<u64>) -> std::result::Result<(), String> {
    let column = batch
        .column_by_name("event_id")
        .ok_or("an events file without event_id")?;
    let column = arrow::compute::cast(column, &DataType::Utf8).map_err(|e| e.to_string())?;
    let ids = column
        .as_any()
        .downcast_ref::<arrow::array::StringArray>()
        .ok_or("event_id is not text")?;
    out.reserve(ids.len() - ids.null_count());
    out.extend(ids.iter().flatten().map(fingerprint));
    Ok(())
}
