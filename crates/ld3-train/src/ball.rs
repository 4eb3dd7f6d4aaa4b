//! Soft teacher forcing's ball: each student start z' stays within radius r of its noise z (in
//! standard-normal z-space), moved by projected SGD with per-sample greedy acceptance
//! (LD3 paper Eq. 6).

use candle_core::{DType, Tensor};
use ld3_solvers::{Error, Result};

/// LD3's default radius r = γ·d/N² with γ = 0.001 (d = dimension of the diffusion state).
pub fn default_radius(dim: usize, steps: usize) -> f64 {
    0.001 * dim as f64 / (steps * steps) as f64
}

/// Per-sample L2 norms of a batch [B, ...] as numbers.
pub fn norms(x: &Tensor) -> Result<Vec<f64>> {
    Ok(x.to_dtype(DType::F64)?
        .flatten_from(1)?
        .sqr()?
        .sum(1)?
        .sqrt()?
        .to_vec1()?)
}

/// Projects each sample of `z_new` onto the ball of radius `radius` around its centre in `z`:
/// z + r·Δ/‖Δ‖ where ‖Δ‖ = ‖z_new − z‖ > r, unchanged inside.
pub fn project(z_new: &Tensor, z: &Tensor, radius: f64) -> Result<Tensor> {
    if !(radius >= 0.0 && radius.is_finite()) {
        return Err(Error::Invalid(format!(
            "the soft-teacher-forcing radius must be ≥ 0 and finite, got {radius} (0 = hard objective)"
        )));
    }
    if z_new.dims() != z.dims() {
        return Err(Error::Invalid(format!(
            "start points {:?} and ball centres {:?} differ in shape",
            z_new.dims(),
            z.dims()
        )));
    }
    let delta = z_new.sub(z)?;
    let factors: Vec<f64> = norms(&delta)?
        .into_iter()
        .map(|n| if n > radius { radius / n } else { 1.0 })
        .collect();
    let mut shape = vec![1; z.rank()];
    shape[0] = factors.len();
    let factors = Tensor::from_vec(factors, shape, z.device())?.to_dtype(z.dtype())?;
    Ok(z.add(&delta.broadcast_mul(&factors)?)?)
}

/// Keeps, per sample, the candidate where its loss is strictly lower, else the old point.
/// Returns the new points and which samples moved.
pub fn accept(
    old: &Tensor,
    candidate: &Tensor,
    loss_old: &[f64],
    loss_new: &[f64],
) -> Result<(Tensor, Vec<bool>)> {
    let b = old.dim(0)?;
    if loss_old.len() != b || loss_new.len() != b || candidate.dims() != old.dims() {
        return Err(Error::Invalid(format!(
            "acceptance needs one old and one new loss per sample: {b} samples, {} and {} losses",
            loss_old.len(),
            loss_new.len()
        )));
    }
    let moved: Vec<bool> = loss_new.iter().zip(loss_old).map(|(n, o)| n < o).collect();
    let mut shape = vec![1; old.rank()];
    shape[0] = b;
    let mask = Tensor::from_vec(
        moved.iter().map(|m| u8::from(*m)).collect::<Vec<_>>(),
        shape,
        old.device(),
    )?
    .broadcast_as(old.shape())?;
    Ok((mask.where_cond(candidate, old)?, moved))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use proptest::prelude::*;

    fn batch(v: &[f64], b: usize) -> Tensor {
        Tensor::from_vec(v.to_vec(), (b, v.len() / b), &Device::Cpu).unwrap()
    }

    #[test]
    fn default_radius_matches_the_paper() {
        assert!((default_radius(3 * 32 * 32, 4) - 0.192).abs() < 1e-12);
        assert!((default_radius(3 * 32 * 32, 10) - 0.03072).abs() < 1e-12);
    }

    proptest! {
        #[test]
        fn projection_lands_in_the_ball_and_is_idempotent(
            v in proptest::collection::vec(-3.0f64..3.0, 12),
            c in proptest::collection::vec(-3.0f64..3.0, 12),
            r in 0.0f64..2.0,
        ) {
            let (z_new, z) = (batch(&v, 3), batch(&c, 3));
            let p = project(&z_new, &z, r).unwrap();
            let before = norms(&z_new.sub(&z).unwrap()).unwrap();
            let after = norms(&p.sub(&z).unwrap()).unwrap();
            for (b, a) in before.iter().zip(&after) {
                prop_assert!(*a <= r * (1.0 + 1e-12) + 1e-15);
                if *b <= r { prop_assert!((a - b).abs() < 1e-12); }
            }
            let again = project(&p, &z, r).unwrap();
            let d: f64 = again.sub(&p).unwrap().abs().unwrap().max_all().unwrap().to_scalar().unwrap();
            prop_assert!(d < 1e-12);
            if r == 0.0 {
                let d: f64 = p.sub(&z).unwrap().abs().unwrap().max_all().unwrap().to_scalar().unwrap();
                prop_assert_eq!(d, 0.0);
            }
        }

        #[test]
        fn acceptance_never_raises_a_loss(
            lo in proptest::collection::vec(0.0f64..1.0, 4),
            ln in proptest::collection::vec(0.0f64..1.0, 4),
        ) {
            let old = batch(&[0.0; 8], 4);
            let cand = batch(&[1.0; 8], 4);
            let (kept, moved) = accept(&old, &cand, &lo, &ln).unwrap();
            let rows: Vec<Vec<f64>> = kept.to_vec2().unwrap();
            for i in 0..4 {
                let took = rows[i][0] == 1.0;
                prop_assert_eq!(took, moved[i]);
                let loss = if took { ln[i] } else { lo[i] };
                prop_assert!(loss <= lo[i]);
            }
        }
    }

    #[test]
    fn bad_radius_is_an_error() {
        let z = batch(&[0.0; 4], 2);
        let e = project(&z, &z, -1.0).unwrap_err();
        assert!(e.to_string().contains("radius"), "{e}");
    }
}
