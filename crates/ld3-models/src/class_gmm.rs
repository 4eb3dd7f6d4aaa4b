//! A class-conditional Gaussian mixture: each class its own isotropic mixture, the unconditional
//! model the class-weighted mixture of all of them. Conditional, unconditional and guided
//! denoisers are all exact, so conditioning and classifier-free guidance have exact answers.

use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use ld3_solvers::{Error, NoiseSchedule, NoiseScheduleConfig, Result};
use serde::{Deserialize, Serialize};

use crate::conditioning::{Conditioning, ConditioningKind, UNCONDITIONAL_CLASS};
use crate::denoiser::{Denoiser, Parameterization};
use crate::gmm::{posterior_mean, GaussianMixture, GmmComponent};

/// One class: its prior weight and its own mixture.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GmmClass {
    /// p(class) (normalised over the classes).
    pub weight: f64,
    /// p(x_0 | class), a mixture (weights normalised within the class).
    pub components: Vec<GmmComponent>,
}

/// The JSON form: `{"shape", "classes": [{"weight", "components": [...]}], "noise_schedule"}`.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct ClassGmmFile {
    shape: Vec<usize>,
    classes: Vec<GmmClass>,
    noise_schedule: NoiseScheduleConfig,
}

/// p(x_0 | c) = Σ_k w_{k|c}·N(μ_k, s_k²·I); p(x_0) = Σ_c π_c·p(x_0 | c). Its denoiser is the
/// exact posterior mean E[x_0 | x_t, c] for a label c, and E[x_0 | x_t] for
/// [`UNCONDITIONAL_CLASS`] — differentiable in x_t and t, labels read on the device.
#[derive(Clone, Debug)]
pub struct ClassConditionalMixture {
    shape: Vec<usize>,
    classes: Vec<GmmClass>,
    /// All components, class after class.
    flat: Vec<GmmComponent>,
    /// The class of each flat component.
    class_of: Vec<u32>,
    schedule: Arc<dyn NoiseSchedule>,
    config: NoiseScheduleConfig,
    source: String,
    device: Device,
}

impl ClassConditionalMixture {
    /// A checked model; class weights and each class's component weights are normalised.
    pub fn new(
        shape: Vec<usize>,
        mut classes: Vec<GmmClass>,
        noise_schedule: NoiseScheduleConfig,
    ) -> Result<Self> {
        if classes.is_empty() {
            return Err(Error::Invalid(
                "a class-conditional GMM needs at least one class".into(),
            ));
        }
        if !classes
            .iter()
            .all(|c| c.weight > 0.0 && c.weight.is_finite())
        {
            return Err(Error::Invalid(
                "class-conditional GMM: every class weight must be positive and finite".into(),
            ));
        }
        let total: f64 = classes.iter().map(|c| c.weight).sum();
        for (i, class) in classes.iter_mut().enumerate() {
            class.weight /= total;
            // The per-class checks (and weight normalisation) of a plain mixture.
            let m = GaussianMixture::new(
                shape.clone(),
                class.components.clone(),
                noise_schedule.clone(),
            )
            .map_err(|e| Error::Invalid(format!("class {i}: {e}")))?;
            class.components = m.components().to_vec();
        }
        let flat = classes
            .iter()
            .flat_map(|c| c.components.iter().cloned())
            .collect();
        let class_of = classes
            .iter()
            .enumerate()
            .flat_map(|(i, c)| std::iter::repeat_n(i as u32, c.components.len()))
            .collect();
        Ok(Self {
            schedule: noise_schedule.build()?,
            config: noise_schedule,
            shape,
            classes,
            flat,
            class_of,
            source: "inline".into(),
            device: Device::Cpu,
        })
    }

    /// Parses the JSON form.
    pub fn from_json(text: &str) -> Result<Self> {
        let f: ClassGmmFile = serde_json::from_str(text).map_err(|source| Error::Json {
            what: "class-conditional GMM JSON (expected {\"shape\", \"classes\": [{\"weight\", \
                   \"components\": [{\"weight\", \"mean\", \"std\"}]}], \"noise_schedule\"})"
                .into(),
            cause: source,
        })?;
        Self::new(f.shape, f.classes, f.noise_schedule)
    }

    /// Reads a class-conditional GMM JSON file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.display().to_string(),
            cause: source,
        })?;
        Ok(Self::from_json(&text)
            .map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))?
            .with_source(path.display().to_string()))
    }

    /// Names where the model came from.
    pub fn with_source(mut self, source: impl Into<String>) -> Self {
        self.source = source.into();
        self
    }

    /// The same model reporting `device` as its own (see [`GaussianMixture::on`]).
    pub fn on(mut self, device: &Device) -> Self {
        self.device = device.clone();
        self
    }

    /// The classes (weights normalised).
    pub fn classes(&self) -> &[GmmClass] {
        &self.classes
    }

    /// The unconditional model: the class-weighted mixture of every component.
    pub fn marginal(&self) -> Result<GaussianMixture> {
        let comps = self
            .classes
            .iter()
            .flat_map(|c| {
                c.components.iter().map(|k| GmmComponent {
                    weight: c.weight * k.weight,
                    ..k.clone()
                })
            })
            .collect();
        Ok(GaussianMixture::new(self.shape.clone(), comps, self.config.clone())?.on(&self.device))
    }

    /// Whether a JSON document describes a class-conditional mixture (it has `classes`).
    pub fn is_class_json(text: &str) -> bool {
        serde_json::from_str::<serde_json::Value>(text).is_ok_and(|v| v.get("classes").is_some())
    }
}

impl Denoiser for ClassConditionalMixture {
    fn describe(&self) -> String {
        format!(
            "class-conditional Gaussian mixture ({} classes, {} components, shape {:?}, from {})",
            self.classes.len(),
            self.flat.len(),
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
    fn conditioning(&self) -> ConditioningKind {
        ConditioningKind::Class {
            classes: self.classes.len(),
        }
    }

    fn forward(&self, x: &Tensor, t_net: &Tensor, cond: &Conditioning) -> Result<Tensor> {
        let b = x.dim(0)?;
        cond.check_shape(&self.conditioning(), b)?;
        let Conditioning::Class(labels) = cond else {
            unreachable!("check_shape accepts class labels only")
        };
        let (dev, k) = (x.device(), self.flat.len());
        // log w_k per sample: log w_{k|c} on the label's own components (−∞ elsewhere), or
        // log π_c + log w_{k|c} on every component for an unconditional sample.
        let row = |v: Vec<f64>| -> Result<Tensor> {
            Ok(Tensor::from_vec(v, (1, k), dev)?.broadcast_as((b, k))?)
        };
        let log_cond = row(self.flat.iter().map(|c| c.weight.ln()).collect())?;
        let log_joint = row(self
            .flat
            .iter()
            .zip(&self.class_of)
            .map(|(c, &i)| (self.classes[i as usize].weight * c.weight).ln())
            .collect())?;
        let excluded = row(vec![f64::NEG_INFINITY; k])?;
        let labels = labels.to_device(dev)?.reshape((b, 1))?;
        let class_of = Tensor::new(self.class_of.as_slice(), dev)?.reshape((1, k))?;
        let member = labels.broadcast_eq(&class_of)?;
        let null = labels
            .broadcast_eq(&Tensor::new(&[[UNCONDITIONAL_CLASS]], dev)?)?
            .broadcast_as((b, k))?
            .contiguous()?;
        let log_w = null.where_cond(&log_joint, &member.where_cond(&log_cond, &excluded)?)?;
        posterior_mean(
            &self.shape,
            &self.flat,
            self.schedule.as_ref(),
            x,
            t_net,
            &log_w.to_dtype(DType::F64)?,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ld3_solvers::gradcheck::{max_abs_diff, GradCheck};

    fn model() -> ClassConditionalMixture {
        let comp = |w: f64, m: [f64; 2], s: f64| GmmComponent {
            weight: w,
            mean: m.to_vec(),
            std: s,
        };
        ClassConditionalMixture::new(
            vec![2],
            vec![
                GmmClass {
                    weight: 1.0,
                    components: vec![comp(1.0, [1.0, 0.5], 0.3), comp(2.0, [0.2, 1.0], 0.5)],
                },
                GmmClass {
                    weight: 3.0,
                    components: vec![comp(1.0, [-1.0, -0.2], 0.4)],
                },
            ],
            NoiseScheduleConfig::Edm {
                sigma_min: 0.002,
                sigma_max: 80.0,
            },
        )
        .unwrap()
    }

    #[test]
    fn a_label_is_its_class_mixture_and_no_label_the_marginal() {
        let m = model();
        let dev = Device::Cpu;
        let x = Tensor::new(&[[0.3f64, -0.4], [1.2, 0.1], [-0.5, 0.9]], &dev).unwrap();
        let t = Tensor::new(0.8f64, &dev).unwrap();
        let labels = Conditioning::classes(&[0, 1, UNCONDITIONAL_CLASS], &dev).unwrap();
        let got = m.forward(&x, &t, &labels).unwrap();
        for (row, want_model) in [
            (
                0,
                GaussianMixture::new(vec![2], m.classes()[0].components.clone(), m.config.clone())
                    .unwrap(),
            ),
            (
                1,
                GaussianMixture::new(vec![2], m.classes()[1].components.clone(), m.config.clone())
                    .unwrap(),
            ),
            (2, m.marginal().unwrap()),
        ] {
            let xi = x.narrow(0, row, 1).unwrap();
            let want = want_model.forward(&xi, &t, &Conditioning::None).unwrap();
            let diff = max_abs_diff(&got.narrow(0, row, 1).unwrap(), &want).unwrap();
            assert!(diff < 1e-13, "row {row}: {diff}");
        }
    }

    #[test]
    fn differentiable_in_x_and_t_and_labels_checked() {
        let m = model();
        let dev = Device::Cpu;
        let labels = Conditioning::classes(&[1, 0], &dev).unwrap();
        let x = Tensor::new(&[[0.3f64, -0.4], [1.2, 0.1]], &dev).unwrap();
        let t = Tensor::new(0.7f64, &dev).unwrap();
        let w = Tensor::new(&[[0.7f64, -1.3], [0.2, 0.5]], &dev).unwrap();
        GradCheck::default()
            .run(&[x.clone(), t.clone()], |v| {
                Ok(m.forward(&v[0], &v[1], &labels)?.mul(&w)?.sum_all()?)
            })
            .unwrap()
            .assert_within(1e-6);
        let e = m.forward(&x, &t, &Conditioning::None).unwrap_err();
        assert!(e.to_string().contains("needs class labels"), "{e}");
        let bad = Conditioning::classes(&[2, 0], &dev).unwrap();
        let e = bad.check_for(&m.conditioning(), 2).unwrap_err();
        assert!(
            e.to_string().contains("class label 2 is out of range"),
            "{e}"
        );
        let json = r#"{"shape":[1],"classes":[{"weight":1,"components":[{"weight":1,"mean":[1,2],"std":1}]}],"noise_schedule":{"type":"edm"}}"#;
        let e = ClassConditionalMixture::from_json(json).unwrap_err();
        assert!(e.to_string().contains("class 0"), "{e}");
    }
}
