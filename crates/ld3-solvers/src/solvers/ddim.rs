//! DDIM (Song et al. 2021, "Denoising Diffusion Implicit Models", Eq. 12 with η = 0), written
//! as the first-order data-prediction exponential integrator (DPM-Solver++ Eq. 6, order 1).

use super::{
    finish_step, lin, Evaluator, Grid, Solver, SolverConfig, SolverName, SolverState, Target,
};
use crate::error::Result;

/// DDIM: x_{i+1} = (σ_{i+1}/σ_i)·x_i + α_{i+1}·(1 − e^{−h})·x̂_0(x_i, t^c_i), h = λ_{i+1} − λ_i.
#[derive(Clone, Copy, Debug, Default)]
pub struct Ddim;

impl Solver for Ddim {
    fn config(&self) -> SolverConfig {
        SolverConfig {
            solver: SolverName::Ddim,
            order: 1,
            variant: None,
        }
    }
    fn target(&self) -> Target {
        Target::Data
    }
    fn step(
        &self,
        eval: &Evaluator,
        g: &Grid,
        s: &SolverState,
        i: usize,
        n: usize,
    ) -> Result<SolverState> {
        let h = g.h(i, i + 1)?;
        let keep_x = g.sigma(i + 1)?.div(&g.sigma(i)?)?;
        let take_x0 = g.alpha(i + 1)?.mul(&h.neg()?.exp()?.affine(-1.0, 1.0)?)?;
        let x_next = lin(&[(&keep_x, &s.x), (&take_x0, s.newest())])?;
        finish_step(eval, self.target(), s, x_next, i, n, 1)
    }
}
