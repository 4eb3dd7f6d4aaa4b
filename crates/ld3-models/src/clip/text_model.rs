//! CLIP's text transformer (transformers' `CLIPTextModel`, the `text_encoder/` of a Stable
//! Diffusion pipeline): token and position embeddings, pre-norm blocks of causal multi-head
//! self-attention and an MLP, a final LayerNorm; its last hidden state is what SD's UNet attends
//! to (SD 1.x: 12 layers, quick_gelu; SD 2.x: OpenCLIP's 23 layers, gelu). Built from the shared
//! layers, under transformers' weight names.

use std::path::Path;

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Embedding, Linear, VarBuilder};
use ld3_solvers::{Error, Result};
use serde::Deserialize;

use crate::checkpoint::Checkpoint;
use crate::layers::{multi_head_attention, Activation, LayerNorm};

/// The fields of `text_encoder/config.json` the network needs.
#[derive(Clone, Debug, Deserialize)]
pub struct ClipTextConfig {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Width of every token's state.
    pub hidden_size: usize,
    /// Width inside the MLP.
    pub intermediate_size: usize,
    /// Number of transformer blocks.
    pub num_hidden_layers: usize,
    /// Attention heads per block.
    pub num_attention_heads: usize,
    /// Longest token sequence (77).
    pub max_position_embeddings: usize,
    /// The MLP's activation (`quick_gelu`, `gelu`).
    #[serde(default = "quick_gelu")]
    pub hidden_act: String,
    /// LayerNorm ε.
    #[serde(default = "layer_norm_eps")]
    pub layer_norm_eps: f64,
}

fn quick_gelu() -> String {
    "quick_gelu".into()
}

fn layer_norm_eps() -> f64 {
    1e-5
}

struct Block {
    norm1: LayerNorm,
    q: Linear,
    k: Linear,
    v: Linear,
    out: Linear,
    norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
}

/// CLIP's text encoder.
pub struct ClipTextModel {
    token_embedding: Embedding,
    position_embedding: Tensor,
    blocks: Vec<Block>,
    final_norm: LayerNorm,
    heads: usize,
    act: Activation,
    config: ClipTextConfig,
}

fn invalid(msg: impl Into<String>) -> Error {
    Error::Invalid(msg.into())
}

impl ClipTextModel {
    /// The encoder of a pipeline's `text_encoder/` folder (config.json and the weights), in
    /// `dtype` on `device`.
    pub fn from_dir(dir: &Path, dtype: DType, device: &Device) -> Result<Self> {
        let config_path = dir.join("config.json");
        let text = std::fs::read_to_string(&config_path).map_err(|cause| Error::Io {
            path: config_path.display().to_string(),
            cause,
        })?;
        let config: ClipTextConfig = serde_json::from_str(&text).map_err(|cause| Error::Json {
            what: format!("{} is not a CLIP text config", config_path.display()),
            cause,
        })?;
        let weights = Checkpoint::from_file(&crate::checkpoint::weights_file(
            dir,
            "model",
            "pytorch_model.bin",
        )?)?;
        let model = Self::new(config, weights.var_builder(dtype, device))?;
        // Older checkpoints also store the int64 position ids (0..77), a constant.
        weights.check_all_used_except("CLIP's text encoder", |k| k.ends_with("position_ids"))?;
        Ok(model)
    }

    /// The encoder of `config` from `vb` (transformers' names, with or without `text_model.`).
    pub fn new(config: ClipTextConfig, vb: VarBuilder) -> Result<Self> {
        let act = Activation::from_name(&config.hidden_act).ok_or_else(|| {
            invalid(format!(
                "the text encoder's activation {:?} is not supported (quick_gelu, gelu, \
                 gelu_new are)",
                config.hidden_act
            ))
        })?;
        let (d, eps) = (config.hidden_size, config.layer_norm_eps);
        if config.num_attention_heads == 0 || d % config.num_attention_heads != 0 {
            return Err(invalid(format!(
                "hidden_size {d} does not split into {} attention heads",
                config.num_attention_heads
            )));
        }
        // transformers 4 (and the hub's SD files) name the weights under `text_model.`;
        // transformers 5 without it.
        let vb = if vb.contains_tensor("text_model.embeddings.token_embedding.weight") {
            vb.pp("text_model")
        } else {
            vb
        };
        let emb = vb.pp("embeddings");
        let token_embedding =
            candle_nn::embedding(config.vocab_size, d, emb.pp("token_embedding"))?;
        let position_embedding = emb
            .pp("position_embedding")
            .get((config.max_position_embeddings, d), "weight")?;
        let mut blocks = Vec::with_capacity(config.num_hidden_layers);
        for i in 0..config.num_hidden_layers {
            let b = vb.pp("encoder.layers").pp(i);
            let attn = b.pp("self_attn");
            let lin = |vb: VarBuilder, i: usize, o: usize| candle_nn::linear(i, o, vb);
            blocks.push(Block {
                norm1: LayerNorm::new(d, eps, b.pp("layer_norm1"))?,
                q: lin(attn.pp("q_proj"), d, d)?,
                k: lin(attn.pp("k_proj"), d, d)?,
                v: lin(attn.pp("v_proj"), d, d)?,
                out: lin(attn.pp("out_proj"), d, d)?,
                norm2: LayerNorm::new(d, eps, b.pp("layer_norm2"))?,
                fc1: lin(b.pp("mlp.fc1"), d, config.intermediate_size)?,
                fc2: lin(b.pp("mlp.fc2"), config.intermediate_size, d)?,
            });
        }
        Ok(Self {
            token_embedding,
            position_embedding,
            blocks,
            final_norm: LayerNorm::new(d, eps, vb.pp("final_layer_norm"))?,
            heads: config.num_attention_heads,
            act,
            config,
        })
    }

    /// Its configuration.
    pub fn config(&self) -> &ClipTextConfig {
        &self.config
    }

    /// The last hidden state [B, L, hidden_size] of token ids `ids` [B, L] (u32).
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        let (_, len) = ids.dims2()?;
        if len > self.config.max_position_embeddings {
            return Err(invalid(format!(
                "{len} tokens, but the text encoder takes at most {}",
                self.config.max_position_embeddings
            )));
        }
        let max_id = ids.max_all()?.to_dtype(DType::U32)?.to_scalar::<u32>()?;
        if max_id as usize >= self.config.vocab_size {
            return Err(invalid(format!(
                "token id {max_id} is outside the text encoder's vocabulary of {}: the tokenizer \
                 and the text encoder belong to different models",
                self.config.vocab_size
            )));
        }
        let positions = self.position_embedding.narrow(0, 0, len)?;
        let mut x = self
            .token_embedding
            .forward(ids)?
            .broadcast_add(&positions)?;
        for b in &self.blocks {
            let h = b.norm1.forward(&x)?;
            let attn = multi_head_attention(
                &b.q.forward(&h)?,
                &b.k.forward(&h)?,
                &b.v.forward(&h)?,
                self.heads,
                true,
            )?;
            x = (x + b.out.forward(&attn)?)?;
            let h = b.norm2.forward(&x)?;
            let h = b.fc2.forward(&self.act.forward(&b.fc1.forward(&h)?)?)?;
            x = (x + h)?;
        }
        Ok(self.final_norm.forward(&x)?)
    }
}
