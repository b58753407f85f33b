//! The OpenAPI 3 document of the HTTP API. Operations come from the `#[utoipa::path]`
//! annotations of the handlers, collected by the same router that serves them (see
//! `serve::app`), and request bodies from the request types the handlers parse: a route
//! cannot be served without being documented, nor documented without being served.

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{IntoResponses, Modify, OpenApi, ToSchema};

/// The document's fixed parts; `serve::app` adds every routed operation.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Shoal",
        description = "User-data platform: ingest, identity, audiences (roaring bitmaps), \
                       reports. API tokens go in `Authorization: Bearer …`; the tracking API \
                       (`/v1`) and file ingest take a write key as the HTTP Basic user name.",
    ),
    modifiers(&Security),
    components(schemas(ErrorBody, TrackingCall)),
    tags(
        (name = "health", description = "Liveness, readiness and metrics"),
        (name = "catalog", description = "Tables, field standards and quality monitors"),
        (name = "query", description = "Condition trees and read-only SQL"),
        (name = "audiences", description = "Audience packs"),
        (name = "reports", description = "Funnels, retention, campaign ROI, saved reports"),
        (name = "identity", description = "Builds and the identity graph"),
        (name = "tokens", description = "API tokens"),
        (name = "ingest", description = "Tracking API and file ingest"),
    )
)]
pub struct ApiDoc;

/// The two ways to authenticate.
struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "token",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
        components.add_security_scheme(
            "write_key",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Basic)),
        );
    }
}

/// Every error answers in this shape.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// What went wrong.
#[derive(Serialize, ToSchema)]
pub struct ErrorDetail {
    /// bad_request, unauthorized, forbidden, not_found, conflict, too_large, rate_limited,
    /// method_not_allowed, unsupported_media_type, timeout or internal.
    pub code: String,
    /// Names the field, parameter or part of the request at fault.
    pub message: String,
    /// Where in a condition tree or request body the fault is (`all[1].any[0].op`).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub path: Option<String>,
}

/// The errors any authenticated API operation may answer with.
#[derive(IntoResponses)]
#[allow(dead_code)]
pub enum ApiErrors {
    /// The request is malformed or names something invalid; the message says which field.
    #[response(status = 400)]
    BadRequest(ErrorBody),
    /// No token, or one we do not know.
    #[response(status = 401)]
    Unauthorized(ErrorBody),
    /// The token's role may not do this.
    #[response(status = 403)]
    Forbidden(ErrorBody),
    /// Something named in the request does not exist.
    #[response(status = 404)]
    NotFound(ErrorBody),
    /// The request conflicts with what exists (a name in use, a refresh running).
    #[response(status = 409)]
    Conflict(ErrorBody),
    /// The body is over its size limit.
    #[response(status = 413)]
    TooLarge(ErrorBody),
    /// The body is not of a type the operation takes.
    #[response(status = 415)]
    UnsupportedMediaType(ErrorBody),
    /// Too many requests with this token; `Retry-After` says when to retry.
    #[response(status = 429)]
    RateLimited(ErrorBody),
}

/// The Segment calls of the tracking API.
#[derive(ToSchema)]
#[serde(rename_all = "snake_case")]
#[allow(dead_code)]
pub enum TrackingCall {
    Batch,
    Track,
    Identify,
    Alias,
    Page,
    Screen,
    Group,
}

/// A file or list sent as the raw body.
#[derive(ToSchema)]
#[schema(value_type = String, format = Binary)]
#[allow(dead_code)]
pub struct FileBody(Vec<u8>);

/// Error responses that axum or a layer produced on its own (unknown route, wrong method,
/// body over a limit, wrong content type) are given the API's one error shape, so a client
/// never has to parse plain text.
pub async fn error_shape(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = match axum::body::to_bytes(body, 64 << 10).await {
        Ok(bytes) => String::from_utf8_lossy(&bytes).trim().to_string(),
        Err(_) => String::new(),
    };
    let code = match status {
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::PAYLOAD_TOO_LARGE => "too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::REQUEST_TIMEOUT => "timeout",
        StatusCode::UNAUTHORIZED => "unauthorized",
        StatusCode::FORBIDDEN => "forbidden",
        StatusCode::TOO_MANY_REQUESTS => "rate_limited",
        s if s.is_server_error() => "internal",
        _ => "bad_request",
    };
    let message = if status.is_server_error() || text.is_empty() {
        status
            .canonical_reason()
            .unwrap_or("error")
            .to_lowercase()
            .to_string()
    } else {
        text
    };
    let body = ErrorBody {
        error: ErrorDetail {
            code: code.into(),
            message,
            path: None,
        },
    };
    let mut shaped = (status, axum::Json(body)).into_response();
    for (name, value) in parts.headers.iter() {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            shaped.headers_mut().append(name.clone(), value.clone());
        }
    }
    shaped
}

/// A request whose handler panicked answers 500 in the one error shape (the server goes on
/// serving); what panicked goes to the log under an id that the client is given.
pub fn panicked(panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let what = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("a panic");
    let id = format!("{:016x}", rand::random::<u64>());
    tracing::error!(error_id = %id, panic = %what, "request handler panicked");
    let body = ErrorBody {
        error: ErrorDetail {
            code: "internal".into(),
            message: format!("internal error (id {id})"),
            path: None,
        },
    };
    (StatusCode::INTERNAL_SERVER_ERROR, axum::Json(body)).into_response()
}

/// `GET /api/openapi.json`: this document.
pub fn document_response(document: &str) -> Response {
    let mut response = Response::new(Body::from(document.to_string()));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}
