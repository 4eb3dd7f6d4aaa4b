//! # ld3-testing
//!
//! Test support for ld3-rs, shared by the crates' tests, examples and benchmarks (not published):
//! the Gaussian-mixture test cases of `fixtures/gmm/` with their exact solutions and the official
//! LD3 schedules ([`GmmFixture`]), near-exact reference solutions on fresh noise, and
//! pseudo-random weights for the metric networks ([`weights`]).

mod gmm;
pub mod weights;

pub use gmm::{official_ld3_run, reference_solution, reference_solver, relative_error, GmmFixture};
