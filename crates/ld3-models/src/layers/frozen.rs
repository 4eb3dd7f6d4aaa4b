//! Convolutions and linear maps over frozen weights whose backward yields the input's gradient
//! only. candle's backward of `conv2d` and `matmul` computes and keeps a gradient for every
//! operand, the constant weights included (3.4 GB per step for Stable Diffusion's UNet, and a
//! third of the backward's work); LD3 never trains weights.
//!
//! - The convolution is one op on the CPU (f32/f64, constant weight and bias), tracked or not:
//!   the im2col/gemm kernels of `conv_kernel` forward, and backward their adjoint (at stride 1 the
//!   convolution with the flipped weight, else col2im(Wᵀ·∂y)).
//!   candle's CPU convolution copies the input to NHWC and the weight to a new layout on every
//!   call, and its input gradient is a direct-loop transposed convolution.
//! - The linear map, under a gradient on the CPU, is computed on the detached input and
//!   re-attached to the input through an op whose backward is ∂x = ∂y·W.
//!
//! Elsewhere (another device, a trained weight, the own ops off) they are candle's modules
//! unchanged.

use std::sync::Mutex;

use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, DType, Layout, Module, Result, Shape, Storage, Tensor,
};

use super::conv_kernel::{self, Geometry, Start};
use super::matmul::Element;
use super::with_host_slice;

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

/// candle's `Conv2d` on this crate's CPU kernels (see [`conv2d`]).
#[derive(Clone, Debug)]
pub struct Conv2d(pub candle_nn::Conv2d);

impl Module for Conv2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.convolve(x, false)
    }
}

/// A tensor added to a convolution's output inside the op ([`Conv2d::forward_add`]): no
/// separate whole-tensor addition forward, nor its gradient bookkeeping backward.
#[derive(Clone, Copy, Debug)]
pub enum Addend<'a> {
    /// One value per image and output channel, `[batch, c_out]` or `[batch, c_out, 1, 1]` (a
    /// ResNet block's time embedding).
    PerChannel(&'a Tensor),
    /// An output-shaped tensor (a residual branch).
    Full(&'a Tensor),
}

impl Addend<'_> {
    /// `y + self` by candle's ops (broadcast over the pixels for [`Addend::PerChannel`]): the
    /// addition where it cannot join a convolution's op.
    pub fn add_to(self, y: &Tensor) -> Result<Tensor> {
        match self {
            Addend::PerChannel(t) => {
                let (b, c) = (t.dim(0)?, t.elem_count() / t.dim(0)?.max(1));
                y.broadcast_add(&t.reshape((b, c, 1, 1))?)
            }
            Addend::Full(r) => r + y,
        }
    }
}

impl Conv2d {
    /// ReLU(`self.forward(x)`), as one op on the own CPU path (see [`conv2d_relu`]).
    pub fn forward_relu(&self, x: &Tensor) -> Result<Tensor> {
        self.convolve(x, true)
    }

    /// The convolution, then ReLU if `relu`: the own kernels for ungrouped convolutions.
    fn convolve(&self, x: &Tensor, relu: bool) -> Result<Tensor> {
        let cfg = *self.0.config();
        if cfg.groups != 1 {
            let y = self.0.forward(x)?;
            return if relu { super::relu(&y) } else { Ok(y) };
        }
        let (w, b) = (self.0.weight(), self.0.bias());
        conv2d_biased(x, w, b, cfg.padding, cfg.stride, cfg.dilation, relu)
    }

    /// `self.forward(x) + addend` (broadcast over the pixels for [`Addend::PerChannel`]). On the
    /// own CPU path one op whose backward yields the gradients of `x` and of the addend;
    /// otherwise the convolution and then candle's addition.
    pub fn forward_add(&self, x: &Tensor, addend: Addend) -> Result<Tensor> {
        let cfg = *self.0.config();
        let w = self.0.weight();
        let constant = |t: &Tensor| !t.track_op() && t.device().is_cpu() && t.dtype() == x.dtype();
        let own = cfg.groups == 1
            && super::own_ops()
            && x.device().is_cpu()
            && matches!(x.dtype(), DType::F32 | DType::F64)
            && constant(w)
            && self.0.bias().is_none_or(|b| constant(b) && b.rank() == 1);
        let a = match addend {
            Addend::PerChannel(t) | Addend::Full(t) => t,
        };
        if !own || a.dtype() != x.dtype() || !a.device().is_cpu() {
            return addend.add_to(&self.forward(x)?);
        }
        let op = ConvAddOp {
            conv: ConvOp {
                weight: w.contiguous()?,
                bias: self.0.bias().map(Tensor::contiguous).transpose()?,
                padding: cfg.padding,
                stride: cfg.stride,
                dilation: cfg.dilation,
                relu: false,
            },
            per_channel: matches!(addend, Addend::PerChannel(_)),
        };
        x.contiguous()?.apply_op2(&a.contiguous()?, op)
    }
}

/// `x.conv2d(w, padding, stride, dilation, 1)`. With the own ops on, on the CPU in f32/f64 and
/// with a constant `w`, it runs the im2col/gemm kernels of `conv_kernel` and its backward yields
/// the input's gradient only (by the same kernels' adjoint); otherwise it is candle's.
pub fn conv2d(
    x: &Tensor,
    w: &Tensor,
    padding: usize,
    stride: usize,
    dilation: usize,
) -> Result<Tensor> {
    conv2d_biased(x, w, None, padding, stride, dilation, false)
}

/// ReLU(`x.conv2d(w, padding, stride, dilation, 1)` + `bias`) (`bias` one value per output
/// channel). On the own CPU path (as [`conv2d`]) one op: the ReLU is applied to the output in
/// place and its backward masks the gradient by the output before the convolution's input
/// gradient — no separate activation tensor, nor its node in the graph.
pub fn conv2d_relu(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    padding: usize,
    stride: usize,
    dilation: usize,
) -> Result<Tensor> {
    conv2d_biased(x, w, bias, padding, stride, dilation, true)
}

fn conv2d_biased(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    padding: usize,
    stride: usize,
    dilation: usize,
    relu: bool,
) -> Result<Tensor> {
    let constant = |t: &Tensor| !t.track_op() && t.device().is_cpu() && t.dtype() == x.dtype();
    let own = super::own_ops()
        && x.device().is_cpu()
        && matches!(x.dtype(), DType::F32 | DType::F64)
        && constant(w);
    let activated = |y: Tensor| if relu { super::relu(&y) } else { Ok(y) };
    if !own {
        let y = x.conv2d(w, padding, stride, dilation, 1)?;
        return activated(match bias {
            Some(b) => y.broadcast_add(&b.reshape((1, (), 1, 1))?)?,
            None => y,
        });
    }
    // A tracked bias (weights being trained) is added outside the op, so it gets its gradient
    // (and the ReLU comes after it).
    let (fused, added) = match bias {
        Some(b) if constant(b) && b.rank() == 1 => (Some(b.contiguous()?), None),
        other => (None, other),
    };
    let op = ConvOp {
        weight: w.contiguous()?,
        bias: fused,
        padding,
        stride,
        dilation,
        relu: relu && added.is_none(),
    };
    let y = x.contiguous()?.apply_op1(op)?;
    match added {
        Some(b) => activated(y.broadcast_add(&b.reshape((1, (), 1, 1))?)?),
        None => Ok(y),
    }
}

/// `conv2d(x, weight) + bias` on the CPU kernels, for a constant weight and bias, then ReLU if
/// `relu`.
struct ConvOp {
    weight: Tensor,
    bias: Option<Tensor>,
    padding: usize,
    stride: usize,
    dilation: usize,
    relu: bool,
}

impl ConvOp {
    fn geometry(&self, x: &[usize]) -> Result<Geometry> {
        Geometry::new(
            x,
            self.weight.dims(),
            self.padding,
            self.stride,
            self.dilation,
        )
    }

    fn run<T: Element + candle_core::WithDType>(&self, g: &Geometry, x: &[T]) -> Result<Vec<T>> {
        let mut y = self.run_from(g, x, None)?;
        if self.relu {
            relu_in_place(&mut y);
        }
        Ok(y)
    }

    /// `f` on the bias's values (checked to be one per output channel), if there is a bias.
    fn with_bias<T: candle_core::WithDType, R>(
        &self,
        g: &Geometry,
        f: impl FnOnce(Option<&[T]>) -> Result<R>,
    ) -> Result<R> {
        let Some(b) = &self.bias else {
            return f(None);
        };
        with_host_slice(b, "conv2d", |bias: &[T]| {
            if bias.len() != g.c_out {
                candle_core::bail!(
                    "conv2d: a bias of {} values for {} output channels",
                    bias.len(),
                    g.c_out
                );
            }
            f(Some(bias))
        })?
    }

    /// The convolution plus its bias and `addend` (per image and channel, or output-shaped).
    fn run_from<T: Element + candle_core::WithDType>(
        &self,
        g: &Geometry,
        x: &[T],
        addend: Option<(&[T], bool)>,
    ) -> Result<Vec<T>> {
        with_host_slice(&self.weight, "conv2d", |weight| {
            self.with_bias(g, |bias| {
                let start = match addend {
                    None => Start {
                        bias,
                        residual: None,
                    },
                    Some((r, false)) => Start {
                        bias,
                        residual: Some(r),
                    },
                    Some((t, true)) => {
                        let planes: Vec<T> = t
                            .iter()
                            .enumerate()
                            .map(|(n, &v)| bias.map_or(v, |b| b[n % g.c_out] + v))
                            .collect();
                        return Ok(conv_kernel::forward(
                            g,
                            x,
                            weight,
                            Start {
                                bias: Some(&planes),
                                residual: None,
                            },
                        ));
                    }
                };
                Ok(conv_kernel::forward(g, x, weight, start))
            })
        })?
    }
}

impl CustomOp1 for ConvOp {
    fn name(&self) -> &'static str {
        "conv2d-frozen"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = self.geometry(l.dims())?;
        let y = super::cpu_forward(s, l, self.name(), |x| self.run(&g, x), |x| self.run(&g, x))?;
        Ok((y, Shape::from((g.batch, g.c_out, g.h_out(), g.w_out()))))
    }
    fn bwd(&self, arg: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let op = ConvInputGradient {
            weight: self.weight.clone(),
            geometry: self.geometry(arg.dims())?,
        };
        let grad = if self.relu {
            // Through the ReLU: the gradient where the output is positive.
            super::cpu_input_gradient(
                &res.detach().contiguous()?,
                grad,
                "conv2d-relu backward",
                |y, g, _| relu_mask(y, g),
                |y, g, _| relu_mask(y, g),
            )?
        } else {
            grad.contiguous()?
        };
        grad.apply_op1(op).map(Some)
    }
}

/// Elements per parallel chunk of the ReLU loops.
const RELU_CHUNK: usize = 1 << 14;

/// y = max(y, 0) in place; NaN stays NaN, as in PyTorch.
fn relu_in_place<T: candle_core::WithDType>(y: &mut [T]) {
    super::parallel::for_each_chunk(y, RELU_CHUNK, |(_, c)| {
        super::parallel::vectorized(
            #[inline(always)]
            || {
                // A store per element (a select, not a branch): the loop vectorises.
                for v in c.iter_mut() {
                    *v = if *v < T::zero() { T::zero() } else { *v };
                }
            },
        )
    });
}

/// The gradient `g` where the ReLU's output `y` is positive, zero elsewhere.
fn relu_mask<T: candle_core::WithDType>(y: &[T], g: &[T]) -> Vec<T> {
    let mut d = vec![T::zero(); g.len()];
    super::parallel::for_each_chunk(&mut d, RELU_CHUNK, |(i, c)| {
        super::parallel::vectorized(
            #[inline(always)]
            || {
                let (y, g) = (&y[i * RELU_CHUNK..], &g[i * RELU_CHUNK..]);
                for ((d, &y), &g) in c.iter_mut().zip(y).zip(g) {
                    *d = if y > T::zero() { g } else { T::zero() };
                }
            },
        )
    });
    d
}

/// [`ConvOp`] plus an addend (`per_channel`: one value per image and output channel; else
/// output-shaped) in one op.
struct ConvAddOp {
    conv: ConvOp,
    per_channel: bool,
}

impl ConvAddOp {
    fn run<T: Element + candle_core::WithDType>(
        &self,
        g: &Geometry,
        x: &[T],
        addend: &[T],
    ) -> Result<Vec<T>> {
        let expected = if self.per_channel {
            g.batch * g.c_out
        } else {
            g.output_len()
        };
        if addend.len() != expected {
            candle_core::bail!(
                "conv2d: an addend of {} values for {} ({})",
                addend.len(),
                expected,
                if self.per_channel {
                    "one per image and output channel"
                } else {
                    "the output's shape"
                }
            );
        }
        self.conv.run_from(g, x, Some((addend, self.per_channel)))
    }
}

impl CustomOp2 for ConvAddOp {
    fn name(&self) -> &'static str {
        "conv2d-frozen-add"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = self.conv.geometry(l1.dims())?;
        let name = self.name();
        use super::contiguous_slice as slices;
        let y = match (s1, s2) {
            (CpuStorage::F32(_), CpuStorage::F32(_)) => {
                CpuStorage::F32(self.run(&g, slices(s1, l1, name)?, slices(s2, l2, name)?)?)
            }
            (CpuStorage::F64(_), CpuStorage::F64(_)) => {
                CpuStorage::F64(self.run(&g, slices(s1, l1, name)?, slices(s2, l2, name)?)?)
            }
            _ => {
                candle_core::bail!("{name}: the input and the addend must be both f32 or both f64")
            }
        };
        Ok((y, Shape::from((g.batch, g.c_out, g.h_out(), g.w_out()))))
    }
    fn bwd(
        &self,
        x: &Tensor,
        addend: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let dx = if x.track_op() {
            self.conv.bwd(x, res, grad)?
        } else {
            None
        };
        let da = if !addend.track_op() {
            None
        } else if self.per_channel {
            Some(grad.sum((2, 3))?.reshape(addend.shape())?)
        } else {
            Some(grad.clone())
        };
        Ok((dx, da))
    }
}

/// ∂x of [`ConvOp`] from ∂y (the adjoint of the forward kernel).
struct ConvInputGradient {
    weight: Tensor,
    geometry: Geometry,
}

impl CustomOp1 for ConvInputGradient {
    fn name(&self) -> &'static str {
        "conv2d-input-gradient"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = &self.geometry;
        let expected = [g.batch, g.c_out, g.h_out(), g.w_out()];
        if l.dims() != expected {
            candle_core::bail!(
                "conv2d backward: an output gradient {:?} for an output {expected:?}",
                l.dims()
            );
        }
        let name = self.name();
        let dx = super::cpu_forward(
            s,
            l,
            name,
            |dy| {
                with_host_slice(&self.weight, name, |w| {
                    conv_kernel::input_gradient(g, dy, w)
                })
            },
            |dy| {
                with_host_slice(&self.weight, name, |w| {
                    conv_kernel::input_gradient(g, dy, w)
                })
            },
        )?;
        Ok((dx, Shape::from((g.batch, g.c_in, g.h, g.w))))
    }
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
        assert_directional_derivative, backward_of_weighted_sum, max_abs, randn,
    };
    use candle_core::Var;

    /// relu(conv + b) as one op: value and input gradient equal candle's conv then ReLU, in f64
    /// and f32, strided and not; a bias being trained keeps its gradient.
    #[test]
    fn conv_relu_equals_the_composite() {
        struct Composite(candle_nn::Conv2d);
        impl Module for Composite {
            fn forward(&self, x: &Tensor) -> Result<Tensor> {
                self.0.forward(x)?.relu()
            }
        }
        struct Fused(Conv2d);
        impl Module for Fused {
            fn forward(&self, x: &Tensor) -> Result<Tensor> {
                self.0.forward_relu(x)
            }
        }
        for dtype in [DType::F64, DType::F32] {
            let tol = if dtype == DType::F64 { 1e-12 } else { 1e-4 };
            let r = |shape: &[usize]| randn(shape, 0.0, 1.0, dtype);
            for stride in [1, 2] {
                let cfg = candle_nn::Conv2dConfig {
                    stride,
                    padding: 1,
                    ..Default::default()
                };
                let conv = candle_nn::Conv2d::new(r(&[5, 3, 3, 3]), Some(r(&[5])), cfg);
                // (candle's own backward fails for a strided convolution over height and width of
                // different parity: the directional derivative below covers those.)
                let var = Var::from_tensor(&r(&[2, 3, 9, 9])).unwrap();
                let a = Fused(Conv2d(conv.clone())).forward(&var).unwrap();
                let b = Composite(conv.clone()).forward(&var).unwrap();
                assert!(max_abs((&a - &b).unwrap()) < tol);
                let free = conv2d_relu(&var, conv.weight(), conv.bias(), 1, stride, 1).unwrap();
                assert!(max_abs((&free - &b).unwrap()) < tol);
                let w = r(a.dims());
                let (ga, gb) = (
                    backward_of_weighted_sum(a, &w),
                    backward_of_weighted_sum(b, &w),
                );
                let (ga, gb) = (ga.get(&var).unwrap(), gb.get(&var).unwrap());
                assert!(max_abs((ga - gb).unwrap()) < tol * 10.0);
                if dtype == DType::F64 {
                    let (x, v) = (r(&[2, 3, 9, 8]), r(&[2, 3, 9, 8]));
                    assert_directional_derivative(&Fused(Conv2d(conv.clone())), &x, &v, 1e-6);
                }
            }
            let bv = Var::from_tensor(&r(&[4])).unwrap();
            let x = r(&[2, 3, 6, 6]);
            let w4 = r(&[4, 3, 3, 3]);
            let y = conv2d_relu(&x, &w4, Some(bv.as_tensor()), 1, 1, 1).unwrap();
            let want = x
                .conv2d(&w4, 1, 1, 1, 1)
                .unwrap()
                .broadcast_add(&bv.as_tensor().reshape((1, 4, 1, 1)).unwrap())
                .unwrap()
                .relu()
                .unwrap();
            assert!(max_abs((&y - &want).unwrap()) < tol);
            let g = y.sum_all().unwrap().backward().unwrap();
            let gw = want.sum_all().unwrap().backward().unwrap();
            let d = (g.get(&bv).unwrap() - gw.get(&bv).unwrap()).unwrap();
            assert!(max_abs(d) < tol * 10.0);
        }
    }

    /// Values and input gradients equal candle's own modules', in f64 and f32, for strided and
    /// padded convolutions and for linear maps on 2- and 3-dimensional inputs.
    #[test]
    fn input_only_layers_equal_candles() {
        for dtype in [DType::F64, DType::F32] {
            let tol = if dtype == DType::F64 { 1e-12 } else { 1e-4 };
            let r = |shape: &[usize]| randn(shape, 0.0, 1.0, dtype);
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
            // Dilation; a non-contiguous input (a transposed view); no graph at all.
            let cfg = candle_nn::Conv2dConfig {
                padding: 2,
                dilation: 2,
                ..Default::default()
            };
            let conv = candle_nn::Conv2d::new(r(&[4, 3, 3, 3]), Some(r(&[4])), cfg);
            check(&Conv2d(conv.clone()), &conv, r(&[2, 3, 7, 6]));
            let x = r(&[2, 3, 6, 7]).transpose(2, 3).unwrap();
            assert!(!x.is_contiguous());
            let (a, b) = (
                Conv2d(conv.clone()).forward(&x).unwrap(),
                conv.forward(&x).unwrap(),
            );
            assert!(max_abs((&a - &b).unwrap()) < tol);
            // A weight and bias being trained take candle's path and get their gradients.
            let (wv, bv) = (
                Var::from_tensor(&r(&[4, 3, 3, 3])).unwrap(),
                Var::from_tensor(&r(&[4])).unwrap(),
            );
            let trained = Conv2d(candle_nn::Conv2d::new(
                wv.as_tensor().clone(),
                Some(bv.as_tensor().clone()),
                cfg,
            ));
            let g = trained
                .forward(&x)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            assert!(g.get(&wv).is_some() && g.get(&bv).is_some());
            let lin = candle_nn::Linear::new(r(&[4, 6]), Some(r(&[4])));
            check(&Linear(lin.clone()), &lin, r(&[3, 6]));
            check(&Linear(lin.clone()), &lin, r(&[2, 3, 6]));
        }
    }

    /// `forward_add` equals the convolution followed by candle's addition: values and the
    /// gradients of the input and of the addend (per image and channel, and output-shaped), in f64
    /// and f32, over a batch shared out by images and a single image. (The own ops stay on: the
    /// switch is global, and other tests run alongside.)
    #[test]
    fn fused_addends_equal_the_separate_addition() {
        for dtype in [DType::F64, DType::F32] {
            let tol = if dtype == DType::F64 { 1e-12 } else { 1e-4 };
            let r = |shape: &[usize]| randn(shape, 0.0, 1.0, dtype);
            let cfg = candle_nn::Conv2dConfig {
                padding: 1,
                ..Default::default()
            };
            for (batch, bias) in [(4, true), (1, false), (3, true)] {
                let conv = Conv2d(candle_nn::Conv2d::new(
                    r(&[5, 3, 3, 3]),
                    bias.then(|| r(&[5])),
                    cfg,
                ));
                let x = Var::from_tensor(&r(&[batch, 3, 6, 7])).unwrap();
                let per_channel = Var::from_tensor(&r(&[batch, 5])).unwrap();
                let full = Var::from_tensor(&r(&[batch, 5, 6, 7])).unwrap();
                let w = r(&[batch, 5, 6, 7]);
                for addend in [per_channel.as_tensor(), full.as_tensor()] {
                    let (fused, separate) = if addend.rank() == 2 {
                        let y = conv.forward(x.as_tensor()).unwrap();
                        let t = addend.reshape((batch, 5, 1, 1)).unwrap();
                        (
                            conv.forward_add(x.as_tensor(), Addend::PerChannel(addend)),
                            y.broadcast_add(&t).unwrap(),
                        )
                    } else {
                        let y = conv.forward(x.as_tensor()).unwrap();
                        (
                            conv.forward_add(x.as_tensor(), Addend::Full(addend)),
                            (y + addend).unwrap(),
                        )
                    };
                    let fused = fused.unwrap();
                    assert!(max_abs((&fused - &separate).unwrap()) < tol);
                    let (g, g_ref) = (
                        backward_of_weighted_sum(fused, &w),
                        backward_of_weighted_sum(separate, &w),
                    );
                    for t in [x.as_tensor(), addend] {
                        let (a, b) = (g.get(t).unwrap(), g_ref.get(t).unwrap());
                        assert_eq!(a.dims(), b.dims());
                        assert!(max_abs((a - b).unwrap()) < tol * 10.0);
                    }
                }
                // A wrong addend is named.
                let bad = r(&[batch, 4]);
                let e = conv
                    .forward_add(x.as_tensor(), Addend::PerChannel(&bad))
                    .unwrap_err();
                assert!(e.to_string().contains("addend"), "{e}");
            }
        }
    }
}
