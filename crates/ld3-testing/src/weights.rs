//! Pseudo-random weights for networks whose real weights tests cannot download: drawn by
//! SplitMix64 recipes that the fixture scripts (`fixtures/gen/`) follow too, so the reference
//! outputs in `fixtures/` were computed on the same weights.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use ld3_metrics::inception::conv_specs;
use ld3_metrics::LpipsNet;
use ld3_solvers::rng::SplitMix64;
use ld3_solvers::Result;

/// Pseudo-random weights in pytorch-fid's names — for tests and benchmarks without the real
/// file. Convolution k (state-dict order) draws its tensors from `SplitMix64::new(3000 + 4k + j)`
/// as (2u − 1)·bound: j = 0 the weight (bound √(6/fan_in)), 1 the BN shift (0.05), 2 the running
/// mean (0.1); j = 3 the running variance 1 + 0.5·(2u − 1); BN scale 1 (as in the real file).
/// fixtures/gen/inception_fixtures.py follows the same recipe.
pub fn fid_inception() -> Result<HashMap<String, Tensor>> {
    let mut tensors = HashMap::new();
    let draw = |seed: u64, shape: Vec<usize>, f: &dyn Fn(f64) -> f64| -> Result<Tensor> {
        let n: usize = shape.iter().product();
        let mut rng = SplitMix64::new(seed);
        let v: Vec<f32> = (0..n)
            .map(|_| f(2.0 * rng.next_open01() - 1.0) as f32)
            .collect();
        Ok(Tensor::from_vec(v, shape, &Device::Cpu)?)
    };
    for (k, s) in conv_specs().into_iter().enumerate() {
        let seed = 3000 + 4 * k as u64;
        let fan_in = (s.c_in * s.kernel.0 * s.kernel.1) as f64;
        let bound = (6.0 / fan_in).sqrt();
        let c = s.c_out;
        let w_shape = vec![c, s.c_in, s.kernel.0, s.kernel.1];
        let entries = [
            ("conv.weight", draw(seed, w_shape, &|v| v * bound)?),
            ("bn.bias", draw(seed + 1, vec![c], &|v| v * 0.05)?),
            ("bn.running_mean", draw(seed + 2, vec![c], &|v| v * 0.1)?),
            (
                "bn.running_var",
                draw(seed + 3, vec![c], &|v| 1.0 + 0.5 * v)?,
            ),
            ("bn.weight", Tensor::ones(c, DType::F32, &Device::Cpu)?),
        ];
        for (leaf, t) in entries {
            tensors.insert(format!("{}.{leaf}", s.name), t);
        }
    }
    Ok(tensors)
}

/// A backbone with pseudo-random weights in torchvision's names — for tests and benchmarks where
/// the real weights are not available. Tensor k (layer order, weight then bias) is
/// `SplitMix64::new(1000 + k)`'s (2u − 1)·bound, bound √(6/fan_in) for weights and 0.05 for
/// biases: the recipe fixtures/gen/lpips_fixtures.py uses for the reference distances.
pub fn lpips_backbone(net: LpipsNet) -> Result<HashMap<String, Tensor>> {
    let mut tensors = HashMap::new();
    let mut k = 0;
    for (i, c_in, c_out, ks) in net.convolutions() {
        let fan_in = c_in * ks * ks;
        for (name, shape, bound) in [
            (
                "weight",
                vec![c_out, c_in, ks, ks],
                (6.0 / fan_in as f64).sqrt(),
            ),
            ("bias", vec![c_out], 0.05),
        ] {
            let n: usize = shape.iter().product();
            let mut rng = SplitMix64::new(1000 + k);
            let v: Vec<f32> = (0..n)
                .map(|_| ((2.0 * rng.next_open01() - 1.0) * bound) as f32)
                .collect();
            tensors.insert(
                format!("features.{i}.{name}"),
                Tensor::from_vec(v, shape, &Device::Cpu)?,
            );
            k += 1;
        }
    }
    Ok(tensors)
}
