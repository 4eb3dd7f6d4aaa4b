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
        let normed = match &self.group_norm {
            Some(n) => n.forward(x)?,
            None => x.clone(),
        };
        let tokens = normed
            .reshape((b, c, h * w))?
            .transpose(1, 2)?
            .contiguous()?;
        let out = multi_head_attention(
            &self.to_q.forward(&tokens)?,
            &self.to_k.forward(&tokens)?,
            &self.to_v.forward(&tokens)?,
            self.heads,
            false,
        )?;
        let out = self
            .to_out
            .forward(&out)?
            .transpose(1, 2)?
            .reshape((b, c, h, w))?;
        divided((out + x)?, self.rescale)
    }
}

/// Multi-head scaled dot-product attention: queries `q` [B, Lq, C], keys `k` and values `v`
/// [B, Lk, C], `heads` heads of C/heads channels, softmax(QKᵀ/√d)V per head, heads joined back
/// to [B, Lq, C]. `causal` masks every key after its query (CLIP's text encoder). Plain matmul
/// and `softmax` (the fused `softmax_last_dim` has no backward).
pub fn multi_head_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    causal: bool,
) -> Result<Tensor> {
    let (b, lq, c) = q.dims3()?;
    let lk = k.dim(1)?;
    let d = c / heads;
    let split = |t: &Tensor, l: usize| -> Result<Tensor> {
        t.reshape((b, l, heads, d))?.transpose(1, 2)?.contiguous()
    };
    let (q, k, v) = (split(q, lq)?, split(k, lk)?, split(v, lk)?);
    let mut scores = (q.matmul(&k.t()?.contiguous()?)? * (1.0 / (d as f64).sqrt()))?;
    if causal {
        let mask: Vec<f32> = (0..lq)
            .flat_map(|i| (0..lk).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
            .collect();
        let mask = Tensor::from_vec(mask, (lq, lk), q.device())?.to_dtype(scores.dtype())?;
        scores = scores.broadcast_add(&mask)?;
    }
    let probs = candle_nn::ops::softmax(&scores, D::Minus1)?;
    probs.matmul(&v)?.transpose(1, 2)?.reshape((b, lq, c))
}
