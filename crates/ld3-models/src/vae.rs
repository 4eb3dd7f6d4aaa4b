//! diffusers' `AutoencoderKL` (Stable Diffusion's VAE): the decoder maps a latent to an image
//! and is differentiable in the latent (LD3 measures its distance on decoded images); the encoder
//! maps an image to its latent distribution. Built from the shared layers and the UNet blocks
//! (ResNets without time, the spatial self-attention of its mid block under either key spelling,
//! `to_q…` or the legacy `query…` of the hub's SD 1.x files).

use std::path::Path;

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::VarBuilder;

use crate::layers::{group_norm, Conv2d, GroupNorm};
use serde::Deserialize;

use crate::layers::{conv, upsample_nearest_2x, Norms, ResnetBlock};
use crate::unet2d::{DownBlock, Level, LevelAttention, MidBlock};

/// The fields of `vae/config.json` this network reads (diffusers' defaults for keys older
/// files lack: no `scaling_factor` means SD's 0.18215).
#[derive(Clone, Debug, Deserialize)]
pub struct AutoencoderKlConfig {
    /// `AutoencoderKL`.
    #[serde(rename = "_class_name", default)]
    pub class_name: Option<String>,
    /// Image channels in.
    #[serde(default = "three")]
    pub in_channels: usize,
    /// Image channels out.
    #[serde(default = "three")]
    pub out_channels: usize,
    /// Encoder blocks (`DownEncoderBlock2D`).
    pub down_block_types: Vec<String>,
    /// Decoder blocks (`UpDecoderBlock2D`).
    pub up_block_types: Vec<String>,
    /// Width of each level.
    pub block_out_channels: Vec<usize>,
    /// ResNets per encoder level (one more per decoder level).
    #[serde(default = "one")]
    pub layers_per_block: usize,
    /// Activation (silu).
    #[serde(default = "silu")]
    pub act_fn: String,
    /// Latent channels.
    #[serde(default = "four")]
    pub latent_channels: usize,
    /// GroupNorm groups.
    #[serde(default = "thirty_two")]
    pub norm_num_groups: usize,
    /// Latents are the VAE's latents times this (SD: 0.18215).
    #[serde(default = "sd_scaling")]
    pub scaling_factor: f64,
    /// Subtracted before scaling (SD 3; SD 1.x/2.x have none).
    #[serde(default)]
    pub shift_factor: Option<f64>,
    /// A 1×1 conv after the encoder.
    #[serde(default = "yes")]
    pub use_quant_conv: bool,
    /// A 1×1 conv before the decoder.
    #[serde(default = "yes")]
    pub use_post_quant_conv: bool,
    /// Self-attention in the mid blocks.
    #[serde(default = "yes")]
    pub mid_block_add_attention: bool,
}

fn three() -> usize {
    3
}
fn four() -> usize {
    4
}
fn one() -> usize {
    1
}
fn thirty_two() -> usize {
    32
}
fn silu() -> String {
    "silu".into()
}
fn yes() -> bool {
    true
}
fn sd_scaling() -> f64 {
    0.18215
}

/// `UpDecoderBlock2D`: ResNets without time or skips, then nearest ×2 and a conv.
struct DecoderUpBlock {
    resnets: Vec<ResnetBlock>,
    upsampler: Option<Conv2d>,
}

impl DecoderUpBlock {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = x.clone();
        for r in &self.resnets {
            h = r.forward(&h, None)?;
        }
        match &self.upsampler {
            Some(c) => c.forward(&upsample_nearest_2x(&h)?),
            None => Ok(h),
        }
    }
}

/// The VAE.
pub struct AutoencoderKl {
    config: AutoencoderKlConfig,
    enc_conv_in: Conv2d,
    enc_down: Vec<DownBlock>,
    enc_mid: MidBlock,
    enc_norm_out: GroupNorm,
    enc_conv_out: Conv2d,
    quant_conv: Option<Conv2d>,
    post_quant_conv: Option<Conv2d>,
    dec_conv_in: Conv2d,
    dec_mid: MidBlock,
    dec_up: Vec<DecoderUpBlock>,
    dec_norm_out: GroupNorm,
    dec_conv_out: Conv2d,
}

const EPS: f64 = 1e-6;

impl AutoencoderKl {
    /// The VAE of a pipeline's `vae/` folder (`config.json` and
    /// `diffusion_pytorch_model[.fp16].safetensors`), in `dtype` on `device`.
    pub fn from_dir(dir: &Path, dtype: DType, device: &Device) -> ld3_solvers::Result<Self> {
        let config_path = dir.join("config.json");
        let text =
            std::fs::read_to_string(&config_path).map_err(|cause| ld3_solvers::Error::Io {
                path: config_path.display().to_string(),
                cause,
            })?;
        let config: AutoencoderKlConfig =
            serde_json::from_str(&text).map_err(|cause| ld3_solvers::Error::Json {
                what: format!("{} is not an AutoencoderKL config", config_path.display()),
                cause,
            })?;
        let invalid =
            |m: String| ld3_solvers::Error::Invalid(format!("{}: {m}", config_path.display()));
        config.validate().map_err(invalid)?;
        let file = crate::checkpoint::weights_file(
            dir,
            "diffusion_pytorch_model",
            "diffusion_pytorch_model.bin",
        )?;
        let weights = crate::Checkpoint::from_file(&file)?;
        let vae = Self::new(config, weights.var_builder(dtype, device))?;
        weights.check_all_used("AutoencoderKL")?;
        Ok(vae)
    }

    /// Builds the VAE of `config` from `vb` (diffusers' names).
    pub fn new(config: AutoencoderKlConfig, vb: VarBuilder) -> Result<Self> {
        let c = &config;
        let w = &c.block_out_channels;
        let n = w.len();
        let norms = Norms {
            groups: c.norm_num_groups,
            eps: EPS,
        };
        let mid = |vb: VarBuilder| {
            let attention = match c.mid_block_add_attention {
                true => LevelAttention::Spatial {
                    head_dim: w[n - 1],
                    norms: Some(norms),
                },
                false => LevelAttention::None,
            };
            let level = Level {
                c_in: w[n - 1],
                c_out: w[n - 1],
                temb: 0,
                norms,
                attention,
                scale_shift: false,
            };
            MidBlock::new(&level, 1.0, vb)
        };
        let enc = vb.pp("encoder");
        let mut enc_down = Vec::with_capacity(n);
        for i in 0..n {
            let level = Level {
                c_in: if i == 0 { w[0] } else { w[i - 1] },
                c_out: w[i],
                temb: 0,
                norms,
                attention: LevelAttention::None,
                scale_shift: false,
            };
            enc_down.push(DownBlock::new(
                &level,
                c.layers_per_block,
                (i + 1 < n).then_some(0),
                enc.pp(format!("down_blocks.{i}")),
            )?);
        }
        let dec = vb.pp("decoder");
        let mut dec_up = Vec::with_capacity(n);
        let reversed: Vec<usize> = w.iter().rev().copied().collect();
        let mut prev = reversed[0];
        for (i, &c_out) in reversed.iter().enumerate() {
            let b = dec.pp(format!("up_blocks.{i}"));
            let resnets = (0..=c.layers_per_block)
                .map(|j| {
                    let c_in = if j == 0 { prev } else { c_out };
                    ResnetBlock::new(
                        c_in,
                        c_out,
                        0,
                        norms,
                        false,
                        1.0,
                        b.pp(format!("resnets.{j}")),
                    )
                })
                .collect::<Result<_>>()?;
            let upsampler = match i + 1 < n {
                true => Some(conv(c_out, c_out, 3, 1, 1, b.pp("upsamplers.0.conv"))?),
                false => None,
            };
            dec_up.push(DecoderUpBlock { resnets, upsampler });
            prev = c_out;
        }
        let lat = c.latent_channels;
        Ok(Self {
            enc_conv_in: conv(c.in_channels, w[0], 3, 1, 1, enc.pp("conv_in"))?,
            enc_down,
            enc_mid: mid(enc.pp("mid_block"))?,
            enc_norm_out: group_norm(norms.groups, w[n - 1], EPS, enc.pp("conv_norm_out"))?,
            enc_conv_out: conv(w[n - 1], 2 * lat, 3, 1, 1, enc.pp("conv_out"))?,
            quant_conv: match c.use_quant_conv {
                true => Some(conv(2 * lat, 2 * lat, 1, 1, 0, vb.pp("quant_conv"))?),
                false => None,
            },
            post_quant_conv: match c.use_post_quant_conv {
                true => Some(conv(lat, lat, 1, 1, 0, vb.pp("post_quant_conv"))?),
                false => None,
            },
            dec_conv_in: conv(lat, w[n - 1], 3, 1, 1, dec.pp("conv_in"))?,
            dec_mid: mid(dec.pp("mid_block"))?,
            dec_up,
            dec_norm_out: group_norm(norms.groups, w[0], EPS, dec.pp("conv_norm_out"))?,
            dec_conv_out: conv(w[0], c.out_channels, 3, 1, 1, dec.pp("conv_out"))?,
            config,
        })
    }

    /// Its configuration.
    pub fn config(&self) -> &AutoencoderKlConfig {
        &self.config
    }

    /// The factor between the VAE's latents and the diffusion model's (SD: 0.18215).
    pub fn scaling_factor(&self) -> f64 {
        self.config.scaling_factor
    }

    /// Image pixels per latent pixel along each side (8 for SD).
    pub fn downsampling(&self) -> usize {
        1 << (self.config.block_out_channels.len() - 1)
    }

    /// The image [B, out_channels, H, W] (about [−1, 1], not clamped) of the VAE latent `z`
    /// [B, latent_channels, h, w] (the diffusion model's latent divided by the scaling factor).
    pub fn decode(&self, z: &Tensor) -> Result<Tensor> {
        let (_, c, _, _) = z.dims4()?;
        if c != self.config.latent_channels {
            candle_core::bail!(
                "the VAE decodes [B, {}, h, w] latents, got {:?}",
                self.config.latent_channels,
                z.dims()
            );
        }
        let z = match &self.post_quant_conv {
            Some(p) => p.forward(z)?,
            None => z.clone(),
        };
        let mut h = self.dec_conv_in.forward(&z)?;
        h = self.dec_mid.forward(&h, None, None)?;
        for block in &self.dec_up {
            h = block.forward(&h)?;
        }
        self.dec_conv_out
            .forward(&crate::layers::silu(&self.dec_norm_out.forward(&h)?)?)
    }

    /// The mean and log-variance [B, latent_channels, h, w] of the latent distribution of the
    /// image `x` [B, in_channels, H, W] in [−1, 1].
    pub fn encode(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        let mut h = self.enc_conv_in.forward(x)?;
        for block in &self.enc_down {
            h = block.forward(&h, None, None)?.0;
        }
        h = self.enc_mid.forward(&h, None, None)?;
        h = self
            .enc_conv_out
            .forward(&crate::layers::silu(&self.enc_norm_out.forward(&h)?)?)?;
        if let Some(q) = &self.quant_conv {
            h = q.forward(&h)?;
        }
        let lat = self.config.latent_channels;
        let logvar = h.narrow(1, lat, lat)?.clamp(-30.0, 20.0)?;
        Ok((h.narrow(1, 0, lat)?, logvar))
    }
}

impl AutoencoderKlConfig {
    fn validate(&self) -> std::result::Result<(), String> {
        if let Some(c) = self.class_name.as_deref() {
            if c != "AutoencoderKL" {
                return Err(format!(
                    "_class_name is {c}; this loader reads AutoencoderKL"
                ));
            }
        }
        let n = self.block_out_channels.len();
        if n == 0 || self.down_block_types.len() != n || self.up_block_types.len() != n {
            return Err(format!(
                "block_out_channels ({n}), down_block_types ({}) and up_block_types ({}) must \
                 have one entry per level",
                self.down_block_types.len(),
                self.up_block_types.len()
            ));
        }
        if let Some(b) = self
            .down_block_types
            .iter()
            .find(|b| b.as_str() != "DownEncoderBlock2D")
            .or_else(|| {
                self.up_block_types
                    .iter()
                    .find(|b| b.as_str() != "UpDecoderBlock2D")
            })
        {
            return Err(format!(
                "block type {b} is not supported (DownEncoderBlock2D and UpDecoderBlock2D are)"
            ));
        }
        if self.act_fn != "silu" {
            return Err(format!("act_fn {} is not supported (silu is)", self.act_fn));
        }
        if self.shift_factor.is_some_and(|s| s != 0.0) {
            return Err("a shift_factor (SD 3's VAE) is not supported".into());
        }
        Ok(())
    }
}
