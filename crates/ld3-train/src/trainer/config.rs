//! Every setting of a run, with the paper's defaults, and the statistics that summarise
//! per-sample losses.

use ld3_models::Denoiser;
use ld3_solvers::{Error, Result, SolverConfig, SolverName, SolverVariant};
use serde::{Deserialize, Serialize};

use crate::teacher::TeacherConfig;
use crate::{TimeMode, WindowRule};

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
    /// Root mean squared error per sample (the L2 distance, not its square).
    Rms,
    /// LPIPS(VGG16) (the paper's loss): the network comes with [`Trainer::with_distance`].
    LpipsVgg,
    /// LPIPS(AlexNet), likewise.
    LpipsAlex,
}

impl std::str::FromStr for Loss {
    type Err = Error;
    /// The loss whose [`Loss::name`] is `s`.
    fn from_str(s: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|l| l.name() == s)
            .ok_or_else(|| {
                let names: Vec<_> = Self::ALL.iter().map(|l| l.name()).collect();
                Error::Invalid(format!("unknown loss '{s}': one of {}", names.join(", ")))
            })
    }
}

impl Loss {
    /// Every loss.
    pub const ALL: [Loss; 5] = [
        Self::L2,
        Self::L1,
        Self::Rms,
        Self::LpipsVgg,
        Self::LpipsAlex,
    ];

    /// The [`Distance::name`] this loss expects.
    pub fn name(self) -> &'static str {
        match self {
            Self::L2 => "l2",
            Self::L1 => "l1",
            Self::Rms => "rms",
            Self::LpipsVgg => "lpips-vgg",
            Self::LpipsAlex => "lpips-alex",
        }
    }

    /// What the per-sample distance is, in words (`Display` puts it after the name).
    pub fn description(self) -> &'static str {
        match self {
            Self::L2 => "mean squared error per sample",
            Self::L1 => "mean absolute error per sample",
            Self::Rms => "root mean squared error per sample",
            Self::LpipsVgg => "LPIPS with VGG-16 features",
            Self::LpipsAlex => "LPIPS with AlexNet features",
        }
    }
}

impl std::fmt::Display for Loss {
    /// The name and, in brackets, what it measures: `rms (root mean squared error per sample)`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.name(), self.description())
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
    /// θ layout (default: λ for every model; the official code uses t for VP ones).
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
    /// Floor of the θ learning rate (the starting rate, if that is lower).
    pub min_lr_theta: f64,
    /// Floor of the ξ learning rate (a given starting rate, if that is lower).
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

/// From this NFE on, LD3 learns DPM-Solver++(3M) in its Taylor (truly third-order) form unless
/// told otherwise.
pub const DPM_TAYLOR_FROM_NFE: usize = 8;

/// The variant LD3 learns `solver` of `order` in at `nfe` when none is given.
///
/// DPM-Solver++(3M) from [`DPM_TAYLOR_FROM_NFE`] evaluations: its Taylor form. With hand-made
/// steps the reference form is the better sampler at every NFE measured (4–10, hence
/// [`ld3_solvers::DEFAULT_DPM_VARIANT`]), but once LD3 places the steps the third-order updates
/// pay off: on the embedded MNIST UNet (RMS loss, 256 fresh noises against a 500-NFE solve) the
/// learned Taylor schedules are 7 % better than the learned reference ones at 8 NFE (seeds 0–2)
/// and 9 % at 10 (seeds 0–2 against the reference form's seed 0), and below the best hand-made
/// schedule of either form; on the mixtures the two forms are level under LD3 at 5–10 NFE, and
/// below 8 NFE the reference form, the official code's, is kept (docs/ld3.md). Every other
/// solver: its own default.
pub fn default_student_variant(
    solver: SolverName,
    order: usize,
    nfe: usize,
) -> Option<SolverVariant> {
    match solver {
        SolverName::DpmSolverPp if order == 3 && nfe >= DPM_TAYLOR_FROM_NFE => {
            Some(SolverVariant::Taylor)
        }
        _ => solver.default_variant(),
    }
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

    pub(crate) fn check(&self) -> Result<()> {
        self.solver.build_for_nfe(self.nfe)?;
        if let Some(r) = self.radius {
            if !(r >= 0.0 && r.is_finite()) {
                return Err(Error::Invalid(format!(
                    "the ball radius must be ≥ 0 (0 = hard objective), got {r}"
                )));
            }
        }
        for (name, v) in [
            ("the number of training pairs", self.train_samples),
            ("the number of validation pairs", self.valid_samples),
            ("the number of held-out pairs", self.heldout_samples),
            ("the batch size", self.batch_size),
        ] {
            if v == 0 {
                return Err(Error::Invalid(format!("{name} must be at least 1")));
            }
        }
        for (name, v) in [
            ("the learning rate of θ", Some(self.lr_theta)),
            ("the learning rate of ξ", self.lr_xi),
            ("the learning rate of the starts", self.shift_lr),
        ] {
            if let Some(v) = v.filter(|v| !(*v > 0.0 && v.is_finite())) {
                return Err(Error::Invalid(format!(
                    "{name} must be a finite number > 0, got {v}"
                )));
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

/// "field: stored there, given now" for every setting (but recomputation) that differs.
pub(crate) fn config_differences(stored: &TrainConfig, now: &TrainConfig) -> Vec<String> {
    let as_map = |c: &TrainConfig| {
        serde_json::to_value(TrainConfig {
            recompute: false,
            ..c.clone()
        })
        .unwrap_or_default()
    };
    setting_differences(&as_map(stored), &as_map(now))
}

/// "field: stored there, given now" for every field of two JSON objects that differs (— where
/// one lacks it); nothing for values that are not objects.
pub fn setting_differences(stored: &serde_json::Value, now: &serde_json::Value) -> Vec<String> {
    let (Some(a), Some(b)) = (stored.as_object(), now.as_object()) else {
        return Vec::new();
    };
    let shown = |v: Option<&serde_json::Value>| v.map_or("—".to_string(), |v| v.to_string());
    a.keys()
        .chain(b.keys().filter(|k| !a.contains_key(*k)))
        .filter(|k| a.get(*k) != b.get(*k))
        .map(|k| format!("{k}: {} there, {} now", shown(a.get(k)), shown(b.get(k))))
        .collect()
}

impl TrainConfig {
    /// The floor θ's learning rate decays to: `min_lr_theta`, or the starting rate if lower.
    pub(crate) fn lr_theta_floor(&self) -> f64 {
        self.min_lr_theta.min(self.lr_theta)
    }

    /// The floor ξ's learning rate decays to: `min_lr_xi`, or a given starting rate if lower.
    pub(crate) fn lr_xi_floor(&self) -> f64 {
        self.lr_xi
            .map_or(self.min_lr_xi, |lr| self.min_lr_xi.min(lr))
    }
}

pub(crate) fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

/// The mean without the largest `fraction` of the values.
fn trimmed_mean(v: &[f64], fraction: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let keep = ((s.len() as f64) * (1.0 - fraction)).ceil().max(1.0) as usize;
    mean(&s[..keep.min(s.len())])
}

pub(crate) fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        0.5 * (s[n / 2 - 1] + s[n / 2])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dpm_solver_3_is_learned_in_the_taylor_form_from_8_nfe() {
        let dpm = SolverName::DpmSolverPp;
        for nfe in 3..DPM_TAYLOR_FROM_NFE {
            assert_eq!(
                default_student_variant(dpm, 3, nfe),
                Some(ld3_solvers::DEFAULT_DPM_VARIANT)
            );
        }
        for nfe in [DPM_TAYLOR_FROM_NFE, 10, 50] {
            assert_eq!(
                default_student_variant(dpm, 3, nfe),
                Some(SolverVariant::Taylor)
            );
            // Orders 1–2 have one form; the others keep their own defaults.
            assert_eq!(default_student_variant(dpm, 2, nfe), dpm.default_variant());
            for s in [SolverName::UniPc, SolverName::Ipndm, SolverName::Ddim] {
                assert_eq!(default_student_variant(s, 3, nfe), s.default_variant());
            }
        }
    }
}
