//! The `interp` CLI contract: `inspect` and `cache` as other tools script against them.

mod common;

use std::process::Command;

use common::{fixture, load, max_abs_diff, reference};
use interp::interp_core::{tch, CacheSpec};
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

#[test]
fn cache_writes_requested_hooks_and_logits() {
    let dir = fixture("gpt_neox");
    let tmp = std::env::temp_dir().join(format!("interp-cli-{}", std::process::id()));
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
        (&["inspect", "/no/such/dir"], "model directory not found"),
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
fn main_job_prints_a_logit_lens_summary() {
    let (ok, out, err) = interp(&[]);
    assert!(ok, "{err}");
    assert!(out.contains("run_with_cache: 42 hook points"), "{out}");
    assert!(out.contains("final_post"));
}
