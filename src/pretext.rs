//! Pretext transforms t(I): the 3x3 jigsaw and rotation.

use rand::Rng;

use crate::augment::{self, AugmentConfig, Chw};
use crate::data::RgbImage;

/// A jigsaw sample: 9 patches in shuffled order and how they were made.
#[derive(Debug, Clone)]
pub struct Jigsaw {
    /// `patches[k]` is the crop of grid cell `perm[k]` (cells row-major).
    pub patches: Vec<Chw>,
    pub perm: [usize; 9],
    /// Top-left corner, in source pixels, of the crop taken in each cell.
    pub offsets: [(usize, usize); 9],
}

/// Splits the image into a 3x3 grid of cells (side `size / 3`), takes a random
/// `patch x patch` crop inside each cell, jitters each patch's colour
/// independently (`cfg`, or none), and shuffles the patches by a uniformly
/// random permutation.
pub fn jigsaw<R: Rng>(
    img: &RgbImage,
    patch: usize,
    cfg: Option<&AugmentConfig>,
    rng: &mut R,
) -> Jigsaw {
    let cell = img.size / 3;
    assert!(
        patch <= cell,
        "jigsaw patch {patch} larger than the cell {cell}"
    );
    let mut offsets = [(0, 0); 9];
    let mut cells = Vec::with_capacity(9);
    for (c, off) in offsets.iter_mut().enumerate() {
        let (gy, gx) = (c / 3, c % 3);
        let y0 = gy * cell + rng.random_range(0..=cell - patch);
        let x0 = gx * cell + rng.random_range(0..=cell - patch);
        *off = (y0, x0);
        let mut p = augment::crop_exact(img, y0, x0, patch);
        if let Some(cfg) = cfg {
            augment::photometric(&mut p, cfg, rng);
        }
        cells.push(p);
    }
    let mut perm = [0, 1, 2, 3, 4, 5, 6, 7, 8];
    crate::rng::shuffle(&mut perm, rng);
    let patches = perm.iter().map(|&c| cells[c].clone()).collect();
    Jigsaw {
        patches,
        perm,
        offsets,
    }
}

/// A rotation sample: an augmented view turned by `quarter_turns * 90` degrees.
pub fn rotation<R: Rng>(
    img: &RgbImage,
    out: usize,
    cfg: &AugmentConfig,
    rng: &mut R,
) -> (Chw, usize) {
    let v = augment::image_view(img, out, cfg, rng);
    let k = rng.random_range(0..4usize);
    (augment::rotate90(&v, k), k)
}
