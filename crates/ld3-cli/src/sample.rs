//! `ld3 sample`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use ld3_models::{Conditioning, ConditioningKind, Denoiser, DenoiserPredictor};
use ld3_solvers::schedule_file::write_atomic;
use ld3_solvers::{rng, sample, ScheduleFile, StepInfo, Times};

use crate::schedule::{check_file_fits, SolverArgs, StepArgs};
use crate::{images, outputs};

/// Floating-point type of the computation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Precision {
    /// 32-bit.
    F32,
    /// 64-bit.
    F64,
}

/// `ld3 sample`.
#[derive(Args, Debug)]
pub struct SampleArgs {
    #[command(flatten)]
    solver: SolverArgs,
    #[command(flatten)]
    steps: StepArgs,
    /// A schedule file (from `ld3 schedule` or `ld3 train`) instead of --schedule.
    #[arg(long)]
    schedule_file: Option<PathBuf>,
    /// Safetensors file whose tensor `noise` [B, ...shape] holds standard normals (and, for
    /// class-conditional models, may hold `class_labels` [B], u32).
    #[arg(long, conflicts_with_all = ["num_samples", "seed"])]
    noise: Option<PathBuf>,
    /// Class labels of a class-conditional model: one for every sample, or one per sample,
    /// comma-separated (`uncond` = no class).
    #[arg(long, value_delimiter = ',')]
    class_labels: Vec<String>,
    #[command(flatten)]
    prompts: PromptArgs,
    /// Draw this many noise samples instead of --noise [default with --prompts: one per
    /// prompt].
    #[arg(long)]
    num_samples: Option<usize>,
    /// Seed of the drawn noise (sample b uses seed + b).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Samples per solver call.
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    /// Precision of the computation (the output is always f32).
    #[arg(long, value_enum, default_value = "f32")]
    dtype: Precision,
    /// Output safetensors file; holds tensor `samples` [B, ...shape].
    #[arg(long)]
    out: PathBuf,
    /// PNG grid of the samples, for image models [default: --out with the extension .png].
    #[arg(long)]
    grid: Option<PathBuf>,
    /// Also write each sample as a PNG in this folder (image models): `seed-S.png` for drawn
    /// noise (S is its seed: `--seed S --num-samples 1` redraws it), `sample-I.png` for --noise.
    #[arg(long)]
    images: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

/// The prompts of a text-to-image model (Stable Diffusion pipelines).
#[derive(Args, Debug, Default)]
pub struct PromptArgs {
    /// The prompt of every sample (text-to-image models).
    #[arg(long, conflicts_with = "prompts")]
    pub prompt: Option<String>,
    /// A file of prompts, one per line (blank lines skipped): one per sample, or one for all.
    #[arg(long, value_name = "FILE")]
    pub prompts: Option<PathBuf>,
    /// What guidance steers away from [default: the empty prompt].
    #[arg(long, default_value = "")]
    pub negative_prompt: String,
}

impl PromptArgs {
    /// The prompts given, if any (from --prompt or --prompts FILE).
    pub fn list(&self) -> Result<Option<Vec<String>>> {
        match (&self.prompt, &self.prompts) {
            (Some(p), _) => Ok(Some(vec![p.clone()])),
            (None, Some(path)) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading the prompt file {}", path.display()))?;
                let list: Vec<String> = text
                    .lines()
                    .map(|l| l.trim_end_matches('\r').to_string())
                    .filter(|l| !l.trim().is_empty())
                    .collect();
                if list.is_empty() {
                    bail!("the prompt file {} holds no prompts", path.display());
                }
                Ok(Some(list))
            }
            (None, None) => Ok(None),
        }
    }

    /// The prompts for `model`: the list for a text-to-image model (an error without one,
    /// saying `what` needs them), `None` for other models (an error if prompts or a negative
    /// prompt were given).
    pub fn for_model(&self, model: &dyn Denoiser, what: &str) -> Result<Option<Vec<String>>> {
        let text_model = matches!(model.conditioning(), ConditioningKind::Text { .. });
        match (self.list()?, text_model) {
            (Some(list), true) => Ok(Some(list)),
            (None, true) => bail!(
                "{} is a text-to-image model: {what}: give --prompt \"TEXT\" or --prompts FILE \
                 (one prompt per line)",
                model.describe()
            ),
            (Some(_), false) => bail!(
                "--prompt and --prompts apply to text-to-image models; {} takes {}",
                model.describe(),
                model.conditioning()
            ),
            (None, false) if !self.negative_prompt.is_empty() => bail!(
                "--negative-prompt applies to text-to-image models; {} takes {}",
                model.describe(),
                model.conditioning()
            ),
            (None, false) => Ok(None),
        }
    }

    /// The text conditioning of `total` samples for `model`: `prompts` (one for all or one per
    /// sample) and the negative prompt, encoded by the model's text encoder (each distinct
    /// prompt once).
    pub fn conditioning(
        &self,
        prompts: &[String],
        model: &dyn Denoiser,
        total: usize,
    ) -> Result<(Conditioning, Vec<String>)> {
        let per_sample = match prompts.len() {
            1 => vec![prompts[0].clone(); total],
            n if n == total => prompts.to_vec(),
            n => bail!("{n} prompts for {total} samples: give one prompt, or one per sample"),
        };
        let negative = model.encode_text(std::slice::from_ref(&self.negative_prompt))?;
        let (_, l, d) = negative.dims3()?;
        let embeddings = if prompts.len() == 1 {
            model
                .encode_text(prompts)?
                .broadcast_as((total, l, d))?
                .contiguous()?
        } else {
            model.encode_text(&per_sample)?
        };
        let cond = Conditioning::Text {
            embeddings,
            negative: Some(negative.broadcast_as((total, l, d))?.contiguous()?),
        };
        cond.check_for(&model.conditioning(), total)?;
        Ok((cond, per_sample))
    }
}

pub fn run(args: SampleArgs) -> Result<()> {
    let dtype = match args.dtype {
        Precision::F32 => DType::F32,
        Precision::F64 => DType::F64,
    };
    // Outputs first: a path that cannot be written fails now, not after the sampling.
    outputs::check_file("--out", &args.out)?;
    if let Some(dir) = &args.images {
        outputs::check_folder("--images", dir)?;
    }
    let (spec, model) = args.solver.load_model_as(dtype)?;
    let file = match &args.schedule_file {
        Some(_) if args.steps.schedule.is_some() => {
            bail!("give either --schedule or --schedule-file, not both")
        }
        Some(path) => {
            let file = ScheduleFile::read(path)?;
            check_file_fits(&file, model.as_ref(), &args.solver.model_name(&spec))
                .with_context(|| format!("using {}", path.display()))?;
            if let Some(nfe) = args.solver.nfe.filter(|n| *n != file.nfe) {
                bail!(
                    "--nfe {nfe} disagrees with the schedule file, which is for NFE {}; drop --nfe",
                    file.nfe
                );
            }
            let wanted = args.solver.solver_config(Some(&file.solver))?;
            if wanted != file.solver {
                eprintln!(
                    "note: the schedule was made for {}, sampling with {}",
                    file.solver, wanted
                );
                let (_, steps) = wanted.build_for_nfe(file.nfe)?;
                if steps != file.steps {
                    bail!(
                        "{wanted} takes {steps} steps at NFE {}, the schedule file has {}",
                        file.nfe,
                        file.steps
                    );
                }
            }
            ScheduleFile {
                solver: wanted,
                ..file
            }
        }
        None => args.solver.hand_made(&args.steps, &spec, model.as_ref())?,
    };
    let (solver, steps) = file.solver.build_for_nfe(file.nfe)?;
    let device = model.device().clone();
    let shape = model.sample_shape().to_vec();
    let image_model = images::is_image(&model.decoded_shape());
    let grid = args
        .grid
        .clone()
        .unwrap_or_else(|| args.out.with_extension("png"));
    if image_model && grid == args.out {
        bail!(
            "the PNG grid would overwrite --out {}: give --out a .safetensors name, or --grid another file",
            args.out.display()
        );
    }
    if image_model {
        outputs::check_file("--grid", &grid)?;
    }
    if !image_model && (args.grid.is_some() || args.images.is_some()) {
        bail!(
            "--grid and --images need an image model ([1 or 3, H, W]); {} makes {shape:?}",
            model.describe()
        );
    }
    let prompts = args
        .prompts
        .for_model(model.as_ref(), "sampling needs prompts")?;
    let (z, stored_labels) = match (&args.noise, args.num_samples) {
        (Some(path), _) => read_noise(path, &shape)?,
        (None, Some(0)) => bail!("--num-samples must be at least 1"),
        (None, Some(b)) => (
            rng::standard_normal(args.seed, b, &shape, DType::F64, &device)?,
            None,
        ),
        (None, None) if args.prompts.prompts.is_some() => {
            let b = prompts.as_ref().map_or(1, Vec::len);
            (
                rng::standard_normal(args.seed, b, &shape, DType::F64, &device)?,
                None,
            )
        }
        (None, None) => {
            bail!("give the noise: --noise FILE.safetensors, or --num-samples B [--seed S]")
        }
    };
    if args.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    let total = z.dim(0)?;
    let (cond, sample_prompts) = match &prompts {
        Some(list) => {
            let (cond, per_sample) = args.prompts.conditioning(list, model.as_ref(), total)?;
            (cond, Some(per_sample))
        }
        None => (
            conditioning(&args.class_labels, stored_labels, model.as_ref(), total).with_context(
                || match (&args.noise, args.class_labels.is_empty()) {
                    (Some(path), true) => format!("the class labels of {}", path.display()),
                    _ => "the class labels".to_string(),
                },
            )?,
            None,
        ),
    };
    let z = z.to_device(&device)?;
    let times = Times::from_f64(&file.t, &file.t_net, &device)?;
    let prior = model.noise_schedule().prior_scale();
    eprintln!(
        "{}: {} on {} steps ({}), {total} samples",
        model.describe(),
        file.solver,
        steps,
        file.provenance
            .get("rule")
            .and_then(|r| r.as_str())
            .unwrap_or("schedule file"),
    );
    let bar = if args.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new((steps * total.div_ceil(args.batch_size)) as u64)
    };
    bar.set_style(
        ProgressStyle::with_template("{bar:40} step {pos}/{len} {msg} [{elapsed}]")
            .expect("static template"),
    );
    let started = Instant::now();
    let (mut outputs, mut latents, mut nfe) = (Vec::new(), Vec::new(), 0);
    // A latent model's final state is decoded: `samples` holds the decoded images, `latents` the
    // solver's final state.
    let decodes = model.decoded_shape() != shape;
    for start in (0..total).step_by(args.batch_size) {
        let len = args.batch_size.min(total - start);
        let x_t = (z.narrow(0, start, len)?.to_dtype(dtype)? * prior)?;
        let predictor =
            DenoiserPredictor::with_conditioning(model.as_ref(), cond.narrow(start, len)?);
        let mut progress = |info: &StepInfo| -> ld3_solvers::Result<()> {
            bar.inc(1);
            bar.set_message(format!("t={:.4} nfe={}", info.t, info.nfe));
            Ok(())
        };
        let out = sample(
            solver.as_ref(),
            &predictor,
            &x_t,
            &times,
            Some(&mut progress),
        )?;
        nfe = out.nfe;
        let decoded = model.decode(&out.x)?;
        outputs.push(decoded.to_dtype(DType::F32)?);
        if decodes {
            latents.push(out.x.to_dtype(DType::F32)?);
        }
    }
    bar.finish_and_clear();
    let elapsed = started.elapsed().as_secs_f64();
    let samples = Tensor::cat(&outputs, 0)?;
    write_atomic(&args.out, |tmp| {
        let mut tensors = HashMap::from([("samples".to_string(), samples.clone())]);
        if decodes {
            tensors.insert("latents".to_string(), Tensor::cat(&latents, 0)?);
        }
        if let Conditioning::Class(labels) = &cond {
            tensors.insert("class_labels".to_string(), labels.clone());
        }
        Ok(candle_core::safetensors::save(&tensors, tmp)?)
    })?;
    // What made the pictures, in their PNG text chunks.
    let rule = file
        .provenance
        .get("rule")
        .and_then(|r| r.as_str())
        .map(str::to_string)
        .or_else(|| args.schedule_file.as_ref().map(|p| p.display().to_string()))
        .unwrap_or_else(|| "schedule file".into());
    let mut common = vec![
        ("model", args.solver.model_name(&spec)),
        ("solver", file.solver.to_string()),
        ("nfe", nfe.to_string()),
        ("schedule", rule),
    ];
    if sample_prompts.is_some() {
        common.push(("negative_prompt", args.prompts.negative_prompt.clone()));
    }
    if image_model {
        let mut text = common.clone();
        if let Some(list) = &sample_prompts {
            if list.iter().all(|p| *p == list[0]) {
                text.push(("prompt", list[0].clone()));
            }
        }
        if args.noise.is_none() {
            text.push((
                "seeds",
                format!("{}..{}", args.seed, args.seed + total as u64 - 1),
            ));
        }
        images::sample_grid(&samples)?.save_with_text(&grid, &text)?;
        println!("wrote {} (grid of {total} images)", grid.display());
    }
    if let Some(dir) = &args.images {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        for (i, img) in images::Image::from_batch(&samples)?.iter().enumerate() {
            let mut text = common.clone();
            let name = match &args.noise {
                Some(path) => {
                    text.push(("noise", format!("{} sample {i}", path.display())));
                    format!("sample-{i:05}.png")
                }
                None => {
                    let seed = args.seed.wrapping_add(i as u64);
                    text.push(("seed", seed.to_string()));
                    format!("seed-{seed}.png")
                }
            };
            if let Some(list) = &sample_prompts {
                text.push(("prompt", list[i].clone()));
            }
            img.save_with_text(&dir.join(name), &text)?;
        }
        println!("wrote {total} PNG files to {}", dir.display());
    }
    println!("NFE: {nfe} per sample ({total} samples)");
    println!("wall time: {elapsed:.3} s");
    println!(
        "wrote {} (tensor `samples`, {:?})",
        args.out.display(),
        samples.dims()
    );
    Ok(())
}

/// The batch's conditioning: `--class-labels` (one for all, or one per sample), else the noise
/// file's `class_labels`; checked against what the model takes.
fn conditioning(
    flags: &[String],
    stored: Option<Tensor>,
    model: &dyn Denoiser,
    total: usize,
) -> Result<Conditioning> {
    let kind = model.conditioning();
    if !flags.is_empty() && !matches!(kind, ConditioningKind::Class { .. }) {
        bail!(
            "--class-labels applies to class-conditional models; {} takes {kind}",
            model.describe()
        );
    }
    let cond = if !flags.is_empty() {
        let labels: Vec<u32> = flags
            .iter()
            .map(|l| match l.trim() {
                "uncond" => Ok(ld3_models::UNCONDITIONAL_CLASS),
                l => l.parse::<u32>().with_context(|| {
                    format!("--class-labels: '{l}' is not a class number (or `uncond`)")
                }),
            })
            .collect::<Result<_>>()?;
        let labels = match labels.len() {
            1 => vec![labels[0]; total],
            n if n == total => labels,
            n => bail!("--class-labels gives {n} labels for {total} samples: give one, or {total}"),
        };
        Conditioning::classes(&labels, model.device())?
    } else if let Some(labels) = stored.filter(|_| matches!(kind, ConditioningKind::Class { .. })) {
        Conditioning::Class(labels.to_device(model.device())?)
    } else {
        Conditioning::None
    };
    if cond.is_none() && kind != ConditioningKind::None {
        bail!(
            "{} needs {kind}: give --class-labels (or `class_labels` in the --noise file)",
            model.describe()
        );
    }
    cond.check_for(&kind, total)?;
    Ok(cond)
}

/// The tensors `noise` (checked against the model's sample shape) and, if present,
/// `class_labels` of a safetensors file (on the host; checked with the conditioning).
fn read_noise(path: &std::path::Path, shape: &[usize]) -> Result<(Tensor, Option<Tensor>)> {
    let mut tensors = candle_core::safetensors::load(path, &Device::Cpu)
        .with_context(|| format!("reading noise file {}", path.display()))?;
    let labels = tensors.remove("class_labels");
    let Some(noise) = tensors.remove("noise") else {
        let mut names: Vec<_> = tensors.keys().cloned().collect();
        names.sort();
        bail!(
            "{} has no tensor named `noise` (it has: {}); save the noise as `noise`",
            path.display(),
            names.join(", ")
        );
    };
    if noise.rank() != shape.len() + 1 || noise.dims()[1..] != shape[..] || noise.dim(0)? == 0 {
        bail!(
            "the noise in {} has shape {:?}, but this model needs [B, {}] with B ≥ 1",
            path.display(),
            noise.dims(),
            shape
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let noise = noise.to_dtype(DType::F64)?;
    let total: f64 = noise.sum_all()?.to_scalar()?;
    if !total.is_finite() {
        bail!("the noise in {} holds NaN or infinity", path.display());
    }
    Ok((noise, labels))
}
