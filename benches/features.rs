//! Weight-based analysis benchmark (`cargo bench --bench features [--features lapack]`): symmetric
//! eigendecompositions per second at d 256 and 768 with torch (one at a time and batched
//! `linalg.eigh`) and, with the `lapack` feature, ndarray-linalg (OpenBLAS; that build also slows
//! torch's forwards, see circuits/Cargo.toml), next to building the interaction matrices; and the attribution graph
//! of a 64-token prompt on the text model with its transcoders: time against a plain forward,
//! batched backward passes against one target per pass, and memory; and at GPT-2 small's shape
//! (random weights, 12 TopK transcoders of 24,576 latents, k 8) the graph of a 16-token prompt:
//! time against a forward + backward of the same rows, peak RSS, and what the default memory
//! budget says of a 256-token prompt.

mod common;

use std::time::Instant;

use common::min_secs;
use interp::circuits::attribution_graph::{attribution_graph, GraphConfig};
use interp::circuits::MemoryBudget;
use interp::transcoders::{Architecture, DictionaryConfig, SparseDictionary, TranscoderSet};
use interp::circuits::bilinear::{BilinearLayer, Spectrum};
use interp::interp_core::{tch, HookedTransformer};
use interp::transcoders::load_transcoder_set;
use tch::{Device, Kind, Tensor};

/// Resident set size and its peak so far, in MiB (Linux).
fn rss_mib() -> (f64, f64) {
    (common::status_kib("VmRSS:") / 1024.0, common::status_kib("VmHWM:") / 1024.0)
}

fn main() {
    tch::set_num_threads(2);
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
        print!("  d {d:>3} (d_hidden {}): building Q(u) {:>6.1}/s; torch one at a time {:>6.1}/s, batched {:>6.1}/s", 4 * d, n as f64 / build, n as f64 / single, n as f64 / batched);
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

/// Section 3: an attribution graph at GPT-2 small's shape.
fn gpt2_small_graph() {
    let model = HookedTransformer::from_pretrained_dir(common::gpt2_small(), Device::Cpu, Kind::Float).expect("GPT-2-small-shaped model");
    let d = model.cfg.d_model;
    let tcs: TranscoderSet = (0..model.cfg.n_layers)
        .map(|l| {
            let cfg = DictionaryConfig::transcoder(Architecture::TopK { k: 8 }, false, &format!("blocks.{l}.ln2.hook_normalized"), &format!("blocks.{l}.hook_mlp_out"), d, d, 24_576);
            SparseDictionary::init(cfg, l as i64, Device::Cpu).expect("transcoder")
        })
        .collect::<Vec<_>>()
        .into();
    tch::manual_seed(0);
    let tokens: Vec<i64> = Vec::try_from(Tensor::randint(model.cfg.d_vocab, [16], (Kind::Int64, Device::Cpu))).unwrap();
    let cfg = GraphConfig { batch_size: 32, budget: MemoryBudget { bytes: 8_000_000_000, outside: 0 }, ..GraphConfig::default() };
    let rows = Tensor::from_slice(&tokens).unsqueeze(0).repeat([32, 1]);
    let fwd_bwd = min_secs(2, || {
        let resid = model.runner(&rows).stop_at_layer(model.cfg.n_layers).autograd().run().unwrap().output.set_requires_grad(true);
        resid.sum(Kind::Float).backward();
    });
    let (_, before) = rss_mib();
    let start = Instant::now();
    let graph = attribution_graph(&model, &tcs, &tokens, &cfg).unwrap();
    let secs = start.elapsed().as_secs_f64();
    let (_, peak) = rss_mib();
    let targets = graph.n_features() + graph.n_logits();
    let passes = (targets as f64 / 32.0).ceil();
    println!(
        "attribution graph, GPT-2 small shape, 12 TopK transcoders (24,576 latents, k 8), {} tokens: {} features, {} nodes; {secs:.1} s for {passes:.0} passes = {:.2} forward+backward passes of the same [32, {}] rows ({:.2} s) per pass; peak RSS {:.2} GB (was {:.2} GB before the graph); completeness error {:.1e}",
        tokens.len(),
        graph.n_features(),
        graph.nodes.len(),
        secs / passes / fwd_bwd,
        tokens.len(),
        fwd_bwd,
        peak / 1024.0,
        before / 1024.0,
        graph.completeness_error().unwrap()
    );
    let long: Vec<i64> = Vec::try_from(Tensor::randint(model.cfg.d_vocab, [256], (Kind::Int64, Device::Cpu))).unwrap();
    match attribution_graph(&model, &tcs, &long, &GraphConfig::default()) {
        Ok(g) => println!("  256 tokens under the default budget: {} nodes", g.nodes.len()),
        Err(e) => println!("  256 tokens under the default budget: {e}"),
    }
}
