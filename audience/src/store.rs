//! The pack tables: `audiences` (one row per pack), `audience_versions` (every computed
//! version with its bitmap), `audience_runs` (every computation), `audience_unmatched` (rows of
//! uploads that found nobody) and `audience_exports` (every export).

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BinaryArray, Float64Array, Int64Array, RecordBatch, StringArray,
    TimestampMicrosecondArray, new_null_array,
};
use arrow::datatypes::{DataType, Float64Type, Int64Type, SchemaRef, TimestampMicrosecondType};
use chrono::{DateTime, Utc};
use datafusion::prelude::{DataFrame, SessionContext, col, lit};
use roaring::RoaringBitmap;
use serde::Serialize;
use serde_json::Value;
use shoal_catalog::{Catalog, CommitNote, Table};

use crate::error::{Error, Result};

pub(crate) const PACKS: &str = "audiences";
pub(crate) const VERSIONS: &str = "audience_versions";
pub(crate) const RUNS: &str = "audience_runs";
pub(crate) const UNMATCHED: &str = "audience_unmatched";
pub(crate) const EXPORTS: &str = "audience_exports";

/// A pack: how it is made and kept.
#[derive(Debug, Clone, Serialize)]
pub struct Pack {
    pub name: String,
    pub description: Option<String>,
    /// Who made it (`token:<id>` or `cli`).
    pub owner: String,
    /// conditions, sql, upload or expr.
    pub kind: String,
    /// How it is made, verbatim.
    pub definition: Value,
    /// once or dynamic.
    pub mode: String,
    pub schedule: Option<String>,
    pub time_zone: Option<String>,
    pub created_at: DateTime<Utc>,
    pub deleted_at: Option<DateTime<Utc>>,
}

/// One computed version, without its bitmap.
#[derive(Debug, Clone, Serialize)]
pub struct Version {
    pub version: u64,
    pub created_at: DateTime<Utc>,
    pub evaluated_at: DateTime<Utc>,
    pub size: u64,
    /// Members not in the previous version (all of them for the first).
    pub added: Option<u64>,
    /// Members of the previous version not in this one.
    pub removed: Option<u64>,
    /// Table versions the computation read.
    pub snapshot: Value,
    pub definition: Value,
    pub report: Value,
}

/// One computation of a pack.
#[derive(Debug, Clone, Serialize)]
pub struct Run {
    pub audience: String,
    pub started_at: DateTime<Utc>,
    pub duration_ms: f64,
    /// create, manual, schedule or catch_up.
    pub trigger: String,
    /// ok or failed.
    pub status: String,
    pub version: Option<u64>,
    pub size: Option<u64>,
    pub error: Option<String>,
}

/// Typed access to the columns of a batch read from a pack table.
struct Columns<'a>(&'a RecordBatch);

impl Columns<'_> {
    fn column(&self, name: &str) -> Result<&ArrayRef> {
        self.0
            .column_by_name(name)
            .ok_or_else(|| Error::Internal(format!("column {name} missing")))
    }

    fn text(&self, name: &str) -> Result<Vec<Option<String>>> {
        let cast = arrow::compute::cast(self.column(name)?, &DataType::Utf8)?;
        Ok(cast
            .as_string::<i32>()
            .iter()
            .map(|v| v.map(str::to_string))
            .collect())
    }

    fn int(&self, name: &str) -> Result<Vec<Option<u64>>> {
        let cast = arrow::compute::cast(self.column(name)?, &DataType::Int64)?;
        Ok(cast
            .as_primitive::<Int64Type>()
            .iter()
            .map(|v| v.and_then(|v| u64::try_from(v).ok()))
            .collect())
    }

    fn float(&self, name: &str) -> Result<Vec<Option<f64>>> {
        let cast = arrow::compute::cast(self.column(name)?, &DataType::Float64)?;
        Ok(cast.as_primitive::<Float64Type>().iter().collect())
    }

    fn time(&self, name: &str) -> Result<Vec<Option<DateTime<Utc>>>> {
        let times = self
            .column(name)?
            .as_primitive_opt::<TimestampMicrosecondType>()
            .ok_or_else(|| Error::Internal(format!("{name} is not a time")))?;
        Ok(times
            .iter()
            .map(|v| v.and_then(DateTime::from_timestamp_micros))
            .collect())
    }

    fn json(&self, name: &str) -> Result<Vec<Value>> {
        Ok(self
            .text(name)?
            .into_iter()
            .map(|t| {
                t.and_then(|t| serde_json::from_str(&t).ok())
                    .unwrap_or(Value::Null)
            })
            .collect())
    }
}

fn required<T>(value: Option<T>, name: &str) -> Result<T> {
    value.ok_or_else(|| Error::Internal(format!("required column {name} is null")))
}

/// A one-table context over a fresh handle of `table` (for reads that must see the newest
/// commit, under the write lock).
async fn fresh(catalog: &Catalog, table: &str) -> Result<DataFrame> {
    let handle = catalog.table(table).await?;
    let ctx = SessionContext::new();
    Ok(ctx.read_table(handle.provider().await?)?)
}

/// Every pack in `frame` (rows of `audiences`).
async fn packs_of(frame: DataFrame) -> Result<Vec<Pack>> {
    let mut out = Vec::new();
    for batch in frame.collect().await? {
        let c = Columns(&batch);
        let (names, descriptions, owners, kinds) = (
            c.text("name")?,
            c.text("description")?,
            c.text("owner")?,
            c.text("kind")?,
        );
        let (definitions, modes, schedules, zones) = (
            c.json("definition")?,
            c.text("mode")?,
            c.text("schedule")?,
            c.text("time_zone")?,
        );
        let (created, deleted) = (c.time("created_at")?, c.time("deleted_at")?);
        for i in 0..batch.num_rows() {
            out.push(Pack {
                name: required(names[i].clone(), "name")?,
                description: descriptions[i].clone(),
                owner: required(owners[i].clone(), "owner")?,
                kind: required(kinds[i].clone(), "kind")?,
                definition: definitions[i].clone(),
                mode: required(modes[i].clone(), "mode")?,
                schedule: schedules[i].clone(),
                time_zone: zones[i].clone(),
                created_at: required(created[i], "created_at")?,
                deleted_at: deleted[i],
            });
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Every pack, deleted ones included, by name.
pub async fn packs(catalog: &Catalog) -> Result<Vec<Pack>> {
    packs_of(fresh(catalog, PACKS).await?).await
}

/// The pack `name`, deleted or not.
pub async fn pack(catalog: &Catalog, name: &str) -> Result<Option<Pack>> {
    let frame = fresh(catalog, PACKS)
        .await?
        .filter(col("name").eq(lit(name)))?;
    Ok(packs_of(frame).await?.into_iter().next())
}

/// Builds a batch of `table`'s schema from named columns; columns not given are null.
fn batch_of(
    schema: SchemaRef,
    rows: usize,
    mut given: HashMap<&str, ArrayRef>,
) -> Result<RecordBatch> {
    let columns = schema
        .fields()
        .iter()
        .map(|f| match given.remove(f.name().as_str()) {
            Some(array) if array.data_type() == f.data_type() => Ok(array),
            Some(array) => Ok(arrow::compute::cast(&array, f.data_type())?),
            None => Ok(new_null_array(f.data_type(), rows)),
        })
        .collect::<Result<Vec<_>>>()?;
    if let Some(name) = given.keys().next() {
        return Err(Error::Internal(format!("no column {name} in the table")));
    }
    Ok(RecordBatch::try_new(schema, columns)?)
}

fn times(values: &[Option<DateTime<Utc>>]) -> ArrayRef {
    Arc::new(
        TimestampMicrosecondArray::from(
            values
                .iter()
                .map(|t| t.map(|t| t.timestamp_micros()))
                .collect::<Vec<_>>(),
        )
        .with_timezone("UTC"),
    )
}

fn texts<S: AsRef<str>>(values: &[Option<S>]) -> ArrayRef {
    Arc::new(StringArray::from(
        values
            .iter()
            .map(|v| v.as_ref().map(|s| s.as_ref()))
            .collect::<Vec<_>>(),
    ))
}

fn ints(values: &[Option<u64>]) -> ArrayRef {
    Arc::new(Int64Array::from(
        values
            .iter()
            .map(|v| v.map(|v| v as i64))
            .collect::<Vec<_>>(),
    ))
}

/// Adds a pack row.
pub async fn insert_pack(catalog: &Catalog, pack: &Pack, by: &str) -> Result<()> {
    let mut table = catalog.table(PACKS).await?;
    let batch = batch_of(
        table.schema()?,
        1,
        HashMap::from([
            ("name", texts(&[Some(&pack.name)])),
            ("description", texts(&[pack.description.as_ref()])),
            ("owner", texts(&[Some(&pack.owner)])),
            ("kind", texts(&[Some(&pack.kind)])),
            ("definition", texts(&[Some(pack.definition.to_string())])),
            ("mode", texts(&[Some(&pack.mode)])),
            ("schedule", texts(&[pack.schedule.as_ref()])),
            ("time_zone", texts(&[pack.time_zone.as_ref()])),
            ("created_at", times(&[Some(pack.created_at)])),
            ("deleted_at", times(&[pack.deleted_at])),
        ]),
    )?;
    table
        .append(vec![batch], CommitNote::new("author", by))
        .await?;
    Ok(())
}

/// Sets (or clears) `deleted_at` of a pack.
pub async fn set_deleted(
    catalog: &Catalog,
    name: &str,
    at: Option<DateTime<Utc>>,
    by: &str,
) -> Result<()> {
    let mut table: Table = catalog.table(PACKS).await?;
    let schema = Arc::new(arrow::datatypes::Schema::new(vec![
        arrow::datatypes::Field::new("name", DataType::Utf8, false),
        table.schema()?.field_with_name("deleted_at")?.clone(),
    ]));
    let batch = RecordBatch::try_new(schema, vec![texts(&[Some(name)]), times(&[at])])?;
    table
        .update_by_key(
            vec![batch],
            &["name"],
            &["deleted_at"],
            CommitNote::new("author", by),
        )
        .await?;
    Ok(())
}

/// Every version of `name`, oldest first, without bitmaps.
pub async fn versions(catalog: &Catalog, name: &str) -> Result<Vec<Version>> {
    let frame = fresh(catalog, VERSIONS)
        .await?
        .filter(col("audience").eq(lit(name)))?
        .select_columns(&[
            "version",
            "created_at",
            "evaluated_at",
            "size",
            "added",
            "removed",
            "snapshot",
            "definition",
            "report",
        ])?;
    let mut out = Vec::new();
    for batch in frame.collect().await? {
        let c = Columns(&batch);
        let (version, created, evaluated) = (
            c.int("version")?,
            c.time("created_at")?,
            c.time("evaluated_at")?,
        );
        let (size, added, removed) = (c.int("size")?, c.int("added")?, c.int("removed")?);
        let (snapshot, definition, report) = (
            c.json("snapshot")?,
            c.json("definition")?,
            c.json("report")?,
        );
        for i in 0..batch.num_rows() {
            out.push(Version {
                version: required(version[i], "version")?,
                created_at: required(created[i], "created_at")?,
                evaluated_at: required(evaluated[i], "evaluated_at")?,
                size: required(size[i], "size")?,
                added: added[i],
                removed: removed[i],
                snapshot: snapshot[i].clone(),
                definition: definition[i].clone(),
                report: report[i].clone(),
            });
        }
    }
    out.sort_by_key(|v| v.version);
    Ok(out)
}

/// The stored bitmap of version `version` of `name` (not remapped).
pub async fn bitmap(catalog: &Catalog, name: &str, version: u64) -> Result<RoaringBitmap> {
    let frame = fresh(catalog, VERSIONS)
        .await?
        .filter(
            col("audience")
                .eq(lit(name))
                .and(col("version").eq(lit(version as i64))),
        )?
        .select_columns(&["bitmap"])?;
    for batch in frame.collect().await? {
        if batch.num_rows() == 0 {
            continue;
        }
        let column = arrow::compute::cast(batch.column(0), &DataType::Binary)?;
        let binary = column.as_binary::<i32>();
        if binary.is_valid(0) {
            return Ok(shoal_query::bitmap_functions::from_bytes(binary.value(0))?);
        }
    }
    Err(Error::NotFound(format!(
        "audience '{name}' has no version {version}"
    )))
}

/// A new version row, ready to commit.
pub struct NewVersion<'a> {
    pub version: u64,
    pub created_at: DateTime<Utc>,
    pub evaluated_at: DateTime<Utc>,
    pub definition: &'a Value,
    pub snapshot: &'a Value,
    pub report: &'a Value,
    pub bitmap: &'a RoaringBitmap,
    pub added: u64,
    pub removed: u64,
}

/// Commits a version of `name`.
pub async fn append_version(
    catalog: &Catalog,
    name: &str,
    v: &NewVersion<'_>,
    by: &str,
) -> Result<()> {
    let mut table = catalog.table(VERSIONS).await?;
    let bytes = shoal_query::bitmap_functions::to_bytes(v.bitmap);
    let batch = batch_of(
        table.schema()?,
        1,
        HashMap::from([
            ("audience", texts(&[Some(name)])),
            ("version", ints(&[Some(v.version)])),
            ("created_at", times(&[Some(v.created_at)])),
            ("definition", texts(&[Some(v.definition.to_string())])),
            ("evaluated_at", times(&[Some(v.evaluated_at)])),
            ("snapshot", texts(&[Some(v.snapshot.to_string())])),
            ("size", ints(&[Some(v.bitmap.len())])),
            ("added", ints(&[Some(v.added)])),
            ("removed", ints(&[Some(v.removed)])),
            ("report", texts(&[Some(v.report.to_string())])),
            (
                "bitmap",
                Arc::new(BinaryArray::from(vec![bytes.as_slice()])) as ArrayRef,
            ),
        ]),
    )?;
    table
        .append(vec![batch], CommitNote::new("author", by))
        .await?;
    Ok(())
}

/// Records a run.
pub async fn append_run(catalog: &Catalog, run: &Run, by: &str) -> Result<()> {
    let mut table = catalog.table(RUNS).await?;
    let batch = batch_of(
        table.schema()?,
        1,
        HashMap::from([
            ("audience", texts(&[Some(&run.audience)])),
            ("started_at", times(&[Some(run.started_at)])),
            (
                "duration_ms",
                Arc::new(Float64Array::from(vec![run.duration_ms])) as ArrayRef,
            ),
            ("trigger", texts(&[Some(&run.trigger)])),
            ("status", texts(&[Some(&run.status)])),
            ("version", ints(&[run.version])),
            ("size", ints(&[run.size])),
            ("error", texts(&[run.error.as_ref()])),
        ]),
    )?;
    table
        .append(vec![batch], CommitNote::new("author", by))
        .await?;
    Ok(())
}

/// Every run, oldest first (of one pack when `name` is given).
pub async fn runs(catalog: &Catalog, name: Option<&str>) -> Result<Vec<Run>> {
    let mut frame = fresh(catalog, RUNS).await?;
    if let Some(name) = name {
        frame = frame.filter(col("audience").eq(lit(name)))?;
    }
    let mut out = Vec::new();
    for batch in frame.collect().await? {
        let c = Columns(&batch);
        let (audience, started, duration, trigger) = (
            c.text("audience")?,
            c.time("started_at")?,
            c.float("duration_ms")?,
            c.text("trigger")?,
        );
        let (status, version, size, error) = (
            c.text("status")?,
            c.int("version")?,
            c.int("size")?,
            c.text("error")?,
        );
        for i in 0..batch.num_rows() {
            out.push(Run {
                audience: required(audience[i].clone(), "audience")?,
                started_at: required(started[i], "started_at")?,
                duration_ms: duration[i].unwrap_or_default(),
                trigger: required(trigger[i].clone(), "trigger")?,
                status: required(status[i].clone(), "status")?,
                version: version[i],
                size: size[i],
                error: error[i].clone(),
            });
        }
    }
    out.sort_by_key(|r| r.started_at);
    Ok(out)
}

/// Replaces the unmatched rows of one version (so a retried commit never doubles them).
pub async fn replace_unmatched(
    catalog: &Catalog,
    name: &str,
    version: u64,
    rows: &[crate::upload::Unmatched],
    by: &str,
) -> Result<()> {
    let mut table = catalog.table(UNMATCHED).await?;
    let n = rows.len();
    let batch = batch_of(
        table.schema()?,
        n,
        HashMap::from([
            ("audience", texts(&vec![Some(name); n])),
            ("version", ints(&vec![Some(version); n])),
            (
                "line",
                ints(&rows.iter().map(|r| Some(r.line)).collect::<Vec<_>>()),
            ),
            (
                "value",
                texts(&rows.iter().map(|r| Some(&r.value)).collect::<Vec<_>>()),
            ),
            (
                "reason",
                texts(&rows.iter().map(|r| Some(r.reason)).collect::<Vec<_>>()),
            ),
        ]),
    )?;
    let predicate = col("audience")
        .eq(lit(name))
        .and(col("version").eq(lit(version as i64)));
    table
        .replace_where(vec![batch], predicate, CommitNote::new("author", by))
        .await?;
    Ok(())
}

/// The unmatched rows of one version, in line order, as stored.
pub async fn unmatched(catalog: &Catalog, name: &str, version: u64) -> Result<DataFrame> {
    Ok(fresh(catalog, UNMATCHED)
        .await?
        .filter(
            col("audience")
                .eq(lit(name))
                .and(col("version").eq(lit(version as i64))),
        )?
        .select_columns(&["line", "value", "reason"])?
        .sort(vec![col("line").sort(true, false)])?)
}

/// One export, as logged.
pub struct ExportLog<'a> {
    pub audience: &'a str,
    pub version: u64,
    pub by: &'a str,
    pub role: &'a str,
    pub columns: &'a [String],
    pub format: &'a str,
    pub rows: u64,
}

/// Logs an export.
pub async fn log_export(catalog: &Catalog, log: &ExportLog<'_>) -> Result<()> {
    let mut table = catalog.table(EXPORTS).await?;
    let batch = batch_of(
        table.schema()?,
        1,
        HashMap::from([
            ("audience", texts(&[Some(log.audience)])),
            ("version", ints(&[Some(log.version)])),
            ("exported_at", times(&[Some(Utc::now())])),
            ("by", texts(&[Some(log.by)])),
            ("role", texts(&[Some(log.role)])),
            (
                "columns",
                texts(&[Some(serde_json::to_string(log.columns).unwrap_or_default())]),
            ),
            ("format", texts(&[Some(log.format)])),
            ("rows", ints(&[Some(log.rows)])),
        ]),
    )?;
    table
        .append(vec![batch], CommitNote::new("author", log.by))
        .await?;
    Ok(())
}
