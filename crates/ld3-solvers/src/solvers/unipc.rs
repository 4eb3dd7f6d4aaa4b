//! UniPC with data prediction (Zhao et al. 2023, arXiv 2302.04867, Alg. 2–3 with B(h) of §3.3):
//! UniP predictor of order k, UniC corrector (on every step but the last), bh1/bh2.

use super::{
    constant, lin, multistep_order, scale, solve_small, Evaluator, Grid, Solver, SolverConfig,
    SolverName, SolverState, SolverVariant, Target,
};
use crate::error::Result;

/// UniPC-k: with r_j = (λ_{i−j} − λ_i)/h, D_j = (m_j − m_0)/r_j, x̃ = (σ_t/σ_s)x − α_t(e^{−h} − 1)m_0:
/// predictor x^p = x̃ − α_t·B·Σ ρ^p_j D_j; corrector x_t = x̃ − α_t·B·(Σ ρ^c_j D_j + ρ^c_k(m_t − m_0)),
/// where R·ρ = b, R_{nj} = r_j^n, b_n = n!·g_n/B, g_1 = (e^{−h} − 1)/(−h) − 1, g_{n+1} = g_n/(−h) − 1/(n+1)!.
#[derive(Clone, Copy, Debug)]
pub struct UniPc {
    order: usize,
    variant: SolverVariant,
}

impl UniPc {
    /// UniPC of order 1–3 with the given B(h) ([`SolverVariant::Bh1`] or [`SolverVariant::Bh2`]).
    pub fn new(order: usize, variant: SolverVariant) -> Result<Self> {
        let order = SolverName::UniPc.check_order(order)?;
        let variant = SolverName::UniPc.check_variant(variant)?;
        Ok(Self { order, variant })
    }
}

impl Solver for UniPc {
    fn config(&self) -> SolverConfig {
        SolverConfig {
            solver: SolverName::UniPc,
            order: self.order,
            variant: Some(self.variant),
        }
    }
    fn target(&self) -> Target {
        Target::Data
    }
    fn step(
        &self,
        eval: &Evaluator,
        g: &Grid,
        s: &SolverState,
        i: usize,
        n: usize,
    ) -> Result<SolverState> {
        let k = multistep_order(self.order, i, n);
        let h = g.h(i, i + 1)?;
        let hh = h.neg()?;
        let phi = hh.exp()?.affine(1.0, -1.0)?;
        let b_h = if self.variant == SolverVariant::Bh1 {
            hh.clone()
        } else {
            phi.clone()
        };
        let one = constant(1.0, &h)?;
        // r_1..r_{k−1} from the history, then r_k = 1; D_j = (m_j − m_0)/r_j.
        let m0 = s.newest();
        let mut r = Vec::with_capacity(k);
        let mut d = Vec::with_capacity(k);
        for j in 1..k {
            let (ij, mj) = s.back(j);
            let rj = g.h(i, ij)?.div(&h)?;
            d.push(lin(&[(&rj.recip()?, mj), (&rj.recip()?.neg()?, m0)])?);
            r.push(rj);
        }
        r.push(one.clone());
        // b_n = n!·g_n/B for n = 1..k.
        let mut b = Vec::with_capacity(k);
        let (mut g_n, mut factorial) = (phi.div(&hh)?.affine(1.0, -1.0)?, 1.0);
        for n in 1..=k {
            b.push(g_n.affine(factorial, 0.0)?.div(&b_h)?);
            factorial *= (n + 1) as f64;
            g_n = g_n.div(&hh)?.affine(1.0, -1.0 / factorial)?;
        }
        // R[n][j] = r_j^n.
        let powers = |size: usize| -> Result<Vec<Vec<_>>> {
            let mut rows = vec![vec![one.clone(); size]];
            for p in 1..size {
                let row = (0..size).map(|j| Ok(rows[p - 1][j].mul(&r[j])?));
                rows.push(row.collect::<Result<_>>()?);
            }
            Ok(rows)
        };
        let alpha_t = g.alpha(i + 1)?;
        let a_b = alpha_t.mul(&b_h)?;
        let keep_x = g.sigma(i + 1)?.div(&g.sigma(i)?)?;
        let x_tilde = lin(&[(&keep_x, &s.x), (&alpha_t.mul(&phi)?.neg()?, m0)])?;
        let rho_p = match k {
            1 => vec![],
            2 => vec![constant(0.5, &h)?],
            _ => solve_small(&powers(k - 1)?, &b[..k - 1])?,
        };
        let x_pred = if k == 1 {
            x_tilde.clone()
        } else {
            let terms: Vec<_> = rho_p.iter().zip(&d).collect();
            x_tilde.sub(&scale(&a_b, &lin(&terms)?)?)?
        };
        if i + 1 == n {
            return Ok(SolverState {
                x: x_pred,
                history: s.history.clone(),
            });
        }
        // Corrector with the model at the predictor point, which also feeds the next step.
        let m_t = eval.at(&x_pred, i + 1, Target::Data)?;
        let rho_c = match k {
            1 => vec![constant(0.5, &h)?],
            _ => solve_small(&powers(k)?, &b)?,
        };
        let d_t = m_t.sub(m0)?;
        let mut terms: Vec<_> = rho_c[..k - 1].iter().zip(&d).collect();
        terms.push((&rho_c[k - 1], &d_t));
        let x_next = x_tilde.sub(&scale(&a_b, &lin(&terms)?)?)?;
        let mut history = s.history.clone();
        history.push((i + 1, m_t));
        let drop = history.len().saturating_sub(self.order);
        history.drain(..drop);
        Ok(SolverState { x: x_next, history })
    }
}
