//! Writes dictionaries of every architecture in SAELens's folder format, and ReLU and JumpReLU
//! transcoder sets and cross-layer transcoders in circuit-tracer's, each with an input and our encode/decode of it
//! (`reference.safetensors`), for scripts/check_saelens.sh to load in SAELens and circuit-tracer.
//! Usage: `cargo run --example export_dictionaries -- OUT_DIR`.

use interp::interp_core::tch::{self, Device, Kind, Tensor};
use interp::transcoders::{save_circuit_tracer, Architecture, CltConfig, CrossLayerTranscoder, DictionaryConfig, SparseDictionary};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = std::path::PathBuf::from(std::env::args().nth(1).ok_or("usage: export_dictionaries OUT_DIR")?);
    let (resid, mlp_in, mlp_out) = ("blocks.0.hook_resid_post", "blocks.0.ln2.hook_normalized", "blocks.0.hook_mlp_out");
    let configs = [
        ("standard", DictionaryConfig::sae(Architecture::ReluL1, resid, 16, 40)),
        ("topk", DictionaryConfig::sae(Architecture::TopK { k: 6 }, resid, 16, 40)),
        ("jumprelu", DictionaryConfig::sae(Architecture::JumpRelu, resid, 16, 40)),
        ("batchtopk_as_jumprelu", DictionaryConfig::sae(Architecture::BatchTopK { k: 6 }, resid, 16, 40)),
        ("matryoshka_as_jumprelu", DictionaryConfig::matryoshka(6, &[8, 24, 40], resid, 16)),
        ("gated", DictionaryConfig::sae(Architecture::Gated, resid, 16, 40)),
        ("transcoder", DictionaryConfig::transcoder(Architecture::ReluL1, false, mlp_in, mlp_out, 16, 12, 40)),
        ("skip_transcoder", DictionaryConfig::transcoder(Architecture::ReluL1, true, mlp_in, mlp_out, 16, 12, 40)),
        ("jumprelu_transcoder", DictionaryConfig::transcoder(Architecture::JumpRelu, false, mlp_in, mlp_out, 16, 12, 40)),
        ("jumprelu_skip_transcoder", DictionaryConfig::transcoder(Architecture::JumpRelu, true, mlp_in, mlp_out, 16, 12, 40)),
    ];
    for (i, (name, cfg)) in configs.into_iter().enumerate() {
        tch::manual_seed(100 + i as i64);
        let noise = |t: &Tensor, s: f64| Tensor::randn(t.size(), (Kind::Float, Device::Cpu)) * s;
        let d = SparseDictionary::init(cfg, i as i64, Device::Cpu)?.map_weights(|w| {
            w.b_enc = noise(&w.b_enc, 0.1);
            w.b_dec = noise(&w.b_dec, 0.1);
            w.threshold = w.threshold.as_ref().map(|t| Tensor::rand(t.size(), (Kind::Float, Device::Cpu)) * 0.2);
            w.r_mag = w.r_mag.as_ref().map(|t| noise(t, 0.1));
            w.b_mag = w.b_mag.as_ref().map(|t| noise(t, 0.1));
            w.w_skip = w.w_skip.as_ref().map(|t| noise(t, 0.1));
        })?;
        let dir = out.join(name);
        d.save_saelens(&dir, None)?;
        let x = Tensor::randn([20, 16], (Kind::Float, Device::Cpu));
        let f = d.encode(&x)?;
        let y = d.forward(&x)?;
        Tensor::write_safetensors(&[("x", x), ("feature_acts", f), ("sae_out", y)], dir.join("reference.safetensors"))?;
    }
    // circuit-tracer sets: two layers each, ReLU with a skip path and JumpReLU.
    for (name, arch, skip) in [("circuit-tracer-relu-skip", Architecture::ReluL1, true), ("circuit-tracer-jumprelu", Architecture::JumpRelu, false)] {
        tch::manual_seed(200);
        let x = Tensor::randn([20, 16], (Kind::Float, Device::Cpu));
        let mut set = Vec::new();
        let mut reference = vec![("x".to_string(), x.shallow_clone())];
        for l in 0..2i64 {
            let cfg = DictionaryConfig::transcoder(arch, skip, &format!("blocks.{l}.ln2.hook_normalized"), &format!("blocks.{l}.hook_mlp_out"), 16, 16, 40);
            let noise = |t: &Tensor, s: f64| Tensor::randn(t.size(), (Kind::Float, Device::Cpu)) * s;
            let d = SparseDictionary::init(cfg, 50 + l, Device::Cpu)?.map_weights(|w| {
                w.b_enc = noise(&w.b_enc, 0.1);
                w.b_dec = noise(&w.b_dec, 0.1);
                w.threshold = w.threshold.as_ref().map(|t| Tensor::rand(t.size(), (Kind::Float, Device::Cpu)) * 0.2);
                w.w_skip = w.w_skip.as_ref().map(|t| noise(t, 0.1));
            })?;
            reference.push((format!("feature_acts_{l}"), d.encode(&x)?));
            reference.push((format!("out_{l}"), d.forward(&x)?));
            set.push(d);
        }
        let dir = out.join(name);
        save_circuit_tracer(&set, name, &dir)?;
        Tensor::write_safetensors(&reference, dir.join("reference.safetensors"))?;
    }
    // Cross-layer transcoders of three layers: ReLU and JumpReLU (circuit-tracer's load_clt).
    for (name, arch) in [("clt-relu", Architecture::ReluL1), ("clt-jumprelu", Architecture::JumpRelu)] {
        tch::manual_seed(300);
        let clt = CrossLayerTranscoder::init(CltConfig::new(arch, 3, 16, 40), 9, Device::Cpu)?;
        let noise = |t: &Tensor, s: f64| t.shallow_clone().f_add_(&(Tensor::randn(t.size(), (Kind::Float, Device::Cpu)) * s));
        tch::no_grad(|| -> Result<(), tch::TchError> {
            let _ = noise(clt.b_enc(), 0.1)?;
            let _ = noise(clt.b_dec(), 0.1)?;
            if let Some(t) = clt.threshold() {
                t.shallow_clone().f_copy_(&(Tensor::rand(t.size(), (Kind::Float, Device::Cpu)) * 0.2))?;
            }
            Ok(())
        })?;
        let x: Vec<Tensor> = (0..3).map(|_| Tensor::randn([20, 16], (Kind::Float, Device::Cpu))).collect();
        let out_l = clt.forward(&x)?;
        let mut reference = Vec::new();
        for l in 0..3 {
            reference.push((format!("x_{l}"), x[l].shallow_clone()));
            reference.push((format!("feature_acts_{l}"), clt.encode(l, &x[l])?));
            reference.push((format!("out_{l}"), out_l[l].shallow_clone()));
        }
        let dir = out.join(name);
        clt.save(&dir, name)?;
        Tensor::write_safetensors(&reference, dir.join("reference.safetensors"))?;
    }
    println!("wrote 10 dictionaries, 2 circuit-tracer sets and 2 CLTs to {}", out.display());
    Ok(())
}
