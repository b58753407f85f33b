//! Segment-style events from CSV and Parquet files.
//!
//! Each record becomes the JSON message the tracking API would have received, then takes the
//! same cleaning path as JSON lines, so every format is cleaned by one set of rules and a
//! quarantined record (kept as that JSON message) can be fixed and replayed like any other.
//!
//! Columns are matched to Segment's fields by name, ignoring case and `_`: `type` (default
//! `track`), `messageId`/`event_id`, `anonymousId`/`device_id`, `userId`/`login_id`,
//! `event`/`event_name`, `timestamp`/`event_time`/`time`, `previousId`; `properties`, `traits`
//! and `context` hold JSON objects; `properties.x` / `traits.x` set one key; every other column
//! becomes a property (a trait for identify and group rows). Empty cells are absent.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use serde_json::{Map, Value};

use crate::clean::{Rejection, reason};
use crate::error::{Error, Result};

/// A file's layout, told from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    /// One JSON message per line.
    JsonLines,
    /// Comma-separated with a header row.
    Csv,
    /// Apache Parquet.
    Parquet,
}

/// Tells JSON lines, CSV and Parquet apart by content (not by the file's name).
pub(crate) fn sniff(file: &Path) -> Result<Format> {
    let mut head = [0u8; 64];
    let n = File::open(file)
        .and_then(|mut f| f.read(&mut head))
        .map_err(|e| Error::io(file, e))?;
    let head = &head[..n];
    if head.starts_with(b"PAR1") {
        return Ok(Format::Parquet);
    }
    let text = head.strip_prefix(b"\xef\xbb\xbf").unwrap_or(head);
    match text.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') | None => Ok(Format::JsonLines),
        Some(_) => Ok(Format::Csv),
    }
}

/// One record of a file: a message to clean, or one that cannot be read at all.
pub(crate) enum Item {
    /// A JSON message.
    Line(Vec<u8>),
    /// A record that is broken before any cleaning (a CSV row with the wrong field count).
    Broken { raw: String, rejection: Rejection },
}

/// Properties Segment's spec gives as numbers; CSV cells for them are read as numbers.
const NUMERIC: &[&str] = &["price", "revenue", "total", "quantity", "value", "discount"];

fn normalise(name: &str) -> String {
    name.trim()
        .chars()
        .filter(|c| *c != '_' && *c != '-' && *c != ' ')
        .flat_map(char::to_lowercase)
        .collect()
}

/// The Segment field a column name stands for, if it is one.
fn segment_field(column: &str) -> Option<&'static str> {
    match normalise(column).as_str() {
        "type" => Some("type"),
        "messageid" | "eventid" => Some("messageId"),
        "anonymousid" | "deviceid" => Some("anonymousId"),
        "userid" | "loginid" => Some("userId"),
        "event" | "eventname" => Some("event"),
        "timestamp" | "eventtime" | "time" => Some("timestamp"),
        "previousid" => Some("previousId"),
        "properties" => Some("properties"),
        "traits" => Some("traits"),
        "context" => Some("context"),
        _ => None,
    }
}

/// Builds the message from (column, value) pairs.
fn message(pairs: Vec<(String, Value)>) -> Value {
    let mut message = Map::new();
    let mut extra: Vec<(String, Value)> = Vec::new();
    let mut nested: Vec<(&'static str, String, Value)> = Vec::new();
    for (column, value) in pairs {
        if value.is_null() || value.as_str().is_some_and(|s| s.trim().is_empty()) {
            continue;
        }
        if let Some(key) = column
            .strip_prefix("properties.")
            .map(|k| ("properties", k))
            .or_else(|| column.strip_prefix("traits.").map(|k| ("traits", k)))
        {
            nested.push((key.0, key.1.to_string(), value));
            continue;
        }
        match segment_field(&column) {
            Some(field @ ("properties" | "traits" | "context")) => {
                // A JSON object written as text; anything else is left for the cleaner to refuse.
                let parsed = match &value {
                    Value::String(s) => serde_json::from_str(s).unwrap_or(value),
                    _ => value,
                };
                message.insert(field.to_string(), parsed);
            }
            Some(field) => {
                message.insert(field.to_string(), value);
            }
            None => extra.push((column, value)),
        }
    }
    message
        .entry("type")
        .or_insert_with(|| Value::String("track".into()));
    let payload = match message.get("type").and_then(Value::as_str) {
        Some(t) if t.eq_ignore_ascii_case("identify") || t.eq_ignore_ascii_case("group") => {
            "traits"
        }
        _ => "properties",
    };
    for (column, value) in extra {
        nested.push((payload, column, value));
    }
    for (field, key, value) in nested {
        let entry = message
            .entry(field)
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(map) = entry {
            map.insert(key, value);
        }
    }
    Value::Object(message)
}

fn csv_cell(column: &str, text: &str) -> Value {
    let key = column.rsplit('.').next().unwrap_or(column);
    if NUMERIC.contains(&key.to_ascii_lowercase().as_str())
        && let Ok(n) = text.trim().parse::<f64>()
        && let Some(number) = serde_json::Number::from_f64(n)
    {
        return if n.fract() == 0.0 && n.abs() < 9e15 {
            Value::Number((n as i64).into())
        } else {
            Value::Number(number)
        };
    }
    Value::String(text.to_string())
}

/// The records of a CSV file with a header row (UTF-8, with or without BOM), streamed.
pub(crate) fn csv_records(file: &Path) -> Result<impl Iterator<Item = Result<(usize, Item)>>> {
    let handle = File::open(file).map_err(|e| Error::io(file, e))?;
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .from_reader(std::io::BufReader::with_capacity(1 << 20, handle));
    let header: Vec<String> = reader
        .headers()
        .map_err(|e| Error::InvalidInput {
            file: file.display().to_string(),
            reason: format!("cannot read the CSV header: {e}"),
        })?
        .iter()
        .map(|h| h.trim_start_matches('\u{feff}').trim().to_string())
        .collect();
    if header
        .iter()
        .all(|h| segment_field(h) != Some("event") && segment_field(h) != Some("type"))
    {
        return Err(Error::InvalidInput {
            file: file.display().to_string(),
            reason: format!(
                "an events CSV needs an event (or type) column; found: {}",
                header.join(", ")
            ),
        });
    }
    let path = file.to_path_buf();
    Ok(reader.into_records().map(move |record| {
        let record = record.map_err(|e| Error::InvalidInput {
            file: path.display().to_string(),
            reason: format!("unreadable CSV: {e}"),
        })?;
        let line = record.position().map_or(0, |p| p.line() as usize);
        if record.len() != header.len() {
            let raw = record.iter().collect::<Vec<_>>().join(",");
            return Ok((
                line,
                Item::Broken {
                    rejection: Rejection::new(
                        reason::BROKEN_RECORD,
                        format!(
                            "record has {} fields; the header has {}",
                            record.len(),
                            header.len()
                        ),
                    ),
                    raw,
                },
            ));
        }
        let pairs = header
            .iter()
            .zip(record.iter())
            .map(|(h, v)| (h.clone(), csv_cell(h, v)))
            .collect();
        Ok((line, Item::Line(message(pairs).to_string().into_bytes())))
    }))
}

/// The rows of a Parquet file, one record batch at a time.
pub(crate) fn parquet_records(file: &Path) -> Result<impl Iterator<Item = Result<(usize, Item)>>> {
    let invalid = |reason: String| Error::InvalidInput {
        file: file.display().to_string(),
        reason,
    };
    let handle = File::open(file).map_err(|e| Error::io(file, e))?;
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(handle)
        .map_err(|e| invalid(format!("not a readable Parquet file: {e}")))?
        .with_batch_size(8192)
        .build()
        .map_err(|e| invalid(format!("not a readable Parquet file: {e}")))?;
    let path = file.to_path_buf();
    let mut row = 0usize;
    Ok(reader.flat_map(move |batch| {
        let rows: Vec<Result<(usize, Item)>> = match batch {
            Err(e) => vec![Err(Error::InvalidInput {
                file: path.display().to_string(),
                reason: format!("unreadable Parquet data: {e}"),
            })],
            Ok(batch) => {
                let mut writer = arrow::json::LineDelimitedWriter::new(Vec::new());
                let written = writer.write(&batch).and_then(|_| writer.finish());
                match written {
                    Err(e) => vec![Err(Error::Internal(format!("Parquet row to JSON: {e}")))],
                    Ok(()) => writer
                        .into_inner()
                        .split(|b| *b == b'\n')
                        .filter(|l| !l.is_empty())
                        .map(|line| {
                            row += 1;
                            let pairs = match serde_json::from_slice::<Value>(line) {
                                Ok(Value::Object(map)) => map.into_iter().collect(),
                                _ => Vec::new(),
                            };
                            Ok((row, Item::Line(message(pairs).to_string().into_bytes())))
                        })
                        .collect(),
                }
            }
        };
        rows
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_map_to_segment_fields_and_the_rest_to_properties() {
        let m = message(vec![
            ("event_name".into(), Value::String("view_item".into())),
            ("Device_ID".into(), Value::String("d1".into())),
            (
                "event_time".into(),
                Value::String("2026-11-01 08:00:00".into()),
            ),
            ("price".into(), csv_cell("price", "2499.00")),
            ("properties.channel".into(), Value::String("web".into())),
            ("empty".into(), Value::String("  ".into())),
        ]);
        assert_eq!(m["type"], "track");
        assert_eq!(m["event"], "view_item");
        assert_eq!(m["anonymousId"], "d1");
        assert_eq!(m["timestamp"], "2026-11-01 08:00:00");
        assert_eq!(m["properties"]["price"], 2499);
        assert_eq!(m["properties"]["channel"], "web");
        assert!(m["properties"].get("empty").is_none());
        let identify = message(vec![
            ("type".into(), Value::String("identify".into())),
            ("user_id".into(), Value::String("u1".into())),
            ("phone".into(), csv_cell("phone", "13812345678")),
        ]);
        assert_eq!(
            identify["traits"]["phone"], "13812345678",
            "phones stay text"
        );
        assert_eq!(identify["userId"], "u1");
    }
}
