//! Looking into and correcting the identity graph: why identities are one person (the path
//! of links), and removing a wrong link so the person splits again.

use std::collections::{BTreeMap, HashMap, VecDeque};

use chrono::{DateTime, Utc};
use datafusion::prelude::{SessionContext, col, lit};
use serde::Serialize;
use shoal_catalog::{Catalog, CommitNote};

use super::graph::{Graph, key};
use super::{LinkRows, Rules, merges_batch, micros_text};
use crate::columns::{for_each_batch, get, get_int, ints, scan, text};
use crate::error::{Error, Result};

/// One identity of a person and how it is reached from the person's strongest identity.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ExplainedIdentity {
    /// Identity type.
    pub id_type: String,
    /// Identity value.
    pub id_value: String,
    /// First seen (RFC 3339).
    pub first_seen: String,
    /// Where it was first seen.
    pub source: String,
    /// The links from the strongest identity to this one, as `type:value` hops.
    pub path: Vec<String>,
}

/// One link touching a person's identities.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ExplainedLink {
    /// `type:value` of one end.
    pub a: String,
    /// `type:value` of the other end.
    pub b: String,
    /// First seen (RFC 3339).
    pub first_seen: String,
    /// Where it was seen.
    pub source: String,
    /// joined, refused or removed.
    pub status: String,
    /// Why it was refused or removed.
    pub reason: Option<String>,
}

/// Why a person's identities are one person.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Explanation {
    /// The person asked about.
    pub user_id: u32,
    /// Set when that id was merged into another person (the explanation is of that one).
    pub merged_into: Option<u32>,
    /// Every identity, strongest first.
    pub identities: Vec<ExplainedIdentity>,
    /// Every link touching them.
    pub links: Vec<ExplainedLink>,
    /// Merges and splits that involved the person: (kind, from, into, at, reason).
    pub history: Vec<(String, u32, u32, String, String)>,
}

struct Ident {
    ty: u8,
    type_name: String,
    value: String,
    first_seen: i64,
    source: String,
}

struct EdgeRow {
    a: (String, String),
    b: (String, String),
    first_seen: i64,
    source: String,
    status: String,
    reason: Option<String>,
}

async fn identities_of(
    catalog: &Catalog,
    ctx: &SessionContext,
    rules: &Rules,
    user: u32,
) -> Result<Vec<Ident>> {
    let links = catalog.table("identity_links").await?;
    let mut out = Vec::new();
    for_each_batch(
        scan(
            ctx,
            &links,
            &["id_type", "id_value", "first_seen", "source"],
            Some(col("user_id").eq(lit(i64::from(user)))),
        )
        .await?,
        |batch| {
            let (t, v, f, s) = (
                text(batch, "id_type")?,
                text(batch, "id_value")?,
                ints(batch, "first_seen")?,
                text(batch, "source")?,
            );
            for i in 0..batch.num_rows() {
                let type_name = get(&t, i).unwrap_or_default().to_string();
                out.push(Ident {
                    ty: rules.type_of(&type_name).unwrap_or(u8::MAX),
                    type_name,
                    value: get(&v, i).unwrap_or_default().to_string(),
                    first_seen: get_int(&f, i).unwrap_or_default(),
                    source: get(&s, i).unwrap_or_default().to_string(),
                });
            }
            Ok(())
        },
    )
    .await?;
    out.sort_by(|a, b| (a.ty, a.first_seen, &a.value).cmp(&(b.ty, b.first_seen, &b.value)));
    Ok(out)
}

async fn edges_touching(
    catalog: &Catalog,
    ctx: &SessionContext,
    values: &[String],
) -> Result<Vec<EdgeRow>> {
    if values.is_empty() {
        return Ok(Vec::new());
    }
    let edges = catalog.table("identity_edges").await?;
    let list: Vec<_> = values.iter().map(|v| lit(v.clone())).collect();
    let filter = col("a_value")
        .in_list(list.clone(), false)
        .or(col("b_value").in_list(list, false));
    let mut out = Vec::new();
    for_each_batch(
        scan(
            ctx,
            &edges,
            &[
                "a_type",
                "a_value",
                "b_type",
                "b_value",
                "first_seen",
                "source",
                "status",
                "reason",
            ],
            Some(filter),
        )
        .await?,
        |batch| {
            let c = [
                text(batch, "a_type")?,
                text(batch, "a_value")?,
                text(batch, "b_type")?,
                text(batch, "b_value")?,
                text(batch, "source")?,
                text(batch, "status")?,
                text(batch, "reason")?,
            ];
            let first = ints(batch, "first_seen")?;
            let s = |k: usize, i: usize| get(&c[k], i).unwrap_or_default().to_string();
            for i in 0..batch.num_rows() {
                out.push(EdgeRow {
                    a: (s(0, i), s(1, i)),
                    b: (s(2, i), s(3, i)),
                    first_seen: get_int(&first, i).unwrap_or_default(),
                    source: s(4, i),
                    status: s(5, i),
                    reason: get(&c[6], i).map(str::to_string),
                });
            }
            Ok(())
        },
    )
    .await?;
    out.sort_by(|x, y| (x.first_seen, &x.a, &x.b).cmp(&(y.first_seen, &y.a, &y.b)));
    Ok(out)
}

/// One row of `identity_merges`.
#[derive(Debug, Clone)]
pub(crate) struct MergeRow {
    pub kind: String,
    pub from: u32,
    pub into: u32,
    pub at: i64,
    pub reason: String,
}

/// The rows of `identity_merges` where `filter` holds, oldest first.
pub(crate) async fn merge_log(
    catalog: &Catalog,
    ctx: &SessionContext,
    filter: Option<datafusion::prelude::Expr>,
) -> Result<Vec<MergeRow>> {
    let table = catalog.table("identity_merges").await?;
    let mut out = Vec::new();
    for_each_batch(
        scan(
            ctx,
            &table,
            &["kind", "from_user_id", "into_user_id", "at", "reason"],
            filter,
        )
        .await?,
        |batch| {
            let (k, f, t, a, r) = (
                text(batch, "kind")?,
                ints(batch, "from_user_id")?,
                ints(batch, "into_user_id")?,
                ints(batch, "at")?,
                text(batch, "reason")?,
            );
            for i in 0..batch.num_rows() {
                let (Some(from), Some(into)) = (get_int(&f, i), get_int(&t, i)) else {
                    continue;
                };
                out.push(MergeRow {
                    kind: get(&k, i).unwrap_or_default().to_string(),
                    from: u32::try_from(from).map_err(|_| {
                        Error::Internal(format!("identity_merges holds user id {from}"))
                    })?,
                    into: u32::try_from(into).map_err(|_| {
                        Error::Internal(format!("identity_merges holds user id {into}"))
                    })?,
                    at: get_int(&a, i).unwrap_or_default(),
                    reason: get(&r, i).unwrap_or_default().to_string(),
                });
            }
            Ok(())
        },
    )
    .await?;
    out.sort_by_key(|m| (m.at, m.from, m.into));
    Ok(out)
}

/// Explains person `user`: identities, the path of joined links to each, every link touching
/// them (refused and removed too) and the merges and splits involving them.
pub async fn explain(catalog: &Catalog, user: u32) -> Result<Explanation> {
    let rules = Rules::new(catalog.definition());
    let ctx = SessionContext::new();
    let log = merge_log(catalog, &ctx, None).await?;
    let mut current = user;
    let mut merged_into = None;
    // Follow merges (a merged-away id has no identities of its own any more).
    for _ in 0..log.len() + 1 {
        match log
            .iter()
            .find(|m| m.kind == "merge" && m.from == current)
            .map(|m| m.into)
        {
            Some(into) => {
                current = into;
                merged_into = Some(into);
            }
            None => break,
        }
    }
    let identities = identities_of(catalog, &ctx, &rules, current).await?;
    if identities.is_empty() {
        return Err(Error::NotFound(format!(
            "user {user} is not a known person"
        )));
    }
    let values: Vec<String> = identities.iter().map(|i| i.value.clone()).collect();
    let edges = edges_touching(catalog, &ctx, &values).await?;
    let tag = |t: &str, v: &str| format!("{t}:{v}");
    let mine: HashMap<String, usize> = identities
        .iter()
        .enumerate()
        .map(|(i, x)| (tag(&x.type_name, &x.value), i))
        .collect();
    let mut adjacent: Vec<Vec<usize>> = vec![Vec::new(); identities.len()];
    for e in edges.iter().filter(|e| e.status == "joined") {
        if let (Some(&a), Some(&b)) = (
            mine.get(&tag(&e.a.0, &e.a.1)),
            mine.get(&tag(&e.b.0, &e.b.1)),
        ) {
            adjacent[a].push(b);
            adjacent[b].push(a);
        }
    }
    // Breadth-first from the strongest identity: the shortest chain of links to each.
    let mut previous: Vec<Option<usize>> = vec![None; identities.len()];
    let mut reached = vec![false; identities.len()];
    reached[0] = true;
    let mut queue = VecDeque::from([0usize]);
    while let Some(n) = queue.pop_front() {
        for &m in &adjacent[n] {
            if !reached[m] {
                reached[m] = true;
                previous[m] = Some(n);
                queue.push_back(m);
            }
        }
    }
    let explained = identities
        .iter()
        .enumerate()
        .map(|(i, x)| {
            let mut path = Vec::new();
            if reached[i] {
                let mut at = Some(i);
                while let Some(n) = at {
                    path.push(tag(&identities[n].type_name, &identities[n].value));
                    at = previous[n];
                }
                path.reverse();
            }
            ExplainedIdentity {
                id_type: x.type_name.clone(),
                id_value: x.value.clone(),
                first_seen: micros_text(x.first_seen),
                source: x.source.clone(),
                path,
            }
        })
        .collect();
    let history = log
        .iter()
        .filter(|m| [current, user].iter().any(|u| m.from == *u || m.into == *u))
        .map(|m| {
            (
                m.kind.clone(),
                m.from,
                m.into,
                micros_text(m.at),
                m.reason.clone(),
            )
        })
        .collect();
    Ok(Explanation {
        user_id: user,
        merged_into,
        identities: explained,
        links: edges
            .iter()
            .map(|e| ExplainedLink {
                a: tag(&e.a.0, &e.a.1),
                b: tag(&e.b.0, &e.b.1),
                first_seen: micros_text(e.first_seen),
                source: e.source.clone(),
                status: e.status.clone(),
                reason: e.reason.clone(),
            })
            .collect(),
        history,
    })
}

/// What removing a link did.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct UnlinkReport {
    /// The person the link was in.
    pub user_id: u32,
    /// New people split off (empty when other links still join both ends).
    pub split_into: Vec<u32>,
    /// Identities that moved to each new person.
    pub moved: BTreeMap<u32, Vec<String>>,
}

/// Removes the joined link between identities `a` and `b` (`(type, value)`), splitting the
/// person when nothing else joins the two sides: the side with the strongest identity keeps
/// the id, every other side gets a new one, logged as a split. The next build moves their
/// events and orders.
pub async fn unlink(
    catalog: &Catalog,
    a: (&str, &str),
    b: (&str, &str),
    why: &str,
    now: DateTime<Utc>,
) -> Result<UnlinkReport> {
    let rules = Rules::new(catalog.definition());
    for (t, _) in [a, b] {
        if rules.type_of(t).is_none() {
            return Err(Error::InvalidOptions(format!(
                "'{t}' is not an identity type; the catalog knows {}",
                rules
                    .types
                    .iter()
                    .map(|t| t.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
    }
    let ctx = SessionContext::new();
    let links_table = catalog.table("identity_links").await?;
    let mut owner = None;
    for_each_batch(
        scan(
            &ctx,
            &links_table,
            &["user_id"],
            Some(
                col("id_type")
                    .eq(lit(a.0))
                    .and(col("id_value").eq(lit(a.1))),
            ),
        )
        .await?,
        |batch| {
            let users = ints(batch, "user_id")?;
            if batch.num_rows() > 0 {
                owner = get_int(&users, 0).map(|u| u as u32);
            }
            Ok(())
        },
    )
    .await?;
    let user =
        owner.ok_or_else(|| Error::NotFound(format!("identity {}:{} is unknown", a.0, a.1)))?;
    let identities = identities_of(catalog, &ctx, &rules, user).await?;
    let values: Vec<String> = identities.iter().map(|i| i.value.clone()).collect();
    let edges = edges_touching(catalog, &ctx, &values).await?;
    let is_target = |e: &EdgeRow| {
        let (ea, eb) = (
            (e.a.0.as_str(), e.a.1.as_str()),
            (e.b.0.as_str(), e.b.1.as_str()),
        );
        (ea == a && eb == b) || (ea == b && eb == a)
    };
    let Some(target) = edges.iter().find(|e| is_target(e) && e.status == "joined") else {
        return Err(Error::NotFound(format!(
            "no joined link between {}:{} and {}:{}",
            a.0, a.1, b.0, b.1
        )));
    };

    // Rebuild the person without the link, applying the remaining links in their order.
    let mut graph = Graph::new(rules.graph_rules());
    for x in &identities {
        graph.node(x.ty, key(x.ty, &x.value));
    }
    for e in edges
        .iter()
        .filter(|e| e.status == "joined" && !is_target(e))
    {
        let (Some(ta), Some(tb)) = (rules.type_of(&e.a.0), rules.type_of(&e.b.0)) else {
            continue;
        };
        let (Some(na), Some(nb)) = (
            graph.find_key(key(ta, &e.a.1)),
            graph.find_key(key(tb, &e.b.1)),
        ) else {
            continue;
        };
        // Links joined under the same rules join again; a refusal keeps the sides apart.
        let _ = graph.link(na, nb);
    }
    // Components in the order of their strongest identity; the first keeps the id.
    let mut component_of: Vec<(u32, usize)> = Vec::new();
    let mut order: Vec<u32> = Vec::new();
    for (i, x) in identities.iter().enumerate() {
        let Some(n) = graph.find_key(key(x.ty, &x.value)) else {
            continue;
        };
        let root = graph.find(n);
        if !order.contains(&root) {
            order.push(root);
        }
        component_of.push((root, i));
    }
    let mut report = UnlinkReport {
        user_id: user,
        split_into: Vec::new(),
        moved: BTreeMap::new(),
    };
    let mut link_rows = LinkRows::default();
    if order.len() > 1 {
        let next = highest_user(catalog, &ctx).await? + 1;
        for (offset, root) in order[1..].iter().enumerate() {
            let new_user = next + offset as u32;
            report.split_into.push(new_user);
            for (r, i) in &component_of {
                if r == root {
                    let x = &identities[*i];
                    link_rows.push(&x.type_name, &x.value, new_user, x.first_seen, &x.source);
                    report
                        .moved
                        .entry(new_user)
                        .or_default()
                        .push(format!("{}:{}", x.type_name, x.value));
                }
            }
        }
    }

    let note = CommitNote::new("operation", "identity unlink");
    let mut edges_table = catalog.table("identity_edges").await?;
    let mut removed = super::EdgeRows::default();
    removed.push(
        &target.a.0,
        &target.a.1,
        &target.b.0,
        &target.b.1,
        target.first_seen,
        &target.source,
        "removed",
        Some(&format!("removed by hand: {why}")),
    );
    edges_table
        .merge(
            vec![removed.batch()?],
            &["a_type", "a_value", "b_type", "b_value"],
            note.clone(),
        )
        .await?;
    if !report.split_into.is_empty() {
        let splits: Vec<(u32, u32)> = report.split_into.iter().map(|n| (user, *n)).collect();
        let reason = format!(
            "link {}:{} — {}:{} removed: {why}",
            target.a.0, target.a.1, target.b.0, target.b.1
        );
        let mut merges = catalog.table("identity_merges").await?;
        merges
            .append(
                vec![merges_batch(&splits, "split", now, |_| reason.clone())?],
                note.clone(),
            )
            .await?;
        let mut links_table = links_table;
        links_table
            .merge(vec![link_rows.batch()?], &["id_type", "id_value"], note)
            .await?;
    }
    Ok(report)
}

/// The highest user id ever used (people, merged-away and split-off ids).
pub(crate) async fn highest_user(catalog: &Catalog, ctx: &SessionContext) -> Result<u32> {
    let mut highest = 0i64;
    for (table, columns) in [
        ("identity_links", vec!["user_id"]),
        ("identity_merges", vec!["from_user_id", "into_user_id"]),
    ] {
        let t = catalog.table(table).await?;
        let frame = ctx.read_table(t.provider().await?)?;
        let aggregates: Vec<_> = columns
            .iter()
            .map(|c| datafusion::functions_aggregate::expr_fn::max(col(*c)).alias(*c))
            .collect();
        let batches = frame.aggregate(vec![], aggregates)?.collect().await?;
        for batch in &batches {
            for c in &columns {
                let values = ints(batch, c)?;
                if let Some(v) = get_int(&values, 0) {
                    highest = highest.max(v);
                }
            }
        }
    }
    u32::try_from(highest).map_err(|_| Error::Internal(format!("user id {highest} above u32")))
}
