//! Integration tests of the catalog crate on temporary warehouses.

mod definition;
mod monitor;
mod table;

use std::sync::Arc;

use arrow::array::{Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use shoal_catalog::Warehouse;

/// A warehouse in a fresh temporary folder (kept alive by the returned guard).
pub fn temp_warehouse() -> (tempfile::TempDir, Warehouse) {
    let dir = tempfile::tempdir().expect("temp dir");
    let warehouse = Warehouse::open(&format!("file://{}", dir.path().display())).expect("open");
    (dir, warehouse)
}

pub fn people_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("name", DataType::Utf8, true),
        Field::new("city", DataType::Utf8, true),
    ]))
}

pub fn people(rows: &[(i64, &str, &str)]) -> RecordBatch {
    RecordBatch::try_new(
        people_schema(),
        vec![
            Arc::new(Int64Array::from(
                rows.iter().map(|r| r.0).collect::<Vec<_>>(),
            )),
            Arc::new(StringArray::from(
                rows.iter().map(|r| r.1).collect::<Vec<_>>(),
            )),
            Arc::new(StringArray::from(
                rows.iter().map(|r| r.2).collect::<Vec<_>>(),
            )),
        ],
    )
    .expect("batch")
}

/// Every (id, name, city) of a table, sorted by id.
pub async fn rows_of(table: &shoal_catalog::Table) -> Vec<(i64, String, String)> {
    let mut out = Vec::new();
    for batch in table.read_all().await.expect("read") {
        let column = |name: &str, to: &DataType| {
            arrow::compute::cast(batch.column_by_name(name).expect("column"), to).expect("cast")
        };
        let ids = column("id", &DataType::Int64);
        let names = column("name", &DataType::Utf8);
        let cities = column("city", &DataType::Utf8);
        let ids = ids.as_any().downcast_ref::<Int64Array>().expect("ids");
        let names = names.as_any().downcast_ref::<StringArray>().expect("names");
        let cities = cities
            .as_any()
            .downcast_ref::<StringArray>()
            .expect("cities");
        for i in 0..batch.num_rows() {
            out.push((
                ids.value(i),
                names.value(i).to_string(),
                cities.value(i).to_string(),
            ));
        }
    }
    out.sort();
    out
}
