//! `shoal catalog show|check|tables|history|apply`.

use comfy_table::{ContentArrangement, Table as Grid, presets::UTF8_FULL_CONDENSED};
use serde_json::json;
use shoal_catalog::{
    Catalog, CatalogDefinition, MonitorResult, Status, TableDefinition, check_all,
};

use crate::cli::CatalogCommand;
use crate::error::{AppError, AppResult};

fn grid(header: &[&str]) -> Grid {
    let mut grid = Grid::new();
    grid.load_preset(UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_header(header.to_vec());
    grid
}

/// Runs a catalog command; returns the process exit code.
pub async fn run(catalog: &mut Catalog, command: &CatalogCommand) -> AppResult<i32> {
    match command {
        CatalogCommand::Show { table, json } => {
            let definition = catalog.definition();
            let tables: Vec<&TableDefinition> = match table {
                Some(name) => vec![definition.table(name)?],
                None => definition.tables.iter().collect(),
            };
            if *json {
                let value = if table.is_some() {
                    json!({"revision": catalog.revision(), "tables": tables})
                } else {
                    json!({"revision": catalog.revision(), "definition": definition})
                };
                println!("{value}");
            } else {
                print_definition(catalog.revision(), definition, &tables);
            }
            Ok(0)
        }
        CatalogCommand::Check { json } => {
            let results = check_all(catalog, chrono::Utc::now()).await?;
            let worst = results.iter().map(|r| r.status).max().unwrap_or(Status::Ok);
            if *json {
                println!("{}", json!({"status": worst, "monitors": results}));
            } else {
                print_monitors(&results, worst);
            }
            Ok(if worst == Status::Fail { 1 } else { 0 })
        }
        CatalogCommand::Tables { json } => {
            let tables = shoal_catalog::table_summaries(catalog.warehouse()).await?;
            if *json {
                println!("{}", json!({"tables": tables}));
            } else {
                let mut g = grid(&["table", "version", "rows", "files", "last commit (UTC)"]);
                for t in &tables {
                    g.add_row(vec![
                        t.table.clone(),
                        t.version.to_string(),
                        t.rows.to_string(),
                        t.files.to_string(),
                        t.last_commit
                            .map(|c| c.to_rfc3339())
                            .unwrap_or_else(|| "-".into()),
                    ]);
                }
                println!("{g}");
            }
            Ok(0)
        }
        CatalogCommand::History { table, limit, json } => {
            let handle = shoal_catalog::Table::open(catalog.warehouse(), table).await?;
            let commits = handle.history(Some(*limit)).await?;
            if *json {
                println!("{}", json!({"table": table, "commits": commits}));
            } else {
                let mut g = grid(&["version", "time (UTC)", "operation", "parameters", "shoal"]);
                for c in &commits {
                    g.add_row(vec![
                        c.version.to_string(),
                        c.timestamp.map(|t| t.to_rfc3339()).unwrap_or_default(),
                        c.operation.clone(),
                        serde_json::Value::Object(c.parameters.clone()).to_string(),
                        serde_json::Value::Object(c.metadata.clone()).to_string(),
                    ]);
                }
                println!("{g}");
            }
            Ok(0)
        }
        CatalogCommand::Apply { file } => {
            let text = std::fs::read_to_string(file)
                .map_err(|e| AppError::BadRequest(format!("{}: {e}", file.display())))?;
            let definition = CatalogDefinition::from_toml(&text)?;
            let revision = catalog.save(definition, "cli").await?;
            println!("catalog revision {revision} saved");
            Ok(0)
        }
    }
}

fn print_definition(revision: u64, definition: &CatalogDefinition, tables: &[&TableDefinition]) {
    println!(
        "catalog revision {revision}, time zone {}",
        definition.time_zone
    );
    for table in tables {
        println!(
            "\n{} ({} / {}): {}",
            table.name, table.zh, table.en, table.description
        );
        let mut g = grid(&[
            "field",
            "名称",
            "name",
            "type",
            "domain",
            "required",
            "sensitivity",
            "owner",
        ]);
        for f in &table.fields {
            let domain = match (&f.range, f.values.is_empty()) {
                (Some([lo, hi]), _) => format!("[{lo}, {hi}]"),
                (None, false) => f.values.join(" | "),
                _ => String::new(),
            };
            g.add_row(vec![
                f.name.clone(),
                f.zh.clone(),
                f.en.clone(),
                f.value_type.to_string(),
                domain,
                if f.required {
                    "yes".into()
                } else {
                    String::new()
                },
                f.sensitivity.to_string(),
                f.owner.clone(),
            ]);
        }
        println!("{g}");
    }
    if tables.len() > 1 {
        println!("\nderived conditions:");
        for (name, d) in &definition.derived {
            println!("  {name} ({} / {}): {}", d.zh, d.en, d.conditions);
        }
    }
}

fn print_monitors(results: &[MonitorResult], worst: Status) {
    let mut g = grid(&["table", "field", "monitor", "status", "value", "threshold"]);
    for r in results {
        g.add_row(vec![
            r.table.clone(),
            r.field.clone().unwrap_or_default(),
            r.monitor.to_string(),
            r.status.to_string(),
            r.value.clone(),
            r.threshold.clone(),
        ]);
    }
    println!("{g}");
    let count = |s: Status| results.iter().filter(|r| r.status == s).count();
    println!(
        "{worst}: {} ok, {} warn, {} fail",
        count(Status::Ok),
        count(Status::Warn),
        count(Status::Fail)
    );
}
