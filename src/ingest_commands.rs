//! `shoal ingest` and `shoal quarantine`.

use std::path::Path;

use datafusion::prelude::{SessionContext, col, lit};
use serde_json::{Value, json};
use shoal_catalog::Catalog;
use shoal_ingest::{BatchReport, SourceKind, describe, ingest_files};

use crate::cli::{IngestArgs, QuarantineCommand};
use crate::error::{AppError, AppResult};
use crate::progress;

/// Imports files as one batch and prints its report.
pub async fn ingest(catalog: &Catalog, args: &IngestArgs, quiet: bool) -> AppResult<BatchReport> {
    for file in &args.files {
        if !file.is_file() {
            return Err(AppError::BadRequest(format!(
                "{}: no such file",
                file.display()
            )));
        }
    }
    let files: Vec<&Path> = args.files.iter().map(|p| p.as_path()).collect();
    let report = run(catalog, args.source, &files, quiet).await?;
    if args.json {
        println!("{}", serde_json::to_string(&report).unwrap_or_default());
    } else {
        println!("{}", describe(&report));
        for file in &report.files {
            let c = &file.counts;
            println!(
                "  {}: received {} landed {} quarantined {} duplicates {}",
                file.file, c.received, c.landed, c.quarantined, c.duplicates
            );
        }
    }
    Ok(report)
}

/// Imports files with a progress bar.
pub async fn run(
    catalog: &Catalog,
    source: SourceKind,
    files: &[&Path],
    quiet: bool,
) -> AppResult<BatchReport> {
    let bar = progress::bar(quiet, source.name(), 0);
    bar.set_message("records");
    let report = ingest_files(catalog, source, files, &mut |n| bar.set_position(n)).await?;
    bar.finish_and_clear();
    Ok(report)
}

/// `shoal quarantine …`.
pub async fn quarantine(catalog: &Catalog, command: &QuarantineCommand) -> AppResult<()> {
    match command {
        QuarantineCommand::Replay {
            batch,
            location,
            reason,
            fix,
            json,
        } => {
            let table = catalog.table("quarantine").await?;
            let frame = select(&table, batch, reason, location.as_deref(), true).await?;
            let batches = frame.collect().await.map_err(shoal_catalog::Error::from)?;
            let rows = to_json_rows(&batches)?;
            if rows.is_empty() {
                return Err(AppError::BadRequest(
                    "no quarantined rows awaiting replay match".into(),
                ));
            }
            let fixed = match fix {
                Some(path) if rows.len() == 1 => Some(
                    std::fs::read_to_string(path)
                        .map_err(|e| AppError::BadRequest(format!("{}: {e}", path.display())))?
                        .trim_end_matches(['\n', '\r'])
                        .to_string(),
                ),
                Some(_) => {
                    return Err(AppError::BadRequest(format!(
                        "--fix needs exactly one selected row; {} match",
                        rows.len()
                    )));
                }
                None => None,
            };
            let mut by_source: std::collections::BTreeMap<String, Vec<(String, String)>> =
                Default::default();
            for row in &rows {
                let text = |k: &str| row[k].as_str().unwrap_or_default().to_string();
                let raw = fixed.clone().unwrap_or_else(|| text("raw"));
                by_source
                    .entry(text("source"))
                    .or_default()
                    .push((text("location"), raw));
            }
            let mut reports = Vec::new();
            for (source, items) in by_source {
                let kind: SourceKind = source.parse().map_err(AppError::Internal)?;
                reports.push(shoal_ingest::replay(catalog, kind, items).await?);
            }
            mark_replayed(catalog, batches).await?;
            if *json {
                println!("{}", json!({"replayed": rows.len(), "batches": reports}));
            } else {
                for report in &reports {
                    println!("{}", describe(report));
                }
            }
            Ok(())
        }
        QuarantineCommand::Show { location, json } => {
            let table = catalog.table("quarantine").await?;
            let frame = select(&table, &None, &None, Some(location), false)
                .await?
                .sort(vec![col("quarantined_at").sort(true, false)])
                .map_err(shoal_catalog::Error::from)?;
            let rows = to_json_rows(&frame.collect().await.map_err(shoal_catalog::Error::from)?)?;
            if rows.is_empty() {
                return Err(AppError::BadRequest(format!(
                    "nothing quarantined at '{location}'"
                )));
            }
            if *json {
                println!("{}", json!({"rows": rows}));
            } else {
                for row in &rows {
                    let text = |k: &str| row[k].as_str().unwrap_or_default().to_string();
                    println!("batch      {}", text("batch_id"));
                    println!("source     {}", text("source"));
                    println!("at         {}", text("quarantined_at"));
                    println!("reason     {}: {}", text("reason"), text("message"));
                    println!("replayed   {}", row["replayed"].as_bool().unwrap_or(false));
                    println!("raw\n{}\n", text("raw"));
                }
            }
            Ok(())
        }
        QuarantineCommand::List {
            batch,
            reason,
            limit,
            json,
        } => {
            let table = catalog.table("quarantine").await?;
            let frame = select(&table, batch, reason, None, false).await?;
            let frame = frame
                .sort(vec![
                    col("quarantined_at").sort(false, false),
                    col("location").sort(true, false),
                ])
                .and_then(|f| f.limit(0, Some(*limit)))
                .map_err(shoal_catalog::Error::from)?;
            let batches = frame.collect().await.map_err(shoal_catalog::Error::from)?;
            let rows = to_json_rows(&batches)?;
            if *json {
                println!("{}", json!({"rows": rows}));
            } else {
                for row in &rows {
                    println!(
                        "{}  {}  {:<18} {}",
                        row["batch_id"].as_str().unwrap_or_default(),
                        row["location"].as_str().unwrap_or_default(),
                        row["reason"].as_str().unwrap_or_default(),
                        row["message"].as_str().unwrap_or_default()
                    );
                }
                println!("{} rows", rows.len());
            }
            Ok(())
        }
    }
}

async fn select(
    table: &shoal_catalog::Table,
    batch: &Option<String>,
    reason: &Option<String>,
    location: Option<&str>,
    pending_only: bool,
) -> AppResult<datafusion::dataframe::DataFrame> {
    let ctx = SessionContext::new();
    let mut frame = ctx
        .read_table(table.provider().await?)
        .map_err(shoal_catalog::Error::from)?;
    let mut filters = Vec::new();
    if let Some(batch) = batch {
        filters.push(col("batch_id").eq(lit(batch.as_str())));
    }
    if let Some(reason) = reason {
        filters.push(col("reason").eq(lit(reason.as_str())));
    }
    if let Some(location) = location {
        filters.push(col("location").eq(lit(location)));
    }
    if pending_only {
        filters.push(col("replayed").is_not_true());
    }
    for filter in filters {
        frame = frame.filter(filter).map_err(shoal_catalog::Error::from)?;
    }
    Ok(frame)
}

/// Marks rows as replayed: one MERGE on (batch_id, location).
async fn mark_replayed(
    catalog: &Catalog,
    batches: Vec<arrow::array::RecordBatch>,
) -> AppResult<()> {
    let mut table = catalog.table("quarantine").await?;
    let schema = table.schema()?;
    let mut marked = Vec::new();
    for batch in batches {
        let columns = schema
            .fields()
            .iter()
            .map(|f| {
                if f.name() == "replayed" {
                    Ok(std::sync::Arc::new(arrow::array::BooleanArray::from(vec![
                        true;
                        batch.num_rows()
                    ])) as arrow::array::ArrayRef)
                } else {
                    let column = batch.column_by_name(f.name()).ok_or_else(|| {
                        AppError::Internal(format!("quarantine.{} missing", f.name()))
                    })?;
                    arrow::compute::cast(column, f.data_type())
                        .map_err(|e| AppError::Internal(e.to_string()))
                }
            })
            .collect::<AppResult<Vec<_>>>()?;
        marked.push(
            arrow::array::RecordBatch::try_new(schema.clone(), columns)
                .map_err(|e| AppError::Internal(e.to_string()))?,
        );
    }
    if marked.is_empty() {
        return Ok(());
    }
    table
        .merge(
            marked,
            &["batch_id", "location"],
            shoal_catalog::CommitNote::new("reason", "replayed"),
        )
        .await?;
    Ok(())
}

fn to_json_rows(batches: &[arrow::array::RecordBatch]) -> AppResult<Vec<Value>> {
    let mut writer = arrow::json::ArrayWriter::new(Vec::new());
    let refs: Vec<&arrow::array::RecordBatch> = batches.iter().collect();
    writer
        .write_batches(&refs)
        .map_err(|e| AppError::Internal(e.to_string()))?;
    writer
        .finish()
        .map_err(|e| AppError::Internal(e.to_string()))?;
    let bytes = writer.into_inner();
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    serde_json::from_slice(&bytes).map_err(|e| AppError::Internal(e.to_string()))
}
