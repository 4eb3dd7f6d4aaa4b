//! `ld3 train`.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use ld3_solvers::{SolverConfig, SolverName, SolverVariant};
use ld3_train::{
    Event, Init, Loss, PairUse, TeacherConfig, TimeMode, TrainConfig, Trainer, ValidationStat,
    WindowRule,
};

use std::sync::Arc;

use candle_core::{DType, Device};
use ld3_metrics::{Lpips, LpipsNet};
use ld3_models::registry;
use ld3_train::LpipsDistance;

use crate::images::{self, Image};
use crate::outputs;
use crate::schedule::SolverArgs;

/// Columns of the comparison picture.
const COMPARE_COLUMNS: usize = 8;

/// One PNG, three rows on the same held-out noise: the teacher, the best hand-made schedule
/// (lowest mean held-out distance), and the learned schedule.
fn write_comparison(outcome: &ld3_train::Outcome, path: &std::path::Path) -> Result<()> {
    let best = outcome
        .table
        .iter()
        .filter(|r| r.schedule != "ld3")
        .min_by(|a, b| a.mean.total_cmp(&b.mean))
        .context("no hand-made schedule in the table")?;
    let row = |name: &str| -> Result<Vec<Image>> {
        let (_, x) = outcome
            .heldout_samples
            .iter()
            .find(|(n, _)| n == name)
            .with_context(|| format!("no held-out samples for {name}"))?;
        let n = x.dim(0)?.min(COMPARE_COLUMNS);
        Image::from_batch(&x.narrow(0, 0, n)?)
    };
    let labels = ["teacher", best.schedule.as_str(), "ld3"];
    let rows = labels.map(row);
    let rows: Vec<Vec<Image>> = rows.into_iter().collect::<Result<_>>()?;
    // Small images (MNIST, CIFAR) are enlarged to be seen.
    let k = images::enlargement(rows[0][0].height());
    let rows: Vec<Vec<Image>> = rows
        .iter()
        .map(|r| r.iter().map(|i| i.upscale(k)).collect())
        .collect();
    let grid = Image::labelled_grid(&labels, &rows, 2)?;
    grid.save(path)?;
    println!(
        "wrote {}: rows teacher, best hand-made ({}), ld3 (labelled) — same noise per column",
        path.display(),
        best.schedule
    );
    Ok(())
}

/// Distances available to the trainer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LossName {
    /// LPIPS for image models when its backbone weights are at hand, else the RMS distance
    /// for images (with a note) and L2 for other models.
    Auto,
    /// Mean squared error per sample.
    L2,
    /// Mean absolute error per sample.
    L1,
    /// Root mean squared error per sample (the L2 distance, not its square).
    Rms,
    /// LPIPS v0.1 (the paper's loss); needs the backbone weights.
    Lpips,
}

/// LPIPS backbones.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LpipsNetName {
    /// VGG16 (the paper's).
    Vgg,
    /// AlexNet.
    Alex,
}

/// The cached VGG16 backbone (`cargo xtask fetch-weights vgg16`), or an error naming the ways to
/// get one.
pub(crate) fn cached_vgg16_path() -> Result<PathBuf> {
    let entry = registry::find_weights("vgg16").context("registry has vgg16")?;
    let cache = registry::hf_cache_dir(|k| std::env::var(k).ok());
    registry::resolve_weights(entry, cache.as_deref()).context(
        "LPIPS(VGG) needs the VGG16 backbone; or give a torchvision-layout file with \
         --lpips-weights",
    )
}

/// The LPIPS distance, its backbone from `--lpips-weights` or the cached `vgg16` entry.
pub(crate) fn lpips_distance(
    net: LpipsNet,
    weights: Option<&std::path::Path>,
    device: &Device,
) -> Result<Arc<dyn ld3_train::Distance>> {
    let path = match (weights, net) {
        (Some(p), _) => p.to_path_buf(),
        (None, LpipsNet::Vgg16) => cached_vgg16_path()?,
        (None, LpipsNet::Alex) => bail!(
            "LPIPS(AlexNet) needs its backbone: give torchvision's alexnet weights (safetensors or \
             .pth, names features.N.*) with --lpips-weights"
        ),
    };
    let lpips = Lpips::load(net, &path, DType::F32, device)?;
    Ok(Arc::new(LpipsDistance(lpips)))
}

/// The teacher's options (shared by `train` and `eval samples`).
#[derive(Args, Debug)]
pub struct TeacherArgs {
    /// Teacher solver.
    #[arg(long, default_value = "unipc")]
    pub teacher_solver: String,
    /// Teacher order [default: 3].
    #[arg(long)]
    pub teacher_order: Option<usize>,
    /// Teacher variant, as --variant [default for unipc: bh1 for EDM models, bh2 for VP].
    #[arg(long)]
    pub teacher_variant: Option<String>,
    /// Teacher NFE (on Karras ρ=7 steps in σ/α).
    #[arg(long, default_value_t = 20)]
    pub teacher_nfe: usize,
}

impl TeacherArgs {
    /// The teacher for `model` (UniPC's variant defaults by the model's noise schedule).
    pub fn config(&self, model: &dyn ld3_models::Denoiser) -> Result<TeacherConfig> {
        let name: SolverName = self.teacher_solver.parse()?;
        let variant: Option<SolverVariant> = match (&self.teacher_variant, name) {
            (Some(v), _) => Some(v.parse()?),
            (None, SolverName::UniPc) => Some(TeacherConfig::default_unipc_variant(model)),
            (None, _) => None,
        };
        TeacherConfig::new(
            SolverConfig::new(name, self.teacher_order, variant)?,
            self.teacher_nfe,
        )
        .context("the teacher")
    }
}

/// On, off, or chosen from the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Switch {
    /// Decide from the model's size.
    Auto,
    /// Always.
    On,
    /// Never.
    Off,
}

/// `ld3 train`.
#[derive(Args, Debug)]
pub struct TrainArgs {
    #[command(flatten)]
    solver: SolverArgs,
    /// Distance to the teacher.
    #[arg(long, value_enum, default_value = "auto")]
    loss: LossName,
    /// LPIPS backbone.
    #[arg(long, value_enum, default_value = "vgg")]
    lpips_net: LpipsNetName,
    /// LPIPS backbone weights in torchvision's names (safetensors or .pth) [default: the
    /// Hugging Face cache's timm/vgg16.tv_in1k, fetched by `cargo xtask fetch-weights vgg16`].
    #[arg(long)]
    lpips_weights: Option<PathBuf>,
    /// Soft-teacher-forcing radius in z-space [default: 0.001·d/N²]; 0 = hard objective.
    #[arg(long, allow_negative_numbers = true)]
    radius: Option<f64>,
    /// Training pairs (with --pairs pooled, both counts train and validate).
    #[arg(long, default_value_t = 50)]
    train_samples: usize,
    /// Validation pairs (with --pairs pooled, both counts train and validate).
    #[arg(long, default_value_t = 50)]
    valid_samples: usize,
    /// Held-out pairs for the final table.
    #[arg(long, default_value_t = 50)]
    heldout_samples: usize,
    /// PNG comparing teacher, best hand-made and learned samples on the same held-out noise
    /// (image models) [default: --out followed by .compare.png].
    #[arg(long)]
    compare: Option<PathBuf>,
    /// Training batch size [default: 2; 1 for text-to-image models, whose decoded images make
    /// each sample costly].
    #[arg(long)]
    batch_size: Option<usize>,
    #[command(flatten)]
    prompts: crate::sample::PromptArgs,
    #[command(flatten)]
    teacher: TeacherArgs,
    /// Seed of the teacher pairs (each seed draws its own noise, disjoint from other seeds') and
    /// of the shuffling.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Where θ starts: both uniform θ and the best hand-made schedule (two runs, the better on
    /// all teacher pairs wins), only the best hand-made schedule, or only uniform θ (official).
    #[arg(long, value_enum, default_value = "both")]
    init: InitName,
    /// Variable θ lays the steps out in [default: lambda, for every model; the official code
    /// uses time for VP and latent models; docs/ld3.md compares the two].
    #[arg(long, value_enum)]
    time_mode: Option<ModeName>,
    /// How the window of the decoupled network times is measured.
    #[arg(long, value_enum, default_value = "step-size")]
    window: WindowName,
    /// Rounds training θ only, then rounds training θ and ξ.
    #[arg(long, default_value_t = 2)]
    rounds_theta: usize,
    /// Rounds training θ and ξ.
    #[arg(long, default_value_t = 5)]
    rounds_joint: usize,
    /// RMSprop learning rate of θ (the paper's 0.005); after every 5 validations without
    /// improvement it decays by 0.8, down to 5e-5 (or the starting rate, if lower).
    #[arg(long, default_value_t = 0.005, allow_negative_numbers = true)]
    lr_theta: f64,
    /// SGD learning rate of ξ, the decoupled network times [default: 0.1/N in the λ layout,
    /// 0.001/N in the t layout]; it decays with θ's, down to 1e-6 (or the starting rate).
    #[arg(long, allow_negative_numbers = true)]
    lr_xi: Option<f64>,
    /// Summary of the validation losses that picks the best parameters.
    #[arg(long, value_enum, default_value = "mean")]
    validation: ValidationName,
    /// Which teacher pairs train and which validate: all pairs for both (lower error on fresh
    /// noise on most mixtures, 2–3× the time), or the paper's split into --train-samples and
    /// --valid-samples.
    #[arg(long, value_enum, default_value = "pooled")]
    pairs: PairsName,
    /// Recompute each step in the backward pass (memory flat in NFE) instead of keeping the
    /// graph: `auto` turns it on for networks of 10M parameters or more.
    #[arg(long, value_enum, default_value = "auto", num_args = 0..=1, default_missing_value = "on")]
    recompute: Switch,
    /// Run directory (teacher pairs, checkpoints, log) [default: OUT.run, the --out path
    /// followed by .run].
    #[arg(long, conflicts_with = "resume")]
    run_dir: Option<PathBuf>,
    /// Continue the run in this run directory (OUT.run for a run without --run-dir), failing if
    /// it holds none. The same command run again continues its run too; other settings are
    /// refused, naming the ones that differ.
    #[arg(long, value_name = "RUN_DIR")]
    resume: Option<PathBuf>,
    /// Where to write the learned schedule file.
    #[arg(long)]
    out: PathBuf,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

/// `--validation`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ValidationName {
    /// Mean of the per-sample losses (official; with L2, the squared RMS error).
    Mean,
    /// Median.
    Median,
    /// Mean of the best 90 % (lower medians, heavier tails on mixtures).
    Trimmed,
}

/// `--pairs`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum PairsName {
    /// Train and validate on all pairs.
    Pooled,
    /// Train on the training pairs, validate on the others (official).
    Split,
}

/// `--init`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum InitName {
    /// Two runs, from uniform θ and from the best hand-made schedule.
    Both,
    /// The hand-made schedule with the lowest validation loss.
    BestHandMade,
    /// Uniform logits.
    Uniform,
}

/// `--time-mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ModeName {
    /// Half log-SNR.
    Lambda,
    /// The model's time.
    Time,
}

/// `--window`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum WindowName {
    /// Half the smallest step in the layout variable.
    StepSize,
    /// Half the smallest difference of the raw logits (official code).
    RawLogits,
}

pub fn run(args: TrainArgs) -> Result<()> {
    // Outputs first: a path that cannot be written fails now, not after the training.
    outputs::check_file("--out", &args.out)?;
    if let Some(p) = &args.compare {
        outputs::check_file("--compare", p)?;
    }
    if let Some(d) = args.run_dir.as_ref().or(args.resume.as_ref()) {
        outputs::check_folder(
            if args.resume.is_some() {
                "--resume"
            } else {
                "--run-dir"
            },
            d,
        )?;
    }
    // One run per output file for the whole run (the run directory has its own lock).
    let _out_lock = ld3_train::Lock::for_output(&args.out)?;
    let (spec, model) = args.solver.load_model()?;
    // A text-to-image model trains on its prompts: a prompt per teacher pair.
    let prompt_conditioner = match args
        .prompts
        .for_model(model.as_ref(), "training needs its prompts")?
    {
        Some(list) => Some(ld3_train::teacher::PromptConditioner::new(
            model.as_ref(),
            list,
            args.prompts.negative_prompt.clone(),
        )?),
        None => None,
    };
    let nfe = args.solver.nfe.unwrap_or(10);
    let run_dir = args
        .resume
        .clone()
        .or(args.run_dir.clone())
        .unwrap_or_else(|| {
            let mut p = args.out.clone().into_os_string();
            p.push(".run");
            PathBuf::from(p)
        });
    let mut solver = args.solver.solver_config(None)?;
    if args.solver.variant.is_none() {
        solver.variant = ld3_train::default_student_variant(solver.solver, solver.order, nfe);
        // A run begun under an older default continues with the variant it began with.
        if let Some(stored) = ld3_train::trainer::stored_config(&run_dir)? {
            let s = &stored.solver;
            if (s.solver, s.order, stored.nfe) == (solver.solver, solver.order, nfe)
                && s.variant != solver.variant
            {
                solver.variant = s.variant;
                eprintln!(
                    "continuing the run in {} with the variant it began with, {} (give --variant \
                     to choose; another variant needs another run directory)",
                    run_dir.display(),
                    s.variant.map_or("none", |v| v.as_str())
                );
            }
        }
    }
    // Distances and pictures compare decoded samples.
    let shape = &model.decoded_shape()[..];
    let image = images::is_image(shape);
    if args.compare.is_some() && !image {
        bail!("--compare needs an image model; this model makes {shape:?}");
    }
    let net = match args.lpips_net {
        LpipsNetName::Vgg => LpipsNet::Vgg16,
        LpipsNetName::Alex => LpipsNet::Alex,
    };
    let lpips_fits = image && shape[1].min(shape[2]) >= net.min_size();
    let explicit_lpips = args.lpips_weights.is_some() || net != LpipsNet::Vgg16;
    let lpips_loss = match net {
        LpipsNet::Vgg16 => Loss::LpipsVgg,
        LpipsNet::Alex => Loss::LpipsAlex,
    };
    let (loss, distance) = match args.loss {
        LossName::L2 => (Loss::L2, None),
        LossName::L1 => (Loss::L1, None),
        LossName::Rms => (Loss::Rms, None),
        LossName::Lpips => {
            if !lpips_fits {
                bail!(
                    "--loss lpips compares RGB or grey images of at least {0}x{0} pixels \
                     (LPIPS-{1}); this model makes {shape:?}",
                    net.min_size(),
                    net.as_str()
                );
            }
            let d = lpips_distance(net, args.lpips_weights.as_deref(), model.device())?;
            (lpips_loss, Some(d))
        }
        // Explicit LPIPS options are honoured (their errors stop the run); only a VGG16
        // backbone missing from the cache falls back to L2.
        LossName::Auto if lpips_fits && (explicit_lpips || cached_vgg16_path().is_ok()) => {
            let d = lpips_distance(net, args.lpips_weights.as_deref(), model.device())?;
            (lpips_loss, Some(d))
        }
        // Images without LPIPS: the pixel distance per sample, not its square (LPIPS is a
        // distance too); on ld3-mnist-32 it beat L2-trained schedules on fresh noise in every
        // statistic, the mean squared error included (docs/ld3.md, "On a real network").
        LossName::Auto if image => {
            if lpips_fits {
                eprintln!(
                    "note: training with the RMS distance: the LPIPS(VGG) backbone is not in the \
                     Hugging Face cache (`cargo xtask fetch-weights vgg16` fetches it, or give \
                     --lpips-weights)"
                );
            }
            (Loss::Rms, None)
        }
        LossName::Auto => (Loss::L2, None),
    };
    let teacher = args.teacher.config(model.as_ref())?;
    let mut config = TrainConfig::new(solver.clone(), nfe, teacher);
    config.loss = loss;
    config.radius = args.radius;
    config.train_samples = args.train_samples;
    config.valid_samples = args.valid_samples;
    config.heldout_samples = args.heldout_samples;
    config.batch_size = args
        .batch_size
        .unwrap_or(if prompt_conditioner.is_some() { 1 } else { 2 });
    config.seed = args.seed;
    config.rounds_theta = args.rounds_theta;
    config.rounds_joint = args.rounds_joint;
    config.lr_theta = args.lr_theta;
    config.lr_xi = args.lr_xi;
    config.recompute = match args.recompute {
        Switch::Auto => ld3_train::recompute_by_default(model.as_ref()),
        Switch::On => true,
        Switch::Off => false,
    };
    config.validation = match args.validation {
        ValidationName::Mean => ValidationStat::Mean,
        ValidationName::Median => ValidationStat::Median,
        ValidationName::Trimmed => ValidationStat::Trimmed,
    };
    config.pairs = match args.pairs {
        PairsName::Pooled => PairUse::Pooled,
        PairsName::Split => PairUse::Split,
    };
    config.init = match args.init {
        InitName::Both => Init::Both,
        InitName::BestHandMade => Init::BestHandMade,
        InitName::Uniform => Init::Uniform,
    };
    config.mode = args.time_mode.map(|m| match m {
        ModeName::Lambda => TimeMode::Lambda,
        ModeName::Time => TimeMode::Time,
    });
    config.window = match args.window {
        WindowName::StepSize => WindowRule::StepSize,
        WindowName::RawLogits => WindowRule::RawLogits,
    };
    let resume = args.resume.is_some();

    let bar = if args.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(0)
    };
    bar.set_style(
        ProgressStyle::with_template("{prefix} {bar:30} {pos}/{len} {msg} [{elapsed}]")
            .expect("static template"),
    );
    eprintln!(
        "{}: learning {solver} at NFE {nfe}; run directory {}",
        model.describe(),
        run_dir.display()
    );
    let observer = |e: &Event| match e {
        Event::Teacher { count } => bar.set_message(format!("teacher pairs ({count})")),
        Event::TeacherProgress { done, total } => {
            bar.set_prefix("teacher pairs");
            bar.set_length(*total as u64);
            bar.set_position(*done as u64);
        }
        Event::Round {
            round,
            rounds,
            joint,
            iterations,
        } => {
            bar.set_prefix(format!(
                "round {}/{rounds} {}",
                round + 1,
                if *joint { "θ+ξ" } else { "θ" }
            ));
            bar.set_length(*iterations as u64);
            bar.set_position(0);
        }
        Event::Iteration { loss, best, .. } => {
            bar.inc(1);
            bar.set_message(format!("loss {loss:.3e} best {best:.3e}"));
        }
        Event::Note(n) => bar.println(n),
    };
    let mut trainer = Trainer::new(
        model.as_ref(),
        args.solver.model_name(&spec),
        config,
        &run_dir,
    )?
    .with_observer(observer);
    if let Some(c) = prompt_conditioner {
        trainer = trainer.with_conditioner(Arc::new(c));
    }
    if let Some(d) = distance {
        trainer = trainer.with_distance(d);
    }
    let outcome = trainer.run(resume, None)?;
    bar.finish_and_clear();
    outcome.schedule.write(&args.out)?;
    let loss = outcome.schedule.provenance["loss"].as_str().unwrap_or("?");
    println!(
        "held-out {} distance to the teacher ({} samples, {} at NFE {nfe}):",
        loss.parse::<Loss>()
            .map_or_else(|_| loss.to_string(), |l| l.to_string()),
        args.heldout_samples,
        solver
    );
    println!("  {:<18} {:>12} {:>12}", "schedule", "mean", "median");
    for row in &outcome.table {
        println!(
            "  {:<18} {:>12.4e} {:>12.4e}",
            row.schedule, row.mean, row.median
        );
    }
    if image {
        let compare = args.compare.clone().unwrap_or_else(|| {
            let mut p = args.out.clone().into_os_string();
            p.push(".compare.png");
            PathBuf::from(p)
        });
        write_comparison(&outcome, &compare)?;
    }
    println!(
        "wrote {} (run directory {})",
        args.out.display(),
        run_dir.display()
    );
    Ok(())
}
