//! The fused in-place CPU optimiser step against the tensor-op reference
//! (the path a GPU takes), for SGD with momentum and AdamW, with and without
//! weight decay; and its state through a checkpoint round trip.

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use pirlkit::ops::with_reference_ops;
use pirlkit::optim::{OptimConfig, Optimizer, OptimizerKind};

/// A decayed matrix and an undecayed bias with a quadratic loss; returns the
/// parameters after `steps` updates.
fn train(kind: OptimizerKind, steps: usize, reload_at: Option<usize>) -> Vec<f32> {
    let vm = VarMap::new();
    let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
    let lin = candle_nn::linear(37, 5, vb.pp("lin")).unwrap();
    pirlkit::model::seeded_init(&vm, 3).unwrap();
    let cfg = OptimConfig {
        kind,
        lr: 0.05,
        weight_decay: 0.01,
        ..Default::default()
    };
    let mut opt = Optimizer::new(&vm, &cfg, &[]).unwrap();
    let x = Tensor::from_vec(
        (0..4 * 37)
            .map(|i| ((i * 31 % 17) as f32 - 8.0) / 8.0)
            .collect::<Vec<_>>(),
        (4, 37),
        &Device::Cpu,
    )
    .unwrap();
    for s in 0..steps {
        if reload_at == Some(s) {
            let saved = opt.state_tensors().unwrap();
            opt = Optimizer::new(&vm, &cfg, &[]).unwrap();
            opt.load_state(&saved).unwrap();
        }
        let y = candle_core::Module::forward(&lin, &x).unwrap();
        let loss = (y - 0.3).unwrap().sqr().unwrap().mean_all().unwrap();
        let g = loss.backward().unwrap();
        assert!(opt.grad_sq_norm(&g).unwrap() > 0.0);
        opt.step(&g, 0.05).unwrap();
    }
    let mut out = lin
        .weight()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    out.extend(lin.bias().unwrap().to_vec1::<f32>().unwrap());
    out
}

fn max_rel(a: &[f32], b: &[f32]) -> f32 {
    let scale = a.iter().fold(0f32, |m, v| m.max(v.abs()));
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

#[test]
fn fused_updates_match_the_tensor_reference() {
    for kind in [OptimizerKind::Sgd, OptimizerKind::Adamw] {
        let start = train(kind, 0, None);
        let fused = train(kind, 6, None);
        let reference = with_reference_ops(|| train(kind, 6, None));
        assert!(max_rel(&start, &fused) > 1e-3, "{kind:?}: nothing moved");
        assert!(
            max_rel(&fused, &reference) < 1e-5,
            "{kind:?}: {}",
            max_rel(&fused, &reference)
        );
    }
}

#[test]
fn optimizer_state_survives_a_save_and_load() {
    for kind in [OptimizerKind::Sgd, OptimizerKind::Adamw] {
        let straight = train(kind, 6, None);
        let reloaded = train(kind, 6, Some(3));
        assert_eq!(straight, reloaded, "{kind:?}");
    }
}
