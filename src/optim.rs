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
}

/// The optimiser over the trainable variables of a `VarMap` (BatchNorm running
/// statistics excluded), in name order.
pub struct Optimizer {
    cfg: OptimConfig,
    params: Vec<Param>,
    /// SGD: one momentum buffer per param. AdamW: first and second moments.
    state: Vec<Vec<Tensor>>,
    steps: usize,
}

/// True for variables the optimiser updates.
pub fn is_trainable(name: &str) -> bool {
    !(name.ends_with("running_mean") || name.ends_with("running_var"))
}

impl Optimizer {
    /// Optimises the trainable variables of `vm` whose names start with one of
    /// `prefixes` (all when empty).
    pub fn new(vm: &VarMap, cfg: &OptimConfig, prefixes: &[&str]) -> Result<Self> {
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
            })
            .collect();
        params.sort_by(|a, b| a.name.cmp(&b.name));
        let state = params
            .iter()
            .map(|p| {
                let z = p.var.zeros_like()?;
                Ok(match cfg.kind {
                    OptimizerKind::Sgd => vec![z],
                    OptimizerKind::Adamw => vec![z.clone(), z],
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
            for (k, t) in st.iter().enumerate() {
                out.insert(format!("slot{k}.{}", p.name), t.clone());
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
            for (k, t) in st.iter_mut().enumerate() {
                let key = format!("slot{k}.{}", p.name);
                let s = saved.get(&key).ok_or_else(|| {
                    candle_core::Error::Msg(format!("optimizer state lacks {key}"))
                })?;
                *t = s.to_device(p.var.device())?.to_dtype(p.var.dtype())?;
            }
        }
        let steps = saved
            .get("steps")
            .ok_or_else(|| candle_core::Error::Msg("optimizer state lacks steps".into()))?;
        self.steps = steps.to_vec1::<u32>()?[0] as usize;
        Ok(())
    }
}
