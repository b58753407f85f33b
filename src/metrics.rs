//! Prometheus metrics at `GET /metrics`: requests and their latency by route, rows ingested by
//! outcome, audience refreshes by trigger and outcome, Postgres statements. Plain counters and
//! fixed-bucket histograms, written in the text exposition format.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::serve::AppState;

/// Upper bounds (seconds) of the latency buckets.
const BUCKETS: [f64; 12] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

#[derive(Debug, Default, Clone)]
struct Histogram {
    /// Observations at or below each bound (not cumulative; summed when written).
    counts: [u64; BUCKETS.len()],
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, seconds: f64) {
        if let Some(i) = BUCKETS.iter().position(|b| seconds <= *b) {
            self.counts[i] += 1;
        }
        self.sum += seconds;
        self.count += 1;
    }
}

#[derive(Debug, Default)]
struct Inner {
    /// (method, route, status) → requests.
    requests: BTreeMap<(String, String, u16), u64>,
    /// (method, route) → latency.
    latency: BTreeMap<(String, String), Histogram>,
    /// (source, outcome) → rows.
    ingest_rows: BTreeMap<(String, &'static str), u64>,
    /// (trigger, outcome) → refreshes.
    refreshes: BTreeMap<(String, &'static str), u64>,
    /// outcome → Postgres statements.
    postgres: BTreeMap<&'static str, u64>,
}

/// What the server counts.
#[derive(Debug, Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

impl Metrics {
    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        f(&mut self.inner.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// One answered request.
    pub fn request(&self, method: &str, route: &str, status: u16, seconds: f64) {
        self.with(|m| {
            *m.requests
                .entry((method.to_string(), route.to_string(), status))
                .or_default() += 1;
            m.latency
                .entry((method.to_string(), route.to_string()))
                .or_default()
                .observe(seconds);
        });
    }

    /// Rows of one ingested batch.
    pub fn ingested(&self, source: &str, counts: &shoal_ingest::Counts) {
        self.with(|m| {
            for (outcome, rows) in [
                ("landed", counts.landed),
                ("quarantined", counts.quarantined),
                ("duplicate", counts.duplicates),
            ] {
                *m.ingest_rows
                    .entry((source.to_string(), outcome))
                    .or_default() += rows;
            }
        });
    }

    /// One audience refresh.
    pub fn refreshed(&self, trigger: &str, ok: bool) {
        self.with(|m| {
            *m.refreshes
                .entry((trigger.to_string(), if ok { "ok" } else { "failed" }))
                .or_default() += 1;
        });
    }

    /// One Postgres statement.
    pub fn postgres_statement(&self, outcome: &'static str) {
        self.with(|m| *m.postgres.entry(outcome).or_default() += 1);
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let m = self.with(|m| {
            (
                m.requests.clone(),
                m.latency.clone(),
                m.ingest_rows.clone(),
                m.refreshes.clone(),
                m.postgres.clone(),
            )
        });
        let (requests, latency, ingest_rows, refreshes, postgres) = m;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP shoal_http_requests_total HTTP requests answered, by route and status.\n# TYPE shoal_http_requests_total counter"
        );
        for ((method, route, status), n) in &requests {
            let _ = writeln!(
                out,
                "shoal_http_requests_total{{method=\"{method}\",route=\"{}\",status=\"{status}\"}} {n}",
                escape(route)
            );
        }
        let _ = writeln!(
            out,
            "# HELP shoal_http_request_duration_seconds Time to answer, by route (query routes time their queries).\n# TYPE shoal_http_request_duration_seconds histogram"
        );
        for ((method, route), h) in &latency {
            let labels = format!("method=\"{method}\",route=\"{}\"", escape(route));
            let mut cumulative = 0;
            for (bound, n) in BUCKETS.iter().zip(h.counts) {
                cumulative += n;
                let _ = writeln!(
                    out,
                    "shoal_http_request_duration_seconds_bucket{{{labels},le=\"{bound}\"}} {cumulative}"
                );
            }
            let _ = writeln!(
                out,
                "shoal_http_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {}\nshoal_http_request_duration_seconds_sum{{{labels}}} {}\nshoal_http_request_duration_seconds_count{{{labels}}} {}",
                h.count, h.sum, h.count
            );
        }
        let _ = writeln!(
            out,
            "# HELP shoal_ingest_rows_total Rows ingested through this server, by source and outcome.\n# TYPE shoal_ingest_rows_total counter"
        );
        for ((source, outcome), n) in &ingest_rows {
            let _ = writeln!(
                out,
                "shoal_ingest_rows_total{{source=\"{}\",outcome=\"{outcome}\"}} {n}",
                escape(source)
            );
        }
        let _ = writeln!(
            out,
            "# HELP shoal_audience_refreshes_total Audience pack refreshes, by trigger and outcome.\n# TYPE shoal_audience_refreshes_total counter"
        );
        for ((trigger, outcome), n) in &refreshes {
            let _ = writeln!(
                out,
                "shoal_audience_refreshes_total{{trigger=\"{trigger}\",outcome=\"{outcome}\"}} {n}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP shoal_postgres_statements_total Statements on the Postgres endpoint, by outcome.\n# TYPE shoal_postgres_statements_total counter"
        );
        for (outcome, n) in &postgres {
            let _ = writeln!(
                out,
                "shoal_postgres_statements_total{{outcome=\"{outcome}\"}} {n}"
            );
        }
        out
    }
}

/// The query engine's column cache, in the text exposition format (nothing when it keeps none).
fn column_cache(stats: Option<shoal_catalog::ColumnCacheStats>) -> String {
    let Some(stats) = stats else {
        return String::new();
    };
    format!(
        "# HELP shoal_column_cache_bytes Bytes of decoded columns the query engine keeps.\n\
         # TYPE shoal_column_cache_bytes gauge\nshoal_column_cache_bytes {}\n\
         # HELP shoal_column_cache_columns Decoded columns the query engine keeps.\n\
         # TYPE shoal_column_cache_columns gauge\nshoal_column_cache_columns {}\n\
         # HELP shoal_column_cache_lookups_total Columns scans looked for in the cache, by outcome.\n\
         # TYPE shoal_column_cache_lookups_total counter\n\
         shoal_column_cache_lookups_total{{outcome=\"hit\"}} {}\n\
         shoal_column_cache_lookups_total{{outcome=\"miss\"}} {}\n",
        stats.bytes, stats.columns, stats.hits, stats.misses
    )
}

fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Times every routed request and counts it under its route pattern (`/api/audiences/{name}`,
/// never the raw path, so names and ids do not multiply the series).
pub async fn track(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let method = request.method().to_string();
    let started = Instant::now();
    let response = next.run(request).await;
    state.metrics.request(
        &method,
        &route,
        response.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    response
}

/// `GET /metrics`.
#[utoipa::path(get, path = "/metrics", tag = "health",
    responses((status = 200, description = "Prometheus text format: requests by route, query \
    times, ingest rows, refresh outcomes", body = String, content_type = "text/plain")))]
pub async fn route(State(state): State<AppState>) -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render() + &column_cache(state.engine.column_cache_stats()),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative_and_counted() {
        let metrics = Metrics::default();
        metrics.request("GET", "/api/tables", 200, 0.003);
        metrics.request("GET", "/api/tables", 200, 0.2);
        metrics.request("GET", "/api/tables", 401, 20.0);
        let text = metrics.render();
        assert!(text.contains(
            "shoal_http_requests_total{method=\"GET\",route=\"/api/tables\",status=\"200\"} 2"
        ));
        assert!(text.contains("route=\"/api/tables\",le=\"0.001\"} 0"));
        assert!(text.contains("route=\"/api/tables\",le=\"0.005\"} 1"));
        assert!(text.contains("route=\"/api/tables\",le=\"0.25\"} 2"));
        assert!(text.contains("route=\"/api/tables\",le=\"10\"} 2"));
        assert!(text.contains("route=\"/api/tables\",le=\"+Inf\"} 3"));
        assert!(text.contains(
            "shoal_http_request_duration_seconds_count{method=\"GET\",route=\"/api/tables\"} 3"
        ));
    }
}
