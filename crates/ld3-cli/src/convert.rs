//! `ld3 convert FILE.pkl OUT/`: an EDM network snapshot, read without executing it, written as
//! `OUT/model.safetensors` (every parameter and buffer under its `state_dict` name, as stored) and
//! `OUT/edm.json` (the network's class and constructor arguments).

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

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
    let source = args
        .input
        .file_name()
        .map(|n| n.to_string_lossy().into_owned());
    ld3_models::edm_pkl::write_converted(
        &net,
        source.as_deref().unwrap_or_default(),
        &args.key,
        &args.out,
    )?;
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
