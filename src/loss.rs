//! The PIRL objective: a noise-contrastive (InfoNCE) loss against the memory
//! bank, s(a, b) = cos(a, b) / τ.

use candle_core::{D, Result, Tensor};

/// L_NCE(m, x): for each row, the positive m_i against the negatives.
///
/// `-log( exp(s(m_i, x_i)) / (exp(s(m_i, x_i)) + Σ_j exp(s(n_j, x_i))) )`,
/// averaged over rows. Inputs are already L2-normalised, so the dot product
/// is the cosine.
///
/// # Shapes
/// `m: (B, D)` (bank rows, no gradient), `x: (B, D)`, `negatives`: `(N, D)`
/// shared by every row, or `(B, K, D)`, K of its own for each row -> scalar.
pub fn nce_loss(m: &Tensor, x: &Tensor, negatives: &Tensor, tau: f64) -> Result<Tensor> {
    let pos = (m * x)?.sum_keepdim(1)?; // (B, 1)
    let neg = if negatives.rank() == 3 {
        // (B, 1, D) x (B, D, K) -> (B, K)
        x.unsqueeze(1)?
            .matmul(&negatives.transpose(1, 2)?.contiguous()?)?
            .squeeze(1)?
    } else {
        x.matmul(&negatives.t()?)? // (B, N)
    };
    let logits = (Tensor::cat(&[&pos, &neg], 1)? / tau)?;
    let lsm = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
    lsm.narrow(1, 0, 1)?.mean_all()?.neg()
}

/// L = λ mean_t L_NCE(m, g_t(v_It)) + (1 - λ) L_NCE(m, f(v_I)), the pretext
/// term averaged over the branches `gs` (one for jigsaw or rotation alone).
pub fn pirl_loss_multi(
    m: &Tensor,
    f: &Tensor,
    gs: &[Tensor],
    negatives: &Tensor,
    tau: f64,
    lambda: f64,
) -> Result<Tensor> {
    let mut lg = nce_loss(m, &gs[0], negatives, tau)?;
    for g in &gs[1..] {
        lg = (lg + nce_loss(m, g, negatives, tau)?)?;
    }
    if gs.len() > 1 {
        lg = (lg / gs.len() as f64)?;
    }
    let lf = nce_loss(m, f, negatives, tau)?;
    (lg * lambda)? + (lf * (1.0 - lambda))?
}

/// L = λ L_NCE(m, g(v_It)) + (1 - λ) L_NCE(m, f(v_I)).
pub fn pirl_loss(
    m: &Tensor,
    f: &Tensor,
    g: &Tensor,
    negatives: &Tensor,
    tau: f64,
    lambda: f64,
) -> Result<Tensor> {
    let lg = nce_loss(m, g, negatives, tau)?;
    let lf = nce_loss(m, f, negatives, tau)?;
    (lg * lambda)? + (lf * (1.0 - lambda))?
}
