//! The Postgres endpoint: BI tools, `psql` and drivers read the warehouse over the Postgres
//! wire protocol (simple and extended query protocols, prepared statements, `pg_catalog` and
//! `information_schema`).
//!
//! A connection signs in with an API token as its password (the user name is free). Every
//! table is then shown as the token's role may read it — the views of `/api/query/sql`, with
//! columns masked, hashed or left out by the catalog's grants — and nothing can be changed:
//! statements other than queries, `EXPLAIN`, `SHOW`, client settings and transaction markers
//! are refused. Each statement reads the newest snapshot (looked for at most once a second).

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use datafusion::common::ParamValues;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::SessionContext;
use datafusion::sql::sqlparser::ast::{Set, Statement};
use datafusion_postgres::DfSessionService;
use datafusion_postgres::arrow_pg::datatypes::{arrow_schema_to_pg_fields, encode_recordbatch};
use datafusion_postgres::datafusion_pg_catalog::pg_catalog::context::EmptyContextProvider;
use datafusion_postgres::datafusion_pg_catalog::setup_pg_catalog;
use datafusion_postgres::hooks::cursor::CursorStatementHook;
use datafusion_postgres::hooks::set_show::SetShowHook;
use datafusion_postgres::hooks::transactions::TransactionStatementHook;
use datafusion_postgres::hooks::{HookClient, QueryHook};
use datafusion_postgres::pgwire::api::auth::{
    DefaultServerParameterProvider, StartupHandler, finish_authentication, protocol_negotiation,
    save_startup_parameters_to_metadata,
};
use datafusion_postgres::pgwire::api::portal::Format;
use datafusion_postgres::pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use datafusion_postgres::pgwire::api::results::{QueryResponse, Response};
use datafusion_postgres::pgwire::api::{
    ClientInfo, PgWireConnectionState, PgWireServerHandlers, PidSecretKeyGenerator,
    RandomPidSecretKeyGenerator,
};
use datafusion_postgres::pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use datafusion_postgres::pgwire::messages::startup::Authentication;
use datafusion_postgres::pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};
use datafusion_postgres::pgwire::tokio::process_socket;
use datafusion_postgres::pgwire::types::format::FormatOptions;
use futures::{Sink, SinkExt, StreamExt, stream};
use shoal_catalog::Role;
use shoal_query::{RoleView, Session};
use tokio::sync::Mutex;

use crate::error::{AppError, AppResult};
use crate::serve::AppState;

/// Where the role of a signed-in connection is kept in its metadata.
const ROLE_KEY: &str = "shoal.role";
/// Where the token id of a signed-in connection is kept.
const TOKEN_KEY: &str = "shoal.token";
/// The client's own statement timeout (set by `SET statement_timeout`), in milliseconds.
const TIMEOUT_KEY: &str = "statement_timeout_ms";
/// How often a role's views look for a newer snapshot.
const RECHECK: Duration = Duration::from_secs(1);
/// Client settings a connection may change; anything else is refused.
const SETTABLE: [&str; 12] = [
    "statement_timeout",
    "datestyle",
    "bytea_output",
    "intervalstyle",
    "application_name",
    "extra_float_digits",
    "search_path",
    "client_encoding",
    "client_min_messages",
    "standard_conforming_strings",
    "timezone",
    "time zone",
];

fn user_error(code: &str, message: impl Into<String>) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        "ERROR".into(),
        code.into(),
        message.into(),
    )))
}

/// A role's views of one snapshot.
struct View {
    session: Session,
    view: RoleView,
    /// When the snapshot was last found to be the newest.
    checked: std::sync::Mutex<Instant>,
}

impl View {
    fn checked(&self) -> Instant {
        *self.checked.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The views of each role, moved to the newest snapshot as they are used.
struct Views {
    state: AppState,
    by_role: Mutex<HashMap<Role, Arc<View>>>,
}

impl Views {
    async fn of(&self, role: Role) -> AppResult<Arc<View>> {
        let mut by_role = self.by_role.lock().await;
        if let Some(view) = by_role.get(&role)
            && view.checked().elapsed() < RECHECK
        {
            return Ok(view.clone());
        }
        let catalog = self.state.catalog.read().await.clone();
        let session = self.state.engine.session(&catalog).await?;
        if let Some(view) = by_role.get(&role)
            && view.session.versions() == session.versions()
        {
            *view.checked.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
            return Ok(view.clone());
        }
        let view = session.role_view(role).await?;
        setup_pg_catalog(view.context(), "shoal", EmptyContextProvider)
            .map_err(|e| AppError::Internal(format!("pg_catalog: {e}")))?;
        let fresh = Arc::new(View {
            session,
            view,
            checked: std::sync::Mutex::new(Instant::now()),
        });
        by_role.insert(role, fresh.clone());
        Ok(fresh)
    }
}

/// What a statement is, for a read-only endpoint.
enum Kind {
    /// Planned and run in the role's views.
    Query,
    /// Answered by the protocol hooks (SHOW, allowed SET, BEGIN/COMMIT/ROLLBACK).
    Protocol,
    /// Refused, with why.
    Refused(String),
}

fn classify(statement: &Statement) -> Kind {
    match statement {
        Statement::Query(_) | Statement::Explain { .. } => Kind::Query,
        Statement::ShowVariable { .. }
        | Statement::ShowStatus { .. }
        | Statement::StartTransaction { .. }
        | Statement::Commit { .. }
        | Statement::Rollback { .. } => Kind::Protocol,
        Statement::Set(set) => {
            let variable = match set {
                Set::SingleAssignment { variable, .. } => variable.to_string().to_lowercase(),
                Set::SetTimeZone { .. } => "timezone".into(),
                Set::SetNames { .. } => "client_encoding".into(),
                other => other.to_string(),
            };
            if SETTABLE.contains(&variable.as_str()) {
                Kind::Protocol
            } else {
                Kind::Refused(format!(
                    "'{variable}' cannot be set here; settable: {}",
                    SETTABLE.join(", ")
                ))
            }
        }
        Statement::Declare { .. } | Statement::Fetch { .. } | Statement::Close { .. } => {
            Kind::Refused("cursors are not supported; read with a plain SELECT".into())
        }
        other => {
            let text = other.to_string();
            let verb: String = text
                .split_whitespace()
                .take(2)
                .collect::<Vec<_>>()
                .join(" ");
            Kind::Refused(format!(
                "the Shoal endpoint is read-only: '{verb} …' is not allowed (SELECT, WITH, EXPLAIN and SHOW are)"
            ))
        }
    }
}

fn role_of(client: &(impl ClientInfo + ?Sized)) -> PgWireResult<Role> {
    client
        .metadata()
        .get(ROLE_KEY)
        .and_then(|r| r.parse().ok())
        .ok_or_else(|| user_error("28000", "not signed in"))
}

fn query_error(e: AppError) -> PgWireError {
    let (code, message) = match &e {
        AppError::Forbidden(m) => ("42501", m.clone()),
        AppError::Query(q) if q.is_user_error() => ("42601", q.to_string()),
        AppError::BadRequest(m) => ("42601", m.clone()),
        other => ("XX000", other.to_string()),
    };
    user_error(code, message)
}

/// Plans statements in the connection's role views and runs simple queries under the
/// engine's limits.
struct ShoalHook {
    views: Arc<Views>,
}

impl ShoalHook {
    async fn plan(
        &self,
        statement: &Statement,
        client: &(dyn ClientInfo + Send + Sync),
    ) -> PgWireResult<(Arc<View>, datafusion::prelude::DataFrame)> {
        let role = role_of(client)?;
        let view = self.views.of(role).await.map_err(query_error)?;
        let frame = view
            .session
            .plan_in(&view.view, &statement.to_string())
            .await
            .map_err(|e| query_error(e.into()))?;
        Ok((view, frame))
    }

    /// Runs a query, streaming its rows as text under the engine's time limit (or the
    /// client's `statement_timeout`, when shorter).
    async fn run(
        &self,
        statement: &Statement,
        client: &mut dyn HookClient,
    ) -> PgWireResult<Response> {
        let (view, frame) = self.plan(statement, &*client).await?;
        let mut limit = view.session.limits().timeout;
        if let Some(ms) = client
            .metadata()
            .get(TIMEOUT_KEY)
            .and_then(|v| v.parse::<u64>().ok())
        {
            limit = limit.min(Duration::from_millis(ms));
        }
        let deadline = tokio::time::Instant::now() + limit;
        let options = Arc::new(FormatOptions::from_client_metadata(client.metadata()));
        let fields = Arc::new(arrow_schema_to_pg_fields(
            frame.schema().as_arrow(),
            &Format::UnifiedText,
            Some(options),
        )?);
        let batches = tokio::time::timeout_at(deadline, frame.execute_stream())
            .await
            .map_err(|_| timed_out(limit))?
            .map_err(|e| query_error(view.session.query_error(e).into()))?;
        let session_errors = view.clone();
        let encoded = fields.clone();
        let rows = batches
            .map(move |batch| {
                let rows: Box<dyn Iterator<Item = _> + Send + Sync> = match batch {
                    Ok(batch) => encode_recordbatch(encoded.clone(), batch),
                    Err(e) => Box::new(std::iter::once(Err(query_error(
                        session_errors.session.query_error(e).into(),
                    )))),
                };
                stream::iter(rows)
            })
            .flatten();
        let bounded = stream::unfold(
            (Box::pin(rows), false),
            move |(mut rows, done)| async move {
                if done {
                    return None;
                }
                match tokio::time::timeout_at(deadline, rows.next()).await {
                    Ok(Some(row)) => Some((row, (rows, false))),
                    Ok(None) => None,
                    Err(_) => Some((Err(timed_out(limit)), (rows, true))),
                }
            },
        );
        Ok(Response::Query(QueryResponse::new(fields, bounded)))
    }
}

fn timed_out(limit: Duration) -> PgWireError {
    user_error(
        "57014",
        format!(
            "canceling statement: it ran longer than {} s",
            limit.as_secs_f64()
        ),
    )
}

#[async_trait]
impl QueryHook for ShoalHook {
    async fn handle_simple_query(
        &self,
        statement: &Statement,
        _context: &SessionContext,
        client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        let metrics = &self.views.state.metrics;
        match classify(statement) {
            Kind::Protocol => None,
            Kind::Refused(message) => {
                metrics.postgres_statement("refused");
                Some(Err(user_error("25006", message)))
            }
            Kind::Query => {
                let answer = self.run(statement, client).await;
                metrics.postgres_statement(if answer.is_ok() { "ok" } else { "failed" });
                Some(answer)
            }
        }
    }

    async fn handle_extended_parse_query(
        &self,
        statement: &Statement,
        _context: &SessionContext,
        client: &(dyn ClientInfo + Send + Sync),
    ) -> Option<PgWireResult<LogicalPlan>> {
        let metrics = &self.views.state.metrics;
        match classify(statement) {
            Kind::Protocol => None,
            Kind::Refused(message) => {
                metrics.postgres_statement("refused");
                Some(Err(user_error("25006", message)))
            }
            Kind::Query => {
                let planned = self.plan(statement, client).await;
                metrics.postgres_statement(if planned.is_ok() { "ok" } else { "failed" });
                Some(planned.map(|(_, frame)| frame.logical_plan().clone()))
            }
        }
    }

    async fn handle_extended_query(
        &self,
        _statement: &Statement,
        _plan: &LogicalPlan,
        _params: &ParamValues,
        _context: &SessionContext,
        _client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        None
    }
}

/// Cleartext password sign-in where the password is an API token.
struct TokenStartup {
    state: AppState,
    parameters: DefaultServerParameterProvider,
    pids: RandomPidSecretKeyGenerator,
}

#[async_trait]
impl StartupHandler for TokenStartup {
    async fn on_startup<C>(
        &self,
        client: &mut C,
        message: PgWireFrontendMessage,
    ) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        match message {
            PgWireFrontendMessage::Startup(ref startup) => {
                protocol_negotiation(client, startup).await?;
                save_startup_parameters_to_metadata(client, startup);
                client.set_state(PgWireConnectionState::AuthenticationInProgress);
                client
                    .send(PgWireBackendMessage::Authentication(
                        Authentication::CleartextPassword,
                    ))
                    .await?;
            }
            PgWireFrontendMessage::PasswordMessageFamily(password) => {
                let password = password.into_password()?;
                let catalog = self.state.catalog.read().await.clone();
                let caller = self
                    .state
                    .tokens
                    .verify(&catalog, password.password.trim())
                    .await
                    .map_err(|e| user_error("XX000", e.to_string()))?;
                let Some(caller) = caller else {
                    return Err(PgWireError::UserError(Box::new(ErrorInfo::new(
                        "FATAL".into(),
                        "28P01".into(),
                        "password authentication failed: the password must be a live Shoal API token"
                            .into(),
                    ))));
                };
                let metadata = client.metadata_mut();
                metadata.insert(ROLE_KEY.into(), caller.role.to_string());
                metadata.insert(TOKEN_KEY.into(), caller.token_id.clone());
                let (pid, secret) = self.pids.generate(client);
                client.set_pid_and_secret_key(pid, secret);
                finish_authentication(client, &self.parameters).await?;
            }
            _ => {}
        }
        Ok(())
    }
}

/// The handlers of the endpoint: token sign-in, then the DataFusion session service whose
/// first hook plans in the connection's role views.
struct Handlers {
    service: Arc<DfSessionService>,
    startup: Arc<TokenStartup>,
}

impl PgWireServerHandlers for Handlers {
    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        self.service.clone()
    }

    fn extended_query_handler(&self) -> Arc<impl ExtendedQueryHandler> {
        self.service.clone()
    }

    fn startup_handler(&self) -> Arc<impl StartupHandler> {
        self.startup.clone()
    }
}

/// Serves the Postgres endpoint on `listener` until the process ends; each connection runs
/// on its own task.
pub async fn serve(state: AppState, listener: tokio::net::TcpListener) -> AppResult<()> {
    // Prepared statements are planned in the role views and run in this context, which
    // shares the engine's configuration (and its memory limit).
    let catalog = state.catalog.read().await.clone();
    let session = state.engine.session(&catalog).await?;
    let runner = SessionContext::new_with_config_rt(
        session.context().copied_config(),
        session.context().runtime_env(),
    );
    let views = Arc::new(Views {
        state: state.clone(),
        by_role: Mutex::new(HashMap::new()),
    });
    let hooks: Vec<Arc<dyn QueryHook>> = vec![
        Arc::new(ShoalHook { views }),
        Arc::new(CursorStatementHook),
        Arc::new(SetShowHook),
        Arc::new(TransactionStatementHook),
    ];
    let service = Arc::new(DfSessionService::new_with_hooks(Arc::new(runner), hooks));
    let mut parameters = DefaultServerParameterProvider::default();
    parameters.is_superuser = false;
    let handlers = Arc::new(Handlers {
        service,
        startup: Arc::new(TokenStartup {
            state,
            parameters,
            pids: RandomPidSecretKeyGenerator::default(),
        }),
    });
    loop {
        let (socket, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!("Postgres endpoint: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let handlers = handlers.clone();
        tokio::spawn(async move {
            if let Err(e) = process_socket(socket, None, handlers).await {
                tracing::debug!("Postgres connection from {peer} ended: {e}");
            }
        });
    }
}
