//! The `ld3` binary end to end: sampling (tensors and PNGs), schedule files, training, and clear
//! errors on bad input.

use std::path::{Path, PathBuf};
use std::process::Output;

use ld3_solvers::gradcheck::max_abs_diff;

/// One `ld3` invocation, built up argument by argument.
#[derive(Clone)]
struct Ld3(Vec<String>, Vec<(String, String)>);

fn ld3(subcommand: &str) -> Ld3 {
    Ld3(vec![subcommand.to_string()], vec![])
}

impl Ld3 {
    fn env(mut self, key: &str, value: &Path) -> Self {
        self.1.push((key.into(), value.display().to_string()));
        self
    }
    fn args(mut self, args: &[&str]) -> Self {
        self.0.extend(args.iter().map(|a| a.to_string()));
        self
    }
    fn path(self, flag: &str, p: &Path) -> Self {
        self.args(&[flag, p.to_str().unwrap()])
    }
    /// `--model gmm:<fixture>`.
    fn gmm(self, fixture_dir: &str) -> Self {
        let m = format!("gmm:{}", fixture(&format!("{fixture_dir}/gmm.json")));
        self.args(&["--model", &m])
    }
    fn run(&self) -> Output {
        std::process::Command::new(env!("CARGO_BIN_EXE_ld3"))
            .args(&self.0)
            .envs(self.1.iter().map(|(k, v)| (k, v)))
            .output()
            .expect("ld3 runs")
    }
    /// Runs and asserts success; returns stdout.
    fn ok(&self) -> String {
        let o = self.run();
        assert!(o.status.success(), "{:?}: {}", self.0, stderr(&o));
        String::from_utf8_lossy(&o.stdout).into_owned()
    }
    /// Runs and asserts a clean failure (exit 1, no panic) whose message contains `want`.
    fn fails_with(&self, want: &str) {
        let o = self.run();
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{:?}: {err}", self.0);
        assert!(
            err.contains(want),
            "{:?}: expected '{want}' in: {err}",
            self.0
        );
        assert!(!err.contains("panicked"), "{err}");
    }
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
fn samples_the_embedded_default_as_tensors_and_pngs_reproducible_per_image() {
    let dir = tempfile::tempdir().unwrap();
    let (out, pngs) = (tmp(&dir, "s.safetensors"), tmp(&dir, "pngs"));
    let stdout = ld3("sample")
        .args(&["--num-samples", "3", "--seed", "1", "--nfe", "6", "--quiet"])
        .path("--out", &out)
        .path("--images", &pngs)
        .ok();
    assert!(
        stdout.contains("NFE: 6") && stdout.contains("wall time"),
        "{stdout}"
    );
    let s = read_samples(&out);
    assert_eq!(s.dims(), &[3, 1, 32, 32]);
    assert_eq!(s.dtype(), candle_core::DType::F32);
    assert!(
        out.with_extension("png").is_file(),
        "the grid next to --out"
    );
    for seed in 1..=3 {
        assert!(pngs.join(format!("seed-{seed}.png")).is_file());
    }
    // The second image again, alone, from its own seed.
    let one = tmp(&dir, "one.safetensors");
    ld3("sample")
        .args(&["--num-samples", "1", "--seed", "2", "--nfe", "6", "--quiet"])
        .path("--out", &one)
        .ok();
    let again = read_samples(&one);
    assert!(max_abs_diff(&again, &s.narrow(0, 1, 1).unwrap()).unwrap() < 1e-4);
}

#[test]
fn samples_a_model_folder_in_the_diffusers_layout() {
    let dir = tempfile::tempdir().unwrap();
    let out = tmp(&dir, "unet.safetensors");
    let folder = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/unet/tiny-attn");
    ld3("sample")
        .path("--model", &folder)
        .args(&["--num-samples", "2", "--nfe", "3", "--quiet"])
        .path("--out", &out)
        .ok();
    assert_eq!(read_samples(&out).dims(), &[2, 3, 16, 16]);
    assert!(out.with_extension("png").is_file());
    // A hub model that is not in the (here: empty) Hugging Face cache.
    ld3("sample")
        .env("HF_HUB_CACHE", dir.path())
        .args(&["--model", "ddpm-cifar10-32", "--num-samples", "1"])
        .path("--out", &out)
        .fails_with("cargo xtask fetch-weights ddpm-cifar10-32");
}

#[test]
fn fixture_noise_reaches_the_exact_solution_and_schedule_files_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let noise = fixture("edm-public/noise.safetensors");
    let sched = tmp(&dir, "sched.json");
    let unipc = [
        "--solver",
        "unipc",
        "--order",
        "3",
        "--nfe",
        "40",
        "--schedule",
        "logsnr",
    ];
    ld3("schedule")
        .gmm("edm-public")
        .args(&unipc)
        .path("--out", &sched)
        .ok();
    let sample = ld3("sample")
        .gmm("edm-public")
        .args(&["--noise", &noise, "--dtype", "f64", "--quiet"]);
    let (a, b) = (tmp(&dir, "a.safetensors"), tmp(&dir, "b.safetensors"));
    sample
        .clone()
        .path("--schedule-file", &sched)
        .path("--out", &a)
        .ok();
    sample.args(&unipc).path("--out", &b).ok();
    let (xa, xb) = (read_samples(&a), read_samples(&b));
    assert_eq!(max_abs_diff(&xa, &xb).unwrap(), 0.0);
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
    let err = (num / den).sqrt();
    assert!(err < 1e-2, "relative error {err}");
}

#[test]
fn bad_input_gets_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let out = tmp(&dir, "x.safetensors");
    let sample = ld3("sample").args(&["--quiet"]).path("--out", &out);
    let one = ["--num-samples", "1"];
    let cases: Vec<(Ld3, &str)> = vec![
        (
            sample.clone().args(&["--solver", "rk4"]).args(&one),
            "unknown solver 'rk4'",
        ),
        (
            sample
                .clone()
                .args(&["--solver", "dpm-solver++", "--order", "3", "--nfe", "2"])
                .args(&one),
            "too small",
        ),
        (
            sample
                .clone()
                .args(&["--noise", &fixture("vp-public/noise.safetensors")]),
            "this model needs [B, 1, 32, 32]",
        ),
        (
            sample
                .clone()
                .args(&["--noise", &fixture("edm-public/gmm.json")]),
            "reading noise file",
        ),
        (
            sample
                .clone()
                .args(&["--model", "gmm:/nonexistent.json"])
                .args(&one),
            "/nonexistent.json",
        ),
        (
            sample.clone().args(&["--model", "sd-turbo-xl"]).args(&one),
            "unknown model",
        ),
        (
            sample
                .clone()
                .gmm("edm-public")
                .args(&["--grid", "g.png"])
                .args(&one),
            "need an image model",
        ),
        (sample.clone(), "give the noise"),
        (
            ld3("sample").args(&[
                "--quiet",
                "--num-samples",
                "1",
                "--out",
                "same.png",
                "--grid",
                "same.png",
            ]),
            "would overwrite --out",
        ),
    ];
    for (cmd, want) in cases {
        cmd.fails_with(want);
    }
    assert!(!out.exists(), "a failed run must not leave an output file");

    // A hand-edited schedule file that is no longer monotone.
    let sched = tmp(&dir, "s.json");
    ld3("schedule")
        .args(&["--nfe", "5"])
        .path("--out", &sched)
        .ok();
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&sched).unwrap()).unwrap();
    v["t"].as_array_mut().unwrap().swap(1, 2);
    std::fs::write(&sched, v.to_string()).unwrap();
    let with_file = sample.clone().path("--schedule-file", &sched).args(&one);
    with_file.fails_with("decrease strictly");

    // A schedule file for another model's noise schedule.
    ld3("schedule")
        .args(&["--model", "demo-sd-gmm", "--nfe", "5"])
        .path("--out", &sched)
        .ok();
    with_file.fails_with("made for noise schedule");
}

#[test]
fn train_writes_a_schedule_that_sample_uses_and_refuses_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let out = tmp(&dir, "learned.json");
    let train = ld3("train")
        .gmm("edm-public")
        .args(&["--solver", "ipndm", "--order", "2", "--nfe", "4", "--quiet"])
        .args(&[
            "--train-samples",
            "6",
            "--valid-samples",
            "6",
            "--heldout-samples",
            "6",
        ])
        .path("--out", &out);
    let stdout = train.ok();
    assert!(
        stdout.contains("ld3") && stdout.contains("logsnr") && stdout.contains("median"),
        "{stdout}"
    );
    let file: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(file["provenance"]["method"], "ld3");
    // `--loss auto` on a model that does not make images: L2, as the official code.
    assert_eq!(file["provenance"]["loss"], "l2");
    let stdout = ld3("sample")
        .gmm("edm-public")
        .path("--schedule-file", &out)
        .args(&["--num-samples", "2", "--quiet"])
        .path("--out", &tmp(&dir, "s.safetensors"))
        .ok();
    assert!(stdout.contains("NFE: 4"), "{stdout}");
    // A learned schedule fits its own model, even where another has the same noise schedule.
    ld3("sample")
        .args(&["--model", "demo-edm-gmm", "--num-samples", "2", "--quiet"])
        .path("--schedule-file", &out)
        .path("--out", &tmp(&dir, "other.safetensors"))
        .fails_with("the schedule was learned for model gmm:");
    // Outputs get the mode of any new file (not a private 0600).
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let plain = tmp(&dir, "plain");
        std::fs::write(&plain, "").unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode();
        assert_eq!(mode(&tmp(&dir, "s.safetensors")), mode(&plain));
        assert_eq!(mode(&out), mode(&plain));
    }
    // The same command again re-reports the finished run; another seed in its directory is refused.
    train.ok();
    train
        .clone()
        .args(&["--seed", "5"])
        .fails_with("other settings");

    let other = ld3("train")
        .gmm("edm-public")
        .args(&["--quiet"])
        .path("--out", &tmp(&dir, "other.json"));
    for (extra, want) in [
        (vec!["--resume", "/nonexistent-run"], "no run to resume"),
        (vec!["--radius", "-1"], "radius must be ≥ 0"),
        (vec!["--lr-theta", "-1"], "learning rate of θ must be"),
        (vec!["--lr-xi", "nan"], "learning rate of ξ must be"),
        (
            vec!["--heldout-samples", "0"],
            "held-out pairs must be at least 1",
        ),
        (vec!["--loss", "lpips"], "compares RGB or grey images"),
        (
            vec!["--nfe", "2", "--solver", "unipc", "--order", "3"],
            "too small",
        ),
        (vec!["--compare", "c.png"], "--compare needs an image model"),
    ] {
        other.clone().args(&extra).fails_with(want);
    }
}

#[test]
fn train_learns_dpm_solver_3_in_the_taylor_form_from_8_nfe_unless_told() {
    let dir = tempfile::tempdir().unwrap();
    let train = |nfe: &str, variant: Option<&str>, out: &Path| {
        let mut train = ld3("train")
            .gmm("edm-public")
            .args(&["--solver", "dpm-solver++", "--order", "3", "--nfe", nfe])
            .args(&["--train-samples", "4", "--valid-samples", "4"])
            .args(&["--heldout-samples", "4", "--quiet"]);
        if let Some(v) = variant {
            train = train.args(&["--variant", v]);
        }
        train.path("--out", out)
    };
    let variant_in = |out: &Path| {
        let file: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out).unwrap()).unwrap();
        file["variant"].as_str().unwrap().to_string()
    };
    for (nfe, variant, want) in [
        ("6", None, "reference"),
        ("8", None, "taylor"),
        ("8", Some("reference"), "reference"),
        ("10", Some("taylor"), "taylor"),
    ] {
        let out = tmp(&dir, &format!("{nfe}-{want}.json"));
        let stdout = train(nfe, variant, &out).ok();
        assert_eq!(variant_in(&out), want, "NFE {nfe}, --variant {variant:?}");
        assert!(stdout.contains(want), "{stdout}");
    }
    // A run begun in the other variant (as under the old default) continues in it when the
    // command gives none; another variant in its run directory is refused.
    let out = tmp(&dir, "8-reference.json");
    let o = train("8", None, &out).run();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("with the variant it began with, reference"),
        "{}",
        stderr(&o)
    );
    assert_eq!(variant_in(&out), "reference");
    train("8", Some("taylor"), &out).fails_with("other settings");
    // `ld3 list` says so.
    let list = ld3("list").ok();
    assert!(
        list.contains("`ld3 train` at order 3 from 8 NFE: taylor"),
        "{list}"
    );
}

#[test]
fn trains_on_the_embedded_network_with_lpips_and_draws_the_comparison() {
    let dir = tempfile::tempdir().unwrap();
    let out = tmp(&dir, "mnist.json");
    let small = "--solver dpm-solver++ --order 2 --nfe 4 --quiet --train-samples 2 \
                 --valid-samples 2 --heldout-samples 3 --teacher-nfe 8 --rounds-theta 1 \
                 --rounds-joint 1 --init best-hand-made";
    let small: Vec<&str> = small.split_whitespace().collect();
    let train = ld3("train").env("HF_HUB_CACHE", dir.path()).args(&small);
    // No VGG16 in the (empty) cache: --loss lpips says how to get it, and `--loss auto` trains
    // with the RMS distance, saying why.
    train
        .clone()
        .args(&["--loss", "lpips"])
        .path("--out", &out)
        .fails_with("cargo xtask fetch-weights vgg16");
    let auto = tmp(&dir, "auto.json");
    let o = train.clone().path("--out", &auto).run();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("training with the RMS distance") && stderr(&o).contains("vgg16"),
        "{}",
        stderr(&o)
    );
    assert!(String::from_utf8_lossy(&o.stdout).contains("held-out rms (root mean squared"));
    let file: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&auto).unwrap()).unwrap();
    assert_eq!(file["provenance"]["loss"], "rms");
    // LPIPS(AlexNet) with a backbone file in torchvision's layout (pseudo-random weights here).
    let backbone = tmp(&dir, "alexnet.safetensors");
    let tensors = ld3_testing::weights::lpips_backbone(ld3_metrics::LpipsNet::Alex).unwrap();
    candle_core::safetensors::save(&tensors, &backbone).unwrap();
    let stdout = train
        .args(&["--loss", "lpips", "--lpips-net", "alex"])
        .path("--lpips-weights", &backbone)
        .path("--out", &out)
        .ok();
    assert!(
        stdout.contains("held-out lpips-alex (LPIPS with AlexNet features) distance"),
        "{stdout}"
    );
    assert!(stdout.contains("rows teacher, best hand-made"), "{stdout}");
    let compare = tmp(&dir, "mnist.json.compare.png");
    let decoder = png::Decoder::new(std::io::BufReader::new(
        std::fs::File::open(&compare).unwrap(),
    ));
    let info = decoder.read_info().unwrap();
    // Three rows (teacher, best hand-made, learned) of three 32x32 images enlarged 3x, with
    // 2-pixel gaps, after a column of labels in the 8x8 font at twice its size.
    let best = stdout
        .split("best hand-made (")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .unwrap();
    let grid = 2 + 3 * (96 + 2);
    let labels = 16 * ["teacher", best, "ld3"].map(str::len).iter().max().unwrap() + 2;
    assert_eq!(
        (info.info().width as usize, info.info().height as usize),
        (labels + grid, grid)
    );
}

/// `ld3 eval`: FID of folders and statistics against the tools' values, and its bad input.
mod eval {
    use super::*;
    use ld3_metrics::fid::{frechet_distance, FeatureStats};

    fn repo(p: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").join(p)
    }

    /// The pseudo-random Inception weights (fixtures/gen/inception_fixtures.py's recipe) as a
    /// safetensors file in pytorch-fid's names.
    fn pseudo_random_weights(dir: &tempfile::TempDir) -> PathBuf {
        let path = tmp(dir, "pseudo-inception.safetensors");
        let w = ld3_testing::weights::fid_inception().unwrap();
        candle_core::safetensors::save(&w, &path).unwrap();
        path
    }

    fn write_grey_png(path: &Path) {
        let file = std::fs::File::create(path).unwrap();
        let mut enc = png::Encoder::new(std::io::BufWriter::new(file), 32, 32);
        enc.set_color(png::ColorType::Grayscale);
        enc.set_depth(png::BitDepth::Eight);
        let data: Vec<u8> = (0..1024).map(|i| (i * 7 % 256) as u8).collect();
        enc.write_header().unwrap().write_image_data(&data).unwrap();
    }

    #[test]
    fn fid_of_two_folders_is_the_fid_of_the_tools_features() {
        let dir = tempfile::tempdir().unwrap();
        let weights = pseudo_random_weights(&dir);
        let out = ld3("eval")
            .args(&["fid", "--json", "--mode", "pytorch-fid"])
            .path("--weights", &weights)
            .args(&[
                repo("fixtures/images/cifar10/a").to_str().unwrap(),
                repo("fixtures/images/cifar10/b").to_str().unwrap(),
            ])
            .env("LD3_CACHE", dir.path())
            .ok();
        let json: serde_json::Value = serde_json::from_str(&out).unwrap();
        let got = json["fid"].as_f64().unwrap();
        let f = candle_core::safetensors::load(
            repo("fixtures/inception/reference.safetensors"),
            &candle_core::Device::Cpu,
        )
        .unwrap()
        .remove("pytorch_fid")
        .unwrap();
        let stats = |start| FeatureStats::from_features(&f.narrow(0, start, 10).unwrap()).unwrap();
        let want = frechet_distance(&stats(0), &stats(10)).unwrap();
        assert!(((got - want) / want).abs() < 1e-4, "{got} vs {want}");
        assert_eq!(json["mode"], "pytorch-fid");
        assert_eq!(json["a"]["n"], 10);
    }

    #[test]
    fn fid_reads_sample_runs_and_a_set_against_itself_is_zero() {
        let dir = tempfile::tempdir().unwrap();
        let weights = pseudo_random_weights(&dir);
        let samples = tmp(&dir, "run.safetensors");
        ld3("sample")
            .args(&[
                "--solver",
                "ddim",
                "--nfe",
                "2",
                "--num-samples",
                "3",
                "--quiet",
            ])
            .path("--out", &samples)
            .ok();
        let s = samples.to_str().unwrap();
        let out = ld3("eval")
            .args(&["fid", "--json", s, s])
            .path("--weights", &weights)
            .env("LD3_CACHE", dir.path())
            .ok();
        let json: serde_json::Value = serde_json::from_str(&out).unwrap();
        let fid = json["fid"].as_f64().unwrap();
        assert!(fid.abs() < 1e-3, "{fid}");
        // Grey samples against RGB photos: refused after the features, before a meaningless FID.
        ld3("eval")
            .args(&[
                "fid",
                s,
                repo("fixtures/images/cifar10/a").to_str().unwrap(),
            ])
            .path("--weights", &weights)
            .env("LD3_CACHE", dir.path())
            .fails_with("compare images of one colour kind");
    }

    #[test]
    fn fid_of_statistics_files_needs_no_network() {
        let empty = tempfile::tempdir().unwrap();
        let out = ld3("eval")
            .args(&[
                "fid",
                "--json",
                repo("fixtures/fid/stats_a.npz").to_str().unwrap(),
                repo("fixtures/fid/stats_b.npz").to_str().unwrap(),
            ])
            // No weights anywhere: reading them would fail the run.
            .env("HOME", empty.path())
            .env("LD3_CACHE", empty.path())
            .env("TORCH_HOME", empty.path())
            .env("XDG_CACHE_HOME", empty.path())
            .ok();
        let got = serde_json::from_str::<serde_json::Value>(&out).unwrap()["fid"]
            .as_f64()
            .unwrap();
        let reference: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(repo("fixtures/fid/reference.json")).unwrap(),
        )
        .unwrap();
        let want = reference["fid_a_b"].as_f64().unwrap();
        assert!(((got - want) / want).abs() < 1e-6, "{got} vs {want}");
    }

    #[test]
    fn bad_fid_input_is_named_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let a = repo("fixtures/images/cifar10/a");
        let a = a.to_str().unwrap();
        let grey = dir.path().join("grey");
        std::fs::create_dir(&grey).unwrap();
        write_grey_png(&grey.join("0.png"));
        let fid = |x: &str, y: &str| ld3("eval").args(&["fid", x, y]);
        // No weights anywhere.
        let no_weights = |cmd: Ld3| {
            cmd.env("HOME", dir.path())
                .env("LD3_CACHE", &dir.path().join("none"))
                .env("TORCH_HOME", &dir.path().join("none"))
                .env("XDG_CACHE_HOME", &dir.path().join("none"))
        };
        no_weights(fid(a, a)).fails_with("cargo xtask fetch-weights inception");
        fid(a, a)
            .args(&["--device", "cuda:1"])
            .fails_with("built without CUDA");
        let tiny = repo("fixtures/inception/tiny.pth");
        fid(a, a)
            .path("--weights", &tiny)
            .fails_with("not FID Inception-v3 weights");
        fid(a, grey.to_str().unwrap())
            .path("--weights", &tiny)
            .fails_with("compare images of one colour kind");
        let weights = pseudo_random_weights(&dir);
        fid(grey.to_str().unwrap(), grey.to_str().unwrap())
            .path("--weights", &weights)
            .fails_with("at least 2 images, found 1");
        let stats = repo("fixtures/fid/stats_a.npz");
        let stats = stats.to_str().unwrap();
        fid(stats, stats)
            .args(&["--kid"])
            .fails_with("--kid needs features on both sides");
        fid(stats, "missing.npz").fails_with("no such statistics file");
        fid(stats, "x.txt").fails_with("neither a folder of images, an `ld3 sample` output");
        fid(a, a)
            .path("--weights", &weights)
            .args(&["--mode", "clean"])
            .fails_with("unknown FID mode clean");
    }

    #[test]
    fn samples_scores_schedules_against_the_teacher() {
        let dir = tempfile::tempdir().unwrap();
        let schedule = tmp(&dir, "edm.json");
        ld3("schedule")
            .gmm("edm-public")
            .args(&["--solver", "ipndm", "--nfe", "4", "--schedule", "edm"])
            .path("--out", &schedule)
            .ok();
        let json = tmp(&dir, "eval.json");
        let out = ld3("eval")
            .args(&[
                "samples",
                "--solver",
                "ipndm",
                "--nfe",
                "4",
                "--num-samples",
                "16",
            ])
            .gmm("edm-public")
            .path("--schedule-file", &schedule)
            .args(&["--with-hand-made"])
            .path("--json", &json)
            .ok();
        assert!(out.contains("RMS median"), "{out}");
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
        let rows = v["rows"].as_array().unwrap();
        assert_eq!(rows.len(), 2);
        for r in rows {
            let l2 = r["l2_rms_mean"].as_f64().unwrap();
            assert!(l2 > 0.0 && l2.is_finite(), "{r}");
            assert!(r["fid"].is_null());
        }
        // The teacher kept in a cache: the same scores from the stored outputs, other settings
        // refused.
        let cache = tmp(&dir, "teacher.safetensors");
        let cached = |seed: &str| {
            ld3("eval")
                .args(&["samples", "--solver", "ipndm", "--nfe", "4"])
                .args(&["--num-samples", "16", "--seed", seed])
                .gmm("edm-public")
                .path("--schedule-file", &schedule)
                .args(&["--with-hand-made"])
                .path("--teacher-cache", &cache)
        };
        let rows_of = |path: &Path| -> serde_json::Value {
            serde_json::from_str::<serde_json::Value>(&std::fs::read_to_string(path).unwrap())
                .unwrap()["rows"]
                .clone()
        };
        let (first, second) = (tmp(&dir, "first.json"), tmp(&dir, "second.json"));
        let o = cached("1000000").path("--json", &first).run();
        assert!(o.status.success(), "{}", stderr(&o));
        assert!(stderr(&o).contains("teacher: unipc"), "{}", stderr(&o));
        assert!(cache.exists());
        let o = cached("1000000").path("--json", &second).run();
        assert!(o.status.success(), "{}", stderr(&o));
        assert!(stderr(&o).contains("16 outputs from"), "{}", stderr(&o));
        assert_eq!(rows_of(&first), rows_of(&second));
        assert_eq!(rows_of(&first), v["rows"]);
        cached("7").fails_with("holds the teacher of other settings (seed: 1000000 there, 7 now)");
        // A file that is not a cache is never overwritten; a description without its data is
        // solved again.
        let json_of = dir.path().join("teacher.safetensors.json");
        std::fs::remove_file(&json_of).unwrap();
        cached("1000000").fails_with("exists without its description");
        std::fs::remove_file(&cache).unwrap();
        std::fs::write(&json_of, "{}").unwrap();
        let third = tmp(&dir, "third.json");
        cached("1000000").path("--json", &third).ok();
        assert_eq!(rows_of(&first), rows_of(&third));
        assert!(cache.exists());
        ld3("eval")
            .args(&["samples", "--nfe", "4"])
            .gmm("edm-public")
            .args(&["--lpips"])
            .fails_with("need an image model");
    }
}

/// `fixtures/gmm-class/<case>/<file>`.
fn class_fixture(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/gmm-class")
        .join(path)
}

#[test]
fn samples_a_class_conditional_model_with_guidance_to_the_exact_solution() {
    let dir = tempfile::tempdir().unwrap();
    let out = tmp(&dir, "guided.safetensors");
    let model = format!("gmm:{}", class_fixture("edm/gmm.json").display());
    // Labels from the noise file; guidance 3; DPM-Solver++(3) at 200 NFE.
    ld3("sample")
        .args(&["--model", &model, "--guidance", "3", "--device", "cpu"])
        .args(&["--solver", "dpm-solver++", "--nfe", "200", "--dtype", "f64"])
        .path("--noise", &class_fixture("edm/noise.safetensors"))
        .args(&["--quiet"])
        .path("--out", &out)
        .ok();
    let exact: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(class_fixture("edm/exact.json")).unwrap())
            .unwrap();
    let rows: Vec<Vec<f64>> = serde_json::from_value(exact["exact"]["3.0"].clone()).unwrap();
    let got = read_samples(&out);
    let want = candle_core::Tensor::from_vec(rows.concat(), got.dims(), &candle_core::Device::Cpu)
        .unwrap()
        .to_dtype(candle_core::DType::F32)
        .unwrap();
    assert!(max_abs_diff(&got, &want).unwrap() < 1e-3);
    let mut stored = candle_core::safetensors::load(&out, &candle_core::Device::Cpu).unwrap();
    assert_eq!(
        stored
            .remove("class_labels")
            .unwrap()
            .to_vec1::<u32>()
            .unwrap()[..3],
        [0, 1, 2]
    );

    // Labels from the flag: one for all, or one per sample; `uncond` is the marginal.
    let labelled =
        ld3("sample").args(&["--model", "demo-class-gmm", "--num-samples", "3", "--quiet"]);
    labelled
        .clone()
        .args(&["--class-labels", "2"])
        .path("--out", &tmp(&dir, "one.safetensors"))
        .ok();
    labelled
        .clone()
        .args(&["--class-labels", "0,uncond,1", "--guidance", "7.5"])
        .path("--out", &tmp(&dir, "each.safetensors"))
        .ok();

    // Bad input: each a clear error, nothing written.
    let bad = tmp(&dir, "bad.safetensors");
    for (extra, want) in [
        (
            vec!["--class-labels", "0,1"],
            "gives 2 labels for 3 samples",
        ),
        (vec!["--class-labels", "3"], "class label 3 is out of range"),
        (vec!["--class-labels", "x"], "'x' is not a class number"),
        (vec![], "needs class labels 0..2: give --class-labels"),
        (
            vec!["--class-labels", "0", "--guidance", "0.5"],
            "--guidance must be a number ≥ 1",
        ),
        (
            vec!["--class-labels", "0", "--guidance", "nan"],
            "--guidance must be a number ≥ 1",
        ),
        (
            vec!["--class-labels", "0", "--device", "cuda"],
            "built without CUDA",
        ),
        (
            vec!["--class-labels", "0", "--device", "tpu"],
            "unknown device",
        ),
    ] {
        labelled
            .clone()
            .args(&extra)
            .path("--out", &bad)
            .fails_with(want);
        assert!(!bad.exists(), "{extra:?} wrote its output");
    }
    // Labels in a --noise file are checked like the flag's, naming the file.
    let noise_file = tmp(&dir, "noise.safetensors");
    let dev = candle_core::Device::Cpu;
    candle_core::safetensors::save(
        &std::collections::HashMap::from([
            (
                "noise".to_string(),
                candle_core::Tensor::zeros((3, 1, 4, 4), candle_core::DType::F64, &dev).unwrap(),
            ),
            (
                "class_labels".to_string(),
                candle_core::Tensor::new(&[0u32, 1], &dev).unwrap(),
            ),
        ]),
        &noise_file,
    )
    .unwrap();
    ld3("sample")
        .args(&["--model", "demo-class-gmm", "--quiet"])
        .path("--noise", &noise_file)
        .path("--out", &bad)
        .fails_with("noise.safetensors: the conditioning (class labels) is for a batch of 2");
    ld3("sample")
        .args(&["--num-samples", "1", "--class-labels", "1", "--quiet"])
        .path("--out", &bad)
        .fails_with("--class-labels applies to class-conditional models");
    ld3("sample")
        .args(&["--num-samples", "1", "--guidance", "2", "--quiet"])
        .path("--out", &bad)
        .fails_with("needs a conditional model");
    assert!(!bad.exists());
}

#[test]
fn trains_a_guided_class_conditional_schedule_with_a_class_per_pair() {
    let dir = tempfile::tempdir().unwrap();
    let out = tmp(&dir, "guided.json");
    let train = |guidance: &str| {
        ld3("train")
            .args(&[
                "--model",
                "demo-class-gmm",
                "--guidance",
                guidance,
                "--quiet",
            ])
            .args(&[
                "--solver", "ipndm", "--order", "2", "--nfe", "4", "--loss", "l2",
            ])
            .args(&[
                "--train-samples",
                "6",
                "--valid-samples",
                "6",
                "--heldout-samples",
                "4",
            ])
            .path("--out", &out)
    };
    train("3").ok();
    let file: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(file["model"], "demo-class-gmm (guidance 3)");
    assert!(file["provenance"]["conditioning"]
        .as_str()
        .unwrap()
        .contains("class labels"));
    let pairs = candle_core::safetensors::load(
        out.with_extension("json.run").join("teacher.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    assert_eq!(pairs["class_labels"].dims(), &[12]);
    // The same run directory with another guidance is another model: refused.
    train("5").fails_with("guidance 5");
    ld3("sample")
        .args(&[
            "--model",
            "demo-class-gmm",
            "--guidance",
            "3",
            "--class-labels",
            "1",
        ])
        .args(&["--num-samples", "2", "--quiet"])
        .path("--schedule-file", &out)
        .path("--out", &tmp(&dir, "s.safetensors"))
        .ok();
}

/// Every file under `dir` with its bytes.
fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = vec![];
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push((p.clone(), std::fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn a_run_directory_is_locked_and_other_settings_are_refused_every_way_in() {
    let dir = tempfile::tempdir().unwrap();
    let out = tmp(&dir, "s.json");
    let run = tmp(&dir, "s.json.run");
    let train = || {
        ld3("train")
            .gmm("edm-public")
            .args(&["--solver", "ipndm", "--order", "2", "--nfe", "4", "--quiet"])
            .args(&["--train-samples", "6", "--valid-samples", "6"])
            .args(&["--heldout-samples", "4", "--init", "best-hand-made"])
            .path("--out", &out)
    };
    // A long run holds the lock; a second one is refused at once and touches nothing.
    let long = train().args(&["--rounds-theta", "300"]);
    let mut first = std::process::Command::new(env!("CARGO_BIN_EXE_ld3"))
        .args(&long.0)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let lock = run.join("lock");
    let started = std::time::Instant::now();
    while !std::fs::read_to_string(&lock).is_ok_and(|s| !s.trim().is_empty()) {
        assert!(
            started.elapsed().as_secs() < 60,
            "the first run never locked"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let holder = std::fs::read_to_string(&lock).unwrap();
    // Stopped (not ended) while the others try, so that any change to its files is theirs.
    let signal = |sig: &str| {
        assert!(std::process::Command::new("kill")
            .args([sig, &first.id().to_string()])
            .status()
            .unwrap()
            .success());
    };
    signal("-STOP");
    let before = snapshot(&run);
    let t = std::time::Instant::now();
    long.fails_with(&format!(
        "in use by another ld3 run (process {})",
        holder.trim()
    ));
    // The same --out from another run directory: the output file is locked too.
    let elsewhere = tmp(&dir, "elsewhere.run");
    long.clone()
        .path("--run-dir", &elsewhere)
        .fails_with(&format!(
            "{} is in use by another ld3 run (process {})",
            out.display(),
            holder.trim()
        ));
    assert!(t.elapsed().as_secs_f64() < 10.0, "refused at once");
    assert_eq!(snapshot(&run), before, "a refused run touched the winner's");
    assert!(!elsewhere.exists() && !out.exists());
    // kill -9: the locks go with the process; the next run takes them and finishes the run.
    first.kill().unwrap();
    first.wait().unwrap();
    long.ok();
    assert!(
        !tmp(&dir, ".s.json.lock").exists(),
        "the output's lock file goes with the run"
    );
    assert!(out.is_file());

    // Other settings, by every way in: the same --out (its OUT.run), --run-dir, --resume.
    let before = snapshot(&run);
    train()
        .args(&["--seed", "3"])
        .fails_with("seed: 0 there, 3 now");
    let other_out = tmp(&dir, "other.json");
    for way_in in ["--run-dir", "--resume"] {
        // The default --init (both) against the run's best-hand-made.
        ld3("train")
            .gmm("edm-public")
            .args(&["--solver", "ipndm", "--order", "2", "--nfe", "4", "--quiet"])
            .args(&["--train-samples", "6", "--valid-samples", "6"])
            .args(&["--heldout-samples", "4"])
            .path(way_in, &run)
            .path("--out", &other_out)
            .fails_with("init: \"best-hand-made\" there, \"both\" now");
    }
    assert_eq!(
        snapshot(&run),
        before,
        "a refused run changed the run directory"
    );
    assert!(!other_out.exists());
}

#[test]
fn bad_output_paths_fail_at_once_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().to_path_buf();
    let missing = dir.path().join("no/such/out.safetensors");
    let file = tmp(&dir, "a-file");
    std::fs::write(&file, "x").unwrap();
    for (cmd, want) in [
        (
            ld3("sample")
                .args(&["--num-samples", "2"])
                .path("--out", &folder),
            "is a folder",
        ),
        (
            ld3("sample")
                .args(&["--num-samples", "2"])
                .path("--out", &missing),
            "does not exist",
        ),
        (
            ld3("sample")
                .args(&["--num-samples", "2"])
                .path("--out", &tmp(&dir, "x.safetensors"))
                .path("--images", &file),
            "is a file, not a folder",
        ),
        (
            ld3("train").gmm("edm-public").path("--out", &folder),
            "is a folder",
        ),
        (
            ld3("train")
                .gmm("edm-public")
                .path("--out", &tmp(&dir, "s.json"))
                .path("--run-dir", &file),
            "is a file, not a folder",
        ),
        (
            ld3("train")
                .path("--out", &tmp(&dir, "s.json"))
                .path("--compare", &missing),
            "--compare",
        ),
        (
            ld3("sample")
                .args(&["--num-samples", "2"])
                .path("--out", &tmp(&dir, "x.safetensors"))
                .path("--grid", &folder),
            "--grid",
        ),
        (
            ld3("eval")
                .args(&["fid", "a.npz", "b.npz"])
                .path("--save-stats", &missing),
            "--save-stats",
        ),
        (
            ld3("eval")
                .args(&["samples"])
                .gmm("edm-public")
                .path("--json", &folder),
            "--json",
        ),
    ] {
        let t = std::time::Instant::now();
        cmd.fails_with(want);
        assert!(
            t.elapsed().as_secs_f64() < 1.0,
            "{want}: not within a second"
        );
    }
    // Nothing was written next to the bad paths.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}

/// Lays `files` out as the hub client leaves a download of `repo` in the cache `cache`.
fn hub_snapshot(cache: &Path, repo: &str, files: &[(&str, &Path)]) {
    let root = cache.join(format!("models--{}", repo.replace('/', "--")));
    let commit = "0123456789abcdef0123456789abcdef01234567";
    let snap = root.join("snapshots").join(commit);
    std::fs::create_dir_all(&snap).unwrap();
    std::fs::create_dir_all(root.join("refs")).unwrap();
    std::fs::write(root.join("refs/main"), commit).unwrap();
    for (name, from) in files {
        std::fs::copy(from, snap.join(name)).unwrap();
    }
}

#[test]
fn list_check_loads_and_runs_what_was_fetched() {
    let dir = tempfile::tempdir().unwrap();
    let hf = dir.path().join("hf");
    let ld3_cache = dir.path().join("ld3");
    let check = |names: &[&str]| {
        ld3("list")
            .env("HF_HUB_CACHE", &hf)
            .env("LD3_CACHE", &ld3_cache)
            .args(&["--check"])
            .args(names)
    };
    // Nothing fetched: each missing one says how to fetch it, and the command fails.
    check(&["ddpm-cifar10-32"]).fails_with("cargo xtask fetch-weights ddpm-cifar10-32");
    check(&["vgg16"]).fails_with("cargo xtask fetch-weights vgg16");
    check(&["inception"]).fails_with("cargo xtask fetch-weights inception");
    // Fetched (a tiny UNet under the hub model's name, pseudo-random metric networks).
    let unet = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/unet/tiny-attn");
    let files = [
        "config.json",
        "scheduler_config.json",
        "diffusion_pytorch_model.safetensors",
    ]
    .map(|f| (f, unet.join(f)));
    let files: Vec<(&str, &Path)> = files.iter().map(|(f, p)| (*f, p.as_path())).collect();
    hub_snapshot(&hf, "google/ddpm-cifar10-32", &files);
    let vgg = tmp(&dir, "vgg.safetensors");
    let w = ld3_testing::weights::lpips_backbone(ld3_metrics::LpipsNet::Vgg16).unwrap();
    candle_core::safetensors::save(&w, &vgg).unwrap();
    hub_snapshot(&hf, "timm/vgg16.tv_in1k", &[("model.safetensors", &vgg)]);
    let fid = ld3_cache.join("weights/fid-inception");
    std::fs::create_dir_all(&fid).unwrap();
    let w = ld3_testing::weights::fid_inception().unwrap();
    candle_core::safetensors::save(&w, fid.join("pseudo.safetensors")).unwrap();
    let folder = unet.to_str().unwrap();
    let out = check(&[
        "ld3-mnist-32",
        "ddpm-cifar10-32",
        folder,
        "demo-class-gmm",
        "vgg16",
        "inception",
    ])
    .ok();
    assert_eq!(out.matches(": ok (").count(), 6, "{out}");
    assert!(out.contains("2048 finite features"), "{out}");
    // A corrupt download is found here, not in the middle of a long job.
    let bad = tmp(&dir, "bad");
    std::fs::write(&bad, b"not safetensors").unwrap();
    hub_snapshot(&hf, "timm/vgg16.tv_in1k", &[("model.safetensors", &bad)]);
    check(&["ld3-mnist-32", "vgg16"]).fails_with("vgg16: FAILED");
}

#[test]
fn help_names_every_model_and_only_the_options_that_apply() {
    let help = |sub: &str| ld3(sub).args(&["--help"]).ok();
    for sub in ["sample", "train", "schedule"] {
        let text = help(sub);
        for name in ld3_models::registry::REGISTRY
            .iter()
            .map(|e| e.name)
            .chain(ld3_models::EMBEDDED.iter().map(|(n, _, _)| *n))
        {
            assert!(text.contains(name), "`ld3 {sub} --help` lacks {name}");
        }
        assert!(text.contains("diffusers layout"), "{sub}");
    }
    let train = help("train");
    for flag in ["--schedule ", "--rho", "--ays-model"] {
        assert!(!train.contains(flag), "train --help offers {flag}");
    }
    assert!(train.contains("--resume <RUN_DIR>") && train.contains("OUT.run"));
    assert!(help("sample").contains("--schedule <SCHEDULE>"));
    let o = ld3("train")
        .args(&["--schedule", "edm", "--out", "x.json"])
        .run();
    assert_eq!(o.status.code(), Some(2), "a usage error");
    assert!(stderr(&o).contains("unexpected argument '--schedule'"));
}

#[test]
fn convert_writes_an_edm_snapshot_as_safetensors_and_refuses_code() {
    let dir = tempfile::tempdir().unwrap();
    let edm = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/edm");
    let out = tmp(&dir, "vp");
    let stdout = ld3("convert")
        .args(&[edm.join("ddpmpp-vp.pkl").to_str().unwrap()])
        .args(&[out.to_str().unwrap()])
        .ok();
    assert!(stdout.contains("VPPrecond with 147 tensors"), "{stdout}");
    let tensors =
        candle_core::safetensors::load(out.join("model.safetensors"), &candle_core::Device::Cpu)
            .unwrap();
    assert_eq!(tensors.len(), 147);
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("edm.json")).unwrap()).unwrap();
    assert_eq!(config["class_name"], "VPPrecond");
    assert_eq!(config["init_kwargs"]["model_type"], "SongUNet");
    // The snapshot and its converted folder sample alike (EDM's σ ∈ [0.002, 80]).
    let (from_pkl, from_dir) = (tmp(&dir, "a.safetensors"), tmp(&dir, "b.safetensors"));
    for (model, to) in [
        (edm.join("ddpmpp-vp.pkl"), &from_pkl),
        (out.clone(), &from_dir),
    ] {
        ld3("sample")
            .path("--model", &model)
            .args(&["--solver", "heun", "--nfe", "5", "--schedule", "edm"])
            .args(&["--num-samples", "2", "--quiet"])
            .path("--out", to)
            .ok();
    }
    let (a, b) = (read_samples(&from_pkl), read_samples(&from_dir));
    assert_eq!(a.dims(), &[2, 3, 8, 8]);
    assert_eq!(
        a.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        b.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    );
    // The class-conditional ADM takes --class-labels (and needs them).
    let adm = edm.join("adm-edm-cond.pkl");
    ld3("sample")
        .path("--model", &adm)
        .args(&[
            "--class-labels",
            "1,3",
            "--num-samples",
            "2",
            "--nfe",
            "4",
            "--quiet",
        ])
        .path("--out", &tmp(&dir, "adm.safetensors"))
        .ok();
    assert_eq!(
        read_samples(&tmp(&dir, "adm.safetensors")).dims(),
        &[2, 3, 8, 8]
    );
    ld3("sample")
        .path("--model", &adm)
        .args(&["--num-samples", "2"])
        .path("--out", &tmp(&dir, "adm2.safetensors"))
        .fails_with("needs class labels 0..3");
    ld3("sample")
        .path("--model", &edm.join("evil.pkl"))
        .args(&["--num-samples", "1"])
        .path("--out", &tmp(&dir, "c.safetensors"))
        .fails_with("refused");
    // A snapshot that would run code: refused, nothing written.
    let evil_out = tmp(&dir, "evil");
    ld3("convert")
        .args(&[edm.join("evil-state.pkl").to_str().unwrap()])
        .args(&[evil_out.to_str().unwrap()])
        .fails_with("refused");
    assert!(!evil_out.exists());
}

/// Whole solves of every EDM fixture, through the command users type, equal PyTorch's float64
/// solves with EDM's own network code (fixtures/gen/edm_solves.py): DDIM, Euler and Heun (odd and
/// even NFE) on EDM's σ grid [0.002, 80], from the stored noise (and class labels).
#[test]
fn edm_snapshots_solve_as_pytorch_does_in_float64() {
    let dir = tempfile::tempdir().unwrap();
    let edm = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/edm");
    for case in ["ddpmpp-vp", "ncsnpp-ve", "ddpmpp-edm", "adm-edm-cond"] {
        let solves = edm.join(format!("{case}.solves.safetensors"));
        let reference = candle_core::safetensors::load(&solves, &candle_core::Device::Cpu).unwrap();
        for (solver, nfe) in [
            ("ddim", 4),
            ("ddim", 10),
            ("euler", 5),
            ("heun", 7),
            ("heun", 6),
        ] {
            let want = &reference[&format!("{solver}-{nfe}")];
            let norm = want.sqr().unwrap().sum_all().unwrap();
            let norm = norm.to_scalar::<f64>().unwrap().sqrt();
            for (dtype, tolerance) in [("f64", 1e-4), ("f32", 1e-3)] {
                let out = tmp(&dir, &format!("{case}-{solver}-{nfe}-{dtype}.safetensors"));
                ld3("sample")
                    .path("--model", &edm.join(format!("{case}.pkl")))
                    .args(&["--solver", solver, "--nfe", &nfe.to_string()])
                    .args(&["--schedule", "edm", "--dtype", dtype, "--quiet"])
                    .path("--noise", &solves)
                    .path("--out", &out)
                    .ok();
                let got = read_samples(&out)
                    .to_dtype(candle_core::DType::F64)
                    .unwrap();
                let err = (got - want).unwrap().sqr().unwrap().sum_all().unwrap();
                let err = err.to_scalar::<f64>().unwrap().sqrt() / norm;
                assert!(
                    err < tolerance,
                    "{case} {solver}-{nfe} in {dtype}: relative error {err:e}"
                );
            }
        }
    }
}

/// A registry EDM network (NVIDIA's snapshots, fetched into ld3-rs's cache): missing, the error
/// names the fetch command and the address; fetched (here a fixture under the name), it is
/// converted once on first use and then samples like the snapshot itself.
#[test]
fn registry_edm_networks_are_converted_once_and_sample_like_their_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("ld3");
    let name = "edm-cifar10-32x32-uncond-vp";
    let with_cache = |sub: &str| ld3(sub).env("LD3_CACHE", &cache);
    with_cache("list")
        .args(&["--check", name])
        .fails_with("cargo xtask fetch-weights edm-cifar10-32x32-uncond-vp");
    with_cache("list").args(&["--check", name]).fails_with(
        "https://nvlabs-fi-cdn.nvidia.com/edm/pretrained/edm-cifar10-32x32-uncond-vp.pkl",
    );
    let edm = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/edm");
    let home = cache.join("models").join(name);
    std::fs::create_dir_all(&home).unwrap();
    std::fs::copy(edm.join("ddpmpp-vp.pkl"), home.join(format!("{name}.pkl"))).unwrap();
    let first = with_cache("list").args(&["--check", name]).run();
    assert!(first.status.success(), "{}", stderr(&first));
    assert!(stderr(&first).contains("converting"), "{}", stderr(&first));
    assert!(home.join("converted/edm.json").is_file());
    let again = with_cache("list").args(&["--check", name]).run();
    assert!(again.status.success() && !stderr(&again).contains("converting"));
    let outs = [tmp(&dir, "a.safetensors"), tmp(&dir, "b.safetensors")];
    for (model, out) in [name, edm.join("ddpmpp-vp.pkl").to_str().unwrap()]
        .iter()
        .zip(&outs)
    {
        with_cache("sample")
            .args(&["--model", model, "--solver", "ipndm", "--order", "3"])
            .args(&["--nfe", "4", "--num-samples", "2", "--quiet"])
            .path("--out", out)
            .ok();
    }
    assert_eq!(
        read_samples(&outs[0])
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap(),
        read_samples(&outs[1])
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    );
    // The paper's setting by name: λ-mode and r = 0.001·d/N² (d = 3·8·8 here, N = 4).
    let schedule = tmp(&dir, "s.json");
    with_cache("train")
        .args(&[
            "--model", name, "--solver", "ipndm", "--order", "3", "--nfe", "4",
        ])
        .args(&[
            "--train-samples",
            "2",
            "--valid-samples",
            "2",
            "--heldout-samples",
            "2",
        ])
        .args(&["--rounds-theta", "1", "--rounds-joint", "1", "--quiet"])
        .path("--out", &schedule)
        .ok();
    let file: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&schedule).unwrap()).unwrap();
    assert_eq!(file["model"], name);
    assert_eq!(file["provenance"]["time_mode"], "lambda");
    let radius = file["provenance"]["radius"].as_f64().unwrap();
    assert!((radius - 0.001 * 192.0 / 16.0).abs() < 1e-12, "{radius}");
}

fn sd_fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/sd")
        .join(name)
}

/// Text-to-image through the command users type: a tiny pipeline in the hub's layout (SD 1.5's
/// quirks, and SD 2.1's v-prediction), prompts from a file, guidance 7.5 by default, DDIM over
/// diffusers' DDIM times from a schedule file, the stored noise: `latents` and the decoded
/// `samples` equal diffusers' StableDiffusionPipeline (float64, fixtures/gen/sd_pipelines.py).
#[test]
fn text_to_image_samples_equal_diffusers_pipeline() {
    use ld3_solvers::{NoiseSchedule, ScheduleFile};
    let dir = tempfile::tempdir().unwrap();
    for name in ["tiny-sd15", "tiny-sd21v"] {
        let pipe = sd_fixture(name);
        let r = candle_core::safetensors::load(
            pipe.join("reference.safetensors"),
            &candle_core::Device::Cpu,
        )
        .unwrap();
        let prompts: Vec<String> =
            serde_json::from_str(&std::fs::read_to_string(pipe.join("prompts.json")).unwrap())
                .unwrap();
        // diffusers' DDIM times 751, 501, 251, 1 as t = (k + 1)/N, landing on ᾱ_0 (t = 1/N).
        let steps: Vec<i64> = r["sample.timesteps"].to_vec1().unwrap();
        let mut t: Vec<f64> = steps.iter().map(|k| (*k as f64 + 1.0) / 1000.0).collect();
        t.push(0.001);
        let model = ld3_models::load_model(&pipe.to_str().unwrap().parse().unwrap()).unwrap();
        let ddim =
            ld3_solvers::SolverConfig::new(ld3_solvers::SolverName::Ddim, None, None).unwrap();
        let schedule = tmp(&dir, &format!("{name}-ddim.json"));
        ScheduleFile::new(
            ddim,
            4,
            model.noise_schedule() as &dyn NoiseSchedule,
            t.clone(),
            t,
            format!("{} (guidance 7.5)", pipe.display()),
            serde_json::json!({"rule": "diffusers DDIM, 4 steps"}),
        )
        .unwrap()
        .write(&schedule)
        .unwrap();
        let noise = tmp(&dir, &format!("{name}-noise.safetensors"));
        let z = r["sample.noise"].clone();
        candle_core::safetensors::save(&std::collections::HashMap::from([("noise", z)]), &noise)
            .unwrap();
        let prompt_file = tmp(&dir, &format!("{name}-prompts.txt"));
        std::fs::write(&prompt_file, format!("{}\n\n{}\n", prompts[0], prompts[1])).unwrap();
        let out = tmp(&dir, &format!("{name}.safetensors"));
        let images = tmp(&dir, &format!("{name}-images"));
        ld3("sample")
            .path("--model", &pipe)
            .path("--prompts", &prompt_file)
            .path("--schedule-file", &schedule)
            .path("--noise", &noise)
            .args(&["--dtype", "f64", "--quiet"])
            .path("--out", &out)
            .path("--images", &images)
            .ok();
        let got = candle_core::safetensors::load(&out, &candle_core::Device::Cpu).unwrap();
        assert_eq!(got["latents"].dims(), &[2, 4, 8, 8]);
        assert_eq!(got["samples"].dims(), &[2, 3, 16, 16]);
        // Sample 0 had the empty negative prompt in the reference too (the batch is independent).
        for (ours, theirs) in [("latents", "sample.latents"), ("samples", "sample.decoded")] {
            let a = got[ours]
                .narrow(0, 0, 1)
                .unwrap()
                .to_dtype(candle_core::DType::F64)
                .unwrap();
            let b = r[theirs].narrow(0, 0, 1).unwrap();
            let err = ld3_testing::relative_error(&a, &b).unwrap();
            assert!(err < 1e-4, "{name} {ours}: relative error {err:e}");
        }
        // Each picture says what made it.
        let png = std::fs::read(images.join("sample-00001.png")).unwrap();
        let text = String::from_utf8_lossy(&png);
        assert!(
            text.contains(&prompts[1]) && text.contains("ddim"),
            "{name}"
        );
    }
    // Bad input: clear errors, nothing written.
    let pipe = sd_fixture("tiny-sd15");
    let out = tmp(&dir, "bad.safetensors");
    let run = |extra: &[&str]| {
        ld3("sample")
            .path("--model", &pipe)
            .args(&["--num-samples", "1", "--quiet"])
            .args(extra)
            .path("--out", &out)
    };
    run(&[]).fails_with("give --prompt");
    run(&["--prompt", "x", "--guidance", "0.5"]).fails_with("--guidance must be a number ≥ 1");
    let o = run(&["--prompt", "x", "--guidance", "abc"]).run();
    assert_eq!(o.status.code(), Some(2), "a usage error");
    assert!(stderr(&o).contains("'abc'"), "{}", stderr(&o));
    let empty = tmp(&dir, "empty.txt");
    std::fs::write(&empty, "\n  \n").unwrap();
    ld3("sample")
        .path("--model", &pipe)
        .path("--prompts", &empty)
        .path("--out", &out)
        .fails_with("holds no prompts");
    ld3("sample")
        .gmm("edm-public")
        .args(&["--prompt", "x", "--num-samples", "1"])
        .path("--out", &out)
        .fails_with("apply to text-to-image models");
    ld3("sample")
        .gmm("edm-public")
        .args(&["--negative-prompt", "x", "--num-samples", "1"])
        .path("--out", &out)
        .fails_with("--negative-prompt applies to text-to-image models");
    // A pipeline folder missing its merges or a UNet weight.
    let broken = tmp(&dir, "broken");
    copy_dir(&pipe, &broken);
    std::fs::remove_file(broken.join("tokenizer/merges.txt")).unwrap();
    run_model(&broken, &out).fails_with("merges.txt");
    copy_dir(&pipe, &broken);
    let unet = broken.join("unet/diffusion_pytorch_model.safetensors");
    let mut w = candle_core::safetensors::load(&unet, &candle_core::Device::Cpu).unwrap();
    w.remove("conv_in.weight");
    candle_core::safetensors::save(&w, &unet).unwrap();
    run_model(&broken, &out).fails_with("conv_in.weight");
    assert!(!out.exists());
}

fn run_model(model: &Path, out: &Path) -> Ld3 {
    ld3("sample")
        .path("--model", model)
        .args(&["--prompt", "x", "--num-samples", "1", "--quiet"])
        .path("--out", out)
}

fn copy_dir(from: &Path, to: &Path) {
    let _ = std::fs::remove_dir_all(to);
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let dest = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &dest);
        } else {
            std::fs::copy(entry.path(), dest).unwrap();
        }
    }
}

/// A registry Stable Diffusion name resolves to its hub snapshot (here the tiny SD 1.5-style
/// pipeline laid out under stable-diffusion-v1-5's name with the fp16 file names the registry
/// fetches), loads as a text-to-image model and samples from a prompt.
#[test]
fn registry_sd_names_load_their_hub_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let hf = dir.path().join("hf");
    let pipe = sd_fixture("tiny-sd15");
    let names = [
        ("model_index.json", "model_index.json"),
        (
            "scheduler/scheduler_config.json",
            "scheduler/scheduler_config.json",
        ),
        ("tokenizer/vocab.json", "tokenizer/vocab.json"),
        ("tokenizer/merges.txt", "tokenizer/merges.txt"),
        (
            "tokenizer/special_tokens_map.json",
            "tokenizer/special_tokens_map.json",
        ),
        (
            "tokenizer/tokenizer_config.json",
            "tokenizer/tokenizer_config.json",
        ),
        ("text_encoder/config.json", "text_encoder/config.json"),
        (
            "text_encoder/model.fp16.safetensors",
            "text_encoder/model.safetensors",
        ),
        ("unet/config.json", "unet/config.json"),
        (
            "unet/diffusion_pytorch_model.fp16.safetensors",
            "unet/diffusion_pytorch_model.safetensors",
        ),
        ("vae/config.json", "vae/config.json"),
        (
            "vae/diffusion_pytorch_model.fp16.safetensors",
            "vae/diffusion_pytorch_model.safetensors",
        ),
    ];
    let root = hf.join("models--stable-diffusion-v1-5--stable-diffusion-v1-5");
    let commit = "0123456789abcdef0123456789abcdef01234567";
    for (to, from) in names {
        let dest = root.join("snapshots").join(commit).join(to);
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        std::fs::copy(pipe.join(from), dest).unwrap();
    }
    std::fs::create_dir_all(root.join("refs")).unwrap();
    std::fs::write(root.join("refs/main"), commit).unwrap();
    let out = ld3("list")
        .env("HF_HUB_CACHE", &hf)
        .args(&["--check", "sd-v1-5"])
        .ok();
    assert!(out.contains("sd-v1-5: ok"), "{out}");
    let samples = tmp(&dir, "s.safetensors");
    ld3("sample")
        .env("HF_HUB_CACHE", &hf)
        .args(&[
            "--model",
            "sd-v1-5",
            "--prompt",
            "a lighthouse",
            "--nfe",
            "3",
        ])
        .args(&["--num-samples", "1", "--quiet"])
        .path("--out", &samples)
        .ok();
    assert_eq!(read_samples(&samples).dims(), &[1, 3, 16, 16]);
    ld3("list")
        .env("HF_HUB_CACHE", &dir.path().join("empty"))
        .args(&["--check", "sd-v2-1"])
        .fails_with("cargo xtask fetch-weights sd-v2-1");
}

/// LD3 on a latent text-to-image model, end to end from a prompt file: teacher pairs with a
/// prompt each (their prompts written beside them), losses on decoded images, λ-mode steps,
/// batch 1; the learned schedule beats the best hand-made one on held-out prompts' pairs and
/// samples; a prompt file with no prompts and a schedule made for another model are refused.
#[test]
fn trains_a_text_to_image_schedule_from_a_prompt_file() {
    let dir = tempfile::tempdir().unwrap();
    let pipe = sd_fixture("tiny-sd15");
    let prompts = tmp(&dir, "prompts.txt");
    std::fs::write(
        &prompts,
        "a red cube on a blue sphere\na lighthouse at dusk\n\na cat on a sofa\n",
    )
    .unwrap();
    let out = tmp(&dir, "sd.json");
    let stdout = ld3("train")
        .path("--model", &pipe)
        .path("--prompts", &prompts)
        .args(&["--solver", "ipndm", "--order", "2", "--nfe", "4", "--quiet"])
        .args(&[
            "--train-samples",
            "3",
            "--valid-samples",
            "3",
            "--heldout-samples",
            "3",
        ])
        .args(&[
            "--rounds-theta",
            "1",
            "--rounds-joint",
            "2",
            "--init",
            "best-hand-made",
        ])
        .args(&["--loss", "l2"])
        .path("--out", &out)
        .ok();
    let file: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let p = &file["provenance"];
    assert_eq!(p["time_mode"], "lambda");
    assert!(p["conditioning"].as_str().unwrap().starts_with("3 prompts"));
    assert!(file["model"].as_str().unwrap().ends_with("(guidance 7.5)"));
    let heldout = p["heldout"].as_array().unwrap();
    let mean = |name: &str| {
        heldout
            .iter()
            .find(|h| h["schedule"] == name)
            .map(|h| h["mean"].as_f64().unwrap())
    };
    let best_hand_made = p["initial_schedule"].as_str().unwrap();
    assert!(
        mean("ld3").unwrap() <= mean(best_hand_made).unwrap(),
        "{stdout}"
    );
    let pair_prompts: Vec<String> = serde_json::from_str(
        &std::fs::read_to_string(tmp(&dir, "sd.json.run/teacher.prompts.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(pair_prompts.len(), 6);
    assert_eq!(pair_prompts[1], "a lighthouse at dusk");
    // The schedule samples this model.
    let samples = tmp(&dir, "s.safetensors");
    ld3("sample")
        .path("--model", &pipe)
        .args(&["--prompt", "a cat", "--num-samples", "1", "--quiet"])
        .path("--schedule-file", &out)
        .path("--out", &samples)
        .ok();
    assert_eq!(read_samples(&samples).dims(), &[1, 3, 16, 16]);
    // Scored on prompts (drawn as training draws them) beside the hand-made schedule.
    let scores = ld3("eval")
        .args(&[
            "samples",
            "--num-samples",
            "2",
            "--with-hand-made",
            "--nfe",
            "4",
        ])
        .args(&["--solver", "ipndm", "--order", "2"])
        .path("--model", &pipe)
        .path("--prompts", &prompts)
        .path("--schedule-file", &out)
        .ok();
    assert!(
        scores.contains("sd.json") && scores.contains("logsnr"),
        "{scores}"
    );
    ld3("eval")
        .args(&["samples", "--num-samples", "2"])
        .path("--model", &pipe)
        .fails_with("needs prompts");
    // Not for another model, nor without prompts.
    let other = sd_fixture("tiny-sd21v");
    ld3("sample")
        .path("--model", &other)
        .args(&["--prompt", "a cat", "--num-samples", "1"])
        .path("--schedule-file", &out)
        .path("--out", &tmp(&dir, "o.safetensors"))
        .fails_with("tiny-sd15");
    let empty = tmp(&dir, "empty.txt");
    std::fs::write(&empty, "\n").unwrap();
    ld3("train")
        .path("--model", &pipe)
        .path("--prompts", &empty)
        .path("--out", &tmp(&dir, "e.json"))
        .fails_with("holds no prompts");
    ld3("train")
        .path("--model", &pipe)
        .path("--out", &tmp(&dir, "e.json"))
        .fails_with("needs its prompts");
    assert!(!tmp(&dir, "o.safetensors").exists() && !tmp(&dir, "e.json").exists());
}
