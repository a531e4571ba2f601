//! Principal components of frozen features, for a 2-D picture of what an
//! encoder separates: standardise by the training rows, take the top two
//! eigenvectors of their covariance (power iteration with deflation, from a
//! fixed start, so the picture is deterministic), project other rows.

use ndarray::{Array1, Array2, Axis};

/// The top eigenvector of the symmetric `c`, by power iteration from a fixed
/// start; its sign makes the largest-magnitude entry positive.
fn top_eigenvector(c: &Array2<f64>) -> Array1<f64> {
    let d = c.nrows();
    let mut v = Array1::from_shape_fn(d, |i| 1.0 + (i as f64 * 0.618).fract());
    for _ in 0..500 {
        let w = c.dot(&v);
        let n = w.dot(&w).sqrt();
        if n == 0.0 {
            break;
        }
        let w = w / n;
        let change = (&w - &v).mapv(f64::abs).sum();
        v = w;
        if change < 1e-12 {
            break;
        }
    }
    let big = v
        .iter()
        .copied()
        .fold(0.0f64, |a, x| if x.abs() > a.abs() { x } else { a });
    if big < 0.0 { -v } else { v }
}

/// The 2-D projection of `rows` on the first two principal components of
/// `train` (both standardised by `train`'s mean and standard deviation).
///
/// # Shapes
/// `train: (n, d)`, `rows: (m, d)` -> `m` points.
pub fn project_2d(train: &Array2<f64>, rows: &Array2<f64>) -> Vec<(f64, f64)> {
    let n = train.nrows().max(2) as f64;
    let mean = train.mean_axis(Axis(0)).expect("non-empty");
    let sd = train.std_axis(Axis(0), 0.0).mapv(|s| s.max(1e-8));
    let z = (train - &mean) / &sd;
    let mut c = z.t().dot(&z) / (n - 1.0);
    let a = top_eigenvector(&c);
    // Deflate: remove the first component's variance.
    let lambda = a.dot(&c.dot(&a));
    let outer = a
        .view()
        .insert_axis(Axis(1))
        .dot(&a.view().insert_axis(Axis(0)));
    c = c - outer * lambda;
    let b = top_eigenvector(&c);
    let q = (rows - &mean) / &sd;
    let (pa, pb) = (q.dot(&a), q.dot(&b));
    pa.iter().zip(pb.iter()).map(|(&x, &y)| (x, y)).collect()
}
