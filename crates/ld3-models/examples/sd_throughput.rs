//! ld3-rs side of docs/BENCHMARKS.md's Stable Diffusion table: one guided UNet evaluation
//! (classifier-free guidance: conditional and unconditional halves in one batch of 2) at 64×64
//! latents, f32, median of 3 after a warm-up, on a pipeline folder (the random-weight SD 1.5
//! architecture of fixtures/gen/sd_throughput.py):
//! `cargo run --release -p ld3-models --example sd_throughput -- /tmp/sd15-random`.

use candle_core::{DType, Device, Tensor};
use ld3_models::sd::StableDiffusion;
use ld3_models::{Denoiser, Guided};

fn main() {
    if let Err(e) = ld3_models::allocator::configure() {
        eprintln!("error: {e}");
        std::process::exit(2);
    }
    let dir = std::env::args().nth(1).expect("a pipeline folder");
    let started = std::time::Instant::now();
    let sd = StableDiffusion::from_dir(dir.as_ref(), DType::F32, &Device::Cpu, None).unwrap();
    println!("loaded in {:.1} s", started.elapsed().as_secs_f64());
    let cond = sd
        .text_conditioning(
            &["a photograph of an astronaut riding a horse".to_string()],
            &[String::new()],
        )
        .unwrap();
    let guided = Guided::new(&sd, 7.5).unwrap();
    let x = Tensor::randn(0f32, 1.0, (1, 4, 64, 64), &Device::Cpu).unwrap();
    let t = Tensor::new(0.5f32, &Device::Cpu).unwrap();
    guided.forward(&x, &t, &cond).unwrap();
    let mut times = Vec::new();
    for _ in 0..3 {
        let t0 = std::time::Instant::now();
        guided.forward(&x, &t, &cond).unwrap();
        times.push(t0.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    println!(
        "unet: one guided evaluation (batch 2) at 64x64 latents: {:.2} s (runs {times:.2?})",
        times[1]
    );
}
