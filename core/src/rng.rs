//! A random source for load balancing, splits and jitter.

/// xorshift64*: fast, good enough for load balancing and jitter.
pub struct Rng(u64);

impl Rng {
    /// A generator started from `seed` (tests use fixed seeds to be repeatable).
    pub fn seeded(seed: u64) -> Self {
        Self(seed | 1)
    }

    /// Uniform in `0..n` (`0` when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            return 0;
        }
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n as u64) as usize
    }

    /// 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Whether one draw falls in a share of `percent` percent (resolution 1e-4 %).
    pub fn chance(&mut self, percent: f64) -> bool {
        (self.below(1_000_000) as f64) < percent * 10_000.0
    }
}
