//! Delta tables of the warehouse: create, append, overwrite, merge, time travel, history.
//!
//! Every write is one Delta commit: it becomes visible whole or not at all. A write that
//! fails before its commit leaves the previous snapshot as the table's current state.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use chrono::{DateTime, TimeZone, Utc};
use datafusion::catalog::TableProvider;
use datafusion::prelude::{DataFrame, Expr, SessionContext, col};
use deltalake::TableProperty;
use deltalake::kernel::StructType;
use deltalake::kernel::engine::arrow_conversion::TryFromArrow;
use deltalake::kernel::transaction::CommitProperties;
use deltalake::parquet::basic::{Compression, Encoding};
use deltalake::parquet::file::properties::{EnabledStatistics, WriterProperties};
use deltalake::parquet::schema::types::ColumnPath;
use deltalake::protocol::SaveMode;
use deltalake::{DeltaTable, DeltaTableBuilder, DeltaTableError};
use futures::TryStreamExt;
use serde::Serialize;

use crate::error::{Error, Result, SnapshotRef};
use crate::warehouse::{Warehouse, storage_options};

/// Commits between Delta checkpoints (Delta's own default outside delta-rs). Opening a table
/// reads its last checkpoint and replays every commit after it, and pack, run and batch
/// tables take a commit per operation: a short interval keeps each open to a few files.
const CHECKPOINT_INTERVAL: u64 = 10;

/// The interval delta-rs checkpoints at when a table sets none.
const DELTA_RS_INTERVAL: u64 = 100;

/// Rows per Parquet row group. A row group is the unit one scan thread reads and the finest
/// unit statistics skip, so a table of a few hundred thousand rows (`users` of a shop) still
/// spreads over every core, where Parquet's default of a million rows would give one thread
/// the whole file.
pub const ROW_GROUP_ROWS: usize = 128 * 1024;

/// Most rows of a file written by [`Table::replace_files`] (and the merges and rewrites built
/// on it): four row groups.
pub const FILE_ROWS: usize = 4 * ROW_GROUP_ROWS;

/// How some of a table's columns are encoded in its Parquet files; every other column takes
/// Parquet's default, a dictionary with plain values as fallback.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ColumnLayout {
    /// Columns of nearly distinct values, written plain: a dictionary would cost memory and
    /// time until Parquet gives it up.
    pub distinct: Vec<String>,
    /// Integer and time columns written as deltas between neighbours (`DELTA_BINARY_PACKED`):
    /// a sorted id takes a few bits a row instead of eight bytes, and times close to each
    /// other little more than their differences.
    pub delta: Vec<String>,
    /// Columns written without statistics: JSON documents, ids drawn at random and text in
    /// no order, whose least and greatest values prune nothing, while finding them compares
    /// every value.
    pub unindexed: Vec<String>,
    /// Columns of ids drawn at random (message ids, hashes), written without compression:
    /// Snappy finds a tenth of such text to spare, for a pass over the largest column of a
    /// table, on every write and every read.
    pub uncompressed: Vec<String>,
}

/// How every data file is written: Delta's own defaults (Snappy, statistics per page) with
/// row groups of [`ROW_GROUP_ROWS`], and the encodings and statistics of `layout`.
fn writer_properties(layout: &ColumnLayout) -> WriterProperties {
    let builder = layout.distinct.iter().chain(&layout.delta).fold(
        WriterProperties::builder(),
        |builder, column| {
            builder.set_column_dictionary_enabled(ColumnPath::from(column.as_str()), false)
        },
    );
    let builder = layout.unindexed.iter().fold(builder, |builder, column| {
        builder.set_column_statistics_enabled(
            ColumnPath::from(column.as_str()),
            EnabledStatistics::None,
        )
    });
    let builder = layout.uncompressed.iter().fold(builder, |builder, column| {
        builder.set_column_compression(ColumnPath::from(column.as_str()), Compression::UNCOMPRESSED)
    });
    layout
        .delta
        .iter()
        .fold(builder, |builder, column| {
            builder.set_column_encoding(
                ColumnPath::from(column.as_str()),
                Encoding::DELTA_BINARY_PACKED,
            )
        })
        .set_compression(Compression::SNAPPY)
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        .build()
}

/// A session configuration whose Parquet scans give text columns as tables store them (not
/// as string views), for rows read only to be written again.
pub fn stored_text_config() -> datafusion::prelude::SessionConfig {
    let mut config = datafusion::prelude::SessionConfig::new();
    config
        .options_mut()
        .execution
        .parquet
        .schema_force_view_types = false;
    config
}

/// A DataFusion session able to plan Delta writes: frames given to
/// [`Table::overwrite_frame`] must be made in one of these.
pub fn write_session() -> SessionContext {
    deltalake::delta_datafusion::create_session().into_inner()
}

/// Which rows of a batch a marking write replaces.
type Matches = Arc<dyn Fn(&RecordBatch) -> Result<Vec<bool>> + Send + Sync>;

/// Which rows of a batch (of one column) a filtered read keeps.
pub type RowTest = Arc<
    dyn Fn(
            &RecordBatch,
        ) -> std::result::Result<arrow::array::BooleanArray, arrow::error::ArrowError>
        + Send
        + Sync,
>;

/// One data file of a table's snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DataFile {
    /// Path from the table's root.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// The file's partition values, as Delta writes them (text; `None` for null).
    pub partition: std::collections::BTreeMap<String, Option<String>>,
    /// Rows stored in the file (deleted ones included), when the log records it.
    pub rows: Option<u64>,
    /// Its deletion vector: the rows marked deleted, which readers skip.
    pub deleted: Option<crate::DeletionRef>,
}

/// The data file an add action of the log names.
/// A derived file of a table, read in parts (see [`Table::open_derived`]).
#[derive(Debug)]
pub struct DerivedFile {
    size: u64,
    source: DerivedSource,
}

#[derive(Debug)]
enum DerivedSource {
    Local(std::fs::File),
    Store(Arc<dyn object_store::ObjectStore>, object_store::path::Path),
}

impl DerivedFile {
    /// Its length in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Fills `buf` with the file's bytes from `offset`.
    pub async fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let end = offset + buf.len() as u64;
        if end > self.size {
            return Err(Error::Internal(format!(
                "reading bytes {offset}..{end} of a derived file of {} bytes",
                self.size
            )));
        }
        match &self.source {
            DerivedSource::Local(file) => {
                use std::os::unix::fs::FileExt;
                file.read_exact_at(buf, offset)
                    .map_err(|e| Error::Internal(format!("reading a derived file: {e}")))
            }
            DerivedSource::Store(store, path) => {
                let bytes = object_store::ObjectStoreExt::get_range(store, path, offset..end)
                    .await
                    .map_err(|e| Error::Internal(format!("reading {path}: {e}")))?;
                if bytes.len() != buf.len() {
                    return Err(Error::Internal(format!(
                        "reading {path}: {} bytes where {} were asked for",
                        bytes.len(),
                        buf.len()
                    )));
                }
                buf.copy_from_slice(&bytes);
                Ok(())
            }
        }
    }
}

/// Where derived file `name` of a table is, from the table's root.
fn derived_path(name: &str) -> object_store::path::Path {
    object_store::path::Path::from(format!("_shoal/{name}"))
}

fn data_file(add: deltalake::kernel::LogicalFileView) -> DataFile {
    DataFile {
        path: add.object_store_path().to_string(),
        size: add.size().max(0) as u64,
        partition: add.partition_values_map().into_iter().collect(),
        rows: add.num_records().and_then(|n| u64::try_from(n).ok()),
        deleted: add
            .deletion_vector_descriptor()
            .map(|dv| crate::DeletionRef::of(&dv)),
    }
}

/// The statistic of `column` in one of a file's statistics in the log (null counts, least or
/// greatest values). The log keeps its statistics parsed: they are read as they are rather
/// than written out as JSON text and parsed again.
fn column_stat(
    stats: Option<delta_kernel::expressions::Scalar>,
    column: &str,
) -> Option<serde_json::Value> {
    use deltalake::kernel::scalars::ScalarExt;
    stats?.to_json().get(column).cloned()
}

/// A Parquet file in an object store, read by ranges: the footer first, then the column
/// chunks a read asks for.
struct StoredFile {
    store: Arc<dyn object_store::ObjectStore>,
    path: object_store::path::Path,
    size: u64,
}

impl deltalake::parquet::arrow::async_reader::AsyncFileReader for StoredFile {
    fn get_bytes(
        &mut self,
        range: std::ops::Range<u64>,
    ) -> futures::future::BoxFuture<'_, deltalake::parquet::errors::Result<bytes::Bytes>> {
        Box::pin(async move {
            Ok(object_store::ObjectStoreExt::get_range(&self.store, &self.path, range).await?)
        })
    }

    fn get_metadata<'a>(
        &'a mut self,
        _options: Option<&'a deltalake::parquet::arrow::arrow_reader::ArrowReaderOptions>,
    ) -> futures::future::BoxFuture<
        'a,
        deltalake::parquet::errors::Result<
            Arc<deltalake::parquet::file::metadata::ParquetMetaData>,
        >,
    > {
        Box::pin(async move {
            let size = self.size;
            let metadata = deltalake::parquet::file::metadata::ParquetMetaDataReader::new()
                .with_prefetch_hint(Some(64 * 1024))
                .load_and_finish(self, size)
                .await?;
            Ok(Arc::new(metadata))
        })
    }
}

/// A Delta table of the warehouse, pinned at one snapshot.
#[derive(Debug, Clone)]
pub struct Table {
    name: String,
    delta: DeltaTable,
    /// How its columns are encoded when written (see [`Table::with_layout`]).
    layout: ColumnLayout,
}

/// One entry of a table's history.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Commit {
    /// Delta version number.
    pub version: u64,
    /// Commit time.
    pub timestamp: Option<DateTime<Utc>>,
    /// Delta operation (`CREATE TABLE`, `WRITE`, `MERGE`, ...).
    pub operation: String,
    /// Operation parameters as Delta records them (mode, predicate, ...).
    pub parameters: serde_json::Map<String, serde_json::Value>,
    /// What Shoal attached to the commit (`shoal.*` keys: batch id, author, reason).
    pub metadata: serde_json::Map<String, serde_json::Value>,
}

/// A table of the warehouse at its latest version, as listings show it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TableSummary {
    /// Table name.
    pub table: String,
    /// Latest version.
    pub version: u64,
    /// Rows at that version.
    pub rows: u64,
    /// Data files at that version.
    pub files: u64,
    /// Time of the newest commit.
    pub last_commit: Option<DateTime<Utc>>,
}

/// Every Delta table of the warehouse with its version, rows and last commit, sorted by name.
pub async fn table_summaries(warehouse: &Warehouse) -> Result<Vec<TableSummary>> {
    let mut out = Vec::new();
    for name in warehouse.table_names().await? {
        let table = Table::open(warehouse, &name).await?;
        out.push(TableSummary {
            version: table.version(),
            rows: table.row_count().await?,
            files: table.data_files()?.len() as u64,
            last_commit: table.last_commit_time().await?,
            table: name,
        });
    }
    Ok(out)
}

/// What a MERGE did.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct MergeOutcome {
    /// The version the merge committed.
    pub version: u64,
    /// Source rows that matched no target row and were inserted.
    pub inserted: usize,
    /// Target rows replaced by a source row with the same key.
    pub updated: usize,
}

/// Provenance attached to a commit: who or what wrote, and why.
#[derive(Debug, Clone, Default)]
pub struct CommitNote {
    entries: HashMap<String, serde_json::Value>,
}

impl CommitNote {
    /// A note with one `shoal.<key>` entry.
    pub fn new(key: &str, value: impl Into<serde_json::Value>) -> Self {
        CommitNote::default().with(key, value)
    }

    /// Adds a `shoal.<key>` entry.
    pub fn with(mut self, key: &str, value: impl Into<serde_json::Value>) -> Self {
        self.entries.insert(format!("shoal.{key}"), value.into());
        self
    }

    fn properties(&self) -> CommitProperties {
        CommitProperties::default().with_metadata(self.entries.clone())
    }
}

impl Table {
    /// Creates table `name` with `schema` if it does not exist yet; opens it otherwise.
    ///
    /// An existing table keeps its schema; new nullable columns in `schema` are added to it
    /// (schema evolution), so a catalog that grows a field upgrades old warehouses.
    pub async fn create_if_missing(
        warehouse: &Warehouse,
        name: &str,
        schema: SchemaRef,
        partition_by: &[String],
    ) -> Result<Table> {
        let url = warehouse.table_url(name)?;
        if let Ok(path) = url.to_file_path() {
            std::fs::create_dir_all(&path).map_err(|source| Error::Io {
                path: path.display().to_string(),
                source,
            })?;
        }
        let delta = DeltaTable::try_from_url_with_storage_options(url, storage_options())
            .await
            .map_err(|e| Error::delta(name, e))?;
        if delta.version().is_some() {
            let table = Table {
                name: name.to_string(),
                delta,
                layout: ColumnLayout::default(),
            };
            return table.add_missing_columns(&schema).await;
        }
        let struct_type = StructType::try_from_arrow(schema.as_ref())?;
        let delta = delta
            .create()
            .with_table_name(name)
            .with_columns(struct_type.fields().cloned())
            .with_partition_columns(partition_by.to_vec())
            .with_configuration_property(
                TableProperty::CheckpointInterval,
                Some(CHECKPOINT_INTERVAL.to_string()),
            )
            .with_save_mode(SaveMode::Ignore)
            .await
            .map_err(|e| Error::delta(name, e))?;
        Ok(Table {
            name: name.to_string(),
            delta,
            layout: ColumnLayout::default(),
        })
    }

    /// Opens the latest snapshot of table `name`.
    pub async fn open(warehouse: &Warehouse, name: &str) -> Result<Table> {
        Table::open_at(warehouse, name, SnapshotRef::Latest).await
    }

    /// Opens table `name` at a version or commit time.
    pub async fn open_at(warehouse: &Warehouse, name: &str, at: SnapshotRef) -> Result<Table> {
        let url = warehouse.table_url(name)?;
        if url
            .to_file_path()
            .is_ok_and(|p| !p.join("_delta_log").is_dir())
        {
            return Err(Error::UnknownTable {
                name: name.to_string(),
            });
        }
        let mut delta = DeltaTableBuilder::from_url(url)
            .and_then(|b| b.with_storage_options(storage_options()).build())
            .map_err(|e| Error::delta(name, e))?;
        let loaded = match at {
            SnapshotRef::Latest => delta.load().await,
            SnapshotRef::Version(v) => delta.load_version(v).await,
            SnapshotRef::Timestamp(t) => delta.load_with_datetime(t).await,
        };
        match loaded {
            Ok(()) => Ok(Table {
                name: name.to_string(),
                delta,
                layout: ColumnLayout::default(),
            }),
            Err(DeltaTableError::NotATable(_)) => Err(Error::UnknownTable {
                name: name.to_string(),
            }),
            Err(
                DeltaTableError::InvalidVersion(_)
                | DeltaTableError::InvalidDateTimeString { .. }
                | DeltaTableError::NotInitialized,
            ) => Err(Error::NoSuchSnapshot {
                table: name.to_string(),
                at,
            }),
            Err(e) if !matches!(at, SnapshotRef::Latest) && is_missing_version(&e) => {
                Err(Error::NoSuchSnapshot {
                    table: name.to_string(),
                    at,
                })
            }
            Err(e) => Err(Error::delta(name, e)),
        }
    }

    /// Moves this handle to the table's newest version, reading only the commits since.
    /// Commits are numbered without gaps, so a table whose next commit file does not exist
    /// has none since: that is one `stat` (a HEAD on object stores), not a listing of its log.
    pub async fn refresh(&mut self) -> Result<()> {
        if !self.may_have_moved().await {
            return Ok(());
        }
        self.delta
            .update_incremental(None)
            .await
            .map_err(|e| Error::delta(&self.name, e))
    }

    /// Whether a commit after this handle's version may exist (true when unsure).
    async fn may_have_moved(&self) -> bool {
        let Some(version) = self.delta.version() else {
            return true;
        };
        let next = format!("_delta_log/{:020}.json", version + 1);
        let url = self.delta.table_url();
        if url.scheme() == "file" {
            return match url.to_file_path() {
                Ok(root) => !matches!(root.join(&next).try_exists(), Ok(false)),
                Err(()) => true,
            };
        }
        let store = self.delta.object_store();
        !matches!(
            object_store::ObjectStoreExt::head(&store, &object_store::path::Path::from(next)).await,
            Err(object_store::Error::NotFound { .. })
        )
    }

    /// This handle, encoding its columns as `layout` says in every file it writes from now
    /// on (see `TableDefinition::column_layout`).
    pub fn with_layout(mut self, layout: ColumnLayout) -> Self {
        self.layout = layout;
        self
    }

    /// The table's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The snapshot version this handle reads.
    pub fn version(&self) -> u64 {
        self.delta.version().unwrap_or(0)
    }

    /// The table's Arrow schema at this snapshot.
    pub fn schema(&self) -> Result<SchemaRef> {
        let snapshot = self
            .delta
            .snapshot()
            .map_err(|e| Error::delta(&self.name, e))?;
        Ok(snapshot.snapshot().arrow_schema())
    }

    /// The data files of this snapshot: path from the table's root, and size in bytes.
    pub fn data_files(&self) -> Result<Vec<DataFile>> {
        self.data_files_where(|_| true)
    }

    /// The data files of this snapshot whose add action in the log passes `keep`.
    fn data_files_where(
        &self,
        keep: impl FnMut(&deltalake::kernel::LogicalFileView) -> bool,
    ) -> Result<Vec<DataFile>> {
        let snapshot = self
            .delta
            .snapshot()
            .map_err(|e| Error::delta(&self.name, e))?;
        Ok(snapshot
            .log_data()
            .into_iter()
            .filter(keep)
            .map(data_file)
            .collect())
    }

    /// The data files that may hold nulls in `column`: those whose statistics in the log
    /// count some, and those without statistics for it.
    pub fn data_files_with_nulls(&self, column: &str) -> Result<Vec<DataFile>> {
        self.data_files_where(|add| {
            column_stat(add.null_counts(), column).and_then(|n| n.as_u64()) != Some(0)
        })
    }

    /// The data files that may hold one of `values` in the integer column `column`: those
    /// whose least and greatest values in the log's statistics bound one of them, and those
    /// without such statistics. Files sorted by the column hold narrow ranges of it, so a
    /// few values pass over most of them unread.
    pub fn data_files_bounding(
        &self,
        column: &str,
        values: &std::collections::HashSet<i64>,
    ) -> Result<Vec<DataFile>> {
        let mut sorted: Vec<i64> = values.iter().copied().collect();
        sorted.sort_unstable();
        let bound = |stats| column_stat(stats, column).and_then(|v| v.as_i64());
        self.data_files_where(
            |add| match (bound(add.min_values()), bound(add.max_values())) {
                (Some(least), Some(greatest)) => {
                    let first = sorted.partition_point(|v| *v < least);
                    sorted.get(first).is_some_and(|v| *v <= greatest)
                }
                _ => true,
            },
        )
    }

    /// Reads `columns` (all of them when `None`) of some of the table's data files (from
    /// [`Table::data_files`]), a few files at a time, handing each batch to `each` with the
    /// index of its file in `files` as it is decoded. Rows marked deleted are skipped.
    /// Partition columns are not in the files.
    pub async fn read_files(
        &self,
        files: &[DataFile],
        columns: Option<&[&str]>,
        each: impl FnMut(usize, RecordBatch) -> Result<()>,
    ) -> Result<()> {
        self.read_stored(files, columns, true, None, each).await
    }

    /// [`Table::read_files`], each batch first turned into a `T` by `map` on the thread that
    /// decoded it, so work done on every row keeps pace with decoding on every core; `each`
    /// then takes the files' results in the order of `files`.
    pub async fn read_files_mapped<T: Send + 'static>(
        &self,
        files: &[DataFile],
        columns: Option<&[&str]>,
        map: Arc<dyn Fn(RecordBatch) -> Result<T> + Send + Sync>,
        mut each: impl FnMut(usize, T) -> Result<()>,
    ) -> Result<()> {
        let mut done: Vec<Option<Vec<T>>> = (0..files.len()).map(|_| None).collect();
        let mut next = 0;
        self.read_stored_mapped(files, columns, true, None, map, |index, results| {
            done[index] = Some(results);
            while let Some(results) = done.get_mut(next).and_then(Option::take) {
                for result in results {
                    each(next, result)?;
                }
                next += 1;
            }
            Ok(())
        })
        .await
    }

    /// [`Table::read_files`] keeping only the rows whose `key` column passes `keep` (given
    /// batches of that column alone, it answers which rows to keep). The other columns are
    /// decoded only for kept rows (a Parquet row filter), so picking a few people's rows out
    /// of large files costs about one decode of `key`.
    pub async fn read_files_where(
        &self,
        files: &[DataFile],
        columns: Option<&[&str]>,
        key: &str,
        keep: RowTest,
        each: impl FnMut(usize, RecordBatch) -> Result<()>,
    ) -> Result<()> {
        self.read_stored(files, columns, true, Some((key, keep)), each)
            .await
    }

    /// [`Table::read_files`], skipping the rows marked deleted when `live` (otherwise the
    /// batches hold every stored row, in file order) and, with `filter`, the rows whose
    /// column fails its test. Files are decoded on the runtime's threads, a few at a time.
    async fn read_stored(
        &self,
        files: &[DataFile],
        columns: Option<&[&str]>,
        live: bool,
        filter: Option<(&str, RowTest)>,
        mut each: impl FnMut(usize, RecordBatch) -> Result<()>,
    ) -> Result<()> {
        self.read_stored_mapped(
            files,
            columns,
            live,
            filter,
            Arc::new(Ok),
            |index, batches| {
                for batch in batches {
                    each(index, batch)?;
                }
                Ok(())
            },
        )
        .await
    }

    /// [`Table::read_stored`], each file's batches turned into `T`s by `map` on the task that
    /// decoded them; `each` takes a file's results (with the file's index) as its read ends.
    async fn read_stored_mapped<T: Send + 'static>(
        &self,
        files: &[DataFile],
        columns: Option<&[&str]>,
        live: bool,
        filter: Option<(&str, RowTest)>,
        map: Arc<dyn Fn(RecordBatch) -> Result<T> + Send + Sync>,
        mut each: impl FnMut(usize, Vec<T>) -> Result<()>,
    ) -> Result<()> {
        use deltalake::parquet::arrow::ParquetRecordBatchStreamBuilder;
        use deltalake::parquet::arrow::ProjectionMask;
        use deltalake::parquet::arrow::arrow_reader::{ArrowPredicateFn, RowFilter};
        use futures::StreamExt;
        let store = self.delta.object_store();
        let name = self.name.clone();
        let columns: Option<Arc<Vec<String>>> =
            columns.map(|c| Arc::new(c.iter().map(|c| c.to_string()).collect()));
        let filter = filter.map(|(key, test)| (key.to_string(), test));
        let mut reads = futures::stream::iter(files.iter().cloned().enumerate())
            .map(|(index, file)| {
                let reader = StoredFile {
                    store: store.clone(),
                    path: file.path.as_str().into(),
                    size: file.size,
                };
                let (store, name, columns, filter, map) = (
                    store.clone(),
                    name.clone(),
                    columns.clone(),
                    filter.clone(),
                    map.clone(),
                );
                let read = async move {
                    let deleted = match &file.deleted {
                        Some(dv) if live => {
                            Some(crate::deletion_vectors::load(&name, store.as_ref(), dv).await?)
                        }
                        _ => None,
                    };
                    let read = async {
                        let mut builder = ParquetRecordBatchStreamBuilder::new(reader).await?;
                        let mask = match &columns {
                            Some(columns) => ProjectionMask::columns(
                                builder.parquet_schema(),
                                columns.iter().map(String::as_str),
                            ),
                            None => ProjectionMask::all(),
                        };
                        if let Some(deleted) = &deleted {
                            let rows = builder.metadata().file_metadata().num_rows().max(0);
                            builder = builder.with_row_selection(
                                crate::deletion_vectors::selection(rows as usize, deleted),
                            );
                        }
                        if let Some((key, test)) = filter {
                            let on =
                                ProjectionMask::columns(builder.parquet_schema(), [key.as_str()]);
                            let predicate =
                                ArrowPredicateFn::new(on, move |batch: RecordBatch| test(&batch));
                            builder =
                                builder.with_row_filter(RowFilter::new(vec![Box::new(predicate)]));
                        }
                        let stream = builder.with_projection(mask).build()?;
                        stream.try_collect::<Vec<_>>().await
                    };
                    let batches =
                        read.await
                            .map_err(|e: deltalake::parquet::errors::ParquetError| {
                                Error::Internal(format!("{name}: {e}"))
                            })?;
                    let results = batches.into_iter().map(|b| map(b)).collect::<Result<_>>()?;
                    Ok::<_, Error>((index, results))
                };
                async move {
                    tokio::spawn(read)
                        .await
                        .map_err(|e| Error::Internal(format!("a file read stopped: {e}")))?
                }
            })
            .buffer_unordered(4);
        while let Some(read) = reads.next().await {
            let (index, results) = read?;
            each(index, results)?;
        }
        Ok(())
    }

    /// A DataFusion provider reading this snapshot.
    pub async fn provider(&self) -> Result<Arc<dyn TableProvider>> {
        Ok(self.delta.table_provider().await?)
    }

    /// A provider whose scans give text columns as the table stores them (not as string
    /// views), for rows that are read only to be written again.
    pub async fn rewrite_provider(&self) -> Result<Arc<dyn TableProvider>> {
        self.delta_provider_with(stored_text_config()).await
    }

    /// Delta's provider, scanning with `config`.
    async fn delta_provider_with(
        &self,
        config: datafusion::prelude::SessionConfig,
    ) -> Result<Arc<dyn TableProvider>> {
        let state = datafusion::execution::SessionStateBuilder::new()
            .with_config(config)
            .build();
        Ok(self
            .delta
            .table_provider()
            .with_session(Arc::new(state))
            .await?)
    }

    /// The DataFusion provider for queries: DataFusion's Parquet scan over this snapshot's
    /// files (see `snapshot_scan`). Filters prune files, row groups and pages by their
    /// statistics, and are tested on whole decoded batches after the scan. Testing them
    /// while decoding (Parquet's row filters) pays for a row selection per condition, which
    /// costs more than it saves when the kept rows are scattered, as audience conditions and
    /// pack members are.
    pub async fn query_provider(&self) -> Result<Arc<dyn TableProvider>> {
        self.query_provider_cached(None).await
    }

    /// [`Table::query_provider`], whose scans keep the columns they decode in `cache` and
    /// read them from there (see [`ColumnCache`](crate::ColumnCache)).
    pub async fn query_provider_cached(
        &self,
        cache: Option<Arc<crate::ColumnCache>>,
    ) -> Result<Arc<dyn TableProvider>> {
        if let Some(scan) = crate::snapshot_scan::SnapshotScan::of(&self.delta)
            .map_err(|e| Error::delta(&self.name, e))?
        {
            return Ok(match cache {
                Some(cache) => Arc::new(scan.with_cache(cache)),
                None => Arc::new(scan),
            });
        }
        let mut config = datafusion::prelude::SessionConfig::new();
        config.options_mut().execution.parquet.pushdown_filters = false;
        self.delta_provider_with(config).await
    }

    /// Number of rows at this snapshot (answered from file statistics where Delta has them).
    pub async fn row_count(&self) -> Result<u64> {
        let ctx = SessionContext::new();
        let count = ctx.read_table(self.provider().await?)?.count().await?;
        Ok(count as u64)
    }

    /// Reads every row of this snapshot. For small tables (catalog, tokens, test checks).
    pub async fn read_all(&self) -> Result<Vec<RecordBatch>> {
        let ctx = SessionContext::new();
        Ok(ctx.read_table(self.provider().await?)?.collect().await?)
    }

    /// Appends `batches` in one commit and returns the new version. In a partitioned table
    /// each partition's rows become files of at most [`FILE_ROWS`] rows, in the order given;
    /// runs of rows sharing a partition go to their file as they are, without a copy.
    pub async fn append(&mut self, batches: Vec<RecordBatch>, note: CommitNote) -> Result<u64> {
        let partitions = self.partition_columns()?;
        if partitions.is_empty() || batches.iter().all(|b| b.num_rows() == 0) {
            return self.write(batches, SaveMode::Append, None, note).await;
        }
        self.check_batches(&batches)?;
        let schema = self.schema()?;
        let batches = batches
            .iter()
            .filter(|b| b.num_rows() > 0)
            .map(|b| conform(b, &schema))
            .collect::<Result<Vec<_>>>()?;
        let files = partition_files(batches, &partitions)?
            .into_iter()
            .map(|file| Box::new(move || Ok(file)) as FileBatches)
            .collect();
        let actions = self.write_partition_files(files).await?;
        let operation = deltalake::protocol::DeltaOperation::Write {
            mode: SaveMode::Append,
            partition_by: Some(partitions),
            predicate: None,
        };
        self.commit_actions(actions, note, operation).await
    }

    /// Replaces the whole content with `batches` in one commit.
    pub async fn overwrite(&mut self, batches: Vec<RecordBatch>, note: CommitNote) -> Result<u64> {
        self.write(batches, SaveMode::Overwrite, None, note).await
    }

    /// Replaces the rows matching `predicate` (a filter on partition columns, e.g. some days
    /// of `events`) with `batches`, in one commit. Every row of `batches` must match it.
    pub async fn replace_where(
        &mut self,
        batches: Vec<RecordBatch>,
        predicate: Expr,
        note: CommitNote,
    ) -> Result<u64> {
        self.write(batches, SaveMode::Overwrite, Some(predicate), note)
            .await
    }

    /// Removes the data files `remove` (from [`Table::data_files`]) and adds the rows of
    /// `batches` as new files, in one commit. Every other file stays as it is, rows appended
    /// meanwhile included; the commit fails if a file to remove has already gone. In a
    /// partitioned table where each batch holds the rows of one partition, each batch becomes
    /// one file; otherwise files hold at most [`FILE_ROWS`] rows.
    pub async fn replace_files(
        &mut self,
        remove: &[DataFile],
        batches: Vec<RecordBatch>,
        note: CommitNote,
    ) -> Result<u64> {
        let operation = deltalake::protocol::DeltaOperation::Update { predicate: None };
        self.replace_files_as(remove, batches, note, operation)
            .await
    }

    /// [`Table::replace_files`], recorded in the log as `operation`.
    async fn replace_files_as(
        &mut self,
        remove: &[DataFile],
        batches: Vec<RecordBatch>,
        note: CommitNote,
        operation: deltalake::protocol::DeltaOperation,
    ) -> Result<u64> {
        self.check_batches(&batches)?;
        let actions = self.remove_actions(remove)?;
        self.commit_with_files(actions, batches, note, operation)
            .await
    }

    /// [`Table::replace_files`] where each new file's rows are made by a function called when
    /// a writer is ready for them, a few side by side (one per core): rows gathered from
    /// larger batches are copied while other files are encoded. The table must be
    /// partitioned, and each file's rows must share their partition values.
    pub async fn replace_files_made(
        &mut self,
        remove: &[DataFile],
        files: Vec<FileRows>,
        note: CommitNote,
    ) -> Result<u64> {
        let mut actions = self.remove_actions(remove)?;
        let files = files.into_iter().map(one_batch).collect();
        actions.extend(self.write_partition_files(files).await?);
        let operation = deltalake::protocol::DeltaOperation::Update { predicate: None };
        self.commit_actions(actions, note, operation).await
    }

    /// The remove actions of `remove`; an error when one of them is no longer in the
    /// snapshot.
    fn remove_actions(&self, remove: &[DataFile]) -> Result<Vec<deltalake::kernel::Action>> {
        use deltalake::kernel::Action;
        let snapshot = self
            .delta
            .snapshot()
            .map_err(|e| Error::delta(&self.name, e))?;
        let wanted: std::collections::HashSet<&str> =
            remove.iter().map(|f| f.path.as_str()).collect();
        let actions: Vec<Action> = snapshot
            .log_data()
            .into_iter()
            .filter(|file| wanted.contains(file.object_store_path().as_ref()))
            .map(|file| Action::Remove(file.remove_action(true)))
            .collect();
        if actions.len() != wanted.len() {
            return Err(Error::InvalidData {
                table: self.name.clone(),
                reason: format!(
                    "{} of the {} files to replace are no longer in version {}",
                    wanted.len() - actions.len(),
                    wanted.len(),
                    self.version()
                ),
            });
        }
        Ok(actions)
    }

    /// Writes `batches` as new files (see [`Table::replace_files`] for their size) and
    /// commits them with `actions`, recorded in the log as `operation`.
    async fn commit_with_files(
        &mut self,
        mut actions: Vec<deltalake::kernel::Action>,
        batches: Vec<RecordBatch>,
        note: CommitNote,
        operation: deltalake::protocol::DeltaOperation,
    ) -> Result<u64> {
        use deltalake::kernel::Action;
        use deltalake::writer::{DeltaWriter, RecordBatchWriter};
        // Rows already split by partition go to their files as they are (Delta's writer would
        // copy every batch to split it again).
        if self.one_partition_each(&batches)? {
            let files = batches
                .into_iter()
                .filter(|b| b.num_rows() > 0)
                .map(|b| Box::new(move || Ok(vec![b])) as FileBatches)
                .collect();
            actions.extend(self.write_partition_files(files).await?);
            return self.commit_actions(actions, note, operation).await;
        }
        // Large writes are split into parts written side by side, a file each, one per core,
        // and files of at most FILE_ROWS rows, so that a later change to a few rows rewrites
        // a file of bounded size.
        let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        let parts = rows
            .div_ceil(FILE_ROWS)
            .max((rows / ROW_GROUP_ROWS).clamp(1, cores));
        let mut pending = split_rows(batches, parts).into_iter();
        loop {
            let mut writes = Vec::with_capacity(cores);
            for part in pending.by_ref().take(cores) {
                let mut writer = RecordBatchWriter::for_table(&self.delta)
                    .map_err(|e| self.write_error(e))?
                    .with_writer_properties(writer_properties(&self.layout));
                writes.push(tokio::spawn(async move {
                    for batch in part {
                        writer.write(batch).await?;
                    }
                    writer.flush().await
                }));
            }
            if writes.is_empty() {
                break;
            }
            for write in writes {
                let added = write
                    .await
                    .map_err(|e| Error::Internal(format!("{}: writing: {e}", self.name)))?
                    .map_err(|e| self.write_error(e))?;
                actions.extend(added.into_iter().map(Action::Add));
            }
        }
        self.commit_actions(actions, note, operation).await
    }

    /// Commits `actions` on top of the table's snapshot, recorded as `operation`.
    async fn commit_actions(
        &mut self,
        actions: Vec<deltalake::kernel::Action>,
        note: CommitNote,
        operation: deltalake::protocol::DeltaOperation,
    ) -> Result<u64> {
        use deltalake::kernel::transaction::CommitBuilder;
        let snapshot = self
            .delta
            .snapshot()
            .map_err(|e| Error::delta(&self.name, e))?;
        let finalized = CommitBuilder::from(note.properties())
            .with_actions(actions)
            .build(Some(snapshot), self.delta.log_store(), operation)
            .await
            .map_err(|e| self.write_error(e))?;
        let mut delta = self.delta.clone();
        delta.state = Some(finalized.snapshot());
        self.committed(delta).await;
        Ok(self.version())
    }

    /// Whether the table is partitioned and every batch holds rows of one partition alone.
    fn one_partition_each(&self, batches: &[RecordBatch]) -> Result<bool> {
        let columns = self.partition_columns()?;
        if columns.is_empty() {
            return Ok(false);
        }
        for batch in batches.iter().filter(|b| b.num_rows() > 0) {
            if partition_of(batch, &columns)?.is_none() {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Writes the rows each of `files` makes (those of one partition) as one data file, as
    /// they are: a few side by side, one per core. Gives back the files' add actions.
    async fn write_partition_files(
        &self,
        files: Vec<FileBatches>,
    ) -> Result<Vec<deltalake::kernel::Action>> {
        use deltalake::datafile::writer::{DeltaWriter, WriterConfig};
        let snapshot = self
            .delta
            .snapshot()
            .map_err(|e| Error::delta(&self.name, e))?;
        let metadata = snapshot.metadata();
        let configuration = metadata.configuration();
        let indexed = configuration
            .get("delta.dataSkippingNumIndexedCols")
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(deltalake::table::config::DEFAULT_NUM_INDEX_COLS);
        let stats_columns: Option<Vec<String>> = configuration
            .get("delta.dataSkippingStatsColumns")
            .map(|v| v.split(',').map(str::to_string).collect());
        let schema = self.schema()?;
        let partitions = metadata.partition_columns().to_vec();
        if partitions.is_empty() {
            return Err(Error::InvalidData {
                table: self.name.clone(),
                reason: "files of one partition each need a partitioned table".into(),
            });
        }
        // No target size: each batch is one file, however many rows the caller put in it.
        let config = WriterConfig::new(
            schema.clone(),
            partitions.clone(),
            Some(writer_properties(&self.layout)),
            None,
            Some(ROW_GROUP_ROWS),
            delta_kernel::table_properties::DataSkippingNumIndexedCols::NumColumns(indexed),
            stats_columns,
        );
        let store = self.delta.object_store();
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        let name = self.name.clone();
        let mut pending = files.into_iter();
        let mut running = tokio::task::JoinSet::new();
        let mut actions = Vec::new();
        loop {
            while running.len() < cores
                && let Some(make) = pending.next()
            {
                let writer = DeltaWriter::new(store.clone(), config.clone());
                let (table, schema, partitions) =
                    (name.clone(), schema.clone(), partitions.clone());
                running.spawn(write_file(writer, make, table, schema, partitions));
            }
            let Some(written) = running.join_next().await else {
                break;
            };
            let added = written.map_err(|e| Error::Internal(format!("{name}: writing: {e}")))??;
            actions.extend(added.into_iter().map(deltalake::kernel::Action::Add));
        }
        Ok(actions)
    }

    /// Upserts `batches` by `key`, an integer column the table is kept sorted by, and deletes
    /// the rows whose key is in `removed`, in one commit. Only the files holding one of those
    /// keys are rewritten: their other rows and the new ones, sorted by `key`, become one new
    /// file. For unpartitioned tables; duplicate keys in `batches` are an error.
    pub async fn replace_keys(
        &mut self,
        batches: Vec<RecordBatch>,
        key: &str,
        removed: &[i64],
        note: CommitNote,
    ) -> Result<u64> {
        use arrow::array::BooleanArray;
        let (given, replaced) = self.keyed_write(&batches, key, removed)?;
        let name = self.name.clone();
        // The files holding a replaced key lose those rows and gain the new ones.
        let drop_replaced = |batch: RecordBatch| -> Result<RecordBatch> {
            let keep: BooleanArray = int_column(&name, &batch, key)?
                .iter()
                .map(|k| Some(!k.is_some_and(|k| replaced.contains(&k))))
                .collect();
            Ok(arrow::compute::filter_record_batch(&batch, &keep)?)
        };
        self.rewrite_rows(key, &replaced, drop_replaced, given, note)
            .await
    }

    /// The rows of a write by integer `key` in the table's column types, and the keys it
    /// replaces (its own and `removed`). Errors when a row has no key or two share one, or
    /// when the table is partitioned.
    fn keyed_write(
        &self,
        batches: &[RecordBatch],
        key: &str,
        removed: &[i64],
    ) -> Result<(Vec<RecordBatch>, std::collections::HashSet<i64>)> {
        use arrow::array::Array;
        self.check_batches(batches)?;
        if !self.partition_columns()?.is_empty() {
            return Err(Error::InvalidData {
                table: self.name.clone(),
                reason: "rows are replaced by key only in unpartitioned tables".into(),
            });
        }
        let schema = self.schema()?;
        let mut given = Vec::with_capacity(batches.len());
        let removed: std::collections::HashSet<i64> = removed.iter().copied().collect();
        let mut replaced = removed.clone();
        let mut duplicates = 0usize;
        for batch in batches {
            let batch = conform(batch, &schema)?;
            let keys = int_column(&self.name, &batch, key)?;
            if keys.null_count() > 0 {
                return Err(Error::InvalidData {
                    table: self.name.clone(),
                    reason: format!("a row of the write has no '{key}'"),
                });
            }
            for k in keys.values() {
                if !replaced.insert(*k) && !removed.contains(k) {
                    duplicates += 1;
                }
            }
            given.push(batch);
        }
        self.refuse_shared_keys(duplicates, &[key])?;
        Ok((given, replaced))
    }

    /// [`Table::replace_keys`], marking the replaced rows deleted (Delta deletion vectors)
    /// rather than rewriting the files that hold them: a change to a few rows spread over
    /// every file then writes only those rows. The new rows, sorted by `key`, become a new
    /// file; each file holding a replaced key gains a deletion vector. A file that would be
    /// mostly deleted (more than a quarter of its rows) or is small (under FILE_ROWS / 8
    /// rows) is rewritten instead, its live rows joining the new file, and so are all small
    /// files once there are eight of them: marks and small files stay bounded. The table
    /// takes on the deletion-vector feature at its first such write.
    pub async fn replace_keys_marking(
        &mut self,
        batches: Vec<RecordBatch>,
        key: &str,
        removed: &[i64],
        note: CommitNote,
    ) -> Result<u64> {
        let (given, replaced) = self.keyed_write(&batches, key, removed)?;
        let any = !replaced.is_empty();
        let name = self.name.clone();
        let column = key.to_string();
        let matches: Matches = Arc::new(move |batch: &RecordBatch| -> Result<Vec<bool>> {
            Ok(int_column(&name, batch, &column)?
                .iter()
                .map(|k| k.is_some_and(|k| replaced.contains(&k)))
                .collect())
        });
        let name = self.name.clone();
        let order = |batch: &RecordBatch| -> Result<arrow::array::UInt32Array> {
            Ok(arrow::compute::sort_to_indices(
                &int_column(&name, batch, key)?,
                None,
                None,
            )?)
        };
        self.mark_replaced(given, &[key], any, matches, &order, note)
            .await
    }

    /// [`Table::merge`] by `keys` that marks the replaced rows deleted where they are (see
    /// [`Table::replace_keys_marking`]): the rows of `batches` replace the stored rows with
    /// the same keys (a row with a null key part replaces none) and are written, sorted by
    /// `keys`, as one new file. For unpartitioned tables; two rows of the write with one key
    /// are an error.
    pub async fn merge_marking(
        &mut self,
        batches: Vec<RecordBatch>,
        keys: &[&str],
        note: CommitNote,
    ) -> Result<u64> {
        self.check_batches(&batches)?;
        if !self.partition_columns()?.is_empty() || keys.is_empty() {
            return Err(Error::InvalidData {
                table: self.name.clone(),
                reason: "rows are replaced by key only in unpartitioned tables, by some key".into(),
            });
        }
        let schema = self.schema()?;
        self.known_fields(&schema, keys.iter())?;
        let given = batches
            .iter()
            .map(|b| conform(b, &schema))
            .collect::<Result<Vec<_>>>()?;
        let mut replaced = WrittenKeys::new(KeyEncoder::new(&schema, keys)?);
        for batch in &given {
            replaced.add(batch)?;
        }
        self.refuse_shared_keys(replaced.duplicates, keys)?;
        let any = !replaced.is_empty();
        let matches: Matches = Arc::new(move |batch: &RecordBatch| -> Result<Vec<bool>> {
            Ok(replaced
                .find(batch)?
                .into_iter()
                .map(|at| at.is_some())
                .collect())
        });
        let order = |batch: &RecordBatch| -> Result<arrow::array::UInt32Array> {
            let columns = keys
                .iter()
                .map(|k| {
                    batch.column_by_name(k).map(|c| arrow::compute::SortColumn {
                        values: c.clone(),
                        options: None,
                    })
                })
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| Error::Internal("a key column is not in the batch".into()))?;
            Ok(arrow::compute::lexsort_to_indices(&columns, None)?)
        };
        self.mark_replaced(given, keys, any, matches, &order, note)
            .await
    }

    /// The work of the marking writes: the stored rows for which `matches` (given batches of
    /// the `keys` columns, or of all columns) is true are marked deleted, or dropped from the
    /// files rewritten, and `given` with the rewritten files' live rows, put in `order`, is
    /// written as one new file, in one commit.
    async fn mark_replaced(
        &mut self,
        given: Vec<RecordBatch>,
        keys: &[&str],
        any: bool,
        matches: Matches,
        order: &(dyn Fn(&RecordBatch) -> Result<arrow::array::UInt32Array> + Sync),
        note: CommitNote,
    ) -> Result<u64> {
        use arrow::array::BooleanArray;
        use roaring::RoaringTreemap;
        let key = keys.join(", ");
        let files = self.data_files()?;
        let name = self.name.clone();
        // Where the replaced keys are: their positions among each file's stored rows.
        let mut hits = vec![RoaringTreemap::new(); files.len()];
        let mut stored = vec![0u64; files.len()];
        if any {
            // Each batch is searched on the thread that decoded it: its rows, and the
            // positions among them of the replaced keys.
            let search = matches.clone();
            let find = Arc::new(move |batch: RecordBatch| -> Result<(u64, Vec<u32>)> {
                let hits = search(&batch)?
                    .into_iter()
                    .enumerate()
                    .filter_map(|(j, hit)| hit.then_some(j as u32))
                    .collect();
                Ok((batch.num_rows() as u64, hits))
            });
            self.read_stored_mapped(&files, Some(keys), false, None, find, |i, found| {
                for (rows, at) in found {
                    hits[i].extend(at.into_iter().map(|j| stored[i] + u64::from(j)));
                    stored[i] += rows;
                }
                Ok(())
            })
            .await?;
        }
        let small = |i: usize| stored[i].max(files[i].rows.unwrap_or(0)) < (FILE_ROWS / 8) as u64;
        let small_files = (0..files.len()).filter(|i| small(*i)).count();
        let store = self.delta.object_store();
        let mut rewritten = Vec::new();
        let mut marked: Vec<(usize, RoaringTreemap)> = Vec::new();
        for (i, file) in files.iter().enumerate() {
            let fold_small = small(i) && small_files >= 8;
            if hits[i].is_empty() && !fold_small {
                continue;
            }
            let mut deleted = match &file.deleted {
                Some(dv) => crate::deletion_vectors::load(&name, store.as_ref(), dv).await?,
                None => RoaringTreemap::new(),
            };
            let before = deleted.len();
            deleted |= &hits[i];
            if deleted.len() == before && !fold_small {
                continue;
            }
            if fold_small || small(i) || deleted.len() * 4 > stored[i] {
                rewritten.push(file.clone());
            } else {
                marked.push((i, deleted));
            }
        }
        let mut rows = given;
        let schema = self.schema()?;
        self.read_files(&rewritten, None, |_, batch| {
            let keep: BooleanArray = matches(&batch)?.into_iter().map(|m| Some(!m)).collect();
            rows.push(conform(
                &arrow::compute::filter_record_batch(&batch, &keep)?,
                &schema,
            )?);
            Ok(())
        })
        .await?;
        rows.retain(|b| b.num_rows() > 0);
        if rewritten.is_empty() && marked.is_empty() && rows.is_empty() {
            return Ok(self.version());
        }
        let out = if rows.is_empty() {
            Vec::new()
        } else {
            let all = arrow::compute::concat_batches(&schema, &rows)?;
            drop(rows);
            vec![arrow::compute::take_record_batch(&all, &order(&all)?)?]
        };
        let marked: Vec<(&DataFile, RoaringTreemap)> =
            marked.into_iter().map(|(i, d)| (&files[i], d)).collect();
        let actions = self.marking_actions(&rewritten, marked, &note).await?;
        let operation = deltalake::protocol::DeltaOperation::Merge {
            predicate: None,
            merge_predicate: Some(format!("{key} matches")),
            matched_predicates: vec![deltalake::protocol::MergePredicate {
                action_type: "update".into(),
                predicate: None,
            }],
            not_matched_predicates: vec![deltalake::protocol::MergePredicate {
                action_type: "insert".into(),
                predicate: None,
            }],
            not_matched_by_source_predicates: Vec::new(),
        };
        self.commit_with_files(actions, out, note, operation).await
    }

    /// The log actions that remove the files `rewritten` and give the files of `marked` their
    /// new deletion vectors (every row each marks, those marked before included). The vectors
    /// go to one new file, written before the commit that refers to them: an unreferenced
    /// file, should the commit fail, changes nothing. Gives the table deletion vectors first
    /// when there are marks.
    async fn marking_actions(
        &mut self,
        rewritten: &[DataFile],
        marked: Vec<(&DataFile, roaring::RoaringTreemap)>,
        note: &CommitNote,
    ) -> Result<Vec<deltalake::kernel::Action>> {
        use deltalake::kernel::Action;
        let name = self.name.clone();
        if !marked.is_empty() {
            self.enable_deletion_vectors(note).await?;
        }
        let id = uuid::Uuid::new_v4();
        let vectors: Vec<roaring::RoaringTreemap> = marked.iter().map(|(_, d)| d.clone()).collect();
        let (bytes, refs) = crate::deletion_vectors::encode(&name, id, &vectors)?;
        if !marked.is_empty() {
            object_store::ObjectStoreExt::put(
                &self.delta.object_store(),
                &object_store::path::Path::from(crate::deletion_vectors::file_name(id)),
                bytes.into(),
            )
            .await
            .map_err(|e| Error::Internal(format!("{name}: writing deletion vectors: {e}")))?;
        }
        let snapshot = self
            .delta
            .snapshot()
            .map_err(|e| Error::delta(&self.name, e))?;
        let gone: std::collections::HashSet<&str> =
            rewritten.iter().map(|f| f.path.as_str()).collect();
        let marks: HashMap<&str, &crate::DeletionRef> = marked
            .iter()
            .zip(&refs)
            .map(|((file, _), r)| (file.path.as_str(), r))
            .collect();
        let mut actions = Vec::new();
        for file in snapshot.log_data() {
            let path = file.object_store_path();
            if gone.contains(path.as_ref()) {
                actions.push(Action::Remove(file.remove_action(true)));
            } else if let Some(mark) = marks.get(path.as_ref()) {
                actions.push(Action::Remove(file.remove_action(true)));
                #[allow(deprecated)]
                let mut add = file.add_action();
                add.deletion_vector = Some(mark.descriptor());
                add.data_change = true;
                actions.push(Action::Add(add));
            }
        }
        if actions.len() != gone.len() + 2 * marks.len() {
            return Err(Error::InvalidData {
                table: self.name.clone(),
                reason: format!(
                    "files changed while rows were replaced in version {}",
                    self.version()
                ),
            });
        }
        Ok(actions)
    }

    /// [`Table::replace_files`] that also marks rows of other files deleted: `marks` gives
    /// files and positions among their stored rows (added to the rows they already mark).
    /// The removed files, the marks and the new files are one commit.
    pub async fn replace_files_marking(
        &mut self,
        remove: &[DataFile],
        marks: Vec<(DataFile, roaring::RoaringTreemap)>,
        batches: Vec<RecordBatch>,
        note: CommitNote,
    ) -> Result<u64> {
        self.check_batches(&batches)?;
        let actions = self.marked_actions(remove, marks, &note).await?;
        let operation = deltalake::protocol::DeltaOperation::Update { predicate: None };
        self.commit_with_files(actions, batches, note, operation)
            .await
    }

    /// [`Table::replace_files_marking`] where each new file's rows are made by a function
    /// called when a writer is ready for them, as [`Table::replace_files_made`] makes them.
    /// The table must be partitioned, and each file's rows must share their partition values.
    pub async fn replace_files_marking_made(
        &mut self,
        remove: &[DataFile],
        marks: Vec<(DataFile, roaring::RoaringTreemap)>,
        files: Vec<FileRows>,
        note: CommitNote,
    ) -> Result<u64> {
        let mut actions = self.marked_actions(remove, marks, &note).await?;
        let files = files.into_iter().map(one_batch).collect();
        actions.extend(self.write_partition_files(files).await?);
        let operation = deltalake::protocol::DeltaOperation::Update { predicate: None };
        self.commit_actions(actions, note, operation).await
    }

    /// The actions that remove `remove` and add `marks`' positions to the rows their files
    /// already mark deleted.
    async fn marked_actions(
        &mut self,
        remove: &[DataFile],
        marks: Vec<(DataFile, roaring::RoaringTreemap)>,
        note: &CommitNote,
    ) -> Result<Vec<deltalake::kernel::Action>> {
        let store = self.delta.object_store();
        let mut marked = Vec::with_capacity(marks.len());
        for (file, positions) in &marks {
            let mut deleted = match &file.deleted {
                Some(dv) => crate::deletion_vectors::load(&self.name, store.as_ref(), dv).await?,
                None => roaring::RoaringTreemap::new(),
            };
            deleted |= positions;
            marked.push((file, deleted));
        }
        self.marking_actions(remove, marked, note).await
    }

    /// `name`, a file derived from this table and kept in the table's folder under `_shoal/`
    /// (a folder Delta readers and cleanup leave alone), opened to be read in parts, or None
    /// when there is none. What such a file says about the table is for its reader to check.
    pub async fn open_derived(&self, name: &str) -> Result<Option<DerivedFile>> {
        let path = derived_path(name);
        let failed = |e: &dyn std::fmt::Display| {
            Error::Internal(format!("{}: opening {path}: {e}", self.name))
        };
        let url = self.delta.table_url();
        if url.scheme() == "file" {
            // Read in place, into the reader's own buffers.
            let Ok(dir) = url.to_file_path() else {
                return Err(failed(&"not a local path"));
            };
            let file = match std::fs::File::open(dir.join("_shoal").join(name)) {
                Ok(file) => file,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(failed(&e)),
            };
            let size = file.metadata().map_err(|e| failed(&e))?.len();
            return Ok(Some(DerivedFile {
                size,
                source: DerivedSource::Local(file),
            }));
        }
        let store = self.delta.object_store();
        match object_store::ObjectStoreExt::head(&store, &path).await {
            Ok(meta) => Ok(Some(DerivedFile {
                size: meta.size,
                source: DerivedSource::Store(store, path),
            })),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(failed(&e)),
        }
    }

    /// Writes derived file `name` (see [`Table::open_derived`]) whole, replacing any before.
    pub async fn write_derived(&self, name: &str, bytes: Vec<u8>) -> Result<()> {
        let path = derived_path(name);
        object_store::ObjectStoreExt::put(&self.delta.object_store(), &path, bytes.into())
            .await
            .map_err(|e| Error::Internal(format!("{}: writing {path}: {e}", self.name)))?;
        Ok(())
    }

    /// The rows `file` (of this table) marks deleted.
    pub async fn deleted_rows(&self, file: &DataFile) -> Result<roaring::RoaringTreemap> {
        match &file.deleted {
            Some(dv) => {
                crate::deletion_vectors::load(&self.name, self.delta.object_store().as_ref(), dv)
                    .await
            }
            None => Ok(roaring::RoaringTreemap::new()),
        }
    }

    /// Every stored row of `files` (rows marked deleted too), in the order each file stores
    /// them, for finding rows by position; see [`Table::read_files`].
    pub async fn read_stored_rows(
        &self,
        files: &[DataFile],
        columns: Option<&[&str]>,
        each: impl FnMut(usize, RecordBatch) -> Result<()>,
    ) -> Result<()> {
        self.read_stored(files, columns, false, None, each).await
    }

    /// Gives the table the deletion-vector feature (`delta.enableDeletionVectors`), when it
    /// lacks it, in a commit of its own.
    async fn enable_deletion_vectors(&mut self, note: &CommitNote) -> Result<()> {
        let snapshot = self
            .delta
            .snapshot()
            .map_err(|e| Error::delta(&self.name, e))?;
        if snapshot
            .snapshot()
            .table_properties()
            .enable_deletion_vectors
            == Some(true)
        {
            return Ok(());
        }
        let upgraded = self
            .delta
            .clone()
            .set_tbl_properties()
            .with_properties(HashMap::from([(
                "delta.enableDeletionVectors".to_string(),
                "true".to_string(),
            )]))
            .with_commit_properties(note.properties())
            .await
            .map_err(|e| self.write_error(e))?;
        self.committed(upgraded).await;
        Ok(())
    }

    /// Rewrites the files holding a row whose integer `column` is in `values`: each of their
    /// batches (in the table's column types) goes through `change`, then those rows and the
    /// rows of `added`, sorted by `column`, replace the files, in one commit. With no such
    /// file, `added` is appended. For unpartitioned tables.
    pub async fn rewrite_rows(
        &mut self,
        column: &str,
        values: &std::collections::HashSet<i64>,
        mut change: impl FnMut(RecordBatch) -> Result<RecordBatch>,
        added: Vec<RecordBatch>,
        note: CommitNote,
    ) -> Result<u64> {
        self.check_batches(&added)?;
        if !self.partition_columns()?.is_empty() {
            return Err(Error::InvalidData {
                table: self.name.clone(),
                reason: "rows are rewritten by value only in unpartitioned tables".into(),
            });
        }
        let schema = self.schema()?;
        if schema.field_with_name(column).is_err() {
            return Err(Error::UnknownField {
                table: self.name.clone(),
                field: column.to_string(),
            });
        }
        let name = self.name.clone();
        let ints = |batch: &RecordBatch| int_column(&name, batch, column);
        let files = if values.is_empty() {
            Vec::new()
        } else {
            self.data_files_bounding(column, values)?
        };
        let mut hit = vec![false; files.len()];
        self.read_files(&files, Some(&[column]), |i, batch| {
            hit[i] |= ints(&batch)?
                .iter()
                .any(|v| v.is_some_and(|v| values.contains(&v)));
            Ok(())
        })
        .await?;
        let rewritten: Vec<DataFile> = files
            .into_iter()
            .zip(hit)
            .filter_map(|(f, h)| h.then_some(f))
            .collect();
        let mut rows = Vec::new();
        self.read_files(&rewritten, None, |_, batch| {
            let changed = change(conform(&batch, &schema)?)?;
            rows.push(conform(&changed, &schema)?);
            Ok(())
        })
        .await?;
        for batch in &added {
            rows.push(conform(batch, &schema)?);
        }
        if rewritten.is_empty() && rows.iter().all(|b| b.num_rows() == 0) {
            return Ok(self.version());
        }
        let all = arrow::compute::concat_batches(&schema, &rows)?;
        drop(rows);
        let order = arrow::compute::sort_to_indices(&ints(&all)?, None, None)?;
        let sorted = arrow::compute::take_record_batch(&all, &order)?;
        drop(all);
        let out = if sorted.num_rows() == 0 {
            Vec::new()
        } else {
            vec![sorted]
        };
        self.replace_files(&rewritten, out, note).await
    }

    /// Replaces the whole content with the rows of `frame`, streamed from its plan (never
    /// held in memory whole), in one commit. `frame`'s columns must match the table's.
    pub async fn overwrite_frame(&mut self, frame: DataFrame, note: CommitNote) -> Result<u64> {
        let schema = self.schema()?;
        let given = frame.schema().as_arrow();
        for field in schema.fields() {
            match given.field_with_name(field.name()) {
                Ok(g) if types_compatible(g.data_type(), field.data_type()) => {}
                Ok(g) => {
                    return Err(Error::InvalidData {
                        table: self.name.clone(),
                        reason: format!(
                            "column '{}' is {}, table has {}",
                            field.name(),
                            g.data_type(),
                            field.data_type()
                        ),
                    });
                }
                Err(_) if field.is_nullable() => {}
                Err(_) => {
                    return Err(Error::InvalidData {
                        table: self.name.clone(),
                        reason: format!("lacks required column '{}'", field.name()),
                    });
                }
            }
        }
        let partitions = self.partition_columns()?;
        let (state, plan) = frame.into_parts();
        let written = self
            .delta
            .clone()
            .write(Vec::new())
            .with_input_plan(plan)
            .with_session_state(Arc::new(state))
            .with_save_mode(SaveMode::Overwrite)
            .with_writer_properties(writer_properties(&self.layout))
            .with_partition_columns(partitions)
            .with_commit_properties(note.properties())
            .await
            .map_err(|e| self.write_error(e))?;
        self.committed(written).await;
        Ok(self.version())
    }

    /// Deletes the rows matching `predicate` in one commit; returns how many went.
    pub async fn delete_where(&mut self, predicate: Expr, note: CommitNote) -> Result<u64> {
        let (delta, metrics) = self
            .delta
            .clone()
            .delete()
            .with_predicate(predicate)
            .with_writer_properties(writer_properties(&self.layout))
            .with_commit_properties(note.properties())
            .await
            .map_err(|e| self.write_error(e))?;
        self.committed(delta).await;
        Ok(metrics.num_deleted_rows.unwrap_or(0) as u64)
    }

    /// [`Table::merge`], leaving alone the rows equal to those they would replace: a file is
    /// rewritten only when a row of it changes, `updated` counts the rows that changed, and
    /// nothing is committed when no row changes or is new. For tables whose writers often
    /// give rows back unchanged (a wide table recomputed for some people).
    pub async fn merge_changes(
        &mut self,
        batches: Vec<RecordBatch>,
        keys: &[&str],
        note: CommitNote,
    ) -> Result<MergeOutcome> {
        if !self.partition_columns()?.is_empty() || keys.is_empty() {
            return self.merge(batches, keys, note).await;
        }
        self.check_batches(&batches)?;
        self.upsert(batches, keys, None, true, note).await
    }

    /// Sets `columns` of the rows whose `keys` match a row of `batches` (which hold the keys
    /// and those columns); rows without a match are left alone. One commit; in an
    /// unpartitioned table only the files holding a matched row are rewritten.
    pub async fn update_by_key(
        &mut self,
        batches: Vec<RecordBatch>,
        keys: &[&str],
        columns: &[&str],
        note: CommitNote,
    ) -> Result<MergeOutcome> {
        if batches.iter().all(|b| b.num_rows() == 0) {
            return Ok(MergeOutcome {
                version: self.version(),
                inserted: 0,
                updated: 0,
            });
        }
        self.check_columns(&batches, true)?;
        if self.partition_columns()?.is_empty() {
            return self.upsert(batches, keys, Some(columns), false, note).await;
        }
        let ctx = SessionContext::new();
        let source = ctx.read_batches(batches)?;
        let predicate = keys
            .iter()
            .map(|k| col(format!("target.{k}")).eq(col(format!("source.{k}"))))
            .reduce(|a, b| a.and(b))
            .ok_or_else(|| Error::Internal("no update keys".into()))?;
        let (delta, metrics) = self
            .delta
            .clone()
            .merge(source, predicate)
            .with_source_alias("source")
            .with_target_alias("target")
            .with_writer_properties(writer_properties(&self.layout))
            .with_commit_properties(note.properties())
            .when_matched_update(|update| {
                columns
                    .iter()
                    .fold(update, |u, c| u.update(*c, col(format!("source.{c}"))))
            })
            .map_err(|e| self.write_error(e))?
            .await
            .map_err(|e| self.write_error(e))?;
        self.committed(delta).await;
        Ok(MergeOutcome {
            version: self.version(),
            inserted: metrics.num_target_rows_inserted,
            updated: metrics.num_target_rows_updated,
        })
    }

    /// One commit of `batches`; `replace` limits an overwrite to the rows it matches.
    async fn write(
        &mut self,
        batches: Vec<RecordBatch>,
        mode: SaveMode,
        replace: Option<Expr>,
        note: CommitNote,
    ) -> Result<u64> {
        self.check_batches(&batches)?;
        let partitions = self.partition_columns()?;
        let mut builder = self
            .delta
            .clone()
            .write(batches)
            .with_save_mode(mode)
            .with_writer_properties(writer_properties(&self.layout));
        if let Some(predicate) = replace {
            builder = builder.with_replace_where(predicate);
        }
        let written = builder
            .with_partition_columns(partitions)
            .with_commit_properties(note.properties())
            .await
            .map_err(|e| self.write_error(e))?;
        self.committed(written).await;
        Ok(self.version())
    }

    /// Rewrites the table's small data files into few large ones (per partition), in one
    /// commit that changes no row; returns the new version, or `None` when there was nothing
    /// to merge. Readers of earlier versions keep reading the files they had.
    pub async fn compact(&mut self, note: CommitNote) -> Result<Option<u64>> {
        let (compacted, metrics) = self
            .delta
            .clone()
            .optimize()
            .with_writer_properties(writer_properties(&self.layout))
            .with_commit_properties(note.properties())
            .await
            .map_err(|e| self.write_error(e))?;
        if metrics.num_files_removed == 0 {
            return Ok(None);
        }
        self.committed(compacted).await;
        Ok(Some(self.version()))
    }

    /// Upserts `batches` by `keys`: rows whose key exists are replaced, others inserted, in
    /// one commit. Duplicate keys inside `batches` are an error (the upsert would be
    /// ambiguous); a row with a null key matches nothing. In an unpartitioned table only the
    /// files holding one of the keys are rewritten (when none does, the rows are appended).
    pub async fn merge(
        &mut self,
        batches: Vec<RecordBatch>,
        keys: &[&str],
        note: CommitNote,
    ) -> Result<MergeOutcome> {
        self.check_batches(&batches)?;
        if keys.is_empty() {
            return Err(Error::InvalidData {
                table: self.name.clone(),
                reason: "merge needs at least one key column".into(),
            });
        }
        let schema = self.schema()?;
        self.known_fields(&schema, keys.iter())?;
        if self.partition_columns()?.is_empty() {
            return self.upsert(batches, keys, None, false, note).await;
        }
        let ctx = SessionContext::new();
        let source = ctx.read_batches(batches)?;
        let distinct_keys = source
            .clone()
            .select_columns(keys)?
            .distinct()?
            .count()
            .await?;
        let total = source.clone().count().await?;
        self.refuse_shared_keys(total - distinct_keys, keys)?;
        let predicate = keys
            .iter()
            .map(|k| col(format!("target.{k}")).eq(col(format!("source.{k}"))))
            .reduce(|a, b| a.and(b))
            .ok_or_else(|| Error::Internal("no merge keys".into()))?;
        let columns: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
        let (delta, metrics) = self
            .delta
            .clone()
            .merge(source, predicate)
            .with_source_alias("source")
            .with_target_alias("target")
            .with_writer_properties(writer_properties(&self.layout))
            .with_commit_properties(note.properties())
            .when_matched_update(|update| {
                columns.iter().fold(update, |u, c| {
                    u.update(c.as_str(), col(format!("source.{c}")))
                })
            })
            .and_then(|m| {
                m.when_not_matched_insert(|insert| {
                    columns
                        .iter()
                        .fold(insert, |i, c| i.set(c.as_str(), col(format!("source.{c}"))))
                })
            })
            .map_err(|e| self.write_error(e))?
            .await
            .map_err(|e| self.write_error(e))?;
        self.committed(delta).await;
        Ok(MergeOutcome {
            version: self.version(),
            inserted: metrics.num_target_rows_inserted,
            updated: metrics.num_target_rows_updated,
        })
    }

    /// [`Table::merge`] (`columns` `None`) or [`Table::update_by_key`] (`Some`) of an
    /// unpartitioned table, file by file: the key columns of every file are read to find the
    /// files holding a key of `batches`; only those are read whole and rewritten, with their
    /// matched rows dropped (merge: the new rows are added after them) or given the new
    /// values of `columns` (update), in one commit.
    async fn upsert(
        &mut self,
        batches: Vec<RecordBatch>,
        keys: &[&str],
        columns: Option<&[&str]>,
        skip_unchanged: bool,
        note: CommitNote,
    ) -> Result<MergeOutcome> {
        use arrow::array::BooleanArray;
        let schema = self.schema()?;
        self.known_fields(&schema, keys.iter().chain(columns.unwrap_or_default()))?;
        let unchanged = MergeOutcome {
            version: self.version(),
            inserted: 0,
            updated: 0,
        };
        // The rows of the write in the table's types (an update: keys and its columns).
        let given_schema: SchemaRef = match columns {
            None => schema.clone(),
            Some(columns) => Arc::new(arrow::datatypes::Schema::new(
                keys.iter()
                    .chain(columns)
                    .map(|c| schema.field_with_name(c).cloned())
                    .collect::<std::result::Result<Vec<_>, _>>()?,
            )),
        };
        let given = batches
            .iter()
            .map(|b| conform(b, &given_schema))
            .collect::<Result<Vec<_>>>()?;
        let given = arrow::compute::concat_batches(&given_schema, &given)?;
        if given.num_rows() == 0 {
            return Ok(unchanged);
        }
        let mut index = WrittenKeys::new(KeyEncoder::new(&schema, keys)?);
        index.add(&given)?;
        self.refuse_shared_keys(index.duplicates, keys)?;
        let index = Arc::new(index);
        // The files holding a key of the write, each batch searched on the thread that
        // decoded it.
        let files = self.data_files()?;
        let mut hit = vec![false; files.len()];
        if !index.is_empty() {
            let search = index.clone();
            let find = Arc::new(move |batch: RecordBatch| -> Result<bool> {
                Ok(search.find(&batch)?.iter().any(Option::is_some))
            });
            self.read_stored_mapped(&files, Some(keys), true, None, find, |i, found| {
                hit[i] = found.contains(&true);
                Ok(())
            })
            .await?;
        }
        let rewritten: Vec<DataFile> = files
            .into_iter()
            .zip(hit)
            .filter_map(|(f, h)| h.then_some(f))
            .collect();
        if rewritten.is_empty() && columns.is_some() {
            return Ok(unchanged);
        }
        // Their rows: a matched one is dropped (merge) or takes the write's values (update).
        // When unchanged rows are skipped, a row equal to the one it replaces is no change,
        // and a file whose matched rows are all equal stays as it is.
        let whole = match skip_unchanged && columns.is_none() {
            true => Some(KeyEncoder::new(
                &schema,
                &schema
                    .fields()
                    .iter()
                    .map(|f| f.name().as_str())
                    .collect::<Vec<_>>(),
            )?),
            false => None,
        };
        let given_whole = match &whole {
            Some(whole) => Some(whole.encode(&given)?.0),
            None => None,
        };
        let mut matched_in: Vec<Option<usize>> = vec![None; given.num_rows()];
        let mut changed = vec![whole.is_none(); rewritten.len()];
        let mut kept: Vec<Vec<RecordBatch>> = vec![Vec::new(); rewritten.len()];
        let mut matched_rows = vec![0usize; rewritten.len()];
        self.read_files(&rewritten, None, |file, batch| {
            let batch = conform(&batch, &schema)?;
            let at: Vec<Option<usize>> = index
                .find(&batch)?
                .into_iter()
                .map(|g| g.map(|g| g as usize))
                .collect();
            for g in at.iter().flatten() {
                matched_in[*g] = Some(file);
                matched_rows[file] += 1;
            }
            if let (Some(whole), Some(given_whole)) = (&whole, &given_whole)
                && !changed[file]
            {
                let (rows, _) = whole.encode(&batch)?;
                changed[file] = at
                    .iter()
                    .enumerate()
                    .any(|(r, g)| g.is_some_and(|g| rows.row(r) != given_whole.row(g)));
            }
            match columns {
                None => {
                    let keep: BooleanArray = at.iter().map(|g| Some(g.is_none())).collect();
                    kept[file].push(arrow::compute::filter_record_batch(&batch, &keep)?);
                }
                Some(columns) => {
                    let picks: Vec<(usize, usize)> = at
                        .iter()
                        .enumerate()
                        .map(|(r, g)| g.map_or((0, r), |g| (1, g)))
                        .collect();
                    let mut values = batch.columns().to_vec();
                    for c in columns {
                        let i = schema.index_of(c)?;
                        let new = given.column(given_schema.index_of(c)?);
                        values[i] = arrow::compute::interleave(
                            &[batch.column(i).as_ref(), new.as_ref()],
                            &picks,
                        )?;
                    }
                    kept[file].push(RecordBatch::try_new(schema.clone(), values)?);
                }
            }
            Ok(())
        })
        .await?;
        let rewritten: Vec<DataFile> = rewritten
            .into_iter()
            .zip(&changed)
            .filter_map(|(f, c)| c.then_some(f))
            .collect();
        let mut out: Vec<RecordBatch> = kept
            .into_iter()
            .zip(&changed)
            .filter(|(_, c)| **c)
            .flat_map(|(batches, _)| batches)
            .collect();
        // Given rows matched in a file left as it is are equal to the rows they match.
        let written = |g: usize| matched_in[g].is_none_or(|f| changed[f]);
        let updated = matched_rows
            .iter()
            .zip(&changed)
            .filter_map(|(n, c)| c.then_some(*n))
            .sum();
        let inserted = match columns {
            None => {
                let inserted = matched_in.iter().filter(|m| m.is_none()).count();
                let take: BooleanArray = (0..given.num_rows()).map(|g| Some(written(g))).collect();
                out.push(arrow::compute::filter_record_batch(&given, &take)?);
                inserted
            }
            Some(_) => 0,
        };
        out.retain(|b| b.num_rows() > 0);
        if rewritten.is_empty() && out.is_empty() {
            return Ok(unchanged);
        }
        out.retain(|b| b.num_rows() > 0);
        // Recorded as the MERGE it is: with no predicate, a concurrent write to the table
        // is a conflict rather than a chance to duplicate a key.
        let condition = keys
            .iter()
            .map(|k| format!("target.{k} = source.{k}"))
            .collect::<Vec<_>>()
            .join(" AND ");
        let action = |kind: &str| deltalake::protocol::MergePredicate {
            action_type: kind.to_string(),
            predicate: None,
        };
        let operation = deltalake::protocol::DeltaOperation::Merge {
            predicate: None,
            merge_predicate: Some(condition),
            matched_predicates: vec![action("update")],
            not_matched_predicates: match columns {
                None => vec![action("insert")],
                Some(_) => Vec::new(),
            },
            not_matched_by_source_predicates: Vec::new(),
        };
        let version = self
            .replace_files_as(&rewritten, out, note, operation)
            .await?;
        Ok(MergeOutcome {
            version,
            inserted,
            updated,
        })
    }

    /// The table's commits, newest first (at most `limit`).
    pub async fn history(&self, limit: Option<usize>) -> Result<Vec<Commit>> {
        let infos: Vec<_> = self
            .delta
            .history(limit)
            .try_collect()
            .await
            .map_err(|e| Error::delta(&self.name, e))?;
        let newest = self.version();
        let mut commits = Vec::with_capacity(infos.len());
        for (i, info) in infos.into_iter().enumerate() {
            let version = info
                .read_version
                .map(|v| v + 1)
                .unwrap_or(newest.saturating_sub(i as u64));
            let timestamp = info
                .timestamp
                .and_then(|ms| Utc.timestamp_millis_opt(ms).single());
            let parameters = info
                .operation_parameters
                .unwrap_or_default()
                .into_iter()
                .collect();
            let metadata = info
                .info
                .into_iter()
                .filter(|(k, _)| k.starts_with("shoal."))
                .collect();
            commits.push(Commit {
                version,
                timestamp,
                operation: info.operation.unwrap_or_default(),
                parameters,
                metadata,
            });
        }
        Ok(commits)
    }

    /// Time of the newest commit of this snapshot.
    pub async fn last_commit_time(&self) -> Result<Option<DateTime<Utc>>> {
        Ok(self
            .history(Some(1))
            .await?
            .first()
            .and_then(|c| c.timestamp))
    }

    /// An error when `duplicates` rows of a write share their `keys` with another row of it.
    fn refuse_shared_keys(&self, duplicates: usize, keys: &[&str]) -> Result<()> {
        if duplicates == 0 {
            return Ok(());
        }
        Err(Error::InvalidData {
            table: self.name.clone(),
            reason: format!(
                "{duplicates} rows share a key ({}) with another row of the same write",
                keys.join(", ")
            ),
        })
    }

    /// An error naming the first of `names` that is not a column of `schema`.
    fn known_fields<'a>(
        &self,
        schema: &SchemaRef,
        mut names: impl Iterator<Item = &'a &'a str>,
    ) -> Result<()> {
        match names.find(|n| schema.field_with_name(n).is_err()) {
            Some(name) => Err(Error::UnknownField {
                table: self.name.clone(),
                field: (*name).to_string(),
            }),
            None => Ok(()),
        }
    }

    fn partition_columns(&self) -> Result<Vec<String>> {
        let snapshot = self
            .delta
            .snapshot()
            .map_err(|e| Error::delta(&self.name, e))?;
        Ok(snapshot.metadata().partition_columns().to_vec())
    }

    fn check_batches(&self, batches: &[RecordBatch]) -> Result<()> {
        self.check_columns(batches, false)
    }

    /// `partial`: the batches may hold only some columns (an update of those).
    fn check_columns(&self, batches: &[RecordBatch], partial: bool) -> Result<()> {
        check_columns(&self.name, &self.schema()?, batches, partial)
    }

    async fn add_missing_columns(self, wanted: &SchemaRef) -> Result<Table> {
        let current = self.schema()?;
        let missing: Vec<_> = wanted
            .fields()
            .iter()
            .filter(|f| current.field_with_name(f.name()).is_err())
            .cloned()
            .collect();
        if missing.is_empty() {
            return Ok(self);
        }
        let missing = arrow::datatypes::Schema::new(
            missing
                .iter()
                .map(|f| f.as_ref().clone().with_nullable(true))
                .collect::<Vec<_>>(),
        );
        let fields = StructType::try_from_arrow(&missing)?;
        let delta = self
            .delta
            .add_columns()
            .with_fields(fields.fields().cloned().collect::<Vec<_>>())
            .await
            .map_err(|e| Error::delta(&self.name, e))?;
        Ok(Table {
            name: self.name,
            delta,
            layout: self.layout,
        })
    }

    /// Takes the handle of a write's outcome, and a checkpoint when the new version closes an
    /// interval of [`CHECKPOINT_INTERVAL`] commits in a table that sets none (tables made
    /// before Shoal set it at creation; delta-rs alone would checkpoint them every 100). A
    /// failed checkpoint leaves the committed write as it is: the next one is tried later.
    async fn committed(&mut self, delta: DeltaTable) {
        let before = self.delta.version();
        self.delta = delta;
        let Some(version) = self.delta.version().filter(|v| Some(*v) != before) else {
            return;
        };
        let Ok(state) = self.delta.snapshot() else {
            return;
        };
        let closes = |interval: u64| (version + 1).is_multiple_of(interval);
        if state.table_config().checkpoint_interval.is_some()
            || !closes(CHECKPOINT_INTERVAL)
            || closes(DELTA_RS_INTERVAL)
        {
            return;
        }
        if let Err(e) = deltalake::checkpoints::create_checkpoint(&self.delta, None).await {
            tracing::warn!(table = %self.name, version, "checkpoint not written: {e}");
        }
    }

    fn write_error(&self, e: DeltaTableError) -> Error {
        match e {
            DeltaTableError::InvalidData { .. }
            | DeltaTableError::SchemaMismatch { .. }
            | DeltaTableError::Arrow { .. } => Error::InvalidData {
                table: self.name.clone(),
                reason: e.to_string(),
            },
            other => Error::delta(&self.name, other),
        }
    }
}

/// `batches` in `parts` runs of about as many rows each, in order.
/// Column `column` of `batch` (of table `table`) as 64-bit integers.
fn int_column(table: &str, batch: &RecordBatch, column: &str) -> Result<arrow::array::Int64Array> {
    use arrow::array::Int64Array;
    let values = batch
        .column_by_name(column)
        .ok_or_else(|| Error::UnknownField {
            table: table.to_string(),
            field: column.to_string(),
        })?;
    let cast = arrow::compute::cast(values, &arrow::datatypes::DataType::Int64)?;
    Ok(cast
        .as_any()
        .downcast_ref::<Int64Array>()
        .cloned()
        .unwrap_or_else(|| Int64Array::from(Vec::<i64>::new())))
}

/// Key columns of rows, encoded so that equal keys (compared in the table's types) have equal
/// bytes.
struct KeyEncoder {
    fields: Vec<arrow::datatypes::FieldRef>,
    converter: arrow::row::RowConverter,
}

impl KeyEncoder {
    fn new(schema: &SchemaRef, keys: &[&str]) -> Result<KeyEncoder> {
        let fields = keys
            .iter()
            .map(|k| schema.field_with_name(k).map(|f| Arc::new(f.clone())))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let converter = arrow::row::RowConverter::new(
            fields
                .iter()
                .map(|f| arrow::row::SortField::new(f.data_type().clone()))
                .collect(),
        )?;
        Ok(KeyEncoder { fields, converter })
    }

    /// The key columns of `batch`, in the table's types.
    fn columns(&self, batch: &RecordBatch) -> Result<Vec<arrow::array::ArrayRef>> {
        self.fields
            .iter()
            .map(|f| {
                let column = batch.column_by_name(f.name()).ok_or_else(|| {
                    Error::Internal(format!("key column '{}' is not in the batch", f.name()))
                })?;
                Ok(match column.data_type() == f.data_type() {
                    true => column.clone(),
                    false => arrow::compute::cast(column, f.data_type())?,
                })
            })
            .collect()
    }

    /// The keys of `batch`'s rows, and whether each row has all of them (a null key part
    /// matches nothing).
    fn encode(&self, batch: &RecordBatch) -> Result<(arrow::row::Rows, Vec<bool>)> {
        let columns = self.columns(batch)?;
        let valid = whole_keys(&columns, batch.num_rows());
        Ok((self.converter.convert_columns(&columns)?, valid))
    }
}

/// Whether each of the `rows` rows has every part of its key (`columns`).
fn whole_keys(columns: &[arrow::array::ArrayRef], rows: usize) -> Vec<bool> {
    use arrow::array::Array;
    let nulls = columns.iter().fold(None, |nulls, column| {
        arrow::buffer::NullBuffer::union(nulls.as_ref(), column.nulls())
    });
    match nulls {
        None => vec![true; rows],
        Some(nulls) => nulls.iter().collect(),
    }
}

/// Hashes are their own hash in [`WrittenKeys`]' set of them.
#[derive(Default)]
struct HashIsKey(u64);

impl std::hash::Hasher for HashIsKey {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }

    fn write_u64(&mut self, value: u64) {
        self.0 = value;
    }
}

/// The keys of the rows a write brings, to be found among stored rows. A stored batch's key
/// columns are hashed whole, and only its rows whose hash is a written key's are encoded and
/// compared: a write of a few thousand rows into a table of millions otherwise encoded every
/// stored row's key and looked each one up.
struct WrittenKeys {
    encoder: KeyEncoder,
    /// Hash of each written key.
    hashes: std::collections::HashSet<u64, std::hash::BuildHasherDefault<HashIsKey>>,
    /// Each written key (encoded), with the index of the first row among those added that
    /// has it.
    keys: HashMap<Vec<u8>, u32>,
    /// Rows added so far.
    added: u32,
    /// Rows added whose key an earlier one had.
    duplicates: usize,
}

impl WrittenKeys {
    fn new(encoder: KeyEncoder) -> WrittenKeys {
        WrittenKeys {
            encoder,
            hashes: Default::default(),
            keys: HashMap::new(),
            added: 0,
            duplicates: 0,
        }
    }

    /// The hash of each row's key: equal keys hash equal.
    fn hashes(columns: &[arrow::array::ArrayRef], rows: usize) -> Result<Vec<u64>> {
        use datafusion::common::hash_utils::{RandomState, create_hashes};
        let mut hashes = vec![0u64; rows];
        create_hashes(columns, &RandomState::with_seed(0), &mut hashes)?;
        Ok(hashes)
    }

    /// Adds the keys of `batch`'s rows (a row without its whole key has none), numbering
    /// its rows on from those added before.
    fn add(&mut self, batch: &RecordBatch) -> Result<()> {
        let columns = self.encoder.columns(batch)?;
        let rows = batch.num_rows();
        let valid = whole_keys(&columns, rows);
        let hashes = Self::hashes(&columns, rows)?;
        let encoded = self.encoder.converter.convert_columns(&columns)?;
        for r in (0..rows).filter(|r| valid[*r]) {
            self.hashes.insert(hashes[r]);
            match self.keys.entry(encoded.row(r).data().to_vec()) {
                std::collections::hash_map::Entry::Occupied(_) => self.duplicates += 1,
                std::collections::hash_map::Entry::Vacant(place) => {
                    place.insert(self.added + r as u32);
                }
            }
        }
        self.added += u32::try_from(rows)
            .map_err(|_| Error::Internal(format!("{rows} rows in one write")))?;
        Ok(())
    }

    fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// For each row of `batch` (holding at least the key columns), the written row with its
    /// key, if any.
    fn find(&self, batch: &RecordBatch) -> Result<Vec<Option<u32>>> {
        let rows = batch.num_rows();
        let mut found = vec![None; rows];
        if self.keys.is_empty() {
            return Ok(found);
        }
        let columns = self.encoder.columns(batch)?;
        let valid = whole_keys(&columns, rows);
        let hashes = Self::hashes(&columns, rows)?;
        let candidates: Vec<u32> = (0..rows)
            .filter(|r| valid[*r] && self.hashes.contains(&hashes[*r]))
            .map(|r| r as u32)
            .collect();
        if candidates.is_empty() {
            return Ok(found);
        }
        let picked = arrow::array::UInt32Array::from(candidates);
        let columns = columns
            .iter()
            .map(|c| arrow::compute::take(c, &picked, None))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let encoded = self.encoder.converter.convert_columns(&columns)?;
        for (k, r) in picked.values().iter().enumerate() {
            found[*r as usize] = self.keys.get(encoded.row(k).data()).copied();
        }
        Ok(found)
    }
}

/// Whether `batches` fit the columns of `table` (of `schema`).
/// `partial`: the batches may hold only some columns (an update of those).
fn check_columns(
    table: &str,
    schema: &SchemaRef,
    batches: &[RecordBatch],
    partial: bool,
) -> Result<()> {
    if let Some(first) = batches.first()
        && let Some(i) = batches.iter().position(|b| b.schema() != first.schema())
    {
        // Delta's writer assumes one schema for the whole input.
        return Err(Error::InvalidData {
            table: table.to_string(),
            reason: format!("batch {i} has a different schema from batch 0"),
        });
    }
    for (i, batch) in batches.iter().enumerate() {
        for field in schema.fields() {
            let Ok(column) = batch.schema().index_of(field.name()) else {
                if field.is_nullable() || partial {
                    continue;
                }
                return Err(Error::InvalidData {
                    table: table.to_string(),
                    reason: format!("batch {i} lacks required column '{}'", field.name()),
                });
            };
            let data_type = batch.schema().field(column).data_type().clone();
            if !types_compatible(&data_type, field.data_type()) {
                return Err(Error::InvalidData {
                    table: table.to_string(),
                    reason: format!(
                        "batch {i} column '{}' is {data_type}, table has {}",
                        field.name(),
                        field.data_type()
                    ),
                });
            }
        }
        for field in batch.schema().fields() {
            if schema.field_with_name(field.name()).is_err() {
                return Err(Error::UnknownField {
                    table: table.to_string(),
                    field: field.name().clone(),
                });
            }
        }
    }
    Ok(())
}

/// Makes the rows `make` gives (those of one partition, with the columns of `table`) into
/// one data file with `writer`.
async fn write_file(
    mut writer: deltalake::datafile::writer::DeltaWriter,
    make: FileBatches,
    table: String,
    schema: SchemaRef,
    partitions: Vec<String>,
) -> Result<Vec<deltalake::kernel::Add>> {
    let batches = make()?;
    check_columns(&table, &schema, &batches, false)?;
    let spans = || Error::InvalidData {
        table: table.clone(),
        reason: "the rows of one file span several partitions".into(),
    };
    let mut values = None;
    for batch in &batches {
        let these = partition_of(batch, &partitions)?.ok_or_else(spans)?;
        if values.get_or_insert_with(|| these.clone()) != &these {
            return Err(spans());
        }
    }
    let values = values.ok_or_else(|| Error::InvalidData {
        table: table.clone(),
        reason: "a data file without rows".into(),
    })?;
    let write = async {
        for batch in batches {
            writer.write_partition(batch, &values).await?;
        }
        writer.close().await
    };
    write
        .await
        .map_err(|e| Error::Internal(format!("{table}: {e}")))
}

/// Makes the rows of one data file (see [`Table::replace_files_made`]).
pub type FileRows = Box<dyn FnOnce() -> Result<RecordBatch> + Send>;

/// Makes the rows of one data file, in one batch or several.
type FileBatches = Box<dyn FnOnce() -> Result<Vec<RecordBatch>> + Send>;

fn one_batch(make: FileRows) -> FileBatches {
    Box::new(move || make().map(|batch| vec![batch]))
}

/// Rows per run of one partition below which a batch is sorted by partition before it is
/// cut: input in no order would otherwise be cut into runs of a row or two.
const RUN_ROWS: usize = 64;

/// `batches` (non-empty, of one schema) cut into the files of a partitioned append: per
/// partition, in the order partitions first appear, its rows in input order, at most
/// [`FILE_ROWS`] per file. Runs of rows sharing a partition are slices of the input; a batch
/// whose runs are short is first sorted (stably) by partition.
fn partition_files(batches: Vec<RecordBatch>, columns: &[String]) -> Result<Vec<Vec<RecordBatch>>> {
    use arrow::array::ArrayRef;
    use arrow::row::{OwnedRow, RowConverter, SortField};
    let Some(first) = batches.first() else {
        return Ok(Vec::new());
    };
    let schema = first.schema();
    let indices = columns
        .iter()
        .map(|name| schema.index_of(name))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let converter = RowConverter::new(
        indices
            .iter()
            .map(|i| SortField::new(schema.field(*i).data_type().clone()))
            .collect(),
    )?;
    // The group of each partition, by its values.
    let mut group_of: HashMap<OwnedRow, usize> = HashMap::new();
    let mut groups: Vec<Vec<RecordBatch>> = Vec::new();
    for batch in batches {
        let keys = |batch: &RecordBatch| -> Vec<ArrayRef> {
            indices.iter().map(|i| batch.column(*i).clone()).collect()
        };
        let mut runs = arrow::compute::partition(&keys(&batch))?.ranges();
        let mut rows = converter.convert_columns(&keys(&batch))?;
        let batch = if runs.len() > 1 && runs.len() > batch.num_rows() / RUN_ROWS {
            let mut order: Vec<u32> =
                (0..u32::try_from(batch.num_rows()).unwrap_or(u32::MAX)).collect();
            order.sort_by(|a, b| rows.row(*a as usize).cmp(&rows.row(*b as usize)));
            let order = arrow::array::UInt32Array::from(order);
            let sorted = arrow::compute::take_record_batch(&batch, &order)?;
            runs = arrow::compute::partition(&keys(&sorted))?.ranges();
            rows = converter.convert_columns(&keys(&sorted))?;
            sorted
        } else {
            batch
        };
        for run in runs {
            let next = groups.len();
            let group = *group_of.entry(rows.row(run.start).owned()).or_insert(next);
            if group == next {
                groups.push(Vec::new());
            }
            groups[group].push(batch.slice(run.start, run.end - run.start));
        }
    }
    Ok(groups
        .into_iter()
        .flat_map(|runs| {
            let rows = runs.iter().map(RecordBatch::num_rows).sum::<usize>();
            split_rows(runs, rows.div_ceil(FILE_ROWS))
        })
        .collect())
}

/// A data file's partition values, as Delta's writer takes them.
type PartitionValues = indexmap::IndexMap<String, delta_kernel::expressions::Scalar>;

/// The partition values of `batch` when all of its rows share them (`None` otherwise, or
/// when it has no rows).
fn partition_of(batch: &RecordBatch, columns: &[String]) -> Result<Option<PartitionValues>> {
    use deltalake::kernel::scalars::ScalarExt;
    if batch.num_rows() == 0 {
        return Ok(None);
    }
    let mut values = PartitionValues::with_capacity(columns.len());
    for name in columns {
        let Some(column) = batch.column_by_name(name) else {
            return Ok(None);
        };
        let first = arrow::array::Scalar::new(column.slice(0, 1));
        let same = arrow::compute::kernels::cmp::not_distinct(column, &first)?;
        let Some(value) = delta_kernel::expressions::Scalar::from_array(column.as_ref(), 0) else {
            return Ok(None);
        };
        if same.true_count() != batch.num_rows() {
            return Ok(None);
        }
        values.insert(name.clone(), value);
    }
    Ok(Some(values))
}

fn split_rows(batches: Vec<RecordBatch>, parts: usize) -> Vec<Vec<RecordBatch>> {
    let total: usize = batches.iter().map(RecordBatch::num_rows).sum();
    let per = total.div_ceil(parts.max(1)).max(1);
    let mut out: Vec<Vec<RecordBatch>> = vec![Vec::new()];
    let mut held = 0;
    for batch in batches {
        let mut start = 0;
        while start < batch.num_rows() {
            if held == per {
                out.push(Vec::new());
                held = 0;
            }
            let n = (per - held).min(batch.num_rows() - start);
            if let Some(run) = out.last_mut() {
                run.push(batch.slice(start, n));
            }
            held += n;
            start += n;
        }
    }
    out
}

/// `batch` with the columns of `schema`, cast to its types (absent ones null): a scanned
/// batch in a table's own column types (scans may give string views).
pub fn conform(batch: &RecordBatch, schema: &SchemaRef) -> Result<RecordBatch> {
    let columns = schema
        .fields()
        .iter()
        .map(|f| match batch.column_by_name(f.name()) {
            Some(c) if c.data_type() == f.data_type() => Ok(c.clone()),
            Some(c) => Ok(arrow::compute::cast(c, f.data_type())?),
            None => Ok(arrow::array::new_null_array(
                f.data_type(),
                batch.num_rows(),
            )),
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(RecordBatch::try_new(schema.clone(), columns)?)
}

/// Delta stores some Arrow types under another physical type (views, dictionaries, timezones);
/// these pairs are written by casting.
fn types_compatible(
    given: &arrow::datatypes::DataType,
    table: &arrow::datatypes::DataType,
) -> bool {
    use arrow::datatypes::DataType as T;
    let given = match given {
        T::Utf8View | T::LargeUtf8 => &T::Utf8,
        T::BinaryView | T::LargeBinary => &T::Binary,
        other => other,
    };
    let table = match table {
        T::Utf8View | T::LargeUtf8 => &T::Utf8,
        T::BinaryView | T::LargeBinary => &T::Binary,
        other => other,
    };
    match (given, table) {
        (T::Timestamp(a, _), T::Timestamp(b, _)) => a == b,
        (T::Dictionary(_, v), t) => types_compatible(v, t),
        (a, b) => a == b,
    }
}

fn is_missing_version(e: &DeltaTableError) -> bool {
    let text = e.to_string().to_lowercase();
    text.contains("version") || text.contains("not found") || text.contains("no files")
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{ArrayRef, Int32Array, Int64Array, LargeStringArray, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("shop", DataType::Utf8, true),
            Field::new("id", DataType::Int64, true),
            Field::new("note", DataType::Utf8, true),
        ]))
    }

    fn batch(shops: Vec<Option<&str>>, ids: Vec<Option<i64>>) -> RecordBatch {
        let notes: ArrayRef = Arc::new(StringArray::from(vec!["x"; ids.len()]));
        RecordBatch::try_new(
            schema(),
            vec![
                Arc::new(StringArray::from(shops)),
                Arc::new(Int64Array::from(ids)),
                notes,
            ],
        )
        .expect("batch")
    }

    #[test]
    fn written_keys_are_found_whole_and_in_the_tables_types_and_nothing_else_is() {
        let mut written =
            WrittenKeys::new(KeyEncoder::new(&schema(), &["shop", "id"]).expect("keys"));
        written
            .add(&batch(
                vec![Some("tmall"), Some("youzan"), None],
                vec![Some(1), Some(1), Some(2)],
            ))
            .expect("add");
        // Rows of a second batch are numbered on; a key seen before is a duplicate.
        written
            .add(&batch(
                vec![Some("tmall"), Some("tmall")],
                vec![Some(2), Some(1)],
            ))
            .expect("add");
        assert_eq!(written.duplicates, 1);
        assert!(!written.is_empty());

        let found = written
            .find(&batch(
                vec![
                    Some("youzan"),
                    Some("tmall"),
                    Some("tmall"),
                    None,
                    Some("youzan"),
                    Some("tmall"),
                ],
                vec![Some(1), Some(2), Some(1), Some(2), Some(2), None],
            ))
            .expect("find");
        // tmall/1 was written first as row 0 (its repeat, row 4, is the duplicate); a key
        // with a null part matches nothing, even a written row with the same null.
        assert_eq!(found, [Some(1), Some(3), Some(0), None, None, None]);

        // Stored rows read back in other types (a large string, a narrower integer) are
        // cast to the table's before they are hashed, so they still match.
        let stored = RecordBatch::try_from_iter(vec![
            (
                "shop",
                Arc::new(LargeStringArray::from(vec!["tmall", "youzan", "youzan"])) as ArrayRef,
            ),
            ("id", Arc::new(Int32Array::from(vec![2, 1, 3])) as ArrayRef),
        ])
        .expect("stored");
        assert_eq!(
            written.find(&stored).expect("find"),
            [Some(3), Some(1), None]
        );

        let none = WrittenKeys::new(KeyEncoder::new(&schema(), &["id"]).expect("keys"));
        assert!(none.is_empty());
        assert_eq!(
            none.find(&batch(vec![Some("a")], vec![Some(1)]))
                .expect("find"),
            [None]
        );
    }
}
