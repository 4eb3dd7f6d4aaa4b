//! The report of a run: the held-out table (the learned and every hand-made schedule against the
//! teacher on pairs no training saw) and the held-out samples, decoded.

use candle_core::Tensor;
use ld3_models::{Denoiser, DenoiserPredictor};
use ld3_solvers::steps::StepSchedule;
use ld3_solvers::{Result, Solver, Times};
use serde::Serialize;

use super::config::{mean, median};
use crate::teacher::TeacherPairs;
use crate::Distance;

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

/// The held-out table and its samples.
pub(crate) struct Heldout {
    /// One row per schedule: `ld3`, then the hand-made ones.
    pub table: Vec<TableRow>,
    /// `teacher`, then one entry per row, decoded.
    pub samples: Vec<(String, Tensor)>,
}

/// The held-out table and samples: `teacher` first, then `ld3` (times `learned`) and each of
/// `hand_made`, all decoded, from the held-out pairs' noise and conditioning.
pub(crate) fn heldout_table(
    model: &dyn Denoiser,
    solver: &dyn Solver,
    steps: usize,
    distance: &dyn Distance,
    heldout: &TeacherPairs,
    learned: (&[f64], &[f64]),
    hand_made: &[Box<dyn StepSchedule>],
) -> Result<Heldout> {
    let schedule = model.noise_schedule();
    let target = model.decode(&heldout.target)?;
    let mut samples = vec![("teacher".to_string(), target.clone())];
    let predictor = DenoiserPredictor::with_conditioning(model, heldout.cond.clone());
    let x_t = (&heldout.noise * schedule.prior_scale())?;
    let mut row = |name: String, t: &[f64], t_net: &[f64]| -> Result<TableRow> {
        let times = Times::from_f64(t, t_net, model.device())?;
        let out = ld3_solvers::sample(solver, &predictor, &x_t, &times, None)?;
        let decoded = model.decode(&out.x)?;
        let losses: Vec<f64> = distance.per_sample(&decoded, &target)?.to_vec1()?;
        samples.push((name.clone(), decoded));
        Ok(TableRow {
            schedule: name,
            mean: mean(&losses),
            median: median(&losses),
        })
    };
    let mut table = vec![row("ld3".into(), learned.0, learned.1)?];
    for rule in hand_made {
        let t = rule.times(schedule, steps)?;
        table.push(row(rule.name(), &t, &t)?);
    }
    Ok(Heldout { table, samples })
}
