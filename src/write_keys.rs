//! Write keys of the tracking API: created once, shown once, stored as SHA-256 hashes.

use std::collections::HashSet;
use std::sync::Arc;

use arrow::array::{Array, BooleanArray, RecordBatch, StringArray, TimestampMicrosecondArray};
use sha2::{Digest, Sha256};
use shoal_catalog::{Catalog, CommitNote};

use crate::error::{AppError, AppResult};

/// Hex SHA-256 of a key.
pub fn hash(key: &str) -> String {
    Sha256::digest(key.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Creates a key named `name`; returns the key, which is not stored anywhere in clear.
pub async fn create(catalog: &Catalog, name: &str) -> AppResult<String> {
    if name.trim().is_empty() || name.len() > 200 {
        return Err(AppError::BadRequest(
            "write key name: 1 to 200 characters".into(),
        ));
    }
    let key = format!(
        "wk_{:016x}{:016x}",
        rand::random::<u64>(),
        rand::random::<u64>()
    );
    let mut table = catalog.table("write_keys").await?;
    let schema = table.schema()?;
    let now = chrono::Utc::now().timestamp_micros();
    let batch = RecordBatch::try_new(
        schema,
        vec![
            Arc::new(StringArray::from(vec![hash(&key)])),
            Arc::new(StringArray::from(vec![name])),
            Arc::new(TimestampMicrosecondArray::from(vec![now]).with_timezone("UTC")),
            Arc::new(BooleanArray::from(vec![false])),
        ],
    )
    .map_err(|e| AppError::Internal(e.to_string()))?;
    table
        .append(vec![batch], CommitNote::new("author", "cli"))
        .await?;
    Ok(key)
}

/// Hashes of every key that is not revoked.
pub async fn active_hashes(catalog: &Catalog) -> AppResult<HashSet<String>> {
    let table = catalog.table("write_keys").await?;
    let mut out = HashSet::new();
    for batch in table.read_all().await? {
        let column = |name: &str| {
            batch
                .column_by_name(name)
                .ok_or_else(|| AppError::Internal(format!("write_keys.{name} missing")))
        };
        let hashes = arrow::compute::cast(column("key_hash")?, &arrow::datatypes::DataType::Utf8)
            .map_err(|e| AppError::Internal(e.to_string()))?;
        let hashes = hashes
            .as_any()
            .downcast_ref::<StringArray>()
            .ok_or_else(|| AppError::Internal("key_hash is not text".into()))?;
        let revoked = column("revoked")?
            .as_any()
            .downcast_ref::<BooleanArray>()
            .ok_or_else(|| AppError::Internal("revoked is not bool".into()))?;
        for i in 0..batch.num_rows() {
            if !(revoked.is_valid(i) && revoked.value(i)) {
                out.insert(hashes.value(i).to_string());
            }
        }
    }
    Ok(out)
}
