//! `HookPoint`: a typed hook name that prints and parses TransformerLens names.

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};

/// A site inside block `L` (`blocks.L.<site>`), declared in execution order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BlockSite {
    ResidPre,
    QInput,
    KInput,
    VInput,
    Ln1Scale,
    Ln1Normalized,
    Q,
    K,
    V,
    RotQ,
    RotK,
    AttnScores,
    Pattern,
    Z,
    Result,
    AttnOut,
    ResidMid,
    MlpIn,
    Ln2Scale,
    Ln2Normalized,
    MlpPre,
    MlpPreLinear,
    MlpPost,
    MlpOut,
    ResidPost,
}

impl BlockSite {
    pub const ALL: [BlockSite; 25] = [
        BlockSite::ResidPre,
        BlockSite::QInput,
        BlockSite::KInput,
        BlockSite::VInput,
        BlockSite::Ln1Scale,
        BlockSite::Ln1Normalized,
        BlockSite::Q,
        BlockSite::K,
        BlockSite::V,
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
        BlockSite::MlpPre,
        BlockSite::MlpPreLinear,
        BlockSite::MlpPost,
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
            MlpPre => "mlp.hook_pre",
            MlpPreLinear => "mlp.hook_pre_linear",
            MlpPost => "mlp.hook_post",
            MlpOut => "hook_mlp_out",
            ResidPost => "hook_resid_post",
        }
    }

    /// Costly points computed only when asked for by name: per-head results and per-head q/k/v inputs.
    pub fn is_opt_in(self) -> bool {
        matches!(self, BlockSite::Result | BlockSite::QInput | BlockSite::KInput | BlockSite::VInput)
    }
}

/// A hook point. Orders as the forward pass visits them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HookPoint {
    Embed,
    PosEmbed,
    Block(usize, BlockSite),
    LnFinalScale,
    LnFinalNormalized,
    UnembedIn,
    UnembedOut,
}

impl HookPoint {
    /// The block index, for points inside a block.
    pub fn layer(self) -> Option<usize> {
        match self {
            HookPoint::Block(l, _) => Some(l),
            _ => None,
        }
    }

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
        let top = [
            HookPoint::Embed,
            HookPoint::PosEmbed,
            HookPoint::LnFinalScale,
            HookPoint::LnFinalNormalized,
            HookPoint::UnembedIn,
            HookPoint::UnembedOut,
        ];
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
