//! Segment messages (track, page, screen, identify, alias, group) → `events` rows.
//!
//! Follows Segment's tracking API spec: `messageId` is the dedup key (a message without one
//! gets a stable id derived from its content, so exact re-sends still dedup), `timestamp` falls
//! back to `sentAt`/`receivedAt`, every message needs `userId` or `anonymousId`, `track` needs
//! `event`, `alias` needs `previousId`. Phones in identify traits are identities and are stored
//! in E.164.

use chrono::{DateTime, FixedOffset, Utc};
use std::borrow::Cow;

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::clean::{self, Phone, Rejection, reason, trimmed};
use crate::scan::{self, Raw, Reader};

/// Segment's limit for one message.
pub const MAX_MESSAGE_BYTES: usize = 32 * 1024;

/// One cleaned event. Text borrows from the message's line wherever it can.
#[derive(Debug, Clone, PartialEq)]
pub struct EventRow<'a> {
    pub event_id: Cow<'a, str>,
    pub event_name: Cow<'a, str>,
    pub event_type: &'static str,
    pub event_time: i64,
    pub event_date: i32,
    pub received_at: i64,
    pub anonymous_id: Option<Cow<'a, str>>,
    pub login_id: Option<Cow<'a, str>>,
    pub page: Option<Cow<'a, str>>,
    pub item_id: Option<Cow<'a, str>>,
    pub category: Option<Cow<'a, str>>,
    pub price: Option<i64>,
    pub quantity: Option<i64>,
    pub revenue: Option<i64>,
    pub channel: Option<Cow<'a, str>>,
    pub campaign_id: Option<Cow<'a, str>>,
    pub order_id: Option<Cow<'a, str>>,
    /// The message's properties (traits for identify and group) as compact JSON.
    pub properties: Option<Cow<'a, str>>,
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

/// A field where Segment expects an id, a name, a time or an amount: text (borrowed from the
/// line when it has no escapes), a number, null, or anything else.
#[derive(Debug, Default)]
enum Scalar<'a> {
    Text(Cow<'a, str>),
    Number(serde_json::Number),
    Null,
    #[default]
    Other,
}

impl<'a> Scalar<'a> {
    /// Text trimmed (empty is absent) or a number's text, as ids are read.
    fn id(&self) -> Option<Cow<'a, str>> {
        match self {
            Scalar::Text(Cow::Borrowed(s)) => trimmed(s).map(Cow::Borrowed),
            Scalar::Text(Cow::Owned(s)) => trimmed(s).map(|s| Cow::Owned(s.to_string())),
            Scalar::Number(n) => Some(Cow::Owned(n.to_string())),
            Scalar::Null | Scalar::Other => None,
        }
    }

    fn as_str(&self) -> Option<&str> {
        match self {
            Scalar::Text(s) => Some(s),
            _ => None,
        }
    }
}

/// Reads the next value as a scalar; arrays, objects and booleans read as `Other`.
fn scalar<'a>(r: &mut Reader<'a>) -> scan::Result<Scalar<'a>> {
    Ok(match r.peek() {
        Some(b'"') => Scalar::Text(r.string()?),
        Some(b'-' | b'0'..=b'9') => {
            let text = r.number()?;
            // The grammar is checked; what fails here is a magnitude no f64 holds.
            Scalar::Number(text.parse().map_err(|_| r.invalid("number out of range"))?)
        }
        Some(b'n') => {
            r.skip()?;
            Scalar::Null
        }
        _ => {
            r.skip()?;
            Scalar::Other
        }
    })
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
    properties: Option<Raw<'a>>,
    traits: Option<Raw<'a>>,
    /// `context.channel`.
    channel: Option<Scalar<'a>>,
}

const TIME_FIELDS: [&str; 4] = ["timestamp", "sentAt", "receivedAt", "originalTimestamp"];

/// Reads a message in one pass: the fields cleaning reads are kept, everything else is
/// checked for JSON syntax and skipped. `None` when the text is JSON but not an object.
fn read_envelope(line: &str) -> scan::Result<Option<Envelope<'_>>> {
    let mut r = Reader::new(line);
    if r.peek() != Some(b'{') {
        r.skip()?;
        r.end()?;
        return Ok(None);
    }
    let mut e = Envelope::default();
    r.object(|r, key| {
        let slot = match key.as_ref() {
            "type" => &mut e.kind,
            "anonymousId" => &mut e.anonymous_id,
            "userId" => &mut e.user_id,
            "event" => &mut e.event,
            "previousId" => &mut e.previous_id,
            "messageId" => &mut e.message_id,
            "name" => &mut e.name,
            "timestamp" => &mut e.times[0],
            "sentAt" => &mut e.times[1],
            "receivedAt" => &mut e.times[2],
            "originalTimestamp" => &mut e.times[3],
            "properties" => {
                e.properties = Some(r.raw()?);
                return Ok(());
            }
            "traits" => {
                e.traits = Some(r.raw()?);
                return Ok(());
            }
            "context" => {
                e.channel = context_channel(r)?;
                return Ok(());
            }
            _ => return r.skip(),
        };
        *slot = Some(scalar(r)?);
        Ok(())
    })?;
    r.end()?;
    Ok(Some(e))
}

/// `context.channel` (its last value) when `context` is an object; the rest is skipped.
fn context_channel<'a>(r: &mut Reader<'a>) -> scan::Result<Option<Scalar<'a>>> {
    if r.peek() != Some(b'{') {
        r.skip()?;
        return Ok(None);
    }
    let mut channel = None;
    r.object(|r, key| {
        if key == "channel" {
            channel = Some(scalar(r)?);
            Ok(())
        } else {
            r.skip()
        }
    })?;
    Ok(channel)
}

fn id<'a>(slot: &Option<Scalar<'a>>) -> Option<Cow<'a, str>> {
    slot.as_ref().and_then(Scalar::id)
}

/// Parses one raw line. Only the fields cleaning reads are built; `context` and unknown keys
/// are checked for JSON syntax and skipped.
pub fn parse_line<'a>(line: &'a str, clock: Clock) -> Result<EventRow<'a>, Rejection> {
    if line.len() > MAX_MESSAGE_BYTES {
        return Err(Rejection::new(
            reason::TOO_LARGE,
            format!(
                "message is {} bytes; the limit is {MAX_MESSAGE_BYTES}",
                line.len()
            ),
        ));
    }
    let message = read_envelope(line)
        .map_err(|e| Rejection::new(reason::INVALID_JSON, format!("not JSON: {e}")))?;
    let Some(message) = message else {
        return Err(Rejection::new(
            reason::INVALID_JSON,
            "a message is a JSON object",
        ));
    };
    clean_message(message, line, clock)
}

/// Cleans one message; `raw` is its text (for the derived id).
fn clean_message<'a>(
    message: Envelope<'a>,
    raw: &str,
    clock: Clock,
) -> Result<EventRow<'a>, Rejection> {
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
        other => Cow::Borrowed(other),
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
            Cow::Owned(format!("sha256:{}", hex(&digest[..16])))
        }
    };

    // identify/group carry traits; the others properties.
    let (payload_key, payload) = if matches!(kind, "identify" | "group") {
        ("traits", message.traits)
    } else {
        ("properties", message.properties)
    };
    let mut payload = Payload::read(payload_key, payload)?;
    if let Some(Scalar::Text(raw_phone)) = payload.scalar("phone") {
        let field = if payload_key == "traits" {
            "traits.phone"
        } else {
            "properties.phone"
        };
        match clean::phone(field, &raw_phone)? {
            Phone::Valid(e164) => payload.set("phone", e164),
            Phone::Masked | Phone::Missing => payload.remove("phone"),
        }
    }
    // `field` names the amount `key` in a rejection.
    let fen = |key: &str, field: &str| -> Result<Option<i64>, Rejection> {
        match payload.scalar(key) {
            None | Some(Scalar::Null) => Ok(None),
            Some(Scalar::Number(n)) => {
                clean::number_fen(field, n.as_f64().unwrap_or(f64::NAN)).map(Some)
            }
            Some(Scalar::Text(s)) => clean::amount_fen(field, &s).map(Some),
            Some(Scalar::Other) => Err(Rejection::new(
                reason::BAD_AMOUNT,
                format!("{field}: not a number"),
            )),
        }
    };
    let price = fen("price", "properties.price")?;
    let revenue = fen("revenue", "properties.revenue")?.or(fen("total", "properties.total")?);
    let quantity = match payload.scalar("quantity") {
        None | Some(Scalar::Null) => None,
        Some(Scalar::Number(n)) => match n.as_i64() {
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
                    format!("properties.quantity: {n} is not 0..10000"),
                ));
            }
        },
        Some(_) => {
            return Err(Rejection::new(
                reason::OUT_OF_RANGE,
                format!(
                    "properties.quantity: {} is not 0..10000",
                    payload.text("quantity").unwrap_or_default()
                ),
            ));
        }
    };
    let string = |key: &str| payload.scalar(key).as_ref().and_then(Scalar::id);
    let page = match kind {
        "page" | "screen" => string("path").or_else(|| id(&message.name)),
        _ => string("path"),
    };
    let channel = string("channel").or_else(|| {
        message
            .channel
            .as_ref()
            .and_then(|c| c.id().filter(|_| c.as_str().is_some()))
    });
    let item_id = string("item_id").or_else(|| string("product_id"));
    let category = string("category");
    let campaign_id = string("campaign_id");
    let order_id = string("order_id");
    if kind == "alias"
        && let Some(previous) = previous_id
    {
        payload.set("previousId", previous.into_owned());
    }
    let event_date = i32::try_from(clean::local_day(event_time, clock.zone)).map_err(|_| {
        Rejection::new(reason::BAD_TIMESTAMP, format!("{time_field}: out of range"))
    })?;
    Ok(EventRow {
        event_id,
        event_name,
        event_type: kind,
        event_time,
        event_date,
        received_at: clock.received_at.timestamp_micros(),
        anonymous_id,
        login_id,
        item_id,
        category,
        campaign_id,
        order_id,
        page,
        price,
        quantity,
        revenue,
        channel,
        properties: payload.compact(),
    })
}

/// A value of a payload entry: as the message wrote it, or as cleaning rewrote it.
#[derive(Debug)]
enum Entry<'a> {
    Raw(Raw<'a>),
    Text(String),
}

/// A message's `properties` or `traits` object, read without building it: its entries in
/// order, each value as raw JSON text. A repeated key keeps its first place and its last
/// value, as reading the object into a map does.
#[derive(Debug, Default)]
struct Payload<'a> {
    /// The object's text; `None` for a missing or null payload.
    raw: Option<Raw<'a>>,
    entries: Vec<(Cow<'a, str>, Entry<'a>)>,
    /// The entries no longer say what `raw` says (a repeated key dropped, a value rewritten).
    changed: bool,
}

impl<'a> Payload<'a> {
    /// Reads the payload named `key` (`properties` or `traits`): an object, null or absent.
    fn read(key: &str, raw: Option<Raw<'a>>) -> Result<Self, Rejection> {
        let Some(raw) = raw.filter(|r| r.text != "null") else {
            return Ok(Payload::default());
        };
        let not_object =
            || Rejection::new(reason::UNKNOWN_VALUE, format!("{key}: must be an object"));
        let mut r = Reader::new(raw.text);
        if r.peek() != Some(b'{') {
            return Err(not_object());
        }
        let mut entries: Vec<(Cow<'a, str>, Entry<'a>)> = Vec::with_capacity(8);
        r.object(|r, key| {
            entries.push((key, Entry::Raw(r.raw()?)));
            Ok(())
        })
        .map_err(|_| not_object())?;
        let mut changed = false;
        if has_repeats(&entries) {
            changed = true;
            let mut kept: Vec<(Cow<'a, str>, Entry<'a>)> = Vec::with_capacity(entries.len());
            let mut place: std::collections::HashMap<Cow<'a, str>, usize> =
                std::collections::HashMap::with_capacity(entries.len());
            for (key, value) in entries {
                match place.get(&key) {
                    Some(&i) => kept[i].1 = value,
                    None => {
                        place.insert(key.clone(), kept.len());
                        kept.push((key, value));
                    }
                }
            }
            entries = kept;
        }
        Ok(Payload {
            raw: Some(raw),
            entries,
            changed,
        })
    }

    fn entry(&self, key: &str) -> Option<&Entry<'a>> {
        self.entries
            .iter()
            .find(|(k, _)| same_key(k, key))
            .map(|(_, v)| v)
    }

    /// The value of `key` as a scalar (text borrowed from the line where it can be).
    fn scalar(&self, key: &str) -> Option<Scalar<'a>> {
        match self.entry(key)? {
            // The value was checked when the payload was read.
            Entry::Raw(raw) => Some(scalar(&mut Reader::new(raw.text)).unwrap_or(Scalar::Other)),
            Entry::Text(text) => Some(Scalar::Text(Cow::Owned(text.clone()))),
        }
    }

    /// The JSON text of `key`'s value.
    fn text(&self, key: &str) -> Option<String> {
        match self.entry(key)? {
            Entry::Raw(raw) => Some(compact(*raw).into_owned()),
            Entry::Text(text) => Some(Value::from(text.as_str()).to_string()),
        }
    }

    /// Sets `key` to the string `value`, in its place or at the end.
    fn set(&mut self, key: &'static str, value: String) {
        self.changed = true;
        match self.entries.iter_mut().find(|(k, _)| same_key(k, key)) {
            Some(slot) => slot.1 = Entry::Text(value),
            None => self.entries.push((Cow::Borrowed(key), Entry::Text(value))),
        }
    }

    fn remove(&mut self, key: &str) {
        self.changed = true;
        self.entries.retain(|(k, _)| !same_key(k, key));
    }

    /// The payload as compact JSON, keys in the message's order; `None` when it has no
    /// entries. The message's own text when nothing changed and it has no spaces to drop.
    fn compact(&self) -> Option<Cow<'a, str>> {
        if self.entries.is_empty() {
            return None;
        }
        if !self.changed {
            return self.raw.map(compact);
        }
        let mut text = String::with_capacity(self.raw.map_or(64, |r| r.text.len()));
        text.push('{');
        for (i, (key, value)) in self.entries.iter().enumerate() {
            if i > 0 {
                text.push(',');
            }
            push_json_string(&mut text, key);
            text.push(':');
            match value {
                Entry::Raw(raw) => text.push_str(&compact(*raw)),
                Entry::Text(value) => push_json_string(&mut text, value),
            }
        }
        text.push('}');
        Some(Cow::Owned(text))
    }
}

/// Whether two keys are the same. Keys are short and most pairs differ in length or first
/// byte, which is checked before the bytes are compared: a message's dozen lookups
/// otherwise made a `memcmp` call for every key of the same length.
#[inline]
fn same_key(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && a.first() == b.first() && a == b
}

/// Whether some key appears twice.
fn has_repeats<T>(entries: &[(Cow<'_, str>, T)]) -> bool {
    if entries.len() <= 16 {
        return entries
            .iter()
            .enumerate()
            .any(|(i, (k, _))| entries[..i].iter().any(|(other, _)| same_key(other, k)));
    }
    let mut keys: Vec<&str> = entries.iter().map(|(k, _)| k.as_ref()).collect();
    keys.sort_unstable();
    keys.windows(2).any(|w| w[0] == w[1])
}

fn push_json_string(text: &mut String, value: &str) {
    // A string always serialises.
    text.push_str(&serde_json::to_string(value).unwrap_or_else(|_| "\"\"".into()));
}

/// A value's text without whitespace between tokens; borrowed when it has none.
fn compact(raw: Raw<'_>) -> Cow<'_, str> {
    if raw.spaced {
        compact_json(raw.text)
    } else {
        Cow::Borrowed(raw.text)
    }
}

/// Valid JSON text without the whitespace between tokens; borrowed when it has none.
fn compact_json(text: &str) -> Cow<'_, str> {
    let bytes = text.as_bytes();
    if memchr::memchr3(b' ', b'\n', b'\t', bytes).is_none()
        && memchr::memchr(b'\r', bytes).is_none()
    {
        return Cow::Borrowed(text);
    }
    let mut in_string = false;
    let mut escaped = false;
    let mut out: Option<Vec<u8>> = None;
    for (i, &b) in bytes.iter().enumerate() {
        let keep = if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            true
        } else if b == b'"' {
            in_string = true;
            true
        } else {
            !matches!(b, b' ' | b'\t' | b'\n' | b'\r')
        };
        match (&mut out, keep) {
            (Some(out), true) => out.push(b),
            (Some(_), false) => {}
            (None, true) => {}
            (None, false) => {
                let mut started = Vec::with_capacity(bytes.len());
                started.extend_from_slice(&bytes[..i]);
                out = Some(started);
            }
        }
    }
    match out {
        // Only ASCII whitespace outside strings was dropped, so the text is still UTF-8.
        Some(out) => Cow::Owned(
            String::from_utf8(out)
                .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()),
        ),
        None => Cow::Borrowed(text),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use serde_json::Map;

    /// What an id field of `object` reads as, by way of a whole `serde_json::Value`.
    fn string(object: &Map<String, Value>, key: &str) -> Option<String> {
        match object.get(key) {
            Some(Value::String(s)) => clean::text(s),
            Some(Value::Number(n)) => Some(n.to_string()),
            _ => None,
        }
    }

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
        let row = parse_line(line, clock()).expect("clean");
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
        let row = parse_line(line, clock()).expect("clean");
        assert_eq!(row.event_name, "identify");
        let traits: Value =
            serde_json::from_str(row.properties.as_deref().expect("traits")).expect("json");
        assert_eq!(traits["phone"], "+8613812345678");
        let bad = line.replace("138-1234-5678", "138abcd5678");
        let err = parse_line(&bad, clock()).expect_err("bad phone");
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
                r#"{"type":"track","messageId":"m","anonymousId":"a","event":"buy","timestamp":"2026-10-01T00:00:00Z","properties":{"quantity":-1}}"#,
                reason::NEGATIVE_AMOUNT,
                "quantity",
            ),
            (
                r#"{"type":"track","messageId":"m","anonymousId":"a","event":"buy","timestamp":"2026-10-01T00:00:00Z","properties":{"quantity":"two"}}"#,
                reason::OUT_OF_RANGE,
                "\"two\"",
            ),
            (
                r#"{"type":"track","messageId":"m","anonymousId":"a","event":"buy","timestamp":"2026-10-01T00:00:00Z","properties":{"price":true}}"#,
                reason::BAD_AMOUNT,
                "price",
            ),
            (
                r#"{"type":"identify","messageId":"m","anonymousId":"a","timestamp":"2026-10-01T00:00:00Z","traits":[1]}"#,
                reason::UNKNOWN_VALUE,
                "traits",
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
            let err = parse_line(line, clock()).expect_err(line);
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
            parse_line(&huge, clock()).expect_err("huge").code,
            reason::TOO_LARGE
        );
    }

    #[test]
    fn messages_without_an_id_get_a_stable_one() {
        let line =
            r#"{"type":"track","anonymousId":"a","event":"x","timestamp":"2026-10-01T00:00:00Z"}"#;
        let a = parse_line(line, clock()).expect("a");
        let b = parse_line(line, clock()).expect("b");
        assert_eq!(a.event_id, b.event_id);
        assert!(a.event_id.starts_with("sha256:"));
        let changed = line.replace("\"x\"", "\"y\"");
        let other = parse_line(&changed, clock()).expect("c");
        assert_ne!(a.event_id, other.event_id);
    }

    #[test]
    fn repeated_keys_numbers_escapes_and_odd_shapes_read_as_json_objects_do() {
        let line = r#"{"type":"track","event":"a","event":" caf\u00e9 ","userId":42,"messageId":1.5,
            "integrations":{"All":true,"x":[1,{"a":null}]},"timestamp":5,
            "sentAt":"2026-10-01T00:00:00Z","context":{"channel":"web","channel":" app "},
            "traits":"not looked at for a track call","properties":{"price":"1.50"}}"#;
        let row = parse_line(line, clock()).expect("clean");
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
        let row = parse_line(page, clock()).expect("page");
        assert_eq!(row.page.as_deref(), Some("首页"));
        assert_eq!(row.channel, None);
        for (not_object, expected) in [
            ("[1,2]", "a message is a JSON object"),
            ("\"x\"", "a message is a JSON object"),
            ("null", "a message is a JSON object"),
            ("{\"type\":", "not JSON"),
            ("{\"type\":\"track\"} x", "not JSON"),
        ] {
            let err = parse_line(not_object, clock()).expect_err(not_object);
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
        use super::string;
        use proptest::prelude::*;
        use serde_json::Map;

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

        /// Payload keys: ones cleaning reads, others, and one that needs an escape.
        const PAYLOAD_KEYS: &[&str] = &["channel", "path", "item_id", "k", "q\"", "x y"];

        proptest! {
            /// A payload, however it is spaced and whatever it repeats, reads as a whole
            /// `serde_json::Value` of it does, and is written back as compact JSON of the same
            /// object.
            #[test]
            fn a_payload_reads_and_writes_what_a_json_value_holds(
                pairs in prop::collection::vec((prop::sample::select(PAYLOAD_KEYS.to_vec()), value()), 0..20),
                spaced in any::<bool>(),
            ) {
                let (comma, colon) = if spaced { (" ,\n ", " : ") } else { (",", ":") };
                let text = format!(
                    "{{{}}}",
                    pairs
                        .iter()
                        .map(|(k, v)| {
                            let v = if spaced { serde_json::to_string_pretty(v).expect("json") } else { v.to_string() };
                            format!("{}{colon}{v}", Value::from(*k))
                        })
                        .collect::<Vec<_>>()
                        .join(comma)
                );
                let whole: Map<String, Value> = serde_json::from_str(&text).expect("object");
                let raw = Reader::new(&text).raw().expect("raw");
                let payload = Payload::read("properties", Some(raw)).expect("an object");
                for key in PAYLOAD_KEYS {
                    let read = payload.scalar(key).as_ref().and_then(Scalar::id).map(Cow::into_owned);
                    prop_assert_eq!(read, string(&whole, key), "{}", key);
                }
                match payload.compact() {
                    None => prop_assert!(whole.is_empty()),
                    Some(compact) => {
                        let back: Map<String, Value> = serde_json::from_str(&compact).expect("compact JSON");
                        prop_assert_eq!(&back, &whole);
                        prop_assert!(matches!(compact_json(&compact), Cow::Borrowed(_)), "{}", compact);
                    }
                }
            }
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
                let Some(e) = read_envelope(&text).expect("envelope") else {
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
                    prop_assert_eq!(id(slot).map(Cow::into_owned), string(&whole, key), "{}", key);
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
                let parsed = |raw: Option<Raw>| raw.map(|r| serde_json::from_str::<Value>(r.text).expect("raw JSON"));
                let (properties, traits) = (parsed(e.properties), parsed(e.traits));
                prop_assert_eq!(properties.as_ref(), whole.get("properties"));
                prop_assert_eq!(traits.as_ref(), whole.get("traits"));
            }
        }
    }
}
