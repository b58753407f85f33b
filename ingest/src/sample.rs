//! The deterministic sample world behind `shoal demo-data` and `shoal demo`.
//!
//! A home-appliance brand selling on its own site and mini-program (tracked with Segment
//! libraries), on Youzan and on Tmall. People browse, buy, follow and unfollow the official
//! account and receive campaign messages; many use several devices and log in later, and the
//! same phone shows up on several platforms under different buyer ids. About 2% of the rows
//! are bad the way real feeds are bad (broken JSON, impossible timestamps, negative amounts,
//! malformed phones, re-sent messages, missing required fields); `manifest.json` counts what
//! was planted, per file and kind, so tests can check that ingest accounts for every row.
//!
//! Same options, same bytes: every random draw comes from seeded ChaCha streams and nothing
//! depends on the clock or on hash iteration order. Events are generated in memory and sorted
//! by time, which suits worlds up to a few hundred thousand people.

mod platform;
mod segment;
mod world;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use chrono::NaiveDate;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};
use platform::{
    TMALL_CSV_HEADER, Trade, YOUZAN_CSV_HEADER, csv_line, tmall_csv, trades, youzan_csv,
    youzan_json,
};
use world::{Calendar, Person};

/// What world to generate.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SampleOptions {
    /// Number of people.
    pub users: u32,
    /// Seed of every random draw.
    pub seed: u64,
    /// Last day of the window (Beijing time).
    pub end: NaiveDate,
    /// Length of the window in days.
    pub days: u32,
    /// Index of the first person. A large world written in parts gives each part its own
    /// range of people, so logins, buyer ids and order ids never collide across parts.
    #[serde(default)]
    pub first: u32,
}

/// One file of the sample world.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SampleFile {
    /// File name inside the output folder.
    pub file: String,
    /// The `--source` kind that imports it.
    pub source: String,
    /// Text encoding.
    pub encoding: String,
    /// Data rows written (lines for JSON lines, records after the header for CSV).
    pub rows: u64,
    /// Bad rows planted, by kind.
    pub planted: BTreeMap<String, u64>,
}

/// What was written: `manifest.json` in the output folder.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SampleManifest {
    /// The options used.
    pub users: u32,
    /// Seed used.
    pub seed: u64,
    /// Last day of the window.
    pub end: NaiveDate,
    /// Window length.
    pub days: u32,
    /// Anonymous ids planted on many people's devices (a shop's demo tablet): identity merge
    /// must not fuse their users into one person.
    pub shared_devices: Vec<String>,
    /// Every file, in the order to import them.
    pub files: Vec<SampleFile>,
}

/// Kinds of planted bad rows.
pub mod planted {
    /// A JSON line cut short.
    pub const BROKEN_JSON: &str = "broken_json";
    /// A timestamp that is not a real time or lies far outside the window.
    pub const BAD_TIMESTAMP: &str = "bad_timestamp";
    /// A required field missing (event name, every id, order id).
    pub const MISSING_REQUIRED: &str = "missing_required";
    /// A negative amount or price.
    pub const NEGATIVE_AMOUNT: &str = "negative_amount";
    /// A phone that is not a phone.
    pub const BAD_PHONE: &str = "bad_phone";
    /// A message re-sent with the same messageId.
    pub const DUPLICATE_MESSAGE: &str = "duplicate_message_id";
    /// The same order twice in one report.
    pub const DUPLICATE_ORDER: &str = "duplicate_order";
    /// A CSV record with the wrong number of fields.
    pub const BROKEN_RECORD: &str = "broken_record";
}

/// Writes the sample world into `dir` and returns its manifest (also written as
/// `manifest.json`). `progress` hears (phase, done, total).
pub fn write_sample(
    dir: &Path,
    options: &SampleOptions,
    progress: &mut dyn FnMut(&str, u64, u64),
) -> Result<SampleManifest> {
    if options.users == 0 || options.days == 0 {
        return Err(Error::InvalidOptions(
            "a sample world needs at least one user and one day".into(),
        ));
    }
    if options.first.checked_add(options.users).is_none() {
        return Err(Error::InvalidOptions(format!(
            "people {} to {} + {} do not fit in 32-bit indexes",
            options.first, options.first, options.users
        )));
    }
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let mut people_rng = ChaCha8Rng::seed_from_u64(options.seed);
    let mut people: Vec<Person> = (0..options.users)
        .map(|i| Person::generate(&mut people_rng, options.first + i))
        .collect();
    let shared_devices = plant_shared_devices(options, &mut people);
    let calendar = Calendar::new(options.end, options.days);

    let mut files = Vec::new();
    files.push(write_events(dir, options, &people, &calendar, progress)?);
    files.extend(write_youzan(dir, options, &people, &calendar)?);
    progress("orders", 2, 3);
    files.push(write_tmall(dir, options, &people, &calendar)?);
    progress("orders", 3, 3);

    write_truth(dir, &people)?;
    let manifest = SampleManifest {
        users: options.users,
        seed: options.seed,
        end: options.end,
        days: options.days,
        shared_devices,
        files,
    };
    let path = dir.join("manifest.json");
    let text = serde_json::to_string_pretty(&manifest)
        .map_err(|e| Error::Internal(format!("manifest: {e}")))?;
    std::fs::write(&path, text + "\n").map_err(|e| Error::io(&path, e))?;
    Ok(manifest)
}

/// The file holding every person's true identities (not for import: tests compare identity
/// merge with it).
pub const TRUTH_FILE: &str = "truth.jsonl";

/// One person as the world made them, in `truth.jsonl`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TruePerson {
    /// Index of the person.
    pub person: u32,
    /// Identities by catalog type (`anonymous_id`, `login_id`, `phone` in E.164, …).
    pub identities: BTreeMap<String, Vec<String>>,
}

fn write_truth(dir: &Path, people: &[Person]) -> Result<()> {
    let mut out = create(dir, TRUTH_FILE)?;
    let path = dir.join(TRUTH_FILE);
    for (i, p) in people.iter().enumerate() {
        let mut identities: BTreeMap<String, Vec<String>> = BTreeMap::new();
        identities.insert("anonymous_id".into(), p.devices.clone());
        let mut put = |ty: &str, v: Option<String>| {
            if let Some(v) = v {
                identities.insert(ty.to_string(), vec![v]);
            }
        };
        put("login_id", p.login.clone());
        put("phone", p.phone.as_ref().map(|n| format!("+86{n}")));
        put("wechat_unionid", p.unionid.clone());
        put(
            "youzan_buyer_id",
            p.youzan.as_ref().map(|y| y.0.to_string()),
        );
        put("tmall_buyer_id", p.tmall.clone());
        let line = serde_json::to_string(&TruePerson {
            person: i as u32,
            identities,
        })
        .map_err(|e| Error::Internal(format!("truth: {e}")))?;
        writeln!(out, "{line}").map_err(|e| Error::io(&path, e))?;
    }
    out.flush().map_err(|e| Error::io(&path, e))
}

/// One shop tablet per 2,000 people, each used by 25 of them.
fn plant_shared_devices(options: &SampleOptions, people: &mut [Person]) -> Vec<String> {
    if people.len() < 50 {
        return Vec::new();
    }
    let mut rng = ChaCha8Rng::seed_from_u64(options.seed ^ 0x5e6e_0007);
    let count = (people.len() / 2000).max(1);
    (0..count)
        .map(|_| {
            let device = format!("anon-shop-tablet-{}", world::hex(&mut rng, 8));
            for _ in 0..25 {
                let who = rng.random_range(0..people.len());
                people[who].devices.push(device.clone());
            }
            device
        })
        .collect()
}

fn create(dir: &Path, name: &str) -> Result<BufWriter<File>> {
    let path = dir.join(name);
    File::create(&path)
        .map(|f| BufWriter::with_capacity(1 << 20, f))
        .map_err(|e| Error::io(&path, e))
}

fn bump(planted: &mut BTreeMap<String, u64>, kind: &str) {
    *planted.entry(kind.to_string()).or_insert(0) += 1;
}

fn write_events(
    dir: &Path,
    options: &SampleOptions,
    people: &[Person],
    calendar: &Calendar,
    progress: &mut dyn FnMut(&str, u64, u64),
) -> Result<SampleFile> {
    let mut rng = ChaCha8Rng::seed_from_u64(options.seed ^ 0x5e6e_0001);
    // Messages are written in time order. Rather than holding the whole world in memory,
    // each person's messages are spilled into one file per day, and each day is sorted alone.
    let spill_dir = dir.join(".events-by-day");
    std::fs::create_dir_all(&spill_dir).map_err(|e| Error::io(&spill_dir, e))?;
    let mut spill: BTreeMap<NaiveDate, BufWriter<File>> = BTreeMap::new();
    let mut messages = Vec::new();
    // A person places at most one order per session, and has at most 120 sessions.
    let (mut seq, mut orders) = (0u64, u64::from(options.first) * 120);
    let total = people.len() as u64;
    for (i, person) in people.iter().enumerate() {
        segment::person_messages(
            &mut rng,
            person,
            calendar,
            &mut seq,
            &mut orders,
            &mut messages,
        );
        segment::campaign_messages(&mut rng, person, options.end, &mut seq, &mut messages);
        for message in messages.drain(..) {
            let day = message.at.date();
            let file = match spill.entry(day) {
                std::collections::btree_map::Entry::Occupied(f) => f.into_mut(),
                std::collections::btree_map::Entry::Vacant(v) => {
                    let path = spill_dir.join(day.to_string());
                    let file = File::create(&path).map_err(|e| Error::io(&path, e))?;
                    v.insert(BufWriter::new(file))
                }
            };
            let stamp = message.at.and_utc().timestamp_micros();
            writeln!(file, "{stamp}\t{}\t{}", message.seq, message.body)
                .map_err(|e| Error::io(&spill_dir, e))?;
        }
        if i % 1000 == 0 {
            progress("events", i as u64, total);
        }
    }
    progress("events", total, total);
    let days: Vec<NaiveDate> = spill.keys().copied().collect();
    for (_, mut file) in std::mem::take(&mut spill) {
        file.flush().map_err(|e| Error::io(&spill_dir, e))?;
    }
    let read_day = |day: &NaiveDate| -> Result<Vec<(i64, u64, String)>> {
        let path = spill_dir.join(day.to_string());
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        let mut rows: Vec<(i64, u64, String)> = text
            .lines()
            .filter_map(|line| {
                let mut parts = line.splitn(3, '\t');
                let at = parts.next()?.parse().ok()?;
                let seq = parts.next()?.parse().ok()?;
                Some((at, seq, parts.next()?.to_string()))
            })
            .collect();
        rows.sort_unstable_by_key(|(at, seq, _)| (*at, *seq));
        Ok(rows)
    };
    let messages = days
        .iter()
        .map(read_day)
        .flat_map(|day| match day {
            Ok(rows) => rows.into_iter().map(Ok).collect::<Vec<_>>(),
            Err(e) => vec![Err(e)],
        })
        .map(|row| {
            row.and_then(|(_, _, body)| {
                serde_json::from_str::<Value>(&body)
                    .map_err(|e| Error::Internal(format!("spilled sample message: {e}")))
            })
        });

    let name = "events.jsonl";
    let mut out = create(dir, name)?;
    let mut planted = BTreeMap::new();
    let mut bad = ChaCha8Rng::seed_from_u64(options.seed ^ 0x5e6e_0002);
    let mut resend: Vec<(usize, String)> = Vec::new();
    let mut rows = 0u64;
    for (index, message) in messages.enumerate() {
        let mut body = message?;
        let (line, spoilt) = corrupt_event(&mut bad, &mut body, &mut planted);
        writeln!(out, "{line}").map_err(|e| Error::io(&dir.join(name), e))?;
        rows += 1;
        // Retries re-send a message exactly, with its messageId.
        if !spoilt && bad.random_bool(0.006) {
            resend.push((index + bad.random_range(1..50), line));
        }
        while let Some(pos) = resend.iter().position(|(at, _)| *at <= index) {
            let (_, again) = resend.swap_remove(pos);
            writeln!(out, "{again}").map_err(|e| Error::io(&dir.join(name), e))?;
            rows += 1;
            bump(&mut planted, planted::DUPLICATE_MESSAGE);
        }
    }
    resend.sort();
    for (_, again) in resend {
        writeln!(out, "{again}").map_err(|e| Error::io(&dir.join(name), e))?;
        rows += 1;
        bump(&mut planted, planted::DUPLICATE_MESSAGE);
    }
    out.flush().map_err(|e| Error::io(&dir.join(name), e))?;
    std::fs::remove_dir_all(&spill_dir).map_err(|e| Error::io(&spill_dir, e))?;
    Ok(SampleFile {
        file: name.into(),
        source: "segment".into(),
        encoding: "utf-8".into(),
        rows,
        planted,
    })
}

const BAD_TIMES: &[&str] = &[
    "2026-02-30T10:00:00Z",
    "2026-13-01T08:00:00Z",
    "1970-01-01T00:00:00Z",
    "2099-12-31T23:59:59Z",
    "yesterday",
];
const BAD_PHONES: &[&str] = &["12345", "138abcd5678", "1381234567", "000-0000"];

/// Spoils about 1.5% of messages in one of the ways real feeds are spoilt.
fn corrupt_event(
    rng: &mut ChaCha8Rng,
    body: &mut Value,
    planted: &mut BTreeMap<String, u64>,
) -> (String, bool) {
    let is_purchase = body.get("event").and_then(Value::as_str) == Some("purchase");
    let has_phone = body.pointer("/traits/phone").is_some();
    if is_purchase && rng.random_bool(0.08) {
        if let Some(revenue) = body.pointer_mut("/properties/revenue") {
            let value = revenue.as_f64().unwrap_or(1.0);
            *revenue = Value::from(-value.abs().max(1.0));
            bump(planted, planted::NEGATIVE_AMOUNT);
            return (body.to_string(), true);
        }
    } else if has_phone && rng.random_bool(0.08) {
        if let Some(phone) = body.pointer_mut("/traits/phone") {
            *phone = Value::from(BAD_PHONES[rng.random_range(0..BAD_PHONES.len())]);
            bump(planted, planted::BAD_PHONE);
            return (body.to_string(), true);
        }
    } else {
        let roll: f64 = rng.random();
        if roll < 0.003 {
            body["timestamp"] = Value::from(BAD_TIMES[rng.random_range(0..BAD_TIMES.len())]);
            bump(planted, planted::BAD_TIMESTAMP);
            return (body.to_string(), true);
        } else if roll < 0.007 {
            if let Some(object) = body.as_object_mut() {
                if object.get("type").and_then(Value::as_str) == Some("track")
                    && rng.random_bool(0.5)
                {
                    object.remove("event");
                } else {
                    object.remove("anonymousId");
                    object.remove("userId");
                }
            }
            bump(planted, planted::MISSING_REQUIRED);
            return (body.to_string(), true);
        } else if roll < 0.011 {
            let text = body.to_string();
            let cut = rng.random_range(1..text.len().max(2) - 1);
            let cut = (0..=cut)
                .rev()
                .find(|i| text.is_char_boundary(*i))
                .unwrap_or(0);
            bump(planted, planted::BROKEN_JSON);
            return (text[..cut].to_string(), true);
        }
    }
    (body.to_string(), false)
}

/// Spoils about 2% of order records; `json` decides whether a cut-short record is possible.
fn corrupt_order(
    rng: &mut ChaCha8Rng,
    fields: &mut Vec<(String, String)>,
    id_key: &str,
    amount_key: &str,
    time_key: &str,
    phone_key: &str,
    planted: &mut BTreeMap<String, u64>,
) -> Option<&'static str> {
    let roll: f64 = rng.random();
    let set = |fields: &mut Vec<(String, String)>, key: &str, value: String| {
        if let Some(slot) = fields.iter_mut().find(|(k, _)| k == key) {
            slot.1 = value;
        }
    };
    let kind = if roll < 0.005 {
        set(fields, id_key, String::new());
        planted::MISSING_REQUIRED
    } else if roll < 0.01 {
        let amount = fields
            .iter()
            .find(|(k, _)| k == amount_key)
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        // An unpaid order's amount is 0.00, and -0.00 is no negative amount.
        let amount = amount.trim_start_matches('-');
        let amount = if amount.trim_start_matches(['0', '.']).is_empty() {
            "1.00"
        } else {
            amount
        };
        set(fields, amount_key, format!("-{amount}"));
        planted::NEGATIVE_AMOUNT
    } else if roll < 0.015 {
        set(
            fields,
            time_key,
            ["2026-13-45 25:61:00", "0000-00-00 00:00:00", "31/02/2026"][rng.random_range(0..3)]
                .into(),
        );
        planted::BAD_TIMESTAMP
    } else if roll < 0.02 {
        set(
            fields,
            phone_key,
            BAD_PHONES[rng.random_range(0..BAD_PHONES.len())].into(),
        );
        planted::BAD_PHONE
    } else {
        return None;
    };
    bump(planted, kind);
    Some(kind)
}

fn write_youzan(
    dir: &Path,
    options: &SampleOptions,
    people: &[Person],
    calendar: &Calendar,
) -> Result<Vec<SampleFile>> {
    let mut rng = ChaCha8Rng::seed_from_u64(options.seed ^ 0x5e6e_0003);
    let all = trades(
        &mut rng,
        people,
        |p| p.youzan.is_some(),
        calendar,
        options.end,
        |rng, n| {
            format!(
                "E2026{:08}{:06}",
                // At most six trades per person.
                10_000_000 + n + options.first as usize * 6,
                rng.random_range(0..1_000_000u32)
            )
        },
    );

    // Open API trades, JSON lines.
    let name = "youzan_trades.jsonl";
    let mut out = create(dir, name)?;
    let mut planted = BTreeMap::new();
    let mut bad = ChaCha8Rng::seed_from_u64(options.seed ^ 0x5e6e_0004);
    for trade in &all {
        let mut value = youzan_json(trade, &people[trade.person]);
        let mut fields: Vec<(String, String)> = ["tid", "payment", "created", "receiver_mobile"]
            .iter()
            .map(|k| {
                (
                    k.to_string(),
                    value[*k].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect();
        let spoilt = corrupt_order(
            &mut bad,
            &mut fields,
            "tid",
            "payment",
            "created",
            "receiver_mobile",
            &mut planted,
        );
        if spoilt == Some(planted::MISSING_REQUIRED) {
            if let Some(o) = value.as_object_mut() {
                o.remove("tid");
            }
        } else if spoilt.is_some() {
            for (k, v) in fields {
                value[k.as_str()] = Value::from(v);
            }
        }
        let mut line = value.to_string();
        if spoilt.is_none() && bad.random_bool(0.003) {
            let cut = (0..=line.len() / 2)
                .rev()
                .find(|i| line.is_char_boundary(*i))
                .unwrap_or(0);
            line.truncate(cut);
            bump(&mut planted, planted::BROKEN_JSON);
        }
        writeln!(out, "{line}").map_err(|e| Error::io(&dir.join(name), e))?;
    }
    out.flush().map_err(|e| Error::io(&dir.join(name), e))?;
    let api = SampleFile {
        file: name.into(),
        source: "youzan".into(),
        encoding: "utf-8".into(),
        rows: all.len() as u64,
        planted,
    };

    // The console export a week later: the last 30 days' trades, statuses moved on.
    let recent_from =
        calendar.first + chrono::Duration::days(i64::from(options.days.saturating_sub(30)));
    let later: Vec<Trade> = all
        .iter()
        .filter(|t| t.created.date() >= recent_from)
        .map(|t| t.later(&mut rng))
        .collect();
    let name = "youzan_export.csv";
    let mut out = create(dir, name)?;
    let mut planted = BTreeMap::new();
    let mut text = String::from("\u{feff}");
    text.push_str(&csv_line(
        &YOUZAN_CSV_HEADER
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>(),
    ));
    for trade in &later {
        let row = youzan_csv(trade, &people[trade.person]);
        text.push_str(&csv_record(
            &mut bad,
            YOUZAN_CSV_HEADER,
            row,
            ("订单号", "订单实付金额", "订单创建时间", "收货人手机号"),
            &mut planted,
        ));
    }
    out.write_all(text.as_bytes())
        .map_err(|e| Error::io(&dir.join(name), e))?;
    out.flush().map_err(|e| Error::io(&dir.join(name), e))?;
    let export = SampleFile {
        file: name.into(),
        source: "youzan".into(),
        encoding: "utf-8-bom".into(),
        rows: later.len() as u64,
        planted,
    };
    Ok(vec![api, export])
}

fn csv_record(
    rng: &mut ChaCha8Rng,
    header: &[&str],
    row: Vec<String>,
    keys: (&str, &str, &str, &str),
    planted: &mut BTreeMap<String, u64>,
) -> String {
    let mut fields: Vec<(String, String)> = header.iter().map(|h| h.to_string()).zip(row).collect();
    let spoilt = corrupt_order(rng, &mut fields, keys.0, keys.1, keys.2, keys.3, planted);
    let mut values: Vec<String> = fields.into_iter().map(|(_, v)| v).collect();
    if spoilt.is_none() && rng.random_bool(0.003) {
        values.truncate(values.len() / 2);
        bump(planted, planted::BROKEN_RECORD);
    }
    csv_line(&values)
}

fn write_tmall(
    dir: &Path,
    options: &SampleOptions,
    people: &[Person],
    calendar: &Calendar,
) -> Result<SampleFile> {
    let mut rng = ChaCha8Rng::seed_from_u64(options.seed ^ 0x5e6e_0005);
    let all = trades(
        &mut rng,
        people,
        |p| p.tmall.is_some(),
        calendar,
        options.end,
        |rng, _| {
            format!(
                "{}",
                3_000_000_000_000_000_000u64 + rng.random_range(0..999_999_999_999_999_999u64)
            )
        },
    );
    let mut bad = ChaCha8Rng::seed_from_u64(options.seed ^ 0x5e6e_0006);
    let mut planted = BTreeMap::new();
    let mut text = csv_line(
        &TMALL_CSV_HEADER
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>(),
    );
    let mut rows = 0u64;
    for trade in &all {
        let row = tmall_csv(&mut rng, trade, &people[trade.person]);
        let record = csv_record(
            &mut bad,
            TMALL_CSV_HEADER,
            row,
            ("订单编号", "买家实际支付金额", "订单创建时间", "联系手机"),
            &mut planted,
        );
        text.push_str(&record);
        rows += 1;
        if bad.random_bool(0.005) {
            text.push_str(&record);
            rows += 1;
            bump(&mut planted, planted::DUPLICATE_ORDER);
        }
    }
    let name = "tmall_orders.csv";
    let (bytes, _, unmappable) = encoding_rs::GBK.encode(&text);
    if unmappable {
        return Err(Error::Internal(
            "sample Tmall report has characters GBK cannot hold".into(),
        ));
    }
    let path = dir.join(name);
    std::fs::write(&path, &bytes).map_err(|e| Error::io(&path, e))?;
    Ok(SampleFile {
        file: name.into(),
        source: "tmall".into(),
        encoding: "gbk".into(),
        rows,
        planted,
    })
}
