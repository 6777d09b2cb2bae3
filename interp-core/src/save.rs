//! Building models from scratch and saving any GPT-2- or Llama-layout model as an HF checkpoint.

use std::path::Path;

use tch::{Device, Kind, Tensor};

use crate::checkpoint::RandomInit;
use crate::config::{Architecture, NormKind};
use crate::error::{Error, Result};
use crate::model::{HookedTransformer, Linear, Norm};
use crate::spec::ModelSpec;
use crate::tokenizer::Tokenizer;

impl HookedTransformer {
    /// A freshly initialised model (GPT-2-style init, seeded) of the given shape.
    pub fn init_random(spec: &ModelSpec, seed: i64, kind: Kind, device: Device) -> Result<Self> {
        let cfg = spec.config()?;
        tch::manual_seed(seed);
        let _guard = tch::no_grad_guard();
        let params = crate::loading::load_params(&cfg, &RandomInit { n_layers: cfg.n_layers }, kind, device)?;
        Self::from_params(cfg, params, None, kind, device)
    }

    /// Attaches a tokenizer (saved along with the model).
    pub fn with_tokenizer(mut self, tokenizer: Tokenizer) -> Self {
        self.tokenizer = Some(tokenizer);
        self
    }

    /// Parameters under their HF names in HF layout (copies where the layout differs).
    pub(crate) fn hf_tensors(&self) -> Result<Vec<(String, Tensor)>> {
        let c = &self.cfg;
        let p = &self.params;
        let (h, kv, dh) = (c.n_heads, c.n_kv_heads, c.d_head);
        let mut out: Vec<(String, Tensor)> = Vec::new();
        // Norms folded away by `fold_ln` are written back as gain 1, bias 0.
        let norm = |out: &mut Vec<(String, Tensor)>, prefix: &str, n: &Norm| -> Result<()> {
            let w = match &n.w {
                Some(w) => w.shallow_clone(),
                None => Tensor::f_ones([c.d_model], (Kind::Float, self.device))?,
            };
            out.push((format!("{prefix}.weight"), w));
            if n.kind == NormKind::LayerNorm {
                let b = match &n.b { Some(b) => b.shallow_clone(), None => Tensor::f_zeros([c.d_model], (Kind::Float, self.device))? };
                out.push((format!("{prefix}.bias"), b));
            }
            Ok(())
        };
        match c.architecture {
            Architecture::Gpt2 => {
                // Conv1D stores [in, out]: a transposed view (made contiguous when written).
                let conv = |out: &mut Vec<(String, Tensor)>, prefix: String, lin: &Linear| {
                    out.push((format!("{prefix}.weight"), lin.w.tr()));
                    if let Some(b) = &lin.b {
                        out.push((format!("{prefix}.bias"), b.shallow_clone()));
                    }
                };
                out.push(("transformer.wte.weight".into(), p.w_e.shallow_clone()));
                if let Some(w_pos) = &p.w_pos {
                    out.push(("transformer.wpe.weight".into(), w_pos.shallow_clone()));
                }
                for (l, blk) in p.blocks.iter().enumerate() {
                    let b = format!("transformer.h.{l}");
                    norm(&mut out, &format!("{b}.ln_1"), &blk.ln1)?;
                    conv(&mut out, format!("{b}.attn.c_attn"), &blk.attn.qkv);
                    conv(&mut out, format!("{b}.attn.c_proj"), &blk.attn.o);
                    if let Some(m) = &blk.mlp {
                        norm(&mut out, &format!("{b}.ln_2"), &blk.ln2)?;
                        conv(&mut out, format!("{b}.mlp.c_fc"), &m.w_in);
                        if let Some(g) = &m.w_gate {
                            conv(&mut out, format!("{b}.mlp.c_gate"), g);
                        }
                        conv(&mut out, format!("{b}.mlp.c_proj"), &m.w_out);
                    }
                }
                norm(&mut out, "transformer.ln_f", &p.ln_final)?;
            }
            Architecture::Llama => {
                let lin = |out: &mut Vec<(String, Tensor)>, prefix: String, w: Tensor, b: Option<Tensor>| {
                    out.push((format!("{prefix}.weight"), w));
                    if let Some(b) = b {
                        out.push((format!("{prefix}.bias"), b));
                    }
                };
                out.push(("model.embed_tokens.weight".into(), p.w_e.shallow_clone()));
                for (l, blk) in p.blocks.iter().enumerate() {
                    let b = format!("model.layers.{l}");
                    norm(&mut out, &format!("{b}.input_layernorm"), &blk.ln1)?;
                    for (name, start, heads) in [("q_proj", 0, h), ("k_proj", h, kv), ("v_proj", h + kv, kv)] {
                        let w = blk.attn.qkv.w.f_narrow(0, start * dh, heads * dh)?;
                        let bias = blk.attn.qkv.b.as_ref().map(|b| b.f_narrow(0, start * dh, heads * dh)).transpose()?;
                        lin(&mut out, format!("{b}.self_attn.{name}"), w, bias);
                    }
                    lin(&mut out, format!("{b}.self_attn.o_proj"), blk.attn.o.w.shallow_clone(), blk.attn.o.b.as_ref().map(Tensor::shallow_clone));
                    if let Some(m) = &blk.mlp {
                        norm(&mut out, &format!("{b}.post_attention_layernorm"), &blk.ln2)?;
                        let gate = m.w_gate.as_ref().ok_or_else(|| Error::Input("Llama MLPs are gated".into()))?;
                        for (name, l) in [("gate_proj", gate), ("up_proj", &m.w_in), ("down_proj", &m.w_out)] {
                            lin(&mut out, format!("{b}.mlp.{name}"), l.w.shallow_clone(), l.b.as_ref().map(Tensor::shallow_clone));
                        }
                    }
                }
                norm(&mut out, "model.norm", &p.ln_final)?;
            }
            other => return Err(Error::Input(format!("saving supports the gpt2 and llama layouts, not {other:?}"))),
        }
        if !c.tie_embeddings {
            out.push(("lm_head.weight".into(), p.w_u.shallow_clone()));
        }
        if p.b_u.is_some() {
            return Err(Error::Input("an unembedding bias (from fold_ln) has no place in the HF layout".into()));
        }
        Ok(out)
    }

    /// Writes `config.json`, `model.safetensors` and (if the model has one) `tokenizer.json` to
    /// `dir`, as HF `save_pretrained` would; `from_pretrained_dir` and HF `transformers` read it.
    pub fn save_pretrained(&self, dir: impl AsRef<Path>) -> Result<()> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).map_err(Error::io(dir))?;
        let tensors: Vec<(String, Tensor)> = self
            .hf_tensors()?
            .into_iter()
            .map(|(n, t)| Ok((n, t.f_detach()?.f_to_device(Device::Cpu)?.f_contiguous()?)))
            .collect::<Result<_>>()?;
        let weights = dir.join("model.safetensors");
        Tensor::write_safetensors(&tensors, &weights)?;
        let config = dir.join("config.json");
        let text = serde_json::to_string_pretty(&self.cfg.hf_json).map_err(|source| Error::Json { path: config.clone(), source })?;
        std::fs::write(&config, text).map_err(Error::io(&config))?;
        if let Some(tok) = &self.tokenizer {
            tok.save(&dir.join("tokenizer.json"))?;
        }
        Ok(())
    }
}
