//! Charts for reports: heatmap panels (patching and tracing grids), line charts (faithfulness
//! curves), scatter plots (predicted against measured) and circuit drawings, as SVG or PNG by the file extension. PNG text uses DejaVu Sans embedded in the
//! binary, so it renders on machines without fonts.

use std::path::Path;
use std::sync::Once;

use plotters::coord::ranged1d::{AsRangedCoord, ValueFormatter};
use plotters::coord::Shift;
use plotters::prelude::*;

use crate::error::{Error, Result};
use circuits::edge_graph::{EdgeGraph, Qkv, Receiver, Sender};
use tch::{Kind, Tensor};

/// One heatmap: `values[row][col]`.
#[derive(Clone, Debug)]
pub struct Heatmap {
    /// Panel title.
    pub title: String,
    /// Row labels (the y axis), top to bottom.
    pub rows: Vec<String>,
    /// Column labels (the x axis).
    pub cols: Vec<String>,
    /// [rows][cols].
    pub values: Vec<Vec<f64>>,
    /// x-axis title.
    pub x_label: String,
    /// y-axis title.
    pub y_label: String,
}

impl Heatmap {
    /// A panel of `values` [rows, cols] (any float kind) with axis labels.
    pub fn from_tensor(title: &str, values: &Tensor, rows: Vec<String>, cols: Vec<String>, x_label: &str, y_label: &str) -> Result<Heatmap> {
        let values = Vec::<Vec<f64>>::try_from(&values.f_to_kind(Kind::Double)?)?;
        Ok(Heatmap { title: title.into(), rows, cols, values, x_label: x_label.into(), y_label: y_label.into() })
    }
}

/// One line of a line chart.
#[derive(Clone, Debug)]
pub struct Series {
    /// Legend entry.
    pub name: String,
    /// (x, y) in order.
    pub points: Vec<(f64, f64)>,
}

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // The font is valid TrueType; a failure would only leave PNG text blank.
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular());
    });
}

fn chart_err(path: &Path) -> impl Fn(String) -> Error + '_ {
    move |message| Error::Chart { path: path.to_path_buf(), message }
}

/// Runs `$draw` (an expression using `$root`, a drawing area of either backend) for the
/// backend the extension of `$path` names.
macro_rules! render {
    ($path:expr, $size:expr, |$root:ident| $draw:expr) => {{
        register_font();
        let path: &Path = $path;
        let err = chart_err(path);
        let result: std::result::Result<(), String> = match path.extension().and_then(|e| e.to_str()) {
            Some("svg") => {
                let $root = SVGBackend::new(path, $size).into_drawing_area();
                $root.fill(&WHITE).map_err(|e| e.to_string()).and_then(|_| $draw).and_then(|_| $root.present().map_err(|e| e.to_string()))
            }
            Some("png") => {
                let $root = BitMapBackend::new(path, $size).into_drawing_area();
                $root.fill(&WHITE).map_err(|e| e.to_string()).and_then(|_| $draw).and_then(|_| $root.present().map_err(|e| e.to_string()))
            }
            _ => Err("charts are written as .svg or .png".into()),
        };
        result.map_err(err)
    }};
}

/// Panels side by side wider than this are stacked instead, so that a page 1,280 px wide shows
/// each at a readable scale.
const MAX_ROW_W: u32 = 2400;

/// Draws `panels` side by side into `path` (`.svg` or `.png`), or one above the other when side
/// by side they would be wider than [`MAX_ROW_W`].
pub fn heatmaps(path: &Path, panels: &[Heatmap]) -> Result<()> {
    if panels.is_empty() {
        return Err(Error::Input("no heatmap to draw".into()));
    }
    let rows = panels.iter().map(|p| p.rows.len()).max().unwrap_or(1);
    let longest = panels.iter().flat_map(|p| p.rows.iter()).map(|r| r.chars().count()).max().unwrap_or(4) as u32;
    // Wide enough for the cells and for the title (16 px sans-serif: about 8 px a character).
    let title = panels.iter().map(|p| p.title.chars().count()).max().unwrap_or(0) as u32;
    let panel_w = (120 + COLOR_BAR_W + 7 * longest + 44 * panels.iter().map(|p| p.cols.len()).max().unwrap_or(1) as u32).max(8 * title + 40);
    let panel_h = (140 + 26 * rows as u32).max(260);
    let n = panels.len() as u32;
    let stacked = n > 1 && panel_w * n > MAX_ROW_W;
    let (size, grid) = match stacked {
        true => ((panel_w.max(360), panel_h * n), (panels.len(), 1)),
        false => (((panel_w * n).max(360), panel_h), (1, panels.len())),
    };
    render!(path, size, |root| { root.split_evenly(grid).iter().zip(panels).try_for_each(|(area, panel)| draw_heatmap(area, panel, longest)) })
}

/// One chart of a row drawn by [`line_panels`].
#[derive(Clone, Debug)]
pub struct LinePanel {
    /// Its title.
    pub title: String,
    /// x-axis title.
    pub x_label: String,
    /// y-axis title.
    pub y_label: String,
    /// Its lines.
    pub series: Vec<Series>,
}

/// Draws `series` as lines with markers into `path` (`.svg` or `.png`).
pub fn line_chart(path: &Path, title: &str, x_label: &str, y_label: &str, series: &[Series]) -> Result<()> {
    let panel = LinePanel { title: title.into(), x_label: x_label.into(), y_label: y_label.into(), series: series.to_vec() };
    line_panels(path, std::slice::from_ref(&panel))
}

/// Draws `panels` side by side into `path` (`.svg` or `.png`), each with its own axes: 760 x 480
/// for one panel, 420 px wide each for several.
pub fn line_panels(path: &Path, panels: &[LinePanel]) -> Result<()> {
    let ranges = panels.iter().map(panel_ranges).collect::<Result<Vec<_>>>()?;
    let size = if panels.len() == 1 { (760, 480) } else { (420 * panels.len() as u32, 360) };
    render!(path, size, |root| root
        .split_evenly((1, panels.len()))
        .iter()
        .zip(panels.iter().zip(&ranges))
        .try_for_each(|(area, (p, r))| draw_panel(area, p, r)))
}

/// Draws `panels` as scatter plots, each series a colour of points, with the diagonal y = x
/// dashed (both axes share one range): a prediction (x) against a measurement (y). Side by side,
/// 420 px wide each, into `path` (`.svg` or `.png`).
pub fn scatter_panels(path: &Path, panels: &[LinePanel]) -> Result<()> {
    let ranges = panels.iter().map(panel_ranges).collect::<Result<Vec<_>>>()?;
    render!(path, (420 * panels.len() as u32, 400), |root| root.split_evenly((1, panels.len())).iter().zip(panels.iter().zip(&ranges)).try_for_each(
        |(area, (p, ((x0, x1), (y0, y1))))| {
            let (lo, hi) = (x0.min(*y0), x1.max(*y1));
            let pad = if hi > lo { (hi - lo) * 0.05 } else { 0.5 };
            let r = lo - pad..hi + pad;
            let mut chart = ChartBuilder::on(area)
                .caption(&p.title, ("sans-serif", 17))
                .margin(12)
                .x_label_area_size(40)
                .y_label_area_size(56)
                .build_cartesian_2d(r.clone(), r.clone())
                .map_err(|e| e.to_string())?;
            chart
                .configure_mesh()
                .x_labels(6)
                .y_labels(6)
                .x_desc(&p.x_label)
                .y_desc(&p.y_label)
                .label_style(("sans-serif", 13))
                .draw()
                .map_err(|e| e.to_string())?;
            let grey = RGBColor(150, 150, 150);
            chart.draw_series(DashedLineSeries::new([(r.start, r.start), (r.end, r.end)], 6, 4, grey.stroke_width(1))).map_err(|e| e.to_string())?;
            for (i, s) in p.series.iter().enumerate() {
                let color = Palette99::pick(i).to_rgba();
                chart
                    .draw_series(s.points.iter().filter(|(x, y)| x.is_finite() && y.is_finite()).map(|p| Circle::new(*p, 3, color.filled())))
                    .map_err(|e| e.to_string())?
                    .label(s.name.clone())
                    .legend(move |(x, y)| Circle::new((x + 9, y), 3, color.filled()));
            }
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .label_font(("sans-serif", 13))
                .position(SeriesLabelPosition::UpperLeft)
                .draw()
                .map_err(|e| e.to_string())
        }
    ))
}

/// The x and y extents of a panel's finite points; an error when it has none.
fn panel_ranges(panel: &LinePanel) -> Result<((f64, f64), (f64, f64))> {
    let all: Vec<(f64, f64)> = panel.series.iter().flat_map(|s| s.points.iter().copied()).filter(|(x, y)| x.is_finite() && y.is_finite()).collect();
    if all.is_empty() {
        return Err(Error::Input(format!("no finite points to draw in `{}`", panel.title)));
    }
    let x = all.iter().fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.0), b.max(p.0)));
    let y = all.iter().fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.1), b.max(p.1)));
    Ok((x, y))
}

fn draw_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    p: &LinePanel,
    ((x0, x1), (y0, y1)): &((f64, f64), (f64, f64)),
) -> std::result::Result<(), String> {
    let (x0, x1, y0, y1) = (*x0, *x1, *y0, *y1);
    let pad = |a: f64, b: f64| if b > a { (b - a) * 0.05 } else { 0.5 };
    // A quantity that cannot be negative keeps its axis at or above 0.
    let y_low = if y0 >= 0.0 { (y0 - pad(y0, y1)).max(0.0) } else { y0 - pad(y0, y1) };
    let (xr, yr) = (x0 - pad(x0, x1)..x1 + pad(x0, x1), y_low..y1 + pad(y0, y1));
    // Edge counts from 1 to tens of thousands: a log axis when x spans two decades or more.
    if x0 > 0.0 && x1 / x0 >= 100.0 {
        draw_lines(area, &p.title, (x0 / 1.3..x1 * 1.3).log_scale(), yr, &format!("{} (log scale)", p.x_label), &p.y_label, &p.series)
    } else {
        draw_lines(area, &p.title, xr, yr, &p.x_label, &p.y_label, &p.series)
    }
}

fn draw_lines<DB: DrawingBackend, X>(
    root: &DrawingArea<DB, Shift>,
    title: &str,
    x: X,
    y: std::ops::Range<f64>,
    x_label: &str,
    y_label: &str,
    series: &[Series],
) -> std::result::Result<(), String>
where
    X: AsRangedCoord<Value = f64>,
    X::CoordDescType: ValueFormatter<f64>,
{
    let mut chart = ChartBuilder::on(root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(56)
        .build_cartesian_2d(x, y)
        .map_err(|e| e.to_string())?;
    chart.configure_mesh().x_labels(6).x_desc(x_label).y_desc(y_label).label_style(("sans-serif", 13)).draw().map_err(|e| e.to_string())?;
    for (i, s) in series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(s.points.iter().copied(), color.stroke_width(2)))
            .map_err(|e| e.to_string())?
            .label(s.name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2)));
        chart.draw_series(s.points.iter().map(|p| Circle::new(*p, 3, color.filled()))).map_err(|e| e.to_string())?;
    }
    // A lone unnamed line needs no legend.
    if series.iter().any(|s| !s.name.is_empty()) {
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 13))
            .position(SeriesLabelPosition::LowerRight)
            .draw()
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// `n` categories (a range `0..m` holds `m + 1` segments).
fn segments(n: usize) -> plotters::coord::ranged1d::SegmentedCoord<plotters::coord::types::RangedCoordusize> {
    (0..n.saturating_sub(1).max(1)).into_segmented()
}

/// Colour of a cell whose value is `t` of the colour scale (`t` in [-1, 1] when `signed`, else
/// [0, 1]): blue through white to red for signed values, white to purple otherwise.
/// A heatmap cell's colour; grey where there is no value (NaN: e.g. a dense layer's experts).
fn heat_color(t: f64, signed: bool) -> RGBColor {
    let t = t.clamp(-1.0, 1.0);
    if t.is_nan() {
        RGBColor(200, 200, 200)
    } else if !signed {
        RGBColor((255.0 - 150.0 * t) as u8, (255.0 - 210.0 * t) as u8, (255.0 - 90.0 * t) as u8)
    } else if t >= 0.0 {
        RGBColor(255, (255.0 * (1.0 - t)) as u8, (255.0 * (1.0 - t)) as u8)
    } else {
        RGBColor((255.0 * (1.0 + t)) as u8, (255.0 * (1.0 + t)) as u8, 255)
    }
}

/// Width in pixels of a heatmap's colour bar with its tick labels.
const COLOR_BAR_W: u32 = 76;

fn draw_heatmap<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, panel: &Heatmap, longest: u32) -> std::result::Result<(), String> {
    let (nr, nc) = (panel.rows.len(), panel.cols.len());
    let (lo, hi) = panel.values.iter().flatten().filter(|v| v.is_finite()).fold((0f64, 0f64), |(a, b), v| (a.min(*v), b.max(*v)));
    let signed = lo < 0.0;
    let scale = if signed { lo.abs().max(hi) } else { hi }.max(1e-12);
    let (cells, bar) = area.split_horizontally(area.dim_in_pixel().0.saturating_sub(COLOR_BAR_W));
    let mut chart = ChartBuilder::on(&cells)
        .caption(&panel.title, ("sans-serif", 16))
        .margin(8)
        .x_label_area_size(40)
        .y_label_area_size(16 + 7 * longest)
        .build_cartesian_2d(segments(nc), segments(nr))
        .map_err(|e| e.to_string())?;
    let rows = panel.rows.clone();
    let cols = panel.cols.clone();
    chart
        .configure_mesh()
        .disable_mesh()
        .x_desc(panel.x_label.as_str())
        .y_desc(panel.y_label.as_str())
        .x_labels(nc)
        .y_labels(nr)
        .label_style(("sans-serif", 12))
        .x_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) => cols.get(*i).cloned().unwrap_or_default(),
            _ => String::new(),
        })
        .y_label_formatter(&|v| match v {
            // Row 0 at the top, as tokens are read.
            SegmentValue::CenterOf(i) if *i < nr => rows[nr - 1 - *i].clone(),
            _ => String::new(),
        })
        .draw()
        .map_err(|e| e.to_string())?;
    chart
        .draw_series(panel.values.iter().enumerate().flat_map(|(r, row)| {
            row.iter().enumerate().map(move |(c, v)| {
                let y = nr - 1 - r;
                Rectangle::new(
                    [(SegmentValue::Exact(c), SegmentValue::Exact(y)), (SegmentValue::Exact(c + 1), SegmentValue::Exact(y + 1))],
                    heat_color(v / scale, signed).filled(),
                )
            })
        }))
        .map_err(|e| e.to_string())?;
    draw_color_bar(&bar, if signed { -scale } else { 0.0 }, scale, signed)
}

/// The colour scale of a heatmap, from `lo` to `hi`, with tick labels.
fn draw_color_bar<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, lo: f64, hi: f64, signed: bool) -> std::result::Result<(), String> {
    const STEPS: usize = 64;
    let mut bar = ChartBuilder::on(area)
        .margin_top(34)
        .margin_bottom(48)
        .margin_left(6)
        .right_y_label_area_size(COLOR_BAR_W - 24)
        .build_cartesian_2d(0f64..1f64, lo..hi)
        .map_err(|e| e.to_string())?;
    bar.configure_mesh()
        .disable_mesh()
        .disable_x_axis()
        .y_labels(5)
        .label_style(("sans-serif", 11))
        .y_label_formatter(&|v| match v.abs() {
            a if a >= 100.0 => format!("{v:.0}"),
            a if a >= 1.0 => format!("{v:.2}"),
            _ => format!("{v:.3}"),
        })
        .draw()
        .map_err(|e| e.to_string())?;
    let step = (hi - lo) / STEPS as f64;
    bar.draw_series((0..STEPS).map(|i| {
        let v = lo + step * i as f64;
        // `hi` is the colour scale's full extent, signed or not.
        Rectangle::new([(0.0, v), (1.0, v + step)], heat_color((v + step / 2.0) / hi, signed).filled())
    }))
    .map_err(|e| e.to_string())?;
    Ok(())
}

/// Draws the kept edges of a circuit on the edge graph into `path` (`.svg` or `.png`): the
/// embedding at the bottom, then each layer's heads and MLP, the logits at the top; edge width by
/// `|weight|` (an ACDC effect or an attribution score), colour by the receiving input (q red, k
/// green, v blue, MLP and logits grey); nodes without a kept edge are faint, and in models of more
/// than 8 layers left out with their rows.
pub fn circuit_graph(path: &Path, title: &str, graph: &EdgeGraph, kept: &[bool], weights: &[f64]) -> Result<()> {
    if kept.len() != graph.n_edges() || weights.len() != graph.n_edges() {
        return Err(Error::Input(format!("{} edges in the graph, {} kept flags and {} weights", graph.n_edges(), kept.len(), weights.len())));
    }
    // Nodes an edge touches are drawn strong, the rest faint.
    let mut active = std::collections::HashSet::new();
    for (e, _) in graph.edges.iter().zip(kept).filter(|(_, k)| **k) {
        active.insert(e.sender.to_string());
        active.insert(match e.receiver {
            Receiver::Head { layer, head, .. } => Sender::Head { layer, head }.to_string(),
            r => r.to_string(),
        });
    }
    // Rows bottom to top: embed, then per layer heads and MLP, then logits; in a graph of more
    // than 8 layers, rows without a touched node are left out (a 30-layer model's 100 edges
    // would otherwise stand on a page 60 rows tall).
    let n_heads = graph.senders.iter().filter_map(|s| if let Sender::Head { head, .. } = s { Some(*head + 1) } else { None }).max().unwrap_or(0) as usize;
    let has_mlp = graph.senders.iter().any(|s| matches!(s, Sender::Mlp { .. }));
    let per_layer = 1 + has_mlp as usize;
    let full_rows = 2 + per_layer * graph.n_layers;
    let compact = graph.n_layers > 8;
    let row_of_node = |s: &Sender| -> usize {
        match s {
            Sender::Embed => 0,
            Sender::Head { layer, .. } => 1 + per_layer * layer,
            Sender::Mlp { layer } => 2 + per_layer * layer,
        }
    };
    let mut shown_rows = vec![!compact; full_rows];
    shown_rows[0] = true;
    shown_rows[full_rows - 1] = true;
    for s in graph.senders.iter().filter(|s| active.contains(&s.to_string())) {
        shown_rows[row_of_node(s)] = true;
    }
    let rank: Vec<usize> = shown_rows
        .iter()
        .scan(0, |n, &on| {
            let r = *n;
            *n += on as usize;
            Some(r)
        })
        .collect();
    let n_rows = shown_rows.iter().filter(|r| **r).count();
    let width = (140 + 110 * n_heads.max(2)) as u32;
    let height = (90 + 90 * n_rows) as u32;
    let row_y = |row: usize| -> i32 { (height as usize - 50 - 90 * rank[row]) as i32 - 20 };
    let centre = width as i32 / 2;
    let head_x = |h: i64| -> i32 { 90 + ((width as i32 - 180) * (2 * h as i32 + 1)) / (2 * n_heads.max(1) as i32) };
    let sender_xy = |s: &Sender| -> (i32, i32) {
        match s {
            Sender::Embed => (centre, row_y(0)),
            Sender::Head { head, .. } => (head_x(*head), row_y(row_of_node(s))),
            Sender::Mlp { .. } => (centre, row_y(row_of_node(s))),
        }
    };
    let receiver_xy = |r: &Receiver| -> ((i32, i32), RGBColor) {
        match r {
            Receiver::Head { layer, head, input } => {
                let (dx, colour) = match input {
                    Qkv::Q => (-10, RGBColor(200, 40, 40)),
                    Qkv::K => (0, RGBColor(30, 140, 50)),
                    Qkv::V => (10, RGBColor(40, 80, 200)),
                };
                ((head_x(*head) + dx, row_y(row_of_node(&Sender::Head { layer: *layer, head: *head }))), colour)
            }
            Receiver::Mlp { layer } => ((centre, row_y(row_of_node(&Sender::Mlp { layer: *layer }))), RGBColor(90, 90, 90)),
            Receiver::Logits => ((centre, row_y(full_rows - 1)), RGBColor(90, 90, 90)),
        }
    };
    let max_w = weights.iter().zip(kept).filter(|(_, k)| **k).fold(0f64, |m, (w, _)| m.max(w.abs())).max(1e-12);
    let mut nodes: Vec<(String, (i32, i32))> = graph.senders.iter().filter(|s| shown_rows[row_of_node(s)]).map(|s| (s.to_string(), sender_xy(s))).collect();
    nodes.push(("logits".into(), receiver_xy(&Receiver::Logits).0));
    render!(path, (width, height), |root| {
        let draw = || -> std::result::Result<(), String> {
            root.draw(&Text::new(title.to_string(), (16, 12), ("sans-serif", 18).into_font())).map_err(|e| e.to_string())?;
            for (i, (e, w)) in graph.edges.iter().zip(weights).enumerate() {
                if !kept[i] {
                    continue;
                }
                let (from, (to, colour)) = (sender_xy(&e.sender), receiver_xy(&e.receiver));
                let stroke = 1 + (5.0 * w.abs() / max_w).round() as u32;
                root.draw(&PathElement::new(vec![(from.0, from.1 - 14), (to.0, to.1 + 14)], colour.mix(0.75).stroke_width(stroke)))
                    .map_err(|e| e.to_string())?;
            }
            for (name, (x, y)) in &nodes {
                let on = active.contains(name);
                let (fill, ink) = if on { (RGBColor(255, 236, 200), BLACK) } else { (RGBColor(245, 245, 245), RGBColor(180, 180, 180)) };
                let half = 7 * name.len() as i32 / 2 + 10;
                root.draw(&Rectangle::new([(x - half, y - 14), (x + half, y + 14)], fill.filled())).map_err(|e| e.to_string())?;
                root.draw(&Rectangle::new([(x - half, y - 14), (x + half, y + 14)], ink.stroke_width(1))).map_err(|e| e.to_string())?;
                let style = ("sans-serif", 14)
                    .into_font()
                    .color(&ink)
                    .pos(plotters::style::text_anchor::Pos::new(plotters::style::text_anchor::HPos::Center, plotters::style::text_anchor::VPos::Center));
                root.draw(&Text::new(name.clone(), (*x, *y), style)).map_err(|e| e.to_string())?;
            }
            let legend = "edge width: |weight|; into q (red), k (green), v (blue), MLP and logits (grey)";
            root.draw(&Text::new(legend, (16, height as i32 - 22), ("sans-serif", 13).into_font())).map_err(|e| e.to_string())
        };
        draw()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faithfulness_curves_of_large_graphs_get_a_log_axis() -> Result<()> {
        // 1 .. 32,491 edges: both axes kinds draw, to SVG and PNG.
        let points: Vec<(f64, f64)> = [1.0, 3.0, 10.0, 100.0, 1000.0, 32491.0].iter().map(|x: &f64| (*x, x.ln() / 32491f64.ln())).collect();
        let series = [Series { name: "EAP-IG(5)".into(), points }];
        let dir = std::env::temp_dir().join(format!("interp-chart-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(Error::io(&dir))?;
        for file in ["log.svg", "log.png"] {
            line_chart(&dir.join(file), "faithfulness", "edges kept", "faithfulness", &series)?;
            assert!(dir.join(file).metadata().map_err(Error::io(&dir))?.len() > 1000);
        }
        let svg = std::fs::read_to_string(dir.join("log.svg")).map_err(Error::io(&dir))?;
        assert!(svg.contains("edges kept (log scale)"));
        std::fs::remove_dir_all(&dir).map_err(Error::io(&dir))?;
        Ok(())
    }

    #[test]
    fn colour_scale_runs_blue_white_red_or_white_purple() {
        let white = RGBColor(255, 255, 255);
        assert_eq!(heat_color(0.0, true), white);
        assert_eq!(heat_color(0.0, false), white);
        assert_eq!(heat_color(1.0, true), RGBColor(255, 0, 0));
        assert_eq!(heat_color(-1.0, true), RGBColor(0, 0, 255));
        assert_eq!(heat_color(1.0, false), RGBColor(105, 45, 165));
        // Out-of-scale values take the end colours.
        assert_eq!(heat_color(3.0, true), heat_color(1.0, true));
    }
}
