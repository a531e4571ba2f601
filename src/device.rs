//! Where the tensors live: `cpu` (the default, with pirlkit's fast CPU
//! kernels) or `cuda[:N]` (candle's CUDA backend; needs a binary built with
//! the `cuda` feature, see `scripts/build-cuda.sh`).
//!
//! Data decoding, augmentation, the memory bank's bookkeeping and the
//! statistics stay on the CPU; batches are built there and copied to the
//! device once per step.

use candle_core::Device;

use crate::error::{Error, Result};

/// A parsed `--device` / `device = "..."` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceSpec {
    Cpu,
    Cuda(usize),
}

impl DeviceSpec {
    /// `cpu`, `cuda` (= `cuda:0`) or `cuda:N`.
    pub fn parse(s: &str) -> std::result::Result<DeviceSpec, String> {
        let t = s.trim().to_ascii_lowercase();
        if t == "cpu" {
            return Ok(DeviceSpec::Cpu);
        }
        if t == "cuda" || t == "gpu" {
            return Ok(DeviceSpec::Cuda(0));
        }
        if let Some(n) = t.strip_prefix("cuda:") {
            return n.parse::<usize>().map(DeviceSpec::Cuda).map_err(|_| {
                format!("device `{s}`: the GPU ordinal after `cuda:` must be a number")
            });
        }
        Err(format!("device `{s}` is not one of cpu, cuda, cuda:N"))
    }

    /// Opens the device. `cuda` in a binary built without the `cuda`
    /// feature, or without a usable GPU, is an error that says so.
    pub fn open(self) -> Result<Device> {
        match self {
            DeviceSpec::Cpu => Ok(Device::Cpu),
            DeviceSpec::Cuda(n) => {
                if !cfg!(feature = "cuda") {
                    return Err(Error::Config(format!(
                        "device cuda:{n}: this pirlkit was built without the `cuda` feature; build one with scripts/build-cuda.sh (or `cargo build --release --features cuda` where CUDA is installed)"
                    )));
                }
                Device::new_cuda(n)
                    .map_err(|e| Error::Config(format!("device cuda:{n} could not be opened: {e}")))
            }
        }
    }
}

/// Opens the device a config names, and sets TF32 matmuls on it when asked
/// (CUDA only; the CPU path always computes in full f32).
pub fn open(name: &str, tf32: bool) -> Result<Device> {
    let dev = DeviceSpec::parse(name).map_err(Error::Config)?.open()?;
    if dev.is_cuda() {
        candle_core::cuda::set_gemm_reduced_precision_f32(tf32);
    }
    Ok(dev)
}

/// A short name for logs and reports: `cpu` or `cuda:N`.
pub fn describe(dev: &Device) -> String {
    match dev.location() {
        candle_core::DeviceLocation::Cpu => "cpu".into(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_device_names() {
        assert_eq!(DeviceSpec::parse("cpu"), Ok(DeviceSpec::Cpu));
        assert_eq!(DeviceSpec::parse("CUDA"), Ok(DeviceSpec::Cuda(0)));
        assert_eq!(DeviceSpec::parse("cuda:3"), Ok(DeviceSpec::Cuda(3)));
        assert!(DeviceSpec::parse("cuda:x").is_err());
        assert!(DeviceSpec::parse("tpu").is_err());
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_the_feature_says_how_to_get_it() {
        let e = open("cuda:0", false).unwrap_err().to_string();
        assert!(e.contains("scripts/build-cuda.sh"), "{e}");
    }
}
