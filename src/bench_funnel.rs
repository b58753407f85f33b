//! `shoal bench funnel`: a 4-step, 7-day funnel over N synthetic events (all people, and
//! restricted to an audience pack of ~10% of them), next to ClickHouse's `windowFunnel`
//! (chDB) on the same Parquet files in the same run. Per-step counts must match; the table
//! shows both.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{ArrayRef, Date32Array, Int64Array, StringArray, TimestampMicrosecondArray};
use chrono::NaiveDate;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use shoal_audience::pack::{self, Actor, NewPack, SourceField};
use shoal_catalog::{Catalog, CommitNote, Role, Warehouse};
use shoal_query::Engine;
use shoal_reports::funnel::{self, FunnelSpec, Step};

use crate::bench::python;
use crate::bench_audience::batch;
use crate::error::{AppError, AppResult};

/// The funnel's steps.
const STEPS: [&str; 4] = ["view_item", "add_to_cart", "begin_checkout", "purchase"];
/// Every event name with its share of events.
const NAMES: [(&str, f64); 6] = [
    ("page_view", 0.30),
    ("view_item", 0.35),
    ("add_to_cart", 0.15),
    ("begin_checkout", 0.08),
    ("purchase", 0.05),
    ("search", 0.07),
];
/// Days of events, ending on `LAST_DAY`.
const DAYS: i64 = 90;
const LAST_DAY: (i32, u32, u32) = (2026, 11, 20);
const WINDOW_US: i64 = 7 * 86_400 * 1_000_000;

fn fail(e: impl std::fmt::Display) -> AppError {
    AppError::Internal(e.to_string())
}

/// chDB's windowFunnel over the events table's files, all people and the pack's members.
const CHDB_SCRIPT: &str = r#"
import glob, json, sys, time, chdb
from chdb import session
from deltalake import DeltaTable
warehouse, steps, window, runs = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
def current(table, pattern):
    # The tables are written once, so their folders hold exactly the current files.
    delta = DeltaTable(f"{warehouse}/{table}")
    if "deletionVectors" in (delta.protocol().reader_features or []):
        raise SystemExit(f"{table}: rows marked deleted would be read from its files")
    files = {f.replace("file://", "") for f in delta.file_uris()}
    found = set(glob.glob(f"{warehouse}/{table}/{pattern}"))
    if files != found:
        raise SystemExit(f"{table}: the folder holds other files than the table's")
    return f"{warehouse}/{table}/{pattern}"
files = current("events", "event_date=*/*.parquet")
users = current("users", "*.parquet")
s = session.Session()
s.query("SET max_threads = 2")
conds = ", ".join(f"event_name = '{x}'" for x in steps)
names = ", ".join(f"'{x}'" for x in steps)
counts = ", ".join(f"countIf(level >= {k})" for k in range(1, len(steps) + 1))
def query(extra):
    return (f"SELECT {counts} FROM (SELECT user_id, windowFunnel({window})(toUInt64(toUnixTimestamp64Micro(event_time)), {conds}) AS level "
            f"FROM file('{files}', Parquet) WHERE event_name IN ({names}){extra} GROUP BY user_id)")
out = {}
member = f" AND user_id IN (SELECT user_id FROM file('{users}', Parquet) WHERE gender = 'female')"
for name, extra in (("all", ""), ("audience", member)):
    q = query(extra)
    result = str(s.query(q, "CSV")).strip()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        s.query(q, "CSV")
        times.append((time.perf_counter() - t) * 1e3)
    times.sort()
    out[name] = {"reached": [int(x) for x in result.split(",")], "p50_ms": times[len(times) // 2]}
print(json.dumps(out))
"#;

/// Writes `users` people (10% of them women: the pack) and `events` events over `DAYS` days,
/// sorted by person and time within each day as a build leaves them.
async fn synthetic_events(catalog: &Catalog, events: u64, users: u32) -> AppResult<()> {
    let last = NaiveDate::from_ymd_opt(LAST_DAY.0, LAST_DAY.1, LAST_DAY.2)
        .ok_or_else(|| fail("last day"))?;
    let epoch = NaiveDate::from_ymd_opt(1970, 1, 1).ok_or_else(|| fail("epoch"))?;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
    let now = chrono::Utc::now().timestamp_micros();
    let mut people = catalog.table("users").await?;
    let schema = people.schema()?;
    let chunk = 1_000_000u32;
    let mut batches = Vec::new();
    for start in (0..users).step_by(chunk as usize) {
        let end = (start + chunk).min(users);
        let n = (end - start) as usize;
        let marks: Vec<&str> = (start..end)
            .map(|u| if u % 10 == 3 { "female" } else { "male" })
            .collect();
        batches.push(batch(
            &schema,
            n,
            HashMap::from([
                (
                    "user_id",
                    Arc::new(Int64Array::from_iter_values((start..end).map(i64::from))) as ArrayRef,
                ),
                ("gender", Arc::new(StringArray::from(marks)) as ArrayRef),
                (
                    "updated_at",
                    Arc::new(TimestampMicrosecondArray::from(vec![now; n]).with_timezone("UTC"))
                        as ArrayRef,
                ),
            ]),
        )?);
    }
    people
        .append(batches, CommitNote::new("author", "bench"))
        .await?;

    let mut table = catalog.table("events").await?;
    let schema = table.schema()?;
    let per_day = events / DAYS as u64;
    let days_per_commit = 5;
    let mut pending = Vec::new();
    for d in 0..DAYS {
        let day = last - chrono::Duration::days(DAYS - 1 - d);
        let day_number = (day - epoch).num_days() as i32;
        // Midnight in Beijing, as UTC µs.
        let day_start = (day_number as i64 * 86_400 - 8 * 3600) * 1_000_000;
        let mut rows: Vec<(u32, i64, u8)> = (0..per_day)
            .map(|_| {
                let user = rng.random_range(0..users);
                let time = day_start + rng.random_range(0..86_400_000_000i64);
                let x: f64 = rng.random();
                let mut acc = 0.0;
                let mut name = NAMES.len() - 1;
                for (i, (_, share)) in NAMES.iter().enumerate() {
                    acc += share;
                    if x < acc {
                        name = i;
                        break;
                    }
                }
                (user, time, name as u8)
            })
            .collect();
        rows.sort_unstable();
        let n = rows.len();
        pending.push(batch(
            &schema,
            n,
            HashMap::from([
                (
                    "event_id",
                    Arc::new(StringArray::from_iter_values(
                        (0..n).map(|i| format!("{d}-{i}")),
                    )) as ArrayRef,
                ),
                (
                    "event_name",
                    Arc::new(StringArray::from_iter_values(
                        rows.iter().map(|r| NAMES[r.2 as usize].0),
                    )) as ArrayRef,
                ),
                (
                    "event_type",
                    Arc::new(StringArray::from(vec!["track"; n])) as ArrayRef,
                ),
                (
                    "event_time",
                    Arc::new(
                        TimestampMicrosecondArray::from_iter_values(rows.iter().map(|r| r.1))
                            .with_timezone("UTC"),
                    ) as ArrayRef,
                ),
                (
                    "received_at",
                    Arc::new(
                        TimestampMicrosecondArray::from_iter_values(rows.iter().map(|r| r.1))
                            .with_timezone("UTC"),
                    ) as ArrayRef,
                ),
                (
                    "source",
                    Arc::new(StringArray::from(vec!["bench"; n])) as ArrayRef,
                ),
                (
                    "event_date",
                    Arc::new(Date32Array::from(vec![day_number; n])) as ArrayRef,
                ),
                (
                    "user_id",
                    Arc::new(Int64Array::from_iter_values(
                        rows.iter().map(|r| i64::from(r.0)),
                    )) as ArrayRef,
                ),
            ]),
        )?);
        if pending.len() == days_per_commit || d == DAYS - 1 {
            eprintln!("  events to {day}");
            table
                .append(
                    std::mem::take(&mut pending),
                    CommitNote::new("author", "bench"),
                )
                .await?;
        }
    }
    Ok(())
}

fn p50(mut times: Vec<f64>) -> f64 {
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

/// Runs the benchmark and prints a table (or one JSON object).
pub async fn funnel(
    events: u64,
    users: u32,
    runs: usize,
    data: Option<PathBuf>,
    json_out: bool,
) -> AppResult<()> {
    let scratch = tempfile::tempdir().map_err(fail)?;
    let root = data.unwrap_or_else(|| scratch.path().to_path_buf());
    let wh = root.join(format!("funnel-warehouse-{events}-{users}"));
    let catalog = Catalog::open(Warehouse::open(&format!("file://{}", wh.display()))?).await?;
    if catalog.table("events").await?.row_count().await? == 0 {
        eprintln!(
            "writing {events} events of {users} people into {}",
            wh.display()
        );
        synthetic_events(&catalog, events, users).await?;
    }
    // A funnel over every person holds their step events: room for 200M events.
    let engine = Engine::new(shoal_query::Limits {
        memory_bytes: 16 << 30,
        timeout: std::time::Duration::from_secs(900),
        column_cache_bytes: 0,
    });
    let me = Actor {
        id: "bench".into(),
        role: Role::Admin,
    };
    let pack_name = "bench_tenth";
    if shoal_audience::store::pack(&catalog, pack_name)
        .await?
        .is_none()
    {
        let request = NewPack {
            name: pack_name.into(),
            description: None,
            mode: None,
            schedule: None,
            time_zone: None,
            evaluated_at: None,
            source: SourceField {
                conditions: Some(json!({"field": "gender", "op": "eq", "value": "female"})),
                ..SourceField::default()
            },
        };
        pack::create(&engine, &catalog, request, None, &me).await?;
    }
    let last = NaiveDate::from_ymd_opt(LAST_DAY.0, LAST_DAY.1, LAST_DAY.2)
        .ok_or_else(|| fail("last day"))?;
    let spec = |audience: Option<&str>| FunnelSpec {
        steps: STEPS
            .iter()
            .map(|s| Step {
                event: s.to_string(),
                filters: Vec::new(),
            })
            .collect(),
        window: "7d".into(),
        mode: Default::default(),
        from: Some(last - chrono::Duration::days(DAYS - 1)),
        to: Some(last),
        audience: audience.map(str::to_string),
        exclude: Vec::new(),
        breakdown: None,
    };
    let mut ours = serde_json::Map::new();
    for (name, audience) in [("all", None), ("audience", Some(pack_name))] {
        let spec = spec(audience);
        let mut times = Vec::new();
        let mut reached = Vec::new();
        for i in 0..=runs {
            let session = engine.session(&catalog).await?;
            let start = Instant::now();
            let result = funnel::run(&session, &spec, Role::Admin, Some(last)).await?;
            if i > 0 {
                times.push(start.elapsed().as_secs_f64() * 1e3);
            }
            reached = result
                .steps
                .unwrap_or_default()
                .iter()
                .map(|s| s.users)
                .collect();
        }
        ours.insert(
            name.into(),
            json!({"reached": reached, "p50_ms": p50(times)}),
        );
    }
    eprintln!("running chDB's windowFunnel on the same files");
    let out = Command::new(python())
        .arg("-c")
        .arg(CHDB_SCRIPT)
        .arg(&wh)
        .arg(json!(STEPS).to_string())
        .arg(WINDOW_US.to_string())
        .arg(runs.to_string())
        .output()
        .map_err(fail)?;
    let theirs: Value = if out.status.success() {
        serde_json::from_slice(&out.stdout).map_err(fail)?
    } else {
        json!({"error": String::from_utf8_lossy(&out.stderr).trim().to_string()})
    };
    let report = json!({
        "events": events,
        "users": users,
        "steps": STEPS,
        "window": "7d",
        "shoal": ours,
        "chdb": theirs,
    });
    if json_out {
        println!("{report}");
        return Ok(());
    }
    println!(
        "funnel {} over {events} events of {users} people, window 7d",
        STEPS.join(" → ")
    );
    println!(
        "{:<10} {:>12} {:>12} {:>8}  {:<36} {:<36}",
        "people", "shoal ms", "chdb ms", "× chdb", "shoal per step", "chdb per step"
    );
    for name in ["all", "audience"] {
        let s = &report["shoal"][name];
        let c = &report["chdb"][name];
        let (sm, cm) = (s["p50_ms"].as_f64(), c["p50_ms"].as_f64());
        let ratio = match (sm, cm) {
            (Some(s), Some(c)) if s > 0.0 => format!("{:.2}", c / s),
            _ => "-".into(),
        };
        println!(
            "{:<10} {:>12} {:>12} {:>8}  {:<36} {:<36}{}",
            if name == "all" { "all" } else { "10% pack" },
            sm.map_or("-".into(), |v| format!("{v:.0}")),
            cm.map_or("-".into(), |v| format!("{v:.0}")),
            ratio,
            s["reached"].to_string(),
            c["reached"].to_string(),
            if c["reached"].is_array() && s["reached"] != c["reached"] {
                "  MISMATCH"
            } else {
                ""
            }
        );
    }
    if let (Some(all), Some(pack)) = (
        report["shoal"]["all"]["p50_ms"].as_f64(),
        report["shoal"]["audience"]["p50_ms"].as_f64(),
    ) {
        println!(
            "audience restriction: {:.1}× faster than all people",
            all / pack
        );
    }
    if let Some(error) = report["chdb"]["error"].as_str() {
        println!("chdb failed: {error}");
    }
    Ok(())
}
