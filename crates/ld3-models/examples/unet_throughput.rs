//! UNet2DModel throughput: forward, and forward + backward (gradient in x and t, as LD3 needs),
//! at several batch sizes, for the embedded model and google/ddpm-cifar10-32's architecture with
//! random weights. Prints a Markdown table (docs/BENCHMARKS.md).
//!
//! cargo run --release -p ld3-models --example unet_throughput [-- ARCH...]
//! with ARCH in ld3-mnist-32, ddpm-cifar10-32 (default: both); BATCHES=1,8,32 to choose sizes;
//! DEVICE=cuda (or cuda:N) in a `--features cuda` build (timings wait for the device).
//! fixtures/gen/unet_throughput.py measures PyTorch + diffusers on the same shapes.

use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var};
use ld3_models::registry::DDPM_CIFAR10_32_CONFIG;
use ld3_models::{Checkpoint, UNet2DConfig, UNet2DModel};

/// The device `DEVICE` names (unset: the CPU).
fn device() -> anyhow::Result<Device> {
    ld3_models::device::from_env("DEVICE").map_err(anyhow::Error::msg)
}

fn model(name: &str, dev: &Device) -> anyhow::Result<UNet2DModel> {
    Ok(match name {
        "ld3-mnist-32" => {
            let Some(files) = ld3_models::embedded::files(name) else {
                anyhow::bail!("no embedded {name}");
            };
            let ckpt = Checkpoint::from_safetensors_bytes(files.weights, name)?;
            UNet2DModel::new(
                UNet2DConfig::from_json(files.config).map_err(anyhow::Error::msg)?,
                ckpt.var_builder(DType::F32, dev),
            )?
        }
        "ddpm-cifar10-32" => {
            let config =
                UNet2DConfig::from_json(DDPM_CIFAR10_32_CONFIG).map_err(anyhow::Error::msg)?;
            let weights = UNet2DModel::random_weights(&config, DType::F32, dev)?;
            UNet2DModel::new(config, weights.var_builder(DType::F32, dev))?
        }
        other => anyhow::bail!("unknown architecture {other}"),
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> anyhow::Result<()> {
    ld3_models::allocator::configure().map_err(anyhow::Error::msg)?;
    let archs: Vec<String> = std::env::args().skip(1).collect();
    let archs = if archs.is_empty() {
        vec!["ld3-mnist-32".to_string(), "ddpm-cifar10-32".to_string()]
    } else {
        archs
    };
    let batches: Vec<usize> = std::env::var("BATCHES")
        .unwrap_or_else(|_| "1,8,32".into())
        .split(',')
        .map(|b| b.parse())
        .collect::<Result<_, _>>()?;
    let dev = device()?;
    println!("| model | batch | forward ms | images/s | fwd+bwd ms | images/s |");
    println!("|---|---|---|---|---|---|");
    for arch in &archs {
        let m = model(arch, &dev)?;
        let c = m.config();
        let (h, w) = c.sample_size.hw();
        for &b in &batches {
            let x = Tensor::randn(0f32, 1.0, (b, c.in_channels, h, w), &dev)?;
            let t = Tensor::full(500f32, b, &dev)?;
            let reps = if b * h * w * c.block_out_channels[0] > 1 << 22 {
                3
            } else {
                5
            };
            let mut fwd = vec![];
            let mut both = vec![];
            m.forward(&x, &t)?; // warm-up
            dev.synchronize()?;
            for _ in 0..reps {
                let s = Instant::now();
                m.forward(&x, &t)?;
                dev.synchronize()?;
                fwd.push(s.elapsed().as_secs_f64());
                let (xv, tv) = (Var::from_tensor(&x)?, Var::from_tensor(&t)?);
                let s = Instant::now();
                let out = m.forward(xv.as_tensor(), tv.as_tensor())?;
                let grads = out.sqr()?.sum_all()?.backward()?;
                assert!(grads.get(xv.as_tensor()).is_some() && grads.get(tv.as_tensor()).is_some());
                dev.synchronize()?;
                both.push(s.elapsed().as_secs_f64());
            }
            let (f, fb) = (median(fwd), median(both));
            println!(
                "| {arch} | {b} | {:.1} | {:.1} | {:.1} | {:.1} |",
                f * 1e3,
                b as f64 / f,
                fb * 1e3,
                b as f64 / fb
            );
        }
    }
    Ok(())
}
