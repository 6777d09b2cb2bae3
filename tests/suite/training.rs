//! Building models from scratch, saving them as HF checkpoints, training with exact resume.

use crate::common;

use crate::common::max_abs_diff;
use interp::interp_core::train::{Batch, BatchSource, Schedule, TrainConfig};
use interp::interp_core::{tch, BlockStyle, HookedTransformer, MlpKind, ModelSpec, NormPlacement, Result};
use tch::{Device, Kind, Tensor};

fn spec(style: BlockStyle, mlp: Option<MlpKind>) -> ModelSpec {
    ModelSpec {
        style,
        n_layers: 2,
        d_model: 32,
        n_heads: 4,
        d_mlp: 64,
        d_vocab: 16,
        n_ctx: 32,
        mlp,
        tie_embeddings: false,
        bos_token_id: Some(0),
        experts: None,
        norm: NormPlacement::Pre,
    }
}

fn scratch(name: &str) -> common::Scratch {
    common::Scratch::new(&format!("train-{name}"))
}

/// Next token = a fixed permutation of the current one: learnable by one layer.
struct Permutation {
    fail_at: Option<usize>,
}

impl Permutation {
    /// A batch from `seed` alone (the toolkit's own generator: torch's global one is shared by
    /// the tests running in parallel).
    fn batch(seed: u64) -> Batch {
        let g = Tensor::arange(16, (Kind::Int64, Device::Cpu));
        let perm = (g * 5 + 3).remainder(16);
        let mut rng = interp::interp_core::Rng::new(seed);
        let ids: Vec<i64> = (0..16 * 12).map(|_| rng.below(16) as i64).collect();
        let input = Tensor::from_slice(&ids).view([16, 12]);
        let target = perm.index_select(0, &input.flatten(0, -1)).view([16, 12]);
        Batch { input, target, mask: None }
    }
}

impl BatchSource for Permutation {
    fn train_batch(&self, step: usize) -> Result<Batch> {
        if Some(step) == self.fail_at {
            return Err(interp::interp_core::Error::Input("interrupted".into()));
        }
        Ok(Self::batch(1000 + step as u64))
    }
    fn eval_batches(&self) -> Result<Vec<Batch>> {
        Ok(vec![Self::batch(7)])
    }
}

/// Trains `model` for `steps` on the permutation task (the eval loss must at least halve), saves
/// it, and loads it back as the same config and function.
fn learns_and_round_trips(model: &HookedTransformer, steps: usize, name: &str) {
    let report = model.train(&Permutation { fail_at: None }, &quiet(steps)).unwrap();
    let (first, last) = (report.eval_losses[0].1, report.eval_losses.last().unwrap().1);
    assert!(last < 0.5 * first, "{name}: eval loss {first} -> {last}");
    let dir = scratch(name);
    model.save_pretrained(&dir).unwrap();
    let back = HookedTransformer::from_pretrained_dir(&dir, Device::Cpu, Kind::Float).unwrap();
    assert_eq!(back.cfg, model.cfg, "{name}");
    let tokens = Permutation::batch(99).input;
    assert_eq!(max_abs_diff(&back.forward(&tokens).unwrap(), &model.forward(&tokens).unwrap()), 0.0, "{name}");
}

fn quiet(steps: usize) -> TrainConfig {
    TrainConfig { steps, lr: 3e-3, warmup_steps: 5, progress: false, eval_every: 10, checkpoint_every: 5, ..Default::default() }
}

#[test]
fn every_variant_saves_and_loads_back_exactly() {
    let variants = [
        (BlockStyle::Gpt2, Some(MlpKind::Gelu)),
        (BlockStyle::Gpt2, Some(MlpKind::Relu)),
        (BlockStyle::Gpt2, Some(MlpKind::Bilinear)),
        (BlockStyle::Gpt2, Some(MlpKind::Glu)),
        (BlockStyle::Gpt2, None),
        (BlockStyle::Llama, Some(MlpKind::SwiGlu)),
        (BlockStyle::Llama, Some(MlpKind::GeGlu)),
        (BlockStyle::Llama, Some(MlpKind::ReGlu)),
        (BlockStyle::Llama, Some(MlpKind::Bilinear)),
        (BlockStyle::Llama, None),
    ];
    let tokens = Tensor::randint(16, [2, 10], (Kind::Int64, Device::Cpu));
    for (style, mlp) in variants {
        let model = HookedTransformer::init_random(&spec(style, mlp), 1, Kind::Float, Device::Cpu).unwrap();
        let dir = scratch("roundtrip");
        model.save_pretrained(&dir).unwrap();
        let back = HookedTransformer::from_pretrained_dir(&dir, Device::Cpu, Kind::Float).unwrap();
        assert_eq!(back.cfg, model.cfg, "{style:?} {mlp:?}");
        assert_eq!(max_abs_diff(&back.forward(&tokens).unwrap(), &model.forward(&tokens).unwrap()), 0.0, "{style:?} {mlp:?}");
        assert_eq!(back.n_params(), model.n_params());
        assert_eq!(model.cfg.attn_only, mlp.is_none());
    }
    let err = interp::interp_core::ModelSpec { mlp: Some(MlpKind::Relu), ..spec(BlockStyle::Llama, None) }.config().unwrap_err();
    assert!(err.to_string().contains("gated"), "{err}");
    let attn_only = HookedTransformer::init_random(&spec(BlockStyle::Gpt2, None), 1, Kind::Float, Device::Cpu).unwrap();
    let e = attn_only.run_with_cache(&tokens, interp::interp_core::CacheSpec::names(["blocks.0.mlp.hook_post"])).err().unwrap();
    assert!(e.to_string().contains("attention-only"), "{e}");
}

#[test]
fn training_learns_and_resumes_exactly() {
    let init = || HookedTransformer::init_random(&spec(BlockStyle::Gpt2, Some(MlpKind::Bilinear)), 3, Kind::Float, Device::Cpu).unwrap();
    // Uninterrupted.
    let a = init();
    let before = a.eval_loss(&Permutation { fail_at: None }).unwrap();
    let report = a.train(&Permutation { fail_at: None }, &quiet(60)).unwrap();
    let after = report.eval_losses.last().unwrap().1;
    assert!(before > 2.0 && after < 0.3 * before, "eval loss {before} -> {after}");
    // Interrupted at step 12 (after the checkpoint of step 10), then resumed.
    let dir = scratch("resume");
    let cfg = TrainConfig { checkpoint_dir: Some(dir.to_path_buf()), ..quiet(60) };
    let b = init();
    let err = b.train(&Permutation { fail_at: Some(12) }, &cfg).unwrap_err();
    assert!(err.to_string().contains("interrupted"));
    let b = init();
    let resumed = b.train(&Permutation { fail_at: None }, &cfg).unwrap();
    assert_eq!(resumed.resumed_at, 10);
    for (pa, pb) in a.parameters().iter().zip(b.parameters()) {
        assert_eq!(max_abs_diff(pa, &pb), 0.0, "resumed weights differ from an uninterrupted run");
    }
    // A checkpoint of another configuration is refused.
    let other = HookedTransformer::init_random(&spec(BlockStyle::Llama, Some(MlpKind::SwiGlu)), 3, Kind::Float, Device::Cpu).unwrap();
    let e = other.train(&Permutation { fail_at: None }, &cfg).unwrap_err().to_string();
    assert!(e.contains("another model configuration"), "{e}");
}

#[test]
fn nan_loss_stops_with_a_clear_error_and_keeps_the_last_good_checkpoint() {
    let dir = scratch("nan");
    let model = HookedTransformer::init_random(&spec(BlockStyle::Llama, Some(MlpKind::SwiGlu)), 4, Kind::Float, Device::Cpu).unwrap();
    // A learning rate this large diverges within a few steps.
    let cfg = TrainConfig { lr: 1e30, warmup_steps: 1, grad_clip: None, checkpoint_every: 1, checkpoint_dir: Some(dir.to_path_buf()), ..quiet(50) };
    let e = model.train(&Permutation { fail_at: None }, &cfg).unwrap_err().to_string();
    assert!((e.contains("training loss is") || e.contains("diverged")) && e.contains("stopped"), "{e}");
    let ckpt: std::collections::HashMap<String, Tensor> = Tensor::read_safetensors(dir.join("checkpoint.safetensors")).unwrap().into_iter().collect();
    assert!(ckpt["step"].int64_value(&[0]) >= 1, "a good checkpoint was written before the divergence");
    assert!(ckpt.iter().filter(|(n, _)| n.starts_with("param.")).all(|(_, t)| t.isfinite().all().int64_value(&[]) == 1));
}

#[test]
fn schedules_warm_up_and_decay() {
    let cfg = TrainConfig { steps: 110, lr: 1.0, warmup_steps: 10, min_lr_ratio: 0.1, ..Default::default() };
    assert!((cfg.lr_at(0) - 0.1).abs() < 1e-12);
    assert!((cfg.lr_at(9) - 1.0).abs() < 1e-12);
    assert!((cfg.lr_at(60) - 0.55).abs() < 1e-12); // cosine midpoint
    assert!((cfg.lr_at(110) - 0.1).abs() < 1e-12);
    let lin = TrainConfig { schedule: Schedule::Linear, ..cfg };
    assert!((lin.lr_at(60) - 0.55).abs() < 1e-12);
    assert!((lin.lr_at(35) - 0.775).abs() < 1e-12);
}

#[test]
fn bad_training_setups_give_clear_errors() {
    // A shape the runtime cannot run.
    let e = ModelSpec { d_model: 30, ..spec(BlockStyle::Gpt2, Some(MlpKind::Gelu)) }.config().unwrap_err().to_string();
    assert!(e.contains("divisible by n_heads"), "{e}");
    let e = MlpKind::parse("tanhglu").unwrap_err().to_string();
    assert!(e.contains("unknown MLP `tanhglu`"), "{e}");
    // A checkpoint that cannot be written (here: its folder is a file; a full disk fails the same
    // way) stops the run with the path, and no partial checkpoint is left behind.
    let root = scratch("unwritable");
    std::fs::create_dir_all(&root).unwrap();
    let blocker = root.join("not-a-dir");
    std::fs::write(&blocker, "x").unwrap();
    let model = HookedTransformer::init_random(&spec(BlockStyle::Gpt2, Some(MlpKind::Gelu)), 1, Kind::Float, Device::Cpu).unwrap();
    let e = model.train(&Permutation { fail_at: None }, &TrainConfig { checkpoint_dir: Some(blocker.join("ckpt")), ..quiet(5) }).unwrap_err().to_string();
    assert!(e.contains("not-a-dir"), "{e}");
    let e = model.train(&Permutation { fail_at: None }, &TrainConfig { steps: 0, ..quiet(5) }).unwrap_err();
    assert!(matches!(&e, interp::interp_core::Error::Setting { name, value, .. } if name == "steps" && value == "0"), "{e}");
    let e = model.train(&Permutation { fail_at: None }, &TrainConfig { lr: f64::NAN, ..quiet(5) }).unwrap_err();
    assert!(matches!(&e, interp::interp_core::Error::Setting { name, .. } if name == "lr"), "{e}");
}

/// The load-balancing loss against its closed forms (top_k for a uniform router, n_experts for one
/// that sends everything to one expert), and a mixture of experts trained with it: the loss falls,
/// the routers learn, routing stays spread over the experts, and the model saves as HF `mixtral`
/// and loads back exactly.
#[test]
fn mixtures_of_experts_train_with_a_load_balancing_loss() {
    use interp::interp_core::train::load_balancing_loss;
    use interp::interp_core::{CacheSpec, Experts};
    let uniform = Tensor::zeros([2, 5, 4], (Kind::Float, Device::Cpu));
    assert!((load_balancing_loss(&[uniform.shallow_clone(), uniform], 2).unwrap().double_value(&[]) - 2.0).abs() < 1e-6);
    let collapsed = Tensor::from_slice(&[50f32, 0.0, 0.0, 0.0]).expand([3, 7, 4], false);
    assert!((load_balancing_loss(&[collapsed], 2).unwrap().double_value(&[]) - 4.0).abs() < 1e-5);

    let moe = ModelSpec { experts: Some(Experts { n_experts: 4, top_k: 2 }), ..spec(BlockStyle::Llama, Some(MlpKind::SwiGlu)) };
    assert!(ModelSpec { style: BlockStyle::Gpt2, ..moe.clone() }.config().unwrap_err().to_string().contains("Llama-style blocks"));
    let model = HookedTransformer::init_random(&moe, 3, Kind::Float, Device::Cpu).unwrap();
    assert_eq!((model.cfg.model_type.as_str(), model.cfg.moe.as_ref().unwrap().router_aux_loss_coef), ("mixtral", 0.01));
    let router_before = model.parameters().iter().find(|p| p.size() == [4, 32]).unwrap().copy();
    learns_and_round_trips(&model, 60, "moe");
    let router_after = model.parameters().into_iter().find(|p| p.size() == [4, 32]).unwrap();
    assert!(max_abs_diff(&router_before, &router_after) > 1e-3, "the router did not learn");
    // Every expert gets a share of the tokens.
    let tokens = Permutation::batch(99).input;
    let (_, cache) = model.run_with_cache(&tokens, CacheSpec::names(["blocks.*.mlp.hook_expert_indices"])).unwrap();
    for (name, chosen) in cache.iter() {
        let load = chosen.flatten(0, -1).bincount::<Tensor>(None, 4).to_kind(Kind::Float) / chosen.numel() as f64;
        assert!(load.min().double_value(&[]) > 0.05, "{name}: load per expert {load:?}");
    }
}

/// Peri-norm blocks (a norm before and after each sublayer) train and save as HF gemma2, their
/// gains starting at 1 (Gemma stores gain - 1); post-norm blocks compute DeepNet's
/// norm(alpha x + f(x)), train, and save as interp_post_norm; impossible combinations are refused
/// with the reason.
#[test]
fn norm_placements() {
    use interp::interp_core::{CacheSpec, Experts, NormSite};
    let tokens = Permutation::batch(99).input;
    let peri = ModelSpec { norm: NormPlacement::Peri, ..spec(BlockStyle::Llama, Some(MlpKind::SwiGlu)) };
    let model = HookedTransformer::init_random(&peri, 2, Kind::Float, Device::Cpu).unwrap();
    assert_eq!((model.cfg.model_type.as_str(), model.cfg.post_norms, model.cfg.attn_softcap, model.cfg.sliding_window[0]), ("gemma2", true, None, None));
    let (gain, _) = model.norm_weights(NormSite::Ln2(1)).unwrap();
    assert_eq!(max_abs_diff(&gain.unwrap(), &Tensor::ones([32], (Kind::Float, Device::Cpu))), 0.0, "a unit gain");
    learns_and_round_trips(&model, 40, "peri");
    // Post-norm (DeepNet): resid_mid = norm(alpha resid_pre + attn_out) with alpha = (2 n_layers)^(1/4),
    // resid_post likewise; no final norm; saved as interp_post_norm.
    let post = ModelSpec { norm: NormPlacement::Post, ..peri.clone() };
    let model = HookedTransformer::init_random(&post, 2, Kind::Float, Device::Cpu).unwrap();
    let alpha = model.cfg.post_ln_alpha.unwrap();
    assert_eq!((model.cfg.model_type.as_str(), alpha), ("interp_post_norm", 4f64.powf(0.25)));
    let (_, cache) = model.run_with_cache(&tokens, CacheSpec::all()).unwrap();
    let rms = |x: Tensor| &x / (x.square().mean_dim(-1, true, Kind::Float) + 1e-5).sqrt();
    for l in 0..2 {
        let get = |s: &str| cache.get(format!("blocks.{l}.{s}").as_str()).unwrap().shallow_clone();
        assert!(max_abs_diff(&rms(get("hook_resid_pre") * alpha + get("hook_attn_out")), &get("hook_resid_mid")) < 1e-5, "layer {l}");
        assert!(max_abs_diff(&rms(get("hook_resid_mid") * alpha + get("hook_mlp_out")), &get("hook_resid_post")) < 1e-5, "layer {l}");
    }
    assert!(max_abs_diff(cache.get("blocks.1.hook_resid_post").unwrap(), cache.get("unembed.hook_in").unwrap()) == 0.0, "no final norm");
    assert!(model.hook_point("ln_final.hook_scale").unwrap_err().to_string().contains("no final norm"));
    learns_and_round_trips(&model, 40, "post");
    let refused = |s: ModelSpec| s.config().unwrap_err().to_string();
    assert!(refused(ModelSpec { style: BlockStyle::Gpt2, ..post.clone() }).contains("post-norm blocks are built Llama-style"));
    assert!(refused(ModelSpec { mlp: None, ..post }).contains("need an MLP"));
    assert!(refused(ModelSpec { style: BlockStyle::Gpt2, ..peri.clone() }).contains("--style llama"));
    assert!(refused(ModelSpec { experts: Some(Experts { n_experts: 4, top_k: 2 }), ..peri.clone() }).contains("dense MLPs"));
    assert!(refused(ModelSpec { mlp: None, ..peri }).contains("no attention-only block"));
}
