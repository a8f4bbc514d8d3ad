//! A set of `u64` stored as sorted, disjoint, coalesced half-open ranges.
//!
//! Used for ACK ranges (received packet numbers), acknowledged stream byte ranges and
//! retransmission queues. Invariant: no stored range is empty and no two stored ranges overlap or
//! touch (adjacent ranges are merged), so "contained in the set" equals "contained in one stored
//! range" and the number of ranges is minimal.

use std::collections::BTreeMap;
use std::collections::btree_map;
use std::ops::Range;

/// Set of `u64` values kept as coalesced half-open ranges (`start -> end` in a B-tree).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RangeSet {
    map: BTreeMap<u64, u64>,
}

impl RangeSet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `range`; returns whether any value in it was not already present.
    pub fn insert(&mut self, range: Range<u64>) -> bool {
        if range.is_empty() {
            return false;
        }
        // Fast path, the common case for packet numbers and stream offsets arriving in order:
        // the new range touches or overlaps the last stored one, so it only extends it.
        if let Some(mut last) = self.map.last_entry()
            && *last.key() <= range.start
            && *last.get() >= range.start
        {
            if *last.get() >= range.end {
                return false;
            }
            *last.get_mut() = range.end;
            return true;
        }
        let (mut start, mut end) = (range.start, range.end);
        // The range starting at or before `start` may contain, overlap or touch the new one.
        if let Some((&ps, &pe)) = self.map.range(..=start).next_back() {
            if pe >= end {
                return false;
            }
            if pe >= start {
                start = ps;
            }
        }
        // Swallow every stored range that starts inside (or right at the end of) the new one.
        while let Some((&s, &e)) = self.map.range(start..=end).next() {
            self.map.remove(&s);
            end = end.max(e);
        }
        self.map.insert(start, end);
        true
    }

    /// Adds a single value; returns whether it was new.
    pub fn insert_one(&mut self, value: u64) -> bool {
        match value.checked_add(1) {
            Some(end) => self.insert(value..end),
            // u64::MAX cannot be represented in a half-open range; it never occurs as a packet
            // number or byte offset (both are bounded well below), so refusing it is safe.
            None => false,
        }
    }

    /// Whether `value` is in the set.
    pub fn contains(&self, value: u64) -> bool {
        self.map
            .range(..=value)
            .next_back()
            .is_some_and(|(_, &e)| value < e)
    }

    /// Whether any value of `range` is in the set.
    pub fn intersects(&self, range: Range<u64>) -> bool {
        if range.is_empty() {
            return false;
        }
        if let Some((_, &e)) = self.map.range(..=range.start).next_back()
            && e > range.start
        {
            return true;
        }
        self.map.range(range.start..range.end).next().is_some()
    }

    /// Whether every value of `range` is in the set (true for an empty range).
    pub fn contains_range(&self, range: Range<u64>) -> bool {
        if range.is_empty() {
            return true;
        }
        self.map
            .range(..=range.start)
            .next_back()
            .is_some_and(|(_, &e)| e >= range.end)
    }

    /// Removes `range`; returns whether anything was removed.
    pub fn remove(&mut self, range: Range<u64>) -> bool {
        if range.is_empty() {
            return false;
        }
        let mut removed = false;
        // A range starting before `range.start` may reach into it: cut its tail, keep any part
        // past `range.end`.
        if let Some((&ps, &pe)) = self.map.range(..range.start).next_back()
            && pe > range.start
        {
            removed = true;
            self.map.insert(ps, range.start);
            if pe > range.end {
                self.map.insert(range.end, pe);
                return true;
            }
        }
        while let Some((&s, &e)) = self.map.range(range.start..range.end).next() {
            removed = true;
            self.map.remove(&s);
            if e > range.end {
                self.map.insert(range.end, e);
                break;
            }
        }
        removed
    }

    /// Removes every value of `other` from `self`.
    pub fn subtract(&mut self, other: &RangeSet) {
        for r in other.iter() {
            self.remove(r);
        }
    }

    /// Smallest value.
    pub fn min(&self) -> Option<u64> {
        self.map.first_key_value().map(|(&s, _)| s)
    }

    /// Largest value.
    pub fn max(&self) -> Option<u64> {
        self.map.last_key_value().map(|(_, &e)| e - 1)
    }

    /// Number of (coalesced) ranges.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether the set holds no value.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Number of values in the set.
    pub fn elements(&self) -> u64 {
        self.map.iter().map(|(&s, &e)| e - s).sum()
    }

    /// Removes every value.
    pub fn clear(&mut self) {
        self.map.clear();
    }

    /// Ranges in ascending order.
    pub fn iter(&self) -> Iter<'_> {
        Iter(self.map.iter())
    }

    /// Ranges in descending order (largest first, as ACK frames encode them).
    pub fn iter_rev(&self) -> std::iter::Rev<Iter<'_>> {
        self.iter().rev()
    }

    /// Removes and returns the lowest range.
    pub fn pop_min(&mut self) -> Option<Range<u64>> {
        self.map.pop_first().map(|(s, e)| s..e)
    }

    /// Removes and returns the highest range.
    pub fn pop_max(&mut self) -> Option<Range<u64>> {
        self.map.pop_last().map(|(s, e)| s..e)
    }
}

/// Iterator over the ranges of a [`RangeSet`].
#[derive(Debug, Clone)]
pub struct Iter<'a>(btree_map::Iter<'a, u64, u64>);

impl Iterator for Iter<'_> {
    type Item = Range<u64>;

    fn next(&mut self) -> Option<Range<u64>> {
        self.0.next().map(|(&s, &e)| s..e)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.0.size_hint()
    }
}

impl DoubleEndedIterator for Iter<'_> {
    fn next_back(&mut self) -> Option<Range<u64>> {
        self.0.next_back().map(|(&s, &e)| s..e)
    }
}

impl ExactSizeIterator for Iter<'_> {}

impl<'a> IntoIterator for &'a RangeSet {
    type Item = Range<u64>;
    type IntoIter = Iter<'a>;

    fn into_iter(self) -> Iter<'a> {
        self.iter()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;

    #[test]
    fn insert_merges_and_reports_news() {
        let mut s = RangeSet::new();
        assert!(s.insert(10..20));
        assert!(!s.insert(12..15));
        assert!(!s.insert(10..20));
        assert!(s.insert(20..25)); // adjacent: coalesced
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![10..25]);
        assert!(s.insert(0..5));
        assert!(s.insert(30..40));
        assert!(s.insert(4..31)); // bridges everything
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![0..40]);
        assert!(!s.insert(7..7));
        assert_eq!(s.elements(), 40);
        assert_eq!((s.min(), s.max()), (Some(0), Some(39)));
    }

    #[test]
    fn remove_splits() {
        let mut s = RangeSet::new();
        s.insert(0..100);
        assert!(s.remove(10..20));
        assert!(!s.remove(12..18));
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![0..10, 20..100]);
        assert!(s.remove(5..25));
        assert_eq!(s.iter_rev().collect::<Vec<_>>(), vec![25..100, 0..5]);
        assert!(s.contains(4) && !s.contains(5) && s.contains(99) && !s.contains(100));
        assert!(s.intersects(3..30) && !s.intersects(5..25) && s.intersects(24..26));
        assert!(s.contains_range(30..40) && !s.contains_range(3..6));
        assert_eq!(s.pop_min(), Some(0..5));
        assert_eq!(s.pop_max(), Some(25..100));
        assert!(s.is_empty());
    }

    #[test]
    fn extremes_do_not_panic() {
        let mut s = RangeSet::new();
        assert!(!s.insert_one(u64::MAX));
        assert!(s.insert(u64::MAX - 2..u64::MAX));
        assert_eq!(s.max(), Some(u64::MAX - 1));
        assert!(s.remove(0..u64::MAX));
        assert!(s.is_empty());
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(Range<u64>),
        Remove(Range<u64>),
        PopMin,
    }

    fn op() -> impl Strategy<Value = Op> {
        let range = (0u64..512, 0u64..40).prop_map(|(s, l)| s..(s + l).min(512));
        prop_oneof![
            4 => range.clone().prop_map(Op::Insert),
            2 => range.prop_map(Op::Remove),
            1 => Just(Op::PopMin),
        ]
    }

    proptest! {
        #[test]
        fn matches_btreeset_model(ops in proptest::collection::vec(op(), 0..120)) {
            let mut set = RangeSet::new();
            let mut model = BTreeSet::new();
            for op in ops {
                match op {
                    Op::Insert(r) => {
                        let new = r.clone().any(|v| !model.contains(&v));
                        model.extend(r.clone());
                        prop_assert_eq!(set.insert(r), new);
                    }
                    Op::Remove(r) => {
                        let any = r.clone().any(|v| model.contains(&v));
                        for v in r.clone() {
                            model.remove(&v);
                        }
                        prop_assert_eq!(set.remove(r), any);
                    }
                    Op::PopMin => {
                        if let Some(r) = set.pop_min() {
                            for v in r {
                                prop_assert!(model.remove(&v));
                            }
                        } else {
                            prop_assert!(model.is_empty());
                        }
                    }
                }
                // Contents identical.
                let flat: Vec<u64> = set.iter().flatten().collect();
                let expect: Vec<u64> = model.iter().copied().collect();
                prop_assert_eq!(&flat, &expect);
                prop_assert_eq!(set.elements(), model.len() as u64);
                prop_assert_eq!(set.min(), model.first().copied());
                prop_assert_eq!(set.max(), model.last().copied());
                // Sorted, non-empty, disjoint and non-adjacent.
                let ranges: Vec<_> = set.iter().collect();
                for r in &ranges {
                    prop_assert!(r.start < r.end);
                }
                for w in ranges.windows(2) {
                    prop_assert!(w[0].end < w[1].start);
                }
                let rev: Vec<_> = set.iter_rev().collect();
                prop_assert!(rev.iter().rev().eq(ranges.iter()));
            }
            for v in 0..520u64 {
                prop_assert_eq!(set.contains(v), model.contains(&v));
            }
        }

        #[test]
        fn subtract_and_intersects_match_model(
            a in proptest::collection::vec((0u64..256, 1u64..30), 0..20),
            b in proptest::collection::vec((0u64..256, 1u64..30), 0..20),
            q in (0u64..300, 0u64..30),
        ) {
            let mut sa = RangeSet::new();
            let mut sb = RangeSet::new();
            let mut ma = BTreeSet::new();
            let mut mb = BTreeSet::new();
            for (s, l) in a { sa.insert(s..s + l); ma.extend(s..s + l); }
            for (s, l) in b { sb.insert(s..s + l); mb.extend(s..s + l); }
            let q = q.0..q.0 + q.1;
            prop_assert_eq!(sa.intersects(q.clone()), q.clone().any(|v| ma.contains(&v)));
            prop_assert_eq!(sa.contains_range(q.clone()), q.clone().all(|v| ma.contains(&v)));
            sa.subtract(&sb);
            let expect: Vec<u64> = ma.difference(&mb).copied().collect();
            prop_assert_eq!(sa.iter().flatten().collect::<Vec<_>>(), expect);
        }
    }
}
