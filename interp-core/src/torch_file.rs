//! PyTorch checkpoint files (`torch.save` zip archives: `pytorch_model.bin`, `*.pth`, `*.pt`) read
//! without Python: the archive's `data.pkl` is parsed by a pickle machine that knows only the
//! opcodes and globals a state dict needs (dicts, tuples, strings, numbers, `OrderedDict`,
//! `torch._utils._rebuild_tensor_v2`, `_rebuild_parameter` and the storage types); anything else,
//! such as `os.system` or `builtins.eval`, is refused by name. Nothing in the file is ever
//! executed: the machine builds values, it calls nothing.
//!
//! The same machine reads plain pickles of data ([`read_pickle`]): the `HookedTransformerConfig`
//! and edge lists InterpBench ships (`ll_model_cfg.pkl`, `edges.pkl`), whose configs also hold
//! torch dtypes, numpy scalars or the config object itself (built as a dict of its fields).
//!
//! Tensors are described by their storage (an archive entry `data/{key}`, stored uncompressed, as
//! `torch.save` writes them), dtype, shape, strides and offset, and read from the memory-mapped
//! file when asked for.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::{Mmap, UncheckedAdvice};
use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};

/// A tensor of the state dict: where its storage lies in the file and how it views it.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct TorchTensor {
    /// Storage key (`data/{key}` in the archive).
    key: String,
    kind: Kind,
    /// Elements of the storage.
    storage_numel: i64,
    offset: i64,
    pub(crate) shape: Vec<i64>,
    stride: Vec<i64>,
}

/// An open PyTorch checkpoint: its tensors by name and the storages' byte ranges in the file.
pub(crate) struct TorchFile {
    path: PathBuf,
    mmap: Mmap,
    pub(crate) tensors: HashMap<String, TorchTensor>,
    /// Storage key to its (start, length) in bytes in the file.
    storages: HashMap<String, (usize, usize)>,
}

impl TorchFile {
    /// Opens a `torch.save` zip archive holding a state dict (a dict of tensors; one nested under
    /// `state_dict` or `model` also counts).
    pub(crate) fn open(path: &Path) -> Result<Self> {
        let bad = |message: String| Error::Checkpoint { path: path.to_path_buf(), message };
        let file = File::open(path).map_err(Error::io(path))?;
        // SAFETY: read-only private mapping, as for safetensors shards.
        let mmap = unsafe { Mmap::map(&file) }.map_err(Error::io(path))?;
        if mmap.len() < 4 || &mmap[..2] != b"PK" {
            let legacy = mmap.len() > 2 && mmap[0] == 0x80;
            return Err(bad(if legacy {
                "a legacy (pre-1.6, non-zip) torch.save file: load it in PyTorch and save it again, or convert it to safetensors".into()
            } else {
                "not a PyTorch zip archive".into()
            }));
        }
        let mut archive = zip::ZipArchive::new(std::io::Cursor::new(&mmap[..])).map_err(|e| bad(format!("unreadable zip archive: {e}")))?;
        let (mut pickle, mut storages) = (None, HashMap::new());
        for i in 0..archive.len() {
            let entry = archive.by_index_raw(i).map_err(|e| bad(format!("unreadable zip entry {i}: {e}")))?;
            let name = entry.name().to_string();
            let (start, len) = (entry.data_start() as usize, entry.compressed_size() as usize);
            let stored = entry.compression() == zip::CompressionMethod::Stored && entry.size() == entry.compressed_size();
            if start.checked_add(len).is_none_or(|end| end > mmap.len()) {
                return Err(bad(format!("entry `{name}` lies past the end of the file (truncated?)")));
            }
            if name.ends_with("/data.pkl") || name == "data.pkl" {
                if !stored {
                    return Err(bad(format!("entry `{name}` is compressed; torch.save stores entries uncompressed")));
                }
                pickle = Some((start, len));
            } else if let Some((_, key)) = name.rsplit_once("/data/") {
                if stored {
                    storages.insert(key.to_string(), (start, len));
                }
            }
        }
        let (start, len) = pickle.ok_or_else(|| bad("no data.pkl in the archive".into()))?;
        let value = Unpickler::new(&mmap[start..start + len]).run().map_err(|e| bad(format!("data.pkl: {e}")))?;
        let tensors = state_dict(value).map_err(bad)?;
        for (name, t) in &tensors {
            let (_, bytes) = storages.get(&t.key).ok_or_else(|| bad(format!("tensor `{name}`: storage `data/{}` is missing or compressed", t.key)))?;
            let needed = t.storage_numel as usize * t.kind.elt_size_in_bytes();
            if *bytes < needed {
                return Err(bad(format!("tensor `{name}`: storage `data/{}` holds {bytes} bytes, {needed} needed", t.key)));
            }
            let reach: i64 = t.offset + t.shape.iter().zip(&t.stride).map(|(n, s)| (n - 1).max(0) * s).sum::<i64>();
            if t.shape.iter().all(|&n| n > 0) && reach >= t.storage_numel {
                return Err(bad(format!("tensor `{name}` of shape {:?} reaches past its storage of {} elements", t.shape, t.storage_numel)));
            }
        }
        Ok(TorchFile { path: path.to_path_buf(), mmap, tensors, storages })
    }

    /// The tensor `name` as stored (its own dtype, on the CPU, contiguous).
    pub(crate) fn tensor(&self, name: &str) -> Result<Tensor> {
        let t = self.tensors.get(name).ok_or_else(|| Error::Checkpoint { path: self.path.clone(), message: format!("no tensor `{name}`") })?;
        let (start, _) = self.storages[&t.key];
        let bytes = &self.mmap[start..start + t.storage_numel as usize * t.kind.elt_size_in_bytes()];
        let storage = Tensor::f_from_data_size(bytes, &[t.storage_numel], t.kind)?;
        let out = storage.f_as_strided(t.shape.as_slice(), t.stride.as_slice(), t.offset)?.f_contiguous()?.f_to_device(Device::Cpu)?;
        // SAFETY: `bytes` is not used after this point (it was copied); dropping the pages only
        // makes a later read of the same storage fault them in again from the file. Loading then
        // needs little more memory than the weights, as for safetensors.
        unsafe { self.mmap.unchecked_advise_range(UncheckedAdvice::DontNeed, start, bytes.len()) }.ok();
        Ok(out)
    }
}

/// The tensors of an unpickled state dict by name.
fn state_dict(value: Value) -> std::result::Result<HashMap<String, TorchTensor>, String> {
    let Value::Dict(items) = value else {
        return Err(format!("holds {}, not a state dict (a dict of tensors)", value.kind()));
    };
    // A checkpoint dict whose state dict sits under a key.
    if !items.iter().any(|(_, v)| matches!(v, Value::Tensor(_))) {
        for (k, v) in &items {
            if matches!(k, Value::Str(s) if s == "state_dict" || s == "model" || s == "model_state_dict") {
                return state_dict(v.clone());
            }
        }
    }
    let mut out = HashMap::new();
    for (k, v) in items {
        match (k, v) {
            (Value::Str(name), Value::Tensor(t)) => {
                out.insert(name, t);
            }
            // Non-tensor entries (`_metadata`, step counters, configs) are not weights.
            (Value::Str(_), _) => {}
            (k, _) => return Err(format!("a state dict key is {}, not a string", k.kind())),
        }
    }
    if out.is_empty() {
        return Err("the state dict holds no tensors".into());
    }
    Ok(out)
}

/// What the pickle machine builds.
#[derive(Clone, Debug, PartialEq)]
enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    Tuple(Vec<Value>),
    List(Vec<Value>),
    Dict(Vec<(Value, Value)>),
    /// An allowed global (module.name), not yet called.
    Global(&'static str),
    /// A numpy dtype by its type code (`f8`, `i8`, ...).
    Dtype(String),
    /// A storage: key, element kind, number of elements.
    Storage(String, Kind, i64),
    Tensor(TorchTensor),
    Mark,
}

impl Value {
    /// Levels of containers in it (0 for a leaf). Recursion is safe: every container is
    /// checked against [`MAX_DEPTH`] as it is built.
    fn depth(&self) -> usize {
        match self {
            Value::Tuple(v) | Value::List(v) => 1 + v.iter().map(Value::depth).max().unwrap_or(0),
            Value::Dict(v) => 1 + v.iter().map(|(k, v)| k.depth().max(v.depth())).max().unwrap_or(0),
            _ => 0,
        }
    }

    /// Values it holds, itself included.
    fn size(&self) -> usize {
        match self {
            Value::Tuple(v) | Value::List(v) => 1 + v.iter().map(Value::size).sum::<usize>(),
            Value::Dict(v) => 1 + v.iter().map(|(k, v)| k.size() + v.size()).sum::<usize>(),
            _ => 1,
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Value::None => "None",
            Value::Bool(_) => "a bool",
            Value::Int(_) => "an int",
            Value::Float(_) => "a float",
            Value::Str(_) => "a string",
            Value::Bytes(_) => "bytes",
            Value::Tuple(_) => "a tuple",
            Value::List(_) => "a list",
            Value::Dict(_) => "a dict",
            Value::Global(_) => "a class or function",
            Value::Dtype(_) => "a numpy dtype",
            Value::Storage(..) => "a storage",
            Value::Tensor(_) => "a tensor",
            Value::Mark => "a mark",
        }
    }
}

/// The globals a state dict needs, and for storage types their element kind.
const GLOBALS: &[(&str, Option<Kind>)] = &[
    ("collections.OrderedDict", None),
    ("torch._utils._rebuild_tensor_v2", None),
    ("torch._utils._rebuild_parameter", None),
    ("torch.FloatStorage", Some(Kind::Float)),
    ("torch.HalfStorage", Some(Kind::Half)),
    ("torch.BFloat16Storage", Some(Kind::BFloat16)),
    ("torch.DoubleStorage", Some(Kind::Double)),
    ("torch.LongStorage", Some(Kind::Int64)),
    ("torch.IntStorage", Some(Kind::Int)),
    ("torch.BoolStorage", Some(Kind::Bool)),
    ("torch.ByteStorage", Some(Kind::Uint8)),
    // Data in configs: dtypes, numpy scalars, TransformerLens's config object (its fields).
    ("torch.float32", None),
    ("torch.float16", None),
    ("torch.bfloat16", None),
    ("torch.float64", None),
    ("numpy.dtype", None),
    ("numpy.core.multiarray.scalar", None),
    ("numpy._core.multiarray.scalar", None),
    ("transformer_lens.HookedTransformerConfig.HookedTransformerConfig", None),
    ("transformer_lens.config.HookedTransformerConfig.HookedTransformerConfig", None),
];

/// TransformerLens's config classes: a pickled instance is read as the dict of its fields.
const CONFIG_CLASSES: [&str; 2] =
    ["transformer_lens.HookedTransformerConfig.HookedTransformerConfig", "transformer_lens.config.HookedTransformerConfig.HookedTransformerConfig"];

/// At most this many values on the stack and in the memo, and elements per container: a
/// state dict of any model stays far below; a hostile pickle cannot make us allocate more.
const LIMIT: usize = 1 << 24;

/// Containers nest at most this deep (a state dict nests three or four levels): deeper ones are
/// refused, so that no recursion over a value (or its drop) can exhaust the stack.
const MAX_DEPTH: usize = 64;

/// At most this many values copied out of the memo in all: a state dict fetches storage types,
/// device strings and the like, a few per tensor.
const COPY_LIMIT: usize = 1 << 20;

struct Unpickler<'a> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    memo: HashMap<u32, Value>,
    /// Values copied out of the memo so far: Python shares them, we copy, so a pickle that
    /// fetches a container into itself again and again would otherwise double memory each time.
    copied: usize,
}

impl<'a> Unpickler<'a> {
    fn new(data: &'a [u8]) -> Self {
        Unpickler { data, pos: 0, stack: Vec::new(), memo: HashMap::new(), copied: 0 }
    }

    fn take(&mut self, n: usize) -> std::result::Result<&'a [u8], String> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.data.len()).ok_or_else(|| format!("truncated at byte {}", self.pos))?;
        let bytes = &self.data[self.pos..end];
        self.pos = end;
        Ok(bytes)
    }

    fn u32(&mut self) -> std::result::Result<u32, String> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().map_err(|_| "truncated")?))
    }

    fn pop(&mut self) -> std::result::Result<Value, String> {
        self.stack.pop().ok_or_else(|| format!("stack empty at byte {}", self.pos))
    }

    /// The values above the topmost mark, removing them and the mark.
    fn pop_mark(&mut self) -> std::result::Result<Vec<Value>, String> {
        let at = self.stack.iter().rposition(|v| *v == Value::Mark).ok_or_else(|| format!("no mark at byte {}", self.pos))?;
        let items = self.stack.split_off(at + 1);
        self.stack.pop();
        Ok(items)
    }

    fn push(&mut self, v: Value) -> std::result::Result<(), String> {
        if self.stack.len() >= LIMIT {
            return Err("the pickle's stack grows past any state dict".into());
        }
        if let Value::Tuple(items) | Value::List(items) = &v {
            Self::check_depth(items.iter(), self.pos)?;
        }
        self.stack.push(v);
        Ok(())
    }

    fn memoize(&mut self, key: u32) -> std::result::Result<(), String> {
        let top = self.stack.last().cloned().ok_or("memoizing an empty stack")?;
        if self.memo.len() >= LIMIT {
            return Err("the pickle's memo grows past any state dict".into());
        }
        self.memo.insert(key, top);
        Ok(())
    }

    fn string(&mut self, len: usize) -> std::result::Result<Value, String> {
        let bytes = self.take(len)?;
        Ok(Value::Str(String::from_utf8(bytes.to_vec()).map_err(|_| format!("a string that is not UTF-8 at byte {}", self.pos))?))
    }

    fn global(module: &str, name: &str) -> std::result::Result<Value, String> {
        let full = format!("{module}.{name}");
        GLOBALS
            .iter()
            .find(|(g, _)| *g == full)
            .map(|(g, _)| Value::Global(g))
            .ok_or_else(|| format!("refused global `{full}`: only state dicts of tensors are read, and nothing in the file is run"))
    }

    fn run(mut self) -> std::result::Result<Value, String> {
        loop {
            let at = self.pos;
            let op = *self.take(1)?.first().ok_or("empty")?;
            match op {
                0x80 => {
                    self.take(1)?; // PROTO
                }
                0x95 => {
                    self.take(8)?; // FRAME
                }
                b'.' => return self.pop(), // STOP
                b'}' => self.push(Value::Dict(Vec::new()))?,
                b']' => self.push(Value::List(Vec::new()))?,
                b')' => self.push(Value::Tuple(Vec::new()))?,
                b'(' => self.push(Value::Mark)?,
                b'N' => self.push(Value::None)?,
                0x88 => self.push(Value::Bool(true))?,
                0x89 => self.push(Value::Bool(false))?,
                b'K' => {
                    let v = self.take(1)?[0];
                    self.push(Value::Int(v as i64))?
                }
                b'M' => {
                    let b = self.take(2)?;
                    self.push(Value::Int(u16::from_le_bytes([b[0], b[1]]) as i64))?
                }
                b'J' => {
                    let v = self.u32()? as i32;
                    self.push(Value::Int(v as i64))?
                }
                0x8a => {
                    // LONG1: a little-endian two's-complement integer of n bytes.
                    let n = self.take(1)?[0] as usize;
                    let b = self.take(n)?;
                    if n > 8 {
                        return Err(format!("an integer of {n} bytes at byte {at}"));
                    }
                    let mut v: i64 = if b.last().is_some_and(|x| x & 0x80 != 0) { -1 } else { 0 };
                    for (i, byte) in b.iter().enumerate() {
                        v &= !(0xff << (8 * i));
                        v |= (*byte as i64) << (8 * i);
                    }
                    self.push(Value::Int(v))?
                }
                b'G' => {
                    let b = self.take(8)?;
                    self.push(Value::Float(f64::from_be_bytes(b.try_into().map_err(|_| "truncated")?)))?
                }
                b'X' => {
                    let n = self.u32()? as usize;
                    let s = self.string(n)?;
                    self.push(s)?
                }
                0x8c => {
                    let n = self.take(1)?[0] as usize;
                    let s = self.string(n)?;
                    self.push(s)?
                }
                b'C' => {
                    let n = self.take(1)?[0] as usize;
                    let b = self.take(n)?.to_vec();
                    self.push(Value::Bytes(b))?
                }
                b'B' => {
                    let n = self.u32()? as usize;
                    let b = self.take(n)?.to_vec();
                    self.push(Value::Bytes(b))?
                }
                b'q' => {
                    let k = self.take(1)?[0] as u32;
                    self.memoize(k)?
                }
                b'r' => {
                    let k = self.u32()?;
                    self.memoize(k)?
                }
                0x94 => {
                    let k = self.memo.len() as u32;
                    self.memoize(k)?
                }
                b'h' | b'j' => {
                    let k = if op == b'h' { self.take(1)?[0] as u32 } else { self.u32()? };
                    let v = self.memo.get(&k).ok_or_else(|| format!("memo entry {k} unset at byte {at}"))?;
                    self.copied += v.size();
                    if self.copied > COPY_LIMIT {
                        return Err(format!("the pickle fetches more values from its memo than any state dict (at byte {at})"));
                    }
                    let v = v.clone();
                    self.push(v)?
                }
                b'c' => {
                    // GLOBAL: "module\nname\n".
                    let rest = &self.data[self.pos..];
                    let mut lines = rest.splitn(3, |&b| b == b'\n');
                    let (module, name) = (lines.next().unwrap_or_default(), lines.next().unwrap_or_default());
                    self.pos += module.len() + name.len() + 2;
                    if self.pos > self.data.len() {
                        return Err(format!("truncated global at byte {at}"));
                    }
                    let g = Self::global(&String::from_utf8_lossy(module), &String::from_utf8_lossy(name))?;
                    self.push(g)?
                }
                0x93 => {
                    // STACK_GLOBAL
                    let (name, module) = (self.pop()?, self.pop()?);
                    match (module, name) {
                        (Value::Str(m), Value::Str(n)) => {
                            let g = Self::global(&m, &n)?;
                            self.push(g)?
                        }
                        _ => return Err(format!("STACK_GLOBAL of non-strings at byte {at}")),
                    }
                }
                b't' => {
                    let items = self.pop_mark()?;
                    self.push(Value::Tuple(items))?
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    if self.stack.len() < n {
                        return Err(format!("stack too short for a tuple at byte {at}"));
                    }
                    let items = self.stack.split_off(self.stack.len() - n);
                    self.push(Value::Tuple(items))?
                }
                b'a' => {
                    let v = self.pop()?;
                    self.extend_list(vec![v], at)?
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    self.extend_list(items, at)?
                }
                b's' => {
                    let (v, k) = (self.pop()?, self.pop()?);
                    self.extend_dict(vec![k, v], at)?
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    self.extend_dict(items, at)?
                }
                b'Q' => {
                    // BINPERSID: ('storage', storage type, key, location, numel).
                    let pid = self.pop()?;
                    let storage = match pid {
                        Value::Tuple(t) => match t.as_slice() {
                            [Value::Str(tag), Value::Global(ty), Value::Str(key), _, Value::Int(numel)] if tag == "storage" && *numel >= 0 => {
                                let kind =
                                    GLOBALS.iter().find(|(g, _)| g == ty).and_then(|(_, k)| *k).ok_or_else(|| format!("`{ty}` is not a storage type"))?;
                                Value::Storage(key.clone(), kind, *numel)
                            }
                            _ => return Err(format!("a persistent id that is not a storage at byte {at}")),
                        },
                        other => return Err(format!("a persistent id that is {} at byte {at}", other.kind())),
                    };
                    self.push(storage)?
                }
                b'R' => {
                    let (args, f) = (self.pop()?, self.pop()?);
                    let v = Self::call(f, args).map_err(|e| format!("{e} (byte {at})"))?;
                    self.push(v)?
                }
                b'b' => {
                    // BUILD: state for the object below. A dict of fields (a config object's) joins
                    // the dict it stands for; other state (an OrderedDict's `_metadata`, a numpy
                    // dtype's flags) is ignored.
                    match self.pop()? {
                        Value::Dict(fields) if matches!(self.stack.last(), Some(Value::Dict(_))) => {
                            let items: Vec<Value> = fields.into_iter().flat_map(|(k, v)| [k, v]).collect();
                            self.extend_dict(items, at)?
                        }
                        _ => {}
                    }
                }
                0x81 => {
                    // NEWOBJ: cls.__new__(cls, *args), for TransformerLens's config class only.
                    let (args, cls) = (self.pop()?, self.pop()?);
                    match (cls, args) {
                        (Value::Global(g), Value::Tuple(a)) if CONFIG_CLASSES.contains(&g) && a.is_empty() => self.push(Value::Dict(Vec::new()))?,
                        (cls, _) => return Err(format!("NEWOBJ of {} at byte {at}: only TransformerLens's config class is built", cls.kind())),
                    }
                }
                other => return Err(format!("opcode 0x{other:02x} at byte {at} is not one a state dict uses; refused")),
            }
        }
    }

    /// An error if a container holding `items` would nest deeper than [`MAX_DEPTH`].
    fn check_depth<'v>(items: impl Iterator<Item = &'v Value>, at: usize) -> std::result::Result<(), String> {
        if items.map(Value::depth).max().unwrap_or(0) + 1 > MAX_DEPTH {
            return Err(format!("containers nested deeper than {MAX_DEPTH} levels at byte {at}"));
        }
        Ok(())
    }

    fn extend_list(&mut self, items: Vec<Value>, at: usize) -> std::result::Result<(), String> {
        Self::check_depth(items.iter(), at)?;
        match self.stack.last_mut() {
            Some(Value::List(l)) if l.len() + items.len() <= LIMIT => {
                l.extend(items);
                Ok(())
            }
            _ => Err(format!("appending to something that is not a list at byte {at}")),
        }
    }

    fn extend_dict(&mut self, items: Vec<Value>, at: usize) -> std::result::Result<(), String> {
        Self::check_depth(items.iter(), at)?;
        if items.len() % 2 != 0 {
            return Err(format!("an odd number of dict items at byte {at}"));
        }
        match self.stack.last_mut() {
            Some(Value::Dict(d)) if d.len() + items.len() / 2 <= LIMIT => {
                let mut it = items.into_iter();
                while let (Some(k), Some(v)) = (it.next(), it.next()) {
                    d.push((k, v));
                }
                Ok(())
            }
            _ => Err(format!("setting items of something that is not a dict at byte {at}")),
        }
    }

    /// REDUCE of an allowed global: builds the value it stands for.
    fn call(f: Value, args: Value) -> std::result::Result<Value, String> {
        let Value::Tuple(args) = args else { return Err(format!("call arguments that are {}", args.kind())) };
        let ints = |v: &Value| -> std::result::Result<Vec<i64>, String> {
            match v {
                Value::Tuple(t) => t
                    .iter()
                    .map(|x| {
                        if let Value::Int(i) = x {
                            if *i >= 0 {
                                Ok(*i)
                            } else {
                                Err("a negative size or stride".to_string())
                            }
                        } else {
                            Err("a size or stride that is not an int".into())
                        }
                    })
                    .collect(),
                _ => Err("a size or stride that is not a tuple".into()),
            }
        };
        match (f, args.as_slice()) {
            (Value::Global("collections.OrderedDict"), []) => Ok(Value::Dict(Vec::new())),
            (Value::Global("torch._utils._rebuild_tensor_v2"), [Value::Storage(key, kind, numel), Value::Int(offset), size, stride, ..]) if *offset >= 0 => {
                let (shape, stride) = (ints(size)?, ints(stride)?);
                if shape.len() != stride.len() {
                    return Err(format!("a tensor of shape {shape:?} with strides {stride:?}"));
                }
                if shape.iter().try_fold(1i64, |acc, &n| acc.checked_mul(n)).is_none() {
                    return Err(format!("a tensor of shape {shape:?} overflows"));
                }
                Ok(Value::Tensor(TorchTensor { key: key.clone(), kind: *kind, storage_numel: *numel, offset: *offset, shape, stride }))
            }
            (Value::Global("torch._utils._rebuild_parameter"), [Value::Tensor(t), ..]) => Ok(Value::Tensor(t.clone())),
            (Value::Global("numpy.dtype"), [Value::Str(code), ..]) => Ok(Value::Dtype(code.clone())),
            (Value::Global("numpy.core.multiarray.scalar" | "numpy._core.multiarray.scalar"), [Value::Dtype(code), Value::Bytes(b)]) => {
                let sized = |n: usize| -> std::result::Result<&[u8], String> {
                    if b.len() == n {
                        Ok(b.as_slice())
                    } else {
                        Err(format!("a numpy {code} scalar of {} bytes", b.len()))
                    }
                };
                let array = |n: usize| -> std::result::Result<[u8; 8], String> {
                    let mut out = [0u8; 8];
                    out[..n].copy_from_slice(sized(n)?);
                    Ok(out)
                };
                match code.as_str() {
                    "f8" => Ok(Value::Float(f64::from_le_bytes(array(8)?))),
                    "f4" => {
                        let w = array(4)?;
                        Ok(Value::Float(f32::from_le_bytes([w[0], w[1], w[2], w[3]]) as f64))
                    }
                    "i8" => Ok(Value::Int(i64::from_le_bytes(array(8)?))),
                    "i4" => {
                        let w = array(4)?;
                        Ok(Value::Int(i64::from(i32::from_le_bytes([w[0], w[1], w[2], w[3]]))))
                    }
                    "b1" => Ok(Value::Bool(sized(1)?[0] != 0)),
                    other => Err(format!("a numpy scalar of dtype `{other}`")),
                }
            }
            (Value::Global(g), args) => Err(format!("`{g}` called with {} arguments it does not take", args.len())),
            (f, _) => Err(format!("calling {}", f.kind())),
        }
    }
}

/// Most bytes a plain pickle (a config, an edge list) may have.
const MAX_PICKLE_BYTES: u64 = 256 << 20;

/// A plain pickle of data (dicts, lists, tuples, strings, numbers, `None`; torch dtypes and numpy
/// scalars; TransformerLens's config object as the dict of its fields) as JSON, read by the same
/// machine as checkpoints: nothing in it is run, anything else is refused by name.
pub fn read_pickle(path: &Path) -> Result<serde_json::Value> {
    let bad = |message: String| Error::Checkpoint { path: path.to_path_buf(), message };
    let len = std::fs::metadata(path).map_err(Error::io(path))?.len();
    if len > MAX_PICKLE_BYTES {
        return Err(bad(format!("{len} bytes: larger than any config or edge list ({MAX_PICKLE_BYTES} at most)")));
    }
    let data = std::fs::read(path).map_err(Error::io(path))?;
    let value = Unpickler::new(&data).run().map_err(bad)?;
    to_json(value).map_err(bad)
}

fn to_json(v: Value) -> std::result::Result<serde_json::Value, String> {
    use serde_json::Value as J;
    Ok(match v {
        Value::None => J::Null,
        Value::Bool(b) => J::Bool(b),
        Value::Int(i) => J::from(i),
        Value::Float(f) => serde_json::Number::from_f64(f).map(J::Number).ok_or_else(|| format!("a float {f} that JSON cannot hold"))?,
        Value::Str(s) => J::String(s),
        Value::Global(g) if g.starts_with("torch.float") || g.starts_with("torch.bfloat") => J::String(g.to_string()),
        Value::Dtype(code) => J::String(code),
        Value::Tuple(items) | Value::List(items) => J::Array(items.into_iter().map(to_json).collect::<std::result::Result<_, _>>()?),
        Value::Dict(items) => {
            let mut map = serde_json::Map::new();
            for (k, v) in items {
                let key = match k {
                    Value::Str(s) => s,
                    Value::Int(i) => i.to_string(),
                    other => return Err(format!("a dict key that is {}", other.kind())),
                };
                map.insert(key, to_json(v)?);
            }
            J::Object(map)
        }
        other => return Err(format!("holds {}, which is not plain data", other.kind())),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn refuses_globals_and_opcodes_a_state_dict_does_not_use() {
        // pickle.dumps(os.system) at protocol 2: GLOBAL 'posix system'.
        let evil = b"\x80\x02cposix\nsystem\nq\x00.";
        let e = Unpickler::new(evil).run().unwrap_err();
        assert!(e.contains("refused global `posix.system`"), "{e}");
        let e = Unpickler::new(b"\x80\x02cbuiltins\neval\n(X\x04\x00\x00\x001+1 tR.").run().unwrap_err();
        assert!(e.contains("`builtins.eval`"), "{e}");
        let e = Unpickler::new(b"\x80\x02I1\n.").run().unwrap_err();
        assert!(e.contains("opcode 0x49"), "{e}");
        // Truncations and stack underflows are errors, not panics.
        for cut in [b"\x80".as_slice(), b"\x80\x02X\xff\xff\xff\xff", b"\x80\x02t", b"\x80\x02s", b"\x80\x02h\x05", b"\x80\x02R"] {
            assert!(Unpickler::new(cut).run().is_err());
        }
        // A list fetched from the memo and appended into itself, again and again, doubles in
        // size each time: refused once the copies pass the limit, not an out-of-memory kill.
        let mut bomb = b"\x80\x02]q\x00".to_vec();
        for _ in 0..64 {
            bomb.extend_from_slice(b"h\x00aq\x00");
        }
        bomb.push(b'.');
        let e = Unpickler::new(&bomb).run().unwrap_err();
        assert!(e.contains("more values from its memo"), "{e}");
        // Tuples nested a million deep (which would overflow the stack when dropped) are refused.
        let mut deep = b"\x80\x02N".to_vec();
        deep.extend(std::iter::repeat_n(0x85u8, 1_000_000));
        deep.push(b'.');
        let e = Unpickler::new(&deep).run().unwrap_err();
        assert!(e.contains("nested deeper than 64"), "{e}");
        // A dict of an int (what a plain dict pickles to) is read.
        assert_eq!(Unpickler::new(b"\x80\x02}q\x00X\x01\x00\x00\x00aK\x07s.").run().unwrap(), Value::Dict(vec![(Value::Str("a".into()), Value::Int(7))]));
    }
}
