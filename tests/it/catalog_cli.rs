//! `shoal catalog …` against a temporary warehouse.

use crate::{json_ok, shoal, stdout_ok};

#[test]
fn show_tables_check_and_history() {
    let dir = tempfile::tempdir().expect("temp");
    let wh = dir.path().join("wh");

    let shown = json_ok(&shoal(&wh, &["catalog", "show", "--json"]));
    let tables = shown["definition"]["tables"].as_array().expect("tables");
    assert!(tables.iter().any(|t| t["name"] == "events"));
    let users = json_ok(&shoal(
        &wh,
        &["catalog", "show", "--table", "users", "--json"],
    ));
    assert_eq!(users["tables"][0]["name"], "users");
    let text = stdout_ok(&shoal(&wh, &["catalog", "show", "--table", "users"]));
    assert!(
        text.contains("会员等级") && text.contains("confidential"),
        "{text}"
    );

    let listed = json_ok(&shoal(&wh, &["catalog", "tables", "--json"]));
    let names: Vec<&str> = listed["tables"]
        .as_array()
        .expect("tables")
        .iter()
        .map(|t| t["table"].as_str().expect("name"))
        .collect();
    assert!(
        names.contains(&"orders") && names.contains(&"shoal_catalog"),
        "{names:?}"
    );
    assert!(
        listed["tables"]
            .as_array()
            .expect("t")
            .iter()
            .all(|t| t["rows"].as_u64().is_some())
    );

    let check = shoal(&wh, &["catalog", "check", "--json"]);
    assert_eq!(
        check.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    let check: serde_json::Value = serde_json::from_slice(&check.stdout).expect("json");
    assert_eq!(check["status"], "OK");
    assert!(
        check["monitors"]
            .as_array()
            .expect("monitors")
            .iter()
            .any(|m| m["monitor"] == "freshness")
    );

    let history = json_ok(&shoal(
        &wh,
        &["catalog", "history", "shoal_catalog", "--json"],
    ));
    let commits = history["commits"].as_array().expect("commits");
    assert_eq!(commits[0]["metadata"]["shoal.author"], "seed");
}

#[test]
fn apply_checks_then_saves_a_new_revision() {
    let dir = tempfile::tempdir().expect("temp");
    let wh = dir.path().join("wh");
    let base = shoal_catalog_text();
    let changed = base.replace(
        r#"description = "Men aged 35 to 55.""#,
        r#"description = "Men from 35 to 55.""#,
    );
    assert_ne!(base, changed);
    let file = dir.path().join("catalog.toml");
    std::fs::write(&file, &changed).expect("write");
    stdout_ok(&shoal(
        &wh,
        &["catalog", "apply", file.to_str().expect("p")],
    ));
    let shown = json_ok(&shoal(&wh, &["catalog", "show", "--json"]));
    assert_eq!(
        shown["definition"]["derived"]["middle_aged_male"]["description"],
        "Men from 35 to 55."
    );

    let broken = base.replace(
        r#"type = "enum", values = ["none", "silver", "gold", "platinum"]"#,
        r#"type = "enum""#,
    );
    std::fs::write(&file, &broken).expect("write");
    let out = shoal(&wh, &["catalog", "apply", file.to_str().expect("p")]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("tables.users.fields.member_level"), "{err}");
    let shown = json_ok(&shoal(&wh, &["catalog", "show", "--json"]));
    assert_eq!(
        shown["definition"]["derived"]["middle_aged_male"]["description"],
        "Men from 35 to 55."
    );
}

#[test]
fn errors_are_clear_and_exit_non_zero() {
    let dir = tempfile::tempdir().expect("temp");
    let wh = dir.path().join("wh");
    let out = shoal(&wh, &["catalog", "history", "no_such_table"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown table 'no_such_table'"));
    let out = shoal(&wh, &["catalog", "history", "../etc"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid table name"));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_shoal"))
        .args(["--warehouse", "ftp://example/x", "catalog", "show"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unsupported scheme"));
}

fn shoal_catalog_text() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/data/catalog.toml"))
        .expect("catalog.toml")
}
