//! Normalisations. LayerNorm from differentiable ops (candle's fused `layer_norm` has no
//! backward; it is used only where no gradient can be asked for); GroupNorm as one fused op with
//! an input-only backward.

use candle_core::{
    CpuStorage, CustomOp1, DType, Layout, Module, Result, Shape, Tensor, WithDType, D,
};
use std::sync::{Arc, OnceLock};

use super::parallel::{for_each_chunk, vectorized};
use candle_nn::VarBuilder;

/// LayerNorm over the last dimension: (x − mean)/√(var + ε)·γ + β, computed in f32 or wider.
#[derive(Clone, Debug)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    /// `NAME.weight` and `NAME.bias` [dim] from `vb`.
    pub fn new(dim: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            weight: vb.get(dim, "weight")?,
            bias: vb.get(dim, "bias")?,
            eps,
        })
    }

    /// Normalises `x` [..., dim]: candle's fused kernel (f32, f16, bf16) when nothing upstream
    /// needs a gradient, else the differentiable composite.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dtype = x.dtype();
        let tracked = x.track_op() || self.weight.track_op() || self.bias.track_op();
        if !tracked && dtype != DType::F64 {
            return candle_nn::ops::layer_norm(
                &x.contiguous()?,
                &self.weight,
                &self.bias,
                self.eps as f32,
            );
        }
        let wide = match dtype {
            DType::F16 | DType::BF16 => x.to_dtype(DType::F32)?,
            _ => x.clone(),
        };
        let centred = wide.broadcast_sub(&wide.mean_keepdim(D::Minus1)?)?;
        let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
        let normed = centred.broadcast_div(&(var + self.eps)?.sqrt()?)?;
        normed
            .to_dtype(dtype)?
            .broadcast_mul(&self.weight)?
            .broadcast_add(&self.bias)
    }
}

/// A GroupNorm's weight and bias as f64 on the host.
type HostAffine = (Arc<[f64]>, Arc<[f64]>);

/// GroupNorm over [B, C, ...]: the channels split into `groups` groups, each (batch, group)
/// normalised to zero mean and unit variance, then scaled and shifted per channel. On the CPU in
/// f32 or f64 it is one fused op (statistics accumulated in f64) whose backward, when the input is
/// tracked, yields the input's gradient only and keeps nothing but the input — candle's
/// composite keeps four tensors of the activation's size per norm, and a gradient for the
/// constant weight and bias. Elsewhere (other dtypes or devices, or a tracked weight) it is
/// candle's `GroupNorm` unchanged.
#[derive(Clone, Debug)]
pub struct GroupNorm {
    weight: Tensor,
    bias: Tensor,
    groups: usize,
    eps: f64,
    composite: candle_nn::GroupNorm,
    /// Weight and bias in f64 on the host, read once on the first fused call.
    host: OnceLock<HostAffine>,
}

impl GroupNorm {
    /// `weight` and `bias` [channels]; `groups` must divide `channels`.
    pub fn new(
        weight: Tensor,
        bias: Tensor,
        channels: usize,
        groups: usize,
        eps: f64,
    ) -> Result<Self> {
        let composite =
            candle_nn::GroupNorm::new(weight.clone(), bias.clone(), channels, groups, eps)?;
        Ok(Self {
            weight,
            bias,
            groups,
            eps,
            composite,
            host: OnceLock::new(),
        })
    }

    /// candle's composite GroupNorm over the same weights (the reference the op is tested
    /// against).
    pub fn composite(&self) -> &candle_nn::GroupNorm {
        &self.composite
    }
}

/// `NAME.weight` and `NAME.bias` [channels] from `vb` (initialised to 1 and 0 where `vb` makes
/// new variables, as candle's `group_norm` does).
pub fn group_norm(groups: usize, channels: usize, eps: f64, vb: VarBuilder) -> Result<GroupNorm> {
    let weight = vb.get_with_hints(channels, "weight", candle_nn::Init::Const(1.))?;
    let bias = vb.get_with_hints(channels, "bias", candle_nn::Init::Const(0.))?;
    GroupNorm::new(weight, bias, channels, groups, eps)
}

impl GroupNorm {
    /// `silu(self.forward(x))`: with the own ops on, one op (one pass forward and backward, one
    /// tensor in the graph), as every ResNet block normalises and then activates.
    pub fn forward_silu(&self, x: &Tensor) -> Result<Tensor> {
        match self.fused(x, true)? {
            Some(y) => Ok(y),
            None => super::silu(&self.composite.forward(x)?),
        }
    }

    /// The fused op on `x` (followed by SiLU if `silu`), or `None` off its path.
    fn fused(&self, x: &Tensor, silu: bool) -> Result<Option<Tensor>> {
        let fused = super::own_ops()
            && x.device().is_cpu()
            && matches!(x.dtype(), DType::F32 | DType::F64)
            && x.rank() >= 3
            && !self.weight.track_op()
            && !self.bias.track_op();
        if !fused {
            return Ok(None);
        }
        let c = x.dim(1)?;
        if c != self.weight.dim(0)? {
            candle_core::bail!(
                "GroupNorm over {} channels got an input of {c} channels ({:?})",
                self.weight.dim(0)?,
                x.dims()
            );
        }
        let (weight, bias) = match self.host.get() {
            Some(host) => host.clone(),
            None => {
                let host = (to_f64_vec(&self.weight)?, to_f64_vec(&self.bias)?);
                self.host.get_or_init(|| host).clone()
            }
        };
        let op = GroupNormOp {
            weight,
            bias,
            groups: self.groups,
            eps: self.eps,
            silu,
        };
        let x = x.contiguous()?;
        if x.track_op() {
            x.apply_op1(op).map(Some)
        } else {
            x.apply_op1_no_bwd(&op).map(Some)
        }
    }
}

impl Module for GroupNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self.fused(x, false)? {
            Some(y) => Ok(y),
            None => self.composite.forward(x),
        }
    }
}

fn to_f64_vec(t: &Tensor) -> Result<Arc<[f64]>> {
    Ok(t.to_dtype(DType::F64)?.to_vec1::<f64>()?.into())
}

/// The fused GroupNorm, followed by SiLU if `silu`; weight and bias are constants.
struct GroupNormOp {
    weight: Arc<[f64]>,
    bias: Arc<[f64]>,
    groups: usize,
    eps: f64,
    silu: bool,
}

/// σ(z) in the element type's own precision (the f32 one is the vectorised `exp`), and the
/// forward's per-channel y = a·x + b (then SiLU) in the element type's own arithmetic (f32 lanes
/// hold twice as many as f64 ones).
trait Sigmoid: Sized {
    fn sigmoid(z: f64) -> f64;
    fn scale_shift(y: &mut [Self], x: &[Self], a: f64, b: f64, silu: bool);
}

macro_rules! sigmoid {
    ($t:ty, $exp:expr) => {
        impl Sigmoid for $t {
            #[inline(always)]
            fn sigmoid(z: f64) -> f64 {
                (1.0 / (1.0 + $exp(-z as $t))) as f64
            }
            #[inline(always)]
            fn scale_shift(y: &mut [Self], x: &[Self], a: f64, b: f64, silu: bool) {
                let (a, b) = (a as $t, b as $t);
                if silu {
                    for (yi, &xi) in y.iter_mut().zip(x) {
                        let z = xi * a + b;
                        *yi = z / (1.0 + $exp(-z));
                    }
                } else {
                    for (yi, &xi) in y.iter_mut().zip(x) {
                        *yi = xi * a + b;
                    }
                }
            }
        }
    };
}
sigmoid!(f32, super::activation::exp_f32);
sigmoid!(f64, f64::exp);

/// Σ f(xᵢ) in f64, in lanes (vectorises).
#[inline(always)]
fn sum_of<T: WithDType>(x: &[T], f: impl Fn(f64) -> f64) -> f64 {
    super::parallel::sum_map(x, |v| f(v.to_f64()))
}

/// (Σ gᵢ, Σ gᵢ·(xᵢ − mean)) in f64.
#[inline(always)]
fn moments_of<T: WithDType>(x: &[T], g: &[T], mean: f64) -> (f64, f64) {
    (
        sum_of(g, |v| v),
        super::parallel::sum_zip(x, g, |xi, gi| gi.to_f64() * (xi.to_f64() - mean)),
    )
}

/// Mean and 1/√(var + ε) of one group.
#[inline(always)]
fn group_stats<T: WithDType>(x: &[T], eps: f64) -> (f64, f64) {
    let n = x.len() as f64;
    let mean = sum_of(x, |v| v) / n;
    let var = sum_of(x, |v| (v - mean) * (v - mean)) / n;
    (mean, 1.0 / (var + eps).sqrt())
}

impl GroupNormOp {
    /// Elements per channel and per (batch, group) of a contiguous `dims`.
    fn sizes(&self, dims: &[usize]) -> (usize, usize) {
        let per_channel = dims[2..].iter().product::<usize>();
        (per_channel, dims[1] / self.groups * per_channel)
    }

    /// Group `i` (of the flattened batch × groups) of the forward, `s` elements per channel.
    #[inline(always)]
    fn forward_group<T: WithDType + Sigmoid>(&self, i: usize, x: &[T], y: &mut [T], s: usize) {
        let (mean, rstd) = group_stats(x, self.eps);
        let first = (i % self.groups) * (x.len() / s);
        for (j, (yc, xc)) in y.chunks_mut(s).zip(x.chunks(s)).enumerate() {
            let a = rstd * self.weight[first + j];
            let b = self.bias[first + j] - mean * a;
            T::scale_shift(yc, xc, a, b, self.silu);
        }
    }

    /// Group `i` of the backward.
    #[inline(always)]
    fn backward_group<T: WithDType + Sigmoid>(
        &self,
        i: usize,
        x: &[T],
        dy: &[T],
        dx: &mut [T],
        s: usize,
    ) {
        let (mean, rstd) = group_stats(x, self.eps);
        let first = (i % self.groups) * (x.len() / s);
        // dx first holds the gradient of the normalised output: dy, or through SiLU
        // dy·σ(z)·(1 + z·(1 − σ(z))) with z recomputed.
        if self.silu {
            for (j, (dxc, (xc, dyc))) in dx
                .chunks_mut(s)
                .zip(x.chunks(s).zip(dy.chunks(s)))
                .enumerate()
            {
                let a = rstd * self.weight[first + j];
                let b = self.bias[first + j] - mean * a;
                for (d, (xi, gi)) in dxc.iter_mut().zip(xc.iter().zip(dyc)) {
                    let z = xi.to_f64() * a + b;
                    let sg = T::sigmoid(z);
                    *d = T::from_f64(gi.to_f64() * sg * (1.0 + z * (1.0 - sg)));
                }
            }
        } else {
            dx.copy_from_slice(dy);
        }
        let (mut sum_g, mut sum_gx) = (0.0, 0.0);
        for (j, (xc, gc)) in x.chunks(s).zip(dx.chunks(s)).enumerate() {
            let w = self.weight[first + j];
            let (g, gx) = moments_of(xc, gc, mean);
            sum_g += w * g;
            sum_gx += w * gx * rstd;
        }
        let n = x.len() as f64;
        let (mean_g, mean_gx) = (sum_g / n, sum_gx / n);
        for (j, (dxc, xc)) in dx.chunks_mut(s).zip(x.chunks(s)).enumerate() {
            let w = self.weight[first + j];
            for (d, xi) in dxc.iter_mut().zip(xc) {
                let x_hat = (xi.to_f64() - mean) * rstd;
                *d = T::from_f64(rstd * (d.to_f64() * w - mean_g - x_hat * mean_gx));
            }
        }
    }

    fn forward<T: WithDType + Sigmoid>(&self, x: &[T], dims: &[usize]) -> Vec<T> {
        let (s, len) = self.sizes(dims);
        let mut y = vec![T::zero(); x.len()];
        for_each_chunk(&mut y, len, |(i, y)| {
            vectorized(
                #[inline(always)]
                || self.forward_group(i, &x[i * len..][..len], y, s),
            )
        });
        y
    }

    /// ∂x = rstd·(ĝ − mean(ĝ) − x̂·mean(ĝ·x̂)) per group, with ĝ = ∂y·γ and x̂ the normalised x.
    fn backward<T: WithDType + Sigmoid>(&self, x: &[T], dy: &[T], dims: &[usize]) -> Vec<T> {
        let (s, len) = self.sizes(dims);
        let mut dx = vec![T::zero(); x.len()];
        for_each_chunk(&mut dx, len, |(i, dx)| {
            vectorized(
                #[inline(always)]
                || {
                    let (x, dy) = (&x[i * len..][..len], &dy[i * len..][..len]);
                    self.backward_group(i, x, dy, dx, s)
                },
            )
        });
        dx
    }
}

impl CustomOp1 for GroupNormOp {
    fn name(&self) -> &'static str {
        if self.silu {
            "group-norm-silu"
        } else {
            "group-norm"
        }
    }
    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let dims = layout.dims();
        let out = super::cpu_forward(
            storage,
            layout,
            "group-norm",
            |x| Ok(self.forward(x, dims)),
            |x| Ok(self.forward(x, dims)),
        )?;
        Ok((out, layout.shape().clone()))
    }
    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        super::cpu_input_gradient(
            arg,
            grad,
            "group-norm",
            |x, g, dims| self.backward(x, g, dims),
            |x, g, dims| self.backward(x, g, dims),
        )
        .map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::testing::{
        assert_directional_derivative, backward_of_weighted_sum, max_abs, randn,
    };
    use candle_core::{Device, Var};

    /// The fused GroupNorm equals candle's composite in value (tracked or not) and in the input's
    /// gradient, in f64 and f32, on [B, C, H, W] and [B, C, L] inputs with an offset mean; so does
    /// the fused GroupNorm + SiLU against the composite followed by candle's SiLU. A
    /// non-contiguous input is taken too, and an input of the wrong width is refused by name.
    #[test]
    fn fused_group_norm_equals_the_composite() {
        for dtype in [DType::F64, DType::F32] {
            let tol = if dtype == DType::F64 { 1e-12 } else { 2e-5 };
            let r = |shape: &[usize], mean: f64| randn(shape, mean, 2.0, dtype);
            let norm = GroupNorm::new(r(&[6], 1.0), r(&[6], 0.0), 6, 3, 1e-5).unwrap();
            let plain = |x: &Tensor| norm.forward(x).unwrap();
            let composite = |x: &Tensor| norm.composite().forward(x).unwrap();
            let with_silu = |x: &Tensor| norm.forward_silu(x).unwrap();
            let composite_silu = |x: &Tensor| composite(x).silu().unwrap();
            type Pair<'a> = (&'a dyn Fn(&Tensor) -> Tensor, &'a dyn Fn(&Tensor) -> Tensor);
            let pairs: [Pair; 2] = [(&plain, &composite), (&with_silu, &composite_silu)];
            for (ours_of, theirs_of) in pairs {
                for shape in [&[2, 6, 5, 4][..], &[3, 6, 7]] {
                    let x = r(shape, 3.0);
                    let w = r(shape, 0.0);
                    let var = Var::from_tensor(&x).unwrap();
                    let ours = ours_of(var.as_tensor());
                    let theirs = theirs_of(var.as_tensor());
                    assert!(max_abs((&ours - &theirs).unwrap()) < tol);
                    assert!(max_abs((ours_of(&x) - &theirs).unwrap()) < tol);
                    let (ga, gb) = (
                        backward_of_weighted_sum(ours, &w),
                        backward_of_weighted_sum(theirs, &w),
                    );
                    let (ga, gb) = (ga.get(&var).unwrap(), gb.get(&var).unwrap());
                    assert!(max_abs((ga - gb).unwrap()) < tol * 10.0);
                }
            }
            let err = norm.forward(&r(&[2, 4, 3], 0.0)).unwrap_err().to_string();
            assert!(err.contains("over 6 channels got an input of 4"), "{err}");
            let x = r(&[2, 5, 4, 6], 0.0).transpose(1, 3).unwrap();
            let diff = (norm.forward(&x).unwrap() - norm.composite().forward(&x).unwrap()).unwrap();
            assert!(max_abs(diff) < tol);
        }
    }

    /// The fused backward against central differences in f64, along a random direction.
    #[test]
    fn fused_group_norm_gradient_equals_finite_differences() {
        let r = |shape: &[usize]| Tensor::randn(0f64, 1.0, shape, &Device::Cpu).unwrap();
        let norm = GroupNorm::new(r(&[4]), r(&[4]), 4, 2, 1e-6).unwrap();
        let (x, v) = (r(&[2, 4, 3, 3]), r(&[2, 4, 3, 3]));
        assert_directional_derivative(&norm, &x, &v, 1e-7);
    }
}
