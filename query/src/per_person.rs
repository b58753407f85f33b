//! Conditions on what a person did in `events` or bought in `orders`, totalled per person in
//! an array indexed by user id.
//!
//! User ids are dense (`0..n`), so a person's running count or sum is one slot of an array:
//! the matching rows stream through once and nothing is hashed. The scan path's
//! `GROUP BY user_id` hashes nearly as many groups as rows (a month of one platform's orders
//! at 10M people: 3M rows, 1.9M buyers), which costs more than reading them.
//!
//! The rows are the ones the scan path selects ([`compile::event_rows_from`],
//! [`compile::order_rows_from`]) and totals are compared as its `HAVING` compares them: counts
//! as numbers, amounts as exact decimals. A person without rows has a total of zero, and so
//! does one whose amounts are all null: the scan's `NOT IN` of the failing totals (or `IN` of
//! the passing ones) treats both alike.

use std::sync::Mutex;

use arrow::array::{Array, AsArray, StringArray};
use arrow::datatypes::{DataType, Decimal128Type, Int64Type};
use datafusion::execution::memory_pool::MemoryConsumer;
use futures::TryStreamExt;
use roaring::RoaringBitmap;

use crate::compile;
use crate::condition::{Compare, Literal, Node, OrderMeasure};
use crate::error::Result;
use crate::session::Session;

/// Scale of the decimal an amount threshold is read as: the scan path's
/// `CAST(value AS DECIMAL(38, 10))`.
const THRESHOLD_SCALE: i8 = 10;

/// Zeroed arrays of totals kept between conditions. A fresh array of one slot per person is
/// new memory the kernel faults in and zeroes page by page, which at 14M people took longer
/// than adding up a month of orders; a kept one is mapped already. Each is left zeroed when
/// it comes back.
#[derive(Default)]
pub(crate) struct TotalsPool(Mutex<Vec<Vec<i64>>>);

/// Arrays kept: one per core of the machines this runs on is enough for concurrent counts.
const KEPT_ARRAYS: usize = 2;

impl TotalsPool {
    /// A zeroed array of `people` totals.
    fn take(&self, people: usize) -> Vec<i64> {
        let kept = self.0.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let mut totals = kept.unwrap_or_default();
        totals.resize(people, 0);
        totals
    }

    /// Keeps `totals`, which must be all zero, for the next condition.
    fn give(&self, totals: Vec<i64>) {
        let mut kept = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if kept.len() < KEPT_ARRAYS {
            kept.push(totals);
        }
    }
}

impl std::fmt::Debug for TotalsPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TotalsPool")
    }
}

/// Whether `node` is a condition on a person's rows of `events` or `orders`.
pub(crate) fn applies(node: &Node) -> bool {
    matches!(node, Node::Event(_) | Node::Orders(_))
}

/// The members of `universe` whose total passes `node`'s test. `None` when this way cannot
/// answer exactly (the totals would not fit the session's memory limit, an amount is not a
/// decimal or overflows) and a scan should.
pub(crate) async fn members(
    pool: &TotalsPool,
    session: &Session,
    universe: &RoaringBitmap,
    node: &Node,
) -> Result<Option<RoaringBitmap>> {
    let (sql, test) = match node {
        Node::Event(e) => (
            format!("SELECT e.user_id {}", compile::event_rows_from(e)),
            Threshold::Count {
                op: e.count.op,
                value: e.count.value as f64,
            },
        ),
        Node::Orders(o) => match o.measure {
            OrderMeasure::Count => {
                let Some(value) = o.value.as_f64() else {
                    return Ok(None);
                };
                (
                    format!("SELECT e.user_id {}", compile::order_rows_from(o)),
                    Threshold::Count { op: o.op, value },
                )
            }
            OrderMeasure::Amount => {
                let Some(value) = decimal_threshold(&o.value) else {
                    return Ok(None);
                };
                (
                    format!(
                        "SELECT e.user_id, {} AS amount {}",
                        compile::ORDER_AMOUNT,
                        compile::order_rows_from(o)
                    ),
                    Threshold::Amount {
                        op: o.op,
                        value,
                        scale: None,
                    },
                )
            }
        },
        _ => return Ok(None),
    };
    let people = universe.max().map_or(0, |max| max as usize + 1);
    let memory = session.context().runtime_env().memory_pool.clone();
    let reservation = MemoryConsumer::new("per-person totals").register(&memory);
    if reservation
        .try_grow(people * std::mem::size_of::<i64>())
        .is_err()
    {
        return Ok(None);
    }
    let frame = session.sql(&sql).await?;
    let mut stream = session.stream(frame).await?;
    let mut totals = pool.take(people);
    let mut test = test;
    let work = async {
        while let Some(batch) = stream.try_next().await? {
            let ids = arrow::compute::cast(batch.column(0), &DataType::Int64)?;
            let ids = ids.as_primitive::<Int64Type>();
            if !add(&mut totals, ids, batch.columns().get(1), &mut test) {
                return Ok(false);
            }
        }
        Ok::<_, datafusion::error::DataFusionError>(true)
    };
    if !session.limited(work).await? {
        return Ok(None);
    }
    let Some(passes) = test.on_totals() else {
        return Ok(None);
    };
    let zero_passes = passes(0);
    // Only people whose total decides otherwise than a zero would are listed: the rest of
    // the universe follows the zero. The array is zeroed on the way for the next condition.
    let mut flipped = Vec::new();
    for (id, total) in totals.iter_mut().enumerate() {
        if *total != 0 {
            if passes(*total) != zero_passes {
                flipped.push(id as u32);
            }
            *total = 0;
        }
    }
    pool.give(totals);
    let flipped = RoaringBitmap::from_sorted_iter(flipped)
        .map_err(|e| crate::Error::Internal(format!("per-person totals: {e}")))?;
    Ok(Some(if zero_passes {
        universe - &flipped
    } else {
        universe & &flipped
    }))
}

/// Adds a batch's rows to the totals: one per row, or its amount. False when an amount does not
/// fit (a scan answers then).
fn add(
    totals: &mut [i64],
    ids: &arrow::array::Int64Array,
    amounts: Option<&arrow::array::ArrayRef>,
    test: &mut Threshold,
) -> bool {
    let people = totals.len();
    let slot = |id: Option<i64>| {
        id.and_then(|id| usize::try_from(id).ok())
            .filter(|&id| id < people)
    };
    match (test, amounts) {
        (Threshold::Count { .. }, _) => {
            for id in ids.iter() {
                if let Some(id) = slot(id) {
                    totals[id] += 1;
                }
            }
            true
        }
        (Threshold::Amount { scale, .. }, Some(amounts)) => {
            let DataType::Decimal128(_, column_scale) = amounts.data_type() else {
                return false;
            };
            if scale.is_some_and(|s| s != *column_scale) {
                return false;
            }
            *scale = Some(*column_scale);
            let amounts = amounts.as_primitive::<Decimal128Type>();
            for (id, amount) in ids.iter().zip(amounts.iter()) {
                let (Some(id), Some(amount)) = (slot(id), amount) else {
                    continue;
                };
                let Some(sum) = i64::try_from(amount)
                    .ok()
                    .and_then(|a| totals[id].checked_add(a))
                else {
                    return false;
                };
                totals[id] = sum;
            }
            true
        }
        (Threshold::Amount { .. }, None) => false,
    }
}

/// What a person's total is compared with.
#[derive(Debug, Clone, Copy)]
enum Threshold {
    /// A count of rows, compared as a number.
    Count { op: Compare, value: f64 },
    /// A sum of amounts (unscaled, at the column's `scale` once a batch has shown it),
    /// compared with `value` at [`THRESHOLD_SCALE`].
    Amount {
        op: Compare,
        value: i128,
        scale: Option<i8>,
    },
}

impl Threshold {
    /// The test on a person's total, the amount's scale resolved once; `None` when it
    /// cannot be compared exactly.
    fn on_totals(self) -> Option<Box<dyn Fn(i64) -> bool>> {
        match self {
            Threshold::Count { op, value } => {
                Some(Box::new(move |total| op.holds(total as f64, value)))
            }
            Threshold::Amount { op, value, scale } => {
                let scale = scale.unwrap_or(0);
                if !(0..=THRESHOLD_SCALE).contains(&scale) {
                    return None;
                }
                // An i64 total times at most 10^10 fits an i128.
                let factor = 10i128.pow((THRESHOLD_SCALE - scale) as u32);
                Some(Box::new(move |total| {
                    op.holds(i128::from(total) * factor, value)
                }))
            }
        }
    }
}

/// An amount threshold as the scan path reads it, `CAST(value AS DECIMAL(38, 10))`, unscaled.
fn decimal_threshold(value: &Literal) -> Option<i128> {
    let text = match value {
        Literal::Int(i) => i.to_string(),
        Literal::Number { text, .. } => text.clone(),
        _ => return None,
    };
    let decimal = arrow::compute::cast(
        &StringArray::from(vec![text]),
        &DataType::Decimal128(38, THRESHOLD_SCALE),
    )
    .ok()?;
    let decimal = decimal.as_primitive::<Decimal128Type>();
    decimal.is_valid(0).then(|| decimal.value(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amount_thresholds_are_read_exactly_as_decimals() {
        let number = |text: &str| Literal::Number {
            text: text.to_string(),
            value: text.parse().unwrap_or_default(),
        };
        assert_eq!(
            decimal_threshold(&Literal::Int(300)),
            Some(3_000_000_000_000)
        );
        assert_eq!(decimal_threshold(&number("0.1")), Some(1_000_000_000));
        assert_eq!(
            decimal_threshold(&number("299.99")),
            Some(2_999_900_000_000)
        );
        assert_eq!(decimal_threshold(&Literal::Bool(true)), None);
        // 0.1 + 0.2 in cents is exactly 0.3: no float rounding decides a tie.
        let test = Threshold::Amount {
            op: Compare::Eq,
            value: decimal_threshold(&number("0.3")).unwrap_or_default(),
            scale: Some(2),
        };
        let passes = test.on_totals().expect("exact");
        assert!(passes(10 + 20));
        assert!(!passes(31));
        let count = Threshold::Count {
            op: Compare::Lt,
            value: 2.0,
        };
        let passes = count.on_totals().expect("exact");
        assert!(passes(0));
        assert!(!passes(2));
    }
}
