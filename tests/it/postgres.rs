//! The Postgres endpoint, driven by the real `psql` and `psycopg`: token sign-in, role views
//! (masked and left-out columns), catalog lookups, and nothing written.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::{Value, json};

use crate::tracking::python;
use crate::{Server, ingest_segment, json_ok, shoal, start_server};

/// a (male, 40, phone), b (female, 22, phone), c (male, 30, no phone).
fn world(dir: &Path) -> std::path::PathBuf {
    let wh = dir.join("wh");
    let people = [
        (
            "a",
            json!({"gender": "male", "age": 40, "phone": "13800000001"}),
        ),
        (
            "b",
            json!({"gender": "female", "age": 22, "phone": "13800000002"}),
        ),
        ("c", json!({"gender": "male", "age": 30})),
    ];
    let lines: Vec<String> = people
        .iter()
        .map(|(login, traits)| {
            json!({"type": "identify", "messageId": format!("i-{login}"), "userId": login,
                   "timestamp": "2026-11-01T02:00:00Z", "traits": traits})
            .to_string()
        })
        .collect();
    let file = dir.join("people.jsonl");
    std::fs::write(&file, lines.join("\n")).expect("write");
    ingest_segment(&wh, &file);
    json_ok(&shoal(&wh, &["build", "--json"]));
    wh
}

fn psql(server: &Server, password: &str, sql: &str) -> Output {
    let (host, port) = server.postgres.rsplit_once(':').expect("host:port");
    Command::new("psql")
        .args([
            "-h", host, "-p", port, "-U", "bi", "-d", "shoal", "-X", "-A", "-t", "-F", "|",
        ])
        .args(["-c", sql])
        .env("PGPASSWORD", password)
        .env("PGCONNECT_TIMEOUT", "10")
        .output()
        .expect("psql is installed (./scripts/test installs it)")
}

fn psql_ok(server: &Server, password: &str, sql: &str) -> Vec<String> {
    let out = psql(server, password, sql);
    assert!(
        out.status.success(),
        "psql {sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .filter(|l| !l.is_empty())
        .collect()
}

fn psql_err(server: &Server, password: &str, sql: &str) -> String {
    let out = psql(server, password, sql);
    assert!(!out.status.success(), "psql {sql} should fail");
    String::from_utf8_lossy(&out.stderr).to_string()
}

/// The same query over HTTP, as a second path to the same answer.
fn http_rows(server: &Server, role: &str, sql: &str) -> Vec<Value> {
    let response = server
        .client(role)
        .post(format!("{}/api/query/sql", server.base))
        .json(&json!({"sql": sql}))
        .send()
        .expect("post");
    assert_eq!(response.status(), 200);
    let body: Value = response.json().expect("json");
    body["rows"].as_array().expect("rows").clone()
}

#[test]
fn psql_reads_the_warehouse_as_the_tokens_role_and_writes_nothing() {
    let dir = tempfile::tempdir().expect("dir");
    let wh = world(dir.path());
    let location = format!("file://{}", wh.display());
    let server = start_server(&["--warehouse", &location, "serve", "--build-every", "0"]);
    let (viewer, admin) = (server.token("viewer"), server.token("admin"));

    assert_eq!(
        psql_ok(&server, viewer, "SELECT count(*) FROM users"),
        ["3"]
    );
    assert_eq!(
        psql_ok(
            &server,
            viewer,
            "SELECT gender, count(*) FROM users GROUP BY gender ORDER BY gender"
        ),
        ["female|1", "male|2"]
    );
    // Phones: masked for a viewer (hand-computed), clear for an admin, and the same as the
    // HTTP API gives the same token.
    let sql = "SELECT phone FROM users WHERE phone IS NOT NULL ORDER BY phone";
    let masked = psql_ok(&server, viewer, sql);
    assert_eq!(masked, ["+86138****0001", "+86138****0002"]);
    let analyst_sees = psql_ok(&server, server.token("analyst"), sql);
    assert_eq!(analyst_sees, masked);
    let over_http: Vec<String> = http_rows(&server, "analyst", sql)
        .iter()
        .map(|r| r["phone"].as_str().expect("phone").to_string())
        .collect();
    assert_eq!(masked, over_http);
    assert_eq!(
        psql_ok(&server, admin, sql),
        ["+8613800000001", "+8613800000002"]
    );
    // A secret column is not there for a viewer, whatever the query.
    let error = psql_err(&server, viewer, "SELECT token_hash FROM api_tokens");
    assert!(error.contains("secret"), "{error}");
    let columns = psql_ok(
        &server,
        viewer,
        "SELECT column_name FROM information_schema.columns WHERE table_name = 'api_tokens' ORDER BY column_name",
    );
    let all = psql_ok(
        &server,
        viewer,
        "SELECT table_schema, table_name FROM information_schema.tables WHERE table_schema <> 'pg_catalog'",
    );
    assert!(
        !columns.iter().any(|c| c == "token_hash"),
        "{columns:?} {all:?}"
    );
    assert!(columns.iter().any(|c| c == "role"), "{columns:?} {all:?}");

    // psql's own catalog queries.
    let listed = psql_ok(&server, viewer, "\\dt");
    assert!(listed.iter().any(|l| l.contains("|users|")), "{listed:?}");
    let described = psql_ok(&server, viewer, "\\d users");
    assert!(
        described.iter().any(|l| l.starts_with("gender|")),
        "{described:?}"
    );

    // Read-only, whatever the statement.
    for statement in [
        "CREATE TABLE x (a INT)",
        "INSERT INTO users (user_id) VALUES (99)",
        "DELETE FROM users",
        "DROP TABLE users",
        "COPY users TO '/tmp/shoal-copy.csv'",
        "SET datafusion.execution.batch_size = 1",
    ] {
        let error = psql_err(&server, admin, statement);
        assert!(
            error.contains("read-only") || error.contains("cannot be set"),
            "{statement}: {error}"
        );
    }
    assert!(!Path::new("/tmp/shoal-copy.csv").exists());
    let metrics = reqwest::blocking::get(format!("{}/metrics", server.base))
        .expect("metrics")
        .text()
        .expect("text");
    assert!(
        metrics
            .lines()
            .any(|l| l == "shoal_postgres_statements_total{outcome=\"refused\"} 6"),
        "{metrics}"
    );
    assert_eq!(psql_ok(&server, admin, "SELECT count(*) FROM users"), ["3"]);
    assert_eq!(
        psql_ok(&server, admin, "SET application_name = 'bi'; SELECT 1"),
        ["SET", "1"]
    );

    // Sign-in: a wrong or revoked token is refused.
    let error = psql_err(&server, "shoal_00000000_nope", "SELECT 1");
    assert!(error.contains("password authentication failed"), "{error}");
    let analyst = server.token("analyst");
    let id = analyst.split('_').nth(1).expect("token id");
    let revoked = server
        .client("admin")
        .delete(format!("{}/api/tokens/{id}", server.base))
        .send()
        .expect("revoke");
    assert_eq!(revoked.status(), 200);
    let error = psql_err(&server, analyst, "SELECT 1");
    assert!(error.contains("password authentication failed"), "{error}");
}

#[test]
#[ignore = "needs psycopg in the test venv; ./scripts/test installs it and runs this"]
fn psycopg_uses_both_protocols_and_prepared_statements() {
    let dir = tempfile::tempdir().expect("dir");
    let wh = world(dir.path());
    let location = format!("file://{}", wh.display());
    let server = start_server(&["--warehouse", &location, "serve", "--build-every", "0"]);
    let (host, port) = server.postgres.rsplit_once(':').expect("host:port");
    let out = Command::new(python())
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/python/postgres_client.py"
        ))
        .args([host, port, server.token("viewer")])
        .output()
        .expect("python");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(seen["older_than_25"], json!([["a", 40], ["c", 30]]));
    // age > 20: all three; age > 35: a.
    assert_eq!(seen["prepared_counts"], json!([3, 1]));
    assert_eq!(seen["phones"], json!(["+86138****0001", "+86138****0002"]));
    assert_eq!(seen["simple"], json!([["female", 1], ["male", 2]]));
    let tables = seen["tables"].as_array().expect("tables");
    for table in ["users", "events", "orders", "audience_versions"] {
        assert!(tables.contains(&json!(table)), "{table}: {tables:?}");
    }
    assert_eq!(seen["pg_class_has_users"], true);
    for error in seen["write_errors"].as_array().expect("errors") {
        assert!(
            error.as_str().is_some_and(|e| e.contains("read-only")),
            "{error}"
        );
    }
    assert_eq!(seen["still_three"], 3);
}
