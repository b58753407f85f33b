//! `shoal sql`, `shoal count` and the query API: condition-tree counts, previews and plans,
//! read-only SQL with JSON, CSV or Arrow IPC results, and the builder's field list.

use std::io::Write;
use std::time::Instant;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use chrono::NaiveDate;
use datafusion::execution::SendableRecordBatchStream;
use futures::StreamExt;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use shoal_catalog::{Catalog, Role, Visibility};
use shoal_query::count::{self, PathChoice};
use shoal_query::session::{columns, rows_as_json};
use shoal_query::{Engine, Session};

use crate::cli::{CountArgs, CountPath, SqlArgs, SqlFormat};
use crate::error::{AppError, AppResult};
use crate::extract::ApiBytes;
use crate::openapi::ApiErrors;
use crate::serve::AppState;
use crate::tokens::Caller;

/// The role of CLI callers: whoever can run the binary on the warehouse owns it.
const CLI_ROLE: Role = Role::Admin;

/// Rows a JSON SQL response holds at most; CSV and Arrow stream without a cap.
const MAX_JSON_ROWS: usize = 100_000;

/// `shoal sql`.
pub async fn sql_command(catalog: &Catalog, args: &SqlArgs) -> AppResult<()> {
    let engine = Engine::new(Default::default());
    let session = engine.session(catalog).await?;
    let frame = session.user_sql(&args.query, CLI_ROLE).await?;
    let schema: SchemaRef = frame.schema().inner().clone();
    let stream = session.stream(frame).await?;
    let mut out = std::io::stdout().lock();
    match args.format {
        SqlFormat::Table | SqlFormat::Json => {
            let batches = collect(&session, stream).await?;
            if args.format == SqlFormat::Table {
                let table = arrow::util::pretty::pretty_format_batches(&batches)
                    .map_err(|e| AppError::Internal(e.to_string()))?;
                writeln!(out, "{table}").map_err(io)?;
                eprintln!(
                    "{} rows",
                    batches.iter().map(|b| b.num_rows()).sum::<usize>()
                );
            } else {
                let body = json!({
                    "columns": columns(&schema),
                    "rows": rows_as_json(&batches)?,
                    "snapshot": session.versions(),
                });
                writeln!(out, "{body}").map_err(io)?;
            }
        }
        SqlFormat::Csv | SqlFormat::Jsonl | SqlFormat::Arrow => {
            write_stream(&session, stream, schema, args.format, &mut out).await?;
        }
    }
    Ok(())
}

async fn next(
    stream: &mut SendableRecordBatchStream,
) -> datafusion::error::Result<Option<RecordBatch>> {
    stream.next().await.transpose()
}

async fn collect(
    session: &Session,
    mut stream: SendableRecordBatchStream,
) -> AppResult<Vec<RecordBatch>> {
    let mut batches = Vec::new();
    while let Some(batch) = session.limited(next(&mut stream)).await? {
        batches.push(batch);
    }
    Ok(batches)
}

fn io(e: std::io::Error) -> AppError {
    AppError::Internal(format!("writing the result: {e}"))
}

/// `shoal count`.
pub async fn count_command(catalog: &Catalog, args: &CountArgs) -> AppResult<()> {
    let text = if args.conditions == "-" {
        std::io::read_to_string(std::io::stdin())
            .map_err(|e| AppError::BadRequest(format!("stdin: {e}")))?
    } else {
        std::fs::read_to_string(&args.conditions)
            .map_err(|e| AppError::BadRequest(format!("{}: {e}", args.conditions)))?
    };
    let tree: Value = serde_json::from_str(&text)
        .map_err(|e| AppError::BadRequest(format!("{}: not JSON: {e}", args.conditions)))?;
    let engine = Engine::new(Default::default());
    let session = engine.session(catalog).await?;
    let prepared = count::prepare(&session, &tree, CLI_ROLE, args.evaluated_at)?;
    let choice = match args.path {
        CountPath::Auto => PathChoice::Auto,
        CountPath::Scan => PathChoice::Scan,
    };
    let answer = count::count(&engine, &session, &prepared, choice).await?;
    let explanation = if args.explain {
        Some(count::explain(&engine, &session, &prepared).await?)
    } else {
        None
    };
    if args.json {
        let mut body =
            serde_json::to_value(&answer).map_err(|e| AppError::Internal(e.to_string()))?;
        if let (Some(e), Value::Object(map)) = (&explanation, &mut body) {
            map.insert(
                "explain".into(),
                serde_json::to_value(e).map_err(|e| AppError::Internal(e.to_string()))?,
            );
        }
        println!("{body}");
    } else {
        println!("{}", answer.count);
        eprintln!(
            "path {:?}, evaluated at {}, {:.1} ms",
            answer.path, answer.evaluated_at, answer.elapsed_ms
        );
        if let Some(e) = explanation {
            println!("{}", e.sql);
            for row in e.plan {
                if let (Some(kind), Some(plan)) = (row.get("plan_type"), row.get("plan")) {
                    println!(
                        "{}:\n{}",
                        kind.as_str().unwrap_or_default(),
                        plan.as_str().unwrap_or_default()
                    );
                }
            }
        }
    }
    Ok(())
}

/// Parses a JSON body into `T`; a bad body is a 400 naming where it went wrong.
fn parse<T: DeserializeOwned>(body: &Bytes) -> AppResult<T> {
    crate::extract::json_body(body)
}

/// A condition tree to count, explain or preview.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CountRequest {
    /// The condition tree (groups `all`/`any`/`not`, field, event, order, derived and
    /// audience conditions; see the README).
    #[schema(value_type = Object)]
    conditions: Value,
    #[serde(default)]
    evaluated_at: Option<NaiveDate>,
    #[serde(default)]
    path: PathChoice,
}

async fn session(state: &AppState) -> AppResult<Session> {
    let catalog = state.catalog.read().await.clone();
    Ok(state.engine.session(&catalog).await?)
}

/// A session and the request's tree checked in it.
async fn prepared(
    state: &AppState,
    caller: &Caller,
    conditions: &Value,
    evaluated_at: Option<NaiveDate>,
) -> AppResult<(Session, count::Prepared)> {
    let session = session(state).await?;
    let prepared = count::prepare(&session, conditions, caller.role, evaluated_at)?;
    Ok((session, prepared))
}

fn to_json(value: impl serde::Serialize) -> AppResult<Json<Value>> {
    serde_json::to_value(value)
        .map(Json)
        .map_err(|e| AppError::Internal(e.to_string()))
}

/// `POST /api/query/count`: `{"conditions": TREE}` → `{count, path, evaluated_at, snapshot}`.
#[utoipa::path(post, path = "/api/query/count", tag = "query", security(("token" = [])),
    request_body = CountRequest,
    responses((status = 200, description = "The count, the path that answered, the evaluation \
    date and the table versions read", body = Object), ApiErrors))]
pub async fn count_route(
    State(state): State<AppState>,
    caller: Caller,
    ApiBytes(body): ApiBytes,
) -> AppResult<Json<Value>> {
    let request: CountRequest = parse(&body)?;
    let (session, prepared) =
        prepared(&state, &caller, &request.conditions, request.evaluated_at).await?;
    let answer = count::count(&state.engine, &session, &prepared, request.path).await?;
    to_json(answer)
}

/// A condition tree and the columns of `users` to show for its first members.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PreviewRequest {
    #[schema(value_type = Object)]
    conditions: Value,
    #[serde(default)]
    evaluated_at: Option<NaiveDate>,
    /// Columns of `users` (default: a few identifying ones).
    #[serde(default)]
    columns: Vec<String>,
    /// People to show (default 20, at most 1,000).
    #[serde(default)]
    limit: Option<usize>,
}

/// `POST /api/query/preview`: the first members with chosen columns of `users`.
#[utoipa::path(post, path = "/api/query/preview", tag = "query", security(("token" = [])),
    request_body = PreviewRequest,
    responses((status = 200, description = "Columns as the role reads them and the rows", body = Object), ApiErrors))]
pub async fn preview_route(
    State(state): State<AppState>,
    caller: Caller,
    ApiBytes(body): ApiBytes,
) -> AppResult<Json<Value>> {
    let request: PreviewRequest = parse(&body)?;
    if request.limit.is_some_and(|n| n > count::MAX_PREVIEW_ROWS) {
        return Err(AppError::BadRequest(format!(
            "limit: a preview shows at most {} people; export a pack for more",
            count::MAX_PREVIEW_ROWS
        )));
    }
    let (session, prepared) =
        prepared(&state, &caller, &request.conditions, request.evaluated_at).await?;
    let preview = count::preview(
        &state.engine,
        &session,
        &prepared,
        caller.role,
        &request.columns,
        request.limit.unwrap_or(20),
    )
    .await?;
    to_json(preview)
}

/// `POST /api/query/explain`: the SQL a tree compiles to, its plan and the path a count takes.
#[utoipa::path(post, path = "/api/query/explain", tag = "query", security(("token" = [])),
    request_body = CountRequest,
    responses((status = 200, description = "SQL, plan and path", body = Object), ApiErrors))]
pub async fn explain_route(
    State(state): State<AppState>,
    caller: Caller,
    ApiBytes(body): ApiBytes,
) -> AppResult<Json<Value>> {
    let request: CountRequest = parse(&body)?;
    let (session, prepared) =
        prepared(&state, &caller, &request.conditions, request.evaluated_at).await?;
    let explanation = count::explain(&state.engine, &session, &prepared).await?;
    to_json(explanation)
}

/// A read-only SQL statement (SELECT, WITH or EXPLAIN).
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SqlRequest {
    sql: String,
    /// json (default), jsonl, csv or arrow; all but json stream every row.
    #[serde(default)]
    format: Option<String>,
    /// Rows of a JSON answer (default 10,000, at most 100,000).
    #[serde(default)]
    limit: Option<usize>,
}

/// `POST /api/query/sql`: read-only SQL; `format` json (default, capped rows), csv or arrow
/// (streamed).
#[utoipa::path(post, path = "/api/query/sql", tag = "query", security(("token" = [])),
    request_body = SqlRequest,
    responses((status = 200, description = "Rows: JSON (capped), or streamed CSV, JSON lines or \
    Arrow IPC", content(
        (Object = "application/json"),
        (String = "text/csv"),
        (String = "application/x-ndjson"),
        (String = "application/vnd.apache.arrow.stream"))), ApiErrors))]
pub async fn sql_route(
    State(state): State<AppState>,
    caller: Caller,
    ApiBytes(body): ApiBytes,
) -> AppResult<Response> {
    caller.require(Role::Analyst)?;
    let request: SqlRequest = parse(&body)?;
    let format = match request.format.as_deref().unwrap_or("json") {
        "json" => SqlFormat::Json,
        "csv" => SqlFormat::Csv,
        "jsonl" => SqlFormat::Jsonl,
        "arrow" => SqlFormat::Arrow,
        other => {
            return Err(AppError::BadRequest(format!(
                "format: '{other}' is not json, jsonl, csv or arrow"
            )));
        }
    };
    let session = session(&state).await?;
    let frame = session.user_sql(&request.sql, caller.role).await?;
    let schema: SchemaRef = frame.schema().inner().clone();
    if format == SqlFormat::Json {
        let limit = match request.limit {
            Some(limit) if limit > MAX_JSON_ROWS => {
                return Err(AppError::BadRequest(format!(
                    "limit: at most {MAX_JSON_ROWS} rows in a JSON answer; format csv, jsonl or \
                     arrow streams every row"
                )));
            }
            limit => limit.unwrap_or(10_000),
        };
        let started = Instant::now();
        let mut stream = session.stream(frame).await?;
        let mut batches = Vec::new();
        let mut rows = 0;
        let mut truncated = false;
        while let Some(batch) = session.limited(next(&mut stream)).await? {
            if rows + batch.num_rows() > limit {
                batches.push(batch.slice(0, limit - rows));
                truncated = true;
                break;
            }
            rows += batch.num_rows();
            batches.push(batch);
        }
        let rows = rows_as_json(&batches)?;
        return Ok(Json(json!({
            "columns": columns(&schema),
            "row_count": rows.len(),
            "truncated": truncated,
            "rows": rows,
            "snapshot": session.versions(),
            "elapsed_ms": started.elapsed().as_secs_f64() * 1e3,
        }))
        .into_response());
    }
    let stream = session.stream(frame).await?;
    streamed(stream, schema, format, state.engine.limits().timeout)
}

/// A response whose body is `stream` encoded as `format` (CSV, JSON lines or Arrow IPC),
/// batch by batch as the client reads it; cut off with an error after `limit`.
pub(crate) fn streamed(
    stream: SendableRecordBatchStream,
    schema: SchemaRef,
    format: SqlFormat,
    limit: std::time::Duration,
) -> AppResult<Response> {
    let deadline = Instant::now() + limit;
    let encoder = Encoder::new(format, schema)?;
    let content_type = match format {
        SqlFormat::Csv => "text/csv; charset=utf-8",
        SqlFormat::Jsonl => "application/x-ndjson",
        _ => "application/vnd.apache.arrow.stream",
    };
    let body = futures::stream::unfold(
        (stream, encoder, Stage::Start),
        move |(mut stream, mut encoder, stage)| async move {
            let (chunk, stage) = match stage {
                Stage::Done => return None,
                Stage::Start => (encoder.start(), Stage::Rows),
                Stage::Rows if Instant::now() > deadline => (
                    Err(AppError::BadRequest(
                        "query cancelled: time limit reached".into(),
                    )),
                    Stage::Done,
                ),
                Stage::Rows => match stream.next().await {
                    Some(Ok(batch)) => (encoder.batch(&batch), Stage::Rows),
                    Some(Err(e)) => (Err(AppError::Internal(e.to_string())), Stage::Done),
                    None => (encoder.finish(), Stage::Done),
                },
            };
            let chunk = chunk
                .map(Bytes::from)
                .map_err(|e| std::io::Error::other(e.to_string()));
            Some((chunk, (stream, encoder, stage)))
        },
    );
    Ok((
        [(header::CONTENT_TYPE, content_type)],
        Body::from_stream(body),
    )
        .into_response())
}

/// Writes `stream` to `out` encoded as `format` (CSV, JSON lines or Arrow IPC).
pub(crate) async fn write_stream(
    session: &Session,
    mut stream: SendableRecordBatchStream,
    schema: SchemaRef,
    format: SqlFormat,
    out: &mut dyn Write,
) -> AppResult<u64> {
    let mut encoder = Encoder::new(format, schema)?;
    let mut rows = 0;
    out.write_all(&encoder.start()?).map_err(io)?;
    while let Some(batch) = session.limited(next(&mut stream)).await? {
        rows += batch.num_rows() as u64;
        out.write_all(&encoder.batch(&batch)?).map_err(io)?;
    }
    out.write_all(&encoder.finish()?).map_err(io)?;
    Ok(rows)
}

enum Stage {
    Start,
    Rows,
    Done,
}

/// Encodes a stream of batches as CSV (header first) or an Arrow IPC stream.
enum Encoder {
    Csv { header: bool },
    Jsonl,
    Arrow(Box<arrow::ipc::writer::StreamWriter<Vec<u8>>>),
}

impl Encoder {
    fn new(format: SqlFormat, schema: SchemaRef) -> AppResult<Encoder> {
        Ok(match format {
            SqlFormat::Arrow => Encoder::Arrow(Box::new(
                arrow::ipc::writer::StreamWriter::try_new(Vec::new(), &schema)
                    .map_err(|e| AppError::Internal(e.to_string()))?,
            )),
            SqlFormat::Jsonl => Encoder::Jsonl,
            _ => Encoder::Csv { header: true },
        })
    }

    fn take(writer: &mut arrow::ipc::writer::StreamWriter<Vec<u8>>) -> Vec<u8> {
        std::mem::take(writer.get_mut())
    }

    fn start(&mut self) -> AppResult<Vec<u8>> {
        Ok(match self {
            Encoder::Csv { .. } | Encoder::Jsonl => Vec::new(),
            Encoder::Arrow(writer) => Encoder::take(writer),
        })
    }

    fn batch(&mut self, batch: &RecordBatch) -> AppResult<Vec<u8>> {
        let fail = |e: arrow::error::ArrowError| AppError::Internal(e.to_string());
        match self {
            Encoder::Csv { header } => {
                let mut writer = arrow::csv::WriterBuilder::new()
                    .with_header(*header)
                    .build(Vec::new());
                writer.write(batch).map_err(fail)?;
                *header = false;
                Ok(writer.into_inner())
            }
            Encoder::Jsonl => {
                let mut writer = arrow::json::LineDelimitedWriter::new(Vec::new());
                writer.write(batch).map_err(fail)?;
                writer.finish().map_err(fail)?;
                Ok(writer.into_inner())
            }
            Encoder::Arrow(writer) => {
                writer.write(batch).map_err(fail)?;
                Ok(Encoder::take(writer))
            }
        }
    }

    fn finish(&mut self) -> AppResult<Vec<u8>> {
        match self {
            Encoder::Csv { .. } | Encoder::Jsonl => Ok(Vec::new()),
            Encoder::Arrow(writer) => {
                writer
                    .finish()
                    .map_err(|e| AppError::Internal(e.to_string()))?;
                Ok(Encoder::take(writer))
            }
        }
    }
}

/// `GET /api/catalog/fields`: what the condition builder offers.
#[utoipa::path(get, path = "/api/catalog/fields", tag = "catalog", security(("token" = [])),
    responses((status = 200, description = "Fields with types, operators, enum values and \
    display names; derived conditions; events; users columns as the role sees them", body = Object), ApiErrors))]
pub async fn fields_route(State(state): State<AppState>, caller: Caller) -> AppResult<Json<Value>> {
    let catalog = state.catalog.read().await.clone();
    let definition = catalog.definition();
    let fields = shoal_query::fields::builder_fields(definition, caller.role);
    let derived: Vec<Value> = definition
        .derived
        .iter()
        .map(
            |(name, d)| json!({"name": name, "zh": d.zh, "en": d.en, "description": d.description}),
        )
        .collect();
    let session = state.engine.session(&catalog).await?;
    let events = shoal_query::count::event_names(&state.engine, &session).await?;
    let columns: Vec<Value> = match definition.table("users") {
        Ok(users) => users
            .fields
            .iter()
            .filter_map(|f| {
                let grant = definition.roles.grant(caller.role, f.sensitivity);
                (grant.read != Visibility::Denied || grant.export != Visibility::Denied).then(
                    || {
                        json!({"field": f.name, "zh": f.zh, "en": f.en, "type": f.value_type,
                        "sensitivity": f.sensitivity, "read": grant.read, "export": grant.export})
                    },
                )
            })
            .collect(),
        Err(_) => Vec::new(),
    };
    Ok(Json(json!({
        "fields": fields,
        "columns": columns,
        "derived": derived,
        "events": events,
        "time_zone": definition.time_zone,
    })))
}
