//! The FID resizes against torch-fidelity's TF1-exact bilinear and PyTorch's `F.interpolate` on
//! real CIFAR-10 images, 32 → 299 (fixtures/gen/fid_fixtures.py keeps every 5th row/column).

use std::path::Path;

use candle_core::{Device, IndexOp, Tensor};
use ld3_metrics::resize::{resize_bilinear, ResizeMode};
use ld3_solvers::gradcheck::max_abs_diff;

#[test]
fn both_resizes_match_their_tools() {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/fid/resize.safetensors");
    let r = candle_core::safetensors::load(p, &Device::Cpu).unwrap();
    let every5 = |t: &Tensor| -> Tensor {
        let idx = Tensor::arange_step(0u32, 299, 5, &Device::Cpu).unwrap();
        t.index_select(&idx, 2)
            .unwrap()
            .index_select(&idx, 3)
            .unwrap()
    };
    for (mode, key, input, tol) in [
        (ResizeMode::Tf1, "tf1", r["input"].clone(), 1e-4f64),
        (
            ResizeMode::Torch,
            "torch",
            (&r["input"] / 255.0).unwrap(),
            1e-6,
        ),
    ] {
        let out = every5(&resize_bilinear(&input, 299, 299, mode).unwrap());
        let diff = max_abs_diff(&out, &r[key]).unwrap();
        assert!(diff < tol, "{key}: max difference {diff}");
    }
    // The two differ by a half-pixel shift: not interchangeable.
    let a = resize_bilinear(&r["input"].i(0..1).unwrap(), 299, 299, ResizeMode::Tf1).unwrap();
    let b = resize_bilinear(&r["input"].i(0..1).unwrap(), 299, 299, ResizeMode::Torch).unwrap();
    let diff = max_abs_diff(&a, &b).unwrap();
    assert!(diff > 1.0, "{diff}");
}
