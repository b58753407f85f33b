//! Text compared with a constant, one 16-byte word per row.
//!
//! Text columns are read as string views: each row is a 16-byte view holding the length and,
//! for text of at most 12 bytes, the bytes themselves (zero-padded). Arrow's general equality
//! tests each row through several branches (length, prefix, inline or not), about 3 ns a row
//! here; it was the largest cost of an attribute count (`gender = 'male'`,
//! `member_level IN (…)`) and of a funnel's step conditions (`event_name = 'view_item'`).
//!
//! A row equals a constant of at most 12 bytes exactly when its view equals the constant's
//! view: longer text has another length, and so another view. A longer constant is compared
//! by length and first four bytes (the view's low 64 bits), and by its bytes only where those
//! match. This rule, run after DataFusion's own, replaces `=` and `<>` between a string view
//! and a constant, and `IN` / `NOT IN` lists of up to 16 constants, in filters and aggregate
//! arguments with [`InlineTextEq`]. Scans keep their own predicates, so statistics still
//! prune files and row groups.

use std::fmt;
use std::hash::Hash;
use std::sync::Arc;

use arrow::array::{Array, AsArray, BooleanArray};
use arrow::buffer::{BooleanBuffer, Buffer};
use arrow::datatypes::{DataType, Field, FieldRef, Schema};
use arrow::record_batch::RecordBatch;
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TransformedResult, TreeNode};
use datafusion::common::{ScalarValue, internal_err};
use datafusion::error::Result;
use datafusion::logical_expr::{ColumnarValue, Operator};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::expressions::{BinaryExpr, InListExpr, Literal};
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::aggregates::AggregateExec;
use datafusion::physical_plan::filter::{FilterExec, FilterExecBuilder};

/// Longest text a view holds inline.
const INLINE: usize = 12;

/// Most constants an `IN` list may have to be rewritten; longer lists keep DataFusion's hash
/// set.
const MOST_CONSTANTS: usize = 16;

/// `text = 'constant'`, `text IN ('a', 'b', …)` (or `<>`, `NOT IN`) for a string-view `text`.
#[derive(Debug, Clone)]
pub(crate) struct InlineTextEq {
    text: Arc<dyn PhysicalExpr>,
    constants: Vec<String>,
    /// The views of the inline constants.
    exact: Vec<u128>,
    /// The low 64 bits of the longer constants' views (length and first four bytes)…
    heads: Vec<u64>,
    /// …and those constants.
    long: Vec<String>,
    negated: bool,
}

impl InlineTextEq {
    pub(crate) fn new(
        text: Arc<dyn PhysicalExpr>,
        constants: Vec<String>,
        negated: bool,
    ) -> InlineTextEq {
        let mut exact = Vec::new();
        let mut heads = Vec::new();
        let mut long = Vec::new();
        for constant in &constants {
            let bytes = constant.as_bytes();
            if bytes.len() <= INLINE {
                exact.push(inline_view(bytes));
            } else {
                let prefix = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
                heads.push(u64::from(bytes.len() as u32) | u64::from(prefix) << 32);
                long.push(constant.clone());
            }
        }
        InlineTextEq {
            text,
            constants,
            exact,
            heads,
            long,
            negated,
        }
    }
}

impl PartialEq for InlineTextEq {
    fn eq(&self, other: &Self) -> bool {
        self.text.as_ref() == other.text.as_ref()
            && self.constants == other.constants
            && self.negated == other.negated
    }
}

impl Eq for InlineTextEq {}

impl Hash for InlineTextEq {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.text.hash(state);
        self.constants.hash(state);
        self.negated.hash(state);
    }
}

/// Whether each word equals one of `exact`, or has one of `heads` as its low 64 bits and
/// passes `verify` (its row number), or neither when `negated`. Each constant is one pass over
/// the words, 64 rows per output word in a loop the compiler can vectorise; `verify` runs only
/// for rows whose head matched.
fn equal_words(
    words: &[u128],
    exact: &[u128],
    heads: &[u64],
    verify: impl Fn(usize) -> bool,
    negated: bool,
) -> BooleanBuffer {
    let mut packed = vec![0u64; words.len().div_ceil(64)];
    for target in exact {
        for (chunk, out) in words.chunks(64).zip(packed.iter_mut()) {
            let mut bits = 0u64;
            for (k, word) in chunk.iter().enumerate() {
                bits |= u64::from(word == target) << k;
            }
            *out |= bits;
        }
    }
    for target in heads {
        for (c, (chunk, out)) in words.chunks(64).zip(packed.iter_mut()).enumerate() {
            let mut near = 0u64;
            for (k, word) in chunk.iter().enumerate() {
                near |= u64::from(*word as u64 == *target) << k;
            }
            let mut rest = near & !*out;
            while rest != 0 {
                let k = rest.trailing_zeros() as usize;
                if verify(c * 64 + k) {
                    *out |= 1 << k;
                }
                rest &= rest - 1;
            }
        }
    }
    if negated {
        for out in &mut packed {
            *out = !*out;
        }
        if let Some(last) = packed.last_mut()
            && !words.len().is_multiple_of(64)
        {
            *last &= (1u64 << (words.len() % 64)) - 1;
        }
    }
    BooleanBuffer::new(Buffer::from_vec(packed), 0, words.len())
}

/// The string view of `text` when it is held inline: length in the low four bytes, then the
/// bytes, then zeros.
fn inline_view(bytes: &[u8]) -> u128 {
    let mut view = [0u8; 16];
    let len = bytes.len().min(INLINE);
    view[..4].copy_from_slice(&(len as u32).to_le_bytes());
    view[4..4 + len].copy_from_slice(&bytes[..len]);
    u128::from_le_bytes(view)
}

impl fmt::Display for InlineTextEq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.constants.as_slice(), self.negated) {
            ([one], false) => write!(f, "{} = {one}", self.text),
            ([one], true) => write!(f, "{} != {one}", self.text),
            (many, negated) => {
                let not = if negated { "NOT " } else { "" };
                write!(f, "{} {not}IN ({})", self.text, many.join(", "))
            }
        }
    }
}

impl PhysicalExpr for InlineTextEq {
    fn return_field(&self, input_schema: &Schema) -> Result<FieldRef> {
        Ok(Arc::new(Field::new(
            self.to_string(),
            DataType::Boolean,
            self.text.nullable(input_schema)?,
        )))
    }

    fn evaluate(&self, batch: &RecordBatch) -> Result<ColumnarValue> {
        match self.text.evaluate(batch)? {
            ColumnarValue::Array(array) => {
                let Some(views) = array.as_string_view_opt() else {
                    return internal_err!("{self}: the text is not a string view");
                };
                let verify = |row: usize| {
                    let text = views.value(row);
                    self.long.iter().any(|constant| text == constant)
                };
                let bits = equal_words(
                    views.views(),
                    &self.exact,
                    &self.heads,
                    verify,
                    self.negated,
                );
                Ok(ColumnarValue::Array(Arc::new(BooleanArray::new(
                    bits,
                    views.nulls().cloned(),
                ))))
            }
            ColumnarValue::Scalar(value) => {
                let answer = match value.try_as_str() {
                    Some(Some(text)) => {
                        Some(self.constants.iter().any(|c| c == text) != self.negated)
                    }
                    _ => None,
                };
                Ok(ColumnarValue::Scalar(ScalarValue::Boolean(answer)))
            }
        }
    }

    fn children(&self) -> Vec<&Arc<dyn PhysicalExpr>> {
        vec![&self.text]
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn PhysicalExpr>>,
    ) -> Result<Arc<dyn PhysicalExpr>> {
        let Some(text) = children.into_iter().next() else {
            return internal_err!("{self}: one child expected");
        };
        Ok(Arc::new(InlineTextEq {
            text,
            ..(*self).clone()
        }))
    }

    fn fmt_sql(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.text.fmt_sql(f)?;
        let quoted: Vec<String> = self
            .constants
            .iter()
            .map(|c| format!("'{}'", c.replace('\'', "''")))
            .collect();
        match (quoted.as_slice(), self.negated) {
            ([one], false) => write!(f, " = {one}"),
            ([one], true) => write!(f, " <> {one}"),
            (many, negated) => {
                let not = if negated { "NOT " } else { "" };
                write!(f, " {not}IN ({})", many.join(", "))
            }
        }
    }
}

/// The text of a non-null text constant.
fn constant_text(expr: &Arc<dyn PhysicalExpr>) -> Option<String> {
    match expr.downcast_ref::<Literal>()?.value() {
        ScalarValue::Utf8View(Some(s))
        | ScalarValue::Utf8(Some(s))
        | ScalarValue::LargeUtf8(Some(s)) => Some(s.clone()),
        _ => None,
    }
}

/// `expr` with its text comparisons on string views (evaluated against `schema`)
/// replaced by [`InlineTextEq`].
fn rewrite(
    expr: &Arc<dyn PhysicalExpr>,
    schema: &Schema,
) -> Result<Transformed<Arc<dyn PhysicalExpr>>> {
    Arc::clone(expr).transform_up(|node| {
        let found = if let Some(binary) = node.downcast_ref::<BinaryExpr>() {
            let negated = match binary.op() {
                Operator::Eq => Some(false),
                Operator::NotEq => Some(true),
                _ => None,
            };
            let sides = match (constant_text(binary.left()), constant_text(binary.right())) {
                (None, Some(constant)) => Some((binary.left(), constant)),
                (Some(constant), None) => Some((binary.right(), constant)),
                _ => None,
            };
            negated
                .zip(sides)
                .map(|(negated, (text, constant))| (text, vec![constant], negated))
        } else if let Some(in_list) = node.downcast_ref::<InListExpr>() {
            let constants: Option<Vec<String>> = in_list.list().iter().map(constant_text).collect();
            constants
                .filter(|c| !c.is_empty() && c.len() <= MOST_CONSTANTS)
                .map(|constants| (in_list.expr(), constants, in_list.negated()))
        } else {
            None
        };
        let Some((text, constants, negated)) = found else {
            return Ok(Transformed::no(node));
        };
        if text.data_type(schema)? != DataType::Utf8View {
            return Ok(Transformed::no(node));
        }
        Ok(Transformed::yes(Arc::new(InlineTextEq::new(
            Arc::clone(text),
            constants,
            negated,
        ))))
    })
}

/// Replaces text comparisons in filters and aggregate arguments (see the module
/// documentation).
#[derive(Debug, Default)]
pub(crate) struct InlineTextComparisons;

impl PhysicalOptimizerRule for InlineTextComparisons {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        plan.transform_up(|node| {
            if let Some(filter) = node.downcast_ref::<FilterExec>() {
                let predicate = rewrite(filter.predicate(), &filter.input().schema())?;
                if !predicate.transformed {
                    return Ok(Transformed::no(node));
                }
                let exec = FilterExecBuilder::from(filter)
                    .with_predicate(predicate.data)
                    .build()?;
                return Ok(Transformed::yes(Arc::new(exec) as Arc<dyn ExecutionPlan>));
            }
            if let Some(aggregate) = node.downcast_ref::<AggregateExec>() {
                let schema = aggregate.input_schema();
                let mut changed = false;
                let mut exprs = Vec::with_capacity(aggregate.aggr_expr().len());
                for expr in aggregate.aggr_expr() {
                    let args = expr
                        .expressions()
                        .iter()
                        .map(|arg| rewrite(arg, &schema))
                        .collect::<Result<Vec<_>>>()?;
                    if !args.iter().any(|a| a.transformed) {
                        exprs.push(Arc::clone(expr));
                        continue;
                    }
                    let args = args.into_iter().map(|a| a.data).collect();
                    let order_by = expr
                        .order_bys()
                        .iter()
                        .map(|s| Arc::clone(&s.expr))
                        .collect();
                    match expr.with_new_expressions(args, order_by) {
                        Some(rewritten) => {
                            changed = true;
                            exprs.push(Arc::new(rewritten));
                        }
                        None => exprs.push(Arc::clone(expr)),
                    }
                }
                if changed {
                    let exec = aggregate.with_new_aggr_exprs(exprs);
                    return Ok(Transformed::yes(Arc::new(exec) as Arc<dyn ExecutionPlan>));
                }
            }
            Ok(Transformed::no(node))
        })
        .data()
    }

    fn name(&self) -> &str {
        "inline_text_comparisons"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringViewArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use datafusion::datasource::MemTable;
    use datafusion::execution::SessionStateBuilder;
    use datafusion::prelude::SessionContext;

    #[test]
    fn inline_views_follow_arrows_layout() {
        for text in ["", "a", "male", "上海", "abcdefghijkl"] {
            let array = StringViewArray::from(vec![text]);
            assert_eq!(inline_view(text.as_bytes()), array.views()[0], "{text:?}");
        }
        // Longer text: its view starts with its length and first four bytes.
        let long = "abcdefghijklm and more";
        let array = StringViewArray::from(vec![long]);
        let compare = InlineTextEq::new(
            Arc::new(Literal::new(ScalarValue::Null)),
            vec![long.to_string()],
            false,
        );
        assert!(compare.exact.is_empty());
        assert_eq!(compare.heads, vec![array.views()[0] as u64]);
    }

    #[test]
    fn equal_words_packs_64_rows_a_word() {
        // 130 rows: two whole words and two rows more; 7 and 129 match.
        let mut words = vec![5u128; 130];
        words[7] = 9;
        words[129] = 9;
        let none = |_: usize| false;
        let equal = equal_words(&words, &[9], &[], none, false);
        let unequal = equal_words(&words, &[9], &[], none, true);
        assert_eq!(equal.len(), 130);
        assert_eq!(equal.set_indices().collect::<Vec<_>>(), vec![7, 129]);
        assert_eq!(unequal.count_set_bits(), 128);
        assert!(!unequal.value(7) && !unequal.value(129) && unequal.value(128));
        assert_eq!(equal_words(&[], &[9], &[], none, true).len(), 0);
        // Several targets: a row matching any of them.
        words[64] = 11;
        let either = equal_words(&words, &[11, 9], &[], none, false);
        assert_eq!(either.set_indices().collect::<Vec<_>>(), vec![7, 64, 129]);
        // Heads: rows 3 and 70 share the head 7 in their low 64 bits; only 70 passes the
        // check of its bytes, and exact matches need no check.
        words[3] = 7 | 1 << 64;
        words[70] = 7 | 2 << 64;
        let checked = std::cell::RefCell::new(Vec::new());
        let verify = |row: usize| {
            checked.borrow_mut().push(row);
            row == 70
        };
        let found = equal_words(&words, &[9], &[7], verify, false);
        assert_eq!(found.set_indices().collect::<Vec<_>>(), vec![7, 70, 129]);
        assert_eq!(checked.into_inner(), vec![3, 70]);
    }

    /// Rows worked out by hand below; long texts put data buffers in the views.
    fn texts() -> Vec<Option<&'static str>> {
        vec![
            Some("male"),
            Some("female"),
            None,
            Some("male"),
            Some(""),
            Some("abcdefghijkl"),
            Some("abcdefghijkX"),
            Some("abcdefghijklm"),
            Some("上海"),
            Some("male and more than twelve"),
            Some("mal"),
            Some("male"),
            None,
        ]
    }

    async fn context(rewrite: bool) -> SessionContext {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("t", DataType::Utf8View, true),
        ]));
        let rows = texts();
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Int64Array::from_iter_values(0..rows.len() as i64)),
                Arc::new(StringViewArray::from(rows)),
            ],
        )
        .expect("batch");
        let mut state = SessionStateBuilder::new().with_default_features();
        if rewrite {
            state = state.with_physical_optimizer_rule(Arc::new(InlineTextComparisons));
        }
        let ctx = SessionContext::new_with_state(state.build());
        ctx.register_table(
            "r",
            Arc::new(MemTable::try_new(schema, vec![vec![batch]]).expect("mem")),
        )
        .expect("register");
        ctx
    }

    /// The rewritten comparisons in `sql`'s plan and its one-row answer as text.
    async fn run(ctx: &SessionContext, sql: &str) -> (usize, String) {
        let plan = ctx
            .sql(sql)
            .await
            .expect("plan")
            .create_physical_plan()
            .await
            .expect("physical");
        let mut rewritten = 0;
        plan.apply(|node| {
            let mut exprs: Vec<Arc<dyn PhysicalExpr>> = Vec::new();
            if let Some(filter) = node.downcast_ref::<FilterExec>() {
                exprs.push(Arc::clone(filter.predicate()));
            }
            if let Some(aggregate) = node.downcast_ref::<AggregateExec>() {
                for expr in aggregate.aggr_expr() {
                    exprs.extend(expr.expressions());
                }
            }
            for expr in exprs {
                expr.apply(|e| {
                    rewritten += usize::from(e.is::<InlineTextEq>());
                    Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
                })?;
            }
            Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
        })
        .expect("walk");
        let batches = datafusion::physical_plan::collect(plan, ctx.task_ctx())
            .await
            .expect("run");
        let text = arrow::util::pretty::pretty_format_batches(&batches)
            .expect("format")
            .to_string();
        let values: Vec<&str> = text
            .lines()
            .nth(3)
            .unwrap_or_default()
            .split('|')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        (rewritten, values.join(","))
    }

    #[tokio::test]
    async fn short_constants_compare_views_and_answer_as_before() {
        let with = context(true).await;
        let without = context(false).await;
        // (query, comparisons rewritten, answer worked out from `texts()`)
        let cases = [
            ("SELECT count(*) FROM r WHERE t = 'male'", 1, "3"),
            ("SELECT count(*) FROM r WHERE 'male' = t", 1, "3"),
            // NULL rows are neither equal nor unequal.
            ("SELECT count(*) FROM r WHERE t <> 'male'", 1, "8"),
            ("SELECT count(*) FROM r WHERE t = ''", 1, "1"),
            ("SELECT count(*) FROM r WHERE t = '上海'", 1, "1"),
            ("SELECT count(*) FROM r WHERE t = 'abcdefghijkl'", 1, "1"),
            // Longer constants: length and prefix, then the bytes.
            ("SELECT count(*) FROM r WHERE t = 'abcdefghijklm'", 1, "1"),
            (
                "SELECT count(*) FROM r WHERE t = 'male and more than twelve'",
                1,
                "1",
            ),
            (
                "SELECT count(*) FROM r WHERE t = 'male and more than tw3lve'",
                1,
                "0",
            ),
            ("SELECT count(*) FROM r WHERE t <> 'abcdefghijklm'", 1, "10"),
            (
                "SELECT count(*) FROM r WHERE t = 'male' OR t = 'mal' OR t = 'female'",
                3,
                "5",
            ),
            ("SELECT count(*) FROM r WHERE t = 'male' AND id > 3", 1, "1"),
            (
                "SELECT sum(CASE WHEN t = 'male' THEN 1 ELSE 0 END), bool_or(t <> 'male'), \
                 count(*) FILTER (WHERE t = 'female') FROM r",
                2,
                "3,true,1",
            ),
            ("SELECT count(*) FROM r WHERE t = NULL", 0, "0"),
            // Lists of four or more stay lists after DataFusion's simplification.
            (
                "SELECT count(*) FROM r WHERE t IN ('male', 'mal', 'female', '上海')",
                1,
                "6",
            ),
            (
                "SELECT count(*) FROM r WHERE t NOT IN ('male', 'mal', 'female', '上海')",
                1,
                "5",
            ),
            (
                "SELECT count(*) FROM r WHERE t IN ('male', 'mal', 'female', 'abcdefghijklm')",
                1,
                "6",
            ),
            (
                "SELECT count(*) FROM r WHERE t NOT IN ('x', 'y', 'male and more than tw3lve', \
                 'male and more than twelve')",
                1,
                "10",
            ),
            // A NULL in the list makes NOT IN unknown for every row that matches nothing.
            (
                "SELECT count(*) FROM r WHERE t NOT IN ('male', 'mal', 'female', NULL)",
                0,
                "0",
            ),
            (
                "SELECT count(*) FROM r WHERE t IN ('a', 'b', 'c', 'd', 'e', 'f', 'g', 'h', 'i', \
                 'j', 'k', 'l', 'm', 'n', 'o', 'p', 'male')",
                0,
                "3",
            ),
        ];
        for (sql, rewritten, answer) in cases {
            let (found, got) = run(&with, sql).await;
            assert_eq!(found, rewritten, "{sql}");
            assert_eq!(got, answer, "{sql}");
            let (found, plain) = run(&without, sql).await;
            assert_eq!(found, 0);
            assert_eq!(plain, answer, "{sql} without the rule");
        }
    }
}
