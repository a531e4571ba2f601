//! The frozen-feature arms (linear probe, k-NN): features per encoder and
//! view computed once and shared by every arm, fraction and seed, the fit
//! on a label subset, and the t-SNE map of the test features.

use std::collections::BTreeMap;

use super::{Fitted, RunSpec, Runner, Scored};
use crate::config::Config;
use crate::data::{RgbImage, Split};
use crate::error::Result;
use crate::eval::{probe, tsne};
use crate::protocol::ArmKind;
use crate::train::finetune::{self, Init};

impl Runner<'_> {
    /// A linear probe or k-NN on frozen features of the training subset `sub`.
    pub(super) fn frozen_arm(
        &self,
        spec: &RunSpec,
        sub: &[usize],
        feats: &mut BTreeMap<String, Vec<probe::ViewFeatures>>,
        maps: &mut BTreeMap<String, Vec<(f64, f64)>>,
    ) -> Result<Fitted> {
        let acfg = &spec.cfg;
        // A k-NN arm reads the first view only.
        let views = if spec.arm.kind == ArmKind::Knn {
            &acfg.probe.views[..1]
        } else {
            &acfg.probe.views[..]
        };
        let feat_key = format!(
            "{}|{}|{}|{}|{}|{}",
            serde_json::to_string(&acfg.model).unwrap_or_default(),
            acfg.pretext.crop,
            serde_json::to_string(views).unwrap_or_default(),
            acfg.probe.recompute_bn,
            acfg.train.batch_size,
            spec.init
        );
        if !feats.contains_key(&feat_key) {
            let (tr_i, _) = self.split(Split::Train);
            let (va_i, _) = self.split(Split::Val);
            let (te_i, _) = self.split(Split::Test);
            let mut c = acfg.clone();
            c.probe.views = views.to_vec();
            feats.insert(
                feat_key.clone(),
                self.frozen_features(&c, &self.init(&spec.init)?, &tr_i, &va_i, &te_i)?,
            );
        }
        let (_, tr_y) = self.split(Split::Train);
        let (_, va_y) = self.split(Split::Val);
        let (_, te_y) = self.split(Split::Test);
        let sub_y: Vec<u8> = sub.iter().map(|&i| tr_y[i]).collect();
        let vf = &feats[&feat_key];
        if spec.arm.kind == ArmKind::LinearProbe {
            let r = probe::fit_probe_views(vf, sub, &sub_y, &va_y, &te_y, &acfg.probe)?;
            let detail = probe::describe_choice(&r, &acfg.probe);
            let chosen = vf.iter().find(|v| v.0 == r.view).unwrap_or(&vf[0]);
            let embedding = crate::eval::pca::project_2d(&chosen.1[0], &chosen.1[2]);
            let map_key = format!(
                "{feat_key}|{}",
                serde_json::to_string(&chosen.0).unwrap_or_default()
            );
            let tsne = match maps.get(&map_key) {
                Some(m) => m.clone(),
                None => {
                    let m = test_map(&chosen.1[0], &chosen.1[2], acfg.seed)?;
                    maps.insert(map_key, m.clone());
                    m
                }
            };
            Ok(Scored {
                val_auc: r.val_auc,
                test_auc: r.test_auc,
                val_scores: r.val_scores,
                test_scores: r.test_scores,
                detail,
                external: r.external_scores,
                embedding,
                tsne,
                ..Default::default()
            })
        } else {
            let [ftr, fva, fte] = &vf[0].1;
            let ftr_sub = ftr.select(ndarray::Axis(0), sub);
            let vs = probe::knn_scores(&ftr_sub, &sub_y, fva, spec.arm.k);
            let ts = probe::knn_scores(&ftr_sub, &sub_y, fte, spec.arm.k);
            Ok(Scored {
                val_auc: crate::eval::auc(&vs, &va_y)?,
                test_auc: crate::eval::auc(&ts, &te_y)?,
                val_scores: vs,
                test_scores: ts,
                detail: format!("k {}", spec.arm.k),
                external: vf[0]
                    .2
                    .iter()
                    .map(|x| probe::knn_scores(&ftr_sub, &sub_y, x, spec.arm.k))
                    .collect(),
                ..Default::default()
            })
        }
    }

    /// Frozen features (train, val, test) of the encoder from `init`, with
    /// BatchNorm statistics recomputed on the training images if configured.
    fn frozen_features(
        &self,
        cfg: &Config,
        init: &Init,
        tr: &[&RgbImage],
        va: &[&RgbImage],
        te: &[&RgbImage],
    ) -> Result<Vec<probe::ViewFeatures>> {
        let (vm, enc) = finetune::encoder_from(cfg, init)?;
        probe::frozen_features(
            &vm,
            &enc,
            "encoder",
            cfg,
            tr,
            va,
            te,
            &self.external_images(),
        )
    }
}

/// The t-SNE map of the test features (standardised by the training
/// features) at [`tsne::TsneParams::default`], seeded by the config's seed,
/// so that runs sharing a fit share their map; none for a test split of
/// fewer than [`tsne::MIN_POINTS`] images.
fn test_map(
    train: &ndarray::Array2<f64>,
    test: &ndarray::Array2<f64>,
    seed: u64,
) -> Result<Vec<(f64, f64)>> {
    if test.nrows() < tsne::MIN_POINTS {
        return Ok(Vec::new());
    }
    let t = std::time::Instant::now();
    let m = tsne::tsne_standardised(train, test, &tsne::TsneParams::default(), seed)?;
    tracing::debug!(
        "t-SNE of {} test features: KL {:.3} (start {:.3}), perplexity {}, {:.1} s",
        test.nrows(),
        m.kl_divergence,
        m.kl_start,
        m.perplexity,
        t.elapsed().as_secs_f64()
    );
    Ok(m.points)
}
