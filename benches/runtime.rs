//! Runtime benchmark (a program: `cargo bench --bench runtime`).
//!
//! A GPT-2-small-shaped random model (12 layers, d_model 768, 12 heads, vocab 50257), batch 8 x 128,
//! f32, 2 threads. Prints, against baselines measured in the same run:
//! - forward tokens/s and achieved GFLOP/s as a fraction of two torch matmul rooflines: a GEMM
//!   skeleton of the forward (its own matrix products, same shapes) and the single-GEMM peak;
//! - run_with_cache (every standard hook) time as a ratio of forward, and the cache's bytes;
//! - peak RSS while loading the checkpoint as a multiple of the weights' size (in a child process).
//!
//! The host's speed drifts, so measurements interleave in rounds and ratios are paired per round.

use std::path::Path;
use std::time::Instant;

mod common;

use common::min_secs;
use interp::interp_core::status_kib;
use interp::interp_core::{reuse_freed_memory, tch, CacheSpec, HookedTransformer};
use tch::{Device, Kind, Tensor};

use common::{D_MODEL, HEADS, LAYERS, VOCAB};
const BATCH: i64 = 8;
const POS: i64 = 128;
const REPEATS: usize = 4;
const ROUNDS: usize = 5;

/// Child mode: load the checkpoint and print the RSS added while loading, in bytes.
fn measure_load(dir: &Path) {
    let before = status_kib("VmRSS:");
    let start = Instant::now();
    let model = HookedTransformer::from_pretrained_dir(dir, Device::Cpu, Kind::Float).unwrap();
    let secs = start.elapsed().as_secs_f64();
    let peak = status_kib("VmHWM:");
    println!("{} {} {}", (peak - before) * 1024.0, secs, model.n_params());
}

fn main() {
    tch::set_num_threads(2);
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--measure-load") {
        return measure_load(Path::new(&args[i + 1]));
    }
    let dir = common::gpt2_small();
    let weight_bytes = std::fs::metadata(dir.join("model.safetensors")).unwrap().len() as f64;

    let child = std::process::Command::new(std::env::current_exe().unwrap()).arg("--measure-load").arg(&dir).output().unwrap();
    let line = String::from_utf8_lossy(&child.stdout);
    let nums: Vec<f64> = line.split_whitespace().filter_map(|v| v.parse().ok()).collect();
    let (load_rss, load_secs) = (nums.first().copied().unwrap_or(f64::NAN), nums.get(1).copied().unwrap_or(f64::NAN));

    let _guard = tch::no_grad_guard();
    let model = HookedTransformer::from_pretrained_dir(&dir, Device::Cpu, Kind::Float).unwrap();
    let tokens = Tensor::randint(VOCAB, [BATCH, POS], (Kind::Int64, Device::Cpu));
    let tokens_n = (BATCH * POS) as f64;
    let dm = D_MODEL as f64;
    let per_token_matmul = 2.0 * (LAYERS as f64 * (4.0 * dm * dm + 8.0 * dm * dm) + dm * VOCAB as f64);
    let attention = 2.0 * 2.0 * (LAYERS * BATCH * HEADS * POS * POS * (D_MODEL / HEADS)) as f64;
    let flops = per_token_matmul * tokens_n + attention;

    // Baselines. Peak: one torch GEMM into a preallocated output at the MLP shape. Skeleton: every
    // GEMM the forward runs (q/k/v, output, MLP in and out per layer, the unembedding), same shapes
    // and layouts, back to back, with bias: the roofline this forward can reach.
    let m = BATCH * POS;
    let randn = |s: &[i64]| Tensor::randn(s, (Kind::Float, Device::Cpu));
    let (a, b, out) = (randn(&[m, D_MODEL]), randn(&[D_MODEL, 4 * D_MODEL]), Tensor::empty([m, 4 * D_MODEL], (Kind::Float, Device::Cpu)));
    let x = randn(&[BATCH, POS, D_MODEL]);
    let h = randn(&[BATCH, POS, 4 * D_MODEL]);
    let layer: Vec<(Tensor, Tensor, &Tensor)> = [(3 * D_MODEL, D_MODEL), (D_MODEL, D_MODEL), (4 * D_MODEL, D_MODEL), (D_MODEL, 4 * D_MODEL)]
        .into_iter()
        .map(|(o, i)| (randn(&[o, i]), randn(&[o]), if i == D_MODEL { &x } else { &h }))
        .collect();
    let w_u = randn(&[VOCAB, D_MODEL]);
    let skeleton = || {
        for _ in 0..LAYERS {
            for (w, bias, input) in &layer {
                let _ = input.linear(w, Some(bias));
            }
        }
        let _ = x.linear::<Tensor>(&w_u, None);
    };
    let skeleton_flops = 2.0 * tokens_n * (LAYERS as f64 * 12.0 * dm * dm + dm * VOCAB as f64);

    // Rounds interleave every measurement, so that the host's drifting speed hits all alike;
    // ratios are taken within a round. The first rounds use glibc's default malloc.
    let mut rows: Vec<[f64; 5]> = Vec::new();
    let mut cache_info = (0, 0);
    for round in 0..2 * ROUNDS {
        if round == ROUNDS {
            reuse_freed_memory();
        }
        let peak = min_secs(REPEATS, || {
            let _ = a.matmul_out(&out, &b);
        });
        let skel = min_secs(REPEATS, skeleton);
        let fwd = min_secs(REPEATS, || {
            let _ = model.forward(&tokens).unwrap();
        });
        let cached = min_secs(REPEATS, || {
            let (_, cache) = model.run_with_cache(&tokens, CacheSpec::all()).unwrap();
            cache_info = (cache.len(), cache.total_bytes());
        });
        let half = min_secs(REPEATS, || {
            let _ = model.run_with_cache(&tokens, CacheSpec::all().dtype(Kind::Half)).unwrap();
        });
        rows.push([2.0 * (m * D_MODEL * 4 * D_MODEL) as f64 / peak / 1e9, skel, fwd, cached, half]);
    }
    let med = |rows: &[[f64; 5]], f: &dyn Fn(&[f64; 5]) -> f64| {
        let mut v: Vec<f64> = rows.iter().map(f).collect();
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    let (default, tuned) = rows.split_at(ROUNDS);
    let fwd = med(tuned, &|r| r[2]);
    println!("interp runtime benchmark: GPT-2-small shape ({} params), batch {BATCH} x {POS}, f32, {} threads, fastest of {REPEATS} runs, medians of {ROUNDS} interleaved rounds", model.n_params(), tch::get_num_threads());
    println!("torch GEMM peak (MLP shape)           {:8.1} GFLOP/s", med(tuned, &|r| r[0]));
    println!("GEMM skeleton of the forward          {:8.3} s  {:6.1} GFLOP/s", med(tuned, &|r| r[1]), skeleton_flops / med(tuned, &|r| r[1]) / 1e9);
    println!("forward                               {fwd:8.3} s  {:9.0} tokens/s  {:6.1} GFLOP/s", tokens_n / fwd, flops / fwd / 1e9);
    println!("  fraction of the skeleton roofline   {:8.2}", med(tuned, &|r| (flops / r[2]) / (skeleton_flops / r[1])));
    println!("  fraction of the GEMM peak           {:8.2}", med(tuned, &|r| flops / r[2] / 1e9 / r[0]));
    println!(
        "run_with_cache, all {} hook points  {:8.3} s  = {:.2}x forward, cache {:.1} MiB",
        cache_info.0,
        med(tuned, &|r| r[3]),
        med(tuned, &|r| r[3] / r[2]),
        cache_info.1 as f64 / 1048576.0
    );
    println!(
        "  same, stored as f16                 {:8.3} s  = {:.2}x forward, cache {:.1} MiB",
        med(tuned, &|r| r[4]),
        med(tuned, &|r| r[4] / r[2]),
        cache_info.1 as f64 / 2.0 / 1048576.0
    );
    println!(
        "  glibc default malloc (no reuse_freed_memory): cache = {:.2}x forward, forward {:.3} s",
        med(default, &|r| r[3] / r[2]),
        med(default, &|r| r[2])
    );
    println!(
        "load checkpoint                       {load_secs:8.3} s  peak RSS added {:.0} MiB = {:.2}x the weights ({:.0} MiB)",
        load_rss / 1048576.0,
        load_rss / weight_bytes,
        weight_bytes / 1048576.0
    );
}
