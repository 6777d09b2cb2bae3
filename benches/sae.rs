//! Sparse-dictionary benchmark (`cargo bench --bench sae`). Prints, each against a baseline
//! measured in the same run:
//!   1. TopK SAE training (d_in 768, d_sae 16384, k 32, batches of 4096 tokens from a fixed
//!      activation tensor), tokens/s, as a fraction of the GEMM roofline: the two
//!      [4096, 768] x [768, 16384] products a step cannot avoid (encoder forward and its weight
//!      gradient), timed alone;
//!   2. the sparse top-k decode (gather k decoder rows) against the dense decode, forward and
//!      backward, and training steps with each;
//!   3. activation-store throughput on the default text model: tokens/s of the model forward into
//!      a shuffled buffer, against a plain forward of the same contexts;
//!   4. GPT-2 small's shape (random weights): the store streaming `blocks.6.hook_resid_pre` (the
//!      forward stops after block 5) and three hooks of block 6 from one pass, against a plain
//!      full forward; a 16k-latent TopK SAE trained from the stream (tokens/s end to end, peak
//!      RSS); the disk a cache takes per token in f32 and f16, and so for 10M tokens;
//!   5. a TopK cross-layer transcoder at GPT-2 small's shape: seconds per step against its
//!      encoder's GEMM roofline, and peak RSS (`-- clt` runs this part alone).
//!
//! The host is noisy (up to 30% between identical runs), so each figure is the fastest of several.

mod common;

use std::time::Instant;

use common::{gemm_gflops, gpt2_small, min_secs, reset_peak_rss};
use interp::interp_core::status_kib;
use interp::interp_core::{tch, HookedTransformer};
use interp::transcoders::{
    train_clt, train_dictionaries, ActivationSource, ActivationStore, Architecture, CltConfig, CrossLayerTranscoder, DictionaryConfig, InMemoryActivations,
    SaeTrainConfig, SparseDictionary, StoreConfig,
};
use tch::{Device, Kind, Tensor};

const D_IN: i64 = 768;
const D_SAE: i64 = 16384;
const K: i64 = 32;
const BATCH: i64 = 4096;

/// Seconds per training step (fastest of `repeats` runs of `steps` steps).
fn step_secs(sparse_decode: bool, steps: usize, repeats: usize) -> f64 {
    let x = Tensor::randn([2 * BATCH, D_IN], (Kind::Float, Device::Cpu));
    let cfg = SaeTrainConfig { steps, sparse_decode, progress: false, checkpoint_dir: None, warmup_steps: 1, ..Default::default() };
    (0..repeats)
        .map(|_| {
            let mut source = InMemoryActivations::new(vec![("x".into(), x.shallow_clone())], BATCH).expect("source");
            let mut dict = SparseDictionary::init(DictionaryConfig::sae(Architecture::TopK { k: K }, "x", D_IN, D_SAE), 0, Device::Cpu).expect("init");
            let start = Instant::now();
            train_dictionaries(std::slice::from_mut(&mut dict), &mut source, &cfg).expect("train");
            start.elapsed().as_secs_f64() / steps as f64
        })
        .fold(f64::INFINITY, f64::min)
}

fn main() {
    interp::interp_core::reuse_freed_memory();
    println!("threads: {}", tch::get_num_threads());
    if std::env::args().any(|a| a == "clt") {
        return gpt2_small_clt();
    }

    // 1. Training against the roofline.
    let gflops = gemm_gflops(BATCH, D_IN, D_SAE, 3);
    let roofline_step = 2.0 * 2.0 * (BATCH * D_IN * D_SAE) as f64 / (gflops * 1e9);
    let sparse = step_secs(true, 4, 2);
    let dense = step_secs(false, 4, 2);
    println!(
        "GEMM [{BATCH},{D_IN}]x[{D_IN},{D_SAE}]: {gflops:.0} GFLOP/s; roofline step (2 GEMMs) {:.3} s = {:.0} tokens/s",
        roofline_step,
        BATCH as f64 / roofline_step
    );
    println!(
        "TopK SAE training, sparse decode and encoder gradient: {:.3} s/step = {:.0} tokens/s = {:.2} of the roofline (a step takes {:.2}x the one [4096,768]x[768,16384] GEMM it cannot avoid)",
        sparse,
        BATCH as f64 / sparse,
        roofline_step / sparse,
        sparse / (roofline_step / 2.0)
    );
    println!("TopK SAE training, dense decode and gradient: {:.3} s/step = {:.0} tokens/s (sparse {:.2}x faster)", dense, BATCH as f64 / dense, dense / sparse);

    // 2. The decode alone, forward + backward.
    let dict = SparseDictionary::init(DictionaryConfig::sae(Architecture::TopK { k: K }, "x", D_IN, D_SAE), 0, Device::Cpu).expect("init");
    let w_dec = dict.w_dec().set_requires_grad(true);
    let pre = Tensor::randn([BATCH, D_SAE], (Kind::Float, Device::Cpu));
    let (vals, idx) = pre.topk(K, -1, true, false);
    let vals = vals.relu().set_requires_grad(true);
    let dense_f = pre.zeros_like().scatter(-1, &idx, &vals.detach()).set_requires_grad(true);
    let t_sparse = min_secs(5, || {
        let out = dict.decode_sparse(&vals, &idx).expect("decode");
        let _ = Tensor::run_backward(&[out.sum(Kind::Float)], &[&w_dec, &vals], false, false);
    });
    let t_dense = min_secs(5, || {
        let out = dict.decode(&dense_f, None).expect("decode");
        let _ = Tensor::run_backward(&[out.sum(Kind::Float)], &[&w_dec, &dense_f], false, false);
    });
    println!("decode of {BATCH} tokens (k {K}), forward+backward: sparse {:.1} ms, dense {:.1} ms ({:.1}x)", 1e3 * t_sparse, 1e3 * t_dense, t_dense / t_sparse);

    // 3. Activation store on the default text model.
    let model =
        HookedTransformer::from_pretrained_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/models/shakespeare-gpt2"), Device::Cpu, Kind::Float).expect("model");
    let tokens = Tensor::randint(model.cfg.d_vocab, [400_000], (Kind::Int64, Device::Cpu));
    let cfg = StoreConfig { context_size: 128, batch_tokens: 4096, buffer_contexts: 256, forward_batch: 32, seed: 0 };
    let store = ActivationStore::new(&model, &tokens, &["blocks.1.hook_resid_pre"], cfg).expect("store");
    let contexts = store.contexts(0).expect("contexts");
    let t_fill = min_secs(3, || {
        store.fill(0).expect("fill");
    });
    let t_forward = min_secs(3, || {
        let _guard = tch::no_grad_guard();
        for chunk in contexts.split(32, 0) {
            let _ = model.forward(&chunk).expect("forward");
        }
    });
    let n = (256 * 128) as f64;
    println!(
        "activation store (blocks.1.hook_resid_pre, 256 contexts x 128): {:.0} tokens/s; plain full forward {:.0} tokens/s ({:.2}x the forward's time)",
        n / t_fill,
        n / t_forward,
        t_fill / t_forward
    );

    gpt2_small_shape();
    gpt2_small_clt();
}

/// Section 5: a TopK cross-layer transcoder at GPT-2 small's shape (12 layers, d 768, 6,144
/// latents per layer, k 32 per layer) trained on fixed random activations of its 24 hooks:
/// seconds per step (the difference of a 4-step and a 1-step run, so set-up is left out), as a
/// fraction of its encoder's roofline (per layer the two [4096,768]x[768,6144] products, as for
/// the SAE above), and peak RSS.
fn gpt2_small_clt() {
    const LATENTS: i64 = 6144;
    let n_layers = 12;
    let named: Vec<(String, Tensor)> = (0..n_layers)
        .map(|l| format!("blocks.{l}.ln2.hook_normalized"))
        .chain((0..n_layers).map(|l| format!("blocks.{l}.hook_mlp_out")))
        .map(|name| (name, Tensor::randn([2 * BATCH, D_IN], (Kind::Float, Device::Cpu))))
        .collect();
    let run = |steps: usize| {
        let mut source = InMemoryActivations::new(named.iter().map(|(n, t)| (n.clone(), t.shallow_clone())).collect(), BATCH).expect("source");
        let mut clt = CrossLayerTranscoder::init(CltConfig::new(Architecture::TopK { k: K }, n_layers, D_IN, LATENTS), 0, Device::Cpu).expect("CLT");
        let cfg = SaeTrainConfig { steps, progress: false, checkpoint_dir: None, warmup_steps: 1, ..Default::default() };
        let start = Instant::now();
        train_clt(&mut clt, &mut source, &cfg).expect("train");
        start.elapsed().as_secs_f64()
    };
    reset_peak_rss();
    let before = status_kib("VmRSS:") / (1 << 20) as f64;
    let (one, four) = (run(1), run(4));
    let step = (four - one) / 3.0;
    let gflops = gemm_gflops(BATCH, D_IN, LATENTS, 3);
    let roofline = n_layers as f64 * 2.0 * 2.0 * (BATCH * D_IN * LATENTS) as f64 / (gflops * 1e9);
    println!(
        "TopK CLT training, GPT-2 small shape (12 x {LATENTS} latents, k {K} per layer, {BATCH}-token batches): {step:.2} s/step = {:.0} tokens/s = {:.2} of its encoder roofline ({roofline:.2} s at {gflops:.0} GFLOP/s); peak RSS {:.2} GB ({before:.2} GB before)",
        BATCH as f64 / step,
        roofline / step,
        status_kib("VmHWM:") / (1 << 20) as f64
    );
}

/// Section 4: the store, training and a cache at GPT-2 small's shape.
fn gpt2_small_shape() {
    let model = HookedTransformer::from_pretrained_dir(gpt2_small(), Device::Cpu, Kind::Float).expect("GPT-2-small-shaped model");
    let tokens = Tensor::randint(model.cfg.d_vocab, [2_000_000], (Kind::Int64, Device::Cpu));
    // 33 contexts of 128 hold one batch of 4096 tokens (positions 1..).
    let cfg = StoreConfig { context_size: 128, batch_tokens: BATCH, buffer_contexts: 33, forward_batch: 11, seed: 0 };
    let hook = "blocks.6.hook_resid_pre";
    let one = ActivationStore::new(&model, &tokens, &[hook], cfg.clone()).expect("store");
    let three = ActivationStore::new(&model, &tokens, &[hook, "blocks.6.ln2.hook_normalized", "blocks.6.hook_mlp_out"], cfg.clone()).expect("store");
    let contexts = one.contexts(0).expect("contexts");
    let (mut t_one, mut t_three, mut t_forward) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..3 {
        // Interleaved rounds: the host's load drifts.
        let time = |f: &mut dyn FnMut()| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64()
        };
        t_one.push(time(&mut || drop(one.fill(0).expect("fill"))));
        t_three.push(time(&mut || drop(three.fill(0).expect("fill"))));
        t_forward.push(time(&mut || {
            let _guard = tch::no_grad_guard();
            for chunk in contexts.split(11, 0) {
                let _ = model.forward(&chunk).expect("forward");
            }
        }));
    }
    let (one_s, three_s, fwd_s) = (common::median(t_one.clone()), common::median(t_three.clone()), common::median(t_forward.clone()));
    let n = (33 * 127) as f64;
    println!(
        "GPT-2 small, store of {hook}: {:.0} tokens/s (min {:.0}), plain full forward {:.0} tokens/s: {:.2}x the forward's time (median of 3)",
        n / one_s,
        n / t_one.iter().cloned().fold(f64::INFINITY, f64::min),
        n / fwd_s,
        one_s / fwd_s
    );
    println!("GPT-2 small, three hooks of block 6 from one pass (SAE + transcoder input and output): {:.2}x one hook's time", three_s / one_s);

    // A 16k-latent TopK SAE trained from the stream, end to end.
    reset_peak_rss();
    let steps = 4;
    let mut store = ActivationStore::new(&model, &tokens, &[hook], cfg.clone()).expect("store");
    let mut dict = SparseDictionary::init(DictionaryConfig::sae(Architecture::TopK { k: K }, hook, D_IN, D_SAE), 0, Device::Cpu).expect("init");
    let train_cfg = SaeTrainConfig { steps, progress: false, warmup_steps: 1, ..Default::default() };
    let start = Instant::now();
    train_dictionaries(std::slice::from_mut(&mut dict), &mut store as &mut dyn ActivationSource, &train_cfg).expect("train");
    let secs = start.elapsed().as_secs_f64();
    println!(
        "GPT-2 small, 16k TopK SAE on {hook} streamed from the model: {:.0} tokens/s end to end ({steps} steps of {BATCH}); peak RSS {:.2} GB (weights {:.2} GB)",
        (steps as i64 * BATCH) as f64 / secs,
        status_kib("VmHWM:") * 1024.0 / 1e9,
        model.n_params() as f64 * 4.0 / 1e9
    );

    // Disk per cached token, f32 and f16.
    for (kind, name) in [(Kind::Float, "f32"), (Kind::Half, "f16")] {
        let dir = std::env::temp_dir().join(format!("interp-bench-cache-{name}"));
        let _ = std::fs::remove_dir_all(&dir);
        let cache = one.write_cache(&dir, 2, kind, false).expect("cache");
        let bytes: u64 = std::fs::read_dir(&dir).expect("dir").filter_map(|e| e.ok()?.metadata().ok()).map(|m| m.len()).sum();
        let tokens_cached = (cache.n_batches() as i64 * BATCH) as f64;
        println!(
            "cache of {hook} in {name}: {:.0} bytes per token, so {:.1} GB for 10M tokens",
            bytes as f64 / tokens_cached,
            bytes as f64 / tokens_cached * 1e7 / 1e9
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
