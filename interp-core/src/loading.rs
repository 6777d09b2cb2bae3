//! HF checkpoint tensors -> our parameter layout, per architecture family.
//!
//! Linear weights are kept in HF's [out, in] layout (so `Tensor::linear` runs one fused GEMM),
//! with q, k and v fused into one matrix; `HookedTransformer::w_q` etc. give TransformerLens views.

use tch::{Device, Kind, Tensor};

use crate::checkpoint::TensorSource;
use crate::config::{Architecture, ModelConfig, NormKind};
use crate::error::Result;
use crate::model::{Attention, Block, Linear, Mlp, Norm, Params};

struct Loader<'a> {
    ckpt: &'a dyn TensorSource,
    cfg: &'a ModelConfig,
    kind: Kind,
    device: Device,
}

impl Loader<'_> {
    fn t(&self, name: &str, shape: &[i64]) -> Result<Tensor> {
        self.ckpt.tensor(name, shape, self.kind, self.device)
    }

    /// A Conv1D weight stored [in, out] (GPT-2), returned as [out, in].
    fn conv1d(&self, name: &str, d_in: i64, d_out: i64) -> Result<Tensor> {
        Ok(self.t(name, &[d_in, d_out])?.f_tr()?.f_contiguous()?)
    }

    fn linear(&self, prefix: &str, d_in: i64, d_out: i64, bias: bool) -> Result<Linear> {
        Ok(Linear {
            w: self.t(&format!("{prefix}.weight"), &[d_out, d_in])?,
            b: if bias { Some(self.t(&format!("{prefix}.bias"), &[d_out])?) } else { None },
        })
    }

    /// Norm gains and biases are kept in f32 (f64 for an f64 model): norms compute in it.
    fn norm(&self, prefix: &str) -> Result<Norm> {
        let dm = self.cfg.d_model;
        let acc = if self.kind == Kind::Double { Kind::Double } else { Kind::Float };
        let f32 = |name: String| self.ckpt.tensor(&name, &[dm], acc, self.device);
        let mut w = f32(format!("{prefix}.weight"))?;
        if matches!(self.cfg.architecture, Architecture::Gemma | Architecture::Gemma2) {
            w = w.f_add_scalar(1.0)?; // Gemma stores the gain as (1 + w).
        }
        let b = match self.cfg.norm {
            NormKind::LayerNorm => Some(f32(format!("{prefix}.bias"))?),
            NormKind::RmsNorm => None,
        };
        Ok(Norm { kind: self.cfg.norm, w: Some(w), b, eps: self.cfg.norm_eps })
    }
}

pub(crate) fn load_params(cfg: &ModelConfig, ckpt: &dyn TensorSource, kind: Kind, device: Device) -> Result<Params> {
    let l = Loader { ckpt, cfg, kind, device };
    match cfg.architecture {
        Architecture::Gpt2 => gpt2(&l),
        Architecture::GptNeox => gpt_neox(&l),
        Architecture::Llama | Architecture::Gemma | Architecture::Gemma2 => llama_like(&l),
    }
}

fn unembed(l: &Loader, tied_to: &Tensor, name: &str) -> Result<Tensor> {
    if l.cfg.tie_embeddings {
        Ok(tied_to.shallow_clone())
    } else {
        l.t(name, &[l.cfg.d_vocab, l.cfg.d_model])
    }
}

fn gpt2(l: &Loader) -> Result<Params> {
    let c = l.cfg;
    let (dm, dmlp) = (c.d_model, c.d_mlp);
    let p = if l.ckpt.contains("transformer.wte.weight") { "transformer." } else { "" };
    let w_e = l.t(&format!("{p}wte.weight"), &[c.d_vocab, dm])?;
    let w_pos = l.t(&format!("{p}wpe.weight"), &[c.n_ctx, dm])?;
    let blocks = (0..c.n_layers)
        .map(|i| -> Result<Block> {
            let b = format!("{p}h.{i}");
            Ok(Block {
                ln1: l.norm(&format!("{b}.ln_1"))?,
                attn: Attention {
                    qkv: Linear {
                        w: l.conv1d(&format!("{b}.attn.c_attn.weight"), dm, 3 * dm)?,
                        b: Some(l.t(&format!("{b}.attn.c_attn.bias"), &[3 * dm])?),
                    },
                    o: Linear {
                        w: l.conv1d(&format!("{b}.attn.c_proj.weight"), dm, dm)?,
                        b: Some(l.t(&format!("{b}.attn.c_proj.bias"), &[dm])?),
                    },
                },
                ln1_post: None,
                ln2: if c.attn_only { Norm { kind: c.norm, w: None, b: None, eps: c.norm_eps } } else { l.norm(&format!("{b}.ln_2"))? },
                mlp: if c.attn_only {
                    None
                } else {
                    let conv = |name: &str, d_in: i64, d_out: i64| -> Result<Linear> {
                        Ok(Linear {
                            w: l.conv1d(&format!("{b}.mlp.{name}.weight"), d_in, d_out)?,
                            b: Some(l.t(&format!("{b}.mlp.{name}.bias"), &[d_out])?),
                        })
                    };
                    Some(Mlp {
                        w_in: conv("c_fc", dm, dmlp)?,
                        w_gate: if c.gated_mlp { Some(conv("c_gate", dm, dmlp)?) } else { None },
                        w_out: conv("c_proj", dmlp, dm)?,
                    })
                },
                ln2_post: None,
            })
        })
        .collect::<Result<_>>()?;
    let w_u = if l.ckpt.contains("lm_head.weight") && !c.tie_embeddings {
        l.t("lm_head.weight", &[c.d_vocab, dm])?
    } else {
        w_e.shallow_clone()
    };
    Ok(Params { w_e, w_pos: Some(w_pos), blocks, ln_final: l.norm(&format!("{p}ln_f"))?, w_u, b_u: None })
}

fn gpt_neox(l: &Loader) -> Result<Params> {
    let c = l.cfg;
    let (dm, dmlp, h, dh) = (c.d_model, c.d_mlp, c.n_heads, c.d_head);
    let w_e = l.t("gpt_neox.embed_in.weight", &[c.d_vocab, dm])?;
    let blocks = (0..c.n_layers)
        .map(|i| -> Result<Block> {
            let b = format!("gpt_neox.layers.{i}");
            // query_key_value is interleaved per head (q, k, v of head 0, then head 1, ...):
            // regroup into q heads, k heads, v heads.
            let qkv = l.linear(&format!("{b}.attention.query_key_value"), dm, 3 * dm, c.qkv_bias)?;
            let w = qkv.w.f_view([h, 3, dh, dm])?.f_transpose(0, 1)?.f_reshape([3 * dm, dm])?;
            let bias = match qkv.b {
                Some(bias) => Some(bias.f_view([h, 3, dh])?.f_transpose(0, 1)?.f_reshape([3 * dm])?),
                None => None,
            };
            Ok(Block {
                ln1: l.norm(&format!("{b}.input_layernorm"))?,
                attn: Attention {
                    qkv: Linear { w, b: bias },
                    o: l.linear(&format!("{b}.attention.dense"), dm, dm, c.o_bias)?,
                },
                ln1_post: None,
                ln2: l.norm(&format!("{b}.post_attention_layernorm"))?,
                mlp: Some(Mlp {
                    w_in: l.linear(&format!("{b}.mlp.dense_h_to_4h"), dm, dmlp, true)?,
                    w_gate: None,
                    w_out: l.linear(&format!("{b}.mlp.dense_4h_to_h"), dmlp, dm, true)?,
                }),
                ln2_post: None,
            })
        })
        .collect::<Result<_>>()?;
    let w_u = unembed(l, &w_e, "embed_out.weight")?;
    Ok(Params { w_e, w_pos: None, blocks, ln_final: l.norm("gpt_neox.final_layer_norm")?, w_u, b_u: None })
}

fn llama_like(l: &Loader) -> Result<Params> {
    let c = l.cfg;
    let (dm, dmlp, h, kv, dh) = (c.d_model, c.d_mlp, c.n_heads, c.n_kv_heads, c.d_head);
    let gemma2 = c.architecture == Architecture::Gemma2;
    let w_e = l.t("model.embed_tokens.weight", &[c.d_vocab, dm])?;
    let blocks = (0..c.n_layers)
        .map(|i| -> Result<Block> {
            let b = format!("model.layers.{i}");
            let q = l.linear(&format!("{b}.self_attn.q_proj"), dm, h * dh, c.qkv_bias)?;
            let k = l.linear(&format!("{b}.self_attn.k_proj"), dm, kv * dh, c.qkv_bias)?;
            let v = l.linear(&format!("{b}.self_attn.v_proj"), dm, kv * dh, c.qkv_bias)?;
            let bias = match (q.b, k.b, v.b) {
                (Some(qb), Some(kb), Some(vb)) => Some(Tensor::f_cat(&[qb, kb, vb], 0)?),
                _ => None,
            };
            let (ln2, ln1_post, ln2_post) = if c.attn_only {
                (Norm { kind: c.norm, w: None, b: None, eps: c.norm_eps }, None, None)
            } else if gemma2 {
                (
                    l.norm(&format!("{b}.pre_feedforward_layernorm"))?,
                    Some(l.norm(&format!("{b}.post_attention_layernorm"))?),
                    Some(l.norm(&format!("{b}.post_feedforward_layernorm"))?),
                )
            } else {
                (l.norm(&format!("{b}.post_attention_layernorm"))?, None, None)
            };
            Ok(Block {
                ln1: l.norm(&format!("{b}.input_layernorm"))?,
                attn: Attention {
                    qkv: Linear { w: Tensor::f_cat(&[q.w, k.w, v.w], 0)?, b: bias },
                    o: l.linear(&format!("{b}.self_attn.o_proj"), h * dh, dm, c.o_bias)?,
                },
                ln1_post,
                ln2,
                mlp: if c.attn_only {
                    None
                } else {
                    Some(Mlp {
                        w_in: l.linear(&format!("{b}.mlp.up_proj"), dm, dmlp, c.mlp_bias)?,
                        w_gate: Some(l.linear(&format!("{b}.mlp.gate_proj"), dm, dmlp, c.mlp_bias)?),
                        w_out: l.linear(&format!("{b}.mlp.down_proj"), dmlp, dm, c.mlp_bias)?,
                    })
                },
                ln2_post,
            })
        })
        .collect::<Result<_>>()?;
    let w_u = unembed(l, &w_e, "lm_head.weight")?;
    Ok(Params { w_e, w_pos: None, blocks, ln_final: l.norm("model.norm")?, w_u, b_u: None })
}
