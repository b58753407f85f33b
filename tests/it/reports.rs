//! Funnel reports: hand-made event sequences for every mode, exclusions, breakdowns and an
//! audience restriction, through the CLI and the API; and the demo data against
//! ClickHouse's own `windowFunnel` (chDB).

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::tracking::python;
use crate::{Server, demo_data, ingest_sample, ingest_segment, json_ok, shoal, start_server};

const HOUR: i64 = 3600;

/// People and their events (hours after 2026-11-10T02:00Z), with the levels counted by hand
/// for the funnel view_item → add_to_cart → purchase within 7 days:
///
/// | who | gender | events (hour: event)                         | default | order | dedup | incr |
/// |-----|--------|----------------------------------------------|---------|-------|-------|------|
/// | p1  | male   | 0 view, 1 cart, 2 purchase (category A)      | 3       | 3     | 3     | 3    |
/// | p2  | male   | 0 view, 1 cart, 193 purchase (8 days later)  | 2       | 2     | 2     | 2    |
/// | p3  | male   | 0 cart, 1 view                               | 1       | 1     | 1     | 1    |
/// | p4  | male   | 0 view, 1 purchase, 2 cart, 3 purchase       | 3       | 1     | 3     | 3    |
/// | p5  | female | 0 view, 1 cart, 2 cart, 3 purchase           | 3       | 3     | 2     | 3    |
/// | p6  | female | 0 view, 0 cart, 1 purchase                   | 3       | 3     | 3     | 1    |
/// | p7  | female | 0 view, 1 cart, 2 unfollow, 3 purchase       | 3       | 2     | 3     | 3    |
/// | p8  | female | 0 purchase                                   | 0       | 0     | 0     | 0    |
/// | p9  | female | 0 view, 1 follow, 2 cart, 3 purchase         | 3       | 1     | 3     | 3    |
fn funnel_world(dir: &Path) -> PathBuf {
    let wh = dir.join("wh");
    type Person<'a> = (&'a str, &'a str, &'a [(i64, &'a str)]);
    let people: [Person; 9] = [
        (
            "p1",
            "male",
            &[(0, "view_item"), (1, "add_to_cart"), (2, "purchase")],
        ),
        (
            "p2",
            "male",
            &[(0, "view_item"), (1, "add_to_cart"), (193, "purchase")],
        ),
        ("p3", "male", &[(0, "add_to_cart"), (1, "view_item")]),
        (
            "p4",
            "male",
            &[
                (0, "view_item"),
                (1, "purchase"),
                (2, "add_to_cart"),
                (3, "purchase"),
            ],
        ),
        (
            "p5",
            "female",
            &[
                (0, "view_item"),
                (1, "add_to_cart"),
                (2, "add_to_cart"),
                (3, "purchase"),
            ],
        ),
        (
            "p6",
            "female",
            &[(0, "view_item"), (0, "add_to_cart"), (1, "purchase")],
        ),
        (
            "p7",
            "female",
            &[
                (0, "view_item"),
                (1, "add_to_cart"),
                (2, "unfollow_official_account"),
                (3, "purchase"),
            ],
        ),
        ("p8", "female", &[(0, "purchase")]),
        (
            "p9",
            "female",
            &[
                (0, "view_item"),
                (1, "follow_official_account"),
                (2, "add_to_cart"),
                (3, "purchase"),
            ],
        ),
    ];
    let start = chrono::DateTime::parse_from_rfc3339("2026-11-10T02:00:00Z").expect("time");
    let mut lines = Vec::new();
    for (who, gender, events) in people {
        lines.push(
            json!({"type": "identify", "messageId": format!("i-{who}"), "userId": who,
            "timestamp": "2026-11-01T02:00:00Z", "traits": {"gender": gender}}),
        );
        for (i, (hour, event)) in events.iter().enumerate() {
            let at = start + chrono::Duration::seconds(hour * HOUR);
            let properties = if who == "p1" {
                json!({"category": "A"})
            } else {
                json!({})
            };
            lines.push(
                json!({"type": "track", "messageId": format!("{who}-{i}"), "userId": who,
                "event": event, "timestamp": at.to_rfc3339(), "properties": properties}),
            );
        }
    }
    let file = dir.join("events.jsonl");
    let text: Vec<String> = lines.iter().map(Value::to_string).collect();
    std::fs::write(&file, text.join("\n") + "\n").expect("write");
    ingest_segment(&wh, &file);
    json_ok(&shoal(&wh, &["build", "--json", "--as-of", "2026-11-20"]));
    wh
}

fn users(result: &Value) -> Vec<u64> {
    result["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .map(|s| s["users"].as_u64().expect("users"))
        .collect()
}

fn cli_funnel(wh: &Path, extra: &[&str]) -> Value {
    let mut args = vec![
        "report",
        "funnel",
        "--steps",
        "view_item,add_to_cart,purchase",
        "--from",
        "2026-11-01",
        "--to",
        "2026-11-20",
        "--json",
    ];
    args.extend_from_slice(extra);
    json_ok(&shoal(wh, &args))
}

/// `POST /api/reports/{report}` as `role`: the status and the JSON answer.
fn post_report(server: &Server, report: &str, role: &str, body: &Value) -> (u16, Value) {
    let response = server
        .client(role)
        .post(format!("{}/api/reports/{report}", server.base))
        .json(body)
        .send()
        .expect("request");
    let status = response.status().as_u16();
    (status, response.json().expect("json body"))
}

fn spec(extra: Value) -> Value {
    let mut spec = json!({
        "steps": [{"event": "view_item"}, {"event": "add_to_cart"}, {"event": "purchase"}],
        "window": "7d",
        "from": "2026-11-01",
        "to": "2026-11-20",
    });
    for (k, v) in extra.as_object().expect("object") {
        spec[k] = v.clone();
    }
    spec
}

#[test]
fn funnels_count_hand_made_sequences_in_every_mode() {
    let dir = tempfile::tempdir().expect("tempdir");
    let wh = funnel_world(dir.path());

    // The CLI, per mode, against the table above.
    let default = cli_funnel(&wh, &[]);
    assert_eq!(users(&default), [8, 7, 6]);
    let steps = &default["steps"];
    assert_eq!(steps[1]["conversion_from_previous"], json!(7.0 / 8.0));
    assert_eq!(steps[2]["conversion_from_first"], json!(6.0 / 8.0));
    // Step 2 gaps (h): p1 1, p2 1, p4 2, p5 2 (its later cart), p6 0, p7 1, p9 2 → 1 h.
    assert_eq!(steps[1]["median_seconds_from_previous"], json!(3600.0));
    // Step 3 gaps (h): p1 1, p4 1, p5 1, p6 1, p7 2, p9 1 → 1 h.
    assert_eq!(steps[2]["median_seconds_from_previous"], json!(3600.0));
    assert_eq!(steps[0]["median_seconds_from_previous"], Value::Null);
    for (mode, expected) in [
        ("strict_order", [8, 5, 3]),
        ("strict_deduplication", [8, 7, 5]),
        ("strict_increase", [8, 6, 5]),
    ] {
        assert_eq!(
            users(&cli_funnel(&wh, &["--mode", mode])),
            expected,
            "{mode}"
        );
    }
    // A 1-hour window: p1 (2 h to purchase) and the others stop at 2 steps at most.
    // View→cart within 1 h: p1, p2, p5, p6, p7 (p4's cart is 2 h after, p9's 2 h).
    // Purchase within 1 h of the view: p6 only.
    assert_eq!(users(&cli_funnel(&wh, &["--window", "1h"])), [8, 5, 1]);
    // Excluding unfollows between cart and purchase drops p7.
    let excluded = cli_funnel(&wh, &["--exclude", "unfollow_official_account:2-3"]);
    assert_eq!(users(&excluded), [7, 6, 5]);
    assert_eq!(excluded["excluded"], 1);
    // Between view and cart it does not (p7's unfollow comes after its cart).
    let kept = cli_funnel(&wh, &["--exclude", "unfollow_official_account:1-2"]);
    assert_eq!(users(&kept), [8, 7, 6]);
    assert_eq!(kept["excluded"], 0);

    // Breakdown by the person's gender: male p1–p4 (3, 2, 1, 3); female p5–p9.
    let by_gender = cli_funnel(&wh, &["--breakdown", "gender"]);
    assert!(by_gender.get("steps").is_none());
    let groups: Vec<(Value, Vec<u64>)> = by_gender["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .map(|g| (g["value"].clone(), users(g)))
        .collect();
    assert_eq!(
        groups,
        // Equal first steps: by value.
        [
            (json!("female"), vec![4, 4, 4]),
            (json!("male"), vec![4, 3, 2])
        ]
    );
    // Breakdown by an event column: chains whose steps share the value.
    let by_category = cli_funnel(&wh, &["--breakdown", "events.category"]);
    let groups: Vec<(Value, Vec<u64>)> = by_category["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .map(|g| (g["value"].clone(), users(g)))
        .collect();
    assert_eq!(
        groups,
        [(Value::Null, vec![7, 6, 5]), (json!("A"), vec![1, 1, 1])]
    );

    // An audience restriction: the men.
    let tree = dir.path().join("men.json");
    std::fs::write(&tree, r#"{"field": "gender", "op": "eq", "value": "male"}"#).expect("tree");
    json_ok(&shoal(
        &wh,
        &[
            "audience",
            "create",
            "men",
            "--conditions",
            tree.to_str().expect("path"),
            "--json",
        ],
    ));
    assert_eq!(users(&cli_funnel(&wh, &["--audience", "men"])), [4, 3, 2]);

    // The API gives the same answers, to every role, with step filters.
    let location = format!("file://{}", wh.display());
    let server = start_server(&["--warehouse", &location, "serve", "--build-every", "0"]);
    let (status, body) = post_report(
        &server,
        "funnel",
        "viewer",
        &spec(json!({"mode": {"strict_order": true}})),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(users(&body), [8, 5, 3]);
    assert!(body["sql"].as_str().expect("sql").contains("window_funnel"));
    assert!(body["snapshot"]["events"].is_u64(), "{body}");
    let filtered = json!({
        "steps": [
            {"event": "view_item", "where": [{"field": "category", "op": "eq", "value": "A"}]},
            {"event": "purchase"}
        ],
        "window": "1d", "from": "2026-11-01", "to": "2026-11-20"
    });
    let (status, body) = post_report(&server, "funnel", "analyst", &filtered);
    assert_eq!((status, users(&body)), (200, vec![1, 1]), "{body}");
    let (_, body) = post_report(
        &server,
        "funnel",
        "viewer",
        &spec(json!({"exclude": [{"event": "unfollow_official_account", "between": [2, 3]}]})),
    );
    assert_eq!(users(&body), [7, 6, 5]);
    let (_, body) = post_report(
        &server,
        "funnel",
        "viewer",
        &spec(json!({"audience": "men"})),
    );
    assert_eq!(users(&body), [4, 3, 2]);
    // The same funnel in SQL, through window_funnel itself.
    let sql = server
        .client("analyst")
        .post(format!("{}/api/query/sql", server.base))
        .json(
            &json!({"sql": "SELECT cardinality(window_funnel(604800000000, 'strict_order', \
            event_time, event_name = 'view_item', event_name = 'add_to_cart', \
            event_name = 'purchase')) AS level, count(*) AS people FROM events \
            WHERE user_id IS NOT NULL GROUP BY user_id ORDER BY level"}),
        )
        .send()
        .expect("sql");
    assert_eq!(sql.status().as_u16(), 200);
    let sql: Value = sql.json().expect("json");
    let levels: Vec<i64> = sql["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| r["level"].as_i64().expect("level"))
        .collect();
    // p8 0; p3, p4, p9 1; p2, p7 2; p1, p5, p6 3.
    assert_eq!(levels, [0, 1, 1, 1, 2, 2, 3, 3, 3]);

    // Bad requests: 400 naming the part at fault.
    for (body, path) in [
        (spec(json!({"window": "7 fortnights"})), "window"),
        (spec(json!({"window": "0d"})), "window"),
        (spec(json!({"steps": []})), "steps"),
        (
            spec(
                json!({"steps": [{"event": "view_item", "where": [{"field": "nope", "op": "eq", "value": 1}]}]}),
            ),
            "steps[0]",
        ),
        (
            spec(json!({"exclude": [{"event": "purchase", "between": [2, 2]}]})),
            "exclude[0].between",
        ),
        (spec(json!({"breakdown": "orders.amount"})), "breakdown"),
        (spec(json!({"breakdown": "users.phone"})), "breakdown"),
        (spec(json!({"from": "2026-11-21"})), "from"),
    ] {
        let (status, answer) = post_report(&server, "funnel", "viewer", &body);
        assert_eq!(status, 400, "{body} → {answer}");
        assert!(
            answer["error"]["path"]
                .as_str()
                .is_some_and(|p| p.starts_with(path)),
            "{path}: {answer}"
        );
    }
    for body in [
        spec(json!({"mode": {"strict_ordr": true}})),
        spec(json!({"steps": "view_item"})),
        json!({"window": "7d"}),
    ] {
        let (status, answer) = post_report(&server, "funnel", "viewer", &body);
        assert_eq!(status, 400, "{body} → {answer}");
        assert!(answer["error"]["message"].is_string(), "{answer}");
    }
    let (status, answer) = post_report(
        &server,
        "funnel",
        "viewer",
        &spec(json!({"audience": "nobody"})),
    );
    assert!(matches!(status, 400 | 404), "{status} {answer}");
    let anonymous = reqwest::blocking::Client::new()
        .post(format!("{}/api/reports/funnel", server.base))
        .json(&spec(json!({})))
        .send()
        .expect("request");
    assert_eq!(anonymous.status().as_u16(), 401);
}

#[test]
#[ignore = "needs chdb and deltalake; ./scripts/test installs them and runs this"]
fn funnels_match_clickhouse_window_funnel_on_the_demo_data() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sample = dir.path().join("sample");
    let manifest = demo_data(&sample, 3000, 7);
    let wh = dir.path().join("wh");
    ingest_sample(&wh, &sample, &manifest, true);
    json_ok(&shoal(&wh, &["build", "--json", "--as-of", "2026-11-20"]));
    let steps = ["view_item", "add_to_cart", "purchase"];
    for (window, modes) in [
        ("7d", vec![]),
        ("1d", vec!["strict_order"]),
        ("1d", vec!["strict_increase"]),
        ("1d", vec!["strict_deduplication"]),
        (
            "2h",
            vec!["strict_order", "strict_increase", "strict_deduplication"],
        ),
    ] {
        let mode = modes.join(",");
        let mut args = vec![
            "report",
            "funnel",
            "--steps",
            "view_item,add_to_cart,purchase",
            "--window",
            window,
            "--from",
            "2026-08-23",
            "--to",
            "2026-11-20",
            "--json",
        ];
        if !mode.is_empty() {
            args.extend(["--mode", &mode]);
        }
        let ours = json_ok(&shoal(&wh, &args));
        let window_us = ours["window_seconds"].as_i64().expect("window") * 1_000_000;
        let request = json!({"steps": steps, "window_us": window_us, "modes": modes,
            "from": "2026-08-23", "to": "2026-11-20"});
        let out = std::process::Command::new(python())
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/python/funnel_chdb.py"
            ))
            .arg(wh.join("events"))
            .arg(request.to_string())
            .output()
            .expect("python");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let theirs: Value = serde_json::from_slice(&out.stdout).expect("json");
        let theirs: Vec<u64> = theirs["reached"]
            .as_array()
            .expect("reached")
            .iter()
            .map(|v| v.as_u64().expect("count"))
            .collect();
        assert!(
            theirs[0] > 1000 && theirs[2] > 0,
            "a funnel worth comparing: {theirs:?}"
        );
        assert_eq!(users(&ours), theirs, "{window} {modes:?}");
    }
}

/// People and their events (days of November 2026, 10:00 in Beijing):
///
/// | who | view_item      | purchase          |
/// |-----|----------------|-------------------|
/// | r1  | 10             | 11, 13            |
/// | r2  | 10, 12         |                   |
/// | r3  | 11             | 11, 12            |
/// | r4  | 8, 11          | 12                |
/// | r5  |                | 10                |
fn retention_world(dir: &Path) -> PathBuf {
    let wh = dir.join("wh");
    let people: [(&str, &[u32], &[u32]); 5] = [
        ("r1", &[10], &[11, 13]),
        ("r2", &[10, 12], &[]),
        ("r3", &[11], &[11, 12]),
        ("r4", &[8, 11], &[12]),
        ("r5", &[], &[10]),
    ];
    let mut lines = Vec::new();
    for (who, views, purchases) in people {
        lines.push(
            json!({"type": "identify", "messageId": format!("i-{who}"), "userId": who,
            "timestamp": "2026-11-01T02:00:00Z", "traits": {}}),
        );
        for (event, days) in [("view_item", views), ("purchase", purchases)] {
            for day in days {
                lines.push(
                    json!({"type": "track", "messageId": format!("{who}-{event}-{day}"),
                    "userId": who, "event": event,
                    "timestamp": format!("2026-11-{day:02}T02:00:00Z"), "properties": {}}),
                );
            }
        }
    }
    let file = dir.join("events.jsonl");
    let text: Vec<String> = lines.iter().map(Value::to_string).collect();
    std::fs::write(&file, text.join("\n") + "\n").expect("write");
    ingest_segment(&wh, &file);
    json_ok(&shoal(&wh, &["build", "--json", "--as-of", "2026-11-20"]));
    wh
}

fn cohorts(result: &Value) -> Vec<(String, u64, Vec<u64>)> {
    result["cohorts"]
        .as_array()
        .expect("cohorts")
        .iter()
        .map(|c| {
            (
                c["cohort"].as_str().expect("cohort").to_string(),
                c["size"].as_u64().expect("size"),
                c["retained"]
                    .as_array()
                    .expect("retained")
                    .iter()
                    .map(|n| n.as_u64().expect("n"))
                    .collect(),
            )
        })
        .collect()
}

#[test]
fn retention_counts_hand_made_cohorts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let wh = retention_world(dir.path());
    let run = |extra: &[&str]| {
        let mut args = vec![
            "report",
            "retention",
            "--return",
            "purchase",
            "--periods",
            "3",
            "--from",
            "2026-11-10",
            "--to",
            "2026-11-11",
            "--json",
        ];
        args.extend_from_slice(extra);
        json_ok(&shoal(&wh, &args))
    };
    let own = |s: &str| s.to_string();
    // First time: 11-10 is r1 and r2 (r1 buys a day and three days later); 11-11 is r3 only
    // (r4 first viewed on 11-08).
    let first = run(&["--cohort", "view_item"]);
    assert_eq!(
        cohorts(&first),
        [
            (own("2026-11-10"), 2, vec![0, 1, 0, 1]),
            (own("2026-11-11"), 1, vec![1, 1, 0, 0])
        ]
    );
    assert_eq!(
        first["average"],
        json!([1.0 / 3.0, 2.0 / 3.0, 0.0, 1.0 / 3.0])
    );
    // Recurring: r4's view on 11-11 puts it in that cohort; it buys the next day.
    let recurring = run(&["--cohort", "view_item", "--kind", "recurring"]);
    assert_eq!(
        cohorts(&recurring),
        [
            (own("2026-11-10"), 2, vec![0, 1, 0, 1]),
            (own("2026-11-11"), 2, vec![1, 2, 0, 0])
        ]
    );
    // Weeks (Monday 11-09): r1, r2, r3 first viewed that week; any event brings them back in
    // week 0, none in week 1.
    let weeks = json_ok(&shoal(
        &wh,
        &[
            "report",
            "retention",
            "--cohort",
            "view_item",
            "--period",
            "week",
            "--periods",
            "1",
            "--from",
            "2026-11-09",
            "--to",
            "2026-11-15",
            "--json",
        ],
    ));
    assert_eq!(cohorts(&weeks), [(own("2026-11-09"), 3, vec![3, 0])]);

    // An audience's members as one cohort from 11-11: r1 buys on 11-11 and 11-13, r3 on 11-11
    // and 11-12.
    json_ok(&shoal(
        &wh,
        &[
            "audience",
            "create",
            "r1_r3",
            "--sql",
            "SELECT user_id FROM users WHERE login_id IN ('r1', 'r3')",
            "--json",
        ],
    ));
    let location = format!("file://{}", wh.display());
    let server = start_server(&["--warehouse", &location, "serve", "--build-every", "0"]);
    let post = |body: Value| post_report(&server, "retention", "viewer", &body);
    let (status, body) = post(json!({"audience": "r1_r3", "return": {"event": "purchase"},
        "periods": 3, "from": "2026-11-11", "to": "2026-11-11"}));
    assert_eq!(status, 200, "{body}");
    assert_eq!(cohorts(&body), [(own("2026-11-11"), 2, vec![2, 1, 1, 0])]);
    // The API agrees with the CLI.
    let (_, body) = post(
        json!({"cohort": {"event": "view_item"}, "return": {"event": "purchase"},
        "periods": 3, "from": "2026-11-10", "to": "2026-11-11"}),
    );
    assert_eq!(cohorts(&body), cohorts(&first));

    for (body, path) in [
        (
            json!({"cohort": {"event": "view_item"}, "audience": "r1_r3"}),
            "audience",
        ),
        (json!({"periods": 3}), "cohort"),
        (
            json!({"cohort": {"event": "view_item"}, "periods": 1000}),
            "periods",
        ),
        (
            json!({"cohort": {"event": "view_item", "where": [{"field": "nope", "op": "eq", "value": 1}]}}),
            "cohort",
        ),
        (
            json!({"cohort": {"event": "view_item"}, "from": "2026-11-12", "to": "2026-11-11"}),
            "from",
        ),
    ] {
        let (status, answer) = post(body.clone());
        assert_eq!(status, 400, "{body} → {answer}");
        assert!(
            answer["error"]["path"]
                .as_str()
                .is_some_and(|p| p.starts_with(path)),
            "{path}: {answer}"
        );
    }
    let (status, answer) = post(json!({"cohort": {"event": "view_item"}, "period": "month"}));
    assert_eq!(status, 400, "{answer}");
}

/// A campaign c1 delivered on 2026-11-10 (times UTC):
///
/// | who | packs | events                                                                   |
/// |-----|-------|--------------------------------------------------------------------------|
/// | k1  | tgt   | delivered 11-10 02:00, clicked 03:00, purchase 100 on 11-11, unfollow 11-12 |
/// | k2  | tgt   | delivered 11-10 02:00, purchase 50 on 11-20 (past the 7 days)            |
/// | k3  | tgt   | purchase 11-12 (never delivered)                                         |
/// | k4  | –     | delivered 11-10 02:00 (not in the target)                                |
/// | h1  | hold  | purchase 11-13                                                           |
/// | h2–h4 | hold | view_item 11-13                                                         |
fn campaign_world(dir: &Path) -> PathBuf {
    let wh = dir.join("wh");
    let events: [(&str, &str, &str, Value); 12] = [
        (
            "k1",
            "campaign_message_delivered",
            "2026-11-10T02:00:00Z",
            json!({"campaign_id": "c1"}),
        ),
        (
            "k1",
            "campaign_message_clicked",
            "2026-11-10T03:00:00Z",
            json!({"campaign_id": "c1"}),
        ),
        (
            "k1",
            "purchase",
            "2026-11-11T02:00:00Z",
            json!({"revenue": 100}),
        ),
        (
            "k1",
            "unfollow_official_account",
            "2026-11-12T02:00:00Z",
            json!({}),
        ),
        (
            "k2",
            "campaign_message_delivered",
            "2026-11-10T02:00:00Z",
            json!({"campaign_id": "c1"}),
        ),
        (
            "k2",
            "purchase",
            "2026-11-20T02:00:00Z",
            json!({"revenue": 50}),
        ),
        (
            "k3",
            "purchase",
            "2026-11-12T02:00:00Z",
            json!({"revenue": 10}),
        ),
        (
            "k4",
            "campaign_message_delivered",
            "2026-11-10T02:00:00Z",
            json!({"campaign_id": "c1"}),
        ),
        (
            "h1",
            "purchase",
            "2026-11-13T02:00:00Z",
            json!({"revenue": 20}),
        ),
        ("h2", "view_item", "2026-11-13T02:00:00Z", json!({})),
        ("h3", "view_item", "2026-11-13T02:00:00Z", json!({})),
        ("h4", "view_item", "2026-11-13T02:00:00Z", json!({})),
    ];
    let mut lines = Vec::new();
    for (i, (who, event, at, properties)) in events.iter().enumerate() {
        lines.push(
            json!({"type": "track", "messageId": format!("m{i}"), "userId": who,
            "event": event, "timestamp": at, "properties": properties}),
        );
    }
    let file = dir.join("events.jsonl");
    let text: Vec<String> = lines.iter().map(Value::to_string).collect();
    std::fs::write(&file, text.join("\n") + "\n").expect("write");
    ingest_segment(&wh, &file);
    json_ok(&shoal(&wh, &["build", "--json", "--as-of", "2026-11-20"]));
    for (name, who) in [
        ("tgt", "'k1', 'k2', 'k3'"),
        ("hold", "'h1', 'h2', 'h3', 'h4'"),
    ] {
        json_ok(&shoal(
            &wh,
            &[
                "audience",
                "create",
                name,
                "--sql",
                &format!("SELECT user_id FROM users WHERE login_id IN ({who})"),
                "--json",
            ],
        ));
    }
    wh
}

#[test]
fn campaign_roi_counts_the_funnel_value_cost_and_uplift() {
    let dir = tempfile::tempdir().expect("tempdir");
    let wh = campaign_world(dir.path());
    let spec = json!({
        "campaign": "c1", "audience": "tgt", "control": "hold",
        "from": "2026-11-10", "to": "2026-11-10", "days": 7,
        "positive": [{"metric": "revenue", "value": 0.3}],
        "negative": [{"metric": {"event": "unfollow_official_account"}, "value": 5.0}],
        "cost": {"per_delivery": 2.0, "fixed": 10.0}
    });
    let file = dir.path().join("campaign.json");
    std::fs::write(&file, spec.to_string()).expect("write");
    let r = json_ok(&shoal(
        &wh,
        &[
            "report",
            "roi",
            "--spec",
            file.to_str().expect("path"),
            "--json",
        ],
    ));
    // Target k1 k2 k3; reached k1 k2 (k4 is not targeted); clicked k1; converted k1 (k2 buys
    // after the 7 days).
    assert_eq!(
        (
            &r["target"],
            &r["reached"],
            &r["clicked"],
            &r["converted"],
            &r["deliveries"]
        ),
        (&json!(3), &json!(2), &json!(1), &json!(1), &json!(2))
    );
    assert_eq!(r["positive"][0]["units"], json!(100.0));
    assert_eq!(r["positive"][0]["value"], json!(30.0));
    assert_eq!(r["negative"][0]["units"], json!(1.0));
    // Cost 2 × 2 + 10 = 14; net 30 − 5 − 14 = 11.
    assert_eq!(r["cost"], json!(14.0));
    assert_eq!(r["net"], json!(11.0));
    assert_eq!(r["roi"], json!(11.0 / 14.0));
    // Holdout, 11-10 to 11-17: target k1 and k3 of 3 converted, holdout h1 of 4.
    let h = &r["holdout"];
    assert_eq!(
        (&h["target_converted"], &h["control_converted"]),
        (&json!(2), &json!(1))
    );
    let uplift = 2.0 / 3.0 - 1.0 / 4.0;
    let se = ((2.0 / 3.0) * (1.0 / 3.0) / 3.0 + 0.25 * 0.75 / 4.0_f64).sqrt();
    let close = |v: &Value, x: f64| (v.as_f64().expect("number") - x).abs() < 1e-9;
    assert!(close(&h["uplift"], uplift), "{h}");
    assert!(close(&h["uplift_low"], uplift - 1.96 * se), "{h}");
    assert!(close(&h["uplift_high"], uplift + 1.96 * se), "{h}");

    // The API answers the same; bad specs are 400s naming the part at fault.
    let location = format!("file://{}", wh.display());
    let server = start_server(&["--warehouse", &location, "serve", "--build-every", "0"]);
    let post = |body: &Value| post_report(&server, "roi", "viewer", body);
    let (status, body) = post(&spec);
    assert_eq!(status, 200, "{body}");
    assert_eq!((&body["net"], &body["reached"]), (&json!(11.0), &json!(2)));
    // The campaigns a report can be run on: c1, delivered to k1, k2 and k4 on 11-10 (Beijing).
    let campaigns: Value = server
        .client("viewer")
        .get(format!("{}/api/reports/campaigns", server.base))
        .send()
        .expect("campaigns")
        .json()
        .expect("json");
    assert_eq!(
        campaigns,
        json!({"campaigns": [{"campaign": "c1", "first_day": "2026-11-10",
            "last_day": "2026-11-10", "deliveries": 3, "people": 3}]})
    );
    // Without a target: everyone delivered (k1, k2, k4); no cost, no ROI.
    let (_, body) = post(&json!({"campaign": "c1", "from": "2026-11-10", "to": "2026-11-10"}));
    assert_eq!(
        (&body["target"], &body["reached"], &body["clicked"]),
        (&json!(3), &json!(3), &json!(1))
    );
    assert_eq!(body["roi"], Value::Null);
    let mut bad = spec.clone();
    bad["days"] = json!(0);
    let mut bad_conversion = spec.clone();
    bad_conversion["conversion"] =
        json!({"event": "purchase", "where": [{"field": "nope", "op": "eq", "value": 1}]});
    let mut no_target = spec.clone();
    no_target
        .as_object_mut()
        .expect("object")
        .remove("audience");
    let mut bad_cost = spec.clone();
    bad_cost["cost"] = json!({"per_delivery": -1});
    for (body, path) in [
        (bad, "days"),
        (bad_conversion, "conversion"),
        (no_target, "control"),
        (bad_cost, "cost"),
    ] {
        let (status, answer) = post(&body);
        assert_eq!(status, 400, "{body} → {answer}");
        assert!(
            answer["error"]["path"]
                .as_str()
                .is_some_and(|p| p.starts_with(path)),
            "{path}: {answer}"
        );
    }
    let (status, _) = post(&json!({"campaign": "c1"}));
    assert_eq!(status, 400);
}

#[test]
fn saved_reports_are_stored_as_tables_and_follow_their_campaign() {
    let dir = tempfile::tempdir().expect("tempdir");
    let wh = campaign_world(dir.path());
    let spec = json!({
        "campaign": "c1", "audience": "tgt", "control": "hold",
        "from": "2026-11-10", "to": "2026-11-10", "days": 7,
        "positive": [{"metric": "revenue", "value": 0.3}],
        "negative": [{"metric": {"event": "unfollow_official_account"}, "value": 5.0}],
        "cost": {"per_delivery": 2.0, "fixed": 10.0}
    });
    let file = dir.path().join("campaign.json");
    std::fs::write(&file, spec.to_string()).expect("write");
    let spec_file = file.to_str().expect("path");
    let saved = json_ok(&shoal(
        &wh,
        &[
            "report", "save", "c1_roi", "--kind", "roi", "--spec", spec_file, "--json",
        ],
    ));
    assert_eq!(saved["run"]["version"], 1, "{saved}");
    assert_eq!(saved["run"]["packs"], json!({"tgt": 1, "hold": 1}));

    // The rows BI tools read: the same figures as the report (worked out by hand above:
    // target 3, reached 2, clicked 1, converted 1; +30 revenue value, −5 unfollows, cost 14).
    let sql = |query: &str| -> Vec<Value> {
        let out = json_ok(&shoal(&wh, &["sql", query, "--format", "json"]));
        out["rows"].as_array().expect("rows").clone()
    };
    let rows = sql(
        "SELECT report, version, campaign, CAST(from_day AS VARCHAR) AS from_day, target, reached, clicked, converted, deliveries, positive, negative, cost, net FROM report_roi",
    );
    assert_eq!(
        rows,
        vec![
            json!({"report": "c1_roi", "version": 1, "campaign": "c1", "from_day": "2026-11-10",
            "target": 3, "reached": 2, "clicked": 1, "converted": 1, "deliveries": 2,
            "positive": 30.0, "negative": 5.0, "cost": 14.0, "net": 11.0})
        ]
    );
    // The run keeps the inputs: the spec verbatim, the table versions and pack versions read.
    let runs =
        sql("SELECT report, version, trigger, status, spec, snapshot, packs FROM report_runs");
    assert_eq!(runs.len(), 1);
    let run = &runs[0];
    assert_eq!(
        (&run["trigger"], &run["status"]),
        (&json!("create"), &json!("ok"))
    );
    let stored: Value = serde_json::from_str(run["spec"].as_str().expect("spec")).expect("json");
    assert_eq!(stored, spec);
    let snapshot: Value =
        serde_json::from_str(run["snapshot"].as_str().expect("snapshot")).expect("json");
    assert!(snapshot["events"].as_u64().is_some(), "{snapshot}");

    // A funnel and a retention report land one row per step / per cohort and period.
    let funnel = dir.path().join("funnel.json");
    std::fs::write(
        &funnel,
        json!({"steps": [{"event": "campaign_message_delivered"}, {"event": "purchase"}],
               "window": "7d", "from": "2026-11-10", "to": "2026-11-20"})
        .to_string(),
    )
    .expect("write");
    json_ok(&shoal(
        &wh,
        &[
            "report",
            "save",
            "deliveries_to_purchase",
            "--kind",
            "funnel",
            "--spec",
            funnel.to_str().expect("path"),
            "--json",
        ],
    ));
    let steps = sql("SELECT step, event, users FROM report_funnel ORDER BY step");
    // Delivered: k1, k2, k4; of those, k1 bought within 7 days (k2 after 10 days).
    assert_eq!(
        steps,
        vec![
            json!({"step": 1, "event": "campaign_message_delivered", "users": 3}),
            json!({"step": 2, "event": "purchase", "users": 1}),
        ]
    );

    // Over HTTP: roles, bad input, and a refresh that follows the campaign's target pack.
    let location = format!("file://{}", wh.display());
    let server = start_server(&[
        "--warehouse",
        &location,
        "serve",
        "--build-every",
        "0",
        "--schedule-every",
        "1",
    ]);
    let call = |role: &str, method: reqwest::Method, path: &str, body: Option<Value>| {
        let mut request = server
            .client(role)
            .request(method, format!("{}{path}", server.base));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().expect("request");
        let status = response.status().as_u16();
        (status, response.json::<Value>().expect("json"))
    };
    let post = reqwest::Method::POST;
    let new = |name: &str, spec: Value| json!({"name": name, "kind": "roi", "spec": spec});
    let (status, body) = call(
        "viewer",
        post.clone(),
        "/api/reports/saved",
        Some(new("v", spec.clone())),
    );
    assert_eq!(status, 403, "{body}");
    let (status, body) = call(
        "analyst",
        post.clone(),
        "/api/reports/saved",
        Some(new("c1_roi", spec.clone())),
    );
    assert_eq!(status, 409, "{body}");
    let mut broken = spec.clone();
    broken["days"] = json!(0);
    let (status, body) = call(
        "analyst",
        post.clone(),
        "/api/reports/saved",
        Some(new("broken", broken)),
    );
    assert_eq!(
        (status, &body["error"]["path"]),
        (400, &json!("days")),
        "{body}"
    );
    let (status, body) = call(
        "analyst",
        post.clone(),
        "/api/reports/saved",
        Some(new("no_spec", json!({"from": "2026-11-10"}))),
    );
    assert_eq!(
        (status, &body["error"]["path"]),
        (400, &json!("spec")),
        "{body}"
    );
    let (status, body) = call(
        "analyst",
        post.clone(),
        "/api/reports/saved",
        Some(json!({"name": "x", "kind": "roi", "spec": spec, "schedule": "0 3 * *"})),
    );
    assert_eq!(
        (status, &body["error"]["path"]),
        (400, &json!("schedule")),
        "{body}"
    );
    let (status, body) = call(
        "analyst",
        post.clone(),
        "/api/reports/saved",
        Some(json!({"name": "../x", "kind": "roi", "spec": spec})),
    );
    assert_eq!(
        (status, &body["error"]["path"]),
        (400, &json!("name")),
        "{body}"
    );
    let (status, body) = call(
        "analyst",
        post.clone(),
        "/api/reports/saved",
        Some(
            json!({"name": "daily", "kind": "roi", "spec": spec, "schedule": "0 3 * * *",
                    "time_zone": "Asia/Shanghai"}),
        ),
    );
    assert_eq!(status, 200, "{body}");
    assert!(
        body["report"]["next_run"]
            .as_str()
            .expect("next")
            .contains("T19:00:00"),
        "{body}"
    );
    let (status, body) = call("viewer", reqwest::Method::GET, "/api/reports/saved", None);
    assert_eq!(status, 200, "{body}");
    let names: Vec<&str> = body["reports"]
        .as_array()
        .expect("reports")
        .iter()
        .map(|r| r["name"].as_str().expect("name"))
        .collect();
    assert_eq!(names, ["c1_roi", "daily", "deliveries_to_purchase"]);

    // The campaign's target pack gains a version: the saved reports reading it follow.
    let (status, body) = call("analyst", post.clone(), "/api/audiences/tgt/refresh", None);
    assert_eq!(status, 200, "{body}");
    let mut followed = Value::Null;
    for _ in 0..60 {
        let (_, detail) = call(
            "viewer",
            reqwest::Method::GET,
            "/api/reports/saved/c1_roi",
            None,
        );
        if detail["runs"].as_array().is_some_and(|r| r.len() == 2) {
            followed = detail;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    let runs = followed["runs"]
        .as_array()
        .expect("a second run after the pack's refresh");
    assert_eq!(
        (&runs[1]["trigger"], &runs[1]["version"]),
        (&json!("pack"), &json!(2))
    );
    assert_eq!(runs[1]["packs"], json!({"tgt": 2, "hold": 1}));
    assert_eq!(followed["rows"][0]["version"], 2);
    assert_eq!(followed["rows"][0]["net"], 11.0);
    // The funnel reads no pack: it did not run again.
    let (_, funnel) = call(
        "viewer",
        reqwest::Method::GET,
        "/api/reports/saved/deliveries_to_purchase",
        None,
    );
    assert_eq!(funnel["runs"].as_array().expect("runs").len(), 1);

    // Refresh by hand, delete and restore.
    let (status, body) = call(
        "viewer",
        post.clone(),
        "/api/reports/saved/c1_roi/refresh",
        None,
    );
    assert_eq!(status, 403, "{body}");
    // The pack-triggered run is visible once committed; its name is released a moment
    // later, and a refresh asked for meanwhile is refused with 409 rather than queued.
    let (mut status, mut body) = (0, Value::Null);
    for _ in 0..40 {
        (status, body) = call(
            "analyst",
            post.clone(),
            "/api/reports/saved/c1_roi/refresh",
            None,
        );
        if status != 409 {
            break;
        }
        assert_eq!(body["error"]["code"], "conflict", "{body}");
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
    assert_eq!(
        (status, &body["version"], &body["trigger"]),
        (200, &json!(3), &json!("manual")),
        "{body}"
    );
    let (status, body) = call(
        "analyst",
        reqwest::Method::DELETE,
        "/api/reports/saved/c1_roi",
        None,
    );
    assert_eq!(status, 403, "only its owner (the CLI) or an admin: {body}");
    let (status, _) = call(
        "admin",
        reqwest::Method::DELETE,
        "/api/reports/saved/c1_roi",
        None,
    );
    assert_eq!(status, 200);
    let (_, body) = call("viewer", reqwest::Method::GET, "/api/reports/saved", None);
    assert_eq!(body["reports"].as_array().expect("reports").len(), 2);
    let (status, body) = call(
        "analyst",
        post.clone(),
        "/api/reports/saved/c1_roi/refresh",
        None,
    );
    assert_eq!(status, 400, "{body}");
    let (status, _) = call(
        "admin",
        post.clone(),
        "/api/reports/saved/c1_roi/restore",
        None,
    );
    assert_eq!(status, 200);
    let (status, body) = call(
        "viewer",
        reqwest::Method::GET,
        "/api/reports/saved/nothing",
        None,
    );
    assert_eq!(status, 404, "{body}");
    let rows = sql("SELECT count(*) AS n FROM report_roi WHERE report = 'c1_roi'");
    assert_eq!(rows[0]["n"], 3, "every version's rows are kept");
}
