//! Weight files: safetensors, zip `.pth` (torch ≥ 1.6) and legacy `.pth` (torch < 1.6), read
//! into one name → tensor map. Tensors stored with any strides (TensorFlow-ported checkpoints
//! keep channels-last or transposed layouts) are rebuilt exactly.

use std::collections::HashMap;
use std::io::{Cursor, Read};
use std::path::Path;

use candle_core::pickle::{Object, Stack};
use candle_core::{DType, Device, Tensor};

use crate::{Error, Result};

/// A set of named tensors, as read from a weight file.
#[derive(Debug, Clone, Default)]
pub struct Weights {
    tensors: HashMap<String, Tensor>,
    source: String,
}

const LEGACY_MAGIC: [u8; 4] = [0x80, 0x02, 0x8a, 0x0a];

impl Weights {
    /// Wraps a map of tensors; `source` names where they came from, for error messages.
    pub fn from_map(tensors: HashMap<String, Tensor>, source: &str) -> Self {
        Self {
            tensors,
            source: source.to_string(),
        }
    }

    /// Reads `path`, whatever its format (told by its first bytes, not its extension).
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::Weights {
            path: path.display().to_string(),
            message: format!("cannot read the file: {e}"),
        })?;
        let fail = |message: String| Error::Weights {
            path: path.display().to_string(),
            message,
        };
        let tensors = if bytes.starts_with(b"PK\x03\x04") {
            read_zip_pth(&bytes).map_err(|e| fail(format!("not a readable PyTorch zip checkpoint: {e}")))?
        } else if bytes.starts_with(&LEGACY_MAGIC) {
            read_legacy_pth(&bytes).map_err(|e| fail(format!("not a readable legacy PyTorch checkpoint: {e}")))?
        } else {
            let st = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu).map_err(|e| {
                fail(format!(
                    "neither a safetensors file nor a PyTorch checkpoint ({e}); is it truncated?"
                ))
            })?;
            st
        };
        if tensors.is_empty() {
            return Err(fail("the file holds no tensors".into()));
        }
        Ok(Self::from_map(tensors, &path.display().to_string()))
    }

    /// Where the weights came from.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The names of all tensors.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(|s| s.as_str())
    }

    /// The tensor `name`, if present.
    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.tensors.get(name)
    }

    /// Inserts or replaces a tensor.
    pub fn insert(&mut self, name: &str, t: Tensor) {
        self.tensors.insert(name.to_string(), t);
    }

    /// Removes a tensor.
    pub fn remove(&mut self, name: &str) -> Option<Tensor> {
        self.tensors.remove(name)
    }

    /// All tensors.
    pub fn tensors(&self) -> &HashMap<String, Tensor> {
        &self.tensors
    }

    /// Saves the tensors as safetensors (via a temporary file, renamed when complete).
    pub fn save(&self, path: &Path) -> Result<()> {
        let tmp = path.with_extension("safetensors.partial");
        candle_core::safetensors::save(&self.tensors, &tmp)?;
        std::fs::rename(&tmp, path)?;
        Ok(())
    }
}

/// What [`convert`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Converted {
    /// Tensors written.
    pub tensors: usize,
    /// Their values, summed.
    pub parameters: usize,
    /// The model they were checked against (every tensor it needs, of the right shape, and
    /// none other), if any.
    pub checked: Option<crate::ModelKind>,
}

/// Writes the weights at `input` (safetensors, or a PyTorch checkpoint, zip or legacy) as a
/// safetensors file at `output`, as the zoo reads them: the same names and values; checked
/// against `kind` first when given (the model is built from them). `output` must end in
/// `.safetensors` and not be `input`; it appears complete or not at all.
pub fn convert(input: &Path, output: &Path, kind: Option<crate::ModelKind>) -> Result<Converted> {
    let bad = |message: String| Error::Weights {
        path: output.display().to_string(),
        message,
    };
    if output.extension().and_then(|e| e.to_str()) != Some("safetensors") {
        return Err(bad("the output must be a .safetensors file".into()));
    }
    let same = match (input.canonicalize(), output.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    if same {
        return Err(bad("is the input: give the output another name".into()));
    }
    let weights = Weights::load(input)?;
    if let Some(kind) = kind {
        crate::Model::from_weights(kind, &weights, candle_core::DType::F32, &Device::Cpu)?;
    }
    weights.save(output)?;
    Ok(Converted {
        tensors: weights.tensors.len(),
        parameters: weights.tensors.values().map(|t| t.elem_count()).sum(),
        checked: kind,
    })
}

type Map = HashMap<String, Tensor>;

fn read_zip_pth(bytes: &[u8]) -> candle_core::Result<Map> {
    let mut zip = zip::ZipArchive::new(Cursor::new(bytes)).map_err(candle_core::Error::wrap)?;
    let names: Vec<String> = zip.file_names().filter_map(|s| s.ok().map(|s| s.to_string())).collect();
    let pkl = names
        .iter()
        .find(|n| n.ends_with("data.pkl"))
        .ok_or_else(|| candle_core::Error::Msg("no data.pkl in the archive".into()))?
        .clone();
    let dir = pkl.strip_suffix("data.pkl").unwrap_or("").to_string();
    // Checkpoints store their entries uncompressed; a compressed entry may inflate to a few
    // times the file, never more (a zip bomb is refused before it is inflated).
    let budget = bytes.len().saturating_mul(4).saturating_add(1 << 20);
    let mut entry = |name: &str| -> candle_core::Result<Vec<u8>> {
        let f = zip.by_name(name).map_err(candle_core::Error::wrap)?;
        if f.size() > budget as u64 {
            candle_core::bail!("entry {name} claims {} bytes, more than such a file can hold", f.size())
        }
        let mut data = Vec::with_capacity(f.size() as usize);
        f.take(budget as u64 + 1).read_to_end(&mut data)?;
        if data.len() > budget {
            candle_core::bail!("entry {name} inflates to more than such a file can hold")
        }
        Ok(data)
    };
    let buf = entry(&pkl)?;
    let mut stack = Stack::empty();
    unpickle(|| stack.read_loop(&mut Cursor::new(&buf)))?;
    let obj = stack.finalize()?;
    let mut storage = |key: &str| -> candle_core::Result<Vec<u8>> { entry(&format!("{dir}data/{key}")) };
    rebuild_state_dict(obj, &mut storage, bytes.len())
}

fn read_legacy_pth(bytes: &[u8]) -> candle_core::Result<Map> {
    // 1: magic number (a 10-byte long, which candle's unpickler cannot hold: skipped by hand).
    let mut pos = 15usize;
    if bytes.len() < pos || bytes[14] != b'.' {
        candle_core::bail!("bad magic number")
    }
    let next = |pos: &mut usize| -> candle_core::Result<Object> {
        let mut cur = Cursor::new(&bytes[*pos..]);
        let mut stack = Stack::empty();
        unpickle(|| stack.read_loop(&mut cur))?;
        *pos += cur.position() as usize;
        stack.finalize()
    };
    // 2: protocol version, 3: system info, 4: the object, 5: the storage keys.
    let _version = next(&mut pos)?;
    let _sys_info = next(&mut pos)?;
    let obj = next(&mut pos)?;
    let keys = match next(&mut pos)? {
        Object::List(k) | Object::Tuple(k) => k,
        other => candle_core::bail!("unexpected storage key list {other:?}"),
    };
    // Then each storage: an 8-byte element count and the raw little-endian data, in key order.
    let mut elem_sizes: HashMap<String, usize> = HashMap::new();
    collect_storage_types(&obj, &mut elem_sizes);
    let mut data: HashMap<String, Vec<u8>> = HashMap::new();
    for k in keys {
        let key = match k {
            Object::Unicode(s) => s,
            other => candle_core::bail!("unexpected storage key {other:?}"),
        };
        let size = *elem_sizes
            .get(&key)
            .ok_or_else(|| candle_core::Error::Msg(format!("storage {key} is never used")))?;
        if pos + 8 > bytes.len() {
            candle_core::bail!("the file ends inside storage {key} (truncated?)")
        }
        let count = u64::from_le_bytes(bytes[pos..pos + 8].try_into().expect("8 bytes"));
        pos += 8;
        // Checked: a crafted count must not wrap around into a small length.
        let len = usize::try_from(count)
            .ok()
            .and_then(|c| c.checked_mul(size))
            .filter(|&len| pos.checked_add(len).is_some_and(|end| end <= bytes.len()))
            .ok_or_else(|| {
                candle_core::Error::Msg(format!(
                    "storage {key} claims {count} elements, more than the file holds (truncated or corrupt?)"
                ))
            })?;
        data.insert(key, bytes[pos..pos + len].to_vec());
        pos += len;
    }
    let mut storage = |key: &str| -> candle_core::Result<Vec<u8>> {
        data.get(key)
            .cloned()
            .ok_or_else(|| candle_core::Error::Msg(format!("missing storage {key}")))
    };
    rebuild_state_dict(obj, &mut storage, bytes.len())
}

/// Runs candle's unpickler on untrusted bytes: a panic inside it (its LONG1 decoder overflows
/// on lengths over 8 bytes when overflow checks are on) becomes an error, and prints nothing.
fn unpickle<T>(f: impl FnOnce() -> candle_core::Result<T>) -> candle_core::Result<T> {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    std::panic::set_hook(hook);
    r.unwrap_or_else(|_| candle_core::bail!("the pickle is malformed"))
}

fn storage_dtype(class_name: &str) -> Option<DType> {
    Some(match class_name {
        "FloatStorage" => DType::F32,
        "DoubleStorage" => DType::F64,
        "HalfStorage" => DType::F16,
        "BFloat16Storage" => DType::BF16,
        "ByteStorage" => DType::U8,
        "LongStorage" => DType::I64,
        "IntStorage" => DType::I64, // widened on read
        _ => return None,
    })
}

fn stored_size(class_name: &str) -> usize {
    match class_name {
        "DoubleStorage" | "LongStorage" => 8,
        "FloatStorage" | "IntStorage" => 4,
        "HalfStorage" | "BFloat16Storage" => 2,
        _ => 1,
    }
}

/// Records the element size of every persistent storage referenced in `obj`.
fn collect_storage_types(obj: &Object, out: &mut HashMap<String, usize>) {
    match obj {
        Object::PersistentLoad(inner) => {
            if let Object::Tuple(items) = inner.as_ref() {
                if let (Some(Object::Class { class_name, .. }), Some(Object::Unicode(key))) =
                    (items.get(1), items.get(2))
                {
                    out.insert(key.clone(), stored_size(class_name));
                }
            }
        }
        Object::Tuple(v) | Object::List(v) => v.iter().for_each(|o| collect_storage_types(o, out)),
        Object::Dict(kv) => kv.iter().for_each(|(k, v)| {
            collect_storage_types(k, out);
            collect_storage_types(v, out)
        }),
        Object::Reduce { callable, args } | Object::Build { callable, args } => {
            collect_storage_types(callable, out);
            collect_storage_types(args, out);
        }
        _ => {}
    }
}

/// Finds the state dict in `obj` (the object itself, or its `state_dict` / `model` entry) and
/// rebuilds every tensor in it.
/// `file_len` bounds what a tensor may expand to: no tensor holds more bytes than its file.
fn rebuild_state_dict(
    obj: Object,
    storage: &mut dyn FnMut(&str) -> candle_core::Result<Vec<u8>>,
    file_len: usize,
) -> candle_core::Result<Map> {
    let obj = match obj {
        Object::Build { args, .. } => *args,
        o => o,
    };
    let Object::Dict(items) = obj else {
        candle_core::bail!("the checkpoint is not a state dict")
    };
    // A checkpoint may wrap the state dict.
    for wrapper in ["state_dict", "model", "model_state_dict"] {
        if let Some((_, v)) = items.iter().find(|(k, _)| *k == Object::Unicode(wrapper.into())) {
            if matches!(v, Object::Dict(_) | Object::Build { .. }) {
                return rebuild_state_dict(v.clone(), storage, file_len);
            }
        }
    }
    let mut out = Map::new();
    let mut cache: HashMap<String, Vec<u8>> = HashMap::new();
    for (k, v) in items {
        let Object::Unicode(name) = k else { continue };
        if let Some(t) = rebuild_tensor(v, storage, &mut cache, file_len)? {
            out.insert(name, t);
        }
    }
    Ok(out)
}

fn rebuild_tensor(
    v: Object,
    storage: &mut dyn FnMut(&str) -> candle_core::Result<Vec<u8>>,
    cache: &mut HashMap<String, Vec<u8>>,
    file_len: usize,
) -> candle_core::Result<Option<Tensor>> {
    let Object::Reduce { callable, args } = v else {
        return Ok(None);
    };
    let Object::Class {
        module_name,
        class_name,
    } = *callable
    else {
        return Ok(None);
    };
    let args = match (module_name.as_str(), class_name.as_str()) {
        ("torch._utils", "_rebuild_tensor_v2") => *args,
        ("torch._utils", "_rebuild_parameter") => {
            let Object::Tuple(mut a) = *args else { return Ok(None) };
            if a.is_empty() {
                return Ok(None);
            }
            return rebuild_tensor(a.remove(0), storage, cache, file_len);
        }
        _ => return Ok(None),
    };
    let Object::Tuple(a) = args else { return Ok(None) };
    if a.len() < 4 {
        return Ok(None);
    }
    let Object::PersistentLoad(pid) = &a[0] else {
        return Ok(None);
    };
    let Object::Tuple(pid) = pid.as_ref() else {
        return Ok(None);
    };
    let (Some(Object::Class { class_name: sclass, .. }), Some(Object::Unicode(key))) = (pid.get(1), pid.get(2)) else {
        return Ok(None);
    };
    let Some(dtype) = storage_dtype(sclass) else {
        candle_core::bail!("unsupported storage type {sclass}")
    };
    let int = |o: &Object| -> candle_core::Result<usize> {
        let v: i64 = match o {
            Object::Int(i) => *i as i64,
            Object::Long(i) => *i,
            other => candle_core::bail!("expected an integer, got {other:?}"),
        };
        usize::try_from(v).map_err(|_| candle_core::Error::Msg(format!("negative size, stride or offset {v}")))
    };
    let ints = |o: &Object| -> candle_core::Result<Vec<usize>> {
        match o {
            Object::Tuple(v) | Object::List(v) => v.iter().map(int).collect(),
            other => candle_core::bail!("expected a tuple, got {other:?}"),
        }
    };
    let offset = int(&a[1])?;
    let size = ints(&a[2])?;
    let stride = ints(&a[3])?;
    if !cache.contains_key(key) {
        cache.insert(key.clone(), storage(key)?);
    }
    let raw = &cache[key];
    let esize = stored_size(sclass);
    if size.len() != stride.len() {
        candle_core::bail!(
            "tensor in storage {key}: {} sizes but {} strides",
            size.len(),
            stride.len()
        )
    }
    let too_large = || {
        candle_core::Error::Msg(format!(
            "a tensor of shape {size:?} in storage {key} is larger than the file"
        ))
    };
    // Every size is checked before anything is allocated: the tensor's own bytes fit in the file
    // (a stride-0 tensor cannot expand to terabytes), and its last element in its storage.
    let numel = size
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .filter(|&n| n.checked_mul(esize).is_some_and(|b| b <= file_len))
        .ok_or_else(too_large)?;
    // Gather with the strides, in f64/i64, then convert.
    // The element decoder, chosen once per tensor rather than per element.
    let decode: fn(&[u8]) -> f64 = match sclass.as_str() {
        "FloatStorage" => |b| f32::from_le_bytes(b.try_into().unwrap()) as f64,
        "DoubleStorage" => |b| f64::from_le_bytes(b.try_into().unwrap()),
        "HalfStorage" => |b| half_to_f64(u16::from_le_bytes(b.try_into().unwrap())),
        "BFloat16Storage" => |b| f32::from_bits((u16::from_le_bytes(b.try_into().unwrap()) as u32) << 16) as f64,
        "LongStorage" => |b| i64::from_le_bytes(b.try_into().unwrap()) as f64,
        "IntStorage" => |b| i32::from_le_bytes(b.try_into().unwrap()) as f64,
        _ => |b| b[0] as f64,
    };
    let read = |i: usize| -> f64 { decode(&raw[i * esize..(i + 1) * esize]) };
    let max_index = size.iter().zip(&stride).try_fold(offset, |acc, (s, st)| {
        s.saturating_sub(1).checked_mul(*st).and_then(|x| acc.checked_add(x))
    });
    let fits = max_index
        .and_then(|m| m.checked_add(1))
        .and_then(|m| m.checked_mul(esize))
        .is_some_and(|end| end <= raw.len());
    if numel > 0 && !fits {
        candle_core::bail!("storage {key} is too short for a tensor of shape {size:?} (truncated or corrupt?)")
    }
    let mut vals = Vec::with_capacity(numel);
    let mut idx = vec![0usize; size.len()];
    for _ in 0..numel {
        let off = offset + idx.iter().zip(&stride).map(|(i, s)| i * s).sum::<usize>();
        vals.push(read(off));
        for d in (0..size.len()).rev() {
            idx[d] += 1;
            if idx[d] < size[d] {
                break;
            }
            idx[d] = 0;
        }
    }
    let t = Tensor::from_vec(vals, size.as_slice(), &Device::Cpu)?;
    let t = match dtype {
        DType::I64 | DType::U8 => t.to_dtype(DType::F64)?.to_dtype(dtype)?,
        d => t.to_dtype(d)?,
    };
    Ok(Some(t))
}

fn half_to_f64(h: u16) -> f64 {
    let sign = if h & 0x8000 != 0 { -1.0 } else { 1.0 };
    let exp = ((h >> 10) & 0x1f) as i32;
    let frac = (h & 0x3ff) as f64;
    sign * match exp {
        0 => frac * 2f64.powi(-24),
        31 => {
            if frac == 0.0 {
                f64::INFINITY
            } else {
                f64::NAN
            }
        }
        e => (1.0 + frac / 1024.0) * 2f64.powi(e - 15),
    }
}
