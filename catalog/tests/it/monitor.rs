//! Quality monitors catching planted problems.

use std::sync::Arc;

use arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use shoal_catalog::{Catalog, CommitNote, MonitorKind, MonitorResult, Status, check_all};

use crate::temp_warehouse;

/// `n` rows for `users`, with `bad_ages` of them aged 150 and every gender valid.
fn users(n: i64, bad_ages: i64, catalog: &Catalog) -> RecordBatch {
    let schema = catalog
        .definition()
        .table("users")
        .expect("users")
        .arrow_schema();
    let now = chrono::Utc::now().timestamp_micros();
    let columns: Vec<ArrayRef> = schema
        .fields()
        .iter()
        .map(|f| -> ArrayRef {
            match f.name().as_str() {
                "user_id" => Arc::new(Int64Array::from((0..n).collect::<Vec<_>>())),
                "age" => Arc::new(Int64Array::from(
                    (0..n)
                        .map(|i| if i < bad_ages { 150 } else { 30 + i % 20 })
                        .collect::<Vec<_>>(),
                )),
                "gender" => Arc::new(StringArray::from(
                    (0..n)
                        .map(|i| if i % 2 == 0 { "male" } else { "female" })
                        .collect::<Vec<_>>(),
                )),
                "updated_at" => Arc::new(
                    TimestampMicrosecondArray::from(vec![now; n as usize]).with_timezone("UTC"),
                ),
                _ => arrow::array::new_null_array(f.data_type(), n as usize),
            }
        })
        .collect();
    RecordBatch::try_new(schema, columns).expect("users batch")
}

fn find<'a>(
    results: &'a [MonitorResult],
    table: &str,
    field: Option<&str>,
    kind: MonitorKind,
) -> &'a MonitorResult {
    results
        .iter()
        .find(|r| r.table == table && r.field.as_deref() == field && r.monitor == kind)
        .unwrap_or_else(|| panic!("no {kind} monitor for {table}.{field:?}"))
}

#[tokio::test]
async fn healthy_tables_pass() {
    let (_dir, warehouse) = temp_warehouse();
    let catalog = Catalog::open(warehouse).await.expect("open");
    let mut table = catalog.table("users").await.expect("users");
    table
        .append(vec![users(100, 0, &catalog)], CommitNote::default())
        .await
        .expect("append");
    let results = check_all(&catalog, chrono::Utc::now())
        .await
        .expect("check");
    let failing: Vec<_> = results.iter().filter(|r| r.status != Status::Ok).collect();
    assert!(failing.is_empty(), "{failing:#?}");
    assert_eq!(
        find(&results, "users", Some("age"), MonitorKind::OutOfRange).status,
        Status::Ok
    );
}

#[tokio::test]
async fn a_stale_table_fails_freshness() {
    let (_dir, warehouse) = temp_warehouse();
    let catalog = Catalog::open(warehouse).await.expect("open");
    let now = chrono::Utc::now();
    let fresh = check_all(&catalog, now).await.expect("check");
    assert_eq!(
        find(&fresh, "events", None, MonitorKind::Freshness).status,
        Status::Ok
    );
    // events: warn after 26h, fail after 72h.
    let later = check_all(&catalog, now + chrono::Duration::hours(30))
        .await
        .expect("check");
    assert_eq!(
        find(&later, "events", None, MonitorKind::Freshness).status,
        Status::Warn
    );
    let stale = check_all(&catalog, now + chrono::Duration::days(4))
        .await
        .expect("check");
    let freshness = find(&stale, "events", None, MonitorKind::Freshness);
    assert_eq!(freshness.status, Status::Fail);
    assert!(freshness.value.contains("4d ago"), "{}", freshness.value);
}

#[tokio::test]
async fn a_volume_drop_fails_row_change() {
    let (_dir, warehouse) = temp_warehouse();
    let catalog = Catalog::open(warehouse).await.expect("open");
    let mut table = catalog.table("users").await.expect("users");
    table
        .overwrite(vec![users(100, 0, &catalog)], CommitNote::default())
        .await
        .expect("v1");
    table
        .overwrite(vec![users(90, 0, &catalog)], CommitNote::default())
        .await
        .expect("v2");
    let results = check_all(&catalog, chrono::Utc::now())
        .await
        .expect("check");
    assert_eq!(
        find(&results, "users", None, MonitorKind::RowChange).status,
        Status::Ok,
        "-10% is fine"
    );
    table
        .overwrite(vec![users(63, 0, &catalog)], CommitNote::default())
        .await
        .expect("v3");
    let results = check_all(&catalog, chrono::Utc::now())
        .await
        .expect("check");
    assert_eq!(
        find(&results, "users", None, MonitorKind::RowChange).status,
        Status::Warn,
        "-30% warns"
    );
    table
        .overwrite(vec![users(20, 0, &catalog)], CommitNote::default())
        .await
        .expect("v4");
    let results = check_all(&catalog, chrono::Utc::now())
        .await
        .expect("check");
    let change = find(&results, "users", None, MonitorKind::RowChange);
    assert_eq!(change.status, Status::Fail, "{change:?}");
    assert!(change.value.contains("63 → 20"), "{}", change.value);
}

#[tokio::test]
async fn out_of_range_and_nulls_are_counted() {
    let (_dir, warehouse) = temp_warehouse();
    let catalog = Catalog::open(warehouse).await.expect("open");
    let mut table = catalog.table("users").await.expect("users");
    // 5 of 200 ages are 150: 2.5% > the 1% failure threshold.
    table
        .append(vec![users(200, 5, &catalog)], CommitNote::default())
        .await
        .expect("append");
    let results = check_all(&catalog, chrono::Utc::now())
        .await
        .expect("check");
    let age = find(&results, "users", Some("age"), MonitorKind::OutOfRange);
    assert_eq!(age.status, Status::Fail);
    assert!(age.value.contains("5 of 200"), "{}", age.value);
    assert_eq!(
        find(&results, "users", Some("gender"), MonitorKind::OutOfRange).status,
        Status::Ok
    );
    // member_level is all null: no value is out of range, and it has no null limit.
    assert!(
        results
            .iter()
            .all(|r| !(r.field.as_deref() == Some("member_level")
                && r.monitor == MonitorKind::NullRatio))
    );
    let required = find(&results, "users", Some("user_id"), MonitorKind::NullRatio);
    assert_eq!(required.status, Status::Ok);

    // One stray age among 200 more rows: 6 of 400 = 1.5% still fails; at 1 of 400 it only warns.
    let mut other = catalog.table("users").await.expect("users");
    other
        .overwrite(vec![users(400, 1, &catalog)], CommitNote::default())
        .await
        .expect("overwrite");
    let results = check_all(&catalog, chrono::Utc::now())
        .await
        .expect("check");
    assert_eq!(
        find(&results, "users", Some("age"), MonitorKind::OutOfRange).status,
        Status::Warn
    );
}
