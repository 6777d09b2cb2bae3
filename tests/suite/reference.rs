//! The runtime against HF transformers, hook by hook: logits, every hidden state and every
//! attention pattern of tiny random models of each architecture (fixtures from
//! scripts/make_fixtures.py), within 1e-4 max abs in f32.

use crate::common;

use crate::common::{load, max_abs_diff, reference, ARCHS};
use interp::interp_core::{tch, BlockSite, CacheSpec, HookPoint};
use tch::Kind;

const TOL: f64 = 1e-4;

#[test]
fn every_architecture_matches_hf_hook_by_hook() {
    let mut report = Vec::new();
    for arch in ARCHS {
        let model = load(arch);
        let r = reference(arch);
        let ids = &r["input_ids"];
        let spec = CacheSpec::names(["blocks.*.hook_resid_pre", "blocks.*.attn.hook_pattern", "unembed.hook_in"]);
        let (logits, cache) = model.run_with_cache(ids, spec).expect("forward");
        let mut worst = max_abs_diff(&logits, &r["logits"]);
        assert!(worst < TOL, "{arch}: logits differ by {worst:e}");
        let n = model.cfg.n_layers;
        for l in 0..n {
            let d = max_abs_diff(cache.get(HookPoint::block(l, BlockSite::ResidPre)).unwrap(), &r[&format!("hidden_states.{l}")]);
            assert!(d < TOL, "{arch}: resid_pre {l} differs by {d:e}");
            let a = max_abs_diff(cache.get(HookPoint::block(l, BlockSite::Pattern)).unwrap(), &r[&format!("attentions.{l}")]);
            assert!(a < TOL, "{arch}: pattern {l} differs by {a:e}");
            worst = worst.max(d).max(a);
        }
        // HF's last hidden state is after the final norm: our unembed.hook_in.
        let d = max_abs_diff(cache.get("unembed.hook_in").unwrap(), &r[&format!("hidden_states.{n}")]);
        assert!(d < TOL, "{arch}: final hidden state differs by {d:e}");
        report.push(format!("{arch}: {:.1e}", worst.max(d)));
    }
    println!("max abs difference to HF: {}", report.join(", "));
}

/// Mixtures of experts route exactly as HF does: the same router logits, the same experts chosen
/// for every token (in the same order), the same weights; and the per-expert outputs sum to the
/// MLP's output.
#[test]
fn mixtures_of_experts_route_as_hf() {
    let mut report = Vec::new();
    for arch in ["mixtral", "qwen2_moe", "olmoe", "qwen3_moe"] {
        let model = load(arch);
        let r = reference(arch);
        let moe = model.cfg.moe.clone().expect("a mixture of experts");
        let layers: Vec<usize> = (0..model.cfg.n_layers).filter(|l| model.cfg.is_moe_layer(*l)).collect();
        assert_eq!(layers.len(), r.keys().filter(|k| k.starts_with("router_logits.")).count(), "{arch}: MoE layers");
        let spec = CacheSpec::names([
            "blocks.*.mlp.hook_router_logits",
            "blocks.*.mlp.hook_expert_indices",
            "blocks.*.mlp.hook_expert_weights",
            "blocks.*.mlp.hook_expert_out",
            "blocks.*.hook_mlp_out",
        ]);
        let (_, cache) = model.run_with_cache(&r["input_ids"], spec).expect("forward");
        let (mut worst, mut distinct) = (0.0f64, std::collections::BTreeSet::new());
        for l in layers {
            let at = |s| HookPoint::block(l, s);
            let d = max_abs_diff(cache.get(at(BlockSite::RouterLogits)).unwrap(), &r[&format!("router_logits.{l}")]);
            let chosen = cache.get(at(BlockSite::ExpertIndices)).unwrap();
            assert!(chosen.equal(&r[&format!("expert_indices.{l}")]), "{arch}: layer {l} chose other experts than HF");
            let w = max_abs_diff(cache.get(at(BlockSite::ExpertWeights)).unwrap(), &r[&format!("expert_weights.{l}")]);
            assert!(d < TOL && w < TOL, "{arch}: layer {l}: router logits differ by {d:e}, weights by {w:e}");
            let each = cache.get(at(BlockSite::ExpertOut)).unwrap();
            assert_eq!(each.size()[2], moe.n_experts);
            let total = each.sum_dim_intlist(2, false, Kind::Float);
            let shared = model.cfg.moe.as_ref().unwrap().d_shared_expert.is_some();
            let s = max_abs_diff(&total, cache.get(at(BlockSite::MlpOut)).unwrap());
            // Qwen2-MoE's shared expert adds to the experts' sum.
            assert_eq!(s < 1e-5, !shared, "{arch}: layer {l}: experts' outputs vs mlp_out {s:e}");
            worst = worst.max(d).max(w);
            for combo in Vec::<Vec<i64>>::try_from(chosen.reshape([-1, moe.top_k])).unwrap() {
                distinct.insert((l, combo));
            }
        }
        // The fixture's routing is not degenerate: many different expert choices.
        assert!(distinct.len() >= 8, "{arch}: only {} distinct routings", distinct.len());
        report.push(format!("{arch}: {worst:.1e} ({} distinct routings)", distinct.len()));
    }
    println!("routing vs HF: {}", report.join(", "));
}

#[test]
fn half_precision_stays_close_to_f32() {
    for arch in ["gpt2", "llama", "gemma2"] {
        let r = reference(arch);
        let ids = &r["input_ids"];
        let f32_logits = load(arch).forward(ids).unwrap();
        for (kind, tol) in [(Kind::Half, 0.05), (Kind::BFloat16, 0.25)] {
            let model = interp::interp_core::HookedTransformer::from_pretrained_dir(common::fixture(arch), tch::Device::Cpu, kind).unwrap();
            let logits = model.forward(ids).unwrap();
            assert_eq!(logits.kind(), kind);
            let d = max_abs_diff(&logits, &f32_logits);
            let scale = f32_logits.abs().max().double_value(&[]);
            assert!(d < tol * scale, "{arch} {kind:?}: logits differ by {d} (scale {scale})");
            assert!(d > 0.0, "{arch} {kind:?}: suspiciously identical to f32");
        }
    }
}

/// TransformerLens-native models (scripts/make_tl_fixtures.py): every activation TransformerLens's
/// `run_with_cache` returns, under the same name and shape, within 1e-4.
#[test]
fn transformer_lens_models_match_transformer_lens_hook_by_hook() {
    let cases = ["ln-relu", "lnpre-solu_ln-shortformer", "rms-gated-rotary-gqa", "none-gelu_new", "attn_only-rmspre-tied", "ln-gelu-bidirectional"];
    let mut report = Vec::new();
    for case in cases {
        let dir = common::fixture("transformer_lens").join(case);
        let model = interp::interp_core::HookedTransformer::from_pretrained_dir(&dir, tch::Device::Cpu, Kind::Float).expect(case);
        let r: std::collections::HashMap<String, tch::Tensor> = tch::Tensor::read_safetensors(dir.join("reference.safetensors")).unwrap().into_iter().collect();
        let mut hooks: Vec<&String> = r.keys().filter(|k| *k != "input_ids" && *k != "logits").collect();
        // In forward order, so that a failure names the first activation that differs.
        hooks.sort_by_key(|name| model.hook_point(name.as_str()).unwrap_or_else(|e| panic!("{case}: TransformerLens hook {name}: {e}")));
        let (logits, cache) = model.run_with_cache(&r["input_ids"], CacheSpec::names(hooks.iter().map(|h| h.as_str()))).unwrap();
        let mut worst = 0.0f64;
        for name in &hooks {
            let (ours, theirs) = (cache.get(name.as_str()).unwrap(), &r[*name]);
            // Masked attention scores are -inf in both.
            let masked = ours.isinf().logical_and(&ours.eq_tensor(theirs));
            let d = max_abs_diff(&ours.masked_fill(&masked, 0.0), &theirs.masked_fill(&masked, 0.0));
            assert!(d < TOL, "{case}: {name} differs by {d:e}");
            worst = worst.max(d);
        }
        let d = max_abs_diff(&logits, &r["logits"]);
        assert!(d < TOL, "{case}: logits differ by {d:e}");
        worst = worst.max(d);
        report.push(format!("{case}: {} hooks, {worst:.1e}", hooks.len()));
    }
    println!("max abs difference to TransformerLens: {}", report.join("; "));
}

/// TransformerLens's weight views of a TransformerLens-native model are its own state dict's
/// tensors: W_Q, W_K, W_V [h, d_model, d_head], W_O [h, d_head, d_model], W_in, W_out, W_U, b_U.
#[test]
fn transformer_lens_weight_views_are_its_state_dict() {
    let dir = common::fixture("transformer_lens").join("lnpre-solu_ln-shortformer");
    let model = interp::interp_core::HookedTransformer::from_pretrained_dir(&dir, tch::Device::Cpu, Kind::Float).unwrap();
    let state: std::collections::HashMap<String, tch::Tensor> = tch::Tensor::read_safetensors(dir.join("model.safetensors")).unwrap().into_iter().collect();
    for l in 0..model.cfg.n_layers {
        let views = [
            ("attn.W_Q", model.w_q(l).unwrap()),
            ("attn.W_K", model.w_k(l).unwrap()),
            ("attn.W_V", model.w_v(l).unwrap()),
            ("attn.W_O", model.w_o(l).unwrap()),
            ("mlp.W_in", model.w_in(l).unwrap()),
            ("mlp.W_out", model.w_out(l).unwrap()),
        ];
        for (name, view) in views {
            assert_eq!(max_abs_diff(&view, &state[&format!("blocks.{l}.{name}")]), 0.0, "blocks.{l}.{name}");
        }
    }
    assert_eq!(max_abs_diff(&model.w_u(), &state["unembed.W_U"]), 0.0);
    assert_eq!(max_abs_diff(model.b_u().unwrap(), &state["unembed.b_U"]), 0.0);
}
