//! CLIP's text side as Stable Diffusion uses it: the BPE tokenizer ([`ClipTokenizer`]) and the
//! text transformer ([`ClipTextModel`]) whose last hidden state conditions the UNet.

mod text_model;
mod tokenizer;

pub use text_model::{ClipTextConfig, ClipTextModel};
pub use tokenizer::{ClipTokenizer, Tokens};
