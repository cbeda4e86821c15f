//! Saliency maps as colours, over the photograph or alone.

use candle_core::{DType, Tensor};
use image::{Rgb, RgbImage};

use crate::{diverging, Colormap, Error, Result};

/// Where a map's values sit on the colour scale.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ValueRange {
    /// A known range, shown as is (masks: `Fixed(0.0, 1.0)`).
    Fixed(f32, f32),
    /// From the map's minimum to its `clip_percentile`-th percentile (maps of one sign).
    Data,
    /// Signed values, symmetric around zero up to the `clip_percentile`-th percentile of
    /// |value|, in the diverging colours ([`diverging`]); zero shows the photograph.
    Signed,
}

/// How a heat map is drawn.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HeatStyle {
    /// The colour map of unsigned maps (signed ones use [`diverging`]).
    pub colormap: Colormap,
    /// The colour's weight over the photograph, in [0, 1] (for signed maps, at the clip
    /// limit; it falls to 0 at zero).
    pub alpha: f32,
    /// Values beyond this percentile (of the values, or of |value| for signed maps) are shown
    /// at the end of the scale, so that a few outliers do not wash the map out (Captum's
    /// `outlier_perc`); 100 keeps the whole range.
    pub clip_percentile: f32,
    /// Where the values sit on the scale.
    pub range: ValueRange,
}

impl Default for HeatStyle {
    /// Viridis at alpha 0.5, clipped at the 99th percentile, the map's own range.
    fn default() -> Self {
        HeatStyle {
            colormap: Colormap::Viridis,
            alpha: 0.5,
            clip_percentile: 99.0,
            range: ValueRange::Data,
        }
    }
}

/// The scale a [`HeatStyle`] gives one map: where its colours start and end.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum HeatScale {
    /// `lo` is the first colour of the map, `hi` the last.
    Sequential {
        /// The value shown in the first colour.
        lo: f32,
        /// The value shown in the last colour.
        hi: f32,
    },
    /// `-limit` is full blue, `limit` full red.
    Diverging {
        /// The clip limit.
        limit: f32,
    },
}

/// The `p`-th percentile (nearest rank, `p ∈ [0, 100]`) of the finite values of `values`
/// (0 when there are none).
pub fn percentile(values: &[f32], p: f32) -> f32 {
    let mut v: Vec<f32> = values.iter().copied().filter(|v| v.is_finite()).collect();
    if v.is_empty() {
        return 0.0;
    }
    let rank = ((p.clamp(0.0, 100.0) / 100.0 * v.len() as f32).ceil() as usize).clamp(1, v.len());
    let (_, at, _) = v.select_nth_unstable_by(rank - 1, f32::total_cmp);
    *at
}

impl HeatStyle {
    /// Checks the style's numbers.
    pub fn check(&self) -> Result<()> {
        if !(0.0..=1.0).contains(&self.alpha) {
            return Err(Error::Invalid(format!(
                "alpha {} is outside [0, 1]; 0 shows only the photograph, 1 only the map",
                self.alpha
            )));
        }
        if !(self.clip_percentile > 0.0 && self.clip_percentile <= 100.0) {
            return Err(Error::Invalid(format!(
                "clip percentile {} is outside (0, 100]; 100 keeps the whole range",
                self.clip_percentile
            )));
        }
        Ok(())
    }

    /// The scale this style gives `values`.
    pub fn scale(&self, values: &[f32]) -> HeatScale {
        let finite = || values.iter().copied().filter(|v| v.is_finite());
        match self.range {
            ValueRange::Fixed(lo, hi) => HeatScale::Sequential { lo, hi },
            ValueRange::Data => {
                let lo = finite().fold(f32::INFINITY, f32::min);
                let hi = if self.clip_percentile >= 100.0 {
                    finite().fold(f32::NEG_INFINITY, f32::max)
                } else {
                    percentile(values, self.clip_percentile)
                };
                if lo.is_finite() {
                    HeatScale::Sequential { lo, hi }
                } else {
                    HeatScale::Sequential { lo: 0.0, hi: 1.0 }
                }
            }
            ValueRange::Signed => {
                let abs: Vec<f32> = finite().map(f32::abs).collect();
                HeatScale::Diverging {
                    limit: percentile(&abs, self.clip_percentile),
                }
            }
        }
    }

    /// The colour of `v` on `scale` and its weight over the photograph.
    fn paint(&self, scale: HeatScale, v: f32) -> ([u8; 3], f32) {
        match scale {
            HeatScale::Sequential { lo, hi } => {
                let t = if hi > lo { (v - lo) / (hi - lo) } else { 0.5 };
                (self.colormap.colour(t), self.alpha)
            }
            HeatScale::Diverging { limit } => {
                let s = if limit > 0.0 { (v / limit).clamp(-1.0, 1.0) } else { 0.0 };
                let s = if s.is_nan() { 0.0 } else { s };
                (diverging(s), self.alpha * s.abs())
            }
        }
    }
}

/// `heat` as a `(h, w)` f32 map: `(h, w)`, `(1, h, w)` or `(1, 1, h, w)`.
fn plane(heat: &Tensor) -> Result<Tensor> {
    let heat = match heat.rank() {
        2 => heat.clone(),
        3 => heat.squeeze(0)?,
        4 => heat.squeeze(0)?.squeeze(0)?,
        _ => {
            return Err(Error::Invalid(format!(
                "a heat map is (h, w), (1, h, w) or (1, 1, h, w); got {:?}",
                heat.dims()
            )))
        }
    };
    let (h, w) = heat.dims2()?;
    if h == 0 || w == 0 {
        return Err(Error::Invalid(format!("the heat map is empty ({h}x{w})")));
    }
    Ok(heat.to_dtype(DType::F32)?)
}

/// `heat` in its colours alone (no photograph), at its own resolution.
///
/// # Shapes
/// - `heat`: `(h, w)`, `(1, h, w)` or `(1, 1, h, w)`.
pub fn heat_image(heat: &Tensor, style: &HeatStyle) -> Result<RgbImage> {
    style.check()?;
    let heat = plane(heat)?;
    let (h, w) = heat.dims2()?;
    let values = heat.flatten_all()?.to_vec1::<f32>()?;
    let scale = style.scale(&values);
    Ok(RgbImage::from_fn(w as u32, h as u32, |x, y| {
        Rgb(style.paint(scale, values[y as usize * w + x as usize]).0)
    }))
}

/// The photograph with `heat` blended over it, at the photograph's resolution: a map at the
/// model's input resolution (or any other) is resized to the photograph (bilinear), which is
/// the inverse of the resize that made the input, so the picture keeps the photograph's
/// size and aspect. The scale is taken from the map before it is resized.
///
/// # Shapes
/// - `image`: `(3, H, W)` in [0, 1].
/// - `heat`: `(h, w)`, `(1, h, w)` or `(1, 1, h, w)`.
/// - returns: a `W × H` picture.
pub fn overlay(image: &Tensor, heat: &Tensor, style: &HeatStyle) -> Result<RgbImage> {
    style.check()?;
    let (c, h, w) = image.dims3()?;
    if c != 3 || h == 0 || w == 0 {
        return Err(Error::Invalid(format!(
            "the photograph is (3, H, W); got {:?}",
            image.dims()
        )));
    }
    let heat = plane(heat)?;
    let scale = style.scale(&heat.flatten_all()?.to_vec1::<f32>()?);
    let heat = if heat.dims2()? == (h, w) {
        heat
    } else {
        extremal_ops::resize_bilinear(&heat.unsqueeze(0)?.unsqueeze(0)?, h, w)?
            .squeeze(0)?
            .squeeze(0)?
    };
    let heat = heat.flatten_all()?.to_vec1::<f32>()?;
    let rgb = image
        .to_dtype(DType::F32)?
        .clamp(0.0, 1.0)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let plane = h * w;
    Ok(RgbImage::from_fn(w as u32, h as u32, |x, y| {
        let i = y as usize * w + x as usize;
        let (colour, a) = style.paint(scale, heat[i]);
        Rgb(std::array::from_fn(|k| {
            ((1.0 - a) * rgb[k * plane + i] * 255.0 + a * colour[k] as f32).round() as u8
        }))
    }))
}
