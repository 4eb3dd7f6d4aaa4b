//! The LD3 loss gradient with respect to θ, ξ and the starts z': equal to finite differences,
//! and the same (1e-10) whether it goes through the full graph or per-step recomputation.

use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use ld3_models::{Conditioning, Denoiser, DenoiserPredictor, GaussianMixture};
use ld3_solvers::gradcheck::GradCheck;
use ld3_solvers::steps::{Karras, StepSchedule};
use ld3_solvers::{rng, SolverConfig, SolverName, SolverVariant};
use ld3_testing::GmmFixture;
use ld3_train::grad::{Backprop, Problem};
use ld3_train::{Discretization, TimeMode, L2};

fn fixture(name: &str) -> (GaussianMixture, Tensor) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/gmm")
        .join(name);
    let case = GmmFixture::load(&dir).unwrap();
    (case.gmm, case.noise.narrow(0, 0, 2).unwrap())
}

fn max_abs(t: &Tensor) -> f64 {
    t.abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar()
        .unwrap()
}

#[test]
fn recomputation_equals_the_full_graph_and_finite_differences() {
    let configs = [
        SolverConfig::new(SolverName::UniPc, Some(3), Some(SolverVariant::Bh1)).unwrap(),
        SolverConfig::new(SolverName::UniPc, Some(2), Some(SolverVariant::Bh2)).unwrap(),
        SolverConfig::new(SolverName::DpmSolverPp, Some(3), None).unwrap(),
        SolverConfig::new(SolverName::Ipndm, Some(4), None).unwrap(),
        SolverConfig::new(SolverName::Heun, None, None).unwrap(),
        SolverConfig::new(SolverName::Ddim, None, None).unwrap(),
    ];
    for (name, mode) in [
        ("edm-public", TimeMode::Lambda),
        ("vp-public", TimeMode::Time),
    ] {
        let (gmm, z) = fixture(name);
        let shape = gmm.sample_shape().to_vec();
        let target = rng::standard_normal(5, 2, &shape, DType::F64, &Device::Cpu).unwrap();
        for config in &configs {
            let (solver, steps) = config.build_for_nfe(5).unwrap();
            let disc = Discretization::new(mode, steps).unwrap();
            let start = Karras::default()
                .times(gmm.noise_schedule(), steps)
                .unwrap();
            let theta: Vec<f64> = disc
                .fit(gmm.noise_schedule(), &start)
                .unwrap()
                .iter()
                .enumerate()
                .map(|(k, v)| v + 0.1 * (k as f64).sin())
                .collect();
            let theta = Tensor::new(theta.as_slice(), &Device::Cpu).unwrap();
            let xi_scale = if mode == TimeMode::Lambda {
                0.05
            } else {
                0.002
            };
            let xi: Vec<f64> = (0..=steps)
                .map(|k| xi_scale * (1.3 * k as f64).cos())
                .collect();
            let xi = Tensor::new(xi.as_slice(), &Device::Cpu).unwrap();
            let problem = Problem {
                solver: solver.as_ref(),
                model: &gmm,
                discretization: &disc,
                distance: &L2,
            };

            let full = problem
                .loss_and_grads(
                    &theta,
                    &xi,
                    &z,
                    &Conditioning::None,
                    &target,
                    Backprop::FullGraph,
                )
                .unwrap();
            let re = problem
                .loss_and_grads(
                    &theta,
                    &xi,
                    &z,
                    &Conditioning::None,
                    &target,
                    Backprop::Recompute,
                )
                .unwrap();
            assert_eq!(full.per_sample, re.per_sample, "{name} {config}");
            for (what, a, b) in [
                ("θ", &full.d_theta, &re.d_theta),
                ("ξ", &full.d_xi, &re.d_xi),
                ("z'", &full.d_z, &re.d_z),
            ] {
                let diff = max_abs(&(a - b).unwrap());
                let scale = max_abs(a).max(1e-12);
                assert!(
                    diff <= 1e-10 * scale.max(1.0),
                    "{name} {config} {what}: |full − recompute| = {diff:e} (scale {scale:e})"
                );
                assert!(scale > 0.0, "{name} {config}: no gradient for {what}");
            }
            // The full graph against finite differences of the batch-mean loss.
            let loss = |th: &Tensor, x: &Tensor, zz: &Tensor| -> ld3_solvers::Result<Tensor> {
                let schedule = gmm.noise_schedule();
                let (t, t_net) = disc.times_and_net(schedule, th, x)?;
                let times = ld3_solvers::Times::new(&t, &t_net)?;
                let out = ld3_solvers::sample(
                    solver.as_ref(),
                    &DenoiserPredictor::new(&gmm),
                    &(zz * schedule.prior_scale())?,
                    &times,
                    None,
                )?;
                Ok(ld3_train::Distance::per_sample(&L2, &out.x, &target)?.mean(0)?)
            };
            // Steps relative to each coordinate: ξ is small, so it takes a larger relative step.
            GradCheck {
                eps: 1e-5,
                max_coords: 16,
            }
            .run(std::slice::from_ref(&theta), |v| loss(&v[0], &xi, &z))
            .unwrap()
            .assert_within(1e-5);
            GradCheck {
                eps: 1e-3,
                max_coords: 16,
            }
            .run(std::slice::from_ref(&xi), |v| loss(&theta, &v[0], &z))
            .unwrap()
            .assert_within(1e-5);
            GradCheck {
                eps: 1e-4,
                max_coords: 16,
            }
            .run(std::slice::from_ref(&z), |v| loss(&theta, &xi, &v[0]))
            .unwrap()
            .assert_within(1e-5);
        }
    }
}
