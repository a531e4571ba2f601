//! L2-SP in fine-tuning (`finetune.l2sp`): the decoupled pull toward the
//! encoder's starting weights is the formula it claims, a run with it is
//! reproducible, trains otherwise than one without, resumes after a stop to
//! the same scores to the last bit (the anchor is rebuilt from the init, not
//! from the resumed weights), and the setting stays out of run keys while
//! it is off. Its own test binary: it uses the process-wide stop flag.

mod common;

use std::sync::atomic::Ordering;

use candle_core::{Device, Tensor, Var};
use pirlkit::data::RgbImage;
use pirlkit::train::finetune::{Init, Labeled, Splits, finetune, l2sp_pull};

use common::labelled_lesions as images;

fn bits(v: &[f64]) -> Vec<u64> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn the_pull_moves_each_weight_by_its_factor_toward_the_anchor() {
    let dev = Device::Cpu;
    let w0 = Tensor::new(&[[0.5f32, -1.0], [2.0, 0.0]], &dev).unwrap();
    let w = Tensor::new(&[[1.5f32, -3.0], [2.0, 4.0]], &dev).unwrap();
    let v = Var::from_tensor(&w).unwrap();
    let anchor = vec![(v.clone(), w0.clone())];
    l2sp_pull(&anchor, 0.25).unwrap();
    let got = v.as_tensor().to_vec2::<f32>().unwrap();
    // w - 0.25 (w - w0): exact in binary.
    assert_eq!(got, vec![vec![1.25f32, -2.5], vec![2.0, 3.0]]);
    // A factor past 1 lands on the anchor, never beyond it.
    l2sp_pull(&anchor, 7.0).unwrap();
    assert_eq!(
        v.as_tensor().to_vec2::<f32>().unwrap(),
        w0.to_vec2::<f32>().unwrap()
    );
}

#[test]
fn l2sp_runs_are_reproducible_resumable_and_differ_from_plain_ones() {
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
    cfg.finetune.l2sp = 300.0;
    let a = run(&cfg, None).unwrap();
    let b = run(&cfg, None).unwrap();
    assert_eq!(
        bits(&a.test_scores),
        bits(&b.test_scores),
        "same seed, other scores"
    );
    assert_eq!(bits(&a.train_losses), bits(&b.train_losses));
    // The first step's loss is the same (the pull acts after it), the later
    // epochs train other weights.
    assert_ne!(
        bits(&a.train_losses[1..]),
        bits(&plain.train_losses[1..]),
        "the pull changed no training step"
    );
    assert_ne!(bits(&a.test_scores), bits(&plain.test_scores));

    // Stopped after its first epoch, then resumed: the same run, so the
    // anchor is the init's weights, not the resumed epoch's.
    let tmp = tempfile::tempdir().unwrap();
    let ck = tmp.path().join("ft");
    pirlkit::train::pretrain::STOP.store(true, Ordering::SeqCst);
    let stopped = run(&cfg, Some(&ck));
    pirlkit::train::pretrain::STOP.store(false, Ordering::SeqCst);
    assert!(
        stopped.is_err(),
        "the stop flag ends the run after its first epoch"
    );
    let resumed = run(&cfg, Some(&ck)).unwrap();
    assert_eq!(bits(&resumed.train_losses), bits(&a.train_losses));
    assert_eq!(bits(&resumed.test_scores), bits(&a.test_scores));
}

#[test]
fn l2sp_is_keyed_only_when_on_and_checked() {
    let mut ft = pirlkit::config::FinetuneConfig::default();
    let off = serde_json::to_value(&ft).unwrap();
    assert!(
        off.get("l2sp").is_none(),
        "l2sp = 0 changed the run keys: {off}"
    );
    ft.l2sp = 10.0;
    assert_eq!(serde_json::to_value(&ft).unwrap()["l2sp"], 10.0);
    ft.l2sp = -1.0;
    let e = ft.check().unwrap_err();
    assert!(e.contains("finetune.l2sp"), "{e}");
}
