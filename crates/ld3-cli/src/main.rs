//! `ld3`: sample diffusion models with classic or learned time steps.

mod convert;
mod eval;
mod images;
mod list;
mod outputs;
mod sample;
mod schedule;
mod train;

use clap::{Parser, Subcommand};

/// ld3-rs: few-step diffusion sampling with learned time steps (LD3, arXiv 2405.15506).
#[derive(Parser)]
#[command(name = "ld3", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Sample a model with a solver and a step schedule (or a schedule file).
    Sample(sample::SampleArgs),
    /// Learn the time steps of a solver at a given NFE with LD3.
    ///
    /// The defaults are the paper's sizes: 50 training, 50 validation and 50 held-out teacher
    /// pairs, all 100 pairs both training and validating (--pairs pooled), and two starts
    /// (--init both), with a validation pass over the 100 pairs after every iteration. On the
    /// embedded MNIST model (iPNDM-3, 4 NFE, 2 CPU cores) that took 14 minutes, against 12
    /// seconds for the README's example (10 + 10 pairs, --pairs split, --init best-hand-made);
    /// shrink those options for a first try.
    Train(train::TrainArgs),
    /// Write the schedule file of a hand-made step schedule (to inspect, edit or reuse).
    Schedule(schedule::ScheduleArgs),
    /// FID/KID of image folders or statistics, and schedules scored against a teacher and
    /// reference statistics.
    Eval(eval::EvalArgs),
    /// Read an EDM network snapshot (.pkl) without executing it and write its tensors
    /// (safetensors) and constructor arguments (JSON) to a folder.
    Convert(convert::ConvertArgs),
    /// List the models, solvers and step schedules; with --check, load models and run them once.
    List(list::ListArgs),
}

fn main() -> std::process::ExitCode {
    if let Err(e) = ld3_models::allocator::configure() {
        eprintln!("error: {e}");
        return std::process::ExitCode::FAILURE;
    }
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Sample(args) => sample::run(args),
        Command::Eval(args) => eval::run(args),
        Command::Schedule(args) => schedule::run(args),
        Command::Train(args) => train::run(args),
        Command::List(args) => list::run(args),
        Command::Convert(args) => convert::run(args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
