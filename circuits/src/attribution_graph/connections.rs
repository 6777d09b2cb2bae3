//! Weight-based feature connections (the transcoder paper's): what a feature's decoder writes
//! into a later feature's encoder, and what the embeddings write into a feature's encoder.

use interp_core::{HookedTransformer, NormSite};
use tch::{Kind, Tensor};
use transcoders::SparseDictionary;

use crate::error::{Error, Result};

/// Encoder directions of `tc` as seen from the residual stream [d_model, d_sae]. A transcoder on
/// `ln2.hook_normalized` (before the norm's gain) sees the residual centred (LayerNorm) and divided
/// by the norm's scale, which depends on the input and is left out; one on the residual itself
/// sees it as is.
pub fn residual_encoder(model: &HookedTransformer, tc: &SparseDictionary) -> Result<Tensor> {
    let w = tc.w_enc().f_to_kind(Kind::Double)?;
    if tc.cfg().hook_name.ends_with("ln2.hook_normalized") {
        Ok(model.cfg.norm.centre(&w, 0)?)
    } else {
        Ok(w)
    }
}

/// Input-invariant connections from features `src_features` of transcoder `src` (layer
/// `src_layer`) to features `tgt_features` of `tgt` (a later layer `tgt_layer`).
pub struct FeatureConnections {
    /// [n_src, n_tgt]: `d_s . e_t` through the residual stream.
    pub residual: Tensor,
    /// [n_between, n_heads, n_src, n_tgt]: `d_s W_OV^h e_t` through each head of each attention
    /// layer `src_layer + 1 ..= tgt_layer` (single-head paths; `d_s` passed through that layer's
    /// `ln1` gain and centring).
    pub heads: Tensor,
}

/// The transcoder paper's input-invariant feature-to-feature connections. With activations and
/// frozen norm scales and attention weights they give the input-dependent attribution: feature s
/// at position p' to feature t at position p is `a_s / sigma_t(p) * (residual[s, t] [p = p'] +
/// sum_h A_h[p, p'] / sigma_1(p') heads[h, s, t])` (exact for adjacent layers).
pub fn feature_connections(
    model: &HookedTransformer,
    src_layer: usize,
    src: &SparseDictionary,
    src_features: &[i64],
    tgt_layer: usize,
    tgt: &SparseDictionary,
    tgt_features: &[i64],
) -> Result<FeatureConnections> {
    if src_layer >= tgt_layer || tgt_layer >= model.cfg.n_layers {
        return Err(Error::Input(format!("connections run from an earlier layer to a later one inside the model; got {src_layer} -> {tgt_layer}")));
    }
    let pick = |t: &Tensor, dim: i64, idx: &[i64]| -> Result<Tensor> { Ok(t.f_index_select(dim, &Tensor::f_from_slice(idx)?.f_to_device(t.device())?)?) };
    let d_src = pick(&src.w_dec().f_to_kind(Kind::Double)?, 0, src_features)?; // [n_src, d_model]
    let e_tgt = pick(&residual_encoder(model, tgt)?, 1, tgt_features)?; // [d_model, n_tgt]
    let residual = d_src.f_matmul(&e_tgt)?;
    let c = &model.cfg;
    let group = c.n_heads / c.n_kv_heads;
    let centred = c.norm.centre(&d_src, 1)?;
    let mut layers = Vec::new();
    for l in src_layer + 1..=tgt_layer {
        let mut d = centred.shallow_clone();
        if let Some(g) = model.norm_weights(NormSite::Ln1(l))?.0 {
            d = d.f_mul(&g.f_to_kind(Kind::Double)?)?;
        }
        let (w_v, w_o) = (model.w_v(l)?.f_to_kind(Kind::Double)?, model.w_o(l)?.f_to_kind(Kind::Double)?);
        let heads = (0..c.n_heads).map(|h| Ok(d.f_matmul(&w_v.f_get(h / group)?)?.f_matmul(&w_o.f_get(h)?)?.f_matmul(&e_tgt)?)).collect::<Result<Vec<_>>>()?;
        layers.push(Tensor::f_stack(&heads, 0)?);
    }
    Ok(FeatureConnections { residual, heads: Tensor::f_stack(&layers, 0)? })
}

/// De-embedding of features `features` of transcoder `tc`: `W_E e_t` [n, d_vocab], the tokens
/// whose embeddings drive each feature directly (norm scale left out).
pub fn de_embedding(model: &HookedTransformer, tc: &SparseDictionary, features: &[i64]) -> Result<Tensor> {
    let e = residual_encoder(model, tc)?.f_index_select(1, &Tensor::f_from_slice(features)?.f_to_device(tc.device())?)?;
    Ok(model.w_e().f_to_kind(Kind::Double)?.f_matmul(&e)?.f_tr()?)
}
