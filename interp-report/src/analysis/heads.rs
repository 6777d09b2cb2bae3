//! The report section of [`HeadScores`]: roles, agreement between methods, heatmaps and the
//! per-head table.

use std::collections::BTreeMap;

use tch::Tensor;

use crate::chart::{heatmaps, Heatmap};
use crate::error::Result;
use crate::output::Output;
use crate::table::Table;
use circuits::heads::{HeadScores, ROLE_RULES};

/// A report section with the roles found and the agreement between methods; heatmaps
/// (`heads_effects`: DLA, patching, node score, path patching; `heads_attention`: from the last position to
/// IO, S1, S2; `heads_patterns`: induction, duplicate-token and previous-token scores, each
/// SVG and PNG); `heads.parquet/csv` (every score and role per head).
pub fn write_heads(scores: &HeadScores, out: &mut Output) -> Result<()> {
    out.report.section(&format!("Heads: {}", scores.name));
    let (l_n, h_n) = (scores.dla.len(), scores.dla.first().map_or(0, |r| r.len()));
    let mlp_total: f64 = scores.dla_mlp.iter().sum();
    let head_total: f64 = scores.dla.iter().flatten().sum();
    out.report.paragraph(&format!(
        "{} prompts; logit difference {:.3} at the last position = heads {:.3} + MLPs {:.3} + embeddings and biases {:.3} (direct logit \
         attribution, the final norm's scale frozen). Roles by these rules: {ROLE_RULES}.",
        scores.n_prompts, scores.logit_diff, head_total, mlp_total, scores.dla_rest
    ));
    let mut by_role: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    let mut table = Table::new(&[
        "layer",
        "head",
        "dla",
        "dla_answer",
        "dla_wrong",
        "patching",
        "node_score",
        "into_output_heads",
        "path_patching",
        "attn_io",
        "attn_s1",
        "attn_s2",
        "duplicate",
        "induction",
        "previous",
        "roles",
    ]);
    for (l, h) in scores.heads() {
        let roles = scores.roles(l, h);
        for r in &roles {
            by_role.entry(r).or_default().push(format!("L{l}H{h}"));
        }
        let opt = |g: &Option<Vec<Vec<f64>>>| g.as_ref().map_or(f64::NAN, |g| g[l][h]);
        table.push(vec![
            l.into(),
            h.into(),
            scores.dla[l][h].into(),
            scores.dla_answer[l][h].into(),
            scores.dla_wrong[l][h].into(),
            opt(&scores.patching).into(),
            opt(&scores.node_score).into(),
            opt(&scores.into_output_heads).into(),
            opt(&scores.path_patching).into(),
            scores.attn_io[l][h].into(),
            scores.attn_s1[l][h].into(),
            scores.attn_s2[l][h].into(),
            scores.duplicate[l][h].into(),
            scores.induction[l][h].into(),
            scores.previous[l][h].into(),
            roles.join(", ").into(),
        ]);
    }
    let found: Vec<String> = by_role.iter().map(|(r, hs)| format!("{r}: {}", hs.join(" "))).collect();
    out.report.paragraph(&if found.is_empty() { "No head meets a role's rule.".to_string() } else { format!("Roles found. {}.", found.join("; ")) });
    let split: Vec<String> = scores
        .output_heads()
        .into_iter()
        .map(|(l, h)| format!("L{l}H{h} {:+.2} = answer {:+.2} - wrong {:+.2}", scores.dla[l][h], scores.dla_answer[l][h], scores.dla_wrong[l][h]))
        .collect();
    if !split.is_empty() {
        out.report
            .paragraph(&format!("Output heads' direct effects split into logit(answer) and logit(wrong), each against the mean logit: {}.", split.join("; ")));
    }
    if let Some(g) = &scores.path_patching {
        let mut top: Vec<(usize, usize)> = scores.heads().filter(|(l, h)| g[*l][*h].abs() >= 0.02).collect();
        top.sort_by(|a, b| g[b.0][b.1].total_cmp(&g[a.0][a.1]));
        let shown: Vec<String> = top.iter().take(8).map(|(l, h)| format!("L{l}H{h} {:.2}", g[*l][*h])).collect();
        out.report.paragraph(&format!(
            "Path patching into the output heads' queries (only the head's edges into them carry the corrupted run; share of the \
             clean - corrupted gap lost), largest first: {}.",
            if shown.is_empty() { "no head loses 2% or more".to_string() } else { shown.join(", ") }
        ));
    }
    let k = 10.min(l_n * h_n);
    let (dp, dn, pn) = scores.agreement(k);
    let opt = |x: Option<usize>| x.map_or("-".to_string(), |x| x.to_string());
    out.report.paragraph(&format!(
        "Agreement between methods: of the top {k} heads by |score|, DLA and activation patching share {}, DLA and EAP-IG's node \
         score {}, patching and EAP-IG {}.",
        opt(dp),
        opt(dn),
        opt(pn)
    ));
    let layers: Vec<String> = (0..l_n).map(|l| format!("L{l}")).collect();
    let heads: Vec<String> = (0..h_n).map(|h| format!("H{h}")).collect();
    let panel = |title: &str, g: &[Vec<f64>]| {
        Heatmap::from_tensor(title, &Tensor::f_from_slice(&g.concat())?.f_view([l_n as i64, h_n as i64])?, layers.clone(), heads.clone(), "head", "layer")
    };
    // Three charts of three panels, each readable on a page: effects, where the last position
    // looks, and the attention patterns that name heads.
    let mut effects = vec![panel("direct logit attribution", &scores.dla)?];
    if let Some(g) = &scores.patching {
        effects.push(panel("z patched, clean -> corrupted (normalised)", g)?);
    }
    if let Some(g) = &scores.node_score {
        effects.push(panel("EAP-IG node score", g)?);
    }
    if let Some(g) = &scores.path_patching {
        effects.push(panel("path patching into output heads' queries (share lost)", g)?);
    }
    let looks =
        [panel("attention last -> IO", &scores.attn_io)?, panel("attention last -> S1", &scores.attn_s1)?, panel("attention last -> S2", &scores.attn_s2)?];
    let patterns = [
        panel("induction (S2 -> S1+1)", &scores.induction)?,
        panel("duplicate token (S2 -> S1)", &scores.duplicate)?,
        panel("previous token", &scores.previous)?,
    ];
    out.chart("heads_effects", &format!("{}: each head's effect on the logit difference", scores.name), |path| heatmaps(path, &effects))?;
    out.chart("heads_attention", &format!("{}: attention from the last position", scores.name), |path| heatmaps(path, &looks))?;
    out.chart("heads_patterns", &format!("{}: attention patterns that name heads", scores.name), |path| heatmaps(path, &patterns))?;
    out.table("heads", "every head's scores and roles", &table)
}
