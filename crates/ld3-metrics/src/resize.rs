//! The bilinear resizes in front of FID's Inception network, each exactly as its tool computes
//! it: TensorFlow 1.x's (no half-pixel offset; torch-fidelity's `interpolate_bilinear_2d_like_
//! tensorflow1x`, behind EDM's and NVIDIA's reference statistics) and PyTorch's
//! `F.interpolate(mode="bilinear", align_corners=False)` (pytorch-fid).

use candle_core::{DType, Tensor};
use ld3_solvers::Result;

/// Which tool's resize.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResizeMode {
    /// TF1: source = dst · (in/out), in f32.
    Tf1,
    /// PyTorch: source = max((dst + ½) · (in/out) − ½, 0).
    Torch,
}

/// For each output index along one axis: the lower and upper source rows and the weight of the
/// upper one.
fn axis(n_in: usize, n_out: usize, mode: ResizeMode) -> (Vec<u32>, Vec<u32>, Vec<f32>) {
    let scale = n_in as f64 / n_out as f64;
    let (mut lo, mut hi, mut frac) = (vec![], vec![], vec![]);
    for d in 0..n_out {
        let src: f32 = match mode {
            ResizeMode::Tf1 => d as f32 * scale as f32,
            ResizeMode::Torch => ((scale as f32) * (d as f32 + 0.5) - 0.5).max(0.0),
        };
        let l = (src as usize).min(n_in - 1);
        lo.push(l as u32);
        hi.push((l + 1).min(n_in - 1) as u32);
        frac.push(src - l as f32);
    }
    (lo, hi, frac)
}

/// `x` [B, C, H, W] resized to `out_h` × `out_w` (f32 arithmetic, as both tools on the CPU).
pub fn resize_bilinear(x: &Tensor, out_h: usize, out_w: usize, mode: ResizeMode) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    let x = x.to_dtype(DType::F32)?;
    let dev = x.device();
    let (ylo, yhi, dy) = axis(h, out_h, mode);
    let (xlo, xhi, dx) = axis(w, out_w, mode);
    let idx = |v: Vec<u32>| Tensor::new(v, dev);
    let (ylo, yhi, xlo, xhi) = (idx(ylo)?, idx(yhi)?, idx(xlo)?, idx(xhi)?);
    let dy = Tensor::new(dy, dev)?.reshape((1, 1, out_h, 1))?;
    let dx = Tensor::new(dx, dev)?.reshape((1, 1, 1, out_w))?;
    let (top, bottom) = (x.index_select(&ylo, 2)?, x.index_select(&yhi, 2)?);
    let corners = |rows: &Tensor| -> Result<(Tensor, Tensor)> {
        Ok((rows.index_select(&xlo, 3)?, rows.index_select(&xhi, 3)?))
    };
    let ((p00, p01), (p10, p11)) = (corners(&top)?, corners(&bottom)?);
    Ok(match mode {
        // in_0 = in_00 + (in_01 − in_00)·dx, likewise in_1, then along y (torch-fidelity's order).
        ResizeMode::Tf1 => {
            let row0 = (&p00 + (&p01 - &p00)?.broadcast_mul(&dx)?)?;
            let row1 = (&p10 + (&p11 - &p10)?.broadcast_mul(&dx)?)?;
            (&row0 + (&row1 - &row0)?.broadcast_mul(&dy)?)?
        }
        // (1−λy)·((1−λx)·p00 + λx·p01) + λy·((1−λx)·p10 + λx·p11) (PyTorch's kernel).
        ResizeMode::Torch => {
            let (dx0, dy0) = (dx.affine(-1.0, 1.0)?, dy.affine(-1.0, 1.0)?);
            let row0 = (p00.broadcast_mul(&dx0)? + p01.broadcast_mul(&dx)?)?;
            let row1 = (p10.broadcast_mul(&dx0)? + p11.broadcast_mul(&dx)?)?;
            (row0.broadcast_mul(&dy0)? + row1.broadcast_mul(&dy)?)?
        }
    })
}
