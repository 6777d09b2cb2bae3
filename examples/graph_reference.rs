//! Writes random JumpReLU transcoders for the text model, a per-layer set (`OUT/set`) and a
//! cross-layer transcoder (`OUT/clt`), in circuit-tracer's layouts, and the full attribution graph
//! of a prompt through each (`OUT/set.safetensors`, `OUT/clt.safetensors`: `adjacency` [n, n],
//! `values`, `tokens`, the feature nodes' (layer, pos, feature) and the logit tokens; `scores`:
//! the replacement and completeness scores; `node_mask` and `edge_mask`: pruning at 0.8 / 0.98),
//! for scripts/check_saelens.sh to compare with circuit-tracer's own `attribute`,
//! `compute_graph_scores` and `prune_graph` on the same weights.
//! Usage: `cargo run --example graph_reference -- OUT_DIR`.

use interp::circuits::attribution_graph::{attribution_graph, GraphConfig, Node};
use interp::interp_core::tch::{self, Device, Kind, Tensor};
use interp::interp_core::HookedTransformer;
use interp::transcoders::{save_circuit_tracer, Architecture, CltConfig, CrossLayerTranscoder, DictionaryConfig, SparseDictionary, TranscoderSet};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = std::path::PathBuf::from(std::env::args().nth(1).ok_or("usage: graph_reference OUT_DIR")?);
    let model = HookedTransformer::from_pretrained_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/models/shakespeare-gpt2"), Device::Cpu, Kind::Float)?;
    let (n, d, m) = (model.cfg.n_layers, model.cfg.d_model, 96);
    tch::manual_seed(0);
    let thresholds = |shape: &[i64]| Tensor::rand(shape, (Kind::Float, Device::Cpu)) * 0.5 + 0.5;
    let set: Vec<SparseDictionary> = (0..n)
        .map(|l| {
            let cfg = DictionaryConfig::transcoder(
                Architecture::JumpRelu,
                false,
                &format!("blocks.{l}.ln2.hook_normalized"),
                &format!("blocks.{l}.hook_mlp_out"),
                d,
                d,
                m,
            );
            SparseDictionary::init(cfg, l as i64, Device::Cpu)?.map_weights(|w| {
                w.b_enc = Tensor::randn([m], (Kind::Float, Device::Cpu)) * 0.1;
                w.b_dec = Tensor::randn([d], (Kind::Float, Device::Cpu)) * 0.1;
                w.threshold = Some(thresholds(&[m]));
            })
        })
        .collect::<Result<_, _>>()?;
    save_circuit_tracer(&set, "reference", out.join("set"))?;
    let clt = CrossLayerTranscoder::init(CltConfig::new(Architecture::JumpRelu, n, d, m), 7, Device::Cpu)?;
    tch::no_grad(|| -> Result<(), tch::TchError> {
        let _ = clt.b_enc().shallow_clone().f_add_(&(Tensor::randn(clt.b_enc().size(), (Kind::Float, Device::Cpu)) * 0.1))?;
        let _ = clt.b_dec().shallow_clone().f_add_(&(Tensor::randn(clt.b_dec().size(), (Kind::Float, Device::Cpu)) * 0.1))?;
        clt.threshold().expect("JumpReLU").shallow_clone().f_copy_(&thresholds(&[n as i64, m]))?;
        Ok(())
    })?;
    clt.save(out.join("clt"), "reference")?;
    let tokens = model.tokenizer().ok_or("no tokenizer")?.encode("ROMEO: But soft, what light through yonder window breaks? It is the east", true)?;
    for (name, set) in [("set", TranscoderSet::from(set)), ("clt", clt.into())] {
        let graph = attribution_graph(&model, &set, &tokens, &GraphConfig::default())?;
        let (mut features, mut logits) = (Vec::new(), Vec::new());
        for node in &graph.nodes {
            match *node {
                Node::Feature { layer, pos, feature, .. } => features.extend([layer as i64, pos, feature]),
                Node::Logit { token, .. } => logits.push(token),
                _ => {}
            }
        }
        let (replacement, completeness) = graph.replacement_and_completeness()?;
        let pruned = graph.prune(0.8, 0.98)?;
        let tensors = [
            ("scores", Tensor::from_slice(&[replacement, completeness])),
            ("node_mask", Tensor::from_slice(&pruned.node_mask)),
            ("edge_mask", pruned.edge_mask()?),
            ("adjacency", graph.adjacency.to_dense().unwrap()),
            ("values", graph.values.shallow_clone()),
            ("tokens", Tensor::from_slice(&tokens)),
            ("features", Tensor::from_slice(&features).reshape([-1, 3])),
            ("logits", Tensor::from_slice(&logits)),
        ];
        Tensor::write_safetensors(&tensors, out.join(format!("{name}.safetensors")))?;
        println!("{name}: {} nodes ({} features), completeness error {:.1e}", graph.nodes.len(), graph.n_features(), graph.completeness_error()?);
    }
    Ok(())
}
