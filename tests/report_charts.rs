//! The report's building blocks against reference values: calibration
//! (Brier score, reliability curve, ECE) against scikit-learn, Student's t
//! against scipy, subgroup formation, tick labels, and the legend's place
//! (never over data).

use std::collections::BTreeMap;

use pirlkit::eval::calibration::{
    brier_score, expected_calibration_error, reliability_curve, sigmoid,
};
use pirlkit::eval::subgroups::{age_band, groups};
use pirlkit::report::canvas::{PALETTE, color};
use pirlkit::report::chart::{self, Axis, Chart, Curve, Scale, layout, ticks};
use pirlkit::report::format::{fmt_pct, fmt_signed};
use pirlkit::report::png;
use pirlkit::report::seeds::{over_seeds, t_975, t_two_sided_p};

fn close(a: f64, b: f64, tol: f64) -> bool {
    (a - b).abs() <= tol
}

// Probabilities on bin edges (0, 0.1, 0.3, 0.7, 1) and between.
const P: [f64; 20] = [
    0.0, 0.05, 0.1, 0.12, 0.25, 0.3, 0.31, 0.45, 0.5, 0.55, 0.62, 0.7, 0.71, 0.8, 0.85, 0.9, 0.93,
    0.97, 1.0, 0.33,
];
const Y: [u8; 20] = [0, 0, 0, 1, 0, 0, 1, 0, 1, 0, 1, 1, 0, 1, 1, 1, 0, 1, 1, 0];

/// scikit-learn 1.9.1, numpy 2.4.6:
/// ```python
/// from sklearn.metrics import brier_score_loss
/// from sklearn.calibration import calibration_curve
/// brier_score_loss(y, p)                                  # 0.19781
/// pt, pp = calibration_curve(y, p, n_bins=nb, strategy="uniform")
/// bins = np.linspace(0, 1, nb + 1)
/// cnt = np.bincount(np.searchsorted(bins[1:-1], p), minlength=nb)
/// cnt = cnt[cnt > 0]; ece = np.sum(cnt / len(p) * np.abs(pt - pp))
/// ```
#[test]
fn calibration_matches_scikit_learn() {
    assert!(close(brier_score(&P, &Y).unwrap(), 0.19781, 1e-15));
    let cases: [(usize, &[f64], &[f64], &[usize], f64); 2] = [
        (
            10,
            &[
                0.0,
                1.0,
                0.0,
                0.5,
                0.5,
                0.0,
                1.0,
                0.5,
                1.0,
                0.6666666666666666,
            ],
            &[
                0.05000000000000001,
                0.12,
                0.275,
                0.32,
                0.475,
                0.55,
                0.6599999999999999,
                0.755,
                0.875,
                0.9666666666666667,
            ],
            &[3, 1, 2, 2, 2, 1, 2, 2, 2, 3],
            0.24400000000000005,
        ),
        (
            5,
            &[0.25, 0.25, 0.3333333333333333, 0.75, 0.8],
            &[0.0675, 0.29750000000000004, 0.5, 0.7075, 0.93],
            &[4, 4, 3, 4, 5],
            0.112,
        ),
    ];
    for (bins, frac_pos, mean_pred, n, ece) in cases {
        let curve = reliability_curve(&P, &Y, bins).unwrap();
        assert_eq!(curve.len(), frac_pos.len(), "{bins} bins: {curve:?}");
        for (b, ((fp, mp), n)) in curve.iter().zip(frac_pos.iter().zip(mean_pred).zip(n)) {
            assert!(close(b.fraction_positive, *fp, 1e-12), "{bins}: {b:?}");
            assert!(close(b.mean_predicted, *mp, 1e-12), "{bins}: {b:?}");
            assert_eq!(b.n, *n, "{bins}: {b:?}");
            assert!(b.lo < b.mean_predicted + 1e-12 || b.lo == 0.0);
            assert!(b.mean_predicted <= b.hi + 1e-12);
        }
        let got = expected_calibration_error(&P, &Y, bins).unwrap();
        assert!(close(got, ece, 1e-12), "{bins} bins: ECE {got} vs {ece}");
    }
    // A perfectly calibrated bin structure: ECE 0.
    let p = [0.25, 0.25, 0.25, 0.25, 0.75, 0.75, 0.75, 0.75];
    let y = [1, 0, 0, 0, 1, 1, 1, 0];
    assert!(close(
        expected_calibration_error(&p, &y, 10).unwrap(),
        0.0,
        1e-15
    ));
}

#[test]
fn calibration_refuses_what_is_not_a_probability() {
    let e = brier_score(&[0.2, 1.5], &[0, 1]).unwrap_err().to_string();
    assert!(e.contains("probability 1 is 1.5"), "{e}");
    let e = reliability_curve(&[0.2, f64::NAN], &[0, 1], 10)
        .unwrap_err()
        .to_string();
    assert!(e.contains("probability 1"), "{e}");
    let e = expected_calibration_error(&[0.2], &[0, 1], 10)
        .unwrap_err()
        .to_string();
    assert!(e.contains("1 probabilities but 2 labels"), "{e}");
    assert!(reliability_curve(&[0.2], &[1], 0).is_err());
    // The logistic function does not overflow.
    assert_eq!(sigmoid(0.0), 0.5);
    assert!(sigmoid(-800.0) >= 0.0 && sigmoid(800.0) == 1.0);
    assert!(close(sigmoid(2.0), 0.8807970779778823, 1e-15));
}

/// scipy 1.17.1: `stats.t.ppf(0.975, nu)`, `2 * stats.t.sf(t, nu)`.
#[test]
fn student_t_matches_scipy() {
    for (nu, want) in [
        (1, 12.706204736174694),
        (2, 4.302652729749462),
        (4, 2.7764451051977934),
        (9, 2.262157162798205),
        (29, 2.045229642132703),
    ] {
        let got = t_975(nu);
        assert!(
            close(got, want, 1e-9),
            "t(0.975, {nu}) = {got}, want {want}"
        );
    }
    for (t, nu, want) in [
        (2.0, 5, 0.10193947882985835),
        (1.0, 1, 0.5000000000000001),
        (3.0, 10, 0.01334365502256957),
        (0.5, 2, 0.6666666666666667),
        (4.2, 7, 0.004035559925219959),
    ] {
        let got = t_two_sided_p(t, nu);
        assert!(close(got, want, 1e-12), "p({t}, {nu}) = {got}, want {want}");
    }
    // Over seeds: mean ± t sd / sqrt(n); one value has no interval.
    let o = over_seeds(&[0.1, 0.2, 0.3]);
    assert!(close(o.mean, 0.2, 1e-15) && close(o.sd, 0.1, 1e-15));
    let h = 4.302652729749462 * 0.1 / 3f64.sqrt();
    assert!(close(o.lo, 0.2 - h, 1e-9) && close(o.hi, 0.2 + h, 1e-9));
    let one = over_seeds(&[0.4]);
    assert!(one.lo.is_nan() && one.p.is_nan() && one.sd == 0.0);
}

#[test]
fn subgroups_from_metadata() {
    let row = |sex: &str, age: &str, id: usize| {
        BTreeMap::from([
            ("sex".to_string(), sex.to_string()),
            ("age_approximate".to_string(), age.to_string()),
            ("lesion_id".to_string(), format!("L{id}")),
        ])
    };
    let meta = vec![
        row("female", "35", 0),
        row("male", "40", 1),
        row("female", "59.5", 2),
        row("", "60", 3),
        row("male", "unknown", 4),
        row("female", "85", 5),
        row("unknown", "-3", 6),
        row("male", "20", 7),
        row("female", "45", 8),
        row("male", "70", 9),
        row("female", "", 10),
        row("male", "55", 11),
        row("female", "33", 12),
        row("male", "65", 13),
    ];
    let g = groups(&meta);
    let got: Vec<(String, String, Vec<usize>)> = g
        .groups
        .iter()
        .map(|g| (g.column.clone(), g.value.clone(), g.members.clone()))
        .collect();
    let want = |c: &str, v: &str, m: &[usize]| (c.to_string(), v.to_string(), m.to_vec());
    assert_eq!(
        got,
        vec![
            want("age", "<40", &[0, 7, 12]),
            want("age", "40-59", &[1, 2, 8, 11]),
            want("age", ">=60", &[3, 5, 9, 13]),
            want("age", "unknown", &[4, 6, 10]),
            want("sex", "female", &[0, 2, 5, 8, 10, 12]),
            want("sex", "male", &[1, 4, 7, 9, 11, 13]),
            want("sex", "unknown", &[3, 6]),
        ]
    );
    // 14 distinct lesion ids: an identifier, not a category.
    assert_eq!(g.skipped.len(), 1, "{:?}", g.skipped);
    assert!(g.skipped[0].starts_with("lesion_id: 14 distinct values"));
    assert_eq!(age_band("39.9"), Some("<40"));
    assert_eq!(age_band("60"), Some(">=60"));
    assert_eq!(age_band("n/a"), None);
}

#[test]
fn numbers_are_printed_alike() {
    let labels = |a: &Axis| ticks(a).into_iter().map(|t| t.1).collect::<Vec<_>>();
    assert_eq!(
        labels(&Axis::linear("", (0.0, 1.0))),
        ["0.0", "0.2", "0.4", "0.6", "0.8", "1.0"]
    );
    assert_eq!(labels(&Axis::linear("", (4.0, 7.0))), ["4", "5", "6", "7"]);
    assert_eq!(
        labels(&Axis::linear("", (0.5, 0.7))),
        ["0.50", "0.55", "0.60", "0.65", "0.70"]
    );
    assert_eq!(
        labels(&Axis::linear("", (0.0, 100.0))),
        ["0", "20", "40", "60", "80", "100"]
    );
    let pct = |t: &[f64]| Axis {
        label: String::new(),
        range: (0.005, 1.5),
        log: true,
        ticks: t.to_vec(),
        percent: true,
    };
    assert_eq!(labels(&pct(&[0.01, 0.1, 1.0])), ["1", "10", "100"]);
    assert_eq!(labels(&pct(&[0.025, 0.5])), ["2.5", "50.0"]);
    assert_eq!(fmt_pct(0.07), "7");
    assert_eq!(fmt_pct(0.025), "2.5");
    assert_eq!(fmt_signed(Some(-0.0123)), "−0.012");
    assert_eq!(fmt_signed(Some(0.2)), "+0.200");
    assert_eq!(fmt_signed(Some(f64::NAN)), "–");
}

fn chart_of(curves: Vec<Curve>, diagonal: bool) -> Chart {
    Chart {
        title: "t".into(),
        x: Axis::linear("x", (0.0, 1.0)),
        y: Axis::linear("y", (0.0, 1.0)),
        curves,
        diagonal,
        hlines: Vec::new(),
        size: chart::SIZE,
    }
}

/// Points every 1/200 along a polyline.
fn along(points: &[(f64, f64)]) -> Vec<(f64, f64)> {
    let mut out = Vec::new();
    for w in points.windows(2) {
        for k in 0..=200 {
            let t = k as f64 / 200.0;
            out.push((
                w[0].0 + (w[1].0 - w[0].0) * t,
                w[0].1 + (w[1].1 - w[0].1) * t,
            ));
        }
    }
    out
}

#[test]
fn the_legend_never_covers_data() {
    // ROC curves above the diagonal: a corner is free (lower right).
    let roc = vec![
        Curve::line(
            "pirl (AUC 0.900)",
            vec![
                (0.0, 0.0),
                (0.05, 0.6),
                (0.2, 0.85),
                (0.5, 0.95),
                (1.0, 1.0),
            ],
            color(0),
        ),
        Curve::line(
            "random (AUC 0.700)",
            vec![(0.0, 0.0), (0.2, 0.4), (0.5, 0.75), (1.0, 1.0)],
            color(1),
        ),
    ];
    let c = chart_of(roc.clone(), true);
    let lay = layout(&c);
    let (bx, _) = lay.legend.unwrap();
    assert!(!lay.legend_outside);
    let s = Scale::new(lay.plot, &c.x, &c.y);
    let inside =
        |p: (f64, f64)| p.0 >= bx.x && p.0 <= bx.x + bx.w && p.1 >= bx.y && p.1 <= bx.y + bx.h;
    for cu in &roc {
        assert!(along(&cu.points).into_iter().all(|p| !inside(s.map(p))));
    }
    assert!(
        along(&[(0.0, 0.0), (1.0, 1.0)])
            .into_iter()
            .all(|p| !inside(s.map(p)))
    );
    // Both right-hand corners taken by a curve: it goes to the left.
    let low = vec![Curve::line(
        "through both right corners",
        vec![
            (0.0, 0.0),
            (0.6, 0.05),
            (0.75, 0.5),
            (0.8, 0.95),
            (1.0, 1.0),
        ],
        color(0),
    )];
    let c = chart_of(low.clone(), true);
    let lay = layout(&c);
    let (bx, _) = lay.legend.unwrap();
    let s = Scale::new(lay.plot, &c.x, &c.y);
    let inside =
        |p: (f64, f64)| p.0 >= bx.x && p.0 <= bx.x + bx.w && p.1 >= bx.y && p.1 <= bx.y + bx.h;
    assert!(along(&low[0].points).into_iter().all(|p| !inside(s.map(p))));
    assert!(
        !lay.legend_outside && bx.x < lay.plot.x + lay.plot.w / 2.0,
        "{bx:?}"
    );

    // Both diagonals take every corner: the legend goes below the plot.
    let frame = vec![(0.0, 0.0), (1.0, 1.0), (1.0, 0.0), (0.0, 1.0)];
    let many: Vec<Curve> = (0..5)
        .map(|i| Curve::line(&format!("series {i}"), frame.clone(), color(i)))
        .collect();
    let c = chart_of(many, false);
    let lay = layout(&c);
    let (bx, cols) = lay.legend.unwrap();
    assert!(lay.legend_outside);
    assert!(
        bx.y > lay.plot.y + lay.plot.h + 30.0,
        "{bx:?} vs {:?}",
        lay.plot
    );
    assert!(bx.y + bx.h <= chart::SIZE.1 && cols >= 2);
    // Drawn there: each series' colour below the plot area of the PNG.
    let img = image::load_from_memory(&png::chart(&c).unwrap())
        .unwrap()
        .to_rgb8();
    let y0 = ((lay.plot.y + lay.plot.h + 30.0) * png::SCALE) as u32;
    for (r, g, b) in &PALETTE[..5] {
        let n = (y0..img.height())
            .flat_map(|y| (0..img.width()).map(move |x| (x, y)))
            .filter(|&(x, y)| img.get_pixel(x, y).0 == [*r, *g, *b])
            .count();
        assert!(n > 40, "legend colour {r},{g},{b}: {n} pixels");
    }
}
