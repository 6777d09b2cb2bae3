//! Weight-based analysis benchmark (`cargo bench --bench features [--features lapack]`): symmetric
//! eigendecompositions per second at d 256 and 768 with torch (one at a time and batched
//! `linalg.eigh`) and, with the `lapack` feature, ndarray-linalg (OpenBLAS; that build also slows
//! torch's forwards, see circuits/Cargo.toml), next to building the interaction matrices; and the attribution graph
//! of a 64-token prompt on the text model with its transcoders: time against a plain forward,
//! batched backward passes against one target per pass, and memory; and at GPT-2 small's shape
//! (random weights, 12 TopK transcoders of 24,576 latents, k 8) graphs of 16- and 64-token
//! prompts, of a 256-token prompt with circuit-tracer's feature limit (1,024 features), and of a
//! 64-token prompt through a cross-layer transcoder (12 x 4,096 latents): time against a forward +
//! backward of the same rows, and peak RSS (`-- text` and `-- gpt2` run one part alone); `-- gpt2
//! full [TOKENS]` builds and prunes the graph of every feature of a 256-token (or TOKENS) prompt
//! under the default budget, its rows in a temporary file.

mod common;

use std::time::Instant;

use common::min_secs;
use interp::circuits::attribution_graph::{attribution_graph, GraphConfig};
use interp::circuits::bilinear::{BilinearLayer, Spectrum};
use interp::circuits::MemoryBudget;
use interp::interp_core::{tch, HookedTransformer};
use interp::transcoders::load_transcoder_set;
use interp::transcoders::{Architecture, CltConfig, CrossLayerTranscoder, DictionaryConfig, SparseDictionary, TranscoderSet};
use tch::{Device, Kind, Tensor};

/// Resident set size and its peak so far, in MiB (Linux).
fn rss_mib() -> (f64, f64) {
    (interp::interp_core::status_kib("VmRSS:") / 1024.0, interp::interp_core::status_kib("VmHWM:") / 1024.0)
}

fn main() {
    tch::set_num_threads(2);
    // `cargo bench --bench features -- text|gpt2`: one section alone.
    let only = |section: &str| std::env::args().any(|a| a == section);
    if only("gpt2") {
        return gpt2_small_graph();
    }
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/models/shakespeare-gpt2");
    let model = HookedTransformer::from_pretrained_dir(dir, Device::Cpu, Kind::Float).expect("text model");
    let tcs = load_transcoder_set(format!("{dir}/transcoders"), Device::Cpu).expect("transcoders");
    let tok = model.tokenizer().expect("tokenizer");
    let text = "ROMEO. But soft, what light through yonder window breaks? It is the east, and Juliet is the sun. Arise, fair sun, and kill the envious moon, Who is already sick and pale with grief, That thou her maid art far more fair than she.";
    let mut tokens = tok.encode(text, true).unwrap();
    tokens.truncate(64);
    let input = Tensor::from_slice(&tokens).unsqueeze(0);
    let forward = min_secs(5, || {
        let _ = model.forward(&input).unwrap();
    });
    let rows = Tensor::from_slice(&tokens).unsqueeze(0).repeat([64, 1]);
    let forward_batch = min_secs(3, || {
        let _ = model.forward(&rows).unwrap();
    });
    let (rss0, _) = rss_mib();
    let cfg = GraphConfig { batch_size: 64, ..GraphConfig::default() };
    let start = Instant::now();
    let graph = attribution_graph(&model, &tcs, &tokens, &cfg).unwrap();
    let secs = start.elapsed().as_secs_f64();
    let (_, peak) = rss_mib();
    let n = graph.nodes.len();
    let targets = graph.n_features() + graph.n_logits();
    let passes = (targets as f64 / cfg.batch_size as f64).ceil();
    println!(
        "attribution graph, text model, {} tokens, {} ({} latents per layer): {} active features, {} nodes, {} targets",
        tokens.len(),
        tcs.describe(),
        tcs.d_sae(0),
        graph.n_features(),
        n,
        targets
    );
    println!(
        "  batch {}: {secs:.2} s for {passes:.0} forward+backward passes = {:.1} plain forwards of the same [64, {}] batch ({:.0} ms) per pass; one forward of the prompt {:.2} ms; completeness error {:.1e}",
        cfg.batch_size,
        secs / passes / forward_batch,
        tokens.len(),
        forward_batch * 1e3,
        forward * 1e3,
        graph.completeness_error().unwrap()
    );
    println!(
        "  memory: adjacency {:.1} MiB (dense f32 [{n}, {n}]); peak RSS grew {:.0} MiB over the {:.0} MiB before",
        (n * n * 4) as f64 / (1 << 20) as f64,
        peak - rss0,
        rss0
    );
    // One target per backward pass, on the first 16 tokens (the loop the reference runs per target).
    let short = &tokens[..16];
    let time = |batch: i64| {
        let t = Instant::now();
        let g = attribution_graph(&model, &tcs, short, &GraphConfig { batch_size: batch, ..GraphConfig::default() }).unwrap();
        (t.elapsed().as_secs_f64(), g.n_features() + g.n_logits())
    };
    let (one, targets) = time(1);
    let (batched, _) = time(64);
    println!("  16 tokens, {targets} targets: one target per pass {one:.2} s, 64 per pass {batched:.2} s: {:.1}x", one / batched);
    if only("text") {
        return;
    }
    let opts = (Kind::Double, Device::Cpu);
    println!("eigendecompositions of symmetric matrices (f64), 2 threads:");
    for (d, n) in [(256i64, 32i64), (768, 6)] {
        tch::manual_seed(0);
        let layer = BilinearLayer::new(&Tensor::randn([4 * d, d], opts), &Tensor::randn([4 * d, d], opts), &Tensor::randn([d, 4 * d], opts)).unwrap();
        let us = Tensor::randn([n, d], opts);
        let build = min_secs(2, || {
            let _ = layer.interaction_matrices(&us).unwrap();
        });
        let qs = layer.interaction_matrices(&us).unwrap();
        let single = min_secs(2, || {
            for i in 0..n {
                let _ = Spectrum::of(&qs.get(i)).unwrap();
            }
        });
        let batched = min_secs(2, || {
            let _ = Spectrum::of_batch(&qs).unwrap();
        });
        print!(
            "  d {d:>3} (d_hidden {}): building Q(u) {:>6.1}/s; torch one at a time {:>6.1}/s, batched {:>6.1}/s",
            4 * d,
            n as f64 / build,
            n as f64 / single,
            n as f64 / batched
        );
        #[cfg(feature = "lapack")]
        {
            let lapack = min_secs(2, || {
                for i in 0..n {
                    let _ = Spectrum::of_lapack(&qs.get(i)).unwrap();
                }
            });
            print!("; ndarray-linalg {:>6.1}/s (torch batched / ndarray-linalg {:.2})", n as f64 / lapack, lapack / batched);
        }
        println!();
    }
    gpt2_small_graph();
}

/// The graph of a random prompt of `n_tokens` with every feature under the default budget, then
/// pruned: time, passes, where the rows were held, peak RSS.
fn full_graph(model: &HookedTransformer, tcs: &TranscoderSet, n_tokens: i64) {
    tch::manual_seed(n_tokens);
    let tokens: Vec<i64> = Vec::try_from(Tensor::randint(model.cfg.d_vocab, [n_tokens], (Kind::Int64, Device::Cpu))).unwrap();
    common::reset_peak_rss();
    let (before, _) = rss_mib();
    let start = Instant::now();
    let graph = match attribution_graph(model, tcs, &tokens, &GraphConfig { progress: true, ..GraphConfig::default() }) {
        Ok(g) => g,
        Err(e) => return println!("  {n_tokens} tokens, every feature, default budget: {e}"),
    };
    let secs = start.elapsed().as_secs_f64();
    let (_, peak) = rss_mib();
    common::reset_peak_rss();
    let completeness = graph.completeness_error().unwrap();
    let (_, completeness_peak) = rss_mib();
    println!(
        "  {}, {n_tokens} tokens, every feature, default budget: {} features, {} nodes, rows {}; {secs:.0} s; peak RSS {:.2} GB ({:.2} GB before); completeness error {completeness:.1e} (peak RSS {:.2} GB)",
        tcs.describe(),
        graph.n_features(),
        graph.nodes.len(),
        if graph.adjacency.in_a_file() { "in a temporary file" } else { "in memory" },
        peak / 1024.0,
        before / 1024.0,
        completeness_peak / 1024.0,
    );
    // Pruning's own peak, from the RSS it starts at.
    common::reset_peak_rss();
    let (before, _) = rss_mib();
    let start = Instant::now();
    let pruned = graph.prune(0.8, 0.98).unwrap();
    let (_, peak) = rss_mib();
    println!(
        "  pruned to {} nodes and {} edges in {:.0} s; peak RSS {:.2} GB ({:.2} GB before)",
        pruned.n_nodes(),
        pruned.n_edges(),
        start.elapsed().as_secs_f64(),
        peak / 1024.0,
        before / 1024.0
    );
}

/// Section 3: attribution graphs at GPT-2 small's shape: prompts of 16 and 64 tokens in full,
/// 256 tokens with circuit-tracer's feature limit, and a cross-layer transcoder at 64 tokens.
fn gpt2_small_graph() {
    let model = HookedTransformer::from_pretrained_dir(common::gpt2_small(), Device::Cpu, Kind::Float).expect("GPT-2-small-shaped model");
    let d = model.cfg.d_model;
    let per_layer: TranscoderSet = (0..model.cfg.n_layers)
        .map(|l| {
            let cfg = DictionaryConfig::transcoder(
                Architecture::TopK { k: 8 },
                false,
                &format!("blocks.{l}.ln2.hook_normalized"),
                &format!("blocks.{l}.hook_mlp_out"),
                d,
                d,
                24_576,
            );
            SparseDictionary::init(cfg, l as i64, Device::Cpu).expect("transcoder")
        })
        .collect::<Vec<_>>()
        .into();
    println!("attribution graphs, GPT-2 small shape, random weights, 2 threads, a budget of 8 GB; one pass = 32 targets (fewer when the budget cuts them); ratio = seconds per pass / a forward+backward of the same [32, tokens] rows:");
    let run = |tcs: &TranscoderSet, n_tokens: i64, max_feature_nodes: Option<usize>| {
        tch::manual_seed(n_tokens);
        let tokens: Vec<i64> = Vec::try_from(Tensor::randint(model.cfg.d_vocab, [n_tokens], (Kind::Int64, Device::Cpu))).unwrap();
        let rows = Tensor::from_slice(&tokens).unsqueeze(0).repeat([32, 1]);
        let fwd_bwd = min_secs(2, || {
            let resid = model.runner(&rows).stop_at_layer(model.cfg.n_layers).autograd().run().unwrap().output.set_requires_grad(true);
            resid.sum(Kind::Float).backward();
        });
        common::reset_peak_rss();
        let (before, _) = rss_mib();
        let cfg = GraphConfig { batch_size: 32, max_feature_nodes, budget: MemoryBudget { bytes: 8_000_000_000, outside: 0 }, ..GraphConfig::default() };
        let start = Instant::now();
        let graph = match attribution_graph(&model, tcs, &tokens, &cfg) {
            Ok(g) => g,
            Err(e) => return println!("  {n_tokens} tokens: {e}"),
        };
        let secs = start.elapsed().as_secs_f64();
        let (_, peak) = rss_mib();
        let passes = ((graph.n_features() + graph.n_logits()) as f64 / 32.0).ceil();
        let limit = max_feature_nodes.map(|m| format!(", at most {m} features")).unwrap_or_default();
        let completeness =
            if max_feature_nodes.is_none() { format!("; completeness error {:.1e}", graph.completeness_error().unwrap()) } else { String::new() };
        println!(
            "  {}, {n_tokens} tokens{limit}: {} features, {} nodes; {secs:.0} s for {passes:.0} passes = {:.2} forward+backward ({:.2} s) per pass; peak RSS {:.2} GB ({:.2} GB before){completeness}",
            tcs.describe(),
            graph.n_features(),
            graph.nodes.len(),
            secs / passes / fwd_bwd,
            fwd_bwd,
            peak / 1024.0,
            before / 1024.0,
        );
    };
    // `-- gpt2 full [TOKENS]`: the graph of every feature under the default budget (256 tokens).
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "full") {
        return full_graph(&model, &per_layer, args.get(i + 1).and_then(|t| t.parse().ok()).unwrap_or(256));
    }
    run(&per_layer, 16, None);
    run(&per_layer, 64, None);
    run(&per_layer, 256, Some(1024));
    println!("  every feature under the default budget: `cargo bench --bench features -- gpt2 full [TOKENS]` (256 tokens: about 9 minutes)");
    drop(per_layer);
    let clt = CrossLayerTranscoder::init(CltConfig::new(Architecture::TopK { k: 8 }, model.cfg.n_layers, d, 4096), 0, Device::Cpu).expect("CLT");
    run(&clt.into(), 64, None);
}
