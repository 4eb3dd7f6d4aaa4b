//! Solver overhead per step on a [16, 4, 64, 64] state, next to the cost of one evaluation of a
//! 10-component Gaussian-mixture denoiser on the same state. Results: docs/BENCHMARKS.md.
//!
//! `cargo bench --bench solver_overhead`

use candle_core::{DType, Device, Tensor};
use criterion::{criterion_group, criterion_main, Criterion};
use ld3::models::{Denoiser, DenoiserPredictor, GaussianMixture, GmmComponent};
use ld3::solvers::noise::{BetaSchedule, VpDiscrete};
use ld3::solvers::steps::{LogSnrUniform, StepSchedule};
use ld3::solvers::{
    rng, sample, NetTime, NoiseSchedule, NoiseScheduleConfig, Predictor, Result, SolverConfig,
    SolverName, SolverVariant, Target, Times,
};

const SHAPE: [usize; 3] = [4, 64, 64];
const STEPS: usize = 10;

/// A model that costs nothing: its "prediction" is its input, so a solve measures the solver.
struct Free(VpDiscrete);

impl Predictor for Free {
    fn noise_schedule(&self) -> &dyn NoiseSchedule {
        &self.0
    }
    fn predict(&self, x: &Tensor, _at: &NetTime, _target: Target) -> Result<Tensor> {
        Ok(x.clone())
    }
}

fn sd() -> VpDiscrete {
    VpDiscrete::from_betas(BetaSchedule::ScaledLinear, 0.00085, 0.012, 1000).unwrap()
}

fn benches(c: &mut Criterion) {
    let dev = Device::Cpu;
    let x = rng::standard_normal(0, 16, &SHAPE, DType::F32, &dev).unwrap();
    let model = Free(sd());
    let t = LogSnrUniform.times(&model.0, STEPS).unwrap();
    let times = Times::from_f64(&t, &t, &dev).unwrap();
    let mut group = c.benchmark_group("solve_10_steps_free_model");
    group.sample_size(10);
    let configs = [
        SolverConfig::new(SolverName::Ddim, None, None),
        SolverConfig::new(SolverName::Euler, None, None),
        SolverConfig::new(SolverName::Heun, None, None),
        SolverConfig::new(SolverName::DpmSolverPp, Some(3), None),
        SolverConfig::new(SolverName::UniPc, Some(3), Some(SolverVariant::Bh2)),
        SolverConfig::new(SolverName::Ipndm, Some(4), None),
    ];
    for config in configs {
        let config = config.unwrap();
        let solver = config.build().unwrap();
        group.bench_function(config.to_string(), |b| {
            b.iter(|| sample(solver.as_ref(), &model, &x, &times, None).unwrap())
        });
    }
    group.finish();

    let components = (0..10)
        .map(|k| GmmComponent {
            weight: 1.0,
            mean: rng::SplitMix64::new(k).normals(SHAPE.iter().product()),
            std: 0.5,
        })
        .collect();
    let config: NoiseScheduleConfig = sd().config();
    let gmm = GaussianMixture::new(SHAPE.to_vec(), components, config).unwrap();
    let predictor = DenoiserPredictor::new(&gmm);
    let t_net = NetTime::new(gmm.noise_schedule(), &Tensor::new(0.5f64, &dev).unwrap()).unwrap();
    let mut group = c.benchmark_group("denoiser_one_evaluation");
    group.sample_size(10);
    group.bench_function("gmm-10-components", |b| {
        b.iter(|| predictor.predict(&x, &t_net, Target::Data).unwrap())
    });
    group.finish();
}

criterion_group!(solver_overhead, benches);
criterion_main!(solver_overhead);
