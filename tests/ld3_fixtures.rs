//! LD3 with its defaults (L2, 50 + 50 teacher pairs, UniPC-3 teacher at 20 NFE, seed 0) on the
//! exact Gaussian-mixture fixtures, judged against the exact ODE solutions of the fixtures'
//! held-out noise: relative RMS error and the median per-sample relative error.

mod common;

use candle_core::Device;
use common::{load, name, Fixture};
use ld3::models::{Denoiser, DenoiserPredictor};
use ld3::solvers::{sample, SolverConfig, SolverName, Times, UniPcVariant};
use ld3::train::trainer::hand_made;
use ld3::train::{TeacherConfig, TrainConfig, Trainer};

struct Scores {
    learned: (f64, f64),
    /// (name, RMS, median) of every hand-made schedule.
    baselines: Vec<(String, f64, f64)>,
}

fn train_and_score(f: &Fixture, solver: SolverConfig, nfe: usize) -> Scores {
    let case = name(f);
    let edm = case.starts_with("edm");
    let variant = if edm {
        UniPcVariant::Bh1
    } else {
        UniPcVariant::Bh2
    };
    let teacher = TeacherConfig::new(
        SolverConfig::new(SolverName::UniPc, Some(3), Some(variant)).unwrap(),
        20,
    )
    .unwrap();
    let dir = std::env::temp_dir().join(format!(
        "ld3-fixture-{}-{}-{nfe}-{}",
        case,
        solver.solver.as_str(),
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    let out = Trainer::new(
        &f.gmm,
        case.clone(),
        TrainConfig::new(solver.clone(), nfe, teacher),
        &dir,
    )
    .unwrap()
    .run(false, None)
    .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    let (s, steps) = solver.build_for_nfe(nfe).unwrap();
    let predictor = DenoiserPredictor::new(&f.gmm);
    let schedule = f.gmm.noise_schedule();
    let x_t = (&f.noise * schedule.prior_scale()).unwrap();
    let score = |t: &[f64], t_net: &[f64]| {
        let times = Times::from_f64(t, t_net, &Device::Cpu).unwrap();
        let x = sample(s.as_ref(), &predictor, &x_t, &times, None)
            .unwrap()
            .x;
        (
            f.relative_error(&x).unwrap(),
            f.median_relative_error(&x).unwrap(),
        )
    };
    let learned = score(&out.schedule.t, &out.schedule.t_net);
    let baselines = hand_made(solver.solver)
        .iter()
        .map(|rule| {
            let t = rule.times(schedule, steps).unwrap();
            let (rms, med) = score(&t, &t);
            (rule.name(), rms, med)
        })
        .collect();
    Scores { learned, baselines }
}

fn best(scores: &Scores) -> (f64, f64) {
    let rms = scores
        .baselines
        .iter()
        .map(|b| b.1)
        .fold(f64::INFINITY, f64::min);
    let med = scores
        .baselines
        .iter()
        .map(|b| b.2)
        .fold(f64::INFINITY, f64::min);
    (rms, med)
}

#[test]
fn dpm_solver_pp_3_at_6_nfe_on_the_edm_mixture() {
    let f = load("edm-public");
    let s = train_and_score(
        &f,
        SolverConfig::new(SolverName::DpmSolverPp, Some(3), None).unwrap(),
        6,
    );
    let (rms, med) = best(&s);
    let logsnr = s.baselines.iter().find(|b| b.0 == "logsnr").unwrap().1;
    // Measured: 0.171 / 0.023 against Karras 0.272 / 0.203 and logSNR 0.391.
    assert!(
        s.learned.0 < rms && s.learned.1 < med,
        "learned {:?}, best hand-made ({rms}, {med})",
        s.learned
    );
    assert!(
        s.learned.0 < 0.5 * logsnr,
        "learned {} vs logSNR {logsnr}",
        s.learned.0
    );
    // The official code reaches 0.126 / 0.046 here with seed 0 (0.157, 0.172 with seeds 1, 2).
    assert!(s.learned.0 < 0.2 && s.learned.1 < 0.046, "{:?}", s.learned);
}

#[test]
fn unipc_2_bh2_at_5_nfe_on_the_sd_vp_mixture() {
    let f = load("vp-public");
    let s = train_and_score(
        &f,
        SolverConfig::new(SolverName::UniPc, Some(2), Some(UniPcVariant::Bh2)).unwrap(),
        5,
    );
    let (rms, med) = best(&s);
    // Measured: 0.0145 / 0.0085 against time-quadratic 0.0497 / 0.0441; official 0.134 / 0.008.
    assert!(
        s.learned.0 < rms && s.learned.1 < med,
        "learned {:?}, best hand-made ({rms}, {med})",
        s.learned
    );
    assert!(s.learned.0 < 0.134, "{:?}", s.learned);
}

#[test]
fn ipndm_3_at_4_nfe_on_the_edm_mixture() {
    let f = load("edm-public");
    let s = train_and_score(
        &f,
        SolverConfig::new(SolverName::Ipndm, Some(3), None).unwrap(),
        4,
    );
    let (_, med) = best(&s);
    let logsnr = s.baselines.iter().find(|b| b.0 == "logsnr").unwrap().1;
    // Measured: 0.182 / 0.029; GITS 0.135 / 0.063, logSNR 0.324; official 0.189 / 0.022.
    // The RMS error does not yet beat the GITS preset here (see docs/ld3.md).
    assert!(
        s.learned.1 < med,
        "learned median {} vs best hand-made {med}",
        s.learned.1
    );
    assert!(
        s.learned.0 < logsnr && s.learned.0 < 0.189,
        "{:?}",
        s.learned
    );
}
