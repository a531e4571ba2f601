//! Tests of `pirlkit::ops::conv::conv2d` against candle's own conv2d, finite
//! differences, and thread-count determinism.

use candle_core::{DType, Device, Tensor, Var};
use pirlkit::ops::conv::conv2d;

/// Deterministic pseudo-random values in [-0.5, 0.5).
fn seeded(len: usize, salt: usize) -> Vec<f64> {
    (0..len)
        .map(|i| (((i + salt * 131) * 7919) % 1000) as f64 / 1000.0 - 0.5)
        .collect()
}

fn tensor(dims: &[usize], salt: usize, dtype: DType) -> Tensor {
    let len = dims.iter().product();
    Tensor::from_vec(seeded(len, salt), dims, &Device::Cpu)
        .unwrap()
        .to_dtype(dtype)
        .unwrap()
}

fn flat(t: &Tensor) -> Vec<f64> {
    t.flatten_all()
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// Max abs difference must be within `tol` of the reference's scale.
fn assert_close(what: &str, got: &Tensor, want: &Tensor, tol: f64) {
    assert_eq!(got.dims(), want.dims(), "{what}: shape");
    let (a, b) = (flat(got), flat(want));
    let scale = b.iter().fold(1.0f64, |m, v| m.max(v.abs()));
    let diff = a
        .iter()
        .zip(&b)
        .fold(0.0f64, |m, (x, y)| m.max((x - y).abs()));
    assert!(
        diff <= tol * scale,
        "{what}: max abs diff {diff:e} > {tol:e} * {scale}"
    );
}

#[derive(Debug, Clone, Copy)]
struct Case {
    n: usize,
    cin: usize,
    cout: usize,
    h: usize,
    w: usize,
    k: usize,
    s: usize,
    p: usize,
}

const fn case(
    n: usize,
    cin: usize,
    cout: usize,
    h: usize,
    w: usize,
    k: usize,
    s: usize,
    p: usize,
) -> Case {
    Case {
        n,
        cin,
        cout,
        h,
        w,
        k,
        s,
        p,
    }
}

const CASES: &[Case] = &[
    case(1, 3, 5, 9, 7, 3, 1, 1),
    case(3, 3, 5, 9, 7, 3, 2, 1),
    case(3, 3, 5, 9, 7, 3, 1, 0),
    case(3, 3, 5, 9, 7, 1, 1, 0), // pointwise fast path
    case(1, 4, 6, 9, 7, 1, 2, 0),
    case(3, 5, 3, 9, 7, 1, 1, 1),
    case(3, 3, 5, 16, 13, 7, 2, 3), // stem-like
    case(1, 3, 5, 5, 6, 7, 1, 3),   // kernel larger than the input
    case(1, 2, 3, 4, 5, 3, 1, 3),   // padding wider than the kernel
    case(9, 3, 5, 6, 5, 3, 2, 1),   // several weight-gradient chunks, last one partial
    case(3, 8, 16, 8, 8, 3, 2, 1),
    case(5, 2, 3, 20, 20, 3, 1, 1), // groups of 2 images (400 px each), last one partial
    case(7, 3, 4, 15, 16, 1, 1, 0), // pointwise, groups of 3
    // Output rows of 8 and more: im2col by row copies (narrower ones go
    // through the tap table), strided and stem-like.
    case(2, 3, 4, 17, 19, 3, 2, 1),
    case(2, 3, 4, 18, 20, 7, 2, 3),
    case(2, 3, 4, 9, 12, 3, 1, 0),
    // Stride-1 "same" convs: im2col / col2im by shifted planes, including
    // 4x4 planes, a non-square one, and taps that miss the plane entirely.
    case(3, 4, 5, 4, 4, 3, 1, 1),
    case(2, 3, 4, 6, 11, 5, 1, 2),
    case(2, 3, 4, 2, 13, 5, 1, 2),
    case(1, 2, 3, 1, 50, 7, 1, 3),
    // 3x3 kernels on planes of 16 pixels and more: Winograd F(2x2, 3x3)
    // (one group of 17 images at 6x6; odd heights and widths, whose last
    // tiles hang over the plane; a prime batch in 13 groups of one image; a
    // single group of 7; untracked-input and thread-count cases below too).
    case(17, 3, 4, 6, 6, 3, 1, 1),
    case(6, 3, 4, 9, 5, 3, 1, 1),
    case(4, 9, 10, 5, 4, 3, 1, 1),
    case(13, 3, 2, 16, 16, 3, 1, 1),
    case(7, 5, 6, 12, 12, 3, 1, 1),
    case(2, 3, 4, 1, 17, 3, 1, 1), // one row: a single tile row
    case(2, 3, 4, 19, 1, 3, 1, 1), // one column
    // Other "same" convs on planes of 4 to 36 pixels: one GEMM per tap
    // over the pixels it reaches (3x3 kernels on 2x2, 3x3 and 2x3 planes;
    // a 5x5 kernel on 5x6, non-square; a 7x7 kernel on 4x7, whose outer
    // taps reach no pixel; 5x5 on 6x6 in groups of 15).
    case(5, 6, 7, 2, 2, 3, 1, 1),
    case(33, 5, 6, 3, 3, 3, 1, 1),
    case(3, 4, 5, 2, 3, 3, 1, 1),
    case(3, 2, 3, 5, 6, 5, 1, 2),
    case(2, 3, 2, 4, 7, 7, 1, 3),
    case(17, 3, 4, 6, 6, 5, 1, 2),
    // Dense path (other H*W <= kh*kw): 1x1 planes, non-square, stride 2,
    // no padding.
    case(4, 5, 3, 1, 1, 3, 1, 1),
    case(3, 5, 4, 1, 3, 3, 1, 1),
    case(3, 4, 5, 3, 3, 3, 2, 1),
    case(2, 3, 4, 2, 2, 3, 2, 1),
    case(1, 9, 2, 3, 3, 3, 1, 0),
    case(64, 3, 4, 3, 3, 3, 2, 1), // dense forward too (64 images and more)
    case(72, 3, 4, 2, 2, 3, 1, 1), // same conv, many images: dense
    case(70, 2, 3, 1, 3, 3, 2, 1),
];

/// (y, dx, dw) for loss = sum(conv(x, w) * r), with either conv. Errors come
/// from candle's own backward, which fails on stride-2 inputs whose height and
/// width leave different remainders (it derives the width's output padding
/// from the height).
fn try_run(c: Case, ours: bool, dtype: DType) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
    let x = Var::from_tensor(&tensor(&[c.n, c.cin, c.h, c.w], 1, dtype))?;
    let w = Var::from_tensor(&tensor(&[c.cout, c.cin, c.k, c.k], 2, dtype))?;
    let y = if ours {
        conv2d(x.as_tensor(), w.as_tensor(), c.s, c.p)?
    } else {
        x.as_tensor().conv2d(w.as_tensor(), c.p, c.s, 1, 1)?
    };
    let r = tensor(y.dims(), 3, dtype);
    let grads = (&y * &r)?.sum_all()?.backward()?;
    let dx = grads.get(x.as_tensor()).unwrap().clone();
    let dw = grads.get(w.as_tensor()).unwrap().clone();
    Ok((y, dx, dw))
}

fn run(c: Case, ours: bool, dtype: DType) -> (Tensor, Tensor, Tensor) {
    try_run(c, ours, dtype).unwrap()
}

/// Direct-loop f64 reference of (y, dx, dw) for the same loss as [`try_run`].
fn naive(c: Case) -> (Tensor, Tensor, Tensor) {
    let ho = (c.h + 2 * c.p - c.k) / c.s + 1;
    let wo = (c.w + 2 * c.p - c.k) / c.s + 1;
    let x = seeded(c.n * c.cin * c.h * c.w, 1);
    let w = seeded(c.cout * c.cin * c.k * c.k, 2);
    let r = seeded(c.n * c.cout * ho * wo, 3);
    let (mut y, mut dx, mut dw) = (vec![0.0; r.len()], vec![0.0; x.len()], vec![0.0; w.len()]);
    for n in 0..c.n {
        for co in 0..c.cout {
            for oy in 0..ho {
                for ox in 0..wo {
                    let yi = ((n * c.cout + co) * ho + oy) * wo + ox;
                    for ci in 0..c.cin {
                        for ky in 0..c.k {
                            for kx in 0..c.k {
                                let (iy, ix) = (
                                    (oy * c.s + ky) as isize - c.p as isize,
                                    (ox * c.s + kx) as isize - c.p as isize,
                                );
                                if iy < 0 || ix < 0 || iy >= c.h as isize || ix >= c.w as isize {
                                    continue;
                                }
                                let xi = ((n * c.cin + ci) * c.h + iy as usize) * c.w + ix as usize;
                                let wi = ((co * c.cin + ci) * c.k + ky) * c.k + kx;
                                y[yi] += x[xi] * w[wi];
                                dx[xi] += w[wi] * r[yi];
                                dw[wi] += x[xi] * r[yi];
                            }
                        }
                    }
                }
            }
        }
    }
    let t = |v: Vec<f64>, d: &[usize]| Tensor::from_vec(v, d, &Device::Cpu).unwrap();
    (
        t(y, &[c.n, c.cout, ho, wo]),
        t(dx, &[c.n, c.cin, c.h, c.w]),
        t(dw, &[c.cout, c.cin, c.k, c.k]),
    )
}

#[test]
fn matches_candle_and_naive_forward_and_backward_f32() {
    for &c in CASES {
        let (y, dx, dw) = run(c, true, DType::F32);
        let (yn, dxn, dwn) = naive(c);
        assert_close(&format!("y vs naive {c:?}"), &y, &yn, 1e-4);
        assert_close(&format!("dx vs naive {c:?}"), &dx, &dxn, 1e-4);
        assert_close(&format!("dw vs naive {c:?}"), &dw, &dwn, 1e-4);
        let y0 = tensor(&[c.n, c.cin, c.h, c.w], 1, DType::F32)
            .conv2d(
                &tensor(&[c.cout, c.cin, c.k, c.k], 2, DType::F32),
                c.p,
                c.s,
                1,
                1,
            )
            .unwrap();
        assert_close(&format!("y vs candle {c:?}"), &y, &y0, 1e-4);
        match try_run(c, false, DType::F32) {
            Ok((_, dx0, dw0)) => {
                assert_close(&format!("dx vs candle {c:?}"), &dx, &dx0, 1e-4);
                assert_close(&format!("dw vs candle {c:?}"), &dw, &dw0, 1e-4);
            }
            // Candle's backward fails exactly when H and W leave different
            // remainders modulo the stride (ours is checked against naive).
            Err(e) => {
                let rem = |d: usize| (d + 2 * c.p - c.k) % c.s;
                assert_ne!(rem(c.h), rem(c.w), "candle backward failed on {c:?}: {e}");
            }
        }
    }
}

#[test]
fn non_contiguous_input_is_accepted() {
    let x = tensor(&[2, 3, 7, 9], 1, DType::F32)
        .transpose(2, 3)
        .unwrap();
    assert!(!x.is_contiguous());
    let w = tensor(&[4, 3, 3, 3], 2, DType::F32);
    let y = conv2d(&x, &w, 2, 1).unwrap();
    let y0 = x.conv2d(&w, 1, 2, 1, 1).unwrap();
    assert_close("y non-contiguous", &y, &y0, 1e-4);
}

/// Central differences of loss = sum(conv(x, w) * r) in f64.
fn finite_difference_check(c: Case) {
    let dev = Device::Cpu;
    let xd = [c.n, c.cin, c.h, c.w];
    let wd = [c.cout, c.cin, c.k, c.k];
    let (xv, wv) = (
        flat(&tensor(&xd, 1, DType::F64)),
        flat(&tensor(&wd, 2, DType::F64)),
    );
    let (_, dx, dw) = run(c, true, DType::F64);
    let r = {
        let y = conv2d(
            &tensor(&xd, 1, DType::F64),
            &tensor(&wd, 2, DType::F64),
            c.s,
            c.p,
        )
        .unwrap();
        tensor(y.dims(), 3, DType::F64)
    };
    let loss = |xv: &[f64], wv: &[f64]| -> f64 {
        let x = Tensor::from_slice(xv, &xd, &dev).unwrap();
        let w = Tensor::from_slice(wv, &wd, &dev).unwrap();
        let y = conv2d(&x, &w, c.s, c.p).unwrap();
        (&y * &r)
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
    };
    let h = 1e-6;
    let check = |name: &str, analytic: &[f64], which_x: bool| {
        let base = if which_x { &xv } else { &wv };
        for i in 0..base.len() {
            let (mut plus, mut minus) = (base.clone(), base.clone());
            plus[i] += h;
            minus[i] -= h;
            let (lp, lm) = if which_x {
                (loss(&plus, &wv), loss(&minus, &wv))
            } else {
                (loss(&xv, &plus), loss(&xv, &minus))
            };
            let fd = (lp - lm) / (2.0 * h);
            let an = analytic[i];
            assert!(
                (fd - an).abs() <= 1e-6 * an.abs().max(1.0),
                "{name}[{i}] {c:?}: fd {fd} vs analytic {an}"
            );
        }
    };
    check("dx", &flat(&dx), true);
    check("dw", &flat(&dw), false);
}

#[test]
fn gradients_match_finite_differences_f64() {
    finite_difference_check(case(2, 2, 3, 5, 4, 3, 2, 1));
    finite_difference_check(case(5, 2, 3, 3, 4, 1, 1, 0)); // pointwise, two chunks
    finite_difference_check(case(3, 2, 3, 3, 2, 3, 2, 1)); // dense
    finite_difference_check(case(3, 2, 3, 2, 2, 3, 1, 1)); // per tap
    finite_difference_check(case(2, 2, 3, 5, 4, 3, 1, 1)); // Winograd
    finite_difference_check(case(2, 2, 3, 6, 6, 5, 1, 2)); // per tap
}

/// An input that needs no gradient (the image into the first conv) gets
/// none, and the weight gradient is unchanged, on both code paths.
#[test]
fn untracked_input_gets_no_gradient() {
    for c in [
        case(3, 3, 5, 9, 7, 3, 2, 1),
        case(4, 6, 5, 3, 3, 3, 2, 1),  // dense
        case(4, 6, 5, 2, 2, 3, 1, 1),  // per tap
        case(17, 3, 4, 6, 6, 3, 1, 1), // Winograd
        case(17, 3, 4, 6, 6, 5, 1, 2), // per tap
    ] {
        let (_, _, dw) = run(c, true, DType::F32);
        let x = tensor(&[c.n, c.cin, c.h, c.w], 1, DType::F32);
        let w = Var::from_tensor(&tensor(&[c.cout, c.cin, c.k, c.k], 2, DType::F32)).unwrap();
        let y = conv2d(&x, w.as_tensor(), c.s, c.p).unwrap();
        let r = tensor(y.dims(), 3, DType::F32);
        let grads = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
        assert!(
            grads.get(&x).is_none(),
            "{c:?}: gradient for an untracked input"
        );
        assert_eq!(
            bits(grads.get(w.as_tensor()).unwrap()),
            bits(&dw),
            "{c:?}: dw"
        );
    }
}

fn bits(t: &Tensor) -> Vec<u32> {
    t.flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .iter()
        .map(|v| v.to_bits())
        .collect()
}

#[test]
fn bit_identical_across_thread_counts() {
    for c in [
        case(9, 3, 5, 9, 7, 3, 1, 1),
        case(10, 6, 4, 8, 8, 1, 1, 0),
        case(7, 8, 16, 12, 10, 3, 2, 1),
        case(5, 2, 3, 20, 20, 3, 1, 1),
        case(5, 4, 6, 18, 20, 3, 2, 1),  // rows
        case(16, 32, 24, 3, 3, 3, 2, 1), // dense
        case(16, 32, 24, 2, 2, 3, 1, 1), // per tap, one group
        case(80, 64, 64, 1, 1, 3, 1, 1), // dense, forward too
        case(33, 16, 24, 6, 6, 3, 1, 1), // Winograd, 3 groups
        case(12, 8, 6, 10, 10, 3, 1, 1), // Winograd, 2 groups
        case(8, 8, 6, 9, 7, 3, 1, 1),    // Winograd, one group
        case(33, 16, 24, 6, 6, 5, 1, 2), // per tap, 3 groups
        case(64, 24, 40, 3, 3, 3, 1, 1), // per tap, groups of 57 and 7
        case(70, 20, 16, 3, 3, 3, 2, 1), // dense, split GEMMs
        case(3, 3, 8, 23, 21, 7, 2, 3),  // stem-like rows, split phases
        case(30, 16, 16, 5, 5, 3, 1, 1), // Winograd, narrow planes (tables)
        case(12, 4, 6, 7, 8, 3, 1, 1),   // Winograd, narrow, odd height
    ] {
        let with = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| {
                let (y, dx, dw) = run(c, true, DType::F32);
                (bits(&y), bits(&dx), bits(&dw))
            })
        };
        let a = with(1);
        for b in [with(2), with(3)] {
            assert!(a.0 == b.0, "forward differs {c:?}");
            assert!(a.1 == b.1, "dx differs {c:?}");
            assert!(a.2 == b.2, "dw differs {c:?}");
        }
    }
}

#[test]
fn invalid_shapes_are_errors() {
    let x = tensor(&[1, 3, 5, 5], 1, DType::F32);
    let w = tensor(&[4, 3, 3, 3], 2, DType::F32);
    assert!(conv2d(&x.flatten_all().unwrap(), &w, 1, 0).is_err(), "rank");
    assert!(
        conv2d(&x, &tensor(&[4, 2, 3, 3], 2, DType::F32), 1, 0).is_err(),
        "cin"
    );
    assert!(
        conv2d(&x, &tensor(&[4, 3, 7, 7], 2, DType::F32), 1, 0).is_err(),
        "kernel too large"
    );
    assert!(
        conv2d(&x, &tensor(&[4, 3, 7, 7], 2, DType::F32), 1, 1).is_ok(),
        "fits with padding"
    );
    assert!(conv2d(&x, &w, 0, 0).is_err(), "stride 0");
    assert!(
        conv2d(&x, &w.to_dtype(DType::F64).unwrap(), 1, 0).is_err(),
        "dtype"
    );
    assert!(
        conv2d(
            &x.to_dtype(DType::BF16).unwrap(),
            &w.to_dtype(DType::BF16).unwrap(),
            1,
            0
        )
        .is_err(),
        "bf16"
    );
}

fn median_ms(mut f: impl FnMut()) -> f64 {
    f(); // warm-up
    let mut t: Vec<f64> = (0..5)
        .map(|_| {
            let s = std::time::Instant::now();
            f();
            s.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    t.sort_by(|a, b| a.total_cmp(b));
    t[2]
}

#[test]
#[ignore]
fn conv_speed_report() {
    let c = case(32, 64, 64, 32, 32, 3, 1, 1);
    let x = Var::from_tensor(&tensor(&[c.n, c.cin, c.h, c.w], 1, DType::F32)).unwrap();
    let w = Var::from_tensor(&tensor(&[c.cout, c.cin, c.k, c.k], 2, DType::F32)).unwrap();
    let conv = |ours: bool| {
        if ours {
            conv2d(x.as_tensor(), w.as_tensor(), c.s, c.p).unwrap()
        } else {
            x.as_tensor().conv2d(w.as_tensor(), c.p, c.s, 1, 1).unwrap()
        }
    };
    println!(
        "conv2d {c:?}, f32, {} rayon threads, median of 5",
        rayon::current_num_threads()
    );
    for (name, ours) in [("candle ", false), ("pirlkit", true)] {
        let fwd = median_ms(|| {
            conv(ours);
        });
        let fwd_bwd = median_ms(|| {
            conv(ours).sum_all().unwrap().backward().unwrap();
        });
        println!("{name}: forward {fwd:8.1} ms   forward+backward {fwd_bwd:8.1} ms");
    }
}

/// The evaluation-mode conv + BatchNorm (+ ReLU) with the BatchNorm folded
/// into the conv's weights against the conv followed by candle's BatchNorm
/// (the unfolded eval forward), with running statistics, gamma and beta
/// away from their initial values; and its gradient reaches the conv weight
/// and gamma as the unfolded forward's does. Inside `ops::inference` (the
/// in-place shift and ReLU) it gives the graph forward's exact bits.
#[test]
fn folded_eval_conv_bn_matches_unfolded() {
    use candle_nn::{VarBuilder, VarMap};
    use pirlkit::ops::BatchNorm2d;
    for (c, relu) in [
        (case(3, 5, 6, 9, 9, 3, 1, 1), true),
        (case(2, 4, 8, 8, 8, 1, 2, 0), false),
        (case(2, 3, 4, 11, 11, 7, 2, 3), true),
    ] {
        let vm = VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
        let bn = BatchNorm2d::new(c.cout, 1e-5, 0.1, vb.pp("bn")).unwrap();
        for (name, salt, shift) in [
            ("bn.running_mean", 11, 0.0),
            ("bn.running_var", 12, 1.0),
            ("bn.weight", 13, 1.0),
            ("bn.bias", 14, 0.0),
        ] {
            let v = (tensor(&[c.cout], salt, DType::F32) + shift).unwrap();
            vm.data().lock().unwrap()[name].set(&v).unwrap();
        }
        let x = tensor(&[c.n, c.cin, c.h, c.w], 1, DType::F32);
        let w = Var::from_tensor(&tensor(&[c.cout, c.cin, c.k, c.k], 2, DType::F32)).unwrap();
        let folded = bn
            .forward_conv_t(&x, w.as_tensor(), (c.s, c.p), false, relu)
            .unwrap();
        let unfolded = bn
            .forward_t(&conv2d(&x, w.as_tensor(), c.s, c.p).unwrap(), false, relu)
            .unwrap();
        assert_close(&format!("{c:?} folded forward"), &folded, &unfolded, 1e-5);
        // Without a graph (inference) the shift and ReLU run in place on
        // the conv's output: the same bits as the graph's add and ReLU.
        let fused = pirlkit::ops::inference(|| {
            bn.forward_conv_t(&x, w.as_tensor(), (c.s, c.p), false, relu)
        })
        .unwrap();
        let bits = |t: &Tensor| -> Vec<u32> {
            let v: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
            v.iter().map(|x| x.to_bits()).collect()
        };
        assert!(
            !fused.track_op(),
            "{c:?}: the inference forward recorded a graph"
        );
        assert_eq!(bits(&fused), bits(&folded), "{c:?} inference forward");
        let gamma = vm.data().lock().unwrap()["bn.weight"].clone();
        let g1 = folded.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        let g2 = unfolded
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        for (what, t) in [("dW", w.as_tensor()), ("dgamma", gamma.as_tensor())] {
            assert_close(
                &format!("{c:?} folded {what}"),
                g1.get(t).unwrap(),
                g2.get(t).unwrap(),
                1e-4,
            );
        }
    }
}
