//! Routing analysis of a mixture-of-experts model on the built-in tasks: which experts each task
//! and each token is sent to, the load on each expert, and what ablating each expert (zeroing its
//! slice of `mlp.hook_expert_out`) does to each task's score.

use interp_core::tasks::{TaskVocab, ALL_TASKS};
use interp_core::{BlockSite, CacheSpec, HookPoint, HookedTransformer, Hooks, Intervention, Scope};
use tch::{Kind, Tensor};

use crate::chart::{heatmaps, Heatmap};
use crate::error::{Error, Result};
use crate::output::Output;
use crate::table::Table;

/// Settings of [`routing_analysis`].
#[derive(Clone, Debug)]
pub struct RoutingConfig {
    /// Prompts per task.
    pub n: usize,
    /// Seed of the prompts.
    pub seed: u64,
    /// Tokens listed per expert (those most often sent to it).
    pub top_tokens: usize,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        RoutingConfig { n: 256, seed: 4242, top_tokens: 5 }
    }
}

/// What [`routing_analysis`] found. Rows of the [tasks x layers, experts] grids go task by task,
/// each task's MoE layers in order.
pub struct RoutingAnalysis {
    /// The MoE layers.
    pub layers: Vec<usize>,
    /// Experts per layer.
    pub n_experts: i64,
    /// Experts per token.
    pub top_k: i64,
    /// The tasks, in row order.
    pub tasks: Vec<String>,
    /// Each task's score without ablation.
    pub scores: Vec<f64>,
    /// Share of each task's routing choices (token x top-k slot) that go to each expert,
    /// [tasks x layers, experts]; each row sums to 1.
    pub usage: Tensor,
    /// The same over all tasks together, [layers, experts]: the load per expert.
    pub load: Tensor,
    /// Each task's score with one expert of one layer ablated, minus its score,
    /// [tasks x layers, experts].
    pub ablation: Tensor,
    /// Per (layer, expert): the tokens most often routed to it, with the share of that token's
    /// occurrences that were (one of its top-k choices): layer, expert, token, share, occurrences.
    pub tokens: Table,
    /// Forward passes run.
    pub forwards: usize,
}

/// Routes the built-in tasks' prompts through `model` (a mixture of experts trained on the task
/// vocabulary) and ablates each expert of each MoE layer in turn.
pub fn routing_analysis(model: &HookedTransformer, vocab: &TaskVocab, cfg: &RoutingConfig) -> Result<RoutingAnalysis> {
    let c = &model.cfg;
    let moe = c.moe.as_ref().ok_or_else(|| Error::Input("the model is not a mixture of experts: there is no routing to analyse".into()))?;
    let layers: Vec<usize> = (0..c.n_layers).filter(|l| c.is_moe_layer(*l)).collect();
    let (n_experts, n_layers) = (moe.n_experts, layers.len() as i64);
    let indices = |l: usize| HookPoint::block(l, BlockSite::ExpertIndices);
    let (mut usage, mut ablation, mut scores, mut tasks) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    // [layers, vocab, experts]: how often each token was routed to each expert.
    let counts = Tensor::f_zeros([n_layers, c.d_vocab, n_experts], (Kind::Double, tch::Device::Cpu))?;
    let mut forwards = 0;
    for task in ALL_TASKS {
        let batch = task.generate(vocab, cfg.n, cfg.seed)?;
        let tokens = batch.clean.f_to_device(model.device())?;
        let (logits, cache) = model.run_with_cache(&tokens, CacheSpec::names(layers.iter().map(|l| indices(*l))))?;
        forwards += 1;
        let base = task.score(vocab, &batch, &logits)?;
        for (i, l) in layers.iter().enumerate() {
            let chosen = cache.get(indices(*l))?.f_to_device(tch::Device::Cpu)?; // [n, pos, top_k]
            let hits = chosen.f_one_hot(n_experts)?.f_to_kind(Kind::Double)?.f_sum_dim_intlist(2, false, Kind::Double)?; // [n, pos, experts]
            let per_token = Tensor::f_zeros([c.d_vocab, n_experts], (Kind::Double, tch::Device::Cpu))?.f_index_add(
                0,
                &batch.clean.f_flatten(0, -1)?,
                &hits.f_flatten(0, 1)?,
            )?;
            let _ = counts.f_get(i as i64)?.f_add_(&per_token)?;
            let share = hits.f_sum_dim_intlist([0, 1].as_slice(), false, Kind::Double)?;
            usage.push(share.f_div(&share.f_sum(Kind::Double)?)?);
            let effects: Vec<f64> = (0..n_experts)
                .map(|e| {
                    let hooks = Hooks::new().intervene(HookPoint::block(*l, BlockSite::ExpertOut), Intervention::Zero(Scope::all().heads([e])));
                    let ablated = model.run_with_hooks(&tokens, hooks)?;
                    Ok(task.score(vocab, &batch, &ablated)? - base)
                })
                .collect::<Result<_>>()?;
            forwards += n_experts as usize;
            ablation.push(Tensor::f_from_slice(&effects)?);
        }
        tasks.push(task.name().to_string());
        scores.push(base);
    }
    let load = counts.f_sum_dim_intlist(1, false, Kind::Double)?;
    let load = load.f_div(&load.f_sum_dim_intlist(1, true, Kind::Double)?)?;
    Ok(RoutingAnalysis {
        tokens: token_table(&counts, &layers, vocab, moe.top_k, cfg.top_tokens)?,
        layers,
        n_experts,
        top_k: moe.top_k,
        tasks,
        scores,
        usage: Tensor::f_stack(&usage, 0)?,
        load,
        ablation: Tensor::f_stack(&ablation, 0)?,
        forwards,
    })
}

/// The `top` tokens with the largest share of their occurrences routed to each (layer, expert)
/// (tokens seen at least 8 times), from counts [layers, vocab, experts] of `top_k` choices per
/// occurrence.
fn token_table(counts: &Tensor, layers: &[usize], vocab: &TaskVocab, top_k: i64, top: usize) -> Result<Table> {
    let mut table = Table::new(&["layer", "expert", "token", "share", "occurrences"]);
    for (i, l) in layers.iter().enumerate() {
        let per_layer = counts.f_get(i as i64)?; // [vocab, experts]
        let seen = per_layer.f_sum_dim_intlist(1, false, Kind::Double)?.f_div_scalar(top_k)?; // occurrences per token
        let share = per_layer.f_div(&seen.f_clamp_min(1.0)?.f_unsqueeze(1)?)?;
        let seen: Vec<f64> = Vec::try_from(&seen)?;
        for e in 0..per_layer.size()[1] {
            let col: Vec<f64> = Vec::try_from(&share.f_select(1, e)?)?;
            let mut order: Vec<usize> = (0..col.len()).filter(|t| seen[*t] >= 8.0).collect();
            order.sort_by(|a, b| col[*b].total_cmp(&col[*a]));
            for t in order.into_iter().take(top) {
                table.push(vec![(*l as i64).into(), e.into(), vocab.word(t as i64).to_string().into(), col[t].into(), (seen[t] as i64).into()]);
            }
        }
    }
    Ok(table)
}

impl RoutingAnalysis {
    /// Row labels of the [tasks x layers, experts] grids.
    fn rows(&self) -> Vec<String> {
        self.tasks.iter().flat_map(|t| self.layers.iter().map(move |l| format!("{t} L{l}"))).collect()
    }

    /// A report section: usage and ablation heatmaps (`routing_usage`, `routing_ablation`), the
    /// tables `routing.parquet/csv` (task, layer, expert, share, score change) and
    /// `routing_tokens.parquet/csv`.
    pub fn write(&self, out: &mut Output) -> Result<()> {
        out.report.section("Mixture of experts: routing");
        out.report.paragraph(&format!(
            "Each built-in task's prompts routed through the MoE layers ({} of {} experts per token): the share of routing choices each expert gets, per task and over all tasks (the load), and each task's score change when one expert of one layer is ablated (its output zeroed). {} forwards.",
            self.top_k, self.n_experts, self.forwards
        ));
        let experts: Vec<String> = (0..self.n_experts).map(|e| format!("E{e}")).collect();
        let load_rows: Vec<String> = self.layers.iter().map(|l| format!("all L{l}")).collect();
        let usage = Tensor::f_cat(&[self.usage.shallow_clone(), self.load.shallow_clone()], 0)?;
        let rows: Vec<String> = self.rows().into_iter().chain(load_rows).collect();
        let panels = [Heatmap::from_tensor("share of routing choices per expert", &usage, rows, experts.clone(), "expert", "task, layer")?];
        out.chart("routing_usage", "routing: which experts each task uses", |p| heatmaps(p, &panels))?;
        let ablation = [Heatmap::from_tensor("task score change with the expert ablated", &self.ablation, self.rows(), experts, "expert", "task, layer")?];
        out.chart("routing_ablation", "routing: ablating each expert", |p| heatmaps(p, &ablation))?;
        let mut table = Table::new(&["task", "layer", "expert", "share", "score", "score_change"]);
        let (usage, effect) = (Vec::<Vec<f64>>::try_from(&self.usage)?, Vec::<Vec<f64>>::try_from(&self.ablation)?);
        let rows = self.tasks.iter().zip(&self.scores).flat_map(|(t, s)| self.layers.iter().map(move |l| (t, *s, *l)));
        for (r, (task, score, layer)) in rows.enumerate() {
            for e in 0..self.n_experts as usize {
                table.push(vec![task.clone().into(), (layer as i64).into(), (e as i64).into(), usage[r][e].into(), score.into(), effect[r][e].into()]);
            }
        }
        out.table("routing", "routing share and ablation effect per task, layer and expert", &table)?;
        out.table("routing_tokens", "tokens most often routed to each expert", &self.tokens)
    }
}
