//! LPIPS v0.1 (Zhang et al. 2018, "The Unreasonable Effectiveness of Deep Features as a
//! Perceptual Metric", Eq. 1): d(x₀, x₁) = Σ_l mean_hw ‖w_l ⊙ (ŷ⁰_l − ŷ¹_l)‖² over five backbone
//! taps, ŷ the channel-unit-normalised features, w_l the learned heads — as PyPI `lpips` 0.1.4
//! computes it (its scaling layer, taps, ε = 1e-10 in the normalisation, 1×1 heads, spatial mean).

use std::path::Path;

use candle_core::{DType, Device, Tensor};
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
            let norm = (f.sqr()?.sum_keepdim(1)?.sqrt()? + 1e-10)?;
            let f = f.broadcast_div(&norm)?;
            let diff = f.narrow(0, 0, b)?.sub(&f.narrow(0, b, b)?)?.sqr()?;
            // The 1×1 head without bias, then the spatial mean.
            let weighted = diff.broadcast_mul(w)?.sum_keepdim(1)?;
            let d = weighted.flatten_from(1)?.mean(1)?;
            total = Some(match total {
                Some(t) => (t + d)?,
                None => d,
            });
        }
        Ok(total.expect("five taps").to_dtype(x0.dtype())?)
    }
}
