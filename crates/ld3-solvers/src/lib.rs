//! # ld3-solvers
//!
//! Noise schedules ([`NoiseSchedule`]), step schedules ([`StepSchedule`]) and diffusion ODE
//! solvers ([`Solver`]: DDIM, Euler, Heun, DPM-Solver++ 1–3, UniPC bh1/bh2 1–3, iPNDM 1–4) whose
//! outputs are differentiable, through candle's backprop, in every solver time t_i, every network
//! time t^c_i and the starting noise — what LD3 ("Learning to Discretize Denoising Diffusion
//! ODEs", arXiv 2405.15506) trains.
//!
//! ```no_run
//! use ld3_solvers::{sample, steps::{LogSnrUniform, StepSchedule}, SolverConfig, SolverName, Times};
//! # fn demo(model: &dyn ld3_solvers::Predictor, z: &candle_core::Tensor) -> ld3_solvers::Result<()> {
//! let config = SolverConfig::new(SolverName::DpmSolverPp, Some(3), None)?;
//! let (solver, steps) = config.build_for_nfe(6)?;
//! let schedule = model.noise_schedule();
//! let t = LogSnrUniform.times(schedule, steps)?;
//! let times = Times::from_f64(&t, &t, z.device())?;
//! let x_t = (z * schedule.prior_scale())?;
//! let out = sample(solver.as_ref(), model, &x_t, &times, None)?;
//! println!("{} model evaluations", out.nfe);
//! # Ok(()) }
//! ```

mod error;
pub mod gradcheck;
pub mod noise;
pub mod rng;
pub mod schedule_file;
pub mod solvers;
pub mod steps;

pub use error::{Error, Result};
pub use noise::{NoiseSchedule, NoiseScheduleConfig};
pub use schedule_file::ScheduleFile;
pub use solvers::{
    sample, Evaluator, Grid, NetTime, Predictor, Sample, Solver, SolverConfig, SolverName,
    SolverState, SolverVariant, StepCallback, StepInfo, Target, Times, DEFAULT_DPM_VARIANT,
};
pub use steps::StepSchedule;
