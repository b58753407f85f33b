//! `POST /api/ingest`: file import over HTTP, and `GET /api/quarantine`.
//!
//! Uploads are writes, so they take a tracking write key (HTTP Basic user name). The body is
//! streamed to a temporary file, never held whole in memory, then imported like
//! `shoal ingest`; the response is the batch report.

use std::io::Write;

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use futures::StreamExt;
use serde::Deserialize;
use serde_json::Value;
use shoal_ingest::{SourceKind, ingest_files};

use crate::error::{AppError, AppResult};
use crate::extract::ApiQuery;
use crate::openapi::ApiErrors;
use crate::serve::AppState;
use crate::tracking::{authorise, basic_user};

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UploadQuery {
    /// segment, youzan or tmall.
    source: String,
    /// The file's name (its extension tells CSV, JSON lines or Parquet).
    filename: Option<String>,
}

/// `POST /api/ingest?source=segment|youzan|tmall&filename=NAME`, body = the file.
#[utoipa::path(post, path = "/api/ingest", tag = "ingest", security(("write_key" = [])),
    params(UploadQuery),
    request_body(content = crate::openapi::FileBody, content_type = "application/octet-stream",
        description = "The file, streamed to disk before it is read"),
    responses((status = 200, description = "The batch: received, landed, quarantined, duplicates", body = Object), ApiErrors))]
pub async fn upload(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<UploadQuery>,
    headers: HeaderMap,
    body: Body,
) -> AppResult<Json<Value>> {
    authorise(&state, basic_user(&headers)).await?;
    let kind: SourceKind = query.source.parse().map_err(AppError::BadRequest)?;
    let name = query.filename.unwrap_or_else(|| {
        format!(
            "upload.{}",
            if kind == SourceKind::Tmall {
                "csv"
            } else {
                "jsonl"
            }
        )
    });
    if name.is_empty() || name.len() > 200 || name.contains(['/', '\\']) || name.starts_with('.') {
        return Err(AppError::BadRequest(
            "filename: a plain file name without folders".into(),
        ));
    }
    let dir = tempfile::tempdir().map_err(|e| AppError::Internal(e.to_string()))?;
    let path = dir.path().join(&name);
    let mut file = std::fs::File::create(&path).map_err(|e| AppError::Internal(e.to_string()))?;
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| AppError::BadRequest(format!("body: {e}")))?;
        file.write_all(&chunk)
            .map_err(|e| AppError::Internal(e.to_string()))?;
    }
    file.flush()
        .map_err(|e| AppError::Internal(e.to_string()))?;
    drop(file);
    let catalog = state.catalog.read().await.clone();
    let _writer = state.tracking.writer.lock().await;
    let report = ingest_files(&catalog, kind, &[path.as_path()], &mut |_| {}).await?;
    state.metrics.ingested(&report.source, &report.counts);
    Ok(Json(
        serde_json::to_value(&report).map_err(|e| AppError::Internal(e.to_string()))?,
    ))
}
