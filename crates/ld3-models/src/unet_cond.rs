//! diffusers' `UNet2DConditionModel` as Stable Diffusion 1.x and 2.x use it: the UNet of
//! [`crate::unet2d`] with cross-attention transformers at its attention levels, attending to
//! the text embeddings. Its time is a tensor and it is differentiable in the latent, the time and
//! the embeddings (shared layers only); diffusers' weight names, so the hub's safetensors load
//! unchanged.

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::VarBuilder;

use crate::layers::{group_norm, Conv2d, GroupNorm};
use serde::Deserialize;
use serde_json::Value as J;

use crate::layers::{timestep_embedding, Norms, TimestepMlp, TransformerShape};
use crate::unet2d::{run_levels, DownBlock, Level, LevelAttention, MidBlock, UpBlock};

/// A number, or one per level (diffusers accepts both for several fields).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum PerLevel<T> {
    /// The same at every level.
    All(T),
    /// One per level, in down-path order.
    Each(Vec<T>),
}

impl<T: Clone> PerLevel<T> {
    fn at(&self, level: usize) -> T {
        match self {
            Self::All(v) => v.clone(),
            Self::Each(v) => v[level.min(v.len() - 1)].clone(),
        }
    }
    fn len_ok(&self, n: usize) -> bool {
        match self {
            Self::All(_) => true,
            Self::Each(v) => v.len() == n,
        }
    }
}

/// The fields of `unet/config.json` this network reads (the hub's SD 1.x/2.x configs, with
/// diffusers' defaults for keys older files lack).
#[derive(Clone, Debug, Deserialize)]
pub struct UNet2DConditionConfig {
    /// `UNet2DConditionModel`.
    #[serde(rename = "_class_name", default)]
    pub class_name: Option<String>,
    /// Latent height and width it was trained at.
    #[serde(default)]
    pub sample_size: Option<J>,
    /// Latent channels in.
    #[serde(default = "four")]
    pub in_channels: usize,
    /// Latent channels out.
    #[serde(default = "four")]
    pub out_channels: usize,
    /// Maps the input from [0, 1] to [−1, 1] first.
    #[serde(default)]
    pub center_input_sample: bool,
    /// (cos, sin) order of the time sinusoids.
    #[serde(default = "yes")]
    pub flip_sin_to_cos: bool,
    /// Frequency shift of the time sinusoids.
    #[serde(default)]
    pub freq_shift: f64,
    /// Down blocks (`CrossAttnDownBlock2D`, `DownBlock2D`).
    pub down_block_types: Vec<String>,
    /// Mid block (`UNetMidBlock2DCrossAttn`).
    #[serde(default = "cross_mid")]
    pub mid_block_type: Option<String>,
    /// Up blocks (`CrossAttnUpBlock2D`, `UpBlock2D`).
    pub up_block_types: Vec<String>,
    /// Width of each level.
    pub block_out_channels: Vec<usize>,
    /// ResNets per down level (one more per up level).
    #[serde(default = "two")]
    pub layers_per_block: usize,
    /// Padding of the downsampling convolutions.
    #[serde(default = "one_usize")]
    pub downsample_padding: usize,
    /// Output scale of the mid block.
    #[serde(default = "one")]
    pub mid_block_scale_factor: f64,
    /// Activation (silu).
    #[serde(default = "silu")]
    pub act_fn: String,
    /// GroupNorm groups.
    #[serde(default = "thirty_two")]
    pub norm_num_groups: usize,
    /// GroupNorm ε of the ResNets and the output.
    #[serde(default = "eps")]
    pub norm_eps: f64,
    /// Width of the text embeddings.
    #[serde(default = "cross_dim")]
    pub cross_attention_dim: PerLevel<usize>,
    /// Heads per level (diffusers' historical name for the head count).
    #[serde(default = "eight")]
    pub attention_head_dim: PerLevel<usize>,
    /// Heads per level, when given under this name instead.
    #[serde(default)]
    pub num_attention_heads: Option<PerLevel<usize>>,
    /// Transformer blocks per attention layer.
    #[serde(default = "one_per_level")]
    pub transformer_layers_per_block: PerLevel<usize>,
    /// Linear projections in and out of the transformers (SD 2.x).
    #[serde(default)]
    pub use_linear_projection: bool,
    /// The first attention of each transformer block attends to the text too.
    #[serde(default)]
    pub only_cross_attention: PerLevel<bool>,
    /// Attention scores in f32 (SD 2.1); this network computes them in its own dtype (f32
    /// or f64), which is at least that.
    #[serde(default)]
    pub upcast_attention: bool,
    /// Time conditioning of the ResNets (`default`).
    #[serde(default = "default_shift")]
    pub resnet_time_scale_shift: String,
    /// Class embeddings (not in SD 1.x/2.x).
    #[serde(default)]
    pub class_embed_type: Option<String>,
    /// Class count (not in SD 1.x/2.x).
    #[serde(default)]
    pub num_class_embeds: Option<usize>,
    /// SDXL's added embeddings (not supported).
    #[serde(default)]
    pub addition_embed_type: Option<String>,
    /// A projection of the encoder states (not supported).
    #[serde(default)]
    pub encoder_hid_dim: Option<usize>,
    /// Kernel of conv_in.
    #[serde(default = "three")]
    pub conv_in_kernel: usize,
    /// Kernel of conv_out.
    #[serde(default = "three")]
    pub conv_out_kernel: usize,
    /// `positional` time embedding.
    #[serde(default = "positional")]
    pub time_embedding_type: String,
    /// Condition projection (LCM; not supported).
    #[serde(default)]
    pub time_cond_proj_dim: Option<usize>,
}

fn four() -> usize {
    4
}
fn three() -> usize {
    3
}
fn two() -> usize {
    2
}
fn one_usize() -> usize {
    1
}
fn one() -> f64 {
    1.0
}
fn eight() -> PerLevel<usize> {
    PerLevel::All(8)
}
fn one_per_level() -> PerLevel<usize> {
    PerLevel::All(1)
}
fn cross_dim() -> PerLevel<usize> {
    PerLevel::All(1280)
}
fn thirty_two() -> usize {
    32
}
fn eps() -> f64 {
    1e-5
}
fn yes() -> bool {
    true
}
fn silu() -> String {
    "silu".into()
}
fn positional() -> String {
    "positional".into()
}
fn default_shift() -> String {
    "default".into()
}
fn cross_mid() -> Option<String> {
    Some("UNetMidBlock2DCrossAttn".into())
}

impl Default for PerLevel<bool> {
    fn default() -> Self {
        Self::All(false)
    }
}

impl UNet2DConditionConfig {
    /// Reads `config.json`'s text and checks that the network is one this loader builds.
    pub fn from_json(json: &str) -> std::result::Result<Self, String> {
        let c: Self = serde_json::from_str(json).map_err(|e| {
            format!("not a diffusers UNet2DConditionModel config ({e}); expected the hub's unet/config.json")
        })?;
        c.validate()?;
        Ok(c)
    }

    /// Heads per level.
    fn heads(&self) -> &PerLevel<usize> {
        self.num_attention_heads
            .as_ref()
            .unwrap_or(&self.attention_head_dim)
    }

    /// Width of the text embeddings it attends to (the first level's).
    pub fn context_dim(&self) -> usize {
        self.cross_attention_dim.at(0)
    }

    fn validate(&self) -> std::result::Result<(), String> {
        if let Some(c) = self.class_name.as_deref() {
            if c != "UNet2DConditionModel" {
                return Err(format!(
                    "_class_name is {c}; this loader reads diffusers' UNet2DConditionModel"
                ));
            }
        }
        let n = self.block_out_channels.len();
        if n == 0 || self.block_out_channels.contains(&0) {
            return Err("block_out_channels must list at least one positive width".into());
        }
        if self.down_block_types.len() != n || self.up_block_types.len() != n {
            return Err(format!(
                "block_out_channels has {n} levels but down_block_types has {} and \
                 up_block_types {}",
                self.down_block_types.len(),
                self.up_block_types.len()
            ));
        }
        let known = |list: &[String], ok: [&str; 2]| {
            list.iter()
                .find(|b| !ok.contains(&b.as_str()))
                .map(|b| format!("unknown block type {b}: supported are {}", ok.join(", ")))
        };
        if let Some(e) = known(
            &self.down_block_types,
            ["CrossAttnDownBlock2D", "DownBlock2D"],
        )
        .or_else(|| known(&self.up_block_types, ["CrossAttnUpBlock2D", "UpBlock2D"]))
        {
            return Err(e);
        }
        match self.mid_block_type.as_deref() {
            Some("UNetMidBlock2DCrossAttn") | None => {}
            Some(m) => return Err(format!("mid_block_type {m} is not supported")),
        }
        let unsupported = |what: String| {
            Err(format!(
                "{what}: not supported (this loader builds Stable Diffusion 1.x / 2.x UNets)"
            ))
        };
        if self.addition_embed_type.is_some() {
            return unsupported(format!(
                "addition_embed_type {:?} (SDXL's added conditioning)",
                self.addition_embed_type
            ));
        }
        if self.class_embed_type.is_some() || self.num_class_embeds.is_some() {
            return unsupported("class embeddings".into());
        }
        if self.encoder_hid_dim.is_some() || self.time_cond_proj_dim.is_some() {
            return unsupported("encoder_hid_dim / time_cond_proj_dim".into());
        }
        if self.time_embedding_type != "positional" || self.act_fn != "silu" {
            return unsupported(format!(
                "time_embedding_type {} with act_fn {}",
                self.time_embedding_type, self.act_fn
            ));
        }
        if self.resnet_time_scale_shift != "default" {
            return unsupported(format!(
                "resnet_time_scale_shift {}",
                self.resnet_time_scale_shift
            ));
        }
        if self.conv_in_kernel.is_multiple_of(2) || self.conv_out_kernel.is_multiple_of(2) {
            return unsupported("even conv_in/conv_out kernels".into());
        }
        let heads_ok = self.heads().len_ok(n);
        if !heads_ok
            || !self.cross_attention_dim.len_ok(n)
            || !self.transformer_layers_per_block.len_ok(n)
            || !self.only_cross_attention.len_ok(n)
        {
            return Err(format!(
                "per-level settings (heads, cross_attention_dim, transformer_layers_per_block, \
                 only_cross_attention) must give one value or {n}"
            ));
        }
        for (i, &w) in self.block_out_channels.iter().enumerate() {
            let h = self.heads().at(i);
            if h == 0 || w % h != 0 {
                return Err(format!(
                    "level {i}: {w} channels do not split into {h} heads"
                ));
            }
            if w % self.norm_num_groups != 0 {
                return Err(format!(
                    "level {i}: {w} channels do not split into {} groups",
                    self.norm_num_groups
                ));
            }
        }
        Ok(())
    }
}

/// Stable Diffusion's UNet: latents [B, C, h, w], time [B] (training-step units) and text
/// embeddings [B, L, D] in, the raw prediction (ε or v) out.
pub struct UNet2DConditionModel {
    config: UNet2DConditionConfig,
    time_embedding: TimestepMlp,
    conv_in: Conv2d,
    down_blocks: Vec<DownBlock>,
    mid_block: Option<MidBlock>,
    up_blocks: Vec<UpBlock>,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
    parameters: usize,
}

impl UNet2DConditionModel {
    /// Builds the network of `config` with weights from `vb` (diffusers' key names).
    pub fn new(config: UNet2DConditionConfig, vb: VarBuilder) -> Result<Self> {
        let c = &config;
        let widths = &c.block_out_channels;
        let n = widths.len();
        let temb = 4 * widths[0];
        let norms = Norms {
            groups: c.norm_num_groups,
            eps: c.norm_eps,
        };
        let shape = |level: usize, width: usize| {
            let heads = c.heads().at(level);
            TransformerShape {
                channels: width,
                heads,
                head_dim: width / heads,
                context_dim: c.cross_attention_dim.at(level),
                groups: c.norm_num_groups,
                linear_projection: c.use_linear_projection,
                layers: c.transformer_layers_per_block.at(level),
                only_cross: c.only_cross_attention.at(level),
            }
        };
        let level = |c_in: usize, c_out: usize, attention: LevelAttention| Level {
            c_in,
            c_out,
            temb,
            norms,
            attention,
            scale_shift: false,
        };
        let time_embedding = TimestepMlp::new(widths[0], temb, vb.pp("time_embedding"))?;
        let (k_in, k_out) = (c.conv_in_kernel, c.conv_out_kernel);
        let conv_in = crate::layers::conv(
            c.in_channels,
            widths[0],
            k_in,
            1,
            k_in / 2,
            vb.pp("conv_in"),
        )?;

        let mut down_blocks = Vec::with_capacity(n);
        for (i, kind) in c.down_block_types.iter().enumerate() {
            let c_in = if i == 0 { widths[0] } else { widths[i - 1] };
            let attention = match kind.as_str() {
                "CrossAttnDownBlock2D" => LevelAttention::Transformer(shape(i, widths[i])),
                _ => LevelAttention::None,
            };
            down_blocks.push(DownBlock::new(
                &level(c_in, widths[i], attention),
                c.layers_per_block,
                (i + 1 < n).then_some(c.downsample_padding),
                vb.pp(format!("down_blocks.{i}")),
            )?);
        }
        let mid_block = match c.mid_block_type {
            Some(_) => Some(MidBlock::new(
                &level(
                    widths[n - 1],
                    widths[n - 1],
                    LevelAttention::Transformer(shape(n - 1, widths[n - 1])),
                ),
                c.mid_block_scale_factor,
                vb.pp("mid_block"),
            )?),
            None => None,
        };
        let mut up_blocks = Vec::with_capacity(n);
        let reversed: Vec<usize> = widths.iter().rev().copied().collect();
        let mut c_out = reversed[0];
        for (i, kind) in c.up_block_types.iter().enumerate() {
            let prev = c_out;
            c_out = reversed[i];
            let skip = reversed[(i + 1).min(n - 1)];
            let attention = match kind.as_str() {
                "CrossAttnUpBlock2D" => LevelAttention::Transformer(shape(n - 1 - i, c_out)),
                _ => LevelAttention::None,
            };
            up_blocks.push(UpBlock::new(
                &level(skip, c_out, attention),
                prev,
                c.layers_per_block + 1,
                i + 1 < n,
                vb.pp(format!("up_blocks.{i}")),
            )?);
        }
        let conv_norm_out = group_norm(norms.groups, widths[0], norms.eps, vb.pp("conv_norm_out"))?;
        let conv_out = crate::layers::conv(
            widths[0],
            c.out_channels,
            k_out,
            1,
            k_out / 2,
            vb.pp("conv_out"),
        )?;
        Ok(Self {
            config,
            time_embedding,
            conv_in,
            down_blocks,
            mid_block,
            up_blocks,
            conv_norm_out,
            conv_out,
            parameters: 0,
        })
    }

    /// The UNet of a pipeline's `unet/` folder (`config.json` and
    /// `diffusion_pytorch_model[.fp16].safetensors`), in `dtype` on `device`; every weight of
    /// the file must be used.
    pub fn from_dir(
        dir: &std::path::Path,
        dtype: DType,
        device: &candle_core::Device,
    ) -> ld3_solvers::Result<Self> {
        let config_path = dir.join("config.json");
        let text =
            std::fs::read_to_string(&config_path).map_err(|cause| ld3_solvers::Error::Io {
                path: config_path.display().to_string(),
                cause,
            })?;
        let config = UNet2DConditionConfig::from_json(&text)
            .map_err(|e| ld3_solvers::Error::Invalid(format!("{}: {e}", config_path.display())))?;
        let file = crate::checkpoint::weights_file(
            dir,
            "diffusion_pytorch_model",
            "diffusion_pytorch_model.bin",
        )?;
        let weights = crate::Checkpoint::from_file(&file)?;
        let mut model = Self::new(config, weights.var_builder(dtype, device))?;
        weights.check_all_used("UNet2DConditionModel")?;
        model.parameters = weights.value_count();
        Ok(model)
    }

    /// Number of weights read from its file (0 when built from a `VarBuilder`).
    pub fn parameter_count(&self) -> usize {
        self.parameters
    }

    /// The configuration the network was built from.
    pub fn config(&self) -> &UNet2DConditionConfig {
        &self.config
    }

    /// The prediction for latents `x` [B, C, h, w] at `timesteps` (rank 0, [1] or [B], in
    /// training-step units, not rounded) attending to `context` [B, L, D].
    pub fn forward(&self, x: &Tensor, timesteps: &Tensor, context: &Tensor) -> Result<Tensor> {
        let c = &self.config;
        let factor = 1usize << (self.down_blocks.len() - 1);
        let dims = x.dims();
        if dims.len() != 4
            || dims[1] != c.in_channels
            || !dims[2].is_multiple_of(factor)
            || !dims[3].is_multiple_of(factor)
        {
            candle_core::bail!(
                "UNet2DConditionModel input must be [B, {}, h, w] with h and w multiples of \
                 {factor}, got {:?}",
                c.in_channels,
                x.dims()
            );
        }
        let b = dims[0];
        let (cb, _, cd) = context.dims3()?;
        if cb != b || cd != c.context_dim() {
            candle_core::bail!(
                "text embeddings must be [{b}, L, {}] for this UNet, got {:?}",
                c.context_dim(),
                context.dims()
            );
        }
        let t_dtype = match x.dtype() {
            DType::F64 => DType::F64,
            _ => DType::F32,
        };
        let timesteps = timesteps.to_dtype(t_dtype)?;
        let timesteps = match timesteps.elem_count() {
            1 => timesteps.reshape(1)?.broadcast_as(b)?.contiguous()?,
            n if n == b => timesteps.reshape(b)?,
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
        let context = context.to_dtype(x.dtype())?;
        let x = if c.center_input_sample {
            ((x * 2.0)? - 1.0)?
        } else {
            x.clone()
        };
        let h = run_levels(
            self.conv_in.forward(&x)?,
            &temb,
            Some(&context),
            &self.down_blocks,
            self.mid_block.as_ref(),
            &self.up_blocks,
        )?;
        let h = crate::layers::silu(&self.conv_norm_out.forward(&h)?)?;
        self.conv_out.forward(&h)
    }
}
