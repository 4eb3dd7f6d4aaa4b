//! The LD3 loss of a batch and its gradient with respect to the logits θ, the decoupling ξ and the
//! student starts z' — through candle's full graph, or by per-step recomputation whose peak
//! memory does not grow with the number of steps.
//!
//! Recomputation (candle has no `torch.utils.checkpoint`): the forward pass keeps only each
//! step's input state (x_i and the model outputs later steps still need, detached). The backward
//! pass walks the steps in reverse, rebuilds one step's graph from its stored input, and pulls
//! the incoming gradient through it as a vector–Jacobian product ⟨g, step(state)⟩, yielding the
//! gradient for that step's inputs and its share of ∂L/∂θ, ∂L/∂ξ. Model outputs carried in the
//! history are inputs like x, so multistep solvers need nothing special.

use std::collections::HashMap;

use candle_core::{DType, Tensor, Var};
use ld3_models::{Conditioning, Denoiser, DenoiserPredictor};
use ld3_solvers::{Evaluator, Grid, Result, Solver, SolverState, Times};

use crate::{Discretization, Distance};

/// Samples solved at once by [`Problem::losses`].
pub const LOSS_CHUNK: usize = 50;

/// How gradients flow back through the solve.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backprop {
    /// One graph for the whole solve: memory grows with NFE.
    FullGraph,
    /// Per-step recomputation: memory of one step, every model call made twice.
    Recompute,
}

/// One student solve to be scored against teacher outputs: the student's final state is
/// decoded ([`Denoiser::decode`]) before the distance to the (decoded) teacher outputs.
pub struct Problem<'a> {
    /// The student solver (built for `discretization.steps` steps).
    pub solver: &'a dyn Solver,
    /// The model.
    pub model: &'a dyn Denoiser,
    /// θ, ξ → (t, t^c).
    pub discretization: &'a Discretization,
    /// d(student, teacher), per sample.
    pub distance: &'a dyn Distance,
}

/// Losses and gradients of the batch-mean loss.
#[derive(Clone, Debug)]
pub struct LossAndGrads {
    /// d(student_b, teacher_b) for each sample.
    pub per_sample: Vec<f64>,
    /// ∂ mean / ∂θ [N+1].
    pub d_theta: Tensor,
    /// ∂ mean / ∂ξ [N+1].
    pub d_xi: Tensor,
    /// ∂ mean / ∂z' [B, ...].
    pub d_z: Tensor,
}

impl Problem<'_> {
    fn times(&self, theta: &Tensor, xi: &Tensor) -> Result<Times> {
        let schedule = self.model.noise_schedule();
        let (t, t_net) = self.discretization.times_and_net(schedule, theta, xi)?;
        let times = Times::new(&t, &t_net)?;
        times.check(schedule)?;
        Ok(times)
    }

    /// The per-sample losses of starts `z` (standard-normal space) conditioned on `cond` against
    /// the decoded teacher outputs `target`, no graph ([`LOSS_CHUNK`] samples at a time).
    pub fn losses(
        &self,
        theta: &Tensor,
        xi: &Tensor,
        z: &Tensor,
        cond: &Conditioning,
        target: &Tensor,
    ) -> Result<Vec<f64>> {
        let times = self.times(&theta.detach(), &xi.detach())?;
        let mut losses = Vec::with_capacity(z.dims()[0]);
        // In chunks: validation solves every pair, and a batch's activations scale with it.
        for start in (0..z.dims()[0]).step_by(LOSS_CHUNK) {
            let len = LOSS_CHUNK.min(z.dims()[0] - start);
            let predictor =
                DenoiserPredictor::with_conditioning(self.model, cond.narrow(start, len)?);
            let x_t =
                (z.narrow(0, start, len)?.detach() * self.model.noise_schedule().prior_scale())?;
            let out = ld3_solvers::sample(self.solver, &predictor, &x_t, &times, None)?;
            losses.extend(
                self.distance
                    .per_sample(&self.model.decode(&out.x)?, &target.narrow(0, start, len)?)?
                    .to_dtype(DType::F64)?
                    .to_vec1::<f64>()?,
            );
        }
        Ok(losses)
    }

    /// The losses of starts `z` conditioned on `cond` and the gradients of their batch mean.
    pub fn loss_and_grads(
        &self,
        theta: &Tensor,
        xi: &Tensor,
        z: &Tensor,
        cond: &Conditioning,
        target: &Tensor,
        mode: Backprop,
    ) -> Result<LossAndGrads> {
        let predictor = DenoiserPredictor::with_conditioning(self.model, cond.clone());
        match mode {
            Backprop::FullGraph => self.full_graph(&predictor, theta, xi, z, target),
            Backprop::Recompute => self.recompute(&predictor, theta, xi, z, target),
        }
    }

    fn full_graph(
        &self,
        predictor: &DenoiserPredictor,
        theta: &Tensor,
        xi: &Tensor,
        z: &Tensor,
        target: &Tensor,
    ) -> Result<LossAndGrads> {
        let (theta_v, xi_v, z_v) = (var(theta)?, var(xi)?, var(z)?);
        let times = self.times(theta_v.as_tensor(), xi_v.as_tensor())?;
        let x_t = (z_v.as_tensor() * self.model.noise_schedule().prior_scale())?;
        let out = ld3_solvers::sample(self.solver, predictor, &x_t, &times, None)?;
        let per = self
            .distance
            .per_sample(&self.model.decode(&out.x)?, target)?;
        let grads = per.mean(0)?.backward()?;
        Ok(LossAndGrads {
            per_sample: per.to_dtype(DType::F64)?.to_vec1()?,
            d_theta: grad_or_zeros(&grads, &theta_v)?,
            d_xi: grad_or_zeros(&grads, &xi_v)?,
            d_z: grad_or_zeros(&grads, &z_v)?,
        })
    }

    fn recompute(
        &self,
        predictor: &DenoiserPredictor,
        theta: &Tensor,
        xi: &Tensor,
        z: &Tensor,
        target: &Tensor,
    ) -> Result<LossAndGrads> {
        let steps = self.discretization.steps;
        let prior = self.model.noise_schedule().prior_scale();
        // Forward: keep each step's input state, no graph.
        let fixed = self.times(&theta.detach(), &xi.detach())?;
        let states = {
            let times = &fixed;
            let grid = Grid::new(self.model.noise_schedule(), times)?;
            let eval = Evaluator::new(predictor, times)?;
            let mut states = vec![self.solver.start(&eval, &(z.detach() * prior)?)?.detach()];
            for i in 0..steps {
                let next = self
                    .solver
                    .step(&eval, &grid, &states[i], i, steps)?
                    .detach();
                states.push(next);
            }
            eval.check()?;
            states
        };
        // The loss at x_N, decoded.
        let x_n = Var::from_tensor(&states[steps].x)?;
        let per = self
            .distance
            .per_sample(&self.model.decode(x_n.as_tensor())?, target)?;
        let mut g_x = grad_or_zeros(&per.mean(0)?.backward()?, &x_n)?;
        let mut g_hist: HashMap<usize, Tensor> = HashMap::new();
        // Backward: one step's graph at a time, collecting ∂L/∂t and ∂L/∂t^c; then one pass
        // through θ, ξ → (t, t^c).
        let (t_fixed, t_net_fixed) = (fixed.t().clone(), fixed.t_net().clone());
        let (t_v, t_net_v) = (var(&t_fixed)?, var(&t_net_fixed)?);
        let times = Times::new(t_v.as_tensor(), t_net_v.as_tensor())?;
        let mut d_t = Tensor::zeros_like(&t_fixed)?;
        let mut d_t_net = Tensor::zeros_like(&t_net_fixed)?;
        for i in (0..steps).rev() {
            let grid = Grid::new(self.model.noise_schedule(), &times)?;
            let eval = Evaluator::new(predictor, &times)?;
            let input = &states[i];
            let x_v = Var::from_tensor(&input.x)?;
            let hist_v: Vec<(usize, Var)> = input
                .history
                .iter()
                .map(|(k, m)| Ok((*k, Var::from_tensor(m)?)))
                .collect::<Result<_>>()?;
            let state = SolverState {
                x: x_v.as_tensor().clone(),
                history: hist_v
                    .iter()
                    .map(|(k, v)| (*k, v.as_tensor().clone()))
                    .collect(),
            };
            let out = self.solver.step(&eval, &grid, &state, i, steps)?;
            let grads = vjp(&out, &g_x, &g_hist)?.backward()?;
            d_t = d_t.add(&grad_or_zeros(&grads, &t_v)?)?;
            d_t_net = d_t_net.add(&grad_or_zeros(&grads, &t_net_v)?)?;
            g_x = grad_or_zeros(&grads, &x_v)?;
            g_hist = hist_v
                .iter()
                .filter_map(|(k, v)| grads.get(v.as_tensor()).map(|g| (*k, g.detach())))
                .collect();
        }
        // The first model call, at x_T = prior·z'.
        let z_v = var(z)?;
        let eval = Evaluator::new(predictor, &times)?;
        let start = self.solver.start(&eval, &(z_v.as_tensor() * prior)?)?;
        let grads = vjp(&start, &g_x, &g_hist)?.backward()?;
        let d_z = grad_or_zeros(&grads, &z_v)?;
        d_t = d_t.add(&grad_or_zeros(&grads, &t_v)?)?;
        d_t_net = d_t_net.add(&grad_or_zeros(&grads, &t_net_v)?)?;
        // θ, ξ → (t, t^c), pulled back with (∂L/∂t, ∂L/∂t^c).
        let (theta_v, xi_v) = (var(theta)?, var(xi)?);
        let schedule = self.model.noise_schedule();
        let (t, t_net) =
            self.discretization
                .times_and_net(schedule, theta_v.as_tensor(), xi_v.as_tensor())?;
        let grads = t
            .mul(&d_t)?
            .sum_all()?
            .add(&t_net.mul(&d_t_net)?.sum_all()?)?
            .backward()?;
        Ok(LossAndGrads {
            per_sample: per.to_dtype(DType::F64)?.to_vec1()?,
            d_theta: grad_or_zeros(&grads, &theta_v)?,
            d_xi: grad_or_zeros(&grads, &xi_v)?,
            d_z,
        })
    }
}

/// ⟨g_x, x⟩ + Σ_k ⟨g_k, m_k⟩ over the history entries that have an incoming gradient.
fn vjp(out: &SolverState, g_x: &Tensor, g_hist: &HashMap<usize, Tensor>) -> Result<Tensor> {
    let mut s = out.x.mul(g_x)?.sum_all()?;
    for (k, m) in &out.history {
        if let Some(g) = g_hist.get(k) {
            s = s.add(&m.mul(g)?.sum_all()?)?;
        }
    }
    Ok(s)
}

fn var(t: &Tensor) -> Result<Var> {
    Ok(Var::from_tensor(&t.detach())?)
}

/// The gradient of `v`, detached: candle's gradients can still carry the graph they came from,
/// and pulling one back through the next step must not differentiate it again.
fn grad_or_zeros(grads: &candle_core::backprop::GradStore, v: &Var) -> Result<Tensor> {
    Ok(match grads.get(v.as_tensor()) {
        Some(g) => g.detach(),
        None => Tensor::zeros_like(v.as_tensor())?,
    })
}
