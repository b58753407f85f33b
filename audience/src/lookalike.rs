//! Lookalike expansion: the people outside a seed pack who are most like its members.
//!
//! Method. Every person is a vector of features read from `users`: numeric fields
//! (non-negative counts and amounts are `ln(1 + x)`-compressed), booleans as 0/1, enum fields
//! one-hot per catalog value, and time fields as `ln(1 + days before T)`. Each feature is
//! standardised over the whole universe (z-score, a missing value scores the mean, z clipped
//! to ±5); features that never vary are dropped. Two scorers:
//!
//! - `logistic` (default): an L2-regularised logistic regression, seed members against a
//!   sample of everyone else, classes weighted equally, fitted by Newton's method; a person's
//!   score is the fitted probability of being a seed member.
//! - `cosine`: the cosine similarity between a person's vector and the seed's centroid.
//!
//! The expansion is the `size` (or top `percent`) highest-scoring people outside the seed;
//! ties go to the lower user id, so the same snapshot gives the same pack.
//!
//! Holdout check. A fixed fifth of the seed (by a hash of the user id) is hidden, a second
//! model is fitted on the rest, and an expansion of the same size is drawn from everyone but
//! the visible seed. The report gives the share of hidden members it found, the share a random
//! draw would find, and their ratio (the lift): how much better than random the method is on
//! this seed.

use std::cmp::Ordering;

use arrow::array::{Array, AsArray};
use arrow::datatypes::{DataType, Float64Type, Int64Type};
use chrono::NaiveDate;
use futures::TryStreamExt;
use roaring::RoaringBitmap;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use shoal_catalog::{FieldStandard, Role, Sensitivity, ValueType};
use shoal_query::{Engine, Session};

use crate::error::{Error, Result};

/// Seed members and other people used to fit a model, at most this many of each.
const TRAINING_ROWS: u64 = 50_000;
/// Fewest seed members a lookalike starts from.
pub const MIN_SEED: u64 = 20;
/// Standardised values are clipped to this many standard deviations.
const CLIP: f64 = 5.0;
/// L2 penalty of the logistic regression (per unit of total class weight).
const L2: f64 = 1e-3;

/// How people are scored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    #[default]
    Logistic,
    Cosine,
}

/// A lookalike definition, stored verbatim.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LookalikeSpec {
    /// The seed pack (its current version at each computation).
    pub seed: String,
    /// How many people to add.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// Or: this percentage of the people outside the seed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<f64>,
    #[serde(default)]
    pub method: Method,
    /// Fields of `users` to compare on; empty: every public numeric, bool, enum and time field.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub features: Vec<String>,
}

impl LookalikeSpec {
    /// Checks the parts that do not need the warehouse.
    pub fn check(&self) -> Result<()> {
        match (self.size, self.percent) {
            (Some(0), None) => Err(Error::invalid(
                "lookalike.size",
                "the expansion must add at least one person",
            )),
            (Some(_), None) => Ok(()),
            (None, Some(p)) if p.is_finite() && p > 0.0 && p <= 100.0 => Ok(()),
            (None, Some(p)) => Err(Error::invalid(
                "lookalike.percent",
                format!("{p} is not a percentage above 0 and at most 100"),
            )),
            _ => Err(Error::invalid(
                "lookalike",
                "give exactly one of size (people to add) or percent (of the people outside the seed)",
            )),
        }
    }
}

/// How a column becomes numbers.
#[derive(Debug, Clone)]
enum Encoding {
    /// As is.
    Plain,
    /// `ln(1 + max(x, 0))`.
    Log,
    /// 1 when the value is this one, else 0.
    OneHot(String),
    /// `ln(1 + days before T)`.
    DaysBefore,
    /// 1 for true, 0 for false.
    Bool,
}

/// One feature: a column of the query and its encoding.
#[derive(Debug, Clone)]
struct Feature {
    name: String,
    /// The field of `users` it reads.
    field: String,
    column: String,
    encoding: Encoding,
}

/// The features of a spec, checked against the catalog and the caller's role.
fn features(session: &Session, spec: &LookalikeSpec, role: Role) -> Result<Vec<Feature>> {
    let definition = session.catalog().definition();
    let users = definition.table("users")?;
    let usable = |f: &FieldStandard| definition.roles.grant(role, f.sensitivity).condition;
    let chosen: Vec<&FieldStandard> = if spec.features.is_empty() {
        users
            .fields
            .iter()
            .filter(|f| {
                f.sensitivity == Sensitivity::Public
                    && !users.key.contains(&f.name)
                    && encodable(f.value_type)
                    && usable(f)
            })
            .collect()
    } else {
        let mut chosen = Vec::new();
        for name in &spec.features {
            let field = users.field(name).ok_or_else(|| {
                Error::invalid("lookalike.features", format!("users has no field '{name}'"))
            })?;
            if !encodable(field.value_type) {
                return Err(Error::invalid(
                    "lookalike.features",
                    format!(
                        "'{name}' is {}: features are numeric, bool, enum or time fields",
                        field.value_type
                    ),
                ));
            }
            if !usable(field) {
                return Err(Error::Forbidden(format!(
                    "role {role} may not use '{name}' ({}) in conditions",
                    field.sensitivity
                )));
            }
            chosen.push(field);
        }
        chosen
    };
    let mut out = Vec::new();
    for (i, field) in chosen.into_iter().enumerate() {
        let column = format!("f{i}");
        let mut push = |name: String, encoding| {
            out.push(Feature {
                name,
                field: field.name.clone(),
                column: column.clone(),
                encoding,
            })
        };
        match field.value_type {
            ValueType::Int | ValueType::Float | ValueType::Decimal => {
                let non_negative = field.range.is_some_and(|[low, _]| low >= 0.0);
                let encoding = if non_negative {
                    Encoding::Log
                } else {
                    Encoding::Plain
                };
                push(field.name.clone(), encoding);
            }
            ValueType::Bool => push(field.name.clone(), Encoding::Bool),
            ValueType::Time => push(field.name.clone(), Encoding::DaysBefore),
            ValueType::Enum => {
                for value in &field.values {
                    push(
                        format!("{}={value}", field.name),
                        Encoding::OneHot(value.clone()),
                    );
                }
            }
            _ => {}
        }
    }
    if out.is_empty() {
        return Err(Error::invalid(
            "lookalike.features",
            "no feature to compare people on",
        ));
    }
    Ok(out)
}

fn encodable(t: ValueType) -> bool {
    matches!(
        t,
        ValueType::Int
            | ValueType::Float
            | ValueType::Decimal
            | ValueType::Bool
            | ValueType::Enum
            | ValueType::Time
    )
}

/// The query reading every person's raw feature columns (one per field).
fn feature_sql(features: &[Feature]) -> String {
    let mut columns: Vec<String> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for feature in features {
        if !seen.insert(feature.column.as_str()) {
            continue;
        }
        let field = &feature.field;
        let expr = match feature.encoding {
            Encoding::OneHot(_) => format!("\"{field}\""),
            Encoding::Bool => {
                format!("CASE WHEN \"{field}\" THEN 1.0 WHEN NOT \"{field}\" THEN 0.0 END")
            }
            Encoding::DaysBefore => format!("CAST(date_part('epoch', \"{field}\") AS DOUBLE)"),
            Encoding::Plain | Encoding::Log => format!("CAST(\"{field}\" AS DOUBLE)"),
        };
        columns.push(format!("{expr} AS {}", feature.column));
    }
    format!(
        "SELECT CAST(user_id AS BIGINT) AS user_id, {} FROM users",
        columns.join(", ")
    )
}

/// A well-mixed 64-bit hash of a user id under a salt (splitmix64).
fn mix(id: u32, salt: u64) -> u64 {
    let mut z = (id as u64) ^ salt.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// True for a share `rate` of ids, the same ones every time.
fn sampled(id: u32, salt: u64, rate: f64) -> bool {
    rate >= 1.0 || (mix(id, salt) as f64) < rate * (u64::MAX as f64)
}

/// Hidden seed members of the holdout check: a fixed fifth.
fn hidden(id: u32) -> bool {
    mix(id, 7).is_multiple_of(5)
}

/// Reads every person's encoded features, one batch at a time.
struct Reader<'a> {
    features: &'a [Feature],
    /// Seconds since the epoch of `T`, for time features.
    t_seconds: f64,
}

impl Reader<'_> {
    /// Calls `each(user_id, values)` for every person; NaN marks a missing value.
    async fn each(
        &self,
        session: &Session,
        sql: &str,
        mut each: impl FnMut(u32, &[f64]),
    ) -> Result<()> {
        let frame = session.sql(sql).await?;
        let mut stream = session.stream(frame).await?;
        let features = self.features;
        let t_seconds = self.t_seconds;
        let work = async {
            let mut row = vec![f64::NAN; features.len()];
            while let Some(batch) = stream.try_next().await? {
                let ids = arrow::compute::cast(batch.column(0), &DataType::Int64)?;
                let ids = ids.as_primitive::<Int64Type>();
                let mut columns = Vec::with_capacity(features.len());
                for feature in features {
                    let column = batch.column_by_name(&feature.column).ok_or_else(|| {
                        datafusion::error::DataFusionError::Internal(format!(
                            "missing feature column {}",
                            feature.column
                        ))
                    })?;
                    let wanted = match feature.encoding {
                        Encoding::OneHot(_) => DataType::Utf8,
                        _ => DataType::Float64,
                    };
                    columns.push(arrow::compute::cast(column, &wanted)?);
                }
                for i in 0..batch.num_rows() {
                    let Ok(id) = u32::try_from(ids.value(i)) else {
                        continue;
                    };
                    if ids.is_null(i) {
                        continue;
                    }
                    for (slot, (feature, column)) in
                        row.iter_mut().zip(features.iter().zip(&columns))
                    {
                        *slot = encode(feature, column.as_ref(), i, t_seconds);
                    }
                    each(id, &row);
                }
            }
            Ok::<_, datafusion::error::DataFusionError>(())
        };
        Ok(session.limited(work).await?)
    }
}

fn encode(feature: &Feature, column: &dyn Array, i: usize, t_seconds: f64) -> f64 {
    if let Encoding::OneHot(value) = &feature.encoding {
        return if let Some(text) = column.as_string_opt::<i32>()
            && text.is_valid(i)
            && text.value(i) == value
        {
            1.0
        } else {
            0.0
        };
    }
    let Some(values) = column.as_primitive_opt::<Float64Type>() else {
        return f64::NAN;
    };
    if values.is_null(i) {
        return f64::NAN;
    }
    let x = values.value(i);
    match feature.encoding {
        Encoding::Log => x.max(0.0).ln_1p(),
        Encoding::DaysBefore => ((t_seconds - x) / 86_400.0).max(0.0).ln_1p(),
        _ => x,
    }
}

/// Mean and spread of each feature over the universe.
#[derive(Debug, Clone)]
struct Scale {
    mean: Vec<f64>,
    sd: Vec<f64>,
}

impl Scale {
    /// The standardised vector of a person (zero for missing values and dropped features).
    fn standardise(&self, raw: &[f64], out: &mut [f64]) {
        for (j, slot) in out.iter_mut().enumerate() {
            let x = raw[j];
            *slot = if x.is_nan() || self.sd[j] == 0.0 {
                0.0
            } else {
                ((x - self.mean[j]) / self.sd[j]).clamp(-CLIP, CLIP)
            };
        }
    }
}

/// A fitted scorer over standardised vectors.
#[derive(Debug, Clone)]
enum Model {
    /// Intercept then one weight per feature.
    Logistic(Vec<f64>),
    /// The seed's centroid and its norm.
    Cosine(Vec<f64>, f64),
}

impl Model {
    fn score(&self, z: &[f64]) -> f64 {
        match self {
            Model::Logistic(beta) => {
                let t = beta[0] + dot(&beta[1..], z);
                1.0 / (1.0 + (-t).exp())
            }
            Model::Cosine(centroid, norm) => {
                let n = dot(z, z).sqrt();
                if n == 0.0 || *norm == 0.0 {
                    0.0
                } else {
                    dot(z, centroid) / (n * norm)
                }
            }
        }
    }

    fn fit(method: Method, positives: &[Vec<f64>], negatives: &[Vec<f64>]) -> Model {
        match method {
            Method::Cosine => {
                let d = positives.first().map_or(0, Vec::len);
                let mut centroid = vec![0.0; d];
                for z in positives {
                    for (c, x) in centroid.iter_mut().zip(z) {
                        *c += x;
                    }
                }
                let n = positives.len().max(1) as f64;
                centroid.iter_mut().for_each(|c| *c /= n);
                let norm = dot(&centroid, &centroid).sqrt();
                Model::Cosine(centroid, norm)
            }
            Method::Logistic => Model::Logistic(logistic(positives, negatives)),
        }
    }
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Weighted L2-regularised logistic regression by Newton's method: positives and negatives
/// weigh half each. Returns the intercept then the weights.
fn logistic(positives: &[Vec<f64>], negatives: &[Vec<f64>]) -> Vec<f64> {
    let d = positives.first().or(negatives.first()).map_or(0, Vec::len);
    let n = d + 1;
    let mut beta = vec![0.0; n];
    let w_pos = 0.5 / positives.len().max(1) as f64;
    let w_neg = 0.5 / negatives.len().max(1) as f64;
    let mut x = vec![1.0; n];
    for _ in 0..30 {
        let mut gradient = vec![0.0; n];
        let mut hessian = vec![0.0; n * n];
        for (rows, y, w) in [(positives, 1.0, w_pos), (negatives, 0.0, w_neg)] {
            for z in rows {
                x[1..].copy_from_slice(z);
                let p = 1.0 / (1.0 + (-dot(&beta, &x)).exp());
                let g = w * (p - y);
                let h = w * (p * (1.0 - p)).max(1e-12);
                for a in 0..n {
                    gradient[a] += g * x[a];
                    let ha = h * x[a];
                    for b in a..n {
                        hessian[a * n + b] += ha * x[b];
                    }
                }
            }
        }
        for a in 1..n {
            gradient[a] += L2 * beta[a];
            hessian[a * n + a] += L2;
        }
        hessian[0] += 1e-9;
        for a in 0..n {
            for b in 0..a {
                hessian[a * n + b] = hessian[b * n + a];
            }
        }
        let Some(step) = solve(&mut hessian, &gradient, n) else {
            break;
        };
        let mut largest: f64 = 0.0;
        for (b, s) in beta.iter_mut().zip(&step) {
            *b -= s;
            largest = largest.max(s.abs());
        }
        if largest < 1e-8 {
            break;
        }
    }
    beta
}

/// Solves `A x = b` for a symmetric positive definite `A` (n × n, row-major) by Cholesky.
fn solve(a: &mut [f64], b: &[f64], n: usize) -> Option<Vec<f64>> {
    for j in 0..n {
        let mut diagonal = a[j * n + j];
        for k in 0..j {
            diagonal -= a[j * n + k] * a[j * n + k];
        }
        if diagonal <= 0.0 || !diagonal.is_finite() {
            return None;
        }
        let diagonal = diagonal.sqrt();
        a[j * n + j] = diagonal;
        for i in j + 1..n {
            let mut value = a[i * n + j];
            for k in 0..j {
                value -= a[i * n + k] * a[j * n + k];
            }
            a[i * n + j] = value / diagonal;
        }
    }
    let mut y = vec![0.0; n];
    for i in 0..n {
        let mut value = b[i];
        for k in 0..i {
            value -= a[i * n + k] * y[k];
        }
        y[i] = value / a[i * n + i];
    }
    let mut x = vec![0.0; n];
    for i in (0..n).rev() {
        let mut value = y[i];
        for k in i + 1..n {
            value -= a[k * n + i] * x[k];
        }
        x[i] = value / a[i * n + i];
    }
    Some(x)
}

/// The `k` best (score, id) pairs: highest score first, lower id first among equals.
fn top(mut scored: Vec<(f64, u32)>, k: usize) -> Vec<(f64, u32)> {
    let order = |a: &(f64, u32), b: &(f64, u32)| {
        b.0.partial_cmp(&a.0)
            .unwrap_or(Ordering::Equal)
            .then(a.1.cmp(&b.1))
    };
    if k < scored.len() {
        scored.select_nth_unstable_by(k, order);
        scored.truncate(k);
    }
    scored.sort_unstable_by(order);
    scored
}

/// Expands `seed` by the spec: the members and a report of the method and its holdout check.
pub async fn expand(
    engine: &Engine,
    session: &Session,
    spec: &LookalikeSpec,
    seed: &RoaringBitmap,
    role: Role,
    today: NaiveDate,
) -> Result<(RoaringBitmap, Value)> {
    spec.check()?;
    let universe = engine.universe(session).await?;
    let seed = seed & universe.as_ref();
    if seed.len() < MIN_SEED {
        return Err(Error::invalid(
            "lookalike.seed",
            format!(
                "audience '{}' has {} members among current people; a lookalike needs at least {MIN_SEED}",
                spec.seed,
                seed.len()
            ),
        ));
    }
    let outside = universe.len() - seed.len();
    let size = match (spec.size, spec.percent) {
        (Some(k), _) => k,
        (None, Some(p)) => ((p / 100.0) * outside as f64).ceil() as u64,
        _ => 0,
    };
    if size > outside {
        return Err(Error::invalid(
            "lookalike.size",
            format!("{size} is more than the {outside} people outside the seed"),
        ));
    }
    let features = features(session, spec, role)?;
    let sql = feature_sql(&features);
    let t_seconds = today
        .and_hms_opt(0, 0, 0)
        .map_or(0.0, |t| t.and_utc().timestamp() as f64);
    let reader = Reader {
        features: &features,
        t_seconds,
    };
    let d = features.len();

    // Pass 1: each feature's mean and spread; the training samples.
    let seed_rate = TRAINING_ROWS as f64 / seed.len() as f64;
    let other_rate = TRAINING_ROWS as f64 / outside.max(1) as f64;
    let (mut count, mut sum, mut squares) = (vec![0u64; d], vec![0.0; d], vec![0.0; d]);
    let mut positives: Vec<(u32, Vec<f64>)> = Vec::new();
    let mut negatives: Vec<(u32, Vec<f64>)> = Vec::new();
    reader
        .each(session, &sql, |id, row| {
            for j in 0..d {
                let x = row[j];
                if !x.is_nan() {
                    count[j] += 1;
                    sum[j] += x;
                    squares[j] += x * x;
                }
            }
            if seed.contains(id) {
                if sampled(id, 1, seed_rate) {
                    positives.push((id, row.to_vec()));
                }
            } else if sampled(id, 2, other_rate) {
                negatives.push((id, row.to_vec()));
            }
        })
        .await?;
    let mut scale = Scale {
        mean: vec![0.0; d],
        sd: vec![0.0; d],
    };
    for j in 0..d {
        if count[j] > 0 {
            let mean = sum[j] / count[j] as f64;
            let variance = (squares[j] / count[j] as f64 - mean * mean).max(0.0);
            scale.mean[j] = mean;
            scale.sd[j] = if variance > 1e-12 {
                variance.sqrt()
            } else {
                0.0
            };
        }
    }
    let standardised = |rows: &[(u32, Vec<f64>)], keep: &dyn Fn(u32) -> bool| -> Vec<Vec<f64>> {
        rows.iter()
            .filter(|(id, _)| keep(*id))
            .map(|(_, raw)| {
                let mut z = vec![0.0; d];
                scale.standardise(raw, &mut z);
                z
            })
            .collect()
    };
    let negatives_z = standardised(&negatives, &|_| true);
    let full = Model::fit(
        spec.method,
        &standardised(&positives, &|_| true),
        &negatives_z,
    );
    // The holdout world: hidden members are people outside its seed, so they may be drawn
    // as negatives at the same rate as anyone else outside.
    let mut holdout_negatives = negatives_z.clone();
    holdout_negatives.extend(standardised(&positives, &|id| {
        hidden(id) && sampled(id, 2, other_rate)
    }));
    let visible = standardised(&positives, &|id| !hidden(id));
    let check = Model::fit(spec.method, &visible, &holdout_negatives);

    // Pass 2: score everyone outside the seed, and everyone outside the visible seed.
    let mut scored = Vec::with_capacity(outside as usize);
    let mut scored_check = Vec::with_capacity(outside as usize);
    let mut z = vec![0.0; d];
    reader
        .each(session, &sql, |id, row| {
            scale.standardise(row, &mut z);
            if !seed.contains(id) {
                scored.push((full.score(&z), id));
                scored_check.push((check.score(&z), id));
            } else if hidden(id) {
                scored_check.push((check.score(&z), id));
            }
        })
        .await?;
    let chosen = top(scored, size as usize);
    let members: RoaringBitmap = chosen.iter().map(|(_, id)| *id).collect();
    let threshold = chosen.last().map(|(s, _)| *s);

    let hidden_members: RoaringBitmap = seed.iter().filter(|id| hidden(*id)).collect();
    let pool = scored_check.len() as u64;
    let check_size = size.min(pool);
    let drawn: RoaringBitmap = top(scored_check, check_size as usize)
        .iter()
        .map(|(_, id)| *id)
        .collect();
    let found = (&drawn & &hidden_members).len();
    let recall = found as f64 / hidden_members.len().max(1) as f64;
    let random = check_size as f64 / pool.max(1) as f64;
    let holdout = json!({
        "hidden": hidden_members.len(),
        "drawn": check_size,
        "found": found,
        "recall": round(recall),
        "random_recall": round(random),
        "lift": if random > 0.0 { Some(round(recall / random)) } else { None },
    });

    let used: Vec<&str> = features
        .iter()
        .zip(&scale.sd)
        .filter(|(_, sd)| **sd > 0.0)
        .map(|(f, _)| f.name.as_str())
        .collect();
    let constant: Vec<&str> = features
        .iter()
        .zip(&scale.sd)
        .filter(|(_, sd)| **sd == 0.0)
        .map(|(f, _)| f.name.as_str())
        .collect();
    let weights: Vec<f64> = match &full {
        Model::Logistic(beta) => beta[1..].to_vec(),
        Model::Cosine(centroid, _) => centroid.clone(),
    };
    let mut strongest: Vec<(&str, f64)> = features
        .iter()
        .map(|f| f.name.as_str())
        .zip(weights)
        .filter(|(_, w)| *w != 0.0)
        .collect();
    strongest.sort_by(|a, b| b.1.abs().partial_cmp(&a.1.abs()).unwrap_or(Ordering::Equal));
    strongest.truncate(10);
    let strongest: Vec<Value> = strongest
        .into_iter()
        .map(|(name, weight)| json!({"feature": name, "weight": round(weight)}))
        .collect();
    let report = json!({
        "method": spec.method,
        "seed": spec.seed,
        "seed_size": seed.len(),
        "outside_seed": outside,
        "size": members.len(),
        "score_threshold": threshold.map(round),
        "features": used,
        "constant_features": constant,
        "training": {"seed": positives.len(), "others": negatives.len()},
        "strongest": strongest,
        "holdout": holdout,
    });
    Ok((members, report))
}

fn round(x: f64) -> f64 {
    (x * 10_000.0).round() / 10_000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cholesky_solves_a_small_system() {
        // [[4, 2], [2, 3]] x = [2, 1] → x = [0.5, 0].
        let mut a = vec![4.0, 2.0, 2.0, 3.0];
        let x = solve(&mut a, &[2.0, 1.0], 2).expect("positive definite");
        assert!((x[0] - 0.5).abs() < 1e-12 && x[1].abs() < 1e-12, "{x:?}");
    }

    #[test]
    fn logistic_separates_a_planted_feature() {
        let positives: Vec<Vec<f64>> = (0..50).map(|i| vec![1.0 + i as f64 * 0.01, 0.3]).collect();
        let negatives: Vec<Vec<f64>> = (0..200)
            .map(|i| vec![-1.0 + i as f64 * 0.001, 0.3])
            .collect();
        let beta = logistic(&positives, &negatives);
        assert!(beta[1] > 1.0, "weight of the planted feature: {beta:?}");
        let model = Model::Logistic(beta);
        assert!(model.score(&[1.0, 0.3]) > 0.9);
        assert!(model.score(&[-1.0, 0.3]) < 0.1);
    }

    #[test]
    fn top_breaks_ties_by_lower_id() {
        let scored = vec![(0.5, 9), (0.9, 4), (0.5, 2), (0.1, 1), (0.5, 3)];
        let ids: Vec<u32> = top(scored, 3).into_iter().map(|(_, id)| id).collect();
        assert_eq!(ids, vec![4, 2, 3]);
    }

    #[test]
    fn sizes_are_checked() {
        let spec = |size, percent| LookalikeSpec {
            seed: "vip".into(),
            size,
            percent,
            method: Method::Logistic,
            features: vec![],
        };
        assert!(spec(Some(10), None).check().is_ok());
        assert!(spec(None, Some(2.5)).check().is_ok());
        assert!(spec(Some(0), None).check().is_err());
        assert!(spec(None, Some(120.0)).check().is_err());
        assert!(spec(None, Some(f64::NAN)).check().is_err());
        assert!(spec(Some(5), Some(5.0)).check().is_err());
        assert!(spec(None, None).check().is_err());
    }

    #[test]
    fn hidden_share_is_about_a_fifth() {
        let n = (0..100_000u32).filter(|id| hidden(*id)).count();
        assert!((19_000..21_000).contains(&n), "{n}");
    }
}
