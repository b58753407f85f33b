//! `shoal report` and the report API: funnels, retention and campaign ROI.

use std::io::Write;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use serde_json::Value;
use shoal_catalog::{Catalog, Role};
use shoal_query::Engine;
use shoal_reports::campaign::{self, CampaignResult, CampaignSpec};
use shoal_reports::funnel::{self, Exclusion, FunnelResult, FunnelSpec, Step, StepResult};
use shoal_reports::retention::{self, EventSpec, RetentionResult, RetentionSpec};
use shoal_reports::saved::{self, NewReport, Trigger};

use crate::cli::{FunnelArgs, ReportCommand, RetentionArgs};
use crate::error::{AppError, AppResult};
use crate::extract::{ApiBytes, ApiPath, ApiQuery};
use crate::openapi::ApiErrors;
use crate::serve::AppState;
use crate::tokens::Caller;

/// `shoal report …`.
pub async fn command(catalog: &Catalog, command: &ReportCommand) -> AppResult<()> {
    match command {
        ReportCommand::Funnel(args) => {
            let spec = funnel_spec(args)?;
            let engine = Engine::new(Default::default());
            let session = engine.session(catalog).await?;
            let result = funnel::run(&session, &spec, Role::Admin, None).await?;
            print(&result, args.json, write_funnel)
        }
        ReportCommand::Roi { spec, json } => {
            let spec: CampaignSpec = read_spec(spec)?;
            let engine = Engine::new(Default::default());
            let session = engine.session(catalog).await?;
            let result = campaign::run(&session, &spec, Role::Admin).await?;
            print(&result, *json, write_campaign)
        }
        ReportCommand::Retention(args) => {
            let spec = retention_spec(args)?;
            let engine = Engine::new(Default::default());
            let session = engine.session(catalog).await?;
            let result = retention::run(&session, &spec, Role::Admin, None).await?;
            print(&result, args.json, write_retention)
        }
        ReportCommand::Save {
            name,
            kind,
            spec,
            schedule,
            zone,
            description,
            json,
        } => {
            let new = NewReport {
                name: name.clone(),
                kind: serde_json::from_value(Value::String(kind.clone())).map_err(|_| {
                    AppError::BadRequest(format!(
                        "--kind: '{kind}' is not a report kind (funnel, retention or roi)"
                    ))
                })?,
                description: description.clone(),
                spec: read_spec(spec)?,
                schedule: schedule.clone(),
                time_zone: zone.clone(),
            };
            let engine = Engine::new(Default::default());
            let (summary, run) = saved::save(&engine, catalog, new, &cli_actor()).await?;
            let answer = serde_json::json!({"report": summary, "run": run});
            print(&answer, *json, |out, a| {
                writeln!(
                    out,
                    "saved report '{}': version {} stored in {}",
                    a["report"]["name"].as_str().unwrap_or_default(),
                    a["run"]["version"],
                    rows_table(&a["report"]["kind"])
                )
            })
        }
        ReportCommand::List { deleted, json } => {
            let engine = Engine::new(Default::default());
            let reports = saved::list(&engine, catalog, *deleted).await?;
            print(&serde_json::json!({"reports": reports}), *json, |out, a| {
                writeln!(
                    out,
                    "{:<24} {:<10} {:>4} {:<22} {:<8} {:<18} next run",
                    "name", "kind", "ver", "last run", "status", "schedule"
                )?;
                for r in a["reports"].as_array().into_iter().flatten() {
                    let text = |v: &Value| v.as_str().unwrap_or("-").to_string();
                    let last = &r["last_run"];
                    writeln!(
                        out,
                        "{:<24} {:<10} {:>4} {:<22} {:<8} {:<18} {}{}",
                        text(&r["name"]),
                        text(&r["kind"]),
                        last["version"]
                            .as_u64()
                            .map_or("-".into(), |v| v.to_string()),
                        text(&last["started_at"])
                            .chars()
                            .take(19)
                            .collect::<String>(),
                        text(&last["status"]),
                        text(&r["schedule"]),
                        text(&r["next_run"]),
                        if r["deleted_at"].is_null() {
                            ""
                        } else {
                            "  (deleted)"
                        },
                    )?;
                }
                Ok(())
            })
        }
        ReportCommand::Show { name, json } => {
            let engine = Engine::new(Default::default());
            let detail = saved::show(&engine, catalog, name).await?;
            print(&detail, *json, |out, d| {
                writeln!(
                    out,
                    "{}",
                    serde_json::to_string_pretty(&d["report"]).unwrap_or_default()
                )?;
                for run in d["runs"].as_array().into_iter().flatten() {
                    writeln!(
                        out,
                        "  run {} {} {} {}",
                        run["started_at"].as_str().unwrap_or_default(),
                        run["trigger"].as_str().unwrap_or_default(),
                        run["status"].as_str().unwrap_or_default(),
                        run["error"].as_str().unwrap_or_default()
                    )?;
                }
                writeln!(
                    out,
                    "rows of the newest version in {}:",
                    d["table"].as_str().unwrap_or_default()
                )?;
                for row in d["rows"].as_array().into_iter().flatten() {
                    writeln!(out, "  {row}")?;
                }
                Ok(())
            })
        }
        ReportCommand::Refresh { name, json } => {
            let engine = Engine::new(Default::default());
            let run = saved::refresh(&engine, catalog, name, Trigger::Manual, &cli_actor()).await?;
            print(&run, *json, |out, r| {
                writeln!(
                    out,
                    "report '{}': version {} in {:.0} ms",
                    r.report,
                    r.version.map_or("-".into(), |v| v.to_string()),
                    r.duration_ms
                )
            })
        }
        ReportCommand::Delete { name } => {
            let engine = Engine::new(Default::default());
            saved::set_deleted(&engine, catalog, name, true, &cli_actor()).await?;
            println!("report '{name}' deleted (shoal report restore {name} undoes it)");
            Ok(())
        }
        ReportCommand::Restore { name } => {
            let engine = Engine::new(Default::default());
            saved::set_deleted(&engine, catalog, name, false, &cli_actor()).await?;
            println!("report '{name}' restored");
            Ok(())
        }
    }
}

/// The command line owns the warehouse.
fn cli_actor() -> saved::Actor {
    saved::Actor {
        id: "cli".into(),
        role: Role::Admin,
    }
}

fn caller_actor(caller: &Caller) -> saved::Actor {
    saved::Actor {
        id: caller.author(),
        role: caller.role,
    }
}

fn rows_table(kind: &Value) -> String {
    format!("report_{}", kind.as_str().unwrap_or_default())
}

/// `GET /api/reports/saved?deleted=true`: saved reports with their last and next runs.
#[utoipa::path(get, path = "/api/reports/saved", tag = "reports", security(("token" = [])),
    params(SavedListQuery),
    responses((status = 200, description = "Saved reports with their last and next runs", body = Object), ApiErrors))]
pub async fn saved_list_route(
    State(state): State<AppState>,
    _caller: Caller,
    ApiQuery(query): ApiQuery<SavedListQuery>,
) -> AppResult<Json<Value>> {
    let catalog = state.catalog.read().await.clone();
    let reports = saved::list(&state.engine, &catalog, query.deleted).await?;
    Ok(Json(serde_json::json!({ "reports": reports })))
}

#[derive(serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct SavedListQuery {
    /// List deleted reports instead.
    #[serde(default)]
    deleted: bool,
}

/// `POST /api/reports/saved` (analyst): `{"name", "kind", "spec", "schedule"?, "time_zone"?,
/// "description"?}` → the saved report and its first run.
#[utoipa::path(post, path = "/api/reports/saved", tag = "reports", security(("token" = [])),
    request_body = shoal_reports::saved::NewReport,
    responses((status = 200, description = "The saved report and its first run", body = Object), ApiErrors))]
pub async fn saved_create_route(
    State(state): State<AppState>,
    caller: Caller,
    ApiBytes(body): ApiBytes,
) -> AppResult<Json<Value>> {
    let new: NewReport = request(&body)?;
    let catalog = state.catalog.read().await.clone();
    let (summary, run) = saved::save(&state.engine, &catalog, new, &caller_actor(&caller)).await?;
    Ok(Json(serde_json::json!({"report": summary, "run": run})))
}

/// `GET /api/reports/saved/{name}`: the report, its runs and its newest rows.
#[utoipa::path(get, path = "/api/reports/saved/{name}", tag = "reports", security(("token" = [])),
    params(("name" = String, Path, description = "The saved report's name")),
    responses((status = 200, description = "The report, its runs and its newest rows", body = Object), ApiErrors))]
pub async fn saved_show_route(
    State(state): State<AppState>,
    _caller: Caller,
    ApiPath(name): ApiPath<String>,
) -> AppResult<Json<Value>> {
    let catalog = state.catalog.read().await.clone();
    Ok(Json(saved::show(&state.engine, &catalog, &name).await?))
}

/// `POST /api/reports/saved/{name}/refresh` (analyst): a new version now.
#[utoipa::path(post, path = "/api/reports/saved/{name}/refresh", tag = "reports", security(("token" = [])),
    params(("name" = String, Path, description = "The saved report's name")),
    responses((status = 200, description = "The new run", body = Object), ApiErrors))]
pub async fn saved_refresh_route(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
) -> AppResult<Json<Value>> {
    let catalog = state.catalog.read().await.clone();
    let run = saved::refresh(
        &state.engine,
        &catalog,
        &name,
        Trigger::Manual,
        &caller_actor(&caller),
    )
    .await?;
    answer(run)
}

/// `DELETE /api/reports/saved/{name}` (owner or admin): soft delete; its rows stay.
#[utoipa::path(delete, path = "/api/reports/saved/{name}", tag = "reports", security(("token" = [])),
    params(("name" = String, Path, description = "The saved report's name")),
    responses((status = 200, description = "Deleted (restorable)", body = Object), ApiErrors))]
pub async fn saved_delete_route(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
) -> AppResult<Json<Value>> {
    let catalog = state.catalog.read().await.clone();
    saved::set_deleted(&state.engine, &catalog, &name, true, &caller_actor(&caller)).await?;
    Ok(Json(serde_json::json!({"report": name, "deleted": true})))
}

/// `POST /api/reports/saved/{name}/restore` (owner or admin).
#[utoipa::path(post, path = "/api/reports/saved/{name}/restore", tag = "reports", security(("token" = [])),
    params(("name" = String, Path, description = "The saved report's name")),
    responses((status = 200, description = "Restored", body = Object), ApiErrors))]
pub async fn saved_restore_route(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
) -> AppResult<Json<Value>> {
    let catalog = state.catalog.read().await.clone();
    saved::set_deleted(
        &state.engine,
        &catalog,
        &name,
        false,
        &caller_actor(&caller),
    )
    .await?;
    Ok(Json(serde_json::json!({"report": name, "deleted": false})))
}

fn write_campaign(out: &mut impl Write, r: &CampaignResult) -> std::io::Result<()> {
    let percent = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{:.1}%", v * 100.0));
    writeln!(
        out,
        "campaign {}  ({} to {}, {} days)",
        r.campaign, r.from, r.to, r.days
    )?;
    writeln!(out, "  target     {:>10}", r.target)?;
    writeln!(
        out,
        "  reached    {:>10}  {}",
        r.reached,
        percent(r.reach_rate)
    )?;
    writeln!(
        out,
        "  clicked    {:>10}  {}",
        r.clicked,
        percent(r.click_rate)
    )?;
    writeln!(
        out,
        "  converted  {:>10}  {}",
        r.converted,
        percent(r.conversion_rate)
    )?;
    for (sign, lines) in [("+", &r.positive), ("-", &r.negative)] {
        for line in lines.iter() {
            writeln!(
                out,
                "  {sign} {:<30} {:>12.2} × {:<8} = {:>12.2}",
                serde_json::to_string(&line.metric).unwrap_or_default(),
                line.units,
                line.unit_value,
                line.value
            )?;
        }
    }
    writeln!(out, "  - cost {:>48.2}", r.cost)?;
    writeln!(out, "  net {:>51.2}", r.net)?;
    writeln!(
        out,
        "  ROI {:>51}",
        r.roi
            .map_or("-".to_string(), |v| format!("{:.1}%", v * 100.0))
    )?;
    if let Some(h) = &r.holdout {
        writeln!(
            out,
            "  holdout {}: {:.2}% of {} converted vs {:.2}% of {} targeted; uplift {:.2} points              (95% CI {} to {})",
            h.control,
            h.control_rate * 100.0,
            h.control_size,
            h.target_rate * 100.0,
            h.target_size,
            h.uplift * 100.0,
            h.uplift_low
                .map_or("-".into(), |v| format!("{:.2}", v * 100.0)),
            h.uplift_high
                .map_or("-".into(), |v| format!("{:.2}", v * 100.0)),
        )?;
    }
    Ok(())
}

fn read_spec<T: serde::de::DeserializeOwned>(file: &str) -> AppResult<T> {
    let bytes = if file == "-" {
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut bytes)
            .map_err(|e| AppError::BadRequest(format!("stdin: {e}")))?;
        bytes
    } else {
        std::fs::read(file).map_err(|e| AppError::BadRequest(format!("{file}: {e}")))?
    };
    serde_json::from_slice(&bytes).map_err(|e| AppError::BadRequest(format!("{file}: {e}")))
}

/// The request of `shoal report retention`: a JSON spec, with flags on top.
fn retention_spec(args: &RetentionArgs) -> AppResult<RetentionSpec> {
    let mut spec = match &args.spec {
        Some(file) => read_spec::<RetentionSpec>(file)?,
        None => RetentionSpec {
            cohort: None,
            audience: None,
            returning: None,
            period: Default::default(),
            periods: None,
            kind: Default::default(),
            from: None,
            to: None,
        },
    };
    let event = |name: &String| EventSpec {
        event: name.clone(),
        filters: Vec::new(),
    };
    if let Some(cohort) = &args.cohort {
        spec.cohort = Some(event(cohort));
    }
    if let Some(returning) = &args.returning {
        spec.returning = Some(event(returning));
    }
    if args.audience.is_some() {
        spec.audience = args.audience.clone();
    }
    if args.spec.is_none() || args.period != "day" {
        spec.period = serde_json::from_value(Value::String(args.period.clone()))
            .map_err(|_| AppError::BadRequest(format!("--period {}: day or week", args.period)))?;
    }
    if args.spec.is_none() || args.kind != "first_time" {
        spec.kind = serde_json::from_value(Value::String(args.kind.clone())).map_err(|_| {
            AppError::BadRequest(format!("--kind {}: first_time or recurring", args.kind))
        })?;
    }
    spec.periods = args.periods.or(spec.periods);
    spec.from = args.from.or(spec.from);
    spec.to = args.to.or(spec.to);
    Ok(spec)
}

fn write_retention(out: &mut impl Write, result: &RetentionResult) -> std::io::Result<()> {
    let unit = match result.period {
        retention::Period::Day => "day",
        retention::Period::Week => "week",
    };
    write!(out, "{:<12} {:>8}", "cohort", "people")?;
    for k in 0..=result.periods {
        write!(out, " {:>7}", format!("{unit} {k}"))?;
    }
    writeln!(out)?;
    for row in &result.cohorts {
        write!(out, "{:<12} {:>8}", row.cohort.to_string(), row.size)?;
        for rate in &row.rates {
            write!(out, " {:>6.1}%", rate * 100.0)?;
        }
        writeln!(out)?;
    }
    write!(out, "{:<12} {:>8}", "average", "")?;
    for rate in &result.average {
        match rate {
            Some(r) => write!(out, " {:>6.1}%", r * 100.0)?,
            None => write!(out, " {:>7}", "-")?,
        }
    }
    writeln!(out)
}

/// Prints a report: one JSON object, or `text` for people.
fn print<R: serde::Serialize>(
    result: &R,
    json: bool,
    text: fn(&mut std::io::StdoutLock<'static>, &R) -> std::io::Result<()>,
) -> AppResult<()> {
    let mut out = std::io::stdout().lock();
    if json {
        let line = serde_json::to_string(result).map_err(|e| AppError::Internal(e.to_string()))?;
        writeln!(out, "{line}").map_err(io)
    } else {
        text(&mut out, result).map_err(io)
    }
}

/// A report's JSON answer.
fn answer(result: impl serde::Serialize) -> AppResult<Json<Value>> {
    serde_json::to_value(result)
        .map(Json)
        .map_err(|e| AppError::Internal(e.to_string()))
}

/// A report request's body.
fn request<T: serde::de::DeserializeOwned>(body: &Bytes) -> AppResult<T> {
    crate::extract::json_body(body)
}

fn io(e: std::io::Error) -> AppError {
    AppError::Internal(format!("writing the report: {e}"))
}

/// The request of `shoal report funnel`: a JSON spec, with flags on top.
fn funnel_spec(args: &FunnelArgs) -> AppResult<FunnelSpec> {
    let mut spec = match &args.spec {
        Some(file) => read_spec::<FunnelSpec>(file)?,
        None => FunnelSpec {
            steps: Vec::new(),
            window: "7d".into(),
            mode: Default::default(),
            from: None,
            to: None,
            audience: None,
            exclude: Vec::new(),
            breakdown: None,
        },
    };
    if let Some(steps) = &args.steps {
        spec.steps = steps
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|event| Step {
                event: event.to_string(),
                filters: Vec::new(),
            })
            .collect();
    }
    if spec.steps.is_empty() {
        return Err(AppError::BadRequest(
            "give the steps: --steps view_item,add_to_cart,purchase or --spec FILE".into(),
        ));
    }
    if let Some(window) = &args.window {
        spec.window = window.clone();
    }
    if let Some(mode) = &args.mode {
        spec.mode = shoal_query::window_funnel::Modes::parse(mode)?;
    }
    for text in &args.exclude {
        let (event, between) = match text.split_once(':') {
            Some((event, range)) => {
                let parsed = range
                    .split_once('-')
                    .and_then(|(a, b)| Some([a.parse().ok()?, b.parse().ok()?]));
                let Some(between) = parsed else {
                    return Err(AppError::BadRequest(format!(
                        "--exclude {text}: expected EVENT or EVENT:A-B (steps A to B)"
                    )));
                };
                (event, Some(between))
            }
            None => (text.as_str(), None),
        };
        spec.exclude.push(Exclusion {
            event: event.to_string(),
            filters: Vec::new(),
            between,
        });
    }
    spec.from = args.from.or(spec.from);
    spec.to = args.to.or(spec.to);
    if args.audience.is_some() {
        spec.audience = args.audience.clone();
    }
    if args.breakdown.is_some() {
        spec.breakdown = args.breakdown.clone();
    }
    Ok(spec)
}

fn write_steps(out: &mut impl Write, steps: &[StepResult]) -> std::io::Result<()> {
    writeln!(
        out,
        "{:>4}  {:<28} {:>10} {:>10} {:>10} {:>14}",
        "step", "event", "users", "of prev", "of first", "median gap"
    )?;
    let percent = |r: Option<f64>| r.map_or("-".to_string(), |r| format!("{:.1}%", r * 100.0));
    for s in steps {
        let gap = s
            .median_seconds_from_previous
            .map_or("-".to_string(), human_seconds);
        writeln!(
            out,
            "{:>4}  {:<28} {:>10} {:>10} {:>10} {:>14}",
            s.step,
            s.event,
            s.users,
            percent(s.conversion_from_previous),
            percent(s.conversion_from_first),
            gap
        )?;
    }
    Ok(())
}

fn human_seconds(seconds: f64) -> String {
    if seconds < 120.0 {
        format!("{seconds:.0}s")
    } else if seconds < 7200.0 {
        format!("{:.1}m", seconds / 60.0)
    } else if seconds < 172_800.0 {
        format!("{:.1}h", seconds / 3600.0)
    } else {
        format!("{:.1}d", seconds / 86_400.0)
    }
}

fn write_funnel(out: &mut impl Write, result: &FunnelResult) -> std::io::Result<()> {
    if let Some(steps) = &result.steps {
        write_steps(out, steps)?;
    }
    if let (Some(column), Some(groups)) = (&result.breakdown, &result.groups) {
        for group in groups {
            writeln!(
                out,
                "\n{column} = {}",
                group.value.as_deref().unwrap_or("(null)")
            )?;
            write_steps(out, &group.steps)?;
        }
    }
    writeln!(
        out,
        "\n{} to {}, window {}s{}, {} excluded, {} ms",
        result.from,
        result.to,
        result.window_seconds,
        result
            .audience
            .as_ref()
            .map_or(String::new(), |a| format!(", audience {a}")),
        result.excluded,
        result.elapsed_ms
    )
}

/// `POST /api/reports/funnel`: a [`FunnelSpec`] → per-step people, conversion and median
/// time between steps. Every role may run reports.
#[utoipa::path(post, path = "/api/reports/funnel", tag = "reports", security(("token" = [])),
    request_body = shoal_reports::funnel::FunnelSpec,
    responses((status = 200, description = "Per step: people, conversion from the previous and the first step, median time between steps", body = Object), ApiErrors))]
pub async fn funnel_route(
    State(state): State<AppState>,
    caller: Caller,
    ApiBytes(body): ApiBytes,
) -> AppResult<Json<Value>> {
    let spec: FunnelSpec = request(&body)?;
    let catalog = state.catalog.read().await.clone();
    let session = state.engine.session(&catalog).await?;
    answer(funnel::run(&session, &spec, caller.role, None).await?)
}

/// `POST /api/reports/retention`: a [`RetentionSpec`] → cohorts with people retained per
/// period. Every role may run reports.
#[utoipa::path(post, path = "/api/reports/retention", tag = "reports", security(("token" = [])),
    request_body = shoal_reports::retention::RetentionSpec,
    responses((status = 200, description = "Cohorts with people retained per period", body = Object), ApiErrors))]
pub async fn retention_route(
    State(state): State<AppState>,
    caller: Caller,
    ApiBytes(body): ApiBytes,
) -> AppResult<Json<Value>> {
    let spec: RetentionSpec = request(&body)?;
    let catalog = state.catalog.read().await.clone();
    let session = state.engine.session(&catalog).await?;
    answer(retention::run(&session, &spec, caller.role, None).await?)
}

/// `GET /api/reports/campaigns`: campaigns with deliveries, their first and last delivery day
/// and reach, the most recent first (what the console's ROI view offers). Every role may ask.
#[utoipa::path(get, path = "/api/reports/campaigns", tag = "reports", security(("token" = [])),
    responses((status = 200, description = "Campaigns with deliveries, newest first", body = Object), ApiErrors))]
pub async fn campaigns_route(
    State(state): State<AppState>,
    _caller: Caller,
) -> AppResult<Json<Value>> {
    let catalog = state.catalog.read().await.clone();
    let session = state.engine.session(&catalog).await?;
    let campaigns = campaign::campaigns(&session).await?;
    Ok(Json(serde_json::json!({ "campaigns": campaigns })))
}

/// `POST /api/reports/roi`: a [`CampaignSpec`] → the campaign's funnel, value, cost, ROI and
/// holdout uplift. Every role may run reports.
#[utoipa::path(post, path = "/api/reports/roi", tag = "reports", security(("token" = [])),
    request_body = shoal_reports::campaign::CampaignSpec,
    responses((status = 200, description = "The campaign funnel, positive and negative value, cost, ROI and holdout uplift", body = Object), ApiErrors))]
pub async fn roi_route(
    State(state): State<AppState>,
    caller: Caller,
    ApiBytes(body): ApiBytes,
) -> AppResult<Json<Value>> {
    let spec: CampaignSpec = request(&body)?;
    let catalog = state.catalog.read().await.clone();
    let session = state.engine.session(&catalog).await?;
    answer(campaign::run(&session, &spec, caller.role).await?)
}
