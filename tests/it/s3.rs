//! The warehouse on S3: a real S3 API (moto's server) on loopback.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};

struct S3Server {
    child: Child,
    endpoint: String,
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn moto_server() -> PathBuf {
    let from_venv = std::env::var_os("SHOAL_TEST_VENV")
        .map(|v| PathBuf::from(v).join("bin/moto_server"))
        .filter(|p| p.is_file());
    from_venv.unwrap_or_else(|| {
        panic!("moto_server not found: run ./scripts/test, which installs it into its venv")
    })
}

async fn start() -> S3Server {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let child = Command::new(moto_server())
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start moto_server");
    let endpoint = format!("http://127.0.0.1:{port}");
    let server = S3Server { child, endpoint };
    let client = reqwest::Client::new();
    for _ in 0..100 {
        if client.get(&server.endpoint).send().await.is_ok() {
            return server;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("moto_server did not start");
}

fn shoal(server: &S3Server, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_shoal"))
        .args(["--warehouse", "s3://shoal-test/warehouse"])
        .args(args)
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ENDPOINT_URL", &server.endpoint)
        .env("AWS_ALLOW_HTTP", "true")
        .env_remove("SHOAL_WAREHOUSE")
        .output()
        .expect("run shoal")
}

/// The bucket's listing of the objects under `prefix`, as S3 gives it (XML).
async fn list(client: &reqwest::Client, server: &S3Server, prefix: &str) -> String {
    client
        .get(format!(
            "{}/shoal-test?list-type=2&prefix={prefix}",
            server.endpoint
        ))
        .send()
        .await
        .expect("list")
        .text()
        .await
        .expect("body")
}

#[tokio::test]
#[ignore = "needs moto_server; ./scripts/test installs it and runs this"]
async fn the_warehouse_works_on_s3() {
    let server = start().await;
    let client = reqwest::Client::new();
    let created = client
        .put(format!("{}/shoal-test", server.endpoint))
        .send()
        .await
        .expect("create bucket");
    assert!(created.status().is_success());

    // First use seeds the catalog and creates every table in the bucket.
    let tables = crate::json_ok(&shoal(&server, &["catalog", "tables", "--json"]));
    let names: Vec<&str> = tables["tables"]
        .as_array()
        .expect("tables")
        .iter()
        .map(|t| t["table"].as_str().expect("name"))
        .collect();
    assert!(
        names.contains(&"events") && names.contains(&"shoal_catalog"),
        "{names:?}"
    );
    let listing = list(&client, &server, "warehouse/events/_delta_log/").await;
    assert!(listing.contains("00000000000000000000.json"), "{listing}");

    // A catalog change is a second commit, readable by the next process.
    let dir = tempfile::tempdir().expect("temp");
    let file = dir.path().join("catalog.toml");
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/data/catalog.toml"))
        .expect("catalog.toml")
        .replace("Men aged 35 to 55.", "Men between 35 and 55.");
    std::fs::write(&file, text).expect("write");
    crate::stdout_ok(&shoal(
        &server,
        &["catalog", "apply", file.to_str().expect("path")],
    ));
    let history = crate::json_ok(&shoal(
        &server,
        &["catalog", "history", "shoal_catalog", "--json"],
    ));
    assert_eq!(history["commits"].as_array().expect("commits").len(), 3);
    let shown = crate::json_ok(&shoal(&server, &["catalog", "show", "--json"]));
    assert_eq!(
        shown["definition"]["derived"]["middle_aged_male"]["description"],
        "Men between 35 and 55."
    );
    let check = shoal(&server, &["catalog", "check", "--json"]);
    assert_eq!(
        check.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );

    // Builds save the identity state in the bucket, and the next build reads it from there.
    let batches = [
        [("m1", "a1", Some("L1")), ("m2", "a2", None)],
        [("m3", "a2", Some("L1")), ("m4", "a3", None)],
    ];
    let mut reports = Vec::new();
    for (i, batch) in batches.iter().enumerate() {
        let lines: Vec<String> = batch
            .iter()
            .map(|(id, anon, login)| {
                let mut m = serde_json::json!({"type": "track", "messageId": id,
                    "event": "view_item", "timestamp": "2026-11-01T00:00:00Z", "anonymousId": anon});
                if let Some(login) = login {
                    m["userId"] = serde_json::json!(login);
                }
                m.to_string()
            })
            .collect();
        let file = dir.path().join(format!("{i}.jsonl"));
        std::fs::write(&file, lines.join("\n") + "\n").expect("write");
        crate::json_ok(&shoal(
            &server,
            &[
                "ingest",
                "--source",
                "segment",
                "--json",
                file.to_str().expect("path"),
            ],
        ));
        reports.push(crate::json_ok(&shoal(
            &server,
            &["build", "--json", "--as-of", "2026-11-20"],
        )));
    }
    assert_eq!(reports[0]["identity"]["stored_from"], "tables");
    assert_eq!(reports[1]["identity"]["stored_from"], "index");
    // a2 joins L1's person (1); a3 is new.
    assert_eq!(reports[1]["identity"]["people_merged"], 1, "{}", reports[1]);
    assert_eq!(reports[1]["identity"]["identities_before"], 3);
    let listing = list(&client, &server, "warehouse/identity_links/_shoal/").await;
    for name in ["identities</Key>", "identities.1</Key>"] {
        assert!(listing.contains(name), "{listing}");
    }
}
