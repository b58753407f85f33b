//! The tag bitmap index: roaring bitmaps of user ids per value of each enum and bool column of
//! `users`, per bucket of bucketed numeric columns, and per (event, day), as the build writes
//! them to `tag_bitmaps`.
//!
//! The index is only used where it is current: column bitmaps when they were computed from
//! the very `users` version the session reads, day bitmaps when every `events` commit since
//! they were computed only appended rows not yet given a person (ingest before the next build),
//! which no condition can see. Anything else falls back to a scan.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

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

    /// Day bitmaps of an event (empty when nobody did it).
    pub fn event_days(&self, name: &str) -> Option<&DayBitmaps> {
        self.events.get(name)
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
