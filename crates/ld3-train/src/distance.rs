//! Distances between student and teacher outputs, per sample.

use candle_core::Tensor;
use ld3_solvers::{Error, Result};

/// A per-sample distance d(a, b) for batches [B, ...]; returns [B]. Must be differentiable in `a`.
pub trait Distance: Send + Sync {
    /// Name for logs and schedule files (`l2`, `l1`, `lpips-vgg`, `lpips-alex`).
    fn name(&self) -> &'static str;
    /// d(a_b, b_b) for every sample b.
    fn per_sample(&self, a: &Tensor, b: &Tensor) -> Result<Tensor>;
}

fn check(a: &Tensor, b: &Tensor) -> Result<()> {
    if a.dims() != b.dims() || a.rank() < 1 {
        return Err(Error::Invalid(format!(
            "distance between tensors of shapes {:?} and {:?}: they must match as [B, ...]",
            a.dims(),
            b.dims()
        )));
    }
    Ok(())
}

/// Mean squared difference per sample, Σ(a − b)²/(C·H·W), as the LD3 code's L2.
#[derive(Clone, Copy, Debug, Default)]
pub struct L2;

impl Distance for L2 {
    fn name(&self) -> &'static str {
        "l2"
    }
    fn per_sample(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        check(a, b)?;
        Ok(a.sub(b)?.sqr()?.flatten_from(1)?.mean(1)?)
    }
}

/// Mean absolute difference per sample, Σ|a − b|/(C·H·W).
#[derive(Clone, Copy, Debug, Default)]
pub struct L1;

impl Distance for L1 {
    fn name(&self) -> &'static str {
        "l1"
    }
    fn per_sample(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        check(a, b)?;
        Ok(a.sub(b)?.abs()?.flatten_from(1)?.mean(1)?)
    }
}

/// Root mean squared difference per sample, √(Σ(a − b)²/(C·H·W) + ε) with ε = 1e-20 (a
/// finite gradient where a = b): the L2 distance itself rather than its square, so the mean over
/// a batch weighs a sample by its distance, not by the distance squared.
#[derive(Clone, Copy, Debug, Default)]
pub struct Rms;

/// Keeps the square root's gradient finite at a zero distance; it moves a distance of 1e-6 by
/// 5e-9 of itself (√(d² + ε) ≈ d·(1 + ε/2d²)) and larger ones by less.
const RMS_EPSILON: f64 = 1e-20;

impl Distance for Rms {
    fn name(&self) -> &'static str {
        "rms"
    }
    fn per_sample(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        Ok(L2.per_sample(a, b)?.affine(1.0, RMS_EPSILON)?.sqrt()?)
    }
}

/// LPIPS per sample (the LD3 paper's loss), on images in [−1, 1].
pub struct LpipsDistance(pub ld3_metrics::Lpips);

impl Distance for LpipsDistance {
    fn name(&self) -> &'static str {
        match self.0.net() {
            ld3_metrics::LpipsNet::Vgg16 => "lpips-vgg",
            ld3_metrics::LpipsNet::Alex => "lpips-alex",
        }
    }
    fn per_sample(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        check(a, b)?;
        self.0.per_sample(a, b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn per_sample_means() {
        let a = Tensor::new(&[[1.0f64, 2.0], [0.0, 0.0]], &Device::Cpu).unwrap();
        let b = Tensor::new(&[[0.0f64, 0.0], [1.0, -3.0]], &Device::Cpu).unwrap();
        assert_eq!(
            L2.per_sample(&a, &b).unwrap().to_vec1::<f64>().unwrap(),
            vec![2.5, 5.0]
        );
        assert_eq!(
            L1.per_sample(&a, &b).unwrap().to_vec1::<f64>().unwrap(),
            vec![1.5, 2.0]
        );
        let rms = Rms.per_sample(&a, &b).unwrap().to_vec1::<f64>().unwrap();
        assert!((rms[0] - 2.5f64.sqrt()).abs() < 1e-12 && (rms[1] - 5f64.sqrt()).abs() < 1e-12);
        let c = Tensor::new(&[1.0f64], &Device::Cpu).unwrap();
        assert!(Rms.per_sample(&a, &c).is_err());
        assert!(L2
            .per_sample(&a, &c)
            .unwrap_err()
            .to_string()
            .contains("must match"));
    }

    #[test]
    fn losses_parse_from_their_names() {
        use crate::Loss;
        for l in Loss::ALL {
            assert_eq!(l.name().parse::<Loss>().unwrap(), l);
            assert_eq!(l.to_string(), format!("{} ({})", l.name(), l.description()));
            assert!(!l.description().is_empty());
        }
        assert_eq!(Rms.name(), Loss::Rms.name());
        let err = "l3".parse::<Loss>().unwrap_err().to_string();
        assert!(
            err.contains("unknown loss 'l3'") && err.contains("rms"),
            "{err}"
        );
    }

    #[test]
    fn rms_gradient_is_the_unit_direction_and_finite_at_zero() {
        let b = Tensor::new(&[[0.5f64, -1.0, 2.0]], &Device::Cpu).unwrap();
        let gradient = |a: [f64; 3]| -> Vec<f64> {
            let a = candle_core::Var::new(&[a], &Device::Cpu).unwrap();
            let d = Rms
                .per_sample(a.as_tensor(), &b)
                .unwrap()
                .sum_all()
                .unwrap();
            let g = d.backward().unwrap();
            g.get(a.as_tensor())
                .unwrap()
                .to_vec2::<f64>()
                .unwrap()
                .remove(0)
        };
        // ∂/∂a √(Σ(a − b)²/n) = (a − b)/(n·rms), rms = √(5/3).
        let rms = (5.0f64 / 3.0).sqrt();
        for (gi, di) in gradient([1.5, 1.0, 2.0]).iter().zip([1.0, 2.0, 0.0]) {
            assert!((gi - di / (3.0 * rms)).abs() < 1e-12, "{gi}");
        }
        let same = Rms.per_sample(&b, &b).unwrap();
        assert!(same.to_vec1::<f64>().unwrap()[0] < 1e-9);
        let at_zero = gradient([0.5, -1.0, 2.0]);
        assert!(at_zero.iter().all(|v| v.is_finite()), "{at_zero:?}");
    }
}
