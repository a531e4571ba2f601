//! The moving average of the weights in fine-tuning (`finetune.ema`): a run
//! with it is reproducible, scores other weights than one without, resumes
//! after a stop to the same scores to the last bit, and the setting stays
//! out of run keys while it is off. Its own test binary: it uses the
//! process-wide stop flag.

mod common;

use pirlkit::train::finetune::FinetuneResult;

use common::{SmallFinetune, keyed_only_when_on};

fn bits(v: &[f64]) -> Vec<u64> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn ema_runs_are_reproducible_resumable_and_differ_from_plain_ones() {
    let ft = SmallFinetune::new();
    let mut cfg = ft.cfg.clone();
    let plain = ft.run(&cfg, None).unwrap();
    cfg.finetune.ema = 0.9;
    let a: FinetuneResult = ft.run(&cfg, None).unwrap();
    let b = ft.run(&cfg, None).unwrap();
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
    ft.stopped_after_one_epoch(&cfg, &ck);
    let latest = std::fs::read_to_string(ck.join("latest")).unwrap();
    assert!(ck.join(latest.trim()).join("ema.safetensors").is_file());
    let resumed = ft.run(&cfg, Some(&ck)).unwrap();
    assert_eq!(bits(&resumed.val_curve), bits(&a.val_curve));
    assert_eq!(bits(&resumed.test_scores), bits(&a.test_scores));
}

#[test]
fn ema_is_keyed_only_when_on_and_checked() {
    keyed_only_when_on(
        "ema",
        |ft| {
            ft.ema = 0.99;
            0.99.into()
        },
        |ft| ft.ema = 1.0,
    );
}
