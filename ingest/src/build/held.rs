//! The identities each person holds, as `users` shows them: how many, and for each identity
//! type with a column in `users` the one seen last, counted in one pass over the rows of
//! `identity_links` in memory that grows with the number of people.
//!
//! "Seen last" is SQL's `first_value(id_value ORDER BY first_seen DESC, id_value)` over a
//! person's identities of that type: the greatest `first_seen` (a missing one before any,
//! as `DESC` puts nulls first), ties to the least value (a missing value after any).

use std::cmp::Ordering;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, Int64Array, RecordBatch, StringArray, StringBuilder};

use super::features::People;
use crate::columns::{get_int, ints, text};
use crate::error::Result;

/// No identity of the type seen yet.
const NONE: u32 = u32::MAX;

/// A person's best identity of one type so far: where its value is, and its `first_seen`.
#[derive(Clone, Copy)]
struct Best {
    seen: Option<i64>,
    batch: u32,
    row: u32,
}

const EMPTY: Best = Best {
    seen: None,
    batch: NONE,
    row: NONE,
};

/// Counts the identities of `people`, batch after batch of `identity_links` rows
/// (`user_id`, `id_type`, `id_value`, `first_seen`).
pub(crate) struct Held<'a> {
    people: &'a People,
    /// The identity types shown, in their column order.
    types: &'a [String],
    /// Identities per slot.
    count: Vec<u32>,
    /// Per type, each slot's best identity.
    best: Vec<Vec<Best>>,
    /// The values of the batches added, kept for the best ones.
    values: Vec<StringArray>,
}

impl<'a> Held<'a> {
    pub(crate) fn new(people: &'a People, types: &'a [String]) -> Held<'a> {
        let mut held = Held {
            people,
            types,
            count: Vec::new(),
            best: vec![Vec::new(); types.len()],
            values: Vec::new(),
        };
        held.grow(people.slots());
        held
    }

    fn grow(&mut self, len: usize) {
        if len <= self.count.len() {
            return;
        }
        let len = len.max(self.count.len() + self.count.len() / 2);
        self.count.resize(len, 0);
        for best in &mut self.best {
            best.resize(len, EMPTY);
        }
    }

    /// Whether identity `a` (with value `va`) comes before `b` (with `vb`).
    fn before(a: Option<i64>, va: Option<&str>, b: Option<i64>, vb: Option<&str>) -> bool {
        let seen = match (a, b) {
            (None, None) => Ordering::Equal,
            (None, Some(_)) => Ordering::Less,
            (Some(_), None) => Ordering::Greater,
            (Some(a), Some(b)) => b.cmp(&a),
        };
        let value = match (va, vb) {
            (Some(a), Some(b)) => a.cmp(b),
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (None, None) => Ordering::Equal,
        };
        seen.then(value) == Ordering::Less
    }

    fn value(&self, best: Best) -> Option<&str> {
        let values = &self.values[best.batch as usize];
        let row = best.row as usize;
        values.is_valid(row).then(|| values.value(row))
    }

    /// Counts the rows of `batch`; rows without a person, or of people out of scope, are
    /// left out.
    pub(crate) fn add(&mut self, batch: &RecordBatch) -> Result<()> {
        let users = ints(batch, "user_id")?;
        let kinds = text(batch, "id_type")?;
        let seen = ints(batch, "first_seen")?;
        let values = text(batch, "id_value")?;
        let index = self.values.len() as u32;
        let mut slots = Vec::with_capacity(batch.num_rows());
        let mut top = 0;
        for i in 0..batch.num_rows() {
            let slot = get_int(&users, i).and_then(|u| self.people.slot(u));
            if let Some(s) = slot {
                top = top.max(s + 1);
            }
            slots.push(slot);
        }
        self.grow(top);
        self.values.push(values);
        let mut kept = false;
        for (i, slot) in slots.into_iter().enumerate() {
            let Some(s) = slot else { continue };
            self.count[s] += 1;
            if !kinds.is_valid(i) {
                continue;
            }
            let kind = kinds.value(i);
            let Some(t) = self.types.iter().position(|t| t == kind) else {
                continue;
            };
            let current = self.best[t][s];
            let this = get_int(&seen, i);
            let values = &self.values[index as usize];
            let value = values.is_valid(i).then(|| values.value(i));
            if current.batch == NONE || Self::before(this, value, current.seen, self.value(current))
            {
                self.best[t][s] = Best {
                    seen: this,
                    batch: index,
                    row: i as u32,
                };
                kept = true;
            }
        }
        if !kept {
            // No best identity points into this batch: its values need not be kept.
            self.values[index as usize] = StringArray::new_null(0);
        }
        Ok(())
    }

    /// One row per person with identities, by slot (user id order): `user_id`,
    /// `identity_count` and one text column per type, named as the type.
    pub(crate) fn finish(self) -> Result<RecordBatch> {
        let slots: Vec<usize> = (0..self.count.len())
            .filter(|s| self.count[*s] > 0)
            .collect();
        let users = Int64Array::from_iter_values(slots.iter().map(|s| self.people.user(*s)));
        let counts = Int64Array::from_iter_values(slots.iter().map(|s| i64::from(self.count[*s])));
        let mut columns: Vec<(String, ArrayRef)> = vec![
            ("user_id".into(), Arc::new(users)),
            ("identity_count".into(), Arc::new(counts)),
        ];
        for (t, name) in self.types.iter().enumerate() {
            let mut column = StringBuilder::with_capacity(slots.len(), slots.len() * 12);
            for s in &slots {
                let best = self.best[t][*s];
                column.append_option((best.batch != NONE).then(|| self.value(best)).flatten());
            }
            columns.push((name.clone(), Arc::new(column.finish())));
        }
        Ok(RecordBatch::try_from_iter(columns)?)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use arrow::array::{Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray};

    use super::*;

    /// A row of `identity_links`: user, type, value, first seen.
    type LinkRow<'a> = (Option<i64>, &'a str, Option<&'a str>, Option<i64>);

    fn links(rows: &[LinkRow]) -> RecordBatch {
        RecordBatch::try_from_iter(vec![
            (
                "user_id",
                Arc::new(Int64Array::from_iter(rows.iter().map(|r| r.0))) as ArrayRef,
            ),
            (
                "id_type",
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.1))),
            ),
            (
                "id_value",
                Arc::new(StringArray::from_iter(rows.iter().map(|r| r.2))),
            ),
            (
                "first_seen",
                Arc::new(
                    TimestampMicrosecondArray::from_iter(rows.iter().map(|r| r.3))
                        .with_timezone("UTC"),
                ),
            ),
        ])
        .expect("a links batch")
    }

    fn texts(batch: &RecordBatch, name: &str) -> Vec<Option<String>> {
        text(batch, name)
            .expect("a text column")
            .iter()
            .map(|v| v.map(str::to_string))
            .collect()
    }

    #[test]
    fn each_person_shows_the_identity_seen_last_of_each_type_ties_to_the_least_value() {
        let types = vec!["phone".to_string(), "login_id".to_string()];
        let people = People::new(None);
        let mut held = Held::new(&people, &types);
        // Person 3: phones seen at 10 and 30 (30 wins), a tie at 20 between two logins
        // (the least wins), a device (counted, not shown).
        held.add(&links(&[
            (Some(3), "phone", Some("+8613800000001"), Some(10)),
            (Some(3), "login_id", Some("zed"), Some(20)),
            (None, "phone", Some("+8613800000009"), Some(99)),
            (Some(3), "device_id", Some("d-1"), Some(5)),
        ]))
        .expect("added");
        // A batch none of whose rows is best for anyone.
        held.add(&links(&[(
            Some(3),
            "phone",
            Some("+8613800000000"),
            Some(1),
        )]))
        .expect("added");
        held.add(&links(&[
            (Some(3), "phone", Some("+8613800000003"), Some(30)),
            (Some(3), "login_id", Some("amy"), Some(20)),
            // Person 1: a phone without a first_seen comes before one with (nulls first in
            // DESC); a login without a value loses its tie to one with.
            (Some(1), "phone", Some("+8613800000011"), Some(50)),
            (Some(1), "phone", Some("+8613800000010"), None),
            (Some(1), "login_id", None, Some(7)),
            (Some(1), "login_id", Some("bob"), Some(7)),
            // Person 0 holds a device alone.
            (Some(0), "device_id", Some("d-0"), Some(1)),
        ]))
        .expect("added");
        let batch = held.finish().expect("finished");
        assert_eq!(
            ints(&batch, "user_id").expect("ids").values().to_vec(),
            vec![0, 1, 3]
        );
        assert_eq!(
            ints(&batch, "identity_count")
                .expect("counts")
                .values()
                .to_vec(),
            vec![1, 4, 6]
        );
        assert_eq!(
            texts(&batch, "phone"),
            vec![
                None,
                Some("+8613800000010".into()),
                Some("+8613800000003".into())
            ]
        );
        assert_eq!(
            texts(&batch, "login_id"),
            vec![None, Some("bob".into()), Some("amy".into())]
        );
    }

    #[test]
    fn a_scoped_count_keeps_to_its_people() {
        let types = vec!["phone".to_string()];
        let scope: BTreeSet<i64> = [7, 2].into_iter().collect();
        let people = People::new(Some(&scope));
        let mut held = Held::new(&people, &types);
        held.add(&links(&[
            (Some(7), "phone", Some("+8613800000007"), Some(1)),
            (Some(5), "phone", Some("+8613800000005"), Some(1)),
            (Some(2), "phone", Some("+8613800000002"), Some(1)),
            (Some(2), "phone", Some("+8613800000022"), Some(2)),
        ]))
        .expect("added");
        let batch = held.finish().expect("finished");
        assert_eq!(
            ints(&batch, "user_id").expect("ids").values().to_vec(),
            vec![2, 7]
        );
        assert_eq!(
            texts(&batch, "phone"),
            vec![Some("+8613800000022".into()), Some("+8613800000007".into())]
        );
    }
}
