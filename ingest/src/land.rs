//! Landing cleaned rows: dedup against the warehouse, one commit per chunk, quarantine, batch.
//!
//! Files are read as streams and landed in chunks of [`CHUNK_ROWS`], each one Delta commit,
//! so memory stays bounded whatever the file size. Dedup keys are the data itself (`event_id`
//! in `events`, `(platform, order_id)` + `record_hash` in `orders`): a chunk and the keys that
//! guard it are committed together, so a batch killed midway and retried lands exactly the rows
//! that were missing — nothing lost, nothing doubled.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanArray, Date32Array, Decimal128Array, Int64Array, RecordBatch, StringArray,
    TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, SchemaRef};
use chrono::{DateTime, Utc};
use datafusion::prelude::{SessionContext, col};

use sha2::{Digest, Sha256};
use shoal_catalog::{Catalog, CommitNote, DECIMAL_PRECISION, DECIMAL_SCALE};

use crate::clean::{self, Rejection, reason};
use crate::error::{Error, Result};
use crate::orders::{self, CsvLayout, OrderRow, Record};
use crate::report::{BatchReport, Counts, FileReport};
use crate::segment::{self, Clock, EventRow};
use crate::tabular::{self, Format, Item};

/// Rows per commit, unless `SHOAL_CHUNK_ROWS` says otherwise.
pub const CHUNK_ROWS: usize = 200_000;

fn chunk_rows() -> usize {
    std::env::var("SHOAL_CHUNK_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(CHUNK_ROWS)
}

/// Where the rows of a file come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    /// Segment messages, JSON lines.
    Segment,
    /// Youzan trades: open API JSON lines, or the console's CSV export.
    Youzan,
    /// Tmall seller centre order report, CSV (GBK or UTF-8).
    Tmall,
}

impl std::str::FromStr for SourceKind {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s {
            "segment" => Ok(SourceKind::Segment),
            "youzan" => Ok(SourceKind::Youzan),
            "tmall" => Ok(SourceKind::Tmall),
            other => Err(format!(
                "unknown source '{other}' (expected segment, youzan or tmall)"
            )),
        }
    }
}

impl SourceKind {
    /// The name used in `--source`, reports and the `source` columns.
    pub fn name(self) -> &'static str {
        match self {
            SourceKind::Segment => "segment",
            SourceKind::Youzan => "youzan",
            SourceKind::Tmall => "tmall",
        }
    }
}

/// Where a record came from; formatted only when it is quarantined.
enum Where {
    /// Line number in the file being read.
    Line(usize),
    /// A location given whole (a request and index, a replayed row's original place).
    Named(String),
}

impl Where {
    fn text(self, file: &str) -> String {
        match self {
            Where::Line(n) => format!("{file}:{n}"),
            Where::Named(s) => s,
        }
    }
}

/// A rejected record on its way to `quarantine`.
struct Rejected {
    location: String,
    rejection: Rejection,
    raw: String,
}

/// Quarantined raw text is kept up to this size.
const MAX_RAW_BYTES: usize = 64 * 1024;

/// Imports `files` of one source kind as one batch.
pub async fn ingest_files(
    catalog: &Catalog,
    kind: SourceKind,
    files: &[&Path],
    progress: &mut (dyn FnMut(u64) + Send),
) -> Result<BatchReport> {
    let started = Utc::now();
    let mut lander = Lander::new(catalog, kind, started)?;
    let batch_id = lander.batch_id.clone();
    let mut reports = Vec::new();
    for file in files {
        let counts = match kind {
            SourceKind::Segment => lander.segment_file(file, progress).await?,
            SourceKind::Youzan if is_json_lines(file)? => {
                lander.youzan_json_file(file, progress).await?
            }
            SourceKind::Youzan => {
                lander
                    .csv_file(file, &orders::YOUZAN_CSV, orders::youzan_record, progress)
                    .await?
            }
            SourceKind::Tmall => {
                lander
                    .csv_file(file, &orders::TMALL, orders::tmall_record, progress)
                    .await?
            }
        };
        reports.push(FileReport {
            file: file.display().to_string(),
            counts,
        });
    }
    let mut counts = Counts::default();
    for r in &reports {
        counts.add(&r.counts);
    }
    let report = BatchReport {
        batch_id,
        source: kind.name().to_string(),
        counts,
        files: reports,
        versions: lander.versions.clone(),
    };
    lander.record_batch(&report, started).await?;
    Ok(report)
}

/// Lands Segment messages received over HTTP as one batch; `origin` names the request in
/// quarantine locations (`origin#index`). Returns when everything is committed.
pub async fn ingest_segment_messages(
    catalog: &Catalog,
    origin: &str,
    messages: Vec<String>,
) -> Result<BatchReport> {
    let started = Utc::now();
    let mut lander = Lander::new(catalog, SourceKind::Segment, started)?;
    let lines = messages.into_iter().enumerate().map(|(i, m)| {
        Ok((
            Where::Named(format!("{origin}#{i}")),
            Item::Line(m.into_bytes()),
        ))
    });
    let counts = lander.segment_lines(lines, origin, &mut |_| {}).await?;
    let report = BatchReport {
        batch_id: lander.batch_id.clone(),
        source: SourceKind::Segment.name().to_string(),
        files: vec![FileReport {
            file: origin.to_string(),
            counts: counts.clone(),
        }],
        counts,
        versions: lander.versions.clone(),
    };
    lander.record_batch(&report, started).await?;
    Ok(report)
}

/// Re-submits quarantined rows (as stored, or corrected) as a new batch. Each item is
/// (original location, raw text); rows that fail again are quarantined again under the new
/// batch with the same location.
pub async fn replay(
    catalog: &Catalog,
    kind: SourceKind,
    items: Vec<(String, String)>,
) -> Result<BatchReport> {
    let started = Utc::now();
    let mut lander = Lander::new(catalog, kind, started)?;
    let mut counts = Counts::default();
    let (json, csv): (Vec<_>, Vec<_>) = items
        .into_iter()
        .partition(|(_, raw)| raw.trim_start().starts_with('{') || kind == SourceKind::Segment);
    let lines = json
        .into_iter()
        .map(|(l, r)| Ok((Where::Named(l), r.into_bytes())));
    let part = match kind {
        SourceKind::Segment => {
            let records = lines.map(|item| item.map(|(w, l)| (w, Item::Line(l))));
            lander.segment_lines(records, "replay", &mut |_| {}).await?
        }
        _ => lander.youzan_lines(lines, "replay", &mut |_| {}).await?,
    };
    counts.add(&part);
    for (location, raw) in csv {
        let (layout, parse): (&CsvLayout, RecordParser) = match kind {
            SourceKind::Tmall => (&orders::TMALL, orders::tmall_record),
            _ => (&orders::YOUZAN_CSV, orders::youzan_record),
        };
        let part = lander
            .csv_text("replay", &raw, layout, parse, Some(&location))
            .await?;
        counts.add(&part);
    }
    let report = BatchReport {
        batch_id: lander.batch_id.clone(),
        source: kind.name().to_string(),
        files: vec![FileReport {
            file: "replay".into(),
            counts: counts.clone(),
        }],
        counts,
        versions: lander.versions.clone(),
    };
    lander.record_batch(&report, started).await?;
    Ok(report)
}

type RecordParser =
    fn(&Record<'_>, chrono::FixedOffset, DateTime<Utc>) -> std::result::Result<OrderRow, Rejection>;

fn rand_suffix() -> u32 {
    let nanos = Utc::now().timestamp_subsec_nanos();
    nanos ^ std::process::id().rotate_left(16)
}

fn is_json_lines(file: &Path) -> Result<bool> {
    let mut head = [0u8; 64];
    let n = std::fs::File::open(file)
        .and_then(|mut f| f.read(&mut head))
        .map_err(|e| Error::io(file, e))?;
    Ok(head[..n].iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{'))
}

struct Lander<'a> {
    catalog: &'a Catalog,
    batch_id: String,
    kind: SourceKind,
    clock: Clock,
    versions: BTreeMap<String, u64>,
    /// `events` as it was when the batch began: rows this batch lands are deduped by `seen`
    /// in memory, so only what came before needs probing, and an empty table none at all.
    events_before: Option<shoal_catalog::Table>,
}

impl<'a> Lander<'a> {
    fn new(catalog: &'a Catalog, kind: SourceKind, started: DateTime<Utc>) -> Result<Self> {
        let zone = clean::zone_offset(&catalog.definition().time_zone).ok_or_else(|| {
            Error::InvalidOptions(format!(
                "catalog time zone '{}' is not supported",
                catalog.definition().time_zone
            ))
        })?;
        Ok(Lander {
            catalog,
            batch_id: format!("b{}-{:08x}", started.format("%Y%m%d%H%M%S"), rand_suffix()),
            kind,
            clock: Clock {
                received_at: started,
                zone,
            },
            versions: BTreeMap::new(),
            events_before: None,
        })
    }

    async fn segment_file(
        &mut self,
        file: &Path,
        progress: &mut (dyn FnMut(u64) + Send),
    ) -> Result<Counts> {
        let label = file_name(file);
        match tabular::sniff(file)? {
            Format::JsonLines => {
                let records =
                    numbered_lines(file)?.map(|item| item.map(|(w, l)| (w, Item::Line(l))));
                self.segment_lines(records, &label, progress).await
            }
            Format::Csv => {
                let records =
                    tabular::csv_records(file)?.map(|item| item.map(|(n, r)| (Where::Line(n), r)));
                self.segment_lines(records, &label, progress).await
            }
            Format::Parquet => {
                let records = tabular::parquet_records(file)?
                    .map(|item| item.map(|(n, r)| (Where::Line(n), r)));
                self.segment_lines(records, &label, progress).await
            }
        }
    }

    /// Cleans, dedups and lands Segment messages, one per item (`location`, raw bytes).
    async fn segment_lines(
        &mut self,
        lines: impl Iterator<Item = Result<(Where, Item)>>,
        label: &str,
        progress: &mut (dyn FnMut(u64) + Send),
    ) -> Result<Counts> {
        let chunk = chunk_rows();
        let mut counts = Counts::default();
        // Message ids seen in this batch, as 128-bit fingerprints (16 bytes each, not the id's
        // text): a file of ten million messages keeps about 300 MB here.
        let mut seen: HashSet<u128> = HashSet::new();
        let mut rows: Vec<EventRow> = Vec::new();
        let mut rejected: Vec<Rejected> = Vec::new();
        for item in lines {
            let (location, record) = item?;
            let line = match record {
                Item::Line(line) => line,
                Item::Broken { raw, rejection } => {
                    counts.received += 1;
                    rejected.push(Rejected {
                        location: location.text(label),
                        rejection,
                        raw,
                    });
                    continue;
                }
            };
            let (text, parsed_text) = match std::str::from_utf8(&line) {
                Ok(text) => (std::borrow::Cow::Borrowed(text), true),
                Err(_) => (String::from_utf8_lossy(&line), false),
            };
            let text = text.trim_end_matches('\r');
            if text.trim().is_empty() {
                continue;
            }
            counts.received += 1;
            let parsed = if parsed_text {
                segment::parse_line(text, self.kind.name(), self.clock)
            } else {
                Err(Rejection::new(
                    reason::INVALID_JSON,
                    "line is not valid UTF-8",
                ))
            };
            match parsed {
                Ok(row) => {
                    if seen.insert(twox_hash::XxHash3_128::oneshot(row.event_id.as_bytes())) {
                        rows.push(row);
                    } else {
                        counts.duplicates += 1;
                    }
                }
                Err(rejection) => rejected.push(Rejected {
                    location: location.text(label),
                    rejection,
                    raw: text.to_string(),
                }),
            }
            if rows.len() >= chunk {
                self.land_events(std::mem::take(&mut rows), &mut counts)
                    .await?;
                progress(counts.received);
            }
            if rejected.len() >= chunk {
                self.quarantine(std::mem::take(&mut rejected), &mut counts)
                    .await?;
            }
        }
        self.land_events(rows, &mut counts).await?;
        self.quarantine(rejected, &mut counts).await?;
        progress(counts.received);
        Ok(counts)
    }

    async fn land_events(&mut self, rows: Vec<EventRow>, counts: &mut Counts) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        if self.events_before.is_none() {
            self.events_before = Some(self.catalog.table("events").await?);
        }
        let baseline = self
            .events_before
            .as_ref()
            .ok_or_else(|| Error::Internal("events baseline not opened".into()))?;
        // Rows are referenced, filtered and sorted by reference: they are large and never move.
        let mut keep: Vec<&EventRow> = if baseline.version() == 0 {
            rows.iter().collect()
        } else {
            let ids: Vec<String> = rows.iter().map(|r| r.event_id.clone()).collect();
            let existing = self
                .existing_keys(baseline, &["event_id"], vec![ids], None)
                .await?;
            let existing: HashSet<&str> = existing
                .keys()
                .filter_map(|k| k.first().map(String::as_str))
                .collect();
            rows.iter()
                .filter(|r| !existing.contains(r.event_id.as_str()))
                .collect()
        };
        counts.duplicates += (rows.len() - keep.len()) as u64;
        if keep.is_empty() {
            return Ok(());
        }
        keep.sort_unstable_by(|a, b| {
            a.event_time
                .cmp(&b.event_time)
                .then_with(|| a.event_id.cmp(&b.event_id))
        });
        let mut table = self.catalog.table("events").await?;
        let batch = events_batch(&table.schema()?, &keep)?;
        let version = table.append(vec![batch], self.note()).await?;
        self.versions.insert("events".into(), version);
        counts.landed += keep.len() as u64;
        Ok(())
    }

    async fn youzan_json_file(
        &mut self,
        file: &Path,
        progress: &mut (dyn FnMut(u64) + Send),
    ) -> Result<Counts> {
        self.youzan_lines(numbered_lines(file)?, &file_name(file), progress)
            .await
    }

    async fn youzan_lines(
        &mut self,
        lines: impl Iterator<Item = Result<(Where, Vec<u8>)>>,
        label: &str,
        progress: &mut (dyn FnMut(u64) + Send),
    ) -> Result<Counts> {
        let chunk = chunk_rows();
        let mut counts = Counts::default();
        let mut rows = Vec::new();
        let mut rejected = Vec::new();
        for item in lines {
            let (location, line) = item?;
            let text = String::from_utf8_lossy(&line)
                .trim_end_matches('\r')
                .to_string();
            if text.trim().is_empty() {
                continue;
            }
            counts.received += 1;
            match orders::youzan_trade(&text, self.clock.zone, self.clock.received_at) {
                Ok(row) => rows.push(row),
                Err(rejection) => rejected.push(Rejected {
                    location: location.text(label),
                    rejection,
                    raw: text,
                }),
            }
            if rows.len() >= chunk {
                self.land_orders(std::mem::take(&mut rows), label, &mut counts)
                    .await?;
                progress(counts.received);
            }
        }
        self.land_orders(rows, label, &mut counts).await?;
        self.quarantine(rejected, &mut counts).await?;
        progress(counts.received);
        Ok(counts)
    }

    async fn csv_file(
        &mut self,
        file: &Path,
        layout: &CsvLayout,
        parse: fn(
            &Record<'_>,
            chrono::FixedOffset,
            DateTime<Utc>,
        ) -> std::result::Result<OrderRow, Rejection>,
        progress: &mut (dyn FnMut(u64) + Send),
    ) -> Result<Counts> {
        let name = file_name(file);
        let bytes = std::fs::read(file).map_err(|e| Error::io(file, e))?;
        let counts = self
            .csv_text(&name, &decode(&bytes), layout, parse, None)
            .await?;
        progress(counts.received);
        Ok(counts)
    }

    /// Lands the records of a CSV text; `location` overrides `name:line` (replays).
    async fn csv_text(
        &mut self,
        name: &str,
        text: &str,
        layout: &CsvLayout,
        parse: fn(
            &Record<'_>,
            chrono::FixedOffset,
            DateTime<Utc>,
        ) -> std::result::Result<OrderRow, Rejection>,
        location: Option<&str>,
    ) -> Result<Counts> {
        let name = name.to_string();
        let mut reader = csv::ReaderBuilder::new()
            .flexible(true)
            .has_headers(true)
            .from_reader(text.as_bytes());
        let header: Vec<String> = reader
            .headers()
            .map_err(|e| Error::InvalidInput {
                file: name.clone(),
                reason: format!("unreadable header: {e}"),
            })?
            .iter()
            .map(str::to_string)
            .collect();
        let index =
            orders::check_header(layout, &header).map_err(|reason| Error::InvalidInput {
                file: name.clone(),
                reason,
            })?;
        let header_line = csv_record_text(&csv::StringRecord::from(header.clone()));
        let here = |line: u64| location.map_or_else(|| format!("{name}:{line}"), str::to_string);
        let mut counts = Counts::default();
        let mut rows = Vec::new();
        let mut rejected = Vec::new();
        for record in reader.records() {
            counts.received += 1;
            let (fields, line) = match record {
                Ok(r) => {
                    let line = r.position().map(|p| p.line()).unwrap_or(0);
                    (r, line)
                }
                Err(e) => {
                    let line = e.position().map(|p| p.line()).unwrap_or(0);
                    rejected.push(Rejected {
                        location: here(line),
                        rejection: Rejection::new(
                            reason::BROKEN_RECORD,
                            format!("unreadable record: {e}"),
                        ),
                        raw: String::new(),
                    });
                    continue;
                }
            };
            let location = here(line);
            let parsed = if fields.len() != header.len() {
                Err(Rejection::new(
                    reason::BROKEN_RECORD,
                    format!(
                        "record has {} fields; the header has {}",
                        fields.len(),
                        header.len()
                    ),
                ))
            } else {
                parse(
                    &Record {
                        index: &index,
                        fields: &fields,
                    },
                    self.clock.zone,
                    self.clock.received_at,
                )
            };
            match parsed {
                Ok(row) => rows.push(row),
                // The header travels with the record so the row can be replayed on its own.
                Err(rejection) => rejected.push(Rejected {
                    location,
                    rejection,
                    raw: format!("{header_line}\r\n{}", csv_record_text(&fields)),
                }),
            }
        }
        self.land_orders(rows, &name, &mut counts).await?;
        self.quarantine(rejected, &mut counts).await?;
        Ok(counts)
    }

    async fn land_orders(
        &mut self,
        rows: Vec<OrderRow>,
        file: &str,
        counts: &mut Counts,
    ) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        // Within the chunk the last record of an order wins; earlier ones are duplicates.
        let mut latest: HashMap<(String, &'static str), usize> = HashMap::new();
        for (i, row) in rows.iter().enumerate() {
            if latest
                .insert((row.order_id.clone(), row.platform), i)
                .is_some()
            {
                counts.duplicates += 1;
            }
        }
        let mut keep: Vec<usize> = latest.into_values().collect();
        keep.sort_unstable();
        let rows: Vec<(OrderRow, String)> = keep
            .into_iter()
            .map(|i| {
                let row = rows[i].clone();
                let hash = record_hash(&row);
                (row, hash)
            })
            .collect();
        let platforms: Vec<String> = rows.iter().map(|(r, _)| r.platform.to_string()).collect();
        let ids: Vec<String> = rows.iter().map(|(r, _)| r.order_id.clone()).collect();
        let orders = self.catalog.table("orders").await?;
        let existing = self
            .existing_keys(
                &orders,
                &["platform", "order_id"],
                vec![platforms, ids],
                Some("record_hash"),
            )
            .await?;
        let mut changed = Vec::new();
        let mut updates = 0u64;
        for (row, hash) in rows {
            match existing.get(&vec![row.platform.to_string(), row.order_id.clone()]) {
                Some(Some(old)) if *old == hash => counts.duplicates += 1,
                Some(_) => {
                    updates += 1;
                    changed.push((row, hash));
                }
                None => changed.push((row, hash)),
            }
        }
        if changed.is_empty() {
            return Ok(());
        }
        let mut table = self.catalog.table("orders").await?;
        let batch = orders_batch(
            &table.schema()?,
            &changed,
            file,
            self.clock.received_at.timestamp_micros(),
        )?;
        let outcome = table
            .merge(vec![batch], &["platform", "order_id"], self.note())
            .await?;
        self.versions.insert("orders".into(), outcome.version);
        counts.landed += changed.len() as u64;
        counts.updated += updates;
        Ok(())
    }

    /// Keys of `table` among `keys` (columns of equal length), with an optional value column.
    async fn existing_keys(
        &self,
        target: &shoal_catalog::Table,
        key_columns: &[&str],
        keys: Vec<Vec<String>>,
        value_column: Option<&str>,
    ) -> Result<HashMap<Vec<String>, Option<String>>> {
        let table = target.name();
        if target.version() == 0 {
            return Ok(HashMap::new());
        }
        let ctx = SessionContext::new();
        let probe_columns: Vec<(String, ArrayRef)> = key_columns
            .iter()
            .zip(keys)
            .map(|(name, values)| {
                (
                    format!("probe_{name}"),
                    Arc::new(StringArray::from(values)) as ArrayRef,
                )
            })
            .collect();
        let probe = ctx
            .read_batch(
                RecordBatch::try_from_iter(probe_columns).map_err(shoal_catalog::Error::from)?,
            )
            .map_err(shoal_catalog::Error::from)?;
        let mut wanted: Vec<&str> = key_columns.to_vec();
        if let Some(v) = value_column {
            wanted.push(v);
        }
        let existing = ctx
            .read_table(target.provider().await?)
            .map_err(shoal_catalog::Error::from)?
            .select_columns(&wanted)
            .map_err(shoal_catalog::Error::from)?;
        let left: Vec<String> = key_columns.iter().map(|k| k.to_string()).collect();
        let right: Vec<String> = key_columns.iter().map(|k| format!("probe_{k}")).collect();
        let left: Vec<&str> = left.iter().map(String::as_str).collect();
        let right: Vec<&str> = right.iter().map(String::as_str).collect();
        let matched = existing
            .join(
                probe
                    .select(right.iter().map(|c| col(*c)).collect::<Vec<_>>())
                    .map_err(shoal_catalog::Error::from)?,
                datafusion::logical_expr::JoinType::LeftSemi,
                &left,
                &right,
                None,
            )
            .map_err(shoal_catalog::Error::from)?
            .collect()
            .await
            .map_err(shoal_catalog::Error::from)?;
        let mut out = HashMap::new();
        for batch in matched {
            let columns: Vec<ArrayRef> = wanted
                .iter()
                .map(|c| {
                    batch
                        .column_by_name(c)
                        .ok_or_else(|| {
                            Error::Internal(format!("{table}.{c} missing from the probe"))
                        })
                        .and_then(|a| {
                            arrow::compute::cast(a, &DataType::Utf8)
                                .map_err(|e| Error::Internal(e.to_string()))
                        })
                })
                .collect::<Result<_>>()?;
            let strings: Vec<&StringArray> = columns
                .iter()
                .map(|c| {
                    c.as_any()
                        .downcast_ref::<StringArray>()
                        .ok_or_else(|| Error::Internal("not text".into()))
                })
                .collect::<Result<_>>()?;
            for i in 0..batch.num_rows() {
                let key: Vec<String> = strings[..key_columns.len()]
                    .iter()
                    .map(|s| s.value(i).to_string())
                    .collect();
                let value = value_column
                    .map(|_| strings[key_columns.len()])
                    .filter(|s| !arrow::array::Array::is_null(*s, i))
                    .map(|s| s.value(i).to_string());
                out.insert(key, value);
            }
        }
        Ok(out)
    }

    async fn quarantine(&mut self, rejected: Vec<Rejected>, counts: &mut Counts) -> Result<()> {
        if rejected.is_empty() {
            return Ok(());
        }
        for r in &rejected {
            *counts
                .reasons
                .entry(r.rejection.code.to_string())
                .or_insert(0) += 1;
        }
        counts.quarantined += rejected.len() as u64;
        let mut table = self.catalog.table("quarantine").await?;
        let schema = table.schema()?;
        let now = self.clock.received_at.timestamp_micros();
        let n = rejected.len();
        let batch = build(&schema, n, |name| -> Option<ArrayRef> {
            Some(match name {
                "batch_id" => Arc::new(StringArray::from(vec![self.batch_id.as_str(); n])),
                "source" => Arc::new(StringArray::from(vec![self.kind.name(); n])),
                "location" => Arc::new(StringArray::from_iter_values(
                    rejected.iter().map(|r| r.location.as_str()),
                )),
                "reason" => Arc::new(StringArray::from_iter_values(
                    rejected.iter().map(|r| r.rejection.code),
                )),
                "message" => Arc::new(StringArray::from_iter_values(
                    rejected.iter().map(|r| r.rejection.message.as_str()),
                )),
                "raw" => Arc::new(StringArray::from_iter_values(
                    rejected.iter().map(|r| truncate(&r.raw, MAX_RAW_BYTES)),
                )),
                "quarantined_at" => timestamps(vec![Some(now); n]),
                "replayed" => Arc::new(BooleanArray::from(vec![false; n])),
                _ => return None,
            })
        })?;
        let version = table.append(vec![batch], self.note()).await?;
        self.versions.insert("quarantine".into(), version);
        Ok(())
    }

    async fn record_batch(&mut self, report: &BatchReport, started: DateTime<Utc>) -> Result<()> {
        let mut table = self.catalog.table("batches").await?;
        let schema = table.schema()?;
        let c = &report.counts;
        let text = serde_json::to_string(report).map_err(|e| Error::Internal(e.to_string()))?;
        let batch = build(&schema, 1, |name| -> Option<ArrayRef> {
            Some(match name {
                "batch_id" => Arc::new(StringArray::from(vec![report.batch_id.as_str()])),
                "source" => Arc::new(StringArray::from(vec![report.source.as_str()])),
                "started_at" => timestamps(vec![Some(started.timestamp_micros())]),
                "finished_at" => timestamps(vec![Some(Utc::now().timestamp_micros())]),
                "received" => Arc::new(Int64Array::from(vec![c.received as i64])),
                "landed" => Arc::new(Int64Array::from(vec![c.landed as i64])),
                "quarantined" => Arc::new(Int64Array::from(vec![c.quarantined as i64])),
                "duplicates" => Arc::new(Int64Array::from(vec![c.duplicates as i64])),
                "report" => Arc::new(StringArray::from(vec![text.as_str()])),
                _ => return None,
            })
        })?;
        table.append(vec![batch], self.note()).await?;
        Ok(())
    }

    fn note(&self) -> CommitNote {
        CommitNote::new("batch_id", self.batch_id.as_str()).with("source", self.kind.name())
    }
}

/// The lines of a file with their numbers, streamed.
fn numbered_lines(file: &Path) -> Result<impl Iterator<Item = Result<(Where, Vec<u8>)>> + '_> {
    let reader = BufReader::with_capacity(
        1 << 20,
        std::fs::File::open(file).map_err(|e| Error::io(file, e))?,
    );
    Ok(reader.split(b'\n').enumerate().map(move |(number, line)| {
        line.map(|l| (Where::Line(number + 1), l))
            .map_err(|e| Error::io(file, e))
    }))
}

fn file_name(file: &Path) -> String {
    file.file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| file.display().to_string())
}

fn truncate(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let cut = (0..=max)
        .rev()
        .find(|i| text.is_char_boundary(*i))
        .unwrap_or(0);
    &text[..cut]
}

/// Text of an export: UTF-8 (with or without BOM) when it is valid UTF-8, else GBK.
pub fn decode(bytes: &[u8]) -> String {
    let bytes = bytes.strip_prefix("\u{feff}".as_bytes()).unwrap_or(bytes);
    match std::str::from_utf8(bytes) {
        Ok(text) => text.to_string(),
        Err(_) => encoding_rs::GBK.decode(bytes).0.into_owned(),
    }
}

fn csv_record_text(record: &csv::StringRecord) -> String {
    let mut writer = csv::Writer::from_writer(Vec::new());
    if writer.write_record(record).is_err() {
        return record.iter().collect::<Vec<_>>().join(",");
    }
    writer
        .into_inner()
        .map(|b| String::from_utf8_lossy(&b).trim_end().to_string())
        .unwrap_or_default()
}

fn record_hash(row: &OrderRow) -> String {
    let text = format!("{row:?}");
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn timestamps(values: Vec<Option<i64>>) -> ArrayRef {
    Arc::new(TimestampMicrosecondArray::from(values).with_timezone("UTC"))
}

fn decimals(values: Vec<Option<i64>>) -> Option<ArrayRef> {
    Decimal128Array::from(
        values
            .into_iter()
            .map(|v| v.map(i128::from))
            .collect::<Vec<_>>(),
    )
    .with_precision_and_scale(DECIMAL_PRECISION, DECIMAL_SCALE)
    .ok()
    .map(|a| Arc::new(a) as ArrayRef)
}

fn texts<'a>(values: impl Iterator<Item = Option<&'a str>>) -> ArrayRef {
    Arc::new(values.collect::<StringArray>())
}

/// A batch of `schema` with `n` rows: each column from `column`, or nulls when it has none.
fn build(
    schema: &SchemaRef,
    n: usize,
    mut column: impl FnMut(&str) -> Option<ArrayRef>,
) -> Result<RecordBatch> {
    let columns: Vec<ArrayRef> = schema
        .fields()
        .iter()
        .map(|f| column(f.name()).unwrap_or_else(|| arrow::array::new_null_array(f.data_type(), n)))
        .collect();
    RecordBatch::try_new(schema.clone(), columns)
        .map_err(|e| Error::Internal(format!("building a batch: {e}")))
}

fn events_batch(schema: &SchemaRef, rows: &[&EventRow]) -> Result<RecordBatch> {
    build(schema, rows.len(), |name| -> Option<ArrayRef> {
        Some(match name {
            "event_id" => texts(rows.iter().map(|r| Some(r.event_id.as_str()))),
            "event_name" => texts(rows.iter().map(|r| Some(r.event_name.as_str()))),
            "event_type" => texts(rows.iter().map(|r| Some(r.event_type))),
            "event_time" => timestamps(rows.iter().map(|r| Some(r.event_time)).collect()),
            "event_date" => Arc::new(Date32Array::from(
                rows.iter().map(|r| r.event_date).collect::<Vec<_>>(),
            )),
            "received_at" => timestamps(rows.iter().map(|r| Some(r.received_at)).collect()),
            "anonymous_id" => texts(rows.iter().map(|r| r.anonymous_id.as_deref())),
            "login_id" => texts(rows.iter().map(|r| r.login_id.as_deref())),
            "source" => texts(rows.iter().map(|r| Some(r.source.as_str()))),
            "page" => texts(rows.iter().map(|r| r.page.as_deref())),
            "item_id" => texts(rows.iter().map(|r| r.item_id.as_deref())),
            "category" => texts(rows.iter().map(|r| r.category.as_deref())),
            "price" => decimals(rows.iter().map(|r| r.price).collect())?,
            "quantity" => Arc::new(Int64Array::from(
                rows.iter().map(|r| r.quantity).collect::<Vec<_>>(),
            )),
            "revenue" => decimals(rows.iter().map(|r| r.revenue).collect())?,
            "channel" => texts(rows.iter().map(|r| r.channel.as_deref())),
            "campaign_id" => texts(rows.iter().map(|r| r.campaign_id.as_deref())),
            "order_id" => texts(rows.iter().map(|r| r.order_id.as_deref())),
            "properties" => texts(rows.iter().map(|r| r.properties.as_deref())),
            _ => return None,
        })
    })
}

fn orders_batch(
    schema: &SchemaRef,
    rows: &[(OrderRow, String)],
    file: &str,
    now: i64,
) -> Result<RecordBatch> {
    let n = rows.len();
    build(schema, n, |name| -> Option<ArrayRef> {
        Some(match name {
            "order_id" => texts(rows.iter().map(|(r, _)| Some(r.order_id.as_str()))),
            "platform" => texts(rows.iter().map(|(r, _)| Some(r.platform))),
            "buyer_id" => texts(rows.iter().map(|(r, _)| r.buyer_id.as_deref())),
            "buyer_nick" => texts(rows.iter().map(|(r, _)| r.buyer_nick.as_deref())),
            "fans_id" => texts(rows.iter().map(|(r, _)| r.fans_id.as_deref())),
            "phone" => texts(rows.iter().map(|(r, _)| r.phone.as_deref())),
            "amount" => decimals(rows.iter().map(|(r, _)| Some(r.amount)).collect())?,
            "refund_amount" => decimals(rows.iter().map(|(r, _)| r.refund_amount).collect())?,
            "status" => texts(rows.iter().map(|(r, _)| Some(r.status))),
            "created_at" => timestamps(rows.iter().map(|(r, _)| Some(r.created_at)).collect()),
            "paid_at" => timestamps(rows.iter().map(|(r, _)| r.paid_at).collect()),
            "items" => texts(rows.iter().map(|(r, _)| r.items.as_deref())),
            "item_count" => Arc::new(Int64Array::from(
                rows.iter().map(|(r, _)| r.item_count).collect::<Vec<_>>(),
            )),
            "region" => texts(rows.iter().map(|(r, _)| r.region.as_deref())),
            "address" => texts(rows.iter().map(|(r, _)| r.address.as_deref())),
            "source_file" => texts(std::iter::repeat_n(Some(file), n)),
            "record_hash" => texts(rows.iter().map(|(_, h)| Some(h.as_str()))),
            "updated_at" => timestamps(vec![Some(now); n]),
            _ => return None,
        })
    })
}

/// A summary line per reason, for people.
pub fn describe(report: &BatchReport) -> String {
    let c = &report.counts;
    let reasons: Vec<String> = c.reasons.iter().map(|(k, v)| format!("{k} {v}")).collect();
    format!(
        "batch {}: received {} = landed {} ({} updated) + quarantined {} + duplicates {}{}",
        report.batch_id,
        c.received,
        c.landed,
        c.updated,
        c.quarantined,
        c.duplicates,
        if reasons.is_empty() {
            String::new()
        } else {
            format!("  [{}]", reasons.join(", "))
        }
    )
}
