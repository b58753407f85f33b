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

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, Int64Array, ListArray, StructArray};
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

/// One person's event.
#[derive(Debug, Clone, Copy)]
struct PersonEvent {
    user: u32,
    event: Event,
}

impl PersonEvent {
    fn code(self) -> i64 {
        i64::from(self.user) << 16 | self.event.code()
    }

    fn from_code(time: i64, code: i64) -> Option<PersonEvent> {
        Some(PersonEvent {
            user: u32::try_from(code >> 16).ok()?,
            event: Event::from_code(time, code & 0xffff)?,
        })
    }
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
            events: 0,
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
            events: 0,
        }))
    }

    fn state_fields(&self, args: StateFieldsArgs) -> DfResult<Vec<FieldRef>> {
        Ok(vec![
            Arc::new(Field::new(
                format!("{}[times]", args.name),
                times_list(),
                true,
            )),
            Arc::new(Field::new(
                format!("{}[codes]", args.name),
                times_list(),
                true,
            )),
        ])
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
            Ok(user) => each(row, PersonEvent { user, event }),
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

fn list(offsets: &OffsetBuffer<i32>, values: Vec<i64>) -> ArrayRef {
    Arc::new(ListArray::new(
        Arc::new(Field::new_list_field(DataType::Int64, true)),
        offsets.clone(),
        Arc::new(Int64Array::from(values)),
        None,
    ))
}

fn state_of<'a>(groups: impl Iterator<Item = &'a Vec<PersonEvent>>) -> Vec<ArrayRef> {
    let mut offsets = vec![0i32];
    let (mut times, mut codes) = (Vec::new(), Vec::new());
    for events in groups {
        times.extend(events.iter().map(|e| e.event.time));
        codes.extend(events.iter().map(|e| e.code()));
        offsets.push(times.len() as i32);
    }
    let offsets = OffsetBuffer::new(offsets.into());
    vec![list(&offsets, times), list(&offsets, codes)]
}

/// The events of state row `row`.
fn each_state_event(states: &[ArrayRef], mut each: impl FnMut(usize, PersonEvent)) -> DfResult<()> {
    let (Some(times), Some(codes)) = (
        states.first().and_then(|a| a.as_list_opt::<i32>()),
        states.get(1).and_then(|a| a.as_list_opt::<i32>()),
    ) else {
        return Err(DataFusionError::Internal(
            "window_funnel_people state is not two lists".into(),
        ));
    };
    let (Some(time_values), Some(code_values)) = (
        times.values().as_primitive_opt::<Int64Type>(),
        codes.values().as_primitive_opt::<Int64Type>(),
    ) else {
        return Err(DataFusionError::Internal(
            "window_funnel_people state lists are not of integers".into(),
        ));
    };
    let (t, c) = (times.value_offsets(), codes.value_offsets());
    for row in 0..times.len() {
        if times.is_null(row) || codes.is_null(row) {
            continue;
        }
        let ts = &time_values.values()[t[row] as usize..t[row + 1] as usize];
        let cs = &code_values.values()[c[row] as usize..c[row + 1] as usize];
        for (&time, &code) in ts.iter().zip(cs) {
            let event = PersonEvent::from_code(time, code).ok_or_else(|| {
                DataFusionError::Internal("window_funnel_people state code".into())
            })?;
            each(row, event);
        }
    }
    Ok(())
}

/// Per group, one list of every person's events.
struct PeopleGroups {
    config: FunnelConfig,
    groups: Vec<Vec<PersonEvent>>,
    events: usize,
}

impl PeopleGroups {
    fn grow(&mut self, total: usize) {
        if self.groups.len() < total {
            self.groups.resize_with(total, Vec::new);
        }
    }

    /// The people of `taken` groups as a list of `{user_id, times}` per group.
    fn people(&mut self, taken: Vec<Vec<PersonEvent>>) -> ArrayRef {
        let mut walk = Walk::new(self.config.steps);
        let mut group_offsets = vec![0i32];
        let mut users = Vec::new();
        let mut time_offsets = vec![0i32];
        let mut times = Vec::new();
        let mut valid = Vec::new();
        let mut run: Vec<Event> = Vec::new();
        for mut events in taken {
            self.events -= events.len();
            events.sort_unstable_by_key(|e| e.user);
            let mut start = 0;
            while start < events.len() {
                let user = events[start].user;
                let end = start
                    + events[start..]
                        .iter()
                        .position(|e| e.user != user)
                        .unwrap_or(events.len() - start);
                run.clear();
                run.extend(events[start..end].iter().map(|e| e.event));
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
        Arc::new(ListArray::new(
            Arc::new(Field::new_list_field(
                DataType::Struct(people_fields()),
                true,
            )),
            OffsetBuffer::new(group_offsets.into()),
            Arc::new(people),
            None,
        ))
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
                groups[group_indices[row]].push(event);
                added += 1;
            }
        })?;
        self.events += added;
        Ok(())
    }

    fn evaluate(&mut self, emit_to: EmitTo) -> DfResult<ArrayRef> {
        let taken = emit_to.take_needed(&mut self.groups);
        Ok(self.people(taken))
    }

    fn state(&mut self, emit_to: EmitTo) -> DfResult<Vec<ArrayRef>> {
        let taken = emit_to.take_needed(&mut self.groups);
        self.events -= taken.iter().map(Vec::len).sum::<usize>();
        Ok(state_of(taken.iter()))
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
        each_state_event(values, |row, event| {
            groups[group_indices[row]].push(event);
            added += 1;
        })?;
        self.events += added;
        Ok(())
    }

    fn convert_to_state(
        &self,
        values: &[ArrayRef],
        opt_filter: Option<&BooleanArray>,
    ) -> DfResult<Vec<ArrayRef>> {
        let rows = values.first().map_or(0, |v| v.len());
        let mut per_row: Vec<Vec<PersonEvent>> = vec![Vec::new(); rows];
        person_events(values, self.config.modes.strict_order, |row, event| {
            if kept(opt_filter, row) {
                per_row[row].push(event);
            }
        })?;
        Ok(state_of(per_row.iter()))
    }

    fn size(&self) -> usize {
        self.groups.capacity() * std::mem::size_of::<Vec<PersonEvent>>()
            + self.events * std::mem::size_of::<PersonEvent>()
    }
}

/// The ungrouped form: one group.
struct PeopleAccumulator(PeopleGroups);

impl std::fmt::Debug for PeopleAccumulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PeopleAccumulator({} events)", self.0.events)
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
            .map(|a| Ok(ScalarValue::List(Arc::new(a.as_list::<i32>().clone()))))
            .collect()
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> DfResult<()> {
        let rows = states.first().map_or(0, |v| v.len());
        self.0.merge_batch(states, &vec![0; rows], 1)
    }
}
