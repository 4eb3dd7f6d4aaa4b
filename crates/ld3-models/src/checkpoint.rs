//! Weights files as the hub publishes them (safetensors, or PyTorch `.bin` pickles), read so
//! that every problem names the file and the key: a missing tensor, a wrong shape or dtype, a
//! corrupt file, or tensors the configuration does not use.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;
use ld3_solvers::{Error, Result};

/// The tensors of one weights file, and which of them a model has taken.
pub struct Checkpoint {
    inner: Arc<Tracked>,
}

struct Tracked {
    label: String,
    tensors: HashMap<String, Tensor>,
    used: Mutex<HashSet<String>>,
}

struct Backend(Arc<Tracked>);

fn model_error(msg: String) -> Error {
    Error::Model(msg.into())
}

impl Checkpoint {
    /// Reads `path`: `.safetensors`, or a PyTorch `.bin`/`.pt`/`.pth` state dict.
    pub fn from_file(path: &Path) -> Result<Self> {
        let label = path.display().to_string();
        let is_pickle = matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("bin" | "pt" | "pth" | "ckpt")
        );
        if is_pickle {
            if !path.is_file() {
                return Err(model_error(format!("{label}: no such file")));
            }
            let tensors = candle_core::pickle::read_all(path).map_err(|e| {
                model_error(format!("{label}: not a readable PyTorch state dict ({e})"))
            })?;
            return Ok(Self::new(label, tensors.into_iter().collect()));
        }
        let bytes = std::fs::read(path).map_err(|source| Error::Io {
            path: label.clone(),
            source,
        })?;
        Self::from_safetensors_bytes(&bytes, &label)
    }

    /// Parses safetensors bytes; `label` names them in errors.
    pub fn from_safetensors_bytes(bytes: &[u8], label: &str) -> Result<Self> {
        let tensors = candle_core::safetensors::load_buffer(bytes, &Device::Cpu).map_err(|e| {
            model_error(format!(
                "{label}: not a valid safetensors file ({e}); it may be truncated or corrupt — \
                 download it again"
            ))
        })?;
        Ok(Self::new(label.to_string(), tensors))
    }

    /// Tensors already in memory; `label` names them in errors.
    pub fn from_tensors(label: &str, tensors: HashMap<String, Tensor>) -> Self {
        Self::new(label.to_string(), tensors)
    }

    fn new(label: String, tensors: HashMap<String, Tensor>) -> Self {
        Self {
            inner: Arc::new(Tracked {
                label,
                tensors,
                used: Mutex::new(HashSet::new()),
            }),
        }
    }

    /// Number of tensors in the file.
    pub fn len(&self) -> usize {
        self.inner.tensors.len()
    }

    /// Total number of values in the file's tensors.
    pub fn value_count(&self) -> usize {
        self.inner.tensors.values().map(Tensor::elem_count).sum()
    }

    /// Whether the file holds no tensor.
    pub fn is_empty(&self) -> bool {
        self.inner.tensors.is_empty()
    }

    /// A `VarBuilder` over the file, converting to `dtype` on `device`.
    pub fn var_builder(&self, dtype: DType, device: &Device) -> VarBuilder<'static> {
        VarBuilder::from_backend(Box::new(Backend(self.inner.clone())), dtype, device.clone())
    }

    /// Fails if the file holds tensors that building the model did not take.
    pub fn check_all_used(&self, what: &str) -> Result<()> {
        let used = self.inner.used.lock().expect("checkpoint lock");
        let mut unused: Vec<&String> = self
            .inner
            .tensors
            .keys()
            .filter(|k| !used.contains(*k))
            .collect();
        if unused.is_empty() {
            return Ok(());
        }
        unused.sort();
        Err(model_error(format!(
            "{}: {} tensor(s) that {what} does not use, e.g. `{}`; the weights and the \
             configuration belong to different models",
            self.inner.label,
            unused.len(),
            unused[0]
        )))
    }
}

impl Tracked {
    fn take(
        &self,
        name: &str,
        shape: Option<&Shape>,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let label = &self.label;
        let t = self.tensors.get(name).ok_or_else(|| {
            let expected = shape
                .map(|s| format!(" of shape {:?}", s.dims()))
                .unwrap_or_default();
            candle_core::Error::Msg(format!(
                "{label}: no tensor `{name}`{expected}; the weights do not match the configuration"
            ))
        })?;
        if let Some(s) = shape {
            if t.shape() != s {
                candle_core::bail!(
                    "{label}: tensor `{name}` has shape {:?} but the configuration needs {:?}",
                    t.dims(),
                    s.dims()
                );
            }
        }
        if !t.dtype().is_float() {
            candle_core::bail!(
                "{label}: tensor `{name}` has dtype {:?}; weights must be f16, bf16, f32 or f64",
                t.dtype()
            );
        }
        self.used
            .lock()
            .expect("checkpoint lock")
            .insert(name.to_string());
        t.to_device(dev)?.to_dtype(dtype)
    }
}

impl SimpleBackend for Backend {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _h: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        self.0.take(name, Some(&s), dtype, dev)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.0.take(name, None, dtype, dev)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.0.tensors.contains_key(name)
    }
}
