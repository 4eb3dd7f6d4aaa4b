//! Wall time and peak memory of one LD3 gradient (θ, ξ, z') through the full graph or by per-step
//! recomputation, batch 2, on a 10-component Gaussian mixture over a [4, 64, 64] state, the
//! embedded ld3-mnist-32 UNet, google/ddpm-cifar10-32's UNet (35.7M parameters, random weights),
//! or any `--model` value (an EDM snapshot, say): `cargo run --release -p ld3-train --example
//! grad_memory -- NFE full|recompute [gmm|ld3-mnist-32|ddpm-cifar10-32|MODEL] [SOLVER[-ORDER]]`.
//! The solver defaults to UniPC-3 (bh2); `ddim`, `ipndm-3` and the like name others. Steps are
//! laid out in time, from the logSNR-uniform schedule. A text-to-image pipeline runs at batch 1
//! with one prompt and guidance 7.5, its loss on the decoded image.
//! Run one configuration per process: the peak (VmHWM) is per process. `WARM=K` times K more
//! gradients after the first and prints their median; `DEVICE=cuda` runs on the GPU in a
//! `--features cuda` build (the printed dθ compares devices). Results: docs/BENCHMARKS.md.

use candle_core::{DType, Device, Tensor};
use ld3_models::diffusers::DiffusersFiles;
use ld3_models::registry::{DDPM_CIFAR10_32_CONFIG, DDPM_SCHEDULER_CONFIG};
use ld3_models::{
    load_model_as, Conditioning, ConditioningKind, Denoiser, DiffusersUNet, GaussianMixture,
    GmmComponent, Guided, UNet2DConfig, UNet2DModel,
};
use ld3_solvers::noise::{BetaSchedule, VpDiscrete};
use ld3_solvers::steps::{LogSnrUniform, StepSchedule};
use ld3_solvers::{rng, NoiseSchedule, SolverConfig, SolverName, SolverVariant};
use ld3_train::grad::{Backprop, Problem};
use ld3_train::{Discretization, TimeMode, L2};

fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn load(name: &str, dev: &Device) -> Box<dyn Denoiser> {
    match name {
        "gmm" => {
            let schedule =
                VpDiscrete::from_betas(BetaSchedule::ScaledLinear, 0.00085, 0.012, 1000).unwrap();
            let components = (0..10)
                .map(|k| GmmComponent {
                    weight: 1.0,
                    mean: rng::SplitMix64::new(k).normals(4 * 64 * 64),
                    std: 0.5,
                })
                .collect();
            Box::new(GaussianMixture::new(vec![4, 64, 64], components, schedule.config()).unwrap())
        }
        "ddpm-cifar10-32" => {
            let config = UNet2DConfig::from_json(DDPM_CIFAR10_32_CONFIG).unwrap();
            // Random weights, made on the CPU (unseeded: compare devices on a model with
            // weights, ld3-mnist-32).
            let weights = UNet2DModel::random_weights(&config, DType::F32, &Device::Cpu).unwrap();
            let files = DiffusersFiles {
                config: DDPM_CIFAR10_32_CONFIG,
                scheduler: DDPM_SCHEDULER_CONFIG,
                weights,
            };
            let labels = ["config.json", "scheduler_config.json"];
            Box::new(DiffusersUNet::from_files(files, name, labels, DType::F32, dev).unwrap())
        }
        other => load_model_as(&other.parse().unwrap(), DType::F32, dev).unwrap(),
    }
}

fn main() {
    if let Err(e) = ld3_models::allocator::configure() {
        eprintln!("error: {e}");
        std::process::exit(2);
    }
    let args: Vec<String> = std::env::args().collect();
    let nfe: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(10);
    let mode = match args.get(2).map(String::as_str) {
        Some("recompute") => Backprop::Recompute,
        _ => Backprop::FullGraph,
    };
    let dev = match ld3_models::device::from_env("DEVICE") {
        Ok(dev) => dev,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    };
    let model = load(args.get(3).map_or("gmm", String::as_str), &dev);
    let shape = model.sample_shape().to_vec();
    let schedule = model.noise_schedule();
    let config = match args.get(4) {
        None => SolverConfig::new(SolverName::UniPc, Some(3), Some(SolverVariant::Bh2)).unwrap(),
        Some(s) => {
            let (name, order) = match s.split_once('-') {
                Some((n, o)) => (n, Some(o.parse().expect("SOLVER-ORDER"))),
                None => (s.as_str(), None),
            };
            SolverConfig::new(name.parse().expect("a solver name"), order, None).unwrap()
        }
    };
    let (solver, steps) = config.build_for_nfe(nfe).unwrap();
    let disc = Discretization::new(TimeMode::Time, steps).unwrap();
    let theta = Tensor::new(
        disc.fit(schedule, &LogSnrUniform.times(schedule, steps).unwrap())
            .unwrap()
            .as_slice(),
        &dev,
    )
    .unwrap();
    let xi = Tensor::zeros(steps + 1, DType::F64, &dev).unwrap();
    // Text-to-image models: batch 1 (LD3's setting for them), one prompt, guidance 7.5, the loss
    // on the decoded image.
    let text = matches!(model.conditioning(), ConditioningKind::Text { .. });
    let (batch, cond) = match text {
        true => {
            let prompt = ["a photograph of an astronaut riding a horse".to_string()];
            let cond = Conditioning::Text {
                embeddings: model.encode_text(&prompt).unwrap(),
                negative: Some(model.encode_text(&[String::new()]).unwrap()),
            };
            (1, cond)
        }
        false => (2, Conditioning::None),
    };
    let guided;
    let model: &dyn Denoiser = match text {
        true => {
            guided = Guided::new(model.as_ref(), 7.5).unwrap();
            &guided
        }
        false => model.as_ref(),
    };
    let z = rng::standard_normal(0, batch, &shape, DType::F32, &dev).unwrap();
    let target = rng::standard_normal(1, batch, &model.decoded_shape(), DType::F32, &dev).unwrap();
    let problem = Problem {
        solver: solver.as_ref(),
        model,
        discretization: &disc,
        distance: &L2,
    };
    let before = peak_rss_mib();
    let start = std::time::Instant::now();
    let out = problem
        .loss_and_grads(&theta, &xi, &z, &cond, &target, mode)
        .unwrap();
    dev.synchronize().unwrap();
    let secs = start.elapsed().as_secs_f64();
    let norm: f64 = out
        .d_theta
        .sqr()
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar()
        .unwrap();
    println!(
        "{} nfe {nfe} {:?}: {secs:.2} s, peak RSS {:.0} MiB (before the gradient {before:.0} MiB), |dθ|² = {norm:.3e}",
        config.solver.as_str(),
        mode,
        peak_rss_mib()
    );
    // The gradient itself, to compare devices (DEVICE=cpu against DEVICE=cuda).
    let d_theta: Vec<f64> = out.d_theta.to_dtype(DType::F64).unwrap().to_vec1().unwrap();
    let shown: Vec<String> = d_theta.iter().map(|v| format!("{v:.6e}")).collect();
    println!("dθ = [{}]", shown.join(", "));
    // WARM=K: K more gradients, their median (what an LD3 iteration costs once the first call's
    // set-up is paid; scripts/bench-vs-torch.sh compares it with PyTorch's).
    let warm: usize = std::env::var("WARM")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    if warm > 0 {
        let mut times: Vec<f64> = (0..warm)
            .map(|_| {
                let start = std::time::Instant::now();
                problem
                    .loss_and_grads(&theta, &xi, &z, &cond, &target, mode)
                    .unwrap();
                dev.synchronize().unwrap();
                start.elapsed().as_secs_f64()
            })
            .collect();
        times.sort_by(f64::total_cmp);
        println!(
            "warm: median of {warm} more gradients {:.1} ms",
            times[warm / 2] * 1e3
        );
    }
}
