//! Trains LD3 on a GMM fixture and compares learned and hand-made schedules with the exact ODE
//! solutions: `cargo run --release -p ld3-train --example gmm_fixture_eval -- edm-public dpm-solver++ 3 6 [SEED] [TEACHER_NFE] [SAMPLES]`
//! (run from the repository root). Environment: MEAN or MEDIAN (validation statistic),
//! INIT_UNIFORM, BATCH=n.
use candle_core::{DType, Device, Tensor};
use ld3_models::{Denoiser, DenoiserPredictor, GaussianMixture};
use ld3_solvers::{sample, SolverConfig, SolverName, Times, UniPcVariant};
use ld3_train::{TeacherConfig, TrainConfig, Trainer};
use std::path::PathBuf;

fn rel(a: &Tensor, b: &Tensor) -> f64 {
    let n: f64 = (a - b)
        .unwrap()
        .sqr()
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar()
        .unwrap();
    let d: f64 = b.sqr().unwrap().sum_all().unwrap().to_scalar().unwrap();
    (n / d).sqrt()
}

/// Per-sample ‖a_b − b_b‖/‖b_b‖, sorted ascending.
fn per_sample_rel(a: &Tensor, b: &Tensor) -> Vec<f64> {
    let sq = |t: &Tensor| -> Vec<f64> {
        t.sqr()
            .unwrap()
            .flatten_from(1)
            .unwrap()
            .sum(1)
            .unwrap()
            .to_vec1()
            .unwrap()
    };
    let (n, d) = (sq(&(a - b).unwrap()), sq(b));
    let mut r: Vec<f64> = n.iter().zip(&d).map(|(n, d)| (n / d).sqrt()).collect();
    r.sort_by(|x, y| x.total_cmp(y));
    r
}

/// Median over samples of ‖a_b − b_b‖/‖b_b‖.
fn median_rel(a: &Tensor, b: &Tensor) -> f64 {
    let r = per_sample_rel(a, b);
    let k = r.len();
    0.5 * (r[(k - 1) / 2] + r[k / 2])
}

/// The three largest per-sample relative errors.
fn worst(a: &Tensor, b: &Tensor) -> Vec<f64> {
    per_sample_rel(a, b).into_iter().rev().take(3).collect()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (fx, solver, order, nfe) = (
        &args[1],
        &args[2],
        args[3].parse::<usize>().unwrap(),
        args[4].parse::<usize>().unwrap(),
    );
    let seed: u64 = args.get(5).map(|s| s.parse().unwrap()).unwrap_or(0);
    let tnfe: usize = args.get(6).map(|s| s.parse().unwrap()).unwrap_or(20);
    let dir = PathBuf::from("fixtures/gmm").join(fx);
    let gmm = GaussianMixture::from_file(&dir.join("gmm.json")).unwrap();
    let noise = candle_core::safetensors::load(dir.join("noise.safetensors"), &Device::Cpu)
        .unwrap()
        .remove("noise")
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap();
    let exact: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("exact.json")).unwrap()).unwrap();
    let rows: Vec<Vec<f64>> = serde_json::from_value(exact["exact_at_sigma_min"].clone()).unwrap();
    let exact = Tensor::from_vec(rows.concat(), noise.shape(), &Device::Cpu).unwrap();
    let name: SolverName = solver.parse().unwrap();
    let variant = if name == SolverName::UniPc {
        Some(UniPcVariant::Bh2)
    } else {
        None
    };
    let sc = SolverConfig::new(name, Some(order), variant).unwrap();
    let is_edm = fx.starts_with("edm");
    let teacher = TeacherConfig::new(
        SolverConfig::new(
            SolverName::UniPc,
            Some(3),
            Some(if is_edm {
                UniPcVariant::Bh1
            } else {
                UniPcVariant::Bh2
            }),
        )
        .unwrap(),
        tnfe,
    )
    .unwrap();
    let mut cfg = TrainConfig::new(sc.clone(), nfe, teacher.clone());
    cfg.seed = seed;
    if std::env::var("INIT_UNIFORM").is_ok() {
        cfg.init = ld3_train::Init::Uniform;
    }
    if std::env::var("MEDIAN").is_ok() {
        cfg.validation = ld3_train::ValidationStat::Median;
    }
    if std::env::var("MEAN").is_ok() {
        cfg.validation = ld3_train::ValidationStat::Mean;
    }
    if let Ok(b) = std::env::var("BATCH") {
        cfg.batch_size = b.parse().unwrap();
    }
    if let Some(n) = args.get(7).map(|s| s.parse::<usize>().unwrap()) {
        cfg.train_samples = n;
        cfg.valid_samples = n;
    }
    let run = std::env::temp_dir().join(format!(
        "ld3probe-{}-{}-{}-{}-{}",
        fx, solver, order, nfe, seed
    ));
    let _ = std::fs::remove_dir_all(&run);
    let t0 = std::time::Instant::now();
    let mut tr = Trainer::new(&gmm, fx.clone(), cfg, &run).unwrap();
    let out = tr.run(false, None).unwrap();
    println!(
        "train {:.1}s  init {:?}",
        t0.elapsed().as_secs_f64(),
        out.schedule.provenance["initial_schedule"]
    );
    for r in &out.table {
        println!(
            "  heldout-vs-teacher {:<16} mean {:.5} median {:.5}",
            r.schedule, r.mean, r.median
        );
    }
    let (solver, _) = sc.build_for_nfe(nfe).unwrap();
    let p = DenoiserPredictor::new(&gmm);
    let s = gmm.noise_schedule();
    let x_t = (&noise * s.prior_scale()).unwrap();
    let run_t = |t: &[f64], tn: &[f64]| {
        let times = Times::from_f64(t, tn, &Device::Cpu).unwrap();
        sample(solver.as_ref(), &p, &x_t, &times, None).unwrap().x
    };
    let teacher_x = teacher.solve(&gmm, &noise).unwrap();
    println!(
        "  vs exact: {:<16} {:.4}  median {:.4}",
        "teacher",
        rel(&teacher_x, &exact),
        median_rel(&teacher_x, &exact)
    );
    let x = run_t(&out.schedule.t, &out.schedule.t_net);
    println!("  worst samples (ld3): {:.3?}", worst(&x, &exact));
    println!(
        "  vs exact: {:<16} {:.4}  median {:.4}",
        "ld3",
        rel(&x, &exact),
        median_rel(&x, &exact)
    );
    for rule in ld3_train::trainer::hand_made(name) {
        let (_, steps) = sc.build_for_nfe(nfe).unwrap();
        let t = rule.times(s, steps).unwrap();
        let x = run_t(&t, &t);
        if std::env::var("WORST").is_ok() {
            println!(
                "  worst samples ({}): {:.3?}",
                rule.name(),
                worst(&x, &exact)
            );
        }
        println!(
            "  vs exact: {:<16} {:.4}  median {:.4}",
            rule.name(),
            rel(&x, &exact),
            median_rel(&x, &exact)
        );
    }
}
