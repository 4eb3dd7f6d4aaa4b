//! Networks as their checkpoints define them, and the time adapters that make a [`Denoiser`] of
//! one — the way EDM's `VPPrecond` / `EDMPrecond` wrap `SongUNet`: the network knows its own time
//! input (a training-step index, a noise level, ...), the adapter maps the schedule's time t onto
//! it. Adapters never look inside the network; any ε, x₀ or v network fits.

use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use ld3_solvers::{NoiseSchedule, Result};

use crate::conditioning::{Conditioning, ConditioningKind};
use crate::denoiser::{Denoiser, Parameterization};

/// A raw network: x, its own time input (a tensor, differentiable) and conditioning in; its raw
/// output out, in the dtype it computes in.
pub trait Network: Send + Sync {
    /// The raw output for `x` at time input `time` ([B] or rank 0).
    fn forward(&self, x: &Tensor, time: &Tensor, cond: &Conditioning) -> Result<Tensor>;
    /// The conditioning it takes.
    fn conditioning(&self) -> ConditioningKind {
        ConditioningKind::None
    }
    /// The dtype of its weights (inputs are cast to it).
    fn dtype(&self) -> DType;
    /// Where its weights live.
    fn device(&self) -> &Device;
    /// Number of learned parameters.
    fn parameter_count(&self) -> usize;
    /// A short description.
    fn describe(&self) -> String;
}

/// The discrete-VP time mapping around a network trained on N discrete steps (DDPM, LDM,
/// Stable Diffusion): the network time t ∈ [1/N, 1] is fed to the network as the continuous
/// training-step index N·t − 1 (the LD3 / DPM-Solver convention), differentiably. The input is
/// cast to the network's dtype and the output back to the input's; the time index is computed
/// in f32, or f64 for an f64 network.
pub struct DiscreteVpTime<N> {
    net: N,
    schedule: Arc<dyn NoiseSchedule>,
    parameterization: Parameterization,
    num_train_timesteps: usize,
    shape: Vec<usize>,
    name: String,
}

impl<N: Network> DiscreteVpTime<N> {
    /// `net`, predicting `parameterization` under `schedule` over `num_train_timesteps` steps,
    /// for samples of `shape`; `name` labels it.
    pub fn new(
        net: N,
        schedule: Arc<dyn NoiseSchedule>,
        parameterization: Parameterization,
        num_train_timesteps: usize,
        shape: Vec<usize>,
        name: impl Into<String>,
    ) -> Self {
        Self {
            net,
            schedule,
            parameterization,
            num_train_timesteps,
            shape,
            name: name.into(),
        }
    }

    /// The wrapped network.
    pub fn network(&self) -> &N {
        &self.net
    }

    /// The network time t as the network's timestep input N·t − 1.
    pub fn timestep_index(&self, t_net: &Tensor) -> candle_core::Result<Tensor> {
        (t_net * self.num_train_timesteps as f64)? - 1.0
    }
}

impl<N: Network> Denoiser for DiscreteVpTime<N> {
    fn describe(&self) -> String {
        format!(
            "{} ({}, {:?}, {:?})",
            self.name,
            self.net.describe(),
            self.parameterization,
            self.shape
        )
    }
    fn sample_shape(&self) -> &[usize] {
        &self.shape
    }
    fn noise_schedule(&self) -> &dyn NoiseSchedule {
        self.schedule.as_ref()
    }
    fn parameterization(&self) -> Parameterization {
        self.parameterization
    }
    fn device(&self) -> &Device {
        self.net.device()
    }
    fn conditioning(&self) -> ConditioningKind {
        self.net.conditioning()
    }
    fn parameter_count(&self) -> usize {
        self.net.parameter_count()
    }
    fn forward(&self, x: &Tensor, t_net: &Tensor, cond: &Conditioning) -> Result<Tensor> {
        let dtype = self.net.dtype();
        let t_dtype = match dtype {
            DType::F64 => DType::F64,
            _ => DType::F32,
        };
        let steps = self.timestep_index(&t_net.to_dtype(t_dtype)?)?;
        let out = self.net.forward(&x.to_dtype(dtype)?, &steps, cond)?;
        Ok(out.to_dtype(x.dtype())?)
    }
}
