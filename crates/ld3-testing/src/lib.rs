//! # ld3-testing
//!
//! Test support for ld3-rs, shared by the crates' tests, examples and benchmarks (not published):
//! the Gaussian-mixture test cases of `fixtures/gmm/` with their exact solutions and the official
//! LD3 schedules ([`GmmFixture`]), near-exact reference solutions on fresh noise, and
//! pseudo-random weights for the metric networks ([`weights`]).

mod gmm;
pub mod weights;

pub use gmm::{official_ld3_run, reference_solution, reference_solver, relative_error, GmmFixture};

/// max |t| as f64 (any float dtype).
pub fn max_abs(t: &candle_core::Tensor) -> f64 {
    t.abs()
        .and_then(|a| a.max_all())
        .and_then(|m| m.to_dtype(candle_core::DType::F64))
        .and_then(|m| m.to_scalar::<f64>())
        .expect("max |t| of a float tensor")
}
