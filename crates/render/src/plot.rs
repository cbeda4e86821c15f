//! Line plots with axes, ticks and labels.

use image::{Rgb, RgbImage};

use crate::sheet::{put, text};

/// A line plot: points joined in order, an optional dashed reference line, labelled axes.
#[derive(Debug, Clone)]
pub struct LinePlot<'a> {
    /// The points, in the order they are joined.
    pub points: &'a [(f64, f64)],
    /// A horizontal dashed line (red) at this value, with its label.
    pub reference: Option<(f64, &'a str)>,
    /// Whether the x axis is logarithmic (its ticks at 1, 2, 5 × powers of ten).
    pub log_x: bool,
    /// The x axis's label, under it.
    pub x_label: &'a str,
    /// The y axis's label, above it.
    pub y_label: &'a str,
}

const INK: [u8; 3] = [0, 0, 0];
const LINE: [u8; 3] = [30, 60, 200];
const REFERENCE: [u8; 3] = [220, 30, 30];
const GRID: [u8; 3] = [225, 225, 225];

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

/// Linear ticks over `[lo, hi]`: about five at 1, 2 or 5 × a power of ten.
fn linear_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let raw = (hi - lo) / 5.0;
    if !(raw.is_finite() && raw > 0.0) {
        return vec![lo];
    }
    let p = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * p)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * p);
    let first = (lo / step).ceil() as i64;
    let last = (hi / step).floor() as i64;
    (first..=last).map(|k| k as f64 * step).collect()
}

/// Logarithmic ticks over `[lo, hi]` (positive): 1, 2, 5 × powers of ten, thinned to powers
/// of ten when there are many.
fn log_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let (a, b) = (
        lo.max(1e-12).log10().floor() as i32,
        hi.max(1e-12).log10().ceil() as i32,
    );
    let all: Vec<f64> = (a..=b)
        .flat_map(|e| [1.0, 2.0, 5.0].map(|m| m * 10f64.powi(e)))
        .filter(|v| *v >= lo * (1.0 - 1e-9) && *v <= hi * (1.0 + 1e-9))
        .collect();
    if all.len() > 8 {
        all.into_iter()
            .filter(|v| (v.log10().round() - v.log10()).abs() < 1e-9)
            .collect()
    } else {
        all
    }
}

/// A tick's label: short, without trailing zeros.
fn tick_label(v: f64) -> String {
    if v == 0.0 {
        return "0".into();
    }
    let a = v.abs();
    if (1e-3..1e5).contains(&a) {
        let s = format!("{v:.3}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        format!("{v:.0e}")
    }
}

/// The plot as a 640×400 picture: the points in blue (joined, with dots), the reference as
/// a red dashed line labelled at its right end, a grey line at 0 when 0 is in range, ticks
/// with numbers on both axes and the axes' labels.
pub fn line_plot(plot: &LinePlot) -> RgbImage {
    let (w, h) = (640i64, 400i64);
    let (left, right, top, bottom) = (64i64, 24i64, 28i64, 52i64);
    let mut img = RgbImage::from_pixel(w as u32, h as u32, Rgb([255, 255, 255]));
    let fx = |x: f64| if plot.log_x { x.max(1e-12).ln() } else { x };
    let finite: Vec<(f64, f64)> = plot
        .points
        .iter()
        .copied()
        .filter(|(x, y)| x.is_finite() && y.is_finite())
        .collect();
    let range = |vals: &mut dyn Iterator<Item = f64>| {
        vals.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| (a.min(v), b.max(v)))
    };
    let (mut x0, mut x1) = range(&mut finite.iter().map(|p| p.0));
    let (mut y0, mut y1) = range(&mut finite.iter().map(|p| p.1).chain(plot.reference.map(|r| r.0)));
    if !x0.is_finite() {
        (x0, x1) = (1.0, 10.0);
    }
    if !y0.is_finite() {
        (y0, y1) = (0.0, 1.0);
    }
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    let pad = 0.05 * (y1 - y0).max(1e-9);
    let (y0, y1) = (y0 - pad, y1 + pad);
    let (fx0, fx1) = (fx(x0), fx(x1).max(fx(x0) + 1e-9));
    let px = |x: f64| left + ((fx(x) - fx0) / (fx1 - fx0) * (w - left - right) as f64).round() as i64;
    let py = |y: f64| h - bottom - ((y - y0) / (y1 - y0) * (h - top - bottom) as f64).round() as i64;

    let x_ticks = if plot.log_x {
        log_ticks(x0, x1)
    } else {
        linear_ticks(x0, x1)
    };
    let y_ticks = linear_ticks(y0, y1);
    for &t in &y_ticks {
        line(&mut img, (left, py(t)), (w - right, py(t)), GRID, false);
        let label = tick_label(t);
        text(&mut img, left - 6 - 8 * label.len() as i64, py(t) - 4, &label, 1, INK);
        line(&mut img, (left - 4, py(t)), (left, py(t)), INK, false);
    }
    for &t in &x_ticks {
        let label = tick_label(t);
        line(&mut img, (px(t), h - bottom), (px(t), h - bottom + 4), INK, false);
        text(&mut img, px(t) - 4 * label.len() as i64, h - bottom + 8, &label, 1, INK);
    }
    if y0 < 0.0 && y1 > 0.0 {
        line(&mut img, (left, py(0.0)), (w - right, py(0.0)), [160, 160, 160], true);
    }
    line(&mut img, (left, h - bottom), (w - right, h - bottom), INK, false);
    line(&mut img, (left, top), (left, h - bottom), INK, false);
    text(
        &mut img,
        left + (w - left - right) / 2 - 4 * plot.x_label.len() as i64,
        h - 20,
        plot.x_label,
        1,
        INK,
    );
    text(&mut img, 8, 8, plot.y_label, 1, INK);
    if let Some((r, label)) = plot.reference {
        line(&mut img, (left, py(r)), (w - right, py(r)), REFERENCE, true);
        text(
            &mut img,
            w - right - 8 * label.len() as i64,
            py(r) - 12,
            label,
            1,
            REFERENCE,
        );
    }
    let pts: Vec<(i64, i64)> = finite.iter().map(|&(x, y)| (px(x), py(y))).collect();
    for pair in pts.windows(2) {
        line(&mut img, pair[0], pair[1], LINE, false);
    }
    for &(x, y) in &pts {
        for dx in -3..=3 {
            for dy in -3..=3 {
                put(&mut img, x + dx, y + dy, LINE);
            }
        }
    }
    img
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_numbers_inside_the_range() {
        assert_eq!(linear_ticks(0.0, 10.0), vec![0.0, 2.0, 4.0, 6.0, 8.0, 10.0]);
        assert_eq!(log_ticks(1.0, 100.0), vec![1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0]);
        assert_eq!(log_ticks(1.0, 2048.0), vec![1.0, 10.0, 100.0, 1000.0]);
        assert_eq!(tick_label(0.25), "0.25");
        assert_eq!(tick_label(20.0), "20");
    }
}
