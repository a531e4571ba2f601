//! Exact t-SNE (eval::tsne): the perplexity calibration against
//! scikit-learn, the principal-component reduction on a case with a known
//! answer, separable clusters staying apart in the map, the same seed giving
//! the same bits, and bad input refused by row and column.

use ndarray::Array2;

use pirlkit::eval::tsne::{
    TsneParams, conditional_p, pca_reduce, squared_distances, tsne, tsne_standardised,
};

/// ```python
/// X = np.array([[((i*7 + j*3) % 11) / 4.0 for j in range(3)] for i in range(8)])
/// D = pairwise_distances(X, squared=True).astype(np.float32)
/// P = sklearn.manifold._utils._binary_search_perplexity(D, 2.0, 0)   # 1.9.1
/// P[:3]
/// ```
#[test]
fn conditional_affinities_match_scikit_learn() {
    let x = Array2::from_shape_fn((8, 3), |(i, j)| ((i * 7 + j * 3) % 11) as f64 / 4.0);
    let p = conditional_p(&squared_distances(&x), 2.0);
    let want = [
        [
            0.000000, 0.001024, 0.271606, 0.002212, 0.003048, 0.710846, 0.005092, 0.006172,
        ],
        [
            0.000211, 0.000000, 0.002298, 0.002137, 0.652464, 0.001600, 0.001287, 0.340004,
        ],
        [
            0.191665, 0.008331, 0.000000, 0.008331, 0.007861, 0.772346, 0.006231, 0.005235,
        ],
    ];
    for (i, row) in want.iter().enumerate() {
        for (j, w) in row.iter().enumerate() {
            assert!(
                (p[(i, j)] - w).abs() < 2e-5,
                "p({j}|{i}) = {} vs scikit-learn {w}",
                p[(i, j)]
            );
        }
    }
    for i in 0..8 {
        let r = p.row(i);
        assert!((r.sum() - 1.0).abs() < 1e-12);
        // The calibrated entropy: ln(perplexity) nats.
        let h: f64 = -r
            .iter()
            .filter(|&&v| v > 0.0)
            .map(|v| v * v.ln())
            .sum::<f64>();
        assert!((h - 2f64.ln()).abs() < 1e-4, "row {i}: entropy {h}");
    }
}

/// Orthogonal, centred columns of decreasing scale (a Hadamard matrix's
/// rows): the covariance is diagonal, so the top two components are the
/// two largest columns, and the reduction keeps exactly their variance.
#[test]
fn the_reduction_keeps_the_largest_components() {
    let h = |i: usize, j: usize| -> f64 {
        if (i & j).count_ones() % 2 == 0 {
            1.0
        } else {
            -1.0
        }
    };
    let scales = [0.5, 3.0, 1.0, 2.0, 0.25, 0.75, 0.1];
    // Columns 1..8 of the 8x8 Sylvester-Hadamard matrix (column 0 is
    // constant), scaled; shifted by a constant that centring removes.
    let x = Array2::from_shape_fn((8, 7), |(i, j)| scales[j] * h(i, j + 1) + 10.0);
    let z = pca_reduce(&x, 2);
    assert_eq!(z.dim(), (8, 2));
    let var = |c: usize| z.column(c).iter().map(|v| v * v).sum::<f64>();
    assert!((var(0) - 8.0 * 9.0).abs() < 1e-8, "{}", var(0));
    assert!((var(1) - 8.0 * 4.0).abs() < 1e-8, "{}", var(1));
    for i in 0..8 {
        assert!((z[(i, 0)].abs() - 3.0).abs() < 1e-6, "{z:?}");
        assert!((z[(i, 1)].abs() - 2.0).abs() < 1e-6, "{z:?}");
    }
}

/// Two Gaussian blobs in 20-D, `n` points each, means 4 apart per
/// coordinate (about 18 in all, against a within-blob spread of 4.5).
fn blobs(n: usize, seed: u64) -> (Array2<f64>, Vec<u8>) {
    let mut rng = pirlkit::rng::stream(seed, "test-blobs", 0, 0);
    let mut x = Array2::zeros((2 * n, 20));
    let mut y = Vec::new();
    for i in 0..2 * n {
        let label = (i % 2) as u8;
        for j in 0..20 {
            x[(i, j)] = 4.0 * label as f64 + pirlkit::rng::normal(&mut rng);
        }
        y.push(label);
    }
    (x, y)
}

/// The share of points whose nearest other point in the map has its label.
fn nn_agreement(points: &[(f64, f64)], labels: &[u8]) -> f64 {
    let mut agree = 0;
    for (i, a) in points.iter().enumerate() {
        let nearest = points
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .min_by(|(_, b), (_, c)| {
                let d = |p: &(f64, f64)| (p.0 - a.0).powi(2) + (p.1 - a.1).powi(2);
                d(b).total_cmp(&d(c))
            })
            .unwrap()
            .0;
        agree += (labels[nearest] == labels[i]) as usize;
    }
    agree as f64 / points.len() as f64
}

#[test]
fn separable_blobs_stay_apart_and_a_seed_fixes_the_map() {
    let (x, y) = blobs(60, 7);
    let p = TsneParams::default();
    let m = tsne(&x, &p, 3).unwrap();
    assert_eq!(m.points.len(), 120);
    assert_eq!(m.dims, 20, "20 columns: no reduction below 50");
    assert_eq!(m.perplexity, 30.0);
    let a = nn_agreement(&m.points, &y);
    assert!(a > 0.95, "1-NN label agreement {a}");
    // The map is a fit: KL fell well below the start's.
    assert!(
        m.kl_divergence < 0.5 * m.kl_start,
        "KL {} from {}",
        m.kl_divergence,
        m.kl_start
    );
    // The blobs' centres lie apart relative to their spread.
    let centre = |l: u8| {
        let pts: Vec<_> = m
            .points
            .iter()
            .zip(&y)
            .filter(|(_, k)| **k == l)
            .map(|(p, _)| *p)
            .collect();
        let n = pts.len() as f64;
        let c = (
            pts.iter().map(|p| p.0).sum::<f64>() / n,
            pts.iter().map(|p| p.1).sum::<f64>() / n,
        );
        let spread = (pts
            .iter()
            .map(|p| (p.0 - c.0).powi(2) + (p.1 - c.1).powi(2))
            .sum::<f64>()
            / n)
            .sqrt();
        (c, spread)
    };
    let ((c0, s0), (c1, s1)) = (centre(0), centre(1));
    let gap = ((c0.0 - c1.0).powi(2) + (c0.1 - c1.1).powi(2)).sqrt();
    assert!(gap > 2.0 * (s0 + s1), "gap {gap}, spreads {s0} {s1}");

    // Deterministic: the same seed gives the same bits (whatever the
    // threads), another seed another map.
    assert_eq!(tsne(&x, &p, 3).unwrap(), m);
    let other = tsne(&x, &p, 4).unwrap();
    assert_ne!(other.points, m.points);
    assert!(nn_agreement(&other.points, &y) > 0.95);
}

/// Unstructured data has no clusters to keep: the 1-NN agreement with
/// random labels stays near chance, so the blob test above measures the map.
#[test]
fn random_labels_are_not_separated() {
    let (x, _) = blobs(60, 11);
    // Points of one blob only, labelled at random.
    let rows: Vec<usize> = (0..120).filter(|i| i % 2 == 0).collect();
    let x = x.select(ndarray::Axis(0), &rows);
    let mut rng = pirlkit::rng::stream(5, "test-labels", 0, 0);
    let y: Vec<u8> = (0..60)
        .map(|_| rand::Rng::random_bool(&mut rng, 0.5) as u8)
        .collect();
    let m = tsne(&x, &TsneParams::default(), 1).unwrap();
    let a = nn_agreement(&m.points, &y);
    assert!(a < 0.75, "1-NN agreement {a} on random labels");
    // A small set: the perplexity is lowered to (n - 1) / 3.
    assert!((m.perplexity - 59.0 / 3.0).abs() < 1e-12);
}

#[test]
fn bad_input_is_refused_by_name() {
    let (mut x, _) = blobs(5, 1);
    x[(3, 2)] = f64::NAN;
    let e = tsne(&x, &TsneParams::default(), 0).unwrap_err().to_string();
    assert!(e.contains("row 3, column 2") && e.contains("NaN"), "{e}");
    let e = tsne(&Array2::zeros((4, 3)), &TsneParams::default(), 0)
        .unwrap_err()
        .to_string();
    assert!(e.contains("at least 5 points, got 4"), "{e}");
    let bad = TsneParams {
        perplexity: -1.0,
        ..Default::default()
    };
    let e = tsne(&Array2::zeros((10, 3)), &bad, 0)
        .unwrap_err()
        .to_string();
    assert!(e.contains("perplexity"), "{e}");
    let e = tsne_standardised(
        &Array2::zeros((10, 4)),
        &Array2::zeros((10, 3)),
        &TsneParams::default(),
        0,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("4 features for rows of 3"), "{e}");
}
