//! Reads tensors from safetensors checkpoints (one file or sharded with
//! `model.safetensors.index.json`), memory-mapped; pages of a tensor are released once it is
//! copied, so loading needs little more memory than the weights themselves. Folders that ship
//! only PyTorch files (`pytorch_model.bin`, or shards with `pytorch_model.bin.index.json`) are
//! read through [`crate::torch_file`], without Python and without running anything in them.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::{Mmap, UncheckedAdvice};
use safetensors::tensor::{Dtype, Metadata};
use safetensors::SafeTensors;
use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};
use crate::rng::Rng;
use crate::torch_file::TorchFile;

enum Shard {
    Safetensors { path: PathBuf, mmap: Mmap, header_len: usize, metadata: Metadata },
    Torch(TorchFile),
}

/// An open checkpoint: tensor names to shards.
pub(crate) struct Checkpoint {
    shards: Vec<Shard>,
    index: HashMap<String, usize>,
}

/// Where the loader gets HF-named tensors: a checkpoint on disk, or fresh random weights.
pub(crate) trait TensorSource {
    fn contains(&self, name: &str) -> bool;
    /// Every tensor name, where the source has a fixed set (a checkpoint).
    fn names(&self) -> Option<Vec<String>> {
        None
    }
    /// The tensor `name`, checked against `shape`, as `kind` on `device`.
    fn tensor(&self, name: &str, shape: &[i64], kind: Kind, device: Device) -> Result<Tensor>;
}

impl TensorSource for Checkpoint {
    fn contains(&self, name: &str) -> bool {
        Checkpoint::contains(self, name)
    }
    fn names(&self) -> Option<Vec<String>> {
        Some(self.index.keys().cloned().collect())
    }
    fn tensor(&self, name: &str, shape: &[i64], kind: Kind, device: Device) -> Result<Tensor> {
        Checkpoint::tensor(self, name, shape, kind, device)
    }
}

/// GPT-2-style initialisation, decided by each HF tensor's name: norm gains 1, biases 0, matrices
/// N(0, 0.02), and the matrices that write to the residual stream scaled by 1/sqrt(2 n_layers).
/// Draws come from its own seeded [`Rng`], in the order the loader asks for tensors.
pub(crate) struct RandomInit {
    pub(crate) n_layers: usize,
    /// The stored value of a unit norm gain (0 where a family stores `gain - 1`, as Gemma does).
    pub(crate) unit_gain: f64,
    /// DeepNet's beta: post-norm models start with v, o and MLP weights this much smaller (instead
    /// of the usual down-scaling of what writes to the residual stream).
    pub(crate) deepnet_beta: Option<f64>,
    pub(crate) rng: RefCell<Rng>,
}

impl TensorSource for RandomInit {
    fn contains(&self, _name: &str) -> bool {
        true
    }
    fn tensor(&self, name: &str, shape: &[i64], kind: Kind, device: Device) -> Result<Tensor> {
        let opts = (Kind::Float, device);
        let t = if name.ends_with(".bias") {
            Tensor::f_zeros(shape, opts)?
        } else if shape.len() == 1 {
            Tensor::f_full(shape, self.unit_gain, opts)?
        } else {
            let writes_resid = ["attn.c_proj", "mlp.c_proj", "o_proj", "down_proj", ".w2."].iter().any(|s| name.contains(s));
            let std = match self.deepnet_beta {
                Some(beta) if ["v_proj", "o_proj", ".mlp."].iter().any(|s| name.contains(s)) => 0.02 * beta,
                Some(_) => 0.02,
                None if writes_resid => 0.02 / (2.0 * self.n_layers as f64).sqrt(),
                None => 0.02,
            };
            self.rng.borrow_mut().normal_tensor(shape)?.f_to_device(device)?.f_mul_scalar(std)?
        };
        Ok(t.f_to_kind(kind)?)
    }
}

impl Checkpoint {
    /// Opens `model.safetensors`, or the shards listed in `model.safetensors.index.json`; in a
    /// folder without safetensors, `pytorch_model.bin` or the shards listed in
    /// `pytorch_model.bin.index.json`; failing those, the folder's one `*.pth` or `*.pt` file
    /// (how TransformerLens-native models ship).
    pub(crate) fn open(dir: &Path) -> Result<Self> {
        let candidates = ["model.safetensors.index.json", "model.safetensors", "pytorch_model.bin.index.json", "pytorch_model.bin"];
        let found = match candidates.iter().map(|c| dir.join(c)).find(|p| p.exists()) {
            Some(found) => found,
            None => Self::single_torch_file(dir, &candidates)?,
        };
        let files: Vec<PathBuf> = if found.extension().is_some_and(|e| e == "json") {
            let text = std::fs::read_to_string(&found).map_err(Error::io(&found))?;
            let json: serde_json::Value = serde_json::from_str(&text).map_err(|source| Error::Json { path: found.clone(), source })?;
            let map = json
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| Error::Checkpoint { path: found.clone(), message: "no `weight_map` object".into() })?;
            let mut files: Vec<PathBuf> = map.values().filter_map(|v| v.as_str()).map(|f| dir.join(f)).collect();
            files.sort();
            files.dedup();
            files
        } else {
            vec![found]
        };
        let mut shards = Vec::new();
        let mut index = HashMap::new();
        for path in files {
            let shard = if path.extension().is_some_and(|e| e == "safetensors") {
                let file = File::open(&path).map_err(Error::io(&path))?;
                // SAFETY: the mapping is read-only and private; a file truncated underneath us is the
                // same hazard every safetensors reader accepts.
                let mmap = unsafe { Mmap::map(&file) }.map_err(Error::io(&path))?;
                let (header_len, metadata) = SafeTensors::read_metadata(&mmap[..])
                    .map_err(|e| Error::Checkpoint { path: path.clone(), message: format!("not a safetensors file: {e}") })?;
                Shard::Safetensors { path, mmap, header_len, metadata }
            } else {
                Shard::Torch(TorchFile::open(&path)?)
            };
            let names: Vec<String> = match &shard {
                Shard::Safetensors { metadata, .. } => metadata.tensors().keys().cloned().collect(),
                Shard::Torch(t) => t.tensors.keys().cloned().collect(),
            };
            for name in names {
                index.insert(name, shards.len());
            }
            shards.push(shard);
        }
        Ok(Checkpoint { shards, index })
    }

    /// The one `*.pth` / `*.pt` file in `dir`.
    fn single_torch_file(dir: &Path, candidates: &[&str]) -> Result<PathBuf> {
        let entries = std::fs::read_dir(dir).map_err(Error::io(dir))?;
        let mut files: Vec<PathBuf> =
            entries.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "pth" || e == "pt")).collect();
        files.sort();
        let message = match files.len() {
            1 => return Ok(files.remove(0)),
            0 => format!("no weights: none of {}, nor a *.pth or *.pt file, is here", candidates.join(", ")),
            n => format!(
                "{n} PyTorch files ({}): which holds the weights is ambiguous",
                files.iter().filter_map(|f| f.file_name()).map(|f| f.to_string_lossy()).collect::<Vec<_>>().join(", ")
            ),
        };
        Err(Error::Checkpoint { path: dir.to_path_buf(), message })
    }

    pub(crate) fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    /// The stored shape of `name`, if the checkpoint has it.
    pub(crate) fn shape(&self, name: &str) -> Option<Vec<i64>> {
        match &self.shards[*self.index.get(name)?] {
            Shard::Safetensors { metadata, .. } => metadata.info(name).map(|info| info.shape.iter().map(|d| *d as i64).collect()),
            Shard::Torch(t) => t.tensors.get(name).map(|t| t.shape.clone()),
        }
    }

    /// Reads `name`, checks its shape, converts it to `kind` on `device`.
    pub(crate) fn tensor(&self, name: &str, shape: &[i64], kind: Kind, device: Device) -> Result<Tensor> {
        let missing = || Error::MissingTensor { name: name.to_string(), expected: shape.to_vec() };
        let found = self.shape(name).ok_or_else(missing)?;
        if found != shape {
            return Err(Error::TensorShape { name: name.to_string(), expected: shape.to_vec(), found });
        }
        let (path, mmap, header_len, metadata) = match &self.shards[self.index[name]] {
            Shard::Torch(t) => return Ok(t.tensor(name)?.f_to_kind(kind)?.f_to_device(device)?),
            Shard::Safetensors { path, mmap, header_len, metadata } => (path, mmap, header_len, metadata),
        };
        let info = metadata.info(name).ok_or_else(missing)?;
        let stored = match info.dtype {
            Dtype::F32 => Kind::Float,
            Dtype::F16 => Kind::Half,
            Dtype::BF16 => Kind::BFloat16,
            Dtype::F64 => Kind::Double,
            other => return Err(Error::Checkpoint { path: path.clone(), message: format!("tensor `{name}` has dtype {other:?}") }),
        };
        let start = 8 + header_len + info.data_offsets.0;
        let len = info.data_offsets.1 - info.data_offsets.0;
        let bytes = mmap
            .get(start..start + len)
            .ok_or_else(|| Error::Checkpoint { path: path.clone(), message: format!("tensor `{name}` lies past the end of the file") })?;
        let t = Tensor::f_from_data_size(bytes, shape, stored)?;
        // SAFETY: `bytes` is not used after this point; dropping the pages only makes a later read
        // of the same range fault them in again from the file.
        unsafe { mmap.unchecked_advise_range(UncheckedAdvice::DontNeed, start, len) }.ok();
        Ok(t.f_to_kind(kind)?.f_to_device(device)?)
    }
}
