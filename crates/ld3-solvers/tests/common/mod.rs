//! A single-Gaussian data distribution N(μ, s0²·I): its probability-flow ODE has the closed form
//! y(s) = μ + (y_T − μ)·sqrt(s0² + s²)/sqrt(s0² + s_T²) in EDM's variables y = x/α, s = σ/α.

#![allow(dead_code)] // each test binary uses part of it

use candle_core::Tensor;
use ld3_solvers::{NetTime, NoiseSchedule, Predictor, Result, Target};

pub struct SingleGaussian {
    pub schedule: Box<dyn NoiseSchedule>,
    pub mean: Tensor,
    pub std: f64,
}

impl SingleGaussian {
    /// The exact solution at time `t_end` from x at time `t_start`.
    pub fn exact(&self, x: &Tensor, t_start: f64, t_end: f64) -> Result<Tensor> {
        let s = &self.schedule;
        let (a0, s0) = (s.alpha(t_start), s.edm_sigma(t_start));
        let (a1, s1) = (s.alpha(t_end), s.edm_sigma(t_end));
        let ratio = (self.std.powi(2) + s1 * s1).sqrt() / (self.std.powi(2) + s0 * s0).sqrt();
        let y0 = (x / a0)?;
        let y1 = self
            .mean
            .broadcast_add(&y0.broadcast_sub(&self.mean)?.affine(ratio, 0.0)?)?;
        Ok((y1 * a1)?)
    }
}

impl Predictor for SingleGaussian {
    fn noise_schedule(&self) -> &dyn NoiseSchedule {
        self.schedule.as_ref()
    }
    fn predict(&self, x: &Tensor, at: &NetTime, target: Target) -> Result<Tensor> {
        let (alpha, sigma) = (at.alpha.clone(), at.sigma.clone());
        let s2 = self.std * self.std;
        // x̂_0 = μ + α·s0²/(α²·s0² + σ²)·(x − α·μ).
        let var = alpha.sqr()?.affine(s2, 0.0)?.add(&sigma.sqr()?)?;
        let gain = alpha.affine(s2, 0.0)?.div(&var)?;
        let centred = x.broadcast_sub(&self.mean.broadcast_mul(&alpha)?)?;
        let x0 = self.mean.broadcast_add(&centred.broadcast_mul(&gain)?)?;
        Ok(match target {
            Target::Data => x0,
            Target::Noise => x.sub(&x0.broadcast_mul(&alpha)?)?.broadcast_div(&sigma)?,
        })
    }
}
