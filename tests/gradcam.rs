//! Grad-CAM (eval::gradcam): the channel weights against finite
//! differences, a hand-built case whose logit reads one cell (the map peaks
//! there), the last stage of a ResNet classifier (where Grad-CAM is the
//! head's weights over the cells), the bilinear upsampling against
//! PyTorch, the cases picked, and a fine-tuned model explained end to end.

use candle_core::{DType, Device, IndexOp, Module, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};

use pirlkit::data::RgbImage;
use pirlkit::eval::gradcam::{
    self, CaseKind, Heatmap, Probe, TestImages, classifier_cams, grad_cam, pick_cases,
};
use pirlkit::model::{ResNetConfig, build_encoder};

fn randn(shape: &[usize], seed: u64) -> Tensor {
    let mut rng = pirlkit::rng::stream(seed, "test-gradcam", 0, 0);
    let n: usize = shape.iter().product();
    let v: Vec<f64> = (0..n).map(|_| pirlkit::rng::normal(&mut rng)).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

/// The logit of a small smooth network on the map `a` (N, C, H, W):
/// `Σ_hw u_hw tanh(Σ_c v_c a_chw + b_hw)`, per image.
fn head(a: &Tensor, v: &Tensor, b: &Tensor, u: &Tensor) -> Tensor {
    let (n, c, h, w) = a.dims4().unwrap();
    let z = a
        .broadcast_mul(&v.reshape((1, c, 1, 1)).unwrap())
        .unwrap()
        .sum(1)
        .unwrap()
        .broadcast_add(&b.reshape((1, h, w)).unwrap())
        .unwrap()
        .tanh()
        .unwrap();
    z.broadcast_mul(&u.reshape((1, h, w)).unwrap())
        .unwrap()
        .reshape((n, h * w))
        .unwrap()
        .sum(1)
        .unwrap()
}

/// `α_c = mean_hw ∂logit/∂A_c` is the derivative along the all-ones
/// direction of channel `c`, divided by the cells: a central difference
/// per image and channel checks it.
#[test]
fn channel_weights_match_finite_differences() {
    let (n, c, h, w) = (2, 3, 4, 5);
    let x = randn(&[n, c, h, w], 1);
    let wt = Var::from_tensor(&randn(&[n, c, h, w], 2)).unwrap();
    let (v, b, u) = (randn(&[c], 3), randn(&[h * w], 4), randn(&[h * w], 5));
    // A map on the graph (from a variable), as a stage's output is.
    let a = (x.mul(wt.as_tensor()).unwrap()).tanh().unwrap();
    let probe = Probe::new(&a).unwrap();
    let logits = head(&probe.map, &v, &b, &u);
    let cam = grad_cam(&logits, &[&probe]).unwrap();
    let alpha = cam.weights[0].to_vec2::<f64>().unwrap();
    let a0 = a.detach();
    let eps = 1e-5;
    for i in 0..n {
        for k in 0..c {
            let bump = |s: f64| {
                let mut m = vec![0f64; n * c * h * w];
                for p in 0..h * w {
                    m[(i * c + k) * h * w + p] = s;
                }
                let d = Tensor::from_vec(m, (n, c, h, w), &Device::Cpu).unwrap();
                head(&(&a0 + d).unwrap(), &v, &b, &u)
                    .to_vec1::<f64>()
                    .unwrap()[i]
            };
            let fd = (bump(eps) - bump(-eps)) / (2.0 * eps * (h * w) as f64);
            assert!(
                (alpha[i][k] - fd).abs() < 1e-7,
                "image {i} channel {k}: {} vs {fd}",
                alpha[i][k]
            );
        }
    }
    // The map is ReLU(Σ_c α_c A_c).
    let map = cam.maps[0].to_vec3::<f64>().unwrap();
    let av = a0.flatten_all().unwrap().to_vec1::<f64>().unwrap();
    for i in 0..n {
        for y in 0..h {
            for xx in 0..w {
                let s: f64 = (0..c)
                    .map(|k| alpha[i][k] * av[((i * c + k) * h + y) * w + xx])
                    .sum();
                assert!((map[i][y][xx] - s.max(0.0)).abs() < 1e-12);
            }
        }
    }
}

/// A logit that reads one cell, (1, 2), through channel 0 (+1) and
/// channel 1 (−1). Channel 0 is high at (1, 2), channel 1 at (3, 0): the
/// map peaks at (1, 2) and is zero at (3, 0). Weights taken by magnitude,
/// or without their sign, would light (3, 0) as well.
#[test]
fn the_map_peaks_where_the_logit_reads() {
    let (h, w) = (4, 4);
    let mut m = vec![0.1f32; 2 * h * w];
    m[h + 2] = 2.0; // channel 0, (1, 2)
    m[h * w + 3 * w] = 3.0; // channel 1, (3, 0)
    let a = Var::from_vec(m, (1, 2, h, w), &Device::Cpu).unwrap();
    let probe = Probe::new(a.as_tensor()).unwrap();
    let t = &probe.map;
    let logit = (t.i((.., 0, 1, 2)).unwrap() - t.i((.., 1, 1, 2)).unwrap()).unwrap();
    let cam = grad_cam(&logit, &[&probe]).unwrap();
    let alpha = cam.weights[0].to_vec2::<f32>().unwrap();
    assert_eq!(alpha[0], vec![1.0 / 16.0, -1.0 / 16.0]);
    let map = cam.maps[0].to_vec3::<f32>().unwrap();
    let (mut best, mut at) = (f32::MIN, (0, 0));
    for (y, row) in map[0].iter().enumerate() {
        for (x, &v) in row.iter().enumerate() {
            if v > best {
                (best, at) = (v, (y, x));
            }
        }
    }
    assert_eq!(at, (1, 2), "{map:?}");
    assert!((best - (2.0 - 0.1) / 16.0).abs() < 1e-7);
    assert_eq!(
        map[0][3][0], 0.0,
        "the negative evidence is cut by the ReLU"
    );
    // Inside inference no graph is kept: Grad-CAM refuses rather than
    // returning zeros.
    let e = pirlkit::ops::inference(|| grad_cam(&logit, &[&probe]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("inference"), "{e}");
    // A map the logit does not depend on is named.
    let other =
        Probe::new(&Tensor::zeros((1, 2, h, w), DType::F32, &Device::Cpu).unwrap()).unwrap();
    let e = grad_cam(&logit, &[&other]).unwrap_err().to_string();
    assert!(e.contains("not on the logits' graph"), "{e}");
}

fn tiny() -> ResNetConfig {
    ResNetConfig {
        width: 0.0625,
        ..Default::default()
    }
}

/// A seeded encoder (base width 4) and a seeded Linear(32, 1) head.
fn classifier() -> (VarMap, pirlkit::model::ResNet, VarMap, candle_nn::Linear) {
    let (vm, enc) = build_encoder(&tiny(), 3, DType::F32, &Device::Cpu).unwrap();
    let hvm = VarMap::new();
    let vb = VarBuilder::from_varmap(&hvm, DType::F32, &Device::Cpu);
    let head = candle_nn::linear(tiny().feature_dim(), 1, vb.pp("head")).unwrap();
    pirlkit::model::seeded_init(&hvm, 9).unwrap();
    (vm, enc, hvm, head)
}

/// At the last stage of GAP + linear, `∂logit/∂A_c(h, w) = w_c / HW`: the
/// weights are the head's, divided by the cells (so Grad-CAM there is CAM).
/// At 64 px the map is 2x2 (layer3 4x4), and the logits are the model's.
#[test]
fn the_last_stage_weights_are_the_heads() {
    let (_vm, enc, _hvm, head) = classifier();
    let x = randn(&[3, 3, 64, 64], 7).to_dtype(DType::F32).unwrap();
    let maps = enc.stage_maps(&x, &mut |_, y| Ok(y)).unwrap();
    assert_eq!(maps[4].dims(), &[3, 32, 2, 2]);
    assert_eq!(maps[3].dims(), &[3, 16, 4, 4]);
    let probe = Probe::new(&maps[4]).unwrap();
    let logits = head
        .forward(&probe.map.mean((2, 3)).unwrap())
        .unwrap()
        .squeeze(1)
        .unwrap();
    let cam = grad_cam(&logits, &[&probe]).unwrap();
    let wv = head.weight().to_vec2::<f32>().unwrap()[0].clone();
    for row in cam.weights[0].to_vec2::<f32>().unwrap() {
        for (a, wc) in row.iter().zip(&wv) {
            assert!((a - wc / 4.0).abs() < 1e-7, "{a} vs {}", wc / 4.0);
        }
    }
    // The logits Grad-CAM explains are the classifier's (eval mode).
    let direct = head
        .forward(&enc.forward_t(&x, false).unwrap())
        .unwrap()
        .squeeze(1)
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let cams = classifier_cams(&enc, &head, &x).unwrap();
    for ((l, maps), d) in cams.iter().zip(&direct) {
        assert!((*l as f32 - d).abs() < 1e-4, "{l} vs {d}");
        assert_eq!(
            maps.iter().map(|m| (m.stage, m.h, m.w)).collect::<Vec<_>>(),
            vec![(4, 2, 2), (3, 4, 4)]
        );
        assert!(maps.iter().all(|m| m.values.iter().all(|v| *v >= 0.0)));
    }
}

/// ```python
/// F.interpolate(torch.tensor([[0., 1.], [2., 3.]])[None, None], size=(4, 4),
///               mode="bilinear", align_corners=False)
/// F.interpolate(torch.tensor([[0., 1., 4.], [2., 3., 0.], [1., 0., 5.]])[None, None],
///               size=(5, 7), mode="bilinear", align_corners=False)
/// ```
#[test]
fn upsampling_matches_pytorch() {
    let m = Heatmap {
        stage: 4,
        h: 2,
        w: 2,
        values: vec![0.0, 1.0, 2.0, 3.0],
    };
    let want = [
        0.0, 0.25, 0.75, 1.0, 0.5, 0.75, 1.25, 1.5, 1.5, 1.75, 2.25, 2.5, 2.0, 2.25, 2.75, 3.0,
    ];
    assert_eq!(m.upsample(4, 4), want);
    let m = Heatmap {
        stage: 3,
        h: 3,
        w: 3,
        values: vec![0.0, 1.0, 4.0, 2.0, 3.0, 0.0, 1.0, 0.0, 5.0],
    };
    let want = [
        [0.0, 0.142857, 0.571429, 1.0, 2.285714, 3.571429, 4.0],
        [0.8, 0.942857, 1.371429, 1.8, 2.057143, 2.314286, 2.4],
        [2.0, 2.142857, 2.571429, 3.0, 1.714286, 0.428571, 0.0],
        [1.4, 1.371428, 1.285714, 1.2, 1.971429, 2.742858, 3.000001],
        [1.0, 0.857143, 0.428571, 0.0, 2.142857, 4.285714, 5.0],
    ];
    let got = m.upsample(5, 7);
    for (y, row) in want.iter().enumerate() {
        for (x, w) in row.iter().enumerate() {
            assert!((got[y * 7 + x] - w).abs() < 1e-5, "({y}, {x})");
        }
    }
}

#[test]
fn the_cases_are_the_surest_hits_and_the_worst_misses() {
    let scores = [2.0, -1.0, 3.0, 0.5, -3.0, 1.0, 3.0, -2.0, 0.0, 9.0];
    let labels = [1, 1, 1, 1, 1, 0, 1, 1, 1, 0];
    let got = pick_cases(&scores, &labels, 0.5, 3);
    use CaseKind::*;
    assert_eq!(
        got,
        vec![
            (TruePositive, 2),
            (TruePositive, 6),
            (TruePositive, 0),
            (Missed, 4),
            (Missed, 7),
            (Missed, 1)
        ]
    );
    // Fewer misses than asked for: as many as there are.
    let got = pick_cases(&scores, &labels, -2.5, 3);
    assert_eq!(got.iter().filter(|c| c.0 == Missed).count(), 1);
}

/// A tiny classifier explains synthetic images end to end: the cases, their
/// views as PNG, and maps at each stage's resolution.
#[test]
fn a_classifier_explains_its_test_images() {
    let (_vm, enc, _hvm, head) = classifier();
    let images: Vec<RgbImage> = (0..10)
        .map(|k| RgbImage {
            size: 48,
            data: (0..48 * 48 * 3)
                .map(|i| ((i * (k + 3) * 7) % 251) as u8)
                .collect(),
        })
        .collect();
    let refs: Vec<&RgbImage> = images.iter().collect();
    let ids: Vec<String> = (0..10).map(|i| format!("ISIC_{i:07}")).collect();
    let labels: Vec<u8> = (0..10).map(|i| (i % 2) as u8).collect();
    let scores: Vec<f64> = (0..10).map(|i| i as f64 * 0.1 - 0.5).collect();
    let test = TestImages {
        images: &refs,
        ids: &ids,
        labels: &labels,
        scores: &scores,
    };
    let g = gradcam::explain(&enc, &head, 32, &test, 0.0).unwrap();
    assert_eq!(g.view, 32);
    let picked: Vec<(CaseKind, usize)> = g.cases.iter().map(|c| (c.kind, c.index)).collect();
    assert_eq!(
        picked,
        vec![
            (CaseKind::TruePositive, 9),
            (CaseKind::TruePositive, 7),
            (CaseKind::TruePositive, 5),
            (CaseKind::Missed, 1),
            (CaseKind::Missed, 3)
        ]
    );
    for c in &g.cases {
        assert_eq!(c.id, ids[c.index]);
        assert_eq!(c.score, scores[c.index]);
        assert!(c.view_logit.is_finite());
        let im = c.image().unwrap();
        assert_eq!(im.dimensions(), (32, 32));
        // At 32 px: layer4 is one cell, layer3 2x2.
        assert_eq!(
            c.maps
                .iter()
                .map(|m| (m.stage, m.h, m.w))
                .collect::<Vec<_>>(),
            vec![(4, 1, 1), (3, 2, 2)]
        );
    }
    let bad = TestImages {
        scores: &scores[..9],
        ..test
    };
    let e = gradcam::explain(&enc, &head, 32, &bad, 0.0)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("10 test images but 10 ids, 10 labels and 9 scores"),
        "{e}"
    );
}
