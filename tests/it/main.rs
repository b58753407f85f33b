//! End-to-end tests of the `shoal` binary on generated data.

mod audience;
mod auth;
mod build;
mod catalog_cli;
mod console;
mod hostile;
mod ingest;
mod postgres;
mod query;
mod reports;
mod s3;
mod sample;
mod serve;
mod tracking;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

/// Runs `shoal` with `args` against `warehouse`.
pub fn shoal(warehouse: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_shoal"))
        .arg("--warehouse")
        .arg(format!("file://{}", warehouse.display()))
        .args(args)
        .env_remove("SHOAL_WAREHOUSE")
        .output()
        .expect("run shoal")
}

/// Stdout of a successful run.
pub fn stdout_ok(output: &Output) -> String {
    assert!(
        output.status.success(),
        "shoal failed: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).expect("utf-8 stdout")
}

/// Stdout of a successful run, as the one JSON object `--json` promises.
pub fn json_ok(output: &Output) -> serde_json::Value {
    serde_json::from_str(stdout_ok(output).trim()).expect("one JSON object on stdout")
}

/// Writes the sample world of `users` people with `seed` into `out`; returns its manifest.
pub fn demo_data(out: &Path, users: u32, seed: u64) -> serde_json::Value {
    let (users, seed) = (users.to_string(), seed.to_string());
    json_ok(&shoal(
        &out.join("unused-warehouse"),
        &[
            "demo-data",
            "--out",
            out.to_str().expect("utf-8 path"),
            "--users",
            &users,
            "--seed",
            &seed,
            "--json",
        ],
    ))
}

/// Ingests one Segment JSON-lines file into `wh`.
pub fn ingest_segment(wh: &Path, file: &Path) -> serde_json::Value {
    json_ok(&shoal(
        wh,
        &[
            "ingest",
            "--source",
            "segment",
            "--json",
            file.to_str().expect("utf-8 path"),
        ],
    ))
}

/// Ingests every file of a sample world into `wh`, in manifest order or reversed.
pub fn ingest_sample(wh: &Path, dir: &Path, manifest: &serde_json::Value, in_order: bool) {
    let mut files: Vec<&serde_json::Value> = manifest["files"]
        .as_array()
        .expect("files")
        .iter()
        .collect();
    if !in_order {
        files.reverse();
    }
    for f in files {
        let path = dir.join(f["file"].as_str().expect("file"));
        json_ok(&shoal(
            wh,
            &[
                "ingest",
                "--source",
                f["source"].as_str().expect("source"),
                "--json",
                path.to_str().expect("path"),
            ],
        ));
    }
}

/// Rows of `table` as `shoal catalog tables --json` reports them.
pub fn table_rows(warehouse: &Path, table: &str) -> Option<u64> {
    let listed = json_ok(&shoal(warehouse, &["catalog", "tables", "--json"]));
    listed["tables"]
        .as_array()
        .expect("tables")
        .iter()
        .find(|t| t["table"] == table)
        .and_then(|t| t["rows"].as_u64())
}

/// One row of a table as JSON.
pub type Row = serde_json::Map<String, serde_json::Value>;

/// Every row of `table`, read straight from the warehouse (decimals come back as JSON
/// numbers or text, times as text).
pub fn rows(warehouse: &Path, table: &str) -> Vec<Row> {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let location = format!("file://{}", warehouse.display());
        let wh = shoal_catalog::Warehouse::open(&location).expect("warehouse");
        let t = shoal_catalog::Table::open(&wh, table).await.expect("table");
        let mut out = Vec::new();
        for batch in t.read_all().await.expect("read") {
            let mut writer = arrow::json::ArrayWriter::new(Vec::new());
            writer.write(&batch).expect("json");
            writer.finish().expect("json");
            let text = writer.into_inner();
            if !text.is_empty() {
                out.extend(serde_json::from_slice::<Vec<Row>>(&text).expect("rows"));
            }
        }
        out
    })
}

/// A running `shoal … serve`, stopped when dropped.
pub struct Server {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// `127.0.0.1:PORT` of the Postgres endpoint.
    pub postgres: String,
    /// API tokens made before the server started: viewer, analyst, admin.
    pub tokens: std::collections::HashMap<&'static str, String>,
}

impl Server {
    /// The token made for `role` (viewer, analyst or admin).
    pub fn token(&self, role: &str) -> &str {
        self.tokens.get(role).expect("a token for that role")
    }

    fn auth_headers(&self, role: &str) -> reqwest::header::HeaderMap {
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(
            reqwest::header::AUTHORIZATION,
            format!("Bearer {}", self.token(role))
                .parse()
                .expect("header value"),
        );
        headers
    }

    /// A blocking client that sends `role`'s token.
    pub fn client(&self, role: &str) -> reqwest::blocking::Client {
        reqwest::blocking::Client::builder()
            .default_headers(self.auth_headers(role))
            .build()
            .expect("client")
    }

    /// An async client that sends `role`'s token.
    pub fn async_client(&self, role: &str) -> reqwest::Client {
        reqwest::Client::builder()
            .default_headers(self.auth_headers(role))
            .build()
            .expect("client")
    }

    /// CPU seconds the server process has used so far (Linux).
    pub fn cpu_seconds(&self) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id()))
            .expect("the server's /proc stat");
        // Fields after the command name (which may hold spaces) start at ") ".
        let rest = &stat[stat.rfind(") ").expect("stat format") + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks: f64 =
            fields[11].parse::<f64>().expect("utime") + fields[12].parse::<f64>().expect("stime");
        ticks / 100.0
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Makes an API token with `role` on the warehouse named in `global` (the arguments before
/// the command).
pub fn make_token(global: &[&str], role: &str) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_shoal"))
        .args(global)
        .args(["token", "create", "--role", role, "--name", role, "--json"])
        .env_remove("SHOAL_WAREHOUSE")
        .output()
        .expect("token create");
    json_ok(&output)["token"]
        .as_str()
        .expect("token")
        .to_string()
}

/// Makes a token per role, then starts `shoal ARGS --http 127.0.0.1:0` and waits until it
/// says where it listens.
pub fn start_server(args: &[&str]) -> Server {
    let command = args
        .iter()
        .position(|a| *a == "serve" || *a == "demo")
        .expect("a serve or demo command");
    let tokens = ["viewer", "analyst", "admin"]
        .into_iter()
        .map(|role| (role, make_token(&args[..command], role)))
        .collect();
    let mut child = Command::new(env!("CARGO_BIN_EXE_shoal"))
        .args(args)
        .args(["--http", "127.0.0.1:0", "--postgres", "127.0.0.1:0"])
        .env_remove("SHOAL_WAREHOUSE")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start shoal");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    let mut postgres = String::new();
    let base = loop {
        let line = lines
            .next()
            .expect("server said where it listens")
            .expect("line");
        if let Some(rest) = line.strip_prefix("serving postgres://") {
            postgres = rest.split_whitespace().next().expect("address").to_string();
        } else if let Some(rest) = line.strip_prefix("serving ") {
            break rest.split_whitespace().next().expect("address").to_string();
        }
    };
    // Keep draining stderr so the server never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Server {
        child,
        base,
        postgres,
        tokens,
    }
}
