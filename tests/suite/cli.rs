//! The `interp` CLI contract: `inspect` and `cache` as other tools script against them.

use crate::common;

use std::process::Command;

use crate::common::{fixture, load, max_abs_diff, reference};
use interp::interp_core::{tch, CacheSpec};
use polars::prelude::{CsvReadOptions, ParquetReader, SerReader};
use tch::Tensor;

fn interp(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_interp")).args(args).output().expect("runs");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

#[test]
fn inspect_lists_sizes_and_every_hook_point() {
    let dir = fixture("llama");
    let (ok, out, _) = interp(&["inspect", dir.to_str().unwrap()]);
    assert!(ok);
    let m = load("llama");
    assert!(out.contains(&format!("parameters     {}", m.n_params())), "{out}");
    assert!(out.contains("heads          4 (kv heads 2), d_head 16"));
    for p in m.hook_points(true) {
        assert!(out.lines().any(|l| l.trim_end_matches(" *").trim() == p.to_string()), "{p} missing");
    }
}

/// A mixture of experts is described, and output piped into a reader that has gone (`| head`)
/// ends the command quietly instead of a panic on the closed pipe.
#[test]
fn inspect_describes_experts_and_stops_quietly_on_a_closed_pipe() {
    let (ok, out, _) = interp(&["inspect", fixture("qwen2_moe").to_str().unwrap()]);
    assert!(ok);
    assert!(out.contains("experts        2 of 5 experts x 32 units per token in 2 of 3 layers, weights as they are, a shared expert of 40 units"), "{out}");
    let mut child = Command::new(env!("CARGO_BIN_EXE_interp"))
        .args(["inspect", fixture("qwen2_moe").to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take()); // closed before the model has loaded, so the first print hits it
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
}

/// `interp routing` on the committed mixture of experts: tables, heatmaps and a page.
#[test]
fn routing_writes_tables_and_heatmaps() {
    let out = common::Scratch::new("cli-routing");
    let (ok, stdout, err) = interp(&["routing", "--n", "16", "--out", out.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(stdout.contains("modular_addition") && stdout.contains("score"), "{stdout}");
    for f in ["routing.csv", "routing_tokens.csv", "routing_usage.png", "routing_ablation.svg", "report.html"] {
        assert!(out.join(f).exists(), "{f}");
    }
    let (ok, _, err) = interp(&["routing", "models/tasks-bilinear", "--out", out.join("dense").to_str().unwrap()]);
    assert!(!ok && err.contains("not a mixture of experts") && err.lines().count() == 1, "{err}");
}

#[test]
fn cache_writes_requested_hooks_and_logits() {
    let dir = fixture("gpt_neox");
    let tmp = common::Scratch::new("cli");
    std::fs::create_dir_all(&tmp).unwrap();
    let ids_file = tmp.join("ids.safetensors");
    let ids = reference("gpt_neox")["input_ids"].shallow_clone();
    Tensor::write_safetensors(&[("input_ids", &ids)], &ids_file).unwrap();
    let out = tmp.join("acts.safetensors");
    let args = ["cache", dir.to_str().unwrap(), "--ids-file", ids_file.to_str().unwrap(), "--out", out.to_str().unwrap()];
    let (ok, _, err) = interp(&[&args[..], &["--hooks", "blocks.*.attn.hook_pattern", "blocks.1.hook_mlp_out"]].concat());
    assert!(ok, "{err}");
    let written: std::collections::HashMap<String, Tensor> = Tensor::read_safetensors(&out).unwrap().into_iter().collect();
    let mut names: Vec<&String> = written.keys().collect();
    names.sort();
    assert_eq!(names, ["blocks.0.attn.hook_pattern", "blocks.1.attn.hook_pattern", "blocks.1.hook_mlp_out", "logits"]);
    let (logits, cache) = load("gpt_neox").run_with_cache(&ids, CacheSpec::names(["blocks.1.hook_mlp_out"])).unwrap();
    assert_eq!(max_abs_diff(&written["logits"], &logits), 0.0);
    assert_eq!(max_abs_diff(&written["blocks.1.hook_mlp_out"], cache.get("blocks.1.hook_mlp_out").unwrap()), 0.0);
    // No --hooks: every standard hook point.
    let (ok, _, _) = interp(&args);
    assert!(ok);
    assert_eq!(Tensor::read_safetensors(&out).unwrap().len(), load("gpt_neox").hook_points(false).len() + 1);
}

#[test]
fn cli_errors_are_one_clear_line() {
    let gpt2 = fixture("gpt2");
    let g = gpt2.to_str().unwrap();
    let llama = fixture("llama");
    let cases: &[(&[&str], &str)] = &[
        (&["inspect", "/no/such/dir"], "model directory or GGUF file not found"),
        (&["cache", g, "--text", "hi", "--out", "/tmp/x.safetensors", "--hooks", "blocks.0.hook_zz"], "unknown hook point"),
        (&["cache", g, "--ids-file", "/no/ids.safetensors", "--out", "/tmp/x.safetensors"], "/no/ids.safetensors"),
        (&["inspect", g, "--device", "tpu"], "unknown device `tpu`"),
        (&["cache", llama.to_str().unwrap(), "--text", "hi", "--out", "/tmp/x.safetensors"], "no tokenizer.json"),
    ];
    for (args, want) in cases {
        let (ok, _, err) = interp(args);
        assert!(!ok, "{args:?} succeeded");
        assert!(err.contains(want), "{args:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
        assert!(!err.contains("panicked"));
    }
}

#[test]
fn time_limits_need_a_unit() {
    // `--time-limit 300` once meant 300 minutes to a user who meant seconds.
    for (limit, want) in [("300", "`300` has no unit: write 300s, 5m or 2h"), ("2d", "unknown unit `d`"), ("1.2.3m", "is not a duration")] {
        let (ok, _, err) = interp(&["acdc", "--time-limit", limit, "--out", "/tmp/never-written"]);
        assert!(!ok && err.contains(want), "{limit}: {err}");
    }
}

#[test]
fn summary_prints_a_logit_lens() {
    let (ok, out, err) = interp(&["summary"]);
    assert!(ok, "{err}");
    assert!(out.contains("run_with_cache: 42 hook points"), "{out}");
    assert!(out.contains("final_post"));
}

#[test]
fn train_killed_midway_resumes_to_the_same_weights() {
    let root = common::Scratch::new("cli-train");
    let _ = std::fs::remove_dir_all(&root);
    let corpus = root.join("corpus");
    std::fs::create_dir_all(&corpus).unwrap();
    for i in 0..4 {
        let text: String =
            (0..300).map(|j| format!("the {} cat sat on the {} mat. ", ["black", "white", "red"][(i + j) % 3], ["big", "small"][j % 2])).collect();
        std::fs::write(corpus.join(format!("doc{i}.txt")), text).unwrap();
    }
    let args = |out: &std::path::Path| -> Vec<String> {
        [
            "train",
            "--out",
            out.to_str().unwrap(),
            "--data",
            corpus.to_str().unwrap(),
            "--vocab",
            "300",
            "--layers",
            "1",
            "--d-model",
            "32",
            "--heads",
            "2",
            "--ctx",
            "16",
            "--batch",
            "4",
            "--steps",
            "400",
            "--warmup",
            "10",
            "--eval-every",
            "100",
            "--checkpoint-every",
            "5",
            "--threads",
            "1",
            "--mlp",
            "bilinear",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let whole = root.join("whole");
    let (ok, _, err) = interp(&args(&whole).iter().map(String::as_str).collect::<Vec<_>>());
    assert!(ok, "{err}");

    let killed = root.join("killed");
    let mut child = Command::new(env!("CARGO_BIN_EXE_interp")).args(args(&killed)).stderr(std::process::Stdio::null()).spawn().unwrap();
    let ckpt = killed.join("checkpoints/checkpoint.safetensors");
    let t0 = std::time::Instant::now();
    while !ckpt.exists() && t0.elapsed().as_secs() < 60 {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!killed.join("model.safetensors").exists(), "the run finished before it was killed");
    let (ok, _, err) = interp(&args(&killed).iter().map(String::as_str).collect::<Vec<_>>());
    assert!(ok, "{err}");
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(killed.join("train_report.json")).unwrap()).unwrap();
    assert!(report["resumed_at_step"].as_u64().unwrap() > 0, "{report}");
    assert_eq!(
        std::fs::read(whole.join("model.safetensors")).unwrap(),
        std::fs::read(killed.join("model.safetensors")).unwrap(),
        "resumed weights differ from an uninterrupted run"
    );
    let e = interp(&["train", "--out", root.join("bad").to_str().unwrap(), "--data", corpus.join("doc0.txt").to_str().unwrap()]).2;
    assert!(e.contains("malformed JSON") && e.trim_end().lines().count() == 1, "{e}");
}

#[test]
fn sae_train_eval_and_dashboard_from_the_command_line() {
    let model = common::repo("models/shakespeare-gpt2");
    let model = model.to_str().unwrap();
    let out = common::Scratch::new("cli-sae");
    let _ = std::fs::remove_dir_all(&out);
    let (o, cache) = (out.join("tc"), out.join("acts"));
    let args = ["sae", "train", model, "--hook", "blocks.0.ln2.hook_normalized", "--hook-out", "blocks.0.hook_mlp_out", "--arch", "topk", "--k", "8"];
    let small = ["--d-sae", "256", "--steps", "6", "--batch-tokens", "512", "--context", "32", "--eval-contexts", "8"];
    let paths = ["--out", o.to_str().unwrap(), "--cache-dir", cache.to_str().unwrap()];
    let (ok, stdout, err) = interp(&[&args[..], &small, &paths].concat());
    assert!(ok, "{err}");
    assert!(stdout.contains("CE loss recovered"), "{stdout}");
    for f in ["cfg.json", "sae_weights.safetensors", "sparsity.safetensors", "metrics.json"] {
        assert!(o.join(f).exists(), "{f}");
    }
    assert!(cache.join("manifest.json").exists());
    let cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(o.join("cfg.json")).unwrap()).unwrap();
    assert_eq!(cfg["architecture"], "topk_transcoder");
    assert_eq!(cfg["metadata"]["hook_name_out"], "blocks.0.hook_mlp_out");
    let (ok, stdout, err) = interp(&["sae", "eval", model, o.to_str().unwrap(), "--contexts", "4"]);
    assert!(ok && stdout.contains("FVU"), "{err}");
    let boards = out.join("boards");
    let (ok, _, err) = interp(&["sae", "dashboard", model, o.to_str().unwrap(), "--out", boards.to_str().unwrap(), "--latents", "0,5", "--contexts", "8"]);
    assert!(ok, "{err}");
    let html = std::fs::read_to_string(boards.join("dashboards.html")).unwrap();
    assert!(html.contains("Latent 5") && html.contains("promoted logits"), "{html}");
    // A dictionary whose hooks the model lacks is one clear line, not a panic.
    let (ok, _, err) = interp(&["sae", "eval", common::fixture("gpt2").to_str().unwrap(), o.to_str().unwrap()]);
    assert!(!ok && err.lines().count() == 1 && (err.contains("width") || err.contains("does not fit")), "{err}");
}

#[test]
fn transcoder_sets_train_eval_and_graph_from_the_command_line() {
    let model = common::repo("models/shakespeare-gpt2");
    let model = model.to_str().unwrap();
    let out = common::Scratch::new("cli-clt");
    let _ = std::fs::remove_dir_all(&out);
    let o = out.join("clt");
    let args = [
        "sae",
        "train",
        model,
        "--clt",
        "--arch",
        "topk",
        "--k",
        "8",
        "--d-sae",
        "128",
        "--steps",
        "6",
        "--batch-tokens",
        "512",
        "--context",
        "32",
        "--eval-contexts",
        "8",
    ];
    let (ok, stdout, err) = interp(&[&args[..], &["--out", o.to_str().unwrap()]].concat());
    assert!(ok, "{err}");
    assert!(stdout.contains("every MLP spliced: CE loss recovered"), "{stdout}");
    for f in ["config.yaml", "W_enc_0.safetensors", "W_dec_1.safetensors", "metrics.json", "report.html"] {
        assert!(o.join(f).exists(), "{f}");
    }
    let (ok, stdout, err) = interp(&["sae", "eval", model, o.to_str().unwrap(), "--contexts", "4"]);
    assert!(ok && stdout.contains("TopK cross-layer transcoder"), "{err}");
    let graph = out.join("graph");
    let (ok, stdout, err) =
        interp(&["graph", model, "--transcoders", o.to_str().unwrap(), "--max-features", "40", "--contexts", "4", "--out", graph.to_str().unwrap()]);
    assert!(ok && stdout.contains("40 of ") && stdout.contains("active features (--max-features)"), "{stdout}{err}");
    // A skip path or a hook does not go with --clt: clap says so in one line.
    let (ok, _, err) = interp(&["sae", "train", model, "--clt", "--skip", "--out", o.to_str().unwrap()]);
    assert!(!ok && err.contains("cannot be used with"), "{err}");

    // Skip transcoders for every layer, trained in one pass: a folder per layer that the graph
    // reads, checked by intervention on kept features.
    let per_layer = out.join("per-layer");
    let every: Vec<&str> = args.iter().map(|a| if *a == "--clt" { "--every-layer" } else { a }).collect();
    let (ok, stdout, err) = interp(&[&every[..], &["--skip", "--out", per_layer.to_str().unwrap()]].concat());
    assert!(ok && stdout.contains("2 per-layer transcoders: TopK skip transcoder"), "{stdout}{err}");
    for f in ["layer_0/cfg.json", "layer_1/sae_weights.safetensors", "metrics.json", "report.html"] {
        assert!(per_layer.join(f).exists(), "{f}");
    }
    let graph = out.join("graph-per-layer");
    let (ok, stdout, err) = interp(&["graph", model, "--transcoders", per_layer.to_str().unwrap(), "--check", "3", "--out", graph.to_str().unwrap()]);
    assert!(ok && stdout.contains("9 interventions") && stdout.contains("direct effects 1.000"), "{stdout}{err}");
    let csv = std::fs::read_to_string(graph.join("interventions.csv")).unwrap();
    assert_eq!(csv.lines().count(), 10, "{csv}");
    // An id that pruning removed (or that names nothing) is one clear line.
    let (ok, _, err) = interp(&["graph", model, "--transcoders", per_layer.to_str().unwrap(), "--intervene", "1_9999_3", "--out", graph.to_str().unwrap()]);
    assert!(!ok && err.lines().count() == 1 && err.contains("`1_9999_3` is not in the pruned graph"), "{err}");
}

#[test]
fn sae_runs_record_their_cache_curve_and_options() {
    let model = common::repo("models/shakespeare-gpt2");
    let model = model.to_str().unwrap();
    let out = common::Scratch::new("cli-sae-options");
    let _ = std::fs::remove_dir_all(&out);
    let (o, cache) = (out.join("sae"), out.join("acts"));
    // A small corpus (16 documents, the first 8 kB of each play: about 30k tokens), so that each of
    // the seven runs below tokenizes 30k tokens to fingerprint the cache, not Shakespeare's 1.4M.
    let (train_docs, _) = interp::interp_core::data::corpus("shakespeare").unwrap();
    let corpus = out.join("corpus.jsonl");
    std::fs::create_dir_all(&*out).unwrap();
    let lines: Vec<String> =
        train_docs.iter().take(16).map(|d| serde_json::json!({ "text": d.text.chars().take(8000).collect::<String>() }).to_string()).collect();
    std::fs::write(&corpus, lines.join("\n")).unwrap();
    let corpus = corpus.to_str().unwrap();
    let train = |extra: &[&str], to: &std::path::Path| {
        let args = ["sae", "train", model, "--data", corpus, "--hook", "blocks.1.hook_resid_pre", "--k", "8", "--d-sae", "256", "--batch-tokens", "512"];
        let args = [&args[..], &["--eval-contexts", "4", "--out", to.to_str().unwrap(), "--cache-dir", cache.to_str().unwrap()]].concat();
        interp(&[&args[..], extra].concat())
    };
    let (ok, _, err) = train(&["--context", "32", "--steps", "8", "--cache-dtype", "f16", "--keep-checkpoints", "1", "--checkpoint-every", "4"], &o);
    assert!(ok, "{err}");
    // The run's curve, chart and report; the newest snapshot kept.
    for f in ["train_log.jsonl", "training_curve.svg", "training_curve.png", "report.html", "evaluation.json", "checkpoints/step_8/cfg.json"] {
        assert!(o.join(f).exists(), "{f}");
    }
    assert!(!o.join("checkpoints/step_4").exists());
    assert_eq!(std::fs::read_to_string(o.join("train_log.jsonl")).unwrap().lines().count(), 1);
    let manifest: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(cache.join("manifest.json")).unwrap()).unwrap();
    assert_eq!((manifest["dtype"].as_str(), manifest["context_size"].as_i64(), manifest["corpus"].as_str()), (Some("float16"), Some(32), Some(corpus)));
    // The same cache with other settings: the differences, one line each, and nothing trained.
    let other = out.join("other");
    let (ok, _, err) = train(&["--context", "64", "--seed", "5", "--steps", "8"], &other);
    assert!(
        !ok && err.contains("context_size: 32 in the cache, 64 in this run")
            && err.contains("seed: 0 in the cache, 5 in this run")
            && err.contains("--reuse-cache"),
        "{err}"
    );
    // --reuse-cache trains on it and records the cache's context, not the flag's.
    let (ok, _, err) = train(&["--context", "64", "--steps", "8", "--reuse-cache"], &other);
    assert!(ok && err.contains("reusing the cache although its context_size"), "{err}");
    let cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(other.join("cfg.json")).unwrap()).unwrap();
    assert_eq!(cfg["metadata"]["context_size"], 32);
    // More steps than the cache holds: an error, unless more epochs are allowed (and reported).
    let n = manifest["batches_per_shard"].as_u64().unwrap() * manifest["shards"].as_array().unwrap().len() as u64;
    let steps = (n + 3).to_string();
    let (ok, _, err) = train(&["--context", "32", "--steps", &steps], &other);
    assert!(!ok && err.contains(&format!("holds {n} and 1 epoch(s) are allowed")), "{err}");
    let (ok, stdout, err) = train(&["--context", "32", "--steps", &steps, "--epochs", "2", "--checkpoint-every", "1000"], &out.join("epochs"));
    assert!(ok && stdout.contains("epochs over the cache"), "{err}");
    // A budget below one batch, and a fine-tune start of other widths.
    let (ok, _, err) = train(&["--tokens", "100"], &other);
    assert!(!ok && err.contains("invalid setting tokens = 100: at least one batch (512 tokens)") && err.lines().count() == 1, "{err}");
    let foreign = common::repo("tests/fixtures/saelens/topk");
    let (ok, _, err) = train(&["--context", "32", "--steps", "8", "--from", foreign.to_str().unwrap()], &out.join("tune"));
    assert!(!ok && err.contains("cannot fine-tune a dictionary of widths 16 -> 40 latents -> 16") && err.lines().count() == 1, "{err}");
    // Fine-tuning the trained SAE works.
    let (ok, _, err) = train(&["--context", "32", "--steps", "4", "--from", o.to_str().unwrap(), "--lr", "1e-5"], &out.join("tune"));
    assert!(ok && err.contains("fine-tuning"), "{err}");

    // Evaluation without the model, on the cache: JSON with no downstream metrics.
    let json = out.join("eval.json");
    let (ok, stdout, err) =
        interp(&["sae", "eval", o.to_str().unwrap(), "--activations", cache.to_str().unwrap(), "--batches", "4", "--json", json.to_str().unwrap()]);
    assert!(ok && stdout.contains("FVU") && !stdout.contains("CE loss"), "{err}");
    let m: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert!(m["fvu"].is_number() && m["n_tokens"] == 4 * 512 && m.get("ce_loss_recovered").is_none(), "{m}");
    // With the model, the JSON has them.
    let (ok, _, err) = interp(&["sae", "eval", model, o.to_str().unwrap(), "--contexts", "4"]);
    assert!(ok, "{err}");
    let m: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(o.join("eval.json")).unwrap()).unwrap();
    assert!(m["ce_loss_recovered"].is_number(), "{m}");

    // Encode text, decode the features: the dictionary's reconstruction of the model's activations.
    let (feats, recon) = (out.join("feats.safetensors"), out.join("recon.safetensors"));
    let (ok, _, err) = interp(&["sae", "encode", model, o.to_str().unwrap(), "--text", "To be, or not to be", "--out", feats.to_str().unwrap()]);
    assert!(ok, "{err}");
    let (ok, _, err) = interp(&["sae", "decode", o.to_str().unwrap(), "--features", feats.to_str().unwrap(), "--out", recon.to_str().unwrap()]);
    assert!(ok, "{err}");
    let read = |p: &std::path::Path| -> std::collections::HashMap<String, Tensor> { Tensor::read_safetensors(p).unwrap().into_iter().collect() };
    let (f, r) = (read(&feats), read(&recon));
    let dict = interp::transcoders::SparseDictionary::load_saelens(&o, tch::Device::Cpu).unwrap();
    assert_eq!(f["feature_acts"].size()[2], 256);
    assert!(max_abs_diff(&f["feature_acts"], &dict.encode(&f["sae_in"]).unwrap()) < 1e-5);
    assert!(max_abs_diff(&r["sae_out"], &dict.forward(&f["sae_in"]).unwrap()) < 1e-4);
    // Encode activations from `interp cache --no-logits`.
    let acts = out.join("acts.safetensors");
    let (ok, _, err) =
        interp(&["cache", model, "--text", "To be, or not to be", "--hooks", "blocks.1.hook_resid_pre", "--no-logits", "--out", acts.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(!read(&acts).contains_key("logits"));
    let (ok, _, err) = interp(&["sae", "encode", o.to_str().unwrap(), "--activations", acts.to_str().unwrap(), "--out", feats.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(max_abs_diff(&read(&feats)["feature_acts"], &f["feature_acts"]) < 1e-5);
}

#[test]
fn circuit_commands_write_tables_json_and_charts() {
    let out = common::Scratch::new("cli-circuits");
    let o = |sub: &str| out.join(sub).to_str().unwrap().to_string();
    let (ok, stdout, err) = interp(&["acdc", "--task", "greater-than", "--n", "16", "--out", &o("acdc")]);
    assert!(ok, "{err}");
    assert!(stdout.contains("edges kept"), "{stdout}");
    let circuit: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("acdc/circuit.json")).unwrap()).unwrap();
    let kept = circuit["n_edges"].as_u64().unwrap();
    assert!(kept > 0 && kept < circuit["n_edges_total"].as_u64().unwrap());
    assert_eq!(circuit["edges"].as_array().unwrap().len() as u64, kept);
    assert!(circuit["faithfulness"].as_f64().unwrap() > 0.5);
    for f in ["acdc_edges.csv", "eap_scores.csv", "eap_ig_scores.csv", "faithfulness.csv", "faithfulness.svg", "faithfulness.png"] {
        assert!(out.join("acdc").join(f).metadata().unwrap().len() > 100, "{f}");
    }
    let (ok, _, err) = interp(&["trace", "--task", "facts", "--n", "3", "--samples", "4", "--charts", "1", "--out", &o("trace")]);
    assert!(ok, "{err}");
    for f in ["traces.csv", "aie.csv", "trace_0.png", "trace_0.svg"] {
        assert!(out.join("trace").join(f).exists(), "{f}");
    }
    let (ok, _, err) = interp(&["patch", "--sites", "resid_pre", "z", "--n", "8", "--out", &o("patch")]);
    assert!(ok, "{err}");
    let csv = std::fs::read_to_string(out.join("patch/patching.csv")).unwrap();
    assert!(csv.starts_with("site,layer,pos,head,expert,metric,normalized\n"));
    assert!(out.join("patch/patch_z.png").exists());
    // Bad input: one line, non-zero exit.
    for args in [
        vec!["trace", "--task", "ioi", "--out", &o("bad")],
        vec!["acdc", "--tau=-1", "--out", &o("bad")],
        vec!["patch", "--sites", "nope", "--out", &o("bad")],
        vec!["acdc", fixture("gemma2").to_str().unwrap().to_string().leak(), "--out", &o("bad")],
    ] {
        let (ok, _, err) = interp(&args);
        assert!(!ok && err.trim().lines().count() == 1 && err.starts_with("error: "), "{args:?}: {err}");
    }
}

#[test]
fn bilinear_and_graph_write_their_reports() {
    let out = common::Scratch::new("cli-features");
    let o = |s: &str| out.join(s).to_str().unwrap().to_string();
    let (ok, stdout, err) = interp(&["bilinear", "--tokens", "m3,m4-m5", "--out", &o("bilinear")]);
    assert!(ok, "{err}");
    assert!(stdout.contains("effective rank") && stdout.contains("k=0:"), "{stdout}");
    let csv = std::fs::read_to_string(out.join("bilinear/eigenvectors.csv")).unwrap();
    assert!(csv.starts_with("direction,rank,eigenvalue,favoured_tokens,disfavoured_tokens\n"));
    assert_eq!(csv.lines().count(), 1 + 2 * 4, "4 eigenvectors for each of 2 directions");
    let curve = std::fs::read_to_string(out.join("bilinear/truncation.csv")).unwrap();
    let full: f64 = curve.lines().last().unwrap().split(',').nth(1).unwrap().parse().unwrap();
    assert!(full > 0.9, "all eigenpairs: the model's own accuracy ({full})");
    for f in ["spectra.svg", "spectra.png", "truncation.png"] {
        assert!(out.join("bilinear").join(f).metadata().unwrap().len() > 1000, "{f}");
    }
    let (ok, stdout, err) = interp(&["graph", "--prompt", "To be, or not to be", "--qk", "1.0:5:3", "--qk-heads", "2", "--out", &o("graph")]);
    assert!(ok, "{err}");
    assert!(stdout.contains("completeness error") && stdout.contains("QK L1H0 5 -> 3"), "{stdout}");
    // QK attribution: the one asked for and the two strongest heads, each exact.
    let qk: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("graph/qk.json")).unwrap()).unwrap();
    let qk = qk["qk_attributions"].as_array().unwrap();
    assert_eq!(qk.len(), 3);
    assert_eq!((&qk[0]["layer"], &qk[0]["head"], &qk[0]["query_pos"], &qk[0]["key_pos"]), (&1.into(), &0.into(), &5.into(), &3.into()));
    assert!(qk.iter().all(|q| q["completeness_error"].as_f64().unwrap() < 1e-4 && q["top_pairs"].as_array().unwrap().len() == 8));
    let read = |p: &str| -> serde_json::Value { serde_json::from_str(&std::fs::read_to_string(out.join(p)).unwrap()).unwrap() };
    let json = read("graph/shakespeare-gpt2-to-be-or-not-to-be.json");
    assert!(!json["nodes"].as_array().unwrap().is_empty() && !json["links"].as_array().unwrap().is_empty());
    assert!(out.join("graph/graph.html").exists() && out.join("graph/nodes.csv").exists());
    // The graph's own JSON carries the QK attributions too, each pair's sources by node id
    // (features, errors and embeddings are nodes of the full graph; heads and biases are not).
    let in_graph = json["qk_attributions"].as_array().unwrap();
    assert_eq!(in_graph.len(), 3);
    let ids: Vec<&str> =
        in_graph.iter().flat_map(|q| q["top_pairs"].as_array().unwrap()).flat_map(|p| [&p["query_node"], &p["key_node"]]).filter_map(|v| v.as_str()).collect();
    assert!(!ids.is_empty() && ids.iter().all(|id| id.starts_with("E_") || id.split('_').count() == 3), "{ids:?}");
    let nodes = std::fs::read_to_string(out.join("graph/nodes.csv")).unwrap();
    let in_table = |id: &str| {
        let parts: Vec<&str> = id.split('_').collect();
        match parts[0] {
            "E" => nodes.lines().any(|l| l.contains(&format!(",token,-1,{},{},", parts[2], parts[1]))),
            "0" if nodes.lines().any(|l| l.contains(&format!(",error,{},{},", parts[1], parts[2]))) => true,
            layer => nodes.lines().any(|l| l.contains(&format!(",feature,{layer},{},{},", parts[2], parts[1]))),
        }
    };
    assert!(ids.iter().all(|id| in_table(id)), "every id names a node of the graph: {ids:?}");
    // What circuit-tracer's viewer fetches: the metadata list and a feature file per feature node.
    assert_eq!(json["metadata"]["scan"], "./graph_data/features");
    for node in json["nodes"].as_array().unwrap().iter().filter(|n| n["feature_type"] == "cross layer transcoder") {
        let feature = read(&format!("graph/features/{}.json", node["feature"]));
        assert!(feature["examples_quantiles"][0]["examples"].as_array().is_some_and(|e| !e.is_empty()) && feature["top_logits"].is_array(), "{node}");
    }
    // Our view: a pruning slider, and a dashboard for every feature file, shown when its node is clicked.
    let html = std::fs::read_to_string(out.join("graph/graph.html")).unwrap();
    let features = std::fs::read_dir(out.join("graph/features")).unwrap().count();
    assert!(html.contains("type=\"range\"") && html.matches("<div id=\"dash-").count() == features, "{features} feature files");
    // A second graph in the same folder joins the metadata list.
    let (ok, _, err) = interp(&["graph", "--prompt", "O Romeo, Romeo", "--slug", "second", "--out", &o("graph")]);
    assert!(ok, "{err}");
    let slugs: Vec<String> = read("graph/graph-metadata.json")["graphs"].as_array().unwrap().iter().map(|g| g["slug"].as_str().unwrap().to_string()).collect();
    assert_eq!(slugs, ["shakespeare-gpt2-to-be-or-not-to-be", "second"]);
    // `interp qk` on any model, here without transcoders: each MLP is one source.
    let (ok, stdout, err) = interp(&["qk", "--prompt", "To be, or not to be", "--qk", "1.2:-1:1", "--out", &o("qk")]);
    assert!(ok, "{err}");
    assert!(stdout.contains("by query source") && stdout.contains("MLP 0"), "{stdout}");
    let qk = read("qk/qk.json");
    assert!(qk["completeness_error"].as_f64().unwrap() < 1e-4 && qk["key_pos"] == 1, "{qk}");
    // Each side's sources summed add up to the score too.
    let score = qk["score"].as_f64().unwrap();
    for side in ["query", "key"] {
        let csv = std::fs::read_to_string(out.join(format!("qk/qk_{side}_sources.csv"))).unwrap();
        // The source names may hold commas: the part is the second field from the end.
        let total: f64 = csv.lines().skip(1).map(|l| l.rsplit(',').nth(1).unwrap().parse::<f64>().unwrap()).sum();
        assert!((total - score).abs() < 1e-4, "{side}: {total} vs {score}");
    }
    for args in [
        vec!["bilinear", "models/shakespeare-gpt2", "--out", &o("bad")],
        vec!["bilinear", "--tokens", "not-a-token", "--out", &o("bad")],
        vec!["graph", "--transcoders", "models/tasks-bilinear", "--out", &o("bad")],
        vec!["graph", "--max-memory", "0.01", "--out", &o("bad")],
        vec!["graph", "--qk", "1.0:3:5", "--out", &o("bad")],
        vec!["graph", "--qk", "1:3:5", "--out", &o("bad")],
        vec!["graph", "--pin", "99_1_1", "--out", &o("bad")],
        vec!["graph", "--supernode", "no-ids=", "--out", &o("bad")],
        vec!["qk", "--prompt", "To be", "--qk", "1.0:0:-1x", "--out", &o("bad")],
        vec!["qk", "--prompt", "To be", "--qk", "1.0:1:2", "--out", &o("bad")],
    ] {
        let (ok, _, err) = interp(&args);
        assert!(!ok && err.trim().lines().count() == 1 && err.starts_with("error: "), "{args:?}: {err}");
    }
}

/// The columns of a parquet table the report wrote, and its row count.
fn parquet_columns(path: &std::path::Path) -> (Vec<String>, usize) {
    let df = ParquetReader::new(std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).finish().unwrap();
    (df.get_column_names().iter().map(|c| c.to_string()).collect(), df.height())
}

#[test]
fn report_runs_every_analysis_on_every_built_in_model_into_one_self_contained_page() {
    let out = common::Scratch::new("cli-report");
    let (ok, stdout, err) = interp(&["report", "--n", "8", "--out", out.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(stdout.contains("report.html"), "{stdout}");
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    for section in [
        "shakespeare-gpt2: model and logit lens",
        "Sparse dictionaries: SAEs and transcoders",
        "Transcoder attribution graph",
        "tasks-bilinear: model and logit lens",
        "Causal tracing: facts",
        "Circuits: ioi",
        "Circuits: greater_than",
        "Bilinear MLP spectra: layer 1",
        "tasks-moe: model and logit lens",
        "Mixture of experts: routing",
    ] {
        assert!(html.contains(&format!(">{section}</h2>")), "section {section:?} missing");
    }
    // Self-contained: every picture is embedded, nothing is fetched.
    let images = html.matches("<img ").count();
    assert!(images >= 12 && images == html.matches("src=\"data:image/png;base64,").count(), "{images} images");
    assert!(!html.contains("src=\"http") && !html.contains("href=\"http"));
    assert!(html.matches("<h3>Latent ").count() >= 6, "dashboards of 3 latents for each of at least two dictionaries");
    // Stable table columns (README), readable by polars.
    let text = out.join("shakespeare-gpt2");
    let task = out.join("tasks-bilinear");
    for (path, columns) in [
        (text.join("model.parquet"), "property,value"),
        (text.join("logit_lens.parquet"), "component,pos,token,next_token,top_token,p_top,p_next"),
        (text.join("dictionaries.parquet"), "dictionary,hook_in,hook_out,architecture,d_sae,l0,fvu,ce_loss_recovered,dead_fraction"),
        (text.join("nodes.parquet"), "node,kind,layer,pos,feature,token,activation,probability,influence,kept"),
        (task.join("task_scores.parquet"), "task,prompts,score"),
        (task.join("aie.parquet"), "label,n_prompts,total_effect,kind,role,layer,aie"),
        (task.join("traces.parquet"), "label,kind,pos,role,layer,probability,indirect_effect"),
        (task.join("ioi/acdc_edges.parquet"), "edge,sender,receiver,kept,effect"),
        (task.join("ioi/eap_ig_scores.parquet"), "edge,sender,receiver,score"),
        (task.join("greater-than/faithfulness.parquet"), "method,n_edges,faithfulness"),
        (task.join("eigenvectors.parquet"), "direction,rank,eigenvalue,favoured_tokens,disfavoured_tokens"),
        (task.join("truncation.parquet"), "k,accuracy"),
        (out.join("tasks-moe/routing.parquet"), "task,layer,expert,share,score,score_change"),
        (out.join("tasks-moe/routing_tokens.parquet"), "layer,expert,token,share,occurrences"),
    ] {
        let (names, rows) = parquet_columns(&path);
        assert_eq!(names.join(","), columns, "{}", path.display());
        assert!(rows > 0, "{}", path.display());
        let csv = std::fs::read_to_string(path.with_extension("csv")).unwrap();
        assert!(csv.starts_with(&format!("{columns}\n")), "{}", path.display());
        // Tokens may hold commas, quotes and newlines: a CSV reader must see the same rows.
        let df = CsvReadOptions::default().with_has_header(true).try_into_reader_with_file_path(Some(path.with_extension("csv"))).unwrap().finish().unwrap();
        assert_eq!(df.height(), rows, "{}", path.display());
    }
    // The task model solves every task; the logit lens's last row reproduces the model's prediction.
    let scores = std::fs::read_to_string(task.join("task_scores.csv")).unwrap();
    assert!(scores.lines().skip(1).all(|l| l.rsplit(',').next().unwrap().parse::<f64>().unwrap() > 0.9), "{scores}");
    for sub in ["ioi", "greater-than"] {
        for name in ["circuit.json", "eap_ig_circuit.json"] {
            let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(task.join(sub).join(name)).unwrap()).unwrap();
            let n = json["n_edges"].as_u64().unwrap();
            assert!(n > 0 && n < json["n_edges_total"].as_u64().unwrap() && json["edges"].as_array().unwrap().len() as u64 == n, "{sub}/{name}");
        }
        assert!(task.join(sub).join("circuit_acdc.svg").exists() && task.join(sub).join("circuit_eap_ig.png").exists());
    }
    assert!(text.join("graph-metadata.json").exists() && text.join("features").is_dir());

    // Any model directory: the parts that apply, and a note for the rest.
    let gpt2 = fixture("gpt2");
    let (ok, _, err) =
        interp(&["report", gpt2.to_str().unwrap(), "--prompt", "Then, Mary and John went to the store.", "--out", out.join("gpt2").to_str().unwrap()]);
    assert!(ok, "{err}");
    let html = std::fs::read_to_string(out.join("gpt2/report.html")).unwrap();
    assert!(html.contains("gpt2: model and logit lens</h2>") && html.contains("Skipped: this model does not use the built-in tasks"));
    for args in
        [vec!["report", "no/such/model", "--out", out.to_str().unwrap()], vec!["report", fixture("llama").to_str().unwrap(), "--out", out.to_str().unwrap()]]
    {
        let (ok, _, err) = interp(&args);
        assert!(!ok && err.trim().lines().count() == 1 && err.starts_with("error: "), "{args:?}: {err}");
    }
}

#[test]
fn circuit_commands_take_prompt_files() {
    let root = common::Scratch::new("cli-prompts");
    let file = root.join("ioi.jsonl");
    let f = file.to_str().unwrap();
    let (ok, out, err) = interp(&["prompts", "--task", "ioi", "--n", "8", "--out", f]);
    assert!(ok && out.contains("wrote 8 ioi pairs"), "{out}{err}");
    // ACDC alone at one tau, on the exported file, with a checkpoint and MIB's layout.
    let acdc_out = root.join("acdc");
    let mib = root.join("mib");
    let ckpt = root.join("acdc.json");
    let args = [
        "acdc",
        "--prompts",
        f,
        "--out",
        acdc_out.to_str().unwrap(),
        "--only",
        "--tau",
        "0.3",
        "--checkpoint",
        ckpt.to_str().unwrap(),
        "--export-mib",
        mib.to_str().unwrap(),
    ];
    let (ok, out, err) = interp(&args);
    assert!(ok, "{err}");
    assert!(out.contains("ACDC tau 0.3000") && out.contains("one edge per forward, as on a CPU") && out.contains("MIB CPR"), "{out}");
    assert!(!out.contains("EAP-IG"), "--only runs ACDC alone: {out}");
    // MIB's layout: <method>_<ablation>_<level>/<task>_<model>/importances.json.
    let path = mib.join("ACDC_patching_edge/ioi_tasks-bilinear/importances.json");
    assert!(ckpt.exists() && path.exists());
    let importances: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert_eq!(importances["edges"].as_object().map(|e| e.len()), Some(110));
    assert!(importances["edges"]["input->a0.h0<q>"]["score"].is_number());
    // Node scores, which MIB's node-level evaluation needs: the sum of each node's outgoing edges.
    let out_of = |node: &str| -> f64 {
        importances["edges"]
            .as_object()
            .unwrap()
            .iter()
            .filter(|(name, _)| name.starts_with(&format!("{node}->")))
            .map(|(_, e)| e["score"].as_f64().unwrap())
            .sum()
    };
    for node in ["input", "a0.h1", "m1"] {
        let score = importances["nodes"][node]["score"].as_f64().unwrap();
        assert!((score - out_of(node)).abs() < 1e-9 * score.abs().max(1.0), "{node}: {score} vs {}", out_of(node));
    }
    // Mistakes: one line each, and nothing written to --out.
    std::fs::write(root.join("bad.jsonl"), "{\"clean_ids\": [0, 1], \"corrupted_ids\": [0, 1, 2], \"answer\": 3}\n").unwrap();
    let bad = root.join("bad.jsonl");
    let never = root.join("never");
    let n = never.to_str().unwrap();
    let cases: &[(&[&str], &str)] = &[
        (&["eap", "--prompts", bad.to_str().unwrap(), "--out", n], "bad.jsonl: line 1: clean is 2 tokens and corrupted 3"),
        (&["eap", "--prompts", "/no/such.jsonl", "--out", n], "/no/such.jsonl"),
        (&["eap", "--prompts", f, "--out", n, "--max-memory", "0.3"], "is too small"),
        (&["eap", "--prompts", f, "--out", n, "--metric", "accuracy"], "invalid value 'accuracy'"),
        (&["eap", "--prompts", f, "--task", "ioi", "--out", n], "cannot be used with"),
        (&["patch", "--prompts", f, "--out", n, "--metric", "logit-diff", "--max-memory", "1"], "unexpected argument"),
    ];
    for (args, want) in cases {
        let (ok, _, err) = interp(args);
        assert!(!ok, "{args:?} succeeded");
        assert!(err.contains(want), "{args:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
        assert!(!never.exists(), "{args:?} wrote to --out");
    }
}

/// `interp benchmark` on InterpBench case folders: a table of every case and method, a report;
/// a case without prompts and a folder without cases are one-line errors.
#[test]
fn benchmark_scores_methods_against_known_circuits() {
    let cases = common::repo("tests/fixtures/interpbench");
    let o = common::Scratch::new("cli-benchmark");
    let (ok, stdout, err) = interp(&["benchmark", cases.to_str().unwrap(), "--ablation", "zero", "--out", o.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(stdout.contains("case planted-induction: 16 prompts") && stdout.contains("ACDC       edge AUROC 1.000"), "{stdout}");
    let table = CsvReadOptions::default().try_into_reader_with_file_path(Some(o.join("benchmark.csv"))).unwrap().finish().unwrap();
    assert_eq!(table.height(), 3, "EAP, EAP-IG and ACDC");
    assert!(o.join("report.html").exists() && o.join("planted-induction/faithfulness.png").exists());
    // Without prompts.jsonl (InterpBench publishes none) the prompts must come from --prompts.
    let bare = common::Scratch::new("cli-benchmark-bare");
    let case = bare.join("case");
    std::fs::create_dir_all(&case).unwrap();
    for f in ["ll_model.pth", "ll_model_cfg.pkl", "edges.pkl", "meta.json"] {
        std::fs::copy(cases.join("planted-induction").join(f), case.join(f)).unwrap();
    }
    let (ok, _, err) = interp(&["benchmark", bare.to_str().unwrap(), "--out", o.join("bare").to_str().unwrap()]);
    assert!(!ok && err.contains("no prompts.jsonl in the case folder; give a prompt file with --prompts"), "{err}");
    let prompts = cases.join("planted-induction/prompts.jsonl");
    let (ok, _, err) = interp(&["benchmark", case.to_str().unwrap(), "--prompts", prompts.to_str().unwrap(), "--out", o.join("bare").to_str().unwrap()]);
    assert!(ok, "{err}");
    let (ok, _, err) = interp(&["benchmark", o.to_str().unwrap(), "--out", o.join("none").to_str().unwrap()]);
    assert!(!ok && err.contains("no InterpBench case here"), "{err}");
}

#[test]
fn study_writes_every_section_on_a_task_model() {
    // `interp study` on the bilinear task model's IOI pairs (ids, no tokenizer needed), ACDC
    // within a time limit: every IOI section, path patching for the heads before the last
    // output head, the (layer, position) sweep on one template, each step's cost, and ACDC's
    // checkpoint where the report says a rerun resumes from.
    let dir = common::Scratch::new("cli-study");
    let ioi = dir.join("ioi.jsonl");
    let (ok, _, err) = interp(&["prompts", "--task", "ioi", "--n", "8", "--out", ioi.to_str().unwrap()]);
    assert!(ok, "{err}");
    let out = dir.join("study");
    let model = common::repo("models/tasks-bilinear");
    let args = ["study", model.to_str().unwrap(), "--ioi", ioi.to_str().unwrap(), "--acdc-time-limit", "60s", "--out", out.to_str().unwrap()];
    let (ok, stdout, err) = interp(&args);
    assert!(ok, "{err}");
    assert!(stdout.contains("heads: path patching") && stdout.contains("patching by (layer, position)"), "{stdout}");
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    for section in ["Behaviour: IOI", "Logit lens", "Circuits: IOI", "Heads: IOI", "Activation patching: IOI, the", "ACDC at tau", "Cost of each step"] {
        assert!(html.contains(section), "no {section}");
    }
    assert!(out.join("acdc_checkpoint.json").exists() && out.join("eap_ig_components.csv").exists());
    let heads = std::fs::read_to_string(out.join("heads.csv")).unwrap();
    let header: Vec<&str> = heads.lines().next().unwrap().split(',').collect();
    let col = header.iter().position(|h| *h == "path_patching").unwrap();
    let values: Vec<f64> = heads.lines().skip(1).map(|l| l.split(',').nth(col).unwrap().parse().unwrap()).collect();
    assert!(values.iter().all(|v| v.is_finite()) && values.iter().any(|v| *v != 0.0), "{values:?}");
    let (ok, _, err) = interp(&["study", model.to_str().unwrap(), "--ioi", ioi.to_str().unwrap(), "--acdc-time-limit", "5", "--out", out.to_str().unwrap()]);
    assert!(!ok && err.contains("unit") && err.lines().count() == 1, "{err}");
}
