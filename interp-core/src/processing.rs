//! TransformerLens' weight processing: folds and centrings that leave log-probs unchanged but
//! make the weights easier to read. All off by default.

use tch::{Kind, Tensor};

use crate::config::{NormKind, Positional};
use crate::error::{Error, Result};
use crate::model::HookedTransformer;
use crate::params::{Linear, Norm};

/// Which processing steps `HookedTransformer::process_weights` applies.
#[derive(Clone, Copy, Debug, Default)]
pub struct WeightProcessing {
    /// Fold each pre-norm's gain (and bias) into the weights that read from it; the norm keeps
    /// only its centring and scaling.
    pub fold_ln: bool,
    /// Subtract the d_model-mean from every matrix and bias writing to the residual stream
    /// (LayerNorm models only: it relies on the next norm centring).
    pub center_writing_weights: bool,
    /// Subtract the vocabulary-mean of W_U (shifts logits, not log-probs).
    pub center_unembed: bool,
    /// Move the value biases into b_O (each pattern row sums to one).
    pub fold_value_biases: bool,
}

impl WeightProcessing {
    /// TransformerLens' `from_pretrained` defaults: everything on.
    pub fn all() -> Self {
        WeightProcessing { fold_ln: true, center_writing_weights: true, center_unembed: true, fold_value_biases: true }
    }
}

/// Folds `norm`'s gain and bias into `lin` (which reads the norm's output) and clears them.
fn fold_norm_into(norm: &Norm, lins: &mut [&mut Linear]) -> Result<()> {
    for lin in lins.iter_mut() {
        let kind = lin.w.kind();
        let w32 = lin.w.f_to_kind(Kind::Float)?; // [out, in]
        let mut b32 = match &lin.b {
            Some(b) => b.f_to_kind(Kind::Float)?,
            None => Tensor::f_zeros([w32.size()[0]], (Kind::Float, w32.device()))?,
        };
        if let Some(beta) = &norm.b {
            b32 = b32.f_add(&w32.f_mv(beta)?)?;
            lin.b = Some(b32.f_to_kind(kind)?);
        }
        if let Some(g) = &norm.w {
            lin.w = w32.f_mul(&g.f_unsqueeze(0)?)?.f_to_kind(kind)?;
        }
    }
    Ok(())
}

/// Subtracts the mean over d_model (dim `dim` of `t`).
fn center(t: &Tensor, dim: i64) -> Result<Tensor> {
    let t32 = t.f_to_kind(Kind::Float)?;
    Ok(t32.f_sub(&t32.f_mean_dim(dim, true, Kind::Float)?)?.f_to_kind(t.kind())?)
}

impl HookedTransformer {
    /// Applies the chosen processing in place.
    pub fn process_weights(&mut self, opts: WeightProcessing) -> Result<()> {
        let _guard = tch::no_grad_guard();
        let cfg = &self.cfg;
        if opts.center_writing_weights && (cfg.norm != NormKind::LayerNorm || cfg.post_norms) {
            return Err(Error::Input("center_writing_weights needs LayerNorm before every read of the residual stream".into()));
        }
        if opts.fold_ln && cfg.positional == Positional::Shortformer {
            return Err(Error::Input("fold_ln would change a shortformer model: its position embeddings join q and k after ln1's gain".into()));
        }
        if opts.center_unembed && cfg.final_softcap.is_some() {
            return Err(Error::Input("center_unembed would change log-probs under a final logit soft cap".into()));
        }
        let p = &mut self.params;
        if opts.fold_value_biases {
            let (h, kv, dh) = (cfg.n_heads, cfg.n_kv_heads, cfg.d_head);
            for blk in &mut p.blocks {
                let Some(qkv_b) = &blk.attn.qkv.b else { continue };
                let b_v = qkv_b.f_narrow(0, (h + kv) * dh, kv * dh)?.f_view([kv, dh])?.f_repeat_interleave_self_int(h / kv, 0, None)?;
                let moved = blk.attn.o.w.f_mv(&b_v.f_reshape([h * dh])?)?;
                blk.attn.o.b = Some(match &blk.attn.o.b {
                    Some(b) => b.f_add(&moved)?,
                    None => moved,
                });
                let new_b = qkv_b.copy();
                let _ = new_b.f_narrow(0, (h + kv) * dh, kv * dh)?.f_zero_()?;
                blk.attn.qkv.b = Some(new_b);
            }
        }
        if opts.fold_ln {
            for blk in &mut p.blocks {
                fold_norm_into(&blk.ln1, &mut [&mut blk.attn.qkv])?;
                if let Some(mlp) = &mut blk.mlp {
                    // Everything that reads ln2's output: the (stacked) expert projections, and a
                    // mixture of experts' router and shared expert.
                    let mut readers: Vec<&mut Linear> = vec![&mut mlp.w_in];
                    readers.extend(mlp.w_gate.as_mut());
                    if let Some(moe) = &mut mlp.moe {
                        readers.push(&mut moe.router);
                        if let Some(s) = &mut moe.shared {
                            readers.extend([&mut s.w_in, &mut s.w_gate, &mut s.gate]);
                        }
                    }
                    fold_norm_into(&mlp.ln2, &mut readers)?;
                    (mlp.ln2.w, mlp.ln2.b) = (None, None);
                    // solu_ln's LayerNorm over the hidden units folds into W_out.
                    if let Some(ln) = &mut mlp.ln {
                        fold_norm_into(ln, &mut [&mut mlp.w_out])?;
                        (ln.w, ln.b) = (None, None);
                    }
                }
                (blk.ln1.w, blk.ln1.b) = (None, None);
            }
            let mut unembed = Linear { w: p.w_u.shallow_clone(), b: p.b_u.take() };
            fold_norm_into(&p.ln_final, &mut [&mut unembed])?;
            (p.w_u, p.b_u) = (unembed.w, unembed.b);
            p.ln_final.w = None;
            p.ln_final.b = None;
        }
        if opts.center_writing_weights {
            p.w_e = center(&p.w_e, 1)?;
            // Shortformer position embeddings never enter the residual stream.
            if let (Some(w_pos), false) = (&p.w_pos, cfg.positional == Positional::Shortformer) {
                p.w_pos = Some(center(w_pos, 1)?);
            }
            for blk in &mut p.blocks {
                let mlp_writers = blk.mlp.as_mut().into_iter().flat_map(|m| {
                    let shared = m.moe.as_mut().and_then(|moe| moe.shared.as_mut()).map(|s| &mut s.w_out);
                    std::iter::once(&mut m.w_out).chain(shared)
                });
                for lin in std::iter::once(&mut blk.attn.o).chain(mlp_writers) {
                    lin.w = center(&lin.w, 0)?;
                    if let Some(b) = &lin.b {
                        lin.b = Some(center(b, 0)?);
                    }
                }
            }
        }
        if opts.center_unembed {
            p.w_u = center(&p.w_u, 0)?;
            if let Some(b) = &p.b_u {
                p.b_u = Some(center(b, 0)?);
            }
        }
        Ok(())
    }
}
