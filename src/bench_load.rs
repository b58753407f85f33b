//! `shoal bench load`: a bounded load test on loopback. Writers send Segment batches to the
//! tracking API while readers send audience counts, for a fixed time, against a server in
//! this process over real TCP connections. It prints requests per second, p50/p99 latency and
//! errors per kind, then checks that every event the server acknowledged is in the warehouse
//! exactly once.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use shoal_catalog::{Catalog, Role, Warehouse};
use tokio::sync::Mutex;

use crate::bench::{ingest_world, sample_world};
use crate::bench_query::{Client, percentile};
use crate::error::{AppError, AppResult};

/// Messages per tracking batch.
const BATCH: usize = 20;

/// What one kind of request saw.
#[derive(Default)]
struct Tally {
    latencies_ms: Vec<f64>,
    errors: u64,
    first_error: Option<String>,
}

impl Tally {
    fn record(&mut self, started: Instant, outcome: AppResult<()>) {
        self.latencies_ms
            .push(started.elapsed().as_secs_f64() * 1e3);
        if let Err(e) = outcome {
            self.errors += 1;
            self.first_error.get_or_insert_with(|| e.to_string());
        }
    }
}

/// The condition trees readers cycle through: tag-bitmap ones and one that needs a scan.
fn trees() -> Vec<Value> {
    vec![
        json!({"all": [{"field": "gender", "op": "eq", "value": "male"},
                       {"field": "age", "op": "between", "value": [25, 44]}]}),
        json!({"all": [{"event": "view_item", "window": {"last_days": 7}},
                       {"not": {"event": "purchase", "window": {"last_days": 30}}}]}),
        json!({"any": [{"field": "member_level", "op": "in", "value": ["gold", "platinum"]},
                       {"event": "add_to_cart", "window": {"last_days": 3}}]}),
        json!({"all": [{"field": "city", "op": "eq", "value": "上海"},
                       {"orders": "amount", "op": "gt", "value": 100, "platform": "tmall",
                        "window": {"last_days": 30}}]}),
    ]
}

/// Runs the load test: `writers` tracking clients and `readers` count clients for `seconds`.
pub async fn load(
    users: u32,
    seconds: u64,
    writers: usize,
    readers: usize,
    data: Option<PathBuf>,
    json_out: bool,
) -> AppResult<()> {
    let scratch = tempfile::tempdir().map_err(|e| AppError::Internal(e.to_string()))?;
    let data = data.unwrap_or_else(|| scratch.path().join("data"));
    let world = data.join(format!("world-{users}"));
    let wh_path = data.join(format!("load-warehouse-{users}"));
    if wh_path.exists() {
        // Each run starts from the built world, without an earlier run's events.
        std::fs::remove_dir_all(&wh_path).map_err(|e| AppError::Internal(e.to_string()))?;
    }
    sample_world(&world, users, 42, 90).await?;
    let warehouse = Warehouse::open(&format!("file://{}", wh_path.display()))?;
    let catalog = Catalog::open(warehouse).await?;
    eprintln!(
        "ingesting and building the world into {}",
        wh_path.display()
    );
    ingest_world(&catalog, &world).await?;
    let options = shoal_ingest::build::BuildOptions {
        full: false,
        as_of: chrono::NaiveDate::from_ymd_opt(2026, 11, 20),
    };
    shoal_ingest::build::build(&catalog, &options, &mut |_, _, _| {}).await?;
    let events_before = catalog.table("events").await?.row_count().await?;

    let token = crate::tokens::create(&catalog, "load", Role::Analyst, "bench")
        .await?
        .token;
    let write_key = crate::write_keys::create(&catalog, "load").await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| AppError::Internal(e.to_string()))?;
    let address = listener
        .local_addr()
        .map_err(|e| AppError::Internal(e.to_string()))?;
    let mut state = crate::serve::AppState::new(catalog.clone());
    // The test measures the server, not the per-token rate limit.
    state.limiter = Arc::new(crate::rate_limit::RateLimiter::new(0));
    let server = tokio::spawn(async move {
        crate::serve::serve_http(
            listener,
            crate::serve::app(state),
            Duration::from_secs(30),
            std::future::pending(),
        )
        .await;
    });

    eprintln!(
        "{writers} tracking writers ({BATCH} events a batch) and {readers} count readers for \
         {seconds} s on {address}"
    );
    let load_started = Instant::now();
    let deadline = load_started + Duration::from_secs(seconds);
    let acknowledged = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut tasks = Vec::new();
    for writer in 0..writers {
        let acknowledged = acknowledged.clone();
        let authorization = format!("Basic {}", basic(&write_key));
        tasks.push(tokio::spawn(async move {
            let mut tally = Tally::default();
            let mut client = Client::connect(address, authorization).await?;
            let mut batch_no = 0u64;
            while Instant::now() < deadline {
                let ids: Vec<String> = (0..BATCH)
                    .map(|i| format!("load-{writer}-{batch_no}-{i}"))
                    .collect();
                batch_no += 1;
                let batch: Vec<Value> = ids
                    .iter()
                    .enumerate()
                    .map(|(i, id)| {
                        json!({"type": "track", "messageId": id, "event": "view_item",
                               "anonymousId": format!("load-device-{writer}-{i}"),
                               "timestamp": "2026-11-20T08:00:00Z",
                               "properties": {"item_id": "sku-1", "price": 99.5}})
                    })
                    .collect();
                let started = Instant::now();
                let outcome = client.post("/v1/batch", &json!({"batch": batch})).await;
                let ok = outcome.is_ok();
                tally.record(started, outcome.map(|_| ()));
                if ok {
                    acknowledged.lock().await.extend(ids);
                } else {
                    // A failed request may leave the connection unusable.
                    client = Client::connect(address, client.authorization().to_string()).await?;
                }
            }
            AppResult::Ok(("tracking batch", tally))
        }));
    }
    for reader in 0..readers {
        let authorization = format!("Bearer {token}");
        tasks.push(tokio::spawn(async move {
            let mut tally = Tally::default();
            let mut client = Client::connect(address, authorization).await?;
            let trees = trees();
            let mut n = reader;
            while Instant::now() < deadline {
                let tree = &trees[n % trees.len()];
                n += 1;
                let started = Instant::now();
                let outcome = client
                    .post(
                        "/api/query/count",
                        &json!({"conditions": tree, "evaluated_at": "2026-11-20"}),
                    )
                    .await;
                let ok = outcome.is_ok();
                tally.record(started, outcome.map(|_| ()));
                if !ok {
                    client = Client::connect(address, client.authorization().to_string()).await?;
                }
            }
            AppResult::Ok(("count query", tally))
        }));
    }
    let mut tallies: Vec<(&str, Tally)> = Vec::new();
    for task in tasks {
        let (kind, tally) = task
            .await
            .map_err(|e| AppError::Internal(e.to_string()))??;
        match tallies.iter_mut().find(|(k, _)| *k == kind) {
            Some((_, total)) => {
                total.latencies_ms.extend(tally.latencies_ms);
                total.errors += tally.errors;
                if total.first_error.is_none() {
                    total.first_error = tally.first_error;
                }
            }
            None => tallies.push((kind, tally)),
        }
    }
    let elapsed = load_started.elapsed().as_secs_f64();
    server.abort();

    // Every acknowledged event is in the warehouse, once.
    let acknowledged = acknowledged.lock().await.clone();
    let catalog = Catalog::open(Warehouse::open(&format!("file://{}", wh_path.display()))?).await?;
    let engine = shoal_query::Engine::new(Default::default());
    let session = engine.session(&catalog).await?;
    let frame = session
        .user_sql(
            "SELECT event_id FROM events WHERE event_id LIKE 'load-%'",
            Role::Admin,
        )
        .await?;
    let batches = frame
        .collect()
        .await
        .map_err(|e| AppError::Internal(e.to_string()))?;
    let mut stored = Vec::new();
    for batch in &batches {
        let column = arrow::compute::cast(batch.column(0), &arrow::datatypes::DataType::Utf8)
            .map_err(|e| AppError::Internal(e.to_string()))?;
        let strings = column
            .as_any()
            .downcast_ref::<arrow::array::StringArray>()
            .ok_or_else(|| AppError::Internal("event_id is not text".into()))?;
        stored.extend(strings.iter().flatten().map(str::to_string));
    }
    let stored_set: HashSet<&str> = stored.iter().map(String::as_str).collect();
    let missing = acknowledged
        .iter()
        .filter(|id| !stored_set.contains(id.as_str()))
        .count();
    let duplicated = stored.len() - stored_set.len();
    let events_after = catalog.table("events").await?.row_count().await?;

    let mut rows = Vec::new();
    for (kind, tally) in &mut tallies {
        tally.latencies_ms.sort_by(f64::total_cmp);
        let requests = tally.latencies_ms.len();
        rows.push(json!({
            "kind": kind,
            "requests": requests,
            "per_second": requests as f64 / elapsed,
            "p50_ms": percentile(&tally.latencies_ms, 0.5),
            "p99_ms": percentile(&tally.latencies_ms, 0.99),
            "errors": tally.errors,
            "first_error": tally.first_error,
        }));
    }
    let total: usize = tallies.iter().map(|(_, t)| t.latencies_ms.len()).sum();
    let errors: u64 = tallies.iter().map(|(_, t)| t.errors).sum();
    let check = json!({
        "acknowledged_events": acknowledged.len(),
        "stored_events": stored.len(),
        "missing": missing,
        "duplicated": duplicated,
        "events_table_growth": events_after.saturating_sub(events_before),
    });
    if json_out {
        println!(
            "{}",
            json!({"seconds": seconds, "writers": writers, "readers": readers,
                   "requests_per_second": total as f64 / elapsed, "errors": errors,
                   "kinds": rows, "warehouse": check})
        );
    } else {
        println!(
            "load test: {seconds} s, {writers} writers + {readers} readers on loopback, \
             {users} people in the world"
        );
        println!(
            "| kind | requests | req/s | p50 ms | p99 ms | errors |\n|---|---|---|---|---|---|"
        );
        for row in &rows {
            println!(
                "| {} | {} | {:.1} | {:.2} | {:.2} | {} |",
                row["kind"].as_str().unwrap_or_default(),
                row["requests"],
                row["per_second"].as_f64().unwrap_or_default(),
                row["p50_ms"].as_f64().unwrap_or_default(),
                row["p99_ms"].as_f64().unwrap_or_default(),
                row["errors"],
            );
        }
        println!(
            "| all | {total} | {:.1} | | | {errors} |",
            total as f64 / elapsed
        );
        for row in &rows {
            if let Some(e) = row["first_error"].as_str() {
                println!(
                    "first {} error: {e}",
                    row["kind"].as_str().unwrap_or_default()
                );
            }
        }
        println!(
            "acknowledged events {}; in the warehouse {}; missing {missing}; duplicated {duplicated}",
            acknowledged.len(),
            stored.len()
        );
    }
    if missing > 0 || duplicated > 0 {
        return Err(AppError::Internal(format!(
            "{missing} acknowledged events are missing and {duplicated} doubled"
        )));
    }
    Ok(())
}

/// `user:` in base64, as HTTP Basic sends a write key.
fn basic(user: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(format!("{user}:"))
}
