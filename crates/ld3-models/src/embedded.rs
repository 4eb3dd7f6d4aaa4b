//! The files of the registry's embedded networks ([`crate::registry::Source::Embedded`]),
//! compiled in, in the diffusers layout.

/// One embedded network's diffusers files.
#[derive(Clone, Copy, Debug)]
pub struct EmbeddedFiles {
    /// `config.json`.
    pub config: &'static str,
    /// `diffusion_pytorch_model.safetensors`.
    pub weights: &'static [u8],
    /// `scheduler_config.json`.
    pub scheduler: &'static str,
}

/// The files of the embedded network `name`.
pub fn files(name: &str) -> Option<EmbeddedFiles> {
    match name {
        "ld3-mnist-32" => Some(EmbeddedFiles {
            config: include_str!("../assets/ld3-mnist-32/config.json"),
            weights: include_bytes!("../assets/ld3-mnist-32/diffusion_pytorch_model.safetensors"),
            scheduler: include_str!("../assets/ld3-mnist-32/scheduler_config.json"),
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use crate::registry::{Source, REGISTRY};

    #[test]
    fn every_embedded_registry_entry_has_its_files() {
        for e in REGISTRY {
            assert_eq!(
                matches!(e.source, Source::Embedded),
                super::files(e.name).is_some(),
                "{}",
                e.name
            );
        }
    }
}
