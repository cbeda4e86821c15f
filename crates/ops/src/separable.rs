//! Separable linear filters written as two matrix products, `A_h · x · A_wᵀ`: average pooling
//! and Gaussian blur. The matrices carry the padding rule, so any input size, stride and
//! border mode works, and the backward is candle's matmul backward (exact, fast for the image
//! sizes attribution works at).

use candle_core::{DType, Device, Tensor};

use crate::{shape_err, Pool2d, Result};

/// Applies `rows (out_h × H)` and `cols (out_w × W)` to each `(H, W)` plane of `x`.
fn apply(x: &Tensor, rows: Option<Tensor>, cols: Option<Tensor>) -> Result<Tensor> {
    let x = match cols {
        Some(c) => x.broadcast_matmul(&c.t()?)?,
        None => x.clone(),
    };
    Ok(match rows {
        Some(r) => r.broadcast_matmul(&x)?,
        None => x,
    })
}

fn matrix(m: Vec<f64>, out: usize, inp: usize, dtype: DType, device: &Device) -> Result<Tensor> {
    Ok(Tensor::from_vec(m, (out, inp), device)?.to_dtype(dtype)?)
}

/// The `out × inp` averaging matrix of one axis of PyTorch's `avg_pool2d`.
fn pool_matrix(inp: usize, out: usize, (k, s, p): (usize, usize, usize), count_include_pad: bool) -> Vec<f64> {
    let mut m = vec![0f64; out * inp];
    for i in 0..out {
        let start = (i * s) as isize - p as isize;
        // PyTorch: the window is clipped to the padded input for the divisor…
        let end = (start + k as isize).min((inp + p) as isize);
        let size = end - start;
        // …and to the input itself for the sum.
        let (lo, hi) = (start.max(0) as usize, end.min(inp as isize) as usize);
        let div = if count_include_pad { size } else { (hi - lo) as isize };
        for j in lo..hi {
            m[i * inp + j] = 1.0 / div as f64;
        }
    }
    m
}

/// Average pooling as PyTorch's `F.avg_pool2d(x, kernel, stride, padding, ceil_mode,
/// count_include_pad)` computes it, for any input size (candle's backward needs
/// kernel == stride and is wrong for sizes the stride does not divide).
///
/// # Shapes
/// - `x`: `(N, C, H, W)`.
/// - returns: `(N, C, H', W')`, the sizes of [`max_pool2d`](crate::max_pool2d) with the same
///   `pool`.
pub fn avg_pool2d(x: &Tensor, pool: &Pool2d, count_include_pad: bool) -> Result<Tensor> {
    let y = avg_pool2d_plain(x, pool, count_include_pad)?;
    if crate::excitation_backprop() {
        return crate::excite(x, &y, |q| avg_pool2d_plain(q, pool, count_include_pad));
    }
    Ok(y)
}

fn avg_pool2d_plain(x: &Tensor, pool: &Pool2d, count_include_pad: bool) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    let Some((oh, ow)) = pool.output_size(h, w) else {
        return shape_err(
            "avg_pool2d",
            format!("a {:?} window does not fit a {h}x{w} input", pool.kernel),
        );
    };
    let (dtype, dev) = (x.dtype(), x.device());
    let rows = pool_matrix(h, oh, (pool.kernel.0, pool.stride.0, pool.padding.0), count_include_pad);
    let cols = pool_matrix(w, ow, (pool.kernel.1, pool.stride.1, pool.padding.1), count_include_pad);
    apply(
        x,
        Some(matrix(rows, oh, h, dtype, dev)?),
        Some(matrix(cols, ow, w, dtype, dev)?),
    )
}

/// How a filter reads outside the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Border {
    /// Zeros outside (PyTorch's `padding_mode="constant"` with 0).
    #[default]
    Zero,
    /// Mirror without repeating the edge pixel (`"reflect"`: … 2 1 | 0 1 2 … ).
    Reflect,
    /// Repeat the edge pixel (`"replicate"`).
    Replicate,
}

/// The normalised 1-D Gaussian of TorchRay's `imsmooth`: `2⌈4σ⌉ + 1` taps
/// `exp(−(i / (√2·σ + ε))²)` with ε = f32's epsilon, computed in f32 as TorchRay does.
pub fn gaussian_kernel(sigma: f64) -> Vec<f64> {
    let width = (4.0 * sigma).ceil() as i32;
    let denom = std::f32::consts::SQRT_2 * sigma as f32 + f32::EPSILON;
    let taps: Vec<f32> = (-width..=width)
        .map(|i| {
            let t = i as f32 / denom;
            (-t * t).exp()
        })
        .collect();
    let sum: f32 = taps.iter().sum();
    taps.into_iter().map(|t| (t / sum) as f64).collect()
}

/// The source index of position `i` (possibly outside `0..n`) under `border`, or `None` for
/// a zero.
fn source(i: isize, n: usize, border: Border) -> Option<usize> {
    let n = n as isize;
    if (0..n).contains(&i) {
        return Some(i as usize);
    }
    match border {
        Border::Zero => None,
        Border::Replicate => Some(i.clamp(0, n - 1) as usize),
        Border::Reflect => {
            if n == 1 {
                return Some(0);
            }
            // Reflection has period 2(n − 1).
            let period = 2 * (n - 1);
            let j = i.rem_euclid(period);
            Some(if j < n { j } else { period - j } as usize)
        }
    }
}

/// The `n × n` matrix of a 1-D filter `taps` (centred) with `border`.
fn filter_matrix(n: usize, taps: &[f64], border: Border) -> Vec<f64> {
    let r = (taps.len() / 2) as isize;
    let mut m = vec![0f64; n * n];
    for i in 0..n {
        for (t, &v) in taps.iter().enumerate() {
            if let Some(j) = source(i as isize + t as isize - r, n, border) {
                m[i * n + j] += v;
            }
        }
    }
    m
}

/// Separable Gaussian blur with standard deviation `sigma` pixels and TorchRay's kernel
/// ([`gaussian_kernel`], `2⌈4σ⌉ + 1` taps), reading outside the image by `border`.
/// `sigma = 0` returns the input.
///
/// # Shapes
/// - `x`: `(N, C, H, W)`; the output has the same shape.
pub fn gaussian_blur(x: &Tensor, sigma: f64, border: Border) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    if !(sigma >= 0.0 && sigma.is_finite()) {
        return shape_err("gaussian_blur", format!("sigma must be finite and ≥ 0, got {sigma}"));
    }
    if sigma == 0.0 {
        return Ok(x.clone());
    }
    let taps = gaussian_kernel(sigma);
    let (dtype, dev) = (x.dtype(), x.device());
    apply(
        x,
        Some(matrix(filter_matrix(h, &taps, border), h, h, dtype, dev)?),
        Some(matrix(filter_matrix(w, &taps, border), w, w, dtype, dev)?),
    )
}
