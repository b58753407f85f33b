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
        QuarantineCommand::List {
            batch,
            reason,
            limit,
            json,
        } => {
            let table = catalog.table("quarantine").await?;
            let ctx = SessionContext::new();
            let mut frame = ctx
                .read_table(table.provider().await?)
                .map_err(shoal_catalog::Error::from)?;
            if let Some(batch) = batch {
                frame = frame
                    .filter(col("batch_id").eq(lit(batch.as_str())))
                    .map_err(shoal_catalog::Error::from)?;
            }
            if let Some(reason) = reason {
                frame = frame
                    .filter(col("reason").eq(lit(reason.as_str())))
                    .map_err(shoal_catalog::Error::from)?;
            }
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
