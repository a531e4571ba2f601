//! Evaluation: AUC and the linear probe; pictures of what an encoder
//! learned (PCA and t-SNE maps, Grad-CAM).
pub mod auc;
pub mod calibration;
pub mod gradcam;
pub mod pca;
pub mod probe;
pub mod roc;
pub mod selection;
pub mod stats;
pub mod subgroups;
pub mod tsne;

pub use auc::auc;
pub use roc::{
    OperatingPoint, RocPoint, at_threshold, partial_auc_above_tpr, roc_curve,
    sensitivity_at_specificity, specificity_at_sensitivity, youden_threshold,
};
pub use stats::{
    AucCi, PairedTest, bootstrap_ci, bootstrap_paired, clopper_pearson, delong_ci, delong_paired,
    mean_sd,
};

use std::path::Path;

use crate::error::{Error, Result};

/// `pirlkit evaluate`: every score column of a CSV against its label column:
/// AUC with DeLong and bootstrap CIs, sensitivity at 90/95 % specificity,
/// specificity at 90/95 % sensitivity, partial AUC above 80 % TPR; and the
/// paired DeLong test of the first two score columns.
pub fn evaluate_file(
    path: &Path,
    label_column: &str,
    resamples: usize,
    seed: u64,
) -> Result<serde_json::Value> {
    let err = |line: u64, msg: String| {
        Error::Data(crate::data::DataError::Csv {
            path: path.into(),
            line,
            msg,
        })
    };
    let mut rdr = csv::Reader::from_path(path).map_err(|e| err(1, e.to_string()))?;
    let headers = rdr.headers().map_err(|e| err(1, e.to_string()))?.clone();
    let lc = headers
        .iter()
        .position(|h| h == label_column)
        .ok_or_else(|| err(1, format!("no column {label_column:?}")))?;
    let score_cols: Vec<(usize, String)> = headers
        .iter()
        .enumerate()
        .filter(|(i, h)| *i != lc && !matches!(*h, "image_id" | "id" | "path" | "split"))
        .map(|(i, h)| (i, h.to_string()))
        .collect();
    if score_cols.is_empty() {
        return Err(err(1, "no score columns".into()));
    }
    let mut labels = Vec::new();
    let mut cols: Vec<Vec<f64>> = vec![Vec::new(); score_cols.len()];
    for (r, rec) in rdr.records().enumerate() {
        let line = r as u64 + 2;
        let rec = rec.map_err(|e| err(line, e.to_string()))?;
        let l = crate::data::manifest::parse_label(rec.get(lc).unwrap_or("")).ok_or_else(|| {
            err(
                line,
                format!("label {:?} is not 0/1", rec.get(lc).unwrap_or("")),
            )
        })?;
        labels.push(l);
        for (k, (c, name)) in score_cols.iter().enumerate() {
            let v: f64 = rec.get(*c).unwrap_or("").trim().parse().map_err(|_| {
                err(
                    line,
                    format!("{name}: {:?} is not a number", rec.get(*c).unwrap_or("")),
                )
            })?;
            cols[k].push(v);
        }
    }
    let mut out = serde_json::Map::new();
    for ((_, name), s) in score_cols.iter().zip(&cols) {
        out.insert(
            name.clone(),
            serde_json::json!({
                "auc": auc(s, &labels)?,
                "delong": stats::delong_ci(s, &labels)?,
                "bootstrap": stats::bootstrap_ci(s, &labels, resamples, seed)?,
                "sens_at_spec90": roc::sensitivity_at_specificity(s, &labels, 0.90)?,
                "sens_at_spec95": roc::sensitivity_at_specificity(s, &labels, 0.95)?,
                "spec_at_sens90": roc::specificity_at_sensitivity(s, &labels, 0.90)?,
                "spec_at_sens95": roc::specificity_at_sensitivity(s, &labels, 0.95)?,
                "pauc_tpr80": roc::partial_auc_above_tpr(s, &labels, 0.8)?,
            }),
        );
    }
    if cols.len() >= 2 {
        out.insert(
            format!("paired:{}-vs-{}", score_cols[0].1, score_cols[1].1),
            serde_json::json!({
                "delong": stats::delong_paired(&cols[0], &cols[1], &labels)?,
                "bootstrap_diff": stats::bootstrap_paired(&cols[0], &cols[1], &labels, resamples, seed)?,
            }),
        );
    }
    out.insert("n".into(), labels.len().into());
    out.insert(
        "n_pos".into(),
        labels.iter().filter(|&&l| l == 1).count().into(),
    );
    Ok(serde_json::Value::Object(out))
}
