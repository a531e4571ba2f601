//! The PIRL loss and the memory bank against hand-computed values.

use candle_core::{Device, Tensor};
use pirlkit::loss::{nce_loss, pirl_loss, pirl_loss_multi};
use pirlkit::memory_bank::MemoryBank;

fn t(v: &[f32], r: usize, c: usize) -> Tensor {
    Tensor::from_slice(v, (r, c), &Device::Cpu).unwrap()
}

// Reference (Python, math module):
//   l1 = log(2 e^1.2 + e^1.6 + e^-1.2) - 1.2 ; l2 = log(2 e^1.2 + e^1.6 + e^-1.6) - 1.2
//   (l1 + l2) / 2 = 1.2718811500986886
//   g1 = log(2 e^2 + e^0 + e^-2) - 2 ; g2 = log(2 e^2 + 2 e^0) - 2
//   (g1 + g2) / 2 = 0.7936198484546433
const M: [f32; 4] = [1.0, 0.0, 0.0, 1.0];
const F: [f32; 4] = [0.6, 0.8, 0.8, 0.6];
const G: [f32; 4] = [1.0, 0.0, 0.0, 1.0];
const NEG: [f32; 6] = [1.0, 0.0, 0.0, 1.0, -1.0, 0.0];

#[test]
fn nce_loss_matches_hand_computation() {
    let l = nce_loss(&t(&M, 2, 2), &t(&F, 2, 2), &t(&NEG, 3, 2), 0.5)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!((l as f64 - 1.2718811500986886).abs() < 1e-5, "{l}");
    let l = nce_loss(&t(&M, 2, 2), &t(&G, 2, 2), &t(&NEG, 3, 2), 0.5)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!((l as f64 - 0.7936198484546433).abs() < 1e-5, "{l}");
}

#[test]
fn pirl_loss_weighs_the_two_terms_by_lambda() {
    let (m, f, g, n) = (t(&M, 2, 2), t(&F, 2, 2), t(&G, 2, 2), t(&NEG, 3, 2));
    for lambda in [0.0, 0.5, 0.9] {
        let l = pirl_loss(&m, &f, &g, &n, 0.5, lambda)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap() as f64;
        let want = lambda * 0.7936198484546433 + (1.0 - lambda) * 1.2718811500986886;
        assert!((l - want).abs() < 1e-5, "lambda {lambda}: {l} vs {want}");
    }
}

#[test]
fn the_combined_pretext_averages_its_two_branch_terms() {
    // g1 = G (term 0.79362), g2 = F (term 1.27188): the pretext term is
    // their mean, 1.03275, weighed by lambda beside the image term.
    let (m, f, g, n) = (t(&M, 2, 2), t(&F, 2, 2), t(&G, 2, 2), t(&NEG, 3, 2));
    for lambda in [0.0, 0.5, 0.9] {
        let l = pirl_loss_multi(&m, &f, &[g.clone(), f.clone()], &n, 0.5, lambda)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap() as f64;
        let pretext = (0.7936198484546433 + 1.2718811500986886) / 2.0;
        let want = lambda * pretext + (1.0 - lambda) * 1.2718811500986886;
        assert!((l - want).abs() < 1e-5, "lambda {lambda}: {l} vs {want}");
    }
    // One branch: the same as the paper's two-term loss.
    let one = pirl_loss_multi(&m, &f, &[g.clone()], &n, 0.5, 0.3).unwrap();
    let two = pirl_loss(&m, &f, &g, &n, 0.5, 0.3).unwrap();
    assert_eq!(
        one.to_scalar::<f32>().unwrap(),
        two.to_scalar::<f32>().unwrap()
    );
}

#[test]
fn heads_and_branches_have_their_variables_and_leave_the_encoder_alone() {
    use pirlkit::model::{HeadKind, PretextKind, ResNetConfig, build};
    let cfg = ResNetConfig {
        width: 0.0625,
        ..Default::default()
    };
    let names = |kind, head| {
        let (vm, _) = build(&cfg, kind, head, 3, candle_core::DType::F32, &Device::Cpu).unwrap();
        let d = vm.data().lock().unwrap();
        let mut n: Vec<String> = d
            .keys()
            .filter(|k| !k.starts_with("encoder."))
            .cloned()
            .collect();
        n.sort();
        let enc: Vec<f32> = d["encoder.conv1.weight"]
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        (n, enc)
    };
    let (lin, enc_a) = names(PretextKind::Jigsaw, HeadKind::Linear);
    assert_eq!(
        lin,
        [
            "head_f.bias",
            "head_f.weight",
            "head_g.bias",
            "head_g.weight",
            "head_g_proj.bias",
            "head_g_proj.weight"
        ]
    );
    let (both, enc_b) = names(PretextKind::JigsawRotation, HeadKind::Mlp);
    for want in [
        "head_f.0.weight",
        "head_f.2.weight",
        "head_g.2.bias",
        "head_g_proj.weight",
        "head_r.0.weight",
        "head_r.2.weight",
    ] {
        assert!(both.iter().any(|n| n == want), "{want} missing in {both:?}");
    }
    assert!(
        !both.iter().any(|n| n.starts_with("head_r_proj")),
        "{both:?}"
    );
    // The same seed gives the same encoder whatever the heads.
    assert_eq!(enc_a, enc_b);
}

#[test]
fn loss_of_a_perfect_match_falls_with_temperature() {
    // The positive equals x and the negatives are orthogonal: a lower τ
    // sharpens the softmax and lowers the loss.
    let (m, n) = (t(&M, 2, 2), t(&[0.0, 0.0, 0.0, 0.0], 2, 2));
    let hi = nce_loss(&m, &m, &n, 1.0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    let lo = nce_loss(&m, &m, &n, 0.07)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    // τ = 1: -log(e / (e + 2)) = 0.551444713932051
    assert!((hi as f64 - 0.551444713932051).abs() < 1e-5, "{hi}");
    assert!(lo < 1e-5, "{lo}");
}

#[test]
fn bank_update_is_normalized_momentum_average() {
    let mut b = MemoryBank::new(3, 2, 0.5);
    b.fill(&[0, 1, 2], &[2.0, 0.0, 0.0, 3.0, 3.0, 4.0]);
    assert_eq!(b.row(0), &[1.0, 0.0]);
    assert_eq!(b.row(1), &[0.0, 1.0]);
    assert!((b.row(2)[0] - 0.6).abs() < 1e-6 && (b.row(2)[1] - 0.8).abs() < 1e-6);
    // m0 <- normalize(0.5 [1, 0] + 0.5 [0, 1]) = [0.70710678, 0.70710678]
    b.update(&[0], &[0.0, 1.0]);
    let r = std::f32::consts::FRAC_1_SQRT_2;
    assert!(
        (b.row(0)[0] - r).abs() < 1e-6 && (b.row(0)[1] - r).abs() < 1e-6,
        "{:?}",
        b.row(0)
    );
    // Rows not in the batch are untouched.
    assert_eq!(b.row(1), &[0.0, 1.0]);
    // Momentum 0.75: normalize(0.75 [0, 1] + 0.25 [1, 0]) = [0.31622777, 0.9486833]
    let mut b2 = MemoryBank::new(1, 2, 0.75);
    b2.fill(&[0], &[0.0, 1.0]);
    b2.update(&[0], &[1.0, 0.0]);
    assert!(
        (b2.row(0)[0] - 0.316_227_77).abs() < 1e-6 && (b2.row(0)[1] - 0.948_683_3).abs() < 1e-6
    );
}

#[test]
fn negatives_are_distinct_and_seeded() {
    let b = MemoryBank::new(100, 4, 0.5);
    let a = b.sample_negatives(50, &[], &mut pirlkit::rng::stream(7, "negatives", 0, 0));
    let c = b.sample_negatives(50, &[], &mut pirlkit::rng::stream(7, "negatives", 0, 0));
    assert_eq!(a, c);
    let mut s = a.clone();
    s.sort();
    s.dedup();
    assert_eq!(s.len(), 50);
    assert!(a.iter().all(|&i| i < 100));
    let d = b.sample_negatives(50, &[], &mut pirlkit::rng::stream(8, "negatives", 0, 0));
    assert_ne!(a, d);
}

/// Regression: negatives were drawn from the whole bank, so about half of a
/// batch's images (1023 of 2000 rows) had their own positive among the
/// negatives, and with 1999 negatives nearly all did (the two identical
/// logits cancel the pull towards the positive). A batch's own rows are
/// never its negatives now.
#[test]
fn negatives_never_include_the_batch_itself() {
    let b = MemoryBank::new(100, 4, 0.5);
    let batch: Vec<usize> = (10..30).collect();
    for seed in 0..20 {
        let n = b.sample_negatives(
            50,
            &batch,
            &mut pirlkit::rng::stream(seed, "negatives", 0, 0),
        );
        assert_eq!(n.len(), 50);
        assert!(n.iter().all(|i| !batch.contains(i)), "{n:?}");
        let mut u = n.clone();
        u.sort();
        u.dedup();
        assert_eq!(u.len(), 50, "distinct");
    }
    // Asking for more than the other rows gives all of them.
    let all = b.sample_negatives(95, &batch, &mut pirlkit::rng::stream(0, "negatives", 0, 0));
    assert_eq!(all, (0..10).chain(30..100).collect::<Vec<_>>());
}

/// Per-anchor negatives `(B, K, D)`: row i's loss uses its own set. With the
/// hand-computed rows above: row 0 against NEG gives l1, row 1 against NEG
/// gives l2; giving row 1 instead the set {[-1, 0]} alone changes only its
/// term: l2' = log(e^1.2 + e^-1.6) - 1.2 (Python: 0.06008387...).
#[test]
fn per_anchor_negatives_use_each_rows_own_set() {
    let (m, f) = (t(&M, 2, 2), t(&F, 2, 2));
    let shared = nce_loss(&m, &f, &t(&NEG, 3, 2), 0.5)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    let both: Vec<f32> = NEG.iter().chain(NEG.iter()).copied().collect();
    let per = Tensor::from_slice(&both, (2, 3, 2), &Device::Cpu).unwrap();
    let l = nce_loss(&m, &f, &per, 0.5)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!((l - shared).abs() < 1e-6, "{l} vs {shared}");
    // Row 0: NEG (3 rows); row 1: [-1, 0] three times, i.e. 3 e^-1.6.
    let mixed: Vec<f32> = NEG
        .iter()
        .copied()
        .chain([-1.0, 0.0, -1.0, 0.0, -1.0, 0.0])
        .collect();
    let per = Tensor::from_slice(&mixed, (2, 3, 2), &Device::Cpu).unwrap();
    let l = nce_loss(&m, &f, &per, 0.5)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap() as f64;
    let l1 = (2.0 * 1.2f64.exp() + 1.6f64.exp() + (-1.2f64).exp()).ln() - 1.2;
    let l2 = (1.2f64.exp() + 3.0 * (-1.6f64).exp()).ln() - 1.2;
    assert!((l - (l1 + l2) / 2.0).abs() < 1e-5, "{l}");
}

/// The reference's draw: each anchor's negatives leave out its own row only
/// (a batch-mate's row may be among them), distinct within the anchor.
#[test]
fn per_anchor_negatives_leave_out_only_the_anchor() {
    let b = MemoryBank::new(40, 4, 0.5);
    let batch: Vec<usize> = (0..8).collect();
    let n =
        b.sample_negatives_per_anchor(30, &batch, &mut pirlkit::rng::stream(3, "negatives", 0, 0));
    assert_eq!(n.len(), 8 * 30);
    let mut mates = 0;
    for (k, set) in n.chunks(30).enumerate() {
        assert!(!set.contains(&batch[k]), "anchor {k} is its own negative");
        let mut u = set.to_vec();
        u.sort();
        u.dedup();
        assert_eq!(u.len(), 30);
        mates += set.iter().filter(|i| batch.contains(i)).count();
    }
    assert!(
        mates > 0,
        "batch-mates are never drawn: that is the batch draw"
    );
    // Every other row when asked for more.
    let all =
        b.sample_negatives_per_anchor(99, &[5], &mut pirlkit::rng::stream(0, "negatives", 0, 0));
    assert_eq!(all, (0..5).chain(6..40).collect::<Vec<_>>());
}
