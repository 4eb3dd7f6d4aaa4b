//! One LD3 iteration — Algorithm 1 of the paper — and the moves of the validation starts: the
//! learning itself, with the run directory, the log and the report kept outside.

use candle_core::{Device, Tensor};
use ld3_models::Conditioning;
use ld3_solvers::{Error, Result};

use super::config::{mean, TrainConfig};
use super::run_dir::{Best, State};
use crate::ball;
use crate::grad::{Backprop, LossAndGrads, Problem};
use crate::optim::{clip_grad_norm, Sgd};

/// A training batch: pairs (x_T, x_0*) with their conditioning, and the students' starts x'_T.
pub(crate) struct Batch {
    /// The pairs' indices among the training pairs (u32 [B]).
    pub idx: Tensor,
    /// x'_T: the students' starts (standard-normal space).
    pub starts: Tensor,
    /// x_T: the balls' centres, the teacher's noise.
    pub centre: Tensor,
    /// x_0*: the teacher's outputs, decoded.
    pub target: Tensor,
    /// The pairs' conditioning.
    pub cond: Conditioning,
}

/// What an iteration that was not skipped reports.
pub(crate) struct Iterated {
    /// The batch's mean loss.
    pub loss: f64,
    /// The validation statistic after the step.
    pub valid: f64,
    /// The batch's starts after the projection and acceptance.
    pub starts: Tensor,
}

/// A batch's losses with the gradients in θ and ξ as numbers.
type Gradients = (LossAndGrads, Vec<f64>, Vec<f64>);

/// What every iteration of one run uses.
pub(crate) struct Ld3<'a> {
    /// The student solve and its distance.
    pub problem: Problem<'a>,
    /// The settings.
    pub config: &'a TrainConfig,
    /// Full graph or recomputation.
    pub backprop: Backprop,
    /// The ball radius r in z-space.
    pub radius: f64,
    /// Where θ, ξ and indices live (the model's device).
    pub device: Device,
    /// The validation pairs' conditioning and decoded teacher outputs.
    pub valid_cond: &'a Conditioning,
    pub valid_target: &'a Tensor,
}

/// Losses of candidate starts; where the model returned NaN the candidates are rejected.
fn reject_non_finite(losses: Result<Vec<f64>>, count: usize) -> Result<Vec<f64>> {
    match losses {
        Err(Error::NonFinite { .. }) => Ok(vec![f64::INFINITY; count]),
        other => other,
    }
}

impl Ld3<'_> {
    /// θ or ξ as a tensor on the model's device.
    pub fn tensor(&self, v: &[f64]) -> Result<Tensor> {
        Ok(Tensor::new(v, &self.device)?)
    }

    /// The validation statistic of θ, ξ with the validation students at `starts`; ∞ where the
    /// model returns NaN (such a schedule is never the best one).
    pub fn validate(&self, theta: &[f64], xi: &[f64], starts: &Tensor) -> Result<f64> {
        let (theta, xi) = (self.tensor(theta)?, self.tensor(xi)?);
        match self
            .problem
            .losses(&theta, &xi, starts, self.valid_cond, self.valid_target)
        {
            Ok(l) => Ok(self.config.validation.summarise(&l)),
            Err(Error::NonFinite { .. }) => Ok(f64::INFINITY),
            Err(e) => Err(e),
        }
    }

    /// One iteration of Algorithm 1 on `batch`; `None` when the loss or a gradient was not
    /// finite (the step is skipped and the best θ, ξ reloaded).
    pub fn iteration(
        &self,
        st: &mut State,
        batch: &Batch,
        valid_starts: &Tensor,
        joint: bool,
    ) -> Result<Option<Iterated>> {
        let c = self.config;
        // The students' solves from x'_T, their distance to the teacher's x_0*, and its
        // gradients in θ, ξ and x'_T.
        let Some((lg, mut g_theta, mut g_xi)) = self.loss_and_grads(st, batch)? else {
            st.reload_best();
            return Ok(None);
        };
        // A gradient step on θ (RMSprop) and, in joint rounds, on ξ (SGD), each clipped to 1.
        clip_grad_norm(&mut g_theta, 1.0);
        st.opt_theta.step(&mut st.theta, &g_theta);
        if joint {
            clip_grad_norm(&mut g_xi, 1.0);
            Sgd { lr: st.lr_xi }.step(&mut st.xi, &g_xi);
        }
        st.iteration += 1;
        // Validation: keep the best; after `patience` validations without improvement, back to
        // the best θ, ξ with decayed learning rates.
        let valid = self.validate(&st.theta, &st.xi, valid_starts)?;
        if valid < st.best.loss {
            st.best = Best {
                theta: st.theta.clone(),
                xi: st.xi.clone(),
                loss: valid,
            };
            st.counter = 0;
        } else {
            st.counter += 1;
        }
        if st.counter >= c.patience {
            st.counter = 0;
            st.reload_best();
            st.opt_theta.lr = (st.opt_theta.lr * c.decay).max(c.lr_theta_floor());
            if joint {
                st.lr_xi = (st.lr_xi * c.decay).max(c.lr_xi_floor());
                if st.lr_xi <= c.lr_xi_floor() {
                    st.xi_floor_hits += 1;
                }
            }
        }
        // Soft teacher forcing: x'_T steps down its gradient, is projected onto the ball
        // ‖x'_T − x_T‖ ≤ r, and the move is kept only where the loss (with the new θ, ξ) fell.
        let starts = self.move_starts(st, batch, &lg)?;
        Ok(Some(Iterated {
            loss: mean(&lg.per_sample),
            valid,
            starts,
        }))
    }

    /// The batch's loss and its gradients, `None` where anything is not finite.
    fn loss_and_grads(&self, st: &State, batch: &Batch) -> Result<Option<Gradients>> {
        let (theta, xi) = (self.tensor(&st.theta)?, self.tensor(&st.xi)?);
        let lg = match self.problem.loss_and_grads(
            &theta,
            &xi,
            &batch.starts,
            &batch.cond,
            &batch.target,
            self.backprop,
        ) {
            Ok(lg) => lg,
            Err(Error::NonFinite { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        let g_theta: Vec<f64> = lg.d_theta.to_vec1()?;
        let g_xi: Vec<f64> = lg.d_xi.to_vec1()?;
        let finite = lg
            .per_sample
            .iter()
            .chain(&g_theta)
            .chain(&g_xi)
            .all(|v| v.is_finite());
        Ok(finite.then_some((lg, g_theta, g_xi)))
    }

    /// The batch's starts (with gradient `lg.d_z`) moved by the shift learning rate, projected
    /// onto their balls, each kept where its loss fell (r = 0: unmoved).
    fn move_starts(&self, st: &State, batch: &Batch, lg: &LossAndGrads) -> Result<Tensor> {
        if self.radius <= 0.0 {
            return Ok(batch.starts.clone());
        }
        let moved = batch.starts.sub(&(&lg.d_z * st.shift_lr)?)?;
        let projected = ball::project(&moved, &batch.centre, self.radius)?;
        let (theta, xi) = (self.tensor(&st.theta)?, self.tensor(&st.xi)?);
        let new_losses = reject_non_finite(
            self.problem
                .losses(&theta, &xi, &projected, &batch.cond, &batch.target),
            batch.starts.dim(0)?,
        )?;
        let (kept, _) = ball::accept(&batch.starts, &projected, &lg.per_sample, &new_losses)?;
        Ok(kept)
    }

    /// After a round's iterations, the validation students move inside their balls too (θ, ξ
    /// frozen); when none moved, the shift learning rate halves.
    pub fn move_validation_starts(
        &self,
        st: &mut State,
        starts: &Tensor,
        centre: &Tensor,
    ) -> Result<Tensor> {
        let c = self.config;
        let n = starts.dim(0)?;
        let mut starts = starts.clone();
        let mut moved_any = false;
        let (theta, xi) = (self.tensor(&st.theta)?, self.tensor(&st.xi)?);
        for start in (0..n).step_by(c.batch_size) {
            let len = c.batch_size.min(n - start);
            let z_prime = starts.narrow(0, start, len)?;
            let target = self.valid_target.narrow(0, start, len)?;
            let cond = self.valid_cond.narrow(start, len)?;
            let lg = match self.problem.loss_and_grads(
                &theta,
                &xi,
                &z_prime,
                &cond,
                &target,
                self.backprop,
            ) {
                Ok(lg) if lg.per_sample.iter().all(|v| v.is_finite()) => lg,
                Ok(_) | Err(Error::NonFinite { .. }) => continue,
                Err(e) => return Err(e),
            };
            let z_new = z_prime.sub(&(lg.d_z * st.shift_lr)?)?;
            let projected = ball::project(&z_new, &centre.narrow(0, start, len)?, self.radius)?;
            let new_losses = reject_non_finite(
                self.problem.losses(&theta, &xi, &projected, &cond, &target),
                len,
            )?;
            let (kept, moved) = ball::accept(&z_prime, &projected, &lg.per_sample, &new_losses)?;
            moved_any |= moved.iter().any(|m| *m);
            let idx = Tensor::arange(start as u32, (start + len) as u32, &self.device)?;
            starts = starts.index_add(&idx, &kept.sub(&z_prime)?, 0)?;
        }
        if !moved_any {
            st.shift_lr *= 0.5;
        }
        Ok(starts)
    }
}
