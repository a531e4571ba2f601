//! The linear probe's selection by cross-validation on the training rows
//! (`probe.selection = "cv"`): stratified folds, a choice that never reads
//! the validation labels, and the tuning check of the two rules.

use ndarray::Array2;
use pirlkit::config::{ProbeConfig, ProbeSelection, ProbeView, Tta};
use pirlkit::eval::probe::{ViewFeatures, fit_probe_views, stratified_folds};

fn labels(n: usize, phase: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 3 == phase) as u8).collect()
}

fn noise(i: usize, j: usize) -> f64 {
    ((i * 7919 + j * 104729) % 1000) as f64 / 1000.0
}

/// Feature 0 carries the label (with overlap), the rest is hashed noise.
fn informative(ys: &[u8], salt: usize) -> Array2<f64> {
    Array2::from_shape_fn((ys.len(), 4), |(i, j)| {
        if j == 0 {
            ys[i] as f64 + 1.5 * noise(i + salt, 9)
        } else {
            noise(i + salt, j)
        }
    })
}

fn junk(n: usize, salt: usize) -> Array2<f64> {
    Array2::from_shape_fn((n, 4), |(i, j)| noise(i + salt, j + 3))
}

/// An informative view (on train; on validation as `yva_feat` says) and a
/// noise view.
fn views(ytr: &[u8], yva_feat: &[u8]) -> Vec<ViewFeatures> {
    let good = ProbeView {
        crop: 32,
        tta: Tta::Flips,
        stages: vec![3, 4],
    };
    let bad = ProbeView {
        crop: 24,
        ..Default::default()
    };
    vec![
        (
            bad,
            [junk(ytr.len(), 500), junk(yva_feat.len(), 900), junk(6, 7)],
            Vec::new(),
        ),
        (
            good,
            [
                informative(ytr, 0),
                informative(yva_feat, 300),
                informative(&[0, 1, 0, 0, 1, 0], 50),
            ],
            Vec::new(),
        ),
    ]
}

#[test]
fn folds_are_stratified_and_cover_every_row() {
    let y = labels(103, 0);
    for k in [2, 3, 5] {
        let f = stratified_folds(&y, k);
        assert_eq!(f.len(), y.len());
        for class in [0u8, 1] {
            let counts: Vec<usize> = (0..k)
                .map(|fold| {
                    (0..y.len())
                        .filter(|&i| y[i] == class && f[i] == fold)
                        .count()
                })
                .collect();
            let (lo, hi) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
            assert!(hi - lo <= 1, "class {class}, {k} folds: {counts:?}");
        }
    }
}

/// Under `cv` the choice is made on the training rows alone: validation
/// features that carry the label, or that carry none (labels from another
/// pattern), leave the chosen view and penalty as they are, and the chosen
/// penalty is the best out-of-fold AUC of the chosen view.
#[test]
fn cross_validation_chooses_without_reading_validation() {
    let ytr = labels(120, 0);
    let yva = labels(60, 0);
    let yte = labels(6, 0);
    let cfg = ProbeConfig {
        selection: ProbeSelection::Cv,
        cv_folds: 4,
        ..Default::default()
    };
    let all: Vec<usize> = (0..ytr.len()).collect();
    let honest = fit_probe_views(&views(&ytr, &yva), &all, &ytr, &yva, &yte, &cfg).unwrap();
    // Validation features built from other labels: the informative view is
    // noise on validation, so a rule reading validation could go either way.
    let misled =
        fit_probe_views(&views(&ytr, &labels(60, 1)), &all, &ytr, &yva, &yte, &cfg).unwrap();
    for r in [&honest, &misled] {
        assert_eq!(r.view.crop, 32, "the informative view");
        assert_eq!(r.selected_by, ProbeSelection::Cv);
        let best = r.cv_aucs.iter().map(|a| a.1).fold(f64::MIN, f64::max);
        assert_eq!(r.cv_auc, Some(best));
        let at = r.cv_aucs.iter().find(|a| a.1 == best).unwrap().0;
        assert_eq!(r.alpha, at);
        assert!(best > 0.75, "{best}");
        assert_eq!(r.view_cv_aucs.len(), 2);
        assert!(
            r.view_cv_aucs[0].1 < 0.7,
            "noise view {:?}",
            r.view_cv_aucs[0]
        );
    }
    assert_eq!(honest.alpha, misled.alpha);
    assert_eq!(honest.cv_aucs, misled.cv_aucs);
    // The validation AUC is scored, not chosen on: high where validation
    // carries the label, near chance where it does not.
    assert!(honest.val_auc > 0.75, "{}", honest.val_auc);
    assert!(misled.val_auc < 0.7, "{}", misled.val_auc);
    // Test was scored once with the chosen model.
    assert_eq!(honest.test_scores.len(), 6);
}

/// The default rule runs no cross-validation when it scores a test split,
/// and both rules are compared when tuning (no test split).
#[test]
fn the_tuning_check_compares_the_rules_only_when_tuning() {
    let ytr = labels(120, 0);
    let yva = labels(90, 0);
    let all: Vec<usize> = (0..ytr.len()).collect();
    let cfg = ProbeConfig::default();
    let scored =
        fit_probe_views(&views(&ytr, &yva), &all, &ytr, &yva, &labels(6, 0), &cfg).unwrap();
    assert!(scored.cv_aucs.is_empty() && scored.cv_auc.is_none());
    assert!(scored.selection_check.is_none());
    let tuned = fit_probe_views(&views(&ytr, &yva), &all, &ytr, &yva, &[], &cfg).unwrap();
    assert_eq!(tuned.selected_by, ProbeSelection::Val);
    let c = tuned.selection_check.expect("tuning compares the rules");
    // 30 positives in 90: half of each class chooses, the rest scores.
    assert_eq!((c.select_pos, c.select_n, c.held_out_n), (15, 45, 45));
    assert_eq!(c.draws, pirlkit::eval::probe::SELECTION_CHECK_DRAWS);
    // Both rules land on the informative view, which scores well held out.
    assert!(c.cv_rule_auc > 0.75 && c.val_rule_auc > 0.75, "{c:?}");
    assert!((c.cv_rule_auc - c.val_rule_auc - c.mean_gain).abs() < 1e-12);
    assert!(
        c.gain_p2_5 <= c.mean_gain && c.mean_gain <= c.gain_p97_5,
        "{c:?}"
    );
    assert!((0.0..=1.0).contains(&c.cv_at_least_as_good));
}

#[test]
fn cross_validation_with_too_few_positives_is_a_clear_error() {
    let mut ytr = vec![0u8; 40];
    ytr[3] = 1;
    let yva = labels(30, 0);
    let cfg = ProbeConfig {
        selection: ProbeSelection::Cv,
        ..Default::default()
    };
    let all: Vec<usize> = (0..ytr.len()).collect();
    let e = fit_probe_views(&views(&ytr, &yva), &all, &ytr, &yva, &labels(6, 0), &cfg)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("one class only") && e.contains("cv_folds"),
        "{e}"
    );
}

/// The default selection is left out of the saved config, so the run keys
/// of saved protocol runs do not change; `cv` and the fold count are kept.
#[test]
fn the_default_selection_is_not_serialised() {
    let d = toml::to_string(&ProbeConfig::default()).unwrap();
    assert!(!d.contains("selection") && !d.contains("cv_folds"), "{d}");
    let cv = ProbeConfig {
        selection: ProbeSelection::Cv,
        cv_folds: 3,
        ..Default::default()
    };
    let s = toml::to_string(&cv).unwrap();
    assert!(
        s.contains("selection = \"cv\"") && s.contains("cv_folds = 3"),
        "{s}"
    );
    let back: ProbeConfig = toml::from_str(&s).unwrap();
    assert_eq!(back, cv);
}
