//! Decoded columns of data files, kept for the next query.
//!
//! A query server scans the same few tables again and again: every audience count reads
//! attribute columns of `users`, every event condition a few days of `events`. Decoding their
//! Parquet pages is most of such a scan's cost, and the answer never changes: a data file is
//! never modified once written. So a column decoded once is kept, by file and column name,
//! and serves every later scan of the file, whichever snapshot lists it.
//!
//! The cache holds at most its budget of bytes; the least recently used columns leave first.
//! A scan that would need more than half the budget reads its files as before and keeps
//! nothing, so one large pull cannot flush what the counts use.

use std::collections::HashMap;
use std::sync::Mutex;

use arrow::array::ArrayRef;

/// Decoded columns, by data file and column, within a memory budget.
#[derive(Debug)]
pub struct ColumnCache {
    budget: usize,
    state: Mutex<State>,
}

/// What a [`ColumnCache`] holds and has served.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ColumnCacheStats {
    /// Bytes of the columns held.
    pub bytes: usize,
    /// Columns held.
    pub columns: usize,
    /// Columns a scan found here.
    pub hits: u64,
    /// Columns a scan had to decode.
    pub misses: u64,
}

#[derive(Debug, Default)]
struct State {
    columns: HashMap<Key, Held>,
    bytes: usize,
    /// Ticks once per lookup: the least recently used column has the smallest `used`.
    clock: u64,
    hits: u64,
    misses: u64,
}

/// A data file (its full location) and a column name.
type Key = (String, String);

#[derive(Debug)]
struct Held {
    array: ArrayRef,
    bytes: usize,
    used: u64,
}

impl ColumnCache {
    /// An empty cache holding at most `budget` bytes.
    pub fn new(budget: usize) -> ColumnCache {
        ColumnCache {
            budget,
            state: Mutex::new(State::default()),
        }
    }

    /// The most bytes it holds.
    pub fn budget(&self) -> usize {
        self.budget
    }

    /// What it holds and how often scans found their columns here.
    pub fn stats(&self) -> ColumnCacheStats {
        let state = self.lock();
        ColumnCacheStats {
            bytes: state.bytes,
            columns: state.columns.len(),
            hits: state.hits,
            misses: state.misses,
        }
    }

    /// The column `column` of the data file at `file`, when held.
    pub(crate) fn get(&self, file: &str, column: &str) -> Option<ArrayRef> {
        let mut state = self.lock();
        state.clock += 1;
        let now = state.clock;
        let key = (file.to_string(), column.to_string());
        match state.columns.get_mut(&key) {
            Some(held) => {
                held.used = now;
                let array = held.array.clone();
                state.hits += 1;
                Some(array)
            }
            None => {
                state.misses += 1;
                None
            }
        }
    }

    /// Keeps `array` as column `column` of the data file at `file`, making room by dropping
    /// the least recently used columns. A column larger than the budget is not kept.
    pub(crate) fn insert(&self, file: &str, column: &str, array: ArrayRef) {
        let bytes = array.get_array_memory_size();
        if bytes > self.budget {
            return;
        }
        let mut state = self.lock();
        state.clock += 1;
        let now = state.clock;
        let key = (file.to_string(), column.to_string());
        if let Some(old) = state.columns.remove(&key) {
            state.bytes -= old.bytes;
        }
        if state.bytes + bytes > self.budget {
            let mut by_age: Vec<(u64, Key)> = state
                .columns
                .iter()
                .map(|(key, held)| (held.used, key.clone()))
                .collect();
            by_age.sort_unstable();
            for (_, key) in by_age {
                if state.bytes + bytes <= self.budget {
                    break;
                }
                if let Some(old) = state.columns.remove(&key) {
                    state.bytes -= old.bytes;
                }
            }
        }
        state.bytes += bytes;
        state.columns.insert(
            key,
            Held {
                array,
                bytes,
                used: now,
            },
        );
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Array, Int64Array};

    use super::*;

    fn column(rows: usize) -> ArrayRef {
        Arc::new(Int64Array::from_iter_values(0..rows as i64))
    }

    #[test]
    fn the_least_recently_used_columns_leave_first() {
        let size = column(1000).get_array_memory_size();
        let cache = ColumnCache::new(size * 2);
        cache.insert("a", "x", column(1000));
        cache.insert("b", "x", column(1000));
        // Reading `a` makes `b` the oldest.
        assert!(cache.get("a", "x").is_some());
        cache.insert("c", "x", column(1000));
        assert!(
            cache.get("b", "x").is_none(),
            "b was the least recently used"
        );
        assert_eq!(cache.get("a", "x").map(|a| a.len()), Some(1000));
        assert!(cache.get("c", "x").is_some());
        let stats = cache.stats();
        assert_eq!(stats.columns, 2);
        assert_eq!(stats.bytes, size * 2);
        assert_eq!((stats.hits, stats.misses), (3, 1));
    }

    #[test]
    fn a_column_over_the_budget_is_not_kept_and_a_replaced_one_is_counted_once() {
        let size = column(1000).get_array_memory_size();
        let cache = ColumnCache::new(size);
        cache.insert("a", "x", column(5000));
        assert_eq!(cache.stats().columns, 0);
        cache.insert("a", "x", column(1000));
        cache.insert("a", "x", column(1000));
        assert_eq!(cache.stats().bytes, size);
        assert_eq!(cache.stats().columns, 1);
    }
}
