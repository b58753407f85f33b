//! Tracking events of the sample world as Segment messages.

use chrono::{Duration, NaiveDate, NaiveDateTime};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde_json::{Value, json};

use super::world::{Calendar, PRODUCTS, Person, hex, message_id, zipf};

/// Campaigns sent to a share of people: (id, channel, days before the window's end, share).
pub(crate) const CAMPAIGNS: &[(&str, &str, i64, f64)] = &[
    ("autumn_sale", "sms", 50, 0.30),
    ("filter_reminder", "wechat_template", 20, 0.25),
    ("double11_warmup", "sms", 12, 0.40),
];

/// One message with the time it sorts by.
pub(crate) struct Message {
    pub at: NaiveDateTime,
    pub seq: u64,
    pub body: Value,
}

struct Emitter<'a> {
    rng: &'a mut ChaCha8Rng,
    out: &'a mut Vec<Message>,
    seq: &'a mut u64,
    orders: &'a mut u64,
}

fn timestamp(rng: &mut ChaCha8Rng, utc: NaiveDateTime) -> String {
    // Most libraries send UTC with a Z; some mini-program SDKs send Beijing time with its offset.
    if rng.random_bool(0.1) {
        (utc + Duration::hours(8))
            .format("%Y-%m-%dT%H:%M:%S%.3f+08:00")
            .to_string()
    } else {
        utc.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
    }
}

fn context(channel: &str) -> Value {
    match channel {
        "miniprogram" => {
            json!({"library": {"name": "analytics-wechat-miniprogram", "version": "2.3.1"}, "os": {"name": "iOS"}, "channel": "miniprogram"})
        }
        "app" => {
            json!({"library": {"name": "analytics-android", "version": "4.11.3"}, "os": {"name": "Android"}, "channel": "app"})
        }
        "server" => {
            json!({"library": {"name": "analytics-python", "version": "2.3.3"}, "channel": "server"})
        }
        _ => {
            json!({"library": {"name": "analytics.js", "version": "next-1.72.0"}, "os": {"name": "Mac OS X"}, "channel": "web"})
        }
    }
}

impl Emitter<'_> {
    fn push(
        &mut self,
        utc: NaiveDateTime,
        kind: &str,
        ids: (&str, Option<&str>),
        channel: &str,
        fields: Value,
    ) {
        let mut body = json!({
            "type": kind,
            "messageId": message_id(self.rng),
            "anonymousId": ids.0,
            "timestamp": timestamp(self.rng, utc),
            "context": context(channel),
        });
        if let Some(login) = ids.1 {
            body["userId"] = json!(login);
        }
        if let (Value::Object(body), Value::Object(fields)) = (&mut body, fields) {
            body.extend(fields);
        }
        *self.seq += 1;
        self.out.push(Message {
            at: utc,
            seq: *self.seq,
            body,
        });
    }
}

fn traits(person: &Person, rng: &mut ChaCha8Rng) -> Value {
    let mut traits = serde_json::Map::new();
    if let Some(g) = person.gender {
        traits.insert("gender".into(), json!(g));
    }
    if let Some(a) = person.age {
        traits.insert("age".into(), json!(a));
    }
    traits.insert("city".into(), json!(person.city_name()));
    traits.insert("province".into(), json!(person.province()));
    traits.insert("member_level".into(), json!(person.member_level));
    if let Some(j) = person.has_job {
        traits.insert("has_job".into(), json!(j));
    }
    if let Some(phone) = &person.phone {
        // Phones arrive in every format people type them in.
        let shown = match rng.random_range(0..5) {
            0 => format!("+86{phone}"),
            1 => format!("+86 {} {} {}", &phone[0..3], &phone[3..7], &phone[7..]),
            2 => format!("{}-{}-{}", &phone[0..3], &phone[3..7], &phone[7..]),
            _ => phone.clone(),
        };
        traits.insert("phone".into(), json!(shown));
    }
    if let Some(u) = &person.unionid {
        traits.insert("wechat_unionid".into(), json!(u));
    }
    if rng.random_bool(0.3) {
        traits.insert(
            "favourite_colour".into(),
            json!(["white", "grey", "blue"][rng.random_range(0..3)]),
        );
    }
    Value::Object(traits)
}

/// Every message one person sends over the window.
pub(crate) fn person_messages(
    rng: &mut ChaCha8Rng,
    person: &Person,
    calendar: &Calendar,
    seq: &mut u64,
    orders: &mut u64,
    out: &mut Vec<Message>,
) {
    let mut days: Vec<NaiveDate> = (0..person.sessions).map(|_| calendar.day(rng)).collect();
    days.sort();
    let login_session = person
        .login
        .as_ref()
        .map(|_| rng.random_range(0..person.sessions.min(3)));
    let channel = ["web", "miniprogram", "app"][rng.random_range(0..3)];
    let mut identified_devices = vec![false; person.devices.len()];
    let mut e = Emitter {
        rng,
        out,
        seq,
        orders,
    };
    let mut follow_done = false;
    for (s, day) in days.iter().enumerate() {
        let device = e.rng.random_range(0..person.devices.len());
        let anon = person.devices[device].clone();
        let logged_in = login_session.is_some_and(|l| s as u32 >= l);
        let login = if logged_in {
            person.login.as_deref()
        } else {
            None
        };
        let mut t = Calendar::local_time(e.rng, *day) - Duration::hours(8);
        let step = |rng: &mut ChaCha8Rng, t: &mut NaiveDateTime| {
            *t += Duration::milliseconds(rng.random_range(3_000..150_000));
        };
        e.push(
            t,
            "page",
            (&anon, login),
            channel,
            json!({"name": "首页", "properties": {"path": "/", "title": "首页"}}),
        );
        if logged_in && !identified_devices[device] {
            identified_devices[device] = true;
            step(e.rng, &mut t);
            let traits = traits(person, e.rng);
            e.push(
                t,
                "identify",
                (&anon, login),
                channel,
                json!({"traits": traits}),
            );
            if e.rng.random_bool(0.05) {
                step(e.rng, &mut t);
                let previous = anon.clone();
                e.push(
                    t,
                    "alias",
                    (&anon, login),
                    channel,
                    json!({"previousId": previous}),
                );
            }
        }
        if person.follows && !follow_done && e.rng.random_bool(0.5) {
            follow_done = true;
            step(e.rng, &mut t);
            e.push(t, "track", (&anon, login), "miniprogram", json!({"event": "follow_official_account", "properties": {"account": "shoal_home"}}));
        } else if person.unfollows && follow_done && e.rng.random_bool(0.3) {
            step(e.rng, &mut t);
            e.push(t, "track", (&anon, login), "miniprogram", json!({"event": "unfollow_official_account", "properties": {"account": "shoal_home"}}));
        }
        let views = zipf(e.rng, 8);
        let mut cart: Vec<usize> = Vec::new();
        for _ in 0..views {
            step(e.rng, &mut t);
            let p = zipf(e.rng, PRODUCTS.len());
            let product = &PRODUCTS[p];
            e.push(t, "page", (&anon, login), channel, json!({"name": "商品详情", "properties": {"path": format!("/item/{}", product.sku), "title": product.title}}));
            step(e.rng, &mut t);
            e.push(
                t,
                "track",
                (&anon, login),
                channel,
                json!({"event": "view_item", "properties": {
                "item_id": product.sku, "name": product.title, "category": product.category,
                "price": product.price_fen as f64 / 100.0}}),
            );
            if e.rng.random_bool(0.3) {
                step(e.rng, &mut t);
                cart.push(p);
                e.push(
                    t,
                    "track",
                    (&anon, login),
                    channel,
                    json!({"event": "add_to_cart", "properties": {
                    "item_id": product.sku, "category": product.category,
                    "price": product.price_fen as f64 / 100.0, "quantity": 1}}),
                );
            }
        }
        if !cart.is_empty() && e.rng.random_bool(0.35) {
            step(e.rng, &mut t);
            *e.orders += 1;
            let order_id = format!("W{}{:07}", day.format("%Y%m%d"), *e.orders);
            let revenue: i64 = cart.iter().map(|p| PRODUCTS[*p].price_fen).sum();
            let products: Vec<Value> = cart.iter().map(|p| json!({"item_id": PRODUCTS[*p].sku, "category": PRODUCTS[*p].category, "price": PRODUCTS[*p].price_fen as f64 / 100.0, "quantity": 1})).collect();
            e.push(
                t,
                "track",
                (&anon, login),
                channel,
                json!({"event": "purchase", "properties": {
                "order_id": order_id, "revenue": revenue as f64 / 100.0, "currency": "CNY",
                "category": PRODUCTS[cart[0]].category, "products": products}}),
            );
        }
    }
}

/// Campaign messages: delivered to a share of people, clicked by some, who then often visit.
pub(crate) fn campaign_messages(
    rng: &mut ChaCha8Rng,
    person: &Person,
    end: NaiveDate,
    seq: &mut u64,
    out: &mut Vec<Message>,
) {
    let anon = person.devices[0].clone();
    let login = person.login.as_deref();
    let mut e = Emitter {
        rng,
        out,
        seq,
        orders: &mut 0,
    };
    for (campaign, channel, days_before, share) in CAMPAIGNS {
        if !e.rng.random_bool(*share) {
            continue;
        }
        let day = end - Duration::days(*days_before);
        let sent = day.and_hms_opt(2, 0, 0).unwrap_or_default()
            + Duration::seconds(e.rng.random_range(0..3600));
        let delivery_id = hex(e.rng, 12);
        e.push(
            sent,
            "track",
            (&anon, login),
            "server",
            json!({"event": "campaign_message_delivered", "properties": {
            "campaign_id": campaign, "channel": channel, "delivery_id": delivery_id}}),
        );
        if e.rng.random_bool(0.12) {
            let clicked = sent + Duration::seconds(e.rng.random_range(60..86_400));
            e.push(
                clicked,
                "track",
                (&anon, login),
                "web",
                json!({"event": "campaign_message_clicked", "properties": {
                "campaign_id": campaign, "channel": channel, "delivery_id": delivery_id}}),
            );
            let p = zipf(e.rng, PRODUCTS.len());
            let product = &PRODUCTS[p];
            let viewed = clicked + Duration::seconds(e.rng.random_range(5..120));
            e.push(viewed, "track", (&anon, login), "web", json!({"event": "view_item", "properties": {
                "item_id": product.sku, "category": product.category, "price": product.price_fen as f64 / 100.0,
                "campaign_id": campaign}}));
            if e.rng.random_bool(0.3) {
                let bought = viewed + Duration::seconds(e.rng.random_range(60..172_800));
                let order_id = format!("W{}C{}", bought.format("%Y%m%d"), hex(e.rng, 8));
                e.push(bought, "track", (&anon, login), "web", json!({"event": "purchase", "properties": {
                    "order_id": order_id, "revenue": product.price_fen as f64 / 100.0, "currency": "CNY",
                    "category": product.category, "campaign_id": campaign,
                    "products": [{"item_id": product.sku, "price": product.price_fen as f64 / 100.0, "quantity": 1}]}}));
            }
        }
    }
}
