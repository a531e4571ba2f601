//! The sizes every image decoder here accepts (JPEG, PNG, DICOM): guards
//! against decompression bombs and images too small to crop.

/// Largest accepted image side, and decoder allocation cap: a guard against
/// decompression bombs.
pub const MAX_SIDE: u32 = 16_384;
pub const MAX_ALLOC: u64 = 1 << 30;

/// Smallest accepted image side.
pub const MIN_SIDE: u32 = 8;
