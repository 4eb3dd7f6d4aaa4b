//! FID Inception-v3 features per second on the CPU (pseudo-random weights: speed does not depend
//! on the values), from 32×32 uint8 images through the tf1 resize, and from 299×299 network
//! inputs. `cargo run --release -p ld3-metrics --example inception_throughput [-- BATCH]`;
//! fixtures/gen/inception_throughput.py measures pytorch-fid / torch-fidelity on the same shapes.

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use ld3_metrics::inception::{FidInception, FidMode};
use ld3_models::Checkpoint;
use ld3_testing::weights::fid_inception as pseudo_random_weights;

fn main() -> anyhow::Result<()> {
    ld3_models::allocator::configure().map_err(anyhow::Error::msg)?;
    let batch: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(32);
    let dev = Device::Cpu;
    let ckpt = Checkpoint::from_tensors("pseudo-random", pseudo_random_weights()?);
    let net = FidInception::new(ckpt.var_builder(DType::F32, &dev))?;
    let u8 = (Tensor::rand(0f32, 255.0, (batch, 3, 32, 32), &dev)?.round())?;
    let x = Tensor::rand(-1f32, 1.0, (batch, 3, 299, 299), &dev)?;
    net.forward(&x.narrow(0, 0, 2)?)?;
    println!("| input | batch | ms | images/s |");
    println!("|---|---|---|---|");
    type Run<'a> = Box<dyn Fn() -> ld3_solvers::Result<Tensor> + 'a>;
    let runs: [(&str, Run); 2] = [
        (
            "32×32 uint8, tf1 resize",
            Box::new(|| net.features(&u8, FidMode::Tf1)),
        ),
        ("299×299 network input", Box::new(|| net.forward(&x))),
    ];
    for (label, run) in runs {
        let mut times = vec![];
        for _ in 0..3 {
            let s = Instant::now();
            run()?;
            times.push(s.elapsed().as_secs_f64());
        }
        times.sort_by(f64::total_cmp);
        let t = times[1];
        println!(
            "| {label} | {batch} | {:.0} | {:.1} |",
            t * 1e3,
            batch as f64 / t
        );
    }
    Ok(())
}
