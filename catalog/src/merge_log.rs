//! The identity merge log as a remapping of stored user ids.

use std::collections::HashMap;

/// The merge log as a map from every merged-away id to its survivor, for remapping stored
/// user ids (audience bitmaps) made before the merges. Splits are not remapped: the old id
/// stays valid for the side that kept it.
#[derive(Debug, Clone, Default)]
pub struct MergeLog {
    into: HashMap<u32, u32>,
    merged: roaring::RoaringBitmap,
}

impl MergeLog {
    /// A log from (from, into) merges, in any order; chains (a → b → c) resolve to the end.
    pub fn from_pairs(pairs: impl IntoIterator<Item = (u32, u32)>) -> MergeLog {
        let mut into: HashMap<u32, u32> = pairs.into_iter().filter(|(f, t)| f != t).collect();
        let keys: Vec<u32> = into.keys().copied().collect();
        for k in keys {
            let mut target = into[&k];
            let mut hops = 0;
            while let Some(&next) = into.get(&target) {
                if next == target || hops > into.len() {
                    break;
                }
                target = next;
                hops += 1;
            }
            into.insert(k, target);
        }
        let merged = into.keys().copied().collect();
        MergeLog { into, merged }
    }

    /// The person `user` is now.
    pub fn survivor(&self, user: u32) -> u32 {
        self.into.get(&user).copied().unwrap_or(user)
    }

    /// `bitmap` with every merged-away id replaced by its survivor.
    pub fn remap(&self, bitmap: &roaring::RoaringBitmap) -> roaring::RoaringBitmap {
        let moved = bitmap & &self.merged;
        let mut out = bitmap - &moved;
        out.extend(moved.iter().map(|u| self.survivor(u)));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::MergeLog;

    #[test]
    fn merged_ids_remap_to_their_survivor_through_chains() {
        let log = MergeLog::from_pairs([(7, 4), (4, 2), (9, 3)]);
        assert_eq!(log.survivor(7), 2);
        assert_eq!(log.survivor(4), 2);
        assert_eq!(log.survivor(5), 5);
        let stored: roaring::RoaringBitmap = [1, 4, 7, 9, 10].into_iter().collect();
        let now: Vec<u32> = log.remap(&stored).iter().collect();
        assert_eq!(now, vec![1, 2, 3, 10]);
    }
}
