//! LD3 with its defaults (L2, 50 + 50 teacher pairs pooled, UniPC-3 teacher at 20 NFE) on the
//! exact Gaussian-mixture fixtures, for seeds 0, 1 and 2 (disjoint teacher pairs), judged on 1000
//! fresh noises against a near-exact reference (`GmmFixture::fresh`; the fixtures' own 16 noises
//! are too few when two samples that switch mixture components decide an RMS error): relative RMS
//! error and the median per-sample relative error, averaged over the seeds, beside every
//! hand-made schedule and the official code's schedules. One seed's 100 pairs hold one or two of
//! the samples that decide an RMS error on a mixture, so single seeds differ by up to 1.5×;
//! the bounds are on the mean. Measured numbers: docs/ld3.md.

mod common;

use common::{load, name, Fixture};
use ld3::models::Denoiser;
use ld3::solvers::{SolverConfig, SolverName, SolverVariant};
use ld3::train::trainer::hand_made;
use ld3::train::{TeacherConfig, TrainConfig, Trainer};

/// (RMS, median) relative errors on the fresh noises.
struct Scores {
    /// The learned schedules' mean over seeds 0, 1 and 2.
    learned: (f64, f64),
    /// (name, RMS, median) of every hand-made schedule.
    baselines: Vec<(String, f64, f64)>,
    /// The official code's schedules passed in, in order.
    official: Vec<(f64, f64)>,
}

/// Trains seeds 0, 1 and 2 and scores them on the same 1000 fresh noises — the learned
/// schedules averaged — beside every hand-made schedule and the official code's `official`.
fn mean_over_seeds(
    f: &Fixture,
    solver: SolverConfig,
    nfe: usize,
    official: &[(Vec<f64>, Vec<f64>)],
) -> Scores {
    let case = name(f);
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
    let mut learned = (0.0, 0.0);
    for seed in 0..3 {
        let (t, t_net) = train(f, &solver, nfe, seed);
        let (rms, med) = score(&t, &t_net);
        eprintln!(
            "{case} {} {nfe} seed {seed}: learned ({rms}, {med})",
            solver.solver.as_str()
        );
        learned = (learned.0 + rms / 3.0, learned.1 + med / 3.0);
    }
    let baselines = hand_made(solver.solver)
        .iter()
        .map(|rule| {
            let t = rule.times(f.gmm.noise_schedule(), steps).unwrap();
            let (rms, med) = score(&t, &t);
            (rule.name(), rms, med)
        })
        .collect();
    let official = official.iter().map(|(t, t_net)| score(t, t_net)).collect();
    eprintln!("{case}: mean {learned:?}, official {official:?}, hand-made {baselines:?}");
    Scores {
        learned,
        baselines,
        official,
    }
}

/// The schedule (`t_steps`, `tc_steps`) the official code learned for this setting and seed
/// (fixtures/official-ld3/, written by fixtures/gen/official_ld3_gmm.py).
fn official_schedule(name: &str) -> (Vec<f64>, Vec<f64>) {
    let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/official-ld3")
        .join(format!("{name}.json"));
    ld3_testing::official_ld3_run(&path).unwrap()
}

/// LD3 with the defaults and `seed`: the learned (t, t_net).
fn train(f: &Fixture, solver: &SolverConfig, nfe: usize, seed: u64) -> (Vec<f64>, Vec<f64>) {
    let case = name(f);
    let teacher = TeacherConfig::default_for(&f.gmm, 20).unwrap();
    let dir = std::env::temp_dir().join(format!(
        "ld3-fixture-{}-{}-{nfe}-{seed}-{}",
        case,
        solver.solver.as_str(),
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    let mut config = TrainConfig::new(solver.clone(), nfe, teacher);
    config.seed = seed;
    let out = Trainer::new(&f.gmm, case, config, &dir)
        .unwrap()
        .run(false, None)
        .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    (out.schedule.t, out.schedule.t_net)
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
    let official: Vec<_> = (0..3)
        .map(|seed| official_schedule(&format!("edm-public-dpm_solver++-3-6-{seed}")))
        .collect();
    let s = mean_over_seeds(
        &f,
        SolverConfig::new(SolverName::DpmSolverPp, Some(3), None).unwrap(),
        6,
        &official,
    );
    let (hand, rms, med) = best(&s).clone();
    // Measured (the reference variant, the default), seeds 0–2: 0.072 / 0.036 against Karras
    // 0.190 / 0.176.
    assert!(
        s.learned.0 < 0.5 * rms && s.learned.1 < med,
        "learned {:?}, best hand-made {hand} ({rms}, {med})",
        s.learned
    );
    // Hand-made schedules are poor here: the official code reaches 0.4× logSNR's error on the
    // fixture noises; the learned schedule 0.26× on the fresh ones.
    let logsnr = s.baselines.iter().find(|b| b.0 == "logsnr").unwrap().1;
    assert!(s.learned.0 < 0.4 * logsnr, "{:?} vs {logsnr}", s.learned);
    // Level with the official code's seeds 0–2 (0.077 / 0.042 on average): measured 0.94× its
    // RMS error, with a lower median.
    let n = s.official.len() as f64;
    let official = s
        .official
        .iter()
        .fold((0.0, 0.0), |a, x| (a.0 + x.0 / n, a.1 + x.1 / n));
    assert!(
        s.learned.0 < 1.05 * official.0 && s.learned.1 < official.1,
        "learned {:?}, official {:?}",
        s.learned,
        official
    );
}

#[test]
fn unipc_2_bh2_at_5_nfe_on_the_sd_vp_mixture() {
    let f = load("vp-public");
    let official = f.official_ld3("uni_pc-bh2-order2-nfe5").unwrap().unwrap();
    let s = mean_over_seeds(
        &f,
        SolverConfig::new(SolverName::UniPc, Some(2), Some(SolverVariant::Bh2)).unwrap(),
        5,
        &[official],
    );
    let (hand, rms, med) = best(&s).clone();
    // Measured (λ layout, the default), seeds 0–2: 0.099 / 0.012 against logSNR 0.089 / 0.055
    // and the official seed-0 schedule 0.107 / 0.007; over seeds 0–5 0.087, below logSNR. Seeds
    // 0–2 are the unlucky half (docs/ld3.md): on this VP mixture the learned schedule, like the
    // official one, trades the rare samples that switch components (which decide the RMS
    // error, and which 100 pairs barely sample) for a 4.7× lower median.
    assert!(
        s.learned.0 < 1.15 * rms && s.learned.1 < 0.5 * med,
        "learned {:?}, best hand-made {hand} ({rms}, {med})",
        s.learned
    );
    assert!(
        s.learned.0 < 1.1 * s.official[0].0,
        "learned {:?}, official {:?}",
        s.learned,
        s.official
    );
}

#[test]
fn ipndm_3_at_4_nfe_on_the_edm_mixture() {
    let f = load("edm-public");
    let official = f.official_ld3("ipndm-order3-nfe4").unwrap().unwrap();
    let s = mean_over_seeds(
        &f,
        SolverConfig::new(SolverName::Ipndm, Some(3), None).unwrap(),
        4,
        &[official],
    );
    let (hand, rms, med) = best(&s).clone();
    // Measured, seeds 0–2: 0.087 / 0.030 against GITS 0.143 / 0.061; official seed 0 0.093 /
    // 0.029.
    assert!(
        s.learned.0 < rms && s.learned.1 < med,
        "learned {:?}, best hand-made {hand} ({rms}, {med})",
        s.learned
    );
    // A lower RMS error than the official seed-0 schedule, a median within 20 % of its.
    let official = s.official[0];
    assert!(
        s.learned.0 < official.0 && s.learned.1 < 1.2 * official.1,
        "learned {:?}, official {:?}",
        s.learned,
        official
    );
}

/// Mixtures the defaults were not measured on (fixtures/gen/gmm_mixtures.py): DPM-Solver++-3 at
/// 6 NFE, where hand-made schedules are poor on EDM mixtures and good on VP ones.
#[test]
fn dpm_solver_pp_3_at_6_nfe_on_other_mixtures() {
    // (mixture, bound on the learned RMS error as a multiple of the best hand-made one's, on
    // its median likewise). Measured, seeds 0–2: edm-b 0.112 / 0.032 against GITS 0.172 /
    // 0.129; vp-b 0.076 / 0.031 against time-quadratic 0.084 / 0.051; vp-a 0.085 / 0.017
    // against GITS 0.084 / 0.042 — level in RMS there (the same trade as on vp-public; over
    // seeds 0–5 0.079, below GITS).
    for (case, rms_bound, median_bound) in
        [("edm-b", 0.9, 1.0), ("vp-b", 1.0, 1.0), ("vp-a", 1.1, 0.5)]
    {
        let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures/gmm-other")
            .join(case);
        // Only the mixture is used: scores come from fresh noise.
        let f = Fixture::from_mixture(&dir, 1, 0, 10).unwrap();
        let s = mean_over_seeds(
            &f,
            SolverConfig::new(SolverName::DpmSolverPp, Some(3), None).unwrap(),
            6,
            &[],
        );
        let (hand, rms, med) = best(&s).clone();
        assert!(
            s.learned.0 < rms_bound * rms && s.learned.1 < median_bound * med,
            "{case}: learned {:?}, best hand-made {hand} ({rms}, {med})",
            s.learned
        );
    }
}
