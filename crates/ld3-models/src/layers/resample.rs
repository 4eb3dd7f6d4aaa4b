//! FIR resampling by 2 (EDM's and StyleGAN's): a separable filter f ⊗ f / (Σf)², applied per
//! channel. [1, 1] is 2×2 average pooling down and nearest-neighbour up; [1, 3, 3, 1] is NCSN++'s.
//! Both directions are differentiable in the input (candle's transposed convolution has no
//! groups, so the channels ride in the batch dimension).

use candle_core::{DType, Device, Result, Tensor};

/// The 2-D filter f ⊗ f / (Σf)² as [1, 1, k, k].
pub fn fir_filter(taps: &[f64], dtype: DType, device: &Device) -> Result<Tensor> {
    let sum: f64 = taps.iter().sum();
    let k = taps.len();
    let values: Vec<f64> = taps
        .iter()
        .flat_map(|a| taps.iter().map(move |b| a * b / (sum * sum)))
        .collect();
    Tensor::from_vec(values, (1, 1, k, k), device)?.to_dtype(dtype)
}

/// Downsampling by 2: each channel convolved with `filter` ([1, 1, k, k]) at stride 2, padded by
/// (k − 1)/2 (EDM's `Conv2d(..., down=True)` without weights).
pub fn fir_down2(x: &Tensor, filter: &Tensor) -> Result<Tensor> {
    fir_down2_padded(x, filter, (filter.dim(3)? - 1) / 2)
}

/// [`fir_down2`] with its padding given (EDM's fused resampling pads the convolution before it
/// instead, and filters with none).
pub(crate) fn fir_down2_padded(x: &Tensor, filter: &Tensor, padding: usize) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    let y = x
        .reshape((b * c, 1, h, w))?
        .conv2d(filter, padding, 2, 1, 1)?;
    let (_, _, h2, w2) = y.dims4()?;
    y.reshape((b, c, h2, w2))
}

/// Upsampling by 2: each channel through the transposed convolution with 4·`filter` at stride 2,
/// padded by (k − 1)/2 (EDM's `Conv2d(..., up=True)` without weights).
pub fn fir_up2(x: &Tensor, filter: &Tensor) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    let k = filter.dim(3)?;
    x.reshape((b * c, 1, h, w))?
        .conv_transpose2d(&(filter * 4.0)?, (k - 1) / 2, 0, 2, 1)?
        .reshape((b, c, 2 * h, 2 * w))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
    }

    /// Against EDM's own layers in float64 (fixtures/gen/edm_layers.py).
    #[test]
    fn matches_edms_resampling() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../fixtures/edm/layers.safetensors");
        let r = candle_core::safetensors::load(path, &Device::Cpu).unwrap();
        let x = &r["x"];
        for (name, taps) in [("f2", vec![1.0, 1.0]), ("f4", vec![1.0, 3.0, 3.0, 1.0])] {
            let f = fir_filter(&taps, DType::F64, &Device::Cpu).unwrap();
            let down = fir_down2(x, &f).unwrap();
            let up = fir_up2(x, &f).unwrap();
            assert!(
                max_diff(&down, &r[&format!("down_{name}")]) < 1e-12,
                "down {name}"
            );
            assert!(
                max_diff(&up, &r[&format!("up_{name}")]) < 1e-12,
                "up {name}"
            );
        }
    }

    /// The input gradient of both directions equals finite differences.
    #[test]
    fn input_gradients_are_right() {
        let dev = Device::Cpu;
        let x0 = Tensor::randn(0f64, 1.0, (1, 2, 8, 8), &dev).unwrap();
        let weights = Tensor::randn(0f64, 1.0, (1, 2, 16, 16), &dev).unwrap();
        let weights_down = Tensor::randn(0f64, 1.0, (1, 2, 4, 4), &dev).unwrap();
        let f = fir_filter(&[1.0, 3.0, 3.0, 1.0], DType::F64, &dev).unwrap();
        for up in [true, false] {
            let loss = |x: &Tensor| -> Tensor {
                let (y, w) = if up {
                    (fir_up2(x, &f).unwrap(), &weights)
                } else {
                    (fir_down2(x, &f).unwrap(), &weights_down)
                };
                (y * w).unwrap().sum_all().unwrap()
            };
            let var = candle_core::Var::from_tensor(&x0).unwrap();
            let grads = loss(var.as_tensor()).backward().unwrap();
            let g = grads.get(var.as_tensor()).unwrap().flatten_all().unwrap();
            let g: Vec<f64> = g.to_vec1().unwrap();
            let flat: Vec<f64> = x0.flatten_all().unwrap().to_vec1().unwrap();
            for i in [0, 17, 63, 100, 127] {
                let eps = 1e-6;
                let mut plus = flat.clone();
                plus[i] += eps;
                let mut minus = flat.clone();
                minus[i] -= eps;
                let at = |v: Vec<f64>| {
                    loss(&Tensor::from_vec(v, (1, 2, 8, 8), &dev).unwrap())
                        .to_scalar::<f64>()
                        .unwrap()
                };
                let fd = (at(plus) - at(minus)) / (2.0 * eps);
                assert!((fd - g[i]).abs() < 1e-7, "up={up} i={i}: {fd} vs {}", g[i]);
            }
        }
    }
}
