//! The trainer end to end on an exact Gaussian mixture: it learns, it is deterministic, a resumed
//! run equals an uninterrupted one, and bad input is a clear error.

use std::path::PathBuf;

use ld3_models::GaussianMixture;
use ld3_solvers::{SolverConfig, SolverName, SolverVariant};
use ld3_train::{PairUse, TeacherConfig, TimeMode, TrainConfig, Trainer};

fn gmm() -> GaussianMixture {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/gmm/edm-public");
    GaussianMixture::from_file(&dir.join("gmm.json")).unwrap()
}

fn config(solver: SolverName, order: usize, nfe: usize) -> TrainConfig {
    let teacher = TeacherConfig::new(
        SolverConfig::new(SolverName::UniPc, Some(3), Some(SolverVariant::Bh1)).unwrap(),
        40,
    )
    .unwrap();
    let mut c = TrainConfig::new(
        SolverConfig::new(solver, Some(order), None).unwrap(),
        nfe,
        teacher,
    );
    c.train_samples = 20;
    c.valid_samples = 20;
    c.heldout_samples = 20;
    c
}

fn run_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ld3-train-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

#[test]
fn learns_far_better_steps_where_hand_made_ones_are_poor() {
    let g = gmm();
    let dir = run_dir("learn");
    let out = Trainer::new(
        &g,
        "edm-public",
        config(SolverName::DpmSolverPp, 3, 6),
        &dir,
    )
    .unwrap()
    .run(false, None)
    .unwrap();
    assert!(out.finished);
    let learned = &out.table[0];
    let best = out.table[1..]
        .iter()
        .map(|r| r.mean)
        .fold(f64::INFINITY, f64::min);
    assert_eq!(learned.schedule, "ld3");
    assert!(
        learned.mean < 0.5 * best,
        "held-out: learned {} vs best hand-made {best}",
        learned.mean
    );
    let p = &out.schedule.provenance;
    assert!(p["best_valid_loss"].as_f64().unwrap() <= p["initial_valid_loss"].as_f64().unwrap());
    // The run directory holds what a resume and a reader need: shared teacher pairs and the
    // best schedule, and one sub-run per start.
    for f in [
        "teacher.safetensors",
        "teacher.json",
        "heldout.safetensors",
        "best.json",
    ] {
        assert!(dir.join(f).exists(), "{f} missing");
    }
    for sub in ["from-uniform", "from-hand-made"] {
        for f in [
            "checkpoint.json",
            "starts.safetensors",
            "log.jsonl",
            "best.json",
        ] {
            assert!(dir.join(sub).join(f).exists(), "{sub}/{f} missing");
        }
    }
    let reread = ld3_solvers::ScheduleFile::read(&dir.join("best.json")).unwrap();
    assert_eq!(reread.t, out.schedule.t);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn same_seed_same_schedule_and_resume_equals_uninterrupted() {
    let g = gmm();
    let c = config(SolverName::Ipndm, 3, 4);
    let (a, b, r) = (run_dir("a"), run_dir("b"), run_dir("resumed"));
    let full_a = Trainer::new(&g, "edm-public", c.clone(), &a)
        .unwrap()
        .run(false, None)
        .unwrap();
    let full_b = Trainer::new(&g, "edm-public", c.clone(), &b)
        .unwrap()
        .run(false, None)
        .unwrap();
    assert_eq!(full_a.schedule.t, full_b.schedule.t);
    assert_eq!(full_a.schedule.t_net, full_b.schedule.t_net);
    // Interrupted after 3 rounds, then resumed.
    let part = Trainer::new(&g, "edm-public", c.clone(), &r)
        .unwrap()
        .run(false, Some(3))
        .unwrap();
    assert!(!part.finished);
    let resumed = Trainer::new(&g, "edm-public", c.clone(), &r)
        .unwrap()
        .run(true, None)
        .unwrap();
    assert!(resumed.finished);
    assert_eq!(resumed.schedule.t, full_a.schedule.t);
    assert_eq!(resumed.schedule.t_net, full_a.schedule.t_net);
    // The logs are the uninterrupted run's, with no record twice — also after a kill in the middle
    // of a round (its records are written again when the round is redone).
    for sub in ["from-uniform", "from-hand-made"] {
        let log = |d: &PathBuf| std::fs::read_to_string(d.join(sub).join("log.jsonl")).unwrap();
        assert_eq!(log(&r), log(&a), "{sub}");
    }
    let killed = run_dir("killed");
    Trainer::new(&g, "edm-public", c.clone(), &killed)
        .unwrap()
        .run(false, Some(2))
        .unwrap();
    let first_log = killed.join("from-uniform/log.jsonl");
    let mut text = std::fs::read_to_string(&first_log).unwrap();
    text.push_str("{\"event\":\"iteration\",\"round\":2,\"iteration\":999}\n");
    std::fs::write(&first_log, text).unwrap();
    let mut notes = vec![];
    Trainer::new(&g, "edm-public", c.clone(), &killed)
        .unwrap()
        .with_observer(|e| {
            if let ld3_train::Event::Note(n) = e {
                notes.push(n.clone());
            }
        })
        .run(true, None)
        .unwrap();
    assert!(
        notes.iter().any(|n| n.contains("resuming after round 2")),
        "{notes:?}"
    );
    assert_eq!(
        std::fs::read_to_string(&first_log).unwrap(),
        std::fs::read_to_string(a.join("from-uniform/log.jsonl")).unwrap()
    );
    std::fs::remove_dir_all(killed).unwrap();
    for d in [a, b, r] {
        std::fs::remove_dir_all(d).unwrap();
    }
}

#[test]
fn pooled_pairs_train_on_all_pairs_and_old_runs_read_as_split() {
    let g = gmm();
    let mut c = config(SolverName::Ipndm, 3, 4);
    c.init = ld3_train::Init::Uniform;
    c.rounds_theta = 1;
    c.rounds_joint = 0;
    let run = |pairs: PairUse, dir: &PathBuf| {
        Trainer::new(&g, "edm-public", TrainConfig { pairs, ..c.clone() }, dir)
            .unwrap()
            .run(false, None)
            .unwrap()
    };
    let (split_dir, pooled_dir) = (run_dir("split"), run_dir("pooled"));
    let split = run(PairUse::Split, &split_dir);
    let pooled = run(PairUse::Pooled, &pooled_dir);
    // One round: 20 training pairs in batches of 2 when split, all 40 when pooled.
    assert_eq!(split.schedule.provenance["iterations"], 10);
    assert_eq!(pooled.schedule.provenance["iterations"], 20);
    assert_eq!(split.schedule.provenance["pairs"], "split");
    assert_eq!(pooled.schedule.provenance["pairs"], "pooled");
    assert_ne!(split.schedule.t, pooled.schedule.t);
    // A checkpoint from before the setting existed was a split run: it is continued as one,
    // and refused under pooled pairs.
    let cp_path = split_dir.join("checkpoint.json");
    let mut cp: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cp_path).unwrap()).unwrap();
    cp["config"].as_object_mut().unwrap().remove("pairs");
    std::fs::write(&cp_path, serde_json::to_string(&cp).unwrap()).unwrap();
    let again = Trainer::new(
        &g,
        "edm-public",
        TrainConfig {
            pairs: PairUse::Split,
            ..c.clone()
        },
        &split_dir,
    )
    .unwrap()
    .run(true, None)
    .unwrap();
    assert_eq!(again.schedule.t, split.schedule.t);
    let e = Trainer::new(&g, "edm-public", c.clone(), &split_dir)
        .unwrap()
        .run(true, None)
        .unwrap_err();
    assert!(
        e.to_string()
            .contains(r#"pairs: "split" there, "pooled" now"#),
        "{e}"
    );
    for d in [split_dir, pooled_dir] {
        std::fs::remove_dir_all(d).unwrap();
    }
}

/// Run directories record the layout they train in. One from before λ became every model's
/// default recorded a VP model's t layout as no mode: it is read as t, so the new default
/// refuses to continue it (naming the layout) and `mode: time` continues it.
#[test]
fn a_run_from_before_the_lambda_default_keeps_its_layout() {
    let vp = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/gmm/vp-public");
    let g = GaussianMixture::from_file(&vp.join("gmm.json")).unwrap();
    let mut c = config(SolverName::Ddim, 1, 4);
    c.init = ld3_train::Init::Uniform;
    c.rounds_theta = 1;
    c.rounds_joint = 0;
    let dir = run_dir("legacy-mode");
    let timed = TrainConfig {
        mode: Some(TimeMode::Time),
        ..c.clone()
    };
    let first = Trainer::new(&g, "vp-public", timed.clone(), &dir)
        .unwrap()
        .run(false, None)
        .unwrap();
    assert_eq!(first.schedule.provenance["time_mode"], "time");
    for file in ["run.json", "checkpoint.json"] {
        let path = dir.join(file);
        let mut v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(v["config"]["mode"], "time", "{file} records the layout");
        v["config"]["mode"] = serde_json::Value::Null;
        std::fs::write(&path, serde_json::to_string(&v).unwrap()).unwrap();
    }
    let e = Trainer::new(&g, "vp-public", c.clone(), &dir)
        .unwrap()
        .run(true, None)
        .unwrap_err();
    assert!(
        e.to_string()
            .contains(r#"mode: "time" there, "lambda" now"#),
        "{e}"
    );
    let again = Trainer::new(&g, "vp-public", timed, &dir)
        .unwrap()
        .run(true, None)
        .unwrap();
    assert_eq!(again.schedule.t, first.schedule.t);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn bad_input_is_a_clear_error_and_loses_nothing() {
    let g = gmm();
    let e = Trainer::new(
        &g,
        "x",
        config(SolverName::DpmSolverPp, 3, 2),
        run_dir("e1"),
    )
    .err()
    .unwrap();
    assert!(e.to_string().contains("too small"), "{e}");
    let mut c = config(SolverName::Ddim, 1, 4);
    c.radius = Some(-1.0);
    let e = Trainer::new(&g, "x", c, run_dir("e2")).err().unwrap();
    assert!(e.to_string().contains("radius must be ≥ 0"), "{e}");
    for (lr_theta, lr_xi) in [
        (-0.1, None),
        (0.0, None),
        (f64::NAN, None),
        (0.005, Some(f64::INFINITY)),
    ] {
        let mut c = config(SolverName::Ddim, 1, 4);
        c.lr_theta = lr_theta;
        c.lr_xi = lr_xi;
        let e = Trainer::new(&g, "x", c, run_dir("e3")).err().unwrap();
        assert!(e.to_string().contains("learning rate of"), "{e}");
    }
    let missing = run_dir("missing");
    let e = Trainer::new(&g, "x", config(SolverName::Ddim, 1, 4), &missing)
        .unwrap()
        .run(true, None)
        .unwrap_err();
    assert!(e.to_string().contains("no run to resume"), "{e}");
    // Starting the same run again in its directory re-reports the finished run and changes
    // nothing; other settings in the same directory are refused, with or without --resume.
    let dir = run_dir("twice");
    let mut c = config(SolverName::Ddim, 1, 4);
    c.rounds_theta = 1;
    c.rounds_joint = 0;
    let first = Trainer::new(&g, "x", c.clone(), &dir)
        .unwrap()
        .run(false, None)
        .unwrap();
    let before = std::fs::read_to_string(dir.join("from-uniform/checkpoint.json")).unwrap();
    let again = Trainer::new(&g, "x", c.clone(), &dir)
        .unwrap()
        .run(false, None)
        .unwrap();
    assert_eq!(first.schedule.t, again.schedule.t);
    assert_eq!(
        before,
        std::fs::read_to_string(dir.join("from-uniform/checkpoint.json")).unwrap()
    );
    let mut other = c.clone();
    other.seed = 9;
    for resume in [false, true] {
        let e = Trainer::new(&g, "x", other.clone(), &dir)
            .unwrap()
            .run(resume, None)
            .unwrap_err();
        assert!(e.to_string().contains("other settings"), "{e}");
    }
    assert_eq!(
        before,
        std::fs::read_to_string(dir.join("from-uniform/checkpoint.json")).unwrap()
    );
    std::fs::remove_dir_all(dir).unwrap();
}

/// A mixture whose outputs turn NaN for a window of calls, as a diverging network might.
struct Flaky {
    inner: GaussianMixture,
    calls: std::sync::atomic::AtomicUsize,
    nan_calls: std::ops::Range<usize>,
}

impl ld3_models::Denoiser for Flaky {
    fn describe(&self) -> String {
        "flaky".into()
    }
    fn sample_shape(&self) -> &[usize] {
        self.inner.sample_shape()
    }
    fn noise_schedule(&self) -> &dyn ld3_solvers::NoiseSchedule {
        self.inner.noise_schedule()
    }
    fn parameterization(&self) -> ld3_models::Parameterization {
        self.inner.parameterization()
    }
    fn device(&self) -> &candle_core::Device {
        self.inner.device()
    }
    fn forward(
        &self,
        x: &candle_core::Tensor,
        t_net: &candle_core::Tensor,
        cond: &ld3_models::Conditioning,
    ) -> ld3_solvers::Result<candle_core::Tensor> {
        let n = self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let out = self.inner.forward(x, t_net, cond)?;
        Ok(if self.nan_calls.contains(&n) {
            (out * f64::NAN)?
        } else {
            out
        })
    }
}

#[test]
fn nan_steps_are_skipped_reported_and_training_finishes() {
    use ld3_models::Denoiser;
    let flaky = Flaky {
        inner: gmm(),
        calls: 0.into(),
        nan_calls: 700..740,
    };
    let dir = run_dir("nan");
    let mut c = config(SolverName::UniPc, 2, 4);
    c.init = ld3_train::Init::Uniform;
    let out = Trainer::new(&flaky, "flaky", c, &dir)
        .unwrap()
        .run(false, None)
        .unwrap();
    let calls = flaky.calls.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        calls > flaky.nan_calls.end,
        "the NaN window was never reached: {calls} calls"
    );
    assert!(out.finished && out.schedule.t.iter().all(|t| t.is_finite()));
    let log = std::fs::read_to_string(dir.join("log.jsonl")).unwrap();
    assert!(log.contains("\"nan\""), "skipped steps are logged");
    assert!(flaky.noise_schedule().t_max() > 0.0);
    std::fs::remove_dir_all(dir).unwrap();
}

/// Class labels all equal to `label` (another conditioner than the default).
struct FixedClass(u32);

impl ld3_train::Conditioner for FixedClass {
    fn describe(&self) -> String {
        format!("class {} for every pair", self.0)
    }
    fn draw(&self, _seed: u64, count: usize) -> ld3_solvers::Result<ld3_models::Conditioning> {
        ld3_models::Conditioning::classes(&vec![self.0; count], &candle_core::Device::Cpu)
    }
}

#[test]
fn a_run_keeps_its_conditioning_and_refuses_other_conditioning_on_resume() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/gmm-class/edm");
    let model = ld3_models::ClassConditionalMixture::from_file(&dir.join("gmm.json")).unwrap();
    let run = run_dir("cond");
    let mut c = config(SolverName::Ipndm, 2, 4);
    c.train_samples = 6;
    c.valid_samples = 6;
    c.heldout_samples = 4;
    c.init = ld3_train::Init::Uniform;
    let first = Trainer::new(&model, "class-gmm", c.clone(), &run)
        .unwrap()
        .with_conditioner(std::sync::Arc::new(FixedClass(1)))
        .run(false, Some(1))
        .unwrap();
    assert!(!first.finished);
    let pairs =
        candle_core::safetensors::load(run.join("teacher.safetensors"), &candle_core::Device::Cpu)
            .unwrap();
    assert_eq!(pairs["class_labels"].to_vec1::<u32>().unwrap(), vec![1; 12]);
    let before = std::fs::read(run.join("checkpoint.json")).unwrap();
    // The default conditioner (uniform labels) is other conditioning: refused, nothing touched.
    let e = Trainer::new(&model, "class-gmm", c.clone(), &run)
        .unwrap()
        .run(true, None)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("conditioning: class 1 for every pair there, class labels uniform"),
        "{e}"
    );
    assert_eq!(std::fs::read(run.join("checkpoint.json")).unwrap(), before);
    // The same conditioning continues.
    let done = Trainer::new(&model, "class-gmm", c, &run)
        .unwrap()
        .with_conditioner(std::sync::Arc::new(FixedClass(1)))
        .run(true, None)
        .unwrap();
    assert!(done.finished);
    std::fs::remove_dir_all(run).unwrap();
}

#[test]
fn making_teacher_pairs_reports_progress_and_loading_them_does_not() {
    let g = gmm();
    let dir = run_dir("progress");
    let mut c = config(SolverName::Ipndm, 2, 4);
    c.init = ld3_train::Init::Uniform;
    c.rounds_theta = 1;
    c.rounds_joint = 0;
    let progress = |resume: bool| {
        let mut seen = vec![];
        Trainer::new(&g, "edm-public", c.clone(), &dir)
            .unwrap()
            .with_observer(|e| {
                if let ld3_train::Event::TeacherProgress { done, total } = e {
                    seen.push((*done, *total));
                }
            })
            .run(resume, None)
            .unwrap();
        seen
    };
    // 20 + 20 pooled pairs and 20 held-out ones, in batches of at most 64.
    assert_eq!(progress(false), vec![(40, 60), (60, 60)]);
    assert!(
        progress(true).is_empty(),
        "stored pairs are loaded, not made"
    );
    std::fs::remove_dir_all(dir).unwrap();
}
