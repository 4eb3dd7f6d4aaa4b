//! Network layers shared by every model family (diffusers' UNet2DModel today; the Stable
//! Diffusion UNet and EDM's networks next), written only with ops whose backward candle computes
//! correctly — no fused softmax or norms, nearest upsampling as a broadcast — so that every
//! network built from them is differentiable in its input and its time input.

mod activation;
mod attention;
mod conv;
mod embeddings;
mod frozen;
mod norm;
mod resample;
mod resnet;
mod transformer;

pub use activation::Activation;
pub use attention::{multi_head_attention, SelfAttention};
pub use conv::{conv, upsample_nearest_2x};
pub use embeddings::{timestep_embedding, TimestepMlp};
pub use frozen::{conv2d, linear, linear_no_bias, Conv2d, Linear};
pub use norm::LayerNorm;
pub(crate) use resample::fir_down2_padded;
pub use resample::{fir_down2, fir_filter, fir_up2};
pub use resnet::{Norms, ResnetBlock};
pub use transformer::{Attention, SpatialTransformer, TransformerShape};
