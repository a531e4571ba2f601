//! The encoder and the PIRL heads, and their seeded initialisation.

pub mod resnet;

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::{Linear, VarBuilder, VarMap};
use rand::Rng;

pub use resnet::{Arch, ResNet, ResNetConfig, Stage};

/// Output dimension of the heads f and g (the paper's 128).
pub const EMBED_DIM: usize = 128;

/// Which pretext branch feeds head g.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PretextKind {
    /// 3x3 jigsaw: per-patch head, 9x128 concatenated, projected to 128.
    Jigsaw,
    /// Image rotated by 0/90/180/270 degrees, one head.
    Rotation,
    /// Both, as the paper's combined pretext: each branch has its own head
    /// g, and the pretext term is the mean of their two NCE losses.
    JigsawRotation,
}

/// One pretext transform.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Branch {
    Jigsaw,
    Rotation,
}

impl PretextKind {
    /// The branches, in the order their inputs and heads come.
    pub fn branches(self) -> &'static [Branch] {
        match self {
            PretextKind::Jigsaw => &[Branch::Jigsaw],
            PretextKind::Rotation => &[Branch::Rotation],
            PretextKind::JigsawRotation => &[Branch::Jigsaw, Branch::Rotation],
        }
    }
}

/// The projection heads' form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HeadKind {
    /// Linear(d, 128), as the paper.
    Linear,
    /// Linear(d, d), ReLU, Linear(d, 128), as VISSL's PIRL MLP variant.
    Mlp,
}

/// A projection head.
pub enum Head {
    Linear(Linear),
    /// Variables `<name>.0.*` and `<name>.2.*` (PyTorch Sequential's names).
    Mlp(Linear, Linear),
}

impl Head {
    pub fn new(kind: HeadKind, d_in: usize, d_out: usize, vb: VarBuilder) -> Result<Head> {
        Ok(match kind {
            HeadKind::Linear => Head::Linear(candle_nn::linear(d_in, d_out, vb)?),
            HeadKind::Mlp => Head::Mlp(
                candle_nn::linear(d_in, d_in, vb.pp("0"))?,
                candle_nn::linear(d_in, d_out, vb.pp("2"))?,
            ),
        })
    }
}

impl Module for Head {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Head::Linear(l) => l.forward(x),
            Head::Mlp(a, b) => b.forward(&a.forward(x)?.relu()?),
        }
    }
}

/// A pretext branch's head g (and, for the jigsaw, the projection of the
/// 9 concatenated patch embeddings).
pub struct PretextHead {
    pub branch: Branch,
    pub head: Head,
    pub proj: Option<Linear>,
}

/// Encoder θ with heads f (image branch) and g (one per pretext branch).
pub struct PirlModel {
    pub encoder: ResNet,
    pub head_f: Head,
    pub heads_g: Vec<PretextHead>,
    pub pretext: PretextKind,
}

impl PirlModel {
    /// The heads' variables are `head_f`, `head_g` (+ `head_g_proj` for the
    /// jigsaw) and, for the second branch of the combined pretext, `head_r`;
    /// all sort after `encoder.*`, so a seed gives the same encoder whatever
    /// the heads.
    pub fn new(
        cfg: &ResNetConfig,
        pretext: PretextKind,
        head: HeadKind,
        vb: VarBuilder,
    ) -> Result<Self> {
        let encoder = ResNet::new(cfg, vb.pp("encoder"))?;
        let d = cfg.feature_dim();
        let head_f = Head::new(head, d, EMBED_DIM, vb.pp("head_f"))?;
        let mut heads_g = Vec::new();
        for (i, &branch) in pretext.branches().iter().enumerate() {
            let name = if i == 0 { "head_g" } else { "head_r" };
            let proj = match branch {
                Branch::Jigsaw => Some(candle_nn::linear(
                    9 * EMBED_DIM,
                    EMBED_DIM,
                    vb.pp(format!("{name}_proj")),
                )?),
                Branch::Rotation => None,
            };
            heads_g.push(PretextHead {
                branch,
                head: Head::new(head, d, EMBED_DIM, vb.pp(name))?,
                proj,
            });
        }
        Ok(Self {
            encoder,
            head_f,
            heads_g,
            pretext,
        })
    }

    /// f(v_I), L2-normalised.
    ///
    /// # Shapes
    /// `(B, 3, H, W)` -> `(B, 128)`.
    pub fn embed_image(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        l2_normalize(&self.head_f.forward(&self.encoder.forward_t(x, train)?)?)
    }

    /// g(v_It) of each pretext branch, L2-normalised, from that branch's input.
    ///
    /// # Shapes
    /// Jigsaw: `(9B, 3, P, P)` patches in shuffled order, image-major -> `(B, 128)`.
    /// Rotation: `(B, 3, H, W)` -> `(B, 128)`.
    pub fn embed_pretexts(&self, xs: &[Tensor], train: bool) -> Result<Vec<Tensor>> {
        self.heads_g
            .iter()
            .zip(xs)
            .map(|(h, x)| {
                let z = h.head.forward(&self.encoder.forward_t(x, train)?)?;
                let z = match &h.proj {
                    Some(proj) => {
                        let b = z.dim(0)? / 9;
                        proj.forward(&z.reshape((b, 9 * EMBED_DIM))?)?
                    }
                    None => z,
                };
                l2_normalize(&z)
            })
            .collect()
    }
}

/// Rows divided by their L2 norm. `(B, D) -> (B, D)`.
pub fn l2_normalize(x: &Tensor) -> Result<Tensor> {
    let n = x.sqr()?.sum_keepdim(1)?.sqrt()?.clamp(1e-12, f64::MAX)?;
    x.broadcast_div(&n)
}

/// A fresh VarMap-backed model on `device`, every parameter initialised from
/// `seed` (candle's own CPU initialisers are unseeded).
pub fn build(
    cfg: &ResNetConfig,
    pretext: PretextKind,
    head: HeadKind,
    seed: u64,
    dtype: DType,
    device: &Device,
) -> Result<(VarMap, PirlModel)> {
    let vm = VarMap::new();
    let vb = VarBuilder::from_varmap(&vm, dtype, device);
    let model = PirlModel::new(cfg, pretext, head, vb)?;
    seeded_init(&vm, seed)?;
    Ok((vm, model))
}

/// The encoder alone (variables `encoder.*`), seeded as [`build`] seeds it:
/// `encoder.*` sorts before every head's name, so a seed gives the same
/// encoder here as at the start of pretraining.
pub fn build_encoder(
    cfg: &ResNetConfig,
    seed: u64,
    dtype: DType,
    device: &Device,
) -> Result<(VarMap, ResNet)> {
    let vm = VarMap::new();
    let vb = VarBuilder::from_varmap(&vm, dtype, device);
    let enc = ResNet::new(cfg, vb.pp("encoder"))?;
    seeded_init(&vm, seed)?;
    Ok((vm, enc))
}

/// Re-initialises every variable deterministically, as torchvision does:
/// conv weights Kaiming-normal (fan-out, ReLU), linear weights and biases
/// uniform in ±1/sqrt(fan_in), BatchNorm weight 1, bias 0, running mean 0,
/// running variance 1.
pub fn seeded_init(vm: &VarMap, seed: u64) -> Result<()> {
    let data = vm.data().lock().expect("varmap lock");
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    for (k, name) in names.iter().enumerate() {
        let var = &data[*name];
        let shape = var.shape().clone();
        let dims = shape.dims().to_vec();
        let n = shape.elem_count();
        let mut rng = crate::rng::stream(seed, "init", k as u64, 0);
        let is_bn = |n: &str| {
            n.contains(".bn")
                || n.starts_with("bn")
                || n.contains("downsample.1")
                || n.contains(".bn1")
        };
        let values: Vec<f64> = if name.ends_with("running_mean") {
            vec![0.0; n]
        } else if name.ends_with("running_var") {
            vec![1.0; n]
        } else if dims.len() == 4 {
            let fan_out = (dims[0] * dims[2] * dims[3]) as f64;
            let std = (2.0 / fan_out).sqrt();
            (0..n).map(|_| std * crate::rng::normal(&mut rng)).collect()
        } else if dims.len() == 2 {
            let bound = 1.0 / (dims[1] as f64).sqrt();
            (0..n).map(|_| rng.random_range(-bound..bound)).collect()
        } else if is_bn(name) {
            if name.ends_with("weight") {
                vec![1.0; n]
            } else {
                vec![0.0; n]
            }
        } else {
            // A linear bias: its weight is the sibling `.weight`.
            let wname = name.trim_end_matches("bias").to_string() + "weight";
            let fan_in = data
                .get(&wname)
                .map(|w| w.dims().get(1).copied().unwrap_or(1))
                .unwrap_or(1);
            let bound = 1.0 / (fan_in as f64).sqrt();
            (0..n).map(|_| rng.random_range(-bound..bound)).collect()
        };
        let t = Tensor::from_vec(values, dims.as_slice(), var.device())?.to_dtype(var.dtype())?;
        var.set(&t)?;
    }
    Ok(())
}
