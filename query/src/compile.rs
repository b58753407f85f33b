//! Compiles a checked condition tree into SQL over `users`: the scan path.
//!
//! A condition's predicate may be null where a column is (a user with no city is in no city
//! list): `AND` and `OR` keep "true" exactly where null counts as false, so only `not` makes
//! its operand never null before negating it. So `not` is the complement against the whole
//! universe and the order of conditions never changes the result, and the filters the scan
//! sees stay as plain as the tree (no wrapper per condition to evaluate twice). Values are written as escaped SQL literals; the test below parses
//! hostile values back to check they stay one literal.

use crate::condition::{
    CountTest, EventCondition, FieldCondition, Literal, Node, NumberRange, OrderCondition,
    OrderMeasure, Test, TimeRange,
};
use shoal_catalog::{PAID_STATUSES, ValueType};

/// Alias of `users` in compiled queries.
pub const USERS: &str = "u";

/// Names of the session functions compiled SQL may call for audience membership.
pub const AUDIENCE_FUNCTION: &str = "audience";

/// The predicate of `node` over `users` aliased `u`.
pub fn predicate(node: &Node) -> String {
    match node {
        Node::All(children) if children.is_empty() => "TRUE".to_string(),
        Node::Any(children) if children.is_empty() => "FALSE".to_string(),
        Node::All(children) => group(children, " AND "),
        Node::Any(children) => group(children, " OR "),
        Node::Not(child) if may_be_null(child) => {
            format!("NOT ({})", never_null(predicate(child)))
        }
        Node::Not(child) => format!("NOT ({})", predicate(child)),
        Node::Field(f) if f.table == "users" => field(f, USERS),
        Node::Field(f) => format!(
            "{USERS}.user_id IN (SELECT t.user_id FROM {} t WHERE t.user_id IS NOT NULL AND {})",
            ident(&f.table),
            field(f, "t")
        ),
        Node::Event(e) => event(e),
        Node::Orders(o) => orders(o),
        Node::Audience(name) => format!(
            "rb_contains({AUDIENCE_FUNCTION}({}), {USERS}.user_id)",
            text(name)
        ),
    }
}

/// Whether `node`'s predicate can be null for some user. Only a test of a `users` column can
/// (the column may be null); membership tests (events, orders, other tables, audiences) ask
/// about `user_id`, which every user has. A `not` of a predicate that cannot be null needs no
/// wrapper, which matters: DataFusion plans `COALESCE(x IN (subquery), FALSE)` as two joins
/// against the subquery, reading its table twice.
fn may_be_null(node: &Node) -> bool {
    match node {
        Node::All(children) | Node::Any(children) => children.iter().any(may_be_null),
        Node::Not(_) => false,
        Node::Field(f) if f.table == "users" => !matches!(f.test, Test::IsNull | Test::NotNull),
        Node::Field(_) | Node::Event(_) | Node::Orders(_) | Node::Audience(_) => false,
    }
}

/// `SELECT count(*)` of the users matching `node`.
pub fn count_sql(node: &Node) -> String {
    format!(
        "SELECT count(*) AS users FROM users {USERS} WHERE {}",
        predicate(node)
    )
}

/// The user ids matching `node`.
pub fn ids_sql(node: &Node) -> String {
    format!(
        "SELECT {USERS}.user_id FROM users {USERS} WHERE {}",
        predicate(node)
    )
}

fn group(children: &[Node], joiner: &str) -> String {
    children
        .iter()
        .map(|c| format!("({})", predicate(c)))
        .collect::<Vec<_>>()
        .join(joiner)
}

/// A quoted identifier (catalog names are lowercase identifiers already).
pub fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A string literal. DataFusion's SQL dialect reads backslashes as themselves, so doubling
/// quotes is the whole escaping (the parser's own printer leaves `\'` alone, which would let a
/// value end its literal early).
pub fn text(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

fn literal(value: &Literal, ty: ValueType) -> String {
    match value {
        Literal::Text(t) => text(t),
        Literal::Int(i) => i.to_string(),
        Literal::Number { text: t, .. } if ty == ValueType::Decimal => {
            format!("CAST({} AS DECIMAL(38, 10))", text(t))
        }
        Literal::Number { value, .. } => format!("CAST({} AS DOUBLE)", text(&value.to_string())),
        Literal::Bool(b) => b.to_string().to_uppercase(),
    }
}

fn never_null(expression: String) -> String {
    format!("COALESCE({expression}, FALSE)")
}

fn field(f: &FieldCondition, alias: &str) -> String {
    let column = format!("{alias}.{}", ident(&f.column));
    let ty = f.value_type;
    let list = |values: &[Literal]| {
        values
            .iter()
            .map(|v| literal(v, ty))
            .collect::<Vec<_>>()
            .join(", ")
    };
    match &f.test {
        Test::IsNull => format!("{column} IS NULL"),
        Test::NotNull => format!("{column} IS NOT NULL"),
        Test::In(values) if values.len() == 1 => {
            format!("{column} = {}", literal(&values[0], ty))
        }
        Test::In(values) => format!("{column} IN ({})", list(values)),
        Test::NotIn(values) => format!("{column} NOT IN ({})", list(values)),
        Test::NotEqual(value) => format!("{column} <> {}", literal(value, ty)),
        Test::Contains(needle) => {
            format!("strpos(CAST({column} AS VARCHAR), {}) > 0", text(needle))
        }
        Test::Prefix(start) => format!("starts_with({column}, {})", text(start)),
        Test::Range(range) => number_range(&column, range, ty),
        Test::Time(range) => time_range(&column, range, ty),
        Test::NotTime(range) => format!(
            "{column} IS NOT NULL AND NOT ({})",
            time_range(&column, range, ty)
        ),
    }
}

fn number_range(column: &str, range: &NumberRange, ty: ValueType) -> String {
    let mut parts = Vec::new();
    if let Some((low, included)) = &range.low {
        let op = if *included { ">=" } else { ">" };
        parts.push(format!("{column} {op} {}", literal(low, ty)));
    }
    if let Some((high, included)) = &range.high {
        let op = if *included { "<=" } else { "<" };
        parts.push(format!("{column} {op} {}", literal(high, ty)));
    }
    if parts.is_empty() {
        format!("{column} IS NOT NULL")
    } else {
        parts.join(" AND ")
    }
}

fn timestamp(micros: i64) -> String {
    format!("to_timestamp_micros({micros})")
}

fn date(day: chrono::NaiveDate) -> String {
    format!("DATE {}", text(&day.to_string()))
}

/// A time range over a `time` column, or a day range over a `date` column.
fn time_range(column: &str, range: &TimeRange, ty: ValueType) -> String {
    let mut parts = Vec::new();
    if ty == ValueType::Date {
        // Date columns compare by whole days; an instant bound rounds to its day.
        let (first, last) = range.days.unwrap_or((None, None));
        if let Some(d) = first {
            parts.push(format!("{column} >= {}", date(d)));
        }
        if let Some(d) = last {
            parts.push(format!("{column} <= {}", date(d)));
        }
    } else {
        if let Some(s) = range.start {
            parts.push(format!("{column} >= {}", timestamp(s)));
        }
        if let Some(e) = range.end {
            parts.push(format!("{column} < {}", timestamp(e)));
        }
    }
    if parts.is_empty() {
        format!("{column} IS NOT NULL")
    } else {
        parts.join(" AND ")
    }
}

/// The window of events: by the `event_date` partition when it is whole days (so only
/// those partitions are read), by `event_time` otherwise.
fn event_window(window: &TimeRange) -> String {
    match window.days {
        Some(_) => time_range("e.event_date", window, ValueType::Date),
        None => time_range("e.event_time", window, ValueType::Time),
    }
}

fn having(count: &CountTest, measure: &str) -> String {
    format!("{measure} {} {}", count.op.sql(), count.value)
}

/// The rows of `events` (as `alias`) that an event condition's event and filters select,
/// whatever its count and window: a funnel step.
pub fn event_rows(e: &EventCondition, alias: &str) -> String {
    let mut parts = vec![format!("{alias}.event_name = {}", text(&e.event))];
    parts.extend(e.filters.iter().map(|f| field(f, alias)));
    parts.join(" AND ")
}

fn event(e: &EventCondition) -> String {
    membership(&e.count, "count(*)", &event_rows_from(e))
}

/// `FROM events e WHERE ...`: the rows an event condition counts per user.
pub fn event_rows_from(e: &EventCondition) -> String {
    let mut filters = vec![
        "e.user_id IS NOT NULL".to_string(),
        format!("e.event_name = {}", text(&e.event)),
    ];
    if let Some(window) = &e.window {
        filters.push(event_window(window));
    }
    filters.extend(e.filters.iter().map(|f| field(f, "e")));
    format!("FROM events e WHERE {}", filters.join(" AND "))
}

/// Users whose `measure` over the rows of `from` passes `count`. When zero passes, users
/// without rows match too: the complement of those whose measure fails.
fn membership(count: &CountTest, measure: &str, from: &str) -> String {
    if count.is_at_least_once() {
        format!("{USERS}.user_id IN (SELECT e.user_id {from})")
    } else if count.admits_zero() {
        format!(
            "{USERS}.user_id NOT IN (SELECT e.user_id {from} GROUP BY e.user_id HAVING NOT ({}))",
            having(count, measure)
        )
    } else {
        format!(
            "{USERS}.user_id IN (SELECT e.user_id {from} GROUP BY e.user_id HAVING {})",
            having(count, measure)
        )
    }
}

/// What an order condition sums per user when it measures amounts: paid amounts net of
/// refunds (an order without a refund has a null `refund_amount`).
pub const ORDER_AMOUNT: &str = "e.amount - COALESCE(e.refund_amount, 0)";

/// `FROM orders e WHERE ...`: the paid orders an order condition measures per user.
pub fn order_rows_from(o: &OrderCondition) -> String {
    let statuses = PAID_STATUSES
        .iter()
        .map(|s| text(s))
        .collect::<Vec<_>>()
        .join(", ");
    let mut filters = vec![
        "e.user_id IS NOT NULL".to_string(),
        format!("e.status IN ({statuses})"),
    ];
    if !o.platforms.is_empty() {
        let list = o
            .platforms
            .iter()
            .map(|p| text(p))
            .collect::<Vec<_>>()
            .join(", ");
        filters.push(format!("e.platform IN ({list})"));
    }
    if let Some(window) = &o.window {
        filters.push(time_range("e.created_at", window, ValueType::Time));
    }
    format!("FROM orders e WHERE {}", filters.join(" AND "))
}

fn orders(o: &OrderCondition) -> String {
    let from = order_rows_from(o);
    let (measure, value, zero) = match o.measure {
        OrderMeasure::Count => (
            "count(*)".to_string(),
            literal(&o.value, ValueType::Int),
            0.0,
        ),
        OrderMeasure::Amount => (
            format!("sum({ORDER_AMOUNT})"),
            literal(&o.value, ValueType::Decimal),
            0.0,
        ),
    };
    let passes_zero = o.value.as_f64().is_some_and(|v| o.op.holds(zero, v));
    let test = format!("{measure} {} {value}", o.op.sql());
    if passes_zero {
        format!(
            "{USERS}.user_id NOT IN (SELECT e.user_id {from} GROUP BY e.user_id HAVING NOT ({test}))"
        )
    } else {
        format!("{USERS}.user_id IN (SELECT e.user_id {from} GROUP BY e.user_id HAVING {test})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::sql::sqlparser::ast::Value as SqlValue;

    #[test]
    fn only_a_not_of_a_nullable_test_is_made_never_null() {
        let city = Node::Field(FieldCondition {
            table: "users".into(),
            column: "city".into(),
            value_type: ValueType::String,
            test: Test::In(vec![Literal::Text("上海".into())]),
        });
        let bought = Node::Event(EventCondition {
            event: "purchase".into(),
            filters: Vec::new(),
            count: CountTest::AT_LEAST_ONCE,
            window: None,
        });
        let coalesced = |node: &Node| predicate(node).matches("COALESCE").count();
        // Plain under all/any: null counts as false there already.
        assert_eq!(coalesced(&Node::All(vec![city.clone(), bought.clone()])), 0);
        // A null city is "not in 上海".
        assert_eq!(coalesced(&Node::Not(Box::new(city.clone()))), 1);
        assert_eq!(
            coalesced(&Node::Not(Box::new(Node::Any(vec![
                bought.clone(),
                city.clone()
            ])))),
            1
        );
        // Membership of a user id is never null: no wrapper (it would plan two joins).
        assert_eq!(coalesced(&Node::Not(Box::new(bought.clone()))), 0);
        assert_eq!(
            coalesced(&Node::Not(Box::new(Node::Not(Box::new(city))))),
            1
        );
    }

    #[test]
    fn literals_cannot_break_out_of_their_quotes() {
        for hostile in ["'; DROP TABLE users; --", "a\\'b", "\"", "x' OR '1'='1"] {
            let printed = text(hostile);
            let parsed = datafusion::sql::sqlparser::parser::Parser::new(
                &datafusion::sql::sqlparser::dialect::GenericDialect {},
            )
            .try_with_sql(&printed)
            .and_then(|mut p| p.parse_expr())
            .unwrap_or_else(|e| panic!("{printed}: {e}"));
            match parsed {
                datafusion::sql::sqlparser::ast::Expr::Value(v) => {
                    assert_eq!(v.value, SqlValue::SingleQuotedString(hostile.to_string()));
                }
                other => panic!("{hostile} parsed as {other:?}"),
            }
        }
    }
}
