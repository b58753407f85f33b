//! `shoal serve`: the HTTP API.

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};
use shoal_catalog::{Catalog, Table, check_all};
use tokio::sync::RwLock;
use utoipa::OpenApi;
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouterExt};
use utoipa_axum::routes;

use crate::cli::ServeArgs;
use crate::error::{AppError, AppResult};
use crate::extract::{ApiPath, ApiQuery};
use crate::openapi::{ApiDoc, ApiErrors};
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
            engine: Arc::new(shoal_query::Engine::new(shoal_query::Limits {
                column_cache_bytes: crate::cli::default_column_cache_mib() << 20,
                ..Default::default()
            })),
            tokens: Arc::new(crate::tokens::Tokens::new()),
            metrics: Arc::new(crate::metrics::Metrics::default()),
            limiter: Arc::new(crate::rate_limit::RateLimiter::default()),
        }
    }
}

/// The HTTP application: routes over the shared state. Every operation under `/api`, `/v1`
/// and the health routes is registered through `routes!`, which also writes it into the
/// OpenAPI document served at `/api/openapi.json`.
pub fn app(state: AppState) -> Router {
    use crate::{audience_commands as audiences, build_commands as builds};
    use crate::{query_commands as queries, report_commands as reports, tokens};
    let (api, document) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(crate::metrics::route))
        .routes(routes!(catalog_definition))
        .routes(routes!(catalog_check))
        .routes(routes!(queries::fields_route))
        .routes(routes!(queries::count_route))
        .routes(routes!(queries::preview_route))
        .routes(routes!(queries::explain_route))
        .routes(routes!(queries::sql_route))
        .routes(routes!(reports::funnel_route))
        .routes(routes!(reports::retention_route))
        .routes(routes!(reports::roi_route))
        .routes(routes!(reports::campaigns_route))
        .routes(routes!(audiences::schedule_route))
        .routes(routes!(
            reports::saved_list_route,
            reports::saved_create_route
        ))
        .routes(routes!(
            reports::saved_show_route,
            reports::saved_delete_route
        ))
        .routes(routes!(reports::saved_refresh_route))
        .routes(routes!(reports::saved_restore_route))
        .routes(routes!(tables))
        .routes(routes!(table_history))
        .routes(routes!(tokens::whoami_route))
        .routes(routes!(audiences::list_route, audiences::create_route))
        .routes(routes!(audiences::upload_route).layer(DefaultBodyLimit::max(512 << 20)))
        .routes(routes!(audiences::show_route, audiences::delete_route))
        .routes(routes!(audiences::versions_route))
        .routes(routes!(audiences::unmatched_route))
        .routes(routes!(audiences::diff_route))
        .routes(routes!(audiences::refresh_route))
        .routes(routes!(audiences::restore_route))
        .routes(routes!(audiences::export_route))
        .routes(routes!(tokens::list_route, tokens::create_route))
        .routes(routes!(tokens::revoke_route))
        .routes(routes!(builds::build_route))
        .routes(routes!(builds::explain_route))
        .routes(routes!(builds::unlink_route))
        .routes(routes!(crate::uploads::upload).layer(DefaultBodyLimit::disable()))
        .routes(
            routes!(crate::tracking::receive)
                .layer(DefaultBodyLimit::max(crate::tracking::MAX_BATCH_BYTES * 2)),
        )
        .split_for_parts();
    let document: Arc<str> = document
        .to_pretty_json()
        .unwrap_or_else(|e| format!(r#"{{"error": "{e}"}}"#))
        .into();
    api.route(
        "/api/openapi.json",
        get(move || {
            let document = document.clone();
            async move { crate::openapi::document_response(&document) }
        }),
    )
    .route("/", get(crate::console::index))
    .route("/assets/app.js", get(crate::console::script))
    .route("/assets/app.css", get(crate::console::style))
    .route_layer(axum::middleware::from_fn_with_state(
        state.clone(),
        crate::metrics::track,
    ))
    .layer(axum::middleware::from_fn(crate::openapi::error_shape))
    .layer(tower_http::catch_panic::CatchPanicLayer::custom(
        crate::openapi::panicked,
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
    let mut state = AppState::new(catalog.clone());
    state.limiter = Arc::new(crate::rate_limit::RateLimiter::new(args.rate_limit));
    state.engine = Arc::new(shoal_query::Engine::new(shoal_query::Limits {
        column_cache_bytes: args
            .column_cache_mib
            .unwrap_or_else(crate::cli::default_column_cache_mib)
            << 20,
        ..Default::default()
    }));
    // The tracking API checks message ids against fingerprints of `events`: read them now,
    // not in the first request.
    tokio::spawn(async move {
        if let Err(e) = shoal_ingest::read_message_ids(&catalog).await {
            tracing::warn!("reading the message ids of events (retried on first use): {e}");
        }
    });
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
    let client_timeout = std::time::Duration::from_secs(args.client_timeout);
    serve_http(listener, app(state), client_timeout, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await;
    Ok(())
}

/// Serves `app` on `listener` until `shutdown` completes, then lets open requests finish
/// (for up to 30 s). HTTP/1 and HTTP/2. A client has `client_timeout` to send a request's
/// headers, and to send each next piece of its body, before the connection is closed (408
/// for a body): a slow or stalled client holds nothing for long.
pub async fn serve_http(
    listener: tokio::net::TcpListener,
    app: Router,
    client_timeout: std::time::Duration,
    shutdown: impl std::future::Future<Output = ()>,
) {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use tower::ServiceExt;
    let app = app.layer(tower_http::timeout::RequestBodyTimeoutLayer::new(
        client_timeout,
    ));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors and the like: wait instead of spinning.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let service = hyper_util::service::TowerToHyperService::new(app.clone().map_request(
            |request: axum::http::Request<hyper::body::Incoming>| {
                request.map(axum::body::Body::new)
            },
        ));
        let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(client_timeout);
        builder.http2().timer(TokioTimer::new());
        let connection = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!("connection ended: {e}");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(std::time::Duration::from_secs(30), graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("requests still open after 30 s at shutdown");
    }
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

/// `GET /healthz`: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "health",
    responses((status = 200, description = "Alive", body = String, content_type = "text/plain")))]
async fn healthz() -> &'static str {
    "ok"
}

/// `GET /readyz`: the warehouse can be listed.
#[utoipa::path(get, path = "/readyz", tag = "health",
    responses((status = 200, description = "Ready, with the number of tables", body = Object)))]
async fn readyz(State(state): State<AppState>) -> AppResult<Json<Value>> {
    let catalog = state.catalog.read().await;
    let tables = catalog.warehouse().table_names().await?;
    Ok(Json(json!({"status": "ready", "tables": tables.len()})))
}

/// `GET /api/catalog`: the catalog definition and its revision.
#[utoipa::path(get, path = "/api/catalog", tag = "catalog", security(("token" = [])),
    responses((status = 200, description = "Field standards, derived conditions, roles, monitors", body = Object), ApiErrors))]
async fn catalog_definition(State(state): State<AppState>, _caller: Caller) -> Json<Value> {
    let catalog = state.catalog.read().await;
    Json(json!({"revision": catalog.revision(), "definition": catalog.definition()}))
}

/// `GET /api/catalog/check`: every quality monitor's status now.
#[utoipa::path(get, path = "/api/catalog/check", tag = "catalog", security(("token" = [])),
    responses((status = 200, description = "The worst status and each monitor's", body = Object), ApiErrors))]
async fn catalog_check(State(state): State<AppState>, _caller: Caller) -> AppResult<Json<Value>> {
    let catalog = state.catalog.read().await;
    let results = check_all(&catalog, chrono::Utc::now()).await?;
    let worst = results.iter().map(|r| r.status).max();
    Ok(Json(json!({"status": worst, "monitors": results})))
}

/// `GET /api/tables`: every table with its version, rows, data files and last commit.
#[utoipa::path(get, path = "/api/tables", tag = "catalog", security(("token" = [])),
    responses((status = 200, description = "The tables", body = Object), ApiErrors))]
async fn tables(State(state): State<AppState>, _caller: Caller) -> AppResult<Json<Value>> {
    let catalog = state.catalog.read().await;
    let tables = shoal_catalog::table_summaries(catalog.warehouse()).await?;
    Ok(Json(json!({"tables": tables})))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct HistoryQuery {
    /// Newest commits to list (default 20, at most 1000).
    limit: Option<usize>,
}

/// `GET /api/tables/{name}/history`: a table's commits, newest first.
#[utoipa::path(get, path = "/api/tables/{name}/history", tag = "catalog", security(("token" = [])),
    params(("name" = String, Path, description = "Table name"), HistoryQuery),
    responses((status = 200, description = "The commits", body = Object), ApiErrors))]
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
