//! Hooks that read or rewrite activations, the filters that choose what to cache, and ready-made
//! interventions (zero, mean, patch, add, scale) scoped to heads and positions.

use std::collections::BTreeSet;

use tch::{Device, Kind, Tensor};

use crate::cache::ActivationCache;
use crate::error::{BoxError, Error, Result};
use crate::hook_point::{BlockSite, HookName, HookPoint};
use crate::model::HookedTransformer;

/// What a hook is told about the activation it sees.
#[derive(Clone, Copy, Debug)]
pub struct HookCtx {
    /// The point the activation belongs to.
    pub point: HookPoint,
    /// Absolute position of the first token in this activation (non-zero only while generating
    /// with a KV cache, when a forward sees only the new tokens).
    pub pos_offset: i64,
}

/// A hook: reads the activation and returns `Ok(None)` to leave it, or `Ok(Some(t))` to replace it
/// (same shape). It may fail with an error of any type (`?` converts it).
pub type HookFn<'a> = Box<dyn FnMut(&Tensor, &HookCtx) -> Result<Option<Tensor>, BoxError> + 'a>;

/// Hooks to run in a forward pass, keyed by hook name or glob pattern (`blocks.*.attn.hook_z`).
#[derive(Default)]
pub struct Hooks<'a> {
    /// (name or pattern, hook, whether the hook replaces the value without reading it).
    pub(crate) entries: Vec<(String, HookFn<'a>, bool)>,
}

impl<'a> Hooks<'a> {
    /// No hooks.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a hook on every point matching `name` (a [`HookPoint`], an exact name or a glob
    /// pattern).
    pub fn add(mut self, name: impl HookName, hook: impl FnMut(&Tensor, &HookCtx) -> Result<Option<Tensor>, BoxError> + 'a) -> Self {
        self.entries.push((name.hook_name(), Box::new(hook), false));
        self
    }

    /// Adds a hook that gives every point matching `name` its value without reading the one the
    /// model computed, so the forward skips computing it where it can: the queries, keys and
    /// scores under `attn.hook_pattern` (the values are still computed), the MLP under
    /// `hook_mlp_out` (its norm still runs and fires its hooks). A frozen-attention replacement
    /// model is then as cheap as its linear parts. Hooks added before it at the same point see
    /// nothing; hooks added after it see its value.
    pub fn replace(mut self, name: impl HookName, mut value: impl FnMut(&HookCtx) -> Result<Tensor, BoxError> + 'a) -> Self {
        self.entries.push((name.hook_name(), Box::new(move |_, ctx| value(ctx).map(Some)), true));
        self
    }

    /// Adds a ready-made intervention (see [`Intervention`]).
    pub fn intervene(self, name: impl HookName, intervention: Intervention<'a>) -> Self {
        self.add(name, move |x, ctx| Ok(Some(intervention.apply(x, ctx)?)))
    }

    /// Whether no hook was added.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Chooses hook points: by exact name or glob, or by a predicate on the name.
///
/// Opt-in points (`attn.hook_result`, `hook_q_input`, `hook_k_input`, `hook_v_input`) cost memory
/// and compute, so a pattern picks them only when it spells out their last component:
/// `blocks.*.attn.hook_result` does, `*` does not. A predicate sees every point.
pub enum NamesFilter {
    /// Every standard hook point of the model (no opt-in ones).
    All,
    /// Exact names or glob patterns; each must match at least one point.
    Names(Vec<String>),
    /// The points whose name the predicate accepts.
    Predicate(Box<dyn Fn(&str) -> bool>),
}

impl NamesFilter {
    /// [`HookPoint`]s, exact names or glob patterns.
    pub fn names<S: HookName>(names: impl IntoIterator<Item = S>) -> Self {
        NamesFilter::Names(names.into_iter().map(|s| s.hook_name()).collect())
    }

    /// Points whose name `f` accepts.
    pub fn predicate(f: impl Fn(&str) -> bool + 'static) -> Self {
        NamesFilter::Predicate(Box::new(f))
    }

    /// The points this filter selects on `model`; an error for a name or pattern that selects none.
    pub(crate) fn resolve(&self, model: &HookedTransformer) -> Result<BTreeSet<HookPoint>> {
        Ok(match self {
            NamesFilter::All => model.hook_points(false).into_iter().collect(),
            NamesFilter::Names(names) => {
                let mut set = BTreeSet::new();
                for n in names {
                    set.extend(model.resolve_pattern(n)?);
                }
                set
            }
            NamesFilter::Predicate(f) => model.hook_points(true).into_iter().filter(|p| f(&p.to_string())).collect(),
        })
    }
}

/// Which activations a run stores, and how.
pub struct CacheSpec {
    /// Which points.
    pub filter: NamesFilter,
    /// Keep only these positions (`start..end`, on the query axis for attention patterns/scores).
    pub positions: Option<std::ops::Range<i64>>,
    /// Store in this dtype (e.g. `Kind::Half` halves the memory).
    pub dtype: Option<Kind>,
    /// Store on this device (e.g. `Device::Cpu` while the model runs on CUDA).
    pub device: Option<Device>,
}

impl CacheSpec {
    /// Store the points of `filter`, as they are.
    pub fn new(filter: NamesFilter) -> Self {
        CacheSpec { filter, positions: None, dtype: None, device: None }
    }
    /// Every standard point (no opt-in ones).
    pub fn all() -> Self {
        Self::new(NamesFilter::All)
    }
    /// [`HookPoint`]s, exact names or glob patterns.
    pub fn names<S: HookName>(names: impl IntoIterator<Item = S>) -> Self {
        Self::new(NamesFilter::names(names))
    }
    /// Keep only these positions.
    pub fn positions(mut self, range: std::ops::Range<i64>) -> Self {
        self.positions = Some(range);
        self
    }
    /// Store in this dtype.
    pub fn dtype(mut self, kind: Kind) -> Self {
        self.dtype = Some(kind);
        self
    }
    /// Store on this device.
    pub fn device(mut self, device: Device) -> Self {
        self.device = Some(device);
        self
    }
}

/// Where an intervention acts: some heads, some positions (absolute), or everything.
#[derive(Clone, Debug, Default)]
pub struct Scope {
    /// Only these heads (`None`: all); on `mlp.hook_router_logits` and `mlp.hook_expert_out`,
    /// these experts.
    pub heads: Option<Vec<i64>>,
    /// Only these absolute positions (`None`: all).
    pub positions: Option<Vec<i64>>,
}

impl Scope {
    /// Every head and position.
    pub fn all() -> Self {
        Self::default()
    }
    /// Restrict to these heads.
    pub fn heads(mut self, heads: impl Into<Vec<i64>>) -> Self {
        self.heads = Some(heads.into());
        self
    }
    /// Restrict to these absolute positions.
    pub fn positions(mut self, positions: impl Into<Vec<i64>>) -> Self {
        self.positions = Some(positions.into());
        self
    }
}

/// A ready-made intervention; `Hooks::intervene` installs it.
pub enum Intervention<'a> {
    /// Set to zero.
    Zero(Scope),
    /// Replace by a given mean activation (broadcast against the activation, e.g. [p, ...] or [...]).
    Mean(Tensor, Scope),
    /// Replace by the same hook's activation from another run's cache (activation patching).
    Patch(&'a ActivationCache, Scope),
    /// Add a vector (steering), broadcast against the activation.
    Add(Tensor, Scope),
    /// Multiply by a factor.
    Scale(f64, Scope),
}

impl Intervention<'_> {
    fn apply(&self, x: &Tensor, ctx: &HookCtx) -> Result<Tensor> {
        let (new, scope) = match self {
            Intervention::Zero(s) => (x.f_zeros_like()?, s),
            Intervention::Mean(m, s) => (m.f_to_kind(x.kind())?.f_to_device(x.device())?.f_expand_as(x)?, s),
            Intervention::Patch(cache, s) => {
                let src = cache.get_point(ctx.point)?;
                if src.size() != x.size() {
                    return Err(Error::HookShape { name: ctx.point.to_string(), expected: x.size(), found: src.size() });
                }
                (src.f_to_kind(x.kind())?.f_to_device(x.device())?, s)
            }
            Intervention::Add(v, s) => (x.f_add(&v.f_to_kind(x.kind())?.f_to_device(x.device())?)?, s),
            Intervention::Scale(f, s) => (x.f_mul_scalar(*f)?, s),
        };
        match scope_mask(x, ctx, scope)? {
            Some(mask) => Ok(new.f_where_self(&mask, x)?),
            None => Ok(new),
        }
    }
}

/// Head and position axes of a hook point's activation, if it has them.
pub(crate) fn axes(point: HookPoint) -> (Option<usize>, Option<usize>) {
    use BlockSite::*;
    match point {
        HookPoint::Block(_, AttnScores | Pattern) => (Some(1), Some(2)),
        // Experts scope like heads.
        HookPoint::Block(_, Q | K | V | RotQ | RotK | Z | Result | QInput | KInput | VInput | RouterLogits | ExpertOut) => (Some(2), Some(1)),
        _ => (None, Some(1)),
    }
}

/// A boolean mask broadcastable to `x` that is true inside the scope; `None` for the whole tensor.
fn scope_mask(x: &Tensor, ctx: &HookCtx, scope: &Scope) -> Result<Option<Tensor>> {
    let (head_axis, pos_axis) = axes(ctx.point);
    let dims = x.dim();
    let mut mask: Option<Tensor> = None;
    let mut restrict = |axis: usize, offset: i64, wanted: &[i64]| -> Result<()> {
        let n = x.size()[axis];
        let idx = Tensor::f_arange_start(offset, offset + n, (Kind::Int64, x.device()))?;
        let m = Tensor::f_isin(&idx, &Tensor::f_from_slice(wanted)?.f_to_device(x.device())?, false, false)?;
        let mut shape = vec![1i64; dims];
        shape[axis] = n;
        let m = m.f_view(shape.as_slice())?;
        mask = Some(match mask.take() {
            Some(prev) => prev.f_logical_and(&m)?,
            None => m,
        });
        Ok(())
    };
    if let Some(heads) = &scope.heads {
        let axis = head_axis.ok_or_else(|| Error::Input(format!("`{}` has no head axis to scope to heads", ctx.point)))?;
        restrict(axis, 0, heads)?;
    }
    if let Some(positions) = &scope.positions {
        let axis = pos_axis.filter(|a| *a < dims).ok_or_else(|| Error::Input(format!("`{}` has no position axis", ctx.point)))?;
        restrict(axis, ctx.pos_offset, positions)?;
    }
    Ok(mask)
}
