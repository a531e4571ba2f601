//! Custom CPU kernels behind candle's `CustomOp` traits.
pub mod maxpool;
pub use maxpool::MaxPool2d;
