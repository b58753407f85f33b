//! The graph's stored state in compact files, `identity_links/_shoal/identities*`: every
//! identity a run loads (its key, person and type number), grouped by person, and the settled
//! pairs (links refused or removed, never drawn again).
//!
//! Loading the state from the tables decodes every stored identity's text, hashes it, and
//! reads the status of every stored edge: most of an incremental build's identity step. A run
//! whose saved state matches the tables (the versions and last commit times of
//! `identity_links` and `identity_edges`, the identity types in the same order) reads the keys
//! instead. Any other state (older, from before a manual unlink, cut short, damaged) is
//! ignored and the tables are read.
//!
//! The state is a base file (`identities`: everything) followed by the changes of later runs
//! (`identities.1`, `identities.2`, …: the identities a run added, the people it merged, the
//! links it refused), each naming the state it follows, so a run writes a few kilobytes rather
//! than the whole state. When the changes grow past a quarter of the base (of at least
//! [`MIN_BASE`]), or number [`MAX_CHANGES`], the next run writes a new base.

use std::collections::{HashMap, HashSet};
use std::hash::BuildHasherDefault;

use shoal_catalog::Table;
use twox_hash::XxHash3_128;

use super::graph::{Graph, Key, KeyHasher};

/// The base file's name among the derived files of `identity_links`.
pub(super) const NAME: &str = "identities";

/// Changes after a base before the next run writes a new base.
pub(super) const MAX_CHANGES: usize = 32;

/// Identities a base is taken to hold at least, when weighing its changes: a small state is
/// cheap to write whole, and is left to gather changes up to [`MAX_CHANGES`].
const MIN_BASE: usize = 1 << 16;

const MAGIC: &[u8; 8] = b"SHOALIDS";
const FORMAT: u32 = 2;
/// An identity: key (16 bytes), user (4), type number (1).
const RECORD: usize = 21;
/// A merge: from, into.
const MERGE: usize = 8;
/// A settled pair: two keys.
const PAIR: usize = 32;
/// The trailing checksum: xxh3-128 of every byte before it.
const CHECK: usize = 16;

/// The name of part `k` of the state: the base (0), or the `k`th change after it.
pub(super) fn part_name(k: usize) -> String {
    match k {
        0 => NAME.to_string(),
        k => format!("{NAME}.{k}"),
    }
}

/// Pairs of keys (lower first) whose link is settled.
pub(super) type Settled = HashSet<(Key, Key), BuildHasherDefault<KeyHasher>>;

/// What a saved state stands for: the identity types (in order: they number the keys) and
/// the version and last commit time (milliseconds) of `identity_links` and `identity_edges`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Stamp {
    pub types: Vec<String>,
    pub links: (u64, i64),
    pub edges: (u64, i64),
}

/// A state read back: parallel columns, one row per identity, and the settled pairs; and
/// how it was stored.
#[derive(Debug, Default)]
pub(super) struct Saved {
    pub kinds: Vec<u8>,
    pub keys: Vec<Key>,
    pub users: Vec<u32>,
    pub settled: Vec<(Key, Key)>,
    /// Identities in the base.
    pub base: usize,
    /// Changes read after the base.
    pub changes: usize,
    /// Identities the changes added.
    pub changed: usize,
}

impl Saved {
    /// Whether the next run's change (adding `more` identities) should be saved as a new
    /// base rather than as one more change.
    pub(super) fn due_for_base(&self, more: usize) -> bool {
        self.changes >= MAX_CHANGES || 4 * (self.changed + more) > self.base.max(MIN_BASE)
    }
}

impl Stamp {
    fn write(&self, out: &mut Vec<u8>) {
        for word in [
            self.links.0,
            self.links.1 as u64,
            self.edges.0,
            self.edges.1 as u64,
        ] {
            out.extend_from_slice(&word.to_le_bytes());
        }
        let types = self.types.join("\n");
        out.extend_from_slice(&(types.len() as u32).to_le_bytes());
        out.extend_from_slice(types.as_bytes());
    }

    fn read(r: &mut Reader<'_>) -> Result<Stamp, String> {
        let links = (r.u64()?, r.u64()? as i64);
        let edges = (r.u64()?, r.u64()? as i64);
        let len = r.u32()? as usize;
        let types = std::str::from_utf8(r.take(len)?)
            .map_err(|_| "its identity types are not text".to_string())?;
        let types = match types {
            "" => Vec::new(),
            t => t.split('\n').map(str::to_string).collect(),
        };
        Ok(Stamp {
            types,
            links,
            edges,
        })
    }
}

/// A file's header: the state it follows (a change) or none (a base), the state it leaves,
/// and how many identities, merges and settled pairs follow.
fn header(from: Option<&Stamp>, to: &Stamp, counts: [usize; 3]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT.to_le_bytes());
    out.push(u8::from(from.is_some()));
    if let Some(from) = from {
        from.write(&mut out);
    }
    to.write(&mut out);
    for count in counts {
        out.extend_from_slice(&(count as u64).to_le_bytes());
    }
    out
}

fn put_pairs(out: &mut Vec<u8>, pairs: &[(Key, Key)]) {
    for (a, b) in pairs {
        out.extend_from_slice(&a.to_le_bytes());
        out.extend_from_slice(&b.to_le_bytes());
    }
}

fn seal(mut out: Vec<u8>) -> Vec<u8> {
    let check = XxHash3_128::oneshot(&out);
    out.extend_from_slice(&check.to_le_bytes());
    out
}

/// The base file holding `graph`'s identities, node `n` of person `user_of[n]`, and
/// `settled`, stamped `stamp`.
pub(super) fn encode_base(
    stamp: &Stamp,
    graph: &Graph,
    user_of: &[u32],
    settled: &Settled,
) -> Vec<u8> {
    let n = graph.len();
    let mut out = header(None, stamp, [n, 0, settled.len()]);
    let body = out.len();
    out.reserve_exact(n * RECORD + settled.len() * PAIR + CHECK);
    out.resize(body + n * RECORD, 0);
    let place = grouped_by_user(user_of);
    for (key, node) in graph.identities() {
        let at = body + place[node as usize] as usize * RECORD;
        put_record(
            &mut out[at..at + RECORD],
            key,
            user_of[node as usize],
            graph.kind(node),
        );
    }
    // In order, so the same state gives the same bytes.
    let mut pairs: Vec<(Key, Key)> = settled.iter().copied().collect();
    pairs.sort_unstable();
    put_pairs(&mut out, &pairs);
    seal(out)
}

/// The change from state `from` to `to`: the identities added (key, person, type number),
/// the people merged (from, into) and the pairs settled.
pub(super) fn encode_change(
    from: &Stamp,
    to: &Stamp,
    identities: &[(Key, u32, u8)],
    merges: &[(u32, u32)],
    settled: &[(Key, Key)],
) -> Vec<u8> {
    let mut out = header(
        Some(from),
        to,
        [identities.len(), merges.len(), settled.len()],
    );
    for (key, user, kind) in identities {
        let at = out.len();
        out.resize(at + RECORD, 0);
        put_record(&mut out[at..], *key, *user, *kind);
    }
    for (a, b) in merges {
        out.extend_from_slice(&a.to_le_bytes());
        out.extend_from_slice(&b.to_le_bytes());
    }
    put_pairs(&mut out, settled);
    seal(out)
}

fn put_record(record: &mut [u8], key: Key, user: u32, kind: u8) {
    record[..16].copy_from_slice(&key.to_le_bytes());
    record[16..20].copy_from_slice(&user.to_le_bytes());
    record[20] = kind;
}

/// The place of every node when nodes are grouped by user, in node order within a user (the
/// order `Graph::add_existing_many` joins fastest).
fn grouped_by_user(user_of: &[u32]) -> Vec<u32> {
    let n = user_of.len();
    let top = user_of.iter().max().map_or(0, |m| *m as usize + 1);
    let mut place = vec![0u32; n];
    if top <= 2 * n + (1 << 20) {
        // Dense ids: a counting sort.
        let mut next = vec![0u32; top + 1];
        for u in user_of {
            next[*u as usize + 1] += 1;
        }
        for u in 1..next.len() {
            next[u] += next[u - 1];
        }
        for (node, u) in user_of.iter().enumerate() {
            place[node] = next[*u as usize];
            next[*u as usize] += 1;
        }
    } else {
        let mut order: Vec<u32> = (0..n as u32).collect();
        order.sort_unstable_by_key(|node| (user_of[*node as usize], *node));
        for (at, node) in order.into_iter().enumerate() {
            place[node as usize] = at as u32;
        }
    }
    place
}

/// One file read back.
#[derive(Debug)]
struct Part {
    /// The state a change follows; None for a base.
    from: Option<Stamp>,
    to: Stamp,
    /// Where the identities are in `bytes`, and how many.
    records: (usize, usize),
    merges: Vec<(u32, u32)>,
    settled: Vec<(Key, Key)>,
}

/// The file in `bytes`, when it is whole; otherwise why not.
fn decode(bytes: &[u8]) -> Result<Part, String> {
    if bytes.len() < MAGIC.len() + CHECK || &bytes[..MAGIC.len()] != MAGIC {
        return Err("it is not a saved identity state".into());
    }
    let (body, check) = bytes.split_at(bytes.len() - CHECK);
    let mut r = Reader {
        bytes: body,
        at: MAGIC.len(),
    };
    let format = r.u32()?;
    if format != FORMAT {
        return Err(format!("it is in format {format}, not {FORMAT}"));
    }
    let from = match r.take(1)?[0] {
        0 => None,
        _ => Some(Stamp::read(&mut r)?),
    };
    let to = Stamp::read(&mut r)?;
    let (n, k, m) = (r.u64()? as usize, r.u64()? as usize, r.u64()? as usize);
    let wanted = [(n, RECORD), (k, MERGE), (m, PAIR)]
        .iter()
        .try_fold(0usize, |sum, (count, size)| {
            count.checked_mul(*size).and_then(|b| sum.checked_add(b))
        });
    let left = body.len() - r.at;
    if wanted != Some(left) {
        return Err(format!(
            "it holds {left} bytes for {n} identities, {k} merges and {m} settled links"
        ));
    }
    if XxHash3_128::oneshot(body).to_le_bytes() != check {
        return Err("its checksum does not match its contents".into());
    }
    let records = (r.at, n);
    r.take(n * RECORD)?;
    let merges = r
        .take(k * MERGE)?
        .chunks_exact(MERGE)
        .map(|m| (word(&m[..4]), word(&m[4..])))
        .collect();
    let settled = r
        .take(m * PAIR)?
        .chunks_exact(PAIR)
        .map(|p| (key_at(&p[..16]), key_at(&p[16..])))
        .collect();
    Ok(Part {
        from,
        to,
        records,
        merges,
        settled,
    })
}

/// Appends the `n` identities at `bytes[at..]` to `saved`'s columns, decoded on every core,
/// each writing (and so first touching) its own part of the columns.
fn append_records(saved: &mut Saved, bytes: &[u8], (at, n): (usize, usize)) {
    let first = saved.keys.len();
    saved.kinds.resize(first + n, 0);
    saved.keys.resize(first + n, 0);
    saved.users.resize(first + n, 0);
    let records = &bytes[at..at + n * RECORD];
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    let chunk = n.div_ceil(threads).max(1 << 16);
    std::thread::scope(|scope| {
        for (((records, kinds), keys), users) in records
            .chunks(chunk * RECORD)
            .zip(saved.kinds[first..].chunks_mut(chunk))
            .zip(saved.keys[first..].chunks_mut(chunk))
            .zip(saved.users[first..].chunks_mut(chunk))
        {
            scope.spawn(move || {
                for (i, record) in records.chunks_exact(RECORD).enumerate() {
                    keys[i] = key_at(&record[..16]);
                    users[i] = word(&record[16..20]);
                    kinds[i] = record[20];
                }
            });
        }
    });
}

/// The state saved for `table` (`identity_links`) when it stands for `stamp`, None when none
/// is saved, or why the one saved does not.
pub(super) async fn load(table: &Table, stamp: &Stamp) -> Result<Option<Saved>, String> {
    let read =
        |name: String| async move { table.read_derived(&name).await.map_err(|e| e.to_string()) };
    load_parts(read, stamp).await
}

/// [`load`], each part read by `read`.
async fn load_parts<F, R, B>(read: F, stamp: &Stamp) -> Result<Option<Saved>, String>
where
    F: Fn(String) -> R,
    R: std::future::Future<Output = Result<Option<B>, String>>,
    B: AsRef<[u8]>,
{
    let Some(bytes) = read(NAME.to_string()).await? else {
        return Ok(None);
    };
    let bytes = bytes.as_ref();
    let base = decode(bytes).map_err(|e| format!("{NAME}: {e}"))?;
    if base.from.is_some() {
        return Err(format!("{NAME}: it is a change, not a base"));
    }
    let mut saved = Saved {
        base: base.records.1,
        settled: base.settled,
        ..Saved::default()
    };
    let mut at = base.to;
    let mut merged: HashMap<u32, u32> = HashMap::new();
    if at != *stamp {
        // The changes in turn, as long as each follows the state before it.
        for k in 1.. {
            let name = part_name(k);
            let Some(bytes) = read(name.clone()).await? else {
                break;
            };
            let part = decode(bytes.as_ref()).map_err(|e| format!("{name}: {e}"))?;
            if part.from.as_ref() != Some(&at) {
                break;
            }
            append_records(&mut saved, bytes.as_ref(), part.records);
            saved.changes = k;
            saved.changed += part.records.1;
            merged.extend(part.merges);
            saved.settled.extend(part.settled);
            at = part.to;
            if at == *stamp {
                break;
            }
        }
        if at != *stamp {
            return Err(format!(
                "it was saved for {at:?}, and the tables are at {stamp:?}"
            ));
        }
    }
    // The base's identities go first: add_existing_many takes them grouped by person.
    let changes = Saved {
        kinds: std::mem::take(&mut saved.kinds),
        keys: std::mem::take(&mut saved.keys),
        users: std::mem::take(&mut saved.users),
        ..Saved::default()
    };
    append_records(&mut saved, bytes, base.records);
    saved.kinds.extend(changes.kinds);
    saved.keys.extend(changes.keys);
    saved.users.extend(changes.users);
    if !merged.is_empty() {
        // Every person merged away, followed to the person they are part of now (ids are
        // never reused, so a later merge applies to earlier identities alike).
        let last = |mut user: u32| {
            while let Some(into) = merged.get(&user) {
                user = *into;
            }
            user
        };
        for user in &mut saved.users {
            if merged.contains_key(user) {
                *user = last(*user);
            }
        }
    }
    Ok(Some(saved))
}

fn key_at(bytes: &[u8]) -> Key {
    let mut word = [0u8; 16];
    word.copy_from_slice(&bytes[..16]);
    Key::from_le_bytes(word)
}

fn word(bytes: &[u8]) -> u32 {
    u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])
}

/// Reads the file's fields in turn.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, len: usize) -> Result<&'a [u8], String> {
        let end = self
            .at
            .checked_add(len)
            .filter(|end| *end <= self.bytes.len())
            .ok_or_else(|| "it ends too soon".to_string())?;
        let taken = &self.bytes[self.at..end];
        self.at = end;
        Ok(taken)
    }

    fn u32(&mut self) -> Result<u32, String> {
        Ok(word(self.take(4)?))
    }

    fn u64(&mut self) -> Result<u64, String> {
        let b = self.take(8)?;
        let mut word = [0u8; 8];
        word.copy_from_slice(b);
        Ok(u64::from_le_bytes(word))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::graph::{TypeRule, key};

    fn stamp(links: u64) -> Stamp {
        Stamp {
            types: vec!["login_id".into(), "anonymous_id".into()],
            links: (links, 1_700_000_000_000 + links as i64),
            edges: (3, 1_700_000_000_500),
        }
    }

    /// A graph of three people: user 4 with a login and two devices, user 2 with one device,
    /// user 9 with a login.
    fn graph() -> (Graph, Vec<u32>) {
        let mut g = Graph::new(vec![
            TypeRule::new("login_id", 1),
            TypeRule::new("anonymous_id", 5),
        ]);
        let stored = [
            (0, "u4", 4),
            (1, "d1", 2),
            (1, "d4a", 4),
            (0, "u9", 9),
            (1, "d4b", 4),
        ];
        for (ty, value, user) in stored {
            g.add_existing(ty, key(ty, value), user);
        }
        let r = g.finish();
        (g, r.user_of)
    }

    /// Parts by name, read as the warehouse would give them.
    async fn load_from(
        parts: &HashMap<String, Vec<u8>>,
        stamp: &Stamp,
    ) -> Result<Option<Saved>, String> {
        let read = |name: String| async move { Ok(parts.get(&name).cloned()) };
        load_parts(read, stamp).await
    }

    fn rows(saved: &Saved) -> Vec<(u32, u8, Key)> {
        (0..saved.keys.len())
            .map(|i| (saved.users[i], saved.kinds[i], saved.keys[i]))
            .collect()
    }

    #[tokio::test]
    async fn a_base_reads_back_grouped_by_person() {
        let (g, user_of) = graph();
        let mut settled = Settled::default();
        settled.insert((key(1, "x"), key(1, "y")));
        let base = encode_base(&stamp(7), &g, &user_of, &settled);
        // The same state gives the same bytes.
        assert_eq!(base, encode_base(&stamp(7), &g, &user_of, &settled));
        let parts = HashMap::from([(part_name(0), base)]);
        let saved = load_from(&parts, &stamp(7))
            .await
            .expect("whole and stamped alike")
            .expect("saved");
        assert_eq!(saved.users, [2, 4, 4, 4, 9], "grouped by person, in order");
        let mut got = rows(&saved);
        got.sort_unstable();
        let mut wanted = vec![
            (2, 1, key(1, "d1")),
            (4, 0, key(0, "u4")),
            (4, 1, key(1, "d4a")),
            (4, 1, key(1, "d4b")),
            (9, 0, key(0, "u9")),
        ];
        wanted.sort_unstable();
        assert_eq!(got, wanted);
        assert_eq!(saved.settled, [(key(1, "x"), key(1, "y"))]);
        assert_eq!((saved.base, saved.changes, saved.changed), (5, 0, 0));
        assert!(
            load_from(&HashMap::new(), &stamp(7))
                .await
                .expect("none")
                .is_none()
        );
    }

    #[tokio::test]
    async fn changes_follow_their_base_in_turn_and_merges_reach_earlier_identities() {
        let (g, user_of) = graph();
        let mut parts = HashMap::from([(
            part_name(0),
            encode_base(&stamp(7), &g, &user_of, &Settled::default()),
        )]);
        // Run 1: person 9 merges into 4, a new device for 4, a new person 10.
        parts.insert(
            part_name(1),
            encode_change(
                &stamp(7),
                &stamp(8),
                &[(key(1, "d4c"), 4, 1), (key(0, "u10"), 10, 0)],
                &[(9, 4)],
                &[(key(0, "a"), key(0, "b"))],
            ),
        );
        // Run 2: person 4 merges into 2.
        parts.insert(
            part_name(2),
            encode_change(&stamp(8), &stamp(9), &[], &[(4, 2)], &[]),
        );
        // Left from an older chain: it follows no state of this one.
        parts.insert(
            part_name(3),
            encode_change(&stamp(1), &stamp(10), &[(key(1, "stale"), 1, 1)], &[], &[]),
        );
        let saved = load_from(&parts, &stamp(9))
            .await
            .expect("a chain to the tables' state")
            .expect("saved");
        let mut got = rows(&saved);
        got.sort_unstable();
        let mut wanted = vec![
            (2, 1, key(1, "d1")),
            (2, 0, key(0, "u4")),
            (2, 1, key(1, "d4a")),
            (2, 1, key(1, "d4b")),
            (2, 0, key(0, "u9")),
            (2, 1, key(1, "d4c")),
            (10, 0, key(0, "u10")),
        ];
        wanted.sort_unstable();
        assert_eq!(got, wanted);
        assert_eq!(
            saved.users,
            [2, 2, 2, 2, 2, 2, 10],
            "the base first, then the changes"
        );
        assert_eq!(saved.keys[5], key(1, "d4c"));
        assert_eq!(saved.settled, [(key(0, "a"), key(0, "b"))]);
        assert_eq!((saved.base, saved.changes, saved.changed), (5, 2, 2));
        // A state between: the chain stops there.
        let mid = load_from(&parts, &stamp(8))
            .await
            .expect("ok")
            .expect("saved");
        assert_eq!(mid.keys.len(), 7);
        assert_eq!(mid.users.iter().filter(|u| **u == 4).count(), 5);
        // A state the chain never reaches.
        let err = load_from(&parts, &stamp(10))
            .await
            .expect_err("not reached");
        assert!(err.contains("saved for"), "{err}");
        assert!(!saved.due_for_base(10), "a small base gathers changes");
        let big = |changes, changed| Saved {
            base: 1 << 20,
            changes,
            changed,
            ..Saved::default()
        };
        assert!(!big(3, 1 << 17).due_for_base(1 << 17));
        assert!(
            big(3, 1 << 17).due_for_base((1 << 17) + 1),
            "past a quarter"
        );
        assert!(big(MAX_CHANGES, 0).due_for_base(0), "too many changes");
    }

    #[tokio::test]
    async fn a_state_for_other_tables_or_damaged_is_refused_with_the_reason() {
        let (g, user_of) = graph();
        let bytes = encode_base(&stamp(7), &g, &user_of, &Settled::default());
        let base = |bytes: Vec<u8>| HashMap::from([(part_name(0), bytes)]);
        let err = load_from(&base(bytes.clone()), &stamp(8))
            .await
            .expect_err("another version");
        assert!(err.contains("saved for"), "{err}");
        let reordered = Stamp {
            types: vec!["anonymous_id".into(), "login_id".into()],
            ..stamp(7)
        };
        assert!(load_from(&base(bytes.clone()), &reordered).await.is_err());
        let mut flipped = bytes.clone();
        let last_record = flipped.len() - CHECK - 1;
        flipped[last_record] ^= 1;
        let err = load_from(&base(flipped), &stamp(7))
            .await
            .expect_err("damaged");
        assert!(err.contains("checksum"), "{err}");
        let err = load_from(&base(bytes[..bytes.len() - 40].to_vec()), &stamp(7))
            .await
            .expect_err("cut short");
        assert!(err.contains("bytes for"), "{err}");
        for junk in [b"not a state at all".to_vec(), Vec::new()] {
            assert!(load_from(&base(junk), &stamp(7)).await.is_err());
        }
        // A change where the base should be.
        let change = encode_change(&stamp(6), &stamp(7), &[], &[], &[]);
        let err = load_from(&base(change), &stamp(7))
            .await
            .expect_err("no base");
        assert!(err.contains("not a base"), "{err}");
    }

    #[test]
    fn sparse_user_ids_are_grouped_too() {
        let user_of = [4_000_000_000, 3, 4_000_000_000, 0, 3];
        assert_eq!(grouped_by_user(&user_of), [3, 1, 4, 0, 2]);
        let dense = [2, 0, 2, 1];
        assert_eq!(grouped_by_user(&dense), [2, 0, 3, 1]);
    }
}
