//! The sizes of one convolution ([`Geom`]) and which kernel computes it
//! ([`Path`]): both functions of the shapes only, so the results of a conv
//! do not depend on the number of threads.

use candle_core::{Result, bail};

use super::dense::DENSE_MAX;
use super::taps::per_tap;
use super::winograd::winograd;

/// All sizes of one convolution.
#[derive(Debug, Clone, Copy)]
pub(super) struct Geom {
    pub(super) n: usize,
    pub(super) cin: usize,
    pub(super) h: usize,
    pub(super) w: usize,
    pub(super) cout: usize,
    pub(super) kh: usize,
    pub(super) kw: usize,
    pub(super) ho: usize,
    pub(super) wo: usize,
    pub(super) s: usize,
    pub(super) p: usize,
}

impl Geom {
    pub(super) fn new(xd: &[usize], wd: &[usize], s: usize, p: usize) -> Result<Self> {
        let &[n, cin, h, w] = xd else {
            bail!("conv2d: x must be (N, Cin, H, W), got {xd:?}")
        };
        let &[cout, cin_w, kh, kw] = wd else {
            bail!("conv2d: w must be (Cout, Cin, kh, kw), got {wd:?}")
        };
        if cin != cin_w {
            bail!("conv2d: x has {cin} channels but w expects {cin_w}")
        }
        if s == 0 {
            bail!("conv2d: stride must be >= 1")
        }
        if kh == 0 || kw == 0 {
            bail!("conv2d: empty kernel {kh}x{kw}")
        }
        if h + 2 * p < kh || w + 2 * p < kw {
            bail!(
                "conv2d: kernel {kh}x{kw} larger than padded input {}x{}",
                h + 2 * p,
                w + 2 * p
            )
        }
        let ho = (h + 2 * p - kh) / s + 1;
        let wo = (w + 2 * p - kw) / s + 1;
        Ok(Self {
            n,
            cin,
            h,
            w,
            cout,
            kh,
            kw,
            ho,
            wo,
            s,
            p,
        })
    }

    pub(super) fn k(&self) -> usize {
        self.cin * self.kh * self.kw
    }
    /// For profiles: `N x Cin x HxW -> Cout, kh x kw / s`.
    pub(super) fn describe(&self) -> String {
        format!(
            "{}x{}x{}x{} -> {}, {}x{}/{}",
            self.n, self.cin, self.h, self.w, self.cout, self.kh, self.kw, self.s
        )
    }
    pub(super) fn hw(&self) -> usize {
        self.h * self.w
    }
    pub(super) fn pix(&self) -> usize {
        self.ho * self.wo
    }
    pub(super) fn x_len(&self) -> usize {
        self.n * self.cin * self.hw()
    }
    pub(super) fn w_len(&self) -> usize {
        self.cout * self.k()
    }
    pub(super) fn y_len(&self) -> usize {
        self.n * self.cout * self.pix()
    }
    /// 1x1, stride 1, no padding: the input plane is the col matrix.
    pub(super) fn pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.s == 1 && self.p == 0
    }
    /// Small planes: the conv as one dense `(Cout*Ho*Wo) x (Cin*H*W)` matrix
    /// does fewer multiply-adds than im2col (`H*W <= kh*kw`: at 2x2 pixels a
    /// 3x3 kernel with padding 1 has 4 of its 9 taps inside the plane, at 1x1
    /// one), needs no im2col at all (NCHW already is `N x (Cin*H*W)`), and
    /// its matrix stays small (at most [`DENSE_MAX`] values).
    pub(super) fn dense(&self) -> bool {
        !self.pointwise()
            && self.hw() <= self.kh * self.kw
            && self.cout * self.pix() * self.cin * self.hw() <= DENSE_MAX
    }
    /// Whether the dense matrix (`Cout*Ho*Wo x Cin*H*W`) is small next to
    /// the batch's input (`N x Cin*H*W`): at most 4 times its values. Then
    /// the dense path beats one GEMM per tap on a small plane (PIRL's 576
    /// patches at 2x2, 128 channels: forward 6.6-7.5 against 10.4-10.7 ms,
    /// backward 9.9-12.3 against 20.7-21.1); with few images and many
    /// channels the matrix is 16 to 64 times the input and the per-tap
    /// GEMMs win (64 images at 256 channels: forward 5.7-5.9 against
    /// 11.0-12.5 ms, backward about even).
    pub(super) fn dense_pays(&self) -> bool {
        self.cout * self.pix() <= 4 * self.n
    }
    /// Stride 1 and an output plane the size of the input (a `2p+1` square
    /// kernel): each tap reads the input plane shifted by a constant.
    pub(super) fn same(&self) -> bool {
        self.s == 1 && self.ho == self.h && self.wo == self.w && !self.pointwise()
    }
    /// Nothing to compute (some size is zero); outputs are all zeros.
    pub(super) fn degenerate(&self) -> bool {
        self.n == 0 || self.cout == 0 || self.cin == 0 || self.h == 0 || self.w == 0
    }

    /// Half-open range of output columns `ox` whose input column
    /// `ox*s + kx - p` lies inside `[0, w)`.
    #[inline]
    pub(super) fn ox_range(&self, kx: usize) -> (usize, usize) {
        crate::ops::tap_outputs(kx, self.p, self.s, self.w, self.wo)
    }

    /// Input row for output row `oy` and kernel row `ky`, if inside.
    #[inline]
    pub(super) fn in_row(&self, oy: usize, ky: usize) -> Option<usize> {
        let iy = oy * self.s + ky;
        (iy >= self.p && iy - self.p < self.h).then(|| iy - self.p)
    }
}

/// Which kernel computes a conv, the first that applies (a function of the
/// shapes only, so results do not depend on the thread count).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Path {
    /// Stride-1 3x3 convs with padding 1 on planes of 16 pixels and more.
    Winograd,
    /// Other stride-1 "same" convs on planes of 4 to 36 pixels, unless the
    /// dense path applies and pays ([`Geom::dense_pays`]).
    Taps,
    /// Other planes of at most `kh*kw` pixels (the forward only from
    /// [`DENSE_FWD_MIN_BATCH`](super::dense::DENSE_FWD_MIN_BATCH) images; im2col below).
    Dense,
    Im2col,
}

impl Path {
    pub(super) fn of(g: &Geom) -> Self {
        if g.degenerate() {
            Self::Im2col
        } else if winograd(g) {
            Self::Winograd
        } else if per_tap(g) && !(g.dense() && g.dense_pays()) {
            Self::Taps
        } else if g.dense() {
            Self::Dense
        } else {
            Self::Im2col
        }
    }
}
