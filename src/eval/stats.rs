//! The statistics a reviewer asks for: DeLong and bootstrap confidence
//! intervals for the AUC, the paired DeLong test, Clopper-Pearson intervals.
//!
//! Labels are `&[u8]` with 1 = positive (anything else is negative), as in
//! [`crate::eval::auc`]. Every interval is two-sided 95 % unless a level is a
//! parameter. The special functions (log-gamma, regularised incomplete beta
//! and gamma) are implemented here rather than pulled in as a crate; the
//! tests check them against scipy and R.

use rand::Rng;
use rayon::prelude::*;

use super::auc::check;
use crate::error::{Error, Result};

/// `qnorm(0.975)`: the normal quantile pROC uses for a 95 % interval.
pub const Z_975: f64 = 1.959_963_984_540_054;

/// An AUC with a 95 % confidence interval and a standard error.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct AucCi {
    pub auc: f64,
    pub lo: f64,
    pub hi: f64,
    pub se: f64,
}

/// The paired DeLong test of two scorings of the same cases.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct PairedTest {
    pub auc_a: f64,
    pub auc_b: f64,
    /// `auc_a - auc_b`.
    pub diff: f64,
    /// Standard error of `diff`.
    pub se: f64,
    /// 95 % confidence interval of `diff` (not clipped).
    pub lo: f64,
    pub hi: f64,
    /// `diff / se`; 0 when both are 0 (identical scorings).
    pub z: f64,
    /// Two-sided p-value from the normal; 1 when `z` is 0.
    pub p: f64,
}

/// 1-based mid-ranks of `v` (ties share the mean of their ranks).
fn midranks(v: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..v.len()).collect();
    order.sort_by(|&a, &b| v[a].total_cmp(&v[b]));
    let mut r = vec![0.0; v.len()];
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && v[order[j + 1]] == v[order[i]] {
            j += 1;
        }
        let mid = (i + j) as f64 / 2.0 + 1.0;
        for &k in &order[i..=j] {
            r[k] = mid;
        }
        i = j + 1;
    }
    r
}

/// DeLong's structural components by the fast algorithm of Sun & Xu (2014):
/// `v10[i]` is the fraction of negatives below positive `i` (ties half),
/// `v01[j]` the fraction of positives above negative `j` (ties half), and
/// `theta` the AUC.
struct Placements {
    v10: Vec<f64>,
    v01: Vec<f64>,
    theta: f64,
}

fn placements(scores: &[f64], labels: &[u8]) -> Placements {
    let pos: Vec<f64> = scores
        .iter()
        .zip(labels)
        .filter(|(_, l)| **l == 1)
        .map(|(s, _)| *s)
        .collect();
    let neg: Vec<f64> = scores
        .iter()
        .zip(labels)
        .filter(|(_, l)| **l != 1)
        .map(|(s, _)| *s)
        .collect();
    let (m, n) = (pos.len(), neg.len());
    let tx = midranks(&pos);
    let ty = midranks(&neg);
    let all: Vec<f64> = pos.iter().chain(&neg).copied().collect();
    let tz = midranks(&all);
    let (mf, nf) = (m as f64, n as f64);
    let v10 = (0..m).map(|i| (tz[i] - tx[i]) / nf).collect();
    let v01 = (0..n).map(|j| 1.0 - (tz[m + j] - ty[j]) / mf).collect();
    let rank_sum: f64 = tz[..m].iter().sum();
    let theta = (rank_sum - mf * (mf + 1.0) / 2.0) / (mf * nf);
    Placements { v10, v01, theta }
}

/// Sum of squared deviations from `mean`, divided by `len - 1`.
fn var_about(v: impl Iterator<Item = f64>, mean: f64, len: usize) -> f64 {
    v.map(|x| (x - mean) * (x - mean)).sum::<f64>() / (len as f64 - 1.0)
}

fn check_delong(scores: &[f64], labels: &[u8], who: &str) -> Result<(usize, usize)> {
    let (m, n) = check(scores, labels, who)?;
    if m < 2 || n < 2 {
        return Err(Error::Eval(format!(
            "{who}: the DeLong variance needs at least 2 positives and 2 negatives, got {m} and {n}"
        )));
    }
    Ok((m, n))
}

/// AUC with its DeLong standard error and 95 % interval, as pROC's
/// `ci.auc(roc, method = "delong")`: AUC ± `qnorm(0.975)` se, clipped to
/// [0, 1]. O(n log n). Needs at least two cases of each class.
pub fn delong_ci(scores: &[f64], labels: &[u8]) -> Result<AucCi> {
    let (m, n) = check_delong(scores, labels, "delong_ci")?;
    let p = placements(scores, labels);
    let sx = var_about(p.v10.iter().copied(), p.theta, m);
    let sy = var_about(p.v01.iter().copied(), p.theta, n);
    let se = (sx / m as f64 + sy / n as f64).sqrt();
    Ok(AucCi {
        auc: p.theta,
        lo: (p.theta - Z_975 * se).clamp(0.0, 1.0),
        hi: (p.theta + Z_975 * se).clamp(0.0, 1.0),
        se,
    })
}

/// The paired DeLong test of two scorings `a` and `b` of the same cases
/// (pROC's `roc.test(ra, rb, method = "delong", paired = TRUE)`), two-sided.
pub fn delong_paired(a: &[f64], b: &[f64], labels: &[u8]) -> Result<PairedTest> {
    let (m, n) = check_delong(a, labels, "delong_paired (a)")?;
    check_delong(b, labels, "delong_paired (b)")?;
    let pa = placements(a, labels);
    let pb = placements(b, labels);
    let diff = pa.theta - pb.theta;
    // Var of the difference of the components: the same as L' S L with
    // L = (1, -1), and exactly 0 for identical scorings.
    let sx = var_about(pa.v10.iter().zip(&pb.v10).map(|(x, y)| x - y), diff, m);
    let sy = var_about(pa.v01.iter().zip(&pb.v01).map(|(x, y)| x - y), diff, n);
    let se = (sx / m as f64 + sy / n as f64).sqrt();
    let z = if se == 0.0 && diff == 0.0 {
        0.0
    } else {
        diff / se
    };
    let p = if z == 0.0 { 1.0 } else { two_sided_p(z) };
    Ok(PairedTest {
        auc_a: pa.theta,
        auc_b: pb.theta,
        diff,
        se,
        lo: diff - Z_975 * se,
        hi: diff + Z_975 * se,
        z,
        p,
    })
}

/// Scores ranked once: `group[i]` is the index of item `i`'s distinct score in
/// ascending order, `groups` the number of distinct scores.
struct Ranked {
    group: Vec<u32>,
    groups: usize,
}

fn ranked(scores: &[f64]) -> Ranked {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    let mut group = vec![0u32; scores.len()];
    let mut g = 0u32;
    for (k, &i) in order.iter().enumerate() {
        if k > 0 && scores[i] != scores[order[k - 1]] {
            g += 1;
        }
        group[i] = g;
    }
    Ranked {
        group,
        groups: if scores.is_empty() { 0 } else { g as usize + 1 },
    }
}

/// AUC of a resample given as item indices, in O(items + groups).
fn weighted_auc(
    r: &Ranked,
    pos: &[usize],
    neg: &[usize],
    cp: &mut Vec<u32>,
    cn: &mut Vec<u32>,
) -> f64 {
    cp.clear();
    cp.resize(r.groups, 0);
    cn.clear();
    cn.resize(r.groups, 0);
    for &i in pos {
        cp[r.group[i] as usize] += 1;
    }
    for &i in neg {
        cn[r.group[i] as usize] += 1;
    }
    let (mut sum, mut below) = (0.0f64, 0.0f64);
    for g in 0..r.groups {
        let (p, q) = (cp[g] as f64, cn[g] as f64);
        sum += p * (below + 0.5 * q);
        below += q;
    }
    sum / (pos.len() as f64 * neg.len() as f64)
}

/// Stratified bootstrap AUCs: for each resample `r` (drawn from
/// `rng::stream(seed, "bootstrap", r, 0)`: positives then negatives, each
/// with replacement within its class), the AUC of every scoring on the same
/// resampled cases. Deterministic and independent of the thread count.
fn bootstrap_aucs(
    scorings: &[&[f64]],
    labels: &[u8],
    resamples: usize,
    seed: u64,
) -> Vec<Vec<f64>> {
    let pos: Vec<usize> = (0..labels.len()).filter(|&i| labels[i] == 1).collect();
    let neg: Vec<usize> = (0..labels.len()).filter(|&i| labels[i] != 1).collect();
    let ranks: Vec<Ranked> = scorings.iter().map(|s| ranked(s)).collect();
    (0..resamples)
        .into_par_iter()
        .map_init(
            || (Vec::new(), Vec::new(), Vec::new(), Vec::new()),
            |(bp, bn, cp, cn), r| {
                let mut rng = crate::rng::stream(seed, "bootstrap", r as u64, 0);
                bp.clear();
                bp.extend((0..pos.len()).map(|_| pos[rng.random_range(0..pos.len())]));
                bn.clear();
                bn.extend((0..neg.len()).map(|_| neg[rng.random_range(0..neg.len())]));
                ranks
                    .iter()
                    .map(|rk| weighted_auc(rk, bp, bn, cp, cn))
                    .collect::<Vec<f64>>()
            },
        )
        .collect()
}

/// The `p` quantile of sorted `v`, linear interpolation between order
/// statistics (R's type 7, numpy's default).
fn quantile_sorted(v: &[f64], p: f64) -> f64 {
    let h = (v.len() - 1) as f64 * p;
    let lo = h.floor() as usize;
    let hi = (lo + 1).min(v.len() - 1);
    v[lo] + (h - lo as f64) * (v[hi] - v[lo])
}

fn percentile_ci(mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(f64::total_cmp);
    (quantile_sorted(&v, 0.025), quantile_sorted(&v, 0.975))
}

fn check_resamples(resamples: usize, who: &str) -> Result<()> {
    if resamples == 0 {
        return Err(Error::Eval(format!("{who}: needs at least one resample")));
    }
    Ok(())
}

/// AUC with a stratified-bootstrap percentile 95 % interval (2.5 and 97.5 %
/// quantiles of the resampled AUCs, linear interpolation); `se` is the sample
/// sd of the resampled AUCs and `auc` the AUC of the data themselves.
pub fn bootstrap_ci(scores: &[f64], labels: &[u8], resamples: usize, seed: u64) -> Result<AucCi> {
    check(scores, labels, "bootstrap_ci")?;
    check_resamples(resamples, "bootstrap_ci")?;
    let auc = crate::eval::auc::auc(scores, labels)?;
    let boots: Vec<f64> = bootstrap_aucs(&[scores], labels, resamples, seed)
        .into_iter()
        .map(|v| v[0])
        .collect();
    let (_, se) = mean_sd(&boots);
    let (lo, hi) = percentile_ci(boots);
    Ok(AucCi { auc, lo, hi, se })
}

/// `auc_a - auc_b` with its stratified-bootstrap percentile 95 % interval,
/// both scorings evaluated on the same resamples (the same resamples as
/// [`bootstrap_ci`] with the same seed). Returns `(diff, lo, hi)`.
pub fn bootstrap_paired(
    a: &[f64],
    b: &[f64],
    labels: &[u8],
    resamples: usize,
    seed: u64,
) -> Result<(f64, f64, f64)> {
    check(a, labels, "bootstrap_paired (a)")?;
    check(b, labels, "bootstrap_paired (b)")?;
    check_resamples(resamples, "bootstrap_paired")?;
    let diff = crate::eval::auc::auc(a, labels)? - crate::eval::auc::auc(b, labels)?;
    let diffs: Vec<f64> = bootstrap_aucs(&[a, b], labels, resamples, seed)
        .into_iter()
        .map(|v| v[0] - v[1])
        .collect();
    let (lo, hi) = percentile_ci(diffs);
    Ok((diff, lo, hi))
}

/// Exact (Clopper-Pearson) two-sided interval for a binomial proportion `k/n`
/// at confidence `level` (e.g. 0.95): the `(1-level)/2` quantile of
/// Beta(k, n-k+1) and the `(1+level)/2` quantile of Beta(k+1, n-k); the lower
/// end is 0 when `k = 0` and the upper 1 when `k = n`. With `n = 0` it is
/// (0, 1). Panics if `k > n` or `level` is not in (0, 1).
pub fn clopper_pearson(k: u64, n: u64, level: f64) -> (f64, f64) {
    assert!(k <= n, "clopper_pearson: k = {k} exceeds n = {n}");
    assert!(
        level > 0.0 && level < 1.0,
        "clopper_pearson: level {level} is not in (0, 1)"
    );
    let alpha = 1.0 - level;
    let (kf, nf) = (k as f64, n as f64);
    let lo = if k == 0 {
        0.0
    } else {
        beta_quantile(alpha / 2.0, kf, nf - kf + 1.0)
    };
    let hi = if k == n {
        1.0
    } else {
        beta_quantile(1.0 - alpha / 2.0, kf + 1.0, nf - kf)
    };
    (lo, hi)
}

/// Mean and sample standard deviation (n - 1); sd is 0 for a single value and
/// both are NaN for an empty slice.
pub fn mean_sd(v: &[f64]) -> (f64, f64) {
    if v.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let mean = v.iter().sum::<f64>() / v.len() as f64;
    if v.len() == 1 {
        return (mean, 0.0);
    }
    (mean, var_about(v.iter().copied(), mean, v.len()).sqrt())
}

// ---------------------------------------------------------------- special functions

/// ln Γ(x) for x > 0 (Lanczos, g = 7, 9 terms; relative error ~1e-15).
fn ln_gamma(x: f64) -> f64 {
    const C: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        // Reflection: Γ(x) Γ(1-x) = π / sin(πx).
        return (std::f64::consts::PI / (std::f64::consts::PI * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut a = C[0];
    let t = x + 7.5;
    for (i, c) in C.iter().enumerate().skip(1) {
        a += c / (x + i as f64);
    }
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + a.ln()
}

/// Continued fraction for the incomplete beta (modified Lentz).
fn beta_cf(x: f64, a: f64, b: f64) -> f64 {
    const TINY: f64 = 1e-300;
    let (qab, qap, qam) = (a + b, a + 1.0, a - 1.0);
    let mut c = 1.0;
    let mut d = 1.0 - qab * x / qap;
    if d.abs() < TINY {
        d = TINY;
    }
    d = 1.0 / d;
    let mut h = d;
    for m in 1..100_000 {
        let m = m as f64;
        let m2 = 2.0 * m;
        let aa = m * (b - m) * x / ((qam + m2) * (a + m2));
        d = 1.0 + aa * d;
        if d.abs() < TINY {
            d = TINY;
        }
        c = 1.0 + aa / c;
        if c.abs() < TINY {
            c = TINY;
        }
        d = 1.0 / d;
        h *= d * c;
        let aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2));
        d = 1.0 + aa * d;
        if d.abs() < TINY {
            d = TINY;
        }
        c = 1.0 + aa / c;
        if c.abs() < TINY {
            c = TINY;
        }
        d = 1.0 / d;
        let del = d * c;
        h *= del;
        if (del - 1.0).abs() < 1e-16 {
            break;
        }
    }
    h
}

/// The regularised incomplete beta I_x(a, b), the Beta(a, b) CDF at x.
fn beta_cdf(x: f64, a: f64, b: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    if x >= 1.0 {
        return 1.0;
    }
    let ln_front = ln_gamma(a + b) - ln_gamma(a) - ln_gamma(b) + a * x.ln() + b * (-x).ln_1p();
    if x < (a + 1.0) / (a + b + 2.0) {
        ln_front.exp() * beta_cf(x, a, b) / a
    } else {
        1.0 - ln_front.exp() * beta_cf(1.0 - x, b, a) / b
    }
}

/// The `p` quantile of Beta(a, b), by bisection to full precision.
fn beta_quantile(p: f64, a: f64, b: f64) -> f64 {
    let (mut lo, mut hi) = (0.0f64, 1.0f64);
    for _ in 0..2000 {
        let mid = 0.5 * (lo + hi);
        if mid <= lo || mid >= hi {
            break;
        }
        if beta_cdf(mid, a, b) < p {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    0.5 * (lo + hi)
}

/// The regularised upper incomplete gamma Q(a, x) (series or continued
/// fraction, Numerical Recipes' gser/gcf).
fn gamma_q(a: f64, x: f64) -> f64 {
    if x <= 0.0 {
        return 1.0;
    }
    let ln_front = -x + a * x.ln() - ln_gamma(a);
    if x < a + 1.0 {
        let (mut ap, mut del) = (a, 1.0 / a);
        let mut sum = del;
        for _ in 0..100_000 {
            ap += 1.0;
            del *= x / ap;
            sum += del;
            if del.abs() < sum.abs() * 1e-17 {
                break;
            }
        }
        1.0 - sum * ln_front.exp()
    } else {
        const TINY: f64 = 1e-300;
        let mut b = x + 1.0 - a;
        let mut c = 1.0 / TINY;
        let mut d = 1.0 / b;
        let mut h = d;
        for i in 1..100_000 {
            let an = -(i as f64) * (i as f64 - a);
            b += 2.0;
            d = an * d + b;
            if d.abs() < TINY {
                d = TINY;
            }
            c = b + an / c;
            if c.abs() < TINY {
                c = TINY;
            }
            d = 1.0 / d;
            let del = d * c;
            h *= del;
            if (del - 1.0).abs() < 1e-16 {
                break;
            }
        }
        ln_front.exp() * h
    }
}

/// Two-sided normal p-value `2 Φ(-|z|)` = erfc(|z| / √2) = Q(1/2, z²/2).
fn two_sided_p(z: f64) -> f64 {
    if z.is_nan() {
        return f64::NAN;
    }
    gamma_q(0.5, z * z / 2.0).clamp(0.0, 1.0)
}
