//! Attention from differentiable ops (matmul + `softmax`), with candle's fused softmax only
//! where no gradient can be asked for.

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Module, Result, Shape, Tensor, D};
use candle_nn::{GroupNorm, VarBuilder};

use super::{linear, Linear};

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
        let lin = |n: &str| linear(channels, channels, vb.pp(n));
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
/// to [B, Lq, C]. `causal` masks every key after its query (CLIP's text encoder). The softmax is
/// the differentiable composite whenever a gradient may be asked for (the fused
/// `softmax_last_dim` has no backward), the fused kernel otherwise.
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
    // The scale on the queries (small), not on the scores (Lq × Lk per head).
    let (q, k, v) = (split(q, lq)?, split(k, lk)?, split(v, lk)?);
    let mut scores = (q.matmul(&k.t()?.contiguous()?)? * (1.0 / (d as f64).sqrt()))?;
    if causal {
        let mask: Vec<f32> = (0..lq)
            .flat_map(|i| (0..lk).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
            .collect();
        let mask = Tensor::from_vec(mask, (lq, lk), q.device())?.to_dtype(scores.dtype())?;
        scores = scores.broadcast_add(&mask)?;
    }
    let probs = softmax(&scores)?;
    probs.matmul(&v)?.transpose(1, 2)?.reshape((b, lq, c))
}

/// Softmax over the last dimension: candle's fused kernel when nothing upstream needs a
/// gradient (plain sampling; it has no backward); under a gradient, on the CPU, [`Softmax`],
/// which keeps only its output for the backward; elsewhere the differentiable composite.
pub(crate) fn softmax(x: &Tensor) -> Result<Tensor> {
    if !x.track_op() {
        candle_nn::ops::softmax_last_dim(x)
    } else if x.device().is_cpu() && matches!(x.dtype(), DType::F32 | DType::F64) {
        x.contiguous()?.apply_op1(Softmax)
    } else {
        candle_nn::ops::softmax(x, D::Minus1)
    }
}

/// Softmax over the last dimension as one op with its backward, ∂x = y ⊙ (∂y − ⟨∂y, y⟩): the
/// graph holds the output only, where the composite (max, shift, exp, sum, divide) holds four
/// tensors of the scores' size — gigabytes for attention over a 64×64 latent.
struct Softmax;

macro_rules! softmax_rows {
    ($src:expr, $dim:expr, $t:ty) => {{
        use rayon::prelude::*;
        let src: &[$t] = $src;
        let mut out = vec![0 as $t; src.len()];
        out.par_chunks_exact_mut($dim)
            .zip(src.par_chunks_exact($dim))
            .for_each(|(y, x)| {
                let m = x.iter().copied().fold(<$t>::NEG_INFINITY, <$t>::max);
                let mut sum = 0 as $t;
                for (yi, &xi) in y.iter_mut().zip(x) {
                    *yi = (xi - m).exp();
                    sum += *yi;
                }
                for yi in y.iter_mut() {
                    *yi /= sum;
                }
            });
        out
    }};
}

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        "softmax-last-dim"
    }
    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (start, end) = layout
            .contiguous_offsets()
            .ok_or_else(|| candle_core::Error::Msg("softmax of a non-contiguous tensor".into()))?;
        let dim = *layout.dims().last().unwrap_or(&1);
        let out = match storage {
            CpuStorage::F32(v) => CpuStorage::F32(softmax_rows!(&v[start..end], dim, f32)),
            CpuStorage::F64(v) => CpuStorage::F64(softmax_rows!(&v[start..end], dim, f64)),
            _ => candle_core::bail!("softmax: only f32 and f64 here"),
        };
        Ok((out, layout.shape().clone()))
    }
    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let dot = (grad * res)?.sum_keepdim(D::Minus1)?;
        Ok(Some((res * grad.broadcast_sub(&dot)?)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// The softmax op with a backward: its values equal candle's, its gradient equals the
    /// composite's (so finite differences), in f64 and f32.
    #[test]
    fn softmax_with_backward_equals_the_composite() {
        for dtype in [DType::F64, DType::F32] {
            let x = (Tensor::randn(0f64, 3.0, (3, 5, 7), &Device::Cpu).unwrap())
                .to_dtype(dtype)
                .unwrap();
            let w = Tensor::randn(0f64, 1.0, (3, 5, 7), &Device::Cpu)
                .unwrap()
                .to_dtype(dtype)
                .unwrap();
            let var = Var::from_tensor(&x).unwrap();
            let ours = softmax(var.as_tensor()).unwrap();
            let theirs = candle_nn::ops::softmax(var.as_tensor(), D::Minus1).unwrap();
            let diff = (&ours - &theirs).unwrap().abs().unwrap().max_all().unwrap();
            let tol = if dtype == DType::F64 { 1e-15 } else { 1e-6 };
            assert!(
                diff.to_dtype(DType::F64)
                    .unwrap()
                    .to_scalar::<f64>()
                    .unwrap()
                    < tol
            );
            let g_ours = (ours * &w).unwrap().sum_all().unwrap().backward().unwrap();
            let g_theirs = (theirs * &w)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let (a, b) = (
                g_ours.get(var.as_tensor()).unwrap(),
                g_theirs.get(var.as_tensor()).unwrap(),
            );
            let diff = (a - b).unwrap().abs().unwrap().max_all().unwrap();
            assert!(
                diff.to_dtype(DType::F64)
                    .unwrap()
                    .to_scalar::<f64>()
                    .unwrap()
                    < tol * 10.0
            );
        }
    }
}
