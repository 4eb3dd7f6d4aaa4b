//! CLIP's BPE tokenizer as Stable Diffusion pipelines ship it (`tokenizer/` of the diffusers
//! layout), with the `tokenizers` crate: `tokenizer.json` when present, else built from
//! `vocab.json` and `merges.txt` the way transformers' `CLIPTokenizer` builds it — NFC,
//! whitespace runs to one space, lower case; CLIP's split (`'s|'t|…|[\p{L}]+|[\p{N}]|…`, spaces
//! dropped); GPT-2's byte-level alphabet; BPE with the `</w>` word-end suffix; start and end
//! tokens around the prompt; the special tokens (start, end, unknown, padding) matched as whole
//! tokens. Prompts are padded to `model_max_length` (77) with the padding token of
//! `tokenizer_config.json` (SD 1.x `<|endoftext|>`, SD 2.x `!`) and longer ones truncated, as
//! diffusers does.

use std::path::{Path, PathBuf};

use ld3_solvers::{Error, Result};
use serde_json::Value as J;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::normalizers::{Lowercase, Replace, Sequence as Normalizers, NFC};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence as PreTokenizers;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::processors::roberta::RobertaProcessing;
use tokenizers::{AddedToken, SplitDelimiterBehavior, Tokenizer};

/// CLIP's pre-tokenisation pattern (transformers' `CLIPTokenizer`, open_clip's `SimpleTokenizer`).
const CLIP_SPLIT: &str =
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";

/// A prompt's token ids, padded or truncated to the tokenizer's length.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tokens {
    /// `max_length` ids: start, the prompt's tokens, end, padding.
    pub ids: Vec<u32>,
    /// The prompt's length in tokens with start and end, before truncation.
    pub untruncated_len: usize,
    /// The text cut off, when the prompt was longer than the tokenizer takes.
    pub truncated: Option<String>,
}

/// CLIP's tokenizer, with its special tokens and length.
pub struct ClipTokenizer {
    inner: Tokenizer,
    max_length: usize,
    bos: u32,
    eos: u32,
    pad: u32,
}

fn invalid(msg: impl Into<String>) -> Error {
    Error::Invalid(msg.into())
}

fn read_json(path: &Path) -> Result<Option<J>> {
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).map_err(|cause| Error::Io {
        path: path.display().to_string(),
        cause,
    })?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|cause| Error::Json {
            what: format!("{} is not JSON", path.display()),
            cause,
        })
}

/// A special token as tokenizer configs write it: a string, or `{"content": ...}`.
fn token_text(v: &J) -> Option<String> {
    match v {
        J::String(s) => Some(s.clone()),
        J::Object(o) => o.get("content").and_then(J::as_str).map(str::to_string),
        _ => None,
    }
}

impl ClipTokenizer {
    /// The tokenizer of a pipeline's `tokenizer/` folder: `tokenizer.json` when present, else
    /// `vocab.json` + `merges.txt`; special tokens and length from `tokenizer_config.json` and
    /// `special_tokens_map.json` (CLIP's defaults where they are silent).
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let json = dir.join("tokenizer.json");
        if json.is_file() {
            let inner = Tokenizer::from_file(&json).map_err(|e| {
                invalid(format!(
                    "{}: not a readable tokenizer ({e})",
                    json.display()
                ))
            })?;
            return Self::finish(inner, Specials::read(dir)?, dir);
        }
        Self::from_vocab_and_merges(dir)
    }

    /// The tokenizer built from `vocab.json` and `merges.txt` (what SD repositories ship),
    /// ignoring any `tokenizer.json`.
    pub fn from_vocab_and_merges(dir: &Path) -> Result<Self> {
        let file = |name: &str| -> Result<PathBuf> {
            let p = dir.join(name);
            if p.is_file() {
                Ok(p)
            } else {
                Err(invalid(format!(
                    "{}: the tokenizer folder has no {name} (CLIP's tokenizer needs vocab.json and \
                     merges.txt, or tokenizer.json)",
                    dir.display()
                )))
            }
        };
        let (vocab, merges) = (file("vocab.json")?, file("merges.txt")?);
        let specials = Specials::read(dir)?;
        let bpe = BPE::from_file(&vocab.display().to_string(), &merges.display().to_string())
            .unk_token(specials.unk.clone())
            .end_of_word_suffix("</w>".into())
            .build()
            .map_err(|e| {
                invalid(format!(
                    "{} and {}: not a BPE vocabulary ({e})",
                    vocab.display(),
                    merges.display()
                ))
            })?;
        let built = || -> tokenizers::Result<Tokenizer> {
            let mut t = Tokenizer::new(bpe);
            t.with_normalizer(Some(Normalizers::new(vec![
                NFC.into(),
                Replace::new(
                    tokenizers::normalizers::replace::ReplacePattern::Regex(r"\s+".into()),
                    " ",
                )?
                .into(),
                Lowercase.into(),
            ])));
            t.with_pre_tokenizer(Some(PreTokenizers::new(vec![
                Split::new(
                    SplitPattern::Regex(CLIP_SPLIT.into()),
                    SplitDelimiterBehavior::Removed,
                    true,
                )?
                .into(),
                ByteLevel::new(false, true, true).into(),
            ])));
            t.with_decoder(Some(ByteLevelDecoder::default()));
            Ok(t)
        };
        let inner = built().map_err(|e| invalid(format!("building CLIP's tokenizer: {e}")))?;
        Self::finish(inner, specials, dir)
    }

    fn finish(mut inner: Tokenizer, specials: Specials, dir: &Path) -> Result<Self> {
        // The special tokens are matched whole, before BPE (as transformers adds them).
        let tokens: Vec<AddedToken> = [&specials.bos, &specials.eos, &specials.unk, &specials.pad]
            .iter()
            .map(|t| AddedToken::from(t.to_string(), true))
            .collect();
        inner.add_special_tokens(&tokens);
        let id = |t: &str| {
            inner.token_to_id(t).ok_or_else(|| {
                invalid(format!(
                    "{}: the special token {t:?} is not in the vocabulary",
                    dir.display()
                ))
            })
        };
        let (bos, eos, pad) = (id(&specials.bos)?, id(&specials.eos)?, id(&specials.pad)?);
        inner.with_post_processor(Some(
            RobertaProcessing::new((specials.eos.clone(), eos), (specials.bos.clone(), bos))
                .trim_offsets(false)
                .add_prefix_space(false),
        ));
        Ok(Self {
            inner,
            max_length: specials.max_length,
            bos,
            eos,
            pad,
        })
    }

    /// Tokens per prompt (77 for CLIP).
    pub fn max_length(&self) -> usize {
        self.max_length
    }

    /// The start, end and padding token ids.
    pub fn special_ids(&self) -> (u32, u32, u32) {
        (self.bos, self.eos, self.pad)
    }

    /// `prompt` as `max_length` ids: start, its tokens, end, then padding; a longer prompt keeps
    /// its first `max_length − 2` tokens (diffusers' `truncation=True`), and [`Tokens`] says
    /// what was cut.
    pub fn encode(&self, prompt: &str) -> Result<Tokens> {
        let enc = self
            .inner
            .encode(prompt, true)
            .map_err(|e| invalid(format!("tokenizing {prompt:?}: {e}")))?;
        let mut ids = enc.get_ids().to_vec();
        let untruncated_len = ids.len();
        let mut truncated = None;
        if ids.len() > self.max_length {
            let cut = &ids[self.max_length - 1..ids.len() - 1];
            truncated = Some(
                self.inner
                    .decode(cut, true)
                    .map_err(|e| invalid(format!("decoding the truncated tokens: {e}")))?
                    .replace("</w>", " ")
                    .trim()
                    .to_string(),
            );
            ids.truncate(self.max_length - 1);
            ids.push(self.eos);
        }
        ids.resize(self.max_length, self.pad);
        Ok(Tokens {
            ids,
            untruncated_len,
            truncated,
        })
    }
}

/// Special tokens and length from `tokenizer_config.json` / `special_tokens_map.json`.
struct Specials {
    bos: String,
    eos: String,
    unk: String,
    pad: String,
    max_length: usize,
}

impl Specials {
    fn read(dir: &Path) -> Result<Self> {
        let config = read_json(&dir.join("tokenizer_config.json"))?.unwrap_or(J::Null);
        let map = read_json(&dir.join("special_tokens_map.json"))?.unwrap_or(J::Null);
        let get = |key: &str, default: &str| {
            config
                .get(key)
                .and_then(token_text)
                .or_else(|| map.get(key).and_then(token_text))
                .unwrap_or_else(|| default.to_string())
        };
        let max_length = match config.get("model_max_length").and_then(J::as_u64) {
            // transformers writes a huge sentinel when a tokenizer has no length.
            Some(n) if (2..1 << 20).contains(&n) => n as usize,
            _ => 77,
        };
        Ok(Self {
            bos: get("bos_token", "<|startoftext|>"),
            eos: get("eos_token", "<|endoftext|>"),
            unk: get("unk_token", "<|endoftext|>"),
            pad: get("pad_token", "<|endoftext|>"),
            max_length,
        })
    }
}
