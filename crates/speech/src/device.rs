//! Where models run: the CPU, or a CUDA GPU when this build and the machine have one.
//!
//! `--device` sets the process default; a node's `device` param overrides it. `auto` uses CUDA
//! only when the `cuda` cargo feature is compiled in *and* the loaded ONNX Runtime offers its
//! CUDA execution provider; otherwise it runs on the CPU and says why once in the log. Asking for
//! `cuda` explicitly where it cannot work is an error, not a silent fallback.

use std::sync::Once;
use std::sync::atomic::{AtomicU8, Ordering};

use schemars::JsonSchema;
use serde::Deserialize;

use crate::error::ModelError;

/// A requested device.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Device {
    /// CUDA when available, else the CPU.
    #[default]
    Auto,
    Cpu,
    Cuda,
}

impl Device {
    pub fn name(self) -> &'static str {
        match self {
            Device::Auto => "auto",
            Device::Cpu => "cpu",
            Device::Cuda => "cuda",
        }
    }
}

impl std::str::FromStr for Device {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Device::Auto),
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda),
            _ => Err(format!("unknown device `{s}` (expected auto, cpu or cuda)")),
        }
    }
}

/// Where a model actually runs, once `auto` is decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    Cpu,
    Cuda,
}

impl Placement {
    pub fn name(self) -> &'static str {
        match self {
            Placement::Cpu => "cpu",
            Placement::Cuda => "cuda",
        }
    }
}

static DEFAULT: AtomicU8 = AtomicU8::new(0);

/// Sets the device of every model whose node does not name one (the CLI's `--device`).
pub fn set_default(device: Device) {
    DEFAULT.store(device as u8, Ordering::Relaxed);
}

/// The process default device.
pub fn default_device() -> Device {
    match DEFAULT.load(Ordering::Relaxed) {
        1 => Device::Cpu,
        2 => Device::Cuda,
        _ => Device::Auto,
    }
}

/// Why CUDA cannot be used here, or `None` when it can.
fn cuda_unavailable() -> Option<String> {
    #[cfg(feature = "cuda")]
    {
        use ort::ep::ExecutionProvider;
        match ort::ep::CUDA::is_available() {
            Ok(true) => None,
            Ok(false) => {
                Some("the ONNX Runtime library in use has no CUDA execution provider".into())
            }
            Err(e) => Some(format!("ONNX Runtime could not report its providers: {e}")),
        }
    }
    #[cfg(not(feature = "cuda"))]
    Some("this build has no CUDA support (rebuild with `--features cuda`)".into())
}

/// Decides where a model runs. Needs ONNX Runtime loaded (it is asked what it offers).
pub fn place(requested: Device) -> Result<Placement, ModelError> {
    match requested {
        Device::Cpu => Ok(Placement::Cpu),
        Device::Cuda => match cuda_unavailable() {
            None => Ok(Placement::Cuda),
            Some(why) => Err(ModelError::Device(format!(
                "device `cuda` requested, but {why}"
            ))),
        },
        Device::Auto => match cuda_unavailable() {
            None => Ok(Placement::Cuda),
            Some(why) => {
                static SAID: Once = Once::new();
                // Expected in a CPU build; worth a warning where CUDA was compiled in.
                SAID.call_once(|| {
                    if cfg!(feature = "cuda") {
                        tracing::warn!("device auto: running models on the CPU: {why}");
                    } else {
                        tracing::info!("device auto: running models on the CPU: {why}");
                    }
                });
                Ok(Placement::Cpu)
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_and_print() {
        for d in [Device::Auto, Device::Cpu, Device::Cuda] {
            assert_eq!(d.name().parse::<Device>(), Ok(d));
        }
        assert_eq!(
            "gpu".parse::<Device>(),
            Err("unknown device `gpu` (expected auto, cpu or cuda)".to_string())
        );
    }

    #[test]
    fn cpu_is_always_placed_on_the_cpu() {
        assert_eq!(place(Device::Cpu), Ok(Placement::Cpu));
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn without_the_feature_auto_falls_back_and_cuda_is_refused() {
        assert_eq!(place(Device::Auto), Ok(Placement::Cpu));
        assert_eq!(
            place(Device::Cuda).unwrap_err().to_string(),
            "device `cuda` requested, but this build has no CUDA support \
             (rebuild with `--features cuda`)"
        );
    }
}
