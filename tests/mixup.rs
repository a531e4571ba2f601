//! Mixup in fine-tuning (`finetune.mixup`): the Beta sampler it draws from,
//! that a mixup run is reproducible and trains differently from one
//! without, and that the setting stays out of run keys while it is off.

mod common;

use pirlkit::train::finetune::{Init, Labeled, Splits, finetune};

fn moments(xs: &[f64]) -> (f64, f64) {
    let n = xs.len() as f64;
    let m = xs.iter().sum::<f64>() / n;
    (m, xs.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / n)
}

#[test]
fn beta_and_gamma_samples_have_their_moments() {
    let mut rng = pirlkit::rng::stream(3, "beta-test", 0, 0);
    // Beta(a, b): mean a/(a+b), variance ab/((a+b)^2 (a+b+1)).
    for (a, b) in [(0.4, 0.4), (1.0, 1.0), (2.0, 5.0)] {
        let xs: Vec<f64> = (0..40_000)
            .map(|_| pirlkit::rng::beta(a, b, &mut rng))
            .collect();
        assert!(
            xs.iter().all(|x| (0.0..=1.0).contains(x)),
            "Beta({a}, {b}) left [0, 1]"
        );
        let (m, v) = moments(&xs);
        let (em, ev) = (a / (a + b), a * b / ((a + b) * (a + b) * (a + b + 1.0)));
        assert!(
            (m - em).abs() < 0.01,
            "Beta({a}, {b}) mean {m}, expected {em}"
        );
        assert!(
            (v - ev).abs() < 0.01 * ev.max(0.1),
            "Beta({a}, {b}) variance {v}, expected {ev}"
        );
    }
    // Gamma(k, 1): mean and variance k, below and above shape 1.
    for k in [0.3, 2.5] {
        let xs: Vec<f64> = (0..40_000)
            .map(|_| pirlkit::rng::gamma(k, &mut rng))
            .collect();
        let (m, v) = moments(&xs);
        assert!((m - k).abs() < 0.03 * k.max(1.0), "Gamma({k}) mean {m}");
        assert!((v - k).abs() < 0.08 * k.max(1.0), "Gamma({k}) variance {v}");
    }
}

use common::labelled_lesions as images;

#[test]
fn mixup_runs_are_reproducible_and_differ_from_plain_ones() {
    let mut cfg = pirlkit::Config::preset(pirlkit::Preset::Tiny);
    cfg.finetune.epochs = 2;
    cfg.finetune.batch_size = 8;
    let (tr, ty) = images(32, 1);
    let (va, vy) = images(16, 2);
    let train = Labeled {
        images: tr.iter().collect(),
        labels: ty,
        aux: None,
    };
    let val = Labeled {
        images: va.iter().collect(),
        labels: vy,
        aux: None,
    };
    let run = |cfg: &pirlkit::Config| {
        finetune(cfg, &Init::Random, Splits::new(&train, &val, None), 0, None)
            .unwrap()
            .train_losses
    };
    let plain = run(&cfg);
    cfg.finetune.mixup = 0.4;
    let a = run(&cfg);
    let b = run(&cfg);
    assert_eq!(a, b, "the same seed gave different mixup runs");
    assert!(a.iter().all(|l| l.is_finite()));
    assert_ne!(a, plain, "mixup changed nothing");
}

#[test]
fn mixup_is_keyed_only_when_on_and_checked() {
    common::keyed_only_when_on(
        "mixup",
        |ft| {
            ft.mixup = 0.4;
            0.4.into()
        },
        |ft| ft.mixup = -1.0,
    );
}
