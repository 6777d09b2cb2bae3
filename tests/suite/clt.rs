//! Cross-layer transcoders: planted cross-layer structure that only a CLT can fit, exact resume,
//! circuit-tracer's CLT files, whole-set evaluation, attribution graphs (completeness, and
//! equality with per-layer transcoders when no decoder crosses a layer), and bad input.

use crate::common;

use crate::common::FailsAt;

use circuits::attribution_graph::{attribution_graph, AttributionGraph, GraphConfig, Node};
use interp::circuits;
use interp::interp_core::{tch, CacheSpec, HookedTransformer, Rng};
use interp::transcoders::{
    evaluate, evaluate_set, load_transcoder_set, train_clt, train_dictionaries, ActivationSource, Architecture, CltConfig, CrossLayerTranscoder,
    DictionaryConfig, Error, InMemoryActivations, SaeTrainConfig, SparseDictionary, TranscoderSet,
};
use tch::{Device, Kind, Tensor};

const D: i64 = 24;
const F: i64 = 32;

/// Unit directions [n, d].
fn directions(rng: &mut Rng, n: i64, d: i64) -> Tensor {
    let u = common::normal(rng, &[n, d]);
    &u / u.norm_scalaropt_dim(2.0, [1], true)
}

/// Two layers of planted structure: layer l's input is `c_l U_l` (each layer sees only its own
/// features), and layer l''s output is `sum_{l <= l'} c_l V_{l,l'}`: layer 0's features write to
/// both outputs, which layer 1's input cannot tell. Names: in_0, in_1, out_0, out_1.
fn planted(tokens: i64) -> Vec<(String, Tensor)> {
    let mut rng = Rng::new(11);
    // The directions first, so that every token count gets the same ones.
    let mut next = || directions(&mut rng, F, D);
    let (u0, u1, v00, v01, v11) = (next(), next(), next(), next(), next());
    let c: Vec<Tensor> = (0..2)
        .map(|_| {
            let on = common::uniform(&mut rng, &[tokens, F]).lt(3.0 / F as f64).to_kind(Kind::Float);
            on * (common::uniform(&mut rng, &[tokens, F]) + 0.5)
        })
        .collect();
    vec![
        ("in_0".into(), c[0].matmul(&u0)),
        ("in_1".into(), c[1].matmul(&u1)),
        ("out_0".into(), c[0].matmul(&v00)),
        ("out_1".into(), c[0].matmul(&v01) + c[1].matmul(&v11)),
    ]
}

fn quiet(steps: usize) -> SaeTrainConfig {
    SaeTrainConfig { steps, lr: 3e-3, warmup_steps: 50, sparsity_warmup_steps: 100, dead_tokens: 20_000, log_every: 50, progress: false, ..Default::default() }
}

fn clt_config(architecture: Architecture) -> CltConfig {
    CltConfig { hook_in: "in".into(), hook_out: "out".into(), ..CltConfig::new(architecture, 2, D, F) }
}

/// Renames `blocks.{l}.in` style hooks: the planted source names its hooks `in_{l}`.
struct Planted(InMemoryActivations, Vec<String>);

impl Planted {
    fn new(tokens: i64) -> Self {
        let named = planted(tokens);
        let names = named.iter().map(|(n, _)| {
            let (what, l) = n.split_once('_').unwrap();
            format!("blocks.{l}.{what}")
        });
        let names = names.collect();
        Planted(InMemoryActivations::new(named, 1024).unwrap(), names)
    }
}

impl ActivationSource for Planted {
    fn hook_names(&self) -> &[String] {
        &self.1
    }
    fn batch(&mut self, step: usize) -> Result<Vec<Tensor>, Error> {
        self.0.batch(step)
    }
}

#[test]
fn a_clt_fits_cross_layer_structure_that_per_layer_transcoders_cannot() {
    let mut clt = CrossLayerTranscoder::init(clt_config(Architecture::TopK { k: 6 }), 0, Device::Cpu).unwrap();
    let report = train_clt(&mut clt, &mut Planted::new(32_768), &quiet(600)).unwrap();
    let clt_fvu = report.log.last().unwrap().fvu;
    // Per-layer transcoders with the same latents per layer, on the same activations.
    let mut per_layer: Vec<SparseDictionary> = (0..2)
        .map(|l| {
            SparseDictionary::init(
                DictionaryConfig::transcoder(Architecture::TopK { k: 6 }, false, &format!("blocks.{l}.in"), &format!("blocks.{l}.out"), D, D, F),
                l,
                Device::Cpu,
            )
            .unwrap()
        })
        .collect();
    let reports = train_dictionaries(&mut per_layer, &mut Planted::new(32_768), &quiet(600)).unwrap();
    let layer1_fvu = reports[1].log.last().unwrap().fvu;
    assert!(clt_fvu < 0.1, "the CLT fits both layers: FVU {clt_fvu}");
    assert!(layer1_fvu > 0.3, "layer 1's transcoder cannot see layer 0's features: FVU {layer1_fvu}");
    // The trained CLT (normalisation folded in) reproduces the raw activations.
    let named = planted(4096);
    let x = [named[0].1.shallow_clone(), named[1].1.shallow_clone()];
    let out = clt.forward(&x).unwrap();
    for (l, y) in [&named[2].1, &named[3].1].into_iter().enumerate() {
        let fvu =
            (&out[l] - y).square().sum(Kind::Double).double_value(&[]) / (y - y.mean_dim(0, true, Kind::Float)).square().sum(Kind::Double).double_value(&[]);
        assert!(fvu < 0.15, "layer {l} on raw activations: FVU {fvu}");
    }
    // JumpReLU and ReLU train too (a smoke test of their losses: finite and improving).
    for (arch, cfg) in [
        (Architecture::JumpRelu, SaeTrainConfig { l0_coefficient: 0.1, ..quiet(200) }),
        (Architecture::ReluL1, SaeTrainConfig { l1_coefficient: 0.1, ..quiet(200) }),
    ] {
        let mut clt = CrossLayerTranscoder::init(clt_config(arch), 0, Device::Cpu).unwrap();
        let log = train_clt(&mut clt, &mut Planted::new(8192), &SaeTrainConfig { log_every: 20, ..cfg }).unwrap().log;
        assert!(log.last().unwrap().fvu < 0.5 * log[0].fvu, "{arch:?}: FVU {} -> {}", log[0].fvu, log.last().unwrap().fvu);
    }
}

#[test]
fn clt_training_resumes_exactly_and_files_round_trip() {
    let dir = common::Scratch::new("clt-resume");
    let fresh = || CrossLayerTranscoder::init(clt_config(Architecture::TopK { k: 6 }), 0, Device::Cpu).unwrap();
    let cfg = SaeTrainConfig { checkpoint_every: 5, checkpoint_dir: Some(dir.join("ckpt")), keep_checkpoints: 1, dead_tokens: 2048, ..quiet(20) };
    let mut whole = fresh();
    train_clt(&mut whole, &mut Planted::new(8192), &SaeTrainConfig { checkpoint_dir: None, ..cfg.clone() }).unwrap();
    assert!(train_clt(&mut fresh(), &mut FailsAt(Planted::new(8192), 12), &cfg).is_err());
    let mut resumed = fresh();
    let report = train_clt(&mut resumed, &mut Planted::new(8192), &cfg).unwrap();
    assert_eq!(report.resumed_at, 10);
    assert_eq!(common::max_abs_diff(whole.w_enc(), resumed.w_enc()), 0.0);
    assert_eq!(common::max_abs_diff(whole.w_dec(0), resumed.w_dec(0)), 0.0);
    assert!(dir.join("ckpt/step_20/W_dec_1.safetensors").exists(), "the newest checkpoint kept as a CLT folder");
    let err = train_clt(&mut CrossLayerTranscoder::init(clt_config(Architecture::TopK { k: 2 }), 0, Device::Cpu).unwrap(), &mut Planted::new(8192), &cfg)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("another cross-layer transcoder configuration"), "{err}");

    // Files: circuit-tracer's layout, read back as the same function, for each activation.
    let x: Vec<Tensor> = (0..2).map(|_| Tensor::randn([16, D], (Kind::Float, Device::Cpu))).collect();
    for arch in [Architecture::TopK { k: 6 }, Architecture::JumpRelu, Architecture::ReluL1] {
        let clt = CrossLayerTranscoder::init(clt_config(arch), 3, Device::Cpu).unwrap();
        let path = dir.join(format!("{arch:?}"));
        clt.save(&path, "scan").unwrap();
        let back = CrossLayerTranscoder::load(&path, Device::Cpu).unwrap();
        assert_eq!(back.cfg(), clt.cfg());
        for (a, b) in clt.forward(&x).unwrap().iter().zip(back.forward(&x).unwrap()) {
            assert_eq!(common::max_abs_diff(a, &b), 0.0);
        }
        let yaml = std::fs::read_to_string(path.join("config.yaml")).unwrap();
        // circuit-tracer reads ReLU and JumpReLU CLTs; a TopK one it would read as ReLU, so its
        // model_kind is one circuit-tracer refuses.
        assert_eq!(yaml.contains("model_kind: cross_layer_transcoder\n"), arch != Architecture::TopK { k: 6 }, "{yaml}");
        assert!(matches!(load_transcoder_set(&path, Device::Cpu).unwrap(), TranscoderSet::CrossLayer(_)));
    }
    // Bad files: an activation that cannot be known, a missing decoder, a layer gap.
    let path = dir.join("ReluL1");
    let yaml = std::fs::read_to_string(path.join("config.yaml")).unwrap();
    std::fs::write(path.join("config.yaml"), yaml.replace("activation_function: relu\n", "")).unwrap();
    let err = CrossLayerTranscoder::load(&path, Device::Cpu).err().unwrap().to_string();
    assert!(err.contains("circuit-tracer would read ReLU"), "{err}");
    let path = dir.join("JumpRelu");
    std::fs::rename(path.join("W_dec_1.safetensors"), path.join("W_dec_1.bak")).unwrap();
    let err = CrossLayerTranscoder::load(&path, Device::Cpu).err().unwrap().to_string();
    assert!(err.contains("W_dec_1.safetensors"), "{err}");
    std::fs::rename(path.join("W_dec_1.bak"), path.join("W_dec_3.safetensors")).unwrap();
    let err = CrossLayerTranscoder::load(&path, Device::Cpu).err().unwrap().to_string();
    assert!(err.contains("without gaps"), "{err}");
}

const TEXT_MODEL: &str = "models/shakespeare-gpt2";

fn text_model() -> HookedTransformer {
    HookedTransformer::from_pretrained_dir(TEXT_MODEL, Device::Cpu, Kind::Float).unwrap()
}

/// A random TopK CLT on the text model with non-zero biases and cross-layer decoders.
fn random_clt(model: &HookedTransformer) -> CrossLayerTranscoder {
    let clt = CrossLayerTranscoder::init(CltConfig::new(Architecture::TopK { k: 4 }, model.cfg.n_layers, model.cfg.d_model, 64), 5, Device::Cpu).unwrap();
    tch::manual_seed(5);
    tch::no_grad(|| {
        let _ = clt.b_enc().shallow_clone().f_add_(&(Tensor::randn(clt.b_enc().size(), (Kind::Float, Device::Cpu)) * 0.1)).unwrap();
        let _ = clt.b_dec().shallow_clone().f_add_(&(Tensor::randn(clt.b_dec().size(), (Kind::Float, Device::Cpu)) * 0.1)).unwrap();
    });
    clt
}

fn max_abs(t: &Tensor) -> f64 {
    t.abs().max().double_value(&[])
}

#[test]
fn clt_attribution_graphs_are_complete_and_reduce_to_per_layer_graphs() {
    let model = text_model();
    let tokens = model.tokenizer().unwrap().encode("ROMEO: But soft, what light through yonder window", true).unwrap();
    let clt = random_clt(&model);
    let set = TranscoderSet::from(clt);
    let graph = attribution_graph(&model, &set, &tokens, &GraphConfig::default()).unwrap();
    assert_eq!(graph.n_features(), 2 * 4 * (tokens.len() - 1), "one node per active latent, not per layer written");
    let err = graph.completeness_error().unwrap();
    assert!(err < 1e-4 * max_abs(&graph.values).max(1.0), "completeness error {err:e}");
    // Values are the real model's pre-activations.
    let TranscoderSet::CrossLayer(clt) = &set else { unreachable!() };
    let names: Vec<String> = (0..2).map(|l| format!("blocks.{l}.ln2.hook_normalized")).collect();
    let (_, cache) = model.run_with_cache(&Tensor::from_slice(&tokens).unsqueeze(0), CacheSpec::names(&names)).unwrap();
    let mut worst = 0f64;
    for (i, node) in graph.nodes.iter().enumerate() {
        if let Node::Feature { layer, pos, feature, .. } = *node {
            let pre = clt.pre_activations(layer, &cache.get(&names[layer]).unwrap().get(0).get(pos)).unwrap().double_value(&[feature]);
            worst = worst.max((graph.values.double_value(&[i as i64]) - pre).abs());
        }
    }
    assert!(worst < 1e-4, "linearised values = real values ({worst:e})");

    // Without cross-layer decoders the CLT is a per-layer set: the same graph.
    tch::no_grad(|| {
        let _ = clt.w_dec(0).narrow(1, 1, 1).shallow_clone().f_zero_().unwrap();
    });
    let crossless = attribution_graph(&model, &set, &tokens, &GraphConfig::default()).unwrap();
    let per_layer: TranscoderSet = (0..2)
        .map(|l| {
            let cfg = DictionaryConfig::transcoder(Architecture::TopK { k: 4 }, false, &names[l], &format!("blocks.{l}.hook_mlp_out"), 128, 128, 64);
            SparseDictionary::init(cfg, 0, Device::Cpu)
                .unwrap()
                .map_weights(|w| {
                    w.w_enc = clt.w_enc().get(l as i64).copy();
                    w.b_enc = clt.b_enc().get(l as i64).copy();
                    w.w_dec = clt.w_dec(l).select(1, 0).copy();
                    w.b_dec = clt.b_dec().get(l as i64).copy();
                })
                .unwrap()
        })
        .collect::<Vec<_>>()
        .into();
    let reference = attribution_graph(&model, &per_layer, &tokens, &GraphConfig::default()).unwrap();
    assert_eq!(crossless.nodes, reference.nodes);
    let diff = max_abs(&(&crossless.adjacency.to_dense().unwrap() - &reference.adjacency.to_dense().unwrap()));
    assert!(diff < 1e-5 * max_abs(&reference.adjacency.to_dense().unwrap()).max(1.0), "CLT without cross-layer decoders vs per-layer transcoders: {diff:e}");
    // And the cross-layer decoders matter: the full CLT's edges from layer-0 features differ.
    let from_layer_0 = |g: &AttributionGraph| {
        let n0 = g.nodes.iter().filter(|n| matches!(n, Node::Feature { layer: 0, .. })).count() as i64;
        g.adjacency.to_dense().unwrap().narrow(1, 0, n0).abs().sum(Kind::Double).double_value(&[])
    };
    assert!((from_layer_0(&graph) - from_layer_0(&crossless)).abs() > 1e-3 * from_layer_0(&graph));

    // A CLT of another layer count is refused with the reason.
    let three = CrossLayerTranscoder::init(CltConfig::new(Architecture::TopK { k: 4 }, 3, 128, 64), 0, Device::Cpu).unwrap();
    let err = attribution_graph(&model, &three.into(), &tokens, &GraphConfig::default()).err().unwrap().to_string();
    assert!(err.contains("cross-layer transcoder of 3 layers for a model with 2 layers"), "{err}");
}

#[test]
fn whole_set_evaluation_agrees_with_per_layer_evaluation() {
    let model = text_model();
    let set = load_transcoder_set(format!("{TEXT_MODEL}/transcoders"), Device::Cpu).unwrap();
    let tokens = model.tokenizer().unwrap().encode(&"It is the east, and Juliet is the sun. ".repeat(40), true).unwrap();
    let contexts = Tensor::from_slice(&tokens[..4 * 64]).reshape([4, 64]);
    let m = evaluate_set(&set, &model, &contexts, 2).unwrap();
    let TranscoderSet::PerLayer(layers) = &set else { panic!("the default transcoders are per-layer") };
    let (mut l0, mut worst_single) = (0.0, 0f64);
    for (l, tc) in layers.iter().enumerate() {
        let alone = evaluate(tc, &model, &contexts, 2).unwrap();
        assert!(
            (alone.fvu - m.layers[l].fvu).abs() < 1e-6 && (alone.l0 - m.layers[l].l0).abs() < 1e-9,
            "layer {l}: {} {} vs {} {}",
            alone.fvu,
            alone.l0,
            m.layers[l].fvu,
            m.layers[l].l0
        );
        l0 += alone.l0;
        let d = alone.downstream.unwrap();
        assert!((d.ce_clean - m.downstream.ce_clean).abs() < 1e-6);
        worst_single = worst_single.max(d.ce_zero_ablation);
    }
    assert!((m.l0 - l0).abs() < 1e-9);
    // Zero-ablating every MLP at once costs more than zero-ablating any one.
    assert!(m.downstream.ce_zero_ablation > worst_single, "{:?}", m.downstream);
}
