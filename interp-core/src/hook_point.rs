//! `HookPoint`: a typed hook name that prints and parses TransformerLens names.

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};

/// A site inside block `L` (`blocks.L.<site>`), declared in execution order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BlockSite {
    /// `blocks.L.hook_resid_pre` [batch, pos, d_model]: the residual stream entering the block.
    ResidPre,
    /// `blocks.L.hook_q_input` [batch, pos, n_heads, d_model]: per-head copies of the query input (opt-in).
    QInput,
    /// `blocks.L.hook_k_input` [batch, pos, n_kv_heads, d_model]: per-head key input (opt-in).
    KInput,
    /// `blocks.L.hook_v_input` [batch, pos, n_kv_heads, d_model]: per-head value input (opt-in).
    VInput,
    /// `blocks.L.ln1.hook_scale` [batch, pos, 1]: the norm's divisor before attention.
    Ln1Scale,
    /// `blocks.L.ln1.hook_normalized` [batch, pos, d_model]: the normalised input, before the gain.
    Ln1Normalized,
    /// `blocks.L.attn.hook_q` [batch, pos, n_heads, d_head]: queries (before rotary).
    Q,
    /// `blocks.L.attn.hook_k` [batch, pos, n_kv_heads, d_head]: keys (before rotary).
    K,
    /// `blocks.L.attn.hook_v` [batch, pos, n_kv_heads, d_head]: values.
    V,
    /// `blocks.L.attn.q_norm.hook_scale` [batch, pos, n_heads, 1]: the per-head q norm's divisor (Qwen3).
    QNormScale,
    /// `blocks.L.attn.q_norm.hook_normalized` [batch, pos, n_heads, d_head]: q normalised, before the gain (Qwen3).
    QNormNormalized,
    /// `blocks.L.attn.k_norm.hook_scale` [batch, pos, n_kv_heads, 1]: the per-head k norm's divisor (Qwen3).
    KNormScale,
    /// `blocks.L.attn.k_norm.hook_normalized` [batch, pos, n_kv_heads, d_head]: k normalised, before the gain (Qwen3).
    KNormNormalized,
    /// `blocks.L.attn.hook_rot_q` [batch, pos, n_heads, d_head]: queries after rotary (rotary models only).
    RotQ,
    /// `blocks.L.attn.hook_rot_k` [batch, pos, n_kv_heads, d_head]: keys after rotary (rotary models only).
    RotK,
    /// `blocks.L.attn.hook_attn_scores` [batch, n_heads, query_pos, key_pos]: scaled, masked scores.
    AttnScores,
    /// `blocks.L.attn.hook_pattern` [batch, n_heads, query_pos, key_pos]: attention probabilities.
    Pattern,
    /// `blocks.L.attn.hook_z` [batch, pos, n_heads, d_head]: each head's mix of values.
    Z,
    /// `blocks.L.attn.hook_result` [batch, pos, n_heads, d_model]: each head's output (opt-in).
    Result,
    /// `blocks.L.hook_attn_out` [batch, pos, d_model]: the attention sublayer's output.
    AttnOut,
    /// `blocks.L.hook_resid_mid` [batch, pos, d_model]: between attention and MLP (not in parallel blocks).
    ResidMid,
    /// `blocks.L.hook_mlp_in` [batch, pos, d_model]: the MLP sublayer's input, before ln2.
    MlpIn,
    /// `blocks.L.ln2.hook_scale` [batch, pos, 1]: the norm's divisor before the MLP.
    Ln2Scale,
    /// `blocks.L.ln2.hook_normalized` [batch, pos, d_model]: the MLP's normalised input, before the gain.
    Ln2Normalized,
    /// `blocks.L.mlp.hook_router_logits` [batch, pos, n_experts]: a mixture of experts' router
    /// logits (its softmax gives the routing probabilities).
    RouterLogits,
    /// `blocks.L.mlp.hook_expert_indices` [batch, pos, top_k] (int64): the experts each token is
    /// routed to, most probable first. Setting it forces a routing; the weights are then read
    /// from the router's probabilities at the new experts.
    ExpertIndices,
    /// `blocks.L.mlp.hook_expert_weights` [batch, pos, top_k]: the weight of each chosen expert's
    /// output (renormalised where the model does). TransformerLens's MoE fires this name with the
    /// probabilities of all experts instead.
    ExpertWeights,
    /// `blocks.L.mlp.hook_pre` [batch, pos, d_mlp]: pre-activation (the gate's, in gated MLPs).
    MlpPre,
    /// `blocks.L.mlp.hook_pre_linear` [batch, pos, d_mlp]: the ungated branch of a gated MLP.
    MlpPreLinear,
    /// `blocks.L.mlp.hook_mid` [batch, pos, d_mlp]: the SoLU output before the MLP's own
    /// LayerNorm (`solu_ln` models only).
    MlpMid,
    /// `blocks.L.mlp.ln.hook_scale` [batch, pos, 1]: that LayerNorm's divisor (`solu_ln` only).
    MlpLnScale,
    /// `blocks.L.mlp.ln.hook_normalized` [batch, pos, d_mlp]: its output before the gain (`solu_ln` only).
    MlpLnNormalized,
    /// `blocks.L.mlp.hook_post` [batch, pos, d_mlp]: hidden activations.
    MlpPost,
    /// `blocks.L.mlp.hook_expert_out` [batch, pos, n_experts, d_model]: each expert's weighted
    /// output, zero where a token was not routed to it (opt-in). Their sum (plus any shared
    /// expert) is the MLP's output: zeroing one expert here ablates it.
    ExpertOut,
    /// `blocks.L.mlp.hook_shared_expert_out` [batch, pos, d_model]: Qwen2-MoE's shared expert's
    /// output, after its sigmoid gate.
    SharedExpertOut,
    /// `blocks.L.hook_mlp_out` [batch, pos, d_model]: the MLP sublayer's output.
    MlpOut,
    /// `blocks.L.hook_resid_post` [batch, pos, d_model]: the residual stream leaving the block.
    ResidPost,
}

impl BlockSite {
    /// Every site, in execution order.
    pub const ALL: [BlockSite; 37] = [
        BlockSite::ResidPre,
        BlockSite::QInput,
        BlockSite::KInput,
        BlockSite::VInput,
        BlockSite::Ln1Scale,
        BlockSite::Ln1Normalized,
        BlockSite::Q,
        BlockSite::K,
        BlockSite::V,
        BlockSite::QNormScale,
        BlockSite::QNormNormalized,
        BlockSite::KNormScale,
        BlockSite::KNormNormalized,
        BlockSite::RotQ,
        BlockSite::RotK,
        BlockSite::AttnScores,
        BlockSite::Pattern,
        BlockSite::Z,
        BlockSite::Result,
        BlockSite::AttnOut,
        BlockSite::ResidMid,
        BlockSite::MlpIn,
        BlockSite::Ln2Scale,
        BlockSite::Ln2Normalized,
        BlockSite::RouterLogits,
        BlockSite::ExpertIndices,
        BlockSite::ExpertWeights,
        BlockSite::MlpPre,
        BlockSite::MlpPreLinear,
        BlockSite::MlpMid,
        BlockSite::MlpLnScale,
        BlockSite::MlpLnNormalized,
        BlockSite::MlpPost,
        BlockSite::ExpertOut,
        BlockSite::SharedExpertOut,
        BlockSite::MlpOut,
        BlockSite::ResidPost,
    ];

    /// The TransformerLens name after `blocks.L.`.
    pub fn suffix(self) -> &'static str {
        use BlockSite::*;
        match self {
            ResidPre => "hook_resid_pre",
            QInput => "hook_q_input",
            KInput => "hook_k_input",
            VInput => "hook_v_input",
            Ln1Scale => "ln1.hook_scale",
            Ln1Normalized => "ln1.hook_normalized",
            Q => "attn.hook_q",
            K => "attn.hook_k",
            V => "attn.hook_v",
            QNormScale => "attn.q_norm.hook_scale",
            QNormNormalized => "attn.q_norm.hook_normalized",
            KNormScale => "attn.k_norm.hook_scale",
            KNormNormalized => "attn.k_norm.hook_normalized",
            RotQ => "attn.hook_rot_q",
            RotK => "attn.hook_rot_k",
            AttnScores => "attn.hook_attn_scores",
            Pattern => "attn.hook_pattern",
            Z => "attn.hook_z",
            Result => "attn.hook_result",
            AttnOut => "hook_attn_out",
            ResidMid => "hook_resid_mid",
            MlpIn => "hook_mlp_in",
            Ln2Scale => "ln2.hook_scale",
            Ln2Normalized => "ln2.hook_normalized",
            RouterLogits => "mlp.hook_router_logits",
            ExpertIndices => "mlp.hook_expert_indices",
            ExpertWeights => "mlp.hook_expert_weights",
            MlpPre => "mlp.hook_pre",
            MlpPreLinear => "mlp.hook_pre_linear",
            MlpMid => "mlp.hook_mid",
            MlpLnScale => "mlp.ln.hook_scale",
            MlpLnNormalized => "mlp.ln.hook_normalized",
            MlpPost => "mlp.hook_post",
            ExpertOut => "mlp.hook_expert_out",
            SharedExpertOut => "mlp.hook_shared_expert_out",
            MlpOut => "hook_mlp_out",
            ResidPost => "hook_resid_post",
        }
    }

    /// The site a TransformerLens short name means (`utils.get_act_name`): the name without
    /// `hook_` (`pattern`, `resid_pre`, `mlp_out`), TL's aliases `attn` (pattern), `pre`, `post`,
    /// `pre_linear`, or the full suffix (`ln1.hook_scale`). `scale` and `normalized` name two sites
    /// each: say `ln1.scale` or `ln2.scale`.
    pub fn from_short_name(name: &str) -> Option<Self> {
        let name = name.strip_prefix("hook_").unwrap_or(name);
        let alias = match name {
            "attn" => Some(BlockSite::Pattern),
            "pre" => Some(BlockSite::MlpPre),
            "pre_linear" => Some(BlockSite::MlpPreLinear),
            "post" => Some(BlockSite::MlpPost),
            _ => None,
        };
        alias.or_else(|| {
            let mut found = BlockSite::ALL.into_iter().filter(|s| {
                let suffix = s.suffix();
                let short = suffix.rsplit('.').next().unwrap_or(suffix).trim_start_matches("hook_");
                suffix == name || suffix.replace("hook_", "") == name || short == name
            });
            match (found.next(), found.next()) {
                (Some(site), None) => Some(site),
                _ => None,
            }
        })
    }

    /// Costly points computed only when asked for by name: per-head results, per-head q/k/v
    /// inputs and per-expert outputs.
    pub fn is_opt_in(self) -> bool {
        matches!(self, BlockSite::Result | BlockSite::QInput | BlockSite::KInput | BlockSite::VInput | BlockSite::ExpertOut)
    }
}

/// A hook point. Orders as the forward pass visits them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HookPoint {
    /// `hook_embed` [batch, pos, d_model]: token embeddings (scaled, for Gemma).
    Embed,
    /// `hook_pos_embed` [batch, pos, d_model]: learned position embeddings.
    PosEmbed,
    /// `blocks.L.<site>`: a site of block `L`.
    Block(usize, BlockSite),
    /// `ln_final.hook_scale` [batch, pos, 1]: the final norm's divisor.
    LnFinalScale,
    /// `ln_final.hook_normalized` [batch, pos, d_model]: the final residual normalised, before the gain.
    LnFinalNormalized,
    /// `unembed.hook_in` [batch, pos, d_model]: what the unembedding reads.
    UnembedIn,
    /// `unembed.hook_out` [batch, pos, d_vocab_out]: the logits.
    UnembedOut,
}

impl HookPoint {
    /// The point `site` of block `layer` (`HookPoint::block(3, BlockSite::Z)` is
    /// `blocks.3.attn.hook_z`).
    pub fn block(layer: usize, site: BlockSite) -> Self {
        HookPoint::Block(layer, site)
    }

    /// The block index, for points inside a block.
    pub fn layer(self) -> Option<usize> {
        match self {
            HookPoint::Block(l, _) => Some(l),
            _ => None,
        }
    }

    /// Whether it is computed only when asked for by name (see [`BlockSite::is_opt_in`]).
    pub fn is_opt_in(self) -> bool {
        matches!(self, HookPoint::Block(_, s) if s.is_opt_in())
    }

    /// The last dotted component (`hook_result` for `blocks.0.attn.hook_result`).
    pub fn leaf(self) -> &'static str {
        let name = match self {
            HookPoint::Block(_, s) => s.suffix(),
            HookPoint::Embed => "hook_embed",
            HookPoint::PosEmbed => "hook_pos_embed",
            HookPoint::LnFinalScale => "hook_scale",
            HookPoint::LnFinalNormalized => "hook_normalized",
            HookPoint::UnembedIn => "hook_in",
            HookPoint::UnembedOut => "hook_out",
        };
        name.rsplit('.').next().unwrap_or(name)
    }
}

impl fmt::Display for HookPoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HookPoint::Embed => f.write_str("hook_embed"),
            HookPoint::PosEmbed => f.write_str("hook_pos_embed"),
            HookPoint::Block(l, s) => write!(f, "blocks.{l}.{}", s.suffix()),
            HookPoint::LnFinalScale => f.write_str("ln_final.hook_scale"),
            HookPoint::LnFinalNormalized => f.write_str("ln_final.hook_normalized"),
            HookPoint::UnembedIn => f.write_str("unembed.hook_in"),
            HookPoint::UnembedOut => f.write_str("unembed.hook_out"),
        }
    }
}

impl FromStr for HookPoint {
    type Err = Error;

    /// Parses a TransformerLens name. Says nothing about whether a given model has the point:
    /// `HookedTransformer::hook_point` checks that.
    fn from_str(name: &str) -> Result<Self> {
        let top = [HookPoint::Embed, HookPoint::PosEmbed, HookPoint::LnFinalScale, HookPoint::LnFinalNormalized, HookPoint::UnembedIn, HookPoint::UnembedOut];
        if let Some(p) = top.into_iter().find(|p| p.to_string() == name) {
            return Ok(p);
        }
        let unknown = || Error::UnknownHook { name: name.to_string(), suggestion: None };
        let rest = name.strip_prefix("blocks.").ok_or_else(unknown)?;
        let (layer, suffix) = rest.split_once('.').ok_or_else(unknown)?;
        let layer: usize = layer.parse().map_err(|_| unknown())?;
        let site = BlockSite::ALL.into_iter().find(|s| s.suffix() == suffix).ok_or_else(unknown)?;
        Ok(HookPoint::Block(layer, site))
    }
}

/// Anything that names hook points: a TransformerLens name or glob pattern (`&str`, `String`), or
/// a typed [`HookPoint`]. Every API that takes a hook takes this.
pub trait HookName {
    /// The TransformerLens name (or glob pattern).
    fn hook_name(&self) -> String;

    /// The one point it names (an error for a glob or an unknown name).
    fn hook_point(&self) -> Result<HookPoint> {
        self.hook_name().parse()
    }
}

impl<T: AsRef<str> + ?Sized> HookName for T {
    fn hook_name(&self) -> String {
        self.as_ref().to_string()
    }
}

impl HookName for HookPoint {
    fn hook_name(&self) -> String {
        self.to_string()
    }
    fn hook_point(&self) -> Result<HookPoint> {
        Ok(*self)
    }
}

/// A site alone names that site in every block: the glob `blocks.*.<suffix>`
/// (`CacheSpec::names([BlockSite::Pattern])` caches every layer's attention pattern).
impl HookName for BlockSite {
    fn hook_name(&self) -> String {
        format!("blocks.*.{}", self.suffix())
    }
}

impl HookName for &HookPoint {
    fn hook_name(&self) -> String {
        self.to_string()
    }
    fn hook_point(&self) -> Result<HookPoint> {
        Ok(**self)
    }
}

/// Glob match where `*` stands for any run of characters (dots included).
pub(crate) fn glob_match(pattern: &str, name: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == name;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !name.starts_with(first) || name.len() < first.len() + last.len() || !name.ends_with(last) {
        return false;
    }
    let mut rest = &name[first.len()..name.len() - last.len()];
    for part in &parts[1..parts.len() - 1] {
        match rest.find(part) {
            Some(i) => rest = &rest[i + part.len()..],
            None => return false,
        }
    }
    true
}

/// Levenshtein distance, for "did you mean" suggestions.
pub(crate) fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for s in BlockSite::ALL {
            let p = HookPoint::Block(3, s);
            assert_eq!(p.to_string().parse::<HookPoint>().ok(), Some(p));
        }
        assert_eq!("unembed.hook_in".parse::<HookPoint>().ok(), Some(HookPoint::UnembedIn));
        assert!("blocks.x.hook_resid_pre".parse::<HookPoint>().is_err());
        assert!("blocks.0.hook_resid_pree".parse::<HookPoint>().is_err());
    }

    #[test]
    fn short_names_as_in_transformer_lens() {
        let site = |n: &str| BlockSite::from_short_name(n);
        assert_eq!(site("pattern"), Some(BlockSite::Pattern));
        assert_eq!(site("attn"), Some(BlockSite::Pattern));
        assert_eq!(site("resid_pre"), Some(BlockSite::ResidPre));
        assert_eq!(site("hook_z"), Some(BlockSite::Z));
        assert_eq!(site("post"), Some(BlockSite::MlpPost));
        assert_eq!(site("ln2.scale"), Some(BlockSite::Ln2Scale));
        assert_eq!(site("ln1.hook_normalized"), Some(BlockSite::Ln1Normalized));
        assert_eq!(site("scale"), None, "ambiguous: ln1 or ln2");
        assert_eq!(site("nothing"), None);
        assert_eq!(HookPoint::block(3, BlockSite::Z).hook_name(), "blocks.3.attn.hook_z");
        // A site alone is that site in every block.
        assert_eq!(BlockSite::Pattern.hook_name(), "blocks.*.attn.hook_pattern");
        assert!(glob_match(&BlockSite::ResidPre.hook_name(), "blocks.11.hook_resid_pre"));
    }

    #[test]
    fn order_is_execution_order() {
        assert!(HookPoint::Embed < HookPoint::Block(0, BlockSite::ResidPre));
        assert!(HookPoint::Block(0, BlockSite::ResidPost) < HookPoint::Block(1, BlockSite::ResidPre));
        assert!(HookPoint::Block(9, BlockSite::ResidPost) < HookPoint::LnFinalScale);
    }

    #[test]
    fn globs() {
        assert!(glob_match("blocks.*.attn.hook_pattern", "blocks.11.attn.hook_pattern"));
        assert!(!glob_match("blocks.*.attn.hook_pattern", "blocks.1.attn.hook_z"));
        assert!(glob_match("*resid*", "blocks.0.hook_resid_pre"));
        assert!(glob_match("*", "hook_embed"));
        assert!(!glob_match("a*a", "a"));
        assert_eq!(edit_distance("hook_resid_pree", "hook_resid_pre"), 1);
    }
}
