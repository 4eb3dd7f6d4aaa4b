//! Activation functions by the names configs give them, and SiLU and ReLU with one-pass backwards.

use super::parallel::for_each_chunk;
use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor};

/// x·σ(x). With the own ops on, for a tracked f32/f64 tensor on the CPU, one op whose backward is
/// a single pass, ∂x = ∂y·σ(x)·(1 + x·(1 − σ(x))); candle's own backward of `silu` builds that
/// from eight whole-tensor ops, each a new allocation, and SiLU follows every norm of every
/// ResNet block. Otherwise candle's `silu`.
pub fn silu(x: &Tensor) -> Result<Tensor> {
    if with_backward(x) {
        x.contiguous()?.apply_op1(PointwiseOp(Kind::Silu))
    } else {
        x.silu()
    }
}

/// max(x, 0), likewise: the backward is one pass, ∂x = ∂y where x > 0 (PyTorch's convention;
/// candle's takes five whole-tensor ops and passes the gradient at 0 too). It follows every
/// convolution of LPIPS' backbones.
pub fn relu(x: &Tensor) -> Result<Tensor> {
    if with_backward(x) {
        x.contiguous()?.apply_op1(PointwiseOp(Kind::Relu))
    } else {
        x.relu()
    }
}

fn with_backward(x: &Tensor) -> bool {
    super::own_ops()
        && x.track_op()
        && x.device().is_cpu()
        && matches!(x.dtype(), DType::F32 | DType::F64)
}

/// Elements per parallel chunk of the pointwise loops.
const CHUNK: usize = 1 << 14;

#[derive(Clone, Copy, Debug)]
enum Kind {
    Silu,
    Relu,
}

macro_rules! pointwise_loops {
    ($t:ty, $forward:ident, $backward:ident) => {
        fn $forward(kind: Kind, x: &[$t]) -> Vec<$t> {
            let mut y = vec![0.0; x.len()];
            for_each_chunk(&mut y, CHUNK, |(n, y)| {
                let x = &x[n * CHUNK..];
                match kind {
                    Kind::Silu => {
                        for (y, &x) in y.iter_mut().zip(x) {
                            *y = x / (1.0 + (-x).exp());
                        }
                    }
                    Kind::Relu => {
                        for (y, &x) in y.iter_mut().zip(x) {
                            *y = x.max(0.0);
                        }
                    }
                }
            });
            y
        }
        fn $backward(kind: Kind, x: &[$t], g: &[$t]) -> Vec<$t> {
            let mut dx = vec![0.0; x.len()];
            for_each_chunk(&mut dx, CHUNK, |(n, dx)| {
                let (x, g) = (&x[n * CHUNK..], &g[n * CHUNK..]);
                match kind {
                    Kind::Silu => {
                        for ((dx, &x), &g) in dx.iter_mut().zip(x).zip(g) {
                            let s = 1.0 / (1.0 + (-x).exp());
                            *dx = g * s * (1.0 + x * (1.0 - s));
                        }
                    }
                    Kind::Relu => {
                        for ((dx, &x), &g) in dx.iter_mut().zip(x).zip(g) {
                            *dx = if x > 0.0 { g } else { 0.0 };
                        }
                    }
                }
            });
            dx
        }
    };
}
pointwise_loops!(f32, forward_f32, backward_f32);
pointwise_loops!(f64, forward_f64, backward_f64);

/// SiLU or ReLU with its one-pass backward.
struct PointwiseOp(Kind);

impl CustomOp1 for PointwiseOp {
    fn name(&self) -> &'static str {
        match self.0 {
            Kind::Silu => "silu-with-backward",
            Kind::Relu => "relu-with-backward",
        }
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let y = super::cpu_forward(
            s,
            l,
            self.name(),
            |x| Ok(forward_f32(self.0, x)),
            |x| Ok(forward_f64(self.0, x)),
        )?;
        Ok((y, l.shape().clone()))
    }
    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        super::cpu_input_gradient(
            arg,
            grad,
            self.name(),
            |x, g, _| backward_f32(self.0, x, g),
            |x, g, _| backward_f64(self.0, x, g),
        )
        .map(Some)
    }
}

/// An activation as a config names it (`hidden_act`, `act_fn`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// x·σ(1.702x) (`quick_gelu`, OpenAI's CLIP).
    QuickGelu,
    /// x·Φ(x) with the exact normal CDF (`gelu`).
    Gelu,
    /// The tanh approximation of GELU (`gelu_new`, `gelu_pytorch_tanh`).
    GeluTanh,
    /// x·σ(x) (`silu`, `swish`).
    Silu,
}

impl Activation {
    /// The activation a config calls `name`.
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "quick_gelu" => Self::QuickGelu,
            "gelu" => Self::Gelu,
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Self::GeluTanh,
            "silu" | "swish" => Self::Silu,
            _ => return None,
        })
    }

    /// Applied elementwise.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::QuickGelu => x * candle_nn::ops::sigmoid(&(x * 1.702)?)?,
            Self::Gelu => x.gelu_erf(),
            Self::GeluTanh => x.gelu(),
            Self::Silu => silu(x),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::testing::{
        assert_directional_derivative, backward_of_weighted_sum, max_abs,
    };
    use candle_core::{Device, Module, Var};

    struct Silu;
    impl Module for Silu {
        fn forward(&self, x: &Tensor) -> Result<Tensor> {
            silu(x)
        }
    }
    struct Relu;
    impl Module for Relu {
        fn forward(&self, x: &Tensor) -> Result<Tensor> {
            relu(x)
        }
    }

    /// Values and gradients equal candle's `silu` and `relu` (f64 and f32, a non-contiguous
    /// input), and the gradients equal finite differences.
    #[test]
    fn pointwise_with_backward_equals_candles() {
        let dev = Device::Cpu;
        for (ours, theirs) in [
            (
                &silu as &dyn Fn(&Tensor) -> Result<Tensor>,
                &Tensor::silu as &dyn Fn(&Tensor) -> Result<Tensor>,
            ),
            (&relu, &Tensor::relu),
        ] {
            for (dtype, tol) in [(DType::F64, 1e-13), (DType::F32, 1e-6)] {
                let x = (Tensor::randn(0f64, 3.0, (3, 40_000), &dev).unwrap())
                    .to_dtype(dtype)
                    .unwrap();
                let x = x.t().unwrap(); // non-contiguous
                let var = Var::from_tensor(&x).unwrap();
                let (ours, theirs) = (
                    ours(var.as_tensor()).unwrap(),
                    theirs(var.as_tensor()).unwrap(),
                );
                assert!(max_abs((&ours - &theirs).unwrap()) < tol);
                let w = Tensor::randn(0f64, 1.0, ours.dims(), &dev)
                    .unwrap()
                    .to_dtype(dtype)
                    .unwrap();
                let (ga, gb) = (
                    backward_of_weighted_sum(ours, &w),
                    backward_of_weighted_sum(theirs, &w),
                );
                let (ga, gb) = (ga.get(&var).unwrap(), gb.get(&var).unwrap());
                assert!(max_abs((ga - gb).unwrap()) < tol * 10.0);
            }
        }
        let x = Tensor::randn(0f64, 3.0, (2, 50), &dev).unwrap();
        let v = Tensor::randn(0f64, 1.0, (2, 50), &dev).unwrap();
        assert_directional_derivative(&Silu, &x, &v, 1e-7);
        assert_directional_derivative(&Relu, &x, &v, 1e-7);
    }
}
