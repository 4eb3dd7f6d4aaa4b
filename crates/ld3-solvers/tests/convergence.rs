//! Observed convergence order of every solver on single-Gaussian data, whose ODE has a closed
//! form: log2(err(N)/err(2N)) ≥ p − 0.3 for random means and standard deviations under both
//! schedule families (EDM and VP).

mod common;

use candle_core::{Device, Tensor};
use common::SingleGaussian;
use ld3_solvers::noise::{BetaSchedule, Edm, VpDiscrete};
use ld3_solvers::steps::{Explicit, Karras, LogSnrUniform, StepSchedule};
use ld3_solvers::{sample, NoiseSchedule, SolverConfig, SolverName, SolverVariant, Times};
use proptest::prelude::*;

/// The solvers with the order each must show and the step rule it is tested on.
fn cases() -> Vec<(SolverConfig, f64, &'static str)> {
    let c = |s, o, v| SolverConfig::new(s, Some(o), v).unwrap();
    let mut out = vec![
        (c(SolverName::Ddim, 1, None), 1.0, "logsnr"),
        (c(SolverName::Euler, 1, None), 1.0, "karras"),
        (c(SolverName::Heun, 2, None), 2.0, "karras"),
    ];
    for k in 1..=3 {
        // Order k in the Taylor form; the reference form's third order is 2 (tested below).
        out.push((
            c(SolverName::DpmSolverPp, k, Some(SolverVariant::Taylor)),
            k as f64,
            "logsnr",
        ));
        for v in [SolverVariant::Bh1, SolverVariant::Bh2] {
            out.push((c(SolverName::UniPc, k, Some(v)), k as f64, "logsnr"));
        }
    }
    for k in 1..=4 {
        // iPNDM's fixed Adams–Bashforth weights assume equal steps in s = σ/α.
        out.push((c(SolverName::Ipndm, k, None), k as f64, "uniform-s"));
    }
    out
}

fn times(rule: &str, s: &dyn NoiseSchedule, steps: usize) -> Vec<f64> {
    match rule {
        "logsnr" => LogSnrUniform.times(s, steps).unwrap(),
        "karras" => Karras::default().times(s, steps).unwrap(),
        _ => {
            let (hi, lo) = (s.edm_sigma(s.t_max()), s.edm_sigma(s.t_min()));
            let sigmas = (0..=steps)
                .map(|i| hi + (lo - hi) * i as f64 / steps as f64)
                .collect();
            Explicit::Sigmas(sigmas).times(s, steps).unwrap()
        }
    }
}

/// The largest distance to the exact solution over the solver's trajectory (x_1..x_N): unlike
/// the final error alone, it cannot vanish by a chance sign change of the leading error terms.
fn error(
    model: &SingleGaussian,
    config: &SolverConfig,
    rule: &str,
    steps: usize,
    z: &Tensor,
) -> f64 {
    let solver = config.build().unwrap();
    let s = model.schedule.as_ref();
    let t = times(rule, s, steps);
    let times = Times::from_f64(&t, &t, &Device::Cpu).unwrap();
    let x_t = (z * s.prior_scale()).unwrap();
    let mut worst = 0.0f64;
    let mut track = |info: &ld3_solvers::StepInfo| -> ld3_solvers::Result<()> {
        let exact = model.exact(&x_t, t[0], info.t)?;
        let e: f64 = (info.x - exact)?.sqr()?.sum_all()?.sqrt()?.to_scalar()?;
        worst = worst.max(e);
        Ok(())
    };
    let out = sample(solver.as_ref(), model, &x_t, &times, Some(&mut track)).unwrap();
    assert_eq!(out.nfe, solver.nfe(steps));
    worst
}

fn observed_orders(edm: bool, mean: Vec<f64>, std: f64, seed: u64) -> Vec<(String, f64, f64)> {
    let dev = Device::Cpu;
    // EDM (σ/α from 80 down to 0.002) and Stable Diffusion's discrete VP schedule (14.6 to 0.029).
    let schedule: Box<dyn NoiseSchedule> = if edm {
        Box::new(Edm::default())
    } else {
        Box::new(VpDiscrete::from_betas(BetaSchedule::ScaledLinear, 0.00085, 0.012, 1000).unwrap())
    };
    let model = SingleGaussian {
        schedule,
        mean: Tensor::new(mean.as_slice(), &dev).unwrap(),
        std,
    };
    let z =
        ld3_solvers::rng::standard_normal(seed, 2, &[mean.len()], candle_core::DType::F64, &dev)
            .unwrap();
    cases()
        .into_iter()
        .map(|(config, p, rule)| {
            // AB4 on uniform s-steps is stable only for |Δs|·max|∂ε̂/∂y| ≲ 0.3, i.e. N ≳ s_max/(0.6·std),
            // and reaches its asymptotic order later still.
            let n = if rule == "uniform-s" {
                // Below std 0.5 iPNDM-4 is not yet asymptotic at these N (order 3.67–3.69 at
                // std 0.3), while doubling N for every std meets round-off at std 1.4 (VP, order
                // 3.06): N grows as 1/std.
                let base = if edm { 2048 } else { 512 };
                if std < 0.5 {
                    2 * base
                } else {
                    base
                }
            } else {
                24
            };
            let (e1, e2) = (
                error(&model, &config, rule, n, &z),
                error(&model, &config, rule, 2 * n, &z),
            );
            (config.to_string(), p, (e1 / e2).log2())
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 6, .. ProptestConfig::default() })]
    #[test]
    fn every_solver_converges_at_its_order(
        edm in any::<bool>(),
        mean in proptest::collection::vec(-2.0f64..2.0, 3),
        std in 0.3f64..1.5,
        seed in 0u64..1000,
    ) {
        for (name, p, observed) in observed_orders(edm, mean.clone(), std, seed) {
            prop_assert!(observed >= p - 0.3, "{name}: observed order {observed:.3} < {p} - 0.3 (edm={edm}, std={std})");
        }
    }
}

#[test]
#[ignore = "prints the observed orders; run with --ignored --nocapture"]
fn print_observed_orders() {
    for edm in [true, false] {
        for (name, p, observed) in observed_orders(edm, vec![0.5, -1.0, 1.5], 0.5, 3) {
            println!("edm={edm} {name:<28} p={p} observed={observed:.3}");
        }
    }
}

#[test]
fn reference_third_order_weight_is_only_second_order() {
    let dev = Device::Cpu;
    let model = SingleGaussian {
        schedule: Box::new(Edm::default()),
        mean: Tensor::new(&[0.3f64, -0.4], &dev).unwrap(),
        std: 0.3,
    };
    let z = ld3_solvers::rng::standard_normal(1, 2, &[2], candle_core::DType::F64, &dev).unwrap();
    let order = |solver: &dyn ld3_solvers::Solver| {
        let err = |n: usize| {
            let t = LogSnrUniform.times(model.schedule.as_ref(), n).unwrap();
            let times = Times::from_f64(&t, &t, &dev).unwrap();
            let x_t = (&z * 80.0).unwrap();
            let out = sample(solver, &model, &x_t, &times, None).unwrap();
            let exact = model.exact(&x_t, t[0], t[n]).unwrap();
            (out.x - exact)
                .unwrap()
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .sqrt()
                .unwrap()
                .to_scalar::<f64>()
                .unwrap()
        };
        (err(96) / err(192)).log2()
    };
    let ours = order(&ld3_solvers::solvers::DpmSolverPp::new(3).unwrap());
    let reference = order(&ld3_solvers::solvers::DpmSolverPp::reference(3).unwrap());
    assert!(ours > 2.7, "{ours}");
    assert!(reference < 2.3, "{reference}");
}
