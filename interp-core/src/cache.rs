//! `ActivationCache`: the activations a run stored, by hook point, and the residual-stream helpers
//! built on them (logit lens, residual decomposition, stacked head results, logit attribution).

use std::collections::BTreeMap;

use tch::{Kind, Tensor};

use crate::config::NormKind;
use crate::error::{Error, Result};
use crate::hook_point::{BlockSite, HookName, HookPoint};

/// Stored activations, in forward order. Only what the run was asked to keep.
pub struct ActivationCache {
    pub(crate) map: BTreeMap<HookPoint, Tensor>,
    pub(crate) n_layers: usize,
    pub(crate) norm: NormKind,
    pub(crate) attn_only: bool,
}

impl std::ops::Index<(&str, usize)> for ActivationCache {
    type Output = Tensor;

    /// `cache[("pattern", 0)]`, TransformerLens's `cache["pattern", 0]`. Panics if the activation is not cached; use
    /// [`ActivationCache::layer`] for an error instead.
    fn index(&self, (short_name, layer): (&str, usize)) -> &Tensor {
        match self.layer(short_name, layer) {
            Ok(t) => t,
            Err(e) => panic!("{e}"),
        }
    }
}

/// A stack of residual-stream components with a label each (`embed`, `0_attn_out`, `L3H5`, ...).
pub struct ResidualStack {
    /// [component, batch, pos, d_model]
    pub components: Tensor,
    /// One label per component (`embed`, `0_attn_out`, `L3H5`, ...).
    pub labels: Vec<String>,
}

impl ActivationCache {
    /// The activation stored under a TransformerLens name or [`HookPoint`].
    pub fn get(&self, name: impl HookName) -> Result<&Tensor> {
        self.get_point(name.hook_point()?)
    }

    /// TransformerLens's shorthand: `cache.layer("pattern", 0)` is
    /// `blocks.0.attn.hook_pattern` (see [`BlockSite::from_short_name`]); `cache[("pattern", 0)]`
    /// does the same and panics where this returns an error.
    pub fn layer(&self, short_name: &str, layer: usize) -> Result<&Tensor> {
        let site =
            BlockSite::from_short_name(short_name).ok_or_else(|| Error::UnknownHook { name: format!("{short_name} (layer {layer})"), suggestion: None })?;
        self.get_point(HookPoint::Block(layer, site))
    }

    /// The activation stored at a typed point.
    pub fn get_point(&self, point: HookPoint) -> Result<&Tensor> {
        self.map.get(&point).ok_or_else(|| Error::NotCached { name: point.to_string(), cached: self.summary() })
    }

    /// Whether the activation of `name` is stored.
    pub fn contains(&self, name: impl HookName) -> bool {
        name.hook_point().is_ok_and(|p| self.map.contains_key(&p))
    }

    /// (name, activation) in forward order.
    pub fn iter(&self) -> impl Iterator<Item = (String, &Tensor)> {
        self.map.iter().map(|(p, t)| (p.to_string(), t))
    }

    /// Number of stored activations.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Bytes held by the stored tensors.
    pub fn total_bytes(&self) -> usize {
        self.map.values().map(|t| t.numel() * t.kind().elt_size_in_bytes()).sum()
    }

    fn summary(&self) -> String {
        if self.map.is_empty() {
            return "nothing".into();
        }
        let names: Vec<String> = self.map.keys().take(6).map(|p| p.to_string()).collect();
        let more = self.map.len().saturating_sub(6);
        if more > 0 {
            format!("{}, and {more} more", names.join(", "))
        } else {
            names.join(", ")
        }
    }

    fn f32(&self, point: HookPoint) -> Result<Tensor> {
        Ok(self.get_point(point)?.f_to_kind(Kind::Float)?)
    }

    /// The residual stream before each layer up to `layer` (default: all, plus the final one),
    /// optionally with `resid_mid` between, as the logit lens sees it. With `apply_ln`, each is
    /// normalised by the cached `ln_final.hook_scale` (see [`Self::apply_ln_to_stack`]).
    ///
    /// Shapes: components [n, batch, pos, d_model].
    pub fn accumulated_resid(&self, layer: Option<usize>, incl_mid: bool, apply_ln: bool) -> Result<ResidualStack> {
        let last = layer.unwrap_or(self.n_layers).min(self.n_layers);
        let (mut parts, mut labels) = (Vec::new(), Vec::new());
        for l in 0..last {
            parts.push(self.f32(HookPoint::Block(l, BlockSite::ResidPre))?);
            labels.push(format!("{l}_pre"));
            if incl_mid {
                parts.push(self.f32(HookPoint::Block(l, BlockSite::ResidMid))?);
                labels.push(format!("{l}_mid"));
            }
        }
        if last == self.n_layers && self.n_layers > 0 {
            parts.push(self.f32(HookPoint::Block(self.n_layers - 1, BlockSite::ResidPost))?);
            labels.push("final_post".into());
        }
        self.stack(parts, labels, apply_ln)
    }

    /// The residual stream before `layer` (default: the final one) split into what wrote it:
    /// embeddings, then each earlier layer's attention and MLP outputs. The components sum to
    /// the residual stream.
    ///
    /// Shapes: components [n, batch, pos, d_model].
    pub fn decompose_resid(&self, layer: Option<usize>, apply_ln: bool) -> Result<ResidualStack> {
        let last = layer.unwrap_or(self.n_layers).min(self.n_layers);
        let (mut parts, mut labels) = (vec![self.f32(HookPoint::Embed)?], vec!["embed".to_string()]);
        if self.map.contains_key(&HookPoint::PosEmbed) {
            parts.push(self.f32(HookPoint::PosEmbed)?);
            labels.push("pos_embed".into());
        }
        for l in 0..last {
            parts.push(self.f32(HookPoint::Block(l, BlockSite::AttnOut))?);
            labels.push(format!("{l}_attn_out"));
            if !self.attn_only {
                parts.push(self.f32(HookPoint::Block(l, BlockSite::MlpOut))?);
                labels.push(format!("{l}_mlp_out"));
            }
        }
        self.stack(parts, labels, apply_ln)
    }

    /// Every head's output (`attn.hook_result`, which must be cached) for layers before `layer`
    /// (default all), labelled `L{l}H{h}`.
    ///
    /// Shapes: components [layers * heads, batch, pos, d_model].
    pub fn stack_head_results(&self, layer: Option<usize>, apply_ln: bool) -> Result<ResidualStack> {
        let last = layer.unwrap_or(self.n_layers).min(self.n_layers);
        let (mut parts, mut labels) = (Vec::new(), Vec::new());
        for l in 0..last {
            let result = self.f32(HookPoint::Block(l, BlockSite::Result))?; // [b, p, h, dm]
            for h in 0..result.size()[2] {
                parts.push(result.f_select(2, h)?);
                labels.push(format!("L{l}H{h}"));
            }
        }
        self.stack(parts, labels, apply_ln)
    }

    fn stack(&self, parts: Vec<Tensor>, labels: Vec<String>, apply_ln: bool) -> Result<ResidualStack> {
        if parts.is_empty() {
            return Err(Error::Input("no components to stack".into()));
        }
        let components = Tensor::f_stack(&parts, 0)?;
        let components = if apply_ln { self.apply_ln_to_stack(&components)? } else { components };
        Ok(ResidualStack { components, labels })
    }

    /// Applies the final norm as a linear map, with the scale cached from the real run: centres
    /// (LayerNorm) and divides by `ln_final.hook_scale`, without gain or bias (TransformerLens'
    /// convention; fold the gain into W_U with `fold_ln`).
    ///
    /// Shapes: stack [n, batch, pos, d_model] -> same.
    pub fn apply_ln_to_stack(&self, stack: &Tensor) -> Result<Tensor> {
        let scale = self.f32(HookPoint::LnFinalScale)?; // [b, p, 1]
        Ok(self.norm.centre(&stack.f_to_kind(Kind::Float)?, -1)?.f_div(&scale)?)
    }
}
