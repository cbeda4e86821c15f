//! The image priors of Mahendran & Vedaldi: the α-norm and the total variation, both
//! normalised by the natural-image norm so that one set of weights suits every image size.

use candle_core::{Tensor, D};

use crate::{Error, Result};

/// The root-mean-square per-pixel colour norm `B = sqrt(mean_ij Σ_c x_cij²)` of `x`: the
/// natural-image norm that the regularisers and the random start are scaled by.
///
/// # Shapes
/// - `x`: `(N, C, H, W)`; the mean runs over the whole batch.
pub fn natural_norm(x: &Tensor) -> Result<f64> {
    let (n, _, h, w) = x.dims4()?;
    let s = x
        .sqr()?
        .sum_all()?
        .to_dtype(candle_core::DType::F64)?
        .to_scalar::<f64>()?;
    Ok((s / (n * h * w) as f64).sqrt())
}

/// The α-norm prior per image, `Σ_cij |x_cij|^α / (H·W·B^α)`: about 1 for an image whose
/// pixels have norm `B`, and steep above it for large α (α = 6 in the paper).
///
/// # Shapes
/// - `x`: `(N, C, H, W)`.
/// - returns: `(N,)`.
pub fn alpha_norm(x: &Tensor, alpha: f64, norm: f64) -> Result<Tensor> {
    if alpha < 2.0 {
        return Err(Error::Invalid(format!(
            "α-norm with α = {alpha}: use α ≥ 2 (the gradient of |x|^α is singular at 0 below 2)"
        )));
    }
    let (_, _, h, w) = x.dims4()?;
    let scale = 1.0 / ((h * w) as f64 * norm.powf(alpha));
    let s = x.sqr()?;
    // Integer powers of x² (α = 4, 6, 8) as products: cheaper than powf, same derivative.
    let p = match alpha {
        2.0 => s,
        4.0 => s.sqr()?,
        6.0 => (s.sqr()? * &s)?,
        8.0 => s.sqr()?.sqr()?,
        _ => s.powf(alpha / 2.0)?,
    };
    Ok((p.flatten_from(1)?.sum(D::Minus1)? * scale)?)
}

/// The total-variation prior per image,
/// `Σ_cij ((x_{c,i,j+1} − x_cij)² + (x_{c,i+1,j} − x_cij)²)^{β/2} / (H·W·V^β)` over the pixels
/// that have both neighbours, with `V = B / 6.5` (the paper's typical variation of a natural
/// image of norm `B`). β = 2 (the default) is smooth everywhere; for 1 ≤ β < 2 a small offset
/// (1e-8·V²) keeps the gradient finite at flat regions.
///
/// # Shapes
/// - `x`: `(N, C, H, W)` with `H, W ≥ 2`.
/// - returns: `(N,)`.
pub fn total_variation(x: &Tensor, beta: f64, norm: f64) -> Result<Tensor> {
    if beta < 1.0 {
        return Err(Error::Invalid(format!("total variation with β = {beta}: use β ≥ 1")));
    }
    let (_, _, h, w) = x.dims4()?;
    if h < 2 || w < 2 {
        return Err(Error::Invalid(format!(
            "total variation needs an image of at least 2×2, got {h}×{w}"
        )));
    }
    let v = norm / 6.5;
    let base = x.narrow(2, 0, h - 1)?.narrow(3, 0, w - 1)?;
    let dx = (x.narrow(2, 0, h - 1)?.narrow(3, 1, w - 1)? - &base)?;
    let dy = (x.narrow(2, 1, h - 1)?.narrow(3, 0, w - 1)? - &base)?;
    let d = (dx.sqr()? + dy.sqr()?)?;
    let p = if beta == 2.0 {
        d
    } else {
        (d + 1e-8 * v * v)?.powf(beta / 2.0)?
    };
    let scale = 1.0 / ((h * w) as f64 * v.powf(beta));
    Ok((p.flatten_from(1)?.sum(D::Minus1)? * scale)?)
}

/// How much an image's structure sits where a channel fires: the Pearson correlation between
/// the image's local energy (`Σ_c |x_c − mean(x_c)|`, blurred with σ = `stride` / 2, the
/// site's stride) and the channel's activation upsampled (bilinear) to the image's size.
/// A render of a channel that is uniform texture everywhere scores near 0; one that draws
/// only where the channel fires scores high.
///
/// # Shapes
/// - `image`: `(3, H, W)`; `activation`: `(h, w)`.
pub fn energy_correlation(image: &Tensor, activation: &Tensor, stride: usize) -> Result<f64> {
    let (_, h, w) = image.dims3()?;
    let centred = image.broadcast_sub(&image.flatten_from(1)?.mean_keepdim(D::Minus1)?.unsqueeze(2)?)?;
    let energy = centred.abs()?.sum_keepdim(0)?.unsqueeze(0)?;
    let energy = extremal_ops::gaussian_blur(&energy, stride.max(1) as f64 / 2.0, extremal_ops::Border::Replicate)?;
    let act = extremal_ops::resize_bilinear(&activation.unsqueeze(0)?.unsqueeze(0)?.to_dtype(image.dtype())?, h, w)?;
    let a: Vec<f64> = energy.flatten_all()?.to_dtype(candle_core::DType::F64)?.to_vec1()?;
    let b: Vec<f64> = act.flatten_all()?.to_dtype(candle_core::DType::F64)?.to_vec1()?;
    let n = a.len() as f64;
    let (ma, mb) = (a.iter().sum::<f64>() / n, b.iter().sum::<f64>() / n);
    let (mut sab, mut saa, mut sbb) = (0.0, 0.0, 0.0);
    for (x, y) in a.iter().zip(&b) {
        sab += (x - ma) * (y - mb);
        saa += (x - ma) * (x - ma);
        sbb += (y - mb) * (y - mb);
    }
    if saa == 0.0 || sbb == 0.0 {
        return Ok(0.0);
    }
    Ok(sab / (saa * sbb).sqrt())
}
