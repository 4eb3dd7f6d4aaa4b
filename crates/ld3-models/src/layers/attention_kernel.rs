//! The CPU kernels of unmasked attention: softmax(s·QKᵀ)V for every image and head, a block of
//! query rows at a time. A block's scores live in a per-thread scratch buffer that stays in the
//! core's cache (never all N·Lq·Lk of them: at batch 50 on a 16×16 layer a fresh 13 MB mapping
//! per call, whose page faults cost more than the products), the softmax runs on them in place,
//! and the product with V is written straight into the output, heads side by side or channels
//! first. Q, K and V are read through strides, so heads split out of [B, L, C] or out of an NCHW
//! image need no copies. The backward of self-attention over an NCHW image recomputes each
//! block's probabilities the same way and writes the gradients of q, k and v in place.

use super::activation::exp_f32;
use super::matmul::{product, Element, Strided};
use super::parallel::{self, chunks};

/// Scores per block of query rows (256 KB in f32): a block is at least [`MIN_ROWS`] rows.
const BLOCK_SCORES: usize = 1 << 16;
/// The fewest query rows per block (fewer make the products inefficient).
const MIN_ROWS: usize = 16;
/// Below this many multiply-adds the whole attention runs on the calling thread.
const PARALLEL_WORK: usize = 1 << 20;

/// A [B, H, L, d] view of queries, keys or values: element (b, h, l, i) at
/// `b·batch + h·head + l·row + i·col`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Heads {
    pub batch: usize,
    pub head: usize,
    pub row: usize,
    pub col: usize,
}

impl Heads {
    /// Heads side by side in the channels of a contiguous [B, L, H·d].
    pub fn joined(len: usize, heads: usize, d: usize) -> Self {
        Self {
            batch: len * heads * d,
            head: d,
            row: heads * d,
            col: 1,
        }
    }

    fn at(&self, b: usize, h: usize, l: usize) -> usize {
        b * self.batch + h * self.head + l * self.row
    }

    /// The last element's offset plus one, for shapes `[b, h, l, d]` (0 when empty).
    fn extent(&self, b: usize, h: usize, l: usize, d: usize) -> usize {
        if b * h * l * d == 0 {
            0
        } else {
            self.at(b - 1, h - 1, l - 1) + (d - 1) * self.col + 1
        }
    }
}

/// Shapes of one attention: `batch` images of `heads` heads, `lq` queries and `lk` keys of
/// `d` channels each.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Shape {
    pub batch: usize,
    pub heads: usize,
    pub lq: usize,
    pub lk: usize,
    pub d: usize,
}

/// The element types the kernel runs in: [`Element`] with what a softmax needs.
pub(crate) trait Real:
    Element
    + PartialOrd
    + Default
    + std::ops::Sub<Output = Self>
    + std::ops::Mul<Output = Self>
    + std::ops::Div<Output = Self>
{
    const NEG_INFINITY: Self;
    fn exp(self) -> Self;
}

impl Real for f32 {
    const NEG_INFINITY: Self = f32::NEG_INFINITY;
    #[inline(always)]
    fn exp(self) -> Self {
        exp_f32(self)
    }
}

impl Real for f64 {
    const NEG_INFINITY: Self = f64::NEG_INFINITY;
    #[inline(always)]
    fn exp(self) -> Self {
        f64::exp(self)
    }
}

/// How the kernel lays its output out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Out {
    /// [B, Lq, H·d]: heads side by side in the channels, after the queries.
    Joined,
    /// [B, H·d, Lq]: channels first (an NCHW image's layout, with Lq = H·W).
    ChannelFirst,
}

/// softmax(scale·QKᵀ)V per image and head for `scale` > 0, laid out as `out` says. Panics where
/// a view reaches outside its slice (the callers build the views from the tensors' own shapes).
pub(crate) fn attention<T: Real>(
    s: Shape,
    (q, qs): (&[T], Heads),
    (k, ks): (&[T], Heads),
    (v, vs): (&[T], Heads),
    scale: T,
    out: Out,
) -> Vec<T> {
    assert!(
        qs.extent(s.batch, s.heads, s.lq, s.d) <= q.len()
            && ks.extent(s.batch, s.heads, s.lk, s.d) <= k.len()
            && vs.extent(s.batch, s.heads, s.lk, s.d) <= v.len(),
        "attention kernel: a view outside its slice"
    );
    let width = s.heads * s.d;
    let mut y = vec![T::ZERO; s.batch * s.lq * width];
    if y.is_empty() {
        return y;
    }
    let block = (BLOCK_SCORES / s.lk.max(1)).clamp(MIN_ROWS, s.lq.max(MIN_ROWS));
    // Query rows `r0..r0 + n_rows` of image `b`, heads `heads`, into `dst`: those rows of the
    // image's output (joined), or those heads' planes (channels first).
    let task =
        |b: usize, r0: usize, n_rows: usize, heads: std::ops::Range<usize>, dst: &mut [T]| {
            T::with_scratch(|scores, _| {
                for (i, h) in heads.enumerate() {
                    for first in (0..n_rows).step_by(block) {
                        let m = block.min(n_rows - first);
                        scores.resize(m * s.lk, T::ZERO);
                        let p =
                            probabilities(s, b, h, r0 + first, m, (q, qs), (k, ks), scale, scores);
                        let dst = match out {
                            Out::Joined => {
                                Strided::rows(&mut dst[first * width + h * s.d..], m, s.d, width)
                            }
                            Out::ChannelFirst => Strided {
                                data: &mut dst[i * s.d * s.lq + first..],
                                rows: m,
                                cols: s.d,
                                row_stride: 1,
                                col_stride: s.lq,
                            },
                        };
                        // The block's output: P·V.
                        let values = Strided {
                            data: &v[vs.at(b, h, 0)..],
                            rows: s.lk,
                            cols: s.d,
                            row_stride: vs.row,
                            col_stride: vs.col,
                        };
                        product(dst, false, Strided::rows(p, m, s.lk, s.lk), values, false);
                    }
                }
            })
        };
    let work = s.batch * s.heads * s.lq * s.lk * s.d;
    let parallel = work >= PARALLEL_WORK && parallel::can_fork();
    let image = s.lq * width;
    match out {
        _ if !parallel || s.batch >= 2 * parallel::threads() => {
            chunks(&mut y, image, parallel, |(b, dst)| {
                task(b, 0, s.lq, 0..s.heads, dst)
            })
        }
        Out::ChannelFirst => chunks(&mut y, s.d * s.lq, true, |(i, dst)| {
            let (b, h) = (i / s.heads, i % s.heads);
            task(b, 0, s.lq, h..h + 1, dst)
        }),
        Out::Joined => {
            // Few images: each image's query rows are shared out between the threads.
            let pieces = (2 * parallel::threads()).div_ceil(s.batch);
            let rows_per_piece = s.lq.div_ceil(pieces).max(1);
            for (b, img) in y.chunks_mut(image).enumerate() {
                chunks(img, rows_per_piece * width, true, |(i, dst)| {
                    let r0 = i * rows_per_piece;
                    task(b, r0, dst.len() / width, 0..s.heads, dst)
                });
            }
        }
    }
    y
}

/// softmax(scale·Q_blk Kᵀ) for the `m` query rows from `r0` of image `b`, head `h`, in
/// `scores` (at least m·Lk long).
#[allow(clippy::too_many_arguments)]
fn probabilities<'a, T: Real>(
    s: Shape,
    b: usize,
    h: usize,
    r0: usize,
    m: usize,
    (q, qs): (&[T], Heads),
    (k, ks): (&[T], Heads),
    scale: T,
    scores: &'a mut [T],
) -> &'a [T] {
    let lk = s.lk;
    let scores = &mut scores[..m * lk];
    product(
        Strided::rows(&mut *scores, m, lk, lk),
        false,
        Strided {
            data: &q[qs.at(b, h, r0)..],
            rows: m,
            cols: s.d,
            row_stride: qs.row,
            col_stride: qs.col,
        },
        // Kᵀ read in place.
        Strided {
            data: &k[ks.at(b, h, 0)..],
            rows: s.d,
            cols: lk,
            row_stride: ks.col,
            col_stride: ks.row,
        },
        false,
    );
    parallel::vectorized(
        #[inline(always)]
        || {
            for row in scores.chunks_mut(lk.max(1)) {
                let top = parallel::max(row, T::NEG_INFINITY) * scale;
                for x in row.iter_mut() {
                    *x = (*x * scale - top).exp();
                }
                let inv = T::ONE / parallel::sum(row);
                for x in row.iter_mut() {
                    *x = *x * inv;
                }
            }
        },
    );
    scores
}

/// Self-attention over images in NCHW: q, k and v stacked in the channels of one
/// [B, 3·H·d, L] (each head's d channels together), the output [B, H·d, L].
pub(crate) fn stacked_heads(s: Shape) -> Heads {
    Heads {
        batch: 3 * s.heads * s.d * s.lq,
        head: s.d * s.lq,
        row: 1,
        col: s.lq,
    }
}

/// The gradient of [`attention`] over a stacked `qkv` ([`stacked_heads`], Lq = Lk = L, output
/// channels first) in `qkv`, from the output's gradient `dy` [B, H·d, L], laid out as `qkv`. Each
/// block of query rows has its probabilities P recomputed (nothing L×L is kept), then
/// ∂V += Pᵀ∂O, ∂S = scale·P ⊙ (∂O Vᵀ − rowsum(P ⊙ ∂O Vᵀ)), ∂Q = ∂S K, ∂K += ∂Sᵀ Q.
pub(crate) fn self_attention_backward<T: Real>(s: Shape, qkv: &[T], dy: &[T], scale: T) -> Vec<T> {
    let (c, l) = (s.heads * s.d, s.lq);
    let hs = stacked_heads(s);
    assert!(
        s.lq == s.lk
            && hs.extent(s.batch, s.heads, l, s.d) + 2 * c * l <= qkv.len()
            && dy.len() == s.batch * c * l,
        "attention backward: shapes do not fit"
    );
    let mut dqkv = vec![T::ZERO; qkv.len()];
    if dqkv.is_empty() {
        return dqkv;
    }
    let plane_len = s.d * l;
    let block = (BLOCK_SCORES / l.max(1)).clamp(MIN_ROWS, l.max(MIN_ROWS));
    // Planes of d channels: (image, part q/k/v, head) in order; a task (image, head) takes its
    // three, each behind its own (never contended) lock.
    let planes: Vec<std::sync::Mutex<&mut [T]>> = dqkv
        .chunks_mut(plane_len)
        .map(std::sync::Mutex::new)
        .collect();
    let task = |i: usize| {
        let (b, h) = (i / s.heads, i % s.heads);
        let lock = |part: usize| {
            planes[(b * 3 + part) * s.heads + h]
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        };
        let (mut dq, mut dk, mut dv) = (lock(0), lock(1), lock(2));
        // [rows, d] of a head's channels-first plane, from row `r0`.
        let view = |data, r0, rows| plane(data, r0, rows, s.d, l);
        let base = hs.at(b, h, 0);
        let (k, v) = (&qkv[base + c * l..], &qkv[base + 2 * c * l..]);
        let d_out = &dy[(b * c + h * s.d) * l..];
        T::with_scratch(|p_buf, ds_buf| {
            for first in (0..l).step_by(block) {
                let m = block.min(l - first);
                p_buf.resize(m * l, T::ZERO);
                ds_buf.resize(m * l, T::ZERO);
                let p = probabilities(
                    s,
                    b,
                    h,
                    first,
                    m,
                    (qkv, hs),
                    (&qkv[c * l..], hs),
                    scale,
                    p_buf,
                );
                let g = view(d_out, first, m);
                // ∂V += Pᵀ ∂O.
                let pt = Strided {
                    data: p,
                    rows: l,
                    cols: m,
                    row_stride: 1,
                    col_stride: l,
                };
                product(
                    view_mut(&mut dv[..], 0, l, s.d, l),
                    true,
                    pt,
                    g.reborrow(),
                    false,
                );
                // ∂P = ∂O Vᵀ.
                let ds = &mut ds_buf[..m * l];
                let vt = Strided {
                    data: v,
                    rows: s.d,
                    cols: l,
                    row_stride: l,
                    col_stride: 1,
                };
                product(Strided::rows(&mut *ds, m, l, l), false, g, vt, false);
                parallel::vectorized(
                    #[inline(always)]
                    || {
                        for (dsr, pr) in ds.chunks_mut(l).zip(p.chunks(l)) {
                            let dot = parallel::dot(&*dsr, pr);
                            for (d, &pi) in dsr.iter_mut().zip(pr) {
                                *d = scale * pi * (*d - dot);
                            }
                        }
                    },
                );
                let ds = &ds_buf[..m * l];
                // ∂Q = ∂S K (these rows), ∂K += ∂Sᵀ Q.
                product(
                    view_mut(&mut dq[..], first, m, s.d, l),
                    false,
                    Strided::rows(ds, m, l, l),
                    view(k, 0, l),
                    false,
                );
                let dst = Strided {
                    data: ds,
                    rows: l,
                    cols: m,
                    row_stride: 1,
                    col_stride: l,
                };
                product(
                    view_mut(&mut dk[..], 0, l, s.d, l),
                    true,
                    dst,
                    view(&qkv[base..], first, m),
                    false,
                );
            }
        });
    };
    let work = s.batch * s.heads * l * l * s.d;
    if work >= PARALLEL_WORK {
        parallel::for_each_index(s.batch * s.heads, task);
    } else {
        (0..s.batch * s.heads).for_each(task);
    }
    drop(planes);
    dqkv
}

/// `rows` × `cols` of a channels-first plane (`stride` between channels), from row `r0`.
fn plane<T>(data: &[T], r0: usize, rows: usize, cols: usize, stride: usize) -> Strided<&[T]> {
    Strided {
        data: &data[r0..],
        rows,
        cols,
        row_stride: 1,
        col_stride: stride,
    }
}

/// [`plane`], writable.
fn view_mut<T>(
    data: &mut [T],
    r0: usize,
    rows: usize,
    cols: usize,
    stride: usize,
) -> Strided<&mut [T]> {
    Strided {
        data: &mut data[r0..],
        rows,
        cols,
        row_stride: 1,
        col_stride: stride,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// softmax(s·QKᵀ)V by its definition, in f64, heads joined.
    fn naive(s: Shape, q: &[f64], k: &[f64], v: &[f64], scale: f64) -> Vec<f64> {
        let (qs, ks) = (
            Heads::joined(s.lq, s.heads, s.d),
            Heads::joined(s.lk, s.heads, s.d),
        );
        let mut out = vec![0.0; s.batch * s.lq * s.heads * s.d];
        for b in 0..s.batch {
            for h in 0..s.heads {
                for i in 0..s.lq {
                    let sc: Vec<f64> = (0..s.lk)
                        .map(|j| {
                            scale
                                * (0..s.d)
                                    .map(|c| q[qs.at(b, h, i) + c] * k[ks.at(b, h, j) + c])
                                    .sum::<f64>()
                        })
                        .collect();
                    let top = sc.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let e: Vec<f64> = sc.iter().map(|x| (x - top).exp()).collect();
                    let z: f64 = e.iter().sum();
                    for c in 0..s.d {
                        out[qs.at(b, h, i) + c] =
                            (0..s.lk).map(|j| e[j] / z * v[ks.at(b, h, j) + c]).sum();
                    }
                }
            }
        }
        out
    }

    fn noise(n: usize, seed: u64) -> Vec<f64> {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 11) as f64 / (1u64 << 53) as f64 * 4.0 - 2.0
            })
            .collect()
    }

    /// Heads joined in the channels and heads as separate matrices (a transposed, channel-first
    /// layout for K), blocks that do not divide the rows, one image and several: the kernel
    /// equals the definition, in f64 and f32.
    #[test]
    fn kernel_equals_the_definition() {
        for (batch, heads, lq, lk, d) in [
            (3, 2, 37, 300, 5),
            (1, 1, 5, 3, 2),
            (2, 3, 70, 64, 8),
            (5, 2, 40, 40, 4),
            (1, 4, 300, 300, 3),
            (6, 2, 200, 200, 8),
        ] {
            let s = Shape {
                batch,
                heads,
                lq,
                lk,
                d,
            };
            let q = noise(batch * lq * heads * d, 1);
            let k = noise(batch * lk * heads * d, 2);
            let v = noise(batch * lk * heads * d, 3);
            let want = naive(s, &q, &k, &v, 0.7);
            let (qs, ks) = (Heads::joined(lq, heads, d), Heads::joined(lk, heads, d));
            let got = attention(s, (&q, qs), (&k, ks), (&v, ks), 0.7, Out::Joined);
            let err = got
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f64::max);
            assert!(err < 1e-12, "f64: {err}");
            // K stored channel-first per head: [B, H, d, Lk].
            let mut k_cf = vec![0.0; k.len()];
            let kcf = Heads {
                batch: heads * d * lk,
                head: d * lk,
                row: 1,
                col: lk,
            };
            for b in 0..batch {
                for h in 0..heads {
                    for j in 0..lk {
                        for c in 0..d {
                            k_cf[kcf.at(b, h, j) + c * kcf.col] = k[ks.at(b, h, j) + c];
                        }
                    }
                }
            }
            let got = attention(s, (&q, qs), (&k_cf, kcf), (&v, ks), 0.7, Out::Joined);
            let err = got
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f64::max);
            assert!(err < 1e-12, "f64, channel-first keys: {err}");
            // Self-attention on an NCHW image: q, k and v stacked in the channels of one
            // [B, 3·H·d, L] (a pointwise convolution's output), the output channels first.
            if lq == lk {
                let (c, l) = (heads * d, lq);
                let mut qkv = vec![0.0; batch * 3 * c * l];
                for (part, src) in [&q, &k, &v].into_iter().enumerate() {
                    for b in 0..batch {
                        for h in 0..heads {
                            for j in 0..l {
                                for i in 0..d {
                                    qkv[(b * 3 + part) * c * l + (h * d + i) * l + j] =
                                        src[qs.at(b, h, j) + i];
                                }
                            }
                        }
                    }
                }
                let cf = Heads {
                    batch: 3 * c * l,
                    head: d * l,
                    row: 1,
                    col: l,
                };
                let got = attention(
                    s,
                    (&qkv, cf),
                    (&qkv[c * l..], cf),
                    (&qkv[2 * c * l..], cf),
                    0.7,
                    Out::ChannelFirst,
                );
                let mut err: f64 = 0.0;
                for b in 0..batch {
                    for ch in 0..c {
                        for j in 0..l {
                            let want = want[(b * l + j) * c + ch];
                            err = err.max((got[(b * c + ch) * l + j] - want).abs());
                        }
                    }
                }
                assert!(err < 1e-12, "f64, channels first: {err}");
            }
            let f = |x: &[f64]| x.iter().map(|&x| x as f32).collect::<Vec<f32>>();
            let got = attention(
                s,
                (&f(&q), qs),
                (&f(&k), ks),
                (&f(&v), ks),
                0.7f32,
                Out::Joined,
            );
            let err = got
                .iter()
                .zip(&want)
                .map(|(&a, b)| (a as f64 - b).abs())
                .fold(0.0, f64::max);
            assert!(err < 1e-5, "f32: {err}");
        }
    }

    #[test]
    #[should_panic(expected = "outside its slice")]
    fn a_short_slice_is_refused() {
        let s = Shape {
            batch: 1,
            heads: 1,
            lq: 4,
            lk: 4,
            d: 2,
        };
        let h = Heads::joined(4, 1, 2);
        attention(
            s,
            (&[0.0f64; 7], h),
            (&[0.0; 8], h),
            (&[0.0; 8], h),
            1.0,
            Out::Joined,
        );
    }
}
