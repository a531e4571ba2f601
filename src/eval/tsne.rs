//! Exact t-SNE (van der Maaten & Hinton, 2008) for a 2-D picture of a few
//! hundred feature vectors, as scikit-learn's `TSNE(method="exact")` runs
//! it: the rows centred and reduced to their first principal components,
//! Gaussian affinities calibrated per row to a perplexity by binary search,
//! symmetrised; a Student-t kernel in 2-D; gradient descent with momentum
//! and per-coordinate gains, the affinities exaggerated over the first
//! iterations. Every pair is visited each iteration (O(n²) time and
//! memory): meant for the ~600 test images of a run, not for 10⁵ points.
//!
//! The start is drawn from a seed ([`crate::rng::stream`]) and every sum is
//! taken in a fixed order, so a seed gives the same map whatever the number
//! of threads.

use ndarray::{Array2, Axis};
use rayon::prelude::*;

use crate::error::{Error, Result};

/// t-SNE settings; the defaults are scikit-learn's (`perplexity=30`,
/// `early_exaggeration=12`, `max_iter=1000`, `learning_rate="auto"`) with
/// the usual reduction to 50 principal components first.
#[derive(Debug, Clone, PartialEq)]
pub struct TsneParams {
    /// The effective number of neighbours each point's affinities spread
    /// over; default 30. Sets smaller than `3 * perplexity + 1` use
    /// `(n - 1) / 3` instead, so that every row can reach it.
    pub perplexity: f64,
    /// Principal components the rows are reduced to first (when they have
    /// more dimensions); default 50.
    pub pca_dims: usize,
    /// Gradient steps in all; default 1000.
    pub iterations: usize,
    /// Factor on the affinities over the first `exaggeration_iterations`
    /// steps (clusters form, then spread out); default 12.
    pub exaggeration: f64,
    /// Default 250.
    pub exaggeration_iterations: usize,
    /// Step size; `None` (the default): scikit-learn's `"auto"`,
    /// `max(n / exaggeration / 4, 50)`.
    pub learning_rate: Option<f64>,
}

impl Default for TsneParams {
    fn default() -> Self {
        Self {
            perplexity: 30.0,
            pca_dims: 50,
            iterations: 1000,
            exaggeration: 12.0,
            exaggeration_iterations: 250,
            learning_rate: None,
        }
    }
}

/// Fewest points a map is drawn for.
pub const MIN_POINTS: usize = 5;

impl TsneParams {
    /// Refuses settings that cannot run: non-finite or non-positive
    /// perplexity, exaggeration or learning rate, fewer than 2 components.
    pub fn check(&self) -> std::result::Result<(), String> {
        if !(self.perplexity.is_finite() && self.perplexity > 0.0) {
            return Err(format!(
                "t-SNE perplexity must be positive, got {}",
                self.perplexity
            ));
        }
        if !(self.exaggeration.is_finite() && self.exaggeration >= 1.0) {
            return Err(format!(
                "t-SNE exaggeration must be at least 1, got {}",
                self.exaggeration
            ));
        }
        if let Some(lr) = self.learning_rate
            && !(lr.is_finite() && lr > 0.0)
        {
            return Err(format!("t-SNE learning rate must be positive, got {lr}"));
        }
        if self.pca_dims < 2 {
            return Err(format!(
                "t-SNE needs at least 2 principal components, got {}",
                self.pca_dims
            ));
        }
        Ok(())
    }

    /// The perplexity used for `n` points.
    pub fn perplexity_for(&self, n: usize) -> f64 {
        self.perplexity.min((n as f64 - 1.0) / 3.0).max(1.0)
    }
}

/// A finished map.
#[derive(Debug, Clone, PartialEq)]
pub struct Tsne {
    /// One point per input row, in row order.
    pub points: Vec<(f64, f64)>,
    /// KL(P || Q) of the final map (without exaggeration).
    pub kl_divergence: f64,
    /// KL(P || Q) of the seeded start.
    pub kl_start: f64,
    /// The perplexity used ([`TsneParams::perplexity_for`]).
    pub perplexity: f64,
    /// Dimensions after the principal-component reduction.
    pub dims: usize,
}

/// The t-SNE map of the rows of `x`, started from `seed`.
///
/// # Shapes
/// `x: (n, d)` -> `n` points.
///
/// # Errors
/// Fewer than [`MIN_POINTS`] rows, a non-finite value (named by row and
/// column), or settings that [`TsneParams::check`] refuses.
pub fn tsne(x: &Array2<f64>, params: &TsneParams, seed: u64) -> Result<Tsne> {
    params.check().map_err(Error::Eval)?;
    let n = x.nrows();
    if n < MIN_POINTS {
        return Err(Error::Eval(format!(
            "t-SNE needs at least {MIN_POINTS} points, got {n}"
        )));
    }
    if let Some(((i, j), v)) = x.indexed_iter().find(|(_, v)| !v.is_finite()) {
        return Err(Error::Eval(format!(
            "t-SNE input row {i}, column {j} is {v}"
        )));
    }
    let z = pca_reduce(x, params.pca_dims);
    let perplexity = params.perplexity_for(n);
    let p = joint_p(&squared_distances(&z), perplexity);
    let mut y: Vec<[f64; 2]> = {
        let mut rng = crate::rng::stream(seed, "tsne-init", n as u64, 0);
        (0..n)
            .map(|_| {
                [
                    1e-4 * crate::rng::normal(&mut rng),
                    1e-4 * crate::rng::normal(&mut rng),
                ]
            })
            .collect()
    };
    let kl_start = kl_divergence(&p, &y);
    let lr = params
        .learning_rate
        .unwrap_or((n as f64 / params.exaggeration / 4.0).max(50.0));
    let early = params.exaggeration_iterations.min(params.iterations);
    // Two phases, each starting with no momentum and unit gains, as
    // scikit-learn's two calls of its gradient descent.
    descend(&p, &mut y, params.exaggeration, early, 0.5, lr);
    descend(&p, &mut y, 1.0, params.iterations - early, 0.8, lr);
    Ok(Tsne {
        kl_divergence: kl_divergence(&p, &y),
        kl_start,
        points: y.into_iter().map(|[a, b]| (a, b)).collect(),
        perplexity,
        dims: z.ncols(),
    })
}

/// The t-SNE map of `rows` standardised by `train`'s mean and standard
/// deviation (as [`super::pca::project_2d`] standardises them), so that no
/// feature dominates by its scale alone.
///
/// # Shapes
/// `train: (m, d)`, `rows: (n, d)` -> `n` points.
pub fn tsne_standardised(
    train: &Array2<f64>,
    rows: &Array2<f64>,
    params: &TsneParams,
    seed: u64,
) -> Result<Tsne> {
    if train.nrows() == 0 || train.ncols() != rows.ncols() {
        return Err(Error::Eval(format!(
            "t-SNE: {} training rows of {} features for rows of {} features",
            train.nrows(),
            train.ncols(),
            rows.ncols()
        )));
    }
    let mean = train.mean_axis(Axis(0)).expect("non-empty");
    let sd = train.std_axis(Axis(0), 0.0).mapv(|s| s.max(1e-8));
    tsne(&((rows - &mean) / &sd), params, seed)
}

/// The rows centred and projected on their first `k` principal components
/// (all columns, centred, when there are at most `k`): block power
/// iteration on the covariance from a fixed start, orthonormalised by
/// modified Gram-Schmidt each round.
///
/// # Shapes
/// `x: (n, d)` -> `(n, min(k, d))`.
pub fn pca_reduce(x: &Array2<f64>, k: usize) -> Array2<f64> {
    let mean = x.mean_axis(Axis(0)).expect("rows");
    let xc = x - &mean;
    let d = xc.ncols();
    if d <= k {
        return xc;
    }
    let mut q = Array2::from_shape_fn((d, k), |(i, j)| {
        // A fixed, full-rank start.
        ((i * 7919 + j * 104_729) % 1000) as f64 / 1000.0 - 0.5 + if i == j { 1.0 } else { 0.0 }
    });
    orthonormalise(&mut q);
    for _ in 0..100 {
        // C q = xcᵀ (xc q) / (n - 1); the scale does not change the span.
        let mut next = xc.t().dot(&xc.dot(&q));
        orthonormalise(&mut next);
        // How far each direction moved (up to its sign).
        let change: f64 = (0..k)
            .map(|j| {
                let s = next.column(j).dot(&q.column(j)).signum();
                (&next.column(j) - &(&q.column(j) * s))
                    .mapv(|v| v * v)
                    .sum()
                    .sqrt()
            })
            .fold(0.0, f64::max);
        q = next;
        if change < 1e-10 {
            break;
        }
    }
    xc.dot(&q)
}

/// Modified Gram-Schmidt on the columns of `q`, in place; a column that
/// vanishes is left at zero.
fn orthonormalise(q: &mut Array2<f64>) {
    for j in 0..q.ncols() {
        for i in 0..j {
            let r = q.column(i).dot(&q.column(j));
            let qi = q.column(i).to_owned();
            q.column_mut(j).scaled_add(-r, &qi);
        }
        let norm = q.column(j).dot(&q.column(j)).sqrt();
        if norm > 1e-300 {
            q.column_mut(j).mapv_inplace(|v| v / norm);
        }
    }
}

/// Squared Euclidean distances between the rows.
///
/// # Shapes
/// `z: (n, d)` -> `(n, n)`.
pub fn squared_distances(z: &Array2<f64>) -> Array2<f64> {
    let n = z.nrows();
    let mut d = Array2::zeros((n, n));
    for i in 0..n {
        for j in (i + 1)..n {
            let v: f64 = z
                .row(i)
                .iter()
                .zip(z.row(j))
                .map(|(a, b)| (a - b) * (a - b))
                .sum();
            d[(i, j)] = v;
            d[(j, i)] = v;
        }
    }
    d
}

/// Per row `i`, `p(j | i) ∝ exp(-β_i d_ij)` (`j ≠ i`) with `β_i` found by
/// bisection so that the row's entropy is `ln(perplexity)` nats (to 1e-5,
/// at most 100 steps; scikit-learn's `_binary_search_perplexity`).
///
/// # Shapes
/// `d2: (n, n)` squared distances -> `(n, n)`, rows summing to 1.
pub fn conditional_p(d2: &Array2<f64>, perplexity: f64) -> Array2<f64> {
    let n = d2.nrows();
    let target = perplexity.ln();
    let rows: Vec<Vec<f64>> = (0..n)
        .into_par_iter()
        .map(|i| {
            // Shifting by the smallest distance leaves p unchanged and keeps
            // exp() from underflowing to an all-zero row.
            let dmin = (0..n)
                .filter(|&j| j != i)
                .map(|j| d2[(i, j)])
                .fold(f64::INFINITY, f64::min);
            let (mut beta, mut lo, mut hi) = (1.0f64, 0.0f64, f64::INFINITY);
            let mut p = vec![0.0; n];
            for _ in 0..100 {
                let mut sum = 0.0;
                let mut dsum = 0.0;
                for j in 0..n {
                    if j == i {
                        p[j] = 0.0;
                        continue;
                    }
                    let dj = d2[(i, j)] - dmin;
                    let v = (-dj * beta).exp();
                    p[j] = v;
                    sum += v;
                    dsum += dj * v;
                }
                let h = sum.ln() + beta * dsum / sum;
                for v in p.iter_mut() {
                    *v /= sum;
                }
                let diff = h - target;
                if diff.abs() <= 1e-5 {
                    break;
                }
                if diff > 0.0 {
                    // Too spread out: narrow the kernel.
                    lo = beta;
                    beta = if hi.is_infinite() {
                        beta * 2.0
                    } else {
                        (beta + hi) / 2.0
                    };
                } else {
                    hi = beta;
                    beta = (beta + lo) / 2.0;
                }
            }
            p
        })
        .collect();
    let mut out = Array2::zeros((n, n));
    for (i, r) in rows.into_iter().enumerate() {
        for (j, v) in r.into_iter().enumerate() {
            out[(i, j)] = v;
        }
    }
    out
}

/// The joint affinities `p_ij = (p(j|i) + p(i|j)) / 2n`, at least 1e-12
/// off the diagonal.
fn joint_p(d2: &Array2<f64>, perplexity: f64) -> Array2<f64> {
    let c = conditional_p(d2, perplexity);
    let n = c.nrows();
    let mut p = &c + &c.t();
    let total: f64 = p.sum();
    p.mapv_inplace(|v| (v / total).max(1e-12));
    for i in 0..n {
        p[(i, i)] = 0.0;
    }
    p
}

/// `1 / (1 + |y_i - y_j|²)`.
#[inline]
fn kernel(a: [f64; 2], b: [f64; 2]) -> f64 {
    let (dx, dy) = (a[0] - b[0], a[1] - b[1]);
    1.0 / (1.0 + dx * dx + dy * dy)
}

/// The normaliser `Σ_{i≠j} 1 / (1 + |y_i - y_j|²)`, summed row by row in
/// order.
fn normaliser(y: &[[f64; 2]]) -> f64 {
    let rows: Vec<f64> = (0..y.len())
        .into_par_iter()
        .map(|i| {
            (0..y.len())
                .filter(|&j| j != i)
                .map(|j| kernel(y[i], y[j]))
                .sum()
        })
        .collect();
    rows.iter().sum()
}

/// KL(P || Q) of the map `y`.
fn kl_divergence(p: &Array2<f64>, y: &[[f64; 2]]) -> f64 {
    let z = normaliser(y);
    let n = y.len();
    let rows: Vec<f64> = (0..n)
        .into_par_iter()
        .map(|i| {
            (0..n)
                .filter(|&j| j != i)
                .map(|j| {
                    let pij = p[(i, j)];
                    let q = (kernel(y[i], y[j]) / z).max(1e-12);
                    pij * (pij / q).ln()
                })
                .sum()
        })
        .collect();
    rows.iter().sum()
}

/// `steps` of gradient descent on KL(`factor`·P || Q): the gradient
/// `4 Σ_j (factor p_ij - q_ij) (y_i - y_j) / (1 + |y_i - y_j|²)`, gains
/// +0.2 where the step keeps its direction's sign against the gradient and
/// ×0.8 elsewhere (at least 0.01), momentum `momentum`.
fn descend(p: &Array2<f64>, y: &mut [[f64; 2]], factor: f64, steps: usize, momentum: f64, lr: f64) {
    let n = y.len();
    let mut update = vec![[0.0f64; 2]; n];
    let mut gains = vec![[1.0f64; 2]; n];
    for _ in 0..steps {
        let z = normaliser(y);
        let yy: &[[f64; 2]] = y;
        let grad: Vec<[f64; 2]> = (0..n)
            .into_par_iter()
            .map(|i| {
                let mut g = [0.0f64; 2];
                for j in 0..n {
                    if j == i {
                        continue;
                    }
                    let k = kernel(yy[i], yy[j]);
                    let m = (factor * p[(i, j)] - k / z) * k;
                    g[0] += m * (yy[i][0] - yy[j][0]);
                    g[1] += m * (yy[i][1] - yy[j][1]);
                }
                [4.0 * g[0], 4.0 * g[1]]
            })
            .collect();
        for i in 0..n {
            for a in 0..2 {
                let g = grad[i][a];
                let gain = &mut gains[i][a];
                if update[i][a] * g < 0.0 {
                    *gain += 0.2;
                } else {
                    *gain = (*gain * 0.8).max(0.01);
                }
                update[i][a] = momentum * update[i][a] - lr * *gain * g;
                y[i][a] += update[i][a];
            }
        }
    }
}
