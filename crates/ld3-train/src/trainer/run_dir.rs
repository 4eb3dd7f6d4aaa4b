//! The run directory: the checkpoint written after every round (settings and training state),
//! the students' starts, the JSON-lines log and the best schedule — and the check that a stored
//! run has this run's settings before anything in its directory is touched.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use ld3_solvers::schedule_file::write_atomic;
use ld3_solvers::{Error, Result};
use serde::{Deserialize, Serialize};

use super::config::{config_differences, TrainConfig};
use crate::lock::{io, Lock};
use crate::optim::RmsProp;
use crate::TimeMode;

/// The best parameters so far and their validation statistic.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Best {
    pub theta: Vec<f64>,
    pub xi: Vec<f64>,
    pub loss: f64,
}

/// The training state after a round: enough to continue exactly where it stopped.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct State {
    pub round: usize,
    pub iteration: usize,
    pub theta: Vec<f64>,
    pub xi: Vec<f64>,
    pub opt_theta: RmsProp,
    pub lr_xi: f64,
    pub shift_lr: f64,
    pub best: Best,
    /// The start's name and validation statistic.
    pub initial: (String, f64),
    /// Validations without improvement.
    pub counter: usize,
    /// Patience events with ξ's learning rate at its floor.
    pub xi_floor_hits: usize,
    /// Stopped early.
    pub stopped: bool,
}

impl State {
    /// θ and ξ back to the best so far.
    pub fn reload_best(&mut self) {
        self.theta = self.best.theta.clone();
        self.xi = self.best.xi.clone();
    }
}

/// `checkpoint.json`: the start's settings and its training state.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Checkpoint {
    #[serde(flatten)]
    pub settings: Manifest,
    #[serde(flatten)]
    pub state: State,
}

/// `run.json` (and the head of every checkpoint): what a run was made for — every setting, the
/// model and the conditioning. Every way into a directory checks it before anything there
/// changes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct Manifest {
    pub config: TrainConfig,
    pub model: String,
    /// Where the pairs' conditioning came from (runs from before conditioning: none).
    #[serde(default = "crate::teacher::unconditional")]
    pub conditioning: String,
}

impl Manifest {
    /// Refuses (naming every difference) a run of `stored` settings where `self` would run;
    /// recomputation changes memory, not results, so a run may continue with or without it.
    fn refuse_other(&self, stored: &Manifest, dir: &Path) -> Result<()> {
        let same_config = TrainConfig {
            recompute: self.config.recompute,
            ..stored.config.clone()
        } == self.config;
        if same_config && stored.model == self.model && stored.conditioning == self.conditioning {
            return Ok(());
        }
        let mut differ = config_differences(&stored.config, &self.config);
        if stored.conditioning != self.conditioning {
            differ.insert(
                0,
                format!(
                    "conditioning: {} there, {} now",
                    stored.conditioning, self.conditioning
                ),
            );
        }
        if stored.model != self.model {
            differ.insert(
                0,
                format!("model: {} there, {} now", stored.model, self.model),
            );
        }
        Err(Error::Invalid(format!(
            "{} already holds a run with other settings or another model ({}); continue it with \
             its settings, or choose another run directory",
            dir.display(),
            differ.join("; ")
        )))
    }
}

/// One run's directory.
pub(crate) struct RunDir {
    pub path: PathBuf,
    /// The layout of a run recorded without one: runs from before 2026-12-04 stored the
    /// model's default then (λ for EDM schedules, t otherwise) as no mode at all.
    legacy_mode: TimeMode,
}

impl RunDir {
    pub fn new(path: PathBuf, legacy_mode: TimeMode) -> Self {
        Self { path, legacy_mode }
    }

    /// Stored settings with the layout they ran with made explicit.
    fn resolved(&self, mut m: Manifest) -> Manifest {
        m.config.mode.get_or_insert(self.legacy_mode);
        m
    }

    fn manifest_path(&self) -> PathBuf {
        self.path.join("run.json")
    }

    /// The settings this directory holds a run of: `run.json`, or for a directory from before
    /// it, the checkpoint of its run (or of its first start, for `init: both`).
    pub fn stored_settings(&self) -> Result<Option<Manifest>> {
        let path = self.manifest_path();
        if path.exists() {
            let text = std::fs::read_to_string(&path).map_err(io(&path))?;
            let m = serde_json::from_str(&text).map_err(|source| Error::Json {
                what: format!("{} is not an ld3 run manifest", path.display()),
                cause: source,
            })?;
            return Ok(Some(self.resolved(m)));
        }
        for (sub, init) in [
            (None, None),
            (Some("from-uniform"), Some(super::Init::Both)),
            (Some("from-hand-made"), Some(super::Init::Both)),
        ] {
            let dir = sub.map_or(self.path.clone(), |s| self.path.join(s));
            let cp = dir.join("checkpoint.json");
            if !cp.exists() {
                continue;
            }
            let text = std::fs::read_to_string(&cp).map_err(io(&cp))?;
            let c: Checkpoint = serde_json::from_str(&text).map_err(|source| Error::Json {
                what: format!("{} is not an ld3 checkpoint", cp.display()),
                cause: source,
            })?;
            let mut settings = c.settings;
            settings.config.init = init.unwrap_or(settings.config.init);
            return Ok(Some(self.resolved(settings)));
        }
        Ok(None)
    }

    /// Whether the directory holds a run (of any settings).
    pub fn holds_run(&self) -> Result<bool> {
        Ok(self.stored_settings()?.is_some())
    }

    /// Refuses, naming every difference, a directory that holds a run of other settings, model
    /// or conditioning. Reads only.
    pub fn check_settings(&self, now: &Manifest) -> Result<()> {
        match self.stored_settings()? {
            Some(stored) => now.refuse_other(&stored, &self.path),
            None => Ok(()),
        }
    }

    /// Records the settings (once: a directory keeps the manifest of its first run).
    pub fn write_manifest(&self, m: &Manifest) -> Result<()> {
        let path = self.manifest_path();
        if path.exists() {
            return Ok(());
        }
        let text = serde_json::to_string_pretty(m).expect("manifest serialises");
        write_atomic(&path, |tmp| std::fs::write(tmp, text).map_err(io(tmp)))
    }

    /// Takes the directory's exclusive lock (creating the directory), or says at once which
    /// process holds it.
    pub fn lock(&self) -> Result<Lock> {
        self.create()?;
        Lock::acquire(&self.path.join("lock"), &self.path)
    }

    fn checkpoint_path(&self) -> PathBuf {
        self.path.join("checkpoint.json")
    }

    /// The start's checkpoint stored here, if any, refused unless made with `now`'s settings.
    /// Reads only.
    pub fn stored_run(&self, now: &Manifest) -> Result<Option<Checkpoint>> {
        let path = self.checkpoint_path();
        if !path.exists() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&path).map_err(io(&path))?;
        let cp: Checkpoint = serde_json::from_str(&text).map_err(|source| Error::Json {
            what: format!("{} is not an ld3 checkpoint", path.display()),
            cause: source,
        })?;
        let cp = Checkpoint {
            settings: self.resolved(cp.settings),
            ..cp
        };
        now.refuse_other(&cp.settings, &self.path)?;
        Ok(Some(cp))
    }

    /// Makes the directory.
    pub fn create(&self) -> Result<()> {
        std::fs::create_dir_all(&self.path).map_err(io(&self.path))
    }

    /// Saves the checkpoint and the starts, each atomically.
    pub fn save(&self, cp: &Checkpoint, train: &Tensor, valid: &Tensor) -> Result<()> {
        let tensors = HashMap::from([
            ("train".to_string(), train.clone()),
            ("valid".to_string(), valid.clone()),
        ]);
        write_atomic(&self.path.join("starts.safetensors"), |tmp| {
            Ok(candle_core::safetensors::save(&tensors, tmp)?)
        })?;
        let text = serde_json::to_string_pretty(cp).expect("checkpoint serialises");
        write_atomic(&self.checkpoint_path(), |tmp| {
            std::fs::write(tmp, text).map_err(io(tmp))
        })
    }

    /// The starts saved with the checkpoint (training, validation).
    pub fn starts(&self, device: &Device) -> Result<(Tensor, Tensor)> {
        let path = self.path.join("starts.safetensors");
        let mut s = candle_core::safetensors::load(&path, device)
            .map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))?;
        match (s.remove("train"), s.remove("valid")) {
            (Some(tr), Some(va)) => Ok((tr, va)),
            _ => Err(Error::Invalid(format!(
                "{} lacks `train` or `valid`",
                path.display()
            ))),
        }
    }

    /// Cuts `log.jsonl` back to the end of round `rounds_done − 1` (the checkpoint's): the records
    /// of a round that was interrupted are written again when it is redone, not twice.
    pub fn truncate_log(&self, rounds_done: usize) -> Result<()> {
        let path = self.path.join("log.jsonl");
        let Ok(text) = std::fs::read_to_string(&path) else {
            return Ok(());
        };
        let lines: Vec<&str> = text.lines().collect();
        let ends_round = |line: &str| {
            serde_json::from_str::<serde_json::Value>(line).is_ok_and(|v| {
                v["event"] == "round" && v["round"].as_u64() == Some(rounds_done as u64 - 1)
            })
        };
        let keep = match rounds_done {
            0 => lines.iter().position(|l| l.contains("\"event\":\"init\"")),
            _ => lines.iter().rposition(|l| ends_round(l)),
        };
        let Some(last) = keep else { return Ok(()) };
        if last + 1 == lines.len() {
            return Ok(());
        }
        let mut kept = lines[..=last].join("\n");
        kept.push('\n');
        write_atomic(&path, |tmp| std::fs::write(tmp, kept).map_err(io(tmp)))
    }

    /// Appends one record to `log.jsonl`.
    pub fn log(&self, record: serde_json::Value) -> Result<()> {
        let path = self.path.join("log.jsonl");
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io(&path))?;
        writeln!(f, "{record}").map_err(io(&path))
    }

    /// Where the best schedule goes.
    pub fn best(&self) -> PathBuf {
        self.path.join("best.json")
    }
}
