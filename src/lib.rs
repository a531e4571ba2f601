//! pirlkit: PIRL self-supervised pretraining on unlabeled medical images, with
//! candle, and an honest evaluation of what it is worth (linear probe against
//! a random-init baseline, AUC, reports).
//!
//! Stages, one module each: [`data`] -> [`augment`] / [`pretext`] ->
//! [`model`] -> [`loss`] + [`memory_bank`] -> [`optim`] -> [`train`] ->
//! [`eval`] -> [`report`]; [`runner`] chains them (through [`protocol`]),
//! and [`commands`] is what each subcommand does.

pub mod augment;
pub mod bench;
pub mod cli;
pub mod commands;
pub mod config;
pub mod data;
pub mod device;
pub mod error;
pub mod eval;
pub mod import;
pub mod io;
pub mod loss;
pub mod malloc;
pub mod memory_bank;
pub mod model;
pub mod ops;
pub mod optim;
pub mod pretext;
pub mod protocol;
pub mod report;
pub mod rng;
pub mod runner;
pub mod selftest;
pub mod train;

pub use config::{Config, Preset};
pub use error::{Error, Result};
