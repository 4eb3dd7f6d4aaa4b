//! Schedule files: the JSON that carries a step schedule (hand-made or learned) from the trainer
//! or the command line to the sampler, to diffusers (`sigmas=`) and to ComfyUI. Format:
//! `docs/schedule-files.md`.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{invalid, Error, Result};
use crate::noise::{NoiseSchedule, NoiseScheduleConfig};
use crate::solvers::SolverConfig;
use crate::steps::check_times;

/// The `format` tag of every schedule file.
pub const FORMAT: &str = "ld3-schedule";
/// The version this crate writes and reads.
pub const VERSION: u32 = 1;

/// A schedule for one solver at one NFE on one model's noise schedule.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScheduleFile {
    /// Always [`FORMAT`].
    pub format: String,
    /// Always [`VERSION`].
    pub version: u32,
    /// Solver, order and variant the schedule is for.
    #[serde(flatten)]
    pub solver: SolverConfig,
    /// Model evaluations it spends.
    pub nfe: usize,
    /// Solver steps N (= NFE for multistep solvers).
    pub steps: usize,
    /// The model's time variable (`edm-sigma`, `vp-t`, ...), for readers.
    pub time_variable: String,
    /// The noise schedule the times refer to.
    pub noise_schedule: NoiseScheduleConfig,
    /// N+1 solver times t_0 > … > t_N.
    pub t: Vec<f64>,
    /// N+1 network times t^c_i (equal to `t` unless decoupled).
    pub t_net: Vec<f64>,
    /// EDM σ = σ/α at each `t` (diffusers' `sigmas=`, ComfyUI SIGMAS).
    pub sigmas: Vec<f64>,
    /// EDM σ at each `t_net`.
    pub sigmas_net: Vec<f64>,
    /// The model it was made for (a registry name, `gmm:FILE`, or a directory).
    pub model: String,
    /// Where it came from: the step rule or training run, losses, teacher, seed...
    #[serde(default)]
    pub provenance: serde_json::Value,
}

impl ScheduleFile {
    /// A checked schedule file; sigmas are computed from the times.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        solver: SolverConfig,
        nfe: usize,
        schedule: &dyn NoiseSchedule,
        t: Vec<f64>,
        t_net: Vec<f64>,
        model: impl Into<String>,
        provenance: serde_json::Value,
    ) -> Result<Self> {
        let config = schedule.config();
        let file = Self {
            format: FORMAT.into(),
            version: VERSION,
            solver,
            nfe,
            steps: t.len().saturating_sub(1),
            time_variable: config.time_variable().into(),
            sigmas: t.iter().map(|t| schedule.edm_sigma(*t)).collect(),
            sigmas_net: t_net.iter().map(|t| schedule.edm_sigma(*t)).collect(),
            noise_schedule: config,
            t,
            t_net,
            model: model.into(),
            provenance,
        };
        file.check()?;
        Ok(file)
    }

    /// Checks format, lengths, monotonicity, range, NFE and sigmas against the times.
    pub fn check(&self) -> Result<()> {
        if self.format != FORMAT || self.version != VERSION {
            return invalid(format!(
                "not an ld3 schedule file: expected format \"{FORMAT}\" version {VERSION}, found \
                 \"{}\" version {}",
                self.format, self.version
            ));
        }
        let schedule = self.noise_schedule.build()?;
        let n1 = self.steps + 1;
        for (name, list) in [
            ("t", &self.t),
            ("t_net", &self.t_net),
            ("sigmas", &self.sigmas),
            ("sigmas_net", &self.sigmas_net),
        ] {
            if list.len() != n1 {
                return invalid(format!(
                    "\"{name}\" has {} entries but steps = {} needs {n1}",
                    list.len(),
                    self.steps
                ));
            }
        }
        check_times(schedule.as_ref(), &self.t)
            .map_err(|e| Error::Invalid(format!("schedule file \"t\": {e}")))?;
        let (lo, hi) = (schedule.t_min(), schedule.t_max());
        if let Some(v) = self
            .t_net
            .iter()
            .find(|v| !crate::steps::in_time_range(schedule.as_ref(), **v))
        {
            return invalid(format!(
                "schedule file \"t_net\" holds {v}, outside the time range [{lo}, {hi}]"
            ));
        }
        for (name, times, sigmas) in [
            ("sigmas", &self.t, &self.sigmas),
            ("sigmas_net", &self.t_net, &self.sigmas_net),
        ] {
            for (t, s) in times.iter().zip(sigmas) {
                let want = schedule.edm_sigma(*t);
                if !((s - want).abs() <= 1e-6 * want.abs().max(1e-12)) {
                    return invalid(format!(
                        "\"{name}\" disagree with the times: σ/α({t}) = {want}, file says {s}; \
                         regenerate the file or drop the edited field"
                    ));
                }
            }
        }
        let (solver, steps) = self.solver.build_for_nfe(self.nfe)?;
        if steps != self.steps || solver.nfe(self.steps) != self.nfe {
            return invalid(format!(
                "{} at NFE {} takes {steps} steps, but the file has {}",
                self.solver, self.nfe, self.steps
            ));
        }
        Ok(())
    }

    /// Reads and checks a schedule file.
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.display().to_string(),
            cause: source,
        })?;
        let file: Self = serde_json::from_str(&text).map_err(|source| Error::Json {
            what: format!("{} is not a valid schedule file", path.display()),
            cause: source,
        })?;
        file.check()
            .map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))?;
        Ok(file)
    }

    /// Writes the file atomically (a temporary file renamed into place).
    pub fn write(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self).map_err(|source| Error::Json {
            what: "serialising the schedule".into(),
            cause: source,
        })?;
        write_text_atomic(path, &text)
    }
}

/// Writes `text` to `path` atomically ([`write_atomic`]).
pub fn write_text_atomic(path: &Path, text: &str) -> Result<()> {
    write_atomic(path, |tmp| {
        std::fs::write(tmp, text).map_err(|source| Error::Io {
            path: tmp.display().to_string(),
            cause: source,
        })
    })
}

/// Gives `file` the mode a plainly created file gets here (0666 less the umask), whatever the
/// writer chose: some writers create private (0600) files, and outputs are for sharing.
fn ordinary_permissions(file: &Path) {
    #[cfg(unix)]
    {
        // The umask does not change while a process runs: probe once, by making a file.
        static MODE: std::sync::OnceLock<Option<std::fs::Permissions>> = std::sync::OnceLock::new();
        let mode = MODE.get_or_init(|| {
            let probe = file.with_extension("mode-probe");
            std::fs::File::create(&probe).ok()?;
            let perms = std::fs::metadata(&probe).ok().map(|m| m.permissions());
            let _ = std::fs::remove_file(&probe);
            perms
        });
        if let Some(perms) = mode {
            let _ = std::fs::set_permissions(file, perms.clone());
        }
    }
    #[cfg(not(unix))]
    let _ = file;
}

/// Writes `path` through `write` on a temporary sibling, then renames it into place, so a reader
/// (or a crash) never sees a half-written file. The file gets the ordinary mode of a new file.
pub fn write_atomic(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let name = path
        .file_name()
        .ok_or_else(|| Error::Invalid(format!("{} is not a file path", path.display())))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp{}", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|source| Error::Io {
            path: dir.display().to_string(),
            cause: source,
        })?;
    }
    let result = write(&tmp).and_then(|()| {
        ordinary_permissions(&tmp);
        std::fs::rename(&tmp, path).map_err(|source| Error::Io {
            path: path.display().to_string(),
            cause: source,
        })
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::noise::Edm;
    use crate::solvers::SolverName;
    use crate::steps::{LogSnrUniform, StepSchedule};

    fn example() -> ScheduleFile {
        let s = Edm::default();
        let t = LogSnrUniform.times(&s, 5).unwrap();
        let c = SolverConfig::new(SolverName::UniPc, Some(2), None).unwrap();
        ScheduleFile::new(
            c,
            5,
            &s,
            t.clone(),
            t,
            "gmm:x.json",
            serde_json::json!({"rule": "logsnr"}),
        )
        .unwrap()
    }

    #[test]
    fn round_trips_through_disk() {
        let dir = std::env::temp_dir().join(format!("ld3-sf-{}", std::process::id()));
        let path = dir.join("s.json");
        let f = example();
        f.write(&path).unwrap();
        assert_eq!(ScheduleFile::read(&path).unwrap(), f);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn bad_files_are_clear_errors() {
        let mut f = example();
        f.t.swap(1, 2);
        assert!(f
            .check()
            .unwrap_err()
            .to_string()
            .contains("decrease strictly"));
        let mut f = example();
        f.sigmas[2] *= 1.1;
        assert!(f.check().unwrap_err().to_string().contains("disagree"));
        let mut f = example();
        f.nfe = 7;
        assert!(f.check().unwrap_err().to_string().contains("steps"));
        let mut f = example();
        f.t_net.pop();
        assert!(f.check().unwrap_err().to_string().contains("needs 6"));
        let mut f = example();
        f.format = "other".into();
        assert!(f
            .check()
            .unwrap_err()
            .to_string()
            .contains("not an ld3 schedule"));
    }
}
