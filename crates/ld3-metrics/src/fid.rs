//! The Fréchet distance between Gaussian fits of features (Heusel et al. 2017, FID) and the
//! kernel inception distance (Bińkowski et al. 2018, KID), as pytorch-fid and torch-fidelity
//! compute them from features; statistics read from and written to `.npz` (`mu`, `sigma`: the
//! layout of EDM's and pytorch-fid's reference files).

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use ld3_solvers::{Error, Result};
use nalgebra::{DMatrix, DVector};

/// Mean and covariance of a feature set.
#[derive(Clone, Debug)]
pub struct FeatureStats {
    /// Mean feature.
    pub mu: DVector<f64>,
    /// Covariance (unbiased, N − 1, as `np.cov`).
    pub sigma: DMatrix<f64>,
}

fn invalid(msg: String) -> Error {
    Error::Invalid(msg)
}

impl FeatureStats {
    /// From features [N, D], N ≥ 2.
    pub fn from_features(features: &Tensor) -> Result<Self> {
        let (n, d) = features.dims2().map_err(|_| {
            invalid(format!(
                "features must be [N, D], got {:?}",
                features.dims()
            ))
        })?;
        if n < 2 {
            return Err(invalid(format!(
                "statistics need at least 2 samples, got {n}; add images"
            )));
        }
        let data: Vec<f64> = features.to_dtype(DType::F64)?.flatten_all()?.to_vec1()?;
        let x = DMatrix::from_row_slice(n, d, &data);
        let mu = x.row_mean().transpose();
        let centred = DMatrix::from_fn(n, d, |i, j| x[(i, j)] - mu[j]);
        let sigma = (centred.transpose() * &centred) / (n as f64 - 1.0);
        Ok(Self { mu, sigma })
    }

    /// Reads `mu` and `sigma` from an `.npz` file.
    pub fn read_npz(path: &Path) -> Result<Self> {
        let label = path.display().to_string();
        let tensors = Tensor::read_npz_by_name(path, &["mu", "sigma"]).map_err(|e| {
            invalid(format!(
                "{label}: not a statistics file with arrays `mu` and `sigma` ({e})"
            ))
        })?;
        let mu: Vec<f64> = tensors[0].to_dtype(DType::F64)?.flatten_all()?.to_vec1()?;
        let d = mu.len();
        if tensors[1].dims() != [d, d] {
            return Err(invalid(format!(
                "{label}: `sigma` is {:?}, but `mu` has {d} entries",
                tensors[1].dims()
            )));
        }
        let sigma: Vec<f64> = tensors[1].to_dtype(DType::F64)?.flatten_all()?.to_vec1()?;
        Ok(Self {
            mu: DVector::from_vec(mu),
            sigma: DMatrix::from_row_slice(d, d, &sigma),
        })
    }

    /// Writes `mu` and `sigma` (f64) to an `.npz` file.
    pub fn write_npz(&self, path: &Path) -> Result<()> {
        self.write_npz_with(path, &[])
    }

    /// Writes `mu`, `sigma` and the `extra` arrays to an `.npz` file.
    pub fn write_npz_with(&self, path: &Path, extra: &[(&str, Tensor)]) -> Result<()> {
        let d = self.mu.len();
        let mu = Tensor::from_slice(self.mu.as_slice(), d, &Device::Cpu)?;
        let rows: Vec<f64> = self.sigma.transpose().as_slice().to_vec();
        let sigma = Tensor::from_vec(rows, (d, d), &Device::Cpu)?;
        let mut arrays = vec![("mu", &mu), ("sigma", &sigma)];
        arrays.extend(extra.iter().map(|(k, t)| (*k, t)));
        crate::npz::write_npz(path, &arrays)
    }
}

/// ‖μ₁ − μ₂‖² + tr(Σ₁ + Σ₂ − 2(Σ₁Σ₂)^½). The trace of the square root is Σ √λ over the
/// eigenvalues of the symmetric PSD Σ₁^½ Σ₂ Σ₁^½ (similar to Σ₁Σ₂), with round-off negatives
/// clamped to 0: no general matrix square root, and singular covariances need no offset.
pub fn frechet_distance(a: &FeatureStats, b: &FeatureStats) -> Result<f64> {
    if a.mu.len() != b.mu.len() {
        return Err(invalid(format!(
            "statistics of {}- and {}-dimensional features cannot be compared",
            a.mu.len(),
            b.mu.len()
        )));
    }
    let tr_covmean = trace_sqrt_product(&a.sigma, &b.sigma)?;
    let diff = &a.mu - &b.mu;
    let fid = diff.dot(&diff) + a.sigma.trace() + b.sigma.trace() - 2.0 * tr_covmean;
    if !fid.is_finite() {
        return Err(invalid(
            "the Fréchet distance is not finite: the statistics hold NaN or infinity".into(),
        ));
    }
    Ok(fid)
}

/// tr √(Σa·Σb) through symmetric eigendecompositions (faer's, blocked; exact for singular
/// covariances, no offset needed): with S = Σa^½ (eigenvalues clamped at 0), Σa·Σb is similar to
/// the symmetric PSD S·Σb·S, whose eigenvalues' roots sum to the trace.
fn trace_sqrt_product(sigma_a: &DMatrix<f64>, sigma_b: &DMatrix<f64>) -> Result<f64> {
    use faer::{Mat, Side};
    let n = sigma_a.nrows();
    let sym = |m: &DMatrix<f64>| Mat::from_fn(n, n, |i, j| 0.5 * (m[(i, j)] + m[(j, i)]));
    let failed = |e: faer::linalg::evd::EvdError| {
        invalid(format!(
            "the eigendecomposition of a covariance did not converge ({e:?})"
        ))
    };
    let evd = sym(sigma_a)
        .self_adjoint_eigen(Side::Lower)
        .map_err(failed)?;
    let (u, lambda) = (evd.U(), evd.S().column_vector());
    let u_scaled = Mat::from_fn(n, n, |i, j| u[(i, j)] * lambda[j].max(0.0).sqrt());
    let s = &u_scaled * u.transpose();
    let inner = &s * sym(sigma_b) * &s;
    let inner = Mat::from_fn(n, n, |i, j| 0.5 * (inner[(i, j)] + inner[(j, i)]));
    let eig = inner
        .self_adjoint_eigenvalues(Side::Lower)
        .map_err(failed)?;
    Ok(eig.iter().map(|l| l.max(0.0).sqrt()).sum())
}

/// KID as torch-fidelity reports it: the mean and standard deviation of [`kid_mmd2`] over
/// `subsets` random subsets of `subset_size` samples of each set, drawn without replacement
/// (torch-fidelity: 100 subsets of 1000). The subsets come from `seed` (not numpy's stream, so
/// values agree with torch-fidelity's in distribution, and exactly when a subset is a whole set).
pub fn kid(
    x: &Tensor,
    y: &Tensor,
    subsets: usize,
    subset_size: usize,
    seed: u64,
) -> Result<(f64, f64)> {
    let (nx, ny) = (x.dim(0)?, y.dim(0)?);
    if subsets == 0 || subset_size < 2 || subset_size > nx.min(ny) {
        return Err(invalid(format!(
            "KID needs at least one subset of 2 ≤ size ≤ the smaller set ({nx} and {ny} samples), \
             got {subsets} subsets of {subset_size}; lower the subset size or add images"
        )));
    }
    let mut rng = ld3_solvers::rng::SplitMix64::new(seed);
    let mut choose = |n: usize| -> Result<Tensor> {
        // Partial Fisher–Yates: the first `subset_size` of a random permutation.
        let mut idx: Vec<u32> = (0..n as u32).collect();
        for i in 0..subset_size {
            let j = i + (rng.next_u64() % (n - i) as u64) as usize;
            idx.swap(i, j);
        }
        idx.truncate(subset_size);
        Ok(Tensor::new(idx, x.device())?)
    };
    let mut values = Vec::with_capacity(subsets);
    for _ in 0..subsets {
        let (ix, iy) = (choose(nx)?, choose(ny)?);
        values.push(kid_mmd2(
            &x.index_select(&ix, 0)?,
            &y.index_select(&iy, 0)?,
        )?);
    }
    let mean = values.iter().sum::<f64>() / subsets as f64;
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / subsets as f64;
    Ok((mean, var.sqrt()))
}

/// KID: the unbiased MMD² with the polynomial kernel (x·y/D + 1)³ between `x` [m, D] and
/// `y` [m, D] (torch-fidelity's estimator for one subset; average over subsets for its mean).
pub fn kid_mmd2(x: &Tensor, y: &Tensor) -> Result<f64> {
    let (m, d) = x.dims2()?;
    if y.dims() != [m, d] || m < 2 {
        return Err(invalid(format!(
            "KID compares two [m, D] feature sets of the same size, m ≥ 2; got {:?} and {:?}",
            x.dims(),
            y.dims()
        )));
    }
    let (x, y) = (x.to_dtype(DType::F64)?, y.to_dtype(DType::F64)?);
    let kernel = |a: &Tensor, b: &Tensor| -> Result<Tensor> {
        Ok(((a.matmul(&b.t()?)? / d as f64)? + 1.0)?.powf(3.0)?)
    };
    let (kxx, kyy, kxy) = (kernel(&x, &x)?, kernel(&y, &y)?, kernel(&x, &y)?);
    let sum = |t: &Tensor| -> Result<f64> { Ok(t.sum_all()?.to_scalar::<f64>()?) };
    let trace = |t: &Tensor| -> Result<f64> {
        let v: Vec<Vec<f64>> = t.to_vec2()?;
        Ok((0..m).map(|i| v[i][i]).sum())
    };
    let m = m as f64;
    let within = (sum(&kxx)? - trace(&kxx)? + sum(&kyy)? - trace(&kyy)?) / (m * (m - 1.0));
    Ok(within - 2.0 * sum(&kxy)? / (m * m))
}
