//! Layer normalisation from differentiable ops (candle's fused `layer_norm` has no backward; it
//! is used only where no gradient can be asked for).

use candle_core::{DType, Result, Tensor, D};
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
