//! A hand-built GPT-2-style model with a known induction circuit, for checking circuit discovery.
//!
//! Residual layout (d_model 128): token one-hots 0..20, position one-hots 20..52, the previous
//! token 52..72 (written by L0H0), the predicted token 72..92 (written by L1H0, read by the
//! unembedding), junk 92..127 (written by the distractors, read by nothing the output depends on)
//! and a sink dimension 127 that makes every written vector zero-mean. LayerNorm with eps 1e10
//! and weight 1e5 is then the identity, so the circuit is exact:
//!
//! - L0H0, previous-token head: q and k read positions (key j matches query j + 1), v reads the token.
//! - L1H0, induction head: q reads the current token, k reads L0H0's output (K-composition),
//!   v reads the token, output read by the unembedding.
//! - Distractors: L0H1..3, L1H1..3 and both MLPs write only into the junk dimensions.
#![allow(dead_code)]

use std::path::Path;

use interp::interp_core::tch;
use tch::{Kind, Tensor};

pub const VOCAB: i64 = 20;
const D: i64 = 128;
const DH: i64 = 32;
const CTX: i64 = 32;
const D_MLP: i64 = 64;
const POS: i64 = 20;
const PREV: i64 = 52;
const OUT: i64 = 72;
const JUNK: i64 = 92;
const SINK: i64 = 127;

/// The circuit's edges under zero ablation (as `EdgeGraph` prints them).
pub const ZERO_ABLATION_CIRCUIT: [&str; 7] =
    ["embed -> L0H0.q", "embed -> L0H0.k", "embed -> L0H0.v", "L0H0 -> L1H0.k", "embed -> L1H0.q", "embed -> L1H0.v", "L1H0 -> logits"];

/// Under resample ablation positions are the same in both runs, so the positional q/k edges of
/// the previous-token head carry no difference.
pub const RESAMPLE_CIRCUIT: [&str; 5] = ["embed -> L0H0.v", "L0H0 -> L1H0.k", "embed -> L1H0.q", "embed -> L1H0.v", "L1H0 -> logits"];

fn set(w: &mut [f32], cols: i64, r: i64, c: i64, v: f32) {
    w[(r * cols + c) as usize] += v;
}

/// A write of `v` into dimension `dim`, balanced by the sink (columns of an output matrix).
fn write(w: &mut [f32], cols: i64, r: i64, dim: i64, v: f32) {
    set(w, cols, r, dim, v);
    set(w, cols, r, SINK, -v);
}

fn pseudo(i: i64, j: i64) -> f32 {
    ((i * 7919 + j * 104729) as f32 * 0.618).sin()
}

/// Writes the model (config.json, model.safetensors) into `dir`.
pub fn write_planted(dir: &Path) {
    std::fs::create_dir_all(dir).expect("dir");
    let a = 13.0f32; // q.k = a^2 / sqrt(32) ~ 30 for a match
    let mut tensors: Vec<(String, Tensor)> = Vec::new();
    let t = |v: Vec<f32>, shape: &[i64]| Tensor::from_slice(&v).view(shape);
    let mut wte = vec![0f32; (VOCAB * D) as usize];
    for tok in 0..VOCAB {
        write(&mut wte, D, tok, tok, 1.0);
    }
    let mut wpe = vec![0f32; (CTX * D) as usize];
    for p in 0..CTX {
        write(&mut wpe, D, p, POS + p, 1.0);
    }
    tensors.push(("wte.weight".into(), t(wte, &[VOCAB, D])));
    tensors.push(("wpe.weight".into(), t(wpe, &[CTX, D])));
    for layer in 0..2i64 {
        // c_attn: x @ W, columns [q heads | k heads | v heads], head h at h * DH.
        let mut qkv = vec![0f32; (D * 3 * D) as usize];
        let (q, k, v) = (0, D, 2 * D);
        let mut o = vec![0f32; (D * D) as usize];
        if layer == 0 {
            for i in 0..CTX - 1 {
                set(&mut qkv, 3 * D, POS + i + 1, q + i, a); // query at i + 1 ...
                set(&mut qkv, 3 * D, POS + i, k + i, a); // ... matches key at i
            }
            for tok in 0..VOCAB {
                set(&mut qkv, 3 * D, tok, v + tok, 1.0);
                write(&mut o, D, tok, PREV + tok, 1.0);
            }
            // L0H1: uniform attention, copies the token into junk.
            for tok in 0..VOCAB {
                set(&mut qkv, 3 * D, tok, v + DH + tok, 1.0);
                write(&mut o, D, DH + tok, JUNK + tok, 0.7);
            }
            // L0H2: attends to its own position, copies the position into junk.
            for p in 0..DH {
                set(&mut qkv, 3 * D, POS + p, q + 2 * DH + p, a);
                set(&mut qkv, 3 * D, POS + p, k + 2 * DH + p, a);
                set(&mut qkv, 3 * D, POS + p, v + 2 * DH + p, 1.0);
                write(&mut o, D, 2 * DH + p, JUNK + p % 35, 0.5);
            }
            // L0H3: uniform attention over positions, into junk.
            for p in 0..DH {
                set(&mut qkv, 3 * D, POS + p, v + 3 * DH + p, 1.0);
                write(&mut o, D, 3 * DH + p, JUNK + (p * 3) % 35, 0.4);
            }
        } else {
            // L1H0: induction head.
            for tok in 0..VOCAB {
                set(&mut qkv, 3 * D, tok, q + tok, a);
                set(&mut qkv, 3 * D, PREV + tok, k + tok, a);
                set(&mut qkv, 3 * D, tok, v + tok, 1.0);
                write(&mut o, D, tok, OUT + tok, 1.0);
            }
            // L1H1: reads junk, writes junk.
            for j in 0..DH.min(35) {
                set(&mut qkv, 3 * D, JUNK + j, q + DH + j, 0.5);
                set(&mut qkv, 3 * D, JUNK + j, k + DH + j, 0.5);
                set(&mut qkv, 3 * D, JUNK + j, v + DH + j, 1.0);
                write(&mut o, D, DH + j, JUNK + (j + 5) % 35, 0.6);
            }
            // L1H2: attends to earlier copies of the current token, writes junk.
            for tok in 0..VOCAB {
                set(&mut qkv, 3 * D, tok, q + 2 * DH + tok, a);
                set(&mut qkv, 3 * D, tok, k + 2 * DH + tok, a);
                set(&mut qkv, 3 * D, tok, v + 2 * DH + tok, 1.0);
                write(&mut o, D, 2 * DH + tok, JUNK + (tok + 11) % 35, 0.8);
            }
            // L1H3: reads the previous-token subspace, writes junk.
            for tok in 0..VOCAB {
                set(&mut qkv, 3 * D, PREV + tok, k + 3 * DH + tok, 1.0);
                set(&mut qkv, 3 * D, PREV + tok, v + 3 * DH + tok, 1.0);
                write(&mut o, D, 3 * DH + tok, JUNK + (tok + 17) % 35, 0.9);
            }
        }
        // MLP: reads tokens (and junk in layer 1), writes junk.
        let mut fc = vec![0f32; (D * D_MLP) as usize];
        let mut proj = vec![0f32; (D_MLP * D) as usize];
        for n in 0..D_MLP {
            for tok in 0..VOCAB {
                set(&mut fc, D_MLP, tok, n, pseudo(layer * 100 + tok, n));
            }
            if layer == 1 {
                for j in 0..35 {
                    set(&mut fc, D_MLP, JUNK + j, n, 0.3 * pseudo(j, n + 7));
                }
            }
            for j in 0..35 {
                write(&mut proj, D, n, JUNK + j, 0.2 * pseudo(n + layer, j + 3));
            }
        }
        let h = format!("h.{layer}");
        let ln = |name: &str| {
            [
                (format!("{h}.{name}.weight"), Tensor::full([D], 1e5, (Kind::Float, tch::Device::Cpu))),
                (format!("{h}.{name}.bias"), Tensor::zeros([D], (Kind::Float, tch::Device::Cpu))),
            ]
        };
        tensors.extend(ln("ln_1"));
        tensors.extend(ln("ln_2"));
        tensors.push((format!("{h}.attn.c_attn.weight"), t(qkv, &[D, 3 * D])));
        tensors.push((format!("{h}.attn.c_attn.bias"), Tensor::zeros([3 * D], (Kind::Float, tch::Device::Cpu))));
        tensors.push((format!("{h}.attn.c_proj.weight"), t(o, &[D, D])));
        tensors.push((format!("{h}.attn.c_proj.bias"), Tensor::zeros([D], (Kind::Float, tch::Device::Cpu))));
        tensors.push((format!("{h}.mlp.c_fc.weight"), t(fc, &[D, D_MLP])));
        tensors.push((format!("{h}.mlp.c_fc.bias"), Tensor::zeros([D_MLP], (Kind::Float, tch::Device::Cpu))));
        tensors.push((format!("{h}.mlp.c_proj.weight"), t(proj, &[D_MLP, D])));
        tensors.push((format!("{h}.mlp.c_proj.bias"), Tensor::zeros([D], (Kind::Float, tch::Device::Cpu))));
    }
    tensors.push(("ln_f.weight".into(), Tensor::full([D], 1e5, (Kind::Float, tch::Device::Cpu))));
    tensors.push(("ln_f.bias".into(), Tensor::zeros([D], (Kind::Float, tch::Device::Cpu))));
    let mut lm = vec![0f32; (VOCAB * D) as usize];
    for tok in 0..VOCAB {
        set(&mut lm, D, tok, OUT + tok, 10.0);
    }
    tensors.push(("lm_head.weight".into(), t(lm, &[VOCAB, D])));
    Tensor::write_safetensors(&tensors, dir.join("model.safetensors")).expect("weights");
    let config = serde_json::json!({
        "model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "n_layer": 2, "n_embd": D, "n_head": 4,
        "n_inner": D_MLP, "vocab_size": VOCAB, "n_positions": CTX, "activation_function": "gelu_new",
        "layer_norm_epsilon": 1e10, "tie_word_embeddings": false, "bos_token_id": 0,
    });
    std::fs::write(dir.join("config.json"), serde_json::to_string_pretty(&config).expect("json")).expect("config");
}

/// `n` induction prompts: BOS, 10 distinct tokens, then the first 9 again; the answer is the
/// 10th. The corrupted prompts are built the same way from other tokens.
pub fn prompts(n: usize, seed: u64) -> (Tensor, Tensor, Tensor) {
    let mut state = seed;
    let mut next = |k: usize| {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((state >> 33) as usize) % k
    };
    let row = |next: &mut dyn FnMut(usize) -> usize| {
        let mut toks: Vec<i64> = (1..VOCAB).collect();
        for i in (1..toks.len()).rev() {
            toks.swap(i, next(i + 1));
        }
        let seq = &toks[..10];
        let mut r = vec![0i64];
        r.extend_from_slice(seq);
        r.extend_from_slice(&seq[..9]);
        (r, seq[9])
    };
    let (mut clean, mut corrupted, mut answer) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..n {
        let (c, a) = row(&mut next);
        let (x, _) = row(&mut next);
        clean.extend(c);
        corrupted.extend(x);
        answer.push(a);
    }
    (Tensor::from_slice(&clean).view([n as i64, 20]), Tensor::from_slice(&corrupted).view([n as i64, 20]), Tensor::from_slice(&answer))
}
