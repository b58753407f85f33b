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
    if let Some(micros) = rfc3339_micros(text) {
        return within_range(micros, now).map_err(&bad);
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
    within_range(time.timestamp_micros(), now).map_err(bad)
}

const MICROS_PER_DAY: i64 = 86_400_000_000;

/// `micros` when it is a time of a real event: not before 2000, at most a day after `now`.
fn within_range(micros: i64, now: DateTime<Utc>) -> Result<i64, &'static str> {
    if micros < EARLIEST {
        return Err("is before 2000");
    }
    if micros > now.timestamp_micros().saturating_add(MICROS_PER_DAY) {
        return Err("is in the future");
    }
    Ok(micros)
}

/// The UTC microseconds of the RFC 3339 form trackers send,
/// `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)`, read without a general parser; `None` for
/// anything else (a leap second, a fraction of more than nine digits, another form), which
/// the general parser then reads.
fn rfc3339_micros(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    if b.len() < 20 {
        return None;
    }
    let digits = |from: usize, n: usize| -> Option<i64> {
        b.get(from..from + n)?.iter().try_fold(0i64, |acc, &d| {
            d.is_ascii_digit().then(|| acc * 10 + i64::from(d - b'0'))
        })
    };
    let separated = b[4] == b'-' && b[7] == b'-' && matches!(b[10], b'T' | b't');
    if !separated || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (year, month, day) = (digits(0, 4)?, digits(5, 2)?, digits(8, 2)?);
    let (hour, minute, second) = (digits(11, 2)?, digits(14, 2)?, digits(17, 2)?);
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return None;
    }
    if hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    let mut pos = 19;
    let mut micros = 0;
    if b[pos] == b'.' {
        let start = pos + 1;
        pos = start;
        while b.get(pos).is_some_and(u8::is_ascii_digit) {
            pos += 1;
        }
        let n = pos - start;
        if n == 0 || n > 9 {
            return None;
        }
        // Digits past the sixth are dropped: a time in microseconds truncates them.
        let kept = digits(start, n.min(6))?;
        micros = kept * 10i64.pow(6 - n.min(6) as u32);
    }
    let offset = match b.get(pos..)? {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), _, _, b':', _, _] => {
            let (h, m) = (digits(pos + 1, 2)?, digits(pos + 4, 2)?);
            if h > 23 || m > 59 {
                return None;
            }
            let seconds = h * 3600 + m * 60;
            if *sign == b'-' { -seconds } else { seconds }
        }
        _ => return None,
    };
    let days = days_from_civil(year, month, day);
    let seconds = days * 86_400 + hour * 3600 + minute * 60 + second - offset;
    Some(seconds * 1_000_000 + micros)
}

fn is_leap(year: i64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days from 1970-01-01 to a date of the proleptic Gregorian calendar (Hinnant's
/// `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let year_of_era = y - era * 400;
    let shifted_month = (month + 9) % 12;
    let day_of_year = (153 * shifted_month + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// The day (days since 1970-01-01) that the UTC time `micros` falls on in `zone`.
pub fn local_day(micros: i64, zone: FixedOffset) -> i64 {
    let local = micros + i64::from(zone.local_minus_utc()) * 1_000_000;
    local.div_euclid(MICROS_PER_DAY)
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
    // Most values begin and end with a visible ASCII character, which no Unicode space is.
    let visible = |b: Option<&u8>| b.is_some_and(|b| (0x21..0x7f).contains(b));
    let bytes = raw.as_bytes();
    if visible(bytes.first()) && visible(bytes.last()) {
        return Some(raw);
    }
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
    fn the_quick_rfc3339_reading_agrees_with_chrono_on_hand_made_edges() {
        for text in [
            "2026-10-01T04:34:56Z",
            "2026-10-01t04:34:56z",
            "2024-02-29T23:59:59.999999999+08:00",
            "2000-01-01T00:00:00.1-12:30",
            "1999-12-31T23:59:59.123456789Z",
            "2100-03-01T00:00:00Z",
            "0001-01-01T00:00:00Z",
        ] {
            let chrono = DateTime::parse_from_rfc3339(text).expect(text);
            assert_eq!(
                rfc3339_micros(text),
                Some(chrono.timestamp_micros()),
                "{text}"
            );
        }
        // Not dates, or forms the general parser decides: never read here.
        for text in [
            "2023-02-29T00:00:00Z",
            "2100-02-29T00:00:00Z",
            "2026-04-31T00:00:00Z",
            "2026-00-10T00:00:00Z",
            "2026-10-01T24:00:00Z",
            "2026-10-01T23:60:00Z",
            "2026-10-01T23:59:60Z",
            "2026-10-01T04:34:56",
            "2026-10-01T04:34:56.Z",
            "2026-10-01T04:34:56.1234567890Z",
            "2026-10-01T04:34:56+0800",
            "2026-10-01T04:34:56+24:00",
            "2026-10-01 04:34:56Z",
            "2026-10-01T04:34:56Zjunk",
            "+2026-10-01T04:34:56Z",
        ] {
            assert_eq!(rfc3339_micros(text), None, "{text}");
        }
    }

    #[test]
    fn local_days_are_the_calendar_days_of_the_zone() {
        let zone = shanghai();
        let west = FixedOffset::west_opt(5 * 3600 + 1800).expect("offset");
        for (text, offset) in [
            ("2026-10-01T15:59:59.999999Z", zone),
            ("2026-10-01T16:00:00Z", zone),
            ("1969-12-31T23:59:59Z", zone),
            ("2026-10-01T05:29:59Z", west),
            ("2026-10-01T05:30:00Z", west),
        ] {
            let time = DateTime::parse_from_rfc3339(text).expect(text);
            let expected = (time.with_timezone(&offset).date_naive()
                - NaiveDate::from_ymd_opt(1970, 1, 1).expect("epoch"))
            .num_days();
            assert_eq!(
                local_day(time.timestamp_micros(), offset),
                expected,
                "{text}"
            );
        }
    }

    proptest::proptest! {
        #[test]
        fn rfc3339_times_read_quickly_are_read_as_chrono_reads_them(
            text in "[0-9]{4}-[01][0-9]-[0-3][0-9][Tt ][0-2][0-9]:[0-6][0-9]:[0-6][0-9](\\.[0-9]{0,11})?(Z|z|[+-][0-2][0-9]:[0-6][0-9])?",
        ) {
            let chrono = DateTime::parse_from_rfc3339(&text).ok();
            match rfc3339_micros(&text) {
                Some(micros) => proptest::prop_assert_eq!(
                    chrono.map(|t| t.timestamp_micros()),
                    Some(micros)
                ),
                None => {
                    // Only what the general parser refuses, or the forms left to it.
                    let fraction = text[19..]
                        .strip_prefix('.')
                        .map(|f| f.bytes().take_while(u8::is_ascii_digit).count());
                    let left_to_it = text.as_bytes()[10] == b' '
                        || &text[17..19] == "60"
                        || fraction.is_some_and(|n| n > 9);
                    proptest::prop_assert!(chrono.is_none() || left_to_it, "{} was left to chrono", text);
                }
            }
        }

        #[test]
        fn trimmed_text_is_what_str_trim_leaves(
            text in "[ \t\r\n\u{b}\u{c}\u{85}\u{a0}\u{3000}\u{2028}\u{1}\u{7f}a-z0-9~!中]{0,6}",
        ) {
            let expected = Some(text.trim()).filter(|t| !t.is_empty());
            proptest::prop_assert_eq!(trimmed(&text), expected);
        }
    }

    #[test]
    fn ids_are_trimmed_of_unicode_spaces_too() {
        assert_eq!(trimmed("abc"), Some("abc"));
        assert_eq!(trimmed(" abc\t"), Some("abc"));
        assert_eq!(trimmed("\u{3000}用户\u{a0}"), Some("用户"));
        assert_eq!(trimmed("~x\u{2028}"), Some("~x"));
        assert_eq!(trimmed("\u{7f}"), Some("\u{7f}"));
        assert_eq!(trimmed(" \u{85} "), None);
        assert_eq!(trimmed(""), None);
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
