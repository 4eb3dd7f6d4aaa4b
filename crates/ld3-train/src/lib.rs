//! # ld3-train
//!
//! The pieces of LD3 ("Learning to Discretize Denoising Diffusion ODEs", arXiv 2405.15506):
//! the learnable discretisation θ → (t, t^c) ([`Discretization`]), distances ([`Distance`]),
//! the soft-teacher-forcing ball ([`ball`]), and gradients of a whole solve with respect to θ,
//! ξ and the start x'_T, through the full graph or by per-step recomputation with memory flat in
//! NFE ([`grad`]).

pub mod ball;
mod discretization;
mod distance;
pub mod grad;
mod lock;
pub mod optim;
pub mod teacher;
pub mod trainer;

pub use discretization::{Discretization, TimeMode, WindowRule};
pub use distance::{Distance, LpipsDistance, Rms, L1, L2};
pub use lock::Lock;
pub use teacher::{Conditioner, TeacherConfig, UniformClasses};
pub use trainer::{
    default_student_variant, recompute_by_default, setting_differences, Event, Init, Loss, Outcome,
    PairUse, TableRow, TrainConfig, Trainer, ValidationStat, DPM_TAYLOR_FROM_NFE,
    RECOMPUTE_FROM_PARAMETERS,
};
