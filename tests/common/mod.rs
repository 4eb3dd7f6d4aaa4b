//! Shared helpers of the cross-crate tests: the Gaussian-mixture fixtures in `fixtures/gmm/`.

#![allow(dead_code)]

use std::path::PathBuf;

use candle_core::Tensor;
use ld3::solvers::{SolverConfig, SolverName, SolverVariant};
use ld3_testing::GmmFixture;

/// `fixtures/gmm/<name>`.
pub fn fixture_dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/gmm")
        .join(name)
}

/// One GMM test case (its directory name is its name).
pub type Fixture = GmmFixture;

pub fn load(name: &str) -> Fixture {
    GmmFixture::load(&fixture_dir(name)).unwrap()
}

/// The case's name: its directory's.
pub fn name(f: &Fixture) -> String {
    f.dir.file_name().unwrap().to_string_lossy().into_owned()
}

/// Every solver configuration: DDIM, Euler, Heun, DPM-Solver++ 1–3, UniPC bh1/bh2 1–3, iPNDM 1–4.
pub fn all_solver_configs() -> Vec<SolverConfig> {
    let mut out = vec![];
    for name in SolverName::ALL {
        for order in name.orders() {
            if name == SolverName::UniPc {
                for v in [SolverVariant::Bh1, SolverVariant::Bh2] {
                    out.push(SolverConfig::new(name, Some(order), Some(v)).unwrap());
                }
            } else {
                out.push(SolverConfig::new(name, Some(order), None).unwrap());
            }
        }
    }
    out
}

/// sqrt(mean((a − b)²)) over all elements.
pub fn rmse(a: &Tensor, b: &Tensor) -> f64 {
    (a - b)
        .unwrap()
        .sqr()
        .unwrap()
        .mean_all()
        .unwrap()
        .sqrt()
        .unwrap()
        .to_scalar()
        .unwrap()
}
