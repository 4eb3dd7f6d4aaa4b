//! # ld3-metrics
//!
//! Image metrics that reproduce their reference implementations number for number:
//! [`Lpips`] — LPIPS v0.1 (Zhang et al. 2018) with the VGG16 or AlexNet backbone and the learned
//! linear heads of PyPI `lpips` 0.1.4 (compiled in), differentiable in its inputs so LD3 can
//! train with it; [`FidInception`] — FID's Inception-v3 as pytorch-fid computes it, behind
//! torch-fidelity's TF1 or pytorch-fid's preprocessing ([`FidMode`]); [`fid`] — the Fréchet
//! distance (exact for singular covariances) and KID from features, statistics in `.npz`
//! ([`npz`] writes them);
//! [`fid_sets`] — image folders streamed through the network with cached statistics;
//! [`images`] — PNG/JPEG reading as the tools read them.

pub mod fid;
pub mod fid_sets;
pub mod images;
pub mod inception;
pub mod lpips;
pub mod npz;
mod pool;
pub mod resize;

pub use inception::{FidInception, FidMode};
pub use lpips::{Lpips, LpipsNet};
