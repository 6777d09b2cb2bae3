//! Bilinear-MLP interaction matrices against the closed forms of `shared/design/bilinear.md`, and
//! on the default bilinear task model.

use circuits::bilinear::{feature_interactions, truncation_accuracy, truncation_correlation, unembedding_direction, BilinearLayer, Spectrum};
use interp::circuits;
use interp::interp_core::tasks::{Task, TaskVocab};
use interp::interp_core::train::Adam;
use interp::interp_core::{tch, CacheSpec, HookedTransformer};
use tch::{Device, Kind, Tensor};

const F64: (Kind, Device) = (Kind::Double, Device::Cpu);

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

fn random_layer(seed: i64, d_h: i64, d_in: i64, d_out: i64) -> BilinearLayer {
    tch::manual_seed(seed);
    BilinearLayer::new(&Tensor::randn([d_h, d_in], F64), &Tensor::randn([d_h, d_in], F64), &Tensor::randn([d_out, d_h], F64)).unwrap()
}

fn tensor(rows: &[&[f64]]) -> Tensor {
    Tensor::from_slice(&rows.concat()).view([rows.len() as i64, -1])
}

#[test]
fn random_weights_match_the_quadratic_form() {
    let layer = random_layer(1, 3, 8, 5);
    let u = Tensor::randn([5], F64);
    let x = Tensor::randn([20, 8], F64);
    let q = layer.interaction_matrix(&u).unwrap();
    let direct = layer.forward(&x).unwrap().matmul(&u);
    let quad = x.matmul(&q).f_mul(&x).unwrap().sum_dim_intlist(1, false, Kind::Double);
    assert!(max_diff(&direct, &quad) < 1e-10, "u.y = x^T Q x");
    let spec = Spectrum::of(&q).unwrap();
    assert!(max_diff(&spec.quadratic_form(&x, 8).unwrap(), &direct) < 1e-10, "sum lambda (v.x)^2 = u.y");
    let batch = Spectrum::of_batch(&q.unsqueeze(0)).unwrap().get(0).unwrap();
    assert!(max_diff(&batch.values, &spec.values) < 1e-10, "single and batched agree");
    let trace: f64 = q.trace().double_value(&[]);
    let coef = layer.p.tr().matmul(&u);
    let expected = (&coef * (&layer.w * &layer.v).sum_dim_intlist(1, false, Kind::Double)).sum(Kind::Double).double_value(&[]);
    assert!((trace - expected).abs() < 1e-10, "tr Q = sum_h (P^T u)_h w_h.v_h");
    let values = spec.eigenvalues().unwrap();
    let frob = q.square().sum(Kind::Double).double_value(&[]);
    assert!((frob - values.iter().map(|l| l * l).sum::<f64>()).abs() < 1e-9, "||Q||_F^2 = sum lambda^2");
    let nonzero = values.iter().filter(|l| l.abs() > 1e-9).count();
    assert!(nonzero <= 6, "rank Q <= 2 d_hidden = 6, found {nonzero}");
    // Batched matrices equal one-at-a-time ones.
    let us = Tensor::randn([4, 5], F64);
    let qs = layer.interaction_matrices(&us).unwrap();
    assert!(max_diff(&qs.get(2), &layer.interaction_matrix(&us.get(2)).unwrap()) < 1e-12);
}

#[test]
fn product_of_two_inputs() {
    let layer = BilinearLayer::new(&tensor(&[&[1.0, 0.0]]), &tensor(&[&[0.0, 1.0]]), &tensor(&[&[1.0]])).unwrap();
    let q = layer.interaction_matrix(&Tensor::from_slice(&[1.0f64])).unwrap();
    assert!(max_diff(&q, &tensor(&[&[0.0, 0.5], &[0.5, 0.0]])) < 1e-15);
    let spec = Spectrum::of(&q).unwrap();
    let mut values = spec.eigenvalues().unwrap();
    values.sort_by(f64::total_cmp);
    assert!((values[0] + 0.5).abs() < 1e-12 && (values[1] - 0.5).abs() < 1e-12, "eigenvalues +-1/2: {values:?}");
    let s = 0.5f64.sqrt();
    for i in 0..2 {
        let v = spec.vectors.select(1, i);
        let lambda = spec.values.double_value(&[i]);
        let expected = Tensor::from_slice(&[s, if lambda > 0.0 { s } else { -s }]);
        assert!(v.dot(&expected).abs().double_value(&[]) > 1.0 - 1e-12, "eigenvector (1, +-1)/sqrt 2");
    }
}

#[test]
fn one_hidden_unit() {
    tch::manual_seed(3);
    let (w, v) = (Tensor::randn([1, 6], F64), Tensor::randn([1, 6], F64));
    let layer = BilinearLayer::new(&w, &v, &tensor(&[&[1.0]])).unwrap();
    let spec = Spectrum::of(&layer.interaction_matrix(&Tensor::from_slice(&[1.0f64])).unwrap()).unwrap();
    let (w, v) = (w.squeeze(), v.squeeze());
    let (wv, nw, nv) = (w.dot(&v).double_value(&[]), w.norm().double_value(&[]), v.norm().double_value(&[]));
    let values = spec.eigenvalues().unwrap();
    let mut top = values[..2].to_vec();
    top.sort_by(f64::total_cmp);
    assert!((top[0] - (wv - nw * nv) / 2.0).abs() < 1e-10 && (top[1] - (wv + nw * nv) / 2.0).abs() < 1e-10, "{top:?}");
    assert!(values[2..].iter().all(|l| l.abs() < 1e-10), "rank 2");
    for i in 0..2 {
        let sign = if spec.values.double_value(&[i]) > 0.0 { 1.0 } else { -1.0 };
        let dir = &w / nw + &v * (sign / nv);
        let dir = &dir / dir.norm();
        assert!(spec.vectors.select(1, i).dot(&dir).abs().double_value(&[]) > 1.0 - 1e-10, "eigenvector along w/|w| +- v/|v|");
    }
}

/// name, truth table f(00, 01, 10, 11), Q row-major, eigenvalues ascending.
type Gate = (&'static str, [f64; 4], [f64; 4], [f64; 2]);

/// The unique symmetric Q of a gate on {0,1}^2 (x_i^2 = x_i) and its eigenvalues.
const GATES: [Gate; 3] = [
    ("AND", [0.0, 0.0, 0.0, 1.0], [0.0, 0.5, 0.5, 0.0], [-0.5, 0.5]),
    ("XOR", [0.0, 1.0, 1.0, 0.0], [1.0, -1.0, -1.0, 1.0], [0.0, 2.0]),
    ("OR", [0.0, 1.0, 1.0, 1.0], [1.0, -0.5, -0.5, 1.0], [0.5, 1.5]),
];

fn sorted_eigenvalues(q: &Tensor) -> Vec<f64> {
    let mut v = Spectrum::of(q).unwrap().eigenvalues().unwrap();
    v.sort_by(f64::total_cmp);
    v
}

#[test]
fn boolean_gates_exact_and_trained() {
    let inputs = tensor(&[&[0.0, 0.0], &[0.0, 1.0], &[1.0, 0.0], &[1.0, 1.0]]);
    let one = Tensor::from_slice(&[1.0f64]);
    // Hand-built: x1^2, x2^2 and x1 x2 units with the gate's coefficients.
    let units = tensor(&[&[1.0, 0.0], &[0.0, 1.0], &[1.0, 0.0]]);
    let partners = tensor(&[&[1.0, 0.0], &[0.0, 1.0], &[0.0, 1.0]]);
    for (name, table, q_expected, eig) in GATES {
        let q_expected = Tensor::from_slice(&q_expected).view([2, 2]);
        let coefs = [table[2], table[1], table[3] - table[1] - table[2]];
        let layer = BilinearLayer::new(&units, &partners, &Tensor::from_slice(&coefs).view([1, 3])).unwrap();
        assert!(max_diff(&layer.forward(&inputs).unwrap().squeeze(), &Tensor::from_slice(&table)) < 1e-12, "{name} built");
        let q = layer.interaction_matrix(&one).unwrap();
        assert!(max_diff(&q, &q_expected) < 1e-12, "{name}: Q = {q:?}");
        let values = sorted_eigenvalues(&q);
        assert!((values[0] - eig[0]).abs() < 1e-12 && (values[1] - eig[1]).abs() < 1e-12, "{name}: {values:?}");

        // Trained from random weights on the four points: the fit pins down the unique Q.
        tch::manual_seed(11);
        let params = [Tensor::randn([4, 2], F64) * 0.5, Tensor::randn([4, 2], F64) * 0.5, Tensor::randn([1, 4], F64) * 0.5];
        let params: Vec<Tensor> = params.into_iter().map(|p| p.set_requires_grad(true)).collect();
        let adam = Adam::new(&params, (0.9, 0.999), 1e-8).unwrap();
        let target = Tensor::from_slice(&table);
        for step in 1..=3000 {
            let h = inputs.matmul(&params[0].tr()) * inputs.matmul(&params[1].tr());
            let loss = (h.matmul(&params[2].tr()).squeeze() - &target).square().mean(Kind::Double);
            let grads = Tensor::run_backward(&[loss], &params, false, false);
            tch::no_grad(|| adam.step(&params, &grads, step, 0.02, 0.0)).unwrap();
        }
        let trained = tch::no_grad(|| BilinearLayer::new(&params[0], &params[1], &params[2]).unwrap());
        let q = trained.interaction_matrix(&one).unwrap();
        let err = max_diff(&q, &q_expected);
        assert!(err < 0.02, "{name}: trained Q is {err:.4} from the closed form");
    }
}

#[test]
fn truncation_biases_and_invariances() {
    let layer = random_layer(5, 6, 7, 3);
    let u = Tensor::randn([3], F64);
    let q = layer.interaction_matrix(&u).unwrap();
    let spec = Spectrum::of(&q).unwrap();
    for k in 0..=7 {
        let err = (&q - spec.truncated(k).unwrap()).square().sum(Kind::Double).sqrt().double_value(&[]);
        assert!((err - spec.truncation_error(k).unwrap()).abs() < 1e-10, "Eckart-Young at k = {k}");
    }
    assert!(max_diff(&spec.truncated(7).unwrap(), &q) < 1e-10);
    let x = Tensor::randn([50, 7], F64);
    let curve = truncation_correlation(&spec, &x, &[1, 7]).unwrap();
    assert!((curve[1].1 - 1.0).abs() < 1e-12 && curve[0].1 < 1.0, "{curve:?}");
    assert!(spec.effective_rank().unwrap() > 1.0 && spec.effective_rank().unwrap() <= 7.0);
    let d = feature_interactions(&q, &Tensor::eye(7, F64)).unwrap();
    assert!(max_diff(&d, &q) < 1e-14, "identity directions give Q back");

    // Biases by augmentation: x~^T Q x~ = u . (P((Wx + b_w)(Vx + b_v)) + b_out).
    let (b_w, b_v, b_out) = (Tensor::randn([6], F64), Tensor::randn([6], F64), Tensor::randn([3], F64));
    let biased = BilinearLayer::with_biases(&layer.w, &layer.v, &layer.p, Some(&b_w), Some(&b_v), Some(&b_out)).unwrap();
    let y = ((x.matmul(&layer.w.tr()) + &b_w) * (x.matmul(&layer.v.tr()) + &b_v)).matmul(&layer.p.tr()) + &b_out;
    let xa = biased.augment(&x).unwrap();
    let qa = biased.interaction_matrix(&u).unwrap();
    assert_eq!(qa.size(), [8, 8]);
    let quad = xa.matmul(&qa).f_mul(&xa).unwrap().sum_dim_intlist(1, false, Kind::Double);
    assert!(max_diff(&quad, &y.matmul(&u)) < 1e-10, "bias augmentation");

    // B_sym is invariant to swapping W and V, permuting hidden units and rescaling (s w, v / s).
    let swapped = BilinearLayer::new(&layer.v, &layer.w, &layer.p).unwrap();
    assert!(max_diff(&swapped.interaction_matrix(&u).unwrap(), &q) < 1e-12, "swap");
    let perm = Tensor::from_slice(&[3i64, 0, 5, 1, 4, 2]);
    let permuted = BilinearLayer::new(&layer.w.index_select(0, &perm), &layer.v.index_select(0, &perm), &layer.p.index_select(1, &perm)).unwrap();
    assert!(max_diff(&permuted.interaction_matrix(&u).unwrap(), &q) < 1e-12, "permutation");
    let s = Tensor::from_slice(&[2.0f64, -0.5, 3.0, 1.0, 0.25, -4.0]).unsqueeze(1);
    let rescaled = BilinearLayer::new(&(&layer.w * &s), &(&layer.v / &s), &layer.p).unwrap();
    assert!(max_diff(&rescaled.interaction_matrix(&u).unwrap(), &q) < 1e-12, "rescaling");
}

fn task_model() -> HookedTransformer {
    HookedTransformer::from_pretrained_dir("models/tasks-bilinear", Device::Cpu, Kind::Float).unwrap()
}

#[test]
fn task_model_mlp_is_its_quadratic_forms() {
    let model = task_model();
    let vocab = TaskVocab::new(31);
    let batch = Task::ModularAddition.generate(&vocab, 64, 3).unwrap();
    let layer = BilinearLayer::from_model(&model, 1).unwrap();
    assert!(!layer.augmented, "the Llama-style task model has no biases");
    let (_, cache) = model.run_with_cache(&batch.clean, CacheSpec::names(["blocks.1.ln2.hook_normalized", "blocks.1.hook_mlp_out"])).unwrap();
    let x = cache.get("blocks.1.ln2.hook_normalized").unwrap().flatten(0, 1).to_kind(Kind::Double);
    let out = cache.get("blocks.1.hook_mlp_out").unwrap().flatten(0, 1).to_kind(Kind::Double);
    for word in ["m3", "m17"] {
        let u = unembedding_direction(&model, vocab.id(word).unwrap()).unwrap();
        let q = layer.interaction_matrix(&u).unwrap();
        let quad = x.matmul(&q).f_mul(&x).unwrap().sum_dim_intlist(1, false, Kind::Double);
        let direct = out.matmul(&u);
        let scale = direct.abs().max().double_value(&[]);
        assert!(max_diff(&quad, &direct) < 1e-4 * scale.max(1.0), "{word}: x^T Q x = u . mlp_out (f32 model)");
    }
    // With every eigenpair the truncated logits are the model's own: same accuracy.
    let candidates: Vec<i64> = (0..31).map(|i| vocab.id(&format!("m{i}")).unwrap()).collect();
    let curve = truncation_accuracy(&model, 1, &batch.clean, &candidates, &batch.answer, &[0, 4, 128]).unwrap();
    let logits = model.forward(&batch.clean).unwrap().select(1, -1);
    let cand = Tensor::from_slice(&candidates);
    let pred = cand.index_select(0, &logits.index_select(1, &cand).argmax(1, false));
    let own = pred.eq_tensor(&batch.answer).to_kind(Kind::Double).mean(Kind::Double).double_value(&[]);
    assert!((curve[2].1 - own).abs() < 1e-12, "full rank {:?} vs model {own}", curve[2]);
    assert!(own > 0.9, "the task model solves modular addition ({own})");
    assert!(curve[0].1 < own, "no eigenpairs at all loses accuracy: {curve:?}");
}

#[test]
fn bilinear_bad_input() {
    let err = |r: Result<BilinearLayer, circuits::Error>| r.err().expect("an error").to_string();
    let gpt2 = HookedTransformer::from_pretrained_dir("models/shakespeare-gpt2", Device::Cpu, Kind::Float).unwrap();
    let msg = err(BilinearLayer::from_model(&gpt2, 0));
    assert!(msg.contains("ungated MLPs") && msg.contains("Gelu"), "{msg}");
    let attn_only = HookedTransformer::from_pretrained_dir("models/induction-attn-only", Device::Cpu, Kind::Float).unwrap();
    assert!(err(BilinearLayer::from_model(&attn_only, 0)).contains("attention-only"));
    let model = task_model();
    assert!(err(BilinearLayer::from_model(&model, 2)).contains("out of range"));
    use interp::interp_core::Error as CoreError;
    assert!(matches!(BilinearLayer::from_model(&model, 2), Err(circuits::Error::Core(CoreError::LayerOutOfRange { layer: 2, n_layers: 2 }))));
    let layer = BilinearLayer::from_model(&model, 0).unwrap();
    assert!(matches!(layer.interaction_matrix(&Tensor::zeros([2, 128], F64)), Err(circuits::Error::Shape { found, .. }) if found == [2, 128]));
    let msg = layer.interaction_matrix(&Tensor::zeros([127], F64)).err().unwrap().to_string();
    assert!(msg.contains("length 127") && msg.contains("128"), "{msg}");
    assert!(layer.augment(&Tensor::zeros([2, 5], F64)).is_err());
    assert!(Spectrum::of(&Tensor::zeros([3, 4], F64)).is_err());
    assert!(unembedding_direction(&model, 10_000).is_err());
    let vocab = TaskVocab::new(31);
    let batch = Task::ModularAddition.generate(&vocab, 4, 1).unwrap();
    let wrong = truncation_accuracy(&model, 1, &batch.clean, &[1, 2], &batch.answer, &[1]).err().unwrap().to_string();
    assert!(wrong.contains("not among the candidates"), "{wrong}");
}
