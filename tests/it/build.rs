//! `shoal build` and `shoal identity`: identity merge against the sample world's truth,
//! incremental runs that never renumber, merges, caps, unlink, and the wide tables.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

use serde_json::{Value, json};

use crate::{
    Row, demo_data, ingest_sample, ingest_segment, json_ok, rows, shoal, start_server, stdout_ok,
};

fn text<'a>(row: &'a Row, key: &str) -> Option<&'a str> {
    row.get(key).and_then(Value::as_str)
}

fn int(row: &Row, key: &str) -> Option<i64> {
    row.get(key).and_then(Value::as_i64)
}

/// A decimal column, whether the JSON writer gave it as a number or as text.
fn decimal(row: &Row, key: &str) -> Option<f64> {
    match row.get(key)? {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

fn build(wh: &Path) -> Value {
    json_ok(&shoal(wh, &["build", "--json", "--as-of", "2026-11-20"]))
}

/// `users` without the build time, keyed by user id.
fn users_by_id(wh: &Path) -> BTreeMap<i64, Row> {
    rows(wh, "users")
        .into_iter()
        .map(|mut r| {
            r.remove("updated_at");
            (int(&r, "user_id").expect("id"), r)
        })
        .collect()
}

/// `orders_wide` without the build time, keyed by (platform, order id).
fn orders_wide_by_key(wh: &Path) -> BTreeMap<(String, String), Row> {
    let wide: BTreeMap<_, _> = rows(wh, "orders_wide")
        .into_iter()
        .map(|mut r| {
            r.remove("updated_at");
            let key = (
                text(&r, "platform").expect("platform").to_string(),
                text(&r, "order_id").expect("order id").to_string(),
            );
            (key, r)
        })
        .collect();
    assert!(
        wide.values()
            .any(|r| r.get("city").is_some_and(|c| !c.is_null()))
    );
    wide
}

/// (type, value) → user id.
fn links(wh: &Path) -> HashMap<(String, String), i64> {
    rows(wh, "identity_links")
        .iter()
        .map(|r| {
            (
                (
                    text(r, "id_type").expect("type").to_string(),
                    text(r, "id_value").expect("value").to_string(),
                ),
                int(r, "user_id").expect("user"),
            )
        })
        .collect()
}

#[test]
fn the_sample_world_merges_into_true_people_within_the_caps() {
    let dir = tempfile::tempdir().expect("tmp");
    let data = dir.path().join("data");
    let wh = dir.path().join("wh");
    let manifest = demo_data(&data, 2000, 5);
    // Events first and a build, then the orders and an incremental build.
    let first = &manifest["files"][0];
    assert_eq!(first["source"], "segment");
    let events_file = data.join(first["file"].as_str().expect("f"));
    ingest_segment(&wh, &events_file);
    let first_report = build(&wh);
    for f in manifest["files"].as_array().expect("files").iter().skip(1) {
        let path = data.join(f["file"].as_str().expect("file"));
        json_ok(&shoal(
            &wh,
            &[
                "ingest",
                "--source",
                f["source"].as_str().expect("s"),
                "--json",
                path.to_str().expect("p"),
            ],
        ));
    }
    let report = build(&wh);
    assert_eq!(report["users_incremental"], true, "{report}");
    assert_eq!(report["column_bitmaps_patched"], true, "{report}");
    assert_eq!(report["traits_folded"], true, "{report}");
    assert_eq!(report["events_unresolved"], 0, "{report}");
    let incremental_users = users_by_id(&wh);
    let incremental_wide = orders_wide_by_key(&wh);
    let incremental_tags = column_bitmaps(&wh);
    let shared: BTreeSet<String> = manifest["shared_devices"]
        .as_array()
        .expect("shared")
        .iter()
        .map(|d| d.as_str().expect("d").to_string())
        .collect();
    assert!(!shared.is_empty());

    // Who really owns each identity.
    let truth = std::fs::read_to_string(data.join("truth.jsonl")).expect("truth");
    let mut owner: HashMap<(String, String), u64> = HashMap::new();
    for line in truth.lines() {
        let person: Value = serde_json::from_str(line).expect("person");
        for (ty, values) in person["identities"].as_object().expect("ids") {
            for v in values.as_array().expect("values") {
                let v = v.as_str().expect("v").to_string();
                if ty == "anonymous_id" && shared.contains(&v) {
                    continue;
                }
                owner.insert((ty.clone(), v), person["person"].as_u64().expect("n"));
            }
        }
    }
    let links = links(&wh);
    let mut people_of: BTreeMap<i64, BTreeSet<u64>> = BTreeMap::new();
    let mut types_of: BTreeMap<i64, BTreeMap<String, u32>> = BTreeMap::new();
    let mut holds_shared: BTreeSet<i64> = BTreeSet::new();
    for ((ty, value), user) in &links {
        *types_of
            .entry(*user)
            .or_default()
            .entry(ty.clone())
            .or_insert(0) += 1;
        if shared.contains(value) {
            holds_shared.insert(*user);
        }
        if let Some(p) = owner.get(&(ty.clone(), value.clone())) {
            people_of.entry(*user).or_default().insert(*p);
        }
    }
    // Precision: a user mixes true people only through a shared device, never otherwise.
    for (user, people) in &people_of {
        if people.len() > 1 {
            assert!(
                holds_shared.contains(user),
                "user {user} mixes people {people:?} without a shared device"
            );
        }
    }
    // The shop tablet did not fuse its 25 users: caps held.
    for (user, types) in &types_of {
        assert!(
            types.get("login_id").copied().unwrap_or(0) <= 1,
            "user {user}: {types:?}"
        );
        assert!(
            types.get("phone").copied().unwrap_or(0) <= 5,
            "user {user}: {types:?}"
        );
        assert!(
            types.get("anonymous_id").copied().unwrap_or(0) <= 20,
            "user {user}: {types:?}"
        );
    }
    let refused = [&first_report, &report]
        .iter()
        .flat_map(|r| {
            r["identity"]["links_refused"]
                .as_object()
                .expect("refused")
                .values()
        })
        .map(|v| v.as_u64().unwrap_or(0))
        .sum::<u64>();
    assert!(
        refused > 0,
        "the shared tablet's second logins are refused: {report}"
    );
    // Recall: a login and a phone seen together in an identify call are one user.
    let events = rows(&wh, "events");
    let mut together = 0;
    for e in events
        .iter()
        .filter(|e| text(e, "event_type") == Some("identify"))
    {
        let traits: Value = serde_json::from_str(text(e, "properties").unwrap_or("{}")).expect("j");
        if let (Some(login), Some(phone)) = (text(e, "login_id"), traits["phone"].as_str()) {
            assert_eq!(
                links[&("login_id".to_string(), login.to_string())],
                links[&("phone".to_string(), phone.to_string())],
                "login {login} and phone {phone} identified together"
            );
            together += 1;
        }
    }
    assert!(
        together > 100,
        "{together} identify calls with login and phone"
    );

    // Every event's person is its login's person when it has one, else its device's.
    for e in &events {
        let user = int(e, "user_id").expect("every event has a person");
        let expected = text(e, "login_id")
            .map(|l| links[&("login_id".to_string(), l.to_string())])
            .or_else(|| {
                text(e, "anonymous_id").map(|a| links[&("anonymous_id".to_string(), a.to_string())])
            });
        assert_eq!(Some(user), expected, "{e:?}");
    }

    // users: one row per person; GMV recomputed here from orders.
    let users = rows(&wh, "users");
    let distinct: BTreeSet<i64> = links.values().copied().collect();
    assert_eq!(users.len(), distinct.len());
    let mut gmv: HashMap<i64, f64> = HashMap::new();
    let mut orders_count: HashMap<i64, i64> = HashMap::new();
    for o in rows(&wh, "orders") {
        let user = int(&o, "user_id").expect("every order has a person");
        if ["paid", "shipped", "completed", "refunded"].contains(&text(&o, "status").expect("s")) {
            let amount = decimal(&o, "amount").expect("amount");
            let refund = decimal(&o, "refund_amount").unwrap_or(0.0);
            *gmv.entry(user).or_default() += amount - refund;
            *orders_count.entry(user).or_default() += 1;
        }
    }
    let mut buyers = 0;
    for u in &users {
        let id = int(u, "user_id").expect("id");
        let expected = gmv.get(&id).copied();
        let got = decimal(u, "gmv");
        match expected {
            Some(e) => {
                buyers += 1;
                assert!(
                    (got.expect("gmv") - e).abs() < 0.005,
                    "user {id}: {got:?} vs {e}"
                );
                assert_eq!(int(u, "orders_count"), orders_count.get(&id).copied());
                assert!(text(u, "rfm_segment").is_some());
            }
            None => {
                assert_eq!(got, None, "user {id}");
                assert_eq!(int(u, "orders_count"), Some(0));
            }
        }
    }
    assert!(buyers > 100);
    rfm_matches_sql_window_functions(&wh, &users);
    activity_and_profile_match_the_events(&users, &events);
    // Profile traits are typed by the standards; unknown traits stay in `traits`.
    assert!(
        users
            .iter()
            .any(|u| text(u, "gender").is_some() && int(u, "age").is_some())
    );
    assert!(
        users
            .iter()
            .filter_map(|u| text(u, "traits"))
            .any(|t| t.contains("favourite_colour"))
    );
    // `catalog check` lists the traits that lack a standard.
    let check = shoal(&wh, &["catalog", "check", "--json"]);
    let check: Value = serde_json::from_slice(&check.stdout).expect("check json");
    let traits = check["monitors"]
        .as_array()
        .expect("monitors")
        .iter()
        .find(|m| m["monitor"] == "unstandardised_traits" && m["table"] == "users")
        .expect("traits monitor");
    assert_eq!(traits["status"], "WARN");
    assert!(
        traits["value"]
            .as_str()
            .expect("v")
            .contains("favourite_colour")
    );
    // Tag bitmaps exist for enum columns and event days.
    let tags = rows(&wh, "tag_bitmaps");
    let gender_tags: u64 = tags
        .iter()
        .filter(|t| text(t, "kind") == Some("column") && text(t, "name") == Some("gender"))
        .map(|t| int(t, "users").expect("users") as u64)
        .sum();
    let with_gender = users.iter().filter(|u| text(u, "gender").is_some()).count() as u64;
    assert_eq!(gender_tags, with_gender);
    assert!(tags.iter().any(|t| text(t, "kind") == Some("event_day")));
    // Bucketed numeric columns: the 25-35 age bitmap holds exactly the users aged 25 to 34.
    let aged = users
        .iter()
        .filter(|u| int(u, "age").is_some_and(|a| (25..35).contains(&a)))
        .count() as i64;
    let bucket = tags
        .iter()
        .find(|t| text(t, "name") == Some("age") && text(t, "value") == Some("25-35"))
        .expect("age bucket");
    assert_eq!(int(bucket, "users"), Some(aged));
    assert!(aged > 0);
    // orders_wide carries the buyer's attributes.
    assert_eq!(rows(&wh, "orders_wide").len(), rows(&wh, "orders").len());

    // A second build with nothing new changes no one.
    let again = build(&wh);
    assert_eq!(again["identity"]["identities_new"], 0);
    assert_eq!(again["events_rewritten"], 0);
    assert_eq!(self::links(&wh), links);

    // The incremental users equal a full recomputation.
    let full = json_ok(&shoal(
        &wh,
        &["build", "--full", "--json", "--as-of", "2026-11-20"],
    ));
    assert_eq!(full["users_incremental"], false);
    assert_eq!(full["column_bitmaps_patched"], false);
    assert_eq!(full["traits_folded"], false);
    assert_eq!(users_by_id(&wh), incremental_users);
    assert_eq!(orders_wide_by_key(&wh), incremental_wide);
    // The column bitmaps patched by the incremental build equal those built from every row.
    assert_eq!(column_bitmaps(&wh), incremental_tags);
}

/// The stored column bitmaps: (column, value) → (users, bitmap as hex).
/// Each buyer's last order, platforms and RFM scores in `users` equal those of SQL's window
/// functions (`percent_rank`) over `orders`, run by `shoal sql`; people without a paid order
/// have none.
fn rfm_matches_sql_window_functions(wh: &Path, users: &[Row]) {
    let sql = "WITH od AS (
            SELECT user_id, max(created_at) AS last_order_at, count(*) AS n,
                   sum(amount - coalesce(refund_amount, 0)) AS gmv,
                   array_to_string(array_sort(array_distinct(array_agg(platform))), ',') AS platforms
            FROM orders
            WHERE user_id IS NOT NULL AND status IN ('paid', 'shipped', 'completed', 'refunded')
            GROUP BY user_id)
        SELECT user_id, CAST(last_order_at AS BIGINT) AS last_order_at, platforms,
          least(5, 1 + CAST(floor(percent_rank() OVER (ORDER BY last_order_at) * 5) AS BIGINT)) AS r,
          least(5, 1 + CAST(floor(percent_rank() OVER (ORDER BY n) * 5) AS BIGINT)) AS f,
          least(5, 1 + CAST(floor(percent_rank() OVER (ORDER BY gmv) * 5) AS BIGINT)) AS m
        FROM od";
    let out = stdout_ok(&shoal(wh, &["sql", "--format", "jsonl", sql]));
    let expected: HashMap<i64, Value> = out
        .lines()
        .map(|line| {
            let row: Value = serde_json::from_str(line).expect("a JSON row");
            (row["user_id"].as_i64().expect("user_id"), row)
        })
        .collect();
    assert!(expected.len() > 100, "{} buyers", expected.len());
    let mut scores = BTreeSet::new();
    for u in users {
        let id = int(u, "user_id").expect("id");
        let got = ["rfm_r", "rfm_f", "rfm_m"].map(|k| int(u, k));
        match expected.get(&id) {
            Some(e) => {
                let want = ["r", "f", "m"].map(|k| e[k].as_i64());
                assert_eq!(got, want, "user {id}: scores");
                scores.extend(got.iter().flatten().copied());
                assert_eq!(
                    time(u, "last_order_at").map(|t| t.timestamp_micros()),
                    e["last_order_at"].as_i64(),
                    "user {id}: last order"
                );
                assert_eq!(
                    text(u, "platforms"),
                    e["platforms"].as_str(),
                    "user {id}: platforms"
                );
            }
            None => assert_eq!(got, [None, None, None], "user {id}"),
        }
    }
    assert_eq!(
        scores,
        BTreeSet::from([1, 2, 3, 4, 5]),
        "every quintile is used"
    );
}

fn column_bitmaps(wh: &Path) -> BTreeMap<(String, String), (i64, String)> {
    rows(wh, "tag_bitmaps")
        .iter()
        .filter(|t| text(t, "kind") == Some("column"))
        .map(|t| {
            (
                (
                    text(t, "name").expect("name").to_string(),
                    text(t, "value").expect("value").to_string(),
                ),
                (
                    int(t, "users").expect("users"),
                    text(t, "bitmap").expect("bitmap").to_string(),
                ),
            )
        })
        .collect()
}

/// When `row`'s time column `key` is.
fn time(row: &Row, key: &str) -> Option<chrono::DateTime<chrono::FixedOffset>> {
    text(row, key).map(|t| chrono::DateTime::parse_from_rfc3339(t).expect("rfc3339 time"))
}

/// Activity and profile of every user, recomputed from the events: first and last seen,
/// active days, the windowed counts as of 2026-11-20, follow state, and the latest value of
/// each standard trait (by event time; on a tie, the greater JSON text).
fn activity_and_profile_match_the_events(users: &[Row], events: &[Row]) {
    type Time = chrono::DateTime<chrono::FixedOffset>;
    #[derive(Default)]
    struct Person {
        first: Option<Time>,
        last: Option<Time>,
        days: BTreeSet<String>,
        counts: HashMap<String, i64>,
        follow: Option<Time>,
        unfollow: Option<Time>,
        traits: HashMap<String, (Time, String)>,
    }
    let as_of = chrono::NaiveDate::from_ymd_opt(2026, 11, 20).expect("day");
    let windows = [
        ("view_item", [1, 7, 30, 90].as_slice()),
        ("add_to_cart", [7, 30].as_slice()),
        ("purchase", [7, 30, 90].as_slice()),
    ];
    let standard = [
        "gender",
        "age",
        "city",
        "province",
        "member_level",
        "has_job",
    ];
    let mut people: HashMap<i64, Person> = HashMap::new();
    for e in events {
        let user = int(e, "user_id").expect("user");
        let at = time(e, "event_time").expect("time");
        let day = text(e, "event_date").expect("date");
        let p = people.entry(user).or_default();
        p.first = Some(p.first.map_or(at, |f| f.min(at)));
        p.last = Some(p.last.map_or(at, |l| l.max(at)));
        p.days.insert(day.to_string());
        let name = text(e, "event_name").unwrap_or_default();
        let age = (as_of - day.parse::<chrono::NaiveDate>().expect("day")).num_days();
        for (event, days) in windows {
            for n in days {
                if name == event && (0..*n).contains(&age) {
                    *p.counts.entry(format!("{event}_{n}d")).or_default() += 1;
                }
            }
        }
        if name == "follow_official_account" {
            p.follow = p.follow.max(Some(at));
        }
        if name == "unfollow_official_account" {
            p.unfollow = p.unfollow.max(Some(at));
        }
        if text(e, "event_type") == Some("identify") {
            let traits: Value =
                serde_json::from_str(text(e, "properties").unwrap_or("{}")).expect("traits");
            for key in standard {
                let Some(v) = traits.get(key).filter(|v| !v.is_null()) else {
                    continue;
                };
                let v = v.to_string();
                let kept = p.traits.entry(key.to_string()).or_insert((at, v.clone()));
                if (at, &v) > (kept.0, &kept.1) {
                    *kept = (at, v);
                }
            }
        }
    }
    let (mut followers, mut counted) = (0, 0);
    for u in users {
        let id = int(u, "user_id").expect("id");
        let Some(p) = people.get(&id) else {
            assert_eq!(int(u, "active_days"), None, "user {id} without events");
            continue;
        };
        assert_eq!(time(u, "first_seen"), p.first, "first_seen of {id}");
        assert_eq!(time(u, "last_seen"), p.last, "last_seen of {id}");
        assert_eq!(
            int(u, "active_days"),
            Some(p.days.len() as i64),
            "days of {id}"
        );
        for (event, days) in windows {
            for n in days {
                let column = format!("{event}_{n}d");
                let expected = p.counts.get(&column).copied().unwrap_or(0);
                counted += expected;
                assert_eq!(int(u, &column), Some(expected), "{column} of {id}");
            }
        }
        let follows = p.follow.is_some_and(|f| p.unfollow.is_none_or(|x| f > x));
        followers += i64::from(follows);
        assert_eq!(
            u.get("follows_official_account").and_then(Value::as_bool),
            Some(follows),
            "follows of {id}"
        );
        for key in standard {
            let expected = p
                .traits
                .get(key)
                .map(|(_, v)| serde_json::from_str::<Value>(v).expect("value"));
            let got = u.get(key).filter(|v| !v.is_null()).cloned();
            assert_eq!(got, expected, "{key} of {id}");
        }
    }
    assert!(
        followers > 0 && counted > 1000,
        "{followers} followers, {counted} counted"
    );
}

#[test]
fn the_same_input_gives_the_same_ids_whatever_the_import_order() {
    let dir = tempfile::tempdir().expect("tmp");
    let data = dir.path().join("data");
    let manifest = demo_data(&data, 300, 8);
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    ingest_sample(&a, &data, &manifest, true);
    ingest_sample(&b, &data, &manifest, false);
    build(&a);
    build(&b);
    assert_eq!(links(&a), links(&b));
}

fn segment_file(dir: &Path, name: &str, lines: &[Value]) -> std::path::PathBuf {
    let path = dir.join(name);
    let text: Vec<String> = lines.iter().map(Value::to_string).collect();
    std::fs::write(&path, text.join("\n") + "\n").expect("write");
    path
}

fn track(id: &str, t: &str, anon: &str, login: Option<&str>) -> Value {
    let mut m = json!({"type": "track", "messageId": id, "event": "view_item",
        "timestamp": format!("2026-11-01T00:00:{t}Z"), "anonymousId": anon});
    if let Some(l) = login {
        m["userId"] = json!(l);
    }
    m
}

fn identify(id: &str, t: &str, anon: &str, login: Option<&str>, phone: &str) -> Value {
    let mut m = track(id, t, anon, login);
    m["type"] = json!("identify");
    m["traits"] = json!({"phone": phone, "gender": "female"});
    m
}

#[test]
fn incremental_runs_keep_ids_merge_to_the_lower_refuse_over_caps_and_unlink_splits() {
    let dir = tempfile::tempdir().expect("tmp");
    let wh = dir.path().join("wh");
    let first = segment_file(
        dir.path(),
        "1.jsonl",
        &[
            track("m1", "01", "a1", None),
            track("m2", "02", "a2", Some("L1")),
            identify("m3", "03", "a3", None, "138-0000-0001"),
        ],
    );
    ingest_segment(&wh, &first);
    let r = build(&wh);
    assert_eq!(r["identity"]["people_new"], 3, "{r}");
    assert_eq!(r["identity"]["stored_from"], "tables", "{r}");
    let l = links(&wh);
    let id =
        |l: &HashMap<(String, String), i64>, t: &str, v: &str| l[&(t.to_string(), v.to_string())];
    // New ids follow first appearance.
    assert_eq!(id(&l, "anonymous_id", "a1"), 1);
    assert_eq!(id(&l, "login_id", "L1"), 2);
    assert_eq!(id(&l, "anonymous_id", "a2"), 2);
    assert_eq!(id(&l, "phone", "+8613800000001"), 3);
    assert_eq!(id(&l, "anonymous_id", "a3"), 3);

    // a1 logs in as L1, and L1 identifies with the phone: three people become one, id 1.
    let second = segment_file(
        dir.path(),
        "2.jsonl",
        &[
            track("m4", "04", "a1", Some("L1")),
            identify("m5", "05", "a4", Some("L1"), "+86 138 0000 0001"),
            track("m6", "06", "b1", None),
        ],
    );
    ingest_segment(&wh, &second);
    let r = build(&wh);
    assert_eq!(r["identity"]["people_merged"], 2, "{r}");
    assert_eq!(r["identity"]["stored_from"], "index", "{r}");
    assert_eq!(r["events_moved"], 2, "m2 and m3 move to the survivor: {r}");
    let l = links(&wh);
    for (t, v) in [
        ("anonymous_id", "a1"),
        ("anonymous_id", "a2"),
        ("anonymous_id", "a3"),
        ("anonymous_id", "a4"),
        ("login_id", "L1"),
        ("phone", "+8613800000001"),
    ] {
        assert_eq!(id(&l, t, v), 1, "{t}:{v}");
    }
    assert_eq!(
        id(&l, "anonymous_id", "b1"),
        4,
        "new ids continue above every id used"
    );
    let merges: BTreeSet<(i64, i64, String)> = rows(&wh, "identity_merges")
        .iter()
        .map(|m| {
            (
                int(m, "from_user_id").expect("f"),
                int(m, "into_user_id").expect("i"),
                text(m, "kind").expect("k").to_string(),
            )
        })
        .collect();
    assert_eq!(
        merges,
        BTreeSet::from([(2, 1, "merge".to_string()), (3, 1, "merge".to_string())])
    );
    let events = rows(&wh, "events");
    for e in &events {
        let expected = if text(e, "anonymous_id") == Some("b1") {
            4
        } else {
            1
        };
        assert_eq!(int(e, "user_id"), Some(expected), "{e:?}");
    }
    let users = rows(&wh, "users");
    assert_eq!(users.len(), 2);
    let one = users
        .iter()
        .find(|u| int(u, "user_id") == Some(1))
        .expect("user 1");
    assert_eq!(text(one, "login_id"), Some("L1"));
    assert_eq!(text(one, "phone"), Some("+8613800000001"));
    assert_eq!(text(one, "gender"), Some("female"));
    assert_eq!(int(one, "identity_count"), Some(6));

    // A second login on a1 is refused (one login per person) and recorded with the reason.
    let third = segment_file(
        dir.path(),
        "3.jsonl",
        &[track("m7", "07", "a1", Some("L2"))],
    );
    ingest_segment(&wh, &third);
    let r = build(&wh);
    assert_eq!(
        r["identity"]["links_refused"]["cap: the person would hold 2 login_id"], 1,
        "{r}"
    );
    let l = links(&wh);
    assert_eq!(id(&l, "anonymous_id", "a1"), 1);
    assert_eq!(id(&l, "login_id", "L2"), 5);
    let m7 = rows(&wh, "events")
        .into_iter()
        .find(|e| text(e, "event_id") == Some("m7"))
        .expect("m7");
    assert_eq!(
        int(&m7, "user_id"),
        Some(5),
        "an event belongs to its login's person"
    );
    let refused = rows(&wh, "identity_edges")
        .into_iter()
        .find(|e| text(e, "status") == Some("refused"))
        .expect("refused edge");
    assert!(
        text(&refused, "reason")
            .expect("reason")
            .contains("login_id (cap 1)")
    );

    // explain: the path of links, and a merged-away id followed to its survivor.
    let explained = json_ok(&shoal(&wh, &["identity", "explain", "2", "--json"]));
    assert_eq!(explained["merged_into"], 1);
    let identities = explained["identities"].as_array().expect("ids");
    assert_eq!(identities[0]["id_type"], "login_id", "strongest first");
    let a3 = identities
        .iter()
        .find(|i| i["id_value"] == "a3")
        .expect("a3");
    assert_eq!(
        a3["path"],
        json!(["login_id:L1", "phone:+8613800000001", "anonymous_id:a3"])
    );

    // Unlink the phone from L1: the phone and a3 split off with a new id; build moves m3, m5.
    let split = json_ok(&shoal(
        &wh,
        &[
            "identity",
            "unlink",
            "login_id:L1",
            "phone:+8613800000001",
            "--reason",
            "a shop's test phone",
            "--json",
        ],
    ));
    assert_eq!(split["user_id"], 1);
    assert_eq!(split["split_into"], json!([6]));
    let l = links(&wh);
    assert_eq!(id(&l, "phone", "+8613800000001"), 6);
    assert_eq!(id(&l, "anonymous_id", "a3"), 6);
    assert_eq!(id(&l, "anonymous_id", "a4"), 1);
    let r = build(&wh);
    assert_eq!(
        r["events_moved"], 1,
        "m3 (a3, no login) moves; m5 keeps L1's person: {r}"
    );
    assert_eq!(
        r["identity"]["stored_from"], "tables",
        "the unlink changed the tables after the state was saved: {r}"
    );
    let m3 = rows(&wh, "events")
        .into_iter()
        .find(|e| text(e, "event_id") == Some("m3"))
        .expect("m3");
    assert_eq!(int(&m3, "user_id"), Some(6));
    let (stored, from_events) = day_bitmaps_and_events(&wh);
    assert_eq!(stored, from_events, "the day's bitmaps follow the split");
    // The removed link stays removed when seen again.
    let fourth = segment_file(
        dir.path(),
        "4.jsonl",
        &[identify("m8", "08", "a9", Some("L1"), "13800000001")],
    );
    ingest_segment(&wh, &fourth);
    let r = build(&wh);
    assert_eq!(r["identity"]["stored_from"], "index", "{r}");
    assert_eq!(id(&links(&wh), "phone", "+8613800000001"), 6);

    // Bad input: clear errors, nothing changed.
    // Incremental users (merges, splits, deletes) equal a full recomputation.
    let incremental_users = users_by_id(&wh);
    json_ok(&shoal(
        &wh,
        &["build", "--full", "--json", "--as-of", "2026-11-20"],
    ));
    assert_eq!(users_by_id(&wh), incremental_users);

    let out = shoal(&wh, &["identity", "explain", "999"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a known person"));
    let out = shoal(&wh, &["identity", "unlink", "L1", "a1", "--reason", "x"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("TYPE:VALUE"));
    let out = shoal(
        &wh,
        &[
            "identity",
            "unlink",
            "email:x",
            "login_id:L1",
            "--reason",
            "x",
        ],
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("login_id, phone"));
    let out = shoal(
        &wh,
        &[
            "identity",
            "unlink",
            "anonymous_id:b1",
            "login_id:L1",
            "--reason",
            "x",
        ],
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("no joined link"));
}

/// An edge (a_type, a_value, b_type, b_value, status) and a merge (from, into, kind).
type EdgesAndMerges = (BTreeSet<[String; 5]>, BTreeSet<(i64, i64, String)>);

/// `identity_edges` and `identity_merges`, as sets.
fn edges_and_merges(wh: &Path) -> EdgesAndMerges {
    let field = |r: &Row, name: &str| text(r, name).unwrap_or_default().to_string();
    let edges = rows(wh, "identity_edges")
        .iter()
        .map(|e| ["a_type", "a_value", "b_type", "b_value", "status"].map(|name| field(e, name)))
        .collect();
    let merges = rows(wh, "identity_merges")
        .iter()
        .map(|m| {
            (
                int(m, "from_user_id").expect("from"),
                int(m, "into_user_id").expect("into"),
                field(m, "kind"),
            )
        })
        .collect();
    (edges, merges)
}

#[test]
fn a_saved_identity_state_stands_for_the_tables_and_a_damaged_one_is_ignored() {
    let dir = tempfile::tempdir().expect("tmp");
    let (saved, damaged) = (dir.path().join("saved"), dir.path().join("damaged"));
    let batches = [
        vec![
            track("m1", "01", "a1", None),
            track("m2", "02", "a2", Some("L1")),
            identify("m3", "03", "a3", None, "138-0000-0001"),
            track("m4", "04", "a4", Some("L4")),
        ],
        // Three people become one (id 1); a second login on a2 is refused.
        vec![
            track("m5", "05", "a1", Some("L1")),
            identify("m6", "06", "a5", Some("L1"), "+86 138 0000 0001"),
            track("m7", "07", "a2", Some("L2")),
            track("m8", "08", "b1", None),
        ],
        // The refused link seen again, and a new device of L4.
        vec![
            track("m9", "09", "a2", Some("L2")),
            track("m10", "10", "a6", Some("L4")),
        ],
    ];
    let state = |wh: &Path| wh.join("identity_links/_shoal/identities");
    for (i, batch) in batches.iter().enumerate() {
        let file = segment_file(dir.path(), &format!("{i}.jsonl"), batch);
        let mut reports = Vec::new();
        for wh in [&saved, &damaged] {
            ingest_segment(wh, &file);
            if i > 0 && wh == &damaged {
                // Every other byte of the saved state's keys changed: the build must not
                // trust it.
                let mut bytes = std::fs::read(state(wh)).expect("the state was saved");
                let middle = bytes.len() / 2;
                for b in &mut bytes[64..middle] {
                    *b ^= 0x5a;
                }
                std::fs::write(state(wh), bytes).expect("write");
            }
            reports.push(build(wh));
        }
        let [from_saved, from_damaged] = [&reports[0], &reports[1]].map(|r| {
            let mut identity = r["identity"].clone();
            identity
                .as_object_mut()
                .expect("identity report")
                .remove("stored_from");
            identity
        });
        if i > 0 {
            // A small state gathers each run's change after its base.
            let change = saved.join(format!("identity_links/_shoal/identities.{i}"));
            assert!(change.exists(), "{}", change.display());
        }
        let expected_from = if i == 0 { "tables" } else { "index" };
        assert_eq!(reports[0]["identity"]["stored_from"], expected_from);
        assert_eq!(reports[1]["identity"]["stored_from"], "tables");
        assert_eq!(from_saved, from_damaged, "batch {i}");
        assert_eq!(links(&saved), links(&damaged), "batch {i}");
        assert_eq!(
            edges_and_merges(&saved),
            edges_and_merges(&damaged),
            "batch {i}"
        );
        assert_eq!(users_by_id(&saved), users_by_id(&damaged), "batch {i}");
    }
    // By hand: a1, a2, a3, a5, L1 and the phone are person 1; the refused link stays refused
    // (drawn once, not again), and L4's new device joins person 4.
    let l = links(&saved);
    let id = |t: &str, v: &str| l[&(t.to_string(), v.to_string())];
    for (t, v) in [
        ("anonymous_id", "a1"),
        ("anonymous_id", "a2"),
        ("anonymous_id", "a3"),
        ("anonymous_id", "a5"),
        ("login_id", "L1"),
        ("phone", "+8613800000001"),
    ] {
        assert_eq!(id(t, v), 1, "{t}:{v}");
    }
    assert_eq!(id("login_id", "L4"), 4);
    assert_eq!(id("anonymous_id", "a6"), 4);
    let (edges, _) = edges_and_merges(&saved);
    let refused: Vec<_> = edges.iter().filter(|e| e[4] == "refused").collect();
    assert_eq!(refused.len(), 1, "{edges:?}");
    assert!(refused[0].contains(&"L2".to_string()), "{refused:?}");
}

#[tokio::test]
async fn the_http_api_builds_and_explains() {
    let dir = tempfile::tempdir().expect("tmp");
    let wh = dir.path().join("wh");
    let file = segment_file(
        dir.path(),
        "1.jsonl",
        &[
            track("m1", "01", "a1", Some("L1")),
            track("m2", "02", "a2", None),
        ],
    );
    ingest_segment(&wh, &file);
    let location = format!("file://{}", wh.display());
    let server = start_server(&["--warehouse", &location, "serve", "--build-every", "0"]);
    let client = server.async_client("admin");
    let url = |path: &str| format!("{}{path}", server.base);
    let built: Value = client
        .post(url("/api/build"))
        .json(&json!({"as_of": "2026-11-02"}))
        .send()
        .await
        .expect("build")
        .json()
        .await
        .expect("json");
    assert_eq!(built["events_resolved"], 2, "{built}");
    assert_eq!(built["as_of"], "2026-11-02");
    let explained: Value = client
        .get(url("/api/identity/1"))
        .send()
        .await
        .expect("explain")
        .json()
        .await
        .expect("json");
    assert_eq!(explained["identities"].as_array().map(Vec::len), Some(2));
    let bad = client
        .get(url("/api/identity/abc"))
        .send()
        .await
        .expect("bad");
    assert_eq!(bad.status().as_u16(), 400);
    assert!(bad.text().await.expect("text").contains("user_id"));
    let missing = client
        .get(url("/api/identity/77"))
        .send()
        .await
        .expect("404");
    assert_eq!(missing.status().as_u16(), 404);
    let bad = client
        .post(url("/api/build"))
        .json(&json!({"fulll": true}))
        .send()
        .await
        .expect("bad build");
    assert_eq!(bad.status().as_u16(), 400);
    assert!(bad.text().await.expect("text").contains("fulll"));
    let bad = client
        .post(url("/api/identity/unlink"))
        .json(&json!({"a": "login_id:L1", "b": "anonymous_id:a1", "reason": " "}))
        .send()
        .await
        .expect("bad unlink");
    assert_eq!(bad.status().as_u16(), 400);
}

#[tokio::test]
async fn the_server_builds_new_rows_on_its_own() {
    let dir = tempfile::tempdir().expect("tmp");
    let wh = dir.path().join("wh");
    let file = segment_file(
        dir.path(),
        "1.jsonl",
        &[track("m1", "01", "a1", Some("L1"))],
    );
    ingest_segment(&wh, &file);
    let location = format!("file://{}", wh.display());
    let server = start_server(&["--warehouse", &location, "serve", "--build-every", "1"]);
    let client = server.async_client("viewer");
    // A build is finished when its row is in `builds`.
    let mut found = false;
    for _ in 0..240 {
        if builds_listed(&client, &server.base).await > 0 {
            found = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    assert!(found, "the scheduled build ran");
    let events = tokio::task::spawn_blocking(move || rows(&wh, "events"))
        .await
        .expect("read");
    assert_eq!(int(&events[0], "user_id"), Some(1));
}

/// People per (event name, day).
type DayPeople = BTreeMap<(String, String), Vec<u32>>;

/// The (event, day) bitmaps as stored, and as the events say they should be.
fn day_bitmaps_and_events(wh: &Path) -> (DayPeople, DayPeople) {
    let mut stored = BTreeMap::new();
    for t in rows(wh, "tag_bitmaps") {
        if text(&t, "kind") != Some("event_day") {
            continue;
        }
        let hex = text(&t, "bitmap").expect("bitmap");
        let bytes: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
            .collect();
        let bitmap = roaring::RoaringBitmap::deserialize_from(&bytes[..]).expect("bitmap");
        assert_eq!(int(&t, "users"), Some(bitmap.len() as i64));
        stored.insert(
            (
                text(&t, "name").expect("name").to_string(),
                text(&t, "value").expect("value").to_string(),
            ),
            bitmap.iter().collect(),
        );
    }
    let mut expected: BTreeMap<(String, String), BTreeSet<u32>> = BTreeMap::new();
    for e in rows(wh, "events") {
        expected
            .entry((
                text(&e, "event_name").expect("name").to_string(),
                text(&e, "event_date").expect("date").to_string(),
            ))
            .or_default()
            .insert(int(&e, "user_id").expect("user") as u32);
    }
    let expected = expected
        .into_iter()
        .map(|(k, v)| (k, v.into_iter().collect()))
        .collect();
    (stored, expected)
}

/// event_id → user_id of every stored event.
fn person_of_each_event(wh: &Path) -> BTreeMap<String, i64> {
    rows(wh, "events")
        .iter()
        .map(|e| {
            (
                text(e, "event_id").expect("id").to_string(),
                int(e, "user_id").expect("u"),
            )
        })
        .collect()
}

#[test]
fn new_rows_and_merges_rewrite_only_the_files_holding_them() {
    let dir = tempfile::tempdir().expect("tmp");
    let wh = dir.path().join("wh");
    let at = |id: &str, day: &str, event: &str, anon: &str, login: Option<&str>| {
        let mut m = json!({"type": "track", "messageId": id, "event": event,
            "timestamp": format!("2026-11-{day}T08:00:0{}Z", &id[1..]), "anonymousId": anon});
        if let Some(l) = login {
            m["userId"] = json!(l);
        }
        m
    };
    // Day 1: a device (person 1) and a login (person 2).
    let first = segment_file(
        dir.path(),
        "1.jsonl",
        &[
            at("e1", "01", "view_item", "d1", None),
            at("e2", "01", "add_to_cart", "d1", None),
            at("e3", "01", "view_item", "d2", Some("K1")),
        ],
    );
    ingest_segment(&wh, &first);
    build(&wh);
    // A bystander (person 3) on days 1 and 2: day 1's first file is not rewritten.
    let bystander = segment_file(
        dir.path(),
        "2.jsonl",
        &[
            at("e4", "01", "view_item", "d3", None),
            at("e5", "01", "add_to_cart", "d3", None),
            at("e6", "02", "view_item", "d3", None),
        ],
    );
    ingest_segment(&wh, &bystander);
    let r = build(&wh);
    assert_eq!(r["events_resolved"], 3, "{r}");
    assert_eq!(r["events_rewritten"], 3, "only the new rows: {r}");
    assert_eq!(r["days_rewritten"], 2, "{r}");
    let before = person_of_each_event(&wh);
    assert_eq!(before["e1"], 1);
    assert_eq!(before["e3"], 2);
    assert_eq!(before["e4"], 3);
    let (stored, from_events) = day_bitmaps_and_events(&wh);
    assert_eq!(stored, from_events);
    assert_eq!(
        stored[&("view_item".to_string(), "2026-11-01".to_string())],
        vec![1, 2, 3]
    );

    // Day 3: the device logs in as K1 — persons 1 and 2 merge into 1. Day 1 holds no new
    // row: only the file of persons 1 and 2 is rewritten there, not the bystander's.
    let second = segment_file(
        dir.path(),
        "3.jsonl",
        &[at("e7", "03", "pay_order", "d1", Some("K1"))],
    );
    ingest_segment(&wh, &second);
    let r = build(&wh);
    assert_eq!(r["identity"]["people_merged"], 1, "{r}");
    assert_eq!(r["events_moved"], 1, "e3 moves from 2 to 1: {r}");
    assert_eq!(r["events_resolved"], 1, "{r}");
    assert_eq!(r["days_rewritten"], 2, "{r}");
    assert_eq!(
        r["events_rewritten"], 4,
        "e1, e2, e3 on day 1 and e7 on day 3, not the bystander's rows: {r}"
    );
    let after = person_of_each_event(&wh);
    let expected: BTreeMap<String, i64> = [
        ("e1", 1),
        ("e2", 1),
        ("e3", 1),
        ("e4", 3),
        ("e5", 3),
        ("e6", 3),
        ("e7", 1),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), *v))
    .collect();
    assert_eq!(after, expected, "every row once, with its person");
    let (stored, from_events) = day_bitmaps_and_events(&wh);
    assert_eq!(stored, from_events);
    assert_eq!(
        stored[&("view_item".to_string(), "2026-11-01".to_string())],
        vec![1, 3],
        "person 2 left the day's bitmap"
    );

    // A full rebuild agrees with the incremental one.
    json_ok(&shoal(
        &wh,
        &["build", "--full", "--json", "--as-of", "2026-11-20"],
    ));
    let rebuilt = person_of_each_event(&wh);
    assert_eq!(rebuilt, expected);
    assert_eq!(day_bitmaps_and_events(&wh).0, stored);
}

#[test]
fn a_merge_in_a_large_file_marks_its_rows_deleted_instead_of_rewriting_the_file() {
    let dir = tempfile::tempdir().expect("tmp");
    let wh = dir.path().join("wh");
    let event = |id: String, day: &str, second: usize, anon: String, login: Option<&str>| {
        let mut m = json!({"type": "track", "messageId": id, "event": "view_item",
            "timestamp": format!("2026-11-{day}T{:02}:{:02}:{:02}+08:00", second / 3600, second / 60 % 60, second % 60),
            "anonymousId": anon});
        if let Some(l) = login {
            m["userId"] = json!(l);
        }
        m
    };
    // Day 1 (in the catalog's zone): 35,000 devices with two events each, then a login on a
    // device of its own: one file of 70,001 rows.
    let mut lines: Vec<Value> = (0..70_000)
        .map(|i| event(format!("a{i}"), "01", i / 2, format!("d{}", i / 2), None))
        .collect();
    lines.push(event("k1".into(), "01", 35_000, "dk".into(), Some("K1")));
    ingest_segment(&wh, &segment_file(dir.path(), "1.jsonl", &lines));
    let r = build(&wh);
    assert_eq!(r["events_rewritten"], 70_001, "{r}");
    let before = person_of_each_event(&wh);
    let (d5, k1) = (before["a10"], before["k1"]);
    assert_eq!(before["a11"], d5);
    assert_ne!(d5, k1);
    // Day 3: device d5 logs in as K1 — the two people merge into the lower id. Only the
    // rows of the merged-away person move; the day-1 file keeps every other row.
    let second = vec![event("b1".into(), "03", 0, "d5".into(), Some("K1"))];
    ingest_segment(&wh, &segment_file(dir.path(), "2.jsonl", &second));
    let r = build(&wh);
    assert_eq!(r["identity"]["people_merged"], 1, "{r}");
    let (into, from) = (d5.min(k1), d5.max(k1));
    let moved = before.values().filter(|u| **u == from).count();
    assert_eq!(r["events_moved"], moved, "{r}");
    assert_eq!(
        r["events_rewritten"],
        moved + 1,
        "only the moved rows and the new one: {r}"
    );
    let log = std::fs::read_dir(wh.join("events").join("_delta_log")).expect("log");
    let marked = log.flatten().any(|e| {
        e.path().extension().is_some_and(|x| x == "json")
            && std::fs::read_to_string(e.path())
                .expect("commit")
                .contains("deletionVector\":{")
    });
    assert!(marked, "the day-1 file's moved rows are marked deleted");
    let mut expected = before.clone();
    for user in expected.values_mut() {
        if *user == from {
            *user = into;
        }
    }
    expected.insert("b1".into(), into);
    let after = person_of_each_event(&wh);
    assert_eq!(after.len(), 70_002, "every row once");
    assert_eq!(after, expected);
    let (stored, from_events) = day_bitmaps_and_events(&wh);
    assert_eq!(stored, from_events);
    let users = users_by_id(&wh);
    assert!(!users.contains_key(&from));
    assert_eq!(int(&users[&into], "active_days"), Some(2));

    // A full rebuild agrees.
    json_ok(&shoal(
        &wh,
        &["build", "--full", "--json", "--as-of", "2026-11-20"],
    ));
    assert_eq!(person_of_each_event(&wh), expected);
    assert_eq!(day_bitmaps_and_events(&wh).0, stored);
    assert_eq!(users_by_id(&wh), users);
}

#[test]
fn incremental_builds_fold_traits_by_event_time_through_late_calls_and_merges() {
    let dir = tempfile::tempdir().expect("tmp");
    let wh = dir.path().join("wh");
    let call = |id: &str, time: &str, anon: &str, login: Option<&str>, traits: Value| {
        let mut m = json!({"type": "identify", "messageId": id,
            "timestamp": format!("2026-11-{time}Z"), "anonymousId": anon, "traits": traits});
        if let Some(l) = login {
            m["userId"] = json!(l);
        }
        m
    };
    // Person A: city Hangzhou at 10:00; person B (a login): city Suzhou at 11:00, a nickname.
    let first = segment_file(
        dir.path(),
        "1.jsonl",
        &[
            call(
                "t1",
                "05T10:00:00",
                "da",
                None,
                json!({"city": "Hangzhou", "age": 30}),
            ),
            call(
                "t2",
                "05T11:00:00",
                "db",
                Some("B1"),
                json!({"city": "Suzhou", "nick": "bee"}),
            ),
        ],
    );
    ingest_segment(&wh, &first);
    build(&wh);
    let a = person_of_each_event(&wh)["t1"];
    let b = person_of_each_event(&wh)["t2"];
    // A late call for A (09:00, older than what A has) changes nothing it set later; a new
    // trait from it is kept. A newer call for B (12:00) wins.
    let second = segment_file(
        dir.path(),
        "2.jsonl",
        &[
            call(
                "t3",
                "05T09:00:00",
                "da",
                None,
                json!({"city": "Ningbo", "has_job": true}),
            ),
            call(
                "t4",
                "05T12:00:00",
                "db",
                Some("B1"),
                json!({"city": "Wuxi"}),
            ),
        ],
    );
    ingest_segment(&wh, &second);
    let r = build(&wh);
    assert_eq!(r["users_incremental"], true, "{r}");
    assert_eq!(r["traits_folded"], true, "{r}");
    let users = users_by_id(&wh);
    assert_eq!(text(&users[&a], "city"), Some("Hangzhou"));
    assert_eq!(users[&a]["has_job"], json!(true));
    assert_eq!(int(&users[&a], "age"), Some(30));
    assert_eq!(text(&users[&b], "city"), Some("Wuxi"));
    assert!(text(&users[&b], "traits").is_some_and(|t| t.contains("bee")));
    // A's device logs in as B1 (no traits): the two merge into the lower id, whose traits
    // are the latest of both: B's city (12:00), A's age and job.
    let third = segment_file(
        dir.path(),
        "3.jsonl",
        &[call("t5", "05T13:00:00", "da", Some("B1"), json!({}))],
    );
    ingest_segment(&wh, &third);
    let r = build(&wh);
    assert_eq!(r["identity"]["people_merged"], 1, "{r}");
    assert_eq!(r["traits_folded"], true, "{r}");
    let users = users_by_id(&wh);
    let (into, from) = (a.min(b), a.max(b));
    assert!(!users.contains_key(&from));
    let merged = &users[&into];
    assert_eq!(text(merged, "city"), Some("Wuxi"));
    assert_eq!(int(merged, "age"), Some(30));
    assert_eq!(merged["has_job"], json!(true));
    assert!(text(merged, "traits").is_some_and(|t| t.contains("bee")));
    // Equal to a full recomputation from every identify call, met while every row of
    // `events` is rewritten.
    let r = json_ok(&shoal(
        &wh,
        &["build", "--full", "--json", "--as-of", "2026-11-20"],
    ));
    assert_eq!(r["traits_from"], "calls", "{r}");
    assert_eq!(users_by_id(&wh), users);
    // A new day recomputes everyone's features, but rewrites only the new row of `events`:
    // traits are read from `events`, with the same result.
    let fourth = segment_file(dir.path(), "4.jsonl", &[track("t6", "06", "dz", None)]);
    ingest_segment(&wh, &fourth);
    let r = json_ok(&shoal(&wh, &["build", "--json", "--as-of", "2026-11-21"]));
    assert_eq!(r["users_incremental"], false, "{r}");
    assert_eq!(r["events_rewritten"], 1, "{r}");
    assert_eq!(r["traits_from"], "events", "{r}");
    let after = users_by_id(&wh);
    for (user, row) in &users {
        for trait_column in ["city", "age", "has_job", "traits"] {
            assert_eq!(
                after[user][trait_column], row[trait_column],
                "{user} {trait_column}"
            );
        }
    }
}

#[test]
fn a_day_of_too_many_files_is_rewritten_whole() {
    let dir = tempfile::tempdir().expect("tmp");
    let wh = dir.path().join("wh");
    // One file more than the day's rows need is allowed here.
    let build_spare_one = || {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_shoal"))
            .arg("--warehouse")
            .arg(format!("file://{}", wh.display()))
            .args(["build", "--json", "--as-of", "2026-11-20"])
            .env_remove("SHOAL_WAREHOUSE")
            .env("SHOAL_DAY_SPARE_FILES", "1")
            .output()
            .expect("run shoal");
        json_ok(&out)
    };
    let mut expected = BTreeMap::new();
    let mut rewritten = Vec::new();
    for (n, device) in ["d1", "d2", "d3", "d4"].iter().enumerate() {
        let id = format!("e{n}");
        let file = segment_file(
            dir.path(),
            &format!("{n}.jsonl"),
            &[track(&id, &format!("0{n}"), device, None)],
        );
        ingest_segment(&wh, &file);
        let r = build_spare_one();
        rewritten.push(r["events_rewritten"].as_i64().expect("rewritten"));
        expected.insert(id, n as i64 + 1);
    }
    // 1 file; 2 files (one spare); a third would be too many: the day's 3 rows in one file;
    // then 2 files again.
    assert_eq!(rewritten, vec![1, 1, 3, 1]);
    assert_eq!(person_of_each_event(&wh), expected);
    let (stored, from_events) = day_bitmaps_and_events(&wh);
    assert_eq!(stored, from_events);
    assert_eq!(stored.len(), 1);
}

/// (a, b, status) of every stored edge, duplicates kept.
fn edges(wh: &Path) -> Vec<(String, String, String)> {
    let mut out: Vec<_> = rows(wh, "identity_edges")
        .iter()
        .map(|e| {
            let side = |t: &str, v: &str| {
                format!(
                    "{}:{}",
                    text(e, t).expect("type"),
                    text(e, v).expect("value")
                )
            };
            (
                side("a_type", "a_value"),
                side("b_type", "b_value"),
                text(e, "status").expect("status").to_string(),
            )
        })
        .collect();
    out.sort();
    out
}

#[test]
fn a_build_stopped_between_its_edges_and_its_links_is_completed_without_a_doubled_edge() {
    let dir = tempfile::tempdir().expect("tmp");
    let first = segment_file(
        dir.path(),
        "1.jsonl",
        &[
            track("m1", "01", "a1", Some("L1")),
            track("m2", "02", "a2", None),
        ],
    );
    let second = segment_file(
        dir.path(),
        "2.jsonl",
        &[
            track("m3", "03", "a2", Some("L1")),
            identify("m4", "04", "a3", Some("L2"), "13800000002"),
            track("m5", "05", "a1", Some("L3")),
        ],
    );
    // The reference: two builds that run to their end.
    let reference = dir.path().join("reference");
    ingest_segment(&reference, &first);
    build(&reference);
    ingest_segment(&reference, &second);
    build(&reference);
    let expected = edges(&reference);
    // a2 joins L1's person, L2 brings its device and phone, L3 on a1 is refused.
    assert_eq!(expected.len(), 5, "{expected:?}");
    assert_eq!(
        expected
            .iter()
            .filter(|e| e.2 == "refused")
            .map(|e| (e.0.as_str(), e.1.as_str()))
            .collect::<Vec<_>>(),
        vec![("login_id:L3", "anonymous_id:a1")]
    );

    let wh = dir.path().join("wh");
    ingest_segment(&wh, &first);
    build(&wh);
    ingest_segment(&wh, &second);
    // The next commit of identity_links cannot be written: the build stops after its edges.
    let log = wh.join("identity_links/_delta_log");
    let next = std::fs::read_dir(&log)
        .expect("log")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
        .count();
    let blocker = log.join(format!("{next:020}.json"));
    std::fs::create_dir(&blocker).expect("block");
    let out = shoal(&wh, &["build", "--json", "--as-of", "2026-11-20"]);
    assert!(!out.status.success(), "the build stopped");
    assert!(
        edges(&wh).len() > 1,
        "the stopped build wrote its edges: {:?}",
        edges(&wh)
    );
    std::fs::remove_dir(&blocker).expect("unblock");
    build(&wh);
    assert_eq!(edges(&wh), expected, "each edge once");
    assert_eq!(links(&wh), links(&reference));
    // A further build appends nothing twice either.
    build(&wh);
    assert_eq!(edges(&wh), expected);
}

/// One paid Youzan trade of 100 yuan.
fn trade(tid: &str, buyer: &str, created: &str) -> Value {
    json!({"tid": tid, "status": "TRADE_SUCCESS", "buyer_id": buyer, "payment": "100.00",
        "created": created, "pay_time": created,
        "orders": [{"title": "净水器滤芯", "num": 1, "price": "100.00", "outer_sku_id": "F-1"}]})
}

fn ingest_youzan(wh: &Path, file: &Path) -> Value {
    json_ok(&shoal(
        wh,
        &[
            "ingest",
            "--source",
            "youzan",
            "--json",
            file.to_str().expect("utf-8 path"),
        ],
    ))
}

fn youzan_file(dir: &Path, name: &str, trades: &[Value]) -> std::path::PathBuf {
    let path = dir.join(name);
    let text: Vec<String> = trades.iter().map(Value::to_string).collect();
    std::fs::write(&path, text.join("\n") + "\n").expect("write trades");
    path
}

#[test]
fn buyers_outside_an_incremental_build_are_rescored_when_new_buyers_move_the_quintiles() {
    let dir = tempfile::tempdir().expect("tmp");
    let wh = dir.path().join("wh");
    // Buyer n (1..=5) places n orders, later buyers later: R, F and M rank alike.
    let trades = |buyers: std::ops::RangeInclusive<u32>| -> Vec<Value> {
        buyers
            .flat_map(|b| {
                (1..=b).map(move |k| {
                    trade(
                        &format!("T{b}{k}"),
                        &format!("90000{b}"),
                        &format!("2026-11-{:02} 10:00:{k:02}", 10 + b),
                    )
                })
            })
            .collect()
    };
    let first = youzan_file(dir.path(), "1.jsonl", &trades(1..=3));
    ingest_youzan(&wh, &first);
    build(&wh);
    let person = |wh: &Path, buyer: u32| -> i64 {
        links(wh)[&("youzan_buyer_id".to_string(), format!("90000{buyer}"))]
    };
    let scores =
        |wh: &Path, buyers: std::ops::RangeInclusive<u32>| -> Vec<(i64, i64, i64, String)> {
            let users = users_by_id(wh);
            buyers
                .map(|b| {
                    let u = &users[&person(wh, b)];
                    let score = |k: &str| int(u, k).expect("score");
                    let segment = text(u, "rfm_segment").expect("segment").to_string();
                    (score("rfm_r"), score("rfm_f"), score("rfm_m"), segment)
                })
                .collect()
        };
    // Three buyers: percent ranks 0, ½, 1 → scores 1, 3, 5.
    let s = |r: i64, segment: &str| (r, r, r, segment.to_string());
    assert_eq!(
        scores(&wh, 1..=3),
        vec![s(1, "lost"), s(3, "loyal"), s(5, "champions")]
    );
    // Two new buyers, above the others, on the same day: ranks 0, ¼, ½, ¾, 1 → 1..5. The
    // second and third buyers are outside the build's people, yet their scores move.
    let second = youzan_file(dir.path(), "2.jsonl", &trades(4..=5));
    ingest_youzan(&wh, &second);
    let r = build(&wh);
    assert_eq!(r["users_incremental"], true, "{r}");
    assert_eq!(r["users_recomputed"], 2, "{r}");
    assert_eq!(r["rfm_rescored"], 2, "{r}");
    assert_eq!(
        scores(&wh, 1..=5),
        vec![
            s(1, "lost"),
            s(2, "hibernating"),
            s(3, "loyal"),
            s(4, "champions"),
            s(5, "champions")
        ]
    );
    // Each order in orders_wide carries its buyer's segment, and the segment bitmaps hold
    // each buyer under their new segment only.
    let segment_of: HashMap<i64, String> = (1..=5)
        .zip(scores(&wh, 1..=5))
        .map(|(b, (_, _, _, seg))| (person(&wh, b), seg))
        .collect();
    let wide = rows(&wh, "orders_wide");
    assert_eq!(wide.len(), 15);
    for order in &wide {
        let buyer = int(order, "user_id").expect("buyer");
        assert_eq!(
            text(order, "rfm_segment"),
            Some(segment_of[&buyer].as_str()),
            "{order:?}"
        );
    }
    let bitmaps = column_bitmaps(&wh);
    let counts: BTreeMap<&str, i64> = bitmaps
        .iter()
        .filter(|((name, _), _)| name == "rfm_segment")
        .map(|((_, value), (users, _))| (value.as_str(), *users))
        .collect();
    assert_eq!(
        counts,
        BTreeMap::from([
            ("champions", 2),
            ("hibernating", 1),
            ("lost", 1),
            ("loyal", 1)
        ])
    );
    // A full recomputation gives the same rows and bitmaps.
    let users = users_by_id(&wh);
    let strip = |rows: Vec<Row>| -> Vec<Row> {
        let mut rows: Vec<Row> = rows
            .into_iter()
            .map(|mut r| {
                r.remove("updated_at");
                r
            })
            .collect();
        rows.sort_by_key(|r| text(r, "order_id").map(str::to_string));
        rows
    };
    let wide = strip(wide);
    json_ok(&shoal(
        &wh,
        &["build", "--full", "--json", "--as-of", "2026-11-20"],
    ));
    assert_eq!(users_by_id(&wh), users);
    assert_eq!(strip(rows(&wh, "orders_wide")), wide);
    assert_eq!(column_bitmaps(&wh), bitmaps);
}

#[test]
fn an_incremental_build_carries_status_changes_of_orders_without_a_person_into_orders_wide() {
    let dir = tempfile::tempdir().expect("tmp");
    let wh = dir.path().join("wh");
    // A guest checkout (no buyer, fans id or phone) and a known buyer's order.
    let mut guest = trade("G1", "0", "2026-11-12 09:00:00");
    let known = trade("K1", "900001", "2026-11-12 10:00:00");
    let first = youzan_file(dir.path(), "1.jsonl", &[guest.clone(), known]);
    ingest_youzan(&wh, &first);
    build(&wh);
    let status = |wh: &Path| -> BTreeMap<String, (Option<i64>, String)> {
        rows(wh, "orders_wide")
            .iter()
            .map(|r| {
                (
                    text(r, "order_id").expect("id").to_string(),
                    (
                        int(r, "user_id"),
                        text(r, "status").expect("status").to_string(),
                    ),
                )
            })
            .collect()
    };
    let before = status(&wh);
    assert_eq!(before["G1"], (None, "completed".to_string()));
    assert_eq!(before["K1"].1, "completed");
    // The guest's order is closed and exported again: nobody's row changes, yet orders_wide
    // must show the new status.
    guest["status"] = json!("TRADE_CLOSED");
    let second = youzan_file(dir.path(), "2.jsonl", &[guest]);
    let landed = ingest_youzan(&wh, &second);
    assert_eq!(landed["updated"], 1, "{landed}");
    let r = build(&wh);
    assert_eq!(r["users_incremental"], true, "{r}");
    assert_eq!(r["users_recomputed"], 0, "{r}");
    let after = status(&wh);
    assert_eq!(after["G1"], (None, "closed".to_string()));
    assert_eq!(after["K1"], before["K1"]);
    assert_eq!(after.len(), 2);
}

/// Rows of `builds`, as the server's table list counts them.
async fn builds_listed(client: &reqwest::Client, base: &str) -> u64 {
    let tables: Value = client
        .get(format!("{base}/api/tables"))
        .send()
        .await
        .expect("tables")
        .json()
        .await
        .expect("json");
    tables["tables"]
        .as_array()
        .expect("tables")
        .iter()
        .find(|t| t["table"] == "builds")
        .and_then(|t| t["rows"].as_u64())
        .unwrap_or(0)
}

#[tokio::test]
async fn the_server_does_not_build_again_for_a_guest_order_until_it_changes() {
    let dir = tempfile::tempdir().expect("tmp");
    let wh = dir.path().join("wh");
    // A guest checkout names nobody: after a build it stays without a person.
    let mut guest = trade("G1", "0", "2026-11-12 09:00:00");
    let first = youzan_file(dir.path(), "1.jsonl", &[guest.clone()]);
    ingest_youzan(&wh, &first);
    build(&wh);
    let location = format!("file://{}", wh.display());
    let server = start_server(&["--warehouse", &location, "serve", "--build-every", "1"]);
    let client = server.async_client("viewer");
    // Five ticks pass without a build.
    tokio::time::sleep(std::time::Duration::from_secs(5)).await;
    assert_eq!(builds_listed(&client, &server.base).await, 1);
    // The order is closed and imported again: the next tick builds.
    guest["status"] = json!("TRADE_CLOSED");
    let second = youzan_file(dir.path(), "2.jsonl", &[guest]);
    let wh_again = wh.clone();
    tokio::task::spawn_blocking(move || ingest_youzan(&wh_again, &second))
        .await
        .expect("ingest");
    let mut built = 1;
    for _ in 0..240 {
        built = builds_listed(&client, &server.base).await;
        if built > 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    assert_eq!(built, 2, "the changed guest order was built");
    let wide = tokio::task::spawn_blocking(move || rows(&wh, "orders_wide"))
        .await
        .expect("read");
    assert_eq!(text(&wide[0], "status"), Some("closed"));
}
