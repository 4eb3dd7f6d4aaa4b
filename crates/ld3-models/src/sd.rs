//! A Stable Diffusion pipeline folder in the diffusers layout (`model_index.json`, `unet/`,
//! `vae/`, `text_encoder/`, `tokenizer/`, `scheduler/`; `safety_checker/` and
//! `feature_extractor/` are ignored) as a [`Denoiser`] over latents: the UNet behind the
//! discrete-VP time mapping of its scheduler config, conditioned on CLIP text embeddings, and
//! the VAE decoder as its differentiable `decode`. Prompts become [`Conditioning::Text`] through
//! [`StableDiffusion::text_conditioning`]; classifier-free guidance is the [`crate::Guided`]
//! wrapper around it.

use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use ld3_solvers::{Error, NoiseSchedule, Result};
use serde_json::Value as J;

use crate::clip::{ClipTextModel, ClipTokenizer};
use crate::conditioning::{Conditioning, ConditioningKind};
use crate::denoiser::{Denoiser, Parameterization};
use crate::diffusers::SchedulerConfig;
use crate::network::{DiscreteVpTime, Network};
use crate::unet_cond::UNet2DConditionModel;
use crate::vae::AutoencoderKl;

fn invalid(msg: impl Into<String>) -> Error {
    Error::Invalid(msg.into())
}

/// The UNet as a [`Network`]: latents, the training-step index and text embeddings in.
pub struct SdUNet {
    unet: UNet2DConditionModel,
    dtype: DType,
    device: Device,
    parameters: usize,
    text: ConditioningKind,
}

impl Network for SdUNet {
    fn forward(&self, x: &Tensor, time: &Tensor, cond: &Conditioning) -> Result<Tensor> {
        cond.check_shape(&self.text, x.dim(0)?)?;
        match cond {
            Conditioning::Text { embeddings, .. } => {
                Ok(self
                    .unet
                    .forward(x, time, &embeddings.to_dtype(self.dtype)?)?)
            }
            _ => Err(invalid("Stable Diffusion needs text embeddings")),
        }
    }
    fn conditioning(&self) -> ConditioningKind {
        self.text.clone()
    }
    fn dtype(&self) -> DType {
        self.dtype
    }
    fn device(&self) -> &Device {
        &self.device
    }
    fn parameter_count(&self) -> usize {
        self.parameters
    }
    fn describe(&self) -> String {
        "UNet2DConditionModel".into()
    }
}

/// A text-to-image latent diffusion pipeline.
pub struct StableDiffusion {
    unet: DiscreteVpTime<SdUNet>,
    vae: AutoencoderKl,
    text_encoder: ClipTextModel,
    tokenizer: ClipTokenizer,
    decoded_shape: Vec<usize>,
    dtype: DType,
}

/// The components a pipeline folder must have.
const COMPONENTS: [&str; 5] = ["unet", "vae", "text_encoder", "tokenizer", "scheduler"];

/// Whether `dir` is a text-to-image pipeline folder (its `model_index.json` names a text
/// encoder).
pub fn is_pipeline(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("model_index.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<J>(&t).ok())
        .is_some_and(|j| j.get("text_encoder").is_some())
}

impl StableDiffusion {
    /// The pipeline in `dir`, its networks in `dtype` on `device`, sampling latents of the UNet's
    /// `sample_size` (`latent_size` [h, w] instead when given: the image is 8× that for SD).
    pub fn from_dir(
        dir: &Path,
        dtype: DType,
        device: &Device,
        latent_size: Option<[usize; 2]>,
    ) -> Result<Self> {
        let index_path = dir.join("model_index.json");
        let index: J =
            serde_json::from_str(&std::fs::read_to_string(&index_path).map_err(|cause| {
                Error::Io {
                    path: index_path.display().to_string(),
                    cause,
                }
            })?)
            .map_err(|cause| Error::Json {
                what: format!("{} is not JSON", index_path.display()),
                cause,
            })?;
        let class = index.get("_class_name").and_then(J::as_str).unwrap_or("");
        if !class.starts_with("StableDiffusion") || class.contains("XL") || class.contains('3') {
            return Err(invalid(format!(
                "{}: a {class:?} pipeline; Stable Diffusion 1.x / 2.x text-to-image pipelines \
                 (StableDiffusionPipeline) are supported",
                index_path.display()
            )));
        }
        for c in COMPONENTS {
            if index.get(c).is_none() || !dir.join(c).is_dir() {
                return Err(invalid(format!(
                    "{}: the pipeline has no {c}/ component (a Stable Diffusion folder holds {})",
                    dir.display(),
                    COMPONENTS.join("/, ")
                )));
            }
        }
        let scheduler_path = dir.join("scheduler").join("scheduler_config.json");
        let scheduler = SchedulerConfig::from_json(
            &std::fs::read_to_string(&scheduler_path).map_err(|cause| Error::Io {
                path: scheduler_path.display().to_string(),
                cause,
            })?,
        )
        .map_err(|e| invalid(format!("{}: {e}", scheduler_path.display())))?;
        let schedule: Arc<dyn NoiseSchedule> = scheduler
            .noise_schedule()
            .map_err(|e| invalid(format!("{}: {e}", scheduler_path.display())))?
            .build()?;
        let parameterization = scheduler
            .parameterization()
            .map_err(|e| invalid(format!("{}: {e}", scheduler_path.display())))?;
        let tokenizer = ClipTokenizer::from_dir(&dir.join("tokenizer"))?;
        let text_encoder = ClipTextModel::from_dir(&dir.join("text_encoder"), dtype, device)?;
        let unet = UNet2DConditionModel::from_dir(&dir.join("unet"), dtype, device)?;
        let vae = AutoencoderKl::from_dir(&dir.join("vae"), dtype, device)?;
        let dim = text_encoder.config().hidden_size;
        if dim != unet.config().context_dim() {
            return Err(invalid(format!(
                "{}: the text encoder gives {dim}-wide embeddings but the UNet attends to {}",
                dir.display(),
                unet.config().context_dim()
            )));
        }
        let unet_cfg = unet.config().clone();
        let [h, w] = match latent_size {
            Some(s) => s,
            None => sample_size(&unet_cfg.sample_size)
                .ok_or_else(|| invalid("unet/config.json has no sample_size"))?,
        };
        let factor = 1usize << (unet_cfg.block_out_channels.len() - 1);
        if h == 0 || w == 0 || h % factor != 0 || w % factor != 0 {
            return Err(invalid(format!(
                "latents of {h}x{w} do not fit this UNet: each side must be a positive multiple \
                 of {factor} (images of multiples of {})",
                factor * vae.downsampling()
            )));
        }
        let down = vae.downsampling();
        let decoded_shape = vec![vae.config().out_channels, h * down, w * down];
        let net = SdUNet {
            parameters: unet.parameter_count(),
            unet,
            dtype,
            device: device.clone(),
            text: ConditioningKind::Text {
                length: tokenizer.max_length(),
                dim,
            },
        };
        let name = dir.display().to_string();
        Ok(Self {
            unet: DiscreteVpTime::new(
                net,
                schedule,
                parameterization,
                scheduler.num_train_timesteps,
                vec![unet_cfg.in_channels, h, w],
                name,
            ),
            vae,
            text_encoder,
            tokenizer,
            decoded_shape,
            dtype,
        })
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &ClipTokenizer {
        &self.tokenizer
    }

    /// The VAE.
    pub fn vae(&self) -> &AutoencoderKl {
        &self.vae
    }

    /// The text embeddings [B, 77, D] of `prompts` (in the networks' dtype), warning on stderr
    /// for every prompt longer than the tokenizer takes, as diffusers does.
    pub fn encode_prompts(&self, prompts: &[String]) -> Result<Tensor> {
        let mut ids = Vec::with_capacity(prompts.len());
        for p in prompts {
            let t = self.tokenizer.encode(p)?;
            if let Some(cut) = &t.truncated {
                eprintln!(
                    "warning: the prompt is {} tokens; CLIP takes {}, so this part was cut off: \
                     {cut:?}",
                    t.untruncated_len,
                    self.tokenizer.max_length()
                );
            }
            ids.push(Tensor::new(t.ids.as_slice(), self.device())?);
        }
        let ids = Tensor::stack(&ids, 0)?;
        self.text_encoder.forward(&ids)
    }

    /// The conditioning of a batch: one prompt per sample and the negative prompts guidance
    /// compares with (diffusers' default is the empty prompt).
    pub fn text_conditioning(
        &self,
        prompts: &[String],
        negative: &[String],
    ) -> Result<Conditioning> {
        if prompts.len() != negative.len() {
            return Err(invalid(format!(
                "{} prompts but {} negative prompts",
                prompts.len(),
                negative.len()
            )));
        }
        Ok(Conditioning::Text {
            embeddings: self.encode_prompts(prompts)?,
            negative: Some(self.encode_prompts(negative)?),
        })
    }
}

fn sample_size(v: &Option<J>) -> Option<[usize; 2]> {
    match v.as_ref()? {
        J::Number(n) => n.as_u64().map(|s| [s as usize; 2]),
        J::Array(a) if a.len() == 2 => Some([a[0].as_u64()? as usize, a[1].as_u64()? as usize]),
        _ => None,
    }
}

impl Denoiser for StableDiffusion {
    fn describe(&self) -> String {
        format!("{}, Stable Diffusion", self.unet.describe())
    }
    fn sample_shape(&self) -> &[usize] {
        self.unet.sample_shape()
    }
    fn noise_schedule(&self) -> &dyn NoiseSchedule {
        self.unet.noise_schedule()
    }
    fn parameterization(&self) -> Parameterization {
        self.unet.parameterization()
    }
    fn device(&self) -> &Device {
        self.unet.device()
    }
    fn conditioning(&self) -> ConditioningKind {
        self.unet.conditioning()
    }
    fn parameter_count(&self) -> usize {
        self.unet.parameter_count()
    }
    fn forward(&self, x: &Tensor, t_net: &Tensor, cond: &Conditioning) -> Result<Tensor> {
        self.unet.forward(x, t_net, cond)
    }
    /// The VAE decoder on latents / scaling_factor: the image, about [−1, 1], not clamped.
    fn decode(&self, x: &Tensor) -> Result<Tensor> {
        let z = (x.to_dtype(self.dtype)? / self.vae.scaling_factor())?;
        Ok(self.vae.decode(&z)?.to_dtype(x.dtype())?)
    }
    fn decoded_shape(&self) -> Vec<usize> {
        self.decoded_shape.clone()
    }
    fn encode_text(&self, prompts: &[String]) -> Result<Tensor> {
        self.encode_prompts(prompts)
    }
}
