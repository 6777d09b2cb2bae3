//! TransformerLens-native models: a `HookedTransformerConfig` (as the JSON of `cfg.to_dict()`) and
//! TransformerLens's own state dict (`embed.W_E`, `blocks.L.attn.W_Q` [n_heads, d_model, d_head],
//! `blocks.L.mlp.W_in` [d_model, d_mlp], `unembed.W_U` [d_model, d_vocab_out], ...), the way toy
//! models, tracr-compiled models and InterpBench ship. Read into our [out, in] layout with q, k and
//! v fused; the settings toy models use are supported (`normalization_type` None / LN / LNPre /
//! RMS / RMSPre, `attn_only`, standard / shortformer / rotary positions, `act_fn` relu / gelu /
//! gelu_new / silu / solu / solu_ln, gated MLPs, grouped-query attention, `d_vocab_out`, causal or
//! bidirectional attention), and every
//! other setting that changes the function is refused by name.

use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};
use tch::{Device, Kind, Tensor};

use super::{Dim, Layers};
use crate::checkpoint::TensorSource;
use crate::config::{Activation, Family, ModelConfig, NormKind, Positional, RopeScaling, Rotary};
use crate::error::{Error, Result};
use crate::params::{Attention, Block, Linear, Mlp, Norm, Params};

/// A JSON object is a TransformerLens config when it has these keys (and no `model_type`).
pub(crate) fn is_config(map: &Map<String, Value>) -> bool {
    ["d_model", "n_layers", "d_head"].iter().all(|k| map.contains_key(*k))
}

/// The `HookedTransformerConfig` fields that decide the function; missing keys take
/// TransformerLens's defaults.
#[derive(Debug, Deserialize)]
pub(crate) struct TlConfig {
    d_model: Dim,
    d_head: Dim,
    n_layers: Layers,
    n_ctx: Dim,
    n_heads: Dim,
    d_mlp: Option<Dim>,
    d_vocab: Dim,
    /// -1 (TransformerLens's default) means `d_vocab`.
    d_vocab_out: Option<i64>,
    act_fn: Option<String>,
    /// Missing means "LN"; `null` means no normalization.
    #[serde(default = "layer_norm", deserialize_with = "nullable")]
    normalization_type: Option<String>,
    eps: Option<f64>,
    attn_only: Option<bool>,
    positional_embedding_type: Option<String>,
    rotary_dim: Option<Dim>,
    rotary_base: Option<f64>,
    rotary_adjacent_pairs: Option<bool>,
    use_attn_scale: Option<bool>,
    attn_scale: Option<f64>,
    scale_attn_by_inverse_layer_idx: Option<bool>,
    n_key_value_heads: Option<Dim>,
    gated_mlp: Option<bool>,
    parallel_attn_mlp: Option<bool>,
    final_rms: Option<bool>,
    tie_word_embeddings: Option<bool>,
    attention_dir: Option<String>,
    /// Every other key, checked against [`UNSUPPORTED`].
    #[serde(flatten)]
    rest: Map<String, Value>,
}

fn layer_norm() -> Option<String> {
    Some("LN".into())
}

fn nullable<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Option<String>, D::Error> {
    Option::<String>::deserialize(d)
}

/// Settings that change the function and are not supported, with the value that is: a config
/// that sets one otherwise is refused rather than run as something else.
const UNSUPPORTED: &[(&str, &str)] = &[
    ("use_local_attn", "false"),
    ("use_qk_norm", "false"),
    ("post_embedding_ln", "false"),
    ("use_normalization_before_and_after", "false"),
    ("num_experts", "null"),
    ("use_NTK_by_parts_rope", "false"),
    ("use_yarn_rope", "false"),
    ("rotary_scaling_factor", "1.0"),
];

pub(crate) fn config(c: TlConfig) -> Result<ModelConfig> {
    for (key, supported) in UNSUPPORTED {
        let ok: Value = serde_json::from_str(supported).expect("valid JSON literal");
        match c.rest.get(*key) {
            Some(v) if *v != ok && !(v.is_number() && v.as_f64() == ok.as_f64()) => {
                return Err(Error::Config(format!("TransformerLens config: `{key}: {v}` is not supported (only {supported})")));
            }
            _ => {}
        }
    }
    for key in ["attn_scores_soft_cap", "output_logits_soft_cap"] {
        if let Some(v) = c.rest.get(key).and_then(Value::as_f64).filter(|v| *v > 0.0) {
            return Err(Error::Config(format!("TransformerLens config: `{key}: {v}` is not supported")));
        }
    }
    if let Some(arch @ ("Olmo2ForCausalLM" | "Olmo3ForCausalLM")) = c.rest.get("original_architecture").and_then(Value::as_str) {
        return Err(Error::Config(format!("TransformerLens config: `original_architecture: {arch}` (norms after the sublayers) is not supported")));
    }
    let causal = match c.attention_dir.as_deref().unwrap_or("causal") {
        "causal" => true,
        "bidirectional" => false,
        other => return Err(Error::Config(format!("TransformerLens config: unknown `attention_dir` {other:?} (causal or bidirectional)"))),
    };
    let (d_model, d_head, n_heads, n_layers) = (c.d_model.0, c.d_head.0, c.n_heads.0, c.n_layers.0 as usize);
    let d_vocab = c.d_vocab.0;
    let d_vocab_out = match c.d_vocab_out {
        None | Some(-1) => d_vocab,
        Some(n) => n,
    };
    let norm = match c.normalization_type.as_deref() {
        Some("LN" | "LNPre") => NormKind::LayerNorm,
        Some("RMS" | "RMSPre") => NormKind::RmsNorm,
        None => NormKind::Identity,
        Some(other) => return Err(Error::Config(format!("TransformerLens config: unknown `normalization_type` {other:?} (LN, LNPre, RMS, RMSPre or null)"))),
    };
    if c.final_rms == Some(true) && norm != NormKind::RmsNorm {
        return Err(Error::Config("TransformerLens config: `final_rms` with LayerNorm blocks is not supported".into()));
    }
    let positional = match c.positional_embedding_type.as_deref().unwrap_or("standard") {
        "standard" => Positional::Learned,
        "shortformer" => Positional::Shortformer,
        "rotary" => {
            if c.rotary_adjacent_pairs == Some(true) {
                return Err(Error::Config("TransformerLens config: `rotary_adjacent_pairs: true` (GPT-J-style rotary) is not supported".into()));
            }
            Positional::Rotary(Rotary { dim: c.rotary_dim.map_or(d_head, |d| d.0), base: c.rotary_base.unwrap_or(10000.0), scaling: RopeScaling::None })
        }
        other => {
            return Err(Error::Config(format!("TransformerLens config: `positional_embedding_type: {other}` is not supported (standard, shortformer, rotary)")))
        }
    };
    // TransformerLens divides scores by `attn_scale` (default sqrt(d_head)); we multiply.
    let attn_scale = match (c.use_attn_scale.unwrap_or(true), c.attn_scale) {
        (false, _) => 1.0,
        (true, Some(s)) if s != -1.0 => 1.0 / s,
        (true, _) => (d_head as f64).powf(-0.5),
    };
    Ok(ModelConfig {
        model_type: "transformer_lens".into(),
        family: Family::TransformerLens,
        n_layers,
        d_model,
        n_heads,
        n_kv_heads: c.n_key_value_heads.map_or(n_heads, |d| d.0),
        d_head,
        d_mlp: c.d_mlp.map_or(4 * d_model, |d| d.0),
        d_vocab,
        d_vocab_out,
        n_ctx: c.n_ctx.0,
        norm,
        norm_eps: c.eps.unwrap_or(1e-5),
        act: Activation::parse(c.act_fn.as_deref().unwrap_or("relu"))?,
        gated_mlp: c.gated_mlp.unwrap_or(false),
        positional,
        parallel_attn_mlp: c.parallel_attn_mlp.unwrap_or(false),
        attn_scale,
        scale_attn_by_inverse_layer_idx: c.scale_attn_by_inverse_layer_idx.unwrap_or(false),
        tie_embeddings: c.tie_word_embeddings.unwrap_or(false),
        qkv_bias: true,
        o_bias: true,
        mlp_bias: true,
        bos_token_id: None,
        attn_only: c.attn_only.unwrap_or(false),
        causal,
        ..ModelConfig::plain(n_layers)
    })
}

/// Buffers TransformerLens keeps in its state dict that are not weights.
const BUFFERS: &[&str] = &[".IGNORE", ".mask", ".rotary_sin", ".rotary_cos"];

/// Reads TransformerLens-named tensors, remembering which it used.
struct Reader<'a> {
    src: &'a dyn TensorSource,
    cfg: &'a ModelConfig,
    /// Norms have gains (LN, RMS) or not (LNPre, RMSPre).
    norm_gain: bool,
    kind: Kind,
    device: Device,
    used: std::cell::RefCell<Vec<String>>,
}

impl Reader<'_> {
    fn t(&self, name: &str, shape: &[i64]) -> Result<Tensor> {
        self.used.borrow_mut().push(name.to_string());
        self.src.tensor(name, shape, self.kind, self.device)
    }

    /// A TransformerLens [d_in, d_out] matrix as our [d_out, d_in].
    fn matrix(&self, name: &str, d_in: i64, d_out: i64) -> Result<Tensor> {
        Ok(self.t(name, &[d_in, d_out])?.f_tr()?.f_contiguous()?)
    }

    /// A norm over `d` units at `prefix` (`blocks.0.ln1`): gain `w` and, for LayerNorm, bias `b`,
    /// kept in f32 (f64 for an f64 model) like every norm.
    fn norm(&self, prefix: &str, d: i64) -> Result<Norm> {
        let kind = self.cfg.norm;
        if kind == NormKind::Identity || !self.norm_gain {
            return Ok(Norm { kind, w: None, b: None, eps: self.cfg.norm_eps });
        }
        let acc = if self.kind == Kind::Double { Kind::Double } else { Kind::Float };
        let read = |leaf: &str| {
            let name = format!("{prefix}.{leaf}");
            self.used.borrow_mut().push(name.clone());
            self.src.tensor(&name, &[d], acc, self.device)
        };
        let b = if kind == NormKind::LayerNorm { Some(read("b")?) } else { None };
        Ok(Norm { kind, w: Some(read("w")?), b, eps: self.cfg.norm_eps })
    }

    fn block(&self, l: usize) -> Result<Block> {
        let c = self.cfg;
        let (dm, h, kv, dh) = (c.d_model, c.n_heads, c.n_kv_heads, c.d_head);
        let p = format!("blocks.{l}");
        // Grouped-query attention keeps its k and v as `_W_K`, `_W_V` [n_kv_heads, d_model, d_head].
        let kv_prefix = if kv != h { "_" } else { "" };
        let heads = |name: &str, n: i64| -> Result<(Tensor, Tensor)> {
            let w = self.t(&format!("{p}.attn.{name}"), &[n, dm, dh])?.f_permute([0, 2, 1])?.f_reshape([n * dh, dm])?;
            let b_name = format!("{p}.attn.{}", name.replacen("W_", "b_", 1));
            Ok((w, self.t(&b_name, &[n, dh])?.f_reshape([n * dh])?))
        };
        let (wq, bq) = heads("W_Q", h)?;
        let (wk, bk) = heads(&format!("{kv_prefix}W_K"), kv)?;
        let (wv, bv) = heads(&format!("{kv_prefix}W_V"), kv)?;
        let qkv = Linear { w: Tensor::f_cat(&[wq, wk, wv], 0)?, b: Some(Tensor::f_cat(&[bq, bk, bv], 0)?) };
        let o = Linear {
            w: self.t(&format!("{p}.attn.W_O"), &[h, dh, dm])?.f_reshape([h * dh, dm])?.f_tr()?.f_contiguous()?,
            b: Some(self.t(&format!("{p}.attn.b_O"), &[dm])?),
        };
        let mlp = if c.attn_only {
            None
        } else {
            let linear = |w: &str, b: &str, d_in: i64, d_out: i64| -> Result<Linear> {
                Ok(Linear { w: self.matrix(&format!("{p}.mlp.{w}"), d_in, d_out)?, b: Some(self.t(&format!("{p}.mlp.{b}"), &[d_out])?) })
            };
            let mut w_in = linear("W_in", "b_in", dm, c.d_mlp)?;
            if c.gated_mlp {
                // TransformerLens's gated MLP adds b_in after the product, act(x W_gate) * (x W_in) + b_in;
                // ours has no place for that but a zero b_in (as in every converted model) is the same.
                if let Some(b) = w_in.b.take() {
                    if b.f_abs()?.f_max()?.f_double_value(&[])? != 0.0 {
                        return Err(Error::Config(format!(
                            "`{p}.mlp.b_in` is not zero: TransformerLens's gated MLP adds it after the gate product, which is not supported"
                        )));
                    }
                }
            }
            Some(Mlp {
                ln2: self.norm(&format!("{p}.ln2"), dm)?,
                w_in,
                // TransformerLens's gated MLP has no bias on the gate.
                w_gate: c.gated_mlp.then(|| Ok::<_, Error>(Linear { w: self.matrix(&format!("{p}.mlp.W_gate"), dm, c.d_mlp)?, b: None })).transpose()?,
                ln: (c.act == Activation::SoluLn).then(|| self.norm(&format!("{p}.mlp.ln"), c.d_mlp)).transpose()?,
                w_out: linear("W_out", "b_out", c.d_mlp, dm)?,
                ln2_post: None,
                moe: None,
            })
        };
        Ok(Block { ln1: self.norm(&format!("{p}.ln1"), dm)?, attn: Attention { qkv, o, q_norm: None, k_norm: None }, ln1_post: None, mlp })
    }
}

/// Our parameters from a TransformerLens state dict. Every tensor of the checkpoint must be used
/// (as TransformerLens's `load_state_dict` is strict): a weight the config has no place for means
/// the config contradicts the weights.
pub(crate) fn load_params(cfg: &ModelConfig, src: &dyn TensorSource, kind: Kind, device: Device) -> Result<Params> {
    let tl: TlConfig = super::parse(&cfg.hf_json)?;
    let norm_gain = matches!(tl.normalization_type.as_deref(), Some("LN" | "RMS"));
    if cfg.gated_mlp && cfg.act == Activation::SoluLn {
        return Err(Error::Config("TransformerLens config: a gated solu_ln MLP is not supported".into()));
    }
    let r = Reader { src, cfg, norm_gain, kind, device, used: Default::default() };
    let (dm, dvo) = (cfg.d_model, cfg.d_vocab_out);
    let w_e = r.t("embed.W_E", &[cfg.d_vocab, dm])?;
    let w_pos = match cfg.positional {
        Positional::Learned | Positional::Shortformer => Some(r.t("pos_embed.W_pos", &[cfg.n_ctx, dm])?),
        Positional::Rotary(_) => None,
    };
    let blocks = (0..cfg.n_layers).map(|l| r.block(l)).collect::<Result<_>>()?;
    let ln_final = r.norm("ln_final", dm)?;
    // TransformerLens always stores W_U; a file without it is tied only if the config says so.
    let w_u = match (src.contains("unembed.W_U"), cfg.tie_embeddings) {
        (false, true) => w_e.shallow_clone(),
        _ => r.matrix("unembed.W_U", dm, dvo)?,
    };
    let b_u = Some(r.t("unembed.b_U", &[dvo])?);
    if let Some(names) = src.names() {
        let used = r.used.borrow();
        let mut unused: Vec<&String> = names.iter().filter(|n| !used.contains(n) && !BUFFERS.iter().any(|b| n.ends_with(b))).collect();
        unused.sort();
        if let Some(first) = unused.first() {
            return Err(Error::Config(format!(
                "the config contradicts the weights: the checkpoint has {} tensor(s) this config has no place for, first `{first}` (normalization_type {:?}, attn_only {}, act_fn {:?}, positional {:?})",
                unused.len(),
                tl.normalization_type,
                cfg.attn_only,
                tl.act_fn,
                tl.positional_embedding_type
            )));
        }
    }
    Ok(Params { w_e, w_pos, blocks, ln_final, w_u, b_u })
}
