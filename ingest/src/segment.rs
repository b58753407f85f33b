//! Segment messages (track, page, screen, identify, alias, group) → `events` rows.
//!
//! Follows Segment's tracking API spec: `messageId` is the dedup key (a message without one
//! gets a stable id derived from its content, so exact re-sends still dedup), `timestamp` falls
//! back to `sentAt`/`receivedAt`, every message needs `userId` or `anonymousId`, `track` needs
//! `event`, `alias` needs `previousId`. Phones in identify traits are identities and are stored
//! in E.164.

use chrono::{DateTime, FixedOffset, Utc};
use std::borrow::Cow;

use serde::de::{self, Deserialize, Deserializer, IgnoredAny, MapAccess, Visitor};
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

/// A top-level field of a message where Segment expects an id, a name or a time: text (borrowed
/// from the line when it has no escapes), a number, or anything else (ignored).
#[derive(Debug, Default)]
enum Scalar<'a> {
    Text(Cow<'a, str>),
    Number(serde_json::Number),
    #[default]
    Other,
}

impl Scalar<'_> {
    /// Text trimmed (empty is absent) or a number's text, as ids are read.
    fn id(&self) -> Option<String> {
        match self {
            Scalar::Text(s) => clean::text(s),
            Scalar::Number(n) => Some(n.to_string()),
            Scalar::Other => None,
        }
    }

    fn as_str(&self) -> Option<&str> {
        match self {
            Scalar::Text(s) => Some(s),
            _ => None,
        }
    }
}

struct ScalarVisitor;

impl<'de> Visitor<'de> for ScalarVisitor {
    type Value = Scalar<'de>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Scalar::Text(Cow::Borrowed(v)))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Scalar::Text(Cow::Owned(v.to_owned())))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(Scalar::Text(Cow::Owned(v)))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        Ok(Scalar::Number(v.into()))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Scalar::Number(v.into()))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Scalar::Other, Scalar::Number))
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Scalar::Other)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Scalar::Other)
    }
    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Scalar::Other)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Scalar::Other)
    }
}

impl<'de> Deserialize<'de> for Scalar<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ScalarVisitor)
    }
}

/// A value read from the entries of a JSON object.
trait FromEntries<'de>: Sized {
    fn from_entries<A: MapAccess<'de>>(map: A) -> Result<Self, A::Error>;
}

/// `Some` when the JSON value is an object; any other value is consumed and reads as `None`.
struct Object<T>(Option<T>);

impl<'de, T: FromEntries<'de>> Deserialize<'de> for Object<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: FromEntries<'de>> Visitor<'de> for V<T> {
            type Value = Object<T>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                T::from_entries(map).map(|t| Object(Some(t)))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
                ScalarVisitor.visit_seq(seq).map(|_| Object(None))
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
                Ok(Object(None))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
                Ok(Object(None))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
                Ok(Object(None))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
                Ok(Object(None))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
                Ok(Object(None))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Object(None))
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

/// `context.channel`; the rest of `context` is skipped unread.
struct Context<'a> {
    channel: Option<Scalar<'a>>,
}

impl<'de> FromEntries<'de> for Context<'de> {
    fn from_entries<A: MapAccess<'de>>(mut map: A) -> Result<Self, A::Error> {
        let mut channel = None;
        while let Some(key) = map.next_key::<Field>()? {
            if key == Field::Channel {
                channel = Some(map.next_value::<Scalar<'de>>()?);
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(Context { channel })
    }
}

/// The top-level keys a message is read by; any other key is skipped without being built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Type,
    AnonymousId,
    UserId,
    Event,
    PreviousId,
    MessageId,
    Name,
    Timestamp,
    SentAt,
    ReceivedAt,
    OriginalTimestamp,
    Properties,
    Traits,
    Context,
    Channel,
    Other,
}

impl<'de> Deserialize<'de> for Field {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Field;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a key")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Field, E> {
                Ok(match v {
                    "type" => Field::Type,
                    "anonymousId" => Field::AnonymousId,
                    "userId" => Field::UserId,
                    "event" => Field::Event,
                    "previousId" => Field::PreviousId,
                    "messageId" => Field::MessageId,
                    "name" => Field::Name,
                    "timestamp" => Field::Timestamp,
                    "sentAt" => Field::SentAt,
                    "receivedAt" => Field::ReceivedAt,
                    "originalTimestamp" => Field::OriginalTimestamp,
                    "properties" => Field::Properties,
                    "traits" => Field::Traits,
                    "context" => Field::Context,
                    "channel" => Field::Channel,
                    _ => Field::Other,
                })
            }
        }
        d.deserialize_identifier(V)
    }
}

/// The parts of a Segment message that cleaning reads. Repeated keys keep the last value, as a
/// JSON object would.
#[derive(Default)]
struct Envelope<'a> {
    kind: Option<Scalar<'a>>,
    anonymous_id: Option<Scalar<'a>>,
    user_id: Option<Scalar<'a>>,
    event: Option<Scalar<'a>>,
    previous_id: Option<Scalar<'a>>,
    message_id: Option<Scalar<'a>>,
    name: Option<Scalar<'a>>,
    /// `timestamp`, `sentAt`, `receivedAt`, `originalTimestamp`, in that order of preference.
    times: [Option<Scalar<'a>>; 4],
    properties: Option<Value>,
    traits: Option<Value>,
    channel: Option<Scalar<'a>>,
}

const TIME_FIELDS: [&str; 4] = ["timestamp", "sentAt", "receivedAt", "originalTimestamp"];

impl<'de> FromEntries<'de> for Envelope<'de> {
    fn from_entries<A: MapAccess<'de>>(mut map: A) -> Result<Self, A::Error> {
        let mut e = Envelope::default();
        while let Some(key) = map.next_key::<Field>()? {
            let slot = match key {
                Field::Type => &mut e.kind,
                Field::AnonymousId => &mut e.anonymous_id,
                Field::UserId => &mut e.user_id,
                Field::Event => &mut e.event,
                Field::PreviousId => &mut e.previous_id,
                Field::MessageId => &mut e.message_id,
                Field::Name => &mut e.name,
                Field::Timestamp => &mut e.times[0],
                Field::SentAt => &mut e.times[1],
                Field::ReceivedAt => &mut e.times[2],
                Field::OriginalTimestamp => &mut e.times[3],
                Field::Properties => {
                    e.properties = Some(map.next_value()?);
                    continue;
                }
                Field::Traits => {
                    e.traits = Some(map.next_value()?);
                    continue;
                }
                Field::Context => {
                    e.channel = map
                        .next_value::<Object<Context<'de>>>()?
                        .0
                        .and_then(|c| c.channel);
                    continue;
                }
                Field::Channel | Field::Other => {
                    map.next_value::<IgnoredAny>()?;
                    continue;
                }
            };
            *slot = Some(map.next_value()?);
        }
        Ok(e)
    }
}

fn id(slot: &Option<Scalar<'_>>) -> Option<String> {
    slot.as_ref().and_then(Scalar::id)
}

/// Parses one raw line. Only the fields cleaning reads are built; `context` and unknown keys
/// are checked for JSON syntax and skipped.
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
    let Object::<Envelope>(message) = serde_json::from_str(line)
        .map_err(|e| Rejection::new(reason::INVALID_JSON, format!("not JSON: {e}")))?;
    let Some(message) = message else {
        return Err(Rejection::new(
            reason::INVALID_JSON,
            "a message is a JSON object",
        ));
    };
    clean_message(message, line, source, clock)
}

/// Cleans one message; `raw` is its text (for the derived id).
fn clean_message(
    message: Envelope<'_>,
    raw: &str,
    source: &str,
    clock: Clock,
) -> Result<EventRow, Rejection> {
    let kind = match message.kind.as_ref().and_then(Scalar::as_str) {
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
    let anonymous_id = id(&message.anonymous_id);
    let login_id = id(&message.user_id);
    if anonymous_id.is_none() && login_id.is_none() {
        return Err(Rejection::new(
            reason::MISSING_REQUIRED,
            "userId or anonymousId: a message needs at least one",
        ));
    }
    let event_name = match kind {
        "track" => id(&message.event).ok_or_else(|| {
            Rejection::new(
                reason::MISSING_REQUIRED,
                "event: a track call needs an event name",
            )
        })?,
        other => other.to_string(),
    };
    let previous_id = id(&message.previous_id);
    if kind == "alias" && previous_id.is_none() {
        return Err(Rejection::new(
            reason::MISSING_REQUIRED,
            "previousId: an alias call needs it",
        ));
    }
    let received_text;
    let (time_field, time_text) = match TIME_FIELDS
        .iter()
        .zip(&message.times)
        .find_map(|(k, v)| v.as_ref().and_then(Scalar::as_str).map(|t| (*k, t)))
    {
        Some(found) => found,
        None => {
            received_text = clock.received_at.to_rfc3339();
            ("receivedAt", received_text.as_str())
        }
    };
    let event_time = clean::timestamp(time_field, time_text, clock.zone, clock.received_at)?;

    let event_id = match id(&message.message_id) {
        Some(id) => id,
        None => {
            let digest = Sha256::digest(raw.as_bytes());
            format!("sha256:{}", hex(&digest[..16]))
        }
    };

    // identify/group carry traits; the others properties.
    let (payload_key, payload) = if matches!(kind, "identify" | "group") {
        ("traits", message.traits)
    } else {
        ("properties", message.properties)
    };
    let mut payload = match payload {
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
        "page" | "screen" => string(&payload, "path").or_else(|| id(&message.name)),
        _ => string(&payload, "path"),
    };
    let channel = string(&payload, "channel").or_else(|| {
        message
            .channel
            .as_ref()
            .and_then(Scalar::as_str)
            .and_then(clean::text)
    });
    if kind == "alias"
        && let Some(previous) = previous_id
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
        properties: (!payload.is_empty()).then(|| compact(&payload, raw.len())),
    })
}

/// `payload` as compact JSON text (keys in order, as `Value`'s `Display` writes it), in one
/// buffer sized from the message it came from.
fn compact(payload: &Map<String, Value>, hint: usize) -> String {
    let mut text = Vec::with_capacity(hint);
    // Writing JSON into memory neither fails nor writes anything but UTF-8; the fallback is
    // the same text by the slower path.
    if serde_json::to_writer(&mut text, payload).is_ok()
        && let Ok(text) = String::from_utf8(text)
    {
        return text;
    }
    Value::Object(payload.clone()).to_string()
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

    #[test]
    fn repeated_keys_numbers_escapes_and_odd_shapes_read_as_json_objects_do() {
        let line = r#"{"type":"track","event":"a","event":" caf\u00e9 ","userId":42,"messageId":1.5,
            "integrations":{"All":true,"x":[1,{"a":null}]},"timestamp":5,
            "sentAt":"2026-10-01T00:00:00Z","context":{"channel":"web","channel":" app "},
            "traits":"not looked at for a track call","properties":{"price":"1.50"}}"#;
        let row = parse_line(line, "segment", clock()).expect("clean");
        assert_eq!(
            row.event_name, "café",
            "the last repeated key wins, escapes decoded"
        );
        assert_eq!(row.login_id.as_deref(), Some("42"));
        assert_eq!(row.event_id, "1.5");
        assert_eq!(row.channel.as_deref(), Some("app"));
        assert_eq!(row.price, Some(150));
        assert_eq!(row.properties.as_deref(), Some(r#"{"price":"1.50"}"#));
        assert_eq!(
            row.event_time,
            Utc.with_ymd_and_hms(2026, 10, 1, 0, 0, 0)
                .single()
                .expect("t")
                .timestamp_micros(),
            "a timestamp that is not text is passed over for sentAt"
        );
        let page = r#"{"type":"page","anonymousId":"a","name":"首页","context":"web","timestamp":"2026-10-01T00:00:00Z"}"#;
        let row = parse_line(page, "segment", clock()).expect("page");
        assert_eq!(row.page.as_deref(), Some("首页"));
        assert_eq!(row.channel, None);
        for (not_object, expected) in [
            ("[1,2]", "a message is a JSON object"),
            ("\"x\"", "a message is a JSON object"),
            ("null", "a message is a JSON object"),
            ("{\"type\":", "not JSON"),
            ("{\"type\":\"track\"} x", "not JSON"),
        ] {
            let err = parse_line(not_object, "segment", clock()).expect_err(not_object);
            assert_eq!(err.code, reason::INVALID_JSON, "{not_object}");
            assert!(
                err.message.contains(expected),
                "{not_object}: {}",
                err.message
            );
        }
    }

    mod envelope {
        use super::super::*;
        use proptest::prelude::*;

        const KEYS: &[&str] = &[
            "type",
            "anonymousId",
            "userId",
            "event",
            "previousId",
            "messageId",
            "name",
            "timestamp",
            "sentAt",
            "receivedAt",
            "originalTimestamp",
            "properties",
            "traits",
            "context",
            "channel",
            "integrations",
        ];

        fn value() -> impl Strategy<Value = Value> {
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::Bool),
                any::<i64>().prop_map(Value::from),
                (-1e9f64..1e9).prop_map(Value::from),
                "[ a-z\u{4e00}-\u{4e09}\"\\\\\n]{0,8}".prop_map(Value::String),
            ];
            leaf.prop_recursive(2, 8, 3, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
                    prop::collection::vec(
                        (prop::sample::select(vec!["channel", "k", "phone"]), inner),
                        0..3
                    )
                    .prop_map(|kv| {
                        Value::Object(kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
                    }),
                ]
            })
        }

        proptest! {
            /// Whatever the keys, their order, repeats and value shapes, the envelope reads what
            /// a whole `serde_json::Value` of the same text holds.
            #[test]
            fn the_envelope_reads_what_a_json_value_holds(
                pairs in prop::collection::vec((prop::sample::select(KEYS.to_vec()), value()), 0..12)
            ) {
                let text = format!(
                    "{{{}}}",
                    pairs
                        .iter()
                        .map(|(k, v)| format!("{}:{}", Value::from(*k), v))
                        .collect::<Vec<_>>()
                        .join(",")
                );
                let whole: Map<String, Value> = serde_json::from_str(&text).expect("object");
                let Object(Some(e)) = serde_json::from_str::<Object<Envelope>>(&text).expect("envelope") else {
                    panic!("an object reads as an envelope");
                };
                let slots = [
                    ("anonymousId", &e.anonymous_id),
                    ("userId", &e.user_id),
                    ("event", &e.event),
                    ("previousId", &e.previous_id),
                    ("messageId", &e.message_id),
                    ("name", &e.name),
                ];
                for (key, slot) in slots {
                    prop_assert_eq!(id(slot), string(&whole, key), "{}", key);
                }
                let as_str = |slot: &Option<Scalar>| slot.as_ref().and_then(Scalar::as_str).map(str::to_string);
                prop_assert_eq!(as_str(&e.kind), whole.get("type").and_then(Value::as_str).map(str::to_string));
                for (key, slot) in TIME_FIELDS.iter().zip(&e.times) {
                    prop_assert_eq!(as_str(slot), whole.get(*key).and_then(Value::as_str).map(str::to_string));
                }
                prop_assert_eq!(
                    as_str(&e.channel),
                    whole.get("context").and_then(|c| c.get("channel")).and_then(Value::as_str).map(str::to_string)
                );
                prop_assert_eq!(e.properties.as_ref(), whole.get("properties"));
                prop_assert_eq!(e.traits.as_ref(), whole.get("traits"));
            }
        }
    }
}
