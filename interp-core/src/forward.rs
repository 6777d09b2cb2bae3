//! The forward pass: every hook point fires here, in TransformerLens order.
//!
//! A point that nobody hooks, caches or differentiates costs nothing: norms then run fused and
//! the opt-in per-head paths (`hook_result`, `hook_q_input`, ...) are skipped.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use tch::{Kind, Tensor};

use crate::config::{MoeConfig, NormKind, Positional, QkNorm};
use crate::error::{Error, Result};
use crate::hook_point::{BlockSite, HookPoint};
use crate::hooks::{axes, CacheSpec, HookCtx, HookFn, Hooks};
use crate::model::HookedTransformer;
use crate::params::{Block, Linear, Mlp, Moe, Norm};

pub(crate) enum Input<'a> {
    /// Token ids [batch, pos].
    Tokens(&'a Tensor),
    /// The residual stream [batch, pos, d_model] entering `layer`.
    Residual { resid: &'a Tensor, layer: usize },
}

/// Keys and values of earlier positions, for incremental decoding.
pub struct KvCache {
    /// Per layer: k, v [batch, n_kv_heads, past_len, d_head] (k after rotary).
    pub(crate) layers: Vec<Option<(Tensor, Tensor)>>,
    pub(crate) len: i64,
}

impl KvCache {
    /// An empty cache for a model of `n_layers` blocks.
    pub fn new(n_layers: usize) -> Self {
        KvCache { layers: (0..n_layers).map(|_| None).collect(), len: 0 }
    }

    /// Positions already cached.
    pub fn len(&self) -> i64 {
        self.len
    }

    /// Whether no position is cached yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The first `len` positions of every layer's keys and values, the batch tiled `times` over
    /// (rows `0..b`, then `0..b` again, as `Tensor::repeat` tiles it).
    pub fn prefix(&self, len: i64, times: i64) -> Result<KvCache> {
        if !(0..=self.len).contains(&len) || times < 1 {
            return Err(Error::Input(format!("a prefix of {len} positions, {times} times, of a cache of {}", self.len)));
        }
        let cut = |t: &Tensor| -> Result<Tensor> { Ok(t.f_narrow(2, 0, len)?.f_repeat([times, 1, 1, 1])?) };
        let layers = self.layers.iter().map(|kv| kv.as_ref().map(|(k, v)| Ok((cut(k)?, cut(v)?))).transpose()).collect::<Result<_>>()?;
        Ok(KvCache { layers, len })
    }
}

/// The state of one run: hooks to call, what to cache, what to differentiate.
pub(crate) struct Run<'h> {
    fns: Vec<HookFn<'h>>,
    /// Per hook, whether it replaces its point's value without reading it.
    replaces: Vec<bool>,
    hooked: HashMap<HookPoint, Vec<usize>>,
    spec: Option<CacheSpec>,
    cache_points: BTreeSet<HookPoint>,
    cached: BTreeMap<HookPoint, Tensor>,
    grad_points: BTreeSet<HookPoint>,
    pub(crate) grad_inputs: Vec<(HookPoint, Tensor)>,
    pos_offset: i64,
    /// [batch] the one position per row at which the last block computes its queries, MLP and
    /// residual (see `Runner::last_block_at`).
    pub(crate) last_block_at: Option<Tensor>,
}

impl<'h> Run<'h> {
    pub(crate) fn new(
        model: &HookedTransformer,
        hooks: Hooks<'h>,
        spec: Option<CacheSpec>,
        cache_points: Option<BTreeSet<HookPoint>>,
        grad_points: Option<BTreeSet<HookPoint>>,
    ) -> Result<Self> {
        let (mut fns, mut replaces) = (Vec::new(), Vec::new());
        let mut hooked: HashMap<HookPoint, Vec<usize>> = HashMap::new();
        for (pattern, f, replace) in hooks.entries {
            for p in model.resolve_pattern(&pattern)? {
                hooked.entry(p).or_default().push(fns.len());
            }
            fns.push(f);
            replaces.push(replace);
        }
        Ok(Run {
            fns,
            replaces,
            hooked,
            spec,
            cache_points: cache_points.unwrap_or_default(),
            cached: BTreeMap::new(),
            grad_points: grad_points.unwrap_or_default(),
            grad_inputs: Vec::new(),
            pos_offset: 0,
            last_block_at: None,
        })
    }

    pub(crate) fn active(&self, p: HookPoint) -> bool {
        self.hooked.contains_key(&p) || self.cache_points.contains(&p) || self.grad_points.contains(&p)
    }

    /// Runs the hooks on `x`, then caches it and marks it for gradients as asked.
    pub(crate) fn fire(&mut self, p: HookPoint, x: Tensor) -> Result<Tensor> {
        let shape = x.size();
        self.fire_from(p, x, 0, &shape)
    }

    /// Whether a hook at `p` replaces its value without reading it ([`crate::Hooks::replace`]):
    /// the forward may then skip computing that value and call [`Run::fire_replaced`].
    pub(crate) fn replaced(&self, p: HookPoint) -> bool {
        self.hooked.get(&p).is_some_and(|ids| ids.iter().any(|&i| self.replaces[i]))
    }

    /// The value of `p` (of shape `shape`) that its last replacing hook gives, through the hooks
    /// after it; then cached and marked as [`Run::fire`] does.
    pub(crate) fn fire_replaced(&mut self, p: HookPoint, shape: &[i64]) -> Result<Tensor> {
        let ids = self.hooked.get(&p).map(Vec::as_slice).unwrap_or_default();
        let from = ids.iter().rposition(|&i| self.replaces[i]).ok_or_else(|| Error::Input(format!("no hook replaces {p}")))?;
        self.fire_from(p, Tensor::new(), from, shape)
    }

    /// Runs the hooks of `p` from its `from`-th on, each value checked against `shape`.
    fn fire_from(&mut self, p: HookPoint, mut x: Tensor, from: usize, shape: &[i64]) -> Result<Tensor> {
        if let Some(ids) = self.hooked.get(&p) {
            let ctx = HookCtx { point: p, pos_offset: self.pos_offset };
            for &i in &ids[from..] {
                let replaced = (self.fns[i])(&x, &ctx).map_err(|e| Error::from_closure(e, |source| Error::Hook { point: p.to_string(), source }))?;
                if let Some(new) = replaced {
                    if new.size() != shape {
                        return Err(Error::HookShape { name: p.to_string(), expected: shape.to_vec(), found: new.size() });
                    }
                    x = new;
                }
            }
        }
        if self.grad_points.contains(&p) {
            // A fresh autograd node, so the gradient is that of this point's own downstream
            // uses (`hook_mlp_in` shares its tensor with the residual stream).
            x = if x.requires_grad() { x.f_view_as(&x)? } else { x.f_detach()?.f_set_requires_grad(true)? };
            self.grad_inputs.push((p, x.shallow_clone()));
        }
        if self.cache_points.contains(&p) {
            let stored = self.for_cache(p, &x)?;
            self.cached.insert(p, stored);
        }
        Ok(x)
    }

    fn for_cache(&self, p: HookPoint, x: &Tensor) -> Result<Tensor> {
        let mut t = x.f_detach()?;
        if let Some(spec) = &self.spec {
            if let Some(range) = &spec.positions {
                let axis = axes(p).1.unwrap_or(1) as i64;
                let n = t.size()[axis as usize];
                if range.start < 0 || range.end > n || range.start >= range.end {
                    return Err(Error::Input(format!("cache positions {range:?} out of range for {n} positions")));
                }
                t = t.f_narrow(axis, range.start, range.end - range.start)?;
            }
            if let Some(kind) = spec.dtype {
                t = t.f_to_kind(kind)?;
            }
            if let Some(device) = spec.device {
                t = t.f_to_device(device)?;
            }
        }
        Ok(t)
    }

    /// What was cached, if the run was asked to cache.
    pub(crate) fn take_cached(&mut self) -> Option<BTreeMap<HookPoint, Tensor>> {
        self.spec.as_ref()?;
        Some(std::mem::take(&mut self.cached))
    }
}

/// Per-forward tensors shared by all layers.
struct Ctx {
    batch: i64,
    pos: i64,
    /// cos, sin [batch, pos, 1, rotary_dim] in the model dtype.
    rotary: Option<(Tensor, Tensor)>,
    /// The same for local (sliding-window) layers with their own rotary (Gemma 3).
    rotary_local: Option<(Tensor, Tensor)>,
    /// Allowed (query, key) pairs [batch or 1, 1, pos, keys], one per distinct sliding window.
    masks: Vec<(Option<i64>, Tensor)>,
    /// Shortformer models: the position embeddings [batch, pos, d_model] that q and k read.
    shortformer: Option<Tensor>,
    /// The last block and [batch] the position at which it computes queries, MLP and residual.
    last_block_at: Option<(usize, Tensor)>,
}

impl Ctx {
    /// [batch] the one position per row at which block `l` computes past its keys and values.
    fn rows(&self, l: usize) -> Option<&Tensor> {
        self.last_block_at.as_ref().filter(|(last, _)| *last == l).map(|(_, rows)| rows)
    }

    fn mask(&self, window: Option<i64>) -> &Tensor {
        let found = self.masks.iter().find(|(w, _)| *w == window);
        &found.unwrap_or(&self.masks[0]).1
    }
}

/// x [batch, pos, ...] at one position per row, `rows` [batch] int64: [batch, 1, ...].
pub fn at_rows(x: &Tensor, rows: &Tensor) -> Result<Tensor> {
    let size = x.size();
    let mut shape = size.clone();
    shape[1] = 1;
    let mut view = vec![1i64; size.len()];
    view[0] = size[0];
    Ok(x.f_gather(1, &rows.f_view(view.as_slice())?.f_expand(shape.as_slice(), false)?, false)?)
}

fn rotate_half(x: &Tensor) -> Result<Tensor> {
    let half = x.size()[x.dim() - 1] / 2;
    let (x1, x2) = (x.f_narrow(-1, 0, half)?, x.f_narrow(-1, half, half)?);
    Ok(Tensor::f_cat(&[x2.f_neg()?, x1], -1)?)
}

/// Rotary embedding of the first `rotary_dim` dims of x [batch, pos, heads, d_head].
fn apply_rotary(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let (dh, rot) = (x.size()[3], cos.size()[3]);
    let rotate = |x: &Tensor| -> Result<Tensor> { Ok(x.f_mul(cos)?.f_add(&rotate_half(x)?.f_mul(sin)?)?) };
    if rot == dh {
        return rotate(x);
    }
    let (xr, xp) = (x.f_narrow(-1, 0, rot)?, x.f_narrow(-1, rot, dh - rot)?);
    Ok(Tensor::f_cat(&[rotate(&xr)?, xp], -1)?)
}

impl HookedTransformer {
    fn check_tokens(&self, tokens: &Tensor, offset: i64) -> Result<Tensor> {
        if tokens.dim() != 2 {
            return Err(Error::Shape { what: "tokens".into(), expected: "[batch, pos]".into(), found: tokens.size() });
        }
        if !matches!(tokens.kind(), Kind::Int64 | Kind::Int) {
            return Err(Error::Input(format!("tokens must be int64, found {:?}", tokens.kind())));
        }
        if tokens.numel() == 0 {
            return Err(Error::EmptyInput);
        }
        let (min, max) = (tokens.f_min()?.int64_value(&[]), tokens.f_max()?.int64_value(&[]));
        if min < 0 || max >= self.cfg.d_vocab {
            let bad = if min < 0 { min } else { max };
            return Err(Error::TokenOutOfVocabulary { id: bad, d_vocab: self.cfg.d_vocab });
        }
        let len = offset + tokens.size()[1];
        if len > self.cfg.n_ctx {
            return Err(Error::TooLong { len, n_ctx: self.cfg.n_ctx });
        }
        Ok(tokens.f_to_kind(Kind::Int64)?.f_to_device(self.device)?)
    }

    /// Runs the model on `input`; see `Runner`. `mask` covers cached and new positions.
    pub(crate) fn run_forward(
        &self,
        run: &mut Run,
        input: &Input,
        mask: Option<&Tensor>,
        stop_at_layer: Option<usize>,
        mut kv: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        let c = &self.cfg;
        let offset = kv.as_ref().map_or(0, |k| k.len);
        run.pos_offset = offset;
        let stop = stop_at_layer.unwrap_or(c.n_layers);
        let (start, batch, pos, tokens) = match input {
            Input::Tokens(t) => {
                let t = self.check_tokens(t, offset)?;
                (0, t.size()[0], t.size()[1], Some(t))
            }
            Input::Residual { resid, layer } => {
                let s = resid.size();
                if s.len() != 3 || s[2] != c.d_model || s[0] * s[1] == 0 {
                    return Err(Error::Shape { what: "the residual".into(), expected: format!("[batch, pos, {}]", c.d_model), found: s });
                }
                if s[1] + offset > c.n_ctx {
                    return Err(Error::TooLong { len: s[1] + offset, n_ctx: c.n_ctx });
                }
                (*layer, s[0], s[1], None)
            }
        };
        if start > c.n_layers || stop > c.n_layers || stop < start {
            return Err(Error::Input(format!("layers {start}..{stop} out of range for a {}-layer model", c.n_layers)));
        }
        let keys = offset + pos;
        let key_valid = match mask {
            Some(m) => {
                if m.size() != [batch, keys] {
                    return Err(Error::Shape { what: "the attention mask".into(), expected: format!("[{batch}, {keys}]"), found: m.size() });
                }
                Some(m.f_to_device(self.device)?.f_ne(0)?)
            }
            None => None,
        };
        let positions = match &key_valid {
            Some(valid) => valid.f_cumsum(1, Kind::Int64)?.f_sub_scalar(1)?.f_clamp_min(0)?.f_narrow(1, offset, pos)?,
            None => Tensor::f_arange_start(offset, keys, (Kind::Int64, self.device))?.f_unsqueeze(0)?.f_expand([batch, pos], false)?,
        };
        let tables = |inv_freq: &Option<Tensor>| -> Result<Option<(Tensor, Tensor)>> {
            let Some(inv_freq) = inv_freq else { return Ok(None) };
            let freqs = positions.f_to_kind(Kind::Float)?.f_unsqueeze(-1)?.f_mul(inv_freq)?;
            let emb = Tensor::f_cat(&[&freqs, &freqs], -1)?.f_unsqueeze(2)?;
            Ok(Some((emb.f_cos()?.f_to_kind(self.kind)?, emb.f_sin()?.f_to_kind(self.kind)?)))
        };
        let (rotary, rotary_local) = (tables(&self.inv_freq)?, tables(&self.inv_freq_local)?);
        let mut windows: Vec<Option<i64>> = c.sliding_window[start..stop].to_vec();
        windows.sort();
        windows.dedup();
        let masks = windows.into_iter().map(|w| Ok((w, self.allowed_mask(offset, pos, w, key_valid.as_ref())?))).collect::<Result<Vec<_>>>()?;
        let mut shortformer = None;
        let mut resid = match (input, tokens) {
            (_, Some(tokens)) => {
                let mut embed = Tensor::f_embedding(&self.params.w_e, &tokens, -1, false, false)?;
                if c.scale_embed {
                    // Like HF: the normaliser is rounded to the model dtype first.
                    let norm = Tensor::f_from_slice(&[(c.d_model as f64).sqrt()])?.f_to_kind(self.kind)?.f_to_device(self.device)?;
                    embed = embed.f_mul(&norm)?;
                }
                let embed = run.fire(HookPoint::Embed, embed)?;
                match &self.params.w_pos {
                    Some(w_pos) => {
                        let pos_embed = run.fire(HookPoint::PosEmbed, Tensor::f_embedding(w_pos, &positions, -1, false, false)?)?;
                        match c.positional {
                            Positional::Shortformer => {
                                shortformer = Some(pos_embed);
                                embed
                            }
                            _ => embed.f_add(&pos_embed)?,
                        }
                    }
                    None => embed,
                }
            }
            (Input::Residual { resid, .. }, None) => resid.f_to_kind(self.kind)?.f_to_device(self.device)?,
            (Input::Tokens(_), None) => unreachable!("tokens are checked above"),
        };
        // A shortformer run that starts from a residual still needs the position embeddings.
        if let (Positional::Shortformer, None, Some(w_pos)) = (&c.positional, &shortformer, &self.params.w_pos) {
            shortformer = Some(Tensor::f_embedding(w_pos, &positions, -1, false, false)?);
        }
        let last_block_at = match run.last_block_at.take() {
            Some(rows) if stop == c.n_layers && start < stop => {
                let ok = rows.size() == [batch] && rows.kind() == Kind::Int64 && rows.numel() > 0;
                if !ok || rows.f_min()?.int64_value(&[]) < 0 || rows.f_max()?.int64_value(&[]) >= pos {
                    return Err(Error::Shape {
                        what: format!("the last block's positions (int64, each below {pos})"),
                        expected: format!("[{batch}]"),
                        found: rows.size(),
                    });
                }
                Some((c.n_layers - 1, rows.f_to_device(self.device)?))
            }
            _ => None,
        };
        let ctx = Ctx { batch, pos, rotary, rotary_local, masks, shortformer, last_block_at };

        for l in start..stop {
            let layer_kv = kv.as_deref_mut().map(|k| &mut k.layers[l]);
            resid = self.block_forward(l, &self.params.blocks[l], resid, run, &ctx, layer_kv)?;
        }
        if let Some(k) = kv {
            k.len = keys;
        }
        if stop_at_layer.is_some() {
            return Ok(resid);
        }
        let x = self.norm(&self.params.ln_final, &resid, run, Some((HookPoint::LnFinalScale, HookPoint::LnFinalNormalized)))?;
        let x = run.fire(HookPoint::UnembedIn, x)?;
        let mut logits = x.f_linear(&self.params.w_u, self.params.b_u.as_ref())?;
        if let Some(cap) = c.final_softcap {
            logits = logits.f_div_scalar(cap)?.f_tanh()?.f_mul_scalar(cap)?;
        }
        run.fire(HookPoint::UnembedOut, logits)
    }

    /// Which keys each query may attend to: earlier ones (causal models), within the sliding
    /// window, not padding (a padding query attends to itself, so that no row is empty).
    /// [batch or 1, 1, pos, keys].
    fn allowed_mask(&self, offset: i64, pos: i64, window: Option<i64>, key_valid: Option<&Tensor>) -> Result<Tensor> {
        let keys = offset + pos;
        let q = Tensor::f_arange_start(offset, keys, (Kind::Int64, self.device))?.f_view([pos, 1])?;
        let k = Tensor::f_arange(keys, (Kind::Int64, self.device))?.f_view([1, keys])?;
        let mut allowed = match self.cfg.causal {
            true => k.f_le_tensor(&q)?,
            false => k.f_ge(0)?.f_expand([pos, keys], false)?,
        };
        if let Some(w) = window {
            allowed = allowed.f_logical_and(&q.f_sub(&k)?.f_lt(w)?)?;
        }
        let allowed = match key_valid {
            Some(valid) => allowed.f_unsqueeze(0)?.f_logical_and(&valid.f_unsqueeze(1)?)?.f_logical_or(&k.f_eq_tensor(&q)?)?,
            None => allowed.f_unsqueeze(0)?,
        };
        Ok(allowed.f_unsqueeze(1)?)
    }

    /// Applies a norm in f32 (or f64 for f64 models); fires `hook_scale` and `hook_normalized` when someone listens.
    fn norm(&self, n: &Norm, x: &Tensor, run: &mut Run, points: Option<(HookPoint, HookPoint)>) -> Result<Tensor> {
        if n.kind == NormKind::Identity {
            return Ok(x.shallow_clone());
        }
        let acc = self.accumulate_kind();
        let x32 = x.f_to_kind(acc)?;
        let hooked = points.filter(|(s, nz)| run.active(*s) || run.active(*nz));
        let out = match (hooked, n.kind) {
            (None, NormKind::LayerNorm) => {
                let d = x.size()[x.dim() - 1];
                x32.f_layer_norm([d], n.w.as_ref(), n.b.as_ref(), n.eps, false)?
            }
            (None, NormKind::RmsNorm) => {
                let y = x32.f_mul(&x32.f_square()?.f_mean_dim(-1, true, acc)?.f_add_scalar(n.eps)?.f_rsqrt()?)?;
                match &n.w {
                    Some(w) => y.f_mul(w)?,
                    None => y,
                }
            }
            (None, NormKind::Identity) => unreachable!("returned above"),
            (Some((scale_point, normalized_point)), kind) => {
                let centred = kind.centre(&x32, -1)?;
                let scale = centred.f_square()?.f_mean_dim(-1, true, acc)?.f_add_scalar(n.eps)?.f_sqrt()?;
                let scale = run.fire(scale_point, scale)?;
                let mut y = run.fire(normalized_point, centred.f_div(&scale)?)?;
                if let Some(w) = &n.w {
                    y = y.f_mul(w)?;
                }
                if let Some(b) = &n.b {
                    y = y.f_add(b)?;
                }
                y
            }
        };
        Ok(out.f_to_kind(self.kind)?)
    }

    fn block_forward(&self, l: usize, blk: &Block, resid: Tensor, run: &mut Run, ctx: &Ctx, kv: Option<&mut Option<(Tensor, Tensor)>>) -> Result<Tensor> {
        let at = |s| HookPoint::Block(l, s);
        let resid_pre = run.fire(at(BlockSite::ResidPre), resid)?;
        let attn_out = self.attention(l, blk, &resid_pre, run, ctx, kv)?;
        // Past the attention, the last block may run at one position per row.
        let resid_pre = match ctx.rows(l) {
            Some(rows) => at_rows(&resid_pre, rows)?,
            None => resid_pre,
        };
        let Some(mlp) = &blk.mlp else {
            let resid_mid = match self.cfg.parallel_attn_mlp {
                true => resid_pre.f_add(&attn_out)?,
                false => run.fire(at(BlockSite::ResidMid), resid_pre.f_add(&attn_out)?)?,
            };
            return run.fire(at(BlockSite::ResidPost), resid_mid);
        };
        if self.cfg.parallel_attn_mlp {
            let mlp_in = run.fire(at(BlockSite::MlpIn), resid_pre.shallow_clone())?;
            let mlp_out = self.mlp(l, mlp, &mlp_in, run)?;
            let resid_post = resid_pre.f_add(&attn_out)?.f_add(&mlp_out)?;
            return run.fire(at(BlockSite::ResidPost), resid_post);
        }
        // Post-norm blocks: norm(alpha resid + sublayer output) after each sublayer.
        let add = |resid: &Tensor, out: &Tensor, norm: Option<&Norm>, run: &mut Run| -> Result<Tensor> {
            match (self.cfg.post_ln_alpha, norm) {
                (Some(alpha), Some(norm)) => self.norm(norm, &resid.f_mul_scalar(alpha)?.f_add(out)?, run, None),
                _ => Ok(resid.f_add(out)?),
            }
        };
        let resid_mid = add(&resid_pre, &attn_out, blk.ln1_post.as_ref(), run)?;
        let resid_mid = run.fire(at(BlockSite::ResidMid), resid_mid)?;
        let mlp_in = run.fire(at(BlockSite::MlpIn), resid_mid.shallow_clone())?;
        let mlp_out = self.mlp(l, mlp, &mlp_in, run)?;
        let resid_post = add(&resid_mid, &mlp_out, mlp.ln2_post.as_ref(), run)?;
        run.fire(at(BlockSite::ResidPost), resid_post)
    }

    /// q, k, v [batch, pos, heads, d_head] from per-head copies of the block input (opt-in path:
    /// each head may read a different residual stream).
    fn split_qkv(&self, l: usize, blk: &Block, resid_pre: &Tensor, run: &mut Run, ctx: &Ctx) -> Result<(Tensor, Tensor, Tensor)> {
        let c = &self.cfg;
        if run.active(HookPoint::Block(l, BlockSite::Ln1Scale)) || run.active(HookPoint::Block(l, BlockSite::Ln1Normalized)) {
            return Err(Error::HookUnavailable {
                name: format!("blocks.{l}.ln1.*"),
                why: "ln1 runs once per head when per-head q/k/v inputs are hooked; hook those inputs or ln1, not both".into(),
            });
        }
        let (b, p) = (resid_pre.size()[0], resid_pre.size()[1]);
        let w = &blk.attn.qkv.w; // [(h + 2kv) dh, dm]
        let parts =
            [(BlockSite::QInput, 0, c.n_heads), (BlockSite::KInput, c.n_heads, c.n_kv_heads), (BlockSite::VInput, c.n_heads + c.n_kv_heads, c.n_kv_heads)];
        let mut out = Vec::with_capacity(3);
        for (site, first, heads) in parts {
            let x = resid_pre.f_unsqueeze(2)?.f_expand([b, p, heads, c.d_model], false)?;
            let x = run.fire(HookPoint::Block(l, site), x)?;
            let mut x = self.norm(&blk.ln1, &x, run, None)?;
            if let (Some(pos_embed), false) = (&ctx.shortformer, site == BlockSite::VInput) {
                x = x.f_add(&pos_embed.f_unsqueeze(2)?)?;
            }
            let w = w.f_narrow(0, first * c.d_head, heads * c.d_head)?.f_view([heads, c.d_head, c.d_model])?;
            let mut y = Tensor::f_einsum("bphm,hdm->bphd", &[&x, &w], None::<&[i64]>)?;
            if let Some(bias) = &blk.attn.qkv.b {
                y = y.f_add(&bias.f_narrow(0, first * c.d_head, heads * c.d_head)?.f_view([heads, c.d_head])?)?;
            }
            out.push(y);
        }
        let v = out.pop().expect("three parts");
        let k = out.pop().expect("three parts");
        let q = out.pop().expect("three parts");
        Ok((q, k, v))
    }

    fn attention(&self, l: usize, blk: &Block, resid_pre: &Tensor, run: &mut Run, ctx: &Ctx, kv: Option<&mut Option<(Tensor, Tensor)>>) -> Result<Tensor> {
        let c = &self.cfg;
        let at = |s| HookPoint::Block(l, s);
        let (b, p, h, nkv, dh) = (ctx.batch, ctx.pos, c.n_heads, c.n_kv_heads, c.d_head);
        let split = [BlockSite::QInput, BlockSite::KInput, BlockSite::VInput].into_iter().any(|s| run.active(at(s)));
        if run.replaced(at(BlockSite::Pattern)) && !split && kv.is_none() && ctx.rows(l).is_none() {
            // The pattern is given: only the values are needed.
            let x = self.norm(&blk.ln1, resid_pre, run, Some((at(BlockSite::Ln1Scale), at(BlockSite::Ln1Normalized))))?;
            let v = blk.attn.qkv.forward_rows(&x, (h + nkv) * dh, nkv * dh)?.f_reshape([b, p, nkv, dh])?;
            let v = run.fire(at(BlockSite::V), v)?.f_transpose(1, 2)?;
            let pattern = run.fire_replaced(at(BlockSite::Pattern), &[b, h, p, p])?;
            return self.attend(l, blk, &pattern, &v, run);
        }
        let (q, k, v) = if split {
            self.split_qkv(l, blk, resid_pre, run, ctx)?
        } else {
            let x = self.norm(&blk.ln1, resid_pre, run, Some((at(BlockSite::Ln1Scale), at(BlockSite::Ln1Normalized))))?;
            let qkv = match &ctx.shortformer {
                // q and k read the normed input plus the position embeddings, v the normed input.
                Some(pos_embed) => {
                    let lin = &blk.attn.qkv;
                    let qk = lin.forward_rows(&x.f_add(pos_embed)?, 0, (h + nkv) * dh)?;
                    Tensor::f_cat(&[qk, lin.forward_rows(&x, (h + nkv) * dh, nkv * dh)?], 2)?
                }
                None => blk.attn.qkv.forward(&x)?,
            };
            (
                qkv.f_narrow(2, 0, h * dh)?.f_reshape([b, p, h, dh])?,
                qkv.f_narrow(2, h * dh, nkv * dh)?.f_reshape([b, p, nkv, dh])?,
                qkv.f_narrow(2, (h + nkv) * dh, nkv * dh)?.f_reshape([b, p, nkv, dh])?,
            )
        };
        let mut q = run.fire(at(BlockSite::Q), q)?;
        let mut k = run.fire(at(BlockSite::K), k)?;
        let v = run.fire(at(BlockSite::V), v)?;
        // Per head over d_head (Qwen3), or over all heads together (OLMo 2).
        let whole = c.qk_norm == QkNorm::WholeProjection;
        let qk_norm = |n: &Norm, x: &Tensor, points, run: &mut Run| -> Result<Tensor> {
            match whole {
                true => Ok(self.norm(n, &x.f_flatten(2, 3)?, run, Some(points))?.f_view_as(x)?),
                false => self.norm(n, x, run, Some(points)),
            }
        };
        if let Some(n) = &blk.attn.q_norm {
            q = qk_norm(n, &q, (at(BlockSite::QNormScale), at(BlockSite::QNormNormalized)), run)?;
        }
        if let Some(n) = &blk.attn.k_norm {
            k = qk_norm(n, &k, (at(BlockSite::KNormScale), at(BlockSite::KNormNormalized)), run)?;
        }
        let rotary = match (c.sliding_window[l], &ctx.rotary_local) {
            (Some(_), Some(local)) => Some(local),
            _ => ctx.rotary.as_ref(),
        };
        if let Some((cos, sin)) = rotary {
            q = run.fire(at(BlockSite::RotQ), apply_rotary(&q, cos, sin)?)?;
            k = run.fire(at(BlockSite::RotK), apply_rotary(&k, cos, sin)?)?;
        }
        // [batch, heads, pos, d_head]; with a KV cache, keys and values span all positions so far.
        let (mut k, mut v) = (k.f_transpose(1, 2)?, v.f_transpose(1, 2)?);
        if let Some(slot) = kv {
            if let Some((pk, pv)) = slot.take() {
                k = Tensor::f_cat(&[pk, k], 2)?;
                v = Tensor::f_cat(&[pv, v], 2)?;
            }
            *slot = Some((k.shallow_clone(), v.shallow_clone()));
        }
        let t = k.size()[2];
        // Queries only at `rows` (one per row): keys and values stay at every position.
        let (q, p, allowed) = match ctx.rows(l) {
            Some(rows) => {
                let mask = ctx.mask(c.sliding_window[l]);
                let mask = mask.f_expand([b, 1, p, t], false)?.f_gather(2, &rows.f_view([b, 1, 1, 1])?.f_expand([b, 1, 1, t], false)?, false)?;
                (at_rows(&q, rows)?, 1, mask)
            }
            None => (q, p, ctx.mask(c.sliding_window[l]).shallow_clone()),
        };
        let g = h / nkv; // query heads per kv head: grouped without repeating k and v
        let q = q.f_transpose(1, 2)?.f_reshape([b, nkv, g, p, dh])?;
        let mut scale = c.attn_scale;
        if c.scale_attn_by_inverse_layer_idx {
            scale /= (l + 1) as f64;
        }
        let mut scores = q.f_matmul(&k.f_unsqueeze(2)?.f_transpose(-1, -2)?)?.f_reshape([b, h, p, t])?.f_mul_scalar(scale)?;
        if let Some(cap) = c.attn_softcap {
            scores = scores.f_div_scalar(cap)?.f_tanh()?.f_mul_scalar(cap)?;
        }
        let scores = run.fire(at(BlockSite::AttnScores), scores.f_masked_fill(&allowed.f_logical_not()?, f64::NEG_INFINITY)?)?;
        let pattern = run.fire(at(BlockSite::Pattern), scores.f_softmax(-1, self.accumulate_kind())?.f_to_kind(self.kind)?)?;
        self.attend(l, blk, &pattern, &v, run)
    }

    /// The attention output from the pattern [batch, heads, queries, keys] and the values
    /// [batch, kv heads, keys, d_head]: z, the per-head results when hooked, the output projection.
    fn attend(&self, l: usize, blk: &Block, pattern: &Tensor, v: &Tensor, run: &mut Run) -> Result<Tensor> {
        let c = &self.cfg;
        let at = |s| HookPoint::Block(l, s);
        let (b, h, p, t) = pattern.size4()?;
        let (nkv, dh, dm) = (c.n_kv_heads, c.d_head, c.d_model);
        let g = h / nkv;
        let z = pattern.f_reshape([b, nkv, g, p, t])?.f_matmul(&v.f_unsqueeze(2)?)?.f_reshape([b, h, p, dh])?.f_transpose(1, 2)?;
        let z = run.fire(at(BlockSite::Z), z)?;
        let o = &blk.attn.o;
        let mut out = if run.active(at(BlockSite::Result)) {
            let w_o = o.w.f_view([dm, h, dh])?;
            let result = Tensor::f_einsum("bphd,mhd->bphm", &[&z, &w_o], None::<&[i64]>)?;
            let result = run.fire(at(BlockSite::Result), result)?;
            let summed = result.f_sum_dim_intlist(2, false, self.kind)?;
            match &o.b {
                Some(bias) => summed.f_add(bias)?,
                None => summed,
            }
        } else {
            o.forward(&z.f_reshape([b, p, h * dh])?)?
        };
        if let (Some(post), None) = (&blk.ln1_post, self.cfg.post_ln_alpha) {
            out = self.norm(post, &out, run, None)?;
        }
        run.fire(at(BlockSite::AttnOut), out)
    }

    fn mlp(&self, l: usize, m: &Mlp, mlp_in: &Tensor, run: &mut Run) -> Result<Tensor> {
        let at = |s| HookPoint::Block(l, s);
        let x = self.norm(&m.ln2, mlp_in, run, Some((at(BlockSite::Ln2Scale), at(BlockSite::Ln2Normalized))))?;
        if run.replaced(at(BlockSite::MlpOut)) {
            return run.fire_replaced(at(BlockSite::MlpOut), &mlp_in.size());
        }
        let mut out = match (&m.moe, &self.cfg.moe) {
            (Some(moe), Some(sizes)) => self.moe(l, m, moe, sizes, &x, run)?,
            _ => self.dense_mlp(l, m, &x, run)?,
        };
        if let (Some(norm), None) = (&m.ln2_post, self.cfg.post_ln_alpha) {
            out = self.norm(norm, &out, run, None)?;
        }
        run.fire(at(BlockSite::MlpOut), out)
    }

    /// A dense MLP's output from its normed input `x`.
    fn dense_mlp(&self, l: usize, m: &Mlp, x: &Tensor, run: &mut Run) -> Result<Tensor> {
        let at = |s| HookPoint::Block(l, s);
        let post = match &m.w_gate {
            Some(gate) => {
                let pre = run.fire(at(BlockSite::MlpPre), gate.forward(x)?)?;
                let pre_linear = run.fire(at(BlockSite::MlpPreLinear), m.w_in.forward(x)?)?;
                self.act(&pre)?.f_mul(&pre_linear)?
            }
            None => self.act(&run.fire(at(BlockSite::MlpPre), m.w_in.forward(x)?)?)?,
        };
        let post = match &m.ln {
            Some(ln) => {
                let mid = run.fire(at(BlockSite::MlpMid), post)?;
                self.norm(ln, &mid, run, Some((at(BlockSite::MlpLnScale), at(BlockSite::MlpLnNormalized))))?
            }
            None => post,
        };
        let post = run.fire(at(BlockSite::MlpPost), post)?;
        m.w_out.forward(&post)
    }

    /// A mixture of experts' output from its normed input `x` [batch, pos, d_model]: the router's
    /// softmax, its top-k (ties broken as `torch.topk`), the weights at the chosen experts
    /// (renormalised where the model does), each expert on its tokens, the weighted sum, and any
    /// shared expert.
    fn moe(&self, l: usize, m: &Mlp, moe: &Moe, sizes: &MoeConfig, x: &Tensor, run: &mut Run) -> Result<Tensor> {
        let at = |s| HookPoint::Block(l, s);
        let (b, p, dm) = (x.size()[0], x.size()[1], self.cfg.d_model);
        let (n_experts, k, de) = (sizes.n_experts, sizes.top_k, sizes.d_expert);
        let logits = run.fire(at(BlockSite::RouterLogits), moe.router.forward(x)?)?;
        let probs = logits.f_softmax(-1, self.accumulate_kind())?;
        let (_, chosen) = probs.f_topk(k, -1, true, true)?;
        let chosen = run.fire(at(BlockSite::ExpertIndices), chosen)?;
        let in_range = chosen.kind() == Kind::Int64
            && chosen.size() == [b, p, k]
            && (chosen.numel() == 0 || (chosen.f_min()?.int64_value(&[]) >= 0 && chosen.f_max()?.int64_value(&[]) < n_experts));
        if !in_range {
            return Err(Error::Input(format!(
                "blocks.{l}.mlp.hook_expert_indices must stay int64 [{b}, {p}, {k}] with experts in 0..{n_experts}, found {:?} {:?}",
                chosen.kind(),
                chosen.size()
            )));
        }
        let mut weights = probs.f_gather(-1, &chosen, false)?;
        if sizes.norm_topk_prob {
            weights = weights.f_div(&weights.f_sum_dim_intlist(-1, true, weights.kind())?)?;
        }
        let weights = run.fire(at(BlockSite::ExpertWeights), weights.f_to_kind(self.kind)?)?;
        let (flat_x, flat_chosen, flat_w) = (x.f_reshape([-1, dm])?, chosen.f_reshape([-1, k])?, weights.f_reshape([-1, k])?);
        let Some(w_gate) = &m.w_gate else { return Err(Error::Config("mixture-of-experts MLPs are gated; this one has no gate".into())) };
        let per_expert = run.active(at(BlockSite::ExpertOut));
        let zeros = flat_x.f_zeros_like()?;
        let (mut sum, mut each) = (zeros.shallow_clone(), Vec::new());
        for e in 0..n_experts {
            // (token, slot) pairs routed to expert e.
            let hits = flat_chosen.f_eq(e)?.f_nonzero()?;
            let y = if hits.size()[0] == 0 {
                None
            } else {
                let (token, slot) = (hits.f_select(1, 0)?, hits.f_select(1, 1)?);
                let xe = flat_x.f_index_select(0, &token)?;
                // Expert e's rows of the stacked gate and up projections (and of their biases,
                // which fold_ln may add), its columns of the down one.
                let narrow = |w: &Tensor, dim| w.f_narrow(dim, e * de, de);
                let rows = |lin: &Linear| -> Result<Tensor> {
                    let b = lin.b.as_ref().map(|b| narrow(b, 0)).transpose()?;
                    Ok(xe.f_linear(&narrow(&lin.w, 0)?, b.as_ref())?)
                };
                let h = self.act(&rows(w_gate)?)?.f_mul(&rows(&m.w_in)?)?;
                let scale = flat_w.f_index(&[Some(&token), Some(&slot)])?.f_unsqueeze(-1)?;
                Some((token, h.f_linear(&narrow(&m.w_out.w, 1)?, None::<&Tensor>)?.f_mul(&scale)?))
            };
            match (per_expert, y) {
                (false, Some((token, y))) => sum = sum.f_index_add(0, &token, &y)?,
                (false, None) => {}
                (true, Some((token, y))) => each.push(zeros.f_index_add(0, &token, &y)?),
                (true, None) => each.push(zeros.shallow_clone()),
            }
        }
        let mut out = match per_expert {
            true => {
                let each = run.fire(at(BlockSite::ExpertOut), Tensor::f_stack(&each, 1)?.f_reshape([b, p, n_experts, dm])?)?;
                each.f_sum_dim_intlist(2, false, self.kind)?
            }
            false => sum.f_reshape([b, p, dm])?,
        };
        if let Some(s) = &moe.shared {
            let h = self.act(&s.w_gate.forward(x)?)?.f_mul(&s.w_in.forward(x)?)?;
            let y = s.w_out.forward(&h)?.f_mul(&s.gate.forward(x)?.f_sigmoid()?)?;
            out = out.f_add(&run.fire(at(BlockSite::SharedExpertOut), y)?)?;
        }
        Ok(out)
    }
}
