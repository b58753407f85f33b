//! The catalog definition and its home in the warehouse.
//!
//! The definition (tables, field standards, derived conditions, roles) is a document kept in
//! the `shoal_catalog` Delta table of the warehouse itself, so a shared warehouse means a shared
//! catalog and every change is a versioned commit. A new warehouse is seeded from the default
//! definition shipped in `data/catalog.toml`.

use std::collections::BTreeSet;
use std::sync::Arc;

use arrow::array::{Array, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::identity::IdentityRules;
use crate::role::Roles;
use crate::standard::{DerivedConditions, TableDefinition, ValueType};
use crate::table::{CommitNote, Table};
use crate::warehouse::{Warehouse, validate_table_name};

/// The default definition, shipped in `data/catalog.toml`.
pub const DEFAULT_DEFINITION: &str = include_str!("../../data/catalog.toml");

/// The table holding the catalog's own history.
pub const CATALOG_TABLE: &str = "shoal_catalog";

/// Everything the catalog defines.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogDefinition {
    /// Time zone that date windows and `event_date` use; `UTC` unless set.
    #[serde(default = "default_zone")]
    pub time_zone: String,
    /// Every table.
    pub tables: Vec<TableDefinition>,
    /// Named derived conditions.
    #[serde(default)]
    pub derived: DerivedConditions,
    /// Roles and their grants.
    pub roles: Roles,
    /// Identity types and the rules of identity merge.
    #[serde(default = "default_identity")]
    pub identity: IdentityRules,
}

fn default_zone() -> String {
    "UTC".to_string()
}

/// The shipped identity rules, for definitions saved before they existed.
fn default_identity() -> IdentityRules {
    #[derive(Deserialize)]
    struct Shipped {
        identity: IdentityRules,
    }
    toml::from_str::<Shipped>(DEFAULT_DEFINITION)
        .map(|s| s.identity)
        .unwrap_or(IdentityRules { types: Vec::new() })
}

impl CatalogDefinition {
    /// Parses and checks a definition written in TOML.
    pub fn from_toml(text: &str) -> Result<Self> {
        let definition: CatalogDefinition =
            toml::from_str(text).map_err(|e| Error::InvalidDefinition {
                path: e
                    .span()
                    .map(|s| format!("byte {}", s.start))
                    .unwrap_or_else(|| "document".into()),
                reason: e.message().to_string(),
            })?;
        definition.check()?;
        Ok(definition)
    }

    /// Parses and checks a definition written in JSON.
    pub fn from_json(text: &str) -> Result<Self> {
        let definition: CatalogDefinition =
            serde_json::from_str(text).map_err(|e| Error::InvalidDefinition {
                path: format!("line {} column {}", e.line(), e.column()),
                reason: e.to_string(),
            })?;
        definition.check()?;
        Ok(definition)
    }

    /// The shipped default definition.
    pub fn default_definition() -> Result<Self> {
        CatalogDefinition::from_toml(DEFAULT_DEFINITION)
    }

    /// The definition of table `name`.
    pub fn table(&self, name: &str) -> Result<&TableDefinition> {
        self.tables
            .iter()
            .find(|t| t.name == name)
            .ok_or_else(|| Error::UnknownTable {
                name: name.to_string(),
            })
    }

    /// Checks that the definition holds together; the error names the offending place.
    pub fn check(&self) -> Result<()> {
        let invalid = |path: String, reason: String| Error::InvalidDefinition { path, reason };
        let mut names = BTreeSet::new();
        for table in &self.tables {
            let at = format!("tables.{}", table.name);
            validate_table_name(&table.name).map_err(|e| invalid(at.clone(), e.to_string()))?;
            if table.name == CATALOG_TABLE || !names.insert(table.name.as_str()) {
                return Err(invalid(at, "table name used twice or reserved".into()));
            }
            let mut fields = BTreeSet::new();
            for field in &table.fields {
                let at = format!("tables.{}.fields.{}", table.name, field.name);
                validate_table_name(&field.name).map_err(|_| {
                    invalid(at.clone(), "field names are lowercase identifiers".into())
                })?;
                if !fields.insert(field.name.as_str()) {
                    return Err(invalid(at, "field defined twice".into()));
                }
                if let Some([lo, hi]) = field.range {
                    if !field.value_type.is_numeric() {
                        return Err(invalid(
                            at,
                            format!("a range needs a numeric type, not {}", field.value_type),
                        ));
                    }
                    if lo > hi || lo.is_nan() || hi.is_nan() {
                        return Err(invalid(at, format!("range [{lo}, {hi}] is empty")));
                    }
                }
                match (field.value_type, field.values.is_empty()) {
                    (ValueType::Enum, true) => {
                        return Err(invalid(at, "an enum lists its values".into()));
                    }
                    (t, false) if t != ValueType::Enum => {
                        return Err(invalid(at, format!("values only apply to enums, not {t}")));
                    }
                    _ => {}
                }
                if !field.buckets.is_empty()
                    && (!field.value_type.is_numeric()
                        || field.buckets.windows(2).any(|w| w[0] >= w[1])
                        || field.buckets.iter().any(|b| !b.is_finite()))
                {
                    return Err(invalid(
                        at,
                        "buckets are increasing finite edges of a numeric field".into(),
                    ));
                }
                if let Some(r) = field.max_null_ratio
                    && !(0.0..=1.0).contains(&r)
                {
                    return Err(invalid(at, format!("max_null_ratio {r} is not in [0, 1]")));
                }
            }
            for (what, columns) in [
                ("partition_by", &table.partition_by),
                ("key", &table.key),
                ("sort_by", &table.sort_by),
            ] {
                for column in columns {
                    if table.field(column).is_none() {
                        return Err(invalid(
                            format!("tables.{}.{what}", table.name),
                            format!("'{column}' is not a field of the table"),
                        ));
                    }
                }
            }
            let m = &table.monitors;
            if let Some(t) = &m.freshness {
                let warn = parse_duration(&t.warn)
                    .map_err(|e| invalid(format!("{at}.monitors.freshness.warn"), e))?;
                let fail = parse_duration(&t.fail)
                    .map_err(|e| invalid(format!("{at}.monitors.freshness.fail"), e))?;
                if warn > fail {
                    return Err(invalid(
                        format!("{at}.monitors.freshness"),
                        "warn is above fail".into(),
                    ));
                }
            }
            for (what, t) in [
                ("row_change", &m.row_change),
                ("out_of_range", &m.out_of_range),
            ] {
                if let Some(t) = t
                    && (t.warn > t.fail || t.warn < 0.0)
                {
                    return Err(invalid(
                        format!("{at}.monitors.{what}"),
                        "need 0 <= warn <= fail".into(),
                    ));
                }
            }
        }
        for (name, derived) in &self.derived {
            validate_table_name(name).map_err(|_| {
                invalid(
                    format!("derived.{name}"),
                    "names are lowercase identifiers".into(),
                )
            })?;
            if !derived.conditions.is_object() {
                return Err(invalid(
                    format!("derived.{name}.conditions"),
                    "a condition tree is a JSON object".into(),
                ));
            }
        }
        self.roles
            .check()
            .map_err(|reason| invalid("roles".into(), reason))?;
        self.identity
            .check()
            .map_err(|(path, reason)| invalid(path, reason))?;
        Ok(())
    }
}

/// A fixed UTC offset for a catalog time zone name. Mainland China has had no daylight
/// saving since 1991, so the zones Shoal's users work in are fixed offsets.
pub fn zone_offset(zone: &str) -> Option<chrono::FixedOffset> {
    let hours = match zone {
        "UTC" | "Etc/UTC" | "Z" => 0,
        "Asia/Shanghai" | "Asia/Chongqing" | "Asia/Hong_Kong" | "Asia/Macau" | "Asia/Taipei"
        | "Asia/Singapore" | "PRC" => 8,
        "Asia/Tokyo" | "Asia/Seoul" => 9,
        other => {
            let (sign, rest) = match other.as_bytes().first() {
                Some(b'+') => (1, &other[1..]),
                Some(b'-') => (-1, &other[1..]),
                _ => return None,
            };
            let (h, m) = rest.split_once(':').unwrap_or((rest, "0"));
            let seconds = sign * (h.parse::<i32>().ok()? * 3600 + m.parse::<i32>().ok()? * 60);
            return chrono::FixedOffset::east_opt(seconds);
        }
    };
    chrono::FixedOffset::east_opt(hours * 3600)
}

/// Parses `"45s"`, `"30m"`, `"26h"`, `"3d"`.
pub fn parse_duration(text: &str) -> std::result::Result<chrono::Duration, String> {
    let text = text.trim();
    let bad = || format!("'{text}' is not a duration like 45s, 30m, 26h or 3d");
    let split = text.char_indices().next_back().map_or(0, |(i, _)| i);
    let (number, unit) = text.split_at(split);
    let n: i64 = number.parse().map_err(|_| bad())?;
    let duration = match unit {
        "s" => chrono::Duration::try_seconds(n),
        "m" => chrono::Duration::try_minutes(n),
        "h" => chrono::Duration::try_hours(n),
        "d" => chrono::Duration::try_days(n),
        _ => return Err(bad()),
    };
    duration.ok_or_else(|| format!("'{text}' is too long a duration"))
}

/// The catalog of one warehouse: its definition at one revision, and the tables it defines.
#[derive(Debug, Clone)]
pub struct Catalog {
    warehouse: Warehouse,
    definition: Arc<CatalogDefinition>,
    revision: u64,
}

/// One saved revision of the catalog definition.
#[derive(Debug, Clone, Serialize)]
pub struct CatalogRevision {
    /// Delta version of `shoal_catalog` holding it.
    pub revision: u64,
    /// When it was saved.
    pub saved_at: Option<DateTime<Utc>>,
    /// Who saved it.
    pub author: String,
}

impl Catalog {
    /// Opens the catalog of `warehouse`, seeding it from the shipped default on first use,
    /// and makes sure every table it defines exists.
    pub async fn open(warehouse: Warehouse) -> Result<Catalog> {
        let history =
            Table::create_if_missing(&warehouse, CATALOG_TABLE, catalog_schema(), &[]).await?;
        let catalog = match read_revision(&history).await? {
            Some(definition) => {
                let mut catalog = Catalog {
                    warehouse,
                    definition: Arc::new(definition.clone()),
                    revision: history.version(),
                };
                // Tables the platform gained since this warehouse was made (tokens, …) are
                // added in a new revision; tables it already has are left as they are.
                let shipped = CatalogDefinition::default_definition()?;
                let mut upgraded = definition;
                let mut added = false;
                for table in shipped.tables {
                    if upgraded.tables.iter().all(|t| t.name != table.name) {
                        upgraded.tables.push(table);
                        added = true;
                    }
                }
                if added {
                    catalog.save(upgraded, "upgrade").await?;
                }
                catalog
            }
            None => {
                let definition = CatalogDefinition::default_definition()?;
                let mut catalog = Catalog {
                    warehouse,
                    definition: Arc::new(definition.clone()),
                    revision: history.version(),
                };
                catalog.save(definition, "seed").await?;
                catalog
            }
        };
        catalog.ensure_tables().await?;
        Ok(catalog)
    }

    /// Replaces the definition with `definition` in one commit, after checking it.
    pub async fn save(&mut self, definition: CatalogDefinition, author: &str) -> Result<u64> {
        definition.check()?;
        let json = serde_json::to_string(&definition)
            .map_err(|e| Error::Internal(format!("serialising the catalog: {e}")))?;
        let now = Utc::now().timestamp_micros();
        let batch = RecordBatch::try_new(
            catalog_schema(),
            vec![
                Arc::new(TimestampMicrosecondArray::from(vec![now]).with_timezone("UTC")),
                Arc::new(StringArray::from(vec![author])),
                Arc::new(StringArray::from(vec![json])),
                Arc::new(Int64Array::from(vec![self.revision as i64 + 1])),
            ],
        )?;
        let mut history = Table::open(&self.warehouse, CATALOG_TABLE).await?;
        let revision = history
            .overwrite(vec![batch], CommitNote::new("author", author))
            .await?;
        self.definition = Arc::new(definition);
        self.revision = revision;
        self.ensure_tables().await?;
        Ok(revision)
    }

    /// Creates missing tables and adds columns that the definition gained.
    pub async fn ensure_tables(&self) -> Result<()> {
        for table in &self.definition.tables {
            Table::create_if_missing(
                &self.warehouse,
                &table.name,
                table.arrow_schema(),
                &table.partition_by,
            )
            .await?;
        }
        Ok(())
    }

    /// The definition in force.
    pub fn definition(&self) -> &CatalogDefinition {
        &self.definition
    }

    /// The revision (Delta version of `shoal_catalog`) in force.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// The warehouse this catalog lives in.
    pub fn warehouse(&self) -> &Warehouse {
        &self.warehouse
    }

    /// Opens the latest snapshot of a table the catalog defines.
    pub async fn table(&self, name: &str) -> Result<Table> {
        let layout = self.definition.table(name)?.column_layout();
        Ok(Table::open(&self.warehouse, name)
            .await?
            .with_layout(layout))
    }

    /// Every saved revision, newest first.
    pub async fn revisions(&self) -> Result<Vec<CatalogRevision>> {
        let history = Table::open(&self.warehouse, CATALOG_TABLE).await?;
        let commits = history.history(None).await?;
        Ok(commits
            .into_iter()
            .filter(|c| c.operation != "CREATE TABLE")
            .map(|c| CatalogRevision {
                revision: c.version,
                saved_at: c.timestamp,
                author: c
                    .metadata
                    .get("shoal.author")
                    .and_then(|v| v.as_str())
                    .unwrap_or_default()
                    .to_string(),
            })
            .collect())
    }
}

fn catalog_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new(
            "saved_at",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
        Field::new("author", DataType::Utf8, false),
        Field::new("definition", DataType::Utf8, false),
        Field::new("revision", DataType::Int64, false),
    ]))
}

async fn read_revision(history: &Table) -> Result<Option<CatalogDefinition>> {
    let batches = history.read_all().await?;
    let mut found = None;
    for batch in batches {
        let column = batch
            .column_by_name("definition")
            .ok_or_else(|| Error::Internal("shoal_catalog lacks its definition column".into()))?;
        let text = arrow::compute::cast(column, &DataType::Utf8)?;
        let text = text
            .as_any()
            .downcast_ref::<StringArray>()
            .ok_or_else(|| Error::Internal("definition column is not text".into()))?;
        if let Some(value) = (0..text.len())
            .find(|i| text.is_valid(*i))
            .map(|i| text.value(i))
        {
            found = Some(CatalogDefinition::from_json(value)?);
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::parse_duration;

    #[test]
    fn durations_parse_and_refuse_without_panicking() {
        assert_eq!(parse_duration("45s"), Ok(chrono::Duration::seconds(45)));
        assert_eq!(parse_duration(" 7d "), Ok(chrono::Duration::days(7)));
        assert_eq!(parse_duration("26h"), Ok(chrono::Duration::hours(26)));
        for bad in ["", "d", "7", "7w", "x7d", "7天", "\u{80}", "é", "1é"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
        assert!(parse_duration("9223372036854775807d").is_err_and(|e| e.contains("too long")));
    }
}
