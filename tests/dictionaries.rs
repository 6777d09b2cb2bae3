//! Sparse dictionaries: recovery of planted features by every architecture, formats, metrics and
//! bad input.

mod common;

use interp::interp_core::tch;
use interp::transcoders::{
    train_dictionaries, Architecture, DictionaryConfig, InMemoryActivations, SaeTrainConfig, SparseDictionary,
};
use tch::{Device, Kind, Tensor};

const D: i64 = 32;
const N_FEATURES: i64 = 48;

/// Unit directions [n, d] from a seed.
fn directions(n: i64, d: i64, seed: i64) -> Tensor {
    tch::manual_seed(seed);
    let u = Tensor::randn([n, d], (Kind::Float, Device::Cpu));
    &u / u.norm_scalaropt_dim(2.0, [1], true)
}

/// Sparse coefficients [tokens, N_FEATURES]: each feature fires with probability 3/48, with a
/// magnitude in [0.5, 1.5].
fn coefficients(tokens: i64, seed: i64) -> Tensor {
    tch::manual_seed(seed);
    let on = Tensor::rand([tokens, N_FEATURES], (Kind::Float, Device::Cpu)).lt(3.0 / N_FEATURES as f64).to_kind(Kind::Float);
    let mag = Tensor::rand([tokens, N_FEATURES], (Kind::Float, Device::Cpu)) + 0.5;
    on * mag
}

/// Mean over true directions [n, d] of the best cosine similarity with a row of `rows` [m, d].
fn recovery(truth: &Tensor, rows: &Tensor) -> f64 {
    let r = rows / rows.norm_scalaropt_dim(2.0, [1], true).clamp_min(1e-8);
    truth.matmul(&r.tr()).amax([1], false).mean(Kind::Double).double_value(&[])
}

fn quiet(steps: usize) -> SaeTrainConfig {
    SaeTrainConfig { steps, lr: 3e-3, warmup_steps: 50, sparsity_warmup_steps: 100, dead_tokens: 20_000, log_every: 50, progress: false, ..Default::default() }
}

fn train_planted(architecture: Architecture, cfg: &SaeTrainConfig) -> f64 {
    let truth = directions(N_FEATURES, D, 1);
    let x = coefficients(65_536, 2).matmul(&truth);
    let mut source = InMemoryActivations::new(vec![("x".into(), x)], 1024).unwrap();
    let mut dict = SparseDictionary::init(DictionaryConfig::sae(architecture, "x", D, 2 * N_FEATURES), 0, Device::Cpu).unwrap();
    train_dictionaries(std::slice::from_mut(&mut dict), &mut source, cfg).unwrap();
    recovery(&truth, &dict.w_dec)
}

#[test]
fn every_architecture_recovers_planted_features() {
    let cases: [(Architecture, SaeTrainConfig); 5] = [
        (Architecture::ReluL1, SaeTrainConfig { l1_coefficient: 0.3, ..quiet(1500) }),
        (Architecture::TopK { k: 4 }, quiet(1500)),
        (Architecture::BatchTopK { k: 4 }, quiet(1500)),
        (Architecture::JumpRelu, SaeTrainConfig { l0_coefficient: 0.5, ..quiet(1500) }),
        (Architecture::Gated, SaeTrainConfig { l1_coefficient: 3.0, ..quiet(1500) }),
    ];
    let mut failures = Vec::new();
    for (arch, cfg) in cases {
        let score = train_planted(arch, &cfg);
        eprintln!("{arch:?}: mean best cosine {score:.4}");
        if score < 0.95 {
            failures.push(format!("{arch:?} {score:.4}"));
        }
    }
    assert!(failures.is_empty(), "below 0.95: {failures:?}");
}

#[test]
fn transcoders_recover_planted_input_output_pairs() {
    // x = c U, y = c V: a transcoder's decoder must find V. A skip transcoder's linear path takes
    // the part of y that is linear in x, so its latents need not align with V; it must fit at
    // least as well.
    let (u, v) = (directions(N_FEATURES, D, 3), directions(N_FEATURES, 24, 4));
    let c = coefficients(65_536, 5);
    let mut fvu = Vec::new();
    for skip in [false, true] {
        let mut source = InMemoryActivations::new(vec![("in".into(), c.matmul(&u)), ("out".into(), c.matmul(&v))], 1024).unwrap();
        let cfg = DictionaryConfig::transcoder(Architecture::TopK { k: 4 }, skip, "in", "out", D, 24, 2 * N_FEATURES);
        let mut dict = SparseDictionary::init(cfg, 0, Device::Cpu).unwrap();
        let report = train_dictionaries(std::slice::from_mut(&mut dict), &mut source, &quiet(1500)).unwrap();
        let score = recovery(&v, &dict.w_dec);
        fvu.push(report[0].log.last().unwrap().fvu);
        eprintln!("transcoder (skip {skip}): mean best cosine {score:.4}, FVU {:.4}", fvu.last().unwrap());
        if !skip {
            assert!(score >= 0.95, "{score}");
        } else {
            assert!(dict.w_skip.as_ref().unwrap().abs().max().double_value(&[]) > 0.01, "the skip path stayed at zero");
        }
    }
    assert!(fvu[0] < 0.15 && fvu[1] <= fvu[0], "FVU plain {} skip {}", fvu[0], fvu[1]);
}
