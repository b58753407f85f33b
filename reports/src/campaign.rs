//! Campaign funnel and ROI (看效果): a campaign's target (a pack) → reached (delivered) →
//! clicked → converted within N days of the first delivery, the value it made and lost, its
//! cost and ROI = (positive − negative − cost) / cost; and, with a holdout pack, the uplift of
//! the conversion rate over the holdout with its 95% confidence interval.

use std::collections::BTreeMap;

use arrow::array::{Array, AsArray};
use arrow::datatypes::{DataType, Float64Type};
use chrono::NaiveDate;
use datafusion::error::DataFusionError;
use futures::TryStreamExt;
use serde::{Deserialize, Serialize};
use shoal_catalog::Role;
use shoal_query::{Result, Session, compile};

pub use crate::spec::EventSpec;
use crate::spec::{context, event_predicate, invalid};

/// What a unit of value counts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// Conversion events.
    Conversions,
    /// People who converted.
    Converters,
    /// The revenue of conversion events.
    Revenue,
    /// Events of this name (e.g. unfollow_official_account).
    Event(String),
}

/// A metric and what one unit of it is worth (yuan; a margin, a follower's value).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Worth {
    pub metric: Metric,
    pub value: f64,
}

/// What the campaign cost.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Cost {
    #[serde(default)]
    pub per_delivery: f64,
    #[serde(default)]
    pub fixed: f64,
}

/// A campaign report request.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CampaignSpec {
    /// The campaign id on its events.
    pub campaign: String,
    /// The target pack (its current version); default: everyone it was delivered to.
    #[serde(default)]
    pub audience: Option<String>,
    /// A holdout pack that was not sent to.
    #[serde(default)]
    pub control: Option<String>,
    /// Days of deliveries.
    pub from: NaiveDate,
    pub to: NaiveDate,
    /// Days after a person's first delivery that conversions count (default 7).
    #[serde(default)]
    pub days: Option<u32>,
    #[serde(default)]
    pub delivered: Option<EventSpec>,
    #[serde(default)]
    pub clicked: Option<EventSpec>,
    #[serde(default)]
    pub conversion: Option<EventSpec>,
    #[serde(default)]
    pub positive: Vec<Worth>,
    #[serde(default)]
    pub negative: Vec<Worth>,
    #[serde(default)]
    pub cost: Cost,
}

/// One line of value.
#[derive(Debug, Clone, Serialize)]
pub struct ValueLine {
    pub metric: Metric,
    pub units: f64,
    pub unit_value: f64,
    pub value: f64,
}

/// The holdout comparison.
#[derive(Debug, Clone, Serialize)]
pub struct Holdout {
    pub control: String,
    pub control_size: u64,
    pub control_converted: u64,
    pub control_rate: f64,
    pub target_size: u64,
    pub target_converted: u64,
    pub target_rate: f64,
    /// target_rate − control_rate, and its 95% confidence interval.
    pub uplift: f64,
    pub uplift_low: Option<f64>,
    pub uplift_high: Option<f64>,
    /// uplift × target size.
    pub incremental_converters: f64,
}

/// A campaign report.
#[derive(Debug, Clone, Serialize)]
pub struct CampaignResult {
    pub campaign: String,
    pub target: u64,
    pub reached: u64,
    pub clicked: u64,
    pub converted: u64,
    pub deliveries: u64,
    pub reach_rate: Option<f64>,
    pub click_rate: Option<f64>,
    pub conversion_rate: Option<f64>,
    pub positive: Vec<ValueLine>,
    pub negative: Vec<ValueLine>,
    pub cost: f64,
    pub net: f64,
    /// (positive − negative − cost) / cost; none without a cost.
    pub roi: Option<f64>,
    pub holdout: Option<Holdout>,
    pub from: NaiveDate,
    pub to: NaiveDate,
    pub days: u32,
    pub snapshot: BTreeMap<String, u64>,
    pub sql: String,
    pub elapsed_ms: u64,
}

/// One number from the first row of `sql`'s answer, by column.
async fn numbers(session: &Session, sql: &str) -> Result<Vec<f64>> {
    let frame = session.sql(sql).await?;
    let mut stream = session.stream(frame).await?;
    let mut out = Vec::new();
    let work = async {
        while let Some(batch) = stream.try_next().await? {
            if batch.num_rows() == 0 {
                continue;
            }
            for column in batch.columns() {
                let column = arrow::compute::cast(column, &DataType::Float64)?;
                let column = column.as_primitive::<Float64Type>();
                out.push(if column.is_null(0) {
                    0.0
                } else {
                    column.value(0)
                });
            }
            break;
        }
        Ok::<_, DataFusionError>(())
    };
    session.limited(work).await?;
    Ok(out)
}

/// A campaign seen in the events: the days it was delivered on and how many it reached.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CampaignSummary {
    pub campaign: String,
    /// First and last day (catalog zone) with a delivery.
    pub first_day: String,
    pub last_day: String,
    pub deliveries: u64,
    pub people: u64,
}

/// The campaigns with deliveries (`campaign_message_delivered` carrying a `campaign_id`), the
/// most recent first: what a campaign report can be run on.
pub async fn campaigns(session: &Session) -> Result<Vec<CampaignSummary>> {
    let sql = "SELECT campaign_id, CAST(min(event_date) AS VARCHAR) AS first_day, \
               CAST(max(event_date) AS VARCHAR) AS last_day, count(*) AS deliveries, \
               count(DISTINCT user_id) AS people FROM events \
               WHERE event_name = 'campaign_message_delivered' AND campaign_id IS NOT NULL \
               GROUP BY campaign_id ORDER BY last_day DESC, campaign_id LIMIT 1000";
    let frame = session.sql(sql).await?;
    let mut stream = session.stream(frame).await?;
    let mut out = Vec::new();
    let work = async {
        while let Some(batch) = stream.try_next().await? {
            let text = |i: usize| arrow::compute::cast(batch.column(i), &DataType::Utf8);
            let count = |i: usize| arrow::compute::cast(batch.column(i), &DataType::UInt64);
            let (names, firsts, lasts) = (text(0)?, text(1)?, text(2)?);
            let (deliveries, people) = (count(3)?, count(4)?);
            let (names, firsts, lasts) = (
                names.as_string::<i32>(),
                firsts.as_string::<i32>(),
                lasts.as_string::<i32>(),
            );
            let deliveries = deliveries.as_primitive::<arrow::datatypes::UInt64Type>();
            let people = people.as_primitive::<arrow::datatypes::UInt64Type>();
            for row in 0..batch.num_rows() {
                out.push(CampaignSummary {
                    campaign: names.value(row).to_string(),
                    first_day: firsts.value(row).to_string(),
                    last_day: lasts.value(row).to_string(),
                    deliveries: deliveries.value(row),
                    people: people.value(row),
                });
            }
        }
        Ok::<_, DataFusionError>(())
    };
    session.limited(work).await?;
    Ok(out)
}

fn rate(part: u64, whole: u64) -> Option<f64> {
    (whole > 0).then(|| part as f64 / whole as f64)
}

/// Runs a campaign report in `session` as `role`.
pub async fn run(session: &Session, spec: &CampaignSpec, role: Role) -> Result<CampaignResult> {
    let started = std::time::Instant::now();
    if spec.from > spec.to {
        return Err(invalid(
            "from",
            format!("{} is after {}", spec.from, spec.to),
        ));
    }
    let days = spec.days.unwrap_or(7);
    if days == 0 || days > 365 {
        return Err(invalid("days", "1 to 365 days"));
    }
    for (i, line) in spec.positive.iter().chain(&spec.negative).enumerate() {
        if !line.value.is_finite() {
            return Err(invalid(&format!("values[{i}].value"), "a finite number"));
        }
    }
    if !(spec.cost.per_delivery.is_finite() && spec.cost.fixed.is_finite())
        || spec.cost.per_delivery < 0.0
        || spec.cost.fixed < 0.0
    {
        return Err(invalid("cost", "costs are finite numbers of at least 0"));
    }
    let (cx, _) = context(session, role, Some(spec.to))?;
    let campaign = compile::text(&spec.campaign);
    let checked = |given: &Option<EventSpec>, default: &str, path: &str| {
        let e = given.clone().unwrap_or_else(|| EventSpec::named(default));
        event_predicate(&cx, &e.event, &e.filters, path)
    };
    let delivered = checked(&spec.delivered, "campaign_message_delivered", "delivered")?;
    let clicked = checked(&spec.clicked, "campaign_message_clicked", "clicked")?;
    let conversion = checked(&spec.conversion, "purchase", "conversion")?;
    let (from, to) = (spec.from, spec.to);
    let until = to + chrono::Duration::days(i64::from(days));
    let in_target = |alias: &str| match &spec.audience {
        Some(name) => format!(
            " AND {}",
            session.members_filter(name, &format!("{alias}.user_id"))
        ),
        None => String::new(),
    };
    let mut measures = vec![
        format!("count(*) FILTER (WHERE {conversion})"),
        format!("CAST(count(*) FILTER (WHERE {conversion}) > 0 AS BIGINT)"),
        format!("sum(CAST(e.revenue AS DOUBLE)) FILTER (WHERE {conversion})"),
    ];
    let lines: Vec<&Worth> = spec.positive.iter().chain(&spec.negative).collect();
    for line in &lines {
        if let Metric::Event(name) = &line.metric {
            measures.push(format!(
                "count(*) FILTER (WHERE e.event_name = {})",
                compile::text(name)
            ));
        }
    }
    let per_person: Vec<String> = measures
        .iter()
        .enumerate()
        .map(|(i, m)| format!("{m} AS m{i}"))
        .collect();
    let totals: Vec<String> = (0..measures.len())
        .map(|i| format!("sum(x.m{i}) AS t{i}"))
        .collect();
    let sql = format!(
        "WITH d AS (SELECT e.user_id, min(e.event_time) AS first_at, count(*) AS deliveries \
           FROM events e WHERE e.user_id IS NOT NULL \
           AND e.event_date BETWEEN DATE '{from}' AND DATE '{to}' \
           AND e.campaign_id = {campaign} AND {delivered}{target} GROUP BY e.user_id), \
         k AS (SELECT DISTINCT e.user_id FROM events e WHERE e.user_id IS NOT NULL \
           AND e.event_date BETWEEN DATE '{from}' AND DATE '{until}' \
           AND e.campaign_id = {campaign} AND {clicked}), \
         x AS (SELECT d.user_id, {per_person} FROM d JOIN events e ON e.user_id = d.user_id \
           AND e.event_date BETWEEN DATE '{from}' AND DATE '{until}' \
           AND e.event_time >= d.first_at AND e.event_time < d.first_at + INTERVAL '{days} days' \
           GROUP BY d.user_id) \
         SELECT (SELECT count(*) FROM d) AS reached, (SELECT sum(deliveries) FROM d) AS deliveries, \
           (SELECT count(*) FROM d JOIN k ON k.user_id = d.user_id) AS clicked, {totals} FROM x",
        target = in_target("e"),
        per_person = per_person.join(", "),
        totals = totals.join(", "),
    );
    let answer = numbers(session, &sql).await?;
    let at = |i: usize| answer.get(i).copied().unwrap_or(0.0);
    let (reached, deliveries, clicked_people) = (at(0) as u64, at(1) as u64, at(2) as u64);
    let (conversions, converters, revenue) = (at(3), at(4), at(5));
    let target = match &spec.audience {
        Some(name) => session.audience(name).await?.len(),
        None => reached,
    };
    let mut extra = 6;
    let mut value_lines = Vec::new();
    for line in &lines {
        let units = match &line.metric {
            Metric::Conversions => conversions,
            Metric::Converters => converters,
            Metric::Revenue => revenue,
            Metric::Event(_) => {
                extra += 1;
                at(extra - 1)
            }
        };
        value_lines.push(ValueLine {
            metric: line.metric.clone(),
            units,
            unit_value: line.value,
            value: units * line.value,
        });
    }
    let negative = value_lines.split_off(spec.positive.len());
    let positive = value_lines;
    let cost = spec.cost.per_delivery * deliveries as f64 + spec.cost.fixed;
    let net = positive.iter().map(|l| l.value).sum::<f64>()
        - negative.iter().map(|l| l.value).sum::<f64>()
        - cost;
    let holdout = match &spec.control {
        Some(control) => Some(holdout(session, spec, control, &conversion, until).await?),
        None => None,
    };
    Ok(CampaignResult {
        campaign: spec.campaign.clone(),
        target,
        reached,
        clicked: clicked_people,
        converted: converters as u64,
        deliveries,
        reach_rate: rate(reached, target),
        click_rate: rate(clicked_people, reached),
        conversion_rate: rate(converters as u64, reached),
        positive,
        negative,
        cost,
        net,
        roi: (cost > 0.0).then(|| net / cost),
        holdout,
        from,
        to,
        days,
        snapshot: session.versions(),
        sql,
        elapsed_ms: started.elapsed().as_millis() as u64,
    })
}

/// Conversion rates of the target and the holdout over the same days, and the uplift.
async fn holdout(
    session: &Session,
    spec: &CampaignSpec,
    control: &str,
    conversion: &str,
    until: NaiveDate,
) -> Result<Holdout> {
    let Some(target_name) = &spec.audience else {
        return Err(invalid(
            "control",
            "a holdout is compared with a target audience: give one",
        ));
    };
    let from = spec.from;
    let converted = |name: &str| {
        format!(
            "SELECT count(DISTINCT e.user_id) FROM events e WHERE e.user_id IS NOT NULL \
             AND e.event_date BETWEEN DATE '{from}' AND DATE '{until}' AND {conversion} \
             AND {}",
            session.members_filter(name, "e.user_id")
        )
    };
    let target_size = session.audience(target_name).await?.len();
    let control_size = session.audience(control).await?.len();
    let target_converted = numbers(session, &converted(target_name)).await?[0] as u64;
    let control_converted = numbers(session, &converted(control)).await?[0] as u64;
    let p1 = rate(target_converted, target_size).unwrap_or(0.0);
    let p0 = rate(control_converted, control_size).unwrap_or(0.0);
    let se = (target_size > 0 && control_size > 0).then(|| {
        (p1 * (1.0 - p1) / target_size as f64 + p0 * (1.0 - p0) / control_size as f64).sqrt()
    });
    let uplift = p1 - p0;
    Ok(Holdout {
        control: control.to_string(),
        control_size,
        control_converted,
        control_rate: p0,
        target_size,
        target_converted,
        target_rate: p1,
        uplift,
        uplift_low: se.map(|se| uplift - 1.96 * se),
        uplift_high: se.map(|se| uplift + 1.96 * se),
        incremental_converters: uplift * target_size as f64,
    })
}
