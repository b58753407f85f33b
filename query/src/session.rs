//! Sessions: a DataFusion context over one snapshot of every catalog table.
//!
//! An [`Engine`] lives as long as the server (or one CLI command). It keeps a handle on every
//! table and moves it forward when asked for a snapshot, reading only the commits since, and
//! caches what is costly to rebuild per request (the user universe, tag bitmaps) keyed by the
//! table version it came from. A [`Session`] pins one snapshot: every table a request reads
//! is at the version it had when the request began.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Int64Type};
use datafusion::catalog::TableProvider;
use datafusion::error::DataFusionError;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::execution::SessionStateBuilder;
use datafusion::execution::cache::cache_manager::{CacheManagerConfig, FileMetadataCache};
use datafusion::execution::cache::default_cache::DefaultCache;
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::{DataFrame, SQLOptions, SessionConfig, SessionContext, col, lit};
use futures::TryStreamExt;
use roaring::RoaringBitmap;
use serde::Serialize;
use shoal_catalog::{
    Catalog, ColumnCache, ColumnCacheStats, MergeLog, Role, Sensitivity, Table, Visibility,
};

use crate::bitmap_functions::{self, AudienceBitmaps};
use crate::error::{Error, Result};
use crate::tags::TagIndex;

/// Limits every query of a session runs under.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Memory one query may hold in operators that track it (sorts, joins, aggregates).
    pub memory_bytes: usize,
    /// Longest a query may run.
    pub timeout: Duration,
    /// Memory for decoded columns kept between queries (0: none kept). Worth it in a
    /// server, which scans the same columns again and again; a one-off command keeps none.
    pub column_cache_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_bytes: 4 << 30,
            timeout: Duration::from_secs(120),
            column_cache_bytes: 0,
        }
    }
}

/// The table versions one request read.
pub type SnapshotVersions = BTreeMap<String, u64>;

/// Shared state of every session: table handles and caches.
#[derive(Debug, Default)]
pub struct Engine {
    limits: Limits,
    tables: tokio::sync::Mutex<BTreeMap<String, Table>>,
    providers: Mutex<HashMap<(String, u64), Arc<dyn TableProvider>>>,
    universe: Mutex<Option<(u64, Arc<RoaringBitmap>)>>,
    tags: Mutex<Option<Arc<TagIndex>>>,
    footers: Footers,
    /// Decoded columns, when the limits give them memory.
    columns: Option<Arc<ColumnCache>>,
    /// Arrays of per-person totals, kept between counts.
    totals: crate::per_person::TotalsPool,
}

/// Parquet footers (schema, row groups, statistics, page indexes) read by any session,
/// kept for the next: data files never change once written, so a query does not read the
/// footer of every file again. Bounded; least recently used footers leave first.
struct Footers(Arc<FileMetadataCache>);

impl Default for Footers {
    fn default() -> Self {
        Footers(Arc::new(DefaultCache::new(FOOTER_CACHE_BYTES)))
    }
}

impl std::fmt::Debug for Footers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Footers")
    }
}

/// Memory for cached footers.
const FOOTER_CACHE_BYTES: usize = 256 << 20;

/// Rows per batch (DataFusion's default is 8,192). Reports aggregate every event of their
/// window; with four times fewer batches a funnel over all people ran ~12% faster, and the
/// scan counts of the query bench did not change. `DATAFUSION_EXECUTION_BATCH_SIZE` overrides it.
const BATCH_ROWS: usize = 32_768;

/// The variable that sets when partial aggregation is skipped (see [`Engine::session`]).
const SKIP_PARTIAL_RATIO: &str =
    "DATAFUSION_EXECUTION_SKIP_PARTIAL_AGGREGATION_PROBE_RATIO_THRESHOLD";

impl Engine {
    /// An engine whose sessions run under `limits`.
    pub fn new(limits: Limits) -> Engine {
        Engine {
            limits,
            columns: (limits.column_cache_bytes > 0)
                .then(|| Arc::new(ColumnCache::new(limits.column_cache_bytes))),
            ..Engine::default()
        }
    }

    /// The limits of this engine's sessions.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Arrays of per-person totals kept for the next count.
    pub(crate) fn totals(&self) -> &crate::per_person::TotalsPool {
        &self.totals
    }

    /// What the column cache holds and has served (`None` when the engine keeps no columns).
    pub fn column_cache_stats(&self) -> Option<ColumnCacheStats> {
        self.columns.as_ref().map(|c| c.stats())
    }

    /// A session over the newest version of every table `catalog` defines.
    pub async fn session(&self, catalog: &Catalog) -> Result<Session> {
        let tables = self.snapshot(catalog).await?;
        // DataFusion's own settings can be tuned with DATAFUSION_* variables.
        let mut config = SessionConfig::from_env()?
            .with_information_schema(true)
            .with_default_catalog_and_schema("shoal", "public");
        if std::env::var_os("DATAFUSION_EXECUTION_BATCH_SIZE").is_none() {
            config = config.with_batch_size(BATCH_ROWS);
        }
        // Audience conditions group events and orders by person: nearly as many groups as
        // rows, where a first, partial aggregation per partition only hashes every row twice.
        // It is skipped when a first batch shows more than one group per ten rows (DataFusion
        // waits for 100,000 rows and four groups in five). A Q6-like count (orders grouped by
        // buyer) went from 26-27 to 22 ms.
        if std::env::var_os(SKIP_PARTIAL_RATIO).is_none() {
            let execution = &mut config.options_mut().execution;
            execution.skip_partial_aggregation_probe_ratio_threshold = 0.1;
            execution.skip_partial_aggregation_probe_rows_threshold = BATCH_ROWS;
        }
        let runtime = RuntimeEnvBuilder::new()
            .with_memory_limit(self.limits.memory_bytes, 1.0)
            .with_cache_manager(
                CacheManagerConfig::default()
                    .with_file_metadata_cache(Some(self.footers.0.clone()))
                    .with_metadata_cache_limit(FOOTER_CACHE_BYTES),
            )
            .build_arc()?;
        let ctx = context(config, runtime);
        for (name, table) in &tables {
            ctx.register_table(name.as_str(), self.provider(table).await?)?;
        }
        let audiences = AudienceBitmaps::default();
        bitmap_functions::register(&ctx, audiences.clone());
        crate::window_funnel::register(&ctx);
        crate::funnel_people::register(&ctx);
        Ok(Session {
            ctx,
            catalog: catalog.clone(),
            tables,
            audiences,
            limits: self.limits,
        })
    }

    /// Moves every table handle to its newest version, all at once (each is one listing of
    /// the table's log).
    async fn snapshot(&self, catalog: &Catalog) -> Result<BTreeMap<String, Table>> {
        let mut cached = self.tables.lock().await;
        let defined: Vec<&str> = catalog
            .definition()
            .tables
            .iter()
            .map(|t| t.name.as_str())
            .collect();
        let mut held = std::mem::take(&mut *cached);
        let refreshed = futures::future::try_join_all(defined.iter().map(|name| {
            let handle = held.remove(*name);
            async move {
                let table = match handle {
                    Some(mut table) => {
                        table.refresh().await?;
                        table
                    }
                    None => catalog.table(name).await?,
                };
                Ok::<_, Error>((name.to_string(), table))
            }
        }))
        .await?;
        *cached = refreshed.into_iter().collect();
        Ok(cached.clone())
    }

    /// The DataFusion provider of a table version (cached: building one reads the snapshot's
    /// file list).
    async fn provider(&self, table: &Table) -> Result<Arc<dyn TableProvider>> {
        let key = (table.name().to_string(), table.version());
        if let Some(provider) = self
            .providers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            return Ok(provider.clone());
        }
        let provider = table.query_provider_cached(self.columns.clone()).await?;
        let mut providers = self.providers.lock().unwrap_or_else(|p| p.into_inner());
        providers.retain(|(name, _), _| name != &key.0);
        providers.insert(key, provider.clone());
        Ok(provider)
    }

    /// Every user id of `users` at the session's snapshot (cached per version).
    pub async fn universe(&self, session: &Session) -> Result<Arc<RoaringBitmap>> {
        let version = session.version("users")?;
        if let Some((v, bitmap)) = self
            .universe
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            && *v == version
        {
            return Ok(bitmap.clone());
        }
        let frame = session
            .ctx
            .table("users")
            .await?
            .select(vec![col("user_id")])?;
        let bitmap = Arc::new(session.bitmap_of(frame).await?);
        *self.universe.lock().unwrap_or_else(|p| p.into_inner()) = Some((version, bitmap.clone()));
        Ok(bitmap)
    }

    /// The tag bitmap index at the session's snapshot (cached per `tag_bitmaps` version).
    pub(crate) async fn tags(&self, session: &Session) -> Result<Arc<TagIndex>> {
        let version = session.version("tag_bitmaps")?;
        if let Some(index) = self.tags.lock().unwrap_or_else(|p| p.into_inner()).as_ref()
            && index.version == version
        {
            return Ok(index.clone());
        }
        let index = Arc::new(TagIndex::load(session, version).await?);
        *self.tags.lock().unwrap_or_else(|p| p.into_inner()) = Some(index.clone());
        Ok(index)
    }
}

/// A context with DataFusion's defaults and Shoal's own planning rules.
fn context(config: SessionConfig, runtime: Arc<RuntimeEnv>) -> SessionContext {
    let state = SessionStateBuilder::new()
        .with_config(config)
        .with_runtime_env(runtime)
        .with_default_features()
        .with_physical_optimizer_rule(Arc::new(crate::scan_filters::DistinctScanFilters))
        .with_physical_optimizer_rule(Arc::new(crate::text_equality::InlineTextComparisons))
        .build();
    SessionContext::new_with_state(state)
}

/// One request's view of the warehouse.
pub struct Session {
    ctx: SessionContext,
    catalog: Catalog,
    tables: BTreeMap<String, Table>,
    audiences: AudienceBitmaps,
    limits: Limits,
}

impl Session {
    /// The DataFusion context, with every catalog table and the bitmap functions registered.
    pub fn context(&self) -> &SessionContext {
        &self.ctx
    }

    /// The SQL filter keeping rows of `audience`'s members (`user_id` names their column),
    /// for reports restricted to a pack.
    pub fn members_filter(&self, audience: &str, user_id: &str) -> String {
        format!(
            "rb_contains({}({}), {user_id})",
            crate::compile::AUDIENCE_FUNCTION,
            crate::compile::text(audience)
        )
    }

    /// The limits its queries run under.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// The catalog this session was made from.
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// The version of every table this session reads.
    pub fn versions(&self) -> SnapshotVersions {
        self.tables
            .iter()
            .map(|(name, table)| (name.clone(), table.version()))
            .collect()
    }

    /// The version of one table in this session.
    pub fn version(&self, table: &str) -> Result<u64> {
        self.tables
            .get(table)
            .map(Table::version)
            .ok_or_else(|| Error::Invalid(format!("unknown table '{table}'")))
    }

    /// The pinned handle of one table.
    pub(crate) fn table(&self, name: &str) -> Result<&Table> {
        self.tables
            .get(name)
            .ok_or_else(|| Error::Invalid(format!("unknown table '{name}'")))
    }

    /// Plans read-only SQL over the stored values (the SQL conditions compile to): one
    /// SELECT, WITH or EXPLAIN statement. DDL, DML (`INSERT`, `COPY`), `CREATE EXTERNAL
    /// TABLE`, `SET` and other statements are refused by DataFusion's planner checks.
    /// People's SQL goes through [`Session::user_sql`].
    pub async fn sql(&self, text: &str) -> Result<DataFrame> {
        let frame = self
            .ctx
            .sql_with_options(text, read_only())
            .await
            .map_err(|e| Error::Sql(sql_message(e)))?;
        self.load_audiences_of(frame.logical_plan()).await?;
        Ok(frame)
    }

    /// Plans a person's read-only SQL as `role` sees the warehouse: every table is a view
    /// that shows each column as the role may read it (clear, masked or hashed, by the
    /// catalog's sensitivity of the field) and leaves out the columns it may not read. The
    /// stored tables are not reachable from this context, so no query — `SELECT *`, joins,
    /// subqueries, functions, `information_schema` — sees a value the role may not.
    pub async fn user_sql(&self, text: &str, role: Role) -> Result<DataFrame> {
        let view = self.role_view(role).await?;
        self.plan_in(&view, text).await
    }

    /// `role`'s views of this snapshot as a context of their own, for clients that plan many
    /// statements against one snapshot (the Postgres endpoint). Plan in it with
    /// [`Session::plan_in`].
    pub async fn role_view(&self, role: Role) -> Result<RoleView> {
        let (ctx, hidden) = self.role_context(role).await?;
        Ok(RoleView { ctx, hidden, role })
    }

    /// Plans read-only SQL in a role view of this session: DDL, DML and other statements
    /// refused, columns the role may not read named as such, audiences the query names
    /// loaded.
    pub async fn plan_in(&self, view: &RoleView, text: &str) -> Result<DataFrame> {
        let frame = view
            .ctx
            .sql_with_options(text, read_only())
            .await
            .map_err(|e| hidden_column_error(sql_message(e), &view.hidden, view.role))?;
        self.load_audiences_of(frame.logical_plan()).await?;
        Ok(frame)
    }

    /// A context over this snapshot whose tables are `role`'s views of the stored ones;
    /// also the columns left out, as (table, column, sensitivity).
    async fn role_context(&self, role: Role) -> Result<(SessionContext, Vec<HiddenColumn>)> {
        use datafusion::datasource::{ViewTable, provider_as_source};
        use datafusion::logical_expr::{Expr, LogicalPlanBuilder, cast};
        let ctx = context(self.ctx.copied_config(), self.ctx.runtime_env());
        bitmap_functions::register(&ctx, self.audiences.clone());
        crate::window_funnel::register(&ctx);
        crate::funnel_people::register(&ctx);
        let [mask, hash] = crate::masking::udfs();
        let definition = self.catalog.definition();
        let mut hidden = Vec::new();
        for name in self.tables.keys() {
            let provider = self.ctx.table_provider(name.as_str()).await?;
            let standard = definition.table(name).ok();
            let mut shown = Vec::new();
            for field in provider.schema().fields() {
                let sensitivity = standard
                    .and_then(|t| t.field(field.name()))
                    .map_or(Sensitivity::Internal, |f| f.sensitivity);
                let column =
                    Expr::Column(datafusion::common::Column::new_unqualified(field.name()));
                let text = || cast(column.clone(), DataType::Utf8);
                shown.push(match definition.roles.grant(role, sensitivity).read {
                    Visibility::Clear => column,
                    Visibility::Masked => mask.call(vec![text()]).alias(field.name()),
                    Visibility::Hashed => hash.call(vec![text()]).alias(field.name()),
                    Visibility::Denied => {
                        hidden.push(HiddenColumn {
                            table: name.clone(),
                            column: field.name().clone(),
                            sensitivity,
                        });
                        continue;
                    }
                });
            }
            if shown.is_empty() {
                continue;
            }
            let plan = LogicalPlanBuilder::scan(name.as_str(), provider_as_source(provider), None)?
                .project(shown)?
                .build()?;
            ctx.register_table(
                name.as_str(),
                Arc::new(RoleTable(ViewTable::new(plan, None))),
            )?;
        }
        Ok((ctx, hidden))
    }

    /// Collects a frame's rows under the session's time and memory limits.
    pub async fn collect(&self, frame: DataFrame) -> Result<Vec<RecordBatch>> {
        let stream = self.stream(frame).await?;
        self.limited(stream.try_collect::<Vec<_>>()).await
    }

    /// Starts a frame's stream; the caller reads it under [`Session::limited`].
    pub async fn stream(&self, frame: DataFrame) -> Result<SendableRecordBatchStream> {
        self.limited(frame.execute_stream()).await
    }

    /// Runs `work` under the session's timeout, mapping resource errors to clear ones.
    pub async fn limited<T>(
        &self,
        work: impl Future<Output = datafusion::error::Result<T>>,
    ) -> Result<T> {
        match tokio::time::timeout(self.limits.timeout, work).await {
            Err(_) => Err(Error::Timeout {
                seconds: self.limits.timeout.as_secs(),
            }),
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(self.query_error(e)),
        }
    }

    /// Classifies an error of a running query.
    pub fn query_error(&self, e: DataFusionError) -> Error {
        match e.find_root() {
            DataFusionError::ResourcesExhausted(_) => Error::Memory {
                limit_mib: self.limits.memory_bytes >> 20,
            },
            DataFusionError::Execution(message) if message.starts_with("unknown audience") => {
                Error::Invalid(message.clone())
            }
            DataFusionError::Plan(_)
            | DataFusionError::SQL(..)
            | DataFusionError::SchemaError(..)
            | DataFusionError::NotImplemented(_) => Error::Sql(sql_message(e)),
            _ => Error::DataFusion(e),
        }
    }

    /// The bitmap of the ids in the first column of `frame`.
    pub async fn bitmap_of(&self, frame: DataFrame) -> Result<RoaringBitmap> {
        let mut stream = self.stream(frame).await?;
        let mut bitmap = RoaringBitmap::new();
        let work = async {
            while let Some(batch) = stream.try_next().await? {
                let ids = arrow::compute::cast(batch.column(0), &DataType::Int64)?;
                let ids = ids.as_primitive::<Int64Type>();
                let mut sorted: Vec<u32> = ids
                    .iter()
                    .flatten()
                    .filter_map(|id| u32::try_from(id).ok())
                    .collect();
                sorted.sort_unstable();
                bitmap.extend(sorted);
            }
            Ok::<_, DataFusionError>(())
        };
        self.limited(work).await?;
        Ok(bitmap)
    }

    /// The current version of audience `name`, as stored in `audience_versions`.
    pub async fn audience(&self, name: &str) -> Result<Arc<RoaringBitmap>> {
        if let Some(bitmap) = self
            .audiences
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
        {
            return Ok(bitmap.clone());
        }
        if self.tables.contains_key("audiences") {
            let deleted = self
                .ctx
                .table("audiences")
                .await?
                .filter(
                    col("name")
                        .eq(lit(name))
                        .and(col("deleted_at").is_not_null()),
                )?
                .count()
                .await?;
            if deleted > 0 {
                return Err(Error::Invalid(format!("audience '{name}' is deleted")));
            }
        }
        let frame = self
            .ctx
            .table("audience_versions")
            .await?
            .filter(col("audience").eq(lit(name)))?
            .sort(vec![col("version").sort(false, false)])?
            .limit(0, Some(1))?
            .select(vec![col("bitmap")])?;
        let batches = self.collect(frame).await?;
        let bytes = batches
            .iter()
            .find(|b| b.num_rows() > 0)
            .and_then(|b| {
                let column = arrow::compute::cast(b.column(0), &DataType::Binary).ok()?;
                let binary = column.as_binary_opt::<i32>()?;
                binary.is_valid(0).then(|| binary.value(0).to_vec())
            })
            .ok_or_else(|| Error::Invalid(format!("unknown audience '{name}'")))?;
        // Members merged into someone else since the pack was computed count as the survivor.
        let bitmap = Arc::new(
            self.merge_log()
                .await?
                .remap(&bitmap_functions::from_bytes(&bytes)?),
        );
        self.audiences
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_string(), bitmap.clone());
        Ok(bitmap)
    }

    /// The `merge` rows of `identity_merges` at this snapshot.
    pub async fn merge_log(&self) -> Result<MergeLog> {
        let frame = self
            .ctx
            .table("identity_merges")
            .await?
            .filter(col("kind").eq(lit("merge")))?
            .select(vec![col("from_user_id"), col("into_user_id")])?;
        let mut pairs = Vec::new();
        for batch in self.collect(frame).await? {
            let from = arrow::compute::cast(batch.column(0), &DataType::Int64)?;
            let into = arrow::compute::cast(batch.column(1), &DataType::Int64)?;
            let (from, into) = (
                from.as_primitive::<Int64Type>(),
                into.as_primitive::<Int64Type>(),
            );
            for i in 0..batch.num_rows() {
                if let (Ok(f), Ok(t)) = (u32::try_from(from.value(i)), u32::try_from(into.value(i)))
                {
                    pairs.push((f, t));
                }
            }
        }
        Ok(MergeLog::from_pairs(pairs))
    }

    /// An audience this session has already loaded.
    pub(crate) fn audience_loaded(&self, name: &str) -> Result<Arc<RoaringBitmap>> {
        self.audiences
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
            .ok_or_else(|| Error::Invalid(format!("unknown audience '{name}'")))
    }

    /// Loads every audience a plan names (`audience('vip')`) before it runs.
    async fn load_audiences_of(&self, plan: &LogicalPlan) -> Result<()> {
        use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
        use datafusion::logical_expr::Expr;
        let mut names = Vec::new();
        plan.apply_with_subqueries(|node| {
            node.apply_expressions(|expr| {
                expr.apply(|e| {
                    if let Expr::ScalarFunction(f) = e
                        && (f.func.name() == crate::compile::AUDIENCE_FUNCTION
                            || f.func.name() == bitmap_functions::AUDIENCE_CONTAINS)
                        && let Some(Expr::Literal(value, _)) = f.args.first()
                        && let Some(Some(name)) = value.try_as_str()
                    {
                        names.push(name.to_string());
                    }
                    Ok(TreeNodeRecursion::Continue)
                })
            })
        })?;
        for name in names {
            self.audience(&name).await?;
        }
        Ok(())
    }
}

/// The options every SQL statement is planned with: queries only.
fn read_only() -> SQLOptions {
    SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false)
}

/// A role's view of a stored table. It stands for the table, so catalogs list it as one
/// (`psql`'s `\dt`, BI tools); planning inlines its projection like any view's.
#[derive(Debug)]
struct RoleTable(datafusion::datasource::ViewTable);

#[async_trait::async_trait]
impl TableProvider for RoleTable {
    fn schema(&self) -> arrow::datatypes::SchemaRef {
        self.0.schema()
    }

    fn table_type(&self) -> datafusion::logical_expr::TableType {
        datafusion::logical_expr::TableType::Base
    }

    fn get_logical_plan(&self) -> Option<std::borrow::Cow<'_, LogicalPlan>> {
        self.0.get_logical_plan()
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&datafusion::logical_expr::Expr],
    ) -> datafusion::error::Result<Vec<datafusion::logical_expr::TableProviderFilterPushDown>> {
        self.0.supports_filters_pushdown(filters)
    }

    async fn scan(
        &self,
        state: &dyn datafusion::catalog::Session,
        projection: Option<&Vec<usize>>,
        filters: &[datafusion::logical_expr::Expr],
        limit: Option<usize>,
    ) -> datafusion::error::Result<Arc<dyn datafusion::physical_plan::ExecutionPlan>> {
        self.0.scan(state, projection, filters, limit).await
    }
}

/// A role's views of one snapshot (see [`Session::role_view`]).
pub struct RoleView {
    ctx: SessionContext,
    hidden: Vec<HiddenColumn>,
    role: Role,
}

impl RoleView {
    /// The context holding the views (and the bitmap and masking functions).
    pub fn context(&self) -> &SessionContext {
        &self.ctx
    }

    /// Whose view it is.
    pub fn role(&self) -> Role {
        self.role
    }
}

/// A column a role's views leave out.
#[derive(Debug, Clone)]
struct HiddenColumn {
    table: String,
    column: String,
    sensitivity: Sensitivity,
}

/// Says so when a query failed because it named a column the role may not read.
fn hidden_column_error(message: String, hidden: &[HiddenColumn], role: Role) -> Error {
    if message.contains("No field named")
        && let Some(h) = hidden.iter().find(|h| {
            message.contains(&format!("No field named {}", h.column))
                || message.contains(&format!("No field named \"{}\"", h.column))
                || message.contains(&format!(".{}.", h.column))
                || message.contains(&format!(".{} ", h.column))
                || message.ends_with(&format!(".{}", h.column))
        })
    {
        return Error::Sql(format!(
            "column '{}' of {} is {}: role {role} may not read it",
            h.column, h.table, h.sensitivity
        ));
    }
    Error::Sql(message)
}

/// DataFusion's message without its error-kind prefix.
fn sql_message(e: DataFusionError) -> String {
    let text = e.strip_backtrace();
    for prefix in [
        "Error during planning: ",
        "SQL error: ",
        "Schema error: ",
        "This feature is not implemented: ",
    ] {
        if let Some(rest) = text.strip_prefix(prefix) {
            return rest.to_string();
        }
    }
    text
}

/// Renders record batches as JSON objects, one per row.
pub fn rows_as_json(batches: &[RecordBatch]) -> Result<Vec<serde_json::Value>> {
    let mut writer = arrow::json::ArrayWriter::new(Vec::new());
    for batch in batches {
        writer.write(batch)?;
    }
    writer.finish()?;
    let bytes = writer.into_inner();
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    serde_json::from_slice(&bytes).map_err(|e| Error::Internal(format!("row JSON: {e}")))
}

/// A column of a result, as result grids show it.
#[derive(Debug, Clone, Serialize)]
pub struct ColumnInfo {
    /// Column name.
    pub name: String,
    /// Arrow type.
    #[serde(rename = "type")]
    pub data_type: String,
}

/// The columns of `frame`'s result.
pub fn columns(schema: &arrow::datatypes::Schema) -> Vec<ColumnInfo> {
    schema
        .fields()
        .iter()
        .map(|f| ColumnInfo {
            name: f.name().clone(),
            data_type: f.data_type().to_string(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use arrow::array::{ArrayRef, Int64Array, new_null_array};
    use arrow::datatypes::SchemaRef;
    use shoal_catalog::{CommitNote, Warehouse};

    use super::*;

    /// Rows of `users` with these ids, every other column null (or zero where required).
    fn users_rows(schema: &SchemaRef, ids: Vec<i64>) -> RecordBatch {
        let n = ids.len();
        let given: HashMap<&str, ArrayRef> =
            HashMap::from([("user_id", Arc::new(Int64Array::from(ids)) as ArrayRef)]);
        let columns = schema
            .fields()
            .iter()
            .map(|f| match given.get(f.name().as_str()) {
                Some(a) => a.clone(),
                None if f.is_nullable() => new_null_array(f.data_type(), n),
                None => arrow::compute::cast(&Int64Array::from(vec![0; n]), f.data_type())
                    .expect("a zero of the column's type"),
            })
            .collect();
        RecordBatch::try_new(schema.clone(), columns).expect("batch")
    }

    /// A catalog whose `users` holds ids 1 to 3 in one file and 4 to 6 in another.
    async fn two_files_of_users() -> (tempfile::TempDir, Catalog) {
        let dir = tempfile::tempdir().expect("temp dir");
        let warehouse =
            Warehouse::open(&format!("file://{}", dir.path().display())).expect("warehouse");
        let catalog = Catalog::open(warehouse).await.expect("catalog");
        let mut users = catalog.table("users").await.expect("users");
        let schema = users.schema().expect("schema");
        let rows = |ids: Vec<i64>| users_rows(&schema, ids);
        for ids in [vec![1, 2, 3], vec![4, 5, 6]] {
            users
                .append(vec![rows(ids)], CommitNote::default())
                .await
                .expect("append");
        }
        (dir, catalog)
    }

    /// `SELECT sum(user_id) FROM users WHERE user_id > 1` in `session`.
    async fn sum_of_ids_above_one(session: Session) -> i64 {
        let frame = session
            .sql("SELECT sum(user_id) FROM users WHERE user_id > 1")
            .await
            .expect("plan");
        let batches = frame.collect().await.expect("run");
        arrow::compute::cast(batches[0].column(0), &DataType::Int64)
            .expect("cast")
            .as_primitive::<Int64Type>()
            .value(0)
    }

    /// Sessions of one engine share the footers their scans read: a second query reads no
    /// footer again, and a new file adds its own.
    #[tokio::test]
    async fn sessions_share_the_footers_they_read() {
        let (_dir, catalog) = two_files_of_users().await;
        let mut users = catalog.table("users").await.expect("users");
        let schema = users.schema().expect("schema");
        let rows = |ids: Vec<i64>| users_rows(&schema, ids);
        let engine = Engine::default();
        assert_eq!(engine.footers.0.len(), 0);
        assert_eq!(
            sum_of_ids_above_one(engine.session(&catalog).await.expect("session")).await,
            20
        );
        assert_eq!(engine.footers.0.len(), 2, "one footer per data file");
        // Cached with their page indexes, which the scan would otherwise read and decode
        // again on every query.
        for file in users.data_files().expect("files") {
            let path = datafusion::object_store::path::Path::from(file.path.as_str());
            let cached = engine.footers.0.get(&path).expect("cached footer");
            let footer = cached
                .file_metadata
                .as_any()
                .downcast_ref::<datafusion::datasource::physical_plan::parquet::metadata::CachedParquetMetaData>()
                .expect("a Parquet footer")
                .parquet_metadata();
            assert!(footer.column_index().is_some(), "{}", file.path);
            assert!(footer.offset_index().is_some(), "{}", file.path);
        }
        assert_eq!(
            sum_of_ids_above_one(engine.session(&catalog).await.expect("session")).await,
            20
        );
        assert_eq!(engine.footers.0.len(), 2);
        users
            .append(vec![rows(vec![7, 8, 9])], CommitNote::default())
            .await
            .expect("append");
        assert_eq!(
            sum_of_ids_above_one(engine.session(&catalog).await.expect("session")).await,
            44
        );
        assert_eq!(engine.footers.0.len(), 3);
    }

    /// An engine with a column cache answers from columns decoded by earlier queries, and a
    /// new version of the table reads its new file (no stale answer).
    #[tokio::test]
    async fn sessions_share_the_columns_they_decoded() {
        let (_dir, catalog) = two_files_of_users().await;
        let mut users = catalog.table("users").await.expect("users");
        let schema = users.schema().expect("schema");
        let engine = Engine::new(Limits {
            column_cache_bytes: 64 << 20,
            ..Limits::default()
        });
        assert_eq!(engine.column_cache_stats().map(|s| s.columns), Some(0));
        for _ in 0..2 {
            assert_eq!(
                sum_of_ids_above_one(engine.session(&catalog).await.expect("session")).await,
                20
            );
        }
        let stats = engine.column_cache_stats().expect("a cache");
        assert_eq!((stats.columns, stats.misses, stats.hits), (2, 2, 2));
        users
            .append(
                vec![users_rows(&schema, vec![7, 8, 9])],
                CommitNote::default(),
            )
            .await
            .expect("append");
        assert_eq!(
            sum_of_ids_above_one(engine.session(&catalog).await.expect("session")).await,
            44
        );
        let stats = engine.column_cache_stats().expect("a cache");
        assert_eq!((stats.columns, stats.misses, stats.hits), (3, 3, 4));
        assert_eq!(Engine::default().column_cache_stats(), None);
    }

    /// Query sessions test filters on decoded batches (a filter above the scan), not while
    /// decoding, and the statistics of data files still skip those a filter rules out.
    #[tokio::test]
    async fn filters_are_tested_after_the_scan_and_statistics_still_skip_files() {
        let (_dir, catalog) = two_files_of_users().await;
        let session = Engine::default().session(&catalog).await.expect("session");
        let frame = session
            .sql("EXPLAIN ANALYZE SELECT count(*) FROM users WHERE user_id > 4")
            .await
            .expect("plan");
        let batches = frame.collect().await.expect("run");
        let text = arrow::util::pretty::pretty_format_batches(&batches)
            .expect("format")
            .to_string();
        assert!(text.contains("FilterExec"), "{text}");
        assert!(text.contains("files_opened=1,"), "{text}");
        let frame = session
            .sql("SELECT count(*) FROM users WHERE user_id > 4")
            .await
            .expect("plan");
        let batches = frame.collect().await.expect("run");
        assert_eq!(batches[0].column(0).as_primitive::<Int64Type>().value(0), 2);
    }
}
