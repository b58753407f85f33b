//! The web console: static files built from `web/` (TypeScript, Vite) and embedded in the
//! binary, so `shoal serve` needs no Node at run time. The console signs in with an API token
//! and talks to `/api` like any client.

use std::io::Write;
use std::sync::OnceLock;

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

/// One embedded file: its bytes, gzipped once on first use, and an entity tag.
struct Asset {
    content_type: &'static str,
    bytes: &'static [u8],
    gzipped: OnceLock<(Vec<u8>, String)>,
}

impl Asset {
    const fn new(content_type: &'static str, bytes: &'static [u8]) -> Asset {
        Asset {
            content_type,
            bytes,
            gzipped: OnceLock::new(),
        }
    }

    fn prepared(&self) -> &(Vec<u8>, String) {
        self.gzipped.get_or_init(|| {
            let mut encoder =
                flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
            // Writing to a Vec cannot fail; were it to, the plain body is served instead.
            let gzipped = encoder
                .write_all(self.bytes)
                .and_then(|()| encoder.finish())
                .unwrap_or_default();
            let digest = Sha256::digest(self.bytes);
            let tag = format!("\"{}\"", hex_prefix(&digest));
            (gzipped, tag)
        })
    }

    fn respond(&self, request: &HeaderMap) -> Response {
        let (gzipped, tag) = self.prepared();
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(self.content_type),
        );
        // Revalidated on every load: a new binary serves a new console at once.
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        headers.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
        headers.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
        headers.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(
                "default-src 'self'; img-src 'self' data: blob:; style-src 'self' 'unsafe-inline'; \
                 connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'",
            ),
        );
        if let Ok(value) = HeaderValue::from_str(tag) {
            headers.insert(header::ETAG, value);
        }
        let unchanged = request
            .get(header::IF_NONE_MATCH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.split(',').any(|t| t.trim() == tag));
        if unchanged {
            return (StatusCode::NOT_MODIFIED, headers).into_response();
        }
        let accepts_gzip = request
            .get(header::ACCEPT_ENCODING)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.split(',').any(|e| e.trim().starts_with("gzip")));
        if accepts_gzip && !gzipped.is_empty() {
            headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
            (headers, gzipped.clone()).into_response()
        } else {
            (headers, self.bytes).into_response()
        }
    }
}

fn hex_prefix(digest: &[u8]) -> String {
    digest.iter().take(12).map(|b| format!("{b:02x}")).collect()
}

static INDEX: Asset = Asset::new(
    "text/html; charset=utf-8",
    include_bytes!("../web/dist/index.html"),
);
static SCRIPT: Asset = Asset::new(
    "text/javascript; charset=utf-8",
    include_bytes!("../web/dist/assets/app.js"),
);
static STYLE: Asset = Asset::new(
    "text/css; charset=utf-8",
    include_bytes!("../web/dist/assets/app.css"),
);

/// `GET /`: the console's page.
pub async fn index(headers: HeaderMap) -> Response {
    INDEX.respond(&headers)
}

/// `GET /assets/app.js`.
pub async fn script(headers: HeaderMap) -> Response {
    SCRIPT.respond(&headers)
}

/// `GET /assets/app.css`.
pub async fn style(headers: HeaderMap) -> Response {
    STYLE.respond(&headers)
}
