//! Activation patching of every site of a prompt set, as tables and heatmaps.

use interp_core::HookedTransformer;
use tch::Kind;

use crate::chart::{heatmaps, Heatmap};
use crate::error::Result;
use crate::output::Output;
use crate::table::Table;
use circuits::patching::{activation_patching, PatchSite, PatchingResult};
use circuits::prompts::TaskPrompts;

/// What [`patching_sweep`] patches.
#[derive(Clone, Debug, Default)]
pub struct PatchingSweepConfig {
    /// Sites to patch; empty: every site the model has.
    pub sites: Vec<PatchSite>,
    /// Most rows (variants x prompts) in one forward; `None`: by device, one index per forward on
    /// a CPU (a forward is compute-bound there, and stacked indices measured 0.7-0.9x as fast),
    /// 4096 rows on a GPU.
    pub max_rows: Option<i64>,
}

/// Each site's patching result on one prompt set.
pub struct PatchingSweep {
    /// What the prompts are (a task name, a file name).
    pub name: String,
    /// Prompts (clean/corrupted pairs) patched.
    pub n_prompts: i64,
    /// Layers of the model.
    pub n_layers: usize,
    /// `{pos} {token}` of the first longest clean prompt, for the position axis.
    pub positions: Vec<String>,
    /// The metric's name.
    pub metric: String,
    /// One result per site, in the config's order.
    pub results: Vec<PatchingResult>,
}

/// Patches each activation of the clean run into the corrupted run, per site (see
/// [`activation_patching`]); `token_text` renders token ids for the charts.
pub fn patching_sweep(
    model: &HookedTransformer,
    prompts: &TaskPrompts,
    name: &str,
    token_text: &dyn Fn(i64) -> String,
    cfg: &PatchingSweepConfig,
) -> Result<PatchingSweep> {
    let max_rows = cfg.max_rows.unwrap_or(if model.device() == tch::Device::Cpu { 0 } else { 4096 });
    let sites: Vec<PatchSite> = match cfg.sites.is_empty() {
        true => PatchSite::ALL.iter().copied().filter(|p| p.applies_to(model)).collect(),
        false => cfg.sites.clone(),
    };
    let results = sites
        .into_iter()
        .map(|site| activation_patching(model, &prompts.clean, &prompts.corrupted, &prompts.metric, site, max_rows))
        .collect::<circuits::Result<_>>()?;
    // Positions are labelled by the first of the longest prompts (the others end earlier).
    let longest = prompts.lengths.iter().enumerate().max_by_key(|(i, l)| (**l, std::cmp::Reverse(*i))).map(|(i, _)| i).unwrap_or(0);
    let first = Vec::<i64>::try_from(&prompts.clean.f_get(longest as i64)?)?;
    Ok(PatchingSweep {
        name: name.to_string(),
        n_prompts: prompts.clean.size()[0],
        n_layers: model.cfg.n_layers,
        positions: first.iter().enumerate().map(|(i, t)| format!("{i} {}", token_text(*t))).collect(),
        metric: prompts.metric.name().to_string(),
        results,
    })
}

impl PatchingSweep {
    /// A report section, one heatmap per site (`patch_<site>.svg/png`) and `patching.parquet/csv`
    /// (site, layer, pos, head, expert, metric, normalized; -1 where an axis does not apply).
    pub fn write(&self, out: &mut Output) -> Result<()> {
        out.report.section(&format!("Activation patching: {}", self.name));
        out.report.paragraph(&format!(
            "Each activation of the clean run patched into the corrupted run ({} prompts, metric {}); 1 = the clean value restored, 0 = no change.",
            self.n_prompts, self.metric
        ));
        let mut table = Table::default();
        let layers: Vec<String> = (0..self.n_layers).map(|l| format!("L{l}")).collect();
        for r in &self.results {
            let site = r.site;
            table.extend(patching_table(r)?)?;
            let n = r.normalized.f_to_kind(Kind::Double)?;
            let heads = |n_heads: i64| (0..n_heads).map(|h| format!("H{h}")).collect::<Vec<_>>();
            let panels: Vec<Heatmap> = match site.axes() {
                ["layer", "pos"] => vec![Heatmap::from_tensor(
                    &format!("{}: patched clean -> corrupted (normalised)", site.name()),
                    &n.f_transpose(0, 1)?,
                    self.positions.clone(),
                    layers.clone(),
                    "layer",
                    "position",
                )?],
                ["layer", "head"] => {
                    vec![Heatmap::from_tensor(&format!("{} per head (normalised)", site.name()), &n, layers.clone(), heads(n.size()[1]), "head", "layer")?]
                }
                ["layer", "expert"] => {
                    let experts = (0..n.size()[1]).map(|e| format!("E{e}")).collect();
                    let title = "each expert's output (normalised; grey: a dense layer)".to_string();
                    vec![Heatmap::from_tensor(&title, &n, layers.clone(), experts, "expert", "layer")?]
                }
                _ => (0..n.size()[0])
                    .map(|l| {
                        let title = format!("{} L{l} by position (normalised)", site.name());
                        Heatmap::from_tensor(&title, &n.f_select(0, l)?, self.positions.clone(), heads(n.size()[2]), "head", "position")
                    })
                    .collect::<Result<_>>()?,
            };
            out.chart(&format!("patch_{}", site.name()), &format!("patching {}", site.name()), |path| heatmaps(path, &panels))?;
        }
        out.table("patching", "patching results", &table)
    }
}

/// `r` as a table. Columns: site, layer, pos, head, expert (-1 where the axis does not apply), metric,
/// normalized. A dense layer's rows of an expert sweep are left out.
pub fn patching_table(r: &PatchingResult) -> Result<Table> {
    let mut table = Table::new(&["site", "layer", "pos", "head", "expert", "metric", "normalized"]);
    let size = r.values.size();
    let vals = Vec::<f64>::try_from(&r.values.f_reshape([-1])?.f_to_kind(Kind::Double)?)?;
    let norm = Vec::<f64>::try_from(&r.normalized.f_reshape([-1])?.f_to_kind(Kind::Double)?)?;
    let inner: i64 = size[1..].iter().product();
    for (i, (v, n)) in vals.iter().zip(&norm).enumerate() {
        let i = i as i64;
        let (layer, rest) = (i / inner, i % inner);
        let (pos, head, expert) = match r.site.axes() {
            ["layer", "pos"] => (rest, -1, -1),
            ["layer", "head"] => (-1, rest, -1),
            ["layer", "expert"] if v.is_nan() => continue,
            ["layer", "expert"] => (-1, -1, rest),
            _ => (rest / size[2], rest % size[2], -1),
        };
        table.push(vec![r.site.name().into(), layer.into(), pos.into(), head.into(), expert.into(), (*v).into(), (*n).into()]);
    }
    Ok(table)
}
