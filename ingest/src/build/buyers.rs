//! Every buyer's paid orders, GMV, last order, platforms and RFM scores, counted in one pass
//! over `orders`.
//!
//! The scores are the quintiles of percent ranks among all buyers, as SQL's
//! `least(5, 1 + floor(percent_rank() OVER (ORDER BY x) * 5))`: ties share the rank of the
//! first of them, a missing value ranks after every present one, and one buyer alone ranks 0.
//! Buyers are kept by their dense user id, so a build finds any buyer's scores directly, and a
//! scoped build hands its own people's rows to SQL rather than every buyer's.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, Decimal128Array, Int64Array, RecordBatch, StringArray,
    TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use shoal_catalog::{PAID_STATUSES, Table};

use crate::columns::{column, get_int, ints, text};
use crate::error::{Error, Result};

/// Precision of `gmv`: a sum of differences of `decimal(18, 2)` amounts, as SQL types it.
const GMV_PRECISION: u8 = 29;
/// Scale of amounts and `gmv`.
const GMV_SCALE: i8 = 2;

/// No buyer in this slot.
const NONE: u32 = u32::MAX;

/// The buyers of `orders` (people with at least one paid order), each with their figures.
#[derive(Debug, Default)]
pub(crate) struct Buyers {
    /// Slot of each user id (`NONE` when they bought nothing).
    slot_of: Vec<u32>,
    /// User id of each slot.
    users: Vec<u32>,
    /// Order figures of each slot.
    figures: Vec<Figures>,
    /// Distinct platforms, sorted and joined with commas.
    platforms: Vec<String>,
    /// R, F and M scores, 1 to 5.
    scores: Vec<[i64; 3]>,
}

impl Buyers {
    /// Reads the live rows of `orders` and counts every buyer's figures.
    pub(crate) async fn read(orders: &Table) -> Result<Buyers> {
        let mut counter = Counter::default();
        let files = orders.data_files()?;
        orders
            .read_files(
                &files,
                Some(&[
                    "user_id",
                    "status",
                    "amount",
                    "refund_amount",
                    "created_at",
                    "platform",
                ]),
                |_, batch| {
                    counter
                        .add(&batch)
                        .map_err(|e| shoal_catalog::Error::Internal(e.to_string()))
                },
            )
            .await?;
        Ok(counter.finish())
    }

    /// Number of buyers.
    pub(crate) fn len(&self) -> usize {
        self.users.len()
    }

    fn slot(&self, user: i64) -> Option<usize> {
        let slot = *self.slot_of.get(usize::try_from(user).ok()?)?;
        (slot != NONE).then_some(slot as usize)
    }

    /// R, F and M scores of `user`, None when they bought nothing.
    pub(crate) fn scores(&self, user: i64) -> Option<[i64; 3]> {
        self.slot(user).map(|s| self.scores[s])
    }

    /// One row per buyer (all of them, or those of `only`): `od_user_id`, `orders_count`,
    /// `gmv`, `last_order_at`, `platforms`, `rfm_r`, `rfm_f`, `rfm_m`.
    pub(crate) fn batch(&self, only: Option<&[i64]>) -> Result<RecordBatch> {
        let slots: Vec<usize> = match only {
            Some(users) => users.iter().filter_map(|u| self.slot(*u)).collect(),
            None => (0..self.len()).collect(),
        };
        let ints = |value: &dyn Fn(usize) -> i64| -> ArrayRef {
            Arc::new(Int64Array::from_iter_values(
                slots.iter().map(|s| value(*s)),
            ))
        };
        let gmv = Decimal128Array::from_iter(slots.iter().map(|s| self.figures[*s].gmv))
            .with_precision_and_scale(GMV_PRECISION, GMV_SCALE)?;
        let last =
            TimestampMicrosecondArray::from_iter(slots.iter().map(|s| self.figures[*s].last_order))
                .with_timezone("UTC");
        let platforms = StringArray::from_iter_values(slots.iter().map(|s| &self.platforms[*s]));
        let schema = Schema::new(vec![
            Field::new("od_user_id", DataType::Int64, false),
            Field::new("orders_count", DataType::Int64, false),
            Field::new("gmv", DataType::Decimal128(GMV_PRECISION, GMV_SCALE), true),
            Field::new(
                "last_order_at",
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                true,
            ),
            Field::new("platforms", DataType::Utf8, false),
            Field::new("rfm_r", DataType::Int64, false),
            Field::new("rfm_f", DataType::Int64, false),
            Field::new("rfm_m", DataType::Int64, false),
        ]);
        Ok(RecordBatch::try_new(
            Arc::new(schema),
            vec![
                ints(&|s| i64::from(self.users[s])),
                ints(&|s| self.figures[s].orders),
                Arc::new(gmv),
                Arc::new(last),
                Arc::new(platforms),
                ints(&|s| self.scores[s][0]),
                ints(&|s| self.scores[s][1]),
                ints(&|s| self.scores[s][2]),
            ],
        )?)
    }
}

/// One buyer's order figures, together: a row of `orders` updates them with one read.
#[derive(Debug, Default, Clone, Copy)]
struct Figures {
    /// Sum of `amount - refund_amount`, in cents (None when no amount was known).
    gmv: Option<i128>,
    /// Latest `created_at` (UTC µs).
    last_order: Option<i64>,
    /// Paid orders.
    orders: i64,
}

/// Figures gathered row by row.
#[derive(Default)]
struct Counter {
    buyers: Buyers,
    /// Platform names, in the order first met.
    names: Vec<String>,
    /// (slot, platform) of every paid order.
    bought_on: Vec<(u32, u32)>,
}

impl Counter {
    fn add(&mut self, batch: &RecordBatch) -> Result<()> {
        let users = ints(batch, "user_id")?;
        let status = text(batch, "status")?;
        let created = ints(batch, "created_at")?;
        let platform = text(batch, "platform")?;
        let amount = cents(batch, "amount")?;
        let refund = cents(batch, "refund_amount")?;
        // The paid rows with a person, and that person's id.
        let mut rows: Vec<u32> = Vec::with_capacity(batch.num_rows());
        let mut ids: Vec<u32> = Vec::with_capacity(batch.num_rows());
        for i in 0..batch.num_rows() {
            let Some(user) = get_int(&users, i) else {
                continue;
            };
            if !status.is_valid(i) || !PAID_STATUSES.contains(&status.value(i)) {
                continue;
            }
            let id = u32::try_from(user)
                .ok()
                .filter(|u| *u != NONE)
                .ok_or_else(|| {
                    Error::Internal(format!("orders holds user id {user}, not a person's id"))
                })?;
            rows.push(i as u32);
            ids.push(id);
        }
        let b = &mut self.buyers;
        if let Some(max) = ids.iter().max()
            && b.slot_of.len() <= *max as usize
        {
            b.slot_of.resize(*max as usize + 1, NONE);
        }
        // Buyers are scattered over a large table: their slots are looked up in a loop of
        // independent reads (which the core overlaps) before any is used.
        let mut slots: Vec<u32> = ids.iter().map(|id| b.slot_of[*id as usize]).collect();
        for (slot, id) in slots.iter_mut().zip(&ids) {
            if *slot == NONE {
                // Met earlier in this batch, or new.
                *slot = b.slot_of[*id as usize];
                if *slot == NONE {
                    *slot = b.users.len() as u32;
                    b.slot_of[*id as usize] = *slot;
                    b.users.push(*id);
                    b.figures.push(Figures::default());
                }
            }
        }
        let mut last_name: Option<(usize, u32)> = None;
        for ((row, slot), id) in rows.iter().zip(&slots).zip(&ids) {
            let i = *row as usize;
            let figures = &mut b.figures[*slot as usize];
            figures.orders += 1;
            if amount.is_valid(i) {
                let refunded = if refund.is_valid(i) {
                    refund.value(i)
                } else {
                    0
                };
                let sum = figures
                    .gmv
                    .unwrap_or(0)
                    .checked_add(amount.value(i) - refunded)
                    .ok_or_else(|| Error::Internal(format!("the GMV of person {id} overflows")))?;
                figures.gmv = Some(sum);
            }
            if let Some(at) = get_int(&created, i) {
                figures.last_order = Some(figures.last_order.map_or(at, |last| last.max(at)));
            }
            if platform.is_valid(i) {
                let name = platform.value(i);
                // Rows come in runs of one platform: the last name is looked up first.
                let id = match last_name {
                    Some((row, id)) if platform.value(row) == name => id,
                    _ => match self.names.iter().position(|n| n == name) {
                        Some(id) => id as u32,
                        None => {
                            self.names.push(name.to_string());
                            (self.names.len() - 1) as u32
                        }
                    },
                };
                last_name = Some((i, id));
                self.bought_on.push((*slot, id));
            }
        }
        Ok(())
    }

    fn finish(self) -> Buyers {
        let Counter {
            mut buyers,
            names,
            mut bought_on,
        } = self;
        // Platforms joined in name order, as `array_sort` puts them.
        let mut by_name: Vec<u32> = (0..names.len() as u32).collect();
        by_name.sort_by(|a, b| names[*a as usize].cmp(&names[*b as usize]));
        let mut rank = vec![0u32; names.len()];
        for (r, id) in by_name.iter().enumerate() {
            rank[*id as usize] = r as u32;
        }
        for pair in &mut bought_on {
            pair.1 = rank[pair.1 as usize];
        }
        bought_on.sort_unstable();
        bought_on.dedup();
        buyers.platforms = vec![String::new(); buyers.users.len()];
        for (slot, r) in bought_on {
            let text = &mut buyers.platforms[slot as usize];
            if !text.is_empty() {
                text.push(',');
            }
            text.push_str(&names[by_name[r as usize] as usize]);
        }
        let (r, (f, m)) = std::thread::scope(|s| {
            let b = &buyers;
            let r = s.spawn(move || quintiles(b.figures.iter().map(|f| f.last_order)));
            let f = s.spawn(move || quintiles(b.figures.iter().map(|f| Some(f.orders))));
            let m = quintiles(b.figures.iter().map(|f| f.gmv));
            (r.join(), (f.join(), m))
        });
        let (r, f) = match (r, f) {
            (Ok(r), Ok(f)) => (r, f),
            (Err(panic), _) | (_, Err(panic)) => std::panic::resume_unwind(panic),
        };
        buyers.scores = (0..buyers.users.len())
            .map(|i| [r[i], f[i], m[i]])
            .collect();
        buyers
    }
}

/// Each item's score 1-5: `1 + floor(percent_rank * 5)`, at most 5, where an item's percent
/// rank is the share of the others with a smaller value (missing values last, equal values
/// alike).
fn quintiles<K: Ord + Copy + Default>(values: impl Iterator<Item = Option<K>>) -> Vec<i64> {
    // Keys laid out together (a missing value after every present one), then sorted.
    let mut order: Vec<(bool, K, u32)> = values
        .enumerate()
        .map(|(i, v)| (v.is_none(), v.unwrap_or_default(), i as u32))
        .collect();
    order.sort_unstable();
    let n = order.len();
    let denominator = (n as f64 - 1.0).max(1.0);
    let mut scores = vec![0i64; n];
    let mut start = 0;
    while start < n {
        let (missing, value, _) = order[start];
        let mut end = start + 1;
        while end < n && order[end].0 == missing && order[end].1 == value {
            end += 1;
        }
        let rank = start as f64 / denominator;
        let score = (1 + (rank * 5.0).floor() as i64).min(5);
        for (.., i) in &order[start..end] {
            scores[*i as usize] = score;
        }
        start = end;
    }
    scores
}

/// A decimal column in its smallest unit (cents for amounts of scale 2).
fn cents(batch: &RecordBatch, name: &str) -> Result<Decimal128Array> {
    let array = arrow::compute::cast(&column(batch, name)?, &DataType::Decimal128(38, GMV_SCALE))?;
    array
        .as_any()
        .downcast_ref::<Decimal128Array>()
        .cloned()
        .ok_or_else(|| Error::Internal(format!("column '{name}' is not a decimal")))
}

#[cfg(test)]
mod tests {
    use super::quintiles;

    #[test]
    fn quintiles_rank_ties_alike_and_missing_values_last() {
        // Sorted: 1, 2, 2, 7, None → percent ranks 0, ¼, ¼, ¾, 1.
        let values = [Some(7), Some(2), None, Some(1), Some(2)];
        assert_eq!(quintiles(values.into_iter()), vec![4, 2, 5, 1, 2]);
        // A missing value ties with another missing one, not with zero.
        let values = [None, Some(0), None, Some(-3)];
        assert_eq!(quintiles(values.into_iter()), vec![4, 2, 4, 1]);
        // One buyer alone ranks 0; an empty set has no scores.
        assert_eq!(quintiles([Some(3)].into_iter()), vec![1]);
        assert!(quintiles::<i64>(std::iter::empty()).is_empty());
        // Everyone equal: everyone ranks 0.
        assert_eq!(quintiles([Some(9); 3].into_iter()), vec![1, 1, 1]);
    }
}
