//! Teacher pairs: seeded noise z, its conditioning, and the teacher solver's output for it,
//! stored so runs can reuse and resume them.

use std::path::Path;

use candle_core::{DType, Tensor};
use ld3_models::{Conditioning, ConditioningKind, Denoiser, DenoiserPredictor};
use ld3_solvers::schedule_file::{write_atomic, write_text_atomic};
use ld3_solvers::steps::{Karras, StepSchedule};
use ld3_solvers::{
    rng, sample, Error, NoiseScheduleConfig, Result, Solver, SolverConfig, SolverName,
    SolverVariant, Times,
};
use serde::{Deserialize, Serialize};

/// The teacher: a solver at a high NFE on Karras ρ = 7 steps in σ/α.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TeacherConfig {
    /// Solver, order, variant.
    #[serde(flatten)]
    pub solver: SolverConfig,
    /// Its NFE (LD3: 20).
    pub nfe: usize,
}

impl TeacherConfig {
    /// A checked teacher.
    pub fn new(solver: SolverConfig, nfe: usize) -> Result<Self> {
        solver.build_for_nfe(nfe)?;
        Ok(Self { solver, nfe })
    }

    /// UniPC's variant for `model`'s teacher: bh1 for EDM schedules, bh2 for VP ones (as the
    /// official code's configurations).
    pub fn default_unipc_variant(model: &dyn Denoiser) -> SolverVariant {
        match model.noise_schedule().config() {
            NoiseScheduleConfig::Edm { .. } => SolverVariant::Bh1,
            _ => SolverVariant::Bh2,
        }
    }

    /// The default teacher for `model`: UniPC-3 ([`TeacherConfig::default_unipc_variant`]) at
    /// `nfe` (LD3: 20).
    pub fn default_for(model: &dyn Denoiser, nfe: usize) -> Result<Self> {
        let variant = Self::default_unipc_variant(model);
        Self::new(
            SolverConfig::new(SolverName::UniPc, Some(3), Some(variant))?,
            nfe,
        )
    }

    /// The teacher's outputs for starts x_T = prior·z conditioned on `cond`, 64 samples at a
    /// time, calling `progress(done, total)` after every batch.
    pub fn solve(
        &self,
        model: &dyn Denoiser,
        z: &Tensor,
        cond: &Conditioning,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Tensor> {
        let (solver, steps) = self.solver.build_for_nfe(self.nfe)?;
        let t = Karras::default().times(model.noise_schedule(), steps)?;
        let times = Times::from_f64(&t, &t, model.device())?;
        solve_in_batches(model, solver.as_ref(), &times, z, cond, 64, progress)
    }
}

/// A solver's outputs for starts x_T = prior·z (each sample conditioned on its slice of `cond`)
/// on `times`, `batch` samples per call (no graph), on the model's device.
pub fn solve_in_batches(
    model: &dyn Denoiser,
    solver: &dyn Solver,
    times: &Times,
    z: &Tensor,
    cond: &Conditioning,
    batch: usize,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Tensor> {
    let prior = model.noise_schedule().prior_scale();
    let (total, batch) = (z.dim(0)?, batch.max(1));
    cond.check_for(&model.conditioning(), total)?;
    let mut outs = Vec::new();
    for start in (0..total).step_by(batch) {
        let len = batch.min(total - start);
        let predictor = DenoiserPredictor::with_conditioning(model, cond.narrow(start, len)?);
        let x_t = (z.narrow(0, start, len)?.to_device(model.device())? * prior)?;
        outs.push(sample(solver, &predictor, &x_t, times, None)?.x);
        progress(start + len, total);
    }
    Ok(Tensor::cat(&outs, 0)?)
}

/// Where each teacher pair's conditioning comes from (class labels, prompts, ...).
pub trait Conditioner: Send + Sync {
    /// What it draws, stored with the pairs: pairs (and runs) made from another description are
    /// not reused.
    fn describe(&self) -> String;
    /// The conditioning of `count` pairs drawn with `seed` (pair b uses `seed + b`).
    fn draw(&self, seed: u64, count: usize) -> Result<Conditioning>;
    /// Each pair's conditioning in words (its prompt), stored beside the pairs
    /// (`STEM.prompts.json`) for people to read; `None` when there is nothing to say.
    fn pair_labels(&self, seed: u64, count: usize) -> Option<Vec<String>> {
        let _ = (seed, count);
        None
    }
}

/// Class labels uniform over `classes`, pair b's label from seed + b.
#[derive(Clone, Debug)]
pub struct UniformClasses {
    /// Number of classes.
    pub classes: usize,
    /// Where the labels are made.
    pub device: candle_core::Device,
}

impl Conditioner for UniformClasses {
    fn describe(&self) -> String {
        format!("class labels uniform over 0..{}", self.classes - 1)
    }
    fn draw(&self, seed: u64, count: usize) -> Result<Conditioning> {
        let labels: Vec<u32> = (0..count)
            .map(|b| {
                (rng::SplitMix64::new(seed.wrapping_add(b as u64) ^ 0x0c1a_55e5).next_u64()
                    % self.classes as u64) as u32
            })
            .collect();
        Conditioning::classes(&labels, &self.device)
    }
}

/// Text prompts for a text-to-image model: pair b gets prompt (seed + b) mod P of the list, and
/// every pair the one negative prompt guidance steers away from. The embeddings are computed
/// once, when it is made (the model's [`Denoiser::encode_text`]), and stored with the pairs.
pub struct PromptConditioner {
    prompts: Vec<String>,
    negative: String,
    embeddings: Tensor,
    negative_embedding: Tensor,
}

impl PromptConditioner {
    /// The prompts' embeddings under `model`'s text encoder.
    pub fn new(model: &dyn Denoiser, prompts: Vec<String>, negative: String) -> Result<Self> {
        if prompts.is_empty() {
            return Err(Error::Invalid(
                "training a text-to-image model needs prompts".into(),
            ));
        }
        let embeddings = model.encode_text(&prompts)?;
        let negative_embedding = model.encode_text(std::slice::from_ref(&negative))?;
        Ok(Self {
            prompts,
            negative,
            embeddings,
            negative_embedding,
        })
    }

    /// The prompt of pair b drawn with `seed`.
    pub fn prompt_for(&self, seed: u64, b: usize) -> &str {
        &self.prompts[self.index(seed, b)]
    }

    fn index(&self, seed: u64, b: usize) -> usize {
        (seed.wrapping_add(b as u64) % self.prompts.len() as u64) as usize
    }
}

impl Conditioner for PromptConditioner {
    fn describe(&self) -> String {
        // FNV-1a over the prompts: a stable fingerprint of the list, stored with the pairs.
        let mut h = 0xcbf2_9ce4_8422_2325u64;
        for b in self.prompts.join("\n").bytes() {
            h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
        }
        format!(
            "{} prompts (list fingerprint {h:016x}; pair b: prompt (seed + b) mod {}), negative \
             prompt {:?}",
            self.prompts.len(),
            self.prompts.len(),
            self.negative
        )
    }
    fn pair_labels(&self, seed: u64, count: usize) -> Option<Vec<String>> {
        Some(
            (0..count)
                .map(|b| self.prompt_for(seed, b).to_string())
                .collect(),
        )
    }
    fn draw(&self, seed: u64, count: usize) -> Result<Conditioning> {
        let idx: Vec<u32> = (0..count).map(|b| self.index(seed, b) as u32).collect();
        let idx = Tensor::new(idx.as_slice(), self.embeddings.device())?;
        let embeddings = self.embeddings.index_select(&idx, 0)?;
        let (_, l, d) = self.negative_embedding.dims3()?;
        let negative = self
            .negative_embedding
            .broadcast_as((count, l, d))?
            .contiguous()?;
        Ok(Conditioning::Text {
            embeddings,
            negative: Some(negative),
        })
    }
}

/// The default conditioner of `model`: none for an unconditional model, [`UniformClasses`] for
/// a class-conditional one; text models need one given (their prompts).
pub fn default_conditioner(model: &dyn Denoiser) -> Result<Option<Box<dyn Conditioner>>> {
    Ok(match model.conditioning() {
        ConditioningKind::None => None,
        ConditioningKind::Class { classes } => Some(Box::new(UniformClasses {
            classes,
            device: model.device().clone(),
        })),
        ConditioningKind::Text { .. } => {
            return Err(Error::Invalid(
                "this model is conditioned on text: training needs its prompts (a conditioner \
                 that turns prompts into embeddings)"
                    .into(),
            ))
        }
    })
}

/// Noise (the balls' centres), conditioning and teacher targets.
#[derive(Clone, Debug)]
pub struct TeacherPairs {
    /// Standard-normal z [M, ...].
    pub noise: Tensor,
    /// Teacher outputs [M, ...] (the solver's final state; undecoded).
    pub target: Tensor,
    /// Each pair's conditioning.
    pub cond: Conditioning,
}

/// What a stored set of pairs was made from; a stored set is reused only when all of it matches.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PairsMeta {
    /// The model (its `--model` spec or description).
    pub model: String,
    /// The teacher.
    pub teacher: TeacherConfig,
    /// The run seed: pair b's noise uses per-sample seed `rng::set_seed(seed) + b`, its
    /// conditioning `seed + b`.
    pub seed: u64,
    /// Number of pairs.
    pub count: usize,
    /// Where the conditioning came from ([`Conditioner::describe`]; runs from before conditioning
    /// were unconditional).
    #[serde(default = "unconditional")]
    pub conditioning: String,
}

/// [`PairsMeta::conditioning`] of unconditional pairs.
pub fn unconditional() -> String {
    "none".into()
}

impl TeacherPairs {
    /// Draws `meta.count` noises (the set of run seed `meta.seed`: [`rng::set_seed`], so runs
    /// with different seeds train on disjoint noise) and conditionings (from `conditioner`, with
    /// `meta.seed`), and solves them with the teacher.
    pub fn generate(
        model: &dyn Denoiser,
        meta: &PairsMeta,
        conditioner: Option<&dyn Conditioner>,
        dtype: DType,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Self> {
        let noise = rng::standard_normal(
            rng::set_seed(meta.seed),
            meta.count,
            model.sample_shape(),
            dtype,
            model.device(),
        )?;
        let cond = match conditioner {
            Some(c) => c.draw(meta.seed, meta.count)?,
            None => Conditioning::None,
        };
        let target = meta.teacher.solve(model, &noise, &cond, progress)?;
        Ok(Self {
            noise,
            target,
            cond,
        })
    }

    /// Loads pairs stored by [`TeacherPairs::save`] at `stem` (`stem.safetensors` + `stem.json`)
    /// if their metadata equals `meta`; generates and stores them otherwise.
    pub fn load_or_generate(
        model: &dyn Denoiser,
        meta: &PairsMeta,
        conditioner: Option<&dyn Conditioner>,
        stem: &Path,
        dtype: DType,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Self> {
        let (data, json) = (
            stem.with_extension("safetensors"),
            stem.with_extension("json"),
        );
        if data.exists() && json.exists() {
            let stored: PairsMeta =
                serde_json::from_str(&read(&json)?).map_err(|source| Error::Json {
                    what: format!("{} is not teacher-pair metadata", json.display()),
                    cause: source,
                })?;
            if &stored == meta {
                let device = model.device();
                let mut t = candle_core::safetensors::load(&data, device).map_err(|e| {
                    Error::Invalid(format!("{}: {e}; delete it to regenerate", data.display()))
                })?;
                let (Some(noise), Some(target)) = (t.remove("noise"), t.remove("target")) else {
                    return Err(Error::Invalid(format!(
                        "{} lacks `noise` or `target`; delete it to regenerate",
                        data.display()
                    )));
                };
                let cond = Conditioning::from_tensors(&mut t, device)?;
                cond.check_for(&model.conditioning(), noise.dim(0)?)
                    .map_err(|e| Error::Invalid(format!("{}: {e}", data.display())))?;
                return Ok(Self {
                    noise: noise.to_dtype(dtype)?,
                    target: target.to_dtype(dtype)?,
                    cond,
                });
            }
        }
        let pairs = Self::generate(model, meta, conditioner, dtype, progress)?;
        pairs.save(meta, stem)?;
        if let Some(labels) = conditioner.and_then(|c| c.pair_labels(meta.seed, meta.count)) {
            let text = serde_json::to_string_pretty(&labels).expect("strings serialise");
            write_text_atomic(&stem.with_extension("prompts.json"), &text)?;
        }
        Ok(pairs)
    }

    /// Stores the pairs (f64) and their metadata atomically.
    pub fn save(&self, meta: &PairsMeta, stem: &Path) -> Result<()> {
        let mut tensors = self.cond.to_tensors()?;
        tensors.insert("noise".to_string(), self.noise.to_dtype(DType::F64)?);
        tensors.insert("target".to_string(), self.target.to_dtype(DType::F64)?);
        write_atomic(&stem.with_extension("safetensors"), |tmp| {
            Ok(candle_core::safetensors::save(&tensors, tmp)?)
        })?;
        let text = serde_json::to_string_pretty(meta).expect("metadata serialises");
        write_text_atomic(&stem.with_extension("json"), &text)
    }

    /// Samples `start..start+len`.
    pub fn slice(&self, start: usize, len: usize) -> Result<Self> {
        Ok(Self {
            noise: self.noise.narrow(0, start, len)?,
            target: self.target.narrow(0, start, len)?,
            cond: self.cond.narrow(start, len)?,
        })
    }
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.display().to_string(),
        cause: source,
    })
}
