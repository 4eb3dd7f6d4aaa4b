//! Network layers shared by every model family (diffusers' UNet2DModel today; the Stable
//! Diffusion UNet and EDM's networks next), written only with ops whose backward candle computes
//! correctly — no fused softmax or norms, nearest upsampling as a broadcast — so that every
//! network built from them is differentiable in its input and its time input.

mod activation;
mod attention;
mod attention_kernel;
mod conv;
mod conv_kernel;
mod embeddings;
mod frozen;
mod matmul;
mod norm;
pub mod parallel;
mod resample;
mod resnet;
#[cfg(test)]
pub(crate) mod testing;
mod transformer;

pub use activation::{relu, silu, Activation};
pub use attention::{multi_head_attention, stacked_self_attention, SelfAttention};
pub use conv::{conv, upsample_nearest_2x};
pub use embeddings::{timestep_embedding, TimestepMlp};
pub use frozen::{conv2d, conv2d_relu, linear, linear_no_bias, Addend, Conv2d, Linear};
pub use norm::{group_norm, GroupNorm, LayerNorm};
pub(crate) use resample::fir_down2_padded;
pub use resample::{fir_down2, fir_filter, fir_up2};
pub use resnet::{Norms, ResnetBlock};
pub use transformer::{Attention, SpatialTransformer, TransformerShape};

use std::sync::atomic::{AtomicU8, Ordering};

/// 0: not yet read from the environment; 1: own ops; 2: candle's generic ones.
static OWN_OPS: AtomicU8 = AtomicU8::new(0);

/// Whether the layers take this crate's own CPU ops where they apply — the fused GroupNorm
/// (alone or with SiLU), SiLU and ReLU, the fused attention kernel without a graph and the
/// attention ops that recompute their probabilities in the backward, the frozen-weight
/// convolution (alone, with a fused addend, or with its ReLU) and linear maps, the softmax with a
/// backward. On by default; off when the environment sets `LD3_GENERIC_OPS=1` or after
/// [`set_own_ops`]`(false)`: every layer is then candle's generic composite, the reference the
/// own ops are tested against.
pub fn own_ops() -> bool {
    match OWN_OPS.load(Ordering::Relaxed) {
        1 => true,
        2 => false,
        _ => {
            let generic = std::env::var("LD3_GENERIC_OPS").is_ok_and(|v| v == "1");
            OWN_OPS.store(if generic { 2 } else { 1 }, Ordering::Relaxed);
            !generic
        }
    }
}

/// Turns the own ops on or off for the whole process (see [`own_ops`]).
pub fn set_own_ops(on: bool) {
    OWN_OPS.store(if on { 1 } else { 2 }, Ordering::Relaxed);
}

/// The elements of a contiguous CPU tensor from its storage and layout (the own ops make their
/// operands contiguous first); `op` names the op in the error.
pub fn contiguous_slice<'a, T: candle_core::WithDType>(
    storage: &'a candle_core::CpuStorage,
    layout: &candle_core::Layout,
    op: &str,
) -> candle_core::Result<&'a [T]> {
    let (start, end) = layout
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg(format!("{op}: a non-contiguous operand")))?;
    Ok(&storage.as_slice::<T>()?[start..end])
}

/// The forward of an own CPU op: `f32` or `f64` (whichever `storage` holds) gets the contiguous
/// elements and returns the output's. `op` names the op in errors.
pub fn cpu_forward(
    storage: &candle_core::CpuStorage,
    layout: &candle_core::Layout,
    op: &str,
    f32: impl FnOnce(&[f32]) -> candle_core::Result<Vec<f32>>,
    f64: impl FnOnce(&[f64]) -> candle_core::Result<Vec<f64>>,
) -> candle_core::Result<candle_core::CpuStorage> {
    use candle_core::CpuStorage;
    match storage {
        CpuStorage::F32(_) => Ok(CpuStorage::F32(f32(contiguous_slice(
            storage, layout, op,
        )?)?)),
        CpuStorage::F64(_) => Ok(CpuStorage::F64(f64(contiguous_slice(
            storage, layout, op,
        )?)?)),
        _ => candle_core::bail!("{op}: only f32 and f64"),
    }
}

/// `f` on the elements of `t`, a contiguous tensor on the CPU (an op's constant operand: a
/// weight, a bias).
pub(crate) fn with_host_slice<T: candle_core::WithDType, R>(
    t: &candle_core::Tensor,
    op: &str,
    f: impl FnOnce(&[T]) -> R,
) -> candle_core::Result<R> {
    let (storage, layout) = t.storage_and_layout();
    let candle_core::Storage::Cpu(storage) = &*storage else {
        candle_core::bail!("{op}: an operand is not on the CPU");
    };
    Ok(f(contiguous_slice(storage, layout, op)?))
}

/// The backward of an own CPU op that needs only its input and the output gradient: `f32` or
/// `f64` (whichever `arg` holds) gets both as contiguous slices, with `arg`'s dims, and returns the
/// input gradient. `op` names the op in errors.
pub fn cpu_input_gradient(
    arg: &candle_core::Tensor,
    grad: &candle_core::Tensor,
    op: &str,
    f32: impl FnOnce(&[f32], &[f32], &[usize]) -> Vec<f32>,
    f64: impl FnOnce(&[f64], &[f64], &[usize]) -> Vec<f64>,
) -> candle_core::Result<candle_core::Tensor> {
    use candle_core::{CpuStorage, Storage, Tensor};
    let grad = grad.contiguous()?;
    let (xs, xl) = arg.storage_and_layout();
    let (gs, gl) = grad.storage_and_layout();
    let dims = xl.dims();
    let dev = candle_core::Device::Cpu;
    match (&*xs, &*gs) {
        (Storage::Cpu(xs @ CpuStorage::F32(_)), Storage::Cpu(gs)) => {
            let dx = f32(
                contiguous_slice(xs, xl, op)?,
                contiguous_slice(gs, gl, op)?,
                dims,
            );
            Tensor::from_vec(dx, dims, &dev)
        }
        (Storage::Cpu(xs @ CpuStorage::F64(_)), Storage::Cpu(gs)) => {
            let dx = f64(
                contiguous_slice(xs, xl, op)?,
                contiguous_slice(gs, gl, op)?,
                dims,
            );
            Tensor::from_vec(dx, dims, &dev)
        }
        _ => candle_core::bail!("{op} backward: only f32 and f64 on the CPU"),
    }
}
