//! Uploaded lists: user ids, phones in any common format, SHA-256 hashed phones or any
//! identity type of the catalog (login ids, unionids, buyer ids), one per line or in a CSV
//! column, mapped to people through `identity_links`.

use std::borrow::Cow;
use std::sync::Arc;

use arrow::array::{Array, AsArray};
use arrow::datatypes::{DataType, Int64Type};
use datafusion::error::DataFusionError;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::prelude::{col, lit};
use futures::TryStreamExt;
use roaring::RoaringBitmap;
use serde::Serialize;
use shoal_catalog::MergeLog;
use shoal_ingest::clean::{self, Phone};
use shoal_ingest::identity::graph::{KeyMap, NO_USER};
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

/// A list read and checked, not yet matched. Borrows the file's text for the rows as given.
#[derive(Debug, Default)]
pub struct ParsedList<'a> {
    /// What the matching needs, shared with the tasks that scan `identity_links`.
    lookup: Lookup,
    /// Line in the file of each entry.
    lines: Vec<u64>,
    /// Each entry as given.
    raws: Vec<Cow<'a, str>>,
    invalid: Vec<Unmatched>,
    duplicates: u64,
    rows: u64,
}

/// The valid identifiers of a list in line order, and an index over the distinct ones.
///
/// Identifiers are known by a 128-bit key (xxh3 of the value, seeded by the kind), as in the
/// identity graph: the chance that two distinct ones share a key is below 10⁻²⁰, so the scan
/// matches on keys alone.
#[derive(Debug, Default)]
struct Lookup {
    /// Kinds seen; entries carry their position.
    kinds: Vec<String>,
    /// Kind of each entry; [`REPEAT`] for an identifier given earlier in the list.
    kind_of: Vec<u8>,
    /// Normalised values of the entries, end to end; `ends[i]` closes entry `i`.
    values: String,
    ends: Vec<usize>,
    /// Entry number by key, in shards built side by side ([`shard_of`]).
    shards: Vec<KeyMap<u32>>,
    /// One bit per 1/16 of an entry, set by the high half of each key: most values a scan
    /// meets are not in the list and are turned away here, without a miss in the index.
    filter: Vec<u64>,
}

/// Kind of an entry that repeats an earlier one.
const REPEAT: u8 = u8::MAX;

/// The shard of `key` among `shards`.
fn shard_of(key: u128, shards: usize) -> usize {
    ((key >> 96) as u32 as usize) % shards
}

impl Lookup {
    fn len(&self) -> usize {
        self.kind_of.len()
    }

    fn value(&self, entry: usize) -> &str {
        let start = if entry == 0 { 0 } else { self.ends[entry - 1] };
        &self.values[start..self.ends[entry]]
    }

    fn kind(&self, entry: usize) -> &str {
        self.kinds
            .get(usize::from(self.kind_of[entry]))
            .map_or("", String::as_str)
    }

    fn kind_number(&self, kind: &str) -> Option<u8> {
        self.kinds
            .iter()
            .position(|k| k == kind)
            .and_then(|i| u8::try_from(i).ok())
    }

    /// Sets the filter's bits for every distinct entry; called once the index is built.
    fn seal(&mut self) {
        let distinct: usize = self.shards.iter().map(|s| s.len()).sum();
        let bits = (distinct * 16).next_power_of_two().max(64);
        self.filter = vec![0; bits / 64];
        for shard in &self.shards {
            for key in shard.keys() {
                let bit = ((*key >> 64) as usize) & (bits - 1);
                self.filter[bit / 64] |= 1 << (bit % 64);
            }
        }
    }

    /// Whether the list may hold `key`: false for nearly every key it does not.
    fn passes(&self, key: u128) -> bool {
        if self.filter.is_empty() {
            return false;
        }
        let bit = ((key >> 64) as usize) & (self.filter.len() * 64 - 1);
        self.filter[bit / 64] & (1 << (bit % 64)) != 0
    }

    /// The entry of `key`, if the list holds it.
    fn get(&self, key: u128) -> Option<u32> {
        self.shards
            .get(shard_of(key, self.shards.len().max(1)))?
            .get(&key)
            .copied()
    }

    /// The entry holding `value` of `kind`, if the list has it.
    #[cfg(test)]
    fn find(&self, kind: &str, value: &str) -> Option<u32> {
        let key = key(kind, value);
        if self.passes(key) {
            self.get(key)
        } else {
            None
        }
    }
}

/// The key of identifier `value` of `kind`.
fn key(kind: &str, value: &str) -> u128 {
    seeded_key(kind_seed(kind), value)
}

fn kind_seed(kind: &str) -> u64 {
    kind.bytes()
        .fold(0u64, |h, b| h.wrapping_mul(131).wrapping_add(u64::from(b)))
}

fn seeded_key(seed: u64, value: &str) -> u128 {
    twox_hash::XxHash3_128::oneshot_with_seed(seed, value.as_bytes())
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
pub fn parse<'a>(bytes: &'a [u8], kind: &str, identity_types: &[String]) -> Result<ParsedList<'a>> {
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
    let first = text.lines().next().unwrap_or_default();
    let separator = if first.contains('\t') { '\t' } else { ',' };
    let header: Vec<String> = csv_fields(first, separator);
    let mut column = 0;
    let mut kind = kind;
    // Lines before the body: the header's, when there is one.
    let mut body = text;
    let mut base = 0;
    if let Some((i, k)) = header
        .iter()
        .enumerate()
        .find_map(|(i, h)| header_kind(h).map(|k| (i, k)))
    {
        column = i;
        if kind == AUTO {
            kind = k;
        }
        body = text
            .split_once('\n')
            .map(|(_, rest)| rest)
            .unwrap_or_default();
        base = 1;
    }
    let kinds: Vec<&str> = if kind == AUTO {
        vec![PHONE_SHA256, PHONE, "login_id"]
    } else {
        vec![kind]
    };
    let reading = Reading {
        kinds: &kinds,
        column,
        separator,
    };

    // The body in runs of whole lines, one per core, each read on its own thread.
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    let runs = if body.len() < 1 << 20 { 1 } else { threads };
    let mut parts_of_body = Vec::with_capacity(runs);
    let mut rest = body;
    for i in (1..=runs).rev() {
        let mut cut = rest.len() / i;
        while cut < rest.len() && !rest.is_char_boundary(cut) {
            cut += 1;
        }
        let cut = match rest[cut..].find('\n') {
            Some(at) if i > 1 => cut + at + 1,
            _ => rest.len(),
        };
        let (run, after) = rest.split_at(cut);
        parts_of_body.push((run, base));
        base += run.bytes().filter(|&b| b == b'\n').count() as u64;
        rest = after;
    }
    let parts = std::thread::scope(|scope| {
        let handles: Vec<_> = parts_of_body
            .into_iter()
            .map(|(run, base)| scope.spawn(move || reading.part(run, base)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(Error::Internal("reading a list failed".into())))
            })
            .collect::<Result<Vec<Part>>>()
    })?;

    // Each shard of the index is built on its own thread from every part in line order, so
    // the first of repeated identifiers is the one kept.
    let rows: u64 = parts.iter().map(|p| p.rows).sum();
    if rows as usize > MAX_ROWS {
        return Err(too_many_rows());
    }
    let mut offsets = Vec::with_capacity(parts.len());
    let mut entries = 0;
    for part in &parts {
        offsets.push(entries);
        entries += part.keys.len();
    }
    let shard_count = threads.max(1);
    let built = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..shard_count)
            .map(|shard| {
                let (parts, offsets) = (&parts, &offsets);
                scope.spawn(move || {
                    let mut index: KeyMap<u32> = KeyMap::with_capacity_and_hasher(
                        entries / shard_count + entries / (8 * shard_count) + 16,
                        Default::default(),
                    );
                    let mut repeats = Vec::new();
                    for (part, offset) in parts.iter().zip(offsets) {
                        for (i, &key) in part.keys.iter().enumerate() {
                            if shard_of(key, shard_count) != shard {
                                continue;
                            }
                            let entry = offset + i;
                            match index.entry(key) {
                                std::collections::hash_map::Entry::Occupied(_) => {
                                    repeats.push(entry)
                                }
                                std::collections::hash_map::Entry::Vacant(slot) => {
                                    slot.insert(entry as u32);
                                }
                            }
                        }
                    }
                    (index, repeats)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .map_err(|_| Error::Internal("indexing a list failed".into()))
            })
            .collect::<Result<Vec<_>>>()
    })?;

    let value_bytes: usize = parts.iter().map(|p| p.values.len()).sum();
    let mut out = ParsedList {
        lookup: Lookup {
            kinds: kinds.iter().map(|k| k.to_string()).collect(),
            ends: Vec::with_capacity(entries),
            kind_of: Vec::with_capacity(entries),
            values: String::with_capacity(value_bytes),
            ..Lookup::default()
        },
        lines: Vec::with_capacity(entries),
        raws: Vec::with_capacity(entries),
        rows,
        ..ParsedList::default()
    };
    for part in parts {
        let lookup = &mut out.lookup;
        let base = lookup.values.len();
        lookup.values.push_str(&part.values);
        lookup.ends.extend(part.ends.iter().map(|end| base + end));
        lookup.kind_of.extend(part.kind_of);
        out.lines.extend(part.lines);
        out.raws.extend(part.raws);
        out.invalid.extend(part.invalid);
    }
    for (index, repeats) in built {
        out.duplicates += repeats.len() as u64;
        for entry in repeats {
            out.lookup.kind_of[entry] = REPEAT;
        }
        out.lookup.shards.push(index);
    }
    out.lookup.seal();
    Ok(out)
}

fn too_many_rows() -> Error {
    Error::invalid("file", format!("more than {MAX_ROWS} rows; split the list"))
}

/// How the lines of one list are read.
#[derive(Clone, Copy)]
struct Reading<'k> {
    /// Kinds an entry may have; `[AUTO's three]` or the one asked for.
    kinds: &'k [&'k str],
    column: usize,
    separator: char,
}

/// The valid identifiers of a run of lines, in line order, repeats included.
#[derive(Default)]
struct Part<'a> {
    keys: Vec<u128>,
    kind_of: Vec<u8>,
    values: String,
    ends: Vec<usize>,
    lines: Vec<u64>,
    raws: Vec<Cow<'a, str>>,
    invalid: Vec<Unmatched>,
    rows: u64,
}

impl Reading<'_> {
    /// Reads `run`, whose first line is line `base + 1` of the file.
    fn part<'a>(&self, run: &'a str, base: u64) -> Result<Part<'a>> {
        let expected = run.len() / 12;
        let mut part = Part {
            keys: Vec::with_capacity(expected),
            kind_of: Vec::with_capacity(expected),
            values: String::with_capacity(run.len()),
            ends: Vec::with_capacity(expected),
            lines: Vec::with_capacity(expected),
            raws: Vec::with_capacity(expected),
            ..Part::default()
        };
        for (index, line) in run.lines().enumerate() {
            let line_number = base + index as u64 + 1;
            if line.trim().is_empty() {
                continue;
            }
            part.rows += 1;
            if part.rows as usize > MAX_ROWS {
                return Err(too_many_rows());
            }
            // Lines without quotes (nearly all) are split without copying.
            let raw: Cow<'a, str> = if line.contains('"') {
                let mut fields = csv_fields(line, self.separator);
                if self.column < fields.len() {
                    Cow::Owned(fields.swap_remove(self.column).trim().to_string())
                } else {
                    Cow::Borrowed("")
                }
            } else {
                Cow::Borrowed(
                    line.split(self.separator)
                        .nth(self.column)
                        .map(str::trim)
                        .unwrap_or_default(),
                )
            };
            let start = part.values.len();
            let Some(kind) = self.normalise(&raw, &mut part.values) else {
                part.invalid.push(Unmatched {
                    line: line_number,
                    value: raw.into_owned(),
                    reason: "invalid",
                });
                continue;
            };
            part.keys
                .push(key(self.kinds[usize::from(kind)], &part.values[start..]));
            part.kind_of.push(kind);
            part.ends.push(part.values.len());
            part.lines.push(line_number);
            part.raws.push(raw);
        }
        Ok(part)
    }

    /// Appends the normalised identifier to `values` and gives its kind (a position in
    /// `kinds`), or `None` when `raw` is not an identifier of the kinds asked for.
    fn normalise(&self, raw: &str, values: &mut String) -> Option<u8> {
        let phone = |values: &mut String| match clean::phone("phone", raw) {
            Ok(Phone::Valid(e164)) => {
                values.push_str(&e164);
                true
            }
            _ => false,
        };
        let sha = |values: &mut String| values.extend(raw.chars().map(|c| c.to_ascii_uppercase()));
        match self.kinds {
            [PHONE_SHA256, PHONE, _login] => {
                if raw.is_empty() || raw.contains('*') {
                    None
                } else if is_sha256(raw) {
                    sha(values);
                    Some(0)
                } else if phone(values) {
                    Some(1)
                } else {
                    values.push_str(raw);
                    Some(2)
                }
            }
            [USER_ID] => raw.parse::<u32>().ok().map(|id| {
                values.push_str(&id.to_string());
                0
            }),
            [PHONE] => phone(values).then_some(0),
            [PHONE_SHA256] => is_sha256(raw).then(|| {
                sha(values);
                0
            }),
            _ => (!raw.is_empty()).then(|| {
                values.push_str(raw);
                0
            }),
        }
    }
}

/// Maps a parsed list to people at `session`'s snapshot: the members, the report and the rows
/// that found nobody (invalid ones first, then unmatched, each in line order).
///
/// User ids are looked up in the snapshot's universe. Every other kind is matched in one scan
/// of `identity_links` (only the types the list holds), each partition on its own task probing
/// the list's index; hashed phones are matched by hashing each phone of the scan.
pub async fn match_list(
    engine: &Engine,
    session: &Session,
    list: ParsedList<'_>,
) -> Result<(RoaringBitmap, MatchReport, Vec<Unmatched>)> {
    let ParsedList {
        lookup,
        lines,
        raws,
        invalid,
        duplicates,
        rows,
    } = list;
    let mut report = MatchReport {
        rows,
        invalid: invalid.len() as u64,
        duplicates,
        ..MatchReport::default()
    };
    let merges: MergeLog = session.merge_log().await?;
    // The person each entry found (the lowest id when a value is shared), before merges.
    let mut found = vec![NO_USER; lookup.len()];

    if let Some(user_kind) = lookup.kind_number(USER_ID) {
        let universe = engine.universe(session).await?;
        for (entry, slot) in found.iter_mut().enumerate() {
            if lookup.kind_of[entry] == user_kind
                && let Ok(id) = lookup.value(entry).parse::<u32>()
                && universe.contains(merges.survivor(id))
            {
                *slot = id;
            }
        }
    }

    let hashed = lookup.kind_number(PHONE_SHA256).is_some();
    let mut types: Vec<String> = lookup
        .kinds
        .iter()
        .filter(|k| *k != USER_ID && *k != PHONE_SHA256)
        .cloned()
        .collect();
    if hashed && !types.iter().any(|t| t == PHONE) {
        types.push(PHONE.to_string());
    }
    let lookup = Arc::new(lookup);
    if !types.is_empty() {
        for (entry, user) in scan_links(session, &lookup, &types, hashed).await? {
            let slot = &mut found[entry as usize];
            *slot = (*slot).min(user);
        }
    }

    let mut members: Vec<u32> = Vec::with_capacity(found.len());
    let mut unmatched = invalid;
    for (entry, &user) in found.iter().enumerate() {
        if lookup.kind_of[entry] == REPEAT {
            continue;
        }
        if user == NO_USER {
            unmatched.push(Unmatched {
                line: lines[entry],
                value: raws[entry].to_string(),
                reason: "unmatched",
            });
            continue;
        }
        members.push(merges.survivor(user));
        report.matched += 1;
        *report
            .by_type
            .entry(lookup.kind(entry).to_string())
            .or_default() += 1;
    }
    members.sort_unstable();
    members.dedup();
    let members = RoaringBitmap::from_sorted_iter(members)
        .map_err(|e| Error::Internal(format!("members out of order: {e}")))?;
    report.unmatched = unmatched.len() as u64 - report.invalid;
    Ok((members, report, unmatched))
}

/// Scans the links of `types` and returns (entry, user) for every link the list holds.
async fn scan_links(
    session: &Session,
    lookup: &Arc<Lookup>,
    types: &[String],
    hashed: bool,
) -> Result<Vec<(u32, u32)>> {
    let frame = session
        .context()
        .table("identity_links")
        .await?
        .filter(col("id_type").in_list(types.iter().map(lit).collect(), false))?
        .select_columns(&["id_type", "id_value", "user_id"])?;
    let streams = session.limited(frame.execute_stream_partitioned()).await?;
    let tasks: Vec<_> = streams
        .into_iter()
        .map(|stream| tokio::spawn(probe(stream, Arc::clone(lookup), hashed)))
        .collect();
    let work = async {
        let mut hits = Vec::new();
        for task in tasks {
            let part = task
                .await
                .map_err(|e| DataFusionError::External(Box::new(e)))??;
            hits.extend(part);
        }
        Ok::<_, DataFusionError>(hits)
    };
    Ok(session.limited(work).await?)
}

/// Probes one partition of links against the list.
///
/// Each batch goes in stages — every row's key, then the filter over all keys, then the index
/// for the few that pass — so the memory reads of one stage overlap instead of waiting on
/// each other row by row.
async fn probe(
    mut stream: SendableRecordBatchStream,
    lookup: Arc<Lookup>,
    hashed: bool,
) -> datafusion::error::Result<Vec<(u32, u32)>> {
    let mut hits = Vec::new();
    // (key, user) of each link of the batch, and of each phone's hash when the list has some.
    let mut keyed: Vec<(u128, u32)> = Vec::new();
    let mut passed: Vec<(u128, u32)> = Vec::new();
    let sha_seed = kind_seed(PHONE_SHA256);
    while let Some(batch) = stream.try_next().await? {
        let types = arrow::compute::cast(batch.column(0), &DataType::Utf8View)?;
        let values = arrow::compute::cast(batch.column(1), &DataType::Utf8View)?;
        let users = arrow::compute::cast(batch.column(2), &DataType::Int64)?;
        let (types, values, users) = (
            types.as_string_view(),
            values.as_string_view(),
            users.as_primitive::<Int64Type>(),
        );
        keyed.clear();
        let mut seed = (String::new(), 0);
        for i in 0..batch.num_rows() {
            if types.is_null(i) || values.is_null(i) || users.is_null(i) {
                continue;
            }
            let Ok(user) = u32::try_from(users.value(i)) else {
                continue;
            };
            let (kind, value) = (types.value(i), values.value(i));
            if seed.0 != kind {
                seed = (kind.to_string(), kind_seed(kind));
            }
            keyed.push((seeded_key(seed.1, value), user));
            if hashed && kind == PHONE {
                let hex = shoal_query::masking::hash_hex(value);
                keyed.push((
                    twox_hash::XxHash3_128::oneshot_with_seed(sha_seed, &hex),
                    user,
                ));
            }
        }
        passed.clear();
        passed.extend(keyed.iter().filter(|(key, _)| lookup.passes(*key)));
        hits.extend(
            passed
                .iter()
                .filter_map(|(key, user)| lookup.get(*key).map(|entry| (entry, *user))),
        );
    }
    Ok(hits)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (line, kind, normalised value) of each entry.
    fn entries<'l>(list: &'l ParsedList<'_>) -> Vec<(u64, &'l str, &'l str)> {
        (0..list.lookup.len())
            .filter(|&i| list.lookup.kind_of[i] != REPEAT)
            .map(|i| (list.lines[i], list.lookup.kind(i), list.lookup.value(i)))
            .collect()
    }

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
        let values: Vec<(&str, &str)> = entries(&list).iter().map(|e| (e.1, e.2)).collect();
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
    fn a_long_list_read_in_runs_keeps_line_numbers_and_first_occurrences() {
        // Over a mebibyte, so it is read in runs on several threads; header, CRLF lines, a
        // blank line, invalid rows and repeats spread over the whole file.
        let mut text = String::from("手机号\r\n");
        let mut expected = Vec::new();
        let mut invalid = Vec::new();
        for i in 0..150_000u64 {
            let line = i + 2;
            if i % 10_007 == 5 {
                text.push_str("not a phone\r\n");
                invalid.push(line);
            } else if i == 77_777 {
                text.push_str("\r\n");
            } else if i % 50_000 == 49_999 {
                text.push_str("138 0000 0000\r\n"); // repeats line 2's phone
            } else {
                text.push_str(&format!("138{:08}\r\n", i));
                expected.push((line, format!("+86138{i:08}")));
            }
        }
        assert!(text.len() > 1 << 20);
        let list = parse(text.as_bytes(), AUTO, &types()).expect("parses");
        assert_eq!(list.rows, 149_999);
        assert_eq!(list.duplicates, 3);
        let got: Vec<(u64, String)> = entries(&list)
            .into_iter()
            .map(|(line, kind, value)| {
                assert_eq!(kind, "phone");
                (line, value.to_string())
            })
            .collect();
        assert_eq!(got, expected);
        let bad: Vec<u64> = list.invalid.iter().map(|u| u.line).collect();
        assert_eq!(bad, invalid);
        assert_eq!(list.raws[1], "13800000001");
        // The index finds each distinct phone at its first line, and no other value.
        for (i, (line, value)) in expected.iter().enumerate().step_by(997) {
            let entry = list.lookup.find("phone", value).expect("indexed") as usize;
            assert_eq!(list.lines[entry], *line, "entry {i}");
        }
        let first = list.lookup.find("phone", "+8613800000000").expect("line 2");
        assert_eq!(
            list.lines[first as usize], 2,
            "a repeat never replaces the first"
        );
        assert_eq!(list.lookup.find("phone", "+8613999999999"), None);
        assert_eq!(list.lookup.find("login_id", "+8613800000001"), None);
    }

    #[test]
    fn a_header_picks_the_column_and_the_kind() {
        let text = "\u{feff}name,手机号,city\n张三,13812345678,上海\n李四,\"12,3\",北京\n";
        let list = parse(text.as_bytes(), AUTO, &types()).expect("parses");
        assert_eq!(list.rows, 2);
        assert_eq!(entries(&list), vec![(2, "phone", "+8613812345678")]);
        assert_eq!(list.invalid[0].value, "12,3");
        let ids = parse(b"user_id\n7\nx\n4294967296\n", AUTO, &types()).expect("parses");
        assert_eq!(entries(&ids), vec![(2, "user_id", "7")]);
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
        assert_eq!(entries(&unionids)[0].1, "wechat_unionid");
    }
}
