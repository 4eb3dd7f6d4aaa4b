//! # ld3-models
//!
//! The [`Denoiser`] trait — a diffusion network as the rest of ld3-rs sees it: batched x,
//! network time t^c and the batch's [`Conditioning`] in, a prediction in a declared
//! [`Parameterization`] out, on the model's own device, with a decode step before any distance —
//! classifier-free guidance as a wrapper ([`Guided`]), the exact class-conditional testbed
//! ([`ClassConditionalMixture`]), and the one
//! conversion layer ([`DenoiserPredictor`]) through which solvers ask for data or noise
//! predictions; [`GaussianMixture`], the exact posterior-mean denoiser of an isotropic Gaussian
//! mixture, the project's exact testbed; diffusers' [`UNet2DModel`] loaded from the hub's layout
//! ([`DiffusersUNet`]); the model [`registry`] (the `ld3-hub` crate: the embedded default `ld3-mnist-32`, hub
//! models fetched by `cargo xtask fetch-weights`) and the [`embedded`] networks' files.

pub mod allocator;
pub mod checkpoint;
mod class_gmm;
pub mod clip;
pub mod conditioning;
mod denoiser;
pub mod device;
pub mod diffusers;
pub mod edm_net;
pub mod edm_pkl;
pub mod embedded;
mod gmm;
pub mod layers;
mod network;
pub mod pickle;
pub mod sd;
/// The model registry (the `ld3-hub` crate, which has no numerics).
pub use ld3_hub as registry;
mod spec;
pub mod unet2d;
pub mod unet_cond;
pub mod vae;

pub use checkpoint::Checkpoint;
pub use class_gmm::{ClassConditionalMixture, GmmClass};
pub use conditioning::{Conditioning, ConditioningKind, UNCONDITIONAL_CLASS};
pub use denoiser::{Denoiser, DenoiserPredictor, Guided, Parameterization};
pub use diffusers::{DiffusersUNet, UNet2DNetwork};
pub use gmm::{GaussianMixture, GmmComponent};
pub use network::{DiscreteVpTime, Network};
pub use spec::{load_model, load_model_as, ModelSpec, DEFAULT_MODEL, EMBEDDED};
pub use unet2d::{UNet2DConfig, UNet2DModel};
