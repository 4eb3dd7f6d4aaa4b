//! The crate's own CPU ops (fused GroupNorm, SiLU, attention that recomputes its probabilities in
//! the backward, frozen-weight convolutions and linear maps, softmax with a backward) against
//! candle's generic composites (`layers::set_own_ops(false)`) on whole solves: the value and the
//! gradient in every step time, every network time and the initial state are unchanged. A test
//! binary of its own: the switch is process-wide.

use std::path::PathBuf;

use candle_core::{DType, Device, Tensor, Var};
use ld3_models::edm_net::EdmNetwork;
use ld3_models::edm_pkl::read_network;
use ld3_models::layers::{set_own_ops, stacked_self_attention};
use ld3_models::sd::StableDiffusion;
use ld3_models::{load_model_as, Conditioning, Denoiser, DenoiserPredictor, Guided, ModelSpec};
use ld3_solvers::solvers::sample;
use ld3_solvers::{rng, SolverConfig, SolverName, Times};

/// The loss and its gradients in t, t_net and x_T.
fn value_and_gradients(
    model: &dyn Denoiser,
    predictor: &DenoiserPredictor,
    dtype: DType,
) -> Vec<Tensor> {
    let dev = Device::Cpu;
    let (solver, steps) = SolverConfig::new(SolverName::Ipndm, Some(2), None)
        .unwrap()
        .build_for_nfe(3)
        .unwrap();
    let t = [0.8995f64, 0.5003, 0.2004, 0.0206];
    let t_net = [0.8995f64, 0.5204, 0.1905, 0.0206];
    let var = |v: &[f64]| {
        Var::from_tensor(
            &Tensor::new(&v[..=steps], &dev)
                .unwrap()
                .to_dtype(dtype)
                .unwrap(),
        )
        .unwrap()
    };
    let (t, t_net) = (var(&t), var(&t_net));
    let x =
        Var::from_tensor(&rng::standard_normal(3, 1, model.sample_shape(), dtype, &dev).unwrap())
            .unwrap();
    let weights = rng::standard_normal(4, 1, &model.decoded_shape(), dtype, &dev).unwrap();
    let times = Times::new(t.as_tensor(), t_net.as_tensor()).unwrap();
    let out = sample(solver.as_ref(), predictor, x.as_tensor(), &times, None).unwrap();
    let loss = model
        .decode(&out.x)
        .unwrap()
        .mul(&weights)
        .unwrap()
        .sum_all()
        .unwrap();
    let grads = loss.backward().unwrap();
    let mut all = vec![loss.to_dtype(DType::F64).unwrap()];
    for v in [&t, &t_net, &x] {
        all.push(grads.get(v).unwrap().to_dtype(DType::F64).unwrap());
    }
    all
}

fn relative_error(a: &Tensor, b: &Tensor) -> f64 {
    let scale: f64 = b.abs().unwrap().max_all().unwrap().to_scalar().unwrap();
    let diff: f64 = (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar()
        .unwrap();
    diff / scale.max(1e-30)
}

/// Own ops on and off give the same loss and gradients on the tiny Stable Diffusion pipeline
/// (guided, decoded: GroupNorm, self- and cross-attention, the VAE), on the embedded MNIST UNet
/// and on EDM's three network families (tiny snapshots: DDPM++ and NCSN++ with one-head attention,
/// ADM too small for attention; the stacked attention with several heads is compared below):
/// in f64 to 1e-10. In f32 the two differ by rounding (the convolutions sum in another order, the
/// residual and time embedding join the product's sum, and guidance at 7.5 multiplies the
/// difference), so each f32 result is held to the f64 one: the own ops' relative error is at most
/// twice the generic path's, or 1e-4 where the generic one is below 5e-5 (measured: 1e-6 to
/// 9e-5 for either path).
#[test]
fn own_ops_leave_whole_solve_gradients_unchanged() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/sd/tiny-sd15");
    let run = |dtype: DType| {
        let sd = StableDiffusion::from_dir(&dir, dtype, &Device::Cpu, None).unwrap();
        let cond = sd
            .text_conditioning(&["a red cat".to_string()], &[String::new()])
            .unwrap();
        let guided = Guided::new(&sd, 7.5).unwrap();
        let sd_predictor = DenoiserPredictor::with_conditioning(&guided, cond);
        let spec: ModelSpec = "ld3-mnist-32".parse().unwrap();
        let mnist = load_model_as(&spec, dtype, &Device::Cpu).unwrap();
        let mnist_predictor = DenoiserPredictor::new(mnist.as_ref());
        let edm: Vec<(&str, EdmNetwork)> = ["ddpmpp-edm", "ncsnpp-ve", "adm-edm-cond"]
            .into_iter()
            .map(|name| {
                let pkl = dir.join(format!("../../edm/{name}.pkl"));
                let net = read_network(&pkl, "ema").unwrap();
                (
                    name,
                    EdmNetwork::new(&net, name, dtype, &Device::Cpu).unwrap(),
                )
            })
            .collect();
        let edm_predictors: Vec<DenoiserPredictor> = edm
            .iter()
            .map(|(name, d)| match *name {
                "adm-edm-cond" => DenoiserPredictor::with_conditioning(
                    d,
                    Conditioning::classes(&[2], &Device::Cpu).unwrap(),
                ),
                _ => DenoiserPredictor::new(d),
            })
            .collect();
        let mut cases: Vec<(&str, &dyn Denoiser, &DenoiserPredictor)> = vec![
            ("tiny-sd15", &sd, &sd_predictor),
            ("ld3-mnist-32", mnist.as_ref(), &mnist_predictor),
        ];
        for ((name, d), p) in edm.iter().zip(&edm_predictors) {
            cases.push((name, d, p));
        }
        cases
            .into_iter()
            .map(|(name, model, predictor)| {
                set_own_ops(true);
                let own = value_and_gradients(model, predictor, dtype);
                set_own_ops(false);
                let generic = value_and_gradients(model, predictor, dtype);
                set_own_ops(true);
                (name.to_string(), own, generic)
            })
            .collect::<Vec<_>>()
    };
    let exact = run(DType::F64);
    let rounded = run(DType::F32);
    let what = ["loss", "t", "t_net", "x_T"];
    for ((name, own, generic), (_, own32, generic32)) in exact.iter().zip(&rounded) {
        for (i, what) in what.iter().enumerate() {
            let err = relative_error(&own[i], &generic[i]);
            assert!(err < 1e-10, "{name} f64 {what}: relative error {err:e}");
            let (ours, theirs) = (
                relative_error(&own32[i], &own[i]),
                relative_error(&generic32[i], &own[i]),
            );
            eprintln!("{name} f32 {what}: own ops {ours:e}, generic {theirs:e}");
            assert!(
                ours <= 2.0 * theirs.max(5e-5),
                "{name} f32 {what}: own ops {ours:e} from f64, generic {theirs:e}"
            );
        }
    }
    stacked_attention_with_heads_is_unchanged();
}

/// The attention of networks that make q, k and v in one convolution (EDM's, after their channels
/// are reordered) with two and three heads: the kernel and the generic composite (the path off
/// the CPU) agree in value and in the input's gradient (f64, 1e-12). Called from the test above:
/// the switch is process-wide.
fn stacked_attention_with_heads_is_unchanged() {
    let dev = Device::Cpu;
    for heads in [2, 3] {
        let c = 4 * heads;
        let x =
            Var::from_tensor(&rng::standard_normal(5, 2, &[3 * c, 7], DType::F64, &dev).unwrap())
                .unwrap();
        let weights = rng::standard_normal(6, 2, &[c, 7], DType::F64, &dev).unwrap();
        let run = |own: bool| {
            set_own_ops(own);
            let y = stacked_self_attention(x.as_tensor(), heads).unwrap();
            let grads = y
                .mul(&weights)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            set_own_ops(true);
            [y, grads.get(&x).unwrap().clone()]
        };
        let (own, generic) = (run(true), run(false));
        for (what, a, b) in [
            ("value", &own[0], &generic[0]),
            ("gradient", &own[1], &generic[1]),
        ] {
            let err = relative_error(a, b);
            assert!(err < 1e-12, "{heads} heads, {what}: relative error {err:e}");
        }
    }
}
