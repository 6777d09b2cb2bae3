//! Bilinear MLPs read from their weights (Pearce et al., "Bilinear MLPs enable weight-based
//! mechanistic interpretability").
//!
//! A bilinear layer computes `y = P ((W x) * (V x))`. For any output direction `u` the scalar
//! `u . y` is a quadratic form `x^T Q(u) x` with the symmetric interaction matrix
//! `Q(u) = 1/2 (M + M^T)`, `M = W^T diag(P^T u) V`, built without the third-order tensor. Its
//! eigenvectors, ordered by |eigenvalue|, are the input directions the output reads:
//! `u . y = sum_i lambda_i (v_i . x)^2`.
//!
//! For a transformer MLP the input `x` is `blocks.L.ln2.hook_normalized` (the norm's gain is
//! folded into `W` and `V`), so an interaction matrix says how the normalised residual stream
//! drives an output direction. Biases (norm bias, `b_gate`, `b_in`, `b_out`) fold in by appending
//! a constant 1 to `x`; the layer is then `augmented` and every input vector has `d_in + 1` entries.
//!
//! Everything is computed in f64.

use interp_core::config::Activation;
use interp_core::{BlockSite, CacheSpec, HookPoint, HookedTransformer, NormSite};
use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};

/// The factors of a bilinear layer `y = P ((W x) * (V x))`.
pub struct BilinearLayer {
    /// W [d_hidden, d_in] (d_in includes the constant input of an augmented layer).
    pub w: Tensor,
    /// V [d_hidden, d_in]
    pub v: Tensor,
    /// P [d_out, d_hidden]
    pub p: Tensor,
    /// Whether the last input coordinate is the constant 1 that carries the biases.
    pub augmented: bool,
}

fn f64_on(t: &Tensor, device: Device) -> Result<Tensor> {
    Ok(t.f_to_kind(Kind::Double)?.f_to_device(device)?.f_detach()?)
}

impl BilinearLayer {
    /// A layer from its factors: `w`, `v` [d_hidden, d_in], `p` [d_out, d_hidden].
    pub fn new(w: &Tensor, v: &Tensor, p: &Tensor) -> Result<Self> {
        let (ws, vs, ps) = (w.size(), v.size(), p.size());
        if ws.len() != 2 || ws != vs || ps.len() != 2 || ps[1] != ws[0] {
            return Err(Error::Input(format!("a bilinear layer needs W and V [d_hidden, d_in] and P [d_out, d_hidden]; got W {ws:?}, V {vs:?}, P {ps:?}")));
        }
        let device = w.device();
        Ok(BilinearLayer { w: f64_on(w, device)?, v: f64_on(v, device)?, p: f64_on(p, device)?, augmented: false })
    }

    /// A layer with biases: `y = P ((W x + b_w) * (V x + b_v)) + b_out`, made augmented. The
    /// output bias becomes one extra hidden unit `1 * 1` written by `P[:, last] = b_out`.
    pub fn with_biases(w: &Tensor, v: &Tensor, p: &Tensor, b_w: Option<&Tensor>, b_v: Option<&Tensor>, b_out: Option<&Tensor>) -> Result<Self> {
        let plain = Self::new(w, v, p)?;
        let (d_h, d_in, d_out) = (plain.d_hidden(), plain.d_in(), plain.d_out());
        let dev = plain.w.device();
        let bias = |b: Option<&Tensor>, n: i64, what: &str| -> Result<Tensor> {
            match b {
                Some(b) if b.size() != [n] => Err(Error::Input(format!("{what} has shape {:?}, expected [{n}]", b.size()))),
                Some(b) => f64_on(b, dev),
                None => Ok(Tensor::f_zeros([n], (Kind::Double, dev))?),
            }
        };
        let (b_w, b_v, b_out) = (bias(b_w, d_h, "b_w")?, bias(b_v, d_h, "b_v")?, bias(b_out, d_out, "b_out")?);
        let unit = Tensor::f_zeros([1, d_in + 1], (Kind::Double, dev))?;
        let _ = unit.f_narrow(1, d_in, 1)?.f_fill_(1.0)?;
        let augment = |m: &Tensor, b: &Tensor| -> Result<Tensor> { Ok(Tensor::f_cat(&[&Tensor::f_cat(&[m, &b.f_unsqueeze(1)?], 1)?, &unit], 0)?) };
        Ok(BilinearLayer {
            w: augment(&plain.w, &b_w)?,
            v: augment(&plain.v, &b_v)?,
            p: Tensor::f_cat(&[&plain.p, &b_out.f_unsqueeze(1)?], 1)?,
            augmented: true,
        })
    }

    /// The MLP of `layer` of a model with bilinear MLPs (gated, identity activation), on the input
    /// `blocks.{layer}.ln2.hook_normalized`. Errors name what the model has instead.
    pub fn from_model(model: &HookedTransformer, layer: usize) -> Result<Self> {
        let c = &model.cfg;
        if layer >= c.n_layers {
            return Err(interp_core::Error::LayerOutOfRange { layer, n_layers: c.n_layers }.into());
        }
        let what = if c.attn_only {
            Some("no MLPs (it is attention-only)".to_string())
        } else if !c.gated_mlp {
            Some(format!("ungated MLPs with a {:?} activation", c.act))
        } else if c.act != Activation::Identity {
            Some(format!("gated MLPs with a {:?} gate (a GLU variant, not bilinear)", c.act))
        } else if c.post_norms {
            Some("a norm after the MLP (Gemma-2 post-norms), which makes the output non-bilinear".to_string())
        } else {
            None
        };
        if let Some(what) = what {
            return Err(Error::Input(format!("bilinear analysis needs bilinear MLPs (gated with an identity activation); `{}` has {what}", c.model_type)));
        }
        let dev = model.device();
        let gate = model.w_gate(layer)?.ok_or_else(|| Error::Input("the MLP has no gate".into()))?;
        let (gain, norm_bias) = model.norm_weights(NormSite::Ln2(layer))?;
        // x = g * n + b, so W x = (W diag g) n + W b.
        let fold = |m: &Tensor, b: Option<Tensor>| -> Result<(Tensor, Option<Tensor>)> {
            let m = f64_on(&m.f_tr()?, dev)?; // [d_mlp, d_model]
            let folded = match &gain {
                Some(g) => m.f_mul(&f64_on(g, dev)?)?,
                None => m.shallow_clone(),
            };
            let mut bias = b.map(|b| f64_on(&b, dev)).transpose()?;
            if let Some(nb) = &norm_bias {
                let shift = m.f_matmul(&f64_on(nb, dev)?)?;
                bias = Some(match bias {
                    Some(b) => b.f_add(&shift)?,
                    None => shift,
                });
            }
            Ok((folded, bias))
        };
        let (w, b_w) = fold(&gate, model.b_gate(layer)?)?;
        let (v, b_v) = fold(&model.w_in(layer)?, model.b_in(layer)?)?;
        let p = model.w_out(layer)?.f_tr()?;
        let b_out = model.b_out(layer)?;
        if b_w.is_none() && b_v.is_none() && b_out.is_none() {
            return Self::new(&w, &v, &p);
        }
        Self::with_biases(&w, &v, &p, b_w.as_ref(), b_v.as_ref(), b_out.as_ref())
    }

    /// Hidden units (rows of W and V).
    pub fn d_hidden(&self) -> i64 {
        self.w.size()[0]
    }

    /// Width of the input, the constant coordinate of an augmented layer included.
    pub fn d_in(&self) -> i64 {
        self.w.size()[1]
    }

    /// Output width (rows of P).
    pub fn d_out(&self) -> i64 {
        self.p.size()[0]
    }

    /// `x` [n, d_in without the constant] with the constant 1 appended when the layer is augmented.
    pub fn augment(&self, x: &Tensor) -> Result<Tensor> {
        let x = f64_on(x, self.w.device())?;
        let width = self.d_in() - i64::from(self.augmented);
        let found = x.size().last().copied().unwrap_or(0);
        if found != width {
            return Err(Error::Input(format!("inputs of width {found}, but the bilinear layer reads {width}")));
        }
        if !self.augmented {
            return Ok(x);
        }
        let mut shape = x.size();
        *shape.last_mut().expect("checked above") = 1;
        Ok(Tensor::f_cat(&[&x, &Tensor::f_ones(shape.as_slice(), (Kind::Double, x.device()))?], -1)?)
    }

    /// `y = P ((W x) * (V x))` [n, d_out] for `x` [n, d_in] already augmented.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = f64_on(x, self.w.device())?;
        let g = x.f_matmul(&self.w.f_tr()?)?.f_mul(&x.f_matmul(&self.v.f_tr()?)?)?;
        Ok(g.f_matmul(&self.p.f_tr()?)?)
    }

    fn check_directions(&self, us: &Tensor) -> Result<Tensor> {
        let found = us.size().last().copied().unwrap_or(0);
        if found != self.d_out() {
            return Err(Error::Input(format!("an output direction of length {found}, but the layer writes {} dimensions", self.d_out())));
        }
        f64_on(us, self.w.device())
    }

    /// Q(u) [d_in, d_in] for an output direction `u` [d_out].
    pub fn interaction_matrix(&self, u: &Tensor) -> Result<Tensor> {
        if u.dim() != 1 {
            return Err(Error::Shape { what: "an output direction".into(), expected: "a vector [d_out]".into(), found: u.size() });
        }
        Ok(self.interaction_matrices(&u.f_unsqueeze(0)?)?.f_squeeze_dim(0)?)
    }

    /// Q(u) [n, d_in, d_in] for each row of `us` [n, d_out], in chunks that keep the
    /// [chunk, d_in, d_hidden] intermediate under ~256 MiB.
    pub fn interaction_matrices(&self, us: &Tensor) -> Result<Tensor> {
        let us = self.check_directions(us)?;
        if us.dim() != 2 {
            return Err(Error::Shape { what: "output directions".into(), expected: "[n, d_out]".into(), found: us.size() });
        }
        let coef = us.f_matmul(&self.p)?; // [n, d_hidden] = (P^T u)^T
        let (d_in, d_h) = (self.d_in(), self.d_hidden());
        let chunk = (32 * 1024 * 1024 / (d_in * d_h)).max(1);
        let wt = self.w.f_tr()?; // [d_in, d_hidden]
        let parts = coef
            .f_split(chunk, 0)?
            .iter()
            .map(|c| {
                let m = wt.f_unsqueeze(0)?.f_mul(&c.f_unsqueeze(1)?)?.f_matmul(&self.v)?; // [c, d_in, d_in]
                Ok(m.f_add(&m.f_transpose(1, 2)?)?.f_mul_scalar(0.5)?)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Tensor::f_cat(&parts, 0)?)
    }
}

/// Eigendecomposition of one or many interaction matrices, ordered by |eigenvalue|, largest first.
pub struct Spectrum {
    /// [.., d] eigenvalues (f64).
    pub values: Tensor,
    /// [.., d, d]: column `i` is the eigenvector of `values[.., i]`.
    pub vectors: Tensor,
}

fn symmetric_part(q: &Tensor) -> Result<Tensor> {
    let q = q.f_to_kind(Kind::Double)?;
    Ok(q.f_add(&q.f_transpose(-1, -2)?)?.f_mul_scalar(0.5)?)
}

fn check_square(q: &Tensor, batched: bool) -> Result<()> {
    let s = q.size();
    let dims = if batched { 3 } else { 2 };
    if s.len() != dims || s[dims - 1] != s[dims - 2] {
        let want = if batched { "[n, d, d]" } else { "[d, d]" };
        return Err(Error::Shape { what: "an interaction matrix".into(), expected: want.into(), found: s });
    }
    Ok(())
}

impl Spectrum {
    /// Eigendecomposition of `q` [d, d] (torch's `linalg.eigh`, LAPACK's divide and conquer), after
    /// symmetrising.
    pub fn of(q: &Tensor) -> Result<Spectrum> {
        check_square(q, false)?;
        let (values, vectors) = symmetric_part(q)?.f_linalg_eigh("L")?;
        Self::by_magnitude(values, vectors)
    }

    /// The same with ndarray-linalg (OpenBLAS's `syev`), behind the `lapack` feature: a binary
    /// that links OpenBLAS next to libtorch sends torch's own BLAS calls to it, and forwards run
    /// several times slower (measured: 3x to 28x on the text model), so it is off by default.
    #[cfg(feature = "lapack")]
    pub fn of_lapack(q: &Tensor) -> Result<Spectrum> {
        use ndarray::{ArrayD, Ix2};
        use ndarray_linalg::{Eigh, UPLO};
        check_square(q, false)?;
        let device = q.device();
        let sym = symmetric_part(q)?.f_to_device(Device::Cpu)?.f_contiguous()?;
        let a: ArrayD<f64> = (&sym).try_into()?;
        let a = a.into_dimensionality::<Ix2>().map_err(|e| Error::Input(format!("interaction matrix: {e}")))?;
        let (values, vectors) = a.eigh(UPLO::Lower).map_err(|e| Error::Input(format!("eigendecomposition failed: {e}")))?;
        let values = Tensor::try_from(&values)?;
        let vectors = Tensor::try_from(&vectors.as_standard_layout().to_owned())?;
        Self::by_magnitude(values.f_to_device(device)?, vectors.f_to_device(device)?)
    }

    /// Eigendecompositions of `qs` [n, d, d] in one batched `torch.linalg.eigh` on their device
    /// (a GPU when the matrices live there).
    pub fn of_batch(qs: &Tensor) -> Result<Spectrum> {
        check_square(qs, true)?;
        let (values, vectors) = symmetric_part(qs)?.f_linalg_eigh("L")?;
        Self::by_magnitude(values, vectors)
    }

    fn by_magnitude(values: Tensor, vectors: Tensor) -> Result<Spectrum> {
        let order = values.f_abs()?.f_argsort(-1, true)?;
        let values = values.f_gather(-1, &order, false)?;
        let cols = order.f_unsqueeze(-2)?.f_expand_as(&vectors)?;
        Ok(Spectrum { values, vectors: vectors.f_gather(-1, &cols, false)? })
    }

    /// Spectrum `i` of a batch.
    pub fn get(&self, i: i64) -> Result<Spectrum> {
        Ok(Spectrum { values: self.values.f_get(i)?, vectors: self.vectors.f_get(i)? })
    }

    /// Eigenvalues as a vector (one spectrum).
    pub fn eigenvalues(&self) -> Result<Vec<f64>> {
        Ok(Vec::<f64>::try_from(&self.values.f_to_device(Device::Cpu)?)?)
    }

    /// Number of eigenpairs.
    pub fn len(&self) -> i64 {
        self.values.size().last().copied().unwrap_or(0)
    }

    /// Whether there are no eigenpairs.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn top(&self, k: i64) -> Result<(Tensor, Tensor)> {
        let k = k.clamp(0, self.len());
        Ok((self.values.f_narrow(-1, 0, k)?, self.vectors.f_narrow(-1, 0, k)?))
    }

    /// Q_k [.., d, d]: the best rank-k approximation (top k by |eigenvalue|).
    pub fn truncated(&self, k: i64) -> Result<Tensor> {
        let (values, vectors) = self.top(k)?;
        Ok(vectors.f_mul(&values.f_unsqueeze(-2)?)?.f_matmul(&vectors.f_transpose(-1, -2)?)?)
    }

    /// `sum_{i<k} lambda_i (v_i . x)^2` [n] for `x` [n, d] (one spectrum): the output the top k
    /// eigenpairs predict.
    pub fn quadratic_form(&self, x: &Tensor, k: i64) -> Result<Tensor> {
        let (values, vectors) = self.top(k)?;
        let proj = x.f_to_kind(Kind::Double)?.f_to_device(values.device())?.f_matmul(&vectors)?;
        Ok(proj.f_square()?.f_matmul(&values)?)
    }

    /// `||Q - Q_k||_F = sqrt(sum of the dropped lambda^2)` (one spectrum).
    pub fn truncation_error(&self, k: i64) -> Result<f64> {
        let values = self.eigenvalues()?;
        Ok(values.iter().skip(k.max(0) as usize).map(|l| l * l).sum::<f64>().sqrt())
    }

    /// Effective rank (Roy and Vetterli): `exp` of the entropy of `|lambda_i| / sum |lambda|`;
    /// 1 for a rank-one matrix, d for equal magnitudes (one spectrum).
    pub fn effective_rank(&self) -> Result<f64> {
        let values = self.eigenvalues()?;
        let total: f64 = values.iter().map(|l| l.abs()).sum();
        if total == 0.0 {
            return Ok(0.0);
        }
        let entropy: f64 = values.iter().map(|l| l.abs() / total).filter(|p| *p > 0.0).map(|p| -p * p.ln()).sum();
        Ok(entropy.exp())
    }
}

/// Pearson correlation of `a` and `b` [n].
pub fn correlation(a: &Tensor, b: &Tensor) -> Result<f64> {
    let (a, b) = (a.f_to_kind(Kind::Double)?, b.f_to_kind(Kind::Double)?);
    let (a, b) = (a.f_sub(&a.f_mean(Kind::Double)?)?, b.f_sub(&b.f_mean(Kind::Double)?)?);
    let denom = a.f_norm()?.f_mul(&b.f_norm()?)?.f_double_value(&[])?;
    if denom == 0.0 {
        return Ok(0.0);
    }
    Ok(a.f_dot(&b)?.f_double_value(&[])? / denom)
}

/// Correlation of the full quadratic form with its top-k truncation over inputs `x` [n, d],
/// for each `k`: how well k eigenvectors explain a feature.
pub fn truncation_correlation(spectrum: &Spectrum, x: &Tensor, ks: &[i64]) -> Result<Vec<(i64, f64)>> {
    let full = spectrum.quadratic_form(x, spectrum.len())?;
    ks.iter().map(|&k| Ok((k, correlation(&full, &spectrum.quadratic_form(x, k)?)?))).collect()
}

/// `D Q D^T` [n, n]: interactions between input directions `dirs` [n, d] (an input SAE's decoder
/// rows, without the constant coordinate) under the interaction matrix `q` [d(+1), d(+1)].
pub fn feature_interactions(q: &Tensor, dirs: &Tensor) -> Result<Tensor> {
    check_square(q, false)?;
    let d = q.size()[0];
    let dirs = dirs.f_to_kind(Kind::Double)?.f_to_device(q.device())?;
    let width = dirs.size().last().copied().unwrap_or(0);
    let dirs = match d - width {
        0 => dirs,
        1 => dirs.f_constant_pad_nd([0, 1])?,
        _ => return Err(Error::Input(format!("directions of width {width} for an interaction matrix of size {d}"))),
    };
    Ok(dirs.f_matmul(&symmetric_part(q)?)?.f_matmul(&dirs.f_tr()?)?)
}

/// The output direction [d_model] in MLP-output space whose dot product with the final residual
/// stream, divided by the final norm's scale, is the logit of `token` (minus its bias): the
/// unembedding column times the final norm's gain, centred for a LayerNorm.
pub fn unembedding_direction(model: &HookedTransformer, token: i64) -> Result<Tensor> {
    if token < 0 || token >= model.cfg.d_vocab {
        return Err(interp_core::Error::TokenOutOfVocabulary { id: token, d_vocab: model.cfg.d_vocab }.into());
    }
    let mut u = model.w_u().f_select(1, token)?.f_to_kind(Kind::Double)?;
    if let (Some(g), _) = model.norm_weights(NormSite::LnFinal)? {
        u = u.f_mul(&g.f_to_kind(Kind::Double)?)?;
    }
    Ok(model.cfg.norm.centre(&u, 0)?)
}

/// Token scores [d_vocab] of an input-space direction `v` [d_model(+1)]: `W_E v`, the direct path
/// from the embedding (norm scale ignored) — the tokens an eigenvector favours (high) and
/// disfavours (low). The constant coordinate of an augmented vector is dropped.
pub fn token_readout(model: &HookedTransformer, v: &Tensor) -> Result<Tensor> {
    let d = model.cfg.d_model;
    let v = v.f_to_kind(Kind::Double)?.f_to_device(model.device())?.f_narrow(0, 0, d)?;
    Ok(model.w_e().f_to_kind(Kind::Double)?.f_matmul(&v)?)
}

/// Accuracy on `tokens` [n, pos] (answer at the last position, among `candidates`) when the
/// direct contribution of `layer`'s MLP to each candidate logit is replaced by its top-k
/// eigenpairs, for each `k`. The final norm's scale is held at its clean value, so the largest
/// `k` reproduces the model's own accuracy; for a last-layer MLP the replacement is exact, for an
/// earlier one it edits the direct path only. `answers` [n] are token ids.
pub fn truncation_accuracy(
    model: &HookedTransformer,
    layer: usize,
    tokens: &Tensor,
    candidates: &[i64],
    answers: &Tensor,
    ks: &[i64],
) -> Result<Vec<(i64, f64)>> {
    let bl = BilinearLayer::from_model(model, layer)?;
    if model.cfg.final_softcap.is_some() {
        return Err(Error::Input("truncation through a final logit soft cap is not linear".into()));
    }
    let normalized = HookPoint::block(layer, BlockSite::Ln2Normalized);
    let (logits, cache) = model.run_with_cache(tokens, CacheSpec::names([normalized, HookPoint::LnFinalScale]))?;
    let last = |t: &Tensor| -> Result<Tensor> { Ok(t.f_select(1, -1)?.f_to_kind(Kind::Double)?) };
    let x = bl.augment(&last(cache.get(normalized)?)?)?; // [n, d]
    let scale = last(cache.get(HookPoint::LnFinalScale)?)?.f_to_device(x.device())?; // [n, 1]
    let cand = Tensor::f_from_slice(candidates)?.f_to_device(logits.device())?;
    let logits = last(&logits)?.f_index_select(1, &cand)?.f_to_device(x.device())?; // [n, c]
    let us = Tensor::f_stack(&candidates.iter().map(|&t| unembedding_direction(model, t)).collect::<Result<Vec<_>>>()?, 0)?;
    let spectra = Spectrum::of_batch(&bl.interaction_matrices(&us)?)?;
    let matches = answers.f_to_device(Device::Cpu)?.f_unsqueeze(1)?.f_eq_tensor(&cand.f_to_device(Device::Cpu)?.f_unsqueeze(0)?)?;
    if matches.f_any_dim(1, false)?.f_all()?.f_int64_value(&[])? == 0 {
        return Err(Error::Input("an answer token is not among the candidates".into()));
    }
    let answer_col = matches.f_to_kind(Kind::Int64)?.f_argmax(1, false)?;
    let forms = |k: i64| -> Result<Tensor> {
        let cols = (0..candidates.len() as i64).map(|c| spectra.get(c)?.quadratic_form(&x, k)).collect::<Result<Vec<_>>>()?;
        Ok(Tensor::f_stack(&cols, 1)?.f_div(&scale)?) // [n, c]
    };
    let exact = forms(bl.d_in())?;
    ks.iter()
        .map(|&k| {
            let approx = logits.f_sub(&exact)?.f_add(&forms(k)?)?;
            let hit = approx.f_argmax(1, false)?.f_to_device(Device::Cpu)?.f_eq_tensor(&answer_col)?;
            Ok((k, hit.f_to_kind(Kind::Double)?.f_mean(Kind::Double)?.f_double_value(&[])?))
        })
        .collect()
}

// ndarray-linalg (OpenBLAS) and libtorch in one binary: `cargo test -p circuits --features lapack
// --lib` (.ci/run runs it when time allows).
#[cfg(all(test, feature = "lapack"))]
mod lapack_tests {
    use super::*;

    #[test]
    fn openblas_and_torch_agree_in_one_binary() -> Result<()> {
        tch::manual_seed(0);
        let a = Tensor::f_randn([8, 8], (Kind::Double, Device::Cpu))?;
        let q = a.f_add(&a.f_tr()?)?;
        let x = Tensor::f_randn([20, 8], (Kind::Double, Device::Cpu))?;
        let before = x.f_matmul(&q)?;
        let (torch, lapack) = (Spectrum::of(&q)?, Spectrum::of_lapack(&q)?);
        let diff = |a: &Tensor, b: &Tensor| -> Result<f64> { Ok(a.f_sub(b)?.f_abs()?.f_max()?.f_double_value(&[])?) };
        assert!(diff(&lapack.values, &torch.values)? < 1e-10, "OpenBLAS and torch agree");
        assert!(diff(&lapack.truncated(3)?, &torch.truncated(3)?)? < 1e-10);
        assert!(diff(&x.f_matmul(&q)?, &before)? < 1e-10, "torch's matmul still right after a LAPACK call");
        Ok(())
    }
}
