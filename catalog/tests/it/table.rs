//! Delta table registry: writes, merge, time travel, history, failed writes.

use std::sync::Arc;

use arrow::array::{Int64Array, RecordBatch, StringArray};
use deltalake::kernel::engine::arrow_conversion::TryFromArrow;
use shoal_catalog::{ColumnCache, CommitNote, Error, SnapshotRef, Table};

use crate::{people, people_schema, rows_of, temp_warehouse};

#[tokio::test]
async fn create_append_and_read_back() {
    let (_dir, warehouse) = temp_warehouse();
    let mut table = Table::create_if_missing(&warehouse, "people", people_schema(), &[])
        .await
        .expect("create");
    assert_eq!(table.version(), 0);
    assert_eq!(table.row_count().await.expect("count"), 0);
    let v1 = table
        .append(
            vec![people(&[(1, "Ann", "上海"), (2, "Bo", "杭州")])],
            CommitNote::new("batch_id", "b1"),
        )
        .await
        .expect("append");
    let v2 = table
        .append(
            vec![people(&[(3, "Cy", "北京")])],
            CommitNote::new("batch_id", "b2"),
        )
        .await
        .expect("append");
    assert_eq!((v1, v2), (1, 2));

    // A second handle sees the same rows: the data is in the warehouse, not in memory.
    let reopened = Table::open(&warehouse, "people").await.expect("open");
    assert_eq!(reopened.version(), 2);
    assert_eq!(
        rows_of(&reopened).await,
        vec![
            (1, "Ann".into(), "上海".into()),
            (2, "Bo".into(), "杭州".into()),
            (3, "Cy".into(), "北京".into())
        ]
    );
    // Creating again is harmless and keeps the data.
    let again = Table::create_if_missing(&warehouse, "people", people_schema(), &[])
        .await
        .expect("create again");
    assert_eq!(again.version(), 2);
    assert_eq!(
        warehouse.table_names().await.expect("names"),
        vec!["people".to_string()]
    );
}

#[tokio::test]
async fn time_travel_by_version_and_timestamp() {
    let (_dir, warehouse) = temp_warehouse();
    let mut table = Table::create_if_missing(&warehouse, "people", people_schema(), &[])
        .await
        .expect("create");
    table
        .append(vec![people(&[(1, "Ann", "上海")])], CommitNote::default())
        .await
        .expect("v1");
    let between = chrono::Utc::now();
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    table
        .overwrite(vec![people(&[(9, "Zed", "成都")])], CommitNote::default())
        .await
        .expect("v2");

    let v1 = Table::open_at(&warehouse, "people", SnapshotRef::Version(1))
        .await
        .expect("v1");
    assert_eq!(rows_of(&v1).await, vec![(1, "Ann".into(), "上海".into())]);
    let latest = Table::open(&warehouse, "people").await.expect("latest");
    assert_eq!(
        rows_of(&latest).await,
        vec![(9, "Zed".into(), "成都".into())]
    );
    let at = Table::open_at(&warehouse, "people", SnapshotRef::Timestamp(between))
        .await
        .expect("at");
    assert_eq!(at.version(), 1);
    assert_eq!(rows_of(&at).await, vec![(1, "Ann".into(), "上海".into())]);

    let missing = Table::open_at(&warehouse, "people", SnapshotRef::Version(7)).await;
    assert!(
        matches!(missing, Err(Error::NoSuchSnapshot { .. })),
        "{missing:?}"
    );
    let unknown = Table::open(&warehouse, "nobody").await;
    assert!(
        matches!(unknown, Err(Error::UnknownTable { .. })),
        "{unknown:?}"
    );
}

#[tokio::test]
async fn merge_upserts_by_key() {
    let (_dir, warehouse) = temp_warehouse();
    let mut table = Table::create_if_missing(&warehouse, "people", people_schema(), &[])
        .await
        .expect("create");
    table
        .append(
            vec![people(&[(1, "Ann", "上海"), (2, "Bo", "杭州")])],
            CommitNote::default(),
        )
        .await
        .expect("append");
    let outcome = table
        .merge(
            vec![people(&[(2, "Bo", "深圳"), (3, "Cy", "北京")])],
            &["id"],
            CommitNote::new("reason", "re-import"),
        )
        .await
        .expect("merge");
    assert_eq!((outcome.inserted, outcome.updated), (1, 1));
    assert_eq!(outcome.version, 2);
    assert_eq!(
        rows_of(&table).await,
        vec![
            (1, "Ann".into(), "上海".into()),
            (2, "Bo".into(), "深圳".into()),
            (3, "Cy".into(), "北京".into())
        ]
    );
    // The same merge again changes nothing but the version.
    let again = table
        .merge(
            vec![people(&[(2, "Bo", "深圳"), (3, "Cy", "北京")])],
            &["id"],
            CommitNote::default(),
        )
        .await
        .expect("merge again");
    assert_eq!((again.inserted, again.updated), (0, 2));
    assert_eq!(table.row_count().await.expect("count"), 3);
}

#[tokio::test]
async fn ambiguous_merge_is_refused_and_changes_nothing() {
    let (_dir, warehouse) = temp_warehouse();
    let mut table = Table::create_if_missing(&warehouse, "people", people_schema(), &[])
        .await
        .expect("create");
    table
        .append(vec![people(&[(1, "Ann", "上海")])], CommitNote::default())
        .await
        .expect("append");
    let err = table
        .merge(
            vec![people(&[(1, "A1", "x"), (1, "A2", "y")])],
            &["id"],
            CommitNote::default(),
        )
        .await
        .expect_err("duplicate keys");
    assert!(matches!(err, Error::InvalidData { .. }), "{err}");
    assert!(err.to_string().contains("share a key"), "{err}");
    let err = table
        .merge(
            vec![people(&[(1, "A1", "x")])],
            &["nope"],
            CommitNote::default(),
        )
        .await
        .expect_err("unknown key");
    assert!(matches!(err, Error::UnknownField { .. }), "{err}");
    let latest = Table::open(&warehouse, "people").await.expect("open");
    assert_eq!(latest.version(), 1);
    assert_eq!(
        rows_of(&latest).await,
        vec![(1, "Ann".into(), "上海".into())]
    );
}

#[tokio::test]
async fn a_write_failing_midway_leaves_the_previous_snapshot() {
    let (dir, warehouse) = temp_warehouse();
    let mut table = Table::create_if_missing(&warehouse, "people", people_schema(), &[])
        .await
        .expect("create");
    table
        .append(
            vec![people(&[(1, "Ann", "上海"), (2, "Bo", "杭州")])],
            CommitNote::default(),
        )
        .await
        .expect("append");
    let files_before = parquet_files(&dir.path().join("people"));

    // Three good batches, then one whose id (required in the table) holds a null: the writer
    // is streaming the input when it meets the bad batch.
    let loose = Arc::new(arrow::datatypes::Schema::new(vec![
        arrow::datatypes::Field::new("id", arrow::datatypes::DataType::Int64, true),
        arrow::datatypes::Field::new("name", arrow::datatypes::DataType::Utf8, true),
        arrow::datatypes::Field::new("city", arrow::datatypes::DataType::Utf8, true),
    ]));
    let batch = |ids: Vec<Option<i64>>| {
        let n = ids.len();
        RecordBatch::try_new(
            loose.clone(),
            vec![
                Arc::new(Int64Array::from(ids)),
                Arc::new(StringArray::from(vec!["Good"; n])),
                Arc::new(StringArray::from(vec!["苏州"; n])),
            ],
        )
        .expect("batch")
    };
    let mut batches: Vec<RecordBatch> = (0..3).map(|i| batch(vec![Some(10 + i)])).collect();
    batches.push(batch(vec![Some(20), None]));
    let result = table.append(batches, CommitNote::default()).await;
    assert!(
        result.is_err(),
        "a null in a required column must fail the write"
    );

    // The handle and a fresh reader both still see version 1 with its two rows.
    assert_eq!(table.version(), 1);
    let latest = Table::open(&warehouse, "people").await.expect("open");
    assert_eq!(latest.version(), 1);
    assert_eq!(
        rows_of(&latest).await,
        vec![
            (1, "Ann".into(), "上海".into()),
            (2, "Bo".into(), "杭州".into())
        ]
    );
    // Whatever files the failed write left are not part of any snapshot.
    let log = std::fs::read_dir(dir.path().join("people/_delta_log"))
        .expect("log")
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".json"))
        })
        .count();
    assert_eq!(log, 2, "only the create and the first append are committed");
    assert!(parquet_files(&dir.path().join("people")).len() >= files_before.len());

    // And the table keeps working.
    table
        .append(vec![people(&[(3, "Cy", "北京")])], CommitNote::default())
        .await
        .expect("append");
    assert_eq!(table.row_count().await.expect("count"), 3);
}

#[tokio::test]
async fn writes_check_columns_before_touching_storage() {
    let (_dir, warehouse) = temp_warehouse();
    let mut table = Table::create_if_missing(&warehouse, "people", people_schema(), &[])
        .await
        .expect("create");
    let wrong = RecordBatch::try_new(
        Arc::new(arrow::datatypes::Schema::new(vec![
            arrow::datatypes::Field::new("id", arrow::datatypes::DataType::Utf8, false),
        ])),
        vec![Arc::new(StringArray::from(vec!["one"]))],
    )
    .expect("batch");
    let err = table
        .append(vec![wrong], CommitNote::default())
        .await
        .expect_err("type");
    assert!(err.to_string().contains("column 'id' is Utf8"), "{err}");
    assert!(err.is_user_error());
    let extra = RecordBatch::try_new(
        Arc::new(arrow::datatypes::Schema::new(vec![
            arrow::datatypes::Field::new("id", arrow::datatypes::DataType::Int64, false),
            arrow::datatypes::Field::new("shoe_size", arrow::datatypes::DataType::Int64, true),
        ])),
        vec![
            Arc::new(Int64Array::from(vec![1])),
            Arc::new(Int64Array::from(vec![42])),
        ],
    )
    .expect("batch");
    let err = table
        .append(vec![extra], CommitNote::default())
        .await
        .expect_err("extra");
    assert!(
        matches!(err, Error::UnknownField { ref field, .. } if field == "shoe_size"),
        "{err}"
    );
    assert_eq!(
        Table::open(&warehouse, "people")
            .await
            .expect("open")
            .version(),
        0
    );
}

#[tokio::test]
async fn history_lists_commits_with_their_notes() {
    let (_dir, warehouse) = temp_warehouse();
    let mut table = Table::create_if_missing(&warehouse, "people", people_schema(), &[])
        .await
        .expect("create");
    table
        .append(
            vec![people(&[(1, "Ann", "上海")])],
            CommitNote::new("batch_id", "b-1").with("author", "test"),
        )
        .await
        .expect("append");
    table
        .merge(
            vec![people(&[(1, "Ann", "杭州")])],
            &["id"],
            CommitNote::new("batch_id", "b-2"),
        )
        .await
        .expect("merge");
    let history = table.history(None).await.expect("history");
    let versions: Vec<u64> = history.iter().map(|c| c.version).collect();
    assert_eq!(versions, vec![2, 1, 0]);
    assert_eq!(history[0].operation, "MERGE");
    assert_eq!(history[1].operation, "WRITE");
    assert_eq!(history[2].operation, "CREATE TABLE");
    assert_eq!(history[0].metadata["shoal.batch_id"], "b-2");
    assert_eq!(history[1].metadata["shoal.author"], "test");
    assert!(history.iter().all(|c| c.timestamp.is_some()));
    let limited = table.history(Some(1)).await.expect("limited");
    assert_eq!(limited.len(), 1);
    assert_eq!(limited[0].version, 2);
}

#[tokio::test]
async fn partitioned_tables_write_one_folder_per_value() {
    let (dir, warehouse) = temp_warehouse();
    let table = people_by_city(&warehouse).await;
    assert!(dir.path().join("people/city=sh").is_dir());
    assert!(dir.path().join("people/city=hz").is_dir());
    assert_eq!(table.row_count().await.expect("count"), 3);
}

#[tokio::test]
async fn a_partitioned_append_writes_each_partition_in_input_order_in_files_of_bounded_size() {
    use deltalake::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    let (dir, warehouse) = temp_warehouse();
    let mut table = empty_people_by_city(&warehouse).await;
    let file_rows = shoal_catalog::FILE_ROWS as i64;
    // Batch 1: long runs (sh, hz, sh again), cut as they are. Batch 2: cities alternating
    // row by row, sorted first. Batch 3: more of `sh` than a file holds.
    let runs: Vec<(i64, &str, &str)> = (0..300)
        .map(|i| (i, "r", if (100..250).contains(&i) { "hz" } else { "sh" }))
        .collect();
    let mixed: Vec<(i64, &str, &str)> = (300..500)
        .map(|i| (i, "m", ["sh", "hz", "bj"][i as usize % 3]))
        .collect();
    let big: Vec<(i64, &str, &str)> = (500..500 + file_rows + 10)
        .map(|i| (i, "b", "sh"))
        .collect();
    let version = table
        .append(
            vec![people(&runs), people(&mixed), people(&big)],
            CommitNote::default(),
        )
        .await
        .expect("append");
    assert_eq!(
        table.history(Some(1)).await.expect("history")[0].operation,
        "WRITE"
    );
    assert_eq!(table.version(), version);

    // Per file: its folder's city, and its ids in the order they were given.
    let mut files: Vec<(String, Vec<i64>)> = Vec::new();
    for path in parquet_files(&dir.path().join("people")) {
        let folder = path.parent().expect("folder").file_name().expect("name");
        let city = folder
            .to_string_lossy()
            .trim_start_matches("city=")
            .to_string();
        let reader =
            ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&path).expect("open"))
                .expect("reader")
                .build()
                .expect("build");
        let mut ids = Vec::new();
        for batch in reader {
            let batch = batch.expect("batch");
            let column = batch.column_by_name("id").expect("id");
            let column = column.as_any().downcast_ref::<Int64Array>().expect("int64");
            ids.extend(column.values().iter().copied());
        }
        files.push((city, ids));
    }
    files.sort();
    let expect_ids = |rows: &[(i64, &str, &str)], city: &str| -> Vec<i64> {
        rows.iter().filter(|r| r.2 == city).map(|r| r.0).collect()
    };
    let mut sh: Vec<i64> = expect_ids(&runs, "sh");
    sh.extend(expect_ids(&mixed, "sh"));
    sh.extend(expect_ids(&big, "sh"));
    let mut hz = expect_ids(&runs, "hz");
    hz.extend(expect_ids(&mixed, "hz"));
    let got = |city: &str| -> Vec<&Vec<i64>> {
        files.iter().filter(|f| f.0 == city).map(|f| &f.1).collect()
    };
    assert_eq!(got("bj"), vec![&expect_ids(&mixed, "bj")]);
    assert_eq!(got("hz"), vec![&hz]);
    // `sh` spans two files of at most FILE_ROWS rows; read in order they are its rows in the
    // order given.
    let mut sh_files = got("sh");
    assert_eq!(
        sh_files.len(),
        2,
        "{:?}",
        sh_files.iter().map(|f| f.len()).collect::<Vec<_>>()
    );
    assert!(sh_files.iter().all(|f| f.len() as i64 <= file_rows));
    sh_files.sort_by_key(|f| f[0]);
    let joined: Vec<i64> = sh_files.into_iter().flatten().copied().collect();
    assert_eq!(joined, sh);
    assert_eq!(files.len(), 4);
    assert_eq!(
        table.row_count().await.expect("count"),
        (runs.len() + mixed.len() + big.len()) as u64
    );

    // A batch lacking a column the table requires is refused, and nothing is committed.
    let lacking = RecordBatch::try_new(
        Arc::new(arrow::datatypes::Schema::new(vec![
            arrow::datatypes::Field::new("city", arrow::datatypes::DataType::Utf8, true),
        ])),
        vec![Arc::new(StringArray::from(vec!["sh"]))],
    )
    .expect("batch");
    let refused = table.append(vec![lacking], CommitNote::default()).await;
    assert!(
        matches!(refused, Err(Error::InvalidData { .. })),
        "{refused:?}"
    );
    assert_eq!(table.version(), version);
}

/// An empty `people` table partitioned by city.
async fn empty_people_by_city(warehouse: &shoal_catalog::Warehouse) -> Table {
    Table::create_if_missing(warehouse, "people", people_schema(), &["city".to_string()])
        .await
        .expect("create")
}

/// A `people` table partitioned by city, holding Ann and Cy in `sh` and Bo in `hz`.
async fn people_by_city(warehouse: &shoal_catalog::Warehouse) -> Table {
    let mut table = empty_people_by_city(warehouse).await;
    table
        .append(
            vec![people(&[
                (1, "Ann", "sh"),
                (2, "Bo", "hz"),
                (3, "Cy", "sh"),
            ])],
            CommitNote::default(),
        )
        .await
        .expect("append");
    table
}

fn parquet_files(root: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "parquet") {
                out.push(path);
            }
        }
    }
    out
}

/// Checkpoint files in a table's log, as version numbers.
fn checkpoints(dir: &std::path::Path, table: &str) -> Vec<u64> {
    let mut found: Vec<u64> = std::fs::read_dir(dir.join(table).join("_delta_log"))
        .expect("log")
        .filter_map(|e| {
            let name = e.expect("entry").file_name().into_string().expect("utf-8");
            name.strip_suffix(".checkpoint.parquet")
                .map(|v| v.parse().expect("version"))
        })
        .collect();
    found.sort_unstable();
    found
}

/// `delta.checkpointInterval` as the newest metadata action of the log records it.
fn recorded_interval(dir: &std::path::Path, table: &str) -> Option<String> {
    let log = dir.join(table).join("_delta_log");
    let mut commits: Vec<_> = std::fs::read_dir(&log)
        .expect("log")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    commits.sort();
    let mut interval = None;
    for commit in commits {
        for line in std::fs::read_to_string(commit).expect("commit").lines() {
            let action: serde_json::Value = serde_json::from_str(line).expect("json");
            if let Some(config) = action.pointer("/metaData/configuration") {
                interval = config["delta.checkpointInterval"]
                    .as_str()
                    .map(str::to_string);
            }
        }
    }
    interval
}

#[tokio::test]
async fn tables_checkpoint_every_ten_commits() {
    let (dir, warehouse) = temp_warehouse();
    let mut table = Table::create_if_missing(&warehouse, "people", people_schema(), &[])
        .await
        .expect("create");
    assert_eq!(
        recorded_interval(dir.path(), "people").as_deref(),
        Some("10")
    );
    for i in 1..=21 {
        table
            .append(
                vec![people(&[(i, "Ann", "上海")])],
                CommitNote::new("batch_id", i),
            )
            .await
            .expect("append");
    }
    // Versions 9 and 19 close an interval (versions count from 0).
    assert_eq!(checkpoints(dir.path(), "people"), vec![9, 19]);
    let reopened = Table::open(&warehouse, "people").await.expect("open");
    assert_eq!(reopened.version(), 21);
    assert_eq!(rows_of(&reopened).await.len(), 21);
}

#[tokio::test]
async fn older_tables_checkpoint_every_ten_commits_unless_they_chose_an_interval() {
    let (dir, warehouse) = temp_warehouse();
    // Tables as they were made before the interval was set at creation (delta-rs alone
    // checkpoints those every 100 commits), and one whose owner chose 50.
    let make = |name: &'static str, config: Option<&'static str>| {
        let url = warehouse.table_url(name).expect("url");
        async move {
            std::fs::create_dir_all(url.to_file_path().expect("path")).expect("dir");
            let fields = deltalake::kernel::StructType::try_from_arrow(people_schema().as_ref())
                .expect("schema");
            let mut create = deltalake::DeltaTable::try_from_url(url)
                .await
                .expect("handle")
                .create()
                .with_columns(fields.fields().cloned());
            if let Some(value) = config {
                create = create.with_configuration_property(
                    deltalake::TableProperty::CheckpointInterval,
                    Some(value),
                );
            }
            create.await.expect("create");
        }
    };
    make("old", None).await;
    make("chosen", Some("50")).await;
    for name in ["old", "chosen"] {
        // Opening as the catalog does changes nothing in the log.
        let mut table = Table::create_if_missing(&warehouse, name, people_schema(), &[])
            .await
            .expect("open");
        assert_eq!(table.version(), 0);
        for i in 1..=12 {
            table
                .append(vec![people(&[(i, "Bo", "杭州")])], CommitNote::default())
                .await
                .expect("append");
        }
        let reopened = Table::open(&warehouse, name).await.expect("reopen");
        assert_eq!(reopened.version(), 12);
        assert_eq!(rows_of(&reopened).await.len(), 12);
    }
    assert_eq!(recorded_interval(dir.path(), "old"), None);
    assert_eq!(checkpoints(dir.path(), "old"), vec![9]);
    assert_eq!(
        recorded_interval(dir.path(), "chosen").as_deref(),
        Some("50")
    );
    assert!(checkpoints(dir.path(), "chosen").is_empty());
}

#[tokio::test]
async fn a_refreshed_handle_sees_every_commit_made_elsewhere() {
    let (_dir, warehouse) = temp_warehouse();
    let mut writer = Table::create_if_missing(&warehouse, "people", people_schema(), &[])
        .await
        .expect("create");
    let mut reader = Table::open(&warehouse, "people").await.expect("open");
    // Nothing new: the handle stays where it is.
    reader.refresh().await.expect("refresh");
    assert_eq!(reader.version(), 0);
    for i in 1..=12 {
        writer
            .append(
                vec![people(&[(i, "Ann", "上海")])],
                CommitNote::new("batch_id", i),
            )
            .await
            .expect("append");
        if i == 1 || i == 12 {
            reader.refresh().await.expect("refresh");
            assert_eq!(reader.version(), i as u64);
            assert_eq!(rows_of(&reader).await.len(), i as usize);
        }
    }
    // Past a checkpoint (version 9) and again with nothing new.
    reader.refresh().await.expect("refresh");
    assert_eq!(reader.version(), 12);
}

#[tokio::test]
async fn data_files_hold_row_groups_of_at_most_128k_rows() {
    use deltalake::parquet::file::reader::{FileReader, SerializedFileReader};
    let (dir, warehouse) = temp_warehouse();
    let mut table = Table::create_if_missing(&warehouse, "people", people_schema(), &[])
        .await
        .expect("create");
    let rows: Vec<(i64, &str, &str)> = (0..300_000).map(|i| (i, "Ann", "上海")).collect();
    table
        .append(vec![people(&rows)], CommitNote::new("batch_id", "big"))
        .await
        .expect("append");
    let mut sizes = Vec::new();
    for entry in std::fs::read_dir(dir.path().join("people")).expect("dir") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "parquet") {
            let reader =
                SerializedFileReader::new(std::fs::File::open(&path).expect("open")).expect("read");
            sizes.extend(reader.metadata().row_groups().iter().map(|g| g.num_rows()));
        }
    }
    sizes.sort_unstable();
    // 300,000 = 131,072 + 131,072 + 37,856: two full groups and the rest.
    assert_eq!(sizes, vec![37_856, 131_072, 131_072]);
    assert_eq!(shoal_catalog::ROW_GROUP_ROWS, 131_072);
}

#[tokio::test]
async fn a_layout_sets_each_column_encoding_and_every_value_reads_back() {
    use deltalake::parquet::basic::{Compression, Encoding};
    use deltalake::parquet::file::reader::{FileReader, SerializedFileReader};
    let (dir, warehouse) = temp_warehouse();
    let mut table = Table::create_if_missing(&warehouse, "people", people_schema(), &[])
        .await
        .expect("create")
        .with_layout(shoal_catalog::ColumnLayout {
            distinct: vec!["name".into()],
            delta: vec!["id".into()],
            unindexed: vec!["name".into()],
            uncompressed: vec!["name".into()],
        });
    let names: Vec<String> = (0..1000).map(|i| format!("person {i}")).collect();
    // Ids with gaps and a step back, so the deltas are not all one.
    let ids: Vec<i64> = (0..1000)
        .map(|i| if i == 500 { -7 } else { i * 3 })
        .collect();
    let rows: Vec<(i64, &str, &str)> = names
        .iter()
        .zip(&ids)
        .map(|(n, i)| (*i, n.as_str(), "上海"))
        .collect();
    table
        .append(vec![people(&rows)], CommitNote::new("batch_id", "b1"))
        .await
        .expect("append");
    let mut columns = Vec::new();
    for path in parquet_files(&dir.path().join("people")) {
        let reader =
            SerializedFileReader::new(std::fs::File::open(&path).expect("open")).expect("read");
        for group in reader.metadata().row_groups() {
            columns.extend(group.columns().iter().map(|c| {
                (
                    c.column_path().string(),
                    c.dictionary_page_offset().is_some(),
                    c.encodings().any(|e| e == Encoding::DELTA_BINARY_PACKED),
                    c.statistics().is_some(),
                    c.compression() == Compression::UNCOMPRESSED,
                )
            }));
        }
    }
    assert_eq!(
        columns,
        vec![
            ("id".to_string(), false, true, true, false),
            ("name".to_string(), false, false, false, true),
            ("city".to_string(), true, false, true, false)
        ]
    );
    let mut read: Vec<(i64, String)> = rows_of(&table)
        .await
        .into_iter()
        .map(|(id, name, _)| (id, name))
        .collect();
    read.sort();
    let mut expected: Vec<(i64, String)> = ids.iter().copied().zip(names).collect();
    expected.sort();
    assert_eq!(read, expected);
}

#[tokio::test]
async fn compaction_merges_small_files_and_changes_no_row() {
    let (dir, warehouse) = temp_warehouse();
    let mut table = empty_people_by_city(&warehouse).await;
    // Nothing to merge in an empty table.
    assert_eq!(
        table.compact(CommitNote::default()).await.expect("compact"),
        None
    );
    let mut expected = Vec::new();
    for i in 0..24i64 {
        let city = if i % 3 == 0 { "hz" } else { "sh" };
        let name = format!("p{i}");
        table
            .append(vec![people(&[(i, &name, city)])], CommitNote::default())
            .await
            .expect("append");
        expected.push((i, name, city.to_string()));
    }
    let before = table.version();
    let old = Table::open_at(&warehouse, "people", SnapshotRef::Version(before))
        .await
        .expect("old");
    assert_eq!(table.data_files().expect("files").len(), 24);

    let version = table
        .compact(CommitNote::new("batch_id", "compact-1"))
        .await
        .expect("compact");
    assert_eq!(version, Some(before + 1));
    // One file per partition, the same rows.
    assert_eq!(table.data_files().expect("files").len(), 2);
    let mut rows = rows_of(&table).await;
    rows.sort();
    assert_eq!(rows, expected);
    // A fresh reader sees the same, and the version before still reads its own files.
    let fresh = Table::open(&warehouse, "people").await.expect("open");
    assert_eq!(fresh.version(), before + 1);
    assert_eq!(fresh.data_files().expect("files").len(), 2);
    assert_eq!(old.data_files().expect("files").len(), 24);
    let mut old_rows = rows_of(&old).await;
    old_rows.sort();
    assert_eq!(old_rows, expected);
    let on_disk = ["city=hz", "city=sh"]
        .iter()
        .map(|p| parquet_files(&dir.path().join("people").join(p)).len())
        .sum::<usize>();
    assert_eq!(on_disk, 24 + 2, "old files stay for old readers");
    // Already compact: nothing to do, no commit.
    assert_eq!(
        table.compact(CommitNote::default()).await.expect("again"),
        None
    );
    assert_eq!(table.version(), before + 1);
}

/// Visits, with a date partition in the middle of the columns and times with microseconds.
fn visits_schema(with_tier: bool) -> arrow::datatypes::SchemaRef {
    use arrow::datatypes::{DataType, Field, TimeUnit};
    let mut fields = vec![
        Field::new("id", DataType::Int64, false),
        Field::new("day", DataType::Date32, true),
        Field::new(
            "at",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
        Field::new("name", DataType::Utf8, true),
    ];
    if with_tier {
        fields.push(Field::new("tier", DataType::Utf8, true));
    }
    Arc::new(arrow::datatypes::Schema::new(fields))
}

/// Rows of (id, day as days since 1970, at in µs, name).
fn visits(rows: &[(i64, Option<i32>, i64, Option<&str>)], tier: Option<&str>) -> RecordBatch {
    use arrow::array::{Date32Array, TimestampMicrosecondArray};
    let mut columns: Vec<arrow::array::ArrayRef> = vec![
        Arc::new(Int64Array::from(
            rows.iter().map(|r| r.0).collect::<Vec<_>>(),
        )),
        Arc::new(Date32Array::from(
            rows.iter().map(|r| r.1).collect::<Vec<_>>(),
        )),
        Arc::new(
            TimestampMicrosecondArray::from(rows.iter().map(|r| r.2).collect::<Vec<_>>())
                .with_timezone("UTC"),
        ),
        Arc::new(StringArray::from(
            rows.iter().map(|r| r.3).collect::<Vec<_>>(),
        )),
    ];
    if let Some(tier) = tier {
        columns.push(Arc::new(StringArray::from(vec![Some(tier); rows.len()])));
    }
    RecordBatch::try_new(visits_schema(tier.is_some()), columns).expect("batch")
}

/// The rows a query gives, as text lines (sorted by the query).
async fn lines_of(provider: Arc<dyn datafusion::catalog::TableProvider>, sql: &str) -> Vec<String> {
    let ctx = datafusion::prelude::SessionContext::new();
    ctx.register_table("visits", provider).expect("register");
    sql_text(&ctx, sql)
        .await
        .lines()
        .map(str::to_string)
        .collect()
}

/// Queries over `visits` that read every kind of column and filter.
const VISITS_QUERIES: [&str; 8] = [
    "SELECT * FROM visits ORDER BY id",
    "SELECT name, id FROM visits WHERE day = DATE '2024-10-04' ORDER BY id",
    "SELECT id FROM visits WHERE day IS NULL ORDER BY id",
    "SELECT id, tier FROM visits WHERE day >= DATE '2024-10-05' AND id > 3 ORDER BY id",
    // Delta records times to the millisecond: 10:00:00.000900 is past the recorded
    // maximum of its file, and the file must still be read.
    "SELECT id FROM visits WHERE at >= TIMESTAMP '2024-10-04T10:00:00.000500Z' ORDER BY id",
    "SELECT count(*) AS n, count(tier) AS tiers FROM visits",
    "SELECT id FROM visits WHERE name LIKE 'C%' OR day + 1 = DATE '2024-10-06' ORDER BY id",
    "SELECT id FROM visits WHERE id > 100",
];

/// A `visits` table of three commits over three days (and a day-less row), the last one
/// adding a column the older files lack.
async fn visits_table(warehouse: &shoal_catalog::Warehouse) -> Table {
    let day = |d: i32| Some(20_000 + d);
    // 20000 is 2024-10-04; times are µs since 1970 within that day.
    let at = |d: i64, us: i64| (20_000 + d) * 86_400_000_000 + us;
    let mut table = Table::create_if_missing(
        warehouse,
        "visits",
        visits_schema(false),
        &["day".to_string()],
    )
    .await
    .expect("create");
    table
        .append(
            vec![visits(
                &[
                    (1, day(0), at(0, 36_000_000_900), Some("Ann")),
                    (2, day(0), at(0, 1_000), Some("Bo")),
                    (3, day(1), at(1, 5), None),
                ],
                None,
            )],
            CommitNote::default(),
        )
        .await
        .expect("append");
    table
        .append(
            vec![visits(
                &[
                    (4, day(2), at(2, 7), Some("Cy")),
                    (5, None, at(3, 9), Some("Di")),
                ],
                None,
            )],
            CommitNote::default(),
        )
        .await
        .expect("append");
    // A column added later: older files have none, and read it as null.
    let mut table =
        Table::create_if_missing(warehouse, "visits", visits_schema(true), &["day".into()])
            .await
            .expect("evolve");
    table
        .append(
            vec![visits(&[(6, day(2), at(2, 8), Some("Ed"))], Some("gold"))],
            CommitNote::default(),
        )
        .await
        .expect("append");
    table
}

#[tokio::test]
async fn the_query_provider_reads_a_snapshot_as_delta_does_and_skips_files() {
    let (_dir, warehouse) = temp_warehouse();
    let table = visits_table(&warehouse).await;
    let ours = table.query_provider().await.expect("query provider");
    let delta = table.provider().await.expect("delta provider");
    let names: Vec<String> = ours
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    assert_eq!(names, ["id", "day", "at", "name", "tier"]);
    let queries = VISITS_QUERIES;
    let rewrite = table.rewrite_provider().await.expect("rewrite provider");
    let name = rewrite
        .schema()
        .field_with_name("name")
        .expect("name")
        .clone();
    assert_eq!(
        name.data_type(),
        &arrow::datatypes::DataType::Utf8,
        "text as stored"
    );
    for sql in queries {
        assert_eq!(
            lines_of(ours.clone(), sql).await,
            lines_of(delta.clone(), sql).await,
            "{sql}"
        );
        assert_eq!(
            lines_of(rewrite.clone(), sql).await,
            lines_of(delta.clone(), sql).await,
            "{sql}"
        );
    }
    // Hand-computed answers, in case both readers were wrong the same way.
    let ids = |lines: Vec<String>| -> Vec<String> {
        lines
            .iter()
            .filter(|l| l.starts_with("| ") && !l.contains("id"))
            .map(|l| l.trim_matches(|c| c == '|' || c == ' ').to_string())
            .collect()
    };
    assert_eq!(
        ids(lines_of(ours.clone(), queries[4]).await),
        ["1", "3", "4", "5", "6"]
    );
    assert_eq!(ids(lines_of(ours.clone(), queries[2]).await), ["5"]);
    // A partition filter picks files by their values, and is not tested again above the
    // scan; a filter on times skips files by their statistics.
    let plan = lines_of(
        ours.clone(),
        "EXPLAIN ANALYZE SELECT count(*) FROM visits WHERE day = DATE '2024-10-06'",
    )
    .await
    .join("\n");
    assert!(plan.contains("files_opened=2,"), "{plan}");
    assert!(!plan.contains("FilterExec"), "{plan}");
    let plan = lines_of(
        ours.clone(),
        "EXPLAIN ANALYZE SELECT count(*) FROM visits WHERE at < TIMESTAMP '2024-10-05T00:00:00Z'",
    )
    .await
    .join("\n");
    assert!(plan.contains("files_opened=1,"), "{plan}");
}

#[tokio::test]
async fn scans_through_the_column_cache_give_the_rows_the_files_give() {
    let (_dir, warehouse) = temp_warehouse();
    let mut table = visits_table(&warehouse).await;
    let delta = table.provider().await.expect("delta provider");
    let cache = Arc::new(ColumnCache::new(64 << 20));
    let cached = table
        .query_provider_cached(Some(cache.clone()))
        .await
        .expect("cached provider");
    // Twice: the first round decodes and keeps the columns, the second reads them kept.
    for round in ["decoding", "kept"] {
        for sql in VISITS_QUERIES {
            assert_eq!(
                lines_of(cached.clone(), sql).await,
                lines_of(delta.clone(), sql).await,
                "{round}: {sql}"
            );
        }
    }
    let after_two_rounds = cache.stats();
    // Five files (one per day of each commit) of four stored columns (`day` is the
    // partition), each column decoded once.
    assert_eq!(after_two_rounds.columns, 20, "{after_two_rounds:?}");
    assert_eq!(after_two_rounds.misses, 20, "{after_two_rounds:?}");
    assert!(after_two_rounds.hits > 20, "{after_two_rounds:?}");
    let plan = lines_of(
        cached.clone(),
        "EXPLAIN SELECT count(*) FROM visits WHERE name = 'Ann'",
    )
    .await
    .join("\n");
    assert!(
        plan.contains("partition_sizes=["),
        "batches in memory: {plan}"
    );

    // A new version keeps what its files share with the old one: only the new file is decoded.
    let day = Some(20_003);
    table
        .append(
            vec![visits(
                &[(7, day, (20_003) * 86_400_000_000, Some("Fa"))],
                Some("gold"),
            )],
            CommitNote::default(),
        )
        .await
        .expect("append");
    let delta = table.provider().await.expect("delta provider");
    let cached = table
        .query_provider_cached(Some(cache.clone()))
        .await
        .expect("cached provider");
    let sql = VISITS_QUERIES[0];
    assert_eq!(
        lines_of(cached.clone(), sql).await,
        lines_of(delta.clone(), sql).await
    );
    assert_eq!(cache.stats().misses, after_two_rounds.misses + 4);

    // A cache too small for a scan keeps nothing and leaves the scan to the files.
    let tiny = Arc::new(ColumnCache::new(64));
    let uncached = table
        .query_provider_cached(Some(tiny.clone()))
        .await
        .expect("provider");
    for sql in VISITS_QUERIES {
        assert_eq!(
            lines_of(uncached.clone(), sql).await,
            lines_of(delta.clone(), sql).await,
            "{sql}"
        );
    }
    assert_eq!(tiny.stats().columns, 0);
    let plan = lines_of(
        uncached,
        "EXPLAIN SELECT count(*) FROM visits WHERE name = 'Ann'",
    )
    .await
    .join("\n");
    assert!(plan.contains("file_type=parquet"), "{plan}");
}

/// Blobs (tag bitmaps, pack members) are read from their files, never kept decoded: their
/// readers keep what they decode.
#[tokio::test]
async fn binary_columns_are_not_kept_in_the_column_cache() {
    use arrow::array::BinaryArray;
    use arrow::datatypes::{DataType, Field, Schema};
    let (_dir, warehouse) = temp_warehouse();
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("blob", DataType::Binary, true),
    ]));
    let mut table = Table::create_if_missing(&warehouse, "blobs", schema.clone(), &[])
        .await
        .expect("create");
    let batch = RecordBatch::try_new(
        schema,
        vec![
            Arc::new(Int64Array::from(vec![1, 2])),
            Arc::new(BinaryArray::from(vec![Some(&b"ab"[..]), None])),
        ],
    )
    .expect("batch");
    table
        .append(vec![batch], CommitNote::default())
        .await
        .expect("append");
    let cache = Arc::new(ColumnCache::new(64 << 20));
    let provider = table
        .query_provider_cached(Some(cache.clone()))
        .await
        .expect("provider");
    let ctx = datafusion::prelude::SessionContext::new();
    ctx.register_table("blobs", provider).expect("register");
    let rows = ctx
        .sql("SELECT id, length(blob) AS n FROM blobs ORDER BY id")
        .await
        .expect("plan")
        .collect()
        .await
        .expect("run");
    let text = arrow::util::pretty::pretty_format_batches(&rows)
        .expect("format")
        .to_string();
    assert!(text.contains("| 1  | 2 |"), "{text}");
    assert_eq!(cache.stats().columns, 0);
    // The id alone is kept.
    ctx.sql("SELECT sum(id) FROM blobs")
        .await
        .expect("plan")
        .collect()
        .await
        .expect("run");
    assert_eq!(cache.stats().columns, 1);
}

#[tokio::test]
async fn replacing_keys_rewrites_only_the_files_holding_them() {
    let (_dir, warehouse) = temp_warehouse();
    let mut table = Table::create_if_missing(&warehouse, "people", people_schema(), &[])
        .await
        .expect("create");
    // Three files: ids 1–2, 3–4 and 5.
    for rows in [
        vec![(1, "Ann", "上海"), (2, "Bo", "杭州")],
        vec![(3, "Cy", "北京"), (4, "Di", "深圳")],
        vec![(5, "Ed", "广州")],
    ] {
        table
            .append(vec![people(&rows)], CommitNote::default())
            .await
            .expect("append");
    }
    let before = table.data_files().expect("files");
    // 4 changes city, 6 is new, 2 goes.
    table
        .replace_keys(
            vec![people(&[(6, "Fa", "成都"), (4, "Di", "苏州")])],
            "id",
            &[2],
            CommitNote::new("reason", "build"),
        )
        .await
        .expect("replace");
    let expected: Vec<(i64, String, String)> = [
        (1, "Ann", "上海"),
        (3, "Cy", "北京"),
        (4, "Di", "苏州"),
        (5, "Ed", "广州"),
        (6, "Fa", "成都"),
    ]
    .iter()
    .map(|(i, n, c)| (*i, n.to_string(), c.to_string()))
    .collect();
    let mut rows = rows_of(&table).await;
    rows.sort();
    assert_eq!(rows, expected);
    let after = table.data_files().expect("files");
    // The file of 5 stays; the files of 1–2 and 3–4 become one sorted file with 6.
    assert_eq!(after.len(), 2);
    let kept: Vec<_> = before
        .iter()
        .filter(|f| after.contains(f))
        .cloned()
        .collect();
    assert_eq!(kept.len(), 1, "{before:?} {after:?}");
    let mut ids = Vec::new();
    table
        .read_files(&kept, Some(&["id"]), |_, batch| {
            let column = batch.column(0).as_any().downcast_ref::<Int64Array>();
            ids.extend(column.expect("ids").values().iter().copied());
            Ok(())
        })
        .await
        .expect("read");
    assert_eq!(ids, vec![5]);
    let fresh = Table::open(&warehouse, "people").await.expect("open");
    let mut rows = rows_of(&fresh).await;
    rows.sort();
    assert_eq!(rows, expected);

    // Two rows of one key are refused, and nothing changes.
    let version = table.version();
    let err = table
        .replace_keys(
            vec![people(&[(7, "Go", "西安"), (7, "Go", "重庆")])],
            "id",
            &[],
            CommitNote::default(),
        )
        .await
        .expect_err("duplicate key");
    assert!(matches!(err, Error::InvalidData { .. }), "{err}");
    assert_eq!(table.version(), version);
    // A key column the table lacks is named.
    let err = table
        .replace_keys(
            vec![people(&[(8, "Hu", "天津")])],
            "uid",
            &[],
            CommitNote::default(),
        )
        .await
        .expect_err("no such key");
    assert!(err.to_string().contains("uid"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_replacement_is_written_in_parts_and_loses_no_row() {
    let (_dir, warehouse) = temp_warehouse();
    let mut table = Table::create_if_missing(&warehouse, "people", people_schema(), &[])
        .await
        .expect("create");
    // 300,000 rows, over two row groups: written as a file per core (up to 2 here).
    let n = 300_000i64;
    let names: Vec<String> = (0..n).map(|i| format!("p{i}")).collect();
    let rows: Vec<(i64, &str, &str)> = (0..n)
        .rev()
        .map(|i| {
            (
                i,
                names[i as usize].as_str(),
                if i % 2 == 0 { "hz" } else { "sh" },
            )
        })
        .collect();
    table
        .replace_keys(vec![people(&rows)], "id", &[], CommitNote::default())
        .await
        .expect("replace");
    let files = table.data_files().expect("files");
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    assert_eq!(files.len(), cores.min(2));
    // Every row once, and each file sorted by id.
    let mut all = Vec::new();
    for file in &files {
        let mut ids = Vec::new();
        table
            .read_files(std::slice::from_ref(file), Some(&["id"]), |_, batch| {
                let column = batch.column(0).as_any().downcast_ref::<Int64Array>();
                ids.extend(column.expect("ids").values().iter().copied());
                Ok(())
            })
            .await
            .expect("read");
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "sorted by id");
        all.extend(ids);
    }
    all.sort_unstable();
    assert_eq!(all, (0..n).collect::<Vec<_>>());
    let read = rows_of(&table).await;
    assert_eq!(read.len(), n as usize);
    assert!(read.iter().all(|(i, name, _)| name == &format!("p{i}")));
}

#[tokio::test]
async fn merging_and_updating_by_key_rewrite_only_the_files_holding_the_keys() {
    let (_dir, warehouse) = temp_warehouse();
    let mut table = Table::create_if_missing(&warehouse, "people", people_schema(), &[])
        .await
        .expect("create");
    // Three files: ids 1–2, 3–4 and 5.
    for rows in [
        vec![(1, "Ann", "上海"), (2, "Bo", "杭州")],
        vec![(3, "Cy", "北京"), (4, "Di", "深圳")],
        vec![(5, "Ed", "广州")],
    ] {
        table
            .append(vec![people(&rows)], CommitNote::default())
            .await
            .expect("append");
    }
    let sorted_rows = |mut rows: Vec<(i64, String, String)>| {
        rows.sort();
        rows
    };
    let owned = |rows: &[(i64, &str, &str)]| -> Vec<(i64, String, String)> {
        rows.iter()
            .map(|(i, n, c)| (*i, n.to_string(), c.to_string()))
            .collect()
    };

    // A key of two columns: (4, Di) is replaced, (6, Fa) is new, (3, Zed) is a new key too.
    let before = table.data_files().expect("files");
    let outcome = table
        .merge(
            vec![people(&[
                (4, "Di", "苏州"),
                (6, "Fa", "成都"),
                (3, "Zed", "西安"),
            ])],
            &["id", "name"],
            CommitNote::new("reason", "re-import"),
        )
        .await
        .expect("merge");
    assert_eq!((outcome.inserted, outcome.updated), (2, 1));
    assert_eq!(
        sorted_rows(rows_of(&table).await),
        owned(&[
            (1, "Ann", "上海"),
            (2, "Bo", "杭州"),
            (3, "Cy", "北京"),
            (3, "Zed", "西安"),
            (4, "Di", "苏州"),
            (5, "Ed", "广州"),
            (6, "Fa", "成都"),
        ])
    );
    let after = table.data_files().expect("files");
    let kept: Vec<_> = before.iter().filter(|f| after.contains(f)).collect();
    // Only the file of 3–4 was rewritten.
    assert_eq!(kept.len(), 2, "{before:?} {after:?}");
    assert_eq!(after.len(), 3);
    assert_eq!(
        table.history(Some(1)).await.expect("history")[0].operation,
        "MERGE"
    );

    // Only new keys: an append, every file stays.
    let before = table.data_files().expect("files");
    let outcome = table
        .merge(
            vec![people(&[(7, "Go", "重庆")])],
            &["id"],
            CommitNote::default(),
        )
        .await
        .expect("merge new");
    assert_eq!((outcome.inserted, outcome.updated), (1, 0));
    let after = table.data_files().expect("files");
    assert!(before.iter().all(|f| after.contains(f)));
    assert_eq!(after.len(), before.len() + 1);

    // An update sets one column of the matched rows (both rows of id 3), leaves the rest of
    // their file alone and ignores a key the table lacks.
    let version = table.version();
    let updates = RecordBatch::try_from_iter(vec![
        (
            "id",
            Arc::new(Int64Array::from(vec![3, 99])) as arrow::array::ArrayRef,
        ),
        (
            "city",
            Arc::new(StringArray::from(vec!["天津", "拉萨"])) as _,
        ),
    ])
    .expect("batch");
    let before = table.data_files().expect("files");
    let outcome = table
        .update_by_key(vec![updates], &["id"], &["city"], CommitNote::default())
        .await
        .expect("update");
    assert_eq!((outcome.inserted, outcome.updated), (0, 2));
    assert_eq!(outcome.version, version + 1);
    let after = table.data_files().expect("files");
    assert_eq!(
        before.iter().filter(|f| after.contains(f)).count(),
        before.len() - 1
    );
    let expected = owned(&[
        (1, "Ann", "上海"),
        (2, "Bo", "杭州"),
        (3, "Cy", "天津"),
        (3, "Zed", "天津"),
        (4, "Di", "苏州"),
        (5, "Ed", "广州"),
        (6, "Fa", "成都"),
        (7, "Go", "重庆"),
    ]);
    assert_eq!(sorted_rows(rows_of(&table).await), expected);
    // An update matching nothing commits nothing.
    let nothing = RecordBatch::try_from_iter(vec![
        (
            "id",
            Arc::new(Int64Array::from(vec![42])) as arrow::array::ArrayRef,
        ),
        ("city", Arc::new(StringArray::from(vec!["x"])) as _),
    ])
    .expect("batch");
    let outcome = table
        .update_by_key(vec![nothing], &["id"], &["city"], CommitNote::default())
        .await
        .expect("update nothing");
    assert_eq!((outcome.updated, outcome.version), (0, version + 1));

    // A key with a null part matches nothing, as in SQL: the row is added.
    let loose = RecordBatch::try_from_iter(vec![
        (
            "id",
            Arc::new(Int64Array::from(vec![5])) as arrow::array::ArrayRef,
        ),
        ("name", Arc::new(StringArray::from(vec![None::<&str>])) as _),
        ("city", Arc::new(StringArray::from(vec!["广州"])) as _),
    ])
    .expect("batch");
    let outcome = table
        .merge(vec![loose], &["id", "name"], CommitNote::default())
        .await
        .expect("merge null key");
    assert_eq!((outcome.inserted, outcome.updated), (1, 0));
    let fresh = Table::open(&warehouse, "people").await.expect("open");
    assert_eq!(fresh.row_count().await.expect("count"), 9);
}

#[tokio::test]
async fn rewriting_rows_by_value_touches_only_their_files_in_files_of_bounded_size() {
    let (_dir, warehouse) = temp_warehouse();
    let mut table = Table::create_if_missing(&warehouse, "people", people_schema(), &[])
        .await
        .expect("create");
    for rows in [
        vec![(1, "Ann", "上海"), (2, "Bo", "杭州")],
        vec![(4, "Di", "深圳"), (3, "Cy", "北京")],
        vec![(5, "Ed", "广州")],
    ] {
        table
            .append(vec![people(&rows)], CommitNote::default())
            .await
            .expect("append");
    }
    let ids_of = |table: &Table, files: Vec<shoal_catalog::DataFile>| {
        let table = table.clone();
        async move {
            let mut ids = Vec::new();
            table
                .read_files(&files, Some(&["id"]), |_, batch| {
                    let column = batch.column(0).as_any().downcast_ref::<Int64Array>();
                    ids.extend(column.expect("ids").values().iter().copied());
                    Ok(())
                })
                .await
                .expect("read");
            ids
        }
    };
    // The file holding 3 is rewritten, its rows changed by the callback, with 6 added.
    let before = table.data_files().expect("files");
    table
        .rewrite_rows(
            "id",
            &[3].into_iter().collect(),
            |batch| {
                let ids = batch.column(0).as_any().downcast_ref::<Int64Array>();
                let ids = ids.expect("ids");
                let cities: StringArray = (0..batch.num_rows())
                    .map(|i| (ids.value(i) == 3).then_some("天津"))
                    .collect();
                let cities = arrow::compute::kernels::zip::zip(
                    &arrow::compute::is_not_null(&cities).expect("mask"),
                    &cities,
                    batch.column(2),
                )
                .expect("zip");
                Ok(RecordBatch::try_new(
                    batch.schema(),
                    vec![batch.column(0).clone(), batch.column(1).clone(), cities],
                )
                .expect("batch"))
            },
            vec![people(&[(6, "Fa", "成都")])],
            CommitNote::default(),
        )
        .await
        .expect("rewrite");
    let mut rows = rows_of(&table).await;
    rows.sort();
    let expected: Vec<(i64, String, String)> = [
        (1, "Ann", "上海"),
        (2, "Bo", "杭州"),
        (3, "Cy", "天津"),
        (4, "Di", "深圳"),
        (5, "Ed", "广州"),
        (6, "Fa", "成都"),
    ]
    .iter()
    .map(|(i, n, c)| (*i, n.to_string(), c.to_string()))
    .collect();
    assert_eq!(rows, expected);
    let after = table.data_files().expect("files");
    assert_eq!(before.iter().filter(|f| after.contains(f)).count(), 2);
    let new: Vec<_> = after
        .iter()
        .filter(|f| !before.contains(f))
        .cloned()
        .collect();
    assert_eq!(ids_of(&table, new).await, vec![3, 4, 6], "sorted by id");

    // The files now hold ids 1-2, 5, and 3-6: the log's least and greatest ids of each tell
    // which may hold some ids, and a file no value falls within is never read.
    let bounding = |values: &[i64]| {
        let values: std::collections::HashSet<i64> = values.iter().copied().collect();
        let files = table.data_files_bounding("id", &values).expect("files");
        let table = table.clone();
        async move {
            let mut ids = ids_of(&table, files).await;
            ids.sort_unstable();
            ids
        }
    };
    assert_eq!(bounding(&[2]).await, vec![1, 2]);
    assert_eq!(bounding(&[5]).await, vec![3, 4, 5, 6]);
    assert_eq!(bounding(&[0, 2, 7]).await, vec![1, 2]);
    assert_eq!(bounding(&[0, 7, 100]).await, Vec::<i64>::new());
    assert_eq!(bounding(&[]).await, Vec::<i64>::new());

    // No value to find: the rows are appended, in files of at most FILE_ROWS rows.
    let n = 2 * shoal_catalog::FILE_ROWS + 1;
    let names: Vec<String> = (0..n).map(|i| format!("p{i}")).collect();
    let many: Vec<(i64, &str, &str)> = (0..n)
        .map(|i| (100 + i as i64, names[i].as_str(), "hz"))
        .collect();
    let before = table.data_files().expect("files");
    table
        .rewrite_rows(
            "id",
            &Default::default(),
            Ok,
            vec![people(&many)],
            CommitNote::default(),
        )
        .await
        .expect("append");
    let after = table.data_files().expect("files");
    assert!(before.iter().all(|f| after.contains(f)));
    let new: Vec<_> = after
        .iter()
        .filter(|f| !before.contains(f))
        .cloned()
        .collect();
    assert_eq!(new.len(), 3);
    for file in &new {
        let ids = ids_of(&table, vec![file.clone()]).await;
        assert!(ids.len() <= shoal_catalog::FILE_ROWS, "{}", ids.len());
    }
    assert_eq!(ids_of(&table, new).await.len(), n);
    assert_eq!(table.row_count().await.expect("count"), n as u64 + 6);

    // A column the table lacks is named, and nothing changes.
    let version = table.version();
    let err = table
        .rewrite_rows(
            "nope",
            &[1].into_iter().collect(),
            Ok,
            Vec::new(),
            CommitNote::default(),
        )
        .await
        .expect_err("unknown column");
    assert!(matches!(err, Error::UnknownField { .. }), "{err}");
    assert_eq!(table.version(), version);
}

#[tokio::test]
async fn merging_changes_leaves_unchanged_rows_and_their_files_alone() {
    let (_dir, warehouse) = temp_warehouse();
    let mut table = Table::create_if_missing(&warehouse, "people", people_schema(), &[])
        .await
        .expect("create");
    for rows in [
        vec![(1, "Ann", "上海"), (2, "Bo", "杭州")],
        vec![(3, "Cy", "北京"), (4, "Di", "深圳")],
    ] {
        table
            .append(vec![people(&rows)], CommitNote::default())
            .await
            .expect("append");
    }
    // 4 given back as it is and 5 new: the files stay, 5 is added.
    let before = table.data_files().expect("files");
    let outcome = table
        .merge_changes(
            vec![people(&[(4, "Di", "深圳"), (5, "Ed", "广州")])],
            &["id"],
            CommitNote::default(),
        )
        .await
        .expect("merge");
    assert_eq!((outcome.inserted, outcome.updated), (1, 0));
    let after = table.data_files().expect("files");
    assert!(before.iter().all(|f| after.contains(f)));
    assert_eq!(after.len(), 3);
    // Only rows given back unchanged: no commit.
    let version = table.version();
    let outcome = table
        .merge_changes(
            vec![people(&[(1, "Ann", "上海"), (5, "Ed", "广州")])],
            &["id"],
            CommitNote::default(),
        )
        .await
        .expect("merge unchanged");
    assert_eq!(
        (outcome.version, outcome.inserted, outcome.updated),
        (version, 0, 0)
    );
    // One changed row among unchanged ones: only its file is rewritten, and the rows of the
    // other file given back unchanged are not doubled.
    let outcome = table
        .merge_changes(
            vec![people(&[
                (1, "Ann", "上海"),
                (3, "Cy", "天津"),
                (4, "Di", "深圳"),
            ])],
            &["id"],
            CommitNote::default(),
        )
        .await
        .expect("merge change");
    assert_eq!((outcome.inserted, outcome.updated), (0, 2));
    let now = table.data_files().expect("files");
    assert_eq!(after.iter().filter(|f| now.contains(f)).count(), 2);
    let mut rows = rows_of(&table).await;
    rows.sort();
    let expected: Vec<(i64, String, String)> = [
        (1, "Ann", "上海"),
        (2, "Bo", "杭州"),
        (3, "Cy", "天津"),
        (4, "Di", "深圳"),
        (5, "Ed", "广州"),
    ]
    .iter()
    .map(|(i, n, c)| (*i, n.to_string(), c.to_string()))
    .collect();
    assert_eq!(rows, expected);
}

/// A `people` table of `files` appended files of 70,000 people each: file `k` holds ids
/// `k × 70,000` onwards, named `p<id>`, in city `a`.
async fn people_in_files(warehouse: &shoal_catalog::Warehouse, files: i64) -> Table {
    let mut table = Table::create_if_missing(warehouse, "people", people_schema(), &[])
        .await
        .expect("create");
    for part in 0..files {
        let ids = part * 70_000..(part + 1) * 70_000;
        let names: Vec<String> = ids.clone().map(|i| format!("p{i}")).collect();
        let rows: Vec<(i64, &str, &str)> =
            ids.zip(&names).map(|(i, n)| (i, n.as_str(), "a")).collect();
        table
            .append(vec![people(&rows)], CommitNote::default())
            .await
            .expect("append");
    }
    table
}

/// The answer to `sql` in `ctx`, as a printed table.
async fn sql_text(ctx: &datafusion::prelude::SessionContext, sql: &str) -> String {
    let batches = ctx
        .sql(sql)
        .await
        .expect("plan")
        .collect()
        .await
        .expect("run");
    arrow::util::pretty::pretty_format_batches(&batches)
        .expect("format")
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filtered_file_reads_keep_only_the_rows_that_pass_and_are_not_deleted() {
    let (_dir, warehouse) = temp_warehouse();
    let mut table = people_in_files(&warehouse, 2).await;
    // 10 moves to city b (its old row marked deleted), 11 goes.
    table
        .replace_keys_marking(
            vec![people(&[(10, "p10", "b")])],
            "id",
            &[11],
            CommitNote::default(),
        )
        .await
        .expect("replace");
    let files = table.data_files().expect("files");
    assert!(files.iter().any(|f| f.deleted.is_some()), "{files:?}");
    // Every 7,000th id, and 10, 11 and 70,001.
    let wanted: Vec<i64> = (0..140_000)
        .step_by(7_000)
        .chain([10, 11, 70_001])
        .collect();
    let set: std::collections::HashSet<i64> = wanted.iter().copied().collect();
    let test: shoal_catalog::RowTest = Arc::new(move |batch: &RecordBatch| {
        let ids = batch
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .expect("ids");
        Ok(ids
            .iter()
            .map(|id| Some(id.is_some_and(|id| set.contains(&id))))
            .collect())
    });
    let mut rows = Vec::new();
    table
        .read_files_where(&files, Some(&["id", "city"]), "id", test, |_, batch| {
            assert_eq!(batch.num_columns(), 2);
            let ids = batch.column(0).as_any().downcast_ref::<Int64Array>();
            let cities = arrow::compute::cast(batch.column(1), &arrow::datatypes::DataType::Utf8)
                .expect("text");
            let cities = cities.as_any().downcast_ref::<StringArray>().expect("city");
            for (id, city) in ids.expect("ids").iter().zip(cities.iter()) {
                rows.push((id.expect("id"), city.expect("city").to_string()));
            }
            Ok(())
        })
        .await
        .expect("read");
    rows.sort();
    let mut expected: Vec<(i64, String)> = wanted
        .iter()
        .filter(|id| **id != 11)
        .map(|id| (*id, if *id == 10 { "b" } else { "a" }.to_string()))
        .collect();
    expected.sort();
    assert_eq!(rows, expected);
    // A test that fails is an error, not rows lost in silence.
    let failing: shoal_catalog::RowTest =
        Arc::new(|_: &RecordBatch| Err(arrow::error::ArrowError::ComputeError("no".into())));
    let err = table
        .read_files_where(&files, Some(&["id"]), "id", failing, |_, _| Ok(()))
        .await
        .expect_err("fails");
    assert!(err.to_string().contains("no"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replacing_keys_by_marking_writes_only_the_changed_rows() {
    let (_dir, warehouse) = temp_warehouse();
    // Three files of 70,000 people each (ids 0–69,999, 70,000–139,999, 140,000–209,999).
    let mut table = people_in_files(&warehouse, 3).await;
    // The files in the order of their ids.
    let mut before = table.data_files().expect("files");
    assert!(before.iter().all(|f| f.deleted.is_none()));
    let mut first_ids = vec![i64::MAX; before.len()];
    table
        .read_files(&before, Some(&["id"]), |i, batch| {
            let column = batch.column(0).as_any().downcast_ref::<Int64Array>();
            let least = column.expect("ids").values().iter().min().copied();
            first_ids[i] = first_ids[i].min(least.unwrap_or(i64::MAX));
            Ok(())
        })
        .await
        .expect("read");
    let mut order: Vec<usize> = (0..before.len()).collect();
    order.sort_by_key(|i| first_ids[*i]);
    before = order.into_iter().map(|i| before[i].clone()).collect();
    // 5, 70,005 and 140,005 move to city b, 300,000 is new, 6 goes.
    table
        .replace_keys_marking(
            vec![people(&[
                (140_005, "p140005", "b"),
                (5, "p5", "b"),
                (300_000, "new", "b"),
                (70_005, "p70005", "b"),
            ])],
            "id",
            &[6],
            CommitNote::new("reason", "build"),
        )
        .await
        .expect("replace");
    let after = table.data_files().expect("files");
    assert_eq!(after.len(), 4, "{after:?}");
    // Each old file is kept, with the rows it held marked deleted.
    let marks: Vec<Option<i64>> = before
        .iter()
        .map(|old| {
            let now = after.iter().find(|f| f.path == old.path).expect("kept");
            now.deleted.as_ref().map(|d| d.cardinality)
        })
        .collect();
    assert_eq!(marks, vec![Some(2), Some(1), Some(1)]);
    let added: Vec<_> = after
        .iter()
        .filter(|f| before.iter().all(|b| b.path != f.path))
        .cloned()
        .collect();
    assert_eq!(added[0].rows, Some(4));

    // Every reader skips the marked rows: Delta's provider, the query provider, file reads,
    // and a fresh handle.
    let check = |rows: Vec<(i64, String, String)>| {
        assert_eq!(rows.len(), 210_000);
        assert!(!rows.iter().any(|r| r.0 == 6));
        let moved: Vec<i64> = rows.iter().filter(|r| r.2 == "b").map(|r| r.0).collect();
        assert_eq!(moved, vec![5, 70_005, 140_005, 300_000]);
    };
    check(rows_of(&table).await);
    check(rows_of(&Table::open(&warehouse, "people").await.expect("open")).await);
    let mut first = Vec::new();
    table
        .read_files(&after[..1], Some(&["id"]), |_, batch| {
            let column = batch.column(0).as_any().downcast_ref::<Int64Array>();
            first.extend(column.expect("ids").values().iter().copied());
            Ok(())
        })
        .await
        .expect("read");
    let path = &after[0].path;
    let old = before
        .iter()
        .position(|f| &f.path == path)
        .expect("old file");
    let expected: Vec<i64> = (old as i64 * 70_000..(old as i64 + 1) * 70_000)
        .filter(|i| ![5, 6, 70_005, 140_005].contains(i))
        .collect();
    // (Appends keep no row order within a file.)
    first.sort_unstable();
    assert!(
        first == expected,
        "{} rows read, {} expected; first difference at {:?}",
        first.len(),
        expected.len(),
        first.iter().zip(&expected).position(|(a, b)| a != b),
    );
    // The query provider is the snapshot scan (not Delta's), reading the files (row
    // selections) or decoded columns held in a cache (filters), first and second time.
    let sum: i64 = (0..210_000i64).sum::<i64>() - 6 + 300_000;
    let cache = Arc::new(ColumnCache::new(64 << 20));
    for cached in [None, Some(cache.clone()), Some(cache.clone())] {
        let ctx = datafusion::prelude::SessionContext::new();
        let provider = table
            .query_provider_cached(cached.clone())
            .await
            .expect("provider");
        ctx.register_table("people", provider).expect("register");
        let sql = "SELECT count(*) AS n, count(*) FILTER (WHERE city = 'b') AS b, sum(id) AS s \
                   FROM people";
        let plan = sql_text(&ctx, &format!("EXPLAIN {sql}")).await;
        assert!(
            plan.contains("DataSourceExec") && !plan.contains("DeltaScan"),
            "{plan}"
        );
        let text = sql_text(&ctx, sql).await;
        assert!(
            text.contains(&format!("| 210000 | 4 | {sum} |")),
            "cached: {}\n{text}",
            cached.is_some()
        );
        let text = sql_text(
            &ctx,
            "SELECT id, city FROM people WHERE id BETWEEN 4 AND 7 ORDER BY id",
        )
        .await;
        let ids: Vec<&str> = text
            .lines()
            .filter_map(|l| l.split('|').nth(1))
            .map(str::trim)
            .filter(|v| v.parse::<i64>().is_ok())
            .collect();
        assert_eq!(ids, vec!["4", "5", "7"], "{text}");
        assert!(text.contains("| 5  | b    |"), "{text}");
    }
    let stats = cache.stats();
    assert!(stats.columns > 0 && stats.hits > 0, "{stats:?}");

    // Marking more than a quarter of a file rewrites it instead: its live rows join the
    // new file.
    let third = before[2].path.clone();
    let gone: Vec<i64> = (140_000..160_000).collect();
    table
        .replace_keys_marking(Vec::new(), "id", &gone, CommitNote::default())
        .await
        .expect("remove");
    let files = table.data_files().expect("files");
    assert!(files.iter().all(|f| f.path != third), "{files:?}");
    let rows = rows_of(&table).await;
    assert_eq!(rows.len(), 190_000);
    assert!(rows.iter().any(|r| r.0 == 70_005 && r.2 == "b"));
    assert!(!rows.iter().any(|r| (140_000..160_000).contains(&r.0)));
    // Nothing to replace commits nothing.
    let version = table.version();
    table
        .replace_keys_marking(Vec::new(), "id", &[999_999], CommitNote::default())
        .await
        .expect("nothing");
    assert_eq!(table.version(), version);
    // Compacting folds the marked files into one, without their marked rows.
    assert!(
        table
            .data_files()
            .expect("files")
            .iter()
            .any(|f| f.deleted.is_some())
    );
    table
        .compact(CommitNote::default())
        .await
        .expect("compact")
        .expect("compacted");
    assert!(
        table
            .data_files()
            .expect("files")
            .iter()
            .all(|f| f.deleted.is_none())
    );
    let compacted = rows_of(&table).await;
    assert_eq!(compacted.len(), 190_000);
    assert!(compacted.iter().any(|r| r.0 == 70_005 && r.2 == "b"));
    assert!(
        !compacted
            .iter()
            .any(|r| r.0 == 6 || (140_000..160_000).contains(&r.0))
    );
}

#[tokio::test]
async fn merging_by_a_composite_key_by_marking_replaces_only_equal_keys() {
    let (_dir, warehouse) = temp_warehouse();
    // Two files of 70,000 people each, keyed by (id, name).
    let mut table = people_in_files(&warehouse, 2).await;
    let before = table.data_files().expect("files");
    // (5, p5) is replaced; (70,005, other) shares only the id and is new.
    table
        .merge_marking(
            vec![people(&[(70_005, "other", "c"), (5, "p5", "b")])],
            &["id", "name"],
            CommitNote::default(),
        )
        .await
        .expect("merge");
    let after = table.data_files().expect("files");
    assert_eq!(after.len(), 3, "{after:?}");
    let mut marks: Vec<Option<i64>> = before
        .iter()
        .map(|old| {
            let now = after.iter().find(|f| f.path == old.path).expect("kept");
            now.deleted.as_ref().map(|d| d.cardinality)
        })
        .collect();
    marks.sort();
    assert_eq!(marks, vec![None, Some(1)]);
    let check = |rows: Vec<(i64, String, String)>| {
        assert_eq!(rows.len(), 140_001);
        let changed: Vec<(i64, &str, &str)> = rows
            .iter()
            .filter(|r| r.2 != "a")
            .map(|r| (r.0, r.1.as_str(), r.2.as_str()))
            .collect();
        let mut changed = changed;
        changed.sort();
        assert_eq!(
            changed,
            vec![(5, "p5", "b"), (70_005, "other", "c")],
            "the replaced row and the new one"
        );
        assert!(rows.iter().any(|r| r.0 == 70_005 && r.1 == "p70005"));
        assert!(!rows.iter().any(|r| r.0 == 5 && r.2 == "a"));
    };
    check(rows_of(&table).await);
    check(rows_of(&Table::open(&warehouse, "people").await.expect("open")).await);

    // Two rows with one key, and a key that is not a column, are refused and change nothing.
    let version = table.version();
    let twice = table
        .merge_marking(
            vec![people(&[(1, "p1", "x"), (1, "p1", "y")])],
            &["id", "name"],
            CommitNote::default(),
        )
        .await;
    assert!(
        matches!(&twice, Err(Error::InvalidData { reason, .. }) if reason.contains("share a key")),
        "{twice:?}"
    );
    let unknown = table
        .merge_marking(
            vec![people(&[(1, "p1", "x")])],
            &["id", "nickname"],
            CommitNote::default(),
        )
        .await;
    assert!(
        matches!(&unknown, Err(Error::UnknownField { field, .. }) if field == "nickname"),
        "{unknown:?}"
    );
    assert_eq!(table.version(), version);
    check(rows_of(&table).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_with_nulls_are_told_apart_by_their_statistics() {
    let (_dir, warehouse) = temp_warehouse();
    let mut table = Table::create_if_missing(&warehouse, "people", people_schema(), &[])
        .await
        .expect("create");
    let with_null_city = RecordBatch::try_new(
        people_schema(),
        vec![
            Arc::new(Int64Array::from(vec![3, 4])),
            Arc::new(StringArray::from(vec![Some("p3"), Some("p4")])),
            Arc::new(StringArray::from(vec![Some("a"), None])),
        ],
    )
    .expect("batch");
    for batch in [
        people(&[(1, "p1", "a"), (2, "p2", "b")]),
        with_null_city,
        people(&[(5, "p5", "c")]),
    ] {
        table
            .append(vec![batch], CommitNote::default())
            .await
            .expect("append");
    }
    assert_eq!(table.data_files().expect("files").len(), 3);
    let with_nulls = table.data_files_with_nulls("city").expect("files");
    assert_eq!(with_nulls.len(), 1, "{with_nulls:?}");
    assert_eq!(with_nulls[0].rows, Some(2));
    assert!(table.data_files_with_nulls("id").expect("files").is_empty());
    // A column the statistics do not know is not ruled out.
    assert_eq!(
        table.data_files_with_nulls("nowhere").expect("files").len(),
        3
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_made_per_partition_replace_the_removed_ones_in_one_commit() {
    let (dir, warehouse) = temp_warehouse();
    let mut table = people_by_city(&warehouse).await;
    let sh: Vec<_> = table
        .data_files()
        .expect("files")
        .into_iter()
        .filter(|f| f.partition.get("city") == Some(&Some("sh".to_string())))
        .collect();
    assert_eq!(sh.len(), 1);
    let before = table.version();
    let rows_before = rows_of(&table).await;

    // A file whose rows span two partitions is refused, and nothing is committed.
    let made = |rows: Vec<(i64, &'static str, &'static str)>| -> shoal_catalog::FileRows {
        Box::new(move || Ok(people(&rows)))
    };
    let spanning = table
        .replace_files_made(
            &sh,
            vec![
                made(vec![(1, "Ann", "sh")]),
                made(vec![(3, "Cy", "sh"), (4, "Di", "bj")]),
            ],
            CommitNote::default(),
        )
        .await;
    assert!(
        matches!(&spanning, Err(Error::InvalidData { reason, .. }) if reason.contains("partitions")),
        "{spanning:?}"
    );
    // So is a file whose rows could not be made.
    let failing: shoal_catalog::FileRows =
        Box::new(|| Err(Error::Internal("no rows today".into())));
    let failed = table
        .replace_files_made(&sh, vec![failing], CommitNote::default())
        .await;
    assert!(matches!(failed, Err(Error::Internal(_))), "{failed:?}");
    assert_eq!(table.version(), before);
    assert_eq!(rows_of(&table).await, rows_before);

    // Each made file is one data file of its partition; the removed one is gone, the other
    // partition's file stays.
    table
        .replace_files_made(
            &sh,
            vec![
                made(vec![(1, "Ann2", "sh")]),
                made(vec![(3, "Cy2", "sh"), (4, "Di", "sh")]),
            ],
            CommitNote::default(),
        )
        .await
        .expect("replaced");
    assert_eq!(table.version(), before + 1);
    let mut rows = rows_of(&table).await;
    rows.sort();
    assert_eq!(
        rows,
        vec![
            (1, "Ann2".to_string(), "sh".to_string()),
            (2, "Bo".to_string(), "hz".to_string()),
            (3, "Cy2".to_string(), "sh".to_string()),
            (4, "Di".to_string(), "sh".to_string()),
        ]
    );
    let files = table.data_files().expect("files");
    let mut counts: Vec<(String, Option<u64>)> = files
        .iter()
        .map(|f| {
            let city = f
                .partition
                .get("city")
                .cloned()
                .flatten()
                .unwrap_or_default();
            (city, f.rows)
        })
        .collect();
    counts.sort();
    assert_eq!(
        counts,
        vec![
            ("hz".to_string(), Some(1)),
            ("sh".to_string(), Some(1)),
            ("sh".to_string(), Some(2)),
        ]
    );
    assert!(files.iter().all(|f| f.path != sh[0].path));
    assert!(dir.path().join("people/city=sh").is_dir());
    // The file just replaced is gone from the snapshot: replacing it again is refused.
    let again = table
        .replace_files_made(
            &sh,
            vec![made(vec![(5, "Ed", "sh")])],
            CommitNote::default(),
        )
        .await;
    assert!(matches!(again, Err(Error::InvalidData { .. })), "{again:?}");
    assert_eq!(table.version(), before + 1);
}
