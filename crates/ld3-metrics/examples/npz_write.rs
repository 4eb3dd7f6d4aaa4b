//! Writing FID statistics: `ld3_metrics::npz::write_npz` against candle's `Tensor::write_npz`
//! (one unbuffered write per number) on a D-dimensional mean and covariance (f64) and N×D f32
//! features, as `ld3 eval fid` caches them:
//! `cargo run --release -p ld3-metrics --example npz_write -- [D] [N] [OUT_DIR]`.

use std::time::Instant;

use candle_core::{DType, Device, Tensor};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let d: usize = args.next().map_or(Ok(2048), |a| a.parse())?;
    let n: usize = args.next().map_or(Ok(10_000), |a| a.parse())?;
    let dir = std::path::PathBuf::from(args.next().unwrap_or_else(|| ".".into()));
    let dev = Device::Cpu;
    let mu = Tensor::randn(0f64, 1.0, d, &dev)?;
    let sigma = Tensor::randn(0f64, 1.0, (d, d), &dev)?;
    let features = Tensor::randn(0f32, 1.0, (n, d), &dev)?;
    let arrays = [("mu", &mu), ("sigma", &sigma), ("features", &features)];
    let mb = (8 * (d + d * d) + 4 * n * d) as f64 / 1e6;
    let started = Instant::now();
    ld3_metrics::npz::write_npz(&dir.join("ours.npz"), &arrays)?;
    println!(
        "ld3_metrics::npz::write_npz: {:.2} s ({mb:.0} MB)",
        started.elapsed().as_secs_f64()
    );
    let started = Instant::now();
    Tensor::write_npz(&arrays, dir.join("candle.npz"))?;
    println!(
        "candle's Tensor::write_npz: {:.2} s",
        started.elapsed().as_secs_f64()
    );
    let back = Tensor::read_npz_by_name(dir.join("ours.npz"), &["sigma"])?;
    let same = back[0]
        .to_dtype(DType::F64)?
        .eq(&sigma)?
        .min_all()?
        .to_scalar::<u8>()?
        == 1;
    println!("read back equal: {same}");
    Ok(())
}
