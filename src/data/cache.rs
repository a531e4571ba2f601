//! Decode and resize once, in parallel, into a uint8 cache keyed by the file's
//! content hash and the target size. A changed file has a new hash, so its old
//! entry is never read again. Entries are written atomically (temp + rename).

use std::collections::HashSet;
use std::io::Cursor;
use std::path::{Path, PathBuf};

use image::imageops::FilterType;
use rayon::prelude::*;
use serde::Serialize;
use sha2::{Digest, Sha256};

pub use super::dicom_lengths::check_dicom_lengths;
use super::limits::{MAX_ALLOC, MAX_SIDE, MIN_SIDE};
use super::{DataError, Dataset, Result, Sample, io_err};

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
    /// content is unchanged, else by decoding it. Stops at the first bad
    /// image; errors name the image.
    pub fn load_all(&self, samples: &[Sample], size: usize) -> Result<Vec<RgbImage>> {
        let sub = self.cache_subdir(size)?;
        samples
            .par_iter()
            .map(|s| self.load_one(&s.path, size, &sub).map_err(Fail::into_error))
            .collect()
    }

    /// Like [`ImageCache::load_all`], but an image that cannot be read or
    /// decoded is skipped and listed (id, path, error) instead of stopping the
    /// load. Returns the good images and the skipped ones, both in manifest
    /// order; [`drop_samples`] removes the skipped ones from the dataset so
    /// images and samples line up again. A cache that cannot be written is
    /// still an error: that is not the image's fault.
    pub fn load_all_skip_bad(
        &self,
        samples: &[Sample],
        size: usize,
    ) -> Result<(Vec<RgbImage>, Vec<Skipped>)> {
        let sub = self.cache_subdir(size)?;
        let results: Vec<std::result::Result<RgbImage, Fail>> = samples
            .par_iter()
            .map(|s| self.load_one(&s.path, size, &sub))
            .collect();
        let mut good = Vec::with_capacity(samples.len());
        let mut skipped = Vec::new();
        for (s, r) in samples.iter().zip(results) {
            match r {
                Ok(img) => good.push(img),
                Err(Fail::Image(e)) => {
                    let error = message(&e);
                    tracing::warn!("skipping {}: {error}", s.path.display());
                    skipped.push(Skipped {
                        id: s.id.clone(),
                        path: s.path.clone(),
                        error,
                    });
                }
                Err(Fail::Cache(e)) => return Err(e),
            }
        }
        Ok((good, skipped))
    }

    fn cache_subdir(&self, size: usize) -> Result<PathBuf> {
        if size == 0 {
            return Err(DataError::Other(
                "image size must be at least 1 pixel".into(),
            ));
        }
        let sub = self.dir.join(size.to_string());
        std::fs::create_dir_all(&sub).map_err(io_err(&sub))?;
        Ok(sub)
    }

    fn load_one(
        &self,
        path: &Path,
        size: usize,
        sub: &Path,
    ) -> std::result::Result<RgbImage, Fail> {
        let bytes = std::fs::read(path).map_err(|e| Fail::Image(io_err(path)(e)))?;
        let key = hex::encode(&Sha256::digest(&bytes)[..16]);
        let entry = sub.join(format!("{key}.rgb"));
        let want = size * size * 3;
        if let Ok(data) = std::fs::read(&entry)
            && data.len() == want
        {
            return Ok(RgbImage { size, data });
        }
        let img = decode_resize(&bytes, size).map_err(|msg| {
            Fail::Image(DataError::Image {
                path: path.into(),
                msg,
            })
        })?;
        // Unique per call: two samples with the same content (duplicates
        // exist in real data sets) may be decoded at once.
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = sub.join(format!(".{key}.{}.{n}.tmp", std::process::id()));
        std::fs::write(&tmp, &img.data).map_err(|e| Fail::Cache(io_err(&tmp)(e)))?;
        std::fs::rename(&tmp, &entry).map_err(|e| Fail::Cache(io_err(&entry)(e)))?;
        Ok(img)
    }
}

/// Why one image did not load: its own fault (unreadable, undecodable), or
/// the cache's (cannot write an entry).
enum Fail {
    Image(DataError),
    Cache(DataError),
}

impl Fail {
    fn into_error(self) -> DataError {
        match self {
            Fail::Image(e) | Fail::Cache(e) => e,
        }
    }
}

/// The error's message without the path (the caller lists the path beside it).
fn message(e: &DataError) -> String {
    match e {
        DataError::Io { source, .. } => source.to_string(),
        DataError::Image { msg, .. } => msg.clone(),
        other => other.to_string(),
    }
}

/// An image [`ImageCache::load_all_skip_bad`] left out, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Skipped {
    pub id: String,
    pub path: PathBuf,
    pub error: String,
}

/// Removes the skipped images from `ds`, so that its samples line up with
/// the images [`ImageCache::load_all_skip_bad`] returned.
pub fn drop_samples(ds: &mut Dataset, skipped: &[Skipped]) {
    if skipped.is_empty() {
        return;
    }
    let bad: HashSet<(&str, &Path)> = skipped
        .iter()
        .map(|s| (s.id.as_str(), s.path.as_path()))
        .collect();
    ds.samples
        .retain(|s| !bad.contains(&(s.id.as_str(), s.path.as_path())));
}

/// Decodes any supported image (format from content), converts it to RGB,
/// resizes its shorter side to `size` and centre-crops a square.
///
/// Never panics on bad input; refuses, before allocating the pixels, an image
/// with a side over [`MAX_SIDE`] and a PNG or JPEG whose header claims more
/// pixels than its compressed data can hold (truncated, or a decompression
/// bomb); a JPEG without its end-of-image marker is truncated. Images with a
/// side under [`MIN_SIDE`] are too small.
pub fn decode_resize(bytes: &[u8], size: usize) -> std::result::Result<RgbImage, String> {
    if bytes.is_empty() {
        return Err("empty file (0 bytes)".into());
    }
    if size == 0 {
        return Err("image size must be at least 1 pixel".into());
    }
    let rgb = if super::dicom::is_dicom(bytes) {
        // DICOM: first frame as 8-bit RGB, then the same resize and crop.
        check_dicom_lengths(bytes)?;
        super::dicom::decode_dicom(bytes)?
    } else {
        let mut reader = image::ImageReader::new(Cursor::new(bytes))
            .with_guessed_format()
            .map_err(|e| e.to_string())?;
        match reader.format() {
            None => {
                return Err("not a recognised image format (JPEG, PNG or DICOM expected)".into());
            }
            Some(image::ImageFormat::Jpeg) => check_jpeg(bytes)?,
            Some(image::ImageFormat::Png) => check_png(bytes)?,
            Some(_) => {}
        }
        let mut limits = image::Limits::default();
        limits.max_image_width = Some(MAX_SIDE);
        limits.max_image_height = Some(MAX_SIDE);
        limits.max_alloc = Some(MAX_ALLOC);
        reader.limits(limits);
        reader
            .decode()
            .map_err(|e| format!("cannot decode: {e}"))?
            .to_rgb8()
    };
    let (w, h) = rgb.dimensions();
    if w < MIN_SIDE || h < MIN_SIDE {
        return Err(format!(
            "image is {w}x{h} pixels, too small (each side must be at least {MIN_SIDE})"
        ));
    }
    Ok(resize_crop(&rgb, size))
}

/// Above this long/short side ratio the centre square is cut out before
/// resizing, so a 16384x8 strip does not become a `size * 2048`-pixel-wide
/// intermediate.
pub const CROP_FIRST_ASPECT: u32 = 4;

fn resize_crop(rgb: &image::RgbImage, size: usize) -> RgbImage {
    let (w, h) = rgb.dimensions();
    let s = size as u32;
    let short = w.min(h);
    if w.max(h) as u64 > CROP_FIRST_ASPECT as u64 * short as u64 {
        let sq = image::imageops::crop_imm(rgb, (w - short) / 2, (h - short) / 2, short, short)
            .to_image();
        let out = image::imageops::resize(&sq, s, s, FilterType::Triangle);
        return RgbImage {
            size,
            data: out.into_raw(),
        };
    }
    let (nw, nh) = if w <= h {
        (
            s,
            ((h as u64 * s as u64 + w as u64 / 2) / w as u64).max(s as u64) as u32,
        )
    } else {
        (
            ((w as u64 * s as u64 + h as u64 / 2) / h as u64).max(s as u64) as u32,
            s,
        )
    };
    let resized = image::imageops::resize(rgb, nw, nh, FilterType::Triangle);
    let (x0, y0) = ((nw - s) / 2, (nh - s) / 2);
    let crop = image::imageops::crop_imm(&resized, x0, y0, s, s).to_image();
    RgbImage {
        size,
        data: crop.into_raw(),
    }
}

fn check_side(kind: &str, w: u64, h: u64) -> std::result::Result<(), String> {
    if w > MAX_SIDE as u64 || h > MAX_SIDE as u64 {
        return Err(format!(
            "{kind} header claims {w}x{h} pixels; sides over {MAX_SIDE} are refused (decompression bomb guard)"
        ));
    }
    Ok(())
}

/// Deflate expands at most 1032:1 (a 258-byte match in two bits).
const DEFLATE_MAX_RATIO: u64 = 1032;

/// The PNG header (IHDR, always first) against the file's size: the
/// filtered scanlines the header implies cannot be more than deflate can
/// expand the whole file to.
fn check_png(bytes: &[u8]) -> std::result::Result<(), String> {
    // 8-byte signature, then length (4), "IHDR", width, height, depth, colour type.
    if bytes.len() < 26 || &bytes[12..16] != b"IHDR" {
        return Ok(()); // let the decoder say what is wrong
    }
    let be =
        |i: usize| u32::from_be_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]) as u64;
    let (w, h) = (be(16), be(20));
    check_side("PNG", w, h)?;
    let depth = bytes[24] as u64;
    let channels = match bytes[25] {
        0 | 3 => 1,
        2 => 3,
        4 => 2,
        6 => 4,
        _ => return Ok(()),
    };
    let raw = h * (1 + (w * channels * depth).div_ceil(8));
    let most = bytes.len() as u64 * DEFLATE_MAX_RATIO + 4096;
    if raw > most {
        return Err(format!(
            "PNG header claims {w}x{h} pixels, more than its {} bytes can hold: truncated, or a decompression bomb",
            bytes.len()
        ));
    }
    Ok(())
}

/// Walks a JPEG stream's segments (public so DICOM JPEG frames can use it
/// too): it must end with an end-of-image marker (else it
/// is truncated: the lenient decoder would fill the rest with grey), its
/// frame must be within [`MAX_SIDE`], and a Huffman-coded frame needs at
/// least one bit per 8x8 block of entropy-coded data (the DC code of every
/// block of the full-resolution component), so a header claiming more
/// pixels than the data can hold is refused before the pixels are allocated.
pub fn check_jpeg(b: &[u8]) -> std::result::Result<(), String> {
    let truncated = || "truncated JPEG (no end-of-image marker)".to_string();
    let n = b.len();
    let mut i = 2; // after SOI
    let mut frame: Option<(u8, u64, u64)> = None;
    let mut scan_bytes = 0u64;
    loop {
        // Next marker: skip anything that is not 0xFF, then fill bytes.
        while i < n && b[i] != 0xFF {
            i += 1;
        }
        while i < n && b[i] == 0xFF {
            i += 1;
        }
        if i >= n {
            return Err(truncated());
        }
        let m = b[i];
        i += 1;
        match m {
            0xD9 => break,
            0x00 | 0x01 | 0xD0..=0xD8 => continue,
            _ => {}
        }
        if i + 2 > n {
            return Err(truncated());
        }
        let len = u16::from_be_bytes([b[i], b[i + 1]]) as usize;
        if len < 2 {
            return Err(format!(
                "corrupt JPEG: segment 0xFF{m:02X} at byte {} has length {len}",
                i - 2
            ));
        }
        if i + len > n {
            return Err(truncated());
        }
        // SOF0..SOF15 except DHT (C4), JPG (C8), DAC (CC): P, Y, X.
        if matches!(m, 0xC0..=0xCF)
            && !matches!(m, 0xC4 | 0xC8 | 0xCC)
            && len >= 7
            && frame.is_none()
        {
            let y = u16::from_be_bytes([b[i + 3], b[i + 4]]) as u64;
            let x = u16::from_be_bytes([b[i + 5], b[i + 6]]) as u64;
            check_side("JPEG", x, y)?;
            frame = Some((m, x, y));
        }
        i += len;
        if m == 0xDA {
            // Entropy-coded data runs to the next marker that is not a
            // stuffed 0xFF00 or a restart marker.
            let start = i;
            loop {
                if i >= n {
                    return Err(truncated());
                }
                if b[i] == 0xFF {
                    if i + 1 >= n {
                        return Err(truncated());
                    }
                    match b[i + 1] {
                        0x00 | 0xD0..=0xD7 => i += 2,
                        0xFF => i += 1,
                        _ => break,
                    }
                } else {
                    i += 1;
                }
            }
            scan_bytes += (i - start) as u64;
        }
    }
    if let Some((m, x, y)) = frame
        && matches!(m, 0xC0..=0xC2)
    {
        let blocks = x.div_ceil(8) * y.div_ceil(8);
        if scan_bytes * 8 < blocks {
            return Err(format!(
                "JPEG header claims {x}x{y} pixels but holds {scan_bytes} bytes of image data: truncated, or a decompression bomb"
            ));
        }
    }
    Ok(())
}
