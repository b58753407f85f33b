//! Errors of the binary, and how they reach HTTP clients and the terminal.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// An error of a command or request.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// From the catalog crate.
    #[error(transparent)]
    Catalog(#[from] shoal_catalog::Error),
    /// From the ingest crate.
    #[error(transparent)]
    Ingest(#[from] shoal_ingest::Error),
    /// From the query crate.
    #[error(transparent)]
    Query(#[from] shoal_query::Error),
    /// From the audience crate.
    #[error(transparent)]
    Audience(#[from] shoal_audience::Error),
    /// A request or argument the caller got wrong.
    #[error("{0}")]
    BadRequest(String),
    /// No credentials, or credentials we do not know.
    #[error("{0}")]
    Unauthorized(String),
    /// Credentials we know, but a role below what the request needs.
    #[error("{0}")]
    Forbidden(String),
    /// Something named in the request does not exist.
    #[error("{0}")]
    NotFound(String),
    /// A body over a size limit.
    #[error("{0}")]
    TooLarge(String),
    /// A client that stopped sending its request.
    #[error("{0}")]
    Timeout(String),
    /// Too many requests with one token; `retry_after` seconds until the next is accepted.
    #[error("{message}")]
    RateLimited { message: String, retry_after: u64 },
    /// Anything else that failed on our side.
    #[error("{0}")]
    Internal(String),
}

pub type AppResult<T> = Result<T, AppError>;

impl AppError {
    fn status(&self) -> StatusCode {
        match self {
            AppError::Catalog(shoal_catalog::Error::UnknownTable { .. })
            | AppError::Ingest(shoal_ingest::Error::NotFound(_))
            | AppError::NotFound(_) => StatusCode::NOT_FOUND,
            AppError::Catalog(e) if e.is_user_error() => StatusCode::BAD_REQUEST,
            AppError::Ingest(e) if e.is_user_error() => StatusCode::BAD_REQUEST,
            AppError::Query(shoal_query::Error::Catalog(shoal_catalog::Error::UnknownTable {
                ..
            })) => StatusCode::NOT_FOUND,
            AppError::Query(e) if e.is_user_error() => StatusCode::BAD_REQUEST,
            AppError::Audience(e) => match e {
                shoal_audience::Error::NotFound(_) => StatusCode::NOT_FOUND,
                shoal_audience::Error::Conflict(_) => StatusCode::CONFLICT,
                shoal_audience::Error::Forbidden(_) => StatusCode::FORBIDDEN,
                e if e.is_user_error() => StatusCode::BAD_REQUEST,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            },
            AppError::BadRequest(_) => StatusCode::BAD_REQUEST,
            AppError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            AppError::Forbidden(_) => StatusCode::FORBIDDEN,
            AppError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            AppError::Timeout(_) => StatusCode::REQUEST_TIMEOUT,
            AppError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let status = self.status();
        let (code, message) = if status.is_server_error() {
            // Detail goes to the log under an id; the client gets the id only.
            let id = format!("{:016x}", rand::random::<u64>());
            tracing::error!(error_id = %id, error = %self, "request failed");
            ("internal", format!("internal error (id {id})"))
        } else if status == StatusCode::NOT_FOUND {
            ("not_found", self.to_string())
        } else if status == StatusCode::UNAUTHORIZED {
            ("unauthorized", self.to_string())
        } else if status == StatusCode::FORBIDDEN {
            ("forbidden", self.to_string())
        } else if status == StatusCode::CONFLICT {
            ("conflict", self.to_string())
        } else if status == StatusCode::PAYLOAD_TOO_LARGE {
            ("too_large", self.to_string())
        } else if status == StatusCode::REQUEST_TIMEOUT {
            ("timeout", self.to_string())
        } else if status == StatusCode::TOO_MANY_REQUESTS {
            ("rate_limited", self.to_string())
        } else {
            ("bad_request", self.to_string())
        };
        let mut error = json!({"code": code, "message": message});
        match &self {
            AppError::Query(e) | AppError::Audience(shoal_audience::Error::Query(e)) => {
                if let Some(path) = e.path() {
                    error["path"] = json!(path);
                }
            }
            AppError::Audience(shoal_audience::Error::Invalid { field, .. }) => {
                error["path"] = json!(field);
            }
            _ => {}
        }
        let mut response = (status, Json(json!({ "error": error }))).into_response();
        if let AppError::RateLimited { retry_after, .. } = &self {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from(*retry_after),
            );
        }
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}
