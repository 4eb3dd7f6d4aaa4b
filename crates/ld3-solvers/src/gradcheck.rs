//! A reusable finite-difference gradient checker for candle code (use `f64` inputs): central
//! differences with Richardson extrapolation against candle's backprop.
//!
//! ```
//! use candle_core::{Device, Tensor};
//! use ld3_solvers::gradcheck::GradCheck;
//! let x = Tensor::new(&[0.3f64, -1.2, 2.0], &Device::Cpu).unwrap();
//! let report = GradCheck::default()
//!     .run(&[x], |v| Ok(v[0].sqr()?.sin()?.sum_all()?))
//!     .unwrap();
//! report.assert_within(1e-6);
//! ```

use candle_core::{DType, Tensor, Var};

use crate::error::{invalid, Result};

/// max |a − b| over all elements (in f64), for comparisons in tests and examples.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> Result<f64> {
    let a = a.to_dtype(DType::F64)?;
    let b = b.to_dtype(DType::F64)?;
    Ok((a - b)?.abs()?.max_all()?.to_scalar::<f64>()?)
}

/// Central differences against candle's backprop.
#[derive(Clone, Debug)]
pub struct GradCheck {
    /// Step relative to the coordinate: x_i ± eps·|x_i| (± eps where x_i = 0).
    pub eps: f64,
    /// Coordinates checked per input (evenly spread; all when the input is smaller).
    pub max_coords: usize,
}

impl Default for GradCheck {
    fn default() -> Self {
        Self {
            eps: 1e-6,
            max_coords: 24,
        }
    }
}

/// One checked coordinate.
#[derive(Clone, Debug)]
pub struct Coord {
    /// Which input.
    pub input: usize,
    /// Flat index inside it.
    pub index: usize,
    /// The gradient from backprop.
    pub analytic: f64,
    /// The central difference.
    pub numeric: f64,
}

/// What a check found.
#[derive(Clone, Debug)]
pub struct GradReport {
    /// Every checked coordinate.
    pub coords: Vec<Coord>,
}

impl GradReport {
    /// Worst relative error |analytic − numeric| / max(|numeric|, |analytic|, 1e-2·largest
    /// |numeric| of that input, 1e-12), and where.
    pub fn worst(&self) -> (f64, Option<&Coord>) {
        let mut worst = (0.0, None);
        for c in &self.coords {
            let scale = self
                .coords
                .iter()
                .filter(|o| o.input == c.input)
                .map(|o| o.numeric.abs())
                .fold(0.0, f64::max);
            let denom = c
                .numeric
                .abs()
                .max(c.analytic.abs())
                .max(1e-2 * scale)
                .max(1e-12);
            let err = (c.analytic - c.numeric).abs() / denom;
            if err > worst.0 || err.is_nan() {
                worst = (err, Some(c));
            }
        }
        worst
    }

    /// Panics with the worst coordinate if the worst relative error exceeds `tol`.
    pub fn assert_within(&self, tol: f64) {
        let (err, coord) = self.worst();
        assert!(
            err <= tol,
            "gradient check failed: relative error {err:e} > {tol:e} at {coord:?}"
        );
    }
}

impl GradCheck {
    /// Checks d f(inputs)/d inputs. `f` must return a single-element tensor and may be called
    /// with `Var`s (for backprop) or plain tensors (for the differences).
    pub fn run(
        &self,
        inputs: &[Tensor],
        f: impl Fn(&[Tensor]) -> Result<Tensor>,
    ) -> Result<GradReport> {
        let inputs: Vec<Tensor> = inputs
            .iter()
            .map(|x| x.to_dtype(DType::F64))
            .collect::<candle_core::Result<_>>()?;
        let vars: Vec<Var> = inputs
            .iter()
            .map(Var::from_tensor)
            .collect::<candle_core::Result<_>>()?;
        let as_tensors: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        let loss = f(&as_tensors)?;
        if loss.elem_count() != 1 {
            return invalid(format!(
                "gradcheck needs a scalar loss, got shape {:?}",
                loss.dims()
            ));
        }
        let grads = loss.sum_all()?.backward()?;
        let value = |xs: &[Tensor]| -> Result<f64> {
            Ok(f(xs)?.to_dtype(DType::F64)?.sum_all()?.to_scalar::<f64>()?)
        };
        let mut coords = Vec::new();
        for (k, x) in inputs.iter().enumerate() {
            let analytic: Vec<f64> = match grads.get(vars[k].as_tensor()) {
                Some(g) => g.flatten_all()?.to_vec1()?,
                None => vec![0.0; x.elem_count()],
            };
            let base: Vec<f64> = x.flatten_all()?.to_vec1()?;
            let n = base.len();
            let picks: Vec<usize> = if n <= self.max_coords {
                (0..n).collect()
            } else {
                (0..self.max_coords)
                    .map(|j| j * (n - 1) / (self.max_coords - 1))
                    .collect()
            };
            for index in picks {
                let h = if base[index] == 0.0 {
                    self.eps
                } else {
                    self.eps * base[index].abs()
                };
                let shifted = |delta: f64| -> Result<Vec<Tensor>> {
                    let mut v = base.clone();
                    v[index] += delta;
                    let mut xs = inputs.clone();
                    xs[k] = Tensor::from_vec(v, x.shape(), x.device())?;
                    Ok(xs)
                };
                // Richardson-extrapolated central differences: error O(h⁴) instead of O(h²).
                let central = |h: f64| -> Result<f64> {
                    Ok((value(&shifted(h)?)? - value(&shifted(-h)?)?) / (2.0 * h))
                };
                let numeric = (4.0 * central(0.5 * h)? - central(h)?) / 3.0;
                coords.push(Coord {
                    input: k,
                    index,
                    analytic: analytic[index],
                    numeric,
                });
            }
        }
        Ok(GradReport { coords })
    }
}
