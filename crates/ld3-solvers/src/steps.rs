//! Step schedules: the N+1 decreasing solver times t_0 = t_max > … > t_N = t_min.

use crate::error::{invalid, Result};
use crate::noise::NoiseSchedule;
use crate::solvers::SolverName;

/// A rule that lays out N+1 decreasing times for N solver steps.
pub trait StepSchedule: Send + Sync {
    /// Name as used on the command line and in schedule files.
    fn name(&self) -> String;
    /// N+1 strictly decreasing times from `schedule.t_max()` to `schedule.t_min()` for `steps` = N.
    fn times(&self, schedule: &dyn NoiseSchedule, steps: usize) -> Result<Vec<f64>>;
}

fn check_steps(steps: usize) -> Result<()> {
    if steps == 0 {
        return invalid("a step schedule needs at least 1 step (NFE ≥ 1)");
    }
    Ok(())
}

/// Uniform in t: t_i = t_max + (i/N)(t_min − t_max).
#[derive(Clone, Copy, Debug, Default)]
pub struct TimeUniform;

impl StepSchedule for TimeUniform {
    fn name(&self) -> String {
        "time-uniform".into()
    }
    fn times(&self, s: &dyn NoiseSchedule, steps: usize) -> Result<Vec<f64>> {
        check_steps(steps)?;
        let (hi, lo) = (s.t_max(), s.t_min());
        Ok((0..=steps)
            .map(|i| hi + (lo - hi) * i as f64 / steps as f64)
            .collect())
    }
}

/// Polynomial in t, as the LD3 code's `time_quadratic` (ρ = 2):
/// t_i = t_min + (t_max − t_min)·((N − i)/N)^ρ.
#[derive(Clone, Copy, Debug)]
pub struct TimePolynomial {
    /// Exponent ρ (2 = time-quadratic).
    pub rho: f64,
}

impl StepSchedule for TimePolynomial {
    fn name(&self) -> String {
        if self.rho == 2.0 {
            "time-quadratic".into()
        } else {
            format!("time-poly-{}", self.rho)
        }
    }
    fn times(&self, s: &dyn NoiseSchedule, steps: usize) -> Result<Vec<f64>> {
        check_steps(steps)?;
        if !(self.rho > 0.0) {
            return invalid(format!(
                "polynomial exponent must be positive, got {}",
                self.rho
            ));
        }
        let (hi, lo) = (s.t_max(), s.t_min());
        Ok((0..=steps)
            .map(|i| lo + (hi - lo) * ((steps - i) as f64 / steps as f64).powf(self.rho))
            .collect())
    }
}

/// Uniform in the half log-SNR λ (geometric in σ for EDM).
#[derive(Clone, Copy, Debug, Default)]
pub struct LogSnrUniform;

impl StepSchedule for LogSnrUniform {
    fn name(&self) -> String {
        "logsnr".into()
    }
    fn times(&self, s: &dyn NoiseSchedule, steps: usize) -> Result<Vec<f64>> {
        check_steps(steps)?;
        let (l0, l1) = (s.lambda_min(), s.lambda_max());
        Ok(endpoints_exact(
            s,
            (0..=steps).map(|i| s.t_from_lambda(l0 + (l1 - l0) * i as f64 / steps as f64)),
        ))
    }
}

/// Karras et al. (2022) ρ-spacing in the model's EDM σ = σ/α (ρ = 7 by default):
/// σ_i = (σ_max^{1/ρ} + (i/N)(σ_min^{1/ρ} − σ_max^{1/ρ}))^ρ.
#[derive(Clone, Copy, Debug)]
pub struct Karras {
    /// ρ (EDM uses 7).
    pub rho: f64,
}

impl Default for Karras {
    fn default() -> Self {
        Self { rho: 7.0 }
    }
}

impl StepSchedule for Karras {
    fn name(&self) -> String {
        "edm".into()
    }
    fn times(&self, s: &dyn NoiseSchedule, steps: usize) -> Result<Vec<f64>> {
        check_steps(steps)?;
        if !(self.rho > 0.0) {
            return invalid(format!("Karras rho must be positive, got {}", self.rho));
        }
        let inv = 1.0 / self.rho;
        let (a, b) = (
            s.edm_sigma(s.t_max()).powf(inv),
            s.edm_sigma(s.t_min()).powf(inv),
        );
        Ok(endpoints_exact(
            s,
            (0..=steps).map(|i| {
                s.t_from_edm_sigma((a + (b - a) * i as f64 / steps as f64).powf(self.rho))
            }),
        ))
    }
}

/// The LD3 code's `edm` spacing for VP models: Karras' ρ-formula applied to t itself
/// (a quirk kept for comparison with the official code; equal to [`Karras`] for EDM).
#[derive(Clone, Copy, Debug)]
pub struct KarrasInTime {
    /// ρ (7 in the official code).
    pub rho: f64,
}

impl StepSchedule for KarrasInTime {
    fn name(&self) -> String {
        "time-edm".into()
    }
    fn times(&self, s: &dyn NoiseSchedule, steps: usize) -> Result<Vec<f64>> {
        check_steps(steps)?;
        let inv = 1.0 / self.rho;
        let (a, b) = (s.t_max().powf(inv), s.t_min().powf(inv));
        Ok((0..=steps)
            .map(|i| (a + (b - a) * i as f64 / steps as f64).powf(self.rho))
            .collect())
    }
}

/// Replaces the first and last computed times by the schedule's exact endpoints.
fn endpoints_exact(s: &dyn NoiseSchedule, times: impl Iterator<Item = f64>) -> Vec<f64> {
    let mut t: Vec<f64> = times.collect();
    let n = t.len() - 1;
    t[0] = s.t_max();
    t[n] = s.t_min();
    t
}

/// An explicit list of N+1 solver times or of EDM sigmas (σ/α), decreasing.
#[derive(Clone, Debug)]
pub enum Explicit {
    /// Times in the model's own variable.
    Times(Vec<f64>),
    /// EDM sigmas σ/α, converted to times with the model's schedule.
    Sigmas(Vec<f64>),
}

impl StepSchedule for Explicit {
    fn name(&self) -> String {
        match self {
            Self::Times(_) => "explicit-times".into(),
            Self::Sigmas(_) => "explicit-sigmas".into(),
        }
    }
    fn times(&self, s: &dyn NoiseSchedule, steps: usize) -> Result<Vec<f64>> {
        check_steps(steps)?;
        let (list, what) = match self {
            Self::Times(t) => (t, "times"),
            Self::Sigmas(sg) => (sg, "sigmas"),
        };
        if list.len() != steps + 1 {
            return invalid(format!(
                "the explicit list has {} {what} but {steps} steps need {} (N+1)",
                list.len(),
                steps + 1
            ));
        }
        let times: Vec<f64> = match self {
            Self::Times(t) => t.clone(),
            Self::Sigmas(sg) => {
                if let Some(bad) = sg.iter().find(|v| !(**v > 0.0 && v.is_finite())) {
                    return invalid(format!("sigmas must be positive and finite, found {bad}"));
                }
                let (lo, hi) = (s.t_min(), s.t_max());
                // σ → t round-off must not move the ends off the time range's endpoints.
                let snap = |t: f64| {
                    if (t - hi).abs() <= 1e-9 * hi {
                        hi
                    } else if (t - lo).abs() <= 1e-9 * lo {
                        lo
                    } else {
                        t
                    }
                };
                sg.iter().map(|v| snap(s.t_from_edm_sigma(*v))).collect()
            }
        };
        check_times(s, &times)?;
        Ok(times)
    }
}

/// How far, relative to the end point, times may stray outside [t_min, t_max] (round-off of
/// time conversions, finite-difference probes); anything further is an error.
pub const TIME_RANGE_SLACK: f64 = 1e-4;

/// Whether `t` lies in the time range of `s` (with [`TIME_RANGE_SLACK`]).
pub fn in_time_range(s: &dyn NoiseSchedule, t: f64) -> bool {
    t.is_finite()
        && t >= s.t_min() * (1.0 - TIME_RANGE_SLACK)
        && t <= s.t_max() * (1.0 + TIME_RANGE_SLACK)
}

/// Checks that `times` are finite, strictly decreasing and inside [t_min, t_max] of `s`
/// (up to a relative [`TIME_RANGE_SLACK`]).
pub fn check_times(s: &dyn NoiseSchedule, times: &[f64]) -> Result<()> {
    if times.len() < 2 {
        return invalid(format!(
            "a schedule needs at least 2 times (1 step), got {}",
            times.len()
        ));
    }
    if let Some((i, v)) = times.iter().enumerate().find(|(_, v)| !v.is_finite()) {
        return invalid(format!("time t_{i} = {v} is not finite"));
    }
    if let Some(i) = (1..times.len()).find(|&i| !(times[i] < times[i - 1])) {
        return invalid(format!(
            "times must decrease strictly from noise to data, but t_{} = {} is not below t_{} = {} \
             (list them from t_max down to t_min)",
            i,
            times[i],
            i - 1,
            times[i - 1]
        ));
    }
    let (lo, hi) = (s.t_min(), s.t_max());
    let slack = TIME_RANGE_SLACK;
    if times[0] > hi * (1.0 + slack) || *times.last().unwrap() < lo * (1.0 - slack) {
        return invalid(format!(
            "times {}..{} leave the model's time range [{lo}, {hi}]; stay inside it",
            times[0],
            times.last().unwrap()
        ));
    }
    Ok(())
}

/// Log-linear interpolation of a decreasing σ list to `steps` + 1 points (as in
/// "Align Your Steps"): log σ interpolated linearly over the list's normalised index.
pub fn log_linear_interpolate(sigmas: &[f64], steps: usize) -> Vec<f64> {
    let m = sigmas.len() - 1;
    (0..=steps)
        .map(|i| {
            let x = i as f64 / steps as f64 * m as f64;
            let k = (x.floor() as usize).min(m - 1);
            let w = x - k as f64;
            ((1.0 - w) * sigmas[k].ln() + w * sigmas[k + 1].ln()).exp()
        })
        .collect()
}

/// Published step presets for Stable Diffusion's σ range, as EDM sigmas σ/α.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Preset {
    /// GITS (Chen et al. 2024) steps for DPM-Solver++ family solvers (DPM-Solver++, UniPC, DDIM,
    /// Euler, Heun), NFE 3–11, as listed in the LD3 code.
    GitsDpmSolver,
    /// GITS steps for iPNDM, NFE 3–11, as listed in the LD3 code.
    GitsIpndm,
    /// Align Your Steps (Sabour et al. 2024) 10-step list for Stable Diffusion 1.5.
    AysSd15,
    /// Align Your Steps 10-step list for SDXL.
    AysSdxl,
}

const GITS_DPM: [&[f64]; 9] = [
    &[14.6146, 1.5286, 0.4936, 0.0292],
    &[14.6146, 3.1131, 1.0421, 0.3811, 0.0292],
    &[14.6146, 4.3900, 1.4467, 0.6114, 0.2255, 0.0292],
    &[14.6146, 4.3900, 1.8073, 0.8319, 0.3811, 0.1258, 0.0292],
    &[
        14.6146, 4.39, 2.0267, 1.0421, 0.5712, 0.3058, 0.1258, 0.0292,
    ],
    &[
        14.6146, 5.9489, 2.9183, 1.5286, 0.8811, 0.4936, 0.2667, 0.1258, 0.0292,
    ],
    &[
        14.6146, 6.4477, 3.1131, 1.7083, 1.0421, 0.6526, 0.4183, 0.2667, 0.1258, 0.0292,
    ],
    &[
        14.6146, 7.6188, 4.0861, 2.4211, 1.4467, 0.9324, 0.6114, 0.3811, 0.2255, 0.1258, 0.0292,
    ],
    &[
        14.6146, 7.0019, 3.8092, 2.2797, 1.5286, 1.0421, 0.7391, 0.4936, 0.3437, 0.2255, 0.1258,
        0.0292,
    ],
];

const GITS_IPNDM: [&[f64]; 9] = [
    &[14.6146, 1.7083, 0.532, 0.0292],
    &[14.6146, 3.1131, 1.0421, 0.3811, 0.0292],
    &[14.6146, 4.39, 1.5286, 0.6526, 0.2667, 0.0292],
    &[14.6146, 4.7242, 1.9132, 0.9324, 0.4557, 0.1801, 0.0292],
    &[
        14.6146, 6.4477, 2.2797, 1.1629, 0.6114, 0.3058, 0.1258, 0.0292,
    ],
    &[
        14.6146, 6.4477, 2.7391, 1.4467, 0.8319, 0.4936, 0.2667, 0.1258, 0.0292,
    ],
    &[
        14.6146, 6.4477, 3.3251, 1.9132, 1.1629, 0.7391, 0.4557, 0.2667, 0.1258, 0.0292,
    ],
    &[
        14.6146, 5.9489, 3.3251, 2.0267, 1.2969, 0.8319, 0.5712, 0.3811, 0.2255, 0.1258, 0.0292,
    ],
    &[
        14.6146, 6.4477, 3.8092, 2.2797, 1.5286, 1.0421, 0.7391, 0.4936, 0.3437, 0.2255, 0.1258,
        0.0292,
    ],
];

const AYS_SD15: [f64; 11] = [
    14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.029,
];
const AYS_SDXL: [f64; 11] = [
    14.615, 6.315, 3.771, 2.181, 1.342, 0.862, 0.555, 0.380, 0.234, 0.113, 0.029,
];

impl Preset {
    /// The published σ list for `steps` steps: the list itself where one exists for that step
    /// count, otherwise the list with the nearest step count, log-linearly interpolated.
    pub fn sigmas(&self, steps: usize) -> Result<Vec<f64>> {
        check_steps(steps)?;
        let table: Vec<&[f64]> = match self {
            Self::GitsDpmSolver => GITS_DPM.to_vec(),
            Self::GitsIpndm => GITS_IPNDM.to_vec(),
            Self::AysSd15 => vec![&AYS_SD15[..]],
            Self::AysSdxl => vec![&AYS_SDXL[..]],
        };
        let nearest = table
            .iter()
            .min_by_key(|l| (l.len() as i64 - 1 - steps as i64).abs())
            .expect("preset tables are not empty");
        if nearest.len() == steps + 1 {
            Ok(nearest.to_vec())
        } else {
            Ok(log_linear_interpolate(nearest, steps))
        }
    }
}

impl StepSchedule for Preset {
    fn name(&self) -> String {
        match self {
            Self::GitsDpmSolver => "gits-dpm-solver".into(),
            Self::GitsIpndm => "gits-ipndm".into(),
            Self::AysSd15 => "ays-sd15".into(),
            Self::AysSdxl => "ays-sdxl".into(),
        }
    }
    /// The preset's σ list (made for SD v1's σ range [0.0292, 14.6146]) is stretched in log σ onto
    /// the model's own [σ_min, σ_max] — an identity for SD-range models — and mapped to times.
    fn times(&self, s: &dyn NoiseSchedule, steps: usize) -> Result<Vec<f64>> {
        let sigmas = self.sigmas(steps)?;
        let (p_hi, p_lo) = (sigmas[0].ln(), sigmas[steps].ln());
        let (m_hi, m_lo) = (s.edm_sigma(s.t_max()).ln(), s.edm_sigma(s.t_min()).ln());
        Ok(endpoints_exact(
            s,
            sigmas.iter().map(|sg| {
                let u = (sg.ln() - p_lo) / (p_hi - p_lo);
                s.t_from_edm_sigma((m_lo + u * (m_hi - m_lo)).exp())
            }),
        ))
    }
}

/// The catalogue of hand-made step schedules: what `ld3 sample --schedule` chooses from, what a
/// learned schedule is compared with and may start from, and what the tests run.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum HandMade {
    /// [`TimeUniform`].
    TimeUniform,
    /// [`TimePolynomial`] with ρ = 2 (LD3's time_quadratic).
    TimeQuadratic,
    /// [`LogSnrUniform`].
    LogSnr,
    /// [`Karras`] with this ρ (EDM: 7).
    Edm {
        /// ρ.
        rho: f64,
    },
    /// [`KarrasInTime`] with this ρ.
    TimeEdm {
        /// ρ.
        rho: f64,
    },
    /// The GITS preset of the solver ([`Preset::GitsIpndm`] for iPNDM, else
    /// [`Preset::GitsDpmSolver`]).
    Gits,
    /// [`Preset::AysSd15`].
    AysSd15,
    /// [`Preset::AysSdxl`].
    AysSdxl,
}

impl HandMade {
    /// The schedules a learned one is compared with (and may start from), in report order.
    pub const COMPARED: [HandMade; 6] = [
        Self::TimeUniform,
        Self::TimeQuadratic,
        Self::LogSnr,
        Self::Edm { rho: 7.0 },
        Self::TimeEdm { rho: 7.0 },
        Self::Gits,
    ];

    /// Every schedule of the catalogue, with its default parameters: the compared ones and the
    /// Align-Your-Steps lists.
    pub fn all() -> Vec<HandMade> {
        let mut all = Self::COMPARED.to_vec();
        all.extend([Self::AysSd15, Self::AysSdxl]);
        all
    }

    /// The rule for `solver`.
    pub fn rule(self, solver: SolverName) -> Box<dyn StepSchedule> {
        match self {
            Self::TimeUniform => Box::new(TimeUniform),
            Self::TimeQuadratic => Box::new(TimePolynomial { rho: 2.0 }),
            Self::LogSnr => Box::new(LogSnrUniform),
            Self::Edm { rho } => Box::new(Karras { rho }),
            Self::TimeEdm { rho } => Box::new(KarrasInTime { rho }),
            Self::Gits => Box::new(if solver == SolverName::Ipndm {
                Preset::GitsIpndm
            } else {
                Preset::GitsDpmSolver
            }),
            Self::AysSd15 => Box::new(Preset::AysSd15),
            Self::AysSdxl => Box::new(Preset::AysSdxl),
        }
    }
}

/// The hand-made schedules a learned schedule for `solver` is compared with
/// ([`HandMade::COMPARED`]).
pub fn hand_made(solver: SolverName) -> Vec<Box<dyn StepSchedule>> {
    HandMade::COMPARED.iter().map(|h| h.rule(solver)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::noise::{BetaSchedule, Edm, VpDiscrete};
    use proptest::prelude::*;

    fn all_rules() -> Vec<Box<dyn StepSchedule>> {
        let mut rules: Vec<_> = HandMade::all()
            .iter()
            .map(|h| h.rule(SolverName::DpmSolverPp))
            .collect();
        rules.push(HandMade::Gits.rule(SolverName::Ipndm));
        rules
    }

    fn sd() -> VpDiscrete {
        VpDiscrete::from_betas(BetaSchedule::ScaledLinear, 0.00085, 0.012, 1000).unwrap()
    }

    proptest! {
        #[test]
        fn every_rule_is_monotone_with_exact_endpoints(steps in 1usize..60, edm in any::<bool>()) {
            let s: Box<dyn NoiseSchedule> = if edm { Box::new(Edm::default()) } else { Box::new(sd()) };
            for rule in all_rules() {
                let t = rule.times(s.as_ref(), steps).unwrap();
                prop_assert_eq!(t.len(), steps + 1);
                prop_assert!((t[0] - s.t_max()).abs() <= 1e-9 * s.t_max(), "{} t0={}", rule.name(), t[0]);
                prop_assert!((t[steps] - s.t_min()).abs() <= 1e-9 * s.t_max(), "{} tN={}", rule.name(), t[steps]);
                check_times(s.as_ref(), &t).unwrap();
            }
        }

        #[test]
        fn interpolation_keeps_ends_and_order(len in 2usize..15, steps in 1usize..40, seed in 0u64..1000) {
            let mut sigmas: Vec<f64> = (0..len).map(|i| 10f64.powf(1.0 - 3.0 * i as f64 / (len - 1) as f64
                + 0.2 * ((seed as f64 + i as f64).sin()) / len as f64)).collect();
            sigmas.sort_by(|a, b| b.partial_cmp(a).unwrap());
            sigmas.dedup();
            prop_assume!(sigmas.len() >= 2);
            let out = log_linear_interpolate(&sigmas, steps);
            prop_assert_eq!(out.len(), steps + 1);
            prop_assert!((out[0] - sigmas[0]).abs() < 1e-12 * sigmas[0]);
            prop_assert!((out[steps] - sigmas[sigmas.len() - 1]).abs() < 1e-12);
            prop_assert!(out.windows(2).all(|w| w[1] < w[0]));
            // Interpolating to the list's own length gives the list back.
            let same = log_linear_interpolate(&sigmas, sigmas.len() - 1);
            for (a, b) in same.iter().zip(&sigmas) { prop_assert!((a - b).abs() < 1e-12 * b); }
        }
    }

    #[test]
    fn logsnr_is_geometric_in_sigma_for_edm() {
        let t = LogSnrUniform.times(&Edm::default(), 4).unwrap();
        let r: Vec<f64> = t.windows(2).map(|w| w[0] / w[1]).collect();
        for x in &r {
            assert!((x - r[0]).abs() < 1e-9);
        }
    }

    #[test]
    fn karras_matches_edm_formula_and_time_edm_for_edm() {
        let edm = Edm::default();
        let a = Karras::default().times(&edm, 18).unwrap();
        let b = KarrasInTime { rho: 7.0 }.times(&edm, 18).unwrap();
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() < 1e-9 * x);
        }
        // EDM's σ_1 for 18 steps (Karras et al.'s default grid), computed from the formula.
        let s1 = (80f64.powf(1.0 / 7.0)
            + (0.002f64.powf(1.0 / 7.0) - 80f64.powf(1.0 / 7.0)) / 18.0)
            .powi(7);
        assert!((a[1] - s1).abs() < 1e-9);
    }

    #[test]
    fn presets_are_exact_on_sd_and_listed_lengths() {
        let s = sd();
        let t = Preset::GitsDpmSolver.times(&s, 4).unwrap();
        let sg: Vec<f64> = t.iter().map(|t| s.edm_sigma(*t)).collect();
        for (a, b) in sg[1..4].iter().zip([3.1131, 1.0421, 0.3811]) {
            assert!((a / b - 1.0).abs() < 1e-3, "{a} vs {b}");
        }
        assert_eq!(Preset::AysSd15.sigmas(10).unwrap(), AYS_SD15.to_vec());
        assert_eq!(Preset::GitsIpndm.sigmas(7).unwrap().len(), 8);
        assert_eq!(Preset::AysSdxl.sigmas(25).unwrap().len(), 26);
    }

    #[test]
    fn explicit_lists_are_checked() {
        let s = Edm::default();
        let err = Explicit::Times(vec![80.0, 1.0, 2.0, 0.002])
            .times(&s, 3)
            .unwrap_err();
        assert!(err.to_string().contains("decrease strictly"), "{err}");
        let err = Explicit::Times(vec![80.0, 0.002]).times(&s, 3).unwrap_err();
        assert!(err.to_string().contains("N+1"), "{err}");
        let err = Explicit::Times(vec![100.0, 1.0, 0.002])
            .times(&s, 2)
            .unwrap_err();
        assert!(err.to_string().contains("time range"), "{err}");
        let ok = Explicit::Sigmas(vec![80.0, 1.0, 0.002])
            .times(&s, 2)
            .unwrap();
        assert_eq!((ok[0], ok[2]), (80.0, 0.002));
        assert!((ok[1] - 1.0).abs() < 1e-12);
    }
}
