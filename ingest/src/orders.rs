//! Platform order exports → the one `orders` schema.
//!
//! Each platform names, formats and encodes orders its own way; an adapter maps one record to
//! an [`OrderRow`] or a [`Rejection`]. A file whose header lacks a required column is refused
//! whole, with the expected and found columns listed.

use std::collections::HashMap;

use chrono::FixedOffset;
use serde_json::{Value, json};

use crate::clean::{self, Phone, Rejection, reason};

/// One cleaned order.
#[derive(Debug, Clone, PartialEq)]
pub struct OrderRow {
    pub order_id: String,
    pub platform: &'static str,
    pub buyer_id: Option<String>,
    pub buyer_nick: Option<String>,
    pub fans_id: Option<String>,
    pub phone: Option<String>,
    pub amount: i64,
    pub refund_amount: Option<i64>,
    pub status: &'static str,
    pub created_at: i64,
    pub paid_at: Option<i64>,
    pub items: Option<String>,
    pub item_count: Option<i64>,
    pub region: Option<String>,
    pub address: Option<String>,
}

/// Which columns a CSV export must and may have, by the platform's own header names.
pub struct CsvLayout {
    /// Platform name.
    pub platform: &'static str,
    /// Columns a record cannot be read without.
    pub required: &'static [&'static str],
    /// Columns read when present.
    pub optional: &'static [&'static str],
}

/// The Tmall / Taobao seller centre's order report.
pub const TMALL: CsvLayout = CsvLayout {
    platform: "tmall",
    required: &[
        "订单编号",
        "买家会员名",
        "买家实际支付金额",
        "订单状态",
        "订单创建时间",
    ],
    optional: &[
        "联系手机",
        "订单付款时间",
        "宝贝标题",
        "宝贝总数量",
        "退款金额",
        "收货地址",
    ],
};

/// The Youzan console's order export.
pub const YOUZAN_CSV: CsvLayout = CsvLayout {
    platform: "youzan",
    required: &["订单号", "订单状态", "订单创建时间", "订单实付金额"],
    optional: &[
        "买家付款时间",
        "买家昵称",
        "买家ID",
        "粉丝ID",
        "收货人手机号",
        "退款金额",
        "商品名称",
        "商品数量",
        "商家编码",
        "收货人省份",
        "收货人城市",
        "详细收货地址",
    ],
};

/// Checks a header against a layout: every required column present.
pub fn check_header(
    layout: &CsvLayout,
    header: &[String],
) -> Result<HashMap<String, usize>, String> {
    let index: HashMap<String, usize> = header
        .iter()
        .enumerate()
        .map(|(i, h)| (h.trim().trim_start_matches('\u{feff}').to_string(), i))
        .collect();
    let missing: Vec<&str> = layout
        .required
        .iter()
        .filter(|c| !index.contains_key(**c))
        .copied()
        .collect();
    if missing.is_empty() {
        Ok(index)
    } else {
        Err(format!(
            "{} export lacks required columns {}; expected {} (and optionally {}); found {}",
            layout.platform,
            missing.join(", "),
            layout.required.join(", "),
            layout.optional.join(", "),
            header.join(", ")
        ))
    }
}

/// A CSV record with its header index.
pub struct Record<'a> {
    pub index: &'a HashMap<String, usize>,
    pub fields: &'a csv::StringRecord,
}

impl Record<'_> {
    fn get(&self, column: &str) -> Option<&str> {
        self.index
            .get(column)
            .and_then(|i| self.fields.get(*i))
            .map(|v| v.trim().trim_start_matches('\'').trim_matches('"'))
            .filter(|v| !v.is_empty())
    }

    fn required(&self, column: &str) -> Result<&str, Rejection> {
        self.get(column)
            .ok_or_else(|| Rejection::new(reason::MISSING_REQUIRED, format!("{column}: empty")))
    }
}

fn phone(field: &str, raw: Option<&str>) -> Result<Option<String>, Rejection> {
    Ok(match raw.map(|r| clean::phone(field, r)).transpose()? {
        Some(Phone::Valid(p)) => Some(p),
        _ => None,
    })
}

fn optional_time(
    field: &str,
    raw: Option<&str>,
    zone: FixedOffset,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<Option<i64>, Rejection> {
    raw.map(|r| clean::timestamp(field, r, zone, now))
        .transpose()
}

fn count(field: &str, raw: Option<&str>) -> Result<Option<i64>, Rejection> {
    raw.map(|r| {
        r.parse::<i64>()
            .ok()
            .filter(|n| (0..=100_000).contains(n))
            .ok_or_else(|| {
                Rejection::new(
                    reason::OUT_OF_RANGE,
                    format!("{field}: '{r}' is not a count"),
                )
            })
    })
    .transpose()
}

/// One record of the Tmall report.
pub fn tmall_record(
    record: &Record<'_>,
    zone: FixedOffset,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<OrderRow, Rejection> {
    let order_id = record.required("订单编号")?.to_string();
    let status_text = record.required("订单状态")?;
    let status = match status_text {
        "交易成功" => "completed",
        "交易关闭" => "closed",
        "等待买家付款" => "pending_payment",
        "买家已付款，等待卖家发货" | "买家已付款,等待卖家发货" => "paid",
        "卖家已发货，等待买家确认" | "卖家已发货,等待买家确认" => "shipped",
        other => {
            return Err(Rejection::new(
                reason::UNKNOWN_VALUE,
                format!("订单状态: '{other}' is not a Tmall order status"),
            ));
        }
    };
    let amount = clean::amount_fen("买家实际支付金额", record.required("买家实际支付金额")?)?;
    let refund = record
        .get("退款金额")
        .map(|r| clean::amount_fen("退款金额", r))
        .transpose()?;
    let address = record.get("收货地址").map(str::to_string);
    let title = record.get("宝贝标题");
    let item_count = count("宝贝总数量", record.get("宝贝总数量"))?;
    Ok(OrderRow {
        order_id,
        platform: "tmall",
        buyer_id: record.get("买家会员名").map(str::to_string),
        buyer_nick: record.get("买家会员名").map(str::to_string),
        fans_id: None,
        phone: phone("联系手机", record.get("联系手机"))?,
        amount,
        refund_amount: refund.filter(|r| *r > 0),
        status: refunded(status, amount, refund),
        created_at: clean::timestamp("订单创建时间", record.required("订单创建时间")?, zone, now)?,
        paid_at: optional_time("订单付款时间", record.get("订单付款时间"), zone, now)?,
        items: title.map(|t| json!([{"title": t, "quantity": item_count}]).to_string()),
        item_count,
        region: address
            .as_deref()
            .and_then(|a| a.split_whitespace().next())
            .map(str::to_string),
        address,
    })
}

/// A fully refunded order is `refunded` whatever the platform's own status says.
fn refunded(status: &'static str, amount: i64, refund: Option<i64>) -> &'static str {
    match refund {
        Some(r) if r > 0 && r >= amount => "refunded",
        _ => status,
    }
}

fn youzan_status(text: &str) -> Result<&'static str, Rejection> {
    Ok(match text {
        "WAIT_BUYER_PAY" | "待付款" => "pending_payment",
        "WAIT_SELLER_SEND_GOODS" | "待发货" => "paid",
        "WAIT_BUYER_CONFIRM_GOODS" | "已发货" => "shipped",
        "TRADE_SUCCESS" | "已完成" | "交易成功" => "completed",
        "TRADE_CLOSED" | "TRADE_CLOSED_BY_USER" | "已关闭" | "交易关闭" => "closed",
        other => {
            return Err(Rejection::new(
                reason::UNKNOWN_VALUE,
                format!("status: '{other}' is not a Youzan trade status"),
            ));
        }
    })
}

/// One record of the Youzan console export.
pub fn youzan_record(
    record: &Record<'_>,
    zone: FixedOffset,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<OrderRow, Rejection> {
    let amount = clean::amount_fen("订单实付金额", record.required("订单实付金额")?)?;
    let refund = record
        .get("退款金额")
        .map(|r| clean::amount_fen("退款金额", r))
        .transpose()?;
    let item_count = count("商品数量", record.get("商品数量"))?;
    let region = record.get("收货人省份").map(str::to_string);
    let address = [
        record.get("收货人省份"),
        record.get("收货人城市"),
        record.get("详细收货地址"),
    ]
    .into_iter()
    .flatten()
    .collect::<Vec<_>>()
    .join(" ");
    Ok(OrderRow {
        order_id: record.required("订单号")?.to_string(),
        platform: "youzan",
        buyer_id: record
            .get("买家ID")
            .filter(|b| *b != "0")
            .map(str::to_string),
        buyer_nick: record.get("买家昵称").map(str::to_string),
        fans_id: record
            .get("粉丝ID")
            .filter(|b| *b != "0")
            .map(str::to_string),
        phone: phone("收货人手机号", record.get("收货人手机号"))?,
        amount,
        refund_amount: refund.filter(|r| *r > 0),
        status: refunded(youzan_status(record.required("订单状态")?)?, amount, refund),
        created_at: clean::timestamp("订单创建时间", record.required("订单创建时间")?, zone, now)?,
        paid_at: optional_time("买家付款时间", record.get("买家付款时间"), zone, now)?,
        items: record.get("商品名称").map(|t| {
            json!([{"title": t, "sku": record.get("商家编码"), "quantity": item_count}]).to_string()
        }),
        item_count,
        region,
        address: clean::text(&address),
    })
}

fn json_text(trade: &Value, key: &str) -> Option<String> {
    match trade.get(key) {
        Some(Value::String(s)) => clean::text(s),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    }
}

/// One trade as Youzan's open API returns it.
pub fn youzan_trade(
    line: &str,
    zone: FixedOffset,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<OrderRow, Rejection> {
    let trade: Value = serde_json::from_str(line)
        .map_err(|e| Rejection::new(reason::INVALID_JSON, format!("not JSON: {e}")))?;
    if !trade.is_object() {
        return Err(Rejection::new(
            reason::INVALID_JSON,
            "a trade is a JSON object",
        ));
    }
    let required = |key: &str| {
        json_text(&trade, key)
            .ok_or_else(|| Rejection::new(reason::MISSING_REQUIRED, format!("{key}: missing")))
    };
    let amount = clean::amount_fen("payment", &required("payment")?)?;
    let refund = json_text(&trade, "refunded_fee")
        .map(|r| clean::amount_fen("refunded_fee", &r))
        .transpose()?;
    let lines: Vec<Value> = trade
        .get("orders")
        .and_then(Value::as_array)
        .map(|orders| {
            orders
                .iter()
                .map(|o| json!({"title": o.get("title"), "sku": o.get("outer_sku_id"), "quantity": o.get("num"), "price": o.get("price")}))
                .collect()
        })
        .unwrap_or_default();
    let item_count: i64 = lines.iter().filter_map(|l| l["quantity"].as_i64()).sum();
    let address = ["receiver_state", "receiver_city", "receiver_address"]
        .iter()
        .filter_map(|k| json_text(&trade, k))
        .collect::<Vec<_>>()
        .join(" ");
    Ok(OrderRow {
        order_id: required("tid")?,
        platform: "youzan",
        buyer_id: json_text(&trade, "buyer_id").filter(|b| b != "0"),
        buyer_nick: json_text(&trade, "fans_nickname"),
        fans_id: json_text(&trade, "fans_id").filter(|b| b != "0"),
        phone: phone(
            "receiver_mobile",
            json_text(&trade, "receiver_mobile").as_deref(),
        )?,
        amount,
        refund_amount: refund.filter(|r| *r > 0),
        status: refunded(youzan_status(&required("status")?)?, amount, refund),
        created_at: clean::timestamp("created", &required("created")?, zone, now)?,
        paid_at: optional_time(
            "pay_time",
            json_text(&trade, "pay_time").as_deref(),
            zone,
            now,
        )?,
        items: (!lines.is_empty()).then(|| Value::Array(lines).to_string()),
        item_count: Some(item_count),
        region: json_text(&trade, "receiver_state"),
        address: clean::text(&address),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn zone() -> FixedOffset {
        clean::zone_offset("Asia/Shanghai").expect("zone")
    }

    fn now() -> chrono::DateTime<chrono::Utc> {
        chrono::Utc
            .with_ymd_and_hms(2026, 11, 23, 0, 0, 0)
            .single()
            .expect("t")
    }

    fn record(header: &[&str], values: &[&str]) -> (HashMap<String, usize>, csv::StringRecord) {
        let header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
        (
            check_header(&TMALL, &header).unwrap_or_default(),
            csv::StringRecord::from(values.to_vec()),
        )
    }

    #[test]
    fn a_tmall_record_maps_to_the_orders_schema() {
        let header = [
            "订单编号",
            "买家会员名",
            "买家实际支付金额",
            "订单状态",
            "订单创建时间",
            "联系手机",
            "订单付款时间",
            "退款金额",
            "收货地址",
            "宝贝标题",
            "宝贝总数量",
        ];
        let (index, fields) = record(
            &header,
            &[
                "3913943037097068615",
                "tb0eb6b4a3",
                "1,699.00",
                "卖家已发货，等待买家确认",
                "2026/10/01 12:34",
                "'13812345678",
                "2026-10-01 12:40:00",
                "0.00",
                "浙江省 杭州 文三路1号",
                "净水器",
                "2",
            ],
        );
        let row = tmall_record(
            &Record {
                index: &index,
                fields: &fields,
            },
            zone(),
            now(),
        )
        .expect("clean");
        assert_eq!(row.order_id, "3913943037097068615");
        assert_eq!(row.amount, 169_900);
        assert_eq!(row.status, "shipped");
        assert_eq!(row.phone.as_deref(), Some("+8613812345678"));
        assert_eq!(row.region.as_deref(), Some("浙江省"));
        assert_eq!(row.refund_amount, None);
        let created = chrono::Utc
            .with_ymd_and_hms(2026, 10, 1, 4, 34, 0)
            .single()
            .expect("t");
        assert_eq!(row.created_at, created.timestamp_micros());

        let (index, fields) = record(
            &header,
            &[
                "1",
                "tb",
                "99.00",
                "交易关闭",
                "2026-10-01 12:00:00",
                "138****5678",
                "",
                "99.00",
                "",
                "",
                "",
            ],
        );
        let row = tmall_record(
            &Record {
                index: &index,
                fields: &fields,
            },
            zone(),
            now(),
        )
        .expect("clean");
        assert_eq!(row.status, "refunded");
        assert_eq!(row.phone, None, "masked phones are not identities");
        assert_eq!(row.paid_at, None);

        let (index, fields) = record(
            &header,
            &[
                "2",
                "tb",
                "99.00",
                "发货中",
                "2026-10-01 12:00:00",
                "",
                "",
                "",
                "",
                "",
                "",
            ],
        );
        let err = tmall_record(
            &Record {
                index: &index,
                fields: &fields,
            },
            zone(),
            now(),
        )
        .expect_err("status");
        assert_eq!(err.code, reason::UNKNOWN_VALUE);
        assert!(err.message.contains("订单状态"));
    }

    #[test]
    fn a_header_without_required_columns_is_refused_with_both_lists() {
        let header: Vec<String> = ["订单编号", "买家会员名", "订单状态"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let err = check_header(&TMALL, &header).expect_err("missing");
        assert!(
            err.contains("lacks required columns 买家实际支付金额, 订单创建时间"),
            "{err}"
        );
        assert!(
            err.contains("found 订单编号, 买家会员名, 订单状态"),
            "{err}"
        );
    }

    #[test]
    fn a_youzan_api_trade_maps_to_the_orders_schema() {
        let line = r#"{"tid":"E1","status":"TRADE_SUCCESS","created":"2026-10-01 12:00:00","pay_time":"2026-10-01 12:01:00","payment":"2509.00","refunded_fee":"0.00","buyer_id":100013,"fans_id":2000017,"fans_nickname":"yz_1","receiver_mobile":"13812345678","receiver_state":"浙江省","receiver_city":"杭州","receiver_address":"文三路1号","orders":[{"title":"净水器","num":1,"price":"2499.00","outer_sku_id":"WP-600G"},{"title":"安装","num":1,"price":"10.00","outer_sku_id":"SVC"}]}"#;
        let row = youzan_trade(line, zone(), now()).expect("clean");
        assert_eq!(
            (row.order_id.as_str(), row.status, row.amount),
            ("E1", "completed", 250_900)
        );
        assert_eq!(row.buyer_id.as_deref(), Some("100013"));
        assert_eq!(row.fans_id.as_deref(), Some("2000017"));
        assert_eq!(row.item_count, Some(2));
        assert_eq!(row.address.as_deref(), Some("浙江省 杭州 文三路1号"));
        let err =
            youzan_trade(&line.replace(r#""tid":"E1","#, ""), zone(), now()).expect_err("no tid");
        assert_eq!(
            (err.code, err.message.as_str()),
            (reason::MISSING_REQUIRED, "tid: missing")
        );
        let err = youzan_trade(&line.replace("2509.00", "-2509.00"), zone(), now())
            .expect_err("negative");
        assert_eq!(err.code, reason::NEGATIVE_AMOUNT);
    }
}
