//! Seeded chance: SplitMix64, so that one seed gives one day, whatever the machine.

use std::cell::Cell;

/// A stream of random numbers from a seed.
pub struct Chance(Cell<u64>);

impl Chance {
    /// The stream for `seed`, apart from every other `stream` of the same seed.
    pub fn new(seed: u64, stream: u64) -> Self {
        let chance = Chance(Cell::new(seed ^ stream.wrapping_mul(0xD1B5_4A32_D192_ED03)));
        chance.next_u64();
        chance
    }

    pub fn next_u64(&self) -> u64 {
        let state = self.0.get().wrapping_add(0x9E37_79B9_7F4A_7C15);
        self.0.set(state);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    pub fn fraction(&self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_seed_one_stream_and_fractions_in_range() {
        let (a, b) = (Chance::new(7, 1), Chance::new(7, 1));
        assert_eq!(a.next_u64(), b.next_u64());
        assert_ne!(Chance::new(7, 2).next_u64(), Chance::new(7, 1).next_u64());
        let mean = (0..10_000).map(|_| a.fraction()).sum::<f64>() / 10_000.0;
        assert!((0.48..0.52).contains(&mean), "{mean}");
    }
}
