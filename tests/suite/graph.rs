//! Transcoder attribution graphs: completeness (incoming edges + bias = value), agreement with
//! the transcoder paper's closed-form connections, determinism, pruning, the circuit-tracer JSON
//! layout, and bad input.

use crate::common;

use circuits::attribution_graph::{
    attribution_graph, check_by_intervention, check_transcoders, de_embedding, feature_connections, qk_attribution, Adjacency, AttributionGraph, Freeze,
    GraphConfig, Node, QkSource, Subgraph,
};
use interp::circuits;
use interp::interp_core::{tch, CacheSpec, HookedTransformer};
use interp::transcoders::{load_transcoder_set, Architecture, DictionaryConfig, SparseDictionary, TranscoderSet};
use tch::{Device, Kind, Tensor};

const TEXT_MODEL: &str = "models/shakespeare-gpt2";

fn text_model() -> HookedTransformer {
    HookedTransformer::from_pretrained_dir(TEXT_MODEL, Device::Cpu, Kind::Float).unwrap()
}

/// Random TopK transcoders with non-zero biases (and a skip path when `skip`), one per layer.
fn random_transcoders(model: &HookedTransformer, skip: bool) -> TranscoderSet {
    random_layers(model, skip).into()
}

/// The layers of a per-layer set.
fn layers(set: &TranscoderSet) -> &[SparseDictionary] {
    match set {
        TranscoderSet::PerLayer(v) => v,
        TranscoderSet::CrossLayer(_) => panic!("a per-layer set"),
    }
}

fn random_layers(model: &HookedTransformer, skip: bool) -> Vec<SparseDictionary> {
    let d = model.cfg.d_model;
    (0..model.cfg.n_layers)
        .map(|l| {
            let cfg = DictionaryConfig::transcoder(
                Architecture::TopK { k: 4 },
                skip,
                &format!("blocks.{l}.ln2.hook_normalized"),
                &format!("blocks.{l}.hook_mlp_out"),
                d,
                d,
                64,
            );
            let mut rng = interp::interp_core::Rng::new(7 + l as u64);
            let mut draw = |shape: &[i64], scale: f64| rng.normal_tensor(shape).unwrap() * scale;
            let (b_enc, b_dec, w_skip) = (draw(&[64], 0.1), draw(&[d], 0.1), draw(&[d, d], 0.05));
            SparseDictionary::init(cfg, 7 + l as i64, Device::Cpu)
                .unwrap()
                .map_weights(|w| {
                    (w.b_enc, w.b_dec) = (b_enc, b_dec);
                    if skip {
                        w.w_skip = Some(w_skip);
                    }
                })
                .unwrap()
        })
        .collect()
}

fn prompt(model: &HookedTransformer) -> Vec<i64> {
    model.tokenizer().unwrap().encode("ROMEO: But soft, what light through yonder window", true).unwrap()
}

fn max_abs(t: &Tensor) -> f64 {
    t.abs().max().double_value(&[])
}

#[test]
fn edges_plus_bias_equal_each_value() {
    let model = text_model();
    let tokens = prompt(&model);
    for skip in [false, true] {
        let tcs = random_transcoders(&model, skip);
        let graph = attribution_graph(&model, &tcs, &tokens, &GraphConfig { batch_size: 16, keep_position_0: true, ..GraphConfig::default() }).unwrap();
        assert_eq!(graph.n_features(), 2 * 4 * tokens.len(), "TopK 4 per token per layer");
        let err = graph.completeness_error().unwrap();
        let scale = max_abs(&graph.values);
        assert!(err < 1e-4 * scale.max(1.0), "skip {skip}: completeness error {err:e} (values up to {scale})");
        // The values are the real model's: pre-activations of the clean transcoder inputs and
        // logits minus their mean.
        let names: Vec<String> = (0..2).map(|l| format!("blocks.{l}.ln2.hook_normalized")).collect();
        let input = Tensor::from_slice(&tokens).unsqueeze(0);
        let (logits, cache) = model.run_with_cache(&input, CacheSpec::names(&names)).unwrap();
        let logits = logits.get(0).get(-1).to_kind(Kind::Double);
        let mut worst = 0f64;
        for (i, node) in graph.nodes.iter().enumerate() {
            let expected = match *node {
                Node::Feature { layer, pos, feature, .. } => {
                    layers(&tcs)[layer].pre_activations(&cache.get(&names[layer]).unwrap().get(0).get(pos)).unwrap().double_value(&[feature])
                }
                Node::Logit { token, .. } => logits.double_value(&[token]) - logits.mean(Kind::Double).double_value(&[]),
                _ => continue,
            };
            worst = worst.max((graph.values.double_value(&[i as i64]) - expected).abs());
        }
        assert!(worst < 1e-4, "linearised values = real values ({worst:e})");
        // Sources have no inputs; features only read from earlier layers.
        let dense = graph.adjacency.to_dense().unwrap();
        for (i, node) in graph.nodes.iter().enumerate() {
            if let Node::Feature { layer: 0, .. } | Node::Error { .. } | Node::Token { .. } = node {
                let row = dense.get(i as i64);
                let feature_inputs = row.narrow(0, 0, graph.n_features() as i64);
                assert_eq!(max_abs(&feature_inputs), 0.0, "node {node:?} has feature inputs");
            }
        }
    }
}

#[test]
fn position_0_is_left_out_as_circuit_tracer_does() {
    // By default features and errors at position 0 are no sources: no features there, zero
    // edges from its errors, and its MLP output is a constant in every target's bias, so the
    // values (the real model's) and completeness are unchanged.
    let model = text_model();
    let tokens = prompt(&model);
    for skip in [false, true] {
        let tcs = random_transcoders(&model, skip);
        let kept = attribution_graph(&model, &tcs, &tokens, &GraphConfig { keep_position_0: true, ..GraphConfig::default() }).unwrap();
        let graph = attribution_graph(&model, &tcs, &tokens, &GraphConfig::default()).unwrap();
        assert_eq!(graph.n_features(), 2 * 4 * (tokens.len() - 1));
        assert!(graph.nodes.iter().all(|n| !matches!(n, Node::Feature { pos: 0, .. })));
        let err = graph.completeness_error().unwrap();
        assert!(err < 1e-4 * max_abs(&graph.values).max(1.0), "skip {skip}: completeness error {err:e}");
        let dense = graph.adjacency.to_dense().unwrap();
        for (i, node) in graph.nodes.iter().enumerate() {
            if let Node::Error { pos: 0, .. } = node {
                assert_eq!(max_abs(&dense.select(1, i as i64)), 0.0, "edges out of {node:?}");
            }
        }
        // The same targets have the same values either way (the logits and pre-activations).
        let value = |g: &AttributionGraph, node: &Node| g.nodes.iter().position(|n| n == node).map(|i| g.values.double_value(&[i as i64]));
        let mut compared = 0;
        for node in graph.nodes.iter().filter(|n| matches!(n, Node::Feature { .. } | Node::Logit { .. })) {
            if let (Some(a), Some(b)) = (value(&graph, node), value(&kept, node)) {
                assert!((a - b).abs() < 1e-4 * b.abs().max(1.0), "{node:?}: {a} vs {b}");
                compared += 1;
            }
        }
        assert!(compared > 20, "{compared}");
    }
}

#[test]
fn adjacent_layer_edges_match_the_closed_form() {
    let model = text_model();
    let tokens = prompt(&model);
    let tcs = random_transcoders(&model, false);
    let graph = attribution_graph(&model, &tcs, &tokens, &GraphConfig::default()).unwrap();
    let input = Tensor::from_slice(&tokens).unsqueeze(0);
    let (_, cache) =
        model.run_with_cache(&input, CacheSpec::names(["blocks.1.ln1.hook_scale", "blocks.1.ln2.hook_scale", "blocks.1.attn.hook_pattern"])).unwrap();
    let sigma1 = cache.get("blocks.1.ln1.hook_scale").unwrap().get(0).squeeze_dim(-1).to_kind(Kind::Double);
    let sigma2 = cache.get("blocks.1.ln2.hook_scale").unwrap().get(0).squeeze_dim(-1).to_kind(Kind::Double);
    let pattern = cache.get("blocks.1.attn.hook_pattern").unwrap().get(0).to_kind(Kind::Double); // [head, dst, src]
    let (mut checked, mut worst, mut largest) = (0, 0f64, 0f64);
    let dense = graph.adjacency.to_dense().unwrap();
    for (ti, t) in graph.nodes.iter().enumerate() {
        let Node::Feature { layer: 1, pos: p, feature: ft, .. } = *t else { continue };
        for (si, s) in graph.nodes.iter().enumerate() {
            let Node::Feature { layer: 0, pos: q, feature: fs, activation } = *s else { continue };
            let conn = feature_connections(&model, 0, &layers(&tcs)[0], &[fs], 1, &layers(&tcs)[1], &[ft]).unwrap();
            let mut expected = 0.0;
            if p == q {
                expected += conn.residual.double_value(&[0, 0]);
            }
            for h in 0..model.cfg.n_heads {
                expected += pattern.double_value(&[h, p, q]) / sigma1.double_value(&[q]) * conn.heads.double_value(&[0, h, 0, 0]);
            }
            expected *= activation / sigma2.double_value(&[p]);
            let edge = dense.double_value(&[ti as i64, si as i64]);
            worst = worst.max((edge - expected).abs());
            largest = largest.max(expected.abs());
            checked += 1;
        }
    }
    assert!(checked > 500, "{checked} feature pairs");
    assert!(largest > 1e-3, "non-trivial edges ({largest})");
    assert!(worst < 1e-4 * largest.max(1.0), "graph edges vs a_s (d_s.e_t + sum_h A_h d_s W_OV e_t) / sigma: {worst:e}");
    let de = de_embedding(&model, &layers(&tcs)[1], &[0, 5]).unwrap();
    assert_eq!(de.size(), [2, model.cfg.d_vocab]);
}

#[test]
fn graphs_are_deterministic_and_batch_independent() {
    let model = text_model();
    let tokens = prompt(&model);
    let tcs = random_transcoders(&model, true);
    let build = |batch| attribution_graph(&model, &tcs, &tokens, &GraphConfig { batch_size: batch, ..GraphConfig::default() }).unwrap();
    let (a, b, c) = (build(8), build(8), build(64));
    assert_eq!(a.nodes, b.nodes);
    assert!(a.adjacency.to_dense().unwrap().equal(&b.adjacency.to_dense().unwrap()), "same prompt, same graph, bit for bit");
    assert!(max_abs(&(&a.adjacency.to_dense().unwrap() - &c.adjacency.to_dense().unwrap())) < 1e-5, "batch size does not change edges");
}

fn trained_graph(model: &HookedTransformer) -> AttributionGraph {
    let tcs = load_transcoder_set(format!("{TEXT_MODEL}/transcoders"), Device::Cpu).unwrap();
    let tokens = model.tokenizer().unwrap().encode("First Citizen: Before we proceed any further, hear me speak.", true).unwrap();
    attribution_graph(model, &tcs, &tokens, &GraphConfig::default()).unwrap()
}

#[test]
fn pruning_and_circuit_tracer_json() {
    let model = text_model();
    let graph = trained_graph(&model);
    let err = graph.completeness_error().unwrap();
    assert!(err < 1e-4 * max_abs(&graph.values).max(1.0), "trained transcoders: {err:e}");
    let pruned = graph.prune(0.8, 0.98).unwrap();
    let n = graph.nodes.len();
    let n_tokens = graph.tokens.len();
    assert!(pruned.node_mask[n - graph.n_logits() - n_tokens..].iter().all(|k| *k), "tokens and logits stay");
    assert!(pruned.n_nodes() < n, "pruning removes nodes ({} of {n})", pruned.n_nodes());
    let total = pruned.n_edges();
    let nonzero = graph.adjacency.to_dense().unwrap().ne(0.0).sum(Kind::Int64).int64_value(&[]);
    assert!(total > 0 && total < nonzero, "{total} of {nonzero} edges kept");
    // A kept edge joins two kept nodes.
    let keep = Tensor::from_slice(&pruned.node_mask);
    let outside = pruned.edge_mask().unwrap().logical_and(&keep.unsqueeze(1).logical_and(&keep.unsqueeze(0)).logical_not());
    assert_eq!(outside.sum(Kind::Int64).int64_value(&[]), 0);
    // Looser thresholds keep a superset.
    let loose = graph.prune(1.0, 1.0).unwrap();
    assert!(loose.n_edges() > total);
    // The kept edges are (target, source) pairs in row-major order.
    assert!(pruned.edges.equal(&pruned.edge_mask().unwrap().nonzero()));
    assert_eq!(pruned.edge_mask().unwrap().logical_and(&loose.edge_mask().unwrap().logical_not()).sum(Kind::Int64).int64_value(&[]), 0);
    // The influence on the logits of a logit's own strongest input is positive.
    let last = n as i64 - graph.n_logits() as i64;
    let strongest = graph.adjacency.to_dense().unwrap().get(last).abs().argmax(0, false).int64_value(&[]);
    assert!(pruned.influence[strongest as usize] > 0.0);

    let tok = model.tokenizer().unwrap();
    let text = |t: i64| tok.decode(&[t]).unwrap_or_default();
    let json = graph.to_circuit_tracer_json(&pruned, "test", "shakespeare-gpt2", &text).unwrap();
    let nodes = json["nodes"].as_array().unwrap();
    let ids: std::collections::HashSet<&str> = nodes.iter().map(|n| n["node_id"].as_str().unwrap()).collect();
    // As circuit-tracer writes them: kept nodes on a kept edge, and every token and logit.
    let linked: std::collections::HashSet<&str> =
        json["links"].as_array().unwrap().iter().flat_map(|l| [l["source"].as_str().unwrap(), l["target"].as_str().unwrap()]).collect();
    assert!(
        nodes.len() <= pruned.n_nodes()
            && nodes.iter().all(|n| linked.contains(n["node_id"].as_str().unwrap()) || n["feature_type"] == "embedding" || n["feature_type"] == "logit")
    );
    assert_eq!(nodes.iter().filter(|n| n["feature_type"] == "embedding").count(), graph.tokens.len());
    assert!(
        nodes.iter().filter(|n| n["feature_type"] == "mlp reconstruction error").all(|n| n["node_id"].as_str().unwrap().starts_with("0_")),
        "error ids are 0_{{layer}}_{{pos}}"
    );
    for key in ["node_id", "feature", "layer", "ctx_idx", "feature_type", "jsNodeId", "influence", "is_target_logit"] {
        assert!(nodes.iter().all(|n| n.get(key).is_some()), "every node has `{key}`");
    }
    let links = json["links"].as_array().unwrap();
    assert_eq!(links.len() as i64, total);
    assert!(links.iter().all(|l| ids.contains(l["source"].as_str().unwrap()) && ids.contains(l["target"].as_str().unwrap())));
    assert_eq!(json["metadata"]["prompt_tokens"].as_array().unwrap().len(), graph.tokens.len());
    assert_eq!(json["metadata"]["node_threshold"], 0.8, "the threshold the graph was pruned with");
    assert_eq!(nodes.iter().filter(|n| n["is_target_logit"] == true).count(), 1);
    let dir = common::Scratch::new("graph");
    interp::report::write_graph_html(&graph, &pruned, &dir.join("graph.html"), "test", &text, &Default::default()).unwrap();
    let html = std::fs::read_to_string(dir.join("graph.html")).unwrap();
    assert_eq!(html.matches("<circle").count(), pruned.n_nodes());
}

#[test]
fn graph_bad_input() {
    let model = text_model();
    let tokens = prompt(&model);
    let tcs = random_transcoders(&model, false);
    let err = |r: circuits::Result<AttributionGraph>| r.err().expect("an error").to_string();
    let cfg = GraphConfig::default();
    let one: TranscoderSet = random_layers(&model, false).into_iter().take(1).collect::<Vec<_>>().into();
    let wrong = attribution_graph(&model, &one, &tokens, &cfg).err().expect("an error");
    assert!(matches!(&wrong, circuits::Error::Transcoders(why) if why.contains("1 transcoders for a model with 2 layers")), "{wrong}");
    let swapped: TranscoderSet = random_layers(&model, false).into_iter().rev().collect::<Vec<_>>().into();
    let msg = err(attribution_graph(&model, &swapped, &tokens, &cfg));
    assert!(msg.contains("does not replace the MLP of layer 0"), "{msg}");
    let mut sae = random_layers(&model, false);
    sae[1] = SparseDictionary::init(DictionaryConfig::sae(Architecture::TopK { k: 4 }, "blocks.1.hook_mlp_out", 128, 64), 0, Device::Cpu).unwrap();
    assert!(check_transcoders(&model, &sae.into()).unwrap_err().to_string().contains("SAE"));
    assert!(err(attribution_graph(&model, &tcs, &[], &cfg)).contains("non-empty"));
    // A setting out of range is typed: its name and value.
    for (bad, name) in
        [(GraphConfig { batch_size: 0, ..cfg.clone() }, "batch_size"), (GraphConfig { logit_probability: f64::NAN, ..cfg.clone() }, "logit_probability")]
    {
        let e = attribution_graph(&model, &tcs, &tokens, &bad).err().expect("an error");
        assert!(matches!(&e, circuits::Error::Setting { name: n, .. } if n == name), "{e}");
    }
    // A budget too small for the adjacency is an error stating what it needs; a small one that
    // fits only cuts the rows per backward pass, not the graph.
    let tiny = GraphConfig { budget: circuits::MemoryBudget { bytes: 100_000, outside: 0 }, ..GraphConfig::default() };
    let msg = err(attribution_graph(&model, &tcs, &tokens, &tiny));
    assert!(msg.contains("too small: an attribution graph of") && msg.contains("needs at least"), "{msg}");
    let full = attribution_graph(&model, &tcs, &tokens, &cfg).unwrap();
    let n = full.nodes.len() as u64;
    let tight = GraphConfig { budget: circuits::MemoryBudget { bytes: n * n * 4 + 4_000_000, outside: 0 }, ..GraphConfig::default() };
    let small = attribution_graph(&model, &tcs, &tokens, &tight).unwrap();
    assert!(max_abs(&(&small.adjacency.to_dense().unwrap() - &full.adjacency.to_dense().unwrap())) < 1e-5);
    assert!(err(attribution_graph(&model, &tcs, &vec![5; 129], &cfg)).contains("the prompt has 129 tokens, longer than the model's context of 128"));
    assert!(err(attribution_graph(&model, &tcs, &[0, 99_999], &cfg)).contains("99999"));
    let attn_only = HookedTransformer::from_pretrained_dir("models/induction-attn-only", Device::Cpu, Kind::Float).unwrap();
    assert!(err(attribution_graph(&attn_only, &tcs, &[0, 1], &cfg)).contains("attention-only"));
    let task = HookedTransformer::from_pretrained_dir("models/tasks-bilinear", Device::Cpu, Kind::Float).unwrap();
    let wide: TranscoderSet = (0..2)
        .map(|l| {
            SparseDictionary::init(
                DictionaryConfig::transcoder(
                    Architecture::TopK { k: 4 },
                    false,
                    &format!("blocks.{l}.ln2.hook_normalized"),
                    &format!("blocks.{l}.hook_mlp_out"),
                    64,
                    64,
                    32,
                ),
                0,
                Device::Cpu,
            )
            .unwrap()
        })
        .collect::<Vec<_>>()
        .into();
    assert!(err(attribution_graph(&task, &wide, &[0, 1], &cfg)).contains("d_model 128"));
    assert!(graph_prune_err(&model, &tcs, &tokens).contains("invalid setting pruning threshold = 1.5: a fraction in [0, 1]"));
    assert!(load_transcoder_set("models/tasks-bilinear", Device::Cpu).err().unwrap().to_string().contains("neither a circuit-tracer set"));
}

fn graph_prune_err(model: &HookedTransformer, tcs: &TranscoderSet, tokens: &[i64]) -> String {
    let g = attribution_graph(model, tcs, tokens, &GraphConfig::default()).unwrap();
    g.prune(1.5, 0.9).err().unwrap().to_string()
}

#[test]
fn a_feature_limit_keeps_the_most_influential_features_and_their_exact_edges() {
    let model = text_model();
    let full = trained_graph(&model);
    let tcs = load_transcoder_set(format!("{TEXT_MODEL}/transcoders"), Device::Cpu).unwrap();
    let tokens = full.tokens.clone();
    let n_features = full.n_features();
    let limit = n_features / 4;
    let cfg = GraphConfig { max_feature_nodes: Some(limit), batch_size: 16, ..GraphConfig::default() };
    let small = attribution_graph(&model, &tcs, &tokens, &cfg).unwrap();
    assert_eq!((small.n_features(), small.features_left_out, full.features_left_out), (limit, n_features - limit, 0));
    assert_eq!(small.nodes.len(), full.nodes.len() - (n_features - limit));
    // Every edge among the nodes kept is the full graph's edge.
    let index: Vec<i64> = small.nodes.iter().map(|n| full.nodes.iter().position(|m| m == n).unwrap() as i64).collect();
    let index = Tensor::from_slice(&index);
    let sub = full.adjacency.to_dense().unwrap().index_select(0, &index).index_select(1, &index);
    assert!(max_abs(&(&sub - &small.adjacency.to_dense().unwrap())) < 1e-5 * max_abs(&full.adjacency.to_dense().unwrap()), "kept edges equal the full graph's");
    // The features chosen are mostly the full graph's most influential ones.
    let pruned = full.prune(0.8, 0.98).unwrap();
    let mut ranked: Vec<usize> = (0..n_features).collect();
    ranked.sort_by(|&a, &b| pruned.influence[b].total_cmp(&pruned.influence[a]));
    let top: Vec<&Node> = ranked[..limit].iter().map(|&i| &full.nodes[i]).collect();
    let overlap = small.nodes.iter().filter(|n| top.contains(n)).count() as f64 / limit as f64;
    assert!(overlap > 0.9, "{overlap:.2} of the chosen features are among the full graph's top {limit} by influence");
    // A limit at or above the number of features is the full graph.
    let all = attribution_graph(&model, &tcs, &tokens, &GraphConfig { max_feature_nodes: Some(n_features + 5), ..GraphConfig::default() }).unwrap();
    assert_eq!(all.nodes, full.nodes);
    assert!(max_abs(&(&all.adjacency.to_dense().unwrap() - &full.adjacency.to_dense().unwrap())) < 1e-5);
}

/// QK attribution: the pairs of sources add up to the score the model computes, on a LayerNorm
/// model with learned positions (with and without transcoders, skip paths included) and on
/// rotary, grouped-query, RMSNorm and QK-norm fixtures; bad queries get one clear error.
#[test]
fn qk_pairs_add_up_to_the_score() {
    let model = text_model();
    let tokens = model.tokenizer().unwrap().encode("To be, or not to be, that is the question", true).unwrap();
    let last = tokens.len() as i64 - 1;
    let layer = model.cfg.n_layers - 1;
    for transcoders in [None, Some(random_transcoders(&model, false)), Some(random_transcoders(&model, true))] {
        let qk = qk_attribution(&model, transcoders.as_ref(), &tokens, layer, 1, last, 3).unwrap();
        assert!(qk.completeness_error().unwrap() < 1e-4 * qk.score.abs().max(1.0), "{} vs {}", qk.pairs.sum(Kind::Double).double_value(&[]), qk.score);
        assert_eq!(qk.pairs.size(), [qk.query.len() as i64 + 1, qk.key.len() as i64 + 1]);
        let features = qk.query.iter().filter(|s| matches!(s, QkSource::Feature { .. })).count();
        assert_eq!(features > 0, transcoders.is_some(), "features are sources exactly when transcoders split the MLPs");
    }
    // Negative positions count from the end.
    let from_end = qk_attribution(&model, None, &tokens, layer, 1, -1, 3 - tokens.len() as i64).unwrap();
    let direct = qk_attribution(&model, None, &tokens, layer, 1, last, 3).unwrap();
    assert_eq!((from_end.query_pos, from_end.key_pos, from_end.score), (last, 3, direct.score));
    // f64 fixtures of other layouts: the sum is exact to rounding.
    for arch in ["llama", "qwen3", "olmo2", "gpt_neox"] {
        let m = HookedTransformer::from_pretrained_dir(common::fixture(arch), Device::Cpu, Kind::Double).unwrap();
        let ids: Vec<i64> = (0..7).map(|i| (i * 5 + 3) % m.cfg.d_vocab).collect();
        let qk = qk_attribution(&m, None, &ids, m.cfg.n_layers - 1, m.cfg.n_heads - 1, 6, 2).unwrap();
        assert!(qk.completeness_error().unwrap() < 1e-9 * qk.score.abs().max(1.0), "{arch}: {} vs {}", qk.pairs.sum(Kind::Double).double_value(&[]), qk.score);
    }
    // Bad queries.
    let err = |r: Result<_, circuits::Error>| r.err().map(|e: circuits::Error| e.to_string()).unwrap_or_default();
    let e = qk_attribution(&model, None, &tokens, layer, 99, last, 0).expect_err("an error");
    assert!(matches!(e, circuits::Error::NoHead { head: 99, n_layers: 2, .. }), "{e}");
    assert!(err(qk_attribution(&model, None, &tokens, layer, 0, 2, 5)).contains("earlier one"));
    assert!(err(qk_attribution(&model, None, &tokens, 99, 0, 2, 1)).contains("no head"));
}

/// On the planted induction model, the induction head's score at the right key (the token after
/// the first occurrence of the current token) comes from the current token's embedding at the
/// query and the previous-token head's output at the key; a wrong key gets no such pair.
#[test]
fn qk_attribution_finds_the_induction_mechanism() {
    let dir = common::Scratch::new("qk-planted");
    common::planted::write_planted(&dir);
    let model = HookedTransformer::from_pretrained_dir(&*dir, Device::Cpu, Kind::Float).unwrap();
    let (clean, _, _) = common::planted::prompts(1, 4);
    let tokens = Vec::<i64>::try_from(&clean.get(0)).unwrap();
    // [BOS, s0..s9, s0..s8]: the query at s8's second occurrence (19) should look at s9 (10).
    let qk = qk_attribution(&model, None, &tokens, 1, 0, 19, 10).unwrap();
    let top = qk.top_pairs(1).unwrap();
    assert_eq!((top[0].0, top[0].1), (Some(&QkSource::Embedding), Some(&QkSource::Head { layer: 0, head: 0 })), "{top:?}");
    assert!(top[0].2 > 0.8 * qk.score, "the pair carries the score: {} of {}", top[0].2, qk.score);
    let wrong = qk_attribution(&model, None, &tokens, 1, 0, 19, 5).unwrap();
    assert!(wrong.score < 0.2 * qk.score, "a wrong key scores low: {} vs {}", wrong.score, qk.score);
}

/// circuit-tracer's replacement and completeness scores, by hand on a four-node graph: the logit
/// reads a feature (3) and an error (1), the feature reads the token (2).
#[test]
fn replacement_and_completeness_scores_match_the_closed_form() {
    let graph = AttributionGraph {
        tokens: vec![0, 5],
        n_layers: 1,
        nodes: vec![
            Node::Feature { layer: 0, pos: 1, feature: 0, activation: 1.0 },
            Node::Error { layer: 0, pos: 1 },
            Node::Token { pos: 1, token: 5 },
            Node::Logit { token: 7, probability: 1.0 },
        ],
        adjacency: Adjacency::from_dense(&Tensor::from_slice(&[0f32, 0., 2., 0., 0., 0., 0., 0., 0., 0., 0., 0., 3., 1., 0., 0.]).view([4, 4])).unwrap(),
        values: Tensor::zeros([4], (Kind::Double, Device::Cpu)),
        biases: Tensor::zeros([4], (Kind::Double, Device::Cpu)),
        features_left_out: 0,
    };
    // Influence: feature 0.75, error 0.25, token 0.75 (through the feature). Replacement: the
    // token's share of token + error influence, 0.75 / 1.0. Completeness: non-error input shares
    // (logit 0.75, others 1) weighted by influence + logit weight: 2.5 / 2.75.
    let (replacement, completeness) = graph.replacement_and_completeness().unwrap();
    assert!((replacement - 0.75).abs() < 1e-12, "{replacement}");
    assert!((completeness - 2.5 / 2.75).abs() < 1e-12, "{completeness}");
    // On the text model's graph both are shares, and its errors carry some influence.
    let model = text_model();
    let tokens = model.tokenizer().unwrap().encode("To be, or not to be", true).unwrap();
    let g = attribution_graph(&model, &load_transcoder_set(TEXT_MODEL.to_string() + "/transcoders", Device::Cpu).unwrap(), &tokens, &GraphConfig::default())
        .unwrap();
    let (r, c) = g.replacement_and_completeness().unwrap();
    assert!(0.0 < r && r < 1.0 && 0.0 < c && c < 1.0 && r <= c, "replacement {r}, completeness {c}");
}

/// Pinned nodes and supernodes go into the graph's `qParams` as circuit-tracer's viewer saves a
/// subgraph, and read back the same (also from the viewer's comma-separated pinned ids); an id
/// the graph lacks is refused.
#[test]
fn subgraphs_are_saved_as_the_viewer_saves_them_and_read_back() {
    let model = text_model();
    let tokens = model.tokenizer().unwrap().encode("To be, or not to be", true).unwrap();
    let transcoders = load_transcoder_set(TEXT_MODEL.to_string() + "/transcoders", Device::Cpu).unwrap();
    let graph = attribution_graph(&model, &transcoders, &tokens, &GraphConfig::default()).unwrap();
    let pruned = graph.prune(0.8, 0.98).unwrap();
    let mut json = graph.to_circuit_tracer_json(&pruned, "sub", "shakespeare-gpt2", &|t| t.to_string()).unwrap();
    let ids: Vec<String> = json["nodes"].as_array().unwrap().iter().map(|n| n["node_id"].as_str().unwrap().to_string()).collect();
    assert_eq!(Subgraph::read(&json).unwrap(), Subgraph::default(), "a new graph has no subgraph");
    let sub = Subgraph { pinned: ids[..3].to_vec(), supernodes: vec![("first two".into(), ids[..2].to_vec()), ("last".into(), ids[ids.len() - 1..].to_vec())] };
    sub.save_into(&mut json).unwrap();
    assert_eq!(json["qParams"]["supernodes"][0][0], "first two");
    assert_eq!(json["qParams"]["supernodes"][0][1], ids[0].as_str());
    assert_eq!(Subgraph::read(&serde_json::from_str(&json.to_string()).unwrap()).unwrap(), sub);
    json["qParams"]["pinnedIds"] = ids[..2].join(",").into();
    assert_eq!(Subgraph::read(&json).unwrap().pinned, ids[..2].to_vec());
    let bad = Subgraph { pinned: vec!["99_1_1".into()], supernodes: vec![] };
    let e = bad.save_into(&mut json).unwrap_err();
    assert!(matches!(&e, circuits::Error::UnknownNode { id } if id == "99_1_1"), "{e}");
    json["qParams"]["supernodes"] = serde_json::json!([[]]);
    assert!(Subgraph::read(&json).is_err(), "an empty supernode");
}

/// A source's total effect sums its paths, each divided by the activations of the features it
/// passes: feature 0 (activation 2) reaches the logit directly (0.5) and through feature 1
/// (activation 4): 1 x 3 / 4, 1.25 in all.
#[test]
fn total_effects_sum_the_paths_through_features() {
    let graph = AttributionGraph {
        tokens: vec![0, 5],
        n_layers: 2,
        nodes: vec![
            Node::Feature { layer: 0, pos: 1, feature: 0, activation: 2.0 },
            Node::Feature { layer: 1, pos: 1, feature: 3, activation: 4.0 },
            Node::Token { pos: 1, token: 5 },
            Node::Logit { token: 7, probability: 1.0 },
        ],
        // Rows are targets: feature 1 <- feature 0 (1) and token (2); logit <- feature 0 (0.5), feature 1 (3).
        adjacency: Adjacency::from_dense(&Tensor::from_slice(&[0f32, 0., 0., 0., 1., 0., 2., 0., 0., 0., 0., 0., 0.5, 3., 0., 0.]).view([4, 4])).unwrap(),
        values: Tensor::zeros([4], (Kind::Double, Device::Cpu)),
        biases: Tensor::zeros([4], (Kind::Double, Device::Cpu)),
        features_left_out: 0,
    };
    let total = graph.total_effects(3).unwrap();
    // Correlations skip measurements that overflowed (and count them).
    let v = |node, predicted: f64, measured: f64| circuits::attribution_graph::Intervention {
        node,
        strength: 0.0,
        direct: predicted,
        predicted,
        measured: [predicted, measured, measured, measured],
    };
    let check = circuits::attribution_graph::InterventionCheck { target: 3, interventions: vec![v(0, 1.0, 2.0), v(1, 2.0, f64::INFINITY), v(0, 3.0, 6.5)] };
    assert_eq!(check.non_finite(Freeze::Attention), 1);
    assert!((check.correlation(Freeze::Attention) - 1.0).abs() < 1e-12 && check.non_finite(Freeze::DirectEffects) == 0);
    let expected = [0.5 + 3.0 / 4.0, 3.0, 2.0 * 3.0 / 4.0, 0.0];
    assert!(total.iter().zip(expected).all(|(a, b)| (a - b).abs() < 1e-12), "{total:?}");
    assert!(graph.total_effects(9).unwrap_err().to_string().contains("node 9"));
}

/// Interventions in the model's forward against the graph of the text model's trained
/// transcoders: with attention, norms and MLP outputs frozen the change is the graph's edge
/// (also through a skip path); with only attention frozen, and free, the graph's total effects
/// predict the changes closely at these strengths.
#[test]
fn interventions_measure_what_the_graph_predicts() {
    let model = text_model();
    let tcs = load_transcoder_set(format!("{TEXT_MODEL}/transcoders"), Device::Cpu).unwrap();
    let tokens = model.tokenizer().unwrap().encode("First Citizen: Before we proceed any further, hear me speak.", true).unwrap();
    let graph = attribution_graph(&model, &tcs, &tokens, &GraphConfig::default()).unwrap();
    let pruned = graph.prune(0.8, 0.98).unwrap();
    let mut features: Vec<usize> = (0..graph.nodes.len()).filter(|&i| matches!(graph.nodes[i], Node::Feature { .. }) && pruned.node_mask[i]).collect();
    features.sort_by(|&a, &b| pruned.influence[b].total_cmp(&pruned.influence[a]));
    features.truncate(10);
    let check = check_by_intervention(&model, &tcs, &graph, &features, &[0.0, 0.5, 2.0], None).unwrap();
    assert_eq!(check.interventions.len(), 30);
    assert!(check.worst_relative_error(Freeze::DirectEffects) < 1e-4, "direct effects: {}", check.worst_relative_error(Freeze::DirectEffects));
    // With norms frozen as the graph freezes them, only the MLPs respond: a last-layer feature's
    // change is its total effect exactly, and the others' follow closely.
    let last_layer = |v: &&circuits::attribution_graph::Intervention| matches!(graph.nodes[v.node], Node::Feature { layer: 1, .. });
    let last: Vec<_> = check.interventions.iter().filter(last_layer).collect();
    assert!(!last.is_empty() && last.iter().all(|v| (v.measured[1] - v.predicted).abs() < 1e-4 * v.predicted.abs().max(1.0)));
    let (with_norms, frozen, free) = (check.correlation(Freeze::AttentionAndNorms), check.correlation(Freeze::Attention), check.correlation(Freeze::Nothing));
    assert!(with_norms > 0.98, "frozen attention and norms: {with_norms}");
    // This small model's final norm is where the graph and the model part: a top feature is a
    // large share of the last position's residual, and letting the norm scale respond cuts the
    // agreement (0.99 -> 0.47; freeing attention too changes little, 0.48).
    assert!(frozen < with_norms - 0.2 && free < with_norms - 0.2, "frozen attention {frozen}, free {free}");
    // The total effect is not the direct edge: some paths run through other features.
    assert!(check.interventions.iter().any(|v| (v.predicted - v.direct).abs() > 1e-3 * v.predicted.abs().max(1e-6)));

    // Random skip transcoders: the skip path responds in the direct-effects forward too.
    let skip = random_transcoders(&model, true);
    let tokens = prompt(&model);
    let graph = attribution_graph(&model, &skip, &tokens, &GraphConfig::default()).unwrap();
    let some: Vec<usize> = (0..graph.nodes.len()).filter(|&i| matches!(graph.nodes[i], Node::Feature { .. })).step_by(7).take(6).collect();
    let check = check_by_intervention(&model, &skip, &graph, &some, &[0.0, 3.0], None).unwrap();
    assert!(check.worst_relative_error(Freeze::DirectEffects) < 1e-4, "skip: {}", check.worst_relative_error(Freeze::DirectEffects));

    // Bad input: a node that is no feature, a target that is no logit, no strengths.
    let logit = graph.nodes.len() - 1;
    let err = |r: circuits::Result<_>| r.map(|_: circuits::attribution_graph::InterventionCheck| ()).unwrap_err().to_string();
    assert!(err(check_by_intervention(&model, &skip, &graph, &[logit], &[0.0], None)).contains("not a feature node"));
    assert!(err(check_by_intervention(&model, &skip, &graph, &some, &[0.0], Some(some[0]))).contains("not a logit node"));
    assert!(err(check_by_intervention(&model, &skip, &graph, &some, &[], None)).contains("strengths"));
}

/// A Llama layout (RMSNorm, rotary, grouped-query heads, gated MLP; the SmolLM2 family): the
/// graph's edges add up to each value, and interventions with everything frozen equal the edges.
#[test]
fn llama_graphs_are_complete_and_match_interventions() {
    let model = HookedTransformer::from_pretrained_dir(common::fixture("llama"), Device::Cpu, Kind::Double).unwrap();
    let set = random_transcoders(&model, false);
    let tokens: Vec<i64> = (0..9).map(|i| (i * 7 + 2) % model.cfg.d_vocab).collect();
    let graph = attribution_graph(&model, &set, &tokens, &GraphConfig::default()).unwrap();
    let err = graph.completeness_error().unwrap();
    assert!(err < 1e-4 * max_abs(&graph.values).max(1.0), "completeness error {err:e}");
    let features: Vec<usize> = (0..graph.nodes.len()).filter(|&i| matches!(graph.nodes[i], Node::Feature { .. })).step_by(5).take(6).collect();
    let check = check_by_intervention(&model, &set, &graph, &features, &[0.0, 2.0], None).unwrap();
    // In f64 (the adjacency is f32): the changes agree to 1e-6 of the largest.
    assert!(check.worst_relative_error(Freeze::DirectEffects) < 1e-6, "{}", check.worst_relative_error(Freeze::DirectEffects));
}

/// Pruning reads the adjacency by blocks and scores edges on the kept nodes only: the same nodes
/// and edges as circuit-tracer's `prune_graph` written out densely (every [n, n] matrix held).
#[test]
fn pruning_by_blocks_equals_the_dense_algorithm() {
    let model = text_model();
    let graph = trained_graph(&model);
    let pruned = graph.prune(0.8, 0.98).unwrap();
    let n = graph.nodes.len();
    let normalize = |a: &Tensor| {
        let a = a.abs().to_kind(Kind::Double);
        let sums = a.sum_dim_intlist(1, true, Kind::Double).clamp_min(1e-10);
        a / sums
    };
    let influence = |a: &Tensor, w: &Tensor| {
        let (mut current, mut total) = (w.unsqueeze(0).matmul(a), w.zeros_like().unsqueeze(0));
        while current.abs().sum(Kind::Double).double_value(&[]) > 0.0 {
            total += &current;
            current = current.matmul(a);
        }
        total.squeeze_dim(0)
    };
    let threshold = |scores: &Tensor, fraction: f64| {
        let (sorted, _) = scores.flatten(0, -1).sort(0, true);
        let cumulative = sorted.cumsum(0, Kind::Double) / sorted.sum(Kind::Double);
        let index = cumulative.ge(fraction).to_kind(Kind::Int64).argmax(0, false).int64_value(&[]);
        sorted.double_value(&[index])
    };
    let weights = Tensor::from_slice(&graph.nodes.iter().map(|v| if let Node::Logit { probability, .. } = v { *probability } else { 0.0 }).collect::<Vec<_>>());
    let node_influence = influence(&normalize(&graph.adjacency.to_dense().unwrap()), &weights);
    let always = n - graph.n_logits() - graph.tokens.len();
    let mut keep = node_influence.ge(threshold(&node_influence, 0.8));
    let _ = keep.narrow(0, always as i64, (n - always) as i64).fill_(1);
    let mask = keep.to_kind(Kind::Float);
    let kept = &graph.adjacency.to_dense().unwrap() * mask.unsqueeze(1) * mask.unsqueeze(0);
    let normalized = normalize(&kept);
    let scores = &normalized * (influence(&normalized, &weights) + &weights).unsqueeze(1);
    let mut edges = scores.ge(threshold(&scores, 0.98)).logical_and(&scores.gt(0.0));
    loop {
        let before = keep.copy();
        let (has_out, has_in) = (edges.any_dim(0, false), edges.any_dim(1, false));
        let rule = has_out.copy();
        let _ = rule.narrow(0, 0, graph.n_features() as i64).logical_and_(&has_in.narrow(0, 0, graph.n_features() as i64));
        let _ = rule.narrow(0, always as i64, (n - always) as i64).fill_(1);
        keep = keep.logical_and(&rule);
        edges = edges.logical_and(&keep.unsqueeze(1)).logical_and(&keep.unsqueeze(0));
        if keep.equal(&before) {
            break;
        }
    }
    assert_eq!(Vec::<bool>::try_from(&keep).unwrap(), pruned.node_mask, "kept nodes");
    assert!(edges.equal(&pruned.edge_mask().unwrap()), "kept edges: {} dense, {} by blocks", edges.sum(Kind::Int64).int64_value(&[]), pruned.n_edges());
}

/// A graph too large to read whole is drawn as its most influential nodes (every token and logit
/// kept) and the strongest edges between them, and the caption says so.
#[test]
fn the_graph_view_draws_the_most_influential_nodes_of_a_large_graph() {
    use interp::report::html::{MAX_DRAWN_EDGES, MAX_DRAWN_NODES};
    let model = text_model();
    let tcs = load_transcoder_set(format!("{TEXT_MODEL}/transcoders"), Device::Cpu).unwrap();
    let tok = model.tokenizer().unwrap();
    let text =
        "First Citizen: Before we proceed any further, hear me speak. All: Speak, speak. First Citizen: You are all resolved rather to die than to famish?";
    let graph = attribution_graph(&model, &tcs, &tok.encode(text, true).unwrap(), &GraphConfig::default()).unwrap();
    let pruned = graph.prune(1.0, 1.0).unwrap();
    assert!(pruned.n_nodes() > MAX_DRAWN_NODES, "{} kept", pruned.n_nodes());
    let view = interp::report::graph_view(&graph, &pruned, &|t| tok.decode(&[t]).unwrap_or_default(), &Default::default()).unwrap();
    assert_eq!(view.matches("<circle").count(), MAX_DRAWN_NODES);
    assert_eq!(view.matches("data-k=\"t\"").count(), graph.tokens.len(), "every token is drawn");
    assert_eq!(view.matches("data-k=\"l\"").count(), graph.n_logits(), "every logit is drawn");
    assert!(view.matches("<line").count() <= MAX_DRAWN_EDGES && view.contains(&format!("drawn: the {MAX_DRAWN_NODES} nodes of highest influence")));
}
