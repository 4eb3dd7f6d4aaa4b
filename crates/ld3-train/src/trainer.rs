//! The LD3 training loop (`../shared/docs/ld3-reference.md` §5): θ-only rounds, then θ+ξ rounds;
//! soft teacher forcing with projected, greedily accepted starts; validation after every
//! iteration; patience, reload of the best, learning-rate decay and early stop; a run directory
//! with teacher pairs, a checkpoint after every round and a JSON-lines log, so `resume` loses at
//! most the current round.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use ld3_models::{Denoiser, DenoiserPredictor};
use ld3_solvers::noise::NoiseScheduleConfig;
use ld3_solvers::rng::SplitMix64;
use ld3_solvers::schedule_file::write_atomic;
use ld3_solvers::steps::{
    Karras, KarrasInTime, LogSnrUniform, Preset, StepSchedule, TimePolynomial, TimeUniform,
};
use ld3_solvers::{Error, Result, ScheduleFile, SolverConfig, SolverName};
use serde::{Deserialize, Serialize};

use crate::ball;
use crate::grad::{Backprop, Problem};
use crate::optim::{clip_grad_norm, RmsProp, Sgd};
use crate::teacher::{PairsMeta, TeacherConfig, TeacherPairs};
use crate::{Discretization, Distance, TimeMode, WindowRule, L1, L2};

/// Where θ starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Init {
    /// Two runs, from uniform θ and from the best hand-made schedule, on the same teacher pairs;
    /// the one with the lower validation statistic over all teacher pairs at their own noise
    /// wins. Neither start is better on every setting
    /// (measured on the GMM fixtures: see docs/ld3.md), and training is cheap next to a bad
    /// schedule.
    Both,
    /// The hand-made schedule with the lowest validation loss (kept if nothing beats it).
    BestHandMade,
    /// Uniform θ (logSNR-uniform in λ-mode, time-uniform in t-mode), as the official code.
    Uniform,
}

/// The distance to the teacher.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Loss {
    /// Mean squared error per sample.
    L2,
    /// Mean absolute error per sample.
    L1,
    /// LPIPS(VGG16) (the paper's loss): the network comes with [`Trainer::with_distance`].
    LpipsVgg,
    /// LPIPS(AlexNet), likewise.
    LpipsAlex,
}

impl Loss {
    /// The [`Distance::name`] this loss expects.
    pub fn name(self) -> &'static str {
        match self {
            Self::L2 => "l2",
            Self::L1 => "l1",
            Self::LpipsVgg => "lpips-vgg",
            Self::LpipsAlex => "lpips-alex",
        }
    }
}

/// How the per-sample validation losses are summarised into the number that picks the best.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ValidationStat {
    /// The mean (the default, as the official code): with the L2 loss it is the squared RMS
    /// error that held-out quality is judged by (measured on 1000 fresh noises: docs/ld3.md).
    Mean,
    /// The median.
    Median,
    /// The mean of the best 90 % of samples: far lower medians on mixtures, but blind to the
    /// few samples a schedule sends to another mode, so a worse RMS error on fresh noise.
    Trimmed,
}

impl ValidationStat {
    /// Summarises per-sample losses.
    pub fn summarise(self, losses: &[f64]) -> f64 {
        match self {
            Self::Mean => mean(losses),
            Self::Median => median(losses),
            Self::Trimmed => trimmed_mean(losses, 0.1),
        }
    }
}

/// Which teacher pairs train θ, ξ (and the starts) and which pick the best parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PairUse {
    /// Train on the N_train pairs and validate on the N_valid others (the paper and the
    /// official code).
    Split,
    /// Train on all N_train + N_valid pairs and validate on all of them (the default). The
    /// parameters are N + 1 logits and N − 1 shifts, so fitting them to all pairs costs little in
    /// overfitting and gains much from seeing twice the samples that switch mixture
    /// components: lower RMS error on fresh noise on most measured mixture settings
    /// (docs/ld3.md), for 2–3× the training time (twice the iterations per round, each
    /// validating twice the pairs). On a 10 + 10-pair image run the split did better.
    Pooled,
}

impl PairUse {
    fn split() -> Self {
        Self::Split
    }
}

/// Every setting of a run (the paper's defaults unless set, except where docs/ld3.md says
/// why: two starts, pooled pairs).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Student solver.
    pub solver: SolverConfig,
    /// Student NFE.
    pub nfe: usize,
    /// θ layout (default: λ for EDM schedules, t for VP).
    pub mode: Option<TimeMode>,
    /// How ξ's window is measured.
    pub window: WindowRule,
    /// Ball radius r in z-space (default 0.001·d/N²; 0 = hard objective).
    pub radius: Option<f64>,
    /// Distance.
    pub loss: Loss,
    /// Training pairs (with [`PairUse::Pooled`], training and validation use both counts).
    pub train_samples: usize,
    /// Validation pairs.
    pub valid_samples: usize,
    /// Held-out pairs for the final table.
    pub heldout_samples: usize,
    /// Training batch size.
    pub batch_size: usize,
    /// Teacher.
    pub teacher: TeacherConfig,
    /// Seed of noise and shuffling.
    pub seed: u64,
    /// RMSprop learning rate on θ.
    pub lr_theta: f64,
    /// RMSprop momentum.
    pub momentum: f64,
    /// SGD learning rate on ξ (default 0.1/N in λ-mode, 0.001/N in t-mode).
    pub lr_xi: Option<f64>,
    /// SGD learning rate on the starts z' (default 12/N).
    pub shift_lr: Option<f64>,
    /// Rounds training θ only.
    pub rounds_theta: usize,
    /// Rounds training θ and ξ.
    pub rounds_joint: usize,
    /// Validations without improvement before reloading the best and decaying.
    pub patience: usize,
    /// Learning-rate decay factor.
    pub decay: f64,
    /// Floor of the θ learning rate.
    pub min_lr_theta: f64,
    /// Floor of the ξ learning rate.
    pub min_lr_xi: f64,
    /// Stop after this many patience events with ξ's rate at its floor.
    pub xi_floor_patience: usize,
    /// Where θ starts.
    pub init: Init,
    /// Full graph or per-step recomputation.
    pub recompute: bool,
    /// Summary of the validation losses.
    pub validation: ValidationStat,
    /// Which pairs train and which validate (runs from before this setting were split).
    #[serde(default = "PairUse::split")]
    pub pairs: PairUse,
}

/// Models with at least this many parameters train with recomputation unless told otherwise.
pub const RECOMPUTE_FROM_PARAMETERS: usize = 10_000_000;

/// Whether `model` is large enough that keeping the whole graph of an LD3 solve would dominate
/// memory (the default of `--recompute auto`).
pub fn recompute_by_default(model: &dyn Denoiser) -> bool {
    model.parameter_count() >= RECOMPUTE_FROM_PARAMETERS
}

impl TrainConfig {
    /// The defaults for `solver` at `nfe` (the paper's, but for `init` and `pairs`).
    pub fn new(solver: SolverConfig, nfe: usize, teacher: TeacherConfig) -> Self {
        Self {
            solver,
            nfe,
            mode: None,
            window: WindowRule::StepSize,
            radius: None,
            loss: Loss::L2,
            train_samples: 50,
            valid_samples: 50,
            heldout_samples: 50,
            batch_size: 2,
            teacher,
            seed: 0,
            lr_theta: 0.005,
            momentum: 0.9,
            lr_xi: None,
            shift_lr: None,
            rounds_theta: 2,
            rounds_joint: 5,
            patience: 5,
            decay: 0.8,
            min_lr_theta: 5e-5,
            min_lr_xi: 1e-6,
            xi_floor_patience: 5,
            init: Init::Both,
            recompute: false,
            validation: ValidationStat::Mean,
            pairs: PairUse::Pooled,
        }
    }

    fn check(&self) -> Result<()> {
        self.solver.build_for_nfe(self.nfe)?;
        if let Some(r) = self.radius {
            if !(r >= 0.0 && r.is_finite()) {
                return Err(Error::Invalid(format!(
                    "--radius must be ≥ 0 (0 = hard objective), got {r}"
                )));
            }
        }
        for (name, v) in [
            ("--train-samples", self.train_samples),
            ("--valid-samples", self.valid_samples),
            ("--batch-size", self.batch_size),
        ] {
            if v == 0 {
                return Err(Error::Invalid(format!("{name} must be at least 1")));
            }
        }
        if !(self.decay > 0.0 && self.decay <= 1.0) {
            return Err(Error::Invalid(format!(
                "the decay factor must lie in (0, 1], got {}",
                self.decay
            )));
        }
        Ok(())
    }
}

/// Progress reported to an observer (progress bars).
#[derive(Clone, Debug)]
pub enum Event {
    /// Teacher pairs are being made or loaded.
    Teacher { count: usize },
    /// A round starts.
    Round {
        round: usize,
        rounds: usize,
        joint: bool,
        iterations: usize,
    },
    /// A training iteration ended with its batch loss and the best validation loss.
    Iteration {
        round: usize,
        iteration: usize,
        loss: f64,
        best: f64,
    },
    /// Something the user should know (NaN skipped, learning rates decayed, ...).
    Note(String),
}

/// One row of the final table.
#[derive(Clone, Debug, Serialize)]
pub struct TableRow {
    /// Schedule name (`ld3` for the learned one).
    pub schedule: String,
    /// Mean held-out distance to the teacher.
    pub mean: f64,
    /// Median per-sample held-out distance.
    pub median: f64,
}

/// What a finished (or paused) run returns.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// The best schedule by validation loss.
    pub schedule: ScheduleFile,
    /// Held-out distances of the learned and the hand-made schedules.
    pub table: Vec<TableRow>,
    /// Whether all rounds (or the early stop) are done.
    pub finished: bool,
    /// The held-out samples: `teacher` first, then `ld3` and each hand-made schedule in the
    /// order of [`Outcome::table`], each [M, ...shape] from the same noise.
    pub heldout_samples: Vec<(String, Tensor)>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Best {
    theta: Vec<f64>,
    xi: Vec<f64>,
    loss: f64,
}

/// Everything needed to continue a run after a round.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Checkpoint {
    config: TrainConfig,
    model: String,
    round: usize,
    iteration: usize,
    theta: Vec<f64>,
    xi: Vec<f64>,
    opt_theta: RmsProp,
    lr_xi: f64,
    shift_lr: f64,
    best: Best,
    initial: (String, f64),
    counter: usize,
    xi_floor_hits: usize,
    stopped: bool,
}

/// A training run over one model.
pub struct Trainer<'a> {
    model: &'a dyn Denoiser,
    model_name: String,
    config: TrainConfig,
    run_dir: PathBuf,
    teacher_dir: PathBuf,
    observer: Box<dyn FnMut(&Event) + 'a>,
    distance: Option<std::sync::Arc<dyn Distance>>,
}

/// The hand-made schedules a learned one is compared with (and may start from).
pub fn hand_made(solver: SolverName) -> Vec<Box<dyn StepSchedule>> {
    vec![
        Box::new(TimeUniform),
        Box::new(TimePolynomial { rho: 2.0 }),
        Box::new(LogSnrUniform),
        Box::new(Karras::default()),
        Box::new(KarrasInTime { rho: 7.0 }),
        Box::new(if solver == SolverName::Ipndm {
            Preset::GitsIpndm
        } else {
            Preset::GitsDpmSolver
        }),
    ]
}

/// "field: stored there, given now" for every setting (but recomputation) that differs.
fn config_differences(stored: &TrainConfig, now: &TrainConfig) -> Vec<String> {
    let as_map = |c: &TrainConfig| match serde_json::to_value(TrainConfig {
        recompute: false,
        ..c.clone()
    }) {
        Ok(serde_json::Value::Object(m)) => m,
        _ => serde_json::Map::new(),
    };
    let (a, b) = (as_map(stored), as_map(now));
    a.iter()
        .filter(|(k, v)| b.get(*k) != Some(*v))
        .map(|(k, v)| {
            let now = b.get(k).map_or("—".to_string(), |v| v.to_string());
            format!("{k}: {v} there, {now} now")
        })
        .collect()
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

/// The mean without the largest `fraction` of the values.
fn trimmed_mean(v: &[f64], fraction: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let keep = ((s.len() as f64) * (1.0 - fraction)).ceil().max(1.0) as usize;
    mean(&s[..keep.min(s.len())])
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        0.5 * (s[n / 2 - 1] + s[n / 2])
    }
}

/// Losses of candidate starts; where the model returned NaN the candidates are rejected.
fn reject_non_finite(losses: Result<Vec<f64>>, count: usize) -> Result<Vec<f64>> {
    match losses {
        Err(Error::NonFinite { .. }) => Ok(vec![f64::INFINITY; count]),
        other => other,
    }
}

fn vec_tensor(v: &[f64]) -> Result<Tensor> {
    Ok(Tensor::new(v, &Device::Cpu)?)
}

impl<'a> Trainer<'a> {
    /// A run of `config` on `model` (named `model_name` in files) in `run_dir`.
    pub fn new(
        model: &'a dyn Denoiser,
        model_name: impl Into<String>,
        config: TrainConfig,
        run_dir: impl Into<PathBuf>,
    ) -> Result<Self> {
        config.check()?;
        let run_dir: PathBuf = run_dir.into();
        Ok(Self {
            model,
            model_name: model_name.into(),
            config,
            teacher_dir: run_dir.clone(),
            run_dir,
            observer: Box::new(|_| {}),
            distance: None,
        })
    }

    /// The distance to use for the LPIPS losses (or to replace the built-in L2/L1): its
    /// [`Distance::name`] must be the configured loss's.
    pub fn with_distance(mut self, distance: std::sync::Arc<dyn Distance>) -> Self {
        self.distance = Some(distance);
        self
    }

    /// Reports progress to `observer`.
    pub fn with_observer(mut self, observer: impl FnMut(&Event) + 'a) -> Self {
        self.observer = Box::new(observer);
        self
    }

    fn mode(&self) -> TimeMode {
        self.config
            .mode
            .unwrap_or(match self.model.noise_schedule().config() {
                NoiseScheduleConfig::Edm { .. } => TimeMode::Lambda,
                _ => TimeMode::Time,
            })
    }

    fn distance(&self) -> Result<std::sync::Arc<dyn Distance>> {
        let name = self.config.loss.name();
        match (&self.distance, self.config.loss) {
            (Some(d), _) if d.name() == name => Ok(d.clone()),
            (Some(d), _) => Err(Error::Invalid(format!(
                "the distance given to the trainer is {}, but the configured loss is {name}",
                d.name()
            ))),
            (None, Loss::L2) => Ok(std::sync::Arc::new(L2)),
            (None, Loss::L1) => Ok(std::sync::Arc::new(L1)),
            (None, Loss::LpipsVgg | Loss::LpipsAlex) => Err(Error::Invalid(
                "the LPIPS loss needs its network: give it with Trainer::with_distance \
                 (ld3 train --loss lpips loads it)"
                    .into(),
            )),
        }
    }

    fn log(&self, record: serde_json::Value) -> Result<()> {
        let path = self.run_dir.join("log.jsonl");
        let io = |source| Error::Io {
            path: path.display().to_string(),
            cause: source,
        };
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io)?;
        writeln!(f, "{record}").map_err(io)
    }

    /// Runs (or, with `resume`, continues) training; `max_rounds` stops after that many rounds
    /// in this call (the checkpoint allows resuming later).
    pub fn run(&mut self, resume: bool, max_rounds: Option<usize>) -> Result<Outcome> {
        if self.config.init != Init::Both {
            return self.run_one(resume, max_rounds);
        }
        let mut outcomes = Vec::new();
        for (init, sub) in [
            (Init::Uniform, "from-uniform"),
            (Init::BestHandMade, "from-hand-made"),
        ] {
            (self.observer)(&Event::Note(format!("training from {sub}")));
            let dir = self.run_dir.join(sub);
            let config = TrainConfig {
                init,
                ..self.config.clone()
            };
            let observer = &mut self.observer;
            let mut part = Trainer {
                model: self.model,
                model_name: self.model_name.clone(),
                config,
                run_dir: dir.clone(),
                teacher_dir: self.run_dir.clone(),
                observer: Box::new(|e: &Event| observer(e)),
                distance: self.distance.clone(),
            };
            // A resumed run may not have reached the second start yet.
            let resume_this = dir.join("checkpoint.json").exists();
            if resume
                && !resume_this
                && !self
                    .run_dir
                    .join("from-uniform")
                    .join("checkpoint.json")
                    .exists()
            {
                return Err(Error::Invalid(format!(
                    "--resume: {} holds no run to resume (no checkpoint.json); start without --resume",
                    self.run_dir.display()
                )));
            }
            let outcome = part.run_one(resume_this, max_rounds)?;
            let unfinished = !outcome.finished;
            outcomes.push(outcome);
            if unfinished {
                // Stopped early (max_rounds): resume later continues here.
                return Ok(Outcome {
                    finished: false,
                    ..outcomes.pop().expect("just pushed")
                });
            }
        }
        let pairs_loss = |o: &Outcome| {
            o.schedule.provenance["pairs_loss_at_noise"]
                .as_f64()
                .unwrap_or(f64::INFINITY)
        };
        let best = outcomes
            .into_iter()
            .min_by(|a, b| pairs_loss(a).total_cmp(&pairs_loss(b)))
            .expect("two runs");
        best.schedule.write(&self.run_dir.join("best.json"))?;
        Ok(best)
    }

    fn run_one(&mut self, resume: bool, max_rounds: Option<usize>) -> Result<Outcome> {
        let cp_path = self.run_dir.join("checkpoint.json");
        if resume && !cp_path.exists() {
            return Err(Error::Invalid(format!(
                "--resume: {} holds no run to resume (no checkpoint.json); start without --resume",
                self.run_dir.display()
            )));
        }
        // A run directory that already holds this run (same settings, checked below) is
        // continued — or, when finished, only re-reported; nothing in it is ever overwritten.
        let resume = resume || cp_path.exists();
        // Check a stored run's settings before anything in its directory is touched.
        let stored = if resume {
            let cp: Checkpoint =
                serde_json::from_str(&std::fs::read_to_string(&cp_path).map_err(|source| {
                    Error::Io {
                        path: cp_path.display().to_string(),
                        cause: source,
                    }
                })?)
                .map_err(|source| Error::Json {
                    what: format!("{} is not an ld3 checkpoint", cp_path.display()),
                    cause: source,
                })?;
            // Recomputation changes memory, not results: a run may continue with or without it.
            let same = TrainConfig {
                recompute: self.config.recompute,
                ..cp.config.clone()
            } == self.config;
            if !same || cp.model != self.model_name {
                let mut differ = config_differences(&cp.config, &self.config);
                if cp.model != self.model_name {
                    differ.insert(
                        0,
                        format!("model: {} there, {} now", cp.model, self.model_name),
                    );
                }
                return Err(Error::Invalid(format!(
                    "{} already holds a run with other settings or another model ({}); continue it \
                     with its options (the flag of the same name), or choose another run directory",
                    self.run_dir.display(),
                    differ.join("; ")
                )));
            }
            Some(cp)
        } else {
            None
        };
        std::fs::create_dir_all(&self.run_dir).map_err(|source| Error::Io {
            path: self.run_dir.display().to_string(),
            cause: source,
        })?;
        let c = self.config.clone();
        let (solver, steps) = c.solver.build_for_nfe(c.nfe)?;
        let schedule = self.model.noise_schedule();
        let disc = Discretization {
            window: c.window,
            ..Discretization::new(self.mode(), steps)?
        };
        let dim: usize = self.model.sample_shape().iter().product();
        let radius = c.radius.unwrap_or(ball::default_radius(dim, steps));
        let (n_tr, n_va) = (c.train_samples, c.valid_samples);

        (self.observer)(&Event::Teacher {
            count: n_tr + n_va + c.heldout_samples,
        });
        let meta = PairsMeta {
            model: self.model_name.clone(),
            teacher: c.teacher.clone(),
            seed: c.seed,
            count: n_tr + n_va,
        };
        let pairs = TeacherPairs::load_or_generate(
            self.model,
            &meta,
            &self.teacher_dir.join("teacher"),
            DType::F64,
        )?;
        let held_meta = PairsMeta {
            seed: c.seed.wrapping_add(1 << 32),
            count: c.heldout_samples.max(1),
            ..meta
        };
        let heldout = TeacherPairs::load_or_generate(
            self.model,
            &held_meta,
            &self.teacher_dir.join("heldout"),
            DType::F64,
        )?;
        let (train, valid) = match c.pairs {
            PairUse::Split => (pairs.slice(0, n_tr)?, pairs.slice(n_tr, n_va)?),
            PairUse::Pooled => (pairs.slice(0, n_tr + n_va)?, pairs.slice(0, n_tr + n_va)?),
        };
        let (n_tr, n_va) = (train.noise.dims()[0], valid.noise.dims()[0]);

        let predictor = DenoiserPredictor::new(self.model);
        let distance = self.distance()?;
        let problem = Problem {
            solver: solver.as_ref(),
            model: &predictor,
            discretization: &disc,
            distance: distance.as_ref(),
        };
        let backprop = if c.recompute {
            Backprop::Recompute
        } else {
            Backprop::FullGraph
        };
        let valid_loss = |theta: &[f64], xi: &[f64], starts: &Tensor| -> Result<f64> {
            match problem.losses(&vec_tensor(theta)?, &vec_tensor(xi)?, starts, &valid.target) {
                Ok(l) => Ok(c.validation.summarise(&l)),
                // A schedule on which the model returns NaN is never the best one.
                Err(Error::NonFinite { .. }) => Ok(f64::INFINITY),
                Err(e) => Err(e),
            }
        };

        let starts_path = self.run_dir.join("starts.safetensors");
        let (mut cp, mut train_starts, mut valid_starts) = if let Some(cp) = stored {
            let mut s = candle_core::safetensors::load(&starts_path, &Device::Cpu)
                .map_err(|e| Error::Invalid(format!("{}: {e}", starts_path.display())))?;
            let (Some(tr), Some(va)) = (s.remove("train"), s.remove("valid")) else {
                return Err(Error::Invalid(format!(
                    "{} lacks `train` or `valid`",
                    starts_path.display()
                )));
            };
            (cp, tr, va)
        } else {
            // Initial θ: the best hand-made schedule on the validation set, or uniform.
            let zeros = vec![0.0; steps + 1];
            let (init_name, theta, loss) = match c.init {
                Init::Uniform | Init::Both => {
                    let theta = vec![1.0; steps + 1];
                    let loss = valid_loss(&theta, &zeros, &valid.noise)?;
                    ("uniform".to_string(), theta, loss)
                }
                Init::BestHandMade => {
                    let mut best: Option<(f64, String, Vec<f64>)> = None;
                    for rule in hand_made(c.solver.solver) {
                        let theta = disc.fit(schedule, &rule.times(schedule, steps)?)?;
                        let loss = valid_loss(&theta, &zeros, &valid.noise)?;
                        if best.as_ref().is_none_or(|b| loss < b.0) {
                            best = Some((loss, rule.name(), theta));
                        }
                    }
                    let (loss, name, theta) = best.expect("at least one hand-made schedule");
                    (name, theta, loss)
                }
            };
            let cp = Checkpoint {
                config: c.clone(),
                model: self.model_name.clone(),
                round: 0,
                iteration: 0,
                opt_theta: RmsProp::new(steps + 1, c.lr_theta, c.momentum),
                lr_xi: c.lr_xi.unwrap_or(
                    match disc.mode {
                        TimeMode::Lambda => 0.1,
                        TimeMode::Time => 0.001,
                    } / steps as f64,
                ),
                shift_lr: c.shift_lr.unwrap_or(12.0 / steps as f64),
                best: Best {
                    theta: theta.clone(),
                    xi: zeros.clone(),
                    loss,
                },
                initial: (init_name.clone(), loss),
                theta,
                xi: zeros,
                counter: 0,
                xi_floor_hits: 0,
                stopped: false,
            };
            self.log(serde_json::json!({"event": "init", "schedule": init_name, "valid_loss": loss, "radius": radius}))?;
            (cp, train.noise.clone(), valid.noise.clone())
        };

        let rounds = c.rounds_theta + c.rounds_joint;
        let mut done_now = 0;
        while cp.round < rounds && !cp.stopped && max_rounds.is_none_or(|m| done_now < m) {
            let round = cp.round;
            let joint = round >= c.rounds_theta;
            if round > 0 {
                cp.theta = cp.best.theta.clone();
                cp.xi = cp.best.xi.clone();
                cp.counter = 0;
            }
            let mut order: Vec<usize> = (0..n_tr).collect();
            let mut rng =
                SplitMix64::new(c.seed ^ 0x1d3_5eed ^ (round as u64).wrapping_mul(0x9e37));
            for i in (1..n_tr).rev() {
                order.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
            }
            let batches: Vec<Vec<usize>> = order.chunks(c.batch_size).map(|b| b.to_vec()).collect();
            (self.observer)(&Event::Round {
                round,
                rounds,
                joint,
                iterations: batches.len(),
            });

            // Pass A: the training set.
            for batch in &batches {
                let idx = Tensor::new(
                    batch
                        .iter()
                        .map(|&i| i as u32)
                        .collect::<Vec<_>>()
                        .as_slice(),
                    &Device::Cpu,
                )?;
                let (z_prime, centre, target) = (
                    train_starts.index_select(&idx, 0)?,
                    train.noise.index_select(&idx, 0)?,
                    train.target.index_select(&idx, 0)?,
                );
                let (theta_t, xi_t) = (vec_tensor(&cp.theta)?, vec_tensor(&cp.xi)?);
                // A non-finite loss or gradient (or model output) skips the step and reloads the
                // best parameters; anything else is an error.
                let step =
                    match problem.loss_and_grads(&theta_t, &xi_t, &z_prime, &target, backprop) {
                        Ok(lg) => {
                            let g_theta: Vec<f64> = lg.d_theta.to_vec1()?;
                            let g_xi: Vec<f64> = lg.d_xi.to_vec1()?;
                            let finite = lg
                                .per_sample
                                .iter()
                                .chain(&g_theta)
                                .chain(&g_xi)
                                .all(|v| v.is_finite());
                            finite.then_some((lg, g_theta, g_xi))
                        }
                        Err(Error::NonFinite { .. }) => None,
                        Err(e) => return Err(e),
                    };
                let Some((lg, mut g_theta, mut g_xi)) = step else {
                    let note = format!(
                        "round {round}: non-finite loss or gradient; step skipped, best schedule reloaded"
                    );
                    (self.observer)(&Event::Note(note));
                    self.log(serde_json::json!({"event": "nan", "round": round, "iteration": cp.iteration}))?;
                    cp.theta = cp.best.theta.clone();
                    cp.xi = cp.best.xi.clone();
                    continue;
                };
                let z_new = z_prime.sub(&(lg.d_z * cp.shift_lr)?)?;
                clip_grad_norm(&mut g_theta, 1.0);
                cp.opt_theta.step(&mut cp.theta, &g_theta);
                if joint {
                    clip_grad_norm(&mut g_xi, 1.0);
                    Sgd { lr: cp.lr_xi }.step(&mut cp.xi, &g_xi);
                }
                cp.iteration += 1;
                let batch_loss = mean(&lg.per_sample);

                // Validation after every iteration.
                let v = valid_loss(&cp.theta, &cp.xi, &valid_starts)?;
                if v < cp.best.loss {
                    cp.best = Best {
                        theta: cp.theta.clone(),
                        xi: cp.xi.clone(),
                        loss: v,
                    };
                    cp.counter = 0;
                } else {
                    cp.counter += 1;
                }
                if cp.counter >= c.patience {
                    cp.counter = 0;
                    cp.theta = cp.best.theta.clone();
                    cp.xi = cp.best.xi.clone();
                    cp.opt_theta.lr = (cp.opt_theta.lr * c.decay).max(c.min_lr_theta);
                    if joint {
                        cp.lr_xi = (cp.lr_xi * c.decay).max(c.min_lr_xi);
                        if cp.lr_xi <= c.min_lr_xi {
                            cp.xi_floor_hits += 1;
                        }
                    }
                }
                self.log(serde_json::json!({
                    "event": "iteration", "round": round, "iteration": cp.iteration,
                    "train_loss": batch_loss, "valid_loss": v, "best": cp.best.loss,
                    "lr_theta": cp.opt_theta.lr, "lr_xi": cp.lr_xi,
                }))?;
                (self.observer)(&Event::Iteration {
                    round,
                    iteration: cp.iteration,
                    loss: batch_loss,
                    best: cp.best.loss,
                });

                // Projection onto the balls and greedy acceptance, with the updated θ, ξ.
                if radius > 0.0 {
                    let projected = ball::project(&z_new, &centre, radius)?;
                    let new_losses = reject_non_finite(
                        problem.losses(
                            &vec_tensor(&cp.theta)?,
                            &vec_tensor(&cp.xi)?,
                            &projected,
                            &target,
                        ),
                        batch.len(),
                    )?;
                    let (kept, _) =
                        ball::accept(&z_prime, &projected, &lg.per_sample, &new_losses)?;
                    train_starts = train_starts.index_add(&idx, &kept.sub(&z_prime)?, 0)?;
                }
                if cp.xi_floor_hits >= c.xi_floor_patience {
                    cp.stopped = true;
                    break;
                }
            }

            // Pass B: the validation starts move inside their balls too (θ, ξ frozen).
            if radius > 0.0 && !cp.stopped {
                let mut moved_any = false;
                let (theta_t, xi_t) = (vec_tensor(&cp.theta)?, vec_tensor(&cp.xi)?);
                for start in (0..n_va).step_by(c.batch_size) {
                    let len = c.batch_size.min(n_va - start);
                    let z_prime = valid_starts.narrow(0, start, len)?;
                    let target = valid.target.narrow(0, start, len)?;
                    let lg = match problem
                        .loss_and_grads(&theta_t, &xi_t, &z_prime, &target, backprop)
                    {
                        Ok(lg) if lg.per_sample.iter().all(|v| v.is_finite()) => lg,
                        Ok(_) | Err(Error::NonFinite { .. }) => continue,
                        Err(e) => return Err(e),
                    };
                    let z_new = z_prime.sub(&(lg.d_z * cp.shift_lr)?)?;
                    let projected =
                        ball::project(&z_new, &valid.noise.narrow(0, start, len)?, radius)?;
                    let new_losses = reject_non_finite(
                        problem.losses(&theta_t, &xi_t, &projected, &target),
                        len,
                    )?;
                    let (kept, moved) =
                        ball::accept(&z_prime, &projected, &lg.per_sample, &new_losses)?;
                    moved_any |= moved.iter().any(|m| *m);
                    let idx = Tensor::arange(start as u32, (start + len) as u32, &Device::Cpu)?;
                    valid_starts = valid_starts.index_add(&idx, &kept.sub(&z_prime)?, 0)?;
                }
                if !moved_any {
                    cp.shift_lr *= 0.5;
                }
            }
            cp.round += 1;
            done_now += 1;
            self.save_checkpoint(&cp, &train_starts, &valid_starts)?;
            self.log(serde_json::json!({"event": "round", "round": round, "best": cp.best.loss, "shift_lr": cp.shift_lr}))?;
        }
        let finished = cp.round >= rounds || cp.stopped;

        // The best schedule and the held-out table.
        let (t, t_net) = disc.times_and_net(
            schedule,
            &vec_tensor(&cp.best.theta)?,
            &vec_tensor(&cp.best.xi)?,
        )?;
        let (t, t_net): (Vec<f64>, Vec<f64>) = (t.to_vec1()?, t_net.to_vec1()?);
        let mut heldout_samples = vec![("teacher".to_string(), heldout.target.clone())];
        let mut heldout_losses = |name: String, t: &[f64], t_net: &[f64]| -> Result<Vec<f64>> {
            let times = ld3_solvers::Times::from_f64(t, t_net, &Device::Cpu)?;
            let x_t = (&heldout.noise * schedule.prior_scale())?;
            let out = ld3_solvers::sample(solver.as_ref(), &predictor, &x_t, &times, None)?;
            let losses = distance.per_sample(&out.x, &heldout.target)?.to_vec1()?;
            heldout_samples.push((name, out.x));
            Ok(losses)
        };
        let mut table = vec![];
        let learned = heldout_losses("ld3".into(), &t, &t_net)?;
        table.push(TableRow {
            schedule: "ld3".into(),
            mean: mean(&learned),
            median: median(&learned),
        });
        for rule in hand_made(c.solver.solver) {
            let tt = rule.times(schedule, steps)?;
            let l = heldout_losses(rule.name(), &tt, &tt)?;
            table.push(TableRow {
                schedule: rule.name(),
                mean: mean(&l),
                median: median(&l),
            });
        }
        // On the validation pairs' own noise (the soft loss depends on how far starts moved).
        let valid_hard = valid_loss(&cp.best.theta, &cp.best.xi, &valid.noise)?;
        // On every teacher pair (training and validation) at its own noise: what picks between
        // the two starts, from twice the samples validation has.
        let pairs_hard = match c.pairs {
            PairUse::Pooled => valid_hard,
            PairUse::Split => {
                let all = pairs.slice(0, c.train_samples + c.valid_samples)?;
                match problem.losses(
                    &vec_tensor(&cp.best.theta)?,
                    &vec_tensor(&cp.best.xi)?,
                    &all.noise,
                    &all.target,
                ) {
                    Ok(l) => c.validation.summarise(&l),
                    Err(Error::NonFinite { .. }) => f64::INFINITY,
                    Err(e) => return Err(e),
                }
            }
        };
        let provenance = serde_json::json!({
            "method": "ld3",
            "valid_loss_at_noise": valid_hard,
            "pairs_loss_at_noise": pairs_hard,
            "loss": distance.name(),
            "best_valid_loss": cp.best.loss,
            "initial_schedule": cp.initial.0,
            "initial_valid_loss": cp.initial.1,
            "teacher": c.teacher,
            "seed": c.seed,
            "radius": radius,
            "time_mode": disc.mode,
            "window": disc.window,
            "rounds_done": cp.round,
            "iterations": cp.iteration,
            "train_samples": c.train_samples,
            "valid_samples": c.valid_samples,
            "pairs": c.pairs,
            "heldout": table,
            "finished": finished,
            "created_by": format!("ld3-train {}", env!("CARGO_PKG_VERSION")),
        });
        let file = ScheduleFile::new(
            c.solver.clone(),
            c.nfe,
            schedule,
            t,
            t_net,
            self.model_name.clone(),
            provenance,
        )?;
        file.write(&self.run_dir.join("best.json"))?;
        Ok(Outcome {
            schedule: file,
            table,
            finished,
            heldout_samples,
        })
    }

    fn save_checkpoint(&self, cp: &Checkpoint, train: &Tensor, valid: &Tensor) -> Result<()> {
        let tensors = HashMap::from([
            ("train".to_string(), train.clone()),
            ("valid".to_string(), valid.clone()),
        ]);
        write_atomic(&self.run_dir.join("starts.safetensors"), |tmp| {
            Ok(candle_core::safetensors::save(&tensors, tmp)?)
        })?;
        let text = serde_json::to_string_pretty(cp).expect("checkpoint serialises");
        write_atomic(&self.run_dir.join("checkpoint.json"), |tmp| {
            std::fs::write(tmp, text).map_err(|source| Error::Io {
                path: tmp.display().to_string(),
                cause: source,
            })
        })
    }
}

/// The run directory's best schedule, if a run there has written one.
pub fn best_schedule(run_dir: &Path) -> Option<PathBuf> {
    let p = run_dir.join("best.json");
    p.exists().then_some(p)
}
