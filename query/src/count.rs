//! Audience counts, previews and plans for condition trees.
//!
//! A tree whose leaves are all covered by current tag bitmaps is answered by bitmap algebra
//! alone. Otherwise the covered part of each group is combined as bitmaps, conditions on a
//! person's events or orders are totalled per person (`per_person`), and the rest is one scan
//! per group over `users` (the scan path). All give the same answer: every condition is a set
//! of user ids of the universe, `not` is the complement within it.

use std::sync::Arc;
use std::time::Instant;

use chrono::{NaiveDate, Utc};
use roaring::RoaringBitmap;
use serde::{Deserialize, Serialize};
use shoal_catalog::{FieldStandard, Role, TableDefinition, ValueType, zone_offset};

use crate::compile;
use crate::condition::{
    self, CheckContext, Compare, EventCondition, FieldCondition, Literal, Node, NumberRange, Test,
};
use crate::error::{Error, Result};
use crate::per_person;
use crate::session::{Engine, Session, SnapshotVersions};
use crate::tags::TagIndex;

/// Which path to answer with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PathChoice {
    /// Bitmaps where they cover the tree, a scan for the rest.
    #[default]
    Auto,
    /// A scan of the wide tables only (for checking and benchmarks).
    Scan,
}

/// How a count was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AnswerPath {
    /// Tag bitmap algebra alone.
    Bitmap,
    /// Bitmaps for the covered conditions, a scan for the others.
    Mixed,
    /// A DataFusion scan of the wide tables.
    Scan,
}

/// A checked tree with what its evaluation needs.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// The checked tree.
    pub node: Node,
    /// The evaluation date `T`.
    pub evaluated_at: NaiveDate,
}

/// The answer of a count.
#[derive(Debug, Clone, Serialize)]
pub struct CountAnswer {
    /// Users matching the tree.
    pub count: u64,
    /// How it was answered.
    pub path: AnswerPath,
    /// The evaluation date `T` relative dates were resolved against.
    pub evaluated_at: NaiveDate,
    /// Table versions read.
    pub snapshot: SnapshotVersions,
    /// Milliseconds spent evaluating (after the snapshot was taken).
    pub elapsed_ms: f64,
}

/// Checks `tree` against the session's catalog for `role`, with `T` = `today` or the current
/// day in the catalog zone.
pub fn prepare(
    session: &Session,
    tree: &serde_json::Value,
    role: Role,
    today: Option<NaiveDate>,
) -> Result<Prepared> {
    let definition = session.catalog().definition();
    let zone = zone_offset(&definition.time_zone).ok_or_else(|| {
        Error::Invalid(format!(
            "the catalog's time zone '{}' is not known",
            definition.time_zone
        ))
    })?;
    let evaluated_at = today.unwrap_or_else(|| Utc::now().with_timezone(&zone).date_naive());
    let cx = CheckContext {
        definition,
        role,
        today: evaluated_at,
        zone,
    };
    let node = condition::check(tree, &cx)?;
    Ok(Prepared { node, evaluated_at })
}

/// The members of a prepared tree, and how they were found.
pub async fn members(
    engine: &Engine,
    session: &Session,
    prepared: &Prepared,
    choice: PathChoice,
) -> Result<(RoaringBitmap, AnswerPath)> {
    load_audiences(session, &prepared.node).await?;
    if choice == PathChoice::Scan {
        let frame = session.sql(&compile::ids_sql(&prepared.node)).await?;
        return Ok((session.bitmap_of(frame).await?, AnswerPath::Scan));
    }
    let mut evaluator = Evaluator::new(engine, session, &prepared.node).await?;
    let bitmap = evaluator.eval(&prepared.node).await?;
    let path = match (evaluator.used_bitmaps, evaluator.used_scan) {
        (_, false) => AnswerPath::Bitmap,
        (true, true) => AnswerPath::Mixed,
        (false, true) => AnswerPath::Scan,
    };
    Ok((bitmap, path))
}

/// Counts the users matching a prepared tree.
pub async fn count(
    engine: &Engine,
    session: &Session,
    prepared: &Prepared,
    choice: PathChoice,
) -> Result<CountAnswer> {
    let started = Instant::now();
    let (count, path) = if choice == PathChoice::Scan {
        load_audiences(session, &prepared.node).await?;
        let frame = session.sql(&compile::count_sql(&prepared.node)).await?;
        let batches = session.collect(frame).await?;
        let count = batches
            .iter()
            .find(|b| b.num_rows() > 0)
            .and_then(|b| {
                let column =
                    arrow::compute::cast(b.column(0), &arrow::datatypes::DataType::Int64).ok()?;
                use arrow::array::AsArray;
                Some(
                    column
                        .as_primitive::<arrow::datatypes::Int64Type>()
                        .value(0) as u64,
                )
            })
            .unwrap_or(0);
        (count, AnswerPath::Scan)
    } else {
        let (members, path) = members(engine, session, prepared, choice).await?;
        (members.len(), path)
    };
    Ok(CountAnswer {
        count,
        path,
        evaluated_at: prepared.evaluated_at,
        snapshot: session.versions(),
        elapsed_ms: started.elapsed().as_secs_f64() * 1e3,
    })
}

async fn load_audiences(session: &Session, node: &Node) -> Result<()> {
    let mut names = Vec::new();
    condition::audiences(node, &mut names);
    for name in names {
        session.audience(&name).await?;
    }
    Ok(())
}

struct Evaluator<'a> {
    engine: &'a Engine,
    session: &'a Session,
    universe: Arc<RoaringBitmap>,
    tags: Arc<TagIndex>,
    users: TableDefinition,
    columns_current: bool,
    events_current: bool,
    used_bitmaps: bool,
    used_scan: bool,
}

impl<'a> Evaluator<'a> {
    async fn new(engine: &'a Engine, session: &'a Session, node: &Node) -> Result<Evaluator<'a>> {
        let universe = engine.universe(session).await?;
        let tags = engine.tags(session).await?;
        let users = session.catalog().definition().table("users")?.clone();
        let columns_current = tags.columns_current(session.version("users")?)
            || (universe.is_empty() && tags.column("gender").is_none());
        // Whether day bitmaps are current may take a read of the events log: only asked when
        // the tree has event conditions.
        let events_current = has_events(node) && tags.events_current(session).await?;
        Ok(Evaluator {
            engine,
            session,
            universe,
            tags,
            users,
            columns_current,
            events_current,
            used_bitmaps: false,
            used_scan: false,
        })
    }

    fn covered(&self, node: &Node) -> bool {
        match node {
            Node::All(children) | Node::Any(children) => children.iter().all(|c| self.covered(c)),
            Node::Not(child) => self.covered(child),
            Node::Field(f) => self.field_bitmap(f).is_some(),
            Node::Event(e) => self.event_bitmap(e).is_some(),
            Node::Orders(_) => false,
            Node::Audience(_) => true,
        }
    }

    /// Evaluates a node to its members.
    async fn eval(&mut self, node: &Node) -> Result<RoaringBitmap> {
        if self.covered(node) {
            self.used_bitmaps |= !matches!(node, Node::All(c) | Node::Any(c) if c.is_empty());
            return self.bitmap(node);
        }
        match node {
            Node::All(children) | Node::Any(children) => {
                let all = matches!(node, Node::All(_));
                let (covered, rest): (Vec<&Node>, Vec<&Node>) =
                    children.iter().partition(|c| self.covered(c));
                let mut result = if all {
                    (*self.universe).clone()
                } else {
                    RoaringBitmap::new()
                };
                for child in covered {
                    self.used_bitmaps = true;
                    let members = self.bitmap(child)?;
                    if all {
                        result &= members;
                    } else {
                        result |= members;
                    }
                }
                // Children that hold uncovered parts inside a `not` recurse (their
                // complement needs their own members); the rest is one scan.
                // Conditions on a person's events or orders are totalled apart.
                let (nested, scanned): (Vec<&Node>, Vec<&Node>) = rest.into_iter().partition(|c| {
                    matches!(c, Node::Not(_)) || self.partly_covered(c) || per_person::applies(c)
                });
                for child in nested {
                    let members = Box::pin(self.eval(child)).await?;
                    if all {
                        result &= members;
                    } else {
                        result |= members;
                    }
                }
                if !scanned.is_empty() {
                    let group = if all {
                        Node::All(scanned.into_iter().cloned().collect())
                    } else {
                        Node::Any(scanned.into_iter().cloned().collect())
                    };
                    let members = self.scan(&group).await?;
                    if all {
                        result &= members;
                    } else {
                        result |= members;
                    }
                }
                Ok(result)
            }
            Node::Not(child) => {
                let members = Box::pin(self.eval(child)).await?;
                Ok(self.universe.as_ref() - &members)
            }
            leaf if per_person::applies(leaf) => {
                match per_person::members(self.engine.totals(), self.session, &self.universe, leaf)
                    .await?
                {
                    Some(members) => {
                        self.used_scan = true;
                        Ok(members)
                    }
                    None => self.scan(leaf).await,
                }
            }
            leaf => self.scan(leaf).await,
        }
    }

    /// Whether a group has covered parts worth evaluating apart from a scan.
    fn partly_covered(&self, node: &Node) -> bool {
        match node {
            Node::All(children) | Node::Any(children) => children
                .iter()
                .any(|c| self.covered(c) || self.partly_covered(c)),
            Node::Not(child) => self.covered(child) || self.partly_covered(child),
            _ => false,
        }
    }

    async fn scan(&mut self, node: &Node) -> Result<RoaringBitmap> {
        self.used_scan = true;
        let frame = self.session.sql(&compile::ids_sql(node)).await?;
        self.session.bitmap_of(frame).await
    }

    /// Members of a covered node, by bitmap algebra.
    fn bitmap(&self, node: &Node) -> Result<RoaringBitmap> {
        match node {
            Node::All(children) => {
                let mut result = (*self.universe).clone();
                for child in children {
                    result &= self.bitmap(child)?;
                }
                Ok(result)
            }
            Node::Any(children) => {
                let mut result = RoaringBitmap::new();
                for child in children {
                    result |= self.bitmap(child)?;
                }
                Ok(result)
            }
            Node::Not(child) => Ok(self.universe.as_ref() - &self.bitmap(child)?),
            Node::Field(f) => self
                .field_bitmap(f)
                .ok_or_else(|| Error::Internal(format!("{} is not covered", f.column))),
            Node::Event(e) => self
                .event_bitmap(e)
                .ok_or_else(|| Error::Internal(format!("event {} is not covered", e.event))),
            Node::Audience(name) => {
                let members = self.session.audience_loaded(name)?;
                Ok(members.as_ref() & self.universe.as_ref())
            }
            Node::Orders(_) => Err(Error::Internal("orders are never covered".into())),
        }
    }

    /// Members of a field condition from column bitmaps, when they can answer it exactly.
    fn field_bitmap(&self, f: &FieldCondition) -> Option<RoaringBitmap> {
        if f.table != "users" || !self.columns_current {
            return None;
        }
        let values = self.tags.column(&f.column);
        let standard = self.users.field(&f.column)?;
        let union = |values: &crate::tags::ValueBitmaps| {
            let mut all = RoaringBitmap::new();
            for bitmap in values.values() {
                all |= bitmap.as_ref();
            }
            all
        };
        let empty = crate::tags::ValueBitmaps::new();
        match f.value_type {
            ValueType::Enum | ValueType::Bool => {
                let values = values.unwrap_or(&empty);
                let pick = |list: &[Literal]| {
                    let mut members = RoaringBitmap::new();
                    for v in list {
                        let key = match v {
                            Literal::Text(t) => t.clone(),
                            Literal::Bool(b) => b.to_string(),
                            _ => return None,
                        };
                        if let Some(b) = values.get(&key) {
                            members |= b.as_ref();
                        }
                    }
                    Some(members)
                };
                Some(match &f.test {
                    Test::In(list) => pick(list)?,
                    Test::NotIn(list) => union(values) - pick(list)?,
                    Test::IsNull => self.universe.as_ref() - &union(values),
                    Test::NotNull => union(values),
                    _ => return None,
                })
            }
            ty if ty.is_numeric() && !standard.buckets.is_empty() => {
                let values = values.unwrap_or(&empty);
                match &f.test {
                    Test::IsNull => Some(self.universe.as_ref() - &union(values)),
                    Test::NotNull => Some(union(values)),
                    Test::Range(range) => bucket_union(standard, range, values),
                    _ => None,
                }
            }
            _ => None,
        }
    }

    /// Members of an event condition from day bitmaps: "did at least once" (or its
    /// complement, "never") within whole days, without property filters.
    fn event_bitmap(&self, e: &EventCondition) -> Option<RoaringBitmap> {
        if !self.events_current || !e.filters.is_empty() {
            return None;
        }
        let (first, last) = match &e.window {
            None => (None, None),
            Some(w) => w.days?,
        };
        let never = matches!(
            (e.count.op, e.count.value),
            (Compare::Eq, 0) | (Compare::Lt, 1) | (Compare::Le, 0)
        );
        if !never && !e.count.is_at_least_once() {
            return None;
        }
        let from = first.unwrap_or(NaiveDate::MIN);
        let to = last.unwrap_or(NaiveDate::MAX);
        let did = self.tags.event_window(&e.event, from, to).as_ref() & self.universe.as_ref();
        Some(if never {
            self.universe.as_ref() - &did
        } else {
            did
        })
    }
}

/// The union of the buckets that make up `range` exactly, or `None` when the range's ends
/// do not fall on bucket edges.
fn bucket_union(
    standard: &FieldStandard,
    range: &NumberRange,
    values: &crate::tags::ValueBitmaps,
) -> Option<RoaringBitmap> {
    let int = standard.value_type == ValueType::Int;
    // The range as a half-open interval [low, high) over the reals.
    let low = match &range.low {
        None => f64::NEG_INFINITY,
        Some((v, true)) => v.as_f64()?,
        Some((v, false)) if int => v.as_f64()?.floor() + 1.0,
        Some(_) => return None,
    };
    let high = match &range.high {
        None => f64::INFINITY,
        Some((v, false)) => v.as_f64()?,
        Some((v, true)) if int => v.as_f64()?.floor() + 1.0,
        Some(_) => return None,
    };
    let on_edge = |x: f64| x.is_infinite() || standard.buckets.contains(&x);
    if !on_edge(low) || !on_edge(high) {
        return None;
    }
    let mut edges = vec![f64::NEG_INFINITY];
    edges.extend(standard.buckets.iter().copied());
    edges.push(f64::INFINITY);
    let mut members = RoaringBitmap::new();
    for pair in edges.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        if a >= low && b <= high {
            let probe = if a.is_finite() { a } else { b - 1.0 };
            let label = standard.bucket(probe)?;
            if let Some(bitmap) = values.get(&label) {
                members |= bitmap.as_ref();
            }
        }
    }
    Some(members)
}

/// The first members of a tree with chosen columns of `users`.
#[derive(Debug, Clone, Serialize)]
pub struct Preview {
    /// Users matching the tree.
    pub count: u64,
    /// How the members were found.
    pub path: AnswerPath,
    /// The evaluation date.
    pub evaluated_at: NaiveDate,
    /// Columns shown.
    pub columns: Vec<String>,
    /// The first members (by user id), one object per user.
    pub rows: Vec<serde_json::Value>,
}

/// Most rows a preview returns.
pub const MAX_PREVIEW_ROWS: usize = 1_000;

/// The first `limit` members (lowest user ids) with `columns` of `users`, shown as `role` may
/// read them.
pub async fn preview(
    engine: &Engine,
    session: &Session,
    prepared: &Prepared,
    role: Role,
    columns: &[String],
    limit: usize,
) -> Result<Preview> {
    let users = session.catalog().definition().table("users")?;
    let roles = &session.catalog().definition().roles;
    let mut shown = vec!["user_id".to_string()];
    for (i, name) in columns.iter().enumerate() {
        let field = users.field(name).ok_or_else(|| {
            Error::Invalid(format!("columns[{i}]: unknown field '{name}' of users"))
        })?;
        if roles.grant(role, field.sensitivity).read == shoal_catalog::Visibility::Denied {
            return Err(Error::Invalid(format!(
                "columns[{i}]: role {role} may not read the {} field '{name}'",
                field.sensitivity
            )));
        }
        if !shown.contains(name) {
            shown.push(name.clone());
        }
    }
    let (members, path) = members(engine, session, prepared, PathChoice::Auto).await?;
    let first: Vec<String> = members
        .iter()
        .take(limit.min(MAX_PREVIEW_ROWS))
        .map(|u| u.to_string())
        .collect();
    let mut rows = Vec::new();
    if !first.is_empty() {
        let select = shown
            .iter()
            .map(|c| compile::ident(c))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!(
            "SELECT {select} FROM users WHERE user_id IN ({}) ORDER BY user_id",
            first.join(", ")
        );
        let batches = session.collect(session.sql(&sql).await?).await?;
        rows = crate::session::rows_as_json(&batches)?;
        for row in &mut rows {
            if let serde_json::Value::Object(map) = row {
                for (name, value) in map.iter_mut() {
                    if let Some(field) = users.field(name) {
                        let visibility = roles.grant(role, field.sensitivity).read;
                        crate::masking::apply(value, visibility);
                    }
                }
            }
        }
    }
    Ok(Preview {
        count: members.len(),
        path,
        evaluated_at: prepared.evaluated_at,
        columns: shown,
        rows,
    })
}

/// What a tree compiles to.
#[derive(Debug, Clone, Serialize)]
pub struct Explanation {
    /// The path a count would take.
    pub path: AnswerPath,
    /// The SQL of the scan path.
    pub sql: String,
    /// DataFusion's logical and physical plans of that SQL.
    pub plan: Vec<serde_json::Value>,
    /// The evaluation date.
    pub evaluated_at: NaiveDate,
}

/// The SQL a tree compiles to, its plans and the path a count would take.
pub async fn explain(
    engine: &Engine,
    session: &Session,
    prepared: &Prepared,
) -> Result<Explanation> {
    load_audiences(session, &prepared.node).await?;
    let evaluator = Evaluator::new(engine, session, &prepared.node).await?;
    let path = if evaluator.covered(&prepared.node) {
        AnswerPath::Bitmap
    } else if evaluator.partly_covered(&prepared.node) {
        AnswerPath::Mixed
    } else {
        AnswerPath::Scan
    };
    let sql = compile::count_sql(&prepared.node);
    let frame = session.sql(&format!("EXPLAIN {sql}")).await?;
    let plan = crate::session::rows_as_json(&session.collect(frame).await?)?;
    Ok(Explanation {
        path,
        sql,
        plan,
        evaluated_at: prepared.evaluated_at,
    })
}

/// Names of the events that have day bitmaps (every event the build has seen), sorted.
pub async fn event_names(engine: &Engine, session: &Session) -> Result<Vec<String>> {
    Ok(engine.tags(session).await?.event_names())
}

fn has_events(node: &Node) -> bool {
    match node {
        Node::All(children) | Node::Any(children) => children.iter().any(has_events),
        Node::Not(child) => has_events(child),
        Node::Event(_) => true,
        _ => false,
    }
}
