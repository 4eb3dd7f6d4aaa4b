//! Pixel diffusion models in the diffusers layout (a folder with `config.json`, the weights
//! `diffusion_pytorch_model.safetensors` and `scheduler_config.json`, or a pipeline folder with
//! `unet/` and `scheduler/`), seen as a [`Denoiser`].

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use ld3_solvers::noise::{BetaSchedule, NoiseScheduleConfig};
use ld3_solvers::{Error, Result};
use serde::Deserialize;

use crate::checkpoint::Checkpoint;
use crate::conditioning::{Conditioning, ConditioningKind};
use crate::denoiser::Parameterization;
use crate::network::{DiscreteVpTime, Network};
use crate::unet2d::{UNet2DConfig, UNet2DModel};

/// The parts of diffusers' `scheduler_config.json` that define the model's noise schedule and
/// prediction type (the sampler-specific fields are ignored: ld3 brings its own solvers).
#[derive(Clone, Debug, Deserialize)]
pub struct SchedulerConfig {
    /// `_class_name`, e.g. `DDPMScheduler`.
    #[serde(rename = "_class_name", default)]
    pub class_name: Option<String>,
    /// Training noise levels N.
    #[serde(default = "thousand")]
    pub num_train_timesteps: usize,
    /// β layout.
    #[serde(default = "linear")]
    pub beta_schedule: String,
    /// β_1.
    #[serde(default = "beta_start")]
    pub beta_start: f64,
    /// β_N.
    #[serde(default = "beta_end")]
    pub beta_end: f64,
    /// Explicit β list (overrides the layout).
    #[serde(default)]
    pub trained_betas: Option<Vec<f64>>,
    /// `epsilon`, `sample` or `v_prediction`.
    #[serde(default = "epsilon")]
    pub prediction_type: String,
    /// Zero terminal SNR rescaling (not supported: λ = −∞ at t = 1).
    #[serde(default)]
    pub rescale_betas_zero_snr: bool,
}

fn thousand() -> usize {
    1000
}
fn linear() -> String {
    "linear".into()
}
fn beta_start() -> f64 {
    1e-4
}
fn beta_end() -> f64 {
    0.02
}
fn epsilon() -> String {
    "epsilon".into()
}

/// Schedulers whose config describes a discrete VP (β) schedule.
const VP_SCHEDULERS: [&str; 12] = [
    "DDPMScheduler",
    "DDIMScheduler",
    "PNDMScheduler",
    "DPMSolverMultistepScheduler",
    "DPMSolverSinglestepScheduler",
    "EulerDiscreteScheduler",
    "EulerAncestralDiscreteScheduler",
    "HeunDiscreteScheduler",
    "LMSDiscreteScheduler",
    "UniPCMultistepScheduler",
    "DEISMultistepScheduler",
    "KDPM2DiscreteScheduler",
];

impl SchedulerConfig {
    /// Parses `scheduler_config.json` text.
    pub fn from_json(json: &str) -> std::result::Result<Self, String> {
        let c: Self = serde_json::from_str(json)
            .map_err(|e| format!("not a diffusers scheduler config ({e})"))?;
        if let Some(name) = &c.class_name {
            if !VP_SCHEDULERS.contains(&name.as_str()) {
                return Err(format!(
                    "scheduler {name} is not supported: ld3 reads the β schedules of {}",
                    VP_SCHEDULERS.join(", ")
                ));
            }
        }
        if c.rescale_betas_zero_snr {
            return Err(
                "rescale_betas_zero_snr is not supported (its final noise level has zero \
                 signal, where log-SNR is −∞)"
                    .into(),
            );
        }
        c.parameterization()?;
        Ok(c)
    }

    /// The model's noise schedule.
    pub fn noise_schedule(&self) -> std::result::Result<NoiseScheduleConfig, String> {
        if let Some(betas) = &self.trained_betas {
            let mut abar = 1.0;
            let alphas_cumprod = betas
                .iter()
                .map(|b| {
                    abar *= 1.0 - b;
                    abar
                })
                .collect();
            return Ok(NoiseScheduleConfig::VpDiscrete {
                beta_schedule: None,
                beta_start: None,
                beta_end: None,
                num_train_timesteps: betas.len(),
                alphas_cumprod: Some(alphas_cumprod),
            });
        }
        let kind = match self.beta_schedule.as_str() {
            "linear" => BetaSchedule::Linear,
            "scaled_linear" => BetaSchedule::ScaledLinear,
            "squaredcos_cap_v2" => BetaSchedule::SquaredcosCapV2,
            other => {
                return Err(format!(
                    "beta_schedule {other} is not supported (linear, scaled_linear, \
                     squaredcos_cap_v2, or trained_betas)"
                ))
            }
        };
        Ok(NoiseScheduleConfig::VpDiscrete {
            beta_schedule: Some(kind),
            beta_start: Some(self.beta_start),
            beta_end: Some(self.beta_end),
            num_train_timesteps: self.num_train_timesteps,
            alphas_cumprod: None,
        })
    }

    /// What the network predicts.
    pub fn parameterization(&self) -> std::result::Result<Parameterization, String> {
        match self.prediction_type.as_str() {
            "epsilon" => Ok(Parameterization::Epsilon),
            "sample" => Ok(Parameterization::Sample),
            "v_prediction" => Ok(Parameterization::VPrediction),
            other => Err(format!(
                "prediction_type {other} is not supported (epsilon, sample, v_prediction)"
            )),
        }
    }
}

/// The three files of a diffusers UNet2DModel, as text and bytes.
pub struct DiffusersFiles<'a> {
    /// `config.json`.
    pub config: &'a str,
    /// `scheduler_config.json`.
    pub scheduler: &'a str,
    /// The weights.
    pub weights: Checkpoint,
}

/// diffusers' `UNet2DModel` as a [`Network`]: weights in one dtype on one device, its time
/// input the training-step index.
pub struct UNet2DNetwork {
    unet: UNet2DModel,
    dtype: DType,
    device: Device,
    parameters: usize,
}

impl Network for UNet2DNetwork {
    fn forward(&self, x: &Tensor, time: &Tensor, cond: &Conditioning) -> Result<Tensor> {
        cond.check_shape(&ConditioningKind::None, x.dim(0)?)?;
        Ok(self.unet.forward(x, time)?)
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
        "UNet2DModel".into()
    }
}

/// A diffusers pixel model: the [`UNet2DModel`] behind the discrete-VP time mapping of its
/// scheduler config ([`DiscreteVpTime`]).
pub type DiffusersUNet = DiscreteVpTime<UNet2DNetwork>;

fn invalid_file(path: &str, msg: String) -> Error {
    Error::Invalid(format!("{path}: {msg}"))
}

impl DiscreteVpTime<UNet2DNetwork> {
    /// Builds the model from its files; `name` labels it, `labels` name the config files in errors.
    pub fn from_files(
        files: DiffusersFiles,
        name: &str,
        labels: [&str; 2],
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let config =
            UNet2DConfig::from_json(files.config).map_err(|e| invalid_file(labels[0], e))?;
        let sched =
            SchedulerConfig::from_json(files.scheduler).map_err(|e| invalid_file(labels[1], e))?;
        let schedule = sched
            .noise_schedule()
            .map_err(|e| invalid_file(labels[1], e))?
            .build()?;
        let parameterization = sched
            .parameterization()
            .map_err(|e| invalid_file(labels[1], e))?;
        let (h, w) = config.sample_size.hw();
        let shape = vec![config.in_channels, h, w];
        if config.out_channels != config.in_channels {
            return Err(invalid_file(
                labels[0],
                format!(
                    "out_channels {} differs from in_channels {}: a denoiser predicts a tensor \
                     of its input's shape",
                    config.out_channels, config.in_channels
                ),
            ));
        }
        let unet = UNet2DModel::new(config, files.weights.var_builder(dtype, device))?;
        files
            .weights
            .check_all_used(&format!("the UNet2DModel of {}", labels[0]))?;
        let net = UNet2DNetwork {
            unet,
            dtype,
            device: device.clone(),
            parameters: files.weights.value_count(),
        };
        let steps = sched
            .trained_betas
            .as_ref()
            .map_or(sched.num_train_timesteps, Vec::len);
        Ok(Self::new(
            net,
            schedule,
            parameterization,
            steps,
            shape,
            name,
        ))
    }

    /// Loads a folder in the diffusers layout (see [`find_layout`]).
    pub fn from_dir(dir: &Path, dtype: DType, device: &Device) -> Result<Self> {
        let layout = find_layout(dir)?;
        let read = |p: &Path| {
            std::fs::read_to_string(p).map_err(|source| Error::Io {
                path: p.display().to_string(),
                cause: source,
            })
        };
        let (config, scheduler) = (read(&layout.config)?, read(&layout.scheduler)?);
        let files = DiffusersFiles {
            config: &config,
            scheduler: &scheduler,
            weights: Checkpoint::from_file(&layout.weights)?,
        };
        let labels = [
            layout.config.display().to_string(),
            layout.scheduler.display().to_string(),
        ];
        Self::from_files(
            files,
            &dir.display().to_string(),
            [&labels[0], &labels[1]],
            dtype,
            device,
        )
    }

    /// The network.
    pub fn unet(&self) -> &UNet2DModel {
        &self.network().unet
    }
}

/// Where the files of a diffusers model folder are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    /// `config.json` of the UNet.
    pub config: PathBuf,
    /// The weights.
    pub weights: PathBuf,
    /// `scheduler_config.json`.
    pub scheduler: PathBuf,
}

/// Weights file names, in order of preference.
pub const WEIGHTS_FILES: [&str; 2] = [
    "diffusion_pytorch_model.safetensors",
    "diffusion_pytorch_model.bin",
];

/// Finds the files of a model folder: `config.json` + weights + `scheduler_config.json` in the
/// folder itself (google/ddpm-* repos), or a pipeline with `unet/` and `scheduler/` subfolders.
pub fn find_layout(dir: &Path) -> Result<Layout> {
    if !dir.is_dir() {
        return Err(Error::Invalid(format!(
            "{}: no such model folder (a diffusers model folder holds config.json, \
             diffusion_pytorch_model.safetensors and scheduler_config.json)",
            dir.display()
        )));
    }
    let (unet_dir, sched_dirs) = if dir.join("unet").join("config.json").is_file() {
        (
            dir.join("unet"),
            vec![dir.join("scheduler"), dir.to_path_buf()],
        )
    } else {
        (
            dir.to_path_buf(),
            vec![dir.to_path_buf(), dir.join("scheduler")],
        )
    };
    let config = unet_dir.join("config.json");
    if !config.is_file() {
        return Err(Error::Invalid(format!(
            "{}: missing config.json (neither {} nor {} exists); is this a diffusers model folder?",
            dir.display(),
            dir.join("config.json").display(),
            dir.join("unet/config.json").display()
        )));
    }
    let weights = WEIGHTS_FILES
        .iter()
        .map(|f| unet_dir.join(f))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            Error::Invalid(format!(
                "{}: missing weights ({} or {})",
                unet_dir.display(),
                WEIGHTS_FILES[0],
                WEIGHTS_FILES[1]
            ))
        })?;
    let scheduler = sched_dirs
        .iter()
        .map(|d| d.join("scheduler_config.json"))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            Error::Invalid(format!(
                "{}: missing scheduler_config.json (it gives the noise schedule and prediction type)",
                dir.display()
            ))
        })?;
    Ok(Layout {
        config,
        weights,
        scheduler,
    })
}
