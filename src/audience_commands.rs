//! `shoal audience …` and `/api/audiences…`: audience packs, and the scheduler that keeps
//! dynamic ones current.

use std::io::Write;
use std::path::Path as FsPath;

use axum::Json;
use axum::extract::State;
use axum::response::Response;
use chrono::Utc;
use serde::Deserialize;
use serde_json::{Value, json};
use shoal_audience::lookalike::{LookalikeSpec, Method};
use shoal_audience::pack::{self, Actor, NewPack, Side, SourceField, Trigger, UploadedList};
use shoal_audience::schedule::Schedule;
use shoal_audience::{export, store};
use shoal_catalog::{Catalog, Role};
use shoal_query::Engine;

use crate::cli::{AudienceCommand, LookalikeMethod, SqlFormat};
use crate::error::{AppError, AppResult};
use crate::extract::{ApiBytes, ApiPath, ApiQuery};
use crate::openapi::ApiErrors;
use crate::query_commands::{streamed, write_stream};
use crate::serve::AppState;
use crate::tokens::Caller;

/// The command line owns the warehouse.
fn cli_actor() -> Actor {
    Actor {
        id: "cli".into(),
        role: Role::Admin,
    }
}

fn actor(caller: &Caller) -> Actor {
    Actor {
        id: caller.author(),
        role: caller.role,
    }
}

fn read_input(name: &str) -> AppResult<Vec<u8>> {
    if name == "-" {
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut bytes)
            .map_err(|e| AppError::BadRequest(format!("stdin: {e}")))?;
        Ok(bytes)
    } else {
        std::fs::read(name).map_err(|e| AppError::BadRequest(format!("{name}: {e}")))
    }
}

fn print(value: &impl serde::Serialize) -> AppResult<()> {
    let text = serde_json::to_string(value).map_err(|e| AppError::Internal(e.to_string()))?;
    println!("{text}");
    Ok(())
}

fn format_of(text: &str) -> AppResult<SqlFormat> {
    match text {
        "csv" => Ok(SqlFormat::Csv),
        "jsonl" => Ok(SqlFormat::Jsonl),
        other => Err(AppError::BadRequest(format!(
            "format: '{other}' is not csv or jsonl"
        ))),
    }
}

/// `shoal audience …`.
pub async fn command(catalog: &Catalog, command: &AudienceCommand) -> AppResult<()> {
    let engine = Engine::new(Default::default());
    let me = cli_actor();
    match command {
        AudienceCommand::Create(args) => {
            let conditions = match &args.conditions {
                Some(file) => {
                    let bytes = read_input(file)?;
                    Some(
                        serde_json::from_slice::<Value>(&bytes)
                            .map_err(|e| AppError::BadRequest(format!("{file}: not JSON: {e}")))?,
                    )
                }
                None => None,
            };
            let request = NewPack {
                name: args.name.clone(),
                description: args.description.clone(),
                mode: Some(
                    if args.dynamic.is_some() {
                        "dynamic"
                    } else {
                        "once"
                    }
                    .into(),
                ),
                schedule: args.dynamic.clone(),
                time_zone: args.zone.clone(),
                evaluated_at: args.evaluated_at,
                source: SourceField {
                    conditions,
                    sql: args.sql.clone(),
                    expr: args.expr.clone(),
                    lookalike: args.lookalike.as_ref().map(|seed| LookalikeSpec {
                        seed: seed.clone(),
                        size: args.size,
                        percent: args.percent,
                        method: match args.method {
                            Some(LookalikeMethod::Cosine) => Method::Cosine,
                            _ => Method::Logistic,
                        },
                        features: args.features.clone(),
                    }),
                },
            };
            let bytes = match &args.upload {
                Some(file) => Some(read_input(file)?),
                None => None,
            };
            let list = match (&args.upload, &bytes) {
                (Some(file), Some(bytes)) => Some(UploadedList {
                    file: FsPath::new(file)
                        .file_name()
                        .and_then(|n| n.to_str())
                        .unwrap_or(file),
                    id_type: &args.id_type,
                    bytes,
                }),
                _ => None,
            };
            let (summary, version) = pack::create(&engine, catalog, request, list, &me).await?;
            if args.json {
                print(&json!({"audience": summary, "version": version}))?;
            } else {
                println!(
                    "audience '{}' version {}: {} users",
                    summary.pack.name, version.version, version.size
                );
                if version.report.get("matched").is_some() {
                    println!("upload: {}", version.report);
                }
                if let Some(next) = summary.next_run {
                    println!("next refresh: {next}");
                }
            }
        }
        AudienceCommand::List { deleted, json } => {
            let packs = pack::list(catalog, *deleted).await?;
            if *json {
                print(&json!({ "audiences": packs }))?;
            } else {
                println!(
                    "{:<24} {:>10} {:>4} {:<8} {:<12} {:<22} status",
                    "name", "size", "ver", "mode", "kind", "last run"
                );
                for p in packs {
                    println!(
                        "{:<24} {:>10} {:>4} {:<8} {:<12} {:<22} {}",
                        p.pack.name,
                        p.size.map(|s| s.to_string()).unwrap_or_else(|| "-".into()),
                        p.version
                            .map(|s| s.to_string())
                            .unwrap_or_else(|| "-".into()),
                        p.pack.mode,
                        p.pack.kind,
                        p.last_run
                            .as_ref()
                            .map(|r| r.started_at.format("%Y-%m-%d %H:%M UTC").to_string())
                            .unwrap_or_default(),
                        match (&p.pack.deleted_at, &p.last_run) {
                            (Some(_), _) => "deleted".to_string(),
                            (None, Some(r)) => r.status.clone(),
                            (None, None) => "-".into(),
                        }
                    );
                }
            }
        }
        AudienceCommand::Show { name } => print(&pack::show(catalog, name).await?)?,
        AudienceCommand::Versions { name } => {
            pack::show(catalog, name).await?;
            print(&json!({"audience": name, "versions": store::versions(catalog, name).await?}))?
        }
        AudienceCommand::Diff {
            name,
            from,
            to,
            list,
            limit,
        } => {
            let side = match list.as_deref() {
                None => None,
                Some("entered") => Some(Side::Entered),
                Some("left") => Some(Side::Left),
                Some(other) => {
                    return Err(AppError::BadRequest(format!(
                        "list: '{other}' is not entered or left"
                    )));
                }
            };
            print(&pack::diff(&engine, catalog, name, *from, *to, side, *limit).await?)?
        }
        AudienceCommand::Refresh { name } => {
            let version = pack::refresh(&engine, catalog, name, Trigger::Manual, &me).await?;
            print(&version)?
        }
        AudienceCommand::Delete { name } => {
            pack::delete(catalog, name, &me).await?;
            eprintln!("audience '{name}' deleted (shoal audience restore {name} undoes it)");
        }
        AudienceCommand::Restore { name } => {
            pack::restore(catalog, name, &me).await?;
            eprintln!("audience '{name}' restored");
        }
        AudienceCommand::Export {
            name,
            version,
            columns,
            format,
            out,
        } => {
            let columns = split_columns(columns.as_deref());
            let planned =
                export::export(&engine, catalog, name, *version, &columns, format, &me).await?;
            let schema = planned.frame.schema().inner().clone();
            let stream = planned.session.stream(planned.frame).await?;
            let rows = match out {
                Some(path) => {
                    let mut file =
                        std::io::BufWriter::new(std::fs::File::create(path).map_err(|e| {
                            AppError::BadRequest(format!("{}: {e}", path.display()))
                        })?);
                    let rows = write_stream(
                        &planned.session,
                        stream,
                        schema,
                        format_of(format)?,
                        &mut file,
                    )
                    .await?;
                    file.flush()
                        .map_err(|e| AppError::Internal(e.to_string()))?;
                    rows
                }
                None => {
                    let mut stdout = std::io::stdout().lock();
                    write_stream(
                        &planned.session,
                        stream,
                        schema,
                        format_of(format)?,
                        &mut stdout,
                    )
                    .await?
                }
            };
            eprintln!(
                "exported {rows} members of '{name}' version {}",
                planned.version
            );
        }
        AudienceCommand::Unmatched { name, version } => {
            let version = pack::resolve_version(catalog, name, *version).await?;
            let frame = store::unmatched(catalog, name, version).await?;
            let schema = frame.schema().inner().clone();
            let session = engine.session(catalog).await?;
            let stream = session.stream(frame).await?;
            let mut stdout = std::io::stdout().lock();
            write_stream(&session, stream, schema, SqlFormat::Csv, &mut stdout).await?;
        }
    }
    Ok(())
}

fn split_columns(text: Option<&str>) -> Vec<String> {
    text.unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(str::to_string)
        .collect()
}

async fn catalog_of(state: &AppState) -> Catalog {
    state.catalog.read().await.clone()
}

fn to_json(value: impl serde::Serialize) -> AppResult<Json<Value>> {
    serde_json::to_value(value)
        .map(Json)
        .map_err(|e| AppError::Internal(e.to_string()))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// List deleted packs instead.
    #[serde(default)]
    deleted: bool,
}

/// `GET /api/audiences?deleted=true`.
#[utoipa::path(get, path = "/api/audiences", tag = "audiences", security(("token" = [])),
    params(ListQuery),
    responses((status = 200, description = "Packs with size, mode, last refresh and status", body = Object), ApiErrors))]
pub async fn list_route(
    State(state): State<AppState>,
    _caller: Caller,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> AppResult<Json<Value>> {
    let catalog = catalog_of(&state).await;
    to_json(json!({"audiences": pack::list(&catalog, query.deleted).await?}))
}

/// `POST /api/audiences`: `{"name", "conditions"|"sql"|"expr", "mode"?, "schedule"?, …}`.
#[utoipa::path(post, path = "/api/audiences", tag = "audiences", security(("token" = [])),
    request_body = shoal_audience::pack::NewPack,
    responses((status = 200, description = "The pack and its first version", body = Object), ApiErrors))]
pub async fn create_route(
    State(state): State<AppState>,
    caller: Caller,
    ApiBytes(body): ApiBytes,
) -> AppResult<Json<Value>> {
    let request: NewPack = crate::extract::json_body(&body)?;
    let catalog = catalog_of(&state).await;
    let (summary, version) =
        pack::create(&state.engine, &catalog, request, None, &actor(&caller)).await?;
    to_json(json!({"audience": summary, "version": version}))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct UploadQuery {
    /// The new pack's name.
    name: String,
    #[serde(default)]
    description: Option<String>,
    /// auto (default), user_id, phone, phone_sha256 or an identity type.
    #[serde(default)]
    id_type: Option<String>,
    /// The file's name; `.csv` is read as CSV.
    #[serde(default)]
    filename: Option<String>,
}

/// `POST /api/audiences/upload?name=N&id_type=auto|phone|…&filename=F`, body = the list.
#[utoipa::path(post, path = "/api/audiences/upload", tag = "audiences", security(("token" = [])),
    params(UploadQuery),
    request_body(content = crate::openapi::FileBody, content_type = "application/octet-stream", description = "The list: CSV or text of user ids, login ids, phones or SHA-256 hashed phones"),
    responses((status = 200, description = "The pack, its first version and the match report", body = Object), ApiErrors))]
pub async fn upload_route(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<UploadQuery>,
    ApiBytes(body): ApiBytes,
) -> AppResult<Json<Value>> {
    let catalog = catalog_of(&state).await;
    let request = NewPack {
        name: query.name.clone(),
        description: query.description.clone(),
        mode: None,
        schedule: None,
        time_zone: None,
        evaluated_at: None,
        source: SourceField::default(),
    };
    let list = UploadedList {
        file: query.filename.as_deref().unwrap_or("upload.txt"),
        id_type: query.id_type.as_deref().unwrap_or("auto"),
        bytes: &body,
    };
    let (summary, version) = pack::create(
        &state.engine,
        &catalog,
        request,
        Some(list),
        &actor(&caller),
    )
    .await?;
    to_json(json!({"audience": summary, "version": version}))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ScheduleQuery {
    /// Five cron fields: minute hour day-of-month month day-of-week.
    cron: String,
    /// An IANA zone (default UTC).
    #[serde(default)]
    time_zone: Option<String>,
}

/// `GET /api/schedule?cron=0 3 * * *&time_zone=Asia/Shanghai`: a dynamic pack's schedule in
/// words and its next five runs, as the console's cron picker previews them; a bad schedule
/// or zone is a 400 naming which.
#[utoipa::path(get, path = "/api/schedule", tag = "audiences", security(("token" = [])),
    params(ScheduleQuery),
    responses((status = 200, description = "The schedule in words and its next five runs", body = Object), ApiErrors))]
pub async fn schedule_route(
    _caller: Caller,
    ApiQuery(query): ApiQuery<ScheduleQuery>,
) -> AppResult<Json<Value>> {
    let schedule = Schedule::parse(&query.cron, query.time_zone.as_deref())?;
    let now = Utc::now();
    let now = chrono::Timelike::with_nanosecond(&now, 0).unwrap_or(now);
    let runs = schedule.upcoming(now, 5)?;
    Ok(Json(json!({
        "schedule": query.cron,
        "time_zone": schedule.zone(),
        "description": schedule.describe(),
        "next_runs": runs.iter().map(|t| schedule.local(*t)).collect::<Vec<_>>(),
        "next_runs_utc": runs,
    })))
}

/// `GET /api/audiences/{name}`: the pack, its versions and runs.
#[utoipa::path(get, path = "/api/audiences/{name}", tag = "audiences", security(("token" = [])),
    params(("name" = String, Path, description = "The pack's name")),
    responses((status = 200, description = "The pack, its versions and runs", body = Object), ApiErrors))]
pub async fn show_route(
    State(state): State<AppState>,
    _caller: Caller,
    ApiPath(name): ApiPath<String>,
) -> AppResult<Json<Value>> {
    let catalog = catalog_of(&state).await;
    to_json(pack::show(&catalog, &name).await?)
}

/// `GET /api/audiences/{name}/versions`.
#[utoipa::path(get, path = "/api/audiences/{name}/versions", tag = "audiences", security(("token" = [])),
    params(("name" = String, Path, description = "The pack's name")),
    responses((status = 200, description = "Every version with its size and added/removed counts", body = Object), ApiErrors))]
pub async fn versions_route(
    State(state): State<AppState>,
    _caller: Caller,
    ApiPath(name): ApiPath<String>,
) -> AppResult<Json<Value>> {
    let catalog = catalog_of(&state).await;
    pack::show(&catalog, &name).await?;
    to_json(json!({"audience": name, "versions": store::versions(&catalog, &name).await?}))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct DiffQuery {
    /// The older version.
    from: u64,
    /// The newer version.
    to: u64,
    /// List who entered or who left.
    #[serde(default)]
    #[param(inline)]
    list: Option<Side>,
    /// Most ids to list.
    #[serde(default)]
    limit: Option<usize>,
}

/// `GET /api/audiences/{name}/diff?from=1&to=2&list=entered|left&limit=1000`.
#[utoipa::path(get, path = "/api/audiences/{name}/diff", tag = "audiences", security(("token" = [])),
    params(("name" = String, Path, description = "The pack's name"), DiffQuery),
    responses((status = 200, description = "Entered and left between two versions, and who", body = Object), ApiErrors))]
pub async fn diff_route(
    State(state): State<AppState>,
    _caller: Caller,
    ApiPath(name): ApiPath<String>,
    ApiQuery(query): ApiQuery<DiffQuery>,
) -> AppResult<Json<Value>> {
    let catalog = catalog_of(&state).await;
    let limit = query.limit.unwrap_or(1000).min(100_000);
    to_json(
        pack::diff(
            &state.engine,
            &catalog,
            &name,
            query.from,
            query.to,
            query.list,
            limit,
        )
        .await?,
    )
}

/// `POST /api/audiences/{name}/refresh`: a new version now.
#[utoipa::path(post, path = "/api/audiences/{name}/refresh", tag = "audiences", security(("token" = [])),
    params(("name" = String, Path, description = "The pack's name")),
    responses((status = 200, description = "The new version", body = Object), ApiErrors))]
pub async fn refresh_route(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
) -> AppResult<Json<Value>> {
    let catalog = catalog_of(&state).await;
    let refreshed = pack::refresh(
        &state.engine,
        &catalog,
        &name,
        Trigger::Manual,
        &actor(&caller),
    )
    .await;
    if !matches!(refreshed, Err(shoal_audience::Error::Conflict(_))) {
        state.metrics.refreshed("manual", refreshed.is_ok());
    }
    to_json(refreshed?)
}

/// `DELETE /api/audiences/{name}`: soft delete (owner or admin).
#[utoipa::path(delete, path = "/api/audiences/{name}", tag = "audiences", security(("token" = [])),
    params(("name" = String, Path, description = "The pack's name")),
    responses((status = 200, description = "Deleted (restorable)", body = Object), ApiErrors))]
pub async fn delete_route(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
) -> AppResult<Json<Value>> {
    let catalog = catalog_of(&state).await;
    pack::delete(&catalog, &name, &actor(&caller)).await?;
    Ok(Json(json!({"audience": name, "deleted": true})))
}

/// `POST /api/audiences/{name}/restore`.
#[utoipa::path(post, path = "/api/audiences/{name}/restore", tag = "audiences", security(("token" = [])),
    params(("name" = String, Path, description = "The pack's name")),
    responses((status = 200, description = "Restored", body = Object), ApiErrors))]
pub async fn restore_route(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
) -> AppResult<Json<Value>> {
    let catalog = catalog_of(&state).await;
    pack::restore(&catalog, &name, &actor(&caller)).await?;
    Ok(Json(json!({"audience": name, "deleted": false})))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ExportQuery {
    /// The version to export (default the current one).
    #[serde(default)]
    version: Option<u64>,
    /// Comma-separated columns of the wide tables to join.
    #[serde(default)]
    columns: Option<String>,
    /// csv (default) or jsonl.
    #[serde(default)]
    format: Option<String>,
}

/// `GET /api/audiences/{name}/export?columns=phone,member_level&format=csv|jsonl&version=N`:
/// streamed, each column as the caller's role may export it; logged.
#[utoipa::path(get, path = "/api/audiences/{name}/export", tag = "audiences",
    security(("token" = [])),
    params(("name" = String, Path, description = "The pack's name"), ExportQuery),
    responses((status = 200, description = "Members with the chosen columns, masked or hashed \
    as the role may export them, streamed", content((String = "text/csv"),
        (String = "application/x-ndjson"))), ApiErrors))]
pub async fn export_route(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
    ApiQuery(query): ApiQuery<ExportQuery>,
) -> AppResult<Response> {
    let catalog = catalog_of(&state).await;
    let columns = split_columns(query.columns.as_deref());
    let format = query.format.unwrap_or_else(|| "csv".into());
    let planned = export::export(
        &state.engine,
        &catalog,
        &name,
        query.version,
        &columns,
        &format,
        &actor(&caller),
    )
    .await?;
    let schema = planned.frame.schema().inner().clone();
    let stream = planned.session.stream(planned.frame).await?;
    streamed(
        stream,
        schema,
        format_of(&format)?,
        state.engine.limits().timeout,
    )
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
pub struct UnmatchedPath {
    /// The pack's name.
    name: String,
    /// The upload's version.
    version: u64,
}

/// `GET /api/audiences/{name}/versions/{version}/unmatched`: an upload's rows that found
/// nobody, as CSV (line, value, reason).
#[utoipa::path(get, path = "/api/audiences/{name}/versions/{version}/unmatched",
    tag = "audiences", security(("token" = [])), params(UnmatchedPath),
    responses((status = 200, description = "line, value, reason", body = String,
        content_type = "text/csv"), ApiErrors))]
pub async fn unmatched_route(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(path): ApiPath<UnmatchedPath>,
) -> AppResult<Response> {
    caller.require(Role::Analyst)?;
    let catalog = catalog_of(&state).await;
    let version = pack::resolve_version(&catalog, &path.name, Some(path.version)).await?;
    let frame = store::unmatched(&catalog, &path.name, version).await?;
    let schema = frame.schema().inner().clone();
    let session = state.engine.session(&catalog).await?;
    let stream = session.stream(frame).await?;
    streamed(
        stream,
        schema,
        SqlFormat::Csv,
        state.engine.limits().timeout,
    )
}

/// Refreshes dynamic packs when their schedule says so, checking every `every`. The first
/// check runs at once, so runs missed while the server was down happen (once) on start.
pub async fn scheduler(state: AppState, every: std::time::Duration) {
    let robot = Actor {
        id: "scheduler".into(),
        role: Role::Admin,
    };
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut first = true;
    loop {
        ticker.tick().await;
        let trigger = if first {
            Trigger::CatchUp
        } else {
            Trigger::Schedule
        };
        first = false;
        let catalog = catalog_of(&state).await;
        let due = match pack::due(&catalog, Utc::now()).await {
            Ok(due) => due,
            Err(e) => {
                tracing::warn!("scheduler: cannot read the packs: {e}");
                continue;
            }
        };
        for name in due {
            let (engine, catalog, robot) = (state.engine.clone(), catalog.clone(), robot.clone());
            let metrics = state.metrics.clone();
            tokio::spawn(async move {
                let refreshed = pack::refresh(&engine, &catalog, &name, trigger, &robot).await;
                let label = match trigger {
                    Trigger::CatchUp => "catch_up",
                    _ => "schedule",
                };
                if !matches!(refreshed, Err(shoal_audience::Error::Conflict(_))) {
                    metrics.refreshed(label, refreshed.is_ok());
                }
                match refreshed {
                    Ok(v) => tracing::info!(
                        "refreshed '{name}': version {} ({} users)",
                        v.version,
                        v.size
                    ),
                    Err(shoal_audience::Error::Conflict(_)) => {}
                    Err(e) => {
                        tracing::warn!("refresh of '{name}' failed (previous version kept): {e}")
                    }
                }
            });
        }
        refresh_saved_reports(&state, &catalog, trigger).await;
    }
}

/// Runs the saved reports that are due: by their schedule (a missed run once, at start) or
/// because a pack they read has a new version.
async fn refresh_saved_reports(state: &AppState, catalog: &Catalog, tick: Trigger) {
    use shoal_reports::saved;
    let due = match saved::due(&state.engine, catalog, Utc::now()).await {
        Ok(due) => due,
        Err(e) => {
            tracing::warn!("scheduler: cannot read the saved reports: {e}");
            return;
        }
    };
    for (name, why) in due {
        let why = match (why, tick) {
            (saved::Trigger::Schedule, Trigger::CatchUp) => saved::Trigger::CatchUp,
            (why, _) => why,
        };
        let (engine, catalog) = (state.engine.clone(), catalog.clone());
        tokio::spawn(async move {
            let robot = saved::Actor {
                id: "scheduler".into(),
                role: Role::Admin,
            };
            match saved::refresh(&engine, &catalog, &name, why, &robot).await {
                Ok(run) => tracing::info!(
                    "report '{name}' refreshed ({}): version {:?}",
                    why.name(),
                    run.version
                ),
                Err(shoal_audience::Error::Conflict(_)) => {}
                Err(e) => tracing::warn!("report '{name}' failed (previous rows kept): {e}"),
            }
        });
    }
}
