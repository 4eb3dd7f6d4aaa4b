//! The spatial transformer of latent-diffusion UNets (diffusers' `Transformer2DModel` over
//! `BasicTransformerBlock`s): self-attention over the pixels, cross-attention to the text
//! embeddings, a GEGLU feed-forward, each pre-normed and residual. Differentiable in the pixels
//! and the context (shared LayerNorm and attention: no fused kernels).

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::{linear, linear_no_bias, Conv2d, Linear};

use super::{conv, group_norm, multi_head_attention, GroupNorm, LayerNorm};

/// `Attention` as diffusers builds it for UNets: bias-free `to_q`/`to_k`/`to_v`, `to_out.0` with
/// bias; keys and values from the context when one is given (cross-attention).
pub struct Attention {
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
    heads: usize,
}

impl Attention {
    /// `heads` heads of `head_dim` over a `dim`-wide query; keys from `context_dim` channels.
    pub fn new(
        dim: usize,
        context_dim: usize,
        heads: usize,
        head_dim: usize,
        vb: VarBuilder,
    ) -> Result<Self> {
        let inner = heads * head_dim;
        Ok(Self {
            to_q: linear_no_bias(dim, inner, vb.pp("to_q"))?,
            to_k: linear_no_bias(context_dim, inner, vb.pp("to_k"))?,
            to_v: linear_no_bias(context_dim, inner, vb.pp("to_v"))?,
            to_out: linear(inner, dim, vb.pp("to_out.0"))?,
            heads,
        })
    }

    /// `x` [B, L, dim] attending to itself, or to `context` [B, Lc, context_dim].
    pub fn forward(&self, x: &Tensor, context: Option<&Tensor>) -> Result<Tensor> {
        let kv = context.unwrap_or(x);
        let out = multi_head_attention(
            &self.to_q.forward(x)?,
            &self.to_k.forward(kv)?,
            &self.to_v.forward(kv)?,
            self.heads,
            false,
        )?;
        self.to_out.forward(&out)
    }
}

/// `FeedForward` with GEGLU: `net.0.proj` to twice the inner width, value × GELU(gate),
/// `net.2` back.
struct FeedForward {
    proj: Linear,
    out: Linear,
}

impl FeedForward {
    fn new(dim: usize, vb: VarBuilder) -> Result<Self> {
        let inner = 4 * dim;
        Ok(Self {
            proj: linear(dim, 2 * inner, vb.pp("net.0.proj"))?,
            out: linear(inner, dim, vb.pp("net.2"))?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.proj.forward(x)?;
        let half = h.dim(candle_core::D::Minus1)? / 2;
        let value = h.narrow(candle_core::D::Minus1, 0, half)?;
        let gate = h.narrow(candle_core::D::Minus1, half, half)?;
        self.out.forward(&(value * gate.gelu_erf()?)?)
    }
}

/// `BasicTransformerBlock`: x + attn1(LN(x)), + attn2(LN(x), context), + ff(LN(x)).
struct TransformerBlock {
    norm1: LayerNorm,
    attn1: Attention,
    norm2: LayerNorm,
    attn2: Attention,
    norm3: LayerNorm,
    ff: FeedForward,
    only_cross: bool,
}

impl TransformerBlock {
    fn new(shape: &TransformerShape, vb: VarBuilder) -> Result<Self> {
        let dim = shape.heads * shape.head_dim;
        let self_context = if shape.only_cross {
            shape.context_dim
        } else {
            dim
        };
        Ok(Self {
            norm1: LayerNorm::new(dim, 1e-5, vb.pp("norm1"))?,
            attn1: Attention::new(
                dim,
                self_context,
                shape.heads,
                shape.head_dim,
                vb.pp("attn1"),
            )?,
            norm2: LayerNorm::new(dim, 1e-5, vb.pp("norm2"))?,
            attn2: Attention::new(
                dim,
                shape.context_dim,
                shape.heads,
                shape.head_dim,
                vb.pp("attn2"),
            )?,
            norm3: LayerNorm::new(dim, 1e-5, vb.pp("norm3"))?,
            ff: FeedForward::new(dim, vb.pp("ff"))?,
            only_cross: shape.only_cross,
        })
    }

    fn forward(&self, x: &Tensor, context: &Tensor) -> Result<Tensor> {
        let first = if self.only_cross { Some(context) } else { None };
        let x = (self.attn1.forward(&self.norm1.forward(x)?, first)? + x)?;
        let x = (self
            .attn2
            .forward(&self.norm2.forward(&x)?, Some(context))?
            + &x)?;
        self.ff.forward(&self.norm3.forward(&x)?)? + x
    }
}

/// How a spatial transformer is built.
#[derive(Clone, Copy, Debug)]
pub struct TransformerShape {
    /// Channels in and out (the UNet level's width).
    pub channels: usize,
    /// Attention heads.
    pub heads: usize,
    /// Channels per head (heads × head_dim is the inner width).
    pub head_dim: usize,
    /// Width of the context (the text embeddings).
    pub context_dim: usize,
    /// GroupNorm groups before the projection in.
    pub groups: usize,
    /// Linear projections in and out (SD 2.x) instead of 1×1 convolutions (SD 1.x).
    pub linear_projection: bool,
    /// Blocks in the transformer.
    pub layers: usize,
    /// The first attention attends to the context too.
    pub only_cross: bool,
}

/// A 1×1 convolution or a linear map over the channels.
enum Projection {
    Conv(Conv2d),
    Linear(Linear),
}

/// `Transformer2DModel` on continuous input: GroupNorm, projection in, the blocks over the pixels
/// as tokens, projection out, plus the input.
pub struct SpatialTransformer {
    norm: GroupNorm,
    proj_in: Projection,
    blocks: Vec<TransformerBlock>,
    proj_out: Projection,
    inner: usize,
}

impl SpatialTransformer {
    /// Keys `norm`, `proj_in`, `transformer_blocks.{i}`, `proj_out`.
    pub fn new(shape: TransformerShape, vb: VarBuilder) -> Result<Self> {
        let (c, inner) = (shape.channels, shape.heads * shape.head_dim);
        let projection = |i: usize, o: usize, vb: VarBuilder| -> Result<Projection> {
            Ok(if shape.linear_projection {
                Projection::Linear(linear(i, o, vb)?)
            } else {
                Projection::Conv(conv(i, o, 1, 1, 0, vb)?)
            })
        };
        let blocks = (0..shape.layers)
            .map(|i| TransformerBlock::new(&shape, vb.pp(format!("transformer_blocks.{i}"))))
            .collect::<Result<_>>()?;
        Ok(Self {
            norm: group_norm(shape.groups, c, 1e-6, vb.pp("norm"))?,
            proj_in: projection(c, inner, vb.pp("proj_in"))?,
            blocks,
            proj_out: projection(inner, c, vb.pp("proj_out"))?,
            inner,
        })
    }

    /// `x` [B, C, H, W] attending to `context` [B, L, context_dim].
    pub fn forward(&self, x: &Tensor, context: &Tensor) -> Result<Tensor> {
        let (b, _, h, w) = x.dims4()?;
        let normed = self.norm.forward(x)?;
        let to_tokens = |t: &Tensor| -> Result<Tensor> {
            let c = t.dim(1)?;
            t.permute((0, 2, 3, 1))?.reshape((b, h * w, c))
        };
        let mut tokens = match &self.proj_in {
            Projection::Conv(p) => to_tokens(&p.forward(&normed)?)?,
            Projection::Linear(p) => p.forward(&to_tokens(&normed)?)?,
        };
        for block in &self.blocks {
            tokens = block.forward(&tokens, context)?;
        }
        let to_image = |t: &Tensor, c: usize| -> Result<Tensor> {
            t.reshape((b, h, w, c))?.permute((0, 3, 1, 2))?.contiguous()
        };
        let out = match &self.proj_out {
            Projection::Conv(p) => p.forward(&to_image(&tokens, self.inner)?)?,
            Projection::Linear(p) => {
                let c = x.dim(1)?;
                to_image(&p.forward(&tokens)?, c)?
            }
        };
        out + x
    }
}
