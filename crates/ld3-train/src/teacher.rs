//! Teacher pairs: seeded noise z and the teacher solver's output for it, stored so runs can
//! reuse and resume them.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use ld3_models::{Denoiser, DenoiserPredictor};
use ld3_solvers::schedule_file::write_atomic;
use ld3_solvers::steps::{Karras, StepSchedule};
use ld3_solvers::{
    rng, sample, Error, NoiseScheduleConfig, Result, Solver, SolverConfig, SolverName, Times,
    UniPcVariant,
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
    pub fn default_unipc_variant(model: &dyn Denoiser) -> UniPcVariant {
        match model.noise_schedule().config() {
            NoiseScheduleConfig::Edm { .. } => UniPcVariant::Bh1,
            _ => UniPcVariant::Bh2,
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

    /// The teacher's outputs for starts x_T = prior·z, `batch` samples at a time.
    pub fn solve(&self, model: &dyn Denoiser, z: &Tensor) -> Result<Tensor> {
        let (solver, steps) = self.solver.build_for_nfe(self.nfe)?;
        let t = Karras::default().times(model.noise_schedule(), steps)?;
        let times = Times::from_f64(&t, &t, z.device())?;
        solve_in_batches(model, solver.as_ref(), &times, z, 64)
    }
}

/// A solver's outputs for starts x_T = prior·z on `times`, `batch` samples per call (no graph).
pub fn solve_in_batches(
    model: &dyn Denoiser,
    solver: &dyn Solver,
    times: &Times,
    z: &Tensor,
    batch: usize,
) -> Result<Tensor> {
    let predictor = DenoiserPredictor::new(model);
    let prior = model.noise_schedule().prior_scale();
    let (total, batch) = (z.dim(0)?, batch.max(1));
    let mut outs = Vec::new();
    for start in (0..total).step_by(batch) {
        let len = batch.min(total - start);
        let x_t = (z.narrow(0, start, len)? * prior)?;
        outs.push(sample(solver, &predictor, &x_t, times, None)?.x);
    }
    Ok(Tensor::cat(&outs, 0)?)
}

/// Noise (the balls' centres) and teacher targets.
#[derive(Clone, Debug)]
pub struct TeacherPairs {
    /// Standard-normal z [M, ...].
    pub noise: Tensor,
    /// Teacher outputs [M, ...].
    pub target: Tensor,
}

/// What a stored set of pairs was made from; a stored set is reused only when all of it matches.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PairsMeta {
    /// The model (its `--model` spec or description).
    pub model: String,
    /// The teacher.
    pub teacher: TeacherConfig,
    /// Noise seed (sample b uses seed + b).
    pub seed: u64,
    /// Number of pairs.
    pub count: usize,
}

impl TeacherPairs {
    /// Draws `meta.count` noises from `meta.seed` and solves them with the teacher.
    pub fn generate(model: &dyn Denoiser, meta: &PairsMeta, dtype: DType) -> Result<Self> {
        let noise = rng::standard_normal(
            meta.seed,
            meta.count,
            model.sample_shape(),
            dtype,
            &Device::Cpu,
        )?;
        let target = meta.teacher.solve(model, &noise)?;
        Ok(Self { noise, target })
    }

    /// Loads pairs stored by [`TeacherPairs::save`] at `stem` (`stem.safetensors` + `stem.json`)
    /// if their metadata equals `meta`; generates and stores them otherwise.
    pub fn load_or_generate(
        model: &dyn Denoiser,
        meta: &PairsMeta,
        stem: &Path,
        dtype: DType,
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
                let mut t = candle_core::safetensors::load(&data, &Device::Cpu).map_err(|e| {
                    Error::Invalid(format!("{}: {e}; delete it to regenerate", data.display()))
                })?;
                let (Some(noise), Some(target)) = (t.remove("noise"), t.remove("target")) else {
                    return Err(Error::Invalid(format!(
                        "{} lacks `noise` or `target`; delete it to regenerate",
                        data.display()
                    )));
                };
                return Ok(Self {
                    noise: noise.to_dtype(dtype)?,
                    target: target.to_dtype(dtype)?,
                });
            }
        }
        let pairs = Self::generate(model, meta, dtype)?;
        pairs.save(meta, stem)?;
        Ok(pairs)
    }

    /// Stores the pairs (f64) and their metadata atomically.
    pub fn save(&self, meta: &PairsMeta, stem: &Path) -> Result<()> {
        let tensors = HashMap::from([
            ("noise".to_string(), self.noise.to_dtype(DType::F64)?),
            ("target".to_string(), self.target.to_dtype(DType::F64)?),
        ]);
        write_atomic(&stem.with_extension("safetensors"), |tmp| {
            Ok(candle_core::safetensors::save(&tensors, tmp)?)
        })?;
        let text = serde_json::to_string_pretty(meta).expect("metadata serialises");
        write_atomic(&stem.with_extension("json"), |tmp| {
            std::fs::write(tmp, text).map_err(|source| Error::Io {
                path: tmp.display().to_string(),
                cause: source,
            })
        })
    }

    /// Samples `start..start+len`.
    pub fn slice(&self, start: usize, len: usize) -> Result<Self> {
        Ok(Self {
            noise: self.noise.narrow(0, start, len)?,
            target: self.target.narrow(0, start, len)?,
        })
    }
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.display().to_string(),
        cause: source,
    })
}
