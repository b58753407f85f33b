//! The identity graph: a union-find over identities whose unions obey the catalog's rules.
//!
//! Identities are 128-bit keys (xxh3 of the value, seeded by the type), so twenty million of
//! them fit in a few hundred megabytes and the chance of two distinct identities sharing a key
//! is below 10⁻²⁰. Existing people are loaded first as components that already carry their
//! user id; new links are then applied in a fixed order (time, then the identities), each
//! refused when the joined person would hold more identities of one type than the type's cap,
//! or when a type that may not join people would bridge two of them. When two people with ids
//! meet, the lower id survives.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use twox_hash::XxHash3_128;

use super::index::{KeyIndex, SHARDS, shard_of};

/// A hashed identity.
pub type Key = u128;

/// No user id yet.
pub const NO_USER: u32 = u32::MAX;

const NO_SLOT: u32 = u32::MAX;

/// The key of identity `value` of type number `ty`.
pub fn key(ty: u8, value: &str) -> Key {
    XxHash3_128::oneshot_with_seed(u64::from(ty) + 1, value.as_bytes())
}

/// Keys are already uniform hashes: the map uses their low bits as they are.
#[derive(Default)]
pub struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 = self.0.rotate_left(5) ^ u64::from_le_bytes(word);
        }
    }
    fn write_u128(&mut self, value: u128) {
        self.0 = self.0.rotate_left(29) ^ value as u64;
    }
    fn write_u64(&mut self, value: u64) {
        // Split keys and tuples hash their parts in turn; each part is already uniform.
        self.0 = self.0.rotate_left(29) ^ value;
    }
    fn write_usize(&mut self, _: usize) {}
    fn write_u32(&mut self, value: u32) {
        self.0 = u64::from(value).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

/// A hash map keyed by identity keys.
pub type KeyMap<V> = HashMap<Key, V, BuildHasherDefault<KeyHasher>>;

/// How one type may join people.
#[derive(Debug, Clone)]
pub struct TypeRule {
    /// Type name, for reasons.
    pub name: String,
    /// Most identities of the type one person may hold.
    pub cap: u32,
    /// Whether it may bridge two people.
    pub joins: bool,
}

impl TypeRule {
    /// A type that may join people, capped at `cap` per person.
    pub fn new(name: &str, cap: u32) -> TypeRule {
        TypeRule {
            name: name.to_string(),
            cap,
            joins: true,
        }
    }
}

/// One link between two identities, ordered by when it was first seen, then by the
/// identities (type, then the high bits of the key), so the order does not depend on how the
/// input was read. The order is packed into two words, compared first: the time, `a`'s type
/// and the top 56 bits of its key in one, `b`'s in the other. (Two identities of one type
/// whose keys share their top 56 bits, and links between them at the same microsecond,
/// happen with a chance below 10⁻¹⁰ in a run; only their order among themselves would then
/// follow the nodes.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Link {
    /// When it was first seen (offset to sort as unsigned), `a`'s type, `a`'s key.
    first: u128,
    /// `b`'s type and key.
    then: u64,
    /// Node of `a`.
    pub a: u32,
    /// Node of `b`.
    pub b: u32,
}

/// A type number above the top 56 bits of a key.
fn type_and_key(ty: u8, key: Key) -> u64 {
    (u64::from(ty) << 56) | ((key >> 72) as u64)
}

impl Link {
    /// The link between nodes `a` and `b` (keys `ka`, `kb`) first seen at `at`.
    pub fn new(at: i64, a: (u8, Key, u32), b: (u8, Key, u32)) -> Link {
        let at = (at as u64) ^ (1 << 63);
        Link {
            first: (u128::from(at) << 64) | u128::from(type_and_key(a.0, a.1)),
            then: type_and_key(b.0, b.1),
            a: a.2,
            b: b.2,
        }
    }

    /// When it was first seen (UTC µs).
    pub fn at(&self) -> i64 {
        (((self.first >> 64) as u64) ^ (1 << 63)) as i64
    }

    /// Type number of `a` (priority: 0 is strongest).
    pub fn a_type(&self) -> u8 {
        (self.first as u64 >> 56) as u8
    }

    /// Type number of `b`.
    pub fn b_type(&self) -> u8 {
        (self.then >> 56) as u8
    }
}

/// Sorts `items` on every core: one run per core, each sorted on its own thread. Read them
/// in order with [`merged`].
pub fn sorted_runs<T: Ord + Send>(mut items: Vec<T>) -> Vec<Vec<T>> {
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    let per = items.len().div_ceil(threads).max(1 << 16);
    let mut runs = Vec::with_capacity(threads);
    while items.len() > per {
        runs.push(items.split_off(items.len() - per));
    }
    runs.push(items);
    runs.reverse();
    std::thread::scope(|scope| {
        for run in runs.iter_mut() {
            scope.spawn(move || run.sort_unstable());
        }
    });
    runs
}

/// The items of sorted runs in one sorted order.
pub fn merged<T: Ord>(runs: &[Vec<T>]) -> impl Iterator<Item = &T> {
    let mut heads = vec![0usize; runs.len()];
    std::iter::from_fn(move || {
        let mut best: Option<(usize, &T)> = None;
        for (r, run) in runs.iter().enumerate() {
            if let Some(x) = run.get(heads[r])
                && best.is_none_or(|(_, b)| x < b)
            {
                best = Some((r, x));
            }
        }
        let (r, x) = best?;
        heads[r] += 1;
        Some(x)
    })
}

/// What happened to a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The two identities were in different people, now one.
    Joined,
    /// They already belonged to the same person.
    Already,
    /// A rule refused it; the reason says which.
    Refused(String),
}

/// Links per block in [`Graph::link_each`], keys per block while [`Graph::nodes`] indexes
/// them.
const LINK_BLOCK: usize = 64;

/// Marks a position, not a node, while [`Graph::nodes`] numbers new identities.
const NEW: u32 = 1 << 31;

/// The result of a scoped thread; a panic in it is raised again here.
pub(crate) fn join<T>(handle: std::thread::ScopedJoinHandle<'_, T>) -> T {
    handle
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// What the union-find keeps per identity: twelve bytes, so tens of millions fit.
#[derive(Debug, Clone, Copy)]
struct Node {
    parent: u32,
    /// At a root: its slot in [`Graph::roots`], or NO_SLOT for a single identity without an
    /// existing user (size 1, its own type counted once, no user).
    slot: u32,
    kind: u8,
    /// Set by [`Graph::finish`] at a root once its person has a user id: `slot` then holds
    /// the id, so the other identities of the person find it in the root they already read.
    named: bool,
}

/// A root's slot holds its per-type counts (their sum is the person's size), then the
/// lowest existing user id at this offset past them.
const USER: usize = 0;

/// The union-find with per-type caps.
pub struct Graph {
    rules: Vec<TypeRule>,
    /// Key → node.
    index: KeyIndex,
    nodes: Vec<Node>,
    /// Slots of `stride` words: per-type counts, lowest existing user.
    roots: Vec<u32>,
    stride: usize,
    free_slots: Vec<u32>,
    /// A node of each existing user.
    user_node: UserNodes,
    max_user: Option<u32>,
}

/// Users given their ids past this many more than they number are kept in a map.
const SPARSE_USERS: usize = 1 << 20;

/// A node of each existing user. User ids are dense, so a node is found by the id's place
/// in a vector, and existing people, loaded in order of their ids, fill it in order rather
/// than at scattered places of a hash table. An id far beyond the number of users (the
/// vector would be mostly empty) is kept in a map instead.
#[derive(Default)]
struct UserNodes {
    /// The node of each user id below its length (`NO_SLOT`: none).
    dense: Vec<u32>,
    sparse: HashMap<u32, u32, BuildHasherDefault<KeyHasher>>,
    len: usize,
}

impl UserNodes {
    fn get(&self, user: u32) -> Option<u32> {
        match self.dense.get(user as usize) {
            Some(&NO_SLOT) => None,
            Some(&node) => Some(node),
            None => self.sparse.get(&user).copied(),
        }
    }

    /// Room for users up to `highest`, `count` of them, when they are dense enough.
    fn reserve(&mut self, highest: u32, count: usize) {
        let wanted = highest as usize + 1;
        if wanted > self.dense.len() && wanted <= 2 * (self.len + count) + SPARSE_USERS {
            self.dense.resize(wanted, NO_SLOT);
        }
    }

    /// Records `node` for `user`, who has none yet.
    fn insert(&mut self, user: u32, node: u32) {
        self.len += 1;
        self.reserve(user, 1);
        match self.dense.get_mut(user as usize) {
            Some(slot) => *slot = node,
            None => {
                self.sparse.insert(user, node);
            }
        }
    }

    /// Every (user, node).
    fn iter(&self) -> impl Iterator<Item = (u32, u32)> + '_ {
        self.dense
            .iter()
            .enumerate()
            .filter(|(_, node)| **node != NO_SLOT)
            .map(|(user, node)| (user as u32, *node))
            .chain(self.sparse.iter().map(|(u, n)| (*u, *n)))
    }
}

impl Graph {
    /// An empty graph under `rules` (index = type number).
    pub fn new(rules: Vec<TypeRule>) -> Graph {
        let stride = rules.len() + 1;
        Graph {
            rules,
            index: KeyIndex::default(),
            nodes: Vec::new(),
            roots: Vec::new(),
            stride,
            free_slots: Vec::new(),
            user_node: UserNodes::default(),
            max_user: None,
        }
    }

    /// Room for `n` identities.
    pub fn reserve(&mut self, n: usize) {
        self.index.reserve(self.nodes.len() + n);
        self.nodes.reserve(n);
        // People of two or more identities: at most half of them (address space only until
        // used).
        self.roots.reserve(n / 2 * self.stride);
    }

    /// Number of identities.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// True when there is no identity.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The highest user id seen.
    pub fn max_user(&self) -> Option<u32> {
        self.max_user
    }

    /// Every identity's key and node.
    pub(super) fn identities(&self) -> impl Iterator<Item = (Key, u32)> + '_ {
        self.index.entries()
    }

    /// The node of `key`, if known.
    pub fn find_key(&self, key: Key) -> Option<u32> {
        self.index.get(key)
    }

    /// The node of `key`, created (as a person of its own) if new.
    pub fn node(&mut self, ty: u8, key: Key) -> u32 {
        let n = self.nodes.len() as u32;
        let found = self.index.get_or_insert(key, n);
        if found != n {
            return found;
        }
        self.nodes.push(Node {
            parent: n,
            slot: NO_SLOT,
            kind: ty,
            named: false,
        });
        n
    }

    /// The nodes of many identities at once, `kinds[i]` the type of `keys[i]` (created when
    /// new, numbered in the order of the input, like calling [`Graph::node`] on each in
    /// turn), several times faster for millions: the identities are grouped by shard first,
    /// so every shard's table is filled while it is in cache rather than touched at random,
    /// and the cores share the work (input by ranges, shards by ranges).
    pub fn nodes(&mut self, kinds: &[u8], keys: &[Key]) -> Vec<u32> {
        let threads = std::thread::available_parallelism().map_or(1, usize::from);
        self.nodes_on(kinds, keys, threads)
    }

    fn nodes_on(&mut self, kinds: &[u8], keys: &[Key], threads: usize) -> Vec<u32> {
        use std::sync::atomic::{AtomicU32, Ordering::Relaxed};

        assert_eq!(kinds.len(), keys.len(), "one type per key");
        assert!(
            keys.len() < NEW as usize,
            "fewer than 2³¹ identities at once"
        );
        let n = keys.len();
        let threads = threads.clamp(1, n.div_ceil(4096).max(1));
        let chunk = n.div_ceil(threads).max(1);
        let ranges: Vec<std::ops::Range<usize>> = (0..threads)
            .map(|t| (t * chunk).min(n)..((t + 1) * chunk).min(n))
            .collect();
        // Shards split between the threads, each thread's shards contiguous.
        let shard_ranges: Vec<std::ops::Range<usize>> = (0..threads)
            .map(|t| t * SHARDS / threads..(t + 1) * SHARDS / threads)
            .collect();

        // Group input positions by shard: a counting sort, each thread counting and placing
        // its own range, so a shard's positions stay in input order.
        let counts: Vec<Vec<usize>> = std::thread::scope(|scope| {
            let handles: Vec<_> = ranges
                .iter()
                .map(|r| {
                    let keys = &keys[r.clone()];
                    scope.spawn(move || {
                        let mut c = vec![0usize; SHARDS];
                        for k in keys {
                            c[shard_of(*k)] += 1;
                        }
                        c
                    })
                })
                .collect();
            handles.into_iter().map(join).collect()
        });
        let mut starts = vec![0usize; SHARDS + 1];
        let mut fills: Vec<Vec<usize>> = vec![vec![0; SHARDS]; threads];
        let mut at = 0;
        for s in 0..SHARDS {
            starts[s] = at;
            for t in 0..threads {
                fills[t][s] = at;
                at += counts[t][s];
            }
        }
        starts[SHARDS] = at;
        let order: Vec<AtomicU32> = (0..n).map(|_| AtomicU32::new(0)).collect();
        std::thread::scope(|scope| {
            for (r, mut fill) in ranges.iter().zip(fills) {
                let (keys, order, first) = (&keys[r.clone()], &order, r.start);
                scope.spawn(move || {
                    for (i, k) in keys.iter().enumerate() {
                        let s = shard_of(*k);
                        order[fill[s]].store((first + i) as u32, Relaxed);
                        fill[s] += 1;
                    }
                });
            }
        });

        // Per shard: the node of known keys, or the first position of each new key, marked.
        let found: Vec<AtomicU32> = (0..n).map(|_| AtomicU32::new(0)).collect();
        let per_shard: Vec<usize> = (0..SHARDS).map(|s| starts[s + 1] - starts[s]).collect();
        self.index.reserve_shards(&per_shard);
        let mut parts = self.index.split_shards(&shard_ranges);
        std::thread::scope(|scope| {
            for (part, r) in parts.iter_mut().zip(&shard_ranges) {
                let (order, found, starts) = (&order, &found, &starts);
                scope.spawn(move || {
                    // The keys of a block are gathered before any is inserted: the reads,
                    // scattered over the input, then overlap their cache misses.
                    let mut block = [(0u32, 0 as Key); LINK_BLOCK];
                    for positions in order[starts[r.start]..starts[r.end]].chunks(LINK_BLOCK) {
                        for (got, o) in block.iter_mut().zip(positions) {
                            let i = o.load(Relaxed);
                            *got = (i, keys[i as usize]);
                        }
                        for (i, key) in &block[..positions.len()] {
                            let value = part.get_or_insert(*key, NEW | i);
                            found[*i as usize].store(value, Relaxed);
                        }
                    }
                });
            }
        });
        drop(order);

        // New identities are numbered in input order: each range counts its first sightings,
        // then numbers them from its offset and writes their nodes.
        let firsts: Vec<usize> = std::thread::scope(|scope| {
            let handles: Vec<_> = ranges
                .iter()
                .map(|r| {
                    let (found, r) = (&found, r.clone());
                    scope.spawn(move || {
                        r.filter(|&i| found[i].load(Relaxed) == NEW | i as u32)
                            .count()
                    })
                })
                .collect();
            handles.into_iter().map(join).collect()
        });
        let base = self.nodes.len();
        let added: usize = firsts.iter().sum();
        self.nodes.resize(
            base + added,
            Node {
                parent: 0,
                slot: NO_SLOT,
                kind: 0,
                named: false,
            },
        );
        let mut rest: &mut [Node] = &mut self.nodes[base..];
        let mut offset = base;
        std::thread::scope(|scope| {
            for (r, count) in ranges.iter().zip(&firsts) {
                let (part, tail) = std::mem::take(&mut rest).split_at_mut(*count);
                rest = tail;
                let (found, r, mut next) = (&found, r.clone(), offset);
                offset += count;
                scope.spawn(move || {
                    let mut slots = part.iter_mut();
                    for i in r {
                        if found[i].load(Relaxed) == NEW | i as u32
                            && let Some(node) = slots.next()
                        {
                            node.parent = next as u32;
                            node.kind = kinds[i];
                            found[i].store(next as u32, Relaxed);
                            next += 1;
                        }
                    }
                });
            }
        });
        // Later sightings of a new identity take the number of its first.
        std::thread::scope(|scope| {
            for r in &ranges {
                let (found, r) = (&found, r.clone());
                scope.spawn(move || {
                    for i in r {
                        let v = found[i].load(Relaxed);
                        if v & NEW != 0 {
                            found[i].store(found[(v & !NEW) as usize].load(Relaxed), Relaxed);
                        }
                    }
                });
            }
        });
        // Replace the marks left in the shards by the node numbers.
        if added > 0 {
            std::thread::scope(|scope| {
                for part in parts.iter_mut() {
                    let found = &found;
                    scope.spawn(move || {
                        part.update(|v| {
                            if v & NEW != 0 {
                                found[(v & !NEW) as usize].load(Relaxed)
                            } else {
                                v
                            }
                        });
                    });
                }
            });
        }
        found.into_iter().map(AtomicU32::into_inner).collect()
    }

    /// Loads an identity that already belongs to `user`, without checking rules (the stored
    /// state obeyed them when it was made).
    pub fn add_existing(&mut self, ty: u8, key: Key, user: u32) {
        let n = self.node(ty, key);
        self.attach(n, user);
    }

    /// [`Graph::add_existing`] for many identities at once, `kinds[i]` the type of `keys[i]`
    /// and `users[i]` its person: the nodes are made as [`Graph::nodes`] makes them (on every
    /// core), then each joins its person. Identities of one person in a row (as
    /// `identity_links` stores them, sorted by user id) join the previous one directly.
    pub fn add_existing_many(&mut self, kinds: &[u8], keys: &[Key], users: &[u32]) {
        assert_eq!(keys.len(), users.len(), "one user per key");
        let nodes = self.nodes(kinds, keys);
        let groups = 1 + users.windows(2).filter(|w| w[0] != w[1]).count();
        if let Some(highest) = users.iter().max() {
            self.user_node.reserve(*highest, groups);
        }
        let mut previous: Option<(u32, u32)> = None;
        for (n, user) in nodes.into_iter().zip(users.iter().copied()) {
            match previous {
                Some((p, u)) if u == user => {
                    let root = self.nodes[p as usize].parent;
                    let node = self.nodes[n as usize];
                    if self.nodes[root as usize].parent == root
                        && node.parent == n
                        && node.slot == NO_SLOT
                        && n > root
                    {
                        // A new identity alone joins the person's root, as `union_roots`
                        // would join them (the root is the larger, or the lower of two alone),
                        // without finding either root or sizing them.
                        let at = self.slot_of(root);
                        self.roots[at + node.kind as usize] += 1;
                        self.nodes[n as usize].parent = root;
                    } else {
                        let (a, b) = (self.find(n), self.find(p));
                        if a != b {
                            self.union_roots(a, b);
                        }
                    }
                }
                _ => self.attach(n, user),
            }
            previous = Some((n, user));
        }
    }

    /// Joins node `n` to existing person `user`.
    fn attach(&mut self, n: u32, user: u32) {
        self.max_user = Some(self.max_user.map_or(user, |m| m.max(user)));
        match self.user_node.get(user) {
            None => {
                self.user_node.insert(user, n);
                let root = self.find(n);
                let at = self.slot_of(root) + self.rules.len() + USER;
                self.roots[at] = self.roots[at].min(user);
            }
            Some(other) => {
                let (a, b) = (self.find(n), self.find(other));
                if a != b {
                    self.union_roots(a, b);
                }
            }
        }
    }

    /// Notes that `user` was used before (merged away or split), so new ids stay above it.
    pub fn reserve_user(&mut self, user: u32) {
        self.max_user = Some(self.max_user.map_or(user, |m| m.max(user)));
    }

    /// The root of `n`'s set, as [`Graph::find`] finds it but without shortening paths, so
    /// that several threads can ask at once.
    pub fn root(&self, mut n: u32) -> u32 {
        loop {
            let parent = self.nodes[n as usize].parent;
            if parent == n {
                return n;
            }
            n = parent;
        }
    }

    /// The root of node `n`.
    pub fn find(&mut self, mut n: u32) -> u32 {
        loop {
            let parent = self.nodes[n as usize].parent;
            if parent == n {
                return n;
            }
            let grand = self.nodes[parent as usize].parent;
            self.nodes[n as usize].parent = grand;
            n = grand;
        }
    }

    /// The start of `root`'s slot, given one if it has none.
    fn slot_of(&mut self, root: u32) -> usize {
        let types = self.rules.len();
        let node = self.nodes[root as usize];
        if node.slot != NO_SLOT {
            return node.slot as usize * self.stride;
        }
        let s = match self.free_slots.pop() {
            Some(s) => s,
            None => {
                self.roots.extend(std::iter::repeat_n(0, self.stride));
                (self.roots.len() / self.stride - 1) as u32
            }
        };
        let at = s as usize * self.stride;
        self.roots[at..at + types].fill(0);
        self.roots[at + node.kind as usize] = 1;
        self.roots[at + types + USER] = NO_USER;
        self.nodes[root as usize].slot = s;
        at
    }

    /// Number of identities of `root`'s person.
    fn size(&self, root: u32) -> u32 {
        match self.nodes[root as usize].slot {
            NO_SLOT => 1,
            s => {
                let at = s as usize * self.stride;
                self.roots[at..at + self.rules.len()].iter().sum()
            }
        }
    }

    fn count(&self, root: u32, ty: usize) -> u32 {
        let node = &self.nodes[root as usize];
        match node.slot {
            NO_SLOT => u32::from(node.kind as usize == ty),
            s => self.roots[s as usize * self.stride + ty],
        }
    }

    /// Calls `each` with the graph on every item of `items`, in order, as a loop over them
    /// calling [`Graph::link`] would; `ends` gives the two nodes an item links. Items go by
    /// blocks of [`LINK_BLOCK`], and what linking a block reads first is read for all of its
    /// items before any is linked: those reads do not wait on one another, so the processor
    /// overlaps their cache misses, where a link at a time would wait for each in turn (the
    /// nodes of a large graph are far apart in memory and seldom in cache).
    pub fn link_each<T: Copy>(
        &mut self,
        items: impl IntoIterator<Item = T>,
        ends: impl Fn(&T) -> (u32, u32),
        mut each: impl FnMut(&mut Graph, T),
    ) {
        let mut items = items.into_iter();
        let mut block: Vec<T> = Vec::with_capacity(LINK_BLOCK);
        loop {
            block.clear();
            block.extend(items.by_ref().take(LINK_BLOCK));
            if block.is_empty() {
                return;
            }
            let mut sum = 0u32;
            for item in &block {
                let (a, b) = ends(item);
                sum = sum.wrapping_add(self.warm(a)).wrapping_add(self.warm(b));
            }
            std::hint::black_box(sum);
            for item in &block {
                each(self, *item);
            }
        }
    }

    /// Reads what finding node `n`'s person reads first: the node, its parent and the
    /// parent's slot (a value to keep the reads from being left out).
    fn warm(&self, n: u32) -> u32 {
        let Some(node) = self.nodes.get(n as usize) else {
            return 0;
        };
        let Some(parent) = self.nodes.get(node.parent as usize) else {
            return 0;
        };
        let slot = match parent.slot {
            NO_SLOT => 0,
            s => self
                .roots
                .get(s as usize * self.stride)
                .copied()
                .unwrap_or(0),
        };
        parent.parent.wrapping_add(slot)
    }

    /// Applies one link under the rules.
    pub fn link(&mut self, a: u32, b: u32) -> Outcome {
        let (ra, rb) = (self.find(a), self.find(b));
        if ra == rb {
            return Outcome::Already;
        }
        let bridges = self.size(ra) > 1 && self.size(rb) > 1;
        for x in [a, b] {
            let rule = &self.rules[self.nodes[x as usize].kind as usize];
            if bridges && !rule.joins {
                return Outcome::Refused(format!("rule: {} does not join people", rule.name));
            }
        }
        for (ty, rule) in self.rules.iter().enumerate() {
            let total = self.count(ra, ty) + self.count(rb, ty);
            if total > rule.cap {
                return Outcome::Refused(format!(
                    "cap: the person would hold {total} {} (cap {})",
                    rule.name, rule.cap
                ));
            }
        }
        self.union_roots(ra, rb);
        Outcome::Joined
    }

    fn union_roots(&mut self, ra: u32, rb: u32) {
        let (big, small) = {
            let (sa, sb) = (self.size(ra), self.size(rb));
            if sa > sb || (sa == sb && ra < rb) {
                (ra, rb)
            } else {
                (rb, ra)
            }
        };
        let types = self.rules.len();
        let at = self.slot_of(big);
        let small_node = self.nodes[small as usize];
        match small_node.slot {
            NO_SLOT => self.roots[at + small_node.kind as usize] += 1,
            other => {
                let from = other as usize * self.stride;
                for ty in 0..types {
                    self.roots[at + ty] += self.roots[from + ty];
                }
                let user = self.roots[from + types + USER];
                let into = &mut self.roots[at + types + USER];
                *into = (*into).min(user);
                self.free_slots.push(other);
                self.nodes[small as usize].slot = NO_SLOT;
            }
        }
        self.nodes[small as usize].parent = big;
    }

    /// Gives every person without an id the next ids, in node order (so the order in which
    /// identities first appeared decides), and returns the final user id of every node and
    /// the merges of existing users (from, into), sorted. Called once, at the end of a run.
    pub fn finish(&mut self) -> Resolution {
        let mut next = self.max_user.map_or(1, |m| m + 1);
        let nodes = self.nodes.len();
        let mut user_of = vec![NO_USER; nodes];
        let user_at = self.rules.len() + USER;
        for n in 0..nodes as u32 {
            let root = self.find(n) as usize;
            let node = self.nodes[root];
            if !node.named {
                let existing = match node.slot {
                    NO_SLOT => NO_USER,
                    s => self.roots[s as usize * self.stride + user_at],
                };
                let user = if existing == NO_USER {
                    next += 1;
                    next - 1
                } else {
                    existing
                };
                self.nodes[root].slot = user;
                self.nodes[root].named = true;
            }
            user_of[n as usize] = self.nodes[root].slot;
        }
        let mut merges: Vec<(u32, u32)> = Vec::new();
        for (user, node) in self.user_node.iter() {
            let into = user_of[node as usize];
            if into != user {
                merges.push((user, into));
            }
        }
        merges.sort_unstable();
        Resolution {
            user_of,
            merges,
            next_user: next,
        }
    }

    /// The user id of `n`'s person (NO_USER when new). Read it before [`Graph::finish`].
    pub fn root_user(&mut self, n: u32) -> u32 {
        let root = self.find(n);
        match self.nodes[root as usize].slot {
            NO_SLOT => NO_USER,
            s => self.roots[s as usize * self.stride + self.rules.len() + USER],
        }
    }

    /// Type number of node `n`.
    pub fn kind(&self, n: u32) -> u8 {
        self.nodes[n as usize].kind
    }
}

/// The outcome of a merge run.
#[derive(Debug, Clone)]
pub struct Resolution {
    /// Final user id of every node.
    pub user_of: Vec<u32>,
    /// Existing users absorbed into another: (from, into), from > into.
    pub merges: Vec<(u32, u32)>,
    /// The next free user id.
    pub next_user: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> Vec<TypeRule> {
        vec![
            TypeRule::new("login_id", 1),
            TypeRule::new("phone", 2),
            TypeRule::new("anonymous_id", 3),
        ]
    }

    #[test]
    fn user_nodes_are_found_by_id_and_a_stray_large_id_does_not_size_the_vector() {
        let mut users = UserNodes::default();
        users.reserve(9, 5);
        for (user, node) in [(0, 10), (3, 13), (9, 19)] {
            users.insert(user, node);
        }
        // Beyond the reserved ids, near enough: the vector grows.
        users.insert(12, 22);
        // Far beyond the number of users: kept aside.
        users.insert(4_000_000_000, 7);
        assert!(users.dense.len() <= 13, "{}", users.dense.len());
        assert_eq!(users.get(0), Some(10));
        assert_eq!(users.get(3), Some(13));
        assert_eq!(users.get(12), Some(22));
        assert_eq!(users.get(4_000_000_000), Some(7));
        for none in [1, 10, 13, 100, u32::MAX] {
            assert_eq!(users.get(none), None, "{none}");
        }
        let mut all: Vec<_> = users.iter().collect();
        all.sort_unstable();
        assert_eq!(
            all,
            [(0, 10), (3, 13), (9, 19), (12, 22), (4_000_000_000, 7)]
        );
    }

    #[test]
    fn a_chain_is_one_person_and_caps_refuse_with_a_reason() {
        let mut g = Graph::new(rules());
        let login = g.node(0, key(0, "u1"));
        let d1 = g.node(2, key(2, "d1"));
        let d2 = g.node(2, key(2, "d2"));
        let d3 = g.node(2, key(2, "d3"));
        let d4 = g.node(2, key(2, "d4"));
        assert_eq!(g.link(login, d1), Outcome::Joined);
        assert_eq!(g.link(d1, d2), Outcome::Joined);
        assert_eq!(g.link(d2, d3), Outcome::Joined);
        assert_eq!(g.link(d1, d3), Outcome::Already);
        match g.link(d3, d4) {
            Outcome::Refused(reason) => {
                assert!(reason.contains("anonymous_id (cap 3)"), "{reason}")
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        let second = g.node(0, key(0, "u2"));
        assert!(matches!(g.link(second, d1), Outcome::Refused(_)));
        let r = g.finish();
        assert_eq!(r.user_of[login as usize], 1);
        assert_eq!(r.user_of[d3 as usize], 1);
        assert_eq!(r.user_of[d4 as usize], 2);
        assert_eq!(r.user_of[second as usize], 3);
        assert!(r.merges.is_empty());
    }

    #[test]
    fn existing_people_keep_their_ids_and_the_lower_id_survives_a_merge() {
        let mut g = Graph::new(rules());
        g.add_existing(2, key(2, "d1"), 7);
        g.add_existing(1, key(1, "p1"), 7);
        g.add_existing(2, key(2, "d2"), 4);
        g.reserve_user(9);
        let d1 = g.node(2, key(2, "d1"));
        let d2 = g.node(2, key(2, "d2"));
        let fresh = g.node(2, key(2, "d3"));
        assert_eq!(g.link(d1, d2), Outcome::Joined);
        let r = g.finish();
        assert_eq!(r.user_of[d1 as usize], 4);
        assert_eq!(r.user_of[d2 as usize], 4);
        assert_eq!(r.merges, vec![(7, 4)]);
        assert_eq!(
            r.user_of[fresh as usize], 10,
            "new ids start above every id ever used"
        );
    }

    #[test]
    fn bulk_nodes_match_one_at_a_time() {
        let ids: Vec<(u8, Key)> = (0..50_000u32)
            .map(|i| {
                let v = i % 32_173;
                let ty = (v % 3) as u8;
                (ty, key(ty, &format!("v{v}")))
            })
            .collect();
        let (kinds, keys): (Vec<u8>, Vec<Key>) = ids.iter().copied().unzip();
        let mut one = Graph::new(rules());
        one.node(1, ids[7].1);
        let singles: Vec<u32> = ids.iter().map(|(t, k)| one.node(*t, *k)).collect();
        for threads in [1, 2, 3, 7] {
            let mut bulk = Graph::new(rules());
            let known = bulk.node(1, ids[7].1);
            let together = bulk.nodes_on(&kinds, &keys, threads);
            assert_eq!(singles, together, "{threads} threads");
            assert_eq!(together[7], known);
            assert_eq!(one.len(), bulk.len());
            for (i, (t, k)) in ids.iter().enumerate() {
                assert_eq!(one.find_key(*k), bulk.find_key(*k));
                let node = bulk.nodes[together[i] as usize];
                assert_eq!(node.kind, *t);
                assert_eq!(node.parent, together[i], "a new node is its own root");
            }
        }
    }

    #[test]
    fn existing_identities_load_in_bulk_as_one_at_a_time() {
        // People of one to four identities, mostly in runs by user (as identity_links is
        // sorted), with a few of a person's identities stored apart, and one person stored
        // under two user ids (7 and 3 share an identity: they meet, the lower id survives).
        let mut rows: Vec<(u8, Key, u32)> = Vec::new();
        for user in 1..2_000u32 {
            for i in 0..(user % 4 + 1) {
                let ty = (i % 3) as u8;
                rows.push((ty, key(ty, &format!("u{user}-{i}")), user));
            }
        }
        for user in (5..2_000u32).step_by(97) {
            rows.push((2, key(2, &format!("apart-{user}")), user));
        }
        rows.push((1, key(1, "u3-1"), 7));
        let mut one = Graph::new(rules());
        for (ty, k, user) in &rows {
            one.add_existing(*ty, *k, *user);
        }
        let mut bulk = Graph::new(rules());
        let kinds: Vec<u8> = rows.iter().map(|r| r.0).collect();
        let keys: Vec<Key> = rows.iter().map(|r| r.1).collect();
        let users: Vec<u32> = rows.iter().map(|r| r.2).collect();
        bulk.add_existing_many(&kinds, &keys, &users);
        assert_eq!(one.len(), bulk.len());
        assert_eq!(one.max_user(), bulk.max_user());
        // Each person counts the same identities of every type (what caps are checked on).
        for (_, k, _) in &rows {
            let ra = one.find(one.find_key(*k).expect("known"));
            let rb = bulk.find(bulk.find_key(*k).expect("known"));
            for ty in 0..one.rules.len() {
                assert_eq!(one.count(ra, ty), bulk.count(rb, ty));
            }
        }
        let (a, b) = (one.finish(), bulk.finish());
        for (_, k, _) in &rows {
            let (na, nb) = (one.find_key(*k), bulk.find_key(*k));
            assert_eq!(na, nb);
            let (na, nb) = (na.expect("known") as usize, nb.expect("known") as usize);
            assert_eq!(a.user_of[na], b.user_of[nb]);
        }
        assert_eq!(a.merges, b.merges);
        assert_eq!(b.merges, vec![(7, 3)]);
    }

    #[test]
    fn links_order_by_time_then_types_then_keys_and_read_back() {
        let k = |ty: u8, v: &str| (ty, key(ty, v), 0u32);
        let early = Link::new(-5, k(2, "d"), k(2, "e"));
        let late = Link::new(3, k(0, "u"), k(1, "p"));
        assert!(early < late, "a time before 1970 sorts first");
        assert_eq!((early.at(), early.a_type(), early.b_type()), (-5, 2, 2));
        assert_eq!((late.at(), late.a_type(), late.b_type()), (3, 0, 1));
        let strong = Link::new(3, k(0, "zz"), k(2, "d"));
        let weak = Link::new(3, k(1, "aa"), k(0, "d"));
        assert!(strong < weak, "at one time, the stronger type of a first");
        let (x, y) = (key(2, "x"), key(2, "y"));
        let by_key = |ka: Key| Link::new(3, (0, key(0, "u"), 1), (2, ka, 9));
        assert_eq!(by_key(x) < by_key(y), (x >> 72) < (y >> 72), "then b's key");
        assert_eq!(Link::new(i64::MIN, k(0, "a"), k(0, "b")).at(), i64::MIN);
        assert_eq!(Link::new(i64::MAX, k(0, "a"), k(0, "b")).at(), i64::MAX);
    }

    #[test]
    fn sorted_runs_read_back_in_one_order() {
        for n in [0usize, 1, 5, 70_000, 200_001] {
            let items: Vec<u64> = (0..n as u64)
                .map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15) % 1000)
                .collect();
            let runs = sorted_runs(items.clone());
            let mut expected = items;
            expected.sort();
            assert_eq!(
                merged(&runs).copied().collect::<Vec<_>>(),
                expected,
                "{n} items"
            );
        }
    }

    #[test]
    fn a_type_that_does_not_join_attaches_but_never_bridges() {
        let mut rules = rules();
        rules[1].joins = false;
        let mut g = Graph::new(rules);
        let (a, b) = (g.node(0, key(0, "a")), g.node(0, key(0, "b")));
        let (da, db) = (g.node(2, key(2, "da")), g.node(2, key(2, "db")));
        let phone = g.node(1, key(1, "p"));
        assert_eq!(g.link(a, da), Outcome::Joined);
        assert_eq!(g.link(b, db), Outcome::Joined);
        assert_eq!(g.link(phone, da), Outcome::Joined);
        assert!(
            matches!(g.link(phone, db), Outcome::Refused(r) if r.contains("phone does not join"))
        );
    }

    mod property {
        use std::collections::{BTreeSet, HashMap, VecDeque};

        use proptest::prelude::*;

        use super::super::*;

        /// The reference: people as explicit sets, merged link by link with caps counted
        /// from their members; the partition is then read off the accepted links by BFS.
        fn reference(kinds: &[u8], caps: &[u32], links: &[(usize, usize)]) -> Vec<BTreeSet<usize>> {
            let mut person: Vec<usize> = (0..kinds.len()).collect();
            let mut members: HashMap<usize, Vec<usize>> =
                (0..kinds.len()).map(|i| (i, vec![i])).collect();
            let mut accepted: Vec<Vec<usize>> = vec![Vec::new(); kinds.len()];
            for &(a, b) in links {
                let (pa, pb) = (person[a], person[b]);
                if pa == pb {
                    continue;
                }
                let fits = (0..caps.len()).all(|t| {
                    let count = members[&pa]
                        .iter()
                        .chain(members[&pb].iter())
                        .filter(|m| kinds[**m] as usize == t)
                        .count() as u32;
                    count <= caps[t]
                });
                if !fits {
                    continue;
                }
                accepted[a].push(b);
                accepted[b].push(a);
                let moved = members.remove(&pb).unwrap_or_default();
                for m in &moved {
                    person[*m] = pa;
                }
                members.entry(pa).or_default().extend(moved);
            }
            let mut seen = vec![false; kinds.len()];
            let mut parts = Vec::new();
            for start in 0..kinds.len() {
                if seen[start] {
                    continue;
                }
                let mut part = BTreeSet::new();
                let mut queue = VecDeque::from([start]);
                seen[start] = true;
                while let Some(n) = queue.pop_front() {
                    part.insert(n);
                    for &m in &accepted[n] {
                        if !seen[m] {
                            seen[m] = true;
                            queue.push_back(m);
                        }
                    }
                }
                parts.push(part);
            }
            parts.sort();
            parts
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(300))]
            #[test]
            fn the_partition_equals_the_reference(
                kinds in proptest::collection::vec(0u8..3, 1..40),
                caps in proptest::collection::vec(1u32..4, 3),
                raw_links in proptest::collection::vec((0usize..40, 0usize..40), 0..200),
            ) {
                let n = kinds.len();
                let links: Vec<(usize, usize)> = raw_links
                    .into_iter()
                    .map(|(a, b)| (a % n, b % n))
                    .filter(|(a, b)| a != b)
                    .collect();
                let rules = (0..3)
                    .map(|t| TypeRule::new(&format!("t{t}"), caps[t]))
                    .collect();
                let mut g = Graph::new(rules);
                let nodes: Vec<u32> = kinds
                    .iter()
                    .enumerate()
                    .map(|(i, k)| g.node(*k, key(*k, &format!("id{i}"))))
                    .collect();
                // In blocks of 64, so more than one block often.
                let mut applied = Vec::new();
                g.link_each(
                    &links,
                    |(a, b)| (nodes[*a], nodes[*b]),
                    |g, &(a, b)| {
                        applied.push((a, b));
                        g.link(nodes[a], nodes[b]);
                    },
                );
                prop_assert_eq!(&applied, &links);
                let r = g.finish();
                let mut by_user: HashMap<u32, BTreeSet<usize>> = HashMap::new();
                for (i, node) in nodes.iter().enumerate() {
                    by_user.entry(r.user_of[*node as usize]).or_default().insert(i);
                }
                let mut parts: Vec<BTreeSet<usize>> = by_user.into_values().collect();
                parts.sort();
                prop_assert_eq!(parts, reference(&kinds, &caps, &links));
                // Ids are dense: 1..=people.
                let users: BTreeSet<u32> = r.user_of.iter().copied().collect();
                prop_assert_eq!(users, (1..=users_len(&r)).collect::<BTreeSet<u32>>());
            }
        }

        fn users_len(r: &Resolution) -> u32 {
            r.user_of.iter().copied().collect::<BTreeSet<u32>>().len() as u32
        }
    }
}
