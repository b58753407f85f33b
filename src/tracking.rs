//! The Segment-compatible tracking API: `/v1/batch`, `/v1/track`, `/v1/identify`, `/v1/alias`,
//! `/v1/page`, `/v1/screen`, `/v1/group`.
//!
//! Existing Segment SDKs work unchanged: the write key is the HTTP Basic user name (or the
//! body's `writeKey`), bodies may be gzip-compressed, a message may be 32 KB and a batch 500 KB.
//! A 200 is sent only after the messages are committed to the warehouse; messages that cannot
//! be cleaned are committed to `quarantine` instead, so nothing acknowledged is ever lost.
//!
//! Commits are grouped: requests queue their messages for one committer task, which lands
//! everything that queued while its last commit ran as one batch (one `events` commit, one
//! `batches` row), then answers each request with its own counts. A lone request is committed
//! at once; many concurrent ones share the cost of a commit instead of waiting in line for
//! one each. A request whose client goes away is still committed (a retry is a duplicate).

use std::collections::HashSet;
use std::io::Read;
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use base64::Engine;
use serde_json::{Value, json};
use tokio::sync::{Mutex, RwLock, mpsc, oneshot};

use crate::error::{AppError, AppResult};
use crate::extract::{ApiBytes, ApiPath};
use crate::openapi::ApiErrors;
use crate::serve::AppState;
use crate::write_keys;

/// Segment's limit for a batch request.
pub const MAX_BATCH_BYTES: usize = 500 * 1024;

/// A group commit takes what is queued up to this many messages (a request is never split).
const GROUP_MESSAGES: usize = 50_000;

/// Requests that may wait for the committer before new ones wait to be queued.
const QUEUE_REQUESTS: usize = 1024;

/// What the tracking routes share.
pub struct Tracking {
    /// Hashes of the active write keys, reloaded when an unknown key shows up.
    keys: RwLock<HashSet<String>>,
    /// One writer at a time, so two batches cannot both land one messageId.
    pub(crate) writer: Mutex<()>,
    /// The committer's queue, started with the first request.
    queue: std::sync::OnceLock<mpsc::Sender<Job>>,
}

impl Tracking {
    pub fn new() -> Self {
        Tracking {
            keys: RwLock::new(HashSet::new()),
            writer: Mutex::new(()),
            queue: std::sync::OnceLock::new(),
        }
    }
}

/// One request's messages waiting for a commit, and where its answer goes.
struct Job {
    request: shoal_ingest::Request,
    reply: oneshot::Sender<Result<Committed, String>>,
}

/// What a request's messages became.
struct Committed {
    batch_id: String,
    counts: shoal_ingest::Counts,
}

/// Queues `request` for the committer and waits until it is committed.
async fn commit(state: &AppState, request: shoal_ingest::Request) -> AppResult<Committed> {
    let queue = state.tracking.queue.get_or_init(|| {
        let (tx, rx) = mpsc::channel(QUEUE_REQUESTS);
        tokio::spawn(committer(state.clone(), rx));
        tx
    });
    let (reply, answer) = oneshot::channel();
    queue
        .send(Job { request, reply })
        .await
        .map_err(|_| AppError::Internal("the tracking committer has stopped".into()))?;
    match answer.await {
        Ok(Ok(committed)) => Ok(committed),
        Ok(Err(message)) => Err(AppError::Internal(format!(
            "committing messages: {message}"
        ))),
        Err(_) => Err(AppError::Internal(
            "the tracking committer stopped before answering".into(),
        )),
    }
}

/// Commits queued requests, a group at a time, until the server stops.
async fn committer(state: AppState, mut queue: mpsc::Receiver<Job>) {
    // The tables written, kept open from one group to the next.
    let handles = Arc::new(Mutex::new(shoal_ingest::TableHandles::default()));
    while let Some(first) = queue.recv().await {
        let mut messages = first.request.messages.len();
        let mut jobs = vec![first];
        while messages < GROUP_MESSAGES {
            match queue.try_recv() {
                Ok(job) => {
                    messages += job.request.messages.len();
                    jobs.push(job);
                }
                Err(_) => break,
            }
        }
        let (requests, replies): (Vec<_>, Vec<_>) =
            jobs.into_iter().map(|j| (j.request, j.reply)).unzip();
        let group = requests.len();
        // Its own task, so that even a panic while committing answers every request.
        let landed = tokio::spawn({
            let state = state.clone();
            let handles = handles.clone();
            async move {
                let catalog = state.catalog.read().await.clone();
                let _writer = state.tracking.writer.lock().await;
                let mut handles = handles.lock().await;
                shoal_ingest::ingest_segment_requests(&catalog, &mut handles, requests).await
            }
        })
        .await;
        let landed = match landed {
            Ok(Ok(report)) => Ok(report),
            Ok(Err(e)) => Err(e.to_string()),
            Err(e) => Err(format!("the commit failed: {e}")),
        };
        match landed {
            Ok(report) => {
                tracing::info!(batch_id = %report.batch_id, requests = group, messages,
                    "tracking batch committed");
                for (reply, file) in replies.into_iter().zip(report.files) {
                    state.metrics.ingested("tracking", &file.counts);
                    // A client that went away has no one waiting here; its messages stay.
                    let _ = reply.send(Ok(Committed {
                        batch_id: report.batch_id.clone(),
                        counts: file.counts,
                    }));
                }
            }
            Err(message) => {
                tracing::error!(requests = group, messages, error = %message,
                    "tracking batch not committed");
                for reply in replies {
                    let _ = reply.send(Err(message.clone()));
                }
            }
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
    let committed = commit(
        &state,
        shoal_ingest::Request {
            origin: format!("POST /v1/{kind}"),
            messages: raw,
        },
    )
    .await?;
    let counts = committed.counts;
    Ok(Json(json!({
        "success": true,
        "batch_id": committed.batch_id,
        "received": counts.received,
        "landed": counts.landed,
        "quarantined": counts.quarantined,
        "duplicates": counts.duplicates,
    })))
}

/// The shared state the tracking routes need.
pub fn state() -> Arc<Tracking> {
    Arc::new(Tracking::new())
}
