//! Condition trees: the builder's JSON, checked against the catalog into a typed tree.
//!
//! Checking resolves everything that depends on the catalog or the evaluation date once:
//! field types, derived conditions (expanded in place), relative dates (`T-7`) into absolute
//! day and time ranges. Every error names its path in the tree (`all[2].where[0].value`).

use chrono::{DateTime, Duration, FixedOffset, NaiveDate, NaiveDateTime, TimeZone, Utc};
use serde_json::{Map, Value};
use shoal_catalog::{CatalogDefinition, FieldStandard, Role, TableDefinition, ValueType};

use crate::error::{Error, Result};

/// Deepest nesting a tree may have; deeper trees are refused, not recursed into.
pub const MAX_DEPTH: usize = 64;

/// Most leaves a tree may have after derived conditions are expanded.
pub const MAX_LEAVES: usize = 2_000;

/// A checked condition tree.
#[derive(Debug, Clone, PartialEq)]
pub enum Node {
    /// Every child holds (`{"all": []}` is every user).
    All(Vec<Node>),
    /// At least one child holds (`{"any": []}` is nobody).
    Any(Vec<Node>),
    /// The child does not hold, against the whole user universe.
    Not(Box<Node>),
    /// A column of `users` (or of another table joined by `user_id`).
    Field(FieldCondition),
    /// Did an event, counted within a window.
    Event(EventCondition),
    /// Paid orders counted or summed within a window.
    Orders(OrderCondition),
    /// Member of a stored audience's current version.
    Audience(String),
}

/// A condition on one column.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldCondition {
    /// Table holding the column (`users` for bare names).
    pub table: String,
    /// Column name.
    pub column: String,
    /// The column's value type.
    pub value_type: ValueType,
    /// What the value must satisfy.
    pub test: Test,
}

/// What a column's value must satisfy. Every test is false on null except `IsNull`.
#[derive(Debug, Clone, PartialEq)]
pub enum Test {
    /// Null.
    IsNull,
    /// Not null.
    NotNull,
    /// Equal to one of the values (`eq` is a one-element list).
    In(Vec<Literal>),
    /// Not null and equal to none of the values.
    NotIn(Vec<Literal>),
    /// Contains the text.
    Contains(String),
    /// Starts with the text.
    Prefix(String),
    /// Inside a numeric range.
    Range(NumberRange),
    /// Numbers: not equal (and not null).
    NotEqual(Literal),
    /// Inside a time or date range.
    Time(TimeRange),
    /// Not null and outside a time or date range.
    NotTime(TimeRange),
}

/// A literal value of a checked condition.
#[derive(Debug, Clone, PartialEq)]
pub enum Literal {
    /// Text of a string or enum field.
    Text(String),
    /// An integer.
    Int(i64),
    /// A number with its exact decimal text.
    Number { text: String, value: f64 },
    /// A boolean.
    Bool(bool),
}

impl Literal {
    /// The value as a float, for numbers.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Literal::Int(i) => Some(*i as f64),
            Literal::Number { value, .. } => Some(*value),
            _ => None,
        }
    }
}

/// A numeric range; bounds say whether they are included.
#[derive(Debug, Clone, PartialEq)]
pub struct NumberRange {
    /// Lower bound and whether it is included.
    pub low: Option<(Literal, bool)>,
    /// Upper bound and whether it is included.
    pub high: Option<(Literal, bool)>,
}

/// A half-open range of instants `[start, end)` in UTC microseconds, with the calendar days
/// it covers when both ends fall on day boundaries of the catalog zone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeRange {
    /// First instant included.
    pub start: Option<i64>,
    /// First instant excluded.
    pub end: Option<i64>,
    /// `[first, last]` days when the range is whole days.
    pub days: Option<(Option<NaiveDate>, Option<NaiveDate>)>,
}

/// How many times an event happened, compared to a number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CountTest {
    /// The comparison.
    pub op: Compare,
    /// The number compared with.
    pub value: i64,
}

impl CountTest {
    /// At least once.
    pub const AT_LEAST_ONCE: CountTest = CountTest {
        op: Compare::Ge,
        value: 1,
    };

    /// Whether a count of zero passes (users who never did it).
    pub fn admits_zero(&self) -> bool {
        self.op.holds(0.0, self.value as f64)
    }

    /// Whether this is "at least once".
    pub fn is_at_least_once(&self) -> bool {
        matches!(
            (self.op, self.value),
            (Compare::Ge, 1) | (Compare::Gt, 0) | (Compare::Ne, 0)
        )
    }
}

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compare {
    /// `=`
    Eq,
    /// `<>`
    Ne,
    /// `>`
    Gt,
    /// `>=`
    Ge,
    /// `<`
    Lt,
    /// `<=`
    Le,
}

impl Compare {
    /// The SQL operator.
    pub fn sql(self) -> &'static str {
        match self {
            Compare::Eq => "=",
            Compare::Ne => "<>",
            Compare::Gt => ">",
            Compare::Ge => ">=",
            Compare::Lt => "<",
            Compare::Le => "<=",
        }
    }

    /// Evaluates `left OP right`.
    pub fn holds<T: PartialOrd>(self, left: T, right: T) -> bool {
        match self {
            Compare::Eq => left == right,
            Compare::Ne => left != right,
            Compare::Gt => left > right,
            Compare::Ge => left >= right,
            Compare::Lt => left < right,
            Compare::Le => left <= right,
        }
    }

    fn parse(op: &str) -> Option<Compare> {
        Some(match op {
            "eq" => Compare::Eq,
            "ne" => Compare::Ne,
            "gt" => Compare::Gt,
            "ge" => Compare::Ge,
            "lt" => Compare::Lt,
            "le" => Compare::Le,
            _ => return None,
        })
    }
}

/// Did event `event`, with filters, a number of times, within a window.
#[derive(Debug, Clone, PartialEq)]
pub struct EventCondition {
    /// Event name.
    pub event: String,
    /// Conditions on columns of the event rows.
    pub filters: Vec<FieldCondition>,
    /// How often.
    pub count: CountTest,
    /// When; `None` is all time.
    pub window: Option<TimeRange>,
}

/// What an order condition measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrderMeasure {
    /// Number of paid orders.
    Count,
    /// Sum of paid amounts net of refunds, yuan.
    Amount,
}

/// Paid orders, counted or summed, compared to a number.
#[derive(Debug, Clone, PartialEq)]
pub struct OrderCondition {
    /// Count or amount.
    pub measure: OrderMeasure,
    /// The comparison.
    pub op: Compare,
    /// The number compared with.
    pub value: Literal,
    /// Only orders on these platforms (all when empty).
    pub platforms: Vec<String>,
    /// When the order was created; `None` is all time.
    pub window: Option<TimeRange>,
}

/// What checking needs besides the tree.
#[derive(Debug, Clone)]
pub struct CheckContext<'a> {
    /// The catalog definition in force.
    pub definition: &'a CatalogDefinition,
    /// The caller's role (decides which fields conditions may use).
    pub role: Role,
    /// The evaluation date `T`.
    pub today: NaiveDate,
    /// The catalog's zone, in which dates are whole days.
    pub zone: FixedOffset,
}

/// Checks a tree in the builder's JSON format.
pub fn check(tree: &Value, cx: &CheckContext<'_>) -> Result<Node> {
    let mut checker = Checker {
        cx,
        leaves: 0,
        expanding: Vec::new(),
    };
    checker.node(tree, "", 0)
}

struct Checker<'c, 'a> {
    cx: &'c CheckContext<'a>,
    leaves: usize,
    expanding: Vec<String>,
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else if key.starts_with('[') {
        format!("{path}{key}")
    } else {
        format!("{path}.{key}")
    }
}

fn only_keys(map: &Map<String, Value>, allowed: &[&str], path: &str) -> Result<()> {
    if let Some(unknown) = map.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(Error::condition(
            &join(path, unknown),
            format!(
                "unknown key '{unknown}' (allowed here: {})",
                allowed.join(", ")
            ),
        ));
    }
    Ok(())
}

impl Checker<'_, '_> {
    fn node(&mut self, value: &Value, path: &str, depth: usize) -> Result<Node> {
        if depth > MAX_DEPTH {
            return Err(Error::condition(
                path,
                format!("the tree is nested deeper than {MAX_DEPTH} levels"),
            ));
        }
        let Value::Object(map) = value else {
            return Err(Error::condition(
                path,
                "a condition is a JSON object such as {\"all\": [...]} or {\"field\": ...}",
            ));
        };
        for group in ["all", "any"] {
            if let Some(children) = map.get(group) {
                only_keys(map, &[group], path)?;
                let here = join(path, group);
                let Value::Array(children) = children else {
                    return Err(Error::condition(
                        &here,
                        "a group holds a list of conditions",
                    ));
                };
                let nodes = children
                    .iter()
                    .enumerate()
                    .map(|(i, c)| self.node(c, &join(&here, &format!("[{i}]")), depth + 1))
                    .collect::<Result<Vec<_>>>()?;
                return Ok(if group == "all" {
                    Node::All(nodes)
                } else {
                    Node::Any(nodes)
                });
            }
        }
        if let Some(child) = map.get("not") {
            only_keys(map, &["not"], path)?;
            let child = self.node(child, &join(path, "not"), depth + 1)?;
            return Ok(Node::Not(Box::new(child)));
        }
        self.leaves += 1;
        if self.leaves > MAX_LEAVES {
            return Err(Error::condition(
                path,
                format!("the tree has more than {MAX_LEAVES} conditions"),
            ));
        }
        if map.contains_key("field") {
            only_keys(map, &["field", "op", "value"], path)?;
            let condition = self.field(map, path, FieldScope::Users)?;
            return Ok(Node::Field(condition));
        }
        if map.contains_key("event") {
            return self.event(map, path).map(Node::Event);
        }
        if map.contains_key("orders") {
            return self.orders(map, path).map(Node::Orders);
        }
        if let Some(name) = map.get("derived") {
            only_keys(map, &["derived"], path)?;
            return self.derived(name, path, depth);
        }
        if let Some(name) = map.get("audience") {
            only_keys(map, &["audience"], path)?;
            let here = join(path, "audience");
            let name = name
                .as_str()
                .filter(|n| !n.is_empty())
                .ok_or_else(|| Error::condition(&here, "an audience is named by a string"))?;
            return Ok(Node::Audience(name.to_string()));
        }
        let keys: Vec<&str> = map.keys().map(String::as_str).collect();
        Err(Error::condition(
            path,
            format!(
                "not a condition (found keys: {}; expected all, any, not, field, event, orders, derived or audience)",
                if keys.is_empty() {
                    "none".to_string()
                } else {
                    keys.join(", ")
                }
            ),
        ))
    }

    fn derived(&mut self, name: &Value, path: &str, depth: usize) -> Result<Node> {
        let here = join(path, "derived");
        let name = name
            .as_str()
            .ok_or_else(|| Error::condition(&here, "a derived condition is named by a string"))?;
        let Some(derived) = self.cx.definition.derived.get(name) else {
            let known: Vec<&str> = self
                .cx
                .definition
                .derived
                .keys()
                .map(String::as_str)
                .collect();
            return Err(Error::condition(
                &here,
                format!(
                    "unknown derived condition '{name}' (known: {})",
                    known.join(", ")
                ),
            ));
        };
        if self.expanding.iter().any(|n| n == name) {
            return Err(Error::condition(
                &here,
                format!("derived condition '{name}' refers to itself"),
            ));
        }
        self.expanding.push(name.to_string());
        let node = self.node(&derived.conditions, &format!("derived.{name}"), depth + 1);
        self.expanding.pop();
        node
    }

    fn table(&self, name: &str, path: &str) -> Result<&TableDefinition> {
        self.cx.definition.table(name).map_err(|_| {
            Error::condition(path, format!("unknown table '{name}' in the field name"))
        })
    }

    fn field(
        &mut self,
        map: &Map<String, Value>,
        path: &str,
        scope: FieldScope,
    ) -> Result<FieldCondition> {
        let here = join(path, "field");
        let name = map
            .get("field")
            .and_then(Value::as_str)
            .ok_or_else(|| Error::condition(&here, "a field is named by a string"))?;
        let (table_name, column) = match (scope, name.split_once('.')) {
            (FieldScope::Users, Some((table, column))) => (table, column),
            (FieldScope::Users, None) => ("users", name),
            (FieldScope::Table(table), None) => (table, name),
            (FieldScope::Table(table), Some(_)) => {
                return Err(Error::condition(
                    &here,
                    format!("filters name a column of {table} without a table prefix"),
                ));
            }
        };
        let table = self.table(table_name, &here)?;
        if table_name != "users" && table.field("user_id").is_none() {
            return Err(Error::condition(
                &here,
                format!("table '{table_name}' has no user_id to join users by"),
            ));
        }
        let Some(standard) = table.field(column) else {
            return Err(Error::condition(
                &here,
                format!("unknown field '{column}' of table {table_name}"),
            ));
        };
        let grant = self
            .cx
            .definition
            .roles
            .grant(self.cx.role, standard.sensitivity);
        if !grant.condition {
            return Err(Error::condition(
                &here,
                format!(
                    "role {} may not use the {} field '{name}' in conditions",
                    self.cx.role, standard.sensitivity
                ),
            ));
        }
        let op = map
            .get("op")
            .and_then(Value::as_str)
            .ok_or_else(|| Error::condition(&join(path, "op"), "an operator is required"))?;
        let test = self.test(standard, op, map.get("value"), path)?;
        Ok(FieldCondition {
            table: table_name.to_string(),
            column: column.to_string(),
            value_type: standard.value_type,
            test,
        })
    }

    fn test(
        &self,
        standard: &FieldStandard,
        op: &str,
        value: Option<&Value>,
        path: &str,
    ) -> Result<Test> {
        let op_path = join(path, "op");
        let value_path = join(path, "value");
        let ty = standard.value_type;
        let allowed = operators(ty);
        if !allowed.contains(&op) {
            return Err(Error::condition(
                &op_path,
                format!(
                    "operator '{op}' does not apply to {ty} field '{}' (allowed: {})",
                    standard.name,
                    allowed.join(", ")
                ),
            ));
        }
        if matches!(op, "is_null" | "not_null") {
            if value.is_some_and(|v| !v.is_null()) {
                return Err(Error::condition(
                    &value_path,
                    format!("'{op}' takes no value"),
                ));
            }
            return Ok(if op == "is_null" {
                Test::IsNull
            } else {
                Test::NotNull
            });
        }
        let value = value
            .filter(|v| !v.is_null())
            .ok_or_else(|| Error::condition(&value_path, format!("'{op}' needs a value")))?;
        if matches!(ty, ValueType::Time | ValueType::Date) {
            let test = self.time_test(op, value, &value_path)?;
            if ty == ValueType::Date
                && let Test::Time(range) | Test::NotTime(range) = &test
                && range.days.is_none()
            {
                return Err(Error::condition(
                    &value_path,
                    format!(
                        "date field '{}' takes dates (2026-09-01, T-7), not timestamps",
                        standard.name
                    ),
                ));
            }
            return Ok(test);
        }
        let one = |v: &Value, at: &str| literal(standard, v, at);
        let list = |v: &Value| -> Result<Vec<Literal>> {
            let Value::Array(items) = v else {
                return Err(Error::condition(
                    &value_path,
                    format!("'{op}' takes a list of values"),
                ));
            };
            if items.is_empty() {
                return Err(Error::condition(&value_path, "the list of values is empty"));
            }
            items
                .iter()
                .enumerate()
                .map(|(i, v)| one(v, &format!("{value_path}[{i}]")))
                .collect()
        };
        let text = |v: &Value| -> Result<String> {
            v.as_str()
                .map(str::to_string)
                .ok_or_else(|| Error::condition(&value_path, format!("'{op}' takes a string")))
        };
        Ok(match op {
            "eq" => Test::In(vec![one(value, &value_path)?]),
            "ne" if ty.is_numeric() => Test::NotEqual(one(value, &value_path)?),
            "ne" => Test::NotIn(vec![one(value, &value_path)?]),
            "in" => Test::In(list(value)?),
            "not_in" => Test::NotIn(list(value)?),
            "contains" => Test::Contains(text(value)?),
            "prefix" => Test::Prefix(text(value)?),
            "between" => {
                let pair = match value {
                    Value::Array(items) if items.len() == 2 => items,
                    _ => {
                        return Err(Error::condition(
                            &value_path,
                            "'between' takes [low, high] (both included)",
                        ));
                    }
                };
                let low = one(&pair[0], &format!("{value_path}[0]"))?;
                let high = one(&pair[1], &format!("{value_path}[1]"))?;
                if low.as_f64() > high.as_f64() {
                    return Err(Error::condition(&value_path, "low is above high"));
                }
                Test::Range(NumberRange {
                    low: Some((low, true)),
                    high: Some((high, true)),
                })
            }
            _ => {
                let bound = one(value, &value_path)?;
                let compare = Compare::parse(op)
                    .ok_or_else(|| Error::Internal(format!("operator {op} has no comparison")))?;
                Test::Range(match compare {
                    Compare::Gt => NumberRange {
                        low: Some((bound, false)),
                        high: None,
                    },
                    Compare::Ge => NumberRange {
                        low: Some((bound, true)),
                        high: None,
                    },
                    Compare::Lt => NumberRange {
                        low: None,
                        high: Some((bound, false)),
                    },
                    Compare::Le => NumberRange {
                        low: None,
                        high: Some((bound, true)),
                    },
                    Compare::Eq | Compare::Ne => {
                        return Err(Error::Internal(format!("operator {op} is not a bound")));
                    }
                })
            }
        })
    }

    fn time_test(&self, op: &str, value: &Value, path: &str) -> Result<Test> {
        let point = |v: &Value, at: &str| -> Result<Point> { self.point(v, at) };
        let range = match op {
            "between" => {
                let pair = match value {
                    Value::Array(items) if items.len() == 2 => items,
                    Value::Object(map) => {
                        return self.window_object(map, path).map(Test::Time);
                    }
                    _ => {
                        return Err(Error::condition(
                            path,
                            "'between' takes [from, to] (both included) or {\"from\", \"to\"}",
                        ));
                    }
                };
                let from = point(&pair[0], &format!("{path}[0]"))?;
                let to = point(&pair[1], &format!("{path}[1]"))?;
                self.span(Some(from), Some(to), path)?
            }
            "eq" | "ne" => {
                let p = point(value, path)?;
                self.span(Some(p), Some(p), path)?
            }
            "ge" => self.span(Some(point(value, path)?), None, path)?,
            "le" => self.span(None, Some(point(value, path)?), path)?,
            "gt" => {
                let p = point(value, path)?;
                TimeRange {
                    start: Some(p.end()),
                    end: None,
                    days: p.day().map(|d| (d.succ_opt(), None)),
                }
            }
            "lt" => {
                let p = point(value, path)?;
                TimeRange {
                    start: None,
                    end: Some(p.start),
                    days: p.day().map(|d| (None, d.pred_opt())),
                }
            }
            other => {
                return Err(Error::Internal(format!("time operator {other}")));
            }
        };
        Ok(if op == "ne" {
            Test::NotTime(range)
        } else {
            Test::Time(range)
        })
    }

    /// `{"from": P, "to": P}` or `{"last_days": N}`.
    fn window_object(&self, map: &Map<String, Value>, path: &str) -> Result<TimeRange> {
        if let Some(n) = map.get("last_days") {
            only_keys(map, &["last_days"], path)?;
            let here = join(path, "last_days");
            let n = n
                .as_i64()
                .filter(|n| (1..=36_600).contains(n))
                .ok_or_else(|| {
                    Error::condition(&here, "last_days is a whole number of days, 1 or more")
                })?;
            let from = self.day_point(self.cx.today - Duration::days(n - 1));
            let to = self.day_point(self.cx.today);
            return self.span(Some(from), Some(to), path);
        }
        only_keys(map, &["from", "to"], path)?;
        let from = map
            .get("from")
            .map(|v| self.point(v, &join(path, "from")))
            .transpose()?;
        let to = map
            .get("to")
            .map(|v| self.point(v, &join(path, "to")))
            .transpose()?;
        if from.is_none() && to.is_none() {
            return Err(Error::condition(
                path,
                "a window has from, to or both, or last_days",
            ));
        }
        self.span(from, to, path)
    }

    fn span(&self, from: Option<Point>, to: Option<Point>, path: &str) -> Result<TimeRange> {
        let start = from.map(|p| p.start);
        let end = to.map(|p| p.end());
        if let (Some(s), Some(e)) = (start, end)
            && s >= e
        {
            return Err(Error::condition(path, "the window ends before it starts"));
        }
        let whole = from.is_none_or(|p| p.day().is_some()) && to.is_none_or(|p| p.day().is_some());
        Ok(TimeRange {
            start,
            end,
            days: whole.then(|| (from.and_then(|p| p.day()), to.and_then(|p| p.day()))),
        })
    }

    fn day_point(&self, day: NaiveDate) -> Point {
        let start = day_start(day, self.cx.zone);
        Point {
            start,
            length: DAY_MICROS,
            day: Some(day),
        }
    }

    /// A day (`2026-09-01`, `T`, `T-7`) or an instant (RFC 3339, or `YYYY-MM-DD HH:MM:SS`
    /// in the catalog zone).
    fn point(&self, value: &Value, path: &str) -> Result<Point> {
        let text = value.as_str().ok_or_else(|| {
            Error::condition(
                path,
                "a time is a string: a date (2026-09-01), T, T-7, T+1, or a timestamp",
            )
        })?;
        let text = text.trim();
        if let Some(rest) = text.strip_prefix('T') {
            let offset = if rest.is_empty() {
                0
            } else {
                let (sign, digits) = rest.split_at(1);
                let n: i64 = digits.parse().map_err(|_| {
                    Error::condition(path, format!("'{text}' is not T, T-N or T+N (N days)"))
                })?;
                match sign {
                    "-" => -n,
                    "+" => n,
                    _ => {
                        return Err(Error::condition(
                            path,
                            format!("'{text}' is not T, T-N or T+N (N days)"),
                        ));
                    }
                }
            };
            if offset.abs() > 36_600 {
                return Err(Error::condition(
                    path,
                    "relative dates reach 100 years at most",
                ));
            }
            return Ok(self.day_point(self.cx.today + Duration::days(offset)));
        }
        if let Ok(day) = NaiveDate::parse_from_str(text, "%Y-%m-%d") {
            return Ok(self.day_point(day));
        }
        let instant = DateTime::parse_from_rfc3339(text)
            .map(|t| t.with_timezone(&Utc))
            .ok()
            .or_else(|| {
                ["%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%dT%H:%M:%S"]
                    .iter()
                    .find_map(|f| NaiveDateTime::parse_from_str(text, f).ok())
                    .and_then(|t| self.cx.zone.from_local_datetime(&t).single())
                    .map(|t| t.with_timezone(&Utc))
            })
            .ok_or_else(|| {
                Error::condition(
                    path,
                    format!(
                        "'{text}' is not a date (2026-09-01), T, T-N, T+N or a timestamp (2026-09-01T08:00:00Z)"
                    ),
                )
            })?;
        Ok(Point {
            start: instant.timestamp_micros(),
            length: 1,
            day: None,
        })
    }

    fn window(&self, value: &Value, path: &str) -> Result<TimeRange> {
        match value {
            Value::Object(map) => self.window_object(map, path),
            _ => Err(Error::condition(
                path,
                "a window is {\"from\": ..., \"to\": ...} or {\"last_days\": N}",
            )),
        }
    }

    fn event(&mut self, map: &Map<String, Value>, path: &str) -> Result<EventCondition> {
        only_keys(map, &["event", "where", "count", "window"], path)?;
        let event = map
            .get("event")
            .and_then(Value::as_str)
            .filter(|e| !e.is_empty())
            .ok_or_else(|| Error::condition(&join(path, "event"), "an event is named by a string"))?
            .to_string();
        let mut filters = Vec::new();
        if let Some(list) = map.get("where") {
            let here = join(path, "where");
            let Value::Array(items) = list else {
                return Err(Error::condition(
                    &here,
                    "where holds a list of field conditions",
                ));
            };
            for (i, item) in items.iter().enumerate() {
                let at = format!("{here}[{i}]");
                let Value::Object(filter) = item else {
                    return Err(Error::condition(
                        &at,
                        "a filter is a field condition object",
                    ));
                };
                only_keys(filter, &["field", "op", "value"], &at)?;
                let condition = self.field(filter, &at, FieldScope::Table("events"))?;
                if matches!(condition.column.as_str(), "user_id" | "event_name") {
                    return Err(Error::condition(
                        &join(&at, "field"),
                        format!("'{}' cannot filter events of one name", condition.column),
                    ));
                }
                filters.push(condition);
            }
        }
        let count = match map.get("count") {
            None => CountTest::AT_LEAST_ONCE,
            Some(value) => self.count(value, &join(path, "count"))?,
        };
        let window = map
            .get("window")
            .map(|w| self.window(w, &join(path, "window")))
            .transpose()?;
        Ok(EventCondition {
            event,
            filters,
            count,
            window,
        })
    }

    fn count(&self, value: &Value, path: &str) -> Result<CountTest> {
        let Value::Object(map) = value else {
            return Err(Error::condition(
                path,
                "count is {\"op\": \"ge\", \"value\": N}",
            ));
        };
        only_keys(map, &["op", "value"], path)?;
        let op = map
            .get("op")
            .and_then(Value::as_str)
            .and_then(Compare::parse)
            .ok_or_else(|| {
                Error::condition(
                    &join(path, "op"),
                    "count op is one of eq, ne, gt, ge, lt, le",
                )
            })?;
        let value = map
            .get("value")
            .and_then(Value::as_i64)
            .filter(|v| *v >= 0)
            .ok_or_else(|| {
                Error::condition(
                    &join(path, "value"),
                    "count value is a whole number, 0 or more",
                )
            })?;
        Ok(CountTest { op, value })
    }

    fn orders(&mut self, map: &Map<String, Value>, path: &str) -> Result<OrderCondition> {
        only_keys(map, &["orders", "op", "value", "platform", "window"], path)?;
        let here = join(path, "orders");
        let measure = match map.get("orders").and_then(Value::as_str) {
            Some("count") => OrderMeasure::Count,
            Some("amount") => OrderMeasure::Amount,
            _ => {
                return Err(Error::condition(
                    &here,
                    "orders measures \"count\" (paid orders) or \"amount\" (paid yuan net of refunds)",
                ));
            }
        };
        let orders = self.table("orders", &here)?;
        let amount = orders
            .field("amount")
            .ok_or_else(|| Error::Internal("orders has no amount field".into()))?;
        let op = map
            .get("op")
            .and_then(Value::as_str)
            .and_then(Compare::parse)
            .ok_or_else(|| {
                Error::condition(&join(path, "op"), "op is one of eq, ne, gt, ge, lt, le")
            })?;
        let value_path = join(path, "value");
        let value = map
            .get("value")
            .ok_or_else(|| Error::condition(&value_path, "a value is required"))?;
        let value = match measure {
            OrderMeasure::Count => {
                Literal::Int(value.as_i64().filter(|v| *v >= 0).ok_or_else(|| {
                    Error::condition(&value_path, "an order count is a whole number, 0 or more")
                })?)
            }
            OrderMeasure::Amount => literal(amount, value, &value_path)?,
        };
        let mut platforms = Vec::new();
        if let Some(platform) = map.get("platform") {
            let at = join(path, "platform");
            let known = orders
                .field("platform")
                .map(|f| f.values.clone())
                .unwrap_or_default();
            let names: Vec<&Value> = match platform {
                Value::Array(items) => items.iter().collect(),
                other => vec![other],
            };
            for name in names {
                let name = name
                    .as_str()
                    .filter(|n| known.iter().any(|k| k == n))
                    .ok_or_else(|| {
                        Error::condition(
                            &at,
                            format!("platform is one of {} (or a list)", known.join(", ")),
                        )
                    })?;
                platforms.push(name.to_string());
            }
        }
        let window = map
            .get("window")
            .map(|w| self.window(w, &join(path, "window")))
            .transpose()?;
        Ok(OrderCondition {
            measure,
            op,
            value,
            platforms,
            window,
        })
    }
}

#[derive(Clone, Copy)]
enum FieldScope {
    /// Bare names are columns of users; `table.column` of another table.
    Users,
    /// Columns of this table only.
    Table(&'static str),
}

const DAY_MICROS: i64 = 86_400_000_000;

/// A day or an instant: the range `[start, start + length)`.
#[derive(Debug, Clone, Copy)]
struct Point {
    start: i64,
    length: i64,
    day: Option<NaiveDate>,
}

impl Point {
    fn end(&self) -> i64 {
        self.start + self.length
    }
    fn day(&self) -> Option<NaiveDate> {
        self.day
    }
}

/// The first instant of `day` in `zone`, in UTC microseconds.
pub fn day_start(day: NaiveDate, zone: FixedOffset) -> i64 {
    let midnight = day.and_hms_opt(0, 0, 0).unwrap_or_default();
    (midnight.and_utc().timestamp() - i64::from(zone.local_minus_utc())) * 1_000_000
}

/// The operators conditions may use on a field of type `ty`, as the builder lists them.
pub fn operators(ty: ValueType) -> &'static [&'static str] {
    match ty {
        ValueType::String => &[
            "eq", "ne", "in", "not_in", "contains", "prefix", "is_null", "not_null",
        ],
        ValueType::Enum => &["eq", "ne", "in", "not_in", "is_null", "not_null"],
        ValueType::Int | ValueType::Float | ValueType::Decimal => &[
            "eq", "ne", "gt", "ge", "lt", "le", "between", "in", "not_in", "is_null", "not_null",
        ],
        ValueType::Time | ValueType::Date => &[
            "between", "eq", "ne", "gt", "ge", "lt", "le", "is_null", "not_null",
        ],
        ValueType::Bool => &["eq", "ne", "is_null", "not_null"],
        ValueType::Json => &["contains", "is_null", "not_null"],
        ValueType::Binary => &["is_null", "not_null"],
    }
}

fn literal(standard: &FieldStandard, value: &Value, path: &str) -> Result<Literal> {
    let wrong = |expected: &str| {
        Error::condition(
            path,
            format!(
                "{} field '{}' takes {expected}, not {value}",
                standard.value_type, standard.name
            ),
        )
    };
    match standard.value_type {
        ValueType::String | ValueType::Json => value
            .as_str()
            .map(|s| Literal::Text(s.to_string()))
            .ok_or_else(|| wrong("a string")),
        ValueType::Enum => {
            let text = value.as_str().ok_or_else(|| wrong("a string"))?;
            if !standard.values.iter().any(|v| v == text) {
                return Err(Error::condition(
                    path,
                    format!(
                        "'{text}' is not a value of '{}' (values: {})",
                        standard.name,
                        standard.values.join(", ")
                    ),
                ));
            }
            Ok(Literal::Text(text.to_string()))
        }
        ValueType::Int => value
            .as_i64()
            .map(Literal::Int)
            .ok_or_else(|| wrong("a whole number")),
        ValueType::Float | ValueType::Decimal => match value {
            Value::Number(n) => {
                let f = n
                    .as_f64()
                    .filter(|f| f.is_finite())
                    .ok_or_else(|| wrong("a number"))?;
                if standard.value_type == ValueType::Decimal && f.abs() >= 1e16 {
                    return Err(wrong("a number below 10^16"));
                }
                Ok(Literal::Number {
                    text: n.to_string(),
                    value: f,
                })
            }
            _ => Err(wrong("a number")),
        },
        ValueType::Bool => value
            .as_bool()
            .map(Literal::Bool)
            .ok_or_else(|| wrong("true or false")),
        ValueType::Time | ValueType::Date | ValueType::Binary => Err(wrong("no literal")),
    }
}

/// The user ids a checked tree names as audiences, for loading their bitmaps.
pub fn audiences(node: &Node, out: &mut Vec<String>) {
    match node {
        Node::All(children) | Node::Any(children) => {
            children.iter().for_each(|c| audiences(c, out));
        }
        Node::Not(child) => audiences(child, out),
        Node::Audience(name) if !out.contains(name) => out.push(name.clone()),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cx(definition: &CatalogDefinition) -> CheckContext<'_> {
        CheckContext {
            definition,
            role: Role::Analyst,
            today: NaiveDate::from_ymd_opt(2026, 11, 20).expect("date"),
            zone: FixedOffset::east_opt(8 * 3600).expect("zone"),
        }
    }

    fn error_path(tree: Value) -> String {
        let definition = CatalogDefinition::default_definition().expect("definition");
        match check(&tree, &cx(&definition)) {
            Err(Error::Condition { path, .. }) => path,
            other => panic!("expected a condition error, got {other:?}"),
        }
    }

    #[test]
    fn errors_name_the_path() {
        assert_eq!(
            error_path(
                json!({"all": [{"field": "gender", "op": "eq", "value": "male"},
                                      {"any": [{"field": "nope", "op": "eq", "value": 1}]}]})
            ),
            "all[1].any[0].field"
        );
        assert_eq!(
            error_path(json!({"all": [{"field": "age", "op": "contains", "value": "3"}]})),
            "all[0].op"
        );
        assert_eq!(
            error_path(json!({"field": "age", "op": "gt", "value": "thirty"})),
            "value"
        );
        assert_eq!(
            error_path(json!({"field": "gender", "op": "eq", "value": "robot"})),
            "value"
        );
        assert_eq!(
            error_path(
                json!({"event": "view_item", "where": [{"field": "price", "op": "gt", "value": true}]})
            ),
            "where[0].value"
        );
        assert_eq!(
            error_path(json!({"event": "view_item", "window": {"from": "T-x"}})),
            "window.from"
        );
        assert_eq!(error_path(json!({"all": [{"feild": "age"}]})), "all[0]");
        assert_eq!(
            error_path(json!({"field": "age", "op": "eq", "value": 3, "extra": 1})),
            "extra"
        );
        assert_eq!(error_path(json!([1, 2])), "conditions");
    }

    #[test]
    fn viewers_may_not_filter_on_phones() {
        let definition = CatalogDefinition::default_definition().expect("definition");
        let mut context = cx(&definition);
        context.role = Role::Viewer;
        let tree = json!({"field": "phone", "op": "prefix", "value": "+86138"});
        let err = check(&tree, &context).expect_err("refused");
        assert!(err.to_string().contains("may not use"), "{err}");
        context.role = Role::Analyst;
        assert!(check(&tree, &context).is_ok());
    }

    #[test]
    fn relative_days_resolve_against_the_evaluation_date() {
        let definition = CatalogDefinition::default_definition().expect("definition");
        let tree = json!({"event": "view_item", "window": {"from": "T-7", "to": "T"}});
        let Node::Event(event) = check(&tree, &cx(&definition)).expect("checks") else {
            panic!("an event condition");
        };
        let window = event.window.expect("window");
        let day = |d| NaiveDate::from_ymd_opt(2026, 11, d);
        assert_eq!(window.days, Some((day(13), day(20))));
        // 2026-11-13 00:00 in UTC+8 is 2026-11-12 16:00 UTC.
        assert_eq!(window.start, Some(1_794_499_200_000_000));
        assert_eq!(window.end, Some(1_794_499_200_000_000 + 8 * DAY_MICROS));
        let last = json!({"event": "view_item", "window": {"last_days": 7}});
        let Node::Event(event) = check(&last, &cx(&definition)).expect("checks") else {
            panic!("an event condition");
        };
        assert_eq!(event.window.and_then(|w| w.days), Some((day(14), day(20))));
    }

    #[test]
    fn derived_conditions_expand_and_cannot_loop() {
        let mut definition = CatalogDefinition::default_definition().expect("definition");
        let tree = json!({"derived": "middle_aged_male"});
        let node = check(&tree, &cx(&definition)).expect("checks");
        assert!(matches!(node, Node::All(ref c) if c.len() == 2), "{node:?}");
        let looped = definition.derived["high_value"].clone();
        let mut looped = looped;
        looped.conditions = json!({"any": [{"derived": "high_value"}]});
        definition.derived.insert("high_value".into(), looped);
        let err = check(&json!({"derived": "high_value"}), &cx(&definition)).expect_err("loop");
        assert!(err.to_string().contains("refers to itself"), "{err}");
    }

    #[test]
    fn count_tests_know_when_zero_passes() {
        let t = |op, value| CountTest { op, value };
        assert!(!CountTest::AT_LEAST_ONCE.admits_zero());
        assert!(t(Compare::Lt, 3).admits_zero());
        assert!(t(Compare::Eq, 0).admits_zero());
        assert!(!t(Compare::Ge, 2).admits_zero());
        assert!(t(Compare::Gt, 0).is_at_least_once());
    }
}
