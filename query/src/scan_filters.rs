//! Parquet scans test each filter once.
//!
//! A filter the Delta provider takes at planning time reaches the Parquet scan twice: once
//! from the provider itself and once more when DataFusion pushes the same filter, kept above
//! the scan, down into it. With filters evaluated during decoding, every copy is a pass over
//! the rows and one more row selection to intersect, so a four-condition audience count did
//! eight passes. This rule, run after DataFusion's own, leaves one copy of each conjunct.

use std::sync::Arc;

use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TransformedResult, TreeNode};
use datafusion::datasource::physical_plan::{FileScanConfig, FileSource, ParquetSource};
use datafusion::datasource::source::DataSourceExec;
use datafusion::error::Result;
use datafusion::physical_expr::{PhysicalExpr, conjunction, split_conjunction};
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::ExecutionPlan;

/// Removes repeated conjuncts from the predicates of Parquet scans.
#[derive(Debug, Default)]
pub(crate) struct DistinctScanFilters;

impl PhysicalOptimizerRule for DistinctScanFilters {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        plan.transform_up(|node| {
            Ok(match distinct_filters(node.as_ref()) {
                Some(scan) => Transformed::yes(scan),
                None => Transformed::no(node),
            })
        })
        .data()
    }

    fn name(&self) -> &str {
        "distinct_scan_filters"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// `node` again with one copy of each conjunct of its Parquet predicate, when it is a Parquet
/// scan whose predicate repeats one.
fn distinct_filters(node: &dyn ExecutionPlan) -> Option<Arc<dyn ExecutionPlan>> {
    with_parquet_predicate(node, |predicate| {
        let parts = split_conjunction(predicate);
        let mut kept: Vec<Arc<dyn PhysicalExpr>> = Vec::with_capacity(parts.len());
        for part in &parts {
            if !kept.iter().any(|k| k.as_ref() == part.as_ref()) {
                kept.push(Arc::clone(part));
            }
        }
        (kept.len() < parts.len()).then(|| conjunction(kept))
    })
}

/// `node` again with the predicate `change` makes of its own, when it is a Parquet scan with
/// a predicate and `change` makes one.
fn with_parquet_predicate(
    node: &dyn ExecutionPlan,
    change: impl FnOnce(&Arc<dyn PhysicalExpr>) -> Option<Arc<dyn PhysicalExpr>>,
) -> Option<Arc<dyn ExecutionPlan>> {
    let exec = node.downcast_ref::<DataSourceExec>()?;
    let config = exec.data_source().downcast_ref::<FileScanConfig>()?;
    let parquet = config.file_source.downcast_ref::<ParquetSource>()?;
    let predicate = change(&parquet.filter()?)?;
    let mut config = config.clone();
    config.file_source = Arc::new(parquet.with_predicate(predicate));
    Some(Arc::new(exec.clone().with_data_source(Arc::new(config))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, RecordBatch, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use datafusion::datasource::MemTable;
    use datafusion::prelude::{ParquetReadOptions, SessionConfig, SessionContext};

    /// The predicates of the plan's Parquet scans, one string per conjunct.
    fn scan_conjuncts(plan: &Arc<dyn ExecutionPlan>) -> Vec<Vec<String>> {
        let mut found = Vec::new();
        plan.apply(|node| {
            if let Some(exec) = node.downcast_ref::<DataSourceExec>()
                && let Some(config) = exec.data_source().downcast_ref::<FileScanConfig>()
                && let Some(predicate) = config.file_source.filter()
            {
                found.push(
                    split_conjunction(&predicate)
                        .iter()
                        .map(|p| p.to_string())
                        .collect(),
                );
            }
            Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
        })
        .expect("walk");
        found
    }

    #[tokio::test]
    async fn repeated_conjuncts_go_and_the_answer_stays() {
        let dir = tempfile::tempdir().expect("dir");
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("city", DataType::Utf8, true),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Int64Array::from_iter_values(0..1000)),
                Arc::new(StringArray::from_iter(
                    (0..1000).map(|i| (i % 7 != 0).then(|| ["上海", "杭州"][i % 2])),
                )),
            ],
        )
        .expect("batch");
        let path = dir.path().join("t.parquet");
        let writer = SessionContext::new();
        writer
            .read_table(Arc::new(
                MemTable::try_new(schema, vec![vec![batch]]).expect("mem"),
            ))
            .expect("frame")
            .write_parquet(path.to_str().expect("path"), Default::default(), None)
            .await
            .expect("write");

        // Filters tested while decoding, as in a Delta scan.
        let ctx = SessionContext::new_with_config(
            SessionConfig::new().set_bool("datafusion.execution.parquet.pushdown_filters", true),
        );
        ctx.register_parquet(
            "t",
            path.to_str().expect("path"),
            ParquetReadOptions::default(),
        )
        .await
        .expect("register");
        let frame = ctx
            .sql("SELECT count(*) FROM t WHERE city = '上海' AND id >= 100")
            .await
            .expect("plan");
        let plan = frame.create_physical_plan().await.expect("physical");
        let planned = scan_conjuncts(&plan);
        assert_eq!(
            planned.len(),
            1,
            "one Parquet scan with a predicate: {planned:?}"
        );
        // Each conjunct twice over, as a scan of a Delta table gets them.
        let doubled = plan
            .transform_up(|node| {
                Ok(
                    match with_parquet_predicate(node.as_ref(), |p| {
                        Some(conjunction([Arc::clone(p), Arc::clone(p)]))
                    }) {
                        Some(scan) => Transformed::yes(scan),
                        None => Transformed::no(node),
                    },
                )
            })
            .data()
            .expect("double");
        assert_eq!(scan_conjuncts(&doubled)[0].len(), 2 * planned[0].len());

        let plan = DistinctScanFilters
            .optimize(doubled, &ConfigOptions::default())
            .expect("rule");
        assert_eq!(scan_conjuncts(&plan), planned);
        // Nothing to remove: the plan is left as it is.
        let again = DistinctScanFilters
            .optimize(Arc::clone(&plan), &ConfigOptions::default())
            .expect("rule");
        assert!(Arc::ptr_eq(&again, &plan));

        // Rows 100..1000 whose city is 上海: even i not divisible by 7.
        let expected = (100..1000).filter(|i| i % 7 != 0 && i % 2 == 0).count() as i64;
        let batches = datafusion::physical_plan::collect(plan, ctx.task_ctx())
            .await
            .expect("run");
        let count = batches[0]
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .expect("count")
            .value(0);
        assert_eq!(count, expected);
    }
}
