//! `shoal serve` and `shoal demo` as a user runs them.

use std::process::Command;

use crate::start_server as start;

#[tokio::test]
async fn the_http_api_answers() {
    let dir = tempfile::tempdir().expect("temp");
    let warehouse = format!("file://{}", dir.path().join("wh").display());
    let server = start(&["--warehouse", &warehouse, "serve"]);
    let client = server.async_client("viewer");
    let get = |path: &str| client.get(format!("{}{path}", server.base)).send();

    let health = get("/healthz").await.expect("healthz");
    assert_eq!(health.status(), 200);
    let ready: serde_json::Value = get("/readyz")
        .await
        .expect("readyz")
        .json()
        .await
        .expect("json");
    assert_eq!(ready["status"], "ready");
    let catalog: serde_json::Value = get("/api/catalog")
        .await
        .expect("catalog")
        .json()
        .await
        .expect("json");
    assert!(
        catalog["definition"]["tables"]
            .as_array()
            .expect("tables")
            .len()
            >= 8
    );
    let check: serde_json::Value = get("/api/catalog/check")
        .await
        .expect("check")
        .json()
        .await
        .expect("json");
    assert_eq!(check["status"], "OK");
    let tables: serde_json::Value = get("/api/tables")
        .await
        .expect("tables")
        .json()
        .await
        .expect("json");
    assert!(
        tables["tables"]
            .as_array()
            .expect("t")
            .iter()
            .any(|t| t["table"] == "users")
    );
    let history = get("/api/tables/shoal_catalog/history?limit=1")
        .await
        .expect("history");
    assert_eq!(history.status(), 200);
    let history: serde_json::Value = history.json().await.expect("json");
    assert_eq!(history["commits"].as_array().expect("commits").len(), 1);

    let missing = get("/api/tables/nothing_here/history")
        .await
        .expect("missing");
    assert_eq!(missing.status(), 404);
    let body: serde_json::Value = missing.json().await.expect("json");
    assert_eq!(body["error"]["code"], "not_found");
    assert!(
        body["error"]["message"]
            .as_str()
            .expect("message")
            .contains("nothing_here")
    );
    let bad = get("/api/tables/..%2Fetc/history").await.expect("bad");
    assert_eq!(bad.status(), 400);
    let body: serde_json::Value = bad.json().await.expect("json");
    assert_eq!(body["error"]["code"], "bad_request");
}

#[test]
fn demo_prepares_the_warehouse() {
    let dir = tempfile::tempdir().expect("temp");
    let data = dir.path().join("demo");
    let warehouse = format!("file://{}", dir.path().join("wh").display());
    let out = Command::new(env!("CARGO_BIN_EXE_shoal"))
        .args([
            "--warehouse",
            &warehouse,
            "demo",
            "--no-serve",
            "--users",
            "300",
        ])
        .arg("--data")
        .arg(&data)
        .output()
        .expect("demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(data.join("events.jsonl").is_file());
    assert!(data.join("tmall_orders.csv").is_file());
    assert!(
        stdout.contains("warehouse") && stdout.contains("events"),
        "{stdout}"
    );
    assert!(dir.path().join("wh/events/_delta_log").is_dir());
    // A second run reuses the sample world instead of rewriting it.
    let before = std::fs::metadata(data.join("events.jsonl"))
        .and_then(|m| m.modified())
        .expect("mtime");
    let again = Command::new(env!("CARGO_BIN_EXE_shoal"))
        .args([
            "--warehouse",
            &warehouse,
            "demo",
            "--no-serve",
            "--users",
            "300",
        ])
        .arg("--data")
        .arg(&data)
        .output()
        .expect("demo again");
    assert!(again.status.success());
    let after = std::fs::metadata(data.join("events.jsonl"))
        .and_then(|m| m.modified())
        .expect("mtime");
    assert_eq!(before, after);
}

#[test]
fn the_console_is_served_from_the_binary() {
    use std::io::Read;

    let dir = tempfile::tempdir().expect("temp");
    let warehouse = format!("file://{}", dir.path().join("wh").display());
    let server = start(&["--warehouse", &warehouse, "serve", "--build-every", "0"]);
    // The page itself needs no token: it asks for one.
    let anonymous = reqwest::blocking::Client::new();
    let page = anonymous
        .get(format!("{}/", server.base))
        .send()
        .expect("page");
    assert_eq!(page.status(), 200);
    let header = |r: &reqwest::blocking::Response, name: &str| {
        r.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    assert!(header(&page, "content-type").starts_with("text/html"));
    assert!(header(&page, "content-security-policy").contains("default-src 'self'"));
    let html = page.text().expect("html");
    assert!(
        html.contains("id=\"app\"") && html.contains("/assets/app.js"),
        "{html}"
    );

    let script = anonymous
        .get(format!("{}/assets/app.js", server.base))
        .header("Accept-Encoding", "gzip, deflate")
        .send()
        .expect("script");
    assert_eq!(script.status(), 200);
    assert_eq!(header(&script, "content-encoding"), "gzip");
    assert!(header(&script, "content-type").starts_with("text/javascript"));
    let tag = header(&script, "etag");
    assert!(tag.len() > 10, "an entity tag: {tag:?}");
    let mut unzipped = String::new();
    flate2::read::GzDecoder::new(&script.bytes().expect("bytes")[..])
        .read_to_string(&mut unzipped)
        .expect("gzip");
    assert!(unzipped.contains("/api/whoami"));
    let plain = anonymous
        .get(format!("{}/assets/app.js", server.base))
        .send()
        .expect("plain");
    assert_eq!(header(&plain, "content-encoding"), "");
    assert_eq!(plain.text().expect("text"), unzipped);
    let cached = anonymous
        .get(format!("{}/assets/app.js", server.base))
        .header("If-None-Match", &tag)
        .send()
        .expect("revalidate");
    assert_eq!(cached.status(), 304);
    let style = anonymous
        .get(format!("{}/assets/app.css", server.base))
        .send()
        .expect("style");
    assert!(header(&style, "content-type").starts_with("text/css"));

    // The cron picker's preview: the schedule in words and the next runs in its zone.
    let client = server.client("viewer");
    let schedule = |query: &str| {
        let r = client
            .get(format!("{}/api/schedule?{query}", server.base))
            .send()
            .expect("schedule");
        let status = r.status().as_u16();
        (status, r.json::<serde_json::Value>().expect("json"))
    };
    let (status, answer) = schedule("cron=30%208%20*%20*%201&time_zone=Asia/Shanghai");
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["time_zone"], "Asia/Shanghai");
    let runs = answer["next_runs"].as_array().expect("runs");
    assert_eq!(runs.len(), 5);
    for run in runs {
        let text = run.as_str().expect("run");
        let day = chrono::NaiveDate::parse_from_str(&text[..10], "%Y-%m-%d").expect("date");
        assert_eq!(
            chrono::Datelike::weekday(&day),
            chrono::Weekday::Mon,
            "{text}"
        );
        assert!(text.ends_with("08:30 CST"), "{text}");
    }
    let utc = answer["next_runs_utc"][0].as_str().expect("utc");
    assert!(
        utc.contains("T00:30:00"),
        "08:30 in Shanghai is 00:30 UTC: {utc}"
    );
    for (query, path) in [
        ("cron=61%20*%20*%20*%20*", "schedule"),
        ("cron=0%203%20*%20*", "schedule"),
        ("cron=0%203%20*%20*%20*&time_zone=Mars/Olympus", "time_zone"),
    ] {
        let (status, body) = schedule(query);
        assert_eq!(status, 400, "{query}: {body}");
        assert_eq!(body["error"]["path"], path, "{query}: {body}");
    }
    let (status, body) = schedule("time_zone=UTC");
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .expect("message")
            .contains("cron")
    );
    let unsigned = anonymous
        .get(format!(
            "{}/api/schedule?cron=0%203%20*%20*%20*",
            server.base
        ))
        .send()
        .expect("unsigned");
    assert_eq!(unsigned.status(), 401);
}
