//! NVIDIA EDM's `.pkl` network snapshots, read without executing them: the pickle stream is
//! walked by [`crate::pickle`] with an allow-list of the globals that carry data (EDM's persistence
//! reconstruction, torch's tensor and storage rebuilders, ordered dicts, EasyDicts, torch's
//! container modules, numpy scalars), and the network is recovered as data — its class name, its
//! constructor arguments and its tensors under their `state_dict` names. The Python source that
//! EDM embeds in the file is never run (only its class name is read).

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use ld3_solvers::{Error, Result};

use crate::pickle::{self, Value};

/// The globals a snapshot may name: everything else is refused before it is read further.
pub fn allowed(module: &str, name: &str) -> bool {
    matches!(
        (module, name),
        ("torch_utils.persistence", "_reconstruct_persistent_obj")
            | ("torch._utils", "_rebuild_tensor_v2")
            | ("torch._utils", "_rebuild_parameter")
            | ("torch.storage", "_load_from_bytes")
            | ("collections", "OrderedDict")
            | ("dnnlib.util", "EasyDict")
            | ("builtins" | "__builtin__", "set" | "frozenset" | "slice")
            | ("_codecs", "encode")
            | ("numpy", "dtype")
            | ("numpy.core.multiarray" | "numpy._core.multiarray", "scalar")
            | ("torch", "device")
    ) || (module == "torch"
        && name.ends_with("Storage")
        && STORAGE_TYPES.iter().any(|(n, _)| *n == name))
        || (module.starts_with("torch.nn.modules.") && TORCH_MODULES.contains(&name))
}

/// torch's container and parameter-free modules that EDM's networks hold.
const TORCH_MODULES: [&str; 8] = [
    "ModuleList",
    "ModuleDict",
    "Sequential",
    "ParameterList",
    "ParameterDict",
    "Identity",
    "SiLU",
    "Dropout",
];

/// Legacy storage classes and their dtypes.
const STORAGE_TYPES: [(&str, DType); 6] = [
    ("FloatStorage", DType::F32),
    ("DoubleStorage", DType::F64),
    ("HalfStorage", DType::F16),
    ("BFloat16Storage", DType::BF16),
    ("LongStorage", DType::I64),
    ("ByteStorage", DType::U8),
];

/// torch's legacy magic number 0x1950a86a20f9469cfc6c, little-endian.
const MAGIC: [u8; 10] = [0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19];

fn bad(label: &str, what: impl std::fmt::Display) -> Error {
    Error::Invalid(format!("{label}: {what}"))
}

/// One network of a snapshot, as data.
#[derive(Debug)]
pub struct PickledNetwork {
    /// The class name of the object (e.g. `VPPrecond`).
    pub class_name: String,
    /// Its constructor's keyword arguments, as JSON.
    pub init_kwargs: serde_json::Value,
    /// Its positional constructor arguments, as JSON.
    pub init_args: serde_json::Value,
    /// Every parameter and buffer under its `state_dict` name.
    pub tensors: HashMap<String, Tensor>,
}

/// Reads the network stored under `key` (EDM's snapshots: `ema`) from the snapshot at `path`.
pub fn read_network(path: &Path, key: &str) -> Result<PickledNetwork> {
    let data = std::fs::read(path).map_err(|cause| Error::Io {
        path: path.display().to_string(),
        cause,
    })?;
    let label = path.display().to_string();
    read_network_bytes(&data, &label, key)
}

/// [`read_network`] on the bytes of a snapshot (`label` names it in errors).
pub fn read_network_bytes(data: &[u8], label: &str, key: &str) -> Result<PickledNetwork> {
    let (top, _) = pickle::read(data, label, &allowed)?;
    let entries = dict_items(&top).ok_or_else(|| {
        bad(
            label,
            "not an EDM snapshot: the pickle holds no dict (a network snapshot holds ema=…)",
        )
    })?;
    let network = entries
        .iter()
        .find(|(k, _)| k.as_str() == Some(key))
        .map(|(_, v)| v)
        .ok_or_else(|| {
            let keys: Vec<&str> = entries.iter().filter_map(|(k, _)| k.as_str()).collect();
            bad(
                label,
                format!(
                    "the snapshot has no `{key}` network (it has: {})",
                    keys.join(", ")
                ),
            )
        })?;
    let mut tensors = HashMap::new();
    let (class_name, state) =
        module_state(network).ok_or_else(|| bad(label, format!("`{key}` is not a network")))?;
    collect(state, "", &mut tensors, label)?;
    let field = |name: &str| {
        dict_items(state)
            .and_then(|items| {
                items
                    .into_iter()
                    .find(|(k, _)| k.as_str() == Some(name))
                    .map(|(_, v)| v)
            })
            .map(to_json)
            .unwrap_or(serde_json::Value::Null)
    };
    Ok(PickledNetwork {
        class_name,
        init_kwargs: field("_init_kwargs"),
        init_args: field("_init_args"),
        tensors,
    })
}

/// Writes `net` (read from the snapshot named `source`, under `key`) as `out/model.safetensors`
/// (every parameter and buffer under its `state_dict` name, as stored) and `out/edm.json` (its
/// class and constructor arguments), each written whole and renamed into place, `edm.json` last:
/// a folder with `edm.json` is complete. [`read_converted`] reads it back.
pub fn write_converted(net: &PickledNetwork, source: &str, key: &str, out: &Path) -> Result<()> {
    use ld3_solvers::schedule_file::write_atomic;
    write_atomic(&out.join("model.safetensors"), |tmp| {
        candle_core::safetensors::save(&net.tensors, tmp).map_err(Error::from)
    })?;
    let config = serde_json::json!({
        "format": "edm-pkl",
        "class_name": net.class_name,
        "init_args": net.init_args,
        "init_kwargs": net.init_kwargs,
        "source": source,
        "key": key,
    });
    let text = serde_json::to_string_pretty(&config).map_err(|cause| Error::Json {
        what: "the network's settings".into(),
        cause,
    })?;
    write_atomic(&out.join("edm.json"), |tmp| {
        std::fs::write(tmp, text).map_err(|cause| Error::Io {
            path: tmp.display().to_string(),
            cause,
        })
    })
}

/// A network `ld3 convert` wrote: `DIR/model.safetensors` and `DIR/edm.json`.
pub fn read_converted(dir: &Path) -> Result<PickledNetwork> {
    let json_path = dir.join("edm.json");
    let text = std::fs::read_to_string(&json_path).map_err(|cause| Error::Io {
        path: json_path.display().to_string(),
        cause,
    })?;
    let config: serde_json::Value = serde_json::from_str(&text).map_err(|cause| Error::Json {
        what: format!("{} is not JSON", json_path.display()),
        cause,
    })?;
    let class_name = config["class_name"]
        .as_str()
        .ok_or_else(|| bad(&json_path.display().to_string(), "no class_name"))?
        .to_string();
    let weights = dir.join("model.safetensors");
    let tensors = candle_core::safetensors::load(&weights, &Device::Cpu)
        .map_err(|e| bad(&weights.display().to_string(), e))?;
    Ok(PickledNetwork {
        class_name,
        init_kwargs: config["init_kwargs"].clone(),
        init_args: config["init_args"].clone(),
        tensors,
    })
}

/// The items of a dict, an `OrderedDict` or an `EasyDict` (recorded as a call filled by
/// SETITEMS and BUILD).
/// Borrowed: the tree holds every storage's bytes, so it is walked, never copied.
fn dict_items(v: &Value) -> Option<Vec<(&Value, &Value)>> {
    match v {
        Value::Dict(items) => Some(items.iter().map(|(k, v)| (k, v)).collect()),
        Value::Call { callable, .. }
            if callable.is_global("collections", "OrderedDict")
                || callable.is_global("dnnlib.util", "EasyDict") =>
        {
            Some(vec![])
        }
        Value::Build { object, state } => {
            let mut items = dict_items(object)?;
            // BUILD of an EasyDict may carry its (empty) __dict__ as well.
            if let Some(more) = dict_items(state) {
                items.extend(more);
            }
            Some(items)
        }
        _ => None,
    }
}

/// A module's class name and its state (its `__dict__`): an EDM persistent object (the meta dict
/// of `_reconstruct_persistent_obj`), or a torch module built by NEWOBJ and BUILD.
fn module_state(v: &Value) -> Option<(String, &Value)> {
    match v {
        Value::Call { callable, args }
            if callable.is_global("torch_utils.persistence", "_reconstruct_persistent_obj") =>
        {
            let Value::Tuple(args) = args.as_ref() else {
                return None;
            };
            let meta = dict_items(args.first()?)?;
            let get = |k: &str| {
                meta.iter()
                    .find(|(key, _)| key.as_str() == Some(k))
                    .map(|(_, v)| *v)
            };
            let class = get("class_name")?.as_str()?.to_string();
            Some((class, get("state")?))
        }
        Value::Build { object, state } => match object.as_ref() {
            Value::Call { callable, .. } => match callable.as_ref() {
                Value::Global { module, name } if module.starts_with("torch.nn.modules.") => {
                    Some((name.clone(), state.as_ref()))
                }
                _ => None,
            },
            _ => None,
        },
        _ => None,
    }
}

/// Parameters and buffers of the module whose state is `state`, under `prefix`, then its
/// submodules'.
fn collect(
    state: &Value,
    prefix: &str,
    out: &mut HashMap<String, Tensor>,
    label: &str,
) -> Result<()> {
    let items = dict_items(state).ok_or_else(|| bad(label, "a module state that is not a dict"))?;
    let field = |name: &str| {
        items
            .iter()
            .find(|(k, _)| k.as_str() == Some(name))
            .and_then(|(_, v)| dict_items(v))
            .unwrap_or_default()
    };
    for kind in ["_parameters", "_buffers"] {
        for (name, value) in field(kind) {
            let Some(name) = name.as_str() else { continue };
            if *value == Value::None {
                continue;
            }
            let t = tensor(value, label)?;
            out.insert(format!("{prefix}{name}"), t);
        }
    }
    for (name, module) in field("_modules") {
        let Some(name) = name.as_str() else { continue };
        if *module == Value::None {
            continue;
        }
        let (_, sub) = module_state(module).ok_or_else(|| {
            bad(
                label,
                format!("submodule {prefix}{name} is not a module this reader knows"),
            )
        })?;
        collect(sub, &format!("{prefix}{name}."), out, label)?;
    }
    Ok(())
}

/// A tensor from `_rebuild_parameter(_rebuild_tensor_v2(storage, offset, size, stride, …), …)`.
fn tensor(v: &Value, label: &str) -> Result<Tensor> {
    let Value::Call { callable, args } = v else {
        return Err(bad(label, "a parameter that is not a tensor"));
    };
    let Value::Tuple(args) = args.as_ref() else {
        return Err(bad(label, "tensor arguments that are not a tuple"));
    };
    if callable.is_global("torch._utils", "_rebuild_parameter") {
        let inner = args
            .first()
            .ok_or_else(|| bad(label, "a parameter without data"))?;
        return tensor(inner, label);
    }
    if !callable.is_global("torch._utils", "_rebuild_tensor_v2") {
        return Err(bad(
            label,
            "a tensor built by something other than _rebuild_tensor_v2",
        ));
    }
    let [storage, offset, size, stride, ..] = args.as_slice() else {
        return Err(bad(label, "_rebuild_tensor_v2 with too few arguments"));
    };
    let ints = |v: &Value| -> Result<Vec<usize>> {
        match v {
            Value::Tuple(xs) => xs
                .iter()
                .map(|x| {
                    x.as_int()
                        .and_then(|i| usize::try_from(i).ok())
                        .ok_or_else(|| bad(label, "a negative or non-integer size or stride"))
                })
                .collect(),
            _ => Err(bad(label, "a size or stride that is not a tuple")),
        }
    };
    let (size, stride) = (ints(size)?, ints(stride)?);
    let offset = offset
        .as_int()
        .and_then(|i| usize::try_from(i).ok())
        .ok_or_else(|| bad(label, "a bad storage offset"))?;
    let (dtype, bytes) = storage_bytes(storage, label)?;
    let elem = dtype.size_in_bytes();
    let count: usize = size.iter().product();
    // Gather the strided view element by element (row-major over `size`).
    let mut out = Vec::with_capacity(count * elem);
    let mut index = vec![0usize; size.len()];
    for _ in 0..count {
        let at = offset + index.iter().zip(&stride).map(|(i, s)| i * s).sum::<usize>();
        let from = at * elem;
        let chunk = bytes
            .get(from..from + elem)
            .ok_or_else(|| bad(label, "a tensor reaching past its storage"))?;
        out.extend_from_slice(chunk);
        for d in (0..size.len()).rev() {
            index[d] += 1;
            if index[d] < size[d] {
                break;
            }
            index[d] = 0;
        }
    }
    Ok(Tensor::from_raw_buffer(&out, dtype, &size, &Device::Cpu)?)
}

/// The dtype and bytes of a storage pickled as `torch.storage._load_from_bytes(payload)`.
fn storage_bytes(v: &Value, label: &str) -> Result<(DType, Vec<u8>)> {
    let Value::Call { callable, args } = v else {
        return Err(bad(label, "a storage that is not _load_from_bytes(…)"));
    };
    if !callable.is_global("torch.storage", "_load_from_bytes") {
        return Err(bad(label, "a storage that is not _load_from_bytes(…)"));
    }
    let payload = match args.as_ref() {
        Value::Tuple(a) => a.first().and_then(bytes_of),
        _ => None,
    }
    .ok_or_else(|| bad(label, "_load_from_bytes without bytes"))?;
    legacy_storage(&payload, label)
}

/// Bytes as pickled: `bytes` (protocol 3+), or protocol 2's `_codecs.encode(text, 'latin1')`
/// (each character one byte).
fn bytes_of(v: &Value) -> Option<std::sync::Arc<[u8]>> {
    match v {
        Value::Bytes(b) => Some(b.clone()),
        Value::Call { callable, args } if callable.is_global("_codecs", "encode") => {
            let Value::Tuple(a) = args.as_ref() else {
                return None;
            };
            match (a.first()?, a.get(1).and_then(Value::as_str)) {
                (Value::Str(text), Some("latin1" | "latin-1")) => text
                    .chars()
                    .map(|c| u8::try_from(u32::from(c)).ok())
                    .collect::<Option<Vec<u8>>>()
                    .map(Into::into),
                _ => None,
            }
        }
        _ => None,
    }
}

/// One storage from a legacy `torch.save` stream: pickles of the magic number, the protocol
/// version and the system info, the object (a persistent id ('storage', type, key, location,
/// numel)), the list of storage keys, then each storage as a little-endian u64 element count and
/// its raw bytes.
fn legacy_storage(payload: &[u8], label: &str) -> Result<(DType, Vec<u8>)> {
    let inner = format!("{label} (a storage's payload)");
    let mut pos = 0;
    let next = |pos: &mut usize| -> Result<Value> {
        let (v, used) = pickle::read(&payload[*pos..], &inner, &allowed)?;
        *pos += used;
        Ok(v)
    };
    let magic = next(&mut pos)?;
    if magic != Value::BigInt(MAGIC.to_vec()) {
        return Err(bad(&inner, "not a torch.save stream (no magic number)"));
    }
    let _protocol = next(&mut pos)?;
    let _sys_info = next(&mut pos)?;
    let object = next(&mut pos)?;
    let keys = next(&mut pos)?;
    let Value::Persistent(id) = object else {
        return Err(bad(&inner, "the payload's object is not a storage"));
    };
    let Value::Tuple(id) = id.as_ref() else {
        return Err(bad(&inner, "a storage id that is not a tuple"));
    };
    let dtype = match id.get(1) {
        Some(Value::Global { module, name }) if module == "torch" => STORAGE_TYPES
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, d)| *d)
            .ok_or_else(|| bad(&inner, format!("storage type torch.{name}")))?,
        _ => return Err(bad(&inner, "a storage id without its type")),
    };
    let Value::List(keys) = keys else {
        return Err(bad(&inner, "no list of storage keys"));
    };
    if keys.len() != 1 {
        return Err(bad(&inner, "a payload with more than one storage"));
    }
    let header = payload
        .get(pos..pos + 8)
        .ok_or_else(|| bad(&inner, "truncated before the storage's size"))?;
    let numel = u64::from_le_bytes(header.try_into().expect("8 bytes")) as usize;
    pos += 8;
    let elem = dtype.size_in_bytes();
    let len = numel
        .checked_mul(elem)
        .ok_or_else(|| bad(&inner, "a storage size beyond memory"))?;
    let raw = payload
        .get(pos..pos + len)
        .ok_or_else(|| bad(&inner, "truncated storage data"))?;
    Ok((dtype, raw.to_vec()))
}

/// A pickled value as JSON (constructor arguments); tensors and other objects as their kind.
fn to_json(v: &Value) -> serde_json::Value {
    use serde_json::Value as J;
    match v {
        Value::None => J::Null,
        Value::Bool(b) => J::Bool(*b),
        Value::Int(i) => J::from(*i),
        Value::Float(f) => serde_json::Number::from_f64(*f).map_or(J::Null, J::Number),
        Value::Str(s) => J::String(s.clone()),
        Value::Tuple(xs) | Value::List(xs) | Value::Set(xs) => {
            J::Array(xs.iter().map(to_json).collect())
        }
        _ => match dict_items(v) {
            Some(items) => J::Object(
                items
                    .iter()
                    .filter_map(|(k, v)| k.as_str().map(|k| (k.to_string(), to_json(v))))
                    .collect(),
            ),
            None => J::String(format!("<{}>", kind(v))),
        },
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Bytes(_) => "bytes",
        Value::Call { .. } => "object",
        Value::Build { .. } => "object",
        Value::Global { .. } => "global",
        Value::Persistent(_) => "persistent",
        _ => "value",
    }
}
