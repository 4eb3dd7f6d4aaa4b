//! Checks shared by the layers' unit tests.

use candle_core::{DType, Module, Tensor, Var};

/// max |t| as f64.
pub fn max_abs(t: Tensor) -> f64 {
    t.abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_scalar()
        .unwrap()
}

/// The directional derivative of ⟨layer(x), w⟩ along `v` by central differences equals ⟨∂x, v⟩
/// from the backward, to `tol` relative (f64 inputs).
pub fn assert_directional_derivative(layer: &dyn Module, x: &Tensor, v: &Tensor, tol: f64) {
    let var = Var::from_tensor(x).unwrap();
    let y = layer.forward(var.as_tensor()).unwrap();
    let w = Tensor::randn(0f64, 1.0, y.dims(), x.device()).unwrap();
    let f = |x: &Tensor| -> f64 {
        (layer.forward(x).unwrap() * &w)
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar()
            .unwrap()
    };
    let g = (y * &w).unwrap().sum_all().unwrap().backward().unwrap();
    let analytic: f64 = (g.get(&var).unwrap() * v)
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar()
        .unwrap();
    let eps = 1e-6;
    let numeric = (f(&(x + (v * eps).unwrap()).unwrap()) - f(&(x - (v * eps).unwrap()).unwrap()))
        / (2.0 * eps);
    assert!(
        (analytic - numeric).abs() < tol * analytic.abs().max(1.0),
        "directional derivative: backward {analytic}, differences {numeric}"
    );
}

/// The gradients of ⟨y, w⟩.
pub fn backward_of_weighted_sum(y: Tensor, w: &Tensor) -> candle_core::backprop::GradStore {
    (y * w).unwrap().sum_all().unwrap().backward().unwrap()
}

/// Normal samples of `shape` with `mean` and `std`, in `dtype`, on the CPU.
pub fn randn(shape: &[usize], mean: f64, std: f64, dtype: DType) -> Tensor {
    Tensor::randn(mean, std, shape, &candle_core::Device::Cpu)
        .unwrap()
        .to_dtype(dtype)
        .unwrap()
}
