//! The LD3 training loop (the paper's Algorithm 1, arXiv 2405.15506, as its official code, github
//! vinhsuhi/LD3, runs it): θ-only rounds, then θ+ξ rounds; soft teacher forcing with projected,
//! greedily accepted starts; validation after every
//! iteration; patience, reload of the best, learning-rate decay and early stop; a run directory
//! with teacher pairs, a checkpoint after every round and a JSON-lines log, so `resume` loses at
//! most the current round.
//!
//! By job: `config` (every setting), `iteration` (one LD3 iteration, Algorithm 1), `run_dir`
//! (checkpoints, starts, log, the settings check), `report` (held-out table); this module runs
//! the rounds from one or two starts.

mod config;
mod iteration;
mod report;
mod run_dir;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Tensor};
use ld3_models::Denoiser;
use ld3_solvers::rng::SplitMix64;
use ld3_solvers::{Error, Result, ScheduleFile};

pub use config::{
    default_student_variant, recompute_by_default, setting_differences, Init, Loss, PairUse,
    TrainConfig, ValidationStat, DPM_TAYLOR_FROM_NFE, RECOMPUTE_FROM_PARAMETERS,
};
pub use ld3_solvers::steps::hand_made;
pub use report::TableRow;

use crate::ball;
use crate::grad::{Backprop, Problem};
use crate::optim::RmsProp;
use crate::teacher::{default_conditioner, Conditioner, PairsMeta, TeacherPairs};
use crate::{Discretization, Distance, Rms, TimeMode, L1, L2};
use iteration::{Batch, Ld3};
use run_dir::{Best, Checkpoint, RunDir, State};

/// Progress reported to an observer (progress bars).
#[derive(Clone, Debug)]
pub enum Event {
    /// Teacher pairs are being made or loaded.
    Teacher {
        /// Pairs in all (training, validation, held-out).
        count: usize,
    },
    /// Teacher pairs made so far (when they are made, not loaded).
    TeacherProgress {
        /// Pairs solved.
        done: usize,
        /// Pairs in all.
        total: usize,
    },
    /// A round starts.
    Round {
        /// Its index (0-based).
        round: usize,
        /// Rounds in all.
        rounds: usize,
        /// Whether it trains ξ too.
        joint: bool,
        /// Its iterations.
        iterations: usize,
    },
    /// A training iteration ended with its batch loss and the best validation loss.
    Iteration {
        /// The round.
        round: usize,
        /// Iterations so far, over all rounds.
        iteration: usize,
        /// The batch's mean loss.
        loss: f64,
        /// The best validation statistic so far.
        best: f64,
    },
    /// Something the user should know (NaN skipped, learning rates decayed, ...).
    Note(String),
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
    /// The held-out samples, decoded: `teacher` first, then `ld3` and each hand-made schedule in
    /// the order of [`Outcome::table`], each [M, ...decoded shape] from the same noise.
    pub heldout_samples: Vec<(String, Tensor)>,
}

/// A training run over one model.
pub struct Trainer<'a> {
    model: &'a dyn Denoiser,
    model_name: String,
    config: TrainConfig,
    run_dir: PathBuf,
    observer: Box<dyn FnMut(&Event) + 'a>,
    distance: Option<Arc<dyn Distance>>,
    conditioner: Option<Arc<dyn Conditioner>>,
}

/// The two starts of [`Init::Both`], each in its own subdirectory.
const STARTS: [(Init, &str); 2] = [
    (Init::Uniform, "from-uniform"),
    (Init::BestHandMade, "from-hand-made"),
];

impl<'a> Trainer<'a> {
    /// A run of `config` on `model` (named `model_name` in files) in `run_dir`.
    pub fn new(
        model: &'a dyn Denoiser,
        model_name: impl Into<String>,
        config: TrainConfig,
        run_dir: impl Into<PathBuf>,
    ) -> Result<Self> {
        config.check()?;
        Ok(Self {
            model,
            model_name: model_name.into(),
            config,
            run_dir: run_dir.into(),
            observer: Box::new(|_| {}),
            distance: None,
            conditioner: None,
        })
    }

    /// The distance to use for the LPIPS losses (or to replace the built-in L2/L1): its
    /// [`Distance::name`] must be the configured loss's.
    pub fn with_distance(mut self, distance: Arc<dyn Distance>) -> Self {
        self.distance = Some(distance);
        self
    }

    /// Reports progress to `observer`.
    pub fn with_observer(mut self, observer: impl FnMut(&Event) + 'a) -> Self {
        self.observer = Box::new(observer);
        self
    }

    /// Where each teacher pair's conditioning comes from [default: none for unconditional
    /// models, uniform labels for class-conditional ones; text models need one].
    pub fn with_conditioner(mut self, conditioner: Arc<dyn Conditioner>) -> Self {
        self.conditioner = Some(conditioner);
        self
    }

    fn conditioner(&self) -> Result<Option<Arc<dyn Conditioner>>> {
        Ok(match &self.conditioner {
            Some(c) => Some(c.clone()),
            None => default_conditioner(self.model)?.map(Arc::from),
        })
    }

    fn mode(&self) -> TimeMode {
        self.config.mode.unwrap_or(TimeMode::Lambda)
    }

    /// The layout this model's runs had by default before λ became every model's (2026-12-04),
    /// when run directories recorded the default as no mode: how those directories are read.
    fn legacy_mode(&self) -> TimeMode {
        TimeMode::official(self.model.noise_schedule())
    }

    fn distance(&self) -> Result<Arc<dyn Distance>> {
        let name = self.config.loss.name();
        match (&self.distance, self.config.loss) {
            (Some(d), _) if d.name() == name => Ok(d.clone()),
            (Some(d), _) => Err(Error::Invalid(format!(
                "the distance given to the trainer is {}, but the configured loss is {name}",
                d.name()
            ))),
            (None, Loss::L2) => Ok(Arc::new(L2)),
            (None, Loss::L1) => Ok(Arc::new(L1)),
            (None, Loss::Rms) => Ok(Arc::new(Rms)),
            (None, Loss::LpipsVgg | Loss::LpipsAlex) => Err(Error::Invalid(
                "the LPIPS loss needs its network: give it with Trainer::with_distance".into(),
            )),
        }
    }

    /// Runs (or, with `resume`, continues) training; `max_rounds` stops after that many rounds
    /// in this call (the checkpoint allows resuming later). The run directory is locked for the
    /// whole call, and a directory that holds a run of other settings is refused — whichever
    /// way it is reached — before anything in it changes.
    pub fn run(&mut self, resume: bool, max_rounds: Option<usize>) -> Result<Outcome> {
        let conditioner = self.conditioner()?;
        // The layout is recorded resolved, so that a later change of default cannot continue a
        // run in another layout.
        let manifest = run_dir::Manifest {
            config: TrainConfig {
                mode: Some(self.mode()),
                ..self.config.clone()
            },
            model: self.model_name.clone(),
            conditioning: conditioner
                .as_ref()
                .map_or_else(crate::teacher::unconditional, |c| c.describe()),
        };
        let top = RunDir::new(self.run_dir.clone(), self.legacy_mode());
        top.check_settings(&manifest)?;
        if resume && !top.holds_run()? {
            return Err(Error::Invalid(format!(
                "{} holds no run to resume; start a new run instead",
                self.run_dir.display()
            )));
        }
        let _lock = top.lock()?;
        // Again under the lock: another run may have started here meanwhile.
        top.check_settings(&manifest)?;
        top.write_manifest(&manifest)?;
        if self.config.init != Init::Both {
            return self.run_start(&manifest, conditioner.as_deref(), &top, max_rounds);
        }
        let mut outcomes = Vec::new();
        for (init, sub) in STARTS {
            (self.observer)(&Event::Note(format!("training from {sub}")));
            let start = run_dir::Manifest {
                config: TrainConfig {
                    init,
                    ..manifest.config.clone()
                },
                ..manifest.clone()
            };
            let dir = RunDir::new(self.run_dir.join(sub), self.legacy_mode());
            let outcome = self.run_start(&start, conditioner.as_deref(), &dir, max_rounds)?;
            if !outcome.finished {
                // Stopped early (max_rounds): resume later continues here.
                return Ok(outcome);
            }
            outcomes.push(outcome);
        }
        // The start whose schedule is better on every teacher pair at its own noise wins.
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

    /// One start's run in `dir` (teacher pairs in the run directory itself): continued where a
    /// checkpoint of the same settings is — or, when finished, only re-reported; a checkpoint of
    /// other settings is refused before anything is touched.
    fn run_start(
        &mut self,
        settings: &run_dir::Manifest,
        conditioner: Option<&dyn Conditioner>,
        dir: &RunDir,
        max_rounds: Option<usize>,
    ) -> Result<Outcome> {
        let c = settings.config.clone();
        let init = c.init;
        let conditioning = &settings.conditioning;
        let stored = dir.stored_run(settings)?;
        dir.create()?;
        let device = self.model.device().clone();
        let (solver, steps) = c.solver.build_for_nfe(c.nfe)?;
        let schedule = self.model.noise_schedule();
        let disc = Discretization {
            window: c.window,
            ..Discretization::new(self.mode(), steps)?
        };
        let dim: usize = self.model.sample_shape().iter().product();
        let radius = c.radius.unwrap_or(ball::default_radius(dim, steps));
        let (n_tr, n_va) = (c.train_samples, c.valid_samples);

        // Teacher pairs (x_T, x_0*) with their conditioning, made once per run directory.
        (self.observer)(&Event::Teacher {
            count: n_tr + n_va + c.heldout_samples,
        });
        let meta = PairsMeta {
            model: self.model_name.clone(),
            teacher: c.teacher.clone(),
            seed: c.seed,
            count: n_tr + n_va,
            conditioning: conditioning.clone(),
        };
        let total = n_tr + n_va + c.heldout_samples.max(1);
        let (model, run_dir, observer) = (self.model, &self.run_dir, &mut self.observer);
        let mut pairs_at = |stem: &str, meta: &PairsMeta, before: usize| {
            TeacherPairs::load_or_generate(
                model,
                meta,
                conditioner,
                &run_dir.join(stem),
                DType::F64,
                &mut |done, _| {
                    observer(&Event::TeacherProgress {
                        done: before + done,
                        total,
                    })
                },
            )
        };
        let pairs = pairs_at("teacher", &meta, 0)?;
        let heldout = pairs_at(
            "heldout",
            &PairsMeta {
                seed: c.seed.wrapping_add(1 << 32),
                count: c.heldout_samples.max(1),
                ..meta
            },
            n_tr + n_va,
        )?;
        let (train, valid) = match c.pairs {
            PairUse::Split => (pairs.slice(0, n_tr)?, pairs.slice(n_tr, n_va)?),
            PairUse::Pooled => (pairs.slice(0, n_tr + n_va)?, pairs.slice(0, n_tr + n_va)?),
        };
        let n_tr = train.noise.dims()[0];
        // The distance compares decoded images (identity for pixel models).
        let (train_target, valid_target) = (
            self.model.decode(&train.target)?,
            self.model.decode(&valid.target)?,
        );

        let distance = self.distance()?;
        let ld3 = Ld3 {
            problem: Problem {
                solver: solver.as_ref(),
                model: self.model,
                discretization: &disc,
                distance: distance.as_ref(),
            },
            config: &c,
            backprop: if c.recompute {
                Backprop::Recompute
            } else {
                Backprop::FullGraph
            },
            radius,
            device: device.clone(),
            valid_cond: &valid.cond,
            valid_target: &valid_target,
        };

        let (mut cp, mut train_starts, mut valid_starts) = match stored {
            Some(cp) => {
                let done = cp.state.round;
                let note = if done >= c.rounds_theta + c.rounds_joint || cp.state.stopped {
                    format!("{}: finished run, reported again", dir.path.display())
                } else {
                    format!("{}: resuming after round {done}", dir.path.display())
                };
                (self.observer)(&Event::Note(note));
                dir.truncate_log(done)?;
                let (tr, va) = dir.starts(&device)?;
                (cp, tr, va)
            }
            None => {
                let state = self.initial_state(&ld3, init, &disc, steps, &valid.noise)?;
                dir.log(serde_json::json!({"event": "init", "schedule": state.initial.0, "valid_loss": state.initial.1, "radius": radius}))?;
                let cp = Checkpoint {
                    settings: settings.clone(),
                    state,
                };
                (cp, train.noise.clone(), valid.noise.clone())
            }
        };

        let rounds = c.rounds_theta + c.rounds_joint;
        let mut done_now = 0;
        while cp.state.round < rounds
            && !cp.state.stopped
            && max_rounds.is_none_or(|m| done_now < m)
        {
            let st = &mut cp.state;
            let round = st.round;
            let joint = round >= c.rounds_theta;
            if round > 0 {
                st.reload_best();
                st.counter = 0;
            }
            let batches = shuffled_batches(n_tr, c.batch_size, c.seed, round);
            (self.observer)(&Event::Round {
                round,
                rounds,
                joint,
                iterations: batches.len(),
            });
            // Pass A: an LD3 iteration on every training batch.
            for batch in &batches {
                let idx = Tensor::new(
                    batch
                        .iter()
                        .map(|&i| i as u32)
                        .collect::<Vec<_>>()
                        .as_slice(),
                    &device,
                )?;
                let batch = Batch {
                    starts: train_starts.index_select(&idx, 0)?,
                    centre: train.noise.index_select(&idx, 0)?,
                    target: train_target.index_select(&idx, 0)?,
                    cond: train.cond.index_select(&idx)?,
                    idx,
                };
                let Some(done) = ld3.iteration(st, &batch, &valid_starts, joint)? else {
                    let note = format!(
                        "round {round}: non-finite loss or gradient; step skipped, best schedule reloaded"
                    );
                    (self.observer)(&Event::Note(note));
                    dir.log(serde_json::json!({"event": "nan", "round": round, "iteration": st.iteration}))?;
                    continue;
                };
                dir.log(serde_json::json!({
                    "event": "iteration", "round": round, "iteration": st.iteration,
                    "train_loss": done.loss, "valid_loss": done.valid, "best": st.best.loss,
                    "lr_theta": st.opt_theta.lr, "lr_xi": st.lr_xi,
                }))?;
                (self.observer)(&Event::Iteration {
                    round,
                    iteration: st.iteration,
                    loss: done.loss,
                    best: st.best.loss,
                });
                if radius > 0.0 {
                    let shift = done.starts.sub(&batch.starts)?;
                    train_starts = train_starts.index_add(&batch.idx, &shift, 0)?;
                }
                if st.xi_floor_hits >= c.xi_floor_patience {
                    st.stopped = true;
                    break;
                }
            }
            // Pass B: the validation starts move inside their balls too (θ, ξ frozen).
            if radius > 0.0 && !st.stopped {
                valid_starts = ld3.move_validation_starts(st, &valid_starts, &valid.noise)?;
            }
            st.round += 1;
            done_now += 1;
            dir.save(&cp, &train_starts, &valid_starts)?;
            dir.log(serde_json::json!({"event": "round", "round": round, "best": cp.state.best.loss, "shift_lr": cp.state.shift_lr}))?;
        }
        let finished = cp.state.round >= rounds || cp.state.stopped;

        // The best schedule and the held-out table.
        let st = &cp.state;
        let (t, t_net) = disc.times_and_net(
            schedule,
            &ld3.tensor(&st.best.theta)?,
            &ld3.tensor(&st.best.xi)?,
        )?;
        let (t, t_net): (Vec<f64>, Vec<f64>) = (t.to_vec1()?, t_net.to_vec1()?);
        let report::Heldout {
            table,
            samples: heldout_samples,
        } = report::heldout_table(
            self.model,
            solver.as_ref(),
            steps,
            distance.as_ref(),
            &heldout,
            (&t, &t_net),
            &hand_made(c.solver.solver),
        )?;
        // On the validation pairs' own noise (the soft loss depends on how far starts moved).
        let valid_hard = ld3.validate(&st.best.theta, &st.best.xi, &valid.noise)?;
        // On every teacher pair (training and validation) at its own noise: what picks between
        // the two starts, from twice the samples validation has.
        let pairs_hard = match c.pairs {
            PairUse::Pooled => valid_hard,
            PairUse::Split => {
                let all = pairs.slice(0, c.train_samples + c.valid_samples)?;
                match ld3.problem.losses(
                    &ld3.tensor(&st.best.theta)?,
                    &ld3.tensor(&st.best.xi)?,
                    &all.noise,
                    &all.cond,
                    &self.model.decode(&all.target)?,
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
            "best_valid_loss": st.best.loss,
            "initial_schedule": st.initial.0,
            "initial_valid_loss": st.initial.1,
            "teacher": c.teacher,
            "conditioning": conditioning,
            "seed": c.seed,
            "radius": radius,
            "time_mode": disc.mode,
            "window": disc.window,
            "rounds_done": st.round,
            "iterations": st.iteration,
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
        file.write(&dir.best())?;
        Ok(Outcome {
            schedule: file,
            table,
            finished,
            heldout_samples,
        })
    }

    /// The state a new run starts from: θ uniform, or fitted to the hand-made schedule with the
    /// lowest validation statistic; ξ = 0; the paper's learning rates.
    fn initial_state(
        &self,
        ld3: &Ld3,
        init: Init,
        disc: &Discretization,
        steps: usize,
        valid_noise: &Tensor,
    ) -> Result<State> {
        let c = ld3.config;
        let schedule = self.model.noise_schedule();
        let zeros = vec![0.0; steps + 1];
        let (name, theta, loss) = match init {
            Init::Uniform | Init::Both => {
                let theta = vec![1.0; steps + 1];
                let loss = ld3.validate(&theta, &zeros, valid_noise)?;
                ("uniform".to_string(), theta, loss)
            }
            Init::BestHandMade => {
                let mut best: Option<(f64, String, Vec<f64>)> = None;
                for rule in hand_made(c.solver.solver) {
                    let theta = disc.fit(schedule, &rule.times(schedule, steps)?)?;
                    let loss = ld3.validate(&theta, &zeros, valid_noise)?;
                    if best.as_ref().is_none_or(|b| loss < b.0) {
                        best = Some((loss, rule.name(), theta));
                    }
                }
                let (loss, name, theta) = best.expect("at least one hand-made schedule");
                (name, theta, loss)
            }
        };
        Ok(State {
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
            initial: (name, loss),
            theta,
            xi: zeros,
            counter: 0,
            xi_floor_hits: 0,
            stopped: false,
        })
    }
}

/// The training pairs 0..n shuffled for `round` (deterministic in the seed) and cut into batches.
fn shuffled_batches(n: usize, batch_size: usize, seed: u64, round: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..n).collect();
    let mut rng = SplitMix64::new(seed ^ 0x1d3_5eed ^ (round as u64).wrapping_mul(0x9e37));
    for i in (1..n).rev() {
        order.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
    }
    order.chunks(batch_size).map(|b| b.to_vec()).collect()
}

/// The settings of the run `run_dir` holds, if it holds one (what a command without an option
/// continues it with where a default has changed since the run began).
/// A run recorded before layouts were (no `mode`) is read as λ: callers use its solver and NFE.
pub fn stored_config(run_dir: &Path) -> Result<Option<TrainConfig>> {
    Ok(RunDir::new(run_dir.to_path_buf(), TimeMode::Lambda)
        .stored_settings()?
        .map(|m| m.config))
}

/// The run directory's best schedule, if a run there has written one.
pub fn best_schedule(run_dir: &Path) -> Option<PathBuf> {
    let p = run_dir.join("best.json");
    p.exists().then_some(p)
}
