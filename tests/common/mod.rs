//! Shared helpers of the cross-crate tests: the Gaussian-mixture fixtures in `fixtures/gmm/`.

#![allow(dead_code)]

use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use ld3::models::GaussianMixture;
use ld3::solvers::{SolverConfig, SolverName, UniPcVariant};

/// `fixtures/gmm/<name>`.
pub fn fixture_dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/gmm")
        .join(name)
}

/// One GMM test case: the mixture, its noise z [B, ...] and the exact ODE solutions.
pub struct Fixture {
    pub name: String,
    pub gmm: GaussianMixture,
    pub noise: Tensor,
    pub exact_at_sigma_min: Tensor,
    pub exact: serde_json::Value,
}

pub fn load(name: &str) -> Fixture {
    let dir = fixture_dir(name);
    let gmm = GaussianMixture::from_file(&dir.join("gmm.json")).unwrap();
    let noise = candle_core::safetensors::load(dir.join("noise.safetensors"), &Device::Cpu)
        .unwrap()
        .remove("noise")
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap();
    let exact: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("exact.json")).unwrap()).unwrap();
    let rows: Vec<Vec<f64>> = serde_json::from_value(exact["exact_at_sigma_min"].clone()).unwrap();
    let flat: Vec<f64> = rows.iter().flatten().copied().collect();
    let exact_at_sigma_min = Tensor::from_vec(flat, noise.shape(), &Device::Cpu).unwrap();
    Fixture {
        name: name.into(),
        gmm,
        noise,
        exact_at_sigma_min,
        exact,
    }
}

/// Every solver configuration: DDIM, Euler, Heun, DPM-Solver++ 1–3, UniPC bh1/bh2 1–3, iPNDM 1–4.
pub fn all_solver_configs() -> Vec<SolverConfig> {
    let mut out = vec![];
    for name in SolverName::ALL {
        for order in name.orders() {
            if name == SolverName::UniPc {
                for v in [UniPcVariant::Bh1, UniPcVariant::Bh2] {
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

/// ‖a − b‖ / ‖b‖ over all elements.
pub fn rel_err(a: &Tensor, b: &Tensor) -> f64 {
    let num: f64 = (a - b)
        .unwrap()
        .sqr()
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar()
        .unwrap();
    let den: f64 = b.sqr().unwrap().sum_all().unwrap().to_scalar().unwrap();
    (num / den).sqrt()
}
