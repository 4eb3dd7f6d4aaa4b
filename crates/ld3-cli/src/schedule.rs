//! Choosing solvers and step schedules from the command line; `ld3 schedule`.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use ld3_models::{ConditioningKind, Denoiser, Guided, ModelSpec, DEFAULT_MODEL};
use ld3_solvers::steps::{HandMade, StepSchedule};
use ld3_solvers::{ScheduleFile, SolverConfig, SolverName, SolverVariant};

/// Hand-made step schedules.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ScheduleName {
    /// Uniform in the model's time t.
    TimeUniform,
    /// Quadratic in t (LD3's time_quadratic).
    TimeQuadratic,
    /// Uniform in half log-SNR λ.
    Logsnr,
    /// Karras ρ-spacing in σ/α (EDM; ρ from --rho).
    Edm,
    /// Karras' formula applied to t itself (the LD3 code's `edm` for VP models).
    TimeEdm,
    /// GITS presets (SD σ range, stretched onto the model's), interpolated to any NFE.
    Gits,
    /// Align-Your-Steps presets (--ays-model), interpolated to any NFE.
    Ays,
}

/// Which AYS list.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum AysModel {
    /// Stable Diffusion 1.5.
    Sd15,
    /// SDXL.
    Sdxl,
}

/// Options that pick a model and a solver (shared by `sample`, `schedule`, `train` and
/// `eval samples`).
#[derive(Args, Debug)]
pub struct SolverArgs {
    /// Model: a registry network (ld3-mnist-32, embedded, the default; ddpm-cifar10-32, from
    /// the hub once `cargo xtask fetch-weights ddpm-cifar10-32` has fetched it; NVIDIA's EDM
    /// networks, fetched the same way: edm-cifar10-32x32-uncond-vp, edm-cifar10-32x32-uncond-ve,
    /// edm-cifar10-32x32-cond-vp, edm-cifar10-32x32-cond-ve, edm-ffhq-64x64-uncond-vp,
    /// edm-ffhq-64x64-uncond-ve, edm-afhqv2-64x64-uncond-vp, edm-afhqv2-64x64-uncond-ve,
    /// edm-imagenet-64x64-cond-adm; Stable Diffusion pipelines, fetched the same way: sd-v1-4,
    /// sd-v1-5, sd-v2-1-base, sd-v2-1), an embedded
    /// Gaussian mixture (demo-edm-gmm, demo-sd-gmm, demo-class-gmm), gmm:FILE.json, a folder
    /// in the diffusers layout (config.json, diffusion_pytorch_model.safetensors,
    /// scheduler_config.json; or a text-to-image pipeline folder with model_index.json), or an EDM network snapshot FILE.pkl (SongUNet, ADM; read
    /// without running it) or its `ld3 convert` folder. `ld3 list` describes them.
    #[arg(long, default_value = DEFAULT_MODEL)]
    pub model: String,
    /// Solver: ddim, euler, heun, dpm-solver++, unipc, ipndm [default: dpm-solver++; with `ld3
    /// sample --schedule-file`, the file's].
    #[arg(long)]
    pub solver: Option<String>,
    /// Solver order [default: 3 for dpm-solver++/unipc/ipndm].
    #[arg(long)]
    pub order: Option<usize>,
    /// Solver variant: unipc bh1 or bh2 [default: bh2]; dpm-solver++ taylor (truly third order)
    /// or reference (DPM-Solver's, diffusers' and the official LD3 code's, steadier at few
    /// steps) [default: reference; `ld3 train` at order 3 from 8 NFE: taylor, which learns the
    /// better schedules there (docs/ld3.md)]; they differ at order 3.
    #[arg(long)]
    pub variant: Option<String>,
    /// Model evaluations [default: 10; with `ld3 sample --schedule-file`, the file's].
    #[arg(long)]
    pub nfe: Option<usize>,
    /// Where the model runs: cpu, cuda, cuda:N (a build with `--features cuda`) or metal (a
    /// build with `--features metal`).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Classifier-free guidance scale g ≥ 1 for conditional models (1: none) [default: 7.5 for
    /// Stable Diffusion pipelines, else none].
    #[arg(long)]
    pub guidance: Option<f64>,
}

/// Stable Diffusion's usual guidance scale, the default for text-to-image pipelines.
pub const SD_GUIDANCE: f64 = 7.5;

/// Options that pick a hand-made step schedule (`sample`, `schedule`, `eval samples`; `train`
/// compares against all of them).
#[derive(Args, Debug)]
pub struct StepArgs {
    /// Hand-made step schedule [default: logsnr].
    #[arg(long, value_enum)]
    pub schedule: Option<ScheduleName>,
    /// ρ of the edm / time-edm schedules.
    #[arg(long, default_value_t = 7.0)]
    pub rho: f64,
    /// The AYS list for --schedule ays.
    #[arg(long, value_enum, default_value = "sd15")]
    pub ays_model: AysModel,
}

impl StepArgs {
    /// The hand-made rule for `solver`.
    pub fn step_rule(&self, solver: SolverName) -> Box<dyn StepSchedule> {
        let rho = self.rho;
        match self.schedule.unwrap_or(ScheduleName::Logsnr) {
            ScheduleName::TimeUniform => HandMade::TimeUniform,
            ScheduleName::TimeQuadratic => HandMade::TimeQuadratic,
            ScheduleName::Logsnr => HandMade::LogSnr,
            ScheduleName::Edm => HandMade::Edm { rho },
            ScheduleName::TimeEdm => HandMade::TimeEdm { rho },
            ScheduleName::Gits => HandMade::Gits,
            ScheduleName::Ays => match self.ays_model {
                AysModel::Sd15 => HandMade::AysSd15,
                AysModel::Sdxl => HandMade::AysSdxl,
            },
        }
        .rule(solver)
    }
}

/// The device a `--device` value names; a clear error where this build lacks its backend.
pub fn parse_device(name: &str) -> Result<candle_core::Device> {
    ld3_models::device::parse(name).map_err(|e| anyhow::anyhow!("--device {}: {e}", name.trim()))
}

impl SolverArgs {
    /// The model on `--device`, guided when `--guidance` asks for it.
    pub fn load_model(&self) -> Result<(ModelSpec, Box<dyn Denoiser>)> {
        self.load_model_as(candle_core::DType::F32)
    }

    /// The model on `--device`, a network's weights in `dtype`, guided when `--guidance` asks
    /// for it.
    pub fn load_model_as(
        &self,
        dtype: candle_core::DType,
    ) -> Result<(ModelSpec, Box<dyn Denoiser>)> {
        let device = parse_device(&self.device)?;
        if let Some(g) = self.guidance {
            if !(g >= 1.0 && g.is_finite()) {
                bail!("--guidance must be a number ≥ 1 (1 = no guidance), got {g}");
            }
        }
        let spec: ModelSpec = self.model.parse()?;
        let model = ld3_models::load_model_as(&spec, dtype, &device)
            .with_context(|| format!("loading model {spec}"))?;
        let guidance = self.guidance_for(&spec);
        Ok((spec, self.guided(model, guidance)?))
    }

    /// `--guidance`, or for a Stable Diffusion pipeline folder its default 7.5.
    pub fn guidance_for(&self, spec: &ModelSpec) -> Option<f64> {
        self.guidance.or_else(|| match spec {
            ModelSpec::Dir(dir) if ld3_models::sd::is_pipeline(dir) => Some(SD_GUIDANCE),
            _ => None,
        })
    }

    /// `model` under guidance `g` (unchanged without it, or at 1).
    fn guided(&self, model: Box<dyn Denoiser>, g: Option<f64>) -> Result<Box<dyn Denoiser>> {
        match g {
            Some(g) if g != 1.0 => {
                if model.conditioning() == ConditioningKind::None {
                    bail!(
                        "--guidance {g} needs a conditional model; {} is unconditional",
                        model.describe()
                    );
                }
                Ok(Box::new(Guided::new(model, g)?))
            }
            _ => Ok(model),
        }
    }

    /// The model's name in schedule files and run directories: the spec, with the guidance
    /// scale when guided.
    pub fn model_name(&self, spec: &ModelSpec) -> String {
        match self.guidance_for(spec) {
            Some(g) if g != 1.0 => format!("{spec} (guidance {g})"),
            _ => spec.to_string(),
        }
    }

    /// The solver description from --solver/--order/--variant, falling back to `default`.
    pub fn solver_config(&self, default: Option<&SolverConfig>) -> Result<SolverConfig> {
        let variant: Option<SolverVariant> = self.variant.as_deref().map(str::parse).transpose()?;
        match (&self.solver, default) {
            (None, Some(d)) => {
                if self.order.is_some() || variant.is_some() {
                    Ok(SolverConfig::new(
                        d.solver,
                        self.order.or(Some(d.order)),
                        variant.or(d.variant),
                    )?)
                } else {
                    Ok(d.clone())
                }
            }
            (name, _) => {
                let name: SolverName = name.as_deref().unwrap_or("dpm-solver++").parse()?;
                Ok(SolverConfig::new(name, self.order, variant)?)
            }
        }
    }

    /// A schedule file for the hand-made rule `rule`.
    pub fn hand_made(
        &self,
        rule: &StepArgs,
        spec: &ModelSpec,
        model: &dyn Denoiser,
    ) -> Result<ScheduleFile> {
        let config = self.solver_config(None)?;
        let nfe = self.nfe.unwrap_or(10);
        let (_, steps) = config.build_for_nfe(nfe)?;
        let rule = rule.step_rule(config.solver);
        let t = rule.times(model.noise_schedule(), steps)?;
        let provenance = serde_json::json!({
            "rule": rule.name(),
            "created_by": format!("ld3 {}", env!("CARGO_PKG_VERSION")),
        });
        Ok(ScheduleFile::new(
            config,
            nfe,
            model.noise_schedule(),
            t.clone(),
            t,
            self.model_name(spec),
            provenance,
        )?)
    }
}

/// `ld3 schedule`.
#[derive(Args, Debug)]
pub struct ScheduleArgs {
    #[command(flatten)]
    solver: SolverArgs,
    #[command(flatten)]
    steps: StepArgs,
    /// Where to write the schedule file (JSON); printed to stdout when absent.
    #[arg(long)]
    out: Option<PathBuf>,
}

pub fn run(args: ScheduleArgs) -> Result<()> {
    let (spec, model) = args.solver.load_model()?;
    let file = args.solver.hand_made(&args.steps, &spec, model.as_ref())?;
    match args.out {
        Some(path) => {
            file.write(&path)?;
            eprintln!("wrote {}", path.display());
        }
        None => println!("{}", serde_json::to_string_pretty(&file)?),
    }
    Ok(())
}

/// Rejects a schedule file whose times do not belong to `model` (named `model_name`): another
/// noise schedule, or a schedule LD3 learned for another model (a learned schedule fits the
/// network it was learned on; hand-made ones depend on the noise schedule only).
pub fn check_file_fits(file: &ScheduleFile, model: &dyn Denoiser, model_name: &str) -> Result<()> {
    let ours = model.noise_schedule().config();
    if file.noise_schedule != ours {
        let json = |c: &ld3_solvers::NoiseScheduleConfig| {
            serde_json::to_string(c).unwrap_or_else(|_| "?".into())
        };
        bail!(
            "the schedule file was made for noise schedule {}, but the model uses {}; its times \
             mean something else here (make a schedule for this model)",
            json(&file.noise_schedule),
            json(&ours)
        );
    }
    let learned = file.provenance.get("method").and_then(|m| m.as_str()) == Some("ld3");
    if learned && file.model != model_name {
        bail!(
            "the schedule was learned for model {}, but --model is {model_name}; a learned \
             schedule fits the network it was learned on: give --model {} (or learn one for \
             {model_name})",
            file.model,
            file.model
        );
    }
    Ok(())
}
