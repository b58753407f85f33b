//! `shoal bench audience`: pack set algebra next to CRoaring (pyroaring, same sets, same run),
//! materialising a ~4M-member pack from a condition tree and committing it, and matching an
//! uploaded list of 1M phones — over a synthetic universe of N people.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{ArrayRef, BinaryArray, Int64Array, RecordBatch, StringArray};
use arrow::array::{TimestampMicrosecondArray, new_null_array};
use arrow::datatypes::SchemaRef;
use rand::{Rng, SeedableRng};
use roaring::RoaringBitmap;
use serde_json::{Value, json};
use shoal_audience::pack::{self, Actor, NewPack, SourceField, UploadedList};
use shoal_catalog::{Catalog, CommitNote, Role, Warehouse};
use shoal_query::Engine;

use crate::bench::python;
use crate::error::{AppError, AppResult};

/// Genders of the synthetic people and their shares (men are the ~40% pack).
const GENDERS: [(&str, f64); 3] = [("male", 0.4), ("female", 0.45), ("unknown", 0.15)];

fn fail(e: impl std::fmt::Display) -> AppError {
    AppError::Internal(e.to_string())
}

/// A request for a `once` pack named `name` made from `source`.
fn once(name: String, source: SourceField) -> NewPack {
    NewPack {
        name,
        description: None,
        mode: None,
        schedule: None,
        time_zone: None,
        evaluated_at: None,
        source,
    }
}

fn p50(mut times: Vec<f64>) -> f64 {
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

/// Milliseconds per run of `f`, p50 over `runs`.
fn time<T>(runs: usize, mut f: impl FnMut() -> T) -> f64 {
    let times = (0..runs)
        .map(|_| {
            let start = Instant::now();
            std::hint::black_box(f());
            start.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    p50(times)
}

/// Milliseconds per run of `op` on a fresh copy of `left` (made outside the clock), p50 over
/// `runs`: the in-place form the set-expression evaluator uses on the packs it loads.
fn time_in_place(runs: usize, left: &RoaringBitmap, mut op: impl FnMut(&mut RoaringBitmap)) -> f64 {
    let times = (0..runs)
        .map(|_| {
            let mut target = left.clone();
            let start = Instant::now();
            op(std::hint::black_box(&mut target));
            let elapsed = start.elapsed().as_secs_f64() * 1e3;
            drop(std::hint::black_box(target));
            elapsed
        })
        .collect();
    p50(times)
}

fn random_set(universe: u32, share: f64, seed: u64) -> RoaringBitmap {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut out = RoaringBitmap::new();
    out.extend((0..universe).filter(|_| rng.random_bool(share)));
    out
}

/// The pyroaring timings of the same operations on the same sets, or why there are none.
fn pyroaring(a: &RoaringBitmap, b: &RoaringBitmap, runs: usize) -> Result<Value, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let (pa, pb) = (dir.path().join("a.roaring"), dir.path().join("b.roaring"));
    std::fs::write(&pa, shoal_query::bitmap_functions::to_bytes(a)).map_err(|e| e.to_string())?;
    std::fs::write(&pb, shoal_query::bitmap_functions::to_bytes(b)).map_err(|e| e.to_string())?;
    let script = r#"
import json, sys, time
from pyroaring import BitMap
a = BitMap.deserialize(open(sys.argv[1], 'rb').read())
b = BitMap.deserialize(open(sys.argv[2], 'rb').read())
runs = int(sys.argv[3])
def p50(f):
    times = []
    for _ in range(runs):
        t = time.perf_counter(); f(); times.append((time.perf_counter() - t) * 1e3)
    return sorted(times)[len(times) // 2]
def p50_in_place(f):
    times = []
    for _ in range(runs):
        c = a.copy()
        t = time.perf_counter(); f(c); times.append((time.perf_counter() - t) * 1e3)
        del c
    return sorted(times)[len(times) // 2]
print(json.dumps({"sizes": [len(a), len(b)],
    "and": p50(lambda: a & b), "or": p50(lambda: a | b), "andnot": p50(lambda: a - b),
    "xor": p50(lambda: a ^ b), "cardinality": p50(lambda: len(a)),
    "and_cardinality": p50(lambda: a.intersection_cardinality(b)),
    "and_in_place": p50_in_place(lambda c: c.__iand__(b)),
    "or_in_place": p50_in_place(lambda c: c.__ior__(b)),
    "andnot_in_place": p50_in_place(lambda c: c.__isub__(b)),
    "xor_in_place": p50_in_place(lambda c: c.__ixor__(b))}))
"#;
    let out = Command::new(python())
        .arg("-c")
        .arg(script)
        .arg(&pa)
        .arg(&pb)
        .arg(runs.to_string())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", python().display()))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr)
            .lines()
            .last()
            .unwrap_or("pyroaring failed")
            .to_string());
    }
    serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())
}

/// A batch of `schema` with the given columns; the others null.
pub(crate) fn batch(
    schema: &SchemaRef,
    rows: usize,
    mut given: HashMap<&str, ArrayRef>,
) -> AppResult<RecordBatch> {
    let columns = schema
        .fields()
        .iter()
        .map(|f| match given.remove(f.name().as_str()) {
            Some(a) => arrow::compute::cast(&a, f.data_type()).map_err(fail),
            None => Ok(new_null_array(f.data_type(), rows)),
        })
        .collect::<AppResult<Vec<_>>>()?;
    RecordBatch::try_new(schema.clone(), columns).map_err(fail)
}

fn phone_of(user: u32) -> String {
    format!("+86138{user:08}")
}

/// Writes `universe` people (user id, gender), a phone each in `identity_links`, and the
/// gender tag bitmaps, as a build would leave them.
async fn synthetic_warehouse(catalog: &Catalog, universe: u32) -> AppResult<()> {
    let now = chrono::Utc::now().timestamp_micros();
    let mut users = catalog.table("users").await?;
    let mut links = catalog.table("identity_links").await?;
    let (user_schema, link_schema) = (users.schema()?, links.schema()?);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let mut tags: Vec<RoaringBitmap> = vec![RoaringBitmap::new(); GENDERS.len()];
    let chunk = 1_000_000u32;
    let mut user_batches = Vec::new();
    let mut link_batches = Vec::new();
    for start in (0..universe).step_by(chunk as usize) {
        let end = (start + chunk).min(universe);
        let n = (end - start) as usize;
        let ids: Vec<i64> = (start..end).map(i64::from).collect();
        let genders: Vec<&str> = (start..end)
            .map(|u| {
                let x: f64 = rng.random();
                let mut acc = 0.0;
                for (i, (g, share)) in GENDERS.iter().enumerate() {
                    acc += share;
                    if x < acc || i == GENDERS.len() - 1 {
                        tags[i].insert(u);
                        return *g;
                    }
                }
                "unknown"
            })
            .collect();
        let stamps = || -> ArrayRef {
            Arc::new(TimestampMicrosecondArray::from(vec![now; n]).with_timezone("UTC"))
        };
        user_batches.push(batch(
            &user_schema,
            n,
            HashMap::from([
                (
                    "user_id",
                    Arc::new(Int64Array::from(ids.clone())) as ArrayRef,
                ),
                ("gender", Arc::new(StringArray::from(genders)) as ArrayRef),
                ("updated_at", stamps()),
            ]),
        )?);
        link_batches.push(batch(
            &link_schema,
            n,
            HashMap::from([
                (
                    "id_type",
                    Arc::new(StringArray::from(vec!["phone"; n])) as ArrayRef,
                ),
                (
                    "id_value",
                    Arc::new(StringArray::from_iter_values((start..end).map(phone_of))) as ArrayRef,
                ),
                ("user_id", Arc::new(Int64Array::from(ids)) as ArrayRef),
                ("first_seen", stamps()),
                (
                    "source",
                    Arc::new(StringArray::from(vec!["bench"; n])) as ArrayRef,
                ),
            ]),
        )?);
    }
    let note = || CommitNote::new("author", "bench");
    users.append(user_batches, note()).await?;
    links.append(link_batches, note()).await?;
    let mut tag_table = catalog.table("tag_bitmaps").await?;
    let schema = tag_table.schema()?;
    let n = GENDERS.len();
    let bytes: Vec<Vec<u8>> = tags
        .iter()
        .map(shoal_query::bitmap_functions::to_bytes)
        .collect();
    let rows = batch(
        &schema,
        n,
        HashMap::from([
            (
                "kind",
                Arc::new(StringArray::from(vec!["column"; n])) as ArrayRef,
            ),
            (
                "name",
                Arc::new(StringArray::from(vec!["gender"; n])) as ArrayRef,
            ),
            (
                "value",
                Arc::new(StringArray::from_iter_values(GENDERS.iter().map(|g| g.0))) as ArrayRef,
            ),
            (
                "users",
                Arc::new(Int64Array::from_iter_values(
                    tags.iter().map(|t| t.len() as i64),
                )) as ArrayRef,
            ),
            (
                "bitmap",
                Arc::new(BinaryArray::from_iter_values(bytes.iter())) as ArrayRef,
            ),
            (
                "source_version",
                Arc::new(Int64Array::from(vec![users.version() as i64; n])) as ArrayRef,
            ),
        ]),
    )?;
    tag_table.append(vec![rows], note()).await?;
    Ok(())
}

/// Runs the benchmark and prints a table (or one JSON object).
pub async fn audience(
    universe: u32,
    runs: usize,
    data: Option<PathBuf>,
    json_out: bool,
) -> AppResult<()> {
    // 1. Set algebra on ~40% and ~30% of the universe, next to pyroaring.
    eprintln!("making two random packs of a {universe}-person universe");
    let a = random_set(universe, 0.4, 1);
    let b = random_set(universe, 0.3, 2);
    let ours = json!({
        "and": time(runs, || &a & &b),
        "or": time(runs, || &a | &b),
        "andnot": time(runs, || &a - &b),
        "xor": time(runs, || &a ^ &b),
        "cardinality": time(runs, || a.len()),
        "and_cardinality": time(runs, || a.intersection_len(&b)),
        "and_in_place": time_in_place(runs, &a, |c| *c &= &b),
        "or_in_place": time_in_place(runs, &a, |c| *c |= &b),
        "andnot_in_place": time_in_place(runs, &a, |c| *c -= &b),
        "xor_in_place": time_in_place(runs, &a, |c| *c ^= &b),
    });
    let theirs = pyroaring(&a, &b, runs);

    // 2 and 3. A warehouse of `universe` people; a pack from a tree; an uploaded list.
    let scratch = tempfile::tempdir().map_err(fail)?;
    let root = data.unwrap_or_else(|| scratch.path().to_path_buf());
    let wh = root.join(format!("audience-warehouse-{universe}"));
    let catalog = Catalog::open(Warehouse::open(&format!("file://{}", wh.display()))?).await?;
    if catalog.table("users").await?.row_count().await? == 0 {
        eprintln!(
            "writing {universe} people, phones and tag bitmaps into {}",
            wh.display()
        );
        synthetic_warehouse(&catalog, universe).await?;
    }
    let engine = Engine::new(Default::default());
    let me = Actor {
        id: "bench".into(),
        role: Role::Admin,
    };
    let stamp = chrono::Utc::now().timestamp_millis();
    let tree = json!({"field": "gender", "op": "eq", "value": "male"});
    let mut materialise = Vec::new();
    let mut pack_size = 0;
    let mut path = Value::Null;
    for i in 0..runs.clamp(3, 7) {
        let request = once(
            format!("men_{stamp}_{i}"),
            SourceField {
                conditions: Some(tree.clone()),
                ..SourceField::default()
            },
        );
        let start = Instant::now();
        let (_, version) = pack::create(&engine, &catalog, request, None, &me).await?;
        materialise.push(start.elapsed().as_secs_f64() * 1e3);
        pack_size = version.size;
        path = version.report["path"].clone();
    }
    let first_materialise = materialise[0];
    let warm_materialise = p50(materialise[1..].to_vec());

    // 1M phones: 90% of people's phones written as people write them, 10% strangers.
    let list_rows = 1_000_000.min(universe as usize);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
    let mut text = String::with_capacity(list_rows * 16);
    for i in 0..list_rows {
        let phone = if i % 10 == 9 {
            format!("139{:08}", rng.random_range(0..100_000_000u32))
        } else {
            let user = rng.random_range(0..universe);
            let national = &phone_of(user)[3..];
            match i % 3 {
                0 => national.to_string(),
                1 => format!(
                    "+86 {} {} {}",
                    &national[..3],
                    &national[3..7],
                    &national[7..]
                ),
                _ => format!("{}-{}-{}", &national[..3], &national[3..7], &national[7..]),
            }
        };
        text.push_str(&phone);
        text.push('\n');
    }
    // Three uploads of the list as three packs: the median, since one run on a shared
    // machine says little.
    let mut uploads = Vec::new();
    let mut uploaded = None;
    for i in 0..3 {
        let request = once(format!("upload_{stamp}_{i}"), SourceField::default());
        let start = Instant::now();
        let (_, version) = pack::create(
            &engine,
            &catalog,
            request,
            Some(UploadedList {
                file: "phones.txt",
                id_type: "phone",
                bytes: text.as_bytes(),
            }),
            &me,
        )
        .await?;
        uploads.push(start.elapsed().as_secs_f64() * 1e3);
        uploaded = Some(version);
    }
    let uploaded = uploaded.ok_or_else(|| fail("no upload ran"))?;
    let upload_ms = p50(uploads.clone());

    let result = json!({
        "universe": universe,
        "pack_sizes": [a.len(), b.len()],
        "set_ops_ms": {"shoal": ours, "pyroaring": theirs.as_ref().ok()},
        "pyroaring_error": theirs.as_ref().err(),
        "materialise": {"pack_size": pack_size, "path": path, "first_ms": first_materialise, "p50_ms": warm_materialise},
        "upload": {"rows": list_rows, "ms": upload_ms, "runs_ms": uploads, "report": uploaded.report},
    });
    if json_out {
        println!("{result}");
        return Ok(());
    }
    println!(
        "audience benchmark: {universe}-person universe, packs of {} and {} members (p50 of {runs} runs)",
        a.len(),
        b.len()
    );
    println!(
        "{:<18} {:>12} {:>12} {:>8}",
        "operation", "shoal ms", "pyroaring ms", "ratio"
    );
    for op in [
        "and",
        "or",
        "andnot",
        "xor",
        "cardinality",
        "and_cardinality",
        "and_in_place",
        "or_in_place",
        "andnot_in_place",
        "xor_in_place",
    ] {
        let mine = ours[op].as_f64().unwrap_or_default();
        match &theirs {
            Ok(t) => {
                let other = t[op].as_f64().unwrap_or_default();
                println!(
                    "{op:<18} {mine:>12.3} {other:>12.3} {:>7.2}×",
                    if other > 0.0 { mine / other } else { 0.0 }
                );
            }
            Err(_) => println!("{op:<18} {mine:>12.3} {:>12} {:>8}", "-", "-"),
        }
    }
    if let Err(e) = &theirs {
        println!("pyroaring not measured: {e} (SHOAL_BENCH_PYTHON picks the Python)");
    }
    println!(
        "materialise + commit a {pack_size}-member pack from a tree ({} path): first {first_materialise:.0} ms, then p50 {warm_materialise:.0} ms",
        path.as_str().unwrap_or("?")
    );
    println!(
        "upload {list_rows} phones and match them: p50 of 3 {upload_ms:.0} ms (read {} ms, match {} ms; {} matched, {} unmatched)",
        uploaded.report["parse_ms"],
        uploaded.report["match_ms"],
        uploaded.report["matched"],
        uploaded.report["unmatched"]
    );
    Ok(())
}
