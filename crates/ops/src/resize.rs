use candle_core::{DType, Device, Tensor};

use crate::{shape_err, Result};

/// The `out × inp` matrix of PyTorch's 1-D linear interpolation with `align_corners=False`
/// (no antialiasing): row `i` samples the source at `(i + 0.5)·inp/out − 0.5`, clamped at 0.
///
/// # Shapes
/// - returns: `(out, inp)`.
pub fn interpolation_matrix(inp: usize, out: usize, dtype: DType, device: &Device) -> Result<Tensor> {
    if inp == 0 || out == 0 {
        return shape_err(
            "interpolation_matrix",
            format!("sizes must be positive, got {inp} -> {out}"),
        );
    }
    // In f32, as PyTorch computes the source index and weights on the CPU (for parity: at
    // source positions in the hundreds, f32 rounding moves the weights by ~1e-5).
    let scale = inp as f32 / out as f32;
    let mut m = vec![0f32; out * inp];
    for i in 0..out {
        let src = (scale * (i as f32 + 0.5) - 0.5).max(0.0);
        let i0 = (src as usize).min(inp - 1);
        let i1 = (i0 + 1).min(inp - 1);
        let lambda = (src - i0 as f32).clamp(0.0, 1.0);
        m[i * inp + i0] += 1.0 - lambda;
        m[i * inp + i1] += lambda;
    }
    Ok(Tensor::from_vec(m, (out, inp), device)?.to_dtype(dtype)?)
}

/// Bilinear resize as PyTorch's `F.interpolate(mode="bilinear", align_corners=False)` computes
/// it, written as two matmuls so that it is differentiable (candle's has no backward).
///
/// # Shapes
/// - `x`: `(N, C, H, W)`.
/// - returns: `(N, C, out_h, out_w)`.
pub fn resize_bilinear(x: &Tensor, out_h: usize, out_w: usize) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    let (dtype, device) = (x.dtype(), x.device());
    let x = if w == out_w {
        x.clone()
    } else {
        let mw = interpolation_matrix(w, out_w, dtype, device)?.t()?;
        x.broadcast_matmul(&mw)?
    };
    let x = if h == out_h {
        x
    } else {
        let mh = interpolation_matrix(h, out_h, dtype, device)?;
        mh.broadcast_matmul(&x)?
    };
    Ok(x)
}
