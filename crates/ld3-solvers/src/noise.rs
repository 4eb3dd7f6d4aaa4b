//! Noise schedules: α(t), σ(t), λ(t) = log α − log σ and t(λ) over each model's continuous time t,
//! on `f64` and, differentiably, on candle tensors.
//!
//! The forward process is x_t = α(t)·x_0 + σ(t)·ε. Every schedule is defined once, on `f64`,
//! with its derivative in t; the tensor forms evaluate those exact `f64` values and carry the
//! exact first derivative into candle's backprop (see [`map_with_derivative`]), so the tensor and
//! `f64` forms can never disagree.

use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::{invalid, Result};

/// A diffusion noise schedule over a continuous time `t` (t_max = pure noise, t_min = data end).
pub trait NoiseSchedule: Send + Sync + std::fmt::Debug {
    /// The serialisable description this schedule was built from.
    fn config(&self) -> NoiseScheduleConfig;
    /// Smallest time the sampler may reach (the data end).
    fn t_min(&self) -> f64;
    /// Largest time (the noise end), where sampling starts.
    fn t_max(&self) -> f64;
    /// x_T = prior_scale · z for standard-normal z (σ_max for EDM, 1 for VP).
    fn prior_scale(&self) -> f64;
    /// log α(t).
    fn log_alpha(&self, t: f64) -> f64;
    /// d log α / dt at time t.
    fn d_log_alpha_dt(&self, t: f64) -> f64;
    /// σ(t).
    fn sigma(&self, t: f64) -> f64;
    /// dσ/dt at time t.
    fn d_sigma_dt(&self, t: f64) -> f64;
    /// The time t at which λ(t) = `lambda` (the inverse of [`NoiseSchedule::lambda`]).
    fn t_from_lambda(&self, lambda: f64) -> f64;

    /// α(t).
    fn alpha(&self, t: f64) -> f64 {
        self.log_alpha(t).exp()
    }
    /// λ(t) = log α(t) − log σ(t), the half log-SNR; decreasing in t.
    fn lambda(&self, t: f64) -> f64 {
        self.log_alpha(t) - self.sigma(t).ln()
    }
    /// dλ/dt at time t (negative).
    fn d_lambda_dt(&self, t: f64) -> f64 {
        self.d_log_alpha_dt(t) - self.d_sigma_dt(t) / self.sigma(t)
    }
    /// EDM's σ for time t: σ(t)/α(t) = e^{−λ(t)} (what diffusers' `sigmas=` and ComfyUI use).
    fn edm_sigma(&self, t: f64) -> f64 {
        (-self.lambda(t)).exp()
    }
    /// The time whose EDM σ (σ/α) is `edm_sigma`.
    fn t_from_edm_sigma(&self, edm_sigma: f64) -> f64 {
        self.t_from_lambda(-edm_sigma.ln())
    }
    /// λ at t_max (the smallest λ used).
    fn lambda_min(&self) -> f64 {
        self.lambda(self.t_max())
    }
    /// λ at t_min (the largest λ used).
    fn lambda_max(&self) -> f64 {
        self.lambda(self.t_min())
    }

    /// log α(t) on a tensor of times, differentiable in t.
    fn log_alpha_tensor(&self, t: &Tensor) -> candle_core::Result<Tensor> {
        map_with_derivative(t, |t| (self.log_alpha(t), self.d_log_alpha_dt(t)))
    }
    /// α(t) on a tensor of times, differentiable in t.
    fn alpha_tensor(&self, t: &Tensor) -> candle_core::Result<Tensor> {
        map_with_derivative(t, |t| {
            let alpha = self.alpha(t);
            (alpha, alpha * self.d_log_alpha_dt(t))
        })
    }
    /// σ(t) on a tensor of times, differentiable in t.
    fn sigma_tensor(&self, t: &Tensor) -> candle_core::Result<Tensor> {
        map_with_derivative(t, |t| (self.sigma(t), self.d_sigma_dt(t)))
    }
    /// λ(t) on a tensor of times, differentiable in t.
    fn lambda_tensor(&self, t: &Tensor) -> candle_core::Result<Tensor> {
        map_with_derivative(t, |t| (self.lambda(t), self.d_lambda_dt(t)))
    }
    /// t(λ) on a tensor of half log-SNRs, differentiable in λ.
    fn t_from_lambda_tensor(&self, lambda: &Tensor) -> candle_core::Result<Tensor> {
        map_with_derivative(lambda, |lambda| {
            let t = self.t_from_lambda(lambda);
            (t, 1.0 / self.d_lambda_dt(t))
        })
    }
}

/// Applies a scalar function elementwise, differentiably: `f` returns the value and the derivative
/// at each point. The result holds the exact `f64` values (cast to `x`'s dtype) and passes
/// `f'(x)·upstream` back to `x` in candle's backprop, computed as f(x) + (x − detach(x))·f'(x).
pub fn map_with_derivative(
    x: &Tensor,
    f: impl Fn(f64) -> (f64, f64),
) -> candle_core::Result<Tensor> {
    let points: Vec<f64> = x.flatten_all()?.to_dtype(DType::F64)?.to_vec1()?;
    let (values, slopes): (Vec<f64>, Vec<f64>) = points.into_iter().map(f).unzip();
    let values = Tensor::from_vec(values, x.shape(), x.device())?.to_dtype(x.dtype())?;
    if !x.track_op() {
        return Ok(values);
    }
    let slopes = Tensor::from_vec(slopes, x.shape(), x.device())?.to_dtype(x.dtype())?;
    x.sub(&x.detach())?.mul(&slopes)?.add(&values)
}

/// log(1 + e^x) without overflow.
fn softplus(x: f64) -> f64 {
    if x > 0.0 {
        x + (-x).exp().ln_1p()
    } else {
        x.exp().ln_1p()
    }
}

/// σ = sqrt(1 − α²) of a variance-preserving process, from log α.
fn vp_sigma(log_alpha: f64) -> f64 {
    (-(2.0 * log_alpha).exp_m1()).sqrt()
}

/// dσ/dt = −α²·(d log α/dt)/σ of a variance-preserving process.
fn vp_d_sigma_dt(log_alpha: f64, d_log_alpha_dt: f64) -> f64 {
    -(2.0 * log_alpha).exp() * d_log_alpha_dt / vp_sigma(log_alpha)
}

/// log α of a VP process with half log-SNR λ: −½·log(1 + e^{−2λ}).
fn vp_log_alpha_from_lambda(lambda: f64) -> f64 {
    -0.5 * softplus(-2.0 * lambda)
}

/// EDM / variance-exploding schedule (Karras et al. 2022): t = σ, α = 1, x_T = σ_max·z.
#[derive(Clone, Debug, PartialEq)]
pub struct Edm {
    /// σ at the data end (EDM: 0.002).
    pub sigma_min: f64,
    /// σ at the noise end (EDM: 80).
    pub sigma_max: f64,
}

impl Edm {
    /// An EDM schedule on [sigma_min, sigma_max].
    pub fn new(sigma_min: f64, sigma_max: f64) -> Result<Self> {
        if !(sigma_min > 0.0 && sigma_max > sigma_min && sigma_max.is_finite()) {
            return invalid(format!(
                "EDM schedule needs 0 < sigma_min < sigma_max < inf, got sigma_min = {sigma_min}, \
                 sigma_max = {sigma_max} (EDM's defaults are 0.002 and 80)"
            ));
        }
        Ok(Self {
            sigma_min,
            sigma_max,
        })
    }
}

impl Default for Edm {
    fn default() -> Self {
        Self {
            sigma_min: 0.002,
            sigma_max: 80.0,
        }
    }
}

impl NoiseSchedule for Edm {
    fn config(&self) -> NoiseScheduleConfig {
        NoiseScheduleConfig::Edm {
            sigma_min: self.sigma_min,
            sigma_max: self.sigma_max,
        }
    }
    fn t_min(&self) -> f64 {
        self.sigma_min
    }
    fn t_max(&self) -> f64 {
        self.sigma_max
    }
    fn prior_scale(&self) -> f64 {
        self.sigma_max
    }
    fn log_alpha(&self, _t: f64) -> f64 {
        0.0
    }
    fn d_log_alpha_dt(&self, _t: f64) -> f64 {
        0.0
    }
    fn sigma(&self, t: f64) -> f64 {
        t
    }
    fn d_sigma_dt(&self, _t: f64) -> f64 {
        1.0
    }
    fn lambda(&self, t: f64) -> f64 {
        -t.ln()
    }
    fn t_from_lambda(&self, lambda: f64) -> f64 {
        (-lambda).exp()
    }
    fn edm_sigma(&self, t: f64) -> f64 {
        t
    }
    fn t_from_edm_sigma(&self, edm_sigma: f64) -> f64 {
        edm_sigma
    }
    // α = 1 and σ = t as tensor ops: no host read where a model evaluates them per call.
    fn alpha_tensor(&self, t: &Tensor) -> candle_core::Result<Tensor> {
        t.ones_like()
    }
    fn sigma_tensor(&self, t: &Tensor) -> candle_core::Result<Tensor> {
        Ok(t.clone())
    }
}

/// How a discrete VP model's β_n were laid out (diffusers' `beta_schedule`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BetaSchedule {
    /// β_n evenly spaced from β_start to β_end (DDPM: 1e-4..0.02).
    Linear,
    /// √β_n evenly spaced (Stable Diffusion v1: 0.00085..0.012; LDM: 0.0015..0.0195).
    ScaledLinear,
    /// Improved-DDPM cosine ᾱ, β capped at 0.999 (diffusers' `squaredcos_cap_v2`).
    SquaredcosCapV2,
}

/// Discrete-time VP schedule of a model trained on N noise levels (DDPM, LDM, Stable Diffusion),
/// made continuous as the DPM-Solver and LD3 code do: t_n = (n+1)/N, log α piecewise linear in t
/// between grid points (extended linearly beyond them), t ∈ [1/N, 1], x_T = z.
#[derive(Clone, Debug, PartialEq)]
pub struct VpDiscrete {
    config: NoiseScheduleConfig,
    /// ½·log ᾱ_n at t_n = (n+1)/N.
    log_alpha_grid: Vec<f64>,
}

impl VpDiscrete {
    /// From diffusers-style betas.
    pub fn from_betas(
        beta_schedule: BetaSchedule,
        beta_start: f64,
        beta_end: f64,
        num_train_timesteps: usize,
    ) -> Result<Self> {
        let n = num_train_timesteps;
        if n < 2 {
            return invalid(format!(
                "num_train_timesteps must be at least 2, got {n} (diffusion models use 1000)"
            ));
        }
        let betas: Vec<f64> = match beta_schedule {
            BetaSchedule::Linear | BetaSchedule::ScaledLinear => {
                if !(beta_start > 0.0 && beta_end > beta_start && beta_end < 1.0) {
                    return invalid(format!(
                        "betas need 0 < beta_start < beta_end < 1, got {beta_start}..{beta_end} \
                         (SD v1: 0.00085..0.012 scaled_linear, DDPM: 0.0001..0.02 linear)"
                    ));
                }
                let (a, b) = if beta_schedule == BetaSchedule::Linear {
                    (beta_start, beta_end)
                } else {
                    (beta_start.sqrt(), beta_end.sqrt())
                };
                (0..n)
                    .map(|i| {
                        let v = a + (b - a) * i as f64 / (n - 1) as f64;
                        if beta_schedule == BetaSchedule::Linear {
                            v
                        } else {
                            v * v
                        }
                    })
                    .collect()
            }
            BetaSchedule::SquaredcosCapV2 => {
                let alpha_bar = |x: f64| {
                    ((x + 0.008) / 1.008 * std::f64::consts::FRAC_PI_2)
                        .cos()
                        .powi(2)
                };
                (0..n)
                    .map(|i| {
                        let t1 = i as f64 / n as f64;
                        let t2 = (i + 1) as f64 / n as f64;
                        (1.0 - alpha_bar(t2) / alpha_bar(t1)).min(0.999)
                    })
                    .collect()
            }
        };
        let mut log_alpha_bar = 0.0;
        let log_alpha_grid = betas
            .iter()
            .map(|beta| {
                log_alpha_bar += (-beta).ln_1p();
                0.5 * log_alpha_bar
            })
            .collect();
        let config = NoiseScheduleConfig::VpDiscrete {
            beta_schedule: Some(beta_schedule),
            beta_start: Some(beta_start),
            beta_end: Some(beta_end),
            num_train_timesteps: n,
            alphas_cumprod: None,
        };
        Self::from_log_alpha_grid(log_alpha_grid, config)
    }

    /// From an explicit list of ᾱ_n (a model's `alphas_cumprod`), n = 0..N−1.
    pub fn from_alphas_cumprod(alphas_cumprod: &[f64]) -> Result<Self> {
        if alphas_cumprod.len() < 2 {
            return invalid(
                "alphas_cumprod needs at least 2 values (one per training noise level)",
            );
        }
        if let Some(bad) = alphas_cumprod.iter().find(|a| !(**a > 0.0 && **a < 1.0)) {
            return invalid(format!(
                "every alphas_cumprod value must lie in (0, 1), found {bad}"
            ));
        }
        let grid = alphas_cumprod.iter().map(|a| 0.5 * a.ln()).collect();
        let config = NoiseScheduleConfig::VpDiscrete {
            beta_schedule: None,
            beta_start: None,
            beta_end: None,
            num_train_timesteps: alphas_cumprod.len(),
            alphas_cumprod: Some(alphas_cumprod.to_vec()),
        };
        Self::from_log_alpha_grid(grid, config)
    }

    fn from_log_alpha_grid(log_alpha_grid: Vec<f64>, config: NoiseScheduleConfig) -> Result<Self> {
        if log_alpha_grid.windows(2).any(|w| !(w[1] < w[0])) {
            return invalid(
                "alphas_cumprod must decrease strictly with the training step (every beta > 0)",
            );
        }
        Ok(Self {
            config,
            log_alpha_grid,
        })
    }

    /// Number of training noise levels N.
    pub fn num_train_timesteps(&self) -> usize {
        self.log_alpha_grid.len()
    }

    fn grid_step(&self) -> f64 {
        1.0 / self.num_train_timesteps() as f64
    }

    /// Segment k with t_k ≤ t < t_{k+1}, clamped to the first and last segment.
    fn segment(&self, t: f64) -> usize {
        let n = self.num_train_timesteps();
        let k = (t / self.grid_step() - 1.0).floor();
        if k.is_nan() || k < 0.0 {
            0
        } else {
            (k as usize).min(n - 2)
        }
    }

    fn slope(&self, k: usize) -> f64 {
        (self.log_alpha_grid[k + 1] - self.log_alpha_grid[k]) / self.grid_step()
    }

    /// The network's time input for t, as LD3 and DPM-Solver feed discrete models:
    /// 1000·(t − 1/N) for N = 1000, i.e. the (continuous) training-step index.
    pub fn timestep_index(&self, t: f64) -> f64 {
        t * self.num_train_timesteps() as f64 - 1.0
    }
}

impl NoiseSchedule for VpDiscrete {
    fn config(&self) -> NoiseScheduleConfig {
        self.config.clone()
    }
    fn t_min(&self) -> f64 {
        self.grid_step()
    }
    fn t_max(&self) -> f64 {
        1.0
    }
    fn prior_scale(&self) -> f64 {
        1.0
    }
    fn log_alpha(&self, t: f64) -> f64 {
        let k = self.segment(t);
        let t_k = (k + 1) as f64 * self.grid_step();
        self.log_alpha_grid[k] + (t - t_k) * self.slope(k)
    }
    fn d_log_alpha_dt(&self, t: f64) -> f64 {
        self.slope(self.segment(t))
    }
    fn sigma(&self, t: f64) -> f64 {
        vp_sigma(self.log_alpha(t))
    }
    fn d_sigma_dt(&self, t: f64) -> f64 {
        vp_d_sigma_dt(self.log_alpha(t), self.d_log_alpha_dt(t))
    }
    fn t_from_lambda(&self, lambda: f64) -> f64 {
        let target = vp_log_alpha_from_lambda(lambda);
        let grid = &self.log_alpha_grid;
        // First grid point whose log α lies below the target (grid decreases in n).
        let above = grid.partition_point(|&la| la >= target);
        let k = above.saturating_sub(1).min(grid.len() - 2);
        let t_k = (k + 1) as f64 * self.grid_step();
        t_k + (target - grid[k]) / self.slope(k)
    }
}

/// Continuous VP schedule with linear β(t) = β_min + t(β_max − β_min) (Song et al. 2021),
/// t ∈ [10⁻³, 1], x_T = z.
#[derive(Clone, Debug, PartialEq)]
pub struct VpLinear {
    /// β(0) (default 0.1).
    pub beta_min: f64,
    /// β(1) (default 20).
    pub beta_max: f64,
}

impl VpLinear {
    /// A linear-β VP schedule.
    pub fn new(beta_min: f64, beta_max: f64) -> Result<Self> {
        if !(beta_min > 0.0 && beta_max > beta_min && beta_max.is_finite()) {
            return invalid(format!(
                "VP-linear needs 0 < beta_min < beta_max, got {beta_min}..{beta_max} \
                 (the usual values are 0.1 and 20)"
            ));
        }
        Ok(Self { beta_min, beta_max })
    }
}

impl Default for VpLinear {
    fn default() -> Self {
        Self {
            beta_min: 0.1,
            beta_max: 20.0,
        }
    }
}

impl NoiseSchedule for VpLinear {
    fn config(&self) -> NoiseScheduleConfig {
        NoiseScheduleConfig::VpLinear {
            beta_min: self.beta_min,
            beta_max: self.beta_max,
        }
    }
    fn t_min(&self) -> f64 {
        1e-3
    }
    fn t_max(&self) -> f64 {
        1.0
    }
    fn prior_scale(&self) -> f64 {
        1.0
    }
    fn log_alpha(&self, t: f64) -> f64 {
        -0.25 * t * t * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min
    }
    fn d_log_alpha_dt(&self, t: f64) -> f64 {
        -0.5 * t * (self.beta_max - self.beta_min) - 0.5 * self.beta_min
    }
    fn sigma(&self, t: f64) -> f64 {
        vp_sigma(self.log_alpha(t))
    }
    fn d_sigma_dt(&self, t: f64) -> f64 {
        vp_d_sigma_dt(self.log_alpha(t), self.d_log_alpha_dt(t))
    }
    fn t_from_lambda(&self, lambda: f64) -> f64 {
        // Solve (β_max − β_min)/4·t² + β_min/2·t = ½·log(1 + e^{−2λ}) for t ≥ 0.
        let spread = self.beta_max - self.beta_min;
        let tmp = 2.0 * spread * softplus(-2.0 * lambda);
        let delta = self.beta_min * self.beta_min + tmp;
        tmp / (delta.sqrt() + self.beta_min) / spread
    }
}

/// Continuous cosine VP schedule (Nichol & Dhariwal 2021, s = 0.008, as in DPM-Solver),
/// t ∈ [10⁻³, 0.9946], x_T = z.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct VpCosine;

impl VpCosine {
    const S: f64 = 0.008;

    fn angle(t: f64) -> f64 {
        (t + Self::S) / (1.0 + Self::S) * std::f64::consts::FRAC_PI_2
    }
}

impl NoiseSchedule for VpCosine {
    fn config(&self) -> NoiseScheduleConfig {
        NoiseScheduleConfig::VpCosine {}
    }
    fn t_min(&self) -> f64 {
        1e-3
    }
    fn t_max(&self) -> f64 {
        0.9946
    }
    fn prior_scale(&self) -> f64 {
        1.0
    }
    fn log_alpha(&self, t: f64) -> f64 {
        Self::angle(t).cos().ln() - Self::angle(0.0).cos().ln()
    }
    fn d_log_alpha_dt(&self, t: f64) -> f64 {
        -Self::angle(t).tan() * std::f64::consts::FRAC_PI_2 / (1.0 + Self::S)
    }
    fn sigma(&self, t: f64) -> f64 {
        vp_sigma(self.log_alpha(t))
    }
    fn d_sigma_dt(&self, t: f64) -> f64 {
        vp_d_sigma_dt(self.log_alpha(t), self.d_log_alpha_dt(t))
    }
    fn t_from_lambda(&self, lambda: f64) -> f64 {
        let log_alpha = vp_log_alpha_from_lambda(lambda) + Self::angle(0.0).cos().ln();
        log_alpha.exp().acos() * 2.0 * (1.0 + Self::S) / std::f64::consts::PI - Self::S
    }
}

/// The serialisable description of a noise schedule (in model configs, GMM files and schedule
/// files). `{"type": "edm", ...}`, `{"type": "vp-discrete", ...}`, `{"type": "vp-linear", ...}`,
/// `{"type": "vp-cosine"}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum NoiseScheduleConfig {
    /// [`Edm`].
    Edm {
        /// σ at the data end (default 0.002).
        #[serde(default = "edm_sigma_min")]
        sigma_min: f64,
        /// σ at the noise end (default 80).
        #[serde(default = "edm_sigma_max")]
        sigma_max: f64,
    },
    /// [`VpDiscrete`], from betas (diffusers' names) or from an explicit `alphas_cumprod` list.
    VpDiscrete {
        /// diffusers' `beta_schedule`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        beta_schedule: Option<BetaSchedule>,
        /// β_1.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        beta_start: Option<f64>,
        /// β_N.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        beta_end: Option<f64>,
        /// N (default 1000).
        #[serde(default = "default_train_timesteps")]
        num_train_timesteps: usize,
        /// ᾱ_1..ᾱ_N, instead of the β layout.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        alphas_cumprod: Option<Vec<f64>>,
    },
    /// [`VpLinear`].
    VpLinear {
        /// β_min (default 0.1).
        #[serde(default = "vp_beta_min")]
        beta_min: f64,
        /// β_max (default 20).
        #[serde(default = "vp_beta_max")]
        beta_max: f64,
    },
    /// [`VpCosine`].
    VpCosine {},
}

fn edm_sigma_min() -> f64 {
    0.002
}
fn edm_sigma_max() -> f64 {
    80.0
}
fn default_train_timesteps() -> usize {
    1000
}
fn vp_beta_min() -> f64 {
    0.1
}
fn vp_beta_max() -> f64 {
    20.0
}

impl NoiseScheduleConfig {
    /// Builds the schedule, checking its parameters.
    pub fn build(&self) -> Result<std::sync::Arc<dyn NoiseSchedule>> {
        Ok(match self {
            Self::Edm {
                sigma_min,
                sigma_max,
            } => std::sync::Arc::new(Edm::new(*sigma_min, *sigma_max)?),
            Self::VpDiscrete {
                beta_schedule,
                beta_start,
                beta_end,
                num_train_timesteps,
                alphas_cumprod,
            } => {
                if let Some(alphas) = alphas_cumprod {
                    std::sync::Arc::new(VpDiscrete::from_alphas_cumprod(alphas)?)
                } else {
                    let Some(kind) = beta_schedule else {
                        return invalid(
                            "a vp-discrete schedule needs \"beta_schedule\" (linear, scaled_linear \
                             or squaredcos_cap_v2) or an explicit \"alphas_cumprod\" list",
                        );
                    };
                    let needs = |v: &Option<f64>, name: &str| {
                        v.ok_or_else(|| {
                            crate::Error::Invalid(format!(
                                "a vp-discrete schedule with beta_schedule {kind:?} needs \"{name}\""
                            ))
                        })
                    };
                    let (start, end) = if *kind == BetaSchedule::SquaredcosCapV2 {
                        (beta_start.unwrap_or(0.0), beta_end.unwrap_or(0.0))
                    } else {
                        (
                            needs(beta_start, "beta_start")?,
                            needs(beta_end, "beta_end")?,
                        )
                    };
                    std::sync::Arc::new(VpDiscrete::from_betas(
                        *kind,
                        start,
                        end,
                        *num_train_timesteps,
                    )?)
                }
            }
            Self::VpLinear { beta_min, beta_max } => {
                std::sync::Arc::new(VpLinear::new(*beta_min, *beta_max)?)
            }
            Self::VpCosine {} => std::sync::Arc::new(VpCosine),
        })
    }

    /// Short name of the model's time variable, recorded in schedule files.
    pub fn time_variable(&self) -> &'static str {
        match self {
            Self::Edm { .. } => "edm-sigma",
            Self::VpDiscrete { .. } => "vp-t (t_n = (n+1)/N)",
            Self::VpLinear { .. } | Self::VpCosine {} => "vp-t",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn schedules() -> Vec<Box<dyn NoiseSchedule>> {
        vec![
            Box::new(Edm::default()),
            Box::new(
                VpDiscrete::from_betas(BetaSchedule::ScaledLinear, 0.00085, 0.012, 1000).unwrap(),
            ),
            Box::new(VpDiscrete::from_betas(BetaSchedule::Linear, 1e-4, 0.02, 1000).unwrap()),
            Box::new(
                VpDiscrete::from_betas(BetaSchedule::ScaledLinear, 0.0015, 0.0195, 1000).unwrap(),
            ),
            Box::new(
                VpDiscrete::from_betas(BetaSchedule::SquaredcosCapV2, 0.0, 0.0, 1000).unwrap(),
            ),
            Box::new(VpLinear::default()),
            Box::new(VpCosine),
        ]
    }

    #[test]
    fn published_lambda_ranges() {
        // Ranges quoted in the LD3 reference (§2.1, §2.2).
        let edm = Edm::default();
        assert!((edm.lambda_min() + 4.38203).abs() < 1e-5);
        assert!((edm.lambda_max() - 6.21461).abs() < 1e-5);
        let sd = VpDiscrete::from_betas(BetaSchedule::ScaledLinear, 0.00085, 0.012, 1000).unwrap();
        assert!(
            (sd.lambda_min() + 2.6820).abs() < 1e-4,
            "{}",
            sd.lambda_min()
        );
        assert!(
            (sd.lambda_max() - 3.5347).abs() < 1e-4,
            "{}",
            sd.lambda_max()
        );
        assert!((sd.edm_sigma(1.0) - 14.6146).abs() < 1e-4);
        assert!((sd.edm_sigma(0.001) - 0.0292).abs() < 1e-4);
        let ldm = VpDiscrete::from_betas(BetaSchedule::ScaledLinear, 0.0015, 0.0195, 1000).unwrap();
        assert!((ldm.lambda_min() + 4.4287).abs() < 1e-4);
        assert!((ldm.lambda_max() - 3.2504).abs() < 1e-4);
    }

    #[test]
    fn lambda_inverse_round_trips_and_alpha_sigma_are_consistent() {
        for s in schedules() {
            let (lo, hi) = (s.t_min(), s.t_max());
            for i in 0..=200 {
                let t = lo + (hi - lo) * i as f64 / 200.0;
                let back = s.t_from_lambda(s.lambda(t));
                assert!(
                    (back - t).abs() < 1e-9 * t.max(1.0),
                    "{s:?}: t={t} back={back}"
                );
                if !matches!(s.config(), NoiseScheduleConfig::Edm { .. }) {
                    let (a, sg) = (s.alpha(t), s.sigma(t));
                    assert!((a * a + sg * sg - 1.0).abs() < 1e-12);
                }
                // Derivatives agree with central differences (away from grid kinks).
                let h = 1e-7 * t.max(1e-3);
                let fd = (s.lambda(t + h) - s.lambda(t - h)) / (2.0 * h);
                let an = s.d_lambda_dt(t);
                let kink = matches!(s.config(), NoiseScheduleConfig::VpDiscrete { .. });
                if !kink {
                    assert!(
                        (fd - an).abs() < 1e-5 * an.abs().max(1.0),
                        "{s:?} t={t}: {fd} vs {an}"
                    );
                }
            }
        }
    }

    #[test]
    fn vp_discrete_matches_its_grid_and_is_linear_between() {
        let s = VpDiscrete::from_betas(BetaSchedule::Linear, 1e-4, 0.02, 1000).unwrap();
        let mut ab = 1.0;
        for n in 0..1000 {
            let beta = 1e-4 + (0.02 - 1e-4) * n as f64 / 999.0;
            ab *= 1.0 - beta;
            let t = (n + 1) as f64 / 1000.0;
            assert!((s.alpha(t).powi(2) - ab).abs() < 1e-12);
        }
        let mid = 0.5 * (s.log_alpha(0.010) + s.log_alpha(0.011));
        assert!((s.log_alpha(0.0105) - mid).abs() < 1e-14);
        assert!((s.timestep_index(0.001) - 0.0).abs() < 1e-12);
        assert!((s.timestep_index(1.0) - 999.0).abs() < 1e-9);
    }

    #[test]
    fn tensor_forms_equal_f64_forms_with_exact_gradients() {
        let dev = Device::Cpu;
        for s in schedules() {
            let ts = [s.t_max(), 0.5 * (s.t_max() + s.t_min()), s.t_min() * 1.37];
            let var = Var::new(&ts[..], &dev).unwrap();
            let lam = s.lambda_tensor(var.as_tensor()).unwrap();
            let vals: Vec<f64> = lam.to_vec1().unwrap();
            for (v, t) in vals.iter().zip(ts) {
                assert_eq!(*v, s.lambda(t));
            }
            let grads = lam.sum_all().unwrap().backward().unwrap();
            let g: Vec<f64> = grads.get(var.as_tensor()).unwrap().to_vec1().unwrap();
            for (gi, t) in g.iter().zip(ts) {
                assert_eq!(*gi, s.d_lambda_dt(t));
            }
            let back = s.t_from_lambda_tensor(&lam).unwrap();
            let back: Vec<f64> = back.to_vec1().unwrap();
            for (b, t) in back.iter().zip(ts) {
                assert!((b - t).abs() < 1e-10 * t.max(1.0));
            }
        }
    }

    #[test]
    fn configs_round_trip_through_json() {
        for s in schedules() {
            let json = serde_json::to_string(&s.config()).unwrap();
            let back: NoiseScheduleConfig = serde_json::from_str(&json).unwrap();
            let rebuilt = back.build().unwrap();
            assert_eq!(rebuilt.lambda(0.5 * s.t_max()), s.lambda(0.5 * s.t_max()));
        }
        let gmm_style: NoiseScheduleConfig = serde_json::from_str(
            r#"{"type":"vp-discrete","beta_schedule":"scaled_linear","beta_start":0.00085,"beta_end":0.012,"num_train_timesteps":1000}"#,
        )
        .unwrap();
        assert!(gmm_style.build().is_ok());
        let missing: NoiseScheduleConfig =
            serde_json::from_str(r#"{"type":"vp-discrete","beta_schedule":"linear"}"#).unwrap();
        let err = missing.build().unwrap_err().to_string();
        assert!(err.contains("beta_start"), "{err}");
    }
}
