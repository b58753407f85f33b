//! The people, products and calendar of the sample world.

use chrono::{Duration, NaiveDate, NaiveDateTime};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// A product of the sample shop: water purifiers and the rest of a home-appliance store.
pub(crate) struct Product {
    pub sku: &'static str,
    pub title: &'static str,
    pub category: &'static str,
    pub price_fen: i64,
}

macro_rules! products {
    ($( $sku:literal, $title:literal, $category:literal, $price:literal; )*) => {
        &[ $( Product { sku: $sku, title: $title, category: $category, price_fen: $price } ),* ]
    };
}

/// Ordered by popularity: earlier products sell more (Zipf).
pub(crate) const PRODUCTS: &[Product] = products![
    "F-PP-01", "PP棉滤芯 5微米 两支装", "滤芯", 9900;
    "WP-600G", "反渗透净水器 600G 厨下式", "净水器", 249900;
    "F-RO-600", "RO反渗透滤芯 600G", "滤芯", 39900;
    "AP-K3", "空气净化器 K3 除甲醛", "空气净化器", 169900;
    "HM-S1", "无雾加湿器 S1 4L", "加湿器", 39900;
    "F-CTO-02", "CTO活性炭滤芯", "滤芯", 12900;
    "RV-X5", "扫地机器人 X5 扫拖一体", "扫地机器人", 259900;
    "WP-1000G", "净水器 1000G 大通量 厨下式", "净水器", 399900;
    "AP-F-K3", "K3 空气净化器替换滤网", "滤芯", 29900;
    "KT-17", "恒温电热水壶 1.7L", "厨房小电", 19900;
    "WP-TAB-1", "台式免安装净饮机", "净水器", 179900;
    "HM-F-S1", "加湿器滤芯 S1", "配件", 4900;
    "RV-MOP", "扫地机拖布 六片装", "配件", 5900;
    "WH-60L", "储水式电热水器 60L", "热水器", 149900;
    "AP-M9", "空气净化器 M9 大空间", "空气净化器", 389900;
    "KT-SOY", "破壁豆浆机", "厨房小电", 59900;
    "RV-X7", "扫地机器人 X7 自动集尘", "扫地机器人", 459900;
    "WP-SINK", "厨下前置过滤器", "净水器", 69900;
    "F-UF-01", "超滤膜滤芯", "滤芯", 15900;
    "WH-GAS16", "燃气热水器 16L 零冷水", "热水器", 329900;
    "BOT-TDS", "TDS水质检测笔", "配件", 2900;
    "KT-AIRF", "空气炸锅 5L", "厨房小电", 39900;
    "HM-S3", "智能加湿器 S3 上加水", "加湿器", 69900;
    "SVC-INST", "上门安装服务", "服务", 0;
];

/// Cities with their province and a popularity weight (first-tier cities dominate).
pub(crate) const CITIES: &[(&str, &str, u32)] = &[
    ("上海", "上海市", 180),
    ("北京", "北京市", 160),
    ("杭州", "浙江省", 120),
    ("深圳", "广东省", 110),
    ("广州", "广东省", 100),
    ("成都", "四川省", 80),
    ("南京", "江苏省", 70),
    ("苏州", "江苏省", 65),
    ("武汉", "湖北省", 60),
    ("西安", "陕西省", 45),
    ("重庆", "重庆市", 45),
    ("宁波", "浙江省", 35),
    ("天津", "天津市", 35),
    ("长沙", "湖南省", 30),
    ("郑州", "河南省", 28),
    ("青岛", "山东省", 25),
    ("厦门", "福建省", 20),
    ("合肥", "安徽省", 18),
    ("昆明", "云南省", 12),
    ("乌鲁木齐", "新疆维吾尔自治区", 4),
];

const STREETS: &[&str] = &[
    "人民路",
    "解放路",
    "中山路",
    "建设路",
    "文三路",
    "南京路",
    "长江路",
    "和平路",
    "滨江大道",
];

/// One person of the sample world and every identity they will show.
pub(crate) struct Person {
    pub devices: Vec<String>,
    pub login: Option<String>,
    pub phone: Option<String>,
    pub unionid: Option<String>,
    pub gender: Option<&'static str>,
    pub age: Option<u32>,
    pub city: usize,
    pub member_level: &'static str,
    pub has_job: Option<bool>,
    pub sessions: u32,
    pub youzan: Option<(u64, u64, String)>,
    pub tmall: Option<String>,
    pub follows: bool,
    pub unfollows: bool,
    pub address: String,
    pub name: String,
}

const SURNAMES: &[&str] = &[
    "王", "李", "张", "刘", "陈", "杨", "黄", "赵", "吴", "周", "徐", "孙",
];
const GIVEN: &[&str] = &[
    "伟", "芳", "娜", "敏", "静", "磊", "洋", "艳", "勇", "军", "杰", "婷", "强", "丽",
];

pub(crate) fn hex(rng: &mut ChaCha8Rng, len: usize) -> String {
    const DIGITS: &[u8] = b"0123456789abcdef";
    (0..len)
        .map(|_| DIGITS[rng.random_range(0..16)] as char)
        .collect()
}

/// A UUID-shaped message id, as Segment's libraries send.
pub(crate) fn message_id(rng: &mut ChaCha8Rng) -> String {
    let h = hex(rng, 32);
    format!(
        "{}-{}-4{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[13..16],
        &h[16..20],
        &h[20..32]
    )
}

pub(crate) fn weighted<'a, T>(rng: &mut ChaCha8Rng, items: &'a [(T, u32)]) -> &'a T {
    let total: u32 = items.iter().map(|(_, w)| *w).sum();
    let mut pick = rng.random_range(0..total.max(1));
    for (item, weight) in items {
        if pick < *weight {
            return item;
        }
        pick -= weight;
    }
    &items[items.len() - 1].0
}

/// Index into a list of `n` by a Zipf-like law: index 0 most often.
pub(crate) fn zipf(rng: &mut ChaCha8Rng, n: usize) -> usize {
    let u: f64 = rng.random();
    (((n as f64 + 1.0).powf(u) - 1.0) as usize).min(n - 1)
}

impl Person {
    pub fn generate(rng: &mut ChaCha8Rng, index: u32) -> Person {
        let devices = (0..1 + (rng.random::<f64>().powi(3) * 4.0) as usize)
            .map(|_| format!("anon-{}", hex(rng, 20)))
            .collect();
        let login = rng
            .random_bool(0.65)
            .then(|| format!("u{:07}", 1_000_000 + index * 7 + rng.random_range(0..7)));
        let phone = rng.random_bool(0.55).then(|| {
            let prefix = [
                "138", "139", "137", "150", "151", "186", "187", "188", "135", "177",
            ][rng.random_range(0..10)];
            format!("{prefix}{:08}", rng.random_range(0..100_000_000u32))
        });
        let unionid = rng.random_bool(0.4).then(|| format!("oUn{}", hex(rng, 25)));
        let gender = *weighted(
            rng,
            &[
                (Some("male"), 43),
                (Some("female"), 47),
                (Some("unknown"), 3),
                (None, 7),
            ],
        );
        let age = rng.random_bool(0.8).then(|| {
            let base: f64 = rng.random::<f64>() + rng.random::<f64>() + rng.random::<f64>();
            (18.0 + base / 3.0 * 47.0) as u32
        });
        let city_weights: Vec<(usize, u32)> =
            CITIES.iter().enumerate().map(|(i, c)| (i, c.2)).collect();
        let city = *weighted(rng, &city_weights);
        let member_level = *weighted(
            rng,
            &[("none", 60), ("silver", 25), ("gold", 12), ("platinum", 3)],
        );
        let has_job = rng.random_bool(0.85).then(|| rng.random_bool(0.82));
        let u: f64 = rng.random();
        let sessions = ((1.0 / (1.0 - u).powf(1.0 / 1.3)) as u32).clamp(1, 120);
        let youzan = rng.random_bool(0.25).then(|| {
            (
                100_000_000 + u64::from(index) * 13 + rng.random_range(0..13),
                2_000_000_000 + u64::from(index) * 17 + rng.random_range(0..17),
                format!("yz_{}", hex(rng, 6)),
            )
        });
        // Buyers with a phone shop on both platforms more often: the overlap identity merge finds.
        let tmall_chance = if phone.is_some() { 0.35 } else { 0.2 };
        let tmall = rng
            .random_bool(tmall_chance)
            .then(|| format!("tb{}", hex(rng, 8)));
        let follows = rng.random_bool(0.22);
        let unfollows = follows && rng.random_bool(0.2);
        let address = format!(
            "{}{}号{}室",
            STREETS[rng.random_range(0..STREETS.len())],
            rng.random_range(1..999),
            rng.random_range(101..2505)
        );
        let name = format!(
            "{}{}",
            SURNAMES[rng.random_range(0..SURNAMES.len())],
            GIVEN[rng.random_range(0..GIVEN.len())]
        );
        Person {
            devices,
            login,
            phone,
            unionid,
            gender,
            age,
            city,
            member_level,
            has_job,
            sessions,
            youzan,
            tmall,
            follows,
            unfollows,
            address,
            name,
        }
    }

    pub fn city_name(&self) -> &'static str {
        CITIES[self.city].0
    }

    pub fn province(&self) -> &'static str {
        CITIES[self.city].1
    }
}

/// The days of the sample window and how busy each is.
pub(crate) struct Calendar {
    pub first: NaiveDate,
    cumulative: Vec<f64>,
}

impl Calendar {
    pub fn new(end: NaiveDate, days: u32) -> Calendar {
        let first = end - Duration::days(i64::from(days) - 1);
        let mut total = 0.0;
        let cumulative = (0..days)
            .map(|d| {
                let day = first + Duration::days(i64::from(d));
                let md = (chrono::Datelike::month(&day), chrono::Datelike::day(&day));
                let mut weight = 1.0 + f64::from(d) / f64::from(days); // a growing shop
                if matches!(
                    chrono::Datelike::weekday(&day),
                    chrono::Weekday::Sat | chrono::Weekday::Sun
                ) {
                    weight *= 1.3;
                }
                weight *= match md {
                    (11, 11) => 5.0,
                    (11, 10) | (11, 12) => 2.0,
                    (6, 18) => 3.0,
                    (11, 1..=9) => 1.4,
                    _ => 1.0,
                };
                total += weight;
                total
            })
            .collect();
        Calendar { first, cumulative }
    }

    /// A day drawn by busyness.
    pub fn day(&self, rng: &mut ChaCha8Rng) -> NaiveDate {
        let total = self.cumulative.last().copied().unwrap_or(1.0);
        let pick = rng.random::<f64>() * total;
        let index = self.cumulative.partition_point(|c| *c < pick);
        self.first + Duration::days(index as i64)
    }

    /// A Beijing local time on `day`, evenings busiest.
    pub fn local_time(rng: &mut ChaCha8Rng, day: NaiveDate) -> NaiveDateTime {
        const HOURS: &[(u32, u32)] = &[
            (0, 3),
            (1, 2),
            (2, 1),
            (3, 1),
            (4, 1),
            (5, 1),
            (6, 2),
            (7, 4),
            (8, 6),
            (9, 6),
            (10, 7),
            (11, 7),
            (12, 9),
            (13, 7),
            (14, 6),
            (15, 6),
            (16, 6),
            (17, 6),
            (18, 7),
            (19, 9),
            (20, 12),
            (21, 13),
            (22, 10),
            (23, 6),
        ];
        let hour = *weighted(rng, HOURS);
        day.and_hms_opt(hour, rng.random_range(0..60), rng.random_range(0..60))
            .unwrap_or_default()
            + Duration::milliseconds(rng.random_range(0..1000))
    }

    pub fn address(person: &Person) -> String {
        format!(
            "{} {} {}",
            person.province(),
            person.city_name(),
            person.address
        )
    }
}
