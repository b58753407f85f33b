//! Landing cleaned rows: dedup against the warehouse, one commit per chunk, quarantine, batch.
//!
//! Files are read as streams and landed in chunks of [`CHUNK_ROWS`] rows or [`CHUNK_BYTES`]
//! bytes, each one Delta commit, so memory stays bounded whatever the file size. Dedup keys
//! are the data itself (`event_id` in `events`, `(platform, order_id)` + `record_hash` in
//! `orders`): a chunk and the keys that guard it are committed together, so a batch killed
//! midway and retried lands exactly the rows that were missing — nothing lost, nothing
//! doubled. Message ids are looked up in fingerprints of the table kept in memory
//! ([`crate::known_ids`]), and only ids found there are confirmed against the table.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanArray, Date32Array, Decimal128Array, Decimal128Builder, Int64Array,
    Int64Builder, RecordBatch, StringArray, StringBuilder, TimestampMicrosecondArray,
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

/// Bytes of Arrow data per commit at most: messages of a few kilobytes (product lists, long
/// texts) fill a chunk long before its row count, and a chunk is held, sorted and encoded in
/// memory whole.
pub const CHUNK_BYTES: usize = 64 << 20;

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

/// Counts `rejected` in `counts`: as quarantined, and per reason code.
fn count_rejected(counts: &mut Counts, rejected: &[Rejected]) {
    counts.quarantined += rejected.len() as u64;
    for r in rejected {
        *counts
            .reasons
            .entry(r.rejection.code.to_string())
            .or_insert(0) += 1;
    }
}

/// Data files of `batches` or `quarantine` that make a batch compact the table.
pub const COMPACT_AFTER_FILES: usize = 64;

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

/// Messages of one tracking request: `origin` names the request in quarantine locations
/// (`origin#index`) and in the batch report.
pub struct Request {
    pub origin: String,
    pub messages: Vec<String>,
}

/// Lands the messages of many tracking requests as one batch: one `events` commit, one
/// `quarantine` commit and one `batches` row for all of them, however many there are. The
/// report has one entry in `files` per request, in order, with that request's own counts.
/// Returns when everything is committed. `handles` are the tables kept open from the last
/// call; they are kept open for the next.
pub async fn ingest_segment_requests(
    catalog: &Catalog,
    handles: &mut TableHandles,
    requests: Vec<Request>,
) -> Result<BatchReport> {
    let started = Utc::now();
    let clock = std::time::Instant::now();
    let mut lander = Lander::new(catalog, SourceKind::Segment, started)?;
    lander.handles = std::mem::take(handles);
    let schema = lander.events_schema().await?;
    let opened = clock.elapsed();
    let source = SourceKind::Segment.name();
    let mut files = Vec::with_capacity(requests.len());
    let mut batches = Vec::with_capacity(requests.len());
    // The request each batch of `batches` came from.
    let mut owners = Vec::with_capacity(requests.len());
    let mut rejected = Vec::new();
    for Request { origin, messages } in requests {
        let mut part = PartBuilder::default();
        for (i, message) in messages.iter().enumerate() {
            part.line(
                message.as_bytes(),
                || format!("{origin}#{i}"),
                source,
                lander.clock,
            );
        }
        let part = part.finish(&schema)?;
        let mut counts = Counts {
            received: part.received,
            ..Counts::default()
        };
        count_rejected(&mut counts, &part.rejected);
        let (kept, repeated) = lander.unseen(part.rows, &part.fingerprints)?;
        counts.duplicates += part.repeated + repeated;
        rejected.extend(part.rejected);
        owners.push(files.len());
        batches.push(kept);
        files.push(FileReport {
            file: origin,
            counts,
        });
    }
    let cleaned = clock.elapsed();
    let (batches, existing) = lander.without_existing(batches).await?;
    let probed = clock.elapsed();
    for ((owner, rows), existing) in owners.into_iter().zip(&batches).zip(existing) {
        let file = files
            .get_mut(owner)
            .ok_or_else(|| Error::Internal("rows of no request".into()))?;
        file.counts.duplicates += existing;
        file.counts.landed += rows.num_rows() as u64;
    }
    let batches: Vec<RecordBatch> = batches.into_iter().filter(|b| b.num_rows() > 0).collect();
    if !batches.is_empty() {
        let mut table = lander.table("events").await?;
        let version = table.append(batches, lander.note()).await?;
        lander.keep(table);
        lander.versions.insert("events".into(), version);
    }
    let committed = clock.elapsed();
    lander.quarantine(rejected, &mut Counts::default()).await?;
    let mut counts = Counts::default();
    for file in &files {
        counts.add(&file.counts);
    }
    let report = BatchReport {
        batch_id: lander.batch_id.clone(),
        source: source.to_string(),
        files,
        counts,
        versions: lander.versions.clone(),
    };
    lander.record_batch(&report, started).await?;
    *handles = std::mem::take(&mut lander.handles);
    tracing::debug!(
        requests = report.files.len(),
        open_ms = opened.as_secs_f64() * 1e3,
        clean_ms = (cleaned - opened).as_secs_f64() * 1e3,
        dedup_ms = (probed - cleaned).as_secs_f64() * 1e3,
        events_commit_ms = (committed - probed).as_secs_f64() * 1e3,
        rest_ms = (clock.elapsed() - committed).as_secs_f64() * 1e3,
        "tracking batch landed"
    );
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
    /// Message ids seen in this batch (every file of it), as 128-bit fingerprints (16 bytes
    /// each, not the id's text): a batch of ten million messages keeps about 300 MB here.
    seen: crate::known_ids::Fingerprints<u128>,
    /// The `events` commit running while the next chunk is cleaned: at most one at a time,
    /// so commits land in file order.
    events_commit: Option<tokio::task::JoinHandle<Result<u64>>>,
    /// The tables written, kept open between chunks (and between batches, for a caller that
    /// keeps them).
    handles: TableHandles,
}

/// Open tables kept between writes: a kept handle moves to the table's newest version with
/// one `stat` (reading only the commits since), where opening a table reads its last
/// checkpoint and every commit after it.
#[derive(Default)]
pub struct TableHandles(HashMap<String, shoal_catalog::Table>);

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
            seen: Default::default(),
            events_commit: None,
            handles: TableHandles::default(),
        })
    }

    /// Table `name` at its newest version.
    async fn table(&mut self, name: &str) -> Result<shoal_catalog::Table> {
        if let Some(table) = self.handles.0.get_mut(name) {
            if let Err(e) = table.refresh().await {
                self.handles.0.remove(name);
                return Err(e.into());
            }
            return Ok(table.clone());
        }
        let table = self.catalog.table(name).await?;
        self.handles.0.insert(name.to_string(), table.clone());
        Ok(table)
    }

    /// Keeps `table`, just written, as the handle to move forward next time.
    fn keep(&mut self, table: shoal_catalog::Table) {
        self.handles.0.insert(table.name().to_string(), table);
    }

    /// Merges the small files of a bookkeeping table (`batches`, `quarantine`: a file per
    /// batch) once they number [`COMPACT_AFTER_FILES`], so a tracking server committing
    /// several times a second does not leave every later commit and read slower.
    async fn compact_if_many(&self, table: &mut shoal_catalog::Table) -> Result<()> {
        if table.data_files()?.len() >= COMPACT_AFTER_FILES {
            table.compact(self.note()).await?;
        }
        Ok(())
    }

    async fn segment_file(
        &mut self,
        file: &Path,
        progress: &mut (dyn FnMut(u64) + Send),
    ) -> Result<Counts> {
        let label = file_name(file);
        match tabular::sniff(file)? {
            Format::JsonLines => self.segment_json_file(file, &label, progress).await,
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
        let schema = self.events_schema().await?;
        let mut pending = Pending::new(chunk_rows());
        let source = self.kind.name();
        let mut part = PartBuilder::default();
        for item in lines {
            let (location, record) = item?;
            part.record(location, record, label, source, self.clock);
            if part.len() >= PART_ROWS {
                let done = std::mem::take(&mut part).finish(&schema)?;
                self.take(done, &mut pending, progress).await?;
            }
        }
        let done = part.finish(&schema)?;
        self.take(done, &mut pending, progress).await?;
        self.finish(pending, progress).await
    }

    /// A JSON-lines file of Segment messages, cleaned on every core: a reader cuts the file
    /// into blocks of whole lines, each block's lines are cleaned in parallel into Arrow
    /// columns, and the parts come back in file order to be deduped and landed here while the
    /// next ones are cleaned.
    async fn segment_json_file(
        &mut self,
        file: &Path,
        label: &str,
        progress: &mut (dyn FnMut(u64) + Send),
    ) -> Result<Counts> {
        let schema = self.events_schema().await?;
        let bytes = std::fs::metadata(file)
            .map_err(|e| Error::io(file, e))?
            .len();
        // Few parts wait: each holds the rows of one run of lines, a few megabytes.
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Part>>(2);
        let reader = tokio::task::spawn_blocking({
            let file = file.to_path_buf();
            let label = label.to_string();
            let source = self.kind.name();
            let clock = self.clock;
            move || {
                let context = PartContext {
                    label: &label,
                    source,
                    clock,
                    schema: &schema,
                };
                if let Err(e) = clean_json_blocks(&file, &context, &tx) {
                    // The receiver may be gone already; then the error has no one to tell.
                    let _ = tx.blocking_send(Err(e));
                }
            }
        });
        let mut pending = Pending::new(chunk_rows());
        let mut foreseen = false;
        while let Some(part) = rx.recv().await {
            let part = part?;
            if !foreseen && part.received > 0 && part.bytes > 0 {
                // Room for the ids of the whole file, as many per byte as in its first part,
                // rather than a copy of the set each time it doubles.
                let expected = u128::from(part.received) * u128::from(bytes) / part.bytes as u128;
                self.seen
                    .reserve(usize::try_from(expected).unwrap_or(usize::MAX));
                foreseen = true;
            }
            self.take(part, &mut pending, progress).await?;
        }
        reader
            .await
            .map_err(|e| Error::Internal(format!("reading {label}: {e}")))?;
        self.finish(pending, progress).await
    }

    /// The schema of `events`, from the table as it was when the batch began.
    async fn events_schema(&mut self) -> Result<SchemaRef> {
        if self.events_before.is_none() {
            self.events_before = Some(self.table("events").await?);
        }
        self.events_before
            .as_ref()
            .ok_or_else(|| Error::Internal("events baseline not opened".into()))?
            .schema()
            .map_err(Error::from)
    }

    /// Adds one cleaned part to `pending` (its messages already seen in this batch are
    /// duplicates), landing or quarantining a full chunk.
    async fn take(
        &mut self,
        part: Part,
        pending: &mut Pending,
        progress: &mut (dyn FnMut(u64) + Send),
    ) -> Result<()> {
        pending.counts.received += part.received;
        pending.rejected.extend(part.rejected);
        let (kept, repeated) = self.unseen(part.rows, &part.fingerprints)?;
        pending.bytes += kept.get_array_memory_size();
        pending.counts.duplicates += part.repeated + repeated;
        pending.rows += kept.num_rows();
        pending.batches.push(kept);
        if pending.rows >= pending.chunk || pending.bytes >= CHUNK_BYTES {
            self.land_events(pending).await?;
            progress(pending.counts.received);
        }
        if pending.rejected.len() >= pending.chunk {
            self.quarantine(std::mem::take(&mut pending.rejected), &mut pending.counts)
                .await?;
        }
        Ok(())
    }

    /// Lands and quarantines what is left in `pending`; its counts are the source's.
    async fn finish(
        &mut self,
        mut pending: Pending,
        progress: &mut (dyn FnMut(u64) + Send),
    ) -> Result<Counts> {
        self.land_events(&mut pending).await?;
        self.quarantine(std::mem::take(&mut pending.rejected), &mut pending.counts)
            .await?;
        self.events_committed().await?;
        progress(pending.counts.received);
        Ok(pending.counts)
    }

    /// Lands the rows of `pending` (leaving it empty): dedup against what was there before
    /// the batch, then one commit, which writes while the caller goes on.
    async fn land_events(&mut self, pending: &mut Pending) -> Result<()> {
        let mut batches = std::mem::take(&mut pending.batches);
        pending.rows = 0;
        pending.bytes = 0;
        if batches.is_empty() {
            return Ok(());
        }
        let (kept, existing) = self.without_existing(batches).await?;
        pending.counts.duplicates += existing.iter().sum::<u64>();
        batches = kept;
        let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
        if rows == 0 {
            return Ok(());
        }
        pending.counts.landed += rows as u64;
        self.events_committed().await?;
        let mut table = self.table("events").await?;
        let note = self.note();
        self.events_commit = Some(tokio::spawn(async move {
            Ok(table.append(batches, note).await?)
        }));
        Ok(())
    }

    /// The rows of `rows` whose message was not seen earlier in this batch (`fingerprints`
    /// holds each row's), and how many were seen. Rows kept are copied into one batch when
    /// some are left out: as slices between the repeats, a part of a few thousand rows with
    /// a repeat every fifty became hundreds of batches, each cut by partition and encoded on
    /// its own.
    fn unseen(&mut self, rows: RecordBatch, fingerprints: &[u128]) -> Result<(RecordBatch, u64)> {
        if fingerprints.len() != rows.num_rows() {
            return Err(Error::Internal(format!(
                "{} fingerprints for {} rows",
                fingerprints.len(),
                rows.num_rows()
            )));
        }
        let mut keep = arrow::array::BooleanBufferBuilder::new(fingerprints.len());
        for fingerprint in fingerprints {
            keep.append(self.seen.insert(*fingerprint));
        }
        let keep = BooleanArray::new(keep.finish(), None);
        let repeated = (keep.len() - keep.true_count()) as u64;
        if repeated == 0 {
            return Ok((rows, 0));
        }
        let kept = arrow::compute::filter_record_batch(&rows, &keep)
            .map_err(|e| Error::Internal(format!("dropping repeated messages: {e}")))?;
        Ok((kept, repeated))
    }

    /// `batches` without the rows whose message `events` already holds (at its newest
    /// version), and how many each batch lost.
    async fn without_existing(
        &self,
        batches: Vec<RecordBatch>,
    ) -> Result<(Vec<RecordBatch>, Vec<u64>)> {
        let none = vec![0; batches.len()];
        let baseline = self
            .events_before
            .as_ref()
            .ok_or_else(|| Error::Internal("events baseline not opened".into()))?;
        if baseline.version() == 0 || batches.iter().all(|b| b.num_rows() == 0) {
            return Ok((batches, none));
        }
        // Only ids whose fingerprint `events` holds can be there; the table confirms them.
        let known = crate::known_ids::known_ids(self.catalog).await?;
        let known = known
            .as_ref()
            .ok_or_else(|| Error::Internal("message ids not read".into()))?;
        let mut candidates: Vec<String> = Vec::new();
        for batch in &batches {
            candidates.extend(
                event_ids(batch)?
                    .iter()
                    .flatten()
                    .filter(|id| known.may_hold(id))
                    .map(str::to_string),
            );
        }
        if candidates.is_empty() {
            return Ok((batches, none));
        }
        let existing = self
            .existing_keys(known.table(), &["event_id"], vec![candidates], None)
            .await?;
        let existing: HashSet<&str> = existing
            .keys()
            .filter_map(|k| k.first().map(String::as_str))
            .collect();
        if existing.is_empty() {
            return Ok((batches, none));
        }
        let mut fresh = Vec::with_capacity(batches.len());
        let mut lost = Vec::with_capacity(batches.len());
        for batch in &batches {
            let keep: BooleanArray = event_ids(batch)?
                .iter()
                .map(|id| Some(!id.is_some_and(|id| existing.contains(id))))
                .collect();
            let kept = arrow::compute::filter_record_batch(batch, &keep)
                .map_err(|e| Error::Internal(format!("dropping duplicates: {e}")))?;
            lost.push((batch.num_rows() - kept.num_rows()) as u64);
            fresh.push(kept);
        }
        Ok((fresh, lost))
    }

    /// Waits for the running `events` commit, if any, and records its version.
    async fn events_committed(&mut self) -> Result<()> {
        if let Some(commit) = self.events_commit.take() {
            let version = commit
                .await
                .map_err(|e| Error::Internal(format!("committing events: {e}")))??;
            self.versions.insert("events".into(), version);
        }
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
        let orders = self.table("orders").await?;
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
        let mut table = self.table("orders").await?;
        let batch = orders_batch(
            &table.schema()?,
            &changed,
            file,
            self.clock.received_at.timestamp_micros(),
        )?;
        let outcome = table
            .merge(vec![batch], &["platform", "order_id"], self.note())
            .await?;
        self.keep(table);
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
        count_rejected(counts, &rejected);
        let mut table = self.table("quarantine").await?;
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
        self.compact_if_many(&mut table).await?;
        self.keep(table);
        self.versions.insert("quarantine".into(), version);
        Ok(())
    }

    async fn record_batch(&mut self, report: &BatchReport, started: DateTime<Utc>) -> Result<()> {
        let mut table = self.table("batches").await?;
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
        self.compact_if_many(&mut table).await?;
        self.keep(table);
        Ok(())
    }

    fn note(&self) -> CommitNote {
        CommitNote::new("batch_id", self.batch_id.as_str()).with("source", self.kind.name())
    }
}

/// Cleaned rows and rejections of one source waiting for their chunk to fill.
struct Pending {
    chunk: usize,
    batches: Vec<RecordBatch>,
    rows: usize,
    /// Arrow memory of `batches`.
    bytes: usize,
    rejected: Vec<Rejected>,
    counts: Counts,
}

impl Pending {
    fn new(chunk: usize) -> Self {
        Pending {
            chunk,
            batches: Vec::new(),
            rows: 0,
            bytes: 0,
            rejected: Vec::new(),
            counts: Counts::default(),
        }
    }
}

/// Records per part of a Segment source: each part is cleaned into one Arrow batch.
const PART_ROWS: usize = 8192;

/// What a run of consecutive records of a Segment source became.
struct Part {
    /// Records read (blank lines are not records).
    received: u64,
    /// Bytes of the file they were read from (0 when not read from a file whole).
    bytes: usize,
    /// The clean rows, in record order, in the `events` schema.
    rows: RecordBatch,
    /// The fingerprint of each row's message id.
    fingerprints: Vec<u128>,
    /// Clean records left out as repeats of a message cleaned just before (see
    /// [`RecentIds`]): duplicates.
    repeated: u64,
    /// Records for quarantine.
    rejected: Vec<Rejected>,
    /// Lines (blank ones included) of a run of a file; 0 for records not read as lines.
    lines: usize,
    /// For a run of a file, the line of each record of `rejected` counted from the run's
    /// first (0): their locations are written once the run's place in the file is known
    /// ([`Part::number`]), so the reader need not count the lines of each run ahead of its
    /// worker.
    rejected_lines: Vec<usize>,
}

impl Part {
    /// Writes the locations of the rejected records of a run of `label` whose first line is
    /// line `first` of the file.
    fn number(&mut self, first: usize, label: &str) {
        for (rejected, line) in self.rejected.iter_mut().zip(&self.rejected_lines) {
            rejected.location = Where::Line(first + line).text(label);
        }
        self.rejected_lines.clear();
    }
}

/// Slots of [`RecentIds`]: a repeat a few hundred lines after its first copy is nearly
/// always still there.
const RECENT_SLOTS: usize = 4096;

/// The fingerprints of the last messages a cleaner kept, one per slot by their low bits, a
/// newer one taking an older one's slot. A message found here repeats one kept earlier in
/// file order, so it is left out before its row is built. Trackers resend a message within
/// a few dozen lines, so nearly every part then reaches the lander without repeats, and is
/// not copied to leave them out; the repeats this misses (slot taken since, first copy in
/// another worker's run) are left out by the lander's set of every id of the batch.
#[derive(Default)]
struct RecentIds {
    slots: Vec<u128>,
}

impl RecentIds {
    /// Whether `fingerprint` was kept recently; records it if not.
    fn repeats(&mut self, fingerprint: u128) -> bool {
        // 0 marks an empty slot; a message with that fingerprint is left to the lander.
        if fingerprint == 0 {
            return false;
        }
        if self.slots.is_empty() {
            self.slots = vec![0; RECENT_SLOTS];
        }
        let slot = &mut self.slots[fingerprint as usize % RECENT_SLOTS];
        if *slot == fingerprint {
            return true;
        }
        *slot = fingerprint;
        false
    }
}

/// What a part's records are cleaned with.
struct PartContext<'a> {
    label: &'a str,
    source: &'static str,
    clock: Clock,
    schema: &'a SchemaRef,
}

/// Collects the records of one part.
#[derive(Default)]
struct PartBuilder {
    received: u64,
    rows: EventColumns,
    fingerprints: Vec<u128>,
    repeated: u64,
    recent: RecentIds,
    rejected: Vec<Rejected>,
}

impl PartBuilder {
    fn len(&self) -> usize {
        self.rows.rows + self.rejected.len()
    }

    fn finish(mut self, schema: &SchemaRef) -> Result<Part> {
        Ok(Part {
            received: self.received,
            bytes: 0,
            rows: self.rows.finish(schema)?,
            fingerprints: self.fingerprints,
            repeated: self.repeated,
            rejected: self.rejected,
            lines: 0,
            rejected_lines: Vec::new(),
        })
    }
}

/// The `events` columns of a part, a row appended as soon as it is cleaned.
#[derive(Default)]
struct EventColumns {
    rows: usize,
    event_id: StringBuilder,
    event_name: StringBuilder,
    event_type: StringBuilder,
    event_time: Vec<i64>,
    event_date: Vec<i32>,
    received_at: Vec<i64>,
    anonymous_id: StringBuilder,
    login_id: StringBuilder,
    source: StringBuilder,
    page: StringBuilder,
    item_id: StringBuilder,
    category: StringBuilder,
    price: Decimal128Builder,
    quantity: Int64Builder,
    revenue: Decimal128Builder,
    channel: StringBuilder,
    campaign_id: StringBuilder,
    order_id: StringBuilder,
    properties: StringBuilder,
}

/// The text columns of a part, in the order [`EventColumns::texts`] gives them.
const TEXT_COLUMNS: usize = 13;

/// How much a worker's last part held per byte of the JSON it was cleaned from: rows, and
/// value bytes of each text column. The worker's next part reserves as much up front instead
/// of growing its columns by doubling, a copy each time.
#[derive(Debug, Default)]
struct Room {
    rows: f64,
    bytes: [f64; TEXT_COLUMNS],
}

impl Room {
    /// What `json` bytes of messages will hold at `per_byte`, and a tenth more, so a part a
    /// little fuller than the last does not grow.
    fn foresee(per_byte: f64, json: usize) -> usize {
        (per_byte * json as f64 * 1.1) as usize
    }
}

impl EventColumns {
    /// Columns with room for the rows of `json` bytes of messages, as `room` foresees.
    fn with_room(room: &Room, json: usize) -> Self {
        let foresee = |per_byte: f64| Room::foresee(per_byte, json);
        let rows = foresee(room.rows);
        let text = |i: usize| StringBuilder::with_capacity(rows, foresee(room.bytes[i]));
        EventColumns {
            rows: 0,
            event_id: text(0),
            event_name: text(1),
            event_type: text(2),
            event_time: Vec::with_capacity(rows),
            event_date: Vec::with_capacity(rows),
            received_at: Vec::with_capacity(rows),
            anonymous_id: text(3),
            login_id: text(4),
            source: text(5),
            page: text(6),
            item_id: text(7),
            category: text(8),
            price: Decimal128Builder::with_capacity(rows),
            quantity: Int64Builder::with_capacity(rows),
            revenue: Decimal128Builder::with_capacity(rows),
            channel: text(9),
            campaign_id: text(10),
            order_id: text(11),
            properties: text(12),
        }
    }

    /// The text columns, in the order of [`EventColumns::with_room`].
    fn texts(&self) -> [&StringBuilder; TEXT_COLUMNS] {
        [
            &self.event_id,
            &self.event_name,
            &self.event_type,
            &self.anonymous_id,
            &self.login_id,
            &self.source,
            &self.page,
            &self.item_id,
            &self.category,
            &self.channel,
            &self.campaign_id,
            &self.order_id,
            &self.properties,
        ]
    }

    /// Records in `room` what these columns hold per byte of the `json` they came from.
    fn measure(&self, room: &mut Room, json: usize) {
        let json = json.max(1) as f64;
        room.rows = self.rows as f64 / json;
        for (slot, column) in room.bytes.iter_mut().zip(self.texts()) {
            *slot = column.values_slice().len() as f64 / json;
        }
    }

    fn push(&mut self, row: &EventRow, source: &str) {
        self.rows += 1;
        self.event_id.append_value(&row.event_id);
        self.event_name.append_value(&row.event_name);
        self.event_type.append_value(row.event_type);
        self.event_time.push(row.event_time);
        self.event_date.push(row.event_date);
        self.received_at.push(row.received_at);
        self.anonymous_id.append_option(row.anonymous_id.as_deref());
        self.login_id.append_option(row.login_id.as_deref());
        self.source.append_value(source);
        self.page.append_option(row.page.as_deref());
        self.item_id.append_option(row.item_id.as_deref());
        self.category.append_option(row.category.as_deref());
        self.price.append_option(row.price.map(i128::from));
        self.quantity.append_option(row.quantity);
        self.revenue.append_option(row.revenue.map(i128::from));
        self.channel.append_option(row.channel.as_deref());
        self.campaign_id.append_option(row.campaign_id.as_deref());
        self.order_id.append_option(row.order_id.as_deref());
        self.properties.append_option(row.properties.as_deref());
    }

    /// The rows as a batch of `schema` (columns it has that events do not are null).
    fn finish(&mut self, schema: &SchemaRef) -> Result<RecordBatch> {
        build(schema, self.rows, |name| -> Option<ArrayRef> {
            Some(match name {
                "event_id" => Arc::new(self.event_id.finish()),
                "event_name" => Arc::new(self.event_name.finish()),
                "event_type" => Arc::new(self.event_type.finish()),
                "event_time" => timestamps(std::mem::take(&mut self.event_time)),
                "event_date" => Arc::new(Date32Array::from(std::mem::take(&mut self.event_date))),
                "received_at" => timestamps(std::mem::take(&mut self.received_at)),
                "anonymous_id" => Arc::new(self.anonymous_id.finish()),
                "login_id" => Arc::new(self.login_id.finish()),
                "source" => Arc::new(self.source.finish()),
                "page" => Arc::new(self.page.finish()),
                "item_id" => Arc::new(self.item_id.finish()),
                "category" => Arc::new(self.category.finish()),
                "price" => amounts(self.price.finish())?,
                "quantity" => Arc::new(self.quantity.finish()),
                "revenue" => amounts(self.revenue.finish())?,
                "channel" => Arc::new(self.channel.finish()),
                "campaign_id" => Arc::new(self.campaign_id.finish()),
                "order_id" => Arc::new(self.order_id.finish()),
                "properties" => Arc::new(self.properties.finish()),
                _ => return None,
            })
        })
    }
}

/// The `event_id` column of an `events` batch.
fn event_ids(batch: &RecordBatch) -> Result<&StringArray> {
    batch
        .column_by_name("event_id")
        .and_then(|c| c.as_any().downcast_ref::<StringArray>())
        .ok_or_else(|| Error::Internal("events batch without a text event_id".into()))
}

impl PartBuilder {
    /// Cleans one Segment record.
    fn record(&mut self, location: Where, record: Item, label: &str, source: &str, clock: Clock) {
        match record {
            Item::Line(line) => {
                self.line(&line, || location.text(label), source, clock);
            }
            Item::Broken { raw, rejection } => {
                self.received += 1;
                self.rejected.push(Rejected {
                    location: location.text(label),
                    rejection,
                    raw,
                });
            }
        }
    }

    /// Cleans one line of JSON; `location` names it if it is quarantined. Blank lines are
    /// not records. Whether the line was quarantined.
    fn line(
        &mut self,
        line: &[u8],
        location: impl FnOnce() -> String,
        source: &str,
        clock: Clock,
    ) -> bool {
        match simdutf8::basic::from_utf8(line) {
            Ok(text) => self.text_line(text, location, source, clock),
            Err(_) => {
                let text = String::from_utf8_lossy(line);
                let text = text.trim_end_matches('\r');
                self.received += 1;
                self.rejected.push(Rejected {
                    location: location(),
                    rejection: Rejection::new(reason::INVALID_JSON, "line is not valid UTF-8"),
                    raw: text.to_string(),
                });
                true
            }
        }
    }

    /// [`PartBuilder::line`] for a line known to be UTF-8.
    fn text_line(
        &mut self,
        text: &str,
        location: impl FnOnce() -> String,
        source: &str,
        clock: Clock,
    ) -> bool {
        let text = text.trim_end_matches('\r');
        if text.trim().is_empty() {
            return false;
        }
        self.received += 1;
        match segment::parse_line(text, clock) {
            Ok(row) => {
                let fingerprint = twox_hash::XxHash3_128::oneshot(row.event_id.as_bytes());
                if self.recent.repeats(fingerprint) {
                    self.repeated += 1;
                } else {
                    self.fingerprints.push(fingerprint);
                    self.rows.push(&row, source);
                }
                false
            }
            Err(rejection) => {
                self.rejected.push(Rejected {
                    location: location(),
                    rejection,
                    raw: text.to_string(),
                });
                true
            }
        }
    }
}

/// Bytes read per block of a JSON-lines file (a block is extended to the end of its last line).
const BLOCK_BYTES: usize = 4 << 20;

/// Cleans a run of whole lines of a file into one part, its rejected records numbered from
/// the run's first line (see [`Part::number`]). The run is checked to be UTF-8 at once, and
/// its lines one by one only when it is not.
fn clean_lines(text: &[u8], context: &PartContext, room: &mut Room) -> Result<Part> {
    let mut builder = PartBuilder {
        rows: EventColumns::with_room(room, text.len()),
        fingerprints: Vec::with_capacity(Room::foresee(room.rows, text.len())),
        ..PartBuilder::default()
    };
    let whole = simdutf8::basic::from_utf8(text).ok();
    let unfinished = text.last().is_some_and(|b| *b != b'\n');
    let ends = memchr::memchr_iter(b'\n', text).chain(unfinished.then_some(text.len()));
    let mut rejected_lines = Vec::new();
    let mut from = 0;
    let mut lines = 0;
    for end in ends {
        // Lines end at an ASCII newline, so they are cut at character boundaries.
        let rejected = match whole.and_then(|whole| whole.get(from..end)) {
            Some(line) => builder.text_line(line, String::new, context.source, context.clock),
            None => builder.line(&text[from..end], String::new, context.source, context.clock),
        };
        if rejected {
            rejected_lines.push(lines);
        }
        from = end + 1;
        lines += 1;
    }
    builder.rows.measure(room, text.len());
    let mut part = builder.finish(context.schema)?;
    part.bytes = text.len();
    part.lines = lines;
    part.rejected_lines = rejected_lines;
    Ok(part)
}

/// Runs of lines cleaned or waiting to be, at most, and their parts not yet sent on: the
/// reader stops reading ahead there, so memory holds a few blocks whatever the file size.
const RUNS_IN_FLIGHT: usize = 8;

/// Bytes of lines per run a worker cleans at a time (a run ends with its last whole line).
const RUN_BYTES: usize = 2 << 20;

/// Reads `file` in blocks of whole lines and sends the cleaned records, in file order. Each
/// block is cut into runs of about [`RUN_BYTES`]; workers, one per core and living as long as
/// the file (so their memory is reused), take the next run as soon as they are done with one,
/// and the reader puts their parts back in file order. No worker waits for another to finish
/// its share of a block: when one is held up (a core lent to a commit's encoding), the others
/// go on with the runs queued behind. The next block is read while the workers clean. Stops
/// quietly when the receiver is gone.
fn clean_json_blocks(
    file: &Path,
    context: &PartContext,
    tx: &tokio::sync::mpsc::Sender<Result<Part>>,
) -> Result<()> {
    let label = context.label;
    let mut reader = std::fs::File::open(file).map_err(|e| Error::io(file, e))?;
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    let failed = || Error::Internal(format!("cleaning {label}: a worker failed"));
    let (job_tx, job_rx) = std::sync::mpsc::channel::<Job>();
    let job_rx = std::sync::Mutex::new(job_rx);
    std::thread::scope(|scope| {
        let (part_tx, part_rx) = std::sync::mpsc::channel::<(usize, Result<Part>)>();
        for _ in 0..workers {
            let (job_rx, part_tx) = (&job_rx, part_tx.clone());
            scope.spawn(move || {
                let mut room = Room::default();
                loop {
                    // The lock is held only while waiting for a run, never while cleaning.
                    let job = match job_rx.lock() {
                        Ok(jobs) => jobs.recv(),
                        Err(_) => return,
                    };
                    let Ok(Job {
                        run,
                        block,
                        lines,
                        at,
                    }) = job
                    else {
                        return;
                    };
                    // A worker that panicked would leave its run unanswered and the
                    // reader waiting for it: its run fails instead.
                    let part = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        clean_lines(&block[lines], context, &mut room)
                    }))
                    .unwrap_or_else(|_| {
                        Err(Error::Internal(format!(
                            "cleaning {label}: a worker failed on the lines from byte {at}"
                        )))
                    });
                    // The block goes back to the reader before its part is answered.
                    drop(block);
                    if part_tx.send((run, part)).is_err() {
                        return;
                    }
                }
            });
        }
        drop(part_tx);
        let mut parts = InOrder::new(part_rx, tx, label);
        // Blocks being read or cleaned, reused once their runs are done with them. The
        // unfinished line at the end of a block starts the next one.
        let mut buffers: Vec<Arc<Vec<u8>>> = Vec::new();
        let mut carry: Vec<u8> = Vec::new();
        // Where the block being read starts in the file (with the carried text).
        let mut block_at = 0u64;
        let mut first = true;
        let mut runs = 0usize;
        loop {
            // Room for this block's runs before it is read.
            while runs - parts.sent >= RUNS_IN_FLIGHT {
                if !parts.wait_one(&failed)? {
                    return Ok(());
                }
            }
            let slot = match buffers.iter().position(|b| Arc::strong_count(b) == 1) {
                Some(slot) => slot,
                None => {
                    buffers.push(Arc::new(Vec::new()));
                    buffers.len() - 1
                }
            };
            let buffer = Arc::make_mut(&mut buffers[slot]);
            let carried = carry.len();
            if buffer.len() < carried + BLOCK_BYTES {
                buffer.resize(carried + BLOCK_BYTES, 0);
            }
            buffer[..carried].copy_from_slice(&carry);
            let mut filled = carried;
            while filled < carried + BLOCK_BYTES {
                match reader.read(&mut buffer[filled..carried + BLOCK_BYTES]) {
                    Ok(0) => break,
                    Ok(n) => filled += n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(Error::io(file, e)),
                }
            }
            let eof = filled < carried + BLOCK_BYTES;
            let start = if first && buffer[..filled].starts_with(b"\xef\xbb\xbf") {
                3
            } else {
                0
            };
            // The block ends with its last whole line; a line longer than a block makes the
            // carried text grow until it ends.
            let end = if eof {
                filled
            } else {
                match memchr::memrchr(b'\n', &buffer[start..filled]) {
                    Some(i) => start + i + 1,
                    None => {
                        carry.clear();
                        carry.extend_from_slice(&buffer[..filled]);
                        continue;
                    }
                }
            };
            first = false;
            carry.clear();
            carry.extend_from_slice(&buffer[end..filled]);
            // Cut the block into runs of whole lines and queue them.
            let block = &buffers[slot][start..end];
            let count = block.len().div_ceil(RUN_BYTES).max(1);
            let mut from = 0;
            for run in 0..count {
                if from == block.len() {
                    break;
                }
                let target = from + (block.len() - from).div_ceil(count - run);
                let to = if target >= block.len() {
                    block.len()
                } else {
                    memchr::memchr(b'\n', &block[target - 1..]).map_or(block.len(), |i| target + i)
                };
                job_tx
                    .send(Job {
                        run: runs,
                        block: buffers[slot].clone(),
                        lines: start + from..start + to,
                        at: block_at + (start + from) as u64,
                    })
                    .map_err(|_| failed())?;
                runs += 1;
                from = to;
            }
            block_at += end as u64;
            if !parts.send_ready() {
                return Ok(());
            }
            if eof {
                break;
            }
        }
        drop(job_tx);
        while parts.sent < runs {
            if !parts.wait_one(&failed)? {
                return Ok(());
            }
        }
        Ok(())
    })
}

/// A run of lines for a cleaning worker: its place in the file's runs, the block holding
/// it, where the lines are in the block, and where they start in the file (bytes).
struct Job {
    run: usize,
    block: Arc<Vec<u8>>,
    lines: std::ops::Range<usize>,
    at: u64,
}

/// Parts answered by the workers in any order, sent on in the order of their runs, their
/// rejected records numbered by their lines in the file `label`.
struct InOrder<'a> {
    answers: std::sync::mpsc::Receiver<(usize, Result<Part>)>,
    tx: &'a tokio::sync::mpsc::Sender<Result<Part>>,
    label: &'a str,
    /// Parts answered ahead of one still being cleaned, by run.
    early: BTreeMap<usize, Result<Part>>,
    /// Runs whose parts were sent on.
    sent: usize,
    /// The number of the first line of the next run to send.
    next_line: usize,
}

impl<'a> InOrder<'a> {
    fn new(
        answers: std::sync::mpsc::Receiver<(usize, Result<Part>)>,
        tx: &'a tokio::sync::mpsc::Sender<Result<Part>>,
        label: &'a str,
    ) -> Self {
        InOrder {
            answers,
            tx,
            label,
            early: BTreeMap::new(),
            sent: 0,
            next_line: 1,
        }
    }

    /// Waits for one answer, then sends on what is in order. False when the receiver is gone.
    fn wait_one(&mut self, failed: &dyn Fn() -> Error) -> Result<bool> {
        let (run, part) = self.answers.recv().map_err(|_| failed())?;
        self.early.insert(run, part);
        Ok(self.send_ready())
    }

    /// Sends on the parts answered so far that are next in order. False when the receiver
    /// is gone.
    fn send_ready(&mut self) -> bool {
        // A worker gone too soon shows when its part is waited for.
        while let Ok((run, part)) = self.answers.try_recv() {
            self.early.insert(run, part);
        }
        while let Some(mut part) = self.early.remove(&self.sent) {
            if let Ok(part) = &mut part {
                part.number(self.next_line, self.label);
                self.next_line += part.lines;
            }
            if self.tx.blocking_send(part).is_err() {
                return false;
            }
            self.sent += 1;
        }
        true
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

/// UTC timestamps from microseconds (`i64` or `Option<i64>`).
fn timestamps<T>(values: Vec<T>) -> ArrayRef
where
    TimestampMicrosecondArray: From<Vec<T>>,
{
    Arc::new(TimestampMicrosecondArray::from(values).with_timezone("UTC"))
}

/// Amounts in the warehouse's decimal type, from fen.
fn decimals(values: Vec<Option<i128>>) -> Option<ArrayRef> {
    amounts(Decimal128Array::from(values))
}

/// Amounts in fen, in the warehouse's decimal type.
fn amounts(values: Decimal128Array) -> Option<ArrayRef> {
    values
        .with_precision_and_scale(DECIMAL_PRECISION, DECIMAL_SCALE)
        .ok()
        .map(|a| Arc::new(a) as ArrayRef)
}

fn texts<'a>(values: impl Iterator<Item = Option<&'a str>> + Clone) -> ArrayRef {
    // Sized first, so the value buffer is allocated once instead of grown.
    let (rows, bytes) = values
        .clone()
        .fold((0, 0), |(n, b), v| (n + 1, b + v.map_or(0, str::len)));
    let mut builder = arrow::array::StringBuilder::with_capacity(rows, bytes);
    for value in values {
        builder.append_option(value);
    }
    Arc::new(builder.finish())
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
            "amount" => decimals(rows.iter().map(|(r, _)| Some(r.amount.into())).collect())?,
            "refund_amount" => decimals(
                rows.iter()
                    .map(|(r, _)| r.refund_amount.map(i128::from))
                    .collect(),
            )?,
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A part told apart by its count of records.
    fn part(received: u64) -> Result<Part> {
        Ok(Part {
            received,
            bytes: 0,
            rows: RecordBatch::new_empty(Arc::new(arrow::datatypes::Schema::empty())),
            fingerprints: Vec::new(),
            repeated: 0,
            rejected: Vec::new(),
            lines: 0,
            rejected_lines: Vec::new(),
        })
    }

    fn sent_so_far(rx: &mut tokio::sync::mpsc::Receiver<Result<Part>>) -> Vec<u64> {
        std::iter::from_fn(|| rx.try_recv().ok())
            .map(|p| p.expect("a part").received)
            .collect()
    }

    fn events_schema() -> SchemaRef {
        shoal_catalog::CatalogDefinition::default_definition()
            .expect("catalog")
            .table("events")
            .expect("events")
            .arrow_schema()
    }

    fn context(schema: &SchemaRef) -> PartContext<'_> {
        PartContext {
            label: "t.jsonl",
            source: "segment",
            clock: Clock {
                received_at: DateTime::parse_from_rfc3339("2026-11-23T00:00:00Z")
                    .expect("time")
                    .with_timezone(&Utc),
                zone: clean::zone_offset("Asia/Shanghai").expect("zone"),
            },
            schema,
        }
    }

    #[test]
    fn rejected_lines_are_numbered_by_their_place_in_the_file_whatever_order_runs_finish_in() {
        let schema = events_schema();
        let context = context(&schema);
        let good = |id: &str| {
            format!(
                r#"{{"type":"track","event":"e","messageId":"{id}","anonymousId":"a1","timestamp":"2026-11-01T10:00:00Z"}}"#
            )
        };
        // Lines 1-4: a blank line 2 (not a record) and a broken line 3.
        let first = format!("{}\n\n{{not json\n{}\n", good("a"), good("b"));
        // Lines 5-8: CRLF, a line that is not UTF-8 (so the run is checked line by line),
        // and a last line without its newline that is not an object.
        let mut second = format!("{}\r\n", good("c")).into_bytes();
        second.extend_from_slice(b"{\"type\":\"track\",\"event\":\"\xff\"}\n");
        second.extend_from_slice(format!("{}\n[1]", good("d")).as_bytes());
        let clean = |run: &[u8]| clean_lines(run, &context, &mut Room::default());

        let (answer, answers) = std::sync::mpsc::channel();
        let (tx, mut rx) = tokio::sync::mpsc::channel(16);
        let mut parts = InOrder::new(answers, &tx, "t.jsonl");
        answer.send((1, clean(&second))).expect("send");
        answer.send((0, clean(first.as_bytes()))).expect("send");
        let failed = || Error::Internal("a worker failed".into());
        assert!(parts.wait_one(&failed).expect("waited"));
        assert!(parts.send_ready());
        let sent: Vec<Part> = std::iter::from_fn(|| rx.try_recv().ok())
            .map(|p| p.expect("a part"))
            .collect();
        assert_eq!(sent.iter().map(|p| p.lines).collect::<Vec<_>>(), [4, 4]);
        assert_eq!(sent.iter().map(|p| p.received).collect::<Vec<_>>(), [3, 4]);
        assert_eq!(
            sent.iter().map(|p| p.rows.num_rows()).collect::<Vec<_>>(),
            [2, 2],
            "a, b, then c (CRLF) and d land"
        );
        let rejected: Vec<(&str, &str, &str)> = sent
            .iter()
            .flat_map(|p| &p.rejected)
            .map(|r| (r.location.as_str(), r.rejection.code, r.raw.as_str()))
            .collect();
        assert_eq!(
            rejected,
            [
                ("t.jsonl:3", reason::INVALID_JSON, "{not json"),
                (
                    "t.jsonl:6",
                    reason::INVALID_JSON,
                    "{\"type\":\"track\",\"event\":\"\u{fffd}\"}"
                ),
                ("t.jsonl:8", reason::INVALID_JSON, "[1]"),
            ]
        );
        assert!(
            sent[1].rejected[0].rejection.message.contains("UTF-8"),
            "{}",
            sent[1].rejected[0].rejection.message
        );
    }

    #[test]
    fn a_message_repeated_lines_later_keeps_its_first_copy_and_counts_as_a_duplicate() {
        let schema = events_schema();
        let context = context(&schema);
        let message = |id: &str, event: &str| {
            format!(
                r#"{{"type":"track","event":"{event}","messageId":"{id}","anonymousId":"a1","timestamp":"2026-11-01T10:00:00Z"}}"#
            )
        };
        // m1 comes back twice with other contents, m2 once; a bad copy of m3 is quarantined
        // and does not hide the good one after it.
        let lines = [
            message("m1", "first"),
            message("m2", "x"),
            message("m1", "second"),
            r#"{"type":"track","messageId":"m3","anonymousId":"a1"}"#.to_string(),
            message("m3", "y"),
            message("m2", "again"),
            message("m1", "third"),
        ];
        let part =
            clean_lines(lines.join("\n").as_bytes(), &context, &mut Room::default()).expect("part");
        assert_eq!(part.received, 7);
        assert_eq!(part.rejected.len(), 1);
        assert_eq!(part.repeated, 3);
        assert_eq!(part.fingerprints.len(), 3);
        let names = part
            .rows
            .column_by_name("event_name")
            .and_then(|c| c.as_any().downcast_ref::<StringArray>())
            .expect("event names");
        let names: Vec<_> = names.iter().flatten().collect();
        assert_eq!(names, ["first", "x", "y"]);
        let ids = event_ids(&part.rows).expect("ids");
        for (id, fingerprint) in ids.iter().flatten().zip(&part.fingerprints) {
            assert_eq!(*fingerprint, twox_hash::XxHash3_128::oneshot(id.as_bytes()));
        }
    }

    #[test]
    fn recent_ids_find_a_kept_id_until_its_slot_is_taken() {
        let mut recent = RecentIds::default();
        assert!(!recent.repeats(7));
        assert!(recent.repeats(7));
        // Another id of the same slot takes it: 7 is no longer found (the lander finds it).
        let other = 7 + RECENT_SLOTS as u128;
        assert!(!recent.repeats(other));
        assert!(!recent.repeats(7));
        // 0 marks an empty slot and is never found.
        assert!(!recent.repeats(0));
        assert!(!recent.repeats(0));
    }

    #[test]
    fn parts_answered_out_of_order_are_sent_in_run_order() {
        let (answer, answers) = std::sync::mpsc::channel();
        let (tx, mut rx) = tokio::sync::mpsc::channel(16);
        let mut parts = InOrder::new(answers, &tx, "t.jsonl");
        let failed = || Error::Internal("a worker failed".into());
        let answer = |run: usize| answer.send((run, part(run as u64))).expect("send");

        answer(2);
        assert!(parts.wait_one(&failed).expect("waited"));
        assert_eq!(sent_so_far(&mut rx), Vec::<u64>::new(), "run 0 is not in");
        answer(0);
        assert!(parts.wait_one(&failed).expect("waited"));
        assert_eq!(sent_so_far(&mut rx), vec![0]);
        answer(3);
        answer(1);
        assert!(parts.send_ready());
        assert_eq!(sent_so_far(&mut rx), vec![1, 2, 3]);
        assert_eq!(parts.sent, 4);
        answer(5);
        answer(4);
        assert!(parts.wait_one(&failed).expect("waited"));
        assert_eq!(sent_so_far(&mut rx), vec![4, 5]);
    }

    #[test]
    fn a_run_never_answered_is_an_error_and_a_gone_receiver_stops_quietly() {
        let (answer, answers) = std::sync::mpsc::channel();
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let mut parts = InOrder::new(answers, &tx, "t.jsonl");
        let failed = || Error::Internal("a worker failed".into());
        answer.send((1, part(1))).expect("send");
        drop(answer);
        assert!(parts.wait_one(&failed).expect("run 1 came"));
        assert!(parts.wait_one(&failed).is_err(), "run 0 never will");

        let (answer, answers) = std::sync::mpsc::channel();
        let mut parts = InOrder::new(answers, &tx, "t.jsonl");
        drop(rx);
        answer.send((0, part(0))).expect("send");
        assert!(!parts.wait_one(&failed).expect("no error"));
    }
}
