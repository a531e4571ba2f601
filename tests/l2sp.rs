//! L2-SP in fine-tuning (`finetune.l2sp`): the decoupled pull toward the
//! encoder's starting weights is the formula it claims, a run with it is
//! reproducible, trains otherwise than one without, resumes after a stop to
//! the same scores to the last bit (the anchor is rebuilt from the init, not
//! from the resumed weights), and the setting stays out of run keys while
//! it is off. Its own test binary: it uses the process-wide stop flag.

mod common;

use candle_core::{Device, Tensor, Var};
use pirlkit::train::finetune::l2sp_pull;

use common::{SmallFinetune, keyed_only_when_on};

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
    let ft = SmallFinetune::new();
    let mut cfg = ft.cfg.clone();
    let plain = ft.run(&cfg, None).unwrap();
    cfg.finetune.l2sp = 300.0;
    let a = ft.run(&cfg, None).unwrap();
    let b = ft.run(&cfg, None).unwrap();
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
    ft.stopped_after_one_epoch(&cfg, &ck);
    let resumed = ft.run(&cfg, Some(&ck)).unwrap();
    assert_eq!(bits(&resumed.train_losses), bits(&a.train_losses));
    assert_eq!(bits(&resumed.test_scores), bits(&a.test_scores));
}

#[test]
fn l2sp_is_keyed_only_when_on_and_checked() {
    keyed_only_when_on(
        "l2sp",
        |ft| {
            ft.l2sp = 10.0;
            10.0.into()
        },
        |ft| ft.l2sp = -1.0,
    );
}
