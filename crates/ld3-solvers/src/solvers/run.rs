//! The [`Solver`] trait and the solve loop: a model evaluator that counts NFE and watches for
//! non-finite outputs, the state carried between steps, and [`sample`].

use std::cell::{Cell, RefCell};

use candle_core::{DType, Tensor};

use super::{Grid, NetTime, Predictor, SolverConfig, Target, Times};
use crate::error::{invalid, Error, Result};

/// Calls the model, counts evaluations (NFE) and watches for non-finite outputs. The watch is a
/// tensor op per call (each output's sum, kept on the model's device); [`Evaluator::check`]
/// reads them back once, at the end of a solve, so a GPU model is not synchronised per call.
pub struct Evaluator<'a> {
    model: &'a dyn Predictor,
    times: &'a Times,
    /// α and σ at every network time, evaluated once.
    alpha_net: Tensor,
    sigma_net: Tensor,
    calls: Cell<usize>,
    /// (network-time index, sum of the output) per evaluation.
    sums: RefCell<Vec<(usize, Tensor)>>,
}

impl<'a> Evaluator<'a> {
    /// Wraps `model` for one solve over `times` (evaluating the schedule at every network time,
    /// once).
    pub fn new(model: &'a dyn Predictor, times: &'a Times) -> Result<Self> {
        let schedule = model.noise_schedule();
        Ok(Self {
            model,
            times,
            alpha_net: schedule.alpha_tensor(times.t_net())?,
            sigma_net: schedule.sigma_tensor(times.t_net())?,
            calls: Cell::new(0),
            sums: RefCell::new(Vec::new()),
        })
    }
    /// Model evaluations so far.
    pub fn nfe(&self) -> usize {
        self.calls.get()
    }
    /// An error naming the first evaluation so far whose output held NaN or infinity.
    pub fn check(&self) -> Result<()> {
        let sums = self.sums.borrow();
        if sums.is_empty() {
            return Ok(());
        }
        let all = Tensor::stack(&sums.iter().map(|(_, s)| s.clone()).collect::<Vec<_>>(), 0)?;
        let total = all.sum_all()?.to_scalar::<f64>()?;
        if total.is_finite() {
            return Ok(());
        }
        let values: Vec<f64> = all.to_vec1()?;
        let first = values.iter().position(|v| !v.is_finite()).unwrap_or(0);
        Err(Error::NonFinite {
            t_net: self.times.t_net_values()?[sums[first].0],
            evaluation: first + 1,
        })
    }
    /// The prediction `target` for `x` at the network time t^c_i.
    pub fn at(&self, x: &Tensor, i: usize, target: Target) -> Result<Tensor> {
        let at = NetTime {
            t: self.times.t_net_at(i)?,
            alpha: self.alpha_net.get(i)?,
            sigma: self.sigma_net.get(i)?,
        };
        let out = self.model.predict(x, &at, target)?;
        self.calls.set(self.calls.get() + 1);
        // Summed in f32 or f64 as the output is (a NaN or infinity survives the sum; half
        // precisions are widened first, their sums would overflow): no full-size copy per call
        // for f32/f64 outputs.
        let out_wide = match out.dtype() {
            DType::F16 | DType::BF16 => out.detach().to_dtype(DType::F32)?,
            _ => out.detach(),
        };
        let sum = out_wide.sum_all()?.to_dtype(DType::F64)?;
        self.sums.borrow_mut().push((i, sum));
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
    times.check(model.noise_schedule())?;
    let t_values = times.t_values()?;
    let grid = Grid::new(model.noise_schedule(), times)?;
    let eval = Evaluator::new(model, times)?;
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
    eval.check()?;
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
}
