//! Circuit-discovery benchmark on the default task model (`cargo bench --bench circuits`):
//! ACDC on the IOI edge graph against the one-edge-per-forward loop that reaches the same circuit,
//! EAP and EAP-IG against a plain forward, a causal-tracing grid against one forward per cell, and
//! an activation-patching sweep against one forward per index.

mod common;

use std::path::{Path, PathBuf};
use std::time::Instant;

use common::min_secs;
use interp::circuits::{
    acdc, activation_patching, causal_trace, edge_attribution, estimate_sigma, Ablation, AcdcConfig, AttributionMethod, Corruption, EdgeGraph,
    PatchSite, TaskPrompts, TraceConfig, TracePrompt,
};
use interp::interp_core::tasks::{Task, TaskVocab};
use interp::interp_core::{tch, BlockStyle, HookedTransformer, MlpKind, ModelSpec, Rng};
use tch::{Device, Kind};

fn main() {
    tch::set_num_threads(2);
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--write-gpt2-small") {
        let dir = PathBuf::from(args.get(i + 1).expect("--write-gpt2-small DIR"));
        std::fs::create_dir_all(&dir).unwrap();
        println!("wrote {}", write_gpt2_small(&dir).display());
        return;
    }
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/models/tasks-bilinear");
    let model = HookedTransformer::from_pretrained_dir(dir, Device::Cpu, Kind::Float).expect("task model");
    let vocab = TaskVocab::of_model(&model).expect("the task model speaks the task vocabulary");
    let ioi = TaskPrompts::new(Task::Ioi, &vocab, 64, 1).unwrap();
    let graph = EdgeGraph::new(&model).unwrap();
    let acts = graph.activations(&model, &ioi.clean, &ioi.corrupted, Ablation::Resample).unwrap();
    let forward = min_secs(5, || {
        let _ = model.forward(&ioi.clean).unwrap();
    });
    println!("task model, IOI, 64 prompts x {} tokens, {} edges; one plain forward {:.2} ms", ioi.clean.size()[1], graph.n_edges(), forward * 1e3);

    let cfg = AcdcConfig { tau: 0.3, max_variants: 4, ..AcdcConfig::default() };
    let naive_cfg = AcdcConfig { max_variants: 1, restart: false, ..cfg.clone() };
    let time = |c: &AcdcConfig| {
        let t = Instant::now();
        let r = acdc(&model, &graph, &acts, &ioi.metric, c).unwrap();
        (t.elapsed().as_secs_f64(), r)
    };
    let (fast_s, fast) = (0..3).map(|_| time(&cfg)).min_by(|a, b| a.0.total_cmp(&b.0)).unwrap();
    let (naive_s, naive) = (0..3).map(|_| time(&naive_cfg)).min_by(|a, b| a.0.total_cmp(&b.0)).unwrap();
    let (batch_s, batch) = (0..3).map(|_| time(&AcdcConfig { restart: false, ..cfg.clone() })).min_by(|a, b| a.0.total_cmp(&b.0)).unwrap();
    println!("ACDC tau {} ({} of {} edges kept; same circuit as the naive loop: {}):", cfg.tau, fast.n_kept(), graph.n_edges(), fast.kept == naive.kept && batch.kept == naive.kept);
    println!("  one edge per full forward  {:>8.1} ms  {:>4} forwards", naive_s * 1e3, naive.n_forwards);
    println!("  batched removals           {:>8.1} ms  {:>4} forwards ({} edge sets)  {:.1}x", batch_s * 1e3, batch.n_forwards, batch.n_variants, naive_s / batch_s);
    println!("  batched + restart at layer {:>8.1} ms  {:>4} forwards ({} edge sets)  {:.1}x", fast_s * 1e3, fast.n_forwards, fast.n_variants, naive_s / fast_s);

    for method in [AttributionMethod::Eap, AttributionMethod::EapIg { steps: 5 }] {
        let s = min_secs(3, || {
            let _ = edge_attribution(&model, &graph, &acts, &ioi.metric, method).unwrap();
        });
        println!("{:<10} all {} edge scores {:>7.1} ms = {:.1} plain forwards", method.name(), graph.n_edges(), s * 1e3, s / forward);
    }

    let facts = TaskPrompts::new(Task::Facts, &vocab, 1, 2).unwrap();
    let tokens = Vec::<i64>::try_from(&facts.clean.get(0)).unwrap();
    let answer = facts.answers[0][0];
    let prompt = TracePrompt::new(tokens.clone(), &tokens[1..4], answer, "fact").unwrap();
    let sigma = estimate_sigma(&model, &facts.clean).unwrap();
    let trace_cfg = |max_rows| TraceConfig { corruption: Corruption::Noise { sigma, scale: 3.0, samples: 10, seed: 0 }, window: 10, severed_mlp: true, max_rows };
    let batched = trace_cfg(4096);
    let per_cell = trace_cfg(10);
    let grid = causal_trace(&model, &prompt, &batched).unwrap();
    let one = causal_trace(&model, &prompt, &per_cell).unwrap();
    let tb = min_secs(3, || {
        let _ = causal_trace(&model, &prompt, &batched).unwrap();
    });
    let tc = min_secs(3, || {
        let _ = causal_trace(&model, &prompt, &per_cell).unwrap();
    });
    println!(
        "causal trace, {} tokens x {} layers x 4 grids x 10 samples: batched {:.1} ms ({} forwards), one forward per cell {:.1} ms ({} forwards): {:.1}x",
        tokens.len(),
        model.cfg.n_layers,
        tb * 1e3,
        grid.forwards,
        tc * 1e3,
        one.forwards,
        tc / tb
    );

    for site in [PatchSite::ResidPre, PatchSite::HeadOutByPos] {
        let b = ioi.clean.size()[0];
        let fast = min_secs(3, || {
            let _ = activation_patching(&model, &ioi.clean, &ioi.corrupted, &ioi.metric, site, 1024).unwrap();
        });
        let slow = min_secs(3, || {
            let _ = activation_patching(&model, &ioi.clean, &ioi.corrupted, &ioi.metric, site, b).unwrap();
        });
        println!("patching {:<9} stacked {:>7.1} ms, one forward per index {:>7.1} ms: {:.1}x", site.name(), fast * 1e3, slow * 1e3, slow / fast);
    }
}

/// A GPT-2-small-shaped checkpoint (random weights: cost, not behaviour) and a prompt file of 32
/// IOI-style pairs of 14 to 18 tokens (three name positions differ), written to `dir`.
fn write_gpt2_small(dir: &Path) -> PathBuf {
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
    };
    if !dir.join("model.safetensors").exists() {
        let model = HookedTransformer::init_random(&spec, 0, Kind::Float, Device::Cpu).unwrap();
        model.save_pretrained(dir).unwrap();
    }
    let mut rng = Rng::new(7);
    let mut lines = String::new();
    for i in 0..32 {
        let len = 14 + i % 5;
        let clean: Vec<i64> = std::iter::once(50256).chain((1..len).map(|_| (rng.next_u64() % 50000) as i64)).collect();
        let mut corrupted = clean.clone();
        for p in [3, 5, len - 4] {
            corrupted[p] = (rng.next_u64() % 50000) as i64;
        }
        let (answer, wrong) = (clean[3], clean[5]);
        lines.push_str(&format!("{{\"clean_ids\": {clean:?}, \"corrupted_ids\": {corrupted:?}, \"answer\": {answer}, \"wrong\": {wrong}, \"label\": \"len{len}\"}}\n"));
    }
    let path = dir.join("ioi.jsonl");
    std::fs::write(&path, lines).unwrap();
    path
}
