//! Checkpoint formats (sharded, f16/bf16 on disk), the tokenizer, and clear errors on bad input.

use crate::common;

use std::path::Path;

use crate::common::{fixture, load, max_abs_diff, reference};
use interp::interp_core::{tch, CacheSpec, HookedTransformer, PaddingSide};
use tch::{Device, Kind, Tensor};

fn scratch(arch: &str, name: &str) -> common::Scratch {
    common::fixture_copy(arch, &format!("test-{name}"))
}

fn weights(dir: &Path) -> Vec<(String, Tensor)> {
    Tensor::read_safetensors(dir.join("model.safetensors")).unwrap()
}

fn load_err(dir: &Path) -> String {
    match HookedTransformer::from_pretrained_dir(dir, Device::Cpu, Kind::Float) {
        Ok(_) => panic!("{} loaded", dir.display()),
        Err(e) => e.to_string(),
    }
}

fn edit_config(dir: &Path, f: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>)) {
    let path = dir.join("config.json");
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    f(v.as_object_mut().unwrap());
    std::fs::write(path, v.to_string()).unwrap();
}

#[test]
fn sharded_and_half_precision_checkpoints_load() {
    let ids = &reference("llama")["input_ids"];
    let want = load("llama").forward(ids).unwrap();
    // Two shards with an index, as HF writes large models.
    let dir = scratch("llama", "sharded");
    let all = weights(&dir);
    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
    let (a, b) = all.split_at(all.len() / 2);
    let mut map = serde_json::Map::new();
    for (file, part) in [("model-00001-of-00002.safetensors", a), ("model-00002-of-00002.safetensors", b)] {
        Tensor::write_safetensors(part, dir.join(file)).unwrap();
        for (name, _) in part {
            map.insert(name.clone(), file.into());
        }
    }
    let index = serde_json::json!({ "metadata": {}, "weight_map": map });
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
    let sharded = HookedTransformer::from_pretrained_dir(&dir, Device::Cpu, Kind::Float).unwrap();
    assert_eq!(max_abs_diff(&sharded.forward(ids).unwrap(), &want), 0.0);
    // bf16 and f16 on disk, f32 in memory.
    for kind in [Kind::BFloat16, Kind::Half] {
        let dir = scratch("llama", "half");
        let half: Vec<(String, Tensor)> = weights(&dir).into_iter().map(|(n, t)| (n, t.to_kind(kind))).collect();
        Tensor::write_safetensors(&half, dir.join("model.safetensors")).unwrap();
        let m = HookedTransformer::from_pretrained_dir(&dir, Device::Cpu, Kind::Float).unwrap();
        let d = max_abs_diff(&m.forward(ids).unwrap(), &want);
        assert!(d > 0.0 && d < 0.5, "{kind:?}: {d}");
        assert_eq!(m.w_e().kind(), Kind::Float);
    }
}

#[test]
fn tokenizer_matches_hf_and_prepends_bos() {
    let m = load("gpt2");
    let cases: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(fixture("gpt2").join("tokenizer_cases.json")).unwrap()).unwrap();
    for case in cases.as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let want: Vec<i64> = case["ids"].as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect();
        let tokens = m.to_tokens(text, false).unwrap();
        assert_eq!(Vec::<i64>::try_from(tokens.view([-1])).unwrap(), want, "{text:?}");
        if text.is_ascii() {
            // Multi-byte characters split across tokens decode to replacement characters per token.
            assert_eq!(m.to_str_tokens(&tokens).unwrap().concat(), text);
        }
        assert_eq!(m.to_string(&tokens).unwrap(), text);
        let with_bos = m.to_tokens(text, true).unwrap();
        assert_eq!(with_bos.int64_value(&[0, 0]), 0);
        assert_eq!(with_bos.size()[1], tokens.size()[1] + 1);
    }
    let tok = m.tokenizer().unwrap();
    let (ids, mask) = tok.to_tokens_batch(&["a b c d", "a"], true, PaddingSide::Left, 0).unwrap();
    assert_eq!(ids.size(), mask.size());
    assert_eq!(mask.sum(Kind::Int64).int64_value(&[]), ids.size()[1] + 2);
    assert_eq!(mask.int64_value(&[1, 0]), 0);
    assert!(m.to_tokens("", false).unwrap_err().to_string().contains("empty input"));
}

#[test]
fn bad_checkpoints_give_clear_errors() {
    let nowhere = std::env::temp_dir().join("interp-no-such-model");
    assert!(load_err(&nowhere).contains("model directory or GGUF file not found"));

    let dir = scratch("gpt2", "noconfig");
    std::fs::remove_file(dir.join("config.json")).unwrap();
    let e = load_err(&dir);
    assert!(e.contains("config.json") && e.contains("No such file"), "{e}");

    let dir = scratch("gpt2", "badjson");
    std::fs::write(dir.join("config.json"), "{\"model_type\": \"gpt2\",").unwrap();
    assert!(load_err(&dir).contains("malformed JSON"));

    let dir = scratch("gpt2", "missingkey");
    edit_config(&dir, |c| {
        c.remove("n_embd");
    });
    assert!(load_err(&dir).contains("missing key `n_embd`"));

    let dir = scratch("gpt2", "badtype");
    edit_config(&dir, |c| {
        c.insert("n_head".into(), "four".into());
    });
    assert!(load_err(&dir).contains("`n_head` must be an integer"));

    let dir = scratch("gpt2", "unknownarch");
    edit_config(&dir, |c| {
        c.insert("model_type".into(), "mamba".into());
    });
    let e = load_err(&dir);
    assert!(e.contains("unknown model_type `mamba`") && e.contains("gpt_neox") && e.contains("gemma2"), "{e}");

    let dir = scratch("gpt2", "gqa");
    edit_config(&dir, |c| {
        c.insert("n_head".into(), 3.into());
    });
    assert!(load_err(&dir).contains("divisible by n_heads"));

    let dir = scratch("gpt2", "missingtensor");
    let kept: Vec<_> = weights(&dir).into_iter().filter(|(n, _)| n != "transformer.h.1.mlp.c_fc.weight").collect();
    Tensor::write_safetensors(&kept, dir.join("model.safetensors")).unwrap();
    let e = load_err(&dir);
    assert!(e.contains("`transformer.h.1.mlp.c_fc.weight` is missing") && e.contains("[64, 256]"), "{e}");

    let dir = scratch("gpt2", "wrongshape");
    let bent: Vec<_> = weights(&dir).into_iter().map(|(n, t)| if n == "transformer.wpe.weight" { (n, t.narrow(0, 0, 32)) } else { (n, t) }).collect();
    Tensor::write_safetensors(&bent, dir.join("model.safetensors")).unwrap();
    let e = load_err(&dir);
    assert!(e.contains("`transformer.wpe.weight` has shape [32, 64], expected [64, 64]"), "{e}");

    let dir = scratch("gpt2", "garbage");
    std::fs::write(dir.join("model.safetensors"), b"not a checkpoint").unwrap();
    assert!(load_err(&dir).contains("not a safetensors file"));

    let dir = scratch("gpt2", "noweights");
    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
    assert!(load_err(&dir).contains("model.safetensors"));

    let dir = scratch("gpt2", "badtokenizer");
    std::fs::write(dir.join("tokenizer.json"), "{}").unwrap();
    assert!(load_err(&dir).contains("tokenizer"));
}

#[test]
fn bad_inputs_to_a_run_give_clear_errors() {
    let m = load("gpt2");
    let ids = &reference("gpt2")["input_ids"];
    let run_err = |t: &Tensor| m.forward(t).unwrap_err().to_string();
    assert!(run_err(&Tensor::from_slice(&[1i64, 300]).view([1, 2])).contains("token id 300 is outside the vocabulary [0, 300)"));
    assert!(run_err(&Tensor::from_slice(&[-1i64]).view([1, 1])).contains("token id -1"));
    assert!(run_err(&Tensor::zeros([1, 0], (Kind::Int64, Device::Cpu))).contains("empty input"));
    assert!(run_err(&Tensor::zeros([1, 65], (Kind::Int64, Device::Cpu))).contains("longer than the context (64)"));
    assert!(run_err(&Tensor::zeros([4], (Kind::Int64, Device::Cpu))).contains("[batch, pos]"));
    assert!(run_err(&Tensor::zeros([1, 4], (Kind::Float, Device::Cpu))).contains("int64"));
    // Errors a caller can act on are typed, with their figures.
    use interp::interp_core::Error;
    let typed = |t: &Tensor| m.forward(t).unwrap_err();
    assert!(matches!(typed(&Tensor::from_slice(&[1i64, 300]).view([1, 2])), Error::TokenOutOfVocabulary { id: 300, d_vocab: 300 }));
    assert!(matches!(typed(&Tensor::zeros([1, 65], (Kind::Int64, Device::Cpu))), Error::TooLong { len: 65, n_ctx: 64 }));
    assert!(matches!(typed(&Tensor::zeros([4], (Kind::Int64, Device::Cpu))), Error::Shape { found, .. } if found == [4]));
    assert!(matches!(typed(&Tensor::zeros([1, 0], (Kind::Int64, Device::Cpu))), Error::EmptyInput));
    assert!(matches!(m.w_q(7), Err(Error::LayerOutOfRange { layer: 7, n_layers: 2 })));

    let e = m.run_with_cache(ids, CacheSpec::names(["blocks.0.hook_resid_pree"])).err().unwrap().to_string();
    assert!(e.contains("unknown hook point") && e.contains("did you mean `blocks.0.hook_resid_pre`"), "{e}");
    let e = m.run_with_cache(ids, CacheSpec::names(["blocks.7.hook_resid_pre"])).err().unwrap().to_string();
    assert!(e.contains("has 2 layers"), "{e}");
    let e = m.run_with_cache(ids, CacheSpec::names(["blocks.*.hook_nothing"])).err().unwrap().to_string();
    assert!(e.contains("unknown hook point `blocks.*.hook_nothing`"), "{e}");
    let e = m.run_with_cache(ids, CacheSpec::names(["blocks.0.attn.hook_rot_q"])).err().unwrap().to_string();
    assert!(e.contains("no rotary"), "{e}");
    let e = m.run_with_cache(ids, CacheSpec::all().positions(10..30)).err().unwrap().to_string();
    assert!(e.contains("out of range"), "{e}");
    let mask = Tensor::ones([2, 5], (Kind::Int64, Device::Cpu));
    let e = m.runner(ids).attention_mask(&mask).run().err().unwrap().to_string();
    assert!(e.contains("attention mask must be [2, 20]"), "{e}");
    let e = m.run_with_cache(ids, CacheSpec::names(["blocks.0.hook_q_input", "blocks.0.ln1.hook_scale"])).err().unwrap().to_string();
    assert!(e.contains("hook those inputs or ln1, not both"), "{e}");

    let neox = load("gpt_neox");
    let e = neox.run_with_cache(ids, CacheSpec::names(["blocks.0.hook_resid_mid"])).err().unwrap().to_string();
    assert!(e.contains("in parallel") && e.contains("no resid_mid"), "{e}");
    let e = neox.to_tokens("hi", true).unwrap_err();
    assert!(matches!(&e, interp::interp_core::Error::NoTokenizer { needed_for } if needed_for == "to tokenize text"), "{e}");
    assert!(e.to_string().contains("no tokenizer.json"), "{e}");
    let e = m.runner_from_layer(&Tensor::zeros([2, 3, 7], (Kind::Float, Device::Cpu)), 1).run().err().unwrap().to_string();
    assert!(e.contains("residual must be [batch, pos, 64]"), "{e}");
}

/// Every family saves under exactly the tensor names HF wrote (one name table serves loading and
/// saving), and the saved directory loads back as the same function.
#[test]
fn every_family_saves_in_its_own_hf_layout() {
    for arch in common::ARCHS {
        let m = load(arch);
        let dir = common::Scratch::new(&format!("save-{arch}"));
        m.save_pretrained(&dir).unwrap();
        let mut theirs: Vec<String> = weights(&fixture(arch)).into_iter().map(|(n, _)| n).collect();
        let mut ours: Vec<String> = weights(&dir).into_iter().map(|(n, _)| n).collect();
        theirs.sort();
        ours.sort();
        assert_eq!(ours, theirs, "{arch}: tensor names");
        let ids = &reference(arch)["input_ids"];
        let back = HookedTransformer::from_pretrained_dir(&dir, Device::Cpu, Kind::Float).unwrap();
        let d = max_abs_diff(&back.forward(ids).unwrap(), &m.forward(ids).unwrap());
        assert!(d < 1e-5, "{arch}: logits after a save differ by {d}");
    }
}

#[test]
fn an_untied_gpt2_without_an_unembedding_is_refused() {
    // GPT-2 used to fall back silently to the embedding.
    let dir = scratch("gpt2", "untied");
    edit_config(&dir, |c| {
        c.insert("tie_word_embeddings".into(), false.into());
    });
    let e = load_err(&dir);
    assert!(e.contains("`lm_head.weight` is missing"), "{e}");
}

/// HF has no attention-only block: such a model is saved with MLPs whose output is exactly zero, so
/// that HF computes the same function, and a checkpoint whose MLPs would write anything is refused.
#[test]
fn attention_only_models_save_zero_mlps_and_refuse_live_ones() {
    use interp::interp_core::{BlockStyle, ModelSpec, NormPlacement};
    for style in [BlockStyle::Gpt2, BlockStyle::Llama] {
        let spec = ModelSpec {
            style,
            n_layers: 2,
            d_model: 32,
            n_heads: 4,
            d_mlp: 64,
            d_vocab: 16,
            n_ctx: 32,
            mlp: None,
            tie_embeddings: false,
            bos_token_id: Some(0),
            experts: None,
            norm: NormPlacement::Pre,
        };
        let m = HookedTransformer::init_random(&spec, 1, Kind::Float, Device::Cpu).unwrap();
        let dir = common::Scratch::new(&format!("attn-only-{style:?}"));
        m.save_pretrained(&dir).unwrap();
        let saved = weights(&dir);
        let out_name = if style == BlockStyle::Gpt2 { "transformer.h.1.mlp.c_proj.weight" } else { "model.layers.1.mlp.down_proj.weight" };
        let mlp_out = &saved.iter().find(|(n, _)| n == out_name).unwrap().1;
        assert_eq!(mlp_out.abs().max().double_value(&[]), 0.0, "{style:?}");
        let tokens = Tensor::from_slice(&[0i64, 3, 5, 7]).view([1, 4]);
        let back = HookedTransformer::from_pretrained_dir(&dir, Device::Cpu, Kind::Float).unwrap();
        assert!(back.cfg.attn_only);
        assert_eq!(max_abs_diff(&back.forward(&tokens).unwrap(), &m.forward(&tokens).unwrap()), 0.0);
        let live: Vec<_> = saved.into_iter().map(|(n, t)| if n == out_name { (n, t.ones_like()) } else { (n, t) }).collect();
        Tensor::write_safetensors(&live, dir.join("model.safetensors")).unwrap();
        let e = load_err(&dir);
        assert!(e.contains("`interp_attn_only` is set") && e.contains(out_name), "{e}");
    }
}

/// GPT-2 checkpoints saved from `GPT2Model` name their tensors without `transformer.`.
#[test]
fn gpt2_checkpoints_without_the_transformer_prefix_load() {
    let dir = scratch("gpt2", "unprefixed");
    let renamed: Vec<_> = weights(&dir).into_iter().map(|(n, t)| (n.strip_prefix("transformer.").map(str::to_string).unwrap_or(n), t)).collect();
    assert!(renamed.iter().all(|(n, _)| !n.starts_with("transformer.")));
    Tensor::write_safetensors(&renamed, dir.join("model.safetensors")).unwrap();
    let ids = &reference("gpt2")["input_ids"];
    let back = HookedTransformer::from_pretrained_dir(&dir, Device::Cpu, Kind::Float).unwrap();
    assert_eq!(max_abs_diff(&back.forward(ids).unwrap(), &load("gpt2").forward(ids).unwrap()), 0.0);
}

#[test]
fn pytorch_checkpoints_load_as_their_safetensors_twins() {
    // tests/fixtures/torch (scripts/make_fixtures.py): the gpt2 fixture saved by torch.save.
    let ids = &reference("gpt2")["input_ids"];
    let want = load("gpt2").forward(ids).unwrap();
    let torch_dir = |name: &str| common::repo(&format!("tests/fixtures/torch/{name}"));
    for name in ["gpt2-f32", "gpt2-sharded"] {
        let m = HookedTransformer::from_pretrained_dir(torch_dir(name), Device::Cpu, Kind::Float).unwrap();
        assert_eq!(max_abs_diff(&m.forward(ids).unwrap(), &want), 0.0, "{name}");
    }
    for name in ["gpt2-f16", "gpt2-bf16"] {
        let m = HookedTransformer::from_pretrained_dir(torch_dir(name), Device::Cpu, Kind::Float).unwrap();
        let d = max_abs_diff(&m.forward(ids).unwrap(), &want);
        assert!(d > 0.0 && d < 0.1, "{name}: {d}");
    }
    // A pickle that would run a command when Python loads it is refused by name; nothing runs.
    let e = load_err(&torch_dir("evil"));
    assert!(e.contains("refused global `posix.system`") && e.contains("nothing in the file is run"), "{e}");
    // A truncated archive, a legacy (non-zip) file, a missing storage, another pickle: one line each.
    let dir = common::Scratch::new("torch-bad");
    std::fs::copy(torch_dir("gpt2-f32").join("config.json"), dir.join("config.json")).unwrap();
    let bytes = std::fs::read(torch_dir("gpt2-f32").join("pytorch_model.bin")).unwrap();
    for (what, data, expected) in [
        ("truncated", bytes[..bytes.len() / 2].to_vec(), "unreadable zip archive"),
        ("legacy", b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19.".to_vec(), "legacy (pre-1.6, non-zip)"),
        ("empty", Vec::new(), "not a PyTorch zip archive"),
    ] {
        std::fs::write(dir.join("pytorch_model.bin"), data).unwrap();
        let e = load_err(&dir);
        assert!(e.contains(expected) && e.lines().count() == 1, "{what}: {e}");
    }
    std::fs::remove_file(dir.join("pytorch_model.bin")).unwrap();
    let e = load_err(&dir);
    assert!(e.contains("no weights") && e.contains("pytorch_model.bin"), "{e}");
}

/// TransformerLens-native folders: settings that would change the function, a config that
/// contradicts the weights, an ambiguous or missing weights file: one clear line each.
#[test]
fn bad_transformer_lens_models_give_clear_errors() {
    let tl = |case: &str| common::repo(&format!("tests/fixtures/transformer_lens/{case}"));
    let copy = |case: &str, name: &str| {
        let dir = common::Scratch::new(&format!("tl-{name}"));
        for f in std::fs::read_dir(tl(case)).unwrap() {
            let f = f.unwrap().path();
            if f.file_name().unwrap() != "reference.safetensors" {
                std::fs::copy(&f, dir.join(f.file_name().unwrap())).unwrap();
            }
        }
        dir
    };
    let one_line = |e: String, expected: &[&str]| {
        assert!(expected.iter().all(|x| e.contains(x)) && e.lines().count() == 1, "{e}");
    };
    // Settings the runtime does not implement are refused by name, not run as something else.
    for (key, value, expected) in [
        ("use_local_attn", serde_json::json!(true), "`use_local_attn: true` is not supported"),
        ("attn_scores_soft_cap", serde_json::json!(50.0), "`attn_scores_soft_cap: 50` is not supported"),
        ("positional_embedding_type", serde_json::json!("alibi"), "`positional_embedding_type: alibi` is not supported"),
        ("normalization_type", serde_json::json!("BatchNorm"), "unknown `normalization_type` \"BatchNorm\""),
        ("act_fn", serde_json::json!("tanh"), "unsupported activation `tanh`"),
    ] {
        let dir = copy("ln-relu", "setting");
        edit_config(&dir, |c| {
            c.insert(key.into(), value);
        });
        one_line(load_err(&dir), &[expected]);
    }
    // The config contradicts the weights: LNPre has no gains, yet the file has them.
    let dir = copy("ln-relu", "lnpre");
    edit_config(&dir, |c| {
        c.insert("normalization_type".into(), "LNPre".into());
    });
    one_line(load_err(&dir), &["the config contradicts the weights", "`blocks.0.ln1.b`"]);
    // ... or a head count the weights do not have.
    let dir = copy("ln-relu", "heads");
    edit_config(&dir, |c| {
        c.insert("n_heads".into(), 2.into());
    });
    one_line(load_err(&dir), &["blocks.0.attn.W_Q", "[2, 32, 8]", "[4, 32, 8]"]);
    // An output vocabulary the unembedding does not have.
    let dir = copy("ln-relu", "vocab-out");
    edit_config(&dir, |c| {
        c.insert("d_vocab_out".into(), 23.into());
    });
    one_line(load_err(&dir), &["unembed.W_U", "[32, 23]"]);
    // A tied unembedding needs one vocabulary.
    let dir = copy("ln-relu", "tied");
    edit_config(&dir, |c| {
        c.insert("tie_word_embeddings".into(), true.into());
    });
    one_line(load_err(&dir), &["tied unembedding needs d_vocab_out = d_vocab, found 13 and 23"]);
    // A gated MLP whose b_in TransformerLens would add after the product.
    let dir = copy("rms-gated-rotary-gqa", "gated-bias");
    let mut state = weights(&dir);
    for (name, t) in &mut state {
        if name == "blocks.1.mlp.b_in" {
            *t = t.ones_like();
        }
    }
    Tensor::write_safetensors(&state, dir.join("model.safetensors")).unwrap();
    one_line(load_err(&dir), &["`blocks.1.mlp.b_in` is not zero", "after the gate product"]);
    // Two PyTorch files: which holds the weights is ambiguous; none at all is "no weights".
    let dir = copy("ln-relu", "two");
    std::fs::copy(dir.join("model.pth"), dir.join("other.pt")).unwrap();
    one_line(load_err(&dir), &["2 PyTorch files (model.pth, other.pt)", "ambiguous"]);
    std::fs::remove_file(dir.join("model.pth")).unwrap();
    std::fs::remove_file(dir.join("other.pt")).unwrap();
    one_line(load_err(&dir), &["no weights", "*.pth"]);
    // A TransformerLens model has no HF layout to be saved in.
    let model = HookedTransformer::from_pretrained_dir(tl("ln-relu"), Device::Cpu, Kind::Float).unwrap();
    let out = common::Scratch::new("tl-save");
    let e = model.save_pretrained(&out).unwrap_err().to_string();
    assert!(e.contains("no HF transformers layout"), "{e}");
}

/// InterpBench ships some configs as the pickled `HookedTransformerConfig` object rather than its
/// dict: read as the dict of its fields (nothing in it is run), the same model.
#[test]
fn interpbench_config_pickled_as_the_object_loads_as_the_dict() {
    let case = common::repo("tests/fixtures/interpbench/planted-induction");
    let dir = common::Scratch::new("interpbench-object-cfg");
    std::fs::copy(case.join("ll_model.pth"), dir.join("ll_model.pth")).unwrap();
    std::fs::copy(common::repo("tests/fixtures/interpbench/ll_model_cfg_object.pkl"), dir.join("ll_model_cfg.pkl")).unwrap();
    let object = HookedTransformer::from_pretrained_dir(&dir, Device::Cpu, Kind::Float).unwrap();
    let dict = HookedTransformer::from_pretrained_dir(&case, Device::Cpu, Kind::Float).unwrap();
    assert_eq!(object.cfg.hf_json, dict.cfg.hf_json);
    let ids = Tensor::from_slice(&[0i64, 3, 5, 7, 3, 5]).unsqueeze(0);
    assert_eq!(max_abs_diff(&object.forward(&ids).unwrap(), &dict.forward(&ids).unwrap()), 0.0);
}

/// Mixture-of-experts settings the runtime cannot honour, or that the weights contradict: one
/// clear line each.
#[test]
fn bad_expert_settings_are_refused() {
    let cases: [(&str, &str, serde_json::Value, &str); 7] = [
        ("mixtral", "num_experts_per_tok", 5.into(), "top-k (num_experts_per_tok) must be between 1 and the number of experts (4), found 5"),
        ("qwen3_moe", "num_experts_per_tok", serde_json::Value::Null, "missing key `num_experts_per_tok`"),
        ("mixtral", "num_local_experts", 3.into(), "has `model.layers.0.block_sparse_moe.experts.3.w1.weight`, but the config says 3 experts per layer"),
        ("olmoe", "num_experts", 9.into(), "model.layers.0.mlp.experts.8.gate_proj.weight"),
        ("qwen2_moe", "scoring_func", "sigmoid".into(), "unsupported expert routing setting `scoring_func: \"sigmoid\"`"),
        ("olmoe", "clip_qkv", 8.0.into(), "unsupported `clip_qkv: 8`"),
        ("qwen2_moe", "mlp_only_layers", serde_json::json!([7]), "`mlp_only_layers` names layer 7, but the model has 3"),
    ];
    for (arch, key, value, want) in cases {
        let dir = scratch(arch, &format!("moe-{key}"));
        edit_config(&dir, |c| {
            match value.is_null() {
                true => c.remove(key),
                false => c.insert(key.into(), value.clone()),
            };
        });
        let e = load_err(&dir);
        assert!(e.contains(want), "{arch} {key}={value}: {e}");
        assert_eq!(e.lines().count(), 1, "{e}");
    }
}

// ---- GGUF (llama.cpp's format): scripts/make_gguf_fixtures.py made the fixtures with the `gguf`
// package and HF transformers' own GGUF loader; scripts/fetch_models.sh fetches the real models.

mod gguf {
    use std::collections::HashMap;
    use std::path::PathBuf;

    use super::common::{max_abs_diff, repo, Scratch};
    use interp::interp_core::gguf::GgufFile;
    use interp::interp_core::{tch, BlockSite, CacheSpec, HookPoint, HookedTransformer};
    use tch::{Device, Kind, Tensor};

    pub fn fixture(name: &str) -> PathBuf {
        repo("tests/fixtures/gguf").join(name)
    }

    pub fn real(file: &str) -> PathBuf {
        let path = repo("models/real").join(file);
        assert!(path.exists(), "{} is missing: run scripts/fetch_models.sh (scripts/setup.sh does)", path.display());
        path
    }

    pub const SMOLLM2: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
    pub const GEMMA3: &str = "gemma-3-270m-q4_k_m.gguf";

    fn reference(name: &str) -> HashMap<String, Tensor> {
        Tensor::read_safetensors(fixture(&format!("{name}.safetensors"))).expect("reference fixture").into_iter().collect()
    }

    /// max |a - b| / max |b|: a difference relative to the tensor's own scale.
    fn rel(a: &Tensor, b: &Tensor) -> f64 {
        max_abs_diff(a, b) / b.abs().max().double_value(&[]).max(1e-30)
    }

    /// Logits (at `vocab_subset` where the reference keeps a subset), every hidden state and every
    /// attention pattern of `model` on the reference's input ids against HF's, relative to scale.
    fn compare(model: &HookedTransformer, r: &HashMap<String, Tensor>, prefix: &str) -> f64 {
        let ids = &r[&format!("{prefix}input_ids")];
        let spec = CacheSpec::names(["blocks.*.hook_resid_pre", "blocks.*.attn.hook_pattern", "unembed.hook_in"]);
        let (mut logits, cache) = model.run_with_cache(ids, spec).expect("forward");
        if let Some(subset) = r.get(&format!("{prefix}vocab_subset")) {
            logits = logits.index_select(-1, subset);
        }
        let mut worst = rel(&logits, &r[&format!("{prefix}logits")]);
        let n = model.cfg.n_layers;
        for l in 0..n {
            worst = worst.max(rel(cache.get(HookPoint::block(l, BlockSite::ResidPre)).unwrap(), &r[&format!("{prefix}hidden_states.{l}")]));
            worst = worst.max(rel(cache.get(HookPoint::block(l, BlockSite::Pattern)).unwrap(), &r[&format!("{prefix}attentions.{l}")]));
        }
        worst.max(rel(cache.get("unembed.hook_in").unwrap(), &r[&format!("{prefix}hidden_states.{n}")]))
    }

    /// The real models through the checks every family passes: every standard hook point cached
    /// with TransformerLens's shapes; SmolLM2 also saved in HF layout (with the tokenizer) and
    /// loaded back as the same function with the same token ids, and loaded in bf16 as asked
    /// (Gemma 3's 1 GB save is `scripts/check_saved_models.sh`'s, which HF then loads).
    #[test]
    fn real_models_cache_every_hook_and_save_as_hf() {
        for file in [SMOLLM2, GEMMA3] {
            let m = HookedTransformer::from_pretrained_dir(real(file), Device::Cpu, Kind::Float).unwrap();
            let text = "The capital of France is";
            let ids = m.to_tokens(text, true).unwrap();
            let (_, cache) = m.run_with_cache(&ids, CacheSpec::all()).unwrap();
            assert_eq!(cache.len(), m.hook_points(false).len(), "{file}");
            let logits = m.forward(&ids).unwrap();
            let (c, p) = (&m.cfg, ids.size()[1]);
            for (site, want) in [
                (BlockSite::Q, vec![1, p, c.n_heads, c.d_head]),
                (BlockSite::K, vec![1, p, c.n_kv_heads, c.d_head]),
                (BlockSite::Pattern, vec![1, c.n_heads, p, p]),
                (BlockSite::MlpPost, vec![1, p, c.d_mlp]),
                (BlockSite::ResidPost, vec![1, p, c.d_model]),
            ] {
                assert_eq!(cache.get(HookPoint::block(c.n_layers - 1, site)).unwrap().size(), want, "{file}: {site:?}");
            }
            if file == GEMMA3 {
                continue;
            }
            let dir = Scratch::new(&format!("save-{file}"));
            m.save_pretrained(&dir).unwrap();
            let back = HookedTransformer::from_pretrained_dir(&dir, Device::Cpu, Kind::Float).unwrap();
            assert_eq!(back.to_tokens(text, true).unwrap().size(), ids.size());
            assert!(back.to_tokens(text, true).unwrap().equal(&ids), "{file}: token ids after a save");
            let (tok, back_tok) = (m.tokenizer().unwrap(), back.tokenizer().unwrap());
            assert!(back_tok.chat_template().is_some_and(|t| t.contains("<|im_start|>")) && back_tok.chat_template() == tok.chat_template());
            assert_eq!(back_tok.add_bos_token(), Some(false));
            let d = max_abs_diff(&back.forward(&ids).unwrap(), &logits);
            assert!(d < 1e-5, "{file}: logits after a save differ by {d:e}");
            drop(back);
            let half = HookedTransformer::from_pretrained_dir(real(file), Device::Cpu, Kind::BFloat16).unwrap();
            let d = max_abs_diff(&half.forward(&ids).unwrap(), &logits) / logits.abs().max().double_value(&[]);
            assert!(half.kind() == Kind::BFloat16 && d < 0.1, "{file}: bf16 logits differ by {d} of scale");
        }
    }

    /// The README's IOI example: logit(" Mary") - logit(" John") after "... John gave a drink to"
    /// (with BOS first where HF's tokenizer adds it: Gemma's does, SmolLM2's does not).
    fn m_ioi(model: &HookedTransformer, bos: bool) -> f64 {
        let tokens = model.to_tokens("When Mary and John went to the store, John gave a drink to", bos).unwrap();
        let last = model.forward(&tokens).unwrap().get(0).get(-1); // [vocab]
        let id = |word: &str| model.to_tokens(word, false).map(|t| t.int64_value(&[0, 0])).unwrap();
        last.double_value(&[id(" Mary")]) - last.double_value(&[id(" John")])
    }

    /// Every ggml type the reader dequantises gives exactly the values of `gguf.quants.dequantize`;
    /// a version-2 header reads the same.
    #[test]
    fn dequantisers_equal_the_gguf_package_exactly() {
        let file = GgufFile::open(fixture("quants.gguf")).unwrap();
        let mut types = Vec::new();
        for info in file.tensors.iter().filter(|t| !t.name.ends_with(".expected")) {
            let got = file.tensor(&info.name).unwrap();
            let want = file.tensor(&format!("{}.expected", info.name)).unwrap();
            assert_eq!(got.size(), vec![2, 512]);
            assert!(got.equal(&want), "{}: differs from gguf's dequantiser by {:e}", info.name, max_abs_diff(&got, &want));
            assert!(want.abs().max().double_value(&[]) > 0.0);
            types.push(info.ggml_type.name());
        }
        assert_eq!(types, ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"]);
        // One metadata key of every value type, as `gguf`'s writer stored it.
        use interp::interp_core::gguf::Value as V;
        let got = |k: &str| file.get(&format!("interp.{k}")).cloned().unwrap();
        assert_eq!(
            ["u8", "i8", "u16", "i16", "u32", "i32", "f32", "u64", "i64", "f64", "bool", "str"].map(got),
            [
                V::Uint(200),
                V::Int(-100),
                V::Uint(60000),
                V::Int(-30000),
                V::Uint(4_000_000_000),
                V::Int(-2_000_000_000),
                V::Float(0.5),
                V::Uint((1 << 63) + 1),
                V::Int(-(1 << 62)),
                V::Float(1e300),
                V::Bool(true),
                V::Str("caf\u{e9} \u{65e5}\u{672c}".into())
            ]
        );
        assert_eq!(got("array"), V::Array(vec![V::Int(1), V::Int(2), V::Int(3)]));
        let strs = |v: &[&str]| V::Array(v.iter().map(|s| V::Str(s.to_string())).collect());
        assert_eq!(got("nested"), V::Array(vec![strs(&["a", "b"]), strs(&["c"])]));
        let mut bytes = std::fs::read(fixture("quants.gguf")).unwrap();
        bytes[4..8].copy_from_slice(&2u32.to_le_bytes());
        let dir = Scratch::new("gguf-v2");
        std::fs::write(dir.join("v2.gguf"), &bytes).unwrap();
        let v2 = GgufFile::open(dir.join("v2.gguf")).unwrap();
        assert_eq!(v2.version, 2);
        assert!(v2.tensor("Q4_K").unwrap().equal(&file.tensor("Q4_K").unwrap()));
    }

    /// Tiny random models of every GGUF architecture, written as llama.cpp's converter writes them,
    /// compute what HF transformers' GGUF loader computes, hook by hook.
    #[test]
    fn every_gguf_architecture_matches_hf_gguf_loader() {
        let mut report = Vec::new();
        for arch in ["llama", "qwen2", "qwen3", "phi3", "gemma2", "gemma3", "gpt2"] {
            let model = HookedTransformer::from_pretrained_dir(fixture(&format!("{arch}.gguf")), Device::Cpu, Kind::Float).unwrap();
            let d = compare(&model, &reference(arch), "");
            assert!(d < 1e-4, "{arch}: differs from HF by {d:e} of scale");
            report.push(format!("{arch} {d:.1e}"));
        }
        println!("GGUF architectures vs HF's GGUF loader (relative to scale): {}", report.join(", "));
    }

    /// SmolLM2-135M-Instruct and Gemma 3 270M, as HF transformers loads them from the same GGUF
    /// files: logits, every hidden state and attention pattern on two natural-text prompts, and
    /// the tokenizer's ids on a paragraph with punctuation, digits, non-ASCII and runs of spaces.
    #[test]
    fn real_models_match_hf() {
        for (name, file) in [("smollm2-135m", SMOLLM2), ("gemma3-270m", GEMMA3)] {
            let model = HookedTransformer::from_pretrained_dir(real(file), Device::Cpu, Kind::Float).unwrap();
            let r = reference(name);
            let tokens: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(fixture(&format!("{name}.tokens.json"))).unwrap()).unwrap();
            let tok = model.tokenizer().expect("a tokenizer from the metadata");
            let ids = |v: &serde_json::Value| v.as_array().unwrap().iter().map(|i| i.as_i64().unwrap()).collect::<Vec<_>>();
            assert_eq!(tok.encode(tokens["text"].as_str().unwrap(), false).unwrap(), ids(&tokens["ids"]), "{name}: paragraph ids");
            for (prompt, want) in tokens["prompts"].as_object().unwrap() {
                assert_eq!(tok.encode(prompt, false).unwrap(), ids(want), "{name}: {prompt}");
            }
            assert_eq!(tok.bos_token_id(), tokens["bos_token_id"].as_i64());
            assert_eq!(tok.add_bos_token(), tokens["add_bos_token"].as_bool(), "{name}: add_bos_token");
            assert_eq!(tok.chat_template().is_some(), name.starts_with("smollm2"), "{name}: chat template");
            let text = tokens["text"].as_str().unwrap();
            assert_eq!(tok.decode(&ids(&tokens["ids"])).unwrap(), text, "{name}: decode");
            // The README's example: " Mary" over " John" at the end of an IOI prompt.
            let ioi = m_ioi(&model, tokens["add_bos_token"].as_bool().unwrap());
            assert!((ioi - tokens["ioi_logit_diff"].as_f64().unwrap()).abs() < 1e-3, "{name}: IOI logit difference {ioi}");
            let mut worst = 0f64;
            for p in 0..2 {
                worst = worst.max(compare(&model, &r, &format!("{p}.")));
            }
            assert!(worst < 1e-4, "{name}: differs from HF by {worst:e} of scale");
            println!("{name} vs HF's GGUF loader: {worst:.1e} of scale");
        }
    }
}

/// Broken GGUF files, each refused with one clear line naming what is wrong.
#[test]
fn bad_gguf_files_give_clear_errors() {
    let good = std::fs::read(gguf::fixture("llama.gguf")).unwrap();
    let dir = common::Scratch::new("bad-gguf");
    let find =
        |bytes: &[u8], needle: &str| bytes.windows(needle.len()).position(|w| w == needle.as_bytes()).unwrap_or_else(|| panic!("{needle} not in the file"));
    let try_load = |name: &str, bytes: &[u8]| {
        let path = dir.join(format!("{name}.gguf"));
        std::fs::write(&path, bytes).unwrap();
        load_err(&path)
    };
    // Where a u32 metadata value sits: after its key, the key's type.
    let u32_value = |bytes: &mut Vec<u8>, key: &str, v: u32| {
        let at = find(bytes, key) + key.len() + 4;
        bytes[at..at + 4].copy_from_slice(&v.to_le_bytes());
    };
    // A tensor's entry: name, rank (u32), dims (u64 each), type (u32), offset (u64).
    let tensor_entry = |bytes: &[u8], name: &str| {
        let at = find(bytes, name) + name.len();
        let rank = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        (at + 4, at + 4 + 8 * rank)
    };

    let e = try_load("truncated", &good[..good.len() / 2]);
    assert!(e.contains("truncated: tensor `") && e.contains("lies past the end of the file"), "{e}");
    let e = try_load("header-only", &good[..20]);
    assert!(e.contains("tensor count is 21, more than the 4 bytes left in the file can hold"), "{e}");
    let mut b = good.clone();
    b[..4].copy_from_slice(b"GGUG");
    let e = try_load("magic", &b);
    assert!(e.contains("not a GGUF file: it starts with \"GGUG\""), "{e}");

    let mut b = good.clone();
    let (_, type_at) = tensor_entry(&b, "blk.0.attn_q.weight");
    b[type_at..type_at + 4].copy_from_slice(&20u32.to_le_bytes());
    let e = try_load("iq4", &b);
    assert!(e.contains("`blk.0.attn_q.weight` has type IQ4_NL, which is not supported"), "{e}");

    let mut b = good.clone();
    let (dims_at, _) = tensor_entry(&b, "token_embd.weight");
    b[dims_at..dims_at + 8].copy_from_slice(&u64::MAX.to_le_bytes());
    let e = try_load("huge", &b);
    assert!(e.contains("`token_embd.weight` has shape") && e.contains("too large"), "{e}");
    let mut b = good.clone();
    b[dims_at + 8..dims_at + 16].copy_from_slice(&(1u64 << 30).to_le_bytes());
    let e = try_load("past-end", &b);
    assert!(e.contains("`token_embd.weight`") && e.contains("lies past the end of the file"), "{e}");

    let mut b = good.clone();
    u32_value(&mut b, "llama.attention.head_count", 8);
    let e = try_load("heads", &b);
    assert!(
        e.contains("tensor `blk.0.attn_q.weight` (HF `model.layers.0.self_attn.q_proj.weight`) has shape [64, 64]") && e.contains("imply [128, 64]"),
        "{e}"
    );
    let mut b = good.clone();
    u32_value(&mut b, "llama.vocab_size", 300);
    let e = try_load("vocab", &b);
    assert!(e.contains("`token_embd.weight`") && e.contains("has shape [211, 64]") && e.contains("imply [300, 64]"), "{e}");

    let mut b = good.clone();
    let at = find(&b, "general.architecture") + "general.architecture".len() + 4 + 8;
    b[at..at + 5].copy_from_slice(b"llamb");
    let e = try_load("arch", &b);
    assert!(e.contains("unknown GGUF architecture `llamb`; supported: llama, qwen2"), "{e}");

    // A byte-level vocabulary without its merges.
    let mut b = std::fs::read(gguf::fixture("gpt2.gguf")).unwrap();
    let at = find(&b, "tokenizer.ggml.merges");
    b[at..at + 21].copy_from_slice(b"tokenizer.ggml.mergez");
    let e = try_load("merges", &b);
    assert!(e.contains("a byte-level BPE vocabulary (`gpt2`) without `tokenizer.ggml.merges`"), "{e}");

    // Two GGUF files in one folder: which is meant is ambiguous.
    let two = common::Scratch::new("two-gguf");
    std::fs::write(two.join("a.gguf"), &good).unwrap();
    std::fs::write(two.join("b.gguf"), &good).unwrap();
    assert!(load_err(&two).contains("2 GGUF files here (a.gguf, b.gguf): name the one to load"));
    // A folder holding one loads as the file does.
    std::fs::remove_file(two.join("b.gguf")).unwrap();
    HookedTransformer::from_pretrained_dir(&two, Device::Cpu, Kind::Float).unwrap();
}
