//! EDM's networks (Karras et al. 2022, NVlabs/edm `training/networks.py`), rebuilt from a
//! snapshot read by [`crate::edm_pkl`]: `SongUNet` in its DDPM++ and NCSN++ forms and the
//! preconditioners `VPPrecond`, `VEPrecond` and `EDMPrecond`, giving the denoiser D(x; σ).
//! Differentiable in x and σ. Built from the shared layers ([`crate::layers`]): on the CPU their
//! own ops, elsewhere (or with `LD3_GENERIC_OPS=1`) candle's composites.

use std::collections::HashMap;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use ld3_solvers::{Error, NoiseSchedule, NoiseScheduleConfig, Result};
use serde_json::Value as J;

use crate::conditioning::{Conditioning, ConditioningKind};
use crate::denoiser::{Denoiser, Parameterization};
use crate::edm_pkl::PickledNetwork;
use crate::layers::{fir_down2, fir_down2_padded, fir_up2, silu, stacked_self_attention};
use crate::layers::{Addend, Conv2d, GroupNorm, Linear};
use candle_nn::Module;

fn invalid(msg: impl Into<String>) -> Error {
    Error::Invalid(msg.into())
}

/// The snapshot's tensors, taken by name in `dtype`.
struct Weights<'a> {
    tensors: &'a HashMap<String, Tensor>,
    dtype: DType,
    device: &'a Device,
}

impl Weights<'_> {
    fn get(&self, name: &str) -> Result<Tensor> {
        let t = self
            .tensors
            .get(name)
            .ok_or_else(|| invalid(format!("the snapshot has no tensor {name}")))?;
        Ok(t.to_dtype(self.dtype)?.to_device(self.device)?)
    }
    fn opt(&self, name: &str) -> Result<Option<Tensor>> {
        match self.tensors.contains_key(name) {
            true => self.get(name).map(Some),
            false => Ok(None),
        }
    }
}

/// `x @ wᵀ + b` (candle's `Linear`) from the snapshot's `NAME.weight` and `NAME.bias`.
fn linear(w: &Weights, name: &str) -> Result<Linear> {
    Ok(Linear::new(
        w.get(&format!("{name}.weight"))?,
        w.opt(&format!("{name}.bias"))?,
    ))
}

/// EDM's `Conv2d`: an optional k×k convolution with optional FIR up- or downsampling before it
/// (or, fused, downsampling after it).
struct Conv {
    w: Option<Tensor>,
    b: Option<Tensor>,
    filter: Option<Tensor>,
    up: bool,
    down: bool,
    fused: bool,
}

impl Conv {
    fn load(w: &Weights, name: &str, up: bool, down: bool, fused: bool) -> Result<Self> {
        let weight = w.opt(&format!("{name}.weight"))?;
        let bias = w.opt(&format!("{name}.bias"))?;
        if let Some(weight) = &weight {
            let dims = weight.dims();
            if dims.len() != 4 {
                return Err(invalid(format!(
                    "{name}.weight is {dims:?}, not a convolution's [out, in, k, k]"
                )));
            }
            if let Some(b) = bias.as_ref().filter(|b| b.dims() != [dims[0]]) {
                return Err(invalid(format!(
                    "{name}.bias is {:?}, not one value per output channel of {name}.weight {dims:?}",
                    b.dims()
                )));
            }
        }
        Ok(Self {
            w: weight,
            b: bias,
            filter: w.opt(&format!("{name}.resample_filter"))?,
            up,
            down,
            fused,
        })
    }

    /// Without resampling, the shared convolution (its bias, and any addend, inside the op;
    /// the weight is checked to be 4-d at load).
    fn plain(&self) -> Option<Conv2d> {
        let w = self.w.as_ref().filter(|_| !self.up && !self.down)?;
        let config = candle_nn::Conv2dConfig {
            padding: w.dims()[3] / 2,
            ..Default::default()
        };
        Some(Conv2d(candle_nn::Conv2d::new(
            w.clone(),
            self.b.clone(),
            config,
        )))
    }

    /// The same convolution with its output channels in the order `index` gives (old channel
    /// of each new one).
    fn with_output_channels(&self, index: &Tensor) -> Result<Self> {
        let pick = |t: &Option<Tensor>| t.as_ref().map(|t| t.index_select(index, 0)).transpose();
        Ok(Self {
            w: pick(&self.w)?,
            b: pick(&self.b)?,
            filter: self.filter.clone(),
            ..*self
        })
    }

    /// `self.forward(x) + addend`, inside the convolution's op where it has no resampling.
    fn forward_add(&self, x: &Tensor, addend: Addend) -> Result<Tensor> {
        Ok(match self.plain() {
            Some(conv) => conv.forward_add(x, addend)?,
            None => addend.add_to(&self.forward(x)?)?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if let Some(conv) = self.plain() {
            return Ok(conv.forward(x)?);
        }
        let w_pad = self.w.as_ref().map_or(Ok(0), |w| w.dim(3).map(|k| k / 2))?;
        let filter = || {
            self.filter
                .as_ref()
                .ok_or_else(|| invalid("a resampling layer without its resample_filter"))
        };
        let mut x = x.clone();
        if let (true, true, Some(w)) = (self.fused, self.down, &self.w) {
            let f = filter()?;
            let f_pad = (f.dim(3)? - 1) / 2;
            x = crate::layers::conv2d(&x, w, w_pad + f_pad, 1, 1)?;
            // The depthwise filter at stride 2 without padding (its padding went to the conv).
            x = fir_down2_padded(&x, f, 0)?;
        } else {
            if self.up {
                x = fir_up2(&x, filter()?)?;
            }
            if self.down {
                x = fir_down2(&x, filter()?)?;
            }
            if let Some(w) = &self.w {
                x = crate::layers::conv2d(&x, w, w_pad, 1, 1)?;
            }
        }
        Ok(match &self.b {
            Some(b) => x.broadcast_add(&b.reshape((1, (), 1, 1))?)?,
            None => x,
        })
    }
}

/// EDM's `GroupNorm` (the shared fused one, with EDM's min(32, C/4) groups).
fn group_norm(w: &Weights, name: &str, eps: f64) -> Result<GroupNorm> {
    let weight = w.get(&format!("{name}.weight"))?;
    let c = weight.dim(0)?;
    let bias = w.get(&format!("{name}.bias"))?;
    Ok(GroupNorm::new(weight, bias, c, 32.min(c / 4).max(1), eps)?)
}

/// How a network family sets up EDM's `UNetBlock`.
#[derive(Clone, Copy)]
struct BlockStyle {
    /// Scale and shift from the embedding (ADM) instead of adding it (SongUNet).
    adaptive: bool,
    /// GroupNorm ε.
    eps: f64,
    /// Applied after the residual sum and after attention.
    skip_scale: f64,
    /// Channels per attention head (0: one head).
    channels_per_head: usize,
}

impl BlockStyle {
    /// Attention heads over `channels` (EDM's `num_heads`, or channels ÷ channels per head).
    fn heads(&self, channels: usize) -> usize {
        match self.channels_per_head {
            0 => 1,
            per => (channels / per).max(1),
        }
    }
}

const SONG: BlockStyle = BlockStyle {
    adaptive: false,
    eps: 1e-6,
    skip_scale: std::f64::consts::FRAC_1_SQRT_2,
    channels_per_head: 0,
};

const DHARIWAL: BlockStyle = BlockStyle {
    adaptive: true,
    eps: 1e-5,
    skip_scale: 1.0,
    channels_per_head: 64,
};

/// EDM's `UNetBlock`: GroupNorm, SiLU, convolutions with optional resampling, the embedding
/// added (SongUNet) or as scale and shift (ADM), a skip path, and optional self-attention.
struct UNetBlock {
    norm0: GroupNorm,
    conv0: Conv,
    affine: Linear,
    norm1: GroupNorm,
    conv1: Conv,
    skip: Option<Conv>,
    /// GroupNorm, q|k|v as three blocks of channels (reordered from EDM's), output
    /// projection, heads.
    attention: Option<(GroupNorm, Conv, Conv, usize)>,
    in_channels: usize,
    style: BlockStyle,
}

impl UNetBlock {
    fn load(w: &Weights, name: &str, up: bool, down: bool, style: BlockStyle) -> Result<Self> {
        let n = |s: &str| format!("{name}.{s}");
        let eps = style.eps;
        let norm0 = group_norm(w, &n("norm0"), eps)?;
        let in_channels = w
            .tensors
            .get(&n("norm0.weight"))
            .map_or(Ok(0), |t| t.dim(0))?;
        let skip = if w.tensors.contains_key(&n("skip.weight"))
            || w.tensors.contains_key(&n("skip.resample_filter"))
        {
            Some(Conv::load(w, &n("skip"), up, down, false)?)
        } else {
            None
        };
        let attention = if w.tensors.contains_key(&n("qkv.weight")) {
            let qkv = Conv::load(w, &n("qkv"), false, false, false)?;
            let dims = qkv
                .w
                .as_ref()
                .map(|t| t.dims().to_vec())
                .unwrap_or_default();
            // EDM's Conv2d(C, 3·C, kernel=1).
            let c = dims.first().map_or(0, |d| d / 3);
            if dims.len() != 4 || dims[0] % 3 != 0 || dims[1..] != [c, 1, 1] {
                return Err(invalid(format!(
                    "{name}.qkv.weight is {dims:?}, not EDM's [3·C, C, 1, 1]"
                )));
            }
            let heads = style.heads(c);
            if c % heads != 0 {
                return Err(invalid(format!(
                    "{name}: {c} attention channels do not split into {heads} heads"
                )));
            }
            let order = Tensor::new(qkv_order(c, heads), w.device)?;
            Some((
                group_norm(w, &n("norm2"), eps)?,
                qkv.with_output_channels(&order)?,
                Conv::load(w, &n("proj"), false, false, false)?,
                heads,
            ))
        } else {
            None
        };
        Ok(Self {
            norm0,
            conv0: Conv::load(w, &n("conv0"), up, down, false)?,
            affine: linear(w, &n("affine"))?,
            norm1: group_norm(w, &n("norm1"), eps)?,
            conv1: Conv::load(w, &n("conv1"), false, false, false)?,
            skip,
            attention,
            in_channels,
            style,
        })
    }

    fn forward(&self, x: &Tensor, emb: &Tensor) -> Result<Tensor> {
        let orig = x;
        let skip_scale = self.style.skip_scale;
        let h = self.norm0.forward_silu(x)?;
        let params = self.affine.forward(emb)?;
        let mut x = if self.style.adaptive {
            let x = self.conv0.forward(&h)?;
            let c = x.dim(1)?;
            let params = params.unsqueeze(2)?.unsqueeze(3)?;
            let (scale, shift) = (params.narrow(1, 0, c)?, params.narrow(1, c, c)?);
            let scaled = self.norm1.forward(&x)?.broadcast_mul(&(scale + 1.0)?)?;
            silu(&scaled.broadcast_add(&shift)?)?
        } else {
            // GroupNorm(conv0(h) + the embedding), SiLU: the addition inside the convolution.
            let x = self.conv0.forward_add(&h, Addend::PerChannel(&params))?;
            self.norm1.forward_silu(&x)?
        };
        let skip = match &self.skip {
            Some(s) => s.forward(orig)?,
            None => orig.clone(),
        };
        x = (self.conv1.forward_add(&x, Addend::Full(&skip))? * skip_scale)?;
        if let Some((norm2, qkv, proj, heads)) = &self.attention {
            // w[n, q, k] = softmax_k Σ_c q[n,c,q]·k[n,c,k]/√c; a[n,c,q] = Σ_k w[n,q,k]·v[n,c,k]
            // per head, then the projection and the residual.
            let (b, c, h, wd) = x.dims4()?;
            let qkv = qkv
                .forward(&norm2.forward(&x)?)?
                .reshape((b, 3 * c, h * wd))?;
            let a = stacked_self_attention(&qkv, *heads)?.reshape((b, c, h, wd))?;
            x = (proj.forward_add(&a, Addend::Full(&x))? * skip_scale)?;
        }
        Ok(x)
    }
}

/// EDM's qkv convolution writes its channels as (head, channel, q|k|v); the shared attention
/// ([`stacked_self_attention`]) takes q, k and v as three blocks of (head, channel). For each
/// channel of the latter, the one of the former, over `c` channels in `heads` heads.
fn qkv_order(c: usize, heads: usize) -> Vec<u32> {
    let ch = c / heads;
    (0..3)
        .flat_map(|j| (0..c).map(move |hc| ((hc / ch) * ch * 3 + (hc % ch) * 3 + j) as u32))
        .collect()
}

/// One entry of SongUNet's encoder or decoder, in the order EDM builds them.
enum Step {
    Conv(Conv),
    Block(Box<UNetBlock>),
    AuxResidual(Conv),
    AuxNorm(GroupNorm),
    AuxConv(Conv),
}

/// EDM's `SongUNet` (DDPM++: positional embedding, standard encoder; NCSN++: Fourier
/// embedding, residual encoder; the standard decoder) and `DhariwalUNet` (ADM).
pub struct EdmUnet {
    dhariwal: bool,
    fourier_freqs: Option<Tensor>,
    noise_channels: usize,
    map_label: Option<Linear>,
    map_layer0: Linear,
    map_layer1: Linear,
    enc: Vec<(String, Step)>,
    dec: Vec<(String, Step)>,
}

fn usize_of(kw: &J, key: &str, default: usize) -> Result<usize> {
    match kw.get(key) {
        None | Some(J::Null) => Ok(default),
        Some(v) => v
            .as_u64()
            .map(|v| v as usize)
            .ok_or_else(|| invalid(format!("{key} must be a whole number, got {v}"))),
    }
}

fn list_of(kw: &J, key: &str, default: &[usize]) -> Result<Vec<usize>> {
    match kw.get(key) {
        None | Some(J::Null) => Ok(default.to_vec()),
        Some(J::Array(a)) => a
            .iter()
            .map(|v| {
                v.as_u64()
                    .map(|v| v as usize)
                    .ok_or_else(|| invalid(format!("{key} must list whole numbers")))
            })
            .collect(),
        Some(v) => Err(invalid(format!("{key} must be a list, got {v}"))),
    }
}

impl EdmUnet {
    /// The network under `prefix` (`model.` inside a preconditioner) with EDM's keyword arguments
    /// `kw` (`img_resolution` and the network's settings); `dhariwal` for ADM.
    fn load(w: &Weights, prefix: &str, kw: &J, dhariwal: bool) -> Result<Self> {
        let p = |s: &str| format!("{prefix}{s}");
        let str_of = |key: &str, default: &str| -> String {
            kw.get(key)
                .and_then(J::as_str)
                .unwrap_or(default)
                .to_string()
        };
        let embedding = str_of("embedding_type", "positional");
        let encoder = str_of("encoder_type", "standard");
        let decoder = str_of("decoder_type", "standard");
        let style = if dhariwal { DHARIWAL } else { SONG };
        if !dhariwal
            && (decoder != "standard" || !matches!(encoder.as_str(), "standard" | "residual"))
        {
            return Err(invalid(format!(
                "SongUNet with encoder {encoder} and decoder {decoder} is not supported (DDPM++ \
                 and NCSN++ are: standard or residual encoder, standard decoder)"
            )));
        }
        let res = usize_of(kw, "img_resolution", 0)?;
        let (channels, mult_default, blocks) = if dhariwal {
            (192, [1, 2, 3, 4], 3)
        } else {
            (128, [1, 2, 2, 2], 4)
        };
        let model_channels = usize_of(kw, "model_channels", channels)?;
        let mults = list_of(kw, "channel_mult", &mult_default)?;
        let num_blocks = usize_of(kw, "num_blocks", blocks)?;
        let noise_channels = model_channels * usize_of(kw, "channel_mult_noise", 1)?;
        let mut enc = Vec::new();
        for (level, _) in mults.iter().enumerate() {
            let r = res >> level;
            let name = |s: &str| format!("{r}x{r}_{s}");
            if level == 0 {
                let n = name("conv");
                enc.push((
                    n.clone(),
                    Step::Conv(Conv::load(w, &p(&format!("enc.{n}")), false, false, false)?),
                ));
            } else {
                let n = name("down");
                let block = UNetBlock::load(w, &p(&format!("enc.{n}")), false, true, style)?;
                enc.push((n, Step::Block(Box::new(block))));
                if !dhariwal && encoder == "residual" {
                    let n = name("aux_residual");
                    let conv = Conv::load(w, &p(&format!("enc.{n}")), false, true, true)?;
                    enc.push((n, Step::AuxResidual(conv)));
                }
            }
            for idx in 0..num_blocks {
                let n = name(&format!("block{idx}"));
                let block = UNetBlock::load(w, &p(&format!("enc.{n}")), false, false, style)?;
                enc.push((n, Step::Block(Box::new(block))));
            }
        }
        let mut dec = Vec::new();
        for level in (0..mults.len()).rev() {
            let r = res >> level;
            let name = |s: &str| format!("{r}x{r}_{s}");
            let mut names = vec![];
            if level == mults.len() - 1 {
                names.push((name("in0"), false));
                names.push((name("in1"), false));
            } else {
                names.push((name("up"), true));
            }
            for idx in 0..=num_blocks {
                names.push((name(&format!("block{idx}")), false));
            }
            for (n, up) in names {
                let block = UNetBlock::load(w, &p(&format!("dec.{n}")), up, false, style)?;
                dec.push((n, Step::Block(Box::new(block))));
            }
            if level == 0 && !dhariwal {
                let n = name("aux_norm");
                let norm = group_norm(w, &p(&format!("dec.{n}")), 1e-6)?;
                dec.push((n, Step::AuxNorm(norm)));
                let n = name("aux_conv");
                let conv = Conv::load(w, &p(&format!("dec.{n}")), false, false, false)?;
                dec.push((n, Step::AuxConv(conv)));
            }
        }
        if dhariwal {
            let norm = group_norm(w, &p("out_norm"), 1e-5)?;
            dec.push(("out_norm".into(), Step::AuxNorm(norm)));
            let conv = Conv::load(w, &p("out_conv"), false, false, false)?;
            dec.push(("out_conv".into(), Step::AuxConv(conv)));
        }
        // Augmentation labels (EDM's `augment_dim`, 9 for its CIFAR-10 networks) condition the
        // network on the augmentation a training image went through. Sampling feeds none: EDM
        // passes `augment_labels=None`, which adds nothing, the same as bias-free
        // `map_augment(0)`. The layer is checked, then left out of the computation.
        let augment_dim = usize_of(kw, "augment_dim", 0)?;
        if augment_dim > 0 {
            let want = [
                if dhariwal {
                    model_channels
                } else {
                    noise_channels
                },
                augment_dim,
            ];
            let got = w.get(&p("map_augment.weight"))?.dims().to_vec();
            if got != want || w.tensors.contains_key(&p("map_augment.bias")) {
                return Err(invalid(format!(
                    "map_augment is {got:?}, with augment_dim {augment_dim}: EDM's is a \
                     bias-free {want:?}"
                )));
            }
        }
        let map_label = if w.tensors.contains_key(&p("map_label.weight")) {
            Some(linear(w, &p("map_label"))?)
        } else {
            None
        };
        Ok(Self {
            dhariwal,
            fourier_freqs: if embedding == "fourier" {
                Some(w.get(&p("map_noise.freqs"))?)
            } else {
                None
            },
            noise_channels,
            map_label,
            map_layer0: linear(w, &p("map_layer0"))?,
            map_layer1: linear(w, &p("map_layer1"))?,
            enc,
            dec,
        })
    }

    /// F(x; c_noise, labels): x [B, C, H, W], `noise_labels` [B].
    fn forward(
        &self,
        x: &Tensor,
        noise_labels: &Tensor,
        class_labels: Option<&Tensor>,
    ) -> Result<Tensor> {
        let dtype = x.dtype();
        let dev = x.device();
        let half = self.noise_channels / 2;
        // Embedding: [cos | sin] of labels × frequencies, then swapped to [sin | cos].
        let freqs = match &self.fourier_freqs {
            Some(f) => (f * (2.0 * std::f64::consts::PI))?,
            None => {
                // Positional: (1/10000)^(i/(half − 1)) with SongUNet's endpoint, i/half without.
                let last = if self.dhariwal { half } else { half - 1 } as f64;
                let v: Vec<f64> = (0..half)
                    .map(|i| (1.0f64 / 10000.0).powf(i as f64 / last))
                    .collect();
                Tensor::from_vec(v, half, dev)?.to_dtype(dtype)?
            }
        };
        let args = noise_labels
            .unsqueeze(1)?
            .broadcast_mul(&freqs.unsqueeze(0)?)?;
        let mut emb;
        if self.dhariwal {
            // ADM: [cos | sin]; the label joins after the mapping layers.
            emb = Tensor::cat(&[args.cos()?, args.sin()?], 1)?;
            emb = silu(&self.map_layer0.forward(&emb)?)?;
            emb = self.map_layer1.forward(&emb)?;
            if let (Some(map), Some(labels)) = (&self.map_label, class_labels) {
                emb = (emb + map.forward(labels)?)?;
            }
            emb = silu(&emb)?;
        } else {
            // SongUNet: [sin | cos], the label (scaled by √label_dim) before the mapping.
            emb = Tensor::cat(&[args.sin()?, args.cos()?], 1)?;
            if let (Some(map), Some(labels)) = (&self.map_label, class_labels) {
                let scale = (map.weight().dim(1)? as f64).sqrt();
                emb = (emb + map.forward(&(labels * scale)?)?)?;
            }
            emb = silu(&self.map_layer0.forward(&emb)?)?;
            emb = silu(&self.map_layer1.forward(&emb)?)?;
        }

        let mut skips: Vec<Tensor> = Vec::new();
        let (mut x, mut aux) = (x.clone(), x.clone());
        for (_, step) in &self.enc {
            match step {
                Step::AuxResidual(conv) => {
                    x = ((x + conv.forward(&aux)?)? / 2f64.sqrt())?;
                    aux = x.clone();
                    *skips.last_mut().expect("a block before") = x.clone();
                }
                Step::Block(b) => {
                    x = b.forward(&x, &emb)?;
                    skips.push(x.clone());
                }
                Step::Conv(c) => {
                    x = c.forward(&x)?;
                    skips.push(x.clone());
                }
                _ => return Err(invalid("a decoder step in the encoder")),
            }
        }
        let mut tmp = None;
        let mut out: Option<Tensor> = None;
        for (_, step) in &self.dec {
            match step {
                // EDM follows the norm by SiLU, then the convolution: norm and SiLU in one op.
                Step::AuxNorm(n) => tmp = Some(n.forward_silu(&x)?),
                Step::AuxConv(c) => {
                    let h = tmp
                        .as_ref()
                        .ok_or_else(|| invalid("aux_conv before aux_norm"))?;
                    out = Some(match out {
                        Some(o) => c.forward_add(h, Addend::Full(&o))?,
                        None => c.forward(h)?,
                    });
                }
                Step::Block(b) => {
                    if x.dim(1)? != b.in_channels {
                        let s = skips
                            .pop()
                            .ok_or_else(|| invalid("the decoder ran out of skip connections"))?;
                        x = Tensor::cat(&[&x, &s], 1)?;
                    }
                    x = b.forward(&x, &emb)?;
                }
                _ => return Err(invalid("an encoder step in the decoder")),
            }
        }
        out.ok_or_else(|| invalid("SongUNet without an output layer"))
    }
}

/// How a preconditioner maps σ to the network's input scale, output scale and noise label.
#[derive(Clone, Copy, Debug)]
enum Precond {
    Vp { beta_d: f64, beta_min: f64, m: f64 },
    Ve,
    Edm { sigma_data: f64 },
}

/// A preconditioned EDM network: D(x; σ) = c_skip·x + c_out·F(c_in·x; c_noise).
pub struct EdmDenoiser {
    precond: Precond,
    net: EdmUnet,
    label_dim: usize,
    /// [C, H, W].
    pub shape: [usize; 3],
    dtype: DType,
}

fn f64_of(kw: &J, key: &str, default: f64) -> Result<f64> {
    match kw.get(key) {
        None | Some(J::Null) => Ok(default),
        Some(v) => v
            .as_f64()
            .ok_or_else(|| invalid(format!("{key} must be a number, got {v}"))),
    }
}

impl EdmDenoiser {
    /// The network of a snapshot, its weights in `dtype` on the CPU.
    pub fn new(net: &PickledNetwork, dtype: DType) -> Result<Self> {
        Self::on(net, dtype, &Device::Cpu)
    }

    /// The network of a snapshot, its weights in `dtype` on `device`.
    pub fn on(net: &PickledNetwork, dtype: DType, device: &Device) -> Result<Self> {
        let kw = &net.init_kwargs;
        let precond = match net.class_name.as_str() {
            "VPPrecond" => Precond::Vp {
                beta_d: f64_of(kw, "beta_d", 19.9)?,
                beta_min: f64_of(kw, "beta_min", 0.1)?,
                m: f64_of(kw, "M", 1000.0)?,
            },
            "VEPrecond" => Precond::Ve,
            "EDMPrecond" => Precond::Edm {
                sigma_data: f64_of(kw, "sigma_data", 0.5)?,
            },
            other => {
                return Err(invalid(format!(
                    "{other}: EDM networks with VPPrecond, VEPrecond or EDMPrecond are supported"
                )))
            }
        };
        let model_type = kw
            .get("model_type")
            .and_then(J::as_str)
            .unwrap_or("SongUNet");
        if !matches!(model_type, "SongUNet" | "DhariwalUNet") {
            return Err(invalid(format!(
                "{model_type} inside {}: SongUNet (DDPM++, NCSN++) and DhariwalUNet (ADM) are \
                 supported",
                net.class_name
            )));
        }
        let weights = Weights {
            tensors: &net.tensors,
            dtype,
            device,
        };
        let res = usize_of(kw, "img_resolution", 0)?;
        let channels = usize_of(kw, "img_channels", 0)?;
        Ok(Self {
            precond,
            net: EdmUnet::load(&weights, "model.", kw, model_type == "DhariwalUNet")?,
            label_dim: usize_of(kw, "label_dim", 0)?,
            shape: [channels, res, res],
            dtype,
        })
    }

    /// D(x; σ) for x [B, C, H, W] and σ [B] (one-hot `class_labels` [B, label_dim] for
    /// conditional networks).
    pub fn forward(
        &self,
        x: &Tensor,
        sigma: &Tensor,
        class_labels: Option<&Tensor>,
    ) -> Result<Tensor> {
        let s = sigma.reshape(((), 1, 1, 1))?;
        let (c_skip, c_out, c_in, c_noise) = match self.precond {
            Precond::Vp {
                beta_d,
                beta_min,
                m,
            } => {
                let one = s.ones_like()?;
                // σ⁻¹(σ) = (√(β_min² + 2β_d·ln(1 + σ²)) − β_min)/β_d.
                let t = ((((s.sqr()? + 1.0)?.log()? * (2.0 * beta_d))? + beta_min * beta_min)?
                    .sqrt()?
                    - beta_min)?
                    / beta_d;
                (
                    one,
                    s.neg()?,
                    (s.sqr()? + 1.0)?.sqrt()?.recip()?,
                    (t? * (m - 1.0))?,
                )
            }
            Precond::Ve => (
                s.ones_like()?,
                s.clone(),
                s.ones_like()?,
                (s.clone() * 0.5)?.log()?,
            ),
            Precond::Edm { sigma_data } => {
                let sd2 = sigma_data * sigma_data;
                let total = (s.sqr()? + sd2)?;
                (
                    (total.recip()? * sd2)?,
                    ((&s * sigma_data)? / total.sqrt()?)?,
                    total.sqrt()?.recip()?,
                    (s.log()? / 4.0)?,
                )
            }
        };
        if self.label_dim > 0 && class_labels.is_none() {
            return Err(invalid("this EDM network needs class labels"));
        }
        let f = self.net.forward(
            &x.broadcast_mul(&c_in)?,
            &c_noise.flatten_all()?,
            class_labels,
        )?;
        Ok((x.broadcast_mul(&c_skip)? + f.broadcast_mul(&c_out)?)?)
    }
}

/// An EDM network as a [`Denoiser`]: D(x; σ) under EDM's schedule (t = σ ∈ [0.002, 80], α = 1),
/// the time the paper samples every preconditioner at.
pub struct EdmNetwork {
    denoiser: EdmDenoiser,
    schedule: Arc<dyn NoiseSchedule>,
    shape: Vec<usize>,
    device: Device,
    source: String,
    class_name: String,
    parameters: usize,
    /// The snapshot's `use_fp16` (EDM then runs the UNet in float16, on CUDA only): noted, and
    /// the network computes in the dtype asked for, as EDM's own code does on a CPU.
    use_fp16: bool,
}

impl EdmNetwork {
    /// The network of a snapshot (or of its `ld3 convert` folder) named `source`, its weights in
    /// `dtype` on `device`.
    pub fn new(net: &PickledNetwork, source: &str, dtype: DType, device: &Device) -> Result<Self> {
        let denoiser = EdmDenoiser::on(net, dtype, device)?;
        Ok(Self {
            shape: denoiser.shape.to_vec(),
            denoiser,
            schedule: NoiseScheduleConfig::Edm {
                sigma_min: 0.002,
                sigma_max: 80.0,
            }
            .build()?,
            device: device.clone(),
            source: source.to_string(),
            class_name: net.class_name.clone(),
            parameters: net.tensors.values().map(Tensor::elem_count).sum(),
            use_fp16: net.init_kwargs.get("use_fp16") == Some(&J::Bool(true)),
        })
    }
}

impl Denoiser for EdmNetwork {
    fn describe(&self) -> String {
        format!(
            "{} (EDM {} over {}, {:?}{})",
            self.source,
            self.class_name,
            if self.denoiser.net.dhariwal {
                "DhariwalUNet"
            } else {
                "SongUNet"
            },
            self.shape,
            match self.use_fp16 {
                true => format!(
                    "; made with use_fp16, computing in {:?}",
                    self.denoiser.dtype
                ),
                false => String::new(),
            }
        )
    }
    fn sample_shape(&self) -> &[usize] {
        &self.shape
    }
    fn noise_schedule(&self) -> &dyn NoiseSchedule {
        self.schedule.as_ref()
    }
    fn parameterization(&self) -> Parameterization {
        Parameterization::Sample
    }
    fn device(&self) -> &Device {
        &self.device
    }
    fn conditioning(&self) -> ConditioningKind {
        match self.denoiser.label_dim {
            0 => ConditioningKind::None,
            classes => ConditioningKind::Class { classes },
        }
    }
    fn parameter_count(&self) -> usize {
        self.parameters
    }
    fn forward(&self, x: &Tensor, t_net: &Tensor, cond: &Conditioning) -> Result<Tensor> {
        let b = x.dim(0)?;
        cond.check_shape(&self.conditioning(), b)?;
        let dtype = self.denoiser.dtype;
        let sigma = t_net.to_dtype(dtype)?.broadcast_as(b)?.contiguous()?;
        // One-hot labels; the unconditional label matches no class (all zeros).
        let labels = match cond {
            Conditioning::Class(labels) => {
                let classes = Tensor::arange(0u32, self.denoiser.label_dim as u32, x.device())?;
                Some(
                    labels
                        .unsqueeze(1)?
                        .broadcast_eq(&classes.unsqueeze(0)?)?
                        .to_dtype(dtype)?,
                )
            }
            _ => None,
        };
        let out = self
            .denoiser
            .forward(&x.to_dtype(dtype)?, &sigma, labels.as_ref())?;
        Ok(out.to_dtype(x.dtype())?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Var, D};

    /// EDM's attention as its `UNetBlock` writes it: q, k and v from channels (head, c, 3),
    /// w = softmax_k(qᵀk/√c), a = v·wᵀ.
    fn edm_attention(qkv: &Tensor, heads: usize) -> Tensor {
        let (b, c3, l) = qkv.dims3().unwrap();
        let (c, ch) = (c3 / 3, c3 / 3 / heads);
        let qkv = qkv.reshape((b * heads, ch, 3, l)).unwrap();
        let part = |j| qkv.narrow(2, j, 1).unwrap().squeeze(2).unwrap();
        let (q, k, v) = (part(0), (part(1) / (ch as f64).sqrt()).unwrap(), part(2));
        let logits = q
            .t()
            .unwrap()
            .contiguous()
            .unwrap()
            .matmul(&k.contiguous().unwrap());
        let w = candle_nn::ops::softmax(&logits.unwrap(), D::Minus1).unwrap();
        let w_t = w.t().unwrap().contiguous().unwrap();
        let a = v.contiguous().unwrap().matmul(&w_t).unwrap();
        a.reshape((b, c, l)).unwrap()
    }

    fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
        crate::layers::testing::max_abs((a - b).unwrap())
    }

    /// A block's tensors over 4 channels with attention, its qkv weight of `qkv_dims`.
    fn block_tensors(qkv_dims: &[usize]) -> HashMap<String, Tensor> {
        let dev = Device::Cpu;
        let t = |dims: &[usize]| Tensor::zeros(dims, DType::F32, &dev).unwrap();
        let mut m = HashMap::new();
        for (name, dims) in [
            ("b.norm0.weight", &[4][..]),
            ("b.norm0.bias", &[4]),
            ("b.conv0.weight", &[4, 4, 3, 3]),
            ("b.affine.weight", &[4, 8]),
            ("b.norm1.weight", &[4]),
            ("b.norm1.bias", &[4]),
            ("b.conv1.weight", &[4, 4, 3, 3]),
            ("b.norm2.weight", &[4]),
            ("b.norm2.bias", &[4]),
            ("b.qkv.weight", qkv_dims),
            ("b.proj.weight", &[4, 4, 1, 1]),
        ] {
            m.insert(name.to_string(), t(dims));
        }
        m
    }

    /// Malformed convolution and attention weights are refused by name at load, not at the first
    /// call (nor by an index out of range on a GPU).
    #[test]
    fn malformed_block_weights_are_refused_by_name() {
        let load = |m: &HashMap<String, Tensor>| {
            let w = Weights {
                tensors: m,
                dtype: DType::F32,
                device: &Device::Cpu,
            };
            UNetBlock::load(&w, "b", false, false, SONG).map(|_| ())
        };
        assert!(load(&block_tensors(&[12, 4, 1, 1])).is_ok());
        for (dims, what) in [
            (&[13, 4, 1, 1][..], "b.qkv.weight is [13, 4, 1, 1]"),
            (&[12, 3, 1, 1], "b.qkv.weight is [12, 3, 1, 1]"),
            (&[12, 4, 3, 3], "b.qkv.weight is [12, 4, 3, 3]"),
            (&[12, 4], "b.qkv.weight is [12, 4], not a convolution"),
        ] {
            let e = load(&block_tensors(dims)).unwrap_err().to_string();
            assert!(e.contains(what), "{e}");
        }
        let mut m = block_tensors(&[12, 4, 1, 1]);
        let short = Tensor::zeros(11, DType::F32, &Device::Cpu).unwrap();
        m.insert("b.qkv.bias".into(), short);
        let e = load(&m).unwrap_err().to_string();
        assert!(e.contains("b.qkv.bias is [11]"), "{e}");
    }

    /// With the qkv channels reordered as `load` does, the shared attention equals EDM's for one
    /// and several heads, in value and in the gradient of the input.
    #[test]
    fn reordered_qkv_channels_give_edms_attention() {
        let dev = Device::Cpu;
        for heads in [1, 2, 3] {
            let c = 4 * heads;
            let x = Var::from_tensor(&Tensor::randn(0f64, 1.0, (2, 3 * c, 5), &dev).unwrap());
            let x = x.unwrap();
            let weights = Tensor::randn(0f64, 1.0, (2, c, 5), &dev).unwrap();
            let order = Tensor::new(qkv_order(c, heads), &dev).unwrap();
            let want = edm_attention(x.as_tensor(), heads);
            let reordered = x.as_tensor().index_select(&order, 1).unwrap();
            let got = stacked_self_attention(&reordered, heads).unwrap();
            assert!(max_abs_diff(&got, &want) < 1e-12, "{heads} heads");
            let grad = |y: &Tensor| {
                let loss = y.mul(&weights).unwrap().sum_all().unwrap();
                loss.backward().unwrap().get(&x).unwrap().clone()
            };
            let (dgot, dwant) = (grad(&got), grad(&want));
            assert!(
                max_abs_diff(&dgot, &dwant) < 1e-12,
                "{heads} heads: gradient"
            );
        }
    }
}
