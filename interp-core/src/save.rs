//! Building models from scratch and saving any model as an HF checkpoint (names from `models/`).

use std::cell::RefCell;
use std::path::Path;

use tch::{Device, Kind, Tensor};

use crate::checkpoint::RandomInit;
use crate::error::{Error, Result};
use crate::model::HookedTransformer;
use crate::rng::Rng;
use crate::spec::ModelSpec;
use crate::tokenizer::Tokenizer;

impl HookedTransformer {
    /// A freshly initialised model (GPT-2-style init, from `seed` alone) of the given shape.
    pub fn init_random(spec: &ModelSpec, seed: i64, kind: Kind, device: Device) -> Result<Self> {
        let cfg = spec.config()?;
        let _guard = tch::no_grad_guard();
        let init = RandomInit {
            n_layers: cfg.n_layers,
            unit_gain: 1.0 - crate::models::gain_offset(&cfg),
            deepnet_beta: cfg.post_ln_alpha.map(|_| (8.0 * cfg.n_layers as f64).powf(-0.25)),
            rng: RefCell::new(Rng::new(seed as u64)),
        };
        let params = crate::models::load_params(&cfg, &init, kind, device)?;
        Self::from_params(cfg, params, None, kind, device)
    }

    /// Attaches a tokenizer (saved along with the model).
    pub fn with_tokenizer(mut self, tokenizer: Tokenizer) -> Self {
        self.tokenizer = Some(tokenizer);
        self
    }

    /// Writes `config.json`, `model.safetensors` and (if the model has one) `tokenizer.json` and
    /// its `tokenizer_config.json` to `dir`, as HF `save_pretrained` would; `from_pretrained_dir`
    /// and HF `transformers` read it.
    pub fn save_pretrained(&self, dir: impl AsRef<Path>) -> Result<()> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).map_err(Error::io(dir))?;
        let tensors: Vec<(String, Tensor)> = crate::models::hf_tensors(&self.cfg, &self.params, self.device)?
            .into_iter()
            .map(|(n, t)| Ok((n, t.f_detach()?.f_to_device(Device::Cpu)?.f_contiguous()?)))
            .collect::<Result<_>>()?;
        let weights = dir.join("model.safetensors");
        Tensor::write_safetensors(&tensors, &weights)?;
        let config = dir.join("config.json");
        let text = serde_json::to_string_pretty(&self.cfg.hf_json).map_err(|source| Error::Json { path: config.clone(), source })?;
        std::fs::write(&config, text).map_err(Error::io(&config))?;
        if let Some(tok) = &self.tokenizer {
            tok.save(&dir.join("tokenizer.json"))?;
        }
        Ok(())
    }
}
