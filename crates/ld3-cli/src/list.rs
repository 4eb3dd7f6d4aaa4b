//! `ld3 list`: the models, solvers and step schedules; `ld3 list --check NAME...` loads a model
//! (or metric network) and runs it once, so that a fetched download is known to work before a
//! long job needs it.

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use clap::{Args, ValueEnum};
use ld3_metrics::{FidInception, FidMode, Lpips, LpipsNet};
use ld3_models::{Conditioning, ConditioningKind, ModelSpec, DEFAULT_MODEL, EMBEDDED};
use ld3_solvers::{SolverName, SolverVariant};

use crate::schedule::{parse_device, ScheduleName};

/// `ld3 list`.
#[derive(Args, Debug)]
pub struct ListArgs {
    /// Load each of these and run it once instead of listing: any --model value (a registry
    /// name, gmm:FILE.json, a diffusers folder), `vgg16` (LPIPS's backbone) or `inception`
    /// (FID's network).
    #[arg(long, num_args = 1.., value_name = "NAME")]
    check: Vec<String>,
    /// Device for --check: cpu, cuda, cuda:N or metal.
    #[arg(long, default_value = "cpu")]
    device: String,
}

/// `ld3 list`.
pub fn run(args: ListArgs) -> Result<()> {
    if args.check.is_empty() {
        catalogue();
        return Ok(());
    }
    let device = parse_device(&args.device)?;
    let mut failed = 0;
    for name in &args.check {
        match check(name, &device) {
            Ok(what) => println!("{name}: ok ({what})"),
            Err(e) => {
                eprintln!("{name}: FAILED: {e:#}");
                failed += 1;
            }
        }
    }
    if failed > 0 {
        bail!("{failed} of {} did not load or run", args.check.len());
    }
    Ok(())
}

/// Loads `name` and runs it once on `device`; says what ran.
fn check(name: &str, device: &Device) -> Result<String> {
    match name {
        "vgg16" => {
            let path = crate::train::cached_vgg16_path()?;
            let lpips = Lpips::load(LpipsNet::Vgg16, &path, DType::F32, device)?;
            let x = Tensor::rand(-1f32, 1.0, (1, 3, 64, 64), device)?;
            let y = Tensor::rand(-1f32, 1.0, (1, 3, 64, 64), device)?;
            let d = lpips.per_sample(&x, &y)?.flatten_all()?.to_vec1::<f32>()?[0];
            if !d.is_finite() || d <= 0.0 {
                bail!("LPIPS of two random images is {d}");
            }
            Ok(format!(
                "{}; LPIPS(VGG) of two random images {d:.3}",
                path.display()
            ))
        }
        "inception" => {
            let path = ld3_metrics::inception::default_weights(|k| std::env::var(k).ok()).context(
                "FID's network is not in the cache (`cargo xtask fetch-weights inception`)",
            )?;
            let net = FidInception::load(&path, device)?;
            let image = Tensor::rand(0f32, 255.0, (1, 3, 64, 64), device)?;
            let f = net.features(&image, FidMode::Tf1)?;
            let values = f.flatten_all()?.to_vec1::<f32>()?;
            if f.dims() != [1, 2048] || values.iter().any(|v| !v.is_finite()) {
                bail!("features of a random image are not 2048 finite values");
            }
            Ok(format!("{}; 2048 finite features", path.display()))
        }
        _ => {
            let spec: ModelSpec = name.parse()?;
            let model = ld3_models::load_model_as(&spec, DType::F32, device)?;
            let shape: Vec<usize> = [1]
                .into_iter()
                .chain(model.sample_shape().to_vec())
                .collect();
            let schedule = model.noise_schedule();
            let t = 0.5 * (schedule.t_min() + schedule.t_max());
            let x = (Tensor::randn(0f32, 1.0, shape, device)? * schedule.sigma(t))?;
            let cond = match model.conditioning() {
                ConditioningKind::None => Conditioning::None,
                ConditioningKind::Class { .. } => Conditioning::classes(&[0], device)?,
                ConditioningKind::Text { length, dim } => Conditioning::Text {
                    embeddings: Tensor::zeros((1, length, dim), DType::F32, device)?,
                    negative: None,
                },
            };
            let t_net = Tensor::new(t as f32, device)?;
            let out = model.forward(&x, &t_net, &cond)?;
            let decoded = model.decode(&out)?;
            let finite = decoded
                .to_dtype(DType::F64)?
                .flatten_all()?
                .to_vec1::<f64>()?
                .iter()
                .all(|v| v.is_finite());
            if !finite {
                bail!("its prediction at t = {t} is not finite");
            }
            Ok(format!(
                "{}; one prediction at t = {t:.4} is finite",
                model.describe()
            ))
        }
    }
}

/// The catalogue: models, solvers, step schedules.
/// Where `ld3 train` learns `solver` in another variant than `default`: the first order and
/// NFE at which `ld3_train::default_student_variant` departs from it, and the variant it takes.
fn train_variant_hint(solver: SolverName, default: SolverVariant) -> String {
    solver
        .orders()
        .flat_map(|order| (1..=1000).map(move |nfe| (order, nfe)))
        .find_map(|(order, nfe)| {
            ld3_train::default_student_variant(solver, order, nfe)
                .filter(|v| *v != default)
                .map(|v| {
                    format!(
                        "; `ld3 train` at order {order} from {nfe} NFE: {}",
                        v.as_str()
                    )
                })
        })
        .unwrap_or_default()
}

fn catalogue() {
    println!("models (--model):");
    for e in ld3_models::registry::REGISTRY {
        let (default, source) = match e.source {
            _ if e.name == DEFAULT_MODEL => (" [default]", "embedded".to_string()),
            ld3_models::registry::Source::Embedded => ("", "embedded".to_string()),
            ld3_models::registry::Source::Hub { repo, .. } => (
                "",
                format!(
                    "hub {repo}; `cargo xtask fetch-weights {0}` once, then `ld3 list --check {0}`",
                    e.name
                ),
            ),
            ld3_models::registry::Source::Url { url, .. } => (
                "",
                format!(
                    "{url}; `cargo xtask fetch-weights {0}` once (converted on first use), then \
                     `ld3 list --check {0}`",
                    e.name
                ),
            ),
        };
        println!("  {:<16} {}{default}", e.name, e.description);
        println!(
            "  {:<16}   {}; {}; predicts {}; {:?}; {}; {source}",
            "", e.architecture, e.noise_schedule, e.prediction, e.resolution, e.license
        );
    }
    for (name, about, _) in EMBEDDED {
        println!("  {name:<16} {about}");
    }
    println!("  gmm:FILE.json    a Gaussian mixture from a JSON file");
    println!("  DIR              a folder in the diffusers layout (config.json, weights, scheduler_config.json)");
    println!("  FILE.pkl         an EDM network snapshot, read without running it (or the folder `ld3 convert` made of it)");
    println!("solvers (--solver, --order, --variant):");
    for s in SolverName::ALL {
        let o = s.orders();
        let variants = match s.default_variant() {
            Some(d) => {
                format!(
                    "; variants {} (default {})",
                    s.variants()
                        .iter()
                        .map(|v| v.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                    d.as_str()
                ) + &train_variant_hint(s, d)
            }
            None => String::new(),
        };
        println!(
            "  {:<14} orders {}..={} (default {}){variants}",
            s.as_str(),
            o.start(),
            o.end(),
            s.default_order()
        );
    }
    println!("step schedules (--schedule):");
    for v in ScheduleName::value_variants() {
        if let Some(p) = v.to_possible_value() {
            println!(
                "  {:<14} {}",
                p.get_name(),
                p.get_help().map(|h| h.to_string()).unwrap_or_default()
            );
        }
    }
}
