//! The Segment-compatible tracking API: `/v1/batch`, `/v1/track`, `/v1/identify`, `/v1/alias`,
//! `/v1/page`, `/v1/screen`, `/v1/group`.
//!
//! Existing Segment SDKs work unchanged: the write key is the HTTP Basic user name (or the
//! body's `writeKey`), bodies may be gzip-compressed, a message may be 32 KB and a batch 500 KB.
//! A 200 is sent only after the messages are committed to the warehouse; messages that cannot
//! be cleaned are committed to `quarantine` instead, so nothing acknowledged is ever lost.

use std::collections::HashSet;
use std::io::Read;
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use base64::Engine;
use serde_json::{Value, json};
use tokio::sync::{Mutex, RwLock};

use crate::error::{AppError, AppResult};
use crate::extract::{ApiBytes, ApiPath};
use crate::openapi::ApiErrors;
use crate::serve::AppState;
use crate::write_keys;

/// Segment's limit for a batch request.
pub const MAX_BATCH_BYTES: usize = 500 * 1024;

/// What the tracking routes share.
pub struct Tracking {
    /// Hashes of the active write keys, reloaded when an unknown key shows up.
    keys: RwLock<HashSet<String>>,
    /// One writer at a time, so two requests cannot both land one messageId.
    pub(crate) writer: Mutex<()>,
}

impl Tracking {
    pub fn new() -> Self {
        Tracking {
            keys: RwLock::new(HashSet::new()),
            writer: Mutex::new(()),
        }
    }
}

const KINDS: &[&str] = &["track", "identify", "alias", "page", "screen", "group"];

pub(crate) fn basic_user(headers: &HeaderMap) -> Option<String> {
    let value = headers.get("authorization")?.to_str().ok()?;
    let encoded = value
        .strip_prefix("Basic ")
        .or_else(|| value.strip_prefix("basic "))?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    Some(text.split(':').next().unwrap_or_default().to_string())
}

pub(crate) async fn authorise(state: &AppState, key: Option<String>) -> AppResult<()> {
    let Some(key) = key.filter(|k| !k.is_empty()) else {
        return Err(AppError::Unauthorized(
            "a write key is required: HTTP Basic user name or the body's writeKey".into(),
        ));
    };
    let hash = write_keys::hash(&key);
    if state.tracking.keys.read().await.contains(&hash) {
        return Ok(());
    }
    let catalog = state.catalog.read().await.clone();
    let fresh = write_keys::active_hashes(&catalog).await?;
    let known = fresh.contains(&hash);
    *state.tracking.keys.write().await = fresh;
    if known {
        Ok(())
    } else {
        Err(AppError::Unauthorized("unknown write key".into()))
    }
}

fn body_text(headers: &HeaderMap, body: &Bytes) -> AppResult<Vec<u8>> {
    let gzip = headers
        .get("content-encoding")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("gzip"));
    if !gzip {
        if body.len() > MAX_BATCH_BYTES {
            return Err(AppError::TooLarge(format!(
                "request body is {} bytes; a batch may be at most {MAX_BATCH_BYTES} bytes",
                body.len()
            )));
        }
        return Ok(body.to_vec());
    }
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(body.as_ref())
        .take(MAX_BATCH_BYTES as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| AppError::BadRequest(format!("body: not valid gzip: {e}")))?;
    if out.len() > MAX_BATCH_BYTES {
        return Err(AppError::TooLarge(format!(
            "decompressed body exceeds {MAX_BATCH_BYTES} bytes, the batch limit"
        )));
    }
    Ok(out)
}

/// `POST /v1/{kind}`.
#[utoipa::path(post, path = "/v1/{kind}", tag = "ingest", security(("write_key" = [])),
    params(("kind" = crate::openapi::TrackingCall, Path, description = "The Segment call")),
    request_body(content = Object, description = "A Segment message, or `{batch: [messages]}` \
    for /v1/batch; gzip with `Content-Encoding: gzip`; at most 32 KB per message and 500 KB \
    per batch"),
    responses((status = 200, description = "Committed: `{success: true}` once every message is durable", body = Object), ApiErrors))]
pub async fn receive(
    State(state): State<AppState>,
    ApiPath(kind): ApiPath<String>,
    headers: HeaderMap,
    ApiBytes(body): ApiBytes,
) -> AppResult<Json<Value>> {
    if kind != "batch" && !KINDS.contains(&kind.as_str()) {
        return Err(AppError::BadRequest(format!(
            "/v1/{kind}: not a tracking call (batch, track, identify, alias, page, screen, group)"
        )));
    }
    let text = body_text(&headers, &body)?;
    let value: Value = serde_json::from_slice(&text)
        .map_err(|e| AppError::BadRequest(format!("body: not JSON: {e}")))?;
    let Value::Object(mut envelope) = value else {
        return Err(AppError::BadRequest("body: must be a JSON object".into()));
    };
    let key = basic_user(&headers).or_else(|| {
        envelope
            .get("writeKey")
            .and_then(Value::as_str)
            .map(str::to_string)
    });
    authorise(&state, key).await?;

    let messages: Vec<Value> = if kind == "batch" {
        let batch = match envelope.remove("batch") {
            Some(Value::Array(batch)) => batch,
            _ => {
                return Err(AppError::BadRequest(
                    "batch: an array of messages is required".into(),
                ));
            }
        };
        let context = envelope.remove("context");
        batch
            .into_iter()
            .map(|mut m| {
                if let (Value::Object(message), Some(context)) = (&mut m, &context) {
                    message.entry("context").or_insert_with(|| context.clone());
                }
                m
            })
            .collect()
    } else {
        envelope.insert("type".into(), Value::String(kind.clone()));
        vec![Value::Object(envelope)]
    };
    let raw: Vec<String> = messages
        .into_iter()
        .map(|mut m| {
            if let Value::Object(message) = &mut m {
                message.remove("writeKey");
            }
            m.to_string()
        })
        .collect();
    let count = raw.len();
    let catalog = state.catalog.read().await.clone();
    let _writer = state.tracking.writer.lock().await;
    let report =
        shoal_ingest::ingest_segment_messages(&catalog, &format!("POST /v1/{kind}"), raw).await?;
    drop(_writer);
    state.metrics.ingested("tracking", &report.counts);
    tracing::info!(batch_id = %report.batch_id, messages = count, "tracking batch committed");
    Ok(Json(json!({
        "success": true,
        "batch_id": report.batch_id,
        "received": report.counts.received,
        "landed": report.counts.landed,
        "quarantined": report.counts.quarantined,
        "duplicates": report.counts.duplicates,
    })))
}

/// The shared state the tracking routes need.
pub fn state() -> Arc<Tracking> {
    Arc::new(Tracking::new())
}
