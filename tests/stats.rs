//! DeLong, bootstrap, Clopper-Pearson, ROC curve and operating points against
//! the reference implementations.
//!
//! References, computed once and pasted here (each value's call is in the
//! comment next to it):
//! - R 4.2.2 with pROC 1.18.0 (Debian bookworm r-cran-proc) for DeLong
//!   intervals, the paired DeLong test and partial AUC, with
//!   `mk <- function(y, s) roc(y, s, levels = c(0, 1), direction = "<", quiet = TRUE)`;
//! - scikit-learn 1.9.1 for `roc_curve` and `roc_auc_score`;
//! - scipy 1.17.1 `scipy.stats.beta.ppf` and R's `binom.test` for
//!   Clopper-Pearson.
//!
//! The data sets (generated once with numpy, `default_rng(20240611)`):
//! Y1/S1/S2 40 cases, scores rounded to 0.1 (many ties), S2 a second scoring
//! of the same cases; Y4/S4 30 cases scored in {0, 1, 2, 3} (including -0.0);
//! Y3/S3 20 cases, perfectly separated; Y5/A5/B5 60 cases, no ties, two
//! scorings.

use pirlkit::eval::auc;
use pirlkit::eval::roc::{
    at_threshold, partial_auc_above_tpr, roc_curve, sensitivity_at_specificity,
    specificity_at_sensitivity, youden_threshold,
};
use pirlkit::eval::stats::{
    bootstrap_ci, bootstrap_paired, clopper_pearson, delong_ci, delong_paired, mean_sd,
};

#[rustfmt::skip]
mod data {
    pub const Y1: [u8; 40] = [0, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1, 1, 1, 1, 0, 1, 1, 0, 1, 1, 0, 0, 0, 1, 0, 1, 1, 0, 1, 0, 0, 1, 0, 0, 0, 0, 1, 1, 1];
    pub const Y4: [u8; 30] = [0, 1, 0, 0, 1, 1, 0, 1, 0, 0, 0, 1, 0, 1, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 1, 0, 0, 1, 1, 1];
    pub const Y3: [u8; 20] = [0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1];
    pub const Y5: [u8; 60] = [1, 1, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1, 0, 1, 1, 1, 1, 0, 0, 1, 1, 0, 0, 0, 1, 0, 1, 1, 0, 0, 1, 1, 0, 0, 0, 0, 1, 0, 0, 1, 1, 0, 1, 1, 1, 0, 0, 0, 0, 0, 1, 1, 0, 1, 0, 0, 1, 0, 0];
    pub const S1: [f64; 40] = [0.5, 0.5, 0.6, 0.4, 0.7, 0.6, 0.8, 0.6, 0.7, 0.6, 0.8, 0.3, 0.9, 0.5, 0.5, 0.5, 0.4, 0.5, 0.4, 0.7, 0.3, 0.3, 0.5, 0.5, 0.6, 0.5, 0.6, 0.9, 0.3, 0.7, 0.4, 0.7, 0.5, 0.7, 0.2, 0.2, 0.4, 0.7, 0.4, 0.6];
    pub const S2: [f64; 40] = [0.5, 0.5, 0.7, 0.6, 0.7, 0.7, 0.8, 0.4, 0.9, 0.5, 0.6, 0.5, 0.7, 0.6, 0.3, 0.6, 0.2, 0.5, 0.4, 0.5, 0.4, 0.3, 0.3, 0.6, 0.9, 0.3, 0.8, 0.9, 0.2, 0.7, 0.5, 0.4, 0.7, 0.8, 0.7, 0.4, 0.6, 0.9, 0.5, 0.5];
    pub const S4: [f64; 30] = [0.0, 1.0, 2.0, 1.0, 2.0, 0.0, -0.0, 3.0, 1.0, 1.0, 2.0, 1.0, 3.0, 2.0, 0.0, 2.0, 1.0, 2.0, 0.0, 0.0, 1.0, 1.0, 2.0, 1.0, 3.0, -0.0, 3.0, 1.0, 2.0, 2.0];
    pub const S3: [f64; 20] = [0.001, 0.794, 0.069, 0.648, 0.278, 0.914, 0.424, 0.972, 0.163, 0.725, 0.089, 0.884, 0.259, 0.969, 0.211, 0.611, 0.051, 0.658, 0.436, 0.762];
    pub const A5: [f64; 60] = [-0.3036, 0.3409, 0.1597, 0.3689, -0.6243, -0.7018, -0.0271, 0.1249, 3.164, -0.3839, 0.5375, -1.7128, 1.0996, -0.3212, -0.0884, 0.2294, 0.5547, 0.4181, -1.8979, -0.3237, 1.1011, 0.8938, 0.8143, -0.171, 0.0993, 1.1641, 0.1169, 0.1403, 0.913, 1.7921, 0.3264, 1.0361, 0.7499, 0.3784, 0.0057, 0.2163, 0.8752, 1.3444, -0.0901, -0.6137, -0.1259, 1.6267, 0.3581, 0.5402, 0.6414, 0.1066, -0.9894, -0.348, -0.0601, 0.8732, 0.5613, 0.6542, 2.0098, -1.9486, 0.807, 0.4827, 1.4741, -0.4445, -1.2079, -0.4991];
    pub const B5: [f64; 60] = [-1.7231, 0.123, 0.3395, -0.0846, -1.1959, 1.5243, 1.5615, 0.3671, 3.0485, -0.9851, -1.0612, -0.6038, 2.353, -0.389, 0.7097, 1.3735, 0.3218, 1.05, -1.6097, 1.1282, 0.9716, 0.5144, -0.2226, -2.941, 0.3685, 0.585, -0.0577, -0.3271, 2.3411, 0.8093, 0.0815, 0.5146, -0.6971, -0.3472, -0.3414, 0.4249, 1.0359, -0.0831, 1.0118, -2.697, 1.451, 1.4716, 1.0053, 0.4094, 0.7343, 0.3846, -0.842, -1.0827, 0.3886, 0.7062, -0.3919, 0.3858, 0.2782, 1.4204, 0.9505, 0.8872, 1.6496, -3.7307, -0.5715, 0.872];
}
use data::*;

fn close(got: f64, want: f64, tol: f64, what: &str) {
    assert!(
        (got - want).abs() <= tol,
        "{what}: got {got:.17}, want {want:.17} (tol {tol:e})"
    );
}

// ---------------------------------------------------------------- DeLong

#[test]
fn delong_ci_matches_proc() {
    // r <- mk(y, s); ci.auc(r, method = "delong"); sqrt(var(r, method = "delong"))
    let cases: [(&[f64], &[u8], [f64; 4]); 6] = [
        // (lo, auc, hi, se)
        (
            &S1,
            &Y1,
            [
                0.39375640034092663,
                0.57196969696969702,
                0.75018299359846741,
                0.090926822142903721,
            ],
        ),
        (
            &S2,
            &Y1,
            [
                0.35339309152599402,
                0.53787878787878796,
                0.72236448423158195,
                0.094127084889311041,
            ],
        ),
        (
            &S4,
            &Y4,
            [
                0.47090819440371212,
                0.66203703703703698,
                0.85316587967036184,
                0.097516507517956874,
            ],
        ),
        (
            &A5,
            &Y5,
            [
                0.65559456870900712,
                0.77485714285714291,
                0.8941197170052787,
                0.060849370237853216,
            ],
        ),
        (
            &B5,
            &Y5,
            [
                0.49447243552778686,
                0.63885714285714279,
                0.78324185018649872,
                0.073667020653565118,
            ],
        ),
        // Perfect separation: pROC gives 1-1 with se 0 (and warns).
        (&S3, &Y3, [1.0, 1.0, 1.0, 0.0]),
    ];
    for (i, (s, y, [lo, a, hi, se])) in cases.iter().enumerate() {
        let ci = delong_ci(s, y).unwrap();
        close(ci.auc, *a, 1e-9, &format!("case {i} auc"));
        close(ci.se, *se, 1e-9, &format!("case {i} se"));
        close(ci.lo, *lo, 1e-9, &format!("case {i} lo"));
        close(ci.hi, *hi, 1e-9, &format!("case {i} hi"));
        close(
            ci.auc,
            auc(s, y).unwrap(),
            1e-12,
            &format!("case {i} auc vs eval::auc"),
        );
    }
}

#[test]
fn delong_paired_matches_proc_roc_test() {
    // t <- roc.test(mk(y, a), mk(y, b), method = "delong", paired = TRUE)
    // t$estimate, t$statistic, t$p.value, t$conf.int
    let cases: [(&[f64], &[f64], &[u8], [f64; 6]); 2] = [
        // (auc_a, auc_b, Z, p, lo, hi)
        (
            &S1,
            &S2,
            &Y1,
            [
                0.57196969696969691,
                0.53787878787878785,
                0.40265342984327102,
                0.68720319789304063,
                -0.13185068997710014,
                0.20003250815891827,
            ],
        ),
        (
            &A5,
            &B5,
            &Y5,
            [
                0.7748571428571428,
                0.6388571428571429,
                1.8194130226025913,
                0.068848441411854838,
                -0.01050609761831417,
                0.28250609761831441,
            ],
        ),
    ];
    for (i, (a, b, y, [aa, ab, z, p, lo, hi])) in cases.iter().enumerate() {
        let t = delong_paired(a, b, y).unwrap();
        close(t.auc_a, *aa, 1e-9, &format!("case {i} auc_a"));
        close(t.auc_b, *ab, 1e-9, &format!("case {i} auc_b"));
        close(t.diff, aa - ab, 1e-9, &format!("case {i} diff"));
        close(t.z, *z, 1e-9, &format!("case {i} z"));
        close(t.p, *p, 1e-9, &format!("case {i} p"));
        close(t.lo, *lo, 1e-9, &format!("case {i} lo"));
        close(t.hi, *hi, 1e-9, &format!("case {i} hi"));
        close(
            t.se,
            (aa - ab) / z,
            1e-9,
            &format!("case {i} se = diff / Z"),
        );
    }
}

#[test]
fn delong_paired_identical_scorings() {
    // roc.test(mk(y1, s1), mk(y1, s1), method = "delong", paired = TRUE): Z = 0, p = 1, conf.int 0 0
    for (s, y) in [(&S1[..], &Y1[..]), (&S3[..], &Y3[..]), (&A5[..], &Y5[..])] {
        let t = delong_paired(s, s, y).unwrap();
        assert_eq!(
            (t.diff, t.se, t.z, t.p, t.lo, t.hi),
            (0.0, 0.0, 0.0, 1.0, 0.0, 0.0),
            "{t:?}"
        );
        assert!(t.auc_a == t.auc_b && !t.auc_a.is_nan());
    }
    // Swapping the scorings flips the sign of diff, z and the interval; p is unchanged.
    let (t, u) = (
        delong_paired(&A5, &B5, &Y5).unwrap(),
        delong_paired(&B5, &A5, &Y5).unwrap(),
    );
    close(u.diff, -t.diff, 1e-15, "diff");
    close(u.z, -t.z, 1e-12, "z");
    close(u.p, t.p, 1e-12, "p");
    close(u.lo, -t.hi, 1e-12, "lo");
}

#[test]
fn delong_ci_shrinks_with_more_data() {
    let mut prev = f64::INFINITY;
    for k in [1, 2, 4, 8] {
        let s: Vec<f64> = (0..k).flat_map(|_| A5).collect();
        let y: Vec<u8> = (0..k).flat_map(|_| Y5).collect();
        let ci = delong_ci(&s, &y).unwrap();
        close(ci.auc, 0.77485714285714291, 1e-12, "replicated auc");
        let width = ci.hi - ci.lo;
        assert!(width < prev, "k = {k}: width {width} not below {prev}");
        prev = width;
    }
}

#[test]
fn delong_rejects_bad_input() {
    let e = delong_ci(&[0.1, 0.2, 0.3], &[1, 1, 1])
        .unwrap_err()
        .to_string();
    assert!(e.contains("both classes"), "{e}");
    let e = delong_ci(&[0.1, 0.2], &[1, 0, 1]).unwrap_err().to_string();
    assert!(e.contains("2 scores but 3 labels"), "{e}");
    let e = delong_ci(&[0.1, f64::NAN, 0.3, 0.4], &[1, 0, 1, 0])
        .unwrap_err()
        .to_string();
    assert!(e.contains("not finite"), "{e}");
    let e = delong_ci(&[0.1, 0.2, 0.3], &[1, 0, 0])
        .unwrap_err()
        .to_string();
    assert!(e.contains("at least 2 positives"), "{e}");
    let e = delong_paired(&S1, &S2[..39], &Y1).unwrap_err().to_string();
    assert!(e.contains("39 scores but 40 labels"), "{e}");
    assert!(matches!(
        delong_ci(&[1.0], &[1]),
        Err(pirlkit::Error::Eval(_))
    ));
}

// ---------------------------------------------------------------- bootstrap

#[test]
fn bootstrap_ci_properties() {
    let a = bootstrap_ci(&A5, &Y5, 2000, 7).unwrap();
    let b = bootstrap_ci(&A5, &Y5, 2000, 7).unwrap();
    let c = bootstrap_ci(&A5, &Y5, 2000, 8).unwrap();
    close(a.auc, 0.7748571428571428, 1e-12, "auc is the data's AUC");
    assert!(a.lo < a.auc && a.auc < a.hi, "{a:?}");
    assert_eq!(
        (a.lo, a.hi, a.se),
        (b.lo, b.hi, b.se),
        "same seed, same result"
    );
    assert!(
        (a.lo, a.hi, a.se) != (c.lo, c.hi, c.se),
        "another seed, another result"
    );
    // The bootstrap se is close to the DeLong se (0.0608 from pROC).
    assert!((a.se - 0.060849370237853216).abs() < 0.01, "{a:?}");
    assert!(a.hi - a.lo > 0.15 && a.hi - a.lo < 0.35, "{a:?}");
    // Ties: still contains the AUC.
    let t = bootstrap_ci(&S4, &Y4, 1000, 1).unwrap();
    assert!(t.lo < t.auc && t.auc < t.hi, "{t:?}");
    // Perfect separation: every resample has AUC 1.
    let p = bootstrap_ci(&S3, &Y3, 200, 3).unwrap();
    assert_eq!((p.auc, p.lo, p.hi, p.se), (1.0, 1.0, 1.0, 0.0));
}

#[test]
fn bootstrap_is_independent_of_thread_count() {
    let one = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    let three = rayon::ThreadPoolBuilder::new()
        .num_threads(3)
        .build()
        .unwrap();
    let a = one.install(|| bootstrap_ci(&S1, &Y1, 500, 42).unwrap());
    let b = three.install(|| bootstrap_ci(&S1, &Y1, 500, 42).unwrap());
    assert_eq!((a.auc, a.lo, a.hi, a.se), (b.auc, b.lo, b.hi, b.se));
    let pa = one.install(|| bootstrap_paired(&S1, &S2, &Y1, 500, 42).unwrap());
    let pb = three.install(|| bootstrap_paired(&S1, &S2, &Y1, 500, 42).unwrap());
    assert_eq!(pa, pb);
}

#[test]
fn bootstrap_paired_properties() {
    let (d, lo, hi) = bootstrap_paired(&A5, &B5, &Y5, 2000, 11).unwrap();
    close(d, 0.7748571428571428 - 0.6388571428571429, 1e-12, "diff");
    assert!(lo < d && d < hi, "({d}, {lo}, {hi})");
    // Same ballpark as DeLong's paired interval (-0.0105, 0.2825) from pROC.
    assert!(
        (lo - -0.0105).abs() < 0.05 && (hi - 0.2825).abs() < 0.05,
        "({lo}, {hi})"
    );
    assert_eq!(
        bootstrap_paired(&A5, &B5, &Y5, 2000, 11).unwrap(),
        (d, lo, hi)
    );
    assert_ne!(
        bootstrap_paired(&A5, &B5, &Y5, 2000, 12).unwrap(),
        (d, lo, hi)
    );
    // Identical scorings: every resampled difference is exactly 0.
    assert_eq!(
        bootstrap_paired(&S1, &S1, &Y1, 300, 5).unwrap(),
        (0.0, 0.0, 0.0)
    );
}

#[test]
fn bootstrap_rejects_bad_input() {
    assert!(
        bootstrap_ci(&S1, &Y1, 0, 1)
            .unwrap_err()
            .to_string()
            .contains("at least one resample")
    );
    assert!(
        bootstrap_ci(&[0.1, 0.2], &[0, 0], 10, 1)
            .unwrap_err()
            .to_string()
            .contains("both classes")
    );
    assert!(bootstrap_paired(&S1, &S2[..3], &Y1, 10, 1).is_err());
    assert!(
        bootstrap_ci(&[0.1, f64::INFINITY], &[0, 1], 10, 1)
            .unwrap_err()
            .to_string()
            .contains("not finite")
    );
}

// ---------------------------------------------------------------- Clopper-Pearson, mean/sd

#[test]
fn clopper_pearson_matches_scipy_and_binom_test() {
    // lo = 0 if k == 0 else scipy.stats.beta.ppf(0.025, k, n - k + 1)
    // hi = 1 if k == n else scipy.stats.beta.ppf(0.975, k + 1, n - k)
    // (identical to R's binom.test(k, n, conf.level = 0.95)$conf.int within 1e-15)
    let cases: [(u64, u64, f64, f64); 12] = [
        (0, 10, 0.0, 0.3084971078187607),
        (10, 10, 0.6915028921812392, 1.0),
        (3, 10, 0.06673951117773447, 0.6524528500599973),
        (17, 40, 0.27042903126886286, 0.5910994195730367),
        (1, 1, 0.025, 1.0),
        (0, 1, 0.0, 0.975),
        (50, 100, 0.39832112950330095, 0.601678870496699),
        (1, 10000, 2.5317775934746866e-06, 0.0005570369979470473),
        (9990, 10000, 0.9981617358657894, 0.9995203602762289),
        (7, 23, 0.13210287969809986, 0.5291916660085065),
        (16, 25, 0.42520634955384945, 0.8202831794163445),
        (29, 35, 0.6635016999818029, 0.9343781988437493),
    ];
    for (k, n, lo, hi) in cases {
        let (l, h) = clopper_pearson(k, n, 0.95);
        // Relative for the tiny lower bound at 1/10000.
        close(l, lo, 1e-6 * lo.max(1e-3), &format!("lo {k}/{n}"));
        close(h, hi, 1e-6 * hi.max(1e-3), &format!("hi {k}/{n}"));
        // In fact far tighter than 1e-6.
        close(l, lo, 1e-10, &format!("lo {k}/{n} tight"));
        close(h, hi, 1e-10, &format!("hi {k}/{n} tight"));
    }
    // beta.ppf(0.05, 7, 17), beta.ppf(0.95, 8, 16); binom.test(7, 23, conf.level = 0.9)$conf.int
    let (l, h) = clopper_pearson(7, 23, 0.9);
    close(l, 0.15247968742967724, 1e-10, "lo 90%");
    close(h, 0.4964350837140628, 1e-10, "hi 90%");
    // Closed forms at the edges: k = 0 gives hi = 1 - (alpha/2)^(1/n), k = n gives lo = (alpha/2)^(1/n).
    close(
        clopper_pearson(0, 37, 0.95).1,
        1.0 - 0.025f64.powf(1.0 / 37.0),
        1e-12,
        "k = 0",
    );
    close(
        clopper_pearson(37, 37, 0.95).0,
        0.025f64.powf(1.0 / 37.0),
        1e-12,
        "k = n",
    );
    assert_eq!(clopper_pearson(0, 0, 0.95), (0.0, 1.0));
}

#[test]
fn mean_sd_sample() {
    // numpy: np.mean([2, 4, 4, 4, 5, 5, 7, 9]) = 5.0, np.std(..., ddof=1) = 2.138089935299395
    let (m, s) = mean_sd(&[2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0]);
    close(m, 5.0, 1e-12, "mean");
    close(s, 2.138089935299395, 1e-12, "sd");
    assert_eq!(mean_sd(&[3.5]), (3.5, 0.0));
    let (m, s) = mean_sd(&[]);
    assert!(m.is_nan() && s.is_nan());
}

// ---------------------------------------------------------------- ROC curve

fn check_curve(s: &[f64], y: &[u8], fpr: &[f64], tpr: &[f64], thr: &[f64]) {
    let c = roc_curve(s, y).unwrap();
    assert_eq!(c.len(), fpr.len(), "{c:?}");
    for (i, p) in c.iter().enumerate() {
        close(p.fpr, fpr[i], 1e-12, &format!("fpr[{i}]"));
        close(p.tpr, tpr[i], 1e-12, &format!("tpr[{i}]"));
        assert!(
            p.threshold == thr[i],
            "thr[{i}]: {} vs {}",
            p.threshold,
            thr[i]
        );
    }
}

#[test]
fn roc_curve_matches_sklearn() {
    const INF: f64 = f64::INFINITY;
    // fpr, tpr, thr = sklearn.metrics.roc_curve(y1, s1)   (drop_intermediate=True)
    check_curve(
        &S1,
        &Y1,
        &[
            0.0,
            0.0,
            0.09090909090909091,
            0.2727272727272727,
            0.4090909090909091,
            0.6363636363636364,
            0.8181818181818182,
            0.9090909090909091,
            1.0,
        ],
        &[
            0.0,
            0.1111111111111111,
            0.1111111111111111,
            0.2777777777777778,
            0.5,
            0.7777777777777778,
            0.8888888888888888,
            1.0,
            1.0,
        ],
        &[INF, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2],
    );
    // roc_curve(y1, s2)
    check_curve(
        &S2,
        &Y1,
        &[
            0.0,
            0.045454545454545456,
            0.13636363636363635,
            0.3181818181818182,
            0.5454545454545454,
            0.6818181818181818,
            0.8181818181818182,
            0.9545454545454546,
            1.0,
        ],
        &[
            0.0,
            0.16666666666666666,
            0.2222222222222222,
            0.3888888888888889,
            0.4444444444444444,
            0.7777777777777778,
            0.8888888888888888,
            0.9444444444444444,
            1.0,
        ],
        &[INF, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2],
    );
    // roc_curve(y4, s4)   (sklearn prints the last threshold as -0.0)
    check_curve(
        &S4,
        &Y4,
        &[
            0.0,
            0.1111111111111111,
            0.3333333333333333,
            0.6666666666666666,
            1.0,
        ],
        &[
            0.0,
            0.16666666666666666,
            0.5833333333333334,
            0.9166666666666666,
            1.0,
        ],
        &[INF, 3.0, 2.0, 1.0, 0.0],
    );
    // roc_curve(y3, s3): perfect separation, intermediate points dropped
    check_curve(
        &S3,
        &Y3,
        &[0.0, 0.0, 0.0, 1.0],
        &[0.0, 0.1, 1.0, 1.0],
        &[INF, 0.972, 0.611, 0.001],
    );
    // roc_curve(y5, a5): no ties, 60 cases reduced to 30 points
    check_curve(
        &A5,
        &Y5,
        &[
            0.0,
            0.0,
            0.0,
            0.02857142857142857,
            0.02857142857142857,
            0.05714285714285714,
            0.05714285714285714,
            0.14285714285714285,
            0.14285714285714285,
            0.17142857142857143,
            0.17142857142857143,
            0.22857142857142856,
            0.22857142857142856,
            0.3142857142857143,
            0.3142857142857143,
            0.34285714285714286,
            0.34285714285714286,
            0.4,
            0.4,
            0.45714285714285713,
            0.45714285714285713,
            0.5714285714285714,
            0.5714285714285714,
            0.6,
            0.6,
            0.6285714285714286,
            0.6285714285714286,
            0.7428571428571429,
            0.7428571428571429,
            1.0,
        ],
        &[
            0.0, 0.04, 0.08, 0.08, 0.12, 0.12, 0.4, 0.4, 0.56, 0.56, 0.64, 0.64, 0.68, 0.68, 0.72,
            0.72, 0.76, 0.76, 0.8, 0.8, 0.84, 0.84, 0.88, 0.88, 0.92, 0.92, 0.96, 0.96, 1.0, 1.0,
        ],
        &[
            INF, 3.164, 2.0098, 1.7921, 1.6267, 1.4741, 0.8938, 0.8143, 0.6414, 0.5613, 0.5402,
            0.4827, 0.4181, 0.3581, 0.3409, 0.3264, 0.2294, 0.1597, 0.1403, 0.1169, 0.1066,
            -0.0601, -0.0884, -0.0901, -0.1259, -0.171, -0.3036, -0.3839, -0.4445, -1.9486,
        ],
    );
    // sklearn's docstring: roc_curve([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    check_curve(
        &[0.1, 0.4, 0.35, 0.8],
        &[0, 0, 1, 1],
        &[0.0, 0.0, 0.5, 0.5, 1.0],
        &[0.0, 0.5, 0.5, 1.0, 1.0],
        &[INF, 0.8, 0.4, 0.35, 0.1],
    );
    // Collinear but kept (cumulative fps 1, 3, 7 / tps 1, 2, 4, the case in sklearn's comment):
    // roc_curve([0,1, 0,0,1, 0,0,0,0,1,1, 1,0], [3,3, 2,2,2, 1,1,1,1,1,1, 0,0])
    check_curve(
        &[
            3.0, 3.0, 2.0, 2.0, 2.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0,
        ],
        &[0, 1, 0, 0, 1, 0, 0, 0, 0, 1, 1, 1, 0],
        &[0.0, 0.125, 0.375, 0.875, 1.0],
        &[0.0, 0.2, 0.4, 0.8, 1.0],
        &[INF, 3.0, 2.0, 1.0, 0.0],
    );
    // Equal steps along the diagonal, middle one dropped:
    // roc_curve([1,0,1,0,1,0,0,1], [5,5,4,4,3,3,2,1])
    check_curve(
        &[5.0, 5.0, 4.0, 4.0, 3.0, 3.0, 2.0, 1.0],
        &[1, 0, 1, 0, 1, 0, 0, 1],
        &[0.0, 0.25, 0.75, 1.0, 1.0],
        &[0.0, 0.25, 0.75, 0.75, 1.0],
        &[INF, 5.0, 3.0, 2.0, 1.0],
    );
    // Two distinct scores: nothing to drop.
    check_curve(
        &[1.0, 2.0],
        &[0, 1],
        &[0.0, 0.0, 1.0],
        &[0.0, 1.0, 1.0],
        &[INF, 2.0, 1.0],
    );
}

#[test]
fn roc_trapezoid_area_is_sklearn_auc() {
    // sklearn.metrics.roc_auc_score(y, s)
    let cases: [(&[f64], &[u8], f64); 5] = [
        (&S1, &Y1, 0.5719696969696969),
        (&S2, &Y1, 0.5378787878787878),
        (&S4, &Y4, 0.662037037037037),
        (&S3, &Y3, 1.0),
        (&A5, &Y5, 0.7748571428571428),
    ];
    for (s, y, want) in cases {
        let c = roc_curve(s, y).unwrap();
        let area: f64 = c
            .windows(2)
            .map(|w| (w[1].fpr - w[0].fpr) * (w[0].tpr + w[1].tpr) / 2.0)
            .sum();
        close(area, want, 1e-12, "trapezoid area");
        close(auc(s, y).unwrap(), want, 1e-12, "eval::auc");
        // Thresholds strictly decreasing, first +inf at (0, 0).
        assert_eq!(
            (c[0].fpr, c[0].tpr, c[0].threshold),
            (0.0, 0.0, f64::INFINITY)
        );
        assert!(c.windows(2).all(|w| w[1].threshold < w[0].threshold));
    }
}

#[test]
fn roc_rejects_bad_input() {
    assert!(
        roc_curve(&[0.1, 0.2], &[1, 1])
            .unwrap_err()
            .to_string()
            .contains("both classes")
    );
    assert!(
        roc_curve(&[0.1], &[1, 0])
            .unwrap_err()
            .to_string()
            .contains("1 scores but 2 labels")
    );
    assert!(
        roc_curve(&[f64::NAN, 0.1], &[1, 0])
            .unwrap_err()
            .to_string()
            .contains("not finite")
    );
    assert!(
        sensitivity_at_specificity(&S1, &Y1, 1.5)
            .unwrap_err()
            .to_string()
            .contains("min_spec")
    );
    assert!(
        specificity_at_sensitivity(&S1, &Y1, -0.1)
            .unwrap_err()
            .to_string()
            .contains("min_sens")
    );
    assert!(
        partial_auc_above_tpr(&S1, &Y1, 2.0)
            .unwrap_err()
            .to_string()
            .contains("min_tpr")
    );
    assert!(youden_threshold(&[0.3], &[0]).is_err());
}

// ---------------------------------------------------------------- operating points

fn check_op(op: &pirlkit::eval::OperatingPoint, thr: f64, tp: u64, p: u64, tn: u64, n: u64) {
    assert!(op.threshold == thr, "threshold {} vs {thr}", op.threshold);
    close(op.sensitivity, tp as f64 / p as f64, 1e-12, "sensitivity");
    close(op.specificity, tn as f64 / n as f64, 1e-12, "specificity");
    close(
        op.balanced_accuracy,
        (op.sensitivity + op.specificity) / 2.0,
        1e-15,
        "balanced accuracy",
    );
    assert_eq!((op.sens_lo, op.sens_hi), clopper_pearson(tp, p, 0.95));
    assert_eq!((op.spec_lo, op.spec_hi), clopper_pearson(tn, n, 0.95));
}

#[test]
fn operating_points_match_sklearn_roc() {
    // From fpr, tpr, thr = roc_curve(y, s, drop_intermediate=False):
    //   sensitivity_at_specificity: i = where(1 - fpr >= m); the first argmax of tpr[i];
    //   specificity_at_sensitivity: i = where(tpr >= m); the last index of max(1 - fpr[i]);
    //   youden: thr[np.argmax(tpr - fpr)]. Counts tp = tpr * P, tn = (1 - fpr) * N.
    const INF: f64 = f64::INFINITY;
    let (p1, n1) = (18, 22);
    check_op(
        &sensitivity_at_specificity(&S1, &Y1, 0.9).unwrap(),
        0.9,
        2,
        p1,
        22,
        n1,
    );
    check_op(
        &sensitivity_at_specificity(&S1, &Y1, 0.5).unwrap(),
        0.6,
        9,
        p1,
        13,
        n1,
    );
    check_op(
        &specificity_at_sensitivity(&S1, &Y1, 0.9).unwrap(),
        0.3,
        18,
        p1,
        2,
        n1,
    );
    check_op(
        &specificity_at_sensitivity(&S1, &Y1, 0.8).unwrap(),
        0.4,
        16,
        p1,
        4,
        n1,
    );
    check_op(
        &specificity_at_sensitivity(&S1, &Y1, 0.5).unwrap(),
        0.6,
        9,
        p1,
        13,
        n1,
    );
    assert_eq!(youden_threshold(&S1, &Y1).unwrap(), 0.5);

    check_op(
        &sensitivity_at_specificity(&S2, &Y1, 0.9).unwrap(),
        0.9,
        3,
        p1,
        21,
        n1,
    );
    check_op(
        &sensitivity_at_specificity(&S2, &Y1, 0.8).unwrap(),
        0.8,
        4,
        p1,
        19,
        n1,
    );
    check_op(
        &sensitivity_at_specificity(&S2, &Y1, 0.5).unwrap(),
        0.7,
        7,
        p1,
        15,
        n1,
    );
    check_op(
        &specificity_at_sensitivity(&S2, &Y1, 0.9).unwrap(),
        0.3,
        17,
        p1,
        1,
        n1,
    );
    check_op(
        &specificity_at_sensitivity(&S2, &Y1, 0.5).unwrap(),
        0.5,
        14,
        p1,
        7,
        n1,
    );
    assert_eq!(youden_threshold(&S2, &Y1).unwrap(), 0.9);

    let (p4, n4) = (12, 18);
    // No score reaches specificity 0.9: the +inf threshold (nothing positive).
    check_op(
        &sensitivity_at_specificity(&S4, &Y4, 0.9).unwrap(),
        INF,
        0,
        p4,
        18,
        n4,
    );
    check_op(
        &sensitivity_at_specificity(&S4, &Y4, 0.8).unwrap(),
        3.0,
        2,
        p4,
        16,
        n4,
    );
    check_op(
        &sensitivity_at_specificity(&S4, &Y4, 0.5).unwrap(),
        2.0,
        7,
        p4,
        12,
        n4,
    );
    check_op(
        &specificity_at_sensitivity(&S4, &Y4, 0.9).unwrap(),
        1.0,
        11,
        p4,
        6,
        n4,
    );
    check_op(
        &specificity_at_sensitivity(&S4, &Y4, 0.8).unwrap(),
        1.0,
        11,
        p4,
        6,
        n4,
    );
    assert_eq!(youden_threshold(&S4, &Y4).unwrap(), 2.0);

    for m in [0.9, 0.8, 0.5] {
        check_op(
            &sensitivity_at_specificity(&S3, &Y3, m).unwrap(),
            0.611,
            10,
            10,
            10,
            10,
        );
        check_op(
            &specificity_at_sensitivity(&S3, &Y3, m).unwrap(),
            0.611,
            10,
            10,
            10,
            10,
        );
    }
    assert_eq!(youden_threshold(&S3, &Y3).unwrap(), 0.611);

    let (p5, n5) = (25, 35);
    check_op(
        &sensitivity_at_specificity(&A5, &Y5, 0.9).unwrap(),
        0.8938,
        10,
        p5,
        33,
        n5,
    );
    check_op(
        &sensitivity_at_specificity(&A5, &Y5, 0.8).unwrap(),
        0.5402,
        16,
        p5,
        29,
        n5,
    );
    check_op(
        &sensitivity_at_specificity(&A5, &Y5, 0.5).unwrap(),
        0.1066,
        21,
        p5,
        19,
        n5,
    );
    check_op(
        &specificity_at_sensitivity(&A5, &Y5, 0.9).unwrap(),
        -0.1259,
        23,
        p5,
        14,
        n5,
    );
    check_op(
        &specificity_at_sensitivity(&A5, &Y5, 0.8).unwrap(),
        0.1403,
        20,
        p5,
        21,
        n5,
    );
    check_op(
        &specificity_at_sensitivity(&A5, &Y5, 0.5).unwrap(),
        0.6414,
        14,
        p5,
        30,
        n5,
    );
    assert_eq!(youden_threshold(&A5, &Y5).unwrap(), 0.5402);
    // Edges (same rules, the first and last points of roc_curve(y5, a5) after +inf):
    // min 0 gives the best attainable point, ties broken towards the other rate.
    check_op(
        &specificity_at_sensitivity(&A5, &Y5, 0.0).unwrap(),
        2.0098,
        2,
        p5,
        35,
        n5,
    );
    check_op(
        &sensitivity_at_specificity(&A5, &Y5, 0.0).unwrap(),
        -0.4445,
        25,
        p5,
        9,
        n5,
    );
    check_op(
        &sensitivity_at_specificity(&A5, &Y5, 1.0).unwrap(),
        2.0098,
        2,
        p5,
        35,
        n5,
    );
    check_op(
        &specificity_at_sensitivity(&A5, &Y5, 1.0).unwrap(),
        -0.4445,
        25,
        p5,
        9,
        n5,
    );
}

#[test]
fn at_threshold_counts_and_intervals() {
    // Youden threshold on A5 applied with >=: tp 16/25, tn 29/35.
    let op = at_threshold(&A5, &Y5, 0.5402);
    check_op(&op, 0.5402, 16, 25, 29, 35);
    // scipy.stats.beta.ppf(0.025, 16, 10), beta.ppf(0.975, 17, 9); beta.ppf(0.025, 29, 7), beta.ppf(0.975, 30, 6)
    close(op.sens_lo, 0.42520634955384945, 1e-9, "sens_lo");
    close(op.sens_hi, 0.8202831794163445, 1e-9, "sens_hi");
    close(op.spec_lo, 0.6635016999818029, 1e-9, "spec_lo");
    close(op.spec_hi, 0.9343781988437493, 1e-9, "spec_hi");
    // Between scores (0.5402 < 0.545 < 0.5547): the same counts as the next score up.
    let (mid, up) = (
        at_threshold(&A5, &Y5, 0.545),
        at_threshold(&A5, &Y5, 0.5547),
    );
    assert_eq!(
        (mid.sensitivity, mid.specificity),
        (up.sensitivity, up.specificity)
    );
    // Ties at the threshold are all positive: S1 at 0.5.
    let t = at_threshold(&S1, &Y1, 0.5);
    let tp = S1
        .iter()
        .zip(&Y1)
        .filter(|(s, y)| **s >= 0.5 && **y == 1)
        .count() as u64;
    let tn = S1
        .iter()
        .zip(&Y1)
        .filter(|(s, y)| **s < 0.5 && **y == 0)
        .count() as u64;
    check_op(&t, 0.5, tp, 18, tn, 22);
    // Extremes.
    let all = at_threshold(&S1, &Y1, f64::NEG_INFINITY);
    assert_eq!(
        (all.sensitivity, all.specificity, all.sens_hi, all.spec_lo),
        (1.0, 0.0, 1.0, 0.0)
    );
    let none = at_threshold(&S1, &Y1, f64::INFINITY);
    assert_eq!(
        (
            none.sensitivity,
            none.specificity,
            none.sens_lo,
            none.spec_hi
        ),
        (0.0, 1.0, 0.0, 1.0)
    );
}

// ---------------------------------------------------------------- partial AUC

#[test]
fn partial_auc_matches_proc() {
    // as.numeric(auc(mk(y, s), partial.auc = c(1, t), partial.auc.focus = "sensitivity"))
    let cases: [(&[f64], &[u8], [f64; 5]); 6] = [
        // t = 0.8, 0.9, 0.5, 0.0, 0.95
        (
            &S1,
            &Y1,
            [
                0.037777777777777757,
                0.013181818181818175,
                0.17803030303030304,
                0.57196969696969702,
                0.0055681818181818237,
            ],
        ),
        (
            &S2,
            &Y1,
            [
                0.028585858585858565,
                0.0057070707070706996,
                0.13952020202020202,
                0.53787878787878785,
                0.0010227272727272741,
            ],
        ),
        (
            &S4,
            &Y4,
            [
                0.059583333333333301,
                0.019583333333333317,
                0.23796296296296296,
                0.66203703703703698,
                0.005000000000000007,
            ],
        ),
        (
            &S3,
            &Y3,
            [
                0.19999999999999996,
                0.099999999999999978,
                0.5,
                1.0,
                0.050000000000000044,
            ],
        ),
        (
            &A5,
            &Y5,
            [
                0.07999999999999996,
                0.033142857142857127,
                0.30628571428571433,
                0.77485714285714291,
                0.014000000000000012,
            ],
        ),
        (
            &B5,
            &Y5,
            [
                0.045714285714285693,
                0.0068571428571428568,
                0.22,
                0.6388571428571429,
                0.00057142857142857191,
            ],
        ),
    ];
    for (i, (s, y, want)) in cases.iter().enumerate() {
        for (t, w) in [0.8, 0.9, 0.5, 0.0, 0.95].into_iter().zip(want) {
            let got = partial_auc_above_tpr(s, y, t).unwrap();
            close(got, *w, 1e-9, &format!("case {i} min_tpr {t}"));
            assert!(got <= 1.0 - t + 1e-12);
        }
        assert_eq!(partial_auc_above_tpr(s, y, 1.0).unwrap(), 0.0);
    }
}

/// PCA of two correlated features: after standardising, the covariance is
/// [[1, r], [r, 1]] (with the n-1 divisor), whose eigenvectors are
/// (1, 1)/sqrt(2) and (1, -1)/sqrt(2) with eigenvalues 1 + r and 1 - r: the
/// projections' variances must be those, the components uncorrelated.
#[test]
fn pca_projects_on_the_eigenvectors_of_the_correlation() {
    use ndarray::Array2;
    let n = 200;
    let x = Array2::from_shape_fn((n, 2), |(i, j)| {
        let t = (i as f64 * 0.37).sin() * 3.0 + 1.0;
        let e = ((i * 7919 + 13) % 101) as f64 / 101.0 - 0.5;
        if j == 0 { t } else { 0.5 * t + e }
    });
    let p = pirlkit::eval::pca::project_2d(&x, &x);
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let var = |v: &[f64]| {
        let m = mean(v);
        v.iter().map(|a| (a - m) * (a - m)).sum::<f64>() / (v.len() - 1) as f64
    };
    let a: Vec<f64> = p.iter().map(|q| q.0).collect();
    let b: Vec<f64> = p.iter().map(|q| q.1).collect();
    // r from the standardised columns (population sd, as the projection).
    let col = |j: usize| x.column(j).to_vec();
    let z = |v: Vec<f64>| {
        let m = mean(&v);
        let sd = (v.iter().map(|a| (a - m) * (a - m)).sum::<f64>() / v.len() as f64).sqrt();
        v.iter().map(|a| (a - m) / sd).collect::<Vec<f64>>()
    };
    let (z0, z1) = (z(col(0)), z(col(1)));
    let r = z0.iter().zip(&z1).map(|(a, b)| a * b).sum::<f64>() / (n - 1) as f64;
    let k = n as f64 / (n - 1) as f64; // population-sd standardisation, n-1 variance
    assert!((var(&a) - (k + r)).abs() < 1e-9, "{} vs {}", var(&a), k + r);
    assert!((var(&b) - (k - r)).abs() < 1e-9, "{} vs {}", var(&b), k - r);
    let cov = a.iter().zip(&b).map(|(x, y)| x * y).sum::<f64>();
    assert!(cov.abs() < 1e-6, "{cov}");
    // The same projection again: deterministic.
    assert_eq!(pirlkit::eval::pca::project_2d(&x, &x), p);
}
