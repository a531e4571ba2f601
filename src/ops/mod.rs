//! Custom CPU kernels behind candle's `CustomOp` traits.
pub mod conv;
pub mod maxpool;
pub use conv::conv2d;
pub use maxpool::MaxPool2d;
