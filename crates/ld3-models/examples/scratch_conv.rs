//! scratch
use candle_core::{Device, Tensor};
use std::time::Instant;
fn main() -> anyhow::Result<()> {
    let dev = Device::Cpu;
    for &(b, ci, co, s, k) in &[
        (32usize, 16usize, 16usize, 32usize, 3usize),
        (32, 32, 32, 16, 3),
        (32, 64, 64, 8, 3),
        (32, 128, 128, 8, 3),
        (8, 128, 128, 32, 3),
        (32, 16, 16, 32, 1),
    ] {
        let x = Tensor::randn(0f32, 1., (b, ci, s, s), &dev)?;
        let w = Tensor::randn(0f32, 1., (co, ci, k, k), &dev)?;
        let mut ts = vec![];
        for _ in 0..30 {
            let t = Instant::now();
            let y = ld3_models::layers::conv2d(&x, &w, k / 2, 1, 1)?;
            drop(y);
            ts.push(t.elapsed().as_secs_f64());
        }
        ts.sort_by(f64::total_cmp);
        let macs = (b * co * ci * k * k * s * s) as f64;
        println!(
            "b{b} {ci}->{co} {s}x{s} k{k}: {:.3} ms, {:.1} GFLOPS",
            ts[15] * 1e3,
            2. * macs / ts[15] / 1e9
        );
    }
    Ok(())
}
