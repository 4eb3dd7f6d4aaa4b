//! The `ld3` binary end to end: sampling, schedule files, and clear errors on bad input.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn ld3(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ld3"))
        .args(args)
        .output()
        .expect("ld3 runs")
}

fn fixture(path: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/gmm")
        .join(path)
        .display()
        .to_string()
}

fn read_samples(path: &Path) -> candle_core::Tensor {
    candle_core::safetensors::load(path, &candle_core::Device::Cpu)
        .unwrap()
        .remove("samples")
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn tmp(dir: &tempfile::TempDir, name: &str) -> PathBuf {
    dir.path().join(name)
}

#[test]
fn samples_the_embedded_default_and_reports_nfe() {
    let dir = tempfile::tempdir().unwrap();
    let out = tmp(&dir, "s.safetensors");
    let o = ld3(&[
        "sample",
        "--num-samples",
        "3",
        "--seed",
        "1",
        "--nfe",
        "6",
        "--quiet",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("NFE: 6"), "{stdout}");
    assert!(stdout.contains("wall time"), "{stdout}");
    let s = read_samples(&out);
    assert_eq!(s.dims(), &[3, 1, 4, 4]);
    assert_eq!(s.dtype(), candle_core::DType::F32);
}

#[test]
fn fixture_noise_reaches_the_exact_solution_and_schedule_files_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let gmm = format!("gmm:{}", fixture("edm-public/gmm.json"));
    let noise = fixture("edm-public/noise.safetensors");
    let sched = tmp(&dir, "sched.json");
    let o = ld3(&[
        "schedule",
        "--model",
        &gmm,
        "--solver",
        "unipc",
        "--order",
        "3",
        "--nfe",
        "40",
        "--schedule",
        "logsnr",
        "--out",
        sched.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let (a, b) = (tmp(&dir, "a.safetensors"), tmp(&dir, "b.safetensors"));
    let o = ld3(&[
        "sample",
        "--model",
        &gmm,
        "--noise",
        &noise,
        "--schedule-file",
        sched.to_str().unwrap(),
        "--dtype",
        "f64",
        "--quiet",
        "--out",
        a.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = ld3(&[
        "sample",
        "--model",
        &gmm,
        "--noise",
        &noise,
        "--solver",
        "unipc",
        "--order",
        "3",
        "--nfe",
        "40",
        "--schedule",
        "logsnr",
        "--dtype",
        "f64",
        "--quiet",
        "--out",
        b.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let (xa, xb) = (read_samples(&a), read_samples(&b));
    let diff: f32 = (&xa - &xb)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar()
        .unwrap();
    assert_eq!(diff, 0.0);
    let exact: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("edm-public/exact.json")).unwrap())
            .unwrap();
    let rows: Vec<Vec<f64>> = serde_json::from_value(exact["exact_at_sigma_min"].clone()).unwrap();
    let got: Vec<f32> = xa.flatten_all().unwrap().to_vec1().unwrap();
    let want: Vec<f64> = rows.into_iter().flatten().collect();
    let num: f64 = got
        .iter()
        .zip(&want)
        .map(|(g, w)| (*g as f64 - w).powi(2))
        .sum();
    let den: f64 = want.iter().map(|w| w * w).sum();
    // UniPC-3 at 40 NFE on this mixture: 4.6e-3.
    assert!(
        (num / den).sqrt() < 1e-2,
        "relative error {}",
        (num / den).sqrt()
    );
}

#[test]
fn bad_input_gets_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let out = tmp(&dir, "x.safetensors");
    let out_s = out.to_str().unwrap();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec![
                "--solver".into(),
                "rk4".into(),
                "--num-samples".into(),
                "1".into(),
            ],
            "unknown solver 'rk4'",
        ),
        (
            vec![
                "--solver".into(),
                "dpm-solver++".into(),
                "--order".into(),
                "3".into(),
                "--nfe".into(),
                "2".into(),
                "--num-samples".into(),
                "1".into(),
            ],
            "too small",
        ),
        (
            vec!["--noise".into(), fixture("vp-public/noise.safetensors")],
            "this model needs [B, 1, 4, 4]",
        ),
        (
            vec!["--noise".into(), fixture("edm-public/gmm.json")],
            "reading noise file",
        ),
        (
            vec![
                "--model".into(),
                "gmm:/nonexistent.json".into(),
                "--num-samples".into(),
                "1".into(),
            ],
            "/nonexistent.json",
        ),
        (
            vec![
                "--model".into(),
                "sd-turbo-xl".into(),
                "--num-samples".into(),
                "1".into(),
            ],
            "unknown model",
        ),
        (vec![], "give the noise"),
    ];
    for (args, want) in cases {
        let mut all = vec![
            "sample".to_string(),
            "--quiet".into(),
            "--out".into(),
            out_s.into(),
        ];
        all.extend(args.clone());
        let refs: Vec<&str> = all.iter().map(String::as_str).collect();
        let o = ld3(&refs);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {}", stderr(&o));
        assert!(
            stderr(&o).contains(want),
            "{args:?}: expected '{want}' in: {}",
            stderr(&o)
        );
        assert!(!stderr(&o).contains("panicked"), "{}", stderr(&o));
    }
    assert!(!out.exists(), "a failed run must not leave an output file");

    // A hand-edited schedule file that is no longer monotone.
    let sched = tmp(&dir, "s.json");
    assert!(
        ld3(&["schedule", "--nfe", "5", "--out", sched.to_str().unwrap()])
            .status
            .success()
    );
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&sched).unwrap()).unwrap();
    let t = v["t"].as_array_mut().unwrap();
    t.swap(1, 2);
    std::fs::write(&sched, v.to_string()).unwrap();
    let o = ld3(&[
        "sample",
        "--schedule-file",
        sched.to_str().unwrap(),
        "--num-samples",
        "1",
        "--out",
        out_s,
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("decrease strictly"), "{}", stderr(&o));

    // A schedule file for another model's noise schedule.
    let o = ld3(&[
        "schedule",
        "--model",
        "demo-sd-gmm",
        "--nfe",
        "5",
        "--out",
        sched.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = ld3(&[
        "sample",
        "--schedule-file",
        sched.to_str().unwrap(),
        "--num-samples",
        "1",
        "--out",
        out_s,
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("made for noise schedule"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn train_writes_a_schedule_that_sample_uses_and_refuses_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let out = tmp(&dir, "learned.json");
    let out_s = out.to_str().unwrap();
    let small = [
        "--train-samples",
        "6",
        "--valid-samples",
        "6",
        "--heldout-samples",
        "6",
        "--quiet",
    ];
    let mut args = vec![
        "train", "--solver", "ipndm", "--order", "2", "--nfe", "4", "--out", out_s,
    ];
    args.extend(small);
    let o = ld3(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        stdout.contains("ld3") && stdout.contains("logsnr") && stdout.contains("median"),
        "{stdout}"
    );
    let file = ld3_solvers_file(&out);
    assert_eq!(file["provenance"]["method"], "ld3");
    let samples = tmp(&dir, "s.safetensors");
    let o = ld3(&[
        "sample",
        "--schedule-file",
        out_s,
        "--num-samples",
        "2",
        "--quiet",
        "--out",
        samples.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("NFE: 4"));
    // The same command again re-reports the finished run; another seed in its directory is refused.
    let o = ld3(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    let mut reseeded = args.clone();
    reseeded.extend(["--seed", "5"]);
    let o = ld3(&reseeded);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("other settings"), "{}", stderr(&o));

    for (extra, want) in [
        (vec!["--resume", "/nonexistent-run"], "no run to resume"),
        (vec!["--radius", "-1"], "--radius"),
        (vec!["--loss", "lpips"], "ld3-metrics"),
        (
            vec!["--nfe", "2", "--solver", "unipc", "--order", "3"],
            "too small",
        ),
    ] {
        let other = tmp(&dir, "other.json");
        let mut a = vec!["train", "--out", other.to_str().unwrap(), "--quiet"];
        a.extend(extra.iter().copied());
        let o = ld3(&a);
        assert_eq!(o.status.code(), Some(1), "{extra:?}: {}", stderr(&o));
        assert!(
            stderr(&o).contains(want),
            "{extra:?}: expected '{want}' in {}",
            stderr(&o)
        );
    }
}

fn ld3_solvers_file(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}
