//! `cargo xtask <command>`: project chores that need more than one cargo call.
//!
//! - `lint`: `cargo fmt --all -- --check` and `cargo clippy --workspace --all-targets -- -D warnings`
//! - `bench`: the solver-overhead benchmark behind docs/BENCHMARKS.md

use std::process::{Command, ExitCode};

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
        other => {
            eprintln!(
                "usage: cargo xtask <lint|bench>{}",
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
