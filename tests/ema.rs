//! The moving average of the weights in fine-tuning (`finetune.ema`): a run
//! with it is reproducible, scores other weights than one without, resumes
//! after a stop to the same scores to the last bit, and the setting stays
//! out of run keys while it is off. Its own test binary: it uses the
//! process-wide stop flag.

mod common;

use std::sync::atomic::Ordering;

use pirlkit::data::RgbImage;
use pirlkit::train::finetune::{FinetuneResult, Init, Labeled, Splits, finetune};

use common::labelled_lesions as images;

fn bits(v: &[f64]) -> Vec<u64> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn ema_runs_are_reproducible_resumable_and_differ_from_plain_ones() {
    let mut cfg = pirlkit::Config::preset(pirlkit::Preset::Tiny);
    cfg.finetune.epochs = 3;
    cfg.finetune.batch_size = 8;
    cfg.finetune.selection = pirlkit::config::Selection::Last;
    let (tr, ty) = images(32, 1);
    let (va, vy) = images(24, 2);
    let (te, tey) = images(24, 3);
    fn lab(i: &[RgbImage], y: Vec<u8>) -> Labeled<'_> {
        Labeled {
            images: i.iter().collect(),
            labels: y,
            aux: None,
        }
    }
    let (train, val, test) = (lab(&tr, ty), lab(&va, vy), lab(&te, tey));
    let run = |cfg: &pirlkit::Config, ck: Option<&std::path::Path>| {
        finetune(
            cfg,
            &Init::Random,
            Splits {
                train: &train,
                val: &val,
                test: Some(&test),
                external: &[],
            },
            0,
            ck.map(|c| (c, "id")),
        )
    };
    let plain = run(&cfg, None).unwrap();
    cfg.finetune.ema = 0.9;
    let a: FinetuneResult = run(&cfg, None).unwrap();
    let b = run(&cfg, None).unwrap();
    assert_eq!(
        bits(&a.test_scores),
        bits(&b.test_scores),
        "same seed, other scores"
    );
    assert_eq!(bits(&a.val_curve), bits(&b.val_curve));
    // The same training (the average does not feed back), other weights scored.
    assert_eq!(bits(&a.train_losses), bits(&plain.train_losses));
    assert_ne!(
        bits(&a.test_scores),
        bits(&plain.test_scores),
        "the average scored nothing else"
    );

    // Stopped after its first epoch, then resumed: the same run.
    let tmp = tempfile::tempdir().unwrap();
    let ck = tmp.path().join("ft");
    pirlkit::train::pretrain::STOP.store(true, Ordering::SeqCst);
    let stopped = run(&cfg, Some(&ck));
    pirlkit::train::pretrain::STOP.store(false, Ordering::SeqCst);
    assert!(
        stopped.is_err(),
        "the stop flag ends the run after its first epoch"
    );
    let latest = std::fs::read_to_string(ck.join("latest")).unwrap();
    assert!(ck.join(latest.trim()).join("ema.safetensors").is_file());
    let resumed = run(&cfg, Some(&ck)).unwrap();
    assert_eq!(bits(&resumed.val_curve), bits(&a.val_curve));
    assert_eq!(bits(&resumed.test_scores), bits(&a.test_scores));
}

#[test]
fn ema_is_keyed_only_when_on_and_checked() {
    let mut ft = pirlkit::config::FinetuneConfig::default();
    let off = serde_json::to_value(&ft).unwrap();
    assert!(
        off.get("ema").is_none(),
        "ema = 0 changed the run keys: {off}"
    );
    ft.ema = 0.99;
    assert_eq!(serde_json::to_value(&ft).unwrap()["ema"], 0.99);
    ft.ema = 1.0;
    let e = ft.check().unwrap_err();
    assert!(e.contains("finetune.ema"), "{e}");
}
