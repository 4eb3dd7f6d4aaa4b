//! Diffusion ODE solvers, differentiable in their solver times t_i, their network times t^c_i
//! (LD3's decoupled times) and the starting state x_T.
//!
//! Every solver is a sequence of steps i = 0..N−1 from t_i to t_{i+1} over a [`SolverState`]
//! (the state x_i and the model outputs it still needs), so a step can be replayed alone — the
//! unit of the trainer's recomputation mode. The model is evaluated once at x_T, then at the end
//! of every step but the last (plus Heun's corrections): N evaluations for multistep solvers,
//! none wasted.
//!
//! By job: [`run`](self) holds the [`Solver`] trait and the loop ([`sample`]); `times` the solver
//! and network times ([`Times`], [`Grid`]); `config` the names, orders and NFE budgets
//! ([`SolverName`], [`SolverConfig`]); `linalg` the small differentiable linear algebra of the
//! multistep updates; and one file per solver.

mod config;
mod ddim;
mod dpm_solver_pp;
mod euler;
mod heun;
mod ipndm;
mod linalg;
mod run;
mod times;
mod unipc;

pub use config::{SolverConfig, SolverName, SolverVariant, DEFAULT_DPM_VARIANT};
pub use ddim::Ddim;
pub use dpm_solver_pp::DpmSolverPp;
pub use euler::Euler;
pub use heun::Heun;
pub use ipndm::Ipndm;
pub use run::{
    sample, Evaluator, Sample, Solver, SolverState, StepCallback, StepInfo, LOWER_ORDER_FINAL_BELOW,
};
pub use times::{Grid, Times};
pub use unipc::UniPc;

pub(crate) use linalg::{constant, lin, scale, solve_small};
pub(crate) use run::{finish_step, multistep_order};

use candle_core::Tensor;

use crate::error::Result;
use crate::noise::NoiseSchedule;

/// What a solver asks the model for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// The clean-data prediction x̂_0.
    Data,
    /// The noise prediction ε̂.
    Noise,
}

/// One evaluation's network time t^c with the schedule at it: α(t^c) and σ(t^c), rank-0 tensors
/// differentiable in t^c. A solve evaluates the schedule at all its network times once
/// ([`Evaluator::new`]), so no model call reads anything back to the host.
#[derive(Clone, Debug)]
pub struct NetTime {
    /// t^c (rank 0, `f64`).
    pub t: Tensor,
    /// α(t^c).
    pub alpha: Tensor,
    /// σ(t^c).
    pub sigma: Tensor,
}

impl NetTime {
    /// `schedule` at the rank-0 time `t` (for a single evaluation outside a solve).
    pub fn new(schedule: &dyn NoiseSchedule, t: &Tensor) -> Result<Self> {
        Ok(Self {
            t: t.clone(),
            alpha: schedule.alpha_tensor(t)?,
            sigma: schedule.sigma_tensor(t)?,
        })
    }
}

/// A model as the solvers see it: a noise schedule and predictions of x_0 or ε.
pub trait Predictor {
    /// The schedule that defines the model's time variable, α(t) and σ(t).
    fn noise_schedule(&self) -> &dyn NoiseSchedule;
    /// The prediction `target` for the batch `x` ([B, ...]) at the network time `at` (in the
    /// schedule's time variable); differentiable in `x` and `at`'s tensors.
    fn predict(&self, x: &Tensor, at: &NetTime, target: Target) -> Result<Tensor>;
}
