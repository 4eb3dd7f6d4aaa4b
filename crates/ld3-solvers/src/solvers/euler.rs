//! Euler's method on the probability-flow ODE in EDM's variables (Karras et al. 2022, Eq. 4 /
//! Alg. 1 without the correction): y = x/α, s = σ/α, dy/ds = ε̂.

use super::{
    finish_step, lin, Evaluator, Grid, Solver, SolverConfig, SolverName, SolverState, Target,
};
use crate::error::Result;

/// Euler: y_{i+1} = y_i + (s_{i+1} − s_i)·ε̂(x_i, t^c_i) with y = x/α, s = σ/α. For EDM models this
/// is Euler in σ (the LD3 code's Euler); for ε-prediction it coincides with DDIM.
#[derive(Clone, Copy, Debug, Default)]
pub struct Euler;

impl Solver for Euler {
    fn config(&self) -> SolverConfig {
        SolverConfig {
            solver: SolverName::Euler,
            order: 1,
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
        // x_{i+1} = α_{i+1}·(x_i/α_i + Δs·ε̂_i).
        let alpha_next = g.alpha(i + 1)?;
        let keep_x = alpha_next.div(&g.alpha(i)?)?;
        let ds = g.edm_sigma(i + 1)?.sub(&g.edm_sigma(i)?)?;
        let x_next = lin(&[(&keep_x, &s.x), (&alpha_next.mul(&ds)?, s.newest())])?;
        finish_step(eval, self.target(), s, x_next, i, n, 1)
    }
}
