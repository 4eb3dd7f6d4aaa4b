//! diffusers parity of the UNet2DModel loader on fixtures in the hub's exact layout (made by
//! fixtures/gen/unet_fixtures.py), loaded through the Hugging Face cache like a hub download;
//! gradients in t and x against finite differences; loading errors; the embedded model.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use ld3_models::diffusers::WEIGHTS_FILES;
use ld3_models::registry::{resolve_hub, HubFile};
use ld3_models::{
    load_model, Conditioning, Denoiser, DenoiserPredictor, DiffusersUNet, DEFAULT_MODEL,
};
use ld3_solvers::gradcheck::{max_abs_diff, GradCheck};
use ld3_solvers::steps::{LogSnrUniform, StepSchedule};
use ld3_solvers::{SolverConfig, SolverName, Times};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ld3-unet-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

const fn file(path: &'static str) -> HubFile {
    HubFile {
        path,
        size: None,
        sha256: None,
    }
}

const FILES: &[HubFile] = &[
    file("config.json"),
    file("scheduler_config.json"),
    file("diffusion_pytorch_model.safetensors"),
];

/// Lays a fixture out as the hub client leaves a download in the cache, and resolves it there.
fn via_hub_cache(name: &str) -> PathBuf {
    let cache = scratch(&format!("cache-{name}"));
    let repo = cache.join(format!("models--ld3-fixtures--{name}"));
    let commit = "0123456789abcdef0123456789abcdef01234567";
    let snap = repo.join("snapshots").join(commit);
    std::fs::create_dir_all(&snap).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), commit).unwrap();
    for f in FILES {
        let from = root().join("fixtures/unet").join(name).join(f.path);
        std::fs::copy(from, snap.join(f.path)).unwrap();
    }
    resolve_hub(
        name,
        Some(&cache),
        &format!("ld3-fixtures/{name}"),
        "main",
        FILES,
    )
    .unwrap()
}

fn rel_err(a: &Tensor, b: &Tensor) -> f64 {
    let scale = max_abs_diff(b, &b.zeros_like().unwrap()).unwrap();
    max_abs_diff(a, b).unwrap() / scale
}

fn reference(dir: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(dir.join("reference.safetensors"), &Device::Cpu).unwrap()
}

#[test]
fn matches_diffusers_on_the_fixtures() {
    for name in ["tiny-attn", "tiny-legacy", "tiny-scale-shift"] {
        let dir = via_hub_cache(name);
        let refs = reference(&root().join("fixtures/unet").join(name));
        // diffusers computes the sinusoidal time embedding in f32 even in a float64 model, so f64
        // agrees to f32 precision there.
        for (dtype, tol) in [(DType::F32, 1e-4), (DType::F64, 1e-5)] {
            let model = DiffusersUNet::from_dir(&dir, dtype, &Device::Cpu).unwrap();
            let x = refs["x"].to_dtype(dtype).unwrap();
            for k in 0..3 {
                let t = refs[&format!("t_{k}")].to_dtype(dtype).unwrap();
                let out = model.unet().forward(&x, &t).unwrap();
                let err = rel_err(&out, &refs[&format!("out_{k}")]);
                assert!(
                    err < tol,
                    "{name} {dtype:?} case {k}: relative error {err:e}"
                );
            }
        }
    }
}

#[test]
fn embedded_model_matches_diffusers_through_the_denoiser_time() {
    let model = load_model(&DEFAULT_MODEL.parse().unwrap()).unwrap();
    let refs = reference(&root().join("fixtures/unet/ld3-mnist-32"));
    for k in 0..3 {
        // The denoiser's time t feeds the network 1000·t − 1.
        let t_net = ((refs[&format!("t_{k}")].clone() + 1.0).unwrap() / 1000.0).unwrap();
        let out = model
            .forward(&refs["x"], &t_net, &Conditioning::None)
            .unwrap();
        let err = rel_err(&out, &refs[&format!("out_{k}")]);
        assert!(err < 1e-4, "case {k}: relative error {err:e}");
    }
}

#[test]
fn gradient_in_t_and_x_matches_finite_differences() {
    let dir = root().join("fixtures/unet/tiny-attn");
    let model = DiffusersUNet::from_dir(&dir, DType::F64, &Device::Cpu).unwrap();
    let x = reference(&dir)["x"].narrow(0, 0, 1).unwrap();
    let r =
        ld3_solvers::rng::standard_normal(11, 1, &x.dims()[1..], DType::F64, &Device::Cpu).unwrap();
    for t in [0.05, 0.5, 0.97] {
        let t = Tensor::new(&[t], &Device::Cpu).unwrap();
        // Steps are relative to each coordinate (eps·|x_i|): below 1e-4, rounding dominates the
        // differences at the small coordinates of x; at 1e-3, truncation does.
        let check = GradCheck {
            eps: 1e-4,
            max_coords: 24,
        };
        let report = check
            .run(&[x.clone(), t], |v| {
                Ok(model
                    .forward(&v[0], &v[1], &Conditioning::None)?
                    .mul(&r)?
                    .sum_all()?)
            })
            .unwrap();
        report.assert_within(1e-5);
    }
}

fn copy_fixture(case: &str) -> PathBuf {
    let dir = scratch(case);
    for f in FILES {
        let from = root().join("fixtures/unet/tiny-attn").join(f.path);
        std::fs::copy(from, dir.join(f.path)).unwrap();
    }
    dir
}

fn load_err(dir: &Path) -> String {
    match DiffusersUNet::from_dir(dir, DType::F32, &Device::Cpu) {
        Ok(_) => panic!("{} loaded", dir.display()),
        Err(e) => e.to_string(),
    }
}

fn rewrite_weights(dir: &Path, edit: impl FnOnce(&mut HashMap<String, Tensor>)) {
    let path = dir.join(WEIGHTS_FILES[0]);
    let mut tensors = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    edit(&mut tensors);
    candle_core::safetensors::save(&tensors, &path).unwrap();
}

#[test]
fn loading_errors_name_the_file_and_the_key() {
    let weights = WEIGHTS_FILES[0];
    let dir = copy_fixture("missing");
    std::fs::remove_file(dir.join(weights)).unwrap();
    let e = load_err(&dir);
    assert!(e.contains("missing weights") && e.contains(weights), "{e}");

    let key = "down_blocks.1.attentions.0.to_q.weight";
    for (case, bad) in [
        (
            "shape",
            Tensor::zeros((32, 16), DType::F32, &Device::Cpu).unwrap(),
        ),
        (
            "dtype",
            Tensor::zeros((32, 32), DType::I64, &Device::Cpu).unwrap(),
        ),
    ] {
        let dir = copy_fixture(case);
        rewrite_weights(&dir, |t| {
            t.insert(key.to_string(), bad);
        });
        let e = load_err(&dir);
        assert!(
            e.contains(key) && e.contains(weights) && e.contains(case),
            "{case}: {e}"
        );
    }

    // A tensor the configuration needs is missing, and one it does not know is present.
    for (case, rename) in [("absent", true), ("extra", false)] {
        let dir = copy_fixture(case);
        rewrite_weights(&dir, |t| {
            let bias = t["conv_out.bias"].clone();
            if rename {
                t.remove("conv_out.bias");
            }
            t.insert("conv_out.bias_extra".to_string(), bias);
        });
        let e = load_err(&dir);
        let named = if rename {
            "`conv_out.bias`"
        } else {
            "`conv_out.bias_extra`"
        };
        assert!(e.contains(named) && e.contains(weights), "{case}: {e}");
    }

    let dir = copy_fixture("block");
    let cfg = std::fs::read_to_string(dir.join("config.json")).unwrap();
    let cfg = cfg.replace("\"AttnDownBlock2D\"", "\"CrossAttnDownBlock2D\"");
    std::fs::write(dir.join("config.json"), cfg).unwrap();
    let e = load_err(&dir);
    assert!(
        e.contains("CrossAttnDownBlock2D") && e.contains("config.json"),
        "{e}"
    );

    let dir = copy_fixture("corrupt");
    let bytes = std::fs::read(dir.join(weights)).unwrap();
    std::fs::write(dir.join(weights), &bytes[..bytes.len() / 2]).unwrap();
    let e = load_err(&dir);
    assert!(
        e.contains("not a valid safetensors file") && e.contains(weights),
        "{e}"
    );

    let e = load_err(Path::new("/nonexistent-model-folder"));
    assert!(e.contains("no such model folder"), "{e}");
}

#[test]
fn embedded_model_samples_look_like_digits_not_noise() {
    let model = load_model(&DEFAULT_MODEL.parse().unwrap()).unwrap();
    let schedule = model.noise_schedule();
    let config = SolverConfig::new(SolverName::DpmSolverPp, Some(2), None).unwrap();
    let (solver, steps) = config.build_for_nfe(10).unwrap();
    let t = LogSnrUniform.times(schedule, steps).unwrap();
    let times = Times::from_f64(&t, &t, &Device::Cpu).unwrap();
    let shape = model.sample_shape().to_vec();
    let z = ld3_solvers::rng::standard_normal(3, 8, &shape, DType::F32, &Device::Cpu).unwrap();
    let x_t = (z * schedule.prior_scale()).unwrap();
    let predictor = DenoiserPredictor::new(model.as_ref());
    let out = ld3_solvers::sample(solver.as_ref(), &predictor, &x_t, &times, None).unwrap();
    let x: Vec<f32> = out.x.flatten_all().unwrap().to_vec1().unwrap();
    let n = x.len() as f32;
    let mean = x.iter().sum::<f32>() / n;
    let background = x.iter().filter(|v| **v < -0.9).count() as f32 / n;
    let ink = x.iter().filter(|v| **v > 0.5).count() as f32 / n;
    // MNIST padded to 32x32 in [-1, 1]: mean −0.73, 82% background, ~10% ink; Gaussian noise
    // would give mean 0 and 18% below −0.9.
    assert!((-0.85..-0.6).contains(&mean), "mean {mean}");
    assert!(background > 0.7, "background fraction {background}");
    assert!((0.04..0.25).contains(&ink), "ink fraction {ink}");
}
