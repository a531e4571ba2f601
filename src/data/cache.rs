//! Decode and resize once, in parallel, into a uint8 cache keyed by the file's
//! content hash and the target size. A changed file has a new hash, so its old
//! entry is never read again. Entries are written atomically (temp + rename).

use std::io::Cursor;
use std::path::{Path, PathBuf};

use image::imageops::FilterType;
use rayon::prelude::*;
use sha2::{Digest, Sha256};

use super::{DataError, Result, Sample, io_err};

/// Largest accepted image side, and decoder allocation cap: a guard against
/// decompression bombs.
pub const MAX_SIDE: u32 = 16_384;
pub const MAX_ALLOC: u64 = 1 << 30;

/// A square RGB uint8 image, row-major, interleaved (`size * size * 3` bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RgbImage {
    pub size: usize,
    pub data: Vec<u8>,
}

impl RgbImage {
    #[inline]
    pub fn px(&self, y: usize, x: usize, c: usize) -> u8 {
        self.data[(y * self.size + x) * 3 + c]
    }
}

/// Where cached images live: `<dir>/<size>/<sha256 of file>.rgb`.
#[derive(Debug, Clone)]
pub struct ImageCache {
    pub dir: PathBuf,
}

impl ImageCache {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The default cache folder: `$PIRLKIT_CACHE`, else `$XDG_CACHE_HOME/pirlkit`,
    /// else `~/.cache/pirlkit`, else `.pirlkit-cache`.
    pub fn default_dir() -> PathBuf {
        if let Some(d) = std::env::var_os("PIRLKIT_CACHE") {
            return d.into();
        }
        if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
            return PathBuf::from(d).join("pirlkit");
        }
        if let Some(h) = std::env::var_os("HOME") {
            return PathBuf::from(h).join(".cache").join("pirlkit");
        }
        PathBuf::from(".pirlkit-cache")
    }

    /// Loads every sample at `size x size`, from the cache when the file's
    /// content is unchanged, else by decoding it. Errors name the image.
    pub fn load_all(&self, samples: &[Sample], size: usize) -> Result<Vec<RgbImage>> {
        let sub = self.dir.join(size.to_string());
        std::fs::create_dir_all(&sub).map_err(io_err(&sub))?;
        samples.par_iter().map(|s| self.load_one(&s.path, size, &sub)).collect()
    }

    fn load_one(&self, path: &Path, size: usize, sub: &Path) -> Result<RgbImage> {
        let bytes = std::fs::read(path).map_err(io_err(path))?;
        let key = hex::encode(&Sha256::digest(&bytes)[..16]);
        let entry = sub.join(format!("{key}.rgb"));
        let want = size * size * 3;
        if let Ok(data) = std::fs::read(&entry)
            && data.len() == want
        {
            return Ok(RgbImage { size, data });
        }
        let img = decode_resize(&bytes, size).map_err(|msg| DataError::Image { path: path.into(), msg })?;
        let tmp = sub.join(format!(".{key}.{}.tmp", std::process::id()));
        std::fs::write(&tmp, &img.data).map_err(io_err(&tmp))?;
        std::fs::rename(&tmp, &entry).map_err(io_err(&entry))?;
        Ok(img)
    }
}

/// Decodes any supported image (format from content), converts it to RGB,
/// resizes its shorter side to `size` and centre-crops a square.
pub fn decode_resize(bytes: &[u8], size: usize) -> std::result::Result<RgbImage, String> {
    if bytes.is_empty() {
        return Err("empty file".into());
    }
    let rgb = if super::dicom::is_dicom(bytes) {
        // DICOM: first frame as 8-bit RGB, then the same resize and crop.
        super::dicom::decode_dicom(bytes)?
    } else {
        let mut reader = image::ImageReader::new(Cursor::new(bytes)).with_guessed_format().map_err(|e| e.to_string())?;
        if reader.format().is_none() {
            return Err("not a recognised image format (JPEG, PNG or DICOM expected)".into());
        }
        let mut limits = image::Limits::default();
        limits.max_image_width = Some(MAX_SIDE);
        limits.max_image_height = Some(MAX_SIDE);
        limits.max_alloc = Some(MAX_ALLOC);
        reader.limits(limits);
        reader.decode().map_err(|e| format!("cannot decode: {e}"))?.to_rgb8()
    };
    let (w, h) = rgb.dimensions();
    if w < 8 || h < 8 {
        return Err(format!("image is {w}x{h}, smaller than 8x8"));
    }
    let s = size as u32;
    let (nw, nh) = if w <= h {
        (s, ((h as u64 * s as u64 + w as u64 / 2) / w as u64).max(s as u64) as u32)
    } else {
        (((w as u64 * s as u64 + h as u64 / 2) / h as u64).max(s as u64) as u32, s)
    };
    let resized = image::imageops::resize(&rgb, nw, nh, FilterType::Triangle);
    let (x0, y0) = ((nw - s) / 2, (nh - s) / 2);
    let crop = image::imageops::crop_imm(&resized, x0, y0, s, s).to_image();
    Ok(RgbImage { size, data: crop.into_raw() })
}
