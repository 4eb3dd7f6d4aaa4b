//! The solver times t_0 > … > t_N and the network times t^c_0..t^c_N, and the schedule
//! evaluated at them.

use candle_core::{DType, Device, Tensor};

use crate::error::{invalid, Result};
use crate::noise::NoiseSchedule;
use crate::steps::check_times;

/// The solver times t_0 > … > t_N and the network times t^c_0..t^c_N, as rank-1 `f64` tensors.
/// Make either (or both) from a `candle_core::Var` to get gradients with respect to them.
#[derive(Clone, Debug)]
pub struct Times {
    t: Tensor,
    t_net: Tensor,
}

impl Times {
    /// Solver times `t` and network times `t_net` (same length N+1, any float dtype; kept as
    /// `f64`, differentiably).
    pub fn new(t: &Tensor, t_net: &Tensor) -> Result<Self> {
        let t = as_time_vector(t, "t")?;
        let t_net = as_time_vector(t_net, "t_net")?;
        if t.dim(0)? != t_net.dim(0)? {
            return invalid(format!(
                "t has {} entries but t_net has {}: both need N+1",
                t.dim(0)?,
                t_net.dim(0)?
            ));
        }
        Ok(Self { t, t_net })
    }

    /// Network times equal to the solver times (the usual, non-decoupled case).
    pub fn shared(t: &Tensor) -> Result<Self> {
        Self::new(t, t)
    }

    /// Constant times from `f64` lists (no gradient).
    pub fn from_f64(t: &[f64], t_net: &[f64], device: &Device) -> Result<Self> {
        Self::new(&Tensor::new(t, device)?, &Tensor::new(t_net, device)?)
    }

    /// Number of steps N.
    pub fn steps(&self) -> usize {
        self.t.dims()[0] - 1
    }
    /// The solver times as a tensor [N+1].
    pub fn t(&self) -> &Tensor {
        &self.t
    }
    /// The network times as a tensor [N+1].
    pub fn t_net(&self) -> &Tensor {
        &self.t_net
    }
    /// Network time t^c_i as a rank-0 tensor.
    pub fn t_net_at(&self, i: usize) -> Result<Tensor> {
        Ok(self.t_net.get(i)?)
    }
    /// The solver times as numbers.
    pub fn t_values(&self) -> Result<Vec<f64>> {
        Ok(self.t.to_vec1()?)
    }
    /// The network times as numbers.
    pub fn t_net_values(&self) -> Result<Vec<f64>> {
        Ok(self.t_net.to_vec1()?)
    }

    /// Checks both lists against the model's schedule: t strictly decreasing inside the time
    /// range, t^c finite and inside it.
    pub fn check(&self, schedule: &dyn NoiseSchedule) -> Result<()> {
        check_times(schedule, &self.t_values()?)?;
        let (lo, hi) = (schedule.t_min(), schedule.t_max());
        for (i, v) in self.t_net_values()?.iter().enumerate() {
            if !crate::steps::in_time_range(schedule, *v) {
                return invalid(format!(
                    "network time t_net_{i} = {v} is outside the model's time range [{lo}, {hi}]"
                ));
            }
        }
        Ok(())
    }
}

fn as_time_vector(t: &Tensor, name: &str) -> Result<Tensor> {
    if t.rank() != 1 || t.dim(0)? < 2 {
        return invalid(format!(
            "{name} must be a rank-1 tensor of N+1 ≥ 2 times, got shape {:?}",
            t.dims()
        ));
    }
    if !t.dtype().is_float() {
        return invalid(format!("{name} must hold floats, got {:?}", t.dtype()));
    }
    Ok(t.to_dtype(DType::F64)?)
}

/// α, σ and λ at every solver time, as rank-1 tensors differentiable in t.
pub struct Grid {
    alpha: Tensor,
    sigma: Tensor,
    lambda: Tensor,
}

impl Grid {
    /// Evaluates the schedule at the solver times.
    pub fn new(schedule: &dyn NoiseSchedule, times: &Times) -> Result<Self> {
        Ok(Self {
            alpha: schedule.alpha_tensor(times.t())?,
            sigma: schedule.sigma_tensor(times.t())?,
            lambda: schedule.lambda_tensor(times.t())?,
        })
    }
    /// α(t_i).
    pub fn alpha(&self, i: usize) -> Result<Tensor> {
        Ok(self.alpha.get(i)?)
    }
    /// σ(t_i).
    pub fn sigma(&self, i: usize) -> Result<Tensor> {
        Ok(self.sigma.get(i)?)
    }
    /// λ(t_i).
    pub fn lambda(&self, i: usize) -> Result<Tensor> {
        Ok(self.lambda.get(i)?)
    }
    /// h = λ(t_j) − λ(t_i).
    pub fn h(&self, i: usize, j: usize) -> Result<Tensor> {
        Ok(self.lambda(j)?.sub(&self.lambda(i)?)?)
    }
    /// EDM σ/α at t_i.
    pub fn edm_sigma(&self, i: usize) -> Result<Tensor> {
        Ok(self.sigma(i)?.div(&self.alpha(i)?)?)
    }
}
