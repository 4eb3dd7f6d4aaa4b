//! The ResNet block with a time embedding, shared by every UNet family.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::{group_norm, linear, Addend, Conv2d, GroupNorm, Linear};

use super::conv::{conv, divided};

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
    time_emb_proj: Option<Linear>,
    norm2: GroupNorm,
    conv2: Conv2d,
    conv_shortcut: Option<Conv2d>,
    scale_shift: bool,
    output_scale_factor: f64,
}

impl ResnetBlock {
    /// Keys `norm1`, `conv1`, `time_emb_proj` (none when `temb` is 0: the VAE's ResNets take
    /// no time), `norm2`, `conv2`, `conv_shortcut`.
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
            norm1: group_norm(norms.groups, c_in, norms.eps, vb.pp("norm1"))?,
            conv1: conv(c_in, c_out, 3, 1, 1, vb.pp("conv1"))?,
            time_emb_proj: match temb {
                0 => None,
                _ => Some(linear(temb, proj_out, vb.pp("time_emb_proj"))?),
            },
            norm2: group_norm(norms.groups, c_out, norms.eps, vb.pp("norm2"))?,
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

    /// `x` [B, C_in, H, W] and the time embedding `temb` [B, T] (`None` for a block without
    /// time).
    pub fn forward(&self, x: &Tensor, temb: Option<&Tensor>) -> Result<Tensor> {
        let h = self.norm1.forward_silu(x)?;
        let t = match (&self.time_emb_proj, temb) {
            (Some(proj), Some(temb)) => Some(proj.forward(&super::silu(temb)?)?),
            (None, _) => None,
            (Some(_), None) => candle_core::bail!("this ResNet block needs a time embedding"),
        };
        // The second normalisation, its conditioning and SiLU.
        let h = match t {
            Some(t) if self.scale_shift => {
                let (b, c) = (t.dim(0)?, t.dim(1)? / 2);
                let t = t.reshape((b, 2 * c, 1, 1))?;
                let (scale, shift) = (t.narrow(1, 0, c)?, t.narrow(1, c, c)?);
                super::silu(
                    &self
                        .norm2
                        .forward(&self.conv1.forward(&h)?)?
                        .broadcast_mul(&(scale + 1.0)?)?
                        .broadcast_add(&shift)?,
                )?
            }
            // The time embedding added per image and channel inside the convolution.
            Some(t) => self
                .norm2
                .forward_silu(&self.conv1.forward_add(&h, Addend::PerChannel(&t))?)?,
            None => self.norm2.forward_silu(&self.conv1.forward(&h)?)?,
        };
        let skip = match &self.conv_shortcut {
            Some(c) => c.forward(x)?,
            None => x.clone(),
        };
        // The residual added inside the second convolution.
        let out = self.conv2.forward_add(&h, Addend::Full(&skip))?;
        divided(out, self.output_scale_factor)
    }
}
