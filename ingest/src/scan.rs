//! A one-pass reader of JSON text for messages of which a few fields are read and the rest is
//! only checked: strings are borrowed from the text when they have no escapes, and skipped
//! values are validated without being built.
//!
//! It accepts the texts `serde_json` accepts, with the same rules: RFC 8259 grammar, no
//! control characters inside strings, escapes of four hex digits; a string that is decoded must
//! not hold a lone UTF-16 surrogate (`\ud800`), a string that is skipped may, as `serde_json`
//! skips it. Skipping is iterative, so deep nesting cannot overflow the stack.

use std::borrow::Cow;
use std::fmt;

/// Where and why a text is not JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxError {
    what: &'static str,
    line: usize,
    column: usize,
}

impl fmt::Display for SyntaxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} at line {} column {}",
            self.what, self.line, self.column
        )
    }
}

impl std::error::Error for SyntaxError {}

pub type Result<T> = std::result::Result<T, SyntaxError>;

/// A value's JSON text as it stands in the message, and whether whitespace separates its
/// tokens anywhere (then it is not compact).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Raw<'a> {
    pub text: &'a str,
    pub spaced: bool,
}

/// The arrays and objects open around the place of a value being skipped, innermost last:
/// the first 64 levels as bits (an object is a one), deeper ones in a vector, so that
/// skipping the small nested objects of a message allocates nothing.
#[derive(Default)]
struct Open {
    bits: u64,
    depth: usize,
    deeper: Vec<u8>,
}

impl Open {
    fn push(&mut self, frame: u8) {
        if self.depth < 64 {
            let bit = 1u64 << self.depth;
            if frame == b'{' {
                self.bits |= bit;
            } else {
                self.bits &= !bit;
            }
        } else {
            self.deeper.push(frame);
        }
        self.depth += 1;
    }

    fn last(&self) -> Option<u8> {
        match self.depth {
            0 => None,
            d if d <= 64 => Some(if self.bits >> (d - 1) & 1 == 1 {
                b'{'
            } else {
                b'['
            }),
            _ => self.deeper.last().copied(),
        }
    }

    fn pop(&mut self) {
        if self.depth > 64 {
            self.deeper.pop();
        }
        self.depth = self.depth.saturating_sub(1);
    }
}

/// A cursor over JSON text.
pub struct Reader<'a> {
    text: &'a str,
    pos: usize,
    /// Whitespace was skipped since this was last cleared.
    spaced: bool,
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGH: u64 = 0x8080_8080_8080_8080;

/// The bytes of `word` (eight bytes, little-endian) that end the plain run of a string: a
/// quote, a backslash or a control character. The lowest set high bit marks the first one
/// exactly (a borrow only spreads upwards from a byte that matched).
#[inline]
fn special(word: u64) -> u64 {
    let quote = word ^ (ONES * u64::from(b'"'));
    let backslash = word ^ (ONES * u64::from(b'\\'));
    let quote = quote.wrapping_sub(ONES) & !quote;
    let backslash = backslash.wrapping_sub(ONES) & !backslash;
    let control = word.wrapping_sub(ONES * 0x20) & !word;
    (quote | backslash | control) & HIGH
}

/// The offset in `bytes` of the first quote, backslash or control character.
#[inline]
fn plain_run(bytes: &[u8]) -> Option<usize> {
    let mut i = 0;
    while i + 8 <= bytes.len() {
        let mut word = [0u8; 8];
        word.copy_from_slice(&bytes[i..i + 8]);
        let found = special(u64::from_le_bytes(word));
        if found != 0 {
            return Some(i + (found.trailing_zeros() / 8) as usize);
        }
        i += 8;
    }
    bytes[i..]
        .iter()
        .position(|&b| b == b'"' || b == b'\\' || b < 0x20)
        .map(|p| i + p)
}

impl<'a> Reader<'a> {
    pub fn new(text: &'a str) -> Self {
        Reader {
            text,
            pos: 0,
            spaced: false,
        }
    }

    #[cold]
    fn error_at(&self, pos: usize, what: &'static str) -> SyntaxError {
        let before = &self.text.as_bytes()[..pos.min(self.text.len())];
        let line = 1 + memchr::memchr_iter(b'\n', before).count();
        let column = pos - memchr::memrchr(b'\n', before).map_or(0, |n| n + 1) + 1;
        SyntaxError { what, line, column }
    }

    fn error(&self, what: &'static str) -> SyntaxError {
        self.error_at(self.pos, what)
    }

    /// An error at the reader's place, for a value the grammar allows but the reader's caller
    /// cannot take.
    pub fn invalid(&self, what: &'static str) -> SyntaxError {
        self.error(what)
    }

    /// Skips whitespace; the next byte, if any.
    #[inline]
    pub fn peek(&mut self) -> Option<u8> {
        let bytes = self.text.as_bytes();
        while let Some(&b) = bytes.get(self.pos) {
            if !matches!(b, b' ' | b'\n' | b'\t' | b'\r') {
                return Some(b);
            }
            self.spaced = true;
            self.pos += 1;
        }
        None
    }

    /// Checks that only whitespace is left.
    pub fn end(&mut self) -> Result<()> {
        match self.peek() {
            None => Ok(()),
            Some(_) => Err(self.error("trailing characters")),
        }
    }

    fn expect_value(&mut self) -> Result<u8> {
        self.peek()
            .ok_or_else(|| self.error("EOF while parsing a value"))
    }

    /// Reads an object's entries, calling `entry` with each key; `entry` reads or skips the
    /// value. The next value must be an object.
    pub fn object(
        &mut self,
        mut entry: impl FnMut(&mut Self, Cow<'a, str>) -> Result<()>,
    ) -> Result<()> {
        if self.expect_value()? != b'{' {
            return Err(self.error("expected an object"));
        }
        self.pos += 1;
        if self.peek() == Some(b'}') {
            self.pos += 1;
            return Ok(());
        }
        loop {
            match self.peek() {
                Some(b'"') => {}
                Some(_) => return Err(self.error("key must be a string")),
                None => return Err(self.error("EOF while parsing an object")),
            }
            let key = self.string()?;
            match self.peek() {
                Some(b':') => self.pos += 1,
                Some(_) => return Err(self.error("expected `:`")),
                None => return Err(self.error("EOF while parsing an object")),
            }
            entry(self, key)?;
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b'}') => {
                    self.pos += 1;
                    return Ok(());
                }
                Some(_) => return Err(self.error("expected `,` or `}`")),
                None => return Err(self.error("EOF while parsing an object")),
            }
        }
    }

    /// Reads a string (the next value must be one), decoding its escapes.
    pub fn string(&mut self) -> Result<Cow<'a, str>> {
        if self.expect_value()? != b'"' {
            return Err(self.error("expected a string"));
        }
        let bytes = self.text.as_bytes();
        let start = self.pos + 1;
        let Some(run) = plain_run(&bytes[start..]) else {
            return Err(self.error_at(bytes.len(), "EOF while parsing a string"));
        };
        let end = start + run;
        if bytes[end] == b'"' {
            self.pos = end + 1;
            return Ok(Cow::Borrowed(&self.text[start..end]));
        }
        self.pos = end;
        self.escaped_string(start).map(Cow::Owned)
    }

    /// The rest of a string from its first escape or control character at `self.pos`;
    /// `start` is just after its opening quote.
    #[cold]
    fn escaped_string(&mut self, start: usize) -> Result<String> {
        let bytes = self.text.as_bytes();
        let mut out = String::with_capacity(self.pos - start + 16);
        out.push_str(&self.text[start..self.pos]);
        loop {
            match bytes.get(self.pos) {
                None => return Err(self.error("EOF while parsing a string")),
                Some(b'"') => {
                    self.pos += 1;
                    return Ok(out);
                }
                Some(b'\\') => {
                    self.pos += 1;
                    self.escape(&mut out)?;
                }
                Some(_) => {
                    return Err(self.error(
                        "control character (\\u0000-\\u001F) found while parsing a string",
                    ));
                }
            }
            let from = self.pos;
            let Some(run) = plain_run(&bytes[from..]) else {
                return Err(self.error_at(bytes.len(), "EOF while parsing a string"));
            };
            self.pos = from + run;
            out.push_str(&self.text[from..self.pos]);
        }
    }

    /// Decodes the escape after a backslash into `out`.
    fn escape(&mut self, out: &mut String) -> Result<()> {
        let Some(&kind) = self.text.as_bytes().get(self.pos) else {
            return Err(self.error("EOF while parsing a string"));
        };
        self.pos += 1;
        let c = match kind {
            b'"' => '"',
            b'\\' => '\\',
            b'/' => '/',
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => {
                let unit = self.hex4()?;
                match unit {
                    0xDC00..=0xDFFF => {
                        return Err(self.error("lone leading surrogate in hex escape"));
                    }
                    0xD800..=0xDBFF => {
                        let bytes = self.text.as_bytes();
                        if bytes.get(self.pos) != Some(&b'\\')
                            || bytes.get(self.pos + 1) != Some(&b'u')
                        {
                            return Err(self.error("unexpected end of hex escape"));
                        }
                        self.pos += 2;
                        let low = self.hex4()?;
                        if !(0xDC00..=0xDFFF).contains(&low) {
                            return Err(self.error("lone leading surrogate in hex escape"));
                        }
                        let code = 0x1_0000
                            + ((u32::from(unit) - 0xD800) << 10)
                            + (u32::from(low) - 0xDC00);
                        char::from_u32(code).ok_or_else(|| self.error("invalid escape"))?
                    }
                    _ => char::from_u32(u32::from(unit))
                        .ok_or_else(|| self.error("invalid escape"))?,
                }
            }
            _ => return Err(self.error("invalid escape")),
        };
        out.push(c);
        Ok(())
    }

    fn hex4(&mut self) -> Result<u16> {
        let Some(digits) = self.text.as_bytes().get(self.pos..self.pos + 4) else {
            self.pos = self.text.len();
            return Err(self.error("EOF while parsing a string"));
        };
        let mut value = 0u16;
        for (i, &d) in digits.iter().enumerate() {
            let Some(v) = (d as char).to_digit(16) else {
                self.pos += i + 1;
                return Err(self.error("invalid escape"));
            };
            value = value << 4 | v as u16;
        }
        self.pos += 4;
        Ok(value)
    }

    /// Skips a string at `self.pos` (its opening quote), checking escapes but not decoding.
    fn skip_string(&mut self) -> Result<()> {
        let bytes = self.text.as_bytes();
        self.pos += 1;
        loop {
            let Some(run) = plain_run(&bytes[self.pos..]) else {
                self.pos = bytes.len();
                return Err(self.error("EOF while parsing a string"));
            };
            self.pos += run;
            match bytes[self.pos] {
                b'"' => {
                    self.pos += 1;
                    return Ok(());
                }
                b'\\' => {
                    self.pos += 1;
                    match bytes.get(self.pos) {
                        Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => {
                            self.pos += 1
                        }
                        Some(b'u') => {
                            self.pos += 1;
                            self.hex4()?;
                        }
                        Some(_) => {
                            self.pos += 1;
                            return Err(self.error("invalid escape"));
                        }
                        None => return Err(self.error("EOF while parsing a string")),
                    }
                }
                _ => {
                    return Err(self.error(
                        "control character (\\u0000-\\u001F) found while parsing a string",
                    ));
                }
            }
        }
    }

    /// Reads a number's text (the next value must be a number), checking its grammar.
    pub fn number(&mut self) -> Result<&'a str> {
        self.expect_value()?;
        let bytes = self.text.as_bytes();
        let start = self.pos;
        let digits = |pos: &mut usize| {
            let from = *pos;
            while bytes.get(*pos).is_some_and(u8::is_ascii_digit) {
                *pos += 1;
            }
            *pos > from
        };
        let mut pos = start;
        if bytes.get(pos) == Some(&b'-') {
            pos += 1;
        }
        match bytes.get(pos) {
            Some(b'0') => {
                pos += 1;
                if bytes.get(pos).is_some_and(u8::is_ascii_digit) {
                    return Err(self.error_at(pos, "invalid number"));
                }
            }
            Some(b'1'..=b'9') => {
                digits(&mut pos);
            }
            _ => return Err(self.error_at(pos, "invalid number")),
        }
        if bytes.get(pos) == Some(&b'.') {
            pos += 1;
            if !digits(&mut pos) {
                return Err(self.error_at(pos, "invalid number"));
            }
        }
        if matches!(bytes.get(pos), Some(b'e' | b'E')) {
            pos += 1;
            if matches!(bytes.get(pos), Some(b'+' | b'-')) {
                pos += 1;
            }
            if !digits(&mut pos) {
                return Err(self.error_at(pos, "invalid number"));
            }
        }
        self.pos = pos;
        Ok(&self.text[start..pos])
    }

    fn literal(&mut self, word: &'static str) -> Result<()> {
        let bytes = self.text.as_bytes();
        let end = self.pos + word.len();
        if bytes.get(self.pos..end) == Some(word.as_bytes()) {
            self.pos = end;
            return Ok(());
        }
        // Point at the first byte that differs, as a reader going byte by byte would.
        let same = word
            .bytes()
            .zip(&bytes[self.pos..])
            .take_while(|(w, b)| w == *b)
            .count();
        let at = self.pos + same;
        if at >= bytes.len() {
            return Err(self.error_at(bytes.len(), "EOF while parsing a value"));
        }
        Err(self.error_at(at, "expected ident"))
    }

    /// Skips one value of any kind, checking its syntax.
    pub fn skip(&mut self) -> Result<()> {
        let mut open = Open::default();
        loop {
            // A value.
            match self.expect_value()? {
                b'"' => self.skip_string()?,
                b'-' | b'0'..=b'9' => {
                    self.number()?;
                }
                b'n' => self.literal("null")?,
                b't' => self.literal("true")?,
                b'f' => self.literal("false")?,
                b'[' => {
                    self.pos += 1;
                    if self.peek() == Some(b']') {
                        self.pos += 1;
                    } else {
                        open.push(b'[');
                        continue;
                    }
                }
                b'{' => {
                    self.pos += 1;
                    if self.peek() == Some(b'}') {
                        self.pos += 1;
                    } else {
                        open.push(b'{');
                        self.key()?;
                        continue;
                    }
                }
                _ => return Err(self.error("expected value")),
            }
            // After a value: close what ends here, then a comma before the next one.
            loop {
                let Some(frame) = open.last() else {
                    return Ok(());
                };
                match (self.peek(), frame) {
                    (Some(b','), _) => {
                        self.pos += 1;
                        if frame == b'{' {
                            self.key()?;
                        }
                        break;
                    }
                    (Some(b']'), b'[') | (Some(b'}'), b'{') => {
                        self.pos += 1;
                        open.pop();
                    }
                    (Some(_), b'[') => return Err(self.error("expected `,` or `]`")),
                    (Some(_), _) => return Err(self.error("expected `,` or `}`")),
                    (None, b'[') => return Err(self.error("EOF while parsing a list")),
                    (None, _) => return Err(self.error("EOF while parsing an object")),
                }
            }
        }
    }

    /// Skips an object key and its colon.
    fn key(&mut self) -> Result<()> {
        match self.peek() {
            Some(b'"') => self.skip_string()?,
            Some(_) => return Err(self.error("key must be a string")),
            None => return Err(self.error("EOF while parsing an object")),
        }
        match self.peek() {
            Some(b':') => {
                self.pos += 1;
                Ok(())
            }
            Some(_) => Err(self.error("expected `:`")),
            None => Err(self.error("EOF while parsing an object")),
        }
    }

    /// Skips one value and gives its text.
    pub fn raw(&mut self) -> Result<Raw<'a>> {
        self.expect_value()?;
        let start = self.pos;
        self.spaced = false;
        self.skip()?;
        Ok(Raw {
            text: &self.text[start..self.pos],
            spaced: self.spaced,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde::de::IgnoredAny;
    use serde_json::Value;

    fn skips(text: &str) -> Result<()> {
        let mut r = Reader::new(text);
        r.skip()?;
        r.end()
    }

    #[test]
    fn plain_runs_stop_at_the_first_special_byte() {
        for text in [
            "",
            "a",
            "abcdefgh",
            "abcdefghi\"",
            "\\",
            "abcdefg\u{1}",
            "\u{7f}\u{80}é\"",
            "1234567\"89\\",
        ] {
            let expected = text
                .bytes()
                .position(|b| b == b'"' || b == b'\\' || b < 0x20);
            assert_eq!(plain_run(text.as_bytes()), expected, "{text:?}");
        }
    }

    #[test]
    fn strings_are_borrowed_unless_escaped() {
        let mut r = Reader::new(r#" "plain 首页" "#);
        assert!(matches!(r.string(), Ok(Cow::Borrowed("plain 首页"))));
        let mut r = Reader::new(r#""a\"b\\c\/\n\u00e9\ud83d\ude00""#);
        assert_eq!(r.string().expect("escaped").as_ref(), "a\"b\\c/\né😀");
        for bad in [
            r#""\ud800""#,
            r#""\udc00""#,
            r#""\ud800\u0041""#,
            "\"a\u{1}\"",
            r#""\x""#,
            r#""abc"#,
        ] {
            assert!(Reader::new(bad).string().is_err(), "{bad}");
        }
        // Skipped, a lone surrogate passes, as serde_json skips it.
        assert!(skips(r#"["\ud800"]"#).is_ok());
    }

    #[test]
    fn errors_say_where() {
        let err = skips("{\"a\":\n  tru}").expect_err("bad");
        assert_eq!(err.to_string(), "expected ident at line 2 column 6");
        let err = skips("{\"a\":1} x").expect_err("trailing");
        assert_eq!(err.to_string(), "trailing characters at line 1 column 9");
    }

    #[test]
    fn hand_made_texts_are_judged_as_serde_json_judges() {
        let texts = [
            "0",
            "01",
            "-",
            "-0",
            "-01",
            "1.",
            ".5",
            "1.5e",
            "1e+",
            "1E-7",
            "2e308",
            "1x",
            "tru",
            "nul",
            "nullx",
            "true false",
            "[1,]",
            "[,1]",
            "[1 2]",
            "[]]",
            "[[]",
            "{}",
            "{,}",
            r#"{"a":1,}"#,
            r#"{"a" 1}"#,
            r#"{"a":}"#,
            r#"{1:2}"#,
            r#"{"a":[}]}"#,
            r#"{"a":{"b":[1,{"c":null}]}}"#,
            r#""\u12""#,
            r#""\u12G4""#,
            r#""\uD800""#,
            r#""\q""#,
            "\"a\tb\"",
            "\"a\u{7f}b\"",
            "\"",
            " \n\t\r[ 1 , { \"k\" : \"v\" } ] \n",
            "[1] [2]",
            "",
            "   ",
            "\u{feff}1",
            "NaN",
            "+1",
        ];
        for text in texts {
            assert_eq!(
                skips(text).is_ok(),
                serde_json::from_str::<IgnoredAny>(text).is_ok(),
                "{text:?}"
            );
        }
    }

    #[test]
    fn deep_nesting_does_not_overflow() {
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(skips(&deep).is_ok());
        assert!(skips(&deep[..deep.len() - 1]).is_err());
        // Objects and arrays mixed, above and below the levels kept as bits.
        for levels in [3, 64, 65, 200] {
            let mixed = format!("{}1{}", "[{\"a\":".repeat(levels), "}]".repeat(levels));
            assert!(skips(&mixed).is_ok(), "{levels}");
            let crossed = format!("{}1{}", "[{\"a\":".repeat(levels), "]}".repeat(levels));
            assert!(skips(&crossed).is_err(), "{levels}");
            assert!(serde_json::from_str::<IgnoredAny>(&crossed).is_err());
        }
    }

    fn value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(Value::from),
            "[ a-z\u{4e00}\u{1f600}\"\\\\\n\u{1}]{0,10}".prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::vec(("[a-z\"]{0,3}", inner), 0..4)
                    .prop_map(|kv| Value::Object(kv.into_iter().collect())),
            ]
        })
    }

    /// Whether whitespace stands between the tokens of valid JSON `text`.
    fn spaced_outside_strings(text: &str) -> bool {
        let (mut in_string, mut escaped) = (false, false);
        for c in text.chars() {
            match (in_string, escaped, c) {
                (true, true, _) => escaped = false,
                (true, false, '\\') => escaped = true,
                (true, false, '"') | (false, _, '"') => in_string = !in_string,
                (false, _, ' ' | '\n' | '\t' | '\r') => return true,
                _ => {}
            }
        }
        false
    }

    /// Bytes that make or break JSON.
    const TRICKY: &[&str] = &[
        "\"", "\\", "{", "}", "[", "]", ",", ":", "0", "-", "e", ".", "+", " ", "\n", "\u{1}", "u",
        "\\u", "\\ud800", "\\udc00", "n", "t", "1", "é",
    ];

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Valid JSON, spaced or not and then broken in small ways, is accepted exactly when
        /// serde_json accepts it; what it reads as a raw value is the same text.
        #[test]
        fn accepts_what_serde_json_accepts(
            v in value(),
            pretty in any::<bool>(),
            edits in prop::collection::vec((any::<prop::sample::Index>(), 0..3u8, prop::sample::select(TRICKY)), 0..3),
        ) {
            let mut text = if pretty { serde_json::to_string_pretty(&v).expect("json") } else { v.to_string() };
            for (at, kind, insert) in edits {
                let mut at = at.index(text.len() + 1);
                while !text.is_char_boundary(at) { at -= 1; }
                match kind {
                    0 => text.insert_str(at, insert),
                    1 => { if let Some(c) = text[at..].chars().next() { text.replace_range(at..at + c.len_utf8(), ""); } }
                    _ => text.truncate(at),
                }
            }
            let ours = skips(&text);
            let theirs = serde_json::from_str::<IgnoredAny>(&text);
            prop_assert_eq!(ours.is_ok(), theirs.is_ok(), "{:?}: ours {:?}, serde_json {:?}", text, ours, theirs);
            if ours.is_ok() {
                let mut r = Reader::new(&text);
                let raw = r.raw().expect("raw");
                prop_assert_eq!(raw.text, text.trim_matches(|c| matches!(c, ' ' | '\n' | '\t' | '\r')));
                prop_assert_eq!(raw.spaced, spaced_outside_strings(raw.text), "{:?}", raw.text);
            }
        }

        /// A string reads as serde_json decodes it, and fails when serde_json fails.
        #[test]
        fn strings_decode_as_serde_json_decodes(s in "[a-z\"\\\\/é\u{1f600}\n]{0,12}", escape_unicode in any::<bool>()) {
            let mut text = serde_json::to_string(&s).expect("json");
            if escape_unicode {
                text = text.replace('é', "\\u00E9").replace('\u{1f600}', "\\uD83D\\uDE00");
            }
            let read = Reader::new(&text).string().map(Cow::into_owned);
            prop_assert_eq!(read.ok(), serde_json::from_str::<String>(&text).ok());
        }
    }
}
