//! Bad input gives clear errors, never a panic.

mod common;

use candle_core::{DType, Device, Tensor};
use common::SingleGaussian;
use ld3_solvers::noise::Edm;
use ld3_solvers::steps::{LogSnrUniform, StepSchedule};
use ld3_solvers::{
    sample, Error, NetTime, NoiseSchedule, Predictor, Result, SolverConfig, SolverName, Target,
    Times,
};

/// A model that returns NaN below a noise level.
struct Broken(SingleGaussian);

impl Predictor for Broken {
    fn noise_schedule(&self) -> &dyn NoiseSchedule {
        self.0.noise_schedule()
    }
    fn predict(&self, x: &Tensor, at: &NetTime, target: Target) -> Result<Tensor> {
        let out = self.0.predict(x, at, target)?;
        if at.t.to_scalar::<f64>()? < 1.0 {
            Ok((out * f64::NAN)?)
        } else {
            Ok(out)
        }
    }
}

fn model() -> SingleGaussian {
    SingleGaussian {
        schedule: Box::new(Edm::default()),
        mean: Tensor::new(&[0.1f64, 0.2], &Device::Cpu).unwrap(),
        std: 0.5,
    }
}

#[test]
fn nan_from_the_denoiser_is_an_error_naming_the_time() {
    let m = Broken(model());
    let t = LogSnrUniform.times(m.noise_schedule(), 6).unwrap();
    let times = Times::from_f64(&t, &t, &Device::Cpu).unwrap();
    let x = Tensor::ones((1, 2), DType::F64, &Device::Cpu).unwrap();
    for name in SolverName::ALL {
        let solver = SolverConfig::new(name, None, None)
            .unwrap()
            .build()
            .unwrap();
        let err = sample(solver.as_ref(), &m, &x, &times, None).unwrap_err();
        assert!(matches!(err, Error::NonFinite { .. }), "{name:?}: {err}");
        assert!(err.to_string().contains("t_net ="), "{err}");
    }
}

#[test]
fn bad_times_are_clear_errors() {
    let m = model();
    let x = Tensor::ones((1, 2), DType::F64, &Device::Cpu).unwrap();
    let solver = SolverConfig::new(SolverName::UniPc, Some(2), None)
        .unwrap()
        .build()
        .unwrap();
    let run = |t: &[f64], t_net: &[f64]| {
        let times = Times::from_f64(t, t_net, &Device::Cpu)?;
        sample(solver.as_ref(), &m, &x, &times, None)
    };
    let e = run(&[80.0, 1.0, 5.0, 0.002], &[80.0, 1.0, 5.0, 0.002]).unwrap_err();
    assert!(e.to_string().contains("decrease strictly"), "{e}");
    let e = run(&[80.0, 1.0, 0.002], &[80.0, 0.002]).unwrap_err();
    assert!(e.to_string().contains("t_net has 2"), "{e}");
    let e = run(&[80.0, 1.0, 0.002], &[80.0, f64::NAN, 0.002]).unwrap_err();
    assert!(e.to_string().contains("t_net_1"), "{e}");
    let e = run(&[500.0, 1.0, 0.002], &[500.0, 1.0, 0.002]).unwrap_err();
    assert!(e.to_string().contains("time range"), "{e}");
    let e = Times::new(
        &Tensor::new(&[[1.0f64]], &Device::Cpu).unwrap(),
        &Tensor::new(&[1.0f64], &Device::Cpu).unwrap(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("rank-1"), "{e}");
}
