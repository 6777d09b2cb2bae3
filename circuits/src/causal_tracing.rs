//! Causal tracing (ROME): corrupt the subject, then restore clean hidden states one (token, layer)
//! at a time and measure how much of the answer's probability comes back.
//!
//! Every cell of a prompt's grid, for the residual stream, MLP and attention windows (and the
//! severed-MLP variant), runs in a few batched forwards: the rows are cells x noise samples.

use std::ops::Range;

use interp_core::{BlockSite, CacheSpec, HookName, HookPoint, HookedTransformer, Hooks, KvCache};
use tch::{Kind, Tensor};

use crate::error::{Error, Result};

/// How the subject is corrupted.
#[derive(Debug)]
pub enum Corruption {
    /// Gaussian noise of standard deviation `scale * sigma` added to the subject's token
    /// embeddings (ROME: scale 3, sigma from [`estimate_sigma`]), `samples` draws from `seed`.
    Noise {
        /// Standard deviation of the embeddings the noise is scaled to.
        sigma: f64,
        /// Noise standard deviation in units of `sigma`.
        scale: f64,
        /// Noise draws per prompt.
        samples: usize,
        /// Seed of the draws.
        seed: u64,
    },
    /// The subject tokens replaced by these (as many) tokens.
    Replace {
        /// The replacement tokens.
        tokens: Vec<i64>,
    },
    /// This noise [samples, subject tokens, d_model] added to the subject's token embeddings.
    Explicit {
        /// [samples, subject tokens, d_model].
        noise: Tensor,
    },
}

/// A prompt to trace.
#[derive(Clone, Debug)]
pub struct TracePrompt {
    /// Token ids, BOS first if the model expects it.
    pub tokens: Vec<i64>,
    /// Positions of the subject tokens.
    pub subject: Range<usize>,
    /// The answer token predicted at the last position.
    pub answer: i64,
    /// Prompts are averaged within a label (e.g. known facts vs guesswork), never across.
    pub label: String,
}

impl TracePrompt {
    /// Finds `subject` (a token sequence) in `tokens`; an error if it does not occur.
    pub fn new(tokens: Vec<i64>, subject: &[i64], answer: i64, label: impl Into<String>) -> Result<TracePrompt> {
        if subject.is_empty() || tokens.len() < 2 {
            return Err(Error::Input("a trace needs a non-empty subject and a prompt of at least two tokens".into()));
        }
        let start = tokens
            .windows(subject.len())
            .rposition(|w| w == subject)
            .ok_or_else(|| Error::Input(format!("subject tokens {subject:?} not found in the prompt {tokens:?}")))?;
        if start + subject.len() == tokens.len() {
            return Err(Error::Input("the subject must come before the last token".into()));
        }
        Ok(TracePrompt { tokens, subject: start..start + subject.len(), answer, label: label.into() })
    }
}

/// Causal-tracing settings.
#[derive(Debug)]
pub struct TraceConfig {
    /// How the subject is corrupted.
    pub corruption: Corruption,
    /// MLP and attention outputs are restored over `window` consecutive layers around each layer
    /// (ROME: 10, layers l - 5 .. l + 4, clipped).
    pub window: usize,
    /// Also trace with the MLPs after each restored layer frozen at their corrupted outputs.
    pub severed_mlp: bool,
    /// Most rows (cells x samples) per forward.
    pub max_rows: i64,
}

/// One prompt's trace. Grids are [pos, n_layers] probabilities of the answer.
pub struct CausalTrace {
    /// The prompt traced.
    pub prompt: TracePrompt,
    /// Probability of the answer on the clean prompt.
    pub p_clean: f64,
    /// Probability of the answer with the subject corrupted (mean over samples).
    pub p_corrupt: f64,
    /// Residual stream (`hook_resid_post`) restored at (pos, layer).
    pub resid: Tensor,
    /// MLP outputs restored at pos over the window around layer.
    pub mlp: Tensor,
    /// Attention outputs restored at pos over the window around layer.
    pub attn: Tensor,
    /// Residual restored with the later MLPs at pos frozen to their corrupted outputs.
    pub severed_mlp: Option<Tensor>,
    /// Forward passes run.
    pub forwards: usize,
}

impl CausalTrace {
    /// p_clean - p_corrupt.
    pub fn total_effect(&self) -> f64 {
        self.p_clean - self.p_corrupt
    }

    /// Grid - p_corrupt.
    pub fn indirect_effect(&self, grid: &Tensor) -> Result<Tensor> {
        Ok(grid.f_sub_scalar(self.p_corrupt)?)
    }
}

/// Token roles that grids of different prompts are aligned by when averaged (as in ROME).
pub const TOKEN_ROLES: [&str; 6] = ["first subject", "middle subject", "last subject", "first after", "further tokens", "last token"];

/// The index into [`TOKEN_ROLES`] of position `pos` of `p`.
pub fn token_role(p: &TracePrompt, pos: usize) -> usize {
    let last = p.tokens.len() - 1;
    match pos {
        _ if pos == last => 5,
        _ if pos + 1 == p.subject.end => 2,
        _ if pos == p.subject.start => 0,
        _ if p.subject.contains(&pos) => 1,
        _ if pos == p.subject.end => 3,
        _ => 4,
    }
}

/// Standard deviation of the token embeddings (`hook_embed`) over `tokens` [n, pos]: ROME's
/// noise level is 3 times this.
pub fn estimate_sigma(model: &HookedTransformer, tokens: &Tensor) -> Result<f64> {
    Ok(token_embeddings(model, tokens)?.f_to_kind(Kind::Double)?.f_std(true)?.f_double_value(&[])?)
}

/// [`estimate_sigma`] over prompts of any lengths: the standard deviation of all their token
/// embeddings together.
pub fn estimate_sigma_of(model: &HookedTransformer, prompts: &[TracePrompt]) -> Result<f64> {
    let embeds = prompts
        .iter()
        .map(|p| Ok(token_embeddings(model, &Tensor::f_from_slice(&p.tokens)?.f_view([1, -1])?.f_to_device(model.device())?)?.f_flatten(0, 1)?))
        .collect::<Result<Vec<Tensor>>>()?;
    Ok(Tensor::f_cat(&embeds, 0)?.f_to_kind(Kind::Double)?.f_std(true)?.f_double_value(&[])?)
}

/// `hook_embed` [n, pos, d_model] of `tokens` [n, pos], without running any block.
fn token_embeddings(model: &HookedTransformer, tokens: &Tensor) -> Result<Tensor> {
    let out = model.runner(tokens).stop_at_layer(0).cache(CacheSpec::names(["hook_embed"])).run()?;
    let cache = out.cache.ok_or_else(|| Error::Input("no embeddings cached".into()))?;
    Ok(cache.get("hook_embed")?.shallow_clone())
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Site {
    Resid,
    Mlp,
    Attn,
}

/// One row group: clean values restored at (site, pos, layer), MLP outputs frozen to their
/// corrupted values at (pos, layer).
#[derive(Default, Clone)]
struct Variant {
    restore: Vec<(Site, usize, usize)>,
    freeze: Vec<(usize, usize)>,
}

struct Tracer<'a> {
    model: &'a HookedTransformer,
    tokens: Tensor,
    answer: i64,
    /// Clean activations [L, P, D] per site.
    clean: [Tensor; 3],
    /// The corrupted run ([S] noise samples): the residual entering each block [L, S, P, D],
    /// every layer's keys and values, the MLP outputs [S, L, P, D] (for the severed variant),
    /// and the answer's probability (mean over samples).
    corrupt_resid: Tensor,
    corrupt_kv: KvCache,
    corrupt_mlp: Option<Tensor>,
    p_corrupt: f64,
    max_rows: i64,
    forwards: usize,
}

impl<'a> Tracer<'a> {
    /// The clean activations and the corrupted run (keeping its MLP outputs with `keep_mlp`).
    fn new(model: &'a HookedTransformer, prompt: &TracePrompt, corruption: &Corruption, max_rows: i64, keep_mlp: bool) -> Result<Tracer<'a>> {
        let c = &model.cfg;
        let p = prompt.tokens.len() as i64;
        if let Some(&id) = prompt.tokens.iter().find(|t| !(0..c.d_vocab).contains(*t)) {
            return Err(interp_core::Error::TokenOutOfVocabulary { id, d_vocab: c.d_vocab }.into());
        }
        if !(0..c.d_vocab_out).contains(&prompt.answer) {
            return Err(interp_core::Error::TokenOutOfVocabulary { id: prompt.answer, d_vocab: c.d_vocab_out }.into());
        }
        let tokens = Tensor::f_from_slice(&prompt.tokens)?.f_view([1, p])?.f_to_device(model.device())?;
        let mut names = vec![HookPoint::Embed.hook_name(), BlockSite::ResidPost.hook_name(), BlockSite::AttnOut.hook_name()];
        if !c.attn_only {
            names.push(BlockSite::MlpOut.hook_name());
        }
        let (_, cache) = model.run_with_cache(&tokens, CacheSpec::names(names))?;
        let embed = cache.get("hook_embed")?.f_select(0, 0)?; // [P, D]
        let (s0, n_subj) = (prompt.subject.start as i64, prompt.subject.len() as i64);
        let corrupt_embed = match corruption {
            Corruption::Noise { sigma, scale, samples, seed } => {
                if *samples == 0 {
                    return Err(Error::setting("samples", samples, "at least 1 noise sample"));
                }
                if !(sigma.is_finite() && *sigma > 0.0) {
                    return Err(Error::setting("sigma", sigma, "a positive number (the noise's standard deviation)"));
                }
                let noise = gaussian(*samples as i64 * n_subj * c.d_model, *seed)?.f_view([*samples as i64, n_subj, c.d_model])?;
                add_noise(&embed, &noise.f_mul_scalar(scale * sigma)?, s0)?
            }
            Corruption::Explicit { noise } => {
                let s = noise.size();
                if s.len() != 3 || s[1] != n_subj || s[2] != c.d_model {
                    return Err(Error::Shape { what: "the noise".into(), expected: format!("[samples, {n_subj}, {}]", c.d_model), found: s });
                }
                add_noise(&embed, noise, s0)?
            }
            Corruption::Replace { tokens: repl } => {
                if repl.len() as i64 != n_subj {
                    return Err(Error::Input(format!("{} replacement tokens for a subject of {n_subj}", repl.len())));
                }
                let mut toks = prompt.tokens.clone();
                toks.splice(prompt.subject.clone(), repl.iter().copied());
                let t = Tensor::f_from_slice(&toks)?.f_view([1, p])?.f_to_device(model.device())?;
                token_embeddings(model, &t)?
            }
        };
        let stack = |site: BlockSite| -> Result<Tensor> {
            if c.attn_only && site == BlockSite::MlpOut {
                return Ok(Tensor::f_zeros([c.n_layers as i64, p, c.d_model], (model.kind(), model.device()))?);
            }
            let layers: Vec<Tensor> = (0..c.n_layers).map(|l| Ok(cache.get(HookPoint::block(l, site))?.f_select(0, 0)?)).collect::<Result<_>>()?;
            Ok(Tensor::f_stack(&layers, 0)?)
        };
        let clean = [stack(BlockSite::ResidPost)?, stack(BlockSite::MlpOut)?, stack(BlockSite::AttnOut)?];

        // The corrupted run, whose residuals, keys and values every restored run starts from.
        let s = corrupt_embed.size()[0];
        let batch = tokens.f_expand([s, p], false)?;
        let mut corrupt_kv = KvCache::new(c.n_layers);
        let mut names = vec![BlockSite::ResidPre];
        if keep_mlp && !c.attn_only {
            names.push(BlockSite::MlpOut);
        }
        let out = model
            .runner(&batch)
            .hooks(Hooks::new().add("hook_embed", |_, _| Ok(Some(corrupt_embed.shallow_clone()))))
            .cache(CacheSpec::names(names))
            .kv_cache(&mut corrupt_kv)
            .stop_at_layer(c.n_layers)
            .run()?;
        let cache = out.cache.ok_or_else(|| Error::Input("the corrupted run cached nothing".into()))?;
        let per_layer = |site: BlockSite, dim: i64| -> Result<Tensor> {
            let layers: Vec<Tensor> = (0..c.n_layers).map(|l| Ok(cache.get(HookPoint::block(l, site))?.shallow_clone())).collect::<Result<_>>()?;
            Ok(Tensor::f_stack(&layers, dim)?)
        };
        let corrupt_resid = per_layer(BlockSite::ResidPre, 0)?;
        let corrupt_mlp = if keep_mlp && !c.attn_only { Some(per_layer(BlockSite::MlpOut, 1)?) } else { None };
        let p_corrupt = answer_probability(&last_logits(model, &out.output)?, prompt.answer)?.f_mean(Kind::Double)?.f_double_value(&[])?;
        Ok(Tracer { model, tokens, answer: prompt.answer, clean, corrupt_resid, corrupt_kv, corrupt_mlp, p_corrupt, max_rows, forwards: 1 })
    }

    fn samples(&self) -> i64 {
        self.corrupt_resid.size()[1]
    }

    /// Probability of the answer for each variant, averaged over noise samples. A variant runs
    /// from the first block and position it restores or freezes: before them it is the corrupted
    /// run (causal attention), whose residual, keys and values it starts from; only the last
    /// position is unembedded.
    fn run(&mut self, variants: &[Variant]) -> Result<Vec<f64>> {
        let c = &self.model.cfg;
        let (s, p, d) = (self.samples(), self.tokens.size()[1], c.d_model);
        let per = (self.max_rows / s).max(1) as usize;
        let mut out = vec![self.p_corrupt; variants.len()];
        let mut groups: std::collections::BTreeMap<(usize, usize), Vec<usize>> = std::collections::BTreeMap::new();
        for (i, var) in variants.iter().enumerate() {
            let layer = var.restore.iter().map(|r| r.2).chain(var.freeze.iter().map(|f| f.1)).min();
            let pos = var.restore.iter().map(|r| r.1).chain(var.freeze.iter().map(|f| f.0)).min();
            if let (Some(layer), Some(pos)) = (layer, pos) {
                groups.entry((layer, pos)).or_default().push(i);
            }
        }
        for ((start, first), members) in groups {
            let n = p - first as i64; // positions run
            for ids in members.chunks(per) {
                let chunk: Vec<Variant> = ids.iter().map(|&i| variants[i].clone()).collect();
                let v = chunk.len() as i64;
                let mut hooks = Hooks::new();
                for l in start..c.n_layers {
                    for (site, point) in [(Site::Resid, BlockSite::ResidPost), (Site::Mlp, BlockSite::MlpOut), (Site::Attn, BlockSite::AttnOut)] {
                        if site == Site::Mlp && c.attn_only {
                            continue;
                        }
                        let restore = row_mask(&chunk, n, |var| var.restore.iter().filter(|r| r.0 == site && r.2 == l).map(|r| r.1 - first).collect())?;
                        let freeze = if site == Site::Mlp {
                            row_mask(&chunk, n, |var| var.freeze.iter().filter(|f| f.1 == l).map(|f| f.0 - first).collect())?
                        } else {
                            None
                        };
                        if restore.is_none() && freeze.is_none() {
                            continue;
                        }
                        let clean = self.clean[site as usize].f_select(0, l as i64)?.f_narrow(0, first as i64, n)?; // [n, D]
                        let frozen = match (&freeze, &self.corrupt_mlp) {
                            (Some(_), Some(m)) => Some(m.f_select(1, l as i64)?.f_narrow(1, first as i64, n)?.f_unsqueeze(0)?), // [1, S, n, D]
                            (Some(_), None) => return Err(Error::Input("severed MLPs need the corrupted run's MLP outputs".into())),
                            _ => None,
                        };
                        hooks = hooks.add(HookPoint::block(l, point), move |x, _| {
                            let mut y = x.f_view([v, s, n, d])?;
                            if let Some(m) = &restore {
                                y = clean.f_expand_as(&y)?.f_where_self(m, &y)?;
                            }
                            if let (Some(m), Some(f)) = (&freeze, &frozen) {
                                y = f.f_expand_as(&y)?.f_where_self(m, &y)?;
                            }
                            Ok(Some(y.f_reshape([v * s, n, d])?))
                        });
                    }
                }
                let resid = self.corrupt_resid.f_select(0, start as i64)?.f_narrow(1, first as i64, n)?.f_repeat([v, 1, 1])?;
                let mut kv = self.corrupt_kv.prefix(first as i64, v)?;
                let resid = self.model.runner_from_layer(&resid, start).kv_cache(&mut kv).hooks(hooks).stop_at_layer(c.n_layers).run()?.output;
                let logits = last_logits(self.model, &resid)?;
                self.forwards += 1;
                let prob = answer_probability(&logits, self.answer)?.f_view([v, s])?.f_mean_dim(1, false, Kind::Double)?;
                for (&i, x) in ids.iter().zip(Vec::<f64>::try_from(&prob)?) {
                    out[i] = x;
                }
            }
        }
        Ok(out)
    }
}

/// Logits [rows, 1, vocab] at the last position of the final residual `resid` [rows, pos, D].
fn last_logits(model: &HookedTransformer, resid: &Tensor) -> Result<Tensor> {
    let last = resid.f_narrow(1, resid.size()[1] - 1, 1)?;
    Ok(model.runner_from_layer(&last, model.cfg.n_layers).run()?.output)
}

/// The answer's probability at the last position of `logits` [rows, pos, vocab]: [rows] f64.
fn answer_probability(logits: &Tensor, answer: i64) -> Result<Tensor> {
    Ok(logits.f_select(1, -1)?.f_to_kind(Kind::Double)?.f_softmax(-1, Kind::Double)?.f_select(1, answer)?)
}

/// [V, 1, P, 1] true at the positions `pick` returns for each variant; `None` if none anywhere.
fn row_mask(variants: &[Variant], p: i64, pick: impl Fn(&Variant) -> Vec<usize>) -> Result<Option<Tensor>> {
    let mut m = vec![false; variants.len() * p as usize];
    let mut any = false;
    for (i, var) in variants.iter().enumerate() {
        for pos in pick(var) {
            m[i * p as usize + pos] = true;
            any = true;
        }
    }
    if !any {
        return Ok(None);
    }
    Ok(Some(Tensor::f_from_slice(&m)?.f_view([variants.len() as i64, 1, p, 1])?))
}

/// `embed` [P, D] with `noise` [S, n, D] added at positions `start..start + n`: [S, P, D].
fn add_noise(embed: &Tensor, noise: &Tensor, start: i64) -> Result<Tensor> {
    let s = noise.size()[0];
    let out = embed.f_unsqueeze(0)?.f_repeat([s, 1, 1])?;
    let mut window = out.f_narrow(1, start, noise.size()[1])?;
    let _ = window.f_add_(&noise.f_to_kind(out.kind())?.f_to_device(out.device())?)?;
    Ok(out)
}

/// `n` standard normal draws from `seed`: the same on every machine.
fn gaussian(n: i64, seed: u64) -> Result<Tensor> {
    Ok(interp_core::Rng::new(seed).normal_tensor(&[n])?)
}

/// ROME's window of layers around `l`: `l - window / 2 .. l + ceil(window / 2)`, clipped.
fn window(l: usize, window: usize, n_layers: usize) -> Range<usize> {
    l.saturating_sub(window / 2)..(l + window.div_ceil(2)).min(n_layers).max(l + 1)
}

/// Traces one prompt: every (pos, layer) cell for the residual stream, MLP and attention
/// windows, and optionally severed MLPs.
pub fn causal_trace(model: &HookedTransformer, prompt: &TracePrompt, cfg: &TraceConfig) -> Result<CausalTrace> {
    let (p, l) = (prompt.tokens.len(), model.cfg.n_layers);
    let mut tracer = Tracer::new(model, prompt, &cfg.corruption, cfg.max_rows, cfg.severed_mlp)?;
    let p_clean = answer_probability(&model.forward(&tracer.tokens)?, prompt.answer)?.f_double_value(&[0])?;
    tracer.forwards += 1;
    let p_corrupt = tracer.p_corrupt;
    let cells: Vec<(usize, usize)> = (0..p).flat_map(|t| (0..l).map(move |layer| (t, layer))).collect();
    let mut variants = Vec::new();
    for site in [Site::Resid, Site::Mlp, Site::Attn] {
        for &(t, layer) in &cells {
            let restore = match site {
                Site::Resid => vec![(site, t, layer)],
                _ => window(layer, cfg.window, l).map(|w| (site, t, w)).collect(),
            };
            variants.push(Variant { restore, freeze: vec![] });
        }
    }
    if cfg.severed_mlp {
        for &(t, layer) in &cells {
            variants.push(Variant { restore: vec![(Site::Resid, t, layer)], freeze: (layer + 1..l).map(|w| (t, w)).collect() });
        }
    }
    let probs = tracer.run(&variants)?;
    let grid = |k: usize| -> Result<Tensor> { Ok(Tensor::f_from_slice(&probs[k * p * l..(k + 1) * p * l])?.f_view([p as i64, l as i64])?) };
    Ok(CausalTrace {
        prompt: prompt.clone(),
        p_clean,
        p_corrupt,
        resid: grid(0)?,
        mlp: grid(1)?,
        attn: grid(2)?,
        severed_mlp: if cfg.severed_mlp { Some(grid(3)?) } else { None },
        forwards: tracer.forwards,
    })
}

/// The answer's probability under `corruption` with the clean residual stream restored at every
/// `(pos, layer)` in `cells` at once.
pub fn restored_probability(model: &HookedTransformer, prompt: &TracePrompt, corruption: &Corruption, cells: &[(usize, usize)]) -> Result<f64> {
    let (p, l) = (prompt.tokens.len(), model.cfg.n_layers);
    if let Some(bad) = cells.iter().find(|(t, layer)| *t >= p || *layer >= l) {
        return Err(Error::Input(format!("cell {bad:?} outside the prompt's {p} positions x {l} layers")));
    }
    let mut tracer = Tracer::new(model, prompt, corruption, 1 << 16, false)?;
    let restore = cells.iter().map(|&(t, layer)| (Site::Resid, t, layer)).collect();
    Ok(tracer.run(&[Variant { restore, freeze: vec![] }])?[0])
}

/// Traces averaged over the prompts of one label, grids aligned by [`TOKEN_ROLES`].
pub struct TraceSummary {
    /// The label.
    pub label: String,
    /// Prompts with this label.
    pub n_prompts: usize,
    /// Mean total effect (p_clean - p_corrupt).
    pub total_effect: f64,
    /// Mean indirect effects [6 roles, n_layers] (AIE) for the residual, MLP and attention grids.
    pub resid: Tensor,
    /// AIE with MLP outputs restored [6 roles, n_layers].
    pub mlp: Tensor,
    /// AIE with attention outputs restored [6 roles, n_layers].
    pub attn: Tensor,
}

/// Average indirect effects per label (labels in order of first appearance).
pub fn summarize(traces: &[CausalTrace]) -> Result<Vec<TraceSummary>> {
    let mut labels: Vec<&str> = Vec::new();
    for t in traces {
        if !labels.contains(&t.prompt.label.as_str()) {
            labels.push(&t.prompt.label);
        }
    }
    labels
        .into_iter()
        .map(|label| {
            let group: Vec<&CausalTrace> = traces.iter().filter(|t| t.prompt.label == label).collect();
            let by_role = |pick: &dyn Fn(&CausalTrace) -> &Tensor| -> Result<Tensor> {
                let l = pick(group[0]).size()[1];
                let sum = Tensor::f_zeros([6, l], (Kind::Double, tch::Device::Cpu))?;
                let count = Tensor::f_zeros([6, 1], (Kind::Double, tch::Device::Cpu))?;
                for t in &group {
                    let ie = t.indirect_effect(pick(t))?.f_to_kind(Kind::Double)?.f_to_device(tch::Device::Cpu)?;
                    // Mean over each role's positions within the prompt, then over prompts.
                    for role in 0..6 {
                        let pos: Vec<i64> = (0..t.prompt.tokens.len()).filter(|&i| token_role(&t.prompt, i) == role).map(|i| i as i64).collect();
                        if pos.is_empty() {
                            continue;
                        }
                        let mean = ie.f_index_select(0, &Tensor::f_from_slice(&pos)?)?.f_mean_dim(0, false, Kind::Double)?;
                        let mut row = sum.f_select(0, role as i64)?;
                        let _ = row.f_add_(&mean)?;
                        let mut c = count.f_select(0, role as i64)?;
                        let _ = c.f_add_scalar_(1.0)?;
                    }
                }
                Ok(sum.f_div(&count.f_clamp_min(1.0)?)?)
            };
            Ok(TraceSummary {
                label: label.to_string(),
                n_prompts: group.len(),
                total_effect: group.iter().map(|t| t.total_effect()).sum::<f64>() / group.len() as f64,
                resid: by_role(&|t| &t.resid)?,
                mlp: by_role(&|t| &t.mlp)?,
                attn: by_role(&|t| &t.attn)?,
            })
        })
        .collect()
}
