//! Finite-difference checks of the custom max-pool and of the whole ResNet
//! (BatchNorm in train mode), in f64.

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use pirlkit::model::{Arch, ResNet, ResNetConfig};
use pirlkit::ops::MaxPool2d;

/// All values of an f64 tensor, flattened.
fn vec64(t: &Tensor) -> Vec<f64> {
    t.flatten_all().unwrap().to_vec1::<f64>().unwrap()
}

fn det(n: usize, salt: usize) -> Vec<f64> {
    // Distinct, deterministic values (no ties, so the max-pool is differentiable).
    (0..n)
        .map(|i| (((i * 7919 + salt * 104729) % 10007) as f64 / 10007.0) - 0.5 + i as f64 * 1e-7)
        .collect()
}

#[test]
fn maxpool_forward_matches_a_naive_pool() {
    let x = Tensor::from_vec(det(2 * 3 * 7 * 6, 1), (2, 3, 7, 6), &Device::Cpu).unwrap();
    let y = MaxPool2d::new(3, 2, 1).forward(&x).unwrap();
    assert_eq!(y.dims(), &[2, 3, 4, 3]);
    let xs = vec64(&x);
    let ys = vec64(&y);
    for p in 0..6 {
        for oy in 0..4 {
            for ox in 0..3 {
                let mut m = f64::NEG_INFINITY;
                for ky in 0..3 {
                    for kx in 0..3 {
                        let (iy, ix) = ((oy * 2 + ky) as isize - 1, (ox * 2 + kx) as isize - 1);
                        if iy >= 0 && iy < 7 && ix >= 0 && ix < 6 {
                            m = m.max(xs[p * 42 + iy as usize * 6 + ix as usize]);
                        }
                    }
                }
                assert_eq!(ys[p * 12 + oy * 3 + ox], m);
            }
        }
    }
    // kernel == stride agrees with candle's own pool.
    let a = vec64(&MaxPool2d::new(2, 2, 0).forward(&x).unwrap());
    let b = vec64(&x.max_pool2d(2).unwrap());
    assert_eq!(a, b);
}

/// Max-pool on inputs full of ties and some NaNs, against a naive pool that
/// takes the first maximal input of each window in row-major order (a NaN
/// wins): values, and the gradient routes (the backward of sum(y * r)).
#[test]
fn maxpool_ties_and_nans_route_to_the_first_maximum() {
    // (h, w, kernel, stride, padding)
    let cases = [
        (7, 6, 3, 2, 1),
        (8, 8, 3, 2, 1),
        (5, 9, 3, 1, 1),
        (6, 7, 2, 2, 0),
        (9, 5, 5, 3, 2),
        (4, 4, 4, 1, 2),
    ];
    for (ci, &(h, w, k, s, p)) in cases.iter().enumerate() {
        let (n, c) = (2, 3);
        let len = n * c * h * w;
        // Values from {-1, 0, 1, 2}: most windows hold ties.
        let mut xs: Vec<f64> = (0..len)
            .map(|i| ((i * 7 + ci * 13) % 11 % 4) as f64 - 1.0)
            .collect();
        for i in (5..len).step_by(37) {
            xs[i] = f64::NAN;
        }
        let x = Var::from_vec(xs.clone(), (n, c, h, w), &Device::Cpu).unwrap();
        let y = MaxPool2d::new(k, s, p).forward(x.as_tensor()).unwrap();
        let (ho, wo) = ((h + 2 * p - k) / s + 1, (w + 2 * p - k) / s + 1);
        assert_eq!(y.dims(), &[n, c, ho, wo]);
        let r: Vec<f64> = (0..n * c * ho * wo).map(|i| 1.0 + i as f64).collect();
        let rt = Tensor::from_vec(r.clone(), (n, c, ho, wo), &Device::Cpu).unwrap();
        let grads = (&y * &rt).unwrap().sum_all().unwrap().backward().unwrap();
        let dx = vec64(&grads.get(x.as_tensor()).unwrap());
        let ys = vec64(&y);
        let mut want_dx = vec![0.0; len];
        for pl in 0..n * c {
            for oy in 0..ho {
                for ox in 0..wo {
                    let mut best: Option<(usize, f64)> = None;
                    for ky in 0..k {
                        for kx in 0..k {
                            let (iy, ix) = (
                                (oy * s + ky) as isize - p as isize,
                                (ox * s + kx) as isize - p as isize,
                            );
                            if iy < 0 || iy >= h as isize || ix < 0 || ix >= w as isize {
                                continue;
                            }
                            let i = pl * h * w + iy as usize * w + ix as usize;
                            let v = xs[i];
                            let better = match best {
                                None => true,
                                Some((_, b)) => v > b || (v.is_nan() && !b.is_nan()),
                            };
                            if better {
                                best = Some((i, v));
                            }
                        }
                    }
                    let (i, v) = best.unwrap();
                    let o = (pl * ho + oy) * wo + ox;
                    let got = ys[o];
                    assert!(
                        got == v || (got.is_nan() && v.is_nan()),
                        "case {ci}: y[{o}] = {got}, want {v}"
                    );
                    want_dx[i] += r[o];
                }
            }
        }
        assert_eq!(dx, want_dx, "case {ci}: gradient routes");
    }
}

#[test]
fn maxpool_gradient_matches_finite_differences() {
    let shape = (2, 2, 9, 8);
    let n = 2 * 2 * 9 * 8;
    let x = Var::from_tensor(&Tensor::from_vec(det(n, 3), shape, &Device::Cpu).unwrap()).unwrap();
    let pool = MaxPool2d::new(3, 2, 1);
    let wout = Tensor::from_vec(det(2 * 2 * 5 * 4, 5), (2, 2, 5, 4), &Device::Cpu).unwrap();
    let loss = |t: &Tensor| {
        pool.forward(t)
            .unwrap()
            .mul(&wout)
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
    };
    let l = pool
        .forward(x.as_tensor())
        .unwrap()
        .mul(&wout)
        .unwrap()
        .sum_all()
        .unwrap();
    let g = vec64(&l.backward().unwrap().get(x.as_tensor()).unwrap());
    let base = vec64(&x.as_tensor());
    let h = 1e-6;
    for i in 0..n {
        let mut p = base.clone();
        p[i] += h;
        let mut m = base.clone();
        m[i] -= h;
        let fd = (loss(&Tensor::from_vec(p, shape, &Device::Cpu).unwrap())
            - loss(&Tensor::from_vec(m, shape, &Device::Cpu).unwrap()))
            / (2.0 * h);
        assert!(
            (fd - g[i]).abs() < 1e-6,
            "input {i}: analytic {} vs numeric {fd}",
            g[i]
        );
    }
}

#[test]
fn resnet_gradients_match_finite_differences() {
    let dev = Device::Cpu;
    let vm = VarMap::new();
    let vb = VarBuilder::from_varmap(&vm, DType::F64, &dev);
    let cfg = ResNetConfig {
        arch: Arch::Resnet18,
        width: 4.0 / 64.0,
        bn_momentum: 0.1,
        ..Default::default()
    };
    let net = ResNet::new(&cfg, vb).unwrap();
    pirlkit::model::seeded_init(&vm, 3).unwrap();
    let shape = (3, 3, 20, 18);
    let x =
        Var::from_tensor(&Tensor::from_vec(det(3 * 3 * 20 * 18, 9), shape, &dev).unwrap()).unwrap();
    let d = cfg.feature_dim();
    let w = Tensor::from_vec(det(3 * d, 11), (3, d), &dev).unwrap();
    let loss_of = |inp: &Tensor| {
        net.forward_t(inp, true)
            .unwrap()
            .mul(&w)
            .unwrap()
            .sum_all()
            .unwrap()
    };
    let l = loss_of(x.as_tensor());
    let grads = l.backward().unwrap();

    let h = 1e-5;
    let rel = |a: f64, b: f64| (a - b).abs() / (a.abs().max(b.abs()).max(1e-4));
    // Input gradient at a spread of positions.
    let gx = vec64(&grads.get(x.as_tensor()).unwrap());
    let base = vec64(&x.as_tensor());
    for i in (0..base.len()).step_by(97) {
        let mut p = base.clone();
        p[i] += h;
        let mut m = base.clone();
        m[i] -= h;
        let lp = loss_of(&Tensor::from_vec(p, shape, &dev).unwrap())
            .to_scalar::<f64>()
            .unwrap();
        let lm = loss_of(&Tensor::from_vec(m, shape, &dev).unwrap())
            .to_scalar::<f64>()
            .unwrap();
        let fd = (lp - lm) / (2.0 * h);
        assert!(
            rel(fd, gx[i]) < 1e-4,
            "input {i}: analytic {} vs numeric {fd}",
            gx[i]
        );
    }
    // Parameter gradients: the stem conv, a BN scale, a downsample conv, the last block.
    let data = vm.data().lock().unwrap();
    for name in [
        "conv1.weight",
        "bn1.weight",
        "layer2.0.downsample.0.weight",
        "layer4.1.conv2.weight",
        "layer3.0.bn2.bias",
    ] {
        let var = data.get(name).unwrap_or_else(|| panic!("no {name}"));
        let g = vec64(
            &grads
                .get(var.as_tensor())
                .unwrap_or_else(|| panic!("no grad for {name}")),
        );
        let orig = var.as_tensor().copy().unwrap();
        let vals = vec64(&orig);
        for i in (0..vals.len()).step_by((vals.len() / 5).max(1)) {
            let eval = |delta: f64| {
                let mut v = vals.clone();
                v[i] += delta;
                var.set(&Tensor::from_vec(v, orig.shape(), &dev).unwrap())
                    .unwrap();
                let r = loss_of(x.as_tensor()).to_scalar::<f64>().unwrap();
                var.set(&orig).unwrap();
                r
            };
            let fd = (eval(h) - eval(-h)) / (2.0 * h);
            assert!(
                rel(fd, g[i]) < 1e-4,
                "{name}[{i}]: analytic {} vs numeric {fd}",
                g[i]
            );
        }
    }
}

#[test]
fn resnet_shapes_for_each_arch() {
    let dev = Device::Cpu;
    for (arch, d) in [
        (Arch::Resnet18, 64),
        (Arch::Resnet34, 64),
        (Arch::Resnet50, 256),
    ] {
        let vm = VarMap::new();
        let cfg = ResNetConfig {
            arch,
            width: 0.125,
            bn_momentum: 0.1,
            ..Default::default()
        };
        let net = ResNet::new(&cfg, VarBuilder::from_varmap(&vm, DType::F32, &dev)).unwrap();
        assert_eq!(cfg.feature_dim(), d);
        let y = net
            .forward_t(
                &Tensor::zeros((2, 3, 32, 32), DType::F32, &dev).unwrap(),
                true,
            )
            .unwrap();
        assert_eq!(y.dims(), &[2, d]);
        // torchvision naming.
        let names: Vec<String> = vm.data().lock().unwrap().keys().cloned().collect();
        assert!(names.iter().any(|n| n == "layer1.0.bn1.running_var"));
        assert!(names.iter().any(|n| n == "layer2.0.downsample.0.weight"));
    }
}

#[test]
fn frozen_stages_get_no_gradient_and_the_same_output() {
    let dev = Device::Cpu;
    let vm = VarMap::new();
    let cfg = ResNetConfig {
        arch: Arch::Resnet18,
        width: 0.125,
        ..Default::default()
    };
    let net = ResNet::new(&cfg, VarBuilder::from_varmap(&vm, DType::F32, &dev)).unwrap();
    pirlkit::model::seeded_init(&vm, 1).unwrap();
    let x = Tensor::from_vec(
        det(2 * 3 * 32 * 32, 7)
            .into_iter()
            .map(|v| v as f32)
            .collect::<Vec<_>>(),
        (2, 3, 32, 32),
        &dev,
    )
    .unwrap();
    // Eval mode: no running-statistics updates between the two forwards.
    let a = net.forward_t(&x, false).unwrap();
    let b = net.forward_frozen(&x, false, 3).unwrap();
    assert_eq!(
        a.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        b.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    );
    // Train mode: stem, layer1 and layer2 frozen.
    let g = net
        .forward_frozen(&x, true, 3)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let data = vm.data().lock().unwrap();
    let mut with = 0;
    for (name, var) in data.iter() {
        if name.ends_with("running_mean") || name.ends_with("running_var") {
            continue;
        }
        let has = g.get(var.as_tensor()).is_some();
        let frozen = name.starts_with("conv1")
            || name.starts_with("bn1")
            || name.starts_with("layer1")
            || name.starts_with("layer2");
        assert_eq!(has, !frozen, "{name}");
        with += has as usize;
    }
    assert!(with > 0);
}

/// The fused residual `relu(a + b)` against candle's add and ReLU: values
/// and both gradients, in f64 and f32, on a shape that is not a multiple of
/// its task size.
#[test]
fn add_relu_matches_candle() {
    for dt in [DType::F64, DType::F32] {
        let dims = (3, 5, 7, 11);
        let n = 3 * 5 * 7 * 11;
        let t = |salt| {
            Var::from_tensor(
                &Tensor::from_vec(det(n, salt), dims, &Device::Cpu)
                    .unwrap()
                    .to_dtype(dt)
                    .unwrap(),
            )
            .unwrap()
        };
        let (a, b) = (t(3), t(4));
        let r = Tensor::from_vec(det(n, 5), dims, &Device::Cpu)
            .unwrap()
            .to_dtype(dt)
            .unwrap();
        let run = |fused: bool| {
            let y = if fused {
                pirlkit::ops::add_relu(a.as_tensor(), b.as_tensor()).unwrap()
            } else {
                (a.as_tensor() + b.as_tensor()).unwrap().relu().unwrap()
            };
            let g = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
            let v = |t: &Tensor| {
                t.to_dtype(DType::F64)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f64>()
                    .unwrap()
            };
            (
                v(&y),
                v(g.get(a.as_tensor()).unwrap()),
                v(g.get(b.as_tensor()).unwrap()),
            )
        };
        let (got, want) = (run(true), run(false));
        assert!(got.0.iter().any(|&v| v == 0.0) && got.0.iter().any(|&v| v > 0.0));
        assert_eq!(got, want, "{dt:?}");
    }
}

/// The probe's multi-stage features: stage 4 alone is the encoder's output
/// (bit for bit), and stages 3 and 4 are layer3's pooled output then it; the
/// features carry no gradient, the eval forward does.
#[test]
fn pooled_stages_are_the_encoder_output_and_layer3() {
    use pirlkit::model::{ResNetConfig, build_encoder};
    let cfg = ResNetConfig {
        width: 0.125,
        ..Default::default()
    };
    let (vm, enc) =
        build_encoder(&cfg, 5, candle_core::DType::F32, &candle_core::Device::Cpu).unwrap();
    let x =
        candle_core::Tensor::randn(0f32, 1.0, (3, 3, 32, 32), &candle_core::Device::Cpu).unwrap();
    // The eval forward still carries gradients to the weights; the frozen
    // features (inference: no graph) carry none.
    let vars = vm.all_vars();
    let g = enc
        .forward_t(&x, false)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    assert!(vars.iter().any(|v| g.get(v.as_tensor()).is_some()));
    let g = enc
        .pooled_stages(&x, &[3, 4])
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    assert!(vars.iter().all(|v| g.get(v.as_tensor()).is_none()));
    let out = enc
        .forward_t(&x, false)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let s4 = enc
        .pooled_stages(&x, &[4])
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert_eq!(out, s4);
    let both = enc.pooled_stages(&x, &[3, 4]).unwrap();
    let (c3, c4) = (enc.stage_channels(3), enc.stage_channels(4));
    assert_eq!(both.dims(), &[3, c3 + c4]);
    let tail = both
        .narrow(1, c3, c4)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert_eq!(tail, s4);
}
