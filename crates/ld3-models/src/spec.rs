//! Naming a model on the command line: an embedded model by name, or `gmm:FILE.json` (more kinds
//! arrive with the model registry and hub loading).

use std::path::PathBuf;

use ld3_solvers::{Error, Result};

use crate::denoiser::Denoiser;
use crate::gmm::GaussianMixture;

/// A parsed `--model` value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ModelSpec {
    /// A model compiled into the binary (see [`EMBEDDED`]).
    Embedded(&'static str),
    /// `gmm:FILE.json`: an exact Gaussian-mixture model.
    Gmm(PathBuf),
}

/// Models compiled into the binary: (name, description, GMM JSON).
pub const EMBEDDED: [(&str, &str, &str); 2] = [
    (
        "demo-edm-gmm",
        "3-component Gaussian mixture on 1x4x4 under the EDM schedule (sigma 0.002..80)",
        include_str!("../../../fixtures/gmm/edm-public/gmm.json"),
    ),
    (
        "demo-sd-gmm",
        "3-component Gaussian mixture on 2x4x4 under Stable Diffusion v1's discrete VP schedule",
        include_str!("../../../fixtures/gmm/vp-public/gmm.json"),
    ),
];

/// The default `--model`.
pub const DEFAULT_MODEL: &str = "demo-edm-gmm";

impl std::str::FromStr for ModelSpec {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        if let Some(path) = s.strip_prefix("gmm:") {
            if path.is_empty() {
                return Err(Error::Invalid(
                    "--model gmm: needs a file, as in gmm:fixtures/gmm/edm-public/gmm.json".into(),
                ));
            }
            return Ok(Self::Gmm(PathBuf::from(path)));
        }
        if let Some((name, _, _)) = EMBEDDED.iter().find(|(name, _, _)| *name == s) {
            return Ok(Self::Embedded(name));
        }
        Err(Error::Invalid(format!(
            "unknown model '{s}': use an embedded model ({}) or a Gaussian-mixture file as \
             gmm:PATH.json (e.g. gmm:fixtures/gmm/edm-public/gmm.json)",
            EMBEDDED.map(|(n, _, _)| n).join(", ")
        )))
    }
}

impl std::fmt::Display for ModelSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Embedded(name) => write!(f, "{name}"),
            Self::Gmm(p) => write!(f, "gmm:{}", p.display()),
        }
    }
}

/// Loads the model a spec names.
pub fn load_model(spec: &ModelSpec) -> Result<Box<dyn Denoiser>> {
    match spec {
        ModelSpec::Embedded(name) => {
            let (_, _, json) = EMBEDDED
                .iter()
                .find(|(n, _, _)| n == name)
                .ok_or_else(|| Error::Invalid(format!("no embedded model named '{name}'")))?;
            Ok(Box::new(
                GaussianMixture::from_json(json)?.with_source(*name),
            ))
        }
        ModelSpec::Gmm(path) => Ok(Box::new(GaussianMixture::from_file(path)?)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects_clearly() {
        assert_eq!(
            "gmm:a/b.json".parse::<ModelSpec>().unwrap(),
            ModelSpec::Gmm("a/b.json".into())
        );
        assert!("gmm:"
            .parse::<ModelSpec>()
            .unwrap_err()
            .to_string()
            .contains("needs a file"));
        assert!("foo"
            .parse::<ModelSpec>()
            .unwrap_err()
            .to_string()
            .contains("gmm:PATH.json"));
        for (name, _, _) in EMBEDDED {
            let m = load_model(&name.parse().unwrap()).unwrap();
            assert!(m.describe().contains(name));
        }
        assert_eq!(
            DEFAULT_MODEL.parse::<ModelSpec>().unwrap().to_string(),
            DEFAULT_MODEL
        );
        let e = load_model(&ModelSpec::Gmm("/nonexistent.json".into()))
            .err()
            .unwrap();
        assert!(e.to_string().contains("/nonexistent.json"), "{e}");
    }
}
