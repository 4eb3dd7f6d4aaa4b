//! # ld3-models
//!
//! The [`Denoiser`] trait — a diffusion network as the rest of ld3-rs sees it: batched x and
//! network time t^c in, a prediction in a declared [`Parameterization`] out — with the one
//! conversion layer ([`DenoiserPredictor`]) through which solvers ask for data or noise
//! predictions; and [`GaussianMixture`], the exact posterior-mean denoiser of an isotropic
//! Gaussian mixture, the project's exact testbed.

// Input checks are written `!(a < b)` on purpose: they must also reject NaN.
#![allow(clippy::neg_cmp_op_on_partial_ord)]

mod denoiser;
pub mod fixture;
mod gmm;
mod spec;

pub use denoiser::{Denoiser, DenoiserPredictor, Parameterization};
pub use fixture::GmmFixture;
pub use gmm::{GaussianMixture, GmmComponent};
pub use spec::{load_model, ModelSpec, DEFAULT_MODEL, EMBEDDED};
