//! `shoal ingest` and `shoal quarantine`: accounting, dedup, re-imports, crashes, bad files.

use std::path::Path;
use std::process::Command;

use crate::{json_ok, shoal, table_rows};

fn sample(dir: &Path, users: u32) -> serde_json::Value {
    crate::demo_data(dir, users, 11)
}

fn planted(manifest: &serde_json::Value, file: &str) -> serde_json::Map<String, serde_json::Value> {
    manifest["files"]
        .as_array()
        .expect("files")
        .iter()
        .find(|f| f["file"] == file)
        .expect("file in manifest")["planted"]
        .as_object()
        .expect("planted")
        .clone()
}

fn count(planted: &serde_json::Map<String, serde_json::Value>, kind: &str) -> u64 {
    planted.get(kind).and_then(|v| v.as_u64()).unwrap_or(0)
}

fn ingest(wh: &Path, source: &str, files: &[&Path]) -> serde_json::Value {
    let mut args = vec!["ingest", "--source", source, "--json"];
    let paths: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
    args.extend(paths.iter().map(String::as_str));
    json_ok(&shoal(wh, &args))
}

/// Locations of the rows `shoal quarantine list` shows.
fn quarantine_locations(wh: &Path) -> Vec<String> {
    let list = json_ok(&shoal(wh, &["quarantine", "list", "--json"]));
    list["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| r["location"].as_str().expect("l").to_string())
        .collect()
}

fn balanced(report: &serde_json::Value) {
    let n = |k: &str| report[k].as_u64().expect(k);
    assert_eq!(
        n("received"),
        n("landed") + n("quarantined") + n("duplicates"),
        "{report}"
    );
    let reasons: u64 = report["reasons"]
        .as_object()
        .expect("reasons")
        .values()
        .map(|v| v.as_u64().unwrap_or(0))
        .sum();
    assert_eq!(reasons, n("quarantined"));
}

#[test]
fn every_planted_bad_row_is_accounted_for() {
    let dir = tempfile::tempdir().expect("temp");
    let data = dir.path().join("data");
    let wh = dir.path().join("wh");
    let manifest = sample(&data, 1500);

    let report = ingest(&wh, "segment", &[&data.join("events.jsonl")]);
    balanced(&report);
    let p = planted(&manifest, "events.jsonl");
    let reasons = &report["reasons"];
    assert_eq!(
        reasons["invalid_json"].as_u64(),
        Some(count(&p, "broken_json"))
    );
    assert_eq!(
        reasons["bad_timestamp"].as_u64(),
        Some(count(&p, "bad_timestamp"))
    );
    assert_eq!(reasons["bad_phone"].as_u64(), Some(count(&p, "bad_phone")));
    assert_eq!(
        reasons["negative_amount"].as_u64(),
        Some(count(&p, "negative_amount"))
    );
    assert_eq!(
        reasons["missing_required"].as_u64(),
        Some(count(&p, "missing_required"))
    );
    assert_eq!(
        report["duplicates"].as_u64(),
        Some(count(&p, "duplicate_message_id"))
    );

    let p = planted(&manifest, "tmall_orders.csv");
    let report = ingest(&wh, "tmall", &[&data.join("tmall_orders.csv")]);
    balanced(&report);
    assert_eq!(
        report["duplicates"].as_u64(),
        Some(count(&p, "duplicate_order"))
    );
    assert_eq!(
        report["reasons"]["negative_amount"].as_u64(),
        Some(count(&p, "negative_amount"))
    );
    assert_eq!(
        report["reasons"]["broken_record"].as_u64(),
        Some(count(&p, "broken_record"))
    );
    let planted_bad: u64 = [
        "missing_required",
        "negative_amount",
        "bad_timestamp",
        "bad_phone",
        "broken_record",
    ]
    .iter()
    .map(|k| count(&p, k))
    .sum();
    assert_eq!(report["quarantined"].as_u64(), Some(planted_bad));

    let p = planted(&manifest, "youzan_trades.jsonl");
    let report = ingest(&wh, "youzan", &[&data.join("youzan_trades.jsonl")]);
    balanced(&report);
    for (reason, kind) in [
        ("invalid_json", "broken_json"),
        ("negative_amount", "negative_amount"),
        ("bad_timestamp", "bad_timestamp"),
        ("bad_phone", "bad_phone"),
        ("missing_required", "missing_required"),
    ] {
        assert_eq!(
            report["reasons"][reason].as_u64().unwrap_or(0),
            count(&p, kind),
            "{reason}"
        );
    }

    // The batches table holds each report; the quarantine holds each rejected row.
    let list = json_ok(&shoal(
        &wh,
        &[
            "quarantine",
            "list",
            "--reason",
            "negative_amount",
            "--limit",
            "1000",
            "--json",
        ],
    ));
    let rows = list["rows"].as_array().expect("rows");
    assert_eq!(
        rows.len() as u64,
        ["events.jsonl", "tmall_orders.csv", "youzan_trades.jsonl"]
            .iter()
            .map(|f| count(&planted(&manifest, f), "negative_amount"))
            .sum::<u64>()
    );
    assert!(
        rows.iter()
            .all(|r| r["raw"].as_str().is_some_and(|raw| raw.contains('-')))
    );
    assert_eq!(table_rows(&wh, "batches"), Some(3));
}

#[test]
fn re_imports_dedup_events_and_update_orders() {
    let dir = tempfile::tempdir().expect("temp");
    let data = dir.path().join("data");
    let wh = dir.path().join("wh");
    sample(&data, 800);
    let events = data.join("events.jsonl");
    let first = ingest(&wh, "segment", &[&events]);
    let again = ingest(&wh, "segment", &[&events]);
    balanced(&again);
    assert_eq!(again["landed"], 0, "nothing lands twice");
    assert_eq!(
        again["duplicates"].as_u64(),
        Some(first["landed"].as_u64().expect("l") + first["duplicates"].as_u64().expect("d"))
    );

    // Youzan: the console export taken later moves statuses on; rows are updated, not added.
    let api = ingest(&wh, "youzan", &[&data.join("youzan_trades.jsonl")]);
    let api_again = ingest(&wh, "youzan", &[&data.join("youzan_trades.jsonl")]);
    assert_eq!(api_again["landed"], 0);
    assert_eq!(api_again["duplicates"], api["landed"]);
    let export = ingest(&wh, "youzan", &[&data.join("youzan_export.csv")]);
    balanced(&export);
    assert!(export["updated"].as_u64().expect("updated") > 0, "{export}");
    let new = export["landed"].as_u64().expect("l") - export["updated"].as_u64().expect("u");
    assert_eq!(
        table_rows(&wh, "orders"),
        Some(api["landed"].as_u64().expect("l") + new)
    );
}

#[test]
fn edge_files_and_bad_files() {
    let dir = tempfile::tempdir().expect("temp");
    let wh = dir.path().join("wh");
    let empty = dir.path().join("empty.jsonl");
    std::fs::write(&empty, "").expect("write");
    let report = ingest(&wh, "segment", &[&empty]);
    assert_eq!(
        (report["received"].as_u64(), report["landed"].as_u64()),
        (Some(0), Some(0))
    );

    let bad = dir.path().join("bad.jsonl");
    std::fs::write(
        &bad,
        "{\"type\":\"track\"\nnot json\n\n{\"type\":\"track\",\"event\":\"x\"}\n[1]\n",
    )
    .expect("write");
    let report = ingest(&wh, "segment", &[&bad]);
    balanced(&report);
    assert_eq!(
        (report["received"].as_u64(), report["quarantined"].as_u64()),
        (Some(4), Some(4)),
        "blank lines are not records"
    );
    let locations = quarantine_locations(&wh);
    for line in ["bad.jsonl:1", "bad.jsonl:2", "bad.jsonl:4", "bad.jsonl:5"] {
        assert!(
            locations.iter().any(|l| l == line),
            "{line} in {locations:?}"
        );
    }

    // A Tmall report without its amount column is refused whole, naming what is missing.
    let csv = dir.path().join("tmall.csv");
    std::fs::write(
        &csv,
        "订单编号,买家会员名,订单状态,订单创建时间\n1,tb,交易成功,2026-10-01 12:00:00\n",
    )
    .expect("write");
    let out = shoal(
        &wh,
        &["ingest", "--source", "tmall", csv.to_str().expect("p")],
    );
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("lacks required columns 买家实际支付金额") && err.contains("found 订单编号"),
        "{err}"
    );
    let out = shoal(
        &wh,
        &["ingest", "--source", "wechat", csv.to_str().expect("p")],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown source 'wechat'"));
    let out = shoal(
        &wh,
        &["ingest", "--source", "segment", "/no/such/file.jsonl"],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no such file"));

    // A UTF-8 Tmall report (with BOM) reads like the GBK one.
    let utf8 = dir.path().join("tmall-utf8.csv");
    std::fs::write(&utf8, "\u{feff}订单编号,买家会员名,买家实际支付金额,订单状态,订单创建时间,联系手机\n9,tb,10.00,交易成功,2026-10-01 12:00:00,'13812345678\n").expect("write");
    let report = ingest(&wh, "tmall", &[&utf8]);
    assert_eq!(report["landed"], 1);
}

#[test]
fn a_batch_killed_midway_and_retried_loses_and_doubles_nothing() {
    let dir = tempfile::tempdir().expect("temp");
    let data = dir.path().join("data");
    sample(&data, 1500);
    let events = data.join("events.jsonl");

    // The reference: one clean import into its own warehouse.
    let reference = ingest(&dir.path().join("ref"), "segment", &[&events]);

    // Small chunks so the import commits many times; kill it after a few commits.
    let wh = dir.path().join("wh");
    let log = wh.join("events/_delta_log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_shoal"))
        .arg("--warehouse")
        .arg(format!("file://{}", wh.display()))
        .args(["ingest", "--source", "segment"])
        .arg(&events)
        .env("SHOAL_CHUNK_ROWS", "2000")
        .spawn()
        .expect("start");
    let commits = || {
        std::fs::read_dir(&log)
            .map(|d| {
                d.flatten()
                    .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
                    .count()
            })
            .unwrap_or(0)
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while commits() < 4 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    child.kill().expect("kill");
    let status = child.wait().expect("wait");
    assert!(
        !status.success(),
        "the import was killed before it finished"
    );
    let landed_before = commits();
    assert!(
        landed_before >= 4,
        "some chunks were committed before the kill"
    );

    let retry = ingest(&wh, "segment", &[&events]);
    balanced(&retry);
    let rows = table_rows(&wh, "events");
    assert_eq!(
        rows,
        reference["landed"].as_u64(),
        "exactly the reference's events, none lost or doubled"
    );
    assert!(retry["landed"].as_u64().expect("l") < reference["landed"].as_u64().expect("l"));
}

#[test]
fn quarantined_rows_can_be_fixed_and_replayed() {
    let dir = tempfile::tempdir().expect("temp");
    let wh = dir.path().join("wh");
    let events = dir.path().join("events.jsonl");
    std::fs::write(
        &events,
        concat!(
            r#"{"type":"track","messageId":"r-1","anonymousId":"a","event":"view_item","timestamp":"2026-10-01T00:00:00Z"}"#, "\n",
            r#"{"type":"track","messageId":"r-2","anonymousId":"a","event":"purchase","timestamp":"2026-13-01T00:00:00Z"}"#, "\n",
            r#"{"type":"identify","messageId":"r-3","userId":"u","timestamp":"2026-10-01T00:00:00Z","traits":{"phone":"138abcd5678"}}"#, "\n",
        ),
    )
    .expect("write");
    let first = ingest(&wh, "segment", &[&events]);
    assert_eq!(
        (first["landed"].as_u64(), first["quarantined"].as_u64()),
        (Some(1), Some(2))
    );

    let shown = json_ok(&shoal(
        &wh,
        &["quarantine", "show", "events.jsonl:2", "--json"],
    ));
    assert_eq!(shown["rows"][0]["reason"], "bad_timestamp");
    assert!(
        shown["rows"][0]["raw"]
            .as_str()
            .expect("raw")
            .contains("2026-13-01")
    );
    let out = shoal(&wh, &["quarantine", "show", "events.jsonl:1"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "line 1 landed; nothing is quarantined there"
    );

    // Fix the timestamp of line 2 and replay just that row.
    let fix = dir.path().join("fix.json");
    std::fs::write(&fix, r#"{"type":"track","messageId":"r-2","anonymousId":"a","event":"purchase","timestamp":"2026-10-02T00:00:00Z"}"#).expect("fix");
    let replayed = json_ok(&shoal(
        &wh,
        &[
            "quarantine",
            "replay",
            "--location",
            "events.jsonl:2",
            "--fix",
            fix.to_str().expect("p"),
            "--json",
        ],
    ));
    assert_eq!(replayed["replayed"], 1);
    assert_eq!(replayed["batches"][0]["landed"], 1);

    // Replaying the unfixed phone row as stored fails again: it is quarantined again, still tracked.
    let again = json_ok(&shoal(
        &wh,
        &["quarantine", "replay", "--reason", "bad_phone", "--json"],
    ));
    assert_eq!(again["batches"][0]["quarantined"], 1);
    let list = json_ok(&shoal(&wh, &["quarantine", "list", "--json"]));
    let rows = list["rows"].as_array().expect("rows");
    assert_eq!(
        rows.len(),
        3,
        "two original rows and the phone row's second failure"
    );
    let replayed_flags = rows.iter().filter(|r| r["replayed"] == true).count();
    assert_eq!(replayed_flags, 2);
    // Nothing is left to replay but the second failure, and --fix refuses an ambiguous selection.
    let out = shoal(&wh, &["quarantine", "replay", "--location", "nowhere:1"]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(table_rows(&wh, "events"), Some(2));

    // A CSV row carries its header, so it replays on its own.
    let csv = dir.path().join("tmall.csv");
    std::fs::write(&csv, "订单编号,买家会员名,买家实际支付金额,订单状态,订单创建时间\n7,tb,-10.00,交易成功,2026-10-01 12:00:00\n").expect("csv");
    ingest(&wh, "tmall", &[&csv]);
    let fixed = dir.path().join("fixed.csv");
    std::fs::write(&fixed, "订单编号,买家会员名,买家实际支付金额,订单状态,订单创建时间\n7,tb,10.00,交易成功,2026-10-01 12:00:00\n").expect("csv");
    let replayed = json_ok(&shoal(
        &wh,
        &[
            "quarantine",
            "replay",
            "--location",
            "tmall.csv:2",
            "--fix",
            fixed.to_str().expect("p"),
            "--json",
        ],
    ));
    assert_eq!(replayed["batches"][0]["landed"], 1, "{replayed}");
}

/// Event ids, prices and channels landed, sorted by id.
fn landed_events(wh: &Path) -> Vec<(String, Option<f64>, Option<String>)> {
    let mut out: Vec<_> = crate::rows(wh, "events")
        .into_iter()
        .map(|r| {
            let price = match &r["price"] {
                serde_json::Value::Number(n) => n.as_f64(),
                serde_json::Value::String(s) => s.parse().ok(),
                _ => None,
            };
            (
                r["event_id"].as_str().expect("id").to_string(),
                price,
                r["channel"].as_str().map(str::to_string),
            )
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

#[test]
fn events_import_from_csv_and_parquet_through_the_same_cleaning() {
    let dir = tempfile::tempdir().expect("tmp");
    let wh = dir.path().join("wh");
    let csv = dir.path().join("events.csv");
    std::fs::write(
        &csv,
        "\u{feff}message_id,event_name,event_time,device_id,user_id,price,properties.channel\n\
         c1,view_item,2026-11-01 08:00:00,d1,,2499.00,web\n\
         c2,add_to_cart,2026-11-01T00:05:00Z,d1,u1,2499,miniprogram\n\
         c3,view_item,2026-13-01 08:00:00,d2,,,web\n\
         c4,view_item,2026-11-01 08:00:00,d2\n\
         c1,view_item,2026-11-01 08:00:00,d1,,2499.00,web\n\
         c5,purchase,2026-11-01 09:00:00,d3,,-5,web\n",
    )
    .expect("csv");
    let report = ingest(&wh, "segment", &[&csv]);
    balanced(&report);
    assert_eq!(report["received"], 6, "{report}");
    assert_eq!(report["landed"], 2, "{report}");
    assert_eq!(report["duplicates"], 1, "{report}");
    assert_eq!(report["reasons"]["broken_record"], 1, "{report}");
    assert_eq!(report["reasons"]["bad_timestamp"], 1, "{report}");
    assert_eq!(report["reasons"]["negative_amount"], 1, "{report}");
    let events = landed_events(&wh);
    assert_eq!(
        events,
        vec![
            ("c1".to_string(), Some(2499.0), Some("web".to_string())),
            (
                "c2".to_string(),
                Some(2499.0),
                Some("miniprogram".to_string())
            ),
        ]
    );

    // Parquet, written as another tool would (typed columns, a JSON properties column).
    use std::sync::Arc;
    let schema = Arc::new(arrow::datatypes::Schema::new(vec![
        arrow::datatypes::Field::new("messageId", arrow::datatypes::DataType::Utf8, false),
        arrow::datatypes::Field::new("event", arrow::datatypes::DataType::Utf8, true),
        arrow::datatypes::Field::new(
            "timestamp",
            arrow::datatypes::DataType::Timestamp(
                arrow::datatypes::TimeUnit::Microsecond,
                Some("UTC".into()),
            ),
            true,
        ),
        arrow::datatypes::Field::new("anonymousId", arrow::datatypes::DataType::Utf8, true),
        arrow::datatypes::Field::new("properties", arrow::datatypes::DataType::Utf8, true),
    ]));
    let t = 1_793_491_200_000_000i64; // 2026-11-01T00:00:00Z
    let batch = arrow::array::RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(arrow::array::StringArray::from(vec!["p1", "p2", "p3"])),
            Arc::new(arrow::array::StringArray::from(vec![
                Some("view_item"),
                None,
                Some("view_item"),
            ])),
            Arc::new(
                arrow::array::TimestampMicrosecondArray::from(vec![t, t, t]).with_timezone("UTC"),
            ),
            Arc::new(arrow::array::StringArray::from(vec!["d9", "d9", "d9"])),
            Arc::new(arrow::array::StringArray::from(vec![
                Some(r#"{"price": 99.5, "channel": "app"}"#),
                None,
                Some("not json"),
            ])),
        ],
    )
    .expect("batch");
    let parquet_file = dir.path().join("events.parquet");
    let mut writer = parquet::arrow::ArrowWriter::try_new(
        std::fs::File::create(&parquet_file).expect("create"),
        schema,
        None,
    )
    .expect("writer");
    writer.write(&batch).expect("write");
    writer.close().expect("close");
    let report = ingest(&wh, "segment", &[&parquet_file]);
    balanced(&report);
    assert_eq!(report["landed"], 1, "{report}");
    assert_eq!(
        report["reasons"]["missing_required"], 1,
        "p2 has no event name: {report}"
    );
    assert_eq!(
        report["reasons"]["unknown_value"], 1,
        "p3's properties: {report}"
    );
    let events = landed_events(&wh);
    assert!(events.contains(&("p1".to_string(), Some(99.5), Some("app".to_string()))));

    // A CSV without an event column is refused whole, naming what it found.
    let wrong = dir.path().join("wrong.csv");
    std::fs::write(&wrong, "a,b\n1,2\n").expect("write");
    let out = shoal(
        &wh,
        &["ingest", "--source", "segment", wrong.to_str().expect("p")],
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("event") && stderr.contains("a, b"),
        "{stderr}"
    );
}

#[test]
fn a_json_lines_file_of_many_blocks_keeps_every_line_and_its_number() {
    let dir = tempfile::tempdir().expect("temp");
    let wh = dir.path().join("wh");
    // About 16 MB: the file is read in blocks of 4 MiB, so lines straddle block ends. It
    // starts with a byte-order mark, some lines end in CRLF, one line deep inside is broken,
    // and one is longer than a block (too large for a message, so quarantined).
    let n = 36_000usize;
    let broken_at = 30_001usize;
    let giant_at = 12_001usize;
    let pad = "x".repeat(220);
    let mut text = String::from("\u{feff}");
    for i in 0..n {
        if i + 1 == broken_at {
            text.push_str("{\"type\":\"track\", not json\n");
            continue;
        }
        if i + 1 == giant_at {
            let giant = "g".repeat(5 << 20);
            text.push_str(&format!(
                "{{\"type\":\"track\",\"messageId\":\"giant\",\"anonymousId\":\"a\",\"event\":\"view\",\"timestamp\":\"2026-10-01T00:00:00Z\",\"properties\":{{\"pad\":\"{giant}\"}}}}\n"
            ));
            continue;
        }
        text.push_str(&format!(
            "{{\"type\":\"track\",\"messageId\":\"m-{i}\",\"anonymousId\":\"a-{}\",\"event\":\"view\",\"timestamp\":\"2026-10-01T00:00:00Z\",\"properties\":{{\"pad\":\"{pad}\",\"n\":{i}}}}}",
            i % 97
        ));
        text.push_str(if i % 1000 == 7 { "\r\n" } else { "\n" });
    }
    let big = dir.path().join("big.jsonl");
    std::fs::write(&big, &text).expect("write");
    assert!(text.len() > 2 * (4 << 20), "{} bytes", text.len());

    let report = ingest(&wh, "segment", &[&big]);
    balanced(&report);
    assert_eq!(report["received"].as_u64(), Some(n as u64));
    assert_eq!(report["landed"].as_u64(), Some(n as u64 - 2));
    assert_eq!(report["quarantined"].as_u64(), Some(2));
    let mut quarantined = quarantine_locations(&wh);
    quarantined.sort();
    assert_eq!(
        quarantined,
        vec![
            format!("big.jsonl:{giant_at}"),
            format!("big.jsonl:{broken_at}")
        ]
    );

    let mut ids: Vec<u64> = crate::rows(&wh, "events")
        .iter()
        .map(|r| {
            let id = r["event_id"].as_str().expect("id");
            id.strip_prefix("m-").expect("m-").parse().expect("n")
        })
        .collect();
    ids.sort_unstable();
    let expected: Vec<u64> = (0..n as u64)
        .filter(|i| *i + 1 != broken_at as u64 && *i + 1 != giant_at as u64)
        .collect();
    assert_eq!(ids, expected, "every line but the broken one, once");
}

/// Workers clean runs of a file in whatever order they finish; the parts must still be
/// deduped in file order. Every tenth message comes back three more times a few megabytes
/// later, in later blocks and runs, each time with other contents: only its first copy
/// lands.
#[test]
fn a_repeated_message_keeps_its_first_copy_across_blocks() {
    let dir = tempfile::tempdir().expect("temp");
    let wh = dir.path().join("wh");
    let n = 40_000usize;
    let pad = "p".repeat(200);
    let line = |i: usize, copy: usize| {
        format!(
            "{{\"type\":\"track\",\"messageId\":\"m-{i}\",\"anonymousId\":\"a-{}\",\"event\":\"view\",\"timestamp\":\"2026-10-01T00:00:00Z\",\"properties\":{{\"copy\":{copy},\"pad\":\"{pad}\"}}}}\n",
            i % 89
        )
    };
    let mut text = String::new();
    // Message i's later copies come 12,000, 24,000 and 36,000 lines (3, 6 and 9 MB) on.
    let mut repeats = 0u64;
    for i in 0..n {
        text.push_str(&line(i, 0));
        for copy in 1..=3usize {
            if let Some(back) = i.checked_sub(12_000 * copy)
                && back % 10 == 0
            {
                text.push_str(&line(back, copy));
                repeats += 1;
            }
        }
    }
    assert!(text.len() > 3 * (4 << 20), "{} bytes", text.len());
    let file = dir.path().join("repeats.jsonl");
    std::fs::write(&file, &text).expect("write");

    let report = ingest(&wh, "segment", &[&file]);
    balanced(&report);
    assert_eq!(report["received"].as_u64(), Some(n as u64 + repeats));
    assert_eq!(report["landed"].as_u64(), Some(n as u64));
    assert_eq!(report["duplicates"].as_u64(), Some(repeats));
    let rows = crate::rows(&wh, "events");
    assert_eq!(rows.len(), n);
    let later: Vec<&str> = rows
        .iter()
        .filter(|r| !r["properties"].as_str().expect("p").contains("\"copy\":0"))
        .map(|r| r["event_id"].as_str().expect("id"))
        .collect();
    assert!(later.is_empty(), "later copies landed: {later:?}");
}

#[test]
fn a_message_repeated_in_two_files_of_one_batch_lands_once() {
    let dir = tempfile::tempdir().expect("temp");
    let wh = dir.path().join("wh");
    let line = |id: &str| {
        format!(
            "{{\"type\":\"track\",\"messageId\":\"{id}\",\"anonymousId\":\"a\",\"event\":\"view\",\"timestamp\":\"2026-10-01T00:00:00Z\"}}\n"
        )
    };
    let a = dir.path().join("a.jsonl");
    let b = dir.path().join("b.jsonl");
    std::fs::write(&a, line("m-1") + &line("m-2")).expect("write");
    std::fs::write(&b, line("m-2") + &line("m-3") + &line("m-3")).expect("write");
    let report = ingest(&wh, "segment", &[&a, &b]);
    balanced(&report);
    assert_eq!(
        (
            report["received"].as_u64(),
            report["landed"].as_u64(),
            report["duplicates"].as_u64()
        ),
        (Some(5), Some(3), Some(2)),
        "{report}"
    );
    assert_eq!(crate::table_rows(&wh, "events"), Some(3));
}

/// Runs `shoal` with `args`, sampling its peak resident memory (`VmHWM`) until it exits;
/// returns its output and the peak in bytes.
fn shoal_with_peak_memory(warehouse: &Path, args: &[&str]) -> (std::process::Output, u64) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_shoal"))
        .arg("--warehouse")
        .arg(format!("file://{}", warehouse.display()))
        .args(args)
        .env_remove("SHOAL_WAREHOUSE")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run shoal");
    let status_file = format!("/proc/{}/status", child.id());
    let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
    let out = std::thread::spawn(move || {
        let mut text = Vec::new();
        std::io::Read::read_to_end(&mut stdout.expect("stdout"), &mut text).expect("stdout");
        text
    });
    let err = std::thread::spawn(move || {
        let mut text = Vec::new();
        std::io::Read::read_to_end(&mut stderr.expect("stderr"), &mut text).expect("stderr");
        text
    });
    let mut peak_kib = 0u64;
    while child.try_wait().expect("wait").is_none() {
        if let Ok(status) = std::fs::read_to_string(&status_file) {
            let hwm = status
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok());
            peak_kib = peak_kib.max(hwm.unwrap_or(0));
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let status = child.wait().expect("wait");
    let output = std::process::Output {
        status,
        stdout: out.join().expect("stdout"),
        stderr: err.join().expect("stderr"),
    };
    (output, peak_kib * 1024)
}

#[test]
fn a_2_gb_file_is_streamed_in_bounded_memory_and_every_line_accounted_for() {
    use std::io::Write;
    let dir = tempfile::tempdir().expect("temp");
    let wh = dir.path().join("wh");
    let path = dir.path().join("big.jsonl");
    const SIZE: u64 = 2 << 30;
    // Messages of about 4 KB (a product list and a description, as page and cart events carry),
    // over 30 days. Every 100,000th line is broken; every 50,000th (from the 25,000th) repeats
    // the message id of the line before it.
    let description = "Organic cotton, pre-washed; ships in 48 hours. ".repeat(40);
    let items: Vec<String> = (0..12)
        .map(|k| {
            format!(
                r#"{{"sku":"SKU-{k:04}","name":"商品 {k} — long sleeve shirt, blue","price":{}.90,"quantity":{}}}"#,
                49 + k * 10,
                1 + k % 3
            )
        })
        .collect();
    let items = items.join(",");
    let mut file =
        std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&path).expect("create"));
    let (mut written, mut lines, mut broken, mut repeats) = (0u64, 0u64, 0u64, 0u64);
    while written < SIZE {
        lines += 1;
        let line = if lines % 100_000 == 0 {
            broken += 1;
            "{\"type\":\"track\",\"event\": broken\n".to_string()
        } else {
            let id = if lines % 50_000 == 25_000 {
                repeats += 1;
                lines - 1
            } else {
                lines
            };
            format!(
                "{{\"type\":\"track\",\"messageId\":\"big-{id}\",\"anonymousId\":\"dev-{}\",\"event\":\"view_item\",\"timestamp\":\"2026-10-{:02}T{:02}:{:02}:00+08:00\",\"properties\":{{\"items\":[{items}],\"description\":\"{description}\",\"n\":{lines}}},\"context\":{{\"library\":{{\"name\":\"analytics.js\",\"version\":\"4.1.0\"}},\"ip\":\"10.0.{}.{}\"}}}}\n",
                lines % 50_021,
                1 + lines % 30,
                lines % 24,
                lines % 60,
                lines % 250,
                lines % 199
            )
        };
        file.write_all(line.as_bytes()).expect("write");
        written += line.len() as u64;
    }
    file.flush().expect("flush");
    drop(file);
    assert!(std::fs::metadata(&path).expect("size").len() >= SIZE);

    let (output, peak) = shoal_with_peak_memory(
        &wh,
        &[
            "ingest",
            "--source",
            "segment",
            "--json",
            path.to_str().expect("p"),
        ],
    );
    let report: serde_json::Value =
        serde_json::from_str(crate::stdout_ok(&output).trim()).expect("report");
    balanced(&report);
    let n = |k: &str| report[k].as_u64().expect(k);
    assert_eq!(n("received"), lines);
    assert_eq!(n("quarantined"), broken);
    assert_eq!(n("duplicates"), repeats);
    assert_eq!(n("landed"), lines - broken - repeats);
    assert_eq!(table_rows(&wh, "events"), Some(lines - broken - repeats));
    // Streamed: the process never held more than a fraction of the file (reading it whole
    // would hold its 2 GiB of text, before any column is built). The peak is a few chunks
    // of columns, their Parquet pages and the allocator's freed pages: 650-800 MB in release
    // builds, and no more for a file of twice the size.
    assert!(
        peak > 0 && peak < SIZE / 2,
        "peak resident memory {peak} bytes"
    );
    std::fs::remove_file(&path).expect("remove");
}
