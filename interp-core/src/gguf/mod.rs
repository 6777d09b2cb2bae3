//! GGUF, llama.cpp's checkpoint format: one file holding metadata (architecture, sizes, the
//! tokenizer) and tensors, most of them quantised in blocks.
//!
//! [`GgufFile`] reads the header (versions 2 and 3), every metadata value type and the tensor table
//! from a memory map, checking every count and offset against the file before anything is
//! allocated. [`hf`] turns it into what the rest of the runtime reads: an HF `config.json` value,
//! tensors under their HF names dequantised to f32 (undoing llama.cpp's rotary permutation of
//! Llama's q and k rows and Gemma's `1 + w` norm gains, as HF's own GGUF loader does), and
//! [`tokenizer`] a `tokenizer.json` built from `tokenizer.ggml.*` the way HF builds it.
//!
//! Written here rather than taken from a crate: candle's reader (`candle-core::quantized::gguf_file`)
//! ties dequantisation to candle tensors, and the smaller GGUF crates stop at the header; what is
//! needed is about 300 lines of plain block arithmetic, each type proved against `gguf`'s own
//! dequantiser.

pub(crate) mod hf;
mod quant;
pub(crate) mod tokenizer;

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::{Mmap, UncheckedAdvice};
use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};
pub use quant::GgmlType;

/// `GGUF` read as a little-endian u32.
const MAGIC: u32 = 0x4655_4747;
/// Nested arrays deeper than this are refused (the format allows nesting; no model uses it).
const MAX_DEPTH: usize = 4;
/// Dimensions of one tensor (ggml's GGML_MAX_DIMS).
const MAX_DIMS: u32 = 4;

/// A metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// Any unsigned integer type (u8, u16, u32, u64).
    Uint(u64),
    /// Any signed integer type (i8, i16, i32, i64).
    Int(i64),
    /// f32 or f64.
    Float(f64),
    /// A bool.
    Bool(bool),
    /// A UTF-8 string.
    Str(String),
    /// An array (of one element type).
    Array(Vec<Value>),
}

impl Value {
    /// A non-negative integer, whatever its stored type.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::Uint(n) => Some(n),
            Value::Int(n) => u64::try_from(n).ok(),
            _ => None,
        }
    }

    /// A number as f64.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::Uint(n) => Some(n as f64),
            Value::Int(n) => Some(n as f64),
            Value::Float(x) => Some(x),
            _ => None,
        }
    }

    /// A string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// An array.
    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }

    /// A short rendering for listings: arrays by length and element kind.
    pub fn summary(&self) -> String {
        match self {
            Value::Uint(n) => n.to_string(),
            Value::Int(n) => n.to_string(),
            Value::Float(x) => format!("{x}"),
            Value::Bool(b) => b.to_string(),
            Value::Str(s) if s.chars().count() > 60 => format!("{:?}... ({} chars)", s.chars().take(60).collect::<String>(), s.chars().count()),
            Value::Str(s) => format!("{s:?}"),
            Value::Array(a) => format!("[{} values]", a.len()),
        }
    }
}

/// One tensor of the file: ggml dimensions reversed into torch order (outermost first).
#[derive(Clone, Debug)]
pub struct TensorInfo {
    /// Its GGUF name (`blk.0.attn_q.weight`).
    pub name: String,
    /// Shape in torch order: ggml's `ne` reversed.
    pub shape: Vec<i64>,
    /// Its ggml type.
    pub ggml_type: GgmlType,
    /// Byte offset of its data in the file.
    offset: usize,
    /// Bytes of data.
    len: usize,
}

impl TensorInfo {
    /// Number of weights.
    pub fn numel(&self) -> i64 {
        self.shape.iter().product()
    }
}

/// An open GGUF file.
pub struct GgufFile {
    path: PathBuf,
    mmap: Mmap,
    /// Format version (2 or 3).
    pub version: u32,
    /// Every metadata key and value, in key order.
    pub metadata: BTreeMap<String, Value>,
    /// The tensor table, in file order.
    pub tensors: Vec<TensorInfo>,
    /// Where the tensor data starts: the header, metadata and tensor table come before it.
    data_start: usize,
}

/// A little-endian cursor over the file's bytes; every read checks the bounds.
struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &str) -> std::result::Result<&'a [u8], String> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.bytes.len());
        let end = end.ok_or_else(|| format!("truncated: {what} at byte {} needs {n} bytes, the file has {}", self.at, self.bytes.len()))?;
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }

    fn array<const N: usize>(&mut self, what: &str) -> std::result::Result<[u8; N], String> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N, what)?);
        Ok(a)
    }

    fn u32(&mut self, what: &str) -> std::result::Result<u32, String> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> std::result::Result<u64, String> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    fn left(&self) -> usize {
        self.bytes.len() - self.at
    }

    /// A count that claims at least `min_size` bytes per item, checked against what is left.
    fn count(&mut self, min_size: usize, what: &str) -> std::result::Result<usize, String> {
        let n = self.u64(what)?;
        match usize::try_from(n) {
            Ok(n) if n.saturating_mul(min_size) <= self.left() => Ok(n),
            _ => Err(format!("{what} is {n}, more than the {} bytes left in the file can hold", self.left())),
        }
    }

    fn string(&mut self, what: &str) -> std::result::Result<String, String> {
        let n = self.count(1, &format!("length of {what}"))?;
        let bytes = self.take(n, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| format!("{what} is not UTF-8"))
    }

    /// A value of GGUF type `ty`.
    fn value(&mut self, ty: u32, key: &str, depth: usize) -> std::result::Result<Value, String> {
        let what = format!("value of `{key}`");
        Ok(match ty {
            0 => Value::Uint(u64::from(self.array::<1>(&what)?[0])),
            1 => Value::Int(i64::from(self.array::<1>(&what)?[0] as i8)),
            2 => Value::Uint(u64::from(u16::from_le_bytes(self.array(&what)?))),
            3 => Value::Int(i64::from(i16::from_le_bytes(self.array(&what)?))),
            4 => Value::Uint(u64::from(self.u32(&what)?)),
            5 => Value::Int(i64::from(i32::from_le_bytes(self.array(&what)?))),
            6 => Value::Float(f64::from(f32::from_le_bytes(self.array(&what)?))),
            7 => match self.array::<1>(&what)?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => return Err(format!("`{key}` is a bool stored as {b}")),
            },
            8 => Value::Str(self.string(&what)?),
            9 => {
                if depth >= MAX_DEPTH {
                    return Err(format!("`{key}` nests arrays deeper than {MAX_DEPTH}"));
                }
                let elem = self.u32(&what)?;
                let min = match elem {
                    0 | 1 | 7 => 1,
                    2 | 3 => 2,
                    4..=6 => 4,
                    8..=12 => 8,
                    other => return Err(format!("`{key}` is an array of unknown value type {other}")),
                };
                let n = self.count(min, &format!("length of `{key}`"))?;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.value(elem, key, depth + 1)?);
                }
                Value::Array(items)
            }
            10 => Value::Uint(self.u64(&what)?),
            11 => Value::Int(i64::from_le_bytes(self.array(&what)?)),
            12 => Value::Float(f64::from_le_bytes(self.array(&what)?)),
            other => return Err(format!("`{key}` has unknown value type {other}")),
        })
    }
}

impl GgufFile {
    /// Opens and checks `path`: header, metadata, tensor table, and that every tensor's data lies
    /// inside the file with the size its type and shape imply.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let file = File::open(&path).map_err(Error::io(&path))?;
        // SAFETY: read-only private mapping; a file truncated underneath us is the hazard every
        // memory-mapped reader accepts.
        let mmap = unsafe { Mmap::map(&file) }.map_err(Error::io(&path))?;
        let (version, metadata, tensors, data_start) = Self::parse(&mmap).map_err(|message| Error::Checkpoint { path: path.clone(), message })?;
        Ok(GgufFile { path, mmap, version, metadata, tensors, data_start })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes before the tensor data: header, metadata and tensor table (with alignment padding).
    pub fn data_start(&self) -> usize {
        self.data_start
    }

    #[allow(clippy::type_complexity)]
    fn parse(bytes: &[u8]) -> std::result::Result<(u32, BTreeMap<String, Value>, Vec<TensorInfo>, usize), String> {
        let mut c = Cursor { bytes, at: 0 };
        let magic = c.u32("magic").map_err(|_| "not a GGUF file: shorter than its magic number".to_string())?;
        if magic != MAGIC {
            return Err(format!("not a GGUF file: it starts with {:?}, not \"GGUF\"", String::from_utf8_lossy(&bytes[..4])));
        }
        let version = c.u32("version")?;
        match version {
            2 | 3 => {}
            1 => return Err("GGUF version 1 (32-bit counts, 2023) is not supported: convert it with a current llama.cpp".into()),
            v if v.swap_bytes() <= 3 => return Err("a big-endian GGUF file: only little-endian files are supported".into()),
            v => return Err(format!("unsupported GGUF version {v} (2 and 3 are read)")),
        }
        // A tensor entry takes at least 24 bytes (name length, rank, type, offset), a key at least 12.
        let n_tensors = c.count(24, "tensor count")?;
        let n_kv = c.count(12, "metadata count")?;
        let mut metadata = BTreeMap::new();
        for i in 0..n_kv {
            let key = c.string(&format!("metadata key {i}"))?;
            let ty = c.u32(&format!("type of `{key}`"))?;
            let value = c.value(ty, &key, 0)?;
            if metadata.insert(key.clone(), value).is_some() {
                return Err(format!("metadata key `{key}` appears twice"));
            }
        }
        let alignment = match metadata.get("general.alignment") {
            None => 32,
            Some(v) => match v.as_u64() {
                Some(a) if a.is_power_of_two() && a <= 1 << 20 => a as usize,
                _ => return Err(format!("`general.alignment` must be a power of two, found {}", v.summary())),
            },
        };
        let mut infos = Vec::with_capacity(n_tensors);
        for i in 0..n_tensors {
            let name = c.string(&format!("name of tensor {i}"))?;
            let n_dims = c.u32(&format!("rank of `{name}`"))?;
            if n_dims == 0 || n_dims > MAX_DIMS {
                return Err(format!("tensor `{name}` has {n_dims} dimensions (1 to {MAX_DIMS} allowed)"));
            }
            let mut ne = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                ne.push(c.u64(&format!("shape of `{name}`"))?);
            }
            let ty = c.u32(&format!("type of `{name}`"))?;
            let offset = c.u64(&format!("offset of `{name}`"))?;
            infos.push((name, ne, ty, offset));
        }
        let data_start = c.at.div_ceil(alignment) * alignment;
        let mut tensors = Vec::with_capacity(infos.len());
        for (name, ne, ty, offset) in infos {
            let ggml_type = GgmlType::from_u32(ty).map_err(|t| format!("tensor `{name}` has type {t}, which is not supported (supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K)"))?;
            let numel = ne.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d).filter(|&n| n <= i64::MAX as u64));
            let shape_text = format!("{:?}", ne.iter().rev().collect::<Vec<_>>());
            let numel = numel.filter(|&n| n > 0).ok_or_else(|| format!("tensor `{name}` has shape {shape_text}: empty or too large"))?;
            if ne[0] % ggml_type.block().0 as u64 != 0 {
                return Err(format!(
                    "tensor `{name}` ({}, shape {shape_text}): its rows of {} weights are not whole blocks of {}",
                    ggml_type.name(),
                    ne[0],
                    ggml_type.block().0
                ));
            }
            let len = ggml_type.bytes_for(numel).ok_or_else(|| format!("tensor `{name}`: {numel} weights are not whole {} blocks", ggml_type.name()))?;
            if offset % alignment as u64 != 0 {
                return Err(format!("tensor `{name}`: offset {offset} is not a multiple of the alignment {alignment}"));
            }
            let start = (data_start as u64).checked_add(offset);
            let end = start.and_then(|s| s.checked_add(len));
            match (start, end) {
                (Some(start), Some(end)) if end <= bytes.len() as u64 => {
                    tensors.push(TensorInfo { shape: ne.iter().rev().map(|&d| d as i64).collect(), name, ggml_type, offset: start as usize, len: len as usize })
                }
                _ => {
                    return Err(format!(
                        "truncated: tensor `{name}` ({}, shape {shape_text}, {len} bytes at data offset {offset}) lies past the end of the file ({} bytes)",
                        ggml_type.name(),
                        bytes.len()
                    ))
                }
            }
        }
        Ok((version, metadata, tensors, data_start))
    }

    /// The tensor called `name`, if there is one.
    pub fn info(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// A metadata value.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    /// `general.architecture`.
    pub fn architecture(&self) -> Result<&str> {
        self.get("general.architecture")
            .and_then(Value::as_str)
            .ok_or_else(|| Error::Checkpoint { path: self.path.clone(), message: "no `general.architecture` string in the metadata".into() })
    }

    /// Tensor `name` dequantised to f32 (on the CPU), shape in torch order. The data is written
    /// straight into the tensor's memory, and the file's pages are released once read.
    pub fn tensor(&self, name: &str) -> Result<Tensor> {
        let info = self.info(name).ok_or_else(|| Error::MissingTensor { name: name.to_string(), expected: vec![] })?;
        let t = Tensor::f_empty(info.shape.as_slice(), (Kind::Float, Device::Cpu))?;
        let n = usize::try_from(info.numel()).map_err(|_| Error::Input(format!("tensor `{name}` is too large")))?;
        // SAFETY: `t` is a fresh contiguous f32 CPU tensor of exactly `n` elements, and nothing
        // else refers to its memory while this slice lives.
        let out = unsafe { std::slice::from_raw_parts_mut(t.data_ptr() as *mut f32, n) };
        info.ggml_type.dequantize(&self.mmap[info.offset..info.offset + info.len], out);
        // SAFETY: the slice above is no longer used; dropping the pages only makes a later read
        // of the same range fault them in again from the file.
        unsafe { self.mmap.unchecked_advise_range(UncheckedAdvice::DontNeed, info.offset, info.len) }.ok();
        Ok(t)
    }

    /// Counts of tensors by ggml type, most common first.
    pub fn type_counts(&self) -> Vec<(GgmlType, usize)> {
        let mut counts: Vec<(GgmlType, usize)> = Vec::new();
        for t in &self.tensors {
            match counts.iter_mut().find(|(ty, _)| *ty == t.ggml_type) {
                Some((_, n)) => *n += 1,
                None => counts.push((t.ggml_type, 1)),
            }
        }
        counts.sort_by_key(|c| std::cmp::Reverse(c.1));
        counts
    }
}

/// The `.gguf` file `path` names: the file itself, or the one `.gguf` in a folder (with no
/// `config.json`, which would make it an HF folder); `None` where `path` is neither.
pub fn find(path: &Path) -> Result<Option<PathBuf>> {
    if path.is_file() {
        return Ok(path.extension().is_some_and(|e| e == "gguf").then(|| path.to_path_buf()));
    }
    if !path.is_dir() || path.join("config.json").exists() {
        return Ok(None);
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(Error::io(path))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "gguf"))
        .collect();
    found.sort();
    match found.len() {
        0 => Ok(None),
        1 => Ok(found.pop()),
        n => Err(Error::Checkpoint {
            path: path.to_path_buf(),
            message: format!(
                "{n} GGUF files here ({}): name the one to load",
                found.iter().filter_map(|f| f.file_name()).map(|f| f.to_string_lossy()).collect::<Vec<_>>().join(", ")
            ),
        }),
    }
}
