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
