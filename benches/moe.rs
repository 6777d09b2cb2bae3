//! Mixture-of-experts benchmark (a program: `cargo bench --bench moe`).
//!
//! A Mixtral-style model (8 layers, d_model 512, 8 heads, 8 SwiGLU experts of 1024 units, top 2,
//! vocab 32000, random weights) against the dense Llama-style model of the same active parameter
//! count (one SwiGLU MLP of 2048 units), batch 8 x 128, f32, 2 threads. Prints forward and
//! run_with_cache (every standard hook, then also `mlp.hook_expert_out`) times and the MoE / dense
//! ratios, min and median over interleaved rounds (the host's speed drifts, so ratios are paired
//! per round).

use std::time::Instant;

mod common;

use common::{median, min_secs};
use interp::interp_core::{tch, BlockStyle, CacheSpec, Experts, HookedTransformer, MlpKind, ModelSpec, NormPlacement};
use tch::{Device, Kind, Tensor};

const LAYERS: usize = 8;
const D_MODEL: i64 = 512;
const EXPERTS: i64 = 8;
const TOP_K: i64 = 2;
const D_EXPERT: i64 = 1024;
const VOCAB: i64 = 32000;
const BATCH: i64 = 8;
const POS: i64 = 128;
const REPEATS: usize = 3;
const ROUNDS: usize = 5;

fn model(experts: Option<Experts>, d_mlp: i64) -> HookedTransformer {
    let spec = ModelSpec {
        style: BlockStyle::Llama,
        n_layers: LAYERS,
        d_model: D_MODEL,
        n_heads: 8,
        d_mlp,
        d_vocab: VOCAB,
        n_ctx: 1024,
        mlp: Some(MlpKind::SwiGlu),
        tie_embeddings: false,
        bos_token_id: Some(0),
        experts,
        norm: NormPlacement::Pre,
    };
    HookedTransformer::init_random(&spec, 0, Kind::Float, Device::Cpu).unwrap()
}

fn main() {
    tch::set_num_threads(2);
    let _guard = tch::no_grad_guard();
    let built = Instant::now();
    let moe = model(Some(Experts { n_experts: EXPERTS, top_k: TOP_K }), D_EXPERT);
    let dense = model(None, TOP_K * D_EXPERT);
    let tokens = Tensor::randint(VOCAB, [BATCH, POS], (Kind::Int64, Device::Cpu));
    let (_, routed) = moe.run_with_cache(&tokens, CacheSpec::names(["blocks.*.mlp.hook_expert_indices"])).unwrap();
    let load: Vec<f64> = routed.iter().map(|(_, t)| t.flatten(0, -1).bincount::<Tensor>(None, EXPERTS).max().double_value(&[]) / t.numel() as f64).collect();
    println!(
        "interp MoE benchmark: {LAYERS} layers, d_model {D_MODEL}, {EXPERTS} experts x {D_EXPERT} units, top {TOP_K} ({} params) vs dense {} units ({} params); batch {BATCH} x {POS}, f32, {} threads; built in {:.1} s",
        moe.n_params(),
        TOP_K * D_EXPERT,
        dense.n_params(),
        tch::get_num_threads(),
        built.elapsed().as_secs_f64()
    );
    println!(
        "busiest expert's share of routing choices per layer (random router; 1/{EXPERTS} = {:.3} is even): {:.3} max",
        1.0 / EXPERTS as f64,
        load.iter().cloned().fold(0.0, f64::max)
    );
    let mut rows: Vec<[f64; 5]> = Vec::new();
    for _ in 0..ROUNDS {
        let fwd = |m: &HookedTransformer| {
            min_secs(REPEATS, || {
                let _ = m.forward(&tokens).unwrap();
            })
        };
        let cached = |m: &HookedTransformer| {
            min_secs(REPEATS, || {
                let _ = m.run_with_cache(&tokens, CacheSpec::all()).unwrap();
            })
        };
        let (d_fwd, m_fwd, d_cache, m_cache) = (fwd(&dense), fwd(&moe), cached(&dense), cached(&moe));
        let m_experts = min_secs(REPEATS, || {
            let _ = moe.run_with_cache(&tokens, CacheSpec::names(["blocks.*.mlp.hook_expert_out"])).unwrap();
        });
        rows.push([d_fwd, m_fwd, d_cache, m_cache, m_experts]);
    }
    let stat = |f: &dyn Fn(&[f64; 5]) -> f64| {
        let v: Vec<f64> = rows.iter().map(f).collect();
        (v.iter().cloned().fold(f64::INFINITY, f64::min), median(v))
    };
    let line = |what: &str, f: &dyn Fn(&[f64; 5]) -> f64, unit: &str| {
        let (min, med) = stat(f);
        println!("{what:52} min {min:7.3}{unit}  median {med:7.3}{unit}");
    };
    line("dense forward", &|r| r[0], " s");
    line("MoE forward", &|r| r[1], " s");
    line("  MoE / dense forward", &|r| r[1] / r[0], "x");
    line("dense run_with_cache (all standard hooks)", &|r| r[2], " s");
    line("MoE run_with_cache (all standard hooks)", &|r| r[3], " s");
    line("  MoE / dense run_with_cache", &|r| r[3] / r[2], "x");
    line("  MoE run_with_cache / MoE forward", &|r| r[3] / r[1], "x");
    line("MoE with mlp.hook_expert_out [b,p,experts,d_model]", &|r| r[4], " s");
    line("  / MoE forward", &|r| r[4] / r[1], "x");
}
