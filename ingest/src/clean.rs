//! Normalisers shared by every source: phones, times, amounts, text.
//!
//! Each returns a cleaned value or a [`Rejection`] whose code becomes the quarantine reason.

use chrono::{DateTime, FixedOffset, NaiveDate, NaiveDateTime, TimeZone, Utc};

/// Why a value could not be cleaned: a stable code and a message naming the field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// Stable reason code (`bad_timestamp`, `bad_phone`, ...), the quarantine `reason`.
    pub code: &'static str,
    /// Human message naming the field and the value.
    pub message: String,
}

impl Rejection {
    /// A rejection with `code` and `message`.
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        Rejection {
            code,
            message: message.into(),
        }
    }
}

/// Reason codes used across sources.
pub mod reason {
    /// The line is not valid JSON.
    pub const INVALID_JSON: &str = "invalid_json";
    /// A CSV record has the wrong number of fields or cannot be decoded.
    pub const BROKEN_RECORD: &str = "broken_record";
    /// A required field is missing or empty.
    pub const MISSING_REQUIRED: &str = "missing_required";
    /// A time that cannot be read or lies outside the plausible window.
    pub const BAD_TIMESTAMP: &str = "bad_timestamp";
    /// A phone that is not a phone.
    pub const BAD_PHONE: &str = "bad_phone";
    /// A negative amount, price or quantity.
    pub const NEGATIVE_AMOUNT: &str = "negative_amount";
    /// An amount that is not a decimal number of yuan with at most two decimals.
    pub const BAD_AMOUNT: &str = "bad_amount";
    /// A value outside its field's range or enum values.
    pub const OUT_OF_RANGE: &str = "out_of_range";
    /// A message type or status the source does not define.
    pub const UNKNOWN_VALUE: &str = "unknown_value";
    /// A message larger than the source allows.
    pub const TOO_LARGE: &str = "too_large";
}

/// Outcome of cleaning a phone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phone {
    /// E.164, e.g. `+8613812345678`.
    Valid(String),
    /// Masked by the platform (`138****5678`): present but unusable as an identity.
    Masked,
    /// Empty.
    Missing,
}

/// Normalises a phone as people and platforms write it to E.164, with +86 as the default
/// country: `13812345678`, `+86 138 1234 5678`, `138-1234-5678`, `0086…`, `'13812345678`.
pub fn phone(field: &str, raw: &str) -> Result<Phone, Rejection> {
    let text = raw.trim().trim_start_matches('\'').trim();
    if text.is_empty() {
        return Ok(Phone::Missing);
    }
    if text.contains('*') {
        return Ok(Phone::Masked);
    }
    let bad = || {
        Rejection::new(
            reason::BAD_PHONE,
            format!("{field}: '{raw}' is not a phone number"),
        )
    };
    // At most 17 digits can make a phone (`00` and 15); more are refused without counting on.
    let plus = text.starts_with('+');
    let mut digits = [0u8; 17];
    let mut n = 0;
    for b in text.bytes().skip(usize::from(plus)) {
        match b {
            b'0'..=b'9' if n < digits.len() => {
                digits[n] = b;
                n += 1;
            }
            b' ' | b'-' | b'(' | b')' | b'.' => {}
            _ => return Err(bad()),
        }
    }
    let digits = &digits[..n];
    let international: &[u8] = if plus {
        digits
    } else if let Some(rest) = digits.strip_prefix(b"00") {
        rest
    } else if digits.len() == 13 && digits.starts_with(b"86") {
        digits
    } else if digits.len() == 11 {
        // National mobile: the country code goes in front.
        let mobile = digits[0] == b'1' && digits[1] >= b'3';
        if !mobile {
            return Err(bad());
        }
        let mut e164 = String::with_capacity(14);
        e164.push_str("+86");
        e164.extend(digits.iter().map(|&d| char::from(d)));
        return Ok(Phone::Valid(e164));
    } else {
        return Err(bad());
    };
    if let Some(national) = international.strip_prefix(b"86") {
        let mobile = national.len() == 11 && national[0] == b'1' && national[1] >= b'3';
        if !mobile {
            return Err(bad());
        }
    } else if !(8..=15).contains(&international.len()) {
        return Err(bad());
    }
    let mut e164 = String::with_capacity(international.len() + 1);
    e164.push('+');
    e164.extend(international.iter().map(|&d| char::from(d)));
    Ok(Phone::Valid(e164))
}

pub use shoal_catalog::zone_offset;

/// Times older than this are not real events of a shop.
const EARLIEST: i64 = 946_684_800_000_000; // 2000-01-01T00:00:00Z

/// Parses a time in the forms sources send — RFC 3339 (`Z` or an offset, any fraction),
/// `YYYY-MM-DD HH:MM[:SS[.fff]]`, `YYYY/MM/DD HH:MM[:SS]`, `YYYY-MM-DD`, epoch seconds or
/// milliseconds — into UTC microseconds. Times without a zone are in `zone`. Times before 2000
/// or more than a day after `now` are refused.
pub fn timestamp(
    field: &str,
    raw: &str,
    zone: FixedOffset,
    now: DateTime<Utc>,
) -> Result<i64, Rejection> {
    let text = raw.trim();
    let bad = |why: &str| Rejection::new(reason::BAD_TIMESTAMP, format!("{field}: '{raw}' {why}"));
    if text.is_empty() {
        return Err(bad("is empty"));
    }
    let parsed: Option<DateTime<Utc>> = if text.bytes().all(|b| b.is_ascii_digit()) {
        text.parse::<i64>().ok().and_then(|n| match text.len() {
            13 => Utc.timestamp_millis_opt(n).single(),
            10 => Utc.timestamp_opt(n, 0).single(),
            _ => None,
        })
    } else if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        Some(t.with_timezone(&Utc))
    } else {
        const LOCAL: &[&str] = &[
            "%Y-%m-%d %H:%M:%S%.f",
            "%Y-%m-%d %H:%M",
            "%Y/%m/%d %H:%M:%S%.f",
            "%Y/%m/%d %H:%M",
            "%Y-%m-%dT%H:%M:%S%.f",
        ];
        LOCAL
            .iter()
            .find_map(|f| NaiveDateTime::parse_from_str(text, f).ok())
            .or_else(|| {
                ["%Y-%m-%d", "%Y/%m/%d"]
                    .iter()
                    .find_map(|f| NaiveDate::parse_from_str(text, f).ok())
                    .and_then(|d| d.and_hms_opt(0, 0, 0))
            })
            .and_then(|local| zone.from_local_datetime(&local).single())
            .map(|t| t.with_timezone(&Utc))
    };
    let Some(time) = parsed else {
        return Err(bad("is not a time"));
    };
    let micros = time.timestamp_micros();
    if micros < EARLIEST {
        return Err(bad("is before 2000"));
    }
    if time > now + chrono::Duration::days(1) {
        return Err(bad("is in the future"));
    }
    Ok(micros)
}

/// Parses an amount of yuan (`199`, `199.5`, `1,299.00`, `¥199.00`) into fen (hundredths).
/// Negative amounts are refused with `negative_amount`.
pub fn amount_fen(field: &str, raw: &str) -> Result<i64, Rejection> {
    let text = raw.trim().trim_start_matches(['¥', '￥']).replace(',', "");
    let bad = || {
        Rejection::new(
            reason::BAD_AMOUNT,
            format!("{field}: '{raw}' is not an amount in yuan with at most two decimals"),
        )
    };
    if text.is_empty() {
        return Err(bad());
    }
    let (negative, text) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.as_str()),
    };
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    if whole.is_empty() && fraction.is_empty()
        || !whole.bytes().all(|b| b.is_ascii_digit())
        || !fraction.bytes().all(|b| b.is_ascii_digit())
        || fraction.len() > 2
        || whole.len() > 15
    {
        return Err(bad());
    }
    let whole: i64 = if whole.is_empty() {
        0
    } else {
        whole.parse().map_err(|_| bad())?
    };
    let cents: i64 = format!("{fraction:0<2}").parse().map_err(|_| bad())?;
    let fen = whole * 100 + cents;
    if negative && fen != 0 {
        return Err(Rejection::new(
            reason::NEGATIVE_AMOUNT,
            format!("{field}: '{raw}' is negative"),
        ));
    }
    Ok(fen)
}

/// Converts a JSON number of yuan into fen, refusing negatives and NaN.
pub fn number_fen(field: &str, value: f64) -> Result<i64, Rejection> {
    if !value.is_finite() {
        return Err(Rejection::new(
            reason::BAD_AMOUNT,
            format!("{field}: not a number"),
        ));
    }
    if value < 0.0 {
        return Err(Rejection::new(
            reason::NEGATIVE_AMOUNT,
            format!("{field}: {value} is negative"),
        ));
    }
    if value > 1e13 {
        return Err(Rejection::new(
            reason::OUT_OF_RANGE,
            format!("{field}: {value} is too large"),
        ));
    }
    Ok((value * 100.0).round() as i64)
}

/// Trims text; empty becomes `None`.
pub fn text(raw: &str) -> Option<String> {
    trimmed(raw).map(str::to_string)
}

/// [`text`] without the copy.
pub fn trimmed(raw: &str) -> Option<&str> {
    let trimmed = raw.trim();
    (!trimmed.is_empty()).then_some(trimmed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 23, 0, 0, 0)
            .single()
            .expect("valid")
    }

    fn shanghai() -> FixedOffset {
        zone_offset("Asia/Shanghai").expect("zone")
    }

    #[test]
    fn phones_in_every_common_form_become_e164() {
        for raw in [
            "13812345678",
            "+8613812345678",
            "+86 138 1234 5678",
            "138-1234-5678",
            "8613812345678",
            "008613812345678",
            "'13812345678",
            " 138 1234 5678 ",
        ] {
            assert_eq!(
                phone("phone", raw),
                Ok(Phone::Valid("+8613812345678".into())),
                "{raw}"
            );
        }
        assert_eq!(
            phone("phone", "+1 415 555 0100"),
            Ok(Phone::Valid("+14155550100".into()))
        );
        assert_eq!(
            phone("phone", "00 1 415 555 0100"),
            Ok(Phone::Valid("+14155550100".into()))
        );
        assert_eq!(
            phone("phone", "+123456789012345"),
            Ok(Phone::Valid("+123456789012345".into())),
            "fifteen digits is the longest E.164 number"
        );
        assert_eq!(phone("phone", "138****5678"), Ok(Phone::Masked));
        assert_eq!(phone("phone", "  "), Ok(Phone::Missing));
        for raw in [
            "12345",
            "138abcd5678",
            "1381234567",
            "000-0000",
            "+86 1234",
            "12812345678",
            "+8612812345678",
            "+861381234567",
            "+1234567890123456",
            "001234567890123456",
            "0012345678901234567890",
            "1381234567８",
        ] {
            let err = phone("traits.phone", raw).expect_err(raw);
            assert_eq!(err.code, reason::BAD_PHONE);
            assert!(err.message.contains("traits.phone"), "{}", err.message);
        }
    }

    #[test]
    fn times_in_many_forms_become_utc_micros() {
        let expected = Utc
            .with_ymd_and_hms(2026, 10, 1, 4, 34, 56)
            .single()
            .expect("t")
            .timestamp_micros();
        let zone = shanghai();
        for raw in [
            "2026-10-01T04:34:56Z",
            "2026-10-01T04:34:56.000Z",
            "2026-10-01T12:34:56+08:00",
            "2026-10-01 12:34:56",
            "2026/10/01 12:34:56",
            "1790829296",
            "1790829296000",
        ] {
            assert_eq!(timestamp("t", raw, zone, now()), Ok(expected), "{raw}");
        }
        assert_eq!(
            timestamp("t", "2026/10/01 12:34", zone, now()),
            Ok(expected - 56_000_000)
        );
        assert_eq!(
            timestamp("t", "2026-10-01T04:34:56.123456Z", zone, now()),
            Ok(expected + 123_456)
        );
        for raw in [
            "2026-02-30T10:00:00Z",
            "2026-13-01T08:00:00Z",
            "1970-01-01T00:00:00Z",
            "2099-12-31T23:59:59Z",
            "yesterday",
            "",
            "0000-00-00 00:00:00",
            "31/02/2026",
        ] {
            let err = timestamp("timestamp", raw, zone, now()).expect_err(raw);
            assert_eq!(err.code, reason::BAD_TIMESTAMP, "{raw}");
        }
    }

    #[test]
    fn amounts_are_exact_fen() {
        assert_eq!(amount_fen("a", "199.00"), Ok(19_900));
        assert_eq!(amount_fen("a", "199.5"), Ok(19_950));
        assert_eq!(amount_fen("a", "1,299.99"), Ok(129_999));
        assert_eq!(amount_fen("a", "¥0.07"), Ok(7));
        assert_eq!(amount_fen("a", "12"), Ok(1_200));
        assert_eq!(amount_fen("a", "-0.00"), Ok(0));
        assert_eq!(
            amount_fen("a", "-199.00").map_err(|e| e.code),
            Err(reason::NEGATIVE_AMOUNT)
        );
        for raw in ["", "abc", "1.999", "1.2.3", "--1", "1e5"] {
            assert_eq!(
                amount_fen("a", raw).map_err(|e| e.code),
                Err(reason::BAD_AMOUNT),
                "{raw}"
            );
        }
        assert_eq!(number_fen("price", 99.99), Ok(9_999));
        assert_eq!(
            number_fen("price", -1.0).map_err(|e| e.code),
            Err(reason::NEGATIVE_AMOUNT)
        );
    }

    #[test]
    fn zones_are_fixed_offsets() {
        assert_eq!(zone_offset("UTC"), FixedOffset::east_opt(0));
        assert_eq!(
            zone_offset("+05:30"),
            FixedOffset::east_opt(5 * 3600 + 1800)
        );
        assert_eq!(zone_offset("Europe/Nowhere"), None);
    }
}
