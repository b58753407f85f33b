//! `window_funnel_people(window, 'modes', user_id, event_time, step1, …)`: the funnel of many
//! people in one aggregate, for reports over the whole warehouse.
//!
//! Grouping events by person makes the hash table as large as the people; this aggregate is
//! grouped by a bucket of people instead (`user_id / 65536`: dense ids make buckets of 65,536
//! people), keeps each bucket's events in one list as they arrive, sorts it by (person, time)
//! once and walks each person's run as [`crate::window_funnel`] does. It answers, per bucket,
//! a list of `{user_id, times}` (the step times of each person's deepest chain; `times` is
//! NULL when an exclusion event falls inside it). Its states merge like any aggregate's, so it
//! runs partitioned or distributed.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Int64Array, LargeBinaryArray, ListArray, StructArray,
};
use arrow::buffer::{NullBuffer, OffsetBuffer};
use arrow::datatypes::{DataType, Field, FieldRef, Fields, Int64Type};
use datafusion::common::ScalarValue;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, EmitTo, GroupsAccumulator, Signature, Volatility,
};
use datafusion::prelude::SessionContext;

use crate::window_funnel::{Event, FunnelConfig, Walk, kept, sort_events, step_events, times_list};

/// People per bucket: `GROUP BY user_id / BUCKET`.
pub const BUCKET: i64 = 65_536;

/// Makes `window_funnel_people` callable in `ctx`.
pub fn register(ctx: &SessionContext) {
    ctx.register_udaf(AggregateUDF::from(WindowFunnelPeople::default()));
}

/// One person's event, in 16 bytes.
#[derive(Debug, Clone, Copy)]
struct PersonEvent {
    time: i64,
    user: u32,
    step: u8,
    row: u8,
}

/// Bytes of one event in a state.
const PACKED: usize = 14;

impl PersonEvent {
    fn new(user: u32, event: Event) -> PersonEvent {
        PersonEvent {
            time: event.time,
            user,
            step: event.step,
            row: event.row,
        }
    }

    fn event(self) -> Event {
        Event {
            time: self.time,
            step: self.step,
            row: self.row,
        }
    }

    fn pack(self, out: &mut Vec<u8>) {
        let mut bytes = [0u8; PACKED];
        bytes[..8].copy_from_slice(&self.time.to_le_bytes());
        bytes[8..12].copy_from_slice(&self.user.to_le_bytes());
        bytes[12] = self.step;
        bytes[13] = self.row;
        out.extend_from_slice(&bytes);
    }

    fn unpack(bytes: &[u8]) -> Option<PersonEvent> {
        Some(PersonEvent {
            time: i64::from_le_bytes(bytes.get(0..8)?.try_into().ok()?),
            user: u32::from_le_bytes(bytes.get(8..12)?.try_into().ok()?),
            step: *bytes.get(12)?,
            row: *bytes.get(13)?,
        })
    }
}

/// The packed events of `bytes`, ordered by person and in arrival order within a person:
/// a counting sort when the people are a dense range (a bucket), else a comparison sort.
fn by_person(bytes: &[u8]) -> DfResult<Vec<PersonEvent>> {
    let corrupt = || DataFusionError::Internal("window_funnel_people packed events".into());
    if !bytes.len().is_multiple_of(PACKED) {
        return Err(corrupt());
    }
    let user_of = |chunk: &[u8]| u32::from_le_bytes([chunk[8], chunk[9], chunk[10], chunk[11]]);
    let (mut low, mut high) = (u32::MAX, 0u32);
    for chunk in bytes.chunks_exact(PACKED) {
        let user = user_of(chunk);
        low = low.min(user);
        high = high.max(user);
    }
    let n = bytes.len() / PACKED;
    if n == 0 {
        return Ok(Vec::new());
    }
    let span = (high - low) as usize + 1;
    if span > 4 * n + (1 << 16) {
        let mut events = bytes
            .chunks_exact(PACKED)
            .map(PersonEvent::unpack)
            .collect::<Option<Vec<_>>>()
            .ok_or_else(corrupt)?;
        events.sort_by_key(|e| e.user);
        return Ok(events);
    }
    let mut starts = vec![0usize; span + 1];
    for chunk in bytes.chunks_exact(PACKED) {
        starts[(user_of(chunk) - low) as usize + 1] += 1;
    }
    for i in 1..starts.len() {
        starts[i] += starts[i - 1];
    }
    let mut sorted = vec![
        PersonEvent {
            time: 0,
            user: 0,
            step: 0,
            row: 0
        };
        n
    ];
    for chunk in bytes.chunks_exact(PACKED) {
        let event = PersonEvent::unpack(chunk).ok_or_else(corrupt)?;
        let slot = &mut starts[(event.user - low) as usize];
        sorted[*slot] = event;
        *slot += 1;
    }
    Ok(sorted)
}

fn people_type() -> DataType {
    DataType::List(Arc::new(Field::new_list_field(
        DataType::Struct(people_fields()),
        true,
    )))
}

fn people_fields() -> Fields {
    Fields::from(vec![
        Field::new("user_id", DataType::Int64, false),
        Field::new("times", times_list(), true),
    ])
}

/// See the module documentation.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct WindowFunnelPeople {
    signature: Signature,
}

impl Default for WindowFunnelPeople {
    fn default() -> Self {
        WindowFunnelPeople {
            signature: Signature::variadic_any(Volatility::Immutable),
        }
    }
}

impl AggregateUDFImpl for WindowFunnelPeople {
    fn name(&self) -> &str {
        "window_funnel_people"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, args: &[DataType]) -> DfResult<DataType> {
        if args.len() < 5 {
            return Err(DataFusionError::Plan(
                "window_funnel_people(window, modes, user_id, time, step1, …) takes at least one step"
                    .into(),
            ));
        }
        Ok(people_type())
    }

    fn accumulator(&self, args: AccumulatorArgs) -> DfResult<Box<dyn Accumulator>> {
        Ok(Box::new(PeopleAccumulator(PeopleGroups {
            config: FunnelConfig::from_args(&args, 4)?,
            groups: vec![Vec::new()],
            bytes: 0,
        })))
    }

    fn groups_accumulator_supported(&self, _args: AccumulatorArgs) -> bool {
        true
    }

    fn create_groups_accumulator(
        &self,
        args: AccumulatorArgs,
    ) -> DfResult<Box<dyn GroupsAccumulator>> {
        Ok(Box::new(PeopleGroups {
            config: FunnelConfig::from_args(&args, 4)?,
            groups: Vec::new(),
            bytes: 0,
        }))
    }

    fn state_fields(&self, args: StateFieldsArgs) -> DfResult<Vec<FieldRef>> {
        Ok(vec![Arc::new(Field::new(
            format!("{}[events]", args.name),
            DataType::LargeBinary,
            true,
        ))])
    }
}

/// Each row's person and events.
fn person_events(
    values: &[ArrayRef],
    strict_order: bool,
    mut each: impl FnMut(usize, PersonEvent),
) -> DfResult<()> {
    let Some(users) = values.get(2) else {
        return Err(DataFusionError::Internal(
            "window_funnel_people arguments".into(),
        ));
    };
    let users = arrow::compute::cast(users, &DataType::Int64)?;
    let users = users.as_primitive::<Int64Type>();
    let mut failed = None;
    step_events(values, 3, strict_order, |row, event| {
        if users.is_null(row) {
            return;
        }
        match u32::try_from(users.value(row)) {
            Ok(user) => each(row, PersonEvent::new(user, event)),
            Err(_) => failed = Some(users.value(row)),
        }
    })?;
    match failed {
        Some(user) => Err(DataFusionError::Execution(format!(
            "window_funnel_people: user_id {user} is not a person id (0 to 4294967295)"
        ))),
        None => Ok(()),
    }
}

/// Each group's packed events: one binary value per group.
fn state_of(groups: Vec<Vec<u8>>) -> Vec<ArrayRef> {
    let mut offsets = vec![0i64];
    let bytes = if groups.len() == 1 {
        let only = groups.into_iter().next().unwrap_or_default();
        offsets.push(only.len() as i64);
        only
    } else {
        let mut bytes = Vec::with_capacity(groups.iter().map(Vec::len).sum());
        for group in groups {
            bytes.extend_from_slice(&group);
            offsets.push(bytes.len() as i64);
        }
        bytes
    };
    vec![Arc::new(LargeBinaryArray::new(
        OffsetBuffer::new(offsets.into()),
        bytes.into(),
        None,
    ))]
}

/// Each state row's packed events.
fn packed_rows(states: &[ArrayRef], mut each: impl FnMut(usize, &[u8])) -> DfResult<()> {
    let Some(packed) = states.first().and_then(|a| a.as_binary_opt::<i64>()) else {
        return Err(DataFusionError::Internal(
            "window_funnel_people state is not binary".into(),
        ));
    };
    for row in 0..packed.len() {
        if packed.is_null(row) {
            continue;
        }
        let bytes = packed.value(row);
        if !bytes.len().is_multiple_of(PACKED) {
            return Err(DataFusionError::Internal(
                "window_funnel_people state length".into(),
            ));
        }
        each(row, bytes);
    }
    Ok(())
}

/// Per group, one list of every person's events.
struct PeopleGroups {
    config: FunnelConfig,
    /// Per group, its events packed.
    groups: Vec<Vec<u8>>,
    /// Bytes held.
    bytes: usize,
}

impl PeopleGroups {
    fn grow(&mut self, total: usize) {
        if self.groups.len() < total {
            self.groups.resize_with(total, Vec::new);
        }
    }

    /// The people of `taken` groups as a list of `{user_id, times}` per group.
    fn people(&mut self, taken: Vec<Vec<u8>>) -> DfResult<ArrayRef> {
        let mut walk = Walk::new(self.config.steps);
        let mut group_offsets = vec![0i32];
        let mut users = Vec::new();
        let mut time_offsets = vec![0i32];
        let mut times = Vec::new();
        let mut valid = Vec::new();
        let mut run: Vec<Event> = Vec::new();
        for packed in taken {
            self.bytes -= packed.len();
            let events = by_person(&packed)?;
            drop(packed);
            let mut start = 0;
            while start < events.len() {
                let user = events[start].user;
                let end = start
                    + events[start..]
                        .iter()
                        .position(|e| e.user != user)
                        .unwrap_or(events.len() - start);
                run.clear();
                run.extend(events[start..end].iter().map(|e| e.event()));
                sort_events(&mut run);
                let chain = self.config.chain_sorted(&mut walk, &run);
                users.push(i64::from(user));
                valid.push(chain.is_some());
                times.extend_from_slice(chain.unwrap_or_default());
                time_offsets.push(times.len() as i32);
                start = end;
            }
            group_offsets.push(users.len() as i32);
        }
        let chains = ListArray::new(
            Arc::new(Field::new_list_field(DataType::Int64, true)),
            OffsetBuffer::new(time_offsets.into()),
            Arc::new(Int64Array::from(times)),
            Some(NullBuffer::from(valid)),
        );
        let people = StructArray::new(
            people_fields(),
            vec![Arc::new(Int64Array::from(users)), Arc::new(chains)],
            None,
        );
        Ok(Arc::new(ListArray::new(
            Arc::new(Field::new_list_field(
                DataType::Struct(people_fields()),
                true,
            )),
            OffsetBuffer::new(group_offsets.into()),
            Arc::new(people),
            None,
        )))
    }
}

impl GroupsAccumulator for PeopleGroups {
    fn update_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        opt_filter: Option<&BooleanArray>,
        total_num_groups: usize,
    ) -> DfResult<()> {
        self.grow(total_num_groups);
        let groups = &mut self.groups;
        let mut added = 0;
        person_events(values, self.config.modes.strict_order, |row, event| {
            if kept(opt_filter, row) {
                event.pack(&mut groups[group_indices[row]]);
                added += PACKED;
            }
        })?;
        self.bytes += added;
        Ok(())
    }

    fn evaluate(&mut self, emit_to: EmitTo) -> DfResult<ArrayRef> {
        let taken = emit_to.take_needed(&mut self.groups);
        self.people(taken)
    }

    fn state(&mut self, emit_to: EmitTo) -> DfResult<Vec<ArrayRef>> {
        let taken = emit_to.take_needed(&mut self.groups);
        self.bytes -= taken.iter().map(Vec::len).sum::<usize>();
        Ok(state_of(taken))
    }

    fn merge_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        total_num_groups: usize,
    ) -> DfResult<()> {
        self.grow(total_num_groups);
        let groups = &mut self.groups;
        let mut added = 0;
        packed_rows(values, |row, bytes| {
            groups[group_indices[row]].extend_from_slice(bytes);
            added += bytes.len();
        })?;
        self.bytes += added;
        Ok(())
    }

    fn convert_to_state(
        &self,
        values: &[ArrayRef],
        opt_filter: Option<&BooleanArray>,
    ) -> DfResult<Vec<ArrayRef>> {
        let rows = values.first().map_or(0, |v| v.len());
        let mut offsets: Vec<i64> = Vec::with_capacity(rows + 1);
        offsets.push(0);
        let mut bytes = Vec::with_capacity(rows * PACKED);
        person_events(values, self.config.modes.strict_order, |row, event| {
            if kept(opt_filter, row) {
                // Close the values of the rows before this one.
                while offsets.len() <= row {
                    offsets.push(bytes.len() as i64);
                }
                event.pack(&mut bytes);
            }
        })?;
        while offsets.len() <= rows {
            offsets.push(bytes.len() as i64);
        }
        Ok(vec![Arc::new(LargeBinaryArray::new(
            OffsetBuffer::new(offsets.into()),
            bytes.into(),
            None,
        ))])
    }

    fn size(&self) -> usize {
        self.groups.capacity() * std::mem::size_of::<Vec<u8>>() + self.bytes
    }
}

/// The ungrouped form: one group.
struct PeopleAccumulator(PeopleGroups);

impl std::fmt::Debug for PeopleAccumulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PeopleAccumulator({} bytes)", self.0.bytes)
    }
}

impl Accumulator for PeopleAccumulator {
    fn update_batch(&mut self, values: &[ArrayRef]) -> DfResult<()> {
        let rows = values.first().map_or(0, |v| v.len());
        self.0.update_batch(values, &vec![0; rows], None, 1)
    }

    fn evaluate(&mut self) -> DfResult<ScalarValue> {
        let people = self.0.evaluate(EmitTo::All)?;
        Ok(ScalarValue::List(Arc::new(people.as_list::<i32>().clone())))
    }

    fn size(&self) -> usize {
        std::mem::size_of_val(self) + self.0.size()
    }

    fn state(&mut self) -> DfResult<Vec<ScalarValue>> {
        self.0
            .state(EmitTo::All)?
            .into_iter()
            .map(|a| ScalarValue::try_from_array(&a, 0))
            .collect()
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> DfResult<()> {
        let rows = states.first().map_or(0, |v| v.len());
        self.0.merge_batch(states, &vec![0; rows], 1)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use arrow::array::{Int64Array, RecordBatch, StringArray};
    use arrow::datatypes::Schema;
    use datafusion::datasource::MemTable;
    use datafusion::prelude::SessionConfig;

    use super::*;

    /// Deterministic pseudo-random numbers.
    fn next(state: &mut u64) -> u64 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *state
    }

    async fn per_person(ctx: &SessionContext, sql: &str) -> BTreeMap<i64, Option<Vec<i64>>> {
        let batches = ctx
            .sql(sql)
            .await
            .expect("plan")
            .collect()
            .await
            .expect("run");
        let mut out = BTreeMap::new();
        for batch in batches {
            let users = batch.column(0).as_primitive::<Int64Type>();
            let chains = batch.column(1).as_list::<i32>();
            for row in 0..batch.num_rows() {
                let chain = (!chains.is_null(row)).then(|| {
                    chains
                        .value(row)
                        .as_primitive::<Int64Type>()
                        .values()
                        .to_vec()
                });
                out.insert(users.value(row), chain);
            }
        }
        out
    }

    /// Buckets of people give every person the chain that grouping by person gives, across
    /// buckets, partitions, modes and exclusions.
    #[tokio::test]
    async fn buckets_agree_with_grouping_by_person() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("user_id", DataType::Int64, false),
            Field::new("t", DataType::Int64, false),
            Field::new("name", DataType::Utf8, false),
        ]));
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let names = ["a", "b", "c", "x", "y"];
        let partitions: Vec<Vec<RecordBatch>> = (0..3)
            .map(|_| {
                (0..4)
                    .map(|_| {
                        let rows: Vec<(i64, i64, &str)> = (0..500)
                            .map(|_| {
                                let user = (next(&mut state) % 300) as i64 * 701;
                                let t = (next(&mut state) % 1000) as i64;
                                (user, t, names[(next(&mut state) % 5) as usize])
                            })
                            .collect();
                        RecordBatch::try_new(
                            schema.clone(),
                            vec![
                                Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.0))),
                                Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.1))),
                                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.2))),
                            ],
                        )
                        .expect("batch")
                    })
                    .collect()
            })
            .collect();
        for config in [
            SessionConfig::new(),
            SessionConfig::new().with_target_partitions(1),
        ] {
            let ctx = SessionContext::new_with_config(config);
            crate::window_funnel::register(&ctx);
            register(&ctx);
            ctx.register_table(
                "ev",
                Arc::new(MemTable::try_new(schema.clone(), partitions.clone()).expect("table")),
            )
            .expect("register");
            let steps = "name = 'a', name = 'b', name = 'c'";
            for modes in [
                "",
                "strict_order",
                "strict_increase,strict_deduplication",
                "exclude:1-3",
            ] {
                let extra = if modes.starts_with("exclude") {
                    ", name = 'x'"
                } else {
                    ""
                };
                let by_person = per_person(
                    &ctx,
                    &format!(
                        "SELECT user_id, window_funnel(100, '{modes}', t, {steps}{extra}) \
                         FROM ev GROUP BY user_id"
                    ),
                )
                .await;
                let by_bucket = per_person(
                    &ctx,
                    &format!(
                        "SELECT p['user_id'], p['times'] FROM (SELECT unnest(people) AS p FROM \
                         (SELECT window_funnel_people(100, '{modes}', user_id, t, {steps}{extra}) \
                          AS people FROM ev GROUP BY user_id / {BUCKET}))"
                    ),
                )
                .await;
                assert_eq!(by_person.len(), 300, "{modes}");
                assert!(
                    by_person
                        .values()
                        .any(|c| c.as_ref().is_some_and(|c| c.len() == 3)),
                    "{modes}: some chains are complete"
                );
                assert_eq!(by_bucket, by_person, "{modes}");
            }
        }
    }
}
