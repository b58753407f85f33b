//! What the reports share: event conditions as the builder writes them, checked for a role.

use chrono::NaiveDate;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use shoal_catalog::Role;
use shoal_query::condition::{self, CheckContext, Node};
use shoal_query::{Error, Result, Session, compile};

/// An event with filters on its columns (the condition builder's `where`).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EventSpec {
    pub event: String,
    #[serde(default, rename = "where", skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<Value>,
}

impl EventSpec {
    /// An event without filters.
    pub fn named(event: &str) -> EventSpec {
        EventSpec {
            event: event.into(),
            filters: Vec::new(),
        }
    }
}

/// A bad request, pointing at the part at fault.
pub(crate) fn invalid(path: &str, message: impl Into<String>) -> Error {
    Error::Condition {
        path: path.into(),
        message: message.into(),
    }
}

/// The checking context of `role` in `session`, and the day (`today`, or today in the
/// catalog's zone) relative dates count from.
pub(crate) fn context(
    session: &Session,
    role: Role,
    today: Option<NaiveDate>,
) -> Result<(CheckContext<'_>, NaiveDate)> {
    let definition = session.catalog().definition();
    let zone = shoal_catalog::zone_offset(&definition.time_zone)
        .ok_or_else(|| Error::Invalid(format!("unknown time zone '{}'", definition.time_zone)))?;
    let today = today.unwrap_or_else(|| chrono::Utc::now().with_timezone(&zone).date_naive());
    Ok((
        CheckContext {
            definition,
            role,
            today,
            zone,
        },
        today,
    ))
}

/// The SQL predicate over `events` aliased `e` of an event and its filters, checked as the
/// context's role may use them; errors point below `path`.
pub(crate) fn event_predicate(
    cx: &CheckContext<'_>,
    event: &str,
    filters: &[Value],
    path: &str,
) -> Result<String> {
    let tree = json!({"event": event, "where": filters});
    match condition::check(&tree, cx) {
        Ok(Node::Event(event)) => Ok(compile::event_rows(&event, "e")),
        Ok(_) => Err(invalid(path, "not an event")),
        Err(Error::Condition {
            path: inner,
            message,
        }) => Err(invalid(&format!("{path}.{inner}"), message)),
        Err(e) => Err(e),
    }
}
