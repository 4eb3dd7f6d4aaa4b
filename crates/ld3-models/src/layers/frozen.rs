//! Convolutions and linear maps over frozen weights whose backward yields the input's gradient
//! only. candle's backward of `conv2d` and `matmul` computes and keeps a gradient for every
//! operand, the constant weights included (3.4 GB per step for Stable Diffusion's UNet, and a
//! third of the backward's work); LD3 never trains weights. Under a gradient, on the CPU, the
//! output is computed on the detached input and re-attached to the input through an op whose
//! backward is the transposed convolution (∂x = conv_transpose(∂y, W)) or ∂x = ∂y·W. Elsewhere
//! (nothing tracked, or another device) they are candle's modules unchanged.

use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Module, Result, Shape, Storage, Tensor};

/// Whether `x` takes the input-only path.
fn input_only(x: &Tensor, weight: &Tensor) -> bool {
    super::own_ops()
        && x.track_op()
        && !weight.track_op()
        && x.device().is_cpu()
        && matches!(x.dtype(), DType::F32 | DType::F64)
}

/// `out` (computed without a graph) as the value of an op on `x` whose backward is `grad_x`.
/// The op lets go of `out` once it has copied it, so the graph holds the output once.
struct Attach<F> {
    out: Mutex<Option<Tensor>>,
    grad_x: F,
    name: &'static str,
}

impl<F> Attach<F> {
    fn new(out: Tensor, grad_x: F, name: &'static str) -> Self {
        Self {
            out: Mutex::new(Some(out)),
            grad_x,
            name,
        }
    }
}

/// Takes the precomputed output out of `slot` as the op's own storage (candle's custom ops must
/// return storage they own: one copy).
pub(crate) fn take_output(
    slot: &Mutex<Option<Tensor>>,
    name: &'static str,
) -> Result<(CpuStorage, Shape)> {
    let out = slot
        .lock()
        .map_err(|_| candle_core::Error::Msg(format!("{name}: a poisoned lock")))?
        .take()
        .ok_or_else(|| candle_core::Error::Msg(format!("{name}: the output was taken twice")))?
        .contiguous()?;
    let (storage, layout) = out.storage_and_layout();
    let (start, end) = layout
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg("a non-contiguous output".into()))?;
    let data = match &*storage {
        Storage::Cpu(CpuStorage::F32(v)) => CpuStorage::F32(v[start..end].to_vec()),
        Storage::Cpu(CpuStorage::F64(v)) => CpuStorage::F64(v[start..end].to_vec()),
        _ => candle_core::bail!("{name}: only f32 and f64 on the CPU"),
    };
    Ok((data, layout.shape().clone()))
}

impl<F: Fn(&Tensor, &Tensor) -> Result<Tensor> + Send + Sync> CustomOp1 for Attach<F> {
    fn name(&self) -> &'static str {
        self.name
    }
    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        take_output(&self.out, self.name)
    }
    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        (self.grad_x)(arg, grad).map(Some)
    }
}

/// candle's `Conv2d` with the input-only backward.
#[derive(Clone, Debug)]
pub struct Conv2d(pub candle_nn::Conv2d);

impl Module for Conv2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let cfg = *self.0.config();
        if cfg.groups != 1 {
            return self.0.forward(x);
        }
        let y = conv2d(x, self.0.weight(), cfg.padding, cfg.stride, cfg.dilation)?;
        match self.0.bias() {
            Some(b) => y.broadcast_add(&b.reshape((1, (), 1, 1))?),
            None => Ok(y),
        }
    }
}

/// `x.conv2d(w, padding, stride, dilation, 1)` with the input-only backward when `x` is tracked
/// on the CPU and `w` is not.
pub fn conv2d(
    x: &Tensor,
    w: &Tensor,
    padding: usize,
    stride: usize,
    dilation: usize,
) -> Result<Tensor> {
    if !input_only(x, w) {
        return x.conv2d(w, padding, stride, dilation, 1);
    }
    let out = x.detach().conv2d(w, padding, stride, dilation, 1)?;
    let kernel = w.clone();
    let grad_x = move |arg: &Tensor, grad: &Tensor| {
        // The transposed convolution's output padding restores the rows and columns a strided
        // forward left over; it is one number for both sides, so take the larger and cut the
        // other side back (it only extends the bottom and right).
        let (k_h, k_w) = (kernel.dim(2)?, kernel.dim(3)?);
        let base = |g: usize, k: usize| (g - 1) * stride + dilation * (k - 1) + 1 - 2 * padding;
        let (h, w) = (arg.dim(2)?, arg.dim(3)?);
        let pad_h = h - base(grad.dim(2)?, k_h);
        let pad_w = w - base(grad.dim(3)?, k_w);
        grad.conv_transpose2d(&kernel, padding, pad_h.max(pad_w), stride, dilation)?
            .narrow(2, 0, h)?
            .narrow(3, 0, w)
    };
    x.apply_op1(Attach::new(out, grad_x, "conv2d-input-gradient"))
}

/// candle's `Linear` with the input-only backward.
#[derive(Clone, Debug)]
pub struct Linear(pub candle_nn::Linear);

impl Linear {
    /// `weight` [out, in] and an optional `bias` [out].
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self(candle_nn::Linear::new(weight, bias))
    }
    /// The weight [out, in].
    pub fn weight(&self) -> &Tensor {
        self.0.weight()
    }
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let w = self.0.weight();
        if !input_only(x, w) {
            return self.0.forward(x);
        }
        let out = self.0.forward(&x.detach())?;
        let weight = w.clone();
        let grad_x = move |_: &Tensor, grad: &Tensor| match grad.rank() {
            2 => grad.matmul(&weight),
            _ => grad.broadcast_matmul(&weight),
        };
        x.apply_op1(Attach::new(out, grad_x, "linear-input-gradient"))
    }
}

/// A linear map `NAME.weight` [out, in], `NAME.bias` [out].
pub fn linear(c_in: usize, c_out: usize, vb: candle_nn::VarBuilder) -> Result<Linear> {
    candle_nn::linear(c_in, c_out, vb).map(Linear)
}

/// A linear map without bias.
pub fn linear_no_bias(c_in: usize, c_out: usize, vb: candle_nn::VarBuilder) -> Result<Linear> {
    candle_nn::linear_no_bias(c_in, c_out, vb).map(Linear)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::testing::{
        assert_directional_derivative, backward_of_weighted_sum, max_abs,
    };
    use candle_core::{Device, Var};

    /// Values and input gradients equal candle's own modules', in f64 and f32, for strided and
    /// padded convolutions and for linear maps on 2- and 3-dimensional inputs.
    #[test]
    fn input_only_layers_equal_candles() {
        let dev = Device::Cpu;
        for dtype in [DType::F64, DType::F32] {
            let tol = if dtype == DType::F64 { 1e-12 } else { 1e-4 };
            let r = |shape: &[usize]| {
                Tensor::randn(0f64, 1.0, shape, &dev)
                    .unwrap()
                    .to_dtype(dtype)
                    .unwrap()
            };
            let check = |ours: &dyn Module, theirs: &dyn Module, x: Tensor| {
                let var = Var::from_tensor(&x).unwrap();
                let (a, b) = (
                    ours.forward(var.as_tensor()).unwrap(),
                    theirs.forward(var.as_tensor()).unwrap(),
                );
                let w = r(a.dims());
                assert!(max_abs((&a - &b).unwrap()) < tol);
                let (ga, gb) = (
                    backward_of_weighted_sum(a, &w),
                    backward_of_weighted_sum(b, &w),
                );
                let (ga, gb) = (ga.get(&var).unwrap(), gb.get(&var).unwrap());
                assert!(max_abs((ga - gb).unwrap()) < tol * 10.0);
            };
            for (stride, padding, k) in [(1, 1, 3), (2, 1, 3), (2, 0, 3), (1, 0, 1)] {
                let cfg = candle_nn::Conv2dConfig {
                    stride,
                    padding,
                    ..Default::default()
                };
                let conv = candle_nn::Conv2d::new(r(&[5, 3, k, k]), Some(r(&[5])), cfg);
                for (h, w) in [(9, 9), (8, 8)] {
                    check(&Conv2d(conv.clone()), &conv, r(&[2, 3, h, w]));
                }
                // Height and width of different parity (candle's own backward fails there):
                // the directional derivative along v equals ⟨∂x, v⟩.
                if dtype == DType::F64 {
                    let (x, v) = (r(&[2, 3, 9, 8]), r(&[2, 3, 9, 8]));
                    assert_directional_derivative(&Conv2d(conv.clone()), &x, &v, 1e-6);
                }
            }
            let lin = candle_nn::Linear::new(r(&[4, 6]), Some(r(&[4])));
            check(&Linear(lin.clone()), &lin, r(&[3, 6]));
            check(&Linear(lin.clone()), &lin, r(&[2, 3, 6]));
        }
    }
}
