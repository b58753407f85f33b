//! Identity rules: which identities Shoal knows, where they come from, and how they may join
//! people.
//!
//! The list is in priority order, strongest first. Priority decides which identity speaks for
//! an event or order that carries several (an event with a login id belongs to that login's
//! person even when its device belongs to someone else), and the centre of the links drawn
//! between the identities seen together. `cap` bounds how many identities of a type one
//! person may hold: a link that would break a cap is refused and recorded, so a shared shop
//! tablet or a test phone cannot merge a city into one person. `joins = false` makes a type
//! attach to a person without ever bridging two people.

use serde::{Deserialize, Serialize};

/// One identity type.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityType {
    /// Type name, a lowercase identifier (`login_id`, `phone`, …).
    pub name: String,
    /// Chinese display name.
    #[serde(default)]
    pub zh: String,
    /// English display name.
    #[serde(default)]
    pub en: String,
    /// Most identities of this type one person may hold.
    pub cap: u32,
    /// Whether a link through this type may join two people.
    #[serde(default = "yes")]
    pub joins: bool,
    /// Column of `events` holding this identity (`anonymous_id`, `login_id`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_column: Option<String>,
    /// Keys of identify traits holding this identity (`phone`, `wechat_unionid`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub traits: Vec<String>,
    /// Whether an alias call's `previousId` is of this type.
    #[serde(default)]
    pub alias_previous_id: bool,
    /// Column of `orders` holding this identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order_column: Option<String>,
    /// Only orders of this platform carry it (platform buyer ids are per platform).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
}

fn yes() -> bool {
    true
}

/// The identity rules: types in priority order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityRules {
    /// Every identity type, strongest first.
    pub types: Vec<IdentityType>,
}

impl IdentityRules {
    /// The type called `name` and its priority (0 is the strongest).
    pub fn get(&self, name: &str) -> Option<(u8, &IdentityType)> {
        self.types
            .iter()
            .position(|t| t.name == name)
            .map(|i| (i as u8, &self.types[i]))
    }

    /// Checks the rules; the error is (path, reason).
    pub fn check(&self) -> std::result::Result<(), (String, String)> {
        if self.types.is_empty() || self.types.len() > 32 {
            return Err((
                "identity.types".into(),
                "list between 1 and 32 identity types".into(),
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        for t in &self.types {
            let at = format!("identity.types.{}", t.name);
            if crate::validate_table_name(&t.name).is_err() {
                return Err((at, "type names are lowercase identifiers".into()));
            }
            if !seen.insert(t.name.as_str()) {
                return Err((at, "type listed twice".into()));
            }
            if t.cap == 0 {
                return Err((at, "cap must be at least 1".into()));
            }
            if t.platform.is_some() && t.order_column.is_none() {
                return Err((at, "platform applies to an order_column".into()));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::CatalogDefinition;

    #[test]
    fn the_default_rules_hold_one_login_per_person() {
        let definition = CatalogDefinition::default_definition().expect("default");
        let rules = &definition.identity;
        let (priority, login) = rules.get("login_id").expect("login_id");
        assert_eq!(priority, 0);
        assert_eq!(login.cap, 1);
        assert!(
            rules
                .get("phone")
                .expect("phone")
                .1
                .traits
                .contains(&"phone".to_string())
        );
        assert!(rules.check().is_ok());
    }

    #[test]
    fn bad_rules_are_refused_with_the_place() {
        let mut definition = CatalogDefinition::default_definition().expect("default");
        definition.identity.types[1].cap = 0;
        let err = definition.check().expect_err("cap 0");
        assert!(err.to_string().contains("identity.types.phone"), "{err}");
        let mut definition = CatalogDefinition::default_definition().expect("default");
        let first = definition.identity.types[0].clone();
        definition.identity.types.push(first);
        assert!(definition.check().is_err());
    }

    #[test]
    fn numeric_buckets_label_values_and_bad_edges_are_refused() {
        let definition = CatalogDefinition::default_definition().expect("default");
        let age = definition
            .table("users")
            .expect("users")
            .field("age")
            .expect("age");
        assert_eq!(age.bucket(17.0).as_deref(), Some("<18"));
        assert_eq!(age.bucket(18.0).as_deref(), Some("18-25"));
        assert_eq!(age.bucket(34.0).as_deref(), Some("25-35"));
        assert_eq!(age.bucket(65.0).as_deref(), Some(">=65"));
        let labels = age.bucket_labels();
        assert_eq!(labels.len(), age.buckets.len() + 1);
        assert_eq!(labels.first().map(String::as_str), Some("<18"));
        assert_eq!(labels[1..3], ["18-25".to_string(), "25-35".to_string()]);
        assert_eq!(labels.last().map(String::as_str), Some(">=65"));
        let mut bad = definition.clone();
        let users = bad
            .tables
            .iter_mut()
            .find(|t| t.name == "users")
            .expect("users");
        let age = users
            .fields
            .iter_mut()
            .find(|f| f.name == "age")
            .expect("age");
        age.buckets = vec![30.0, 20.0];
        let err = bad.check().expect_err("decreasing");
        assert!(err.to_string().contains("tables.users.fields.age"), "{err}");
        let mut bad = definition.clone();
        let users = bad
            .tables
            .iter_mut()
            .find(|t| t.name == "users")
            .expect("users");
        let city = users
            .fields
            .iter_mut()
            .find(|f| f.name == "city")
            .expect("city");
        city.buckets = vec![1.0];
        assert!(bad.check().is_err());
    }
}
