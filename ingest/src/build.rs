//! The build: identity merge, then the wide tables and tag bitmaps, after each ingest.
//!
//! 1. Identity merge (`identity`): every identity's person.
//! 2. `events`: the files holding events without a person, or events of people merged or
//!    split since the last build, are rewritten with the resolved `user_id`, sorted by
//!    (user_id, event_time); other files stay as they are. A day that has gathered too many
//!    files is rewritten whole. The days' (event, day) bitmaps are patched: those people
//!    taken out, the rewritten rows' people put in. `--full` rewrites every day.
//! 3. `orders`: `user_id` set where missing or stale.
//! 4. `users`: one row per person — profile traits (latest non-null by event time, typed by
//!    the catalog's standards; others kept in `traits`), identities, activity, orders, GMV,
//!    windowed event counts and RFM scores as of one day — and its enum/bool bitmaps.
//! 5. `orders_wide`: orders with their buyer's attributes.
//! 6. A row in `builds` with what was done.
//!
//! Every step is idempotent and each commit is atomic, so a build cut short is completed by
//! the next one (events keep `user_id` null until a build resolves them).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{Array, ArrayRef, BinaryArray, Int64Array, Int64Builder, RecordBatch};
use arrow::datatypes::DataType;
use chrono::{DateTime, NaiveDate, Utc};
use datafusion::datasource::MemTable;
use datafusion::prelude::{SessionContext, col, lit};
use datafusion::scalar::ScalarValue;
use roaring::{RoaringBitmap, RoaringTreemap};
use serde::Serialize;
use shoal_catalog::{Catalog, CommitNote, FieldStandard, ValueType};

use crate::columns::{
    UserSet, column, for_each_batch, get, get_int, int_test, ints, rows_of_users, scan, text,
    text_array,
};
use crate::error::{Error, Result};
use crate::identity::{MergeReport, Resolved, merge_identities};

mod buyers;
mod features;
mod held;

/// Rows of `events` rewritten per commit, unless `SHOAL_BUILD_CHUNK_ROWS` says otherwise.
/// Measured on 2.1M events: 2M rows per commit peaked at 3.0 GB and took 8.8 s; 500k rows
/// peaked at 0.96 GB and took 7.2 s.
pub const BUILD_CHUNK_ROWS: usize = 500_000;

/// The event that subscribes to the official account, and the one that leaves it.
pub const FOLLOW_EVENTS: (&str, &str) = ("follow_official_account", "unfollow_official_account");

/// How to build.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// Rewrite every day of `events`, not only those with new or moved rows.
    pub full: bool,
    /// The day windowed counts and RFM recency count back from (default: today in the
    /// catalog's zone).
    pub as_of: Option<NaiveDate>,
}

/// What a build did.
#[derive(Debug, Clone, Serialize)]
pub struct BuildReport {
    /// Build id.
    pub build_id: String,
    /// Whether every day of events was rewritten.
    pub full: bool,
    /// Day the features count back from.
    pub as_of: NaiveDate,
    /// Identity merge.
    pub identity: MergeReport,
    /// Events given a person (were null).
    pub events_resolved: u64,
    /// Events moved to another person (merge or split).
    pub events_moved: u64,
    /// Events left without a person (no known identity; should stay 0).
    pub events_unresolved: u64,
    /// Days of events with files rewritten.
    pub days_rewritten: u64,
    /// Events rewritten (all rows of the files rewritten).
    pub events_rewritten: u64,
    /// Orders whose person was set or changed.
    pub orders_resolved: u64,
    /// Rows of `users`.
    pub users: u64,
    /// Whether only the people touched by this build were recomputed.
    pub users_incremental: bool,
    /// People recomputed when incremental.
    pub users_recomputed: u64,
    /// Rows of `orders_wide`.
    pub orders_wide: u64,
    /// Bitmaps written: (column values, event days).
    pub tag_bitmaps: (u64, u64),
    /// Whether the column bitmaps were patched (the recomputed people's rows put in the
    /// stored ones) rather than built again from every row of `users`.
    pub column_bitmaps_patched: bool,
    /// People outside the recomputed ones whose RFM scores moved (percent ranks among all
    /// buyers shift as buyers come and go): their rows were written again with the new
    /// scores, and their orders in `orders_wide`.
    pub rfm_rescored: u64,
    /// Whether the recomputed people's traits were folded from their stored ones
    /// (`user_traits`) and the identify calls this build resolved, rather than read from
    /// every event of theirs.
    pub traits_folded: bool,
    /// Where the profile traits were folded from: `state` (as for `traits_folded`), `rows`
    /// (the recomputed people's rows of `events`), `calls` (every identify call, met while
    /// `events` was rewritten whole) or `events` (every identify call, read from `events`).
    pub traits_from: &'static str,
    /// Seconds per step (`users.<part>`: from the start of the users step to the end of that part).
    pub seconds: BTreeMap<String, f64>,
    /// Table versions after the build.
    pub versions: BTreeMap<String, u64>,
}

fn chunk_rows() -> usize {
    std::env::var("SHOAL_BUILD_CHUNK_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(BUILD_CHUNK_ROWS)
}

/// Runs a build. `progress` hears (step, done, total).
pub async fn build(
    catalog: &Catalog,
    options: &BuildOptions,
    progress: &mut (dyn FnMut(&str, u64, u64) + Send),
) -> Result<BuildReport> {
    let started = Utc::now();
    let zone = crate::clean::zone_offset(&catalog.definition().time_zone).ok_or_else(|| {
        Error::InvalidOptions(format!(
            "time zone '{}' is not known",
            catalog.definition().time_zone
        ))
    })?;
    let as_of = options
        .as_of
        .unwrap_or_else(|| started.with_timezone(&zone).date_naive());
    let build_id = format!("build-{}", started.format("%Y%m%dT%H%M%S%.6fZ"));
    let ctx = SessionContext::new();
    let mut seconds = BTreeMap::new();
    let mut clock = Instant::now();
    let mut lap = |name: &str, seconds: &mut BTreeMap<String, f64>| {
        seconds.insert(name.to_string(), clock.elapsed().as_secs_f64());
        clock = Instant::now();
    };

    progress("identity", 0, 1);
    let since = last_build_start(catalog, &ctx).await?;
    let (resolved, identity, saving) = merge_identities(catalog, started, &mut seconds).await?;
    let moves = Moves::load(catalog, &ctx, &resolved, since).await?;
    lap("identity", &mut seconds);

    let mut report = BuildReport {
        build_id: build_id.clone(),
        full: options.full,
        as_of,
        identity,
        events_resolved: 0,
        events_moved: 0,
        events_unresolved: 0,
        days_rewritten: 0,
        events_rewritten: 0,
        orders_resolved: 0,
        users: 0,
        users_incremental: false,
        users_recomputed: 0,
        orders_wide: 0,
        tag_bitmaps: (0, 0),
        column_bitmaps_patched: false,
        rfm_rescored: 0,
        traits_folded: false,
        traits_from: "",
        seconds: BTreeMap::new(),
        versions: BTreeMap::new(),
    };
    let note = CommitNote::new("operation", "build").with("build_id", build_id.clone());

    // Windowed counts and RFM count back from `as_of`: a new day (or --full) recomputes
    // everyone; otherwise only the people whose rows or identities changed.
    let incremental = !options.full && users_as_of(catalog, &ctx).await? == Some(as_of);
    // The people whose rows this build resolves or moves, as a bitmap: gathered only for a
    // scoped build, the only one that works with its people one by one.
    let mut affected = RoaringBitmap::new();
    // The identify calls the events step rewrites: a scoped build folds them into the stored
    // traits; a build that rewrites every row of `events` folds them all, without reading
    // `events` again.
    let mut identified = Vec::new();
    progress("orders", 0, 1);
    resolve_orders(
        catalog,
        &ctx,
        &resolved,
        &moves,
        &note,
        &mut report,
        &mut affected,
    )
    .await?;
    lap("orders", &mut seconds);
    // Every buyer's orders, GMV and RFM scores are counted from `orders` while `events` is
    // rewritten.
    let orders = catalog.table("orders").await?;
    let buyers = tokio::spawn(async move { buyers::Buyers::read(&orders).await });
    let written = rewrite_events(
        catalog,
        &ctx,
        &resolved,
        &moves,
        options.full,
        &note,
        &mut report,
        incremental.then_some(&mut affected),
        &mut identified,
        progress,
    )
    .await;
    if written.is_err() {
        buyers.abort();
    }
    let (every_row, day_bitmaps_written) = written?;
    lap("events", &mut seconds);
    progress("users", 0, 1);
    for (from, into) in &moves.merged {
        affected.remove(*from);
        affected.insert(*into);
    }
    affected.extend(moves.split.iter().copied());
    // Only a scoped build works with its people one by one.
    let affected: BTreeSet<i64> = match incremental {
        true => affected.iter().map(i64::from).collect(),
        false => BTreeSet::new(),
    };
    let removed: Vec<i64> = moves.merged.keys().map(|u| i64::from(*u)).collect();
    report.users_incremental = incremental;
    report.users_recomputed = if incremental {
        affected.len() as u64
    } else {
        0
    };
    let scope = incremental.then_some(&affected);
    // A scoped build writes `orders_wide` on a task of its own from the rows `build_users`
    // computed, as soon as they are (the rescored people's orders join: they take the
    // buyer's RFM segment), while `users` and its bitmaps are written.
    let (computed, wide) = match incremental {
        true => {
            let (send, rows) = tokio::sync::oneshot::channel::<Recomputed>();
            let (catalog, note, mut people) = (catalog.clone(), note.clone(), affected.clone());
            let wide = tokio::spawn(async move {
                let mut seconds = BTreeMap::new();
                let Ok(Recomputed { rows, rescored }) = rows.await else {
                    // `build_users` stopped before its rows: its error is the build's.
                    return Ok((0, seconds));
                };
                people.extend(rescored);
                let scope = WideScope {
                    people: &people,
                    rows: &rows,
                    since,
                };
                let written = build_orders_wide(&catalog, Some(scope), &note, &mut seconds).await?;
                Ok::<_, Error>((written, seconds))
            });
            (Some(send), Some(wide))
        }
        false => (None, None),
    };
    let users = build_users(
        catalog,
        &resolved,
        buyers,
        as_of,
        started,
        scope.map(|people| Scope {
            people,
            moves: &moves,
            identified: &identified,
        }),
        every_row.then_some(identified.as_slice()),
        &removed,
        &note,
        &mut report,
        computed,
        day_bitmaps_written,
    )
    .await;
    if users.is_err()
        && let Some(wide) = &wide
    {
        wide.abort();
    }
    users?;
    lap("users", &mut seconds);
    progress("orders_wide", 0, 1);
    report.orders_wide = match wide {
        Some(wide) => {
            let (written, wide_seconds) = wide
                .await
                .map_err(|e| Error::Internal(format!("writing orders_wide: {e}")))??;
            seconds.extend(wide_seconds);
            written
        }
        None => build_orders_wide(catalog, None, &note, &mut seconds).await?,
    };
    lap("orders_wide", &mut seconds);
    // Usually saved long before: waited for so the next build finds it.
    saving.finish().await;
    lap("identity_saved", &mut seconds);

    for name in [
        "events",
        "orders",
        "users",
        "orders_wide",
        "identity_links",
        "tag_bitmaps",
    ] {
        report
            .versions
            .insert(name.to_string(), catalog.table(name).await?.version());
    }
    report.seconds.extend(seconds);
    let finished = Utc::now();
    let json = serde_json::to_string(&report)
        .map_err(|e| Error::Internal(format!("build report: {e}")))?;
    let row = RecordBatch::try_from_iter(vec![
        ("build_id", text_array([Some(build_id.as_str())])),
        ("started_at", times(vec![started.timestamp_micros()])),
        ("finished_at", times(vec![finished.timestamp_micros()])),
        (
            "full",
            Arc::new(arrow::array::BooleanArray::from(vec![options.full])) as ArrayRef,
        ),
        ("report", text_array([Some(json.as_str())])),
    ])?;
    catalog
        .table("builds")
        .await?
        .append(vec![row], note)
        .await?;
    progress("done", 1, 1);
    Ok(report)
}

/// Whether a build with `options` rewrites every row of `events` and every person: `--full`,
/// or no build has finished yet. Such a build holds its largest structures at once (every
/// identity seen, a chunk of days of events), where an incremental one holds a few.
pub async fn rewrites_everything(catalog: &Catalog, options: &BuildOptions) -> Result<bool> {
    if options.full {
        return Ok(true);
    }
    Ok(catalog.table("builds").await?.data_files()?.is_empty())
}

/// Whether events or orders are waiting for a person (a build has work to do). Orders that
/// no identity names (a guest checkout) stay without one: only those landed or changed since
/// the last build started count.
pub async fn has_unresolved(catalog: &Catalog) -> Result<bool> {
    let ctx = SessionContext::new();
    let since = last_build_start(catalog, &ctx).await?;
    for table in ["events", "orders"] {
        let t = catalog.table(table).await?;
        let mut waiting = col("user_id").is_null();
        if let (Some(since), "orders") = (since, table) {
            waiting = waiting.and(
                col("updated_at").gt_eq(lit(ScalarValue::TimestampMicrosecond(
                    Some(since),
                    Some("UTC".into()),
                ))),
            );
        }
        let waiting = ctx
            .read_table(t.provider().await?)?
            .filter(waiting)?
            .limit(0, Some(1))?
            .count()
            .await?;
        if waiting > 0 {
            return Ok(true);
        }
    }
    Ok(false)
}

fn times(values: Vec<i64>) -> ArrayRef {
    Arc::new(arrow::array::TimestampMicrosecondArray::from(values).with_timezone("UTC"))
}

async fn users_as_of(catalog: &Catalog, ctx: &SessionContext) -> Result<Option<NaiveDate>> {
    let users = catalog.table("users").await?;
    let batches = ctx
        .read_table(users.provider().await?)?
        .aggregate(
            vec![],
            vec![datafusion::functions_aggregate::expr_fn::max(col("features_as_of")).alias("d")],
        )?
        .collect()
        .await?;
    let epoch = NaiveDate::from_ymd_opt(1970, 1, 1).unwrap_or_default();
    let mut out = None;
    for b in &batches {
        if let Some(d) = get_int(&ints(b, "d")?, 0) {
            out = Some(epoch + chrono::Duration::days(d));
        }
    }
    Ok(out)
}

async fn last_build_start(catalog: &Catalog, ctx: &SessionContext) -> Result<Option<i64>> {
    let builds = catalog.table("builds").await?;
    let batches = ctx
        .read_table(builds.provider().await?)?
        .aggregate(
            vec![],
            vec![datafusion::functions_aggregate::expr_fn::max(col("started_at")).alias("s")],
        )?
        .collect()
        .await?;
    let mut out = None;
    for b in &batches {
        out = get_int(&ints(b, "s")?, 0).or(out);
    }
    Ok(out)
}

/// People whose rows must move: merged away (to their survivor) or split (look up again).
struct Moves {
    merged: HashMap<u32, u32>,
    split: HashSet<u32>,
}

impl Moves {
    async fn load(
        catalog: &Catalog,
        ctx: &SessionContext,
        resolved: &Resolved,
        since: Option<i64>,
    ) -> Result<Moves> {
        let mut merged = resolved.merged.clone();
        let mut split = HashSet::new();
        // Merges and splits logged since the last build started (by a build cut short, or by
        // `identity unlink`) still have rows to move.
        if let Some(since) = since {
            let filter = col("at").gt_eq(lit(ScalarValue::TimestampMicrosecond(
                Some(since),
                Some("UTC".into()),
            )));
            for m in crate::identity::merge_log(catalog, ctx, Some(filter)).await? {
                if m.kind == "split" {
                    split.insert(m.from);
                } else {
                    merged.entry(m.from).or_insert(m.into);
                }
            }
        }
        // Follow chains (a → b → c) to the survivor.
        let keys: Vec<u32> = merged.keys().copied().collect();
        for k in keys {
            let mut target = merged[&k];
            for _ in 0..64 {
                match merged.get(&target) {
                    Some(&next) if next != target => target = next,
                    _ => break,
                }
            }
            merged.insert(k, target);
        }
        Ok(Moves { merged, split })
    }

    fn touched(&self) -> Vec<i64> {
        let mut out: Vec<i64> = self
            .merged
            .keys()
            .chain(self.split.iter())
            .map(|u| i64::from(*u))
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }

    /// The person of a row now: `current` if still right, else looked up by `lookup`.
    fn resolve(&self, current: Option<i64>, lookup: impl FnOnce() -> Option<u32>) -> Step {
        match current {
            Some(u) if !self.split.contains(&(u as u32)) => match self.merged.get(&(u as u32)) {
                Some(into) => Step::Moved(*into),
                None => Step::Kept(u as u32),
            },
            Some(u) => match lookup() {
                Some(n) if n != u as u32 => Step::Moved(n),
                Some(n) => Step::Kept(n),
                None => Step::Kept(u as u32),
            },
            None => match lookup() {
                Some(n) => Step::Resolved(n),
                None => Step::Unresolved,
            },
        }
    }
}

enum Step {
    Kept(u32),
    Moved(u32),
    Resolved(u32),
    Unresolved,
}

impl Step {
    fn user(&self) -> Option<i64> {
        match self {
            Step::Kept(u) | Step::Moved(u) | Step::Resolved(u) => Some(i64::from(*u)),
            Step::Unresolved => None,
        }
    }
}

fn stale_filter(moves: &Moves) -> datafusion::prelude::Expr {
    let touched = moves.touched();
    let mut filter = col("user_id").is_null();
    if !touched.is_empty() {
        filter = filter.or(col("user_id").in_list(touched.into_iter().map(lit).collect(), false));
    }
    filter
}

/// Rows of `frame` (over `events`) per `event_date`, as days since the epoch.
async fn rows_per_day(frame: datafusion::prelude::DataFrame) -> Result<BTreeMap<i32, u64>> {
    let count = datafusion::functions_aggregate::expr_fn::count(lit(1)).alias("n");
    let mut out = BTreeMap::new();
    for b in frame
        .aggregate(vec![col("event_date")], vec![count])?
        .collect()
        .await?
    {
        let (d, n) = (ints(&b, "event_date")?, ints(&b, "n")?);
        for i in 0..b.num_rows() {
            if let (Some(d), Some(n)) = (get_int(&d, i), get_int(&n, i)) {
                out.insert(d as i32, n as u64);
            }
        }
    }
    Ok(out)
}

/// Rows per file a day of `events` is written in.
const EVENT_FILE_ROWS: usize = 262_144;

/// Files a day of `events` may hold beyond those its rows need before an incremental build
/// rewrites the day whole, into one sorted run, unless `SHOAL_DAY_SPARE_FILES` says otherwise.
pub const DAY_SPARE_FILES: usize = 8;

fn day_spare_files() -> usize {
    std::env::var("SHOAL_DAY_SPARE_FILES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DAY_SPARE_FILES)
}

#[allow(clippy::too_many_arguments)]
async fn rewrite_events(
    catalog: &Catalog,
    ctx: &SessionContext,
    resolved: &Resolved,
    moves: &Moves,
    full: bool,
    note: &CommitNote,
    report: &mut BuildReport,
    mut affected: Option<&mut RoaringBitmap>,
    identified: &mut Vec<RecordBatch>,
    progress: &mut (dyn FnMut(&str, u64, u64) + Send),
) -> Result<(bool, DayBitmapsWritten)> {
    let mut events = catalog.table("events").await?;
    let rewritten_before = report.events_rewritten;
    let live_rows: u64;
    let day_bitmaps = if full {
        let frame = ctx.read_table(events.provider().await?)?;
        let all_days = rows_per_day(frame).await?;
        live_rows = all_days.values().sum();
        rewrite_days(
            &mut events,
            &all_days,
            resolved,
            moves,
            note,
            report,
            affected.as_deref_mut(),
            identified,
            progress,
        )
        .await?
    } else {
        let clock = Instant::now();
        let lap = |name: &str, report: &mut BuildReport| {
            report
                .seconds
                .insert(format!("events.{name}"), clock.elapsed().as_secs_f64());
        };
        let stale = stale_files(&events, moves).await?;
        live_rows = stale.rows.iter().sum();
        lap("stale", report);
        // Days all of whose files change (new days, a first build) are rewritten whole,
        // each commit overlapping the next chunk's work; on the others, only their files.
        let mut bitmaps = rewrite_days(
            &mut events,
            &stale.whole_days,
            resolved,
            moves,
            note,
            report,
            affected.as_deref_mut(),
            identified,
            progress,
        )
        .await?;
        lap("days", report);
        let changed = rewrite_stale_files(
            &mut events,
            stale,
            resolved,
            moves,
            note,
            report,
            affected,
            identified,
            progress,
        )
        .await?;
        lap("files", report);
        bitmaps
            .maps
            .extend(patch_day_bitmaps(catalog, moves, changed).await?.maps);
        lap("patched", report);
        bitmaps
    };
    progress("events", 1, 1);
    let source_version = events.version();
    // The (event, day) bitmaps are merged on a task of their own while `users` is built,
    // which writes its column bitmaps to the same table once they are in.
    let mut written = None;
    if !day_bitmaps.is_empty() {
        report.tag_bitmaps.1 = day_bitmaps.len() as u64;
        let mut tags = catalog.table("tag_bitmaps").await?;
        let batch = day_bitmaps.batch("event_day", source_version)?;
        let note = note.clone();
        written = Some(tokio::spawn(async move {
            tags.merge(vec![batch], &["kind", "name", "value"], note)
                .await?;
            Ok(())
        }));
    }
    // Each row is read once, so as many rows rewritten as live means all of them.
    Ok((
        report.events_rewritten - rewritten_before == live_rows,
        written,
    ))
}

/// Rewrites `days` (with their row counts) of `events` whole, resolved and sorted, in commits
/// of about `chunk_rows` rows; gives back the days' (event, day) bitmaps.
#[allow(clippy::too_many_arguments)]
async fn rewrite_days(
    events: &mut shoal_catalog::Table,
    days: &BTreeMap<i32, u64>,
    resolved: &Resolved,
    moves: &Moves,
    note: &CommitNote,
    report: &mut BuildReport,
    mut affected: Option<&mut RoaringBitmap>,
    identified: &mut Vec<RecordBatch>,
    progress: &mut (dyn FnMut(&str, u64, u64) + Send),
) -> Result<BitmapRows> {
    let limit = chunk_rows() as u64;
    let mut chunks: Vec<Vec<i32>> = Vec::new();
    let mut rows = 0u64;
    for (&d, &n) in days {
        match chunks.last_mut() {
            Some(chunk) if rows + n <= limit => chunk.push(d),
            _ => {
                chunks.push(vec![d]);
                rows = 0;
            }
        }
        rows += n;
    }
    let total = chunks.len() as u64;
    let mut day_bitmaps = BitmapRows::default();
    // Chunks are read from the table as it was (each commit replaces only its own days), and
    // each is committed while the next one is read, resolved and sorted.
    let schema = events.schema()?;
    // Text read as stored, so rewritten rows need no cast before they are written again.
    let read = SessionContext::new_with_config(shoal_catalog::stored_text_config());
    let before = events.rewrite_provider().await?;
    // The files of each day, as of that read: a chunk's commit removes those of its days.
    let mut day_files: BTreeMap<i32, Vec<shoal_catalog::DataFile>> = BTreeMap::new();
    for file in events.data_files()? {
        if let Some(day) = partition_day(&file) {
            day_files.entry(day).or_default().push(file);
        }
    }
    let mut committing: Option<tokio::task::JoinHandle<Result<shoal_catalog::Table>>> = None;
    for (i, chunk) in chunks.iter().enumerate() {
        progress("events", i as u64, total);
        let dates: Vec<_> = chunk
            .iter()
            .map(|d| lit(ScalarValue::Date32(Some(*d))))
            .collect();
        let predicate = col("event_date").in_list(dates, false);
        let batches = read
            .read_table(before.clone())?
            .filter(predicate)?
            .collect()
            .await?;
        let chunk_rows = resolve_chunk(
            batches,
            Some(&schema),
            resolved,
            moves,
            affected.as_deref_mut(),
        )?;
        chunk_rows.counts.add_to(report);
        let batches = chunk_rows.batches;
        if batches.is_empty() {
            continue;
        }
        identified.extend(chunk_rows.identified);
        report.events_rewritten += batches.iter().map(|b| b.num_rows() as u64).sum::<u64>();
        // Each day's rows are sorted here and gathered into its files by the writers, each
        // file's copy made while others are encoded.
        let mut pieces: Vec<shoal_catalog::FileRows> = Vec::new();
        let days = rows_by_day(&batches)?;
        let batches = Arc::new(batches);
        for (day, mut rows) in days {
            sort_event_rows(&batches, &mut rows)?;
            add_day_bitmaps(&batches, &rows, day, &mut day_bitmaps)?;
            for part in rows.chunks(EVENT_FILE_ROWS) {
                let (batches, part) = (batches.clone(), part.to_vec());
                pieces.push(Box::new(move || {
                    gather(&batches, &part)
                        .map_err(|e| shoal_catalog::Error::Internal(e.to_string()))
                }));
            }
        }
        report.days_rewritten += chunk.len() as u64;
        let remove: Vec<shoal_catalog::DataFile> = chunk
            .iter()
            .flat_map(|d| day_files.remove(d).unwrap_or_default())
            .collect();
        if let Some(previous) = committing.take() {
            *events = joined(previous).await?;
        }
        let note = note.clone();
        let mut table = events.clone();
        committing = Some(tokio::spawn(async move {
            table.replace_files_made(&remove, pieces, note).await?;
            Ok(table)
        }));
    }
    if let Some(last) = committing.take() {
        *events = joined(last).await?;
    }
    Ok(day_bitmaps)
}

/// Days since the epoch of a Delta partition value of `event_date`.
fn partition_day(file: &shoal_catalog::DataFile) -> Option<i32> {
    let text = file.partition.get("event_date")?.as_deref()?;
    let day = NaiveDate::parse_from_str(text, "%Y-%m-%d").ok()?;
    let epoch = NaiveDate::from_ymd_opt(1970, 1, 1)?;
    i32::try_from((day - epoch).num_days()).ok()
}

/// Files of one day of `events` to rewrite (indices into the snapshot's files).
struct DayFiles {
    day: Option<i32>,
    /// Files rewritten whole.
    files: Vec<usize>,
    /// Large files of few stale rows: those rows are marked deleted, the others stay.
    marked: Vec<usize>,
}

/// The files of `events` holding rows waiting for a person or rows of people merged or split
/// since the last build, by day.
struct StaleFiles {
    /// Every file of the snapshot.
    files: Vec<shoal_catalog::DataFile>,
    /// Live rows of each file.
    rows: Vec<u64>,
    /// Positions (among its stored rows) of each file's live stale rows.
    stale: Vec<RoaringTreemap>,
    /// Days where only some files are stale, or where some are only marked, with those files.
    days: BTreeMap<Option<i32>, DayFiles>,
    /// Days to rewrite whole, with their rows: all of their files are stale and none would
    /// be marked, or the day would otherwise hold more than [`DAY_SPARE_FILES`] files beyond
    /// those its rows need.
    whole_days: BTreeMap<i32, u64>,
}

/// Which `events` rows must be rewritten: rows waiting for a person, and rows of people
/// merged or split.
struct Stale {
    touched: UserSet,
}

impl Stale {
    fn new(moves: &Moves) -> Stale {
        Stale {
            touched: UserSet::new(moves.touched()),
        }
    }

    /// Whether a row of person `user` is stale.
    fn test(&self, user: Option<i64>) -> bool {
        user.is_none_or(|u| self.touched.contains(u))
    }
}

/// Whether a file of `rows` live rows, `stale` of them stale, keeps its other rows and has
/// the stale ones marked deleted rather than being rewritten: it is large, and they are few.
fn marks_stale_rows(rows: u64, stale: u64) -> bool {
    rows >= (shoal_catalog::FILE_ROWS / 8) as u64 && stale * 4 <= rows
}

async fn stale_files(events: &shoal_catalog::Table, moves: &Moves) -> Result<StaleFiles> {
    let files = events.data_files()?;
    let stale_row = Stale::new(moves);
    // Only files whose statistics in the log allow a stale row are read: those that may
    // hold rows without a person, and those whose range of people bounds a touched one.
    // Files are sorted by person, so a few touched people pass over most files unread.
    let mut may_hold: HashSet<String> = events
        .data_files_with_nulls("user_id")?
        .into_iter()
        .map(|f| f.path)
        .collect();
    let touched: HashSet<i64> = moves.touched().into_iter().collect();
    if !touched.is_empty() {
        may_hold.extend(
            events
                .data_files_bounding("user_id", &touched)?
                .into_iter()
                .map(|f| f.path),
        );
    }
    let read: Vec<usize> = (0..files.len())
        .filter(|i| files[*i].rows.is_none() || may_hold.contains(&files[*i].path))
        .collect();
    let to_read: Vec<shoal_catalog::DataFile> = read.iter().map(|i| files[*i].clone()).collect();
    let mut seen: Vec<u64> = files.iter().map(|f| f.rows.unwrap_or(0)).collect();
    for i in &read {
        seen[*i] = 0;
    }
    let mut stale = vec![RoaringTreemap::new(); files.len()];
    // Stored rows, so positions are those the files' deletion vectors count in.
    events
        .read_stored_rows(&to_read, Some(&["user_id"]), |k, batch| {
            let i = read[k];
            let users = ints(&batch, "user_id")
                .map_err(|e| shoal_catalog::Error::Internal(e.to_string()))?;
            if users.null_count() > 0 || !stale_row.touched.is_empty() {
                for (j, user) in users.iter().enumerate() {
                    if stale_row.test(user) {
                        stale[i].insert(seen[i] + j as u64);
                    }
                }
            }
            seen[i] += batch.num_rows() as u64;
            Ok(())
        })
        .await?;
    let mut rows = seen;
    for (i, file) in files.iter().enumerate() {
        let Some(dv) = &file.deleted else { continue };
        // The rows a deletion vector marks are counted in it; only stale rows need it read.
        if stale[i].is_empty() {
            rows[i] = rows[i].saturating_sub(dv.cardinality.max(0) as u64);
        } else {
            let deleted = events.deleted_rows(file).await?;
            stale[i] -= &deleted;
            rows[i] = rows[i].saturating_sub(deleted.len());
        }
    }
    let mut by_day: BTreeMap<Option<i32>, Vec<usize>> = BTreeMap::new();
    for (i, file) in files.iter().enumerate() {
        by_day.entry(partition_day(file)).or_default().push(i);
    }
    let mut days = BTreeMap::new();
    let mut whole_days = BTreeMap::new();
    for (day, all) in by_day {
        let some: Vec<usize> = all
            .iter()
            .copied()
            .filter(|i| !stale[*i].is_empty())
            .collect();
        if some.is_empty() {
            continue;
        }
        let (marked, whole): (Vec<usize>, Vec<usize>) = some
            .iter()
            .partition(|i| marks_stale_rows(rows[**i], stale[**i].len()));
        let day_rows: u64 = all.iter().map(|i| rows[*i]).sum();
        let needed = day_rows.div_ceil(EVENT_FILE_ROWS as u64).max(1) as usize;
        let crowded = all.len() - whole.len() + 1 > needed + day_spare_files();
        match day {
            Some(d) if crowded || (whole.len() == all.len()) => {
                whole_days.insert(d, day_rows);
            }
            _ => {
                days.insert(
                    day,
                    DayFiles {
                        day,
                        files: whole,
                        marked,
                    },
                );
            }
        }
    }
    Ok(StaleFiles {
        files,
        rows,
        stale,
        days,
        whole_days,
    })
}

/// Incremental: rewrites only the stale rows of `events` (see [`stale_files`]), resolved and
/// sorted: small files holding them, and files mostly stale, are rewritten whole; in the
/// others, the stale rows are marked deleted. Every other file stays as it is. Commits hold
/// about `chunk_rows` rows each. Gives back the rewritten rows' (event, day) bitmaps.
#[allow(clippy::too_many_arguments)]
async fn rewrite_stale_files(
    events: &mut shoal_catalog::Table,
    stale: StaleFiles,
    resolved: &Resolved,
    moves: &Moves,
    note: &CommitNote,
    report: &mut BuildReport,
    mut affected: Option<&mut RoaringBitmap>,
    identified: &mut Vec<RecordBatch>,
    progress: &mut (dyn FnMut(&str, u64, u64) + Send),
) -> Result<BitmapRows> {
    let StaleFiles {
        files,
        rows,
        stale,
        days,
        ..
    } = stale;
    let chosen = days.into_values();
    let limit = chunk_rows() as u64;
    let mut chunks: Vec<Vec<DayFiles>> = Vec::new();
    let mut held = 0u64;
    for day in chosen {
        let n: u64 = day.files.iter().map(|i| rows[*i]).sum::<u64>()
            + day.marked.iter().map(|i| stale[*i].len()).sum::<u64>();
        match chunks.last_mut() {
            Some(chunk) if held + n <= limit => chunk.push(day),
            _ => {
                chunks.push(vec![day]);
                held = 0;
            }
        }
        held += n;
    }

    let stale_row = Arc::new(Stale::new(moves));
    let schema = events.schema()?;
    let total = chunks.len() as u64;
    let mut rewritten = BitmapRows::default();
    for (c, chunk) in chunks.into_iter().enumerate() {
        progress("events", c as u64, total.max(1));
        let whole: Vec<shoal_catalog::DataFile> = chunk
            .iter()
            .flat_map(|d| d.files.iter().map(|i| files[*i].clone()))
            .collect();
        let marked: Vec<shoal_catalog::DataFile> = chunk
            .iter()
            .flat_map(|d| d.marked.iter().map(|i| files[*i].clone()))
            .collect();
        let mut by_day: BTreeMap<Option<i32>, Vec<RecordBatch>> = BTreeMap::new();
        // The day is the file's partition value, not a column of the file.
        let mut keep = |file: &shoal_catalog::DataFile, batch: RecordBatch| {
            let day = partition_day(file);
            let dates = arrow::array::Date32Array::from(vec![day; batch.num_rows()]);
            let mut fields = batch.schema().fields().to_vec();
            fields.push(Arc::new(arrow::datatypes::Field::new(
                "event_date",
                DataType::Date32,
                true,
            )));
            let mut columns = batch.columns().to_vec();
            columns.push(Arc::new(dates));
            let batch =
                RecordBatch::try_new(Arc::new(arrow::datatypes::Schema::new(fields)), columns)
                    .map_err(|e| shoal_catalog::Error::Internal(e.to_string()))?;
            let batch = shoal_catalog::conform(&batch, &schema)?;
            by_day.entry(day).or_default().push(batch);
            Ok(())
        };
        events
            .read_files(&whole, None, |i, batch| keep(&whole[i], batch))
            .await?;
        if !marked.is_empty() {
            let stale_row = stale_row.clone();
            let test = int_test(move |u| stale_row.test(u));
            events
                .read_files_where(&marked, None, "user_id", test, |i, batch| {
                    keep(&marked[i], batch)
                })
                .await?;
        }
        let mut remove = Vec::new();
        let mut marks = Vec::new();
        let mut pieces: Vec<shoal_catalog::FileRows> = Vec::new();
        for DayFiles {
            day,
            files: indices,
            marked: marked_here,
        } in chunk
        {
            let chunk_rows = resolve_chunk(
                by_day.remove(&day).unwrap_or_default(),
                None,
                resolved,
                moves,
                affected.as_deref_mut(),
            )?;
            chunk_rows.counts.add_to(report);
            if chunk_rows.counts.resolved == 0 && chunk_rows.counts.moved == 0 {
                // Nothing would change: rows still waiting for an identity nobody has yet.
                continue;
            }
            let batches = chunk_rows.batches;
            identified.extend(chunk_rows.identified);
            report.events_rewritten += batches.iter().map(|b| b.num_rows() as u64).sum::<u64>();
            report.days_rewritten += 1;
            remove.extend(indices.iter().map(|i| files[*i].clone()));
            marks.extend(
                marked_here
                    .iter()
                    .map(|i| (files[*i].clone(), stale[*i].clone())),
            );
            // The day's rows are sorted as references and gathered straight into their
            // files by the writers, one copy each, made while others are encoded.
            let mut rows: Vec<RowRef> = batches
                .iter()
                .enumerate()
                .flat_map(|(b, batch)| (0..batch.num_rows() as u32).map(move |i| (b as u32, i)))
                .collect();
            sort_event_rows(&batches, &mut rows)?;
            if let Some(day) = day {
                add_day_bitmaps(&batches, &rows, day, &mut rewritten)?;
            }
            let batches = Arc::new(batches);
            for part in rows.chunks(EVENT_FILE_ROWS) {
                let (batches, part) = (batches.clone(), part.to_vec());
                pieces.push(Box::new(move || {
                    gather(&batches, &part)
                        .map_err(|e| shoal_catalog::Error::Internal(e.to_string()))
                }));
            }
        }
        if !remove.is_empty() || !marks.is_empty() {
            events
                .replace_files_marking_made(&remove, marks, pieces, note.clone())
                .await?;
        }
    }
    Ok(rewritten)
}

/// The `bitmap` column of a batch of `tag_bitmaps`, as binary.
fn bitmap_blobs(batch: &RecordBatch) -> Result<BinaryArray> {
    let blobs = arrow::compute::cast(&column(batch, "bitmap")?, &DataType::Binary)?;
    blobs
        .as_any()
        .downcast_ref::<BinaryArray>()
        .cloned()
        .ok_or_else(|| Error::Internal("tag_bitmaps.bitmap is not binary".into()))
}

/// The stored (event, day) bitmaps of the days in `rewritten`, without the people merged or
/// split since the last build (all of whose rows were rewritten), then with the rewritten
/// rows' people.
async fn patch_day_bitmaps(
    catalog: &Catalog,
    moves: &Moves,
    rewritten: BitmapRows,
) -> Result<BitmapRows> {
    if rewritten.is_empty() {
        return Ok(rewritten);
    }
    let day_texts: BTreeSet<&str> = rewritten.maps.keys().map(|(_, d)| d.as_str()).collect();
    let day_texts: Vec<_> = day_texts.into_iter().map(lit).collect();
    let tags = catalog.table("tag_bitmaps").await?;
    let mut patched = BitmapRows::default();
    let gone: RoaringBitmap = moves.touched().iter().map(|u| *u as u32).collect();
    for_each_batch(
        scan(
            &SessionContext::new(),
            &tags,
            &["name", "value", "bitmap"],
            Some(
                col("kind")
                    .eq(lit("event_day"))
                    .and(col("value").in_list(day_texts, false)),
            ),
        )
        .await?,
        |b| {
            let (names, values) = (text(b, "name")?, text(b, "value")?);
            let blobs = bitmap_blobs(b)?;
            for i in 0..b.num_rows() {
                let (Some(name), Some(value)) = (get(&names, i), get(&values, i)) else {
                    continue;
                };
                if blobs.is_null(i) {
                    continue;
                }
                let bitmap = RoaringBitmap::deserialize_from(blobs.value(i))
                    .map_err(|e| Error::Internal(format!("tag bitmap {name}/{value}: {e}")))?;
                patched
                    .maps
                    .insert((name.to_string(), value.to_string()), bitmap - &gone);
            }
            Ok(())
        },
    )
    .await?;
    for (key, bitmap) in rewritten.maps {
        *patched.maps.entry(key).or_default() |= bitmap;
    }
    Ok(patched)
}

/// The table a spawned commit hands back.
async fn joined(
    commit: tokio::task::JoinHandle<Result<shoal_catalog::Table>>,
) -> Result<shoal_catalog::Table> {
    commit
        .await
        .map_err(|e| Error::Internal(format!("committing events: {e}")))?
}

fn with_column(batch: &RecordBatch, name: &str, column: ArrayRef) -> Result<RecordBatch> {
    let index = batch.schema().index_of(name)?;
    let mut columns = batch.columns().to_vec();
    let wanted = batch.schema().field(index).data_type().clone();
    columns[index] = if column.data_type() == &wanted {
        column
    } else {
        arrow::compute::cast(&column, &wanted)?
    };
    Ok(RecordBatch::try_new(batch.schema(), columns)?)
}

/// How a chunk's rows were resolved, added up across the threads resolving it.
#[derive(Default)]
struct Resolving {
    resolved: u64,
    moved: u64,
    unresolved: u64,
}

impl Resolving {
    fn add(&mut self, other: &Resolving) {
        self.resolved += other.resolved;
        self.moved += other.moved;
        self.unresolved += other.unresolved;
    }

    fn add_to(&self, report: &mut BuildReport) {
        report.events_resolved += self.resolved;
        report.events_moved += self.moved;
        report.events_unresolved += self.unresolved;
    }
}

/// The person of every row of `batch`, counted in `counts`; the people given or moved to
/// are added to `touched` when the build needs them (a scoped build).
fn resolve_events(
    batch: &RecordBatch,
    resolved: &Resolved,
    moves: &Moves,
    counts: &mut Resolving,
    mut touched: Option<&mut RoaringBitmap>,
) -> Result<Int64Array> {
    let current = ints(batch, "user_id")?;
    let ids: Vec<(arrow::array::StringArray, u8)> = resolved
        .rules
        .event_columns()
        .iter()
        .map(|(c, ty)| Ok((text(batch, c)?, *ty)))
        .collect::<Result<_>>()?;
    let mut out = Int64Builder::with_capacity(batch.num_rows());
    for i in 0..batch.num_rows() {
        let step = moves.resolve(get_int(&current, i), || {
            ids.iter()
                .find_map(|(array, ty)| get(array, i).and_then(|v| resolved.user(*ty, v)))
        });
        let user = match step {
            Step::Resolved(u) => {
                counts.resolved += 1;
                Some(u)
            }
            Step::Moved(u) => {
                counts.moved += 1;
                Some(u)
            }
            Step::Unresolved => {
                counts.unresolved += 1;
                None
            }
            Step::Kept(_) => None,
        };
        if let (Some(u), Some(touched)) = (user, touched.as_deref_mut()) {
            touched.insert(u);
        }
        out.append_option(step.user());
    }
    Ok(out.finish())
}

/// A chunk's batches resolved on every core: each batch with its `user_id` (conformed to
/// `schema` first when given), and its identify calls.
struct ResolvedChunk {
    batches: Vec<RecordBatch>,
    identified: Vec<RecordBatch>,
    counts: Resolving,
}

/// One thread's run of a chunk's batches: each resolved with its identify calls, the
/// counts, and the people given or moved to.
type ResolvedRun = (Vec<(RecordBatch, RecordBatch)>, Resolving, RoaringBitmap);

/// Resolves `batches` on every core, each thread a run of them in order; the people given
/// or moved to are added to `affected` when it is given.
fn resolve_chunk(
    batches: Vec<RecordBatch>,
    schema: Option<&arrow::datatypes::SchemaRef>,
    resolved: &Resolved,
    moves: &Moves,
    mut affected: Option<&mut RoaringBitmap>,
) -> Result<ResolvedChunk> {
    let track = affected.is_some();
    let runs = crate::cores::on_every_core(&batches, "resolving events", |run| {
        let mut counts = Resolving::default();
        let mut touched = RoaringBitmap::new();
        let mut out = Vec::with_capacity(run.len());
        for batch in run {
            let batch = match schema {
                Some(schema) => shoal_catalog::conform(batch, schema)?,
                None => batch.clone(),
            };
            let users = resolve_events(
                &batch,
                resolved,
                moves,
                &mut counts,
                track.then_some(&mut touched),
            )?;
            let batch = with_column(&batch, "user_id", Arc::new(users))?;
            let identify = features::identify_rows(&batch)?;
            out.push((batch, identify));
        }
        Ok::<ResolvedRun, Error>((out, counts, touched))
    })?;
    let mut chunk = ResolvedChunk {
        batches: Vec::with_capacity(batches.len()),
        identified: Vec::with_capacity(batches.len()),
        counts: Resolving::default(),
    };
    for (rows, counts, touched) in runs {
        for (batch, identify) in rows {
            chunk.batches.push(batch);
            chunk.identified.push(identify);
        }
        chunk.counts.add(&counts);
        if let Some(affected) = affected.as_deref_mut() {
            *affected |= touched;
        }
    }
    Ok(chunk)
}

#[cfg(test)]
fn sort_events(batch: &RecordBatch) -> Result<RecordBatch> {
    let mut rows: Vec<RowRef> = (0..batch.num_rows() as u32).map(|i| (0, i)).collect();
    sort_event_rows(std::slice::from_ref(batch), &mut rows)?;
    let order: arrow::array::UInt32Array = rows.into_iter().map(|(_, i)| i).collect();
    Ok(arrow::compute::take_record_batch(batch, &order)?)
}

/// A row of one of several batches: (batch, row).
type RowRef = (u32, u32);

/// The rows of `batches` by `event_date` (days since the epoch), each day's in read order.
fn rows_by_day(batches: &[RecordBatch]) -> Result<BTreeMap<i32, Vec<RowRef>>> {
    let mut days: BTreeMap<i32, Vec<RowRef>> = BTreeMap::new();
    for (b, batch) in batches.iter().enumerate() {
        let dates = ints(batch, "event_date")?;
        let mut i = 0;
        while i < batch.num_rows() {
            let day = get_int(&dates, i).ok_or_else(|| {
                Error::Internal("a row of a day being rewritten has no event_date".into())
            })?;
            // Rows of one day come in runs: each run is added at once.
            let run = (i..batch.num_rows())
                .take_while(|j| get_int(&dates, *j) == Some(day))
                .count();
            days.entry(day as i32)
                .or_default()
                .extend((i..i + run).map(|j| (b as u32, j as u32)));
            i += run;
        }
    }
    Ok(days)
}

/// The rows `rows` of `batches`, in that order, as one batch.
fn gather(batches: &[RecordBatch], rows: &[RowRef]) -> Result<RecordBatch> {
    let refs: Vec<&RecordBatch> = batches.iter().collect();
    let indices: Vec<(usize, usize)> = rows
        .iter()
        .map(|(b, i)| (*b as usize, *i as usize))
        .collect();
    Ok(arrow::compute::interleave_record_batch(&refs, &indices)?)
}

/// Events sorted by Arrow's `lexsort`: the reference [`event_order`] is checked against.
#[cfg(test)]
fn lexsort_events(batch: &RecordBatch) -> Result<RecordBatch> {
    let by = |name: &str| -> Result<arrow::compute::SortColumn> {
        Ok(arrow::compute::SortColumn {
            values: batch
                .column_by_name(name)
                .cloned()
                .ok_or_else(|| Error::Internal(format!("events lacks {name}")))?,
            options: Some(arrow::compute::SortOptions {
                descending: false,
                nulls_first: false,
            }),
        })
    };
    let indices = arrow::compute::lexsort_to_indices(
        &[by("user_id")?, by("event_time")?, by("event_id")?],
        None,
    )?;
    Ok(arrow::compute::take_record_batch(batch, &indices)?)
}

/// Sorts `rows` (of `batches`) by (user_id, event_time, event_id), nulls last: the two
/// numbers and the row's place packed into one sort key, the ids compared only between rows
/// that tie on both.
fn sort_event_rows(batches: &[RecordBatch], rows: &mut [RowRef]) -> Result<()> {
    let columns = batches
        .iter()
        .map(|b| {
            Ok((
                ints(b, "user_id")?,
                ints(b, "event_time")?,
                text(b, "event_id")?,
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    let id = |(b, i): RowRef| get(&columns[b as usize].2, i as usize);
    let by_id = |a: RowRef, b: RowRef| match (id(a), id(b)) {
        (Some(x), Some(y)) => x.cmp(y).then(a.cmp(&b)),
        (Some(_), None) => std::cmp::Ordering::Less,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (None, None) => a.cmp(&b),
    };
    // A null sorts after every value: one bit above the value's.
    let number_key = |values: &Int64Array, i: usize| match values.is_null(i) {
        true => 1u128 << 64,
        false => u128::from(values.value(i) as u64 ^ (1 << 63)),
    };
    if let Some(mut packed) = packed_keys(&columns, rows) {
        packed.sort_unstable();
        let read: Vec<RowRef> = rows.to_vec();
        let place = |k: u128| read[(k & PLACE_MASK) as usize];
        let mut start = 0;
        while start < packed.len() {
            let tie = packed[start] >> PLACE_BITS;
            let end = start
                + packed[start..]
                    .iter()
                    .take_while(|k| *k >> PLACE_BITS == tie)
                    .count();
            if end - start > 1 {
                packed[start..end].sort_by(|a, b| by_id(place(*a), place(*b)));
            }
            start = end;
        }
        for (row, k) in rows.iter_mut().zip(packed) {
            *row = place(k);
        }
        return Ok(());
    }
    let mut keyed: Vec<(u128, u128, RowRef)> = rows
        .iter()
        .map(|&(b, i)| {
            let (users, times, _) = &columns[b as usize];
            let i = i as usize;
            (number_key(users, i), number_key(times, i), (b, i as u32))
        })
        .collect();
    keyed.sort_unstable();
    let mut start = 0;
    while start < keyed.len() {
        let (u, t, _) = keyed[start];
        let end = start
            + keyed[start..]
                .iter()
                .take_while(|(u2, t2, _)| (*u2, *t2) == (u, t))
                .count();
        if end - start > 1 {
            keyed[start..end].sort_by(|a, b| by_id(a.2, b.2));
        }
        start = end;
    }
    for (row, (_, _, r)) in rows.iter_mut().zip(keyed) {
        *row = r;
    }
    Ok(())
}

/// Bits of a packed sort key holding the row's place among the rows sorted.
const PLACE_BITS: u32 = 30;
const PLACE_MASK: u128 = (1 << PLACE_BITS) - 1;

/// One 128-bit key per row, in the order (user_id, event_time, place) with nulls last: the
/// person in the top 33 bits (a null one above every id), the time in the next 65 (a null
/// one above every time), the row's place in `rows` in the low 30. None when a person is
/// not a `u32` id or there are too many rows to number.
fn packed_keys(
    columns: &[(Int64Array, Int64Array, arrow::array::StringArray)],
    rows: &[RowRef],
) -> Option<Vec<u128>> {
    if rows.len() as u128 > PLACE_MASK {
        return None;
    }
    let mut packed = Vec::with_capacity(rows.len());
    for (place, &(b, i)) in rows.iter().enumerate() {
        let (users, times, _) = &columns[b as usize];
        let i = i as usize;
        let user = match users.is_null(i) {
            true => 1u128 << 32,
            false => u128::from(u32::try_from(users.value(i)).ok()?),
        };
        let time = match times.is_null(i) {
            true => 1u128 << 64,
            false => u128::from(times.value(i) as u64 ^ (1 << 63)),
        };
        packed.push(user << 95 | time << PLACE_BITS | place as u128);
    }
    Some(packed)
}

fn split_batch(batch: &RecordBatch, rows: usize) -> Vec<RecordBatch> {
    (0..batch.num_rows())
        .step_by(rows.max(1))
        .map(|start| batch.slice(start, rows.min(batch.num_rows() - start)))
        .collect()
}

/// Bitmaps keyed by (name, value).
#[derive(Default)]
struct BitmapRows {
    maps: BTreeMap<(String, String), RoaringBitmap>,
}

impl BitmapRows {
    fn add(&mut self, name: &str, value: String, user: u32) {
        self.maps
            .entry((name.to_string(), value))
            .or_default()
            .insert(user);
    }

    fn is_empty(&self) -> bool {
        self.maps.is_empty()
    }

    fn len(&self) -> usize {
        self.maps.len()
    }

    fn batch(self, kind: &str, source_version: u64) -> Result<RecordBatch> {
        let mut names = Vec::new();
        let mut values = Vec::new();
        let mut sizes = Vec::new();
        let mut blobs: Vec<Vec<u8>> = Vec::new();
        for ((name, value), bitmap) in self.maps {
            let mut bytes = Vec::with_capacity(bitmap.serialized_size());
            bitmap
                .serialize_into(&mut bytes)
                .map_err(|e| Error::Internal(format!("serialising a bitmap: {e}")))?;
            names.push(name);
            values.push(value);
            sizes.push(bitmap.len() as i64);
            blobs.push(bytes);
        }
        let n = names.len();
        Ok(RecordBatch::try_from_iter(vec![
            ("kind", text_array(std::iter::repeat_n(Some(kind), n))),
            ("name", text_array(names.iter().map(Some))),
            ("value", text_array(values.iter().map(Some))),
            ("users", Arc::new(Int64Array::from(sizes)) as ArrayRef),
            (
                "bitmap",
                Arc::new(BinaryArray::from_iter_values(blobs.iter())) as ArrayRef,
            ),
            (
                "source_version",
                Arc::new(Int64Array::from(vec![source_version as i64; n])),
            ),
        ])?)
    }
}

fn day_text(days: i32) -> String {
    (NaiveDate::from_ymd_opt(1970, 1, 1).unwrap_or_default() + chrono::Duration::days(days.into()))
        .to_string()
}

/// Adds the people of day `day`'s `rows` (of `batches`), sorted by person, to the day's
/// (event, day) bitmaps in `out`: each person is appended in order, not inserted.
fn add_day_bitmaps(
    batches: &[RecordBatch],
    rows: &[RowRef],
    day: i32,
    out: &mut BitmapRows,
) -> Result<()> {
    let columns = batches
        .iter()
        .map(|b| Ok((text(b, "event_name")?, ints(b, "user_id")?)))
        .collect::<Result<Vec<_>>>()?;
    let mut seen: HashMap<&str, RoaringBitmap> = HashMap::new();
    let mut last: Option<i64> = None;
    for &(b, i) in rows {
        let (names, users) = &columns[b as usize];
        let (Some(name), Some(user)) = (get(names, i as usize), get_int(users, i as usize)) else {
            continue;
        };
        let user = u32::try_from(user).map_err(|_| {
            Error::Internal(format!("an event's user_id {user} is not a person's id"))
        })?;
        if last.is_some_and(|l| l > i64::from(user)) {
            return Err(Error::Internal(
                "a day's rows reached its bitmaps out of order".into(),
            ));
        }
        last = Some(i64::from(user));
        // Rows come by person, so `user` is the bitmap's last or above it: refused only when
        // it is already the last.
        let _ = seen.entry(name).or_default().try_push(user);
    }
    // A day written in several pieces adds each piece's people.
    let day = day_text(day);
    for (name, bitmap) in seen {
        match out.maps.entry((name.to_string(), day.clone())) {
            std::collections::btree_map::Entry::Vacant(slot) => {
                slot.insert(bitmap);
            }
            std::collections::btree_map::Entry::Occupied(mut slot) => *slot.get_mut() |= bitmap,
        }
    }
    Ok(())
}

async fn resolve_orders(
    catalog: &Catalog,
    ctx: &SessionContext,
    resolved: &Resolved,
    moves: &Moves,
    note: &CommitNote,
    report: &mut BuildReport,
    affected: &mut RoaringBitmap,
) -> Result<()> {
    let mut orders = catalog.table("orders").await?;
    let mut columns: Vec<&str> = vec!["platform", "order_id", "user_id"];
    for (c, _, _) in resolved.rules.order_columns() {
        if !columns.contains(&c.as_str()) {
            columns.push(c);
        }
    }
    let (mut platforms, mut order_ids, mut users) = (Vec::new(), Vec::new(), Vec::new());
    for_each_batch(
        scan(ctx, &orders, &columns, Some(stale_filter(moves))).await?,
        |batch| {
            let platform = text(batch, "platform")?;
            let order_id = text(batch, "order_id")?;
            let current = ints(batch, "user_id")?;
            let ids: Vec<(arrow::array::StringArray, Option<&str>, u8)> = resolved
                .rules
                .order_columns()
                .iter()
                .map(|(c, p, ty)| Ok((text(batch, c)?, p.as_deref(), *ty)))
                .collect::<Result<_>>()?;
            for i in 0..batch.num_rows() {
                let p = get(&platform, i).unwrap_or_default();
                let step = moves.resolve(get_int(&current, i), || {
                    ids.iter()
                        .filter(|(_, only, _)| only.is_none_or(|o| o == p))
                        .find_map(|(a, _, ty)| get(a, i).and_then(|v| resolved.user(*ty, v)))
                });
                if let Step::Moved(u) | Step::Resolved(u) = step {
                    affected.insert(u);
                    platforms.push(p.to_string());
                    order_ids.push(get(&order_id, i).unwrap_or_default().to_string());
                    users.push(step.user());
                }
            }
            Ok(())
        },
    )
    .await?;
    report.orders_resolved = users.len() as u64;
    if users.is_empty() {
        return Ok(());
    }
    let batch = RecordBatch::try_from_iter(vec![
        ("platform", text_array(platforms.iter().map(Some))),
        ("order_id", text_array(order_ids.iter().map(Some))),
        ("user_id", Arc::new(Int64Array::from(users)) as ArrayRef),
    ])?;
    orders
        .update_by_key(
            vec![batch],
            &["platform", "order_id"],
            &["user_id"],
            note.clone(),
        )
        .await?;
    Ok(())
}

/// Columns of `users` the build computes; every other column is a profile trait.
fn computed(field: &str, identity_types: &[String]) -> bool {
    const COMPUTED: &[&str] = &[
        "user_id",
        "first_seen",
        "last_seen",
        "active_days",
        "orders_count",
        "gmv",
        "avg_order_value",
        "last_order_at",
        "follows_official_account",
        "rfm_segment",
        "rfm_r",
        "rfm_f",
        "rfm_m",
        "platforms",
        "identity_count",
        "traits",
        "features_as_of",
        "updated_at",
    ];
    COMPUTED.contains(&field)
        || identity_types.iter().any(|t| t == field)
        || window_count(field).is_some()
}

/// `view_item_7d` → ("view_item", 7).
pub fn window_count(field: &str) -> Option<(&str, u32)> {
    let rest = field.strip_suffix('d')?;
    let (event, days) = rest.rsplit_once('_')?;
    let days: u32 = days.parse().ok()?;
    (!event.is_empty() && days > 0).then_some((event, days))
}

#[allow(clippy::too_many_arguments)]
/// The people a scoped build recomputes, the merges and splits since the last build, and
/// the identify calls the build resolved or moved.
struct Scope<'a> {
    people: &'a BTreeSet<i64>,
    moves: &'a Moves,
    identified: &'a [RecordBatch],
}

/// Commit metadata of `user_traits`: the identity traits its values leave out.
const TRAITS_LEFT_OUT: &str = "identity_traits";

/// Whether `user_traits` holds every person's traits as `users` stands: its last write came
/// from the build that last wrote `users`, and left out the traits `identity_traits` names.
async fn stored_traits_current(
    catalog: &Catalog,
    identity_traits: &HashSet<String>,
) -> Result<bool> {
    let last = |commits: Vec<shoal_catalog::Commit>| commits.into_iter().next().map(|c| c.metadata);
    let users = last(catalog.table("users").await?.history(Some(1)).await?);
    let traits = last(catalog.table("user_traits").await?.history(Some(1)).await?);
    let (Some(users), Some(traits)) = (users, traits) else {
        return Ok(false);
    };
    let build = |m: &serde_json::Map<String, serde_json::Value>| m.get("shoal.build_id").cloned();
    Ok(build(&users).is_some()
        && build(&users) == build(&traits)
        && traits.get(&format!("shoal.{TRAITS_LEFT_OUT}")) == Some(&left_out(identity_traits)))
}

/// The identity traits, as `user_traits` commits record them.
fn left_out(identity_traits: &HashSet<String>) -> serde_json::Value {
    let mut names: Vec<&String> = identity_traits.iter().collect();
    names.sort();
    serde_json::json!(names)
}

/// The merge of a build's (event, day) bitmaps into `tag_bitmaps`, when it has any.
type DayBitmapsWritten = Option<tokio::task::JoinHandle<Result<()>>>;

/// What a scoped build wrote to `users`: its people's new rows and those of the people
/// outside it whose RFM scores moved (`rescored`).
struct Recomputed {
    rows: Vec<RecordBatch>,
    rescored: Vec<i64>,
}

#[allow(clippy::too_many_arguments)]
async fn build_users(
    catalog: &Catalog,
    resolved: &Resolved,
    buyers: tokio::task::JoinHandle<Result<buyers::Buyers>>,
    as_of: NaiveDate,
    now: DateTime<Utc>,
    scoped: Option<Scope<'_>>,
    every_identify: Option<&[RecordBatch]>,
    removed: &[i64],
    note: &CommitNote,
    report: &mut BuildReport,
    rows_out: Option<tokio::sync::oneshot::Sender<Recomputed>>,
    day_bitmaps_written: DayBitmapsWritten,
) -> Result<()> {
    let scope = scoped.as_ref().map(|s| s.people);
    let definition = catalog.definition();
    let users_def = definition.table("users")?;
    let identity_types: Vec<String> = resolved
        .rules
        .types
        .iter()
        .map(|t| t.name.clone())
        .collect();
    let trait_fields: Vec<&FieldStandard> = users_def
        .fields
        .iter()
        .filter(|f| !computed(&f.name, &identity_types))
        .collect();
    let identity_traits: HashSet<String> = definition
        .identity
        .types
        .iter()
        .flat_map(|t| t.traits.iter().cloned())
        .collect();

    let ctx = shoal_catalog::write_session();
    let events = catalog.table("events").await?;
    let links_table = catalog.table("identity_links").await?;
    let mut users = catalog.table("users").await?;
    let buyers = Arc::new(
        buyers
            .await
            .map_err(|e| Error::Internal(format!("counting buyers: {e}")))??,
    );
    // A scoped build compares every stored person's RFM scores with the new ones, and reads
    // the rows of those whose scores moved, on a task of its own, while it reads its
    // people's rows.
    let moved = scope.map(|people| {
        let skip: HashSet<i64> = people.iter().chain(removed).copied().collect();
        let (users, buyers) = (users.clone(), buyers.clone());
        let fields = users_def.fields.clone();
        tokio::spawn(async move {
            let moved = moved_scores(&users, &buyers, &skip).await?;
            rescored_rows(&shoal_catalog::write_session(), &users, moved, &fields, now).await
        })
    });
    // Profile traits (latest non-null value per key, by event time, in a (person, key) map)
    // and activity (in per-person arrays), each counted in one pass over `events`.
    let clock = Instant::now();
    let people = features::People::new(scope);
    // The identities each person holds; a scoped build reads its people's alone, with a
    // row filter on `user_id`: the other people's identity values are not decoded.
    let shown: Vec<String> = identity_types
        .iter()
        .filter(|t| users_def.field(t).is_some())
        .cloned()
        .collect();
    let mut held = held::Held::new(&people, &shown);
    let link_columns = ["user_id", "id_type", "id_value", "first_seen"];
    // A scoped build folds what it resolved into its people's stored traits, when those are
    // current and nobody was split (whose stored traits mix two people's); otherwise it reads
    // its people's rows of `events`, once for both traits and activity.
    let state_current = stored_traits_current(catalog, &identity_traits).await?;
    let from_state = scoped
        .as_ref()
        .is_some_and(|s| s.moves.split.is_empty() && state_current);
    report.traits_folded = from_state;
    let mut traits_table = catalog.table("user_traits").await?;
    // A scoped build reads its people's identities, stored traits and events at once: each
    // read decodes its files on every core, and the three keep them busy together.
    let (stored, scoped_rows) = match scope {
        Some(users) => {
            // Each read's finishing time goes to the report (`users.held.identities`,
            // `users.held.traits`, `users.held.events`).
            let at = || clock.elapsed().as_secs_f64();
            let ((held_rows, a), (stored, b), (rows, c)) = futures::try_join!(
                async {
                    let links = UserSet::new(users.iter().copied());
                    let rows = rows_of_users(&links_table, links, Some(&link_columns)).await?;
                    Ok::<_, Error>((rows, at()))
                },
                async {
                    let stored = match &scoped {
                        Some(s) if from_state => {
                            features::stored_traits(&traits_table, &people, &s.moves.merged).await?
                        }
                        _ => Vec::new(),
                    };
                    Ok((stored, at()))
                },
                async {
                    let rows = features::scoped_events(&events, &people, !from_state).await?;
                    Ok((rows, at()))
                },
            )?;
            for (read, at) in [("identities", a), ("traits", b), ("events", c)] {
                report.seconds.insert(format!("users.held.{read}"), at);
            }
            for batch in &held_rows {
                held.add(batch)?;
            }
            (stored, Some(rows))
        }
        None => {
            let read = SessionContext::new();
            let filter = Some(col("user_id").is_not_null());
            for_each_batch(
                scan(&read, &links_table, &link_columns, filter).await?,
                |batch| held.add(batch),
            )
            .await?;
            (Vec::new(), None)
        }
    };
    ctx.register_table("people", Arc::new(features::table(held.finish()?)?))?;
    report
        .seconds
        .insert("users.held".to_string(), clock.elapsed().as_secs_f64());
    let source = match (&scoped, &scoped_rows) {
        (Some(s), _) if from_state => features::TraitSource::State {
            stored: &stored,
            merged: &s.moves.merged,
            identified: s.identified,
        },
        (_, Some(rows)) => features::TraitSource::Rows(rows),
        _ => match every_identify {
            Some(calls) => features::TraitSource::Calls(calls),
            None => features::TraitSource::Events,
        },
    };
    report.traits_from = match source {
        features::TraitSource::State { .. } => "state",
        features::TraitSource::Rows(_) => "rows",
        features::TraitSource::Calls(_) => "calls",
        features::TraitSource::Events => "events",
    };
    let features::Profile {
        profile,
        state: traits_state,
    } = features::profile(&events, &people, &trait_fields, &identity_traits, source).await?;
    drop(stored);
    // The traits as folded, for the next scoped build: every person's after a full build;
    // a scoped build's people's when the stored ones were current (otherwise they stay out
    // of date, and scoped builds read `events`, until a full build writes them all). They
    // are written on a task of their own while `users` is computed and written: a build
    // stopped between the two leaves them marked with another build than `users`, so
    // the next scoped build does not take them as current.
    let traits_note = note
        .clone()
        .with(TRAITS_LEFT_OUT, left_out(&identity_traits));
    let traits_written = {
        let scope: Option<Vec<i64>> = scope.map(|people| people.iter().copied().collect());
        let removed = removed.to_vec();
        tokio::spawn(async move {
            match scope {
                None => {
                    traits_table
                        .overwrite(vec![traits_state], traits_note)
                        .await?;
                }
                Some(people) if state_current => {
                    let kept: HashSet<i64> =
                        ints(&traits_state, "user_id")?.iter().flatten().collect();
                    let mut gone: Vec<i64> = removed;
                    gone.extend(people.into_iter().filter(|u| !kept.contains(u)));
                    traits_table
                        .replace_keys_marking(vec![traits_state], "user_id", &gone, traits_note)
                        .await?;
                }
                Some(_) => {}
            }
            Ok::<_, Error>(())
        })
    };
    ctx.register_table("profile", Arc::new(features::table(profile)?))?;
    report
        .seconds
        .insert("users.profile".to_string(), clock.elapsed().as_secs_f64());
    let epoch = NaiveDate::from_ymd_opt(1970, 1, 1).unwrap_or_default();
    let as_of_days = (as_of - epoch).num_days();
    let windows: Vec<features::Window> = users_def
        .fields
        .iter()
        .filter_map(|f| {
            window_count(&f.name).map(|(event, days)| features::Window {
                column: f.name.clone(),
                event: event.to_string(),
                days,
            })
        })
        .collect();
    let activity = features::activity(
        &events,
        &people,
        &windows,
        as_of_days as i32,
        scoped_rows.as_deref(),
    )
    .await?;
    ctx.register_table("ev", Arc::new(features::table(activity)?))?;
    drop((people, scoped_rows));
    let lap = |name: &str, report: &mut BuildReport| {
        report
            .seconds
            .insert(format!("users.{name}"), clock.elapsed().as_secs_f64());
    };
    lap("features", report);

    // Every buyer's orders, GMV and RFM scores (percent ranks among all buyers), counted
    // once: a scoped build joins its own people's rows, and finds the others whose scores
    // moved.
    let scope_ids: Option<Vec<i64>> = scope.map(|people| people.iter().copied().collect());
    ctx.register_table(
        "buyers",
        Arc::new(features::table(buyers.batch(scope_ids.as_deref())?)?),
    )?;
    lap("buyers", report);
    let sql = "SELECT * FROM people
           LEFT JOIN ev ON ev_user_id = user_id
           LEFT JOIN buyers ON od_user_id = user_id
           LEFT JOIN profile ON profile_user_id = user_id";
    let joined = ctx.sql(sql).await?;
    let available: HashSet<String> = joined
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    let mut projection = Vec::new();
    for f in &users_def.fields {
        let ty = f.value_type.arrow_type();
        let expr = match f.name.as_str() {
            "follows_official_account" => datafusion::prelude::when(
                col("last_follow").is_not_null().and(
                    col("last_unfollow")
                        .is_null()
                        .or(col("last_follow").gt(col("last_unfollow"))),
                ),
                lit(true),
            )
            .otherwise(lit(false))?,
            "orders_count" => datafusion::prelude::coalesce(vec![col("orders_count"), lit(0i64)]),
            "avg_order_value" => col("gmv") / col("orders_count"),
            "rfm_segment" => rfm_segment(),
            "features_as_of" => lit(ScalarValue::Date32(Some(as_of_days as i32))),
            "updated_at" => lit(ScalarValue::TimestampMicrosecond(
                Some(now.timestamp_micros()),
                Some("UTC".into()),
            )),
            name if available.contains(name) => col(name),
            _ => lit(ScalarValue::try_from(&ty)?),
        };
        projection.push(datafusion::prelude::cast(expr, ty).alias(&f.name));
    }
    let frame = joined
        .select(projection)?
        .sort(vec![col("user_id").sort(true, false)])?;
    let users_before = users.version();
    let mut recomputed = None;
    let mut rescored = Vec::new();
    if let Some(moved) = moved {
        // The rows of these people (and of people merged away) are marked deleted where
        // they are, and their new rows written as one new file, in one commit: a rewrite
        // would rewrite every file, the recomputed people being spread over all of them.
        // The people whose RFM scores moved join them, their other columns as stored.
        let mut batches = frame.collect().await?;
        lap("computed", report);
        let moved = moved
            .await
            .map_err(|e| Error::Internal(format!("comparing RFM scores: {e}")))??;
        for batch in &moved {
            rescored.extend(ints(batch, "user_id")?.iter().flatten());
        }
        report.rfm_rescored = rescored.len() as u64;
        batches.extend(moved);
        lap("rescored", report);
        if let Some(rows_out) = rows_out {
            // `orders_wide` is written from these rows while `users` and its bitmaps are.
            let _ = rows_out.send(Recomputed {
                rows: batches.clone(),
                rescored: rescored.clone(),
            });
        }
        recomputed = Some(batches.clone());
        users
            .replace_keys_marking(batches, "user_id", removed, note.clone())
            .await?;
    } else {
        users.overwrite_frame(frame, note.clone()).await?;
        if !removed.is_empty() {
            let gone = removed.iter().map(|u| lit(*u)).collect();
            users
                .delete_where(col("user_id").in_list(gone, false), note.clone())
                .await?;
        }
    }
    report.users = users.row_count().await?;
    traits_written
        .await
        .map_err(|e| Error::Internal(format!("writing user_traits: {e}")))??;
    lap("written", report);

    // Tag bitmaps of enum and bool columns, and of the buckets of bucketed numeric ones.
    // A scoped build patches the stored ones (the recomputed and removed people taken out,
    // their new rows put in) when they index the version of `users` it started from.
    let tagged: Vec<&FieldStandard> = users_def
        .fields
        .iter()
        .filter(|f| {
            matches!(f.value_type, ValueType::Enum | ValueType::Bool)
                || (f.value_type.is_numeric() && !f.buckets.is_empty())
        })
        .collect();
    let patched = match (scope, &recomputed) {
        (Some(scope), Some(recomputed)) => {
            let gone: RoaringBitmap = scope
                .iter()
                .chain(removed)
                .chain(&rescored)
                .filter_map(|u| u32::try_from(*u).ok())
                .collect();
            match stored_column_bitmaps(catalog, &tagged, users_before, &gone).await? {
                Some((mut rows, missing)) => {
                    let kept: Vec<&FieldStandard> = tagged
                        .iter()
                        .filter(|f| !missing.contains(&f.name))
                        .copied()
                        .collect();
                    for batch in recomputed {
                        tag_rows(batch, &kept, &mut rows)?;
                    }
                    Some((rows, missing))
                }
                None => None,
            }
        }
        _ => None,
    };
    report.column_bitmaps_patched = patched.is_some();
    // Columns without stored bitmaps (none of their values were set, or they are newly
    // tagged) are read from `users` whole, as every column is when nothing was patched.
    let (mut rows, rescan): (BitmapRows, Vec<&FieldStandard>) = match patched {
        Some((rows, missing)) => {
            let rescan = tagged
                .iter()
                .filter(|f| missing.contains(&f.name))
                .copied()
                .collect();
            (rows, rescan)
        }
        None => (BitmapRows::default(), tagged.clone()),
    };
    if !rescan.is_empty() {
        let mut names: Vec<&str> = vec!["user_id"];
        names.extend(rescan.iter().map(|f| f.name.as_str()));
        let read = SessionContext::new();
        for_each_batch(scan(&read, &users, &names, None).await?, |batch| {
            tag_rows(batch, &rescan, &mut rows)
        })
        .await?;
    }
    report.tag_bitmaps.0 = rows.len() as u64;
    if let Some(written) = day_bitmaps_written {
        written
            .await
            .map_err(|e| Error::Internal(format!("writing the day bitmaps: {e}")))??;
    }
    let mut tags = catalog.table("tag_bitmaps").await?;
    let batch = rows.batch("column", users.version())?;
    tags.replace_where(vec![batch], col("kind").eq(lit("column")), note.clone())
        .await?;
    lap("bitmaps", report);
    Ok(())
}

/// Adds the people of `batch` (rows of `users`) to the bitmaps of the `tagged` columns'
/// values (and buckets).
fn tag_rows(batch: &RecordBatch, tagged: &[&FieldStandard], rows: &mut BitmapRows) -> Result<()> {
    let ids = ints(batch, "user_id")?;
    for f in tagged {
        if f.value_type.is_numeric() {
            let column = batch
                .column_by_name(&f.name)
                .ok_or_else(|| Error::Internal(format!("users lacks {}", f.name)))?;
            let values = arrow::compute::cast(column, &DataType::Float64)?;
            let values = values
                .as_any()
                .downcast_ref::<arrow::array::Float64Array>()
                .ok_or_else(|| Error::Internal(format!("users.{} is not numeric", f.name)))?;
            for i in 0..batch.num_rows() {
                if let (Some(u), true) = (get_int(&ids, i), values.is_valid(i))
                    && let Some(label) = f.bucket(values.value(i))
                {
                    rows.add(&f.name, label, u as u32);
                }
            }
            continue;
        }
        let values = text(batch, &f.name)?;
        for i in 0..batch.num_rows() {
            if let (Some(u), Some(v)) = (get_int(&ids, i), get(&values, i)) {
                rows.add(&f.name, v.to_string(), u as u32);
            }
        }
    }
    Ok(())
}

/// The stored column bitmaps without the people of `gone`, and the `tagged` columns that
/// have none, when they index version `users` of `users` and hold only `tagged` columns
/// (and, for bucketed ones, their current buckets); otherwise `None`, and they are built
/// again from `users`.
async fn stored_column_bitmaps(
    catalog: &Catalog,
    tagged: &[&FieldStandard],
    users: u64,
    gone: &RoaringBitmap,
) -> Result<Option<(BitmapRows, HashSet<String>)>> {
    let tags = catalog.table("tag_bitmaps").await?;
    let mut stored = BitmapRows::default();
    let mut current = true;
    for_each_batch(
        scan(
            &SessionContext::new(),
            &tags,
            &["name", "value", "bitmap", "source_version"],
            Some(col("kind").eq(lit("column"))),
        )
        .await?,
        |b| {
            let (names, values) = (text(b, "name")?, text(b, "value")?);
            let versions = ints(b, "source_version")?;
            let blobs = bitmap_blobs(b)?;
            for i in 0..b.num_rows() {
                let (Some(name), Some(value)) = (get(&names, i), get(&values, i)) else {
                    current = false;
                    continue;
                };
                let field = tagged.iter().find(|f| f.name == name);
                let known = field.is_some_and(|f| {
                    !f.value_type.is_numeric() || f.bucket_labels().iter().any(|l| l == value)
                });
                if !known || get_int(&versions, i) != Some(users as i64) || blobs.is_null(i) {
                    current = false;
                    continue;
                }
                let bitmap = RoaringBitmap::deserialize_from(blobs.value(i))
                    .map_err(|e| Error::Internal(format!("tag bitmap {name}/{value}: {e}")))?;
                let kept = bitmap - gone;
                if !kept.is_empty() {
                    stored
                        .maps
                        .insert((name.to_string(), value.to_string()), kept);
                }
            }
            Ok(())
        },
    )
    .await?;
    let names: BTreeSet<&str> = stored.maps.keys().map(|(n, _)| n.as_str()).collect();
    let missing = tagged
        .iter()
        .filter(|f| !names.contains(f.name.as_str()))
        .map(|f| f.name.clone())
        .collect();
    Ok(current.then_some((stored, missing)))
}

/// Writes `frame` to `table`: the whole content (streamed) or, when `scoped`, an upsert of
/// its rows by `keys` that marks the rows they replace deleted where they are (the rows of
/// the recomputed people are spread over every file) and writes the new ones as one file.
async fn write_scoped(
    table: &mut shoal_catalog::Table,
    frame: datafusion::prelude::DataFrame,
    scoped: bool,
    keys: &[&str],
    note: &CommitNote,
    seconds: &mut BTreeMap<String, f64>,
) -> Result<()> {
    let clock = Instant::now();
    let step = table.name().to_string();
    if !scoped {
        table.overwrite_frame(frame, note.clone()).await?;
        return Ok(());
    }
    let batches: Vec<RecordBatch> = frame
        .collect()
        .await?
        .into_iter()
        .filter(|b| b.num_rows() > 0)
        .collect();
    seconds.insert(format!("{step}.computed"), clock.elapsed().as_secs_f64());
    if !batches.is_empty() {
        table.merge_marking(batches, keys, note.clone()).await?;
    }
    seconds.insert(format!("{step}.written"), clock.elapsed().as_secs_f64());
    Ok(())
}

/// Columns of `users` that follow from the RFM scores.
const RFM_COLUMNS: [&str; 4] = ["rfm_r", "rfm_f", "rfm_m", "rfm_segment"];

/// The people outside a scoped build whose RFM scores moved, with their new scores.
struct MovedScores {
    ids: Vec<i64>,
    scores: [Vec<Option<i64>>; 3],
}

/// The people of `users` whose stored RFM scores differ from those of `buyers`: percent
/// ranks shift for every buyer when buyers come, go or change, not only for the build's
/// people. Nobody of `skip` (the build's people and those merged away) is among them.
async fn moved_scores(
    users: &shoal_catalog::Table,
    buyers: &buyers::Buyers,
    skip: &HashSet<i64>,
) -> Result<MovedScores> {
    let mut ids = Vec::new();
    let mut new_scores: [Vec<Option<i64>>; 3] = Default::default();
    users
        .read_files(
            &users.data_files()?,
            Some(&["user_id", "rfm_r", "rfm_f", "rfm_m"]),
            |_, batch| {
                let internal = |e: Error| shoal_catalog::Error::Internal(e.to_string());
                let read = |name: &str| ints(&batch, name).map_err(internal);
                let user = read("user_id")?;
                let stored = [read("rfm_r")?, read("rfm_f")?, read("rfm_m")?];
                for i in 0..batch.num_rows() {
                    let Some(u) = get_int(&user, i) else { continue };
                    let scores = buyers.scores(u);
                    let moved = (0..3).any(|k| get_int(&stored[k], i) != scores.map(|s| s[k]));
                    if moved && !skip.contains(&u) {
                        ids.push(u);
                        for (k, column) in new_scores.iter_mut().enumerate() {
                            column.push(scores.map(|s| s[k]));
                        }
                    }
                }
                Ok(())
            },
        )
        .await?;
    Ok(MovedScores {
        ids,
        scores: new_scores,
    })
}

/// The rows of `users` (as stored) of the people whose RFM scores `moved`, with their new
/// scores.
async fn rescored_rows(
    ctx: &SessionContext,
    users: &shoal_catalog::Table,
    moved: MovedScores,
    fields: &[FieldStandard],
    now: DateTime<Utc>,
) -> Result<Vec<RecordBatch>> {
    let MovedScores {
        ids,
        scores: [r, f, m],
    } = moved;
    // Scores may be missing (a buyer no more), whether or not any is in this batch.
    let scores = RecordBatch::try_from_iter_with_nullable(vec![
        (
            "rs_user_id",
            Arc::new(Int64Array::from(ids.clone())) as ArrayRef,
            false,
        ),
        ("rfm_r", Arc::new(Int64Array::from(r)) as ArrayRef, true),
        ("rfm_f", Arc::new(Int64Array::from(f)) as ArrayRef, true),
        ("rfm_m", Arc::new(Int64Array::from(m)) as ArrayRef, true),
    ])?;
    let scores = vec![scores];
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let stored = rows_of_users(users, UserSet::new(ids), None).await?;
    if stored.is_empty() {
        return Ok(Vec::new());
    }
    let kept: Vec<datafusion::prelude::Expr> = fields
        .iter()
        .filter(|f| !RFM_COLUMNS.contains(&f.name.as_str()) && f.name != "updated_at")
        .map(|f| col(f.name.as_str()))
        .collect();
    let stored = ctx.read_batches(stored)?.select(kept)?;
    let scores = ctx.read_batches(scores)?;
    let projection = fields
        .iter()
        .map(|f| {
            let expr = match f.name.as_str() {
                "rfm_segment" => rfm_segment(),
                "updated_at" => lit(ScalarValue::TimestampMicrosecond(
                    Some(now.timestamp_micros()),
                    Some("UTC".into()),
                )),
                name => col(name),
            };
            datafusion::prelude::cast(expr, f.value_type.arrow_type()).alias(&f.name)
        })
        .collect::<Vec<_>>();
    Ok(stored
        .join(
            scores,
            datafusion::logical_expr::JoinType::Inner,
            &["user_id"],
            &["rs_user_id"],
            None,
        )?
        .select(projection)?
        .collect()
        .await?)
}

fn rfm_segment() -> datafusion::prelude::Expr {
    use datafusion::prelude::when;
    let (r, f) = (col("rfm_r"), col("rfm_f"));
    when(r.clone().is_null(), lit(ScalarValue::Utf8(None)))
        .when(
            r.clone().gt_eq(lit(4i64)).and(f.clone().gt_eq(lit(4i64))),
            lit("champions"),
        )
        .when(
            r.clone().gt_eq(lit(3i64)).and(f.clone().gt_eq(lit(3i64))),
            lit("loyal"),
        )
        .when(
            r.clone().gt_eq(lit(4i64)).and(f.clone().lt_eq(lit(1i64))),
            lit("new"),
        )
        .when(r.clone().gt_eq(lit(3i64)), lit("potential"))
        .when(f.clone().gt_eq(lit(3i64)), lit("at_risk"))
        .when(r.eq(lit(1i64)), lit("lost"))
        .otherwise(lit("hibernating"))
        .unwrap_or_else(|_| lit(ScalarValue::Utf8(None)))
}

/// The orders a scoped build writes to `orders_wide` again.
struct WideScope<'a> {
    /// The people recomputed (or rescored): all their orders.
    people: &'a BTreeSet<i64>,
    /// Their rows of `users`, just computed.
    rows: &'a [RecordBatch],
    /// When the last build started (UTC µs): the orders without a person updated since
    /// (a status change or refund re-imported) are written too.
    since: Option<i64>,
}

/// Writes `orders_wide`: every order joined with its buyer's row of `users`; in a scoped
/// build, only the orders of its people, and those without a person that changed.
async fn build_orders_wide(
    catalog: &Catalog,
    scoped: Option<WideScope<'_>>,
    note: &CommitNote,
    seconds: &mut BTreeMap<String, f64>,
) -> Result<u64> {
    let definition = catalog.definition().table("orders_wide")?;
    let orders_def = catalog.definition().table("orders")?;
    let ctx = shoal_catalog::write_session();
    let mut orders = ctx.read_table(catalog.table("orders").await?.provider().await?)?;
    let mut user_columns = vec![col("user_id").alias("buyer_user_id")];
    for f in &definition.fields {
        if orders_def.field(&f.name).is_none() {
            user_columns.push(col(f.name.as_str()));
        }
    }
    let scoped_build = scoped.is_some();
    let users =
        match scoped {
            Some(WideScope {
                people,
                rows,
                since,
            }) => {
                // Only these people's orders, joined with the rows just computed for them, and
                // the orders without a person that changed since the last build.
                let ids = Int64Array::from_iter_values(people.iter().copied());
                let batch =
                    RecordBatch::try_from_iter(vec![("scope_id", Arc::new(ids) as ArrayRef)])?;
                let scope = ctx.read_batch(batch)?;
                let unowned = orders.clone().filter(col("user_id").is_null().and(
                    col("updated_at").gt_eq(lit(ScalarValue::TimestampMicrosecond(
                        Some(since.unwrap_or(i64::MIN)),
                        Some("UTC".into()),
                    ))),
                ))?;
                orders = orders
                    .join(
                        scope,
                        datafusion::logical_expr::JoinType::LeftSemi,
                        &["user_id"],
                        &["scope_id"],
                        None,
                    )?
                    .union(unowned)?;
                let schema = match rows.first() {
                    Some(batch) => batch.schema(),
                    None => catalog.table("users").await?.schema()?,
                };
                ctx.read_table(Arc::new(MemTable::try_new(schema, vec![rows.to_vec()])?))?
            }
            None => ctx.read_table(catalog.table("users").await?.provider().await?)?,
        };
    let users = users.select(user_columns)?;
    let projection: Vec<_> = definition
        .fields
        .iter()
        .map(|f| {
            datafusion::prelude::cast(col(f.name.as_str()), f.value_type.arrow_type())
                .alias(&f.name)
        })
        .collect();
    let frame = orders
        .join(
            users,
            datafusion::logical_expr::JoinType::Left,
            &["user_id"],
            &["buyer_user_id"],
            None,
        )?
        .select(projection)?;
    let mut wide = catalog.table("orders_wide").await?;
    write_scoped(
        &mut wide,
        frame,
        scoped_build,
        &["platform", "order_id"],
        note,
        seconds,
    )
    .await?;
    Ok(wide.row_count().await?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::compute::{concat_batches, take_record_batch};

    /// A seeded pseudo-random sequence: `next(m)` draws from 0..m.
    fn draws(seed: u64) -> impl FnMut(u64) -> u64 {
        let mut state = seed;
        move |m| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 33) % m
        }
    }

    /// `n` rows of the sort key columns, many tied, each with some nulls.
    fn sort_keys(next: &mut impl FnMut(u64) -> u64, n: usize) -> Vec<(&'static str, ArrayRef)> {
        let users: Int64Array = (0..n)
            .map(|_| (next(10) > 0).then(|| next(40) as i64))
            .collect();
        let times: Int64Array = (0..n)
            .map(|_| (next(20) > 0).then(|| next(30) as i64 - 10))
            .collect();
        let ids: arrow::array::StringArray = (0..n)
            .map(|_| (next(10) > 0).then(|| format!("e{}", next(50))))
            .collect();
        vec![
            ("user_id", Arc::new(users) as ArrayRef),
            ("event_time", Arc::new(times) as ArrayRef),
            ("event_id", Arc::new(ids) as ArrayRef),
        ]
    }

    #[test]
    fn events_sort_as_by_user_then_time_then_id_with_nulls_last() {
        let mut next = draws(7);
        let batch = RecordBatch::try_from_iter(sort_keys(&mut next, 5_000)).expect("a batch");
        let fast = sort_events(&batch).expect("sorted");
        let reference = lexsort_events(&batch).expect("sorted");
        assert_eq!(fast, reference);
    }

    #[test]
    fn events_of_people_beyond_u32_or_at_extreme_times_sort_as_lexsort() {
        let mut next = draws(13);
        let n = 3_000;
        let wide = [
            i64::MIN,
            -1,
            0,
            1,
            i64::from(u32::MAX),
            i64::from(u32::MAX) + 1,
            i64::MAX,
        ];
        let pick = |next: &mut dyn FnMut(u64) -> u64| wide[next(wide.len() as u64) as usize];
        // People within u32 and extreme times take the packed keys; some people beyond it
        // take the general path.
        for beyond in [false, true] {
            let users: Int64Array = (0..n)
                .map(|_| match (next(10), beyond) {
                    (0, _) => None,
                    (1, true) => Some(pick(&mut next)),
                    _ => Some(next(3) as i64 + i64::from(u32::MAX) - 2),
                })
                .collect();
            let times: Int64Array = (0..n)
                .map(|_| match next(10) {
                    0 => None,
                    1 | 2 => Some(pick(&mut next)),
                    _ => Some(next(5) as i64),
                })
                .collect();
            let ids: arrow::array::StringArray = (0..n)
                .map(|_| (next(10) > 0).then(|| format!("e{}", next(5))))
                .collect();
            let batch = RecordBatch::try_from_iter(vec![
                ("user_id", Arc::new(users) as ArrayRef),
                ("event_time", Arc::new(times) as ArrayRef),
                ("event_id", Arc::new(ids) as ArrayRef),
            ])
            .expect("a batch");
            let cols = [(
                ints(&batch, "user_id").expect("ints"),
                ints(&batch, "event_time").expect("ints"),
                text(&batch, "event_id").expect("text"),
            )];
            let rows: Vec<RowRef> = (0..n as u32).map(|i| (0, i)).collect();
            assert_eq!(packed_keys(&cols, &rows).is_some(), !beyond);
            let fast = sort_events(&batch).expect("sorted");
            let reference = lexsort_events(&batch).expect("sorted");
            assert_eq!(fast, reference);
        }
    }

    #[test]
    fn day_bitmaps_appended_in_sorted_order_hold_each_events_people() {
        let mut next = draws(17);
        let batches: Vec<RecordBatch> = [900, 1_500]
            .into_iter()
            .map(|n| {
                let users: Int64Array = (0..n)
                    .map(|_| (next(8) > 0).then(|| next(70_000) as i64 * 3))
                    .collect();
                let names: arrow::array::StringArray = (0..n)
                    .map(|_| (next(9) > 0).then(|| format!("ev{}", next(4))))
                    .collect();
                let times: Int64Array = (0..n).map(|_| Some(next(100) as i64)).collect();
                let ids: arrow::array::StringArray =
                    (0..n).map(|i| Some(format!("id{i}"))).collect();
                RecordBatch::try_from_iter(vec![
                    ("user_id", Arc::new(users) as ArrayRef),
                    ("event_time", Arc::new(times) as ArrayRef),
                    ("event_id", Arc::new(ids) as ArrayRef),
                    ("event_name", Arc::new(names) as ArrayRef),
                ])
                .expect("a batch")
            })
            .collect();
        let mut rows: Vec<RowRef> = batches
            .iter()
            .enumerate()
            .flat_map(|(b, batch)| (0..batch.num_rows() as u32).map(move |i| (b as u32, i)))
            .collect();
        sort_event_rows(&batches, &mut rows).expect("sorted");
        let mut out = BitmapRows::default();
        // Two pieces of one day, as a day written in two chunks.
        let (first, second) = rows.split_at(1_000);
        let mut first = first.to_vec();
        let mut second = second.to_vec();
        sort_event_rows(&batches, &mut first).expect("sorted");
        sort_event_rows(&batches, &mut second).expect("sorted");
        add_day_bitmaps(&batches, &first, 20_000, &mut out).expect("added");
        add_day_bitmaps(&batches, &second, 20_000, &mut out).expect("added");
        let mut reference: BTreeMap<(String, String), BTreeSet<u32>> = BTreeMap::new();
        for batch in &batches {
            let users = ints(batch, "user_id").expect("ints");
            let names = text(batch, "event_name").expect("text");
            for i in 0..batch.num_rows() {
                if let (Some(u), Some(n)) = (get_int(&users, i), get(&names, i)) {
                    reference
                        .entry((n.to_string(), "2024-10-04".to_string()))
                        .or_default()
                        .insert(u as u32);
                }
            }
        }
        let got: BTreeMap<(String, String), BTreeSet<u32>> = out
            .maps
            .into_iter()
            .map(|(k, v)| (k, v.into_iter().collect()))
            .collect();
        assert_eq!(got.len(), 4);
        assert_eq!(got, reference);
        // Rows out of person order are an error, not a wrong bitmap.
        let mut unsorted = rows.clone();
        unsorted.reverse();
        let mut out = BitmapRows::default();
        assert!(add_day_bitmaps(&batches, &unsorted, 20_000, &mut out).is_err());
    }

    #[test]
    fn rows_gathered_by_day_from_several_batches_sort_as_lexsort_by_day_first() {
        let mut next = draws(11);
        let batches: Vec<RecordBatch> = [700, 1, 1_300]
            .into_iter()
            .map(|n| {
                let days: arrow::array::Date32Array =
                    (0..n).map(|_| Some(20_000 + next(3) as i32)).collect();
                let mut columns = vec![("event_date", Arc::new(days) as ArrayRef)];
                columns.extend(sort_keys(&mut next, n));
                RecordBatch::try_from_iter(columns).expect("a batch")
            })
            .collect();
        let mut pieces = Vec::new();
        let mut days = Vec::new();
        for (day, mut rows) in rows_by_day(&batches).expect("days") {
            sort_event_rows(&batches, &mut rows).expect("sorted");
            // Pieces of at most 300 rows, as a day is written in files.
            for part in rows.chunks(300) {
                pieces.push(gather(&batches, part).expect("gathered"));
                days.push(day);
            }
        }
        assert_eq!(days.iter().collect::<BTreeSet<_>>().len(), 3);
        let schema = batches[0].schema();
        let gathered = concat_batches(&schema, &pieces).expect("one batch");
        let all = concat_batches(&schema, &batches).expect("one batch");
        let by = |name: &str| arrow::compute::SortColumn {
            values: all.column_by_name(name).cloned().expect("a column"),
            options: Some(arrow::compute::SortOptions {
                descending: false,
                nulls_first: false,
            }),
        };
        let order = arrow::compute::lexsort_to_indices(
            &[
                by("event_date"),
                by("user_id"),
                by("event_time"),
                by("event_id"),
            ],
            None,
        )
        .expect("sorted");
        let reference = take_record_batch(&all, &order).expect("taken");
        assert_eq!(gathered.num_rows(), 2_001);
        // Equal rows (same day, person, time and id) are interchangeable, so the columns
        // are compared as they are.
        assert_eq!(gathered, reference);
    }

    #[test]
    fn window_count_fields_are_recognised() {
        assert_eq!(window_count("view_item_7d"), Some(("view_item", 7)));
        assert_eq!(window_count("add_to_cart_30d"), Some(("add_to_cart", 30)));
        assert_eq!(window_count("gmv"), None);
        assert_eq!(window_count("active_days"), None);
        assert_eq!(window_count("_7d"), None);
    }
}
