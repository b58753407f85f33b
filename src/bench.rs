//! `shoal bench ingest`: rows/s of JSON lines → clean → dedup → Delta commit, next to DuckDB
//! doing read_json → filter → dedup → Parquet on the same file in the same run.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use serde_json::json;
use shoal_catalog::{Catalog, Warehouse};
use shoal_ingest::sample::{SampleOptions, write_sample};
use shoal_ingest::{SourceKind, ingest_files};

use crate::error::{AppError, AppResult};

/// The DuckDB side: same file, same cleaning rules as far as SQL expresses them.
const DUCKDB_SCRIPT: &str = r#"
import sys, time, duckdb
src, out = sys.argv[1], sys.argv[2]
con = duckdb.connect()
con.execute("SET threads TO 2")
con.execute("SET enable_progress_bar = false")
query = f"""COPY (
  SELECT DISTINCT ON (messageId) messageId AS event_id, coalesce(event, type) AS event_name, type,
         ts AS event_time, anonymousId AS anonymous_id, userId AS login_id,
         json_extract_string(properties, '$.item_id') AS item_id,
         json_extract_string(properties, '$.category') AS category,
         TRY_CAST(json_extract(properties, '$.price') AS DECIMAL(18,2)) AS price,
         TRY_CAST(json_extract(properties, '$.revenue') AS DECIMAL(18,2)) AS revenue,
         CAST(properties AS VARCHAR) AS properties
  FROM (SELECT *, TRY_CAST(timestamp AS TIMESTAMPTZ) AS ts
        FROM read_json('{src}', format='newline_delimited', ignore_errors=true,
             columns={{'type':'VARCHAR','messageId':'VARCHAR','anonymousId':'VARCHAR','userId':'VARCHAR',
                       'event':'VARCHAR','timestamp':'VARCHAR','properties':'JSON','traits':'JSON'}}))
  WHERE ts >= TIMESTAMPTZ '2000-01-01' AND ts < now() + INTERVAL 1 DAY
    AND (anonymousId IS NOT NULL OR userId IS NOT NULL)
    AND (type <> 'track' OR event IS NOT NULL)
    AND coalesce(TRY_CAST(json_extract(properties, '$.revenue') AS DOUBLE), 0) >= 0
    AND (json_extract_string(traits, '$.phone') IS NULL
         OR regexp_full_match(regexp_replace(json_extract_string(traits, '$.phone'), '[ +-]', '', 'g'), '(86)?1[3-9][0-9]{{9}}'))
) TO '{out}' (FORMAT parquet, COMPRESSION zstd)"""
t = time.perf_counter()
con.execute(query)
elapsed = time.perf_counter() - t
rows = con.execute(f"SELECT count(*) FROM '{out}'").fetchone()[0]
print(elapsed, rows)
"#;

fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

pub(crate) fn python() -> PathBuf {
    std::env::var_os("SHOAL_BENCH_PYTHON")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .map(|h| Path::new(&h).join(".cache/shoal/venv/bin/python"))
                .filter(|p| p.is_file())
        })
        .unwrap_or_else(|| PathBuf::from("python3"))
}

/// Runs the ingest benchmark on about `events` events and prints a table (or JSON).
pub async fn ingest(events: u64, data: Option<PathBuf>, json_out: bool) -> AppResult<()> {
    let scratch = tempfile::tempdir().map_err(|e| AppError::Internal(e.to_string()))?;
    let data = data.unwrap_or_else(|| scratch.path().join("data"));
    let file = data.join("events.jsonl");
    if !file.is_file() {
        // The sample world averages about 19 messages per person.
        let users = u32::try_from((events / 19).max(1)).unwrap_or(u32::MAX);
        eprintln!(
            "writing a sample world of {users} people to {}",
            data.display()
        );
        let options = SampleOptions {
            users,
            seed: 42,
            end: chrono::NaiveDate::from_ymd_opt(2026, 11, 20).expect("a valid date"),
            days: 90,
            first: 0,
        };
        tokio::task::spawn_blocking({
            let data = data.clone();
            move || write_sample(&data, &options, &mut |_, _, _| {})
        })
        .await
        .map_err(|e| AppError::Internal(e.to_string()))??;
    }
    let bytes = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);

    let warehouse = Warehouse::open(&format!("file://{}", scratch.path().join("wh").display()))?;
    let catalog = Catalog::open(warehouse).await?;
    read_through(&file)?;
    let started = Instant::now();
    let report = ingest_files(
        &catalog,
        SourceKind::Segment,
        &[file.as_path()],
        &mut |_| {},
    )
    .await?;
    let shoal_s = started.elapsed().as_secs_f64();
    let received = report.counts.received;

    let out = scratch.path().join("duckdb.parquet");
    read_through(&file)?;
    let duck = Command::new(python())
        .arg("-c")
        .arg(DUCKDB_SCRIPT)
        .arg(&file)
        .arg(&out)
        .output();
    let duckdb = match duck {
        Ok(o) => {
            let text = String::from_utf8_lossy(&o.stdout);
            let last = text.lines().last().unwrap_or_default();
            let mut parts = last.split_whitespace();
            let secs: Option<f64> = parts.next().and_then(|s| s.parse().ok());
            let rows: Option<u64> = parts.next().and_then(|s| s.parse().ok());
            let measured = secs.zip(rows).filter(|_| o.status.success());
            if measured.is_none() {
                let stderr = String::from_utf8_lossy(&o.stderr);
                eprintln!(
                    "DuckDB not measured ({}): {}",
                    o.status,
                    stderr.lines().last().unwrap_or("no output")
                );
            }
            measured
        }
        Err(e) => {
            eprintln!("DuckDB not measured: {e}");
            None
        }
    };
    let result = json!({
        "events": received,
        "bytes": bytes,
        "shoal": {"seconds": shoal_s, "rows_per_s": received as f64 / shoal_s, "landed": report.counts.landed,
                  "quarantined": report.counts.quarantined, "duplicates": report.counts.duplicates,
                  "peak_rss_mib": peak_rss_mib()},
        "duckdb": duckdb.map(|(s, rows)| json!({"seconds": s, "rows_per_s": received as f64 / s, "rows_out": rows})),
    });
    if json_out {
        println!("{result}");
    } else {
        println!(
            "ingest benchmark: {received} Segment messages, {:.0} MB of JSON lines (read once before each engine's run)",
            bytes as f64 / 1e6
        );
        println!(
            "{:<8} {:>9} {:>12} {:>10}  what",
            "engine", "seconds", "rows/s", "rows out"
        );
        println!(
            "{:<8} {:>9.2} {:>12.0} {:>10}  clean + dedup + quarantine + Delta commit (peak RSS {:.0} MiB)",
            "shoal",
            shoal_s,
            received as f64 / shoal_s,
            report.counts.landed,
            peak_rss_mib().unwrap_or(0.0)
        );
        match duckdb {
            Some((s, rows)) => println!(
                "{:<8} {:>9.2} {:>12.0} {:>10}  read_json + filter + dedup + Parquet (zstd)",
                "duckdb",
                s,
                received as f64 / s,
                rows
            ),
            None => println!(
                "duckdb   not measured (the reason is above; SHOAL_BENCH_PYTHON picks the Python)"
            ),
        }
    }
    Ok(())
}

/// Reads `file` once, untimed, before each engine's run: both then start with it in the
/// page cache as far as memory allows, rather than DuckDB finding it left there by Shoal's
/// run and Shoal finding what the last DuckDB run left of it.
fn read_through(file: &Path) -> AppResult<()> {
    let failed = |e: std::io::Error| AppError::Internal(format!("reading {}: {e}", file.display()));
    let mut reader = std::fs::File::open(file).map_err(failed)?;
    std::io::copy(&mut reader, &mut std::io::sink()).map_err(failed)?;
    Ok(())
}

/// `shoal bench identity`: the identity merge core on a synthetic graph of `links` links
/// (four per person: a star from each person's strongest identity to four others, with a
/// shared shop tablet per 2,000 people that the caps must keep from fusing them).
pub fn identity(links: u64, json: bool) -> AppResult<()> {
    use shoal_ingest::identity::{Graph, Key, Link, Outcome, TypeRule};

    let people = (links / 4).max(1);
    let rules = vec![
        TypeRule::new("login_id", 1),
        TypeRule::new("phone", 5),
        TypeRule::new("anonymous_id", 20),
    ];
    // Identities as text, formatted and hashed as a run does, each core spelling the
    // identities of its range of people.
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    let per = people.div_ceil(threads as u64).max(1) as usize;
    let start = Instant::now();
    let mut graph = Graph::new(rules);
    graph.reserve((people * 5) as usize);
    // Every identity with its (type, key), people after people: centre, then four others.
    let mut kinds = vec![0u8; (people * 5) as usize];
    let mut keys: Vec<Key> = vec![0; (people * 5) as usize];
    std::thread::scope(|scope| {
        for (t, (kinds, keys)) in kinds
            .chunks_mut(per * 5)
            .zip(keys.chunks_mut(per * 5))
            .enumerate()
        {
            scope.spawn(move || spell_identities((t * per) as u64, kinds, keys));
        }
    });
    let spelled = start.elapsed().as_secs_f64();
    let nodes = graph.nodes(&kinds, &keys);
    let hashed = start.elapsed().as_secs_f64();
    // Each core draws and sorts the links of its people; the union-find reads them merged.
    let runs: Vec<Vec<Link>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..people as usize)
            .step_by(per)
            .map(|first| {
                let (kinds, keys, nodes) = (&kinds, &keys, &nodes);
                scope.spawn(move || {
                    let last = (first + per).min(people as usize);
                    let mut run = Vec::with_capacity((last - first) * 4);
                    for p in first..last {
                        let at = (p as u64 * 7919 % 1_000_000) as i64;
                        let c = p * 5;
                        let centre = (kinds[c], keys[c], nodes[c]);
                        for k in 1..=4 {
                            let other = (kinds[c + k], keys[c + k], nodes[c + k]);
                            run.push(Link::new(at + k as i64, centre, other));
                        }
                    }
                    run.sort_unstable();
                    run
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    });
    let sorted = start.elapsed().as_secs_f64();
    let (mut joined, mut refused, mut links) = (0u64, 0u64, 0usize);
    graph.link_each(
        shoal_ingest::identity::merged(&runs),
        |l| (l.a, l.b),
        |graph, l| {
            links += 1;
            match graph.link(l.a, l.b) {
                Outcome::Joined => joined += 1,
                Outcome::Refused(_) => refused += 1,
                Outcome::Already => {}
            }
        },
    );
    let linked = start.elapsed().as_secs_f64();
    let resolution = graph.finish();
    let total = start.elapsed().as_secs_f64();
    let persons = resolution.next_user - 1;
    let n = links as f64;
    let rss = peak_rss_mib();
    if json {
        println!(
            "{}",
            json!({
                "links": links, "identities": graph.len(), "people": persons,
                "joined": joined, "refused": refused, "seconds": total,
                "links_per_second": n / total, "spell_seconds": spelled,
                "index_seconds": hashed - spelled, "hash_seconds": hashed,
                "sort_seconds": sorted - hashed, "union_seconds": total - sorted,
                "link_seconds": linked - sorted, "finish_seconds": total - linked,
                "peak_rss_mib": rss,
            })
        );
    } else {
        println!(
            "identity merge: {links} links, {} identities → {persons} people",
            graph.len()
        );
        println!("| step | seconds |");
        println!("|---|---|");
        println!("| format + hash identities | {spelled:.2} |");
        println!(
            "| index identities (key → node) | {:.2} |",
            hashed - spelled
        );
        println!("| draw + sort links | {:.2} |", sorted - hashed);
        println!("| union-find with caps + ids | {:.2} |", total - sorted);
        println!("| … link in order | {:.2} |", linked - sorted);
        println!("| … number the people | {:.2} |", total - linked);
        println!(
            "| **total** | **{total:.2}** ({:.2} M links/s; {joined} joined, {refused} refused by caps) |",
            n / total / 1e6
        );
        println!("peak RSS {:.0} MiB", rss.unwrap_or(0.0));
    }
    Ok(())
}

/// Spells and hashes the five identities of each person from `first` on into `kinds` and
/// `keys`: a centre (a login id for 13 in 20 people, a phone for 5, a device for 2) and four
/// devices, the fourth a shop tablet shared by every 2,000th person.
fn spell_identities(first: u64, kinds: &mut [u8], keys: &mut [shoal_ingest::identity::Key]) {
    use shoal_ingest::identity::key;
    // Formatting with `write!` would cost more than the merge; ids are spelled by hand.
    fn push_number(text: &mut String, mut n: u64, base: u64, width: usize) {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut digits = [0u8; 20];
        let mut len = 0;
        while n > 0 || len < width {
            digits[len] = DIGITS[(n % base) as usize];
            n /= base;
            len += 1;
        }
        text.extend(digits[..len].iter().rev().map(|d| *d as char));
    }
    let mut text = String::with_capacity(64);
    for (i, (kinds, keys)) in kinds.chunks_mut(5).zip(keys.chunks_mut(5)).enumerate() {
        let p = first + i as u64;
        text.clear();
        let centre_type = if p % 20 < 13 {
            text.push('u');
            push_number(&mut text, p, 10, 9);
            0u8
        } else if p % 20 < 18 {
            text.push_str("+86138");
            push_number(&mut text, p % 100_000_000, 10, 8);
            1
        } else {
            text.push_str("anon-");
            push_number(&mut text, p, 16, 16);
            text.push_str("-0");
            2
        };
        kinds[0] = centre_type;
        keys[0] = key(centre_type, &text);
        for k in 1..=4u64 {
            text.clear();
            if k == 4 && p.is_multiple_of(2000) {
                text.push_str("anon-shop-tablet-");
                push_number(&mut text, p / 50_000, 10, 1);
            } else {
                text.push_str("anon-");
                push_number(&mut text, p, 16, 16);
                text.push('-');
                push_number(&mut text, k, 10, 1);
            }
            kinds[k as usize] = 2;
            keys[k as usize] = key(2, &text);
        }
    }
}

/// Resets the peak-RSS counter so the next reading covers only what follows (Linux).
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

pub(crate) async fn sample_world(dir: &Path, users: u32, seed: u64, days: u32) -> AppResult<()> {
    let options = SampleOptions {
        users,
        seed,
        end: chrono::NaiveDate::from_ymd_opt(2026, 11, 20).expect("a valid date"),
        days,
        first: 0,
    };
    let manifest = dir.join("manifest.json");
    let same = std::fs::read_to_string(&manifest)
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .is_some_and(|m| m["users"] == users && m["seed"] == seed && m["days"] == days);
    if !same {
        eprintln!(
            "writing a sample world of {users} people to {}",
            dir.display()
        );
        let dir = dir.to_path_buf();
        tokio::task::spawn_blocking(move || write_sample(&dir, &options, &mut |_, _, _| {}))
            .await
            .map_err(|e| AppError::Internal(e.to_string()))??;
    }
    Ok(())
}

/// People per part of a world written and ingested in parts.
pub(crate) const PART_PEOPLE: u32 = 1_000_000;

/// Whether a world of `users` people is written and ingested in parts: larger worlds do not
/// fit on disk as JSON all at once.
pub(crate) fn in_parts(users: u32) -> bool {
    users > 2 * PART_PEOPLE
}

/// Writes a world of `users` people in parts of [`PART_PEOPLE`] and ingests each part before
/// its files are deleted, so the disk never holds more than two parts' files (the next part is
/// written while the current one is ingested). Part `k` holds people `k × PART_PEOPLE` onwards,
/// drawn with seed `seed + k`. The parts ingested so far are counted in the file `done_path`
/// (kept beside the warehouse they went into), so an interrupted run goes on where it
/// stopped. Returns the rows landed.
pub(crate) async fn ingest_world_in_parts(
    catalog: &Catalog,
    data: &Path,
    done_path: &Path,
    users: u32,
    seed: u64,
    days: u32,
) -> AppResult<u64> {
    let parts = users.div_ceil(PART_PEOPLE);
    let mut done: u32 = std::fs::read_to_string(done_path)
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(0);
    let write_part = |k: u32| {
        let dir = data.join(format!("world-{users}-part-{k}"));
        let first = k * PART_PEOPLE;
        let options = SampleOptions {
            users: PART_PEOPLE.min(users - first),
            seed: seed + u64::from(k),
            end: chrono::NaiveDate::from_ymd_opt(2026, 11, 20).expect("a valid date"),
            days,
            first,
        };
        tokio::task::spawn_blocking(move || {
            write_sample(&dir, &options, &mut |_, _, _| {}).map(|_| dir)
        })
    };
    let mut next = (done < parts).then(|| write_part(done));
    let mut landed = 0;
    while let Some(pending) = next.take() {
        let dir = pending
            .await
            .map_err(|e| AppError::Internal(e.to_string()))??;
        next = (done + 1 < parts).then(|| write_part(done + 1));
        eprintln!(
            "ingesting part {} of {parts} from {}",
            done + 1,
            dir.display()
        );
        landed += ingest_world(catalog, &dir).await?;
        std::fs::remove_dir_all(&dir).map_err(|e| AppError::Internal(e.to_string()))?;
        done += 1;
        std::fs::write(done_path, done.to_string())
            .map_err(|e| AppError::Internal(e.to_string()))?;
    }
    Ok(landed)
}

pub(crate) async fn ingest_world(catalog: &Catalog, dir: &Path) -> AppResult<u64> {
    let text = std::fs::read_to_string(dir.join("manifest.json"))
        .map_err(|e| AppError::Internal(e.to_string()))?;
    let manifest: shoal_ingest::sample::SampleManifest =
        serde_json::from_str(&text).map_err(|e| AppError::Internal(e.to_string()))?;
    let mut landed = 0;
    for file in &manifest.files {
        let kind: SourceKind = file.source.parse().map_err(AppError::Internal)?;
        let path = dir.join(&file.file);
        let report = ingest_files(catalog, kind, &[path.as_path()], &mut |_| {}).await?;
        landed += report.counts.landed;
    }
    Ok(landed)
}

/// Where `shoal bench build` keeps copies (hard links) of its warehouse.
pub struct Keep<'a> {
    /// As it stands before the incremental build.
    pub warehouse: Option<&'a Path>,
    /// As it stands before the full build: ingested, never built.
    pub ingested: Option<&'a Path>,
}

/// `shoal bench build`: a full build of the sample world of `users` people over 90 days, then
/// an incremental build after a 1% delta (a second world of users/100 people active on the
/// last day, whose logins partly meet the first world's, so some people merge).
pub async fn build(
    users: u32,
    data: Option<PathBuf>,
    keep: Keep<'_>,
    json_out: bool,
) -> AppResult<()> {
    use shoal_ingest::build::{BuildOptions, build as run};

    let scratch = tempfile::tempdir().map_err(|e| AppError::Internal(e.to_string()))?;
    let data = data.unwrap_or_else(|| scratch.path().join("data"));
    let (base, delta) = (data.join("base"), data.join("delta"));
    // In parts, the ingest time includes writing the parts.
    let by_parts = in_parts(users);
    if !by_parts {
        sample_world(&base, users, 42, 90).await?;
    }
    // A day's worth of new data: a hundredth of the people, active on the last day.
    sample_world(&delta, (users / 100).max(1), 4242, 1).await?;
    let wh_path = scratch.path().join("wh");
    let warehouse = Warehouse::open(&format!("file://{}", wh_path.display()))?;
    let catalog = Catalog::open(warehouse).await?;
    let started = Instant::now();
    let landed = if by_parts {
        let done = scratch.path().join("wh.parts-ingested");
        ingest_world_in_parts(&catalog, &data, &done, users, 42, 90).await?
    } else {
        ingest_world(&catalog, &base).await?
    };
    let ingest_s = started.elapsed().as_secs_f64();
    let options = BuildOptions {
        full: false,
        as_of: chrono::NaiveDate::from_ymd_opt(2026, 11, 20),
    };

    if let Some(keep) = keep.ingested {
        link_tree(&wh_path, keep).map_err(|e| {
            AppError::Internal(format!("keeping the warehouse in {}: {e}", keep.display()))
        })?;
    }
    crate::huge_pages_for_build(true);
    reset_peak_rss();
    let started = Instant::now();
    let full = run(&catalog, &options, &mut |_, _, _| {}).await?;
    let full_s = started.elapsed().as_secs_f64();
    let full_rss = peak_rss_mib();

    let delta_landed = ingest_world(&catalog, &delta).await?;
    if let Some(keep) = keep.warehouse {
        link_tree(&wh_path, keep).map_err(|e| {
            AppError::Internal(format!("keeping the warehouse in {}: {e}", keep.display()))
        })?;
    }
    crate::huge_pages_for_build(false);
    reset_peak_rss();
    let started = Instant::now();
    let incremental = run(&catalog, &options, &mut |_, _, _| {}).await?;
    let incremental_s = started.elapsed().as_secs_f64();
    let incremental_rss = peak_rss_mib();

    let result = json!({
        "rows_landed": landed, "ingest_seconds": ingest_s,
        "full": {"seconds": full_s, "events": full.events_rewritten, "days_rewritten": full.days_rewritten,
                 "orders": full.orders_resolved,
                 "users": full.users, "identities": full.identity.identities_new,
                 "rows_per_s": (full.events_rewritten + full.orders_resolved) as f64 / full_s,
                 "steps": full.seconds, "peak_rss_mib": full_rss},
        "incremental": {"seconds": incremental_s, "delta_rows": delta_landed,
                 "events_resolved": incremental.events_resolved, "events_rewritten": incremental.events_rewritten,
                 "days_rewritten": incremental.days_rewritten,
                 "people_merged": incremental.identity.people_merged,
                 "users_recomputed": incremental.users_recomputed, "steps": incremental.seconds,
                 "peak_rss_mib": incremental_rss},
    });
    if json_out {
        println!("{result}");
        return Ok(());
    }
    println!(
        "build benchmark: sample world of {users} people ({landed} rows landed in {ingest_s:.1} s{}), then a 1% delta ({delta_landed} rows)",
        if by_parts {
            ", written in parts meanwhile"
        } else {
            ""
        }
    );
    println!(
        "| build | seconds | rows | rows/s | identity | events | orders | users | orders_wide | peak RSS MiB |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for (name, r, s, rss) in [
        ("full", &full, full_s, full_rss),
        (
            "incremental 1%",
            &incremental,
            incremental_s,
            incremental_rss,
        ),
    ] {
        let rows = r.events_resolved + r.events_moved + r.orders_resolved;
        let step = |k: &str| r.seconds.get(k).copied().unwrap_or(0.0);
        println!(
            "| {name} | {s:.2} | {rows} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.0} |",
            rows as f64 / s,
            step("identity"),
            step("events"),
            step("orders"),
            step("users"),
            step("orders_wide"),
            rss.unwrap_or(0.0)
        );
    }
    println!(
        "full: {} events in {} days rewritten, {} users; incremental: {} events in {} days rewritten, {} people merged, {} users recomputed",
        full.events_rewritten,
        full.days_rewritten,
        full.users,
        incremental.events_rewritten,
        incremental.days_rewritten,
        incremental.identity.people_merged,
        incremental.users_recomputed
    );
    Ok(())
}

/// Copies the folder `from` to `to` (which must not exist) as hard links: Delta files are
/// never changed in place, so the copy stays as it was while `from` moves on.
fn link_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to.parent().unwrap_or(Path::new(".")))?;
    std::fs::create_dir(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            link_tree(&entry.path(), &target)?;
        } else {
            std::fs::hard_link(entry.path(), &target)?;
        }
    }
    Ok(())
}
