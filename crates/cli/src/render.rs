//! Writing results: files written atomically, reports, pictures and tensors (the pictures
//! themselves are drawn by `extremal-render`).

use std::path::Path;

use anyhow::{Context, Result};
use candle_core::{DType, Tensor};
use image::RgbImage;

pub use extremal_render::{fit, line_plot, overlay, rgb_image, sheet, LinePlot, ValueRange};

/// The longest side of a picture in a sheet (a sheet of full-size photographs would be huge).
pub const SHEET_SIDE: u32 = 320;

use crate::outdir::OutDir;

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
