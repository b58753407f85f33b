//! `shoal demo-data`: determinism and the planted bad-row mix, checked independently.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use crate::{json_ok, shoal};

fn generate(out: &Path, users: &str, seed: &str) -> serde_json::Value {
    let warehouse = out.join("unused-warehouse");
    json_ok(&shoal(
        &warehouse,
        &[
            "demo-data",
            "--out",
            out.to_str().expect("path"),
            "--users",
            users,
            "--seed",
            seed,
            "--json",
        ],
    ))
}

fn read_dir_bytes(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .expect("dir")
        .flatten()
        .filter(|e| e.path().is_file())
        .map(|e| {
            (
                e.file_name().to_string_lossy().to_string(),
                std::fs::read(e.path()).expect("read"),
            )
        })
        .collect()
}

#[test]
fn the_same_seed_writes_the_same_bytes() {
    let dir = tempfile::tempdir().expect("temp");
    let (a, b, c) = (
        dir.path().join("a"),
        dir.path().join("b"),
        dir.path().join("c"),
    );
    generate(&a, "600", "7");
    generate(&b, "600", "7");
    generate(&c, "600", "8");
    let (a, b, c) = (read_dir_bytes(&a), read_dir_bytes(&b), read_dir_bytes(&c));
    assert_eq!(
        a.keys().collect::<Vec<_>>(),
        vec![
            "events.jsonl",
            "manifest.json",
            "tmall_orders.csv",
            "truth.jsonl",
            "youzan_export.csv",
            "youzan_trades.jsonl"
        ]
    );
    for (name, bytes) in &a {
        assert!(
            bytes == &b[name],
            "{name} differs between two runs with one seed"
        );
    }
    assert!(
        a["events.jsonl"] != c["events.jsonl"],
        "another seed gives another world"
    );
}

/// Splits a CSV text into records (RFC 4180 quoting).
fn csv_records(text: &str) -> Vec<Vec<String>> {
    let mut records = Vec::new();
    let (mut record, mut field, mut quoted) = (Vec::new(), String::new(), false);
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                field.push('"');
                chars.next();
            }
            ('"', _) => quoted = !quoted,
            (',', false) => record.push(std::mem::take(&mut field)),
            ('\r', false) => {}
            ('\n', false) => {
                record.push(std::mem::take(&mut field));
                records.push(std::mem::take(&mut record));
            }
            (c, _) => field.push(c),
        }
    }
    records
}

#[test]
fn the_planted_bad_rows_are_there_and_counted() {
    let dir = tempfile::tempdir().expect("temp");
    let manifest = generate(dir.path(), "3000", "42");
    let files: HashMap<String, serde_json::Value> = manifest["files"]
        .as_array()
        .expect("files")
        .iter()
        .map(|f| (f["file"].as_str().expect("name").to_string(), f.clone()))
        .collect();
    let planted = |file: &str, kind: &str| files[file]["planted"][kind].as_u64().unwrap_or(0);

    // Events: count independently what a strict reader would reject.
    let text = std::fs::read_to_string(dir.path().join("events.jsonl")).expect("events");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines.len() as u64,
        files["events.jsonl"]["rows"].as_u64().expect("rows")
    );
    let (mut broken, mut seen, mut duplicates, mut negative, mut no_ids, mut people) = (
        0u64,
        std::collections::HashSet::new(),
        0u64,
        0u64,
        0u64,
        std::collections::HashSet::new(),
    );
    for line in &lines {
        let Ok(message) = serde_json::from_str::<serde_json::Value>(line) else {
            broken += 1;
            continue;
        };
        if !seen.insert(
            message["messageId"]
                .as_str()
                .expect("messageId")
                .to_string(),
        ) {
            duplicates += 1;
        }
        if message["properties"]["revenue"]
            .as_f64()
            .is_some_and(|r| r < 0.0)
        {
            negative += 1;
        }
        if message.get("anonymousId").is_none() && message.get("userId").is_none() {
            no_ids += 1;
        }
        if let Some(login) = message["userId"].as_str() {
            people.insert(login.to_string());
        }
    }
    assert_eq!(broken, planted("events.jsonl", "broken_json"));
    assert_eq!(duplicates, planted("events.jsonl", "duplicate_message_id"));
    assert_eq!(negative, planted("events.jsonl", "negative_amount"));
    assert!(no_ids > 0 && no_ids <= planted("events.jsonl", "missing_required"));
    assert!(
        people.len() > 1500,
        "most people log in at some point: {}",
        people.len()
    );
    let bad: u64 = files["events.jsonl"]["planted"]
        .as_object()
        .expect("planted")
        .values()
        .map(|v| v.as_u64().unwrap_or(0))
        .sum();
    let ratio = bad as f64 / lines.len() as f64;
    assert!(
        (0.012..0.035).contains(&ratio),
        "about 2% bad event rows, got {ratio:.4}"
    );
    for kind in ["bad_timestamp", "bad_phone", "missing_required"] {
        assert!(planted("events.jsonl", kind) > 0, "{kind} planted");
    }

    // Tmall: GBK with Chinese headers; the planted negative amounts are really there.
    let bytes = std::fs::read(dir.path().join("tmall_orders.csv")).expect("tmall");
    assert!(
        std::str::from_utf8(&bytes).is_err(),
        "the Tmall report is GBK, not UTF-8"
    );
    let (text, _, had_errors) = encoding_rs::GBK.decode(&bytes);
    assert!(!had_errors);
    let records = csv_records(&text);
    assert_eq!(records[0][0], "订单编号");
    assert!(records[0].contains(&"买家实际支付金额".to_string()));
    assert_eq!(
        records.len() as u64 - 1,
        files["tmall_orders.csv"]["rows"].as_u64().expect("rows")
    );
    let paid = records[0]
        .iter()
        .position(|h| h == "买家实际支付金额")
        .expect("amount column");
    let negative = records[1..]
        .iter()
        .filter(|r| r.get(paid).is_some_and(|v| v.starts_with('-')))
        .count() as u64;
    assert_eq!(negative, planted("tmall_orders.csv", "negative_amount"));
    let short = records[1..]
        .iter()
        .filter(|r| r.len() != records[0].len())
        .count() as u64;
    assert_eq!(short, planted("tmall_orders.csv", "broken_record"));
    let statuses: std::collections::BTreeSet<&str> = records[1..]
        .iter()
        .filter_map(|r| r.get(7).map(String::as_str))
        .collect();
    assert!(
        statuses.contains("交易成功") && statuses.contains("交易关闭"),
        "{statuses:?}"
    );
    let quoted_phone = records[1..]
        .iter()
        .any(|r| r.get(13).is_some_and(|p| p.starts_with('\'')));
    let masked_phone = records[1..]
        .iter()
        .any(|r| r.get(13).is_some_and(|p| p.contains("****")));
    assert!(
        quoted_phone && masked_phone,
        "phones come quoted and masked as sellers see them"
    );

    // Youzan: API JSON and a later console export that revisits recent trades.
    let youzan = std::fs::read_to_string(dir.path().join("youzan_trades.jsonl")).expect("youzan");
    let trades: Vec<serde_json::Value> = youzan
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert_eq!(
        (youzan.lines().count() - trades.len()) as u64,
        planted("youzan_trades.jsonl", "broken_json")
    );
    assert!(trades.iter().any(|t| t["status"] == "TRADE_SUCCESS"));
    assert!(
        trades
            .iter()
            .any(|t| t["orders"].as_array().is_some_and(|o| o.len() > 1))
    );
    let export = std::fs::read(dir.path().join("youzan_export.csv")).expect("export");
    assert!(
        export.starts_with("\u{feff}".as_bytes()),
        "Excel-style UTF-8 with BOM"
    );
    let records = csv_records(
        std::str::from_utf8(&export)
            .expect("utf-8")
            .trim_start_matches('\u{feff}'),
    );
    let tids: std::collections::HashSet<&str> =
        trades.iter().filter_map(|t| t["tid"].as_str()).collect();
    let revisited = records[1..]
        .iter()
        .filter(|r| tids.contains(r[0].as_str()))
        .count();
    assert!(
        revisited * 10 > (records.len() - 1) * 9,
        "the export revisits trades of the API file"
    );

    // Overlap across platforms: phones on Youzan also appear in the Tmall report.
    let youzan_phones: std::collections::HashSet<&str> = trades
        .iter()
        .filter_map(|t| t["receiver_mobile"].as_str())
        .filter(|p| p.len() == 11)
        .collect();
    let (text, _, _) = encoding_rs::GBK.decode(&bytes);
    let overlap = csv_records(&text)[1..]
        .iter()
        .filter(|r| {
            r.get(13)
                .is_some_and(|p| youzan_phones.contains(p.trim_start_matches('\'')))
        })
        .count();
    assert!(overlap > 10, "customers shop on both platforms: {overlap}");
    assert!(
        !manifest["shared_devices"]
            .as_array()
            .expect("shared")
            .is_empty()
    );
}

#[test]
fn bad_options_are_refused() {
    let dir = tempfile::tempdir().expect("temp");
    let out = shoal(
        dir.path(),
        &[
            "demo-data",
            "--out",
            dir.path().to_str().expect("p"),
            "--users",
            "0",
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("at least one user"));
    let out = shoal(
        dir.path(),
        &["demo-data", "--out", "x", "--end", "2026-02-30"],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--end"));
}

/// The keys a world's files carry that must name one person or one order only.
fn world_keys(dir: &Path) -> BTreeMap<&'static str, std::collections::BTreeSet<String>> {
    let mut keys: BTreeMap<&'static str, std::collections::BTreeSet<String>> = BTreeMap::new();
    let lines = |name: &str| {
        std::fs::read_to_string(dir.join(name))
            .expect("read")
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .collect::<Vec<_>>()
    };
    for person in lines("truth.jsonl") {
        for kind in ["login_id", "youzan_buyer_id"] {
            if let Some(values) = person["identities"][kind].as_array() {
                let set = keys.entry(kind).or_default();
                set.extend(values.iter().filter_map(|v| v.as_str()).map(String::from));
            }
        }
    }
    for event in lines("events.jsonl") {
        if let Some(id) = event["properties"]["order_id"].as_str() {
            keys.entry("web_order_id")
                .or_default()
                .insert(id.to_string());
        }
    }
    for trade in lines("youzan_trades.jsonl") {
        if let Some(id) = trade["tid"].as_str() {
            keys.entry("youzan_tid").or_default().insert(id.to_string());
        }
    }
    keys
}

#[test]
fn parts_of_one_world_share_no_keys() {
    let dir = tempfile::tempdir().expect("temp");
    let part = |name: &str, seed: &str, first: &str| {
        let out = dir.path().join(name);
        json_ok(&shoal(
            &dir.path().join("unused-warehouse"),
            &[
                "demo-data",
                "--out",
                out.to_str().expect("path"),
                "--users",
                "400",
                "--seed",
                seed,
                "--first",
                first,
                "--json",
            ],
        ));
        world_keys(&out)
    };
    let (a, b) = (part("a", "7", "0"), part("b", "8", "400"));
    for kind in ["login_id", "youzan_buyer_id", "web_order_id", "youzan_tid"] {
        let (a, b) = (&a[kind], &b[kind]);
        assert!(
            a.len() > 20 && b.len() > 20,
            "{kind}: {} and {}",
            a.len(),
            b.len()
        );
        let shared: Vec<_> = a.intersection(b).collect();
        assert!(shared.is_empty(), "{kind} in both parts: {shared:?}");
    }
    // Without their own ranges, two parts do collide: the check above can fail.
    let c = part("c", "8", "0");
    assert!(a["login_id"].intersection(&c["login_id"]).count() > 0);
    assert!(a["web_order_id"].intersection(&c["web_order_id"]).count() > 0);
}
