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
