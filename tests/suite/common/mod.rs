//! Helpers shared by the end-to-end tests.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;

use interp::interp_core::{tch, HookedTransformer, Rng};
use tch::{Device, Kind, Tensor};

/// Every architecture with HF reference fixtures (see scripts/make_fixtures.py).
pub const ARCHS: &[&str] = &[
    "gpt2",
    "gpt_neox",
    "gpt_neox_sequential",
    "llama",
    "mistral",
    "qwen2",
    "qwen3",
    "phi3",
    "olmo2",
    "gemma",
    "gemma2",
    "gemma3_text",
    "mixtral",
    "qwen2_moe",
    "olmoe",
    "qwen3_moe",
];

pub fn fixture(arch: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(arch)
}

pub fn load(arch: &str) -> HookedTransformer {
    HookedTransformer::from_pretrained_dir(fixture(arch), Device::Cpu, Kind::Float).expect("fixture loads")
}

/// The tensors HF transformers computed (input_ids, logits, hidden_states.i, attentions.i).
pub fn reference(arch: &str) -> HashMap<String, Tensor> {
    Tensor::read_safetensors(fixture(arch).join("reference.safetensors")).expect("reference fixture").into_iter().collect()
}

pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size(), "shapes differ");
    (a.to_kind(Kind::Double) - b.to_kind(Kind::Double)).abs().max().double_value(&[])
}

/// A path inside the repository.
pub fn repo(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(path)
}
pub mod planted;

/// The real SmolLM2-135M-Instruct (`scripts/fetch_models.sh`), in f32.
pub fn smollm2() -> HookedTransformer {
    HookedTransformer::from_pretrained_dir(repo("models/real/SmolLM2-135M-Instruct.Q4_1.gguf"), Device::Cpu, Kind::Float).expect("SmolLM2 loads")
}

/// The first `n` lines of a shipped prompt file (`prompts/<file>`) as a file in `dir`.
pub fn shipped_prompts(dir: &Scratch, file: &str, n: usize) -> PathBuf {
    let text = std::fs::read_to_string(repo("prompts").join(file)).expect("a shipped prompt file");
    let path = dir.join(format!("first-{n}.jsonl"));
    std::fs::write(&path, text.lines().take(n).collect::<Vec<_>>().join("\n")).expect("writing prompts");
    path
}

/// A fresh copy of fixture `arch` (config, weights, tokenizer; not the reference file) in a
/// scratch folder named `name`, to break in some way.
pub fn fixture_copy(arch: &str, name: &str) -> Scratch {
    let dir = Scratch::new(name);
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        let src = fixture(arch).join(f);
        if src.exists() {
            std::fs::copy(src, dir.join(f)).expect("copying a fixture");
        }
    }
    dir
}

/// A fresh folder `interp-<name>-<pid>` under the system temp dir, removed with its contents when
/// dropped, so that test runs leave nothing behind.
pub struct Scratch(PathBuf);

impl Scratch {
    pub fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("interp-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("creating a scratch folder");
        Scratch(dir)
    }
}

impl std::ops::Deref for Scratch {
    type Target = std::path::Path;
    fn deref(&self) -> &std::path::Path {
        &self.0
    }
}

impl AsRef<std::path::Path> for Scratch {
    fn as_ref(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// An activation source that fails at one step, like an interrupted run.
pub struct FailsAt<S>(pub S, pub usize);

impl<S: interp::transcoders::ActivationSource> interp::transcoders::ActivationSource for FailsAt<S> {
    fn hook_names(&self) -> &[String] {
        self.0.hook_names()
    }
    fn batch(&mut self, step: usize) -> Result<Vec<Tensor>, interp::transcoders::Error> {
        if step == self.1 {
            return Err(interp::transcoders::Error::Input("interrupted".into()));
        }
        self.0.batch(step)
    }
}

/// Standard normal draws of `shape` (f32, CPU) from interp-core's seeded generator. Test data drawn
/// from libtorch's global generator is not reproducible when tests run in parallel: another test's
/// `manual_seed` or draw can land between a test's seeding and its draws (a planted-feature test
/// failed so, with other data, 0.885 against 0.95).
pub fn normal(rng: &mut Rng, shape: &[i64]) -> Tensor {
    rng.normal_tensor(shape).unwrap()
}

/// Uniform draws in (0, 1) of `shape` (f32, CPU) from interp-core's seeded generator (see [`normal`]).
pub fn uniform(rng: &mut Rng, shape: &[i64]) -> Tensor {
    let n: i64 = shape.iter().product();
    Tensor::from_slice(&(0..n).map(|_| rng.uniform() as f32).collect::<Vec<_>>()).reshape(shape)
}
