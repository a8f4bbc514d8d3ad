//! Anti-replay window over received packet numbers (RFC 6479 / WireGuard style).
//!
//! A packet number is acceptable if it has not been accepted before and is less than
//! [`REPLAY_WINDOW`] behind the highest accepted one. Anything newer than the highest accepted
//! number is always acceptable.
//!
//! The bitmap is a ring of `u64` words with one spare word beyond the window, so sliding forward
//! only ever zeroes whole words: no shifting, O(1) per packet in the common case and at most
//! [`REPLAY_WINDOW`]/64 + 1 word writes on a large jump.
//!
//! [`ReplayWindow::check`] does not mutate; the session calls it before decrypting and calls
//! [`ReplayWindow::accept`] only once the AEAD has authenticated the packet, so a forged packet
//! changes no state.

/// How far behind the highest accepted packet number a packet may be and still be accepted.
pub const REPLAY_WINDOW: u64 = 4096;

const WORD_BITS: u64 = u64::BITS as u64;
/// Words in the ring: the window plus one spare, so the word being recycled is never in use.
const WORDS: usize = (REPLAY_WINDOW / WORD_BITS) as usize + 1;

/// Tracks which recent packet numbers have been received.
#[derive(Clone)]
pub struct ReplayWindow {
    /// Highest accepted packet number; `None` until the first accept.
    highest: Option<u64>,
    /// Bit `pn % 64` of word `(pn / 64) % WORDS` is set once `pn` is accepted, for packet numbers
    /// within the window.
    bitmap: [u64; WORDS],
}

impl ReplayWindow {
    /// An empty window: every packet number is acceptable.
    pub fn new() -> Self {
        Self {
            highest: None,
            bitmap: [0; WORDS],
        }
    }

    /// Whether `pn` is new and recent enough to be accepted. Does not change any state.
    pub fn check(&self, pn: u64) -> bool {
        let Some(highest) = self.highest else {
            return true;
        };
        if pn > highest {
            return true;
        }
        if highest - pn >= REPLAY_WINDOW {
            return false;
        }
        let (word, mask) = Self::position(pn);
        self.bitmap[word] & mask == 0
    }

    /// Marks `pn` as received, sliding the window forward if `pn` is the new highest.
    ///
    /// Packet numbers that are already too old are ignored (they are rejected by
    /// [`check`](Self::check) either way).
    pub fn accept(&mut self, pn: u64) {
        match self.highest {
            None => self.highest = Some(pn),
            Some(highest) if pn > highest => {
                // Zero the words entering the window; those words last held packet numbers at
                // least a full window behind `pn`. After WORDS of them every word is fresh.
                let old_block = highest / WORD_BITS;
                let new_block = pn / WORD_BITS;
                let fresh = (new_block - old_block).min(WORDS as u64);
                for i in 1..=fresh {
                    self.bitmap[((old_block + i) % WORDS as u64) as usize] = 0;
                }
                self.highest = Some(pn);
            }
            Some(highest) if highest - pn >= REPLAY_WINDOW => return,
            Some(_) => {}
        }
        let (word, mask) = Self::position(pn);
        self.bitmap[word] |= mask;
    }

    /// The highest accepted packet number, if any.
    pub fn highest(&self) -> Option<u64> {
        self.highest
    }

    fn position(pn: u64) -> (usize, u64) {
        let word = ((pn / WORD_BITS) % WORDS as u64) as usize;
        (word, 1 << (pn % WORD_BITS))
    }
}

impl Default for ReplayWindow {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for ReplayWindow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The bitmap is 520 bytes of noise; the highest packet number is what matters.
        f.debug_struct("ReplayWindow")
            .field("highest", &self.highest)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use proptest::prelude::*;

    use super::*;

    /// The obviously-correct reference: everything ever accepted, and the maximum.
    #[derive(Default)]
    struct Model {
        seen: HashSet<u64>,
        highest: Option<u64>,
    }

    impl Model {
        fn check(&self, pn: u64) -> bool {
            !self.seen.contains(&pn)
                && self
                    .highest
                    .is_none_or(|h| pn > h || h - pn < REPLAY_WINDOW)
        }

        fn accept(&mut self, pn: u64) {
            if self.check(pn) {
                self.seen.insert(pn);
                self.highest = Some(self.highest.map_or(pn, |h| h.max(pn)));
            }
        }
    }

    /// A step in a packet-number sequence, relative to a moving cursor so sequences stay mostly
    /// within or near the window (where the interesting cases are) with occasional big jumps.
    #[derive(Debug, Clone)]
    enum Step {
        Near(i64),
        Jump(u64),
        Absolute(u64),
    }

    fn step() -> impl Strategy<Value = (Step, bool)> {
        let step = prop_oneof![
            8 => (-70i64..70).prop_map(Step::Near),
            4 => (-5000i64..5000).prop_map(Step::Near),
            // Right around one window back or forward, where ring slots get recycled.
            2 => prop_oneof![-4200i64..-3990, 3990i64..4200].prop_map(Step::Near),
            1 => (0u64..20_000).prop_map(Step::Jump),
            1 => prop_oneof![Just(0u64), Just(u64::MAX), any::<u64>()].prop_map(Step::Absolute),
        ];
        // The bool: whether the packet authenticates (only then is it accepted).
        (step, prop::bool::weighted(0.9))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn matches_model(start in prop_oneof![Just(0u64), 0u64..100_000, any::<u64>()],
                         steps in prop::collection::vec(step(), 1..400)) {
            let mut window = ReplayWindow::new();
            let mut model = Model::default();
            let mut cursor = start;
            for (step, authentic) in steps {
                let pn = match step {
                    Step::Near(d) => cursor.saturating_add_signed(d),
                    Step::Jump(d) => cursor.saturating_add(d),
                    Step::Absolute(pn) => pn,
                };
                cursor = pn;
                prop_assert_eq!(window.check(pn), model.check(pn), "pn {}", pn);
                if authentic && window.check(pn) {
                    window.accept(pn);
                    model.accept(pn);
                    prop_assert!(!window.check(pn));
                }
                // Probe the window edges and a few neighbours as well.
                if let Some(h) = model.highest {
                    for probe in [h.wrapping_sub(REPLAY_WINDOW), h.wrapping_sub(REPLAY_WINDOW - 1),
                                  h.wrapping_sub(REPLAY_WINDOW + 1), h, h.wrapping_add(1),
                                  pn.wrapping_sub(1), pn.wrapping_add(1), pn.wrapping_sub(64)] {
                        prop_assert_eq!(window.check(probe), model.check(probe), "probe {}", probe);
                    }
                }
                prop_assert_eq!(window.highest(), model.highest);
                // Nothing ever accepted may look new again.
                for &seen in &model.seen {
                    prop_assert!(!window.check(seen), "replay of {} accepted", seen);
                }
            }
        }
    }

    #[test]
    fn empty_accepts_everything() {
        let w = ReplayWindow::new();
        assert!(w.check(0));
        assert!(w.check(1));
        assert!(w.check(u64::MAX));
    }

    #[test]
    fn pn_zero() {
        let mut w = ReplayWindow::new();
        w.accept(0);
        assert!(!w.check(0));
        assert!(w.check(1));
        w.accept(1);
        assert!(!w.check(1));
        assert!(!w.check(0));
    }

    #[test]
    fn exactly_window_old() {
        let mut w = ReplayWindow::new();
        let h = 10_000;
        w.accept(h);
        assert!(
            !w.check(h - REPLAY_WINDOW),
            "exactly a window behind is too old"
        );
        assert!(
            w.check(h - REPLAY_WINDOW + 1),
            "one less than a window behind is fine"
        );
        w.accept(h - REPLAY_WINDOW + 1);
        assert!(!w.check(h - REPLAY_WINDOW + 1));
        // Accepting something too old is a no-op.
        w.accept(h - REPLAY_WINDOW);
        assert!(!w.check(h - REPLAY_WINDOW));
        assert_eq!(w.highest(), Some(h));
        // One step forward pushes the oldest accepted packet out.
        w.accept(h + 1);
        assert!(!w.check(h - REPLAY_WINDOW + 1));
        assert!(w.check(h - REPLAY_WINDOW + 2));
    }

    #[test]
    fn every_packet_in_window_tracked() {
        let mut w = ReplayWindow::new();
        for pn in 0..REPLAY_WINDOW {
            w.accept(pn);
        }
        for pn in 0..REPLAY_WINDOW {
            assert!(!w.check(pn), "{pn}");
        }
        w.accept(REPLAY_WINDOW + 63);
        // Packets 0..=63 have left the window, the rest are still remembered.
        for pn in 0..REPLAY_WINDOW {
            assert!(!w.check(pn), "{pn}");
        }
        for pn in REPLAY_WINDOW..REPLAY_WINDOW + 63 {
            assert!(w.check(pn), "{pn}");
        }
    }

    #[test]
    fn huge_jumps() {
        let mut w = ReplayWindow::new();
        w.accept(5);
        w.accept(1 << 40);
        assert!(!w.check(5));
        assert!(w.check((1 << 40) - 1));
        assert!(!w.check(1 << 40));
        w.accept(u64::MAX);
        assert!(!w.check(u64::MAX));
        assert!(w.check(u64::MAX - 1));
        assert!(w.check(u64::MAX - (REPLAY_WINDOW - 1)));
        assert!(!w.check(u64::MAX - REPLAY_WINDOW));
        assert!(!w.check(1 << 40));
        assert!(!w.check(0));
    }

    #[test]
    fn jump_clears_stale_bits() {
        // A pn that maps to the same ring slot as an old accepted one must not look seen.
        let ring_bits = WORDS as u64 * WORD_BITS;
        let mut w = ReplayWindow::new();
        w.accept(3);
        w.accept(REPLAY_WINDOW + 2);
        assert!(!w.check(3), "still inside the window");
        w.accept(3 + ring_bits + 1);
        assert!(
            w.check(3 + ring_bits),
            "same ring slot as 3, never accepted"
        );
        for k in 1..4 {
            let mut w = ReplayWindow::new();
            w.accept(3);
            w.accept(3 + k * ring_bits + 1);
            assert!(w.check(3 + k * ring_bits));
        }
    }
}
