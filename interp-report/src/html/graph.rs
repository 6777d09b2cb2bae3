//! Our HTML view of an attribution graph: an inline SVG with zoom, pan, a pruning slider and node
//! details on click.

use std::collections::HashMap;
use std::path::Path;

use circuits::attribution_graph::{AttributionGraph, Node, Pruned};
use transcoders::visible_token;

use super::{html_escape, write_graph_page};
use crate::error::Result;

/// For every `div.gv` of the page: the slider hides feature and error nodes (and their edges)
/// past a lower cumulative-influence threshold; a click on a node lists its strongest inputs and
/// outputs and shows the feature's dashboard when the page holds one (`#dash-{layer}-{feature}`).
const INSPECT_JS: &str = "if(!window.graphInspect){window.graphInspect=1;document.querySelectorAll('div.gv').forEach(function(g){\
var s=g.querySelector('svg'),r=g.querySelector('input'),o=g.querySelector('output'),p=g.querySelector('.nodeinfo'),hidden={};\
function prune(){var t=+r.value;o.textContent=t.toFixed(2);hidden={};\
s.querySelectorAll('circle').forEach(function(c){var k=c.dataset.k;if((k=='f'||k=='e')&&+c.dataset.c>t)hidden[c.dataset.i]=1});\
s.querySelectorAll('[data-i]').forEach(function(e){e.style.display=hidden[e.dataset.i]?'none':''});\
s.querySelectorAll('line').forEach(function(l){l.style.display=(hidden[l.dataset.s]||hidden[l.dataset.t])?'none':''})}\
r.addEventListener('input',prune);\
function nm(i){var c=s.querySelector('circle[data-i=\"'+i+'\"]');return c?c.dataset.n:i}\
function list(title,ls,end){ls.sort(function(a,b){return Math.abs(b.dataset.w)-Math.abs(a.dataset.w)});\
return '<b>'+title+'</b><ul>'+ls.slice(0,8).map(function(l){return '<li>'+nm(l.dataset[end])+': '+(+l.dataset.w).toFixed(3)+'</li>'}).join('')+'</ul>'}\
s.addEventListener('click',function(e){var c=e.target.closest('circle');if(!c)return;var i=c.dataset.i,ls=[].slice.call(s.querySelectorAll('line')).filter(function(l){return l.style.display!='none'});\
var h='<h4>'+c.dataset.n+'</h4><div class=row><div>'+list('strongest inputs',ls.filter(function(l){return l.dataset.t==i}),'s')+'</div><div>'+list('strongest outputs',ls.filter(function(l){return l.dataset.s==i}),'t')+'</div></div>';\
var d=c.dataset.d&&document.getElementById(c.dataset.d);p.innerHTML=h+(d?d.innerHTML:'')})})}";

/// Wheel zoom, drag pan and double-click reset for every `svg.graph` of the page (a viewBox
/// edit; no library, works offline). Set up once per page.
const ZOOM_JS: &str = "if(!window.graphZoom){window.graphZoom=1;document.querySelectorAll('svg.graph').forEach(function(s){\
var v0=s.getAttribute('viewBox').split(' ').map(Number),v=v0.slice(),drag=null;\
function set(){s.setAttribute('viewBox',v.join(' '))}\
function pt(e){var r=s.getBoundingClientRect();return[v[0]+(e.clientX-r.left)/r.width*v[2],v[1]+(e.clientY-r.top)/r.height*v[3]]}\
s.addEventListener('wheel',function(e){e.preventDefault();var p=pt(e),k=e.deltaY>0?1.2:1/1.2;v=[p[0]-(p[0]-v[0])*k,p[1]-(p[1]-v[1])*k,v[2]*k,v[3]*k];set()},{passive:false});\
s.addEventListener('mousedown',function(e){drag=pt(e);s.style.cursor='grabbing'});\
window.addEventListener('mouseup',function(){drag=null;s.style.cursor='grab'});\
s.addEventListener('mousemove',function(e){if(!drag)return;var p=pt(e);v[0]-=p[0]-drag[0];v[1]-=p[1]-drag[1];set()});\
s.addEventListener('dblclick',function(){v=v0.slice();set()})})}";

/// A self-contained HTML page of [`graph_view`].
pub fn write_graph_html(
    graph: &AttributionGraph,
    pruned: &Pruned,
    path: &Path,
    title: &str,
    token_text: &dyn Fn(i64) -> String,
    feature_labels: &HashMap<(usize, i64), String>,
) -> Result<()> {
    write_graph_page(path, title, &graph_view(graph, pruned, token_text, feature_labels)?)
}

/// At most this many edges are drawn, the strongest (a real model's pruned graph keeps hundreds
/// of thousands, which no browser draws; all are in the graph's JSON).
pub const MAX_DRAWN_EDGES: usize = 3_000;

/// At most this many nodes are drawn: every token and logit, then the features and errors of
/// highest influence (a real model's pruned graph keeps thousands, too many to read side by side
/// at 1,280 px; all are in the JSON and the node table).
pub const MAX_DRAWN_NODES: usize = 300;

/// `graph`, pruned by `pruned`, as an HTML fragment (a caption and an inline SVG with a little script;
/// a `Report` or [`write_graph_page`] brings its styles): one column per position, as wide as
/// its most crowded layer needs, one row per layer (embeddings at the bottom, logits at the
/// top). Every node is labelled (`L{layer}/{feature}` and `feature_labels`' text for
/// features, token text for embeddings and logits); node area by influence; edges blue
/// (excitatory) or red (inhibitory) with opacity by |weight|. The drawing fits the window's
/// width; the wheel zooms, dragging pans, a double click resets; hover for values.
pub fn graph_view(
    graph: &AttributionGraph,
    pruned: &Pruned,
    token_text: &dyn Fn(i64) -> String,
    feature_labels: &HashMap<(usize, i64), String>,
) -> Result<String> {
    let n_pos = graph.tokens.len();
    let (node_w, min_col_w, row_h, left, top) = (44.0, 34.0, 96.0, 44.0, 30.0);
    let rows = graph.n_layers + 2; // E, layers, logits
    let row_of = |node: &Node| -> usize {
        match node {
            Node::Token { .. } => 0,
            Node::Feature { layer, .. } | Node::Error { layer, .. } => layer + 1,
            Node::Logit { .. } => graph.n_layers + 1,
        }
    };
    let pos_of = |node: &Node| -> i64 {
        match node {
            Node::Token { pos, .. } | Node::Feature { pos, .. } | Node::Error { pos, .. } => *pos,
            Node::Logit { .. } => n_pos as i64 - 1,
        }
    };
    // Each (row, position) cell lays its kept nodes side by side; a column is as wide as its
    // fullest cell, so crowded positions spread and empty ones stay narrow.
    let mut kept: Vec<usize> = (0..graph.nodes.len()).filter(|&i| pruned.node_mask[i]).collect();
    let n_kept = kept.len();
    if n_kept > MAX_DRAWN_NODES {
        let always = |i: &usize| matches!(graph.nodes[*i], Node::Token { .. } | Node::Logit { .. });
        let (mut drawn, mut rest): (Vec<usize>, Vec<usize>) = kept.iter().partition(|i| always(i));
        rest.sort_by(|&a, &b| pruned.influence[b].total_cmp(&pruned.influence[a]));
        drawn.extend(rest.into_iter().take(MAX_DRAWN_NODES.saturating_sub(drawn.len())));
        drawn.sort_unstable();
        kept = drawn;
    }
    let mut cells: HashMap<(usize, i64), Vec<usize>> = HashMap::new();
    for &i in &kept {
        cells.entry((row_of(&graph.nodes[i]), pos_of(&graph.nodes[i]))).or_default().push(i);
    }
    // At least as wide as the position's token, in the 13 px monospace of the token axis.
    let mut col_w: Vec<f64> =
        graph.tokens.iter().map(|&t| f64::max(min_col_w, (8.0 * visible_token(&token_text(t)).chars().count() as f64 + 8.0).min(120.0))).collect();
    for ((_, pos), members) in &cells {
        col_w[*pos as usize] = f64::max(col_w[*pos as usize], node_w * members.len() as f64);
    }
    let col_x: Vec<f64> = col_w.iter().scan(left, |x, w| Some(std::mem::replace(x, *x + w))).collect();
    let (width, height) = (left + col_w.iter().sum::<f64>() + 20.0, top + row_h * rows as f64 + 40.0);
    let mut xy: HashMap<usize, (f64, f64)> = HashMap::new();
    for ((row, pos), members) in &cells {
        let p = *pos as usize;
        let x0 = col_x[p] + (col_w[p] - node_w * members.len() as f64) / 2.0;
        for (k, &i) in members.iter().enumerate() {
            let y = top + row_h * (rows - 1 - row) as f64 + row_h / 2.0;
            xy.insert(i, (x0 + node_w * (k as f64 + 0.5), y));
        }
    }
    let (pairs, weights) = graph.kept_edges(pruned)?;
    let mut drawn: Vec<usize> =
        (0..weights.len()).filter(|&e| xy.contains_key(&(pairs[2 * e] as usize)) && xy.contains_key(&(pairs[2 * e + 1] as usize))).collect();
    if drawn.len() > MAX_DRAWN_EDGES {
        drawn.sort_by(|&a, &b| weights[b].abs().total_cmp(&weights[a].abs()));
        drawn.truncate(MAX_DRAWN_EDGES);
        drawn.sort_unstable();
    }
    let max_w = weights.iter().fold(0f64, |m, w| m.max(w.abs())).max(1e-12);
    let mut svg = String::new();
    for r in 0..rows {
        let y = top + row_h * (rows - 1 - r) as f64 + row_h / 2.0;
        let label = match r {
            0 => "Emb".to_string(),
            r if r == rows - 1 => "Logit".to_string(),
            r => format!("L{}", r - 1),
        };
        svg += &format!("<text x=\"6\" y=\"{y:.1}\" class=\"axis\">{label}</text>\n");
    }
    for (p, &t) in graph.tokens.iter().enumerate() {
        let x = col_x[p] + col_w[p] / 2.0;
        svg += &format!(
            "<text x=\"{x:.1}\" y=\"{:.1}\" class=\"tok\" text-anchor=\"middle\">{}</text>\n",
            height - 14.0,
            html_escape(&visible_token(&token_text(t)))
        );
    }
    for (p, w) in drawn.iter().map(|&e| (&pairs[2 * e..2 * e + 2], &weights[e])) {
        let (Some(a), Some(b)) = (xy.get(&(p[1] as usize)), xy.get(&(p[0] as usize))) else { continue };
        let colour = if *w >= 0.0 { "#2166ac" } else { "#b2182b" };
        let opacity = 0.1 + 0.9 * (w.abs() / max_w);
        svg += &format!(
            "<line data-s=\"{}\" data-t=\"{}\" data-w=\"{w:.5}\" x1=\"{:.1}\" y1=\"{:.1}\" x2=\"{:.1}\" y2=\"{:.1}\" stroke=\"{colour}\" stroke-opacity=\"{opacity:.3}\" stroke-width=\"{:.2}\"><title>{} → {}: {w:.4}</title></line>\n",
            p[1], p[0], a.0, a.1, b.0, b.1, 0.5 + 2.5 * w.abs() / max_w, graph.node_id(p[1] as usize), graph.node_id(p[0] as usize)
        );
    }
    for &i in &kept {
        let (x, y) = xy[&i];
        let (kind, dash) = match &graph.nodes[i] {
            Node::Feature { layer, feature, .. } => ("f", format!("dash-{layer}-{feature}")),
            Node::Error { .. } => ("e", String::new()),
            Node::Token { .. } => ("t", String::new()),
            Node::Logit { .. } => ("l", String::new()),
        };
        let (fill, detail, label) = match &graph.nodes[i] {
            Node::Feature { layer, feature, activation, .. } => {
                let text = feature_labels.get(&(*layer, *feature)).map(|l| visible_token(l)).unwrap_or_default();
                ("#f4a582", format!("activation {activation:.3}"), (format!("L{layer}/{feature}"), text))
            }
            Node::Error { layer, .. } => ("#bababa", "transcoder error".to_string(), (format!("err L{layer}"), String::new())),
            Node::Token { token, .. } => {
                ("#92c5de", format!("token {}", html_escape(&token_text(*token))), (visible_token(&token_text(*token)), String::new()))
            }
            Node::Logit { token, probability } => (
                "#a6d96a",
                format!("\"{}\" p={probability:.3}", html_escape(&token_text(*token))),
                (visible_token(&token_text(*token)), format!("p={probability:.2}")),
            ),
        };
        let r = 3.0 + 9.0 * pruned.influence[i].max(0.0).sqrt().min(1.0);
        let name = html_escape(format!("{} {}", label.0, label.1).trim());
        svg += &format!(
            "<circle data-i=\"{i}\" data-k=\"{kind}\" data-c=\"{:.4}\" data-n=\"{name}\" data-d=\"{dash}\" cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"{r:.1}\" fill=\"{fill}\" stroke=\"#333\"><title>{} — {detail}; influence {:.4}</title></circle>\n",
            pruned.cumulative[i],
            graph.node_id(i),
            pruned.influence[i]
        );
        let short = |t: &str| html_escape(&t.chars().take(8).collect::<String>());
        svg += &format!("<text data-i=\"{i}\" x=\"{x:.1}\" y=\"{:.1}\" class=\"lbl\" text-anchor=\"middle\">{}</text>\n", y + r + 10.0, short(&label.0));
        if !label.1.is_empty() {
            svg += &format!("<text data-i=\"{i}\" x=\"{x:.1}\" y=\"{:.1}\" class=\"lbl2\" text-anchor=\"middle\">{}</text>\n", y + r + 20.0, short(&label.1));
        }
    }
    Ok(format!(
        "<p>{nodes} of {all} nodes and {edges} edges kept by influence on the logits{drawn}. Node area: influence; blue edges excite, red inhibit; \
         features are labelled layer/index and the token they promote most. Wheel to zoom, drag to pan, double-click to reset; click a node for its \
         strongest input and output edges (and a feature's dashboard); the slider prunes further. \
         Completeness error (max |sum of inputs + bias − value|): {err:.2e}{left_out}.</p>\n\
         <div class=\"gv\"><label>node threshold <input type=\"range\" min=\"0.1\" max=\"{thr}\" step=\"0.01\" value=\"{thr}\"> <output>{thr}</output></label>\n\
         <svg class=\"graph\" viewBox=\"0 0 {width:.0} {height:.0}\" width=\"100%\" style=\"max-width:{width:.0}px;cursor:grab\" xmlns=\"http://www.w3.org/2000/svg\">\n{svg}</svg>\n\
         <div class=\"nodeinfo\"></div></div>\n<script>{ZOOM_JS}{INSPECT_JS}</script>\n",
        thr = pruned.node_threshold,
        nodes = pruned.n_nodes(),
        all = graph.nodes.len(),
        edges = pruned.n_edges(),
        drawn = match (kept.len() < n_kept, drawn.len() < weights.len()) {
            (false, false) => String::new(),
            (false, true) => format!(" (the {} strongest edges are drawn; all are in the graph's JSON)", drawn.len()),
            (true, _) => format!(
                " (drawn: the {} nodes of highest influence, tokens and logits included, and the {} strongest edges between them; all are in the graph's JSON and the node table)",
                kept.len(),
                drawn.len()
            ),
        },
        err = graph.completeness_error()?,
        left_out = match graph.features_left_out {
            0 => String::new(),
            n => format!(", from the {n} active features left out by the feature limit"),
        },
    ))
}
