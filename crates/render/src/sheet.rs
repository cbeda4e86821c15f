//! Text in an 8×8 bitmap font, labelled sheets of pictures, tensors as pictures.

use candle_core::{DType, Tensor};
use image::{Rgb, RgbImage};

use crate::Result;

/// Sets one pixel when it lies inside the picture.
pub(crate) fn put(img: &mut RgbImage, x: i64, y: i64, c: [u8; 3]) {
    if x >= 0 && y >= 0 && x < img.width() as i64 && y < img.height() as i64 {
        img.put_pixel(x as u32, y as u32, Rgb(c));
    }
}

/// An RGB image `(3, H, W)` in [0, 1] (clamped) as a picture.
///
/// # Shapes
/// - `rgb`: `(3, H, W)`.
pub fn rgb_image(rgb: &Tensor) -> Result<RgbImage> {
    let (_, h, w) = rgb.dims3()?;
    let v = rgb.to_dtype(DType::F32)?.clamp(0.0, 1.0)?.to_vec3::<f32>()?;
    Ok(RgbImage::from_fn(w as u32, h as u32, |x, y| {
        Rgb([0, 1, 2].map(|c| (v[c][y as usize][x as usize] * 255.0).round() as u8))
    }))
}

/// Writes `text` into `img` with its top left corner at `(x, y)`, in the 8×8 public-domain
/// bitmap font, each font pixel drawn as a `scale`×`scale` square (characters outside the
/// font are blank).
pub fn text(img: &mut RgbImage, x: i64, y: i64, text: &str, scale: i64, colour: [u8; 3]) {
    use font8x8::UnicodeFonts;
    for (i, ch) in text.chars().enumerate() {
        let glyph = font8x8::BASIC_FONTS.get(ch).unwrap_or([0; 8]);
        for (row, bits) in glyph.iter().enumerate() {
            for col in 0..8 {
                if bits & (1 << col) != 0 {
                    for dy in 0..scale {
                        for dx in 0..scale {
                            let px = x + (i as i64 * 8 + col) * scale + dx;
                            put(img, px, y + row as i64 * scale + dy, colour);
                        }
                    }
                }
            }
        }
    }
}

/// `img` shrunk (keeping its aspect, triangle filter) so that its longer side is at most
/// `max_side`; a picture that fits already is returned as is.
pub fn fit(img: &RgbImage, max_side: u32) -> RgbImage {
    let (w, h) = img.dimensions();
    if w.max(h) <= max_side || max_side == 0 {
        return img.clone();
    }
    let s = max_side as f64 / w.max(h) as f64;
    let (nw, nh) = (
        ((w as f64 * s).round() as u32).max(1),
        ((h as f64 * s).round() as u32).max(1),
    );
    image::imageops::resize(img, nw, nh, image::imageops::FilterType::Triangle)
}

/// A sheet of labelled pictures, `columns` per row, each with its label in a band above it.
pub fn sheet(tiles: &[(RgbImage, String)], columns: usize) -> RgbImage {
    let (tw, th) = tiles
        .iter()
        .fold((0, 0), |(w, h), (t, _)| (w.max(t.width()), h.max(t.height())));
    let (band, gap) = (22u32, 4u32);
    let columns = columns.clamp(1, tiles.len().max(1)) as u32;
    let rows = (tiles.len() as u32).div_ceil(columns);
    let mut img = RgbImage::from_pixel(
        columns * (tw + gap) + gap,
        rows * (th + band + gap) + gap,
        Rgb([255, 255, 255]),
    );
    for (i, (tile, label)) in tiles.iter().enumerate() {
        let (c, r) = (i as u32 % columns, i as u32 / columns);
        let (x0, y0) = (gap + c * (tw + gap), gap + r * (th + band + gap));
        let scale = if label.chars().count() as u32 * 16 <= tw { 2 } else { 1 };
        text(
            &mut img,
            x0 as i64 + 2,
            y0 as i64 + (band as i64 - 8 * scale) / 2,
            label,
            scale,
            [0, 0, 0],
        );
        image::imageops::replace(&mut img, tile, x0 as i64, (y0 + band) as i64);
    }
    img
}
