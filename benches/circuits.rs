//! Circuit-discovery benchmark (`cargo bench --bench circuits [-- --acdc]`).
//!
//! On the default task model: ACDC on the IOI edge graph by strategy (one edge per full forward,
//! per forward from its block, 16 speculative removals) reaching the same circuit, EAP and EAP-IG
//! against a plain forward, a causal-tracing grid against one forward per cell, and an
//! activation-patching sweep against one forward per index.
//!
//! On a GPT-2-small-shaped model (random weights; 32,491 edges) with 32 IOI-style pairs: EAP,
//! EAP-IG(5) and one faithfulness point as ratios to a plain forward and to a forward + backward
//! (interleaved rounds, min and median), peak RSS of each phase, a run under a small memory
//! budget and one under a budget too small for one prompt; with `--acdc [--tau T]`, ACDC to the
//! end (tau 0.003 unless given) with its full-forward equivalents against one full forward per
//! edge, its wall time in plain forwards, and its peak RSS. And a whole `interp eap` run (EAP,
//! EAP-IG(5), their faithfulness curves and MIB's budgets) against EAP-IG(5) alone, there and
//! with `--smollm2` on SmolLM2-135M with 32 pairs of the shipped IOI prompts.

mod common;

use std::path::{Path, PathBuf};
use std::time::Instant;

use common::{median, min_secs};
use interp::circuits::{
    acdc, activation_patching, budget::weight_bytes, causal_trace, edge_attribution, estimate_sigma, Ablation, AcdcConfig, AcdcResult, AttributionMethod,
    Corruption, EdgeGraph, EdgeRun, MemoryBudget, PatchSite, TaskPrompts, TraceConfig, TracePrompt,
};
use interp::interp_core::tasks::{Task, TaskVocab};
use interp::interp_core::{tch, HookedTransformer, NamesFilter, Rng};
use interp::report::analysis::{circuit_discovery, CircuitDiscoveryConfig};
use tch::{Device, Kind, Tensor};

fn main() {
    tch::set_num_threads(2);
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--write-gpt2-small") {
        let dir = common::gpt2_small();
        println!("wrote {} and {}", dir.display(), write_ioi_prompts(&dir).display());
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

    // Rounds interleave the strategies; each keeps its fastest run.
    let cfg = AcdcConfig { tau: 0.3, ..AcdcConfig::default() };
    let strategies = [
        ("one edge per full forward", AcdcConfig { restart: false, ..cfg.clone() }),
        ("one edge per forward from its block (CPU default)", cfg.clone()),
        ("16 speculative removals per forward (GPU default)", AcdcConfig { max_variants: 16, ..cfg.clone() }),
    ];
    let mut best: Vec<(f64, Option<AcdcResult>)> = vec![(f64::INFINITY, None); strategies.len()];
    for _ in 0..3 {
        for (i, (_, c)) in strategies.iter().enumerate() {
            let t = Instant::now();
            let r = acdc(&model, &graph, &acts, &ioi.metric, c).unwrap();
            let secs = t.elapsed().as_secs_f64();
            if secs < best[i].0 {
                best[i] = (secs, Some(r));
            }
        }
    }
    let naive_s = best[0].0;
    let kept: Vec<&Vec<bool>> = best.iter().filter_map(|(_, r)| r.as_ref().map(|r| &r.kept)).collect();
    let n_kept = best[1].1.as_ref().map(|r| r.n_kept()).unwrap_or(0);
    println!(
        "ACDC tau {} ({} of {} edges kept; every strategy the same circuit: {}):",
        cfg.tau,
        n_kept,
        graph.n_edges(),
        kept.windows(2).all(|w| w[0] == w[1])
    );
    for ((name, _), (secs, r)) in strategies.iter().zip(&best) {
        if let Some(r) = r {
            println!(
                "  {name:<50} {:>8.1} ms  {:>5} forwards  {:>7.1} full-forward equivalents  {:.1}x",
                secs * 1e3,
                r.n_forwards,
                r.forward_equivalents,
                naive_s / secs
            );
        }
    }

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
    let trace_cfg =
        |max_rows| TraceConfig { corruption: Corruption::Noise { sigma, scale: 3.0, samples: 10, seed: 0 }, window: 10, severed_mlp: true, max_rows };
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

    for site in [PatchSite::ResidPre, PatchSite::ZByPos] {
        let b = ioi.clean.size()[0];
        let fast = min_secs(3, || {
            let _ = activation_patching(&model, &ioi.clean, &ioi.corrupted, &ioi.metric, site, 1024).unwrap();
        });
        let slow = min_secs(3, || {
            let _ = activation_patching(&model, &ioi.clean, &ioi.corrupted, &ioi.metric, site, b).unwrap();
        });
        println!("patching {:<9} stacked {:>7.1} ms, one forward per index {:>7.1} ms: {:.1}x", site.name(), fast * 1e3, slow * 1e3, slow / fast);
    }
    let tau = args.iter().position(|a| a == "--tau").and_then(|i| args.get(i + 1)).map(|t| t.parse::<f64>().expect("--tau takes a number"));
    gpt2_small_case(args.iter().any(|a| a == "--acdc").then(|| tau.unwrap_or(0.003)));
    if args.iter().any(|a| a == "--smollm2") {
        let model = HookedTransformer::from_pretrained_dir(
            concat!(env!("CARGO_MANIFEST_DIR"), "/models/real/SmolLM2-135M-Instruct.Q4_1.gguf"),
            Device::Cpu,
            Kind::Float,
        )
        .expect("scripts/fetch_models.sh fetched SmolLM2");
        let lines = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/prompts/smollm2-135m/ioi.jsonl")).unwrap();
        let path = std::env::temp_dir().join("interp-bench-smollm2-ioi32.jsonl");
        std::fs::write(&path, lines.lines().take(32).map(|l| format!("{l}\n")).collect::<String>()).unwrap();
        let prompts = TaskPrompts::from_jsonl(&path, &model).unwrap();
        whole_run_case("SmolLM2-135M (real weights)", &model, &prompts);
    }
}

/// A whole EAP + EAP-IG(5) run (scores, faithfulness curves, MIB's 2 x 9 budgets per method, as
/// `interp eap` runs it) against EAP-IG(5)'s scores alone and a plain forward, two interleaved
/// rounds; peak RSS of the whole run.
fn whole_run_case(name: &str, model: &HookedTransformer, prompts: &TaskPrompts) {
    let graph = EdgeGraph::new(model).unwrap();
    let cfg = CircuitDiscoveryConfig { acdc: false, ..CircuitDiscoveryConfig::default() };
    let (mut fwd, mut ig, mut whole, mut peak) = (vec![], vec![], vec![], 0f64);
    for _ in 0..2 {
        let t = Instant::now();
        let _ = model.forward(&prompts.clean).unwrap();
        fwd.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        let run = EdgeRun::new(model, &graph, prompts, Ablation::Resample, MemoryBudget::DEFAULT).unwrap();
        let _ = run.attribution(AttributionMethod::EapIg { steps: 5 }).unwrap();
        ig.push(t.elapsed().as_secs_f64());
        drop(run);
        let t = Instant::now();
        let (_, p) = peak_gb(|| circuit_discovery(model, prompts, "ioi", &cfg).unwrap());
        whole.push(t.elapsed().as_secs_f64());
        peak = peak.max(p);
    }
    let min = |xs: &[f64]| xs.iter().copied().fold(f64::INFINITY, f64::min);
    let ratio: Vec<f64> = whole.iter().zip(&ig).map(|(w, i)| w / i).collect();
    println!(
        "\n{name}, {} edges, {} IOI pairs: whole EAP + EAP-IG(5) run {:.1} s = {:.1}x EAP-IG(5) alone ({:.1} s; median ratio {:.1}) = {:.0} plain forwards ({:.2} s); peak RSS {peak:.2} GB",
        graph.n_edges(),
        prompts.len(),
        min(&whole),
        ratio.iter().copied().fold(f64::INFINITY, f64::min),
        min(&ig),
        median(ratio.clone()),
        min(&whole) / min(&fwd),
        min(&fwd)
    );
}

/// A prompt file of 32 IOI-style pairs of 14 to 18 tokens for the GPT-2-small vocabulary: BOS,
/// random tokens, the corrupted prompt differing at three name positions; answer and wrong are
/// the two names.
fn write_ioi_prompts(dir: &Path) -> PathBuf {
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
        lines.push_str(&format!(
            "{{\"clean_ids\": {clean:?}, \"corrupted_ids\": {corrupted:?}, \"answer\": {answer}, \"wrong\": {wrong}, \"label\": \"len{len}\"}}\n"
        ));
    }
    let path = dir.join("ioi.jsonl");
    std::fs::write(&path, lines).unwrap();
    path
}

/// Peak RSS (GB) of `f` alone, and its result.
fn peak_gb<T>(f: impl FnOnce() -> T) -> (T, f64) {
    common::reset_peak_rss();
    let out = f();
    (out, interp::interp_core::status_kib("VmHWM:") * 1024.0 / 1e9)
}

/// EAP, EAP-IG and faithfulness points on a GPT-2-small-shaped model against a plain forward and
/// a forward + backward, in interleaved rounds; peak RSS per phase; a small memory budget; and
/// with `acdc_tau`, ACDC to the end.
fn gpt2_small_case(acdc_tau: Option<f64>) {
    let dir = common::gpt2_small();
    let model = HookedTransformer::from_pretrained_dir(&dir, Device::Cpu, Kind::Float).unwrap();
    let prompts = TaskPrompts::from_jsonl(&write_ioi_prompts(&dir), &model).unwrap();
    let graph = EdgeGraph::new(&model).unwrap();
    whole_run_case("GPT-2-small shape (random weights)", &model, &prompts);
    let weights = weight_bytes(&model) as f64 / 1e9;
    println!(
        "\nGPT-2-small shape (random weights, {weights:.2} GB), {} edges; {} IOI-style pairs of 14-18 tokens, right-padded to {}",
        graph.n_edges(),
        prompts.len(),
        prompts.clean.size()[1]
    );
    // A circuit of a random half of the edges: every receiver patched.
    let mut rng = Rng::new(3);
    let half: Vec<f32> = (0..graph.n_edges()).map(|_| (rng.next_u64() % 2) as f32).collect();
    let mask = Tensor::from_slice(&half).view([1, -1]);
    let metric = &prompts.metric;
    let (mut fwd, mut fwd_bwd, mut acts_s, mut eap, mut ig, mut point) = (vec![], vec![], vec![], vec![], vec![], vec![]);
    let mut peaks = [0f64; 4];
    for _ in 0..3 {
        let t = Instant::now();
        let _ = model.forward(&prompts.clean).unwrap();
        fwd.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        let _ = model.runner(&prompts.clean).gradients(NamesFilter::names(["hook_embed"]), |l| Ok(metric.per_variant(l)?.sum(Kind::Float))).run().unwrap();
        fwd_bwd.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        let (run, p) = peak_gb(|| EdgeRun::new(&model, &graph, &prompts, Ablation::Resample, MemoryBudget::DEFAULT).unwrap());
        let acts = t.elapsed().as_secs_f64();
        acts_s.push(acts);
        peaks[0] = peaks[0].max(p);
        let t = Instant::now();
        let (_, p) = peak_gb(|| run.attribution(AttributionMethod::Eap).unwrap());
        eap.push(acts + t.elapsed().as_secs_f64());
        peaks[1] = peaks[1].max(p);
        let t = Instant::now();
        let (_, p) = peak_gb(|| run.attribution(AttributionMethod::EapIg { steps: 5 }).unwrap());
        ig.push(acts + t.elapsed().as_secs_f64());
        peaks[2] = peaks[2].max(p);
        let t = Instant::now();
        let (_, p) = peak_gb(|| run.circuit_metrics(&mask).unwrap());
        point.push(t.elapsed().as_secs_f64());
        peaks[3] = peaks[3].max(p);
    }
    let ratio = |xs: &[f64], base: &[f64]| {
        let r: Vec<f64> = xs.iter().zip(base).map(|(x, b)| x / b).collect();
        (r.iter().copied().fold(f64::INFINITY, f64::min), median(r))
    };
    println!(
        "  plain forward {:.2} s, forward + backward {:.2} s (min of 3)",
        fwd.iter().copied().fold(f64::INFINITY, f64::min),
        fwd_bwd.iter().copied().fold(f64::INFINITY, f64::min)
    );
    // Activations (clean and corrupted sender outputs) are computed once per run and shared by
    // EAP, EAP-IG, the faithfulness points and ACDC; the rows below include them, and without.
    let without = |xs: &[f64]| xs.iter().zip(&acts_s).map(|(x, a)| x - a).collect::<Vec<f64>>();
    let (eap_only, ig_only) = (without(&eap), without(&ig));
    for (name, xs, peak) in [
        ("activations (2 cached forwards)", &acts_s, peaks[0]),
        ("EAP (activations + 1 gradient run)", &eap, peaks[1].max(peaks[0])),
        ("  EAP beside shared activations", &eap_only, peaks[1]),
        ("EAP-IG(5) (activations + 5 gradient runs)", &ig, peaks[2]),
        ("  EAP-IG(5) beside shared activations", &ig_only, peaks[2]),
        ("one faithfulness point", &point, peaks[3]),
    ] {
        let (f_min, f_med) = ratio(xs, &fwd);
        let (b_min, b_med) = ratio(xs, &fwd_bwd);
        println!(
            "  {name:<42} {:>6.2} s = {f_min:>5.1}x forward (median {f_med:.1}), {b_min:.1}x forward+backward (median {b_med:.1}); peak RSS {peak:.2} GB",
            xs.iter().copied().fold(f64::INFINITY, f64::min)
        );
    }

    // A budget of the weights + 1.0 GB: prompts and edge sets chunked; and one too small for a prompt.
    let budget = MemoryBudget::for_peak(((weights + 1.4) * 1e9) as u64, &model).unwrap();
    let (f, p) = peak_gb(|| {
        let run = EdgeRun::new(&model, &graph, &prompts, Ablation::Resample, budget).unwrap();
        (run.chunk(), run.attribution(AttributionMethod::Eap).unwrap(), run.circuit_metrics(&mask).unwrap())
    });
    println!("  budget {:.2} GB peak: {} prompts per chunk, peak RSS {p:.2} GB", weights + 1.4, f.0);
    let tiny =
        MemoryBudget::for_peak(((weights + 0.45) * 1e9) as u64, &model).and_then(|b| EdgeRun::new(&model, &graph, &prompts, Ablation::Resample, b).map(|_| ()));
    println!("  budget {:.2} GB peak: {}", weights + 0.45, tiny.err().map(|e| e.to_string()).unwrap_or_else(|| "accepted".into()));

    // At 1.5% of this random model's tiny clean - corrupted gap (the CLI's default) ACDC keeps
    // about a tenth of the late layers' edges but tests most of them (hours here); a larger tau
    // leaves a small circuit whose cut-off components go untested, as in a trained model's circuit.
    if let Some(tau) = acdc_tau {
        let fwd = fwd.iter().copied().fold(f64::INFINITY, f64::min);
        let run = EdgeRun::new(&model, &graph, &prompts, Ablation::Resample, MemoryBudget::DEFAULT).unwrap();
        let cfg = AcdcConfig { tau, progress: true, ..AcdcConfig::default() };
        let t = Instant::now();
        let (found, peak) = peak_gb(|| acdc(&model, &graph, run.whole().unwrap(), metric, &cfg).unwrap());
        let secs = t.elapsed().as_secs_f64();
        let naive = graph.n_edges() as f64 + 1.0;
        println!(
            "  ACDC tau {tau:.2e}: {} of {} edges kept, {} tested; {} forwards, {:.0} full-forward equivalents ({:.3} per tested edge; {:.1}x fewer than one full forward per edge); {secs:.0} s = {:.0} plain forwards; peak RSS {peak:.2} GB",
            found.n_kept(),
            graph.n_edges(),
            found.n_tested,
            found.n_forwards,
            found.forward_equivalents,
            found.forward_equivalents / found.n_tested.max(1) as f64,
            naive / found.forward_equivalents,
            secs / fwd
        );
    }
}
