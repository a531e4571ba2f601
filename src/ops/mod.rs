//! Custom CPU kernels behind candle's `CustomOp` traits. On other devices
//! (CUDA) the same calls go to candle's own differentiable ops.
//!
//! - [`conv`]: 2-D convolution with its own backward: im2col (one shifted
//!   copy of the plane per channel and tap for stride-1 "same" convs, else
//!   row copies, or a per-tap index table for narrow rows) + one GEMM per
//!   group of images; Winograd F(2x2, 3x3) for stride-1 3x3 convs on
//!   planes of 16 pixels and more; one GEMM per kernel tap (no padding
//!   taps) for other stride-1 "same" convs on planes of 4-36 pixels; one
//!   dense GEMM on other planes of at most `kh*kw` pixels; no input
//!   gradient for tensors that need none.
//! - [`batchnorm`]: training-mode BatchNorm (+ ReLU), alone or fused with
//!   the conv before it ([`BatchNorm2d::forward_conv_t`]), with a
//!   closed-form backward; per-channel sums in f64 lanes.
//! - [`add_relu()`]: the residual `relu(a + b)`, one pass each way.
//! - [`maxpool`]: max pool with padding, separable (rows, then columns)
//!   with branch-free selects; the backward reads the forward's argmax.
//! - [`profile`]: opt-in per-kernel timers (`pirlkit bench --profile`).
//!
//! candle-core itself is patched (vendor/candle-core/PIRLKIT-PATCH.md) so
//! that its backward stores a tensor's first gradient instead of adding it
//! to a fresh zero tensor.
//!
//! Every kernel is checked against candle's ops and finite differences
//! (tests/conv_op.rs, tests/gradients.rs, `pirlkit selftest`), and gives the
//! same bits whatever the number of threads.
pub mod add_relu;
pub mod batchnorm;
pub mod conv;
pub mod maxpool;
pub mod profile;
pub use add_relu::add_relu;
pub use batchnorm::BatchNorm2d;
pub use conv::conv2d;
pub use maxpool::MaxPool2d;

use std::cell::Cell;

thread_local! {
    static REFERENCE: Cell<bool> = const { Cell::new(false) };
    static INFERENCE: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` as inference on this thread: the evaluation-mode conv +
/// BatchNorm uses detached folded weights, so (with an untracked input) no
/// op records a graph and every intermediate is freed as soon as the next
/// layer has read it, as under PyTorch's `no_grad`. Nothing computed inside
/// carries a gradient.
pub fn inference<T>(f: impl FnOnce() -> T) -> T {
    let before = INFERENCE.with(|r| r.replace(true));
    let out = f();
    INFERENCE.with(|r| r.set(before));
    out
}

/// Whether this thread is inside [`inference`].
pub fn in_inference() -> bool {
    INFERENCE.with(|r| r.get())
}

/// Runs `f` with pirlkit's fast CPU kernels switched off on this thread:
/// conv and max-pool take the path they take on a GPU (candle's own ops),
/// so the two can be compared on a machine without one (`pirlkit selftest`).
pub fn with_reference_ops<T>(f: impl FnOnce() -> T) -> T {
    let before = REFERENCE.with(|r| r.replace(true));
    let out = f();
    REFERENCE.with(|r| r.set(before));
    out
}

/// A vector of `n` values, every one of which `fill` writes (through the
/// `MaybeUninit` slots or their pointer), without zeroing them first: for
/// large buffers that are overwritten anyway (a transposed copy of a weight
/// tensor is 9 MiB at 512 channels, and its memset a pass over memory of
/// its own).
///
/// # Safety
/// `fill` must initialise all `n` values before it returns.
pub(crate) unsafe fn written<T: Copy>(
    n: usize,
    fill: impl FnOnce(&mut [std::mem::MaybeUninit<T>]),
) -> Vec<T> {
    let mut v: Vec<std::mem::MaybeUninit<T>> = Vec::with_capacity(n);
    // SAFETY: MaybeUninit values need no initialisation.
    unsafe { v.set_len(n) };
    fill(&mut v);
    let mut v = std::mem::ManuallyDrop::new(v);
    // SAFETY: fill initialised every value (the caller's contract), and
    // MaybeUninit<T> has T's size and alignment, so the allocation is a
    // valid Vec<T> of the same length and capacity.
    unsafe { Vec::from_raw_parts(v.as_mut_ptr().cast::<T>(), v.len(), v.capacity()) }
}

/// The values of a contiguous tensor's storage, or an error naming `what`
/// (for example "conv2d: x") when its layout is strided.
pub(crate) fn contiguous<'a, T>(
    v: &'a [T],
    layout: &candle_core::Layout,
    what: &str,
) -> candle_core::Result<&'a [T]> {
    match layout.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => candle_core::bail!("{what} must be contiguous"),
    }
}

/// `f32(a, b)` or `f64(a, b)` on the values of two contiguous CPU storages
/// of the same dtype (f32 or f64), as a storage of that dtype; errors name
/// `what`.
pub(crate) fn binary_storage(
    (s1, l1): (&candle_core::CpuStorage, &candle_core::Layout),
    (s2, l2): (&candle_core::CpuStorage, &candle_core::Layout),
    what: &str,
    f32: impl FnOnce(&[f32], &[f32]) -> Vec<f32>,
    f64: impl FnOnce(&[f64], &[f64]) -> Vec<f64>,
) -> candle_core::Result<candle_core::CpuStorage> {
    use candle_core::CpuStorage as S;
    let (a, b) = (
        format!("{what}: first input"),
        format!("{what}: second input"),
    );
    Ok(match (s1, s2) {
        (S::F32(x), S::F32(y)) => S::F32(f32(contiguous(x, l1, &a)?, contiguous(y, l2, &b)?)),
        (S::F64(x), S::F64(y)) => S::F64(f64(contiguous(x, l1, &a)?, contiguous(y, l2, &b)?)),
        _ => candle_core::bail!("{what}: unsupported dtypes (f32 or f64, both the same)"),
    })
}

/// Half-open range of the outputs `o < outs` that kernel tap `t` reaches
/// along one axis: those whose input `o*stride + t - pad` lies in `[0, len)`
/// (conv and max-pool windows alike).
#[inline]
pub(crate) fn tap_outputs(
    t: usize,
    pad: usize,
    stride: usize,
    len: usize,
    outs: usize,
) -> (usize, usize) {
    let lo = if t >= pad {
        0
    } else {
        (pad - t).div_ceil(stride)
    };
    let hi = if len + pad <= t {
        0
    } else {
        (len + pad - t).div_ceil(stride)
    };
    let hi = hi.min(outs);
    (lo.min(hi), hi)
}

/// Runs `f` compiled for AVX2 where the CPU has it, else as built (the
/// baseline x86-64 target has SSE2 only, two f64 or four f32 lanes). `f`
/// and what it calls must be `#[inline(always)]` so that they are compiled
/// into the AVX2 copy. No FMA: Rust never contracts `a * b + c`, so both
/// copies compute the same bits.
#[inline(always)]
pub(crate) fn wide<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2 (checked just above).
        return unsafe { avx2(f) };
    }
    f()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn avx2<R>(f: impl FnOnce() -> R) -> R {
    f()
}

/// Whether the fast CPU kernels apply to a tensor on `dev` on this thread.
pub(crate) fn fast_cpu(dev: &candle_core::Device) -> bool {
    dev.is_cpu() && !REFERENCE.with(|r| r.get())
}
