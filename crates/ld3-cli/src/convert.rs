//! `ld3 convert FILE.pkl OUT/`: an EDM network snapshot, read without executing it, written as
//! `OUT/model.safetensors` (every parameter and buffer under its `state_dict` name, as stored) and
//! `OUT/edm.json` (the network's class and constructor arguments).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use ld3_solvers::schedule_file::write_atomic;

use crate::outputs;

/// `ld3 convert`.
#[derive(Args, Debug)]
pub struct ConvertArgs {
    /// An EDM snapshot (`network-snapshot-*.pkl`, NVIDIA's published `edm-*.pkl`).
    input: PathBuf,
    /// Output folder (created if missing).
    out: PathBuf,
    /// Which network of the snapshot.
    #[arg(long, default_value = "ema")]
    key: String,
}

pub fn run(args: ConvertArgs) -> Result<()> {
    outputs::check_folder("OUT", &args.out)?;
    let net = ld3_models::edm_pkl::read_network(&args.input, &args.key)?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let weights = args.out.join("model.safetensors");
    write_atomic(&weights, |tmp| {
        Ok(candle_core::safetensors::save(&net.tensors, tmp)?)
    })?;
    let config = serde_json::json!({
        "format": "edm-pkl",
        "class_name": net.class_name,
        "init_args": net.init_args,
        "init_kwargs": net.init_kwargs,
        "source": args.input.file_name().map(|n| n.to_string_lossy().into_owned()),
        "key": args.key,
    });
    let text = serde_json::to_string_pretty(&config)?;
    write_atomic(&args.out.join("edm.json"), |tmp| {
        std::fs::write(tmp, text).map_err(|cause| ld3_solvers::Error::Io {
            path: tmp.display().to_string(),
            cause,
        })
    })?;
    println!(
        "{}: {} with {} tensors ({} values) -> {}",
        args.input.display(),
        net.class_name,
        net.tensors.len(),
        net.tensors.values().map(|t| t.elem_count()).sum::<usize>(),
        args.out.display()
    );
    Ok(())
}
