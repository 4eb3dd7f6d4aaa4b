//! Convolutions and resampling with a correct backward in candle.

use candle_core::{Result, Tensor};
use candle_nn::{Conv2dConfig, VarBuilder};

use super::Conv2d;

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
    candle_nn::conv2d(c_in, c_out, k, cfg, vb).map(Conv2d)
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
pub(crate) fn divided(x: Tensor, factor: f64) -> Result<Tensor> {
    if factor == 1.0 {
        Ok(x)
    } else {
        x / factor
    }
}
