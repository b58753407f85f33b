//! Extractors whose rejections answer in the API's one error shape
//! (`{"error": {"code", "message", "path"}}`) instead of axum's plain text.

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use crate::error::AppError;

/// Query-string parameters; a bad one is a 400 naming it.
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, AppError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| ApiQuery(q.0))
            .map_err(|e: QueryRejection| {
                AppError::BadRequest(format!("query string: {}", e.body_text()))
            })
    }
}

/// Path segments; a bad one is a 400 naming it.
pub struct ApiPath<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for ApiPath<T> {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, AppError> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| ApiPath(p.0))
            .map_err(|e: PathRejection| AppError::BadRequest(format!("path: {}", e.body_text())))
    }
}

/// The raw body. One over the route's limit is a 413, one that stalls past the client
/// timeout a 408, any other failure to read it a 400 — in the API's error shape.
pub struct ApiBytes(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for ApiBytes {
    type Rejection = AppError;

    async fn from_request(request: Request, state: &S) -> Result<Self, AppError> {
        Bytes::from_request(request, state)
            .await
            .map(ApiBytes)
            .map_err(|e| body_error(&e))
    }
}

/// What went wrong reading a body, by the error's type (never its text).
fn body_error(rejection: &BytesRejection) -> AppError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(rejection);
    while let Some(error) = source {
        if error.is::<tower_http::timeout::TimeoutError>() {
            return AppError::Timeout(
                "request body: no data arrived within the client timeout".into(),
            );
        }
        source = error.source();
    }
    if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
        AppError::TooLarge(format!("request body: {}", rejection.body_text()))
    } else {
        AppError::BadRequest(format!("request body: {}", rejection.body_text()))
    }
}

/// A JSON body; malformed JSON or a field of the wrong type is a 400 naming it.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = AppError;

    async fn from_request(request: Request, state: &S) -> Result<Self, AppError> {
        axum::Json::<T>::from_request(request, state)
            .await
            .map(|j| ApiJson(j.0))
            .map_err(|e: JsonRejection| match e {
                JsonRejection::BytesRejection(e) => body_error(&e),
                other => AppError::BadRequest(format!("request body: {}", other.body_text())),
            })
    }
}

/// Parses a JSON request body; an error names the field at fault
/// (`request body: steps[1].event: invalid type: integer `5`, expected a string`).
pub fn json_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, AppError> {
    let mut reader = serde_json::Deserializer::from_slice(body);
    let value = serde_path_to_error::deserialize(&mut reader).map_err(|e| {
        let path = e.path().to_string();
        let error = e.into_inner();
        if path == "." || path.is_empty() {
            AppError::BadRequest(format!("request body: {error}"))
        } else {
            AppError::BadRequest(format!("request body: {path}: {error}"))
        }
    })?;
    reader
        .end()
        .map_err(|e| AppError::BadRequest(format!("request body: {e}")))?;
    Ok(value)
}
