//! What the condition builder needs to know about fields: types, operators, enum values and
//! display names, filtered by what the caller's role may use in conditions.

use serde::Serialize;
use shoal_catalog::{CatalogDefinition, Role, Sensitivity, ValueType};

use crate::condition::operators;

/// One field the builder can offer.
#[derive(Debug, Clone, Serialize)]
pub struct BuilderField {
    /// The name conditions use: bare for `users`, `table.column` otherwise.
    pub field: String,
    /// Table holding it.
    pub table: String,
    /// Display name in Chinese.
    pub zh: String,
    /// Display name in English.
    pub en: String,
    /// Value type.
    #[serde(rename = "type")]
    pub value_type: ValueType,
    /// Operators allowed for the type.
    pub operators: Vec<&'static str>,
    /// Known values of enum fields.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
    /// Allowed range of numeric fields.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub range: Option<[f64; 2]>,
    /// Sensitivity level.
    pub sensitivity: Sensitivity,
    /// What the field means.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// Whether counts on it can come from tag bitmaps.
    pub indexed: bool,
}

/// Tables whose fields the builder offers: the wide tables (events' fields serve as event
/// filters).
pub const BUILDER_TABLES: &[&str] = &["users", "events", "orders"];

/// The fields `role` may use in conditions, users first.
pub fn builder_fields(definition: &CatalogDefinition, role: Role) -> Vec<BuilderField> {
    let mut out = Vec::new();
    for table in BUILDER_TABLES {
        let Ok(def) = definition.table(table) else {
            continue;
        };
        for f in &def.fields {
            if !definition.roles.grant(role, f.sensitivity).condition
                || matches!(f.value_type, ValueType::Binary)
                || (f.name == "user_id" && *table != "users")
            {
                continue;
            }
            let indexed = *table == "users"
                && (matches!(f.value_type, ValueType::Enum | ValueType::Bool)
                    || !f.buckets.is_empty());
            out.push(BuilderField {
                field: if *table == "users" {
                    f.name.clone()
                } else {
                    format!("{table}.{}", f.name)
                },
                table: table.to_string(),
                zh: f.zh.clone(),
                en: f.en.clone(),
                value_type: f.value_type,
                operators: operators(f.value_type).to_vec(),
                values: f.values.clone(),
                range: f.range,
                sensitivity: f.sensitivity,
                description: f.description.clone(),
                indexed,
            });
        }
    }
    out
}
