//! The tag bitmap index: roaring bitmaps of user ids per value of each enum and bool column of
//! `users`, per bucket of bucketed numeric columns, and per (event, day), as the build writes
//! them to `tag_bitmaps`.
//!
//! The index is only used where it is current: column bitmaps when they were computed from
//! the very `users` version the session reads, day bitmaps when every `events` commit since
//! they were computed only appended rows not yet given a person (ingest before the next build),
//! which no condition can see. Anything else falls back to a scan.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use arrow::array::{Array, AsArray};
use arrow::datatypes::{DataType, Int64Type};
use chrono::NaiveDate;
use datafusion::prelude::col;
use futures::TryStreamExt;
use roaring::RoaringBitmap;

use crate::bitmap_functions::from_bytes;
use crate::error::{Error, Result};
use crate::session::Session;

/// Bitmaps of one column's values (or buckets), by value text.
pub type ValueBitmaps = BTreeMap<String, Arc<RoaringBitmap>>;

/// Bitmaps of one event's days.
pub type DayBitmaps = BTreeMap<NaiveDate, Arc<RoaringBitmap>>;

/// Every tag bitmap of one `tag_bitmaps` version.
#[derive(Debug, Default)]
pub struct TagIndex {
    /// The `tag_bitmaps` version loaded.
    pub version: u64,
    columns: HashMap<String, ValueBitmaps>,
    column_sources: Vec<u64>,
    events: HashMap<String, DayBitmaps>,
    events_source: Option<u64>,
    /// Unions of day bitmaps over windows asked for lately (see [`TagIndex::event_window`]).
    windows: Mutex<Vec<Window>>,
}

/// The union of an event's day bitmaps over `from..=to`, and when it was last asked for.
#[derive(Debug)]
struct Window {
    event: String,
    from: NaiveDate,
    to: NaiveDate,
    members: Arc<RoaringBitmap>,
    used: u64,
}

/// Window unions an index keeps.
const KEPT_WINDOWS: usize = 64;

/// The tick that marks a window as the most recently used.
fn next_tick(windows: &[Window]) -> u64 {
    windows.iter().map(|w| w.used).max().unwrap_or(0) + 1
}

/// The kept union of `event` over `from..=to`, marked as just used.
fn kept(
    windows: &mut [Window],
    event: &str,
    from: NaiveDate,
    to: NaiveDate,
) -> Option<Arc<RoaringBitmap>> {
    let tick = next_tick(windows);
    let window = windows
        .iter_mut()
        .find(|w| w.event == event && w.from == from && w.to == to)?;
    window.used = tick;
    Some(window.members.clone())
}

impl TagIndex {
    /// Reads every row of `tag_bitmaps` at the session's snapshot.
    pub(crate) async fn load(session: &Session, version: u64) -> Result<TagIndex> {
        let frame = session.context().table("tag_bitmaps").await?.select(vec![
            col("kind"),
            col("name"),
            col("value"),
            col("bitmap"),
            col("source_version"),
        ])?;
        let mut stream = session.stream(frame).await?;
        let mut index = TagIndex {
            version,
            ..TagIndex::default()
        };
        let mut rows = Vec::new();
        let read = async {
            while let Some(batch) = stream.try_next().await? {
                rows.push(batch);
            }
            Ok::<_, datafusion::error::DataFusionError>(())
        };
        session.limited(read).await?;
        for batch in rows {
            let text = |i: usize| arrow::compute::cast(batch.column(i), &DataType::Utf8);
            let (kind, name, value) = (text(0)?, text(1)?, text(2)?);
            let (kind, name, value) = (
                kind.as_string::<i32>(),
                name.as_string::<i32>(),
                value.as_string::<i32>(),
            );
            let bitmap = arrow::compute::cast(batch.column(3), &DataType::Binary)?;
            let bitmap = bitmap
                .as_binary_opt::<i32>()
                .ok_or_else(|| Error::Internal("tag_bitmaps.bitmap is not binary".into()))?;
            let source = arrow::compute::cast(batch.column(4), &DataType::Int64)?;
            let source = source.as_primitive::<Int64Type>();
            for row in 0..batch.num_rows() {
                if kind.is_null(row) || name.is_null(row) || value.is_null(row) {
                    continue;
                }
                let decoded = Arc::new(from_bytes(bitmap.value(row))?);
                let version = source.is_valid(row).then(|| source.value(row) as u64);
                match kind.value(row) {
                    "column" => {
                        index
                            .columns
                            .entry(name.value(row).to_string())
                            .or_default()
                            .insert(value.value(row).to_string(), decoded);
                        if let Some(v) = version
                            && !index.column_sources.contains(&v)
                        {
                            index.column_sources.push(v);
                        }
                    }
                    "event_day" => {
                        let Ok(day) = NaiveDate::parse_from_str(value.value(row), "%Y-%m-%d")
                        else {
                            continue;
                        };
                        index
                            .events
                            .entry(name.value(row).to_string())
                            .or_default()
                            .insert(day, decoded);
                        index.events_source = index.events_source.max(version);
                    }
                    _ => {}
                }
            }
        }
        Ok(index)
    }

    /// Bitmaps of a column's values, when the column is indexed.
    pub fn column(&self, name: &str) -> Option<&ValueBitmaps> {
        self.columns.get(name)
    }

    /// Users who did `event` on a day of `from..=to`: the union of its day bitmaps. The
    /// union is kept for the next tree over the same window, as a condition builder counts
    /// its tree again at every edit (the least recently used of [`KEPT_WINDOWS`] leave first).
    pub(crate) fn event_window(
        &self,
        event: &str,
        from: NaiveDate,
        to: NaiveDate,
    ) -> Arc<RoaringBitmap> {
        let Some(days) = self.events.get(event).filter(|_| from <= to) else {
            return Arc::new(RoaringBitmap::new());
        };
        let lock = || self.windows.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(members) = kept(&mut lock(), event, from, to) {
            return members;
        }
        // Unioned without the lock: other counts go on meanwhile.
        let mut members = RoaringBitmap::new();
        for bitmap in days.range(from..=to).map(|(_, b)| b) {
            members |= bitmap.as_ref();
        }
        let members = Arc::new(members);
        let mut windows = lock();
        if let Some(members) = kept(&mut windows, event, from, to) {
            // Another count unioned the same window meanwhile.
            return members;
        }
        let tick = next_tick(&windows);
        if windows.len() >= KEPT_WINDOWS
            && let Some(oldest) = windows
                .iter()
                .enumerate()
                .min_by_key(|(_, w)| w.used)
                .map(|(i, _)| i)
        {
            windows.swap_remove(oldest);
        }
        windows.push(Window {
            event: event.to_string(),
            from,
            to,
            members: members.clone(),
            used: tick,
        });
        members
    }

    /// Every event name with day bitmaps, sorted.
    pub fn event_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.events.keys().cloned().collect();
        names.sort();
        names
    }

    /// Whether column bitmaps describe `users` at `users_version`.
    pub fn columns_current(&self, users_version: u64) -> bool {
        self.column_sources == [users_version]
    }

    /// Whether day bitmaps describe every event with a person at the session's snapshot.
    pub(crate) async fn events_current(&self, session: &Session) -> Result<bool> {
        let events = session.table("events")?;
        let Some(source) = self.events_source else {
            // Never indexed: current only if no event has been given a person yet.
            let with_people = session
                .context()
                .table("events")
                .await?
                .filter(col("user_id").is_not_null())?
                .limit(0, Some(1))?;
            let rows = session.collect(with_people).await?;
            return Ok(rows.iter().all(|b| b.num_rows() == 0));
        };
        let current = events.version();
        if current == source {
            return Ok(true);
        }
        if current < source || current - source > 200 {
            return Ok(false);
        }
        let commits = events
            .history(Some((current - source) as usize))
            .await
            .map_err(Error::Catalog)?;
        Ok(commits.iter().filter(|c| c.version > source).all(|c| {
            c.operation == "WRITE"
                && c.parameters.get("mode").and_then(|m| m.as_str()) == Some("Append")
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(2026, 11, d).expect("a day")
    }

    fn index() -> TagIndex {
        let days: DayBitmaps = [
            (day(1), Arc::new(RoaringBitmap::from_iter([1u32, 2]))),
            (day(2), Arc::new(RoaringBitmap::from_iter([2u32, 70_000]))),
            (day(4), Arc::new(RoaringBitmap::from_iter([9u32]))),
        ]
        .into_iter()
        .collect();
        TagIndex {
            events: [("buy".to_string(), days)].into_iter().collect(),
            ..TagIndex::default()
        }
    }

    #[test]
    fn a_window_is_the_union_of_its_days_and_is_kept() {
        let index = index();
        let ids = |b: Arc<RoaringBitmap>| b.iter().collect::<Vec<u32>>();
        assert_eq!(
            ids(index.event_window("buy", day(1), day(2))),
            [1, 2, 70_000]
        );
        assert_eq!(
            ids(index.event_window("buy", day(2), day(4))),
            [2, 9, 70_000]
        );
        assert_eq!(
            ids(index.event_window("buy", day(3), day(3))),
            Vec::<u32>::new()
        );
        assert_eq!(
            ids(index.event_window("buy", day(4), day(1))),
            Vec::<u32>::new()
        );
        assert_eq!(
            ids(index.event_window("view", day(1), day(4))),
            Vec::<u32>::new()
        );
        let first = index.event_window("buy", day(1), day(2));
        assert!(Arc::ptr_eq(
            &first,
            &index.event_window("buy", day(1), day(2))
        ));
    }

    #[test]
    fn the_least_recently_used_window_leaves_first() {
        let index = index();
        let kept = index.event_window("buy", day(1), day(1));
        let old = index.event_window("buy", day(1), day(4));
        // Many other windows, `kept` asked for again between them.
        for offset in 0..KEPT_WINDOWS as u64 {
            let to = day(4) + chrono::Days::new(offset + 1);
            index.event_window("buy", day(1), to);
            index.event_window("buy", day(1), day(1));
        }
        assert!(Arc::ptr_eq(
            &kept,
            &index.event_window("buy", day(1), day(1))
        ));
        let again = index.event_window("buy", day(1), day(4));
        assert!(!Arc::ptr_eq(&old, &again), "the old window was dropped");
        assert_eq!(old, again);
        assert!(index.windows.lock().expect("lock").len() <= KEPT_WINDOWS);
    }
}
