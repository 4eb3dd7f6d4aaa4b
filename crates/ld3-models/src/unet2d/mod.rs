//! diffusers' unconditional `UNet2DModel` (DDPM, google/ddpm-*), built from the hub's
//! `config.json` and weights, differentiable in its input and in its (continuous) time input.

mod blocks;
mod config;

pub use config::{SampleSize, UNet2DConfig};

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use crate::layers::{group_norm, Conv2d, GroupNorm};

use crate::layers::{timestep_embedding, Norms, TimestepMlp};
pub(crate) use blocks::{DownBlock, Level, LevelAttention, MidBlock, UpBlock};

/// The network: x [B, C, H, W] and timesteps [B] (diffusers' training-step index, any real
/// value) in, the raw prediction out.
pub struct UNet2DModel {
    config: UNet2DConfig,
    time_embedding: TimestepMlp,
    conv_in: Conv2d,
    down_blocks: Vec<DownBlock>,
    mid_block: Option<MidBlock>,
    up_blocks: Vec<UpBlock>,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
}

impl UNet2DModel {
    /// Builds the network of `config` with weights from `vb` (diffusers' key names).
    pub fn new(config: UNet2DConfig, vb: VarBuilder) -> Result<Self> {
        let c = &config;
        let widths = &c.block_out_channels;
        let n = widths.len();
        let temb = c.time_embed_dim();
        let norms = Norms {
            groups: c.groups(),
            eps: c.norm_eps,
        };
        let level = |c_in: usize, c_out: usize, attn: bool, attn_norms: Option<Norms>| Level {
            c_in,
            c_out,
            temb,
            norms,
            attention: match attn {
                true => LevelAttention::Spatial {
                    head_dim: c.head_dim(c_out),
                    norms: attn_norms,
                },
                false => LevelAttention::None,
            },
            scale_shift: c.scale_shift(),
        };
        let time_embedding = TimestepMlp::new(widths[0], temb, vb.pp("time_embedding"))?;
        let conv_in = crate::layers::conv(c.in_channels, widths[0], 3, 1, 1, vb.pp("conv_in"))?;

        let mut down_blocks = Vec::with_capacity(n);
        for (i, kind) in c.down_block_types.iter().enumerate() {
            let c_in = if i == 0 { widths[0] } else { widths[i - 1] };
            let lv = level(c_in, widths[i], kind == "AttnDownBlock2D", Some(norms));
            let downsample = (i + 1 < n).then_some(c.downsample_padding);
            down_blocks.push(DownBlock::new(
                &lv,
                c.layers_per_block,
                downsample,
                vb.pp(format!("down_blocks.{i}")),
            )?);
        }

        let mid_block = match c.mid_block_type {
            Some(_) => {
                let attn_norms = c.mid_attn_groups().map(|groups| Norms {
                    groups,
                    eps: c.norm_eps,
                });
                let lv = level(widths[n - 1], widths[n - 1], c.add_attention, attn_norms);
                Some(MidBlock::new(
                    &lv,
                    c.mid_block_scale_factor,
                    vb.pp("mid_block"),
                )?)
            }
            None => None,
        };

        let mut up_blocks = Vec::with_capacity(n);
        let reversed: Vec<usize> = widths.iter().rev().copied().collect();
        let mut c_out = reversed[0];
        for (i, kind) in c.up_block_types.iter().enumerate() {
            let prev = c_out;
            c_out = reversed[i];
            let skip = reversed[(i + 1).min(n - 1)];
            let lv = level(skip, c_out, kind == "AttnUpBlock2D", Some(norms));
            up_blocks.push(UpBlock::new(
                &lv,
                prev,
                c.layers_per_block + 1,
                i + 1 < n,
                vb.pp(format!("up_blocks.{i}")),
            )?);
        }

        let conv_norm_out = group_norm(c.groups(), widths[0], c.norm_eps, vb.pp("conv_norm_out"))?;
        let conv_out = crate::layers::conv(widths[0], c.out_channels, 3, 1, 1, vb.pp("conv_out"))?;
        Ok(Self {
            config,
            time_embedding,
            conv_in,
            down_blocks,
            mid_block,
            up_blocks,
            conv_norm_out,
            conv_out,
        })
    }

    /// Random weights for `config` (candle's default initialisation), as plain tensors: an
    /// architecture to benchmark without its checkpoint.
    pub fn random_weights(
        config: &UNet2DConfig,
        dtype: candle_core::DType,
        device: &candle_core::Device,
    ) -> Result<crate::Checkpoint> {
        let varmap = candle_nn::VarMap::new();
        Self::new(
            config.clone(),
            VarBuilder::from_varmap(&varmap, dtype, device),
        )?;
        let tensors = varmap
            .data()
            .lock()
            .expect("varmap lock")
            .iter()
            .map(|(k, v)| (k.clone(), v.as_tensor().detach()))
            .collect();
        Ok(crate::Checkpoint::from_tensors("random weights", tensors))
    }

    /// The configuration the network was built from.
    pub fn config(&self) -> &UNet2DConfig {
        &self.config
    }

    /// The prediction for `x` [B, C, H, W] at `timesteps` (rank 0 or [B], in training-step
    /// units: 0 … num_train_timesteps − 1, not rounded).
    pub fn forward(&self, x: &Tensor, timesteps: &Tensor) -> Result<Tensor> {
        let c = &self.config;
        let levels = self.down_blocks.len() as u32;
        let factor = 2usize.pow(levels.saturating_sub(1));
        let dims = x.dims();
        if dims.len() != 4
            || dims[1] != c.in_channels
            || !dims[2].is_multiple_of(factor)
            || !dims[3].is_multiple_of(factor)
        {
            candle_core::bail!(
                "UNet2DModel input must be [B, {}, H, W] with H and W multiples of {factor}, got {:?}",
                c.in_channels,
                x.dims()
            );
        }
        let b = dims[0];
        // The step index and its sinusoids in f32 at least (as diffusers): in f16/bf16 the
        // index near 999 would be rounded to steps of 0.5 to 4.
        let t_dtype = match x.dtype() {
            candle_core::DType::F64 => candle_core::DType::F64,
            _ => candle_core::DType::F32,
        };
        let timesteps = timesteps.to_dtype(t_dtype)?;
        let timesteps = match timesteps.rank() {
            0 => timesteps.reshape(1)?.broadcast_as(b)?.contiguous()?,
            _ if timesteps.elem_count() == 1 => {
                timesteps.reshape(1)?.broadcast_as(b)?.contiguous()?
            }
            _ if timesteps.elem_count() == b => timesteps.reshape(b)?,
            _ => candle_core::bail!(
                "timesteps must be a scalar, [1] or [{b}] for a batch of {b}, got {:?}",
                timesteps.dims()
            ),
        };
        let t_emb = timestep_embedding(
            &timesteps,
            c.block_out_channels[0],
            c.flip_sin_to_cos,
            c.freq_shift,
        )?
        .to_dtype(x.dtype())?;
        let temb = self.time_embedding.forward(&t_emb)?;

        let x = if c.center_input_sample {
            ((x * 2.0)? - 1.0)?
        } else {
            x.clone()
        };
        let h = run_levels(
            self.conv_in.forward(&x)?,
            &temb,
            None,
            &self.down_blocks,
            self.mid_block.as_ref(),
            &self.up_blocks,
        )?;
        let h = crate::layers::silu(&self.conv_norm_out.forward(&h)?)?;
        self.conv_out.forward(&h)
    }
}

/// The levels of a UNet on the output `h` of its input convolution: the down blocks (every state
/// kept for the skips), the mid block, then the up blocks, each taking its skips from the back;
/// `context` for cross-attention.
pub(crate) fn run_levels(
    mut h: Tensor,
    temb: &Tensor,
    context: Option<&Tensor>,
    down: &[DownBlock],
    mid: Option<&MidBlock>,
    up: &[UpBlock],
) -> Result<Tensor> {
    let mut skips = vec![h.clone()];
    for block in down {
        let (out, states) = block.forward(&h, Some(temb), context)?;
        h = out;
        skips.extend(states);
    }
    if let Some(mid) = mid {
        h = mid.forward(&h, Some(temb), context)?;
    }
    for block in up {
        let rest = skips.len() - block.num_skips();
        h = block.forward(&h, &skips[rest..], Some(temb), context)?;
        skips.truncate(rest);
    }
    Ok(h)
}
