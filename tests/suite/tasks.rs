//! The built-in tasks: determinism, clean/corrupted structure, answers, and scores of oracles.

use interp::interp_core::tasks::{knowledge_base, Task, TaskMixture, TaskVocab, ALL_TASKS, N_SUBJECTS};
use interp::interp_core::tch::{Kind, Tensor};
use interp::interp_core::train::BatchSource;

/// Logits that put all mass on each row's answer at the last position (and copy for induction).
fn oracle(task: Task, vocab: &TaskVocab, b: &interp::interp_core::tasks::TaskBatch) -> Tensor {
    let (n, p) = (b.clean.size()[0], b.clean.size()[1]);
    let logits = Tensor::zeros([n, p, vocab.len() as i64], (Kind::Float, interp::interp_core::tch::Device::Cpu));
    match task {
        Task::Induction { .. } => {
            let next = b.clean.narrow(1, 1, p - 1);
            let _ = logits.narrow(1, 0, p - 1).scatter_value_(2, &next.unsqueeze(2), 100.0);
            // Scored positions are exactly those whose next token repeats an earlier one.
            let scored = b.scored.narrow(1, 0, p - 1).nonzero();
            for i in 0..scored.size()[0] {
                let (row, pos) = (scored.int64_value(&[i, 0]), scored.int64_value(&[i, 1]));
                let want = b.clean.int64_value(&[row, pos + 1]);
                let earlier: Vec<i64> = Vec::try_from(b.clean.get(row).narrow(0, 0, pos + 1)).unwrap();
                assert!(earlier.contains(&want));
            }
        }
        _ => {
            let _ = logits.select(1, p - 1).scatter_value_(1, &b.answer.unsqueeze(1), 100.0);
        }
    }
    logits
}

#[test]
fn tasks_are_deterministic_and_well_formed() {
    let vocab = TaskVocab::new(31);
    for task in ALL_TASKS {
        let a = task.generate(&vocab, 32, 5).unwrap();
        let b = task.generate(&vocab, 32, 5).unwrap();
        let c = task.generate(&vocab, 32, 6).unwrap();
        assert!(a.clean.equal(&b.clean) && a.corrupted.equal(&b.corrupted), "{task:?}");
        assert!(!a.clean.equal(&c.clean), "{task:?}");
        assert_eq!(a.clean.size(), a.corrupted.size(), "{task:?}");
        assert!(!a.clean.equal(&a.corrupted), "{task:?}");
        assert_eq!(a.clean.int64_value(&[0, 0]), 0, "BOS first");
        let score = task.score(&vocab, &a, &oracle(task, &vocab, &a)).unwrap();
        assert!((score - 1.0).abs() < 1e-6, "{task:?}: oracle scores {score}");
        let uniform = Tensor::zeros([32, a.clean.size()[1], vocab.len() as i64], (Kind::Float, interp::interp_core::tch::Device::Cpu));
        let chance = task.score(&vocab, &a, &uniform).unwrap();
        assert!(chance < 0.6, "{task:?}: uniform logits score {chance}");
    }
}

#[test]
fn task_answers_are_right() {
    let vocab = TaskVocab::new(31);
    let b = Task::ModularAddition.generate(&vocab, 50, 1).unwrap();
    for i in 0..50 {
        let w = |pos: i64| vocab.word(b.clean.int64_value(&[i, pos]))[1..].parse::<usize>().unwrap();
        let ans: usize = vocab.word(b.answer.int64_value(&[i]))[1..].parse().unwrap();
        assert_eq!(ans, (w(1) + w(3)) % 31);
    }
    let b = Task::GreaterThan.generate(&vocab, 50, 1).unwrap();
    for i in 0..50 {
        let yy: i64 = vocab.word(b.clean.int64_value(&[i, 8])).parse().unwrap();
        let later: i64 = vocab.word(b.answer.int64_value(&[i])).parse().unwrap();
        assert!(later > yy);
        assert_eq!(vocab.word(b.corrupted.int64_value(&[i, 8])), "01");
    }
    let b = Task::Ioi.generate(&vocab, 50, 1).unwrap();
    for i in 0..50 {
        let (io, s) = (b.answer.int64_value(&[i]), b.wrong.int64_value(&[i]));
        let row: Vec<i64> = Vec::try_from(b.clean.get(i)).unwrap();
        assert_eq!(row.iter().filter(|&&t| t == s).count(), 2, "S appears twice");
        assert_eq!(row.iter().filter(|&&t| t == io).count(), 1, "IO appears once");
        let corrupted: Vec<i64> = Vec::try_from(b.corrupted.get(i)).unwrap();
        assert!(!corrupted.contains(&io) && !corrupted.contains(&s), "ABC uses new names");
    }
    // Facts: a subject's object for a relation never changes; subjects are three tokens.
    let kb = knowledge_base(N_SUBJECTS);
    assert_eq!(kb.len(), N_SUBJECTS);
    let b = Task::Facts.generate(&vocab, 200, 1).unwrap();
    assert_eq!(b.clean.size()[1], 6, "BOS, three subject tokens, two relation tokens");
    let mut seen = std::collections::HashMap::new();
    for i in 0..200 {
        let key: Vec<i64> = Vec::try_from(b.clean.get(i)).unwrap();
        let ans = b.answer.int64_value(&[i]);
        assert_eq!(*seen.entry(key).or_insert(ans), ans);
    }
}

#[test]
fn the_vocabulary_is_a_real_tokenizer_and_the_mixture_batches() {
    let vocab = TaskVocab::new(31);
    let tok = vocab.tokenizer().unwrap();
    assert_eq!(tok.vocab_size(), vocab.len());
    let text = "Then , Mary and John went to the store . John gave a drink to";
    assert_eq!(tok.encode(text, true).unwrap(), vocab.encode(text).unwrap());
    assert!(vocab.encode("Then , Zorro").unwrap_err().to_string().contains("`Zorro` is not in the task vocabulary"));
    let mix = TaskMixture { vocab, tasks: ALL_TASKS.to_vec(), per_task: 4, seed: 0 };
    let b = mix.train_batch(3).unwrap();
    assert_eq!(b.input.size()[0], 20);
    assert_eq!(b.input.size(), b.target.size());
    // Every task row scores at least one position; induction rows score period - 1 (2 to 11).
    let per_row = b.mask.unwrap().sum_dim_intlist(1, false, Kind::Float);
    assert!((2.0..=11.0).contains(&per_row.double_value(&[0])));
    assert_eq!(per_row.double_value(&[19]), 1.0);
    assert!(mix.train_batch(3).unwrap().input.equal(&b.input));
}

#[test]
fn the_default_induction_model_has_induction_heads() {
    use interp::interp_core::tasks::induction_head_scores;
    use interp::interp_core::HookedTransformer;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/induction-attn-only");
    let model = HookedTransformer::from_pretrained_dir(&dir, interp::interp_core::tch::Device::Cpu, Kind::Float).unwrap();
    let vocab = TaskVocab::new(31);
    let task = ALL_TASKS[0];
    let batch = task.generate(&vocab, 256, 777).unwrap();
    let accuracy = task.score(&vocab, &batch, &model.forward(&batch.clean).unwrap()).unwrap();
    let (prev, induction) = induction_head_scores(&model, &vocab, 12, 256).unwrap();
    println!("accuracy {accuracy:.3}\nprevious-token {prev}\ninduction {induction}");
    assert!(accuracy > 0.9, "{accuracy}");
    // Measured: L1H0 0.48 and L1H2 0.45; every other head at most 0.06 (uniform attention ~0.05).
    let best = induction.get(1).max().double_value(&[]);
    let layer0 = induction.get(0).max().double_value(&[]);
    assert!(best > 0.3 && best > 5.0 * layer0, "no induction head in layer 1: {induction}");
    let strong = induction.get(1).gt(0.3).sum(Kind::Int64).int64_value(&[]);
    assert_eq!(strong, 2, "{induction}");
}

#[test]
fn the_default_task_model_solves_its_tasks() {
    use interp::interp_core::HookedTransformer;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/tasks-bilinear");
    let model = HookedTransformer::from_pretrained_dir(&dir, interp::interp_core::tch::Device::Cpu, Kind::Float).unwrap();
    assert_eq!(model.cfg.act, interp::interp_core::config::Activation::Identity, "bilinear MLPs");
    let vocab = TaskVocab::new(31);
    // Measured at build: induction 0.991, IOI 1.000, greater-than 0.964, facts 1.000, modular 1.000.
    for (task, floor) in [(ALL_TASKS[0], 0.95), (Task::Ioi, 0.95), (Task::GreaterThan, 0.8), (Task::Facts, 0.95), (Task::ModularAddition, 0.95)] {
        let batch = task.generate(&vocab, 256, 4242).unwrap();
        let score = task.score(&vocab, &batch, &model.forward(&batch.clean).unwrap()).unwrap();
        assert!(score > floor, "{task:?}: {score}");
    }
}
