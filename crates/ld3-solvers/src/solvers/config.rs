//! Solvers by name, their orders and NFE budgets: the one place that knows which orders each
//! solver has and how few evaluations it can run with.

use serde::{Deserialize, Serialize};

use super::{Ddim, DpmSolverPp, Euler, Heun, Ipndm, Solver, UniPc};
use crate::error::{invalid, Error, Result};

/// A solver's variant, where it has several (the command line's `--variant`, a schedule file's
/// `variant`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SolverVariant {
    /// UniPC with B(h) = h (recommended for unconditional pixel models).
    Bh1,
    /// UniPC with B(h) = e^h − 1 (diffusers' default; recommended with guidance).
    Bh2,
    /// DPM-Solver++(3M) as its Taylor expansion asks: truly third order (converges at order 3
    /// as NFE grows).
    Taylor,
    /// DPM-Solver++(3M) as DPM-Solver, diffusers and the official LD3 code have it: second order
    /// in fact, and more stable at few steps.
    Reference,
}

impl SolverVariant {
    /// Every variant.
    pub const ALL: [SolverVariant; 4] = [Self::Bh1, Self::Bh2, Self::Taylor, Self::Reference];
    /// The command-line name.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Bh1 => "bh1",
            Self::Bh2 => "bh2",
            Self::Taylor => "taylor",
            Self::Reference => "reference",
        }
    }
}

impl std::str::FromStr for SolverVariant {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|v| v.as_str() == s.to_ascii_lowercase())
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "unknown solver variant '{s}'; unipc has bh1 and bh2, dpm-solver++ has \
                     taylor and reference"
                ))
            })
    }
}

/// The solvers by name, as on the command line and in schedule files.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SolverName {
    /// [`Ddim`].
    #[serde(rename = "ddim")]
    Ddim,
    /// [`Euler`].
    #[serde(rename = "euler")]
    Euler,
    /// [`Heun`].
    #[serde(rename = "heun")]
    Heun,
    /// [`DpmSolverPp`].
    #[serde(rename = "dpm-solver++")]
    DpmSolverPp,
    /// [`UniPc`].
    #[serde(rename = "unipc")]
    UniPc,
    /// [`Ipndm`].
    #[serde(rename = "ipndm")]
    Ipndm,
}

impl SolverName {
    /// Every solver.
    pub const ALL: [SolverName; 6] = [
        Self::Ddim,
        Self::Euler,
        Self::Heun,
        Self::DpmSolverPp,
        Self::UniPc,
        Self::Ipndm,
    ];
    /// The command-line name.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Ddim => "ddim",
            Self::Euler => "euler",
            Self::Heun => "heun",
            Self::DpmSolverPp => "dpm-solver++",
            Self::UniPc => "unipc",
            Self::Ipndm => "ipndm",
        }
    }
    /// The orders this solver has.
    pub fn orders(&self) -> std::ops::RangeInclusive<usize> {
        match self {
            Self::Ddim | Self::Euler => 1..=1,
            Self::Heun => 2..=2,
            Self::DpmSolverPp | Self::UniPc => 1..=3,
            Self::Ipndm => 1..=4,
        }
    }
    /// `order`, if this solver has it; otherwise an error naming the orders it has.
    pub fn check_order(&self, order: usize) -> Result<usize> {
        let orders = self.orders();
        if !orders.contains(&order) {
            return invalid(format!(
                "{} has orders {}..={}, not {order}",
                self.as_str(),
                orders.start(),
                orders.end()
            ));
        }
        Ok(order)
    }
    /// The fewest model evaluations this solver can run with at `order`: Heun's one step costs
    /// two, a multistep solver of order p needs p to warm up.
    pub fn min_nfe(&self, order: usize) -> usize {
        match self {
            Self::Heun => 2,
            Self::DpmSolverPp | Self::UniPc | Self::Ipndm => order,
            Self::Ddim | Self::Euler => 1,
        }
    }
    /// The variants this solver has (none for most).
    pub fn variants(&self) -> &'static [SolverVariant] {
        match self {
            Self::UniPc => &[SolverVariant::Bh1, SolverVariant::Bh2],
            Self::DpmSolverPp => &[SolverVariant::Taylor, SolverVariant::Reference],
            _ => &[],
        }
    }
    /// `variant`, if this solver has it; otherwise an error naming the ones it has.
    pub fn check_variant(&self, variant: SolverVariant) -> Result<SolverVariant> {
        let has = self.variants();
        if has.contains(&variant) {
            return Ok(variant);
        }
        if has.is_empty() {
            return invalid(format!(
                "{} has no variants (--variant {} applies to {})",
                self.as_str(),
                variant.as_str(),
                Self::ALL
                    .iter()
                    .find(|n| n.variants().contains(&variant))
                    .map_or("another solver", |n| n.as_str())
            ));
        }
        invalid(format!(
            "{} has the variants {}, not {}",
            self.as_str(),
            has.iter()
                .map(|v| v.as_str())
                .collect::<Vec<_>>()
                .join(" and "),
            variant.as_str()
        ))
    }
    /// The variant used when none is given: UniPC's bh2 (diffusers'); DPM-Solver++'s
    /// DEFAULT_DPM_VARIANT.
    pub fn default_variant(&self) -> Option<SolverVariant> {
        match self {
            Self::UniPc => Some(SolverVariant::Bh2),
            Self::DpmSolverPp => Some(DEFAULT_DPM_VARIANT),
            _ => None,
        }
    }
    /// The variant a schedule file without one meant (files from before variants were
    /// recorded for DPM-Solver++: its Taylor form, the only one then).
    pub fn unrecorded_variant(&self) -> Option<SolverVariant> {
        match self {
            Self::DpmSolverPp => Some(SolverVariant::Taylor),
            other => other.default_variant(),
        }
    }
    /// The default order (LD3's configs use 3 for the multistep solvers).
    pub fn default_order(&self) -> usize {
        match self {
            Self::Ddim | Self::Euler => 1,
            Self::Heun => 2,
            Self::DpmSolverPp | Self::UniPc | Self::Ipndm => 3,
        }
    }
}

impl std::str::FromStr for SolverName {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|n| n.as_str() == s.to_ascii_lowercase())
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "unknown solver '{s}'; choose one of: {}",
                    Self::ALL.map(|n| n.as_str()).join(", ")
                ))
            })
    }
}

/// DPM-Solver++'s variant when none is given: the reference form. With the best hand-made
/// schedule on six mixtures its error is 1–17 % lower at 6–8 NFE (level to 5 % lower at 5), it is
/// lower with every hand-made schedule on the MNIST UNet at 6–10 NFE (docs/solvers.md). The
/// Taylor form is the one that converges at order 3 as NFE grows, and the one LD3 learns the
/// better schedules in from 8 NFE (`ld3_train::default_student_variant`, docs/ld3.md).
pub const DEFAULT_DPM_VARIANT: SolverVariant = SolverVariant::Reference;

/// A solver's description: name, order and variant, as stored in schedule files. Read from a
/// file without a variant, it gets the one such files meant ([`SolverName::unrecorded_variant`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "StoredSolverConfig")]
pub struct SolverConfig {
    /// Which solver.
    pub solver: SolverName,
    /// Its order.
    pub order: usize,
    /// The variant (UniPC's B(h), DPM-Solver++(3M)'s third-order weight); `None` for solvers
    /// without variants, and in files from before variants were recorded (see
    /// [`SolverName::unrecorded_variant`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<SolverVariant>,
}

/// [`SolverConfig`] as stored, before a missing variant is filled in.
#[derive(Deserialize)]
struct StoredSolverConfig {
    solver: SolverName,
    order: usize,
    #[serde(default)]
    variant: Option<SolverVariant>,
}

impl From<StoredSolverConfig> for SolverConfig {
    fn from(c: StoredSolverConfig) -> Self {
        Self {
            solver: c.solver,
            order: c.order,
            variant: c.variant.or(c.solver.unrecorded_variant()),
        }
    }
}

impl std::fmt::Display for SolverConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (order {}", self.solver.as_str(), self.order)?;
        if let Some(v) = self.variant {
            write!(f, ", {}", v.as_str())?;
        }
        write!(f, ")")
    }
}

impl SolverConfig {
    /// A checked description; `order` and `variant` default per solver.
    pub fn new(
        solver: SolverName,
        order: Option<usize>,
        variant: Option<SolverVariant>,
    ) -> Result<Self> {
        let order = solver.check_order(order.unwrap_or(solver.default_order()))?;
        let variant = match variant {
            Some(v) => Some(solver.check_variant(v)?),
            None => solver.default_variant(),
        };
        Ok(Self {
            solver,
            order,
            variant,
        })
    }

    /// The number of steps N that spends exactly `nfe` model evaluations, and the solver for it.
    pub fn build_for_nfe(&self, nfe: usize) -> Result<(Box<dyn Solver>, usize)> {
        let min_nfe = self.solver.min_nfe(self.order);
        if nfe < min_nfe {
            return invalid(format!(
                "NFE {nfe} is too small for {self}: it needs at least {min_nfe} \
                 (lower the order or raise the NFE)"
            ));
        }
        Ok(match self.solver {
            SolverName::Heun => (Box::new(Heun::new(nfe % 2 == 1)), nfe.div_ceil(2)),
            _ => (self.build()?, nfe),
        })
    }

    /// The variant, or what a file without one meant.
    fn variant_or_unrecorded(&self) -> Result<SolverVariant> {
        self.variant
            .or(self.solver.unrecorded_variant())
            .ok_or_else(|| Error::Invalid(format!("{} has no variants", self.solver.as_str())))
    }

    /// The solver for a known number of steps (Heun then corrects every step).
    pub fn build(&self) -> Result<Box<dyn Solver>> {
        Ok(match self.solver {
            SolverName::Ddim => Box::new(Ddim),
            SolverName::Euler => Box::new(Euler),
            SolverName::Heun => Box::new(Heun::new(false)),
            SolverName::DpmSolverPp => Box::new(DpmSolverPp::with_variant(
                self.order,
                self.variant_or_unrecorded()?,
            )?),
            SolverName::UniPc => Box::new(UniPc::new(self.order, self.variant_or_unrecorded()?)?),
            SolverName::Ipndm => Box::new(Ipndm::new(self.order)?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heun_nfe_plan_spends_exactly_the_budget() {
        let c = SolverConfig::new(SolverName::Heun, None, None).unwrap();
        for nfe in 2..12 {
            let (s, steps) = c.build_for_nfe(nfe).unwrap();
            assert_eq!(s.nfe(steps), nfe);
        }
        assert!(c.build_for_nfe(1).is_err());
    }

    #[test]
    fn bad_configs_are_clear_errors() {
        let e = SolverConfig::new(SolverName::Ipndm, Some(5), None).unwrap_err();
        assert!(e.to_string().contains("orders 1..=4"), "{e}");
        let e = SolverConfig::new(SolverName::Ddim, None, Some(SolverVariant::Bh1)).unwrap_err();
        assert!(e.to_string().contains("ddim has no variants"), "{e}");
        assert!(e.to_string().contains("applies to unipc"), "{e}");
        let e = SolverConfig::new(SolverName::UniPc, None, Some(SolverVariant::Taylor));
        let e = e.unwrap_err().to_string();
        assert!(
            e.contains("unipc has the variants bh1 and bh2, not taylor"),
            "{e}"
        );
        let e = "rk".parse::<SolverVariant>().unwrap_err().to_string();
        assert!(e.contains("taylor and reference"), "{e}");
        let c = SolverConfig::new(SolverName::DpmSolverPp, Some(3), None).unwrap();
        let e = c.build_for_nfe(2).err().unwrap();
        assert!(e.to_string().contains("too small"), "{e}");
        let e = "rk4".parse::<SolverName>().unwrap_err();
        assert!(e.to_string().contains("dpm-solver++"), "{e}");
    }

    #[test]
    fn variants_are_recorded_and_old_files_keep_their_meaning() {
        for name in SolverName::ALL {
            let c = SolverConfig::new(name, None, None).unwrap();
            assert_eq!(c.variant, name.default_variant());
            assert_eq!(c.build().unwrap().config(), c, "{name:?}");
            for &v in name.variants() {
                let c = SolverConfig::new(name, None, Some(v)).unwrap();
                assert_eq!(c.build().unwrap().config().variant, Some(v));
            }
        }
        // A file from before DPM-Solver++ recorded its variant meant the Taylor form.
        let old: SolverConfig =
            serde_json::from_str(r#"{"solver":"dpm-solver++","order":3}"#).unwrap();
        assert_eq!(old.variant, Some(SolverVariant::Taylor));
        let old: SolverConfig = serde_json::from_str(r#"{"solver":"unipc","order":2}"#).unwrap();
        assert_eq!(old.variant, Some(SolverVariant::Bh2));
        let json = serde_json::to_string(
            &SolverConfig::new(
                SolverName::DpmSolverPp,
                Some(3),
                Some(SolverVariant::Reference),
            )
            .unwrap(),
        )
        .unwrap();
        assert!(json.contains(r#""variant":"reference""#), "{json}");
    }
}
