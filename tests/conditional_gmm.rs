//! The class-conditional Gaussian mixtures of `fixtures/gmm-class/` (written by
//! `fixtures/gen/gmm_conditional.py`): guided sampling converges to the exact solutions of the
//! classifier-free-guided ODE (scipy, rtol 1e-13) for guidance 1, 3 and 7.5, and LD3 learns a
//! schedule for the guided model, with a class per teacher pair, that beats every hand-made one
//! on fresh noise and classes.

use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use ld3::models::{
    ClassConditionalMixture, Conditioning, Denoiser, DenoiserPredictor, Guided, UNCONDITIONAL_CLASS,
};
use ld3::solvers::steps::{LogSnrUniform, StepSchedule};
use ld3::solvers::{rng, sample, SolverConfig, SolverName, Times};
use ld3::train::teacher::{Conditioner, UniformClasses};
use ld3::train::trainer::hand_made;
use ld3::train::{TeacherConfig, TrainConfig, Trainer};

struct Case {
    model: ClassConditionalMixture,
    noise: Tensor,
    labels: Conditioning,
    exact: serde_json::Value,
}

fn case(name: &str) -> Case {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/gmm-class")
        .join(name);
    let model = ClassConditionalMixture::from_file(&dir.join("gmm.json")).unwrap();
    let mut t =
        candle_core::safetensors::load(dir.join("noise.safetensors"), &Device::Cpu).unwrap();
    let exact =
        serde_json::from_str(&std::fs::read_to_string(dir.join("exact.json")).unwrap()).unwrap();
    Case {
        model,
        noise: t.remove("noise").unwrap().to_dtype(DType::F64).unwrap(),
        labels: Conditioning::Class(t.remove("class_labels").unwrap()),
        exact,
    }
}

impl Case {
    fn exact(&self, g: f64) -> Tensor {
        let rows: Vec<Vec<f64>> =
            serde_json::from_value(self.exact["exact"][format!("{g:?}")].clone()).unwrap();
        let dims: Vec<usize> = self.noise.dims().to_vec();
        Tensor::from_vec(rows.concat(), dims, &Device::Cpu).unwrap()
    }
}

fn relative_error(x: &Tensor, exact: &Tensor) -> f64 {
    ld3_testing::relative_error(x, exact).unwrap()
}

fn solve(
    model: &dyn Denoiser,
    config: &SolverConfig,
    t: &[f64],
    t_net: &[f64],
    z: &Tensor,
    cond: &Conditioning,
) -> Tensor {
    let (solver, _) = config.build_for_nfe(t.len() - 1).unwrap();
    let times = Times::from_f64(t, t_net, &Device::Cpu).unwrap();
    let x_t = (z * model.noise_schedule().prior_scale()).unwrap();
    let predictor = DenoiserPredictor::with_conditioning(model, cond.clone());
    sample(solver.as_ref(), &predictor, &x_t, &times, None)
        .unwrap()
        .x
}

#[test]
fn guided_sampling_reaches_the_exact_guided_ode_solution() {
    for name in ["edm", "vp-linear"] {
        let c = case(name);
        for g in [1.0, 3.0, 7.5] {
            let guided = Guided::new(&c.model, g).unwrap();
            let exact = c.exact(g);
            for (config, tol) in [
                (
                    SolverConfig::new(SolverName::DpmSolverPp, Some(3), None).unwrap(),
                    1e-3,
                ),
                (
                    SolverConfig::new(SolverName::UniPc, Some(2), None).unwrap(),
                    1e-3,
                ),
                (
                    SolverConfig::new(SolverName::Ddim, None, None).unwrap(),
                    1e-2,
                ),
            ] {
                let t = LogSnrUniform.times(guided.noise_schedule(), 200).unwrap();
                let x = solve(&guided, &config, &t, &t, &c.noise, &c.labels);
                let err = relative_error(&x, &exact);
                eprintln!("{name} g={g} {config}: {err:.2e}");
                assert!(err < tol, "{name} g={g} {config}: relative error {err:e}");
            }
        }
    }
}

#[test]
fn guidance_is_one_doubled_batch_and_one_at_scale_one() {
    let c = case("edm");
    let x = (&c.noise * 3.0).unwrap();
    let t = Tensor::new(2.5f64, &Device::Cpu).unwrap();
    let cond = c.model.forward(&x, &t, &c.labels).unwrap();
    let Conditioning::Class(l) = &c.labels else {
        unreachable!()
    };
    let uncond = c
        .model
        .forward(
            &x,
            &t,
            &Conditioning::Class(
                Tensor::full(UNCONDITIONAL_CLASS, l.dim(0).unwrap(), &Device::Cpu).unwrap(),
            ),
        )
        .unwrap();
    let want = (&uncond + ((&cond - &uncond).unwrap() * 7.5).unwrap()).unwrap();
    let got = Guided::new(&c.model, 7.5)
        .unwrap()
        .forward(&x, &t, &c.labels)
        .unwrap();
    assert!(ld3::solvers::gradcheck::max_abs_diff(&got, &want).unwrap() < 1e-12);
    let one = Guided::new(&c.model, 1.0)
        .unwrap()
        .forward(&x, &t, &c.labels)
        .unwrap();
    assert!(ld3::solvers::gradcheck::max_abs_diff(&one, &cond).unwrap() == 0.0);
    for bad in [0.5, f64::NAN, f64::INFINITY] {
        let e = Guided::new(&c.model, bad).err().unwrap().to_string();
        assert!(e.contains("guidance scale must be a number ≥ 1"), "{e}");
    }
}

#[test]
fn ld3_learns_a_guided_schedule_that_beats_every_hand_made_one() {
    let c = case("edm");
    let guided = Guided::new(&c.model, 3.0).unwrap();
    let config = SolverConfig::new(SolverName::Ipndm, Some(3), None).unwrap();
    let nfe = 4;
    let teacher = TeacherConfig::default_for(&guided, 20).unwrap();
    let dir = std::env::temp_dir().join(format!("ld3-class-gmm-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let out = Trainer::new(
        &guided,
        "demo-class-gmm (guidance 3)",
        TrainConfig::new(config.clone(), nfe, teacher),
        &dir,
    )
    .unwrap()
    .run(false, None)
    .unwrap();
    // The teacher pairs carry one class each, stored with them.
    let stored =
        candle_core::safetensors::load(dir.join("teacher.safetensors"), &Device::Cpu).unwrap();
    assert_eq!(stored["class_labels"].dims(), &[100]);
    std::fs::remove_dir_all(&dir).unwrap();

    // Fresh noises and classes, against a 1000-NFE reference.
    let n = 500;
    let z = rng::standard_normal(
        7_000_000,
        n,
        c.model.sample_shape(),
        DType::F64,
        &Device::Cpu,
    )
    .unwrap();
    let labels = UniformClasses {
        classes: 3,
        device: Device::Cpu,
    }
    .draw(7_000_000, n)
    .unwrap();
    let reference_config = ld3_testing::reference_solver().unwrap();
    let t_ref = LogSnrUniform.times(guided.noise_schedule(), 1000).unwrap();
    let reference = solve(&guided, &reference_config, &t_ref, &t_ref, &z, &labels);
    let (_, steps) = config.build_for_nfe(nfe).unwrap();
    let learned = relative_error(
        &solve(
            &guided,
            &config,
            &out.schedule.t,
            &out.schedule.t_net,
            &z,
            &labels,
        ),
        &reference,
    );
    let mut best = f64::INFINITY;
    for rule in hand_made(config.solver) {
        let t = rule.times(guided.noise_schedule(), steps).unwrap();
        let err = relative_error(&solve(&guided, &config, &t, &t, &z, &labels), &reference);
        eprintln!("{}: {err:.4}", rule.name());
        best = best.min(err);
    }
    eprintln!("learned {learned:.4}, best hand-made {best:.4}");
    assert!(learned < best, "learned {learned} vs best hand-made {best}");
}
