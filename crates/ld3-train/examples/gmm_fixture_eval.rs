//! Trains LD3 on a GMM fixture and compares learned and hand-made schedules with the exact ODE
//! solutions (run from the repository root):
//! `cargo run --release -p ld3-train --example gmm_fixture_eval -- FIXTURE SOLVER ORDER NFE
//! [SEED] [TEACHER_NFE] [SAMPLES]`, FIXTURE a name under fixtures/gmm or a directory with a
//! gmm.json. Prints each schedule against the exact solutions of the fixture's noise and the
//! learned one against the teacher on the run's own pairs (the training objective). Environment:
//! - VARIANT=bh1|bh2|taylor|reference (the solver's variant; UniPC defaults to bh2 here),
//! - SPLIT (the paper's train/validation split), TRIMMED or MEDIAN (validation statistic),
//!   INIT_UNIFORM or INIT_HAND_MADE (one start), BATCH=n, RADIUS=r, TRAIN=n / VALID=n (pair
//!   counts), ROUNDS=n (θ+ξ rounds), MODE=lambda|time|official (official: λ for EDM
//!   mixtures, t for VP ones, the official code's layout), RAWLOGITS (the official ξ window),
//!   LR_THETA=v / LR_XI=v (learning rates of θ and ξ);
//! - WORST: the five largest per-sample errors of every schedule and how many exceed 0.2;
//! - OFFICIAL=FILE.json: also score the schedule (`t_steps`, `tc_steps`) the official code
//!   learned, as written by fixtures/gen/official_ld3_gmm.py (on the run's own teacher pairs,
//!   and with HELDOUT on the fresh noises);
//! - HELDOUT=n: also score every schedule on n fresh noises against a near-exact reference
//!   (DPM-Solver++-3 at 2000 NFE on log-SNR steps, itself checked against the fixture's exact
//!   solutions).

use candle_core::Tensor;
use ld3_models::Denoiser;
use ld3_solvers::{SolverConfig, SolverName, SolverVariant};
use ld3_testing::GmmFixture;
use ld3_train::{TeacherConfig, TrainConfig, Trainer};
use std::path::PathBuf;

/// Prints a schedule's RMS and median relative error against the exact solution (and, for
/// `worst`, its five largest per-sample errors and how many exceed 0.2).
fn report(case: &GmmFixture, label: &str, x: &Tensor, worst: bool) {
    if worst {
        let mut r = case.per_sample_relative_errors(x).unwrap();
        r.sort_by(|a, b| b.total_cmp(a));
        let far = r.iter().filter(|e| **e > 0.2).count();
        println!(
            "  worst samples ({label}): {:.3?}, {far} above 0.2",
            &r[..5.min(r.len())]
        );
    }
    println!(
        "  vs exact: {label:<16} {:.4}  median {:.4}",
        case.relative_error(x).unwrap(),
        case.median_relative_error(x).unwrap()
    );
}

fn main() {
    if let Err(e) = ld3_models::allocator::configure() {
        eprintln!("error: {e}");
        std::process::exit(2);
    }
    let args: Vec<String> = std::env::args().collect();
    let (fx, solver_arg, order, nfe) = (
        &args[1],
        &args[2],
        args[3].parse::<usize>().unwrap(),
        args[4].parse::<usize>().unwrap(),
    );
    let seed: u64 = args.get(5).map(|s| s.parse().unwrap()).unwrap_or(0);
    let tnfe: usize = args.get(6).map(|s| s.parse().unwrap()).unwrap_or(20);
    // A fixture name under fixtures/gmm, or any directory with a gmm.json (without exact.json,
    // 16 noises from seed 1234 against the 2000-NFE reference stand in for the exact solutions).
    let dir = if fx.contains('/') {
        PathBuf::from(fx)
    } else {
        PathBuf::from("fixtures/gmm").join(fx)
    };
    let case = if dir.join("exact.json").exists() {
        GmmFixture::load(&dir).unwrap()
    } else {
        GmmFixture::from_mixture(&dir, 16, 1234, 2000).unwrap()
    };
    let fx = &dir.file_name().unwrap().to_string_lossy().into_owned();
    let (gmm, noise) = (&case.gmm, &case.noise);
    let name: SolverName = solver_arg.parse().unwrap();
    let variant = match std::env::var("VARIANT") {
        Ok(v) => Some(v.parse::<SolverVariant>().unwrap()),
        Err(_) if name == SolverName::UniPc => Some(SolverVariant::Bh2),
        Err(_) => None,
    };
    let sc = SolverConfig::new(name, Some(order), variant).unwrap();
    let teacher = TeacherConfig::default_for(gmm, tnfe).unwrap();
    let mut cfg = TrainConfig::new(sc.clone(), nfe, teacher.clone());
    cfg.seed = seed;
    if std::env::var("INIT_UNIFORM").is_ok() {
        cfg.init = ld3_train::Init::Uniform;
    }
    if std::env::var("INIT_HAND_MADE").is_ok() {
        cfg.init = ld3_train::Init::BestHandMade;
    }
    if std::env::var("MEDIAN").is_ok() {
        cfg.validation = ld3_train::ValidationStat::Median;
    }
    if let Ok(r) = std::env::var("RADIUS") {
        cfg.radius = Some(r.parse().unwrap());
    }
    if std::env::var("SPLIT").is_ok() {
        cfg.pairs = ld3_train::PairUse::Split;
    }
    if std::env::var("TRIMMED").is_ok() {
        cfg.validation = ld3_train::ValidationStat::Trimmed;
    }
    if let Ok(b) = std::env::var("BATCH") {
        cfg.batch_size = b.parse().unwrap();
    }
    if let Some(n) = args.get(7).map(|s| s.parse::<usize>().unwrap()) {
        cfg.train_samples = n;
        cfg.valid_samples = n;
    }
    if let Ok(m) = std::env::var("MODE") {
        cfg.mode = Some(match m.as_str() {
            "lambda" => ld3_train::TimeMode::Lambda,
            "time" => ld3_train::TimeMode::Time,
            "official" => ld3_train::TimeMode::official(gmm.noise_schedule()),
            other => panic!("MODE={other}: expected lambda, time or official"),
        });
    }
    if std::env::var("RAWLOGITS").is_ok() {
        cfg.window = ld3_train::WindowRule::RawLogits;
    }
    if let Ok(v) = std::env::var("LR_THETA") {
        cfg.lr_theta = v.parse().unwrap();
    }
    if let Ok(v) = std::env::var("LR_XI") {
        cfg.lr_xi = Some(v.parse().unwrap());
    }
    if let Ok(n) = std::env::var("ROUNDS") {
        cfg.rounds_joint = n.parse().unwrap();
    }
    if let Ok(n) = std::env::var("VALID") {
        cfg.valid_samples = n.parse().unwrap();
    }
    if let Ok(n) = std::env::var("TRAIN") {
        cfg.train_samples = n.parse().unwrap();
    }
    if let Ok(l) = std::env::var("LOSS") {
        cfg.loss = l.parse().unwrap_or_else(|e| panic!("LOSS: {e}"));
    }
    let run = std::env::temp_dir().join(format!(
        "ld3probe-{}-{}-{}-{}-{}-{}-{}",
        std::env::var("LOSS").unwrap_or_default(),
        fx,
        solver_arg,
        order,
        nfe,
        seed,
        std::env::var("VARIANT").unwrap_or_default()
    ));
    let _ = std::fs::remove_dir_all(&run);
    let t0 = std::time::Instant::now();
    let mut tr = Trainer::new(gmm, fx.clone(), cfg, &run).unwrap();
    let out = tr.run(false, None).unwrap();
    println!(
        "train {:.1}s  init {:?}  pairs loss {}",
        t0.elapsed().as_secs_f64(),
        out.schedule.provenance["initial_schedule"],
        out.schedule.provenance["pairs_loss_at_noise"]
            .as_f64()
            .unwrap_or(f64::NAN)
    );
    for r in &out.table {
        println!(
            "  heldout-vs-teacher {:<16} mean {:.5} median {:.5}",
            r.schedule, r.mean, r.median
        );
    }
    let (solver, steps) = sc.build_for_nfe(nfe).unwrap();
    let s = gmm.noise_schedule();
    let worst = std::env::var("WORST").is_ok();
    // The training objective itself: each schedule against the teacher on the run's own pairs.
    let stored =
        candle_core::safetensors::load(run.join("teacher.safetensors"), &candle_core::Device::Cpu)
            .unwrap();
    let pairs = GmmFixture {
        noise: stored["noise"].to_dtype(candle_core::DType::F64).unwrap(),
        exact_at_sigma_min: stored["target"].to_dtype(candle_core::DType::F64).unwrap(),
        exact: serde_json::Value::Null,
        ..case.clone()
    };
    println!(
        "teacher pairs: {} (relative RMS to the teacher)",
        pairs.noise.dim(0).unwrap()
    );
    report(
        &pairs,
        "ld3",
        &pairs
            .solve(solver.as_ref(), &out.schedule.t, &out.schedule.t_net)
            .unwrap(),
        false,
    );
    // A schedule the official code learned, from a file of fixtures/gen/official_ld3_gmm.py.
    let official_file = std::env::var("OFFICIAL")
        .ok()
        .map(|path| ld3_testing::official_ld3_run(std::path::Path::new(&path)).unwrap());
    if let Some((t, t_net)) = &official_file {
        report(
            &pairs,
            "official (file)",
            &pairs.solve(solver.as_ref(), t, t_net).unwrap(),
            false,
        );
    }
    report(
        &case,
        "teacher",
        &teacher
            .solve(gmm, noise, &ld3_models::Conditioning::None, &mut |_, _| {})
            .unwrap(),
        false,
    );
    report(
        &case,
        "ld3",
        &case
            .solve(solver.as_ref(), &out.schedule.t, &out.schedule.t_net)
            .unwrap(),
        true,
    );
    for rule in ld3_train::trainer::hand_made(name) {
        let t = rule.times(s, steps).unwrap();
        report(
            &case,
            &rule.name(),
            &case.solve(solver.as_ref(), &t, &t).unwrap(),
            worst,
        );
    }
    let Some(n) = std::env::var("HELDOUT")
        .ok()
        .map(|v| v.parse::<usize>().unwrap())
    else {
        return;
    };
    // A near-exact reference on n fresh noises (seeds far from the trainer's), checked against
    // the fixture's exact solutions where it has them.
    if case.exact != serde_json::Value::Null {
        report(
            &case,
            "2000-NFE ref",
            &case.reference_solution(noise, 2000).unwrap(),
            false,
        );
    }
    let held = case.fresh(n, 9_000_000, 2000).unwrap();
    println!("held-out: {n} fresh noises against the 2000-NFE reference");
    report(
        &held,
        "teacher",
        &teacher
            .solve(
                gmm,
                &held.noise,
                &ld3_models::Conditioning::None,
                &mut |_, _| {},
            )
            .unwrap(),
        worst,
    );
    let run_z = |t: &[f64], tn: &[f64]| held.solve(solver.as_ref(), t, tn).unwrap();
    report(
        &held,
        "ld3",
        &run_z(&out.schedule.t, &out.schedule.t_net),
        worst,
    );
    // The official code's seed-0 schedule for this setting, where the fixture has it.
    let key = if name == SolverName::UniPc {
        format!("uni_pc-bh2-order{order}-nfe{nfe}")
    } else {
        format!("{}-order{order}-nfe{nfe}", solver_arg.replace('-', "_"))
    };
    if let Some((t, t_net)) = case.official_ld3(&key).unwrap() {
        report(&held, "official seed 0", &run_z(&t, &t_net), worst);
    }
    if let Some((t, t_net)) = &official_file {
        report(&held, "official (file)", &run_z(t, t_net), worst);
    }
    for rule in ld3_train::trainer::hand_made(name) {
        let t = rule.times(s, steps).unwrap();
        report(&held, &rule.name(), &run_z(&t, &t), worst);
    }
}
