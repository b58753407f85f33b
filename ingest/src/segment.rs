//! Segment messages (track, page, screen, identify, alias, group) → `events` rows.
//!
//! Follows Segment's tracking API spec: `messageId` is the dedup key (a message without one
//! gets a stable id derived from its content, so exact re-sends still dedup), `timestamp` falls
//! back to `sentAt`/`receivedAt`, every message needs `userId` or `anonymousId`, `track` needs
//! `event`, `alias` needs `previousId`. Phones in identify traits are identities and are stored
//! in E.164.

use chrono::{DateTime, FixedOffset, Utc};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::clean::{self, Phone, Rejection, reason};

/// Segment's limit for one message.
pub const MAX_MESSAGE_BYTES: usize = 32 * 1024;

/// One cleaned event.
#[derive(Debug, Clone, PartialEq)]
pub struct EventRow {
    pub event_id: String,
    pub event_name: String,
    pub event_type: &'static str,
    pub event_time: i64,
    pub event_date: i32,
    pub received_at: i64,
    pub anonymous_id: Option<String>,
    pub login_id: Option<String>,
    pub source: String,
    pub page: Option<String>,
    pub item_id: Option<String>,
    pub category: Option<String>,
    pub price: Option<i64>,
    pub quantity: Option<i64>,
    pub revenue: Option<i64>,
    pub channel: Option<String>,
    pub campaign_id: Option<String>,
    pub order_id: Option<String>,
    pub properties: Option<String>,
}

/// Context every message of one batch shares.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    /// When the batch was received.
    pub received_at: DateTime<Utc>,
    /// The catalog's zone, for `event_date` and zone-less times.
    pub zone: FixedOffset,
}

const TYPES: &[&str] = &["track", "page", "screen", "identify", "alias", "group"];

fn string(object: &Map<String, Value>, key: &str) -> Option<String> {
    match object.get(key) {
        Some(Value::String(s)) => clean::text(s),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    }
}

/// Parses one raw line.
pub fn parse_line(line: &str, source: &str, clock: Clock) -> Result<EventRow, Rejection> {
    if line.len() > MAX_MESSAGE_BYTES {
        return Err(Rejection::new(
            reason::TOO_LARGE,
            format!(
                "message is {} bytes; the limit is {MAX_MESSAGE_BYTES}",
                line.len()
            ),
        ));
    }
    let value: Value = serde_json::from_str(line)
        .map_err(|e| Rejection::new(reason::INVALID_JSON, format!("not JSON: {e}")))?;
    parse_message(value, line, source, clock)
}

/// Cleans one message already parsed as JSON; `raw` is its text (for the derived id).
pub fn parse_message(
    value: Value,
    raw: &str,
    source: &str,
    clock: Clock,
) -> Result<EventRow, Rejection> {
    let Value::Object(mut message) = value else {
        return Err(Rejection::new(
            reason::INVALID_JSON,
            "a message is a JSON object",
        ));
    };
    let kind = match message.get("type").and_then(Value::as_str) {
        Some(t) => TYPES
            .iter()
            .find(|k| k.eq_ignore_ascii_case(t))
            .copied()
            .ok_or_else(|| {
                Rejection::new(
                    reason::UNKNOWN_VALUE,
                    format!("type: '{t}' is not a Segment message type"),
                )
            })?,
        None => return Err(Rejection::new(reason::MISSING_REQUIRED, "type: missing")),
    };
    let anonymous_id = string(&message, "anonymousId");
    let login_id = string(&message, "userId");
    if anonymous_id.is_none() && login_id.is_none() {
        return Err(Rejection::new(
            reason::MISSING_REQUIRED,
            "userId or anonymousId: a message needs at least one",
        ));
    }
    let event_name = match kind {
        "track" => string(&message, "event").ok_or_else(|| {
            Rejection::new(
                reason::MISSING_REQUIRED,
                "event: a track call needs an event name",
            )
        })?,
        other => other.to_string(),
    };
    if kind == "alias" && string(&message, "previousId").is_none() {
        return Err(Rejection::new(
            reason::MISSING_REQUIRED,
            "previousId: an alias call needs it",
        ));
    }
    let (time_field, time_text) = ["timestamp", "sentAt", "receivedAt", "originalTimestamp"]
        .iter()
        .find_map(|k| {
            message
                .get(*k)
                .and_then(Value::as_str)
                .map(|t| (*k, t.to_string()))
        })
        .unwrap_or_else(|| ("receivedAt", clock.received_at.to_rfc3339()));
    let event_time = clean::timestamp(time_field, &time_text, clock.zone, clock.received_at)?;

    let event_id = match string(&message, "messageId") {
        Some(id) => id,
        None => {
            let digest = Sha256::digest(raw.as_bytes());
            format!("sha256:{}", hex(&digest[..16]))
        }
    };

    // identify/group carry traits; the others properties.
    let payload_key = if matches!(kind, "identify" | "group") {
        "traits"
    } else {
        "properties"
    };
    let mut payload = match message.remove(payload_key) {
        Some(Value::Object(p)) => p,
        Some(Value::Null) | None => Map::new(),
        Some(_) => {
            return Err(Rejection::new(
                reason::UNKNOWN_VALUE,
                format!("{payload_key}: must be an object"),
            ));
        }
    };
    if let Some(Value::String(raw_phone)) = payload.get("phone") {
        match clean::phone(&format!("{payload_key}.phone"), raw_phone)? {
            Phone::Valid(e164) => {
                payload.insert("phone".into(), Value::String(e164));
            }
            Phone::Masked | Phone::Missing => {
                payload.remove("phone");
            }
        }
    }
    let fen = |key: &str| -> Result<Option<i64>, Rejection> {
        match payload.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) => {
                clean::number_fen(&format!("properties.{key}"), n.as_f64().unwrap_or(f64::NAN))
                    .map(Some)
            }
            Some(Value::String(s)) => clean::amount_fen(&format!("properties.{key}"), s).map(Some),
            Some(_) => Err(Rejection::new(
                reason::BAD_AMOUNT,
                format!("properties.{key}: not a number"),
            )),
        }
    };
    let price = fen("price")?;
    let revenue = fen("revenue")?.or(fen("total")?);
    let quantity = match payload.get("quantity") {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_i64() {
            Some(q) if (0..=10_000).contains(&q) => Some(q),
            Some(q) if q < 0 => {
                return Err(Rejection::new(
                    reason::NEGATIVE_AMOUNT,
                    format!("properties.quantity: {q} is negative"),
                ));
            }
            _ => {
                return Err(Rejection::new(
                    reason::OUT_OF_RANGE,
                    format!("properties.quantity: {v} is not 0..10000"),
                ));
            }
        },
    };
    let page = match kind {
        "page" | "screen" => string(&payload, "path").or_else(|| string(&message, "name")),
        _ => string(&payload, "path"),
    };
    let channel = string(&payload, "channel").or_else(|| {
        message
            .get("context")
            .and_then(|c| c.get("channel"))
            .and_then(Value::as_str)
            .and_then(clean::text)
    });
    if kind == "alias"
        && let Some(previous) = string(&message, "previousId")
    {
        payload.insert("previousId".into(), Value::String(previous));
    }
    let local = DateTime::from_timestamp_micros(event_time)
        .map(|t| t.with_timezone(&clock.zone).date_naive())
        .ok_or_else(|| {
            Rejection::new(reason::BAD_TIMESTAMP, format!("{time_field}: out of range"))
        })?;
    let event_date =
        (local - chrono::NaiveDate::from_ymd_opt(1970, 1, 1).unwrap_or_default()).num_days() as i32;
    Ok(EventRow {
        event_id,
        event_name,
        event_type: kind,
        event_time,
        event_date,
        received_at: clock.received_at.timestamp_micros(),
        anonymous_id,
        login_id,
        source: source.to_string(),
        item_id: string(&payload, "item_id").or_else(|| string(&payload, "product_id")),
        category: string(&payload, "category"),
        campaign_id: string(&payload, "campaign_id"),
        order_id: string(&payload, "order_id"),
        page,
        price,
        quantity,
        revenue,
        channel,
        properties: (!payload.is_empty()).then(|| Value::Object(payload).to_string()),
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn clock() -> Clock {
        Clock {
            received_at: Utc
                .with_ymd_and_hms(2026, 11, 23, 0, 0, 0)
                .single()
                .expect("t"),
            zone: clean::zone_offset("Asia/Shanghai").expect("zone"),
        }
    }

    #[test]
    fn a_track_call_becomes_an_event() {
        let line = r#"{"type":"track","messageId":"m-1","anonymousId":"a-1","userId":"u-1","event":"view_item","timestamp":"2026-10-31T17:30:00Z","properties":{"item_id":"WP-600G","category":"净水器","price":2499.0,"quantity":1},"context":{"channel":"web"}}"#;
        let row = parse_line(line, "segment", clock()).expect("clean");
        assert_eq!(row.event_id, "m-1");
        assert_eq!(row.event_name, "view_item");
        assert_eq!(row.event_type, "track");
        assert_eq!(row.price, Some(249_900));
        assert_eq!(row.quantity, Some(1));
        assert_eq!(row.channel.as_deref(), Some("web"));
        assert_eq!(row.login_id.as_deref(), Some("u-1"));
        // 17:30 UTC on 31 Oct is 01:30 on 1 Nov in Shanghai: the date follows the catalog zone.
        let expected = chrono::NaiveDate::from_ymd_opt(2026, 11, 1).expect("d")
            - chrono::NaiveDate::from_ymd_opt(1970, 1, 1).expect("d");
        assert_eq!(i64::from(row.event_date), expected.num_days());
    }

    #[test]
    fn identify_phones_are_normalised_and_bad_ones_refused() {
        let line = r#"{"type":"identify","messageId":"m-2","anonymousId":"a-1","userId":"u-1","timestamp":"2026-10-01T00:00:00Z","traits":{"phone":"138-1234-5678","gender":"male"}}"#;
        let row = parse_line(line, "segment", clock()).expect("clean");
        assert_eq!(row.event_name, "identify");
        let traits: Value =
            serde_json::from_str(row.properties.as_deref().expect("traits")).expect("json");
        assert_eq!(traits["phone"], "+8613812345678");
        let bad = line.replace("138-1234-5678", "138abcd5678");
        let err = parse_line(&bad, "segment", clock()).expect_err("bad phone");
        assert_eq!(err.code, reason::BAD_PHONE);
        assert!(err.message.contains("traits.phone"));
    }

    #[test]
    fn bad_messages_are_rejected_with_a_reason_naming_the_field() {
        let cases = [
            (
                r#"{"type":"track","messageId":"m","anonymousId":"a","event":"x","timestamp":"2026-10-01T00:0"#,
                reason::INVALID_JSON,
                "JSON",
            ),
            (
                r#"{"type":"track","messageId":"m","anonymousId":"a","timestamp":"2026-10-01T00:00:00Z"}"#,
                reason::MISSING_REQUIRED,
                "event",
            ),
            (
                r#"{"type":"page","messageId":"m","timestamp":"2026-10-01T00:00:00Z"}"#,
                reason::MISSING_REQUIRED,
                "anonymousId",
            ),
            (
                r#"{"type":"track","messageId":"m","anonymousId":"a","event":"x","timestamp":"2026-13-01T08:00:00Z"}"#,
                reason::BAD_TIMESTAMP,
                "timestamp",
            ),
            (
                r#"{"type":"track","messageId":"m","anonymousId":"a","event":"purchase","timestamp":"2026-10-01T00:00:00Z","properties":{"revenue":-10}}"#,
                reason::NEGATIVE_AMOUNT,
                "revenue",
            ),
            (
                r#"{"type":"shout","messageId":"m","anonymousId":"a"}"#,
                reason::UNKNOWN_VALUE,
                "type",
            ),
            (
                r#"{"type":"alias","messageId":"m","userId":"u","timestamp":"2026-10-01T00:00:00Z"}"#,
                reason::MISSING_REQUIRED,
                "previousId",
            ),
            (r#"[1,2]"#, reason::INVALID_JSON, "object"),
        ];
        for (line, code, field) in cases {
            let err = parse_line(line, "segment", clock()).expect_err(line);
            assert_eq!(err.code, code, "{line}");
            assert!(
                err.message.contains(field),
                "'{}' should name {field}",
                err.message
            );
        }
        let huge = format!(
            r#"{{"type":"track","anonymousId":"a","event":"x","properties":{{"blob":"{}"}}}}"#,
            "x".repeat(MAX_MESSAGE_BYTES)
        );
        assert_eq!(
            parse_line(&huge, "segment", clock())
                .expect_err("huge")
                .code,
            reason::TOO_LARGE
        );
    }

    #[test]
    fn messages_without_an_id_get_a_stable_one() {
        let line =
            r#"{"type":"track","anonymousId":"a","event":"x","timestamp":"2026-10-01T00:00:00Z"}"#;
        let a = parse_line(line, "segment", clock()).expect("a");
        let b = parse_line(line, "segment", clock()).expect("b");
        assert_eq!(a.event_id, b.event_id);
        assert!(a.event_id.starts_with("sha256:"));
        let other = parse_line(&line.replace("\"x\"", "\"y\""), "segment", clock()).expect("c");
        assert_ne!(a.event_id, other.event_id);
    }
}
