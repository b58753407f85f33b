//! API tokens: `Authorization: Bearer TOKEN` on `/api/*` (and the password of the Postgres
//! endpoint). A token is `shoal_<id>_<secret>`; the warehouse keeps its id, name, role and the
//! SHA-256 of the whole token, never the token itself. Revoking sets `revoked_at`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{AsArray, RecordBatch, StringArray, TimestampMicrosecondArray};
use arrow::datatypes::TimestampMicrosecondType;
use axum::Json;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use shoal_catalog::{Catalog, CommitNote, Role, Table};
use tokio::sync::Mutex;

use crate::error::{AppError, AppResult};
use crate::extract::{ApiBytes, ApiPath};
use crate::openapi::ApiErrors;
use crate::serve::AppState;
use crate::write_keys::hash;

/// The table tokens live in.
const TABLE: &str = "api_tokens";

/// How long a known token is trusted before the table is looked at again (so a token revoked
/// by another process stops working within this time).
const RECHECK: Duration = Duration::from_secs(1);

/// A token as listed: everything but its secret.
#[derive(Debug, Clone, Serialize)]
pub struct TokenInfo {
    pub token_id: String,
    pub name: String,
    pub role: Role,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub revoked_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// A token just made; `token` is shown once.
#[derive(Debug, Serialize)]
pub struct NewToken {
    pub token: String,
    #[serde(flatten)]
    pub info: TokenInfo,
}

fn check_name(name: &str) -> AppResult<()> {
    if name.trim().is_empty() || name.chars().count() > 200 || name.chars().any(char::is_control) {
        return Err(AppError::BadRequest(
            "name: 1 to 200 characters, no control characters".into(),
        ));
    }
    Ok(())
}

/// Creates a token with `role`.
pub async fn create(catalog: &Catalog, name: &str, role: Role, by: &str) -> AppResult<NewToken> {
    check_name(name)?;
    let token_id = format!("{:08x}", rand::random::<u32>());
    let token = format!(
        "shoal_{token_id}_{:016x}{:016x}",
        rand::random::<u64>(),
        rand::random::<u64>()
    );
    let now = chrono::Utc::now();
    let mut table = catalog.table(TABLE).await?;
    let batch = RecordBatch::try_new(
        table.schema()?,
        vec![
            Arc::new(StringArray::from(vec![token_id.clone()])),
            Arc::new(StringArray::from(vec![hash(&token)])),
            Arc::new(StringArray::from(vec![name])),
            Arc::new(StringArray::from(vec![role.to_string()])),
            Arc::new(
                TimestampMicrosecondArray::from(vec![now.timestamp_micros()]).with_timezone("UTC"),
            ),
            Arc::new(TimestampMicrosecondArray::from(vec![None::<i64>]).with_timezone("UTC")),
        ],
    )
    .map_err(|e| AppError::Internal(e.to_string()))?;
    table
        .append(vec![batch], CommitNote::new("author", by))
        .await?;
    Ok(NewToken {
        token,
        info: TokenInfo {
            token_id,
            name: name.to_string(),
            role,
            created_at: now,
            revoked_at: None,
        },
    })
}

/// Every token with its hash, oldest first.
async fn read(table: &Table) -> AppResult<Vec<(String, TokenInfo)>> {
    let mut out = Vec::new();
    for batch in table.read_all().await? {
        let text = |name: &str| -> AppResult<StringArray> {
            let column = batch
                .column_by_name(name)
                .ok_or_else(|| AppError::Internal(format!("{TABLE}.{name} missing")))?;
            let cast = arrow::compute::cast(column, &arrow::datatypes::DataType::Utf8)
                .map_err(|e| AppError::Internal(e.to_string()))?;
            Ok(cast.as_string::<i32>().clone())
        };
        let time = |name: &str| -> AppResult<Vec<Option<i64>>> {
            let column = batch
                .column_by_name(name)
                .ok_or_else(|| AppError::Internal(format!("{TABLE}.{name} missing")))?;
            let times = column
                .as_primitive_opt::<TimestampMicrosecondType>()
                .ok_or_else(|| AppError::Internal(format!("{TABLE}.{name} is not a time")))?;
            Ok(times.iter().collect())
        };
        let (ids, hashes, names, roles) = (
            text("token_id")?,
            text("token_hash")?,
            text("name")?,
            text("role")?,
        );
        let (created, revoked) = (time("created_at")?, time("revoked_at")?);
        for i in 0..batch.num_rows() {
            let role = roles
                .value(i)
                .parse::<Role>()
                .map_err(|e| AppError::Internal(format!("{TABLE}.role: {e}")))?;
            let at = |micros: Option<i64>| micros.and_then(chrono::DateTime::from_timestamp_micros);
            out.push((
                hashes.value(i).to_string(),
                TokenInfo {
                    token_id: ids.value(i).to_string(),
                    name: names.value(i).to_string(),
                    role,
                    created_at: at(created[i]).unwrap_or_default(),
                    revoked_at: at(revoked[i]),
                },
            ));
        }
    }
    out.sort_by(|a, b| (a.1.created_at, &a.1.token_id).cmp(&(b.1.created_at, &b.1.token_id)));
    Ok(out)
}

/// Every token, oldest first, without secrets.
pub async fn list(catalog: &Catalog) -> AppResult<Vec<TokenInfo>> {
    let table = catalog.table(TABLE).await?;
    Ok(read(&table).await?.into_iter().map(|(_, t)| t).collect())
}

/// Revokes the token `token_id`; revoking a revoked token changes nothing.
pub async fn revoke(catalog: &Catalog, token_id: &str, by: &str) -> AppResult<TokenInfo> {
    let mut table = catalog.table(TABLE).await?;
    let Some((_, mut info)) = read(&table)
        .await?
        .into_iter()
        .find(|(_, t)| t.token_id == token_id)
    else {
        return Err(AppError::NotFound(format!("no token with id '{token_id}'")));
    };
    if info.revoked_at.is_some() {
        return Ok(info);
    }
    let now = chrono::Utc::now();
    let schema = arrow::datatypes::Schema::new(vec![
        arrow::datatypes::Field::new("token_id", arrow::datatypes::DataType::Utf8, false),
        arrow::datatypes::Field::new(
            "revoked_at",
            arrow::datatypes::DataType::Timestamp(
                arrow::datatypes::TimeUnit::Microsecond,
                Some("UTC".into()),
            ),
            true,
        ),
    ]);
    let batch = RecordBatch::try_new(
        Arc::new(schema),
        vec![
            Arc::new(StringArray::from(vec![token_id])),
            Arc::new(
                TimestampMicrosecondArray::from(vec![now.timestamp_micros()]).with_timezone("UTC"),
            ),
        ],
    )
    .map_err(|e| AppError::Internal(e.to_string()))?;
    table
        .update_by_key(
            vec![batch],
            &["token_id"],
            &["revoked_at"],
            CommitNote::new("author", by),
        )
        .await?;
    info.revoked_at = Some(now);
    Ok(info)
}

/// Known tokens by hash, kept current with the table.
pub struct Tokens {
    inner: Mutex<Option<Cache>>,
}

struct Cache {
    table: Table,
    by_hash: HashMap<String, TokenInfo>,
    checked: Instant,
}

impl Tokens {
    pub fn new() -> Self {
        Tokens {
            inner: Mutex::new(None),
        }
    }

    /// Forgets what is cached, so the next request reads the table.
    pub async fn invalidate(&self) {
        *self.inner.lock().await = None;
    }

    /// The caller a token stands for, when it is live.
    pub async fn verify(&self, catalog: &Catalog, token: &str) -> AppResult<Option<Caller>> {
        Ok(self.find(catalog, &hash(token)).await?.map(|info| Caller {
            token_id: info.token_id,
            name: info.name,
            role: info.role,
        }))
    }

    /// The live token whose hash is `hash`, if any.
    async fn find(&self, catalog: &Catalog, hash: &str) -> AppResult<Option<TokenInfo>> {
        let mut inner = self.inner.lock().await;
        let cache = match inner.as_mut() {
            Some(cache) => {
                let known = cache.by_hash.contains_key(hash);
                if !known || cache.checked.elapsed() > RECHECK {
                    let before = cache.table.version();
                    cache.table.refresh().await?;
                    if cache.table.version() != before {
                        cache.by_hash = read(&cache.table).await?.into_iter().collect();
                    }
                    cache.checked = Instant::now();
                }
                cache
            }
            None => {
                let table = catalog.table(TABLE).await?;
                let by_hash = read(&table).await?.into_iter().collect();
                inner.insert(Cache {
                    table,
                    by_hash,
                    checked: Instant::now(),
                })
            }
        };
        Ok(cache
            .by_hash
            .get(hash)
            .filter(|t| t.revoked_at.is_none())
            .cloned())
    }
}

impl Default for Tokens {
    fn default() -> Self {
        Tokens::new()
    }
}

/// Who made a request: the token's id, name and role.
#[derive(Debug, Clone)]
pub struct Caller {
    pub token_id: String,
    pub name: String,
    pub role: Role,
}

impl Caller {
    /// The caller as a commit author: `token:<id>`.
    pub fn author(&self) -> String {
        format!("token:{}", self.token_id)
    }

    /// Refuses callers whose role is below `needed` (403).
    pub fn require(&self, needed: Role) -> AppResult<()> {
        if self.role >= needed {
            Ok(())
        } else {
            Err(AppError::Forbidden(format!(
                "this needs the {needed} role or higher; the token has the {} role",
                self.role
            )))
        }
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> AppResult<Caller> {
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .ok_or_else(|| {
                AppError::Unauthorized(
                    "an API token is required: Authorization: Bearer TOKEN".into(),
                )
            })?;
        let token = header
            .to_str()
            .ok()
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| AppError::Unauthorized("Authorization must be 'Bearer TOKEN'".into()))?;
        let catalog = state.catalog.read().await.clone();
        match state.tokens.verify(&catalog, token).await? {
            Some(caller) => {
                state
                    .limiter
                    .check(&caller.token_id)
                    .map_err(|wait| AppError::RateLimited {
                        message: format!(
                            "more than {} requests per second with this token; retry in {:.1} s",
                            state.limiter.per_second(),
                            wait
                        ),
                        retry_after: wait.ceil().max(1.0) as u64,
                    })?;
                Ok(caller)
            }
            None => Err(AppError::Unauthorized(
                "unknown or revoked API token".into(),
            )),
        }
    }
}

/// `GET /api/whoami`: the caller's token id, name and role.
#[utoipa::path(get, path = "/api/whoami", tag = "tokens", security(("token" = [])),
    responses((status = 200, description = "token_id, name, role", body = Object), ApiErrors))]
pub async fn whoami_route(caller: Caller) -> Json<Value> {
    Json(json!({"token_id": caller.token_id, "name": caller.name, "role": caller.role}))
}

/// `GET /api/tokens` (admin): every token without its secret.
#[utoipa::path(get, path = "/api/tokens", tag = "tokens", security(("token" = [])),
    responses((status = 200, description = "Every token, without secrets", body = Object), ApiErrors))]
pub async fn list_route(State(state): State<AppState>, caller: Caller) -> AppResult<Json<Value>> {
    caller.require(Role::Admin)?;
    let catalog = state.catalog.read().await.clone();
    Ok(Json(json!({"tokens": list(&catalog).await?})))
}

/// Body of `POST /api/tokens`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRequest {
    name: String,
    /// viewer, analyst or admin.
    role: String,
}

/// `POST /api/tokens` (admin): `{"name", "role"}` → the new token, shown once.
#[utoipa::path(post, path = "/api/tokens", tag = "tokens", security(("token" = [])),
    request_body = CreateRequest,
    responses((status = 200, description = "The new token; its secret is shown only here", body = Object), ApiErrors))]
pub async fn create_route(
    State(state): State<AppState>,
    caller: Caller,
    ApiBytes(body): ApiBytes,
) -> AppResult<Json<Value>> {
    caller.require(Role::Admin)?;
    let request: CreateRequest = crate::extract::json_body(&body)?;
    let role: Role = request
        .role
        .parse()
        .map_err(|e| AppError::BadRequest(format!("role: {e}")))?;
    let catalog = state.catalog.read().await.clone();
    let token = create(&catalog, &request.name, role, &caller.author()).await?;
    Ok(Json(json!(token)))
}

/// `DELETE /api/tokens/{token_id}` (admin): revokes a token at once.
#[utoipa::path(delete, path = "/api/tokens/{token_id}", tag = "tokens", security(("token" = [])),
    params(("token_id" = String, Path, description = "The token's id")),
    responses((status = 200, description = "Revoked", body = Object), ApiErrors))]
pub async fn revoke_route(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(token_id): ApiPath<String>,
) -> AppResult<Json<Value>> {
    caller.require(Role::Admin)?;
    let catalog = state.catalog.read().await.clone();
    let info = revoke(&catalog, &token_id, &caller.author()).await?;
    state.tokens.invalidate().await;
    Ok(Json(json!(info)))
}

/// `shoal token create|list|revoke`.
pub async fn command(catalog: &Catalog, command: &crate::cli::TokenCommand) -> AppResult<()> {
    use crate::cli::TokenCommand;
    match command {
        TokenCommand::Create { role, name, json } => {
            let token = create(catalog, name, *role, "cli").await?;
            if *json {
                println!("{}", json!(token));
            } else {
                println!("{}", token.token);
                eprintln!(
                    "{} token '{}' (id {}) created; it is shown only now",
                    token.info.role, token.info.name, token.info.token_id
                );
            }
        }
        TokenCommand::List { json } => {
            let tokens = list(catalog).await?;
            if *json {
                println!("{}", json!({ "tokens": tokens }));
            } else {
                println!(
                    "{:<10} {:<8} {:<26} {:<26} name",
                    "id", "role", "created", "revoked"
                );
                for t in tokens {
                    println!(
                        "{:<10} {:<8} {:<26} {:<26} {}",
                        t.token_id,
                        t.role.to_string(),
                        t.created_at.format("%Y-%m-%d %H:%M:%S UTC"),
                        t.revoked_at
                            .map(|r| r.format("%Y-%m-%d %H:%M:%S UTC").to_string())
                            .unwrap_or_else(|| "-".into()),
                        t.name
                    );
                }
            }
        }
        TokenCommand::Revoke { token_id } => {
            let info = revoke(catalog, token_id, "cli").await?;
            eprintln!("token {} ('{}') revoked", info.token_id, info.name);
        }
    }
    Ok(())
}
