//! Random, differentiable image transforms applied at each step of an inversion (jitter,
//! scale, rotation): an image that still matches the target after small shifts and turns has
//! fewer high-frequency artefacts (Mordvintsev et al. 2015; Olah et al. 2017).

use candle_core::{Tensor, D};

use crate::Result;

/// Shifts `x` cyclically by `dy` rows and `dx` columns (`torch.roll` on the last two dims).
///
/// # Shapes
/// - `x`: `(N, C, H, W)`; returns the same shape.
pub fn roll(x: &Tensor, dy: i64, dx: i64) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    let x = roll_dim(x, 2, h, dy)?;
    roll_dim(&x, 3, w, dx)
}

fn roll_dim(x: &Tensor, dim: usize, len: usize, shift: i64) -> Result<Tensor> {
    let s = shift.rem_euclid(len as i64) as usize;
    if s == 0 {
        return Ok(x.clone());
    }
    Ok(Tensor::cat(
        &[x.narrow(dim, len - s, s)?, x.narrow(dim, 0, len - s)?],
        dim,
    )?)
}

/// Scales `x` by `scale` and rotates it by `angle` radians about its centre, with bilinear
/// sampling and the border pixels repeated outside the image. Differentiable: a gather of the
/// four neighbours of every output pixel (`index_select`, whose gradient is an index-add).
///
/// # Shapes
/// - `x`: `(N, C, H, W)`; returns the same shape.
pub fn scale_rotate(x: &Tensor, scale: f64, angle: f64) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    let (cy, cx) = ((h as f64 - 1.0) / 2.0, (w as f64 - 1.0) / 2.0);
    let (sin, cos) = angle.sin_cos();
    let hw = h * w;
    let mut index = vec![0u32; 4 * hw];
    let mut weight = vec![0f32; 4 * hw];
    for i in 0..h {
        for j in 0..w {
            // Inverse map: the source of output pixel (i, j).
            let (u, v) = (i as f64 - cy, j as f64 - cx);
            let sy = (cos * u + sin * v) / scale + cy;
            let sx = (-sin * u + cos * v) / scale + cx;
            let sy = sy.clamp(0.0, (h - 1) as f64);
            let sx = sx.clamp(0.0, (w - 1) as f64);
            let (y0, x0) = (sy.floor() as usize, sx.floor() as usize);
            let (y1, x1) = ((y0 + 1).min(h - 1), (x0 + 1).min(w - 1));
            let (fy, fx) = (sy - y0 as f64, sx - x0 as f64);
            let p = i * w + j;
            let corners = [
                (y0 * w + x0, (1.0 - fy) * (1.0 - fx)),
                (y0 * w + x1, (1.0 - fy) * fx),
                (y1 * w + x0, fy * (1.0 - fx)),
                (y1 * w + x1, fy * fx),
            ];
            for (k, (src, wt)) in corners.into_iter().enumerate() {
                index[k * hw + p] = src as u32;
                weight[k * hw + p] = wt as f32;
            }
        }
    }
    let dev = x.device();
    let index = Tensor::from_vec(index, 4 * hw, dev)?;
    let weight = Tensor::from_vec(weight, (1, 4, hw), dev)?.to_dtype(x.dtype())?;
    let flat = x
        .reshape((n * c, hw))?
        .index_select(&index, 1)?
        .reshape((n * c, 4, hw))?;
    Ok(flat.broadcast_mul(&weight)?.sum(D::Minus2)?.reshape((n, c, h, w))?)
}
