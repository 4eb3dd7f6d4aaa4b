//! Naming a model on the command line: a registry name (embedded, or fetched from the hub into
//! the Hugging Face cache), `gmm:FILE.json`, a local folder in the diffusers layout, or an EDM
//! network snapshot (`.pkl`, or the folder `ld3 convert` wrote).

use std::path::PathBuf;

use candle_core::{DType, Device};
use ld3_solvers::{Error, Result};

use crate::checkpoint::Checkpoint;
use crate::class_gmm::ClassConditionalMixture;
use crate::denoiser::Denoiser;
use crate::diffusers::{DiffusersFiles, DiffusersUNet};
use crate::gmm::GaussianMixture;
use crate::registry::{self, Source, REGISTRY};

/// A parsed `--model` value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ModelSpec {
    /// A Gaussian mixture compiled into the binary (see [`EMBEDDED`]).
    Embedded(&'static str),
    /// A network of the model registry ([`crate::registry::REGISTRY`]).
    Registry(&'static str),
    /// `gmm:FILE.json`: an exact Gaussian-mixture model.
    Gmm(PathBuf),
    /// A local folder in the diffusers layout, or one `ld3 convert` wrote.
    Dir(PathBuf),
    /// An EDM network snapshot (`.pkl`), read without running it.
    EdmPickle(PathBuf),
}

/// Gaussian mixtures compiled into the binary: (name, description, GMM JSON).
pub const EMBEDDED: [(&str, &str, &str); 3] = [
    (
        "demo-edm-gmm",
        "3-component Gaussian mixture on 1x4x4 under the EDM schedule (sigma 0.002..80)",
        include_str!("../assets/gmm/edm-public.json"),
    ),
    (
        "demo-sd-gmm",
        "3-component Gaussian mixture on 2x4x4 under Stable Diffusion v1's discrete VP schedule",
        include_str!("../assets/gmm/vp-public.json"),
    ),
    (
        "demo-class-gmm",
        "class-conditional Gaussian mixture (3 classes of 2 components) on 1x4x4 under the EDM \
         schedule: exact conditional, unconditional and guided denoisers",
        include_str!("../assets/gmm/class-edm.json"),
    ),
];

/// A Gaussian-mixture model from its JSON: class-conditional when it has `classes`.
fn gmm_from_json(json: &str, source: &str, device: &Device) -> Result<Box<dyn Denoiser>> {
    Ok(if ClassConditionalMixture::is_class_json(json) {
        Box::new(
            ClassConditionalMixture::from_json(json)?
                .with_source(source)
                .on(device),
        )
    } else {
        Box::new(
            GaussianMixture::from_json(json)?
                .with_source(source)
                .on(device),
        )
    })
}

/// The default `--model`: the embedded MNIST DDPM.
pub const DEFAULT_MODEL: &str = "ld3-mnist-32";

impl std::str::FromStr for ModelSpec {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        if let Some(path) = s.strip_prefix("gmm:") {
            if path.is_empty() {
                return Err(Error::Invalid(
                    "a `gmm:` model needs a file, as in gmm:fixtures/gmm/edm-public/gmm.json"
                        .into(),
                ));
            }
            return Ok(Self::Gmm(PathBuf::from(path)));
        }
        if let Some((name, _, _)) = EMBEDDED.iter().find(|(name, _, _)| *name == s) {
            return Ok(Self::Embedded(name));
        }
        if let Some(entry) = registry::find(s) {
            return Ok(Self::Registry(entry.name));
        }
        if std::path::Path::new(s).is_dir() {
            return Ok(Self::Dir(PathBuf::from(s)));
        }
        if s.ends_with(".pkl") {
            return Ok(Self::EdmPickle(PathBuf::from(s)));
        }
        let names: Vec<&str> = REGISTRY
            .iter()
            .map(|e| e.name)
            .chain(EMBEDDED.iter().map(|(n, _, _)| *n))
            .collect();
        Err(Error::Invalid(format!(
            "unknown model '{s}': use a known model ({}; `ld3 list` describes them), the path of a \
             folder in the diffusers layout (config.json, diffusion_pytorch_model.safetensors, \
             scheduler_config.json), an EDM snapshot FILE.pkl, or a Gaussian-mixture file as \
             gmm:PATH.json",
            names.join(", ")
        )))
    }
}

impl std::fmt::Display for ModelSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Embedded(name) | Self::Registry(name) => write!(f, "{name}"),
            Self::Gmm(p) => write!(f, "gmm:{}", p.display()),
            Self::Dir(p) | Self::EdmPickle(p) => write!(f, "{}", p.display()),
        }
    }
}

/// Loads the model a spec names; networks in f32 on the CPU.
pub fn load_model(spec: &ModelSpec) -> Result<Box<dyn Denoiser>> {
    load_model_as(spec, DType::F32, &Device::Cpu)
}

/// Loads the model a spec names, a network's weights in `dtype` on `device` (Gaussian mixtures
/// compute in their input's dtype).
pub fn load_model_as(spec: &ModelSpec, dtype: DType, device: &Device) -> Result<Box<dyn Denoiser>> {
    match spec {
        ModelSpec::Embedded(name) => {
            let (_, _, json) = EMBEDDED
                .iter()
                .find(|(n, _, _)| n == name)
                .ok_or_else(|| Error::Invalid(format!("no embedded model named '{name}'")))?;
            gmm_from_json(json, name, device)
        }
        ModelSpec::Gmm(path) => {
            let json = std::fs::read_to_string(path).map_err(|source| Error::Io {
                path: path.display().to_string(),
                cause: source,
            })?;
            gmm_from_json(&json, &path.display().to_string(), device)
                .map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))
        }
        ModelSpec::Dir(dir) if dir.join("edm.json").is_file() => {
            let net = crate::edm_pkl::read_converted(dir)?;
            Ok(Box::new(crate::edm_net::EdmNetwork::new(
                &net,
                &dir.display().to_string(),
                dtype,
                device,
            )?))
        }
        ModelSpec::EdmPickle(path) => {
            let net = crate::edm_pkl::read_network(path, "ema")?;
            Ok(Box::new(crate::edm_net::EdmNetwork::new(
                &net,
                &path.display().to_string(),
                dtype,
                device,
            )?))
        }
        ModelSpec::Dir(dir) if crate::sd::is_pipeline(dir) => Ok(Box::new(
            crate::sd::StableDiffusion::from_dir(dir, dtype, device, None)?,
        )),
        ModelSpec::Dir(dir) => Ok(Box::new(DiffusersUNet::from_dir(dir, dtype, device)?)),
        ModelSpec::Registry(name) => {
            let entry = registry::find(name)
                .ok_or_else(|| Error::Invalid(format!("no registry model named '{name}'")))?;
            match entry.source {
                Source::Embedded => {
                    let embedded = crate::embedded::files(name).ok_or_else(|| {
                        Error::Invalid(format!("{name} is not compiled into this build"))
                    })?;
                    let files = DiffusersFiles {
                        config: embedded.config,
                        scheduler: embedded.scheduler,
                        weights: Checkpoint::from_safetensors_bytes(embedded.weights, name)?,
                    };
                    let labels = [
                        format!("{name}/config.json"),
                        format!("{name}/scheduler_config.json"),
                    ];
                    Ok(Box::new(DiffusersUNet::from_files(
                        files,
                        name,
                        [&labels[0], &labels[1]],
                        dtype,
                        device,
                    )?))
                }
                Source::Url { url, file } => {
                    let cache = registry::ld3_cache_dir(|k| std::env::var(k).ok());
                    let pkl = registry::resolve_url(name, cache.as_deref(), url, &file)
                        .map_err(|e| Error::Invalid(e.to_string()))?;
                    let dir = converted_once(&pkl, name)?;
                    let net = crate::edm_pkl::read_converted(&dir)?;
                    Ok(Box::new(crate::edm_net::EdmNetwork::new(
                        &net, name, dtype, device,
                    )?))
                }
                Source::Hub {
                    repo,
                    revision,
                    files,
                } => {
                    let cache = registry::hf_cache_dir(|k| std::env::var(k).ok());
                    let dir = registry::resolve_hub(name, cache.as_deref(), repo, revision, files)
                        .map_err(|e| Error::Invalid(e.to_string()))?;
                    if crate::sd::is_pipeline(&dir) {
                        return Ok(Box::new(crate::sd::StableDiffusion::from_dir(
                            &dir, dtype, device, None,
                        )?));
                    }
                    Ok(Box::new(DiffusersUNet::from_dir(&dir, dtype, device)?))
                }
            }
        }
    }
}

/// The folder beside a fetched snapshot `pkl` that holds it converted (`converted/`), written on
/// first use: the pickle is read (never run) once, later loads read safetensors.
fn converted_once(pkl: &std::path::Path, name: &str) -> Result<PathBuf> {
    let dir = pkl.with_file_name("converted");
    if !dir.join("edm.json").is_file() {
        eprintln!(
            "{name}: converting {} once into {}",
            pkl.display(),
            dir.display()
        );
        let net = crate::edm_pkl::read_network(pkl, "ema")?;
        let source = pkl.file_name().map(|n| n.to_string_lossy().into_owned());
        crate::edm_pkl::write_converted(&net, source.as_deref().unwrap_or(name), "ema", &dir)?;
    }
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The embedded mixtures are copies (the crate must build from its own files) of the
    /// fixtures the tests and docs use: they may not drift apart.
    #[test]
    fn embedded_mixtures_are_the_fixtures() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        for (name, fixture) in [
            ("demo-edm-gmm", "fixtures/gmm/edm-public/gmm.json"),
            ("demo-sd-gmm", "fixtures/gmm/vp-public/gmm.json"),
            ("demo-class-gmm", "fixtures/gmm-class/edm/gmm.json"),
        ] {
            let (_, _, json) = EMBEDDED.iter().find(|(n, _, _)| *n == name).unwrap();
            let file = std::fs::read_to_string(root.join(fixture)).unwrap();
            assert_eq!(*json, file, "{name} differs from {fixture}");
        }
    }

    #[test]
    fn parses_and_rejects_clearly() {
        assert_eq!(
            "gmm:a/b.json".parse::<ModelSpec>().unwrap(),
            ModelSpec::Gmm("a/b.json".into())
        );
        assert!("gmm:"
            .parse::<ModelSpec>()
            .unwrap_err()
            .to_string()
            .contains("needs a file"));
        let e = "foo".parse::<ModelSpec>().unwrap_err().to_string();
        assert!(
            e.contains("gmm:PATH.json")
                && e.contains("ld3-mnist-32")
                && e.contains("diffusers layout"),
            "{e}"
        );
        assert_eq!(
            "net.pkl".parse::<ModelSpec>().unwrap(),
            ModelSpec::EdmPickle("net.pkl".into())
        );
        for (name, _, _) in EMBEDDED {
            let m = load_model(&name.parse().unwrap()).unwrap();
            assert!(m.describe().contains(name));
        }
        assert_eq!(
            DEFAULT_MODEL.parse::<ModelSpec>().unwrap(),
            ModelSpec::Registry("ld3-mnist-32")
        );
        assert_eq!(
            "ddpm-cifar10-32".parse::<ModelSpec>().unwrap().to_string(),
            "ddpm-cifar10-32"
        );
        let e = load_model(&ModelSpec::Gmm("/nonexistent.json".into()))
            .err()
            .unwrap();
        assert!(e.to_string().contains("/nonexistent.json"), "{e}");
    }

    #[test]
    fn the_embedded_network_loads() {
        let m = load_model(&DEFAULT_MODEL.parse().unwrap()).unwrap();
        assert_eq!(m.sample_shape(), &[1, 32, 32]);
        assert!(m.describe().contains("ld3-mnist-32"));
    }
}
