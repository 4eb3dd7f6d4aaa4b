//! The gradient of a solve with respect to every solver time t_i, every network time t^c_i and
//! x_T equals central finite differences (f64), for every solver on both schedule families,
//! with an exact Gaussian-mixture model.

mod common;

use candle_core::{DType, Device, Tensor};
use common::{all_solver_configs, load};
use ld3::models::{Denoiser, DenoiserPredictor};
use ld3::solvers::gradcheck::GradCheck;
use ld3::solvers::steps::{LogSnrUniform, StepSchedule};
use ld3::solvers::{rng, sample, Times};

#[test]
fn every_solver_is_differentiable_in_t_t_net_and_x_t() {
    for name in ["edm-public", "vp-public"] {
        let f = load(name);
        let schedule = f.gmm.noise_schedule();
        let x_t = (f.noise.narrow(0, 0, 2).unwrap() * schedule.prior_scale()).unwrap();
        let weights =
            rng::standard_normal(99, 2, f.gmm.sample_shape(), DType::F64, &Device::Cpu).unwrap();
        let predictor = DenoiserPredictor::new(&f.gmm);
        for config in all_solver_configs() {
            let (solver, steps) = config.build_for_nfe(5).unwrap();
            let t = LogSnrUniform.times(schedule, steps).unwrap();
            // Decoupled network times: interior points shifted a little, as LD3 learns them.
            let t_net: Vec<f64> = t
                .iter()
                .enumerate()
                .map(|(i, t)| if i == 0 || i == steps { *t } else { t * 1.01 })
                .collect();
            let (t, t_net) = (
                Tensor::new(t.as_slice(), &Device::Cpu).unwrap(),
                Tensor::new(t_net.as_slice(), &Device::Cpu).unwrap(),
            );
            let loss = |t: &Tensor, t_net: &Tensor, x_t: &Tensor| -> ld3::solvers::Result<Tensor> {
                let times = Times::new(t, t_net)?;
                let out = sample(solver.as_ref(), &predictor, x_t, &times, None)?;
                Ok(out.x.mul(&weights)?.sum_all()?)
            };
            // Relative steps of 1e-5 keep the perturbed end points within the time-range slack.
            let report = GradCheck {
                eps: 1e-5,
                max_coords: 64,
            }
            .run(&[t.clone(), t_net.clone()], |v| loss(&v[0], &v[1], &x_t))
            .unwrap();
            let (err, at) = report.worst();
            assert!(
                err < 1e-5,
                "{name} {config}: gradient (times) relative error {err:e} at {at:?}"
            );
            let report_x = GradCheck {
                eps: 1e-4,
                max_coords: 64,
            }
            .run(std::slice::from_ref(&x_t), |v| loss(&t, &t_net, &v[0]))
            .unwrap();
            let (err, at) = report_x.worst();
            assert!(
                err < 1e-5,
                "{name} {config}: gradient (x_T) relative error {err:e} at {at:?}"
            );
            // Every t_i and t^c_i actually receives a gradient.
            for input in [0, 1] {
                let zero = report
                    .coords
                    .iter()
                    .filter(|c| c.input == input && c.analytic == 0.0)
                    .count();
                assert!(
                    zero <= 1,
                    "{name} {config}: {zero} times of input {input} got no gradient"
                );
            }
        }
    }
}
