//! Attention: without a graph on the CPU the fused kernel of [`attention_kernel`] (a block of
//! query rows at a time, nothing N·Lq·Lk large; self-attention over an image read and written in
//! NCHW); under a gradient one op whose backward recomputes the probabilities chunk by chunk;
//! candle's fused softmax only where no gradient can be asked for.

use std::sync::Mutex;

use candle_core::{
    CpuStorage, CustomOp1, CustomOp3, DType, Layout, Module, Result, Shape, Tensor, D,
};
use candle_nn::VarBuilder;

use super::attention_kernel;
use super::frozen::take_output;
use super::with_host_slice;
use super::{group_norm, linear, Addend, Conv2d, GroupNorm, Linear};

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
    /// The three projections as one pointwise convolution (weights stacked) and the output
    /// projection as another, for the own CPU path on the image's NCHW layout (built for
    /// weights on the CPU only: the stacked copy is 3·C² more values).
    pointwise: Option<(Conv2d, Conv2d)>,
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
        let (to_q, to_k, to_v, to_out) = (
            lin(names[0])?,
            lin(names[1])?,
            lin(names[2])?,
            lin(names[3])?,
        );
        if head_dim == 0 || !channels.is_multiple_of(head_dim) {
            candle_core::bail!("attention: {channels} channels in heads of {head_dim}");
        }
        Ok(Self {
            group_norm: match norms {
                Some(n) => Some(group_norm(n.groups, channels, n.eps, vb.pp("group_norm"))?),
                None => None,
            },
            pointwise: if to_q.weight().device().is_cpu() {
                Some((pointwise(&[&to_q, &to_k, &to_v])?, pointwise(&[&to_out])?))
            } else {
                None
            },
            to_q,
            to_k,
            to_v,
            to_out,
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
        let own = |(q, o): &(Conv2d, Conv2d)| !q.0.weight().track_op() && !o.0.weight().track_op();
        if let Some((qkv_map, out_map)) = self.pointwise.as_ref().filter(|p| own(p) && own_cpu(x)) {
            // q, k and v in one pointwise convolution, the attention read and written in NCHW
            // (under a gradient one op whose backward recomputes the probabilities), the output
            // projection with the residual inside it. (Weights that are variables take the path
            // below, which differentiates them.)
            let qkv = qkv_map.forward(&normed)?.reshape((b, 3 * c, h * w))?;
            let y = stacked_self_attention(&qkv, self.heads)?.reshape((b, c, h, w))?;
            return divided(out_map.forward_add(&y, Addend::Full(x))?, self.rescale);
        }
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

/// softmax(QKᵀ/√d)V per head for q, k and v stacked in the channels of `qkv` [B, 3·C, L]
/// (C = heads·d, each head's d channels together), out channels first, [B, C, L]: the
/// attention of a network that makes q, k and v by one pointwise convolution over an image. On
/// the own CPU path the fused kernel, and under a gradient one op whose backward recomputes the
/// probabilities block by block; otherwise [`multi_head_attention`] over token rows.
pub fn stacked_self_attention(qkv: &Tensor, heads: usize) -> Result<Tensor> {
    let (b, c3, l) = qkv.dims3()?;
    SelfAttentionOp { heads }.shape(&[b, c3, l])?;
    if own_cpu(qkv) {
        let qkv = qkv.contiguous()?;
        return if qkv.track_op() {
            qkv.apply_op1(SelfAttentionOp { heads })
        } else {
            kernel_self_attention(&qkv, heads)
        };
    }
    let c = c3 / 3;
    let tokens = |i: usize| qkv.narrow(1, i * c, c)?.transpose(1, 2)?.contiguous();
    multi_head_attention(&tokens(0)?, &tokens(1)?, &tokens(2)?, heads, false)?
        .transpose(1, 2)?
        .contiguous()
}

/// The linear maps `maps` (weights [C_out, C_in] and biases) stacked into one pointwise
/// convolution: their outputs side by side in its channels.
fn pointwise(maps: &[&Linear]) -> Result<Conv2d> {
    let weights = maps.iter().map(|m| m.0.weight()).collect::<Vec<_>>();
    let biases = maps
        .iter()
        .map(|m| match m.0.bias() {
            Some(b) => Ok(b.clone()),
            None => m.0.weight().narrow(1, 0, 1)?.squeeze(1)?.zeros_like(),
        })
        .collect::<Result<Vec<_>>>()?;
    let w = Tensor::cat(&weights, 0)?;
    let (c_out, c_in) = w.dims2()?;
    Ok(Conv2d(candle_nn::Conv2d::new(
        w.reshape((c_out, c_in, 1, 1))?,
        Some(Tensor::cat(&biases, 0)?),
        Default::default(),
    )))
}

/// The scores' scale 1/√d for heads of `d` channels, in `T` (one rounding for every path).
fn score_scale<T: candle_core::WithDType>(d: usize) -> T {
    T::from_f64(1.0 / (d as f64).sqrt())
}

/// softmax(QKᵀ/√d)V by the CPU kernel for q, k and v stacked in the channels of `qkv`
/// [B, 3·C, L] (C = heads·d, each head's d channels together), in and out channels first:
/// [B, C, L], no graph.
fn kernel_self_attention(qkv: &Tensor, heads: usize) -> Result<Tensor> {
    let s = SelfAttentionOp { heads }.shape(qkv.dims())?;
    let qkv = qkv.contiguous()?;
    fn run<T: attention_kernel::Real + candle_core::WithDType>(
        s: attention_kernel::Shape,
        qkv: &Tensor,
    ) -> Result<Tensor> {
        let (c, l) = (s.heads * s.d, s.lq);
        let cf = attention_kernel::Heads {
            batch: 3 * c * l,
            head: s.d * l,
            row: 1,
            col: l,
        };
        let scale = score_scale::<T>(s.d);
        let out = with_host_slice(qkv, "attention", |x: &[T]| {
            attention_kernel::attention(
                s,
                (x, cf),
                (&x[c * l..], cf),
                (&x[2 * c * l..], cf),
                scale,
                attention_kernel::Out::ChannelFirst,
            )
        })?;
        Tensor::from_vec(out, (s.batch, c, l), &candle_core::Device::Cpu)
    }
    match qkv.dtype() {
        DType::F32 => run::<f32>(s, &qkv),
        DType::F64 => run::<f64>(s, &qkv),
        other => candle_core::bail!("attention kernel: {other:?} (only f32 and f64)"),
    }
}

/// Self-attention over q, k and v stacked in the channels of [B, 3·C, L] (see
/// [`kernel_self_attention`]) as one op: the graph keeps its input only, and the backward
/// recomputes the probabilities block by block ([`attention_kernel::self_attention_backward`]).
struct SelfAttentionOp {
    heads: usize,
}

impl SelfAttentionOp {
    fn shape(&self, dims: &[usize]) -> Result<attention_kernel::Shape> {
        let &[batch, c3, l] = dims else {
            candle_core::bail!("self-attention: input {dims:?}, not [B, 3·C, L]");
        };
        let c = c3 / 3;
        if !c3.is_multiple_of(3) || self.heads == 0 || !c.is_multiple_of(self.heads) {
            candle_core::bail!(
                "self-attention: {c3} channels are not q, k, v of {} heads",
                self.heads
            );
        }
        Ok(attention_kernel::Shape {
            batch,
            heads: self.heads,
            lq: l,
            lk: l,
            d: c / self.heads,
        })
    }
}

impl CustomOp1 for SelfAttentionOp {
    fn name(&self) -> &'static str {
        "self-attention"
    }
    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let s = self.shape(layout.dims())?;
        fn run<T: attention_kernel::Real + candle_core::WithDType>(
            s: attention_kernel::Shape,
            x: &[T],
        ) -> Result<Vec<T>> {
            let (hs, c, l) = (attention_kernel::stacked_heads(s), s.heads * s.d, s.lq);
            let scale = score_scale::<T>(s.d);
            Ok(attention_kernel::attention(
                s,
                (x, hs),
                (&x[c * l..], hs),
                (&x[2 * c * l..], hs),
                scale,
                attention_kernel::Out::ChannelFirst,
            ))
        }
        let out = super::cpu_forward(storage, layout, self.name(), |x| run(s, x), |x| run(s, x))?;
        Ok((out, Shape::from((s.batch, s.heads * s.d, s.lq))))
    }
    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let s = self.shape(arg.dims())?;
        let arg = arg.detach().contiguous()?;
        super::cpu_input_gradient(
            &arg,
            grad,
            "self-attention backward",
            |x, g, _| attention_kernel::self_attention_backward(s, x, g, score_scale(s.d)),
            |x, g, _| attention_kernel::self_attention_backward(s, x, g, score_scale(s.d)),
        )
        .map(Some)
    }
}

/// Multi-head scaled dot-product attention: queries `q` [B, Lq, C], keys `k` and values `v`
/// [B, Lk, C], `heads` heads of C/heads channels, softmax(QKᵀ/√d)V per head, heads joined back
/// to [B, Lq, C]. `causal` masks every key after its query (CLIP's text encoder, never
/// differentiated). Without a mask the scores are taken a chunk of query rows at a time, and under a
/// gradient the attention is one op that recomputes them in its backward (see [`attention`]).
pub fn multi_head_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    causal: bool,
) -> Result<Tensor> {
    let (b, lq, c) = q.dims3()?;
    let lk = k.dim(1)?;
    if heads == 0 || !c.is_multiple_of(heads) {
        candle_core::bail!("attention: {c} channels do not split into {heads} heads");
    }
    let d = c / heads;
    let tracked = q.track_op() || k.track_op() || v.track_op();
    if !causal && !tracked && own_cpu(q) {
        return kernel_attention(q, k, v, heads, 1.0 / (d as f64).sqrt());
    }
    let split = |t: &Tensor, l: usize| -> Result<Tensor> {
        t.reshape((b, l, heads, d))?.transpose(1, 2)?.contiguous()
    };
    // The scale on the queries (small), not on the scores (Lq × Lk per head).
    let (q, k, v) = (
        (split(q, lq)? * (1.0 / (d as f64).sqrt()))?,
        split(k, lk)?,
        split(v, lk)?,
    );
    let out = if causal {
        let mut scores = q.matmul(&k.t()?.contiguous()?)?;
        let mask: Vec<f32> = (0..lq)
            .flat_map(|i| (0..lk).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
            .collect();
        let mask = Tensor::from_vec(mask, (lq, lk), q.device())?.to_dtype(scores.dtype())?;
        scores = scores.broadcast_add(&mask)?;
        softmax(&scores)?.matmul(&v)?
    } else {
        attention(
            &q.reshape((b * heads, lq, d))?,
            &k.reshape((b * heads, lk, d))?,
            &v.reshape((b * heads, lk, d))?,
            CHUNK_SCORES,
        )?
        .reshape((b, heads, lq, d))?
    };
    out.transpose(1, 2)?.reshape((b, lq, c))
}

/// Elements of one chunk's scores: query rows are taken this many scores at a time.
const CHUNK_SCORES: usize = 1 << 24;

/// softmax(q kᵀ) v for `q` [N, Lq, d] (already scaled), `k` and `v` [N, Lk, d], over chunks of
/// query rows of at most `budget` scores. Under a gradient on the CPU it is one op that
/// keeps q, k and v only and recomputes each chunk's probabilities in its backward, as flash
/// attention does: the composite keeps the scores and the probabilities, N·Lq·Lk each (a
/// gigabyte per layer over a 64×64 latent). Elsewhere under a gradient, the composite.
fn attention(q: &Tensor, k: &Tensor, v: &Tensor, budget: usize) -> Result<Tensor> {
    let tracked = q.track_op() || k.track_op() || v.track_op();
    let cpu = q.device().is_cpu() && matches!(q.dtype(), DType::F32 | DType::F64);
    if !super::own_ops() || (tracked && !cpu) {
        return softmax(&q.matmul(&k.t()?.contiguous()?)?)?.matmul(v);
    }
    if !tracked {
        return chunked_attention(q, k, v, budget);
    }
    let out = chunked_attention(&q.detach(), &k.detach(), &v.detach(), budget)?;
    q.apply_op3(
        k,
        v,
        AttentionOp {
            out: Mutex::new(Some(out)),
            budget,
        },
    )
}

/// The starts and lengths of chunks of `lq` query rows against `lk` keys in `n` batches, each
/// with at most `budget` scores (at least one row).
fn row_chunks(
    n: usize,
    lq: usize,
    lk: usize,
    budget: usize,
) -> impl Iterator<Item = (usize, usize)> {
    let rows = (budget / (n * lk).max(1)).clamp(1, lq.max(1));
    (0..lq).step_by(rows).map(move |r| (r, rows.min(lq - r)))
}

/// The attention's value without a graph: the CPU kernel, elsewhere chunk by chunk (fused
/// softmax).
fn chunked_attention(q: &Tensor, k: &Tensor, v: &Tensor, budget: usize) -> Result<Tensor> {
    if own_cpu(q) {
        return kernel_attention(q, k, v, 1, 1.0);
    }
    let (n, lq, _) = q.dims3()?;
    // Kᵀ as a strided view: the matrix product reads it in place.
    let kt = k.t()?;
    let mut outs = row_chunks(n, lq, k.dim(1)?, budget)
        .map(|(r, m)| softmax_last_dim(&q.narrow(1, r, m)?.matmul(&kt)?)?.matmul(v))
        .collect::<Result<Vec<_>>>()?;
    if outs.len() == 1 {
        return Ok(outs.remove(0));
    }
    Tensor::cat(&outs, 1)
}

/// softmax(scale·QKᵀ)V by the CPU kernel ([`attention_kernel`]) for `q` [B, Lq, C], `k` and `v`
/// [B, Lk, C] with `heads` heads side by side in the channels: [B, Lq, C], no graph.
fn kernel_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    scale: f64,
) -> Result<Tensor> {
    let (b, lq, c) = q.dims3()?;
    let lk = k.dim(1)?;
    if k.dims() != [b, lk, c] || v.dims() != [b, lk, c] || heads == 0 || !c.is_multiple_of(heads) {
        candle_core::bail!(
            "attention: queries {:?}, keys {:?} and values {:?} do not fit {heads} heads",
            q.dims(),
            k.dims(),
            v.dims()
        );
    }
    let s = attention_kernel::Shape {
        batch: b,
        heads,
        lq,
        lk,
        d: c / heads,
    };
    let (q, k, v) = (q.contiguous()?, k.contiguous()?, v.contiguous()?);
    fn run<T: attention_kernel::Real + candle_core::WithDType>(
        s: attention_kernel::Shape,
        [q, k, v]: [&Tensor; 3],
        scale: f64,
    ) -> Result<Tensor> {
        use attention_kernel::Heads;
        let (qs, ks) = (
            Heads::joined(s.lq, s.heads, s.d),
            Heads::joined(s.lk, s.heads, s.d),
        );
        let name = "attention";
        let out = with_host_slice(q, name, |q: &[T]| {
            with_host_slice(k, name, |k: &[T]| {
                with_host_slice(v, name, |v: &[T]| {
                    attention_kernel::attention(
                        s,
                        (q, qs),
                        (k, ks),
                        (v, ks),
                        T::from_f64(scale),
                        attention_kernel::Out::Joined,
                    )
                })
            })
        })???;
        Tensor::from_vec(
            out,
            (s.batch, s.lq, s.heads * s.d),
            &candle_core::Device::Cpu,
        )
    }
    match q.dtype() {
        DType::F32 => run::<f32>(s, [&q, &k, &v], scale),
        DType::F64 => run::<f64>(s, [&q, &k, &v], scale),
        other => candle_core::bail!("attention kernel: {other:?} (only f32 and f64)"),
    }
}

/// Attention whose backward recomputes the probabilities P of each chunk of query rows:
/// ∂V = Σ Pᵀ∂O, ∂S = P ⊙ (∂O Vᵀ − rowsum(P ⊙ ∂O Vᵀ)), ∂Q = ∂S K, ∂K = Σ ∂Sᵀ Q.
struct AttentionOp {
    out: Mutex<Option<Tensor>>,
    budget: usize,
}

impl CustomOp3 for AttentionOp {
    fn name(&self) -> &'static str {
        "attention-recomputed"
    }
    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        take_output(&self.out, self.name())
    }
    #[allow(clippy::type_complexity)]
    fn bwd(
        &self,
        q_arg: &Tensor,
        k_arg: &Tensor,
        v_arg: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (q, k, v) = (q_arg.detach(), k_arg.detach(), v_arg.detach());
        let grad = grad.detach().contiguous()?;
        let (n, lq, _) = q.dims3()?;
        // Transposes as strided views: the matrix products read them in place.
        let (kt, vt) = (k.t()?, v.t()?);
        let (mut dq, mut dk, mut dv) = (Vec::new(), None, None);
        let add = |sum: Option<Tensor>, t: Tensor| match sum {
            None => Ok(t),
            Some(sum) => sum + t,
        };
        for (r, m) in row_chunks(n, lq, k.dim(1)?, self.budget) {
            let q_c = q.narrow(1, r, m)?;
            let p = softmax_last_dim(&q_c.matmul(&kt)?)?;
            let g = grad.narrow(1, r, m)?;
            dv = Some(add(dv, p.t()?.matmul(&g)?)?);
            let ds = softmax_backward(&p, &g.matmul(&vt)?)?;
            dq.push(ds.matmul(&k)?);
            dk = Some(add(dk, ds.t()?.matmul(&q_c)?)?);
        }
        let dq = if dq.len() == 1 {
            dq.remove(0)
        } else {
            Tensor::cat(&dq, 1)?
        };
        let (dk, dv) = match (dk, dv) {
            (Some(dk), Some(dv)) => (dk, dv),
            _ => (k.zeros_like()?, v.zeros_like()?),
        };
        let keep = |t: &Tensor, g: Tensor| t.track_op().then_some(g);
        Ok((keep(q_arg, dq), keep(k_arg, dk), keep(v_arg, dv)))
    }
}

/// Row-wise softmax of `src`'s rows of `dim` elements, vectorised, on the pool.
macro_rules! softmax_rows {
    ($src:expr, $dim:expr, $t:ty, $exp:expr) => {{
        let src: &[$t] = $src;
        let dim = $dim;
        let mut out = vec![0 as $t; src.len()];
        super::parallel::for_each_chunk(&mut out, dim, |(i, y)| {
            super::parallel::vectorized(
                #[inline(always)]
                || {
                    let x = &src[i * dim..][..dim];
                    let m = super::parallel::max(x, <$t>::NEG_INFINITY);
                    for (yi, &xi) in y.iter_mut().zip(x) {
                        *yi = $exp(xi - m);
                    }
                    let inv = 1.0 / super::parallel::sum(y);
                    for yi in y.iter_mut() {
                        *yi *= inv;
                    }
                },
            )
        });
        out
    }};
}

/// Row-wise p ⊙ (g − ⟨g, p⟩) of `p` and `g` of `dims` (rows along the last one).
macro_rules! softmax_grad_rows {
    ($p:expr, $g:expr, $dims:expr, $t:ty) => {{
        let (p, g): (&[$t], &[$t]) = ($p, $g);
        let dim = *$dims.last().unwrap_or(&1);
        let mut out = vec![0 as $t; p.len()];
        super::parallel::for_each_chunk(&mut out, dim.max(1), |(i, d)| {
            super::parallel::vectorized(
                #[inline(always)]
                || {
                    let (p, g) = (&p[i * dim..][..dim], &g[i * dim..][..dim]);
                    let dot = super::parallel::dot(p, g);
                    for ((d, &pi), &gi) in d.iter_mut().zip(p).zip(g) {
                        *d = pi * (gi - dot);
                    }
                },
            )
        });
        out
    }};
}

/// Softmax over the last dimension: without a gradient, [`softmax_last_dim`]; under a gradient,
/// on the CPU, [`Softmax`], which keeps only its output for the backward; elsewhere (or without
/// the own ops) the differentiable composite.
pub(crate) fn softmax(x: &Tensor) -> Result<Tensor> {
    if !x.track_op() {
        softmax_last_dim(x)
    } else if own_cpu(x) {
        x.contiguous()?.apply_op1(Softmax)
    } else {
        candle_nn::ops::softmax(x, D::Minus1)
    }
}

fn own_cpu(x: &Tensor) -> bool {
    super::own_ops() && x.device().is_cpu() && matches!(x.dtype(), DType::F32 | DType::F64)
}

/// Softmax over the last dimension without a gradient: [`Softmax`]'s vectorised rows on the
/// CPU, candle's fused kernel elsewhere.
fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    if own_cpu(x) {
        x.contiguous()?.apply_op1_no_bwd(&Softmax)
    } else {
        candle_nn::ops::softmax_last_dim(x)
    }
}

/// The gradient of the scores from the probabilities `p` and their gradient `dp`, row by row:
/// p ⊙ (dp − ⟨dp, p⟩). One pass on the CPU; the composite elsewhere.
fn softmax_backward(p: &Tensor, dp: &Tensor) -> Result<Tensor> {
    if !own_cpu(p) {
        let dot = (dp * p)?.sum_keepdim(D::Minus1)?;
        return p * dp.broadcast_sub(&dot)?;
    }
    let p = p.contiguous()?;
    super::cpu_input_gradient(
        &p,
        dp,
        "softmax-backward",
        |p, g, dims| softmax_grad_rows!(p, g, dims, f32),
        |p, g, dims| softmax_grad_rows!(p, g, dims, f64),
    )
}

/// Softmax over the last dimension as one op with its backward, ∂x = y ⊙ (∂y − ⟨∂y, y⟩): the
/// graph holds the output only, where the composite (max, shift, exp, sum, divide) holds four
/// tensors of the scores' size. Unmasked attention does not need it ([`AttentionOp`] keeps no
/// scores); the masked (causal) attention takes it under a gradient.
struct Softmax;

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
            CpuStorage::F32(v) => CpuStorage::F32(softmax_rows!(
                &v[start..end],
                dim,
                f32,
                super::activation::exp_f32
            )),
            CpuStorage::F64(v) => {
                CpuStorage::F64(softmax_rows!(&v[start..end], dim, f64, f64::exp))
            }
            _ => candle_core::bail!("softmax: only f32 and f64 here"),
        };
        Ok((out, layout.shape().clone()))
    }
    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        softmax_backward(res, grad).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::testing::{backward_of_weighted_sum, max_abs};
    use candle_core::{Device, Var};

    /// The chunked attention and its recomputing backward equal the composite
    /// softmax(QKᵀ)V and its gradients in q, k and v, in f64 and f32, with one chunk and with
    /// chunks that do not divide the rows; a constant k and v (cross-attention on text) get no
    /// gradient.
    #[test]
    fn recomputed_attention_equals_the_composite() {
        let dev = Device::Cpu;
        for dtype in [DType::F64, DType::F32] {
            let tol = if dtype == DType::F64 { 1e-12 } else { 1e-5 };
            let r = |shape: (usize, usize, usize)| {
                Tensor::randn(0f64, 1.0, shape, &dev)
                    .unwrap()
                    .to_dtype(dtype)
                    .unwrap()
            };
            let (q, k, v) = (r((3, 11, 4)), r((3, 7, 4)), r((3, 7, 4)));
            let w = r((3, 11, 4));
            for budget in [1 << 20, 3 * 7 * 3, 1] {
                for kv_tracked in [true, false] {
                    let vars: Vec<Var> = [&q, &k, &v]
                        .iter()
                        .map(|t| Var::from_tensor(t).unwrap())
                        .collect();
                    let (kk, vv) = if kv_tracked {
                        (vars[1].as_tensor().clone(), vars[2].as_tensor().clone())
                    } else {
                        (k.clone(), v.clone())
                    };
                    let ours = attention(vars[0].as_tensor(), &kk, &vv, budget).unwrap();
                    let scores = vars[0].matmul(&kk.t().unwrap()).unwrap();
                    let theirs = candle_nn::ops::softmax(&scores, D::Minus1)
                        .unwrap()
                        .matmul(&vv)
                        .unwrap();
                    assert!(max_abs((&ours - &theirs).unwrap()) < tol);
                    let plain = attention(&q, &k, &v, budget).unwrap();
                    assert!(max_abs((&plain - &theirs).unwrap()) < tol);
                    let (ga, gb) = (
                        backward_of_weighted_sum(ours, &w),
                        backward_of_weighted_sum(theirs, &w),
                    );
                    for (i, var) in vars.iter().enumerate() {
                        match (ga.get(var), gb.get(var)) {
                            (Some(a), Some(b)) => assert!(max_abs((a - b).unwrap()) < tol * 10.0),
                            (None, None) => assert!(i > 0 && !kv_tracked),
                            _ => panic!("gradient of input {i} present on one side only"),
                        }
                    }
                }
            }
        }
    }

    /// The self-attention op over stacked q, k, v in NCHW and its recomputing backward equal
    /// the composite softmax(QKᵀ/√d)V and its gradient, in f64 and f32, for one head and
    /// several, few rows and enough to be shared out between threads in blocks.
    #[test]
    fn stacked_self_attention_equals_the_composite() {
        let dev = Device::Cpu;
        for dtype in [DType::F64, DType::F32] {
            let tol = if dtype == DType::F64 { 1e-12 } else { 1e-5 };
            for (b, heads, d, l) in [(2, 1, 3, 7), (3, 2, 4, 300), (1, 3, 2, 40)] {
                let c = heads * d;
                let r = |shape: (usize, usize, usize)| {
                    Tensor::randn(0f64, 1.0, shape, &dev)
                        .unwrap()
                        .to_dtype(dtype)
                        .unwrap()
                };
                let (qkv, w) = (r((b, 3 * c, l)), r((b, c, l)));
                let var = Var::from_tensor(&qkv).unwrap();
                let ours = var.apply_op1(SelfAttentionOp { heads }).unwrap();
                let plain = kernel_self_attention(&qkv, heads).unwrap();
                let part = |i: usize| -> Tensor {
                    var.narrow(1, i * c, c)
                        .unwrap()
                        .reshape((b, heads, d, l))
                        .unwrap()
                        .transpose(2, 3)
                        .unwrap()
                };
                let scores =
                    (part(0).matmul(&part(1).t().unwrap()).unwrap() / (d as f64).sqrt()).unwrap();
                let theirs = candle_nn::ops::softmax(&scores, D::Minus1)
                    .unwrap()
                    .matmul(&part(2))
                    .unwrap()
                    .transpose(2, 3)
                    .unwrap()
                    .reshape((b, c, l))
                    .unwrap();
                assert!(max_abs((&ours - &theirs).unwrap()) < tol);
                assert!(max_abs((&plain - &theirs).unwrap()) < tol);
                let (ga, gb) = (
                    backward_of_weighted_sum(ours, &w),
                    backward_of_weighted_sum(theirs, &w),
                );
                let (a, g) = (ga.get(&var).unwrap(), gb.get(&var).unwrap());
                assert!(
                    max_abs((a - g).unwrap()) < tol * 10.0,
                    "{dtype:?} {b} {heads} {d} {l}"
                );
            }
        }
    }

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
