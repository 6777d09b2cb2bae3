//! Hook semantics, caches, interventions, padding, gradients, generation and weight processing.

use std::cell::Cell;

use crate::common::{fixture, load, max_abs_diff, reference, ARCHS};
use interp::interp_core::{tch, BlockSite, CacheSpec, HookPoint, HookedTransformer, Hooks, Intervention, NamesFilter, Sampling, Scope, WeightProcessing};
use tch::{Device, Kind, Tensor};

fn ids(arch: &str) -> Tensor {
    reference(arch)["input_ids"].shallow_clone()
}

#[test]
fn every_hook_point_has_the_documented_shape() {
    for arch in ARCHS {
        let m = load(arch);
        let c = &m.cfg;
        let (b, p) = (2, 20);
        let (h, kv, dh, dm, dmlp, v) = (c.n_heads, c.n_kv_heads, c.d_head, c.d_model, c.d_mlp, c.d_vocab);
        let (_, cache) = m.run_with_cache(&ids(arch), CacheSpec::all()).unwrap();
        let (_, opt) = m.run_with_cache(&ids(arch), CacheSpec::names(["blocks.*.attn.hook_result", "blocks.*.hook_q_input", "blocks.*.hook_k_input"])).unwrap();
        let (n_experts, top_k) = c.moe.as_ref().map_or((0, 0), |m| (m.n_experts, m.top_k));
        if n_experts > 0 {
            let (_, experts) = m.run_with_cache(&ids(arch), CacheSpec::names(["blocks.*.mlp.hook_expert_out"])).unwrap();
            assert_eq!(experts.len(), (0..c.n_layers).filter(|l| c.is_moe_layer(*l)).count());
            for (name, t) in experts.iter() {
                assert_eq!(t.size(), [b, p, n_experts, dm], "{arch}: {name}");
            }
        }
        assert_eq!(cache.len(), m.hook_points(false).len(), "{arch}: All caches every standard point");
        assert!(m.hook_points(false).iter().all(|p| !p.is_opt_in()));
        for (name, t) in cache.iter().chain(opt.iter()) {
            let leaf = name.rsplit('.').next().unwrap();
            let qk_norm = [".q_norm.", ".k_norm."].into_iter().find(|n| name.contains(n));
            let heads = |n: &str| if n == ".q_norm." { h } else { kv };
            let whole = c.qk_norm == interp::interp_core::config::QkNorm::WholeProjection;
            let want: Vec<i64> = match (qk_norm, leaf) {
                (Some(_), "hook_scale") if whole => vec![b, p, 1],
                (Some(n), _) if whole => vec![b, p, heads(n) * dh],
                (Some(n), "hook_scale") => vec![b, p, heads(n), 1],
                (Some(n), _) => vec![b, p, heads(n), dh],
                (None, leaf) => match leaf {
                    "hook_q" | "hook_rot_q" | "hook_z" => vec![b, p, h, dh],
                    "hook_k" | "hook_v" | "hook_rot_k" => vec![b, p, kv, dh],
                    "hook_attn_scores" | "hook_pattern" => vec![b, h, p, p],
                    "hook_result" | "hook_q_input" => vec![b, p, h, dm],
                    "hook_k_input" => vec![b, p, kv, dm],
                    "hook_scale" => vec![b, p, 1],
                    "hook_pre" | "hook_pre_linear" | "hook_post" => vec![b, p, dmlp],
                    "hook_out" => vec![b, p, v],
                    "hook_router_logits" => vec![b, p, n_experts],
                    "hook_expert_indices" | "hook_expert_weights" => vec![b, p, top_k],
                    _ => vec![b, p, dm],
                },
            };
            assert_eq!(t.size(), want, "{arch}: {name}");
        }
    }
}

#[test]
fn residual_stream_identities_hold() {
    for arch in ["gpt2", "gpt_neox", "llama", "gemma2"] {
        let m = load(arch);
        let (logits, cache) = m.run_with_cache(&ids(arch), CacheSpec::all()).unwrap();
        assert!(max_abs_diff(&logits, cache.get("unembed.hook_out").unwrap()) == 0.0);
        for l in 0..m.cfg.n_layers {
            // TransformerLens's shorthand: cache["resid_pre", l] is blocks.{l}.hook_resid_pre.
            let get = |short: &str| cache[(short, l)].shallow_clone();
            let attn_mlp = get("attn_out") + get("mlp_out");
            assert!(max_abs_diff(&(get("resid_pre") + attn_mlp), &get("resid_post")) < 1e-4, "{arch} {l}");
            if !m.cfg.parallel_attn_mlp {
                assert!(max_abs_diff(&(get("resid_pre") + get("attn_out")), &get("resid_mid")) < 1e-5);
            }
            if l + 1 < m.cfg.n_layers {
                let next = cache.get(HookPoint::block(l + 1, BlockSite::ResidPre)).unwrap();
                assert_eq!(max_abs_diff(&get("resid_post"), next), 0.0);
            }
            assert_eq!(max_abs_diff(&get("pattern"), cache.get(format!("blocks.{l}.attn.hook_pattern")).unwrap()), 0.0);
            assert!(cache.layer("scale", l).unwrap_err().to_string().contains("unknown hook point"), "ln1 or ln2?");
            let pattern_sums = get("attn").sum_dim_intlist(-1, false, Kind::Float);
            assert!(max_abs_diff(&pattern_sums, &pattern_sums.ones_like()) < 1e-5);
        }
    }
}

#[test]
fn opt_in_paths_change_nothing_and_add_up() {
    for arch in ["gpt2", "llama", "gemma2"] {
        let m = load(arch);
        let plain = m.forward(&ids(arch)).unwrap();
        let (logits, cache) =
            m.run_with_cache(&ids(arch), CacheSpec::names(["blocks.0.attn.hook_result", "blocks.0.hook_attn_out", "blocks.*.hook_v_input"])).unwrap();
        assert!(max_abs_diff(&plain, &logits) < 1e-5, "{arch}: opt-in paths change the output");
        if m.cfg.post_norms {
            continue; // attn_out is normalised after the head sum on Gemma-2
        }
        let summed = cache.get("blocks.0.attn.hook_result").unwrap().sum_dim_intlist(2, false, Kind::Float);
        let b_o = cache.get("blocks.0.hook_attn_out").unwrap() - &summed;
        // What is left is b_O, the same at every position.
        assert!(max_abs_diff(&b_o, &b_o.select(1, 0).unsqueeze(1).expand_as(&b_o)) < 1e-5, "{arch}");
    }
}

#[test]
fn names_filters_pick_what_they_say() {
    let m = load("gpt2");
    let t = ids("gpt2");
    let (_, c) = m.run_with_cache(&t, CacheSpec::names(["blocks.1.attn.hook_pattern"])).unwrap();
    assert_eq!(c.iter().map(|(n, _)| n).collect::<Vec<_>>(), ["blocks.1.attn.hook_pattern"]);
    let (_, c) = m.run_with_cache(&t, CacheSpec::names(["*hook_resid*"])).unwrap();
    assert_eq!(c.len(), 3 * m.cfg.n_layers);
    let (_, c) = m.run_with_cache(&t, CacheSpec::names(["*"])).unwrap();
    assert!(!c.contains("blocks.0.attn.hook_result"), "wildcards skip opt-in points");
    let (_, c) = m.run_with_cache(&t, CacheSpec::new(NamesFilter::predicate(|n| n.ends_with("hook_z")))).unwrap();
    assert_eq!(c.len(), m.cfg.n_layers);
    // Storage options: positions, dtype.
    let (_, c) = m.run_with_cache(&t, CacheSpec::names(["blocks.0.attn.hook_pattern", "hook_embed"]).positions(5..9).dtype(Kind::Half)).unwrap();
    assert_eq!(c.get("hook_embed").unwrap().size(), [2, 4, 64]);
    assert_eq!(c.get("blocks.0.attn.hook_pattern").unwrap().size(), [2, 4, 4, 20]);
    assert_eq!(c.get("hook_embed").unwrap().kind(), Kind::Half);
    assert_eq!(c.total_bytes(), 2 * (2 * 4 * 64 + 2 * 4 * 4 * 20));
    let err = c.get("blocks.0.hook_resid_pre").err().unwrap().to_string();
    assert!(err.contains("not in the cache") && err.contains("hook_embed"), "{err}");
}

#[test]
fn interventions_do_what_they_say() {
    let m = load("gpt2");
    let t = ids("gpt2");
    let (clean, clean_cache) = m.run_with_cache(&t, CacheSpec::names(["blocks.1.hook_resid_pre", "blocks.0.attn.hook_z"])).unwrap();
    let corrupted = t.flip([1]);
    // Patching the whole residual stream entering layer 1 restores the clean output.
    let hooks = Hooks::new().intervene("blocks.1.hook_resid_pre", Intervention::Patch(&clean_cache, Scope::all()));
    let patched = m.run_with_hooks(&corrupted, hooks).unwrap();
    assert!(max_abs_diff(&patched, &clean) < 1e-5);
    assert!(max_abs_diff(&m.forward(&corrupted).unwrap(), &clean) > 0.1);

    // Zeroing one head at some positions touches exactly that slice.
    let seen = std::cell::RefCell::new(None);
    let hooks =
        Hooks::new().intervene("blocks.0.attn.hook_z", Intervention::Zero(Scope::all().heads([1]).positions([3, 4]))).add("blocks.0.attn.hook_z", |z, _| {
            *seen.borrow_mut() = Some(z.copy());
            Ok(None)
        });
    let ablated = m.run_with_hooks(&t, hooks).unwrap();
    let z = seen.borrow_mut().take().unwrap();
    let clean_z = clean_cache.get("blocks.0.attn.hook_z").unwrap();
    assert_eq!(z.narrow(1, 3, 2).select(2, 1).abs().max().double_value(&[]), 0.0);
    assert_eq!(max_abs_diff(&z.narrow(1, 0, 3), &clean_z.narrow(1, 0, 3)), 0.0);
    assert_eq!(max_abs_diff(&z.select(2, 0), &clean_z.select(2, 0)), 0.0);
    assert!(max_abs_diff(&ablated, &clean) > 1e-3);
    // Positions before the ablation cannot see it (causal).
    assert!(max_abs_diff(&ablated.narrow(1, 0, 3), &clean.narrow(1, 0, 3)) < 1e-6);

    // Add, scale and mean agree with their closed forms.
    let v = Tensor::randn([64], (Kind::Float, Device::Cpu));
    let (_, c) = m
        .runner(&t)
        .hooks(Hooks::new().intervene("hook_embed", Intervention::Add(v.shallow_clone(), Scope::all())))
        .cache(CacheSpec::names(["hook_embed"]))
        .run()
        .map(|o| ((), o.cache.unwrap()))
        .unwrap();
    let embed = m.w_e().index_select(0, &t.flatten(0, -1)).view([2, 20, 64]);
    assert!(max_abs_diff(c.get("hook_embed").unwrap(), &(embed + &v)) < 1e-6);
    let same = m.run_with_hooks(&t, Hooks::new().intervene("blocks.*.hook_mlp_out", Intervention::Scale(1.0, Scope::all()))).unwrap();
    assert_eq!(max_abs_diff(&same, &clean), 0.0);
    let mean = clean_z.mean_dim(0, false, Kind::Float); // [p, h, dh]
    let hooks = Hooks::new().intervene("blocks.0.attn.hook_z", Intervention::Mean(mean.shallow_clone(), Scope::all())).add("blocks.0.attn.hook_z", |z, _| {
        assert!(max_abs_diff(z, &mean.expand_as(z)) == 0.0);
        Ok(None)
    });
    let _ = m.run_with_hooks(&t, hooks).unwrap();
}

#[test]
fn hooks_see_every_layer_through_globs_and_bad_replacements_are_errors() {
    let m = load("llama");
    let t = ids("llama");
    let calls = Cell::new(0);
    let _ = m
        .run_with_hooks(
            &t,
            Hooks::new().add("blocks.*.attn.hook_pattern", |_, ctx| {
                assert_eq!(ctx.point.to_string(), format!("blocks.{}.attn.hook_pattern", calls.get()));
                calls.set(calls.get() + 1);
                Ok(None)
            }),
        )
        .unwrap();
    assert_eq!(calls.get(), m.cfg.n_layers);
    let err = m.run_with_hooks(&t, Hooks::new().add("blocks.0.hook_resid_pre", |x, _| Ok(Some(x.narrow(1, 0, 2))))).unwrap_err();
    assert!(err.to_string().contains("returned shape [2, 2, 64], expected [2, 20, 64]"), "{err}");
    let err = m.run_with_hooks(&t, Hooks::new().intervene("hook_embed", Intervention::Zero(Scope::all().heads([0])))).unwrap_err();
    assert!(err.to_string().contains("no head axis"), "{err}");
}

/// A replacing hook gives its point's value without reading it, so the forward skips what only
/// that point needs: with every pattern and MLP output replaced by its clean value, the output is
/// the clean one, and no hook inside the MLP or on the queries, keys or scores fires.
#[test]
fn replacing_hooks_skip_what_they_replace() {
    for arch in ARCHS {
        let m = load(arch);
        let t = ids(arch);
        let mut points = Vec::new();
        for l in 0..m.cfg.n_layers {
            points.extend([BlockSite::Pattern, BlockSite::MlpOut].map(|s| HookPoint::block(l, s)));
        }
        let (clean, cache) = m.run_with_cache(&t, CacheSpec::names(&points)).unwrap();
        let fired = Cell::new(0);
        let mut hooks = Hooks::new();
        for p in &points {
            let value = cache.get(*p).unwrap().shallow_clone();
            hooks = hooks.replace(*p, move |_| Ok(value.shallow_clone()));
        }
        let mlp_inside = if m.cfg.moe.is_some() { "blocks.*.mlp.hook_router_logits" } else { "blocks.*.mlp.hook_pre" };
        for skipped in ["blocks.*.attn.hook_q", "blocks.*.attn.hook_k", "blocks.*.attn.hook_attn_scores", mlp_inside] {
            hooks = hooks.add(skipped, |_, _| {
                fired.set(fired.get() + 1);
                Ok(None)
            });
        }
        let out = m.run_with_hooks(&t, hooks).unwrap();
        assert!(max_abs_diff(&out, &clean) < 1e-4 * clean.abs().max().double_value(&[]), "{arch}: {}", max_abs_diff(&out, &clean));
        assert_eq!(fired.get(), 0, "{arch}: a skipped hook fired");
    }
    let m = load("gpt2");
    let err =
        m.run_with_hooks(&ids("gpt2"), Hooks::new().replace("blocks.0.hook_mlp_out", |_| Ok(Tensor::zeros([1, 2], (Kind::Float, Device::Cpu))))).unwrap_err();
    assert!(err.to_string().contains("returned shape [1, 2]"), "{err}");
}

#[test]
fn start_and_stop_at_layer_split_the_forward() {
    for arch in ["gpt2", "gemma2"] {
        let m = load(arch);
        let t = ids(arch);
        let full = m.forward(&t).unwrap();
        let resid = m.runner(&t).stop_at_layer(1).run().unwrap().output;
        let (_, cache) = m.run_with_cache(&t, CacheSpec::names(["blocks.1.hook_resid_pre"])).unwrap();
        assert_eq!(max_abs_diff(&resid, cache.get("blocks.1.hook_resid_pre").unwrap()), 0.0);
        let rest = m.runner_from_layer(&resid, 1).run().unwrap().output;
        assert!(max_abs_diff(&rest, &full) < 1e-6, "{arch}");
        assert!(m.runner(&t).stop_at_layer(99).run().is_err());
    }
}

#[test]
fn last_block_at_one_position_per_row_equals_the_full_run() {
    for arch in ARCHS {
        let m = load(arch);
        let t = ids(arch);
        let (b, p) = (t.size()[0], t.size()[1]);
        let rows = Tensor::from_slice(&[p - 1, 3]).narrow(0, 0, b);
        let full = m.forward(&t).unwrap();
        let want = full.gather(1, &rows.view([b, 1, 1]).expand([b, 1, full.size()[2]], false), false);
        let got = m.runner(&t).last_block_at(&rows).run().unwrap().output;
        assert_eq!(got.size(), want.size(), "{arch}");
        assert!(max_abs_diff(&got, &want) < 1e-5, "{arch}: {}", max_abs_diff(&got, &want));
        // From a residual, with hooks on the last block's inputs and outputs.
        let last = m.cfg.n_layers - 1;
        let resid = m.runner(&t).stop_at_layer(last).run().unwrap().output;
        let (seen_k, seen_out) = (Cell::new(0), Cell::new(0));
        let hooks = Hooks::new()
            .add(HookPoint::block(last, BlockSite::KInput), |x, _| {
                seen_k.set(x.size()[1]);
                Ok(None)
            })
            .add(HookPoint::block(last, BlockSite::AttnOut), |x, _| {
                seen_out.set(x.size()[1]);
                Ok(None)
            });
        let got = m.runner_from_layer(&resid, last).hooks(hooks).last_block_at(&rows).run().unwrap().output;
        assert!(max_abs_diff(&got, &want) < 1e-5, "{arch} from the last block");
        assert_eq!((seen_k.get(), seen_out.get()), (p, 1), "{arch}");
        // Stopping before the last block: the option changes nothing; bad positions are errors.
        assert_eq!(m.runner(&t).stop_at_layer(last).last_block_at(&rows).run().unwrap().output.size(), resid.size());
        for bad in [Tensor::from_slice(&[p, 0]).narrow(0, 0, b), Tensor::from_slice(&[0i64]), Tensor::from_slice(&[0.0f32, 1.0]).narrow(0, 0, b)] {
            assert!(m.runner(&t).last_block_at(&bad).run().is_err(), "{arch}");
        }
    }
}

#[test]
fn padded_rows_equal_their_unpadded_runs() {
    for arch in ["gpt2", "gpt_neox", "llama", "gemma2", "mistral"] {
        let m = load(arch);
        let t = ids(arch);
        let short = t.narrow(1, 0, 13).select(0, 1); // row 1 is 13 tokens long
        let long = t.select(0, 0);
        for left in [true, false] {
            let pad = Tensor::zeros([7], (Kind::Int64, Device::Cpu));
            let row1 = if left { Tensor::cat(&[&pad, &short], 0) } else { Tensor::cat(&[&short, &pad], 0) };
            let batch = Tensor::stack(&[&long, &row1], 0);
            let ones = Tensor::ones([13], (Kind::Int64, Device::Cpu));
            let m1 = if left { Tensor::cat(&[&pad, &ones], 0) } else { Tensor::cat(&[&ones, &pad], 0) };
            let mask = Tensor::stack(&[&long.ones_like(), &m1], 0);
            let logits = m.runner(&batch).attention_mask(&mask).run().unwrap().output;
            let alone = m.forward(&short.unsqueeze(0)).unwrap().select(0, 0);
            let got = logits.select(0, 1).narrow(0, if left { 7 } else { 0 }, 13);
            assert!(max_abs_diff(&got, &alone) < 1e-4, "{arch} left={left}: {}", max_abs_diff(&got, &alone));
            let full_row = m.forward(&long.unsqueeze(0)).unwrap().select(0, 0);
            assert!(max_abs_diff(&logits.select(0, 0), &full_row) < 1e-4);
        }
    }
}

#[test]
fn gradients_match_closed_forms_and_finite_differences() {
    let m = HookedTransformer::from_pretrained_dir(fixture("gpt2"), Device::Cpu, Kind::Double).unwrap();
    let t = ids("gpt2");
    let target = 7i64;
    let metric = |logits: &Tensor| Ok(logits.select(1, -1).select(1, target).sum(Kind::Double));
    let out = m.runner(&t).gradients(NamesFilter::names(["unembed.hook_in", "blocks.1.hook_resid_pre"]), metric).run().unwrap();
    let grads = out.grads.unwrap();
    // d logit_t / d unembed_in = W_U[:, t] at the last position, zero elsewhere.
    let g = grads.get("unembed.hook_in").unwrap();
    assert!(max_abs_diff(&g.select(1, -1), &m.w_u().select(1, target).unsqueeze(0).expand([2, 64], false)) < 1e-12);
    assert_eq!(g.narrow(1, 0, 19).abs().max().double_value(&[]), 0.0);
    // A directional finite difference through the rest of the model.
    let g = grads.get("blocks.1.hook_resid_pre").unwrap();
    let resid = m.runner(&t).stop_at_layer(1).run().unwrap().output;
    let d = Tensor::randn(resid.size(), (Kind::Double, Device::Cpu));
    let eps = 1e-5;
    let f = |x: &Tensor| metric(&m.runner_from_layer(x, 1).run().unwrap().output).unwrap().double_value(&[]);
    let fd = (f(&(&resid + &d * eps)) - f(&(&resid - &d * eps))) / (2.0 * eps);
    let analytic = (g * &d).sum(Kind::Double).double_value(&[]);
    assert!((fd - analytic).abs() < 1e-6 * analytic.abs().max(1.0), "fd {fd} vs grad {analytic}");
    assert!((out.metric.unwrap().double_value(&[]) - f(&resid)).abs() < 1e-9);

    // A point the metric cannot reach (block 1's input is overwritten) has gradient zero, not an
    // undefined tensor; a metric that reaches no point at all gives zeros, not a crash.
    let points = ["blocks.0.hook_resid_pre", "blocks.1.hook_resid_pre"];
    let cut = || Hooks::new().intervene("blocks.1.hook_resid_pre", Intervention::Zero(Scope::all()));
    let grads = m.runner(&t).hooks(cut()).gradients(NamesFilter::names(points), metric).run().unwrap().grads.unwrap();
    let (unreached, reached) = (grads.get(points[0]).unwrap(), grads.get(points[1]).unwrap());
    assert!(unreached.defined());
    assert_eq!(unreached.size(), [2, 20, 64]);
    assert_eq!(unreached.abs().max().double_value(&[]), 0.0);
    assert!(reached.abs().max().double_value(&[]) > 0.0);
    let constant = |_: &Tensor| Ok(Tensor::from(1.0f64));
    let grads = m.runner(&t).gradients(NamesFilter::names(points), constant).run().unwrap().grads.unwrap();
    assert_eq!(grads.get(points[1]).unwrap().abs().max().double_value(&[]), 0.0);
}

#[test]
fn generate_with_kv_cache_equals_full_recompute() {
    for arch in ["gpt2", "llama", "gemma2"] {
        let m = load(arch);
        let prompt = ids(arch).narrow(1, 0, 6);
        let s = Sampling { max_new_tokens: 10, ..Default::default() };
        let fast = m.generate(&prompt, None, &s, Hooks::new()).unwrap();
        let mut slow = prompt.shallow_clone();
        for _ in 0..10 {
            let next = m.forward(&slow).unwrap().select(1, -1).argmax(-1, true);
            slow = Tensor::cat(&[&slow, &next], 1);
        }
        assert_eq!(max_abs_diff(&fast, &slow), 0.0, "{arch}");
        // Hooks stay active while generating: steering changes the continuation like a recompute.
        let steer = interp::interp_core::Rng::new(0).normal_tensor(&[m.cfg.d_model]).unwrap() * 5.0;
        let steered =
            m.generate(&prompt, None, &s, Hooks::new().intervene("blocks.0.hook_resid_post", Intervention::Add(steer.shallow_clone(), Scope::all()))).unwrap();
        let mut slow = prompt.shallow_clone();
        for _ in 0..10 {
            let hooks = Hooks::new().intervene("blocks.0.hook_resid_post", Intervention::Add(steer.shallow_clone(), Scope::all()));
            let next = m.run_with_hooks(&slow, hooks).unwrap().select(1, -1).argmax(-1, true);
            slow = Tensor::cat(&[&slow, &next], 1);
        }
        assert_eq!(max_abs_diff(&steered, &slow), 0.0, "{arch} steered");
        assert!(max_abs_diff(&steered, &fast) > 0.0, "{arch}: steering had no effect");
    }
}

#[test]
fn generate_left_padded_batches_and_sampling() {
    let m = load("llama");
    let t = ids("llama");
    let s = Sampling { max_new_tokens: 6, ..Default::default() };
    let short = t.narrow(1, 0, 4).narrow(0, 1, 1);
    let long = t.narrow(1, 0, 7).narrow(0, 0, 1);
    let batch = Tensor::cat(&[&long, &Tensor::cat(&[&Tensor::zeros([1, 3], (Kind::Int64, Device::Cpu)), &short], 1)], 0);
    let mask = Tensor::cat(&[&long.ones_like(), &Tensor::cat(&[&Tensor::zeros([1, 3], (Kind::Int64, Device::Cpu)), &short.ones_like()], 1)], 0);
    let out = m.generate(&batch, Some(&mask), &s, Hooks::new()).unwrap();
    let alone = m.generate(&short, None, &s, Hooks::new()).unwrap();
    assert_eq!(max_abs_diff(&out.narrow(0, 1, 1).narrow(1, 3, 10), &alone), 0.0);
    // Sampling: seeded runs repeat; top-k 1 is greedy.
    let sample = Sampling { max_new_tokens: 8, temperature: 1.0, top_p: Some(0.9), seed: Some(3), ..Default::default() };
    let a = m.generate(&long, None, &sample, Hooks::new()).unwrap();
    let b = m.generate(&long, None, &sample, Hooks::new()).unwrap();
    assert_eq!(max_abs_diff(&a, &b), 0.0);
    let greedy = m.generate(&long, None, &Sampling { max_new_tokens: 8, ..Default::default() }, Hooks::new()).unwrap();
    let top1 =
        m.generate(&long, None, &Sampling { max_new_tokens: 8, temperature: 0.7, top_k: Some(1), seed: Some(1), ..Default::default() }, Hooks::new()).unwrap();
    assert_eq!(max_abs_diff(&greedy, &top1), 0.0);
    let right_padded = m.generate(&batch, Some(&mask.flip([1])), &s, Hooks::new());
    assert!(right_padded.unwrap_err().to_string().contains("left padding"));
    // A sampling setting out of range names itself.
    for (bad, name) in [(Sampling { top_p: Some(1.5), ..s.clone() }, "top_p"), (Sampling { temperature: f64::NAN, ..s.clone() }, "temperature")] {
        let e = m.generate(&long, None, &bad, Hooks::new()).unwrap_err();
        assert!(matches!(&e, interp::interp_core::Error::Setting { name: n, .. } if n == name), "{e}");
    }
}

#[test]
fn weight_processing_keeps_log_probs() {
    // Qwen2-MoE: ln2 also folds into the router and the shared expert.
    for arch in ["gpt2", "gpt_neox", "llama", "gemma2", "qwen2_moe"] {
        let t = ids(arch);
        let reference = load(arch).forward(&t).unwrap().log_softmax(-1, Kind::Float);
        let layer_norm = load(arch).cfg.norm == interp::interp_core::config::NormKind::LayerNorm;
        let options = [
            WeightProcessing { fold_ln: true, ..Default::default() },
            WeightProcessing { center_writing_weights: true, ..Default::default() },
            WeightProcessing { center_unembed: true, ..Default::default() },
            WeightProcessing { fold_value_biases: true, ..Default::default() },
            WeightProcessing::all(),
        ];
        for opts in options {
            let mut m = load(arch);
            let before = m.w_out(0).unwrap().copy();
            let q_before = m.w_q(0).unwrap().copy();
            match m.process_weights(opts) {
                Ok(()) => {}
                Err(e) => {
                    // Only the documented refusals: centring without LayerNorm, or under a soft cap.
                    assert!((opts.center_writing_weights && !layer_norm) || (opts.center_unembed && m.cfg.final_softcap.is_some()), "{arch} {opts:?}: {e}");
                    continue;
                }
            }
            let d = max_abs_diff(&m.forward(&t).unwrap().log_softmax(-1, Kind::Float), &reference);
            assert!(d < 1e-4, "{arch} {opts:?}: log-probs moved by {d}");
            if opts.fold_ln {
                assert!(max_abs_diff(&m.w_q(0).unwrap(), &q_before) > 1e-3, "{arch}: nothing was folded");
            }
            if opts.center_unembed {
                assert!(m.w_u().mean_dim(1, false, Kind::Float).abs().max().double_value(&[]) < 1e-5);
            }
            if opts.center_writing_weights {
                assert!(max_abs_diff(&m.w_out(0).unwrap(), &before) > 1e-3, "{arch}: nothing was centred");
                assert!(m.w_e().mean_dim(1, false, Kind::Float).abs().max().double_value(&[]) < 1e-5);
            }
        }
    }
}

#[test]
fn cache_helpers_decompose_the_residual_stream() {
    let m = load("gpt2");
    let t = ids("gpt2");
    let (logits, cache) = m.run_with_cache(&t, CacheSpec::all()).unwrap();
    let final_resid = cache.get("blocks.1.hook_resid_post").unwrap();
    let acc = cache.accumulated_resid(None, true, false).unwrap();
    assert_eq!(acc.labels, ["0_pre", "0_mid", "1_pre", "1_mid", "final_post"]);
    assert_eq!(max_abs_diff(&acc.components.get(4), final_resid), 0.0);
    let parts = cache.decompose_resid(None, false).unwrap();
    assert_eq!(parts.labels, ["embed", "pos_embed", "0_attn_out", "0_mlp_out", "1_attn_out", "1_mlp_out"]);
    assert!(max_abs_diff(&parts.components.sum_dim_intlist(0, false, Kind::Float), final_resid) < 1e-5);
    // Logit lens of the final residual equals the real logits up to the norm's gain and bias.
    let tokens = Tensor::from_slice(&[5i64, 9]);
    let attrs = m.logit_attrs(&cache, &parts.components, &tokens).unwrap(); // [6, 2, 20]
    let (_, with_result) = m.run_with_cache(&t, CacheSpec::names(["blocks.*.attn.hook_result", "ln_final.hook_scale"])).unwrap();
    let heads = with_result.stack_head_results(None, false).unwrap();
    assert_eq!(heads.labels.len(), 8);
    assert_eq!(heads.labels[5], "L1H1");
    // What the components leave out is the final norm's bias through W_U: the same at every position.
    let want = logits.gather(2, &tokens.view([2, 1, 1]).expand([2, 20, 1], false), false).squeeze_dim(2);
    let rest = want - attrs.sum_dim_intlist(0, false, Kind::Float);
    assert!(max_abs_diff(&rest, &rest.narrow(1, 0, 1).expand([2, 20], false)) < 1e-4);
    assert!(attrs.abs().max().double_value(&[]) > 0.1);
}

/// Hook and metric closures fail with errors of any crate; ours pass through as they are.
#[test]
fn closures_may_fail_with_any_error() {
    let m = load("gpt2");
    let t = ids("gpt2");
    let foreign = Hooks::new().add("blocks.0.hook_resid_post", |_, _| Err(std::io::Error::other("disk on fire").into()));
    let e = m.run_with_hooks(&t, foreign).unwrap_err().to_string();
    assert_eq!(e, "hook on `blocks.0.hook_resid_post`: disk on fire");
    let ours = Hooks::new().add("blocks.0.hook_resid_post", |x, _| Ok(Some(x.f_view([7, -1])?)));
    let e = m.run_with_hooks(&t, ours).unwrap_err().to_string();
    assert!(e.starts_with("torch: "), "{e}");
    let metric = |_: &Tensor| -> Result<Tensor, interp::interp_core::BoxError> { Err("no answer token".into()) };
    let e = m.runner(&t).gradients(NamesFilter::names(["blocks.0.hook_resid_pre"]), metric).run().err().unwrap().to_string();
    assert_eq!(e, "metric: no answer token");
}

/// Per-expert interventions with the ordinary ones: zeroing an expert's slice of
/// `mlp.hook_expert_out` equals removing that expert's weighted output by hand; forcing a routing
/// through `hook_expert_indices` reads the weights at the forced experts; a huge router logit
/// forces the same routing; a malformed routing is an error, not a crash.
#[test]
fn experts_can_be_ablated_and_routing_forced() {
    let m = load("mixtral");
    let t = ids("mixtral");
    let (l, e) = (1, 2i64);
    let at = |s| HookPoint::block(l, s);
    let (_, clean) = m.run_with_cache(&t, CacheSpec::names([at(BlockSite::ExpertOut), at(BlockSite::ResidMid), at(BlockSite::ExpertIndices)])).unwrap();
    // Zero expert e in layer 1 (the last layer: its output goes straight to the final norm).
    let ablated = m.run_with_hooks(&t, Hooks::new().intervene(at(BlockSite::ExpertOut), Intervention::Zero(Scope::all().heads([e])))).unwrap();
    let each = clean.get(at(BlockSite::ExpertOut)).unwrap();
    let kept = each.sum_dim_intlist(2, false, Kind::Float) - each.select(2, e);
    let resid = clean.get(at(BlockSite::ResidMid)).unwrap() + kept;
    let by_hand = m.runner_from_layer(&resid, l + 1).run().unwrap().output;
    assert!(max_abs_diff(&ablated, &by_hand) < 1e-4, "zeroing expert {e}");
    let routed_to_e = clean.get(at(BlockSite::ExpertIndices)).unwrap().eq(e).any().int64_value(&[]) == 1;
    assert!(routed_to_e && max_abs_diff(&ablated, &m.forward(&t).unwrap()) > 1e-3, "expert {e} was used, so ablating it matters");

    // Force every token to experts (e, 0): weights are the router's probabilities there, renormalised.
    let (b, p, k) = (t.size()[0], t.size()[1], 2);
    let forced = Tensor::from_slice(&[e, 0]).view([1, 1, k]).expand([b, p, k], false).contiguous();
    let f = forced.shallow_clone();
    let hooks = Hooks::new().add(at(BlockSite::ExpertIndices), move |_, _| Ok(Some(f.shallow_clone())));
    let out = m.runner(&t).cache(CacheSpec::names([at(BlockSite::ExpertWeights), at(BlockSite::RouterLogits)])).hooks(hooks).run().unwrap();
    let (by_indices, c) = (out.output, out.cache.unwrap());
    let probs = c.get(at(BlockSite::RouterLogits)).unwrap().softmax(-1, Kind::Float).gather(-1, &forced, false);
    let want = &probs / probs.sum_dim_intlist(-1, true, Kind::Float);
    assert!(max_abs_diff(c.get(at(BlockSite::ExpertWeights)).unwrap(), &want) < 1e-6);
    // The same routing by pushing the router's logits for e (then 0) far above the rest.
    // (Not so far that the other probabilities underflow to a tie at 0.)
    let boost = Tensor::from_slice(&[80f32, 0.0, 0.0, 0.0]).roll([e], [0]) + Tensor::from_slice(&[40f32, 0.0, 0.0, 0.0]);
    let pushed = Hooks::new().intervene(at(BlockSite::RouterLogits), Intervention::Add(boost, Scope::all()));
    let c2 = m.runner(&t).cache(CacheSpec::names([at(BlockSite::ExpertIndices)])).hooks(pushed).run().unwrap().cache.unwrap();
    assert!(c2.get(at(BlockSite::ExpertIndices)).unwrap().equal(&forced));
    assert!(by_indices.isfinite().all().int64_value(&[]) == 1);

    // Out-of-range experts, or a float tensor, are refused with the hook's name.
    for bad in [forced.shallow_clone() + 4, forced.to_kind(Kind::Float)] {
        let hooks = Hooks::new().add(at(BlockSite::ExpertIndices), move |_, _| Ok(Some(bad.shallow_clone())));
        let err = m.run_with_hooks(&t, hooks).unwrap_err().to_string();
        assert!(err.contains("blocks.1.mlp.hook_expert_indices must stay int64"), "{err}");
    }
    // Dense hooks do not exist in a MoE layer, expert hooks not in a dense one.
    let e = m.hook_point("blocks.0.mlp.hook_post").unwrap_err().to_string();
    assert!(e.contains("mixture of experts"), "{e}");
    let e = load("qwen2_moe").hook_point("blocks.1.mlp.hook_router_logits").unwrap_err().to_string();
    assert!(e.contains("not a mixture of experts"), "{e}");
}
