//! LPIPS against the reference implementation (PyPI `lpips` 0.1.4) on real CIFAR-10 images, with
//! the real v0.1 heads and pseudo-random backbones regenerated from fixtures/gen/lpips_fixtures.py's
//! recipe; and its gradient against finite differences.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use ld3_metrics::{Lpips, LpipsNet};
use ld3_models::Checkpoint;
use ld3_solvers::gradcheck::{max_abs_diff, GradCheck};
use ld3_testing::weights::lpips_backbone as pseudo_random_backbone;

fn lpips(net: LpipsNet, dtype: DType) -> Lpips {
    let dev = Device::Cpu;
    let heads = Checkpoint::from_safetensors_bytes(net.heads_v01(), "heads").unwrap();
    let backbone = Checkpoint::from_tensors("backbone", pseudo_random_backbone(net).unwrap());
    Lpips::new(
        net,
        backbone.var_builder(dtype, &dev),
        heads.var_builder(dtype, &dev),
    )
    .unwrap()
}

fn reference() -> HashMap<String, Tensor> {
    let p =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/lpips/reference.safetensors");
    candle_core::safetensors::load(p, &Device::Cpu).unwrap()
}

#[test]
fn matches_the_lpips_package_on_real_images() {
    let r = reference();
    for (net, key) in [(LpipsNet::Vgg16, "d_vgg"), (LpipsNet::Alex, "d_alex")] {
        let d = lpips(net, DType::F32)
            .per_sample(&r["x0"], &r["x1"])
            .unwrap();
        let (got, want): (Vec<f32>, Vec<f32>) = (d.to_vec1().unwrap(), r[key].to_vec1().unwrap());
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(((g - w) / w).abs() < 1e-4, "{key}[{i}]: {g} vs {w}");
        }
    }
}

#[test]
fn identical_images_are_at_distance_zero_and_grey_is_repeated() {
    let r = reference();
    let m = lpips(LpipsNet::Alex, DType::F32);
    let d: Vec<f32> = m.per_sample(&r["x0"], &r["x0"]).unwrap().to_vec1().unwrap();
    assert!(d.iter().all(|v| *v == 0.0), "{d:?}");
    let grey = r["x0"].narrow(1, 0, 1).unwrap();
    let a = m
        .per_sample(&grey, &r["x1"].narrow(1, 0, 1).unwrap())
        .unwrap();
    let b = m
        .per_sample(
            &grey.repeat((1, 3, 1, 1)).unwrap(),
            &r["x1"]
                .narrow(1, 0, 1)
                .unwrap()
                .repeat((1, 3, 1, 1))
                .unwrap(),
        )
        .unwrap();
    let diff = max_abs_diff(&a, &b).unwrap();
    assert_eq!(diff, 0.0);
    let e = m.per_sample(&r["x0"], &grey).unwrap_err().to_string();
    assert!(e.contains("same shape"), "{e}");
}

#[test]
fn gradient_matches_finite_differences() {
    let r = reference();
    for net in [LpipsNet::Vgg16, LpipsNet::Alex] {
        let m = lpips(net, DType::F64);
        let x0 = r["x0"]
            .narrow(0, 0, 1)
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap();
        let x1 = r["x1"]
            .narrow(0, 0, 1)
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap();
        let check = GradCheck {
            eps: 1e-4,
            max_coords: 16,
        };
        let report = check
            .run(&[x0], |v| Ok(m.per_sample(&v[0], &x1)?.sum_all()?))
            .unwrap();
        report.assert_within(1e-5);
    }
}

#[test]
fn a_wrong_backbone_file_gets_a_clear_error() {
    let unet = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/unet/tiny-attn/diffusion_pytorch_model.safetensors");
    let e = match Lpips::load(LpipsNet::Vgg16, &unet, DType::F32, &Device::Cpu) {
        Ok(_) => panic!("a UNet loaded as VGG16"),
        Err(e) => e.to_string(),
    };
    assert!(
        e.contains("not a vgg backbone") && e.contains("features.0.weight"),
        "{e}"
    );
    let e = match Lpips::load(
        LpipsNet::Alex,
        Path::new("/nonexistent.safetensors"),
        DType::F32,
        &Device::Cpu,
    ) {
        Ok(_) => panic!("a missing file loaded"),
        Err(e) => e.to_string(),
    };
    assert!(e.contains("/nonexistent.safetensors"), "{e}");
}
