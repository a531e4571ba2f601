//! The statistics of each run on the test split that the report's tables
//! carry: DeLong and bootstrap CIs, sensitivity and specificity at fixed
//! operating points, the Youden threshold picked on validation, the
//! partial AUC.

use serde::Serialize;

use crate::error::Result;
use crate::eval::roc;
use crate::eval::stats::{self, AucCi};
use crate::protocol::ArmResult;

/// The statistics of one run on the test split.
#[derive(Debug, Clone, Serialize)]
pub struct RowStats {
    pub delong: AucCi,
    pub bootstrap: AucCi,
    pub sens_at_spec90: f64,
    pub sens_at_spec95: f64,
    pub spec_at_sens90: f64,
    pub spec_at_sens95: f64,
    /// Youden threshold picked on validation, applied to test.
    pub youden: roc::OperatingPoint,
    pub pauc_tpr80: f64,
}

pub fn row_stats(
    r: &ArmResult,
    val_labels: &[u8],
    test_labels: &[u8],
    resamples: usize,
) -> Result<RowStats> {
    let s = &r.test_scores;
    let thr = roc::youden_threshold(&r.val_scores, val_labels)?;
    Ok(RowStats {
        delong: stats::delong_ci(s, test_labels)?,
        bootstrap: stats::bootstrap_ci(s, test_labels, resamples, r.seed)?,
        sens_at_spec90: roc::sensitivity_at_specificity(s, test_labels, 0.90)?.sensitivity,
        sens_at_spec95: roc::sensitivity_at_specificity(s, test_labels, 0.95)?.sensitivity,
        spec_at_sens90: roc::specificity_at_sensitivity(s, test_labels, 0.90)?.specificity,
        spec_at_sens95: roc::specificity_at_sensitivity(s, test_labels, 0.95)?.specificity,
        youden: roc::at_threshold(s, test_labels, thr),
        pauc_tpr80: roc::partial_auc_above_tpr(s, test_labels, 0.8)?,
    })
}
