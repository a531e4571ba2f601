//! Running a protocol's runs: each (arm, init, fraction, seed) not saved yet
//! under its key, with a lock so that processes sharing the results folder
//! (cluster shards) never compute one twice; frozen features computed once
//! per encoder and view and shared by the arms, fractions and seeds.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::key::{ArmResult, RESULT_VERSION, RunKey, RunOutcome, result_file_name, saved_result};
use super::{Arm, ArmKind, Protocol, label_subset};
use crate::config::Config;
use crate::data::{Dataset, RgbImage, Split};
use crate::error::{Error, Result, io};
use crate::eval::{gradcam, probe};
use crate::io::write_atomic;
use crate::train::finetune::{self, Init, Labeled};

mod frozen;
mod lock;
use lock::RunLock;

/// One (arm, init, fraction, seed) of a protocol, with the config it runs with.
pub struct RunSpec<'p> {
    pub arm: &'p Arm,
    pub init: String,
    pub fraction: f64,
    pub seed: u64,
    pub cfg: Config,
}

impl Protocol {
    /// Every run of the protocol, in order (arm, init, fraction, seed).
    pub fn runs(&self, cfg: &Config) -> Result<Vec<RunSpec<'_>>> {
        let mut out = Vec::new();
        for arm in &self.arms {
            let acfg = self.arm_config(arm, cfg).map_err(Error::Config)?;
            for init in &arm.inits {
                for &fraction in arm
                    .label_fractions
                    .as_ref()
                    .unwrap_or(&self.label_fractions)
                {
                    for &seed in arm.seeds.as_ref().unwrap_or(&self.seeds) {
                        out.push(RunSpec {
                            arm,
                            init: init.clone(),
                            fraction,
                            seed,
                            cfg: acfg.clone(),
                        });
                    }
                }
            }
        }
        Ok(out)
    }
}

/// Everything needed to run arms on one data set.
pub struct Runner<'a> {
    pub cfg: &'a Config,
    pub ds: &'a Dataset,
    pub imgs: &'a [RgbImage],
    /// Folder of the finished results.
    pub results_dir: PathBuf,
    /// The PIRL checkpoint (for init `pirl`).
    pub pirl_checkpoint: Option<PathBuf>,
    /// Folder the protocol file is in (for `weights:` paths).
    pub protocol_dir: PathBuf,
    /// The external test sets, loaded.
    pub external: &'a [crate::data::external::External],
}

/// A frozen-feature arm's result, shared by the runs whose key differs only
/// in the seed and whose label subset is the same (at 100 % of the labels
/// every seed gets the same one).
type Fitted = Scored;

/// What the runs of one `run` call share: frozen features per (encoder,
/// view, init), computed once for every arm, fraction and seed; probe fits
/// per (key without its seed, label subset); and t-SNE maps of the test
/// features per (encoder, view), which do not depend on the label subset.
#[derive(Default)]
struct Shared {
    feats: BTreeMap<String, Vec<probe::ViewFeatures>>,
    fitted: BTreeMap<(String, Vec<usize>), Fitted>,
    maps: BTreeMap<String, Vec<(f64, f64)>>,
}

/// What one run measured, before it becomes an [`ArmResult`].
#[derive(Debug, Clone, Default)]
struct Scored {
    val_auc: f64,
    test_auc: f64,
    val_scores: Vec<f64>,
    test_scores: Vec<f64>,
    detail: String,
    /// Fine-tuning: validation AUC and training loss per epoch.
    val_curve: Vec<f64>,
    train_losses: Vec<f64>,
    /// Scores of each external set, in the runner's order.
    external: Vec<Vec<f64>>,
    /// Linear probe: the test features on their first two principal
    /// components, and as a t-SNE map.
    embedding: Vec<(f64, f64)>,
    tsne: Vec<(f64, f64)>,
    /// Fine-tuning: Grad-CAM of test images by the selected model.
    gradcam: Option<gradcam::GradCams>,
    /// Fine-tuning: an ensemble's members.
    members: Vec<finetune::Member>,
}

impl Runner<'_> {
    fn init(&self, s: &str) -> Result<Init> {
        Ok(match s {
            "random" => Init::Random,
            "pirl" => {
                Init::Checkpoint(self.pirl_checkpoint.clone().ok_or_else(|| {
                    Error::Config("init pirl needs a pretrained checkpoint".into())
                })?)
            }
            w => Init::Torchvision(self.protocol_dir.join(w.trim_start_matches("weights:"))),
        })
    }

    /// The settings a run's key holds: those its kind reads and, for a
    /// fine-tune with an auxiliary target, the hash of the auxiliary labels
    /// (which the data set's fingerprint leaves out).
    fn settings(&self, r: &RunSpec) -> serde_json::Value {
        let mut v = RunKey::settings(r.arm.kind, &r.cfg, r.arm.k);
        if r.arm.kind == ArmKind::Finetune && r.cfg.finetune.aux_weight > 0.0 {
            v.as_object_mut()
                .expect("settings are an object")
                .insert("aux_sha256".into(), self.ds.aux_sha256().into());
        }
        v
    }

    /// SHA-256 of the weights an init loads (`None` for random init).
    fn init_hash(&self, s: &str) -> Result<Option<String>> {
        let path = match self.init(s)? {
            Init::Random => return Ok(None),
            Init::Checkpoint(dir) => dir.join(crate::train::checkpoint::MODEL_FILE),
            Init::Torchvision(p) => p,
        };
        Ok(Some(crate::data::fingerprint::file_sha256(&path)?))
    }

    fn split(&self, s: Split) -> (Vec<&RgbImage>, Vec<u8>) {
        let idx = self.ds.indices(s);
        (
            idx.iter().map(|&i| &self.imgs[i]).collect(),
            idx.iter()
                .map(|&i| self.ds.samples[i].label.unwrap_or(0))
                .collect(),
        )
    }

    /// The key of every run of `p`, in [`Protocol::runs`] order.
    pub fn keys(
        &self,
        p: &Protocol,
        data: &crate::data::fingerprint::Fingerprint,
    ) -> Result<Vec<RunKey>> {
        let mut init_hashes: BTreeMap<String, Option<String>> = BTreeMap::new();
        p.runs(self.cfg)?
            .iter()
            .map(|r| {
                if !init_hashes.contains_key(&r.init) {
                    init_hashes.insert(r.init.clone(), self.init_hash(&r.init)?);
                }
                Ok(RunKey {
                    result_version: RESULT_VERSION,
                    kind: r.arm.kind,
                    init: r.init.clone(),
                    init_sha256: init_hashes[&r.init].clone(),
                    data_sha256: data.sha256_all.clone(),
                    split_sha256: data.split_sha256.clone(),
                    fraction: r.fraction,
                    seed: r.seed,
                    settings: self.settings(r),
                    external: self
                        .external
                        .iter()
                        .map(|e| (e.name.clone(), e.sha256.clone()))
                        .collect(),
                })
            })
            .collect()
    }

    /// Runs every (arm, init, fraction, seed) that `select` picks (by its
    /// index in protocol order) and whose result under its current key is
    /// not saved yet, nor being computed by another process; says for each
    /// run what became of it.
    pub fn run(
        &self,
        p: &Protocol,
        data: &crate::data::fingerprint::Fingerprint,
        select: &dyn Fn(usize) -> bool,
    ) -> Result<Vec<RunOutcome>> {
        std::fs::create_dir_all(&self.results_dir).map_err(io(&self.results_dir))?;
        let specs = p.runs(self.cfg)?;
        let keys = self.keys(p, data)?;
        let (_, tr_y) = self.split(Split::Train);
        let mut shared = Shared::default();
        let mut outcomes = Vec::new();
        for (i, (spec, key)) in specs.iter().zip(&keys).enumerate() {
            let hash = key.hash();
            let path = self.results_dir.join(result_file_name(
                &spec.arm.name,
                &spec.init,
                spec.fraction,
                spec.seed,
                &hash,
            ));
            if !select(i) {
                outcomes.push(RunOutcome::OtherShard);
                continue;
            }
            let _lock = match self.claim(spec, &path, &hash)? {
                Ok(lock) => lock,
                Err(outcome) => {
                    outcomes.push(outcome);
                    continue;
                }
            };
            let t = std::time::Instant::now();
            let sub = label_subset(&tr_y, spec.fraction, spec.seed);
            let sc = self.score(p, spec, key, &sub, &path, &mut shared)?;
            let sub_y: Vec<u8> = sub.iter().map(|&i| tr_y[i]).collect();
            self.save(spec, hash, &sub_y, sc, t.elapsed().as_secs_f64(), &path)?;
            outcomes.push(RunOutcome::Computed);
        }
        Ok(outcomes)
    }

    /// The lock of a run that is to be computed now, or what became of it
    /// instead: saved already (by an earlier run or, while we looked, by
    /// another process) or held by another process. A stop request ends
    /// the protocol here, between runs.
    fn claim(
        &self,
        spec: &RunSpec,
        path: &Path,
        hash: &str,
    ) -> Result<std::result::Result<RunLock, RunOutcome>> {
        if saved_result(path, hash).is_some() {
            return Ok(Err(RunOutcome::Reused));
        }
        if crate::train::pretrain::STOP.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(Error::Stopped(format!(
                "the finished runs are saved in {}",
                self.results_dir.display()
            )));
        }
        let lock = match RunLock::take(&path.with_extension("lock"))? {
            Ok(l) => l,
            Err(holder) => {
                tracing::info!(
                    "{} / {} / {} / seed {}: held by {holder}, skipped",
                    spec.arm.name,
                    spec.init,
                    spec.fraction,
                    spec.seed
                );
                return Ok(Err(RunOutcome::HeldElsewhere(holder)));
            }
        };
        // Another process may have finished it while we looked.
        if saved_result(path, hash).is_some() {
            return Ok(Err(RunOutcome::Reused));
        }
        Ok(Ok(lock))
    }

    /// Computes one run on the training subset `sub`: a probe or k-NN (its
    /// fit shared by the runs whose key differs only in the seed), or a
    /// fine-tune, checkpointed beside the result file `path`.
    fn score(
        &self,
        p: &Protocol,
        spec: &RunSpec,
        key: &RunKey,
        sub: &[usize],
        path: &Path,
        shared: &mut Shared,
    ) -> Result<Scored> {
        match spec.arm.kind {
            ArmKind::Finetune => {}
            ArmKind::LinearProbe | ArmKind::Knn => {
                // The key without its seed: runs that share it and the
                // label subset share the fit.
                let mut k = key.clone();
                k.seed = 0;
                let fit_key = (k.hash(), sub.to_vec());
                if let Some(r) = shared.fitted.get(&fit_key) {
                    return Ok(r.clone());
                }
                let r = self.frozen_arm(spec, sub, &mut shared.feats, &mut shared.maps)?;
                shared.fitted.insert(fit_key, r.clone());
                return Ok(r);
            }
        }
        let ckpt = path.with_extension("ckpt");
        let r = self.finetune_arm(spec, sub, (&ckpt, &key.hash()))?;
        let gradcam = if explained(p, spec) {
            self.gradcam(&r)?
        } else {
            None
        };
        Ok(Scored {
            val_auc: r.val_auc,
            test_auc: r.test_auc,
            detail: r.selection_summary(),
            val_scores: r.val_scores,
            test_scores: r.test_scores,
            val_curve: r.val_curve,
            train_losses: r.train_losses,
            external: r.external_scores,
            embedding: Vec::new(),
            tsne: Vec::new(),
            gradcam,
            members: r.members,
        })
    }

    /// Saves a computed run as its result file `path` (atomically), logs
    /// it, and removes its fine-tuning checkpoint; `sub_y` are the labels it
    /// was trained on.
    fn save(
        &self,
        spec: &RunSpec,
        hash: String,
        sub_y: &[u8],
        sc: Scored,
        seconds: f64,
        path: &Path,
    ) -> Result<()> {
        let r = ArmResult {
            arm: spec.arm.name.clone(),
            kind: spec.arm.kind,
            init: spec.init.clone(),
            fraction: spec.fraction,
            seed: spec.seed,
            key: hash,
            n_train: sub_y.len(),
            n_train_pos: sub_y.iter().filter(|&&y| y == 1).count(),
            val_auc: sc.val_auc,
            test_auc: sc.test_auc,
            test_scores: sc.test_scores,
            val_scores: sc.val_scores,
            detail: sc.detail,
            val_curve: sc.val_curve,
            train_losses: sc.train_losses,
            external_scores: self
                .external
                .iter()
                .map(|e| e.name.clone())
                .zip(sc.external)
                .collect(),
            test_embedding: sc.embedding,
            test_tsne: sc.tsne,
            gradcam: sc.gradcam,
            members: sc.members,
            seconds,
            computed_by: crate::runner::invocation_id().to_string(),
            computed_now: true,
        };
        tracing::info!(
            "{} / {} / {:.0} % labels / seed {}: val AUC {:.4}, test AUC {:.4} ({}, {:.0} s)",
            r.arm,
            r.init,
            spec.fraction * 100.0,
            spec.seed,
            r.val_auc,
            r.test_auc,
            r.detail,
            r.seconds
        );
        let j = serde_json::to_vec(&r).map_err(|e| Error::Report(e.to_string()))?;
        write_atomic(path, &j)?;
        let ckpt = path.with_extension("ckpt");
        if ckpt.exists() {
            let _ = std::fs::remove_dir_all(&ckpt);
        }
        Ok(())
    }

    /// Fine-tuning on the training subset `sub`, checkpointed in `ckpt`.
    fn finetune_arm(
        &self,
        spec: &RunSpec,
        sub: &[usize],
        ckpt: (&Path, &str),
    ) -> Result<finetune::FinetuneResult> {
        let (tr_i, tr_y) = self.split(Split::Train);
        let (va_i, va_y) = self.split(Split::Val);
        let (te_i, te_y) = self.split(Split::Test);
        let train = Labeled {
            images: sub.iter().map(|&i| tr_i[i]).collect(),
            labels: sub.iter().map(|&i| tr_y[i]).collect(),
            aux: self
                .ds
                .aux_labels(Split::Train)
                .map(|a| sub.iter().map(|&i| a[i]).collect()),
        };
        let val = Labeled {
            images: va_i,
            labels: va_y,
            aux: None,
        };
        let test = Labeled {
            images: te_i,
            labels: te_y,
            aux: None,
        };
        let external = self.external_images();
        let data = finetune::Splits {
            train: &train,
            val: &val,
            test: Some(&test),
            external: &external,
        };
        finetune::finetune(
            &spec.cfg,
            &self.init(&spec.init)?,
            data,
            spec.seed,
            Some(ckpt),
        )
    }

    /// Grad-CAM of a fine-tuned run's selected model on the test split:
    /// the most confident true positives and the missed positives at the
    /// Youden threshold picked on validation.
    fn gradcam(&self, r: &finetune::FinetuneResult) -> Result<Option<gradcam::GradCams>> {
        let Some(m) = &r.model else {
            return Ok(None);
        };
        let (te_i, te_y) = self.split(Split::Test);
        let (_, va_y) = self.split(Split::Val);
        let ids: Vec<String> = self
            .ds
            .indices(Split::Test)
            .iter()
            .map(|&i| self.ds.samples[i].id.clone())
            .collect();
        let threshold = crate::eval::youden_threshold(&r.val_scores, &va_y)?;
        let test = gradcam::TestImages {
            images: &te_i,
            ids: &ids,
            labels: &te_y,
            scores: &r.test_scores,
        };
        Ok(Some(gradcam::explain(
            &m.encoder, &m.head, m.view, &test, threshold,
        )?))
    }

    /// Each external set's images, in order.
    fn external_images(&self) -> Vec<Vec<&RgbImage>> {
        self.external
            .iter()
            .map(|e| e.imgs.iter().collect())
            .collect()
    }
}

/// Whether a run's model is explained with Grad-CAM: a fine-tuning run at
/// its arm's largest label fraction and first (smallest) seed, once per
/// init.
fn explained(p: &Protocol, spec: &RunSpec) -> bool {
    let fractions = spec
        .arm
        .label_fractions
        .as_ref()
        .unwrap_or(&p.label_fractions);
    let seeds = spec.arm.seeds.as_ref().unwrap_or(&p.seeds);
    let largest = fractions.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    spec.arm.kind == ArmKind::Finetune
        && spec.fraction == largest
        && seeds.iter().min() == Some(&spec.seed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::Sample;

    fn dataset(dir: &Path, aux_of_first: u8) -> Dataset {
        let samples = (0..6)
            .map(|i| Sample {
                id: format!("im{i}"),
                path: dir.join(format!("im{i}.png")),
                label: Some((i % 2) as u8),
                aux: Some(if i == 0 {
                    aux_of_first
                } else {
                    (i % 3 == 0) as u8
                }),
                split: [Split::Train, Split::Val, Split::Test][i / 2],
                group: format!("im{i}"),
            })
            .collect();
        Dataset {
            name: "t".into(),
            root: ".".into(),
            samples,
            splits_assigned: false,
        }
    }

    #[test]
    fn only_a_fine_tune_with_an_auxiliary_target_is_keyed_by_its_labels() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.toml");
        std::fs::write(
            &path,
            r#"
name = "t"
preset = "tiny"
seeds = [0]
label_fractions = [1.0]
[[arms]]
name = "plain"
kind = "finetune"
inits = ["random"]
[[arms]]
name = "aux"
kind = "finetune"
inits = ["random"]
[arms.finetune]
aux_weight = 0.5
"#,
        )
        .unwrap();
        let (p, cfg) = Protocol::from_file(&path).unwrap();
        let keys = |ds: &Dataset| -> Vec<String> {
            let runner = Runner {
                cfg: &cfg,
                ds,
                imgs: &[],
                results_dir: dir.path().join("runs"),
                pirl_checkpoint: None,
                protocol_dir: dir.path().into(),
                external: &[],
            };
            let fp = crate::data::fingerprint::fingerprint(ds).unwrap();
            let k = runner.keys(&p, &fp).unwrap();
            k.iter().map(RunKey::hash).collect()
        };
        for i in 0..6 {
            std::fs::write(dir.path().join(format!("im{i}.png")), [i as u8]).unwrap();
        }
        let (a, b) = (keys(&dataset(dir.path(), 0)), keys(&dataset(dir.path(), 1)));
        assert_eq!(a.len(), 2);
        assert_eq!(
            a[0], b[0],
            "a plain fine-tune's key moved with the auxiliary labels"
        );
        assert_ne!(
            a[1], b[1],
            "a changed auxiliary label kept the auxiliary arm's key"
        );
    }
}
