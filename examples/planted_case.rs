//! Writes the planted induction model (tests/suite/common/planted.rs: a hand-built GPT-2-style model
//! whose circuit is known exactly) as an HF checkpoint, its prompts as a JSONL prompt file and
//! its circuit at head level, for scripts/make_interpbench_fixtures.py to turn into an
//! InterpBench case folder.
//!
//! cargo run --release --example planted_case -- OUT

#[path = "../tests/suite/common/planted.rs"]
mod planted;

use std::io::Write;

use interp::interp_core::tch;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = std::path::PathBuf::from(std::env::args().nth(1).ok_or("usage: planted_case OUT")?);
    std::fs::create_dir_all(&out)?;
    planted::write_planted(&out);
    // Clean prompts end one token before the induction answer; the corrupted prompt's answer is
    // the wrong token of the logit difference.
    let (clean, corrupted, answer) = planted::prompts(24, 7);
    let rows = |t: &tch::Tensor| -> Result<Vec<Vec<i64>>, tch::TchError> { (0..t.size()[0]).map(|i| Vec::<i64>::try_from(t.get(i))).collect() };
    let (clean, corrupted, answer) = (rows(&clean)?, rows(&corrupted)?, Vec::<i64>::try_from(&answer)?);
    let mut file = std::fs::File::create(out.join("prompts.jsonl"))?;
    // The corrupted prompt's induction answer is its 10th token; pairs whose answers agree are
    // left out (their logit difference is zero in both runs).
    let pairs = clean.iter().zip(&corrupted).zip(&answer).filter(|((_, x), a)| x[10] != **a).take(16);
    for ((c, x), a) in pairs {
        writeln!(file, "{}", serde_json::json!({"clean_ids": c, "corrupted_ids": x, "answer": a, "wrong": x[10]}))?;
    }
    // Head level: the previous-token head reads the embeddings, the induction head reads them and
    // the previous-token head, and writes the logits.
    let circuit = [["embed", "L0H0"], ["embed", "L1H0"], ["L0H0", "L1H0"], ["L1H0", "logits"]];
    std::fs::write(out.join("circuit.json"), serde_json::to_string_pretty(&circuit)?)?;
    println!("wrote the planted model, prompts.jsonl and circuit.json to {}", out.display());
    Ok(())
}
