//! Time embeddings: sinusoids of a (continuous, differentiable) time input and their MLP.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::{linear, Linear};

/// diffusers' `get_timestep_embedding`: sinusoids of `timesteps` [B] at `dim` frequencies
/// exp(−ln(10⁴)·i/(dim/2 − shift)), halves ordered (cos, sin) when `flip_sin_to_cos`.
pub fn timestep_embedding(
    timesteps: &Tensor,
    dim: usize,
    flip_sin_to_cos: bool,
    freq_shift: f64,
) -> Result<Tensor> {
    let half = dim / 2;
    let freqs: Vec<f64> = (0..half)
        .map(|i| (-(10_000f64.ln()) * i as f64 / (half as f64 - freq_shift)).exp())
        .collect();
    let freqs = Tensor::new(freqs, timesteps.device())?.to_dtype(timesteps.dtype())?;
    let args = timesteps
        .unsqueeze(1)?
        .broadcast_mul(&freqs.unsqueeze(0)?)?;
    let (sin, cos) = (args.sin()?, args.cos()?);
    let emb = if flip_sin_to_cos {
        Tensor::cat(&[cos, sin], 1)?
    } else {
        Tensor::cat(&[sin, cos], 1)?
    };
    if dim % 2 == 1 {
        emb.pad_with_zeros(1, 0, 1)
    } else {
        Ok(emb)
    }
}

/// `TimestepEmbedding`: linear → SiLU → linear.
pub struct TimestepMlp {
    linear_1: Linear,
    linear_2: Linear,
}

impl TimestepMlp {
    /// Keys `linear_1`, `linear_2`.
    pub fn new(c_in: usize, c_out: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            linear_1: linear(c_in, c_out, vb.pp("linear_1"))?,
            linear_2: linear(c_out, c_out, vb.pp("linear_2"))?,
        })
    }

    /// The embedding of the sinusoids `t_emb`.
    pub fn forward(&self, t_emb: &Tensor) -> Result<Tensor> {
        self.linear_2
            .forward(&super::silu(&self.linear_1.forward(t_emb)?)?)
    }
}
