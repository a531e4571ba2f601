//! Opt-in timing of the CPU kernels, for `pirlkit bench --profile`: where
//! the time of a training step goes (conv forward and backward per shape,
//! BatchNorm, max-pool, the rest of the backward, the optimiser). Off, a
//! kernel pays one relaxed atomic load.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

static ON: AtomicBool = AtomicBool::new(false);
/// Seconds per key, in first-seen order.
static TOTALS: Mutex<Vec<(String, f64)>> = Mutex::new(Vec::new());

/// Switches the timers on or off (process-wide) and clears the totals.
pub fn enable(on: bool) {
    ON.store(on, Ordering::Relaxed);
    take();
}

/// Adds the time until it is dropped to its key's total.
pub struct Timer(String, Instant);

impl Drop for Timer {
    fn drop(&mut self) {
        let e = self.1.elapsed().as_secs_f64();
        let mut t = TOTALS.lock().unwrap_or_else(|p| p.into_inner());
        match t.iter_mut().find(|(k, _)| *k == self.0) {
            Some((_, v)) => *v += e,
            None => t.push((std::mem::take(&mut self.0), e)),
        }
    }
}

/// A timer for `key` when profiling is on (the key is built only then).
pub fn time(key: impl FnOnce() -> String) -> Option<Timer> {
    ON.load(Ordering::Relaxed)
        .then(|| Timer(key(), Instant::now()))
}

/// The totals so far (seconds per key), clearing them.
pub fn take() -> Vec<(String, f64)> {
    std::mem::take(&mut *TOTALS.lock().unwrap_or_else(|p| p.into_inner()))
}
