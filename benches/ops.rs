//! Single CPU kernels of a ResNet-18 training step, pirlkit's against
//! candle's own ops (the path pirlkit takes on a GPU), in one run:
//!
//!     cargo bench --bench ops                 # all
//!     cargo bench --bench ops -- conv         # a group
//!     RAYON_NUM_THREADS=2 cargo bench --bench ops
//!
//! Each group times forward + backward of one op at batch 32 on shapes of
//! ResNet-18 at 64 px. The machine may be shared: compare the two lines of a
//! group, measured minutes apart at most, rather than figures across runs.

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use pirlkit::ops::{BatchNorm2d, MaxPool2d, add_relu, conv2d, with_reference_ops};

const BATCH: usize = 32;

fn randn(dims: &[usize], salt: u64) -> Tensor {
    let n: usize = dims.iter().product();
    let v: Vec<f32> = (0..n as u64)
        .map(|i| (((i * 7919 + salt * 104_729) % 10_007) as f32 / 10_007.0) - 0.5)
        .collect();
    Tensor::from_vec(v, dims, &Device::Cpu).unwrap()
}

/// Times `f` with pirlkit's kernels and with candle's ops, as two lines of
/// one group.
fn both(c: &mut Criterion, group: &str, id: &str, f: &dyn Fn()) {
    let mut g = c.benchmark_group(group);
    g.sample_size(10)
        .warm_up_time(std::time::Duration::from_millis(500))
        .measurement_time(std::time::Duration::from_secs(2));
    g.bench_function(BenchmarkId::new("pirlkit", id), |b| b.iter(f));
    g.bench_function(BenchmarkId::new("candle", id), |b| {
        b.iter(|| with_reference_ops(f))
    });
    g.finish();
}

fn conv(c: &mut Criterion) {
    // (cin, cout, k, stride, padding, input size): the stem, a layer1 conv,
    // a strided layer2 conv, a 1x1 projection, a layer4 conv at 2x2.
    for (cin, cout, k, s, p, hw) in [
        (3, 64, 7, 2, 3, 64),
        (64, 64, 3, 1, 1, 16),
        (64, 128, 3, 2, 1, 16),
        (64, 128, 1, 2, 0, 16),
        (512, 512, 3, 1, 1, 2),
    ] {
        let x = Var::from_tensor(&randn(&[BATCH, cin, hw, hw], 1)).unwrap();
        let w = Var::from_tensor(&randn(&[cout, cin, k, k], 2)).unwrap();
        let id = format!("{cin}x{hw}x{hw}->{cout},{k}x{k}/{s}");
        both(c, "conv2d fwd+bwd", &id, &|| {
            let y = conv2d(x.as_tensor(), w.as_tensor(), s, p).unwrap();
            y.sum_all().unwrap().backward().unwrap();
        });
    }
}

fn batchnorm(c: &mut Criterion) {
    for (ch, hw) in [(64, 32), (128, 8)] {
        let vm = VarMap::new();
        let bn = BatchNorm2d::new(
            ch,
            1e-5,
            0.1,
            VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu),
        )
        .unwrap();
        let x = Var::from_tensor(&randn(&[BATCH, ch, hw, hw], 3)).unwrap();
        both(
            c,
            "batch-norm+relu fwd+bwd",
            &format!("{ch}x{hw}x{hw}"),
            &|| {
                let y = bn.forward_t(x.as_tensor(), true, true).unwrap();
                y.sum_all().unwrap().backward().unwrap();
            },
        );
    }
}

fn pool_and_residual(c: &mut Criterion) {
    let x = Var::from_tensor(&randn(&[BATCH, 64, 32, 32], 4)).unwrap();
    let pool = MaxPool2d::new(3, 2, 1);
    both(c, "max-pool 3x3/2 fwd+bwd", "64x32x32", &|| {
        pool.forward(x.as_tensor())
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
    });
    let a = Var::from_tensor(&randn(&[BATCH, 64, 16, 16], 5)).unwrap();
    let b = Var::from_tensor(&randn(&[BATCH, 64, 16, 16], 6)).unwrap();
    both(c, "residual add+relu fwd+bwd", "64x16x16", &|| {
        add_relu(a.as_tensor(), b.as_tensor())
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
    });
}

criterion_group!(benches, conv, batchnorm, pool_and_residual);
criterion_main!(benches);
