//! Saved reports: a funnel, retention or campaign ROI request kept under a name, run when
//! saved, on demand, on its own cron schedule, and whenever a pack it reads (its campaign's
//! target or holdout, a cohort) gets a new version. Every run is recorded in `report_runs`
//! with the spec, the table and pack versions it read and the whole answer; a successful run
//! also lands as rows of `report_funnel`, `report_retention` or `report_roi`, numbered by
//! version, so BI tools read them over the Postgres endpoint and anyone can reproduce them.

use std::collections::BTreeMap;

use arrow::array::RecordBatch;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use shoal_audience::running::{Guard, Registry};
use shoal_audience::schedule::Schedule;
use shoal_audience::{Error, Result};
use shoal_catalog::{Catalog, CommitNote, Role};
use shoal_query::session::rows_as_json;
use shoal_query::{Engine, Session};

use crate::campaign::{self, CampaignSpec};
use crate::funnel::{self, FunnelSpec};
use crate::retention::{self, RetentionSpec};

pub const SAVED: &str = "saved_reports";
pub const RUNS: &str = "report_runs";
pub const FUNNEL_ROWS: &str = "report_funnel";
pub const RETENTION_ROWS: &str = "report_retention";
pub const ROI_ROWS: &str = "report_roi";

/// Which report a saved report is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
#[schema(as = ReportKind)]
pub enum Kind {
    Funnel,
    Retention,
    Roi,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Funnel => "funnel",
            Kind::Retention => "retention",
            Kind::Roi => "roi",
        }
    }

    fn parse(text: &str) -> Result<Kind> {
        match text {
            "funnel" => Ok(Kind::Funnel),
            "retention" => Ok(Kind::Retention),
            "roi" => Ok(Kind::Roi),
            other => Err(Error::invalid(
                "kind",
                format!("'{other}' is not a report kind (funnel, retention or roi)"),
            )),
        }
    }

    fn rows_table(self) -> &'static str {
        match self {
            Kind::Funnel => FUNNEL_ROWS,
            Kind::Retention => RETENTION_ROWS,
            Kind::Roi => ROI_ROWS,
        }
    }
}

/// What starts a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    Create,
    Manual,
    Schedule,
    CatchUp,
    /// A pack the report reads got a new version.
    Pack,
}

impl Trigger {
    pub fn name(self) -> &'static str {
        match self {
            Trigger::Create => "create",
            Trigger::Manual => "manual",
            Trigger::Schedule => "schedule",
            Trigger::CatchUp => "catch_up",
            Trigger::Pack => "pack",
        }
    }
}

/// A request to save a report.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewReport {
    pub name: String,
    pub kind: Kind,
    #[serde(default)]
    pub description: Option<String>,
    /// The request as `POST /api/reports/{kind}` takes it.
    pub spec: Value,
    #[serde(default)]
    pub schedule: Option<String>,
    #[serde(default)]
    pub time_zone: Option<String>,
}

/// A saved report as it stands.
#[derive(Debug, Clone, Serialize)]
pub struct SavedReport {
    pub name: String,
    pub kind: Kind,
    pub description: Option<String>,
    /// `token:<id>` or `cli`.
    pub owner: String,
    /// The role runs are checked as (the saver's).
    pub role: Role,
    pub spec: Value,
    pub schedule: Option<String>,
    pub time_zone: Option<String>,
    pub created_at: String,
    pub changed_at: String,
    pub deleted_at: Option<String>,
}

/// One run of a saved report.
#[derive(Debug, Clone, Serialize)]
pub struct ReportRun {
    pub report: String,
    pub kind: Kind,
    /// The version its rows carry (successful runs only).
    pub version: Option<u64>,
    pub started_at: String,
    pub duration_ms: f64,
    pub trigger: String,
    pub status: String,
    pub error: Option<String>,
    pub spec: Value,
    pub snapshot: Value,
    pub packs: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
}

/// A saved report with its newest run and next scheduled run.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    #[serde(flatten)]
    pub report: SavedReport,
    pub last_run: Option<ReportRun>,
    pub next_run: Option<DateTime<Utc>>,
}

/// Who acts on saved reports.
#[derive(Debug, Clone)]
pub struct Actor {
    pub id: String,
    pub role: Role,
}

fn timestamp(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

fn internal(e: impl std::fmt::Display) -> Error {
    Error::Internal(e.to_string())
}

fn check_name(name: &str) -> Result<()> {
    shoal_audience::pack::check_name_of("report", name)
}

/// The packs a spec reads, by name.
fn packs_of(kind: Kind, spec: &Value) -> Vec<String> {
    let keys: &[&str] = match kind {
        Kind::Funnel | Kind::Retention => &["audience"],
        Kind::Roi => &["audience", "control"],
    };
    keys.iter()
        .filter_map(|k| spec.get(*k).and_then(Value::as_str))
        .map(str::to_string)
        .collect()
}

fn spec_error(e: serde_json::Error) -> Error {
    Error::invalid("spec", e.to_string())
}

/// Runs `kind` with `spec` as `role`: the answer and the rows it stores.
async fn answer(
    session: &Session,
    kind: Kind,
    spec: &Value,
    role: Role,
) -> Result<(Value, BTreeMap<String, u64>, Vec<Value>)> {
    let (result, snapshot, rows) = match kind {
        Kind::Funnel => {
            let parsed: FunnelSpec = serde_json::from_value(spec.clone()).map_err(spec_error)?;
            let r = funnel::run(session, &parsed, role, None).await?;
            let mut rows = Vec::new();
            let base = json!({"from_day": r.from, "to_day": r.to, "breakdown": r.breakdown});
            let mut push = |value: Option<&str>, steps: &[funnel::StepResult]| {
                for s in steps {
                    let mut row = base.clone();
                    row["breakdown_value"] = json!(value);
                    row["step"] = json!(s.step);
                    row["event"] = json!(s.event);
                    row["users"] = json!(s.users);
                    row["conversion_from_previous"] = json!(s.conversion_from_previous);
                    row["conversion_from_first"] = json!(s.conversion_from_first);
                    row["median_seconds_from_previous"] = json!(s.median_seconds_from_previous);
                    rows.push(row);
                }
            };
            if let Some(steps) = &r.steps {
                push(None, steps);
            }
            for g in r.groups.iter().flatten() {
                push(g.value.as_deref(), &g.steps);
            }
            let snapshot = r.snapshot.clone();
            (serde_json::to_value(&r).map_err(internal)?, snapshot, rows)
        }
        Kind::Retention => {
            let parsed: RetentionSpec = serde_json::from_value(spec.clone()).map_err(spec_error)?;
            let r = retention::run(session, &parsed, role, None).await?;
            let mut rows = Vec::new();
            for c in &r.cohorts {
                for (period, retained) in c.retained.iter().enumerate() {
                    rows.push(json!({"cohort": c.cohort, "size": c.size, "period": period,
                        "retained": retained, "rate": c.rates.get(period)}));
                }
            }
            let snapshot = r.snapshot.clone();
            (serde_json::to_value(&r).map_err(internal)?, snapshot, rows)
        }
        Kind::Roi => {
            let parsed: CampaignSpec = serde_json::from_value(spec.clone()).map_err(spec_error)?;
            let r = campaign::run(session, &parsed, role).await?;
            let sum = |lines: &[campaign::ValueLine]| lines.iter().map(|l| l.value).sum::<f64>();
            let h = r.holdout.as_ref();
            let rows = vec![json!({
                "campaign": r.campaign, "from_day": r.from, "to_day": r.to,
                "target": r.target, "reached": r.reached, "clicked": r.clicked,
                "converted": r.converted, "deliveries": r.deliveries,
                "positive": sum(&r.positive), "negative": sum(&r.negative), "cost": r.cost,
                "net": r.net, "roi": r.roi,
                "target_rate": h.map(|h| h.target_rate), "control_rate": h.map(|h| h.control_rate),
                "uplift": h.map(|h| h.uplift), "uplift_low": h.and_then(|h| h.uplift_low),
                "uplift_high": h.and_then(|h| h.uplift_high),
                "incremental_converters": h.map(|h| h.incremental_converters),
            })];
            let snapshot = r.snapshot.clone();
            (serde_json::to_value(&r).map_err(internal)?, snapshot, rows)
        }
    };
    Ok((result, snapshot, rows))
}

/// `rows` (JSON objects keyed by column) as a batch of `table`'s schema.
async fn append_rows(catalog: &Catalog, table: &str, rows: &[Value], by: &str) -> Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let mut handle = catalog.table(table).await?;
    let schema = handle.schema()?;
    let mut decoder = arrow::json::ReaderBuilder::new(schema)
        .build_decoder()
        .map_err(internal)?;
    decoder.serialize(rows).map_err(internal)?;
    let batch: Option<RecordBatch> = decoder.flush().map_err(internal)?;
    if let Some(batch) = batch {
        handle
            .append(vec![batch], CommitNote::new("author", by))
            .await?;
    }
    Ok(())
}

/// Rows of `sql` in a fresh session, as JSON objects.
async fn query(engine: &Engine, catalog: &Catalog, sql: &str) -> Result<Vec<Value>> {
    let session = engine.session(catalog).await?;
    let frame = session.sql(sql).await?;
    let batches = session.collect(frame).await?;
    Ok(rows_as_json(&batches)?)
}

fn quoted(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

fn text(row: &Value, key: &str) -> Option<String> {
    row.get(key).and_then(Value::as_str).map(str::to_string)
}

fn parsed_json(row: &Value, key: &str) -> Value {
    row.get(key)
        .and_then(Value::as_str)
        .and_then(|s| serde_json::from_str(s).ok())
        .unwrap_or(Value::Null)
}

fn report_of(row: &Value) -> Result<SavedReport> {
    let kind = Kind::parse(&text(row, "kind").unwrap_or_default())?;
    let role = text(row, "role")
        .unwrap_or_default()
        .parse::<Role>()
        .map_err(internal)?;
    Ok(SavedReport {
        name: text(row, "name").unwrap_or_default(),
        kind,
        description: text(row, "description"),
        owner: text(row, "owner").unwrap_or_default(),
        role,
        spec: parsed_json(row, "spec"),
        schedule: text(row, "schedule"),
        time_zone: text(row, "time_zone"),
        created_at: text(row, "created_at").unwrap_or_default(),
        changed_at: text(row, "changed_at").unwrap_or_default(),
        deleted_at: text(row, "deleted_at"),
    })
}

fn run_of(row: &Value, with_result: bool) -> Result<ReportRun> {
    Ok(ReportRun {
        report: text(row, "report").unwrap_or_default(),
        kind: Kind::parse(&text(row, "kind").unwrap_or_default())?,
        version: row.get("version").and_then(Value::as_u64),
        started_at: text(row, "started_at").unwrap_or_default(),
        duration_ms: row
            .get("duration_ms")
            .and_then(Value::as_f64)
            .unwrap_or_default(),
        trigger: text(row, "trigger").unwrap_or_default(),
        status: text(row, "status").unwrap_or_default(),
        error: text(row, "error"),
        spec: parsed_json(row, "spec"),
        snapshot: parsed_json(row, "snapshot"),
        packs: parsed_json(row, "packs"),
        result: with_result.then(|| parsed_json(row, "result")),
    })
}

/// Every saved report's current state (the newest row of each name).
async fn current(engine: &Engine, catalog: &Catalog) -> Result<Vec<SavedReport>> {
    let rows = query(
        engine,
        catalog,
        &format!("SELECT * FROM {SAVED} ORDER BY name, changed_at"),
    )
    .await?;
    let mut latest: BTreeMap<String, Value> = BTreeMap::new();
    for row in rows {
        if let Some(name) = text(&row, "name") {
            latest.insert(name, row);
        }
    }
    latest.values().map(report_of).collect()
}

async fn existing(engine: &Engine, catalog: &Catalog, name: &str) -> Result<SavedReport> {
    check_name(name)?;
    current(engine, catalog)
        .await?
        .into_iter()
        .find(|r| r.name == name)
        .ok_or_else(|| Error::NotFound(format!("no saved report named '{name}'")))
}

/// Runs of `name` (all reports when `None`), oldest first; answers only when asked.
async fn runs(
    engine: &Engine,
    catalog: &Catalog,
    name: Option<&str>,
    with_result: bool,
) -> Result<Vec<ReportRun>> {
    let filter = name.map_or(String::new(), |n| format!(" WHERE report = {}", quoted(n)));
    let columns = if with_result {
        "*"
    } else {
        "report, kind, version, started_at, duration_ms, trigger, status, error, spec, snapshot, packs"
    };
    let rows = query(
        engine,
        catalog,
        &format!("SELECT {columns} FROM {RUNS}{filter} ORDER BY started_at"),
    )
    .await?;
    rows.iter().map(|r| run_of(r, with_result)).collect()
}

async fn write_state(catalog: &Catalog, report: &SavedReport, by: &str) -> Result<()> {
    let row = json!({
        "name": report.name, "kind": report.kind.name(), "description": report.description,
        "owner": report.owner, "role": report.role.to_string(), "spec": report.spec.to_string(),
        "schedule": report.schedule, "time_zone": report.time_zone,
        "created_at": report.created_at, "changed_at": report.changed_at,
        "deleted_at": report.deleted_at,
    });
    append_rows(catalog, SAVED, &[row], by).await
}

/// Reports with a run under way in this process: runs of one report never overlap.
static RUNNING: Registry = Registry::new();

fn start_running(name: &str) -> Result<Guard> {
    RUNNING.start(name, || {
        format!("report '{name}' is being refreshed; try again when that run ends")
    })
}

/// The current versions of the packs `report` reads.
async fn pack_versions(catalog: &Catalog, report: &SavedReport) -> Value {
    let mut out = serde_json::Map::new();
    for name in packs_of(report.kind, &report.spec) {
        let version = shoal_audience::pack::resolve_version(catalog, &name, None)
            .await
            .ok();
        out.insert(name, json!(version));
    }
    Value::Object(out)
}

type Outcome = Result<(Value, BTreeMap<String, u64>, Vec<Value>)>;

/// A run under way: when it started and the pack versions it reads.
struct Started {
    at: DateTime<Utc>,
    clock: std::time::Instant,
    packs: Value,
}

/// Runs `report` as its saved role.
async fn compute(engine: &Engine, catalog: &Catalog, report: &SavedReport) -> (Started, Outcome) {
    let started = Started {
        at: Utc::now(),
        clock: std::time::Instant::now(),
        packs: pack_versions(catalog, report).await,
    };
    let outcome = async {
        let session = engine.session(catalog).await?;
        answer(&session, report.kind, &report.spec, report.role).await
    }
    .await;
    (started, outcome)
}

/// Records a run: its rows under the next version when it succeeded, and its `report_runs`
/// row either way; a failed run is returned as its error.
async fn record(
    engine: &Engine,
    catalog: &Catalog,
    report: &SavedReport,
    trigger: Trigger,
    by: &str,
    started: Started,
    outcome: Outcome,
) -> Result<ReportRun> {
    let previous = runs(engine, catalog, Some(&report.name), false).await?;
    let version = previous.iter().filter_map(|r| r.version).max().unwrap_or(0) + 1;
    let mut run = ReportRun {
        report: report.name.clone(),
        kind: report.kind,
        version: None,
        started_at: timestamp(started.at),
        duration_ms: 0.0,
        trigger: trigger.name().to_string(),
        status: "ok".into(),
        error: None,
        spec: report.spec.clone(),
        snapshot: Value::Null,
        packs: started.packs,
        result: None,
    };
    let failure = match outcome {
        Ok((result, snapshot, rows)) => {
            let refreshed = timestamp(Utc::now());
            let rows: Vec<Value> = rows
                .into_iter()
                .map(|mut row| {
                    row["report"] = json!(report.name);
                    row["version"] = json!(version);
                    row["refreshed_at"] = json!(refreshed);
                    row
                })
                .collect();
            append_rows(catalog, report.kind.rows_table(), &rows, by).await?;
            run.version = Some(version);
            run.snapshot = json!(snapshot);
            run.result = Some(result);
            None
        }
        Err(e) => {
            run.status = "failed".into();
            run.error = Some(e.to_string());
            Some(e)
        }
    };
    run.duration_ms = started.clock.elapsed().as_secs_f64() * 1000.0;
    let row = json!({
        "report": run.report, "kind": run.kind.name(), "version": run.version,
        "started_at": run.started_at, "duration_ms": run.duration_ms, "trigger": run.trigger,
        "status": run.status, "error": run.error, "spec": run.spec.to_string(),
        "snapshot": run.snapshot.to_string(), "packs": run.packs.to_string(),
        "result": run.result.as_ref().map(Value::to_string),
    });
    append_rows(catalog, RUNS, &[row], by).await?;
    match failure {
        Some(e) => Err(e),
        None => Ok(run),
    }
}

/// Saves a report after a first successful run (a spec that does not run is refused, and
/// nothing is stored).
pub async fn save(
    engine: &Engine,
    catalog: &Catalog,
    new: NewReport,
    actor: &Actor,
) -> Result<(Summary, ReportRun)> {
    if actor.role == Role::Viewer {
        return Err(Error::Forbidden(
            "viewers run reports; saving one needs an analyst or admin token".into(),
        ));
    }
    check_name(&new.name)?;
    if !new.spec.is_object() {
        return Err(Error::invalid(
            "spec",
            "the report's request, a JSON object",
        ));
    }
    let schedule = match &new.schedule {
        Some(text) => Some(Schedule::parse(text, new.time_zone.as_deref())?),
        None if new.time_zone.is_some() => {
            return Err(Error::invalid("time_zone", "a time zone needs a schedule"));
        }
        None => None,
    };
    if let Some(old) = current(engine, catalog)
        .await?
        .into_iter()
        .find(|r| r.name == new.name)
    {
        return Err(Error::Conflict(match old.deleted_at {
            Some(at) => format!(
                "a report named '{}' was deleted at {at}; choose another name",
                new.name
            ),
            None => format!("a report named '{}' exists", new.name),
        }));
    }
    let _one_at_a_time = start_running(&new.name)?;
    let now = timestamp(Utc::now());
    let report = SavedReport {
        name: new.name,
        kind: new.kind,
        description: new.description,
        owner: actor.id.clone(),
        role: actor.role,
        spec: new.spec,
        schedule: new.schedule,
        time_zone: schedule.map(|s| s.zone().to_string()),
        created_at: now.clone(),
        changed_at: now,
        deleted_at: None,
    };
    // The spec must run as the saver before anything is kept.
    let (started, outcome) = compute(engine, catalog, &report).await;
    let outcome = Ok(outcome?);
    write_state(catalog, &report, &actor.id).await?;
    let run = record(
        engine,
        catalog,
        &report,
        Trigger::Create,
        &actor.id,
        started,
        outcome,
    )
    .await?;
    let summary = summary_of(report, Some(run.clone()))?;
    Ok((summary, run))
}

fn summary_of(report: SavedReport, last_run: Option<ReportRun>) -> Result<Summary> {
    let next_run = match (&report.schedule, &report.deleted_at) {
        (Some(text), None) => {
            let schedule = Schedule::parse(text, report.time_zone.as_deref())?;
            let after = last_run
                .as_ref()
                .and_then(|r| DateTime::parse_from_rfc3339(&r.started_at).ok())
                .map_or_else(Utc::now, |t| t.with_timezone(&Utc));
            Some(schedule.next_after(after)?)
        }
        _ => None,
    };
    Ok(Summary {
        report,
        last_run,
        next_run,
    })
}

/// Saved reports with their newest run (deleted ones only when asked).
pub async fn list(engine: &Engine, catalog: &Catalog, deleted: bool) -> Result<Vec<Summary>> {
    let all_runs = runs(engine, catalog, None, false).await?;
    let mut out = Vec::new();
    for report in current(engine, catalog).await? {
        if report.deleted_at.is_some() && !deleted {
            continue;
        }
        let last = all_runs.iter().rfind(|r| r.report == report.name).cloned();
        out.push(summary_of(report, last)?);
    }
    Ok(out)
}

/// One saved report, its runs (newest answer included) and the rows of its newest version.
pub async fn show(engine: &Engine, catalog: &Catalog, name: &str) -> Result<Value> {
    let report = existing(engine, catalog, name).await?;
    let mut history = runs(engine, catalog, Some(name), true).await?;
    let latest = history.iter().rev().find(|r| r.version.is_some()).cloned();
    for run in &mut history {
        if Some(run.started_at.as_str()) != latest.as_ref().map(|l| l.started_at.as_str()) {
            run.result = None;
        }
    }
    let table = report.kind.rows_table();
    let rows = match latest.as_ref().and_then(|l| l.version) {
        Some(v) => {
            query(
                engine,
                catalog,
                &format!(
                    "SELECT * FROM {table} WHERE report = {} AND version = {v}",
                    quoted(name)
                ),
            )
            .await?
        }
        None => Vec::new(),
    };
    let summary = summary_of(report, history.last().cloned())?;
    Ok(json!({"report": summary, "runs": history, "table": table, "rows": rows}))
}

/// Runs a saved report now (`Manual`) or for the scheduler.
pub async fn refresh(
    engine: &Engine,
    catalog: &Catalog,
    name: &str,
    trigger: Trigger,
    actor: &Actor,
) -> Result<ReportRun> {
    let report = existing(engine, catalog, name).await?;
    if report.deleted_at.is_some() {
        return Err(Error::invalid(
            "name",
            format!("report '{name}' is deleted; restore it first"),
        ));
    }
    if trigger == Trigger::Manual && actor.role == Role::Viewer {
        return Err(Error::Forbidden(
            "refreshing a saved report needs an analyst or admin token".into(),
        ));
    }
    let _one_at_a_time = start_running(name)?;
    if trigger != Trigger::Manual {
        // Asked by the scheduler: still due now that no other run is under way?
        let last = runs(engine, catalog, Some(name), false).await?.pop();
        let summary = summary_of(report.clone(), last)?;
        if due_reason(catalog, &summary, Utc::now()).await?.is_none() {
            return Err(Error::Conflict(format!(
                "report '{name}' is already current"
            )));
        }
    }
    let (started, outcome) = compute(engine, catalog, &report).await;
    record(
        engine, catalog, &report, trigger, &actor.id, started, outcome,
    )
    .await
}

/// Soft-deletes (`true`) or restores (`false`) a saved report: its owner or an admin.
pub async fn set_deleted(
    engine: &Engine,
    catalog: &Catalog,
    name: &str,
    deleted: bool,
    actor: &Actor,
) -> Result<()> {
    let mut report = existing(engine, catalog, name).await?;
    if actor.role != Role::Admin && report.owner != actor.id {
        return Err(Error::Forbidden(format!(
            "report '{name}' belongs to {}; only its owner or an admin may change it",
            report.owner
        )));
    }
    if report.deleted_at.is_some() == deleted {
        return Ok(());
    }
    let now = timestamp(Utc::now());
    report.deleted_at = deleted.then(|| now.clone());
    report.changed_at = now;
    write_state(catalog, &report, &actor.id).await
}

/// Why `summary` is due a run at `now`, if it is: its schedule came round (a run missed while
/// the server was down is due once), or a pack it reads has a newer version than the one its
/// newest run read.
async fn due_reason(
    catalog: &Catalog,
    summary: &Summary,
    now: DateTime<Utc>,
) -> Result<Option<Trigger>> {
    if summary.next_run.is_some_and(|next| next <= now) {
        return Ok(Some(Trigger::Schedule));
    }
    let Some(last) = &summary.last_run else {
        return Ok(None);
    };
    let read = pack_versions(catalog, &summary.report).await;
    Ok((read != last.packs).then_some(Trigger::Pack))
}

/// Saved reports due a run at `now`, and why.
pub async fn due(
    engine: &Engine,
    catalog: &Catalog,
    now: DateTime<Utc>,
) -> Result<Vec<(String, Trigger)>> {
    let mut out = Vec::new();
    for summary in list(engine, catalog, false).await? {
        if let Some(why) = due_reason(catalog, &summary, now).await? {
            out.push((summary.report.name.clone(), why));
        }
    }
    Ok(out)
}
