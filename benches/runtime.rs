//! Runtime benchmark (a program: `cargo bench --bench runtime`).
//!
//! A GPT-2-small-shaped random model (12 layers, d_model 768, 12 heads, vocab 50257), batch 8 x 128,
//! f32, 2 threads. Prints, against baselines measured in the same run:
//! - forward tokens/s and achieved GFLOP/s as a fraction of a torch matmul roofline;
//! - run_with_cache (every standard hook) time as a ratio of forward, and the cache's bytes;
//! - peak RSS while loading the checkpoint as a multiple of the weights' size (in a child process).

use std::path::Path;
use std::time::Instant;

use interp::interp_core::{reuse_freed_memory, tch, CacheSpec, HookedTransformer};
use tch::{Device, Kind, Tensor};

const LAYERS: i64 = 12;
const D_MODEL: i64 = 768;
const HEADS: i64 = 12;
const VOCAB: i64 = 50257;
const N_CTX: i64 = 1024;
const BATCH: i64 = 8;
const POS: i64 = 128;
const REPEATS: usize = 5;

fn write_checkpoint(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let config = serde_json::json!({
        "model_type": "gpt2", "n_embd": D_MODEL, "n_layer": LAYERS, "n_head": HEADS,
        "vocab_size": VOCAB, "n_positions": N_CTX, "activation_function": "gelu_new",
        "layer_norm_epsilon": 1e-5, "bos_token_id": 50256
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let rand = |shape: &[i64]| Tensor::randn(shape, (Kind::Float, Device::Cpu)) * 0.02;
    let dm = D_MODEL;
    let mut t: Vec<(String, Tensor)> = vec![("wte.weight".into(), rand(&[VOCAB, dm])), ("wpe.weight".into(), rand(&[N_CTX, dm]))];
    for l in 0..LAYERS {
        let p = format!("h.{l}");
        for ln in ["ln_1", "ln_2"] {
            t.push((format!("{p}.{ln}.weight"), Tensor::ones([dm], (Kind::Float, Device::Cpu))));
            t.push((format!("{p}.{ln}.bias"), Tensor::zeros([dm], (Kind::Float, Device::Cpu))));
        }
        for (name, din, dout) in [("attn.c_attn", dm, 3 * dm), ("attn.c_proj", dm, dm), ("mlp.c_fc", dm, 4 * dm), ("mlp.c_proj", 4 * dm, dm)] {
            t.push((format!("{p}.{name}.weight"), rand(&[din, dout])));
            t.push((format!("{p}.{name}.bias"), rand(&[dout])));
        }
    }
    t.push(("ln_f.weight".into(), Tensor::ones([dm], (Kind::Float, Device::Cpu))));
    t.push(("ln_f.bias".into(), Tensor::zeros([dm], (Kind::Float, Device::Cpu))));
    Tensor::write_safetensors(&t, dir.join("model.safetensors")).unwrap();
}

fn status_kib(field: &str) -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN)
}

/// Child mode: load the checkpoint and print the RSS added while loading, in bytes.
fn measure_load(dir: &Path) {
    let before = status_kib("VmRSS:");
    let start = Instant::now();
    let model = HookedTransformer::from_pretrained_dir(dir, Device::Cpu, Kind::Float).unwrap();
    let secs = start.elapsed().as_secs_f64();
    let peak = status_kib("VmHWM:");
    println!("{} {} {}", (peak - before) * 1024.0, secs, model.n_params());
}

fn median_secs(mut f: impl FnMut()) -> f64 {
    f(); // warm-up
    let mut times: Vec<f64> = (0..REPEATS)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64()
        })
        .collect();
    times.sort_by(|a, b| a.total_cmp(b));
    times[REPEATS / 2]
}

fn main() {
    tch::set_num_threads(2);
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--measure-load") {
        return measure_load(Path::new(&args[i + 1]));
    }
    let dir = std::env::temp_dir().join("interp-bench-gpt2-small");
    if !dir.join("model.safetensors").exists() {
        write_checkpoint(&dir);
    }
    let weight_bytes = std::fs::metadata(dir.join("model.safetensors")).unwrap().len() as f64;

    let child = std::process::Command::new(std::env::current_exe().unwrap()).arg("--measure-load").arg(&dir).output().unwrap();
    let line = String::from_utf8_lossy(&child.stdout);
    let nums: Vec<f64> = line.split_whitespace().filter_map(|v| v.parse().ok()).collect();
    let (load_rss, load_secs) = (nums.first().copied().unwrap_or(f64::NAN), nums.get(1).copied().unwrap_or(f64::NAN));

    let _guard = tch::no_grad_guard();
    // Roofline: torch's own GEMM into a preallocated output (no allocation in the timing), at the
    // model's two big shapes: tokens x d_model x 4 d_model (MLP) and tokens x d_model x vocab
    // (unembedding). The faster of the two is the roofline.
    let m = BATCH * POS;
    let gemm_gflops = |k: i64, n: i64| {
        let a = Tensor::randn([m, k], (Kind::Float, Device::Cpu));
        let b = Tensor::randn([k, n], (Kind::Float, Device::Cpu));
        let out = Tensor::empty([m, n], (Kind::Float, Device::Cpu));
        let secs = median_secs(|| {
            let _ = a.matmul_out(&out, &b);
        });
        2.0 * (m * k * n) as f64 / secs / 1e9
    };
    let (mlp_gemm, unembed_gemm) = (gemm_gflops(D_MODEL, 4 * D_MODEL), gemm_gflops(D_MODEL, VOCAB));
    let roofline = mlp_gemm.max(unembed_gemm);

    let model = HookedTransformer::from_pretrained_dir(&dir, Device::Cpu, Kind::Float).unwrap();
    let tokens = Tensor::randint(VOCAB, [BATCH, POS], (Kind::Int64, Device::Cpu));
    let tokens_n = (BATCH * POS) as f64;
    let dm = D_MODEL as f64;
    let per_token_matmul = 2.0 * (LAYERS as f64 * (4.0 * dm * dm + 8.0 * dm * dm) + dm * VOCAB as f64);
    let attention = 2.0 * 2.0 * (LAYERS * BATCH * HEADS * POS * POS * (D_MODEL / HEADS)) as f64;
    let flops = per_token_matmul * tokens_n + attention;

    // Default glibc malloc first, then with freed memory kept for reuse.
    let (forward_default, cached_default) = forward_and_cache(&model, &tokens).0;
    reuse_freed_memory();
    let ((forward, cached), (cache_points, cache_bytes)) = forward_and_cache(&model, &tokens);
    let cached_half = median_secs(|| {
        let _ = model.run_with_cache(&tokens, CacheSpec::all().dtype(Kind::Half)).unwrap();
    });

    println!("interp runtime benchmark: GPT-2-small shape ({} params), batch {BATCH} x {POS}, f32, {} threads", model.n_params(), tch::get_num_threads());
    println!("torch matmul roofline                 {roofline:8.1} GFLOP/s (MLP shape {mlp_gemm:.1}, unembed shape {unembed_gemm:.1})");
    println!("forward                               {forward:8.3} s  {:9.0} tokens/s  {:6.1} GFLOP/s  = {:.2} of roofline", tokens_n / forward, flops / forward / 1e9, flops / forward / 1e9 / roofline);
    println!("run_with_cache, all {cache_points} hook points  {cached:8.3} s  {:9.0} tokens/s  = {:.2}x forward, cache {:.1} MiB", tokens_n / cached, cached / forward, cache_bytes as f64 / 1048576.0);
    println!("  same, stored as f16                 {cached_half:8.3} s  = {:.2}x forward, cache {:.1} MiB", cached_half / forward, cache_bytes as f64 / 2.0 / 1048576.0);
    println!("  without reuse_freed_memory()        forward {forward_default:.3} s, cache {cached_default:.3} s = {:.2}x forward", cached_default / forward_default);
    println!("load checkpoint                       {load_secs:8.3} s  peak RSS added {:.0} MiB = {:.2}x the weights ({:.0} MiB)", load_rss / 1048576.0, load_rss / weight_bytes, weight_bytes / 1048576.0);
}

/// Median seconds of forward and of run_with_cache(all), plus the cache's size.
fn forward_and_cache(model: &HookedTransformer, tokens: &Tensor) -> ((f64, f64), (usize, usize)) {
    let forward = median_secs(|| {
        let _ = model.forward(tokens).unwrap();
    });
    let mut cache_bytes = 0;
    let mut cache_points = 0;
    let cached = median_secs(|| {
        let (_, cache) = model.run_with_cache(tokens, CacheSpec::all()).unwrap();
        cache_bytes = cache.total_bytes();
        cache_points = cache.len();
    });
    ((forward, cached), (cache_points, cache_bytes))
}
