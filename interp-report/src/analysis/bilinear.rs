//! Bilinear-MLP spectra: the interaction matrices of output directions, their eigenvalues, the
//! tokens their top eigenvectors read, and (on the task model) accuracy with truncated spectra.

use interp_core::tasks::{Task, TaskVocab};
use interp_core::HookedTransformer;
use tch::Tensor;

use crate::chart::{line_chart, Series};
use crate::error::{Error, Result};
use crate::output::Output;
use crate::table::{Table, Value};
use circuits::bilinear::{token_readout, truncation_accuracy, unembedding_direction, BilinearLayer, Spectrum};

/// What [`bilinear_spectra`] decomposes.
#[derive(Clone, Debug)]
pub struct BilinearSpectraConfig {
    /// Output directions: a token's unembedding (`m0`), or the difference of two (`m7-m8`).
    pub directions: Vec<String>,
    /// Eigenvectors per direction read out as tokens.
    pub top: i64,
    /// Also run modular addition with each answer logit's MLP term truncated to k eigenpairs
    /// (needs a model that speaks the task vocabulary).
    pub truncation: bool,
}

impl Default for BilinearSpectraConfig {
    fn default() -> Self {
        BilinearSpectraConfig { directions: ["m0", "m1", "m2", "m7-m8"].map(String::from).to_vec(), top: 4, truncation: true }
    }
}

/// One eigenvector read out as tokens.
pub struct Readout {
    /// Rank by |eigenvalue|, from 0.
    pub rank: i64,
    /// Its eigenvalue.
    pub eigenvalue: f64,
    /// The five tokens it favours and disfavours most (direct path through W_E).
    pub favoured: String,
    /// The five tokens it disfavours most.
    pub disfavoured: String,
}

/// One direction's spectrum.
pub struct DirectionSpectrum {
    /// The direction as given (`m0`, `m7-m8`).
    pub name: String,
    /// By |eigenvalue|, largest first.
    pub eigenvalues: Vec<f64>,
    /// Participation ratio of the eigenvalues: (sum |l|)^2 / sum l^2.
    pub effective_rank: f64,
    /// The top eigenvectors read out as tokens.
    pub readouts: Vec<Readout>,
}

/// What [`bilinear_spectra`] found.
pub struct BilinearSpectra {
    /// The block whose MLP was decomposed.
    pub layer: usize,
    /// Hidden units of that MLP.
    pub d_hidden: i64,
    /// One spectrum per direction, in the config's order.
    pub directions: Vec<DirectionSpectrum>,
    /// (k, modular-addition accuracy on 256 prompts) with k eigenpairs per answer logit.
    pub truncation: Option<Vec<(i64, f64)>>,
}

/// The id of one token, by its text; an error if the text is not exactly one token.
pub fn single_token(model: &HookedTransformer, word: &str) -> Result<i64> {
    let tok = model.require_tokenizer("to look tokens up")?;
    let ids = tok.encode(word, false)?;
    match ids.as_slice() {
        // An unknown word can encode to the unknown-token id: check the round trip.
        [id] if tok.to_str_tokens(&[*id])?.first().map(|t| t.trim()) == Some(word.trim()) => Ok(*id),
        [_] => Err(Error::Input(format!("`{word}` is not in the model's vocabulary"))),
        _ => Err(Error::Input(format!("`{word}` is {} tokens, not one", ids.len()))),
    }
}

fn token_words(model: &HookedTransformer, ids: &[i64]) -> Result<Vec<String>> {
    match model.tokenizer() {
        Some(t) => Ok(t.to_str_tokens(ids)?),
        None => Ok(ids.iter().map(|i| i.to_string()).collect()),
    }
}

/// Decomposes `bl`, the MLP of `model`'s block `layer`, along each direction of `cfg`.
pub fn bilinear_spectra(model: &HookedTransformer, layer: usize, bl: &BilinearLayer, cfg: &BilinearSpectraConfig) -> Result<BilinearSpectra> {
    let mut dirs = Vec::new();
    for spec in &cfg.directions {
        let u = match spec.split_once('-').filter(|(a, b)| !a.is_empty() && !b.is_empty()) {
            Some((a, b)) => unembedding_direction(model, single_token(model, a)?)?.f_sub(&unembedding_direction(model, single_token(model, b)?)?)?,
            None => unembedding_direction(model, single_token(model, spec)?)?,
        };
        dirs.push(u);
    }
    if dirs.is_empty() {
        return Err(Error::Input("no output direction to decompose".into()));
    }
    let spectra = Spectrum::of_batch(&bl.interaction_matrices(&Tensor::f_stack(&dirs, 0)?)?)?;
    let mut directions = Vec::new();
    for (i, name) in cfg.directions.iter().enumerate() {
        let spec = spectra.get(i as i64)?;
        let eigenvalues = spec.eigenvalues()?;
        let mut readouts = Vec::new();
        for rank in 0..cfg.top.min(spec.len()) {
            let scores = token_readout(model, &spec.vectors.f_select(1, rank)?)?;
            let (_, hi) = scores.f_topk(5, 0, true, true)?;
            let (_, lo) = scores.f_topk(5, 0, false, true)?;
            readouts.push(Readout {
                rank,
                eigenvalue: eigenvalues[rank as usize],
                favoured: token_words(model, &Vec::<i64>::try_from(&hi)?)?.join(" "),
                disfavoured: token_words(model, &Vec::<i64>::try_from(&lo)?)?.join(" "),
            });
        }
        directions.push(DirectionSpectrum { name: name.clone(), effective_rank: spec.effective_rank()?, eigenvalues, readouts });
    }
    let truncation = match cfg.truncation {
        false => None,
        true => {
            let vocab =
                TaskVocab::of_model(model).map_err(|e| Error::Input(format!("the truncation curve needs a model trained on the built-in tasks: {e}")))?;
            let batch = Task::ModularAddition.generate(&vocab, 256, 0)?;
            let candidates: Vec<i64> = (0..vocab.modulus).map(|i| vocab.id(&format!("m{i}"))).collect::<std::result::Result<_, _>>()?;
            let ks: Vec<i64> = [0, 1, 2, 4, 8, 16, 32, 64, bl.d_in()].into_iter().filter(|k| *k <= bl.d_in()).collect();
            Some(truncation_accuracy(model, layer, &batch.clean, &candidates, &batch.answer, &ks)?)
        }
    };
    Ok(BilinearSpectra { layer, d_hidden: bl.d_hidden(), directions, truncation })
}

impl BilinearSpectra {
    /// One line describing the layer and the directions.
    pub fn intro(&self) -> String {
        let l = self.layer;
        format!("layer {l} MLP ({} hidden units), input blocks.{l}.ln2.hook_normalized; {} directions", self.d_hidden, self.directions.len())
    }

    /// A report section; `spectra` (chart), `eigenvectors` (table) and, with the task,
    /// `truncation` (chart and table).
    pub fn write(&self, out: &mut Output) -> Result<()> {
        let layer = self.layer;
        out.report.section(&format!("Bilinear MLP spectra: layer {layer}"));
        out.report.paragraph(&format!(
            "{}. For each output direction u (a token's unembedding, or a difference of two), the MLP's contribution u . y is the \
             quadratic form x^T Q(u) x; its eigenvectors, ordered by |eigenvalue|, read out through the embedding as the tokens they favour and disfavour.",
            self.intro()
        ));
        let mut table = Table::new(&["direction", "rank", "eigenvalue", "favoured_tokens", "disfavoured_tokens"]);
        let mut series = Vec::new();
        for d in &self.directions {
            series.push(Series { name: d.name.clone(), points: d.eigenvalues.iter().take(32).enumerate().map(|(r, v)| (r as f64 + 1.0, *v)).collect() });
            for r in &d.readouts {
                table.push(vec![
                    Value::Text(d.name.clone()),
                    Value::Int(r.rank),
                    Value::Float(r.eigenvalue),
                    Value::Text(r.favoured.clone()),
                    Value::Text(r.disfavoured.clone()),
                ]);
            }
        }
        let title = format!("Eigenvalues of Q(u), layer {layer}");
        out.chart("spectra", "top 32 eigenvalues of each direction's interaction matrix", |p| {
            line_chart(p, &title, "rank by |eigenvalue|", "eigenvalue", &series)
        })?;
        out.table("eigenvectors", "top eigenvectors as tokens (direct path through W_E)", &table)?;
        if let Some(curve) = &self.truncation {
            let mut t = Table::new(&["k", "accuracy"]);
            for (k, acc) in curve {
                t.push(vec![Value::Int(*k), Value::Float(*acc)]);
            }
            let points = curve.iter().map(|(k, a)| ((*k as f64 + 1.0).log2(), *a)).collect();
            let series = [Series { name: "accuracy".into(), points }];
            let caption = "modular-addition accuracy (256 prompts) with each answer logit's MLP term truncated to its top k eigenpairs";
            out.chart("truncation", caption, |p| {
                line_chart(p, "Modular addition with the MLP's logit terms truncated", "log2(k + 1) eigenpairs per answer", "accuracy", &series)
            })?;
            out.table("truncation", "truncation curve", &t)?;
        }
        Ok(())
    }
}

impl BilinearSpectra {
    /// The spectra's summary on stdout.
    pub fn print(&self) {
        let s = self;
        println!("{}", s.intro());
        for d in &s.directions {
            let total: f64 = d.eigenvalues.iter().map(|v| v * v).sum();
            let top2: f64 = d.eigenvalues.iter().take(2).map(|v| v * v).sum();
            println!(
                "  {:>8}: effective rank {:.1}, top eigenvalues {:+.3} {:+.3}, top 2 hold {:.0}% of ||Q||_F^2",
                d.name,
                d.effective_rank,
                d.eigenvalues.first().copied().unwrap_or(0.0),
                d.eigenvalues.get(1).copied().unwrap_or(0.0),
                100.0 * top2 / total.max(1e-30)
            );
            for r in d.readouts.iter().take(2) {
                println!("      v{} ({:+.3}): + {} | - {}", r.rank, r.eigenvalue, r.favoured, r.disfavoured);
            }
        }
        if let Some(curve) = &s.truncation {
            let shown: Vec<String> = curve.iter().map(|(k, a)| format!("k={k}: {a:.3}")).collect();
            println!("modular addition (256 prompts), accuracy with k eigenpairs per answer logit: {}", shown.join(", "));
        }
    }
}
