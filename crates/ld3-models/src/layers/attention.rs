//! Attention from differentiable ops (matmul + `softmax`, no fused kernels).

use candle_core::{Module, Result, Tensor, D};
use candle_nn::{GroupNorm, Linear, VarBuilder};

use super::conv::divided;
use super::resnet::Norms;

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
