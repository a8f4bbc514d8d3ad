//! A set of `u64` offsets stored as disjoint half-open ranges.
//!
//! Used for received stream data, acknowledged send data and data to retransmit. Ranges are kept
//! merged (never overlapping or touching), so the common in-order case is a single range whose
//! end is extended in place, which costs no allocation.

use std::collections::BTreeMap;
use std::ops::{Bound, Range};

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(super) struct RangeSet {
    /// start -> end.
    map: BTreeMap<u64, u64>,
}

impl RangeSet {
    pub(super) fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Number of disjoint ranges.
    pub(super) fn len(&self) -> usize {
        self.map.len()
    }

    pub(super) fn clear(&mut self) {
        self.map.clear();
    }

    pub(super) fn first(&self) -> Option<Range<u64>> {
        self.map.first_key_value().map(|(&s, &e)| s..e)
    }

    /// The range holding `x`, if any.
    pub(super) fn containing(&self, x: u64) -> Option<Range<u64>> {
        let (&s, &e) = self.map.range(..=x).next_back()?;
        (x < e).then_some(s..e)
    }

    pub(super) fn contains(&self, x: u64) -> bool {
        self.containing(x).is_some()
    }

    pub(super) fn insert(&mut self, start: u64, end: u64) {
        if start >= end {
            return;
        }
        let mut start = start;
        let mut end = end;
        if let Some((&ps, &pe)) = self.map.range(..=start).next_back() {
            if pe >= end {
                return;
            }
            if pe >= start {
                start = ps;
            }
        }
        // Absorb every range that starts inside (or right at the end of) the new one.
        while let Some((&ns, &ne)) = self
            .map
            .range((Bound::Excluded(start), Bound::Included(end)))
            .next()
        {
            self.map.remove(&ns);
            end = end.max(ne);
        }
        match self.map.get_mut(&start) {
            Some(e) => *e = end.max(*e),
            None => {
                self.map.insert(start, end);
            }
        }
    }

    pub(super) fn remove(&mut self, start: u64, end: u64) {
        if start >= end || self.map.is_empty() {
            return;
        }
        if let Some((&ps, &pe)) = self.map.range(..start).next_back()
            && pe > start
        {
            self.map.insert(ps, start);
            if pe > end {
                self.map.insert(end, pe);
                return;
            }
        }
        while let Some((&ns, &ne)) = self.map.range(start..end).next() {
            self.map.remove(&ns);
            if ne > end {
                self.map.insert(end, ne);
                break;
            }
        }
    }

    /// Inserts the parts of `start..end` that are not in `exclude`.
    pub(super) fn insert_missing(&mut self, start: u64, end: u64, exclude: &RangeSet) {
        if start >= end {
            // (An empty `Excluded..Excluded` BTreeMap range would panic.)
            return;
        }
        let mut cursor = start;
        if let Some(r) = exclude.containing(start) {
            cursor = r.end;
        }
        for (&s, &e) in exclude
            .map
            .range((Bound::Excluded(start), Bound::Excluded(end)))
        {
            if s > cursor {
                self.insert(cursor, s);
            }
            cursor = cursor.max(e);
        }
        if cursor < end {
            self.insert(cursor, end);
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn model(set: &RangeSet, n: u64) -> Vec<bool> {
        (0..n).map(|x| set.contains(x)).collect()
    }

    proptest! {
        #[test]
        fn matches_a_bitmap(ops in prop::collection::vec((any::<bool>(), 0u64..64, 0u64..16), 0..60)) {
            let mut set = RangeSet::default();
            let mut bits = [false; 80];
            for (add, s, len) in ops {
                let e = s + len;
                if add { set.insert(s, e) } else { set.remove(s, e) }
                for b in &mut bits[s as usize..e as usize] { *b = add; }
                prop_assert_eq!(model(&set, 80), bits.to_vec());
                // Ranges stay merged: no two touch.
                let v: Vec<_> = set.map.iter().map(|(&s, &e)| (s, e)).collect();
                for w in v.windows(2) { prop_assert!(w[0].1 < w[1].0); }
                prop_assert!(v.iter().all(|&(s, e)| s < e));
            }
        }

        #[test]
        fn insert_missing_skips_excluded(
            ex in prop::collection::vec((0u64..64, 0u64..8), 0..10),
            s in 0u64..64, len in 0u64..20,
        ) {
            let mut exclude = RangeSet::default();
            for (a, l) in ex { exclude.insert(a, a + l); }
            let mut set = RangeSet::default();
            set.insert_missing(s, s + len, &exclude);
            for x in 0..90 {
                let want = x >= s && x < s + len && !exclude.contains(x);
                prop_assert_eq!(set.contains(x), want, "x={}", x);
            }
        }
    }

    #[test]
    fn in_order_inserts_extend_one_range() {
        let mut set = RangeSet::default();
        for i in 0..100 {
            set.insert(i * 10, i * 10 + 10);
        }
        assert_eq!(set.len(), 1);
        assert_eq!(set.first(), Some(0..1000));
        assert_eq!(set.containing(999), Some(0..1000));
        assert_eq!(set.containing(1000), None);
    }
}
