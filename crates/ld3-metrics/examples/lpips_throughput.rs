//! LPIPS pairs per second on the CPU, forward and forward + backward (the gradient in the first
//! image, as LD3 needs), VGG16 and AlexNet with pseudo-random backbones (speed does not depend on
//! the values). `cargo run --release -p ld3-metrics --example lpips_throughput [-- SIZE BATCH]`;
//! fixtures/gen/lpips_throughput.py measures the `lpips` package on the same shapes.

use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var};
use ld3_metrics::{Lpips, LpipsNet};
use ld3_models::Checkpoint;
use ld3_testing::weights::lpips_backbone as pseudo_random_backbone;

fn main() -> anyhow::Result<()> {
    ld3_models::allocator::configure().map_err(anyhow::Error::msg)?;
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse())
        .collect::<Result<_, _>>()?;
    let (size, batch) = (
        args.first().copied().unwrap_or(64),
        args.get(1).copied().unwrap_or(32),
    );
    let dev = Device::Cpu;
    println!("| backbone | batch | size | forward ms | pairs/s | fwd+bwd ms | pairs/s |");
    println!("|---|---|---|---|---|---|---|");
    for net in [LpipsNet::Vgg16, LpipsNet::Alex] {
        let backbone = Checkpoint::from_tensors("backbone", pseudo_random_backbone(net)?);
        let heads = Checkpoint::from_safetensors_bytes(net.heads_v01(), "heads")?;
        let m = Lpips::new(
            net,
            backbone.var_builder(DType::F32, &dev),
            heads.var_builder(DType::F32, &dev),
        )?;
        let x0 = Tensor::rand(-1f32, 1.0, (batch, 3, size, size), &dev)?;
        let x1 = Tensor::rand(-1f32, 1.0, (batch, 3, size, size), &dev)?;
        m.per_sample(&x0, &x1)?;
        let (mut fwd, mut both) = (vec![], vec![]);
        for _ in 0..3 {
            let s = Instant::now();
            m.per_sample(&x0, &x1)?;
            fwd.push(s.elapsed().as_secs_f64());
            let v = Var::from_tensor(&x0)?;
            let s = Instant::now();
            m.per_sample(v.as_tensor(), &x1)?.sum_all()?.backward()?;
            both.push(s.elapsed().as_secs_f64());
        }
        fwd.sort_by(f64::total_cmp);
        both.sort_by(f64::total_cmp);
        let (f, b) = (fwd[1], both[1]);
        println!(
            "| {} | {batch} | {size} | {:.0} | {:.1} | {:.0} | {:.1} |",
            net.as_str(),
            f * 1e3,
            batch as f64 / f,
            b * 1e3,
            batch as f64 / b
        );
    }
    Ok(())
}
