//! The process's memory allocator, set up for network activations.
//!
//! A forward and backward pass allocates and frees tensors of megabytes each, layer after
//! layer, pass after pass. glibc's malloc serves every allocation above its mmap threshold (at
//! most 32 MiB, and lower until the first such block is freed) with a fresh mapping, unmaps it
//! on free, and returns the heap's free top to the kernel once it exceeds the trim threshold, so
//! the next pass touches new pages: the kernel zeroes each one, faults it in and, with several
//! threads, flushes the other cores' TLBs. Measured (docs/BENCHMARKS.md, "Keeping freed
//! memory"): keeping the pages removes ~80 % of the page faults of LPIPS(VGG)'s gradient and of
//! a CIFAR-10 UNet's at batch 32, and 25–45 % of their time.
//!
//! [`keep_freed_memory`] asks malloc to keep what the process frees for its next allocation:
//! no mappings per block (all from the heap) and no trimming. The process's peak memory is
//! the same (the same blocks live at the same time; measured on LD3 gradients); what changes is that the pages stay with
//! the process between the peaks, until it exits. Binaries call [`configure`] first thing in
//! `main` (a library never changes its host process's allocator on its own); the environment
//! variable `LD3_MALLOC=system` keeps glibc's own behaviour (for a long-lived process that should
//! hand memory back, or to measure the difference).

/// The environment variable that chooses the allocator set-up: `keep` (the default) or `system`.
pub const ENV: &str = "LD3_MALLOC";

/// Applies the set-up `LD3_MALLOC` names (unset: `keep`, [`keep_freed_memory`]); returns whether
/// malloc's settings were changed. An unknown value is an error naming it.
pub fn configure() -> Result<bool, String> {
    let value = std::env::var(ENV).ok();
    Ok(keeps(value.as_deref())? && keep_freed_memory())
}

/// Whether the value of `LD3_MALLOC` asks for [`keep_freed_memory`].
fn keeps(value: Option<&str>) -> Result<bool, String> {
    match value {
        None | Some("keep") => Ok(true),
        Some("system") => Ok(false),
        Some(other) => Err(format!("{ENV}={other}: expected 'keep' or 'system'")),
    }
}

/// Tunes glibc's malloc for repeated large allocations (see the module docs); returns whether
/// every setting was accepted. On other C libraries and systems it does nothing and returns
/// false.
pub fn keep_freed_memory() -> bool {
    imp::keep_freed_memory()
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod imp {
    /// The heap grows by this much beyond each request (address space only: a page costs memory
    /// when first written), so a growing pass does not call the kernel for each block.
    const TOP_PAD: libc::c_int = 64 << 20;

    // One of the workspace's three `unsafe` sites (the others: the gemm call of
    // `layers::matmul`, `Checkpoint::map_safetensors`): glibc's documented tuning call, with
    // plain integer arguments.
    #[allow(unsafe_code)]
    pub(super) fn keep_freed_memory() -> bool {
        let settings = [
            // No block from its own mapping: every allocation reuses freed heap memory.
            (libc::M_MMAP_MAX, 0),
            // Never give the heap's free top back to the kernel.
            (libc::M_TRIM_THRESHOLD, libc::c_int::MAX),
            (libc::M_TOP_PAD, TOP_PAD),
        ];
        settings.iter().fold(true, |ok, &(param, value)| {
            // SAFETY: mallopt takes two integers, changes malloc's parameters under its own
            // lock and reports failure by its return value (1 is success).
            ok & (unsafe { libc::mallopt(param, value) } == 1)
        })
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
mod imp {
    pub(super) fn keep_freed_memory() -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_environment_value_chooses_the_set_up() {
        assert_eq!(super::keeps(None), Ok(true));
        assert_eq!(super::keeps(Some("keep")), Ok(true));
        assert_eq!(super::keeps(Some("system")), Ok(false));
        let err = super::keeps(Some("jemalloc")).unwrap_err();
        assert!(
            err.contains("LD3_MALLOC=jemalloc") && err.contains("'system'"),
            "{err}"
        );
    }

    #[test]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn glibc_accepts_the_settings_and_allocation_still_works() {
        assert!(super::keep_freed_memory());
        // Blocks above the former mmap threshold now come from the heap, and are reused.
        for round in 0..3u8 {
            let big = vec![round; 48 << 20];
            assert!(big.iter().all(|&b| b == round));
        }
    }
}
