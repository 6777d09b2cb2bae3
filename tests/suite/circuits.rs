//! Circuit discovery against planted ground truth, closed-form identities and the default models.

use crate::common;

use crate::common::planted;
use circuits::{acdc, edge_attribution, roc_auc, Ablation, AcdcConfig, AttributionMethod, EdgeGraph, Error, Metric, TaskPrompts};
use interp::circuits;
use interp::interp_core::{tch, HookedTransformer};
use interp::report;
use tch::{Device, Kind, Tensor};

fn planted_model(kind: Kind) -> HookedTransformer {
    let dir = common::Scratch::new("planted");
    planted::write_planted(&dir);
    HookedTransformer::from_pretrained_dir(&dir, Device::Cpu, kind).expect("planted model loads")
}

fn truth(graph: &EdgeGraph, edges: &[&str]) -> Vec<bool> {
    let idx: Vec<usize> = edges.iter().map(|e| graph.find_edge(e).expect("edge exists")).collect();
    (0..graph.n_edges()).map(|i| idx.contains(&i)).collect()
}

fn kept_names(graph: &EdgeGraph, kept: &[bool]) -> Vec<String> {
    graph.edges.iter().zip(kept).filter(|(_, k)| **k).map(|(e, _)| e.to_string()).collect()
}

#[test]
fn planted_model_solves_induction() {
    let model = planted_model(Kind::Float);
    let (clean, _, answer) = planted::prompts(32, 1);
    let logits = model.forward(&clean).unwrap();
    let pred = logits.select(1, -1).argmax(-1, false);
    assert_eq!(pred, answer, "the hand-built induction circuit predicts every answer");
}

#[test]
fn acdc_recovers_the_planted_circuit() {
    let model = planted_model(Kind::Float);
    let graph = EdgeGraph::new(&model).unwrap();
    assert_eq!(graph.n_edges(), 110);
    let (clean, corrupted, _) = planted::prompts(32, 2);
    let metric = Metric::kl_to(&model.forward(&clean).unwrap(), None).unwrap();
    for (ablation, circuit) in [(Ablation::Zero, &planted::ZERO_ABLATION_CIRCUIT[..]), (Ablation::Resample, &planted::RESAMPLE_CIRCUIT[..])] {
        let acts = graph.activations(&model, &clean, &corrupted, ablation).unwrap();
        let cfg = AcdcConfig { tau: 0.01, ..AcdcConfig::default() };
        let found = acdc(&model, &graph, &acts, &metric, &cfg).unwrap();
        let truth = truth(&graph, circuit);
        assert_eq!(kept_names(&graph, &found.kept), kept_names(&graph, &truth), "{ablation:?}");
        let auc = roc_auc(&found.effect, &truth).unwrap();
        assert!(auc >= 0.98, "ACDC ROC AUC {auc} under {ablation:?}");
        // The circuit's loss, measured from the run's per-receiver sums of removed edges, is a
        // plain masked forward's.
        let plain = graph.masked_metric(&model, &acts, &metric, &graph.mask_of(&found.kept).unwrap().view([1, -1]), 0).unwrap().double_value(&[0]);
        assert!((plain - found.circuit_loss).abs() < 1e-6, "{plain} vs {}", found.circuit_loss);
        // One full forward per edge, and 16-way speculation, make the same decisions; the full
        // forwards cost more.
        let slow = acdc(&model, &graph, &acts, &metric, &AcdcConfig { restart: false, ..cfg.clone() }).unwrap();
        assert_eq!(slow.kept, found.kept);
        assert!(found.forward_equivalents < 0.6 * slow.forward_equivalents, "{} vs {}", found.forward_equivalents, slow.forward_equivalents);
        let wide = acdc(&model, &graph, &acts, &metric, &AcdcConfig { max_variants: 16, ..cfg.clone() }).unwrap();
        assert_eq!(wide.kept, found.kept);
        assert!(wide.n_forwards < found.n_forwards);
        // Stopped by its time limit after the first test (inside the first receiver) and resumed
        // from the checkpoint: the same circuit.
        let dir = common::Scratch::new(&format!("acdc-resume-{ablation:?}"));
        let checkpoint = Some(dir.join("acdc.json"));
        let cut = AcdcConfig { checkpoint: checkpoint.clone(), time_limit: Some(std::time::Duration::ZERO), ..cfg.clone() };
        let part = acdc(&model, &graph, &acts, &metric, &cut).unwrap();
        assert_eq!((part.finished(&graph), part.receivers_done, part.tested_in_receiver, part.n_tested), (false, 0, 1, 1));
        let resumed = acdc(&model, &graph, &acts, &metric, &AcdcConfig { checkpoint, ..cfg.clone() }).unwrap();
        assert!(resumed.finished(&graph));
        assert_eq!((&resumed.kept, &resumed.effect), (&found.kept, &found.effect));
        assert_eq!(resumed.n_tested, found.n_tested);
        // A checkpoint of another run is refused.
        let other = AcdcConfig { tau: 0.02, checkpoint: Some(dir.join("acdc.json")), ..cfg.clone() };
        match acdc(&model, &graph, &acts, &metric, &other) {
            Err(Error::Checkpoint { path, found, expected }) => assert!(path == dir.join("acdc.json") && found != expected),
            r => panic!("expected a checkpoint mismatch, got {:?}", r.map(|_| ())),
        }

        let ig = edge_attribution(&model, &graph, &acts, &metric, AttributionMethod::EapIg { steps: 5 }).unwrap();
        let scores: Vec<f64> = Vec::<f64>::try_from(&ig.abs().to_kind(Kind::Double)).unwrap();
        let auc = roc_auc(&scores, &truth).unwrap();
        assert!(auc >= 0.95, "EAP-IG ROC AUC {auc} under {ablation:?}");
    }
}

#[test]
fn edge_masks_interpolate_between_clean_and_corrupted() {
    // All edges kept gives the clean run, all removed (resample) the corrupted run, exactly: on
    // the planted model, a parallel-block model (GPT-NeoX), grouped-query attention (Mistral) and
    // mixtures of experts (an MLP node's router reads the same mixed input as its experts), and
    // the real SmolLM2-135M (a GGUF file: 30 layers, 9 heads over 3 key-value heads).
    for arch in ["planted", "gpt_neox", "mistral", "mixtral", "qwen2_moe", "smollm2"] {
        let model = match arch {
            "planted" => planted_model(Kind::Double),
            "smollm2" => {
                HookedTransformer::from_pretrained_dir(common::repo("models/real/SmolLM2-135M-Instruct.Q4_1.gguf"), Device::Cpu, Kind::Double).unwrap()
            }
            _ => HookedTransformer::from_pretrained_dir(common::fixture(arch), Device::Cpu, Kind::Double).unwrap(),
        };
        let graph = EdgeGraph::new(&model).unwrap();
        let v = model.cfg.d_vocab.min(20);
        let clean = Tensor::from_slice(&[1i64, 5, 7, 3, 9, 2, 4, 8, 1, 5, 7, 3]).view([2, 6]).remainder(v);
        let corrupted = Tensor::from_slice(&[2i64, 6, 1, 9, 3, 8, 5, 2, 6, 1, 9, 4]).view([2, 6]).remainder(v);
        let acts = graph.activations(&model, &clean, &corrupted, Ablation::Resample).unwrap();
        let e = graph.n_edges() as i64;
        let masks = Tensor::stack(&[Tensor::ones([e], (Kind::Float, Device::Cpu)), Tensor::zeros([e], (Kind::Float, Device::Cpu))], 0);
        let out = graph.run_masked(&model, &acts, &masks, 0).unwrap().view([2, 2, 6, -1]);
        let d_clean = common::max_abs_diff(&out.get(0), &model.forward(&clean).unwrap());
        let d_corrupt = common::max_abs_diff(&out.get(1), &model.forward(&corrupted).unwrap());
        assert!(d_clean < 1e-9 && d_corrupt < 1e-9, "{arch}: {d_clean} {d_corrupt}");
    }
}

#[test]
fn eap_is_the_gradient_of_the_edge_masks() {
    // score(e) = -dMetric/d(fraction of e removed) (positive: the edge supports the metric):
    // compare with a finite difference of the masked forward, in f64, for every edge. And
    // EAP-IG's points are MIB's, alpha = k / steps for k = 0..steps: one step is the gradient at
    // the ablated input, which is EAP with clean and corrupted swapped, negated.
    let model = planted_model(Kind::Double);
    let graph = EdgeGraph::new(&model).unwrap();
    let (clean, corrupted, answer) = planted::prompts(8, 3);
    let acts = graph.activations(&model, &clean, &corrupted, Ablation::Resample).unwrap();
    let metric = Metric::probability(answer);
    let eap = edge_attribution(&model, &graph, &acts, &metric, AttributionMethod::Eap).unwrap();
    let ig1 = edge_attribution(&model, &graph, &acts, &metric, AttributionMethod::EapIg { steps: 1 }).unwrap();
    let swapped = graph.activations(&model, &corrupted, &clean, Ablation::Resample).unwrap();
    let eap_swapped = edge_attribution(&model, &graph, &swapped, &metric, AttributionMethod::Eap).unwrap();
    assert!(common::max_abs_diff(&ig1, &(-eap_swapped)) < 1e-12);
    assert!(common::max_abs_diff(&ig1, &eap) > 1e-3, "the ablated and the clean point differ");
    let e = graph.n_edges() as i64;
    let eps = 1e-6;
    let masks = Tensor::ones([e + 1, e], (Kind::Double, Device::Cpu)) - Tensor::eye_m(e + 1, e, (Kind::Double, Device::Cpu)).roll([1], [0]) * eps;
    let m = graph.circuit_metrics(&model, &acts, &metric, &masks, 4096).unwrap();
    let fd: Vec<f64> = (0..e as usize).map(|i| (m[0] - m[i + 1]) / eps).collect();
    let diff = common::max_abs_diff(&Tensor::from_slice(&fd), &eap.to_kind(Kind::Double));
    let scale = eap.abs().max().double_value(&[]);
    assert!(scale > 1e-3 && diff < 1e-5 * scale.max(1.0), "finite difference off by {diff} (scale {scale})");
}

#[test]
fn edge_graph_bad_input() {
    // Norms on each sublayer's output (Gemma-2, OLMo 2): head outputs are not additive senders.
    for arch in ["gemma2", "olmo2"] {
        match EdgeGraph::new(&common::load(arch)) {
            Err(e @ Error::UnsupportedLayout(_)) => assert!(e.to_string().contains(&format!("`{arch}` normalises each attention and MLP output"))),
            other => panic!("{arch}: {:?}", other.map(|g| g.n_edges())),
        }
    }
    let model = planted_model(Kind::Float);
    let graph = EdgeGraph::new(&model).unwrap();
    let (clean, corrupted, _) = planted::prompts(4, 4);
    let short = corrupted.narrow(1, 0, 19);
    let err = graph.activations(&model, &clean, &short, Ablation::Resample).err().unwrap();
    assert!(err.to_string().contains("same shape"), "{err}");
    let acts = graph.activations(&model, &clean, &corrupted, Ablation::Resample).unwrap();
    let metric = Metric::kl_to(&model.forward(&clean).unwrap(), None).unwrap();
    let err = acdc(&model, &graph, &acts, &metric, &AcdcConfig { tau: -0.1, ..AcdcConfig::default() }).err().unwrap();
    assert!(err.to_string().contains("tau"), "{err}");
    assert!(graph.find_edge("L9H0 -> logits").is_err());
    // Settings by name: an ablation, a patching site.
    let err = "zebra".parse::<Ablation>().err().unwrap();
    assert!(matches!(&err, Error::Setting { name, value, .. } if name == "ablation" && value == "zebra"), "{err}");
    let err = "heads".parse::<circuits::PatchSite>().err().unwrap();
    assert!(matches!(&err, Error::Setting { name, expected, .. } if name == "patching site" && expected.contains("z_by_pos")), "{err}");
}

fn task_model() -> HookedTransformer {
    HookedTransformer::from_pretrained_dir(common::repo("models/tasks-bilinear"), Device::Cpu, Kind::Float).unwrap()
}

use interp::interp_core::tasks::{Task, TaskVocab};

#[test]
fn causal_tracing_identities() {
    use circuits::{causal_trace, restored_probability, summarize, Corruption, TraceConfig, TracePrompt};
    let model = task_model();
    let vocab = TaskVocab::new(31);
    let batch = Task::Facts.generate(&vocab, 6, 11).unwrap();
    let sigma = circuits::estimate_sigma(&model, &batch.clean).unwrap();
    assert!(sigma > 0.0);
    let noise = || Corruption::Noise { sigma, scale: 3.0, samples: 10, seed: 5 };
    let rows: Vec<Vec<i64>> = (0..6).map(|i| Vec::<i64>::try_from(&batch.clean.get(i)).unwrap()).collect();
    let answers = Vec::<i64>::try_from(&batch.answer).unwrap();
    let mut traces = Vec::new();
    for (i, row) in rows.iter().enumerate() {
        let prompt = TracePrompt::new(row.clone(), &row[1..4], answers[i], batch.labels[i].clone()).unwrap();
        let cfg = TraceConfig { corruption: noise(), window: 10, severed_mlp: true, max_rows: 64 };
        let trace = causal_trace(&model, &prompt, &cfg).unwrap();
        let (p, l) = (row.len(), model.cfg.n_layers);
        let all: Vec<(usize, usize)> = (0..p).flat_map(|t| (0..l).map(move |x| (t, x))).collect();
        let restored = restored_probability(&model, &prompt, &noise(), &all).unwrap();
        assert!((restored - trace.p_clean).abs() < 1e-5, "restoring everything: {restored} vs clean {}", trace.p_clean);
        let none = restored_probability(&model, &prompt, &noise(), &[]).unwrap();
        assert!((none - trace.p_corrupt).abs() < 1e-6, "restoring nothing: {none} vs corrupted {}", trace.p_corrupt);
        // The last layer's residual at the last position is all the unembedding reads.
        let last = trace.resid.double_value(&[p as i64 - 1, l as i64 - 1]);
        assert!((last - trace.p_clean).abs() < 1e-5);
        // Positions before the subject see no noise: restoring them changes nothing.
        assert!((trace.resid.double_value(&[0, 0]) - trace.p_corrupt).abs() < 1e-6);
        assert!(trace.total_effect() > 0.1, "the noise hides the subject");
        if i == 0 {
            let again = causal_trace(&model, &prompt, &TraceConfig { corruption: noise(), window: 10, severed_mlp: true, max_rows: 7 }).unwrap();
            assert!(common::max_abs_diff(&trace.mlp, &again.mlp) < 1e-6, "same seed, same trace (any batching)");
        }
        traces.push(trace);
    }
    let summary = summarize(&traces).unwrap();
    assert_eq!(summary.iter().map(|s| s.n_prompts).sum::<usize>(), 6);
    assert_eq!(summary[0].resid.size(), [6, 2]);
    // Bad input: a subject the prompt lacks, replacement of the wrong length.
    assert!(TracePrompt::new(rows[0].clone(), &[9999], 1, "x").unwrap_err().to_string().contains("not found"));
    let prompt = TracePrompt::new(rows[0].clone(), &rows[0][1..4], answers[0], "x").unwrap();
    let cfg = TraceConfig { corruption: Corruption::Replace { tokens: vec![1] }, window: 10, severed_mlp: false, max_rows: 64 };
    assert!(causal_trace(&model, &prompt, &cfg).is_err());
}

#[test]
fn activation_patching_matches_one_forward_per_index() {
    use circuits::{activation_patching, PatchSite};
    use interp::interp_core::{CacheSpec, Hooks, Intervention, Scope};
    let model = task_model();
    let vocab = TaskVocab::new(31);
    let batch = TaskPrompts::new(Task::Ioi, &vocab, 16, 3).unwrap();
    let metric = &batch.metric;
    for site in [PatchSite::ResidPre, PatchSite::Z, PatchSite::ZByPos, PatchSite::K, PatchSite::Pattern, PatchSite::MlpOut] {
        let fast = activation_patching(&model, &batch.clean, &batch.corrupted, metric, site, 4096).unwrap();
        let slow = activation_patching(&model, &batch.clean, &batch.corrupted, metric, site, 16).unwrap();
        assert!(common::max_abs_diff(&fast.values, &slow.values) < 1e-4, "{site:?}");
        assert!(fast.forwards < slow.forwards);
        assert_eq!(report::analysis::patching_table(&fast).unwrap().rows.len() as i64, fast.values.numel() as i64);
    }
    // Against the runtime's own patch intervention, one head at a time.
    let (_, clean_cache) = model.run_with_cache(&batch.clean, CacheSpec::names(["blocks.1.attn.hook_z"])).unwrap();
    let heads = activation_patching(&model, &batch.clean, &batch.corrupted, metric, PatchSite::Z, 4096).unwrap();
    for h in 0..4 {
        let hooks = Hooks::new().intervene("blocks.1.attn.hook_z", Intervention::Patch(&clean_cache, Scope::all().heads([h])));
        let logits = model.run_with_hooks(&batch.corrupted, hooks).unwrap();
        let expected = metric.value(&logits).unwrap();
        assert!((heads.values.double_value(&[1, h]) - expected).abs() < 1e-4);
    }
    // Residual positions where clean and corrupted tokens agree change nothing at layer 0.
    let resid = activation_patching(&model, &batch.clean, &batch.corrupted, metric, PatchSite::ResidPre, 4096).unwrap();
    let differs = batch.clean.ne_tensor(&batch.corrupted).any_dim(0, false); // the three name positions
    for pos in 0..batch.clean.size()[1] {
        let v = resid.normalized.double_value(&[0, pos]);
        if differs.int64_value(&[pos]) == 0 {
            assert!(v.abs() < 1e-5, "position {pos} is the same in both prompts but patching it moved the metric by {v}");
        }
    }
    // Nothing to explain: the clean prompts against themselves.
    assert!(matches!(activation_patching(&model, &batch.clean, &batch.clean, metric, PatchSite::ResidPre, 4096), Err(Error::NothingToExplain { .. })));
}

/// Patching each expert's output over (layer, expert) equals the runtime's own patch intervention
/// on that expert's slice of `mlp.hook_expert_out`; a dense layer's row is NaN and left out of
/// the table; a dense model has no expert site.
#[test]
fn activation_patching_sweeps_over_experts() {
    use circuits::{activation_patching, PatchSite};
    use interp::interp_core::{BlockSite, CacheSpec, HookPoint, Hooks, Intervention, Scope};
    let model = common::load("qwen2_moe");
    let clean = Tensor::from_slice(&[3i64, 17, 40, 99, 5, 61, 7, 8, 120, 33, 2, 44]).view([2, 6]);
    let corrupted = Tensor::from_slice(&[3i64, 17, 41, 98, 5, 61, 7, 9, 121, 33, 2, 44]).view([2, 6]);
    let metric = Metric::probability(Tensor::from_slice(&[11i64, 12])).at(Tensor::from_slice(&[5i64, 5]));
    let sweep = activation_patching(&model, &clean, &corrupted, &metric, PatchSite::Expert, 4096).unwrap();
    let one_by_one = activation_patching(&model, &clean, &corrupted, &metric, PatchSite::Expert, 1).unwrap();
    let n_experts = model.cfg.moe.as_ref().unwrap().n_experts;
    assert_eq!(sweep.values.size(), [3, n_experts]);
    // Layer 1 is dense.
    assert!(sweep.values.get(1).isnan().all().int64_value(&[]) == 1);
    assert_eq!(report::analysis::patching_table(&sweep).unwrap().rows.len() as i64, 2 * n_experts);
    let (_, clean_cache) = model.run_with_cache(&clean, CacheSpec::names(["blocks.2.mlp.hook_expert_out"])).unwrap();
    let mut moved = 0.0f64;
    for e in 0..n_experts {
        let hooks = Hooks::new().intervene(HookPoint::block(2, BlockSite::ExpertOut), Intervention::Patch(&clean_cache, Scope::all().heads([e])));
        let expected = metric.value(&model.run_with_hooks(&corrupted, hooks).unwrap()).unwrap();
        for r in [&sweep, &one_by_one] {
            assert!((r.values.double_value(&[2, e]) - expected).abs() < 1e-5, "expert {e}: {} vs {expected}", r.values.double_value(&[2, e]));
        }
        moved = moved.max((expected - sweep.corrupted).abs());
    }
    assert!(moved > 1e-4, "patching some expert changes the metric");
    let e = activation_patching(&common::load("llama"), &clean, &corrupted, &metric, PatchSite::Expert, 4096).err().unwrap();
    assert!(e.to_string().contains("no mixture-of-experts layers"), "{e}");
}

#[test]
fn task_model_circuits_are_faithful() {
    let model = task_model();
    let graph = EdgeGraph::new(&model).unwrap();
    let vocab = TaskVocab::new(31);
    // tau about 1.5% of the clean - corrupted gap of each metric (IOI logit difference 18.3,
    // greater-than probability difference 0.70).
    for (task, tau) in [(Task::Ioi, 0.3), (Task::GreaterThan, 0.01)] {
        let batch = TaskPrompts::new(task, &vocab, 32, 9).unwrap();
        let metric = &batch.metric;
        let acts = graph.activations(&model, &batch.clean, &batch.corrupted, Ablation::Resample).unwrap();
        let found = acdc(&model, &graph, &acts, metric, &AcdcConfig { tau, ..AcdcConfig::default() }).unwrap();
        let run = circuits::EdgeRun::new(&model, &graph, &batch, Ablation::Resample, circuits::MemoryBudget::DEFAULT).unwrap();
        let faithfulness = run.faithfulness(&graph.mask_of(&found.kept).unwrap().unsqueeze(0)).unwrap()[0];
        eprintln!("{}: {} of {} edges, faithfulness {faithfulness:.3}", task.name(), found.n_kept(), graph.n_edges());
        assert!(faithfulness > 0.85 && found.n_kept() < graph.n_edges() / 2, "{}: {} edges, faithfulness {faithfulness}", task.name(), found.n_kept());
    }
}

/// EAP and ACDC equal auto-circuit 1.0.1's on the IOI task model and the same 64 pairs
/// (tests/fixtures/autocircuit, written by scripts/check_autocircuit.sh): EAP scores edge by
/// edge, ACDC's circuit at three taus given the same edge order.
#[test]
fn eap_and_acdc_equal_auto_circuit() {
    use circuits::MetricName;
    let dir = common::repo("tests/fixtures/autocircuit");
    let fixture: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("ioi.json")).unwrap()).unwrap();
    let model = task_model();
    let prompts = TaskPrompts::from_jsonl(&dir.join("ioi.jsonl"), &model).unwrap();
    let clean = prompts.metric.value(&model.forward(&prompts.clean).unwrap()).unwrap();
    let theirs = fixture["clean_logit_diff"].as_f64().unwrap();
    assert!(
        (clean - theirs).abs() < 1e-4,
        "clean logit difference {clean}, fixture {theirs}: models/tasks-bilinear changed, rerun scripts/check_autocircuit.sh"
    );
    let graph = EdgeGraph::new(&model).unwrap();
    let names: Vec<String> = graph.edges.iter().map(|e| e.to_string()).collect();
    let acts = graph.activations(&model, &prompts.clean, &prompts.corrupted, Ablation::Resample).unwrap();
    let eap: Vec<f64> =
        Vec::try_from(&edge_attribution(&model, &graph, &acts, &prompts.metric, AttributionMethod::Eap).unwrap().to_kind(Kind::Double)).unwrap();
    let (mut worst, mut largest) = (0f64, 0f64);
    for (name, ours) in names.iter().zip(&eap) {
        // auto-circuit's score is the gradient of its loss, -mean(logit difference): MIB's sign, and ours.
        let theirs = fixture["eap"][name].as_f64().unwrap_or_else(|| panic!("{name} is not in the fixture"));
        worst = worst.max((ours - theirs).abs());
        largest = largest.max(theirs.abs());
    }
    eprintln!("EAP: {} edges, largest |score| {largest:.3}, max difference {worst:.2e}", names.len());
    assert!(largest > 0.1 && worst < 1e-4 * largest.max(1.0), "max difference {worst}");
    let kl = prompts.with_metric(MetricName::Kl, &model).unwrap();
    for run in fixture["acdc"].as_array().unwrap() {
        let tau = run["tau"].as_f64().unwrap();
        let found = acdc(&model, &graph, &acts, &kl.metric, &AcdcConfig { tau, ..AcdcConfig::default() }).unwrap();
        let kept: Vec<&str> = names.iter().zip(&found.kept).filter(|(_, k)| **k).map(|(n, _)| n.as_str()).collect();
        let theirs: Vec<&str> = run["kept"].as_array().unwrap().iter().map(|n| n.as_str().unwrap()).collect();
        eprintln!("ACDC tau {tau}: {} edges kept (auto-circuit {})", kept.len(), theirs.len());
        assert_eq!(kept, theirs, "tau {tau}");
    }
}

/// EAP and EAP-IG(5) scores, faithfulness curves, CPR and CMD equal what MIB's own code computes
/// (circuit track b759df3, EAP-IG 7af394a; tests/fixtures/mib, written by scripts/check_mib.sh)
/// on the IOI task model and the 64 pairs of the auto-circuit check: scores sign included, curves of circuits pruned
/// as MIB prunes them.
#[test]
fn eap_scores_and_cpr_cmd_equal_mib() {
    let dir = common::repo("tests/fixtures/mib");
    let fixture: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("ioi.json")).unwrap()).unwrap();
    let model = task_model();
    let prompts = TaskPrompts::from_jsonl(&common::repo("tests/fixtures/autocircuit/ioi.jsonl"), &model).unwrap();
    let clean = prompts.metric.value(&model.forward(&prompts.clean).unwrap()).unwrap();
    let theirs = fixture["clean_logit_diff"].as_f64().unwrap();
    assert!((clean - theirs).abs() < 1e-4, "clean logit difference {clean}, fixture {theirs}: models/tasks-bilinear changed, rerun scripts/check_mib.sh");
    let graph = EdgeGraph::new(&model).unwrap();
    let acts = graph.activations(&model, &prompts.clean, &prompts.corrupted, Ablation::Resample).unwrap();
    let run = circuits::EdgeRun::new(&model, &graph, &prompts, Ablation::Resample, circuits::MemoryBudget::DEFAULT).unwrap();
    for (name, method) in [("EAP", AttributionMethod::Eap), ("EAP-IG-inputs", AttributionMethod::EapIg { steps: 5 })] {
        let mib = &fixture["methods"][name];
        let scores = edge_attribution(&model, &graph, &acts, &prompts.metric, method).unwrap();
        let ours: Vec<f64> = Vec::try_from(&scores.to_kind(Kind::Double)).unwrap();
        assert_eq!(mib["scores"].as_object().unwrap().len(), graph.n_edges(), "{name}: MIB's graph has the same edges");
        let (mut worst, mut largest) = (0f64, 0f64);
        for (e, s) in graph.edges.iter().zip(&ours) {
            let edge = circuits::mib_edge_name(e.sender, e.receiver);
            let theirs = mib["scores"][&edge].as_f64().unwrap_or_else(|| panic!("{edge} is not in MIB's graph"));
            worst = worst.max((s - theirs).abs());
            largest = largest.max(theirs.abs());
        }
        assert!(largest > 1.0 && worst < 1e-5 * largest, "{name}: scores differ from MIB's by {worst:e} (largest {largest})");
        let found = report::analysis::MibScores::measure(&run, &graph, &scores).unwrap();
        let curve = |kind: &str| -> Vec<f64> { mib["curves"][kind]["faithfulness"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect() };
        for (ours, theirs, kind) in [(&found.signed, curve("signed"), "signed"), (&found.absolute, curve("absolute"), "absolute")] {
            let d = ours.iter().zip(&theirs).map(|(a, b)| (a - b).abs()).fold(0f64, f64::max);
            assert!(d < 1e-4, "{name} {kind}: faithfulness {ours:?}, MIB's {theirs:?}");
        }
        let (cpr, cmd) = (mib["cpr"].as_f64().unwrap(), mib["cmd"].as_f64().unwrap());
        assert!((found.cpr - cpr).abs() < 1e-4 && (found.cmd - cmd).abs() < 1e-4, "{name}: CPR {} CMD {}, MIB's {cpr} {cmd}", found.cpr, found.cmd);
        eprintln!(
            "{name}: scores within {worst:.1e} of MIB's (largest {largest:.2}); CPR {:.4} (MIB {cpr:.4}), CMD {:.4} (MIB {cmd:.4})",
            found.cpr, found.cmd
        );
    }
}

/// MIB's pruning before it evaluates a circuit: a node stays only with a kept edge out and a kept
/// edge in (the input always counts as fed), an edge only between nodes that stay, until nothing
/// changes. (Under resample ablation a dangling node computes its corrupted output anyway; under
/// zero or mean ablation it would not, which is why MIB prunes.)
#[test]
fn circuits_are_pruned_as_mib_prunes_them() {
    let graph = EdgeGraph::new(&task_model()).unwrap();
    let prune = |edges: &[&str]| -> Vec<String> {
        let mut keep = truth(&graph, edges);
        circuits::mib_prune(&graph, &mut keep);
        kept_names(&graph, &keep)
    };
    // A head read by the logits but fed by nothing goes; fed by the input, it stays.
    assert!(prune(&["L1H0 -> logits"]).is_empty());
    assert_eq!(prune(&["embed -> L1H0.q", "L1H0 -> logits"]), ["embed -> L1H0.q", "L1H0 -> logits"]);
    // A head fed but read by nothing goes, and then so does the edge that only fed it.
    assert!(prune(&["embed -> L0H0.q"]).is_empty());
    // A chain: input -> L0H1 (v) -> L1H1 (v) -> logits stays whole; without its middle edge the
    // first head goes (nothing reads it), then the edge from the input; L1H1 goes too (unfed).
    let chain = ["embed -> L0H1.v", "L0H1 -> L1H1.v", "L1H1 -> logits"];
    assert_eq!(prune(&chain), chain);
    assert!(prune(&[chain[0], chain[2]]).is_empty());
}

/// The opt-in approximate ACDC: edges whose EAP-IG score is below a tenth of tau go untested;
/// its circuit stays close to exact ACDC's, its reported loss is the loss of the circuit it
/// returns, and with a cut of 0 it is exact ACDC.
#[test]
fn approximate_acdc_prunes_by_attribution() {
    use circuits::AttributionPrune;
    let model = task_model();
    let graph = EdgeGraph::new(&model).unwrap();
    let batch = TaskPrompts::new(Task::Ioi, &TaskVocab::new(31), 32, 9).unwrap();
    let acts = graph.activations(&model, &batch.clean, &batch.corrupted, Ablation::Resample).unwrap();
    let cfg = AcdcConfig { tau: 0.3, ..AcdcConfig::default() };
    let exact = acdc(&model, &graph, &acts, &batch.metric, &cfg).unwrap();
    let ig = edge_attribution(&model, &graph, &acts, &batch.metric, AttributionMethod::EapIg { steps: 5 }).unwrap();
    let scores: Vec<f64> = Vec::try_from(&ig.to_kind(Kind::Double)).unwrap();
    let with = |fraction: f64| AcdcConfig { prune: Some(AttributionPrune { scores: scores.clone(), fraction }), ..cfg.clone() };
    assert_eq!(acdc(&model, &graph, &acts, &batch.metric, &with(0.0)).unwrap().kept, exact.kept);
    let approx = acdc(&model, &graph, &acts, &batch.metric, &with(0.1)).unwrap();
    let both = exact.kept.iter().zip(&approx.kept).filter(|(a, b)| **a && **b).count();
    let jaccard = both as f64 / (exact.n_kept() + approx.n_kept() - both) as f64;
    eprintln!(
        "exact {} edges in {} forwards; approximate {} ({} pruned) in {}; Jaccard {jaccard:.2}",
        exact.n_kept(),
        exact.n_forwards,
        approx.n_kept(),
        approx.n_pruned,
        approx.n_forwards
    );
    // (It need not save forwards: here it ran 83 against exact ACDC's 75, see the README.)
    assert!(approx.n_pruned > 10 && jaccard > 0.8, "{} pruned, Jaccard {jaccard}", approx.n_pruned);
    let mask = graph.mask_of(&approx.kept).unwrap().unsqueeze(0);
    let value = graph.masked_metric(&model, &acts, &batch.metric, &mask, 0).unwrap().double_value(&[0]);
    let loss = if batch.metric.lower_is_better() { value } else { -value };
    assert!((loss - approx.circuit_loss).abs() < 1e-4, "{loss} vs {}", approx.circuit_loss);
    // Stopped by its time limit at once and resumed from the checkpoint: the same circuit.
    let dir = common::Scratch::new("acdc-prune-resume");
    let checkpoint = Some(dir.join("acdc.json"));
    let cut = AcdcConfig { checkpoint: checkpoint.clone(), time_limit: Some(std::time::Duration::ZERO), ..with(0.1) };
    assert!(!acdc(&model, &graph, &acts, &batch.metric, &cut).unwrap().finished(&graph));
    let resumed = acdc(&model, &graph, &acts, &batch.metric, &AcdcConfig { checkpoint, ..with(0.1) }).unwrap();
    assert_eq!((&resumed.kept, resumed.n_pruned), (&approx.kept, approx.n_pruned));
    assert!((resumed.circuit_loss - approx.circuit_loss).abs() < 1e-5);
    let bad = AcdcConfig { prune: Some(AttributionPrune { scores: vec![0.0; 3], fraction: 0.1 }), ..cfg };
    assert!(acdc(&model, &graph, &acts, &batch.metric, &bad).unwrap_err().to_string().contains("one score per edge"));
}

#[test]
fn induction_heads_are_in_the_induction_circuit() {
    let model = HookedTransformer::from_pretrained_dir(common::repo("models/induction-attn-only"), Device::Cpu, Kind::Float).unwrap();
    let graph = EdgeGraph::new(&model).unwrap();
    let vocab = TaskVocab::new(31);
    let batch = Task::Induction { half: 12 }.generate(&vocab, 64, 4).unwrap();
    // Cut the last token: the prompt ends inside the repeat, and that token is the answer.
    let len = batch.clean.size()[1];
    let (clean, corrupted) = (batch.clean.narrow(1, 0, len - 1), batch.corrupted.narrow(1, 0, len - 1));
    let metric = Metric::kl_to(&model.forward(&clean).unwrap(), None).unwrap();
    let acts = graph.activations(&model, &clean, &corrupted, Ablation::Resample).unwrap();
    let found = acdc(&model, &graph, &acts, &metric, &AcdcConfig { tau: 0.01, ..AcdcConfig::default() }).unwrap();
    let nodes = circuits::circuit_nodes(&graph, &found.kept);
    eprintln!("induction circuit: {} edges, nodes {nodes:?}", found.n_kept());
    for head in ["L1H0", "L1H2"] {
        assert!(nodes.iter().any(|n| n == head), "{head} (found by pattern scores) is in the circuit: {nodes:?}");
    }
}

#[test]
fn masked_forward_at_gpt2_small_shape() {
    // 12 layers x 12 heads, d_model 768, vocab 50257: 32,491 edges. All edges kept gives the clean
    // logits and none the corrupted ones (f32), in one masked forward of both edge sets.
    use interp::interp_core::{BlockStyle, MlpKind, ModelSpec, NormPlacement};
    let spec = ModelSpec {
        style: BlockStyle::Gpt2,
        n_layers: 12,
        d_model: 768,
        n_heads: 12,
        d_mlp: 3072,
        d_vocab: 50257,
        n_ctx: 1024,
        mlp: Some(MlpKind::Gelu),
        tie_embeddings: true,
        bos_token_id: Some(50256),
        experts: None,
        norm: NormPlacement::Pre,
    };
    let model = HookedTransformer::init_random(&spec, 0, Kind::Float, Device::Cpu).unwrap();
    let graph = EdgeGraph::new(&model).unwrap();
    assert_eq!(graph.n_edges(), 32491);
    let clean = Tensor::from_slice(&[50256i64, 464, 3290, 290, 1757, 1816, 284, 262, 50256, 818, 257, 1110, 11, 4502, 290, 5335]).view([2, 8]);
    let corrupted = Tensor::from_slice(&[50256i64, 464, 7900, 290, 1757, 1816, 284, 262, 50256, 818, 257, 1110, 11, 4502, 290, 1757]).view([2, 8]);
    let (c, x, _, _) = all_or_no_edges(&model, &graph, &clean, &corrupted);
    assert!(c < 1e-4 && x < 1e-4, "all edges {c:e} from the clean logits, none {x:e} from the corrupted ones");
}

/// Masked forwards (resample ablation) keeping every edge and none: their max differences from
/// the clean and from the corrupted logits, with the activations and the two masks.
fn all_or_no_edges(model: &HookedTransformer, graph: &EdgeGraph, clean: &Tensor, corrupted: &Tensor) -> (f64, f64, circuits::EdgeActivations, Tensor) {
    let acts = graph.activations(model, clean, corrupted, Ablation::Resample).unwrap();
    let e = graph.n_edges() as i64;
    let masks = Tensor::stack(&[Tensor::ones([e], (Kind::Float, Device::Cpu)), Tensor::zeros([e], (Kind::Float, Device::Cpu))], 0);
    let logits = graph.run_masked(model, &acts, &masks, 0).unwrap();
    let b = clean.size()[0];
    let c = common::max_abs_diff(&logits.narrow(0, 0, b), &model.forward(clean).unwrap());
    let x = common::max_abs_diff(&logits.narrow(0, b, b), &model.forward(corrupted).unwrap());
    (c, x, acts, masks)
}

/// The edge graph on TransformerLens-native models (no norm, LNPre with shortformer positions,
/// rotary with grouped-query attention, attention-only): all edges kept gives the clean logits,
/// none the corrupted ones, and the masked metric equals the metric of those logits.
#[test]
fn masked_forward_on_transformer_lens_models() {
    for case in ["ln-relu", "lnpre-solu_ln-shortformer", "rms-gated-rotary-gqa", "none-gelu_new", "attn_only-rmspre-tied", "ln-gelu-bidirectional"] {
        let model = HookedTransformer::from_pretrained_dir(common::fixture("transformer_lens").join(case), Device::Cpu, Kind::Float).unwrap();
        let graph = EdgeGraph::new(&model).unwrap();
        let clean = Tensor::from_slice(&[3i64, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8]).view([2, 6]);
        let corrupted = Tensor::from_slice(&[3i64, 1, 7, 1, 5, 9, 2, 6, 0, 3, 5, 8]).view([2, 6]);
        let (c, x, acts, masks) = all_or_no_edges(&model, &graph, &clean, &corrupted);
        assert!(c < 1e-4 && x < 1e-4, "{case}: all edges {c:e} from the clean logits, none {x:e} from the corrupted ones");
        let metric = Metric::logit_diff(Tensor::from_slice(&[2i64, 7]), Tensor::from_slice(&[0i64, 1]));
        let per_variant = graph.masked_metric(&model, &acts, &metric, &masks, 0).unwrap();
        let want = [metric.value(&model.forward(&clean).unwrap()).unwrap(), metric.value(&model.forward(&corrupted).unwrap()).unwrap()];
        let got: Vec<f64> = Vec::try_from(per_variant.to_kind(Kind::Double)).unwrap();
        assert!((got[0] - want[0]).abs() < 1e-4 && (got[1] - want[1]).abs() < 1e-4, "{case}: masked metric {got:?}, want {want:?}");
    }
}

/// A pickle (protocol 2) of a list of (from, to) string pairs, as InterpBench's edges.pkl.
fn edges_pickle(pairs: &[(&str, &str)]) -> Vec<u8> {
    let mut out = b"\x80\x02](".to_vec();
    for (a, b) in pairs {
        for s in [a, b] {
            out.push(b'X');
            out.extend_from_slice(&(s.len() as u32).to_le_bytes());
            out.extend_from_slice(s.as_bytes());
        }
        out.push(0x86); // TUPLE2
    }
    out.extend_from_slice(b"e.");
    out
}

/// An InterpBench case folder (tests/fixtures/interpbench, scripts/make_tl_fixtures.sh:
/// the planted induction model converted by TransformerLens, its config pickled as a dict, the
/// circuit at ACDC granularity) loads as the same function, its edges map onto the graph with q/k/v
/// promoted to whole heads, and EAP-IG and ACDC find it.
#[test]
fn interpbench_case_loads_and_its_circuit_is_found() {
    use circuits::CaseTruth;
    use report::analysis::{benchmark_case, CircuitDiscoveryConfig};
    let dir = common::fixture("interpbench").join("planted-induction");
    let model = HookedTransformer::from_pretrained_dir(&dir, Device::Cpu, Kind::Float).unwrap();
    let (clean, _, _) = planted::prompts(8, 3);
    let d = common::max_abs_diff(&model.forward(&clean).unwrap(), &planted_model(Kind::Float).forward(&clean).unwrap());
    assert!(d < 1e-4, "the TransformerLens conversion differs from the planted model by {d}");
    let graph = EdgeGraph::new(&model).unwrap();
    let truth = CaseTruth::read(&dir, &model, &graph).unwrap();
    // embed -> L0H0, embed -> L1H0 and L0H0 -> L1H0 each into q, k and v; L1H0 -> logits.
    let mut want = vec!["L1H0 -> logits".to_string()];
    for (s, r) in [("embed", "L0H0"), ("embed", "L1H0"), ("L0H0", "L1H0")] {
        want.extend("qkv".chars().map(|x| format!("{s} -> {r}.{x}")));
    }
    want.sort();
    let mut got = kept_names(&graph, &truth.edges);
    got.sort();
    assert_eq!(got, want);
    assert_eq!(circuits::component_truth(&graph, &truth.edges).iter().filter(|t| **t).count(), 4);
    assert_eq!(truth.nodes.iter().filter(|t| **t).count(), 2, "L0H0 and L1H0");
    let prompts = TaskPrompts::from_jsonl(&dir.join("prompts.jsonl"), &model).unwrap();
    let cfg = CircuitDiscoveryConfig { ablation: Ablation::Zero, tau_sweep: false, ..CircuitDiscoveryConfig::default() };
    let result = benchmark_case(&dir, "planted-induction", &model, &prompts, &cfg).unwrap();
    for s in &result.scores {
        eprintln!("{}: edge AUROC {:.3}, node AUROC {:.3}, CPR {:.3}, CMD {:.3}", s.method, s.edge_auroc, s.node_auroc, s.cpr, s.cmd);
        assert!(s.cpr.is_finite() && s.cmd.is_finite());
        if s.method != "EAP" {
            assert!(s.edge_auroc >= 0.98 && s.node_auroc >= 0.98, "{}: edge AUROC {}, node AUROC {}", s.method, s.edge_auroc, s.node_auroc);
        }
    }
    // Edge lists naming what the model lacks, or edges the graph cannot have: one line each.
    let bad = common::Scratch::new("interpbench-bad");
    for (pairs, expected) in [
        (vec![("hook_embed", "blocks.5.hook_mlp_in")], "`blocks.5.hook_mlp_in` is not a node this model has (2 layers, 4 heads)"),
        (vec![("hook_embed", "blocks.0.hook_q_input[4]")], "`blocks.0.hook_q_input[4]` is not a node"),
        (vec![("blocks.0.attn.hook_z[0]", "blocks.1.hook_mlp_in")], "`blocks.0.attn.hook_z[0]` is not a node"),
        (vec![("blocks.1.hook_mlp_out", "blocks.0.hook_q_input[1]")], "MLP1 -> L0H1.q is not an edge of the model's graph"),
        (vec![("hook_embed", "blocks.0.hook_q_input[x")], "malformed index"),
    ] {
        std::fs::write(bad.join("edges.pkl"), edges_pickle(&pairs)).unwrap();
        let e = CaseTruth::read(&bad, &model, &graph).unwrap_err().to_string();
        assert!(e.contains(expected) && e.contains("edges.pkl") && e.lines().count() == 1, "{e}");
    }
    std::fs::write(bad.join("edges.pkl"), b"\x80\x02X\x03\x00\x00\x00abc.").unwrap();
    let e = CaseTruth::read(&bad, &model, &graph).unwrap_err().to_string();
    assert!(e.contains("not a list of (from, to) pairs"), "{e}");
}

/// tracr-compiled programs (tests/fixtures/tracr, scripts/make_tracr_fixtures.sh: ACDC's reverse
/// and fraction-of-previous-x, sort and histogram) as TransformerLens-native models: their logits
/// equal tracr's own forward, and circuit discovery is scored against the circuits tracr built
/// (every edge whose removal alone matters, per ablation; in our edge names). ACDC (KL, as the
/// ACDC paper runs it on reverse) ranks the zero-ablation circuit with ROC AUC >= 0.98 on each.
#[test]
fn tracr_programs_have_their_known_circuits_found() {
    use report::analysis::{circuit_discovery, CircuitDiscoveryConfig};
    for case in ["reverse", "frac_prevs", "sort", "hist"] {
        let dir = common::fixture("tracr").join(case);
        let model = HookedTransformer::from_pretrained_dir(&dir, Device::Cpu, Kind::Float).unwrap();
        let prompts = TaskPrompts::from_jsonl(&dir.join("prompts.jsonl"), &model).unwrap();
        // Each prompt alone (lengths differ) against tracr's own logits.
        let expected: Vec<Vec<Vec<f64>>> = serde_json::from_str(&std::fs::read_to_string(dir.join("expected_logits.json")).unwrap()).unwrap();
        for (i, want) in expected.iter().enumerate() {
            let len = prompts.lengths[i];
            let logits = model.forward(&prompts.clean.narrow(0, i as i64, 1).narrow(1, 0, len)).unwrap().squeeze_dim(0);
            let want = Tensor::from_slice2(want).to_kind(Kind::Float);
            let d = common::max_abs_diff(&logits, &want);
            assert!(d < 1e-4, "{case} prompt {i}: logits differ from tracr's by {d}");
        }
        let truth_json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("truth.json")).unwrap()).unwrap();
        let graph = EdgeGraph::new(&model).unwrap();
        let mut report = Vec::new();
        for (ablation, key) in [(Ablation::Zero, "zero"), (Ablation::Resample, "resample")] {
            let edges: Vec<&str> = truth_json[key].as_array().unwrap().iter().map(|e| e.as_str().unwrap()).collect();
            let truth = truth(&graph, &edges);
            let cfg = CircuitDiscoveryConfig { ablation, kl: true, tau_sweep: false, ..CircuitDiscoveryConfig::default() };
            let found = circuit_discovery(&model, &prompts, case, &cfg).unwrap();
            let mut aucs = Vec::new();
            for m in &found.methods {
                let abs: Vec<f64> = m.scores.iter().map(|s| s.abs()).collect();
                aucs.push((m.method.name(), roc_auc(&abs, &truth).unwrap(), m.mib.cpr, m.mib.cmd));
            }
            let a = found.acdc.as_ref().unwrap();
            let ranking: Vec<f64> = a.result.ranking().iter().map(|x| f64::from(*x)).collect();
            let acdc_auc = roc_auc(&ranking, &truth).unwrap();
            aucs.push(("ACDC".into(), acdc_auc, a.mib.cpr, a.mib.cmd));
            if ablation == Ablation::Zero {
                assert!(acdc_auc >= 0.98, "{case}: ACDC ROC AUC {acdc_auc} under zero ablation");
            }
            for (_, auc, cpr, cmd) in &aucs {
                assert!(auc.is_finite() && cpr.is_finite() && cmd.is_finite());
            }
            report.push(format!(
                "{key}: {}",
                aucs.iter().map(|(m, auc, cpr, cmd)| format!("{m} AUC {auc:.3} CPR {cpr:.3} CMD {cmd:.3}")).collect::<Vec<_>>().join(", ")
            ));
        }
        eprintln!("tracr {case} ({} edges): {}", graph.n_edges(), report.join("; "));
    }
}

/// Routing analysis on a small random mixture of experts in the task vocabulary: shares sum to
/// one per row, the load is the usage over all tasks, an ablation cell equals its own forward,
/// and a dense model is refused.
#[test]
fn routing_analysis_of_a_mixture_of_experts() {
    use interp::interp_core::tasks::{Task, TaskVocab};
    use interp::interp_core::{BlockStyle, Experts, Hooks, Intervention, MlpKind, ModelSpec, NormPlacement, Scope};
    use report::analysis::{routing_analysis, RoutingConfig};
    let vocab = TaskVocab::new(31);
    let spec = ModelSpec {
        style: BlockStyle::Llama,
        n_layers: 2,
        d_model: 32,
        n_heads: 4,
        d_mlp: 16,
        d_vocab: vocab.len() as i64,
        n_ctx: 32,
        mlp: Some(MlpKind::SwiGlu),
        tie_embeddings: false,
        bos_token_id: Some(0),
        experts: Some(Experts { n_experts: 4, top_k: 2 }),
        norm: NormPlacement::Pre,
    };
    let model = HookedTransformer::init_random(&spec, 5, Kind::Float, Device::Cpu).unwrap().with_tokenizer(vocab.tokenizer().unwrap());
    let cfg = RoutingConfig { n: 16, ..RoutingConfig::default() };
    let r = routing_analysis(&model, &vocab, &cfg).unwrap();
    assert_eq!((r.usage.size(), r.ablation.size(), r.load.size()), (vec![10, 4], vec![10, 4], vec![2, 4]));
    let ones = |t: &Tensor| common::max_abs_diff(&t.sum_dim_intlist(1, false, Kind::Double), &Tensor::ones([t.size()[0]], (Kind::Double, Device::Cpu)));
    assert!(ones(&r.usage) < 1e-9 && ones(&r.load) < 1e-9);
    // Row 2 is IOI (the second task) at layer 0; expert 3 ablated by hand.
    let batch = Task::Ioi.generate(&vocab, 16, cfg.seed).unwrap();
    let base = Task::Ioi.score(&vocab, &batch, &model.forward(&batch.clean).unwrap()).unwrap();
    let hooks = Hooks::new().intervene("blocks.0.mlp.hook_expert_out", Intervention::Zero(Scope::all().heads([3])));
    let ablated = Task::Ioi.score(&vocab, &batch, &model.run_with_hooks(&batch.clean, hooks).unwrap()).unwrap();
    assert_eq!((r.tasks[1].as_str(), r.scores[1]), ("ioi", base));
    assert!((r.ablation.double_value(&[2, 3]) - (ablated - base)).abs() < 1e-9);
    assert!(!r.tokens.rows.is_empty());
    let dir = common::Scratch::new("routing");
    let mut out = report::Output::new(&dir, "routing").unwrap();
    r.write(&mut out).unwrap();
    assert!(dir.join("routing_usage.png").exists() && dir.join("routing.csv").exists() && dir.join("routing_tokens.csv").exists());
    let dense = HookedTransformer::init_random(&ModelSpec { experts: None, ..spec }, 5, Kind::Float, Device::Cpu).unwrap();
    let e = routing_analysis(&dense, &vocab, &cfg).err().unwrap().to_string();
    assert!(e.contains("not a mixture of experts"), "{e}");
}

#[test]
fn causal_tracing_runs_from_the_corrupted_run() {
    // A restored run starts from the corrupted run's residual, keys and values at its first
    // restored layer and position. On SmolLM2-135M (rotary, grouped-query attention; a shipped
    // fact): the answer's probability with clean residuals restored at some cells equals a full
    // forward with the noise and the restores as hooks; restoring every cell gives the clean run,
    // none the corrupted one.
    use circuits::{restored_probability, trace_prompts_from_jsonl, Corruption};
    use interp::interp_core::{CacheSpec, Hooks};
    let model = common::smollm2();
    let dir = common::Scratch::new("trace-smollm2");
    let prompt = trace_prompts_from_jsonl(&common::shipped_prompts(&dir, "smollm2-135m/facts.jsonl", 1), &model).unwrap().remove(0);
    let (p, l) = (prompt.tokens.len(), model.cfg.n_layers);
    tch::manual_seed(1);
    let noise = Tensor::randn([3, prompt.subject.len() as i64, model.cfg.d_model], (Kind::Float, Device::Cpu)) * 0.1;
    let tokens = Tensor::from_slice(&prompt.tokens).view([1, -1]);
    let (clean_logits, clean) = model.run_with_cache(&tokens, CacheSpec::names(["blocks.*.hook_resid_post"])).unwrap();
    let prob = |logits: &Tensor| logits.select(1, -1).softmax(-1, Kind::Double).select(1, prompt.answer).mean(Kind::Double).double_value(&[]);
    let direct = |cells: &[(usize, usize)]| -> f64 {
        let mut hooks = Hooks::new().add("hook_embed", |x, _| {
            let y = x.copy();
            let _ = y.narrow(1, prompt.subject.start as i64, prompt.subject.len() as i64).f_add_(&noise)?;
            Ok(Some(y))
        });
        for &(t, layer) in cells {
            let point = format!("blocks.{layer}.hook_resid_post");
            let value = clean.get(&point).unwrap().select(1, t as i64).shallow_clone();
            hooks = hooks.add(point.as_str(), move |x, _| {
                let y = x.copy();
                y.select(1, t as i64).copy_(&value.expand([x.size()[0], -1], false));
                Ok(Some(y))
            });
        }
        prob(&model.runner(&tokens.repeat([3, 1])).hooks(hooks).run().unwrap().output)
    };
    let explicit = || Corruption::Explicit { noise: noise.shallow_clone() };
    let s = prompt.subject.clone();
    for cells in [vec![(s.start, 0)], vec![(s.end - 1, 5)], vec![(p - 1, l - 1)], vec![(s.end - 1, 12), (p - 2, 3)], vec![(0, 4)]] {
        let ours = restored_probability(&model, &prompt, &explicit(), &cells).unwrap();
        let want = direct(&cells);
        assert!((ours - want).abs() < 1e-5, "{cells:?}: {ours} vs {want}");
    }
    let all: Vec<(usize, usize)> = (0..p).flat_map(|t| (0..l).map(move |x| (t, x))).collect();
    assert!((restored_probability(&model, &prompt, &explicit(), &all).unwrap() - prob(&clean_logits)).abs() < 1e-5);
    let (none, corrupted) = (restored_probability(&model, &prompt, &explicit(), &[]).unwrap(), direct(&[]));
    assert!((none - corrupted).abs() < 1e-5 && (prob(&clean_logits) - corrupted).abs() > 0.01, "{none} {corrupted}");
}

#[test]
fn smollm2_does_ioi_and_its_direct_logit_attributions_add_up() {
    // The shipped IOI prompts on the real SmolLM2-135M: every one of the first 16 has a positive
    // logit difference; heads, MLPs, embeddings and biases, each through the final norm's frozen
    // scale and gain, add up to the logit difference of the logits; each head's share splits
    // into its effects on the answer's and the wrong token's logits; some late head is a name
    // mover (positive direct effect, attending to the indirect object).
    use interp::circuits::head_scores;
    use report::analysis::behaviour;
    let model = common::smollm2();
    let dir = common::Scratch::new("ioi-smollm2");
    let prompts = TaskPrompts::from_jsonl(&common::shipped_prompts(&dir, "smollm2-135m/ioi.jsonl", 16), &model).unwrap();
    let seen = behaviour(&model, &prompts, "ioi", 8).unwrap();
    let all = seen.rows.last().unwrap();
    assert!(all.1 == 16 && all.3 == 1.0 && all.2 > 3.0 && all.4.abs() < 1.0, "{:?}", seen.rows);
    let heads = head_scores(&model, &prompts, "ioi", false, None).unwrap();
    let sum = heads.dla.iter().flatten().sum::<f64>() + heads.dla_mlp.iter().sum::<f64>() + heads.dla_rest;
    assert!((sum - heads.logit_diff).abs() < 1e-3 * heads.logit_diff.abs(), "{sum} vs {}", heads.logit_diff);
    assert!((heads.logit_diff - all.2).abs() < 1e-4);
    // Split into the answer's and the wrong token's logits, each against the mean logit.
    for (l, row) in heads.dla.iter().enumerate() {
        for (h, d) in row.iter().enumerate() {
            assert!((heads.dla_answer[l][h] - heads.dla_wrong[l][h] - d).abs() < 1e-9, "L{l}H{h}");
        }
    }
    assert!(heads.dla_answer.iter().flatten().any(|a| a.abs() > 0.1) && heads.dla_wrong.iter().flatten().any(|a| a.abs() > 0.1));
    let movers = heads.name_movers();
    assert!(movers.iter().any(|(l, _)| *l >= 15), "{movers:?}");
    for grid in [&heads.attn_io, &heads.attn_s1, &heads.attn_s2, &heads.previous] {
        assert!(grid.iter().flatten().all(|a| (0.0..=1.0 + 1e-6).contains(a)));
    }
}

#[test]
fn eap_on_smollm2_is_the_gradient_of_its_edge_masks() {
    // On the real SmolLM2-135M in f64 (two shipped IOI pairs of different lengths): each EAP
    // score equals a finite difference of the masked forward in the edge's weight, for the three
    // edges with the largest |score| and three others.
    let model = HookedTransformer::from_pretrained_dir(common::repo("models/real/SmolLM2-135M-Instruct.Q4_1.gguf"), Device::Cpu, Kind::Double).unwrap();
    let dir = common::Scratch::new("eap-fd-smollm2");
    let prompts = TaskPrompts::from_jsonl(&common::shipped_prompts(&dir, "smollm2-135m/ioi.jsonl", 2), &model).unwrap();
    let graph = EdgeGraph::new(&model).unwrap();
    let acts = graph.prompt_activations(&model, &prompts, Ablation::Resample).unwrap();
    let eap = Vec::<f64>::try_from(&edge_attribution(&model, &graph, &acts, &prompts.metric, AttributionMethod::Eap).unwrap()).unwrap();
    let n = graph.n_edges();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|a, b| eap[*b].abs().total_cmp(&eap[*a].abs()));
    let edges: Vec<usize> = order[..3].iter().copied().chain([n / 7, n / 2, n - 2]).collect();
    let eps = 1e-6;
    let masks = Tensor::ones([edges.len() as i64 + 1, n as i64], (Kind::Double, Device::Cpu));
    for (i, &e) in edges.iter().enumerate() {
        let _ = masks.get(i as i64 + 1).get(e as i64).fill_(1.0 - eps);
    }
    let m = graph.circuit_metrics(&model, &acts, &prompts.metric, &masks, 4096).unwrap();
    for (i, &e) in edges.iter().enumerate() {
        let fd = (m[0] - m[i + 1]) / eps;
        assert!((fd - eap[e]).abs() < 1e-4 * eap[order[0]].abs(), "edge {}: finite difference {fd}, EAP {}", graph.edges[e], eap[e]);
    }
    assert!(eap[order[0]].abs() > 0.1);
}
