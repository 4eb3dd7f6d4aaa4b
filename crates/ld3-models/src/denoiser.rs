//! The `Denoiser` trait, the conversion between parameterisations, and classifier-free guidance.

use candle_core::{Device, Tensor};
use ld3_solvers::{NetTime, NoiseSchedule, Predictor, Result, Target};
use serde::{Deserialize, Serialize};

use crate::conditioning::{Conditioning, ConditioningKind};

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

/// A diffusion network: x [B, ...sample_shape], the network time t^c (rank 0, or [B]) in the
/// schedule's time variable and the batch's [`Conditioning`] in; the prediction named by
/// [`Denoiser::parameterization`] out. Implementations must be differentiable in x and t^c (LD3
/// backpropagates into both), and must not read tensors back to the host per call.
pub trait Denoiser: Send + Sync {
    /// A short description for logs and schedule files.
    fn describe(&self) -> String;
    /// Shape of one sample, e.g. [C, H, W] (for a latent model: the latent's).
    fn sample_shape(&self) -> &[usize];
    /// The schedule that defines t, α(t), σ(t).
    fn noise_schedule(&self) -> &dyn NoiseSchedule;
    /// What [`Denoiser::forward`] returns.
    fn parameterization(&self) -> Parameterization;
    /// The device the model's weights (and so its inputs) live on.
    fn device(&self) -> &Device;
    /// The raw prediction for the batch `x` at network time `t_net`, conditioned on `cond`
    /// (whose batch is x's).
    fn forward(&self, x: &Tensor, t_net: &Tensor, cond: &Conditioning) -> Result<Tensor>;
    /// The conditioning [`Denoiser::forward`] accepts (none by default).
    fn conditioning(&self) -> ConditioningKind {
        ConditioningKind::None
    }
    /// Maps the solver's final state to what distances and pictures compare: identity for pixel
    /// models, the VAE decoder for latent ones. Differentiable (LD3's loss is on decoded images).
    fn decode(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.clone())
    }
    /// Shape of one decoded sample ([`Denoiser::sample_shape`] unless the model decodes).
    fn decoded_shape(&self) -> Vec<usize> {
        self.sample_shape().to_vec()
    }
    /// Number of learned parameters (0 for closed-form models); sizes memory decisions such as
    /// the trainer's recomputation default.
    fn parameter_count(&self) -> usize {
        0
    }
    /// The text embeddings [B, L, D] of `prompts`, for models whose conditioning is text (their
    /// tokenizer and text encoder); an error for the others.
    fn encode_text(&self, prompts: &[String]) -> Result<Tensor> {
        let _ = prompts;
        Err(ld3_solvers::Error::Invalid(format!(
            "{} takes no text prompts ({})",
            self.describe(),
            self.conditioning()
        )))
    }
}

macro_rules! forward_denoiser {
    ($($ty:ty),*) => {$(
        impl<T: Denoiser + ?Sized> Denoiser for $ty {
            fn describe(&self) -> String { (**self).describe() }
            fn sample_shape(&self) -> &[usize] { (**self).sample_shape() }
            fn noise_schedule(&self) -> &dyn NoiseSchedule { (**self).noise_schedule() }
            fn parameterization(&self) -> Parameterization { (**self).parameterization() }
            fn device(&self) -> &Device { (**self).device() }
            fn forward(&self, x: &Tensor, t_net: &Tensor, cond: &Conditioning) -> Result<Tensor> {
                (**self).forward(x, t_net, cond)
            }
            fn conditioning(&self) -> ConditioningKind { (**self).conditioning() }
            fn decode(&self, x: &Tensor) -> Result<Tensor> { (**self).decode(x) }
            fn decoded_shape(&self) -> Vec<usize> { (**self).decoded_shape() }
            fn parameter_count(&self) -> usize { (**self).parameter_count() }
            fn encode_text(&self, prompts: &[String]) -> Result<Tensor> {
                (**self).encode_text(prompts)
            }
        }
    )*};
}

forward_denoiser!(&T, Box<T>, std::sync::Arc<T>);

/// Classifier-free guidance around any [`Denoiser`]: ε_u + g·(ε_c − ε_u), with the conditional
/// and unconditional predictions made in one doubled batch (the unconditional half from
/// [`Conditioning::unconditional`]). The combination has weights summing to one, so it is the
/// same in ε, x_0 or v and is applied to the raw output in the model's own parameterisation.
/// At g = 1 it is the conditional model itself: one pass, no unconditional batch. One guided
/// evaluation is one NFE.
pub struct Guided<M> {
    model: M,
    scale: f64,
}

impl<M: Denoiser> Guided<M> {
    /// Guidance scale `scale` (≥ 1, finite) around `model`.
    pub fn new(model: M, scale: f64) -> Result<Self> {
        if !(scale >= 1.0 && scale.is_finite()) {
            return Err(ld3_solvers::Error::Invalid(format!(
                "the guidance scale must be a number ≥ 1 (1 = no guidance), got {scale}"
            )));
        }
        Ok(Self { model, scale })
    }
    /// The guidance scale g.
    pub fn scale(&self) -> f64 {
        self.scale
    }
    /// The guided model.
    pub fn inner(&self) -> &M {
        &self.model
    }
}

impl<M: Denoiser> Denoiser for Guided<M> {
    fn describe(&self) -> String {
        format!("{}, guidance {}", self.model.describe(), self.scale)
    }
    fn sample_shape(&self) -> &[usize] {
        self.model.sample_shape()
    }
    fn noise_schedule(&self) -> &dyn NoiseSchedule {
        self.model.noise_schedule()
    }
    fn parameterization(&self) -> Parameterization {
        self.model.parameterization()
    }
    fn device(&self) -> &Device {
        self.model.device()
    }
    fn conditioning(&self) -> ConditioningKind {
        self.model.conditioning()
    }
    fn decode(&self, x: &Tensor) -> Result<Tensor> {
        self.model.decode(x)
    }
    fn decoded_shape(&self) -> Vec<usize> {
        self.model.decoded_shape()
    }
    fn parameter_count(&self) -> usize {
        self.model.parameter_count()
    }
    fn encode_text(&self, prompts: &[String]) -> Result<Tensor> {
        self.model.encode_text(prompts)
    }
    fn forward(&self, x: &Tensor, t_net: &Tensor, cond: &Conditioning) -> Result<Tensor> {
        if self.scale == 1.0 || cond.is_none() {
            return self.model.forward(x, t_net, cond);
        }
        let b = x.dim(0)?;
        let both = Conditioning::cat(&[cond.clone(), cond.unconditional()?])?;
        let t2 = match t_net.rank() {
            0 => t_net.clone(),
            _ => Tensor::cat(&[t_net, t_net], 0)?,
        };
        let out = self.model.forward(&Tensor::cat(&[x, x], 0)?, &t2, &both)?;
        let (c, u) = (out.narrow(0, 0, b)?, out.narrow(0, b, b)?);
        // ε_u + g·(ε_c − ε_u)
        Ok(u.add(&(c.sub(&u)? * self.scale)?)?)
    }
}

/// A [`Denoiser`] with one batch's conditioning, seen as a solver's [`Predictor`]: converts its
/// output to x̂_0 or ε̂ with α(t^c), σ(t^c) at the network time.
pub struct DenoiserPredictor<'a> {
    model: &'a dyn Denoiser,
    cond: Conditioning,
}

impl<'a> DenoiserPredictor<'a> {
    /// Wraps an unconditioned `model`.
    pub fn new(model: &'a dyn Denoiser) -> Self {
        Self {
            model,
            cond: Conditioning::None,
        }
    }
    /// Wraps `model` for a batch conditioned on `cond`.
    pub fn with_conditioning(model: &'a dyn Denoiser, cond: Conditioning) -> Self {
        Self { model, cond }
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

    fn predict(&self, x: &Tensor, at: &NetTime, target: Target) -> Result<Tensor> {
        let out = self.model.forward(x, &at.t, &self.cond)?;
        let alpha = per_sample(&at.alpha, x)?;
        let sigma = per_sample(&at.sigma, x)?;
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
        fn device(&self) -> &Device {
            self.x0.device()
        }
        fn forward(&self, _x: &Tensor, t_net: &Tensor, _cond: &Conditioning) -> Result<Tensor> {
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
                let got = p
                    .predict(&x, &NetTime::new(&schedule, &t_net).unwrap(), target)
                    .unwrap();
                let diff = max_abs_diff(&got, want).unwrap();
                assert!(diff < 1e-12, "{param:?} {target:?}: {diff}");
            }
        }
    }
}
