//! # ld3
//!
//! The ld3-rs workspace in one import: [`solvers`] (noise schedules, step schedules,
//! differentiable diffusion ODE solvers), [`models`] (the `Denoiser` trait, exact
//! Gaussian mixtures) and [`train`] (LD3). The cross-crate tests in `tests/` live here.
//!
//! A solve (the README's example):
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use ld3::models::{load_model, Denoiser, DenoiserPredictor};
//! use ld3::solvers::{rng, sample, steps::{LogSnrUniform, StepSchedule}, SolverConfig, SolverName, Times};
//!
//! let model = load_model(&"demo-edm-gmm".parse()?)?;
//! let (solver, steps) = SolverConfig::new(SolverName::UniPc, Some(3), None)?.build_for_nfe(6)?;
//! let schedule = model.noise_schedule();
//! let t = LogSnrUniform.times(schedule, steps)?;
//! let times = Times::from_f64(&t, &t, model.device())?; // or Times::new(&var_t, &var_t_net)
//! let z = rng::standard_normal(0, 4, model.sample_shape(), candle_core::DType::F64, model.device())?;
//! // Conditioned models: DenoiserPredictor::with_conditioning(model, Conditioning::Class(labels)).
//! let out = sample(solver.as_ref(), &DenoiserPredictor::new(model.as_ref()), &(z * schedule.prior_scale())?, &times, None)?;
//! # Ok(()) }
//! ```

pub use ld3_metrics as metrics;
pub use ld3_models as models;
pub use ld3_solvers as solvers;
pub use ld3_train as train;
