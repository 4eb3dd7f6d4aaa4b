//! Diffusion ODE solvers, differentiable in their solver times t_i, their network times t^c_i
//! (LD3's decoupled times) and the starting state x_T.
//!
//! Every solver is a sequence of steps i = 0..N−1 from t_i to t_{i+1} over a [`SolverState`]
//! (the state x_i and the model outputs it still needs), so a step can be replayed alone — the
//! unit of the trainer's recomputation mode. The model is evaluated once at x_T, then at the end
//! of every step but the last (plus Heun's corrections): N evaluations for multistep solvers,
//! none wasted.

mod ddim;
mod dpm_solver_pp;
mod euler;
mod heun;
mod ipndm;
mod unipc;

pub use ddim::Ddim;
pub use dpm_solver_pp::DpmSolverPp;
pub use euler::Euler;
pub use heun::Heun;
pub use ipndm::Ipndm;
pub use unipc::{UniPc, UniPcVariant};

use std::cell::Cell;

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::{invalid, Error, Result};
use crate::noise::NoiseSchedule;
use crate::steps::check_times;

/// What a solver asks the model for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// The clean-data prediction x̂_0.
    Data,
    /// The noise prediction ε̂.
    Noise,
}

/// A model as the solvers see it: a noise schedule and predictions of x_0 or ε.
pub trait Predictor {
    /// The schedule that defines the model's time variable, α(t) and σ(t).
    fn noise_schedule(&self) -> &dyn NoiseSchedule;
    /// The prediction `target` for the batch `x` ([B, ...]) at network time `t_net` (a rank-0
    /// tensor, in the schedule's time variable); differentiable in `x` and `t_net`.
    fn predict(&self, x: &Tensor, t_net: &Tensor, target: Target) -> Result<Tensor>;
}

/// The solver times t_0 > … > t_N and the network times t^c_0..t^c_N, as rank-1 `f64` tensors.
/// Make either (or both) from a `candle_core::Var` to get gradients with respect to them.
#[derive(Clone, Debug)]
pub struct Times {
    t: Tensor,
    t_net: Tensor,
}

impl Times {
    /// Solver times `t` and network times `t_net` (same length N+1, any float dtype; kept as
    /// `f64`, differentiably).
    pub fn new(t: &Tensor, t_net: &Tensor) -> Result<Self> {
        let t = as_time_vector(t, "t")?;
        let t_net = as_time_vector(t_net, "t_net")?;
        if t.dim(0)? != t_net.dim(0)? {
            return invalid(format!(
                "t has {} entries but t_net has {}: both need N+1",
                t.dim(0)?,
                t_net.dim(0)?
            ));
        }
        Ok(Self { t, t_net })
    }

    /// Network times equal to the solver times (the usual, non-decoupled case).
    pub fn shared(t: &Tensor) -> Result<Self> {
        Self::new(t, t)
    }

    /// Constant times from `f64` lists (no gradient).
    pub fn from_f64(t: &[f64], t_net: &[f64], device: &Device) -> Result<Self> {
        Self::new(&Tensor::new(t, device)?, &Tensor::new(t_net, device)?)
    }

    /// Number of steps N.
    pub fn steps(&self) -> usize {
        self.t.dims()[0] - 1
    }
    /// The solver times as a tensor [N+1].
    pub fn t(&self) -> &Tensor {
        &self.t
    }
    /// The network times as a tensor [N+1].
    pub fn t_net(&self) -> &Tensor {
        &self.t_net
    }
    /// Network time t^c_i as a rank-0 tensor.
    pub fn t_net_at(&self, i: usize) -> Result<Tensor> {
        Ok(self.t_net.get(i)?)
    }
    /// The solver times as numbers.
    pub fn t_values(&self) -> Result<Vec<f64>> {
        Ok(self.t.to_vec1()?)
    }
    /// The network times as numbers.
    pub fn t_net_values(&self) -> Result<Vec<f64>> {
        Ok(self.t_net.to_vec1()?)
    }

    /// Checks both lists against the model's schedule: t strictly decreasing inside the time
    /// range, t^c finite and inside it.
    pub fn check(&self, schedule: &dyn NoiseSchedule) -> Result<()> {
        check_times(schedule, &self.t_values()?)?;
        let (lo, hi) = (schedule.t_min(), schedule.t_max());
        for (i, v) in self.t_net_values()?.iter().enumerate() {
            if !crate::steps::in_time_range(schedule, *v) {
                return invalid(format!(
                    "network time t_net_{i} = {v} is outside the model's time range [{lo}, {hi}]"
                ));
            }
        }
        Ok(())
    }
}

fn as_time_vector(t: &Tensor, name: &str) -> Result<Tensor> {
    if t.rank() != 1 || t.dim(0)? < 2 {
        return invalid(format!(
            "{name} must be a rank-1 tensor of N+1 ≥ 2 times, got shape {:?}",
            t.dims()
        ));
    }
    if !t.dtype().is_float() {
        return invalid(format!("{name} must hold floats, got {:?}", t.dtype()));
    }
    Ok(t.to_dtype(DType::F64)?)
}

/// α, σ and λ at every solver time, as rank-1 tensors differentiable in t.
pub struct Grid {
    alpha: Tensor,
    sigma: Tensor,
    lambda: Tensor,
}

impl Grid {
    /// Evaluates the schedule at the solver times.
    pub fn new(schedule: &dyn NoiseSchedule, times: &Times) -> Result<Self> {
        Ok(Self {
            alpha: schedule.alpha_tensor(times.t())?,
            sigma: schedule.sigma_tensor(times.t())?,
            lambda: schedule.lambda_tensor(times.t())?,
        })
    }
    /// α(t_i).
    pub fn alpha(&self, i: usize) -> Result<Tensor> {
        Ok(self.alpha.get(i)?)
    }
    /// σ(t_i).
    pub fn sigma(&self, i: usize) -> Result<Tensor> {
        Ok(self.sigma.get(i)?)
    }
    /// λ(t_i).
    pub fn lambda(&self, i: usize) -> Result<Tensor> {
        Ok(self.lambda.get(i)?)
    }
    /// h = λ(t_j) − λ(t_i).
    pub fn h(&self, i: usize, j: usize) -> Result<Tensor> {
        Ok(self.lambda(j)?.sub(&self.lambda(i)?)?)
    }
    /// EDM σ/α at t_i.
    pub fn edm_sigma(&self, i: usize) -> Result<Tensor> {
        Ok(self.sigma(i)?.div(&self.alpha(i)?)?)
    }
}

/// Calls the model, counts evaluations (NFE) and rejects non-finite outputs.
pub struct Evaluator<'a> {
    model: &'a dyn Predictor,
    times: &'a Times,
    calls: Cell<usize>,
}

impl<'a> Evaluator<'a> {
    /// Wraps `model` for one solve over `times`.
    pub fn new(model: &'a dyn Predictor, times: &'a Times) -> Self {
        Self {
            model,
            times,
            calls: Cell::new(0),
        }
    }
    /// Model evaluations so far.
    pub fn nfe(&self) -> usize {
        self.calls.get()
    }
    /// The prediction `target` for `x` at the network time t^c_i.
    pub fn at(&self, x: &Tensor, i: usize, target: Target) -> Result<Tensor> {
        let t_net = self.times.t_net_at(i)?;
        let out = self.model.predict(x, &t_net, target)?;
        self.calls.set(self.calls.get() + 1);
        let total = out
            .detach()
            .to_dtype(DType::F64)?
            .sum_all()?
            .to_scalar::<f64>()?;
        if !total.is_finite() {
            return Err(Error::NonFinite {
                t_net: t_net.to_scalar::<f64>()?,
                evaluation: self.calls.get(),
            });
        }
        if out.dims() != x.dims() {
            return invalid(format!(
                "the model returned shape {:?} for an input of shape {:?}",
                out.dims(),
                x.dims()
            ));
        }
        Ok(out)
    }
}

/// The state between steps: x_i and the model outputs (with the index of the time they were
/// evaluated at, newest last) that later steps still use.
#[derive(Clone, Debug)]
pub struct SolverState {
    /// The current state x_i.
    pub x: Tensor,
    /// Model outputs (x̂_0 or ε̂, as the solver's [`Solver::target`] says) with their time index.
    pub history: Vec<(usize, Tensor)>,
}

impl SolverState {
    /// The newest model output.
    pub fn newest(&self) -> &Tensor {
        &self
            .history
            .last()
            .expect("a solver state always holds the newest model output")
            .1
    }
    /// The j-th model output back from the newest (0 = newest) and its time index.
    pub fn back(&self, j: usize) -> (usize, &Tensor) {
        let (i, m) = &self.history[self.history.len() - 1 - j];
        (*i, m)
    }
    /// Detaches every tensor from the graph (for the trainer's recomputation mode).
    pub fn detach(&self) -> Self {
        Self {
            x: self.x.detach(),
            history: self.history.iter().map(|(i, m)| (*i, m.detach())).collect(),
        }
    }
}

/// One step's report to a callback.
pub struct StepInfo<'a> {
    /// Steps done (1..=N).
    pub step: usize,
    /// Total steps N.
    pub steps: usize,
    /// The time reached, t_step.
    pub t: f64,
    /// The state at that time.
    pub x: &'a Tensor,
    /// Model evaluations so far.
    pub nfe: usize,
}

/// A per-step callback (progress bars, trajectories); an error stops the solve.
pub type StepCallback<'a> = &'a mut dyn FnMut(&StepInfo) -> Result<()>;

/// The result of a solve.
#[derive(Clone, Debug)]
pub struct Sample {
    /// The state at t_N.
    pub x: Tensor,
    /// Model evaluations used.
    pub nfe: usize,
}

/// A diffusion ODE solver over N steps.
pub trait Solver: Send + Sync {
    /// The solver's description (name, order, variant).
    fn config(&self) -> SolverConfig;
    /// What the model is asked to predict (and what [`SolverState::history`] holds).
    fn target(&self) -> Target;
    /// Model evaluations for `steps` steps.
    fn nfe(&self, steps: usize) -> usize {
        steps
    }
    /// Fewest steps this solver accepts.
    fn min_steps(&self) -> usize {
        1
    }
    /// The state at x_T: the model evaluated once at t^c_0.
    fn start(&self, eval: &Evaluator, x_t: &Tensor) -> Result<SolverState> {
        Ok(SolverState {
            x: x_t.clone(),
            history: vec![(0, eval.at(x_t, 0, self.target())?)],
        })
    }
    /// Step i, from t_i to t_{i+1}, including the model evaluation the next step needs.
    fn step(
        &self,
        eval: &Evaluator,
        grid: &Grid,
        state: &SolverState,
        i: usize,
        steps: usize,
    ) -> Result<SolverState>;
}

/// Solves from `x_t` (already scaled: x_T = prior_scale·z) over `times`, calling `callback`
/// after every step.
pub fn sample(
    solver: &dyn Solver,
    model: &dyn Predictor,
    x_t: &Tensor,
    times: &Times,
    mut callback: Option<StepCallback>,
) -> Result<Sample> {
    let steps = times.steps();
    if steps < solver.min_steps() {
        return invalid(format!(
            "{} needs at least {} steps, got {steps}",
            solver.config(),
            solver.min_steps()
        ));
    }
    times.check(model.noise_schedule())?;
    let t_values = times.t_values()?;
    let grid = Grid::new(model.noise_schedule(), times)?;
    let eval = Evaluator::new(model, times);
    let mut state = solver.start(&eval, x_t)?;
    for i in 0..steps {
        state = solver.step(&eval, &grid, &state, i, steps)?;
        if let Some(cb) = callback.as_mut() {
            cb(&StepInfo {
                step: i + 1,
                steps,
                t: t_values[i + 1],
                x: &state.x,
                nfe: eval.nfe(),
            })?;
        }
    }
    debug_assert_eq!(eval.nfe(), solver.nfe(steps));
    Ok(Sample {
        x: state.x,
        nfe: eval.nfe(),
    })
}

/// Ends a step at `x_next` = x_{i+1}: unless it was the last step, evaluates the model there and
/// keeps the newest `keep` outputs.
pub(crate) fn finish_step(
    eval: &Evaluator,
    target: Target,
    state: &SolverState,
    x_next: Tensor,
    i: usize,
    steps: usize,
    keep: usize,
) -> Result<SolverState> {
    let mut history = state.history.clone();
    if i + 1 < steps {
        history.push((i + 1, eval.at(&x_next, i + 1, target)?));
    }
    let drop = history.len().saturating_sub(keep.max(1));
    history.drain(..drop);
    Ok(SolverState { x: x_next, history })
}

/// c·x for a rank-0 coefficient `c` (cast to x's dtype).
pub(crate) fn scale(c: &Tensor, x: &Tensor) -> Result<Tensor> {
    Ok(x.broadcast_mul(&c.to_dtype(x.dtype())?)?)
}

/// Σ c_k·x_k.
pub(crate) fn lin(terms: &[(&Tensor, &Tensor)]) -> Result<Tensor> {
    let mut acc = scale(terms[0].0, terms[0].1)?;
    for (c, x) in &terms[1..] {
        acc = acc.add(&scale(c, x)?)?;
    }
    Ok(acc)
}

/// A rank-0 constant like `like`.
pub(crate) fn constant(v: f64, like: &Tensor) -> Result<Tensor> {
    Ok(Tensor::new(v, like.device())?.to_dtype(like.dtype())?)
}

/// Solves the n×n system (n ≤ 3) A·x = b of rank-0 tensors by Cramer's rule, differentiably.
pub(crate) fn solve_small(a: &[Vec<Tensor>], b: &[Tensor]) -> Result<Vec<Tensor>> {
    let n = b.len();
    let det_a = det(a)?;
    (0..n)
        .map(|col| {
            let replaced: Vec<Vec<Tensor>> = (0..n)
                .map(|r| {
                    (0..n)
                        .map(|c| {
                            if c == col {
                                b[r].clone()
                            } else {
                                a[r][c].clone()
                            }
                        })
                        .collect()
                })
                .collect();
            Ok(det(&replaced)?.div(&det_a)?)
        })
        .collect()
}

fn det(a: &[Vec<Tensor>]) -> Result<Tensor> {
    Ok(match a.len() {
        1 => a[0][0].clone(),
        2 => a[0][0].mul(&a[1][1])?.sub(&a[0][1].mul(&a[1][0])?)?,
        3 => {
            let minor = |r: usize, c: usize| -> Result<Tensor> {
                let m: Vec<Vec<Tensor>> = (0..3)
                    .filter(|&i| i != r)
                    .map(|i| {
                        (0..3)
                            .filter(|&j| j != c)
                            .map(|j| a[i][j].clone())
                            .collect()
                    })
                    .collect();
                det(&m)
            };
            a[0][0]
                .mul(&minor(0, 0)?)?
                .sub(&a[0][1].mul(&minor(0, 1)?)?)?
                .add(&a[0][2].mul(&minor(0, 2)?)?)?
        }
        n => {
            return invalid(format!(
                "internal: linear systems of size {n} are not supported"
            ))
        }
    })
}

/// Below this many steps, DPM-Solver++ and UniPC lower their order on the final steps
/// (diffusers' rule). Final low-order steps steady few-step sampling, but their O(h²) local error
/// would cap the global order at 2 as N grows; the LD3 code lowers at every N, which is the same
/// for every NFE it trains (≤ 10).
pub const LOWER_ORDER_FINAL_BELOW: usize = 15;

/// The order of multistep step i (0-based): i+1 while warming up, then p, or min(p, N − i) when
/// N < [`LOWER_ORDER_FINAL_BELOW`].
pub(crate) fn multistep_order(order: usize, i: usize, steps: usize) -> usize {
    if i + 1 < order {
        i + 1
    } else if steps < LOWER_ORDER_FINAL_BELOW {
        order.min(steps - i)
    } else {
        order
    }
}

/// The solvers by name, as on the command line and in schedule files.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SolverName {
    /// [`Ddim`].
    #[serde(rename = "ddim")]
    Ddim,
    /// [`Euler`].
    #[serde(rename = "euler")]
    Euler,
    /// [`Heun`].
    #[serde(rename = "heun")]
    Heun,
    /// [`DpmSolverPp`].
    #[serde(rename = "dpm-solver++")]
    DpmSolverPp,
    /// [`UniPc`].
    #[serde(rename = "unipc")]
    UniPc,
    /// [`Ipndm`].
    #[serde(rename = "ipndm")]
    Ipndm,
}

impl SolverName {
    /// Every solver.
    pub const ALL: [SolverName; 6] = [
        Self::Ddim,
        Self::Euler,
        Self::Heun,
        Self::DpmSolverPp,
        Self::UniPc,
        Self::Ipndm,
    ];
    /// The command-line name.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Ddim => "ddim",
            Self::Euler => "euler",
            Self::Heun => "heun",
            Self::DpmSolverPp => "dpm-solver++",
            Self::UniPc => "unipc",
            Self::Ipndm => "ipndm",
        }
    }
    /// The orders this solver has.
    pub fn orders(&self) -> std::ops::RangeInclusive<usize> {
        match self {
            Self::Ddim | Self::Euler => 1..=1,
            Self::Heun => 2..=2,
            Self::DpmSolverPp | Self::UniPc => 1..=3,
            Self::Ipndm => 1..=4,
        }
    }
    /// The default order (LD3's configs use 3 for the multistep solvers).
    pub fn default_order(&self) -> usize {
        match self {
            Self::Ddim | Self::Euler => 1,
            Self::Heun => 2,
            Self::DpmSolverPp | Self::UniPc | Self::Ipndm => 3,
        }
    }
}

impl std::str::FromStr for SolverName {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|n| n.as_str() == s.to_ascii_lowercase())
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "unknown solver '{s}'; choose one of: {}",
                    Self::ALL.map(|n| n.as_str()).join(", ")
                ))
            })
    }
}

/// A solver's description: name, order and (UniPC) variant, as stored in schedule files.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SolverConfig {
    /// Which solver.
    pub solver: SolverName,
    /// Its order.
    pub order: usize,
    /// UniPC's B(h) variant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<UniPcVariant>,
}

impl std::fmt::Display for SolverConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (order {}", self.solver.as_str(), self.order)?;
        if let Some(v) = self.variant {
            write!(f, ", {}", v.as_str())?;
        }
        write!(f, ")")
    }
}

impl SolverConfig {
    /// A checked description; `order` and `variant` default per solver.
    pub fn new(
        solver: SolverName,
        order: Option<usize>,
        variant: Option<UniPcVariant>,
    ) -> Result<Self> {
        let order = order.unwrap_or(solver.default_order());
        if !solver.orders().contains(&order) {
            return invalid(format!(
                "{} has orders {}..={}, not {order}",
                solver.as_str(),
                solver.orders().start(),
                solver.orders().end()
            ));
        }
        let variant = match (solver, variant) {
            (SolverName::UniPc, v) => Some(v.unwrap_or_default()),
            (_, None) => None,
            (s, Some(_)) => {
                return invalid(format!(
                    "--variant (bh1|bh2) applies only to unipc, not to {}",
                    s.as_str()
                ))
            }
        };
        Ok(Self {
            solver,
            order,
            variant,
        })
    }

    /// The number of steps N that spends exactly `nfe` model evaluations, and the solver for it.
    pub fn build_for_nfe(&self, nfe: usize) -> Result<(Box<dyn Solver>, usize)> {
        let min_nfe = match self.solver {
            SolverName::Heun => 2,
            SolverName::DpmSolverPp | SolverName::UniPc | SolverName::Ipndm => self.order,
            _ => 1,
        };
        if nfe < min_nfe {
            return invalid(format!(
                "NFE {nfe} is too small for {self}: it needs at least {min_nfe} \
                 (lower the order or raise --nfe)"
            ));
        }
        Ok(match self.solver {
            SolverName::Heun => (Box::new(Heun::new(nfe % 2 == 1)), nfe.div_ceil(2)),
            _ => (self.build()?, nfe),
        })
    }

    /// The solver for a known number of steps (Heun then corrects every step).
    pub fn build(&self) -> Result<Box<dyn Solver>> {
        Ok(match self.solver {
            SolverName::Ddim => Box::new(Ddim),
            SolverName::Euler => Box::new(Euler),
            SolverName::Heun => Box::new(Heun::new(false)),
            SolverName::DpmSolverPp => Box::new(DpmSolverPp::new(self.order)?),
            SolverName::UniPc => {
                Box::new(UniPc::new(self.order, self.variant.unwrap_or_default())?)
            }
            SolverName::Ipndm => Box::new(Ipndm::new(self.order)?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_schedule_matches_ld3() {
        let orders: Vec<usize> = (0..10).map(|i| multistep_order(3, i, 10)).collect();
        assert_eq!(orders, vec![1, 2, 3, 3, 3, 3, 3, 3, 2, 1]);
        let orders: Vec<usize> = (0..4).map(|i| multistep_order(3, i, 4)).collect();
        assert_eq!(orders, vec![1, 2, 2, 1]);
        let orders: Vec<usize> = (0..20).map(|i| multistep_order(3, i, 20)).collect();
        assert_eq!(orders[..3], [1, 2, 3]);
        assert_eq!(orders[19], 3);
    }

    #[test]
    fn cramer_solves_small_systems() {
        let d = Device::Cpu;
        let t = |v: f64| Tensor::new(v, &d).unwrap();
        let a = vec![
            vec![t(2.0), t(1.0), t(-1.0)],
            vec![t(-3.0), t(-1.0), t(2.0)],
            vec![t(-2.0), t(1.0), t(2.0)],
        ];
        let x = solve_small(&a, &[t(8.0), t(-11.0), t(-3.0)]).unwrap();
        let x: Vec<f64> = x.iter().map(|v| v.to_scalar::<f64>().unwrap()).collect();
        for (got, want) in x.iter().zip([2.0, 3.0, -1.0]) {
            assert!((got - want).abs() < 1e-12);
        }
    }

    #[test]
    fn heun_nfe_plan_spends_exactly_the_budget() {
        let c = SolverConfig::new(SolverName::Heun, None, None).unwrap();
        for nfe in 2..12 {
            let (s, steps) = c.build_for_nfe(nfe).unwrap();
            assert_eq!(s.nfe(steps), nfe);
        }
        assert!(c.build_for_nfe(1).is_err());
    }

    #[test]
    fn bad_configs_are_clear_errors() {
        let e = SolverConfig::new(SolverName::Ipndm, Some(5), None).unwrap_err();
        assert!(e.to_string().contains("orders 1..=4"), "{e}");
        let e = SolverConfig::new(SolverName::Ddim, None, Some(UniPcVariant::Bh1)).unwrap_err();
        assert!(e.to_string().contains("only to unipc"), "{e}");
        let c = SolverConfig::new(SolverName::DpmSolverPp, Some(3), None).unwrap();
        let e = c.build_for_nfe(2).err().unwrap();
        assert!(e.to_string().contains("too small"), "{e}");
        let e = "rk4".parse::<SolverName>().unwrap_err();
        assert!(e.to_string().contains("dpm-solver++"), "{e}");
    }
}
