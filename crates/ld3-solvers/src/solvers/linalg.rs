//! The small linear algebra of multistep updates, on rank-0 tensors so that every coefficient
//! stays differentiable in the time steps.

use candle_core::Tensor;

use crate::error::{invalid, Result};

/// c·x for a rank-0 coefficient `c` (cast to x's dtype).
pub(crate) fn scale(c: &Tensor, x: &Tensor) -> Result<Tensor> {
    Ok(x.broadcast_mul(&c.to_dtype(x.dtype())?)?)
}

/// Σ c_k·x_k.
pub(crate) fn lin(terms: &[(&Tensor, &Tensor)]) -> Result<Tensor> {
    let mut acc = scale(terms[0].0, terms[0].1)?;
    for (c, x) in &terms[1..] {
        acc = acc.add(&scale(c, x)?)?;
    }
    Ok(acc)
}

/// A rank-0 constant like `like`.
pub(crate) fn constant(v: f64, like: &Tensor) -> Result<Tensor> {
    Ok(Tensor::new(v, like.device())?.to_dtype(like.dtype())?)
}

/// Solves the n×n system (n ≤ 3) A·x = b of rank-0 tensors by Cramer's rule, differentiably.
pub(crate) fn solve_small(a: &[Vec<Tensor>], b: &[Tensor]) -> Result<Vec<Tensor>> {
    let n = b.len();
    let det_a = det(a)?;
    (0..n)
        .map(|col| {
            let replaced: Vec<Vec<Tensor>> = (0..n)
                .map(|r| {
                    (0..n)
                        .map(|c| {
                            if c == col {
                                b[r].clone()
                            } else {
                                a[r][c].clone()
                            }
                        })
                        .collect()
                })
                .collect();
            Ok(det(&replaced)?.div(&det_a)?)
        })
        .collect()
}

fn det(a: &[Vec<Tensor>]) -> Result<Tensor> {
    Ok(match a.len() {
        1 => a[0][0].clone(),
        2 => a[0][0].mul(&a[1][1])?.sub(&a[0][1].mul(&a[1][0])?)?,
        3 => {
            let minor = |r: usize, c: usize| -> Result<Tensor> {
                let m: Vec<Vec<Tensor>> = (0..3)
                    .filter(|&i| i != r)
                    .map(|i| {
                        (0..3)
                            .filter(|&j| j != c)
                            .map(|j| a[i][j].clone())
                            .collect()
                    })
                    .collect();
                det(&m)
            };
            a[0][0]
                .mul(&minor(0, 0)?)?
                .sub(&a[0][1].mul(&minor(0, 1)?)?)?
                .add(&a[0][2].mul(&minor(0, 2)?)?)?
        }
        n => {
            return invalid(format!(
                "internal: linear systems of size {n} are not supported"
            ))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn cramer_solves_small_systems() {
        let d = Device::Cpu;
        let t = |v: f64| Tensor::new(v, &d).unwrap();
        let a = vec![
            vec![t(2.0), t(1.0), t(-1.0)],
            vec![t(-3.0), t(-1.0), t(2.0)],
            vec![t(-2.0), t(1.0), t(2.0)],
        ];
        let x = solve_small(&a, &[t(8.0), t(-11.0), t(-3.0)]).unwrap();
        let x: Vec<f64> = x.iter().map(|v| v.to_scalar::<f64>().unwrap()).collect();
        for (got, want) in x.iter().zip([2.0, 3.0, -1.0]) {
            assert!((got - want).abs() < 1e-12);
        }
    }
}
