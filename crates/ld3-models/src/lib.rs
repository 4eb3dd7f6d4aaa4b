//! # ld3-models
//!
//! The [`Denoiser`] trait — a diffusion network as the rest of ld3-rs sees it: batched x and
//! network time t^c in, a prediction in a declared [`Parameterization`] out — with the one
//! conversion layer ([`DenoiserPredictor`]) through which solvers ask for data or noise
//! predictions; [`GaussianMixture`], the exact posterior-mean denoiser of an isotropic Gaussian
//! mixture, the project's exact testbed; diffusers' [`UNet2DModel`] loaded from the hub's layout
//! ([`DiffusersUNet`]); and the model [`registry`] (the embedded default `ld3-mnist-32`, hub
//! models fetched by `cargo xtask fetch-weights`).

// Input checks are written `!(a < b)` on purpose: they must also reject NaN.
#![allow(clippy::neg_cmp_op_on_partial_ord)]

pub mod checkpoint;
mod denoiser;
pub mod diffusers;
pub mod fixture;
mod gmm;
pub mod registry;
mod spec;
pub mod unet2d;

pub use checkpoint::Checkpoint;
pub use denoiser::{Denoiser, DenoiserPredictor, Parameterization};
pub use diffusers::DiffusersUNet;
pub use fixture::GmmFixture;
pub use gmm::{GaussianMixture, GmmComponent};
pub use spec::{load_model, load_model_as, ModelSpec, DEFAULT_MODEL, EMBEDDED};
pub use unet2d::{UNet2DConfig, UNet2DModel};
