//! Summaries over seeds: the mean with Student's t 95 % interval, and the
//! one-sample t-test of per-seed differences. Student's t is computed
//! exactly for integer degrees of freedom (Abramowitz & Stegun 26.7.3-4).

use std::f64::consts::PI;

/// `P(|T| <= t)` for Student's t with `nu >= 1` degrees of freedom.
pub fn t_central(t: f64, nu: usize) -> f64 {
    if nu == 0 || t.is_nan() {
        return f64::NAN;
    }
    if t.is_infinite() {
        return 1.0;
    }
    let th = (t.abs() / (nu as f64).sqrt()).atan();
    let (s, c) = th.sin_cos();
    let c2 = c * c;
    if nu % 2 == 1 {
        let mut sum = 0.0;
        if nu > 1 {
            let mut term = c;
            sum = c;
            let mut k = 3;
            while k + 2 <= nu {
                term *= c2 * (k - 1) as f64 / k as f64;
                sum += term;
                k += 2;
            }
        }
        (2.0 / PI * (th + s * sum)).clamp(0.0, 1.0)
    } else {
        let (mut term, mut sum) = (1.0, 1.0);
        let mut k = 2;
        while k + 2 <= nu {
            term *= c2 * (k - 1) as f64 / k as f64;
            sum += term;
            k += 2;
        }
        (s * sum).clamp(0.0, 1.0)
    }
}

/// The two-sided p-value of `t` with `nu` degrees of freedom.
pub fn t_two_sided_p(t: f64, nu: usize) -> f64 {
    (1.0 - t_central(t, nu)).clamp(0.0, 1.0)
}

/// The 97.5 % quantile of Student's t with `nu` degrees of freedom (the
/// multiplier of a two-sided 95 % interval), by bisection.
pub fn t_975(nu: usize) -> f64 {
    if nu == 0 {
        return f64::NAN;
    }
    let (mut lo, mut hi) = (0.0f64, 1e3f64);
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if t_central(mid, nu) < 0.95 {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    0.5 * (lo + hi)
}

/// The mean of per-seed values with its 95 % interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OverSeeds {
    pub n: usize,
    pub mean: f64,
    /// Sample standard deviation (0 for one value).
    pub sd: f64,
    /// Mean ± t(0.975, n-1) sd / sqrt(n); NaN for one value.
    pub lo: f64,
    pub hi: f64,
    /// One-sample t-test of mean 0 (two-sided); NaN for one value.
    pub p: f64,
}

/// Mean, sd, t interval and t-test p of `v` (NaN fields for fewer than two
/// values, where they do not apply).
pub fn over_seeds(v: &[f64]) -> OverSeeds {
    let (mean, sd) = crate::eval::stats::mean_sd(v);
    let n = v.len();
    if n < 2 {
        return OverSeeds {
            n,
            mean,
            sd,
            lo: f64::NAN,
            hi: f64::NAN,
            p: f64::NAN,
        };
    }
    let se = sd / (n as f64).sqrt();
    let half = t_975(n - 1) * se;
    let p = if se > 0.0 {
        t_two_sided_p(mean / se, n - 1)
    } else if mean == 0.0 {
        1.0
    } else {
        0.0
    };
    OverSeeds {
        n,
        mean,
        sd,
        lo: mean - half,
        hi: mean + half,
        p,
    }
}
