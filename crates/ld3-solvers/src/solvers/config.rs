//! Solvers by name, their orders and NFE budgets: the one place that knows which orders each
//! solver has and how few evaluations it can run with.

use serde::{Deserialize, Serialize};

use super::{Ddim, DpmSolverPp, Euler, Heun, Ipndm, Solver, UniPc, UniPcVariant};
use crate::error::{invalid, Error, Result};

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

/// A solver's description: name, order and (UniPC) variant, as stored in schedule files.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SolverConfig {
    /// Which solver.
    pub solver: SolverName,
    /// Its order.
    pub order: usize,
    /// UniPC's B(h) variant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<UniPcVariant>,
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
        variant: Option<UniPcVariant>,
    ) -> Result<Self> {
        let order = solver.check_order(order.unwrap_or(solver.default_order()))?;
        let variant = match (solver, variant) {
            (SolverName::UniPc, v) => Some(v.unwrap_or_default()),
            (_, None) => None,
            (s, Some(_)) => {
                return invalid(format!(
                    "a B(h) variant (bh1|bh2) applies only to unipc, not to {}",
                    s.as_str()
                ))
            }
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

    /// The solver for a known number of steps (Heun then corrects every step).
    pub fn build(&self) -> Result<Box<dyn Solver>> {
        Ok(match self.solver {
            SolverName::Ddim => Box::new(Ddim),
            SolverName::Euler => Box::new(Euler),
            SolverName::Heun => Box::new(Heun::new(false)),
            SolverName::DpmSolverPp => Box::new(DpmSolverPp::new(self.order)?),
            SolverName::UniPc => {
                Box::new(UniPc::new(self.order, self.variant.unwrap_or_default())?)
            }
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
        let e = SolverConfig::new(SolverName::Ddim, None, Some(UniPcVariant::Bh1)).unwrap_err();
        assert!(e.to_string().contains("only to unipc"), "{e}");
        let c = SolverConfig::new(SolverName::DpmSolverPp, Some(3), None).unwrap();
        let e = c.build_for_nfe(2).err().unwrap();
        assert!(e.to_string().contains("too small"), "{e}");
        let e = "rk4".parse::<SolverName>().unwrap_err();
        assert!(e.to_string().contains("dpm-solver++"), "{e}");
    }
}
