//! The blocks of diffusers' UNets (down, up and middle), built from the shared
//! [`crate::layers`]: `UNet2DModel`'s (plain, or with spatial self-attention) and
//! `UNet2DConditionModel`'s (with cross-attention transformers).

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use crate::layers::Conv2d;

use crate::layers::{
    conv, upsample_nearest_2x, Norms, ResnetBlock, SelfAttention, SpatialTransformer,
    TransformerShape,
};

/// The attention of one level, if any.
#[derive(Clone, Copy)]
pub enum LevelAttention {
    /// None (`DownBlock2D`, `UpBlock2D`).
    None,
    /// Spatial self-attention (`AttnDownBlock2D`): channels per head, GroupNorm before it.
    Spatial {
        /// Channels per head.
        head_dim: usize,
        /// GroupNorm before the attention (`None`: none).
        norms: Option<Norms>,
    },
    /// A cross-attention transformer (`CrossAttnDownBlock2D`); its `channels` are the level's.
    Transformer(TransformerShape),
}

/// One attention layer of a block.
enum BlockAttention {
    Spatial(SelfAttention),
    Transformer(SpatialTransformer),
}

impl BlockAttention {
    fn forward(&self, x: &Tensor, context: Option<&Tensor>) -> Result<Tensor> {
        match (self, context) {
            (Self::Spatial(a), _) => a.forward(x),
            (Self::Transformer(t), Some(c)) => t.forward(x, c),
            (Self::Transformer(_), None) => {
                candle_core::bail!("a cross-attention UNet needs text embeddings to attend to")
            }
        }
    }
}

/// `DownBlock2D` / `AttnDownBlock2D`: ResNets (each followed by attention in the Attn kind),
/// then an optional strided-conv downsampler. Returns every intermediate state for the skips.
pub struct DownBlock {
    resnets: Vec<ResnetBlock>,
    attentions: Vec<BlockAttention>,
    downsampler: Option<(Conv2d, usize)>,
}

/// What builds one level.
pub struct Level {
    /// Input channels.
    pub c_in: usize,
    /// Output channels.
    pub c_out: usize,
    /// Time embedding width.
    pub temb: usize,
    /// ResNet norms.
    pub norms: Norms,
    /// Its attention.
    pub attention: LevelAttention,
    /// Scale-shift time conditioning.
    pub scale_shift: bool,
}

impl Level {
    /// Layer `i` of a block: a ResNet from `c_in` channels and, at attention levels, the
    /// attention after it.
    fn layer(
        &self,
        c_in: usize,
        i: usize,
        vb: &VarBuilder,
    ) -> Result<(ResnetBlock, Option<BlockAttention>)> {
        let resnet = ResnetBlock::new(
            c_in,
            self.c_out,
            self.temb,
            self.norms,
            self.scale_shift,
            1.0,
            vb.pp(format!("resnets.{i}")),
        )?;
        let attention = self.attention(1.0, vb.pp(format!("attentions.{i}")))?;
        Ok((resnet, attention))
    }

    /// The level's attention layer (`rescale` divides a spatial attention's output).
    fn attention(&self, rescale: f64, vb: VarBuilder) -> Result<Option<BlockAttention>> {
        Ok(match self.attention {
            LevelAttention::None => None,
            LevelAttention::Spatial { head_dim, norms } => Some(BlockAttention::Spatial(
                SelfAttention::new(self.c_out, head_dim, norms, rescale, vb)?,
            )),
            LevelAttention::Transformer(shape) => {
                Some(BlockAttention::Transformer(SpatialTransformer::new(
                    TransformerShape {
                        channels: self.c_out,
                        ..shape
                    },
                    vb,
                )?))
            }
        })
    }
}

impl DownBlock {
    /// `layers` ResNets; `downsample_padding` as in the config, `None` for the last level.
    pub fn new(
        level: &Level,
        layers: usize,
        downsample: Option<usize>,
        vb: VarBuilder,
    ) -> Result<Self> {
        let mut resnets = Vec::new();
        let mut attentions = Vec::new();
        for i in 0..layers {
            let c_in = if i == 0 { level.c_in } else { level.c_out };
            let (resnet, attention) = level.layer(c_in, i, &vb)?;
            resnets.push(resnet);
            attentions.extend(attention);
        }
        let downsampler = match downsample {
            Some(pad) => Some((
                conv(
                    level.c_out,
                    level.c_out,
                    3,
                    2,
                    pad,
                    vb.pp("downsamplers.0.conv"),
                )?,
                pad,
            )),
            None => None,
        };
        Ok(Self {
            resnets,
            attentions,
            downsampler,
        })
    }

    /// The block's output and the states it hands to the up path (`context`: the text
    /// embeddings, for cross-attention).
    pub fn forward(
        &self,
        x: &Tensor,
        temb: Option<&Tensor>,
        context: Option<&Tensor>,
    ) -> Result<(Tensor, Vec<Tensor>)> {
        let mut h = x.clone();
        let mut states = Vec::new();
        for (i, r) in self.resnets.iter().enumerate() {
            h = r.forward(&h, temb)?;
            if let Some(a) = self.attentions.get(i) {
                h = a.forward(&h, context)?;
            }
            states.push(h.clone());
        }
        if let Some((conv, pad)) = &self.downsampler {
            let input = if *pad == 0 {
                // diffusers pads right and bottom by one when the conv itself does not pad.
                h.pad_with_zeros(3, 0, 1)?.pad_with_zeros(2, 0, 1)?
            } else {
                h
            };
            h = conv.forward(&input)?;
            states.push(h.clone());
        }
        Ok((h, states))
    }
}

/// `UpBlock2D` / `AttnUpBlock2D`: each ResNet takes the running state concatenated with one
/// skip state (the latest first); attention after each ResNet in the Attn kind; nearest ×2
/// upsampling and a conv unless it is the last level.
pub struct UpBlock {
    resnets: Vec<ResnetBlock>,
    attentions: Vec<BlockAttention>,
    upsampler: Option<Conv2d>,
}

impl UpBlock {
    /// `level.c_in` is the skip width of the last ResNet, `prev` the width coming from below.
    pub fn new(
        level: &Level,
        prev: usize,
        layers: usize,
        upsample: bool,
        vb: VarBuilder,
    ) -> Result<Self> {
        let mut resnets = Vec::new();
        let mut attentions = Vec::new();
        for i in 0..layers {
            let skip = if i == layers - 1 {
                level.c_in
            } else {
                level.c_out
            };
            let c_in = if i == 0 { prev } else { level.c_out };
            let (resnet, attention) = level.layer(c_in + skip, i, &vb)?;
            resnets.push(resnet);
            attentions.extend(attention);
        }
        let upsampler = if upsample {
            Some(conv(
                level.c_out,
                level.c_out,
                3,
                1,
                1,
                vb.pp("upsamplers.0.conv"),
            )?)
        } else {
            None
        };
        Ok(Self {
            resnets,
            attentions,
            upsampler,
        })
    }

    /// Number of skip states this block consumes.
    pub fn num_skips(&self) -> usize {
        self.resnets.len()
    }

    /// `skips` in the order they were produced; consumed from the back.
    pub fn forward(
        &self,
        x: &Tensor,
        skips: &[Tensor],
        temb: Option<&Tensor>,
        context: Option<&Tensor>,
    ) -> Result<Tensor> {
        let mut h = x.clone();
        for (i, r) in self.resnets.iter().enumerate() {
            let skip = &skips[skips.len() - 1 - i];
            h = r.forward(&Tensor::cat(&[&h, skip], 1)?, temb)?;
            if let Some(a) = self.attentions.get(i) {
                h = a.forward(&h, context)?;
            }
        }
        match &self.upsampler {
            Some(c) => c.forward(&upsample_nearest_2x(&h)?),
            None => Ok(h),
        }
    }
}

/// `UNetMidBlock2D` / `UNetMidBlock2DCrossAttn`: ResNet → (attention) → ResNet.
pub struct MidBlock {
    resnet_0: ResnetBlock,
    attention: Option<BlockAttention>,
    resnet_1: ResnetBlock,
}

impl MidBlock {
    /// Keys `resnets.{0,1}`, `attentions.0`.
    pub fn new(level: &Level, output_scale_factor: f64, vb: VarBuilder) -> Result<Self> {
        let c = level.c_out;
        let res = |i: usize| {
            ResnetBlock::new(
                c,
                c,
                level.temb,
                level.norms,
                level.scale_shift,
                output_scale_factor,
                vb.pp(format!("resnets.{i}")),
            )
        };
        Ok(Self {
            resnet_0: res(0)?,
            attention: level.attention(output_scale_factor, vb.pp("attentions.0"))?,
            resnet_1: res(1)?,
        })
    }

    /// The mid block on `x`.
    pub fn forward(
        &self,
        x: &Tensor,
        temb: Option<&Tensor>,
        context: Option<&Tensor>,
    ) -> Result<Tensor> {
        let mut h = self.resnet_0.forward(x, temb)?;
        if let Some(a) = &self.attention {
            h = a.forward(&h, context)?;
        }
        self.resnet_1.forward(&h, temb)
    }
}
