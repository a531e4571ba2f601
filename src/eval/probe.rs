//! The linear probe: a frozen encoder, global-average-pooled features of the
//! un-augmented image, and an L2-regularised logistic regression (linfa)
//! whose penalty is chosen by validation AUC, refit, then scored once on test.

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use linfa::prelude::*;
use linfa_logistic::LogisticRegression;
use ndarray::{Array1, Array2};
use rayon::prelude::*;
use serde::Serialize;

use crate::augment::{self, stack};
use crate::config::{Config, ProbeConfig, ProbeSelection, ProbeView};
use crate::data::RgbImage;
use crate::error::{Error, Result};
use crate::eval::auc;
use crate::eval::selection::{GridFit, selection_check};
pub use crate::eval::selection::{SELECTION_CHECK_DRAWS, SelectionCheck, stratified_folds};
use crate::model::{ResNet, ResNetConfig};

/// Labeled images of the three splits.
pub struct ProbeData<'a> {
    pub train: (Vec<&'a RgbImage>, Vec<u8>),
    pub val: (Vec<&'a RgbImage>, Vec<u8>),
    pub test: (Vec<&'a RgbImage>, Vec<u8>),
}

/// What the probe measured.
#[derive(Debug, Clone, Serialize)]
pub struct ProbeResult {
    /// (alpha, validation AUC) for each penalty tried.
    pub val_aucs: Vec<(f64, f64)>,
    /// (alpha, out-of-fold AUC of the cross-validation on the training
    /// rows) for each penalty tried; empty when it was not run (`selection
    /// = "val"` with a test split to score).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cv_aucs: Vec<(f64, f64)>,
    pub alpha: f64,
    pub val_auc: f64,
    /// The chosen penalty's cross-validated AUC, when it was run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cv_auc: Option<f64>,
    /// What chose the penalty and the view.
    pub selected_by: ProbeSelection,
    pub test_auc: f64,
    pub n_test: usize,
    pub n_test_pos: usize,
    /// Test scores (the logistic regression's linear score), in test order.
    pub test_scores: Vec<f64>,
    /// Validation scores of the chosen penalty (fit on train only).
    pub val_scores: Vec<f64>,
    /// The feature view used (crop resolved), and each view's best
    /// validation AUC when several were tried.
    pub view: ProbeView,
    pub view_aucs: Vec<(ProbeView, f64)>,
    /// Each view's cross-validated AUC at its chosen penalty (`cv`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub view_cv_aucs: Vec<(ProbeView, f64)>,
    /// Tuning without a test split and with cross-validated AUCs: how the
    /// two selection rules fare on held-out validation images.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub selection_check: Option<SelectionCheck>,
    /// Every penalty's fit (for [`SelectionCheck`]).
    #[serde(skip)]
    grid: Vec<GridFit>,
    /// Scores of each external set's features (in the order given), by the
    /// chosen model.
    pub external_scores: Vec<Vec<f64>>,
    /// The fitted model (standardiser and weights), to score more images.
    #[serde(skip)]
    pub model: Option<LinearScorer>,
}

/// The probe's fitted model: standardise, then a linear score.
#[derive(Debug, Clone)]
pub struct LinearScorer {
    mu: Array1<f64>,
    sd: Array1<f64>,
    w: (Array1<f64>, f64),
}

impl LinearScorer {
    /// Linear scores (logits) of feature rows.
    pub fn score(&self, x: &Array2<f64>) -> Vec<f64> {
        score(&((x - &self.mu) / &self.sd), &self.w)
    }
}

/// Frozen features of one view: (view, [train, val, test], one matrix per
/// external set).
pub type ViewFeatures = (ProbeView, [Array2<f64>; 3], Vec<Array2<f64>>);

/// Pooled features of the whole `images` at the view's size, in eval mode:
/// the view's stages concatenated, averaged over its test-time views.
///
/// # Shapes
/// returns `(images.len(), sum of the stages' channels)`, row-major.
pub fn features(
    encoder: &ResNet,
    images: &[&RgbImage],
    view_cfg: &ProbeView,
    batch: usize,
) -> Result<Array2<f64>> {
    let crop = view_cfg.crop;
    let d: usize = view_cfg
        .stages
        .iter()
        .map(|&s| encoder.stage_channels(s))
        .sum();
    let views = augment::tta_views(view_cfg.tta);
    let mut out = Array2::<f64>::zeros((images.len(), d));
    for &view in views {
        let mut row = 0;
        for chunk in images.chunks(batch.max(1)) {
            let xs = chunk
                .par_iter()
                .map(|im| augment::tta_view(im, crop, view))
                .collect();
            let x = stack(xs, encoder.device())?;
            let f = encoder.pooled_stages(&x, &view_cfg.stages)?.detach();
            let v = f.flatten_all()?.to_vec1::<f32>()?;
            for (i, c) in v.chunks(d).enumerate() {
                for (j, &x) in c.iter().enumerate() {
                    out[[row + i, j]] += f64::from(x) / views.len() as f64;
                }
            }
            row += chunk.len();
        }
    }
    Ok(out)
}

/// Recomputes the encoder's BatchNorm running statistics as the average of
/// the batch statistics over `images` (PyTorch's `momentum=None`), leaving
/// the weights untouched. `prefix` is the encoder's name prefix in `vm`.
pub fn recompute_bn(
    vm: &VarMap,
    cfg: &ResNetConfig,
    prefix: &str,
    images: &[&RgbImage],
    crop: usize,
    batch: usize,
) -> Result<()> {
    // A twin encoder over the same variables whose BatchNorm keeps only the
    // last batch's statistics (momentum 1).
    let dev = vm
        .all_vars()
        .first()
        .map(|v| v.device().clone())
        .unwrap_or(Device::Cpu);
    let vb = candle_nn::VarBuilder::from_varmap(vm, DType::F32, &dev);
    let twin = ResNet::new(
        &ResNetConfig {
            bn_momentum: 1.0,
            ..cfg.clone()
        },
        vb.pp(prefix),
    )?;
    let stats: Vec<(String, candle_core::Var)> = {
        let data = vm.data().lock().expect("varmap lock");
        let mut v: Vec<_> = data
            .iter()
            .filter(|(n, _)| {
                n.starts_with(prefix) && (n.ends_with("running_mean") || n.ends_with("running_var"))
            })
            .map(|(n, v)| (n.clone(), v.clone()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    };
    let mut sums: Vec<Option<Tensor>> = vec![None; stats.len()];
    let mut weight = 0.0;
    // Equal-size batches only (the last partial one would weigh as much as a full one).
    let bs = batch.max(2).min(images.len());
    for chunk in images.chunks_exact(bs) {
        let views = chunk
            .par_iter()
            .map(|im| augment::resize_full(im, crop))
            .collect();
        let x = stack(views, &dev)?;
        twin.forward_t(&x, true)?;
        for (k, (_, v)) in stats.iter().enumerate() {
            let t = v.as_tensor().detach().copy()?;
            sums[k] = Some(match sums[k].take() {
                None => t,
                Some(s) => (s + t)?,
            });
        }
        weight += 1.0;
    }
    if weight == 0.0 {
        return Err(Error::Eval(
            "BatchNorm recompute: fewer than 2 training images".into(),
        ));
    }
    for ((_, v), s) in stats.iter().zip(sums) {
        let s = s.expect("one batch at least");
        v.set(&(s / weight)?)?;
    }
    Ok(())
}

/// The probe's chosen penalty for the log and the report, saying so when
/// it is the smallest or largest of the grid (then the grid may be too
/// narrow), and logging a warning then.
pub fn describe_choice(r: &ProbeResult, cfg: &ProbeConfig) -> String {
    let lo = cfg.alphas.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = cfg.alphas.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let view = if r.view_aucs.is_empty() {
        String::new()
    } else {
        let stages: Vec<String> = r.view.stages.iter().map(|s| s.to_string()).collect();
        format!(
            "; view {} px, stages {}, tta {}",
            r.view.crop,
            stages.join("+"),
            format!("{:?}", r.view.tta).to_lowercase()
        )
    };
    let view = match (r.selected_by, r.cv_auc) {
        (ProbeSelection::Cv, Some(c)) => format!(
            "{view}; chosen by {}-fold cross-validation on train (AUC {c:.4})",
            cfg.cv_folds
        ),
        _ => view,
    };
    if cfg.alphas.len() > 1 && (r.alpha == lo || r.alpha == hi) {
        tracing::warn!(
            "linear probe: the chosen penalty alpha {} is at the edge of probe.alphas [{lo}, {hi}]; widen the grid",
            r.alpha
        );
        let end = if r.alpha == lo { "lowest" } else { "highest" };
        format!("alpha {} ({end} of the grid){view}", r.alpha)
    } else {
        format!("alpha {}{view}", r.alpha)
    }
}

/// Per-column mean and std of `x` (std floored at 1e-8).
fn standardizer(x: &Array2<f64>) -> (Array1<f64>, Array1<f64>) {
    let mean = x.mean_axis(ndarray::Axis(0)).expect("non-empty");
    let std = x.std_axis(ndarray::Axis(0), 0.0).mapv(|s| s.max(1e-8));
    (mean, std)
}

fn fit(x: &Array2<f64>, y: &[u8], alpha: f64, iters: u64) -> Result<(Array1<f64>, f64)> {
    let ds = Dataset::new(x.clone(), Array1::from_iter(y.iter().map(|&v| v as usize)));
    let m = LogisticRegression::default()
        .alpha(alpha)
        .max_iterations(iters)
        .fit(&ds)
        .map_err(|e| Error::Eval(format!("logistic regression (alpha {alpha}): {e}")))?;
    // linfa's "positive" class is the more frequent one, not the label 1:
    // orient the linear score so that larger means label 1.
    let sign = if m.labels().pos.class == 1 { 1.0 } else { -1.0 };
    Ok((m.params() * sign, m.intercept() * sign))
}

fn score(x: &Array2<f64>, w: &(Array1<f64>, f64)) -> Vec<f64> {
    (x.dot(&w.0) + w.1).to_vec()
}

/// Out-of-fold AUC: each fold scored by the model fit on the other folds.
fn cv_auc(
    z: &Array2<f64>,
    y: &[u8],
    folds: &[usize],
    k: usize,
    alpha: f64,
    iters: u64,
) -> Result<f64> {
    let mut oof = vec![0.0; y.len()];
    for f in 0..k {
        let (rest, held): (Vec<usize>, Vec<usize>) = (0..y.len()).partition(|&i| folds[i] != f);
        if held.is_empty() {
            continue;
        }
        let yr: Vec<u8> = rest.iter().map(|&i| y[i]).collect();
        if !(yr.contains(&0) && yr.contains(&1)) {
            return Err(Error::Eval(format!(
                "probe cross-validation: fold {} of {k} leaves one class only ({} training rows, {} positive); use fewer probe.cv_folds or selection = \"val\"",
                f + 1,
                y.len(),
                y.iter().filter(|&&l| l == 1).count()
            )));
        }
        let w = fit(&z.select(ndarray::Axis(0), &rest), &yr, alpha, iters)?;
        for (&i, v) in held
            .iter()
            .zip(score(&z.select(ndarray::Axis(0), &held), &w))
        {
            oof[i] = v;
        }
    }
    auc(&oof, y)
}

/// Fits the probe on train, picks the penalty (on val, or by
/// cross-validation on train), refits, scores test once.
pub fn fit_probe(
    ftrain: &Array2<f64>,
    ytrain: &[u8],
    fval: &Array2<f64>,
    yval: &[u8],
    ftest: &Array2<f64>,
    ytest: &[u8],
    cfg: &ProbeConfig,
) -> Result<ProbeResult> {
    let (mu, sd) = standardizer(ftrain);
    let z = |x: &Array2<f64>| (x - &mu) / &sd;
    let (ztr, zva, zte) = (z(ftrain), z(fval), z(ftest));
    let mut val_aucs = Vec::new();
    let mut cv_aucs = Vec::new();
    let mut grid = Vec::new();
    let mut best: Option<(f64, f64, f64, Option<f64>)> = None;
    let mut best_val_scores = Vec::new();
    // Cross-validation when it chooses, and when tuning (no test split) so
    // that the two rules can be compared on validation.
    let by_cv = cfg.selection == ProbeSelection::Cv;
    let run_cv = by_cv || ytest.is_empty();
    let k = cfg.cv_folds;
    let folds = stratified_folds(ytrain, k);
    // Larger penalties first, so a tie keeps the more regularised model.
    let mut alphas = cfg.alphas.clone();
    alphas.sort_by(|a, b| b.total_cmp(a));
    // The fits are independent (each deterministic, single-threaded), so
    // they run across the threads; the choice below walks them in order.
    type Fit = (f64, Option<f64>, Vec<f64>);
    let fits: Vec<Result<Fit>> = alphas
        .par_iter()
        .map(|&a| {
            let w = fit(&ztr, ytrain, a, cfg.max_iterations)?;
            let vs = score(&zva, &w);
            let cv = if run_cv {
                Some(cv_auc(&ztr, ytrain, &folds, k, a, cfg.max_iterations)?)
            } else {
                None
            };
            Ok((auc(&vs, yval)?, cv, vs))
        })
        .collect();
    for (&a, r) in alphas.iter().zip(fits) {
        let (v, cv, vs) = r?;
        val_aucs.push((a, v));
        if let Some(c) = cv {
            cv_aucs.push((a, c));
        }
        let crit = if by_cv {
            cv.expect("run when chosen by")
        } else {
            v
        };
        if best.is_none_or(|(_, _, bc, _)| crit > bc) {
            best = Some((a, v, crit, cv));
            best_val_scores = vs.clone();
        }
        grid.push(GridFit {
            cv_auc: cv,
            val_scores: vs,
        });
    }
    let (alpha, val_auc, _, cv_auc) = best.expect("alphas is non-empty");
    let w = if cfg.refit_on_train_val {
        let x = ndarray::concatenate(ndarray::Axis(0), &[ztr.view(), zva.view()])
            .map_err(|e| Error::Eval(e.to_string()))?;
        let y: Vec<u8> = ytrain.iter().chain(yval).copied().collect();
        fit(&x, &y, alpha, cfg.max_iterations)?
    } else {
        fit(&ztr, ytrain, alpha, cfg.max_iterations)?
    };
    let test_scores = score(&zte, &w);
    let model = LinearScorer {
        mu: mu.clone(),
        sd: sd.clone(),
        w: w.clone(),
    };
    // No test images (tuning on validation alone): nothing to score.
    let test_auc = if ytest.is_empty() {
        f64::NAN
    } else {
        auc(&test_scores, ytest)?
    };
    Ok(ProbeResult {
        val_aucs,
        cv_aucs,
        alpha,
        val_auc,
        cv_auc,
        selected_by: cfg.selection,
        test_auc,
        n_test: ytest.len(),
        n_test_pos: ytest.iter().filter(|&&l| l == 1).count(),
        test_scores,
        val_scores: best_val_scores,
        view: ProbeView::default(),
        view_aucs: Vec::new(),
        view_cv_aucs: Vec::new(),
        selection_check: None,
        grid,
        external_scores: Vec::new(),
        model: Some(model),
    })
}

/// [`fit_probe`] on each view's features (training rows `sub` of each), and
/// the result of the view chosen as the penalty is (its validation AUC, or
/// its cross-validated AUC under `selection = "cv"`; ties: the first).
pub fn fit_probe_views(
    views: &[ViewFeatures],
    sub: &[usize],
    ytrain: &[u8],
    yval: &[u8],
    ytest: &[u8],
    cfg: &ProbeConfig,
) -> Result<ProbeResult> {
    let by_cv = cfg.selection == ProbeSelection::Cv;
    let crit = |r: &ProbeResult| {
        if by_cv {
            r.cv_auc.expect("cv run")
        } else {
            r.val_auc
        }
    };
    let mut best: Option<ProbeResult> = None;
    let mut view_aucs = Vec::new();
    let mut view_cv_aucs = Vec::new();
    let mut grids = Vec::new();
    let mut best_ext: &[Array2<f64>] = &[];
    for (view, [ftr, fva, fte], ext) in views {
        let ftr = ftr.select(ndarray::Axis(0), sub);
        let mut r = fit_probe(&ftr, ytrain, fva, yval, fte, ytest, cfg)?;
        r.view = view.clone();
        view_aucs.push((view.clone(), r.val_auc));
        if let Some(c) = r.cv_auc {
            view_cv_aucs.push((view.clone(), c));
        }
        grids.extend(std::mem::take(&mut r.grid));
        if best.as_ref().is_none_or(|b| crit(&r) > crit(b)) {
            best = Some(r);
            best_ext = ext;
        }
    }
    let mut r = best.ok_or_else(|| Error::Eval("probe: no feature view".into()))?;
    let m = r.model.as_ref().expect("fit_probe keeps its model");
    r.external_scores = best_ext.iter().map(|x| m.score(x)).collect();
    if views.len() > 1 {
        r.view_aucs = view_aucs;
        r.view_cv_aucs = view_cv_aucs;
    }
    if ytest.is_empty() && grids.iter().all(|g| g.cv_auc.is_some()) {
        r.selection_check = selection_check(&grids, yval, SELECTION_CHECK_DRAWS)?;
        if let Some(c) = &r.selection_check {
            tracing::info!(
                "selection rules on validation ({} draws of {} images, {} positive, choosing; the other {} scoring): \
                 the validation rule's choice {:.4}, cross-validation's {:.4}, difference {:+.4} [{:+.4}, {:+.4}], \
                 cross-validation at least as good in {:.0} % of draws",
                c.draws,
                c.select_n,
                c.select_pos,
                c.held_out_n,
                c.val_rule_auc,
                c.cv_rule_auc,
                c.mean_gain,
                c.gain_p2_5,
                c.gain_p97_5,
                100.0 * c.cv_at_least_as_good
            );
        }
    }
    Ok(r)
}

/// k-NN scores: for each query row, the similarity-weighted share of
/// positives among its `k` nearest training rows by cosine similarity of the
/// standardised features (weights exp(cos / 0.1)).
pub fn knn_scores(ftrain: &Array2<f64>, ytrain: &[u8], fquery: &Array2<f64>, k: usize) -> Vec<f64> {
    let (mu, sd) = standardizer(ftrain);
    let unit = |x: &Array2<f64>| {
        let mut z = (x - &mu) / &sd;
        for mut row in z.rows_mut() {
            let n = row.dot(&row).sqrt().max(1e-12);
            row /= n;
        }
        z
    };
    let (zt, zq) = (unit(ftrain), unit(fquery));
    let sims = zq.dot(&zt.t());
    let k = k.min(ytrain.len()).max(1);
    sims.rows()
        .into_iter()
        .map(|row| {
            let mut idx: Vec<usize> = (0..row.len()).collect();
            idx.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
            let (mut num, mut den) = (0.0, 0.0);
            for &i in &idx[..k] {
                let w = (row[i] / 0.1).exp();
                num += w * ytrain[i] as f64;
                den += w;
            }
            num / den
        })
        .collect()
}

/// Frozen pooled features of train, val and test for each of
/// `probe.views`, after recomputing the BatchNorm statistics on the
/// training images at the view's size when `probe.recompute_bn`.
pub fn frozen_features(
    vm: &VarMap,
    encoder: &ResNet,
    prefix: &str,
    cfg: &Config,
    train: &[&RgbImage],
    val: &[&RgbImage],
    test: &[&RgbImage],
    external: &[Vec<&RgbImage>],
) -> Result<Vec<ViewFeatures>> {
    let bs = cfg.train.batch_size.max(2);
    let mut out = Vec::new();
    let mut stats_at = None;
    for v in &cfg.probe.views {
        let view = v.resolved(cfg.pretext.crop);
        if cfg.probe.recompute_bn && stats_at != Some(view.crop) {
            recompute_bn(vm, encoder.config(), prefix, train, view.crop, bs)?;
            stats_at = Some(view.crop);
        }
        let sets = [
            features(encoder, train, &view, bs)?,
            features(encoder, val, &view, bs)?,
            features(encoder, test, &view, bs)?,
        ];
        let ext = external
            .iter()
            .map(|e| features(encoder, e, &view, bs))
            .collect::<Result<_>>()?;
        out.push((view, sets, ext));
    }
    Ok(out)
}

/// The whole probe for the encoder under `prefix` in `vm`: optional BatchNorm
/// recompute, features of each view, fit, choice on validation, score.
pub fn run_probe(
    vm: &VarMap,
    encoder: &ResNet,
    prefix: &str,
    cfg: &Config,
    data: &ProbeData,
) -> Result<ProbeResult> {
    let views = frozen_features(
        vm,
        encoder,
        prefix,
        cfg,
        &data.train.0,
        &data.val.0,
        &data.test.0,
        &[],
    )?;
    let all: Vec<usize> = (0..data.train.1.len()).collect();
    fit_probe_views(
        &views,
        &all,
        &data.train.1,
        &data.val.1,
        &data.test.1,
        &cfg.probe,
    )
}
