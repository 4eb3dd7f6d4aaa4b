//! Max pooling with a correct backward: candle's `max_pool2d` backward scales the gradient by
//! 1/k². With the own ops on (`ld3_models::layers::own_ops`), a tracked f32/f64 input on the CPU
//! takes one op whose backward routes each window's gradient to its first maximum, recomputed
//! from the input (PyTorch's rule); otherwise ops whose backward candle computes correctly.

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor};
use ld3_models::layers::parallel::for_each_chunk;

/// k×k windows at stride s over [B, C, H, W], floor mode.
struct MaxPoolOp {
    k: usize,
    s: usize,
}

impl MaxPoolOp {
    /// For every output element of one plane, the index in the plane of its window's first
    /// maximum.
    fn argmax<T: PartialOrd + Copy>(&self, plane: &[T], (h, w): (usize, usize)) -> Vec<usize> {
        let (oh, ow) = ((h - self.k) / self.s + 1, (w - self.k) / self.s + 1);
        let mut out = Vec::with_capacity(oh * ow);
        for i in 0..oh {
            for j in 0..ow {
                let mut best = i * self.s * w + j * self.s;
                for di in 0..self.k {
                    for dj in 0..self.k {
                        let at = (i * self.s + di) * w + j * self.s + dj;
                        // A NaN wins, as in PyTorch (`val > max || isnan(val)`).
                        #[allow(clippy::eq_op)]
                        let nan = plane[at] != plane[at];
                        if plane[at] > plane[best] || nan {
                            best = at;
                        }
                    }
                }
                out.push(best);
            }
        }
        out
    }

    fn forward<T: PartialOrd + Copy + Send + Sync + Default>(
        &self,
        x: &[T],
        dims: &[usize],
    ) -> Vec<T> {
        let (h, w) = (dims[2], dims[3]);
        let (oh, ow) = ((h - self.k) / self.s + 1, (w - self.k) / self.s + 1);
        let mut y = vec![T::default(); dims[0] * dims[1] * oh * ow];
        for_each_chunk(&mut y, oh * ow, |(i, y)| {
            let plane = &x[i * h * w..][..h * w];
            for (y, at) in y.iter_mut().zip(self.argmax(plane, (h, w))) {
                *y = plane[at];
            }
        });
        y
    }

    fn backward<T: PartialOrd + Copy + Send + Sync + Default + std::ops::AddAssign>(
        &self,
        x: &[T],
        g: &[T],
        dims: &[usize],
    ) -> Vec<T> {
        let (h, w) = (dims[2], dims[3]);
        let (oh, ow) = ((h - self.k) / self.s + 1, (w - self.k) / self.s + 1);
        let mut dx = vec![T::default(); x.len()];
        for_each_chunk(&mut dx, h * w, |(i, dx)| {
            // Written before it is read: a fresh zeroed allocation maps the shared zero page on
            // a first read, and the write after it then costs a copy-on-write fault and a TLB
            // flush on every thread (measured: 6 % of LPIPS(VGG)'s gradient).
            dx.fill(T::default());
            let (plane, g) = (&x[i * h * w..][..h * w], &g[i * oh * ow..][..oh * ow]);
            for (&g, at) in g.iter().zip(self.argmax(plane, (h, w))) {
                dx[at] += g;
            }
        });
        dx
    }
}

impl CustomOp1 for MaxPoolOp {
    fn name(&self) -> &'static str {
        "max-pool-first-maximum"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let dims = l.dims();
        let y = ld3_models::layers::cpu_forward(
            s,
            l,
            "max pool",
            |x| Ok(self.forward(x, dims)),
            |x| Ok(self.forward(x, dims)),
        )?;
        let (oh, ow) = (
            (dims[2] - self.k) / self.s + 1,
            (dims[3] - self.k) / self.s + 1,
        );
        Ok((y, Shape::from((dims[0], dims[1], oh, ow))))
    }
    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        ld3_models::layers::cpu_input_gradient(
            arg,
            grad,
            "max pool",
            |x, g, dims| self.backward(x, g, dims),
            |x, g, dims| self.backward(x, g, dims),
        )
        .map(Some)
    }
}

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
    if k == 0 || s == 0 {
        candle_core::bail!("max pool: window {k} and stride {s} must be positive");
    }
    if h < k || w < k {
        candle_core::bail!("max pool {k}x{k} needs at least {k}x{k} pixels, got {h}x{w}");
    }
    let (oh, ow) = ((h - k) / s + 1, (w - k) / s + 1);
    if ld3_models::layers::own_ops()
        && x.track_op()
        && x.device().is_cpu()
        && matches!(x.dtype(), DType::F32 | DType::F64)
    {
        return x.contiguous()?.apply_op1(MaxPoolOp { k, s });
    }
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
        // The op (own ops on) and the composite (off) agree in value and gradient, for
        // non-overlapping and overlapping windows (no ties in random input).
        for (k, s) in [(2, 2), (3, 2), (3, 1)] {
            let w = Tensor::randn(
                0f64,
                1.0,
                x.max_pool2d_with_stride(k, s).unwrap().dims(),
                x.device(),
            )
            .unwrap();
            let run = |own: bool| {
                ld3_models::layers::set_own_ops(own);
                let y = max_pool(v.as_tensor(), k, s).unwrap();
                let g = (&y * &w).unwrap().sum_all().unwrap().backward().unwrap();
                ld3_models::layers::set_own_ops(true);
                (y, g.get(v.as_tensor()).unwrap().clone())
            };
            let ((ya, ga), (yb, gb)) = (run(true), run(false));
            assert_eq!(max_abs_diff(&ya, &yb).unwrap(), 0.0, "k {k} s {s}");
            assert!(max_abs_diff(&ga, &gb).unwrap() < 1e-14, "k {k} s {s}");
        }
        // A NaN wins its window, wherever it lies in it (PyTorch's rule).
        for at in 0..4 {
            let mut v = vec![1.0f64, 2.0, 3.0, 0.5];
            v[at] = f64::NAN;
            let x = Var::from_vec(v, (1, 1, 2, 2), &Device::Cpu).unwrap();
            let y: Vec<f64> = max_pool(x.as_tensor(), 2, 2)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            assert!(y[0].is_nan(), "NaN at {at}: {y:?}");
        }
    }
}
