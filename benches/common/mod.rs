//! Timing helpers shared by the benchmark programs.
#![allow(dead_code)]

use std::time::Instant;

use interp::interp_core::tch::{Device, Kind, Tensor};

/// Fastest of `repeats` timed runs after a warm-up: the estimate least disturbed by a noisy host.
pub fn min_secs(repeats: usize, mut f: impl FnMut()) -> f64 {
    f();
    (0..repeats)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

/// GFLOP/s of one torch GEMM [m, k] x [k, n] into a preallocated output.
pub fn gemm_gflops(m: i64, k: i64, n: i64, repeats: usize) -> f64 {
    let a = Tensor::randn([m, k], (Kind::Float, Device::Cpu));
    let b = Tensor::randn([k, n], (Kind::Float, Device::Cpu));
    let out = Tensor::empty([m, n], (Kind::Float, Device::Cpu));
    let secs = min_secs(repeats, || {
        let _ = a.matmul_out(&out, &b);
    });
    2.0 * (m * k * n) as f64 / secs / 1e9
}

/// The median of `values`.
pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

/// GPT-2 small's shape.
pub const LAYERS: i64 = 12;
pub const D_MODEL: i64 = 768;
pub const HEADS: i64 = 12;
pub const VOCAB: i64 = 50257;
pub const N_CTX: i64 = 1024;

/// A GPT-2-small-shaped checkpoint with random weights (N(0, 0.02), unit norms), written once to
/// a temp folder and reused: its cost is what the benchmarks measure, not its behaviour.
pub fn gpt2_small() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join("interp-bench-gpt2-small");
    if dir.join("model.safetensors").exists() {
        return dir;
    }
    std::fs::create_dir_all(&dir).unwrap();
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
    dir
}

/// Resets the process's peak RSS (VmHWM) to its current RSS (Linux), so that the next phase's
/// peak can be read on its own.
pub fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}
