//! The scan queries read a table through: DataFusion's own Parquet scan over the data files
//! of one Delta snapshot.
//!
//! Delta's provider passes every batch it reads through its own stream (splits it by file,
//! drops its file id column, applies the file's transform), which a query over millions of
//! rows pays for row by row. Shoal's tables carry no column mapping, so the files a snapshot
//! lists are read as they are:
//! - filters on partition columns alone are evaluated on each file's partition values, and
//!   pick the files exactly;
//! - other filters skip files by the snapshot's statistics, then row groups and pages by the
//!   files' own, and are tested on the rows above the scan;
//! - footers come from the session runtime's metadata cache, so a server reads each file's
//!   footer once;
//! - with a [`ColumnCache`], the columns a scan needs are decoded whole once per file and
//!   kept; later scans of the file read them from memory, their filters tested above the scan;
//! - a file's deletion vector (loaded once per snapshot) becomes a row selection of its
//!   Parquet scan, or a filter of its cached columns, so marked rows never leave the scan.
//!
//! A snapshot with column mapping, vectors stored at absolute paths, or a vector on a file
//! whose row count the log lacks is read through Delta's provider.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, RecordBatch};
use arrow::datatypes::{DataType, FieldRef, Schema, SchemaRef, TimeUnit};
use async_trait::async_trait;
use bytes::Bytes;
use chrono::{TimeZone, Utc};
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::pruning::PruningStatistics;
use datafusion::common::{Column, DFSchema, DataFusionError, Result, ScalarValue};
use datafusion::datasource::TableType;
use datafusion::datasource::file_format::FileFormat;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::datasource::physical_plan::parquet::{
    CachedParquetFileReaderFactory, ParquetFileReaderFactory, ParquetRowSelection,
};
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfigBuilder, ParquetSource};
use datafusion::datasource::source::DataSourceExec;
use datafusion::datasource::table_schema::TableSchema;
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::logical_expr::utils::conjunction;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_optimizer::pruning::PruningPredicateBuilder;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::empty::EmptyExec;
use datafusion::physical_plan::metrics::{ExecutionPlanMetricsSet, MetricBuilder};
use deltalake::DeltaTable;
use deltalake::table::state::DeltaTableState;
use futures::future::BoxFuture;
use futures::{StreamExt, TryStreamExt};
use object_store::{ObjectMeta, ObjectStore};
use parquet::arrow::arrow_reader::ArrowReaderOptions;
use parquet::arrow::async_reader::AsyncFileReader;
use parquet::file::metadata::{PageIndexPolicy, ParquetMetaData};
use roaring::RoaringTreemap;

use crate::column_cache::ColumnCache;
use crate::deletion_vectors::DeletionRef;
use crate::local_read::{LocalFiles, LocalReader};

/// The column mapping setting of a Delta table.
const COLUMN_MAPPING: &str = "delta.columnMapping.mode";

/// One snapshot's data files, scanned by DataFusion's Parquet reader.
#[derive(Debug)]
pub(crate) struct SnapshotScan {
    /// The table's columns in their logical order, strings as views.
    schema: SchemaRef,
    /// The columns stored in the files, in logical order.
    file_schema: SchemaRef,
    /// The partition columns, in the order the files' values list them.
    partition_fields: Vec<FieldRef>,
    /// For each logical column, its index among `file_schema` then `partition_fields`.
    scan_index: Vec<usize>,
    /// The data files, in the snapshot's order.
    files: Vec<PartitionedFile>,
    /// The snapshot, for its file statistics.
    state: DeltaTableState,
    /// The columns whose Delta statistics may skip files, with their types.
    prunable: HashMap<String, DataType>,
    store_url: ObjectStoreUrl,
    store: Arc<dyn ObjectStore>,
    /// Where the files are on disk, for a local warehouse.
    local: Option<Arc<LocalFiles>>,
    /// Rows of each data file, where the snapshot records them.
    rows: Vec<Option<usize>>,
    /// The table's location, naming its files in the column cache.
    location: String,
    /// Decoded columns kept between queries, when the engine keeps any.
    cache: Option<Arc<ColumnCache>>,
    /// The deletion vector of each data file that has one.
    deletions: Vec<Option<DeletionRef>>,
    /// The rows those vectors mark, loaded by the first scan.
    deleted: tokio::sync::OnceCell<Vec<Option<Arc<RoaringTreemap>>>>,
}

/// The rows of each file that a scan skips.
type Deleted = [Option<Arc<RoaringTreemap>>];

impl SnapshotScan {
    /// The scan of `table`'s loaded snapshot, or `None` when the snapshot needs Delta's own
    /// reader (column mapping, deletion vectors it cannot place).
    pub(crate) fn of(table: &DeltaTable) -> deltalake::DeltaResult<Option<SnapshotScan>> {
        let state = table.snapshot()?.clone();
        let metadata = state.snapshot().metadata();
        if metadata
            .configuration()
            .get(COLUMN_MAPPING)
            .is_some_and(|mode| mode != "none")
        {
            return Ok(None);
        }
        let partition_columns = metadata.partition_columns().to_vec();
        let logical = state.snapshot().arrow_schema();
        let schema = Arc::new(Schema::new_with_metadata(
            logical
                .fields()
                .iter()
                .map(|f| as_views(f.clone()))
                .collect::<Vec<_>>(),
            logical.metadata().clone(),
        ));
        let mut partition_fields = Vec::with_capacity(partition_columns.len());
        for name in partition_columns.iter() {
            partition_fields.push(Arc::new(schema.field_with_name(name)?.clone()));
        }
        let stored: Vec<FieldRef> = schema
            .fields()
            .iter()
            .filter(|f| !partition_columns.contains(f.name()))
            .cloned()
            .collect();
        let scan_index = schema
            .fields()
            .iter()
            .map(
                |f| match partition_columns.iter().position(|p| p == f.name()) {
                    Some(p) => stored.len() + p,
                    None => stored
                        .iter()
                        .position(|s| s.name() == f.name())
                        .unwrap_or_default(),
                },
            )
            .collect();
        let file_schema = Arc::new(Schema::new(stored));
        // Text statistics may be cut short: only partition values of text are exact.
        let prunable = logical
            .fields()
            .iter()
            .filter(|f| match f.data_type() {
                DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => {
                    partition_columns.contains(f.name())
                }
                DataType::Binary | DataType::LargeBinary | DataType::BinaryView => false,
                _ => true,
            })
            .map(|f| (f.name().clone(), f.data_type().clone()))
            .collect();
        let mut files = Vec::new();
        let mut rows = Vec::new();
        let mut deletions = Vec::new();
        for file in state.log_data().iter() {
            rows.push(file.num_records());
            let deletion = file
                .deletion_vector_descriptor()
                .map(|dv| DeletionRef::of(&dv));
            if let Some(dv) = &deletion
                && (dv.storage_type == 'p' || file.num_records().is_none())
            {
                return Ok(None);
            }
            deletions.push(deletion);
            let values = file.partition_values_map();
            let mut partition_values = Vec::with_capacity(partition_fields.len());
            for field in &partition_fields {
                partition_values.push(partition_value(
                    values.get(field.name()).cloned().flatten(),
                    field.data_type(),
                )?);
            }
            let size = u64::try_from(file.size()).unwrap_or_default();
            let meta = ObjectMeta {
                location: file.object_store_path(),
                last_modified: Utc
                    .timestamp_millis_opt(file.modification_time())
                    .single()
                    .unwrap_or_default(),
                size,
                e_tag: None,
                version: None,
            };
            files
                .push(PartitionedFile::new_from_meta(meta).with_partition_values(partition_values));
        }
        let log_store = table.log_store();
        Ok(Some(SnapshotScan {
            schema,
            file_schema,
            partition_fields,
            scan_index,
            files,
            store_url: log_store.object_store_url(),
            store: log_store.object_store(None),
            local: LocalFiles::of(table.table_url()).map(Arc::new),
            state,
            prunable,
            rows,
            location: table.table_url().to_string(),
            cache: None,
            deletions,
            deleted: tokio::sync::OnceCell::new(),
        }))
    }

    /// This scan, keeping the columns it decodes in `cache` and reading them from there.
    pub(crate) fn with_cache(mut self, cache: Arc<ColumnCache>) -> SnapshotScan {
        self.cache = Some(cache);
        self
    }

    /// The rows each file's deletion vector marks (`None` for files without one), read at
    /// the first call.
    async fn deleted_rows(&self) -> Result<&Deleted> {
        let loaded = self
            .deleted
            .get_or_try_init(|| async {
                futures::stream::iter(0..self.deletions.len())
                    .map(|file| self.marked_rows(file))
                    .buffered(8)
                    .try_collect::<Vec<_>>()
                    .await
            })
            .await
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        Ok(loaded.as_slice())
    }

    /// The rows the deletion vector of data file `file` marks, if it has one.
    async fn marked_rows(&self, file: usize) -> crate::Result<Option<Arc<RoaringTreemap>>> {
        match &self.deletions[file] {
            Some(dv) => crate::deletion_vectors::load(&self.location, self.store.as_ref(), dv)
                .await
                .map(|rows| Some(Arc::new(rows))),
            None => Ok(None),
        }
    }

    fn is_partition_filter(&self, filter: &Expr) -> bool {
        let columns = filter.column_refs();
        !columns.is_empty()
            && !filter.is_volatile()
            && columns
                .iter()
                .all(|c| self.partition_fields.iter().any(|p| p.name() == &c.name))
    }

    /// Which files pass `by_partition` on their partition values (exactly) and
    /// `by_statistics` on their statistics (files that cannot hold a matching row fail).
    fn kept_files(
        &self,
        state: &dyn Session,
        by_partition: Option<Expr>,
        by_statistics: Option<Expr>,
    ) -> Result<Vec<bool>> {
        let mut kept = vec![true; self.files.len()];
        if let Some(predicate) = by_partition {
            let schema = Arc::new(Schema::new(self.partition_fields.clone()));
            let columns = (0..self.partition_fields.len())
                .map(|i| {
                    let values = self.files.iter().map(|f| f.partition_values[i].clone());
                    ScalarValue::iter_to_array(values)
                })
                .collect::<Result<Vec<ArrayRef>>>()?;
            let batch = RecordBatch::try_new(schema.clone(), columns)?;
            let expr = state.create_physical_expr(predicate, &DFSchema::try_from(schema)?)?;
            let answer = expr.evaluate(&batch)?.into_array(batch.num_rows())?;
            let answer = answer.as_boolean_opt().ok_or_else(|| {
                datafusion::error::DataFusionError::Internal("partition filter".into())
            })?;
            for (i, keep) in kept.iter_mut().enumerate() {
                *keep = answer.is_valid(i) && answer.value(i);
            }
        }
        // Statistics only skip files: a filter they cannot judge keeps every file.
        if let Some(predicate) = by_statistics
            && let Ok(expr) =
                state.create_physical_expr(predicate, &DFSchema::try_from(self.schema.clone())?)
            && let Ok(pruning) = PruningPredicateBuilder::new()
                .with_file_schema(self.schema.clone())
                .try_build(expr)
            && let Ok(matches) = pruning.prune(&FileStatistics {
                state: &self.state,
                prunable: &self.prunable,
            })
            && matches.len() == kept.len()
        {
            for (keep, matches) in kept.iter_mut().zip(matches) {
                *keep &= matches;
            }
        }
        Ok(kept)
    }
}

/// Strings and binaries as views, as DataFusion reads them best.
fn as_views(field: FieldRef) -> FieldRef {
    let data_type = match field.data_type() {
        DataType::Utf8 | DataType::LargeUtf8 => DataType::Utf8View,
        DataType::Binary | DataType::LargeBinary => DataType::BinaryView,
        _ => return field,
    };
    Arc::new(field.as_ref().clone().with_data_type(data_type))
}

/// A partition value as Delta writes it (text, `None` for null), typed.
fn partition_value(text: Option<String>, data_type: &DataType) -> Result<ScalarValue> {
    match text {
        None => ScalarValue::try_from(data_type),
        Some(text) => ScalarValue::try_from_string(text, data_type),
    }
}

#[async_trait]
impl TableProvider for SnapshotScan {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        Ok(filters
            .iter()
            .map(|filter| {
                if self.is_partition_filter(filter) {
                    TableProviderFilterPushDown::Exact
                } else {
                    TableProviderFilterPushDown::Inexact
                }
            })
            .collect())
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let columns: Vec<usize> = match projection {
            Some(columns) => columns.clone(),
            None => (0..self.schema.fields().len()).collect(),
        };
        let (by_partition, stored): (Vec<Expr>, Vec<Expr>) = filters
            .iter()
            .cloned()
            .partition(|filter| self.is_partition_filter(filter));
        let stored = conjunction(stored);
        let kept: Vec<usize> = self
            .kept_files(state, conjunction(by_partition), stored.clone())?
            .into_iter()
            .enumerate()
            .filter_map(|(i, keep)| keep.then_some(i))
            .collect();
        if kept.is_empty() {
            return Ok(Arc::new(EmptyExec::new(Arc::new(
                self.schema.project(&columns)?,
            ))));
        }
        state
            .runtime_env()
            .register_object_store(self.store_url.as_ref(), self.store.clone());
        let deleted = self.deleted_rows().await?;
        if let Some(cache) = &self.cache
            && let Some(plan) = self
                .cached_scan(state, cache, &columns, &kept, deleted, limit)
                .await?
        {
            return Ok(plan);
        }
        let predicate = match stored {
            Some(predicate) => Some(
                state.create_physical_expr(predicate, &DFSchema::try_from(self.schema.clone())?)?,
            ),
            None => None,
        };
        let files = kept
            .iter()
            .map(|&i| {
                let file = self.files[i].clone();
                match (&deleted[i], self.rows[i]) {
                    (Some(marked), Some(rows)) => file.with_extension(ParquetRowSelection::new(
                        crate::deletion_vectors::selection(rows, marked),
                    )),
                    _ => file,
                }
            })
            .collect();
        let projection = columns.iter().map(|c| self.scan_index[*c]).collect();
        let partitions = state.config().target_partitions();
        self.parquet_scan(state, files, projection, predicate, limit, partitions)
    }
}

impl SnapshotScan {
    /// DataFusion's Parquet scan of `files`, giving the columns `projection` indexes (stored
    /// columns, then partition columns), skipping row groups and pages `predicate` rules out.
    fn parquet_scan(
        &self,
        state: &dyn Session,
        files: Vec<PartitionedFile>,
        projection: Vec<usize>,
        predicate: Option<Arc<dyn PhysicalExpr>>,
        limit: Option<usize>,
        partitions: usize,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let mut options = state.default_table_options().parquet;
        // Filters are tested above the scan: Parquet's row filters build a row selection per
        // condition, costlier than decoding every row when the kept rows are scattered.
        options.global.pushdown_filters = false;
        let format = ParquetFormat::default().with_options(options);
        let table_schema = TableSchema::builder(self.file_schema.clone())
            .with_table_partition_cols(self.partition_fields.clone())
            .build();
        let mut source = format.file_source(table_schema);
        if let Some(parquet) = source.downcast_ref::<ParquetSource>() {
            let footers = state.runtime_env().cache_manager.get_file_metadata_cache();
            let mut parquet =
                parquet
                    .clone()
                    .with_parquet_file_reader_factory(Arc::new(FootersWithPageIndex {
                        footers: CachedParquetFileReaderFactory::new(self.store.clone(), footers),
                        local: self.local.clone(),
                    }));
            if let Some(hint) = format.metadata_size_hint() {
                parquet = parquet.with_metadata_size_hint(hint);
            }
            source = Arc::new(parquet);
        }
        if let Some(predicate) = predicate
            && let Some(parquet) = source.downcast_ref::<ParquetSource>()
        {
            source = Arc::new(parquet.with_predicate(predicate));
        }
        let groups = FileGroup::new(files).split_files(partitions);
        let config = FileScanConfigBuilder::new(self.store_url.clone(), source)
            .with_file_groups(groups)
            .with_projection_indices(Some(projection))?
            .with_limit(limit)
            .build();
        // Not `format.create_physical_plan`: it would put its own footer reader back.
        Ok(DataSourceExec::from_data_source(config))
    }

    /// The scan of the `kept` files from decoded columns held in `cache`: columns it lacks
    /// are decoded whole and kept. Rows `deleted` marks are left out; filters are tested
    /// above the scan, on every other row of the files.
    /// `None` when the scan names no stored column or a binary one, covers a file of unknown
    /// size, or would hold more than half the cache: such scans read the files.
    async fn cached_scan(
        &self,
        state: &dyn Session,
        cache: &ColumnCache,
        columns: &[usize],
        kept: &[usize],
        deleted: &Deleted,
        limit: Option<usize>,
    ) -> Result<Option<Arc<dyn ExecutionPlan>>> {
        let stored_count = self.file_schema.fields().len();
        let mut stored: Vec<usize> = columns
            .iter()
            .map(|c| self.scan_index[*c])
            .filter(|i| *i < stored_count)
            .collect();
        stored.sort_unstable();
        stored.dedup();
        // Binary columns hold blobs (tag bitmaps, pack members) that their readers decode
        // into structures of their own and keep there.
        let blobs = stored.iter().any(|i| {
            matches!(
                self.file_schema.field(*i).data_type(),
                DataType::Binary | DataType::LargeBinary | DataType::BinaryView
            )
        });
        if stored.is_empty() || blobs {
            return Ok(None);
        }
        let width: usize = stored
            .iter()
            .map(|i| decoded_width(self.file_schema.field(*i).data_type()))
            .sum();
        let mut rows = 0usize;
        for file in kept {
            match self.rows[*file] {
                Some(n) => rows = rows.saturating_add(n),
                None => return Ok(None),
            }
        }
        if rows.saturating_mul(width) > cache.budget() / 2 {
            return Ok(None);
        }
        let schema = Arc::new(self.schema.project(columns)?);
        let batch_rows = state.config().batch_size().max(1);
        let mut batches = Vec::new();
        for &file in kept {
            let mut arrays = self.file_columns(state, cache, file, &stored).await?;
            let mut len = arrays.first().map(|(_, a)| a.len()).unwrap_or_default();
            if arrays.iter().any(|(_, a)| a.len() != len) {
                return Err(DataFusionError::Internal(format!(
                    "the columns of {} differ in length",
                    self.files[file].object_meta.location
                )));
            }
            if let Some(marked) = &deleted[file] {
                let live = crate::deletion_vectors::live_rows(len, marked);
                for (_, array) in arrays.iter_mut() {
                    *array = arrow::compute::filter(array.as_ref(), &live)?;
                }
                len = live.true_count();
            }
            let mut offset = 0;
            while offset < len {
                let n = batch_rows.min(len - offset);
                let mut parts = Vec::with_capacity(columns.len());
                for c in columns {
                    let i = self.scan_index[*c];
                    parts.push(match arrays.iter().find(|(s, _)| *s == i) {
                        Some((_, array)) => array.slice(offset, n),
                        None => self.files[file]
                            .partition_values
                            .get(i - stored_count)
                            .ok_or_else(|| {
                                DataFusionError::Internal(format!("no partition column {i}"))
                            })?
                            .to_array_of_size(n)?,
                    });
                }
                batches.push(RecordBatch::try_new(schema.clone(), parts)?);
                offset += n;
            }
        }
        if batches.is_empty() {
            return Ok(Some(Arc::new(EmptyExec::new(schema))));
        }
        // Each partition takes a run of consecutive batches, so rows leave in file order.
        let per_partition = batches
            .len()
            .div_ceil(state.config().target_partitions().max(1));
        let partitions: Vec<Vec<RecordBatch>> = batches
            .chunks(per_partition)
            .map(<[RecordBatch]>::to_vec)
            .collect();
        let source = MemorySourceConfig::try_new(&partitions, schema, None)?.with_limit(limit);
        Ok(Some(DataSourceExec::from_data_source(source)))
    }

    /// The stored columns `stored` (indexes into the file schema) of one data file, from the
    /// cache or decoded (and then kept).
    async fn file_columns(
        &self,
        state: &dyn Session,
        cache: &ColumnCache,
        file: usize,
        stored: &[usize],
    ) -> Result<Vec<(usize, ArrayRef)>> {
        let location = format!(
            "{}/{}",
            self.location.trim_end_matches('/'),
            self.files[file].object_meta.location
        );
        let mut arrays = Vec::with_capacity(stored.len());
        let mut missing = Vec::new();
        for &i in stored {
            match cache.get(&location, self.file_schema.field(i).name()) {
                Some(array) => arrays.push((i, array)),
                None => missing.push(i),
            }
        }
        if missing.is_empty() {
            return Ok(arrays);
        }
        let plan = self.parquet_scan(
            state,
            vec![self.files[file].clone()],
            missing.clone(),
            None,
            None,
            1,
        )?;
        let decoded = datafusion::physical_plan::collect(plan, state.task_ctx()).await?;
        for (k, &i) in missing.iter().enumerate() {
            let field = self.file_schema.field(i);
            let parts: Vec<&dyn Array> = decoded.iter().map(|b| b.column(k).as_ref()).collect();
            let array = match parts.as_slice() {
                [] => arrow::array::new_empty_array(field.data_type()),
                [one] => compact(*one),
                many => compact(arrow::compute::concat(many)?.as_ref()),
            };
            cache.insert(&location, field.name(), array.clone());
            arrays.push((i, array));
        }
        Ok(arrays)
    }
}

/// Bytes a decoded value of `data_type` takes, about (views count their inline part and a
/// little of the text they point to).
fn decoded_width(data_type: &DataType) -> usize {
    match data_type {
        DataType::Boolean => 1,
        DataType::Utf8View => 24,
        other => other.primitive_width().unwrap_or(32),
    }
}

/// `array` holding only its own values: text views copy the text they point to out of the
/// decoded pages, so the cache keeps no page alive.
fn compact(array: &dyn Array) -> ArrayRef {
    match array.data_type() {
        DataType::Utf8View => Arc::new(array.as_string_view().gc()),
        _ => arrow::array::make_array(array.to_data()),
    }
}

/// Readers whose footers are read, and cached, with their page indexes.
///
/// DataFusion's Parquet opener asks for a footer without its page index and, when the index
/// can skip pages, reads and decodes the index itself, past the footer cache: every query
/// read and decoded every file's index again. These readers ask for the index with the
/// footer, so the engine's cache holds both and the opener finds the index there.
///
/// In a local warehouse they read the files' data through [`LocalFiles`].
#[derive(Debug)]
struct FootersWithPageIndex {
    footers: CachedParquetFileReaderFactory,
    local: Option<Arc<LocalFiles>>,
}

impl ParquetFileReaderFactory for FootersWithPageIndex {
    fn create_reader(
        &self,
        partition_index: usize,
        partitioned_file: PartitionedFile,
        metadata_size_hint: Option<usize>,
        metrics: &ExecutionPlanMetricsSet,
    ) -> Result<Box<dyn AsyncFileReader + Send>> {
        let local = match &self.local {
            Some(files) => {
                let location = &partitioned_file.object_meta.location;
                let bytes_scanned = MetricBuilder::new(metrics)
                    .with_new_label("filename", location.to_string())
                    .counter("bytes_scanned", partition_index);
                Some(files.reader(location, bytes_scanned)?)
            }
            None => None,
        };
        let footers = self.footers.create_reader(
            partition_index,
            partitioned_file,
            metadata_size_hint,
            metrics,
        )?;
        Ok(Box::new(WithPageIndex { footers, local }))
    }
}

/// A reader whose footer comes with its page index (see [`FootersWithPageIndex`]), and whose
/// byte ranges come from [`LocalReader`] when the warehouse is local.
struct WithPageIndex {
    footers: Box<dyn AsyncFileReader + Send>,
    local: Option<LocalReader>,
}

impl AsyncFileReader for WithPageIndex {
    fn get_bytes(
        &mut self,
        range: std::ops::Range<u64>,
    ) -> BoxFuture<'_, parquet::errors::Result<Bytes>> {
        match &mut self.local {
            Some(local) => {
                let read = local
                    .read(std::slice::from_ref(&range))
                    .map(|mut read| read.pop().unwrap_or_default());
                Box::pin(std::future::ready(read))
            }
            None => self.footers.get_bytes(range),
        }
    }

    fn get_byte_ranges(
        &mut self,
        ranges: Vec<std::ops::Range<u64>>,
    ) -> BoxFuture<'_, parquet::errors::Result<Vec<Bytes>>> {
        match &mut self.local {
            Some(local) => Box::pin(std::future::ready(local.read(&ranges))),
            None => self.footers.get_byte_ranges(ranges),
        }
    }

    fn get_metadata<'a>(
        &'a mut self,
        options: Option<&'a ArrowReaderOptions>,
    ) -> BoxFuture<'a, parquet::errors::Result<Arc<ParquetMetaData>>> {
        let options = options
            .cloned()
            .unwrap_or_default()
            .with_page_index_policy(PageIndexPolicy::Optional);
        Box::pin(async move { self.footers.get_metadata(Some(&options)).await })
    }
}

/// The snapshot's per-file statistics as DataFusion prunes with them. Delta keeps times to
/// the millisecond, so a file's latest time may be up to 999µs past its recorded maximum;
/// text statistics may be cut short, so they are not used here (the files' own row group
/// statistics still are).
struct FileStatistics<'a> {
    state: &'a DeltaTableState,
    prunable: &'a HashMap<String, DataType>,
}

impl FileStatistics<'_> {
    fn usable(&self, column: &Column) -> Option<&DataType> {
        self.prunable.get(&column.name)
    }
}

impl PruningStatistics for FileStatistics<'_> {
    fn min_values(&self, column: &Column) -> Option<ArrayRef> {
        self.usable(column)?;
        self.state.snapshot().min_values(column)
    }

    fn max_values(&self, column: &Column) -> Option<ArrayRef> {
        let data_type = self.usable(column)?;
        let max = self.state.snapshot().max_values(column)?;
        match data_type {
            DataType::Timestamp(unit, _) => {
                let slack = match unit {
                    TimeUnit::Second | TimeUnit::Millisecond => 0,
                    TimeUnit::Microsecond => 999,
                    TimeUnit::Nanosecond => 999_999,
                };
                let as_int = arrow::compute::cast(&max, &DataType::Int64).ok()?;
                let widened: arrow::array::Int64Array = as_int
                    .as_primitive::<arrow::datatypes::Int64Type>()
                    .iter()
                    .map(|v| v.map(|v| v.saturating_add(slack)))
                    .collect();
                arrow::compute::cast(&widened, max.data_type()).ok()
            }
            _ => Some(max),
        }
    }

    fn num_containers(&self) -> usize {
        self.state.snapshot().num_containers()
    }

    fn null_counts(&self, column: &Column) -> Option<ArrayRef> {
        self.state.snapshot().null_counts(column)
    }

    fn row_counts(&self) -> Option<ArrayRef> {
        self.state.snapshot().row_counts()
    }

    fn contained(&self, _: &Column, _: &HashSet<ScalarValue>) -> Option<BooleanArray> {
        None
    }
}
