//! LD3 with its defaults (L2, 50 + 50 teacher pairs pooled, UniPC-3 teacher at 20 NFE, seed 0) on the
//! exact Gaussian-mixture fixtures, judged on 1000 fresh noises against a near-exact reference
//! (`GmmFixture::fresh`; the fixtures' own 16 noises are too few when two samples that switch
//! mixture components decide an RMS error): relative RMS error and the median per-sample
//! relative error, beside every hand-made schedule and the official code's seed-0 schedule
//! (`official_ld3.json`). Measured numbers: docs/ld3.md.

mod common;

use common::{load, name, Fixture};
use ld3::models::Denoiser;
use ld3::solvers::{SolverConfig, SolverName, SolverVariant};
use ld3::train::trainer::hand_made;
use ld3::train::{TeacherConfig, TrainConfig, Trainer};

/// (RMS, median) relative errors on the fresh noises.
struct Scores {
    learned: (f64, f64),
    /// (name, RMS, median) of every hand-made schedule.
    baselines: Vec<(String, f64, f64)>,
    /// The official code's seed-0 schedule for this setting, where the case has it.
    official: Option<(f64, f64)>,
}

fn train_and_score(
    f: &Fixture,
    solver: SolverConfig,
    nfe: usize,
    official_key: Option<&str>,
) -> Scores {
    let case = name(f);
    let teacher = TeacherConfig::default_for(&f.gmm, 20).unwrap();
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
    // A 1000-NFE reference: equal to the 2000-NFE one of docs/ld3.md to 4 decimals here.
    let fresh = f.fresh(1000, 9_000_000, 1000).unwrap();
    let (s, steps) = solver.build_for_nfe(nfe).unwrap();
    let score = |t: &[f64], t_net: &[f64]| {
        let x = fresh.solve(s.as_ref(), t, t_net).unwrap();
        (
            fresh.relative_error(&x).unwrap(),
            fresh.median_relative_error(&x).unwrap(),
        )
    };
    let learned = score(&out.schedule.t, &out.schedule.t_net);
    let baselines = hand_made(solver.solver)
        .iter()
        .map(|rule| {
            let t = rule.times(f.gmm.noise_schedule(), steps).unwrap();
            let (rms, med) = score(&t, &t);
            (rule.name(), rms, med)
        })
        .collect();
    let official = official_key.map(|key| {
        let (t, t_net) = f.official_ld3(key).unwrap().expect("the fixture has it");
        score(&t, &t_net)
    });
    eprintln!(
        "{case} {} {nfe}: learned {learned:?}, official seed 0 {official:?}, hand-made {baselines:?}",
        solver.solver.as_str()
    );
    Scores {
        learned,
        baselines,
        official,
    }
}

/// The hand-made schedule with the lowest RMS error: (name, RMS, median).
fn best(scores: &Scores) -> &(String, f64, f64) {
    scores
        .baselines
        .iter()
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .unwrap()
}

#[test]
fn dpm_solver_pp_3_at_6_nfe_on_the_edm_mixture() {
    let f = load("edm-public");
    let s = train_and_score(
        &f,
        SolverConfig::new(SolverName::DpmSolverPp, Some(3), None).unwrap(),
        6,
        Some("dpm_solver++-order3-nfe6"),
    );
    let (hand, rms, med) = best(&s).clone();
    let official = s.official.unwrap();
    // Measured (the reference variant, the default): 0.072 / 0.038 against Karras 0.190 / 0.176;
    // the official seed-0 schedule 0.076 / 0.044.
    assert!(
        s.learned.0 < 0.5 * rms && s.learned.1 < med,
        "learned {:?}, best hand-made {hand} ({rms}, {med})",
        s.learned
    );
    // Hand-made schedules are poor here: the official code reaches 0.4× logSNR's error on the
    // fixture noises; the learned schedule 0.26× on the fresh ones.
    let logsnr = s.baselines.iter().find(|b| b.0 == "logsnr").unwrap().1;
    assert!(s.learned.0 < 0.4 * logsnr, "{:?} vs {logsnr}", s.learned);
    // Level with the official seed-0 schedule (its best seed of three on the fixture noises) in
    // RMS — seeds 0 / 1 / 2 here: 0.072 / 0.077 / 0.069 — and below its median.
    assert!(
        s.learned.0 < 1.1 * official.0 && s.learned.1 < official.1,
        "learned {:?}, official {:?}",
        s.learned,
        official
    );
}

#[test]
fn unipc_2_bh2_at_5_nfe_on_the_sd_vp_mixture() {
    let f = load("vp-public");
    let s = train_and_score(
        &f,
        SolverConfig::new(SolverName::UniPc, Some(2), Some(SolverVariant::Bh2)).unwrap(),
        5,
        Some("uni_pc-bh2-order2-nfe5"),
    );
    let (hand, rms, med) = best(&s).clone();
    let official = s.official.unwrap();
    // Measured: 0.091 / 0.048 against logSNR 0.089 / 0.055: level with the best hand-made
    // schedule in RMS, and ahead of the official seed-0 schedule (0.107 / 0.007), which is
    // behind it.
    assert!(
        s.learned.0 < 1.1 * rms && s.learned.1 < med,
        "learned {:?}, best hand-made {hand} ({rms}, {med})",
        s.learned
    );
    assert!(
        s.learned.0 < official.0,
        "learned {:?}, official {:?}",
        s.learned,
        official
    );
}

#[test]
fn ipndm_3_at_4_nfe_on_the_edm_mixture() {
    let f = load("edm-public");
    let s = train_and_score(
        &f,
        SolverConfig::new(SolverName::Ipndm, Some(3), None).unwrap(),
        4,
        Some("ipndm-order3-nfe4"),
    );
    let (hand, rms, med) = best(&s).clone();
    let official = s.official.unwrap();
    // Measured: 0.085 / 0.032 against GITS 0.143 / 0.061; official seed 0 0.093 / 0.029.
    assert!(
        s.learned.0 < rms && s.learned.1 < med,
        "learned {:?}, best hand-made {hand} ({rms}, {med})",
        s.learned
    );
    // A lower RMS error than the official seed-0 schedule, a median within 20 % of its.
    assert!(
        s.learned.0 < official.0 && s.learned.1 < 1.2 * official.1,
        "learned {:?}, official {:?}",
        s.learned,
        official
    );
}

/// Mixtures the defaults were not measured on (fixtures/gen/gmm_mixtures.py): DPM-Solver++-3 at
/// 6 NFE, where hand-made schedules are poor, on one EDM and one VP mixture.
#[test]
fn dpm_solver_pp_3_at_6_nfe_on_other_mixtures() {
    for case in ["edm-b", "vp-a"] {
        let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures/gmm-other")
            .join(case);
        // Only the mixture is used: scores come from fresh noise.
        let f = Fixture::from_mixture(&dir, 1, 0, 10).unwrap();
        let s = train_and_score(
            &f,
            SolverConfig::new(SolverName::DpmSolverPp, Some(3), None).unwrap(),
            6,
            None,
        );
        let (hand, rms, med) = best(&s).clone();
        // Measured (reference variant): edm-b 0.098 / 0.021 against GITS 0.172 / 0.129; vp-a
        // 0.073 / 0.030 against GITS 0.084 / 0.042.
        assert!(
            s.learned.0 < 0.9 * rms && s.learned.1 < med,
            "{case}: learned {:?}, best hand-made {hand} ({rms}, {med})",
            s.learned
        );
    }
}
