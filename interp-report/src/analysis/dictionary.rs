//! A sparse dictionary's run as people read it: its metrics as a table and JSON, and its
//! training curve (FVU, L0 and dead latents against tokens) as a chart.

use std::path::Path;

use transcoders::{DictionaryMetrics, SetMetrics, TrainLogEntry};

use crate::chart::{line_panels, LinePanel, Series};
use crate::error::{Error, Result};
use crate::output::Output;
use crate::table::Table;

/// Reads a training curve written by the trainer (`train_log.jsonl`: one [`TrainLogEntry`] per
/// line); a malformed line is an error naming it.
pub fn read_training_curve(path: &Path) -> Result<Vec<TrainLogEntry>> {
    let text = std::fs::read_to_string(path).map_err(Error::io(path))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| serde_json::from_str(l).map_err(|e| Error::Input(format!("{}:{}: {e}", path.display(), i + 1))))
        .collect()
}

/// Writes `metrics` as `stem.json` and a one-row table `stem` (downstream columns only when
/// the model was run).
pub fn write_metrics(out: &mut Output, stem: &str, name: &str, metrics: &DictionaryMetrics) -> Result<()> {
    let value = serde_json::to_value(metrics).map_err(|e| Error::Input(e.to_string()))?;
    out.json(&format!("{stem}.json"), "metrics", &value)?;
    let mut columns = vec!["dictionary", "tokens", "l0", "fvu", "shrinkage", "dead_fraction", "dense_fraction"];
    let mut row = vec![
        name.into(),
        (metrics.n_tokens as usize).into(),
        metrics.l0.into(),
        metrics.fvu.into(),
        metrics.shrinkage.into(),
        metrics.dead_fraction.into(),
        metrics.dense_fraction.into(),
    ];
    if let Some(d) = &metrics.downstream {
        columns.extend(["ce_loss_recovered", "delta_loss", "kl_spliced"]);
        row.extend([d.ce_loss_recovered.into(), d.delta_loss.into(), d.kl_spliced.into()]);
    }
    let mut table = Table::new(&columns);
    table.push(row);
    out.table(stem, "evaluation", &table)
}

/// Writes a transcoder set's metrics as `stem.json` and a table: one row per layer (L0, FVU,
/// dead and dense fractions) and one for every layer spliced in at once (L0 summed over layers,
/// pooled FVU, CE loss recovered, delta loss, KL).
pub fn write_set_metrics(out: &mut Output, stem: &str, metrics: &SetMetrics) -> Result<()> {
    let value = serde_json::to_value(metrics).map_err(|e| Error::Input(e.to_string()))?;
    out.json(&format!("{stem}.json"), "metrics", &value)?;
    let mut table = Table::new(&["layers", "l0", "fvu", "dead_fraction", "ce_loss_recovered", "delta_loss", "kl_spliced"]);
    for (l, m) in metrics.layers.iter().enumerate() {
        table.push(vec![l.to_string().into(), m.l0.into(), m.fvu.into(), m.dead_fraction.into(), f64::NAN.into(), f64::NAN.into(), f64::NAN.into()]);
    }
    let d = &metrics.downstream;
    table.push(vec![
        "all".into(),
        metrics.l0.into(),
        metrics.fvu.into(),
        metrics.dead_fraction.into(),
        d.ce_loss_recovered.into(),
        d.delta_loss.into(),
        d.kl_spliced.into(),
    ]);
    out.table(stem, "evaluation", &table)
}

/// Draws the training curve (batch FVU, L0 and dead latents against activation tokens, one line
/// per dictionary trained together) as `stem.svg` / `stem.png` and embeds it in the report.
pub fn training_curve_chart(out: &mut Output, stem: &str, curve: &[TrainLogEntry]) -> Result<()> {
    let n = curve.iter().map(|e| e.dictionary + 1).max().unwrap_or(0);
    // Tokens in thousands or millions, so that tick labels stay short.
    let most = curve.iter().map(|e| e.tokens).max().unwrap_or(0) as f64;
    let (unit, x_label) = if most >= 2e6 { (1e6, "tokens (millions)") } else { (1e3, "tokens (thousands)") };
    let series = |value: &dyn Fn(&TrainLogEntry) -> f64| -> Vec<Series> {
        (0..n)
            .map(|d| Series {
                name: if n == 1 { String::new() } else { format!("dictionary {d}") },
                points: curve.iter().filter(|e| e.dictionary == d).map(|e| (e.tokens as f64 / unit, value(e))).collect(),
            })
            .collect()
    };
    let panel = |title: &str, y: &str, value: &dyn Fn(&TrainLogEntry) -> f64| LinePanel {
        title: title.into(),
        x_label: x_label.into(),
        y_label: y.into(),
        series: series(value),
    };
    let panels = [
        panel("Fraction of variance unexplained", "FVU (batch)", &|e| e.fvu),
        panel("Active latents per token", "L0", &|e| e.l0),
        panel("Dead latents", "dead (%)", &|e| 100.0 * e.dead_fraction),
    ];
    let steps = curve.iter().map(|e| e.step).max().unwrap_or(0);
    out.chart(stem, &format!("training curve, {steps} steps"), |path| line_panels(path, &panels))
}
