//! LPIPS v0.1 (Zhang et al. 2018, "The Unreasonable Effectiveness of Deep Features as a
//! Perceptual Metric", Eq. 1): d(x₀, x₁) = Σ_l mean_hw ‖w_l ⊙ (ŷ⁰_l − ŷ¹_l)‖² over five backbone
//! taps, ŷ the channel-unit-normalised features, w_l the learned heads — as PyPI `lpips` 0.1.4
//! computes it (its scaling layer, taps, ε = 1e-10 in the normalisation, 1×1 heads, spatial mean).

use std::path::Path;

use candle_core::{CpuStorage, CustomOp1, DType, Device, Layout, Shape, Tensor, WithDType};
use candle_nn::{Conv2dConfig, VarBuilder};
use ld3_models::layers::Conv2d;
use ld3_models::Checkpoint;
use ld3_solvers::{Error, Result};

use crate::pool::max_pool;

/// The backbone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LpipsNet {
    /// VGG16 (the LD3 paper's training loss): taps relu1_2, relu2_2, relu3_3, relu4_3, relu5_3.
    Vgg16,
    /// AlexNet: the five ReLUs.
    Alex,
}

/// One backbone layer in torchvision's `features` numbering.
enum Layer {
    /// Conv (index, in, out, kernel, stride, padding) + ReLU; `tap` marks a feature output.
    Conv(usize, usize, usize, usize, usize, usize, bool),
    /// Max pool (kernel, stride).
    Pool(usize, usize),
}

impl LpipsNet {
    fn layers(self) -> Vec<Layer> {
        use Layer::{Conv, Pool};
        match self {
            Self::Vgg16 => vec![
                Conv(0, 3, 64, 3, 1, 1, false),
                Conv(2, 64, 64, 3, 1, 1, true),
                Pool(2, 2),
                Conv(5, 64, 128, 3, 1, 1, false),
                Conv(7, 128, 128, 3, 1, 1, true),
                Pool(2, 2),
                Conv(10, 128, 256, 3, 1, 1, false),
                Conv(12, 256, 256, 3, 1, 1, false),
                Conv(14, 256, 256, 3, 1, 1, true),
                Pool(2, 2),
                Conv(17, 256, 512, 3, 1, 1, false),
                Conv(19, 512, 512, 3, 1, 1, false),
                Conv(21, 512, 512, 3, 1, 1, true),
                Pool(2, 2),
                Conv(24, 512, 512, 3, 1, 1, false),
                Conv(26, 512, 512, 3, 1, 1, false),
                Conv(28, 512, 512, 3, 1, 1, true),
            ],
            Self::Alex => vec![
                Conv(0, 3, 64, 11, 4, 2, true),
                Pool(3, 2),
                Conv(3, 64, 192, 5, 1, 2, true),
                Pool(3, 2),
                Conv(6, 192, 384, 3, 1, 1, true),
                Conv(8, 384, 256, 3, 1, 1, true),
                Conv(10, 256, 256, 3, 1, 1, true),
            ],
        }
    }

    /// The backbone's convolutions in torchvision's `features` numbering: (index, input
    /// channels, output channels, kernel size).
    pub fn convolutions(self) -> Vec<(usize, usize, usize, usize)> {
        self.layers()
            .into_iter()
            .filter_map(|l| match l {
                Layer::Conv(i, c_in, c_out, k, ..) => Some((i, c_in, c_out, k)),
                Layer::Pool(..) => None,
            })
            .collect()
    }

    /// The smallest image side the backbone's pooling accepts (VGG16: four 2×2 pools; AlexNet:
    /// a stride-4 11×11 convolution and two 3×3 stride-2 pools).
    pub fn min_size(self) -> usize {
        match self {
            Self::Vgg16 => 16,
            Self::Alex => 31,
        }
    }

    /// Name as the lpips package spells it (`vgg`, `alex`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Vgg16 => "vgg",
            Self::Alex => "alex",
        }
    }

    /// The v0.1 heads of PyPI `lpips` 0.1.4, as safetensors (converted by
    /// fixtures/gen/lpips_fixtures.py).
    pub fn heads_v01(self) -> &'static [u8] {
        match self {
            Self::Vgg16 => include_bytes!("../weights/lpips-v0.1-vgg.safetensors"),
            Self::Alex => include_bytes!("../weights/lpips-v0.1-alex.safetensors"),
        }
    }
}

impl std::str::FromStr for LpipsNet {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "vgg" | "vgg16" => Ok(Self::Vgg16),
            "alex" | "alexnet" => Ok(Self::Alex),
            other => Err(Error::Invalid(format!(
                "unknown LPIPS backbone {other}: vgg or alex"
            ))),
        }
    }
}

enum Op {
    Conv(Conv2d, bool),
    Pool(usize, usize),
}

/// LPIPS with its backbone and heads; inputs in [−1, 1], [B, 1 or 3, H, W] (grey is repeated to
/// RGB); differentiable in both inputs.
pub struct Lpips {
    net: LpipsNet,
    ops: Vec<Op>,
    heads: Vec<Tensor>,
    /// The scaling layer's shift and scale, [1, 3, 1, 1].
    shift: Tensor,
    scale: Tensor,
    dtype: DType,
}

/// The lpips package's ScalingLayer: (x − shift)/scale per RGB channel.
const SHIFT: [f64; 3] = [-0.030, -0.088, -0.188];
const SCALE: [f64; 3] = [0.458, 0.448, 0.450];

impl Lpips {
    /// From a backbone in torchvision's names (`features.N.weight`/`.bias`: torchvision's
    /// `vgg16`/`alexnet` state dicts, timm's `vgg16.tv_in1k`) and heads `lin{k}.model.1.weight`.
    pub fn new(net: LpipsNet, backbone: VarBuilder, heads: VarBuilder) -> Result<Self> {
        let mut ops = Vec::new();
        for layer in net.layers() {
            ops.push(match layer {
                Layer::Conv(i, c_in, c_out, k, stride, padding, tap) => {
                    let cfg = Conv2dConfig {
                        stride,
                        padding,
                        ..Default::default()
                    };
                    let conv = candle_nn::conv2d(
                        c_in,
                        c_out,
                        k,
                        cfg,
                        backbone.pp(format!("features.{i}")),
                    )?;
                    Op::Conv(Conv2d(conv), tap)
                }
                Layer::Pool(k, s) => Op::Pool(k, s),
            });
        }
        let widths: Vec<usize> = net
            .layers()
            .iter()
            .filter_map(|l| match l {
                Layer::Conv(_, _, c, _, _, _, true) => Some(*c),
                _ => None,
            })
            .collect();
        let heads = widths
            .iter()
            .enumerate()
            .map(|(k, &c)| heads.get((1, c, 1, 1), &format!("lin{k}.model.1.weight")))
            .collect::<candle_core::Result<_>>()?;
        let (dtype, dev) = (backbone.dtype(), backbone.device().clone());
        let constant = |v: &[f64; 3]| -> candle_core::Result<Tensor> {
            Tensor::new(v, &dev)?.to_dtype(dtype)?.reshape((1, 3, 1, 1))
        };
        Ok(Self {
            net,
            ops,
            heads,
            shift: constant(&SHIFT)?,
            scale: constant(&SCALE)?,
            dtype,
        })
    }

    /// Backbone weights from a file (safetensors, or a torchvision `.pth`), the v0.1 heads
    /// compiled in; computing in `dtype` on `device`.
    pub fn load(net: LpipsNet, backbone: &Path, dtype: DType, device: &Device) -> Result<Self> {
        let ckpt = Checkpoint::from_file(backbone)?;
        let heads = Checkpoint::from_safetensors_bytes(net.heads_v01(), "lpips v0.1 heads")?;
        let lpips = Self::new(
            net,
            ckpt.var_builder(dtype, device),
            heads.var_builder(dtype, device),
        )
        .map_err(|e| {
            Error::Invalid(format!(
                "{}: not a {} backbone ({e})",
                backbone.display(),
                net.as_str()
            ))
        })?;
        Ok(lpips)
    }

    /// The backbone.
    pub fn net(&self) -> LpipsNet {
        self.net
    }

    fn features(&self, x: &Tensor) -> Result<Vec<Tensor>> {
        let mut h = x.broadcast_sub(&self.shift)?.broadcast_div(&self.scale)?;
        let mut taps = Vec::with_capacity(5);
        for op in &self.ops {
            h = match op {
                Op::Conv(conv, tap) => {
                    let h = conv.forward_relu(&h)?;
                    if *tap {
                        taps.push(h.clone());
                    }
                    h
                }
                Op::Pool(k, s) => max_pool(&h, *k, *s)?,
            };
        }
        Ok(taps)
    }

    /// LPIPS per sample [B] between `x0` and `x1` (same shape, values in [−1, 1]); the result
    /// has the inputs' dtype.
    pub fn per_sample(&self, x0: &Tensor, x1: &Tensor) -> Result<Tensor> {
        if x0.dims() != x1.dims() || x0.rank() != 4 || !matches!(x0.dim(1)?, 1 | 3) {
            return Err(Error::Invalid(format!(
                "LPIPS compares two [B, 1 or 3, H, W] batches of the same shape, got {:?} and {:?}",
                x0.dims(),
                x1.dims()
            )));
        }
        let min = self.net.min_size();
        if x0.dim(2)?.min(x0.dim(3)?) < min {
            return Err(Error::Invalid(format!(
                "LPIPS-{} needs images of at least {min}x{min} pixels, got {:?}",
                self.net.as_str(),
                x0.dims()
            )));
        }
        let rgb = |x: &Tensor| -> Result<Tensor> {
            let x = x.to_dtype(self.dtype)?;
            Ok(if x.dim(1)? == 1 {
                x.repeat((1, 3, 1, 1))?
            } else {
                x
            })
        };
        let b = x0.dim(0)?;
        // One backbone pass over both batches.
        let both = Tensor::cat(&[rgb(x0)?, rgb(x1)?], 0)?;
        let feats = self.features(&both)?;
        let mut total: Option<Tensor> = None;
        for (f, w) in feats.iter().zip(&self.heads) {
            let d = layer_distance(f, w, b)?;
            total = Some(match total {
                Some(t) => (t + d)?,
                None => d,
            });
        }
        Ok(total.expect("five taps").to_dtype(x0.dtype())?)
    }
}

/// ε added to the channel norm, as `lpips.normalize_tensor`.
const NORM_EPS: f64 = 1e-10;

/// Added under the norm's square root, √(Σf² + 1e-30): the same value to the last bit wherever
/// Σf² > 1e-14 (f64), and a finite derivative where every channel is 0 (√'s at 0 is ∞, times
/// 2f = 0: NaN, in candle and PyTorch alike).
const NORM_TINY: f64 = 1e-30;

/// One tap's term of LPIPS for features `f` [2B, C, H, W] of both batches (x₀'s first) and the
/// head `w` [1, C, 1, 1]: per pixel each side unit-normalised over the channels (by √(Σf² + 1e-30) + ε), the
/// squared difference weighted by the head and summed over channels, then averaged over the
/// pixels → [B]. With the own ops on, for f32/f64 on the CPU, one op over the features (a pass
/// forward, one backward) instead of ten whole-tensor ops and their gradients; otherwise the
/// composite.
fn layer_distance(f: &Tensor, w: &Tensor, b: usize) -> Result<Tensor> {
    let own = ld3_models::layers::own_ops()
        && f.device().is_cpu()
        && matches!(f.dtype(), DType::F32 | DType::F64)
        && !w.track_op();
    if !own {
        return layer_distance_composite(f, w, b);
    }
    if f.rank() != 4 || f.dim(0)? != 2 * b || w.dims() != [1, f.dim(1)?, 1, 1] {
        return Err(Error::Invalid(format!(
            "LPIPS layer: features {:?} and head {:?} are not two batches of {b} and [1, C, 1, 1]",
            f.dims(),
            w.dims()
        )));
    }
    let w = w.flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>()?;
    Ok(f.contiguous()?.apply_op1(LayerDistance { w })?)
}

/// [`layer_distance`] from candle's ops (the reference of the fused op, and its path off the CPU).
fn layer_distance_composite(f: &Tensor, w: &Tensor, b: usize) -> Result<Tensor> {
    let norm = ((f.sqr()?.sum_keepdim(1)? + NORM_TINY)?.sqrt()? + NORM_EPS)?;
    let f = f.broadcast_div(&norm)?;
    let diff = f.narrow(0, 0, b)?.sub(&f.narrow(0, b, b)?)?.sqr()?;
    // The 1×1 head without bias, then the spatial mean.
    let weighted = diff.broadcast_mul(w)?.sum_keepdim(1)?;
    Ok(weighted.flatten_from(1)?.mean(1)?)
}

/// [`layer_distance`] as an op; `w` the head's channel weights.
struct LayerDistance {
    w: Vec<f64>,
}

/// Per pixel of one image's features `f` [C, HW]: √(Σ_c f² + [`NORM_TINY`]).
fn channel_norms<T: WithDType>(f: &[T], hw: usize) -> Vec<f64> {
    let mut s = vec![0f64; hw];
    for row in f.chunks_exact(hw) {
        for (s, v) in s.iter_mut().zip(row) {
            let v = v.to_f64();
            *s += v * v;
        }
    }
    s.iter_mut().for_each(|s| *s = (*s + NORM_TINY).sqrt());
    s
}

impl LayerDistance {
    /// The term of the pair (`f0`, `f1`), each [C, HW].
    fn pair<T: WithDType>(&self, f0: &[T], f1: &[T], hw: usize) -> f64 {
        let (n0, n1) = (channel_norms(f0, hw), channel_norms(f1, hw));
        let mut total = 0.0;
        for ((r0, r1), w) in f0.chunks_exact(hw).zip(f1.chunks_exact(hw)).zip(&self.w) {
            let mut acc = 0.0;
            for p in 0..hw {
                let r = r0[p].to_f64() / (n0[p] + NORM_EPS) - r1[p].to_f64() / (n1[p] + NORM_EPS);
                acc += r * r;
            }
            total += w * acc;
        }
        total / hw as f64
    }

    /// The gradient in `mine` (either side of a pair, [C, HW]) of `scale` × the pair's term (it
    /// is symmetric in the two sides): with r = mine/n − other/n', g_c = 2·scale·w_c·r_c/HW per
    /// pixel, then ∂f_k = g_k/n − f_k·(Σ_c g_c f_c)/(n²·ρ), ρ = √(Σf² + [`NORM_TINY`]),
    /// n = ρ + ε.
    fn side_gradient<T: WithDType>(
        &self,
        (mine, nm): (&[T], &[f64]),
        (other, no): (&[T], &[f64]),
        scale: f64,
        out: &mut [T],
    ) {
        let (c, hw) = (self.w.len(), nm.len());
        let mut g = vec![0f64; c * hw];
        let mut dot = vec![0f64; hw];
        let k = 2.0 * scale / hw as f64;
        for ch in 0..c {
            let (rm, ro) = (&mine[ch * hw..][..hw], &other[ch * hw..][..hw]);
            let gc = &mut g[ch * hw..][..hw];
            for p in 0..hw {
                let fm = rm[p].to_f64();
                let r = fm / (nm[p] + NORM_EPS) - ro[p].to_f64() / (no[p] + NORM_EPS);
                gc[p] = k * self.w[ch] * r;
                dot[p] += gc[p] * fm;
            }
        }
        for ch in 0..c {
            let (rm, gc) = (&mine[ch * hw..][..hw], &g[ch * hw..][..hw]);
            for p in 0..hw {
                let n = nm[p] + NORM_EPS;
                let radial = rm[p].to_f64() * dot[p] / (n * n * nm[p]);
                out[ch * hw + p] = T::from_f64(gc[p] / n - radial);
            }
        }
    }

    fn forward<T: WithDType>(&self, x: &[T], dims: &[usize]) -> Vec<T> {
        let (b, per) = (dims[0] / 2, x.len() / dims[0].max(1));
        let hw = per / self.w.len().max(1);
        let mut out = vec![T::zero(); b];
        ld3_models::layers::parallel::chunks(&mut out, 1, true, |(i, slot)| {
            slot[0] = T::from_f64(self.pair(&x[i * per..][..per], &x[(b + i) * per..][..per], hw));
        });
        out
    }

    fn backward<T: WithDType>(&self, x: &[T], grad: &[T], dims: &[usize]) -> Vec<T> {
        let (b, per) = (dims[0] / 2, x.len() / dims[0].max(1));
        let hw = per / self.w.len().max(1);
        let image = |j: usize| &x[j * per..][..per];
        // Each image's norms once (both sides' gradients read them).
        let mut norms = vec![0f64; 2 * b * hw];
        ld3_models::layers::parallel::chunks(&mut norms, hw, true, |(j, n)| {
            n.copy_from_slice(&channel_norms(image(j), hw))
        });
        let norm = |j: usize| &norms[j * hw..][..hw];
        let mut dx = vec![T::zero(); x.len()];
        ld3_models::layers::parallel::chunks(&mut dx, per, true, |(j, out)| {
            // Image j of the features is x₀'s i-th (j < B) or x₁'s; its partner the other one.
            let (i, partner) = if j < b { (j, b + j) } else { (j - b, j - b) };
            let (mine, other) = ((image(j), norm(j)), (image(partner), norm(partner)));
            self.side_gradient(mine, other, grad[i].to_f64(), out);
        });
        dx
    }
}

impl CustomOp1 for LayerDistance {
    fn name(&self) -> &'static str {
        "lpips-layer"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let dims = layout.dims().to_vec();
        let out = ld3_models::layers::cpu_forward(
            storage,
            layout,
            self.name(),
            |x| Ok(self.forward(x, &dims)),
            |x| Ok(self.forward(x, &dims)),
        )?;
        Ok((out, Shape::from(dims[0] / 2)))
    }

    fn bwd(
        &self,
        arg: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let arg = arg.detach().contiguous()?;
        ld3_models::layers::cpu_input_gradient(
            &arg,
            &grad.to_dtype(arg.dtype())?,
            "lpips-layer backward",
            |x, g, dims| self.backward(x, g, dims),
            |x, g, dims| self.backward(x, g, dims),
        )
        .map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Var;

    /// ReLU-like features [2B, C, H, W] = [4, 5, 3, 4]: random, about two thirds of the values 0
    /// (some pixels 0 in every channel, where only ε keeps the division finite), and one pixel of
    /// the first image 0 in every channel for certain.
    fn features(dtype: DType) -> Tensor {
        let dev = Device::Cpu;
        let f = ld3_solvers::rng::standard_normal(11, 4, &[5, 3, 4], DType::F64, &dev).unwrap();
        let f = (f - 0.4).unwrap().relu().unwrap();
        let zero = Tensor::zeros((1, 5, 1, 1), DType::F64, &dev).unwrap();
        let f = f.slice_assign(&[0..1, 0..5, 1..2, 2..3], &zero).unwrap();
        f.to_dtype(dtype).unwrap()
    }

    /// 1 where a pixel has a feature other than 0, else 0, broadcast over the channels.
    fn nonzero_pixels(f: &Tensor) -> Tensor {
        let s = f.sqr().unwrap().sum_keepdim(1).unwrap();
        let any = s.gt(0.0).unwrap().to_dtype(f.dtype()).unwrap();
        any.broadcast_as(f.dims()).unwrap().contiguous().unwrap()
    }

    fn max_abs(t: Tensor) -> f64 {
        ld3_testing::max_abs(&t)
    }

    /// ⟨weights, the op's (or the composite's) value⟩ and its gradient in `f`.
    fn value_and_gradient(
        f: &Tensor,
        w: &Tensor,
        weights: &Tensor,
        fused: bool,
    ) -> (Tensor, Tensor) {
        let var = Var::from_tensor(f).unwrap();
        let d = if fused {
            let w = w.flatten_all().unwrap().to_dtype(DType::F64).unwrap();
            let w = w.to_vec1::<f64>().unwrap();
            var.as_tensor().apply_op1(LayerDistance { w }).unwrap()
        } else {
            layer_distance_composite(var.as_tensor(), w, f.dim(0).unwrap() / 2).unwrap()
        };
        let g = d.mul(weights).unwrap().sum_all().unwrap().backward();
        (d, g.unwrap().get(&var).unwrap().clone())
    }

    /// The fused op (as `layer_distance` dispatches it, and applied directly) equals the
    /// composite, value and gradient in both sides' features: f64 to 1e-12, f32 to 1e-6 of the
    /// values' scale — also at the pixels whose features are all 0, where the derivative is
    /// about 1/ε (both take the norm as √(Σf² + 1e-30)). A head of another shape is refused.
    #[test]
    fn fused_layer_distance_equals_the_composite() {
        let dev = Device::Cpu;
        for (dtype, tol) in [(DType::F64, 1e-12), (DType::F32, 1e-6)] {
            let w = Tensor::new(&[0.3f64, 1.2, 0.5, 0.9, 0.1], &dev).unwrap();
            let w = w.reshape((1, 5, 1, 1)).unwrap().to_dtype(dtype).unwrap();
            let f = features(dtype);
            let weights = Tensor::new(&[0.7f64, -1.3], &dev).unwrap();
            let weights = weights.to_dtype(dtype).unwrap();
            let (d, g) = value_and_gradient(&f, &w, &weights, true);
            let (d_ref, g_ref) = value_and_gradient(&f, &w, &weights, false);
            let dispatched = layer_distance(&f, &w, 2).unwrap();
            let as_f64 = |t: &Tensor| t.to_dtype(DType::F64).unwrap().to_vec1::<f64>().unwrap();
            assert_eq!(as_f64(&dispatched), as_f64(&d), "{dtype:?}: dispatch");
            let scale = max_abs(d_ref.clone());
            assert!(max_abs((&d - &d_ref).unwrap()) <= tol * scale, "{dtype:?}");
            // All-zero pixels exist, and their gradient is the large 1/ε one on both paths.
            let keep = nonzero_pixels(&f);
            let zero = (keep.ones_like().unwrap() - &keep).unwrap();
            assert!(max_abs((&g * &zero).unwrap()) > 1e6, "{dtype:?}");
            for (what, mask) in [("elsewhere", &keep), ("at all-zero pixels", &zero)] {
                let (g, g_ref) = ((&g * mask).unwrap(), (&g_ref * mask).unwrap());
                let gscale = max_abs(g_ref.clone());
                assert!(gscale > 0.0 && gscale.is_finite(), "{dtype:?} {what}");
                assert!(
                    max_abs((&g - &g_ref).unwrap()) <= tol * gscale,
                    "{dtype:?}: gradient {what}"
                );
            }
            let bad = w.reshape(5).unwrap();
            let e = layer_distance(&f, &bad, 2).unwrap_err().to_string();
            assert!(e.contains("[1, C, 1, 1]"), "{e}");
        }
    }

    /// The op's gradient equals central finite differences of its value (f64) along a random
    /// direction over the pixels with features (at an all-0 pixel the value bends within ε of 0,
    /// far below any usable step).
    #[test]
    fn fused_layer_distance_gradient_is_its_derivative() {
        let dev = Device::Cpu;
        let w = Tensor::new(&[0.3f64, 1.2, 0.5, 0.9, 0.1], &dev).unwrap();
        let w = w.reshape((1, 5, 1, 1)).unwrap();
        let f = features(DType::F64);
        let v = ld3_solvers::rng::standard_normal(12, 4, &[5, 3, 4], DType::F64, &dev).unwrap();
        let v = (v * nonzero_pixels(&f)).unwrap();
        let weights = Tensor::new(&[0.7f64, -1.3], &dev).unwrap();
        let value = |x: &Tensor| -> f64 {
            let (d, _) = value_and_gradient(x, &w, &weights, true);
            d.mul(&weights)
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar()
                .unwrap()
        };
        let (_, g) = value_and_gradient(&f, &w, &weights, true);
        let analytic: f64 = (g * &v).unwrap().sum_all().unwrap().to_scalar().unwrap();
        let h = 1e-6;
        let step = (&v * h).unwrap();
        let numeric = (value(&(&f + &step).unwrap()) - value(&(&f - &step).unwrap())) / (2.0 * h);
        eprintln!("directional derivative: {analytic} analytic, {numeric} numeric");
        assert!(
            (analytic - numeric).abs() <= 1e-6 * analytic.abs().max(1e-3),
            "{analytic} vs {numeric}"
        );
    }
}
