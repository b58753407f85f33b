//! `shoal count`, `shoal sql` and the query API on a small world whose answers are counted by
//! hand, and random condition trees checked against DuckDB.

use std::path::Path;

use serde_json::{Value, json};

use crate::{
    Server, demo_data, ingest_sample, ingest_segment, json_ok, shoal, start_server, stdout_ok,
};

/// Four people, counted by hand below. Identify calls on 2026-11-01; behaviour after.
///
/// | person | gender | age | city | level | job  | events (Beijing dates)                          |
/// |--------|--------|-----|------|-------|------|-------------------------------------------------|
/// | a      | male   | 40  | 上海 | gold  | true | view_item ×3 11-18, purchase 11-19              |
/// | b      | female | 22  | 杭州 | none  | –    | view_item 11-01                                 |
/// | c      | –      | –   | –    | –     | –    | add_to_cart 11-20                               |
/// | d      | male   | 55  | 北京 | –     | false| view_item 11-19 (category 净水器, price 1999)   |
fn small_world(dir: &Path) -> std::path::PathBuf {
    let wh = dir.join("wh");
    let identify = |id: &str, login: &str, traits: Value| {
        json!({"type": "identify", "messageId": id, "userId": login, "anonymousId": format!("anon-{login}"),
               "timestamp": "2026-11-01T02:00:00Z", "traits": traits})
    };
    let track = |id: &str, login: &str, event: &str, at: &str, properties: Value| {
        json!({"type": "track", "messageId": id, "userId": login, "anonymousId": format!("anon-{login}"),
               "event": event, "timestamp": at, "properties": properties})
    };
    let lines = [
        identify(
            "i-a",
            "a",
            json!({"gender": "male", "age": 40, "city": "上海", "member_level": "gold", "has_job": true}),
        ),
        identify(
            "i-b",
            "b",
            json!({"gender": "female", "age": 22, "city": "杭州", "member_level": "none"}),
        ),
        identify("i-c", "c", json!({})),
        identify(
            "i-d",
            "d",
            json!({"gender": "male", "age": 55, "city": "北京", "has_job": false}),
        ),
        track("a1", "a", "view_item", "2026-11-18T02:00:00Z", json!({})),
        track("a2", "a", "view_item", "2026-11-18T03:00:00Z", json!({})),
        track("a3", "a", "view_item", "2026-11-18T04:00:00Z", json!({})),
        track(
            "a4",
            "a",
            "purchase",
            "2026-11-19T02:00:00Z",
            json!({"revenue": 99}),
        ),
        track("b1", "b", "view_item", "2026-11-01T03:00:00Z", json!({})),
        track("c1", "c", "add_to_cart", "2026-11-20T02:00:00Z", json!({})),
        track(
            "d1",
            "d",
            "view_item",
            "2026-11-19T02:00:00Z",
            json!({"category": "净水器", "price": 1999}),
        ),
    ];
    let file = dir.join("events.jsonl");
    let text: Vec<String> = lines.iter().map(Value::to_string).collect();
    std::fs::write(&file, text.join("\n") + "\n").expect("write");
    ingest_segment(&wh, &file);
    json_ok(&shoal(&wh, &["build", "--json", "--as-of", "2026-11-20"]));
    wh
}

/// `shoal count` of `tree` on `path` (auto or scan), evaluated on 2026-11-20.
fn count(wh: &Path, dir: &Path, tree: &Value, path: &str) -> Value {
    let file = dir.join("tree.json");
    std::fs::write(&file, tree.to_string()).expect("write tree");
    json_ok(&shoal(
        wh,
        &[
            "count",
            "--conditions",
            file.to_str().expect("path"),
            "--evaluated-at",
            "2026-11-20",
            "--path",
            path,
            "--json",
        ],
    ))
}

#[test]
fn condition_trees_count_what_hand_counting_gives_on_both_paths() {
    let dir = tempfile::tempdir().expect("dir");
    let wh = small_world(dir.path());
    let male = json!({"field": "gender", "op": "eq", "value": "male"});
    let cases: Vec<(Value, u64, Option<&str>)> = vec![
        (json!({"all": []}), 4, Some("bitmap")),
        (json!({"any": []}), 0, Some("bitmap")),
        (male.clone(), 2, Some("bitmap")),
        (json!({"not": male}), 2, Some("bitmap")),
        // ne keeps only people who have a value: c has no gender.
        (
            json!({"field": "gender", "op": "ne", "value": "male"}),
            1,
            Some("bitmap"),
        ),
        (
            json!({"field": "gender", "op": "is_null"}),
            1,
            Some("bitmap"),
        ),
        // [35, 54] is the buckets 35-45 and 45-55; [35, 55] is not whole buckets.
        (
            json!({"field": "age", "op": "between", "value": [35, 54]}),
            1,
            Some("bitmap"),
        ),
        (
            json!({"field": "age", "op": "between", "value": [35, 55]}),
            2,
            Some("scan"),
        ),
        (
            json!({"field": "age", "op": "lt", "value": 35}),
            1,
            Some("bitmap"),
        ),
        (
            json!({"event": "view_item", "window": {"from": "T-7", "to": "T"}}),
            2,
            Some("bitmap"),
        ),
        (
            json!({"event": "view_item", "window": {"last_days": 2}}),
            1,
            Some("bitmap"),
        ),
        (json!({"event": "view_item"}), 3, Some("bitmap")),
        (
            json!({"event": "view_item", "count": {"op": "ge", "value": 2}}),
            1,
            Some("scan"),
        ),
        (
            json!({"event": "view_item", "count": {"op": "lt", "value": 2}}),
            3,
            Some("scan"),
        ),
        (json!({"not": {"event": "purchase"}}), 3, Some("bitmap")),
        (
            json!({"event": "purchase", "count": {"op": "eq", "value": 0}}),
            3,
            Some("bitmap"),
        ),
        (
            json!({"all": [male, {"event": "view_item", "where": [{"field": "category", "op": "eq", "value": "净水器"}]}]}),
            1,
            Some("mixed"),
        ),
        (
            json!({"event": "view_item", "where": [{"field": "price", "op": "ge", "value": 1999}]}),
            1,
            Some("scan"),
        ),
        (
            json!({"any": [{"field": "member_level", "op": "eq", "value": "gold"},
                           {"field": "has_job", "op": "eq", "value": false}]}),
            2,
            Some("bitmap"),
        ),
        (
            json!({"field": "has_job", "op": "ne", "value": true}),
            1,
            Some("bitmap"),
        ),
        (json!({"derived": "middle_aged_male"}), 2, None),
        (
            json!({"field": "city", "op": "in", "value": ["上海", "杭州"]}),
            2,
            Some("scan"),
        ),
        (
            json!({"field": "city", "op": "prefix", "value": "上"}),
            1,
            Some("scan"),
        ),
        (
            json!({"field": "city", "op": "not_in", "value": ["上海"]}),
            2,
            Some("scan"),
        ),
        (
            json!({"field": "city", "op": "contains", "value": "州"}),
            1,
            Some("scan"),
        ),
        (
            json!({"field": "last_seen", "op": "ge", "value": "T-2"}),
            3,
            Some("scan"),
        ),
        (
            json!({"field": "last_seen", "op": "between", "value": ["2026-11-01", "2026-11-18"]}),
            1,
            Some("scan"),
        ),
        // The last day of a range is included whole (a: 2026-11-19 10:00 Beijing).
        (
            json!({"field": "last_seen", "op": "between", "value": ["2026-11-01", "2026-11-19"]}),
            3,
            Some("scan"),
        ),
        (
            json!({"orders": "count", "op": "ge", "value": 1}),
            0,
            Some("scan"),
        ),
        (
            json!({"orders": "amount", "op": "lt", "value": 100}),
            4,
            Some("scan"),
        ),
        // Negations only, in either order.
        (
            json!({"all": [{"not": {"event": "purchase"}}, {"not": {"field": "city", "op": "eq", "value": "杭州"}}]}),
            2,
            Some("mixed"),
        ),
        (
            json!({"all": [{"not": {"field": "city", "op": "eq", "value": "杭州"}}, {"not": {"event": "purchase"}}]}),
            2,
            Some("mixed"),
        ),
    ];
    for (tree, expected, path) in &cases {
        let auto = count(&wh, dir.path(), tree, "auto");
        let scan = count(&wh, dir.path(), tree, "scan");
        assert_eq!(
            auto["count"],
            json!(expected),
            "auto path of {tree}: {auto}"
        );
        assert_eq!(
            scan["count"],
            json!(expected),
            "scan path of {tree}: {scan}"
        );
        assert_eq!(scan["path"], "scan");
        if let Some(path) = path {
            assert_eq!(auto["path"], json!(path), "path of {tree}");
        }
        assert_eq!(auto["evaluated_at"], "2026-11-20");
        assert!(auto["snapshot"]["users"].is_u64(), "{auto}");
    }
}

#[test]
fn sql_pulls_are_read_only_and_come_in_every_format() {
    let dir = tempfile::tempdir().expect("dir");
    let wh = small_world(dir.path());
    let refused = [
        "CREATE TABLE x AS SELECT 1",
        "CREATE EXTERNAL TABLE x STORED AS CSV LOCATION '/etc/passwd'",
        "INSERT INTO users (user_id) VALUES (1)",
        "COPY users TO '/tmp/out.csv'",
        "DROP TABLE users",
        "SET datafusion.execution.batch_size = 1",
        "CREATE VIEW v AS SELECT 1",
        "DELETE FROM users",
        "SELECT * FROM '/etc/passwd'",
        "EXPLAIN CREATE TABLE x AS SELECT 1",
    ];
    for sql in refused {
        let out = shoal(&wh, &["sql", sql]);
        assert!(!out.status.success(), "{sql} must be refused");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("error:"), "{sql}: {err}");
        assert!(!err.contains("panicked"), "{sql}: {err}");
    }
    let out = json_ok(&shoal(
        &wh,
        &[
            "sql",
            "SELECT gender, count(*) AS n FROM users GROUP BY gender ORDER BY gender NULLS LAST",
            "--format",
            "json",
        ],
    ));
    assert_eq!(
        out["rows"],
        json!([{"gender": "female", "n": 1}, {"gender": "male", "n": 2}, {"n": 1}])
    );
    let csv = stdout_ok(&shoal(
        &wh,
        &[
            "sql",
            "SELECT event_name, count(*) AS n FROM events WHERE event_type = 'track' GROUP BY 1 ORDER BY 1",
            "--format",
            "csv",
        ],
    ));
    assert_eq!(
        csv,
        "event_name,n\nadd_to_cart,1\npurchase,1\nview_item,5\n"
    );
    let explain = stdout_ok(&shoal(
        &wh,
        &[
            "sql",
            "EXPLAIN SELECT count(*) FROM users",
            "--format",
            "csv",
        ],
    ));
    assert!(explain.contains("physical_plan"), "{explain}");
    // Bitmap functions: a bitmap of everyone holds everyone; set algebra on two groups.
    let out = json_ok(&shoal(
        &wh,
        &[
            "sql",
            "WITH m AS (SELECT rb_build(user_id) AS b FROM users WHERE gender = 'male'),
                  v AS (SELECT rb_build(user_id) AS b FROM events WHERE event_name = 'view_item'),
                  a AS (SELECT rb_build(user_id) AS b FROM users)
             SELECT rb_cardinality(a.b) AS everyone,
                    rb_cardinality(rb_and(m.b, v.b)) AS male_viewers,
                    rb_cardinality(rb_or(m.b, v.b)) AS male_or_viewer,
                    rb_cardinality(rb_andnot(v.b, m.b)) AS viewers_not_male,
                    rb_cardinality(rb_xor(m.b, v.b)) AS one_of_them
             FROM m, v, a",
            "--format",
            "json",
        ],
    ));
    assert_eq!(
        out["rows"],
        json!([{"everyone": 4, "male_viewers": 2, "male_or_viewer": 3, "viewers_not_male": 1, "one_of_them": 1}])
    );
    let out = json_ok(&shoal(
        &wh,
        &[
            "sql",
            "WITH m AS (SELECT rb_build(user_id) AS b FROM users WHERE gender = 'male')
             SELECT count(*) AS n FROM users, m WHERE rb_contains(m.b, users.user_id)",
            "--format",
            "json",
        ],
    ));
    assert_eq!(out["rows"], json!([{"n": 2}]));
    let unknown = shoal(&wh, &["sql", "SELECT * FROM nowhere"]);
    assert!(!unknown.status.success());
    assert!(
        String::from_utf8_lossy(&unknown.stderr).contains("nowhere"),
        "names the table"
    );
}

fn post(server: &Server, path: &str, body: &Value) -> (u16, Value) {
    let response = server
        .client("analyst")
        .post(format!("{}{path}", server.base))
        .json(body)
        .send()
        .expect("request");
    let status = response.status().as_u16();
    (status, response.json().expect("json body"))
}

#[test]
fn the_query_api_counts_previews_explains_and_pulls() {
    let dir = tempfile::tempdir().expect("dir");
    let wh = small_world(dir.path());
    let location = format!("file://{}", wh.display());
    let server = start_server(&["--warehouse", &location, "serve", "--build-every", "0"]);
    let tree = json!({"all": [{"field": "gender", "op": "eq", "value": "male"},
                              {"event": "view_item", "window": {"from": "2026-11-13", "to": "2026-11-20"}}]});
    let (status, answer) = post(&server, "/api/query/count", &json!({"conditions": tree}));
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["count"], 2);
    assert_eq!(answer["path"], "bitmap");
    let (_, scanned) = post(
        &server,
        "/api/query/count",
        &json!({"conditions": tree, "path": "scan"}),
    );
    assert_eq!(scanned["count"], 2);

    let (status, preview) = post(
        &server,
        "/api/query/preview",
        &json!({"conditions": tree, "columns": ["gender", "age", "phone"], "limit": 1}),
    );
    assert_eq!(status, 200, "{preview}");
    assert_eq!(preview["count"], 2);
    let rows = preview["rows"].as_array().expect("rows");
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["gender"], "male");

    let (status, explained) = post(&server, "/api/query/explain", &json!({"conditions": tree}));
    assert_eq!(status, 200, "{explained}");
    assert!(
        explained["sql"]
            .as_str()
            .expect("sql")
            .contains("event_date")
    );
    assert_eq!(explained["path"], "bitmap");

    // Errors are 400s naming the path in the tree.
    let bad = json!({"conditions": {"all": [{"field": "gender", "op": "eq", "value": "male"},
                                            {"any": [{"field": "age", "op": "contains", "value": "4"}]}]}});
    let (status, error) = post(&server, "/api/query/count", &bad);
    assert_eq!(status, 400, "{error}");
    assert_eq!(
        error["error"]["path"],
        "conditions.all[1].any[0].op".replace("conditions.", "")
    );
    assert!(
        error["error"]["message"]
            .as_str()
            .expect("message")
            .contains("contains")
    );
    let (status, error) = post(
        &server,
        "/api/query/count",
        &json!({"conditions": {"field": "nope", "op": "eq", "value": 1}}),
    );
    assert_eq!(status, 400);
    assert_eq!(error["error"]["path"], "field");
    let (status, _) = post(&server, "/api/query/count", &json!({"tree": {}}));
    assert_eq!(status, 400);

    // SQL: JSON rows, refused writes, CSV and Arrow streams.
    let (status, pulled) = post(
        &server,
        "/api/query/sql",
        &json!({"sql": "SELECT count(*) AS n FROM users"}),
    );
    assert_eq!(status, 200, "{pulled}");
    assert_eq!(pulled["rows"], json!([{"n": 4}]));
    let (status, refused) = post(
        &server,
        "/api/query/sql",
        &json!({"sql": "DROP TABLE users"}),
    );
    assert_eq!(status, 400, "{refused}");
    let csv = server
        .client("analyst")
        .post(format!("{}/api/query/sql", server.base))
        .json(&json!({"sql": "SELECT user_id FROM users ORDER BY user_id", "format": "csv"}))
        .send()
        .expect("csv");
    assert_eq!(csv.status().as_u16(), 200);
    let text = csv.text().expect("text");
    assert_eq!(text.lines().count(), 5, "{text}");
    let arrow_bytes = server
        .client("analyst")
        .post(format!("{}/api/query/sql", server.base))
        .json(&json!({"sql": "SELECT user_id FROM users", "format": "arrow"}))
        .send()
        .expect("arrow")
        .bytes()
        .expect("bytes");
    let reader = arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(arrow_bytes), None)
        .expect("an Arrow IPC stream");
    let rows: usize = reader.map(|b| b.expect("batch").num_rows()).sum();
    assert_eq!(rows, 4);

    let fields: Value = server
        .client("analyst")
        .get(format!("{}/api/catalog/fields", server.base))
        .send()
        .expect("fields")
        .json()
        .expect("json");
    let gender = fields["fields"]
        .as_array()
        .expect("fields")
        .iter()
        .find(|f| f["field"] == "gender")
        .expect("gender");
    assert_eq!(gender["values"], json!(["male", "female", "unknown"]));
    assert!(
        gender["operators"]
            .as_array()
            .expect("ops")
            .contains(&json!("in"))
    );
    assert!(
        fields["events"]
            .as_array()
            .expect("events")
            .contains(&json!("view_item"))
    );
    assert!(
        fields["derived"]
            .as_array()
            .expect("derived")
            .iter()
            .any(|d| d["name"] == "middle_aged_male")
    );
}

/// A query whose client hangs up stops using the server's CPU: the request is cancelled, not
/// left running to its end.
#[test]
fn a_query_stops_when_its_client_goes_away() {
    use std::io::Write;
    let dir = tempfile::tempdir().expect("dir");
    let wh = dir.path().join("wh");
    json_ok(&shoal(&wh, &["catalog", "tables", "--json"]));
    let location = format!("file://{}", wh.display());
    let server = start_server(&["--warehouse", &location, "serve", "--build-every", "0"]);
    let body =
        json!({"sql": "SELECT sum(value % 7) FROM generate_series(1, 100000000000)"}).to_string();
    let address = server.base.trim_start_matches("http://").to_string();
    let mut socket = std::net::TcpStream::connect(&address).expect("connect");
    write!(
        socket,
        "POST /api/query/sql HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        server.token("analyst"),
        body.len()
    )
    .expect("send");
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let busy_from = server.cpu_seconds();
    std::thread::sleep(std::time::Duration::from_secs(1));
    let busy = server.cpu_seconds() - busy_from;
    assert!(
        busy > 0.5,
        "the query should be running ({busy:.2} CPU s in 1 s)"
    );
    drop(socket);
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let idle_from = server.cpu_seconds();
    std::thread::sleep(std::time::Duration::from_secs(2));
    let idle = server.cpu_seconds() - idle_from;
    assert!(
        idle < 0.3,
        "the query kept running after its client left ({idle:.2} CPU s in 2 s)"
    );
}

/// Random trees over the sample world: the bitmap path, the scan path and DuckDB (reading
/// the same Parquet files, with its own translation of the tree) agree on every count.
#[test]
#[ignore = "needs duckdb and deltalake in the test venv; ./scripts/test installs them and runs this"]
fn random_trees_agree_with_duckdb() {
    use rand::SeedableRng;
    let dir = tempfile::tempdir().expect("dir");
    let data = dir.path().join("data");
    let wh = dir.path().join("wh");
    let manifest = demo_data(&data, 400, 42);
    ingest_sample(&wh, &data, &manifest, true);
    json_ok(&shoal(&wh, &["build", "--json", "--as-of", "2026-11-20"]));

    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(42);
    // SHOAL_RANDOM_TREES=5000 for a longer run; the suite checks 400 seeded trees.
    let how_many: usize = std::env::var("SHOAL_RANDOM_TREES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(400);
    let trees: Vec<Value> = (0..how_many).map(|_| random_tree(&mut rng, 0)).collect();
    let location = format!("file://{}", wh.display());
    let server = start_server(&["--warehouse", &location, "serve", "--build-every", "0"]);
    let mut ours = Vec::new();
    let mut paths = std::collections::BTreeMap::new();
    for tree in &trees {
        let body = json!({"conditions": tree, "evaluated_at": "2026-11-20"});
        let (status, auto) = post(&server, "/api/query/count", &body);
        assert_eq!(status, 200, "{tree}: {auto}");
        let mut scan_body = body.clone();
        scan_body["path"] = json!("scan");
        let (_, scan) = post(&server, "/api/query/count", &scan_body);
        assert_eq!(auto["count"], scan["count"], "bitmap vs scan on {tree}");
        *paths
            .entry(auto["path"].as_str().expect("path").to_string())
            .or_insert(0) += 1;
        ours.push(auto["count"].as_u64().expect("count"));
    }
    for path in ["bitmap", "mixed", "scan"] {
        assert!(
            paths.get(path).copied().unwrap_or(0) >= 20,
            "too few {path} trees: {paths:?}"
        );
    }
    // The scans read columns the server kept from earlier scans (and still agree above).
    let metrics = reqwest::blocking::get(format!("{}/metrics", server.base))
        .expect("metrics")
        .text()
        .expect("text");
    let hits: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("shoal_column_cache_lookups_total{outcome=\"hit\"} "))
        .and_then(|n| n.parse().ok())
        .unwrap_or_default();
    assert!(hits > 1000, "column cache hits: {hits}\n{metrics}");
    let trees_file = dir.path().join("trees.json");
    std::fs::write(&trees_file, Value::from(trees.clone()).to_string()).expect("write");
    let out = std::process::Command::new(crate::tracking::python())
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/python/condition_oracle.py"
        ))
        .arg(&wh)
        .arg(&trees_file)
        .arg("2026-11-20")
        .output()
        .expect("run the DuckDB oracle");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let theirs: Vec<u64> = serde_json::from_slice(&out.stdout).expect("counts");
    assert_eq!(theirs.len(), trees.len());
    for ((tree, a), b) in trees.iter().zip(&ours).zip(&theirs) {
        assert_eq!(a, b, "Shoal vs DuckDB on {tree}");
    }
    let distinct: std::collections::BTreeSet<&u64> = ours.iter().collect();
    assert!(
        distinct.len() > 30,
        "trees should select many different audiences"
    );
}

fn random_tree(rng: &mut impl rand::Rng, depth: usize) -> Value {
    let pick = |rng: &mut dyn rand::RngCore, items: &[&str]| -> String {
        items[(rng.next_u32() as usize) % items.len()].to_string()
    };
    let leaf_or_group = if depth >= 3 {
        0
    } else {
        rng.random_range(0..10)
    };
    match leaf_or_group {
        7 | 8 => {
            let n = rng.random_range(0..4);
            let children: Vec<Value> = (0..n).map(|_| random_tree(rng, depth + 1)).collect();
            if rng.random_bool(0.5) {
                json!({"all": children})
            } else {
                json!({"any": children})
            }
        }
        9 => json!({"not": random_tree(rng, depth + 1)}),
        _ => match rng.random_range(0..9) {
            0 => {
                let ops = ["eq", "ne", "in", "not_in", "is_null", "not_null"];
                let op = pick(rng, &ops);
                let values = ["male", "female", "unknown"];
                enum_condition("gender", &op, &values, rng)
            }
            1 => {
                let op = pick(rng, &["eq", "ne", "in", "not_in", "is_null", "not_null"]);
                enum_condition(
                    "member_level",
                    &op,
                    &["none", "silver", "gold", "platinum"],
                    rng,
                )
            }
            2 => {
                let edges = [18, 25, 35, 45, 55, 65];
                let lo = edges[rng.random_range(0..edges.len())] + rng.random_range(-1..=1);
                let hi = lo + rng.random_range(1..30);
                match rng.random_range(0..5) {
                    0 => json!({"field": "age", "op": "between", "value": [lo, hi - 1]}),
                    1 => json!({"field": "age", "op": "ge", "value": lo}),
                    2 => json!({"field": "age", "op": "lt", "value": hi}),
                    3 => json!({"field": "age", "op": "gt", "value": lo}),
                    _ => json!({"field": "age", "op": "is_null"}),
                }
            }
            3 => {
                let edges = [0.01, 500.0, 2000.0, 5000.0];
                let v = edges[rng.random_range(0..edges.len())];
                let v = if rng.random_bool(0.3) { v + 1.5 } else { v };
                json!({"field": "gmv", "op": pick(rng, &["ge", "lt", "gt", "le"]), "value": v})
            }
            4 => {
                json!({"field": "has_job", "op": pick(rng, &["eq", "ne"]), "value": rng.random_bool(0.5)})
            }
            5 | 6 => {
                let event = pick(
                    rng,
                    &["view_item", "add_to_cart", "purchase", "page", "follow"],
                );
                let mut e = json!({"event": event});
                match rng.random_range(0..4) {
                    0 => {
                        e["window"] =
                            json!({"from": format!("T-{}", rng.random_range(0..40)), "to": "T"})
                    }
                    1 => e["window"] = json!({"last_days": rng.random_range(1..60)}),
                    2 => e["window"] = json!({"from": "2026-10-01", "to": "2026-10-31"}),
                    _ => {}
                }
                match rng.random_range(0..5) {
                    0 => e["count"] = json!({"op": "ge", "value": rng.random_range(1..4)}),
                    1 => e["count"] = json!({"op": "eq", "value": 0}),
                    2 => {
                        e["where"] = json!([{"field": "price", "op": "ge", "value": rng.random_range(0..2000)}])
                    }
                    _ => {}
                }
                e
            }
            7 => {
                let measure = pick(rng, &["count", "amount"]);
                let value = if measure == "amount" && rng.random_bool(0.4) {
                    json!(rng.random_range(1..100_000) as f64 / 100.0)
                } else {
                    json!(rng.random_range(0..3) * 300)
                };
                let mut o = json!({"orders": measure, "op": pick(rng, &["ge", "lt", "eq", "gt"]),
                                   "value": value, "platform": pick(rng, &["youzan", "tmall"])});
                if rng.random_bool(0.3) {
                    o["window"] = json!({"last_days": rng.random_range(1..90)});
                }
                o
            }
            _ => json!({"field": "city", "op": pick(rng, &["eq", "prefix", "contains", "ne"]),
                         "value": pick(rng, &["上海", "杭州", "北", "州"])}),
        },
    }
}

fn enum_condition(field: &str, op: &str, values: &[&str], rng: &mut impl rand::Rng) -> Value {
    let one = values[rng.random_range(0..values.len())];
    match op {
        "in" | "not_in" => {
            json!({"field": field, "op": op, "value": [one, values[rng.random_range(0..values.len())]]})
        }
        "is_null" | "not_null" => json!({"field": field, "op": op}),
        _ => json!({"field": field, "op": op, "value": one}),
    }
}

/// Appends one row to `table`, given as JSON, through Arrow's JSON reader (so the test needs no
/// column-by-column arrays).
fn append_row(wh: &Path, table: &str, row: Value) {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let location = format!("file://{}", wh.display());
        let warehouse = shoal_catalog::Warehouse::open(&location).expect("warehouse");
        let mut t = shoal_catalog::Table::open(&warehouse, table)
            .await
            .expect("table");
        let schema = t.schema().expect("schema");
        let mut decoder = arrow::json::ReaderBuilder::new(schema)
            .build_decoder()
            .expect("decoder");
        decoder.serialize(&[row]).expect("row fits the schema");
        let batch = decoder.flush().expect("flush").expect("one batch");
        t.append(
            vec![batch],
            shoal_catalog::CommitNote::new("author", "test"),
        )
        .await
        .expect("append");
    });
}

/// The user id of the person with login `login`.
fn user_id(wh: &Path, login: &str) -> u64 {
    sql_rows(
        wh,
        &format!("SELECT user_id FROM users WHERE login_id = '{login}'"),
    )[0]["user_id"]
        .as_u64()
        .expect("id")
}

fn sql_rows(wh: &Path, sql: &str) -> Vec<Value> {
    json_ok(&shoal(wh, &["sql", sql, "--format", "json"]))["rows"]
        .as_array()
        .expect("rows")
        .clone()
}

/// Order conditions on hand-made orders: amounts net of refunds summed exactly (0.10 + 0.20
/// is 0.30, which a float sum misses), only paid statuses, platforms and windows, people
/// without orders as zero, and orders of an id that is nobody left out.
#[test]
fn order_conditions_total_each_person_exactly() {
    let dir = tempfile::tempdir().expect("dir");
    let wh = small_world(dir.path());
    let id = |login: &str| user_id(&wh, login);
    let (a, b, d) = (id("a"), id("b"), id("d"));
    let orders = [
        (a, "tmall", "0.10", None, "paid", "2026-11-15"),
        (a, "tmall", "0.20", None, "completed", "2026-11-16"),
        (
            a,
            "youzan",
            "500.00",
            Some("500.00"),
            "refunded",
            "2026-11-10",
        ),
        (a, "tmall", "1000.00", None, "pending_payment", "2026-11-18"),
        (b, "tmall", "300.00", None, "paid", "2026-09-01"),
        (b, "youzan", "299.99", None, "shipped", "2026-11-19"),
        (d, "web", "50.00", None, "paid", "2026-11-19"),
        (999_999, "tmall", "1000.00", None, "paid", "2026-11-19"),
    ];
    for (n, (user, platform, amount, refund, status, day)) in orders.iter().enumerate() {
        append_row(
            &wh,
            "orders",
            json!({"order_id": format!("o{n}"), "platform": platform, "user_id": user,
                   "amount": amount, "refund_amount": refund, "status": status,
                   "created_at": format!("{day}T04:00:00Z"),
                   "updated_at": "2026-11-20T00:00:00Z"}),
        );
    }
    let cases = [
        // a: tmall 0.10 + 0.20 paid (the 1000 is unpaid).
        (
            json!({"orders": "amount", "op": "eq", "value": 0.3, "platform": "tmall"}),
            1,
        ),
        // b: tmall 300 (in September).
        (
            json!({"orders": "amount", "op": "gt", "value": 0.3, "platform": "tmall"}),
            1,
        ),
        (
            json!({"orders": "amount", "op": "gt", "value": 0.29, "platform": "tmall",
                "window": {"last_days": 30}}),
            1,
        ),
        // a (3 paid, one refunded), b (2), d (1).
        (json!({"orders": "count", "op": "ge", "value": 1}), 3),
        // c (none), d (1).
        (json!({"orders": "count", "op": "lt", "value": 2}), 2),
        // Net of refunds: a 0.30, b 599.99, c 0, d 50.
        (json!({"orders": "amount", "op": "le", "value": 0}), 1),
        // Youzan net: a 0 (refunded), b 299.99, c and d none.
        (
            json!({"orders": "amount", "op": "lt", "value": 50, "platform": "youzan"}),
            3,
        ),
        (
            json!({"orders": "amount", "op": "ge", "value": 299.99, "platform": ["youzan", "web"],
                "window": {"last_days": 7}}),
            1,
        ),
        (
            json!({"all": [{"field": "city", "op": "in", "value": ["上海", "杭州"]},
                        {"orders": "amount", "op": "ge", "value": 299.99, "platform": "youzan"}]}),
            1,
        ),
        (
            json!({"any": [{"field": "city", "op": "eq", "value": "北京"},
                        {"orders": "count", "op": "eq", "value": 2}]}),
            2,
        ),
        (
            json!({"not": {"orders": "count", "op": "ge", "value": 1}}),
            1,
        ),
        (
            json!({"all": [{"not": {"orders": "amount", "op": "gt", "value": 1}},
                        {"field": "gender", "op": "eq", "value": "male"}]}),
            1,
        ),
    ];
    for (tree, expected) in &cases {
        for path in ["auto", "scan"] {
            let answer = count(&wh, dir.path(), tree, path);
            assert_eq!(
                answer["count"],
                json!(expected),
                "{path} path of {tree}: {answer}"
            );
        }
    }
}

#[test]
fn stored_audiences_answer_sql_and_trees_and_follow_merges() {
    let dir = tempfile::tempdir().expect("dir");
    let wh = small_world(dir.path());
    let id = |login: &str| user_id(&wh, login) as u32;
    let (a, b) = (id("a"), id("b"));
    // 900000 was merged into a after the pack was computed: it counts as a.
    let gone = 900_000u32;
    append_row(
        &wh,
        "identity_merges",
        json!({"from_user_id": gone, "into_user_id": a, "kind": "merge",
               "at": "2026-11-20T00:00:00Z", "reason": "test"}),
    );
    let members: roaring::RoaringBitmap = [gone, b].into_iter().collect();
    let mut bytes = Vec::new();
    members.serialize_into(&mut bytes).expect("serialise");
    append_row(
        &wh,
        "audience_versions",
        json!({"audience": "vip", "version": 1, "created_at": "2026-11-19T00:00:00Z",
               "definition": "{}", "evaluated_at": "2026-11-19T00:00:00Z", "size": 2,
               "bitmap": bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()}),
    );
    let rows = sql_rows(
        &wh,
        "SELECT login_id FROM users WHERE rb_contains(audience('vip'), user_id) ORDER BY login_id",
    );
    assert_eq!(
        rows,
        vec![json!({"login_id": "a"}), json!({"login_id": "b"})]
    );
    // The pack is tested by name: its bytes never enter the plan.
    let plan = sql_rows(
        &wh,
        "EXPLAIN SELECT login_id FROM users WHERE rb_contains(audience('vip'), user_id)",
    );
    let plan = serde_json::to_string(&plan).expect("json");
    assert!(plan.contains("rb_contains_audience"), "{plan}");
    assert!(!plan.to_uppercase().contains("3A30"), "{plan}");
    let tree =
        json!({"all": [{"audience": "vip"}, {"field": "gender", "op": "eq", "value": "male"}]});
    for path in ["auto", "scan"] {
        assert_eq!(count(&wh, dir.path(), &tree, path)["count"], 1, "{path}");
        let not = json!({"not": {"audience": "vip"}});
        assert_eq!(count(&wh, dir.path(), &not, path)["count"], 2, "{path}");
    }
    let unknown = shoal(&wh, &["sql", "SELECT rb_cardinality(audience('nobody'))"]);
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("unknown audience 'nobody'"));
}
