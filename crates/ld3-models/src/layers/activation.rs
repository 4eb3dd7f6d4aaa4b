//! Activation functions by the names configs give them.

use candle_core::{Result, Tensor};

/// An activation as a config names it (`hidden_act`, `act_fn`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// x·σ(1.702x) (`quick_gelu`, OpenAI's CLIP).
    QuickGelu,
    /// x·Φ(x) with the exact normal CDF (`gelu`).
    Gelu,
    /// The tanh approximation of GELU (`gelu_new`, `gelu_pytorch_tanh`).
    GeluTanh,
    /// x·σ(x) (`silu`, `swish`).
    Silu,
}

impl Activation {
    /// The activation a config calls `name`.
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "quick_gelu" => Self::QuickGelu,
            "gelu" => Self::Gelu,
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Self::GeluTanh,
            "silu" | "swish" => Self::Silu,
            _ => return None,
        })
    }

    /// Applied elementwise.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::QuickGelu => x * candle_nn::ops::sigmoid(&(x * 1.702)?)?,
            Self::Gelu => x.gelu_erf(),
            Self::GeluTanh => x.gelu(),
            Self::Silu => x * candle_nn::ops::sigmoid(x)?,
        }
    }
}
