//! Sparse dictionaries: recovery of planted features by every architecture, formats, metrics and
//! bad input.

use crate::common;

use crate::common::FailsAt;

use interp::interp_core::tch;
use interp::interp_core::{CacheSpec, HookedTransformer, Rng};
use interp::transcoders::{
    evaluate, evaluate_activations, load_circuit_tracer, save_circuit_tracer, train_dictionaries, ActivationSource, ActivationStore, Architecture,
    CachedActivations, DictionaryConfig, InMemoryActivations, SaeTrainConfig, SparseDictionary, StoreConfig,
};
use tch::{Device, Kind, Tensor};

const D: i64 = 32;
const N_FEATURES: i64 = 48;

/// Unit directions [n, d] from a seed.
fn directions(n: i64, d: i64, seed: u64) -> Tensor {
    let u = common::normal(&mut Rng::new(seed), &[n, d]);
    &u / u.norm_scalaropt_dim(2.0, [1], true)
}

/// Sparse coefficients [tokens, N_FEATURES]: each feature fires with probability 3/48, with a
/// magnitude in [0.5, 1.5].
fn coefficients(tokens: i64, seed: u64) -> Tensor {
    let mut rng = Rng::new(seed);
    let on = common::uniform(&mut rng, &[tokens, N_FEATURES]).lt(3.0 / N_FEATURES as f64).to_kind(Kind::Float);
    let mag = common::uniform(&mut rng, &[tokens, N_FEATURES]) + 0.5;
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
    recovery(&truth, dict.w_dec())
}

/// Trains `architecture` on the planted features and asserts that it recovers them (mean best
/// cosine at least 0.95). One test per architecture, so that they run side by side.
fn recovers_planted_features(architecture: Architecture, cfg: SaeTrainConfig) {
    let score = train_planted(architecture, &cfg);
    eprintln!("{architecture:?}: mean best cosine {score:.4}");
    assert!(score >= 0.95, "{architecture:?}: mean best cosine {score:.4}, below 0.95");
}

#[test]
fn relu_l1_recovers_planted_features() {
    // The slowest to converge: 0.961 after 600 steps, 0.968 after 1,500.
    recovers_planted_features(Architecture::ReluL1, SaeTrainConfig { l1_coefficient: 0.3, ..quiet(1500) });
}

#[test]
fn topk_recovers_planted_features() {
    recovers_planted_features(Architecture::TopK { k: 4 }, quiet(600));
}

#[test]
fn batch_topk_recovers_planted_features() {
    recovers_planted_features(Architecture::BatchTopK { k: 4 }, quiet(600));
}

#[test]
fn jumprelu_recovers_planted_features() {
    recovers_planted_features(Architecture::JumpRelu, SaeTrainConfig { l0_coefficient: 0.5, ..quiet(600) });
}

#[test]
fn gated_recovers_planted_features() {
    recovers_planted_features(Architecture::Gated, SaeTrainConfig { l1_coefficient: 3.0, ..quiet(600) });
}

#[test]
fn sparse_topk_gradients_equal_dense_ones() {
    // The sparse path builds the encoder's gradient from the k chosen pre-activations (and the
    // AuxK ones); it must train exactly as autograd through the dense product does.
    let x = coefficients(4096, 21).matmul(&directions(N_FEATURES, D, 22)) + 0.3;
    let y = x.matmul(&directions(D, 24, 23));
    for cfg in
        [DictionaryConfig::sae(Architecture::TopK { k: 4 }, "x", D, 96), DictionaryConfig::transcoder(Architecture::TopK { k: 4 }, true, "x", "y", D, 24, 96)]
    {
        let train = |sparse_decode: bool| {
            let mut source = InMemoryActivations::new(vec![("x".into(), x.shallow_clone()), ("y".into(), y.shallow_clone())], 512).unwrap();
            let mut dict = SparseDictionary::init(cfg.clone(), 0, Device::Cpu).unwrap();
            // A short dead window, so that AuxK runs on most steps.
            let c = SaeTrainConfig { sparse_decode, dead_tokens: 1024, ..quiet(40) };
            train_dictionaries(std::slice::from_mut(&mut dict), &mut source, &c).unwrap();
            dict
        };
        let (sparse, dense) = (train(true), train(false));
        for (a, b) in [(sparse.w_enc(), dense.w_enc()), (sparse.b_enc(), dense.b_enc()), (sparse.w_dec(), dense.w_dec()), (sparse.b_dec(), dense.b_dec())] {
            let rel = common::max_abs_diff(a, b) / b.abs().max().double_value(&[]);
            assert!(rel < 1e-4, "{:?}: {rel}", cfg.kind);
        }
    }
}

#[test]
fn matryoshka_prefixes_learn_the_frequent_features_first() {
    // 8 frequent features (p = 0.2) and 40 rare ones (p = 0.04). The inner prefix of 8 latents
    // must reconstruct alone, so it holds the frequent features; all 48 are recovered overall.
    // Measured on this draw: all features 0.935 (Matryoshka) and 0.977 (BatchTopK); the frequent
    // ones by the first 8 latents 0.931 against 0.235, the same from 600 to 1,200 steps.
    let truth = directions(N_FEATURES, D, 11);
    let mut rng = Rng::new(12);
    let p = Tensor::cat(&[Tensor::full([8], 0.2, (Kind::Float, Device::Cpu)), Tensor::full([N_FEATURES - 8], 0.04, (Kind::Float, Device::Cpu))], 0);
    let on = common::uniform(&mut rng, &[65_536, N_FEATURES]).lt_tensor(&p).to_kind(Kind::Float);
    let x = (on * (common::uniform(&mut rng, &[65_536, N_FEATURES]) + 0.5)).matmul(&truth);
    let mut prefix_scores = Vec::new();
    for widths in [vec![8, 2 * N_FEATURES], vec![]] {
        let mut source = InMemoryActivations::new(vec![("x".into(), x.shallow_clone())], 1024).unwrap();
        let cfg = match widths.is_empty() {
            true => DictionaryConfig::sae(Architecture::BatchTopK { k: 4 }, "x", D, 2 * N_FEATURES),
            false => DictionaryConfig::matryoshka(4, &widths, "x", D),
        };
        let mut dict = SparseDictionary::init(cfg, 0, Device::Cpu).unwrap();
        train_dictionaries(std::slice::from_mut(&mut dict), &mut source, &quiet(600)).unwrap();
        let (all, prefix) = (recovery(&truth, dict.w_dec()), recovery(&truth.narrow(0, 0, 8), &dict.w_dec().narrow(0, 0, 8)));
        eprintln!("widths {widths:?}: all features {all:.4}, frequent features by the first 8 latents {prefix:.4}");
        assert!(all >= 0.92, "{widths:?}: {all}");
        prefix_scores.push(prefix);
    }
    assert!(prefix_scores[0] >= 0.9 && prefix_scores[1] < 0.5, "{prefix_scores:?}");
    // Widths must nest up to d_sae.
    let err = SparseDictionary::init(DictionaryConfig { d_sae: 90, ..DictionaryConfig::matryoshka(4, &[8, 96], "x", D) }, 0, Device::Cpu);
    let err = err.err().unwrap();
    assert!(matches!(&err, interp::transcoders::Error::Setting { name, value, .. } if name == "matryoshka_widths" && value == "[8, 96]"), "{err}");
    assert!(err.to_string().contains("increasing from above 0 to d_sae = 90"), "{err}");
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
        let report = train_dictionaries(std::slice::from_mut(&mut dict), &mut source, &quiet(600)).unwrap();
        let score = recovery(&v, dict.w_dec());
        fvu.push(report[0].log.last().unwrap().fvu);
        eprintln!("transcoder (skip {skip}): mean best cosine {score:.4}, FVU {:.4}", fvu.last().unwrap());
        if !skip {
            assert!(score >= 0.95, "{score}");
        } else {
            assert!(dict.w_skip().unwrap().abs().max().double_value(&[]) > 0.01, "the skip path stayed at zero");
        }
    }
    assert!(fvu[0] < 0.15 && fvu[1] <= fvu[0], "FVU plain {} skip {}", fvu[0], fvu[1]);
}

fn text_model() -> HookedTransformer {
    HookedTransformer::from_pretrained_dir(common::repo("models/shakespeare-gpt2"), Device::Cpu, Kind::Float).unwrap()
}

/// 8 contexts of 64 tokens of real text.
fn text_contexts(model: &HookedTransformer) -> Tensor {
    let text = "Now is the winter of our discontent made glorious summer by this sun of York; and all the clouds that lour'd upon our house in the deep bosom of the ocean buried. ".repeat(20);
    let ids = model.to_tokens(&text, false).unwrap();
    ids.narrow(1, 0, 512).reshape([8, 64])
}

/// ReLU SAE with W_enc = [I, -I], W_dec = [I; -I]: reconstructs its input exactly.
fn identity_sae(hook: &str, d: i64) -> SparseDictionary {
    let eye = Tensor::eye(d, (Kind::Float, Device::Cpu));
    SparseDictionary::init(DictionaryConfig::sae(Architecture::ReluL1, hook, d, 2 * d), 0, Device::Cpu)
        .unwrap()
        .map_weights(|w| {
            w.w_enc = Tensor::cat(&[&eye, &(-&eye)], 1);
            w.w_dec = Tensor::cat(&[&eye, &(-&eye)], 0);
        })
        .unwrap()
}

#[test]
fn metrics_match_closed_forms() {
    let model = text_model();
    let contexts = text_contexts(&model);
    let hook = "blocks.0.hook_resid_post";
    let d = model.cfg.d_model;
    // Exact reconstruction: FVU 0, all CE recovered, no KL, L0 = d (no coordinate is exactly 0).
    let m = evaluate(&identity_sae(hook, d), &model, &contexts, 3).unwrap();
    assert_eq!(m.n_tokens, 8 * 63);
    assert!(m.fvu < 1e-10, "{}", m.fvu);
    let down = m.downstream.as_ref().unwrap();
    assert!((down.ce_loss_recovered - 1.0).abs() < 1e-6 && down.delta_loss.abs() < 1e-6 && down.kl_spliced.abs() < 1e-6, "{m:?}");
    assert_eq!(m.l0, d as f64);
    assert!((m.shrinkage - 1.0).abs() < 1e-6);
    assert_eq!(m.dead_fraction, 0.0);
    // Predicting the dataset mean: FVU exactly 1 (the denominator is centred on the dataset mean).
    let (_, cache) = model.run_with_cache(&contexts, CacheSpec::names([hook])).unwrap();
    let mean = cache.get(hook).unwrap().narrow(1, 1, 63).reshape([-1, d]).mean_dim(0, false, Kind::Float);
    let mean_dict = identity_sae(hook, d).map_weights(|w| (w.w_dec, w.b_dec) = (w.w_dec.zeros_like(), mean.shallow_clone())).unwrap();
    let m = evaluate(&mean_dict, &model, &contexts, 8).unwrap();
    assert!((m.fvu - 1.0).abs() < 1e-4, "{}", m.fvu);
    // Without the model, on the same activations: the same reconstruction metrics, no downstream.
    let acts = cache.get(hook).unwrap().narrow(1, 1, 63).reshape([-1, d]);
    let mut source = InMemoryActivations::new(vec![(hook.to_string(), acts)], 8 * 63 / 2).unwrap();
    let alone = evaluate_activations(&mean_dict, &mut source, 2).unwrap();
    assert!(alone.downstream.is_none() && alone.n_tokens == m.n_tokens && (alone.fvu - m.fvu).abs() < 1e-9 && alone.l0 == m.l0, "{alone:?}");
    // Zero output: the spliced run is the zero ablation, so nothing is recovered.
    let mean_dict = mean_dict.map_weights(|w| w.b_dec = mean.zeros_like()).unwrap();
    let m = evaluate(&mean_dict, &model, &contexts, 8).unwrap();
    let down = m.downstream.as_ref().unwrap();
    assert!(down.ce_loss_recovered.abs() < 1e-9 && down.ce_zero_ablation > down.ce_clean, "{m:?}");
    assert_eq!(m.dead_fraction, 0.0, "the encoder still fires");
}

#[test]
fn saelens_files_round_trip_for_every_architecture() {
    let dir = tempdir("roundtrip");
    let x = Tensor::randn([50, 16], (Kind::Float, Device::Cpu));
    let kinds = [
        DictionaryConfig::sae(Architecture::ReluL1, "blocks.0.hook_resid_post", 16, 40),
        DictionaryConfig::sae(Architecture::TopK { k: 5 }, "blocks.0.hook_resid_post", 16, 40),
        DictionaryConfig::sae(Architecture::JumpRelu, "blocks.0.hook_resid_post", 16, 40),
        DictionaryConfig::sae(Architecture::Gated, "blocks.0.hook_resid_post", 16, 40),
        DictionaryConfig::transcoder(Architecture::ReluL1, false, "blocks.0.ln2.hook_normalized", "blocks.0.hook_mlp_out", 16, 12, 40),
        DictionaryConfig::transcoder(Architecture::JumpRelu, true, "blocks.0.ln2.hook_normalized", "blocks.0.hook_mlp_out", 16, 12, 40),
        DictionaryConfig::transcoder(Architecture::TopK { k: 3 }, true, "blocks.0.ln2.hook_normalized", "blocks.0.hook_mlp_out", 16, 12, 40),
    ];
    for (i, cfg) in kinds.into_iter().enumerate() {
        // Random non-zero values everywhere, so a swapped or dropped tensor shows.
        let dict = SparseDictionary::init(cfg, i as i64, Device::Cpu)
            .unwrap()
            .map_weights(|w| {
                for t in [&mut w.b_enc, &mut w.b_dec].into_iter().chain([&mut w.r_mag, &mut w.b_mag, &mut w.w_skip].into_iter().flatten()) {
                    *t = Tensor::randn(t.size(), (Kind::Float, Device::Cpu)) * 0.1;
                }
            })
            .unwrap();
        let path = dir.join(format!("d{i}"));
        dict.save_saelens(&path, None).unwrap();
        let back = SparseDictionary::load_saelens(&path, Device::Cpu).unwrap();
        assert_eq!(back.cfg(), dict.cfg());
        assert_eq!(common::max_abs_diff(&back.forward(&x).unwrap(), &dict.forward(&x).unwrap()), 0.0, "{:?}", dict.cfg());
    }
}

#[test]
fn loads_sparsify_and_circuit_tracer_layouts() {
    let dir = tempdir("layouts");
    let x = Tensor::randn([30, 16], (Kind::Float, Device::Cpu));
    // sparsify: encoder.weight [n, d_in], W_dec [n, d], skip path [d, d].
    let tc = SparseDictionary::init(
        DictionaryConfig::transcoder(Architecture::TopK { k: 4 }, true, "blocks.0.ln2.hook_normalized", "blocks.0.hook_mlp_out", 16, 16, 48),
        1,
        Device::Cpu,
    )
    .unwrap()
    .map_weights(|w| {
        (w.b_enc, w.w_skip) = (Tensor::randn([48], (Kind::Float, Device::Cpu)) * 0.1, Some(Tensor::randn([16, 16], (Kind::Float, Device::Cpu)) * 0.1))
    })
    .unwrap();
    let sp = dir.join("sparsify");
    std::fs::create_dir_all(&sp).unwrap();
    std::fs::write(sp.join("cfg.json"), r#"{"activation": "topk", "expansion_factor": 3, "normalize_decoder": true, "num_latents": 48, "k": 4, "multi_topk": false, "skip_connection": true, "transcode": true, "d_in": 16}"#).unwrap();
    Tensor::write_safetensors(
        &[
            ("encoder.weight", tc.w_enc().tr().contiguous()),
            ("encoder.bias", tc.b_enc().shallow_clone()),
            ("W_dec", tc.w_dec().shallow_clone()),
            ("b_dec", tc.b_dec().shallow_clone()),
            ("W_skip", tc.w_skip().unwrap().shallow_clone()),
        ],
        sp.join("sae.safetensors"),
    )
    .unwrap();
    let back = SparseDictionary::load_sparsify(&sp, "blocks.0.ln2.hook_normalized", "blocks.0.hook_mlp_out", Device::Cpu).unwrap();
    assert_eq!(common::max_abs_diff(&back.forward(&x).unwrap(), &tc.forward(&x).unwrap()), 0.0);
    // circuit-tracer: one file per layer, W_enc [d_tc, d], JumpReLU threshold under its module name.
    let ct = dir.join("circuit-tracer");
    std::fs::create_dir_all(&ct).unwrap();
    std::fs::write(ct.join("config.yaml"), "model_name: \"shakespeare\"\nfeature_input_hook: \"ln2.hook_normalized\"\nfeature_output_hook: \"hook_mlp_out\"\ntranscoders:\n  - \"layer_0.safetensors\"\n  - \"layer_1.safetensors\"\n").unwrap();
    let mut layers = Vec::new();
    for l in 0..2 {
        let j = SparseDictionary::init(DictionaryConfig::transcoder(Architecture::JumpRelu, false, "a", "b", 16, 16, 48), 10 + l, Device::Cpu)
            .unwrap()
            .map_weights(|w| w.threshold = Some(Tensor::rand([48], (Kind::Float, Device::Cpu)) * 0.5))
            .unwrap();
        Tensor::write_safetensors(
            &[
                ("W_enc", j.w_enc().tr().contiguous()),
                ("W_dec", j.w_dec().shallow_clone()),
                ("b_enc", j.b_enc().shallow_clone()),
                ("b_dec", j.b_dec().shallow_clone()),
                ("activation_function.threshold", j.threshold().unwrap().shallow_clone()),
            ],
            ct.join(format!("layer_{l}.safetensors")),
        )
        .unwrap();
        layers.push(j);
    }
    let loaded = load_circuit_tracer(&ct, Device::Cpu).unwrap();
    assert_eq!(loaded.len(), 2);
    assert_eq!(loaded[1].cfg().hook_name, "blocks.1.ln2.hook_normalized");
    assert_eq!(loaded[1].cfg().hook_name_out, "blocks.1.hook_mlp_out");
    for (a, b) in loaded.iter().zip(&layers) {
        assert_eq!(common::max_abs_diff(&a.forward(&x).unwrap(), &b.forward(&x).unwrap()), 0.0);
    }
    // We write sets circuit-tracer reads (scripts/check_saelens.sh checks it loads them as the
    // same functions) and read them back.
    let make = |l: i64, arch: Architecture| {
        let cfg = DictionaryConfig::transcoder(arch, true, &format!("blocks.{l}.ln2.hook_normalized"), &format!("blocks.{l}.hook_mlp_out"), 16, 16, 48);
        SparseDictionary::init(cfg, 20 + l, Device::Cpu).unwrap()
    };
    let relu = vec![make(0, Architecture::ReluL1), make(1, Architecture::ReluL1)];
    let written = dir.join("written");
    save_circuit_tracer(&relu, "test-scan", &written).unwrap();
    for (a, b) in load_circuit_tracer(&written, Device::Cpu).unwrap().iter().zip(&relu) {
        assert_eq!(a.cfg().architecture, Architecture::ReluL1);
        assert_eq!(common::max_abs_diff(&a.forward(&x).unwrap(), &b.forward(&x).unwrap()), 0.0);
    }
    save_circuit_tracer(&[make(0, Architecture::JumpRelu), make(1, Architecture::JumpRelu)], "test-scan", &written).unwrap();
    assert_eq!(load_circuit_tracer(&written, Device::Cpu).unwrap()[0].cfg().architecture, Architecture::JumpRelu);
    // Without a threshold, the activation must be named: never a silent ReLU for a TopK set.
    save_circuit_tracer(&relu, "test-scan", &written).unwrap();
    let undeclared = std::fs::read_to_string(written.join("config.yaml")).unwrap().replace("activation_function: relu\n", "");
    std::fs::write(written.join("config.yaml"), &undeclared).unwrap();
    let err = load_circuit_tracer(&written, Device::Cpu).err().unwrap().to_string();
    assert!(
        err.contains("layer_0.safetensors: no `activation_function.threshold` and config.yaml names no activation")
            && err.contains("`activation_function: topk` and `k: K`"),
        "{err}"
    );
    std::fs::write(written.join("config.yaml"), undeclared.replace("transcoders:", "activation_function: topk\nk: 4\ntranscoders:")).unwrap();
    assert_eq!(load_circuit_tracer(&written, Device::Cpu).unwrap()[1].cfg().architecture, Architecture::TopK { k: 4 });
    // What circuit-tracer cannot hold is refused with the reason.
    let err = save_circuit_tracer(&[make(0, Architecture::TopK { k: 4 })], "s", dir.join("topk")).err().unwrap().to_string();
    assert!(err.contains("circuit-tracer 0.5.0 has no TopK transcoders"), "{err}");
    let err = save_circuit_tracer(&[make(1, Architecture::ReluL1), make(0, Architecture::ReluL1)], "s", dir.join("shuffled")).err().unwrap().to_string();
    assert!(err.contains("layer 0's hooks `blocks.1.ln2.hook_normalized`"), "{err}");
}

fn tempdir(name: &str) -> common::Scratch {
    common::Scratch::new(&format!("dict-{name}"))
}

#[test]
fn loads_what_saelens_saved_and_matches_its_outputs() {
    // Folders written by SAELens 6.54.12's `save_model` (scripts/check_saelens.sh), with its own
    // encode/decode of an input: inference folders of every architecture, a TopK SAE with
    // `rescale_acts_by_decoder_norm` and decoder norms 0.5-2, and training checkpoints (TopK,
    // BatchTopK, Matryoshka BatchTopK; their reference is SAELens's own inference form).
    let root = common::repo("tests/fixtures/saelens");
    let archs = [
        "batchtopk_training",
        "gated",
        "jumprelu",
        "jumprelu_transcoder",
        "matryoshka_training",
        "skip_transcoder",
        "standard",
        "topk",
        "topk_rescaled",
        "topk_training",
        "transcoder",
    ];
    // Every folder the script wrote is checked, and nothing else.
    let mut folders: Vec<String> = std::fs::read_dir(&root).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    folders.sort();
    assert_eq!(folders, archs);
    for arch in archs {
        let dir = root.join(arch);
        let dict = SparseDictionary::load_saelens(&dir, Device::Cpu).unwrap();
        let reference: std::collections::HashMap<String, Tensor> = Tensor::read_safetensors(dir.join("reference.safetensors")).unwrap().into_iter().collect();
        let x = &reference["x"];
        let f = dict.encode(x).unwrap();
        let worst = common::max_abs_diff(&f, &reference["feature_acts"]).max(common::max_abs_diff(&dict.forward(x).unwrap(), &reference["sae_out"]));
        eprintln!("{arch}: max |ours - SAELens| = {worst:.2e}");
        assert!(worst < 1e-5, "{arch}: {worst}");
    }
    // Read without folding the decoder norms, the rescaled SAE is another function.
    let dir = tempdir("unfolded");
    for f in ["cfg.json", "sae_weights.safetensors"] {
        std::fs::copy(root.join("topk_rescaled").join(f), dir.join(f)).unwrap();
    }
    let cfg =
        std::fs::read_to_string(dir.join("cfg.json")).unwrap().replace("\"rescale_acts_by_decoder_norm\": true", "\"rescale_acts_by_decoder_norm\": false");
    std::fs::write(dir.join("cfg.json"), cfg).unwrap();
    let reference: std::collections::HashMap<String, Tensor> =
        Tensor::read_safetensors(root.join("topk_rescaled/reference.safetensors")).unwrap().into_iter().collect();
    let unfolded = SparseDictionary::load_saelens(&dir, Device::Cpu).unwrap();
    assert!(common::max_abs_diff(&unfolded.encode(&reference["x"]).unwrap(), &reference["feature_acts"]) > 0.1);
}

#[test]
fn saelens_fields_are_honoured_or_refused_by_name() {
    let root = common::repo("tests/fixtures/saelens");
    let dir = tempdir("fields");
    let with_cfg = |from: &str, edit: &dyn Fn(&mut serde_json::Value)| {
        for f in ["cfg.json", "sae_weights.safetensors"] {
            std::fs::copy(root.join(from).join(f), dir.join(f)).unwrap();
        }
        let _ = std::fs::remove_file(dir.join("activation_scaler.json"));
        let mut cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("cfg.json")).unwrap()).unwrap();
        edit(&mut cfg);
        std::fs::write(dir.join("cfg.json"), cfg.to_string()).unwrap();
        SparseDictionary::load_saelens(&*dir, Device::Cpu).map_err(|e| e.to_string())
    };
    for (from, edit, expected) in [
        (
            "topk",
            Box::new(|c: &mut serde_json::Value| c["sparsity_schedule"] = 1.into()) as Box<dyn Fn(&mut serde_json::Value)>,
            "field `sparsity_schedule`: not a field this reader knows",
        ),
        ("standard", Box::new(|c| c["rescale_acts_by_decoder_norm"] = true.into()), "field `rescale_acts_by_decoder_norm`: SAELens defines it only for TopK"),
        ("topk", Box::new(|c| c["normalize_activations"] = "layer_norm".into()), "field `normalize_activations`: `layer_norm` is not supported"),
        (
            "topk",
            Box::new(|c| c["normalize_activations"] = "expected_average_only_in".into()),
            "does not hold (a SAELens training checkpoint keeps it in activation_scaler.json)",
        ),
        ("topk", Box::new(|c| c["reshape_activations"] = "hook_z".into()), "field `reshape_activations`"),
        ("topk", Box::new(|c| c["metadata"]["hook_head_index"] = 3.into()), "field `hook_head_index`: 3"),
        ("topk", Box::new(|c| c["k"] = 2.5.into()), "needs a whole number `k`"),
        ("standard", Box::new(|c| c["architecture"] = "temporal".into()), "unknown dictionary architecture `temporal`"),
    ] {
        let err = with_cfg(from, &*edit).err().unwrap_or_default();
        assert!(err.contains(expected) && err.contains("cfg.json") || expected.starts_with("unknown") && err.contains(expected), "{expected}: {err}");
    }
    // v5's TopK (architecture `standard`, activation_fn_str `topk`) is a TopK SAE, not a ReLU one.
    let v5 = with_cfg("topk", &|c| {
        c["architecture"] = "standard".into();
        c["activation_fn_str"] = "topk".into();
        c["activation_fn_kwargs"] = serde_json::json!({"k": 6});
        c.as_object_mut().unwrap().remove("k");
    });
    assert_eq!(v5.unwrap().cfg().architecture, Architecture::TopK { k: 6 });
    // A training checkpoint's activation scale is folded in: raw inputs give the scaled function.
    let plain = with_cfg("topk", &|_| {}).unwrap();
    std::fs::write(dir.join("activation_scaler.json"), r#"{"scaling_factor": 2.5, "has_whitening": false}"#).unwrap();
    let mut cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("cfg.json")).unwrap()).unwrap();
    cfg["normalize_activations"] = "expected_average_only_in".into();
    std::fs::write(dir.join("cfg.json"), cfg.to_string()).unwrap();
    let scaled = SparseDictionary::load_saelens(&*dir, Device::Cpu).unwrap();
    let x = Tensor::randn([10, 16], (Kind::Float, Device::Cpu));
    assert!(common::max_abs_diff(&scaled.encode(&x).unwrap(), &plain.encode(&(&x * 2.5)).unwrap()) < 1e-5);
    assert!(common::max_abs_diff(&scaled.forward(&x).unwrap(), &(plain.forward(&(&x * 2.5)).unwrap() / 2.5)) < 1e-5);
}

#[test]
fn resume_is_exact_and_refuses_other_configs() {
    let x = coefficients(8192, 7).matmul(&directions(N_FEATURES, D, 8));
    let source = || InMemoryActivations::new(vec![("x".into(), x.shallow_clone())], 512).unwrap();
    let fresh = || SparseDictionary::init(DictionaryConfig::sae(Architecture::TopK { k: 4 }, "x", D, 64), 0, Device::Cpu).unwrap();
    let dir = tempdir("resume");
    let cfg = SaeTrainConfig { checkpoint_every: 5, checkpoint_dir: Some(dir.to_path_buf()), dead_tokens: 2048, ..quiet(20) };
    let mut whole = fresh();
    train_dictionaries(std::slice::from_mut(&mut whole), &mut source(), &SaeTrainConfig { checkpoint_dir: None, ..cfg.clone() }).unwrap();
    let mut first = fresh();
    assert!(train_dictionaries(std::slice::from_mut(&mut first), &mut FailsAt(source(), 12), &cfg).is_err());
    let mut resumed = fresh();
    let report = train_dictionaries(std::slice::from_mut(&mut resumed), &mut source(), &cfg).unwrap();
    assert_eq!(report[0].resumed_at, 10);
    for (a, b) in [(&whole.w_enc(), &resumed.w_enc()), (&whole.w_dec(), &resumed.w_dec()), (&whole.b_dec(), &resumed.b_dec())] {
        assert_eq!(common::max_abs_diff(a, b), 0.0);
    }
    // Same folder, another dictionary: an error that says so, not a silent restart.
    let mut other = SparseDictionary::init(DictionaryConfig::sae(Architecture::TopK { k: 8 }, "x", D, 64), 0, Device::Cpu).unwrap();
    let err = train_dictionaries(std::slice::from_mut(&mut other), &mut source(), &cfg).err().unwrap().to_string();
    assert!(err.contains("another dictionary configuration"), "{err}");
}

#[test]
fn trainer_options_behave_as_documented() {
    use interp::interp_core::train::Schedule;
    // Learning rate: warmup, then decay to 0 over `decay_steps`, linear or cosine.
    let cfg = SaeTrainConfig { steps: 100, lr: 1.0, warmup_steps: 10, decay_steps: Some(40), ..Default::default() };
    assert!((cfg.lr_at(4) - 0.5).abs() < 1e-12 && (cfg.lr_at(50) - 1.0).abs() < 1e-12);
    assert!((cfg.lr_at(80) - 0.5).abs() < 1e-12 && cfg.lr_at(99) < 0.03);
    let cosine = SaeTrainConfig { schedule: Schedule::Cosine, ..cfg.clone() };
    assert!((cosine.lr_at(80) - 0.5).abs() < 1e-12 && (cosine.lr_at(70) - 0.5 * (1.0 - (std::f64::consts::PI * 0.75).cos())).abs() < 1e-12);
    assert_eq!(SaeTrainConfig { decay_steps: Some(0), ..cfg.clone() }.lr_at(99), 1.0);
    // A token budget in steps; less than one batch is an error.
    assert_eq!(SaeTrainConfig::steps_for_tokens(10_000, 4096).unwrap(), 3);
    let err = SaeTrainConfig::steps_for_tokens(1000, 4096).unwrap_err();
    assert!(matches!(&err, interp::transcoders::Error::Setting { name, value, .. } if name == "tokens" && value == "1000"), "{err}");
    assert!(err.to_string().contains("at least one batch (4096 tokens)"), "{err}");
    // A dictionary reading a hook the activations lack: the hook and what there is.
    let mut source = InMemoryActivations::new(vec![("x".into(), Tensor::randn([64, 8], (Kind::Float, Device::Cpu)))], 32).unwrap();
    let mut dict = SparseDictionary::init(DictionaryConfig::sae(Architecture::TopK { k: 2 }, "y", 8, 16), 0, Device::Cpu).unwrap();
    let err = train_dictionaries(std::slice::from_mut(&mut dict), &mut source, &quiet(2)).unwrap_err();
    assert!(matches!(&err, interp::transcoders::Error::MissingHook { hook, available } if hook == "y" && available == &["x"]), "{err}");

    // The curve is written as it goes; a resumed run rewrites the steps after its checkpoint.
    let x = coefficients(8192, 7).matmul(&directions(N_FEATURES, D, 8));
    let source = || InMemoryActivations::new(vec![("x".into(), x.shallow_clone())], 512).unwrap();
    let fresh = || SparseDictionary::init(DictionaryConfig::sae(Architecture::TopK { k: 4 }, "x", D, 64), 0, Device::Cpu).unwrap();
    let dir = tempdir("options");
    let log = dir.join("train_log.jsonl");
    let ckpt = dir.join("checkpoints");
    let cfg =
        SaeTrainConfig { log_every: 2, checkpoint_every: 5, checkpoint_dir: Some(ckpt.clone()), keep_checkpoints: 2, log_path: Some(log.clone()), ..quiet(20) };
    assert!(train_dictionaries(std::slice::from_mut(&mut fresh()), &mut FailsAt(source(), 13), &cfg).is_err());
    let steps = |text: &str| text.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["step"].as_u64().unwrap()).collect::<Vec<_>>();
    assert_eq!(steps(&std::fs::read_to_string(&log).unwrap()), [2, 4, 6, 8, 10, 12]);
    train_dictionaries(std::slice::from_mut(&mut fresh()), &mut source(), &cfg).unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(steps(&text), [2, 4, 6, 8, 10, 12, 14, 16, 18, 20]);
    let last: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    for key in ["dictionary", "step", "tokens", "loss", "l0", "fvu", "dead_fraction", "lr"] {
        assert!(last[key].is_number(), "{key}: {last}");
    }
    assert_eq!(last["tokens"], 20 * 512);
    // The newest two snapshots are kept, as SAELens folders reading raw activations.
    let mut kept: Vec<String> =
        std::fs::read_dir(&ckpt).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).filter(|n| n.starts_with("step_")).collect();
    kept.sort();
    assert_eq!(kept, ["step_15", "step_20"]);
    let mut trained = fresh();
    train_dictionaries(std::slice::from_mut(&mut trained), &mut source(), &SaeTrainConfig { checkpoint_dir: None, ..quiet(20) }).unwrap();
    let snapshot = SparseDictionary::load_saelens(ckpt.join("step_20"), Device::Cpu).unwrap();
    assert!(common::max_abs_diff(&snapshot.forward(&x).unwrap(), &trained.forward(&x).unwrap()) < 1e-4);

    // Fine-tuning starts from the trained function (normalisation and b_dec kept): one step at a
    // tiny learning rate changes it little.
    let before = trained.forward(&x).unwrap();
    let tune = SaeTrainConfig { fine_tune: true, lr: 1e-7, warmup_steps: 1, ..quiet(1) };
    train_dictionaries(std::slice::from_mut(&mut trained), &mut source(), &tune).unwrap();
    // Measured on average, not at the worst entry: where two latents nearly tie for the k-th
    // place, rounding may swap them and move that row by a whole latent (in one CI run, on
    // another draw of the data, the worst entry moved by 0.128 of the largest output).
    let after = trained.forward(&x).unwrap();
    let moved = (&after - &before).abs().mean(Kind::Double).double_value(&[]) / before.abs().mean(Kind::Double).double_value(&[]);
    assert!(moved < 1e-3, "{moved}");
    // Without `fine_tune`, b_dec restarts at the mean: the function moves.
    let mut restarted = SparseDictionary::load_saelens(ckpt.join("step_20"), Device::Cpu).unwrap();
    train_dictionaries(std::slice::from_mut(&mut restarted), &mut source(), &SaeTrainConfig { fine_tune: false, ..tune }).unwrap();
    assert!(common::max_abs_diff(&restarted.forward(&x).unwrap(), &before) / before.abs().max().double_value(&[]) > 1e-2);
}

#[test]
fn bad_input_gets_clear_errors() {
    let x = coefficients(4096, 9).matmul(&directions(N_FEATURES, D, 10));
    // Width mismatch between the dictionary and the activations.
    let mut wide = SparseDictionary::init(DictionaryConfig::sae(Architecture::ReluL1, "x", D + 1, 64), 0, Device::Cpu).unwrap();
    let mut source = InMemoryActivations::new(vec![("x".into(), x.shallow_clone())], 512).unwrap();
    let err = train_dictionaries(std::slice::from_mut(&mut wide), &mut source, &quiet(5)).err().unwrap().to_string();
    assert!(err.contains("width 32, but the dictionary expects 33"), "{err}");
    let model = text_model();
    let mismatched = identity_sae("blocks.0.hook_resid_post", 64);
    let err = evaluate(&mismatched, &model, &text_contexts(&model), 8).err().unwrap().to_string();
    assert!(err.contains("width 128, but the dictionary expects 64"), "{err}");
    // NaN in the activations: the batch is named.
    let poisoned = x.copy();
    let _ = poisoned.narrow(0, 1500, 1).fill_(f64::NAN);
    let mut source = InMemoryActivations::new(vec![("x".into(), poisoned)], 512).unwrap();
    let mut dict = SparseDictionary::init(DictionaryConfig::sae(Architecture::ReluL1, "x", D, 64), 0, Device::Cpu).unwrap();
    let err = train_dictionaries(std::slice::from_mut(&mut dict), &mut source, &quiet(5)).err().unwrap();
    assert!(matches!(&err, interp::transcoders::Error::NotFinite { hook, batch: 2 } if hook == "x"), "{err}");
    assert!(err.to_string().contains("activations of `x` in batch 2 contain NaN"), "{err}");
    // Weights are checked against the config when changed.
    let e = SparseDictionary::init(DictionaryConfig::sae(Architecture::JumpRelu, "x", D, 64), 0, Device::Cpu)
        .unwrap()
        .map_weights(|w| w.b_enc = Tensor::zeros([63], (Kind::Float, Device::Cpu)));
    assert!(e.err().unwrap().to_string().contains("`b_enc` has shape [63], expected [64]"));
    let e = SparseDictionary::init(DictionaryConfig::sae(Architecture::JumpRelu, "x", D, 64), 0, Device::Cpu).unwrap().map_weights(|w| w.threshold = None);
    assert!(e.err().unwrap().to_string().contains("needs `threshold`"));
    // A hook the source does not have.
    let mut source = InMemoryActivations::new(vec![("y".into(), x.shallow_clone())], 512).unwrap();
    let err = train_dictionaries(std::slice::from_mut(&mut dict), &mut source, &quiet(5)).err().unwrap().to_string();
    assert!(err.contains("no `x`"), "{err}");
    // Unknown architecture in cfg.json.
    let dir = tempdir("bad-arch");
    dict.save_saelens(&dir, None).unwrap();
    let cfg = std::fs::read_to_string(dir.join("cfg.json")).unwrap().replace("\"standard\"", "\"matching_pursuit\"");
    std::fs::write(dir.join("cfg.json"), cfg).unwrap();
    let err = SparseDictionary::load_saelens(&dir, Device::Cpu).err().unwrap().to_string();
    assert!(err.contains("unknown dictionary architecture `matching_pursuit`; supported: standard"), "{err}");
    // A missing tensor is named with its expected shape.
    dict.save_saelens(&dir, None).unwrap();
    Tensor::write_safetensors(&[("W_enc", dict.w_enc().shallow_clone())], dir.join("sae_weights.safetensors")).unwrap();
    let err = SparseDictionary::load_saelens(&dir, Device::Cpu).err().unwrap().to_string();
    assert!(err.contains("no tensor `b_enc` (expected shape [64])"), "{err}");
}

#[test]
fn activation_store_streams_the_models_activations_and_caches_them() {
    let model = text_model();
    let (train, _) = interp::interp_core::data::shakespeare(&common::repo("data/shakespeare")).unwrap();
    let text: String = train.iter().take(2).map(|d| d.text.as_str()).collect::<Vec<_>>().join("<|endoftext|>");
    let tokens = model.to_tokens(&text, true).unwrap().squeeze_dim(0);
    let hooks = ["blocks.0.hook_resid_post", "blocks.0.ln2.hook_normalized", "blocks.0.hook_mlp_out"];
    let cfg = StoreConfig { context_size: 32, batch_tokens: 256, buffer_contexts: 16, forward_batch: 8, seed: 3 };
    let mut store = ActivationStore::new(&model, &tokens, &hooks, cfg).unwrap();
    assert_eq!(store.batches_per_buffer(), 1);
    let batch = store.batch(0).unwrap();
    assert_eq!(batch.len(), 3);
    assert_eq!(batch[0].size(), vec![256, model.cfg.d_model]);
    // Every row is the activation of some (context, position >= 1) of buffer 0, unshuffled order aside.
    let contexts = store.contexts(0).unwrap();
    let (_, cache) = model.run_with_cache(&contexts, CacheSpec::names([hooks[0]])).unwrap();
    let all = cache.get(hooks[0]).unwrap().narrow(1, 1, 31).reshape([-1, model.cfg.d_model]);
    let nearest = Tensor::cdist(&batch[0], &all, 2.0, Some(2)).amin([1], false).max().double_value(&[]);
    assert!(nearest < 1e-4, "{nearest}");
    // Deterministic per step, so resumes see the same data.
    let again = ActivationStore::new(&model, &tokens, &hooks, store.cfg.clone()).unwrap().batch(0).unwrap();
    assert_eq!(common::max_abs_diff(&again[2], &batch[2]), 0.0);
    // The disk cache serves the same batches; a manifest that disagrees with a shard is refused.
    let dir = tempdir("cache");
    let mut cached = store.write_cache(&dir, 2, Kind::Float, false).unwrap();
    assert_eq!(cached.n_batches(), 2);
    assert_eq!(common::max_abs_diff(&cached.batch(1).unwrap()[1], &store.batch(1).unwrap()[1]), 0.0);
    // One epoch unless more are allowed.
    let err = cached.batch(2).err().unwrap().to_string();
    assert!(err.contains("step 3 is past the activation cache") && err.contains("(2 batches, 1 epoch(s) allowed)"), "{err}");
    cached.epochs = 2;
    assert_eq!(common::max_abs_diff(&cached.batch(2).unwrap()[0], &store.batch(0).unwrap()[0]), 0.0);
    // The manifest records what produced the cache; another seed, corpus or model differs.
    let here = store.provenance(Kind::Float).unwrap();
    assert!(cached.provenance.differences(&here).is_empty(), "{:?}", cached.provenance.differences(&here));
    let reseeded = ActivationStore::new(&model, &tokens, &hooks, StoreConfig { seed: 4, ..store.cfg.clone() }).unwrap();
    assert_eq!(cached.provenance.differences(&reseeded.provenance(Kind::Float).unwrap()), ["seed: 3 in the cache, 4 in this run"]);
    let shorter = ActivationStore::new(&model, &tokens.narrow(0, 0, 500), &hooks, store.cfg.clone()).unwrap();
    let d = cached.provenance.differences(&shorter.provenance(Kind::Float).unwrap());
    assert!(d.len() == 1 && d[0].starts_with("corpus: "), "{d:?}");
    let other_model = HookedTransformer::from_pretrained_dir(common::repo("models/induction-attn-only"), Device::Cpu, Kind::Float).unwrap();
    let other =
        ActivationStore::new(&other_model, &tokens.remainder(other_model.cfg.d_vocab), &hooks[..1], StoreConfig { context_size: 32, ..store.cfg.clone() });
    let d = cached.provenance.differences(&other.unwrap().provenance(Kind::Float).unwrap());
    assert!(d.iter().any(|d| d.starts_with("model: ")) && d.iter().any(|d| d.starts_with("width of `blocks.0.hook_resid_post`")), "{d:?}");
    // f16 storage: half the disk, the same batches to f16 precision.
    let half_dir = tempdir("cache-f16");
    let mut half = store.write_cache(&half_dir, 1, Kind::Half, false).unwrap();
    let a = store.batch(0).unwrap()[0].shallow_clone();
    let rel = common::max_abs_diff(&half.batch(0).unwrap()[0], &a) / a.abs().max().double_value(&[]);
    assert!(rel < 1e-3, "{rel}");
    assert_eq!(half.batch(0).unwrap()[0].kind(), Kind::Float);
    let manifest = std::fs::read_to_string(dir.join("manifest.json")).unwrap().replace("\"batch_tokens\": 256", "\"batch_tokens\": 128");
    std::fs::write(dir.join("manifest.json"), manifest).unwrap();
    let err = CachedActivations::open(&dir, Device::Cpu).err().unwrap().to_string();
    assert!(err.contains("shard_00000.safetensors: `blocks.0.hook_resid_post` is F32 of shape [256, 128] but the manifest says F32 [128, 128]"), "{err}");
}

#[test]
fn random_latents_are_a_seeded_sample_of_the_live_ones() {
    use interp::transcoders::random_latents;
    // 100 latents, every third dead (log10 density -10).
    let d: Vec<f64> = (0..100).map(|i| if i % 3 == 0 { -10.0 } else { -2.0 - i as f64 / 100.0 }).collect();
    let d = Tensor::from_slice(&d);
    let a = random_latents(&d, 8, 0).unwrap();
    assert_eq!(a.len(), 8);
    assert!(a.windows(2).all(|w| w[0] < w[1]) && a.iter().all(|i| i % 3 != 0), "{a:?}");
    assert_eq!(a, random_latents(&d, 8, 0).unwrap());
    assert_ne!(a, random_latents(&d, 8, 1).unwrap());
    // Not the readable ones' order: the draw spans the range.
    assert!(a.last().unwrap() - a.first().unwrap() > 30, "{a:?}");
    assert_eq!(random_latents(&d, 1000, 0).unwrap().len(), 66);
}

#[test]
fn a_dictionary_for_another_model_is_refused_by_variant() {
    let model = text_model();
    let dir = tempdir("other-model");
    // A hook at a layer the text model does not have, and a width it does not use.
    let fits = identity_sae("blocks.0.hook_resid_post", model.cfg.d_model);
    let other = identity_sae(&format!("blocks.{}.hook_resid_post", model.cfg.n_layers + 3), model.cfg.d_model);
    fits.save_saelens(dir.join("fits"), None).unwrap();
    other.save_saelens(dir.join("other"), None).unwrap();
    assert!(SparseDictionary::load_saelens_for(&model, &dir.join("fits")).is_ok());
    match SparseDictionary::load_saelens_for(&model, &dir.join("other")) {
        Err(interp::transcoders::Error::OtherModel { hook, path, .. }) => {
            assert_eq!(hook, other.cfg().hook_name);
            assert_eq!(path, dir.join("other"));
        }
        r => panic!("expected OtherModel, got {:?}", r.map(|_| ())),
    }
    // An unknown architecture names the ones the readers know.
    let cfg_path = dir.join("fits").join("cfg.json");
    let text = std::fs::read_to_string(&cfg_path).unwrap();
    let mut cfg: serde_json::Value = serde_json::from_str(&text).unwrap();
    cfg["architecture"] = "no-such".into();
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    match SparseDictionary::load_saelens(dir.join("fits"), Device::Cpu) {
        Err(interp::transcoders::Error::UnknownArchitecture { found, supported }) => {
            assert_eq!(found, "no-such");
            assert_eq!(supported, interp::transcoders::SAELENS_ARCHITECTURES);
        }
        r => panic!("expected UnknownArchitecture, got {:?}", r.map(|_| ())),
    }
}
