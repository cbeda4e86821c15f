//! The values that flow between nodes: float tensors (on the model's device, with autograd)
//! and small integer tensors held on the host (shapes, indices, axes).

use candle_core::{DType, Device, Tensor};

/// A node input or output.
#[derive(Debug, Clone)]
pub(crate) enum Value {
    /// A floating-point tensor in the model's dtype.
    Float(Tensor),
    /// An integer (or boolean) tensor on the host.
    Int(Ints),
}

/// A host integer tensor, row-major.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Ints {
    pub dims: Vec<usize>,
    pub data: Vec<i64>,
}

impl Ints {
    pub fn new(dims: Vec<usize>, data: Vec<i64>) -> Self {
        debug_assert_eq!(dims.iter().product::<usize>(), data.len());
        Self { dims, data }
    }

    /// A 1-D tensor.
    pub fn vector(data: Vec<i64>) -> Self {
        Self {
            dims: vec![data.len()],
            data,
        }
    }

    /// A 0-D tensor.
    pub fn scalar(v: i64) -> Self {
        Self {
            dims: vec![],
            data: vec![v],
        }
    }

    /// As a float tensor of `dtype` on `device`.
    pub fn to_tensor(&self, dtype: DType, device: &Device) -> candle_core::Result<Tensor> {
        let data: Vec<f64> = self.data.iter().map(|&v| v as f64).collect();
        Tensor::from_vec(data, self.dims.clone(), device)?.to_dtype(dtype)
    }

    /// As an i64 tensor (to travel in a [`extremal_hook::Prefix`]).
    pub fn to_i64_tensor(&self, device: &Device) -> candle_core::Result<Tensor> {
        Tensor::from_vec(self.data.clone(), self.dims.clone(), device)
    }

    /// From an i64 tensor.
    pub fn from_i64_tensor(t: &Tensor) -> candle_core::Result<Self> {
        Ok(Self {
            dims: t.dims().to_vec(),
            data: t.flatten_all()?.to_vec1::<i64>()?,
        })
    }
}

impl Value {
    pub fn dims(&self) -> Vec<usize> {
        match self {
            Value::Float(t) => t.dims().to_vec(),
            Value::Int(i) => i.dims.clone(),
        }
    }
}

/// The broadcast shape of two shapes (numpy's rule), or `None`.
pub(crate) fn broadcast_shape(a: &[usize], b: &[usize]) -> Option<Vec<usize>> {
    let n = a.len().max(b.len());
    let mut out = vec![0; n];
    for i in 0..n {
        let da = if i + a.len() >= n { a[i + a.len() - n] } else { 1 };
        let db = if i + b.len() >= n { b[i + b.len() - n] } else { 1 };
        out[i] = match (da, db) {
            (x, y) if x == y => x,
            (1, y) => y,
            (x, 1) => x,
            _ => return None,
        };
    }
    Some(out)
}

/// The length of a host integer tensor of `dims`, if it is at most 2^24 (shape tables are
/// tiny; a crafted broadcast is refused instead of allocated).
fn host_len(dims: &[usize]) -> Option<usize> {
    element_count(dims).filter(|&n| n <= 1 << 24)
}

/// The number of values of a tensor of `dims`, or `None` if it overflows.
pub(crate) fn element_count(dims: &[usize]) -> Option<usize> {
    dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d))
}

/// The flat index into `shape` (right-aligned, broadcast) of the output position `idx` of
/// `out`.
fn broadcast_index(out: &[usize], shape: &[usize], mut flat: usize) -> usize {
    let mut idx = 0;
    let mut stride = 1;
    let off = out.len() - shape.len();
    for d in (0..out.len()).rev() {
        let pos = flat % out[d];
        flat /= out[d];
        if d >= off {
            let sd = shape[d - off];
            if sd != 1 {
                idx += pos * stride;
            }
            stride *= sd;
        }
    }
    idx
}

/// An element-wise binary operation on host integers, with broadcasting.
pub(crate) fn ints_binary(a: &Ints, b: &Ints, f: impl Fn(i64, i64) -> Option<i64>) -> Option<Ints> {
    let out = broadcast_shape(&a.dims, &b.dims)?;
    let n = host_len(&out)?;
    let mut data = Vec::with_capacity(n);
    for i in 0..n {
        let x = a.data[broadcast_index(&out, &a.dims, i)];
        let y = b.data[broadcast_index(&out, &b.dims, i)];
        data.push(f(x, y)?);
    }
    Some(Ints::new(out, data))
}

/// `Where(cond, a, b)` on host integers, with broadcasting.
pub(crate) fn ints_where(c: &Ints, a: &Ints, b: &Ints) -> Option<Ints> {
    let out = broadcast_shape(&broadcast_shape(&c.dims, &a.dims)?, &b.dims)?;
    let n = host_len(&out)?;
    let data = (0..n)
        .map(|i| {
            if c.data[broadcast_index(&out, &c.dims, i)] != 0 {
                a.data[broadcast_index(&out, &a.dims, i)]
            } else {
                b.data[broadcast_index(&out, &b.dims, i)]
            }
        })
        .collect();
    Some(Ints::new(out, data))
}
