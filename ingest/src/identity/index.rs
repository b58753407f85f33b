//! The identity graph's index from key to node: one open-addressing table in one allocation,
//! cut into equal shards by the key's top 12 bits.
//!
//! Keys are uniform hashes, so a key's place in its shard is simply its next bits and a
//! collision moves to the next slot (linear probing, wrapping inside the shard). Bulk inserts
//! go shard by shard, each shard a few hundred kilobytes that stay in cache while it fills,
//! and the cores each take a contiguous range of shards. One allocation rather than thousands
//! of small tables: millions of identities are indexed without the allocator handing pages
//! back and faulting them in again between tables.

use std::ops::Range;

use super::graph::Key;

const SHARD_BITS: u32 = 12;

/// Number of shards.
pub(super) const SHARDS: usize = 1 << SHARD_BITS;

/// One entry: the key's four words, then its value plus one (0: vacant). All zero is a
/// vacant slot, so a new table is zeroed memory that the kernel hands over as it is first
/// touched, on whichever core fills that shard.
type Slot = [u32; 5];

/// The four words of a key, low first.
fn words(key: Key) -> [u32; 4] {
    [
        key as u32,
        (key >> 32) as u32,
        (key >> 64) as u32,
        (key >> 96) as u32,
    ]
}

fn slot_key(slot: &Slot) -> Key {
    slot[..4]
        .iter()
        .rev()
        .fold(0, |key, word| (key << 32) | Key::from(*word))
}

/// The shard of `key`.
pub(super) fn shard_of(key: Key) -> usize {
    (key >> (128 - SHARD_BITS)) as usize
}

/// Most entries a shard of `2^bits` slots may hold: seven eighths, and always one slot
/// vacant so that a probe for a missing key ends.
fn limit(bits: u32) -> usize {
    let capacity = 1usize << bits;
    capacity - (capacity / 8).max(1)
}

/// Entries of one shard, probed from `key`'s place. Returns the value found, or inserts
/// `value` and returns it. The shard must have room.
fn probe_insert(slots: &mut [Slot], len: &mut u32, bits: u32, key: Key, value: u32) -> u32 {
    let mask = (1usize << bits) - 1;
    let wanted = words(key);
    let mut at = place(key, bits);
    loop {
        let slot = &mut slots[at];
        if slot[4] == 0 {
            *slot = [wanted[0], wanted[1], wanted[2], wanted[3], value + 1];
            *len += 1;
            return value;
        }
        if slot[..4] == wanted {
            return slot[4] - 1;
        }
        at = (at + 1) & mask;
    }
}

/// The place of `key` inside its shard of `2^bits` slots: the bits after the shard's.
fn place(key: Key, bits: u32) -> usize {
    if bits == 0 {
        return 0;
    }
    ((key >> (128 - SHARD_BITS - bits)) as usize) & ((1usize << bits) - 1)
}

/// Slots in one page of memory.
const PAGE_SLOTS: usize = 4096 / std::mem::size_of::<Slot>();

/// `n` vacant slots, every page of them written once (on every core).
///
/// Fresh zeroed memory is mapped as it is first touched. Touched by a read (a probe looks
/// at a slot before it fills it), a page is first mapped to the kernel's shared zero page,
/// and the write that follows copies it and flushes the old mapping from every core's TLB,
/// interrupting the other cores: in a virtual machine, where such interrupts are costly, that
/// took more processor time than the inserts themselves. A page first touched by a write is
/// simply given a zeroed page of its own.
fn written_zeros(n: usize) -> Vec<Slot> {
    fn touch(part: &mut [Slot]) {
        for slot in part.iter_mut().step_by(PAGE_SLOTS) {
            // A value the compiler cannot see is zero, so the write is kept.
            slot[4] = std::hint::black_box(0);
        }
    }
    let mut slots = vec![[0u32; 5]; n];
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    if threads == 1 || n < SHARDS << 8 {
        touch(&mut slots);
        return slots;
    }
    std::thread::scope(|scope| {
        for part in slots.chunks_mut(n.div_ceil(threads)) {
            scope.spawn(move || touch(part));
        }
    });
    slots
}

/// Key → value (a node, or a mark while nodes are numbered).
#[derive(Debug)]
pub(super) struct KeyIndex {
    /// `SHARDS` runs of `2^bits` slots.
    slots: Vec<Slot>,
    bits: u32,
    /// Entries per shard.
    lens: Vec<u32>,
}

impl Default for KeyIndex {
    fn default() -> Self {
        KeyIndex::with_bits(1)
    }
}

impl KeyIndex {
    fn with_bits(bits: u32) -> KeyIndex {
        KeyIndex {
            slots: written_zeros(SHARDS << bits),
            bits,
            lens: vec![0; SHARDS],
        }
    }

    /// Number of entries.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.lens.iter().map(|l| *l as usize).sum()
    }

    /// Room for `n` entries in all, spread as uniform keys spread (with a margin for the
    /// fullest shard).
    pub(super) fn reserve(&mut self, n: usize) {
        let per = n.div_ceil(SHARDS);
        // The fullest of 4,096 shards holds about 4 standard deviations above the mean.
        let fullest = per + 4 * per.isqrt() + 8;
        self.grow_to(fullest);
    }

    /// Room for `extra[s]` more entries in every shard `s`.
    pub(super) fn reserve_shards(&mut self, extra: &[usize]) {
        let fullest = self
            .lens
            .iter()
            .zip(extra)
            .map(|(len, more)| *len as usize + more)
            .max()
            .unwrap_or(0);
        self.grow_to(fullest);
    }

    /// Makes every shard hold at least `entries` (rebuilding the table once if it must grow).
    fn grow_to(&mut self, entries: usize) {
        let mut bits = self.bits;
        while limit(bits) < entries {
            bits += 1;
        }
        if bits == self.bits {
            return;
        }
        let mut grown = KeyIndex::with_bits(bits);
        let old = 1usize << self.bits;
        for (s, shard) in self.slots.chunks(old).enumerate() {
            let slots = &mut grown.slots[s << bits..(s + 1) << bits];
            let len = &mut grown.lens[s];
            for slot in shard.iter().filter(|slot| slot[4] != 0) {
                probe_insert(slots, len, bits, slot_key(slot), slot[4] - 1);
            }
        }
        *self = grown;
    }

    /// Every (key, value) held, shard by shard.
    pub(super) fn entries(&self) -> impl Iterator<Item = (Key, u32)> + '_ {
        self.slots
            .iter()
            .filter(|slot| slot[4] != 0)
            .map(|slot| (slot_key(slot), slot[4] - 1))
    }

    /// The value of `key`, if present.
    pub(super) fn get(&self, key: Key) -> Option<u32> {
        let mask = (1usize << self.bits) - 1;
        let base = shard_of(key) << self.bits;
        let wanted = words(key);
        let mut at = place(key, self.bits);
        loop {
            let slot = &self.slots[base + at];
            if slot[4] == 0 {
                return None;
            }
            if slot[..4] == wanted {
                return Some(slot[4] - 1);
            }
            at = (at + 1) & mask;
        }
    }

    /// The value of `key`, inserting `value` when absent (growing the table if its shard is
    /// full).
    pub(super) fn get_or_insert(&mut self, key: Key, value: u32) -> u32 {
        let s = shard_of(key);
        if self.lens[s] as usize >= limit(self.bits) {
            self.grow_to(self.lens[s] as usize + 1);
        }
        let bits = self.bits;
        probe_insert(
            &mut self.slots[s << bits..(s + 1) << bits],
            &mut self.lens[s],
            bits,
            key,
            value,
        )
    }

    /// The shards cut into `ranges` (contiguous, in order, covering all shards), each part
    /// to be filled by its own thread.
    pub(super) fn split_shards(&mut self, ranges: &[Range<usize>]) -> Vec<Shards<'_>> {
        let bits = self.bits;
        let mut slots: &mut [Slot] = &mut self.slots;
        let mut lens: &mut [u32] = &mut self.lens;
        let mut parts = Vec::with_capacity(ranges.len());
        for r in ranges {
            let (part_slots, rest_slots) = std::mem::take(&mut slots).split_at_mut(r.len() << bits);
            let (part_lens, rest_lens) = std::mem::take(&mut lens).split_at_mut(r.len());
            slots = rest_slots;
            lens = rest_lens;
            parts.push(Shards {
                first: r.start,
                bits,
                slots: part_slots,
                lens: part_lens,
            });
        }
        parts
    }
}

/// A contiguous range of shards, filled by one thread.
pub(super) struct Shards<'a> {
    first: usize,
    bits: u32,
    slots: &'a mut [Slot],
    lens: &'a mut [u32],
}

impl Shards<'_> {
    /// The value of `key` (which belongs to shard `shard`, one of these), inserting `value`
    /// when absent. The shard must have room: see [`KeyIndex::reserve_shards`].
    pub(super) fn get_or_insert(&mut self, key: Key, value: u32) -> u32 {
        let s = shard_of(key) - self.first;
        let bits = self.bits;
        let len = &mut self.lens[s];
        debug_assert!((*len as usize) < limit(bits), "the shard was reserved");
        probe_insert(
            &mut self.slots[s << bits..(s + 1) << bits],
            len,
            bits,
            key,
            value,
        )
    }

    /// Rewrites every value held with `f`.
    pub(super) fn update(&mut self, f: impl Fn(u32) -> u32) {
        for slot in self.slots.iter_mut().filter(|slot| slot[4] != 0) {
            slot[4] = f(slot[4] - 1) + 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::graph::key;

    #[test]
    fn growing_keeps_every_entry_and_misses_stay_misses() {
        let mut index = KeyIndex::default();
        let keys: Vec<Key> = (0..60_000u32).map(|i| key(0, &format!("k{i}"))).collect();
        for (i, k) in keys.iter().enumerate() {
            assert_eq!(index.get_or_insert(*k, i as u32), i as u32);
        }
        // A second insert finds the first value.
        assert_eq!(index.get_or_insert(keys[5], 99), 5);
        assert_eq!(index.len(), keys.len());
        for (i, k) in keys.iter().enumerate() {
            assert_eq!(index.get(*k), Some(i as u32));
        }
        for i in 0..1000u32 {
            assert_eq!(index.get(key(1, &format!("k{i}"))), None);
        }
        let mut entries: Vec<(Key, u32)> = index.entries().collect();
        entries.sort_unstable();
        let mut wanted: Vec<(Key, u32)> = keys.iter().copied().zip(0..).collect();
        wanted.sort_unstable();
        assert_eq!(entries, wanted);
    }

    #[test]
    fn a_new_table_is_all_vacant_whether_touched_on_one_core_or_several() {
        for n in [PAGE_SLOTS * 3 + 7, SHARDS << 9] {
            let slots = written_zeros(n);
            assert_eq!(slots.len(), n);
            assert!(slots.iter().all(|slot| *slot == [0; 5]));
        }
    }

    #[test]
    fn keys_that_share_a_place_probe_past_each_other() {
        // Same shard, same place: only the low bits differ.
        let mut index = KeyIndex::default();
        let base: Key = 0xabc0_0000_0000_0000_0000_0000_0000_0000;
        for i in 0..40u32 {
            index.get_or_insert(base | Key::from(i), i);
        }
        for i in 0..40u32 {
            assert_eq!(index.get(base | Key::from(i)), Some(i));
        }
        assert_eq!(index.get(base | 41), None);
        // The rest of the shards are untouched.
        assert_eq!(index.lens.iter().filter(|l| **l > 0).count(), 1);
    }

    #[test]
    fn shards_filled_in_parts_read_back_whole() {
        let keys: Vec<Key> = (0..30_000u32).map(|i| key(2, &format!("d{i}"))).collect();
        let mut counts = vec![0usize; SHARDS];
        for k in &keys {
            counts[shard_of(*k)] += 1;
        }
        let mut index = KeyIndex::default();
        index.reserve_shards(&counts);
        let ranges = [0..1000, 1000..1001, 1001..SHARDS];
        let mut parts = index.split_shards(&ranges);
        for (i, k) in keys.iter().enumerate() {
            let s = shard_of(*k);
            let part = ranges
                .iter()
                .position(|r| r.contains(&s))
                .expect("ranges cover the shards");
            parts[part].get_or_insert(*k, i as u32);
        }
        for part in &mut parts {
            part.update(|v| v + 1);
        }
        for (i, k) in keys.iter().enumerate() {
            assert_eq!(index.get(*k), Some(i as u32 + 1));
        }
    }
}
