//! The PIRL memory bank: one L2-normalised row per training image.

use candle_core::{Device, Result, Tensor};
use rand::Rng;

/// `n` rows of `dim` floats, each of unit L2 norm once filled.
#[derive(Debug, Clone, PartialEq)]
pub struct MemoryBank {
    data: Vec<f32>,
    n: usize,
    dim: usize,
    /// Weight of the old row in the update (the paper's 0.5).
    pub momentum: f32,
}

fn normalize(row: &mut [f32]) {
    let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
    row.iter_mut().for_each(|v| *v /= norm);
}

impl MemoryBank {
    pub fn new(n: usize, dim: usize, momentum: f32) -> Self {
        Self {
            data: vec![0.0; n * dim],
            n,
            dim,
            momentum,
        }
    }

    pub fn len(&self) -> usize {
        self.n
    }
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }
    pub fn dim(&self) -> usize {
        self.dim
    }
    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.dim..(i + 1) * self.dim]
    }
    pub fn as_slice(&self) -> &[f32] {
        &self.data
    }

    /// Sets rows `idx` to the L2-normalised `rows` (`idx.len() x dim`).
    pub fn fill(&mut self, idx: &[usize], rows: &[f32]) {
        assert_eq!(
            rows.len(),
            idx.len() * self.dim,
            "memory bank: row count mismatch"
        );
        for (k, &i) in idx.iter().enumerate() {
            let dst = &mut self.data[i * self.dim..(i + 1) * self.dim];
            dst.copy_from_slice(&rows[k * self.dim..(k + 1) * self.dim]);
            normalize(dst);
        }
    }

    /// m_i <- normalize(momentum * m_i + (1 - momentum) * f_i) for each i in `idx`.
    pub fn update(&mut self, idx: &[usize], rows: &[f32]) {
        assert_eq!(
            rows.len(),
            idx.len() * self.dim,
            "memory bank: row count mismatch"
        );
        let (a, b) = (self.momentum, 1.0 - self.momentum);
        for (k, &i) in idx.iter().enumerate() {
            let dst = &mut self.data[i * self.dim..(i + 1) * self.dim];
            for (d, s) in dst.iter_mut().zip(&rows[k * self.dim..(k + 1) * self.dim]) {
                *d = a * *d + b * s;
            }
            normalize(dst);
        }
    }

    /// Rows `idx` as a `(idx.len(), dim)` tensor (no gradient).
    pub fn gather(&self, idx: &[usize], device: &Device) -> Result<Tensor> {
        let mut v = Vec::with_capacity(idx.len() * self.dim);
        for &i in idx {
            v.extend_from_slice(self.row(i));
        }
        Tensor::from_vec(v, (idx.len(), self.dim), device)
    }

    /// `count` distinct row indices drawn uniformly from the rows not in
    /// `exclude` (the batch's own images: a positive must never also be a
    /// negative, or its two identical logits cancel the pull towards it).
    /// When `count` is at least the rows left, all of them, in order.
    pub fn sample_negatives<R: Rng>(
        &self,
        count: usize,
        exclude: &[usize],
        rng: &mut R,
    ) -> Vec<usize> {
        let mut out_of = vec![false; self.n];
        for &i in exclude {
            if i < self.n {
                out_of[i] = true;
            }
        }
        let mut all: Vec<usize> = (0..self.n).filter(|&i| !out_of[i]).collect();
        if count >= all.len() {
            return all;
        }
        // Partial Fisher-Yates over the candidates.
        for i in 0..count {
            let j = rng.random_range(i..all.len());
            all.swap(i, j);
        }
        all.truncate(count);
        all
    }

    /// For each anchor row `idx[k]` in turn, `count` distinct rows drawn
    /// uniformly from all the others (only the anchor's own row is left out,
    /// as the PyTorch reference draws them): `idx.len() * count` indices,
    /// anchor-major. When `count` is at least `n - 1`, every other row.
    pub fn sample_negatives_per_anchor<R: Rng>(
        &self,
        count: usize,
        idx: &[usize],
        rng: &mut R,
    ) -> Vec<usize> {
        let mut out = Vec::with_capacity(idx.len() * count.min(self.n));
        for &a in idx {
            out.extend(self.sample_negatives(count, &[a], rng));
        }
        out
    }

    /// The whole bank as an `(n, dim)` tensor, for checkpoints.
    pub fn to_tensor(&self, device: &Device) -> Result<Tensor> {
        Tensor::from_slice(&self.data, (self.n, self.dim), device)
    }

    pub fn from_tensor(t: &Tensor, momentum: f32) -> Result<Self> {
        let (n, dim) = t.dims2()?;
        Ok(Self {
            data: t.flatten_all()?.to_vec1()?,
            n,
            dim,
            momentum,
        })
    }
}
