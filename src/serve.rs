//! `shoal serve`: the HTTP API.

use std::sync::Arc;

use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};
use shoal_catalog::{Catalog, Table, check_all};
use tokio::sync::RwLock;

use crate::cli::ServeArgs;
use crate::error::{AppError, AppResult};
use crate::extract::{ApiPath, ApiQuery};
use crate::tokens::Caller;

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    pub(crate) catalog: Arc<RwLock<Catalog>>,
    pub(crate) tracking: Arc<crate::tracking::Tracking>,
    /// Builds and identity edits run one at a time.
    pub(crate) build_lock: Arc<tokio::sync::Mutex<()>>,
    /// Query sessions and their caches.
    pub(crate) engine: Arc<shoal_query::Engine>,
    /// API tokens, kept current with the warehouse.
    pub(crate) tokens: Arc<crate::tokens::Tokens>,
    /// What `/metrics` reports.
    pub(crate) metrics: Arc<crate::metrics::Metrics>,
    /// Requests per token per second.
    pub(crate) limiter: Arc<crate::rate_limit::RateLimiter>,
}

impl AppState {
    /// Fresh state over `catalog`.
    pub fn new(catalog: Catalog) -> AppState {
        AppState {
            catalog: Arc::new(RwLock::new(catalog)),
            tracking: crate::tracking::state(),
            build_lock: Arc::new(tokio::sync::Mutex::new(())),
            engine: Arc::new(shoal_query::Engine::new(Default::default())),
            tokens: Arc::new(crate::tokens::Tokens::new()),
            metrics: Arc::new(crate::metrics::Metrics::default()),
            limiter: Arc::new(crate::rate_limit::RateLimiter::default()),
        }
    }
}

/// The HTTP application: routes over the shared state.
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/", get(crate::console::index))
        .route("/assets/app.js", get(crate::console::script))
        .route("/assets/app.css", get(crate::console::style))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(crate::metrics::route))
        .route("/api/catalog", get(catalog_definition))
        .route("/api/catalog/check", get(catalog_check))
        .route(
            "/api/catalog/fields",
            get(crate::query_commands::fields_route),
        )
        .route("/api/query/count", post(crate::query_commands::count_route))
        .route(
            "/api/query/preview",
            post(crate::query_commands::preview_route),
        )
        .route(
            "/api/query/explain",
            post(crate::query_commands::explain_route),
        )
        .route("/api/query/sql", post(crate::query_commands::sql_route))
        .route(
            "/api/reports/funnel",
            post(crate::report_commands::funnel_route),
        )
        .route(
            "/api/reports/retention",
            post(crate::report_commands::retention_route),
        )
        .route("/api/reports/roi", post(crate::report_commands::roi_route))
        .route(
            "/api/reports/campaigns",
            get(crate::report_commands::campaigns_route),
        )
        .route(
            "/api/schedule",
            get(crate::audience_commands::schedule_route),
        )
        .route(
            "/api/reports/saved",
            get(crate::report_commands::saved_list_route)
                .post(crate::report_commands::saved_create_route),
        )
        .route(
            "/api/reports/saved/{name}",
            get(crate::report_commands::saved_show_route)
                .delete(crate::report_commands::saved_delete_route),
        )
        .route(
            "/api/reports/saved/{name}/refresh",
            post(crate::report_commands::saved_refresh_route),
        )
        .route(
            "/api/reports/saved/{name}/restore",
            post(crate::report_commands::saved_restore_route),
        )
        .route("/api/tables", get(tables))
        .route("/api/whoami", get(crate::tokens::whoami_route))
        .route(
            "/api/audiences",
            get(crate::audience_commands::list_route).post(crate::audience_commands::create_route),
        )
        .route(
            "/api/audiences/upload",
            post(crate::audience_commands::upload_route)
                .layer(axum::extract::DefaultBodyLimit::max(512 << 20)),
        )
        .route(
            "/api/audiences/{name}",
            get(crate::audience_commands::show_route)
                .delete(crate::audience_commands::delete_route),
        )
        .route(
            "/api/audiences/{name}/versions",
            get(crate::audience_commands::versions_route),
        )
        .route(
            "/api/audiences/{name}/versions/{version}/unmatched",
            get(crate::audience_commands::unmatched_route),
        )
        .route(
            "/api/audiences/{name}/diff",
            get(crate::audience_commands::diff_route),
        )
        .route(
            "/api/audiences/{name}/refresh",
            post(crate::audience_commands::refresh_route),
        )
        .route(
            "/api/audiences/{name}/restore",
            post(crate::audience_commands::restore_route),
        )
        .route(
            "/api/audiences/{name}/export",
            get(crate::audience_commands::export_route),
        )
        .route(
            "/api/tokens",
            get(crate::tokens::list_route).post(crate::tokens::create_route),
        )
        .route(
            "/api/tokens/{token_id}",
            axum::routing::delete(crate::tokens::revoke_route),
        )
        .route("/api/tables/{name}/history", get(table_history))
        .route(
            "/api/build",
            axum::routing::post(crate::build_commands::build_route),
        )
        .route(
            "/api/identity/{user_id}",
            get(crate::build_commands::explain_route),
        )
        .route(
            "/api/identity/unlink",
            axum::routing::post(crate::build_commands::unlink_route),
        )
        .route(
            "/api/ingest",
            axum::routing::post(crate::uploads::upload)
                .layer(axum::extract::DefaultBodyLimit::disable()),
        )
        .route(
            "/v1/{kind}",
            axum::routing::post(crate::tracking::receive).layer(
                axum::extract::DefaultBodyLimit::max(crate::tracking::MAX_BATCH_BYTES * 2),
            ),
        )
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::metrics::track,
        ))
        .with_state(state)
}

/// Serves until Ctrl-C is pressed.
pub async fn serve(catalog: Catalog, args: &ServeArgs) -> AppResult<()> {
    let listener = tokio::net::TcpListener::bind(&args.http)
        .await
        .map_err(|e| AppError::BadRequest(format!("cannot listen on {}: {e}", args.http)))?;
    let address = listener
        .local_addr()
        .map_err(|e| AppError::Internal(e.to_string()))?;
    let mut state = AppState::new(catalog);
    state.limiter = Arc::new(crate::rate_limit::RateLimiter::new(args.rate_limit));
    if args.build_every > 0 {
        tokio::spawn(build_loop(
            state.clone(),
            std::time::Duration::from_secs(args.build_every),
        ));
    }
    if args.schedule_every > 0 {
        tokio::spawn(crate::audience_commands::scheduler(
            state.clone(),
            std::time::Duration::from_secs(args.schedule_every),
        ));
    }
    if args.postgres != "off" {
        let listener = tokio::net::TcpListener::bind(&args.postgres)
            .await
            .map_err(|e| {
                AppError::BadRequest(format!(
                    "--postgres: cannot listen on {}: {e}",
                    args.postgres
                ))
            })?;
        let pg_address = listener
            .local_addr()
            .map_err(|e| AppError::Internal(e.to_string()))?;
        let pg_state = state.clone();
        tokio::spawn(async move {
            if let Err(e) = crate::postgres::serve(pg_state, listener).await {
                tracing::error!("Postgres endpoint stopped: {e}");
            }
        });
        eprintln!("serving postgres://{pg_address}  (password: an API token)");
    }
    eprintln!("serving http://{address}  (Ctrl-C to stop)");
    axum::serve(listener, app(state))
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .map_err(|e| AppError::Internal(e.to_string()))
}

/// Builds whenever events or orders without a person are waiting (tracking API messages,
/// uploads, imports by other processes), checking every `every`. Failures are logged and
/// retried at the next tick; a build cut short is finished by the next one.
async fn build_loop(state: AppState, every: std::time::Duration) {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let catalog = state.catalog.read().await.clone();
        match shoal_ingest::build::has_unresolved(&catalog).await {
            Ok(false) => continue,
            Ok(true) => {}
            Err(e) => {
                tracing::warn!("scheduled build: cannot check for new rows: {e}");
                continue;
            }
        }
        let _one_at_a_time = state.build_lock.lock().await;
        let options = shoal_ingest::build::BuildOptions {
            full: false,
            as_of: None,
        };
        match crate::build_commands::run_build(&catalog, &options, true).await {
            Ok(report) => tracing::info!(
                "scheduled build {}: {} events resolved",
                report.build_id,
                report.events_resolved
            ),
            Err(e) => tracing::warn!("scheduled build failed (retried next time): {e}"),
        }
    }
}

async fn readyz(State(state): State<AppState>) -> AppResult<Json<Value>> {
    let catalog = state.catalog.read().await;
    let tables = catalog.warehouse().table_names().await?;
    Ok(Json(json!({"status": "ready", "tables": tables.len()})))
}

async fn catalog_definition(State(state): State<AppState>, _caller: Caller) -> Json<Value> {
    let catalog = state.catalog.read().await;
    Json(json!({"revision": catalog.revision(), "definition": catalog.definition()}))
}

async fn catalog_check(State(state): State<AppState>, _caller: Caller) -> AppResult<Json<Value>> {
    let catalog = state.catalog.read().await;
    let results = check_all(&catalog, chrono::Utc::now()).await?;
    let worst = results.iter().map(|r| r.status).max();
    Ok(Json(json!({"status": worst, "monitors": results})))
}

async fn tables(State(state): State<AppState>, _caller: Caller) -> AppResult<Json<Value>> {
    let catalog = state.catalog.read().await;
    let tables = shoal_catalog::table_summaries(catalog.warehouse()).await?;
    Ok(Json(json!({"tables": tables})))
}

#[derive(Deserialize)]
struct HistoryQuery {
    limit: Option<usize>,
}

async fn table_history(
    State(state): State<AppState>,
    _caller: Caller,
    ApiPath(name): ApiPath<String>,
    ApiQuery(query): ApiQuery<HistoryQuery>,
) -> AppResult<Json<Value>> {
    let catalog = state.catalog.read().await;
    let table = Table::open(catalog.warehouse(), &name).await?;
    let commits = table
        .history(Some(query.limit.unwrap_or(20).min(1000)))
        .await?;
    Ok(Json(
        json!({"table": name, "version": table.version(), "commits": commits}),
    ))
}
