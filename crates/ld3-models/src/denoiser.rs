//! The `Denoiser` trait and the conversion between parameterisations.

use candle_core::Tensor;
use ld3_solvers::{NoiseSchedule, Predictor, Result, Target};
use serde::{Deserialize, Serialize};

/// What a network's output means, for x_t = α(t)·x_0 + σ(t)·ε (diffusers' `prediction_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Parameterization {
    /// The noise ε (DDPM, LDM, Stable Diffusion).
    Epsilon,
    /// The clean data x_0 — also EDM's D(x; σ), which is x_0 under the EDM schedule (α = 1, t = σ).
    Sample,
    /// v = α·ε − σ·x_0 (Salimans & Ho 2022; SD 2.x 768).
    VPrediction,
}

/// A diffusion network: x [B, ...sample_shape] and the network time t^c (rank 0, or [B]) in the
/// schedule's time variable in; the prediction named by [`Denoiser::parameterization`] out.
/// Implementations must be differentiable in x and t^c (LD3 backpropagates into both).
pub trait Denoiser: Send + Sync {
    /// A short description for logs and schedule files.
    fn describe(&self) -> String;
    /// Shape of one sample, e.g. [C, H, W].
    fn sample_shape(&self) -> &[usize];
    /// The schedule that defines t, α(t), σ(t).
    fn noise_schedule(&self) -> &dyn NoiseSchedule;
    /// What [`Denoiser::forward`] returns.
    fn parameterization(&self) -> Parameterization;
    /// The raw prediction for the batch `x` at network time `t_net`.
    fn forward(&self, x: &Tensor, t_net: &Tensor) -> Result<Tensor>;
    /// Number of learned parameters (0 for closed-form models); sizes memory decisions such as
    /// the trainer's recomputation default.
    fn parameter_count(&self) -> usize {
        0
    }
}

/// A [`Denoiser`] seen as a solver's [`Predictor`]: converts its output to x̂_0 or ε̂ with
/// α(t^c), σ(t^c) at the network time.
pub struct DenoiserPredictor<'a> {
    model: &'a dyn Denoiser,
}

impl<'a> DenoiserPredictor<'a> {
    /// Wraps `model`.
    pub fn new(model: &'a dyn Denoiser) -> Self {
        Self { model }
    }
}

/// `c` (rank 0 or [B]) shaped to multiply a batch `x` sample-wise, in x's dtype.
fn per_sample(c: &Tensor, x: &Tensor) -> Result<Tensor> {
    let c = c.to_dtype(x.dtype())?;
    if c.rank() == 0 {
        return Ok(c);
    }
    let mut dims = vec![1; x.rank()];
    dims[0] = c.elem_count();
    Ok(c.reshape(dims)?)
}

impl Predictor for DenoiserPredictor<'_> {
    fn noise_schedule(&self) -> &dyn NoiseSchedule {
        self.model.noise_schedule()
    }

    fn predict(&self, x: &Tensor, t_net: &Tensor, target: Target) -> Result<Tensor> {
        let out = self.model.forward(x, t_net)?;
        let schedule = self.model.noise_schedule();
        let alpha = per_sample(&schedule.alpha_tensor(t_net)?, x)?;
        let sigma = per_sample(&schedule.sigma_tensor(t_net)?, x)?;
        let mul = |a: &Tensor, b: &Tensor| b.broadcast_mul(a);
        Ok(match (self.model.parameterization(), target) {
            (Parameterization::Epsilon, Target::Noise)
            | (Parameterization::Sample, Target::Data) => out,
            // x_0 = (x − σ·ε)/α
            (Parameterization::Epsilon, Target::Data) => {
                x.sub(&mul(&sigma, &out)?)?.broadcast_div(&alpha)?
            }
            // ε = (x − α·x_0)/σ
            (Parameterization::Sample, Target::Noise) => {
                x.sub(&mul(&alpha, &out)?)?.broadcast_div(&sigma)?
            }
            // v = α·ε − σ·x_0 with x = α·x_0 + σ·ε:
            // x_0 = (α·x − σ·v)/(α² + σ²), ε = (σ·x + α·v)/(α² + σ²).
            (Parameterization::VPrediction, target) => {
                let norm = alpha.sqr()?.add(&sigma.sqr()?)?;
                let (a, b) = match target {
                    Target::Data => (&alpha, sigma.neg()?),
                    Target::Noise => (&sigma, alpha.clone()),
                };
                mul(a, x)?.add(&mul(&b, &out)?)?.broadcast_div(&norm)?
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};
    use ld3_solvers::gradcheck::max_abs_diff;
    use ld3_solvers::noise::VpLinear;

    /// A fake model that returns a fixed (x_0, ε) pair in any parameterisation.
    struct Fixed {
        schedule: VpLinear,
        param: Parameterization,
        x0: Tensor,
        eps: Tensor,
    }

    impl Denoiser for Fixed {
        fn describe(&self) -> String {
            "fixed".into()
        }
        fn sample_shape(&self) -> &[usize] {
            &[3]
        }
        fn noise_schedule(&self) -> &dyn NoiseSchedule {
            &self.schedule
        }
        fn parameterization(&self) -> Parameterization {
            self.param
        }
        fn forward(&self, _x: &Tensor, t_net: &Tensor) -> Result<Tensor> {
            let t = t_net.to_scalar::<f64>()?;
            let (a, s) = (self.schedule.alpha(t), self.schedule.sigma(t));
            Ok(match self.param {
                Parameterization::Epsilon => self.eps.clone(),
                Parameterization::Sample => self.x0.clone(),
                Parameterization::VPrediction => ((&self.eps * a)? - (&self.x0 * s)?)?,
            })
        }
    }

    #[test]
    fn every_parameterisation_converts_to_the_same_x0_and_eps() {
        let dev = Device::Cpu;
        let x0 = Tensor::new(&[[0.3f64, -1.0, 2.0]], &dev).unwrap();
        let eps = Tensor::new(&[[1.1f64, 0.2, -0.7]], &dev).unwrap();
        let schedule = VpLinear::default();
        let t = 0.4;
        let x = ((&x0 * schedule.alpha(t)).unwrap() + (&eps * schedule.sigma(t)).unwrap()).unwrap();
        let t_net = Tensor::new(t, &dev).unwrap();
        for param in [
            Parameterization::Epsilon,
            Parameterization::Sample,
            Parameterization::VPrediction,
        ] {
            let m = Fixed {
                schedule: schedule.clone(),
                param,
                x0: x0.clone(),
                eps: eps.clone(),
            };
            let p = DenoiserPredictor::new(&m);
            for (target, want) in [(Target::Data, &x0), (Target::Noise, &eps)] {
                let got = p.predict(&x, &t_net, target).unwrap();
                let diff = max_abs_diff(&got, want).unwrap();
                assert!(diff < 1e-12, "{param:?} {target:?}: {diff}");
            }
        }
    }
}
