//! The exact denoiser of an isotropic Gaussian mixture: its probability-flow ODE is known to any
//! precision, which makes it the project's exact testbed.

use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use ld3_solvers::{Error, NoiseSchedule, NoiseScheduleConfig, Result};
use serde::{Deserialize, Serialize};

use crate::conditioning::{Conditioning, ConditioningKind};
use crate::denoiser::{Denoiser, Parameterization};

/// One component N(mean, std²·I) with mixture weight `weight`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GmmComponent {
    /// Mixture weight (weights are normalised to sum to 1).
    pub weight: f64,
    /// Mean, C·H·W values in row-major order.
    pub mean: Vec<f64>,
    /// Isotropic standard deviation.
    pub std: f64,
}

/// The JSON form: `{"shape": [C,H,W], "components": [...], "noise_schedule": {...}}`.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct GmmFile {
    shape: Vec<usize>,
    components: Vec<GmmComponent>,
    noise_schedule: NoiseScheduleConfig,
}

/// p(x_0) = Σ_k w_k·N(μ_k, s_k²·I) under a noise schedule. Its exact posterior mean is
/// E[x_0 | x_t] = Σ_k π_k(x_t)·(μ_k + α·s_k²/v_k·(x_t − α·μ_k)), v_k = α²·s_k² + σ²,
/// π_k ∝ w_k·N(x_t; α·μ_k, v_k·I) — differentiable in x_t and t.
#[derive(Clone, Debug)]
pub struct GaussianMixture {
    shape: Vec<usize>,
    components: Vec<GmmComponent>,
    schedule: Arc<dyn NoiseSchedule>,
    config: NoiseScheduleConfig,
    source: String,
    device: Device,
}

impl GaussianMixture {
    /// A checked mixture; weights are normalised.
    pub fn new(
        shape: Vec<usize>,
        mut components: Vec<GmmComponent>,
        noise_schedule: NoiseScheduleConfig,
    ) -> Result<Self> {
        let dim: usize = shape.iter().product();
        if shape.is_empty() || dim == 0 {
            return Err(Error::Invalid(format!(
                "GMM \"shape\" must be a non-empty list of positive sizes, got {shape:?}"
            )));
        }
        if components.is_empty() {
            return Err(Error::Invalid("a GMM needs at least one component".into()));
        }
        for (k, c) in components.iter().enumerate() {
            if c.mean.len() != dim {
                return Err(Error::Invalid(format!(
                    "GMM component {k}: mean has {} values but shape {shape:?} needs {dim}",
                    c.mean.len()
                )));
            }
            if !(c.weight > 0.0 && c.weight.is_finite()) {
                return Err(Error::Invalid(format!(
                    "GMM component {k}: weight must be positive and finite, got {}",
                    c.weight
                )));
            }
            if !(c.std > 0.0 && c.std.is_finite()) {
                return Err(Error::Invalid(format!(
                    "GMM component {k}: std must be positive and finite, got {}",
                    c.std
                )));
            }
            if c.mean.iter().any(|m| !m.is_finite()) {
                return Err(Error::Invalid(format!(
                    "GMM component {k}: mean holds a non-finite value"
                )));
            }
        }
        let total: f64 = components.iter().map(|c| c.weight).sum();
        for c in &mut components {
            c.weight /= total;
        }
        Ok(Self {
            schedule: noise_schedule.build()?,
            config: noise_schedule,
            shape,
            components,
            source: "inline".into(),
            device: Device::Cpu,
        })
    }

    /// The same mixture with its constants on `device` (a closed-form model is built on the
    /// host; it computes wherever its input is, and reports `device` as its own).
    pub fn on(mut self, device: &Device) -> Self {
        self.device = device.clone();
        self
    }

    /// Parses the JSON form.
    pub fn from_json(text: &str) -> Result<Self> {
        let f: GmmFile = serde_json::from_str(text).map_err(|source| Error::Json {
            what: "GMM JSON (expected {\"shape\", \"components\": [{\"weight\", \"mean\", \"std\"}], \"noise_schedule\"})".into(),
            cause: source,
        })?;
        Self::new(f.shape, f.components, f.noise_schedule)
    }

    /// Reads a GMM JSON file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.display().to_string(),
            cause: source,
        })?;
        Ok(Self::from_json(&text)
            .map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))?
            .with_source(path.display().to_string()))
    }

    /// The JSON form.
    pub fn to_json(&self) -> String {
        serde_json::to_string(&GmmFile {
            shape: self.shape.clone(),
            components: self.components.clone(),
            noise_schedule: self.config.clone(),
        })
        .expect("GMM serialises")
    }

    /// Names where the mixture came from (shown by [`Denoiser::describe`]).
    pub fn with_source(mut self, source: impl Into<String>) -> Self {
        self.source = source.into();
        self
    }

    /// The components (weights normalised).
    pub fn components(&self) -> &[GmmComponent] {
        &self.components
    }

    fn dim(&self) -> usize {
        self.shape.iter().product()
    }
}

impl Denoiser for GaussianMixture {
    fn describe(&self) -> String {
        format!(
            "Gaussian mixture ({} components, shape {:?}, from {})",
            self.components.len(),
            self.shape,
            self.source
        )
    }
    fn sample_shape(&self) -> &[usize] {
        &self.shape
    }
    fn noise_schedule(&self) -> &dyn NoiseSchedule {
        self.schedule.as_ref()
    }
    fn parameterization(&self) -> Parameterization {
        Parameterization::Sample
    }

    fn device(&self) -> &Device {
        &self.device
    }

    fn forward(&self, x: &Tensor, t_net: &Tensor, cond: &Conditioning) -> Result<Tensor> {
        cond.check_shape(&ConditioningKind::None, x.dim(0)?)?;
        let log_w = Tensor::from_vec(
            self.components.iter().map(|c| c.weight.ln()).collect(),
            (1, self.components.len()),
            x.device(),
        )?;
        posterior_mean(
            &self.shape,
            &self.components,
            self.schedule.as_ref(),
            x,
            t_net,
            &log_w,
        )
    }
}

/// The exact posterior mean E[x_0 | x_t] of components `comps` with log-weights `log_w` ([1, K]
/// or one row per sample [B, K]; −∞ leaves a component out).
pub(crate) fn posterior_mean(
    shape: &[usize],
    comps: &[GmmComponent],
    schedule: &dyn NoiseSchedule,
    x: &Tensor,
    t_net: &Tensor,
    log_w: &Tensor,
) -> Result<Tensor> {
    let (dim, k) = (shape.iter().product::<usize>(), comps.len());
    if x.rank() < 1 || x.dims()[1..] != shape[..] {
        return Err(Error::Invalid(format!(
            "input of shape {:?} does not match this GMM: expected [batch, {}]",
            x.dims(),
            shape
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    let (b, dt, dev) = (x.dim(0)?, x.dtype(), x.device());
    let n = match t_net.rank() {
        0 => 1,
        1 if t_net.dim(0)? == b => b,
        _ => {
            return Err(Error::Invalid(format!(
                "t_net must be a scalar or hold one time per sample ([{b}]), got {:?}",
                t_net.dims()
            )))
        }
    };
    let consts = |v: Vec<f64>, shape: &[usize]| -> Result<Tensor> {
        Ok(Tensor::from_vec(v, shape, dev)?.to_dtype(dt)?)
    };
    let means = consts(
        comps.iter().flat_map(|c| c.mean.iter().copied()).collect(),
        &[k, dim],
    )?;
    let s2 = consts(comps.iter().map(|c| c.std * c.std).collect(), &[1, k])?;
    let log_w = log_w.to_device(dev)?.to_dtype(dt)?;
    let alpha = schedule
        .alpha_tensor(t_net)?
        .to_dtype(dt)?
        .reshape((n, 1))?;
    let sigma = schedule
        .sigma_tensor(t_net)?
        .to_dtype(dt)?
        .reshape((n, 1))?;

    let xf = x.reshape((b, dim))?;
    // ‖x − α·μ_k‖² for every sample and component: [B, K].
    let centred = xf
        .unsqueeze(1)?
        .broadcast_sub(&means.unsqueeze(0)?.broadcast_mul(&alpha.unsqueeze(2)?)?)?;
    let dist2 = centred.sqr()?.sum(2)?;
    let var = s2
        .broadcast_mul(&alpha.sqr()?)?
        .broadcast_add(&sigma.sqr()?)?; // [n, K]
    let logits = log_w
        .broadcast_sub(&var.log()?.affine(0.5 * dim as f64, 0.0)?)?
        .broadcast_sub(&dist2.broadcast_div(&var.affine(2.0, 0.0)?)?)?;
    let resp = candle_nn::ops::softmax(&logits, 1)?; // π_k(x_t): [B, K]
                                                     // Σ_k π_k·(σ²/v_k)·μ_k + (Σ_k π_k·α·s_k²/v_k)·x_t.
    let w_mean = resp.broadcast_mul(&sigma.sqr()?.broadcast_div(&var)?)?;
    let w_x = resp
        .broadcast_mul(&s2.broadcast_mul(&alpha)?.broadcast_div(&var)?)?
        .sum_keepdim(1)?;
    let x0 = w_mean.matmul(&means)?.add(&xf.broadcast_mul(&w_x)?)?;
    Ok(x0.reshape(x.dims())?)
}

/// `f64`-exact data statistics for tests and tools.
impl GaussianMixture {
    /// Draws `count` samples of x_0 from the mixture with seed `seed` (sample b uses `seed + b`).
    pub fn sample_data(&self, seed: u64, count: usize, dtype: DType) -> Result<Tensor> {
        let dim = self.dim();
        let mut data = Vec::with_capacity(count * dim);
        for b in 0..count {
            let mut rng = ld3_solvers::rng::SplitMix64::new(seed.wrapping_add(b as u64));
            let u = rng.next_open01();
            let mut acc = 0.0;
            let comp = self
                .components
                .iter()
                .find(|c| {
                    acc += c.weight;
                    u <= acc
                })
                .unwrap_or_else(|| self.components.last().expect("at least one component"));
            data.extend(
                rng.normals(dim)
                    .into_iter()
                    .zip(&comp.mean)
                    .map(|(z, m)| m + comp.std * z),
            );
        }
        let mut dims = vec![count];
        dims.extend_from_slice(&self.shape);
        Ok(Tensor::from_vec(data, dims, &self.device)?.to_dtype(dtype)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use ld3_solvers::gradcheck::GradCheck;

    fn mixture(schedule: NoiseScheduleConfig) -> GaussianMixture {
        let comps = vec![
            GmmComponent {
                weight: 0.3,
                mean: vec![1.0, -0.5, 0.2, 0.8],
                std: 0.4,
            },
            GmmComponent {
                weight: 0.7,
                mean: vec![-0.6, 0.4, -1.0, 0.1],
                std: 0.25,
            },
        ];
        GaussianMixture::new(vec![1, 2, 2], comps, schedule).unwrap()
    }

    #[test]
    fn single_gaussian_posterior_mean_is_the_closed_form() {
        let comps = vec![GmmComponent {
            weight: 2.0,
            mean: vec![0.5, -1.0],
            std: 0.7,
        }];
        let g = GaussianMixture::new(
            vec![2],
            comps,
            NoiseScheduleConfig::Edm {
                sigma_min: 0.002,
                sigma_max: 80.0,
            },
        )
        .unwrap();
        let x = Tensor::new(&[[2.0f64, 3.0]], &Device::Cpu).unwrap();
        let out: Vec<f64> = g
            .forward(
                &x,
                &Tensor::new(1.5f64, &Device::Cpu).unwrap(),
                &Conditioning::None,
            )
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let k = 0.49 / (0.49 + 2.25);
        assert!((out[0] - (0.5 + k * 1.5)).abs() < 1e-14);
        assert!((out[1] - (-1.0 + k * 4.0)).abs() < 1e-14);
    }

    #[test]
    fn differentiable_in_x_and_t() {
        for sched in [
            NoiseScheduleConfig::Edm { sigma_min: 0.002, sigma_max: 80.0 },
            serde_json::from_str(r#"{"type":"vp-discrete","beta_schedule":"scaled_linear","beta_start":0.00085,"beta_end":0.012}"#).unwrap(),
        ] {
            let g = mixture(sched);
            let dev = Device::Cpu;
            let x = Tensor::new(&[[[[0.3f64, -0.2], [0.5, 0.9]]], [[[-0.4, 0.1], [0.0, 1.2]]]], &dev).unwrap();
            let t = Tensor::new(0.3737f64, &dev).unwrap(); // off the VP grid points (kinks)
            let w = Tensor::new(&[[[[0.7f64, -1.3], [0.2, 0.5]]], [[[1.0, 0.4], [-0.8, 0.3]]]], &dev).unwrap();
            GradCheck::default()
                .run(&[x, t], |v| Ok(g.forward(&v[0], &v[1], &Conditioning::None)?.mul(&w)?.sum_all()?))
                .unwrap()
                .assert_within(1e-6);
        }
    }

    #[test]
    fn bad_inputs_are_clear_errors() {
        let g = mixture(NoiseScheduleConfig::Edm {
            sigma_min: 0.002,
            sigma_max: 80.0,
        });
        let x = Tensor::zeros((2, 3), DType::F64, &Device::Cpu).unwrap();
        let e = g
            .forward(
                &x,
                &Tensor::new(1.0f64, &Device::Cpu).unwrap(),
                &Conditioning::None,
            )
            .unwrap_err();
        assert!(e.to_string().contains("expected [batch, 1, 2, 2]"), "{e}");
        let e = GaussianMixture::from_json(r#"{"shape":[2],"components":[{"weight":1,"mean":[1],"std":1}],"noise_schedule":{"type":"edm"}}"#).unwrap_err();
        assert!(e.to_string().contains("needs 2"), "{e}");
        let e = GaussianMixture::from_json(r#"{"shape":[1],"components":[{"weight":1,"mean":[1],"std":0}],"noise_schedule":{"type":"edm"}}"#).unwrap_err();
        assert!(e.to_string().contains("std must be positive"), "{e}");
        let e = GaussianMixture::from_json("{").unwrap_err();
        assert!(e.to_string().contains("GMM JSON"), "{e}");
    }

    #[test]
    fn json_round_trip_and_data_samples() {
        let g = mixture(NoiseScheduleConfig::VpCosine {});
        let back = GaussianMixture::from_json(&g.to_json()).unwrap();
        assert_eq!(back.components(), g.components());
        let d = g.sample_data(1, 4000, DType::F64).unwrap();
        let mean: Vec<f64> = d.mean(0).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        let want: Vec<f64> = (0..4)
            .map(|i| 0.3 * g.components()[0].mean[i] / 1.0 + 0.7 * g.components()[1].mean[i])
            .collect();
        for (a, b) in mean.iter().zip(&want) {
            assert!((a - b).abs() < 0.05, "{a} vs {b}");
        }
    }
}
