//! Weights files as the hub publishes them (safetensors, or PyTorch `.bin` pickles), read so
//! that every problem names the file and the key: a missing tensor, a wrong shape or dtype, a
//! corrupt file, or tensors the configuration does not use. The one weight reader of the
//! workspace: models and metrics load through it.
//!
//! A safetensors file is memory-mapped, not read: each tensor is copied once, when the model
//! takes it, into the model's dtype on the model's device — multi-GB weights are never held in
//! memory twice.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
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
    store: Store,
    used: Mutex<HashSet<String>>,
}

/// Where the tensors are.
enum Store {
    /// Parsed into host tensors (pickles, TorchScript, bytes compiled into the binary).
    InMemory(HashMap<String, Tensor>),
    /// A memory-mapped safetensors file: tensors are read when taken.
    Mapped {
        file: candle_core::safetensors::MmapedSafetensors,
        /// Every tensor's name and shape, from the header.
        shapes: HashMap<String, Vec<usize>>,
    },
}

impl Store {
    fn names(&self) -> Vec<&String> {
        match self {
            Self::InMemory(t) => t.keys().collect(),
            Self::Mapped { shapes, .. } => shapes.keys().collect(),
        }
    }
    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        match self {
            Self::InMemory(t) => t.get(name).map(|t| t.dims().to_vec()),
            Self::Mapped { shapes, .. } => shapes.get(name).cloned(),
        }
    }
    /// The tensor `name` as stored (dtype of the file), on `device`.
    fn load(&self, name: &str, device: &Device) -> candle_core::Result<Tensor> {
        match self {
            Self::InMemory(t) => t[name].to_device(device),
            Self::Mapped { file, .. } => file.load(name, device),
        }
    }
}

struct Backend(Arc<Tracked>);

/// Every tensor of a TorchScript archive (`torch.jit.save`): `*/data.pkl` pickles the module
/// tree (objects whose state is a dict of attributes), the tensors' bytes are in `*/data/N`.
fn torchscript_tensors(path: &Path) -> candle_core::Result<Vec<(String, Tensor)>> {
    use candle_core::pickle::{Object, Stack, TensorInfo};
    use std::io::Read;

    fn walk(
        obj: Object,
        prefix: &str,
        dir: &Path,
        out: &mut Vec<TensorInfo>,
    ) -> candle_core::Result<()> {
        match obj {
            Object::Build { args, .. } => walk(*args, prefix, dir, out),
            Object::Dict(items) => {
                for (key, value) in items {
                    let Object::Unicode(key) = key else { continue };
                    let name = format!("{prefix}{key}");
                    match value
                        .clone()
                        .into_tensor_info(Object::Unicode(name.clone()), dir)?
                    {
                        Some(info) => out.push(info),
                        None => walk(value, &format!("{name}."), dir, out)?,
                    }
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    let file = std::io::BufReader::new(std::fs::File::open(path)?);
    let mut zip = zip::ZipArchive::new(file)?;
    let mut pickles = Vec::new();
    for name in zip.file_names() {
        let name = name?;
        if name.ends_with("/data.pkl") {
            pickles.push(name.into_owned());
        }
    }
    let mut infos = Vec::new();
    for pkl in pickles {
        let dir = PathBuf::from(pkl.trim_end_matches(".pkl"));
        let mut stack = Stack::empty();
        stack.read_loop(&mut std::io::BufReader::new(zip.by_name(&pkl)?))?;
        walk(stack.finalize()?, "", &dir, &mut infos)?;
    }
    let mut tensors = Vec::with_capacity(infos.len());
    for info in infos {
        if !info.layout.is_contiguous() {
            candle_core::bail!("tensor {} is not contiguous ({:?})", info.name, info.layout);
        }
        let mut entry = zip.by_name(&info.path)?;
        let skip = info.layout.start_offset() as u64;
        std::io::copy(&mut entry.by_ref().take(skip), &mut std::io::sink())?;
        let mut bytes = vec![0u8; info.layout.shape().elem_count() * info.dtype.size_in_bytes()];
        entry.read_exact(&mut bytes)?;
        let t = Tensor::from_raw_buffer(&bytes, info.dtype, info.layout.dims(), &Device::Cpu)?;
        tensors.push((info.name, t));
    }
    Ok(tensors)
}

fn model_error(msg: String) -> Error {
    Error::Model(msg.into())
}

/// The weights file of a hub model folder: `STEM.safetensors`, else its fp16 variant
/// `STEM.fp16.safetensors` (what the hub's fp16 variants are called), else `bin`.
pub fn weights_file(dir: &Path, stem: &str, bin: &str) -> Result<PathBuf> {
    let candidates = [
        format!("{stem}.safetensors"),
        format!("{stem}.fp16.safetensors"),
        bin.to_string(),
    ];
    candidates
        .iter()
        .map(|c| dir.join(c))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            Error::Invalid(format!(
                "{}: no weights ({} expected)",
                dir.display(),
                candidates.join(", or ")
            ))
        })
}

impl Checkpoint {
    /// Reads `path`: `.safetensors`, a PyTorch `.bin`/`.pt`/`.pth` state dict, or a TorchScript
    /// archive (`torch.jit.save`; tensors named by their module path, e.g. `net.layers.conv.weight`).
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
            let mut tensors = candle_core::pickle::read_all(path).map_err(|e| {
                model_error(format!("{label}: not a readable PyTorch state dict ({e})"))
            })?;
            if tensors.is_empty() {
                // Not a state dict: a TorchScript archive keeps its tensors in the modules.
                tensors = torchscript_tensors(path).map_err(|e| {
                    model_error(format!("{label}: not a readable TorchScript archive ({e})"))
                })?;
            }
            if tensors.is_empty() {
                return Err(model_error(format!(
                    "{label}: holds no tensor (neither a PyTorch state dict nor a TorchScript \
                     module)"
                )));
            }
            return Ok(Self::new(label, tensors.into_iter().collect()));
        }
        Self::map_safetensors(path)
    }

    /// Memory-maps a safetensors file (nothing is read until a model takes a tensor). The file
    /// must not change while a model loads from it.
    // One of the workspace's three `unsafe` sites (the others: `allocator`'s mallopt, the gemm call of
    // `layers::conv_kernel`): the read-only mapping below.
    #[allow(unsafe_code)]
    pub fn map_safetensors(path: &Path) -> Result<Self> {
        let label = path.display().to_string();
        if !path.is_file() {
            return Err(Error::Io {
                path: label,
                cause: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
            });
        }
        // SAFETY: the mapping is read-only and dropped once the model has copied its tensors;
        // the file must not be modified meanwhile (documented above), as for every mmap reader.
        let file =
            unsafe { candle_core::safetensors::MmapedSafetensors::new(path) }.map_err(|e| {
                model_error(format!(
                    "{label}: not a valid safetensors file ({e}); it may be truncated or corrupt \
                     — download it again"
                ))
            })?;
        let shapes = file
            .tensors()
            .into_iter()
            .map(|(name, view)| (name, view.shape().to_vec()))
            .collect();
        Ok(Self::with_store(label, Store::Mapped { file, shapes }))
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
        Self::with_store(label, Store::InMemory(tensors))
    }

    fn with_store(label: String, store: Store) -> Self {
        Self {
            inner: Arc::new(Tracked {
                label,
                store,
                used: Mutex::new(HashSet::new()),
            }),
        }
    }

    /// Number of tensors in the file.
    pub fn len(&self) -> usize {
        self.inner.store.names().len()
    }

    /// Total number of values in the file's tensors.
    pub fn value_count(&self) -> usize {
        let store = &self.inner.store;
        store
            .names()
            .iter()
            .filter_map(|n| store.shape(n))
            .map(|s| s.iter().product::<usize>())
            .sum()
    }

    /// Whether the file holds no tensor.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A `VarBuilder` over the file, converting to `dtype` on `device`.
    pub fn var_builder(&self, dtype: DType, device: &Device) -> VarBuilder<'static> {
        VarBuilder::from_backend(Box::new(Backend(self.inner.clone())), dtype, device.clone())
    }

    /// Fails if the file holds tensors that building the model did not take.
    pub fn check_all_used(&self, what: &str) -> Result<()> {
        self.check_all_used_except(what, |_| false)
    }

    /// Like [`Checkpoint::check_all_used`], not counting the tensors `ignore` names (e.g.
    /// batch-norm step counters).
    pub fn check_all_used_except(&self, what: &str, ignore: impl Fn(&str) -> bool) -> Result<()> {
        let used = self.inner.used.lock().expect("checkpoint lock");
        let mut unused: Vec<&String> = self
            .inner
            .store
            .names()
            .into_iter()
            .filter(|k| !used.contains(*k) && !ignore(k))
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
        let stored = self.store.shape(name).ok_or_else(|| {
            let expected = shape
                .map(|s| format!(" of shape {:?}", s.dims()))
                .unwrap_or_default();
            candle_core::Error::Msg(format!(
                "{label}: no tensor `{name}`{expected}; the weights do not match the configuration"
            ))
        })?;
        if let Some(s) = shape {
            if stored != s.dims() {
                candle_core::bail!(
                    "{label}: tensor `{name}` has shape {stored:?} but the configuration needs {:?}",
                    s.dims()
                );
            }
        }
        let t = self.store.load(name, dev)?;
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
        t.to_dtype(dtype)
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
        self.0.store.shape(name).is_some()
    }
}
