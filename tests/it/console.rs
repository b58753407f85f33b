//! The web console in a real browser: headless Chromium driven by Playwright
//! (`tests/python/console.py`) against `shoal serve` on the sample world. What the pages show
//! is compared with the HTTP API's answers to hand-written requests, and viewer tokens must
//! see phones masked. Screenshots of every page land in `$CARGO_TARGET_DIR/console-screenshots`
//! (or `SHOAL_SCREENSHOTS`).

use std::path::PathBuf;

use serde_json::{Value, json};

use crate::tracking::python;
use crate::{demo_data, ingest_sample, json_ok, shoal, start_server};

fn screenshots() -> PathBuf {
    if let Some(dir) = std::env::var_os("SHOAL_SCREENSHOTS") {
        return PathBuf::from(dir);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"));
    target.join("console-screenshots")
}

fn post(server: &crate::Server, role: &str, path: &str, body: &Value) -> Value {
    let response = server
        .client(role)
        .post(format!("{}{path}", server.base))
        .json(body)
        .send()
        .expect("request");
    let status = response.status();
    let answer: Value = response.json().expect("json");
    assert!(status.is_success(), "{path}: {status} {answer}");
    answer
}

/// "1,169 (100.0%)" → 1169.
fn shown_number(text: &Value) -> f64 {
    let text = text.as_str().expect("text");
    let first = text.split_whitespace().next().expect("a number");
    first
        .trim_start_matches('−')
        .replace(',', "")
        .parse()
        .unwrap_or_else(|_| panic!("a number in {text:?}"))
}

#[test]
#[ignore = "needs Chromium and Playwright; ./scripts/test installs them and runs this"]
fn the_console_shows_what_the_api_answers_in_a_real_browser() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sample = dir.path().join("sample");
    let manifest = demo_data(&sample, 2000, 11);
    let wh = dir.path().join("wh");
    ingest_sample(&wh, &sample, &manifest, true);
    json_ok(&shoal(&wh, &["build", "--json", "--as-of", "2026-11-20"]));
    let location = format!("file://{}", wh.display());
    let server = start_server(&[
        "--warehouse",
        &location,
        "serve",
        "--build-every",
        "0",
        "--schedule-every",
        "0",
        "--rate-limit",
        "0",
    ]);
    // A pack for the set expression, made through the API.
    post(
        &server,
        "analyst",
        "/api/audiences",
        &json!({"name": "over_40", "sql": "SELECT user_id FROM users WHERE age > 40"}),
    );

    // A list to upload: three phones people have (one written the way people type it, one
    // twice), one nobody has, one that is not a phone.
    let phones = post(
        &server,
        "admin",
        "/api/query/sql",
        &json!({"sql": "SELECT phone FROM users WHERE phone IS NOT NULL ORDER BY user_id LIMIT 3"}),
    );
    let phones: Vec<String> = phones["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| r["phone"].as_str().expect("phone").to_string())
        .collect();
    assert_eq!(phones.len(), 3);
    let spaced = format!(
        "{} {} {}",
        &phones[1][3..6],
        &phones[1][6..10],
        &phones[1][10..]
    );
    let list = dir.path().join("crm.csv");
    std::fs::write(
        &list,
        format!(
            "phone\n{}\n{spaced}\n{}\n{}\n+8619900000000\nnot-a-phone\n",
            phones[0], phones[2], phones[0]
        ),
    )
    .expect("write list");

    let shots = screenshots();
    let tokens = json!({"viewer": server.token("viewer"), "analyst": server.token("analyst")});
    let out = std::process::Command::new(python())
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/python/console.py"
        ))
        .args([
            server.base.as_str(),
            &tokens.to_string(),
            &shots.display().to_string(),
            "2026-10-22",
            "2026-11-20",
        ])
        .env("SHOAL_UPLOAD_FILE", &list)
        .output()
        .expect("python");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(seen["errors"], json!([]), "no script errors in the pages");

    // The builder made the tree a person means, and counted what the API counts for it.
    let tree = json!({"all": [
        {"field": "gender", "op": "eq", "value": "male"},
        {"field": "age", "op": "between", "value": [25, 44]},
        {"event": "view_item", "window": {"last_days": 30}},
    ]});
    assert_eq!(seen["builder_tree"], tree);
    let api = post(
        &server,
        "analyst",
        "/api/query/count",
        &json!({"conditions": tree}),
    );
    let count = api["count"].as_u64().expect("count");
    assert!(count > 10, "a count worth comparing: {api}");
    assert_eq!(seen["builder_count"].as_u64(), Some(count));
    assert!(
        seen["builder_meta"].as_str().expect("meta").contains(" ms"),
        "{}",
        seen["builder_meta"]
    );

    // Saved as a dynamic pack: same size, the schedule previewed in words, stored as given.
    assert_eq!(seen["saved_size"].as_u64(), Some(count));
    let preview = seen["schedule_preview"].as_str().expect("preview");
    assert!(
        preview.contains("03:00") && preview.contains("CST"),
        "{preview}"
    );
    let pack: Value = server
        .client("analyst")
        .get(format!("{}/api/audiences/console_men", server.base))
        .send()
        .expect("show")
        .json()
        .expect("json");
    assert_eq!(pack["mode"], "dynamic");
    assert_eq!(pack["schedule"], "0 3 * * *");
    assert_eq!(pack["time_zone"], "Asia/Shanghai");
    assert_eq!(pack["definition"]["conditions"], tree);
    assert_eq!(seen["sql_people"].as_u64(), Some(count));

    // The set expression composed by dragging packs, against the same expression via the API.
    assert_eq!(seen["composed_expr"], "console_men - over_40");
    let api_expr = post(
        &server,
        "analyst",
        "/api/audiences",
        &json!({"name": "api_combo", "expr": "console_men - over_40"}),
    );
    let combo = api_expr["version"]["size"].as_u64().expect("size");
    assert!(combo > 0 && combo <= count, "{combo} of {count}");
    assert_eq!(seen["composed_count"].as_u64(), Some(combo));
    let saved: Value = server
        .client("analyst")
        .get(format!("{}/api/audiences/console_combo", server.base))
        .send()
        .expect("show")
        .json()
        .expect("json");
    assert_eq!(saved["size"].as_u64(), Some(combo));

    // The upload dialog's match report, counted by hand: 6 rows, 3 people, 1 unknown phone,
    // 1 invalid, 1 repeated.
    assert_eq!(
        seen["upload_report"],
        json!({"rows": 6, "matched": 3, "unmatched": 1, "invalid": 1, "duplicates": 1})
    );

    // The lookalike dialog made a pack of 50 outside the seed and showed its holdout check.
    let like: Value = server
        .client("analyst")
        .get(format!("{}/api/audiences/console_like", server.base))
        .send()
        .expect("show")
        .json()
        .expect("json");
    assert_eq!(like["size"], 50, "{like}");
    let report = seen["lookalike_report"].as_str().expect("report");
    assert!(
        report.starts_with("50 people added; holdout check:") && report.contains("lift"),
        "{report}"
    );

    // The funnel the page drew is the API's funnel.
    let funnel = post(
        &server,
        "viewer",
        "/api/reports/funnel",
        &json!({"steps": [{"event": "view_item"}, {"event": "add_to_cart"}, {"event": "purchase"}],
                "window": "7d", "from": "2026-10-22", "to": "2026-11-20"}),
    );
    let steps: Vec<u64> = funnel["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .map(|s| s["users"].as_u64().expect("users"))
        .collect();
    assert!(steps[2] > 0, "{steps:?}");
    assert_eq!(seen["funnel_users"], json!(steps));

    // The ROI view: the newest campaign over its delivery days, terms shown separately.
    let campaigns: Value = server
        .client("viewer")
        .get(format!("{}/api/reports/campaigns", server.base))
        .send()
        .expect("campaigns")
        .json()
        .expect("json");
    let newest = &campaigns["campaigns"][0];
    assert_eq!(seen["roi_campaign"], newest["campaign"]);
    assert_eq!(seen["roi_from"], newest["first_day"]);
    assert_eq!(seen["roi_to"], newest["last_day"]);
    let roi = post(
        &server,
        "viewer",
        "/api/reports/roi",
        &json!({"campaign": newest["campaign"], "from": newest["first_day"], "to": newest["last_day"],
                "days": 7, "conversion": {"event": "purchase"},
                "positive": [{"metric": "revenue", "value": 0.35}],
                "negative": [{"metric": {"event": "unfollow_official_account"}, "value": 8}],
                "cost": {"per_delivery": 0.05, "fixed": 500}}),
    );
    let shown = &seen["roi"];
    assert_eq!(
        shown_number(&shown["target"]),
        roi["target"].as_f64().expect("target")
    );
    assert_eq!(
        shown_number(&shown["reached"]),
        roi["reached"].as_f64().expect("reached")
    );
    assert_eq!(
        shown_number(&shown["converted"]),
        roi["converted"].as_f64().expect("converted")
    );
    let cost = roi["cost"].as_f64().expect("cost");
    assert!(
        (shown_number(&shown["cost"]) - cost).abs() < 0.01,
        "{shown} {cost}"
    );
    let ratio = roi["roi"].as_f64().expect("roi");
    let shown_roi: f64 = shown["roi"]
        .as_str()
        .expect("roi")
        .trim_end_matches('%')
        .parse()
        .expect("percent");
    assert!(
        (shown_roi - ratio * 100.0).abs() < 0.06,
        "{shown_roi} vs {ratio}"
    );
    let terms = shown["terms"].as_str().expect("terms");
    assert!(
        terms.contains("+ revenue")
            && terms.contains("− count of unfollow_official_account")
            && terms.contains("− cost"),
        "{terms}"
    );
    assert!(seen["retention_rows"].as_u64().expect("rows") > 1);
    // Saved from the ROI view: the stored row is the API's answer.
    let row = &seen["saved_roi_row"];
    assert_eq!(row["campaign"], roi["campaign"]);
    assert_eq!(row["version"], "1");
    for key in ["target", "reached", "converted"] {
        assert_eq!(row[key], roi[key].to_string(), "{key}: {row}");
    }

    // Roles: the analyst sees the SQL page and exports phones hashed; the viewer signed in
    // through /?token= (dropped from the address), has no SQL page, cannot save or refresh,
    // and reads phones masked.
    assert!(
        seen["analyst_nav"]
            .as_array()
            .expect("nav")
            .contains(&json!("SQL"))
    );
    assert_eq!(seen["analyst_export_phone"], "hashed");
    assert!(!seen["viewer_url"].as_str().expect("url").contains("token"));
    assert!(
        !seen["viewer_nav"]
            .as_array()
            .expect("nav")
            .contains(&json!("SQL"))
    );
    assert_eq!(seen["viewer_can_save"], 0);
    assert_eq!(seen["viewer_can_refresh"], 0);
    let phones: Vec<&str> = seen["viewer_phones"]
        .as_array()
        .expect("phones")
        .iter()
        .filter_map(|p| p.as_str())
        .filter(|p| !p.is_empty())
        .collect();
    assert!(!phones.is_empty(), "some previewed people have phones");
    for phone in &phones {
        assert!(
            phone.starts_with("+86") && phone.contains("****") && phone.len() == 14,
            "masked for a viewer: {phone}"
        );
    }
    assert_eq!(seen["viewer_export_phone"], "hashed");

    // Chinese UI text.
    assert_eq!(
        seen["zh_nav"],
        json!(["圈选人群", "SQL 查询", "人群包", "报表", "数据目录"])
    );
    for page in [
        "02-builder",
        "04-audience-detail",
        "06-audiences",
        "07-funnel",
        "08-roi",
        "13-viewer-builder",
    ] {
        let file = shots.join(format!("{page}.png"));
        let size = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
        assert!(size > 10_000, "screenshot {} written", file.display());
    }
}
