//! # ld3
//!
//! The ld3-rs workspace in one import: [`solvers`] (noise schedules, step schedules,
//! differentiable diffusion ODE solvers) and [`models`] (the `Denoiser` trait, exact
//! Gaussian mixtures). The cross-crate tests in `tests/` live here.

pub use ld3_models as models;
pub use ld3_solvers as solvers;
