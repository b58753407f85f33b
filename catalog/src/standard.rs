//! Field standards: what every column of every table means, may hold and who may see it.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use serde::{Deserialize, Serialize};

use crate::table::ColumnLayout;

/// Order statuses that count as bought: the wide table's order counts and GMV, and order
/// conditions of audiences, all count these.
pub const PAID_STATUSES: &[&str] = &["paid", "shipped", "completed", "refunded"];

/// Precision and scale of every `decimal` field (money, in yuan with cents).
pub const DECIMAL_PRECISION: u8 = 18;
/// Scale of every `decimal` field.
pub const DECIMAL_SCALE: i8 = 2;

/// The value type of a field, which decides its storage and the operators conditions may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ValueType {
    /// Free text.
    String,
    /// Text restricted to a known list of values.
    Enum,
    /// 64-bit integer.
    Int,
    /// 64-bit float.
    Float,
    /// Exact decimal (18, 2): money.
    Decimal,
    /// UTC timestamp in microseconds.
    Time,
    /// Calendar date (UTC unless the catalog sets a zone).
    Date,
    /// True or false.
    Bool,
    /// JSON document kept as text.
    Json,
    /// Opaque bytes (serialised bitmaps).
    Binary,
}

impl ValueType {
    /// The Arrow type a column of this value type is stored as.
    pub fn arrow_type(self) -> DataType {
        match self {
            ValueType::String | ValueType::Enum | ValueType::Json => DataType::Utf8,
            ValueType::Int => DataType::Int64,
            ValueType::Float => DataType::Float64,
            ValueType::Decimal => DataType::Decimal128(DECIMAL_PRECISION, DECIMAL_SCALE),
            ValueType::Time => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            ValueType::Date => DataType::Date32,
            ValueType::Bool => DataType::Boolean,
            ValueType::Binary => DataType::Binary,
        }
    }

    /// True for types with an order, where a `range` applies.
    pub fn is_numeric(self) -> bool {
        matches!(self, ValueType::Int | ValueType::Float | ValueType::Decimal)
    }
}

impl fmt::Display for ValueType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = serde_json::to_value(self)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        f.write_str(&text)
    }
}

/// How sensitive a field's values are; roles are granted access per level.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Default,
)]
#[serde(rename_all = "snake_case")]
pub enum Sensitivity {
    /// Anyone in the company may see it.
    #[default]
    Public,
    /// Staff who work with the data.
    Internal,
    /// Personal data: phones, buyer names, addresses.
    Confidential,
    /// Credentials and anything never shown in clear.
    Secret,
}

impl Sensitivity {
    /// Every level, least sensitive first.
    pub const ALL: [Sensitivity; 4] = [
        Sensitivity::Public,
        Sensitivity::Internal,
        Sensitivity::Confidential,
        Sensitivity::Secret,
    ];
}

impl fmt::Display for Sensitivity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Sensitivity::Public => "public",
            Sensitivity::Internal => "internal",
            Sensitivity::Confidential => "confidential",
            Sensitivity::Secret => "secret",
        })
    }
}

/// The standard for one field of one table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldStandard {
    /// Column name.
    pub name: String,
    /// Display name in Chinese.
    pub zh: String,
    /// Display name in English.
    pub en: String,
    /// Value type.
    #[serde(rename = "type")]
    pub value_type: ValueType,
    /// Inclusive allowed range for numeric fields.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range: Option<[f64; 2]>,
    /// Allowed values for enum fields.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
    /// Whether every row must have a value.
    #[serde(default)]
    pub required: bool,
    /// SQL expression over other columns of the same table for derived fields.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub derivation: Option<String>,
    /// Team or person answerable for the field.
    #[serde(default = "default_owner")]
    pub owner: String,
    /// Sensitivity level.
    #[serde(default)]
    pub sensitivity: Sensitivity,
    /// What the field means.
    #[serde(default)]
    pub description: String,
    /// Highest acceptable share of nulls before the quality monitor fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_null_ratio: Option<f64>,
    /// Bucket edges of a numeric field indexed as tag bitmaps: `[18, 25, 35]` makes the
    /// buckets `<18`, `18-25`, `25-35` and `>=35` (lower edge included).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub buckets: Vec<f64>,
}

impl FieldStandard {
    /// The bucket label of `value` under `buckets` (see the field's doc).
    pub fn bucket(&self, value: f64) -> Option<String> {
        let edges = &self.buckets;
        let (first, last) = (edges.first()?, edges.last()?);
        let show = |x: f64| {
            if x.fract() == 0.0 {
                format!("{}", x as i64)
            } else {
                format!("{x}")
            }
        };
        if value < *first {
            return Some(format!("<{}", show(*first)));
        }
        if value >= *last {
            return Some(format!(">={}", show(*last)));
        }
        edges
            .windows(2)
            .find(|w| value >= w[0] && value < w[1])
            .map(|w| format!("{}-{}", show(w[0]), show(w[1])))
    }

    /// Every label [`FieldStandard::bucket`] gives under the field's edges.
    pub fn bucket_labels(&self) -> Vec<String> {
        let edges = &self.buckets;
        let (Some(first), Some(last)) = (edges.first(), edges.last()) else {
            return Vec::new();
        };
        std::iter::once(first - 1.0)
            .chain(edges.windows(2).map(|w| w[0]))
            .chain(std::iter::once(*last))
            .filter_map(|x| self.bucket(x))
            .collect()
    }
}

fn default_owner() -> String {
    "data-platform".to_string()
}

impl FieldStandard {
    /// The Arrow field this standard describes.
    pub fn arrow_field(&self) -> Field {
        Field::new(&self.name, self.value_type.arrow_type(), !self.required)
    }

    /// True when `value` lies inside the field's range (numeric) or value list (enum).
    /// Fields without a range or list accept anything.
    pub fn accepts_number(&self, value: f64) -> bool {
        match self.range {
            Some([lo, hi]) => value >= lo && value <= hi,
            None => true,
        }
    }

    /// True when `value` is one of the enum's values (or the field is not an enum).
    pub fn accepts_text(&self, value: &str) -> bool {
        self.value_type != ValueType::Enum || self.values.iter().any(|v| v == value)
    }

    /// True when the quality monitor can count out-of-range values of this field.
    pub fn has_domain(&self) -> bool {
        (self.value_type.is_numeric() && self.range.is_some())
            || (self.value_type == ValueType::Enum && !self.values.is_empty())
    }
}

/// Thresholds of the quality monitors of one table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct MonitorConfig {
    /// Age of the newest commit that raises WARN / FAIL, e.g. `"26h"`, `"3d"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub freshness: Option<Thresholds<String>>,
    /// Relative change of the row count between the two newest versions (0.5 = ±50%).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub row_change: Option<Thresholds<f64>>,
    /// Share of values outside a field's range or enum values.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub out_of_range: Option<Thresholds<f64>>,
}

/// A WARN and a FAIL threshold; a value strictly above a threshold raises it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Thresholds<T> {
    /// Above this: WARN.
    pub warn: T,
    /// Above this: FAIL.
    pub fail: T,
}

/// One table as the catalog defines it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableDefinition {
    /// Table name (a folder of the warehouse, a SQL table name).
    pub name: String,
    /// Display name in Chinese.
    pub zh: String,
    /// Display name in English.
    pub en: String,
    /// What the table holds.
    #[serde(default)]
    pub description: String,
    /// Columns the table is partitioned by.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub partition_by: Vec<String>,
    /// Natural key: upserts replace rows with the same key.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub key: Vec<String>,
    /// Sort order inside files.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sort_by: Vec<String>,
    /// Quality monitor thresholds.
    #[serde(default)]
    pub monitors: MonitorConfig,
    /// Every field, in column order.
    pub fields: Vec<FieldStandard>,
}

impl TableDefinition {
    /// The Arrow schema of the table, derived from its field standards.
    pub fn arrow_schema(&self) -> SchemaRef {
        Arc::new(Schema::new(
            self.fields
                .iter()
                .map(FieldStandard::arrow_field)
                .collect::<Vec<_>>(),
        ))
    }

    /// The standard of field `name`.
    pub fn field(&self, name: &str) -> Option<&FieldStandard> {
        self.fields.iter().find(|f| f.name == name)
    }

    /// How the table's columns are encoded in its files:
    /// - written as deltas: every time column, and the integer and date columns files are
    ///   sorted by (`events.user_id`, `users.user_id`);
    /// - written plain, without a dictionary: JSON documents and the key when it is one
    ///   column (and not written as deltas), whose values are nearly all distinct;
    /// - written without statistics or compression: the key when it is one text column, an
    ///   id drawn at random (a message id, a hash) that neither prunes files nor compresses;
    /// - written without statistics: JSON documents, and text the files are not sorted by
    ///   and that is not part of a key of several columns. Rows of every person and every
    ///   hour share a page, so such a page's least and greatest texts span nearly all
    ///   values and skip nothing, while finding them compares every value written.
    pub fn column_layout(&self) -> ColumnLayout {
        let key = match self.key.as_slice() {
            [only] => Some(only),
            _ => None,
        };
        let random_id =
            |f: &&FieldStandard| f.value_type == ValueType::String && Some(&f.name) == key;
        let unordered_text = |f: &&FieldStandard| {
            matches!(f.value_type, ValueType::String | ValueType::Enum)
                && !self.sort_by.contains(&f.name)
                && !self.partition_by.contains(&f.name)
                && (key.is_some() || !self.key.contains(&f.name))
        };
        let delta = |f: &&FieldStandard| match f.value_type {
            ValueType::Time => true,
            ValueType::Int | ValueType::Date => self.sort_by.contains(&f.name),
            _ => false,
        };
        ColumnLayout {
            distinct: self
                .fields
                .iter()
                .filter(|f| !delta(f))
                .filter(|f| f.value_type == ValueType::Json || Some(&f.name) == key)
                .map(|f| f.name.clone())
                .collect(),
            delta: self
                .fields
                .iter()
                .filter(delta)
                .map(|f| f.name.clone())
                .collect(),
            unindexed: self
                .fields
                .iter()
                .filter(|f| f.value_type == ValueType::Json || unordered_text(f))
                .map(|f| f.name.clone())
                .collect(),
            uncompressed: self
                .fields
                .iter()
                .filter(random_id)
                .map(|f| f.name.clone())
                .collect(),
        }
    }
}

/// A named condition tree analysts reuse by name (`{"derived": "middle_aged_male"}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DerivedCondition {
    /// Display name in Chinese.
    pub zh: String,
    /// Display name in English.
    pub en: String,
    /// What it selects.
    #[serde(default)]
    pub description: String,
    /// The condition tree, in the builder's JSON format.
    pub conditions: serde_json::Value,
}

/// Named derived conditions, by name.
pub type DerivedConditions = BTreeMap<String, DerivedCondition>;
