//! The calls of docs/guide-transformerlens.md, compiled and run, so that the guide cannot name
//! what does not exist. One test per section of the guide, in its order.

use crate::common;

use crate::common::{fixture, repo};
use interp::circuits::{
    acdc, activation_patching, attribution_graph, causal_trace, edge_attribution, estimate_sigma, summarize, top_k_masks, Ablation, AcdcConfig,
    AttributionMethod, Corruption, EdgeGraph, EdgeRun, GraphConfig, MemoryBudget, Metric, PatchSite, TaskPrompts, TraceConfig, TracePrompt,
};
use interp::interp_core::tasks::{Task, TaskVocab};
use interp::interp_core::train::{next_token_loss, Batch};
use interp::interp_core::{
    tch, BlockSite, CacheSpec, HookPoint, HookedTransformer, Hooks, Intervention, NamesFilter, NormSite, Sampling, Scope, WeightProcessing,
};
use interp::transcoders::{
    evaluate, evaluate_set, latent_dashboards, load_transcoder_set, train_clt, Architecture, CltConfig, CrossLayerTranscoder, DictionaryConfig,
    InMemoryActivations, SaeTrainConfig, SparseDictionary, TranscoderSet,
};
use tch::{Device, Kind, Tensor};

type Result<T = ()> = std::result::Result<T, Box<dyn std::error::Error>>;

#[test]
fn loading_and_running() -> Result {
    let mut model = HookedTransformer::from_pretrained_dir(fixture("gpt2"), Device::Cpu, Kind::Float)?;
    let c = &model.cfg;
    let _ = (c.n_layers, c.d_model, c.n_heads, c.d_head, c.d_mlp, c.d_vocab, c.n_ctx, c.n_kv_heads);
    let tokens = model.to_tokens("Then, Mary and John went", true)?;
    let (_, _) = (model.to_str_tokens(&tokens)?, model.to_string(&tokens)?);
    let logits = model.forward(&tokens)?;
    let p = tokens.size()[1] - 1;
    let batch = Batch { input: tokens.narrow(1, 0, p), target: tokens.narrow(1, 1, p), mask: None };
    let _loss = next_token_loss(&model.forward(&batch.input)?, &batch)?;
    let mask = tokens.ones_like();
    let _ = model.runner(&tokens).attention_mask(&mask).run()?.output;
    let resid = model.runner(&tokens).stop_at_layer(1).run()?.output;
    let _ = model.runner_from_layer(&resid, 1).run()?;
    let sampling = Sampling { max_new_tokens: 3, temperature: 0.7, top_k: Some(50), seed: Some(0), ..Default::default() };
    let _ = model.generate(&tokens, None, &sampling, Hooks::new())?;
    let _ = (model.w_e(), model.w_pos(), model.w_u(), model.b_u());
    let _ = (model.w_q(0)?, model.w_k(0)?, model.w_v(0)?, model.w_o(0)?);
    let _ = (model.w_in(0)?, model.w_gate(0)?, model.w_out(0)?, model.b_in(0)?, model.b_gate(0)?, model.b_out(0)?);
    let _ = (model.norm_weights(NormSite::Ln1(0))?, model.norm_weights(NormSite::Ln2(0))?, model.norm_weights(NormSite::LnFinal)?);
    model.process_weights(WeightProcessing { fold_ln: true, center_writing_weights: true, center_unembed: true, fold_value_biases: true })?;
    assert_eq!(logits.size()[2], model.cfg.d_vocab);
    // A TransformerLens-native folder (config.json from cfg.to_dict(), the state dict) and an
    // InterpBench case folder load the same way.
    let tl = HookedTransformer::from_pretrained_dir(repo("tests/fixtures/transformer_lens/ln-relu"), Device::Cpu, Kind::Float)?;
    assert_eq!((tl.cfg.d_vocab, tl.cfg.d_vocab_out), (23, 13));
    let _ = HookedTransformer::from_pretrained_dir(repo("tests/fixtures/interpbench/planted-induction"), Device::Cpu, Kind::Float)?;
    Ok(())
}

#[test]
fn hooks_and_caches() -> Result {
    let model = HookedTransformer::from_pretrained_dir(fixture("gpt2"), Device::Cpu, Kind::Float)?;
    let tokens = model.to_tokens("Then, Mary and John went to the store.", true)?;
    let (_, cache) = model.run_with_cache(&tokens, CacheSpec::all())?;
    let _ = model.run_with_cache(&tokens, CacheSpec::names(["blocks.*.attn.hook_pattern"]))?;
    let _ = model.run_with_cache(&tokens, CacheSpec::new(NamesFilter::predicate(|n| n.ends_with("hook_pattern"))))?;
    let _ = model.run_with_cache(&tokens, CacheSpec::names([HookPoint::block(0, BlockSite::Z)]).positions(0..5).device(Device::Cpu).dtype(Kind::Half))?;
    let a = cache.get("blocks.0.attn.hook_pattern")?;
    assert_eq!(a.size(), cache[("pattern", 0)].size());
    let _ = cache.layer("pattern", 0)?;
    let _ = model.run_with_cache(&tokens, CacheSpec::names(["blocks.0.attn.hook_result", "blocks.0.hook_q_input"]))?;
    let stack = cache.accumulated_resid(None, true, true)?;
    let _ = cache.decompose_resid(None, true)?;
    let (_, with_results) = model.run_with_cache(&tokens, CacheSpec::names(["*", "blocks.*.attn.hook_result"]))?;
    let _ = with_results.stack_head_results(None, true)?;
    let _ = cache.apply_ln_to_stack(&stack.components)?;
    let _ = model.logit_attrs(&cache, &stack.components, &tokens.select(1, 1))?;
    let _ = model.logit_lens(&stack.components)?;
    let _ = model.run_with_hooks(&tokens, Hooks::new().add("blocks.0.hook_resid_post", |x, _ctx| Ok(Some(x * 0.5))))?;
    let ablate = Hooks::new().intervene("blocks.0.attn.hook_z", Intervention::Zero(Scope::all().heads([3]).positions([5])));
    let _ = model.run_with_hooks(&tokens, ablate)?;
    let patch = Hooks::new().intervene("blocks.0.hook_resid_pre", Intervention::Patch(&cache, Scope::all().positions([2])));
    let _ = model.run_with_hooks(&tokens, patch)?;
    let metric = |logits: &Tensor| Ok(logits.select(1, -1).select(1, 42).sum(Kind::Float));
    let grads = model.runner(&tokens).gradients(NamesFilter::names(["blocks.*.hook_resid_pre"]), metric).run()?.grads;
    assert!(grads.is_some());
    Ok(())
}

#[test]
fn saelens() -> Result {
    let model = HookedTransformer::from_pretrained_dir(repo("models/shakespeare-gpt2"), Device::Cpu, Kind::Float)?;
    let dir = repo("tests/fixtures/saelens/topk");
    let sae = SparseDictionary::load_saelens(&dir, Device::Cpu)?;
    let x = Tensor::randn([4, sae.cfg().d_in], (Kind::Float, Device::Cpu));
    let f = sae.encode(&x)?;
    let _ = (sae.decode(&f, None)?, sae.forward(&x)?);
    let _ = (&sae.cfg().hook_name, sae.cfg().d_in, sae.cfg().d_sae, sae.cfg().architecture, &sae.cfg().hook_name_out, sae.cfg().kind);
    let _ = (sae.w_enc(), sae.w_dec(), sae.b_enc(), sae.threshold());
    let fits = SparseDictionary::init(DictionaryConfig::sae(Architecture::TopK { k: 4 }, "blocks.0.hook_resid_post", 128, 256), 0, Device::Cpu)?;
    let b_dec = fits.b_dec().ones_like() * 0.1;
    let fits = fits.map_weights(|w| w.b_dec = b_dec)?;
    let hooked = Hooks::new().add(&fits.cfg().hook_name, |x, _| Ok(Some(fits.forward(x)?)));
    let _ = model.run_with_hooks(&model.to_tokens("To be", true)?, hooked)?;
    let out = common::Scratch::new("guide-sae");
    sae.save_saelens(out.join("sae"), None)?;
    let tc = DictionaryConfig::transcoder(Architecture::TopK { k: 4 }, true, "blocks.0.ln2.hook_normalized", "blocks.0.hook_mlp_out", 128, 128, 256);
    let tc = SparseDictionary::init(tc, 0, Device::Cpu)?;
    let contexts = model.to_tokens("To be, or not to be, that is the question", true)?;
    let m = evaluate(&tc, &model, &contexts, 1)?;
    let d = m.downstream.as_ref().expect("evaluate runs the model");
    let _ = (m.l0, m.fvu, m.explained_variance, d.ce_loss_recovered, d.delta_loss, d.kl_spliced, m.dead_fraction);
    let boards = latent_dashboards(&tc, &model, &contexts, &[0, 1], 2)?;
    interp::report::write_dashboards(&boards, "guide", out.join("dashboards"))?;
    let _ = load_transcoder_set(repo("models/shakespeare-gpt2/transcoders"), Device::Cpu)?;
    let mut clt = CrossLayerTranscoder::init(CltConfig::new(Architecture::TopK { k: 4 }, 2, 128, 64), 0, Device::Cpu)?;
    let names: Vec<String> = (0..2).map(|l| clt.cfg().hook_in(l)).chain((0..2).map(|l| clt.cfg().hook_out(l))).collect();
    let (_, cache) = model.run_with_cache(&contexts, CacheSpec::names(&names))?;
    let named = names.iter().map(|n| Ok((n.clone(), cache.get(n)?.flatten(0, 1)))).collect::<Result<Vec<_>>>()?;
    let mut store = InMemoryActivations::new(named, 4)?;
    train_clt(&mut clt, &mut store, &SaeTrainConfig { steps: 2, progress: false, ..SaeTrainConfig::default() })?;
    clt.save(out.join("clt"), "guide")?;
    let set = load_transcoder_set(out.join("clt"), Device::Cpu)?;
    assert!(matches!(set, TranscoderSet::CrossLayer(_)));
    let _ = evaluate_set(&set, &model, &contexts, 1)?;
    Ok(())
}

#[test]
fn circuits() -> Result {
    let model = HookedTransformer::from_pretrained_dir(repo("models/tasks-bilinear"), Device::Cpu, Kind::Float)?;
    let vocab = TaskVocab::of_model(&model)?;
    let ioi = TaskPrompts::new(Task::Ioi, &vocab, 4, 0)?;
    for site in [PatchSite::ResidPre, PatchSite::Z, PatchSite::ZByPos] {
        let r = activation_patching(&model, &ioi.clean, &ioi.corrupted, &ioi.metric, site, 4096)?;
        assert!(r.clean > r.corrupted, "{site:?}: the model does IOI ({} vs {})", r.clean, r.corrupted);
        assert_eq!(r.values.isfinite().all().int64_value(&[]), 1, "{site:?}");
    }
    let facts = TaskPrompts::new(Task::Facts, &vocab, 1, 0)?;
    let tokens = Vec::<i64>::try_from(&facts.clean.get(0))?;
    let prompt = TracePrompt::new(tokens.clone(), &tokens[1..4], facts.answers[0][0], "fact")?;
    let noise = Corruption::Noise { sigma: estimate_sigma(&model, &facts.clean)?, scale: 3.0, samples: 4, seed: 0 };
    let trace = causal_trace(&model, &prompt, &TraceConfig { corruption: noise, window: 10, severed_mlp: false, max_rows: 4096 })?;
    assert!(trace.total_effect() > 0.0, "noise on the subject lowers the answer's probability");
    assert_eq!(summarize(&[trace])?[0].n_prompts, 1);
    let graph = EdgeGraph::new(&model)?;
    let acts = graph.activations(&model, &ioi.clean, &ioi.corrupted, Ablation::Resample)?;
    let ig = edge_attribution(&model, &graph, &acts, &ioi.metric, AttributionMethod::EapIg { steps: 5 })?;
    assert_eq!(ig.size(), [graph.n_edges() as i64]);
    let circuit = acdc(&model, &graph, &acts, &ioi.metric, &AcdcConfig { tau: 0.3, progress: false, ..AcdcConfig::default() })?;
    assert!(circuit.n_kept() > 0 && circuit.n_kept() < graph.n_edges(), "{} of {} edges kept", circuit.n_kept(), graph.n_edges());
    let _ = Metric::kl_to(&model.forward(&ioi.clean)?, None)?;
    let run = EdgeRun::new(&model, &graph, &ioi, Ablation::Resample, MemoryBudget::DEFAULT)?;
    let scores = run.attribution(AttributionMethod::Eap)?;
    let faithfulness = run.faithfulness(&top_k_masks(&scores, &[10, graph.n_edges()], true)?)?;
    assert!((faithfulness[1] - 1.0).abs() < 1e-4, "the full circuit is the model: {faithfulness:?}");
    let bl = interp::circuits::BilinearLayer::from_model(&model, 1)?;
    let u = interp::circuits::bilinear::unembedding_direction(&model, vocab.id("m3")?)?;
    let q = bl.interaction_matrix(&u)?;
    let spectrum = interp::circuits::Spectrum::of(&q)?;
    // The eigenvalues of the symmetric part sum to its trace.
    assert!((spectrum.values.sum(Kind::Double).double_value(&[]) - q.to_kind(Kind::Double).trace().double_value(&[])).abs() < 1e-6);
    let text_model = HookedTransformer::from_pretrained_dir(repo("models/shakespeare-gpt2"), Device::Cpu, Kind::Float)?;
    let transcoders = load_transcoder_set(repo("models/shakespeare-gpt2/transcoders"), Device::Cpu)?;
    let tokens = text_model.to_tokens("To be, or not", true)?;
    let g = attribution_graph(
        &text_model,
        &transcoders,
        &Vec::<i64>::try_from(&tokens.get(0))?,
        &GraphConfig { max_feature_nodes: Some(100), ..GraphConfig::default() },
    )?;
    let pruned = g.prune(0.8, 0.98)?;
    assert!(g.completeness_error()? < 1e-3, "every node's inputs add up to its value");
    let json = g.to_circuit_tracer_json(&pruned, "guide", "shakespeare-gpt2", &|t| t.to_string())?;
    assert_eq!(json["nodes"].as_array().map(Vec::len), Some(pruned.n_nodes()));
    Ok(())
}
