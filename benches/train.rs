//! Training benchmark (a program: `cargo bench --bench train`).
//!
//! The default text model's shape (GPT-2-style, 2 layers, d_model 128, 4 heads, d_mlp 512, vocab
//! 4096, context 128, batch 16), f32, 2 threads: training tokens/s (forward, backward, AdamW step)
//! and achieved GFLOP/s as a fraction of torch's GEMM roofline at the model's own matrix shapes,
//! measured in the same run, in interleaved rounds.

mod common;

use common::{gemm_gflops, median, min_secs};
use interp::interp_core::train::{Batch, BatchSource, TrainConfig};
use interp::interp_core::{tch, BlockStyle, HookedTransformer, MlpKind, ModelSpec, NormPlacement, Result};
use tch::{Device, Kind, Tensor};

const LAYERS: usize = 2;
const D_MODEL: i64 = 128;
const D_MLP: i64 = 512;
const VOCAB: i64 = 4096;
const CTX: i64 = 128;
const BATCH: i64 = 16;
const STEPS: usize = 20;
const ROUNDS: usize = 3;

struct Random;

impl BatchSource for Random {
    fn train_batch(&self, step: usize) -> Result<Batch> {
        tch::manual_seed(step as i64);
        let all = Tensor::randint(VOCAB, [BATCH, CTX + 1], (Kind::Int64, Device::Cpu));
        Ok(Batch { input: all.narrow(1, 0, CTX), target: all.narrow(1, 1, CTX), mask: None })
    }
    fn eval_batches(&self) -> Result<Vec<Batch>> {
        Ok(vec![self.train_batch(0)?])
    }
}

fn main() {
    tch::set_num_threads(2);
    let spec = ModelSpec {
        style: BlockStyle::Gpt2,
        n_layers: LAYERS,
        d_model: D_MODEL,
        n_heads: 4,
        d_mlp: D_MLP,
        d_vocab: VOCAB,
        n_ctx: CTX,
        mlp: Some(MlpKind::Gelu),
        tie_embeddings: false,
        bos_token_id: Some(0),
        experts: None,
        norm: NormPlacement::Pre,
    };
    let model = HookedTransformer::init_random(&spec, 0, Kind::Float, Device::Cpu).unwrap();
    let cfg = TrainConfig { steps: STEPS, eval_every: 10_000, checkpoint_every: 10_000, progress: false, ..Default::default() };
    let tokens = (BATCH * CTX) as f64;
    let (dm, l) = (D_MODEL as f64, LAYERS as f64);
    // Forward matmuls per token, times 3 for forward plus backward; attention scores and mixing.
    let matmul = 2.0 * (l * (4.0 * dm * dm + 2.0 * dm * D_MLP as f64) + dm * VOCAB as f64);
    let attention = 2.0 * 2.0 * l * (CTX as f64) * dm;
    let flops_per_token = 3.0 * (matmul + attention);

    let (mut rates, mut fractions, mut peaks) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let m = BATCH * CTX;
        let peak = [gemm_gflops(m, D_MODEL, D_MLP, 3), gemm_gflops(m, D_MODEL, VOCAB, 3), gemm_gflops(m, D_MLP, D_MODEL, 3)].into_iter().fold(0.0, f64::max);
        let secs = min_secs(1, || {
            model.train(&Random, &cfg).unwrap();
        });
        let rate = tokens * STEPS as f64 / secs;
        rates.push(rate);
        peaks.push(peak);
        fractions.push(rate * flops_per_token / 1e9 / peak);
    }
    println!(
        "interp training benchmark: text-model shape ({} params), batch {BATCH} x {CTX}, f32, {} threads, median of {ROUNDS} rounds",
        model.n_params(),
        tch::get_num_threads()
    );
    println!("torch GEMM roofline at the model's shapes   {:8.1} GFLOP/s", median(peaks));
    let rate = median(rates);
    println!(
        "training (forward, backward, AdamW)         {rate:8.0} tokens/s  {:6.1} GFLOP/s  = {:.2} of the roofline",
        rate * flops_per_token / 1e9,
        median(fractions)
    );
}
