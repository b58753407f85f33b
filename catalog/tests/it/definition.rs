//! The catalog definition: the shipped default, persistence in the warehouse, validation.

use shoal_catalog::{
    CATALOG_TABLE, Catalog, CatalogDefinition, Error, FieldStandard, Role, Sensitivity, Table,
    ValueType, Visibility,
};

use crate::temp_warehouse;

#[test]
fn the_default_definition_is_complete() {
    let definition = CatalogDefinition::default_definition().expect("default parses");
    for table in [
        "events",
        "orders",
        "identity_links",
        "identity_merges",
        "users",
        "quarantine",
        "batches",
        "audience_versions",
    ] {
        let t = definition.table(table).expect(table);
        assert!(!t.fields.is_empty(), "{table} has fields");
        for f in &t.fields {
            assert!(
                !f.zh.is_empty() && !f.en.is_empty(),
                "{table}.{} has display names",
                f.name
            );
        }
    }
    let users = definition.table("users").expect("users");
    let gender = users.field("gender").expect("gender");
    assert_eq!(gender.value_type, ValueType::Enum);
    assert_eq!(gender.values, vec!["male", "female", "unknown"]);
    assert_eq!(users.field("age").expect("age").range, Some([0.0, 120.0]));
    assert_eq!(
        users.field("phone").expect("phone").sensitivity,
        Sensitivity::Confidential
    );
    let derived = &definition.derived["middle_aged_male"];
    assert_eq!(
        derived.conditions["all"][1]["value"],
        serde_json::json!([35, 55])
    );
    assert_eq!(
        definition.table("events").expect("events").partition_by,
        vec!["event_date"]
    );
    // JSON documents and one-column keys are written without a Parquet dictionary; a key of
    // two columns repeats each of its parts. Times, and ids files are sorted by, are written
    // as deltas. JSON documents carry no statistics; nor does text the files are not sorted
    // by (a one-column key of random message ids included, which is not compressed either),
    // unless it is part of a key of several columns.
    let layout = |t: &str| definition.table(t).expect(t).column_layout();
    assert_eq!(layout("events").distinct, vec!["event_id", "properties"]);
    assert_eq!(
        layout("events").delta,
        vec!["event_time", "received_at", "user_id"]
    );
    assert_eq!(
        layout("events").unindexed,
        vec![
            "event_id",
            "event_name",
            "event_type",
            "anonymous_id",
            "login_id",
            "source",
            "page",
            "item_id",
            "category",
            "channel",
            "campaign_id",
            "order_id",
            "properties"
        ]
    );
    let orders = layout("orders").unindexed;
    assert!(orders.contains(&"status".to_string()), "{orders:?}");
    assert!(!orders.iter().any(|c| c == "platform" || c == "order_id"));
    assert!(!orders.iter().any(|c| c == "paid_at" || c == "user_id"));
    assert_eq!(layout("events").uncompressed, vec!["event_id"]);
    assert!(layout("orders").uncompressed.is_empty());
    assert!(layout("users").uncompressed.is_empty());
    assert_eq!(layout("orders").distinct, vec!["items"]);
    assert_eq!(layout("users").distinct, vec!["traits"]);
    assert_eq!(layout("users").delta[0], "user_id");
    assert!(layout("identity_links").distinct.is_empty());
    assert_eq!(layout("identity_links").delta, vec!["first_seen"]);
}

#[test]
fn roles_grant_less_as_sensitivity_grows() {
    let roles = CatalogDefinition::default_definition()
        .expect("default")
        .roles;
    let viewer = roles.grant(Role::Viewer, Sensitivity::Confidential);
    assert_eq!(viewer.read, Visibility::Masked);
    assert!(!viewer.condition);
    assert_eq!(viewer.export, Visibility::Hashed);
    let analyst = roles.grant(Role::Analyst, Sensitivity::Confidential);
    assert!(analyst.condition);
    assert_eq!(analyst.read, Visibility::Masked);
    assert_eq!(
        roles.grant(Role::Admin, Sensitivity::Confidential).read,
        Visibility::Clear
    );
    assert_eq!(
        roles.grant(Role::Analyst, Sensitivity::Secret).read,
        Visibility::Denied
    );
    assert!(roles.may_manage(Role::Admin));
    assert!(!roles.may_manage(Role::Analyst));
    assert_eq!("analyst".parse::<Role>(), Ok(Role::Analyst));
    assert!("root".parse::<Role>().is_err());
}

#[tokio::test]
async fn a_new_warehouse_is_seeded_and_the_catalog_round_trips() {
    let (_dir, warehouse) = temp_warehouse();
    let catalog = Catalog::open(warehouse.clone()).await.expect("open");
    assert_eq!(
        catalog.definition(),
        &CatalogDefinition::default_definition().expect("default")
    );
    let mut names = warehouse.table_names().await.expect("names");
    names.retain(|n| n != CATALOG_TABLE);
    let mut expected: Vec<String> = catalog
        .definition()
        .tables
        .iter()
        .map(|t| t.name.clone())
        .collect();
    expected.sort();
    assert_eq!(names, expected, "every defined table exists");

    // Change the definition: a new users field and a new derived condition.
    let mut changed = catalog.definition().clone();
    let users = changed
        .tables
        .iter_mut()
        .find(|t| t.name == "users")
        .expect("users");
    users.fields.push(FieldStandard {
        name: "shoe_size".into(),
        zh: "鞋码".into(),
        en: "Shoe size".into(),
        value_type: ValueType::Int,
        range: Some([30.0, 50.0]),
        values: vec![],
        required: false,
        derivation: None,
        owner: "growth".into(),
        sensitivity: Sensitivity::Internal,
        description: "EU size".into(),
        max_null_ratio: None,
        buckets: Vec::new(),
    });
    changed.derived.insert(
        "big_feet".into(),
        shoal_catalog::DerivedCondition {
            zh: "大脚".into(),
            en: "Big feet".into(),
            description: String::new(),
            conditions: serde_json::json!({"field": "shoe_size", "op": "ge", "value": 45}),
        },
    );
    let mut catalog = catalog;
    let before = catalog.revision();
    let revision = catalog.save(changed.clone(), "tester").await.expect("save");
    assert!(revision > before);

    // A second process opening the same warehouse reads the saved definition.
    let reopened = Catalog::open(warehouse.clone()).await.expect("reopen");
    assert_eq!(reopened.definition(), &changed);
    assert_eq!(reopened.revision(), revision);
    let users = Table::open(&warehouse, "users").await.expect("users");
    assert!(
        users
            .schema()
            .expect("schema")
            .field_with_name("shoe_size")
            .is_ok(),
        "schema evolved"
    );
    let revisions = reopened.revisions().await.expect("revisions");
    assert_eq!(revisions.len(), 2);
    assert_eq!(revisions[0].author, "tester");
    assert_eq!(revisions[1].author, "seed");
}

#[test]
fn broken_definitions_name_the_place() {
    let base = shoal_catalog::DEFAULT_DEFINITION;
    let cases = [
        (
            base.replace(r#"values = ["male", "female", "unknown"], "#, ""),
            "tables.users.fields.gender",
        ),
        (
            base.replace(
                r#"{ name = "city", zh = "城市", en = "City", type = "string" }"#,
                r#"{ name = "city", zh = "城市", en = "City", type = "string", range = [1, 2] }"#,
            ),
            "tables.users.fields.city",
        ),
        (base.replace(r#"partition_by = ["event_date"]"#, r#"partition_by = ["day"]"#), "tables.events.partition_by"),
        (
            base.replace(
                r#"levels.secret = { read = "denied", condition = false, export = "denied", change = false }

[roles.analyst]"#,
                r#"levels.secret = { read = "clear", condition = false, export = "denied", change = false }

[roles.analyst]"#,
            ),
            "roles",
        ),
        (base.replace(r#"warn = "26h", fail = "72h""#, r#"warn = "9d", fail = "72h""#), "monitors.freshness"),
    ];
    for (text, place) in cases {
        assert_ne!(text, base, "the case for {place} must change the text");
        let err = CatalogDefinition::from_toml(&text).expect_err(place);
        assert!(matches!(err, Error::InvalidDefinition { .. }), "{err}");
        assert!(
            err.to_string().contains(place),
            "'{err}' should name {place}"
        );
    }
    let typo = base.replace(
        "sensitivity = \"confidential\", description = \"E.164",
        "sensitivty = \"confidential\", description = \"E.164",
    );
    assert!(
        CatalogDefinition::from_toml(&typo).is_err(),
        "unknown keys are refused"
    );
}
