//! Uploaded lists: user ids, phones in any common format, SHA-256 hashed phones or any
//! identity type of the catalog (login ids, unionids, buyer ids), one per line or in a CSV
//! column, mapped to people through `identity_links`.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use arrow::array::{Array, AsArray, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Int64Type, Schema};
use datafusion::prelude::{col, lit};
use roaring::RoaringBitmap;
use serde::Serialize;
use shoal_catalog::MergeLog;
use shoal_ingest::clean::{self, Phone};
use shoal_query::{Engine, Session};

use crate::error::{Error, Result};

/// Kind of identifier a list holds.
pub const USER_ID: &str = "user_id";
/// Phones as people write them, normalised to E.164.
pub const PHONE: &str = "phone";
/// SHA-256 of the E.164 phone, hex (either case), as ad platforms hand them out.
pub const PHONE_SHA256: &str = "phone_sha256";
/// Decide per value: 64 hex digits → hashed phone, a valid phone → phone, else login id.
pub const AUTO: &str = "auto";

/// Most rows one list may hold.
pub const MAX_ROWS: usize = 20_000_000;

/// One row of a list that did not become a member.
#[derive(Debug, Clone, Serialize)]
pub struct Unmatched {
    /// 1-based line in the file.
    pub line: u64,
    /// The value as given.
    pub value: String,
    /// `invalid` (not an identifier of the kind) or `unmatched` (nobody has it).
    pub reason: &'static str,
}

/// What became of an uploaded list.
#[derive(Debug, Clone, Default, Serialize)]
pub struct MatchReport {
    /// Non-blank data rows read.
    pub rows: u64,
    /// Rows that found a person.
    pub matched: u64,
    /// Valid identifiers nobody has.
    pub unmatched: u64,
    /// Rows that are not identifiers of the kind.
    pub invalid: u64,
    /// Rows repeating an identifier given earlier in the list.
    pub duplicates: u64,
    /// Matched rows per identifier kind.
    pub by_type: std::collections::BTreeMap<String, u64>,
}

/// A list read and checked, not yet matched.
#[derive(Debug, Default)]
pub struct ParsedList {
    /// (line, kind, normalised value, value as given).
    entries: Vec<(u64, String, String, String)>,
    invalid: Vec<Unmatched>,
    duplicates: u64,
    rows: u64,
}

/// Header names understood as a column of identifiers, and the kind they hold.
fn header_kind(name: &str) -> Option<&'static str> {
    match name.trim().to_lowercase().as_str() {
        "user_id" | "userid" | "用户id" => Some(USER_ID),
        "phone" | "mobile" | "手机号" | "手机" | "联系手机" => Some(PHONE),
        "phone_sha256" | "sha256" | "phone_hash" => Some(PHONE_SHA256),
        "login_id" | "loginid" | "登录id" => Some("login_id"),
        _ => None,
    }
}

fn is_sha256(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Splits one CSV line into fields (quotes respected, `""` inside quotes).
fn csv_fields(line: &str, separator: char) -> Vec<String> {
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                field.push('"');
                chars.next();
            }
            '"' => quoted = !quoted,
            c if c == separator && !quoted => fields.push(std::mem::take(&mut field)),
            c => field.push(c),
        }
    }
    fields.push(field);
    fields
}

/// Reads a list. `kind` is [`AUTO`], [`USER_ID`], [`PHONE`], [`PHONE_SHA256`] or an identity
/// type of the catalog (`identity_types`). A first line naming a known column (`phone`,
/// `user_id`, `手机号`, …) is a header: that column is read, and its name gives the kind
/// unless one is asked for.
pub fn parse(bytes: &[u8], kind: &str, identity_types: &[String]) -> Result<ParsedList> {
    let known = [AUTO, USER_ID, PHONE, PHONE_SHA256];
    if !known.contains(&kind) && !identity_types.iter().any(|t| t == kind) {
        return Err(Error::invalid(
            "id_type",
            format!(
                "'{kind}' is not one of {}, {}",
                known.join(", "),
                identity_types.join(", ")
            ),
        ));
    }
    let text = std::str::from_utf8(bytes).map_err(|e| {
        Error::invalid(
            "file",
            format!(
                "not UTF-8 text (byte {}); save the list as UTF-8",
                e.valid_up_to()
            ),
        )
    })?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut lines = text.lines().enumerate().peekable();
    let first = lines.peek().map(|(_, l)| *l).unwrap_or_default();
    let separator = if first.contains('\t') { '\t' } else { ',' };
    let header: Vec<String> = csv_fields(first, separator);
    let mut column = 0;
    let mut kind = kind.to_string();
    if let Some((i, k)) = header
        .iter()
        .enumerate()
        .find_map(|(i, h)| header_kind(h).map(|k| (i, k)))
    {
        column = i;
        if kind == AUTO {
            kind = k.to_string();
        }
        lines.next();
    }
    let mut out = ParsedList::default();
    // Kind and value, as a 128-bit hash: a million rows without a million string pairs.
    let mut seen: HashSet<u128> = HashSet::with_capacity(bytes.len() / 12);
    for (index, line) in lines {
        let line_number = index as u64 + 1;
        if line.trim().is_empty() {
            continue;
        }
        out.rows += 1;
        if out.rows as usize > MAX_ROWS {
            return Err(Error::invalid(
                "file",
                format!("more than {MAX_ROWS} rows; split the list"),
            ));
        }
        // Lines without quotes (nearly all) are split without copying.
        let quoted_fields;
        let raw = if line.contains('"') {
            quoted_fields = csv_fields(line, separator);
            quoted_fields.get(column).map(String::as_str)
        } else {
            line.split(separator).nth(column)
        }
        .map(str::trim)
        .unwrap_or_default();
        let invalid = |out: &mut ParsedList| {
            out.invalid.push(Unmatched {
                line: line_number,
                value: raw.to_string(),
                reason: "invalid",
            })
        };
        let phone = || match clean::phone("phone", raw) {
            Ok(Phone::Valid(e164)) => Some(e164),
            _ => None,
        };
        let parsed: Option<(String, String)> = match kind.as_str() {
            USER_ID => raw
                .parse::<u32>()
                .ok()
                .map(|id| (USER_ID.to_string(), id.to_string())),
            PHONE => phone().map(|p| (PHONE.to_string(), p)),
            PHONE_SHA256 => {
                is_sha256(raw).then(|| (PHONE_SHA256.to_string(), raw.to_ascii_uppercase()))
            }
            AUTO => {
                if raw.is_empty() || raw.contains('*') {
                    None
                } else if is_sha256(raw) {
                    Some((PHONE_SHA256.to_string(), raw.to_ascii_uppercase()))
                } else if let Some(p) = phone() {
                    Some((PHONE.to_string(), p))
                } else {
                    Some(("login_id".to_string(), raw.to_string()))
                }
            }
            other => (!raw.is_empty()).then(|| (other.to_string(), raw.to_string())),
        };
        let Some((k, value)) = parsed else {
            invalid(&mut out);
            continue;
        };
        let key = twox_hash::XxHash3_128::oneshot_with_seed(
            k.bytes()
                .fold(0u64, |h, b| h.wrapping_mul(131).wrapping_add(u64::from(b))),
            value.as_bytes(),
        );
        if !seen.insert(key) {
            out.duplicates += 1;
            continue;
        }
        out.entries.push((line_number, k, value, raw.to_string()));
    }
    Ok(out)
}

/// Maps a parsed list to people at `session`'s snapshot: the members, the report and the rows
/// that found nobody (invalid ones first, then unmatched, each in line order).
pub async fn match_list(
    engine: &Engine,
    session: &Session,
    list: ParsedList,
) -> Result<(RoaringBitmap, MatchReport, Vec<Unmatched>)> {
    let mut report = MatchReport {
        rows: list.rows,
        invalid: list.invalid.len() as u64,
        duplicates: list.duplicates,
        ..MatchReport::default()
    };
    let mut members = RoaringBitmap::new();
    let mut matched_lines: HashSet<u64> = HashSet::new();
    let merges: MergeLog = session.merge_log().await?;

    // User ids: members when they are people of the snapshot.
    let universe = engine.universe(session).await?;
    for (line, kind, value, _) in &list.entries {
        if kind == USER_ID
            && let Ok(id) = value.parse::<u32>()
        {
            let id = merges.survivor(id);
            if universe.contains(id) {
                members.insert(id);
                matched_lines.insert(*line);
                *report.by_type.entry(USER_ID.into()).or_default() += 1;
            }
        }
    }

    // Identities (and hashed phones) through identity_links, joined in DataFusion.
    let wanted: Vec<&(u64, String, String, String)> =
        list.entries.iter().filter(|e| e.1 != USER_ID).collect();
    if !wanted.is_empty() {
        let hashed: Vec<&&(u64, String, String, String)> =
            wanted.iter().filter(|e| e.1 == PHONE_SHA256).collect();
        let plain: Vec<&&(u64, String, String, String)> =
            wanted.iter().filter(|e| e.1 != PHONE_SHA256).collect();
        let ctx = session.context();
        let mut found: HashMap<u64, (u32, String)> = HashMap::new();
        if !plain.is_empty() {
            let upload = uploaded_frame(ctx, &plain)?;
            let links = ctx.table("identity_links").await?.select(vec![
                col("id_type").alias("l_type"),
                col("id_value").alias("l_value"),
                col("user_id"),
            ])?;
            let joined = upload
                .join(
                    links,
                    datafusion::common::JoinType::Inner,
                    &["kind", "value"],
                    &["l_type", "l_value"],
                    None,
                )?
                .select(vec![col("line"), col("user_id"), col("kind")])?;
            collect_matches(session, joined, &mut found).await?;
        }
        if !hashed.is_empty() {
            let upload = uploaded_frame(ctx, &hashed)?;
            let [_, hash] = shoal_query::masking::udfs();
            let phones = ctx
                .table("identity_links")
                .await?
                .filter(col("id_type").eq(lit(PHONE)))?
                .select(vec![
                    hash.call(vec![col("id_value")]).alias("l_value"),
                    col("user_id"),
                ])?;
            let joined = upload
                .join(
                    phones,
                    datafusion::common::JoinType::Inner,
                    &["value"],
                    &["l_value"],
                    None,
                )?
                .select(vec![col("line"), col("user_id"), col("kind")])?;
            collect_matches(session, joined, &mut found).await?;
        }
        for (line, (user, kind)) in found {
            let user = merges.survivor(user);
            members.insert(user);
            matched_lines.insert(line);
            *report.by_type.entry(kind).or_default() += 1;
        }
    }
    report.matched = matched_lines.len() as u64;
    let mut unmatched = list.invalid;
    for (line, _, _, raw) in &list.entries {
        if !matched_lines.contains(line) {
            unmatched.push(Unmatched {
                line: *line,
                value: raw.clone(),
                reason: "unmatched",
            });
        }
    }
    report.unmatched = unmatched.len() as u64 - report.invalid;
    Ok((members, report, unmatched))
}

fn uploaded_frame(
    ctx: &datafusion::prelude::SessionContext,
    entries: &[&&(u64, String, String, String)],
) -> Result<datafusion::prelude::DataFrame> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("line", DataType::Int64, false),
        Field::new("kind", DataType::Utf8, false),
        Field::new("value", DataType::Utf8, false),
    ]));
    let batch = RecordBatch::try_new(
        schema,
        vec![
            Arc::new(Int64Array::from_iter_values(
                entries.iter().map(|e| e.0 as i64),
            )),
            Arc::new(StringArray::from_iter_values(entries.iter().map(|e| &e.1))),
            Arc::new(StringArray::from_iter_values(entries.iter().map(|e| &e.2))),
        ],
    )?;
    Ok(ctx.read_batch(batch)?)
}

/// Adds each matched line's person; a line two people share (it cannot happen for capped
/// identity types, but a hashed phone may collide) goes to the lowest id.
async fn collect_matches(
    session: &Session,
    frame: datafusion::prelude::DataFrame,
    found: &mut HashMap<u64, (u32, String)>,
) -> Result<()> {
    for batch in session.collect(frame).await? {
        let lines = arrow::compute::cast(batch.column(0), &DataType::Int64)?;
        let users = arrow::compute::cast(batch.column(1), &DataType::Int64)?;
        let kinds = arrow::compute::cast(batch.column(2), &DataType::Utf8)?;
        let (lines, users, kinds) = (
            lines.as_primitive::<Int64Type>(),
            users.as_primitive::<Int64Type>(),
            kinds.as_string::<i32>(),
        );
        for i in 0..batch.num_rows() {
            if !users.is_valid(i) {
                continue;
            }
            let (Ok(line), Ok(user)) =
                (u64::try_from(lines.value(i)), u32::try_from(users.value(i)))
            else {
                continue;
            };
            let entry = found
                .entry(line)
                .or_insert((user, kinds.value(i).to_string()));
            if user < entry.0 {
                entry.0 = user;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn types() -> Vec<String> {
        vec!["login_id".into(), "phone".into(), "wechat_unionid".into()]
    }

    #[test]
    fn phones_in_any_format_hashes_and_logins_are_recognised() {
        let hash = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        let text = format!(
            "138 1234 5678\n+86-139-0000-0000\n'13700000000\n{hash}\nL42\n\n138****5678\n13812345678\n"
        );
        let list = parse(text.as_bytes(), AUTO, &types()).expect("parses");
        assert_eq!(list.rows, 7);
        assert_eq!(list.duplicates, 1, "+8613812345678 twice");
        let values: Vec<(&str, &str)> = list
            .entries
            .iter()
            .map(|e| (e.1.as_str(), e.2.as_str()))
            .collect();
        assert_eq!(
            values,
            vec![
                ("phone", "+8613812345678"),
                ("phone", "+8613900000000"),
                ("phone", "+8613700000000"),
                ("phone_sha256", &hash.to_ascii_uppercase()[..]),
                ("login_id", "L42"),
            ]
        );
        assert_eq!(list.invalid.len(), 1);
        assert_eq!(list.invalid[0].line, 7);
    }

    #[test]
    fn a_header_picks_the_column_and_the_kind() {
        let text = "\u{feff}name,手机号,city\n张三,13812345678,上海\n李四,\"12,3\",北京\n";
        let list = parse(text.as_bytes(), AUTO, &types()).expect("parses");
        assert_eq!(list.rows, 2);
        assert_eq!(list.entries.len(), 1);
        assert_eq!(list.entries[0].2, "+8613812345678");
        assert_eq!(list.entries[0].0, 2, "line numbers count the header");
        assert_eq!(list.invalid[0].value, "12,3");
        let ids = parse(b"user_id\n7\nx\n4294967296\n", AUTO, &types()).expect("parses");
        assert_eq!(ids.entries.len(), 1);
        assert_eq!(ids.invalid.len(), 2);
    }

    #[test]
    fn unknown_kinds_and_binary_files_are_refused() {
        let error = parse(b"1\n", "passport", &types()).expect_err("kind");
        assert!(error.to_string().starts_with("id_type:"), "{error}");
        let error = parse(&[0x31, 0xff, 0xfe], AUTO, &types()).expect_err("bytes");
        assert!(error.to_string().starts_with("file:"), "{error}");
        let unionids = parse(
            b"o6_bmjrPTlm6_2sgVt7hMZOPfL2M\n",
            "wechat_unionid",
            &types(),
        )
        .expect("parses");
        assert_eq!(unionids.entries[0].1, "wechat_unionid");
    }
}
