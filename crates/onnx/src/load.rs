//! Reading an ONNX file: decoding, tensors (in the file or as external data), checks.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Component, Path};

use candle_core::{DType, Device, Tensor};
use prost::Message;

use crate::proto::{data_type as dt, ModelProto, TensorProto};
use crate::value::{element_count, Ints, Value};

/// The largest tensor (elements) a file may declare: 2^32, far above any CNN's weights.
const MAX_ELEMENTS: usize = 1 << 32;

/// Decodes a model from its bytes.
pub(crate) fn decode(bytes: &[u8]) -> Result<ModelProto, String> {
    ModelProto::decode(bytes).map_err(|e| format!("not a valid ONNX file ({e})"))
}

fn element_size(t: i32) -> Option<usize> {
    Some(match t {
        dt::FLOAT | dt::INT32 => 4,
        dt::DOUBLE | dt::INT64 | dt::UINT64 => 8,
        dt::FLOAT16 | dt::BFLOAT16 => 2,
        dt::INT8 | dt::UINT8 | dt::BOOL => 1,
        _ => return None,
    })
}

fn type_name(t: i32) -> String {
    match t {
        2 => "uint8".into(),
        3 => "int8".into(),
        4 => "uint16".into(),
        5 => "int16".into(),
        8 => "string".into(),
        12 => "uint32".into(),
        14 => "complex64".into(),
        15 => "complex128".into(),
        other => format!("element type {other}"),
    }
}

/// The bytes of an external tensor: `location` relative to `dir`, inside it.
fn external_bytes(t: &TensorProto, dir: Option<&Path>, expected: usize) -> Result<Vec<u8>, String> {
    let dir = dir.ok_or("the tensor's data is in an external file, and the model was not loaded from a path")?;
    let get = |k: &str| t.external_data.iter().find(|e| e.key == k).map(|e| e.value.as_str());
    let location = get("location").ok_or("external data without a location")?;
    let rel = Path::new(location);
    if rel.is_absolute() || rel.components().any(|c| !matches!(c, Component::Normal(_))) {
        return Err(format!(
            "external data location `{location}` is not a plain path inside the model's folder"
        ));
    }
    let parse = |k: &str| -> Result<Option<u64>, String> {
        get(k)
            .map(|v| {
                v.parse::<u64>()
                    .map_err(|_| format!("external data {k} `{v}` is not a number"))
            })
            .transpose()
    };
    let offset = parse("offset")?.unwrap_or(0);
    let length = parse("length")?;
    if let Some(l) = length {
        if l != expected as u64 {
            return Err(format!(
                "external data length {l} does not match the {expected} bytes of its shape"
            ));
        }
    }
    let path = dir.join(rel);
    let mut f = std::fs::File::open(&path).map_err(|e| format!("external data {}: {e}", path.display()))?;
    let size = f.metadata().map_err(|e| e.to_string())?.len();
    if offset.checked_add(expected as u64).is_none_or(|end| end > size) {
        return Err(format!(
            "external data {} holds {size} bytes, fewer than offset {offset} + {expected}",
            path.display()
        ));
    }
    f.seek(SeekFrom::Start(offset)).map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; expected];
    f.read_exact(&mut buf).map_err(|e| e.to_string())?;
    Ok(buf)
}

/// A tensor of the file as a [`Value`]: float types become tensors of `dtype` on `device`,
/// integer and boolean types host integers. Every size is checked against the bytes that
/// back it before anything is allocated.
pub(crate) fn tensor_value(
    t: &TensorProto,
    dir: Option<&Path>,
    dtype: DType,
    device: &Device,
) -> Result<Value, String> {
    let dims: Vec<usize> = t
        .dims
        .iter()
        .map(|&d| usize::try_from(d).map_err(|_| format!("negative dimension {d}")))
        .collect::<Result<_, _>>()?;
    let n = element_count(&dims)
        .filter(|&n| n <= MAX_ELEMENTS)
        .ok_or_else(|| format!("shape {dims:?} is too large"))?;
    let size =
        element_size(t.data_type).ok_or_else(|| format!("{} tensors are not supported", type_name(t.data_type)))?;
    let bytes_needed = n.checked_mul(size).ok_or("shape overflows")?;
    let external;
    let raw: Option<&[u8]> = if t.data_location == 1 {
        external = external_bytes(t, dir, bytes_needed)?;
        Some(&external)
    } else if !t.raw_data.is_empty() || n == 0 {
        if t.raw_data.len() != bytes_needed {
            return Err(format!(
                "holds {} bytes for shape {dims:?}, which needs {bytes_needed}",
                t.raw_data.len()
            ));
        }
        Some(&t.raw_data)
    } else {
        None
    };
    let count_err = |have: usize| format!("holds {have} values for shape {dims:?} ({n} values)");
    match t.data_type {
        dt::FLOAT | dt::DOUBLE | dt::FLOAT16 | dt::BFLOAT16 => {
            let tensor = match raw {
                Some(b) => {
                    let src = match t.data_type {
                        dt::FLOAT => DType::F32,
                        dt::DOUBLE => DType::F64,
                        dt::FLOAT16 => DType::F16,
                        _ => DType::BF16,
                    };
                    Tensor::from_raw_buffer(b, src, &dims, &Device::Cpu).map_err(|e| e.to_string())?
                }
                None => match t.data_type {
                    dt::FLOAT => {
                        if t.float_data.len() != n {
                            return Err(count_err(t.float_data.len()));
                        }
                        Tensor::from_slice(&t.float_data, dims.as_slice(), &Device::Cpu).map_err(|e| e.to_string())?
                    }
                    dt::DOUBLE => {
                        if t.double_data.len() != n {
                            return Err(count_err(t.double_data.len()));
                        }
                        Tensor::from_slice(&t.double_data, dims.as_slice(), &Device::Cpu).map_err(|e| e.to_string())?
                    }
                    _ => {
                        // Half-precision values travel as the low 16 bits of int32_data.
                        if t.int32_data.len() != n {
                            return Err(count_err(t.int32_data.len()));
                        }
                        let b: Vec<u8> = t.int32_data.iter().flat_map(|&v| (v as u16).to_le_bytes()).collect();
                        let src = if t.data_type == dt::FLOAT16 {
                            DType::F16
                        } else {
                            DType::BF16
                        };
                        Tensor::from_raw_buffer(&b, src, &dims, &Device::Cpu).map_err(|e| e.to_string())?
                    }
                },
            };
            let tensor = tensor
                .to_dtype(dtype)
                .and_then(|t| t.to_device(device))
                .map_err(|e| e.to_string())?;
            Ok(Value::Float(tensor))
        }
        ty => {
            let data: Vec<i64> = match raw {
                Some(b) => match ty {
                    dt::INT64 => b
                        .chunks_exact(8)
                        .map(|c| i64::from_le_bytes(c.try_into().expect("8")))
                        .collect(),
                    dt::UINT64 => b
                        .chunks_exact(8)
                        .map(|c| u64::from_le_bytes(c.try_into().expect("8")).min(i64::MAX as u64) as i64)
                        .collect(),
                    dt::INT32 => b
                        .chunks_exact(4)
                        .map(|c| i32::from_le_bytes(c.try_into().expect("4")) as i64)
                        .collect(),
                    dt::INT8 => b.iter().map(|&v| v as i8 as i64).collect(),
                    _ => b.iter().map(|&v| v as i64).collect(),
                },
                None => match ty {
                    dt::INT64 => {
                        if t.int64_data.len() != n {
                            return Err(count_err(t.int64_data.len()));
                        }
                        t.int64_data.clone()
                    }
                    dt::UINT64 => {
                        if t.uint64_data.len() != n {
                            return Err(count_err(t.uint64_data.len()));
                        }
                        t.uint64_data.iter().map(|&v| v.min(i64::MAX as u64) as i64).collect()
                    }
                    _ => {
                        if t.int32_data.len() != n {
                            return Err(count_err(t.int32_data.len()));
                        }
                        t.int32_data.iter().map(|&v| v as i64).collect()
                    }
                },
            };
            Ok(Value::Int(Ints::new(dims, data)))
        }
    }
}
