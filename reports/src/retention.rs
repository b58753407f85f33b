//! Retention: of the people who did the cohort event in a period (for the first time ever, or
//! in that period at all), how many did the return event 0, 1, …, N periods later; by day or
//! by week (Monday weeks), in the catalog's zone. A cohort can also be an audience pack's
//! members, starting on `from`.

use std::collections::BTreeMap;

use arrow::array::{Array, AsArray};
use arrow::datatypes::{DataType, Int64Type};
use chrono::{Datelike, NaiveDate};
use datafusion::error::DataFusionError;
use futures::TryStreamExt;
use serde::{Deserialize, Serialize};
use shoal_catalog::Role;
use shoal_query::{Result, Session, compile};

pub use crate::spec::EventSpec;
use crate::spec::{context, event_predicate, invalid};

/// Most periods after the cohort's.
pub const MAX_PERIODS: u32 = 90;
/// Most cohorts in one report.
pub const MAX_COHORTS: i64 = 400;

/// Day or Monday-to-Sunday week.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Period {
    #[default]
    Day,
    Week,
}

impl Period {
    fn days(self) -> i64 {
        match self {
            Period::Day => 1,
            Period::Week => 7,
        }
    }

    /// The first day of the period holding `day`.
    pub fn start(self, day: NaiveDate) -> NaiveDate {
        match self {
            Period::Day => day,
            Period::Week => {
                day - chrono::Duration::days(day.weekday().num_days_from_monday().into())
            }
        }
    }
}

/// Who starts a cohort.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
#[schema(as = RetentionKind)]
pub enum Kind {
    /// A person joins the cohort of the period of their first cohort event ever.
    #[default]
    FirstTime,
    /// A person joins the cohort of every period with a cohort event.
    Recurring,
}

/// A retention request.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RetentionSpec {
    /// The cohort event; or `audience`.
    #[serde(default)]
    pub cohort: Option<EventSpec>,
    /// A pack whose members (its current version) form one cohort starting on `from`.
    #[serde(default)]
    pub audience: Option<String>,
    /// The return event (default: any event).
    #[serde(default, rename = "return")]
    pub returning: Option<EventSpec>,
    #[serde(default)]
    pub period: Period,
    /// Periods after the cohort's to count (default 7 days or 8 weeks).
    #[serde(default)]
    pub periods: Option<u32>,
    #[serde(default)]
    pub kind: Kind,
    /// Days of the cohorts (default: the 30 days to today).
    #[serde(default)]
    pub from: Option<NaiveDate>,
    #[serde(default)]
    pub to: Option<NaiveDate>,
}

/// One cohort's row.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CohortRow {
    /// First day of the cohort's period.
    pub cohort: NaiveDate,
    pub size: u64,
    /// People who returned in period 0, 1, … (periods not over yet are left out).
    pub retained: Vec<u64>,
    pub rates: Vec<f64>,
}

/// A retention report.
#[derive(Debug, Clone, Serialize)]
pub struct RetentionResult {
    pub cohorts: Vec<CohortRow>,
    /// Per period: retained over the sizes of the cohorts that have reached it.
    pub average: Vec<Option<f64>>,
    pub period: Period,
    pub periods: u32,
    pub kind: Kind,
    pub from: NaiveDate,
    pub to: NaiveDate,
    pub snapshot: BTreeMap<String, u64>,
    pub sql: String,
    pub elapsed_ms: u64,
}

/// Runs a retention report in `session` as `role`.
pub async fn run(
    session: &Session,
    spec: &RetentionSpec,
    role: Role,
    today: Option<NaiveDate>,
) -> Result<RetentionResult> {
    let started = std::time::Instant::now();
    let (cx, today) = context(session, role, today)?;
    let period = spec.period;
    let periods = spec.periods.unwrap_or(match period {
        Period::Day => 7,
        Period::Week => 8,
    });
    if periods > MAX_PERIODS {
        return Err(invalid("periods", format!("at most {MAX_PERIODS} periods")));
    }
    let to = spec.to.unwrap_or(today);
    let from = spec.from.unwrap_or(to - chrono::Duration::days(29));
    if from > to {
        return Err(invalid("from", format!("{from} is after {to}")));
    }
    let (first, last) = (period.start(from), period.start(to));
    if (last - first).num_days() / period.days() >= MAX_COHORTS {
        return Err(invalid(
            "from",
            format!("at most {MAX_COHORTS} cohorts in one report"),
        ));
    }
    // The last day any return can fall on.
    let horizon = last + chrono::Duration::days(period.days() * (i64::from(periods) + 1) - 1);
    let period_of = |column: &str| match period {
        Period::Day => column.to_string(),
        Period::Week => format!("CAST(date_trunc('week', {column}) AS DATE)"),
    };
    let cohort_sql = match (&spec.cohort, &spec.audience) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                "audience",
                "give a cohort event or an audience, not both",
            ));
        }
        (None, None) => return Err(invalid("cohort", "a cohort event or an audience is needed")),
        (Some(cohort), None) => {
            let predicate = event_predicate(&cx, &cohort.event, &cohort.filters, "cohort")?;
            match spec.kind {
                Kind::FirstTime => format!(
                    "SELECT user_id, cohort FROM (SELECT e.user_id, {} AS cohort \
                     FROM events e WHERE e.user_id IS NOT NULL AND e.event_date <= DATE '{last_day}' \
                     AND {predicate} GROUP BY e.user_id) \
                     WHERE cohort BETWEEN DATE '{first}' AND DATE '{last}'",
                    period_of("min(e.event_date)"),
                    last_day = to,
                ),
                Kind::Recurring => format!(
                    "SELECT DISTINCT e.user_id, {} AS cohort FROM events e \
                     WHERE e.user_id IS NOT NULL AND e.event_date BETWEEN DATE '{from}' AND DATE '{to}' \
                     AND {predicate}",
                    period_of("e.event_date"),
                ),
            }
        }
        (None, Some(name)) => format!(
            "SELECT u.user_id, DATE '{first}' AS cohort FROM users u \
             WHERE rb_contains({}({}), u.user_id)",
            compile::AUDIENCE_FUNCTION,
            compile::text(name)
        ),
    };
    let return_predicate = match &spec.returning {
        Some(r) => event_predicate(&cx, &r.event, &r.filters, "return")?,
        None => "TRUE".to_string(),
    };
    let sql = format!(
        "WITH c AS ({cohort_sql}), \
         r AS (SELECT DISTINCT e.user_id, {} AS p FROM events e \
               WHERE e.user_id IS NOT NULL AND e.event_date BETWEEN DATE '{first}' AND DATE '{horizon}' \
               AND {return_predicate}), \
         sizes AS (SELECT cohort, count(*) AS n FROM c GROUP BY cohort), \
         back AS (SELECT c.cohort, \
                    (CAST(arrow_cast(r.p, 'Int32') AS BIGINT) - CAST(arrow_cast(c.cohort, 'Int32') AS BIGINT)) / {} AS k, \
                    count(*) AS n \
                  FROM c JOIN r ON r.user_id = c.user_id AND r.p >= c.cohort \
                  GROUP BY 1, 2) \
         SELECT s.cohort, s.n AS size, b.k, b.n FROM sizes s LEFT JOIN back b \
           ON b.cohort = s.cohort AND b.k <= {periods} ORDER BY s.cohort, b.k",
        period_of("e.event_date"),
        period.days(),
    );
    let frame = session.sql(&sql).await?;
    let mut stream = session.stream(frame).await?;
    let mut rows: BTreeMap<NaiveDate, (u64, Vec<u64>)> = BTreeMap::new();
    let epoch = NaiveDate::from_ymd_opt(1970, 1, 1).unwrap_or_default();
    let work = async {
        while let Some(batch) = stream.try_next().await? {
            let cohort = arrow::compute::cast(batch.column(0), &DataType::Int32)?;
            let cohort = cohort.as_primitive::<arrow::datatypes::Int32Type>();
            let size = arrow::compute::cast(batch.column(1), &DataType::Int64)?;
            let size = size.as_primitive::<Int64Type>();
            let k = arrow::compute::cast(batch.column(2), &DataType::Int64)?;
            let k = k.as_primitive::<Int64Type>();
            let n = arrow::compute::cast(batch.column(3), &DataType::Int64)?;
            let n = n.as_primitive::<Int64Type>();
            for row in 0..batch.num_rows() {
                if cohort.is_null(row) {
                    continue;
                }
                let day = epoch + chrono::Duration::days(cohort.value(row).into());
                let entry = rows.entry(day).or_insert_with(|| {
                    (size.value(row).max(0) as u64, vec![0; periods as usize + 1])
                });
                if k.is_valid(row)
                    && n.is_valid(row)
                    && let Some(slot) = usize::try_from(k.value(row))
                        .ok()
                        .and_then(|k| entry.1.get_mut(k))
                {
                    *slot = n.value(row).max(0) as u64;
                }
            }
        }
        Ok::<_, DataFusionError>(())
    };
    session.limited(work).await?;
    // Periods that have not ended by `today` are left out of a cohort's row.
    let today_period = period.start(today);
    let mut average_num = vec![0u64; periods as usize + 1];
    let mut average_den = vec![0u64; periods as usize + 1];
    let cohorts = rows
        .into_iter()
        .map(|(cohort, (size, retained))| {
            let seen = ((today_period - cohort).num_days() / period.days()).max(0) as usize;
            let retained: Vec<u64> = retained.into_iter().take(seen + 1).collect();
            for (k, n) in retained.iter().enumerate() {
                average_num[k] += n;
                average_den[k] += size;
            }
            let rates = retained
                .iter()
                .map(|n| {
                    if size == 0 {
                        0.0
                    } else {
                        *n as f64 / size as f64
                    }
                })
                .collect();
            CohortRow {
                cohort,
                size,
                retained,
                rates,
            }
        })
        .collect();
    let average = average_num
        .iter()
        .zip(&average_den)
        .map(|(n, d)| (*d > 0).then(|| *n as f64 / *d as f64))
        .collect();
    Ok(RetentionResult {
        cohorts,
        average,
        period,
        periods,
        kind: spec.kind,
        from,
        to,
        snapshot: session.versions(),
        sql,
        elapsed_ms: started.elapsed().as_millis() as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weeks_start_on_monday() {
        let day = |d| NaiveDate::from_ymd_opt(2026, 11, d).expect("day");
        // 2026-11-23 is a Monday.
        assert_eq!(Period::Week.start(day(23)), day(23));
        assert_eq!(Period::Week.start(day(29)), day(23));
        assert_eq!(Period::Week.start(day(22)), day(16));
        assert_eq!(Period::Day.start(day(22)), day(22));
    }
}
