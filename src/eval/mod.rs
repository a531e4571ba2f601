//! Evaluation: AUC and the linear probe.
pub mod auc;
pub mod probe;

pub use auc::auc;
