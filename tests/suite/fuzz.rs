//! A bounded, fixed-seed fuzzing pass over every loader of user files: each family's
//! `config.json` (and TransformerLens's, and InterpBench's pickles), safetensors headers, `tokenizer.json`, SAELens `cfg.json`, circuit-tracer
//! `config.yaml` and layer files, and activation-cache `manifest.json`. Inputs are valid files
//! mutated by proptest (hostile sizes, wrong types, deleted keys, flipped header bytes,
//! truncation); a loader may refuse an input with an error, never panic or abort. Each pass prints
//! how many inputs it tried and how they ended. Crashers it found are regression tests below.

use crate::common;

use std::cell::Cell;
use std::path::Path;

use crate::common::{fixture, Scratch};
use interp::interp_core::{tch, HookedTransformer, ModelConfig, Tokenizer};
use interp::transcoders::{load_circuit_tracer, ActivationSource, CachedActivations, CrossLayerTranscoder, SparseDictionary};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use serde_json::{json, Value};
use tch::{Device, Kind, Tensor};

/// The same inputs on every run and every machine.
fn runner(cases: u32) -> TestRunner {
    let config = Config { cases, failure_persistence: None, max_shrink_iters: 64, ..Config::default() };
    TestRunner::new_with_rng(config, TestRng::deterministic_rng(RngAlgorithm::ChaCha))
}

/// Tries `cases` inputs from `strategy` on `load`, which says whether the input loaded; a panic
/// fails the test with the (shrunk) input, and so does a pass in which every input loaded or every
/// one was refused. Prints the tally.
fn fuzz<S: Strategy>(what: &str, cases: u32, strategy: S, load: impl Fn(S::Value) -> bool)
where
    S::Value: std::fmt::Debug,
{
    let (loaded, refused) = (Cell::new(0), Cell::new(0));
    runner(cases)
        .run(&strategy, |input| {
            let ok = load(input);
            let counter = if ok { &loaded } else { &refused };
            counter.set(counter.get() + 1);
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    let (loaded, refused) = (loaded.get(), refused.get());
    eprintln!("fuzz {what}: {cases} inputs, {loaded} loaded, {refused} refused with an error, 0 panics");
    // A loader that refused everything (or took everything) would pass a no-panic check alone.
    assert!(loaded > 0 && refused > 0, "{what}: {loaded} loaded and {refused} refused of {cases}; a fuzz pass must see both");
}

/// JSON values that break loaders: sizes at and past the edges, wrong types, small nests.
fn hostile() -> impl Strategy<Value = Value> {
    let sizes = vec![-1i64, 0, 1, 2, 3, 4, 7, 16, 64, 1 << 24, 1 << 31, 1 << 40, i64::MAX, i64::MIN];
    let floats = vec![-1.5f64, 0.0, 1e-300, 0.5, 2.0, 1e300, -1e300];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        prop::sample::select(sizes).prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        prop::sample::select(floats).prop_map(Value::from),
        "[a-z_./]{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(2, 8, 3, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..3).prop_map(Value::from),
            prop::collection::btree_map("[a-z_]{1,10}", inner, 0..3).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Every JSON pointer inside `v` (objects and arrays, a few levels deep).
fn pointers(v: &Value, at: String, depth: usize, out: &mut Vec<String>) {
    if depth == 0 {
        return;
    }
    let children: Vec<(String, &Value)> = match v {
        Value::Object(m) => m.iter().map(|(k, c)| (format!("{at}/{}", k.replace('~', "~0").replace('/', "~1")), c)).collect(),
        Value::Array(a) => a.iter().enumerate().take(8).map(|(i, c)| (format!("{at}/{i}"), c)).collect(),
        _ => vec![],
    };
    for (p, c) in children {
        out.push(p.clone());
        pointers(c, p, depth - 1, out);
    }
}

/// `base` with one to three values replaced by hostile ones or removed.
fn mutated(base: Value, depth: usize) -> impl Strategy<Value = Value> {
    let mut paths = Vec::new();
    pointers(&base, String::new(), depth, &mut paths);
    prop::collection::vec((prop::sample::select(paths), hostile(), prop::bool::weighted(0.25)), 1..4).prop_map(move |edits| {
        let mut v = base.clone();
        for (path, value, remove) in edits {
            let (parent, key) = path.rsplit_once('/').unwrap_or(("", &path));
            match (v.pointer_mut(parent), remove) {
                (Some(Value::Object(m)), true) => {
                    m.remove(&key.replace("~1", "/").replace("~0", "~"));
                }
                (Some(_), false) => {
                    if let Some(slot) = v.pointer_mut(&path) {
                        *slot = value;
                    }
                }
                _ => {}
            }
        }
        v
    })
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn loads(dir: &Path) -> bool {
    HookedTransformer::from_pretrained_dir(dir, Device::Cpu, Kind::Float).is_ok()
}

#[test]
fn config_json_of_every_family() {
    for arch in common::ARCHS {
        let base = read_json(&fixture(arch).join("config.json"));
        fuzz(&format!("{arch} config.json"), 1000, mutated(base.clone(), 3), |v| ModelConfig::from_hf_json(&v).is_ok());
        // With the weights: a config that passes must still agree with every tensor's shape.
        let dir = common::fixture_copy(arch, &format!("fuzz-config-{arch}"));
        fuzz(&format!("{arch} config.json + weights"), 100, mutated(base, 2), |v| {
            std::fs::write(dir.join("config.json"), v.to_string()).unwrap();
            loads(&dir)
        });
    }
}

#[test]
fn transformer_lens_config_json() {
    for case in ["ln-relu", "lnpre-solu_ln-shortformer", "rms-gated-rotary-gqa"] {
        let src = common::repo(&format!("tests/fixtures/transformer_lens/{case}"));
        let base = read_json(&src.join("config.json"));
        fuzz(&format!("TransformerLens {case} config.json"), 400, mutated(base.clone(), 3), |v| ModelConfig::from_hf_json(&v).is_ok());
        let dir = Scratch::new(&format!("fuzz-tl-{case}"));
        for f in ["model.pth", "model.safetensors"] {
            if src.join(f).exists() {
                std::fs::copy(src.join(f), dir.join(f)).unwrap();
            }
        }
        fuzz(&format!("TransformerLens {case} config.json + weights"), 60, mutated(base, 2), |v| {
            std::fs::write(dir.join("config.json"), v.to_string()).unwrap();
            loads(&dir)
        });
    }
}

/// GGUF files with bytes of the header, metadata and tensor table overwritten, or cut short: the
/// tiny GPT-2 (its tokenizer metadata included) and the quantised-types file. Some still load
/// (a changed name or value the loader does not read), the rest are refused; none panics.
#[test]
fn gguf_headers_and_metadata() {
    let dir = Scratch::new("fuzz-gguf");
    for name in ["gpt2.gguf", "quants.gguf"] {
        let original = std::fs::read(common::repo("tests/fixtures/gguf").join(name)).unwrap();
        let file = interp::interp_core::gguf::GgufFile::open(common::repo("tests/fixtures/gguf").join(name)).unwrap();
        let header_end = file.data_start();
        let edits = prop::collection::vec((0..header_end, any::<u8>()), 1..6);
        let strategy = (edits, prop::option::weighted(0.2, 0..original.len()));
        let path = dir.join(name);
        fuzz(&format!("{name} (bytes)"), 500, strategy, |(edits, cut)| {
            let mut bytes = original.clone();
            for (at, b) in edits {
                bytes[at] = b;
            }
            bytes.truncate(cut.unwrap_or(bytes.len()));
            std::fs::write(&path, &bytes).unwrap();
            match name {
                "gpt2.gguf" => loads(&path),
                _ => interp::interp_core::gguf::GgufFile::open(&path).is_ok_and(|f| f.tensors.iter().all(|t| f.tensor(&t.name).is_ok())),
            }
        });
    }
}

#[test]
fn safetensors_headers() {
    let dir = common::fixture_copy("gpt2", "fuzz-safetensors");
    let original = std::fs::read(fixture("gpt2").join("model.safetensors")).unwrap();
    let header_end = 8 + u64::from_le_bytes(original[..8].try_into().unwrap()) as usize;
    // Bytes overwritten inside the length prefix and the JSON header, or the file cut short.
    let edits = prop::collection::vec((0..header_end, any::<u8>()), 1..6);
    let strategy = (edits, prop::option::weighted(0.2, 0..original.len()));
    let write_and_load = |bytes: &[u8]| {
        std::fs::write(dir.join("model.safetensors"), bytes).unwrap();
        loads(&dir)
    };
    fuzz("gpt2 model.safetensors (bytes)", 600, strategy, |(edits, cut)| {
        let mut bytes = original.clone();
        for (at, b) in edits {
            bytes[at] = b;
        }
        bytes.truncate(cut.unwrap_or(bytes.len()));
        write_and_load(&bytes)
    });
    // Digits of the header changed: still JSON, but shapes, offsets and dtypes that lie.
    let digits: Vec<usize> = (8..header_end).filter(|i| original[*i].is_ascii_digit()).collect();
    let edits = prop::collection::vec((prop::sample::select(digits), 0u8..10), 1..4);
    fuzz("gpt2 model.safetensors (header digits)", 600, edits, |edits| {
        let mut bytes = original.clone();
        for (at, d) in edits {
            bytes[at] = b'0' + d;
        }
        write_and_load(&bytes)
    });
}

#[test]
fn tokenizer_json() {
    let path = fixture("gpt2").join("tokenizer.json");
    let base = read_json(&path);
    let dir = Scratch::new("fuzz-tokenizer");
    let file = dir.join("tokenizer.json");
    fuzz("gpt2 tokenizer.json", 500, mutated(base, 3), |v| {
        std::fs::write(&file, v.to_string()).unwrap();
        Tokenizer::from_file(&file, Some(0)).and_then(|t| t.encode("Then, Mary and John went", true)).is_ok()
    });
}

#[test]
fn saelens_cfg_json() {
    let root = common::repo("tests/fixtures/saelens");
    for arch in ["standard", "topk", "jumprelu", "gated", "transcoder", "skip_transcoder", "jumprelu_transcoder", "topk_rescaled", "batchtopk_training"] {
        let dir = Scratch::new(&format!("fuzz-saelens-{arch}"));
        std::fs::copy(root.join(arch).join("sae_weights.safetensors"), dir.join("sae_weights.safetensors")).unwrap();
        let base = read_json(&root.join(arch).join("cfg.json"));
        fuzz(&format!("SAELens {arch} cfg.json"), 300, mutated(base, 2), |v| {
            std::fs::write(dir.join("cfg.json"), v.to_string()).unwrap();
            SparseDictionary::load_saelens(&dir, Device::Cpu).is_ok()
        });
    }
}

/// A two-layer circuit-tracer set of the given tensor shapes (d_tc 6, d 4 when well formed).
fn write_circuit_tracer_layer(path: &Path, shapes: &[(&str, Vec<i64>)]) {
    let tensors: Vec<(&str, Tensor)> = shapes.iter().map(|(n, s)| (*n, Tensor::ones(s.as_slice(), (Kind::Float, Device::Cpu)))).collect();
    Tensor::write_safetensors(&tensors, path).unwrap();
}

#[test]
fn pytorch_checkpoint_files() {
    // The gpt2 fixture as torch.save wrote it: zip headers, then data.pkl, then the storages.
    let src = common::repo("tests/fixtures/torch/gpt2-f32");
    let dir = Scratch::new("fuzz-torch");
    std::fs::copy(src.join("config.json"), dir.join("config.json")).unwrap();
    let original = std::fs::read(src.join("pytorch_model.bin")).unwrap();
    let pickle = original.windows(8).position(|w| w == b"data.pkl").expect("data.pkl entry");
    let end = (pickle + 4096).min(original.len()); // past the pickle of this small state dict
                                                   // Bytes overwritten in the local header and the pickle, or the file cut short.
    let edits = prop::collection::vec((pickle.saturating_sub(64)..end, any::<u8>()), 1..6);
    let strategy = (edits, prop::option::weighted(0.2, 0..original.len()));
    fuzz("gpt2 pytorch_model.bin (bytes)", 600, strategy, |(edits, cut)| {
        let mut bytes = original.clone();
        for (at, b) in edits {
            bytes[at] = b;
        }
        bytes.truncate(cut.unwrap_or(bytes.len()));
        std::fs::write(dir.join("pytorch_model.bin"), &bytes).unwrap();
        loads(&dir)
    });
}

/// InterpBench's pickles: the pickled TransformerLens config and the edge list, bytes overwritten
/// or cut short.
#[test]
fn interpbench_pickles() {
    let src = common::repo("tests/fixtures/interpbench/planted-induction");
    let dir = Scratch::new("fuzz-interpbench");
    for f in ["ll_model.pth", "ll_model_cfg.pkl", "edges.pkl"] {
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
    // Zero edits and no cut is among the inputs: nearly every edit of the small edge list makes a
    // hook name unknown, and the pass must also see the loader take a file.
    let byte_edits = |len: usize| (prop::collection::vec((0..len, any::<u8>()), 0..5), prop::option::weighted(0.2, 0..len));
    let edited = |original: &[u8], (edits, cut): (Vec<(usize, u8)>, Option<usize>)| {
        let mut bytes = original.to_vec();
        for (at, b) in edits {
            bytes[at] = b;
        }
        bytes.truncate(cut.unwrap_or(bytes.len()));
        bytes
    };
    let cfg = std::fs::read(src.join("ll_model_cfg.pkl")).unwrap();
    fuzz("InterpBench ll_model_cfg.pkl (bytes)", 300, byte_edits(cfg.len()), |edit| {
        std::fs::write(dir.join("ll_model_cfg.pkl"), edited(&cfg, edit)).unwrap();
        loads(&dir)
    });
    std::fs::write(dir.join("ll_model_cfg.pkl"), &cfg).unwrap();
    let model = HookedTransformer::from_pretrained_dir(&dir, Device::Cpu, Kind::Float).unwrap();
    let graph = interp::circuits::EdgeGraph::new(&model).unwrap();
    let edges = std::fs::read(src.join("edges.pkl")).unwrap();
    assert!(interp::circuits::CaseTruth::read(&dir, &model, &graph).is_ok(), "the unmutated edge list reads");
    fuzz("InterpBench edges.pkl (bytes)", 300, byte_edits(edges.len()), |edit| {
        std::fs::write(dir.join("edges.pkl"), edited(&edges, edit)).unwrap();
        interp::circuits::CaseTruth::read(&dir, &model, &graph).is_ok()
    });
}

const CT_YAML: &str = "model_kind: transcoder_set\nmodel_name: \"m\"\nfeature_input_hook: \"ln2.hook_normalized\"\nfeature_output_hook: \"hook_mlp_out\"\nactivation_function: relu\ntranscoders:\n  - \"layer_0.safetensors\"\n  - \"layer_1.safetensors\"\n";

#[test]
fn circuit_tracer_config_yaml_and_layer_files() {
    let dir = Scratch::new("fuzz-circuit-tracer");
    let good = [("W_enc", vec![6, 4]), ("W_dec", vec![6, 4]), ("b_enc", vec![6]), ("b_dec", vec![4])];
    for l in 0..2 {
        write_circuit_tracer_layer(&dir.join(format!("layer_{l}.safetensors")), &good);
    }
    // Lines of the YAML dropped, doubled or given other values.
    let lines: Vec<String> = CT_YAML.lines().map(str::to_string).collect();
    let n = lines.len();
    let edit = prop_oneof![(0..n).prop_map(|i| (i, None)), (0..n, "[ -~]{0,24}").prop_map(|(i, s)| (i, Some(s))),];
    fuzz("circuit-tracer config.yaml", 400, prop::collection::vec(edit, 1..4), |edits| {
        let mut text = lines.clone();
        for (i, replacement) in edits {
            match replacement {
                Some(s) => text[i] = s,
                None => text[i].clear(),
            }
        }
        std::fs::write(dir.join("config.yaml"), text.join("\n")).unwrap();
        load_circuit_tracer(&dir, Device::Cpu).is_ok()
    });
    // Layer files whose tensors have other ranks and sizes, or are missing.
    std::fs::write(dir.join("config.yaml"), CT_YAML).unwrap();
    let dims = prop::sample::select(vec![0i64, 1, 4, 6]);
    let shape = prop::collection::vec(dims, 0..3);
    let names = ["W_enc", "W_dec", "b_enc", "b_dec", "k", "activation_function.threshold", "W_skip"];
    let tensors = prop::collection::vec((prop::sample::select(names.to_vec()), shape), 0..6);
    fuzz("circuit-tracer layer files", 400, tensors, |tensors| {
        let mut shapes: Vec<(&str, Vec<i64>)> = good.to_vec();
        for (name, s) in tensors {
            shapes.retain(|(n, _)| *n != name);
            shapes.push((name, s));
        }
        write_circuit_tracer_layer(&dir.join("layer_1.safetensors"), &shapes);
        load_circuit_tracer(&dir, Device::Cpu).is_ok()
    });
}

const CLT_YAML: &str = "model_kind: cross_layer_transcoder\nmodel_name: \"m\"\nfeature_input_hook: \"ln2.hook_normalized\"\nfeature_output_hook: \"hook_mlp_out\"\nactivation_function: relu\n";

#[test]
fn clt_config_yaml_and_layer_files() {
    let dir = Scratch::new("fuzz-clt");
    let write = |l: usize, enc: &[(String, Vec<i64>)], dec: Vec<i64>| {
        let refs: Vec<(&str, Vec<i64>)> = enc.iter().map(|(n, s)| (n.as_str(), s.clone())).collect();
        write_circuit_tracer_layer(&dir.join(format!("W_enc_{l}.safetensors")), &refs);
        write_circuit_tracer_layer(&dir.join(format!("W_dec_{l}.safetensors")), &[(&format!("W_dec_{l}"), dec)]);
    };
    let good = |l: usize| vec![(format!("W_enc_{l}"), vec![6, 4]), (format!("b_enc_{l}"), vec![6]), (format!("b_dec_{l}"), vec![4])];
    for l in 0..2 {
        write(l, &good(l), vec![6, 2 - l as i64, 4]);
    }
    std::fs::write(dir.join("config.yaml"), CLT_YAML).unwrap();
    assert!(CrossLayerTranscoder::load(&*dir, Device::Cpu).is_ok(), "the unmutated CLT loads");
    // Lines of the YAML dropped or given other values.
    let lines: Vec<String> = CLT_YAML.lines().map(str::to_string).collect();
    let n = lines.len();
    let edit = prop_oneof![(0..n).prop_map(|i| (i, None)), (0..n, "[ -~]{0,24}").prop_map(|(i, s)| (i, Some(s)))];
    fuzz("CLT config.yaml", 300, prop::collection::vec(edit, 1..4), |edits| {
        let mut text = lines.clone();
        for (i, replacement) in edits {
            text[i] = replacement.unwrap_or_default();
        }
        std::fs::write(dir.join("config.yaml"), text.join("\n")).unwrap();
        CrossLayerTranscoder::load(&*dir, Device::Cpu).is_ok()
    });
    // Layer 1's tensors of other ranks and sizes, missing, or with thresholds.
    std::fs::write(dir.join("config.yaml"), CLT_YAML).unwrap();
    let dims = prop::sample::select(vec![0i64, 1, 2, 4, 6]);
    let shape = prop::collection::vec(dims, 0..4);
    let names = ["W_enc_1", "b_enc_1", "b_dec_1", "threshold_1"];
    let tensors = prop::collection::vec((prop::sample::select(names.to_vec()), shape.clone()), 0..3);
    let dec = prop_oneof![Just(vec![6i64, 1, 4]), shape];
    fuzz("CLT layer files", 300, (tensors, dec), |(tensors, dec)| {
        let mut enc = good(1);
        for (name, s) in tensors {
            enc.retain(|(n, _)| n != name);
            enc.push((name.to_string(), s));
        }
        write(1, &enc, dec);
        CrossLayerTranscoder::load(&*dir, Device::Cpu).is_ok()
    });
}

#[test]
fn activation_cache_manifest_json() {
    let dir = Scratch::new("fuzz-cache");
    Tensor::write_safetensors(&[("blocks.0.hook_resid_pre", Tensor::ones([8, 4], (Kind::Float, Device::Cpu)))], dir.join("shard_00000.safetensors")).unwrap();
    let base = json!({
        "format": "interp-activation-cache-v2", "model": "m", "model_fingerprint": "00", "corpus": "c", "corpus_fingerprint": "01",
        "corpus_tokens": 100, "hooks": [{"name": "blocks.0.hook_resid_pre", "width": 4}],
        "context_size": 4, "batch_tokens": 4, "buffer_contexts": 2, "batches_per_shard": 2, "seed": 0, "dtype": "float32",
        "shards": ["shard_00000.safetensors"],
    });
    assert!(CachedActivations::open(&*dir, Device::Cpu).is_err(), "no manifest yet");
    fuzz("activation-cache manifest.json", 1000, mutated(base, 3), |v| {
        std::fs::write(dir.join("manifest.json"), v.to_string()).unwrap();
        match CachedActivations::open(&*dir, Device::Cpu) {
            Ok(mut cache) => cache.batch(0).is_ok() && cache.batch(1).is_ok(),
            Err(_) => false,
        }
    });
}

// ---- Regression tests: crashers the passes above found ----

/// A circuit-tracer layer file whose `b_enc` is a scalar panicked indexing its size.
#[test]
fn circuit_tracer_scalar_bias_is_an_error() {
    let dir = Scratch::new("fuzz-ct-scalar");
    std::fs::write(dir.join("config.yaml"), CT_YAML).unwrap();
    for l in 0..2 {
        write_circuit_tracer_layer(
            &dir.join(format!("layer_{l}.safetensors")),
            &[("W_enc", vec![6, 4]), ("W_dec", vec![6, 4]), ("b_enc", vec![]), ("b_dec", vec![4])],
        );
    }
    let e = load_circuit_tracer(&*dir, Device::Cpu).err().unwrap().to_string();
    assert!(e.contains("`b_enc`") && e.contains("vector"), "{e}");
}

/// A manifest whose batch size times batches per shard overflows panicked in debug builds.
#[test]
fn activation_cache_manifest_with_overflowing_sizes_is_an_error() {
    let dir = Scratch::new("fuzz-cache-overflow");
    let manifest = json!({
        "format": "interp-activation-cache-v2", "model": "m", "model_fingerprint": "00", "corpus": "c", "corpus_fingerprint": "01",
        "corpus_tokens": 100, "context_size": 4, "buffer_contexts": 2, "seed": 0, "dtype": "float32", "hooks": [{"name": "h", "width": 4}],
        "batch_tokens": i64::MAX, "batches_per_shard": 4, "shards": ["s.safetensors"],
    });
    std::fs::write(dir.join("manifest.json"), manifest.to_string()).unwrap();
    let e = CachedActivations::open(&*dir, Device::Cpu).err().unwrap().to_string();
    assert!(e.contains("batch_tokens"), "{e}");
}

#[test]
fn prompt_files() {
    // Pair and tracing lines of the text model, mutated: each is read or refused with an error.
    let model = HookedTransformer::from_pretrained_dir(common::repo("models/shakespeare-gpt2"), Device::Cpu, Kind::Float).unwrap();
    let dir = Scratch::new("fuzz-prompts");
    let file = dir.join("prompts.jsonl");
    let pair = serde_json::json!({"clean": "ROMEO. But soft", "corrupted": "ROMEO. But hard", "answer": " t", "wrong": [" d", 7], "label": "a"});
    let ids = serde_json::json!({"clean_ids": [0, 5, 9], "corrupted_ids": [0, 5, 8], "answer": 3, "wrong": 4});
    for (what, base) in [("pair", pair), ("ids", ids)] {
        fuzz(&format!("prompt file ({what} lines)"), 300, mutated(base, 2), |v| {
            std::fs::write(&file, format!("{v}\n{v}\n")).unwrap();
            interp::circuits::TaskPrompts::from_jsonl(&file, &model).is_ok()
        });
    }
    let trace = serde_json::json!({"prompt": "ROMEO. But soft, what light", "subject": " soft", "answer": " t", "label": "x"});
    fuzz("tracing file", 200, mutated(trace, 2), |v| {
        std::fs::write(&file, format!("{v}\n")).unwrap();
        interp::circuits::trace_prompts_from_jsonl(&file, &model).is_ok()
    });
}
