//! # ld3-metrics
//!
//! Image metrics that reproduce their reference implementations number for number. Now:
//! [`Lpips`] — LPIPS v0.1 (Zhang et al. 2018) with the VGG16 or AlexNet backbone and the learned
//! linear heads of PyPI `lpips` 0.1.4 (compiled in), differentiable in its inputs so LD3 can
//! train with it. [`fid`]: the Fréchet distance (robust to singular covariances) and KID from
//! features, statistics in `.npz`; the Inception feature network follows.

pub mod fid;
pub mod fid_sets;
pub mod images;
pub mod inception;
pub mod lpips;
mod pool;
pub mod resize;

pub use inception::{FidInception, FidMode};
pub use lpips::{pseudo_random_backbone, Lpips, LpipsNet};
