//! Random, differentiable image transforms applied at each step of an inversion (jitter,
//! scale, rotation): an image that still matches the target after small shifts and turns has
//! fewer high-frequency artefacts (Mordvintsev et al. 2015; Olah et al. 2017).

use candle_core::{Tensor, D};

use extremal_ops::random::SeededRng;

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
    let (_, _, h, w) = x.dims4()?;
    let (cy, cx) = ((h as f64 - 1.0) / 2.0, (w as f64 - 1.0) / 2.0);
    let (sin, cos) = angle.sin_cos();
    sample(x, (h, w), Border::Replicate, |i, j| {
        // Inverse map: the source of output pixel (i, j).
        let (u, v) = (i - cy, j - cx);
        ((cos * u + sin * v) / scale + cy, (-sin * u + cos * v) / scale + cx)
    })
}

/// What a sample outside the image reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Border {
    /// The nearest border pixel.
    Replicate,
    /// Zero (kornia's and `grid_sample`'s default).
    Zero,
}

/// Bilinear sampling of `x` at `source(i, j)` (row, column in `x`'s pixels) for every pixel
/// of an `out`-sized image: a gather of four neighbours (`index_select`, whose gradient is an
/// index-add) weighted per output pixel.
fn sample(x: &Tensor, out: (usize, usize), border: Border, source: impl Fn(f64, f64) -> (f64, f64)) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    let (oh, ow) = out;
    let hw = oh * ow;
    let mut index = vec![0u32; 4 * hw];
    let mut weight = vec![0f32; 4 * hw];
    for i in 0..oh {
        for j in 0..ow {
            let (sy, sx) = source(i as f64, j as f64);
            let (sy, sx) = match border {
                Border::Replicate => (sy.clamp(0.0, (h - 1) as f64), sx.clamp(0.0, (w - 1) as f64)),
                Border::Zero => (sy, sx),
            };
            let (fy0, fx0) = (sy.floor(), sx.floor());
            let (fy, fx) = (sy - fy0, sx - fx0);
            let p = i * ow + j;
            let corners = [
                (fy0, fx0, (1.0 - fy) * (1.0 - fx)),
                (fy0, fx0 + 1.0, (1.0 - fy) * fx),
                (fy0 + 1.0, fx0, fy * (1.0 - fx)),
                (fy0 + 1.0, fx0 + 1.0, fy * fx),
            ];
            for (k, (y, x, wt)) in corners.into_iter().enumerate() {
                let inside = y >= 0.0 && x >= 0.0 && y <= (h - 1) as f64 && x <= (w - 1) as f64;
                // Replicate: the clamped coordinates' neighbour past the last row or column
                // has weight 0 or is the last one itself.
                let (y, x) = (
                    y.clamp(0.0, (h - 1) as f64) as usize,
                    x.clamp(0.0, (w - 1) as f64) as usize,
                );
                index[k * hw + p] = (y * w + x) as u32;
                weight[k * hw + p] = if inside || border == Border::Replicate {
                    wt as f32
                } else {
                    0.0
                };
            }
        }
    }
    let dev = x.device();
    let index = Tensor::from_vec(index, 4 * hw, dev)?;
    let weight = Tensor::from_vec(weight, (1, 4, hw), dev)?.to_dtype(x.dtype())?;
    let flat = x
        .reshape((n * c, h * w))?
        .index_select(&index, 1)?
        .reshape((n * c, 4, hw))?;
    Ok(flat.broadcast_mul(&weight)?.sum(D::Minus2)?.reshape((n, c, oh, ow))?)
}

/// Pads `x` by `pad` pixels on every side with the constant `value`.
///
/// # Shapes
/// - `x`: `(N, C, H, W)`; returns `(N, C, H + 2·pad, W + 2·pad)`.
pub fn pad_constant(x: &Tensor, pad: usize, value: f64) -> Result<Tensor> {
    if pad == 0 {
        return Ok(x.clone());
    }
    let y = (x - value)?.pad_with_zeros(2, pad, pad)?.pad_with_zeros(3, pad, pad)?;
    Ok((y + value)?)
}

/// Moves `x` by `dy` rows down and `dx` columns right, the uncovered pixels zero (kornia's
/// `translate` by whole pixels).
///
/// # Shapes
/// - `x`: `(N, C, H, W)`; returns the same shape.
pub fn translate(x: &Tensor, dy: usize, dx: usize) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    let (dy, dx) = (dy.min(h), dx.min(w));
    let mut y = x.clone();
    if dy > 0 {
        y = y.narrow(2, 0, h - dy)?.pad_with_zeros(2, dy, 0)?;
    }
    if dx > 0 {
        y = y.narrow(3, 0, w - dx)?.pad_with_zeros(3, dx, 0)?;
    }
    Ok(y)
}

/// Resizes `x` to `ceil(scale · H) × ceil(scale · W)` (bilinear, corners aligned) and, when
/// that is smaller, pads it back to `H × W` with zeros: Lucid's `random_scale` for one scale.
///
/// # Shapes
/// - `x`: `(N, C, H, W)`; returns `(N, C, max(H, H′), max(W, W′))`.
pub fn rescale(x: &Tensor, scale: f64) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    let (sh, sw) = ((scale * h as f64).ceil() as usize, (scale * w as f64).ceil() as usize);
    if (sh, sw) == (h, w) {
        return Ok(x.clone());
    }
    let ratio = |from: usize, to: usize| {
        if to > 1 {
            (from - 1) as f64 / (to - 1) as f64
        } else {
            0.0
        }
    };
    let (ry, rx) = (ratio(h, sh.max(1)), ratio(w, sw.max(1)));
    let y = sample(x, (sh.max(1), sw.max(1)), Border::Replicate, |i, j| (i * ry, j * rx))?;
    let (py, px) = (h.saturating_sub(sh).div_ceil(2), w.saturating_sub(sw).div_ceil(2));
    // As Lucid: the same padding before and after (the result may be one pixel larger).
    Ok(y.pad_with_zeros(2, py, py)?.pad_with_zeros(3, px, px)?)
}

/// Rotates `x` by `degrees` counter-clockwise about its centre, bilinear, zero outside
/// (kornia's `rotate`).
///
/// # Shapes
/// - `x`: `(N, C, H, W)`; returns the same shape.
pub fn rotate(x: &Tensor, degrees: f64) -> Result<Tensor> {
    if degrees == 0.0 {
        return Ok(x.clone());
    }
    let (_, _, h, w) = x.dims4()?;
    let (cy, cx) = ((h as f64 - 1.0) / 2.0, (w as f64 - 1.0) / 2.0);
    let (sin, cos) = degrees.to_radians().sin_cos();
    sample(x, (h, w), Border::Zero, |i, j| {
        // Counter-clockwise on screen (rows down): the source is the output turned back.
        let (u, v) = (i - cy, j - cx);
        (cos * u + sin * v + cy, -sin * u + cos * v + cx)
    })
}

/// Transformation robustness (Olah et al. 2017; Lucid's and Lucent's `standard_transforms`):
/// each step, the image is padded with grey, moved by a random whole number of pixels,
/// rescaled and rotated by random choices, and moved again, so that what it shows survives
/// small changes of view instead of exploiting one pixel grid.
#[derive(Debug, Clone, PartialEq)]
pub struct Robustness {
    /// Padding on every side, with the value `pad_value` (12 and 0.5 in Lucid).
    pub pad: usize,
    /// The value of the padding, in the image's [0, 1] range.
    pub pad_value: f64,
    /// First move: up to `jitter − 1` pixels down and right (8).
    pub jitter: usize,
    /// The scales drawn from (1 ± 0.1 in steps of 0.02).
    pub scales: Vec<f64>,
    /// The rotations drawn from, in degrees (−10…10, and 0 five more times).
    pub angles: Vec<f64>,
    /// Second move (4).
    pub jitter_after: usize,
}

impl Default for Robustness {
    fn default() -> Self {
        Self {
            pad: 12,
            pad_value: 0.5,
            jitter: 8,
            scales: (0..11).map(|i| 1.0 + (i as f64 - 5.0) / 50.0).collect(),
            angles: (-10..=10).map(f64::from).chain([0.0; 5]).collect(),
            jitter_after: 4,
        }
    }
}

impl Robustness {
    /// No transform at all.
    pub fn none() -> Self {
        Self {
            pad: 0,
            pad_value: 0.5,
            jitter: 0,
            scales: vec![],
            angles: vec![],
            jitter_after: 0,
        }
    }

    /// One random draw of the transforms applied to the batch `x` (the same view for every
    /// image).
    ///
    /// # Shapes
    /// - `x`: `(N, C, H, W)`; returns `(N, C, H′, W′)` (a little larger or smaller).
    pub fn apply(&self, x: &Tensor, rng: &mut SeededRng) -> Result<Tensor> {
        let mut pick = |n: usize| if n > 1 { (rng.next_u64() % n as u64) as usize } else { 0 };
        let mut y = pad_constant(x, self.pad, self.pad_value)?;
        let (dy, dx) = (pick(self.jitter), pick(self.jitter));
        y = translate(&y, dy, dx)?;
        if !self.scales.is_empty() {
            y = rescale(&y, self.scales[pick(self.scales.len())])?;
        }
        if !self.angles.is_empty() {
            y = rotate(&y, self.angles[pick(self.angles.len())])?;
        }
        let (dy, dx) = (pick(self.jitter_after), pick(self.jitter_after));
        translate(&y, dy, dx)
    }
}
