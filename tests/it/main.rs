//! End-to-end tests of the `shoal` binary on generated data.

mod catalog_cli;
mod ingest;
mod s3;
mod sample;
mod serve;
mod tracking;

use std::path::Path;
use std::process::{Command, Output};

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
