//! Funnel reports: per-step people, conversion and time between steps, computed by the
//! `window_funnel` aggregate over the events grouped by person (see
//! [`shoal_query::window_funnel`]), optionally restricted to an audience pack, with exclusion
//! events and a breakdown by a person's or an event's column.

use std::collections::{BTreeMap, HashMap};

use arrow::array::{Array, AsArray, StructArray};
use arrow::datatypes::Int64Type;
use chrono::NaiveDate;
use datafusion::error::DataFusionError;
use futures::TryStreamExt;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use shoal_catalog::{Role, Visibility};
use shoal_query::condition::CheckContext;
use shoal_query::window_funnel::{FunnelConfig, MAX_STEPS, Modes};
use shoal_query::{Result, Session, compile};

pub use crate::spec::EventSpec;
use crate::spec::{context, event_predicate, invalid};

/// Most breakdown values reported; the rest are summed into [`OTHER_VALUES`].
pub const MAX_GROUPS: usize = 50;

/// The label of the breakdown values past [`MAX_GROUPS`].
pub const OTHER_VALUES: &str = "(other values)";

/// One step: an event with optional filters on its columns (the condition builder's `where`).
pub type Step = EventSpec;

/// An exclusion: people with this event after step `between[0]` and before step
/// `between[1]` of their chain are left out of the funnel.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Exclusion {
    pub event: String,
    #[serde(default, rename = "where", skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<Value>,
    /// 1-based steps; default: from the first to the last.
    #[serde(default)]
    pub between: Option<[usize; 2]>,
}

/// A funnel request.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FunnelSpec {
    pub steps: Vec<Step>,
    /// Conversion window from the first step: `30m`, `12h`, `7d`.
    pub window: String,
    #[serde(default)]
    pub mode: Modes,
    /// First and last day (catalog zone) of the events read; default: the 30 days to `to`.
    #[serde(default)]
    pub from: Option<NaiveDate>,
    #[serde(default)]
    pub to: Option<NaiveDate>,
    /// Only members of this audience pack (its current version).
    #[serde(default)]
    pub audience: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<Exclusion>,
    /// A column to break the funnel down by: `users.city` (the person's value) or
    /// `events.channel` (chains whose steps all share the value); a bare name is a column of
    /// users, else of events.
    #[serde(default)]
    pub breakdown: Option<String>,
}

/// Per-step figures.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepResult {
    pub step: usize,
    pub event: String,
    /// People who reached this step (and every one before it) within the window.
    pub users: u64,
    /// Of those who reached the previous step, the share who reached this one.
    pub conversion_from_previous: Option<f64>,
    /// Of those who reached the first step, the share who reached this one.
    pub conversion_from_first: Option<f64>,
    /// Median seconds from the previous step to this one.
    pub median_seconds_from_previous: Option<f64>,
}

/// The funnel of one breakdown value.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GroupResult {
    pub value: Option<String>,
    pub steps: Vec<StepResult>,
}

/// A funnel's answer.
#[derive(Debug, Clone, Serialize)]
pub struct FunnelResult {
    /// The whole funnel (without a breakdown; with one, see `groups`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub steps: Option<Vec<StepResult>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub breakdown: Option<String>,
    /// Per breakdown value, most first-step people first.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub groups: Option<Vec<GroupResult>>,
    /// People left out by an exclusion event.
    pub excluded: u64,
    pub window_seconds: i64,
    pub mode: Modes,
    pub from: NaiveDate,
    pub to: NaiveDate,
    pub audience: Option<String>,
    /// Table versions read.
    pub snapshot: BTreeMap<String, u64>,
    pub sql: String,
    pub elapsed_ms: u64,
}

/// Where the breakdown's values come from.
enum Breakdown {
    User(String),
    Event(String),
}

fn breakdown_column(cx: &CheckContext<'_>, name: &str) -> Result<Breakdown> {
    let definition = cx.definition;
    let (tables, column): (&[&str], &str) = match name.split_once('.') {
        Some(("users", column)) => (&["users"], column),
        Some(("events", column)) => (&["events"], column),
        Some((table, _)) => {
            return Err(invalid(
                "breakdown",
                format!("'{table}' is neither users nor events"),
            ));
        }
        None => (&["users", "events"], name),
    };
    for table in tables {
        let Some(standard) = definition.table(table).ok().and_then(|t| t.field(column)) else {
            continue;
        };
        let grant = definition.roles.grant(cx.role, standard.sensitivity);
        if grant.read != Visibility::Clear || !grant.condition {
            return Err(invalid(
                "breakdown",
                format!(
                    "role {} may not see the {} field '{name}' in clear",
                    cx.role, standard.sensitivity
                ),
            ));
        }
        let column = compile::ident(column);
        return Ok(if *table == "users" {
            Breakdown::User(column)
        } else {
            Breakdown::Event(column)
        });
    }
    Err(invalid(
        "breakdown",
        format!("no column '{column}' in {}", tables.join(" or ")),
    ))
}

/// Per-step tallies of one group of people.
#[derive(Default)]
struct Tally {
    reached: Vec<u64>,
    gaps: Vec<Vec<i64>>,
}

impl Tally {
    fn add(&mut self, times: &[i64], steps: usize) {
        if self.reached.is_empty() {
            self.reached = vec![0; steps];
            self.gaps = vec![Vec::new(); steps];
        }
        for k in 0..times.len().min(steps) {
            self.reached[k] += 1;
            if k > 0 {
                self.gaps[k].push(times[k] - times[k - 1]);
            }
        }
    }

    fn merge(&mut self, other: Tally, steps: usize) {
        if self.reached.is_empty() {
            self.reached = vec![0; steps];
            self.gaps = vec![Vec::new(); steps];
        }
        for (k, (n, gaps)) in other.reached.into_iter().zip(other.gaps).enumerate() {
            self.reached[k] += n;
            self.gaps[k].extend(gaps);
        }
    }

    fn first(&self) -> u64 {
        self.reached.first().copied().unwrap_or(0)
    }

    fn results(mut self, spec: &FunnelSpec) -> Vec<StepResult> {
        let n = spec.steps.len();
        if self.reached.is_empty() {
            self.reached = vec![0; n];
            self.gaps = vec![Vec::new(); n];
        }
        (0..n)
            .map(|k| {
                let reached = self.reached[k];
                let ratio = |of: u64| (of > 0).then(|| reached as f64 / of as f64);
                StepResult {
                    step: k + 1,
                    event: spec.steps[k].event.clone(),
                    users: reached,
                    conversion_from_previous: if k == 0 {
                        None
                    } else {
                        ratio(self.reached[k - 1])
                    },
                    conversion_from_first: if k == 0 { None } else { ratio(self.reached[0]) },
                    median_seconds_from_previous: median(&mut self.gaps[k]).map(|us| us / 1e6),
                }
            })
            .collect()
    }
}

/// Runs a funnel in `session` as `role`.
pub async fn run(
    session: &Session,
    spec: &FunnelSpec,
    role: Role,
    today: Option<NaiveDate>,
) -> Result<FunnelResult> {
    let started = std::time::Instant::now();
    let window = shoal_catalog::parse_duration(&spec.window)
        .map_err(|e| invalid("window", e))?
        .num_microseconds()
        .filter(|w| *w > 0)
        .ok_or_else(|| invalid("window", "the window must be longer than zero"))?;
    let n = spec.steps.len();
    if n == 0 || n > MAX_STEPS {
        return Err(invalid(
            "steps",
            format!("a funnel has 1 to {MAX_STEPS} steps"),
        ));
    }
    if spec.exclude.len() > MAX_STEPS {
        return Err(invalid(
            "exclude",
            format!("at most {MAX_STEPS} exclusions"),
        ));
    }
    let (cx, today) = context(session, role, today)?;
    let to = spec.to.unwrap_or(today);
    let from = spec.from.unwrap_or(to - chrono::Duration::days(29));
    if from > to {
        return Err(invalid("from", format!("{from} is after {to}")));
    }
    let mut conditions = Vec::new();
    for (i, step) in spec.steps.iter().enumerate() {
        conditions.push(event_predicate(
            &cx,
            &step.event,
            &step.filters,
            &format!("steps[{i}]"),
        )?);
    }
    let mut exclusions = Vec::new();
    for (i, exclusion) in spec.exclude.iter().enumerate() {
        let path = format!("exclude[{i}]");
        let [after, before] = exclusion.between.unwrap_or([1, n]);
        if after < 1 || after >= before || before > n {
            return Err(invalid(
                &format!("{path}.between"),
                format!("steps [A, B] with 1 <= A < B <= {n}"),
            ));
        }
        if n < 2 {
            return Err(invalid(&path, "exclusions need at least two steps"));
        }
        conditions.push(event_predicate(
            &cx,
            &exclusion.event,
            &exclusion.filters,
            &path,
        )?);
        exclusions.push((after, before));
    }
    let breakdown = spec
        .breakdown
        .as_deref()
        .map(|name| breakdown_column(&cx, name))
        .transpose()?;
    let config = FunnelConfig {
        window,
        modes: spec.mode,
        steps: n,
        exclusions,
    };
    let conditions: Vec<String> = conditions.iter().map(|c| format!("({c})")).collect();
    let mut filters =
        format!("e.user_id IS NOT NULL AND e.event_date BETWEEN DATE '{from}' AND DATE '{to}'");
    // No filter on the steps' events: the aggregate passes over the others (strict order
    // needs them), and a filter would copy every column of the rows it keeps.
    // An audience's members are tested on each decoded batch, before the aggregate sees it.
    if let Some(name) = &spec.audience {
        filters.push_str(" AND ");
        filters.push_str(&session.members_filter(name, "e.user_id"));
    }
    let funnel = format!(
        "window_funnel_people({window}, {}, e.user_id, e.event_time, {})",
        compile::text(&config.mode_text()),
        conditions.join(", ")
    );
    let bucket = format!("e.user_id / {}", shoal_query::funnel_people::BUCKET);
    let sql = match &breakdown {
        None => format!(
            "SELECT NULL AS value, {funnel} AS people FROM events e WHERE {filters} \
             GROUP BY {bucket}"
        ),
        Some(Breakdown::Event(column)) => format!(
            "SELECT CAST(e.{column} AS VARCHAR) AS value, {funnel} AS people FROM events e \
             WHERE {filters} GROUP BY {bucket}, e.{column}"
        ),
        Some(Breakdown::User(column)) => format!(
            "WITH b AS (SELECT {funnel} AS people FROM events e WHERE {filters} GROUP BY {bucket}), \
             p AS (SELECT unnest(people) AS person FROM b) \
             SELECT CAST(u.{column} AS VARCHAR) AS value, p.person FROM p \
             LEFT JOIN users u ON u.user_id = p.person['user_id']"
        ),
    };
    let frame = session.sql(&sql).await?;
    let mut stream = session.stream(frame).await?;
    let mut tallies: HashMap<Option<String>, Tally> = HashMap::new();
    let mut excluded = 0u64;
    let work = async {
        while let Some(batch) = stream.try_next().await? {
            let values = arrow::compute::cast(batch.column(0), &arrow::datatypes::DataType::Utf8)?;
            let values = values.as_string::<i32>();
            // Per bucket, a list of people; after a join, one person per row.
            let column = batch.column(1);
            let (people, bounds): (&StructArray, Vec<usize>) =
                if let Some(list) = column.as_list_opt::<i32>() {
                    let Some(people) = list.values().as_struct_opt() else {
                        return Err(DataFusionError::Internal("window_funnel answer".into()));
                    };
                    (
                        people,
                        list.value_offsets().iter().map(|o| *o as usize).collect(),
                    )
                } else if let Some(people) = column.as_struct_opt() {
                    (people, (0..=people.len()).collect())
                } else {
                    return Err(DataFusionError::Internal("window_funnel answer".into()));
                };
            let Some(times) = people.column(1).as_list_opt::<i32>() else {
                return Err(DataFusionError::Internal("window_funnel times".into()));
            };
            let Some(time_values) = times.values().as_primitive_opt::<Int64Type>() else {
                return Err(DataFusionError::Internal("window_funnel times".into()));
            };
            let (offsets, time_values) = (times.value_offsets(), time_values.values());
            for row in 0..bounds.len().saturating_sub(1) {
                if column.is_null(row) {
                    continue;
                }
                let value = values.is_valid(row).then(|| values.value(row).to_string());
                for person in bounds[row]..bounds[row + 1] {
                    if times.is_null(person) {
                        excluded += 1;
                        continue;
                    }
                    let chain =
                        &time_values[offsets[person] as usize..offsets[person + 1] as usize];
                    if !chain.is_empty() {
                        tallies.entry(value.clone()).or_default().add(chain, n);
                    }
                }
            }
        }
        Ok(())
    };
    session.limited(work).await?;
    let (steps, groups) = if breakdown.is_none() {
        let tally = tallies.remove(&None).unwrap_or_default();
        (Some(tally.results(spec)), None)
    } else {
        let mut ordered: Vec<(Option<String>, Tally)> = tallies.into_iter().collect();
        ordered.sort_by(|a, b| b.1.first().cmp(&a.1.first()).then(a.0.cmp(&b.0)));
        let mut groups = Vec::new();
        let mut rest: Option<Tally> = None;
        for (i, (value, tally)) in ordered.into_iter().enumerate() {
            if i < MAX_GROUPS {
                groups.push(GroupResult {
                    value,
                    steps: tally.results(spec),
                });
            } else {
                rest.get_or_insert_with(Tally::default).merge(tally, n);
            }
        }
        if let Some(rest) = rest {
            groups.push(GroupResult {
                value: Some(OTHER_VALUES.to_string()),
                steps: rest.results(spec),
            });
        }
        (None, Some(groups))
    };
    Ok(FunnelResult {
        steps,
        breakdown: spec.breakdown.clone(),
        groups,
        excluded,
        window_seconds: window / 1_000_000,
        mode: spec.mode,
        from,
        to,
        audience: spec.audience.clone(),
        snapshot: session.versions(),
        sql,
        elapsed_ms: started.elapsed().as_millis() as u64,
    })
}

/// The median of `values` (the mean of the middle two for an even count).
fn median(values: &mut [i64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_unstable();
    let mid = values.len() / 2;
    Some(if values.len() % 2 == 1 {
        values[mid] as f64
    } else {
        (values[mid - 1] as f64 + values[mid] as f64) / 2.0
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(&mut []), None);
        assert_eq!(median(&mut [5, 1, 3]), Some(3.0));
        assert_eq!(median(&mut [4, 1, 3, 2]), Some(2.5));
    }
}
