//! The library's error type; every variant names what it is about.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error(transparent)]
    Data(#[from] crate::data::DataError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config: {0}")]
    Config(String),
    #[error("{path}: {msg}")]
    Checkpoint { path: PathBuf, msg: String },
    #[error("non-finite loss ({loss}) at epoch {epoch}, step {step}; stopped. {last_good}")]
    NonFinite {
        loss: f64,
        epoch: usize,
        step: usize,
        last_good: String,
    },
    #[error(
        "interrupted; checkpoint written to {checkpoint}. Run the same command again to continue."
    )]
    Interrupted { checkpoint: PathBuf },
    #[error("stopped by a signal; {0}. Run the same command again to continue.")]
    Stopped(String),
    #[error("{0}")]
    Eval(String),
    #[error("{0}")]
    Report(String),
}

pub type Result<T> = std::result::Result<T, Error>;

pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.into();
    move |source| Error::Io { path, source }
}
