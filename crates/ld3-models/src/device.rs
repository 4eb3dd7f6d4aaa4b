//! Devices by name: `cpu`, `cuda`, `cuda:N`, `metal`, `metal:N` (case and surrounding space
//! ignored), the one parser behind the CLI's `--device` and the benchmarks' `DEVICE`.
//!
//! A backend this build lacks is an error that says how to get it, not a panic deep inside
//! candle; so is a device the machine does not have.

use candle_core::Device;

/// Why a device name gives no device.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// Not one of the names above.
    #[error("unknown device '{0}'; use cpu, cuda, cuda:N or metal")]
    Unknown(String),
    /// The part after `:` is not a number.
    #[error("'{0}': the device index must be a number")]
    BadIndex(String),
    /// A backend this build was compiled without.
    #[error(
        "built without {backend}; rebuild with `--features {feature}` ({needs})",
        backend = .0.name(),
        feature = .0.feature(),
        needs = .0.needs()
    )]
    NotBuilt(Backend),
    /// The backend is built but the device cannot be opened (no such GPU, no driver).
    #[error("no usable {backend} device {index}: {source}", backend = .backend.name())]
    Unavailable {
        /// The backend asked for.
        backend: Backend,
        /// The device number asked for.
        index: usize,
        /// candle's error.
        source: candle_core::Error,
    },
}

/// A GPU backend candle may be built with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// NVIDIA GPUs (`--features cuda`).
    Cuda,
    /// Apple GPUs (`--features metal`).
    Metal,
}

impl Backend {
    /// Its name in messages (`CUDA`, `Metal`); users write it in lower case.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Cuda => "CUDA",
            Backend::Metal => "Metal",
        }
    }

    fn feature(self) -> &'static str {
        match self {
            Backend::Cuda => "cuda",
            Backend::Metal => "metal",
        }
    }

    fn needs(self) -> &'static str {
        match self {
            Backend::Cuda => "needs the CUDA toolkit's nvcc: see docs/gpu.md",
            Backend::Metal => "macOS",
        }
    }

    /// Whether this build was compiled with the backend.
    pub fn built(self) -> bool {
        match self {
            Backend::Cuda => cfg!(feature = "cuda"),
            Backend::Metal => cfg!(feature = "metal"),
        }
    }
}

/// The device `name` names.
pub fn parse(name: &str) -> Result<Device, DeviceError> {
    let name = name.trim().to_ascii_lowercase();
    let (kind, index) = match name.split_once(':') {
        Some((kind, index)) => (
            kind,
            Some(
                index
                    .parse::<usize>()
                    .map_err(|_| DeviceError::BadIndex(name.clone()))?,
            ),
        ),
        None => (name.as_str(), None),
    };
    let backend = match (kind, index) {
        ("cpu", None | Some(0)) => return Ok(Device::Cpu),
        ("cuda", _) => Backend::Cuda,
        ("metal", _) => Backend::Metal,
        _ => return Err(DeviceError::Unknown(name)),
    };
    if !backend.built() {
        return Err(DeviceError::NotBuilt(backend));
    }
    let index = index.unwrap_or(0);
    match backend {
        Backend::Cuda => Device::new_cuda(index),
        Backend::Metal => Device::new_metal(index),
    }
    .map_err(|source| DeviceError::Unavailable {
        backend,
        index,
        source,
    })
}

/// The device the environment variable `var` names (unset or empty: the CPU), for benchmarks
/// and examples; the error names the variable.
pub fn from_env(var: &str) -> Result<Device, String> {
    match std::env::var(var) {
        Err(std::env::VarError::NotPresent) => Ok(Device::Cpu),
        Err(e) => Err(format!("{var}: {e}")),
        Ok(value) if value.trim().is_empty() => Ok(Device::Cpu),
        Ok(value) => parse(&value).map_err(|e| format!("{var}={value}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cpu_by_any_spelling() {
        for name in ["cpu", "CPU", " cpu ", "cpu:0"] {
            assert!(parse(name).unwrap().is_cpu(), "{name}");
        }
    }

    #[test]
    fn bad_names_say_what_is_wrong() {
        let message = |name: &str| parse(name).unwrap_err().to_string();
        assert!(message("tpu").contains("unknown device 'tpu'"));
        assert!(message("cpu:1").contains("unknown device 'cpu:1'"));
        assert!(message("cuda:x").contains("index must be a number"));
        assert!(message("cuda:-1").contains("index must be a number"));
        if !Backend::Cuda.built() {
            for name in ["cuda", "CUDA:1"] {
                let m = message(name);
                assert!(
                    m.contains("built without CUDA") && m.contains("--features cuda"),
                    "{m}"
                );
            }
        }
        if !Backend::Metal.built() {
            assert!(message("metal").contains("--features metal"));
        }
    }

    #[test]
    fn the_environment_names_the_variable() {
        // A variable no one sets: the CPU.
        assert!(from_env("LD3_DEVICE_TEST_UNSET_7F3A").unwrap().is_cpu());
        // One only this test sets (no other thread reads it).
        let var = "LD3_DEVICE_TEST_BAD_7F3A";
        std::env::set_var(var, "tpu");
        let err = from_env(var).unwrap_err();
        assert!(
            err.starts_with("LD3_DEVICE_TEST_BAD_7F3A=tpu: unknown device"),
            "{err}"
        );
        std::env::set_var(var, " ");
        assert!(from_env(var).unwrap().is_cpu());
        std::env::remove_var(var);
    }
}
