//! Pictures: heat overlays and simple line plots, written atomically.

use std::path::Path;

use anyhow::{Context, Result};
use candle_core::{DType, Tensor};
use image::{Rgb, RgbImage};

use crate::outdir::OutDir;

/// The "jet" colour map at `t ∈ [0, 1]`.
fn jet(t: f32) -> [f32; 3] {
    let t = t.clamp(0.0, 1.0);
    let f = |x: f32| (1.5 - (4.0 * t - x).abs()).clamp(0.0, 1.0);
    [f(3.0), f(2.0), f(1.0)]
}

/// An RGB picture of `rgb` (`(3, H, W)` in [0, 1]) with `heat` (`(H, W)`, any range, shown
/// from its minimum to its maximum) blended over it.
pub fn heat_overlay(rgb: &Tensor, heat: &Tensor) -> Result<RgbImage> {
    let (_, h, w) = rgb.dims3()?;
    let rgb = rgb.to_dtype(DType::F32)?.clamp(0.0, 1.0)?.to_vec3::<f32>()?;
    let heat = heat.to_dtype(DType::F32)?.to_vec2::<f32>()?;
    let (lo, hi) = heat
        .iter()
        .flatten()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| (a.min(v), b.max(v)));
    let span = (hi - lo).max(1e-12);
    let mut img = RgbImage::new(w as u32, h as u32);
    for y in 0..h {
        for x in 0..w {
            let t = (heat[y][x] - lo) / span;
            let c = jet(t);
            let alpha = 0.25 + 0.5 * t;
            let px: [u8; 3] =
                std::array::from_fn(|k| ((1.0 - alpha) * rgb[k][y][x] + alpha * c[k]).mul_add(255.0, 0.5) as u8);
            img.put_pixel(x as u32, y as u32, Rgb(px));
        }
    }
    Ok(img)
}

fn put(img: &mut RgbImage, x: i64, y: i64, c: [u8; 3]) {
    if x >= 0 && y >= 0 && x < img.width() as i64 && y < img.height() as i64 {
        img.put_pixel(x as u32, y as u32, Rgb(c));
    }
}

fn line(img: &mut RgbImage, a: (i64, i64), b: (i64, i64), c: [u8; 3], dash: bool) {
    let n = (b.0 - a.0).abs().max((b.1 - a.1).abs()).max(1);
    for i in 0..=n {
        if dash && (i / 6) % 2 == 1 {
            continue;
        }
        let (x, y) = (a.0 + (b.0 - a.0) * i / n, a.1 + (b.1 - a.1) * i / n);
        put(img, x, y, c);
        put(img, x, y + 1, c);
    }
}

/// A plot of `points` (x on a log scale when `log_x`) as a blue polyline with dots, a red
/// dashed horizontal line at `reference` and a grey one at 0. No text: the JSON next to it
/// holds the numbers.
pub fn line_plot(points: &[(f64, f64)], reference: f64, log_x: bool) -> RgbImage {
    let (w, h, m) = (640i64, 400i64, 40i64);
    let mut img = RgbImage::from_pixel(w as u32, h as u32, Rgb([255, 255, 255]));
    let fx = |x: f64| if log_x { x.max(1e-9).ln() } else { x };
    let xs: Vec<f64> = points.iter().map(|p| fx(p.0)).collect();
    let ys: Vec<f64> = points.iter().map(|p| p.1).chain([reference, 0.0]).collect();
    let (x0, x1) = xs
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| (a.min(v), b.max(v)));
    let (y0, y1) = ys
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| (a.min(v), b.max(v)));
    let (x1, y1) = (if x1 > x0 { x1 } else { x0 + 1.0 }, if y1 > y0 { y1 } else { y0 + 1.0 });
    let px = |x: f64| m + ((x - x0) / (x1 - x0) * (w - 2 * m) as f64).round() as i64;
    let py = |y: f64| h - m - ((y - y0) / (y1 - y0) * (h - 2 * m) as f64).round() as i64;
    line(&mut img, (m, h - m), (w - m, h - m), [0, 0, 0], false);
    line(&mut img, (m, m), (m, h - m), [0, 0, 0], false);
    line(&mut img, (m, py(0.0)), (w - m, py(0.0)), [180, 180, 180], true);
    line(
        &mut img,
        (m, py(reference)),
        (w - m, py(reference)),
        [220, 30, 30],
        true,
    );
    let pts: Vec<(i64, i64)> = xs.iter().zip(points).map(|(x, p)| (px(*x), py(p.1))).collect();
    for pair in pts.windows(2) {
        line(&mut img, pair[0], pair[1], [30, 60, 200], false);
    }
    for &(x, y) in &pts {
        for dx in -3..=3 {
            for dy in -3..=3 {
                put(&mut img, x + dx, y + dy, [30, 60, 200]);
            }
        }
    }
    img
}

/// Writes `bytes` to `path` through a temporary file in the same directory, so that an
/// interrupted run leaves either the whole file or none.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_file_name(format!(
        ".{}.partial",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("out")
    ));
    let r = std::fs::write(&tmp, bytes).and_then(|_| std::fs::rename(&tmp, path));
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    r.with_context(|| format!("cannot write {}", path.display()))
}

/// Writes `report` as `name` in the output folder (pretty) when there is one, and prints it
/// as one line when `json`; returns whether it printed (the caller prints text otherwise).
pub fn report(dir: Option<&mut OutDir>, name: &str, report: &serde_json::Value, json: bool) -> Result<bool> {
    if let Some(dir) = dir {
        let path = dir.path(name);
        std::fs::write(&path, serde_json::to_string_pretty(report)?.as_bytes())
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    if json {
        crate::out(&format!("{report}\n"));
    }
    Ok(json)
}

/// Writes `value` as pretty JSON.
pub fn write_json(path: &Path, value: &serde_json::Value) -> Result<()> {
    std::fs::write(path, serde_json::to_string_pretty(value)?)
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Saves a PNG (into an [`OutDir`]'s staging folder: it appears when the folder is committed).
pub fn save_png(img: &RgbImage, path: &Path) -> Result<()> {
    img.save_with_format(path, image::ImageFormat::Png)
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Saves one tensor as a safetensors file (f32, under `name`).
pub fn save_tensor(t: &Tensor, name: &str, path: &Path) -> Result<()> {
    let t = t.to_dtype(DType::F32)?.contiguous()?;
    candle_core::safetensors::save(&std::collections::HashMap::from([(name.to_string(), t)]), path)
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Saves `t` (f32) into `dir` as `{stem}.safetensors` (under `name`) and, with `npy`, also as
/// NumPy's `{stem}.npy` (`numpy.load("masks.npy")`).
pub fn save_tensors_in(dir: &mut OutDir, t: &Tensor, name: &str, stem: &str, npy: bool) -> Result<()> {
    save_tensor(t, name, &dir.path(&format!("{stem}.safetensors")))?;
    if npy {
        let path = dir.path(&format!("{stem}.npy"));
        t.to_dtype(DType::F32)?
            .contiguous()?
            .write_npy(&path)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

/// An RGB image `(3, H, W)` in [0, 1] as a PNG image.
pub fn rgb_image(rgb: &Tensor) -> Result<RgbImage> {
    let (_, h, w) = rgb.dims3()?;
    let v = rgb.to_dtype(DType::F32)?.clamp(0.0, 1.0)?.to_vec3::<f32>()?;
    Ok(RgbImage::from_fn(w as u32, h as u32, |x, y| {
        image::Rgb([0, 1, 2].map(|c| (v[c][y as usize][x as usize] * 255.0).round() as u8))
    }))
}

/// Writes `text` into `img` at `(x, y)` with the 8×8 public-domain bitmap font, each font
/// pixel drawn as a `scale`×`scale` square.
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
        let scale = if label.len() as u32 * 16 <= tw { 2 } else { 1 };
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
