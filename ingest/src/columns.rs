//! Typed access to the columns of batches read back from the warehouse (Delta may hand
//! strings back as views and times with or without a zone; these read them as one shape).

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::DataType;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::prelude::{DataFrame, Expr, SessionContext};
use futures::StreamExt;

use crate::error::{Error, Result};

/// Column `name` of `batch`, as it is.
pub(crate) fn column(batch: &RecordBatch, name: &str) -> Result<ArrayRef> {
    batch
        .column_by_name(name)
        .cloned()
        .ok_or_else(|| Error::Internal(format!("column '{name}' missing from a scan")))
}

/// Column `name` as text.
pub(crate) fn text(batch: &RecordBatch, name: &str) -> Result<StringArray> {
    let array = arrow::compute::cast(&column(batch, name)?, &DataType::Utf8)?;
    array
        .as_any()
        .downcast_ref::<StringArray>()
        .cloned()
        .ok_or_else(|| Error::Internal(format!("column '{name}' is not text")))
}

/// Column `name` as 64-bit integers (times as UTC microseconds, dates as days).
pub(crate) fn ints(batch: &RecordBatch, name: &str) -> Result<Int64Array> {
    let array = column(batch, name)?;
    let array = match array.data_type() {
        DataType::Timestamp(_, _) => arrow::compute::cast(
            &arrow::compute::cast(
                &array,
                &DataType::Timestamp(arrow::datatypes::TimeUnit::Microsecond, None),
            )?,
            &DataType::Int64,
        )?,
        DataType::Date32 => arrow::compute::cast(
            &arrow::compute::cast(&array, &DataType::Int32)?,
            &DataType::Int64,
        )?,
        _ => arrow::compute::cast(&array, &DataType::Int64)?,
    };
    array
        .as_any()
        .downcast_ref::<Int64Array>()
        .cloned()
        .ok_or_else(|| Error::Internal(format!("column '{name}' is not numeric")))
}

/// The value of row `i`, or None when null or empty.
pub(crate) fn get(array: &StringArray, i: usize) -> Option<&str> {
    (array.is_valid(i) && !array.value(i).is_empty()).then(|| array.value(i))
}

/// The value of row `i`, or None when null.
pub(crate) fn get_int(array: &Int64Array, i: usize) -> Option<i64> {
    array.is_valid(i).then(|| array.value(i))
}

/// Reads `columns` of `table` where `filter` holds, as a stream.
pub(crate) async fn scan(
    ctx: &SessionContext,
    table: &shoal_catalog::Table,
    columns: &[&str],
    filter: Option<Expr>,
) -> Result<SendableRecordBatchStream> {
    Ok(frame(ctx, table, columns, filter)
        .await?
        .execute_stream()
        .await?)
}

/// A frame over `columns` of `table` where `filter` holds.
pub(crate) async fn frame(
    ctx: &SessionContext,
    table: &shoal_catalog::Table,
    columns: &[&str],
    filter: Option<Expr>,
) -> Result<DataFrame> {
    let mut frame = ctx.read_table(table.provider().await?)?;
    if let Some(f) = filter {
        frame = frame.filter(f)?;
    }
    Ok(frame.select_columns(columns)?)
}

/// Collects a stream, calling `each` per batch.
pub(crate) async fn for_each_batch(
    mut stream: SendableRecordBatchStream,
    mut each: impl FnMut(&RecordBatch) -> Result<()>,
) -> Result<()> {
    while let Some(batch) = stream.next().await {
        each(&batch?)?;
    }
    Ok(())
}

/// A text column from optional values.
pub(crate) fn text_array<S: AsRef<str>>(values: impl IntoIterator<Item = Option<S>>) -> ArrayRef {
    Arc::new(StringArray::from_iter(values))
}

/// A set of user ids as a bitset: tested once per row of large tables.
#[derive(Debug)]
pub(crate) struct UserSet {
    words: Vec<u64>,
    /// Whether no bit is set (asked once per batch of a scan, so kept rather than counted).
    empty: bool,
}

impl UserSet {
    pub(crate) fn new(users: impl IntoIterator<Item = i64>) -> UserSet {
        let mut words = Vec::new();
        for user in users {
            let Ok(u) = usize::try_from(user) else {
                continue;
            };
            if words.len() <= u / 64 {
                words.resize(u / 64 + 1, 0);
            }
            words[u / 64] |= 1u64 << (u % 64);
        }
        let empty = words.iter().all(|w| *w == 0);
        UserSet { words, empty }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.empty
    }

    pub(crate) fn contains(&self, user: i64) -> bool {
        usize::try_from(user).is_ok_and(|u| {
            self.words
                .get(u / 64)
                .is_some_and(|word| word & (1 << (u % 64)) != 0)
        })
    }
}

/// A row test over an integer column (the batch's one column): keeps the rows whose value
/// (`None` when null) `keep` accepts.
pub(crate) fn int_test(
    keep: impl Fn(Option<i64>) -> bool + Send + Sync + 'static,
) -> shoal_catalog::RowTest {
    Arc::new(move |batch: &RecordBatch| {
        let values = arrow::compute::cast(batch.column(0), &DataType::Int64)?;
        let values = values
            .as_any()
            .downcast_ref::<Int64Array>()
            .ok_or_else(|| {
                arrow::error::ArrowError::CastError("an integer column is not an integer".into())
            })?;
        Ok(values.iter().map(|v| Some(keep(v))).collect())
    })
}

/// The live rows of `table` whose `user_id` is one of `users` (all columns, or `columns`),
/// read with a row filter: the other columns are decoded only for those rows.
pub(crate) async fn rows_of_users(
    table: &shoal_catalog::Table,
    users: UserSet,
    columns: Option<&[&str]>,
) -> crate::error::Result<Vec<RecordBatch>> {
    let mut rows = Vec::new();
    table
        .read_files_where(
            &table.data_files()?,
            columns,
            "user_id",
            int_test(move |u| u.is_some_and(|u| users.contains(u))),
            |_, batch| {
                rows.push(batch);
                Ok(())
            },
        )
        .await?;
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::UserSet;

    #[test]
    fn a_user_set_holds_the_ids_given_and_is_empty_only_without_any() {
        let set = UserSet::new([3, 64, 200, -5]);
        assert!(!set.is_empty());
        for user in [3, 64, 200] {
            assert!(set.contains(user), "{user} was given");
        }
        for user in [-5, 0, 2, 4, 63, 65, 199, 201, 10_000] {
            assert!(!set.contains(user), "{user} was not given");
        }
        // Ids that cannot be users leave the set empty.
        assert!(UserSet::new([-1, -64]).is_empty());
        assert!(UserSet::new(std::iter::empty()).is_empty());
    }
}
