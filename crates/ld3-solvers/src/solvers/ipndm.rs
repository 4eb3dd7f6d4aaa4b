//! iPNDM (Zhang & Chen 2023, DEIS, Eq. 20; LD3's `ipndm.py`): Adams–Bashforth on ε̂ with fixed
//! weights inside the first-order exponential integrator, orders 1–4, lower-order warm-up.

use super::{
    finish_step, lin, Evaluator, Grid, Solver, SolverConfig, SolverName, SolverState, Target,
};
use crate::error::Result;

/// Adams–Bashforth weights for ε_i, ε_{i−1}, … by order.
const WEIGHTS: [&[f64]; 4] = [
    &[1.0],
    &[1.5, -0.5],
    &[23.0 / 12.0, -16.0 / 12.0, 5.0 / 12.0],
    &[55.0 / 24.0, -59.0 / 24.0, 37.0 / 24.0, -9.0 / 24.0],
];

/// iPNDM: ε̄ = Σ_j w_j·ε_{i−j}, x_{i+1} = (α_{i+1}/α_i)·x_i − σ_{i+1}·(e^h − 1)·ε̄, h = λ_{i+1} − λ_i.
/// For EDM this is x_{i+1} = x_i + (t_{i+1} − t_i)·ε̄.
#[derive(Clone, Copy, Debug)]
pub struct Ipndm {
    order: usize,
}

impl Ipndm {
    /// iPNDM of order 1–4.
    pub fn new(order: usize) -> Result<Self> {
        let order = SolverName::Ipndm.check_order(order)?;
        Ok(Self { order })
    }
}

impl Solver for Ipndm {
    fn config(&self) -> SolverConfig {
        SolverConfig {
            solver: SolverName::Ipndm,
            order: self.order,
            variant: None,
        }
    }
    fn target(&self) -> Target {
        Target::Noise
    }
    fn step(
        &self,
        eval: &Evaluator,
        g: &Grid,
        s: &SolverState,
        i: usize,
        n: usize,
    ) -> Result<SolverState> {
        let k = self.order.min(i + 1);
        let like = g.alpha(i)?;
        let weights: Vec<_> = WEIGHTS[k - 1]
            .iter()
            .map(|w| super::constant(*w, &like))
            .collect::<Result<_>>()?;
        let h = g.h(i, i + 1)?;
        let keep_x = g.alpha(i + 1)?.div(&g.alpha(i)?)?;
        let take_eps = g.sigma(i + 1)?.mul(&h.exp()?.affine(1.0, -1.0)?)?.neg()?;
        // x_{i+1} = keep·x_i − σ_{i+1}(e^h − 1)·Σ_j w_j·ε_{i−j}, one weight per history entry.
        let coefs: Vec<_> = weights
            .iter()
            .map(|w| w.mul(&take_eps))
            .collect::<candle_core::Result<_>>()?;
        let mut terms = vec![(&keep_x, &s.x)];
        terms.extend((0..k).map(|j| (&coefs[j], s.back(j).1)));
        let x_next = lin(&terms)?;
        finish_step(eval, self.target(), s, x_next, i, n, self.order)
    }
}
