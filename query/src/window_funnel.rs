//! `window_funnel`: ordered steps within a conversion window per person, with ClickHouse
//! `windowFunnel` semantics and its modes, as a DataFusion aggregate.
//!
//! `window_funnel(window, 'modes', event_time, step1, …, stepN)` grouped by `user_id`: each
//! person's step events are kept as (time, step) pairs, ordered by time, and walked once. A
//! chain starts at an event of step 1 and reaches step k+1 at an event of step k+1 no later
//! than `window` after the chain's start, once step k is reached. The aggregate returns the
//! times of the deepest chain's steps; its partial states merge, so it runs partitioned or
//! distributed like any aggregate.
//!
//! Modes (any combination):
//! - `strict_order`: an event of no step, or of a step whose previous step is not reached,
//!   after the first step stops the walk; every event of the person must then be passed to
//!   the aggregate;
//! - `strict_increase`: a step must come strictly later than the previous one;
//! - `strict_deduplication`: an event of a step already reached stops the walk.
//!
//! A stopped walk counts the deepest step reached before it stopped.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, Int64Array, ListArray};
use arrow::buffer::{NullBuffer, OffsetBuffer};
use arrow::datatypes::{DataType, Field, FieldRef, Int64Type};
use datafusion::common::ScalarValue;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, EmitTo, GroupsAccumulator, Signature, Volatility,
};
use datafusion::physical_expr::expressions::Literal;
use datafusion::prelude::SessionContext;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Makes `window_funnel` callable in `ctx`.
pub fn register(ctx: &SessionContext) {
    ctx.register_udaf(AggregateUDF::from(WindowFunnel::default()));
}

/// Most steps a funnel may have.
pub const MAX_STEPS: usize = 32;

/// How chains are allowed to advance.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Modes {
    #[serde(default)]
    pub strict_order: bool,
    #[serde(default)]
    pub strict_increase: bool,
    #[serde(default)]
    pub strict_deduplication: bool,
}

impl Modes {
    /// These modes and one more named `word`.
    pub fn with(mut self, word: &str) -> Result<Modes> {
        match word {
            "strict_order" => self.strict_order = true,
            "strict_increase" => self.strict_increase = true,
            "strict_deduplication" | "dedup" => self.strict_deduplication = true,
            other => {
                return Err(Error::Condition {
                    path: "mode".into(),
                    message: format!(
                        "'{other}' is not strict_order, strict_increase or strict_deduplication"
                    ),
                });
            }
        }
        Ok(self)
    }

    /// Parses `strict_order,strict_increase,…` (empty: the default).
    pub fn parse(text: &str) -> Result<Modes> {
        text.split(',')
            .map(str::trim)
            .filter(|w| !w.is_empty())
            .try_fold(Modes::default(), Modes::with)
    }
}

/// The step number of an event that matches no step (kept only in strict order, where it
/// ends a chain).
pub const OTHER: u8 = 0;

/// Puts events in walking order: by time; among equal times, rows by their first step, and
/// within a row by descending step.
pub fn sort_events(events: &mut [Event]) {
    events.sort_unstable_by(|a, b| {
        (a.time, a.row)
            .cmp(&(b.time, b.row))
            .then(b.step.cmp(&a.step))
    });
}

/// One event as a funnel sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event {
    pub time: i64,
    /// The step it matches, numbered from 1 ([`OTHER`] for none); past the last step, an
    /// exclusion.
    pub step: u8,
    /// The smallest step its row matches: a row matching several steps gives one event each.
    pub row: u8,
}

impl Event {
    /// An event whose row matches only `step`.
    pub fn new(time: i64, step: u8) -> Event {
        Event {
            time,
            step,
            row: step,
        }
    }

    /// `step` and `row` in one number, for the aggregate's state.
    pub(crate) fn code(self) -> i64 {
        i64::from(self.row) << 8 | i64::from(self.step)
    }

    pub(crate) fn from_code(time: i64, code: i64) -> Option<Event> {
        Some(Event {
            time,
            step: u8::try_from(code & 0xff).ok()?,
            row: u8::try_from(code >> 8).ok()?,
        })
    }
}

/// The deepest chain of one person's events: the time (µs) each step was reached.
///
/// Events are ordered by time; among equal times, rows by their first step, and within a
/// row by descending step, so one row matching several steps advances a chain at most one
/// step while distinct events logged at the same instant advance in step order.
pub fn deepest_chain(events: &mut [Event], steps: usize, window: i64, modes: Modes) -> Vec<i64> {
    Walk::new(steps).run(events, window, modes).to_vec()
}

/// The scratch space of a walk, reused from person to person.
#[derive(Debug)]
pub struct Walk {
    steps: usize,
    /// Row k: the step times of the latest chain to reach step k + 1 (its first k + 1).
    paths: Vec<i64>,
    reached: Vec<bool>,
}

impl Walk {
    pub fn new(steps: usize) -> Walk {
        Walk {
            steps,
            paths: vec![0; steps * steps],
            reached: vec![false; steps],
        }
    }

    fn path(&self, level: usize) -> &[i64] {
        match level.checked_sub(1) {
            Some(k) => &self.paths[k * self.steps..k * self.steps + level],
            None => &[],
        }
    }

    /// The step times of the deepest chain of `events` (see [`deepest_chain`]).
    pub fn run(&mut self, events: &mut [Event], window: i64, modes: Modes) -> &[i64] {
        sort_events(events);
        self.run_sorted(events, window, modes)
    }

    /// [`Walk::run`] over events already in walking order ([`sort_events`]).
    pub fn run_sorted(&mut self, events: &[Event], window: i64, modes: Modes) -> &[i64] {
        let steps = self.steps;
        self.reached.fill(false);
        let mut started = false;
        for event in events.iter() {
            let (time, step) = (event.time, usize::from(event.step));
            if step == 0 || step > steps {
                if modes.strict_order && started {
                    break;
                }
            } else if step == 1 {
                self.reached[0] = true;
                self.paths[0] = time;
                started = true;
            } else if modes.strict_deduplication && self.reached[step - 1] {
                // A step already reached again: stop.
                break;
            } else if modes.strict_order && started && !self.reached[step - 2] {
                // A step out of order: stop.
                break;
            } else if self.reached[step - 2] {
                let from = (step - 2) * steps;
                let start = self.paths[from];
                let previous = self.paths[from + step - 2];
                let mut in_time = time <= start.saturating_add(window);
                if modes.strict_increase {
                    in_time = in_time && previous < time;
                }
                if in_time {
                    let to = (step - 1) * steps;
                    self.paths.copy_within(from..from + step - 1, to);
                    self.paths[to + step - 1] = time;
                    self.reached[step - 1] = true;
                    if step == steps {
                        return self.path(steps);
                    }
                }
            }
        }
        let deepest = self.reached.iter().rposition(|r| *r).map_or(0, |k| k + 1);
        self.path(deepest)
    }
}

/// `window_funnel(window, 'modes', event_time, step1, …, stepN[, exclusion1, …])`: the step
/// times of a person's deepest chain, or NULL when an exclusion event falls inside it.
///
/// `window` is in the time's units (µs for timestamps); `modes` is a comma-separated list of
/// `strict_order`, `strict_increase`, `strict_deduplication` and one `exclude:A-B` per
/// exclusion condition after the steps (an exclusion event after step A and before step B).
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct WindowFunnel {
    signature: Signature,
}

impl Default for WindowFunnel {
    fn default() -> Self {
        WindowFunnel {
            signature: Signature::variadic_any(Volatility::Immutable),
        }
    }
}

/// What one `window_funnel` call computes, read from its literal arguments.
#[derive(Debug, Clone, PartialEq)]
pub struct FunnelConfig {
    pub window: i64,
    pub modes: Modes,
    pub steps: usize,
    /// (after step, before step), 1-based, one per exclusion condition.
    pub exclusions: Vec<(usize, usize)>,
}

impl FunnelConfig {
    /// The `modes` text for these settings.
    pub fn mode_text(&self) -> String {
        let mut words = Vec::new();
        if self.modes.strict_order {
            words.push("strict_order".to_string());
        }
        if self.modes.strict_increase {
            words.push("strict_increase".to_string());
        }
        if self.modes.strict_deduplication {
            words.push("strict_deduplication".to_string());
        }
        words.extend(
            self.exclusions
                .iter()
                .map(|(a, b)| format!("exclude:{a}-{b}")),
        );
        words.join(",")
    }

    /// Reads the literal window and modes (the first two arguments); the step and
    /// exclusion conditions start at argument `conditions_at`.
    pub(crate) fn from_args(
        args: &AccumulatorArgs,
        conditions_at: usize,
    ) -> DfResult<FunnelConfig> {
        let literal = |i: usize| -> DfResult<ScalarValue> {
            args.exprs
                .get(i)
                .and_then(|e| e.downcast_ref::<Literal>())
                .map(|l| l.value().clone())
                .ok_or_else(|| {
                    DataFusionError::Plan(format!(
                        "window_funnel's argument {} must be a constant",
                        i + 1
                    ))
                })
        };
        let window = match literal(0)?.cast_to(&DataType::Int64)? {
            ScalarValue::Int64(Some(w)) if w > 0 => w,
            _ => {
                return Err(DataFusionError::Plan(
                    "window_funnel's window must be a positive number".into(),
                ));
            }
        };
        let text = match literal(1)? {
            ScalarValue::Utf8(t) | ScalarValue::Utf8View(t) | ScalarValue::LargeUtf8(t) => {
                t.unwrap_or_default()
            }
            _ => {
                return Err(DataFusionError::Plan(
                    "window_funnel's modes are text".into(),
                ));
            }
        };
        let mut modes = Modes::default();
        let mut exclusions = Vec::new();
        for word in text.split(',').map(str::trim).filter(|w| !w.is_empty()) {
            if let Some(range) = word.strip_prefix("exclude:") {
                let parsed = range
                    .split_once('-')
                    .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)));
                match parsed {
                    Some((a, b)) if a >= 1 && a < b => exclusions.push((a, b)),
                    _ => {
                        return Err(DataFusionError::Plan(format!(
                            "window_funnel: '{word}' is not exclude:A-B with A < B"
                        )));
                    }
                }
            } else {
                modes = modes
                    .with(word)
                    .map_err(|e| DataFusionError::Plan(e.to_string()))?;
            }
        }
        let conditions = args.exprs.len().saturating_sub(conditions_at);
        let steps = conditions.saturating_sub(exclusions.len());
        if steps == 0 || steps > MAX_STEPS || exclusions.len() > MAX_STEPS {
            return Err(DataFusionError::Plan(format!(
                "window_funnel takes 1 to {MAX_STEPS} steps and at most {MAX_STEPS} exclusions"
            )));
        }
        if let Some((a, b)) = exclusions.iter().find(|(_, b)| *b > steps) {
            return Err(DataFusionError::Plan(format!(
                "window_funnel: exclude:{a}-{b} names a step past the last ({steps})"
            )));
        }
        Ok(FunnelConfig {
            window,
            modes,
            steps,
            exclusions,
        })
    }

    /// A person's chain, or None when an exclusion event falls inside it.
    pub fn chain(&self, events: &mut [Event]) -> Option<Vec<i64>> {
        let mut walk = Walk::new(self.steps);
        self.chain_in(&mut walk, events).map(<[i64]>::to_vec)
    }

    /// [`FunnelConfig::chain`] in a reused walk.
    pub fn chain_in<'w>(&self, walk: &'w mut Walk, events: &mut [Event]) -> Option<&'w [i64]> {
        sort_events(events);
        self.chain_sorted(walk, events)
    }

    /// [`FunnelConfig::chain`] of events already in walking order, in a reused walk.
    pub fn chain_sorted<'w>(&self, walk: &'w mut Walk, events: &[Event]) -> Option<&'w [i64]> {
        let chain = walk.run_sorted(events, self.window, self.modes);
        for (j, &(after, before)) in self.exclusions.iter().enumerate() {
            let Some(&lower) = chain.get(after - 1) else {
                continue;
            };
            let code = (self.steps + 1 + j) as u8;
            let hit = match chain.get(before - 1) {
                Some(&upper) => events
                    .iter()
                    .any(|e| e.step == code && lower < e.time && e.time < upper),
                None => {
                    let end = chain[0].saturating_add(self.window);
                    events
                        .iter()
                        .any(|e| e.step == code && lower < e.time && e.time <= end)
                }
            };
            if hit {
                return None;
            }
        }
        Some(chain)
    }
}

pub(crate) fn times_list() -> DataType {
    DataType::List(Arc::new(Field::new_list_field(DataType::Int64, true)))
}

impl AggregateUDFImpl for WindowFunnel {
    fn name(&self) -> &str {
        "window_funnel"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, args: &[DataType]) -> DfResult<DataType> {
        if args.len() < 4 {
            return Err(DataFusionError::Plan(
                "window_funnel(window, modes, time, step1, …) takes at least one step".into(),
            ));
        }
        Ok(times_list())
    }

    fn accumulator(&self, args: AccumulatorArgs) -> DfResult<Box<dyn Accumulator>> {
        Ok(Box::new(FunnelAccumulator {
            config: FunnelConfig::from_args(&args, 3)?,
            events: Vec::new(),
        }))
    }

    fn groups_accumulator_supported(&self, _args: AccumulatorArgs) -> bool {
        true
    }

    fn create_groups_accumulator(
        &self,
        args: AccumulatorArgs,
    ) -> DfResult<Box<dyn GroupsAccumulator>> {
        Ok(Box::new(FunnelGroups {
            config: FunnelConfig::from_args(&args, 3)?,
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
                format!("{}[steps]", args.name),
                times_list(),
                true,
            )),
        ])
    }
}

/// Each row's events from an update batch's columns: the time at `time_at`, the conditions
/// after it.
pub(crate) fn step_events(
    values: &[ArrayRef],
    time_at: usize,
    strict_order: bool,
    mut each: impl FnMut(usize, Event),
) -> DfResult<()> {
    let Some(time) = values.get(time_at) else {
        return Err(DataFusionError::Internal("window_funnel arguments".into()));
    };
    let times = arrow::compute::cast(time, &DataType::Int64)?;
    let times = times.as_primitive::<Int64Type>();
    let rows = times.len();
    // Each condition as a plain mask (NULL is false).
    let mut masks = Vec::with_capacity(values.len() - time_at - 1);
    for column in &values[time_at + 1..] {
        let flag = column.as_boolean_opt().ok_or_else(|| {
            DataFusionError::Plan("window_funnel step conditions must be true/false".into())
        })?;
        masks.push(match flag.nulls() {
            Some(nulls) => flag.values() & nulls.inner(),
            None => flag.values().clone(),
        });
    }
    // The first step each row matches (0: none), and whether any row matches more.
    let mut first = vec![0u8; rows];
    let mut several = false;
    for (k, mask) in masks.iter().enumerate() {
        for row in mask.set_indices() {
            if first[row] == 0 {
                first[row] = (k + 1) as u8;
            } else {
                several = true;
            }
        }
    }
    let time_values = times.values();
    for row in 0..rows {
        if times.is_null(row) {
            continue;
        }
        let time = time_values[row];
        match first[row] {
            0 if strict_order => each(row, Event::new(time, OTHER)),
            0 => {}
            step if !several => each(row, Event::new(time, step)),
            row_first => {
                for (k, mask) in masks.iter().enumerate() {
                    if mask.value(row) {
                        each(
                            row,
                            Event {
                                time,
                                step: (k + 1) as u8,
                                row: row_first,
                            },
                        );
                    }
                }
            }
        }
    }
    Ok(())
}

/// The events of a state's two lists at `row`.
/// A state batch's two lists, read without copying.
struct StateRows<'a> {
    times: &'a ListArray,
    steps: &'a ListArray,
    time_values: &'a [i64],
    step_values: &'a [i64],
}

impl<'a> StateRows<'a> {
    fn new(states: &'a [ArrayRef]) -> DfResult<StateRows<'a>> {
        let (times, steps) = state_lists(states)?;
        let (Some(time_values), Some(step_values)) = (
            times.values().as_primitive_opt::<Int64Type>(),
            steps.values().as_primitive_opt::<Int64Type>(),
        ) else {
            return Err(DataFusionError::Internal(
                "window_funnel state lists are not of integers".into(),
            ));
        };
        Ok(StateRows {
            times,
            steps,
            time_values: time_values.values(),
            step_values: step_values.values(),
        })
    }

    fn len(&self) -> usize {
        self.times.len()
    }

    /// The events of row `row`.
    fn each(&self, row: usize, mut each: impl FnMut(Event)) -> DfResult<()> {
        if self.times.is_null(row) || self.steps.is_null(row) {
            return Ok(());
        }
        let (t, s) = (self.times.value_offsets(), self.steps.value_offsets());
        let times = &self.time_values[t[row] as usize..t[row + 1] as usize];
        let steps = &self.step_values[s[row] as usize..s[row + 1] as usize];
        for (&time, &code) in times.iter().zip(steps) {
            let event = Event::from_code(time, code)
                .ok_or_else(|| DataFusionError::Internal("window_funnel state step".into()))?;
            each(event);
        }
        Ok(())
    }
}

fn state_lists(states: &[ArrayRef]) -> DfResult<(&ListArray, &ListArray)> {
    match (
        states.first().and_then(|a| a.as_list_opt::<i32>()),
        states.get(1).and_then(|a| a.as_list_opt::<i32>()),
    ) {
        (Some(times), Some(steps)) => Ok((times, steps)),
        _ => Err(DataFusionError::Internal(
            "window_funnel state is not two lists".into(),
        )),
    }
}

/// Lists of many rows' values, one list per row.
fn lists<'a>(rows: impl Iterator<Item = &'a [Event]>, part: fn(&Event) -> i64) -> ArrayRef {
    let mut offsets = vec![0i32];
    let mut values = Vec::new();
    for events in rows {
        values.extend(events.iter().map(part));
        offsets.push(values.len() as i32);
    }
    Arc::new(ListArray::new(
        Arc::new(Field::new_list_field(DataType::Int64, true)),
        OffsetBuffer::new(offsets.into()),
        Arc::new(Int64Array::from(values)),
        None,
    ))
}

#[derive(Debug)]
struct FunnelAccumulator {
    config: FunnelConfig,
    events: Vec<Event>,
}

impl Accumulator for FunnelAccumulator {
    fn update_batch(&mut self, values: &[ArrayRef]) -> DfResult<()> {
        let events = &mut self.events;
        step_events(values, 2, self.config.modes.strict_order, |_, event| {
            events.push(event)
        })
    }

    fn evaluate(&mut self) -> DfResult<ScalarValue> {
        let chain = self.config.chain(&mut self.events);
        Ok(ScalarValue::List(Arc::new(
            ListArray::from_iter_primitive::<Int64Type, _, _>([
                chain.map(|c| c.into_iter().map(Some))
            ]),
        )))
    }

    fn size(&self) -> usize {
        std::mem::size_of_val(self) + self.events.capacity() * 16
    }

    fn state(&mut self) -> DfResult<Vec<ScalarValue>> {
        let rows = [self.events.as_slice()];
        Ok(vec![
            ScalarValue::List(
                lists(rows.into_iter(), |e| e.time)
                    .as_list::<i32>()
                    .clone()
                    .into(),
            ),
            ScalarValue::List(
                lists(rows.into_iter(), |e| e.code())
                    .as_list::<i32>()
                    .clone()
                    .into(),
            ),
        ])
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> DfResult<()> {
        let rows = StateRows::new(states)?;
        for row in 0..rows.len() {
            rows.each(row, |e| self.events.push(e))?;
        }
        Ok(())
    }
}

/// The grouped form: one list of events per group index.
struct FunnelGroups {
    config: FunnelConfig,
    groups: Vec<Vec<Event>>,
    events: usize,
}

impl FunnelGroups {
    fn grow(&mut self, total: usize) {
        if self.groups.len() < total {
            self.groups.resize_with(total, Vec::new);
        }
    }
}

pub(crate) fn kept(filter: Option<&BooleanArray>, row: usize) -> bool {
    filter.is_none_or(|f| f.is_valid(row) && f.value(row))
}

impl GroupsAccumulator for FunnelGroups {
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
        step_events(values, 2, self.config.modes.strict_order, |row, event| {
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
        let mut offsets = vec![0i32];
        let mut values = Vec::new();
        let mut valid = Vec::with_capacity(taken.len());
        let mut walk = Walk::new(self.config.steps);
        for mut events in taken {
            self.events -= events.len();
            let chain = self.config.chain_in(&mut walk, &mut events);
            valid.push(chain.is_some());
            values.extend_from_slice(chain.unwrap_or_default());
            offsets.push(values.len() as i32);
        }
        Ok(Arc::new(ListArray::new(
            Arc::new(Field::new_list_field(DataType::Int64, true)),
            OffsetBuffer::new(offsets.into()),
            Arc::new(Int64Array::from(values)),
            Some(NullBuffer::from(valid)),
        )))
    }

    fn state(&mut self, emit_to: EmitTo) -> DfResult<Vec<ArrayRef>> {
        let taken = emit_to.take_needed(&mut self.groups);
        self.events -= taken.iter().map(Vec::len).sum::<usize>();
        Ok(vec![
            lists(taken.iter().map(Vec::as_slice), |e| e.time),
            lists(taken.iter().map(Vec::as_slice), |e| e.code()),
        ])
    }

    fn merge_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        total_num_groups: usize,
    ) -> DfResult<()> {
        self.grow(total_num_groups);
        let rows = StateRows::new(values)?;
        for (row, group) in group_indices.iter().enumerate() {
            let events = &mut self.groups[*group];
            let before = events.len();
            rows.each(row, |e| events.push(e))?;
            self.events += events.len() - before;
        }
        Ok(())
    }

    fn convert_to_state(
        &self,
        values: &[ArrayRef],
        opt_filter: Option<&BooleanArray>,
    ) -> DfResult<Vec<ArrayRef>> {
        let rows = values.first().map_or(0, |v| v.len());
        let mut offsets: Vec<i32> = Vec::with_capacity(rows + 1);
        offsets.push(0);
        let mut times = Vec::with_capacity(rows);
        let mut codes = Vec::with_capacity(rows);
        step_events(values, 2, self.config.modes.strict_order, |row, event| {
            if kept(opt_filter, row) {
                // Close the lists of the rows before this one.
                while offsets.len() <= row {
                    offsets.push(times.len() as i32);
                }
                times.push(event.time);
                codes.push(event.code());
            }
        })?;
        while offsets.len() <= rows {
            offsets.push(times.len() as i32);
        }
        let offsets = OffsetBuffer::new(offsets.into());
        let list = |values: Vec<i64>| -> ArrayRef {
            Arc::new(ListArray::new(
                Arc::new(Field::new_list_field(DataType::Int64, true)),
                offsets.clone(),
                Arc::new(Int64Array::from(values)),
                None,
            ))
        };
        Ok(vec![list(times), list(codes)])
    }

    fn size(&self) -> usize {
        self.groups.capacity() * std::mem::size_of::<Vec<Event>>() + self.events * 16
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: i64 = 100;

    /// An event of no step, in the tests' 0-based step numbers.
    const X: u8 = 99;

    /// The level reached by events given with 0-based steps.
    fn level(events: &[(i64, u8)], steps: usize, modes: Modes) -> usize {
        let mut events: Vec<Event> = events
            .iter()
            .map(|&(t, s)| Event::new(t, if s == X { OTHER } else { s + 1 }))
            .collect();
        deepest_chain(&mut events, steps, W, modes).len()
    }

    fn modes(text: &str) -> Modes {
        Modes::parse(text).expect("modes")
    }

    #[test]
    fn default_mode_follows_window_funnel() {
        let d = Modes::default();
        // A B C in the window: 3.
        assert_eq!(level(&[(0, 0), (10, 1), (20, 2)], 3, d), 3);
        // C too late for the chain that started at 0: 2.
        assert_eq!(level(&[(0, 0), (10, 1), (101, 2)], 3, d), 2);
        // A later start rescues it: A(0) B(10) A(50) B(60) C(120): the chain from 50 reaches 3.
        assert_eq!(
            level(&[(0, 0), (10, 1), (50, 0), (60, 1), (120, 2)], 3, d),
            3
        );
        // Out of order B before A: 1.
        assert_eq!(level(&[(0, 1), (10, 0)], 2, d), 1);
        // Nothing of step 1: 0.
        assert_eq!(level(&[(0, 1), (10, 2)], 3, d), 0);
        // Other steps' events in between do not matter: A C B C: 3.
        assert_eq!(level(&[(0, 0), (5, 2), (10, 1), (20, 2)], 3, d), 3);
        // Two events at one instant advance in step order…
        assert_eq!(level(&[(0, 1), (0, 0)], 2, d), 2);
        // …but one row matching steps 1 and 2 advances one step only.
        let row = |step| Event {
            time: 0,
            step,
            row: 1,
        };
        assert_eq!(deepest_chain(&mut [row(1), row(2)], 2, W, d).len(), 1);
        // It can advance a chain begun earlier, as step 2.
        assert_eq!(
            deepest_chain(&mut [Event::new(-5, 1), row(1), row(2)], 2, W, d),
            vec![-5, 0]
        );
        // Equal times of different events advance (not strictly increasing).
        assert_eq!(level(&[(0, 0), (10, 1), (10, 2)], 3, d), 3);
        // The window is inclusive.
        assert_eq!(level(&[(0, 0), (100, 1)], 2, d), 2);
    }

    #[test]
    fn strict_increase_needs_later_times() {
        let m = modes("strict_increase");
        assert_eq!(level(&[(0, 0), (10, 1), (10, 2)], 3, m), 2);
        assert_eq!(level(&[(0, 0), (10, 1), (11, 2)], 3, m), 3);
    }

    #[test]
    fn strict_order_stops_at_another_steps_event() {
        let m = modes("strict_order");
        // A C B: C comes before B is reached → 1.
        assert_eq!(level(&[(0, 0), (5, 2), (10, 1), (20, 2)], 3, m), 1);
        assert_eq!(level(&[(0, 0), (10, 1), (20, 2)], 3, m), 3);
        // Events before the first A do not count against it.
        assert_eq!(level(&[(0, 2), (5, 0), (10, 1)], 3, m), 2);
        // Any other event after the start ends the chain: A x B → 1.
        assert_eq!(level(&[(0, X), (5, 0), (7, X), (10, 1)], 2, m), 1);
        assert_eq!(level(&[(0, X), (5, 0), (10, 1), (12, X)], 2, m), 2);
        // Other events do not matter outside strict order.
        assert_eq!(level(&[(5, 0), (7, X), (10, 1)], 2, Modes::default()), 2);
    }

    #[test]
    fn strict_deduplication_stops_at_a_repeated_step() {
        let m = modes("strict_deduplication");
        // A B B C: the second B ends it at B → 2.
        assert_eq!(level(&[(0, 0), (10, 1), (15, 1), (20, 2)], 3, m), 2);
        // A B A B C: the second B stops the walk; the deepest step reached still counts.
        assert_eq!(
            level(&[(0, 0), (10, 1), (20, 0), (30, 1), (40, 2)], 3, m),
            2
        );
        assert_eq!(level(&[(0, 0), (10, 1), (20, 2)], 3, m), 3);
        // Default mode lets C through.
        assert_eq!(
            level(&[(0, 0), (10, 1), (15, 1), (20, 2)], 3, Modes::default()),
            3
        );
    }

    #[test]
    fn the_chain_gives_its_step_times() {
        let chain = deepest_chain(
            &mut [(0, 1), (10, 2), (50, 1), (60, 2), (120, 3)].map(|(t, s)| Event::new(t, s)),
            3,
            W,
            Modes::default(),
        );
        assert_eq!(chain, vec![50, 60, 120]);
    }

    #[test]
    fn bad_modes_are_refused() {
        assert!(Modes::parse("strict_order,bogus").is_err());
        assert_eq!(
            Modes::parse(" strict_increase ,dedup").expect("modes"),
            Modes {
                strict_order: false,
                strict_increase: true,
                strict_deduplication: true
            }
        );
    }

    fn ev(pairs: &[(i64, u8)]) -> Vec<Event> {
        pairs.iter().map(|&(t, s)| Event::new(t, s)).collect()
    }

    fn config(steps: usize, exclusions: Vec<(usize, usize)>) -> FunnelConfig {
        FunnelConfig {
            window: W,
            modes: Modes::default(),
            steps,
            exclusions,
        }
    }

    #[test]
    fn exclusions_drop_people_with_the_event_inside_their_chain() {
        // Steps 1..3 are codes 1..3; the exclusion is code 4.
        let c = config(3, vec![(1, 3)]);
        // Exclusion between A and C: out.
        assert_eq!(c.chain(&mut ev(&[(0, 1), (5, 4), (10, 2), (20, 3)])), None);
        // Before A or after C: kept.
        assert_eq!(
            c.chain(&mut ev(&[(0, 4), (1, 1), (10, 2), (20, 3), (30, 4)])),
            Some(vec![1, 10, 20])
        );
        // Only between steps 2 and 3: an exclusion before step 2 does not count.
        let c = config(3, vec![(2, 3)]);
        assert_eq!(
            c.chain(&mut ev(&[(0, 1), (5, 4), (10, 2), (20, 3)])),
            Some(vec![0, 10, 20])
        );
        assert_eq!(c.chain(&mut ev(&[(0, 1), (10, 2), (15, 4), (20, 3)])), None);
        // Step 3 never reached: an exclusion after step 2 within the window counts…
        assert_eq!(c.chain(&mut ev(&[(0, 1), (10, 2), (15, 4)])), None);
        // …but not past the window.
        assert_eq!(
            c.chain(&mut ev(&[(0, 1), (10, 2), (150, 4)])),
            Some(vec![0, 10])
        );
    }

    /// The aggregate in SQL over several partitions (so partial states are merged) agrees
    /// with the hand-computed levels.
    #[tokio::test]
    async fn the_aggregate_groups_and_merges_like_the_walk() {
        use arrow::array::{Int64Array, StringArray, UInt32Array};
        use arrow::datatypes::Schema;
        use arrow::record_batch::RecordBatch;
        use datafusion::datasource::MemTable;
        use datafusion::prelude::SessionConfig;

        let schema = Arc::new(Schema::new(vec![
            Field::new("user_id", DataType::UInt32, false),
            Field::new("t", DataType::Int64, false),
            Field::new("name", DataType::Utf8, false),
        ]));
        // user 1: a b c in time; user 2: a b, c too late; user 3: b a; user 4: a x b (x is
        // the exclusion); spread over partitions in mixed order.
        let rows: [&[(u32, i64, &str)]; 3] = [
            &[(1, 20, "c"), (2, 0, "a"), (3, 0, "b"), (4, 0, "a")],
            &[(1, 0, "a"), (2, 10, "b"), (4, 5, "x")],
            &[(1, 10, "b"), (2, 500, "c"), (3, 5, "a"), (4, 10, "b")],
        ];
        let partitions: Vec<Vec<RecordBatch>> = rows
            .iter()
            .map(|rows| {
                let batch = RecordBatch::try_new(
                    schema.clone(),
                    vec![
                        Arc::new(UInt32Array::from_iter_values(rows.iter().map(|r| r.0))),
                        Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.1))),
                        Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.2))),
                    ],
                )
                .expect("batch");
                // Batches of two rows, so a partial aggregation can decide to skip after
                // the first.
                (0..batch.num_rows())
                    .step_by(2)
                    .map(|i| batch.slice(i, 2.min(batch.num_rows() - i)))
                    .collect()
            })
            .collect();
        // Once with partial aggregation, once skipping it (each row converted to a state).
        let skipping = SessionConfig::new()
            .set_usize(
                "datafusion.execution.skip_partial_aggregation_probe_rows_threshold",
                1,
            )
            .set_str(
                "datafusion.execution.skip_partial_aggregation_probe_ratio_threshold",
                "0.0",
            );
        for config in [SessionConfig::new(), skipping.clone()] {
            let ctx = SessionContext::new_with_config(config);
            register(&ctx);
            ctx.register_table(
                "ev",
                Arc::new(MemTable::try_new(schema.clone(), partitions.clone()).expect("table")),
            )
            .expect("register");
            let levels = |sql: String| {
                let ctx = ctx.clone();
                async move {
                    let batches = ctx
                        .sql(&sql)
                        .await
                        .expect("plan")
                        .collect()
                        .await
                        .expect("run");
                    let mut out = Vec::new();
                    for batch in batches {
                        let users = batch
                            .column(0)
                            .as_primitive::<arrow::datatypes::UInt32Type>();
                        let chains = batch.column(1).as_list::<i32>();
                        for row in 0..batch.num_rows() {
                            let level = (!chains.is_null(row)).then(|| chains.value(row).len());
                            out.push((users.value(row), level));
                        }
                    }
                    out.sort_unstable();
                    out
                }
            };
            let steps = "name = 'a', name = 'b', name = 'c'";
            assert_eq!(
                levels(format!(
                    "SELECT user_id, window_funnel(100, '', t, {steps}) FROM ev GROUP BY user_id"
                ))
                .await,
                vec![(1, Some(3)), (2, Some(2)), (3, Some(1)), (4, Some(2))]
            );
            assert_eq!(
                levels(format!(
                    "SELECT user_id, window_funnel(100, 'strict_order', t, {steps}) FROM ev \
                 GROUP BY user_id"
                ))
                .await,
                vec![(1, Some(3)), (2, Some(2)), (3, Some(1)), (4, Some(1))]
            );
            assert_eq!(
                levels(format!(
                    "SELECT user_id, window_funnel(100, 'exclude:1-3', t, {steps}, name = 'x') \
                 FROM ev GROUP BY user_id"
                ))
                .await,
                vec![(1, Some(3)), (2, Some(2)), (3, Some(1)), (4, None)]
            );
            let refused = ctx
                .sql(&format!(
                    "SELECT window_funnel(0, '', t, {steps}) FROM ev GROUP BY user_id"
                ))
                .await;
            let refused = match refused {
                Ok(frame) => frame.collect().await.map(|_| ()),
                Err(e) => Err(e),
            };
            assert!(
                refused.is_err_and(|e| e.to_string().contains("positive")),
                "a zero window is refused"
            );
        }
    }
}
