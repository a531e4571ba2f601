//! ResNet-18/34/50 with a width multiplier and BatchNorm that trains.
//!
//! Parameter names follow torchvision (`conv1.weight`, `bn1.running_mean`,
//! `layer1.0.conv1.weight`, `layer2.0.downsample.0.weight`, ...), so weights in
//! torchvision naming load as they are.

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

use crate::ops::{BatchNorm2d as BatchNorm, MaxPool2d};

/// Which ResNet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    Resnet18,
    Resnet34,
    Resnet50,
}

impl Arch {
    fn blocks(self) -> [usize; 4] {
        match self {
            Arch::Resnet18 => [2, 2, 2, 2],
            Arch::Resnet34 | Arch::Resnet50 => [3, 4, 6, 3],
        }
    }
    fn bottleneck(self) -> bool {
        matches!(self, Arch::Resnet50)
    }
}

/// A stage of the ResNet (for partial fine-tuning: freeze up to one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    Stem,
    Layer1,
    Layer2,
    Layer3,
    Layer4,
}

impl Stage {
    /// Variable-name prefixes (under `encoder.`) of this stage.
    pub fn prefixes(self) -> Vec<&'static str> {
        match self {
            Stage::Stem => vec!["encoder.conv1.", "encoder.bn1."],
            Stage::Layer1 => vec!["encoder.layer1."],
            Stage::Layer2 => vec!["encoder.layer2."],
            Stage::Layer3 => vec!["encoder.layer3."],
            Stage::Layer4 => vec!["encoder.layer4."],
        }
    }
    pub const ALL: [Stage; 5] = [
        Stage::Stem,
        Stage::Layer1,
        Stage::Layer2,
        Stage::Layer3,
        Stage::Layer4,
    ];
}

/// Encoder settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ResNetConfig {
    /// Architecture (default `resnet18`).
    pub arch: Arch,
    /// Channel multiplier on torchvision's widths (64, 128, 256, 512); default 1.0.
    pub width: f64,
    /// BatchNorm running-statistics momentum (PyTorch's convention); default 0.1.
    pub bn_momentum: f64,
    /// Bottleneck blocks only: put a stage's stride 2 on the first 1x1 conv,
    /// as the original ResNet (v1; Caffe and Keras weights) does, instead of
    /// on the 3x3 conv as torchvision (v1.5) does. Default false.
    pub stride_in_1x1: bool,
}

impl Default for ResNetConfig {
    fn default() -> Self {
        Self {
            arch: Arch::Resnet18,
            width: 1.0,
            bn_momentum: 0.1,
            stride_in_1x1: false,
        }
    }
}

impl ResNetConfig {
    /// Base width (channels of the stem and layer1), at least 4.
    pub fn base_channels(&self) -> usize {
        ((64.0 * self.width).round() as usize).max(4)
    }
    /// Dimension of the pooled feature vector.
    pub fn feature_dim(&self) -> usize {
        let b = self.base_channels() * 8;
        if self.arch.bottleneck() { b * 4 } else { b }
    }
    pub fn check(&self) -> std::result::Result<(), String> {
        if !(self.width.is_finite() && self.width > 0.0 && self.width <= 8.0) {
            return Err(format!("model.width must be in (0, 8], got {}", self.width));
        }
        if !(0.0..=1.0).contains(&self.bn_momentum) {
            return Err(format!(
                "model.bn_momentum must be in [0, 1], got {}",
                self.bn_momentum
            ));
        }
        Ok(())
    }
}

/// A bias-free convolution through pirlkit's fast CPU op (im2col + GEMM with
/// its own backward; candle's conv on other devices).
#[derive(Debug, Clone)]
struct Conv2d {
    weight: Tensor,
    stride: usize,
    padding: usize,
}

impl Conv2d {
    /// `relu?(bn(conv(x)))`, as one op where the CPU kernels apply.
    fn forward_bn(&self, bn: &BatchNorm, x: &Tensor, train: bool, relu: bool) -> Result<Tensor> {
        bn.forward_conv_t(x, &self.weight, (self.stride, self.padding), train, relu)
    }
}

fn conv(
    cin: usize,
    cout: usize,
    k: usize,
    stride: usize,
    padding: usize,
    vb: VarBuilder,
) -> Result<Conv2d> {
    // The initial values are replaced by `model::seeded_init`.
    let weight = vb.get_with_hints(
        (cout, cin, k, k),
        "weight",
        candle_nn::init::DEFAULT_KAIMING_NORMAL,
    )?;
    Ok(Conv2d {
        weight,
        stride,
        padding,
    })
}

fn bn(c: usize, momentum: f64, vb: VarBuilder) -> Result<BatchNorm> {
    BatchNorm::new(c, 1e-5, momentum, vb)
}

/// The 1x1 projection of the skip path, when the shape changes.
fn downsample(
    cin: usize,
    cout: usize,
    stride: usize,
    m: f64,
    vb: &VarBuilder,
) -> Result<Option<(Conv2d, BatchNorm)>> {
    if stride == 1 && cin == cout {
        return Ok(None);
    }
    Ok(Some((
        conv(cin, cout, 1, stride, 0, vb.pp("downsample.0"))?,
        bn(cout, m, vb.pp("downsample.1"))?,
    )))
}

#[derive(Debug, Clone)]
struct Block {
    convs: Vec<(Conv2d, BatchNorm)>,
    downsample: Option<(Conv2d, BatchNorm)>,
}

impl Block {
    fn basic(cin: usize, cout: usize, stride: usize, m: f64, vb: VarBuilder) -> Result<Self> {
        let convs = vec![
            (
                conv(cin, cout, 3, stride, 1, vb.pp("conv1"))?,
                bn(cout, m, vb.pp("bn1"))?,
            ),
            (
                conv(cout, cout, 3, 1, 1, vb.pp("conv2"))?,
                bn(cout, m, vb.pp("bn2"))?,
            ),
        ];
        Ok(Self {
            convs,
            downsample: downsample(cin, cout, stride, m, &vb)?,
        })
    }

    fn bottleneck(
        cin: usize,
        mid: usize,
        stride: usize,
        stride_in_1x1: bool,
        m: f64,
        vb: VarBuilder,
    ) -> Result<Self> {
        let cout = mid * 4;
        let (s1, s3) = if stride_in_1x1 {
            (stride, 1)
        } else {
            (1, stride)
        };
        let convs = vec![
            (
                conv(cin, mid, 1, s1, 0, vb.pp("conv1"))?,
                bn(mid, m, vb.pp("bn1"))?,
            ),
            (
                conv(mid, mid, 3, s3, 1, vb.pp("conv2"))?,
                bn(mid, m, vb.pp("bn2"))?,
            ),
            (
                conv(mid, cout, 1, 1, 0, vb.pp("conv3"))?,
                bn(cout, m, vb.pp("bn3"))?,
            ),
        ];
        Ok(Self {
            convs,
            downsample: downsample(cin, cout, stride, m, &vb)?,
        })
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let mut y = x.clone();
        let last = self.convs.len() - 1;
        for (i, (c, b)) in self.convs.iter().enumerate() {
            y = c.forward_bn(b, &y, train, i != last)?;
        }
        let skip = match &self.downsample {
            Some((c, b)) => c.forward_bn(b, x, train, false)?,
            None => x.clone(),
        };
        crate::ops::add_relu(&y, &skip)
    }
}

/// The encoder θ: stem (7x7/2 conv, BN, ReLU, 3x3/2 max-pool), four stages,
/// global average pool.
#[derive(Debug, Clone)]
pub struct ResNet {
    stem: (Conv2d, BatchNorm),
    pool: MaxPool2d,
    layers: Vec<Vec<Block>>,
    cfg: ResNetConfig,
}

impl ResNet {
    /// Builds the encoder under `vb` (names as torchvision, no prefix).
    pub fn new(cfg: &ResNetConfig, vb: VarBuilder) -> Result<Self> {
        let m = cfg.bn_momentum;
        let base = cfg.base_channels();
        let stem = (
            conv(3, base, 7, 2, 3, vb.pp("conv1"))?,
            bn(base, m, vb.pp("bn1"))?,
        );
        let mut layers = Vec::new();
        let mut cin = base;
        for (li, &n) in cfg.arch.blocks().iter().enumerate() {
            let width = base << li;
            let mut blocks = Vec::new();
            for bi in 0..n {
                let stride = if bi == 0 && li > 0 { 2 } else { 1 };
                let vbb = vb.pp(format!("layer{}.{}", li + 1, bi));
                let block = if cfg.arch.bottleneck() {
                    let b = Block::bottleneck(cin, width, stride, cfg.stride_in_1x1, m, vbb)?;
                    cin = width * 4;
                    b
                } else {
                    let b = Block::basic(cin, width, stride, m, vbb)?;
                    cin = width;
                    b
                };
                blocks.push(block);
            }
            layers.push(blocks);
        }
        Ok(Self {
            stem,
            pool: MaxPool2d::new(3, 2, 1),
            layers,
            cfg: cfg.clone(),
        })
    }

    /// The device its weights live on.
    pub fn device(&self) -> &candle_core::Device {
        self.stem.0.weight.device()
    }

    pub fn config(&self) -> &ResNetConfig {
        &self.cfg
    }

    /// Pooled features.
    ///
    /// # Shapes
    /// `x: (N, 3, H, W)` -> `(N, feature_dim)`. `train` selects batch
    /// statistics (and updates the running ones) in BatchNorm.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.forward_frozen(x, train, 0)
    }

    /// As [`ResNet::forward_t`], with the output of the first `frozen` stages
    /// (1 = the stem, 2 = the stem and layer1, ... 5 = all) detached, so the
    /// backward pass stops there: partial fine-tuning pays for the gradients
    /// of the trained stages only. The values are those of `forward_t`.
    pub fn forward_frozen(&self, x: &Tensor, train: bool, frozen: usize) -> Result<Tensor> {
        let (c, b) = &self.stem;
        let mut y = c.forward_bn(b, x, train, true)?;
        y = self.pool.forward(&y)?;
        if frozen >= 1 {
            y = y.detach();
        }
        for (li, layer) in self.layers.iter().enumerate() {
            for block in layer {
                y = block.forward_t(&y, train)?;
            }
            if frozen >= li + 2 {
                y = y.detach();
            }
        }
        y.mean((2, 3))
    }

    /// The globally average-pooled outputs of the given stages (1 = layer1
    /// ... 4 = layer4), concatenated in that order; BatchNorm in eval mode.
    /// Frozen features: run as [`crate::ops::inference`] on the CPU (no
    /// graph, intermediates freed as they go); the result carries no
    /// gradient.
    ///
    /// # Shapes
    /// `x: (N, 3, H, W)` -> `(N, sum of the stages' channels)`.
    pub fn pooled_stages(&self, x: &Tensor, stages: &[usize]) -> Result<Tensor> {
        let x = x.detach();
        crate::ops::inference(|| self.pooled_stages_tracked(&x, stages))
    }

    fn pooled_stages_tracked(&self, x: &Tensor, stages: &[usize]) -> Result<Tensor> {
        let (c, b) = &self.stem;
        let mut y = self.pool.forward(&c.forward_bn(b, x, false, true)?)?;
        let mut out = Vec::new();
        let last = stages
            .iter()
            .copied()
            .max()
            .unwrap_or(4)
            .min(self.layers.len());
        for (li, layer) in self.layers.iter().enumerate().take(last) {
            for block in layer {
                y = block.forward_t(&y, false)?;
            }
            if stages.contains(&(li + 1)) {
                out.push(y.mean((2, 3))?);
            }
        }
        Tensor::cat(&out, 1)
    }

    /// The output maps of the stem (after its max-pool) and of each stage,
    /// BatchNorm in eval mode, for looking inside (Grad-CAM): each map is
    /// passed through `hook(stage, map)` (0 = the stem, 1..=4 = layer1..4)
    /// and what it returns goes on to the next stage and into the result.
    /// On the graph unless run as [`crate::ops::inference`]; the last map,
    /// average-pooled, is [`ResNet::forward_t`]'s output in eval mode.
    ///
    /// # Shapes
    /// `x: (N, 3, H, W)` -> `[stem, layer1, layer2, layer3, layer4]`,
    /// `(N, C_s, H_s, W_s)` with `H_s` about H/4, H/4, H/8, H/16, H/32.
    pub fn stage_maps(
        &self,
        x: &Tensor,
        hook: &mut dyn FnMut(usize, Tensor) -> Result<Tensor>,
    ) -> Result<Vec<Tensor>> {
        let (c, b) = &self.stem;
        let mut y = hook(0, self.pool.forward(&c.forward_bn(b, x, false, true)?)?)?;
        let mut out = vec![y.clone()];
        for (li, layer) in self.layers.iter().enumerate() {
            for block in layer {
                y = block.forward_t(&y, false)?;
            }
            y = hook(li + 1, y)?;
            out.push(y.clone());
        }
        Ok(out)
    }

    /// Channels of stage `s` (1..=4).
    pub fn stage_channels(&self, s: usize) -> usize {
        let c = self.cfg.base_channels() << (s - 1);
        if self.cfg.arch.bottleneck() { c * 4 } else { c }
    }
}
