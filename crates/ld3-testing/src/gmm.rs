//! Gaussian-mixture test cases on disk — a directory with `gmm.json`, `noise.safetensors`
//! (tensor `noise` [B, ...shape], standard normals) and `exact.json` (the exact ODE solutions
//! for that noise) — and the errors against the exact solution that judge a sampler on them.
//! A case can also be built on fresh noise from `gmm.json` alone ([`GmmFixture::fresh`],
//! [`GmmFixture::from_mixture`]), a near-exact numerical solution standing in for the exact one.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use ld3_solvers::{Error, Result};

use ld3_models::{Denoiser, DenoiserPredictor, GaussianMixture};

/// One test case.
#[derive(Clone, Debug)]
pub struct GmmFixture {
    /// The directory it was read from.
    pub dir: PathBuf,
    /// The mixture.
    pub gmm: GaussianMixture,
    /// The noise z [B, ...shape] (f64).
    pub noise: Tensor,
    /// The exact ODE solution at σ_min for each noise [B, ...shape] (f64) — or, for a case on
    /// fresh noise, the near-exact [`reference_solution`].
    pub exact_at_sigma_min: Tensor,
    /// All of `exact.json` (σ range, scale, the errors peers reach, ...); `Null` for a case on
    /// fresh noise.
    pub exact: serde_json::Value,
}

impl GmmFixture {
    /// Reads a test-case directory.
    pub fn load(dir: &Path) -> Result<Self> {
        let gmm = GaussianMixture::from_file(&dir.join("gmm.json"))?;
        let noise_path = dir.join("noise.safetensors");
        let noise = candle_core::safetensors::load(&noise_path, &Device::Cpu)
            .map_err(|e| Error::Invalid(format!("{}: {e}", noise_path.display())))?
            .remove("noise")
            .ok_or_else(|| {
                Error::Invalid(format!("{} has no tensor `noise`", noise_path.display()))
            })?
            .to_dtype(DType::F64)?;
        let exact_path = dir.join("exact.json");
        let text = std::fs::read_to_string(&exact_path).map_err(|source| Error::Io {
            path: exact_path.display().to_string(),
            cause: source,
        })?;
        let exact: serde_json::Value =
            serde_json::from_str(&text).map_err(|source| Error::Json {
                what: format!("{} is not JSON", exact_path.display()),
                cause: source,
            })?;
        let rows: Vec<Vec<f64>> = serde_json::from_value(exact["exact_at_sigma_min"].clone())
            .map_err(|source| Error::Json {
                what: format!(
                    "{}: \"exact_at_sigma_min\" must be one list of numbers per noise",
                    exact_path.display()
                ),
                cause: source,
            })?;
        let mut dims = vec![rows.len()];
        dims.extend_from_slice(gmm.sample_shape());
        if dims != noise.dims() {
            return Err(Error::Invalid(format!(
                "{}: {} exact solutions of the mixture's shape do not match the noise {:?}",
                exact_path.display(),
                rows.len(),
                noise.dims()
            )));
        }
        let exact_at_sigma_min = Tensor::from_vec(rows.concat(), dims, &Device::Cpu)
            .map_err(|e| Error::Invalid(format!("{}: {e}", exact_path.display())))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            gmm,
            noise,
            exact_at_sigma_min,
            exact,
        })
    }

    /// The same mixture on `n` fresh noises (standard normals from `seed`), with a near-exact
    /// reference in place of the exact solutions: DPM-Solver++(3M) at `reference_nfe` steps on
    /// log-SNR-uniform times (at 2000 it matches the fixtures' exact solutions to 4 decimals).
    /// Sixteen noises are few when two that switch mixture components decide an RMS error.
    pub fn fresh(&self, n: usize, seed: u64, reference_nfe: usize) -> Result<Self> {
        Self::with_reference(self.dir.clone(), self.gmm.clone(), n, seed, reference_nfe)
    }

    /// A case from a directory holding only a `gmm.json`: `n` noises from `seed` and the
    /// near-exact reference of [`GmmFixture::fresh`].
    pub fn from_mixture(dir: &Path, n: usize, seed: u64, reference_nfe: usize) -> Result<Self> {
        let gmm = GaussianMixture::from_file(&dir.join("gmm.json"))?;
        Self::with_reference(dir.to_path_buf(), gmm, n, seed, reference_nfe)
    }

    fn with_reference(
        dir: PathBuf,
        gmm: GaussianMixture,
        n: usize,
        seed: u64,
        reference_nfe: usize,
    ) -> Result<Self> {
        let noise = ld3_solvers::rng::standard_normal(
            seed,
            n,
            gmm.sample_shape(),
            DType::F64,
            &Device::Cpu,
        )?;
        Ok(Self {
            exact_at_sigma_min: reference_solution(&gmm, &noise, reference_nfe)?,
            noise,
            gmm,
            dir,
            exact: serde_json::Value::Null,
        })
    }

    /// [`reference_solution`] of this case's mixture.
    pub fn reference_solution(&self, z: &Tensor, nfe: usize) -> Result<Tensor> {
        reference_solution(&self.gmm, z, nfe)
    }

    /// `solver` on this case's noise with solver times `t` and network times `t_net` (in the
    /// mixture's time variable, first to last): the samples at the last time.
    pub fn solve(
        &self,
        solver: &dyn ld3_solvers::Solver,
        t: &[f64],
        t_net: &[f64],
    ) -> Result<Tensor> {
        solve(&self.gmm, &self.noise, solver, t, t_net)
    }

    /// The official LD3 code's learned schedule stored under `key` in the case's
    /// `official_ld3.json` (e.g. `ipndm-order3-nfe4`, `uni_pc-bh2-order2-nfe5`): its solver times
    /// and network times, or `None` where the case has no such entry.
    pub fn official_ld3(&self, key: &str) -> Result<Option<(Vec<f64>, Vec<f64>)>> {
        let path = self.dir.join("official_ld3.json");
        if !path.exists() {
            return Ok(None);
        }
        let all = read_json(&path)?;
        let Some(entry) = all.get(key) else {
            return Ok(None);
        };
        Ok(Some(learned_times(
            entry,
            &format!("{}: {key}.", path.display()),
        )?))
    }

    /// ‖x − x*‖/‖x*‖ over all samples, x* the exact solution at σ_min.
    pub fn relative_error(&self, x: &Tensor) -> Result<f64> {
        relative_error(x, &self.exact_at_sigma_min)
    }

    /// ‖x_b − x*_b‖/‖x*_b‖ for each sample b, in sample order.
    pub fn per_sample_relative_errors(&self, x: &Tensor) -> Result<Vec<f64>> {
        let sq =
            |t: &Tensor| -> Result<Vec<f64>> { Ok(t.sqr()?.flatten_from(1)?.sum(1)?.to_vec1()?) };
        let err = sq(&x.to_dtype(DType::F64)?.sub(&self.exact_at_sigma_min)?)?;
        let norm = sq(&self.exact_at_sigma_min)?;
        Ok(err.iter().zip(&norm).map(|(e, n)| (e / n).sqrt()).collect())
    }

    /// The median of [`GmmFixture::per_sample_relative_errors`] (a few samples that switch
    /// mixture components dominate the RMS error; the median shows the rest).
    pub fn median_relative_error(&self, x: &Tensor) -> Result<f64> {
        let mut r = self.per_sample_relative_errors(x)?;
        r.sort_by(|a, b| a.total_cmp(b));
        let k = r.len();
        Ok(0.5 * (r[(k - 1) / 2] + r[k / 2]))
    }
}

/// One run of the official LD3 code as `fixtures/gen/official_ld3_gmm.py` writes it (the files
/// of `fixtures/official-ld3/`): its learned solver times `t_steps` and network times `tc_steps`.
pub fn official_ld3_run(path: &Path) -> Result<(Vec<f64>, Vec<f64>)> {
    learned_times(&read_json(path)?, &format!("{}: ", path.display()))
}

fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.display().to_string(),
        cause: source,
    })?;
    serde_json::from_str(&text).map_err(|source| Error::Json {
        what: format!("{} is not JSON", path.display()),
        cause: source,
    })
}

/// `t_steps` and `tc_steps` of an official run's record (`at`: where, for errors).
fn learned_times(entry: &serde_json::Value, at: &str) -> Result<(Vec<f64>, Vec<f64>)> {
    let times = |k: &str| -> Result<Vec<f64>> {
        serde_json::from_value(entry[k].clone()).map_err(|source| Error::Json {
            what: format!("{at}{k} must be a list of numbers"),
            cause: source,
        })
    };
    Ok((times("t_steps")?, times("tc_steps")?))
}

/// ‖x − x*‖ / ‖x*‖ over the whole batch, in f64.
pub fn relative_error(x: &Tensor, exact: &Tensor) -> Result<f64> {
    let exact = exact.to_dtype(DType::F64)?;
    let err: f64 = x
        .to_dtype(DType::F64)?
        .sub(&exact)?
        .sqr()?
        .sum_all()?
        .to_scalar()?;
    let norm: f64 = exact.sqr()?.sum_all()?.to_scalar()?;
    Ok((err / norm).sqrt())
}

/// The solver of [`reference_solution`]: DPM-Solver++(3M) in its Taylor form.
pub fn reference_solver() -> Result<ld3_solvers::SolverConfig> {
    ld3_solvers::SolverConfig::new(
        ld3_solvers::SolverName::DpmSolverPp,
        Some(3),
        Some(ld3_solvers::SolverVariant::Taylor),
    )
}

/// The probability-flow ODE solved by DPM-Solver++(3M) (its truly third-order Taylor form) at
/// `nfe` steps on log-SNR-uniform times from noise `z` (standard normals [B, ...shape]) to σ_min.
pub fn reference_solution(gmm: &GaussianMixture, z: &Tensor, nfe: usize) -> Result<Tensor> {
    use ld3_solvers::steps::{LogSnrUniform, StepSchedule};
    let config = reference_solver()?;
    let (solver, steps) = config.build_for_nfe(nfe)?;
    let t = LogSnrUniform.times(gmm.noise_schedule(), steps)?;
    solve(gmm, &z.to_dtype(DType::F64)?, solver.as_ref(), &t, &t)
}

fn solve(
    gmm: &GaussianMixture,
    z: &Tensor,
    solver: &dyn ld3_solvers::Solver,
    t: &[f64],
    t_net: &[f64],
) -> Result<Tensor> {
    let times = ld3_solvers::Times::from_f64(t, t_net, &Device::Cpu)?;
    let x_t = (z * gmm.noise_schedule().prior_scale())?;
    let predictor = DenoiserPredictor::new(gmm);
    Ok(ld3_solvers::sample(solver, &predictor, &x_t, &times, None)?.x)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../fixtures/gmm")
            .join(name)
    }

    #[test]
    fn loads_the_shipped_cases_and_scores_the_exact_solution_as_zero() {
        for name in ["edm-public", "vp-public"] {
            let f = GmmFixture::load(&dir(name)).unwrap();
            assert_eq!(f.noise.dims()[0], 16);
            assert_eq!(f.relative_error(&f.exact_at_sigma_min).unwrap(), 0.0);
            assert_eq!(f.median_relative_error(&f.exact_at_sigma_min).unwrap(), 0.0);
            let doubled = (&f.exact_at_sigma_min * 2.0).unwrap();
            assert!((f.relative_error(&doubled).unwrap() - 1.0).abs() < 1e-12);
            assert!(f
                .per_sample_relative_errors(&doubled)
                .unwrap()
                .iter()
                .all(|e| (e - 1.0).abs() < 1e-12));
        }
    }

    #[test]
    fn the_fine_reference_matches_the_exact_solutions_and_fresh_noise_is_seeded() {
        for name in ["edm-public", "vp-public"] {
            let f = GmmFixture::load(&dir(name)).unwrap();
            let x = f.reference_solution(&f.noise, 1000).unwrap();
            let err = f.relative_error(&x).unwrap();
            assert!(
                err < 2e-3,
                "{name}: reference {err} from the exact solutions"
            );
            let a = f.fresh(5, 7, 50).unwrap();
            let b = f.fresh(5, 7, 50).unwrap();
            assert_eq!(a.noise.dims()[0], 5);
            assert_eq!(a.relative_error(&b.exact_at_sigma_min).unwrap(), 0.0);
            let c = f.fresh(5, 8, 50).unwrap();
            assert!(a.relative_error(&c.exact_at_sigma_min).unwrap() > 0.01);
            let d = GmmFixture::from_mixture(&dir(name), 5, 7, 50).unwrap();
            assert_eq!(a.relative_error(&d.exact_at_sigma_min).unwrap(), 0.0);
            // `solve` is the reference's own path at the same steps.
            let cfg = reference_solver().unwrap();
            let (solver, steps) = cfg.build_for_nfe(50).unwrap();
            let t = ld3_solvers::steps::StepSchedule::times(
                &ld3_solvers::steps::LogSnrUniform,
                f.gmm.noise_schedule(),
                steps,
            )
            .unwrap();
            let x = a.solve(solver.as_ref(), &t, &t).unwrap();
            assert!(a.relative_error(&x).unwrap() < 1e-12);
            let (t, t_net) = f.official_ld3("ipndm-order3-nfe4").unwrap().unzip();
            assert_eq!(t.is_some(), name == "edm-public");
            assert_eq!(t_net.map(|v| v.len()), t.map(|v| v.len()));
            assert!(f.official_ld3("no-such-setting").unwrap().is_none());
        }
    }

    #[test]
    fn a_missing_or_broken_case_is_a_clear_error() {
        let e = GmmFixture::load(Path::new("/nonexistent-case")).unwrap_err();
        assert!(e.to_string().contains("/nonexistent-case/gmm.json"), "{e}");
    }
}
