//! Stable Diffusion's parts on the tiny pipelines of `fixtures/sd/` (written by
//! fixtures/gen/sd_pipelines.py with transformers and diffusers, in the hub's layout): CLIP's
//! token ids equal transformers' for ordinary, upper-case and punctuated, empty, Unicode and
//! over-long prompts; the text embeddings, the UNet's outputs and the VAE's equal the float64
//! PyTorch ones.

use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use ld3_models::clip::{ClipTextModel, ClipTokenizer};

fn pipeline(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/sd")
        .join(name)
}

fn prompts(name: &str) -> Vec<String> {
    let text = std::fs::read_to_string(pipeline(name).join("prompts.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn reference(name: &str) -> std::collections::HashMap<String, Tensor> {
    candle_core::safetensors::load(pipeline(name).join("reference.safetensors"), &Device::Cpu)
        .unwrap()
}

fn relative_error(got: &Tensor, want: &Tensor) -> f64 {
    let diff = (got - want).unwrap().sqr().unwrap().sum_all().unwrap();
    let norm = want.sqr().unwrap().sum_all().unwrap();
    (diff.to_scalar::<f64>().unwrap() / norm.to_scalar::<f64>().unwrap()).sqrt()
}

#[test]
fn token_ids_equal_transformers() {
    for name in ["tiny-sd15", "tiny-sd21v"] {
        let r = reference(name);
        let dir = pipeline(name).join("tokenizer");
        // tiny-sd21v ships tokenizer.json too: both ways of building it agree.
        let tokenizers = [
            ClipTokenizer::from_dir(&dir).unwrap(),
            ClipTokenizer::from_vocab_and_merges(&dir).unwrap(),
        ];
        for tok in &tokenizers {
            assert_eq!(tok.max_length(), 77);
            for (i, prompt) in prompts(name).iter().enumerate() {
                let got = tok.encode(prompt).unwrap();
                let want: Vec<i64> = r[&format!("tokens.{i}")].to_vec1().unwrap();
                let want: Vec<u32> = want.iter().map(|&t| t as u32).collect();
                assert_eq!(got.ids, want, "{name}, prompt {i}: {prompt:?}");
                let full: Vec<i64> = r[&format!("untruncated_length.{i}")].to_vec1().unwrap();
                assert_eq!(got.untruncated_len, full[0] as usize, "{name}, prompt {i}");
                assert_eq!(got.truncated.is_some(), full[0] > 77, "{name}, prompt {i}");
            }
        }
        // The over-long prompt says what was cut: the end of the repeated sentence.
        let long = tokenizers[0].encode(&prompts(name)[4]).unwrap();
        let cut = long.truncated.unwrap();
        assert!(cut.ends_with("lighthouse on a cliff at dusk"), "{cut}");
    }
}

#[test]
fn text_embeddings_equal_transformers_in_float64() {
    for name in ["tiny-sd15", "tiny-sd21v"] {
        let r = reference(name);
        let dir = pipeline(name);
        let model =
            ClipTextModel::from_dir(&dir.join("text_encoder"), DType::F64, &Device::Cpu).unwrap();
        for i in 0..prompts(name).len() {
            let ids = r[&format!("tokens.{i}")]
                .to_dtype(DType::U32)
                .unwrap()
                .unsqueeze(0)
                .unwrap();
            let got = model.forward(&ids).unwrap();
            let err = relative_error(&got, &r[&format!("embeddings.{i}")]);
            assert!(err < 1e-10, "{name}, prompt {i}: relative error {err:e}");
        }
    }
}

#[test]
fn broken_tokenizer_folders_and_foreign_ids_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let src = pipeline("tiny-sd15").join("tokenizer");
    for f in [
        "vocab.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
    ] {
        std::fs::copy(src.join(f), dir.path().join(f)).unwrap();
    }
    let e = ClipTokenizer::from_dir(dir.path())
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("merges.txt"), "{e}");
    let model = ClipTextModel::from_dir(
        &pipeline("tiny-sd15").join("text_encoder"),
        DType::F32,
        &Device::Cpu,
    )
    .unwrap();
    let ids = Tensor::new(&[[0u32, 49407]], &Device::Cpu).unwrap();
    let e = model.forward(&ids).err().unwrap().to_string();
    assert!(e.contains("outside the text encoder's vocabulary"), "{e}");
}

/// The UNet at t = 999, 500, 1: within 5e-6 of diffusers (whose time sinusoids are float32 even
/// in a float64 model), and within 1e-10 of diffusers with float64 sinusoids.
#[test]
fn unet_outputs_equal_diffusers_in_float64() {
    use ld3_models::unet_cond::UNet2DConditionModel;
    for name in ["tiny-sd15", "tiny-sd21v"] {
        let r = reference(name);
        let unet =
            UNet2DConditionModel::from_dir(&pipeline(name).join("unet"), DType::F64, &Device::Cpu)
                .unwrap();
        let ts: Vec<f64> = r["unet.t"].to_vec1().unwrap();
        for (j, t) in ts.iter().enumerate() {
            let t = Tensor::new(*t, &Device::Cpu).unwrap();
            let got = unet
                .forward(&r["unet.latents"], &t, &r["unet.context"])
                .unwrap();
            for (key, tol) in [("unet.out", 1e-4), ("unet.out_f64time", 1e-10)] {
                let err = relative_error(&got, &r[&format!("{key}.{j}")]);
                assert!(
                    err < tol,
                    "{name} {key} at t = {}: relative error {err:e}",
                    ts[j]
                );
            }
        }
    }
}

#[test]
fn vae_decodes_and_encodes_as_diffusers_in_float64() {
    use ld3_models::vae::AutoencoderKl;
    for name in ["tiny-sd15", "tiny-sd21v"] {
        let r = reference(name);
        let vae =
            AutoencoderKl::from_dir(&pipeline(name).join("vae"), DType::F64, &Device::Cpu).unwrap();
        // tiny-sd15's config has no scaling_factor: SD's 0.18215.
        assert_eq!(vae.scaling_factor(), 0.18215);
        let z = (&r["vae.latents"] / vae.scaling_factor()).unwrap();
        let err = relative_error(&vae.decode(&z).unwrap(), &r["vae.decoded"]);
        assert!(err < 1e-10, "{name} decode: relative error {err:e}");
        let (mean, _) = vae.encode(&r["vae.image"]).unwrap();
        let err = relative_error(&mean, &r["vae.encoded_mean"]);
        assert!(err < 1e-10, "{name} encode: relative error {err:e}");
    }
}

/// The whole guided text-to-image sample: diffusers' StableDiffusionPipeline in float64 with its
/// DDIMScheduler (4 steps at timesteps 751, 501, 251, 1, the last landing on ᾱ_0), guidance 7.5,
/// negative prompts, then the VAE decode — equal to ld3-rs's DDIM over the same times (t = (k+1)/N,
/// ending at 1/N) through the `Guided` wrapper and `decode`.
#[test]
fn a_guided_ddim_sample_equals_diffusers_pipeline() {
    use ld3_models::sd::StableDiffusion;
    use ld3_models::{Denoiser, DenoiserPredictor, Guided};
    use ld3_solvers::solvers::sample;
    use ld3_solvers::{SolverConfig, SolverName, Times};
    for name in ["tiny-sd15", "tiny-sd21v"] {
        let r = reference(name);
        let sd =
            StableDiffusion::from_dir(&pipeline(name), DType::F64, &Device::Cpu, None).unwrap();
        assert_eq!(sd.sample_shape(), &[4, 8, 8]);
        assert_eq!(sd.decoded_shape(), vec![3, 16, 16]);
        let all = prompts(name);
        let cond = sd
            .text_conditioning(
                &all[..2],
                &["".to_string(), "blurry, low quality".to_string()],
            )
            .unwrap();
        let steps: Vec<i64> = r["sample.timesteps"].to_vec1().unwrap();
        let mut t: Vec<f64> = steps.iter().map(|k| (*k as f64 + 1.0) / 1000.0).collect();
        t.push(0.001);
        let guided = Guided::new(&sd, 7.5).unwrap();
        let config = SolverConfig::new(SolverName::Ddim, None, None).unwrap();
        let (solver, _) = config.build_for_nfe(4).unwrap();
        let times = Times::from_f64(&t, &t, &Device::Cpu).unwrap();
        let z = r["sample.noise"].to_dtype(DType::F64).unwrap();
        let predictor = DenoiserPredictor::with_conditioning(&guided, cond);
        let x = sample(solver.as_ref(), &predictor, &z, &times, None)
            .unwrap()
            .x;
        let decoded = sd.decode(&x).unwrap();
        for (suffix, tol) in [("_f64", 1e-9), ("", 1e-4)] {
            let err = relative_error(&x, &r[&format!("sample.latents{suffix}")]);
            assert!(err < tol, "{name} latents{suffix}: relative error {err:e}");
            let err = relative_error(&decoded, &r[&format!("sample.decoded{suffix}")]);
            assert!(err < tol, "{name} decoded{suffix}: relative error {err:e}");
        }
    }
}

/// The gradient of a whole guided, decoded text-to-image solve (iPNDM-2 over 4 steps, guidance
/// 7.5, the VAE decoder, a weighted sum of the image) in every step time t_i, every network time
/// t^c_i and the initial latent equals central finite differences (float64, tiny SD 1.5-style
/// pipeline): LD3 can learn SD schedules through the UNet, the guidance and the decoder.
#[test]
fn the_guided_decoded_solve_is_differentiable_in_times_and_latent() {
    use ld3_models::sd::StableDiffusion;
    use ld3_models::{Denoiser, DenoiserPredictor, Guided};
    use ld3_solvers::gradcheck::GradCheck;
    use ld3_solvers::solvers::sample;
    use ld3_solvers::{rng, SolverConfig, SolverName, Times};
    let sd =
        StableDiffusion::from_dir(&pipeline("tiny-sd15"), DType::F64, &Device::Cpu, None).unwrap();
    let cond = sd
        .text_conditioning(&prompts("tiny-sd15")[..1], &["".to_string()])
        .unwrap();
    let guided = Guided::new(&sd, 7.5).unwrap();
    let predictor = DenoiserPredictor::with_conditioning(&guided, cond);
    let (solver, steps) = SolverConfig::new(SolverName::Ipndm, Some(2), None)
        .unwrap()
        .build_for_nfe(4)
        .unwrap();
    // Between the training steps k/N: the discrete schedule interpolates log ᾱ piecewise
    // linearly, so at a grid point the derivative jumps and differences straddle the kink.
    let t = Tensor::new(
        &[0.8995f64, 0.6003, 0.3004, 0.1005, 0.0206][..=steps],
        &Device::Cpu,
    )
    .unwrap();
    let t_net = Tensor::new(
        &[0.8995f64, 0.6204, 0.2905, 0.1106, 0.0206][..=steps],
        &Device::Cpu,
    )
    .unwrap();
    let x_t = rng::standard_normal(3, 1, sd.sample_shape(), DType::F64, &Device::Cpu).unwrap();
    let weights =
        rng::standard_normal(4, 1, &sd.decoded_shape(), DType::F64, &Device::Cpu).unwrap();
    let loss = |t: &Tensor, t_net: &Tensor, x: &Tensor| -> ld3_solvers::Result<Tensor> {
        let times = Times::new(t, t_net)?;
        let out = sample(solver.as_ref(), &predictor, x, &times, None)?;
        Ok(sd.decode(&out.x)?.mul(&weights)?.sum_all()?)
    };
    let report = GradCheck {
        eps: 1e-6,
        max_coords: 16,
    }
    .run(&[t.clone(), t_net.clone()], |v| loss(&v[0], &v[1], &x_t))
    .unwrap();
    let (err, at) = report.worst();
    assert!(err < 1e-5, "times: relative error {err:e} at {at:?}");
    // The loss's rounding noise is a few 1e-11 (sums over the decoded image): at a step of 1e-5
    // it is 3e-6 of a derivative, at 1e-4 a tenth of that; the truncation error is 1e-6 at 1e-3.
    let report = GradCheck {
        eps: 1e-4,
        max_coords: 24,
    }
    .run(std::slice::from_ref(&x_t), |v| loss(&t, &t_net, &v[0]))
    .unwrap();
    let (err, at) = report.worst();
    assert!(err < 1e-5, "latent: relative error {err:e} at {at:?}");
}

/// Plain sampling takes candle's fused softmax and LayerNorm (no backward); anything that may
/// be differentiated takes the composite ops. Both give the same UNet output (f32).
#[test]
fn fused_sampling_kernels_equal_the_differentiable_ones() {
    use ld3_models::unet_cond::UNet2DConditionModel;
    for name in ["tiny-sd15", "tiny-sd21v"] {
        let r = reference(name);
        let unet =
            UNet2DConditionModel::from_dir(&pipeline(name).join("unet"), DType::F32, &Device::Cpu)
                .unwrap();
        let x = r["unet.latents"].to_dtype(DType::F32).unwrap();
        let context = r["unet.context"].to_dtype(DType::F32).unwrap();
        let t = Tensor::new(500f32, &Device::Cpu).unwrap();
        let fused = unet.forward(&x, &t, &context).unwrap();
        let var = candle_core::Var::from_tensor(&x).unwrap();
        let composite = unet.forward(var.as_tensor(), &t, &context).unwrap();
        let err = relative_error(
            &fused.to_dtype(DType::F64).unwrap(),
            &composite.to_dtype(DType::F64).unwrap(),
        );
        assert!(err < 1e-5, "{name}: relative error {err:e}");
        // And the fused path is not the one taken under a gradient: it has no backward.
        assert!(composite.track_op() && !fused.track_op());
    }
}
