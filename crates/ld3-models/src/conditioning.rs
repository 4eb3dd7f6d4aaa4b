//! Conditioning: what a batch is conditioned on, carried next to its noise through everything the
//! batch goes through (sampling, teacher pairs, training batches, validation, evaluation).
//!
//! A solver never sees it: a [`crate::DenoiserPredictor`] binds a batch's conditioning to the
//! model (k-diffusion's `extra_args` idea), so conditioning is opaque to every solver.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use ld3_solvers::{Error, Result};

/// The label that means "no class": the network's unconditional prediction (a null-class
/// embedding, an all-zero one-hot, or, for [`crate::ClassConditionalMixture`], the mixture of
/// all classes). Guidance pairs every label with it.
pub const UNCONDITIONAL_CLASS: u32 = u32::MAX;

/// What one batch is conditioned on; every tensor's first dimension is the batch.
#[derive(Clone, Debug)]
pub enum Conditioning {
    /// Unconditional.
    None,
    /// Class labels [B] (u32); [`UNCONDITIONAL_CLASS`] marks a sample without a class.
    Class(Tensor),
    /// Text embeddings [B, L, D], with the unconditional (negative-prompt) embeddings
    /// [B, L, D] that classifier-free guidance needs.
    Text {
        /// The prompt's embeddings.
        embeddings: Tensor,
        /// The unconditional or negative prompt's embeddings (needed for guidance only).
        negative: Option<Tensor>,
    },
}

/// The kind of conditioning a model accepts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConditioningKind {
    /// None.
    None,
    /// Class labels 0..classes (and [`UNCONDITIONAL_CLASS`]).
    Class {
        /// Number of classes.
        classes: usize,
    },
    /// Text embeddings [B, length, dim].
    Text {
        /// Tokens per prompt.
        length: usize,
        /// Embedding width.
        dim: usize,
    },
}

impl std::fmt::Display for ConditioningKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::None => write!(f, "no conditioning"),
            Self::Class { classes } => write!(f, "class labels 0..{}", classes - 1),
            Self::Text { length, dim } => write!(f, "text embeddings [B, {length}, {dim}]"),
        }
    }
}

fn invalid<T>(msg: impl Into<String>) -> Result<T> {
    Err(Error::Invalid(msg.into()))
}

impl Conditioning {
    /// Class labels from a list (on `device`).
    pub fn classes(labels: &[u32], device: &Device) -> Result<Self> {
        Ok(Self::Class(Tensor::new(labels, device)?))
    }

    /// A short name of the kind, for messages.
    pub fn kind_name(&self) -> &'static str {
        match self {
            Self::None => "no conditioning",
            Self::Class(_) => "class labels",
            Self::Text { .. } => "text embeddings",
        }
    }

    /// The batch size it describes (`None` for [`Conditioning::None`], which fits any batch).
    pub fn batch_size(&self) -> Result<Option<usize>> {
        Ok(match self {
            Self::None => None,
            Self::Class(l) => Some(l.dim(0)?),
            Self::Text { embeddings, .. } => Some(embeddings.dim(0)?),
        })
    }

    /// Checks that it describes a batch of `batch` samples and has a well-formed shape.
    pub fn check_batch(&self, batch: usize) -> Result<()> {
        match self {
            Self::None => return Ok(()),
            Self::Class(l) => {
                if l.rank() != 1 {
                    return invalid(format!(
                        "class labels must be a list [B], got shape {:?}",
                        l.dims()
                    ));
                }
                if l.dtype() != DType::U32 {
                    return invalid(format!("class labels must be u32, got {:?}", l.dtype()));
                }
            }
            Self::Text {
                embeddings,
                negative,
            } => {
                if embeddings.rank() != 3 {
                    return invalid(format!(
                        "text embeddings must be [B, L, D], got shape {:?}",
                        embeddings.dims()
                    ));
                }
                if let Some(n) = negative {
                    if n.dims() != embeddings.dims() {
                        return invalid(format!(
                            "the negative-prompt embeddings have shape {:?}, the prompt's {:?}",
                            n.dims(),
                            embeddings.dims()
                        ));
                    }
                }
            }
        }
        let b = self.batch_size()?.unwrap_or(batch);
        if b != batch {
            return invalid(format!(
                "the conditioning ({}) is for a batch of {b}, but the noise holds {batch} samples",
                self.kind_name()
            ));
        }
        Ok(())
    }

    /// Checks its kind and shapes against what a model accepts (`kind`) for a batch of `batch`
    /// samples, without reading any values (cheap enough for every model call).
    pub fn check_shape(&self, kind: &ConditioningKind, batch: usize) -> Result<()> {
        self.check_batch(batch)?;
        match (self, kind) {
            (Self::None, ConditioningKind::None)
            | (Self::Class(_), ConditioningKind::Class { .. }) => Ok(()),
            (Self::None, k) => invalid(format!(
                "this model needs {k}, but no conditioning was given"
            )),
            (Self::Text { embeddings, .. }, ConditioningKind::Text { length, dim }) => {
                let (_, l, d) = embeddings.dims3()?;
                if (l, d) != (*length, *dim) {
                    return invalid(format!(
                        "text embeddings of shape [B, {l}, {d}] do not fit this model, which takes \
                         [B, {length}, {dim}]"
                    ));
                }
                Ok(())
            }
            (c, k) => invalid(format!(
                "this model takes {k}, but {} were given",
                c.kind_name()
            )),
        }
    }

    /// [`Conditioning::check_shape`], and every class label in range (reads the labels: check
    /// once where a batch enters, not per model call).
    pub fn check_for(&self, kind: &ConditioningKind, batch: usize) -> Result<()> {
        self.check_shape(kind, batch)?;
        if let (Self::Class(labels), ConditioningKind::Class { classes }) = (self, kind) {
            let values: Vec<u32> = labels.to_vec1()?;
            if let Some(bad) = values
                .iter()
                .find(|&&l| l as usize >= *classes && l != UNCONDITIONAL_CLASS)
            {
                return invalid(format!(
                    "class label {bad} is out of range: this model has classes 0..{}",
                    classes - 1
                ));
            }
        }
        Ok(())
    }

    /// Samples `start..start+len`.
    pub fn narrow(&self, start: usize, len: usize) -> Result<Self> {
        self.map(|t| Ok(t.narrow(0, start, len)?))
    }

    /// The samples at `indices` (a u32 tensor [K]).
    pub fn index_select(&self, indices: &Tensor) -> Result<Self> {
        self.map(|t| Ok(t.index_select(&indices.to_device(t.device())?, 0)?))
    }

    /// On `device`.
    pub fn to_device(&self, device: &Device) -> Result<Self> {
        self.map(|t| Ok(t.to_device(device)?))
    }

    fn map(&self, f: impl Fn(&Tensor) -> Result<Tensor>) -> Result<Self> {
        Ok(match self {
            Self::None => Self::None,
            Self::Class(l) => Self::Class(f(l)?),
            Self::Text {
                embeddings,
                negative,
            } => Self::Text {
                embeddings: f(embeddings)?,
                negative: negative.as_ref().map(&f).transpose()?,
            },
        })
    }

    /// The parts one after another along the batch (all of one kind).
    pub fn cat(parts: &[Self]) -> Result<Self> {
        let Some(first) = parts.first() else {
            return Ok(Self::None);
        };
        let all = |f: &dyn Fn(&Self) -> Option<Tensor>| -> Result<Tensor> {
            let ts: Option<Vec<Tensor>> = parts.iter().map(f).collect();
            match ts {
                Some(ts) => Ok(Tensor::cat(&ts, 0)?),
                None => invalid("conditionings of different kinds cannot be joined into a batch"),
            }
        };
        Ok(match first {
            Self::None => {
                if parts.iter().any(|p| !matches!(p, Self::None)) {
                    return invalid(
                        "conditionings of different kinds cannot be joined into a batch",
                    );
                }
                Self::None
            }
            Self::Class(_) => Self::Class(all(&|p| match p {
                Self::Class(l) => Some(l.clone()),
                _ => None,
            })?),
            Self::Text { negative, .. } => Self::Text {
                embeddings: all(&|p| match p {
                    Self::Text { embeddings, .. } => Some(embeddings.clone()),
                    _ => None,
                })?,
                negative: match negative {
                    Some(_) => Some(all(&|p| match p {
                        Self::Text { negative, .. } => negative.clone(),
                        _ => None,
                    })?),
                    None => None,
                },
            },
        })
    }

    /// The unconditional counterpart classifier-free guidance compares with: every label
    /// [`UNCONDITIONAL_CLASS`], or the negative-prompt embeddings.
    pub fn unconditional(&self) -> Result<Self> {
        Ok(match self {
            Self::None => Self::None,
            Self::Class(l) => {
                Self::Class(Tensor::full(UNCONDITIONAL_CLASS, l.dim(0)?, l.device())?)
            }
            Self::Text {
                negative: Some(n), ..
            } => Self::Text {
                embeddings: n.clone(),
                negative: Some(n.clone()),
            },
            Self::Text { negative: None, .. } => {
                return invalid(
                    "guidance needs the unconditional (negative-prompt) embeddings next to the \
                     prompt's",
                )
            }
        })
    }

    /// Whether it conditions on anything.
    pub fn is_none(&self) -> bool {
        matches!(self, Self::None)
    }

    /// Its tensors under stable names (`class_labels`, `text_embeddings`, `negative_embeddings`)
    /// for storage next to the noise; empty when unconditional.
    pub fn to_tensors(&self) -> Result<HashMap<String, Tensor>> {
        let mut out = HashMap::new();
        match self {
            Self::None => {}
            Self::Class(l) => {
                out.insert("class_labels".into(), l.clone());
            }
            Self::Text {
                embeddings,
                negative,
            } => {
                out.insert("text_embeddings".into(), embeddings.clone());
                if let Some(n) = negative {
                    out.insert("negative_embeddings".into(), n.clone());
                }
            }
        }
        Ok(out)
    }

    /// Reads what [`Conditioning::to_tensors`] stored (taking those names out of `tensors`).
    pub fn from_tensors(tensors: &mut HashMap<String, Tensor>, device: &Device) -> Result<Self> {
        let on = |t: Tensor| -> Result<Tensor> { Ok(t.to_device(device)?) };
        Ok(
            match (
                tensors.remove("class_labels"),
                tensors.remove("text_embeddings"),
            ) {
                (None, None) => Self::None,
                (Some(l), None) => Self::Class(on(l.to_dtype(DType::U32)?)?),
                (None, Some(e)) => Self::Text {
                    embeddings: on(e)?,
                    negative: tensors.remove("negative_embeddings").map(on).transpose()?,
                },
                (Some(_), Some(_)) => {
                    return invalid("stored conditioning holds both class labels and text")
                }
            },
        )
    }

    /// Whether `other` holds the same conditioning, value for value.
    pub fn same_as(&self, other: &Self) -> Result<bool> {
        let (a, b) = (self.to_tensors()?, other.to_tensors()?);
        if a.len() != b.len() {
            return Ok(false);
        }
        for (k, x) in &a {
            let Some(y) = b.get(k) else { return Ok(false) };
            if x.dims() != y.dims() {
                return Ok(false);
            }
            let (x, y) = (
                x.to_dtype(DType::F64)?.flatten_all()?,
                y.to_dtype(DType::F64)?.flatten_all()?,
            );
            if x.to_vec1::<f64>()? != y.to_vec1::<f64>()? {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_joins_and_stores_class_labels() {
        let dev = Device::Cpu;
        let c = Conditioning::classes(&[0, 2, 1, 2], &dev).unwrap();
        c.check_for(&ConditioningKind::Class { classes: 3 }, 4)
            .unwrap();
        let part = c.narrow(1, 2).unwrap();
        let idx = Tensor::new(&[3u32, 0], &dev).unwrap();
        let picked = c.index_select(&idx).unwrap();
        let joined = Conditioning::cat(&[part, picked]).unwrap();
        let Conditioning::Class(l) = &joined else {
            panic!("class")
        };
        assert_eq!(l.to_vec1::<u32>().unwrap(), vec![2, 1, 2, 0]);
        let mut stored = joined.to_tensors().unwrap();
        let back = Conditioning::from_tensors(&mut stored, &dev).unwrap();
        assert!(back.same_as(&joined).unwrap());
        assert!(!back.same_as(&c).unwrap());
        let Conditioning::Class(u) = c.unconditional().unwrap() else {
            panic!("class")
        };
        assert_eq!(u.to_vec1::<u32>().unwrap(), vec![UNCONDITIONAL_CLASS; 4]);
    }

    #[test]
    fn mismatches_are_named() {
        let dev = Device::Cpu;
        let c = Conditioning::classes(&[0, 5], &dev).unwrap();
        let kind = ConditioningKind::Class { classes: 3 };
        let e = c.check_for(&kind, 3).unwrap_err().to_string();
        assert!(e.contains("batch of 2") && e.contains("3 samples"), "{e}");
        let e = c.check_for(&kind, 2).unwrap_err().to_string();
        assert!(e.contains("class label 5 is out of range"), "{e}");
        let e = Conditioning::None
            .check_for(&kind, 2)
            .unwrap_err()
            .to_string();
        assert!(e.contains("needs class labels"), "{e}");
        let e = c
            .check_for(&ConditioningKind::None, 2)
            .unwrap_err()
            .to_string();
        assert!(e.contains("takes no conditioning"), "{e}");
        let text = Conditioning::Text {
            embeddings: Tensor::zeros((2, 4, 8), DType::F32, &dev).unwrap(),
            negative: None,
        };
        let e = text.unconditional().unwrap_err().to_string();
        assert!(e.contains("negative-prompt"), "{e}");
        let e = text
            .check_for(&ConditioningKind::Text { length: 77, dim: 8 }, 2)
            .unwrap_err()
            .to_string();
        assert!(e.contains("[B, 77, 8]"), "{e}");
        let e = Conditioning::cat(&[c, text]).unwrap_err().to_string();
        assert!(e.contains("different kinds"), "{e}");
    }
}
