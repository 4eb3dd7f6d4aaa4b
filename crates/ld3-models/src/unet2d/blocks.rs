//! The building blocks of diffusers' UNet2DModel, written only with ops whose backward candle
//! computes correctly (no fused softmax/norms, nearest upsampling by broadcast), so the network
//! is differentiable in its input and its time input.

use candle_core::{Module, Result, Tensor, D};
use candle_nn::{Conv2d, Conv2dConfig, GroupNorm, Linear, VarBuilder};

/// 3×3 (or k×k) convolution with bias.
pub fn conv(
    c_in: usize,
    c_out: usize,
    k: usize,
    stride: usize,
    padding: usize,
    vb: VarBuilder,
) -> Result<Conv2d> {
    let cfg = Conv2dConfig {
        padding,
        stride,
        ..Default::default()
    };
    candle_nn::conv2d(c_in, c_out, k, cfg, vb)
}

/// Nearest-neighbour ×2 upsampling as a broadcast (its backward adds, unlike
/// `upsample_nearest2d`'s when the input has other consumers).
pub fn upsample_nearest_2x(x: &Tensor) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    x.reshape((b, c, h, 1, w, 1))?
        .broadcast_as((b, c, h, 2, w, 2))?
        .reshape((b, c, 2 * h, 2 * w))
}

/// `x / factor`, skipping the division for the usual factor 1.
fn divided(x: Tensor, factor: f64) -> Result<Tensor> {
    if factor == 1.0 {
        Ok(x)
    } else {
        x / factor
    }
}

/// diffusers' `get_timestep_embedding`: sinusoids of `timesteps` [B] at `dim` frequencies
/// exp(−ln(10⁴)·i/(dim/2 − shift)), halves ordered (cos, sin) when `flip_sin_to_cos`.
pub fn timestep_embedding(
    timesteps: &Tensor,
    dim: usize,
    flip_sin_to_cos: bool,
    freq_shift: f64,
) -> Result<Tensor> {
    let half = dim / 2;
    let freqs: Vec<f64> = (0..half)
        .map(|i| (-(10_000f64.ln()) * i as f64 / (half as f64 - freq_shift)).exp())
        .collect();
    let freqs = Tensor::new(freqs, timesteps.device())?.to_dtype(timesteps.dtype())?;
    let args = timesteps
        .unsqueeze(1)?
        .broadcast_mul(&freqs.unsqueeze(0)?)?;
    let (sin, cos) = (args.sin()?, args.cos()?);
    let emb = if flip_sin_to_cos {
        Tensor::cat(&[cos, sin], 1)?
    } else {
        Tensor::cat(&[sin, cos], 1)?
    };
    if dim % 2 == 1 {
        emb.pad_with_zeros(1, 0, 1)
    } else {
        Ok(emb)
    }
}

/// `TimestepEmbedding`: linear → SiLU → linear.
pub struct TimestepMlp {
    linear_1: Linear,
    linear_2: Linear,
}

impl TimestepMlp {
    /// Keys `linear_1`, `linear_2`.
    pub fn new(c_in: usize, c_out: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            linear_1: candle_nn::linear(c_in, c_out, vb.pp("linear_1"))?,
            linear_2: candle_nn::linear(c_out, c_out, vb.pp("linear_2"))?,
        })
    }

    /// The embedding of the sinusoids `t_emb`.
    pub fn forward(&self, t_emb: &Tensor) -> Result<Tensor> {
        self.linear_2
            .forward(&self.linear_1.forward(t_emb)?.silu()?)
    }
}

/// Shape of one ResNet or attention block.
#[derive(Clone, Copy)]
pub struct Norms {
    /// GroupNorm groups.
    pub groups: usize,
    /// GroupNorm epsilon.
    pub eps: f64,
}

/// `ResnetBlock2D`: GN → SiLU → conv → (+ time, or scale/shift) → GN → SiLU → conv, plus a 1×1
/// shortcut when the width changes; divided by `output_scale_factor`.
pub struct ResnetBlock {
    norm1: GroupNorm,
    conv1: Conv2d,
    time_emb_proj: Linear,
    norm2: GroupNorm,
    conv2: Conv2d,
    conv_shortcut: Option<Conv2d>,
    scale_shift: bool,
    output_scale_factor: f64,
}

impl ResnetBlock {
    /// Keys `norm1`, `conv1`, `time_emb_proj`, `norm2`, `conv2`, `conv_shortcut`.
    pub fn new(
        c_in: usize,
        c_out: usize,
        temb: usize,
        norms: Norms,
        scale_shift: bool,
        output_scale_factor: f64,
        vb: VarBuilder,
    ) -> Result<Self> {
        let proj_out = if scale_shift { 2 * c_out } else { c_out };
        Ok(Self {
            norm1: candle_nn::group_norm(norms.groups, c_in, norms.eps, vb.pp("norm1"))?,
            conv1: conv(c_in, c_out, 3, 1, 1, vb.pp("conv1"))?,
            time_emb_proj: candle_nn::linear(temb, proj_out, vb.pp("time_emb_proj"))?,
            norm2: candle_nn::group_norm(norms.groups, c_out, norms.eps, vb.pp("norm2"))?,
            conv2: conv(c_out, c_out, 3, 1, 1, vb.pp("conv2"))?,
            conv_shortcut: if c_in != c_out {
                Some(conv(c_in, c_out, 1, 1, 0, vb.pp("conv_shortcut"))?)
            } else {
                None
            },
            scale_shift,
            output_scale_factor,
        })
    }

    /// `x` [B, C_in, H, W] and the time embedding `temb` [B, T].
    pub fn forward(&self, x: &Tensor, temb: &Tensor) -> Result<Tensor> {
        let h = self.conv1.forward(&self.norm1.forward(x)?.silu()?)?;
        let t = self
            .time_emb_proj
            .forward(&temb.silu()?)?
            .unsqueeze(2)?
            .unsqueeze(3)?;
        let h = if self.scale_shift {
            let c = h.dim(1)?;
            let (scale, shift) = (t.narrow(1, 0, c)?, t.narrow(1, c, c)?);
            self.norm2
                .forward(&h)?
                .broadcast_mul(&(scale + 1.0)?)?
                .broadcast_add(&shift)?
        } else {
            self.norm2.forward(&h.broadcast_add(&t)?)?
        };
        let h = self.conv2.forward(&h.silu()?)?;
        let skip = match &self.conv_shortcut {
            Some(c) => c.forward(x)?,
            None => x.clone(),
        };
        divided((skip + h)?, self.output_scale_factor)
    }
}

/// Spatial self-attention (diffusers' `Attention` as built from the deprecated attention
/// block): GN, multi-head softmax(QKᵀ/√d)V, output projection, residual, ÷ rescale. Reads both
/// key spellings, `to_q/to_k/to_v/to_out.0` and the legacy `query/key/value/proj_attn`.
pub struct SelfAttention {
    group_norm: Option<GroupNorm>,
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
    heads: usize,
    rescale: f64,
}

impl SelfAttention {
    /// `channels` split into heads of `head_dim`; `norms` `None` for no GroupNorm.
    pub fn new(
        channels: usize,
        head_dim: usize,
        norms: Option<Norms>,
        rescale: f64,
        vb: VarBuilder,
    ) -> Result<Self> {
        let legacy = vb.contains_tensor("query.weight");
        let names = if legacy {
            ["query", "key", "value", "proj_attn"]
        } else {
            ["to_q", "to_k", "to_v", "to_out.0"]
        };
        let lin = |n: &str| candle_nn::linear(channels, channels, vb.pp(n));
        Ok(Self {
            group_norm: match norms {
                Some(n) => Some(candle_nn::group_norm(
                    n.groups,
                    channels,
                    n.eps,
                    vb.pp("group_norm"),
                )?),
                None => None,
            },
            to_q: lin(names[0])?,
            to_k: lin(names[1])?,
            to_v: lin(names[2])?,
            to_out: lin(names[3])?,
            heads: channels / head_dim,
            rescale,
        })
    }

    /// `x` [B, C, H, W].
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let (heads, d) = (self.heads, c / self.heads);
        let normed = match &self.group_norm {
            Some(n) => n.forward(x)?,
            None => x.clone(),
        };
        let tokens = normed
            .reshape((b, c, h * w))?
            .transpose(1, 2)?
            .contiguous()?;
        let split = |l: &Linear| -> Result<Tensor> {
            l.forward(&tokens)?
                .reshape((b, h * w, heads, d))?
                .transpose(1, 2)?
                .contiguous()
        };
        let (q, k, v) = (split(&self.to_q)?, split(&self.to_k)?, split(&self.to_v)?);
        let scores = (q.matmul(&k.t()?.contiguous()?)? * (1.0 / (d as f64).sqrt()))?;
        // `ops::softmax`, not `softmax_last_dim`: the fused one has no backward.
        let probs = candle_nn::ops::softmax(&scores, D::Minus1)?;
        let out = probs.matmul(&v)?.transpose(1, 2)?.reshape((b, h * w, c))?;
        let out = self
            .to_out
            .forward(&out)?
            .transpose(1, 2)?
            .reshape((b, c, h, w))?;
        divided((out + x)?, self.rescale)
    }
}

/// `DownBlock2D` / `AttnDownBlock2D`: ResNets (each followed by attention in the Attn kind),
/// then an optional strided-conv downsampler. Returns every intermediate state for the skips.
pub struct DownBlock {
    resnets: Vec<ResnetBlock>,
    attentions: Vec<SelfAttention>,
    downsampler: Option<(Conv2d, usize)>,
}

/// What builds one level.
pub struct Level {
    /// Input channels.
    pub c_in: usize,
    /// Output channels.
    pub c_out: usize,
    /// Time embedding width.
    pub temb: usize,
    /// ResNet norms.
    pub norms: Norms,
    /// Attention norms (`None`: no GroupNorm before attention).
    pub attn_norms: Option<Norms>,
    /// Channels per head (`None`: no attention).
    pub head_dim: Option<usize>,
    /// Scale-shift time conditioning.
    pub scale_shift: bool,
}

impl Level {
    /// Layer `i` of a block: a ResNet from `c_in` channels and, at attention levels, the
    /// attention after it.
    fn layer(
        &self,
        c_in: usize,
        i: usize,
        vb: &VarBuilder,
    ) -> Result<(ResnetBlock, Option<SelfAttention>)> {
        let resnet = ResnetBlock::new(
            c_in,
            self.c_out,
            self.temb,
            self.norms,
            self.scale_shift,
            1.0,
            vb.pp(format!("resnets.{i}")),
        )?;
        let attention = match self.head_dim {
            Some(hd) => Some(SelfAttention::new(
                self.c_out,
                hd,
                self.attn_norms,
                1.0,
                vb.pp(format!("attentions.{i}")),
            )?),
            None => None,
        };
        Ok((resnet, attention))
    }
}

impl DownBlock {
    /// `layers` ResNets; `downsample_padding` as in the config, `None` for the last level.
    pub fn new(
        level: &Level,
        layers: usize,
        downsample: Option<usize>,
        vb: VarBuilder,
    ) -> Result<Self> {
        let mut resnets = Vec::new();
        let mut attentions = Vec::new();
        for i in 0..layers {
            let c_in = if i == 0 { level.c_in } else { level.c_out };
            let (resnet, attention) = level.layer(c_in, i, &vb)?;
            resnets.push(resnet);
            attentions.extend(attention);
        }
        let downsampler = match downsample {
            Some(pad) => Some((
                conv(
                    level.c_out,
                    level.c_out,
                    3,
                    2,
                    pad,
                    vb.pp("downsamplers.0.conv"),
                )?,
                pad,
            )),
            None => None,
        };
        Ok(Self {
            resnets,
            attentions,
            downsampler,
        })
    }

    /// The block's output and the states it hands to the up path.
    pub fn forward(&self, x: &Tensor, temb: &Tensor) -> Result<(Tensor, Vec<Tensor>)> {
        let mut h = x.clone();
        let mut states = Vec::new();
        for (i, r) in self.resnets.iter().enumerate() {
            h = r.forward(&h, temb)?;
            if let Some(a) = self.attentions.get(i) {
                h = a.forward(&h)?;
            }
            states.push(h.clone());
        }
        if let Some((conv, pad)) = &self.downsampler {
            let input = if *pad == 0 {
                // diffusers pads right and bottom by one when the conv itself does not pad.
                h.pad_with_zeros(3, 0, 1)?.pad_with_zeros(2, 0, 1)?
            } else {
                h
            };
            h = conv.forward(&input)?;
            states.push(h.clone());
        }
        Ok((h, states))
    }
}

/// `UpBlock2D` / `AttnUpBlock2D`: each ResNet takes the running state concatenated with one
/// skip state (the latest first); attention after each ResNet in the Attn kind; nearest ×2
/// upsampling and a conv unless it is the last level.
pub struct UpBlock {
    resnets: Vec<ResnetBlock>,
    attentions: Vec<SelfAttention>,
    upsampler: Option<Conv2d>,
}

impl UpBlock {
    /// `level.c_in` is the skip width of the last ResNet, `prev` the width coming from below.
    pub fn new(
        level: &Level,
        prev: usize,
        layers: usize,
        upsample: bool,
        vb: VarBuilder,
    ) -> Result<Self> {
        let mut resnets = Vec::new();
        let mut attentions = Vec::new();
        for i in 0..layers {
            let skip = if i == layers - 1 {
                level.c_in
            } else {
                level.c_out
            };
            let c_in = if i == 0 { prev } else { level.c_out };
            let (resnet, attention) = level.layer(c_in + skip, i, &vb)?;
            resnets.push(resnet);
            attentions.extend(attention);
        }
        let upsampler = if upsample {
            Some(conv(
                level.c_out,
                level.c_out,
                3,
                1,
                1,
                vb.pp("upsamplers.0.conv"),
            )?)
        } else {
            None
        };
        Ok(Self {
            resnets,
            attentions,
            upsampler,
        })
    }

    /// Number of skip states this block consumes.
    pub fn num_skips(&self) -> usize {
        self.resnets.len()
    }

    /// `skips` in the order they were produced; consumed from the back.
    pub fn forward(&self, x: &Tensor, skips: &[Tensor], temb: &Tensor) -> Result<Tensor> {
        let mut h = x.clone();
        for (i, r) in self.resnets.iter().enumerate() {
            let skip = &skips[skips.len() - 1 - i];
            h = r.forward(&Tensor::cat(&[&h, skip], 1)?, temb)?;
            if let Some(a) = self.attentions.get(i) {
                h = a.forward(&h)?;
            }
        }
        match &self.upsampler {
            Some(c) => c.forward(&upsample_nearest_2x(&h)?),
            None => Ok(h),
        }
    }
}

/// `UNetMidBlock2D`: ResNet → (attention) → ResNet.
pub struct MidBlock {
    resnet_0: ResnetBlock,
    attention: Option<SelfAttention>,
    resnet_1: ResnetBlock,
}

impl MidBlock {
    /// Keys `resnets.{0,1}`, `attentions.0`.
    pub fn new(level: &Level, output_scale_factor: f64, vb: VarBuilder) -> Result<Self> {
        let c = level.c_out;
        let res = |i: usize| {
            ResnetBlock::new(
                c,
                c,
                level.temb,
                level.norms,
                level.scale_shift,
                output_scale_factor,
                vb.pp(format!("resnets.{i}")),
            )
        };
        Ok(Self {
            resnet_0: res(0)?,
            attention: match level.head_dim {
                Some(hd) => Some(SelfAttention::new(
                    c,
                    hd,
                    level.attn_norms,
                    output_scale_factor,
                    vb.pp("attentions.0"),
                )?),
                None => None,
            },
            resnet_1: res(1)?,
        })
    }

    /// The mid block on `x`.
    pub fn forward(&self, x: &Tensor, temb: &Tensor) -> Result<Tensor> {
        let mut h = self.resnet_0.forward(x, temb)?;
        if let Some(a) = &self.attention {
            h = a.forward(&h)?;
        }
        self.resnet_1.forward(&h, temb)
    }
}
