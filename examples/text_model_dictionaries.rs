//! The README's dictionary figures: on the default text model (models/shakespeare-gpt2), a TopK
//! SAE on `blocks.1.hook_resid_pre` and a TopK transcoder of MLP 0, each next to a ReLU+L1
//! baseline of the same size, all four trained side by side from one pass of the model, then
//! evaluated on held-out plays. Usage: `cargo run --release --example text_model_dictionaries
//! [STEPS] [OUT_DIR]`.

use interp::interp_core::data;
use interp::interp_core::{tch, HookedTransformer};
use interp::transcoders::{evaluate, train_dictionaries, ActivationStore, Architecture, DictionaryConfig, SaeTrainConfig, SparseDictionary, StoreConfig};
use tch::{Device, Kind, Tensor};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    interp::interp_core::reuse_freed_memory();
    let steps: usize = std::env::args().nth(1).map(|s| s.parse()).transpose()?.unwrap_or(1500);
    let out = std::path::PathBuf::from(std::env::args().nth(2).unwrap_or_else(|| "target/text-model-dictionaries".into()));
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let model = HookedTransformer::from_pretrained_dir(root.join("models/shakespeare-gpt2"), Device::Cpu, Kind::Float)?;
    let (train, eval) = data::shakespeare(&root.join("data/shakespeare"))?;
    let tok = model.tokenizer().ok_or("no tokenizer")?;
    let stream = |docs: &[data::Document]| -> Result<Tensor, Box<dyn std::error::Error>> {
        let mut ids = Vec::new();
        for d in docs {
            ids.extend(tok.encode(&d.text, true)?);
        }
        Ok(Tensor::from_slice(&ids))
    };
    let (resid, mlp_in, mlp_out) = ("blocks.1.hook_resid_pre", "blocks.0.ln2.hook_normalized", "blocks.0.hook_mlp_out");
    let d = model.cfg.d_model;
    let d_sae = 8 * d;
    let mut dicts = vec![
        SparseDictionary::init(DictionaryConfig::sae(Architecture::TopK { k: 16 }, resid, d, d_sae), 0, Device::Cpu)?,
        SparseDictionary::init(DictionaryConfig::sae(Architecture::ReluL1, resid, d, d_sae), 0, Device::Cpu)?,
        SparseDictionary::init(DictionaryConfig::transcoder(Architecture::TopK { k: 16 }, false, mlp_in, mlp_out, d, d, d_sae), 0, Device::Cpu)?,
        SparseDictionary::init(DictionaryConfig::transcoder(Architecture::ReluL1, false, mlp_in, mlp_out, d, d, d_sae), 0, Device::Cpu)?,
    ];
    let mut store = ActivationStore::new(&model, &stream(&train)?, &[resid, mlp_in, mlp_out], StoreConfig::default())?;
    let cfg = SaeTrainConfig { steps, l1_coefficient: 2.0, ..Default::default() };
    let started = std::time::Instant::now();
    let reports = train_dictionaries(&mut dicts, &mut store, &cfg)?;
    println!(
        "trained 4 dictionaries x {steps} steps of 4096 tokens in {:.0} s ({:.0} tokens/s incl. the model forward)",
        started.elapsed().as_secs_f64(),
        reports[0].tokens_per_sec
    );
    let eval_tokens = stream(&eval)?;
    let n = (eval_tokens.size()[0] / 128).min(128);
    let contexts = eval_tokens.narrow(0, 0, n * 128).reshape([n, 128]);
    println!("| dictionary | L0 | FVU | CE loss recovered | delta loss (nats) | dead |");
    println!("|---|---|---|---|---|---|");
    let names = ["TopK SAE (k 16), resid_pre 1", "ReLU+L1 SAE, resid_pre 1", "TopK transcoder (k 16), MLP 0", "ReLU+L1 transcoder, MLP 0"];
    for (name, dict) in names.iter().zip(&dicts) {
        let m = evaluate(dict, &model, &contexts, 16)?;
        let d = m.downstream.as_ref().ok_or("evaluate runs the model")?;
        println!("| {name} | {:.1} | {:.3} | {:.3} | {:.3} | {:.1}% |", m.l0, m.fvu, d.ce_loss_recovered, d.delta_loss, 100.0 * m.dead_fraction);
        dict.save_saelens(out.join(name.split(',').next().unwrap_or(name).replace([' ', '(', ')', '+'], "_").to_lowercase()), Some(&m.log10_density))?;
    }
    println!("clean CE on {} held-out tokens; dictionaries saved under {}", n * 127, out.display());
    Ok(())
}
