//! A fine-tuning ensemble (`finetune.ensemble`): its scores are the mean of
//! its members' logits, its first member is the plain run, the others draw
//! their own seeds, an interrupted ensemble resumes at its member, and the
//! setting stays out of run keys while it is 1.

mod common;

use pirlkit::data::RgbImage;
use pirlkit::eval::auc;
use pirlkit::train::finetune::{FinetuneResult, Init, Labeled, Splits, finetune, member_seed};

use common::labelled_lesions as images;

fn tiny() -> pirlkit::Config {
    let mut cfg = pirlkit::Config::preset(pirlkit::Preset::Tiny);
    cfg.finetune.epochs = 2;
    cfg.finetune.batch_size = 8;
    cfg
}

struct Data {
    tr: Vec<RgbImage>,
    ty: Vec<u8>,
    va: Vec<RgbImage>,
    vy: Vec<u8>,
    te: Vec<RgbImage>,
    tey: Vec<u8>,
}

impl Data {
    fn new() -> Self {
        let (tr, ty) = images(32, 1);
        let (va, vy) = images(16, 2);
        let (te, tey) = images(16, 3);
        Self {
            tr,
            ty,
            va,
            vy,
            te,
            tey,
        }
    }

    fn run(
        &self,
        cfg: &pirlkit::Config,
        seed: u64,
        ckpt: Option<(&std::path::Path, &str)>,
    ) -> FinetuneResult {
        finetune(
            cfg,
            &Init::Random,
            Splits::new(
                &l(&self.tr, &self.ty),
                &l(&self.va, &self.vy),
                Some(&l(&self.te, &self.tey)),
            ),
            seed,
            ckpt,
        )
        .unwrap()
    }
}

fn l<'a>(i: &'a [RgbImage], y: &[u8]) -> Labeled<'a> {
    Labeled {
        images: i.iter().collect(),
        labels: y.to_vec(),
        aux: None,
    }
}

fn assert_mean(ens: &[f64], a: &[f64], b: &[f64]) {
    assert_eq!(ens.len(), a.len());
    for ((e, x), y) in ens.iter().zip(a).zip(b) {
        assert!(
            (e - (x + y) / 2.0).abs() < 1e-9,
            "{e} is not the mean of {x} and {y}"
        );
    }
}

#[test]
fn an_ensemble_scores_its_members_mean_and_its_first_member_is_the_plain_run() {
    let d = Data::new();
    let cfg = tiny();
    let plain = d.run(&cfg, 5, None);
    let second = d.run(&cfg, member_seed(5, 1), None);
    assert_ne!(member_seed(5, 1), 5);
    assert_ne!(
        plain.val_scores, second.val_scores,
        "the second member trained as the first"
    );

    let mut ecfg = cfg.clone();
    ecfg.finetune.ensemble = 2;
    let ens = d.run(&ecfg, 5, None);
    assert_eq!(ens.members.len(), 2);
    assert_eq!(ens.members[0].seed, 5);
    assert_eq!(ens.members[1].seed, member_seed(5, 1));
    assert_eq!(ens.members[0].val_auc, plain.val_auc);
    assert_eq!(ens.members[0].test_auc, plain.test_auc);
    assert_eq!(ens.members[1].val_auc, second.val_auc);
    // Each member keeps its own scores, for comparing with a single run.
    assert_eq!(ens.members[0].test_scores, plain.test_scores);
    assert_eq!(ens.members[1].val_scores, second.val_scores);
    assert_eq!(ens.best_epoch, plain.best_epoch);
    assert_eq!(ens.train_losses, plain.train_losses);

    assert_mean(&ens.val_scores, &plain.val_scores, &second.val_scores);
    assert_mean(&ens.test_scores, &plain.test_scores, &second.test_scores);
    assert_eq!(ens.val_auc, auc(&ens.val_scores, &d.vy).unwrap());
    assert_eq!(ens.test_auc, auc(&ens.test_scores, &d.tey).unwrap());
    assert!(
        ens.selection_summary().contains("ensemble of 2"),
        "{}",
        ens.selection_summary()
    );
    // Saved and read back with its members; a plain run saves none.
    let back: FinetuneResult = serde_json::from_slice(&serde_json::to_vec(&ens).unwrap()).unwrap();
    assert_eq!(back.members.len(), 2);
    assert!(
        serde_json::to_value(&plain)
            .unwrap()
            .get("members")
            .is_none()
    );
}

#[test]
fn an_interrupted_ensemble_resumes_at_its_member() {
    let d = Data::new();
    let mut cfg = tiny();
    cfg.finetune.ensemble = 2;
    let dir = tempfile::tempdir().unwrap();
    let ck = dir.path().join("checkpoint");
    let first = d.run(&cfg, 0, Some((&ck, "identity")));
    for m in ["member-1", "member-2"] {
        assert!(ck.join(m).join("latest").is_file(), "{m} was not saved");
    }
    // As if stopped before the second member saved anything: the first
    // member's finished state is read, not retrained, the second runs.
    let latest = ck.join("member-1").join("latest");
    let before = std::fs::metadata(&latest).unwrap().modified().unwrap();
    std::fs::remove_dir_all(ck.join("member-2")).unwrap();
    let resumed = d.run(&cfg, 0, Some((&ck, "identity")));
    assert_eq!(
        std::fs::metadata(&latest).unwrap().modified().unwrap(),
        before,
        "the finished first member was trained again"
    );
    assert_eq!(resumed.val_scores, first.val_scores);
    assert_eq!(resumed.test_scores, first.test_scores);
    // Another identity (changed settings) is refused, not continued.
    let e = finetune(
        &cfg,
        &Init::Random,
        Splits::new(&l(&d.tr, &d.ty), &l(&d.va, &d.vy), None),
        0,
        Some((&ck, "other settings")),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("other settings"), "{e}");
}

#[test]
fn the_ensemble_size_is_keyed_only_above_one_and_checked() {
    let mut ft = pirlkit::config::FinetuneConfig::default();
    assert_eq!(ft.ensemble, 1);
    let one = serde_json::to_value(&ft).unwrap();
    assert!(
        one.get("ensemble").is_none(),
        "ensemble = 1 changed the run keys: {one}"
    );
    ft.ensemble = 3;
    assert_eq!(serde_json::to_value(&ft).unwrap()["ensemble"], 3);
    ft.ensemble = 0;
    let e = ft.check().unwrap_err();
    assert!(e.contains("finetune.ensemble"), "{e}");
}
