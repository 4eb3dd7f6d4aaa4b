//! Time of the Fréchet distance between two D-dimensional Gaussian fits (FID uses D = 2048):
//! `cargo run --release -p ld3-metrics --example frechet_timing [-- D N]`.

use std::time::Instant;

use candle_core::{Device, Tensor};
use ld3_metrics::fid::{frechet_distance, FeatureStats};

fn main() -> anyhow::Result<()> {
    ld3_models::allocator::configure().map_err(anyhow::Error::msg)?;
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse())
        .collect::<Result<_, _>>()?;
    let (d, n) = (
        args.first().copied().unwrap_or(2048),
        args.get(1).copied().unwrap_or(4096),
    );
    let x = Tensor::randn(0f64, 1.0, (n, d), &Device::Cpu)?;
    let y = (Tensor::randn(0f64, 1.0, (n, d), &Device::Cpu)? * 1.1)?;
    let s = Instant::now();
    let (a, b) = (
        FeatureStats::from_features(&x)?,
        FeatureStats::from_features(&y)?,
    );
    let stats = s.elapsed().as_secs_f64();
    let s = Instant::now();
    let fid = frechet_distance(&a, &b)?;
    println!(
        "D {d}, N {n}: statistics {stats:.2} s (both sets), Fréchet distance {:.2} s (value {fid:.3})",
        s.elapsed().as_secs_f64()
    );
    Ok(())
}
