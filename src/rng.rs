//! One seed drives every random stream. Each stream is a ChaCha generator
//! keyed by (seed, purpose, a, b) so it does not depend on thread count or on
//! the order in which work is scheduled.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sha2::{Digest, Sha256};

/// The random stream for `purpose` (e.g. `"augment"`) and two indices (e.g.
/// epoch and image index).
pub fn stream(seed: u64, purpose: &str, a: u64, b: u64) -> ChaCha8Rng {
    let mut h = Sha256::new();
    h.update(seed.to_le_bytes());
    h.update(purpose.as_bytes());
    h.update([0u8]);
    h.update(a.to_le_bytes());
    h.update(b.to_le_bytes());
    ChaCha8Rng::from_seed(h.finalize().into())
}

/// A standard normal sample (Box-Muller).
pub fn normal<R: Rng>(rng: &mut R) -> f64 {
    let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

/// Fisher-Yates shuffle with a given generator.
pub fn shuffle<T, R: Rng>(v: &mut [T], rng: &mut R) {
    for i in (1..v.len()).rev() {
        let j = rng.random_range(0..=i);
        v.swap(i, j);
    }
}
