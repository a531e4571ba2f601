//! Training: PIRL pretraining and its checkpoints.
pub mod checkpoint;
pub mod finetune;
pub mod pretrain;

pub use pretrain::{PretrainOutcome, pretrain};
