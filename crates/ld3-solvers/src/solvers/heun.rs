//! Heun's second-order method on the probability-flow ODE in EDM's variables (Karras et al.
//! 2022, Algorithm 1): y = x/α, s = σ/α, dy/ds = ε̂.

use super::{
    finish_step, lin, Evaluator, Grid, Solver, SolverConfig, SolverName, SolverState, Target,
};
use crate::error::Result;

/// EDM's Heun: an Euler predictor y' = y_i + Δs·ε̂_i, then y_{i+1} = y_i + Δs·(ε̂_i + ε̂(y', t^c_{i+1}))/2.
/// Two evaluations per step; with `last_step_euler` the final step skips its correction so that
/// an odd NFE is spent exactly.
#[derive(Clone, Copy, Debug, Default)]
pub struct Heun {
    last_step_euler: bool,
}

impl Heun {
    /// Heun's method; `last_step_euler` makes the final step a plain Euler step.
    pub fn new(last_step_euler: bool) -> Self {
        Self { last_step_euler }
    }
    fn corrects(&self, i: usize, steps: usize) -> bool {
        !(self.last_step_euler && i + 1 == steps)
    }
}

impl Solver for Heun {
    fn config(&self) -> SolverConfig {
        SolverConfig {
            solver: SolverName::Heun,
            order: 2,
            variant: None,
        }
    }
    fn target(&self) -> Target {
        Target::Noise
    }
    fn nfe(&self, steps: usize) -> usize {
        2 * steps - usize::from(self.last_step_euler)
    }
    fn step(
        &self,
        eval: &Evaluator,
        g: &Grid,
        s: &SolverState,
        i: usize,
        n: usize,
    ) -> Result<SolverState> {
        // In x: x' = (α_{i+1}/α_i)·x_i + α_{i+1}·Δs·ε̂_i, and the corrected step averages ε̂.
        let alpha_next = g.alpha(i + 1)?;
        let keep_x = alpha_next.div(&g.alpha(i)?)?;
        let a_ds = alpha_next.mul(&g.edm_sigma(i + 1)?.sub(&g.edm_sigma(i)?)?)?;
        let eps = s.newest();
        let x_euler = lin(&[(&keep_x, &s.x), (&a_ds, eps)])?;
        let x_next = if self.corrects(i, n) {
            let eps_end = eval.at(&x_euler, i + 1, Target::Noise)?;
            let half = a_ds.affine(0.5, 0.0)?;
            lin(&[(&keep_x, &s.x), (&half, eps), (&half, &eps_end)])?
        } else {
            x_euler
        };
        finish_step(eval, self.target(), s, x_next, i, n, 1)
    }
}
