//! Real models from GGUF files (a program: `cargo bench --bench gguf`; the models come from
//! scripts/fetch_models.sh, the Python side from scripts/bench_gguf.sh's venv).
//!
//! 1. Loading SmolLM2-135M-Instruct (Q4_1) and Gemma 3 270M (Q4_K_M), each in a child process:
//!    wall time, and peak RSS as a multiple of the dequantised f32 weights, both the whole
//!    process's and what loading added to a process that had libtorch up already.
//! 2. SmolLM2-135M at 8 x 128 tokens, f32, 2 threads: forward and run_with_cache (every standard
//!    hook) in tokens/s, against HF transformers (eager attention; the cache's counterpart is every
//!    hidden state and attention pattern) and TransformerLens (forward, run_with_cache) on the
//!    same weights, in interleaved rounds: min and median per system, ratios per round.
//!
//! Run with OMP_WAIT_POLICY=PASSIVE (the Python child inherits it): spinning OpenMP threads of two
//! processes on two cores ruin both sides' timings.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

mod common;

use common::{median, min_secs};
use interp::interp_core::status_kib;
use interp::interp_core::{reuse_freed_memory, tch, CacheSpec, HookedTransformer};
use tch::{Device, Kind, Tensor};

const BATCH: i64 = 8;
const POS: i64 = 128;
const REPEATS: usize = 3;
const ROUNDS: usize = 4;
const MODELS: [&str; 2] = ["SmolLM2-135M-Instruct.Q4_1.gguf", "gemma-3-270m-q4_k_m.gguf"];

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// Child mode: load `path`, print (peak RSS, RSS added by loading, seconds, parameters).
fn measure_load(path: &Path) {
    let _ = Tensor::zeros([1], (Kind::Float, Device::Cpu)) + 1.0;
    let before = status_kib("VmRSS:");
    let start = Instant::now();
    let model = HookedTransformer::from_pretrained_dir(path, Device::Cpu, Kind::Float).unwrap();
    let secs = start.elapsed().as_secs_f64();
    let peak = status_kib("VmHWM:");
    println!("{} {} {} {}", peak * 1024.0, (peak - before) * 1024.0, secs, model.n_params());
}

fn main() {
    tch::set_num_threads(2);
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--measure-load") {
        return measure_load(Path::new(&args[i + 1]));
    }
    let paths: Vec<PathBuf> = MODELS.iter().map(|m| repo("models/real").join(m)).collect();
    if let Some(missing) = paths.iter().find(|p| !p.exists()) {
        eprintln!("{} is missing: run scripts/fetch_models.sh", missing.display());
        std::process::exit(1);
    }

    println!("1. Loading a GGUF file (child processes; peak RSS vs the dequantised f32 weights)");
    for (name, path) in MODELS.iter().zip(&paths) {
        let mut rows = Vec::new();
        for _ in 0..3 {
            let out = Command::new(std::env::current_exe().unwrap()).arg("--measure-load").arg(path).output().unwrap();
            let v: Vec<f64> = String::from_utf8_lossy(&out.stdout).split_whitespace().filter_map(|x| x.parse().ok()).collect();
            rows.push(v);
        }
        let weights = rows[0][3] * 4.0;
        let min_of = |i: usize| rows.iter().map(|r| r[i]).fold(f64::INFINITY, f64::min);
        println!(
            "  {name:34} {:.2} s, peak RSS {:.2} GB = {:.2}x the {:.2} GB of weights ({:.2}x added to a process with libtorch loaded); file {:.0} MB",
            min_of(2),
            min_of(0) / 1e9,
            min_of(0) / weights,
            weights / 1e9,
            min_of(1) / weights,
            std::fs::metadata(path).unwrap().len() as f64 / 1e6,
        );
    }

    println!("\n2. SmolLM2-135M at {BATCH} x {POS} tokens, f32, 2 threads (tokens/s; min of {REPEATS} per round, {ROUNDS} rounds)");
    reuse_freed_memory();
    let _guard = tch::no_grad_guard();
    let model = HookedTransformer::from_pretrained_dir(&paths[0], Device::Cpu, Kind::Float).unwrap();
    tch::manual_seed(0);
    let tokens = Tensor::randint(model.cfg.d_vocab, [BATCH, POS], (Kind::Int64, Device::Cpu));
    let tokens_file = std::env::temp_dir().join("interp-bench-gguf-tokens.safetensors");
    Tensor::write_safetensors(&[("input_ids", &tokens)], &tokens_file).unwrap();

    let venv = repo(".venv-tl/bin/python");
    let mut python = venv.exists().then(|| {
        let mut child = Command::new(&venv)
            .arg(repo("scripts/bench_gguf.py"))
            .arg(&paths[0])
            .arg(&tokens_file)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        println!("  Python side {}", line.trim());
        (child, out)
    });
    if python.is_none() {
        println!("  (no {}: run scripts/bench_gguf.sh for HF transformers and TransformerLens beside ours)", venv.display());
    }
    let mut ask = |what: &str| -> Option<f64> {
        let (child, out) = python.as_mut()?;
        writeln!(child.stdin.as_mut().unwrap(), "{what}").unwrap();
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        line.trim().parse().ok()
    };
    let names = ["ours forward", "HF forward", "TL forward", "ours cache", "HF cache", "TL cache"];
    let mut secs: Vec<Vec<f64>> = vec![Vec::new(); names.len()];
    for round in 0..ROUNDS {
        let row = [
            Some(min_secs(REPEATS, || {
                let _ = model.forward(&tokens).unwrap();
            })),
            ask("hf_forward"),
            ask("tl_forward"),
            Some(min_secs(REPEATS, || {
                let _ = model.run_with_cache(&tokens, CacheSpec::all()).unwrap();
            })),
            ask("hf_cache"),
            ask("tl_cache"),
        ];
        for (s, v) in secs.iter_mut().zip(row) {
            s.extend(v);
        }
        eprintln!("  round {} of {ROUNDS} done", round + 1);
    }
    let n = (BATCH * POS) as f64;
    for (name, s) in names.iter().zip(&secs).filter(|(_, s)| !s.is_empty()) {
        let best = s.iter().copied().fold(f64::INFINITY, f64::min);
        println!("  {name:14} {:8.0} tokens/s (min {:.3} s, median {:.3} s)", n / best, best, median(s.clone()));
    }
    let ratio = |a: usize, b: usize| -> Option<(f64, f64)> {
        if secs[b].is_empty() {
            return None;
        }
        let r: Vec<f64> = secs[a].iter().zip(&secs[b]).map(|(x, y)| y / x).collect();
        Some((r.iter().copied().fold(f64::INFINITY, f64::min), median(r)))
    };
    for (label, a, b) in [
        ("forward vs HF", 0, 1),
        ("forward vs TransformerLens", 0, 2),
        ("cache vs HF's hidden states + attentions", 3, 4),
        ("cache vs TransformerLens run_with_cache", 3, 5),
    ] {
        if let Some((lo, med)) = ratio(a, b) {
            println!("  ours {label}: {med:.2}x faster (median of rounds; min {lo:.2}x)");
        }
    }
    if let Some((mut child, _)) = python {
        drop(child.stdin.take());
        let _ = child.wait();
    }
}
