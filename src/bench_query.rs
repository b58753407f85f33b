//! `shoal bench query`: audience counts through the HTTP API, on the bitmap path and on the
//! scan path, next to DuckDB running the equivalent SQL over the same Parquet files (the
//! Delta tables' current files) in the same run. Counts must match; the table shows both.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use serde_json::{Value, json};
use shoal_catalog::{Catalog, Warehouse};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::bench::{in_parts, ingest_world, ingest_world_in_parts, python, sample_world};
use crate::error::{AppError, AppResult};

/// DuckDB over the Delta tables' files: `views` maps a view name to its table folder.
const DUCKDB_SCRIPT: &str = r#"
import json, sys, time, duckdb
from deltalake import DeltaTable
warehouse, queries, runs = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
con = duckdb.connect()
con.execute("SET threads TO 2")
con.execute("SET enable_progress_bar = false")
for name in ("users", "events", "orders"):
    table = DeltaTable(f"{warehouse}/{name}")
    if "deletionVectors" in (table.protocol().reader_features or []):
        # Rows marked deleted stay in their files: DuckDB gets the table's live rows.
        con.register(name, table.to_pyarrow_table())
        continue
    listed = ", ".join("'" + f.replace("file://", "") + "'" for f in table.file_uris())
    con.execute(f"CREATE VIEW {name} AS SELECT * FROM read_parquet([{listed}], hive_partitioning = true)")
out = {}
for name, sql in queries.items():
    count = con.execute(sql).fetchone()[0]
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        con.execute(sql).fetchone()
        times.append((time.perf_counter() - t) * 1e3)
    times.sort()
    out[name] = {"count": count, "p50_ms": times[len(times) // 2]}
print(json.dumps(out))
"#;

/// Evaluation date of every query: the last day of the sample world.
const T: &str = "2026-11-20";
/// `T` ends at this instant (midnight after T in Beijing, UTC).
const T_END: &str = "2026-11-20 16:00:00+00";
/// Starts of the last 3, 7 and 30 days (Beijing days, as UTC instants).
const LAST_3: &str = "2026-11-17 16:00:00+00";
const LAST_7: &str = "2026-11-13 16:00:00+00";
const LAST_30: &str = "2026-10-21 16:00:00+00";

struct Case {
    name: &'static str,
    tree: Value,
    duckdb: String,
}

fn cases() -> Vec<Case> {
    let attributes = json!([
        {"field": "gender", "op": "eq", "value": "male"},
        {"field": "age", "op": "between", "value": [25, 44]},
        {"field": "member_level", "op": "in", "value": ["silver", "gold", "platinum"]},
        {"field": "gmv", "op": "ge", "value": 500}
    ]);
    let attributes_sql = "gender = 'male' AND age BETWEEN 25 AND 44 \
        AND member_level IN ('silver', 'gold', 'platinum') AND gmv >= 500";
    let did = |event: &str, since: &str| {
        format!(
            "user_id IN (SELECT user_id FROM events WHERE event_name = '{event}' \
             AND event_time >= TIMESTAMPTZ '{since}' AND event_time < TIMESTAMPTZ '{T_END}')"
        )
    };
    let did_not = |event: &str, since: &str| {
        format!(
            "user_id NOT IN (SELECT user_id FROM events WHERE event_name = '{event}' \
             AND event_time >= TIMESTAMPTZ '{since}' AND event_time < TIMESTAMPTZ '{T_END}' \
             AND user_id IS NOT NULL)"
        )
    };
    let viewed = json!({"event": "view_item", "window": {"last_days": 7}});
    let no_purchase = json!({"not": {"event": "purchase", "window": {"last_days": 30}}});
    let mut q2 = attributes.as_array().cloned().unwrap_or_default();
    q2.push(viewed.clone());
    let mut q3 = q2.clone();
    q3.push(no_purchase.clone());
    let count = |w: String| format!("SELECT count(*) FROM users WHERE {w}");
    vec![
        Case {
            name: "Q1 attributes",
            tree: json!({"all": attributes}),
            duckdb: count(attributes_sql.to_string()),
        },
        Case {
            name: "Q2 Q1 + view_item 7d",
            tree: json!({"all": q2}),
            duckdb: count(format!("{attributes_sql} AND {}", did("view_item", LAST_7))),
        },
        Case {
            name: "Q3 Q2 + no purchase 30d",
            tree: json!({"all": q3}),
            duckdb: count(format!(
                "{attributes_sql} AND {} AND {}",
                did("view_item", LAST_7),
                did_not("purchase", LAST_30)
            )),
        },
        Case {
            name: "Q4 5 conditions",
            tree: json!({"all": [
                {"field": "gender", "op": "eq", "value": "female"},
                {"field": "age", "op": "lt", "value": 35},
                {"field": "has_job", "op": "eq", "value": true},
                viewed,
                {"not": {"event": "add_to_cart", "window": {"last_days": 3}}}
            ]}),
            duckdb: count(format!(
                "gender = 'female' AND age < 35 AND has_job AND {} AND {}",
                did("view_item", LAST_7),
                did_not("add_to_cart", LAST_3)
            )),
        },
        Case {
            name: "Q5 OR groups + cart 3d",
            tree: json!({"any": [
                {"all": [{"field": "gender", "op": "eq", "value": "female"},
                         {"field": "age", "op": "lt", "value": 25}]},
                {"all": [{"field": "member_level", "op": "in", "value": ["gold", "platinum"]},
                         {"field": "follows_official_account", "op": "eq", "value": true},
                         {"event": "add_to_cart", "window": {"last_days": 3}}]}
            ]}),
            duckdb: count(format!(
                "(gender = 'female' AND age < 25) OR (member_level IN ('gold', 'platinum') \
                 AND follows_official_account AND {})",
                did("add_to_cart", LAST_3)
            )),
        },
        Case {
            name: "Q6 city + tmall spend 30d (scan)",
            tree: json!({"all": [
                {"field": "city", "op": "in", "value": ["上海", "杭州", "北京"]},
                {"orders": "amount", "op": "gt", "value": 300, "platform": "tmall",
                 "window": {"last_days": 30}}
            ]}),
            duckdb: count(format!(
                "city IN ('上海', '杭州', '北京') AND user_id IN (SELECT user_id FROM orders \
                 WHERE platform = 'tmall' AND status IN ('paid', 'shipped', 'completed', 'refunded') \
                 AND created_at >= TIMESTAMPTZ '{LAST_30}' AND created_at < TIMESTAMPTZ '{T_END}' \
                 GROUP BY user_id HAVING sum(amount - coalesce(refund_amount, 0)) > 300)"
            )),
        },
    ]
}

/// One keep-alive HTTP/1.1 connection.
/// A keep-alive HTTP/1.1 client on one connection, as lean as the benches need: the client's
/// own costs stay out of the server's figures.
pub(crate) struct Client {
    stream: TcpStream,
    host: String,
    authorization: String,
}

impl Client {
    /// Connects to `address`; every request sends `authorization` (e.g. `Bearer TOKEN`).
    pub(crate) async fn connect(
        address: std::net::SocketAddr,
        authorization: String,
    ) -> AppResult<Client> {
        let stream = TcpStream::connect(address)
            .await
            .map_err(|e| AppError::Internal(format!("bench client: {e}")))?;
        let _ = stream.set_nodelay(true);
        Ok(Client {
            stream,
            host: address.to_string(),
            authorization,
        })
    }

    pub(crate) fn authorization(&self) -> &str {
        &self.authorization
    }

    /// POSTs `body` as JSON; anything but a 200 is an error carrying the status and body.
    pub(crate) async fn post(&mut self, path: &str, body: &Value) -> AppResult<Value> {
        let body = body.to_string();
        let request = format!(
            "POST {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.host,
            self.authorization,
            body.len()
        );
        let fail = |e: std::io::Error| AppError::Internal(format!("bench client: {e}"));
        self.stream
            .write_all(request.as_bytes())
            .await
            .map_err(fail)?;
        let mut buffer = Vec::new();
        let mut chunk = [0u8; 8192];
        loop {
            let n = self.stream.read(&mut chunk).await.map_err(fail)?;
            if n == 0 {
                return Err(AppError::Internal("server closed the connection".into()));
            }
            buffer.extend_from_slice(&chunk[..n]);
            let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") else {
                continue;
            };
            let head = String::from_utf8_lossy(&buffer[..end]).to_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .ok_or_else(|| AppError::Internal(format!("no content-length in {head}")))?;
            while buffer.len() < end + 4 + length {
                let n = self.stream.read(&mut chunk).await.map_err(fail)?;
                if n == 0 {
                    return Err(AppError::Internal("short response".into()));
                }
                buffer.extend_from_slice(&chunk[..n]);
            }
            let body = &buffer[end + 4..end + 4 + length];
            if !head.starts_with("http/1.1 200") {
                return Err(AppError::Internal(format!(
                    "{}: {}",
                    head.lines().next().unwrap_or_default(),
                    String::from_utf8_lossy(body)
                )));
            }
            return serde_json::from_slice(body)
                .map_err(|e| AppError::Internal(format!("response JSON: {e}")));
        }
    }
}

pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Times `runs` counts of `tree` on `path`; returns (count, answer path, p50 ms, p99 ms).
async fn time_count(
    client: &mut Client,
    tree: &Value,
    path: &str,
    runs: usize,
) -> AppResult<(u64, String, f64, f64)> {
    let body = json!({"conditions": tree, "evaluated_at": T, "path": path});
    let first = client.post("/api/query/count", &body).await?;
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let started = Instant::now();
        client.post("/api/query/count", &body).await?;
        times.push(started.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    Ok((
        first["count"].as_u64().unwrap_or_default(),
        first["path"].as_str().unwrap_or_default().to_string(),
        percentile(&times, 0.5),
        percentile(&times, 0.99),
    ))
}

/// Runs the query benchmark on a sample world of `users` people.
pub async fn query(
    users: u32,
    data: Option<PathBuf>,
    runs: usize,
    json_out: bool,
) -> AppResult<()> {
    let scratch = tempfile::tempdir().map_err(|e| AppError::Internal(e.to_string()))?;
    let data = data.unwrap_or_else(|| scratch.path().join("data"));
    let world = data.join(format!("world-{users}"));
    let wh_path = data.join(format!("warehouse-{users}"));
    if !in_parts(users) {
        sample_world(&world, users, 42, 90).await?;
    }
    let warehouse = Warehouse::open(&format!("file://{}", wh_path.display()))?;
    let catalog = Catalog::open(warehouse).await?;
    if catalog.table("users").await?.row_count().await? == 0 {
        eprintln!(
            "ingesting and building the world into {}",
            wh_path.display()
        );
        if !in_parts(users) {
            ingest_world(&catalog, &world).await?;
        } else {
            let done = data.join(format!("warehouse-{users}.parts-ingested"));
            ingest_world_in_parts(&catalog, &data, &done, users, 42, 90).await?;
        }
        let options = shoal_ingest::build::BuildOptions {
            full: false,
            as_of: chrono::NaiveDate::from_ymd_opt(2026, 11, 20),
        };
        shoal_ingest::build::build(&catalog, &options, &mut |_, _, _| {}).await?;
    }
    let events = catalog.table("events").await?.row_count().await?;
    let people = catalog.table("users").await?.row_count().await?;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| AppError::Internal(e.to_string()))?;
    let address = listener
        .local_addr()
        .map_err(|e| AppError::Internal(e.to_string()))?;
    let token = crate::tokens::create(&catalog, "bench", shoal_catalog::Role::Analyst, "bench")
        .await?
        .token;
    let mut state = crate::serve::AppState::new(catalog);
    // The bench measures queries, not the per-token rate limit.
    state.limiter = std::sync::Arc::new(crate::rate_limit::RateLimiter::new(0));
    let server = tokio::spawn(async move {
        crate::serve::serve_http(
            listener,
            crate::serve::app(state),
            std::time::Duration::from_secs(30),
            std::future::pending(),
        )
        .await;
    });
    let mut client = Client::connect(address, format!("Bearer {token}")).await?;

    let cases = cases();
    let mut rows = Vec::new();
    for case in &cases {
        let auto = time_count(&mut client, &case.tree, "auto", runs).await?;
        let scan = time_count(&mut client, &case.tree, "scan", runs.min(10)).await?;
        rows.push((case, auto, scan));
    }
    server.abort();

    let queries: serde_json::Map<String, Value> = cases
        .iter()
        .map(|c| (c.name.to_string(), Value::String(c.duckdb.clone())))
        .collect();
    let duck = Command::new(python())
        .arg("-c")
        .arg(DUCKDB_SCRIPT)
        .arg(&wh_path)
        .arg(Value::Object(queries).to_string())
        .arg(runs.min(10).to_string())
        .output();
    let duckdb: Option<Value> = match duck {
        Ok(out) if out.status.success() => {
            // The answer is the last line; anything before it is the engine talking.
            let text = String::from_utf8_lossy(&out.stdout);
            let last = text.lines().last().unwrap_or_default();
            match serde_json::from_str(last) {
                Ok(answer) => Some(answer),
                Err(e) => {
                    eprintln!("duckdb side answered no JSON ({e}): {}", text.trim_end());
                    None
                }
            }
        }
        Ok(out) => {
            eprintln!(
                "duckdb side failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            None
        }
        Err(e) => {
            eprintln!("duckdb side could not start: {e}");
            None
        }
    };

    let mut results = Vec::new();
    for (case, auto, scan) in &rows {
        let theirs = duckdb.as_ref().map(|d| &d[case.name]);
        results.push(json!({
            "query": case.name,
            "path": auto.1,
            "shoal_count": auto.0,
            "shoal_p50_ms": auto.2,
            "shoal_p99_ms": auto.3,
            "scan_count": scan.0,
            "scan_p50_ms": scan.2,
            "duckdb_count": theirs.map(|t| t["count"].clone()),
            "duckdb_p50_ms": theirs.map(|t| t["p50_ms"].clone()),
        }));
    }
    if json_out {
        println!(
            "{}",
            json!({"users": people, "events": events, "runs": runs, "queries": results})
        );
        return Ok(());
    }
    println!(
        "query benchmark: {people} users, {events} events; counts through POST /api/query/count (p50 of {runs} runs), DuckDB over the same Parquet files"
    );
    println!(
        "| query | Shoal path | Shoal p50 ms | Shoal p99 ms | scan p50 ms | DuckDB p50 ms | DuckDB ÷ Shoal | DuckDB ÷ scan | Shoal count | scan count | DuckDB count |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for r in &results {
        let duck_ms = r["duckdb_p50_ms"].as_f64();
        let ratio = |ours: &Value| match (duck_ms, ours.as_f64()) {
            (Some(d), Some(o)) if o > 0.0 => format!("{:.1}×", d / o),
            _ => "–".to_string(),
        };
        println!(
            "| {} | {} | {:.2} | {:.2} | {:.1} | {} | {} | {} | {} | {} | {} |",
            r["query"].as_str().unwrap_or_default(),
            r["path"].as_str().unwrap_or_default(),
            r["shoal_p50_ms"].as_f64().unwrap_or(f64::NAN),
            r["shoal_p99_ms"].as_f64().unwrap_or(f64::NAN),
            r["scan_p50_ms"].as_f64().unwrap_or(f64::NAN),
            duck_ms.map_or("–".to_string(), |d| format!("{d:.1}")),
            ratio(&r["shoal_p50_ms"]),
            ratio(&r["scan_p50_ms"]),
            r["shoal_count"],
            r["scan_count"],
            r["duckdb_count"],
        );
    }
    Ok(())
}
