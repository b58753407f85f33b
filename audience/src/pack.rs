//! Making, refreshing, comparing and deleting packs.

use std::collections::HashSet;
use std::sync::LazyLock;
use std::time::Instant;

use arrow::array::{Array, AsArray};
use arrow::datatypes::{DataType, Int64Type};
use chrono::{DateTime, NaiveDate, Utc};
use futures::TryStreamExt;
use roaring::RoaringBitmap;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use shoal_catalog::{Catalog, Role};
use shoal_query::count::{self, PathChoice};
use shoal_query::{Engine, Session};

use crate::error::{Error, Result};
use crate::expr::SetExpr;
use crate::lookalike::{self, LookalikeSpec};
use crate::running::{Guard, Registry};
use crate::schedule::Schedule;
use crate::store::{self, NewVersion, Pack, Run, Version};
use crate::upload::{self, MatchReport, Unmatched};

/// Longest pack name.
const MAX_NAME: usize = 64;

/// How a pack is made; stored verbatim as its definition.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Source {
    /// A condition tree (the builder's JSON).
    Conditions(Value),
    /// Read-only SQL whose first column is user ids.
    Sql(String),
    /// A set expression over other packs: `(a | b) & c - d`.
    Expr(String),
    /// An uploaded list (its rows are not kept in the definition; the members are).
    Upload(UploadInfo),
    /// The people most like another pack's members, outside it.
    Lookalike(LookalikeSpec),
}

/// What the definition of an uploaded pack records.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UploadInfo {
    /// File name as given.
    #[serde(default)]
    pub file: String,
    /// Kind of identifiers read (`auto`, `phone`, …).
    #[serde(default = "auto")]
    pub id_type: String,
}

fn auto() -> String {
    upload::AUTO.to_string()
}

impl Source {
    fn kind(&self) -> &'static str {
        match self {
            Source::Conditions(_) => "conditions",
            Source::Sql(_) => "sql",
            Source::Expr(_) => "expr",
            Source::Upload(_) => "upload",
            Source::Lookalike(_) => "lookalike",
        }
    }
}

/// Who asks: for ownership, commit authors and what they may read.
#[derive(Debug, Clone)]
pub struct Actor {
    /// `token:<id>` or `cli`.
    pub id: String,
    pub role: Role,
}

impl Actor {
    fn may_change(&self, pack: &Pack) -> Result<()> {
        if self.role == Role::Admin || pack.owner == self.id {
            Ok(())
        } else {
            Err(Error::Forbidden(format!(
                "audience '{}' belongs to {}; only its owner or an admin may change it",
                pack.name, pack.owner
            )))
        }
    }
}

/// A request to make a pack.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewPack {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    /// once (default) or dynamic.
    #[serde(default)]
    pub mode: Option<String>,
    /// Cron schedule of a dynamic pack (five fields).
    #[serde(default)]
    pub schedule: Option<String>,
    /// Zone of the schedule and of relative dates (UTC unless named).
    #[serde(default)]
    pub time_zone: Option<String>,
    /// Evaluation date `T` of a once pack (default today).
    #[serde(default)]
    pub evaluated_at: Option<NaiveDate>,
    #[serde(flatten)]
    pub source: SourceField,
}

/// The source given in a request: exactly one of these.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
pub struct SourceField {
    #[serde(default)]
    pub conditions: Option<Value>,
    #[serde(default)]
    pub sql: Option<String>,
    #[serde(default)]
    pub expr: Option<String>,
    #[serde(default)]
    pub lookalike: Option<LookalikeSpec>,
}

/// The list of an upload, when the pack is made from one.
pub struct UploadedList<'a> {
    pub file: &'a str,
    pub id_type: &'a str,
    pub bytes: &'a [u8],
}

/// What a computation produced.
struct Computed {
    bitmap: RoaringBitmap,
    evaluated_at: NaiveDate,
    snapshot: Value,
    report: Value,
    unmatched: Vec<Unmatched>,
}

/// Checks a pack name: letters, digits and `_`, starting with a letter.
pub fn check_name(name: &str) -> Result<()> {
    check_name_of("pack", name)
}

/// Checks the name of a `what` (pack, report): 1 to 64 letters, digits and `_`, starting
/// with a letter.
pub fn check_name_of(what: &str, name: &str) -> Result<()> {
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(char::is_alphabetic);
    if !first_ok
        || name.chars().count() > MAX_NAME
        || !name.chars().all(|c| c.is_alphanumeric() || c == '_')
    {
        return Err(Error::invalid(
            "name",
            format!(
                "'{name}' is not a {what} name: 1 to {MAX_NAME} letters, digits or _, starting with a letter"
            ),
        ));
    }
    Ok(())
}

/// Names of the packs a condition tree refers to (`{"audience": "x"}` anywhere).
fn tree_audiences(tree: &Value, out: &mut HashSet<String>) {
    match tree {
        Value::Object(map) => {
            if let Some(Value::String(name)) = map.get("audience") {
                out.insert(name.clone());
            }
            map.values().for_each(|v| tree_audiences(v, out));
        }
        Value::Array(items) => items.iter().for_each(|v| tree_audiences(v, out)),
        _ => {}
    }
}

/// Refuses a definition that names the pack itself.
fn check_not_self(name: &str, source: &Source) -> Result<()> {
    let named: HashSet<String> = match source {
        Source::Conditions(tree) => {
            let mut out = HashSet::new();
            tree_audiences(tree, &mut out);
            out
        }
        Source::Expr(text) => SetExpr::parse(text)?.names().into_iter().collect(),
        Source::Lookalike(spec) => HashSet::from([spec.seed.clone()]),
        _ => HashSet::new(),
    };
    if named.contains(name) {
        return Err(Error::invalid(
            match source {
                Source::Expr(_) => "expr",
                Source::Lookalike(_) => "lookalike.seed",
                _ => "conditions",
            },
            format!("a pack cannot be made from itself ('{name}')"),
        ));
    }
    Ok(())
}

/// Members of another pack for an expression: its current version, remapped; deleted packs
/// are refused.
async fn current_members(
    catalog: &Catalog,
    session: &Session,
    name: &str,
    field: &str,
) -> Result<RoaringBitmap> {
    if let Some(pack) = store::pack(catalog, name).await?
        && pack.deleted_at.is_some()
    {
        return Err(Error::invalid(
            field,
            format!("audience '{name}' is deleted"),
        ));
    }
    match session.audience(name).await {
        Ok(bitmap) => Ok((*bitmap).clone()),
        Err(shoal_query::Error::Invalid(_)) => {
            Err(Error::invalid(field, format!("unknown audience '{name}'")))
        }
        Err(e) => Err(e.into()),
    }
}

/// The ids in the first column of a person's SQL, kept when they are people.
async fn sql_members(
    engine: &Engine,
    session: &Session,
    sql: &str,
    role: Role,
) -> Result<(RoaringBitmap, Value)> {
    let frame = session.user_sql(sql, role).await?;
    let first = frame
        .schema()
        .fields()
        .first()
        .map(|f| (f.name().clone(), f.data_type().clone()))
        .ok_or_else(|| Error::invalid("sql", "the query returns no columns"))?;
    if !first.1.is_integer() {
        return Err(Error::invalid(
            "sql",
            format!(
                "the first column must be user ids (integers); '{}' is {}",
                first.0, first.1
            ),
        ));
    }
    let mut stream = session.stream(frame).await?;
    let mut bitmap = RoaringBitmap::new();
    let (mut rows, mut invalid) = (0u64, 0u64);
    let work = async {
        while let Some(batch) = stream.try_next().await? {
            let ids = arrow::compute::cast(batch.column(0), &DataType::Int64)?;
            let ids = ids.as_primitive::<Int64Type>();
            rows += batch.num_rows() as u64;
            for i in 0..ids.len() {
                match (ids.is_valid(i), u32::try_from(ids.value(i))) {
                    (true, Ok(id)) => {
                        bitmap.insert(id);
                    }
                    _ => invalid += 1,
                }
            }
        }
        Ok::<_, datafusion::error::DataFusionError>(())
    };
    session.limited(work).await?;
    let universe = engine.universe(session).await?;
    let members = &bitmap & universe.as_ref();
    let not_users = bitmap.len() - members.len();
    Ok((
        members,
        json!({"rows": rows, "invalid_ids": invalid, "not_users": not_users}),
    ))
}

async fn compute(
    engine: &Engine,
    catalog: &Catalog,
    source: &Source,
    role: Role,
    evaluated_at: Option<NaiveDate>,
    list: Option<&UploadedList<'_>>,
) -> Result<Computed> {
    let session = engine.session(catalog).await?;
    let today = evaluated_at.unwrap_or_else(|| {
        let zone = shoal_catalog::zone_offset(&catalog.definition().time_zone)
            .unwrap_or_else(|| chrono::FixedOffset::east_opt(0).expect("zero offset"));
        Utc::now().with_timezone(&zone).date_naive()
    });
    let mut unmatched = Vec::new();
    let (bitmap, evaluated_at, report) = match source {
        Source::Conditions(tree) => {
            let prepared = count::prepare(&session, tree, role, evaluated_at)?;
            let (bitmap, path) =
                count::members(engine, &session, &prepared, PathChoice::Auto).await?;
            (bitmap, prepared.evaluated_at, json!({"path": path}))
        }
        Source::Sql(sql) => {
            let (bitmap, report) = sql_members(engine, &session, sql, role).await?;
            (bitmap, today, report)
        }
        Source::Expr(text) => {
            let expr = SetExpr::parse(text)?;
            let mut members = std::collections::HashMap::new();
            for name in expr.names() {
                members.insert(
                    name.clone(),
                    current_members(catalog, &session, &name, "expr").await?,
                );
            }
            let bitmap = expr.evaluate(&|name| {
                members
                    .get(name)
                    .cloned()
                    .ok_or_else(|| Error::invalid("expr", format!("unknown audience '{name}'")))
            })?;
            (bitmap, today, json!({"packs": expr.names()}))
        }
        Source::Upload(info) => {
            let list = list.ok_or_else(|| {
                Error::invalid("file", "an uploaded pack needs its list (upload it again)")
            })?;
            let types: Vec<String> = catalog
                .definition()
                .identity
                .types
                .iter()
                .map(|t| t.name.clone())
                .collect();
            let started = Instant::now();
            let parsed = upload::parse(list.bytes, &info.id_type, &types)?;
            let parse_ms = started.elapsed().as_millis() as u64;
            let (bitmap, report, rows): (RoaringBitmap, MatchReport, Vec<Unmatched>) =
                upload::match_list(engine, &session, parsed).await?;
            unmatched = rows;
            let mut report =
                serde_json::to_value(report).map_err(|e| Error::Internal(e.to_string()))?;
            report["parse_ms"] = json!(parse_ms);
            report["match_ms"] = json!(started.elapsed().as_millis() as u64 - parse_ms);
            (bitmap, today, report)
        }
        Source::Lookalike(spec) => {
            let seed = current_members(catalog, &session, &spec.seed, "lookalike.seed").await?;
            let (bitmap, report) =
                lookalike::expand(engine, &session, spec, &seed, role, today).await?;
            (bitmap, today, report)
        }
    };
    Ok(Computed {
        bitmap,
        evaluated_at,
        snapshot: serde_json::to_value(session.versions())
            .map_err(|e| Error::Internal(e.to_string()))?,
        report,
        unmatched,
    })
}

/// One write of pack tables at a time in this process: version numbers are read and
/// assigned under it.
static WRITES: LazyLock<tokio::sync::Mutex<()>> = LazyLock::new(|| tokio::sync::Mutex::new(()));

/// Packs being computed now; a second computation of one is refused, never overlapped.
static RUNNING: Registry = Registry::new();

fn start_running(name: &str) -> Result<Guard> {
    RUNNING.start(name, || {
        format!("audience '{name}' is being computed now; try again when it is done")
    })
}

/// The current members of version `version` of `name` (stored ids remapped through merges).
pub async fn members(
    engine: &Engine,
    catalog: &Catalog,
    name: &str,
    version: u64,
) -> Result<RoaringBitmap> {
    let stored = store::bitmap(catalog, name, version).await?;
    let session = engine.session(catalog).await?;
    Ok(session.merge_log().await?.remap(&stored))
}

/// Whether the pack being committed may have versions already.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pending {
    /// Just made: its row was inserted under the write lock and it is being computed (no
    /// refresh can run alongside), so no version of it can exist.
    First,
    /// Refreshed: the next number after the newest stored version.
    Next,
}

/// Commits a computed version: the next number, added/removed against the previous version.
async fn commit(
    engine: &Engine,
    catalog: &Catalog,
    name: &str,
    definition: &Value,
    computed: &Computed,
    pending: Pending,
    by: &str,
) -> Result<Version> {
    let _one_writer = WRITES.lock().await;
    let previous = match pending {
        Pending::First => None,
        Pending::Next => store::versions(catalog, name).await?.pop(),
    };
    let (version, added, removed) = match &previous {
        None => (1, computed.bitmap.len(), 0),
        Some(p) => {
            let before = members(engine, catalog, name, p.version).await?;
            (
                p.version + 1,
                (&computed.bitmap - &before).len(),
                (&before - &computed.bitmap).len(),
            )
        }
    };
    let now = Utc::now();
    let evaluated_at = computed
        .evaluated_at
        .and_hms_opt(0, 0, 0)
        .map(|t| t.and_utc())
        .unwrap_or(now);
    if !computed.unmatched.is_empty() {
        store::replace_unmatched(catalog, name, version, &computed.unmatched, by).await?;
    }
    store::append_version(
        catalog,
        name,
        &NewVersion {
            version,
            created_at: now,
            evaluated_at,
            definition,
            snapshot: &computed.snapshot,
            report: &computed.report,
            bitmap: &computed.bitmap,
            added,
            removed,
        },
        by,
    )
    .await?;
    Ok(Version {
        version,
        created_at: now,
        evaluated_at,
        size: computed.bitmap.len(),
        added: Some(added),
        removed: Some(removed),
        snapshot: computed.snapshot.clone(),
        definition: definition.clone(),
        report: computed.report.clone(),
    })
}

/// A pack with its newest version.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    #[serde(flatten)]
    pub pack: Pack,
    pub size: Option<u64>,
    pub version: Option<u64>,
    pub last_run: Option<Run>,
    pub next_run: Option<DateTime<Utc>>,
}

/// Makes a pack and its first version. `list` carries the file of an uploaded pack.
pub async fn create(
    engine: &Engine,
    catalog: &Catalog,
    request: NewPack,
    list: Option<UploadedList<'_>>,
    actor: &Actor,
) -> Result<(Summary, Version)> {
    if actor.role < Role::Analyst {
        return Err(Error::Forbidden(
            "making packs needs the analyst role or higher".into(),
        ));
    }
    check_name(&request.name)?;
    if let Some(d) = &request.description
        && d.chars().count() > 2000
    {
        return Err(Error::invalid("description", "at most 2,000 characters"));
    }
    let given = &request.source;
    let mut sources = Vec::new();
    if let Some(tree) = &given.conditions {
        sources.push(Source::Conditions(tree.clone()));
    }
    if let Some(sql) = &given.sql {
        sources.push(Source::Sql(sql.clone()));
    }
    if let Some(text) = &given.expr {
        sources.push(Source::Expr(text.clone()));
    }
    if let Some(spec) = &given.lookalike {
        spec.check()?;
        sources.push(Source::Lookalike(spec.clone()));
    }
    if let Some(list) = &list {
        sources.push(Source::Upload(UploadInfo {
            file: list.file.to_string(),
            id_type: list.id_type.to_string(),
        }));
    }
    let Some(source) = sources.pop().filter(|_| sources.is_empty()) else {
        return Err(Error::invalid(
            "source",
            "give exactly one of conditions, sql, expr, lookalike or an uploaded list",
        ));
    };
    check_not_self(&request.name, &source)?;
    let mode = request.mode.clone().unwrap_or_else(|| "once".into());
    let schedule = match (mode.as_str(), &request.schedule) {
        ("once", None) => None,
        ("once", Some(_)) => {
            return Err(Error::invalid(
                "schedule",
                "only dynamic packs have a schedule",
            ));
        }
        ("dynamic", Some(text)) => {
            if matches!(source, Source::Upload(_)) {
                return Err(Error::invalid(
                    "mode",
                    "an uploaded list is fixed; it cannot be dynamic",
                ));
            }
            if request.evaluated_at.is_some() {
                return Err(Error::invalid(
                    "evaluated_at",
                    "a dynamic pack is evaluated at each refresh's date",
                ));
            }
            Some(Schedule::parse(text, request.time_zone.as_deref())?)
        }
        ("dynamic", None) => {
            return Err(Error::invalid(
                "schedule",
                "a dynamic pack needs a cron schedule, e.g. \"0 3 * * *\"",
            ));
        }
        (other, _) => {
            return Err(Error::invalid(
                "mode",
                format!("'{other}' is not once or dynamic"),
            ));
        }
    };
    if let Some(existing) = store::pack(catalog, &request.name).await? {
        return Err(Error::Conflict(match existing.deleted_at {
            Some(at) => format!(
                "an audience named '{}' was deleted at {at}; restore it or choose another name",
                existing.name
            ),
            None => format!("an audience named '{}' exists", existing.name),
        }));
    }
    let _running = start_running(&request.name)?;
    let started = Utc::now();
    let clock = Instant::now();
    let computed = compute(
        engine,
        catalog,
        &source,
        actor.role,
        request.evaluated_at,
        list.as_ref(),
    )
    .await?;
    let definition = serde_json::to_value(&source).map_err(|e| Error::Internal(e.to_string()))?;
    let pack = Pack {
        name: request.name.clone(),
        description: request.description.clone(),
        owner: actor.id.clone(),
        kind: source.kind().to_string(),
        definition: definition.clone(),
        mode,
        schedule: schedule
            .as_ref()
            .map(|_| request.schedule.clone().unwrap_or_default()),
        time_zone: schedule.as_ref().map(|s| s.zone().to_string()),
        created_at: started,
        deleted_at: None,
    };
    {
        let _one_writer = WRITES.lock().await;
        if store::pack(catalog, &pack.name).await?.is_some() {
            return Err(Error::Conflict(format!(
                "an audience named '{}' exists",
                pack.name
            )));
        }
        store::insert_pack(catalog, &pack, &actor.id).await?;
    }
    let version = commit(
        engine,
        catalog,
        &pack.name,
        &definition,
        &computed,
        Pending::First,
        &actor.id,
    )
    .await?;
    let run = Run {
        audience: pack.name.clone(),
        started_at: started,
        duration_ms: clock.elapsed().as_secs_f64() * 1e3,
        trigger: "create".into(),
        status: "ok".into(),
        version: Some(version.version),
        size: Some(version.size),
        error: None,
    };
    store::append_run(catalog, &run, &actor.id).await?;
    let next_run = match &schedule {
        Some(s) => Some(s.next_after(Utc::now())?),
        None => None,
    };
    Ok((
        Summary {
            pack,
            size: Some(version.size),
            version: Some(version.version),
            last_run: Some(run),
            next_run,
        },
        version,
    ))
}

/// The pack `name`, or a 404 naming it; deleted packs only when `deleted` is true.
async fn existing(catalog: &Catalog, name: &str, deleted: bool) -> Result<Pack> {
    match store::pack(catalog, name).await? {
        Some(pack) if pack.deleted_at.is_none() || deleted => Ok(pack),
        Some(_) => Err(Error::NotFound(format!(
            "audience '{name}' is deleted (restore it to use it)"
        ))),
        None => Err(Error::NotFound(format!("no audience named '{name}'"))),
    }
}

/// What set off a refresh.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    Manual,
    Schedule,
    CatchUp,
}

impl Trigger {
    fn as_str(self) -> &'static str {
        match self {
            Trigger::Manual => "manual",
            Trigger::Schedule => "schedule",
            Trigger::CatchUp => "catch_up",
        }
    }
}

/// Computes a new version of `name` now. A failure is recorded as a failed run and leaves
/// the previous version current.
pub async fn refresh(
    engine: &Engine,
    catalog: &Catalog,
    name: &str,
    trigger: Trigger,
    actor: &Actor,
) -> Result<Version> {
    if actor.role < Role::Analyst {
        return Err(Error::Forbidden(
            "refreshing packs needs the analyst role or higher".into(),
        ));
    }
    let pack = existing(catalog, name, false).await?;
    let source: Source = serde_json::from_value(pack.definition.clone())
        .map_err(|e| Error::Internal(format!("stored definition of '{name}': {e}")))?;
    if matches!(source, Source::Upload(_)) {
        return Err(Error::invalid(
            "audience",
            format!("'{name}' is an uploaded list; upload a new list to change it"),
        ));
    }
    let _running = start_running(name)?;
    let started = Utc::now();
    let clock = Instant::now();
    let evaluated_at = if pack.mode == "once" {
        // A once pack recomputed on demand keeps its evaluation date.
        store::versions(catalog, name)
            .await?
            .last()
            .map(|v| v.evaluated_at.date_naive())
    } else {
        None
    };
    // Scheduled refreshes run with the rights of the role that made the pack's definition
    // valid; the definition was checked when it was made.
    let role = if trigger == Trigger::Manual {
        actor.role
    } else {
        Role::Admin
    };
    let outcome = async {
        let computed = compute(engine, catalog, &source, role, evaluated_at, None).await?;
        commit(
            engine,
            catalog,
            name,
            &pack.definition,
            &computed,
            Pending::Next,
            &actor.id,
        )
        .await
    }
    .await;
    let run = Run {
        audience: name.to_string(),
        started_at: started,
        duration_ms: clock.elapsed().as_secs_f64() * 1e3,
        trigger: trigger.as_str().into(),
        status: if outcome.is_ok() { "ok" } else { "failed" }.into(),
        version: outcome.as_ref().ok().map(|v| v.version),
        size: outcome.as_ref().ok().map(|v| v.size),
        error: outcome.as_ref().err().map(|e| e.to_string()),
    };
    store::append_run(catalog, &run, &actor.id).await?;
    outcome
}

/// The next scheduled run of a dynamic pack after its last run (or its creation).
fn next_run(pack: &Pack, last: Option<&Run>) -> Result<Option<DateTime<Utc>>> {
    let (Some(text), "dynamic", None) = (&pack.schedule, pack.mode.as_str(), pack.deleted_at)
    else {
        return Ok(None);
    };
    let schedule = Schedule::parse(text, pack.time_zone.as_deref())?;
    let since = last.map_or(pack.created_at, |r| r.started_at);
    Ok(Some(schedule.next_after(since)?))
}

/// Every pack (deleted ones when `deleted`), with size, last run and next run.
pub async fn list(catalog: &Catalog, deleted: bool) -> Result<Vec<Summary>> {
    let packs = store::packs(catalog).await?;
    let runs = store::runs(catalog, None).await?;
    let mut out = Vec::new();
    for pack in packs {
        if pack.deleted_at.is_some() && !deleted {
            continue;
        }
        let last_run = runs.iter().rev().find(|r| r.audience == pack.name).cloned();
        let last_ok = runs
            .iter()
            .rev()
            .find(|r| r.audience == pack.name && r.status == "ok");
        let next_run = next_run(&pack, last_run.as_ref())?;
        out.push(Summary {
            size: last_ok.and_then(|r| r.size),
            version: last_ok.and_then(|r| r.version),
            pack,
            last_run,
            next_run,
        });
    }
    Ok(out)
}

/// A pack in full: its summary, versions and runs.
#[derive(Debug, Clone, Serialize)]
pub struct Detail {
    #[serde(flatten)]
    pub summary: Summary,
    pub schedule_description: Option<String>,
    pub versions: Vec<Version>,
    pub runs: Vec<Run>,
}

/// One pack with its history.
pub async fn show(catalog: &Catalog, name: &str) -> Result<Detail> {
    let pack = existing(catalog, name, true).await?;
    let versions = store::versions(catalog, name).await?;
    let runs = store::runs(catalog, Some(name)).await?;
    let next = next_run(&pack, runs.last())?;
    let schedule_description = match &pack.schedule {
        Some(text) => Some(Schedule::parse(text, pack.time_zone.as_deref())?.describe()),
        None => None,
    };
    let current = versions.last();
    Ok(Detail {
        summary: Summary {
            size: current.map(|v| v.size),
            version: current.map(|v| v.version),
            last_run: runs.last().cloned(),
            next_run: next,
            pack,
        },
        schedule_description,
        versions,
        runs,
    })
}

/// Which members a diff lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    /// In the newer version, not the older.
    Entered,
    /// In the older version, not the newer.
    Left,
}

/// Two versions compared.
#[derive(Debug, Clone, Serialize)]
pub struct Diff {
    pub audience: String,
    pub from: u64,
    pub to: u64,
    pub from_size: u64,
    pub to_size: u64,
    pub entered: u64,
    pub left: u64,
    pub both: u64,
    /// Listed user ids (lowest first) when asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub users: Option<Vec<u32>>,
}

/// Compares versions `from` and `to` of `name` (both remapped through merges).
pub async fn diff(
    engine: &Engine,
    catalog: &Catalog,
    name: &str,
    from: u64,
    to: u64,
    side: Option<Side>,
    limit: usize,
) -> Result<Diff> {
    existing(catalog, name, true).await?;
    let a = members(engine, catalog, name, from).await?;
    let b = members(engine, catalog, name, to).await?;
    let entered = &b - &a;
    let left = &a - &b;
    let users = side.map(|s| {
        let set = if s == Side::Entered { &entered } else { &left };
        set.iter().take(limit).collect()
    });
    Ok(Diff {
        audience: name.to_string(),
        from,
        to,
        from_size: a.len(),
        to_size: b.len(),
        entered: entered.len(),
        left: left.len(),
        both: (&a & &b).len(),
        users,
    })
}

/// Soft-deletes a pack: it stops refreshing and cannot be used; versions are kept.
pub async fn delete(catalog: &Catalog, name: &str, actor: &Actor) -> Result<()> {
    let pack = existing(catalog, name, false).await?;
    actor.may_change(&pack)?;
    let _one_writer = WRITES.lock().await;
    store::set_deleted(catalog, name, Some(Utc::now()), &actor.id).await
}

/// Undoes a delete.
pub async fn restore(catalog: &Catalog, name: &str, actor: &Actor) -> Result<()> {
    let pack = existing(catalog, name, true).await?;
    actor.may_change(&pack)?;
    if pack.deleted_at.is_none() {
        return Ok(());
    }
    let _one_writer = WRITES.lock().await;
    store::set_deleted(catalog, name, None, &actor.id).await
}

/// Names of the dynamic packs with a run due at `now` (a run missed while the server was
/// down is due once).
pub async fn due(catalog: &Catalog, now: DateTime<Utc>) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for summary in list(catalog, false).await? {
        if let Some(next) = summary.next_run
            && next <= now
        {
            out.push(summary.pack.name);
        }
    }
    Ok(out)
}

/// A version number, or the newest when `None`.
pub async fn resolve_version(catalog: &Catalog, name: &str, version: Option<u64>) -> Result<u64> {
    existing(catalog, name, true).await?;
    let versions = store::versions(catalog, name).await?;
    match version {
        Some(v) if versions.iter().any(|x| x.version == v) => Ok(v),
        Some(v) => Err(Error::NotFound(format!(
            "audience '{name}' has no version {v}"
        ))),
        None => versions
            .last()
            .map(|v| v.version)
            .ok_or_else(|| Error::NotFound(format!("audience '{name}' has no version yet"))),
    }
}
