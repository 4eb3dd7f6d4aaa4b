//! Activation functions by the names configs give them, and SiLU and ReLU with one-pass backwards.

use super::parallel::{for_each_chunk, vectorized};
use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor};

/// x·σ(x). With the own ops on, for an f32/f64 tensor on the CPU, one op with a vectorised `exp`
/// whose backward is a single pass, ∂x = ∂y·σ(x)·(1 + x·(1 − σ(x))); candle's own backward of
/// `silu` builds that from eight whole-tensor ops, each a new allocation, and SiLU follows every
/// norm of every ResNet block. Otherwise candle's `silu`.
pub fn silu(x: &Tensor) -> Result<Tensor> {
    if own_cpu(x) {
        x.contiguous()?.apply_op1(PointwiseOp(Kind::Silu))
    } else {
        x.silu()
    }
}

/// max(x, 0), likewise: the backward is one pass, ∂x = ∂y where x > 0 (PyTorch's convention;
/// candle's takes five whole-tensor ops and passes the gradient at 0 too). It follows every
/// convolution of LPIPS' backbones.
pub fn relu(x: &Tensor) -> Result<Tensor> {
    if own_cpu(x) {
        x.contiguous()?.apply_op1(PointwiseOp(Kind::Relu))
    } else {
        x.relu()
    }
}

fn own_cpu(x: &Tensor) -> bool {
    super::own_ops() && x.device().is_cpu() && matches!(x.dtype(), DType::F32 | DType::F64)
}

/// Elements per parallel chunk of the pointwise loops.
const CHUNK: usize = 1 << 14;

#[derive(Clone, Copy, Debug)]
enum Kind {
    Silu,
    Relu,
}

/// eˣ in f32 to about 2 ulp, written so that a loop over it vectorises (std's `exp` is a call
/// per element): x = n·ln 2 + r with |r| ≤ ln 2 / 2, eʳ by Cephes' degree-6 polynomial, 2ⁿ put
/// into the exponent bits. Inputs are clamped to [−87.3, 88] (results from 1.24e−38 to 1.65e38,
/// where eˣ's own range ends at 88.7); NaN stays NaN. Branch-free, so that it vectorises.
#[inline(always)]
pub(crate) fn exp_f32(x: f32) -> f32 {
    const LOG2_E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split in two, so that n·LN2_HI is exact.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // 1.5·2²³: adding it rounds to the nearest integer by plain arithmetic, and leaves that
    // integer in the low bits of the sum (`round`, `floor` and `as i32` are calls or scalar code
    // on x86-64's baseline).
    const ROUND: f32 = 12_582_912.0;
    // max/min (NaN goes to a bound, restored at the end) vectorise; `clamp` keeps the NaN by a
    // compare and select per lane.
    #[allow(clippy::manual_clamp)]
    let xc = x.max(-87.3).min(88.0);
    let t = xc * LOG2_E + ROUND;
    let n = t - ROUND;
    let r = xc - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4_f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let e = p * r * r + r + 1.0;
    // n lies in [−126, 127]: 2ⁿ is a normal number, its exponent bits n + 127.
    let n_bits = t.to_bits().wrapping_sub(ROUND.to_bits());
    let y = e * f32::from_bits(n_bits.wrapping_add(127) << 23);
    if x.is_nan() {
        x
    } else {
        y
    }
}

macro_rules! pointwise_loops {
    ($t:ty, $exp:expr, $forward:ident, $backward:ident) => {
        fn $forward(kind: Kind, x: &[$t]) -> Vec<$t> {
            let mut y = vec![0.0; x.len()];
            for_each_chunk(&mut y, CHUNK, |(n, y)| {
                vectorized(
                    #[inline(always)]
                    || {
                        let x = &x[n * CHUNK..];
                        match kind {
                            Kind::Silu => {
                                for (y, &x) in y.iter_mut().zip(x) {
                                    *y = x / (1.0 + $exp(-x));
                                }
                            }
                            Kind::Relu => {
                                for (y, &x) in y.iter_mut().zip(x) {
                                    *y = if x < 0.0 { 0.0 } else { x }; // NaN stays NaN, as in PyTorch
                                }
                            }
                        }
                    },
                )
            });
            y
        }
        fn $backward(kind: Kind, x: &[$t], g: &[$t]) -> Vec<$t> {
            let mut dx = vec![0.0; x.len()];
            for_each_chunk(&mut dx, CHUNK, |(n, dx)| {
                vectorized(
                    #[inline(always)]
                    || {
                        let (x, g) = (&x[n * CHUNK..], &g[n * CHUNK..]);
                        match kind {
                            Kind::Silu => {
                                for ((dx, &x), &g) in dx.iter_mut().zip(x).zip(g) {
                                    let s = 1.0 / (1.0 + $exp(-x));
                                    *dx = g * s * (1.0 + x * (1.0 - s));
                                }
                            }
                            Kind::Relu => {
                                for ((dx, &x), &g) in dx.iter_mut().zip(x).zip(g) {
                                    *dx = if x > 0.0 { g } else { 0.0 };
                                }
                            }
                        }
                    },
                )
            });
            dx
        }
    };
}
pointwise_loops!(f32, exp_f32, forward_f32, backward_f32);
pointwise_loops!(f64, f64::exp, forward_f64, backward_f64);

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

    #[test]
    fn exp_f32_is_within_a_few_ulp() {
        let mut worst = 0.0f64;
        for i in 0..=200_000 {
            let x = -87.0 + 175.0 * i as f64 / 200_000.0;
            let (got, want) = (exp_f32(x as f32) as f64, (x as f32 as f64).exp());
            worst = worst.max(((got - want) / want).abs());
        }
        assert!(worst < 3.0 * f32::EPSILON as f64, "relative error {worst}");
        assert!(exp_f32(f32::NAN).is_nan());
        assert_eq!(exp_f32(0.0), 1.0);
        assert!(exp_f32(-1000.0) < 1.3e-38 && exp_f32(-1000.0) > 0.0);
        assert!(exp_f32(1000.0) > 1.0e38 && exp_f32(1000.0).is_finite());
    }

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
