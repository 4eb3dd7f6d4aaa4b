//! diffusers' `UNet2DModel` configuration, read from the hub's `config.json` as published.

use serde::Deserialize;

/// `sample_size` is an integer or an `[h, w]` pair in diffusers configs.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum SampleSize {
    /// Square images.
    Square(usize),
    /// `[height, width]`.
    Rect([usize; 2]),
}

impl SampleSize {
    /// (height, width).
    pub fn hw(&self) -> (usize, usize) {
        match *self {
            Self::Square(s) => (s, s),
            Self::Rect([h, w]) => (h, w),
        }
    }
}

/// The fields of diffusers' `UNet2DModel` config that shape the network (defaults as diffusers'
/// constructor). Fields that only matter for training (`dropout`) are accepted and ignored.
#[derive(Clone, Debug, Deserialize)]
pub struct UNet2DConfig {
    /// `_class_name`: must be `UNet2DModel` when present.
    #[serde(rename = "_class_name", default)]
    pub class_name: Option<String>,
    /// Image size the model was trained at.
    #[serde(default = "default_sample_size")]
    pub sample_size: SampleSize,
    /// Input channels.
    #[serde(default = "three")]
    pub in_channels: usize,
    /// Output channels.
    #[serde(default = "three")]
    pub out_channels: usize,
    /// `x ↦ 2x − 1` before the network.
    #[serde(default)]
    pub center_input_sample: bool,
    /// `positional` (sinusoidal); `fourier` is not supported.
    #[serde(default = "default_time_embedding_type")]
    pub time_embedding_type: String,
    /// Width of the time embedding MLP's output (default 4 × first block width).
    #[serde(default)]
    pub time_embedding_dim: Option<usize>,
    /// Order of the sinusoidal embedding's halves: cos first when true.
    #[serde(default = "yes")]
    pub flip_sin_to_cos: bool,
    /// Frequency shift of the sinusoidal embedding.
    #[serde(default)]
    pub freq_shift: f64,
    /// Block types on the way down.
    pub down_block_types: Vec<String>,
    /// Block types on the way up.
    pub up_block_types: Vec<String>,
    /// `UNetMidBlock2D`, or null for none (missing = `UNetMidBlock2D`).
    #[serde(default = "default_mid_block_type")]
    pub mid_block_type: Option<String>,
    /// Channels of each level.
    pub block_out_channels: Vec<usize>,
    /// ResNet blocks per down block (up blocks have one more).
    #[serde(default = "two")]
    pub layers_per_block: usize,
    /// Output scale of the mid block.
    #[serde(default = "one")]
    pub mid_block_scale_factor: f64,
    /// Padding of the strided downsampling convolution (0 pads right/bottom by one first).
    #[serde(default = "one_usize")]
    pub downsample_padding: usize,
    /// `conv` only (`resnet` resampling is not supported).
    #[serde(default = "default_conv")]
    pub downsample_type: String,
    /// `conv` only.
    #[serde(default = "default_conv")]
    pub upsample_type: String,
    /// Activation: `silu` (alias `swish`).
    #[serde(default = "default_act_fn")]
    pub act_fn: String,
    /// Channels per attention head; null means one head over all channels.
    #[serde(default = "default_head_dim")]
    pub attention_head_dim: Option<usize>,
    /// GroupNorm groups (null: min(first width / 4, 32)).
    #[serde(default = "default_groups")]
    pub norm_num_groups: Option<usize>,
    /// GroupNorm groups of the mid block's attention (null: see [`UNet2DConfig::mid_attn_groups`]).
    #[serde(default)]
    pub attn_norm_num_groups: Option<usize>,
    /// GroupNorm epsilon.
    #[serde(default = "default_eps")]
    pub norm_eps: f64,
    /// `default` (add the time embedding) or `scale_shift`.
    #[serde(default = "default_time_scale_shift")]
    pub resnet_time_scale_shift: String,
    /// Whether the mid block has attention.
    #[serde(default = "yes")]
    pub add_attention: bool,
    /// Class conditioning (not supported by this unconditional loader).
    #[serde(default)]
    pub class_embed_type: Option<String>,
    /// Number of classes (not supported).
    #[serde(default)]
    pub num_class_embeds: Option<usize>,
}

fn default_sample_size() -> SampleSize {
    SampleSize::Square(32)
}
fn three() -> usize {
    3
}
fn two() -> usize {
    2
}
fn one() -> f64 {
    1.0
}
fn one_usize() -> usize {
    1
}
fn yes() -> bool {
    true
}
fn default_time_embedding_type() -> String {
    "positional".into()
}
fn default_mid_block_type() -> Option<String> {
    Some("UNetMidBlock2D".into())
}
fn default_conv() -> String {
    "conv".into()
}
fn default_act_fn() -> String {
    "silu".into()
}
fn default_head_dim() -> Option<usize> {
    Some(8)
}
fn default_groups() -> Option<usize> {
    Some(32)
}
fn default_eps() -> f64 {
    1e-5
}
fn default_time_scale_shift() -> String {
    "default".into()
}

/// Block kinds on the way down and up.
pub const DOWN_BLOCKS: [&str; 2] = ["DownBlock2D", "AttnDownBlock2D"];
/// See [`DOWN_BLOCKS`].
pub const UP_BLOCKS: [&str; 2] = ["UpBlock2D", "AttnUpBlock2D"];

impl UNet2DConfig {
    /// Parses `config.json` text and checks it describes a network this loader builds.
    pub fn from_json(json: &str) -> Result<Self, String> {
        let c: Self = serde_json::from_str(json).map_err(|e| {
            format!("not a diffusers UNet2DModel config ({e}); expected the hub's config.json")
        })?;
        c.validate()?;
        Ok(c)
    }

    /// GroupNorm groups of the ResNet blocks.
    pub fn groups(&self) -> usize {
        self.norm_num_groups
            .unwrap_or_else(|| (self.block_out_channels[0] / 4).clamp(1, 32))
    }

    /// GroupNorm groups of the mid block's attention (diffusers: `attn_norm_num_groups`, else the
    /// ResNet groups under `default` time conditioning, else no norm).
    pub fn mid_attn_groups(&self) -> Option<usize> {
        self.attn_norm_num_groups
            .or_else(|| (!self.scale_shift()).then(|| self.groups()))
    }

    /// Channels per head at a level of `channels` channels.
    pub fn head_dim(&self, channels: usize) -> usize {
        self.attention_head_dim.unwrap_or(channels)
    }

    /// Width of the time embedding.
    pub fn time_embed_dim(&self) -> usize {
        self.time_embedding_dim
            .unwrap_or(4 * self.block_out_channels[0])
    }

    /// Whether ResNets condition with scale and shift.
    pub fn scale_shift(&self) -> bool {
        self.resnet_time_scale_shift == "scale_shift"
    }

    fn validate(&self) -> Result<(), String> {
        if let Some(c) = &self.class_name {
            if c != "UNet2DModel" {
                return Err(format!(
                    "_class_name is {c}; this loader reads diffusers' unconditional UNet2DModel"
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
                 up_block_types {}: they must match",
                self.down_block_types.len(),
                self.up_block_types.len()
            ));
        }
        for (list, known) in [
            (&self.down_block_types, &DOWN_BLOCKS[..]),
            (&self.up_block_types, &UP_BLOCKS[..]),
        ] {
            if let Some(b) = list.iter().find(|b| !known.contains(&b.as_str())) {
                return Err(format!(
                    "unknown block type {b}: supported are {} (AttnSkip*/Skip*/KDown* blocks \
                     are not implemented)",
                    known.join(", ")
                ));
            }
        }
        match self.mid_block_type.as_deref() {
            None | Some("UNetMidBlock2D") => {}
            Some(m) => {
                return Err(format!(
                    "unknown mid_block_type {m}: supported are UNetMidBlock2D or null"
                ))
            }
        }
        let unsupported = |what: &str| Err(format!("{what} is not supported by this loader"));
        if self.time_embedding_type != "positional" {
            return unsupported(&format!(
                "time_embedding_type {} (only positional)",
                self.time_embedding_type
            ));
        }
        if !matches!(self.act_fn.as_str(), "silu" | "swish") {
            return unsupported(&format!("act_fn {} (only silu)", self.act_fn));
        }
        if self.downsample_type != "conv" || self.upsample_type != "conv" {
            return unsupported(
                "resnet up/downsampling (downsample_type/upsample_type other than conv)",
            );
        }
        if !matches!(
            self.resnet_time_scale_shift.as_str(),
            "default" | "scale_shift"
        ) {
            return unsupported(&format!(
                "resnet_time_scale_shift {}",
                self.resnet_time_scale_shift
            ));
        }
        if self.class_embed_type.is_some() || self.num_class_embeds.is_some() {
            return unsupported("class conditioning (class_embed_type/num_class_embeds)");
        }
        if self.layers_per_block == 0 || self.in_channels == 0 || self.out_channels == 0 {
            return Err("layers_per_block, in_channels and out_channels must be positive".into());
        }
        if !(self.norm_eps > 0.0) {
            return Err(format!("norm_eps must be positive, got {}", self.norm_eps));
        }
        let g = self.groups();
        for &c in &self.block_out_channels {
            if g == 0 || c % g != 0 {
                return Err(format!(
                    "{c} channels do not split into {g} GroupNorm groups"
                ));
            }
        }
        let mid_attention = self.mid_block_type.is_some() && self.add_attention;
        let attention_levels = self
            .down_block_types
            .iter()
            .zip(self.up_block_types.iter().rev())
            .zip(&self.block_out_channels)
            .filter(|((d, u), _)| d.starts_with("Attn") || u.starts_with("Attn"))
            .map(|(_, c)| *c)
            .chain(mid_attention.then_some(self.block_out_channels[n - 1]));
        for c in attention_levels {
            if self.head_dim(c) == 0 || c % self.head_dim(c) != 0 {
                return Err(format!(
                    "{c} channels do not split into heads of attention_head_dim {}",
                    self.head_dim(c)
                ));
            }
        }
        let c_mid = self.block_out_channels[n - 1];
        if let Some(ga) = self.mid_attn_groups() {
            if ga == 0 || !c_mid.is_multiple_of(ga) {
                return Err(format!(
                    "{c_mid} channels do not split into attn_norm_num_groups {ga} GroupNorm groups"
                ));
            }
        }
        if self.time_embed_dim() == 0 {
            return Err("time_embedding_dim must be positive".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CIFAR: &str = r#"{"_class_name":"UNet2DModel","_diffusers_version":"0.14.0",
      "act_fn":"silu","attention_head_dim":null,"block_out_channels":[128,256,256,256],
      "center_input_sample":false,"down_block_types":["DownBlock2D","AttnDownBlock2D",
      "DownBlock2D","DownBlock2D"],"downsample_padding":0,"flip_sin_to_cos":false,
      "freq_shift":1,"in_channels":3,"layers_per_block":2,"mid_block_scale_factor":1,
      "norm_eps":1e-06,"norm_num_groups":32,"out_channels":3,"sample_size":32,
      "time_embedding_type":"positional","up_block_types":["UpBlock2D","UpBlock2D",
      "AttnUpBlock2D","UpBlock2D"]}"#;

    #[test]
    fn reads_google_ddpm_cifar10_config() {
        let c = UNet2DConfig::from_json(CIFAR).unwrap();
        assert_eq!(c.sample_size.hw(), (32, 32));
        assert_eq!(c.head_dim(256), 256);
        assert_eq!(c.time_embed_dim(), 512);
        assert_eq!(c.mid_block_type.as_deref(), Some("UNetMidBlock2D"));
        assert!(!c.flip_sin_to_cos && c.freq_shift == 1.0 && c.downsample_padding == 0);
    }

    #[test]
    fn rejects_what_it_cannot_build_with_the_reason() {
        let bad = |from: &str, to: &str| {
            UNet2DConfig::from_json(&CIFAR.replacen(from, to, 1)).unwrap_err()
        };
        assert!(bad("\"AttnDownBlock2D\"", "\"SkipDownBlock2D\"")
            .contains("unknown block type SkipDownBlock2D"));
        assert!(bad("\"positional\"", "\"fourier\"").contains("fourier"));
        assert!(bad("[128,256,256,256]", "[128,256,256]").contains("must match"));
        assert!(bad("\"norm_num_groups\":32", "\"norm_num_groups\":3").contains("groups"));
        assert!(bad("\"UNet2DModel\"", "\"UNet2DConditionModel\"").contains("UNet2DConditionModel"));
        assert!(UNet2DConfig::from_json("{")
            .unwrap_err()
            .contains("config.json"));
        let no_mid = CIFAR.replacen("\"act_fn\"", "\"mid_block_type\":null,\"act_fn\"", 1);
        assert_eq!(
            UNet2DConfig::from_json(&no_mid).unwrap().mid_block_type,
            None
        );
    }
}
