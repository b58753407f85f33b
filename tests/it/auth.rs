//! API tokens, roles and what each role may read.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use sha2::Digest;

use crate::{Server, ingest_segment, json_ok, rows, shoal, start_server, stdout_ok};

/// Two people; `a` gave a phone.
fn world(dir: &Path) -> PathBuf {
    let wh = dir.join("wh");
    let lines = [
        json!({"type": "identify", "messageId": "i-a", "userId": "a", "timestamp": "2026-11-01T02:00:00Z",
               "traits": {"gender": "male", "phone": "138 1234 5678"}}),
        json!({"type": "identify", "messageId": "i-b", "userId": "b", "timestamp": "2026-11-01T02:00:00Z",
               "traits": {"gender": "female"}}),
    ];
    let file = dir.join("events.jsonl");
    let text: Vec<String> = lines.iter().map(Value::to_string).collect();
    std::fs::write(&file, text.join("\n") + "\n").expect("write");
    ingest_segment(&wh, &file);
    json_ok(&shoal(&wh, &["build", "--json"]));
    wh
}

fn serve(wh: &Path) -> Server {
    let location = format!("file://{}", wh.display());
    start_server(&["--warehouse", &location, "serve", "--build-every", "0"])
}

/// `(status, body)` of a request sent with `token` (none when `None`).
fn call(
    server: &Server,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let client = reqwest::blocking::Client::new();
    let url = format!("{}{path}", server.base);
    let mut request = match method {
        "GET" => client.get(url),
        "POST" => client.post(url),
        "DELETE" => client.delete(url),
        other => panic!("method {other}"),
    };
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().expect("request");
    let status = response.status().as_u16();
    let text = response.text().expect("body");
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

fn sql(server: &Server, role: &str, query: &str) -> (u16, Value) {
    call(
        server,
        "POST",
        "/api/query/sql",
        Some(server.token(role)),
        Some(json!({"sql": query})),
    )
}

#[test]
fn every_api_route_needs_a_token_with_the_right_role() {
    let dir = tempfile::tempdir().expect("dir");
    let wh = world(dir.path());
    let server = serve(&wh);
    let count = json!({"conditions": {"all": []}});

    // Health checks are open; everything under /api is not.
    assert_eq!(call(&server, "GET", "/healthz", None, None).0, 200);
    for (method, path, body) in [
        ("GET", "/api/catalog", None),
        ("GET", "/api/tables", None),
        ("GET", "/api/catalog/fields", None),
        ("GET", "/api/whoami", None),
        ("POST", "/api/query/count", Some(count.clone())),
        ("POST", "/api/query/sql", Some(json!({"sql": "SELECT 1"}))),
        ("POST", "/api/build", None),
        ("GET", "/api/tokens", None),
    ] {
        let (status, error) = call(&server, method, path, None, body.clone());
        assert_eq!(status, 401, "{method} {path}: {error}");
        assert_eq!(error["error"]["code"], "unauthorized", "{error}");
        let (status, _) = call(&server, method, path, Some("shoal_0000_nope"), body);
        assert_eq!(status, 401, "{method} {path} with a made-up token");
    }
    let response = reqwest::blocking::Client::new()
        .get(format!("{}/api/tables", server.base))
        .header("Authorization", "Basic YWJjOg==")
        .send()
        .expect("basic");
    assert_eq!(response.status().as_u16(), 401);
    assert_eq!(
        response
            .headers()
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok()),
        Some("Bearer")
    );

    // Viewers count; analysts also pull SQL; only admins build and manage tokens.
    let (status, whoami) = call(
        &server,
        "GET",
        "/api/whoami",
        Some(server.token("viewer")),
        None,
    );
    assert_eq!((status, &whoami["role"]), (200, &json!("viewer")));
    let (status, counted) = call(
        &server,
        "POST",
        "/api/query/count",
        Some(server.token("viewer")),
        Some(count),
    );
    assert_eq!((status, &counted["count"]), (200, &json!(2)), "{counted}");
    let (status, error) = sql(&server, "viewer", "SELECT 1");
    assert_eq!(status, 403, "{error}");
    assert_eq!(error["error"]["code"], "forbidden");
    assert!(
        error["error"]["message"]
            .as_str()
            .expect("message")
            .contains("analyst")
    );
    assert_eq!(sql(&server, "analyst", "SELECT 1 AS one").0, 200);
    for role in ["viewer", "analyst"] {
        let token = Some(server.token(role));
        assert_eq!(call(&server, "POST", "/api/build", token, None).0, 403);
        assert_eq!(call(&server, "GET", "/api/tokens", token, None).0, 403);
        assert_eq!(call(&server, "GET", "/api/identity/1", token, None).0, 403);
    }
    let admin = Some(server.token("admin"));
    assert_eq!(call(&server, "GET", "/api/identity/1", admin, None).0, 200);

    // Listing shows ids, names and roles, never a secret.
    let (status, listed) = call(&server, "GET", "/api/tokens", admin, None);
    assert_eq!(status, 200, "{listed}");
    let tokens = listed["tokens"].as_array().expect("tokens");
    assert_eq!(tokens.len(), 3);
    let text = listed.to_string();
    for role in ["viewer", "analyst", "admin"] {
        let secret = server.token(role).rsplit('_').next().expect("secret part");
        assert!(!text.contains(secret), "a secret is listed: {text}");
    }

    // Admins make and revoke tokens over HTTP; a revoked token stops at once.
    let (status, made) = call(
        &server,
        "POST",
        "/api/tokens",
        admin,
        Some(json!({"name": "bi tool", "role": "viewer"})),
    );
    assert_eq!(status, 200, "{made}");
    let token = made["token"].as_str().expect("token").to_string();
    assert!(token.starts_with(&format!(
        "shoal_{}_",
        made["token_id"].as_str().expect("id")
    )));
    let (status, whoami) = call(&server, "GET", "/api/whoami", Some(&token), None);
    assert_eq!((status, &whoami["name"]), (200, &json!("bi tool")));
    let (status, _) = call(
        &server,
        "DELETE",
        &format!("/api/tokens/{}", made["token_id"].as_str().expect("id")),
        admin,
        None,
    );
    assert_eq!(status, 200);
    assert_eq!(
        call(&server, "GET", "/api/whoami", Some(&token), None).0,
        401
    );
    assert_eq!(
        call(&server, "DELETE", "/api/tokens/ffffffff", admin, None).0,
        404
    );
    let (status, error) = call(
        &server,
        "POST",
        "/api/tokens",
        admin,
        Some(json!({"name": "x", "role": "superuser"})),
    );
    assert_eq!(status, 400);
    assert!(error.to_string().contains("role"), "{error}");
    let (status, _) = call(
        &server,
        "POST",
        "/api/tokens",
        admin,
        Some(json!({"name": " ", "role": "viewer"})),
    );
    assert_eq!(status, 400);

    // A token revoked from the command line (another process) stops within seconds.
    let analyst = server.token("analyst").to_string();
    let id = analyst.split('_').nth(1).expect("id").to_string();
    stdout_ok(&shoal(&wh, &["token", "revoke", &id]));
    let stopped = (0..50).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(100));
        call(&server, "GET", "/api/whoami", Some(&analyst), None).0 == 401
    });
    assert!(stopped, "a revoked token still works");
    let listed = json_ok(&shoal(&wh, &["token", "list", "--json"]));
    let revoked: Vec<&Value> = listed["tokens"]
        .as_array()
        .expect("tokens")
        .iter()
        .filter(|t| !t["revoked_at"].is_null())
        .collect();
    assert_eq!(revoked.len(), 2, "{listed}");

    // The warehouse holds SHA-256 hashes only.
    let stored = rows(&wh, "api_tokens");
    let admin_token = server.token("admin");
    let expected: String = sha2::Sha256::digest(admin_token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert!(stored.iter().any(|r| r["token_hash"] == json!(expected)));
    assert!(!format!("{stored:?}").contains(admin_token));
}

#[test]
fn sql_shows_each_role_only_what_it_may_read() {
    let dir = tempfile::tempdir().expect("dir");
    let wh = world(dir.path());
    let server = serve(&wh);
    let rows_of = |role: &str, query: &str| {
        let (status, answer) = sql(&server, role, query);
        assert_eq!(status, 200, "{role}: {query}: {answer}");
        answer["rows"].clone()
    };

    // Phones are confidential: analysts read them masked, admins in clear, whichever way
    // the query reaches them.
    let phone = "SELECT phone FROM users WHERE phone IS NOT NULL";
    assert_eq!(
        rows_of("admin", phone),
        json!([{"phone": "+8613812345678"}])
    );
    assert_eq!(
        rows_of("analyst", phone),
        json!([{"phone": "+86138****5678"}])
    );
    for query in [
        "SELECT * FROM users WHERE phone IS NOT NULL",
        "WITH x AS (SELECT * FROM users) SELECT phone FROM x WHERE phone IS NOT NULL",
        "SELECT u.phone FROM users u JOIN users v ON u.user_id = v.user_id WHERE u.phone IS NOT NULL",
        "SELECT (SELECT max(phone) FROM users) AS phone",
    ] {
        let rows = rows_of("analyst", query);
        assert_eq!(rows[0]["phone"], "+86138****5678", "{query}: {rows}");
    }
    assert_eq!(
        rows_of(
            "analyst",
            "SELECT substr(phone, 7, 4) AS middle, upper(phone) AS up FROM users WHERE phone IS NOT NULL"
        ),
        json!([{"middle": "****", "up": "+86138****5678"}])
    );
    let links = rows_of(
        "analyst",
        "SELECT id_value FROM identity_links WHERE id_type = 'phone'",
    );
    assert_eq!(links, json!([{"id_value": "+86138****5678"}]));
    // Filtering works on what the role sees, so it cannot probe hidden digits.
    assert_eq!(
        rows_of(
            "analyst",
            "SELECT count(*) AS n FROM users WHERE phone = '+8613812345678'"
        ),
        json!([{"n": 0}])
    );

    // Secret columns: analysts may not read them at all, admins see them masked.
    let (status, error) = sql(&server, "analyst", "SELECT token_hash FROM api_tokens");
    assert_eq!(status, 400, "{error}");
    let message = error["error"]["message"].as_str().expect("message");
    assert!(
        message.contains("token_hash") && message.contains("secret") && message.contains("analyst"),
        "{message}"
    );
    let star = rows_of("analyst", "SELECT * FROM api_tokens ORDER BY name LIMIT 1");
    assert!(star[0].get("token_hash").is_none(), "{star}");
    assert!(star[0].get("role").is_some(), "{star}");
    let columns = rows_of(
        "analyst",
        "SELECT column_name FROM information_schema.columns WHERE table_name = 'api_tokens'",
    );
    assert!(!columns.to_string().contains("token_hash"), "{columns}");
    let hashes = rows_of("admin", "SELECT token_hash FROM api_tokens");
    for row in hashes.as_array().expect("rows") {
        assert!(
            row["token_hash"].as_str().expect("hash").contains("****"),
            "{row}"
        );
    }

    // The command line is the warehouse owner's: clear values.
    let out = stdout_ok(&shoal(
        &wh,
        &[
            "sql",
            "SELECT phone FROM users WHERE phone IS NOT NULL",
            "--format",
            "csv",
        ],
    ));
    assert!(out.contains("+8613812345678"), "{out}");

    // Previews mask too, by the caller's role.
    let (status, preview) = call(
        &server,
        "POST",
        "/api/query/preview",
        Some(server.token("viewer")),
        Some(
            json!({"conditions": {"field": "gender", "op": "eq", "value": "male"}, "columns": ["phone"]}),
        ),
    );
    assert_eq!(status, 200, "{preview}");
    assert_eq!(preview["rows"][0]["phone"], "+86138****5678");
}

/// Malformed query strings, path segments and bodies get the API's JSON error, naming what is
/// wrong, never axum's plain text.
#[test]
fn bad_parameters_and_bodies_answer_in_the_error_shape() {
    let dir = tempfile::tempdir().expect("dir");
    let wh = world(dir.path());
    let location = format!("file://{}", wh.display());
    let server = start_server(&["--warehouse", &location, "serve", "--build-every", "0"]);
    let admin = server.client("admin");
    let check = |response: reqwest::blocking::Response, needle: &str| {
        assert_eq!(response.status(), 400);
        let body: Value = response.json().expect("a JSON error");
        assert_eq!(body["error"]["code"], "bad_request", "{body}");
        let message = body["error"]["message"].as_str().expect("message");
        assert!(message.contains(needle), "{needle}: {message}");
    };
    let get = |path: &str| {
        admin
            .get(format!("{}{path}", server.base))
            .send()
            .expect("get")
    };
    check(get("/api/tables/users/history?limit=many"), "limit");
    check(get("/api/audiences/x/diff?from=one&to=2"), "from");
    let unlink = |body: &str| {
        admin
            .post(format!("{}/api/identity/unlink", server.base))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .expect("post")
    };
    check(unlink("{\"a\": "), "request body");
    check(unlink("{\"a\": 5, \"b\": \"phone:x\"}"), "invalid type");

    // /metrics counts them under their route patterns, without a token.
    let metrics = reqwest::blocking::get(format!("{}/metrics", server.base))
        .expect("metrics")
        .text()
        .expect("text");
    for line in [
        "shoal_http_requests_total{method=\"POST\",route=\"/api/identity/unlink\",status=\"400\"} 2",
        "shoal_http_requests_total{method=\"GET\",route=\"/api/tables/{name}/history\",status=\"400\"} 1",
        "shoal_http_request_duration_seconds_count{method=\"POST\",route=\"/api/identity/unlink\"} 2",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line}\n{metrics}");
    }
}

/// Each token has its own budget of requests per second; beyond it, 429 with Retry-After.
#[test]
fn a_token_over_its_rate_gets_429_and_others_do_not() {
    let dir = tempfile::tempdir().expect("dir");
    let wh = world(dir.path());
    let location = format!("file://{}", wh.display());
    let server = start_server(&[
        "--warehouse",
        &location,
        "serve",
        "--build-every",
        "0",
        "--rate-limit",
        "1",
    ]);
    let whoami = |role: &str| {
        server
            .client(role)
            .get(format!("{}/api/whoami", server.base))
            .send()
            .expect("get")
    };
    // A burst of twice the rate passes; the rest of a quick run of requests is refused (each
    // refusal judged on its own answer, however slowly a loaded machine sends them).
    let answers: Vec<reqwest::blocking::Response> = (0..12).map(|_| whoami("viewer")).collect();
    let statuses: Vec<u16> = answers.iter().map(|r| r.status().as_u16()).collect();
    assert_eq!(statuses[..2], [200, 200], "{statuses:?}");
    let limited = answers
        .into_iter()
        .find(|r| r.status() == 429)
        .unwrap_or_else(|| panic!("no 429 in {statuses:?}"));
    let retry: u64 = limited.headers()["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("seconds");
    assert!((1..=2).contains(&retry), "{retry}");
    let body: Value = limited.json().expect("json");
    assert_eq!(body["error"]["code"], "rate_limited", "{body}");
    assert_eq!(whoami("analyst").status(), 200);
    std::thread::sleep(std::time::Duration::from_millis(1200));
    assert_eq!(whoami("viewer").status(), 200);
}
