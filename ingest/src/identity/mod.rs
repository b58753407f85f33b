//! Identity merge over the warehouse: links from events and orders, one person per
//! connected group of identities (under the catalog's rules), one dense `u32` id per person.
//!
//! A run reads what is stored (`identity_links`: every identity and its person), then the
//! events and orders that have no person yet (`user_id` is null until a build resolves it),
//! draws links between the identities seen together (a star around the strongest one), and
//! applies them in a fixed order — first seen, then the identities — so the same input gives
//! the same ids however it was batched. It writes the links it drew (`identity_edges`, joined
//! or refused with the reason), the merges of existing people (`identity_merges`, the lower id
//! survives) and the identities' people (`identity_links`). Each write is idempotent: a run cut
//! short is completed by the next one.

pub mod graph;
mod index;
mod manage;
mod saved;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use arrow::array::{ArrayRef, Int64Array, RecordBatch, StringBuilder, TimestampMicrosecondArray};
use chrono::{DateTime, Utc};
use datafusion::prelude::{SessionContext, col};
use serde::Serialize;
use serde_json::Value;
use shoal_catalog::{Catalog, CatalogDefinition, CommitNote, IdentityType};

use crate::columns::{for_each_batch, get, get_int, ints, scan, text, text_array};
use crate::error::{Error, Result};
pub use graph::{
    Graph, Key, KeyMap, Link, NO_USER, Outcome, Resolution, TypeRule, key, merged, sorted_runs,
};
pub(crate) use manage::merge_log;
pub use manage::{ExplainedIdentity, ExplainedLink, Explanation, UnlinkReport, explain, unlink};

/// The catalog's identity rules, indexed for a run.
#[derive(Debug, Clone)]
pub struct Rules {
    /// Types in priority order.
    pub types: Vec<IdentityType>,
    event_columns: Vec<(String, u8)>,
    traits: HashMap<String, u8>,
    alias: Option<u8>,
    order_columns: Vec<(String, Option<String>, u8)>,
}

impl Rules {
    /// The rules of `definition`.
    pub fn new(definition: &CatalogDefinition) -> Rules {
        let types = definition.identity.types.clone();
        let mut rules = Rules {
            types: types.clone(),
            event_columns: Vec::new(),
            traits: HashMap::new(),
            alias: None,
            order_columns: Vec::new(),
        };
        for (i, t) in types.iter().enumerate() {
            let ty = i as u8;
            if let Some(c) = &t.event_column {
                rules.event_columns.push((c.clone(), ty));
            }
            for k in &t.traits {
                rules.traits.entry(k.clone()).or_insert(ty);
            }
            if t.alias_previous_id && rules.alias.is_none() {
                rules.alias = Some(ty);
            }
            if let Some(c) = &t.order_column {
                rules
                    .order_columns
                    .push((c.clone(), t.platform.clone(), ty));
            }
        }
        rules
    }

    /// The graph rules (cap and joins per type).
    pub fn graph_rules(&self) -> Vec<TypeRule> {
        self.types
            .iter()
            .map(|t| TypeRule {
                name: t.name.clone(),
                cap: t.cap,
                joins: t.joins,
            })
            .collect()
    }

    /// Type number of `name`.
    pub fn type_of(&self, name: &str) -> Option<u8> {
        self.types
            .iter()
            .position(|t| t.name == name)
            .map(|i| i as u8)
    }

    /// Name of type number `ty`.
    pub fn name(&self, ty: u8) -> &str {
        self.types
            .get(ty as usize)
            .map(|t| t.name.as_str())
            .unwrap_or("unknown")
    }

    /// Columns of `events` that hold identities, with their types, strongest first.
    pub fn event_columns(&self) -> &[(String, u8)] {
        &self.event_columns
    }

    /// Columns of `orders` that hold identities: (column, platform it applies to, type).
    pub fn order_columns(&self) -> &[(String, Option<String>, u8)] {
        &self.order_columns
    }
}

/// What a merge run did.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct MergeReport {
    /// Identities stored before the run.
    pub identities_before: u64,
    /// Identities seen for the first time.
    pub identities_new: u64,
    /// Events and orders read (those without a person yet).
    pub rows_read: u64,
    /// Distinct new links drawn between identities.
    pub links_seen: u64,
    /// Links that joined two people.
    pub links_joined: u64,
    /// Links refused by a rule, by reason.
    pub links_refused: BTreeMap<String, u64>,
    /// People who got a new id.
    pub people_new: u64,
    /// Existing people merged into another.
    pub people_merged: u64,
    /// Where the stored identities came from: `index`, the state the previous run saved
    /// (`identity_links/_shoal/identities`), or `tables`, `identity_links` and the settled
    /// links of `identity_edges`.
    pub stored_from: &'static str,
}

/// The identity state after a run: every identity's person, in memory, for the build.
pub struct Resolved {
    /// The rules used.
    pub rules: Rules,
    graph: Arc<Graph>,
    user_of: Arc<Vec<u32>>,
    /// Every merge of this run: absorbed user → surviving user.
    pub merged: HashMap<u32, u32>,
}

impl Resolved {
    /// The person of identity `value` of type number `ty`.
    pub fn user(&self, ty: u8, value: &str) -> Option<u32> {
        self.graph
            .find_key(key(ty, value))
            .map(|n| self.user_of[n as usize])
            .filter(|u| *u != NO_USER)
    }

    /// Number of identities known.
    pub fn identities(&self) -> usize {
        self.graph.len()
    }
}

/// An identity seen in this run's rows (32 bytes: millions are held at once).
struct Seen {
    /// The time of its first sighting, when it is new (see `source`).
    at: i64,
    /// The source of its first sighting; [`NOT_NEW`] while it is stored or not yet sighted
    /// as new.
    source: u16,
    ty: u8,
    name: Box<str>,
}

/// The source number of a [`Seen`] without a first sighting.
const NOT_NEW: u16 = u16::MAX;

impl Seen {
    /// Its first sighting (time, source) when it is new, not stored.
    fn first(&self) -> Option<(i64, u16)> {
        (self.source != NOT_NEW).then_some((self.at, self.source))
    }
}

/// Parts each map of a shard is split in (by bits of the key that neither the shard nor the
/// map's hash use). Each part grows on its own: a map never holds its old and new tables
/// whole at once, and the table a part leaves is taken by the next part to grow, where one
/// large map would take fresh pages for every doubling.
const PARTS: usize = 64;

fn part_of(k: Key) -> usize {
    (k >> 96) as usize & (PARTS - 1)
}

/// A map of identity keys (or pairs of them) split in [`PARTS`].
struct Parted<K, V> {
    parts: Vec<HashMap<K, V, std::hash::BuildHasherDefault<graph::KeyHasher>>>,
}

impl<K: std::hash::Hash + Eq, V> Default for Parted<K, V> {
    fn default() -> Self {
        Parted {
            parts: (0..PARTS).map(|_| HashMap::default()).collect(),
        }
    }
}

impl<K: std::hash::Hash + Eq, V> Parted<K, V> {
    /// The part of `part_key`'s entries.
    fn part(
        &mut self,
        part_key: Key,
    ) -> &mut HashMap<K, V, std::hash::BuildHasherDefault<graph::KeyHasher>> {
        &mut self.parts[part_of(part_key)]
    }

    fn get(&self, part_key: Key, k: &K) -> Option<&V> {
        self.parts[part_of(part_key)].get(k)
    }

    fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.parts.iter().flat_map(|p| p.iter())
    }
}

/// The identities seen in this run's rows and the links drawn between them, in shards by
/// key: several threads fold the same rows at once, each into its own shard. What a shard
/// ends up holding does not depend on the order rows come in (the earliest sighting wins).
struct Observed {
    shards: Vec<Shard>,
    sources: Vec<String>,
    rows: u64,
}

/// The identities of one shard, and the links drawn to them.
#[derive(Default)]
struct Shard {
    seen: Parted<Key, Seen>,
    /// Links drawn (centre, other), kept in the other's shard (and part): first sighting and
    /// the two types.
    edges: Parted<(Key, Key), Drawn>,
}

/// The shard of identity `k` among `count`: by bits of the key that the maps' hashes leave
/// out, so each shard's map still spreads its keys.
fn shard_of(k: Key, count: usize) -> usize {
    ((k >> 64) as u64 % count as u64) as usize
}

/// A link drawn: when and where first seen, and its ends' types (16 bytes).
#[derive(Clone, Copy)]
struct Drawn {
    at: i64,
    source: u16,
    types: (u8, u8),
}

impl Drawn {
    /// Its first sighting (time, source).
    fn sighting(&self) -> (i64, u16) {
        (self.at, self.source)
    }
}

/// Whether sighting `a` comes before `b`: by time, then by source name (so ties do not
/// depend on the order rows were read in).
fn earlier(a: (i64, u16), b: (i64, u16), sources: &[String]) -> bool {
    a.0 < b.0 || (a.0 == b.0 && sources[a.1 as usize] < sources[b.1 as usize])
}

/// One row's identities (sorted and without repeats) seen together at `sighting`, folded
/// into `shard` (number `index` of `count`): each of its identities is looked up in the
/// graph and among those seen, and drawn towards the row's first (the strongest).
fn fold_row(
    shard: &mut Shard,
    (index, count): (usize, usize),
    graph: &Graph,
    sources: &[String],
    ids: &[(u8, Key, &str)],
    sighting: (i64, u16),
) {
    let mut centre: Option<(u8, Key, Option<u32>)> = None;
    for &(ty, k, value) in ids {
        let mine = shard_of(k, count) == index;
        if centre.is_some() && !mine {
            continue;
        }
        let node = graph.find_key(k);
        if mine {
            let seen = shard.seen.part(k).entry(k).or_insert_with(|| Seen {
                at: 0,
                source: NOT_NEW,
                ty,
                name: Box::from(value),
            });
            if node.is_none()
                && seen
                    .first()
                    .is_none_or(|first| earlier(sighting, first, sources))
            {
                (seen.at, seen.source) = sighting;
            }
        }
        let Some((c_ty, c, c_node)) = centre else {
            centre = Some((ty, k, node));
            continue;
        };
        if let (Some(a), Some(b)) = (c_node, node)
            && graph.root(a) == graph.root(b)
        {
            continue;
        }
        let entry = shard.edges.part(k).entry((c, k)).or_insert(Drawn {
            at: sighting.0,
            source: sighting.1,
            types: (c_ty, ty),
        });
        if earlier(sighting, entry.sighting(), sources) {
            (entry.at, entry.source) = sighting;
        }
    }
}

/// A row's identities in the order [`fold_row`] takes them: sorted, without repeats.
fn order_ids(ids: &mut Vec<(u8, Key, &str)>) {
    ids.sort_unstable_by_key(|(ty, k, _)| (*ty, *k));
    ids.dedup_by_key(|(_, k, _)| *k);
}

impl Observed {
    /// Nothing seen yet, in `shards` shards.
    fn new(shards: usize) -> Observed {
        Observed {
            shards: (0..shards.max(1)).map(|_| Shard::default()).collect(),
            sources: Vec::new(),
            rows: 0,
        }
    }

    fn source(&mut self, name: &str) -> u16 {
        match self.sources.iter().position(|s| s == name) {
            Some(i) => i as u16,
            None => {
                self.sources.push(name.to_string());
                (self.sources.len() - 1) as u16
            }
        }
    }

    /// Identity `k`, if it was seen.
    fn seen(&self, k: &Key) -> Option<&Seen> {
        self.shards[shard_of(*k, self.shards.len())].seen.get(*k, k)
    }

    /// The value of identity `k` ("" if it was not seen).
    fn name(&self, k: &Key) -> &str {
        self.seen(k).map_or("", |s| &s.name)
    }

    /// Every identity seen, with its key.
    fn all_seen(&self) -> impl Iterator<Item = (&Key, &Seen)> {
        self.shards.iter().flat_map(|s| s.seen.iter())
    }

    /// Every link drawn.
    fn edges(&self) -> impl Iterator<Item = (&(Key, Key), &Drawn)> {
        self.shards.iter().flat_map(|s| s.edges.iter())
    }

    /// One row's identities seen together at `at`, folded into every shard on this thread.
    fn group(&mut self, graph: &Graph, ids: &mut Vec<(u8, Key, &str)>, at: i64, source: u16) {
        self.rows += 1;
        order_ids(ids);
        let count = self.shards.len();
        for (index, shard) in self.shards.iter_mut().enumerate() {
            fold_row(
                shard,
                (index, count),
                graph,
                &self.sources,
                ids,
                (at, source),
            );
        }
    }
}

/// Stored identities of a batch of `identity_links`: the type number, key and user of each
/// row whose type the catalog still links, added to `out`.
fn stored_identities(
    batch: &RecordBatch,
    rules: &Rules,
    out: &mut (Vec<u8>, Vec<Key>, Vec<u32>),
) -> Result<()> {
    let (types, values, users) = (
        text(batch, "id_type")?,
        text(batch, "id_value")?,
        ints(batch, "user_id")?,
    );
    out.0.reserve(batch.num_rows());
    out.1.reserve(batch.num_rows());
    out.2.reserve(batch.num_rows());
    let mut last: Option<(&str, Option<u8>)> = None;
    for i in 0..batch.num_rows() {
        let (Some(t), Some(v), Some(u)) = (get(&types, i), get(&values, i), get_int(&users, i))
        else {
            continue;
        };
        // A type dropped from the catalog keeps its people but no longer links.
        let ty = match last {
            Some((name, ty)) if name == t => ty,
            _ => rules.type_of(t),
        };
        last = Some((t, ty));
        let Some(ty) = ty else { continue };
        let user = u32::try_from(u)
            .map_err(|_| Error::Internal(format!("identity_links holds user id {u}, not a u32")))?;
        out.0.push(ty);
        out.1.push(key(ty, v));
        out.2.push(user);
    }
    Ok(())
}

/// The version of `table` and the time (milliseconds) of `last`, its newest commit.
fn stamp_of(table: &shoal_catalog::Table, last: Option<&shoal_catalog::Commit>) -> (u64, i64) {
    let at = last
        .and_then(|c| c.timestamp)
        .map_or(-1, |t| t.timestamp_millis());
    (table.version(), at)
}

/// Every stored identity of a type the catalog still links: type numbers, keys and users.
/// The files are decoded side by side, each batch hashed on the thread that decoded it, and
/// laid end to end in the files' order.
async fn stored_identities_of(
    links_table: &shoal_catalog::Table,
    rules: &Rules,
) -> Result<(Vec<u8>, Vec<Key>, Vec<u32>)> {
    let files = links_table.data_files()?;
    let expected: u64 = files.iter().filter_map(|f| f.rows).sum();
    let mut stored = (
        Vec::with_capacity(expected as usize),
        Vec::with_capacity(expected as usize),
        Vec::with_capacity(expected as usize),
    );
    let hashing = rules.clone();
    links_table
        .read_files_mapped(
            &files,
            Some(&["id_type", "id_value", "user_id"]),
            Arc::new(move |batch| {
                let mut out = (Vec::new(), Vec::new(), Vec::new());
                stored_identities(&batch, &hashing, &mut out)
                    .map_err(|e| shoal_catalog::Error::Internal(e.to_string()))?;
                Ok(out)
            }),
            |_, (kinds, keys, owners)| {
                stored.0.extend_from_slice(&kinds);
                stored.1.extend_from_slice(&keys);
                stored.2.extend_from_slice(&owners);
                Ok(())
            },
        )
        .await?;
    Ok(stored)
}

/// The links of `identity_edges` never drawn again: refused or removed, a few among millions,
/// so the other columns are decoded for their rows alone.
async fn settled_links(
    edges_table: &shoal_catalog::Table,
    rules: &Rules,
) -> Result<saved::Settled> {
    let mut settled = saved::Settled::default();
    let settled_only: shoal_catalog::RowTest = Arc::new(|batch: &RecordBatch| {
        let status = arrow::compute::cast(batch.column(0), &arrow::datatypes::DataType::Utf8)?;
        let status = status
            .as_any()
            .downcast_ref::<arrow::array::StringArray>()
            .ok_or_else(|| {
                arrow::error::ArrowError::CastError("identity_edges.status is not text".into())
            })?;
        Ok(status
            .iter()
            .map(|s| Some(matches!(s, Some("refused" | "removed"))))
            .collect())
    });
    let edge_files = edges_table.data_files()?;
    let column = |batch: &RecordBatch, name: &str| {
        text(batch, name).map_err(|e| shoal_catalog::Error::Internal(e.to_string()))
    };
    edges_table
        .read_files_where(
            &edge_files,
            Some(&["a_type", "a_value", "b_type", "b_value"]),
            "status",
            settled_only,
            |_, batch| {
                let (at, av) = (column(&batch, "a_type")?, column(&batch, "a_value")?);
                let (bt, bv) = (column(&batch, "b_type")?, column(&batch, "b_value")?);
                for i in 0..batch.num_rows() {
                    let (Some(at), Some(av), Some(bt), Some(bv)) =
                        (get(&at, i), get(&av, i), get(&bt, i), get(&bv, i))
                    else {
                        continue;
                    };
                    if let (Some(a), Some(b)) = (rules.type_of(at), rules.type_of(bt)) {
                        let (ka, kb) = (key(a, av), key(b, bv));
                        settled.insert((ka.min(kb), ka.max(kb)));
                    }
                }
                Ok(())
            },
        )
        .await?;
    Ok(settled)
}

/// Runs identity merge: reads stored identities and the events and orders without a person,
/// applies the new links, and writes `identity_edges`, `identity_merges`, `identity_links`.
/// The state it leaves is saved on a task of its own (see [`Saving`]), for the next run to
/// load instead of the tables. `seconds` hears how long each part took, counted from the
/// start (`identity.read` when the tables are read, `identity.links`, `identity.loaded`,
/// `identity.observed`, `identity.linked`, `identity.edges`, `identity.written`).
pub async fn merge_identities(
    catalog: &Catalog,
    now: DateTime<Utc>,
    seconds: &mut BTreeMap<String, f64>,
) -> Result<(Resolved, MergeReport, Saving)> {
    let clock = std::time::Instant::now();
    let mut lap = |name: &str| {
        seconds.insert(format!("identity.{name}"), clock.elapsed().as_secs_f64());
    };
    let rules = Rules::new(catalog.definition());
    let mut graph = Graph::new(rules.graph_rules());
    let ctx = SessionContext::new();
    let mut report = MergeReport::default();

    // Stored state: every identity with its person, indexed at once, and the settled links.
    let mut links_table = catalog.table("identity_links").await?;
    let mut edges_table = catalog.table("identity_edges").await?;
    let links_last = links_table.history(Some(1)).await?.into_iter().next();
    let stamp = saved::Stamp {
        types: rules.types.iter().map(|t| t.name.clone()).collect(),
        links: stamp_of(&links_table, links_last.as_ref()),
        edges: stamp_of(&edges_table, edges_table.history(Some(1)).await?.first()),
    };
    let loaded = saved::load(&links_table, &stamp)
        .await
        .inspect_err(|reason| tracing::info!("the saved identity state is not used: {reason}"))
        .ok()
        .flatten();
    let mut settled = saved::Settled::default();
    // How the state read was saved (its columns emptied), when it was.
    let mut chain = None;
    match loaded {
        Some(mut state) => {
            report.stored_from = "index";
            report.identities_before = state.keys.len() as u64;
            graph.reserve(state.keys.len());
            graph.add_existing_many(&state.kinds, &state.keys, &state.users);
            settled.extend(std::mem::take(&mut state.settled));
            (state.kinds, state.keys, state.users) = Default::default();
            chain = Some(state);
            lap("links");
        }
        None => {
            report.stored_from = "tables";
            let identities = stored_identities_of(&links_table, &rules).await?;
            report.identities_before = identities.1.len() as u64;
            lap("read");
            let (kinds, keys, owners) = identities;
            graph.reserve(keys.len());
            graph.add_existing_many(&kinds, &keys, &owners);
            drop((kinds, keys, owners));
            lap("links");
            settled = settled_links(&edges_table, &rules).await?;
        }
    }
    let mut recorded_merges = HashSet::new();
    for m in manage::merge_log(catalog, &ctx, None).await? {
        graph.reserve_user(m.from);
        graph.reserve_user(m.into);
        if m.kind == "merge" {
            recorded_merges.insert((m.from, m.into));
        }
    }
    // Each run records in its `identity_links` commit the version of `identity_edges` it left;
    // any other version means a run wrote edges and stopped before its links.
    // No edges stored (a first run) is as good: none can be drawn twice.
    let edges_finished = edges_table.data_files()?.is_empty()
        || links_last
            .as_ref()
            .and_then(|c| c.metadata.get("shoal.edges_version"))
            .and_then(|v| v.as_u64())
            == Some(edges_table.version());

    lap("loaded");

    // New observations.
    let mut observed = Observed::new(observing_threads());
    observe_events(catalog, &rules, &mut graph, &mut observed).await?;
    observe_orders(catalog, &ctx, &rules, &graph, &mut observed).await?;
    report.rows_read = observed.rows;
    lap("observed");

    // New identities become nodes in the order they were first seen.
    // Each with its first sighting and value, taken in one walk over the shards, so writing
    // them looks nothing up.
    let mut fresh: Vec<((i64, u8, Key), u16, &str)> = observed
        .all_seen()
        .filter_map(|(k, s)| {
            s.first()
                .map(|(at, source)| ((at, s.ty, *k), source, s.name.as_ref()))
        })
        .collect();
    fresh.sort_unstable_by_key(|(order, ..)| *order);
    graph.reserve(fresh.len());
    let (kinds, keys): (Vec<u8>, Vec<Key>) = fresh.iter().map(|((_, ty, k), ..)| (*ty, *k)).unzip();
    let fresh_nodes = graph.nodes(&kinds, &keys);
    drop((kinds, keys));
    report.identities_new = fresh.len() as u64;

    let links: Vec<(Link, u16, Key, Key)> = observed
        .edges()
        .filter(|((a, b), _)| !settled.contains(&((*a).min(*b), (*a).max(*b))))
        .filter_map(|((a, b), drawn)| {
            let (na, nb) = (graph.find_key(*a)?, graph.find_key(*b)?);
            let ((at, source), (ta, tb)) = (drawn.sighting(), drawn.types);
            Some((Link::new(at, (ta, *a, na), (tb, *b, nb)), source, *a, *b))
        })
        .collect();
    report.links_seen = links.len() as u64;
    let links = graph::sorted_runs(links);

    // Each link applied (not already joined), with its status and reason: written as rows of
    // `identity_edges` on every core once all are applied.
    let mut applied: Vec<Applied> = Vec::new();
    let mut newly_settled = Vec::new();
    let mut merge_reasons: HashMap<u32, String> = HashMap::new();
    graph.link_each(
        graph::merged(&links),
        |(link, ..)| (link.a, link.b),
        |graph, (link, source, key_a, key_b)| {
            let item = (link, *source, *key_a, *key_b);
            let (a, b) = (link.a, link.b);
            let (ua, ub) = (graph.root_user(a), graph.root_user(b));
            let outcome = graph.link(a, b);
            let (status, reason) = match &outcome {
                Outcome::Already => return,
                Outcome::Joined => {
                    report.links_joined += 1;
                    if ua != NO_USER && ub != NO_USER && ua != ub {
                        merge_reasons.entry(ua.max(ub)).or_insert_with(|| {
                            format!(
                                "link {} — {} first seen {}",
                                rules.name(link.a_type()),
                                rules.name(link.b_type()),
                                micros_text(link.at())
                            )
                        });
                    }
                    ("joined", None)
                }
                Outcome::Refused(reason) => {
                    let kind = reason.split(" (").next().unwrap_or(reason).to_string();
                    *report.links_refused.entry(kind).or_insert(0) += 1;
                    let pair = ((*key_a).min(*key_b), (*key_a).max(*key_b));
                    settled.insert(pair);
                    newly_settled.push(pair);
                    ("refused", Some(reason.clone()))
                }
            };
            applied.push((item, status, reason));
        },
    );
    let before_max = graph.max_user();
    let resolution = graph.finish();
    report.people_new = u64::from(resolution.next_user - before_max.map_or(1, |m| m + 1));
    report.people_merged = resolution.merges.len() as u64;
    lap("linked");

    // Writes, each idempotent, in an order that a later run can complete.
    let note = CommitNote::new("operation", "identity merge");
    let edges_written = !applied.is_empty();
    if edges_written && edges_finished {
        // Edges stored are never drawn again (their identities are joined, or the edge is
        // settled), so the new ones are appended.
        edges_table
            .append(edge_batches(&applied, &observed, &rules)?, note.clone())
            .await?;
    } else if edges_written {
        // A run stopped between its edges and its links: this one draws those edges again.
        edges_table
            .merge(
                edge_batches(&applied, &observed, &rules)?,
                &["a_type", "a_value", "b_type", "b_value"],
                note.clone(),
            )
            .await?;
    }
    lap("edges");
    let new_merges: Vec<(u32, u32)> = resolution
        .merges
        .iter()
        .copied()
        .filter(|m| !recorded_merges.contains(m))
        .collect();
    if !new_merges.is_empty() {
        let mut merges_table = catalog.table("identity_merges").await?;
        merges_table
            .append(
                vec![merges_batch(&new_merges, "merge", now, |from| {
                    merge_reasons
                        .get(&from)
                        .cloned()
                        .unwrap_or_else(|| "joined with people merged in the same run".into())
                })?],
                note.clone(),
            )
            .await?;
    }
    let link_rows = link_batches(
        &fresh,
        &fresh_nodes,
        &resolution.user_of,
        &rules,
        &observed.sources,
    )?;
    let merged: HashMap<u32, u32> = resolution.merges.iter().copied().collect();
    let froms: HashSet<i64> = merged.keys().map(|u| i64::from(*u)).collect();
    let links_written = !fresh.is_empty() || !froms.is_empty();
    if links_written {
        // New identities are added and the files holding people merged away are rewritten
        // with their new ids, in one commit that records the edges this run left behind.
        let added = link_rows;
        let note = note.with("edges_version", edges_table.version());
        links_table
            .rewrite_rows(
                "user_id",
                &froms,
                |batch| {
                    remap_users(&batch, &merged)
                        .map_err(|e| shoal_catalog::Error::Internal(e.to_string()))
                },
                added,
                note,
            )
            .await?;
    }
    lap("written");
    // The state this run leaves is saved for the next while the build goes on: as a change
    // after the state it read, or whole.
    let change = match &chain {
        Some(chain) if !chain.due_for_base(fresh.len()) => {
            let identities: Vec<(Key, u32, u8)> = fresh
                .iter()
                .zip(&fresh_nodes)
                .map(|(((_, ty, key), ..), node)| (*key, resolution.user_of[*node as usize], *ty))
                .collect();
            Some((chain.changes + 1, identities, resolution.merges.clone()))
        }
        _ => None,
    };
    // The versions the tables reach by this run's commits alone (a table grows one version a
    // commit).
    let reached = (
        stamp.links.0 + u64::from(links_written),
        stamp.edges.0 + u64::from(edges_written),
    );
    let (graph, user_of) = (Arc::new(graph), Arc::new(resolution.user_of));
    let saving = {
        let (graph, user_of) = (graph.clone(), user_of.clone());
        tokio::spawn(async move {
            let after = saved::Stamp {
                types: stamp.types.clone(),
                links: stamp_of(&links_table, links_table.history(Some(1)).await?.first()),
                edges: stamp_of(&edges_table, edges_table.history(Some(1)).await?.first()),
            };
            if (after.links.0, after.edges.0) != reached {
                // Another process committed between this run's reads and its commits: the
                // graph does not hold what it wrote. Nothing is saved, and the next run,
                // finding no state for the tables, reads them.
                tracing::info!(
                    "identity state not saved: the tables moved past this run's commits \
                     ({after:?}, expected versions {reached:?})"
                );
                return Ok(());
            }
            let (name, bytes) = match change {
                // Nothing written: the state read still stands.
                Some(_) if after == stamp => return Ok(()),
                Some((k, identities, merges)) => (
                    saved::part_name(k),
                    saved::encode_change(&stamp, &after, &identities, &merges, &newly_settled),
                ),
                None => {
                    let bytes = tokio::task::spawn_blocking(move || {
                        saved::encode_base(&after, &graph, &user_of, &settled)
                    })
                    .await
                    .map_err(|e| Error::Internal(format!("saving the identity state: {e}")))?;
                    (saved::part_name(0), bytes)
                }
            };
            links_table.write_derived(&name, bytes).await?;
            Ok(())
        })
    };
    Ok((
        Resolved {
            rules,
            graph,
            user_of,
            merged,
        },
        report,
        Saving(saving),
    ))
}

/// The identity state a run is saving for the next (see `saved`).
pub struct Saving(tokio::task::JoinHandle<Result<()>>);

impl Saving {
    /// Waits until the state is saved. A state that could not be saved only makes the next
    /// run read the tables: the reason is logged, not returned.
    pub async fn finish(self) {
        let failed = match self.0.await {
            Ok(Ok(())) => return,
            Ok(Err(e)) => e.to_string(),
            Err(e) => e.to_string(),
        };
        tracing::warn!(
            "the identity state was not saved, the next build reads the tables: {failed}"
        );
    }
}

/// `batch` with its `user_id` of every person merged away replaced by the person they joined.
fn remap_users(batch: &RecordBatch, merged: &HashMap<u32, u32>) -> Result<RecordBatch> {
    let users = ints(batch, "user_id")?;
    let remapped: Int64Array = users
        .iter()
        .map(|u| {
            u.map(
                |u| match u32::try_from(u).ok().and_then(|u| merged.get(&u)) {
                    Some(into) => i64::from(*into),
                    None => u,
                },
            )
        })
        .collect();
    let at = batch.schema().index_of("user_id")?;
    let mut columns = batch.columns().to_vec();
    columns[at] = Arc::new(remapped);
    Ok(RecordBatch::try_new(batch.schema(), columns)?)
}

/// Threads that fold the rows of `events` into identities and links (each into its shard).
fn observing_threads() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get().clamp(1, 4))
}

/// The source number of each event type, registered before the threads folding `events`
/// start (they compare sightings by source name, so the numbers cannot change under them).
struct EventSources {
    kinds: [&'static str; 6],
    ids: Vec<u16>,
    other: u16,
}

impl EventSources {
    fn of(&self, kind: &str) -> u16 {
        self.kinds
            .iter()
            .position(|t| *t == kind)
            .map_or(self.other, |p| self.ids[p])
    }
}

/// Folds the rows of a batch of `events` into `shard` (number `index` of `count`).
fn fold_events(
    batch: &RecordBatch,
    rules: &Rules,
    graph: &Graph,
    (sources, names): (&EventSources, &[String]),
    shard: &mut Shard,
    place: (usize, usize),
) -> Result<()> {
    let times = ints(batch, "event_time")?;
    let kinds = text(batch, "event_type")?;
    let properties = text(batch, "properties")?;
    let id_columns: Vec<(arrow::array::StringArray, u8)> = rules
        .event_columns
        .iter()
        .map(|(c, ty)| Ok((text(batch, c)?, *ty)))
        .collect::<Result<_>>()?;
    let mut extra: Vec<(u8, String)> = Vec::new();
    for i in 0..batch.num_rows() {
        let at = get_int(&times, i).unwrap_or_default();
        let kind = get(&kinds, i).unwrap_or_default();
        extra.clear();
        if matches!(kind, "identify" | "alias")
            && let Some(p) = get(&properties, i)
            && let Ok(Value::Object(map)) = serde_json::from_str::<Value>(p)
        {
            if kind == "identify" {
                for (k, v) in &map {
                    if let Some(ty) = rules.traits.get(k)
                        && let Some(s) = identity_text(v)
                    {
                        extra.push((*ty, s));
                    }
                }
            } else if let (Some(ty), Some(s)) =
                (rules.alias, map.get("previousId").and_then(identity_text))
            {
                extra.push((ty, s));
            }
        }
        let mut ids: Vec<(u8, Key, &str)> = Vec::with_capacity(4);
        for (array, ty) in &id_columns {
            if let Some(v) = get(array, i) {
                ids.push((*ty, key(*ty, v), v));
            }
        }
        for (ty, v) in &extra {
            ids.push((*ty, key(*ty, v), v.as_str()));
        }
        order_ids(&mut ids);
        fold_row(shard, place, graph, names, &ids, (at, sources.of(kind)));
    }
    Ok(())
}

/// Observes the events without a person, read from the files whose statistics count some:
/// every batch goes to the thread of each of `observed`'s shards. Only their identity columns
/// are read (text as stored, not cast); only identify and alias calls have their properties
/// parsed.
async fn observe_events(
    catalog: &Catalog,
    rules: &Rules,
    graph: &mut Graph,
    observed: &mut Observed,
) -> Result<()> {
    let events = catalog.table("events").await?;
    let files = events.data_files_with_nulls("user_id")?;
    let kinds = ["track", "page", "screen", "identify", "alias", "group"];
    let sources = EventSources {
        kinds,
        ids: kinds
            .iter()
            .map(|t| observed.source(&format!("events:{t}")))
            .collect(),
        other: observed.source("events"),
    };
    let mut columns: Vec<&str> = vec!["event_time", "event_type", "properties"];
    columns.extend(rules.event_columns.iter().map(|(c, _)| c.as_str()));

    // The graph is only read while rows are folded: the threads share it, and it comes back.
    let shared = Arc::new(std::mem::replace(graph, Graph::new(Vec::new())));
    let context = Arc::new((rules.clone(), sources, observed.sources.clone()));
    let count = observed.shards.len();
    let mut senders = Vec::with_capacity(count);
    let mut threads = Vec::with_capacity(count);
    for (index, mut shard) in std::mem::take(&mut observed.shards).into_iter().enumerate() {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Arc<RecordBatch>>(4);
        let (graph, context) = (shared.clone(), context.clone());
        threads.push(std::thread::spawn(move || -> Result<Shard> {
            let (rules, sources, names) = &*context;
            for batch in rx {
                fold_events(
                    &batch,
                    rules,
                    &graph,
                    (sources, names),
                    &mut shard,
                    (index, count),
                )?;
            }
            Ok(shard)
        }));
        senders.push(tx);
    }
    let mut rows = 0u64;
    let read = events
        .read_files_where(
            &files,
            Some(&columns),
            "user_id",
            Arc::new(|batch: &RecordBatch| arrow::compute::is_null(batch.column(0))),
            |_, batch| {
                rows += batch.num_rows() as u64;
                let batch = Arc::new(batch);
                for tx in &senders {
                    // A thread that stopped gives its reason when it is joined.
                    if tx.send(batch.clone()).is_err() {
                        return Err(shoal_catalog::Error::Internal(
                            "a thread folding events stopped".into(),
                        ));
                    }
                }
                Ok(())
            },
        )
        .await;
    drop(senders);
    let mut failed = None;
    for thread in threads {
        match thread.join() {
            Ok(Ok(shard)) => observed.shards.push(shard),
            Ok(Err(e)) => failed = failed.or(Some(e)),
            Err(_) => {
                failed = failed.or(Some(Error::Internal(
                    "a thread folding events panicked".into(),
                )))
            }
        }
    }
    drop(context);
    *graph = Arc::try_unwrap(shared).map_err(|_| {
        Error::Internal("the identity graph is still shared after folding events".into())
    })?;
    if let Some(e) = failed {
        return Err(e);
    }
    read?;
    observed.rows += rows;
    Ok(())
}

fn identity_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.trim()).filter(|s| !s.is_empty()).map(str::to_string),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

async fn observe_orders(
    catalog: &Catalog,
    ctx: &SessionContext,
    rules: &Rules,
    graph: &Graph,
    observed: &mut Observed,
) -> Result<()> {
    let orders = catalog.table("orders").await?;
    let mut columns: Vec<&str> = vec!["created_at", "platform"];
    for (c, _, _) in &rules.order_columns {
        if !columns.contains(&c.as_str()) {
            columns.push(c);
        }
    }
    let stream = scan(ctx, &orders, &columns, Some(col("user_id").is_null())).await?;
    let mut source_of: HashMap<String, u16> = HashMap::new();
    for_each_batch(stream, |batch| {
        let times = ints(batch, "created_at")?;
        let platforms = text(batch, "platform")?;
        let id_columns: Vec<(arrow::array::StringArray, Option<&str>, u8)> = rules
            .order_columns
            .iter()
            .map(|(c, p, ty)| Ok((text(batch, c)?, p.as_deref(), *ty)))
            .collect::<Result<_>>()?;
        let mut ids: Vec<(u8, Key, &str)> = Vec::new();
        for i in 0..batch.num_rows() {
            let platform = get(&platforms, i).unwrap_or_default();
            ids.clear();
            for (array, only, ty) in &id_columns {
                if only.is_some_and(|p| p != platform) {
                    continue;
                }
                if let Some(v) = get(array, i) {
                    ids.push((*ty, key(*ty, v), v));
                }
            }
            let source = match source_of.get(platform) {
                Some(s) => *s,
                None => {
                    let s = observed.source(&format!("orders:{platform}"));
                    source_of.insert(platform.to_string(), s);
                    s
                }
            };
            observed.group(
                graph,
                &mut ids,
                get_int(&times, i).unwrap_or_default(),
                source,
            );
        }
        Ok(())
    })
    .await
}

pub(crate) fn micros_text(at: i64) -> String {
    DateTime::from_timestamp_micros(at)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_else(|| at.to_string())
}

fn time_array(values: Vec<i64>) -> ArrayRef {
    Arc::new(TimestampMicrosecondArray::from(values).with_timezone("UTC"))
}

pub(crate) fn merges_batch(
    merges: &[(u32, u32)],
    kind: &str,
    now: DateTime<Utc>,
    reason: impl Fn(u32) -> String,
) -> Result<RecordBatch> {
    Ok(RecordBatch::try_from_iter(vec![
        (
            "from_user_id",
            Arc::new(Int64Array::from_iter_values(
                merges.iter().map(|m| i64::from(m.0)),
            )) as ArrayRef,
        ),
        (
            "into_user_id",
            Arc::new(Int64Array::from_iter_values(
                merges.iter().map(|m| i64::from(m.1)),
            )),
        ),
        ("kind", text_array(merges.iter().map(|_| Some(kind)))),
        ("at", time_array(vec![now.timestamp_micros(); merges.len()])),
        (
            "reason",
            text_array(merges.iter().map(|m| Some(reason(m.0)))),
        ),
    ])?)
}

/// A link applied: the link with its source and keys, its status and the reason it was
/// refused.
type Applied<'a> = ((&'a Link, u16, Key, Key), &'static str, Option<String>);

/// The rows of `identity_edges` for the links `applied`, made on every core (each looks up
/// its identities' values among those `observed`).
fn edge_batches(
    applied: &[Applied],
    observed: &Observed,
    rules: &Rules,
) -> Result<Vec<RecordBatch>> {
    crate::cores::on_every_core(applied, "making identity_edges rows", |run| {
        let mut rows = EdgeRows::with_capacity(run.len());
        for ((link, source, key_a, key_b), status, reason) in run {
            rows.push(
                rules.name(link.a_type()),
                observed.name(key_a),
                rules.name(link.b_type()),
                observed.name(key_b),
                link.at(),
                &observed.sources[*source as usize],
                status,
                reason.as_deref(),
            );
        }
        rows.batch()
    })
}

/// A new identity: (first seen, type number, key), source of that sighting, value.
type Fresh<'a> = ((i64, u8, Key), u16, &'a str);

/// The rows of `identity_links` for the new identities `fresh` (their nodes `nodes`, whose
/// users are in `user_of`), made on every core.
fn link_batches(
    fresh: &[Fresh],
    nodes: &[u32],
    user_of: &[u32],
    rules: &Rules,
    sources: &[String],
) -> Result<Vec<RecordBatch>> {
    let rows: Vec<(&Fresh, u32)> = fresh.iter().zip(nodes.iter().copied()).collect();
    crate::cores::on_every_core(&rows, "making identity_links rows", |run| {
        let mut out = LinkRows::with_capacity(run.len());
        for (((at, ty, _), source, value), node) in run {
            out.push(
                rules.name(*ty),
                value,
                user_of[*node as usize],
                *at,
                &sources[*source as usize],
            );
        }
        out.batch()
    })
}

/// Rows of `identity_edges`, built column by column.
#[derive(Default)]
pub(crate) struct EdgeRows {
    a_type: StringBuilder,
    a_value: StringBuilder,
    b_type: StringBuilder,
    b_value: StringBuilder,
    at: Vec<i64>,
    source: StringBuilder,
    status: StringBuilder,
    reason: StringBuilder,
}

impl EdgeRows {
    /// Room for `n` rows (their values' text is sized as it comes).
    fn with_capacity(n: usize) -> EdgeRows {
        let text = || StringBuilder::with_capacity(n, n * 8);
        EdgeRows {
            a_type: text(),
            a_value: text(),
            b_type: text(),
            b_value: text(),
            at: Vec::with_capacity(n),
            source: text(),
            status: text(),
            reason: StringBuilder::with_capacity(n, 0),
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn push(
        &mut self,
        a_type: &str,
        a_value: &str,
        b_type: &str,
        b_value: &str,
        at: i64,
        source: &str,
        status: &str,
        reason: Option<&str>,
    ) {
        self.a_type.append_value(a_type);
        self.a_value.append_value(a_value);
        self.b_type.append_value(b_type);
        self.b_value.append_value(b_value);
        self.at.push(at);
        self.source.append_value(source);
        self.status.append_value(status);
        self.reason.append_option(reason);
    }

    pub(crate) fn batch(mut self) -> Result<RecordBatch> {
        let text = |b: &mut StringBuilder| Arc::new(b.finish()) as ArrayRef;
        Ok(RecordBatch::try_from_iter(vec![
            ("a_type", text(&mut self.a_type)),
            ("a_value", text(&mut self.a_value)),
            ("b_type", text(&mut self.b_type)),
            ("b_value", text(&mut self.b_value)),
            ("first_seen", time_array(self.at)),
            ("source", text(&mut self.source)),
            ("status", text(&mut self.status)),
            ("reason", text(&mut self.reason)),
        ])?)
    }
}

/// Rows of `identity_links`, built column by column.
#[derive(Default)]
pub(crate) struct LinkRows {
    types: StringBuilder,
    values: StringBuilder,
    users: Vec<i64>,
    first: Vec<i64>,
    sources: StringBuilder,
}

impl LinkRows {
    /// Room for `n` rows (their values' text is sized as it comes).
    fn with_capacity(n: usize) -> LinkRows {
        let text = || StringBuilder::with_capacity(n, n * 8);
        LinkRows {
            types: text(),
            values: text(),
            users: Vec::with_capacity(n),
            first: Vec::with_capacity(n),
            sources: text(),
        }
    }

    pub(crate) fn push(&mut self, ty: &str, value: &str, user: u32, first: i64, source: &str) {
        self.types.append_value(ty);
        self.values.append_value(value);
        self.users.push(i64::from(user));
        self.first.push(first);
        self.sources.append_value(source);
    }

    pub(crate) fn batch(mut self) -> Result<RecordBatch> {
        Ok(RecordBatch::try_from_iter(vec![
            ("id_type", Arc::new(self.types.finish()) as ArrayRef),
            ("id_value", Arc::new(self.values.finish())),
            (
                "user_id",
                Arc::new(Int64Array::from(self.users)) as ArrayRef,
            ),
            ("first_seen", time_array(self.first)),
            ("source", Arc::new(self.sources.finish())),
        ])?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What rows folded into `shards` shards leave: each identity's type, first sighting and
    /// value, and each link's first sighting and types, sorted.
    type Folded = (
        Vec<(Key, u8, Option<(i64, u16)>, String)>,
        Vec<((Key, Key), (i64, u16), (u8, u8))>,
    );

    /// A row: when, which source, and its identities (type, value).
    type Row<'a> = (i64, u16, Vec<(u8, &'a str)>);

    fn fold(shards: usize, graph: &Graph, rows: &[Row]) -> Folded {
        let mut observed = Observed::new(shards);
        observed.source("b");
        observed.source("a");
        for (at, source, row) in rows {
            let mut ids: Vec<(u8, Key, &str)> =
                row.iter().map(|(ty, v)| (*ty, key(*ty, v), *v)).collect();
            observed.group(graph, &mut ids, *at, *source);
        }
        let mut seen: Vec<_> = observed
            .all_seen()
            .map(|(k, s)| (*k, s.ty, s.first(), s.name.to_string()))
            .collect();
        seen.sort();
        let mut edges: Vec<_> = observed
            .edges()
            .map(|(k, d)| (*k, d.sighting(), d.types))
            .collect();
        edges.sort();
        (seen, edges)
    }

    #[test]
    fn identities_and_links_seen_stay_small() {
        // Millions are held at once in a build: their size is the memory it takes.
        assert_eq!(std::mem::size_of::<Seen>(), 32);
        assert_eq!(std::mem::size_of::<Drawn>(), 16);
    }

    #[test]
    fn rows_fold_alike_in_any_number_of_shards_and_any_order() {
        // Type 0 is the strongest. "known" is stored already: it is seen but not new.
        let mut graph = Graph::new(Vec::new());
        graph.nodes(&[1], &[key(1, "known")]);
        let rows: Vec<Row> = vec![
            (30, 0, vec![(1, "d1"), (0, "L1")]),
            (10, 0, vec![(1, "d1"), (1, "d2"), (0, "L1"), (1, "d1")]),
            // A tie at 10 from source "a" (number 1) comes before "b" (number 0).
            (10, 1, vec![(1, "d2"), (0, "L1")]),
            (5, 0, vec![(1, "known"), (1, "d3")]),
            (7, 0, vec![(1, "d3")]),
            (50, 0, vec![(2, "p1")]),
        ];
        let one = fold(1, &graph, &rows);
        let (seen, edges) = &one;
        let first = |v: &str, ty: u8| {
            seen.iter()
                .find(|s| s.0 == key(ty, v))
                .map(|s| (s.2, s.3.clone()))
        };
        assert_eq!(first("L1", 0), Some((Some((10, 1)), "L1".to_string())));
        assert_eq!(first("d1", 1), Some((Some((10, 0)), "d1".to_string())));
        assert_eq!(first("d3", 1), Some((Some((5, 0)), "d3".to_string())));
        assert_eq!(first("known", 1), Some((None, "known".to_string())));
        assert_eq!(seen.len(), 6);
        // Links drawn towards L1 (the strongest in its rows), and d3 towards "known".
        let drawn = |a: (u8, &str), b: (u8, &str)| {
            edges
                .iter()
                .find(|e| e.0 == (key(a.0, a.1), key(b.0, b.1)))
                .map(|e| e.1)
        };
        assert_eq!(drawn((0, "L1"), (1, "d1")), Some((10, 0)));
        assert_eq!(drawn((0, "L1"), (1, "d2")), Some((10, 1)));
        assert_eq!(edges.len(), 3);
        for shards in [2, 3, 4] {
            assert_eq!(fold(shards, &graph, &rows), one, "{shards} shards");
            let reversed: Vec<_> = rows.iter().rev().cloned().collect();
            assert_eq!(
                fold(shards, &graph, &reversed),
                one,
                "{shards} shards, reversed"
            );
        }
    }
}
