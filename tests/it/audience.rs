//! Audience packs: made from conditions, SQL, set expressions and uploads; versions, diffs,
//! refreshes, deletes, exports and the scheduler.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;

use serde_json::{Value, json};
use sha2::Digest;

use crate::{Server, ingest_segment, json_ok, make_token, rows, shoal, start_server, stdout_ok};

fn identify(id: &str, login: &str, traits: Value) -> Value {
    json!({"type": "identify", "messageId": id, "userId": login, "timestamp": "2026-11-01T02:00:00Z",
           "traits": traits})
}

fn write_lines(dir: &Path, name: &str, lines: &[Value]) -> PathBuf {
    let file = dir.join(name);
    let text: Vec<String> = lines.iter().map(Value::to_string).collect();
    std::fs::write(&file, text.join("\n") + "\n").expect("write");
    file
}

/// Five people: a (m, 40, phone …01), b (f, 22, …02), c (m, 30), d (m, 55, …04), e (f, 35).
fn world(dir: &Path) -> PathBuf {
    let wh = dir.join("wh");
    let file = write_lines(
        dir,
        "people.jsonl",
        &[
            identify(
                "i-a",
                "a",
                json!({"gender": "male", "age": 40, "phone": "13800000001"}),
            ),
            identify(
                "i-b",
                "b",
                json!({"gender": "female", "age": 22, "phone": "13800000002"}),
            ),
            identify("i-c", "c", json!({"gender": "male", "age": 30})),
            identify(
                "i-d",
                "d",
                json!({"gender": "male", "age": 55, "phone": "13800000004"}),
            ),
            identify("i-e", "e", json!({"gender": "female", "age": 35})),
        ],
    );
    ingest_segment(&wh, &file);
    json_ok(&shoal(&wh, &["build", "--json"]));
    wh
}

/// login id → user id, read with SQL.
fn ids(wh: &Path) -> BTreeMap<String, u64> {
    let out = json_ok(&shoal(
        wh,
        &[
            "sql",
            "SELECT login_id, user_id FROM users",
            "--format",
            "json",
        ],
    ));
    out["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| {
            (
                r["login_id"].as_str().expect("login").to_string(),
                r["user_id"].as_u64().expect("id"),
            )
        })
        .collect()
}

fn members(wh: &Path, name: &str, who: &BTreeMap<String, u64>) -> Vec<String> {
    let out = stdout_ok(&shoal(wh, &["audience", "export", name, "--format", "csv"]));
    let mut logins: Vec<String> = out
        .lines()
        .skip(1)
        .map(|line| {
            let id: u64 = line.trim().parse().expect("user id");
            who.iter()
                .find(|(_, v)| **v == id)
                .map(|(k, _)| k.clone())
                .expect("a known person")
        })
        .collect();
    logins.sort();
    logins
}

fn failed(output: &Output) -> String {
    assert!(!output.status.success(), "should fail");
    String::from_utf8_lossy(&output.stderr).to_string()
}

fn create(wh: &Path, args: &[&str]) -> Value {
    let mut all = vec!["audience", "create"];
    all.extend_from_slice(args);
    all.push("--json");
    json_ok(&shoal(wh, &all))
}

#[test]
fn packs_come_from_conditions_sql_expressions_and_uploads() {
    let dir = tempfile::tempdir().expect("dir");
    let wh = world(dir.path());
    let who = ids(&wh);
    let tree = dir.path().join("men.json");
    std::fs::write(&tree, r#"{"field": "gender", "op": "eq", "value": "male"}"#).expect("tree");

    let men = create(&wh, &["men", "--conditions", tree.to_str().expect("path")]);
    assert_eq!(men["version"]["version"], 1);
    assert_eq!(men["version"]["size"], 3);
    assert_eq!(men["version"]["added"], 3);
    assert_eq!(members(&wh, "men", &who), ["a", "c", "d"]);
    let older = create(
        &wh,
        &[
            "over_35",
            "--sql",
            "SELECT user_id FROM users WHERE age >= 35",
        ],
    );
    assert_eq!(older["version"]["size"], 3);
    assert_eq!(members(&wh, "over_35", &who), ["a", "d", "e"]);

    // Set algebra, checked against the hand-computed sets.
    for (name, expr, expected) in [
        ("both", "men & over_35", vec!["a", "d"]),
        ("either", "men | over_35", vec!["a", "c", "d", "e"]),
        ("young_men", "men - over_35", vec!["c"]),
        ("one_of", "men ^ over_35", vec!["c", "e"]),
        // `-` binds tighter than `&`: ((men | over_35) - men) & over_35.
        ("grouped", "(men | over_35) - men & over_35", vec!["e"]),
    ] {
        create(&wh, &[name, "--expr", expr]);
        assert_eq!(members(&wh, name, &who), expected, "{expr}");
    }

    // An uploaded list: phones in any format, a hashed phone, a login id, strangers and junk.
    let hashed: String = sha2::Sha256::digest(b"+8613800000004")
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let list = dir.path().join("list.txt");
    std::fs::write(
        &list,
        format!("13800000001\n+86 138 0000 0002\n{hashed}\n13900000000\n138****0001\nL_nobody\n13800000001\ne\n"),
    )
    .expect("list");
    let uploaded = create(&wh, &["phones", "--upload", list.to_str().expect("path")]);
    let report = &uploaded["version"]["report"];
    assert_eq!(report["rows"], 8, "{report}");
    assert_eq!(report["matched"], 4, "{report}");
    assert_eq!(
        report["by_type"],
        json!({"phone": 2, "phone_sha256": 1, "login_id": 1}),
        "{report}"
    );
    assert_eq!(report["unmatched"], 2, "{report}");
    assert_eq!(report["invalid"], 1, "{report}");
    assert_eq!(report["duplicates"], 1, "{report}");
    assert_eq!(members(&wh, "phones", &who), ["a", "b", "d", "e"]);
    let unmatched = stdout_ok(&shoal(&wh, &["audience", "unmatched", "phones"]));
    assert_eq!(
        unmatched.lines().collect::<Vec<_>>(),
        [
            "line,value,reason",
            "4,13900000000,unmatched",
            "5,138****0001,invalid",
            "6,L_nobody,unmatched"
        ]
    );

    // Mistakes are refused with the field named, and nothing is written.
    for (args, says) in [
        (vec!["bad-name", "--expr", "men"], "name:"),
        (vec!["men", "--expr", "over_35"], "exists"),
        (
            vec!["x1", "--expr", "men & nobody"],
            "unknown audience 'nobody'",
        ),
        (vec!["x2", "--expr", "men & (over_35"], "column 15"),
        (vec!["x3", "--expr", "x3 | men"], "itself"),
        (
            vec!["x4", "--sql", "SELECT login_id FROM users"],
            "first column",
        ),
        (vec!["x5", "--sql", "DROP TABLE users"], "DDL"),
        (
            vec!["x6", "--expr", "men", "--dynamic", "0 3 * *"],
            "schedule:",
        ),
        (
            vec![
                "x7",
                "--expr",
                "men",
                "--dynamic",
                "0 3 * * *",
                "--zone",
                "Nowhere/City",
            ],
            "time_zone:",
        ),
    ] {
        let mut all = vec!["audience", "create"];
        all.extend_from_slice(&args);
        let error = failed(&shoal(&wh, &all));
        assert!(error.contains(says), "{args:?}: {error}");
    }
    let listed = json_ok(&shoal(&wh, &["audience", "list", "--json"]));
    let names: Vec<&str> = listed["audiences"]
        .as_array()
        .expect("list")
        .iter()
        .map(|a| a["name"].as_str().expect("name"))
        .collect();
    assert_eq!(
        names,
        [
            "both",
            "either",
            "grouped",
            "men",
            "one_of",
            "over_35",
            "phones",
            "young_men"
        ]
    );

    // Refresh after new data: a new version with what changed, and who entered.
    let file = write_lines(
        dir.path(),
        "more.jsonl",
        &[identify("i-f", "f", json!({"gender": "male", "age": 61}))],
    );
    ingest_segment(&wh, &file);
    json_ok(&shoal(&wh, &["build", "--json"]));
    let who = ids(&wh);
    let refreshed = json_ok(&shoal(&wh, &["audience", "refresh", "over_35"]));
    assert_eq!(refreshed["version"], 2);
    assert_eq!(
        (refreshed["added"].as_u64(), refreshed["removed"].as_u64()),
        (Some(1), Some(0))
    );
    let diff = json_ok(&shoal(
        &wh,
        &[
            "audience", "diff", "over_35", "--from", "1", "--to", "2", "--list", "entered",
        ],
    ));
    assert_eq!(diff["entered"], 1);
    assert_eq!(diff["left"], 0);
    assert_eq!(diff["users"], json!([who["f"]]));
    // Uploaded lists are fixed; once packs keep their members until refreshed.
    assert!(failed(&shoal(&wh, &["audience", "refresh", "phones"])).contains("uploaded list"));
    assert_eq!(members(&wh, "both", &who), ["a", "d"]);

    // Delete is soft: the pack leaves lists and expressions, restore brings it back.
    stdout_ok(&shoal(&wh, &["audience", "delete", "men"]));
    let error = failed(&shoal(
        &wh,
        &["audience", "create", "x8", "--expr", "men | over_35"],
    ));
    assert!(error.contains("deleted"), "{error}");
    let error = failed(&shoal(&wh, &["audience", "refresh", "both"]));
    assert!(error.contains("deleted"), "{error}");
    let shown = json_ok(&shoal(&wh, &["audience", "show", "both"]));
    let runs = shown["runs"].as_array().expect("runs");
    assert_eq!(runs.last().expect("run")["status"], "failed");
    assert_eq!(shown["version"], 1, "the previous version stays current");
    let listed = json_ok(&shoal(&wh, &["audience", "list", "--json"]));
    assert!(!listed.to_string().contains("\"men\""));
    stdout_ok(&shoal(&wh, &["audience", "restore", "men"]));
    // Expressions read the packs' current versions: `men` still holds its first version.
    let again = json_ok(&shoal(&wh, &["audience", "refresh", "both"]));
    assert_eq!(
        (again["version"].as_u64(), again["size"].as_u64()),
        (Some(2), Some(2))
    );
    let men = json_ok(&shoal(&wh, &["audience", "refresh", "men"]));
    assert_eq!(men["added"], 1, "f is a man");
    let again = json_ok(&shoal(&wh, &["audience", "refresh", "both"]));
    assert_eq!(again["size"], 3, "a, d and the new f");
    let versions = json_ok(&shoal(&wh, &["audience", "versions", "both"]));
    let sizes: Vec<&Value> = versions["versions"]
        .as_array()
        .expect("versions")
        .iter()
        .map(|v| &v["size"])
        .collect();
    assert_eq!(sizes, [&json!(2), &json!(2), &json!(3)]);
}

fn get(server: &Server, role: &str, path: &str) -> (u16, String) {
    let response = server
        .client(role)
        .get(format!("{}{path}", server.base))
        .send()
        .expect("get");
    (response.status().as_u16(), response.text().expect("text"))
}

fn post(server: &Server, token: &str, path: &str, body: &Value) -> (u16, Value) {
    let response = reqwest::blocking::Client::new()
        .post(format!("{}{path}", server.base))
        .bearer_auth(token)
        .json(body)
        .send()
        .expect("post");
    let status = response.status().as_u16();
    (status, response.json().unwrap_or(Value::Null))
}

#[test]
fn the_audience_api_follows_roles_and_masks_exports() {
    let dir = tempfile::tempdir().expect("dir");
    let wh = world(dir.path());
    let who = ids(&wh);
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
    let analyst = server.token("analyst").to_string();
    let men =
        json!({"name": "men", "conditions": {"field": "gender", "op": "eq", "value": "male"}});

    let (status, error) = post(&server, server.token("viewer"), "/api/audiences", &men);
    assert_eq!(status, 403, "{error}");
    let (status, made) = post(&server, &analyst, "/api/audiences", &men);
    assert_eq!(status, 200, "{made}");
    assert_eq!(made["audience"]["size"], 3);
    assert!(
        made["audience"]["owner"]
            .as_str()
            .expect("owner")
            .starts_with("token:")
    );
    let (status, error) = post(&server, &analyst, "/api/audiences", &men);
    assert_eq!(status, 409, "{error}");
    let (status, error) = post(
        &server,
        &analyst,
        "/api/audiences",
        &json!({"name": "bad", "conditions": {"field": "nope", "op": "eq", "value": 1}}),
    );
    assert_eq!(status, 400);
    assert_eq!(error["error"]["path"], "field", "{error}");
    let (status, error) = post(
        &server,
        &analyst,
        "/api/audiences",
        &json!({"name": "two", "sql": "SELECT 1", "expr": "men"}),
    );
    assert_eq!(status, 400);
    assert_eq!(error["error"]["path"], "source", "{error}");

    // Uploads over HTTP report their matches.
    let response = reqwest::blocking::Client::new()
        .post(format!(
            "{}/api/audiences/upload?name=vip&id_type=phone&filename=vip.csv",
            server.base
        ))
        .bearer_auth(&analyst)
        .body("手机号,备注\n13800000001,老客\n13800000002,新客\n13812345678,?\n")
        .send()
        .expect("upload");
    assert_eq!(response.status().as_u16(), 200);
    let uploaded: Value = response.json().expect("json");
    assert_eq!(uploaded["version"]["report"]["matched"], 2, "{uploaded}");
    let (status, csv) = get(
        &server,
        "analyst",
        "/api/audiences/vip/versions/1/unmatched",
    );
    assert_eq!(
        (status, csv.as_str()),
        (200, "line,value,reason\n4,13812345678,unmatched\n")
    );

    // Exports: analysts get phones hashed (SHA-256 of E.164, uppercase), admins in clear,
    // viewers get internal columns masked; every export is logged.
    let sha = |phone: &str| -> String {
        sha2::Sha256::digest(phone.as_bytes())
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect()
    };
    let (status, csv) = get(
        &server,
        "analyst",
        "/api/audiences/men/export?columns=phone,gender",
    );
    assert_eq!(status, 200, "{csv}");
    let mut expected = [
        (who["a"], sha("+8613800000001")),
        (who["c"], String::new()),
        (who["d"], sha("+8613800000004")),
    ];
    expected.sort();
    let expected: Vec<String> = std::iter::once("user_id,phone,gender".to_string())
        .chain(
            expected
                .iter()
                .map(|(id, phone)| format!("{id},{phone},male")),
        )
        .collect();
    assert_eq!(csv.lines().collect::<Vec<_>>(), expected);
    let (_, lines) = get(
        &server,
        "admin",
        "/api/audiences/men/export?columns=phone&format=jsonl",
    );
    let admin_rows: Vec<Value> = lines
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert_eq!(admin_rows.len(), 3);
    assert!(admin_rows.iter().any(|r| r["phone"] == "+8613800000001"));
    let (status, viewer) = get(
        &server,
        "viewer",
        "/api/audiences/men/export?columns=login_id&format=jsonl",
    );
    assert_eq!(status, 200, "{viewer}");
    // login_id is internal: viewers export it masked (short values hide entirely).
    let viewer_rows: Vec<Value> = viewer
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert_eq!(viewer_rows.len(), 3);
    assert!(
        viewer_rows.iter().all(|r| r["login_id"] == "****"),
        "{viewer}"
    );
    let (status, error) = get(&server, "analyst", "/api/audiences/men/export?columns=nope");
    assert_eq!(status, 400, "{error}");
    assert!(error.contains("columns[0]"), "{error}");
    let (status, _) = get(&server, "analyst", "/api/audiences/men/export?format=xml");
    assert_eq!(status, 400);
    let (status, _) = get(&server, "analyst", "/api/audiences/nobody/export");
    assert_eq!(status, 404);
    let logged = rows(&wh, "audience_exports");
    assert_eq!(logged.len(), 3, "{logged:?}");
    assert!(
        logged
            .iter()
            .any(|r| r["role"] == "viewer" && r["rows"] == 3)
    );

    // Only the owner or an admin deletes.
    let other = make_token(&["--warehouse", &location], "analyst");
    let response = reqwest::blocking::Client::new()
        .delete(format!("{}/api/audiences/men", server.base))
        .bearer_auth(&other)
        .send()
        .expect("delete");
    assert_eq!(response.status().as_u16(), 403);
    let response = server
        .client("admin")
        .delete(format!("{}/api/audiences/vip", server.base))
        .send()
        .expect("delete");
    assert_eq!(response.status().as_u16(), 200);
    let (status, _) = get(&server, "viewer", "/api/audiences/vip/versions");
    assert_eq!(status, 200, "deleted packs keep their history");

    // A dynamic pack is refreshed by the server's scheduler.
    let (status, made) = post(
        &server,
        &analyst,
        "/api/audiences",
        &json!({"name": "every_minute", "expr": "men", "mode": "dynamic", "schedule": "* * * * *"}),
    );
    assert_eq!(status, 200, "{made}");
    assert!(made["audience"]["next_run"].is_string(), "{made}");
    let mut refreshed = Value::Null;
    for _ in 0..150 {
        std::thread::sleep(std::time::Duration::from_millis(500));
        let (_, text) = get(&server, "viewer", "/api/audiences/every_minute");
        refreshed = serde_json::from_str(&text).expect("json");
        // The run is recorded just after the version it made is committed: wait for both.
        let scheduled = refreshed["runs"].as_array().is_some_and(|runs| {
            runs.iter()
                .any(|r| r["trigger"] == "schedule" || r["trigger"] == "catch_up")
        });
        if scheduled && refreshed["versions"].as_array().map(Vec::len) >= Some(2) {
            break;
        }
    }
    let runs = refreshed["runs"].as_array().expect("runs");
    assert!(
        runs.iter()
            .any(|r| r["trigger"] == "schedule" || r["trigger"] == "catch_up"),
        "{refreshed}"
    );
    assert_eq!(refreshed["versions"][1]["size"], 3, "{refreshed}");
    assert_eq!(refreshed["versions"][1]["added"], 0);
}

/// 40 planted fans (female, 30–33, platinum, employed) among 260 others who never have all of
/// that; the first 25 fans are the seed.
fn fans_world(dir: &Path) -> PathBuf {
    let wh = dir.join("wh");
    let mut people = Vec::new();
    for i in 0..40 {
        people.push(identify(
            &format!("i-fan{i}"),
            &format!("fan{i:02}"),
            json!({"gender": "female", "age": 30 + i % 4, "member_level": "platinum", "has_job": true}),
        ));
    }
    let genders = ["male", "female", "unknown"];
    let levels = ["none", "silver", "gold", "platinum"];
    for i in 0..260u32 {
        let level = levels[(i % 4) as usize];
        // Platinum others are men or unknown and out of work: never the fans' profile.
        let gender = if level == "platinum" {
            genders[(i % 2 * 2) as usize]
        } else {
            genders[(i % 3) as usize]
        };
        people.push(identify(
            &format!("i-p{i}"),
            &format!("p{i:03}"),
            json!({"gender": gender, "age": 18 + (i * 7) % 50, "member_level": level,
                   "has_job": level != "platinum" && i % 2 == 0}),
        ));
    }
    let file = write_lines(dir, "people.jsonl", &people);
    ingest_segment(&wh, &file);
    json_ok(&shoal(&wh, &["build", "--json"]));
    wh
}

#[test]
fn lookalikes_find_the_planted_fans_and_report_a_holdout_check() {
    let dir = tempfile::tempdir().expect("dir");
    let wh = fans_world(dir.path());
    let who = ids(&wh);
    let seed_sql = "SELECT user_id FROM users WHERE login_id LIKE 'fan%' AND CAST(substr(login_id, 4) AS INT) < 25";
    let seed = create(&wh, &["fans_seed", "--sql", seed_sql]);
    assert_eq!(seed["version"]["size"], 25);
    let unseen: Vec<String> = (25..40).map(|i| format!("fan{i}")).collect();

    // 20 people added: the 15 fans outside the seed and 5 others.
    let made = create(
        &wh,
        &["fans_like", "--lookalike", "fans_seed", "--size", "20"],
    );
    assert_eq!(made["version"]["size"], 20, "{made}");
    let like = members(&wh, "fans_like", &who);
    assert!(unseen.iter().all(|f| like.contains(f)), "{like:?}");
    assert_eq!(like.iter().filter(|m| m.starts_with('p')).count(), 5);
    let report = &made["version"]["report"];
    assert_eq!(report["method"], "logistic");
    assert_eq!(report["seed_size"], 25);
    assert_eq!(report["outside_seed"], 275);
    // The check hides a fifth of the seed and draws 20 of the people outside what is left
    // visible: the 20 fans there (hidden and unseen) outrank everyone else, so it finds every
    // hidden one, where a random draw would find 20 / (275 + hidden) of them.
    let holdout = &report["holdout"];
    let hidden = holdout["hidden"].as_u64().expect("hidden");
    assert!(hidden > 0, "{holdout}");
    assert_eq!(holdout["found"], hidden, "{holdout}");
    let random = 20.0 / (275 + hidden) as f64;
    let lift = holdout["lift"].as_f64().expect("lift");
    assert!((lift - 1.0 / random).abs() < 0.01, "{holdout}");
    assert!(
        report["features"]
            .as_array()
            .expect("features")
            .contains(&json!("member_level=platinum")),
        "{report}"
    );

    // Top 10% of the 275 outside: ceil(27.5) = 28 people, the 15 fans among them.
    let wider = create(
        &wh,
        &[
            "fans_wide",
            "--lookalike",
            "fans_seed",
            "--percent",
            "10",
            "--method",
            "cosine",
        ],
    );
    assert_eq!(wider["version"]["size"], 28, "{wider}");
    let wide = members(&wh, "fans_wide", &who);
    assert!(unseen.iter().all(|f| wide.contains(f)), "{wide:?}");
    assert!(
        !wide
            .iter()
            .any(|m| m.starts_with("fan") && !unseen.contains(m))
    );

    // A refresh recomputes from the seed's current members: same snapshot, same people.
    stdout_ok(&shoal(&wh, &["audience", "refresh", "fans_like"]));
    let versions = json_ok(&shoal(&wh, &["audience", "versions", "fans_like"]));
    let again = &versions["versions"][1];
    assert_eq!(again["version"], 2, "{versions}");
    assert_eq!(again["added"], 0, "{versions}");
    assert_eq!(again["removed"], 0, "{versions}");

    // Bad definitions name what is wrong.
    for (args, needle) in [
        (
            vec!["x1", "--lookalike", "nobody", "--size", "5"],
            "unknown audience 'nobody'",
        ),
        (
            vec!["x2", "--lookalike", "fans_seed", "--size", "0"],
            "at least one person",
        ),
        (
            vec!["x3", "--lookalike", "fans_seed", "--size", "276"],
            "more than the 275 people",
        ),
        (
            vec!["x4", "--lookalike", "fans_seed", "--percent", "150"],
            "lookalike.percent",
        ),
        (
            vec![
                "x5",
                "--lookalike",
                "fans_seed",
                "--size",
                "5",
                "--features",
                "city",
            ],
            "'city' is string",
        ),
        (
            vec![
                "x6",
                "--lookalike",
                "fans_seed",
                "--size",
                "5",
                "--features",
                "shoe_size",
            ],
            "no field 'shoe_size'",
        ),
    ] {
        let mut all = vec!["audience", "create"];
        all.extend_from_slice(&args);
        let message = failed(&shoal(&wh, &all));
        assert!(message.contains(needle), "{args:?}: {message}");
    }
    let small = create(&wh, &["few", "--sql", "SELECT user_id FROM users LIMIT 5"]);
    assert_eq!(small["version"]["size"], 5);
    let message = failed(&shoal(
        &wh,
        &[
            "audience",
            "create",
            "few_like",
            "--lookalike",
            "few",
            "--size",
            "3",
        ],
    ));
    assert!(message.contains("at least 20"), "{message}");

    // Over HTTP, with the analyst's grants; a viewer may not make packs.
    let location = format!("file://{}", wh.display());
    let server = start_server(&["--warehouse", &location, "serve", "--build-every", "0"]);
    // Exactly 15: the fans outside the seed.
    let body = json!({"name": "fans_api", "lookalike": {"seed": "fans_seed", "size": 15, "method": "cosine"}});
    let (status, _) = post(&server, server.token("viewer"), "/api/audiences", &body);
    assert_eq!(status, 403);
    let analyst = server.token("analyst").to_string();
    let (status, made) = post(&server, &analyst, "/api/audiences", &body);
    assert_eq!(status, 200, "{made}");
    assert_eq!(members(&wh, "fans_api", &who), unseen);
    let (status, error) = post(
        &server,
        &analyst,
        "/api/audiences",
        &json!({"name": "bad", "lookalike": {"seed": "fans_seed", "size": 5, "percent": 2}}),
    );
    assert_eq!(status, 400, "{error}");
    assert_eq!(error["error"]["path"], "lookalike", "{error}");
    let (status, error) = post(
        &server,
        &analyst,
        "/api/audiences",
        &json!({"name": "bad", "lookalike": {"seed": "fans_seed", "size": 5, "weird": 1}}),
    );
    assert!(status == 400 || status == 422, "{status} {error}");
}

#[test]
#[ignore = "needs pyroaring and deltalake; ./scripts/test installs them and runs this"]
fn stored_bitmaps_read_the_same_in_croaring() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sample = dir.path().join("sample");
    let manifest = crate::demo_data(&sample, 5000, 3);
    let wh = dir.path().join("wh");
    crate::ingest_sample(&wh, &sample, &manifest, true);
    json_ok(&shoal(&wh, &["build", "--json", "--as-of", "2026-11-20"]));
    // Dense (every id: runs or a bitset), half the ids (a bitset container), sparse (arrays).
    let packs = [
        ("everyone", "SELECT user_id FROM users"),
        (
            "even_ids",
            "SELECT user_id FROM users WHERE user_id % 2 = 0",
        ),
        ("over_40", "SELECT user_id FROM users WHERE age >= 40"),
    ];
    let mut expected = BTreeMap::new();
    for (name, sql) in packs {
        create(&wh, &[name, "--sql", sql]);
        let out = json_ok(&shoal(
            &wh,
            &[
                "sql",
                &format!("{sql} ORDER BY user_id"),
                "--format",
                "json",
            ],
        ));
        let ids: Vec<u64> = out["rows"]
            .as_array()
            .expect("rows")
            .iter()
            .map(|r| r["user_id"].as_u64().expect("id"))
            .collect();
        expected.insert(name, ids);
    }
    let out = std::process::Command::new(crate::tracking::python())
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/python/bitmaps_pyroaring.py"
        ))
        .arg(wh.join("audience_versions"))
        .output()
        .expect("python");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let read: Value = serde_json::from_slice(&out.stdout).expect("json");
    let mut kinds = BTreeMap::new();
    for (name, ids) in &expected {
        let version = &read[*name]["1"];
        assert!(
            ids.len() > 100,
            "{name}: a pack worth reading ({})",
            ids.len()
        );
        assert_eq!(version["size"].as_u64(), Some(ids.len() as u64), "{name}");
        assert_eq!(version["stored_size"], version["size"], "{name}");
        assert_eq!(version["members"], json!(ids), "{name}");
        for (kind, n) in version["containers"].as_object().expect("containers") {
            *kinds.entry(kind.clone()).or_insert(0) += n.as_u64().expect("count");
        }
    }
    assert!(
        kinds["array"] > 0 && kinds["bitset"] + kinds["run"] > 0,
        "the packs span container kinds: {kinds:?}"
    );
}
