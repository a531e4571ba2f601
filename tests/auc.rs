//! AUC against scikit-learn's `roc_auc_score`, ties included.

use pirlkit::eval::auc;

#[test]
fn auc_matches_sklearn_with_ties() {
    // from sklearn.metrics import roc_auc_score
    // roc_auc_score([0,0,1,1,0,1,0,1,1,0], [0.1,0.4,0.35,0.8,0.4,0.4,0.2,0.9,0.1,0.5]) == 0.62
    let y = [0, 0, 1, 1, 0, 1, 0, 1, 1, 0];
    let s = [0.1, 0.4, 0.35, 0.8, 0.4, 0.4, 0.2, 0.9, 0.1, 0.5];
    assert!((auc(&s, &y).unwrap() - 0.62).abs() < 1e-12);
    // roc_auc_score([1,0,1,0,1,0,0,0,1,1,0,1], [3,3,3,3,2,2,1,1,5,5,5,0]) == 0.5972222222222223
    let y = [1, 0, 1, 0, 1, 0, 0, 0, 1, 1, 0, 1];
    let s = [3.0, 3.0, 3.0, 3.0, 2.0, 2.0, 1.0, 1.0, 5.0, 5.0, 5.0, 0.0];
    assert!((auc(&s, &y).unwrap() - 0.5972222222222223).abs() < 1e-12);
    // All tied: roc_auc_score([0,1,0,1], [1,1,1,1]) == 0.5
    assert_eq!(auc(&[1.0; 4], &[0, 1, 0, 1]).unwrap(), 0.5);
}

#[test]
fn auc_extremes_and_symmetry() {
    let y = [0, 0, 1, 1, 1];
    let s = [0.1, 0.2, 0.3, 0.4, 0.5];
    assert_eq!(auc(&s, &y).unwrap(), 1.0);
    let neg: Vec<f64> = s.iter().map(|v| -v).collect();
    assert_eq!(auc(&neg, &y).unwrap(), 0.0);
    // Flipping labels gives 1 - AUC.
    let y2 = [1, 0, 0, 1, 0, 1, 1];
    let s2 = [0.3, 0.1, 0.3, 0.9, 0.5, 0.2, 0.7];
    let flipped: Vec<u8> = y2.iter().map(|v| 1 - v).collect();
    assert!((auc(&s2, &y2).unwrap() + auc(&s2, &flipped).unwrap() - 1.0).abs() < 1e-12);
}

#[test]
fn auc_rejects_one_class_mismatch_and_nan() {
    let e = auc(&[0.1, 0.2], &[1, 1]).unwrap_err().to_string();
    assert!(e.contains("both classes"), "{e}");
    assert!(auc(&[0.1], &[1, 0]).is_err());
    assert!(
        auc(&[0.1, f64::NAN], &[1, 0])
            .unwrap_err()
            .to_string()
            .contains("not finite")
    );
}
