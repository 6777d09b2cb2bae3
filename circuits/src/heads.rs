//! What each attention head does on a prompt set with one answer and one wrong token per prompt
//! (IOI-style: the answer is the indirect object, the wrong token the subject): its direct logit
//! attribution, where it attends, its activation-patching effect and its attribution-patching
//! node score, path patching into the output heads' queries, and the roles the IOI paper names,
//! each with the evidence behind it. `interp-report` writes them (`analysis::write_heads`).

use interp_core::config::NormKind;
use interp_core::{BlockSite, CacheSpec, HookName, HookPoint, HookedTransformer, NormSite};
use tch::{Kind, Tensor};

use crate::edge_graph::{EdgeGraph, Qkv, Receiver, Sender};
use crate::edge_run::EdgeRun;
use crate::error::{Error, Result};
use crate::mib::mib_node_scores;
use crate::patching::{activation_patching, PatchSite};
use crate::prompts::TaskPrompts;

/// A head's score in each role's terms, [layers][heads] each.
pub struct HeadScores {
    /// What the prompts are.
    pub name: String,
    /// Prompts.
    pub n_prompts: usize,
    /// Mean logit(answer) - logit(wrong) at the last position of the clean prompts.
    pub logit_diff: f64,
    /// Direct logit attribution of each head's output to the logit difference at the last
    /// position (the final norm's scale frozen at the clean run's, mean over prompts).
    pub dla: Vec<Vec<f64>>,
    /// `dla` split into the head's direct effect on logit(answer) and on logit(wrong), each
    /// against the mean logit (the unembedding centred over the vocabulary):
    /// `dla = dla_answer - dla_wrong`.
    pub dla_answer: Vec<Vec<f64>>,
    /// See `dla_answer`.
    pub dla_wrong: Vec<Vec<f64>>,
    /// The same for each MLP.
    pub dla_mlp: Vec<f64>,
    /// The embeddings', the attention biases' and the final norm's and unembedding's biases'
    /// share: with the heads and MLPs it sums to `logit_diff`.
    pub dla_rest: f64,
    /// Attention from the last position to the answer token (IO), to the first and to the last
    /// occurrence of the wrong token (S1, S2), mean over the prompts where they occur.
    pub attn_io: Vec<Vec<f64>>,
    /// See `attn_io`.
    pub attn_s1: Vec<Vec<f64>>,
    /// See `attn_io`.
    pub attn_s2: Vec<Vec<f64>>,
    /// Attention from S2 to S1 (duplicate-token heads).
    pub duplicate: Vec<Vec<f64>>,
    /// Attention from S2 to the token after S1 (induction heads).
    pub induction: Vec<Vec<f64>>,
    /// Mean attention from each position to the one before (previous-token heads).
    pub previous: Vec<Vec<f64>>,
    /// Each head's output (`z`) patched from the clean into the corrupted run: the metric's
    /// change as a fraction of clean - corrupted (when asked for: one forward per head).
    pub patching: Option<Vec<Vec<f64>>>,
    /// The sum of the head's outgoing edge scores (attribution patching's node score), when
    /// edge scores were given.
    pub node_score: Option<Vec<Vec<f64>>>,
    /// The sum of the head's edge scores into the queries of the heads with a direct effect
    /// (|DLA| >= 10% of the logit difference: name movers, their negative kind, S suppressors),
    /// the path through which an S-inhibition head acts, when edge scores were given.
    pub into_output_heads: Option<Vec<Vec<f64>>>,
    /// Path patching: the share of the clean - corrupted metric gap lost when only the head's
    /// edges into the output heads' queries carry the corrupted run's values (every other edge
    /// clean, everything downstream recomputed), from masked forwards; see
    /// [`HeadScores::path_patch`].
    pub path_patching: Option<Vec<Vec<f64>>>,
}

/// A head's roles, by the rules of [`HeadScores::roles`].
pub const ROLE_RULES: &str = "output heads have |DLA| >= 10% of the logit difference; name mover: an output head with DLA > 0 \
     whose attention from the last position goes to IO (>= 0.2, more than to S1 or S2); negative name mover: the same with DLA < 0; \
     S suppressor: DLA > 0 while attending to S (>= 0.2, more than to IO), so lowering the subject's logit; S-inhibition: patching \
     its paths into the output heads' queries loses >= 5% of the clean - corrupted gap (without path patching: its EAP-IG edges there \
     sum to >= 5% of the logit difference); induction: attention from S2 to the token after S1 >= \
     0.3; duplicate token: attention from S2 to S1 >= 0.3; previous token: mean attention to the previous position >= 0.3";

/// Positions of a prompt's answer (first occurrence) and wrong token (first and last).
struct Positions {
    last: i64,
    io: Option<i64>,
    s1: Option<i64>,
    s2: Option<i64>,
}

/// Prompts per forward of [`head_scores`]: its cache and patching runs do not grow with the set.
const CHUNK: usize = 16;

/// Sums over prompts, from which [`head_scores`] takes its means.
struct Sums {
    logit_diff: f64,
    /// DLA to the difference, to the answer and to the wrong token.
    dla: [Vec<Vec<f64>>; 3],
    dla_mlp: Vec<f64>,
    /// Embeddings, attention biases and the biases after the final norm.
    dla_rest: f64,
    /// attn_io, attn_s1, attn_s2, duplicate, induction, previous: sums and prompts counted.
    attn: [Vec<Vec<f64>>; 6],
    counted: [usize; 6],
    /// Patched metric per head, clean and corrupted metric, each times the prompts.
    patched: Vec<Vec<f64>>,
    clean: f64,
    corrupted: f64,
}

/// Adds one chunk of prompts to `sums`.
fn add_chunk(model: &HookedTransformer, prompts: &TaskPrompts, patch: bool, sums: &mut Sums) -> Result<()> {
    let c = &model.cfg;
    let n = prompts.len();
    let (l_n, h_n) = (c.n_layers, c.n_heads as usize);
    let tokens: Vec<Vec<i64>> = (0..n).map(|i| Ok(Vec::<i64>::try_from(&prompts.clean.f_get(i as i64)?)?)).collect::<Result<_>>()?;
    let pos: Vec<Positions> = (0..n)
        .map(|i| {
            let t = &tokens[i][..prompts.lengths[i] as usize];
            let find = |x: i64| t.iter().position(|y| *y == x).map(|p| p as i64);
            let (io, s1) = (find(prompts.answers[i][0]), find(prompts.wrongs[i][0]));
            let s2 = t.iter().rposition(|y| *y == prompts.wrongs[i][0]).map(|p| p as i64).filter(|p| Some(*p) != s1);
            Positions { last: prompts.lengths[i] - 1, io, s1, s2 }
        })
        .collect();
    let last_rows = Tensor::f_from_slice(&pos.iter().map(|p| p.last).collect::<Vec<_>>())?.f_to_device(model.device())?;
    let mut names = vec![
        BlockSite::Z.hook_name(),
        BlockSite::Pattern.hook_name(),
        BlockSite::AttnOut.hook_name(),
        HookPoint::block(0, BlockSite::ResidPre).hook_name(),
        HookPoint::LnFinalScale.hook_name(),
    ];
    if !c.attn_only {
        names.push(BlockSite::MlpOut.hook_name());
    }
    let (logits, cache) = model.run_with_cache(&prompts.clean, CacheSpec::names(names))?;
    let at_last = |t: &Tensor| interp_core::at_rows(t, &last_rows).and_then(|x| x.f_squeeze_dim(1).map_err(Into::into));
    let logits = at_last(&logits)?.f_to_kind(Kind::Double)?; // [B, V]
    let answer = Tensor::f_from_slice(&prompts.answers.iter().map(|a| a[0]).collect::<Vec<_>>())?.f_to_device(model.device())?;
    let wrong = Tensor::f_from_slice(&prompts.wrongs.iter().map(|a| a[0]).collect::<Vec<_>>())?.f_to_device(model.device())?;
    let pick = |t: &Tensor, idx: &Tensor| t.f_gather(1, &idx.f_unsqueeze(1)?, false).and_then(|x| x.f_squeeze_dim(1));
    sums.logit_diff += pick(&logits, &answer)?.f_sub(&pick(&logits, &wrong)?)?.f_sum(Kind::Double)?.f_double_value(&[])?;

    // Direct logit attribution: a component c at the last position adds
    // (c - mean(c) for a LayerNorm) / scale * w . (W_U[answer] - W_U[wrong]) to the difference.
    let w_u = model.w_u().f_to_kind(Kind::Double)?; // [D, V]
    let unembed = w_u.f_index_select(1, &answer)?.f_sub(&w_u.f_index_select(1, &wrong)?)?.f_transpose(0, 1)?; // [B, D]
                                                                                                              // Each token's unembedding less the mean one: a head's effect on that logit against the rest.
    let centred = w_u.f_sub(&w_u.f_mean_dim(1, true, Kind::Double)?)?;
    let (gain, bias) = model.norm_weights(NormSite::LnFinal)?;
    let through_gain = |u: Tensor| -> Result<Tensor> {
        Ok(match &gain {
            Some(g) => u.f_mul(&g.f_to_kind(Kind::Double)?)?,
            None => u,
        })
    };
    let directions = [
        through_gain(unembed.shallow_clone())?,
        through_gain(centred.f_index_select(1, &answer)?.f_transpose(0, 1)?)?,
        through_gain(centred.f_index_select(1, &wrong)?.f_transpose(0, 1)?)?,
    ];
    let direction = &directions[0];
    let scale = at_last(cache.get("ln_final.hook_scale")?)?.f_to_kind(Kind::Double)?.f_reshape([n as i64, 1])?; // [B, 1]
    let centre = c.norm == NormKind::LayerNorm;
    // [B, ..., D] -> [...]: summed over the chunk's prompts.
    let dla_along = |x: &Tensor, direction: &Tensor| -> Result<Tensor> {
        let x = x.f_to_kind(Kind::Double)?;
        let x = if centre { x.f_sub(&x.f_mean_dim(-1, true, Kind::Double)?)? } else { x };
        let shape: Vec<i64> = std::iter::once(n as i64).chain(std::iter::repeat_n(1, x.dim() - 2)).collect();
        let per = x.f_mul(&direction.f_reshape([shape.clone(), vec![-1]].concat())?)?.f_sum_dim_intlist([-1i64].as_slice(), false, Kind::Double)?;
        Ok(per.f_div(&scale.f_reshape(shape)?)?.f_sum_dim_intlist([0i64].as_slice(), false, Kind::Double)?)
    };
    let dla_of = |x: &Tensor| dla_along(x, direction);
    let mut rest = dla_of(&at_last(cache.get("blocks.0.hook_resid_pre")?)?)?.f_double_value(&[])?;
    for l in 0..l_n {
        let z = at_last(cache.get(HookPoint::block(l, BlockSite::Z))?)?; // [B, H, dh]
        let result = z.f_unsqueeze(-1)?.f_mul(&model.w_o(l)?.f_unsqueeze(0)?)?.f_sum_dim_intlist([2i64].as_slice(), false, z.kind())?; // [B, H, D]
                                                                                                                                       // Per head, along the difference, the answer and the wrong token.
        let heads: Vec<Vec<f64>> = directions.iter().map(|d| Ok(Vec::<f64>::try_from(&dla_along(&result, d)?)?)).collect::<Result<_>>()?;
        // The attention output less its heads: the output bias.
        rest += dla_of(&at_last(cache.get(HookPoint::block(l, BlockSite::AttnOut))?)?)?.f_double_value(&[])? - heads[0].iter().sum::<f64>();
        for (grid, values) in sums.dla.iter_mut().zip(heads) {
            for (acc, x) in grid[l].iter_mut().zip(values) {
                *acc += x;
            }
        }
        if !c.attn_only {
            sums.dla_mlp[l] += dla_of(&at_last(cache.get(HookPoint::block(l, BlockSite::MlpOut))?)?)?.f_double_value(&[])?;
        }
    }
    // Biases after the norm: the final norm's and the unembedding's.
    if let Some(b) = &bias {
        rest += unembed.f_mul(&b.f_to_kind(Kind::Double)?)?.f_sum(Kind::Double)?.f_double_value(&[])?;
    }
    if let Some(b_u) = model.b_u() {
        let b_u = b_u.f_to_kind(Kind::Double)?;
        rest += b_u.f_index_select(0, &answer)?.f_sub(&b_u.f_index_select(0, &wrong)?)?.f_sum(Kind::Double)?.f_double_value(&[])?;
    }
    sums.dla_rest += rest;

    // Attention scores: (query, key) per prompt for each score, where the positions exist.
    type Pick = fn(&Positions) -> Option<Vec<(i64, i64)>>;
    let picks: [Pick; 6] = [
        |ps| ps.io.map(|io| vec![(ps.last, io)]),
        |ps| ps.s1.map(|s| vec![(ps.last, s)]),
        |ps| ps.s2.map(|s| vec![(ps.last, s)]),
        |ps| ps.s1.zip(ps.s2).map(|(s1, s2)| vec![(s2, s1)]),
        |ps| ps.s1.zip(ps.s2).filter(|(s1, s2)| s1 + 1 < *s2).map(|(s1, s2)| vec![(s2, s1 + 1)]),
        |ps| (ps.last > 0).then(|| (1..=ps.last).map(|q| (q, q - 1)).collect()),
    ];
    for (k, pick) in picks.iter().enumerate() {
        sums.counted[k] += pos.iter().filter(|ps| pick(ps).is_some()).count();
    }
    for l in 0..l_n {
        let pattern = cache.get(HookPoint::block(l, BlockSite::Pattern))?.f_to_kind(Kind::Double)?.f_to_device(tch::Device::Cpu)?; // [B, H, Q, K]
        let p = Vec::<f64>::try_from(&pattern.f_flatten(0, -1)?)?;
        let (q_n, k_n) = (pattern.size()[2] as usize, pattern.size()[3] as usize);
        let at = |b: usize, h: usize, q: i64, k: i64| p[((b * h_n + h) * q_n + q as usize) * k_n + k as usize];
        for (k, pick) in picks.iter().enumerate() {
            for (b, ps) in pos.iter().enumerate() {
                let Some(cells) = pick(ps) else { continue };
                for h in 0..h_n {
                    sums.attn[k][l][h] += cells.iter().map(|&(q, key)| at(b, h, q, key)).sum::<f64>() / cells.len() as f64;
                }
            }
        }
    }

    if patch {
        let patched = activation_patching(model, &prompts.clean, &prompts.corrupted, &prompts.metric, PatchSite::Z, 0)?;
        let values = patched.values.f_to_kind(Kind::Double)?;
        for (l, row) in sums.patched.iter_mut().enumerate() {
            for (acc, x) in row.iter_mut().zip(Vec::<f64>::try_from(&values.f_select(0, l as i64)?)?) {
                *acc += x * n as f64;
            }
        }
        sums.clean += patched.clean * n as f64;
        sums.corrupted += patched.corrupted * n as f64;
    }
    Ok(())
}

/// Scores every head on `prompts` (one answer and one wrong token each), [`CHUNK`] prompts per
/// forward; with `patch`, also patches each head's `z`. `edges`: EAP-IG (or any attribution)
/// scores of `graph`'s edges on the same prompts, for the node scores and the paths into the
/// output heads.
pub fn head_scores(model: &HookedTransformer, prompts: &TaskPrompts, name: &str, patch: bool, edges: Option<(&EdgeGraph, &[f64])>) -> Result<HeadScores> {
    let n = prompts.len();
    if n == 0 || prompts.answers.iter().chain(&prompts.wrongs).any(|t| t.len() != 1) {
        return Err(Error::Input("head roles need prompts with one answer and one wrong token each (an IOI-style prompt set)".into()));
    }
    let (l_n, h_n) = (model.cfg.n_layers, model.cfg.n_heads as usize);
    let grid = || vec![vec![0.0; h_n]; l_n];
    let mut sums = Sums {
        logit_diff: 0.0,
        dla: [grid(), grid(), grid()],
        dla_mlp: vec![0.0; l_n],
        dla_rest: 0.0,
        attn: [(); 6].map(|_| grid()),
        counted: [0; 6],
        patched: grid(),
        clean: 0.0,
        corrupted: 0.0,
    };
    for start in (0..n).step_by(CHUNK) {
        add_chunk(model, &prompts.narrow(start, CHUNK.min(n - start))?, patch, &mut sums)?;
    }
    let per = |g: Vec<Vec<f64>>, by: usize| -> Vec<Vec<f64>> {
        g.into_iter().map(|r| r.into_iter().map(|x| if by == 0 { f64::NAN } else { x / by as f64 }).collect()).collect()
    };
    let [attn_io, attn_s1, attn_s2, duplicate, induction, previous] = std::array::from_fn(|k| per(std::mem::take(&mut sums.attn[k]), sums.counted[k]));
    let (clean, corrupted) = (sums.clean / n as f64, sums.corrupted / n as f64);
    let [dla, dla_answer, dla_wrong] = sums.dla.map(|g| per(g, n));
    let patching =
        patch.then(|| per(sums.patched.clone(), n).into_iter().map(|r| r.into_iter().map(|v| (v - corrupted) / (clean - corrupted)).collect()).collect());
    let mut scores = HeadScores {
        name: name.to_string(),
        n_prompts: n,
        logit_diff: sums.logit_diff / n as f64,
        dla,
        dla_answer,
        dla_wrong,
        dla_mlp: sums.dla_mlp.iter().map(|x| x / n as f64).collect(),
        dla_rest: sums.dla_rest / n as f64,
        attn_io,
        attn_s1,
        attn_s2,
        duplicate,
        induction,
        previous,
        patching,
        node_score: None,
        into_output_heads: None,
        path_patching: None,
    };
    if let Some((graph, edge_scores)) = edges {
        if edge_scores.len() != graph.n_edges() {
            return Err(Error::Count { what: "edge scores for the graph's edges".into(), found: edge_scores.len(), expected: graph.n_edges() });
        }
        let nodes = mib_node_scores(graph, edge_scores);
        let grid = |f: &dyn Fn(usize, usize) -> f64| (0..l_n).map(|l| (0..h_n).map(|h| f(l, h)).collect()).collect::<Vec<Vec<f64>>>();
        scores.node_score = Some(grid(&|l, h| nodes[graph.sender_index(Sender::Head { layer: l, head: h as i64 })]));
        let movers: Vec<(usize, i64)> = scores.output_heads().into_iter().map(|(l, h)| (l, h as i64)).collect();
        let mut into = vec![vec![0.0; h_n]; l_n];
        for (e, s) in graph.edges.iter().zip(edge_scores) {
            if let (Sender::Head { layer, head }, Receiver::Head { layer: rl, head: rh, input: Qkv::Q }) = (e.sender, e.receiver) {
                if movers.contains(&(rl, rh)) {
                    into[layer][head as usize] += s;
                }
            }
        }
        scores.into_output_heads = Some(into);
    }
    Ok(scores)
}

impl HeadScores {
    /// Path patching into the output heads' queries (see `path_patching`), for every head in a
    /// layer below the last output head: one edge set per head, measured by masked forwards on
    /// `run`'s prompts (the prompts these scores were taken on).
    pub fn path_patch(&mut self, run: &EdgeRun) -> Result<()> {
        let graph = run.graph();
        let outputs: Vec<(usize, i64)> = self.output_heads().into_iter().map(|(l, h)| (l, h as i64)).collect();
        let Some(last) = outputs.iter().map(|o| o.0).max() else {
            self.path_patching = None;
            return Ok(());
        };
        let senders: Vec<(usize, usize)> = self.heads().filter(|(l, _)| *l < last).collect();
        let e = graph.n_edges();
        let mut masks = vec![1f32; senders.len() * e];
        for (i, edge) in graph.edges.iter().enumerate() {
            if let (Sender::Head { layer, head }, Receiver::Head { layer: rl, head: rh, input: Qkv::Q }) = (edge.sender, edge.receiver) {
                if let Some(v) = senders.iter().position(|s| *s == (layer, head as usize)).filter(|_| outputs.contains(&(rl, rh))) {
                    masks[v * e + i] = 0.0;
                }
            }
        }
        let masks = Tensor::f_from_slice(&masks)?.f_view([senders.len() as i64, e as i64])?;
        let kept = run.faithfulness(&masks)?;
        let mut grid = vec![vec![0.0; self.dla[0].len()]; self.dla.len()];
        for ((l, h), f) in senders.into_iter().zip(kept) {
            grid[l][h] = 1.0 - f;
        }
        self.path_patching = Some(grid);
        Ok(())
    }

    /// Every (layer, head), in order.
    pub fn heads(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        (0..self.dla.len()).flat_map(move |l| (0..self.dla[l].len()).map(move |h| (l, h)))
    }

    /// Heads with |DLA| >= 10% of the logit difference.
    pub fn output_heads(&self) -> Vec<(usize, usize)> {
        self.heads().filter(|&(l, h)| self.dla[l][h].abs() >= 0.1 * self.logit_diff.abs()).collect()
    }

    /// Output heads with DLA > 0 whose attention goes to IO (see [`ROLE_RULES`]).
    pub fn name_movers(&self) -> Vec<(usize, usize)> {
        self.heads().filter(|&(l, h)| self.roles(l, h).contains(&"name mover")).collect()
    }

    /// Each head's roles by [`ROLE_RULES`] (empty: none).
    pub fn roles(&self, l: usize, h: usize) -> Vec<&'static str> {
        let gap = self.logit_diff.abs();
        let mut out = Vec::new();
        let (io, s) = (self.attn_io[l][h], self.attn_s1[l][h].max(self.attn_s2[l][h]));
        let output = self.dla[l][h].abs() >= 0.1 * gap;
        if output && io >= 0.2 && io > s {
            out.push(if self.dla[l][h] > 0.0 { "name mover" } else { "negative name mover" });
        }
        if output && self.dla[l][h] > 0.0 && s >= 0.2 && s > io {
            out.push("S suppressor");
        }
        let inhibits = match (&self.path_patching, &self.into_output_heads) {
            (Some(g), _) => g[l][h] >= 0.05,
            (None, Some(g)) => g[l][h] >= 0.05 * gap,
            (None, None) => false,
        };
        if inhibits {
            out.push("S-inhibition");
        }
        for (grid, role) in [(&self.induction, "induction"), (&self.duplicate, "duplicate token"), (&self.previous, "previous token")] {
            if grid[l][h] >= 0.3 {
                out.push(role);
            }
        }
        out
    }

    /// The `k` heads with the largest |score| of `grid`.
    fn top(&self, grid: &[Vec<f64>], k: usize) -> Vec<(usize, usize)> {
        let mut all: Vec<(usize, usize)> = self.heads().collect();
        all.sort_by(|a, b| grid[b.0][b.1].abs().total_cmp(&grid[a.0][a.1].abs()));
        all.truncate(k);
        all
    }

    /// How many of the top `k` heads by |DLA|, by |patching| and by |node score| the methods
    /// share, pairwise (where both were run): (DLA & patching, DLA & node score, patching & node
    /// score).
    pub fn agreement(&self, k: usize) -> (Option<usize>, Option<usize>, Option<usize>) {
        let shared = |a: &Option<Vec<(usize, usize)>>, b: &Option<Vec<(usize, usize)>>| {
            a.as_ref().zip(b.as_ref()).map(|(a, b)| a.iter().filter(|x| b.contains(x)).count())
        };
        let dla = Some(self.top(&self.dla, k));
        let patch = self.patching.as_ref().map(|g| self.top(g, k));
        let node = self.node_score.as_ref().map(|g| self.top(g, k));
        (shared(&dla, &patch), shared(&dla, &node), shared(&patch, &node))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::budget::MemoryBudget;
    use crate::edge_graph::Ablation;
    use crate::prompts::PromptPair;
    use tch::Device;

    /// Path patching by masked forwards equals the plain intervention: the sender's output
    /// difference (corrupted - clean) added to the output heads' query inputs, everything
    /// downstream recomputed; on a grouped-query Llama with a non-trivial init.
    #[test]
    fn path_patching_adds_the_senders_corrupted_output_to_the_output_heads_queries() -> Result<()> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/llama");
        let model = HookedTransformer::from_pretrained_dir(&dir, Device::Cpu, Kind::Double)?;
        let c = &model.cfg;
        assert!(c.n_kv_heads < c.n_heads && c.n_layers >= 2);
        tch::manual_seed(1);
        let tokens = Vec::<i64>::try_from(&Tensor::f_randint(c.d_vocab, [4 * 7], (Kind::Int64, Device::Cpu))?)?;
        let pairs: Vec<PromptPair> = tokens
            .chunks(7)
            .map(|t| {
                let mut corrupted = t[..6].to_vec();
                corrupted[4] = t[6];
                PromptPair { clean: t[..6].to_vec(), corrupted, answers: vec![t[1]], wrongs: vec![t[2]], label: String::new() }
            })
            .collect();
        let prompts = TaskPrompts::from_pairs(pairs, c.d_vocab, c.d_vocab)?;
        let mut scores = head_scores(&model, &prompts, "random", false, None)?;
        let graph = EdgeGraph::new(&model)?;
        scores.path_patch(&EdgeRun::new(&model, &graph, &prompts, Ablation::Resample, MemoryBudget::DEFAULT)?)?;
        let outputs = scores.output_heads();
        let last = outputs.iter().map(|o| o.0).max().expect("some head has a direct effect");
        let grid = scores.path_patching.as_ref().expect("path patching ran");
        let (ls, hs) = scores.heads().filter(|(l, _)| *l < last).max_by(|a, b| grid[a.0][a.1].abs().total_cmp(&grid[b.0][b.1].abs())).expect("a sender");
        assert!(grid[ls][hs].abs() > 1e-3, "{grid:?}");

        let result = HookPoint::block(ls, BlockSite::Result);
        let (clean_logits, clean) = model.run_with_cache(&prompts.clean, CacheSpec::names([result]))?;
        let (corrupt_logits, corrupt) = model.run_with_cache(&prompts.corrupted, CacheSpec::names([result]))?;
        let delta = corrupt.get(result)?.f_select(2, hs as i64)?.f_sub(&clean.get(result)?.f_select(2, hs as i64)?)?; // [B, P, D]
        let mut hooks = interp_core::Hooks::new();
        for (rl, rh) in outputs.iter().copied().filter(|(l, _)| *l > ls) {
            let delta = delta.shallow_clone();
            hooks = hooks.add(HookPoint::block(rl, BlockSite::QInput), move |x, _| {
                let x = x.copy();
                let _ = x.f_select(2, rh as i64)?.f_add_(&delta)?;
                Ok(Some(x))
            });
        }
        let patched = prompts.metric.value(&model.run_with_hooks(&prompts.clean, hooks)?)?;
        let (m_clean, m_corrupt) = (prompts.metric.value(&clean_logits)?, prompts.metric.value(&corrupt_logits)?);
        let expected = (m_clean - patched) / (m_clean - m_corrupt);
        assert!((expected - grid[ls][hs]).abs() < 1e-6, "L{ls}H{hs}: hooks {expected}, masked forwards {}", grid[ls][hs]);
        Ok(())
    }
}
