//! Per-person features of `users`, counted in one pass over the rows they come from, in
//! memory that grows with the number of people rather than of events: activity from
//! `events` (first and last seen, active days, windowed counts, follow state) and the
//! latest profile traits from identify calls.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt::Write;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BooleanBuilder, Decimal128Builder, Float64Builder, Int64Array, Int64Builder,
    RecordBatch, Scalar, StringArray, StringBuilder, TimestampMicrosecondArray,
    TimestampMicrosecondBuilder,
};
use chrono::DateTime;
use datafusion::datasource::MemTable;
use datafusion::prelude::{SessionContext, col, lit};
use datafusion::scalar::ScalarValue;
use serde_json::{Map, Value};
use shoal_catalog::{FieldStandard, Table, ValueType};

use super::FOLLOW_EVENTS;
use crate::columns::{
    UserSet, column, for_each_batch, get, get_int, int_test, ints, rows_of_users, scan, text,
};
use crate::error::{Error, Result};
use crate::identity::graph::join;

/// Whose features are counted: everyone, or the people of a scoped build. Each person has a
/// slot in the dense arrays the features are counted in.
pub(crate) struct People {
    scope: Option<Vec<u32>>,
}

impl People {
    /// Everyone (no scope) or the people of `scope`.
    pub(crate) fn new(scope: Option<&BTreeSet<i64>>) -> People {
        People {
            scope: scope.map(|s| s.iter().filter_map(|u| u32::try_from(*u).ok()).collect()),
        }
    }

    pub(crate) fn slot(&self, user: i64) -> Option<usize> {
        let user = u32::try_from(user).ok()?;
        match &self.scope {
            None => Some(user as usize),
            Some(scope) => scope.binary_search(&user).ok(),
        }
    }

    pub(crate) fn user(&self, slot: usize) -> i64 {
        match &self.scope {
            None => slot as i64,
            Some(scope) => i64::from(scope[slot]),
        }
    }

    /// The people in scope, as a set of user ids.
    fn members(&self) -> UserSet {
        UserSet::new(self.scope.iter().flatten().map(|u| i64::from(*u)))
    }

    pub(crate) fn slots(&self) -> usize {
        self.scope.as_ref().map_or(0, Vec::len)
    }
}

/// A windowed count: events named `event` on the `days` days up to the evaluation day.
pub(crate) struct Window {
    pub column: String,
    pub event: String,
    pub days: u32,
}

/// Activity per slot.
#[derive(Default)]
struct Activity {
    first: Vec<i64>,
    last: Vec<i64>,
    days: Vec<u32>,
    last_day: Vec<i32>,
    counts: Vec<Vec<u32>>,
    follow: Vec<i64>,
    unfollow: Vec<i64>,
}

impl Activity {
    fn grow(&mut self, len: usize) {
        if len <= self.days.len() {
            return;
        }
        let len = len.max(self.days.len() + self.days.len() / 2);
        self.first.resize(len, i64::MAX);
        self.last.resize(len, i64::MIN);
        self.days.resize(len, 0);
        self.last_day.resize(len, i32::MIN);
        for c in &mut self.counts {
            c.resize(len, 0);
        }
        self.follow.resize(len, i64::MIN);
        self.unfollow.resize(len, i64::MIN);
    }
}

/// An event name counted: the windows it feeds, and whether it is a follow or an unfollow.
struct Counted {
    name: String,
    windows: Vec<usize>,
    follow: bool,
    unfollow: bool,
}

/// The rows of `events` that the people of a scoped build did (`user_id`, `event_time`,
/// `event_name`, and with `traits` also `event_type` and `properties`), with the day of each
/// batch (days since the epoch, `None` for rows without a time), oldest day first. Only
/// `user_id` is decoded for everyone: the other columns only for those people's rows.
pub(crate) async fn scoped_events(
    events: &Table,
    people: &People,
    traits: bool,
) -> Result<Vec<(Option<i32>, RecordBatch)>> {
    let mut columns = vec!["user_id", "event_time", "event_name"];
    if traits {
        columns.extend(["event_type", "properties"]);
    }
    let files = events.data_files()?;
    let mut rows = Vec::new();
    events
        .read_files_where(
            &files,
            Some(&columns),
            "user_id",
            {
                let members = people.members();
                int_test(move |u| u.is_some_and(|u| members.contains(u)))
            },
            |i, batch| {
                if batch.num_rows() > 0 {
                    rows.push((super::partition_day(&files[i]), batch));
                }
                Ok(())
            },
        )
        .await?;
    rows.sort_by_key(|(day, _)| *day);
    Ok(rows)
}

/// Activity of `people` from `events` (or from their rows already read, `scoped`), as of day
/// `as_of` (days since the epoch): one row per person with events — `ev_user_id`,
/// `first_seen`, `last_seen`, `active_days`, one column per window, `last_follow` and
/// `last_unfollow`. Days are counted one at a time, so a day counts once per person without
/// remembering which days each person was seen on.
pub(crate) async fn activity(
    events: &Table,
    people: &People,
    windows: &[Window],
    as_of: i32,
    scoped: Option<&[(Option<i32>, RecordBatch)]>,
) -> Result<RecordBatch> {
    let mut counter = ActivityCounter::new(people, windows, as_of);
    match scoped {
        Some(rows) => {
            for (day, batch) in rows {
                if let Some(day) = day {
                    counter.add(*day, batch)?;
                }
            }
        }
        None => {
            let ctx = SessionContext::new();
            let provider = events.provider().await?;
            let dates = super::rows_per_day(ctx.read_table(provider)?).await?;
            for &day in dates.keys() {
                let filter = col("event_date").eq(lit(ScalarValue::Date32(Some(day))));
                let stream = scan(
                    &ctx,
                    events,
                    &["user_id", "event_time", "event_name"],
                    Some(filter),
                )
                .await?;
                for_each_batch(stream, |batch| counter.add(day, batch)).await?;
            }
        }
    }
    counter.finish()
}

/// Activity counted day after day.
struct ActivityCounter<'a> {
    people: &'a People,
    windows: &'a [Window],
    as_of: i32,
    counted: Vec<Counted>,
    state: Activity,
    /// Each row's slot (u32::MAX: not counted), per batch.
    slots: Vec<u32>,
}

impl<'a> ActivityCounter<'a> {
    fn new(people: &'a People, windows: &'a [Window], as_of: i32) -> ActivityCounter<'a> {
        let mut counted: Vec<Counted> = [FOLLOW_EVENTS.0, FOLLOW_EVENTS.1]
            .iter()
            .enumerate()
            .map(|(i, name)| Counted {
                name: name.to_string(),
                windows: Vec::new(),
                follow: i == 0,
                unfollow: i == 1,
            })
            .collect();
        for (w, window) in windows.iter().enumerate() {
            match counted.iter_mut().find(|c| c.name == window.event) {
                Some(c) => c.windows.push(w),
                None => counted.push(Counted {
                    name: window.event.clone(),
                    windows: vec![w],
                    follow: false,
                    unfollow: false,
                }),
            }
        }
        let mut state = Activity {
            counts: vec![Vec::new(); windows.len()],
            ..Activity::default()
        };
        state.grow(people.slots());
        ActivityCounter {
            people,
            windows,
            as_of,
            counted,
            state,
            slots: Vec::new(),
        }
    }

    /// Counts the rows of `batch`, all on `day`; days come in order, each day's batches
    /// together.
    fn add(&mut self, day: i32, batch: &RecordBatch) -> Result<()> {
        let (people, windows, as_of) = (self.people, self.windows, self.as_of);
        // Per counted name, the windows this day falls in.
        let inside: Vec<Vec<usize>> = self
            .counted
            .iter()
            .map(|c| {
                c.windows
                    .iter()
                    .copied()
                    .filter(|w| {
                        let from = as_of - windows[*w].days as i32;
                        day > from && day <= as_of
                    })
                    .collect()
            })
            .collect();
        let state = &mut self.state;
        let slots = &mut self.slots;
        let users = ints(batch, "user_id")?;
        let times = ints(batch, "event_time")?;
        slots.clear();
        let mut top = 0;
        for i in 0..batch.num_rows() {
            let s = get_int(&users, i)
                .and_then(|u| people.slot(u))
                .map_or(u32::MAX, |s| s as u32);
            if s != u32::MAX {
                top = top.max(s as usize + 1);
            }
            slots.push(s);
        }
        state.grow(top);
        for (i, s) in slots.iter().enumerate() {
            if *s == u32::MAX {
                continue;
            }
            let s = *s as usize;
            if let Some(t) = get_int(&times, i) {
                state.first[s] = state.first[s].min(t);
                state.last[s] = state.last[s].max(t);
            }
            if state.last_day[s] != day {
                state.last_day[s] = day;
                state.days[s] += 1;
            }
        }
        let wanted = self
            .counted
            .iter()
            .zip(&inside)
            .any(|(c, w)| !w.is_empty() || c.follow || c.unfollow);
        if !wanted {
            return Ok(());
        }
        // Names are compared in the column's own type (a view or dictionary array): no
        // copy of every name per batch.
        let names = column(batch, "event_name")?;
        for (c, inside) in self.counted.iter().zip(&inside) {
            if inside.is_empty() && !c.follow && !c.unfollow {
                continue;
            }
            let name =
                arrow::compute::cast(&StringArray::from(vec![c.name.as_str()]), names.data_type())?;
            let mask = arrow::compute::kernels::cmp::eq(&names, &Scalar::new(name))?;
            for i in mask.values().set_indices() {
                let s = slots[i];
                if s == u32::MAX || !mask.is_valid(i) {
                    continue;
                }
                let s = s as usize;
                for w in inside {
                    state.counts[*w][s] += 1;
                }
                if let Some(t) = get_int(&times, i) {
                    if c.follow {
                        state.follow[s] = state.follow[s].max(t);
                    }
                    if c.unfollow {
                        state.unfollow[s] = state.unfollow[s].max(t);
                    }
                }
            }
        }
        Ok(())
    }

    /// One row per person seen.
    fn finish(self) -> Result<RecordBatch> {
        let (people, windows, state) = (self.people, self.windows, self.state);
        let seen: Vec<usize> = (0..state.days.len())
            .filter(|s| state.days[*s] > 0)
            .collect();
        let time = |values: &[i64], none: i64| -> ArrayRef {
            Arc::new(
                TimestampMicrosecondArray::from_iter(
                    seen.iter().map(|s| Some(values[*s]).filter(|t| *t != none)),
                )
                .with_timezone("UTC"),
            )
        };
        let mut columns: Vec<(String, ArrayRef)> = vec![
            (
                "ev_user_id".into(),
                Arc::new(Int64Array::from_iter_values(
                    seen.iter().map(|s| people.user(*s)),
                )),
            ),
            ("first_seen".into(), time(&state.first, i64::MAX)),
            ("last_seen".into(), time(&state.last, i64::MIN)),
            (
                "active_days".into(),
                Arc::new(Int64Array::from_iter_values(
                    seen.iter().map(|s| i64::from(state.days[*s])),
                )),
            ),
        ];
        for (w, window) in windows.iter().enumerate() {
            columns.push((
                window.column.clone(),
                Arc::new(Int64Array::from_iter_values(
                    seen.iter().map(|s| i64::from(state.counts[w][*s])),
                )),
            ));
        }
        columns.push(("last_follow".into(), time(&state.follow, i64::MIN)));
        columns.push(("last_unfollow".into(), time(&state.unfollow, i64::MIN)));
        drop(state);
        Ok(RecordBatch::try_from_iter(columns)?)
    }
}

/// A hasher for the (slot, key) words of [`profile`] and its interned texts.
#[derive(Default)]
struct Mix(u64);

impl Hasher for Mix {
    fn finish(&self) -> u64 {
        self.0 ^ (self.0 >> 29)
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    fn write_u64(&mut self, value: u64) {
        self.0 = (self.0 ^ value).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

/// Interned texts: each distinct one stored once.
#[derive(Default)]
struct Interned {
    ids: HashMap<Arc<str>, u32, BuildHasherDefault<Mix>>,
    texts: Vec<Arc<str>>,
}

impl Interned {
    fn id(&mut self, text: &str) -> u32 {
        if let Some(id) = self.ids.get(text) {
            return *id;
        }
        let shared: Arc<str> = Arc::from(text);
        let id = self.texts.len() as u32;
        self.texts.push(shared.clone());
        self.ids.insert(shared, id);
        id
    }
}

/// Where a build's profile traits come from.
pub(crate) enum TraitSource<'a> {
    /// Every identify call in `events`.
    Events,
    /// Every identify call in `events`, already read (see [`identify_rows`]).
    Calls(&'a [RecordBatch]),
    /// The people's rows of `events`, already read (see [`scoped_events`]).
    Rows(&'a [(Option<i32>, RecordBatch)]),
    /// The stored state (`user_traits` rows) of the people and of the people merged into
    /// them (`merged`: from → into), and the identify calls this build resolved or moved.
    State {
        stored: &'a [RecordBatch],
        merged: &'a HashMap<u32, u32>,
        identified: &'a [RecordBatch],
    },
}

/// A build's profile traits: `profile`, one row per person with traits (`profile_user_id`, a
/// typed column per standard, `traits`), and `state`, their rows of `user_traits`.
pub(crate) struct Profile {
    pub profile: RecordBatch,
    pub state: RecordBatch,
}

/// Folds identify traits into one row per person: the latest non-null value of each key,
/// by event time (on a tie, the greater value, so the result does not depend on the order
/// rows are read in). Traits with a standard in `fields` become typed columns; the rest, and
/// values a standard refuses, stay in `traits` as JSON. Folding is idempotent: a stored state
/// and the calls it already holds give that state again.
pub(crate) async fn profile(
    events: &Table,
    people: &People,
    fields: &[&FieldStandard],
    identity_traits: &HashSet<String>,
    source: TraitSource<'_>,
) -> Result<Profile> {
    let folds = match source {
        TraitSource::Rows(rows) => {
            let mut fold = TraitFold::default();
            for (_, batch) in rows {
                fold.add(&identify_rows(batch)?, people, identity_traits)?;
            }
            vec![fold]
        }
        TraitSource::Calls(calls) => fold_on_cores(calls, people, identity_traits)?,
        TraitSource::State {
            stored,
            merged,
            identified,
        } => {
            let mut fold = TraitFold::default();
            for batch in stored {
                fold.add_stored(batch, people, merged)?;
            }
            for batch in identified {
                fold.add(batch, people, identity_traits)?;
            }
            vec![fold]
        }
        TraitSource::Events => {
            let mut fold = TraitFold::default();
            let ctx = SessionContext::new();
            let filter = col("event_type")
                .eq(lit("identify"))
                .and(col("user_id").is_not_null())
                .and(col("properties").is_not_null());
            let stream = scan(
                &ctx,
                events,
                &["user_id", "event_time", "properties"],
                Some(filter),
            )
            .await?;
            for_each_batch(stream, |batch| fold.add(batch, people, identity_traits)).await?;
            vec![fold]
        }
    };
    let folded = Folded::new(&folds);
    let state = folded.state(people)?;
    let profile = folded.finish(people, fields)?;
    Ok(Profile { profile, state })
}

/// Identify calls folded on every core: each core takes the people of one range of slots, so
/// every person's traits are folded by one core, and the folds, in the order of their
/// ranges, hold the people in order.
fn fold_on_cores(
    calls: &[RecordBatch],
    people: &People,
    identity_traits: &HashSet<String>,
) -> Result<Vec<TraitFold>> {
    let mut slots = 0usize;
    for batch in calls {
        let users = ints(batch, "user_id")?;
        for i in 0..batch.num_rows() {
            if let Some(slot) = get_int(&users, i).and_then(|u| people.slot(u)) {
                slots = slots.max(slot + 1);
            }
        }
    }
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    fold_in_parts(
        calls,
        people,
        identity_traits,
        slots,
        threads.clamp(1, slots.div_ceil(1 << 12).max(1)),
    )
}

/// [`fold_on_cores`] with the slots below `slots` cut into `parts` ranges.
fn fold_in_parts(
    calls: &[RecordBatch],
    people: &People,
    identity_traits: &HashSet<String>,
    slots: usize,
    parts: usize,
) -> Result<Vec<TraitFold>> {
    let ranges: Vec<std::ops::Range<usize>> = (0..parts)
        .map(|t| t * slots / parts..(t + 1) * slots / parts)
        .collect();
    std::thread::scope(|scope| {
        let handles: Vec<_> = ranges
            .into_iter()
            .map(|range| {
                scope.spawn(move || {
                    let mut fold = TraitFold {
                        range: Some(range),
                        ..TraitFold::default()
                    };
                    for batch in calls {
                        fold.add(batch, people, identity_traits)?;
                    }
                    Ok(fold)
                })
            })
            .collect();
        handles.into_iter().map(join).collect()
    })
}

/// The identify calls among rows of `events`: their `user_id`, `event_time` and `properties`.
pub(crate) fn identify_rows(batch: &RecordBatch) -> Result<RecordBatch> {
    let types = column(batch, "event_type")?;
    let identify = arrow::compute::kernels::cmp::eq(
        &types,
        &Scalar::new(arrow::compute::cast(
            &StringArray::from(vec!["identify"]),
            types.data_type(),
        )?),
    )?;
    let schema = batch.schema();
    let kept = ["user_id", "event_time", "properties"]
        .iter()
        .map(|name| schema.index_of(name))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    Ok(arrow::compute::filter_record_batch(
        &batch.project(&kept)?,
        &identify,
    )?)
}

/// The stored `user_traits` rows of `people` and of the people merged into them.
pub(crate) async fn stored_traits(
    table: &Table,
    people: &People,
    merged: &HashMap<u32, u32>,
) -> Result<Vec<RecordBatch>> {
    let wanted = UserSet::new(
        people
            .scope
            .iter()
            .flatten()
            .chain(merged.keys())
            .map(|u| i64::from(*u)),
    );
    rows_of_users(table, wanted, Some(&["user_id", "traits"])).await
}

/// A kept value: when it was set, and where its text is in the fold's `texts`.
#[derive(Clone, Copy)]
struct Kept {
    at: i64,
    start: usize,
    len: usize,
}

/// The latest value of each trait of each person (of the people whose slots are in `range`,
/// when it is set).
#[derive(Default)]
struct TraitFold {
    range: Option<std::ops::Range<usize>>,
    keys: Interned,
    /// The texts of the kept values, one after another; a value replaced by a later one
    /// stays, unread. Values are compared as texts where their times tie, and never looked
    /// up, so they are not interned.
    texts: String,
    latest: HashMap<u64, Kept, BuildHasherDefault<Mix>>,
    /// The value being folded, as JSON text.
    value: String,
}

impl TraitFold {
    /// Folds in the identify rows of `batch`.
    fn add(
        &mut self,
        batch: &RecordBatch,
        people: &People,
        identity_traits: &HashSet<String>,
    ) -> Result<()> {
        let (users, times, traits) = (
            ints(batch, "user_id")?,
            ints(batch, "event_time")?,
            text(batch, "properties")?,
        );
        for i in 0..batch.num_rows() {
            let Some(slot) = get_int(&users, i).and_then(|u| people.slot(u)) else {
                continue;
            };
            if self.range.as_ref().is_some_and(|r| !r.contains(&slot)) {
                continue;
            }
            let Some(t) = get(&traits, i) else {
                continue;
            };
            let Ok(Value::Object(map)) = serde_json::from_str::<Value>(t) else {
                continue;
            };
            let at = get_int(&times, i).unwrap_or(i64::MIN);
            for (k, v) in map {
                if v.is_null() || identity_traits.contains(&k) {
                    continue;
                }
                self.fold(slot, &k, at, &v);
            }
        }
        Ok(())
    }

    /// Folds in stored `user_traits` rows, each person's traits going to the person they
    /// were merged into, if any.
    fn add_stored(
        &mut self,
        batch: &RecordBatch,
        people: &People,
        merged: &HashMap<u32, u32>,
    ) -> Result<()> {
        let (users, traits) = (ints(batch, "user_id")?, text(batch, "traits")?);
        for i in 0..batch.num_rows() {
            let (Some(user), Some(t)) = (get_int(&users, i), get(&traits, i)) else {
                continue;
            };
            let user = u32::try_from(user)
                .map(|u| merged.get(&u).copied().unwrap_or(u))
                .map_err(|_| Error::Internal(format!("user_traits holds user id {user}")))?;
            let Some(slot) = people.slot(i64::from(user)) else {
                continue;
            };
            let Ok(Value::Object(map)) = serde_json::from_str::<Value>(t) else {
                return Err(Error::Internal(format!(
                    "user_traits of user {user} is not an object"
                )));
            };
            for (k, entry) in map {
                let (Some(at), Some(v)) = (entry.get(0).and_then(Value::as_i64), entry.get(1))
                else {
                    return Err(Error::Internal(format!(
                        "user_traits of user {user}: trait '{k}' is not [time, value]"
                    )));
                };
                self.fold(slot, &k, at, v);
            }
        }
        Ok(())
    }

    /// Keeps `value` for trait `key` of the person in `slot` if it is later than the kept one
    /// (or as late and greater, as JSON text).
    fn fold(&mut self, slot: usize, key: &str, at: i64, value: &Value) {
        let TraitFold {
            keys,
            texts,
            latest,
            value: text,
            ..
        } = self;
        let word = ((slot as u64) << 32) | u64::from(keys.id(key));
        text.clear();
        let _ = write!(text, "{value}");
        let keep = |texts: &mut String| {
            let start = texts.len();
            texts.push_str(text);
            Kept {
                at,
                start,
                len: text.len(),
            }
        };
        match latest.entry(word) {
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(keep(texts));
            }
            std::collections::hash_map::Entry::Occupied(mut slot) => {
                let kept = *slot.get();
                if at > kept.at
                    || (at == kept.at && text.as_str() > &texts[kept.start..kept.start + kept.len])
                {
                    slot.insert(keep(texts));
                }
            }
        }
    }
}

/// A person's trait: (slot, name, time, value as JSON text).
type Entry<'a> = (u32, u32, i64, &'a str);

/// The traits of folds, each person's in the order of their names, people in order.
struct Folded<'a> {
    /// Trait names, in order.
    names: Vec<&'a str>,
    /// By slot, then name.
    entries: Vec<Entry<'a>>,
    /// Runs of people whose rows are made side by side: one per core.
    runs: usize,
}

impl<'a> Folded<'a> {
    /// `folds` holding people of ranges in order, or one fold: each fold's traits are
    /// sorted on a core of their own.
    fn new(folds: &'a [TraitFold]) -> Folded<'a> {
        let mut names: Vec<&str> = folds
            .iter()
            .flat_map(|f| f.keys.texts.iter().map(|k| k.as_ref()))
            .collect();
        names.sort_unstable();
        names.dedup();
        let parts: Vec<Vec<Entry<'a>>> = std::thread::scope(|scope| {
            let handles: Vec<_> = folds
                .iter()
                .map(|fold| {
                    let names = &names;
                    scope.spawn(move || {
                        let rank: Vec<u32> = fold
                            .keys
                            .texts
                            .iter()
                            .map(|k| names.partition_point(|n| *n < k.as_ref()) as u32)
                            .collect();
                        let mut entries: Vec<Entry<'a>> = fold
                            .latest
                            .iter()
                            .map(|(word, kept)| {
                                (
                                    (word >> 32) as u32,
                                    rank[(word & 0xffff_ffff) as usize],
                                    kept.at,
                                    &fold.texts[kept.start..kept.start + kept.len],
                                )
                            })
                            .collect();
                        entries.sort_unstable_by_key(|(slot, name, ..)| (*slot, *name));
                        entries
                    })
                })
                .collect();
            handles.into_iter().map(join).collect()
        });
        let mut entries = Vec::with_capacity(parts.iter().map(Vec::len).sum());
        for part in parts {
            entries.extend(part);
        }
        debug_assert!(entries.is_sorted_by_key(|(slot, name, ..)| (*slot, *name)));
        Folded {
            names,
            entries,
            runs: std::thread::available_parallelism().map_or(1, usize::from),
        }
    }

    /// The `user_traits` rows of the people folded: their user id and an object of trait
    /// name → [time, value].
    fn state(&self, people: &People) -> Result<RecordBatch> {
        // Each key as a JSON string, once.
        let keys: Vec<String> = self
            .names
            .iter()
            .map(|k| Value::String(k.to_string()).to_string())
            .collect();
        self.on_cores(|entries| state_rows(entries, &keys, people))
    }

    /// `rows` of the entries of a run of people, on every core: the entries cut into one
    /// run per core between two people, the rows of each run made on its own thread.
    fn on_cores(
        &self,
        rows: impl Fn(&[Entry<'a>]) -> Result<RecordBatch> + Sync,
    ) -> Result<RecordBatch> {
        let mut runs = Vec::with_capacity(self.runs);
        let mut rest = self.entries.as_slice();
        for t in (1..=self.runs.max(1)).rev() {
            let mut cut = rest.len() / t;
            while cut > 0 && cut < rest.len() && rest[cut - 1].0 == rest[cut].0 {
                cut += 1;
            }
            let (run, tail) = rest.split_at(cut);
            runs.push(run);
            rest = tail;
        }
        let batches: Vec<RecordBatch> = std::thread::scope(|scope| {
            let handles: Vec<_> = runs
                .into_iter()
                .map(|run| {
                    let rows = &rows;
                    scope.spawn(move || rows(run))
                })
                .collect();
            handles.into_iter().map(join).collect::<Result<_>>()
        })?;
        let schema = batches
            .first()
            .map(RecordBatch::schema)
            .ok_or_else(|| Error::Internal("no rows of traits made".into()))?;
        Ok(arrow::compute::concat_batches(&schema, &batches)?)
    }

    /// One row per person with traits.
    fn finish(&self, people: &People, fields: &[&FieldStandard]) -> Result<RecordBatch> {
        self.on_cores(|entries| self.profile_rows(entries, people, fields))
    }

    /// The profile rows of the people of `entries`.
    fn profile_rows(
        &self,
        entries: &[Entry<'a>],
        people: &People,
        fields: &[&FieldStandard],
    ) -> Result<RecordBatch> {
        let mut ids = Int64Builder::new();
        let mut columns: Vec<Typed> = fields.iter().map(|f| Typed::new(f)).collect();
        let mut rest = StringBuilder::new();
        for person in people_of(entries) {
            let mut traits = Map::new();
            for (_, name, _, value) in person {
                let value = serde_json::from_str(value).unwrap_or(Value::Null);
                traits.insert(self.names[*name as usize].to_string(), value);
            }
            ids.append_value(people.user(person[0].0 as usize));
            for (f, column) in fields.iter().zip(columns.iter_mut()) {
                if column.push(traits.get(&f.name)) {
                    traits.remove(&f.name);
                }
            }
            if traits.is_empty() {
                rest.append_null();
            } else {
                rest.append_value(Value::Object(traits).to_string());
            }
        }
        // Every run's rows take one schema, whichever columns of a run hold a null: every
        // column but the id may.
        let mut arrays: Vec<(String, ArrayRef, bool)> =
            vec![("profile_user_id".into(), Arc::new(ids.finish()), false)];
        for (f, column) in fields.iter().zip(columns) {
            arrays.push((f.name.clone(), column.finish(), true));
        }
        arrays.push(("traits".into(), Arc::new(rest.finish()), true));
        Ok(RecordBatch::try_from_iter_with_nullable(arrays)?)
    }
}

/// The `user_traits` rows of the people of `entries` (`keys`: each name as JSON text).
fn state_rows(entries: &[Entry<'_>], keys: &[String], people: &People) -> Result<RecordBatch> {
    // The texts are sized before they are written: a builder grown by doubling copied
    // (and faulted in) hundreds of megabytes at a time. A time takes at most 20 bytes.
    let size: usize = entries
        .iter()
        .map(|(_, name, _, value)| keys[*name as usize].len() + value.len() + 26)
        .sum();
    let people_count = people_of(entries).count();
    let mut ids = Int64Builder::with_capacity(people_count);
    let mut traits = StringBuilder::with_capacity(people_count, size + 2 * people_count);
    let mut text = String::new();
    for person in people_of(entries) {
        text.clear();
        text.push('{');
        for (n, (_, name, at, value)) in person.iter().enumerate() {
            if n > 0 {
                text.push(',');
            }
            text.push_str(&keys[*name as usize]);
            let _ = write!(text, ":[{at},{value}]");
        }
        text.push('}');
        ids.append_value(people.user(person[0].0 as usize));
        traits.append_value(&text);
    }
    Ok(RecordBatch::try_from_iter_with_nullable(vec![
        ("user_id", Arc::new(ids.finish()) as ArrayRef, false),
        ("traits", Arc::new(traits.finish()) as ArrayRef, false),
    ])?)
}

/// Each person's entries of `entries`.
fn people_of<'e, 'a>(entries: &'e [Entry<'a>]) -> impl Iterator<Item = &'e [Entry<'a>]> {
    entries.chunk_by(|a, b| a.0 == b.0)
}

/// `batch` as a table in two partitions, so both cores work on the joins it feeds.
pub(crate) fn table(batch: RecordBatch) -> Result<MemTable> {
    let mut parts = vec![Vec::new(), Vec::new()];
    for (i, b) in super::split_batch(&batch, 65_536).into_iter().enumerate() {
        parts[i % 2].push(b);
    }
    Ok(MemTable::try_new(batch.schema(), parts)?)
}
/// One column of typed profile values being built.
enum Typed {
    Text(StringBuilder, Vec<String>),
    Int(Int64Builder, Option<[f64; 2]>),
    Float(Float64Builder, Option<[f64; 2]>),
    Decimal(Decimal128Builder),
    Bool(BooleanBuilder),
    Time(TimestampMicrosecondBuilder),
}

impl Typed {
    fn new(field: &FieldStandard) -> Typed {
        match field.value_type {
            ValueType::Int => Typed::Int(Int64Builder::new(), field.range),
            ValueType::Float => Typed::Float(Float64Builder::new(), field.range),
            ValueType::Decimal => Typed::Decimal(
                Decimal128Builder::new().with_data_type(field.value_type.arrow_type()),
            ),
            ValueType::Bool => Typed::Bool(BooleanBuilder::new()),
            ValueType::Time => Typed::Time(TimestampMicrosecondBuilder::new().with_timezone("UTC")),
            ValueType::Enum => Typed::Text(StringBuilder::new(), field.values.clone()),
            _ => Typed::Text(StringBuilder::new(), Vec::new()),
        }
    }

    /// Appends `value` if the standard accepts it; false (and a null) when it does not.
    fn push(&mut self, value: Option<&Value>) -> bool {
        let in_range =
            |x: f64, range: &Option<[f64; 2]>| range.is_none_or(|[lo, hi]| x >= lo && x <= hi);
        let number = |v: &Value| match v {
            Value::Number(n) => n.as_f64(),
            Value::String(s) => s.trim().parse::<f64>().ok(),
            _ => None,
        };
        let Some(value) = value.filter(|v| !v.is_null()) else {
            self.null();
            return true;
        };
        let ok = match self {
            Typed::Text(b, allowed) => {
                let s = match value {
                    Value::String(s) => s.trim().to_string(),
                    Value::Number(_) | Value::Bool(_) => value.to_string(),
                    _ => String::new(),
                };
                if s.is_empty() || (!allowed.is_empty() && !allowed.contains(&s)) {
                    false
                } else {
                    b.append_value(s);
                    true
                }
            }
            Typed::Int(b, range) => match number(value) {
                Some(x) if x.fract() == 0.0 && in_range(x, range) => {
                    b.append_value(x as i64);
                    true
                }
                _ => false,
            },
            Typed::Float(b, range) => match number(value) {
                Some(x) if in_range(x, range) => {
                    b.append_value(x);
                    true
                }
                _ => false,
            },
            Typed::Decimal(b) => match number(value) {
                Some(x) => {
                    b.append_value((x * 100.0).round() as i128);
                    true
                }
                None => false,
            },
            Typed::Bool(b) => match value {
                Value::Bool(x) => {
                    b.append_value(*x);
                    true
                }
                Value::String(s) if matches!(s.as_str(), "true" | "false") => {
                    b.append_value(s == "true");
                    true
                }
                _ => false,
            },
            Typed::Time(b) => match value
                .as_str()
                .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
            {
                Some(t) => {
                    b.append_value(t.timestamp_micros());
                    true
                }
                None => false,
            },
        };
        if !ok {
            self.null();
        }
        ok
    }

    fn null(&mut self) {
        match self {
            Typed::Text(b, _) => b.append_null(),
            Typed::Int(b, _) => b.append_null(),
            Typed::Float(b, _) => b.append_null(),
            Typed::Decimal(b) => b.append_null(),
            Typed::Bool(b) => b.append_null(),
            Typed::Time(b) => b.append_null(),
        }
    }

    fn finish(self) -> ArrayRef {
        match self {
            Typed::Text(mut b, _) => Arc::new(b.finish()),
            Typed::Int(mut b, _) => Arc::new(b.finish()),
            Typed::Float(mut b, _) => Arc::new(b.finish()),
            Typed::Decimal(mut b) => Arc::new(b.finish()),
            Typed::Bool(mut b) => Arc::new(b.finish()),
            Typed::Time(mut b) => Arc::new(b.finish()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_traits_follow_the_standard() {
        let field: FieldStandard = serde_json::from_value(serde_json::json!({
            "name": "age", "zh": "年龄", "en": "Age", "type": "int", "range": [0, 120]
        }))
        .expect("field");
        let mut column = Typed::new(&field);
        assert!(column.push(Some(&serde_json::json!(35))));
        assert!(column.push(Some(&serde_json::json!("41"))));
        assert!(!column.push(Some(&serde_json::json!(300))));
        assert!(!column.push(Some(&serde_json::json!("old"))));
        assert!(column.push(None));
        let array = column.finish();
        let array = array.as_any().downcast_ref::<Int64Array>().expect("ints");
        assert_eq!(array.value(0), 35);
        assert_eq!(array.value(1), 41);
        assert!(array.is_null(2) && array.is_null(3) && array.is_null(4));
    }

    fn calls(rows: &[(i64, i64, &str)]) -> RecordBatch {
        RecordBatch::try_from_iter(vec![
            (
                "user_id",
                Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.0))) as ArrayRef,
            ),
            (
                "event_time",
                Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.1))),
            ),
            (
                "properties",
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.2))),
            ),
        ])
        .expect("a batch of calls")
    }

    /// The stored traits of each person, as text.
    fn state_of(batches: &[RecordBatch]) -> Vec<(i64, String)> {
        let people = People::new(None);
        let mut fold = TraitFold::default();
        for batch in batches {
            fold.add(batch, &people, &HashSet::from(["phone".to_string()]))
                .expect("folded");
        }
        let state = Folded::new(&[fold]).state(&people).expect("state");
        let ids = ints(&state, "user_id").expect("ids");
        let traits = text(&state, "traits").expect("traits");
        (0..state.num_rows())
            .map(|i| (ids.value(i), traits.value(i).to_string()))
            .collect()
    }

    #[test]
    fn calls_folded_in_ranges_of_people_give_what_one_fold_gives() {
        // 3,000 people, each called four times with traits whose times tie now and then;
        // person 7's traits are worked out below by a plain loop over their calls. People
        // from 2,000 on have a city alone, so the last rows hold nulls the first do not.
        let names = ["city", "age", "note", "b"];
        let call = |n: i64| {
            let (user, at) = (n * 7919 % 3000, n * 13 % 7);
            let value = format!("\"v{}\"", n % 11);
            let traits = if user < 2000 {
                vec![
                    (names[(n / 7 % 4) as usize], value),
                    ("zone", format!("\"z{}\"", n % 3)),
                ]
            } else {
                vec![("city", value)]
            };
            (user, at, traits)
        };
        let rows: Vec<(i64, i64, String)> = (0..12_000i64)
            .map(|n| {
                let (user, at, traits) = call(n);
                let traits: Vec<String> = traits
                    .iter()
                    .map(|(k, v)| format!("\"{k}\": {v}"))
                    .collect();
                (
                    user,
                    at,
                    format!("{{{}, \"phone\": \"x\"}}", traits.join(", ")),
                )
            })
            .collect();
        let batches: Vec<RecordBatch> = rows
            .chunks(1000)
            .map(|chunk| {
                let chunk: Vec<(i64, i64, &str)> =
                    chunk.iter().map(|(u, t, p)| (*u, *t, p.as_str())).collect();
                calls(&chunk)
            })
            .collect();
        let people = People::new(None);
        let traits = HashSet::from(["phone".to_string()]);
        // A typed column: people without a city have a null there, people with no other
        // trait a null in `traits`.
        let city: FieldStandard = serde_json::from_value(serde_json::json!({
            "name": "city", "zh": "城市", "en": "City", "type": "string"
        }))
        .expect("field");
        let folded = |parts: usize| {
            let folds = fold_in_parts(&batches, &people, &traits, 3000, parts).expect("folded");
            assert_eq!(folds.len(), parts);
            let mut folded = Folded::new(&folds);
            // Rows made in as many runs of people as there are folds, plus one.
            folded.runs = parts + 1;
            let state = folded.state(&people).expect("state");
            let profile = folded.finish(&people, &[&city]).expect("profile");
            let cities = text(&profile, "city").expect("cities");
            let ids = ints(&state, "user_id").expect("ids");
            let texts = text(&state, "traits").expect("traits");
            let rest = text(&profile, "traits").expect("traits");
            (0..state.num_rows())
                .map(|i| {
                    (
                        ids.value(i),
                        texts.value(i).to_string(),
                        cities.is_valid(i).then(|| cities.value(i).to_string()),
                        rest.is_valid(i).then(|| rest.value(i).to_string()),
                    )
                })
                .collect::<Vec<_>>()
        };
        let one = folded(1);
        assert_eq!(one.len(), 3000);
        assert!(
            one[..2000].iter().all(|p| p.3.is_some()) && one[2000..].iter().all(|p| p.3.is_none())
        );
        assert!(one.iter().any(|p| p.2.is_none()) && one.iter().any(|p| p.2.is_some()));
        for parts in [2, 3, 4, 7] {
            assert_eq!(folded(parts), one, "{parts} parts");
        }
        // Person 7: the calls n with n * 7919 % 3000 == 7.
        let mut latest: std::collections::BTreeMap<&str, (i64, String)> = Default::default();
        for (_, at, traits) in (0..12_000i64).map(call).filter(|(user, ..)| *user == 7) {
            for (name, value) in traits {
                let kept = latest.entry(name).or_insert((at, value.clone()));
                if at > kept.0 || (at == kept.0 && value > kept.1) {
                    *kept = (at, value);
                }
            }
        }
        let expected = format!(
            "{{{}}}",
            latest
                .iter()
                .map(|(name, (at, value))| format!("\"{name}\":[{at},{value}]"))
                .collect::<Vec<_>>()
                .join(",")
        );
        assert_eq!(one[7].1, expected);
    }

    #[test]
    fn stored_traits_are_the_latest_by_time_in_the_order_of_their_names_whatever_the_order_of_calls()
     {
        let first = calls(&[
            (
                2,
                10,
                r#"{"zone": "east", "age": 30, "phone": "+8613800000000"}"#,
            ),
            (1, 10, r#"{"city": "Hangzhou"}"#),
        ]);
        let second = calls(&[
            (2, 20, r#"{"age": 31, "city": "Wuxi", "note": null}"#),
            (1, 5, r#"{"city": "Ningbo", "b": [1, 2]}"#),
        ]);
        let expected = vec![
            (1, r#"{"b":[5,[1,2]],"city":[10,"Hangzhou"]}"#.to_string()),
            (
                2,
                r#"{"age":[20,31],"city":[20,"Wuxi"],"zone":[10,"east"]}"#.to_string(),
            ),
        ];
        assert_eq!(state_of(&[first.clone(), second.clone()]), expected);
        assert_eq!(state_of(&[second, first]), expected);
    }
}
