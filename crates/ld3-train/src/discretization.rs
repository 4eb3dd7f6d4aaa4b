//! LD3's learnable discretisation (the LD3 paper, arXiv 2405.15506, §3): logits θ ∈ R^{N+1} →
//! softmax → cumulative sum → rescaled onto [λ_min, λ_max] (λ-mode) or [t_min, t_max] (t-mode),
//! and decoupled network times t^c from ξ ∈ R^{N+1}, clamped to a window on interior points.

use candle_core::{DType, Device, Tensor};
use ld3_solvers::{Error, NoiseSchedule, Result};
use serde::{Deserialize, Serialize};

/// The variable in which θ lays out the steps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TimeMode {
    /// Steps in λ (half log-SNR); uniform θ = logSNR-uniform. The default for every model
    /// (docs/ld3.md measures it against t on VP mixtures and the embedded MNIST DDPM).
    Lambda,
    /// Steps in t; uniform θ = time-uniform. The official code's layout for VP and latent
    /// models.
    Time,
}

impl TimeMode {
    /// The official code's layout for a model: λ for EDM schedules, t for every other (VP,
    /// latent). This project's default before λ became every model's (2026-12-04).
    pub fn official(schedule: &dyn NoiseSchedule) -> Self {
        match schedule.config() {
            ld3_solvers::noise::NoiseScheduleConfig::Edm { .. } => Self::Lambda,
            _ => Self::Time,
        }
    }
}

/// How the window w of the decoupled shifts, |ξ̃_k| ≤ w, is measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WindowRule {
    /// w = rate·(smallest step) in the mode's own variable (λ or t), as the paper describes:
    /// a network time can never cross a neighbouring solver time, and decoupling is available
    /// from the first iteration. The default here.
    StepSize,
    /// w = rate·min_k |θ_{k+1} − θ_k| on the raw logits, as the official code computes it (zero
    /// at a uniform initialisation, so no decoupling until θ spreads out).
    RawLogits,
}

/// θ, ξ → (t, t^c) for N steps.
#[derive(Clone, Debug)]
pub struct Discretization {
    /// Layout variable.
    pub mode: TimeMode,
    /// Steps N.
    pub steps: usize,
    /// Window rule for ξ.
    pub window: WindowRule,
    /// The window factor (0.5 in LD3).
    pub window_rate: f64,
}

impl Discretization {
    /// N steps in `mode` with the default window (step sizes, factor 0.5).
    pub fn new(mode: TimeMode, steps: usize) -> Result<Self> {
        if steps == 0 {
            return Err(Error::Invalid(
                "a discretisation needs at least 1 step".into(),
            ));
        }
        Ok(Self {
            mode,
            steps,
            window: WindowRule::StepSize,
            window_rate: 0.5,
        })
    }

    /// The logits θ that reproduce `times` (N+1 decreasing times from t_max to t_min) exactly:
    /// each step's share of the λ (or t) range is exp(θ_k)/Σ. θ_0, which cancels, is set to the
    /// mean of the others.
    pub fn fit(&self, schedule: &dyn NoiseSchedule, times: &[f64]) -> Result<Vec<f64>> {
        let n = self.steps;
        if times.len() != n + 1 {
            return Err(Error::Invalid(format!(
                "fitting {n} steps needs {} times, got {}",
                n + 1,
                times.len()
            )));
        }
        ld3_solvers::steps::check_times(schedule, times)?;
        let gaps: Vec<f64> = match self.mode {
            // θ_k ↔ λ_k − λ_{k−1}, k = 1..N.
            TimeMode::Lambda => (1..=n)
                .map(|k| schedule.lambda(times[k]) - schedule.lambda(times[k - 1]))
                .collect(),
            // θ_j ↔ t_{N−j} − t_{N−j+1}, j = 1..N.
            TimeMode::Time => (1..=n).map(|j| times[n - j] - times[n - j + 1]).collect(),
        };
        if let Some(g) = gaps.iter().find(|g| !(**g > 0.0)) {
            return Err(Error::Invalid(format!(
                "cannot fit a schedule with a non-positive step ({g})"
            )));
        }
        let logs: Vec<f64> = gaps.iter().map(|g| g.ln()).collect();
        let mean = logs.iter().sum::<f64>() / n as f64;
        Ok(std::iter::once(mean).chain(logs).collect())
    }

    /// Solver times t [N+1] from θ, differentiable in θ; t_0 = t_max and t_N = t_min exactly.
    pub fn times(&self, schedule: &dyn NoiseSchedule, theta: &Tensor) -> Result<Tensor> {
        let u = self.unit_layout(theta)?;
        let t = match self.mode {
            TimeMode::Lambda => {
                let (lo, hi) = (schedule.lambda_min(), schedule.lambda_max());
                schedule.t_from_lambda_tensor(&u.affine(hi - lo, lo)?)?
            }
            TimeMode::Time => {
                let (lo, hi) = (schedule.t_min(), schedule.t_max());
                let reversed = reverse(&u)?;
                reversed.affine(hi - lo, lo)?
            }
        };
        exact_ends(&t, schedule.t_max(), schedule.t_min())
    }

    /// (t, t^c): solver times from θ and network times shifted by clamp(ξ, ±w) on interior
    /// points, in λ (λ-mode) or t (t-mode); differentiable in θ and ξ.
    pub fn times_and_net(
        &self,
        schedule: &dyn NoiseSchedule,
        theta: &Tensor,
        xi: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let n = self.steps;
        if xi.dims() != [n + 1] {
            return Err(Error::Invalid(format!(
                "ξ must have N+1 = {} entries, got shape {:?}",
                n + 1,
                xi.dims()
            )));
        }
        let t = self.times(schedule, theta)?;
        let interior = interior_mask(n, t.device())?;
        let xi = xi.to_dtype(DType::F64)?;
        let t_net = match self.mode {
            TimeMode::Lambda => {
                let lambda = schedule.lambda_tensor(&t)?;
                let w = self.window_width(theta, &lambda)?;
                let shift = xi.clamp(-w, w)?.mul(&interior)?;
                let t_net = schedule.t_from_lambda_tensor(&lambda.add(&shift)?)?;
                exact_ends(&t_net, schedule.t_max(), schedule.t_min())?
            }
            TimeMode::Time => {
                let w = self.window_width(theta, &t)?;
                t.add(&xi.clamp(-w, w)?.mul(&interior)?)?
            }
        };
        Ok((t, t_net))
    }

    /// The window w (a number, no gradient).
    fn window_width(&self, theta: &Tensor, layout: &Tensor) -> Result<f64> {
        let values: Vec<f64> = match self.window {
            WindowRule::StepSize => layout.detach().to_dtype(DType::F64)?.to_vec1()?,
            WindowRule::RawLogits => theta.detach().to_dtype(DType::F64)?.to_vec1()?,
        };
        let smallest = values
            .windows(2)
            .map(|w| (w[1] - w[0]).abs())
            .fold(f64::INFINITY, f64::min);
        Ok(self.window_rate * smallest)
    }

    /// u_k = (C_k − C_0)/(C_N − C_0) with C = cumsum(softmax(θ)): 0 = u_0 < … < u_N = 1.
    fn unit_layout(&self, theta: &Tensor) -> Result<Tensor> {
        let n = self.steps;
        if theta.dims() != [n + 1] {
            return Err(Error::Invalid(format!(
                "θ must have N+1 = {} entries, got shape {:?}",
                n + 1,
                theta.dims()
            )));
        }
        let theta = theta.to_dtype(DType::F64)?;
        let p = candle_nn::ops::softmax(&theta, 0)?;
        let c = p.cumsum(0)?;
        let c0 = c.narrow(0, 0, 1)?;
        let span = c.narrow(0, n, 1)?.sub(&c0)?;
        Ok(c.broadcast_sub(&c0)?.broadcast_div(&span)?)
    }
}

/// `t` with its first and last entries replaced by the exact end points (they carry no gradient:
/// u_0 = 0 and u_N = 1 for every θ), removing round-off of the λ → t conversion.
fn exact_ends(t: &Tensor, t_max: f64, t_min: f64) -> Result<Tensor> {
    let n = t.dim(0)? - 1;
    let dev = t.device();
    Ok(Tensor::cat(
        &[
            Tensor::new(&[t_max], dev)?,
            t.narrow(0, 1, n - 1)?,
            Tensor::new(&[t_min], dev)?,
        ],
        0,
    )?)
}

fn reverse(x: &Tensor) -> Result<Tensor> {
    let n = x.dim(0)?;
    let idx: Vec<u32> = (0..n as u32).rev().collect();
    Ok(x.index_select(&Tensor::new(idx.as_slice(), x.device())?, 0)?)
}

/// [0, 1, …, 1, 0] of length N+1.
fn interior_mask(n: usize, device: &Device) -> Result<Tensor> {
    let m: Vec<f64> = (0..=n)
        .map(|k| if k == 0 || k == n { 0.0 } else { 1.0 })
        .collect();
    Ok(Tensor::from_vec(m, n + 1, device)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ld3_solvers::gradcheck::GradCheck;
    use ld3_solvers::noise::{BetaSchedule, Edm, VpDiscrete};
    use ld3_solvers::steps::{Karras, LogSnrUniform, StepSchedule, TimeUniform};

    fn sd() -> VpDiscrete {
        VpDiscrete::from_betas(BetaSchedule::ScaledLinear, 0.00085, 0.012, 1000).unwrap()
    }

    fn values(t: &Tensor) -> Vec<f64> {
        t.to_vec1().unwrap()
    }

    #[test]
    fn uniform_logits_give_logsnr_and_time_uniform() {
        let dev = Device::Cpu;
        let theta = Tensor::ones(7, DType::F64, &dev).unwrap();
        let edm = Edm::default();
        let d = Discretization::new(TimeMode::Lambda, 6).unwrap();
        let want = LogSnrUniform.times(&edm, 6).unwrap();
        for (a, b) in values(&d.times(&edm, &theta).unwrap()).iter().zip(&want) {
            assert!((a - b).abs() < 1e-9 * b.max(1.0), "{a} {b}");
        }
        let d = Discretization::new(TimeMode::Time, 6).unwrap();
        let want = TimeUniform.times(&sd(), 6).unwrap();
        for (a, b) in values(&d.times(&sd(), &theta).unwrap()).iter().zip(&want) {
            assert!((a - b).abs() < 1e-12, "{a} {b}");
        }
    }

    #[test]
    fn fit_reproduces_any_schedule_in_both_modes() {
        let dev = Device::Cpu;
        let (edm, vp) = (Edm::default(), sd());
        for mode in [TimeMode::Lambda, TimeMode::Time] {
            for s in [&edm as &dyn NoiseSchedule, &vp] {
                let d = Discretization::new(mode, 5).unwrap();
                let want = Karras::default().times(s, 5).unwrap();
                let theta = Tensor::new(d.fit(s, &want).unwrap().as_slice(), &dev).unwrap();
                let got = values(&d.times(s, &theta).unwrap());
                for (a, b) in got.iter().zip(&want) {
                    assert!((a - b).abs() < 1e-9 * b.max(1e-3), "{mode:?}: {a} vs {b}");
                }
                assert_eq!(got[0], s.t_max());
            }
        }
    }

    #[test]
    fn network_times_are_clamped_to_the_window_and_ends_stay_put() {
        let dev = Device::Cpu;
        let s = Edm::default();
        let d = Discretization::new(TimeMode::Lambda, 4).unwrap();
        let theta = Tensor::ones(5, DType::F64, &dev).unwrap();
        let xi = Tensor::new(&[5.0f64, 5.0, -5.0, 0.01, 5.0], &dev).unwrap();
        let (t, t_net) = d.times_and_net(&s, &theta, &xi).unwrap();
        let (t, t_net) = (values(&t), values(&t_net));
        let step = (s.lambda_max() - s.lambda_min()) / 4.0;
        assert_eq!((t_net[0], t_net[4]), (t[0], t[4]));
        assert!((s.lambda(t_net[1]) - s.lambda(t[1]) - 0.5 * step).abs() < 1e-9);
        assert!((s.lambda(t_net[2]) - s.lambda(t[2]) + 0.5 * step).abs() < 1e-9);
        assert!((s.lambda(t_net[3]) - s.lambda(t[3]) - 0.01).abs() < 1e-9);
        // The official rule: zero window at uniform logits.
        let official = Discretization {
            window: WindowRule::RawLogits,
            ..d
        };
        let (t, t_net) = official.times_and_net(&s, &theta, &xi).unwrap();
        assert_eq!(values(&t), values(&t_net));
    }

    #[test]
    fn differentiable_in_theta_and_xi() {
        let dev = Device::Cpu;
        for (mode, s) in [
            (TimeMode::Lambda, &Edm::default() as &dyn NoiseSchedule),
            (TimeMode::Time, &sd()),
        ] {
            let d = Discretization::new(mode, 4).unwrap();
            let theta = Tensor::new(&[0.3f64, 1.0, 0.2, -0.5, 0.7], &dev).unwrap();
            let xi = Tensor::new(&[0.0f64, 0.001, -0.002, 0.0015, 0.0], &dev).unwrap();
            let w = Tensor::new(&[0.3f64, -1.0, 2.0, 0.5, 1.5], &dev).unwrap();
            GradCheck {
                eps: 1e-5,
                max_coords: 24,
            }
            .run(&[theta, xi], |v| {
                let (t, t_net) = d.times_and_net(s, &v[0], &v[1])?;
                Ok(t.add(&t_net)?.log()?.mul(&w)?.sum_all()?)
            })
            .unwrap()
            .assert_within(1e-6);
        }
    }

    #[test]
    fn bad_shapes_are_errors() {
        let d = Discretization::new(TimeMode::Lambda, 4).unwrap();
        let theta = Tensor::ones(3, DType::F64, &Device::Cpu).unwrap();
        let e = d.times(&Edm::default(), &theta).unwrap_err();
        assert!(e.to_string().contains("N+1 = 5"), "{e}");
        assert!(Discretization::new(TimeMode::Time, 0).is_err());
    }
}
