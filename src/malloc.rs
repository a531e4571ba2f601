//! glibc malloc settings for training: keep freed memory for reuse instead
//! of handing it back to the kernel and faulting it in again.
//!
//! A training step allocates and frees the same large buffers (activations,
//! gradients, im2col columns: 1-20 MB each at 96 px) every step. glibc serves
//! blocks above its mmap threshold with fresh `mmap`s and trims the top of
//! the heap on free, so each step page-faults those buffers in again; in a
//! VM every fault is costly. Measured on this 2-core machine (`pirlkit bench
//! --size 96 --threads 2 --profile`, 2 alternating rounds): 56-65 img/s
//! with glibc's defaults, 69-71 with these settings; the max-pool backward,
//! which scatters into a fresh 19 MB buffer, went from 20 ms to 1.5 ms.
//!
//! Settings: the largest mmap threshold glibc accepts (32 MiB on 64-bit), no
//! trimming, and 256 MiB of heap growth at a time (address space only until
//! touched). The process keeps its peak heap until it exits, which is what a
//! training run reaches every step anyway.

/// Applies the settings, unless the user set any malloc tunable themselves
/// (`MALLOC_*_` variables or `GLIBC_TUNABLES`). Call first thing in `main`.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let user_set = std::env::vars_os().any(|(k, _)| {
            let k = k.to_string_lossy();
            k == "GLIBC_TUNABLES" || (k.starts_with("MALLOC_") && k.ends_with('_'))
        });
        if user_set {
            return;
        }
        // SAFETY: mallopt only changes allocator parameters; called before
        // any other thread exists.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
            libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
            libc::mallopt(libc::M_TOP_PAD, 256 << 20);
        }
    }
}
