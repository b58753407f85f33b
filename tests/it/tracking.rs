//! The tracking API with real clients: Segment's Python SDK, and hostile requests.

use std::path::Path;
use std::process::Command;

use crate::Server;

fn serve(warehouse: &Path) -> Server {
    let location = format!("file://{}", warehouse.display());
    crate::start_server(&["--warehouse", &location, "serve"])
}

fn write_key(warehouse: &Path) -> String {
    let out = crate::shoal(warehouse, &["writekey", "create", "web", "--json"]);
    crate::json_ok(&out)["write_key"]
        .as_str()
        .expect("key")
        .to_string()
}

pub(crate) fn python() -> std::path::PathBuf {
    std::env::var_os("SHOAL_TEST_VENV")
        .map(|v| Path::new(&v).join("bin/python"))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| panic!("the test venv is missing: run ./scripts/test"))
}

#[test]
#[ignore = "needs segment-analytics-python and deltalake; ./scripts/test installs them and runs this"]
fn segments_python_sdk_works_unchanged() {
    let dir = tempfile::tempdir().expect("temp");
    let wh = dir.path().join("wh");
    let key = write_key(&wh);
    let server = serve(&wh);
    let out = Command::new(python())
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/python/segment_sdk.py"
        ))
        .arg(&server.base)
        .arg(&key)
        .arg(wh.join("events"))
        .output()
        .expect("run the SDK script");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let result: serde_json::Value = serde_json::from_str(stdout.trim()).expect("json");
    assert_eq!(result["landed"], 125);
    assert_eq!(result["identify_phone"], "+8613812345678");
    assert_eq!(
        result["types"],
        serde_json::json!(["alias", "group", "identify", "page", "screen", "track"])
    );
}

#[tokio::test]
async fn bad_requests_get_clear_errors_and_good_ones_are_committed_before_200() {
    let dir = tempfile::tempdir().expect("temp");
    let wh = dir.path().join("wh");
    let key = write_key(&wh);
    let server = serve(&wh);
    let client = reqwest::Client::new();
    let post = |path: &str, body: String, key: Option<&str>| {
        let mut request = client.post(format!("{}{path}", server.base)).body(body);
        if let Some(key) = key {
            request = request.basic_auth(key, Some(""));
        }
        request.send()
    };
    let error = |response: reqwest::Response| async move {
        let status = response.status().as_u16();
        let body: serde_json::Value = response.json().await.expect("json error");
        (
            status,
            body["error"]["message"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        )
    };

    let (status, message) = error(post("/v1/track", "{}".into(), None).await.expect("send")).await;
    assert_eq!(status, 401);
    assert!(message.contains("write key"), "{message}");
    let (status, _) = error(
        post("/v1/track", "{}".into(), Some("wk_wrong"))
            .await
            .expect("send"),
    )
    .await;
    assert_eq!(status, 401);
    let (status, message) = error(
        post("/v1/track", "{not json".into(), Some(&key))
            .await
            .expect("send"),
    )
    .await;
    assert_eq!(
        (status, message.starts_with("body: not JSON")),
        (400, true),
        "{message}"
    );
    let (status, message) = error(
        post("/v1/batch", r#"{"batch": 3}"#.into(), Some(&key))
            .await
            .expect("send"),
    )
    .await;
    assert_eq!(status, 400);
    assert!(message.starts_with("batch:"), "{message}");
    let huge = format!(
        r#"{{"batch":[{}]}}"#,
        vec![
            format!(
                r#"{{"type":"track","anonymousId":"a","event":"{}"}}"#,
                "x".repeat(1000)
            );
            600
        ]
        .join(",")
    );
    let (status, message) = error(post("/v1/batch", huge, Some(&key)).await.expect("send")).await;
    assert_eq!(status, 413);
    assert!(message.contains("512000"), "{message}");
    // The write key may also come in the body, as some server-side libraries send it.
    let ok = post(
        "/v1/track",
        format!(r#"{{"writeKey":"{key}","anonymousId":"a","event":"opened","messageId":"k-1"}}"#),
        None,
    )
    .await
    .expect("send");
    assert_eq!(ok.status(), 200);

    // One good, one too large (32 KB per message), one without an event: 200, and all accounted.
    let big = format!(
        r#"{{"type":"track","anonymousId":"a","event":"x","messageId":"k-big","properties":{{"blob":"{}"}}}}"#,
        "y".repeat(33 * 1024)
    );
    let body = format!(
        r#"{{"batch":[{{"type":"track","anonymousId":"a","event":"bought","messageId":"k-2"}},{big},{{"type":"track","anonymousId":"a","messageId":"k-3"}}]}}"#
    );
    let response = post("/v1/batch", body, Some(&key)).await.expect("send");
    assert_eq!(response.status(), 200);
    let report: serde_json::Value = response.json().await.expect("json");
    assert_eq!(
        (
            report["received"].as_u64(),
            report["landed"].as_u64(),
            report["quarantined"].as_u64()
        ),
        (Some(3), Some(1), Some(2))
    );

    // Acknowledged means committed: a fresh reader sees the rows right away.
    let rows = |name: &str| crate::table_rows(&wh, name);
    assert_eq!(rows("events"), Some(2));
    assert_eq!(rows("quarantine"), Some(2));
    let list = crate::json_ok(&crate::shoal(
        &wh,
        &["quarantine", "list", "--reason", "too_large", "--json"],
    ));
    assert_eq!(list["rows"][0]["location"], "POST /v1/batch#1");
}

#[tokio::test]
async fn concurrent_requests_share_commits_and_each_gets_its_own_counts() {
    let dir = tempfile::tempdir().expect("temp");
    let wh = dir.path().join("wh");
    let key = write_key(&wh);
    let server = serve(&wh);
    let client = reqwest::Client::new();
    const REQUESTS: usize = 24;
    // Request r: ten new messages m-r-0..9, the first message of request r-1 again, and one
    // message without an event (quarantined). 240 distinct ids, 23 repeats, 24 bad.
    let body = |r: usize| {
        let mut batch: Vec<serde_json::Value> = (0..10)
            .map(|i| {
                serde_json::json!({"type": "track", "anonymousId": format!("a{r}"),
                    "event": "viewed", "messageId": format!("m-{r}-{i}")})
            })
            .collect();
        if r > 0 {
            batch.push(
                serde_json::json!({"type": "track", "anonymousId": format!("a{}", r - 1),
                "event": "viewed", "messageId": format!("m-{}-0", r - 1)}),
            );
        }
        batch.push(serde_json::json!({"type": "track", "anonymousId": "a", "messageId": format!("bad-{r}")}));
        serde_json::json!({ "batch": batch }).to_string()
    };
    let send = |body: String| {
        client
            .post(format!("{}/v1/batch", server.base))
            .basic_auth(&key, Some(""))
            .body(body)
            .send()
    };
    let round = || async {
        let sent = futures::future::join_all((0..REQUESTS).map(|r| send(body(r)))).await;
        let mut answers = Vec::new();
        for response in sent {
            let response = response.expect("send");
            assert_eq!(response.status(), 200);
            answers.push(response.json::<serde_json::Value>().await.expect("json"));
        }
        answers
    };
    let n = |a: &serde_json::Value, k: &str| a[k].as_u64().expect(k);
    let total =
        |answers: &[serde_json::Value], k: &str| answers.iter().map(|a| n(a, k)).sum::<u64>();

    let first = round().await;
    for (r, a) in first.iter().enumerate() {
        let expected = if r > 0 { 12 } else { 11 };
        assert_eq!(n(a, "received"), expected, "{a}");
        assert_eq!(n(a, "quarantined"), 1, "{a}");
        assert_eq!(
            n(a, "received"),
            n(a, "landed") + n(a, "quarantined") + n(a, "duplicates"),
            "{a}"
        );
    }
    assert_eq!(total(&first, "landed"), 240);
    assert_eq!(total(&first, "duplicates"), 23);
    // Requests that arrived while a commit ran were committed together.
    let batch_ids: std::collections::HashSet<&str> = first
        .iter()
        .map(|a| a["batch_id"].as_str().expect("id"))
        .collect();
    assert!(batch_ids.len() < REQUESTS, "{} batches", batch_ids.len());
    let rows = |name: &str| crate::table_rows(&wh, name);
    assert_eq!(rows("events"), Some(240));
    assert_eq!(rows("quarantine"), Some(REQUESTS as u64));
    assert_eq!(rows("batches"), Some(batch_ids.len() as u64));

    // The same requests again: every good message is a duplicate now.
    let again = round().await;
    assert_eq!(total(&again, "landed"), 0);
    assert_eq!(total(&again, "duplicates"), 240 + 23);
    assert_eq!(rows("events"), Some(240));

    // A message landed by another process after the server read the ids is a duplicate too.
    let file = dir.path().join("late.jsonl");
    std::fs::write(
        &file,
        r#"{"type":"track","anonymousId":"z","event":"viewed","messageId":"late-1"}"#,
    )
    .expect("write");
    let landed = crate::json_ok(&crate::shoal(
        &wh,
        &[
            "ingest",
            "--source",
            "segment",
            "--json",
            file.to_str().expect("p"),
        ],
    ));
    assert_eq!(landed["landed"], 1, "{landed}");
    let late = send(
        r#"{"batch":[{"type":"track","anonymousId":"z","event":"viewed","messageId":"late-1"},
            {"type":"track","anonymousId":"z","event":"viewed","messageId":"late-2"}]}"#
            .into(),
    )
    .await
    .expect("send")
    .json::<serde_json::Value>()
    .await
    .expect("json");
    assert_eq!(
        (n(&late, "landed"), n(&late, "duplicates")),
        (1, 1),
        "{late}"
    );
    assert_eq!(rows("events"), Some(242));
}

#[tokio::test]
async fn a_busy_tracking_server_keeps_its_bookkeeping_tables_compact() {
    let dir = tempfile::tempdir().expect("temp");
    let wh = dir.path().join("wh");
    let key = write_key(&wh);
    let server = serve(&wh);
    let client = reqwest::Client::new();
    // One commit per request, each adding a file to `batches`, past the compaction threshold.
    let requests = shoal_ingest::COMPACT_AFTER_FILES as u64 + 6;
    for i in 0..requests {
        let response = client
            .post(format!("{}/v1/track", server.base))
            .basic_auth(&key, Some(""))
            .body(format!(
                r#"{{"anonymousId":"a","event":"viewed","messageId":"c-{i}"}}"#
            ))
            .send()
            .await
            .expect("send");
        assert_eq!(response.status(), 200);
    }
    let listed = crate::json_ok(&crate::shoal(&wh, &["catalog", "tables", "--json"]));
    let table = |name: &str| {
        listed["tables"]
            .as_array()
            .expect("tables")
            .iter()
            .find(|t| t["table"] == name)
            .cloned()
            .expect("table")
    };
    let (batches, events) = (table("batches"), table("events"));
    // Every batch is recorded once, in fewer files than batches.
    assert_eq!(batches["rows"].as_u64(), Some(requests), "{batches}");
    let files = batches["files"].as_u64().expect("files");
    assert!(
        files < shoal_ingest::COMPACT_AFTER_FILES as u64,
        "{batches}"
    );
    assert_eq!(events["rows"].as_u64(), Some(requests), "{events}");
}

#[tokio::test]
async fn files_can_be_uploaded_over_http() {
    let dir = tempfile::tempdir().expect("temp");
    let wh = dir.path().join("wh");
    let data = dir.path().join("data");
    crate::json_ok(&crate::shoal(
        &wh,
        &[
            "demo-data",
            "--out",
            data.to_str().expect("p"),
            "--users",
            "300",
            "--json",
        ],
    ));
    let key = write_key(&wh);
    let server = serve(&wh);
    let client = reqwest::Client::new();
    let tmall = std::fs::read(data.join("tmall_orders.csv")).expect("tmall");
    let upload = |query: &str, body: Vec<u8>, key: Option<&str>| {
        let mut request = client
            .post(format!("{}/api/ingest?{query}", server.base))
            .body(body);
        if let Some(key) = key {
            request = request.basic_auth(key, Some(""));
        }
        request.send()
    };
    let response = upload(
        "source=tmall&filename=tmall_orders.csv",
        tmall.clone(),
        Some(&key),
    )
    .await
    .expect("upload");
    assert_eq!(response.status(), 200);
    let report: serde_json::Value = response.json().await.expect("json");
    let n = |k: &str| report[k].as_u64().expect(k);
    assert!(n("landed") > 0);
    assert_eq!(
        n("received"),
        n("landed") + n("quarantined") + n("duplicates")
    );
    // The same upload again lands nothing new.
    let again: serde_json::Value = upload(
        "source=tmall&filename=tmall_orders.csv",
        tmall.clone(),
        Some(&key),
    )
    .await
    .expect("upload")
    .json()
    .await
    .expect("json");
    assert_eq!(again["landed"], 0);

    assert_eq!(
        upload("source=tmall", tmall.clone(), None)
            .await
            .expect("send")
            .status(),
        401
    );
    assert_eq!(
        upload("source=fax", tmall.clone(), Some(&key))
            .await
            .expect("send")
            .status(),
        400
    );
    assert_eq!(
        upload("source=tmall&filename=..%2F..%2Fx.csv", tmall, Some(&key))
            .await
            .expect("send")
            .status(),
        400
    );
    let wrong = upload(
        "source=tmall&filename=t.csv",
        "a,b\n1,2\n".into(),
        Some(&key),
    )
    .await
    .expect("send");
    assert_eq!(wrong.status(), 400);
    let body: serde_json::Value = wrong.json().await.expect("json");
    assert!(
        body["error"]["message"]
            .as_str()
            .expect("m")
            .contains("lacks required columns"),
        "{body}"
    );
}
