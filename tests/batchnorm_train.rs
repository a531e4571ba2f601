//! Training-mode BatchNorm (+ ReLU), the fused CPU op, against candle's own
//! BatchNorm (the reference path) in f32: the output and the gradients of
//! `x`, `gamma` and `beta`. The shapes cover both ways the backward sums its
//! channels: planes under 16 values (a task per 16 channels) and planes of
//! 16 and more (blocks of 4 channels walked image by image), with channel
//! counts that leave a ragged last block. The op gives the same bits on 1
//! and 2 threads.

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use pirlkit::ops::{BatchNorm2d, with_reference_ops};

/// Deterministic pseudo-random values in [-0.5, 0.5).
fn seeded(len: usize, salt: usize) -> Vec<f32> {
    (0..len)
        .map(|i| (((i + salt * 131) * 7919) % 1000) as f32 / 1000.0 - 0.5)
        .collect()
}

/// `[y, dL/dx, dL/dgamma, dL/dbeta]` of `L = sum(relu?(bn(x)) * r)`.
fn grads(dims: [usize; 4], relu: bool) -> [Vec<f32>; 4] {
    let dev = Device::Cpu;
    let c = dims[1];
    let vm = VarMap::new();
    let bn =
        BatchNorm2d::new(c, 1e-5, 0.1, VarBuilder::from_varmap(&vm, DType::F32, &dev)).unwrap();
    let (gamma, beta) = {
        let data = vm.data().lock().unwrap();
        let (g, b) = (data["weight"].clone(), data["bias"].clone());
        let gv: Vec<f32> = seeded(c, 4).iter().map(|v| 1.0 + v).collect();
        g.set(&Tensor::from_vec(gv, c, &dev).unwrap()).unwrap();
        b.set(&Tensor::from_vec(seeded(c, 5), c, &dev).unwrap())
            .unwrap();
        (g, b)
    };
    let n: usize = dims.iter().product();
    let x = Var::from_tensor(&Tensor::from_vec(seeded(n, 1), &dims, &dev).unwrap()).unwrap();
    let r = Tensor::from_vec(seeded(n, 2), &dims, &dev).unwrap();
    let y = bn.forward_t(x.as_tensor(), true, relu).unwrap();
    let g = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
    let host = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    [
        host(&y),
        host(g.get(x.as_tensor()).unwrap()),
        host(g.get(gamma.as_tensor()).unwrap()),
        host(g.get(beta.as_tensor()).unwrap()),
    ]
}

/// Largest difference relative to the largest value of `want`.
fn rel(got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
    got.iter()
        .zip(want)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()))
        / scale
}

const SHAPES: [[usize; 4]; 4] = [
    [3, 20, 3, 3], // 9 values a plane: channel-parallel sums, 20 = 16 + 4
    [2, 6, 4, 4],  // 16: the first plane size summed in channel blocks
    [2, 5, 7, 9],  // 63: lanes and a remainder, 5 channels = 4 + 1
    [4, 9, 12, 12],
];

#[test]
fn train_mode_batchnorm_matches_candle_with_and_without_relu() {
    for dims in SHAPES {
        for relu in [false, true] {
            let fast = grads(dims, relu);
            let reference = with_reference_ops(|| grads(dims, relu));
            for (what, (a, b)) in ["y", "dx", "dgamma", "dbeta"]
                .iter()
                .zip(fast.iter().zip(&reference))
            {
                let e = rel(a, b);
                assert!(
                    e < 1e-4,
                    "{dims:?} relu {relu}: {what} differs from candle's by {e:e} (relative)"
                );
            }
        }
    }
}

#[test]
fn train_mode_batchnorm_gives_the_same_bits_on_one_and_two_threads() {
    let on = |threads: usize| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
            .install(|| SHAPES.map(|d| grads(d, true)))
    };
    let (one, two) = (on(1), on(2));
    for (dims, (a, b)) in SHAPES.iter().zip(one.iter().zip(&two)) {
        for (x, y) in a.iter().zip(b) {
            let same = x.iter().zip(y).all(|(p, q)| p.to_bits() == q.to_bits());
            assert!(same, "{dims:?}: 1 and 2 threads give different bits");
        }
    }
}
