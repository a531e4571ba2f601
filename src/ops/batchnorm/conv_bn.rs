//! Conv (no bias) followed by training-mode BatchNorm (+ ReLU) as one CPU
//! op, [`BatchNorm2d::forward_conv_t`]: the conv's output never becomes a
//! graph node, so candle's backward does not build a zero tensor and add the
//! BatchNorm's input gradient into it. The kernels are the conv's and the
//! BatchNorm's own, called in sequence.

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor, bail};

use super::{BatchNorm2d, BnBackward, BnTrain};

impl BatchNorm2d {
    /// `relu?(bn(conv2d(x, w)))`, the conv through [`crate::ops::conv2d`]. In
    /// training mode on the CPU the two are one op (`ConvBnTrain`): the
    /// conv's output never becomes a graph node, so candle's backward does
    /// not build (zeros, then add) a gradient tensor for it.
    pub fn forward_conv_t(
        &self,
        x: &Tensor,
        w: &Tensor,
        (stride, padding): (usize, usize),
        train: bool,
        relu: bool,
    ) -> Result<Tensor> {
        let fast = train
            && crate::ops::fast_cpu(x.device())
            && w.device().is_cpu()
            && matches!(x.dtype(), candle_core::DType::F32 | candle_core::DType::F64)
            && x.dtype() == w.dtype()
            && x.dtype() == self.weight.dtype();
        if !train && crate::ops::fast_cpu(x.device()) && w.device().is_cpu() {
            return self.forward_conv_folded(x, w, (stride, padding), relu);
        }
        if !fast {
            return self.forward_t(&crate::ops::conv2d(x, w, stride, padding)?, train, relu);
        }
        let conv = crate::ops::conv::Conv2dOp { stride, padding };
        let op = ConvBnTrain {
            conv,
            eps: self.eps,
            relu,
            stats: Arc::new(Mutex::new(Vec::new())),
            conv_out: Arc::new(Mutex::new(None)),
        };
        let stats = op.stats.clone();
        let gb = Tensor::cat(&[&self.weight, &self.bias], 0)?;
        let y = x.contiguous()?.apply_op3(&w.contiguous()?, &gb, op)?;
        let st = stats.lock().expect("bn stats lock").clone();
        self.update_running(&st, y.dims4()?)?;
        Ok(y)
    }

    /// Evaluation mode, the BatchNorm folded into the conv: with
    /// `s = gamma / sqrt(running_var + eps)`, `relu?(conv2d(x, w * s) +
    /// (beta - running_mean * s))`, per output channel. One conv and one
    /// broadcast add instead of the conv and candle's BatchNorm (about five
    /// whole-tensor passes). The folded weights are built by candle ops from
    /// the variables, so a gradient through an eval-mode forward still
    /// reaches `w`, `gamma` and `beta` (not inside [`crate::ops::inference`],
    /// where they are detached). Equal to the unfolded forward up to
    /// f32 rounding (`tests/conv_op.rs` checks it against it).
    pub fn forward_conv_folded(
        &self,
        x: &Tensor,
        w: &Tensor,
        (stride, padding): (usize, usize),
        relu: bool,
    ) -> Result<Tensor> {
        let c = self.weight.dim(0)?;
        let dt = w.dtype();
        let rm = self.running_mean.as_tensor().to_dtype(dt)?;
        let rv = self.running_var.as_tensor().to_dtype(dt)?;
        let s = (self.weight.to_dtype(dt)? / (rv + self.eps)?.sqrt()?)?;
        let mut wf = if crate::ops::in_inference() && crate::ops::fast_cpu(w.device()) {
            // No graph: one pass across the threads (candle's broadcast
            // multiply runs on one), the same products.
            w.contiguous()?
                .apply_op2_no_bwd(&s.contiguous()?, &ScaleRows)?
        } else {
            w.broadcast_mul(&s.reshape((c, 1, 1, 1))?)?
        };
        let mut bf = (self.bias.to_dtype(dt)? - (rm * &s)?)?;
        if crate::ops::in_inference() {
            (wf, bf) = (wf.detach(), bf.detach());
            let fast = crate::ops::fast_cpu(x.device())
                && !x.track_op()
                && matches!(dt, candle_core::DType::F32 | candle_core::DType::F64)
                && x.dtype() == dt;
            if fast {
                // No graph: the shift and the ReLU in place on the conv's
                // output, instead of a broadcast add and a ReLU that each
                // read and allocate the whole tensor again.
                let op = ConvShift {
                    conv: crate::ops::conv::Conv2dOp { stride, padding },
                    relu,
                };
                return x
                    .contiguous()?
                    .apply_op3(&wf.contiguous()?, &bf.contiguous()?, op);
            }
        }
        let y = crate::ops::conv2d(x, &wf, stride, padding)?
            .broadcast_add(&bf.reshape((1, c, 1, 1))?)?;
        if relu { y.relu() } else { Ok(y) }
    }
}

/// Inference only: `w (C x ...) * s (C)`, each of the `C` rows of `w`
/// times its value of `s`, the rows across the threads.
struct ScaleRows;

impl CustomOp2 for ScaleRows {
    fn name(&self) -> &'static str {
        "pirlkit-scale-rows"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        fn scale<T: Copy + Send + Sync + std::ops::Mul<Output = T>>(w: &[T], s: &[T]) -> Vec<T> {
            use rayon::prelude::*;
            let row = w.len() / s.len().max(1);
            let fill = |out: &mut [std::mem::MaybeUninit<T>]| {
                out.par_chunks_mut(row.max(1))
                    .zip(w.par_chunks(row.max(1)))
                    .zip(s.par_iter())
                    .for_each(|((o, w), &k)| {
                        for (o, &v) in o.iter_mut().zip(w) {
                            o.write(v * k);
                        }
                    });
            };
            // SAFETY: every row of the output is written, one per value of s.
            unsafe { crate::ops::written(w.len(), fill) }
        }
        if l2.dims().len() != 1 || l1.dims().first() != Some(&l2.dims()[0]) {
            bail!("scale rows: {:?} by {:?}", l1.dims(), l2.dims())
        }
        let out = crate::ops::binary_storage((s1, l1), (s2, l2), "scale rows", scale, scale)?;
        Ok((out, l1.shape().clone()))
    }
}

/// Inference only: `relu?(conv2d(x, w) + b)` with `b` per output channel,
/// `(x, w, b) -> y`, the shift and the ReLU applied in place on the conv's
/// output. The same bits as the conv, candle's broadcast add and its ReLU
/// (`max(v, 0)`), which the graph path still takes (`tests/conv_op.rs`).
/// No backward: it is taken only where no input records a graph.
struct ConvShift {
    conv: crate::ops::conv::Conv2dOp,
    relu: bool,
}

/// `y[p] = relu?(y[p] + b[channel of p])` over `(N, C, hw)` planes.
macro_rules! shift_planes {
    ($name:ident, $t:ty) => {
        fn $name(y: &mut [$t], b: &[$t], hw: usize, relu: bool) {
            use rayon::prelude::*;
            let c = b.len();
            y.par_chunks_mut(hw).enumerate().for_each(|(pl, p)| {
                let bc = b[pl % c];
                crate::ops::wide(
                    #[inline(always)]
                    || {
                        if relu {
                            for v in p.iter_mut() {
                                *v = (*v + bc).max(0.0);
                            }
                        } else {
                            for v in p.iter_mut() {
                                *v += bc;
                            }
                        }
                    },
                )
            });
        }
    };
}
shift_planes!(shift_f32, f32);
shift_planes!(shift_f64, f64);

impl CustomOp3 for ConvShift {
    fn name(&self) -> &'static str {
        "pirlkit-conv-shift-inference"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (mut y, shape) = self.conv.cpu_fwd(s1, l1, s2, l2)?;
        let (_, c, h, w) = shape.dims4()?;
        if l3.dims() != [c] {
            bail!("conv-shift: {} channels, shift of shape {:?}", c, l3.dims())
        }
        let _t = crate::ops::profile::time(|| "conv shift (inference)".into());
        match (&mut y, s3) {
            (CpuStorage::F32(y), CpuStorage::F32(b)) => {
                let b = crate::ops::contiguous(b, l3, "conv-shift: b")?;
                shift_f32(y, b, h * w, self.relu)
            }
            (CpuStorage::F64(y), CpuStorage::F64(b)) => {
                let b = crate::ops::contiguous(b, l3, "conv-shift: b")?;
                shift_f64(y, b, h * w, self.relu)
            }
            _ => bail!("conv-shift: f32 or f64 of one dtype"),
        }
        Ok((y, shape))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        _w: &Tensor,
        _b: &Tensor,
        _y: &Tensor,
        _dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        bail!("conv-shift is inference only (no graph)")
    }
}

/// Conv (no bias) then training-mode BatchNorm (+ ReLU), one op:
/// `(x, w, [gamma; beta]) -> y`. The conv's output is kept here for the
/// backward (where candle would have kept it as a node).
struct ConvBnTrain {
    conv: crate::ops::conv::Conv2dOp,
    eps: f64,
    relu: bool,
    stats: Arc<Mutex<Vec<f64>>>,
    conv_out: Arc<Mutex<Option<(CpuStorage, Layout)>>>,
}

/// `gamma` and `beta` inside the packed `[gamma; beta]` of `l`.
fn halves(l: &Layout) -> Result<(Layout, Layout)> {
    let (a, b) = l
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg("conv-bn: [gamma; beta] not contiguous".into()))?;
    if (b - a) % 2 != 0 {
        bail!("conv-bn: [gamma; beta] of odd length {}", b - a)
    }
    let c = (b - a) / 2;
    Ok((
        Layout::contiguous_with_offset(c, a),
        Layout::contiguous_with_offset(c, a + c),
    ))
}

impl CustomOp3 for ConvBnTrain {
    fn name(&self) -> &'static str {
        "pirlkit-conv-batchnorm-train"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (yc, shape) = self.conv.cpu_fwd(s1, l1, s2, l2)?;
        let lc = Layout::contiguous(shape);
        let (lg, lb) = halves(l3)?;
        let bn = BnTrain {
            eps: self.eps,
            relu: self.relu,
            stats: self.stats.clone(),
        };
        let out = bn.cpu_fwd(&yc, &lc, s3, &lg, s3, &lb)?;
        *self.conv_out.lock().expect("conv-bn lock") = Some((yc, lc));
        Ok(out)
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        gb: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let want_dx = x.track_op();
        let c = gb.elem_count() / 2;
        let params = gb.to_dtype(candle_core::DType::F64)?.to_vec1::<f64>()?;
        let op = ConvBnBackward {
            conv: crate::ops::conv::Conv2dBackward::new(self.conv, want_dx),
            bn: BnBackward {
                eps: self.eps,
                relu: self.relu,
                weight: params[..c].to_vec(),
                bias: params[c..].to_vec(),
                stats: self.stats.lock().expect("bn stats lock").clone(),
            },
            conv_out: self.conv_out.clone(),
            dgb: Mutex::new(None),
        };
        let dx = x.apply_op3_no_bwd(w, &grad_res.contiguous()?, &op)?;
        let dw = op.conv.take_dw(w)?;
        let dgb = op.dgb.lock().expect("conv-bn lock").take().ok_or_else(|| {
            candle_core::Error::Msg("conv-bn backward: no parameter gradient".into())
        })?;
        let dgb = Tensor::from_vec(dgb, 2 * c, x.device())?.to_dtype(gb.dtype())?;
        Ok((want_dx.then_some(dx), Some(dw), Some(dgb)))
    }
}

/// Gradients of [`ConvBnTrain`]: `(x, w, dy) -> dX`, as the conv's
/// backward gives it (`dW` left in `conv`); `[dgamma; dbeta]` in `dgb`.
struct ConvBnBackward {
    conv: crate::ops::conv::Conv2dBackward,
    bn: BnBackward,
    conv_out: Arc<Mutex<Option<(CpuStorage, Layout)>>>,
    dgb: Mutex<Option<Vec<f64>>>,
}

impl CustomOp3 for ConvBnBackward {
    fn name(&self) -> &'static str {
        "pirlkit-conv-batchnorm-train-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let guard = self.conv_out.lock().expect("conv-bn lock");
        let Some((yc, lc)) = guard.as_ref() else {
            bail!("conv-bn backward: the forward's conv output is gone")
        };
        // [dyc, dgamma, dbeta].
        let (packed, _) = self.bn.cpu_fwd(yc, lc, s3, l3)?;
        let ny = lc.shape().elem_count();
        let tail: Vec<f64> = match &packed {
            CpuStorage::F32(v) => v[ny..].iter().map(|&a| a as f64).collect(),
            CpuStorage::F64(v) => v[ny..].to_vec(),
            _ => bail!("conv-bn backward: unsupported dtype"),
        };
        *self.dgb.lock().expect("conv-bn lock") = Some(tail);
        let ldy = Layout::contiguous(lc.shape().clone());
        self.conv.cpu_fwd(s1, l1, s2, l2, &packed, &ldy)
    }
}
