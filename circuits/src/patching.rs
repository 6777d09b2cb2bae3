//! Activation patching sweeps: clean activations patched into the corrupted run one index at a
//! time, with all indices of a layer stacked along the batch axis and each forward restarted at
//! that layer from the corrupted residual.

use interp_core::{BlockSite, CacheSpec, HookPoint, HookedTransformer, Hooks};
use tch::{Kind, Tensor};

use crate::error::{Error, Result};
use crate::metric::{self, Metric};

/// What is patched, and over which indices.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum PatchSite {
    /// Residual stream entering each block, by (layer, pos).
    #[cfg_attr(feature = "clap", value(name = "resid_pre"))]
    ResidPre,
    /// Attention output by (layer, pos).
    #[cfg_attr(feature = "clap", value(name = "attn_out"))]
    AttnOut,
    /// MLP output by (layer, pos).
    #[cfg_attr(feature = "clap", value(name = "mlp_out"))]
    MlpOut,
    /// Each head's output (`hook_z`) at every position, by (layer, head).
    #[cfg_attr(feature = "clap", value(name = "z"))]
    Z,
    /// Each head's output by (layer, pos, head).
    #[cfg_attr(feature = "clap", value(name = "z_by_pos"))]
    ZByPos,
    /// Queries, keys, values and attention patterns per head at every position, by (layer, head)
    /// (key/value heads under grouped-query attention).
    #[cfg_attr(feature = "clap", value(name = "q"))]
    Q,
    /// Keys per head.
    #[cfg_attr(feature = "clap", value(name = "k"))]
    K,
    /// Values per head.
    #[cfg_attr(feature = "clap", value(name = "v"))]
    V,
    /// Attention patterns per head.
    #[cfg_attr(feature = "clap", value(name = "pattern"))]
    Pattern,
    /// Each expert's weighted output (`mlp.hook_expert_out`) at every position, by (layer,
    /// expert): mixtures of experts only (NaN for a dense layer's row).
    #[cfg_attr(feature = "clap", value(name = "expert"))]
    Expert,
}

impl PatchSite {
    /// Every site, in the order sweeps run them.
    pub const ALL: [PatchSite; 10] = [
        PatchSite::ResidPre,
        PatchSite::AttnOut,
        PatchSite::MlpOut,
        PatchSite::Z,
        PatchSite::ZByPos,
        PatchSite::Q,
        PatchSite::K,
        PatchSite::V,
        PatchSite::Pattern,
        PatchSite::Expert,
    ];

    /// Whether `model` has this site: MLP outputs need MLPs, experts a mixture of experts.
    pub fn applies_to(self, model: &HookedTransformer) -> bool {
        match self {
            PatchSite::MlpOut => !model.cfg.attn_only,
            PatchSite::Expert => model.cfg.moe.is_some(),
            _ => true,
        }
    }

    /// The site's name in tables and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            PatchSite::ResidPre => "resid_pre",
            PatchSite::AttnOut => "attn_out",
            PatchSite::MlpOut => "mlp_out",
            PatchSite::Z => "z",
            PatchSite::ZByPos => "z_by_pos",
            PatchSite::Q => "q",
            PatchSite::K => "k",
            PatchSite::V => "v",
            PatchSite::Pattern => "pattern",
            PatchSite::Expert => "expert",
        }
    }

    fn hook(self, layer: usize) -> HookPoint {
        let site = match self {
            PatchSite::ResidPre => BlockSite::ResidPre,
            PatchSite::AttnOut => BlockSite::AttnOut,
            PatchSite::MlpOut => BlockSite::MlpOut,
            PatchSite::Z | PatchSite::ZByPos => BlockSite::Z,
            PatchSite::Q => BlockSite::Q,
            PatchSite::K => BlockSite::K,
            PatchSite::V => BlockSite::V,
            PatchSite::Pattern => BlockSite::Pattern,
            PatchSite::Expert => BlockSite::ExpertOut,
        };
        HookPoint::block(layer, site)
    }

    /// Axis names of the result after `layer`.
    pub fn axes(self) -> &'static [&'static str] {
        match self {
            PatchSite::ResidPre | PatchSite::AttnOut | PatchSite::MlpOut => &["layer", "pos"],
            PatchSite::ZByPos => &["layer", "pos", "head"],
            PatchSite::Expert => &["layer", "expert"],
            _ => &["layer", "head"],
        }
    }
}

impl std::str::FromStr for PatchSite {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        PatchSite::ALL.into_iter().find(|p| p.name() == s).ok_or_else(|| {
            let names: Vec<&str> = PatchSite::ALL.iter().map(|p| p.name()).collect();
            Error::setting("patching site", s, format!("one of {}", names.join(", ")))
        })
    }
}

/// A sweep's result.
pub struct PatchingResult {
    /// The site patched.
    pub site: PatchSite,
    /// Metric with each index patched: [n_layers, pos], [n_layers, heads] or [n_layers, pos, heads].
    pub values: Tensor,
    /// (value - corrupted) / (clean - corrupted): 1 = patching restores the clean behaviour.
    pub normalized: Tensor,
    /// The metric on the clean prompts.
    pub clean: f64,
    /// The metric on the corrupted prompts.
    pub corrupted: f64,
    /// Forward passes run.
    pub forwards: usize,
}

/// Patches each index of `site` from the clean run into the corrupted run and measures `metric`.
/// `clean`, `corrupted`: [B, P] int64 of equal shape. At most `max_rows` prompt rows per forward
/// (at least one variant: `max_rows` below B runs one index per forward). Only the answer
/// positions are unembedded.
pub fn activation_patching(
    model: &HookedTransformer,
    clean: &Tensor,
    corrupted: &Tensor,
    metric: &Metric,
    site: PatchSite,
    max_rows: i64,
) -> Result<PatchingResult> {
    metric::check_aligned(clean, corrupted)?;
    let c = &model.cfg;
    if !site.applies_to(model) {
        return Err(Error::Input(match site {
            PatchSite::Expert => "the model has no mixture-of-experts layers: no experts to patch".into(),
            _ => "the model is attention-only: it has no MLP outputs to patch".into(),
        }));
    }
    // An expert sweep skips dense layers.
    let patched = |l: usize| site != PatchSite::Expert || c.is_moe_layer(l);
    let points = (0..c.n_layers).filter(|l| patched(*l)).map(|l| site.hook(l));
    let (clean_logits, clean_cache) = model.run_with_cache(clean, CacheSpec::names(points))?;
    let (corrupt_logits, corrupt_cache) = model.run_with_cache(corrupted, CacheSpec::names([BlockSite::ResidPre]))?;
    let (m_clean, m_corrupt) = metric::clean_and_corrupted(metric, &clean_logits, &corrupt_logits)?;
    let (b, p) = (clean.size()[0], clean.size()[1]);
    let heads = match site {
        PatchSite::K | PatchSite::V => c.n_kv_heads,
        PatchSite::Expert => c.moe.as_ref().map_or(0, |m| m.n_experts),
        _ => c.n_heads,
    };
    let mut layers = Vec::with_capacity(c.n_layers);
    let mut forwards = 0;
    for l in 0..c.n_layers {
        if !patched(l) {
            layers.push(Tensor::f_full([heads], f64::NAN, (Kind::Double, tch::Device::Cpu))?);
            continue;
        }
        let point = site.hook(l);
        let clean_act = clean_cache.get(point)?;
        let act = clean_act.size();
        // One mask per variant, the shape of an activation without its batch axis.
        let masks: Vec<Tensor> = match site {
            PatchSite::ResidPre | PatchSite::AttnOut | PatchSite::MlpOut => (0..p).map(|i| one_hot(&[p, 1], &[i])).collect::<Result<_>>()?,
            PatchSite::ZByPos => (0..p).flat_map(|i| (0..heads).map(move |h| one_hot(&[p, heads, 1], &[i, h]))).collect::<Result<_>>()?,
            PatchSite::Pattern => (0..heads).map(|h| one_hot(&[heads, 1, 1], &[h])).collect::<Result<_>>()?,
            _ => (0..heads).map(|h| one_hot(&[1, heads, 1], &[0, h])).collect::<Result<_>>()?,
        };
        let resid = corrupt_cache.get(HookPoint::block(l, BlockSite::ResidPre))?;
        let per = (max_rows / b).max(1) as usize;
        let mut values = Vec::with_capacity(masks.len());
        for chunk in masks.chunks(per) {
            let v = chunk.len() as i64;
            let mask = Tensor::f_stack(chunk, 0)?.f_unsqueeze(1)?.f_to_device(model.device())?; // [V, 1, ...]
            let start = resid.f_unsqueeze(0)?.f_expand([v, b, p, c.d_model], false)?.f_reshape([v * b, p, c.d_model])?;
            let hooks = Hooks::new().add(point, |x, _| {
                let mut shape = vec![v, b];
                shape.extend_from_slice(&act[1..]);
                let xv = x.f_view(shape.as_slice())?;
                let patched = clean_act.f_unsqueeze(0)?.f_expand_as(&xv)?.f_where_self(&mask, &xv)?;
                Ok(Some(patched.f_view(x.size().as_slice())?))
            });
            let resid = model.runner_from_layer(&start, l).hooks(hooks).stop_at_layer(c.n_layers).run()?.output;
            forwards += 1;
            values.extend(Vec::<f64>::try_from(&metric.per_variant_of_residual(model, &resid)?.f_to_kind(Kind::Double)?)?);
        }
        layers.push(Tensor::f_from_slice(&values)?);
    }
    let mut shape = vec![c.n_layers as i64];
    shape.extend(match site.axes().len() {
        2 if site.axes()[1] == "pos" => vec![p],
        2 => vec![heads],
        _ => vec![p, heads],
    });
    let values = Tensor::f_stack(&layers, 0)?.f_view(shape.as_slice())?;
    let normalized = values.f_sub_scalar(m_corrupt)?.f_div_scalar(m_clean - m_corrupt)?;
    Ok(PatchingResult { site, values, normalized, clean: m_clean, corrupted: m_corrupt, forwards })
}

/// A boolean tensor of `shape` with one true element at `index` (trailing axes broadcast).
fn one_hot(shape: &[i64], index: &[i64]) -> Result<Tensor> {
    let m = Tensor::f_zeros(shape, (Kind::Bool, tch::Device::Cpu))?;
    let mut view = m.shallow_clone();
    for i in index {
        view = view.f_select(0, *i)?;
    }
    let _ = view.f_fill_(1)?;
    Ok(m)
}
