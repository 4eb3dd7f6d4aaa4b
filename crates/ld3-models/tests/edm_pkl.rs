//! EDM network snapshots (`fixtures/edm/`, written by fixtures/gen/edm_pkl_fixtures.py with
//! EDM's own code and pickling): read as data, every tensor equal to PyTorch's `state_dict`, and
//! snapshots that would run code refused without running it.

use std::path::{Path, PathBuf};

use candle_core::Device;
use ld3_models::edm_pkl::read_network;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/edm")
        .join(name)
}

/// ‖got − want‖ / ‖want‖.
fn relative_error(got: &candle_core::Tensor, want: &candle_core::Tensor) -> f64 {
    let norm = |t: &candle_core::Tensor| {
        t.sqr()
            .and_then(|t| t.sum_all())
            .and_then(|t| t.sqrt())
            .and_then(|t| t.to_scalar::<f64>())
            .unwrap()
    };
    norm(&(got - want).unwrap()) / norm(want)
}

#[test]
fn snapshots_read_as_their_state_dicts() {
    for (name, class, protocol_note) in [
        ("ddpmpp-vp", "VPPrecond", "default protocol"),
        (
            "ncsnpp-ve",
            "VEPrecond",
            "protocol 2: bytes as _codecs.encode",
        ),
        ("ddpmpp-edm", "EDMPrecond", "default protocol"),
        (
            "adm-edm-cond",
            "EDMPrecond",
            "class-conditional DhariwalUNet",
        ),
    ] {
        let net = read_network(&fixture(&format!("{name}.pkl")), "ema").unwrap();
        assert_eq!(net.class_name, class, "{name} ({protocol_note})");
        let meta: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(fixture(&format!("{name}.meta.json"))).unwrap(),
        )
        .unwrap();
        for (k, v) in meta["init_kwargs"].as_object().unwrap() {
            assert_eq!(&net.init_kwargs[k], v, "{name}: init_kwargs.{k}");
        }
        let reference = candle_core::safetensors::load(
            fixture(&format!("{name}.reference.safetensors")),
            &Device::Cpu,
        )
        .unwrap();
        let params: Vec<_> = reference
            .iter()
            .filter_map(|(k, v)| k.strip_prefix("param.").map(|k| (k, v)))
            .collect();
        assert_eq!(net.tensors.len(), params.len(), "{name}: tensor count");
        for (k, want) in params {
            let got = net
                .tensors
                .get(k)
                .unwrap_or_else(|| panic!("{name}: no {k}"));
            assert_eq!(got.dims(), want.dims(), "{name}: {k}");
            assert_eq!(got.dtype(), want.dtype(), "{name}: {k}");
            let diff = (got.to_dtype(candle_core::DType::F64).unwrap()
                - want.to_dtype(candle_core::DType::F64).unwrap())
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
            assert_eq!(diff, 0.0, "{name}: {k} differs");
        }
    }
}

#[test]
fn code_is_refused_and_never_run() {
    let marker = Path::new("/tmp/ld3-pwned");
    let existed = marker.exists();
    // At the top, inside a network's state, and inside a storage's nested payload.
    for name in ["evil.pkl", "evil-state.pkl", "evil-nested.pkl"] {
        let e = read_network(&fixture(name), "ema").unwrap_err().to_string();
        assert!(
            e.contains("refused") && e.contains("system") && e.contains(name),
            "{name}: {e}"
        );
    }
    assert_eq!(marker.exists(), existed, "something ran");
    let e = read_network(&fixture("truncated.pkl"), "ema")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("truncated") && e.contains("truncated.pkl"),
        "{e}"
    );
    let e = read_network(&fixture("ddpmpp-vp.pkl"), "generator")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("no `generator` network") && e.contains("ema"),
        "{e}"
    );
}

#[test]
fn songunet_denoisers_equal_edms_in_float64() {
    use candle_core::DType;
    use ld3_models::edm_net::EdmDenoiser;
    for name in ["ddpmpp-vp", "ncsnpp-ve", "ddpmpp-edm", "adm-edm-cond"] {
        let net = read_network(&fixture(&format!("{name}.pkl")), "ema").unwrap();
        let d = EdmDenoiser::new(&net, DType::F64).unwrap();
        let r = candle_core::safetensors::load(
            fixture(&format!("{name}.reference.safetensors")),
            &Device::Cpu,
        )
        .unwrap();
        for (sigma, want) in [("sigma", "out"), ("sigma2", "out2")] {
            let x = r["x"].to_dtype(DType::F64).unwrap();
            let s = r[sigma].to_dtype(DType::F64).unwrap();
            let labels = r
                .get("class_labels")
                .map(|l| l.to_dtype(DType::F64).unwrap());
            let got = d.forward(&x, &s, labels.as_ref()).unwrap();
            let err = relative_error(&got, &r[want].to_dtype(DType::F64).unwrap());
            assert!(err < 1e-4, "{name} at {sigma}: relative error {err}");
        }
    }
}

#[test]
fn edm_denoisers_are_differentiable_in_x_and_sigma() {
    use candle_core::{DType, Tensor, Var};
    use ld3_models::edm_net::EdmDenoiser;
    for name in ["ddpmpp-vp", "ncsnpp-ve"] {
        let net = read_network(&fixture(&format!("{name}.pkl")), "ema").unwrap();
        let d = EdmDenoiser::new(&net, DType::F64).unwrap();
        let [c, h, w] = d.shape;
        let dev = Device::Cpu;
        let normal = |seed| {
            ld3_solvers::rng::standard_normal(seed, 1, &[c, h, w], DType::F64, &dev).unwrap()
        };
        let (x0, probe) = (normal(1), normal(2));
        let loss = |x: &Tensor, s: &Tensor| -> Tensor {
            (d.forward(x, s, None).unwrap() * &probe)
                .unwrap()
                .sum_all()
                .unwrap()
        };
        let (xv, sv) = (
            Var::from_tensor(&x0).unwrap(),
            Var::new(&[1.3f64], &dev).unwrap(),
        );
        let grads = loss(xv.as_tensor(), sv.as_tensor()).backward().unwrap();
        let at = |x: &Tensor, s: f64| {
            loss(x, &Tensor::new(&[s], &dev).unwrap())
                .to_scalar::<f64>()
                .unwrap()
        };
        // The curvature in σ is strong: central differences need a small step (1e-5 leaves a
        // 3e-6 relative truncation error; 1e-6, 2e-8).
        let eps = 1e-6;
        let fd = (at(&x0, 1.3 + eps) - at(&x0, 1.3 - eps)) / (2.0 * eps);
        let g = grads.get(sv.as_tensor()).unwrap().to_vec1::<f64>().unwrap()[0];
        assert!(
            (fd - g).abs() < 1e-6 * (1.0 + fd.abs()),
            "{name} dσ: {fd} vs {g}"
        );
        let gx: Vec<f64> = grads
            .get(xv.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let flat: Vec<f64> = x0.flatten_all().unwrap().to_vec1().unwrap();
        for i in [0, 37, flat.len() - 1] {
            let shifted = |delta: f64| {
                let mut v = flat.clone();
                v[i] += delta;
                Tensor::from_vec(v, (1, c, h, w), &dev).unwrap()
            };
            let fd = (at(&shifted(eps), 1.3) - at(&shifted(-eps), 1.3)) / (2.0 * eps);
            assert!(
                (fd - gx[i]).abs() < 1e-6 * (1.0 + fd.abs()),
                "{name} dx[{i}]: {fd} vs {}",
                gx[i]
            );
        }
    }
}

/// A snapshot of your own (say one of NVIDIA's, or a larger ADM with multi-head attention) against
/// a reference written the way fixtures/gen/edm_pkl_fixtures.py writes its (`x`, `sigma`, `out`,
/// optional `class_labels`): `LD3_EDM_SNAPSHOT=FILE.pkl LD3_EDM_REFERENCE=FILE.safetensors
/// cargo test -p ld3-models --test edm_pkl -- --ignored`.
#[test]
#[ignore = "needs LD3_EDM_SNAPSHOT and LD3_EDM_REFERENCE"]
fn a_given_snapshot_equals_its_reference() {
    use candle_core::DType;
    use ld3_models::edm_net::EdmDenoiser;
    let snapshot = std::env::var("LD3_EDM_SNAPSHOT").expect("LD3_EDM_SNAPSHOT");
    let reference = std::env::var("LD3_EDM_REFERENCE").expect("LD3_EDM_REFERENCE");
    let net = read_network(Path::new(&snapshot), "ema").unwrap();
    let d = EdmDenoiser::new(&net, DType::F64).unwrap();
    let r = candle_core::safetensors::load(reference, &Device::Cpu).unwrap();
    let f64_of = |k: &str| r[k].to_dtype(DType::F64).unwrap();
    let labels = r
        .get("class_labels")
        .map(|l| l.to_dtype(DType::F64).unwrap());
    let got = d
        .forward(&f64_of("x"), &f64_of("sigma"), labels.as_ref())
        .unwrap();
    let err = relative_error(&got, &f64_of("out"));
    eprintln!("{snapshot}: relative error {err:.2e}");
    assert!(err < 1e-4, "relative error {err}");
}

/// `use_fp16` (EDM's ImageNet ADM was trained with it) only says how EDM ran the network on CUDA:
/// the weights are float32 in the file and the network computes in the dtype asked for. An
/// `augment_dim` layer (the fixtures' SongUNets have EDM's 9) is checked and, as in EDM's
/// sampling, fed no labels; one of the wrong shape is refused by name.
#[test]
fn use_fp16_and_augment_dim_are_read_as_edm_samples_with_them() {
    use candle_core::{DType, Tensor};
    use ld3_models::edm_net::{EdmDenoiser, EdmNetwork};
    use ld3_models::Denoiser;
    let mut net = read_network(&fixture("ddpmpp-edm.pkl"), "ema").unwrap();
    assert_eq!(net.init_kwargs["augment_dim"], 9);
    assert!(net.tensors.contains_key("model.map_augment.weight"));
    net.init_kwargs["use_fp16"] = serde_json::Value::Bool(true);
    let r =
        candle_core::safetensors::load(fixture("ddpmpp-edm.reference.safetensors"), &Device::Cpu)
            .unwrap();
    let d = EdmDenoiser::new(&net, DType::F64).unwrap();
    let got = d.forward(&r["x"], &r["sigma"], None).unwrap();
    assert!(relative_error(&got, &r["out"]) < 1e-8);
    let model = EdmNetwork::new(&net, "fp16.pkl", DType::F32, &Device::Cpu).unwrap();
    assert!(
        model.describe().contains("use_fp16, computing in F32"),
        "{}",
        model.describe()
    );
    net.tensors.insert(
        "model.map_augment.weight".into(),
        Tensor::zeros((16, 8), DType::F32, &Device::Cpu).unwrap(),
    );
    let e = EdmDenoiser::new(&net, DType::F64)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("map_augment is [16, 8], with augment_dim 9"),
        "{e}"
    );
}
