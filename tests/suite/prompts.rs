//! Prompt files: padded batches of pairs of different lengths score each prompt at its own last
//! token (equal to running each length on its own), built-in tasks round-trip through JSONL, and
//! every mistake in a file is one clear error naming the line.

use crate::common;

use crate::common::Scratch;
use interp::circuits::{self, edge_attribution, Ablation, AttributionMethod, EdgeGraph, EdgeRun, LineError, MemoryBudget, MetricName, TaskPrompts};
use interp::interp_core::tasks::{Task, TaskVocab};
use interp::interp_core::{tch, HookedTransformer};
use tch::{Device, Kind, Tensor};

fn text_model() -> HookedTransformer {
    HookedTransformer::from_pretrained_dir(common::repo("models/shakespeare-gpt2"), Device::Cpu, Kind::Float).unwrap()
}

const SHORT: [&str; 2] = [
    r#"{"clean": "ROMEO. But soft, what light", "corrupted": "ROMEO. But hard, what light", "answer": " t", "wrong": " d", "label": "short"}"#,
    r#"{"clean": "ROMEO. But soft, what night", "corrupted": "ROMEO. But hard, what night", "answer": " o", "wrong": " t", "label": "short"}"#,
];
const LONG: [&str; 2] = [
    r#"{"clean": "HAMLET. To be, or not to be, that is the", "corrupted": "HAMLET. To go, or not to be, that is the", "answer": " g", "wrong": " s"}"#,
    r#"{"clean": "HAMLET. To be, or not to be, that is the", "corrupted": "HAMLET. To go, or not to go, that is the", "answer": " q", "wrong": " w"}"#,
];

fn write(dir: &Scratch, name: &str, lines: &[&str]) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    path
}

#[test]
fn padded_pairs_score_like_each_length_alone() {
    let model = text_model();
    let dir = Scratch::new("prompts-padded");
    let all: Vec<&str> = SHORT.iter().chain(&LONG).copied().collect();
    let mixed = TaskPrompts::from_jsonl(&write(&dir, "mixed.jsonl", &all), &model).unwrap();
    let short = TaskPrompts::from_jsonl(&write(&dir, "short.jsonl", &SHORT), &model).unwrap();
    let long = TaskPrompts::from_jsonl(&write(&dir, "long.jsonl", &LONG), &model).unwrap();
    assert!(mixed.is_padded() && !short.is_padded() && !long.is_padded());
    assert_eq!(mixed.metric.name(), "logit_diff");
    let mean = |a: f64, b: f64| (a + b) / 2.0;
    for name in [MetricName::LogitDiff, MetricName::Prob, MetricName::ProbDiff, MetricName::Kl] {
        let d_vocab = model.cfg.d_vocab_out;
        let (m, s, l) = (
            mixed.metric_of(name, d_vocab, Some(&model)).unwrap(),
            short.metric_of(name, d_vocab, Some(&model)).unwrap(),
            long.metric_of(name, d_vocab, Some(&model)).unwrap(),
        );
        let on = |p: &TaskPrompts, t: &Tensor| model.forward(if name == MetricName::Kl { &p.corrupted } else { t }).unwrap();
        let want = mean(s.value(&on(&short, &short.clean)).unwrap(), l.value(&on(&long, &long.clean)).unwrap());
        let got = m.value(&on(&mixed, &mixed.clean)).unwrap();
        assert!((got - want).abs() < 1e-5 * want.abs().max(1.0), "{name:?}: padded {got}, separately {want}");
    }
    // EAP-IG edge scores and masked forwards: the padded batch is the mean of the two lengths.
    let graph = EdgeGraph::new(&model).unwrap();
    let scores = |p: &TaskPrompts| {
        let acts = graph.prompt_activations(&model, p, Ablation::Resample).unwrap();
        let s = edge_attribution(&model, &graph, &acts, &p.metric, AttributionMethod::EapIg { steps: 3 }).unwrap();
        (s, acts)
    };
    let ((sm, acts_m), (ss, acts_s), (sl, acts_l)) = (scores(&mixed), scores(&short), scores(&long));
    let want = (&ss + &sl) / 2.0;
    let err = common::max_abs_diff(&sm, &want);
    assert!(err < 1e-4 * want.abs().max().double_value(&[]).max(1.0), "EAP-IG of the padded batch off by {err}");
    // The same edge sets in masked forwards.
    let masks = circuits::top_k_masks(&sm, &[5, 40], true).unwrap();
    let fm = graph.circuit_metrics(&model, &acts_m, &mixed.metric, &masks, 4096).unwrap();
    let fs = graph.circuit_metrics(&model, &acts_s, &short.metric, &masks, 4096).unwrap();
    let fl = graph.circuit_metrics(&model, &acts_l, &long.metric, &masks, 4096).unwrap();
    for i in 0..2 {
        assert!((fm[i] - mean(fs[i], fl[i])).abs() < 1e-4, "masked forward {i}: {} vs {}", fm[i], mean(fs[i], fl[i]));
    }
    // Mean ablation averages each position over the corrupted prompts that reach it.
    let mean_acts = graph.prompt_activations(&model, &mixed, Ablation::Mean).unwrap();
    let corrupted = &acts_m.ablated; // [S, B, P, D] resample values
    let p = mixed.clean.size()[1] - 1; // only the long prompts reach the last position
    let want = corrupted.narrow(1, 2, 2).select(2, p).mean_dim(1, false, Kind::Float);
    assert!(common::max_abs_diff(&mean_acts.ablated.select(1, 0).select(1, p), &want) < 1e-5);
    let want = corrupted.select(2, 0).mean_dim(1, false, Kind::Float);
    assert!(common::max_abs_diff(&mean_acts.ablated.select(1, 3).select(1, 0), &want) < 1e-5);
}

#[test]
fn built_in_tasks_round_trip_through_jsonl() {
    let model = HookedTransformer::from_pretrained_dir(common::repo("models/tasks-bilinear"), Device::Cpu, Kind::Float).unwrap();
    let vocab = TaskVocab::of_model(&model).unwrap();
    let dir = Scratch::new("prompts-roundtrip");
    for task in [Task::Ioi, Task::GreaterThan, Task::Facts, Task::Induction { half: 12 }] {
        let built = TaskPrompts::new(task, &vocab, 8, 5).unwrap();
        let path = dir.join("task.jsonl");
        built.write_jsonl(&path).unwrap();
        let read = TaskPrompts::from_jsonl(&path, &model).unwrap();
        assert_eq!(read.clean, built.clean);
        assert_eq!(read.corrupted, built.corrupted);
        assert_eq!((&read.answers, &read.wrongs, &read.labels), (&built.answers, &built.wrongs, &built.labels));
        assert_eq!(read.metric.name(), built.metric.name(), "{}", task.name());
        let logits = model.forward(&built.clean).unwrap();
        assert_eq!(read.metric.value(&logits).unwrap(), built.metric.value(&logits).unwrap());
    }
}

#[test]
fn mistakes_in_prompt_files_name_the_line() {
    let model = text_model();
    let dir = Scratch::new("prompts-bad");
    let good = SHORT[0];
    let cases: [(&[&str], &str); 12] = [
        (&[], "no prompts"),
        (&[good, r#"{"clean": "ROMEO. But", "answer": " t"}"#], "line 2: missing `corrupted` (text) or `corrupted_ids` (token ids)"),
        (&[r#"{"clean": "ROMEO. But", "corrupted": "ROMEO. And"}"#], "line 1: missing `answer`"),
        (&[r#"{"clean": "ROMEO. But", "corrupted": "ROMEO. And", "answer": " xyzzy"}"#], "line 1: `answer` \" xyzzy\" is"),
        (&[r#"{"clean": "ROMEO. But", "corrupted": "JULIET. But", "answer": " t"}"#], "line 1: clean is"),
        (&[r#"{"clean_ids": [1, 2, 3], "corrupted_ids": [1, 2, 99999], "answer": 3}"#], "line 1: token id 99999 is outside the vocabulary"),
        (&[r#"{"clean_ids": [1, 2], "corrupted_ids": [1, 3], "answer": -1}"#], "line 1: token id -1"),
        (&[r#"{"clean": "ROMEO. But", "corrupted": "ROMEO. And", "answer": " t", "answr": " d"}"#], "line 1: unknown field `answr`"),
        (&[good, "{not json"], "line 2: not JSON"),
        (&[r#"{"clean": "a", "clean_ids": [1], "corrupted": "b", "answer": " t"}"#], "line 1: give `clean` or `clean_ids`, not both"),
        (&[r#"{"clean": "x", "corrupted": "y", "answer": []}"#], "line 1: `answer` is an empty list"),
        (&[r#"[1, 2]"#], "line 1: expected a JSON object"),
    ];
    for (lines, expected) in cases {
        let path = write(&dir, "bad.jsonl", lines);
        let err = TaskPrompts::from_jsonl(&path, &model).err();
        // The variant carries the file and the line; the message says the rest.
        match &err {
            Some(circuits::Error::PromptLine { path: p, line, .. }) => {
                assert_eq!(p, &path);
                assert!(expected.starts_with(&format!("line {line}: ")), "line {line} for `{expected}`");
            }
            Some(circuits::Error::NoPrompts { path: p }) => assert_eq!((p, expected), (&path, "no prompts")),
            other => panic!("expected a prompt-file error for `{expected}`, got {other:?}"),
        }
        let err = err.map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains(expected), "expected `{expected}` in `{err}`");
        assert!(err.contains("bad.jsonl"), "the error names the file: {err}");
    }
    // What is wrong, by variant.
    let kind = |lines: &[&str]| match TaskPrompts::from_jsonl(&write(&dir, "kind.jsonl", lines), &model) {
        Err(circuits::Error::PromptLine { kind, .. }) => kind,
        other => panic!("expected a prompt-file error, got {:?}", other.map(|_| ())),
    };
    assert!(matches!(kind(&[r#"{"clean_ids": [1, 2, 3], "corrupted_ids": [1, 2, 99999], "answer": 3}"#]), LineError::TokenOutOfVocabulary { id: 99999, .. }));
    assert!(
        matches!(kind(&[r#"{"clean": "ROMEO. But", "corrupted": "ROMEO. And", "answr": " d"}"#]), LineError::UnknownField { field, .. } if field == "answr")
    );
    assert!(matches!(kind(&[r#"{"clean": "ROMEO. But", "corrupted": "JULIET. But", "answer": " t"}"#]), LineError::UnequalLengths { .. }));
    // Longer than the context.
    let long = format!(r#"{{"clean_ids": {:?}, "corrupted_ids": {:?}, "answer": 1}}"#, vec![1; 300], vec![1; 300]);
    let err = TaskPrompts::from_jsonl(&write(&dir, "long.jsonl", &[&long]), &model).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(err.contains("line 1: 300 tokens, longer than the model's context"), "{err}");
    // The logit difference needs one wrong token per line.
    let path = write(&dir, "nowrong.jsonl", &[r#"{"clean": "ROMEO. But", "corrupted": "ROMEO. And", "answer": " t"}"#]);
    let p = TaskPrompts::from_jsonl(&path, &model).unwrap();
    assert_eq!(p.metric.name(), "probability");
    let err = p.with_metric(MetricName::LogitDiff, &model).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(err.contains("pair 1: the logit difference needs exactly one wrong token, found 0"), "{err}");
    // Tracing files: the subject must occur in the prompt.
    let path = write(&dir, "trace.jsonl", &[r#"{"prompt": "ROMEO. But soft, what light", "subject": "JULIET", "answer": " t"}"#]);
    let err = circuits::trace_prompts_from_jsonl(&path, &model).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(err.contains("line 1: subject \"JULIET\" does not occur"), "{err}");
    let path = write(&dir, "trace.jsonl", &[r#"{"prompt": "ROMEO. But soft, what light", "subject": " soft", "answer": " t", "label": "x"}"#]);
    let traced = circuits::trace_prompts_from_jsonl(&path, &model).unwrap();
    let tok = model.tokenizer().unwrap();
    assert_eq!(tok.decode(&traced[0].tokens[traced[0].subject.clone()]).unwrap(), " soft");
}

#[test]
fn a_small_memory_budget_gives_the_same_scores() {
    // A budget that holds one prompt's activations at a time: every prompt is its own chunk, and
    // EAP-IG scores and masked-forward metrics equal those of one batch; mean ablation still
    // averages over every prompt.
    let model = text_model();
    let dir = Scratch::new("prompts-budget");
    let all: Vec<&str> = SHORT.iter().chain(&LONG).copied().collect();
    let prompts = TaskPrompts::from_jsonl(&write(&dir, "mixed.jsonl", &all), &model).unwrap();
    let graph = EdgeGraph::new(&model).unwrap();
    let costs = MemoryBudget::row_costs(&model, &graph, prompts.clean.size()[1]);
    let small = MemoryBudget { bytes: costs.activations + costs.gradient.max(costs.masked), outside: 0 };
    for ablation in [Ablation::Resample, Ablation::Mean] {
        let big = EdgeRun::new(&model, &graph, &prompts, ablation, MemoryBudget::DEFAULT).unwrap();
        let tight = EdgeRun::new(&model, &graph, &prompts, ablation, small).unwrap();
        assert_eq!((big.chunk(), tight.chunk()), (4, 1));
        let (a, b) = (big.attribution(AttributionMethod::EapIg { steps: 2 }).unwrap(), tight.attribution(AttributionMethod::EapIg { steps: 2 }).unwrap());
        assert!(common::max_abs_diff(&a, &b) < 1e-5 * a.abs().max().double_value(&[]).max(1.0), "{ablation:?}");
        let masks = circuits::top_k_masks(&a, &[3, 30, 100], true).unwrap();
        let (fa, fb) = (big.faithfulness(&masks).unwrap(), tight.faithfulness(&masks).unwrap());
        for (x, y) in fa.iter().zip(&fb) {
            assert!((x - y).abs() < 1e-4, "{ablation:?}: {fa:?} vs {fb:?}");
        }
        assert!(tight.whole().is_err(), "ACDC needs every prompt at once");
    }
    // Too small for one prompt: the error states the minimum.
    let err = EdgeRun::new(&model, &graph, &prompts, Ablation::Resample, MemoryBudget { bytes: small.bytes / 2, outside: 0 })
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("is too small") && err.contains("needs at least"), "{err}");
}

/// The peak RSS of a process that ran only `test` of this binary, with `INTERP_CHILD` naming the
/// file where the child writes it (a child process, so that no other test's memory counts). The
/// child reads its own VmHWM: wait4's ru_maxrss would count the parent's memory, which a spawned
/// child's maximum inherits at exec.
fn peak_rss_of_alone(test: &str) -> u64 {
    let report = std::env::temp_dir().join(format!("interp-peak-{}-{test}", std::process::id()));
    let status = std::process::Command::new(std::env::current_exe().unwrap())
        // The test's name in this binary: its module path below the crate.
        .args(["--exact", &format!("{}::{test}", module_path!().split_once("::").map_or("", |m| m.1)), "--test-threads", "1", "--nocapture"])
        .env("INTERP_CHILD", &report)
        // Its own `test result` line would count twice in the suite's tally; panics go to stderr.
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "{test} failed in its own process");
    let peak = std::fs::read_to_string(&report).unwrap_or_else(|e| panic!("{test} wrote no peak to {}: {e}", report.display()));
    let _ = std::fs::remove_file(&report);
    peak.trim().parse().unwrap()
}

/// In a child of [`peak_rss_of_alone`], writes this process's peak RSS (bytes) where it asks.
fn report_peak_rss() {
    let kib = interp::interp_core::status_kib("VmHWM:");
    assert!(kib.is_finite(), "no VmHWM in /proc/self/status");
    std::fs::write(std::env::var_os("INTERP_CHILD").unwrap(), ((kib * 1024.0) as u64).to_string()).unwrap();
}

#[test]
fn the_memory_budget_holds_on_smollm2() {
    // SmolLM2-135M (30 layers, grouped-query attention; 0.54 GB of f32 weights) under a peak of
    // 1.25 GB: the 8 prompts' activations are held 4 at a time; EAP-IG(2) and a masked forward
    // of a random half of the 70,651 edges (every receiver patched) stay within it.
    const PEAK: u64 = 1_250_000_000;
    if std::env::var_os("INTERP_CHILD").is_none() {
        let peak = peak_rss_of_alone("the_memory_budget_holds_on_smollm2");
        assert!(peak <= PEAK, "peak RSS {peak} over the budget of {PEAK}");
        return;
    }
    let model = common::smollm2();
    let dir = Scratch::new("prompts-smollm2-budget");
    let prompts = TaskPrompts::from_jsonl(&common::shipped_prompts(&dir, "smollm2-135m/ioi.jsonl", 8), &model).unwrap();
    let graph = EdgeGraph::new(&model).unwrap();
    let run = EdgeRun::new(&model, &graph, &prompts, Ablation::Resample, MemoryBudget::for_peak(PEAK, &model).unwrap()).unwrap();
    assert!(run.chunk() < prompts.len(), "{} prompts per chunk: the budget does not bind", run.chunk());
    let scores = run.attribution(AttributionMethod::EapIg { steps: 2 }).unwrap();
    tch::manual_seed(0);
    let half = Tensor::rand([1, graph.n_edges() as i64], (Kind::Float, Device::Cpu)).round();
    let f = run.faithfulness(&Tensor::cat(&[half, circuits::top_k_masks(&scores, &[700], true).unwrap()], 0)).unwrap();
    assert!(f.iter().all(|x| x.is_finite()), "{f:?}");
    report_peak_rss();
}
