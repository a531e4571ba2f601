//! SGD with momentum and AdamW with decoupled weight decay, with saveable
//! state, and a cosine learning-rate schedule with linear warm-up.
//!
//! candle's `SGD` has neither momentum nor weight decay and its optimizer
//! state cannot be saved; exact resume needs both.

use std::collections::HashMap;

use candle_core::{Result, Tensor, Var, backprop::GradStore};
use candle_nn::VarMap;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    Sgd,
    Adamw,
}

/// Optimiser settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct OptimConfig {
    /// `sgd` (default) or `adamw`.
    pub kind: OptimizerKind,
    /// Peak learning rate after warm-up; default 0.03.
    pub lr: f64,
    /// SGD momentum; default 0.9.
    pub momentum: f64,
    /// Weight decay on conv and linear weights (never BatchNorm or biases); default 1e-4.
    pub weight_decay: f64,
    /// AdamW betas; default (0.9, 0.999).
    pub betas: (f64, f64),
    /// Linear warm-up length in epochs (may be fractional); default 0.
    pub warmup_epochs: f64,
    /// Final learning rate as a fraction of `lr`; default 0.
    pub final_lr_fraction: f64,
}

impl Default for OptimConfig {
    fn default() -> Self {
        Self {
            kind: OptimizerKind::Sgd,
            lr: 0.03,
            momentum: 0.9,
            weight_decay: 1e-4,
            betas: (0.9, 0.999),
            warmup_epochs: 0.0,
            final_lr_fraction: 0.0,
        }
    }
}

impl OptimConfig {
    pub fn check(&self) -> std::result::Result<(), String> {
        let finite = [
            self.lr,
            self.momentum,
            self.weight_decay,
            self.betas.0,
            self.betas.1,
            self.warmup_epochs,
            self.final_lr_fraction,
        ];
        if finite.iter().any(|v| !v.is_finite()) {
            return Err("optim: every value must be finite".into());
        }
        if self.lr <= 0.0 {
            return Err(format!("optim.lr must be > 0, got {}", self.lr));
        }
        if !(0.0..1.0).contains(&self.momentum) {
            return Err(format!(
                "optim.momentum must be in [0, 1), got {}",
                self.momentum
            ));
        }
        if self.weight_decay < 0.0
            || self.warmup_epochs < 0.0
            || !(0.0..=1.0).contains(&self.final_lr_fraction)
        {
            return Err(
                "optim: weight_decay, warmup_epochs >= 0 and final_lr_fraction in [0, 1] required"
                    .into(),
            );
        }
        Ok(())
    }
}

/// Cosine decay from `lr` to `lr * final_fraction` after a linear warm-up.
#[derive(Debug, Clone, Copy)]
pub struct CosineSchedule {
    pub lr: f64,
    pub warmup_steps: usize,
    pub total_steps: usize,
    pub final_fraction: f64,
}

impl CosineSchedule {
    /// The learning rate used for optimiser step `step` (0-based).
    pub fn at(&self, step: usize) -> f64 {
        if step < self.warmup_steps {
            return self.lr * (step + 1) as f64 / self.warmup_steps as f64;
        }
        let span = self.total_steps.saturating_sub(self.warmup_steps).max(1);
        let t = ((step - self.warmup_steps) as f64 / span as f64).min(1.0);
        let lo = self.lr * self.final_fraction;
        lo + 0.5 * (self.lr - lo) * (1.0 + (std::f64::consts::PI * t).cos())
    }
}

struct Param {
    name: String,
    var: Var,
    decay: bool,
    /// This parameter's learning rate as a fraction of the step's.
    lr_mult: f64,
}

/// One parameter's optimiser buffers (SGD: the momentum buffer; AdamW: the
/// first and second moments).
enum Slots {
    /// On the CPU in f32: plain vectors, updated together with the weight in
    /// one fused in-place pass ([`FusedUpdate`]).
    Host(Vec<Vec<f32>>),
    /// Elsewhere (GPU, f64): tensors, updated with candle's ops.
    Tensors(Vec<Tensor>),
}

/// The optimiser over the trainable variables of a `VarMap` (BatchNorm running
/// statistics excluded), in name order.
pub struct Optimizer {
    cfg: OptimConfig,
    params: Vec<Param>,
    state: Vec<Slots>,
    steps: usize,
}

/// The whole SGD-momentum or AdamW update of one f32 parameter in one pass,
/// in place: `w` (the op's target), its gradient, and the buffers.
/// Elementwise, so the result does not depend on the number of threads.
struct FusedUpdate<'a> {
    kind: OptimizerKind,
    lr: f32,
    /// Weight decay for this parameter (0 when it is not decayed).
    wd: f32,
    momentum: f32,
    first: bool,
    betas: (f32, f32),
    /// Bias corrections 1 - beta^t.
    corr: (f32, f32),
    bufs: std::sync::Mutex<&'a mut Vec<Vec<f32>>>,
}

const FUSED_CHUNK: usize = 1 << 15;

impl candle_core::InplaceOp2 for FusedUpdate<'_> {
    fn name(&self) -> &'static str {
        "pirlkit-fused-optimizer"
    }

    fn cpu_fwd(
        &self,
        s1: &mut candle_core::CpuStorage,
        l1: &candle_core::Layout,
        s2: &candle_core::CpuStorage,
        l2: &candle_core::Layout,
    ) -> Result<()> {
        use candle_core::CpuStorage as S;
        use rayon::prelude::*;
        let (S::F32(w), S::F32(g)) = (s1, s2) else {
            candle_core::bail!("fused optimizer: f32 only")
        };
        let (Some((a1, b1)), Some((a2, b2))) = (l1.contiguous_offsets(), l2.contiguous_offsets())
        else {
            candle_core::bail!("fused optimizer: weight and gradient must be contiguous")
        };
        let (w, g) = (&mut w[a1..b1], &g[a2..b2]);
        let mut guard = self.bufs.lock().expect("optimizer buffers");
        let bufs: &mut Vec<Vec<f32>> = &mut guard;
        if g.len() != w.len() || bufs.iter().any(|b| b.len() != w.len()) {
            candle_core::bail!("fused optimizer: sizes of weight, gradient and buffers differ")
        }
        let (lr, wd) = (self.lr, self.wd);
        match self.kind {
            OptimizerKind::Sgd => {
                let (mom, first) = (self.momentum, self.first);
                w.par_chunks_mut(FUSED_CHUNK)
                    .zip(g.par_chunks(FUSED_CHUNK))
                    .zip(bufs[0].par_chunks_mut(FUSED_CHUNK))
                    .for_each(|((w, g), b)| {
                        for ((w, g), b) in w.iter_mut().zip(g).zip(b.iter_mut()) {
                            let d = g + wd * *w;
                            // PyTorch: the first step sets the buffer to the gradient.
                            *b = if first { d } else { mom * *b + d };
                            *w -= lr * *b;
                        }
                    });
            }
            OptimizerKind::Adamw => {
                let ((be1, be2), (c1, c2)) = (self.betas, self.corr);
                let (m, v) = bufs.split_at_mut(1);
                w.par_chunks_mut(FUSED_CHUNK)
                    .zip(g.par_chunks(FUSED_CHUNK))
                    .zip(m[0].par_chunks_mut(FUSED_CHUNK))
                    .zip(v[0].par_chunks_mut(FUSED_CHUNK))
                    .for_each(|(((w, g), m), v)| {
                        for (((w, g), m), v) in
                            w.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut())
                        {
                            *m = be1 * *m + (1.0 - be1) * g;
                            *v = be2 * *v + (1.0 - be2) * g * g;
                            let upd = (*m / c1) / ((*v / c2).sqrt() + 1e-8);
                            *w = *w * (1.0 - lr * wd) - lr * upd;
                        }
                    });
            }
        }
        Ok(())
    }
}

/// Σ x² of a contiguous f32 CPU tensor in one pass without a copy (chunk
/// sums in f64, added in order: independent of the thread count).
fn host_sq_norm(t: &Tensor) -> Option<f64> {
    use rayon::prelude::*;
    if !t.device().is_cpu() || t.dtype() != candle_core::DType::F32 {
        return None;
    }
    let (s, l) = t.storage_and_layout();
    let (a, b) = l.contiguous_offsets()?;
    match &*s {
        candle_core::Storage::Cpu(candle_core::CpuStorage::F32(v)) => {
            let parts: Vec<f64> = v[a..b]
                .par_chunks(FUSED_CHUNK)
                .map(|c| c.iter().map(|x| (*x as f64) * (*x as f64)).sum::<f64>())
                .collect();
            Some(parts.iter().sum())
        }
        _ => None,
    }
}

/// Whether a parameter takes the fused in-place CPU update.
fn fused(v: &Var) -> bool {
    crate::ops::fast_cpu(v.device()) && v.dtype() == candle_core::DType::F32
}

/// True for variables the optimiser updates.
pub fn is_trainable(name: &str) -> bool {
    !(name.ends_with("running_mean") || name.ends_with("running_var"))
}

impl Optimizer {
    /// Optimises the trainable variables of `vm` whose names start with one of
    /// `prefixes` (all when empty).
    pub fn new(vm: &VarMap, cfg: &OptimConfig, prefixes: &[&str]) -> Result<Self> {
        Self::with_lr_mults(vm, cfg, prefixes, &[])
    }

    /// As [`Optimizer::new`], with per-parameter learning-rate factors: a
    /// parameter whose name starts with the prefix of an entry of
    /// `lr_mults` (the first that matches) steps at that fraction of the
    /// learning rate (discriminative rates); the others at 1.
    pub fn with_lr_mults(
        vm: &VarMap,
        cfg: &OptimConfig,
        prefixes: &[&str],
        lr_mults: &[(&str, f64)],
    ) -> Result<Self> {
        let data = vm.data().lock().expect("varmap lock");
        let mut params: Vec<Param> = data
            .iter()
            .filter(|(n, _)| {
                is_trainable(n)
                    && (prefixes.is_empty() || prefixes.iter().any(|p| n.starts_with(p)))
            })
            .map(|(n, v)| Param {
                name: n.clone(),
                var: v.clone(),
                decay: v.rank() > 1,
                lr_mult: lr_mults
                    .iter()
                    .find(|(p, _)| n.starts_with(p))
                    .map_or(1.0, |(_, m)| *m),
            })
            .collect();
        params.sort_by(|a, b| a.name.cmp(&b.name));
        let slots = match cfg.kind {
            OptimizerKind::Sgd => 1,
            OptimizerKind::Adamw => 2,
        };
        let state = params
            .iter()
            .map(|p| {
                Ok(if fused(&p.var) {
                    Slots::Host(vec![vec![0f32; p.var.elem_count()]; slots])
                } else {
                    let z = p.var.zeros_like()?;
                    Slots::Tensors(vec![z; slots])
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            cfg: cfg.clone(),
            params,
            state,
            steps: 0,
        })
    }

    /// Sets the learning-rate factor of every parameter whose name starts
    /// with `prefix`.
    pub fn set_lr_mult(&mut self, prefix: &str, mult: f64) {
        for p in self
            .params
            .iter_mut()
            .filter(|p| p.name.starts_with(prefix))
        {
            p.lr_mult = mult;
        }
    }

    pub fn steps(&self) -> usize {
        self.steps
    }

    /// One update with learning rate `lr`. A parameter without a gradient is
    /// left as it is (its momentum is not advanced).
    pub fn step(&mut self, grads: &GradStore, lr: f64) -> Result<()> {
        let c = &self.cfg;
        let t = (self.steps + 1) as i32;
        for (p, st) in self.params.iter().zip(self.state.iter_mut()) {
            let Some(g) = grads.get(p.var.as_tensor()) else {
                continue;
            };
            let lr = lr * p.lr_mult;
            if let Slots::Host(bufs) = st {
                let (b1, b2) = c.betas;
                let op = FusedUpdate {
                    kind: c.kind,
                    lr: lr as f32,
                    wd: if p.decay { c.weight_decay as f32 } else { 0.0 },
                    momentum: c.momentum as f32,
                    first: self.steps == 0,
                    betas: (b1 as f32, b2 as f32),
                    corr: ((1.0 - b1.powi(t)) as f32, (1.0 - b2.powi(t)) as f32),
                    bufs: std::sync::Mutex::new(bufs),
                };
                p.var.as_tensor().inplace_op2(&g.contiguous()?, &op)?;
                continue;
            }
            let Slots::Tensors(st) = st else {
                unreachable!("host slots handled above")
            };
            let w = p.var.as_tensor().detach();
            match c.kind {
                OptimizerKind::Sgd => {
                    let g = if p.decay && c.weight_decay > 0.0 {
                        (g + (&w * c.weight_decay)?)?
                    } else {
                        g.clone()
                    };
                    // PyTorch: the first step sets the buffer to the gradient.
                    let buf = if self.steps == 0 {
                        g
                    } else {
                        ((&st[0] * c.momentum)? + g)?
                    };
                    p.var.set(&(w - (&buf * lr)?)?)?;
                    st[0] = buf;
                }
                OptimizerKind::Adamw => {
                    let (b1, b2) = c.betas;
                    let m = ((&st[0] * b1)? + (g * (1.0 - b1))?)?;
                    let v = ((&st[1] * b2)? + (g.sqr()? * (1.0 - b2))?)?;
                    let mhat = (&m / (1.0 - b1.powi(t)))?;
                    let vhat = (&v / (1.0 - b2.powi(t)))?;
                    let w = if p.decay {
                        (&w * (1.0 - lr * c.weight_decay))?
                    } else {
                        w
                    };
                    let upd = (mhat / (vhat.sqrt()? + 1e-8)?)?;
                    p.var.set(&(w - (upd * lr)?)?)?;
                    st[0] = m;
                    st[1] = v;
                }
            }
        }
        self.steps += 1;
        Ok(())
    }

    /// Σ‖g‖² over the optimised parameters' gradients (non-finite when any
    /// gradient holds a NaN or an infinity).
    pub fn grad_sq_norm(&self, grads: &GradStore) -> Result<f64> {
        let mut total = 0f64;
        for p in &self.params {
            if let Some(g) = grads.get(p.var.as_tensor()) {
                if let Some(s) = host_sq_norm(g) {
                    total += s;
                    continue;
                }
                total += g
                    .sqr()?
                    .sum_all()?
                    .to_dtype(candle_core::DType::F64)?
                    .to_scalar::<f64>()?;
            }
        }
        Ok(total)
    }

    /// The state as named tensors (`<slot>.<param>`), plus the step count.
    pub fn state_tensors(&self) -> Result<HashMap<String, Tensor>> {
        let mut out = HashMap::new();
        for (p, st) in self.params.iter().zip(&self.state) {
            match st {
                Slots::Tensors(st) => {
                    for (k, t) in st.iter().enumerate() {
                        out.insert(format!("slot{k}.{}", p.name), t.clone());
                    }
                }
                Slots::Host(bufs) => {
                    for (k, b) in bufs.iter().enumerate() {
                        let t = Tensor::from_slice(b, p.var.shape(), p.var.device())?;
                        out.insert(format!("slot{k}.{}", p.name), t);
                    }
                }
            }
        }
        let dev = self
            .params
            .first()
            .map(|p| p.var.device().clone())
            .unwrap_or(candle_core::Device::Cpu);
        out.insert("steps".into(), Tensor::new(&[self.steps as u32], &dev)?);
        Ok(out)
    }

    /// Restores what [`Optimizer::state_tensors`] saved.
    pub fn load_state(&mut self, saved: &HashMap<String, Tensor>) -> Result<()> {
        for (p, st) in self.params.iter().zip(self.state.iter_mut()) {
            let get = |k: usize| {
                let key = format!("slot{k}.{}", p.name);
                let s = saved.get(&key).ok_or_else(|| {
                    candle_core::Error::Msg(format!("optimizer state lacks {key}"))
                })?;
                if s.elem_count() != p.var.elem_count() {
                    candle_core::bail!(
                        "optimizer state {key} has {} values, the parameter {}",
                        s.elem_count(),
                        p.var.elem_count()
                    )
                }
                Ok(s.clone())
            };
            match st {
                Slots::Tensors(st) => {
                    for (k, t) in st.iter_mut().enumerate() {
                        *t = get(k)?.to_device(p.var.device())?.to_dtype(p.var.dtype())?;
                    }
                }
                Slots::Host(bufs) => {
                    for (k, b) in bufs.iter_mut().enumerate() {
                        *b = get(k)?
                            .to_dtype(candle_core::DType::F32)?
                            .flatten_all()?
                            .to_vec1::<f32>()?;
                    }
                }
            }
        }
        let steps = saved
            .get("steps")
            .ok_or_else(|| candle_core::Error::Msg("optimizer state lacks steps".into()))?;
        self.steps = steps.to_vec1::<u32>()?[0] as usize;
        Ok(())
    }
}
