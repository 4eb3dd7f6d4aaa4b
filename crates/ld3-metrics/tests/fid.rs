//! Fréchet distance and KID against pytorch-fid (scipy sqrtm) and torch-fidelity on fixture
//! statistics (fixtures/gen/fid_fixtures.py), including near-singular covariances.

use std::path::{Path, PathBuf};

use candle_core::Tensor;
use ld3_metrics::fid::{frechet_distance, kid_mmd2, FeatureStats};

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/fid")
}

fn reference(key: &str) -> f64 {
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir().join("reference.json")).unwrap())
            .unwrap();
    v[key].as_f64().unwrap()
}

fn stats(name: &str) -> FeatureStats {
    FeatureStats::read_npz(&dir().join(format!("stats_{name}.npz"))).unwrap()
}

#[test]
fn frechet_distance_matches_pytorch_fid_including_near_singular_covariances() {
    for (a, b, key) in [("a", "b", "fid_a_b"), ("c", "d", "fid_c_d")] {
        let got = frechet_distance(&stats(a), &stats(b)).unwrap();
        let want = reference(key);
        assert!(((got - want) / want).abs() < 1e-6, "{key}: {got} vs {want}");
    }
    let same = frechet_distance(&stats("a"), &stats("a")).unwrap();
    assert!(same.abs() < 1e-9, "identical statistics: {same}");
}

#[test]
fn statistics_from_features_equal_the_stored_ones_and_round_trip() {
    let f = Tensor::read_npz_by_name(dir().join("features.npz"), &["x", "y"]).unwrap();
    let from_features = FeatureStats::from_features(&f[0]).unwrap();
    let stored = stats("a");
    assert!((&from_features.mu - &stored.mu).amax() < 1e-12);
    assert!((&from_features.sigma - &stored.sigma).amax() < 1e-12);
    let path = std::env::temp_dir().join(format!("ld3-stats-{}.npz", std::process::id()));
    stored.write_npz(&path).unwrap();
    let back = FeatureStats::read_npz(&path).unwrap();
    assert_eq!(back.sigma, stored.sigma);
    let kid = kid_mmd2(&f[0], &f[1]).unwrap();
    let want = reference("kid_x_y");
    assert!(((kid - want) / want).abs() < 1e-9, "KID {kid} vs {want}");
    // Subsets that are whole sets are permutations: every subset gives the reference value.
    let (mean, std) = ld3_metrics::fid::kid(&f[0], &f[1], 3, 200, 7).unwrap();
    assert!(
        ((mean - want) / want).abs() < 1e-9 && std < 1e-12,
        "{mean} ± {std}"
    );
    // Smaller subsets scatter around it.
    let (mean, std) = ld3_metrics::fid::kid(&f[0], &f[1], 50, 50, 7).unwrap();
    assert!(
        std > 0.0 && (mean - want).abs() < 4.0 * std,
        "{mean} ± {std} vs {want}"
    );
    let e = ld3_metrics::fid::kid(&f[0], &f[1], 10, 201, 0)
        .unwrap_err()
        .to_string();
    assert!(e.contains("lower the subset size"), "{e}");
}

#[test]
fn bad_statistics_get_clear_errors() {
    let e = FeatureStats::read_npz(&dir().join("features.npz"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("`mu` and `sigma`"), "{e}");
    let one = Tensor::zeros((1, 4), candle_core::DType::F64, &candle_core::Device::Cpu).unwrap();
    let e = FeatureStats::from_features(&one).unwrap_err().to_string();
    assert!(e.contains("at least 2 samples"), "{e}");
}
