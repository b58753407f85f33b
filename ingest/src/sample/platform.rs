//! Order exports of the sample world, in each platform's own shape.
//!
//! - Youzan: trades as the open API returns them (JSON), and the console's CSV export of the
//!   same trades taken later (statuses moved on, refunds issued) — a re-import must update.
//! - Tmall: the seller centre's order report, GBK-encoded CSV with Chinese headers, amounts in
//!   yuan, phones sometimes masked or prefixed with a quote as Excel users leave them.

use chrono::{Duration, NaiveDate, NaiveDateTime};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde_json::{Value, json};

use super::world::{Calendar, PRODUCTS, Person, zipf};

/// A trade: one platform order with its lines.
pub(crate) struct Trade {
    pub person: usize,
    pub id: String,
    pub created: NaiveDateTime,
    pub paid: Option<NaiveDateTime>,
    pub lines: Vec<(usize, u32)>,
    pub status: TradeStatus,
    pub refund_fen: i64,
    pub post_fen: i64,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum TradeStatus {
    WaitPay,
    WaitSend,
    WaitConfirm,
    Success,
    Closed,
}

impl Trade {
    pub fn goods_fen(&self) -> i64 {
        self.lines
            .iter()
            .map(|(p, n)| PRODUCTS[*p].price_fen * i64::from(*n))
            .sum()
    }

    pub fn paid_fen(&self) -> i64 {
        if self.paid.is_some() {
            self.goods_fen() + self.post_fen
        } else {
            0
        }
    }

    pub fn quantity(&self) -> u32 {
        self.lines.iter().map(|(_, n)| n).sum()
    }

    pub fn title(&self) -> String {
        self.lines
            .iter()
            .map(|(p, _)| PRODUCTS[*p].title)
            .collect::<Vec<_>>()
            .join("，")
    }

    /// The same trade seen some days later: unpaid ones paid or closed, sent ones confirmed,
    /// some successful ones refunded.
    pub fn later(&self, rng: &mut ChaCha8Rng) -> Trade {
        let mut next = Trade {
            person: self.person,
            id: self.id.clone(),
            created: self.created,
            paid: self.paid,
            lines: self.lines.clone(),
            status: self.status,
            refund_fen: self.refund_fen,
            post_fen: self.post_fen,
        };
        match self.status {
            TradeStatus::WaitPay => {
                if rng.random_bool(0.5) {
                    next.status = TradeStatus::WaitSend;
                    next.paid = Some(self.created + Duration::minutes(rng.random_range(1..600)));
                } else {
                    next.status = TradeStatus::Closed;
                }
            }
            TradeStatus::WaitSend => next.status = TradeStatus::WaitConfirm,
            TradeStatus::WaitConfirm => next.status = TradeStatus::Success,
            TradeStatus::Success if self.refund_fen == 0 && rng.random_bool(0.15) => {
                next.refund_fen = PRODUCTS[self.lines[0].0].price_fen;
            }
            _ => {}
        }
        next
    }
}

/// Trades for the people who shop on a platform.
pub(crate) fn trades(
    rng: &mut ChaCha8Rng,
    people: &[Person],
    shops: impl Fn(&Person) -> bool,
    calendar: &Calendar,
    end: NaiveDate,
    id: impl Fn(&mut ChaCha8Rng, usize) -> String,
) -> Vec<Trade> {
    let mut out = Vec::new();
    for (index, person) in people.iter().enumerate() {
        if !shops(person) {
            continue;
        }
        let count = 1 + zipf(rng, 6);
        for _ in 0..count {
            let day = calendar.day(rng);
            let created = Calendar::local_time(rng, day);
            let lines: Vec<(usize, u32)> = (0..1 + zipf(rng, 3))
                .map(|_| (zipf(rng, PRODUCTS.len()), 1 + zipf(rng, 3) as u32))
                .collect();
            let age_days = (end - day).num_days();
            // Recent trades are still in flight; older ones have settled.
            let status = if age_days < 3 {
                match rng.random_range(0..10) {
                    0..=1 => TradeStatus::WaitPay,
                    2..=5 => TradeStatus::WaitSend,
                    6..=8 => TradeStatus::WaitConfirm,
                    _ => TradeStatus::Closed,
                }
            } else {
                match rng.random_range(0..20) {
                    0..=1 => TradeStatus::Closed,
                    2 => TradeStatus::WaitConfirm,
                    _ => TradeStatus::Success,
                }
            };
            let paid = (status != TradeStatus::WaitPay
                && !(status == TradeStatus::Closed && rng.random_bool(0.7)))
            .then(|| created + Duration::seconds(rng.random_range(10..3600)));
            let refund_fen = if status == TradeStatus::Success && rng.random_bool(0.04) {
                PRODUCTS[lines[0].0].price_fen
            } else {
                0
            };
            let post_fen = if rng.random_bool(0.1) { 1000 } else { 0 };
            let trade_id = id(rng, out.len());
            out.push(Trade {
                person: index,
                id: trade_id,
                created,
                paid,
                lines,
                status,
                refund_fen,
                post_fen,
            });
        }
    }
    out.sort_by(|a, b| a.created.cmp(&b.created).then(a.id.cmp(&b.id)));
    out
}

fn yuan(fen: i64) -> String {
    format!("{}.{:02}", fen / 100, (fen % 100).abs())
}

fn local(t: NaiveDateTime) -> String {
    t.format("%Y-%m-%d %H:%M:%S").to_string()
}

/// A Youzan trade as `youzan.trades.sold.get` returns it.
pub(crate) fn youzan_json(trade: &Trade, person: &Person) -> Value {
    let (buyer_id, fans_id, nick) = person.youzan.clone().unwrap_or((0, 0, String::new()));
    let status = match trade.status {
        TradeStatus::WaitPay => "WAIT_BUYER_PAY",
        TradeStatus::WaitSend => "WAIT_SELLER_SEND_GOODS",
        TradeStatus::WaitConfirm => "WAIT_BUYER_CONFIRM_GOODS",
        TradeStatus::Success => "TRADE_SUCCESS",
        TradeStatus::Closed => "TRADE_CLOSED",
    };
    let orders: Vec<Value> = trade
        .lines
        .iter()
        .enumerate()
        .map(|(i, (p, n))| {
            let product = &PRODUCTS[*p];
            json!({
                "oid": format!("{}{:02}", trade.id, i + 1),
                "title": product.title,
                "num": n,
                "price": yuan(product.price_fen),
                "payment": yuan(product.price_fen * i64::from(*n)),
                "outer_sku_id": product.sku,
            })
        })
        .collect();
    json!({
        "tid": trade.id,
        "status": status,
        "created": local(trade.created),
        "update_time": local(trade.paid.unwrap_or(trade.created)),
        "pay_time": trade.paid.map(local).unwrap_or_default(),
        "payment": yuan(trade.paid_fen()),
        "total_fee": yuan(trade.goods_fen() + trade.post_fen),
        "post_fee": yuan(trade.post_fen),
        "refund_state": if trade.refund_fen > 0 { "PARTIAL_REFUNDED" } else { "NO_REFUND" },
        "refunded_fee": yuan(trade.refund_fen),
        "buyer_id": buyer_id,
        "fans_id": fans_id,
        "fans_nickname": nick,
        "receiver_name": person.name,
        "receiver_mobile": person.phone.clone().unwrap_or_default(),
        "receiver_state": person.province(),
        "receiver_city": person.city_name(),
        "receiver_address": person.address,
        "orders": orders,
    })
}

/// Header of the Youzan console's order CSV export.
pub(crate) const YOUZAN_CSV_HEADER: &[&str] = &[
    "订单号",
    "订单状态",
    "订单创建时间",
    "买家付款时间",
    "买家昵称",
    "买家ID",
    "粉丝ID",
    "收货人手机号",
    "订单实付金额",
    "退款金额",
    "商品名称",
    "商品数量",
    "商家编码",
    "收货人省份",
    "收货人城市",
    "详细收货地址",
];

/// A Youzan trade as a row of the console's CSV export.
pub(crate) fn youzan_csv(trade: &Trade, person: &Person) -> Vec<String> {
    let (buyer_id, fans_id, nick) = person.youzan.clone().unwrap_or((0, 0, String::new()));
    let status = match trade.status {
        TradeStatus::WaitPay => "待付款",
        TradeStatus::WaitSend => "待发货",
        TradeStatus::WaitConfirm => "已发货",
        TradeStatus::Success => "已完成",
        TradeStatus::Closed => "已关闭",
    };
    vec![
        trade.id.clone(),
        status.into(),
        local(trade.created),
        trade.paid.map(local).unwrap_or_default(),
        nick,
        buyer_id.to_string(),
        fans_id.to_string(),
        person.phone.clone().unwrap_or_default(),
        yuan(trade.paid_fen()),
        yuan(trade.refund_fen),
        trade.title(),
        trade.quantity().to_string(),
        PRODUCTS[trade.lines[0].0].sku.into(),
        person.province().into(),
        person.city_name().into(),
        person.address.clone(),
    ]
}

/// Header of the Tmall seller centre's order report.
pub(crate) const TMALL_CSV_HEADER: &[&str] = &[
    "订单编号",
    "买家会员名",
    "买家支付宝账号",
    "买家应付货款",
    "买家应付邮费",
    "总金额",
    "买家实际支付金额",
    "订单状态",
    "买家留言",
    "收货人姓名",
    "收货地址",
    "运送方式",
    "联系电话",
    "联系手机",
    "订单创建时间",
    "订单付款时间",
    "宝贝标题",
    "宝贝种类",
    "宝贝总数量",
    "店铺名称",
    "订单关闭原因",
    "退款金额",
];

/// A Tmall trade as a row of the seller centre's report.
pub(crate) fn tmall_csv(rng: &mut ChaCha8Rng, trade: &Trade, person: &Person) -> Vec<String> {
    let status = match trade.status {
        TradeStatus::WaitPay => "等待买家付款",
        TradeStatus::WaitSend => "买家已付款，等待卖家发货",
        TradeStatus::WaitConfirm => "卖家已发货，等待买家确认",
        TradeStatus::Success => "交易成功",
        TradeStatus::Closed => "交易关闭",
    };
    let phone = match &person.phone {
        Some(p) => match rng.random_range(0..10) {
            0 | 1 => format!("'{p}"),
            2 | 3 => format!("{}****{}", &p[0..3], &p[7..]),
            _ => p.clone(),
        },
        None => String::new(),
    };
    let alipay = person
        .phone
        .as_ref()
        .map(|p| format!("{}****{}", &p[0..3], &p[7..]))
        .unwrap_or_else(|| "***@163.com".into());
    // Some sellers re-save the report in Excel, which rewrites times without seconds.
    let time = |t: NaiveDateTime, rng: &mut ChaCha8Rng| {
        if rng.random_bool(0.1) {
            t.format("%Y/%m/%d %H:%M").to_string()
        } else {
            local(t)
        }
    };
    let created = time(trade.created, rng);
    let paid = trade.paid.map(|t| time(t, rng)).unwrap_or_default();
    vec![
        trade.id.clone(),
        person.tmall.clone().unwrap_or_default(),
        alipay,
        yuan(trade.goods_fen()),
        yuan(trade.post_fen),
        yuan(trade.goods_fen() + trade.post_fen),
        yuan(trade.paid_fen()),
        status.into(),
        String::new(),
        person.name.clone(),
        Calendar::address(person),
        "快递".into(),
        String::new(),
        phone,
        created,
        paid,
        trade.title(),
        trade.lines.len().to_string(),
        trade.quantity().to_string(),
        "Shoal家电旗舰店".into(),
        if trade.status == TradeStatus::Closed {
            "买家不想买了".into()
        } else {
            String::new()
        },
        yuan(trade.refund_fen),
    ]
}

/// One CSV record, quoted where needed (RFC 4180).
pub(crate) fn csv_line(fields: &[String]) -> String {
    let mut line = fields
        .iter()
        .map(|f| {
            if f.contains([',', '"', '\n', '\r']) {
                format!("\"{}\"", f.replace('"', "\"\""))
            } else {
                f.clone()
            }
        })
        .collect::<Vec<_>>()
        .join(",");
    line.push_str("\r\n");
    line
}
