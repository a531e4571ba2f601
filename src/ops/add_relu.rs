//! `relu(a + b)`, the end of every residual block, as one CPU `CustomOp2`.
//!
//! candle computes it as an add and a ReLU, and its ReLU backward builds a
//! zero tensor, a comparison mask, that mask as floats and a product before
//! the gradient reaches the add: five whole-tensor passes, each allocating.
//! Here the forward is one pass and the backward one (`dy` where the output
//! is positive), shared by both inputs.

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor, bail};
use rayon::prelude::*;

/// `relu(a + b)`; `a` and `b` of the same shape and dtype.
pub fn add_relu(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let fast = super::fast_cpu(a.device())
        && a.dims() == b.dims()
        && a.dtype() == b.dtype()
        && matches!(a.dtype(), candle_core::DType::F32 | candle_core::DType::F64);
    if !fast {
        return (a + b)?.relu();
    }
    a.contiguous()?.apply_op2(&b.contiguous()?, AddRelu)
}

/// Elements per rayon task.
const CHUNK: usize = 1 << 14;

struct AddRelu;

fn fwd<T>(a: &[T], b: &[T]) -> Vec<T>
where
    T: Copy + Send + Sync + Default + PartialOrd + std::ops::Add<Output = T>,
{
    assert_eq!(a.len(), b.len(), "add_relu: operands of different lengths");
    let fill = |y: &mut [std::mem::MaybeUninit<T>]| {
        y.par_chunks_mut(CHUNK)
            .zip(a.par_chunks(CHUNK).zip(b.par_chunks(CHUNK)))
            .for_each(|(y, (a, b))| {
                for ((o, &x), &z) in y.iter_mut().zip(a).zip(b) {
                    let s = x + z;
                    o.write(if s > T::default() { s } else { T::default() });
                }
            });
    };
    // SAFETY: a and b have the same length (asserted above), so every value is
    // written.
    unsafe { super::written(a.len(), fill) }
}

/// `dy` where `y > 0`, else 0.
fn gate<T>(y: &[T], g: &[T]) -> Vec<T>
where
    T: Copy + Send + Sync + Default + PartialOrd,
{
    assert_eq!(y.len(), g.len(), "add_relu: gradient of a different length");
    let fill = |d: &mut [std::mem::MaybeUninit<T>]| {
        d.par_chunks_mut(CHUNK)
            .zip(y.par_chunks(CHUNK).zip(g.par_chunks(CHUNK)))
            .for_each(|(d, (y, g))| {
                for ((o, &yv), &gv) in d.iter_mut().zip(y).zip(g) {
                    o.write(if yv > T::default() { gv } else { T::default() });
                }
            });
    };
    // SAFETY: y and g have the same length (asserted above), so every value is
    // written.
    unsafe { super::written(y.len(), fill) }
}

/// An element-wise op of two same-shape f32 or f64 tensors, both ops' CPU
/// forward: `f32` / `f64` are the kernel for each type, `what` names the op
/// in errors.
fn elementwise2(
    (s1, l1): (&CpuStorage, &Layout),
    (s2, l2): (&CpuStorage, &Layout),
    what: &str,
    f32: fn(&[f32], &[f32]) -> Vec<f32>,
    f64: fn(&[f64], &[f64]) -> Vec<f64>,
) -> Result<(CpuStorage, Shape)> {
    if l1.dims() != l2.dims() {
        bail!("{what}: shapes {:?} and {:?} differ", l1.dims(), l2.dims())
    }
    let out = super::binary_storage((s1, l1), (s2, l2), what, f32, f64)?;
    Ok((out, l1.shape().clone()))
}

impl CustomOp2 for AddRelu {
    fn name(&self) -> &'static str {
        "pirlkit-add-relu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        elementwise2((s1, l1), (s2, l2), "add-relu", fwd, fwd)
    }

    fn bwd(
        &self,
        _a: &Tensor,
        _b: &Tensor,
        res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let d = res.apply_op2_no_bwd(&grad_res.contiguous()?, &ReluGate)?;
        Ok((Some(d.clone()), Some(d)))
    }
}

/// `(y, dy) -> dy * (y > 0)`.
struct ReluGate;

impl CustomOp2 for ReluGate {
    fn name(&self) -> &'static str {
        "pirlkit-relu-gate"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        elementwise2((s1, l1), (s2, l2), "add-relu backward", gate, gate)
    }
}
