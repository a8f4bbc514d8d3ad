//! Windowed running min / max filter (Kathleen Nichols' algorithm, as in Linux `win_minmax`).
//!
//! Keeps the best, second-best and third-best samples of the window with their timestamps, so the
//! best value over the last `window` time units is available in O(1) with three words of state.
//! "Time" is any monotonic `u64`: packet-timed round trips for the bandwidth filter, nanoseconds
//! for the min-RTT filter.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Sample {
    time: u64,
    value: u64,
}

/// Which extreme the filter tracks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Extreme {
    Max,
    Min,
}

/// Windowed min or max filter.
#[derive(Debug, Clone)]
pub(crate) struct WindowedFilter {
    kind: Extreme,
    window: u64,
    s: [Sample; 3],
    empty: bool,
}

impl WindowedFilter {
    pub(crate) fn new(kind: Extreme, window: u64) -> Self {
        Self {
            kind,
            window,
            s: [Sample { time: 0, value: 0 }; 3],
            empty: true,
        }
    }

    /// The best value in the window, if any sample was taken.
    pub(crate) fn get(&self) -> Option<u64> {
        (!self.empty).then_some(self.s[0].value)
    }

    /// Forgets everything and starts over from one sample.
    pub(crate) fn reset(&mut self, time: u64, value: u64) {
        let s = Sample { time, value };
        self.s = [s; 3];
        self.empty = false;
    }

    fn better_or_equal(&self, a: u64, b: u64) -> bool {
        match self.kind {
            Extreme::Max => a >= b,
            Extreme::Min => a <= b,
        }
    }

    /// Adds a sample taken at `time` (non-decreasing) and returns the windowed best.
    pub(crate) fn update(&mut self, time: u64, value: u64) -> u64 {
        let new = Sample { time, value };
        if self.empty
            || self.better_or_equal(value, self.s[0].value)
            || time.saturating_sub(self.s[2].time) > self.window
        {
            self.reset(time, value);
            return value;
        }
        if self.better_or_equal(value, self.s[1].value) {
            self.s[1] = new;
            self.s[2] = new;
        } else if self.better_or_equal(value, self.s[2].value) {
            self.s[2] = new;
        }
        // Age out expired best samples and keep the sub-windows spread over the window.
        let dt = time.saturating_sub(self.s[0].time);
        if dt > self.window {
            self.s[0] = self.s[1];
            self.s[1] = self.s[2];
            self.s[2] = new;
            if time.saturating_sub(self.s[0].time) > self.window {
                self.s[0] = self.s[1];
                self.s[1] = self.s[2];
                self.s[2] = new;
            }
        } else if self.s[1].time == self.s[0].time && dt > self.window / 4 {
            self.s[1] = new;
            self.s[2] = new;
        } else if self.s[2].time == self.s[1].time && dt > self.window / 2 {
            self.s[2] = new;
        }
        self.s[0].value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_filter_expires_old_peaks() {
        let mut f = WindowedFilter::new(Extreme::Max, 10);
        assert_eq!(f.get(), None);
        assert_eq!(f.update(0, 100), 100);
        for t in 1..=10 {
            assert_eq!(f.update(t, 50), 100);
        }
        // The peak at t=0 is more than 10 units old now.
        assert_eq!(f.update(11, 50), 50);
        assert_eq!(f.update(12, 70), 70);
        assert_eq!(f.update(13, 60), 70);
    }

    #[test]
    fn min_filter_tracks_window_min() {
        let mut f = WindowedFilter::new(Extreme::Min, 100);
        f.update(0, 10);
        for t in 1..100 {
            f.update(t, 20 + t % 3);
        }
        assert_eq!(f.get(), Some(10));
        // After the window the min is the best of the recent samples, not the ancient one.
        let v = f.update(150, 30);
        assert!((20..=22).contains(&v), "{v}");
        assert_eq!(f.update(400, 40), 40);
    }

    #[test]
    fn matches_brute_force_bounds() {
        // The filter's answer is always a sample from the window and at least as good as the
        // most recent sample; it is the exact max when a new max arrives.
        let mut f = WindowedFilter::new(Extreme::Max, 8);
        let mut hist = Vec::new();
        let mut x: u64 = 12345;
        for t in 0..2000u64 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let v = (x >> 40) % 1000;
            hist.push((t, v));
            let got = f.update(t, v);
            let window_max = hist
                .iter()
                .filter(|(ht, _)| t - ht <= 8)
                .map(|&(_, hv)| hv)
                .max();
            assert!(got >= v);
            assert!(Some(got) <= window_max);
        }
    }
}
