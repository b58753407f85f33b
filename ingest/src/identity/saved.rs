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

/// Where the parts of a state are read from: a table's derived files, or memory in tests.
pub(super) trait Source {
    type File: SourceFile;
    /// Part `name`, None when there is none.
    async fn open(&self, name: &str) -> Result<Option<Self::File>, String>;
}

/// One part, read in pieces.
pub(super) trait SourceFile {
    fn size(&self) -> u64;
    /// Fills `buf` with the part's bytes from `offset`.
    async fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), String>;
}

impl Source for Table {
    type File = shoal_catalog::DerivedFile;
    async fn open(&self, name: &str) -> Result<Option<Self::File>, String> {
        self.open_derived(name).await.map_err(|e| e.to_string())
    }
}

impl SourceFile for shoal_catalog::DerivedFile {
    fn size(&self) -> u64 {
        shoal_catalog::DerivedFile::size(self)
    }
    async fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), String> {
        shoal_catalog::DerivedFile::read_at(self, offset, buf)
            .await
            .map_err(|e| e.to_string())
    }
}

/// A part's header, read back.
#[derive(Debug)]
struct Header {
    /// The state a change follows; None for a base.
    from: Option<Stamp>,
    to: Stamp,
    /// Its bytes, which the checksum covers first.
    bytes: Vec<u8>,
    /// Identities, merges and settled pairs that follow.
    counts: (usize, usize, usize),
}

/// The most bytes a header is read in.
const HEADER_READ: u64 = 64 << 10;

/// Identities read and decoded at once: the buffer a part is read through.
const RECORDS_AT_ONCE: usize = 1 << 18;

/// The header of `file`, checked against the file's length.
async fn read_header<F: SourceFile>(file: &F) -> Result<Header, String> {
    let size = file.size();
    let mut bytes = vec![0; size.min(HEADER_READ) as usize];
    file.read_at(0, &mut bytes).await?;
    if size < (MAGIC.len() + CHECK) as u64 || &bytes[..MAGIC.len()] != MAGIC {
        return Err("it is not a saved identity state".into());
    }
    let mut r = Reader {
        bytes: &bytes,
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
    let length = r.at;
    let wanted = [(n, RECORD), (k, MERGE), (m, PAIR), (1, CHECK)]
        .iter()
        .try_fold(length, |sum, (count, size)| {
            count.checked_mul(*size).and_then(|b| sum.checked_add(b))
        });
    if wanted.map(|w| w as u64) != Some(size) {
        return Err(format!(
            "it holds {size} bytes for {n} identities, {k} merges and {m} settled links"
        ));
    }
    bytes.truncate(length);
    Ok(Header {
        from,
        to,
        bytes,
        counts: (n, k, m),
    })
}

/// Reads the body of `file` (whose header is `header`) into `saved`, after what it holds,
/// and returns its merges. The identities are read through one buffer, a piece at a time,
/// each decoded on every core; the checksum is checked at the end.
async fn read_body<F: SourceFile>(
    file: &F,
    header: &Header,
    saved: &mut Saved,
) -> Result<Vec<(u32, u32)>, String> {
    let (n, k, m) = header.counts;
    let mut hasher = XxHash3_128::new();
    hasher.write(&header.bytes);
    let mut at = header.bytes.len() as u64;
    let first = saved.keys.len();
    saved.kinds.resize(first + n, 0);
    saved.keys.resize(first + n, 0);
    saved.users.resize(first + n, 0);
    let mut buf = vec![0u8; n.min(RECORDS_AT_ONCE) * RECORD];
    let mut done = 0;
    while done < n {
        let count = (n - done).min(RECORDS_AT_ONCE);
        let piece = &mut buf[..count * RECORD];
        file.read_at(at, piece).await?;
        at += piece.len() as u64;
        hasher.write(piece);
        let to = first + done..first + done + count;
        decode_records(
            piece,
            &mut saved.kinds[to.clone()],
            &mut saved.keys[to.clone()],
            &mut saved.users[to],
        );
        done += count;
    }
    let mut tail = vec![0u8; k * MERGE + m * PAIR + CHECK];
    file.read_at(at, &mut tail).await?;
    let (body, check) = tail.split_at(tail.len() - CHECK);
    hasher.write(body);
    if hasher.finish_128().to_le_bytes() != check {
        return Err("its checksum does not match its contents".into());
    }
    let (merges, pairs) = body.split_at(k * MERGE);
    saved.settled.extend(
        pairs
            .chunks_exact(PAIR)
            .map(|p| (key_at(&p[..16]), key_at(&p[16..]))),
    );
    Ok(merges
        .chunks_exact(MERGE)
        .map(|m| (word(&m[..4]), word(&m[4..])))
        .collect())
}

/// Decodes `records` into the columns, on every core, each writing (and so first touching)
/// its own part of them.
fn decode_records(records: &[u8], kinds: &mut [u8], keys: &mut [Key], users: &mut [u32]) {
    let n = kinds.len();
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    let chunk = n.div_ceil(threads).max(1 << 14);
    std::thread::scope(|scope| {
        for (((records, kinds), keys), users) in records
            .chunks(chunk * RECORD)
            .zip(kinds.chunks_mut(chunk))
            .zip(keys.chunks_mut(chunk))
            .zip(users.chunks_mut(chunk))
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

/// The state saved for `source` (`identity_links`) when it stands for `stamp`, None when
/// none is saved, or why the one saved does not.
///
/// The headers come first: the base's, then its changes' as long as each follows the state
/// before it, until one leaves the tables' state. Only then are the bodies read, the base's
/// first (`Graph::add_existing_many` takes its identities grouped by person).
pub(super) async fn load<S: Source>(source: &S, stamp: &Stamp) -> Result<Option<Saved>, String> {
    let Some(base) = source.open(NAME).await? else {
        return Ok(None);
    };
    let base_header = read_header(&base)
        .await
        .map_err(|e| format!("{NAME}: {e}"))?;
    if base_header.from.is_some() {
        return Err(format!("{NAME}: it is a change, not a base"));
    }
    let mut at = base_header.to.clone();
    let mut parts = vec![(NAME.to_string(), base, base_header)];
    for k in 1.. {
        if at == *stamp {
            break;
        }
        let name = part_name(k);
        let Some(file) = source.open(&name).await? else {
            break;
        };
        let header = read_header(&file)
            .await
            .map_err(|e| format!("{name}: {e}"))?;
        if header.from.as_ref() != Some(&at) {
            break;
        }
        at = header.to.clone();
        parts.push((name, file, header));
    }
    if at != *stamp {
        return Err(format!(
            "it was saved for {at:?}, and the tables are at {stamp:?}"
        ));
    }
    let mut saved = Saved {
        base: parts[0].2.counts.0,
        changes: parts.len() - 1,
        ..Saved::default()
    };
    let mut merged: HashMap<u32, u32> = HashMap::new();
    for (name, file, header) in &parts {
        merged.extend(
            read_body(file, header, &mut saved)
                .await
                .map_err(|e| format!("{name}: {e}"))?,
        );
    }
    saved.changed = saved.keys.len() - saved.base;
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

    /// Parts in memory, by name.
    struct Memory(HashMap<String, Vec<u8>>);

    impl Source for Memory {
        type File = Vec<u8>;
        async fn open(&self, name: &str) -> Result<Option<Vec<u8>>, String> {
            Ok(self.0.get(name).cloned())
        }
    }

    impl SourceFile for Vec<u8> {
        fn size(&self) -> u64 {
            self.len() as u64
        }
        async fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), String> {
            let at = offset as usize;
            buf.copy_from_slice(&self[at..at + buf.len()]);
            Ok(())
        }
    }

    async fn load_from(
        parts: &HashMap<String, Vec<u8>>,
        stamp: &Stamp,
    ) -> Result<Option<Saved>, String> {
        load(&Memory(parts.clone()), stamp).await
    }

    /// `saved`'s identities as (user, type, key), in order.
    fn rows(saved: &Saved) -> Vec<(u32, u8, Key)> {
        sorted(
            (0..saved.keys.len())
                .map(|i| (saved.users[i], saved.kinds[i], saved.keys[i]))
                .collect(),
        )
    }

    fn sorted<T: Ord>(mut items: Vec<T>) -> Vec<T> {
        items.sort_unstable();
        items
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
        let wanted = sorted(vec![
            (2, 1, key(1, "d1")),
            (4, 0, key(0, "u4")),
            (4, 1, key(1, "d4a")),
            (4, 1, key(1, "d4b")),
            (9, 0, key(0, "u9")),
        ]);
        assert_eq!(rows(&saved), wanted);
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
        let wanted = sorted(vec![
            (2, 1, key(1, "d1")),
            (2, 0, key(0, "u4")),
            (2, 1, key(1, "d4a")),
            (2, 1, key(1, "d4b")),
            (2, 0, key(0, "u9")),
            (2, 1, key(1, "d4c")),
            (10, 0, key(0, "u10")),
        ]);
        assert_eq!(rows(&saved), wanted);
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

    #[tokio::test]
    async fn a_base_larger_than_the_read_buffer_reads_back_whole() {
        let n = RECORDS_AT_ONCE * 2 + 1234;
        let mut g = Graph::new(vec![TypeRule::new("anonymous_id", 5)]);
        let keys: Vec<Key> = (0..n).map(|i| key(0, &format!("d{i}"))).collect();
        let kinds = vec![0u8; n];
        let users: Vec<u32> = (0..n as u32).map(|i| i / 3 + 1).collect();
        g.add_existing_many(&kinds, &keys, &users);
        let r = g.finish();
        let parts = HashMap::from([(
            part_name(0),
            encode_base(&stamp(1), &g, &r.user_of, &Settled::default()),
        )]);
        let saved = load_from(&parts, &stamp(1))
            .await
            .expect("whole")
            .expect("saved");
        let got = sorted(saved.keys.iter().copied().zip(saved.users).collect());
        assert_eq!(got, sorted(keys.into_iter().zip(users).collect()));
    }

    #[test]
    fn sparse_user_ids_are_grouped_too() {
        let user_of = [4_000_000_000, 3, 4_000_000_000, 0, 3];
        assert_eq!(grouped_by_user(&user_of), [3, 1, 4, 0, 2]);
        let dense = [2, 0, 2, 1];
        assert_eq!(grouped_by_user(&dense), [2, 0, 3, 1]);
    }
}
