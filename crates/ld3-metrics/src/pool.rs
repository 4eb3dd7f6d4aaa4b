//! Max pooling written with ops whose backward candle computes correctly (its `max_pool2d`
//! backward scales the gradient by 1/k²).

use candle_core::{Result, Tensor};

/// Every `stride`-th element along `dim` starting at 0, `count` of them (a strided slice from a
/// narrow, a zero pad to a multiple of the stride, and a reshape).
fn every(x: &Tensor, dim: usize, stride: usize, count: usize) -> Result<Tensor> {
    let x = x.narrow(dim, 0, (count - 1) * stride + 1)?;
    let x = x.pad_with_zeros(dim, 0, stride - 1)?;
    let mut dims = x.dims().to_vec();
    dims[dim] = count;
    dims.insert(dim + 1, stride);
    x.reshape(dims)?.narrow(dim + 1, 0, 1)?.squeeze(dim + 1)
}

/// `k`×`k` max pooling with stride `s`, no padding, floor mode (torch's `MaxPool2d(k, s)`).
pub fn max_pool(x: &Tensor, k: usize, s: usize) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    if h < k || w < k {
        candle_core::bail!("max pool {k}x{k} needs at least {k}x{k} pixels, got {h}x{w}");
    }
    let (oh, ow) = ((h - k) / s + 1, (w - k) / s + 1);
    if k == s {
        // Non-overlapping: a reshape and two maxima.
        let (b, c) = (x.dim(0)?, x.dim(1)?);
        return x
            .narrow(2, 0, oh * k)?
            .narrow(3, 0, ow * k)?
            .reshape((b, c, oh, k, ow, k))?
            .max_keepdim(5)?
            .max_keepdim(3)?
            .reshape((b, c, oh, ow));
    }
    let mut out: Option<Tensor> = None;
    for dy in 0..k {
        for dx in 0..k {
            let win = every(&x.narrow(2, dy, h - dy)?, 2, s, oh)?;
            let win = every(&win.narrow(3, dx, w - dx)?, 3, s, ow)?;
            out = Some(match out {
                Some(o) => o.maximum(&win)?,
                None => win,
            });
        }
    }
    Ok(out.expect("k ≥ 1"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};
    use ld3_solvers::gradcheck::max_abs_diff;

    #[test]
    fn matches_candles_forward_and_has_the_right_gradient() {
        let x = Tensor::randn(0f64, 1.0, (2, 3, 7, 9), &Device::Cpu).unwrap();
        for (k, s) in [(2, 2), (3, 2), (3, 1)] {
            let want = x.max_pool2d_with_stride(k, s).unwrap();
            let got = max_pool(&x, k, s).unwrap();
            assert_eq!(got.dims(), want.dims());
            let d = max_abs_diff(&got, &want).unwrap();
            assert_eq!(d, 0.0, "k {k} s {s}");
        }
        // d/dx sum(maxpool(x)) counts how many windows pick each element.
        let v = Var::from_tensor(&x).unwrap();
        let g = max_pool(v.as_tensor(), 2, 2)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let g = g.get(v.as_tensor()).unwrap();
        let total: f64 = g.sum_all().unwrap().to_scalar().unwrap();
        assert_eq!(
            total,
            (2 * 3 * 3 * 4) as f64,
            "one unit of gradient per window"
        );
    }
}
