//! The order in which a run reads its training windows.
//!
//! A run's windows are numbered; each epoch visits all of them once, in a permutation fixed
//! by the run's seed and the epoch, and shifts where windows start by a per-epoch offset so
//! that a second epoch does not see the same windows again. Position `p` in the run's stream
//! of windows is window `permutation(p mod W)` of epoch `p div W`: a pure function, so any
//! peer can compute any position without state, and a group that hands out disjoint
//! positions to its members (a joiner included) never trains twice on a window within an
//! epoch.
//!
//! The permutation is a Feistel network over the next even power of two with cycle walking:
//! a bijection on `0..W` in O(1) memory, whatever the dataset's size.

use std::ops::Range;

/// Where one position of the stream lands: the epoch and the window within it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    /// Full passes over the windows before this one.
    pub epoch: u64,
    /// The window's number, within the order's range.
    pub window: u64,
}

/// A seeded order over the windows `windows` (a range of the dataset's window numbers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataOrder {
    windows: Range<u64>,
    seed: u64,
}

impl DataOrder {
    /// The order over `windows` (non-empty) for `seed`.
    pub fn new(windows: Range<u64>, seed: u64) -> Self {
        assert!(!windows.is_empty(), "an order needs at least one window");
        Self { windows, seed }
    }

    /// Windows per epoch.
    pub fn windows_per_epoch(&self) -> u64 {
        self.windows.end - self.windows.start
    }

    /// The window at `position` of the stream.
    pub fn at(&self, position: u64) -> Placement {
        let n = self.windows_per_epoch();
        let epoch = position / n;
        let key = mix(self.seed ^ mix(epoch ^ 0x0045_504f_4348));
        Placement {
            epoch,
            window: self.windows.start + permute(position % n, n, key),
        }
    }

    /// How far each window of `epoch` starts past its stride boundary, in `0..context`.
    pub fn shift(&self, epoch: u64, context: usize) -> usize {
        (mix(self.seed ^ mix(epoch ^ 0x0053_4849_4654)) % context.max(1) as u64) as usize
    }
}

const ROUNDS: u64 = 6;

/// `x`'s image under a keyed bijection of `0..n` (`x < n`).
fn permute(x: u64, n: u64, key: u64) -> u64 {
    let bits = (64 - (n - 1).leading_zeros()).max(2).next_multiple_of(2);
    let half = bits / 2;
    let mask = (1u64 << half) - 1;
    let mut y = x;
    loop {
        let (mut left, mut right) = (y >> half, y & mask);
        for round in 0..ROUNDS {
            let f = mix(key ^ mix(right ^ (round << 58))) & mask;
            (left, right) = (right, left ^ f);
        }
        y = (left << half) | right;
        if y < n {
            return y;
        }
    }
}

/// SplitMix64's finaliser: a fast, well-mixing bijection on `u64`.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn every_epoch_visits_every_window_once() {
        for n in [1u64, 2, 3, 5, 64, 1000, 4097] {
            let order = DataOrder::new(10..10 + n, 7);
            for epoch in 0..3 {
                let mut seen: Vec<u64> = (epoch * n..(epoch + 1) * n)
                    .map(|p| {
                        let at = order.at(p);
                        assert_eq!(at.epoch, epoch);
                        at.window
                    })
                    .collect();
                seen.sort_unstable();
                assert_eq!(seen, (10..10 + n).collect::<Vec<_>>(), "n = {n}");
            }
        }
    }

    #[test]
    fn epochs_and_seeds_reorder() {
        let order = DataOrder::new(0..1000, 1);
        let first: Vec<_> = (0..1000).map(|p| order.at(p).window).collect();
        let second: Vec<_> = (1000..2000).map(|p| order.at(p).window).collect();
        let other: Vec<_> = (0..1000)
            .map(|p| DataOrder::new(0..1000, 2).at(p).window)
            .collect();
        assert_ne!(first, second);
        assert_ne!(first, other);
        assert_ne!(first, (0..1000).collect::<Vec<_>>(), "not the identity");
    }

    #[test]
    fn huge_datasets_need_no_memory() {
        let order = DataOrder::new(0..u64::MAX, 3);
        assert!(order.at(u64::MAX - 1).window < u64::MAX);
        let order = DataOrder::new(0..(1 << 40) + 3, 3);
        assert!(order.at(5).window < (1 << 40) + 3);
    }

    proptest! {
        #[test]
        fn positions_in_one_epoch_never_collide(n in 1u64..5000, a in 0u64..5000, b in 0u64..5000, seed: u64) {
            let (a, b) = (a % n, b % n);
            let order = DataOrder::new(0..n, seed);
            prop_assert_eq!(order.at(a).window == order.at(b).window, a == b);
            prop_assert!(order.shift(order.at(a).epoch, 128) < 128);
        }
    }
}
