//! Data-quality monitors: freshness, row-count change, null ratio and out-of-range ratio.
//!
//! Monitors read tables through DataFusion's DataFrame API (a scan and one aggregate per
//! table); they never build query plans for users, which stay the query crate's business.

use std::fmt;

use arrow::array::{Array, AsArray};
use arrow::datatypes::Int64Type;
use chrono::{DateTime, Utc};
use datafusion::functions_aggregate::expr_fn::{count, sum};
use datafusion::logical_expr::{Expr, cast, lit, when};
use datafusion::prelude::{SessionContext, col};
use serde::Serialize;

use crate::definition::{Catalog, parse_duration};
use crate::error::{Error, Result, SnapshotRef};
use crate::standard::{FieldStandard, TableDefinition, Thresholds, ValueType};
use crate::table::Table;

/// Outcome of one monitor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Status {
    /// Within thresholds.
    Ok,
    /// Above the warning threshold.
    Warn,
    /// Above the failure threshold.
    Fail,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Status::Ok => "OK",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
        })
    }
}

/// Which property a monitor watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MonitorKind {
    /// Age of the newest commit.
    Freshness,
    /// Row count change between the two newest versions.
    RowChange,
    /// Share of nulls in a field.
    NullRatio,
    /// Share of values outside a field's range or enum values.
    OutOfRange,
    /// Keys of a `traits` JSON column that have no field standard yet.
    UnstandardisedTraits,
}

impl fmt::Display for MonitorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MonitorKind::Freshness => "freshness",
            MonitorKind::RowChange => "row_change",
            MonitorKind::NullRatio => "null_ratio",
            MonitorKind::OutOfRange => "out_of_range",
            MonitorKind::UnstandardisedTraits => "unstandardised_traits",
        })
    }
}

/// One monitor's reading.
#[derive(Debug, Clone, Serialize)]
pub struct MonitorResult {
    /// Table watched.
    pub table: String,
    /// Field watched, for field monitors.
    pub field: Option<String>,
    /// What is watched.
    pub monitor: MonitorKind,
    /// Outcome.
    pub status: Status,
    /// The measured value, readable.
    pub value: String,
    /// The thresholds, readable.
    pub threshold: String,
}

/// Default out-of-range thresholds: any stray value warns, more than 1% fails.
const DEFAULT_OUT_OF_RANGE: Thresholds<f64> = Thresholds {
    warn: 0.0,
    fail: 0.01,
};

/// Runs every monitor of every table as of `now`.
pub async fn check_all(catalog: &Catalog, now: DateTime<Utc>) -> Result<Vec<MonitorResult>> {
    let mut results = Vec::new();
    for definition in &catalog.definition().tables {
        let table = catalog.table(&definition.name).await?;
        results.extend(check_table(catalog, definition, &table, now).await?);
    }
    Ok(results)
}

/// Runs the monitors of one table.
pub async fn check_table(
    catalog: &Catalog,
    definition: &TableDefinition,
    table: &Table,
    now: DateTime<Utc>,
) -> Result<Vec<MonitorResult>> {
    let mut results = Vec::new();
    let name = definition.name.clone();
    if let Some(t) = &definition.monitors.freshness {
        let warn = parse_duration(&t.warn).map_err(Error::Internal)?;
        let fail = parse_duration(&t.fail).map_err(Error::Internal)?;
        let (status, value) = match table.last_commit_time().await? {
            Some(at) => {
                let age = now - at;
                let status = if age > fail {
                    Status::Fail
                } else if age > warn {
                    Status::Warn
                } else {
                    Status::Ok
                };
                (status, format!("last commit {} ago", readable_age(age)))
            }
            None => (Status::Fail, "never committed".to_string()),
        };
        results.push(MonitorResult {
            table: name.clone(),
            field: None,
            monitor: MonitorKind::Freshness,
            status,
            value,
            threshold: format!("warn > {}, fail > {}", t.warn, t.fail),
        });
    }

    let stats = field_stats(definition, table).await?;
    if let Some(t) = &definition.monitors.row_change {
        let previous = if table.version() > 0 {
            let before = Table::open_at(
                catalog.warehouse(),
                &name,
                SnapshotRef::Version(table.version() - 1),
            )
            .await?;
            Some(before.row_count().await?)
        } else {
            None
        };
        let (status, value) = match previous {
            Some(prev) if prev > 0 => {
                let change = (stats.rows as f64 - prev as f64) / prev as f64;
                (
                    grade(change.abs(), t),
                    format!("{prev} → {} rows ({:+.1}%)", stats.rows, change * 100.0),
                )
            }
            _ => (
                Status::Ok,
                format!("{} rows (no earlier rows to compare)", stats.rows),
            ),
        };
        results.push(MonitorResult {
            table: name.clone(),
            field: None,
            monitor: MonitorKind::RowChange,
            status,
            value,
            threshold: format!(
                "warn > {:.0}%, fail > {:.0}%",
                t.warn * 100.0,
                t.fail * 100.0
            ),
        });
    }

    if let Some(traits) = unstandardised_traits(definition, table).await? {
        results.push(traits);
    }

    let range_thresholds = definition
        .monitors
        .out_of_range
        .clone()
        .unwrap_or(DEFAULT_OUT_OF_RANGE);
    for field in &stats.fields {
        let standard = &field.standard;
        let limit = if standard.required {
            Some(0.0)
        } else {
            standard.max_null_ratio
        };
        if let Some(limit) = limit {
            let ratio = ratio(field.nulls, stats.rows);
            results.push(MonitorResult {
                table: name.clone(),
                field: Some(standard.name.clone()),
                monitor: MonitorKind::NullRatio,
                status: if ratio > limit {
                    Status::Fail
                } else {
                    Status::Ok
                },
                value: format!(
                    "{:.2}% null ({} of {})",
                    ratio * 100.0,
                    field.nulls,
                    stats.rows
                ),
                threshold: format!("fail > {:.2}%", limit * 100.0),
            });
        }
        if let Some(out) = field.out_of_range {
            let ratio = ratio(out, stats.rows);
            results.push(MonitorResult {
                table: name.clone(),
                field: Some(standard.name.clone()),
                monitor: MonitorKind::OutOfRange,
                status: grade(ratio, &range_thresholds),
                value: format!(
                    "{:.2}% out of range ({out} of {})",
                    ratio * 100.0,
                    stats.rows
                ),
                threshold: format!(
                    "warn > {:.2}%, fail > {:.2}%",
                    range_thresholds.warn * 100.0,
                    range_thresholds.fail * 100.0
                ),
            });
        }
    }
    Ok(results)
}

fn grade(value: f64, t: &Thresholds<f64>) -> Status {
    if value > t.fail {
        Status::Fail
    } else if value > t.warn {
        Status::Warn
    } else {
        Status::Ok
    }
}

fn ratio(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

fn readable_age(age: chrono::Duration) -> String {
    let secs = age.num_seconds().max(0);
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

struct FieldStats {
    standard: FieldStandard,
    nulls: u64,
    out_of_range: Option<u64>,
}

struct TableStats {
    rows: u64,
    fields: Vec<FieldStats>,
}

/// One scan computing the row count, null counts and out-of-range counts of every field.
async fn field_stats(definition: &TableDefinition, table: &Table) -> Result<TableStats> {
    let ctx = SessionContext::new();
    let frame = ctx.read_table(table.provider().await?)?;
    let schema = table.schema()?;
    let watched: Vec<&FieldStandard> = definition
        .fields
        .iter()
        .filter(|f| schema.field_with_name(&f.name).is_ok())
        .filter(|f| f.required || f.max_null_ratio.is_some() || f.has_domain())
        .collect();
    let mut aggregates = vec![count(lit(1)).alias("rows")];
    for (i, field) in watched.iter().enumerate() {
        aggregates.push((count(lit(1)) - count(col(&field.name))).alias(format!("n{i}")));
        if let Some(outside) = outside_domain(field) {
            aggregates
                .push(sum(when(outside, lit(1i64)).otherwise(lit(0i64))?).alias(format!("o{i}")));
        }
    }
    let batches = frame.aggregate(vec![], aggregates)?.collect().await?;
    let batch = batches
        .first()
        .ok_or_else(|| Error::Internal("aggregate returned no batch".into()))?;
    let read = |name: &str| -> Result<u64> {
        let column = batch
            .column_by_name(name)
            .ok_or_else(|| Error::Internal(format!("aggregate lacks {name}")))?;
        let column = arrow::compute::cast(column, &arrow::datatypes::DataType::Int64)?;
        let values = column.as_primitive::<Int64Type>();
        Ok(if values.is_empty() || values.is_null(0) {
            0
        } else {
            values.value(0).max(0) as u64
        })
    };
    let rows = read("rows")?;
    let mut fields = Vec::with_capacity(watched.len());
    for (i, field) in watched.iter().enumerate() {
        fields.push(FieldStats {
            standard: (*field).clone(),
            nulls: read(&format!("n{i}"))?,
            out_of_range: if field.has_domain() {
                Some(read(&format!("o{i}"))?)
            } else {
                None
            },
        });
    }
    Ok(TableStats { rows, fields })
}

/// The predicate "value is present and outside the field's domain".
fn outside_domain(field: &FieldStandard) -> Option<Expr> {
    let column = col(&field.name);
    match field.value_type {
        ValueType::Enum if !field.values.is_empty() => Some(
            column
                .clone()
                .is_not_null()
                .and(column.in_list(field.values.iter().map(lit).collect(), true)),
        ),
        t if t.is_numeric() => {
            let [lo, hi] = field.range?;
            let value = cast(column.clone(), arrow::datatypes::DataType::Float64);
            Some(
                column
                    .is_not_null()
                    .and(value.clone().lt(lit(lo)).or(value.gt(lit(hi)))),
            )
        }
        _ => None,
    }
}

/// Lists the keys of a table's `traits` JSON column (profile traits without a standard), with
/// how many rows carry each, so a standard can be added to type them.
async fn unstandardised_traits(
    definition: &TableDefinition,
    table: &Table,
) -> Result<Option<MonitorResult>> {
    if definition
        .field("traits")
        .is_none_or(|f| f.value_type != ValueType::Json)
    {
        return Ok(None);
    }
    let ctx = SessionContext::new();
    let batches = ctx
        .read_table(table.provider().await?)?
        .filter(col("traits").is_not_null())?
        .select_columns(&["traits"])?
        .collect()
        .await?;
    let mut keys: std::collections::BTreeMap<String, u64> = std::collections::BTreeMap::new();
    for batch in &batches {
        let column = arrow::compute::cast(batch.column(0), &arrow::datatypes::DataType::Utf8)?;
        let text = column.as_string::<i32>();
        for i in 0..text.len() {
            if text.is_null(i) {
                continue;
            }
            if let Ok(serde_json::Value::Object(map)) = serde_json::from_str(text.value(i)) {
                for k in map.keys() {
                    *keys.entry(k.clone()).or_insert(0) += 1;
                }
            }
        }
    }
    let mut listed: Vec<(&String, &u64)> = keys.iter().collect();
    listed.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    Ok(Some(MonitorResult {
        table: definition.name.clone(),
        field: Some("traits".into()),
        monitor: MonitorKind::UnstandardisedTraits,
        status: if keys.is_empty() {
            Status::Ok
        } else {
            Status::Warn
        },
        value: if keys.is_empty() {
            "every trait has a field standard".into()
        } else {
            listed
                .iter()
                .map(|(k, n)| format!("{k} ({n} rows)"))
                .collect::<Vec<_>>()
                .join(", ")
        },
        threshold: "warn when a trait has no field standard (add one to type it)".into(),
    }))
}
