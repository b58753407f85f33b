//! Exports: a version's members joined with chosen columns of `users`, each shown as the
//! caller's role may export it (clear, masked, or SHA-256 hashed, the form ad platforms
//! match phones on), logged before the first row leaves.

use std::sync::Arc;

use arrow::array::{Int64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema};
use datafusion::common::JoinType;
use datafusion::logical_expr::{Expr, cast};
use datafusion::prelude::{DataFrame, col};
use shoal_catalog::{Catalog, Visibility};
use shoal_query::{Engine, Session};

use crate::error::{Error, Result};
use crate::pack::{self, Actor};
use crate::store::{self, ExportLog};

/// Formats an export is written in.
pub const FORMATS: [&str; 2] = ["csv", "jsonl"];

/// A planned export: the rows to stream and how many there are.
pub struct Export {
    pub session: Session,
    pub frame: DataFrame,
    pub version: u64,
    pub rows: u64,
}

/// Plans the export of version `version` (the newest when `None`) of `name` with `columns`
/// of `users`, and logs it.
pub async fn export(
    engine: &Engine,
    catalog: &Catalog,
    name: &str,
    version: Option<u64>,
    columns: &[String],
    format: &str,
    actor: &Actor,
) -> Result<Export> {
    if !FORMATS.contains(&format) {
        return Err(Error::invalid(
            "format",
            format!("'{format}' is not csv or jsonl"),
        ));
    }
    let version = pack::resolve_version(catalog, name, version).await?;
    let definition = catalog.definition();
    let users = definition.table("users")?;
    let [mask, hash] = shoal_query::masking::udfs();
    let mut shown: Vec<Expr> = vec![col("member_id").alias("user_id")];
    let mut names: Vec<String> = Vec::new();
    for (i, column) in columns.iter().enumerate() {
        if column == "user_id" || names.contains(column) {
            continue;
        }
        let field = users.field(column).ok_or_else(|| {
            Error::invalid(
                &format!("columns[{i}]"),
                format!("unknown field '{column}' of users"),
            )
        })?;
        let text = || cast(col(column.as_str()), DataType::Utf8);
        let expr = match definition.roles.grant(actor.role, field.sensitivity).export {
            Visibility::Clear => col(column.as_str()),
            Visibility::Masked => mask.call(vec![text()]),
            Visibility::Hashed => hash.call(vec![text()]),
            Visibility::Denied => {
                return Err(Error::Forbidden(format!(
                    "columns[{i}]: role {} may not export the {} field '{column}'",
                    actor.role, field.sensitivity
                )));
            }
        };
        shown.push(expr.alias(column.as_str()));
        names.push(column.clone());
    }
    let members = pack::members(engine, catalog, name, version).await?;
    let session = engine.session(catalog).await?;
    let ctx = session.context();
    let ids = RecordBatch::try_new(
        Arc::new(Schema::new(vec![Field::new(
            "member_id",
            DataType::Int64,
            false,
        )])),
        vec![Arc::new(Int64Array::from_iter_values(
            members.iter().map(i64::from),
        ))],
    )?;
    let mut wanted: Vec<&str> = vec!["user_id"];
    wanted.extend(names.iter().map(String::as_str));
    let table = ctx.table("users").await?.select_columns(&wanted)?;
    let frame = ctx
        .read_batch(ids)?
        .join(table, JoinType::Left, &["member_id"], &["user_id"], None)?
        .select(shown)?
        .sort(vec![col("user_id").sort(true, false)])?;
    store::log_export(
        catalog,
        &ExportLog {
            audience: name,
            version,
            by: &actor.id,
            role: &actor.role.to_string(),
            columns: &names,
            format,
            rows: members.len(),
        },
    )
    .await?;
    Ok(Export {
        session,
        frame,
        version,
        rows: members.len(),
    })
}
