//! The two sides of an FID: image folders streamed through [`FidInception`] in batches (their
//! statistics cached on disk), `.npz` statistics (EDM's `fid-refs`, pytorch-fid's `--save-stats`),
//! or images in memory (a model's samples).

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use ld3_solvers::{Error, Result};

use crate::fid::FeatureStats;
use crate::images::{check_same, list_images, read_image, Shape};
use crate::inception::{FidInception, FidMode};

/// The Inception network with its preprocessing mode and the identity of its weights (for
/// cache keys).
pub struct FidExtractor {
    net: FidInception,
    mode: FidMode,
    weights_key: String,
    /// Images per network call.
    pub batch_size: usize,
}

/// A file's identity for cache keys: canonical path, size and modification time.
fn file_key(path: &Path) -> Result<String> {
    let meta = std::fs::metadata(path).map_err(|source| Error::Io {
        path: path.display().to_string(),
        cause: source,
    })?;
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    let canonical = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    Ok(format!("{}:{}:{mtime}", canonical.display(), meta.len()))
}

/// 64-bit FNV-1a (stable across builds, unlike std's hasher), as 16 hex digits.
fn fnv1a(text: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

impl FidExtractor {
    /// Loads the weights file (see [`FidInception::load`]).
    pub fn load(weights: &Path, mode: FidMode, device: &Device) -> Result<Self> {
        Ok(Self {
            net: FidInception::load(weights, device)?,
            mode,
            weights_key: file_key(weights)?,
            batch_size: 32,
        })
    }

    /// From a network already built; `weights_key` identifies its weights in cache keys.
    pub fn new(net: FidInception, mode: FidMode, weights_key: &str) -> Self {
        Self {
            net,
            mode,
            weights_key: weights_key.to_string(),
            batch_size: 32,
        }
    }

    /// The preprocessing mode.
    pub fn mode(&self) -> FidMode {
        self.mode
    }

    /// Features [N, 2048] of images `u8` [N, 1 or 3, H, W] holding 0..255 values (grey is
    /// repeated to RGB), `batch_size` at a time.
    pub fn images_features(&self, u8: &Tensor) -> Result<Tensor> {
        let (n, c, ..) = u8.dims4()?;
        let u8 = if c == 1 {
            u8.repeat((1, 3, 1, 1))?
        } else {
            u8.clone()
        };
        let mut out = Vec::new();
        for start in (0..n).step_by(self.batch_size.max(1)) {
            let len = self.batch_size.max(1).min(n - start);
            out.push(self.net.features(&u8.narrow(0, start, len)?, self.mode)?);
        }
        Ok(Tensor::cat(&out, 0)?)
    }

    /// Features of every image of `dir` (sorted by name), decoded a batch at a time;
    /// `progress(done, total)` after each batch. All images must share one size and colour kind.
    pub fn folder_features(
        &self,
        dir: &Path,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<(Tensor, Shape)> {
        self.files_features(dir, &list_images(dir)?, progress)
    }

    fn files_features(
        &self,
        dir: &Path,
        files: &[PathBuf],
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<(Tensor, Shape)> {
        if files.len() < 2 {
            return Err(Error::Invalid(format!(
                "{}: FID needs at least 2 images, found {}",
                dir.display(),
                files.len()
            )));
        }
        let mut first: Option<(PathBuf, Shape)> = None;
        let (mut feats, mut done) = (Vec::new(), 0);
        for chunk in files.chunks(self.batch_size.max(1)) {
            let mut batch = Vec::with_capacity(chunk.len());
            for f in chunk {
                let img = read_image(f)?;
                match &first {
                    None => first = Some((f.clone(), img.shape())),
                    Some((p, s)) => check_same((p, *s), f, &img)?,
                }
                batch.push(img.to_rgb_tensor()?);
            }
            feats.push(self.net.features(&Tensor::stack(&batch, 0)?, self.mode)?);
            done += chunk.len();
            progress(done, files.len());
        }
        let shape = first.expect("at least two files").1;
        Ok((Tensor::cat(&feats, 0)?, shape))
    }

    /// The cache file for `dir`'s features under `cache`: keyed by the mode, the weights, and
    /// every image's path, size and modification time (so any change recomputes).
    pub fn cache_file(&self, dir: &Path, cache: &Path) -> Result<PathBuf> {
        self.files_cache_file(&list_images(dir)?, cache)
    }

    fn files_cache_file(&self, files: &[PathBuf], cache: &Path) -> Result<PathBuf> {
        let mut key = format!("ld3-fid-v1|{}|{}", self.mode.as_str(), self.weights_key);
        for f in files {
            key.push('|');
            key.push_str(&file_key(f)?);
        }
        Ok(cache.join(format!("{}.npz", fnv1a(&key))))
    }
}

/// One side of an FID.
pub struct FeatureSet {
    /// What it was made from (folder or file).
    pub label: String,
    /// Mean and covariance of the features.
    pub stats: FeatureStats,
    /// The features, where known (folders and samples; not `.npz` statistics): KID needs them.
    pub features: Option<Tensor>,
    /// The images' size and colour kind, where known.
    pub shape: Option<Shape>,
    /// Whether it came from the cache.
    pub cached: bool,
}

impl FeatureSet {
    /// From features computed in memory.
    pub fn from_features(label: &str, features: Tensor, shape: Option<Shape>) -> Result<Self> {
        Ok(Self {
            label: label.to_string(),
            stats: FeatureStats::from_features(&features)?,
            features: Some(features),
            shape,
            cached: false,
        })
    }

    fn write_cache(&self, path: &Path) -> Result<()> {
        let (Some(features), Some(shape)) = (&self.features, self.shape) else {
            return Ok(());
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| Error::Io {
                path: dir.display().to_string(),
                cause: source,
            })?;
        }
        // Written beside the target and renamed: a killed run leaves no half-written cache.
        let tmp = path.with_extension(format!("tmp{}.npz", std::process::id()));
        self.stats.write_npz_with(
            &tmp,
            &[
                ("features", features.clone()),
                (
                    "shape",
                    Tensor::new(
                        &[
                            shape.width as f64,
                            shape.height as f64,
                            shape.channels as f64,
                        ],
                        &Device::Cpu,
                    )?,
                ),
            ],
        )?;
        std::fs::rename(&tmp, path).map_err(|source| Error::Io {
            path: path.display().to_string(),
            cause: source,
        })
    }

    fn read_cache(label: &str, path: &Path) -> Option<Self> {
        let t = Tensor::read_npz_by_name(path, &["features", "shape"]).ok()?;
        let shape: Vec<f64> = t[1].to_dtype(DType::F64).ok()?.to_vec1().ok()?;
        let stats = FeatureStats::read_npz(path).ok()?;
        Some(Self {
            label: label.to_string(),
            stats,
            features: Some(t[0].clone()),
            shape: Some(Shape {
                width: shape[0] as usize,
                height: shape[1] as usize,
                channels: shape[2] as usize,
            }),
            cached: true,
        })
    }
}

/// One side of an FID from a path: an `.npz` statistics file (`mu`, `sigma`; no network needed)
/// or a folder of PNG/JPEG images (through `extractor`; with `cache`, its statistics and
/// features are read from or written to that folder).
pub fn open_set(
    path: &Path,
    extractor: Option<&FidExtractor>,
    cache: Option<&Path>,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<FeatureSet> {
    let label = path.display().to_string();
    if path.is_dir() {
        let extractor = extractor.ok_or_else(|| {
            Error::Invalid(format!(
                "{label}: an image folder needs the Inception weights"
            ))
        })?;
        // The folder is listed once: for the cache key and for the features.
        let files = list_images(path)?;
        let cache_file = match cache {
            Some(c) => Some(extractor.files_cache_file(&files, c)?),
            None => None,
        };
        if let Some(set) = cache_file
            .as_deref()
            .and_then(|f| FeatureSet::read_cache(&label, f))
        {
            return Ok(set);
        }
        let (features, shape) = extractor.files_features(path, &files, progress)?;
        let set = FeatureSet::from_features(&label, features, Some(shape))?;
        if let Some(f) = cache_file {
            // A cache that cannot be written only costs time next run.
            if let Err(e) = set.write_cache(&f) {
                eprintln!("note: FID statistics not cached ({e})");
            }
        }
        return Ok(set);
    }
    if path.extension().and_then(|e| e.to_str()) == Some("safetensors") {
        return samples_set(path, extractor, progress);
    }
    if path.extension().and_then(|e| e.to_str()) == Some("npz") {
        if !path.is_file() {
            return Err(Error::Invalid(format!("{label}: no such statistics file")));
        }
        return Ok(FeatureSet {
            label,
            stats: FeatureStats::read_npz(path)?,
            features: None,
            shape: None,
            cached: false,
        });
    }
    Err(Error::Invalid(format!(
        "{label}: neither a folder of images, an `ld3 sample` output (.safetensors) nor an .npz \
         statistics file (mu, sigma)"
    )))
}

/// Samples in [−1, 1] as the 0..255 values their PNGs hold ((x + 1)·127.5, rounded, clamped —
/// EDM's `x·127.5 + 128` truncated, the same numbers).
pub fn samples_to_u8_values(x: &Tensor) -> Result<Tensor> {
    Ok(((x.to_dtype(DType::F32)? + 1.0)? * 127.5)?
        .round()?
        .clamp(0f32, 255f32)?)
}

/// The samples of an `ld3 sample` run (tensor `samples` [B, 1 or 3, H, W] in [−1, 1]),
/// quantised as their PNGs are.
fn samples_set(
    path: &Path,
    extractor: Option<&FidExtractor>,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<FeatureSet> {
    let label = path.display().to_string();
    let extractor = extractor
        .ok_or_else(|| Error::Invalid(format!("{label}: samples need the Inception weights")))?;
    let mut tensors = candle_core::safetensors::load(path, &Device::Cpu)
        .map_err(|e| Error::Invalid(format!("{label}: not a readable safetensors file ({e})")))?;
    let samples = tensors.remove("samples").ok_or_else(|| {
        Error::Invalid(format!(
            "{label}: no tensor `samples` (write it with `ld3 sample --out`)"
        ))
    })?;
    let dims = samples.dims().to_vec();
    if dims.len() != 4 || !matches!(dims[1], 1 | 3) || dims[0] < 2 {
        return Err(Error::Invalid(format!(
            "{label}: `samples` is {dims:?}; FID needs at least 2 images [B, 1 or 3, H, W]"
        )));
    }
    let u8 = samples_to_u8_values(&samples)?;
    let features = extractor.images_features(&u8)?;
    progress(dims[0], dims[0]);
    FeatureSet::from_features(
        &label,
        features,
        Some(Shape {
            width: dims[3],
            height: dims[2],
            channels: dims[1],
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::fnv1a;

    #[test]
    fn the_cache_hash_is_fnv1a() {
        // Published FNV-1a 64 test vectors.
        assert_eq!(fnv1a(""), "cbf29ce484222325");
        assert_eq!(fnv1a("a"), "af63dc4c8601ec8c");
    }
}
