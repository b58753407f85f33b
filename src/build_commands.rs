//! `shoal build` and `shoal identity explain|unlink`, and their HTTP routes.

use axum::Json;
use axum::extract::State;
use serde::Deserialize;
use serde_json::{Value, json};
use shoal_catalog::{Catalog, Role};
use shoal_ingest::build::{BuildOptions, BuildReport, build};
use shoal_ingest::identity::{Explanation, explain, unlink};

use crate::cli::{BuildArgs, IdentityCommand};
use crate::error::{AppError, AppResult};
use crate::extract::{ApiBytes, ApiJson, ApiPath};
use crate::openapi::ApiErrors;
use crate::progress;
use crate::serve::AppState;
use crate::tokens::Caller;

/// Runs a build with a progress bar.
pub async fn run_build(
    catalog: &Catalog,
    options: &BuildOptions,
    quiet: bool,
) -> AppResult<BuildReport> {
    let bar = progress::bar(quiet, "build", 1);
    let mut step = String::new();
    let report = build(catalog, options, &mut |name, done, total| {
        if name != step {
            step = name.to_string();
            bar.set_message(name.to_string());
        }
        bar.set_length(total.max(1));
        bar.set_position(done);
    })
    .await?;
    bar.finish_and_clear();
    Ok(report)
}

/// `shoal build`.
pub async fn build_command(catalog: &Catalog, args: &BuildArgs, quiet: bool) -> AppResult<()> {
    let options = BuildOptions {
        full: args.full,
        as_of: args.as_of,
    };
    crate::huge_pages_for_build(shoal_ingest::build::rewrites_everything(catalog, &options).await?);
    let report = run_build(catalog, &options, quiet).await?;
    if args.json {
        println!("{}", serde_json::to_string(&report).unwrap_or_default());
    } else {
        println!("{}", describe(&report));
    }
    Ok(())
}

/// A build report in a few lines.
pub fn describe(r: &BuildReport) -> String {
    let refused: u64 = r.identity.links_refused.values().sum();
    let reasons: Vec<String> = r
        .identity
        .links_refused
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect();
    let total: f64 = r.seconds.values().sum();
    format!(
        "{id} ({kind}, features as of {as_of}) in {total:.1} s\n  \
         identity: {new} new identities, {joined} links joined, {refused} refused{reasons}, \
         {people} new people, {merged} merged\n  \
         events: {resolved} resolved, {moved} moved, {unresolved} without a person; \
         {days} days ({rewritten} rows) rewritten\n  \
         orders: {orders} resolved; users: {users} rows; orders_wide: {wide} rows; \
         tag bitmaps: {cols} column values, {event_days} event days",
        id = r.build_id,
        kind = if r.full { "full" } else { "incremental" },
        as_of = r.as_of,
        new = r.identity.identities_new,
        joined = r.identity.links_joined,
        reasons = if reasons.is_empty() {
            String::new()
        } else {
            format!(" ({})", reasons.join(", "))
        },
        people = r.identity.people_new,
        merged = r.identity.people_merged,
        resolved = r.events_resolved,
        moved = r.events_moved,
        unresolved = r.events_unresolved,
        days = r.days_rewritten,
        rewritten = r.events_rewritten,
        orders = r.orders_resolved,
        users = r.users,
        wide = r.orders_wide,
        cols = r.tag_bitmaps.0,
        event_days = r.tag_bitmaps.1,
    )
}

fn identity_arg(text: &str) -> AppResult<(&str, &str)> {
    text.split_once(':')
        .filter(|(t, v)| !t.is_empty() && !v.is_empty())
        .ok_or_else(|| {
            AppError::BadRequest(format!(
                "'{text}' is not an identity; write TYPE:VALUE, e.g. login_id:u1000007"
            ))
        })
}

/// `shoal identity …`.
pub async fn identity_command(catalog: &Catalog, command: &IdentityCommand) -> AppResult<()> {
    match command {
        IdentityCommand::Explain { user_id, json } => {
            let explanation = explain(catalog, *user_id).await?;
            if *json {
                println!(
                    "{}",
                    serde_json::to_string(&explanation).unwrap_or_default()
                );
            } else {
                print_explanation(&explanation);
            }
        }
        IdentityCommand::Unlink { a, b, reason, json } => {
            let report = unlink(
                catalog,
                identity_arg(a)?,
                identity_arg(b)?,
                reason,
                chrono::Utc::now(),
            )
            .await?;
            if *json {
                println!("{}", serde_json::to_string(&report).unwrap_or_default());
            } else if report.split_into.is_empty() {
                println!(
                    "link removed; user {} stays one person (other links still join them). \
                     Run `shoal build` to apply.",
                    report.user_id
                );
            } else {
                println!("link removed; user {} split:", report.user_id);
                for (user, moved) in &report.moved {
                    println!("  new user {user}: {}", moved.join(", "));
                }
                println!("Run `shoal build` to move their events and orders.");
            }
        }
    }
    Ok(())
}

fn print_explanation(e: &Explanation) {
    match e.merged_into {
        Some(into) => println!("user {} was merged into user {into}:", e.user_id),
        None => println!("user {}:", e.user_id),
    }
    for i in &e.identities {
        let path = if i.path.len() > 1 {
            format!("  via {}", i.path.join(" → "))
        } else if i.path.is_empty() {
            "  (no joined path: check the links)".to_string()
        } else {
            "  (strongest identity)".to_string()
        };
        println!(
            "  {}:{}  first seen {} in {}{path}",
            i.id_type, i.id_value, i.first_seen, i.source
        );
    }
    let refused: Vec<_> = e.links.iter().filter(|l| l.status != "joined").collect();
    if !refused.is_empty() {
        println!("links not joined:");
        for l in refused {
            println!(
                "  {} — {}  {} ({})",
                l.a,
                l.b,
                l.status,
                l.reason.as_deref().unwrap_or("")
            );
        }
    }
    for (kind, from, into, at, reason) in &e.history {
        println!("  {kind}: {from} → {into} at {at}: {reason}");
    }
}

/// Body of `POST /api/build`.
#[derive(Debug, Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BuildRequest {
    /// Rebuild every table instead of what changed.
    #[serde(default)]
    full: bool,
    /// The day derived features count back from (default today).
    #[serde(default)]
    as_of: Option<chrono::NaiveDate>,
}

/// `POST /api/build`: runs a build (one at a time) and returns its report.
#[utoipa::path(post, path = "/api/build", tag = "identity", security(("token" = [])),
    request_body(content = Option<BuildRequest>, description = "Optional; an empty body builds what changed"),
    responses((status = 200, description = "The build's report", body = Object), ApiErrors))]
pub async fn build_route(
    State(state): State<AppState>,
    caller: Caller,
    ApiBytes(body): ApiBytes,
) -> AppResult<Json<Value>> {
    caller.require(Role::Admin)?;
    let request: BuildRequest = if body.iter().all(u8::is_ascii_whitespace) {
        BuildRequest::default()
    } else {
        crate::extract::json_body(&body)?
    };
    let _one_at_a_time = state.build_lock.lock().await;
    let catalog = state.catalog.read().await.clone();
    let report = run_build(
        &catalog,
        &BuildOptions {
            full: request.full,
            as_of: request.as_of,
        },
        true,
    )
    .await?;
    Ok(Json(json!(report)))
}

/// `GET /api/identity/{user_id}`: why a person's identities are one person.
#[utoipa::path(get, path = "/api/identity/{user_id}", tag = "identity", security(("token" = [])),
    params(("user_id" = String, Path, description = "A user id")),
    responses((status = 200, description = "The person's identities and the links joining them", body = Object), ApiErrors))]
pub async fn explain_route(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(user_id): ApiPath<String>,
) -> AppResult<Json<Value>> {
    caller.require(Role::Admin)?;
    let user: u32 = user_id.parse().map_err(|_| {
        AppError::BadRequest(format!(
            "user_id: '{user_id}' is not a user id (0 to 4294967295)"
        ))
    })?;
    let catalog = state.catalog.read().await.clone();
    Ok(Json(json!(explain(&catalog, user).await?)))
}

/// Body of `POST /api/identity/unlink`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UnlinkRequest {
    /// One end of the link, `type:value` (e.g. `phone:+8613800000000`).
    a: String,
    /// The other end.
    b: String,
    /// Why the link is wrong (kept in the merge log).
    reason: String,
}

/// `POST /api/identity/unlink`: removes a wrong link, splitting the person.
#[utoipa::path(post, path = "/api/identity/unlink", tag = "identity", security(("token" = [])),
    request_body = UnlinkRequest,
    responses((status = 200, description = "The split: who kept the id, who got new ones", body = Object), ApiErrors))]
pub async fn unlink_route(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(request): ApiJson<UnlinkRequest>,
) -> AppResult<Json<Value>> {
    caller.require(Role::Admin)?;
    if request.reason.trim().is_empty() {
        return Err(AppError::BadRequest(
            "reason: say why the link is wrong".into(),
        ));
    }
    let _one_at_a_time = state.build_lock.lock().await;
    let catalog = state.catalog.read().await.clone();
    let report = unlink(
        &catalog,
        identity_arg(&request.a).map_err(|e| AppError::BadRequest(format!("a: {e}")))?,
        identity_arg(&request.b).map_err(|e| AppError::BadRequest(format!("b: {e}")))?,
        &request.reason,
        chrono::Utc::now(),
    )
    .await?;
    Ok(Json(json!(report)))
}
